-- engine/lora.lua — E.lora: low-rank adapters (Hu et al. 2021, LoRA, Eq. 3:
-- h = W0·x + (α/r)·B·A·x) on chosen Linear / Conv1D layers of a model, in
-- the layout of PEFT so that adapters move between the two unchanged.
--
--   E.lora.apply(model, {rank=, alpha=, targets={"q_proj","v_proj"},
--                        dropout=0, seed=, generator=, use_rslora=false})
--       -> adapters. Every layer whose dotted name is a target or ends in
--       "." .. target gets lora_A (r, in) drawn as PEFT does (uniform
--       ±1/sqrt(in), kaiming_uniform with a = sqrt(5)) and lora_B (out, r) of
--       zeros, as child modules: "…q_proj.lora_A.weight". The base weights
--       stop requiring grad; the adapters' are the only ones that do.
--       adapters:parameters() lists them. Scaling α/r (α/sqrt(r) with
--       use_rslora). Dropout on the adapter input in training mode only.
--   E.lora.disable(model), E.lora.enable(model),
--   E.lora.with_disabled(model, fn, ...) -> fn(...) with the adapters off
--       (restored however fn ends): the reference model of DPO/PPO from the
--       same weights, with no second copy.
--   E.lora.merge(model): W += (α/r)·B·A in place (Conv1D: its transpose), and
--       the adapters are removed; model:save then writes the merged model.
--   E.lora.unload(model): the adapters are removed without merging.
--       Both give the base weights their requires_grad flags back.
--   E.lora.save(model, dir, opts): adapter_config.json +
--       adapter_model.safetensors with PEFT's names
--       (base_model.model.<layer>.lora_A.weight); opts.base_model_name_or_path
--       (default: the directory the model was loaded from).
--   E.lora.load(model, dir) -> adapters, or nil, message when the files are
--       missing: applies the adapters a save (or PEFT) wrote.
--   E.lora.parameters(model) -> the adapters' {name=, tensor=} list.
--
-- model:save(dir) of a model with unmerged adapters writes the base weights
-- and these adapter files beside them; E.models.load re-applies them.
--
-- Not here: adapters on embeddings or convolutions, DoRA, several named
-- adapters at once, PEFT's regex form of target_modules.
local E = require("engine")
local nn = require("engine.nn")
local base = require("engine.models.causal_lm")
local json = require("dkjson")

local L = {}

local CONFIG = "adapter_config.json"
local WEIGHTS = "adapter_model.safetensors"

-- the per-layer hook nn.Linear / nn.Conv1D call: y + scaling·B(A(x))
local Adapter = {}
Adapter.__index = Adapter

function Adapter:add(m, x, y)
  if not self.enabled then return y end
  if self.dropout > 0 and m.training then x = E.dropout(x, self.dropout, self.generator) end
  return y + m.lora_B(m.lora_A(x)) * self.scaling
end

local Adapters = {}
Adapters.__index = Adapters

