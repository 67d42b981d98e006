-- engine/models/init.lua — E.models: load a Hugging Face model directory,
-- make a randomly initialised model from a config, attach value heads.
--
--   E.models.load(dir, opts) -> model, or nil, message when dir, its
--       config.json or its weights (model.safetensors, or shards listed in
--       model.safetensors.index.json) are missing. Dispatches on
--       config.model_type: "gpt2", "llama" (SmolLM too), "qwen2". A
--       directory whose architectures[1] ends in ForSequenceClassification
--       is a reward model: it gets the "score" head (models/heads.lua) and
--       may lack lm_head.weight. An adapter_config.json beside the weights
--       re-applies those LoRA adapters (engine/lora.lua).
--       opts: dtype ("float32" | "float64"), value_head (true or the options
--       of with_value_head: add a fresh head), adapters (false: ignore
--       adapter files).
--   E.models.new(config, opts) -> a model with Hugging Face's random init
--       (normal(0, initializer_range), zero biases, unit norms; GPT-2's
--       c_proj scaled by 1/sqrt(2·n_layer)). opts: seed (0), generator, dtype.
--   E.models.with_value_head(model, opts) -> model with a head (heads.lua)
--
-- Models start in eval mode (as from_pretrained returns them); model:train()
-- turns dropout on. Every parameter requires grad.
--
-- Errors that name the file and the key or tensor: a missing or ill-typed
-- config key, keys that contradict each other, an unknown model_type, a
-- tensor missing from the checkpoint or of the wrong shape. Tensors the
-- model does not use are listed in model.unused_tensors (not an error, as in
-- Hugging Face), leaving out known buffers (GPT-2's attn.bias).
--
-- Not here: tokenizers (engine.tokenizer), the safetensors format
-- (engine.safetensors), the architectures (gpt2.lua, llama.lua).
local E = require("engine")
local base = require("engine.models.causal_lm")
local heads = require("engine.models.heads")
local json = require("dkjson")

local M = {}

local llama = require("engine.models.llama")
M.architectures = {
  gpt2 = require("engine.models.gpt2"),
  llama = llama.llama,
  qwen2 = llama.qwen2,
}
local SUPPORTED = "gpt2, llama, qwen2"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function read_json(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local v, _, msg = json.decode(text, 1, json.null)
  if msg then base.fail("models.load: %s: invalid JSON: %s", path, msg) end
  if type(v) ~= "table" then base.fail("models.load: %s: expected a JSON object", path) end
  return v
end

local function check_opts(op, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then base.fail("%s: opts must be a table, got %s", op, type(opts)) end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      base.fail("%s: unknown option '%s' (the options are %s)", op, tostring(k), table.concat(names, ", "))
    end
  end
  return opts
end

local function check_dtype(op, dtype)
  dtype = dtype or "float32"
  if dtype == "float" then dtype = "float32" elseif dtype == "double" then dtype = "float64" end
  if dtype ~= "float32" and dtype ~= "float64" then
    base.fail('%s: dtype must be "float32" or "float64", got %s', op, base.show(dtype))
  end
  return dtype
end

-- the architecture class for a config
local function arch_of(cfg, where)
  local mt = base.get(cfg, "model_type")
  if mt == nil then base.fail('%s: missing key "model_type"', where) end
  local cls = type(mt) == "string" and M.architectures[mt]
  if not cls then base.fail("%s: unknown model_type %s (supported: %s)", where, base.show(mt), SUPPORTED) end
  return cls
end

-- the number of labels of a *ForSequenceClassification config
local function num_labels(cfg, where)
  local n = base.get(cfg, "num_labels")
  if n ~= nil then return base.int_key(cfg, "num_labels", where) end
  local id2label = base.get(cfg, "id2label")
  if type(id2label) == "table" then
    local c = 0
    for _ in pairs(id2label) do c = c + 1 end
    if c > 0 then return c end
  end
  return 2 -- Hugging Face's default
end

local function is_classifier(cfg)
  local a = base.get(cfg, "architectures")
  return type(a) == "table" and type(a[1]) == "string" and a[1]:match("ForSequenceClassification$") ~= nil
end

local function build(cls, cfg, hp, dtype, src)
  local model = base.init_model(cls, cfg, hp, dtype)
  cls.build(model, hp, src)
  return model
end

-- ---- random init ------------------------------------------------------------------

local function init_source(dtype, gen)
  return function(_, shape, init)
    local t
    if init[1] == "normal" then
      t = E.randn(shape, { generator = gen, dtype = dtype }) * init[2]
    elseif init[1] == "ones" then
      t = E.ones(shape, dtype)
    else
      t = E.zeros(shape, dtype)
    end
    return t:requires_grad(true)
  end
end

function M.new(config, opts)
  opts = check_opts("models.new", opts, { seed = true, generator = true, dtype = true })
  if type(config) ~= "table" then base.fail("models.new: config must be a table, got %s", type(config)) end
  local dtype = check_dtype("models.new", opts.dtype)
  local cfg = base.copy_config(config)
  local cls = arch_of(cfg, "models.new: config")
  local hp = cls.read_config(cfg, "models.new: config")
  local gen = opts.generator or E.Generator(opts.seed or 0)
  return build(cls, cfg, hp, dtype, init_source(dtype, gen))
end
M.new = base.guard(M.new)

-- ---- loading ------------------------------------------------------------------------

-- hands out checkpoint tensors by Hugging Face name, checking shapes; names
-- of a base-model checkpoint (no "transformer." / "model." prefix) are found
-- too
local function checkpoint_source(tensors, file, dtype, cls, head_optional)
  local prefix = cls.prefix
  local strip = true
  for name in pairs(tensors) do
    if name:sub(1, #prefix) == prefix then
      strip = false
      break
    end
  end
  local used = {}
  local function src(name, shape, _, flags)
    local key = name
    if strip and name:sub(1, #prefix) == prefix then key = name:sub(#prefix + 1) end
    local t = tensors[key]
    if t == nil then
      if flags and flags.optional_head and head_optional then return nil end
      base.fail('%s: missing tensor "%s"', file, key)
    end
    local s = t:shape()
    local same = #s == #shape
    for i = 1, #shape do same = same and s[i] == shape[i] end
    if not same then
      base.fail('%s: tensor "%s" is %s, expected %s', file, key, base.shape_str(s), base.shape_str(shape))
    end
    used[key] = true
    if t:dtype() ~= dtype then t = E.tensor(t, dtype) end
    return t:requires_grad(true)
  end
  return src, used
end

local function load(dir, opts)
  opts = check_opts("models.load", opts, { dtype = true, value_head = true, adapters = true })
  if type(dir) ~= "string" then base.fail("models.load: dir must be a string, got %s", type(dir)) end
  local dtype = check_dtype("models.load", opts.dtype)
  dir = dir:gsub("/+$", "")
  local cfg_path = dir .. "/config.json"
  if not exists(cfg_path) then
    return nil, "models.load: " .. cfg_path .. ": no such file"
  end
  local cfg = read_json(cfg_path)
  local file = dir .. "/model.safetensors"
  if not exists(file) then
    file = dir .. "/model.safetensors.index.json"
    if not exists(file) then
      return nil, "models.load: " .. dir .. ": no model.safetensors or model.safetensors.index.json"
    end
  end
  local where = "models.load: " .. cfg_path
  local cls = arch_of(cfg, where)
  local hp = cls.read_config(cfg, where)
  local classifier = is_classifier(cfg)
  local tensors, err = E.safetensors.load_dir(dir, { dtype = dtype })
  if not tensors then base.fail("models.load: %s", tostring(err)) end
  local src, used = checkpoint_source(tensors, "models.load: " .. file, dtype, cls, classifier)
  local model = build(cls, cfg, hp, dtype, src)
  if classifier then
    local K = num_labels(cfg, where)
    local bias = tensors["score.bias"] and src("score.bias", { K })
    heads.attach(model, { num_outputs = K, weight = src("score.weight", { K, hp.n_embd }), bias = bias })
  end
  local unused = {}
  for name in pairs(tensors) do
    local skip = used[name] or (hp.tied and name == "lm_head.weight")
    for _, pat in ipairs(cls.ignored) do skip = skip or name:match(pat) ~= nil end
    if not skip then unused[#unused + 1] = name end
  end
  table.sort(unused)
  rawset(model, "unused_tensors", unused)
  rawset(model, "path", dir)
  if opts.value_head and not classifier then
    heads.attach(model, type(opts.value_head) == "table" and opts.value_head or {})
  end
  if opts.adapters ~= false and exists(dir .. "/adapter_config.json") then
    local ok, msg = require("engine.lora").load(model, dir)
    if not ok then base.fail("models.load: %s", msg) end
  end
  return model
end
M.load = base.guard(load)

-- attach a value head (K = opts.num_outputs scalars per position) to model
function M.with_value_head(model, opts)
  if type(model) ~= "table" or not model.hp then
    base.fail("with_value_head: expected a model, got %s", type(model))
  end
  return heads.attach(model, opts)
end
M.with_value_head = base.guard(M.with_value_head)

return M
