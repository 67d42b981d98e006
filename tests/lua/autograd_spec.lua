-- autograd_spec.lua — reverse mode seen from Lua: gradients worked out by
-- hand, accumulation, .grad assignment, no_grad, the error after a second
-- backward, and E.gradcheck (float64 central differences) on composite
-- losses such as DPO's.
local H = require("helper")
local E = require("engine")

local close = H.assert_close

describe("backward", function()
  it("gives the gradients worked out by hand", function()
    local x = E.tensor({ 1, -2, 3 }):requires_grad(true)
    assert.is_true(x:requires_grad())
    assert.is_nil(x.grad)
    local y = (x * x):sum() -- dy/dx = 2x
    y:backward()
    assert.same({ 2, -4, 6 }, x.grad:totable())

    local a = E.tensor({ { 1, 2 }, { 3, 4 } }):requires_grad(true)
    local b = E.tensor({ { 5, 6 }, { 7, 8 } }):requires_grad(true)
    ;(a * b + a):sum():backward() -- d/da = b + 1, d/db = a
    assert.same({ { 6, 7 }, { 8, 9 } }, a.grad:totable())
    assert.same({ { 1, 2 }, { 3, 4 } }, b.grad:totable())
  end)

  it("sums over broadcast dims and handles numbers on either side", function()
    local a = E.zeros({ 2, 3 }):requires_grad(true)
    local b = E.tensor({ 1, 2, 3 }):requires_grad(true)
    ;(2 * a - b / 4 + 1):sum():backward()
    assert.same({ { 2, 2, 2 }, { 2, 2, 2 } }, a.grad:totable())
    assert.same({ -0.5, -0.5, -0.5 }, b.grad:totable())
  end)

  it("flows through matmul, mean and the max position", function()
    local w = E.tensor({ { 1, 2 }, { 3, 4 } }):requires_grad(true)
    local x = E.tensor({ { 1, 1 } })
    -- y = mean(x w) = ((1+3) + (2+4)) / 2; dy/dw[i][j] = x[1][i] / 2
    E.matmul(x, w):mean():backward()
    assert.same({ { 0.5, 0.5 }, { 0.5, 0.5 } }, w.grad:totable())
    local v = E.tensor({ { 1, 9, 3 }, { 7, 2, 5 } }):requires_grad(true)
    local m = v:max(2)
    m:sum():backward()
    assert.same({ { 0, 1, 0 }, { 1, 0, 0 } }, v.grad:totable())
  end)

  it("takes an explicit gradient for a non-scalar", function()
    local x = E.tensor({ 1, 2 }):requires_grad(true)
    local y = x * 3
    y:backward(E.tensor({ 1, 10 }))
    assert.same({ 3, 30 }, x.grad:totable())
  end)

  it("accumulates into .grad until it is cleared", function()
    local x = E.tensor({ 1, 2 }):requires_grad(true)
    for _ = 1, 3 do (x * 2):sum():backward() end
    assert.same({ 6, 6 }, x.grad:totable())
    x.grad = nil
    assert.is_nil(x.grad)
    ;(x * 2):sum():backward()
    assert.same({ 2, 2 }, x.grad:totable())
  end)

  it("accumulates into an assigned gradient tensor in place", function()
    local x = E.tensor({ 1, 2 }):requires_grad(true)
    local block = E.zeros({ 4 })
    local g = block:narrow(1, 2, 2)
    x.grad = g
    ;(x * x):sum():backward()
    assert.same({ 0, 2, 4, 0 }, block:totable())
  end)

  it("refuses a second backward through a freed graph", function()
    local x = E.tensor({ 1, 2 }):requires_grad(true)
    local y = (x * x):sum()
    y:backward()
    assert.equals("backward: the graph through this sum was already freed by an earlier backward(); "
      .. "run the forward again", H.error_of(function() y:backward() end))
    assert.equals("freed", y:grad_fn())
  end)

  it("detach cuts the graph but shares the storage", function()
    local x = E.tensor({ 1, 2 }):requires_grad(true)
    local d = x:detach()
    assert.is_false(d:requires_grad())
    assert.is_true(d:is_leaf())
    d:fill_(5)
    assert.same({ 5, 5 }, x:totable())
    local y = (x * d):sum() -- only the first factor carries gradient
    y:backward()
    assert.same({ 5, 5 }, x.grad:totable())
  end)

  it("names the op that made a tensor", function()
    local x = E.tensor({ 1 }):requires_grad(true)
    assert.equals("leaf", x:grad_fn())
    assert.is_true(x:is_leaf())
    assert.equals("exp", x:exp():grad_fn())
    assert.is_false(x:exp():is_leaf())
  end)
end)

