-- linear_logprobs_spec.lua — E.linear_logprobs (the fused LM-head
-- log-probability): values against log_softmax of h·Wᵀ worked out here by
-- hand, agreement with the unfused token_logprobs(matmul(h, Wᵀ)) in value
-- and in both gradients, float64 gradient checks over tiles that do not
-- divide the rows or the vocabulary, the options and error messages word for
-- word, the (K,V) logits held from forward to backward only when a gradient
-- is recorded (these shapes are all under the keep budget, so the backward
-- here reads the kept logits; tests/c/test_linear_logprobs.c runs both paths),
-- and CausalLM:logprobs on top of it (tensor and table labels, the
-- model-level messages). Results at a fixed thread count (OpenBLAS's
-- rounding depends on it).
local H = require("helper")
local E = require("engine")

local close = H.assert_close

-- log softmax(h_n · Wᵀ)[y] in Lua numbers, h (N,C) and W (V,C) as tables
local function hand(h, W, n, y)
  local z, m = {}, -math.huge
  for v = 1, #W do
    local s = 0
    for c = 1, #h[n] do s = s + h[n][c] * W[v][c] end
    z[v] = s
    m = math.max(m, s)
  end
  local sum = 0
  for v = 1, #W do sum = sum + math.exp(z[v] - m) end
  return z[y + 1] - m - math.log(sum)
end

describe("E.linear_logprobs", function()
  it("is log_softmax(h·Wᵀ) at the 0-based labels, 0 where a label is < 0", function()
    local h = E.tensor({ { 1, 0, 2 }, { -1, 0.5, 0 }, { 0.25, 3, -2 } }, "float64")
    local W = E.tensor({ { 0, 1, 0 }, { 1, 1, 1 }, { -1, 0, 2 }, { 0.5, -0.5, 0 } }, "float64")
    local hv, Wv = h:totable(), W:totable()
    local lp = E.linear_logprobs(h, W, { 2, -100, 3 })
    assert.same({ 3 }, lp:shape())
    assert.equals("float64", lp:dtype())
    close(lp:totable(), { hand(hv, Wv, 1, 2), 0, hand(hv, Wv, 3, 3) }, 1e-12)
    -- every tiling gives the same values
    for _, o in ipairs({ { chunk_rows = 1, chunk_vocab = 1 }, { chunk_rows = 2, chunk_vocab = 3 }, { chunk_vocab = 4 } }) do
      close(E.linear_logprobs(h, W, E.tensor({ 0, 1, 3 }), o):totable(),
        { hand(hv, Wv, 1, 0), hand(hv, Wv, 2, 1), hand(hv, Wv, 3, 3) }, 1e-12)
    end
    -- (B,T,C) positions give (B,T)
    local h3 = h:reshape({ 1, 3, 3 })
    close(E.linear_logprobs(h3, W, { { 1, 1, -1 } }):totable(), { { hand(hv, Wv, 1, 1), hand(hv, Wv, 2, 1), 0 } }, 1e-12)
  end)

  it("matches token_logprobs(matmul(h, Wᵀ)) in value and gradients (float32)", function()
    local B, T, C, V = 2, 37, 24, 900
    local h = E.randn({ B, T, C }, { seed = 1 }):requires_grad(true)
    local W = (E.randn({ V, C }, { seed = 2 }) * 0.4):detach():requires_grad(true)
    local lab = {}
    for b = 1, B do
      lab[b] = {}
      for t = 1, T do lab[b][t] = (t + b) % 5 == 0 and -100 or (t * 97 + b * 13) % V end
    end
    local g = E.randn({ B, T }, { seed = 3 })
    local ref = E.token_logprobs(E.matmul(h, W:transpose(1, 2)), lab)
    ref:backward(g)
    local rh, rw = h.grad:totable(), W.grad:totable()
    for _, o in ipairs({ {}, { chunk_rows = 10, chunk_vocab = 128 } }) do
      h:zero_grad()
      W:zero_grad()
      local lp = E.linear_logprobs(h, W, lab, o)
      close(lp:totable(), ref:totable(), 1e-5)
      lp:backward(g)
      assert(H.close(h.grad:totable(), rh, 1e-5), "dh differs")
      assert(H.close(W.grad:totable(), rw, 1e-5), "dW differs")
    end
  end)

  it("has the gradient of central differences (float64, tiles not dividing N or V)", function()
    local h = E.randn({ 5, 3 }, { seed = 4, dtype = "float64" }):requires_grad(true)
    local W = E.randn({ 7, 3 }, { seed = 5, dtype = "float64" }):requires_grad(true)
    local wt = E.tensor({ 1, -2, 0.5, 3, 1 }, "float64")
    local labels = E.tensor({ 6, 0, -1, 3, 6 }, "float64")
    local ok, report = E.gradcheck(function(a, b)
      return (E.linear_logprobs(a, b, labels, { chunk_rows = 2, chunk_vocab = 3 }) * wt):sum()
    end, { h, W }, { atol = 1e-6, rtol = 1e-5 })
    assert(ok, report)
  end)

  it("holds the (K,V) logits from forward to backward only when a gradient is recorded", function()
    local K, C, V = 60, 8, 5000
    local h = E.randn({ K + 4, C }, { seed = 6 }):requires_grad(true)
    local W = E.randn({ V, C }, { seed = 7 }):requires_grad(true)
    local lab = {}
    for i = 1, K + 4 do lab[i] = i % 16 == 0 and -100 or (i * 37) % V end -- 4 rows skipped
    local labt = E.tensor(lab)
    local logits, grads = K * V * 4, ((K + 4) * C + V * C) * 4
    local function in_use()
      collectgarbage()
      collectgarbage()
      return E.memory_stats().bytes_in_use
    end
    local base = in_use()
    local lp = E.no_grad(function() return E.linear_logprobs(h, W, labt) end)
    assert(in_use() - base < 4096, "eval keeps only the output")
    lp = E.linear_logprobs(h, W, labt)
    local held = in_use() - base
    assert(held >= logits and held < logits * 1.2 + 4096, "training holds the logits: " .. held)
    lp:sum():backward()
    lp = nil
    local after = in_use() - base
    assert(after < grads * 1.2 + 4096, "the backward gives the logits back: " .. after)
    assert(h.grad and W.grad)
  end)

  it("names bad arguments", function()
    local h, W = E.zeros({ 2, 3 }), E.zeros({ 4, 3 })
    assert.equals("linear_logprobs: h is [2,3], w is [4,2]: w must be (V,C) with C = 3, the last dim of h",
      H.error_of(E.linear_logprobs, h, E.zeros({ 4, 2 }), { 0, 1 }))
    assert.equals("linear_logprobs: h is [2,3], labels is [3]: labels must have the shape of h without its last dim",
      H.error_of(E.linear_logprobs, h, W, { 0, 1, 2 }))
    assert.equals("linear_logprobs: label 4 at [2] is out of range: the vocabulary has 4 entries (labels < 0 are skipped)",
      H.error_of(E.linear_logprobs, h, W, { 0, 4 }))
    assert.equals("linear_logprobs: label 0.5 at [1] is not an integer",
      H.error_of(E.linear_logprobs, h, W, { 0.5, 1 }))
    assert.equals("linear_logprobs: h is float32, w is float64: they must have the same dtype",
      H.error_of(E.linear_logprobs, h, E.zeros({ 4, 3 }, "float64"), { 0, 1 }))
    assert.equals("linear_logprobs: w must be a tensor, got table",
      H.error_of(E.linear_logprobs, h, { { 1 } }, { 0, 1 }))
    assert.equals("linear_logprobs: labels must be a tensor or a nested table of numbers, got string",
      H.error_of(E.linear_logprobs, h, W, "x"))
    assert.equals("linear_logprobs: chunk_rows must be a positive integer, got 0",
      H.error_of(E.linear_logprobs, h, W, { 0, 1 }, { chunk_rows = 0 }))
    assert.equals("linear_logprobs: chunk_vocab must be an integer, got 1.5",
      H.error_of(E.linear_logprobs, h, W, { 0, 1 }, { chunk_vocab = 1.5 }))
    assert.equals("linear_logprobs: unknown option 'rows' (the options are chunk_rows, chunk_vocab)",
      H.error_of(E.linear_logprobs, h, W, { 0, 1 }, { rows = 2 }))
  end)
end)

