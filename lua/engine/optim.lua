-- engine/optim.lua — optimizers and learning-rate schedules (E.optim).
--
-- What it does: E.optim.AdamW and E.optim.SGD gather a model's parameters
-- into one flat float32 block (the C core, engine_optim.h, does the
-- gathering and the fused update loop); this file reads the options,
-- decides which parameters take weight decay, and adds the Lua-side pieces:
-- lr as a field, state()/load_state() for checkpoints, and schedules.
-- What it does not do: write checkpoint files, or run the training loop.
--
--   local opt = E.optim.AdamW(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8,
--                                      weight_decay = 0.01, no_decay = fn})
--   local opt = E.optim.SGD(params, {lr = 1e-3, momentum = 0, dampening = 0,
--                                    nesterov = false, weight_decay = 0, no_decay = fn})
--
-- params: a list of tensors, or of {name =, tensor =} entries as
-- model:parameters() returns them (or the model itself: anything with a
-- :parameters() method). Each must be a float32 leaf that requires grad; a
-- tensor listed twice is taken once. The optimizer moves every parameter
-- onto its slice of opt.params (the tensor objects stay the same, so the
-- model's references keep working) and makes its .grad the matching slice of
-- opt.grads, into which backward accumulates. A parameter belongs to the
-- last optimizer made over it. Views of a parameter taken before the
-- optimizer was made (w:transpose(1, 2) kept in a table) still show the old
-- storage: take them afterwards, or in each forward.
--
-- Weight decay: no_decay(name, tensor) returning true exempts a parameter.
-- The default exempts tensors of fewer than 2 dims and names containing
-- "bias", "norm", "ln_" or "layernorm" (case-insensitive); it is
-- E.optim.default_no_decay, for rules that extend it. Decayed
-- parameters come first in the flat blocks; opt.layout lists every
-- parameter in block order: {name, index (in params), offset (1-based),
-- numel, shape, decay}.
--
-- The update is torch.optim.AdamW's / torch.optim.SGD's (PyTorch 1.13,
-- amsgrad = maximize = false; SGD's weight decay is L2 added to the
-- gradient, as there), in float32, the same for any thread count. Every
-- parameter takes part in every step (one that got no gradient is updated
-- as if it were zero; PyTorch skips a parameter whose grad is None).
--
-- Methods and fields:
--   opt:zero_grad()             every grad to 0 (one fill; the grads stay attached)
--   opt:clip_grad_norm(max)     -> the global L2 norm before clipping; scales the
--                               grads by max/(norm + 1e-6) when that is < 1, as
--                               torch.nn.utils.clip_grad_norm_ (an inf or nan norm
--                               is returned and nothing is scaled)
--   opt:grad_norm()             -> the global L2 norm (summed in double)
--   opt:scale_grads(s)          grads *= s
--   opt:step([lr])              -> true when it updated the parameters. When any
--                               gradient is inf or nan it changes nothing (not
--                               even the step count), counts the skip in
--                               opt.skipped_steps and returns false: a trainer
--                               should stop or lower the lr. lr, when given,
--                               is used for this step only.
--   opt.lr                      read and assign
--   opt.steps, opt.skipped_steps  updates done, steps skipped (read only)
--   opt.params, opt.grads       the flat blocks (1-D tensors)
--   opt:state()                 -> {kind, step, lr, sizes, exp_avg, exp_avg_sq}
--                               (SGD: momentum_buffer when momentum > 0). The
--                               tensors are the optimizer's live blocks, not
--                               copies: write them out (or copy them) before the
--                               next step.
--   opt:load_state(state)       restores step, lr and moments bit for bit; the
--                               layout (sizes) must match
--
-- Gradient accumulation: backward accumulates into the grad block, so k
-- micro-batches then one opt:step() equal one big batch when each
-- micro-batch's mean loss is divided by k (or call opt:scale_grads(1/k)
-- before the step); zero_grad after the step.
--
-- Schedules: E.optim.schedule{kind =, lr =, warmup_steps = 0, total_steps =,
-- min_lr = 0} -> function(step) -> lr, with step counted from 0 as
-- transformers counts it (the first update uses schedule(0), which is 0
-- when warmup_steps > 0): set opt.lr = sched(opt.steps) before each step.
--   constant: lr after a linear warm-up (get_constant_schedule_with_warmup)
--   linear:   warm-up, then linear decay to min_lr at total_steps
--             (get_linear_schedule_with_warmup)
--   cosine:   warm-up, then half a cosine down to min_lr at total_steps
--             (get_cosine_schedule_with_warmup; with min_lr,
--             get_cosine_with_min_lr_schedule_with_warmup)
-- Up to total_steps the values are transformers' to the bit (linear with
-- min_lr > 0 has no transformers counterpart: min_lr + (lr - min_lr) times
-- the linear factor). After total_steps linear and cosine hold min_lr
-- (transformers' cosine would rise again).
local E = require("engine")
local core = require("engine.optim_core")

local M = {}

local function typename(v)
  if E.is_tensor(v) then return "tensor" end
  return type(v)
end

-- raise (...)'s error at the caller of the method that called this
local function checked(ok, ...)
  if not ok then error((...), 3) end
  return ...
end

-- errors inside the constructors carry no position: the public functions
-- run them under pcall and raise the message at their caller
local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local function check_opts(op, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    fail("%s: options must be a table, got %s", op, typename(opts))
  end
  local set = {}
  for _, k in ipairs(known) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then
      fail("%s: unknown option '%s' (the options are %s)", op, tostring(k), table.concat(known, ", "))
    end
  end
  return opts
end

local function opt_number(op, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "number" then
    fail("%s: %s must be a number, got %s", op, key, typename(v))
  end
  return v
end

local function opt_boolean(op, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "boolean" then
    fail("%s: %s must be true or false, got %s", op, key, typename(v))
  end
  return v
end

local decay_free_names = { "bias", "norm", "ln_", "layernorm" }

-- the default rule: no decay for 0-/1-dim tensors, biases and norms
function M.default_no_decay(name, tensor)
  if tensor:dim() < 2 then return true end
  if name then
    local lower = name:lower()
    for _, s in ipairs(decay_free_names) do
      if lower:find(s, 1, true) then return true end
    end
  end
  return false
end

-- params (list, model, {name=, tensor=} entries) -> tensors, names, decay
local function gather(op, params, no_decay)
  if type(params) == "table" and not E.is_tensor(params) and type(params.parameters) == "function" then
    params = params:parameters()
  end
  if type(params) ~= "table" or E.is_tensor(params) then
    fail("%s: params must be a list of tensors or {name=, tensor=} entries, got %s", op, typename(params))
  end
  local n = #params
  for k in pairs(params) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail("%s: params must be a list (1..n), but it has the key %s", op,
        type(k) == "string" and "'" .. k .. "'" or tostring(k))
    end
  end
  local tensors, names, decay = {}, {}, {}
  for i = 1, n do
    local e, t, name = params[i], nil, nil
    if E.is_tensor(e) then
      t = e
    elseif type(e) == "table" and E.is_tensor(e.tensor) then
      t, name = e.tensor, e.name
      if name ~= nil and type(name) ~= "string" then
        fail("%s: params[%d].name must be a string, got %s", op, i, typename(name))
      end
    else
      fail("%s: params[%d] must be a tensor or {name=, tensor=}, got %s", op, i,
        type(e) == "table" and "a table without a tensor field" or typename(e))
    end
    tensors[i], names[i] = t, name or false
    decay[i] = not no_decay(name, t)
  end
  return tensors, names, decay
end

local Optimizer = {}
local Optimizer_mt = {}
-- each optimizer's fields (_core, kind, params, grads, layout), kept out of
-- the object so that only lr can be assigned
local fields = setmetatable({}, { __mode = "k" })

function Optimizer_mt.__index(self, k)
  local f = fields[self]
  if k == "lr" then return f._core:lr() end
  if k == "steps" then return f._core:step_count() end
  if k == "skipped_steps" then return f._core:skipped() end
  local v = f[k]
  if v ~= nil then return v end
  return Optimizer[k]
end

function Optimizer_mt.__newindex(self, k, v)
  if k == "lr" then
    if type(v) ~= "number" then error(string.format("%s: lr must be a number, got %s", self.kind, typename(v)), 2) end
    checked(pcall(self._core.set_lr, self._core, v))
    return
  end
  error(string.format("%s: cannot set field '%s' (only lr can be assigned)", self.kind, tostring(k)), 2)
end

function Optimizer_mt.__tostring(self)
  return string.format("%s(%d values in %d tensors, lr=%g)", self.kind, self.params:numel(),
    #self.layout, self.lr)
end

local function make(kind, params, opts, known, cfg_of)
  opts = check_opts(kind, opts, known)
  local no_decay = opts.no_decay or M.default_no_decay
  if type(no_decay) ~= "function" then
    fail("%s: no_decay must be a function(name, tensor), got %s", kind, typename(no_decay))
  end
  local cfg = cfg_of(opts)
  local tensors, names, decay = gather(kind, params, no_decay)
  local ok, o = pcall(core.new, kind, tensors, names, decay, cfg)
  if not ok then error(o, 0) end
  local layout = {}
  for i, s in ipairs(o:slots()) do
    layout[i] = {
      name = names[s.index] or nil, index = s.index, offset = s.offset, numel = s.numel,
      shape = tensors[s.index]:shape(), decay = s.decay,
    }
  end
  local self = setmetatable({}, Optimizer_mt)
  fields[self] = { _core = o, kind = kind, params = o:params(), grads = o:grads(), layout = layout }
  return self
end

function M.AdamW(params, opts)
  return checked(pcall(make, "AdamW", params, opts, { "betas", "eps", "lr", "no_decay", "weight_decay" }, function(o)
    local b = o.betas
    if b ~= nil and (type(b) ~= "table" or type(b[1]) ~= "number" or type(b[2]) ~= "number" or #b ~= 2) then
      local shown = typename(b)
      if type(b) == "table" then
        local parts = {}
        for i, x in ipairs(b) do parts[i] = tostring(x) end
        shown = "{" .. table.concat(parts, ", ") .. "}"
      end
      fail("AdamW: betas must be a table of two numbers {beta1, beta2}, got %s", shown)
    end
    return {
      lr = opt_number("AdamW", o, "lr", 1e-3), eps = opt_number("AdamW", o, "eps", 1e-8),
      weight_decay = opt_number("AdamW", o, "weight_decay", 0.01),
      beta1 = b and b[1] or 0.9, beta2 = b and b[2] or 0.999,
    }
  end))
end

function M.SGD(params, opts)
  return checked(pcall(make, "SGD", params, opts, { "dampening", "lr", "momentum", "nesterov", "no_decay", "weight_decay" },
    function(o)
      return {
        lr = opt_number("SGD", o, "lr", 1e-3), momentum = opt_number("SGD", o, "momentum", 0),
        dampening = opt_number("SGD", o, "dampening", 0), nesterov = opt_boolean("SGD", o, "nesterov", false),
        weight_decay = opt_number("SGD", o, "weight_decay", 0),
      }
    end))
end

function Optimizer:zero_grad()
  checked(pcall(self._core.zero_grad, self._core))
end

function Optimizer:grad_norm()
  return checked(pcall(self._core.grad_norm, self._core))
end

function Optimizer:clip_grad_norm(max_norm)
  return checked(pcall(self._core.clip_grad_norm, self._core, max_norm))
end

function Optimizer:scale_grads(s)
  checked(pcall(self._core.scale_grads, self._core, s))
end

function Optimizer:step(lr)
  local o = self._core
  if lr == nil then return checked(pcall(o.step, o)) end
  if type(lr) ~= "number" then error(string.format("%s: step: lr must be a number, got %s", self.kind, typename(lr)), 2) end
  local saved = o:lr()
  checked(pcall(o.set_lr, o, lr))
  local ok, r = pcall(o.step, o)
  o:set_lr(saved)
  return checked(ok, r)
end

local moment_names = { AdamW = { "exp_avg", "exp_avg_sq" }, SGD = { "momentum_buffer" } }

function Optimizer:state()
  local o = self._core
  local sizes = {}
  for i, s in ipairs(self.layout) do sizes[i] = s.numel end
  local st = { kind = self.kind, step = o:step_count(), lr = o:lr(), sizes = sizes }
  for _, name in ipairs(moment_names[self.kind]) do st[name] = o:moment(name) end
  return st
end

function Optimizer:load_state(st)
  local op, o = self.kind .. ": load_state", self._core
  if type(st) ~= "table" then error(op .. ": the state must be a table, got " .. typename(st), 2) end
  if st.kind ~= nil and st.kind ~= self.kind then
    error(string.format("%s: the state is %s's, this optimizer is %s", op, tostring(st.kind), self.kind), 2)
  end
  if math.type(st.step) ~= "integer" or st.step < 0 then
    error(string.format("%s: step must be an integer >= 0, got %s", op, tostring(st.step)), 2)
  end
  if st.lr ~= nil and type(st.lr) ~= "number" then
    error(string.format("%s: lr must be a number, got %s", op, typename(st.lr)), 2)
  end
  if st.sizes ~= nil then
    if type(st.sizes) ~= "table" then error(op .. ": sizes must be a list of numbers, got " .. typename(st.sizes), 2) end
    if #st.sizes ~= #self.layout then
      error(string.format("%s: the state has %d parameters, this optimizer %d", op, #st.sizes, #self.layout), 2)
    end
    for i, s in ipairs(self.layout) do
      if st.sizes[i] ~= s.numel then
        error(string.format("%s: parameter %d%s has %d elements here but %s in the state", op, s.index,
          s.name and " ('" .. s.name .. "')" or "", s.numel, tostring(st.sizes[i])), 2)
      end
    end
  end
  local n = o:numel()
  local moments = {}
  for _, name in ipairs(moment_names[self.kind]) do
    local mine = o:moment(name)
    if mine then
      local t = st[name]
      if not E.is_tensor(t) then
        error(string.format("%s: %s must be a tensor, got %s", op, name, typename(t)), 2)
      end
      if t:dim() ~= 1 or t:numel() ~= n then
        error(string.format("%s: %s is %s, the parameters [%d]", op, name, t:shape_str(), n), 2)
      end
      moments[#moments + 1] = { mine, t }
    end
  end
  for _, mt in ipairs(moments) do mt[1]:copy_(mt[2]) end
  o:set_step_count(st.step)
  if st.lr ~= nil then checked(pcall(o.set_lr, o, st.lr)) end
end

-- ---- schedules -----------------------------------------------------------

local schedule_kinds = { constant = true, linear = true, cosine = true }

local function make_schedule(opts)
  local op = "schedule"
  if type(opts) ~= "table" then fail("%s: expected a table of options, got %s", op, typename(opts)) end
  check_opts(op, opts, { "kind", "lr", "min_lr", "total_steps", "warmup_steps" })
  local kind = opts.kind or "constant"
  if not schedule_kinds[kind] then
    fail("%s: kind must be \"constant\", \"linear\" or \"cosine\", got %s", op, tostring(kind))
  end
  local lr = opts.lr
  if type(lr) ~= "number" or not (lr >= 0 and lr < math.huge) then
    fail("%s: lr must be a finite number >= 0, got %s", op, tostring(lr))
  end
  local function count(key, default)
    local v = opts[key]
    if v == nil then return default end
    if type(v) ~= "number" or not (v >= 0 and v < math.huge) or v ~= math.floor(v) then
      fail("%s: %s must be an integer >= 0, got %s", op, key, tostring(v))
    end
    return math.tointeger(v)
  end
  local W, T = count("warmup_steps", 0), count("total_steps", nil)
  if kind ~= "constant" then
    if not T or T < 1 then fail("%s: %s needs total_steps (an integer >= 1)", op, kind) end
    if W > T then fail("%s: warmup_steps (%d) exceeds total_steps (%d)", op, W, T) end
  end
  local min_lr = opts.min_lr or 0
  if type(min_lr) ~= "number" or not (min_lr >= 0 and min_lr <= lr) then
    fail("%s: min_lr must be a number in [0, lr], got %s", op, tostring(min_lr))
  end
  local r = lr > 0 and min_lr / lr or 0 -- transformers' min_lr_rate

  -- the multipliers of transformers' lambdas, written as they are there
  local factor
  if kind == "constant" then
    factor = function(step)
      if step < W then return step / math.max(1.0, W) end
      return 1.0
    end
  elseif kind == "linear" then
    factor = function(step)
      if step < W then return step / math.max(1, W) end
      local f = math.max(0.0, (T - step) / math.max(1, T - W))
      if r == 0 then return f end
      return f * (1 - r) + r
    end
  else
    factor = function(step)
      if step < W then return step / math.max(1, W) end
      local progress = math.min(1.0, (step - W) / math.max(1, T - W))
      local f = math.max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
      if r == 0 then return f end
      return f * (1 - r) + r
    end
  end
  return function(step)
    if type(step) ~= "number" or not (step >= 0) then
      error(string.format("%s: step must be a number >= 0, got %s", op, tostring(step)), 2)
    end
    return lr * factor(step)
  end
end

function M.schedule(opts)
  return checked(pcall(make_schedule, opts))
end

return M
