-- engine/models/gpt2.lua — GPT-2 (model_type "gpt2") as Hugging Face's
-- GPT2LMHeadModel computes it: learned token and position embeddings,
-- pre-LayerNorm blocks (x + attn(ln_1(x)), then x + mlp(ln_2(x))), GELU in
-- its tanh form ("gelu_new"), a final ln_f and a head tied to wte (or an
-- untied lm_head when tie_word_embeddings is false).
--
-- Hugging Face names: transformer.wte.weight, transformer.wpe.weight,
-- transformer.h.{i}.ln_1.{weight,bias}, .attn.c_attn.{weight,bias},
-- .attn.c_proj.{weight,bias}, .ln_2.{weight,bias}, .mlp.c_fc.{weight,bias},
-- .mlp.c_proj.{weight,bias}, transformer.ln_f.{weight,bias}. The c_* layers
-- are Conv1D: their weights are stored (in, out), the transpose of a
-- Linear's, and used as stored (x·W).
--
-- Dropout: embd_pdrop after the embeddings and resid_pdrop after each
-- c_proj, in training mode only. attn_pdrop (dropout on the attention
-- probabilities) is not applied: the fused attention op has none.
--
-- Not here: loading and saving (models/init.lua, causal_lm.lua), the cache
-- and logprobs (causal_lm.lua).
local E = require("engine")
local nn = require("engine.nn")
local base = require("engine.models.causal_lm")

local GPT2 = nn.class("GPT2", base.CausalLM)
GPT2.model_type = "gpt2"
GPT2.prefix = "transformer."
GPT2.arch_names = { causal_lm = "GPT2LMHeadModel", classification = "GPT2ForSequenceClassification" }
-- buffers older checkpoints carry (the causal mask); not parameters
GPT2.ignored = { "%.attn%.bias$", "%.attn%.masked_bias$" }

function GPT2.read_config(cfg, where)
  local hp = {}
  hp.vocab_size = base.int_key(cfg, "vocab_size", where)
  hp.n_embd = base.int_key(cfg, "n_embd", where)
  hp.n_layer = base.int_key(cfg, "n_layer", where)
  hp.n_head = base.int_key(cfg, "n_head", where)
  hp.n_positions = base.int_key(cfg, "n_positions", where)
  if hp.n_embd % hp.n_head ~= 0 then
    base.fail('%s: "n_embd" (%d) is not a multiple of "n_head" (%d)', where, hp.n_embd, hp.n_head)
  end
  hp.head_dim = hp.n_embd // hp.n_head
  hp.n_kv_head = hp.n_head
  hp.n_inner = base.int_key(cfg, "n_inner", where, 4 * hp.n_embd)
  hp.eps = base.num_key(cfg, "layer_norm_epsilon", where, 1e-5, 0)
  hp.act = base.enum_key(cfg, "activation_function", where, "gelu_new",
    { "gelu_new", "gelu_pytorch_tanh", "gelu_fast" })
  hp.embd_pdrop = base.num_key(cfg, "embd_pdrop", where, 0.1, 0, 1)
  hp.resid_pdrop = base.num_key(cfg, "resid_pdrop", where, 0.1, 0, 1)
  hp.scale_attn_weights = base.bool_key(cfg, "scale_attn_weights", where, true)
  hp.scale_by_layer = base.bool_key(cfg, "scale_attn_by_inverse_layer_idx", where, false)
  hp.tied = base.bool_key(cfg, "tie_word_embeddings", where, true)
  hp.init_std = base.num_key(cfg, "initializer_range", where, 0.02, 0)
  return hp
end

-- ---- layers ------------------------------------------------------------------

local Attention = nn.class("GPT2Attention")

local function attention(hp, src, p, layer)
  local self = nn.Module.init(setmetatable({}, Attention))
  local C, std = hp.n_embd, hp.init_std
  self:add_module("c_attn", nn.Conv1D(C, 3 * C, {
    weight = src(p .. "c_attn.weight", { C, 3 * C }, { "normal", std }),
    bias_tensor = src(p .. "c_attn.bias", { 3 * C }, { "zeros" }),
  }))
  self:add_module("c_proj", nn.Conv1D(C, C, {
    weight = src(p .. "c_proj.weight", { C, C }, { "normal", std / math.sqrt(2 * hp.n_layer) }),
    bias_tensor = src(p .. "c_proj.bias", { C }, { "zeros" }),
  }))
  self:add_module("resid_dropout", nn.Dropout(hp.resid_pdrop))
  local scale = hp.scale_attn_weights and 1 / math.sqrt(hp.head_dim) or 1
  if hp.scale_by_layer then scale = scale / (layer + 1) end
  rawset(self, "n_head", hp.n_head)
  rawset(self, "head_dim", hp.head_dim)
  rawset(self, "scale", scale)
  rawset(self, "layer", layer + 1)
  return self
end

