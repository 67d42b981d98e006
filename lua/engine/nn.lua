-- engine/nn.lua — E.nn: the module system the models are built from.
--
-- A Module holds parameters (leaf tensors, stored as plain fields such as
-- m.weight) and child modules (fields too), both in registration order, so
-- that m:parameters() lists {name=, tensor=} with dotted names exactly as
-- PyTorch's named_parameters() does ("h.0.attn.c_attn.weight"). A tensor
-- reachable under two names (tied weights) is listed once, under the first.
-- The registry keeps names, not tensors: replacing m.weight by another
-- tensor (loading, E.gradcheck) is seen by forward and parameters() alike.
-- m:train()/m:eval() switch dropout for the whole tree; modules start in
-- eval mode (models come as from_pretrained gives them); m(x) is
-- m:forward(x).
--
-- Layers: Linear (weight (out,in) as torch; x·Wᵀ is one gemm with a
-- transpose flag), Conv1D (GPT-2's layer: weight (in,out), x·W), Embedding,
-- LayerNorm, RMSNorm, Dropout, ModuleList. Each is a thin shell over one or
-- two engine ops (E.linear, E.embedding, E.layer_norm, E.rms_norm,
-- E.dropout); all arithmetic is the engine's.
--
-- Not here: the models (engine.models), optimizers (engine.optim), LoRA
-- (engine.lora, which plugs into Linear and Conv1D through m.adapter).
local E = require("engine")

local nn = {}

-- ---- classes ---------------------------------------------------------------

local Module = {}
Module.__index = Module
Module.__name = "Module"

local function call_forward(self, ...) return self:forward(...) end
Module.__call = call_forward

-- nn.class(name, parent) -> a class table: Class(...) calls Class.new(...),
-- instances look methods up in Class, then in parent
function nn.class(name, parent)
  parent = parent or Module
  local cls = { __name = name, __call = call_forward, __tostring = parent.__tostring }
  cls.__index = cls
  return setmetatable(cls, {
    __index = parent,
    __call = function(c, ...) return c.new(...) end,
  })
end

-- the fields every module needs; subclasses' new() call this first
function Module.init(self)
  rawset(self, "_param_names", {})
  rawset(self, "_child_names", {})
  rawset(self, "training", false)
  return self
end

function Module.new()
  return Module.init(setmetatable({}, Module))
end

setmetatable(Module, { __call = function(c, ...) return c.new(...) end })

function Module:forward()
  error(tostring(self.__name) .. ": forward is not defined for this module", 2)
end

-- register a parameter under `name` (a nil tensor registers nothing: an
-- absent bias). Returns the tensor.
function Module:register_parameter(name, t)
  if t == nil then return nil end
  if not E.is_tensor(t) then
    error("register_parameter: " .. name .. " must be a tensor, got " .. type(t), 2)
  end
  if not self:_has_param(name) then table.insert(self._param_names, name) end
  rawset(self, name, t)
  return t
end

function Module:_has_param(name)
  for _, n in ipairs(self._param_names) do
    if n == name then return true end
  end
  return false
end

-- the field a child is stored in (its name unless add_module said otherwise)
local function field_of(m, name)
  local f = rawget(m, "_child_fields")
  return f and f[name] or name
end

local function child(m, name) return rawget(m, field_of(m, name)) end

-- add (or replace) a child module under `name`; returns it. opts.field
-- stores it in another field than its name (a model's value head is named
-- "score", as Hugging Face names it, but lives in model.score_head so that
-- model:score() stays a method)
function Module:add_module(name, m, opts)
  if type(m) ~= "table" or not m._param_names then
    error("add_module: " .. tostring(name) .. " must be a module, got " .. type(m), 2)
  end
  local known = false
  for _, n in ipairs(self._child_names) do
    if n == name then known = true end
  end
  if not known then table.insert(self._child_names, name) end
  if opts and opts.field and opts.field ~= name then
    local f = rawget(self, "_child_fields") or {}
    f[name] = opts.field
    rawset(self, "_child_fields", f)
  end
  rawset(self, field_of(self, name), m)
  return m
end

-- remove a child module (LoRA's merge uses it)
function Module:remove_module(name)
  for i, n in ipairs(self._child_names) do
    if n == name then
      table.remove(self._child_names, i)
      rawset(self, field_of(self, name), nil)
      local f = rawget(self, "_child_fields")
      if f then f[name] = nil end
      return
    end
  end
end

-- the ordered children: a list of {name=, module=}
function Module:children()
  local out = {}
  for _, n in ipairs(self._child_names) do
    out[#out + 1] = { name = n, module = child(self, n) }
  end
  return out
end

local function join(prefix, name)
  if prefix == "" then return name end
  return prefix .. "." .. name
end

-- every module of the tree, depth first, self first with name "":
-- a list of {name=, module=}
function Module:named_modules()
  local out = {}
  local function walk(m, prefix)
    out[#out + 1] = { name = prefix, module = m }
    for _, n in ipairs(m._child_names) do walk(child(m, n), join(prefix, n)) end
  end
  walk(self, "")
  return out
end

-- the parameters of the tree as an ordered list of {name=, tensor=}.
-- opts.skip(module) -> true leaves a module (and its subtree) out.
function Module:parameters(opts)
  local skip = opts and opts.skip
  local out, seen = {}, {}
  local function walk(m, prefix)
    if skip and prefix ~= "" and skip(m) then return end
    for _, n in ipairs(m._param_names) do
      local t = m[n]
      if t ~= nil and not seen[t] then
        seen[t] = true
        out[#out + 1] = { name = join(prefix, n), tensor = t }
      end
    end
    for _, n in ipairs(m._child_names) do walk(child(m, n), join(prefix, n)) end
  end
  walk(self, "")
  return out
end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p.tensor:numel() end
  return n
end

-- the module at a dotted path ("transformer.h.0.attn"), or nil
function Module:get_module(path)
  local m = self
  if path == "" then return m end
  for part in path:gmatch("[^.]+") do
    if type(m) ~= "table" or not m._child_names then return nil end
    local found = false
    for _, n in ipairs(m._child_names) do
      if n == part then found = true end
    end
    if not found then return nil end
    m = child(m, part)
  end
  return m
end

-- dropout on (true, the default) or off for the whole tree; returns self
function Module:train(on)
  if on == nil then on = true end
  for _, e in ipairs(self:named_modules()) do rawset(e.module, "training", on and true or false) end
  return self
end

function Module:eval() return self:train(false) end

-- set requires_grad on every parameter; returns self
function Module:requires_grad_(on)
  for _, p in ipairs(self:parameters()) do p.tensor:requires_grad(on and true or false) end
  return self
end

-- convert every parameter to dtype ("float32" / "float64") in place of the
-- old tensors (new leaves, with the old requires_grad flags); returns self
function Module:to(dtype)
  dtype = nn.dtype_name(dtype)
  local done = {}
  for _, e in ipairs(self:named_modules()) do
    local m = e.module
    for _, n in ipairs(m._param_names) do
      local t = m[n]
      if t ~= nil then
        if not done[t] then
          local c = t
          if t:dtype() ~= dtype then
            c = E.tensor(t, dtype)
            c:requires_grad(t:requires_grad())
          end
          done[t] = c
        end
        rawset(m, n, done[t])
      end
    end
  end
  return self
end

nn.Module = Module

-- "float32" / "float64" for the names E accepts ("float", "double" too)
function nn.dtype_name(dtype)
  if dtype == "float" or dtype == "float32" then return "float32" end
  if dtype == "double" or dtype == "float64" then return "float64" end
  error('to: dtype must be "float32" or "float64", got ' .. tostring(dtype), 3)
end

-- ---- initialisation helpers ---------------------------------------------------

-- normal(0, std) of `shape`; opts.generator or the default generator
function nn.init_normal(shape, std, opts)
  opts = opts or {}
  local t = E.randn(shape, { generator = opts.generator, dtype = opts.dtype })
  if std ~= 1 then t = t * std end
  return t
end

-- uniform(-k, k) of `shape`
function nn.init_uniform(shape, k, opts)
  opts = opts or {}
  local u = E.rand(shape, { generator = opts.generator, dtype = opts.dtype })
  return u * (2 * k) - k
end

local function param(t) return t:requires_grad(true) end

-- ---- Linear ------------------------------------------------------------------

-- y = x·Wᵀ + b; W (out,in), b (out). opts: bias (default true), weight,
-- bias_tensor (given tensors are used as they are), dtype, generator.
-- Default init as torch: uniform(-1/sqrt(in), 1/sqrt(in)) for W and b.
local Linear = nn.class("Linear")
nn.Linear = Linear

function Linear.new(in_features, out_features, opts)
  opts = opts or {}
  local self = Module.init(setmetatable({}, Linear))
  rawset(self, "in_features", in_features)
  rawset(self, "out_features", out_features)
  local k = 1 / math.sqrt(in_features)
  self:register_parameter("weight", opts.weight or param(nn.init_uniform({ out_features, in_features }, k, opts)))
  if opts.bias_tensor then
    self:register_parameter("bias", opts.bias_tensor)
  elseif opts.bias ~= false then
    self:register_parameter("bias", param(nn.init_uniform({ out_features }, k, opts)))
  end
  return self
end

-- E.linear(x, W, b, {transpose_w=}) is x·W + b (x·Wᵀ + b) as ONE engine op
-- (lua/binding_linear.c), equal bit for bit to E.matmul then + b: its node
-- keeps x and W for the backward, never the output or a pre-bias product.
local linear = E.linear
local AS_LINEAR, AS_CONV1D = { transpose_w = true }, { transpose_w = false }

-- x (..., in) -> (..., out) = x·Wᵀ + b in one op (W read in place through a
-- transpose flag); a LoRA adapter (m.adapter, engine.lora) then adds its
-- own term to that output
function Linear:forward(x)
  local y = linear(x, self.weight, self.bias, AS_LINEAR)
  if self.adapter then y = self.adapter:add(self, x, y) end
  return y
end

-- ---- Conv1D (GPT-2) -------------------------------------------------------------

-- y = x·W + b with W (in,out): Hugging Face's Conv1D, which stores the
-- transpose of a Linear's weight. opts as Linear; default init normal(0,
-- 0.02) for W and zeros for b, as Hugging Face initialises GPT-2.
local Conv1D = nn.class("Conv1D")
nn.Conv1D = Conv1D

function Conv1D.new(in_features, out_features, opts)
  opts = opts or {}
  local self = Module.init(setmetatable({}, Conv1D))
  rawset(self, "in_features", in_features)
  rawset(self, "out_features", out_features)
  rawset(self, "fan_in_fan_out", true)
  self:register_parameter("weight", opts.weight or param(nn.init_normal({ in_features, out_features }, 0.02, opts)))
  if opts.bias_tensor then
    self:register_parameter("bias", opts.bias_tensor)
  elseif opts.bias ~= false then
    self:register_parameter("bias", param(E.zeros({ out_features }, opts.dtype)))
  end
  return self
end

-- x (..., in) -> (..., out) = x·W + b in one op (E.linear, above); a LoRA
-- adapter (m.adapter) then adds its own term to that output
function Conv1D:forward(x)
  local y = linear(x, self.weight, self.bias, AS_CONV1D)
  if self.adapter then y = self.adapter:add(self, x, y) end
  return y
end

-- ---- Embedding ---------------------------------------------------------------

-- weight (V,C); ids (any shape) of 0-based ids -> (ids..., C).
-- opts: weight, dtype, generator, std (default 1, as torch)
local Embedding = nn.class("Embedding")
nn.Embedding = Embedding

function Embedding.new(num, dim, opts)
  opts = opts or {}
  local self = Module.init(setmetatable({}, Embedding))
  rawset(self, "num_embeddings", num)
  rawset(self, "embedding_dim", dim)
  self:register_parameter("weight", opts.weight or param(nn.init_normal({ num, dim }, opts.std or 1, opts)))
  return self
end

function Embedding:forward(ids) return E.embedding(self.weight, ids) end

-- ---- LayerNorm and RMSNorm ------------------------------------------------------

-- over the last dim; weight ones, bias zeros by default. opts: eps (1e-5),
-- weight, bias_tensor, bias (default true), dtype
local LayerNorm = nn.class("LayerNorm")
nn.LayerNorm = LayerNorm

function LayerNorm.new(dim, opts)
  opts = opts or {}
  local self = Module.init(setmetatable({}, LayerNorm))
  rawset(self, "eps", opts.eps or 1e-5)
  self:register_parameter("weight", opts.weight or param(E.ones({ dim }, opts.dtype)))
  if opts.bias_tensor then
    self:register_parameter("bias", opts.bias_tensor)
  elseif opts.bias ~= false then
    self:register_parameter("bias", param(E.zeros({ dim }, opts.dtype)))
  end
  return self
end

function LayerNorm:forward(x) return E.layer_norm(x, self.weight, self.bias, self.eps) end

-- x / sqrt(mean(x²) + eps) · weight over the last dim. opts: eps (1e-6),
-- weight, dtype
local RMSNorm = nn.class("RMSNorm")
nn.RMSNorm = RMSNorm

function RMSNorm.new(dim, opts)
  opts = opts or {}
  local self = Module.init(setmetatable({}, RMSNorm))
  rawset(self, "eps", opts.eps or 1e-6)
  self:register_parameter("weight", opts.weight or param(E.ones({ dim }, opts.dtype)))
  return self
end

function RMSNorm:forward(x) return E.rms_norm(x, self.weight, self.eps) end

-- ---- Dropout ------------------------------------------------------------------

-- inverted dropout in training mode, the identity in eval mode.
-- opts.generator: the generator to draw from (default: the process-wide one)
local Dropout = nn.class("Dropout")
nn.Dropout = Dropout

function Dropout.new(p, opts)
  if type(p) ~= "number" or p < 0 or p >= 1 then
    error("Dropout: p must be a number in [0, 1), got " .. tostring(p), 2)
  end
  local self = Module.init(setmetatable({}, Dropout))
  rawset(self, "p", p)
  rawset(self, "generator", opts and opts.generator)
  return self
end

function Dropout:forward(x)
  if not self.training or self.p == 0 then return x end
  return E.dropout(x, self.p, self.generator)
end

-- ---- ModuleList -----------------------------------------------------------------

-- children named "0", "1", ... (as torch's ModuleList); m[i] (1-based) is
-- the i-th; #m counts them
local ModuleList = nn.class("ModuleList")
nn.ModuleList = ModuleList

function ModuleList.new(list)
  local self = Module.init(setmetatable({}, ModuleList))
  rawset(self, "n", 0)
  for _, m in ipairs(list or {}) do self:append(m) end
  return self
end

function ModuleList:append(m)
  local i = self.n
  self:add_module(tostring(i), m)
  rawset(self, i + 1, m)
  rawset(self, "n", i + 1)
  return m
end

ModuleList.__len = function(self) return self.n end

return nn
