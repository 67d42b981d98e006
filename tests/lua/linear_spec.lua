-- linear_spec.lua — E.linear (lua/binding_linear.c, the fused
-- y = x·W + b / x·Wᵀ + b of engine/src/ops_linear.c): values worked out by
-- hand, agreement with E.matmul + add in value and in the gradients of x, W
-- and b (both weight layouts, with and without b, batched x), float64
-- gradient checks, nn.Linear and nn.Conv1D built on it (one "linear" node,
-- the values of the two-op path, the LoRA hook m.adapter still applied),
-- the memory its node keeps (one output-sized block less than matmul + add),
-- and the error messages word for word. Results at a fixed thread count.
local H = require("helper")
local E = require("engine")
local nn = require("engine.nn")

local close = H.assert_close

-- the largest |a - b| over two tensors of one shape
local function maxdiff(a, b) return (a - b):abs():max():item() end

describe("E.linear", function()
  it("is x·W + b, or x·Wᵀ + b with transpose_w (values by hand)", function()
    local x = E.tensor({ { 1, 2 }, { -1, 0.5 } })
    local W = E.tensor({ { 1, 0, 2 }, { 0, 1, -1 } })                   -- (in=2, out=3)
    local b = E.tensor({ 10, 20, 30 })
    close(E.linear(x, W, b):totable(), { { 11, 22, 30 }, { 9, 20.5, 27.5 } })
    close(E.linear(x, W):totable(), { { 1, 2, 0 }, { -1, 0.5, -2.5 } })
    close(E.linear(x, W:transpose(1, 2):contiguous(), b, { transpose_w = true }):totable(),
      { { 11, 22, 30 }, { 9, 20.5, 27.5 } })
    close(E.linear(x, W, nil, { transpose_w = false }):totable(), { { 1, 2, 0 }, { -1, 0.5, -2.5 } })
    -- a vector x is one row; leading dims are kept
    close(E.linear(E.tensor({ 1, 2 }), W, b):totable(), { 11, 22, 30 })
    assert.same({ 2, 1, 3 }, E.linear(x:reshape({ 2, 1, 2 }), W, b):shape())
  end)

  it("matches E.matmul + add in value and gradients (both layouts, with and without b)", function()
    for _, tw in ipairs({ false, true }) do
      for _, with_b in ipairs({ true, false }) do
        for _, T in ipairs({ 3, 40 }) do -- 6 rows: the small-product path; 80: gemm
          local x = E.randn({ 2, T, 24 }, { seed = 1 }):requires_grad(true)
          local W = E.randn(tw and { 16, 24 } or { 24, 16 }, { seed = 2 }):requires_grad(true)
          local b = with_b and E.randn({ 16 }, { seed = 3 }):requires_grad(true) or nil
          local g = E.randn({ 2, T, 16 }, { seed = 4 })
          local y = E.linear(x, W, b, { transpose_w = tw })
          assert.equals("linear", y:grad_fn())
          y:backward(g)
          local gx, gW, gb = x.grad, W.grad, b and b.grad
          x:zero_grad()
          W:zero_grad()
          local r = E.matmul(x, tw and W:transpose(1, 2) or W)
          if b then
            b:zero_grad()
            r = r + b
          end
          r:backward(g)
          assert(maxdiff(y, r) == 0, "values differ")
          assert(maxdiff(gx, x.grad) == 0, "dx differs")
          assert(maxdiff(gW, W.grad) == 0, "dW differs")
          if b then assert(maxdiff(gb, b.grad) == 0, "db differs") end
        end
      end
    end
  end)

  it("has the gradient of central differences (float64, x, W and b)", function()
    for _, tw in ipairs({ false, true }) do
      local x = E.randn({ 2, 3, 4 }, { seed = 5, dtype = "float64" }):requires_grad(true)
      local W = E.randn(tw and { 5, 4 } or { 4, 5 }, { seed = 6, dtype = "float64" }):requires_grad(true)
      local b = E.randn({ 5 }, { seed = 7, dtype = "float64" }):requires_grad(true)
      local p = E.randn({ 2, 3, 5 }, { seed = 8, dtype = "float64" })
      local ok, report = E.gradcheck(function(a, w, c)
        return (E.linear(a, w, c, { transpose_w = tw }) * p):sum()
      end, { x, W, b }, { atol = 1e-7, rtol = 1e-6 })
      assert(ok, report)
    end
  end)

  it("gives gradients only to the inputs that require them", function()
    local x = E.randn({ 3, 4 }, { seed = 9 })
    local W = E.randn({ 4, 2 }, { seed = 10 }):requires_grad(true)
    local b = E.randn({ 2 }, { seed = 11 })
    E.linear(x, W, b):sum():backward()
    assert.is_nil(x.grad)
    assert.is_nil(b.grad)
    -- d Σy / dW[k,n] = Σ_m x[m,k]
    local xs = x:sum(1):totable()
    close(W.grad:totable(), { { xs[1], xs[1] }, { xs[2], xs[2] }, { xs[3], xs[3] }, { xs[4], xs[4] } }, 1e-5)
  end)

  it("keeps one output-sized block less than matmul + add between forward and backward", function()
    local x = E.randn({ 4, 16, 32 }, { seed = 12 })
    local W = E.randn({ 32, 256 }, { seed = 13 }):requires_grad(true)
    local b = E.randn({ 256 }, { seed = 14 }):requires_grad(true)
    local function held(f)
      collectgarbage()
      local before = E.memory_stats().bytes_in_use
      local L = f():sum()
      collectgarbage()
      local n = E.memory_stats().bytes_in_use - before
      L:backward()
      return n
    end
    local fused = held(function() return E.linear(x, W, b) end)
    local two = held(function() return E.matmul(x, W) + b end)
    assert.equals(4 * 16 * 256 * 4, two - fused) -- the (4,16,256) float32 product the add node keeps
  end)

  it("names what is wrong", function()
    local x = E.zeros({ 2, 3 })
    local function err(...)
      local args = table.pack(...)
      return H.error_of(function() return E.linear(table.unpack(args, 1, args.n)) end)
    end
    assert.equals("linear: x is [2,3], W is [4,5]: in features differ (W is (in,out))", err(x, E.zeros({ 4, 5 })))
    assert.equals("linear: x is [2,3], W is [3,5]: in features differ (W is (out,in) with transpose_w)",
      err(x, E.zeros({ 3, 5 }), nil, { transpose_w = true }))
    assert.equals("linear: W is [3,5], b is [4]: b must be [5], the out features",
      err(x, E.zeros({ 3, 5 }), E.zeros({ 4 })))
    assert.equals("linear: x is float32, W is float64: they must have the same dtype",
      err(x, E.zeros({ 3, 5 }, "float64")))
    assert.equals("linear: W is [3]: it must be 2-D, (in,out), or (out,in) with transpose_w", err(x, E.zeros({ 3 })))
    assert.equals("linear: W must be a tensor, got table", err(x, { { 1 } }))
    assert.equals("linear: b must be a tensor, got number", err(x, E.zeros({ 3, 5 }), 1))
    assert.equals("linear: unknown option 'transpose' (the options are transpose_w)",
      err(x, E.zeros({ 3, 5 }), nil, { transpose = true }))
    assert.equals("linear: transpose_w must be a boolean, got number", err(x, E.zeros({ 3, 5 }), nil, { transpose_w = 1 }))
  end)
end)