-- the adapters' parameters: {name=, tensor=} with the model's names
function Adapters:parameters()
  local out = {}
  for _, e in ipairs(self.modules) do
    out[#out + 1] = { name = e.name .. ".lora_A.weight", tensor = e.module.lora_A.weight }
    out[#out + 1] = { name = e.name .. ".lora_B.weight", tensor = e.module.lora_B.weight }
  end
  return out
end

function Adapters:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p.tensor:numel() end
  return n
end

local function is_linear(m)
  local mt = getmetatable(m)
  return mt == nn.Linear or mt == nn.Conv1D
end

local function matches(name, target)
  return name == target or name:sub(-#target - 1) == "." .. target
end

local function check_model(op, model)
  if type(model) ~= "table" or not model.named_modules then
    base.fail("%s: expected a model, got %s", op, type(model))
  end
end

local function adapters_of(op, model)
  check_model(op, model)
  local a = rawget(model, "_lora")
  if not a then base.fail("%s: the model has no LoRA adapters (use E.lora.apply)", op) end
  return a
end

local apply_opts = { rank = true, alpha = true, targets = true, dropout = true, seed = true, generator = true,
  use_rslora = true }

local function apply(model, opts)
  check_model("lora.apply", model)
  if type(opts) ~= "table" then base.fail("lora.apply: opts must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not apply_opts[k] then
      base.fail("lora.apply: unknown option '%s' (the options are alpha, dropout, generator, rank, seed, targets, "
        .. "use_rslora)", tostring(k))
    end
  end
  if rawget(model, "_lora") then base.fail("lora.apply: the model already has LoRA adapters") end
  local r = opts.rank
  if math.type(r) ~= "integer" or r < 1 then
    base.fail("lora.apply: rank must be a positive integer, got %s", base.show(r))
  end
  local alpha = opts.alpha or 8
  if type(alpha) ~= "number" or alpha <= 0 then
    base.fail("lora.apply: alpha must be a positive number, got %s", base.show(alpha))
  end
  local p = opts.dropout or 0
  if type(p) ~= "number" or p < 0 or p >= 1 then
    base.fail("lora.apply: dropout must be in [0, 1), got %s", base.show(p))
  end
  local targets = opts.targets
  if type(targets) ~= "table" or #targets == 0 then
    base.fail('lora.apply: targets must be a non-empty list of layer names such as {"q_proj", "v_proj"}, got %s',
      base.show(targets))
  end
  -- find the layers, checking every target
  local layers, linear_names, seen = {}, {}, {}
  for _, e in ipairs(model:named_modules()) do
    if is_linear(e.module) then
      local short = e.name:match("([^.]+)$")
      if not seen[short] then
        seen[short] = true
        linear_names[#linear_names + 1] = short
      end
    end
  end
  for _, t in ipairs(targets) do
    if type(t) ~= "string" then base.fail("lora.apply: targets must be strings, got %s", base.show(t)) end
    local hit = false
    for _, e in ipairs(model:named_modules()) do
      if e.name ~= "" and matches(e.name, t) then
        if not is_linear(e.module) then
          base.fail('lora.apply: target "%s" matches %s, which is not a Linear or Conv1D layer', t, e.name)
        end
        hit = true
      end
    end
    if not hit then
      base.fail('lora.apply: target "%s" matches no layer (the linear layers are %s)', t,
        table.concat(linear_names, ", "))
    end
  end
  for _, e in ipairs(model:named_modules()) do
    for _, t in ipairs(targets) do
      if e.name ~= "" and is_linear(e.module) and matches(e.name, t) then
        layers[#layers + 1] = e
        break
      end
    end
  end

  local frozen = {}
  for _, q in ipairs(model:parameters()) do frozen[#frozen + 1] = { q.tensor, q.tensor:requires_grad() } end
  model:requires_grad_(false)
  local gen = opts.generator or (opts.seed and E.Generator(opts.seed))
  local dtype = model.dtype
  local scaling = opts.use_rslora and alpha / math.sqrt(r) or alpha / r
  for _, e in ipairs(layers) do
    local m = e.module
    local nin, nout = m.in_features, m.out_features
    local A = nn.Linear(nin, r, {
      weight = nn.init_uniform({ r, nin }, 1 / math.sqrt(nin), { generator = gen, dtype = dtype }):requires_grad(true),
      bias = false,
    })
    local B = nn.Linear(r, nout, { weight = E.zeros({ nout, r }, dtype):requires_grad(true), bias = false })
    rawset(A, "_adapter_module", true)
    rawset(B, "_adapter_module", true)
    A.training, B.training = m.training, m.training
    m:add_module("lora_A", A)
    m:add_module("lora_B", B)
    rawset(m, "adapter", setmetatable({ enabled = true, scaling = scaling, dropout = p, generator = opts.generator },
      Adapter))
  end
  local targets_copy = table.move(targets, 1, #targets, 1, {})
  local adapters = setmetatable({
    rank = r, alpha = alpha, scaling = scaling, dropout = p, targets = targets_copy,
    use_rslora = opts.use_rslora and true or false, modules = layers, enabled = true, frozen = frozen,
  }, Adapters)
  rawset(model, "_lora", adapters)
  return adapters
end
L.apply = base.guard(apply)

local function set_enabled(model, on)
  local a = adapters_of(on and "lora.enable" or "lora.disable", model)
  for _, e in ipairs(a.modules) do e.module.adapter.enabled = on end
  a.enabled = on
end

L.disable = base.guard(function(model) set_enabled(model, false) end)
L.enable = base.guard(function(model) set_enabled(model, true) end)

-- fn(...) with the adapters off; their previous state comes back however fn
-- ends
function L.with_disabled(model, fn, ...)
  if type(fn) ~= "function" then error("lora.with_disabled: fn must be a function, got " .. type(fn), 2) end
  local ok, a = pcall(adapters_of, "lora.with_disabled", model)
  if not ok then error(base.is_failure(a) and a.msg or a, 2) end
  local prev = a.enabled
  local _ <close> = setmetatable({}, { __close = function() set_enabled(model, prev) end })
  set_enabled(model, false)
  return fn(...)
end

function L.parameters(model)
  local ok, a = pcall(adapters_of, "lora.parameters", model)
  if not ok then error(base.is_failure(a) and a.msg or a, 2) end
  return a:parameters()
end

-- take the adapters out (merged into the weights first when `fold`), and
-- give the base weights back their requires_grad flags
local function remove(model, a, fold)
  E.no_grad(function()
    for _, e in ipairs(a.modules) do
      local m = e.module
      if fold then
        local delta = E.matmul(m.lora_B.weight, m.lora_A.weight) * a.scaling -- (out, in)
        if getmetatable(m) == nn.Conv1D then delta = delta:transpose(1, 2) end
        m.weight:add_(delta)
      end
      m:remove_module("lora_A")
      m:remove_module("lora_B")
      rawset(m, "adapter", nil)
    end
  end)
  for _, f in ipairs(a.frozen) do f[1]:requires_grad(f[2]) end
  rawset(model, "_lora", nil)
  return model
end

-- W += scaling·B·A in place; the adapters are removed
L.merge = base.guard(function(model) return remove(model, adapters_of("lora.merge", model), true) end)

-- remove the adapters without merging them: the base model again
L.unload = base.guard(function(model) return remove(model, adapters_of("lora.unload", model), false) end)

local function object(t) return setmetatable(t or {}, { __jsontype = "object" }) end

local function save(model, dir, opts)
  local a = adapters_of("lora.save", model)
  opts = opts or {}
  if type(dir) ~= "string" then base.fail("lora.save: dir must be a string, got %s", type(dir)) end
  local ok, err = base.mkdirs(dir)
  if not ok then base.fail("lora.save: %s", err) end
  local conv = false
  for _, e in ipairs(a.modules) do conv = conv or getmetatable(e.module) == nn.Conv1D end
  local cfg = {
    alpha_pattern = object(),
    auto_mapping = json.null,
    base_model_name_or_path = opts.base_model_name_or_path or rawget(model, "path") or json.null,
    bias = "none",
    fan_in_fan_out = conv,
    inference_mode = true,
    init_lora_weights = true,
    layers_pattern = json.null,
    layers_to_transform = json.null,
    lora_alpha = a.alpha,
    lora_dropout = a.dropout,
    modules_to_save = json.null,
    peft_type = "LORA",
    r = a.rank,
    rank_pattern = object(),
    revision = json.null,
    target_modules = a.targets,
    task_type = rawget(model, "score_head") and "SEQ_CLS" or "CAUSAL_LM",
    use_rslora = a.use_rslora,
  }
  ok, err = base.write_file(dir .. "/" .. CONFIG, base.encode_json(cfg))
  if not ok then base.fail("lora.save: %s", err) end
  local tensors = {}
  for _, p in ipairs(a:parameters()) do tensors["base_model.model." .. p.name] = p.tensor end
  ok, err = E.safetensors.save(dir .. "/" .. WEIGHTS, tensors, { format = "pt" })
  if not ok then base.fail("lora.save: %s", err) end
  return true
end
L.save = base.guard(save)

-- copy the adapter tensors of a file into the applied adapters; every
-- tensor must be used and of the right shape
local function fill(a, tensors, wfile)
  local used = {}
  for _, e in ipairs(a.modules) do
    for _, ab in ipairs({ "lora_A", "lora_B" }) do
      local key = "base_model.model." .. e.name .. "." .. ab .. ".weight"
      local t = tensors[key]
      local w = e.module[ab].weight
      if not t then
        base.fail('%s: missing tensor "%s"', wfile, key)
      end
      local s, want = t:shape(), w:shape()
      if #s ~= 2 or s[1] ~= want[1] or s[2] ~= want[2] then
        base.fail('%s: tensor "%s" is %s, expected %s', wfile, key, base.shape_str(s), base.shape_str(want))
      end
      E.no_grad(function() w:copy_(t) end)
      used[key] = true
    end
  end
  for name in pairs(tensors) do
    if not used[name] then base.fail('%s: tensor "%s" matches no adapted layer', wfile, name) end
  end
end

local function load(model, dir)
  check_model("lora.load", model)
  if type(dir) ~= "string" then base.fail("lora.load: dir must be a string, got %s", type(dir)) end
  local cpath, wpath = dir .. "/" .. CONFIG, dir .. "/" .. WEIGHTS
  local f = io.open(cpath, "rb")
  if not f then return nil, "lora.load: " .. cpath .. ": no such file" end
  local text = f:read("a")
  f:close()
  local cfg, _, msg = json.decode(text, 1, json.null)
  if msg or type(cfg) ~= "table" then base.fail("lora.load: %s: invalid JSON: %s", cpath, tostring(msg)) end
  local where = "lora.load: " .. cpath
  if base.get(cfg, "peft_type") ~= "LORA" then
    base.fail('%s: peft_type is %s; only "LORA" adapters are supported', where, base.show(base.get(cfg, "peft_type")))
  end
  local r = base.int_key(cfg, "r", where)
  local alpha = base.num_key(cfg, "lora_alpha", where, 8, 0)
  local targets = base.get(cfg, "target_modules")
  if type(targets) ~= "table" or #targets == 0 then
    base.fail('%s: key "target_modules" must be a list of layer names, got %s', where, base.show(targets))
  end
  local tensors, err = E.safetensors.load(wpath, { dtype = model.dtype })
  if not tensors then return nil, "lora.load: " .. tostring(err) end
  local a = apply(model, {
    rank = r, alpha = alpha, targets = targets,
    dropout = base.num_key(cfg, "lora_dropout", where, 0, 0, 1),
    use_rslora = base.bool_key(cfg, "use_rslora", where, false),
  })
  local ok, e = pcall(fill, a, tensors, "lora.load: " .. wpath)
  if not ok then
    remove(model, a, false)
    error(e, 0)
  end
  return a
end
L.load = base.guard(load)

return L
