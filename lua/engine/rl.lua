-- engine/rl.lua — the tensor algebra of the online RL recipes (issue 6's
-- contracts): KL-shaped per-token rewards, GAE, whitening, the clipped PPO
-- objective, the adaptive KL controller, the group baselines of GRPO and
-- RLOO, and the dense segment rewards of Fine-Grained RLHF.
--
-- Per-token tensors are (B,T) over response tokens, right-padded, with
-- mask 1 on real tokens and 0 on padding. "Masked mean" is the sum over the
-- real tokens of the whole batch divided by their count. Token positions
-- are 1-based. The recursions (GAE) run over Lua tables: a rollout batch is
-- a few thousand numbers, and the result is the same on every thread count.
--
-- Not here: sampling, scoring and the training loop (engine.rollout and
-- engine.rl_train); the recipes re-export what they use.
local E = require("engine")

local rl = {}

local function fail(fmt, ...) error(string.format(fmt, ...), 3) end

local function check_bt(name, x, B, T, op)
  if not E.is_tensor(x) then fail("%s: %s must be a tensor, got %s", op, name, type(x)) end
  local s = x:shape()
  if #s ~= 2 or (B and (s[1] ~= B or s[2] ~= T)) then
    fail("%s: %s is %s, expected [%d,%d] (B rows of T response tokens)", op, name, x:shape_str(),
      B or s[1], T or s[2])
  end
  return s[1], s[2]
end

-- the last real token of each row (0 for a row with none), from a (B,T) mask table
local function last_real(mask_rows)
  local last = {}
  for b, row in ipairs(mask_rows) do
    last[b] = 0
    for t = #row, 1, -1 do
      if row[t] ~= 0 then
        last[b] = t
        break
      end
    end
  end
  return last
end
rl.last_real = function(mask) return last_real(mask:totable()) end

-- rewards (B,T): -kl_coef * (logprobs - ref_logprobs) on every real token,
-- plus scores[b] on the last real token of row b; 0 on padding
function rl.kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
  local op = "kl_rewards"
  local B, T = check_bt("logprobs", logprobs, nil, nil, op)
  check_bt("ref_logprobs", ref_logprobs, B, T, op)
  check_bt("mask", mask, B, T, op)
  if not E.is_tensor(scores) or scores:dim() ~= 1 or scores:numel() ~= B then
    fail("%s: scores must be a tensor of %d scores (one per row), got %s", op, B,
      E.is_tensor(scores) and scores:shape_str() or type(scores))
  end
  if type(kl_coef) ~= "number" then fail("%s: kl_coef must be a number, got %s", op, type(kl_coef)) end
  local last = last_real(mask:totable())
  local s = scores:totable()
  local at = {}
  for b = 1, B do
    at[b] = {}
    for t = 1, T do at[b][t] = (t == last[b]) and s[b] or 0 end
  end
  local kl = (logprobs:detach() - ref_logprobs:detach()) * mask
  return -kl_coef * kl + E.tensor(at)
end

-- advantages, returns (B,T): delta_t = r_t + gamma V_{t+1} - V_t (V = 0 past
-- the last real token), A_t = delta_t + gamma lam A_{t+1}, returns = A + V
function rl.gae(rewards, values, mask, gamma, lam)
  local op = "gae"
  local B, T = check_bt("rewards", rewards, nil, nil, op)
  check_bt("values", values, B, T, op)
  check_bt("mask", mask, B, T, op)
  if type(gamma) ~= "number" or type(lam) ~= "number" then
    fail("%s: gamma and lam must be numbers, got %s and %s", op, type(gamma), type(lam))
  end
  local r, v, m = rewards:totable(), values:totable(), mask:totable()
  local adv, ret = {}, {}
  for b = 1, B do
    local a_row, r_row = {}, {}
    local next_v, next_a = 0, 0
    for t = T, 1, -1 do
      if m[b][t] ~= 0 then
        local delta = r[b][t] + gamma * next_v - v[b][t]
        next_a = delta + gamma * lam * next_a
        next_v = v[b][t]
        a_row[t], r_row[t] = next_a, next_a + v[b][t]
      else
        a_row[t], r_row[t] = 0, 0
      end
    end
    adv[b], ret[b] = a_row, r_row
  end
  return E.tensor(adv), E.tensor(ret)
end

