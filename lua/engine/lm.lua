-- engine/lm.lua — causal language-model log-probabilities of batches, the
-- quantity every recipe's loss starts from.
--
-- A batch from engine.data is right-padded: ids (R,T), attention_mask (R,T)
-- and loss_mask (R,T) with 1 on the tokens that count (completion tokens,
-- EOS included). Token t is predicted from tokens < t, so position t of the
-- model's output scores ids[t+1] when loss_mask[t+1] is 1.
--
--   lm.labels(batch) -> (R,T) labels: ids[t+1] where it counts, -1 elsewhere
--   lm.token_logps(model, batch) -> (R,T) log π(token) at the scored
--       positions (0 elsewhere), and the (R,T) 0/1 mask of those positions
--   lm.sequence_logps(model, batch) -> (R) sums of the scored log-probs
--       (the S of the preference losses) and (R) counts |y|
--   lm.nll(model, batch) -> token-mean negative log-likelihood (scalar)
local E = require("engine")

local lm = {}

function lm.labels(batch)
  local ids, mask = batch.ids, batch.loss_mask
  local s = ids:shape()
  local R, T = s[1], s[2]
  if T < 2 then return E.full({ R, T }, -1), E.zeros({ R, T }) end
  local next_ids = E.cat({ ids:narrow(2, 2, T - 1), E.full({ R, 1 }, -1) }, 2)
  local next_mask = E.cat({ mask:narrow(2, 2, T - 1), E.zeros({ R, 1 }) }, 2)
  return E.where(next_mask, next_ids, -1), next_mask
end

function lm.token_logps(model, batch)
  local labels, mask = lm.labels(batch)
  local lp = model:logprobs(batch.ids, labels, { attention_mask = batch.attention_mask })
  return lp, mask
end

function lm.sequence_logps(model, batch)
  local lp, mask = lm.token_logps(model, batch)
  return lp:sum(2), mask:sum(2)
end

function lm.nll(model, batch)
  local lp, mask = lm.token_logps(model, batch)
  local n = mask:sum():item()
  return -lp:sum() / math.max(n, 1), n
end

return lm
