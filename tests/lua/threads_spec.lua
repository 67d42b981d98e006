-- threads_spec.lua — training steps give the same bits for any thread count
-- when float32 products run on the engine's AVX-512 kernel
-- (E.matmul_backend() == "engine-avx512"): three AdamW steps of a GPT-2 and
-- of a Llama (grouped-query attention, untied head) with 1, 2 and 3
-- threads, at shapes big enough that every kernel takes its threaded path
-- (gemm over 2M multiply-adds, elementwise ops and reductions over their
-- parallel thresholds, attention over (batch, head) units), left-padded rows
-- included. The losses of every step and a checksum of the final weights are
-- compared bit for bit. With OpenBLAS (no AVX-512F, or
-- ENGINE_SGEMM=openblas) its own results depend on the thread count and the
-- check says so instead of asserting.
local E = require("engine")

local V, B, T = 1024, 6, 72

local configs = {
  gpt2 = { model_type = "gpt2", vocab_size = V, n_embd = 128, n_layer = 2, n_head = 4, n_positions = 128 },
  llama = { model_type = "llama", vocab_size = V, hidden_size = 128, intermediate_size = 256, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, tie_word_embeddings = false },
}

-- B rows of T token ids (seeded), the first two rows left-padded
local function batch()
  local g = E.Generator(7)
  local ids, mask = {}, {}
  for b = 1, B do
    ids[b], mask[b] = {}, {}
    local pad = b <= 2 and 9 * b or 0
    for t = 1, T do
      ids[b][t] = math.floor(g:uniform() * V)
      mask[b][t] = t > pad and 1 or 0
    end
  end
  return E.tensor(ids), E.tensor(mask)
end

-- the losses of three steps and Σ|w| of the final weights, as exact strings
local function run(cfg, threads)
  local saved = E.get_threads()
  E.set_threads(threads)
  local model = E.models.new(cfg, { seed = 1 })
  local opt = E.optim.AdamW(model:parameters(), { lr = 1e-3 })
  local ids, mask = batch()
  local labels = ids:narrow(2, 2, T - 1)
  local out = {}
  for _ = 1, 3 do
    opt:zero_grad()
    local lp = model:logprobs(ids:narrow(2, 1, T - 1), labels, { attention_mask = mask:narrow(2, 1, T - 1) })
    local loss = -(lp * mask:narrow(2, 2, T - 1)):sum() / mask:narrow(2, 2, T - 1):sum()
    loss:backward()
    opt:step()
    out[#out + 1] = string.format("%.17g", loss:item())
  end
  out[#out + 1] = string.format("%.17g", opt.params:abs():sum():item())
  E.set_threads(saved)
  return table.concat(out, " ")
end

describe("thread count", function()
  for _, name in ipairs({ "gpt2", "llama" }) do
    it(name .. ": the same losses and weights for 1, 2 and 3 threads", function()
      local one, two, three = run(configs[name], 1), run(configs[name], 2), run(configs[name], 3)
      if E.matmul_backend() ~= "engine-avx512" then
        print("\n  (matmul backend " .. E.matmul_backend() .. ": its results depend on the thread count; not asserted)")
        return
      end
      assert.are.equal(one, two)
      assert.are.equal(one, three)
    end)
  end

  it("names the matmul backend", function()
    assert.is_truthy(({ ["engine-avx512"] = true, openblas = true })[E.matmul_backend()])
  end)
end)
