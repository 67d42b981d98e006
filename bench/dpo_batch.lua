-- bench/dpo_batch.lua — what the memory benchmarks (bench/memory.lua,
-- bench/linear.lua) share: a DPO batch of full rows as engine.data makes
-- them, the DPO loss against reference sums, and the bytes the tape holds
-- between forward and backward. Loaded with dofile(here .. "/bench/dpo_batch.lua")(here).
-- Not here: timing, PyTorch, printing.
local E = require("engine")
local lm = require("engine.lm")

return function(here)
  local dpo = dofile(here .. "/recipes/dpo.lua")
  local B = {}

  -- `rows` full rows of length T with ids below V (seeded): ids,
  -- attention_mask, loss_mask (0 on the first `prompt` tokens, 1 after);
  -- rows 1..rows/2 are the chosen completions, the rest the rejected ones
  function B.full_batch(rows, T, prompt, seed, V)
    local g = E.Generator(seed)
    local ids, attn, lmask = {}, {}, {}
    for r = 1, rows do
      ids[r], attn[r], lmask[r] = {}, {}, {}
      for t = 1, T do
        ids[r][t] = math.floor(g:uniform() * V)
        attn[r][t] = 1
        lmask[r][t] = t > prompt and 1 or 0
      end
    end
    local idx = {}
    for i = 1, rows // 2 do idx[i] = i end
    return { ids = E.tensor(ids), attention_mask = E.tensor(attn), loss_mask = E.tensor(lmask), size = rows // 2,
      indices = idx }
  end

  -- batch.ref = the model's own sequence log-probs now (the reference)
  function B.with_ref(model, batch)
    batch.ref = E.no_grad(lm.sequence_logps, model, batch)
    return batch
  end

  -- the DPO loss against reference sums ref (R) = the model's own before the
  -- step (made-up references would saturate log σ: same memory, many times
  -- the time)
  function B.loss(model, batch, ref)
    local S = lm.sequence_logps(model, batch)
    local n = batch.size
    local b = { policy_chosen_logps = S:narrow(1, 1, n), policy_rejected_logps = S:narrow(1, n + 1, n),
      reference_chosen_logps = ref:narrow(1, 1, n), reference_rejected_logps = ref:narrow(1, n + 1, n) }
    return (dpo.loss(b, { beta = 0.1, loss_type = "sigmoid", label_smoothing = 0 }))
  end

  -- the bytes the tape holds after the forward and the loss (gradients
  -- cleared first, the backward run after, so nothing stays)
  function B.saved_bytes(model, batch)
    for _, p in ipairs(model:parameters()) do p.tensor:zero_grad() end
    collectgarbage()
    local a0 = E.memory_stats().bytes_in_use
    local L = B.loss(model, batch, batch.ref)
    collectgarbage()
    local saved = E.memory_stats().bytes_in_use - a0
    L:backward()
    L = nil
    collectgarbage()
    return saved
  end

  return B
end