-- (x - mean) / sqrt(var + 1e-8) over the real tokens (unbiased variance, as
-- TRL's masked_whiten); 0 on padding
function rl.whiten(x, mask)
  local B, T = check_bt("x", x, nil, nil, "whiten")
  check_bt("mask", mask, B, T, "whiten")
  local n = mask:sum():item()
  if n < 2 then fail("whiten: needs at least 2 real tokens, the mask has %d", n) end
  x = x:detach()
  local mean = (x * mask):sum() / n
  local centred = (x - mean) * mask
  local var = (centred * centred):sum() / (n - 1)
  return centred / E.sqrt(var + 1e-8)
end

local function masked_mean(x, mask, n) return (x * mask):sum() / n end
rl.masked_mean = masked_mean

-- the clipped surrogate per token: max(-A ratio, -A clip(ratio, 1-eps, 1+eps)),
-- and the 0/1 tensor of where the clipped term won
function rl.clipped_pg(logprobs, old_logprobs, advantages, eps)
  local ratio = E.exp(logprobs - old_logprobs:detach())
  local A = advantages:detach()
  local unclipped = -A * ratio
  local clipped = -A * E.clamp(ratio, 1 - eps, 1 + eps)
  local won = E.where(E.maximum(clipped:detach() - unclipped:detach(), 0), 1, 0) -- clipped > unclipped
  return E.maximum(unclipped, clipped), won
end

-- metrics shared by every clipped objective: clipfrac and approxkl
function rl.policy_metrics(logprobs, old_logprobs, won, mask, n)
  local d = (logprobs:detach() - old_logprobs:detach()) * mask
  return {
    clipfrac = masked_mean(won, mask, n):item(),
    approxkl = 0.5 * (d * d):sum():item() / n,
  }
end

-- the adaptive KL controller of Ziegler et al. (2019):
-- e = clip(kl / target - 1, -0.2, 0.2); value <- value (1 + e n_steps / horizon).
-- Without a target the coefficient stays fixed.
local Controller = {}
Controller.__index = Controller

function rl.adaptive_kl(opts)
  if type(opts) ~= "table" or type(opts.init) ~= "number" then
    fail("adaptive_kl: expected {init = number, target = number, horizon = number}, got %s",
      type(opts) == "table" and "init " .. tostring(opts.init) or type(opts))
  end
  if opts.target ~= nil then
    if type(opts.target) ~= "number" or opts.target <= 0 then
      fail("adaptive_kl: target must be a positive number, got %s", tostring(opts.target))
    end
    if type(opts.horizon) ~= "number" or opts.horizon <= 0 then
      fail("adaptive_kl: horizon must be a positive number, got %s", tostring(opts.horizon))
    end
  end
  return setmetatable({ value = opts.init, target = opts.target, horizon = opts.horizon }, Controller)
end

function Controller:update(current_kl, n_steps)
  if not self.target then return self.value end
  local e = math.max(-0.2, math.min(0.2, current_kl / self.target - 1))
  self.value = self.value * (1 + e * n_steps / self.horizon)
  return self.value
end

local function check_groups(rewards, op)
  if not E.is_tensor(rewards) or rewards:dim() ~= 2 then
    fail("%s: rewards must be a (P,G) tensor (P prompts, G samples each), got %s", op,
      E.is_tensor(rewards) and rewards:shape_str() or type(rewards))
  end
  local G = rewards:shape()[2]
  if G < 2 then fail("%s: needs at least 2 samples per prompt, rewards is %s", op, rewards:shape_str()) end
  return G
end

-- GRPO (Shao et al. 2024): (r - group mean) / (unbiased group std + 1e-4)
function rl.grpo_advantages(rewards)
  local G = check_groups(rewards, "grpo.advantages")
  rewards = rewards:detach()
  local centred = rewards - rewards:mean(2, true)
  local std = E.sqrt((centred * centred):sum(2, true) / (G - 1))
  return centred / (std + 1e-4)
end

-- RLOO (Ahmadian et al. 2024): r minus the mean of the other G-1 samples
function rl.rloo_advantages(rewards)
  local G = check_groups(rewards, "rloo.advantages")
  rewards = rewards:detach()
  return rewards - (rewards:sum(2, true) - rewards) / (G - 1)
end

-- Fine-Grained RLHF (Wu et al. 2023): (B,T) rewards with, at each segment's
-- last token, the weighted sum of its aspect scores. segments[b] is a list
-- of {last = token index, scores = {aspect = number}}; aspects without a
-- weight count 0; a sequence-level score is one more segment ending on the
-- last real token.
function rl.dense_rewards(segments, weights, T)
  local op = "dense_rewards"
  if type(segments) ~= "table" then fail("%s: segments must be a list (one per response), got %s", op, type(segments)) end
  if type(weights) ~= "table" then fail("%s: weights must be a table {aspect = weight}, got %s", op, type(weights)) end
  if math.type(T) ~= "integer" or T < 1 then fail("%s: T must be a positive integer, got %s", op, tostring(T)) end
  local rows = {}
  for b, segs in ipairs(segments) do
    local row = {}
    for t = 1, T do row[t] = 0 end
    for i, seg in ipairs(segs) do
      local last = type(seg) == "table" and seg.last
      if math.type(last) ~= "integer" or last < 1 or last > T then
        fail("%s: response %d segment %d: last must be a token index in 1..%d, got %s", op, b, i, T, tostring(last))
      end
      if type(seg.scores) ~= "table" then fail("%s: response %d segment %d has no scores table", op, b, i) end
      local r = 0
      for aspect, v in pairs(seg.scores) do
        local w = weights[aspect]
        if w then
          if type(v) ~= "number" then
            fail("%s: response %d segment %d: score '%s' must be a number, got %s", op, b, i, aspect, type(v))
          end
          r = r + w * v
        end
      end
      row[last] = row[last] + r
    end
    rows[b] = row
  end
  if #rows == 0 then fail("%s: no responses", op) end
  return E.tensor(rows)
end

-- the end offsets (1-based byte positions, inclusive) of each token of a
-- response as the tokenizer decodes it: ends[i] = #decode(ids[1..i]).
-- Decoding one token at a time gives its exact bytes (decode keeps invalid
-- UTF-8 as bytes), so the offsets add up to the decoded response.
function rl.token_ends(tok, ids)
  local ends, n = {}, 0
  for i, id in ipairs(ids) do
    n = n + #tok:decode({ id })
    ends[i] = n
  end
  return ends
end

-- the index of the token holding byte char_pos of the decoded response: the
-- first i with ends[i] >= char_pos (nil past the end)
function rl.token_index(ends, char_pos)
  local lo, hi = 1, #ends
  if hi == 0 or char_pos > ends[hi] then return nil end
  while lo < hi do
    local mid = (lo + hi) // 2
    if ends[mid] >= char_pos then hi = mid else lo = mid + 1 end
  end
  return lo
end

return rl
