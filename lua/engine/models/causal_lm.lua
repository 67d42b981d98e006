-- engine/models/causal_lm.lua — what every decoder-only model shares: the
-- base class CausalLM (forward, hidden, logprobs, the KV cache, save), the
-- reading of ids, attention masks and positions, and the helpers that check
-- config.json keys and raise the loader's errors.
--
-- An architecture (gpt2.lua, llama.lua) subclasses CausalLM and supplies
--   Arch.read_config(cfg, where) -> hp   (checked hyper-parameters)
--   Arch.build(self, hp, source)         (makes the modules; `source(name,
--                                         shape, init)` hands out each
--                                         parameter by its Hugging Face name)
--   Arch:_body(ids, pos, key_mask, cache, past) -> final hidden (B,T,C)
--   Arch.lm_head_weight(self) -> (V,C)
--   Arch.prefix ("transformer." / "model."), Arch.arch_names
--
-- Positions follow Hugging Face's generate(): with an attention mask,
-- position = cumsum(mask) - 1 on real tokens and 1 on padding, so a
-- left-padded row gives the same logits as the unpadded one. The cache path
-- (model:new_cache) writes keys and values into preallocated buffers with
-- copy_, outside autodiff: it is for generation (under E.no_grad); no
-- gradient flows into cached keys and values. A decode step (one new token
-- per row, with a cache) takes M.decode_attention and reads a tensor mask
-- with tensor ops, so its cost does not grow with Lua work per cached key.
--
-- Not here: the architectures' layers, loading files (models/init.lua),
-- heads (models/heads.lua), LoRA (engine/lora.lua).
local E = require("engine")
local nn = require("engine.nn")
local json = require("dkjson")

local M = {}

-- ---- errors ---------------------------------------------------------------

-- Loader and model errors are raised as Failure objects by the helpers and
-- turned into plain messages at the public entry points (M.guard), so the
-- message carries the caller's file:line like any Lua error.
local Failure = {}
Failure.__tostring = function(f) return f.msg end

function M.fail(fmt, ...)
  local msg = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  error(setmetatable({ msg = msg }, Failure), 0)
end

function M.is_failure(e) return getmetatable(e) == Failure end

