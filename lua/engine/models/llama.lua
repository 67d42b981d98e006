-- engine/models/llama.lua — the Llama family as Hugging Face's
-- LlamaForCausalLM computes it: model_type "llama" (SmolLM is one) and
-- "qwen2" (the same network with biases on q/k/v_proj). RMSNorm before
-- attention and MLP, rotary position embeddings in the half-rotation
-- layout (rotate_half: the first D/2 dims pair with the last D/2),
-- grouped-query attention (num_key_value_heads), a SwiGLU MLP
-- (down(silu(gate(x)) * up(x))), a final norm and a tied or untied head.
--
-- Rotary angles follow Hugging Face bit for bit where it matters: inv_freq
-- = 1 / rope_theta^(2i/D) and angle = inv_freq * position are rounded to
-- float32 as PyTorch computes them, so that long positions give the same
-- angles. rope_scaling: none/"default", "linear" and "llama3" are supported.
--
-- Hugging Face names: model.embed_tokens.weight,
-- model.layers.{i}.input_layernorm.weight,
-- model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias},
-- model.layers.{i}.post_attention_layernorm.weight,
-- model.layers.{i}.mlp.{gate,up,down}_proj.weight, model.norm.weight,
-- lm_head.weight (absent when tied).
--
-- Not here: sliding-window attention (Qwen2's use_sliding_window), rope
-- types other than the three above, attention dropout.
local E = require("engine")
local nn = require("engine.nn")
local base = require("engine.models.causal_lm")

local Llama = nn.class("Llama", base.CausalLM)
Llama.model_type = "llama"
Llama.prefix = "model."
Llama.arch_names = { causal_lm = "LlamaForCausalLM", classification = "LlamaForSequenceClassification" }
Llama.ignored = { "rotary_emb%.inv_freq$" }

local Qwen2 = nn.class("Qwen2", Llama)
Qwen2.model_type = "qwen2"
Qwen2.arch_names = { causal_lm = "Qwen2ForCausalLM", classification = "Qwen2ForSequenceClassification" }

-- rope_scaling (or transformers 5's rope_parameters) -> a table or nil
local function read_rope(cfg, where, hp)
  local params = base.get(cfg, "rope_parameters")
  if type(params) == "table" and base.get(cfg, "rope_theta") == nil then
    hp.rope_theta = base.num_key(params, "rope_theta", where .. ': "rope_parameters"', 10000.0, 0)
  end
  local rs = base.get(cfg, "rope_scaling")
  if rs == nil and type(params) == "table" then rs = params end
  if rs == nil then return nil end
  if type(rs) ~= "table" then base.fail('%s: key "rope_scaling" must be a table or null, got %s', where, base.show(rs)) end
  local t = base.get(rs, "rope_type") or base.get(rs, "type") or "default"
  local w = where .. ': "rope_scaling"'
  if t == "default" then return nil end
  if t == "linear" then return { type = t, factor = base.num_key(rs, "factor", w, nil, 0) } end
  if t == "llama3" then
    return {
      type = t,
      factor = base.num_key(rs, "factor", w, nil, 0),
      low_freq_factor = base.num_key(rs, "low_freq_factor", w, nil, 0),
      high_freq_factor = base.num_key(rs, "high_freq_factor", w, nil, 0),
      original_max = base.int_key(rs, "original_max_position_embeddings", w),
    }
  end
  base.fail('%s: rope type %s is not supported (supported: default, linear, llama3)', w, base.show(t))
end

function Llama.read_config(cfg, where, qwen)
  local hp = {}
  hp.vocab_size = base.int_key(cfg, "vocab_size", where)
  hp.n_embd = base.int_key(cfg, "hidden_size", where)
  hp.n_inner = base.int_key(cfg, "intermediate_size", where)
  hp.n_layer = base.int_key(cfg, "num_hidden_layers", where)
  hp.n_head = base.int_key(cfg, "num_attention_heads", where)
  hp.n_kv_head = base.int_key(cfg, "num_key_value_heads", where, hp.n_head)
  if hp.n_head % hp.n_kv_head ~= 0 then
    base.fail('%s: "num_attention_heads" (%d) is not a multiple of "num_key_value_heads" (%d)', where, hp.n_head,
      hp.n_kv_head)
  end
  hp.head_dim = base.int_key(cfg, "head_dim", where, -1)
  if hp.head_dim == -1 then
    if hp.n_embd % hp.n_head ~= 0 then
      base.fail('%s: "hidden_size" (%d) is not a multiple of "num_attention_heads" (%d) and "head_dim" is not given',
        where, hp.n_embd, hp.n_head)
    end
    hp.head_dim = hp.n_embd // hp.n_head
  end
  if hp.head_dim % 2 ~= 0 then
    base.fail("%s: the head dim (%d) must be even for rotary embeddings", where, hp.head_dim)
  end
  hp.eps = base.num_key(cfg, "rms_norm_eps", where, 1e-6, 0)
  hp.rope_theta = base.num_key(cfg, "rope_theta", where, 10000.0, 0)
  hp.rope_scaling = read_rope(cfg, where, hp)
  hp.act = base.enum_key(cfg, "hidden_act", where, "silu", { "silu" })
  hp.tied = base.bool_key(cfg, "tie_word_embeddings", where, false)
  hp.init_std = base.num_key(cfg, "initializer_range", where, 0.02, 0)
  if qwen then
    hp.qkv_bias, hp.o_bias, hp.mlp_bias = true, false, false
    if base.bool_key(cfg, "use_sliding_window", where, false) then
      base.fail('%s: key "use_sliding_window" is true: sliding-window attention is not supported', where)
    end
  else
    local ab = base.bool_key(cfg, "attention_bias", where, false)
    hp.qkv_bias, hp.o_bias = ab, ab
    hp.mlp_bias = base.bool_key(cfg, "mlp_bias", where, false)
  end
  return hp
end

function Qwen2.read_config(cfg, where) return Llama.read_config(cfg, where, true) end

-- ---- rotary embeddings -------------------------------------------------------

local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end

-- inv_freq (D/2) as Hugging Face computes it in float32
local function inv_freq(hp)
  local D, theta = hp.head_dim, f32(hp.rope_theta)
  local inv = {}
  for i = 0, D // 2 - 1 do
    inv[i + 1] = f32(1 / f32(theta ^ f32(2 * i / D)))
  end
  local rs = hp.rope_scaling
  if rs and rs.type == "linear" then
    for i = 1, #inv do inv[i] = f32(inv[i] / rs.factor) end
  elseif rs and rs.type == "llama3" then
    -- _compute_llama3_parameters: low frequencies divided by factor, high
    -- ones kept, a smooth blend between
    local low_wl = rs.original_max / rs.low_freq_factor
    local high_wl = rs.original_max / rs.high_freq_factor
    for i = 1, #inv do
      local f = inv[i]
      local wl = 2 * math.pi / f
      local g = f
      if wl > low_wl then g = f / rs.factor end
      if not (wl < high_wl) and not (wl > low_wl) then
        local s = (rs.original_max / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        g = (1 - s) * g / rs.factor + s * g
      end
      inv[i] = f32(g)
    end
  end
  return inv
end

-- cos and sin tables (P, D) for positions 0..P-1, grown on demand
function Llama:rope_tables(maxpos)
  local rt = rawget(self, "_rope")
  if rt and rt.n > maxpos and rt.dtype == self.dtype then return rt.cos, rt.sin end
  local n = math.max(64, maxpos + 1, rt and 2 * rt.n or 0)
  local inv = rawget(self, "_inv_freq")
  if not inv then
    inv = inv_freq(self.hp)
    rawset(self, "_inv_freq", inv)
  end
  local h = #inv
  local cos, sin = {}, {}
  for p = 0, n - 1 do
    local cr, sr = {}, {}
    for i = 1, h do
      local a = f32(inv[i] * p)
      local c, s = math.cos(a), math.sin(a)
      cr[i], cr[i + h], sr[i], sr[i + h] = c, c, s, s
    end
    cos[p + 1], sin[p + 1] = cr, sr
  end
  rt = { n = n, dtype = self.dtype, cos = E.tensor(cos, self.dtype), sin = E.tensor(sin, self.dtype) }
  rawset(self, "_rope", rt)
  return rt.cos, rt.sin
end

-- x (B,H,T,D) rotated: x·cos + rotate_half(x)·sin, rotate_half(x) =
-- cat(-x[D/2+1..D], x[1..D/2])
local function apply_rope(x, cos, sin)
  local h = x:shape()[4] // 2
  local rot = E.cat({ -x:narrow(4, h + 1, h), x:narrow(4, 1, h) }, 4)
  return x * cos + rot * sin
end

-- ---- layers ------------------------------------------------------------------

local function linear(src, name, nin, nout, bias, std)
  return nn.Linear(nin, nout, {
    weight = src(name .. ".weight", { nout, nin }, { "normal", std }),
    bias_tensor = bias and src(name .. ".bias", { nout }, { "zeros" }) or nil,
    bias = false,
  })
end

local Attention = nn.class("LlamaAttention")

local function attention(hp, src, p, layer)
  local self = nn.Module.init(setmetatable({}, Attention))
  local C, H, Hkv, D, std = hp.n_embd, hp.n_head, hp.n_kv_head, hp.head_dim, hp.init_std
  self:add_module("q_proj", linear(src, p .. "q_proj", C, H * D, hp.qkv_bias, std))
  self:add_module("k_proj", linear(src, p .. "k_proj", C, Hkv * D, hp.qkv_bias, std))
  self:add_module("v_proj", linear(src, p .. "v_proj", C, Hkv * D, hp.qkv_bias, std))
  self:add_module("o_proj", linear(src, p .. "o_proj", H * D, C, hp.o_bias, std))
  rawset(self, "n_head", H)
  rawset(self, "n_kv_head", Hkv)
  rawset(self, "head_dim", D)
  rawset(self, "layer", layer + 1)
  return self
end

-- x (B,T,C), cos/sin (B,1,T,D) -> (B,T,C)
function Attention:forward(x, cos, sin, key_mask, cache, past)
  local D = self.head_dim
  local q = apply_rope(base.split_heads(self.q_proj(x), self.n_head, D), cos, sin)
  local k = apply_rope(base.split_heads(self.k_proj(x), self.n_kv_head, D), cos, sin)
  local v = base.split_heads(self.v_proj(x), self.n_kv_head, D)
  k, v = base.cache_kv(cache, self.layer, past, k, v)
  local o
  if cache and x:shape()[2] == 1 then
    o = base.decode_attention(q, k, v, key_mask) -- a decode step
  else
    o = E.attention(q, k, v, { mask = key_mask, causal = true })
  end
  return self.o_proj(base.merge_heads(o))
end

local MLP = nn.class("LlamaMLP")

local function mlp(hp, src, p)
  local self = nn.Module.init(setmetatable({}, MLP))
  local C, I, b, std = hp.n_embd, hp.n_inner, hp.mlp_bias, hp.init_std
  self:add_module("gate_proj", linear(src, p .. "gate_proj", C, I, b, std))
  self:add_module("up_proj", linear(src, p .. "up_proj", C, I, b, std))
  self:add_module("down_proj", linear(src, p .. "down_proj", I, C, b, std))
  return self
end

function MLP:forward(x)
  return self.down_proj(E.silu(self.gate_proj(x)) * self.up_proj(x))
end

local Layer = nn.class("LlamaDecoderLayer")

local function rms_norm(hp, src, name)
  return nn.RMSNorm(hp.n_embd, { eps = hp.eps, weight = src(name .. ".weight", { hp.n_embd }, { "ones" }) })
end

local function decoder_layer(hp, src, p, layer)
  local self = nn.Module.init(setmetatable({}, Layer))
  self:add_module("self_attn", attention(hp, src, p .. "self_attn.", layer))
  self:add_module("mlp", mlp(hp, src, p .. "mlp."))
  self:add_module("input_layernorm", rms_norm(hp, src, p .. "input_layernorm"))
  self:add_module("post_attention_layernorm", rms_norm(hp, src, p .. "post_attention_layernorm"))
  return self
end

function Layer:forward(x, cos, sin, key_mask, cache, past)
  x = x + self.self_attn:forward(self.input_layernorm(x), cos, sin, key_mask, cache, past)
  return x + self.mlp:forward(self.post_attention_layernorm(x))
end

-- ---- the model -----------------------------------------------------------------

function Llama.build(self, hp, src)
  local C, V, std = hp.n_embd, hp.vocab_size, hp.init_std
  local m = nn.Module()
  m:add_module("embed_tokens", nn.Embedding(V, C, { weight = src("model.embed_tokens.weight", { V, C }, { "normal", std }) }))
  local layers = nn.ModuleList()
  for i = 0, hp.n_layer - 1 do layers:append(decoder_layer(hp, src, "model.layers." .. i .. ".", i)) end
  m:add_module("layers", layers)
  m:add_module("norm", rms_norm(hp, src, "model.norm"))
  self:add_module("model", m)
  if not hp.tied then
    local w = src("lm_head.weight", { V, C }, { "normal", std }, { optional_head = true })
    if w then self:add_module("lm_head", nn.Linear(C, V, { weight = w, bias = false })) end
  end
end

function Llama:lm_head_weight()
  if self.hp.tied then return self.model.embed_tokens.weight end
  return self.lm_head and self.lm_head.weight
end

-- ids (B,T), pos (B,T) -> final hidden (B,T,C)
function Llama:_body(ids, pos, key_mask, cache, past, maxpos)
  local m = self.model
  local ct, st = self:rope_tables(maxpos)
  local s = pos:shape()
  local B, T, D = s[1], s[2], self.hp.head_dim
  local cos = E.embedding(ct, pos):reshape({ B, 1, T, D })
  local sin = E.embedding(st, pos):reshape({ B, 1, T, D })
  local x = m.embed_tokens(ids)
  for i = 1, #m.layers do x = m.layers[i]:forward(x, cos, sin, key_mask, cache, past) end
  return m.norm(x)
end

return { llama = Llama, qwen2 = Qwen2 }