describe("no_grad", function()
  it("records nothing and returns fn's results", function()
    local x = E.tensor({ 1 }):requires_grad(true)
    local y, n = E.no_grad(function(a, k) return a * k, 42 end, x, 3)
    assert.equals(42, n)
    assert.is_false(y:requires_grad())
    assert.same({ 3 }, y:totable())
    assert.is_true(E.grad_enabled())
    assert.is_true((x * 3):requires_grad())
  end)

  it("nests and restores the mode it found", function()
    E.no_grad(function()
      assert.is_false(E.grad_enabled())
      E.no_grad(function() assert.is_false(E.grad_enabled()) end)
      assert.is_false(E.grad_enabled())
    end)
    assert.is_true(E.grad_enabled())
    local prev = E.set_grad_enabled(false)
    assert.is_true(prev)
    E.no_grad(function() end)
    assert.is_false(E.grad_enabled())
    E.set_grad_enabled(true)
  end)

  it("restores grad mode when fn raises, and passes the error on unchanged", function()
    local ok, err = pcall(E.no_grad, function() error("inner failure") end)
    assert.is_false(ok)
    assert.matches("autograd_spec.lua:%d+: inner failure$", err)
    assert.is_true(E.grad_enabled())
    local ok2, err2 = pcall(E.no_grad, function() return E.matmul(E.ones({ 2, 3 }), E.ones({ 2, 3 })) end)
    assert.is_false(ok2)
    assert.matches("matmul: a is %[2,3%], b is %[2,3%]: inner dims differ", err2)
    assert.is_true(E.grad_enabled())
  end)

  it("restores grad mode when an error leaves a coroutine", function()
    local co = coroutine.wrap(function() E.no_grad(function() error("in a coroutine") end) end)
    assert.is_false(pcall(co))
    assert.is_true(E.grad_enabled())
    local co2 = coroutine.create(function() E.no_grad(function() coroutine.yield(E.grad_enabled()) end) end)
    local _, inside = coroutine.resume(co2)
    assert.is_false(inside)
    coroutine.close(co2) -- a suspended no_grad is closed with its coroutine
    assert.is_true(E.grad_enabled())
  end)
end)

describe("gradcheck", function()
  local function f64(t) return E.tensor(t, "float64"):requires_grad(true) end

  it("passes a DPO loss (Rafailov et al. 2023, Eq. 7)", function()
    local beta = 0.1
    local function dpo(pc, pr, rc, rr)
      local r_w = beta * (pc - rc)
      local r_l = beta * (pr - rr)
      return -E.logsigmoid(r_w - r_l):mean()
    end
    local ok, report = E.gradcheck(dpo, {
      f64({ -12.5, -3.25, -40 }), f64({ -11, -8.5, -39 }),
      E.tensor({ -12, -4, -41 }), E.tensor({ -12, -7, -38 }),
    })
    assert.is_true(ok, report)
    assert.matches("^6 gradients agree", report)
  end)

  it("passes token log-probs summed under a mask, and cross-entropy", function()
    local labels = E.tensor({ { 2, 0, 1 }, { 1, 1, -1 } })
    local mask = E.tensor({ { 1, 1, 0 }, { 1, 1, 0 } }, "float64")
    local function seq_logp(logits)
      return (E.token_logprobs(logits, labels) * mask):sum(2):mean()
    end
    local logits = E.randn({ 2, 3, 4 }, { seed = 5, dtype = "float64" }):requires_grad(true)
    assert.is_true(E.gradcheck(seq_logp, { logits }))
    local function ce(l, t) return E.cross_entropy(l, t) end
    local ok, report = E.gradcheck(ce, { logits, E.tensor({ { 3, -100, 1 }, { 0, 2, 2 } }) })
    assert.is_true(ok, report)
  end)

  it("passes a small MLP with layer norm and gelu", function()
    local function mlp(x, w1, w2, g)
      local h = E.gelu(E.matmul(E.layer_norm(x, g), w1))
      return (E.matmul(h, w2) ^ 2):mean()
    end
    local ok, report = E.gradcheck(mlp, {
      E.randn({ 3, 4 }, { seed = 1 }):requires_grad(true),
      E.randn({ 4, 5 }, { seed = 2 }):requires_grad(true),
      E.randn({ 5, 2 }, { seed = 3 }):requires_grad(true),
      (E.ones({ 4 }) + E.rand({ 4 }, { seed = 4 })):requires_grad(true),
    }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
    assert.is_true(ok, report)
  end)

  it("finds a wrong gradient and names the element", function()
    -- x:detach() * x has analytic gradient x but true gradient 2x
    local function wrong(x) return (x:detach() * x):sum() end
    local ok, report = E.gradcheck(wrong, { f64({ 1, 3 }) })
    assert.is_false(ok)
    assert.matches("^input 1 %[2%] element 2: analytic 3, numeric 6%.?%d*"
      .. " %(error 3%.?%d*, tolerance 0%.00601%)$", report)
  end)

  it("leaves the inputs as they were", function()
    local x = f64({ 1, 2 })
    E.gradcheck(function(a) return (a * a):sum() end, { x })
    assert.same({ 1, 2 }, x:totable())
    assert.is_nil(x.grad)
  end)

  it("explains bad use", function()
    assert.equals("gradcheck: no input requires grad; call x:requires_grad(true) on the inputs to check",
      H.error_of(E.gradcheck, function(a) return a:sum() end, { E.ones({ 2 }) }))
    assert.equals("gradcheck: fn must return a scalar tensor, got a tensor of shape [2]",
      H.error_of(E.gradcheck, function(a) return a * 2 end, { f64({ 1, 2 }) }))
    assert.equals("gradcheck: unknown option 'tol' (the options are eps, atol, rtol)",
      H.error_of(E.gradcheck, function(a) return a:sum() end, { f64({ 1 }) }, { tol = 1 }))
  end)
end)