describe("nn.Linear and nn.Conv1D on E.linear", function()
  it("are one linear node with the values and gradients of matmul + add", function()
    local lin = nn.Linear(24, 16, { generator = E.Generator(1) })
    local conv = nn.Conv1D(24, 16, { generator = E.Generator(2) })
    conv.bias:requires_grad(false)
    conv.bias:copy_(E.randn({ 16 }, { seed = 3 }))
    conv.bias:requires_grad(true)
    local x = E.randn({ 2, 40, 24 }, { seed = 4 })
    local g = E.randn({ 2, 40, 16 }, { seed = 5 })
    for _, case in ipairs({ { lin, lin.weight:transpose(1, 2) }, { conv, conv.weight } }) do
      local m, Wop = case[1], case[2]
      local y = m(x)
      assert.equals("linear", y:grad_fn())
      y:backward(g)
      local gW, gb = m.weight.grad, m.bias.grad
      m.weight:zero_grad()
      m.bias:zero_grad()
      local r = E.matmul(x, Wop) + m.bias
      r:backward(g)
      assert(maxdiff(y, r) <= 1e-5, "values differ")
      assert(maxdiff(gW, m.weight.grad) <= 1e-4, "dW differs")
      assert(maxdiff(gb, m.bias.grad) <= 1e-4, "db differs")
    end
    -- no bias
    local nb = nn.Linear(24, 16, { bias = false, generator = E.Generator(6) })
    assert.equals("linear", nb(x):grad_fn())
    assert(maxdiff(nb(x), E.matmul(x, nb.weight:transpose(1, 2))) <= 1e-5)
  end)

  it("still apply a layer's adapter (m.adapter) to the output", function()
    for _, cls in ipairs({ nn.Linear, nn.Conv1D }) do
      local m = cls(3, 2, { generator = E.Generator(7) })
      local x = E.randn({ 4, 3 }, { seed = 8 })
      local plain = m(x)
      local seen
      rawset(m, "adapter", {
        add = function(_, layer, xin, y)
          seen = { layer, xin }
          return y + 100
        end,
      })
      close(m(x):totable(), (plain + 100):totable(), 1e-6)
      assert.equals(m, seen[1])
      assert.equals(x, seen[2])
    end
  end)
end)
