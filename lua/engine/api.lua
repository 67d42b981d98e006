-- engine/api.lua — the Lua-side pieces of the engine module.
--
-- binding.c builds the module table E from the C functions and then calls
-- the function this file returns with E. It adds what reads better in Lua:
-- E.no_grad, E.gradcheck, a few conveniences (zeros_like, ones_like), and
-- the lazy loading of the library's other modules: E.nn, E.optim, E.models,
-- ... are lua/engine/<name>.lua, loaded on first use. It sets no globals.

return function(E)
  local Tensor = E.Tensor -- the methods every tensor has

  -- E.no_grad(fn, ...) runs fn(...) with gradient recording off and returns
  -- its results. Grad mode is restored however fn ends: the guard is a
  -- to-be-closed variable, so an error passes through untouched (its
  -- message and traceback still point at the real failure).
  local function restore(prev)
    return setmetatable({}, { __close = function() E.set_grad_enabled(prev) end })
  end

  function E.no_grad(fn, ...)
    if type(fn) ~= "function" then
      error("no_grad: expected a function, got " .. type(fn), 2)
    end
    local _ <close> = restore(E.set_grad_enabled(false))
    return fn(...)
  end

  function E.zeros_like(x) return E.zeros(x:shape(), x:dtype()) end
  function E.ones_like(x) return E.ones(x:shape(), x:dtype()) end

  local function shape_str(x) return "[" .. table.concat(x:shape(), ",") .. "]" end
  E.shape_str = shape_str
  Tensor.shape_str = shape_str

  -- E.gradcheck(fn, inputs, {eps = 1e-6, atol = 1e-5, rtol = 1e-3})
  --   fn(inputs[1], inputs[2], ...) must return a scalar tensor. Every tensor
  --   input is copied to a float64 leaf; those whose requires_grad() is true
  --   are checked: the analytic gradient from backward() against central
  --   differences (f(x + eps) - f(x - eps)) / 2eps, element by element, each
  --   within atol + rtol * |numeric|. Other inputs (index tensors, numbers,
  --   tables) are passed as they are (tensors as float64 copies).
  --   Returns ok, report: report names the worst element when not ok, and
  --   gives the worst error ratio when ok. The inputs are left unchanged.
  local gradcheck_opts = { eps = true, atol = true, rtol = true }
  function E.gradcheck(fn, inputs, opts)
    if type(fn) ~= "function" then error("gradcheck: fn must be a function, got " .. type(fn), 2) end
    if type(inputs) ~= "table" then error("gradcheck: inputs must be a list, got " .. type(inputs), 2) end
    opts = opts or {}
    for k in pairs(opts) do
      if not gradcheck_opts[k] then
        error("gradcheck: unknown option '" .. tostring(k) .. "' (the options are eps, atol, rtol)", 2)
      end
    end
    local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
    local n = inputs.n or #inputs
    local args, checked = {}, {}
    for i = 1, n do
      local v = inputs[i]
      if E.is_tensor(v) then
        local c = E.tensor(v, "float64")
        if v:requires_grad() then
          c:requires_grad(true)
          checked[#checked + 1] = i
        end
        args[i] = c
      else
        args[i] = v
      end
    end
    if #checked == 0 then
      error("gradcheck: no input requires grad; call x:requires_grad(true) on the inputs to check", 2)
    end
    local function eval()
      local y = fn(table.unpack(args, 1, n))
      if not E.is_tensor(y) or y:numel() ~= 1 then
        error("gradcheck: fn must return a scalar tensor, got "
          .. (E.is_tensor(y) and "a tensor of shape " .. shape_str(y) or type(y)), 3)
      end
      return y
    end
    eval():backward()

    local worst, report, count = -1, nil, 0
    local ok = true
    for _, i in ipairs(checked) do
      local x = args[i]
      local g = x.grad
      local analytic = g and E.no_grad(function() return g:reshape(-1):totable() end)
      local flat = E.no_grad(function() return x:reshape(-1) end) -- a view: x is contiguous
      for j = 1, x:numel() do
        local fp, fm = E.no_grad(function()
          local cell <close> = flat:narrow(1, j, 1)
          local orig = cell:item()
          cell:fill_(orig + eps)
          local p = eval():item()
          cell:fill_(orig - eps)
          local m = eval():item()
          cell:fill_(orig)
          return p, m
        end)
        local num = (fp - fm) / (2 * eps)
        local ana = analytic and analytic[j] or 0
        local err, tol = math.abs(num - ana), atol + rtol * math.abs(num)
        local bad = not (err <= tol) and not (num ~= num and ana ~= ana)
        local ratio = err / tol
        count = count + 1
        if bad and (ok or ratio > worst) then
          ok, worst = false, ratio
          report = string.format("input %d %s element %d: analytic %.10g, numeric %.10g (error %.3g, tolerance %.3g)",
            i, shape_str(x), j, ana, num, err, tol)
        elseif ok and ratio > worst then
          worst = ratio
        end
      end
    end
    if ok then
      report = string.format("%d gradients agree (worst error/tolerance %.3g)", count, worst)
    end
    return ok, report
  end

  -- E.nn, E.optim, E.models, ...: lua/engine/<name>.lua, required on first use
  local internal = { api = true, runner = true }
  setmetatable(E, {
    __index = function(t, k)
      if type(k) ~= "string" or internal[k] or not k:match("^[%a_][%w_]*$") then return nil end
      if not package.searchpath("engine." .. k, package.path) then return nil end
      local m = require("engine." .. k)
      rawset(t, k, m)
      return m
    end,
  })
end