describe("CausalLM:logprobs on the fused head", function()
  local cfg = { model_type = "gpt2", vocab_size = 11, n_embd = 8, n_layer = 1, n_head = 2, n_positions = 8,
    initializer_range = 0.5 }

  it("takes labels as a tensor or a table, and equals log_softmax of forward's logits", function()
    local model = E.models.new(cfg, { seed = 7, dtype = "float64" })
    local ids = { { 1, 2, 3, 4 }, { 5, 6, 7, 8 } }
    local labels = { { 2, 3, 4, -100 }, { -1, 7, 10, 0 } }
    local a = E.no_grad(function() return model:logprobs(ids, labels, { chunk_rows = 3 }) end)
    local b = E.no_grad(function() return model:logprobs(ids, E.tensor(labels), {}) end)
    close(a:totable(), b:totable(), 1e-12)
    local logits = E.no_grad(function() return model:forward(ids) end)
    local want = E.token_logprobs(logits, labels)
    close(a:totable(), want:totable(), 1e-12)
    assert.equals(0, a:totable()[1][4])
    -- -inf is a label < 0 like any other
    local c = E.no_grad(function() return model:logprobs(ids, { { -math.huge, 3, 4, 5 }, { 1, 1, 1, 1 } }) end)
    assert.equals(0, c:totable()[1][1])
  end)

  it("keeps its own messages", function()
    local model = E.models.new(cfg, { seed = 7 })
    assert.equals("logprobs: label 11 at [1,2] is out of range: the vocabulary has 11 entries",
      H.error_of(function() model:logprobs({ { 1, 2 } }, E.tensor({ { 0, 11 } })) end))
    assert.equals("logprobs: label inf at [1,1] is out of range: the vocabulary has 11 entries",
      H.error_of(function() model:logprobs({ { 1, 2 } }, { { math.huge, 1 } }) end))
    assert.equals("logprobs: label 2.5 at [1,2] is not an integer",
      H.error_of(function() model:logprobs({ { 1, 2 } }, { { 1, 2.5 } }) end))
    assert.equals('logprobs: label "a" at [1,1] is not an integer',
      H.error_of(function() model:logprobs({ { 1, 2 } }, { { "a", 1 } }) end))
  end)
end)