-- wrap fn so that a Failure becomes error(msg, 2) at the caller of the
-- outermost wrapped function (forward calls hidden: the user's line is
-- named, not forward's); other errors pass through unchanged
local depth = 0
function M.guard(fn)
  return function(...)
    depth = depth + 1
    local res = table.pack(pcall(fn, ...))
    depth = depth - 1
    if res[1] then return table.unpack(res, 2, res.n) end
    local e = res[2]
    if M.is_failure(e) then
      if depth > 0 then error(e, 0) end
      error(e.msg, 2)
    end
    error(e, 0)
  end
end

-- ---- config keys ------------------------------------------------------------

M.NULL = json.null

-- cfg[key], with JSON null read as absent
function M.get(cfg, key)
  local v = cfg[key]
  if v == json.null then return nil end
  return v
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if v == json.null then return "null" end
  if type(v) == "table" then return "a " .. (#v > 0 and "list" or "table") end
  return tostring(v)
end
M.show = show

-- a positive integer key; `def` (may be nil) when absent
function M.int_key(cfg, key, where, def, allow_zero)
  local v = M.get(cfg, key)
  if v == nil then
    if def ~= nil then return def end
    M.fail('%s: missing key "%s"', where, key)
  end
  if type(v) ~= "number" or v ~= math.floor(v) or v < (allow_zero and 0 or 1) or v ~= v or v == math.huge then
    M.fail('%s: key "%s" must be a %s integer, got %s', where, key, allow_zero and "non-negative" or "positive",
      show(v))
  end
  return math.tointeger(v)
end

-- a number key in [lo, hi) (hi may be nil); `def` when absent
function M.num_key(cfg, key, where, def, lo, hi)
  local v = M.get(cfg, key)
  if v == nil then
    if def ~= nil then return def end
    M.fail('%s: missing key "%s"', where, key)
  end
  if type(v) ~= "number" or v ~= v or (lo and v < lo) or (hi and v >= hi) then
    local range = hi and string.format("in [%s, %s)", lo, hi) or string.format(">= %s", lo)
    M.fail('%s: key "%s" must be a number %s, got %s', where, key, range, show(v))
  end
  return v
end

function M.bool_key(cfg, key, where, def)
  local v = M.get(cfg, key)
  if v == nil then return def end
  if type(v) ~= "boolean" then M.fail('%s: key "%s" must be true or false, got %s', where, key, show(v)) end
  return v
end

-- a string key that must be one of `allowed` (a list); `def` when absent
function M.enum_key(cfg, key, where, def, allowed)
  local v = M.get(cfg, key)
  if v == nil then return def end
  for _, a in ipairs(allowed) do
    if v == a then return v end
  end
  M.fail('%s: key "%s" is %s; supported: %s', where, key, show(v), table.concat(allowed, ", "))
end

-- ---- the base class ------------------------------------------------------------

local CausalLM = nn.class("CausalLM")
M.CausalLM = CausalLM

-- the common part of an architecture's constructor: config, hp, dtype,
-- vocab_size; the modules come from Arch.build
function M.init_model(cls, config, hp, dtype)
  local self = nn.Module.init(setmetatable({}, cls))
  rawset(self, "config", config)
  rawset(self, "hp", hp)
  rawset(self, "dtype", dtype)
  rawset(self, "vocab_size", hp.vocab_size)
  return self
end

local function shape_str(s) return "[" .. table.concat(s, ",") .. "]" end
M.shape_str = shape_str

-- ids: B rows of T ids (a table) or a (B,T) tensor -> tensor (B,T), B, T
local function read_ids(self, ids, op)
  if E.is_tensor(ids) then
    if ids:dim() ~= 2 then M.fail("%s: ids is %s, expected (B,T)", op, ids:shape_str()) end
    local s = ids:shape()
    return ids, s[1], s[2]
  end
  if type(ids) ~= "table" or type(ids[1]) ~= "table" then
    M.fail("%s: ids must be a (B,T) tensor or a table of B rows of T ids, got %s", op,
      type(ids) == "table" and "a flat table" or type(ids))
  end
  local B, T = #ids, #ids[1]
  for b = 2, B do
    if #ids[b] ~= T then M.fail("%s: row %d of ids has %d ids, row 1 has %d", op, b, #ids[b], T) end
  end
  if T == 0 then M.fail("%s: ids has no positions", op) end
  return E.tensor(ids, self.dtype), B, T
end

-- the attention mask (B, past+T) as a Lua table of rows, or nil; a tensor
-- mask is returned as it is when keep_tensor is true
local function read_mask(mask, B, S, op, cached, keep_tensor)
  if mask == nil then return nil end
  local what = cached and "cache.len+T" or "T"
  local rows
  if E.is_tensor(mask) then
    local s = mask:shape()
    if #s ~= 2 or s[1] ~= B or s[2] ~= S then
      M.fail("%s: attention_mask is %s, expected (B,%s) = [%d,%d]", op, mask:shape_str(), what, B, S)
    end
    if keep_tensor then return mask end
    rows = mask:totable()
  elseif type(mask) == "table" then
    rows = mask
    local ok = #rows == B
    for b = 1, B do ok = ok and type(rows[b]) == "table" and #rows[b] == S end
    if not ok then
      M.fail("%s: attention_mask must be %d rows of %d entries (%s), as ids", op, B, S, what)
    end
  else
    M.fail("%s: attention_mask must be a tensor or a table, got %s", op, type(mask))
  end
  return rows
end

-- positions (B,T) and the key mask (B,S) (nil when every key is real) for
-- ids of T positions after `past` cached ones
function M.positions(self, B, T, past, mask_rows)
  local pos = {}
  local all_real = true
  if not mask_rows then
    local row = {}
    for t = 1, T do row[t] = past + t - 1 end
    for b = 1, B do pos[b] = row end
    return E.tensor(pos, self.dtype), nil, past + T - 1
  end
  local S = past + T
  local maxpos = 0
  local km = {}
  for b = 1, B do
    local r, c, prow, krow = mask_rows[b], 0, {}, {}
    for s = 1, S do
      local real = r[s] ~= 0
      if real then c = c + 1 else all_real = false end
      krow[s] = real and 1 or 0
      if s > past then
        local p = real and c - 1 or 1
        prow[s - past] = p
        if p > maxpos then maxpos = p end
      end
    end
    pos[b], km[b] = prow, krow
  end
  return E.tensor(pos, self.dtype), (not all_real) and E.tensor(km, self.dtype) or nil, maxpos
end

-- the same as M.positions for a mask given as a (B, past+T) tensor: the
-- real tokens before the new ones are counted and the key mask is built by
-- tensor ops, so a decode step (T = 1) costs O(B) Lua work, not O(B·past)
function M.positions_from_tensor(self, B, T, past, mask)
  local real = E.where(mask, 1, 0) -- (B,S): 1 on real tokens
  local before = past > 0 and real:narrow(2, 1, past):sum(2):totable() or nil
  local new = real:narrow(2, past + 1, T):totable()
  local pos, maxpos, n_real = {}, 0, 0
  for b = 1, B do
    local c, r, prow = before and math.tointeger(before[b]) or 0, new[b], {}
    for t = 1, T do
      local p = 1
      if r[t] ~= 0 then
        c = c + 1
        p = c - 1
      end
      prow[t] = p
      if p > maxpos then maxpos = p end
    end
    pos[b], n_real = prow, n_real + c
  end
  local key_mask = n_real < B * (past + T) and real:to(self.dtype) or nil
  return E.tensor(pos, self.dtype), key_mask, maxpos
end

-- the shared front of forward/hidden/logprobs: the final hidden states
-- (B,T,C); advances opts.cache.len by T
local FORWARD_OPTS = { attention_mask = true, cache = true, chunk_rows = true }

function CausalLM:hidden(ids, opts)
  opts = opts or {}
  if type(opts) ~= "table" then M.fail("hidden: opts must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not FORWARD_OPTS[k] then
      M.fail("hidden: unknown option '%s' (the options are attention_mask, cache, chunk_rows)", tostring(k))
    end
  end
  local x, B, T = read_ids(self, ids, "hidden")
  local cache = opts.cache
  local past = 0
  if cache then
    if cache.batch ~= B then M.fail("hidden: the cache was made for %d rows, ids has %d", cache.batch, B) end
    past = cache.len
    if past + T > cache.max_len then
      M.fail("hidden: the cache holds %d positions; %d are filled and %d more were given", cache.max_len, past, T)
    end
  end
  local mask = read_mask(opts.attention_mask, B, past + T, "hidden", cache ~= nil, cache ~= nil)
  local pos, key_mask, maxpos
  if E.is_tensor(mask) then
    pos, key_mask, maxpos = M.positions_from_tensor(self, B, T, past, mask)
  else
    pos, key_mask, maxpos = M.positions(self, B, T, past, mask)
  end
  local h = self:_body(x, pos, key_mask, cache, past, maxpos)
  if cache then cache.len = past + T end
  return h
end
CausalLM.hidden = M.guard(CausalLM.hidden)

-- convert the parameters to dtype (nn.Module.to) and make later inputs,
-- caches and rotary tables in it; returns self
function CausalLM:to(dtype)
  nn.Module.to(self, dtype)
  rawset(self, "dtype", nn.dtype_name(dtype))
  return self
end

-- the language-model head's weight (V,C), or an error naming what is missing
function CausalLM:head_weight(op)
  local w = self:lm_head_weight()
  if not w then
    M.fail("%s: this model has no language-model head (loaded as %s without lm_head.weight)", op,
      tostring(self.config.architectures and self.config.architectures[1] or "a base model"))
  end
  return w
end

-- logits (B,T,V)
function CausalLM:forward(ids, opts)
  local h = self:hidden(ids, opts)
  return E.matmul(h, self:head_weight("forward"):transpose(1, 2))
end
CausalLM.forward = M.guard(CausalLM.forward)
CausalLM.__call = function(self, ...) return self:forward(...) end

-- rows of logits per chunk: about 4M logits (16 MB in float32) at a time
M.CHUNK_LOGITS = 1 << 22

-- (B,T) log-probabilities of labels (label < 0 gives 0) through the fused
-- head E.linear_logprobs: tiles of positions by tokens, so the (B,T,V)
-- logits never exist at once, with grad or without (the backward recomputes
-- each tile, or reuses the forward's when all the logits fit 256 MiB); rows
-- whose label is < 0 (prompt, padding) never reach the head.
-- opts: those of hidden, plus chunk_rows (positions per tile) and
-- temperature (log-probs under softmax(logits / temperature), as sampled).
function CausalLM:logprobs(ids, labels, opts)
  opts = opts or {}
  local W = self:head_weight("logprobs")
  local temp = type(opts) == "table" and opts.temperature
  if temp then
    if type(temp) ~= "number" or not (temp > 0) then
      M.fail("logprobs: temperature must be a positive number, got %s", show(temp))
    end
    local rest = {}
    for k, v in pairs(opts) do if k ~= "temperature" then rest[k] = v end end
    opts = rest
  end
  local h = self:hidden(ids, opts)
  -- log softmax(logits / T): the head has no bias, so (h / T) W^T
  if temp and temp ~= 1 then h = h * (1 / temp) end
  local s = h:shape()
  local B, T = s[1], s[2]
  local V = W:shape()[1]
  local lab, labt
  if E.is_tensor(labels) then
    if labels:dim() ~= 2 or labels:shape()[1] ~= B or labels:shape()[2] ~= T then
      M.fail("logprobs: labels is %s, ids is [%d,%d]: they must have the same shape", labels:shape_str(), B, T)
    end
    lab, labt = labels:totable(), labels
  elseif type(labels) == "table" then
    local ok = #labels == B
    for b = 1, B do ok = ok and type(labels[b]) == "table" and #labels[b] == T end
    if not ok then M.fail("logprobs: labels must be %d rows of %d labels, as ids", B, T) end
    lab = labels
  else
    M.fail("logprobs: labels must be a tensor or a table, got %s", type(labels))
  end
  -- the checks only (the op checks again, in C): the messages name the model's op
  local floor, mtype = math.floor, math.type
  for b = 1, B do
    local row = lab[b]
    for t = 1, T do
      local l = row[t]
      if mtype(l) ~= "integer" and (mtype(l) ~= "float" or l ~= floor(l)) then
        M.fail("logprobs: label %s at [%d,%d] is not an integer", show(l), b, t)
      end
      if l >= V then
        local li = math.tointeger(l)
        M.fail("logprobs: label %s at [%d,%d] is out of range: the vocabulary has %d entries",
          li and tostring(li) or string.format("%g", l), b, t, V)
      end
    end
  end
  return E.linear_logprobs(h, W, labt or E.tensor(lab, "float64"), { chunk_rows = opts.chunk_rows })
end
CausalLM.logprobs = M.guard(CausalLM.logprobs)

-- a KV cache for B rows of up to max_len positions: per layer K and V
-- buffers (B,Hkv,max_len,D), filled in place by forward; cache.len counts
-- the filled positions
function CausalLM:new_cache(B, max_len)
  if math.type(B) ~= "integer" or B < 1 or math.type(max_len) ~= "integer" or max_len < 1 then
    error("new_cache: B and max_len must be positive integers, got " .. tostring(B) .. " and " .. tostring(max_len), 2)
  end
  local hp = self.hp
  local cache = { len = 0, max_len = max_len, batch = B, layers = {} }
  for i = 1, hp.n_layer do
    cache.layers[i] = {
      k = E.zeros({ B, hp.n_kv_head, max_len, hp.head_dim }, self.dtype),
      v = E.zeros({ B, hp.n_kv_head, max_len, hp.head_dim }, self.dtype),
    }
  end
  return cache
end

-- the keys and values a layer attends to: with a cache, the new ones are
-- written at [past+1, past+T] and the filled part is returned
function M.cache_kv(cache, layer, past, k, v)
  if not cache then return k, v end
  local lc = cache.layers[layer]
  local T = k:shape()[3]
  lc.k:narrow(3, past + 1, T):copy_(k)
  lc.v:narrow(3, past + 1, T):copy_(v)
  return lc.k:narrow(3, 1, past + T), lc.v:narrow(3, 1, past + T)
end

-- rows (B,H,T,D) from a projection (B,T,H*D) (with T = 1, one reshape)
function M.split_heads(x, H, D)
  local s = x:shape()
  if s[2] == 1 then return x:reshape({ s[1], H, 1, D }) end
  return x:reshape({ s[1], s[2], H, D }):permute(1, 3, 2, 4)
end

-- (B,H,T,D) -> (B,T,H*D)
function M.merge_heads(x)
  local s = x:shape()
  if s[3] == 1 then return x:reshape({ s[1], 1, s[2] * s[4] }) end
  return x:permute(1, 3, 2, 4):reshape({ s[1], s[3], s[2] * s[4] })
end

-- attention of one new query per row (a decode step) over the cached keys,
-- softmax(scale·q·kᵀ, hidden keys at -inf)·v in plain ops: q (B,H,1,D), k
-- and v (B,Hkv,S,D), key_mask (B,S) 1 on real keys or nil; scale nil is
-- 1/sqrt(D). -> (B,H,1,D). The same as E.attention(q, k, v, {mask =
-- key_mask, causal = true, scale = scale}) (with one query the causal limit
-- hides nothing), up to rounding: the fused op runs one BLAS call per (row,
-- head), which for a single query costs more than the arithmetic, while
-- these products, a few rows each, take E.matmul's small-product kernel.
-- The query heads sharing a kv head are the rows of one product.
function M.decode_attention(q, k, v, key_mask, scale)
  local qs, ks = q:shape(), k:shape()
  local B, H, D, Hkv, S = qs[1], qs[2], qs[4], ks[2], ks[3]
  local scores = E.matmul(q:reshape({ B, Hkv, H // Hkv, D }), k:transpose(3, 4)) * (scale or 1 / math.sqrt(D))
  if key_mask then scores = E.where(key_mask:reshape({ B, 1, 1, S }), scores, -math.huge) end
  return E.matmul(E.softmax(scores, 4), v):reshape({ B, H, 1, D })
end

-- ---- state and saving -----------------------------------------------------------

-- the tensors to save: name -> tensor, the model's parameters without
-- adapter modules (LoRA), with the architecture's head naming applied
function CausalLM:state_tensors()
  local out = {}
  for _, p in ipairs(self:parameters({ skip = function(m) return m._adapter_module end })) do
    out[p.name] = p.tensor
  end
  return out
end

-- a copy of the config table (deep), JSON nulls kept
function M.copy_config(cfg)
  if type(cfg) ~= "table" or cfg == json.null then return cfg end
  local out = {}
  for k, v in pairs(cfg) do out[k] = M.copy_config(v) end
  return setmetatable(out, getmetatable(cfg))
end

-- JSON text of a table with its keys sorted at every level
function M.encode_json(t)
  local keys, seen = {}, {}
  local function collect(x)
    if type(x) ~= "table" or x == json.null then return end
    for k, v in pairs(x) do
      if type(k) == "string" and not seen[k] then
        seen[k] = true
        keys[#keys + 1] = k
      end
      collect(v)
    end
  end
  collect(t)
  table.sort(keys)
  return json.encode(t, { indent = true, keyorder = keys }) .. "\n"
end

-- mkdir -p
function M.mkdirs(dir)
  local lfs = require("lfs")
  local path = dir:sub(1, 1) == "/" and "/" or ""
  for part in dir:gmatch("[^/]+") do
    path = path .. part
    if not lfs.attributes(path, "mode") then
      local ok, err = lfs.mkdir(path)
      if not ok and not lfs.attributes(path, "mode") then return nil, "cannot create " .. path .. ": " .. tostring(err) end
    end
    path = path .. "/"
  end
  return true
end

function M.write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(text)
  f:close()
  return true
end

-- config.json + model.safetensors (shards above 5 GB, as Hugging Face) in
-- dir (created when missing); unmerged
-- LoRA adapters are saved beside them (adapter_config.json +
-- adapter_model.safetensors) so that nothing trained is lost
function CausalLM:save(dir)
  if type(dir) ~= "string" then M.fail("save: dir must be a string, got %s", type(dir)) end
  local ok, err = M.mkdirs(dir)
  if not ok then M.fail("save: %s", err) end
  local cfg = self:saved_config()
  ok, err = M.write_file(dir .. "/config.json", M.encode_json(cfg))
  if not ok then M.fail("save: %s", err) end
  ok, err = E.safetensors.save_dir(dir, self:state_tensors())
  if not ok then M.fail("save: %s", err) end
  if rawget(self, "_lora") then require("engine.lora").save(self, dir, { base_model_name_or_path = dir }) end
  return true
end
CausalLM.save = M.guard(CausalLM.save)

local base_get = M.get

-- the config written by save: the model's config with its architecture
-- (and, with a head, id2label/label2id of its K outputs)
function CausalLM:saved_config()
  local cfg = M.copy_config(self.config)
  cfg.model_type = self.model_type
  if rawget(self, "score_head") then
    cfg.architectures = { self.arch_names.classification }
    local K = self.score_head.out_features
    local id2label = base_get(cfg, "id2label")
    local n = 0
    if type(id2label) == "table" then
      for _ in pairs(id2label) do n = n + 1 end
    end
    if n ~= K then
      cfg.id2label, cfg.label2id = {}, {}
      for i = 0, K - 1 do
        cfg.id2label[tostring(i)] = "LABEL_" .. i
        cfg.label2id["LABEL_" .. i] = i
      end
    end
    if base_get(cfg, "num_labels") ~= nil then cfg.num_labels = K end
  else
    cfg.architectures = { self.arch_names.causal_lm }
  end
  return cfg
end

return M