-- x (B,T,C) -> (B,T,C)
function Attention:forward(x, key_mask, cache, past)
  local s = x:shape()
  local B, T, C = s[1], s[2], s[3]
  local qkv = self.c_attn(x) -- (B,T,3C)
  local H, D = self.n_head, self.head_dim
  if cache and T == 1 then
    -- a decode step: q, k and v are views of the projection as (B,3H,1,D)
    local heads = qkv:reshape({ B, 3 * H, 1, D })
    local k, v = base.cache_kv(cache, self.layer, past, heads:narrow(2, H + 1, H), heads:narrow(2, 2 * H + 1, H))
    local o = base.decode_attention(heads:narrow(2, 1, H), k, v, key_mask, self.scale)
    return self.resid_dropout(self.c_proj(o:reshape({ B, 1, C })))
  end
  local q = base.split_heads(qkv:narrow(3, 1, C), H, D)
  local k = base.split_heads(qkv:narrow(3, C + 1, C), H, D)
  local v = base.split_heads(qkv:narrow(3, 2 * C + 1, C), H, D)
  k, v = base.cache_kv(cache, self.layer, past, k, v)
  local o = E.attention(q, k, v, { mask = key_mask, causal = true, scale = self.scale })
  return self.resid_dropout(self.c_proj(base.merge_heads(o)))
end

local MLP = nn.class("GPT2MLP")

local function mlp(hp, src, p)
  local self = nn.Module.init(setmetatable({}, MLP))
  local C, I, std = hp.n_embd, hp.n_inner, hp.init_std
  self:add_module("c_fc", nn.Conv1D(C, I, {
    weight = src(p .. "c_fc.weight", { C, I }, { "normal", std }),
    bias_tensor = src(p .. "c_fc.bias", { I }, { "zeros" }),
  }))
  self:add_module("c_proj", nn.Conv1D(I, C, {
    weight = src(p .. "c_proj.weight", { I, C }, { "normal", std / math.sqrt(2 * hp.n_layer) }),
    bias_tensor = src(p .. "c_proj.bias", { C }, { "zeros" }),
  }))
  self:add_module("dropout", nn.Dropout(hp.resid_pdrop))
  return self
end

function MLP:forward(x)
  return self.dropout(self.c_proj(E.gelu(self.c_fc(x))))
end

local Block = nn.class("GPT2Block")

local function layer_norm(hp, src, name)
  return nn.LayerNorm(hp.n_embd, {
    eps = hp.eps,
    weight = src(name .. ".weight", { hp.n_embd }, { "ones" }),
    bias_tensor = src(name .. ".bias", { hp.n_embd }, { "zeros" }),
  })
end

local function block(hp, src, p, layer)
  local self = nn.Module.init(setmetatable({}, Block))
  self:add_module("ln_1", layer_norm(hp, src, p .. "ln_1"))
  self:add_module("attn", attention(hp, src, p .. "attn.", layer))
  self:add_module("ln_2", layer_norm(hp, src, p .. "ln_2"))
  self:add_module("mlp", mlp(hp, src, p .. "mlp."))
  return self
end

function Block:forward(x, key_mask, cache, past)
  x = x + self.attn:forward(self.ln_1(x), key_mask, cache, past)
  return x + self.mlp:forward(self.ln_2(x))
end

-- ---- the model -----------------------------------------------------------------

function GPT2.build(self, hp, src)
  local C, V, P, std = hp.n_embd, hp.vocab_size, hp.n_positions, hp.init_std
  local tr = nn.Module()
  tr:add_module("wte", nn.Embedding(V, C, { weight = src("transformer.wte.weight", { V, C }, { "normal", std }) }))
  tr:add_module("wpe", nn.Embedding(P, C, { weight = src("transformer.wpe.weight", { P, C }, { "normal", std }) }))
  tr:add_module("drop", nn.Dropout(hp.embd_pdrop))
  local h = nn.ModuleList()
  for i = 0, hp.n_layer - 1 do h:append(block(hp, src, "transformer.h." .. i .. ".", i)) end
  tr:add_module("h", h)
  tr:add_module("ln_f", layer_norm(hp, src, "transformer.ln_f"))
  self:add_module("transformer", tr)
  if not hp.tied then
    local w = src("lm_head.weight", { V, C }, { "normal", std }, { optional_head = true })
    if w then self:add_module("lm_head", nn.Linear(C, V, { weight = w, bias = false })) end
  end
end

function GPT2:lm_head_weight()
  if self.hp.tied then return self.transformer.wte.weight end
  return self.lm_head and self.lm_head.weight
end

-- ids (B,T), pos (B,T) -> final hidden (B,T,C)
function GPT2:_body(ids, pos, key_mask, cache, past, maxpos)
  if maxpos >= self.hp.n_positions then
    base.fail("forward: position %d is beyond the model's n_positions (%d)", maxpos, self.hp.n_positions)
  end
  local tr = self.transformer
  local x = tr.drop(tr.wte(ids) + tr.wpe(pos))
  for i = 1, #tr.h do x = tr.h[i]:forward(x, key_mask, cache, past) end
  return tr.ln_f(x)
end

return GPT2
