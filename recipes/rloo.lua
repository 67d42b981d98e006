-- recipes/rloo.lua — REINFORCE Leave-One-Out (Ahmadian et al. 2024; Kool et
-- al. 2019), critic-free: G responses per prompt, each with the sequence reward
--   r_i = score_i - β Σ_t (log π(y_t) - log π_ref(y_t))
--   A_i = r_i - 1/(G-1) Σ_{j≠i} r_j                 on every token of response i
--   L   = E_t max(-A_i ρ_t, -A_i clip(ρ_t, 1-ε, 1+ε))   (ρ = 1 on the first pass: REINFORCE)
--   engine recipes/rloo.lua [--group_size=4] [--kl_coef=0.05]
local rl = require("engine.rl")
local RT = require("engine.rl_train")

local function loss(b, cfg)
  local n = b.mask:sum():item()
  local pg_tok, won = rl.clipped_pg(b.logprobs, b.old_logprobs, b.advantages, cfg.cliprange)
  local m = rl.policy_metrics(b.logprobs, b.old_logprobs, won, b.mask, n)
  local pg = rl.masked_mean(pg_tok, b.mask, n)
  m.pg_loss = pg:item()
  return pg, m
end

local function advantages(roll, cfg, ctx)
  local G = cfg.group_size
  local kl = ((roll.old_logprobs - roll.ref_logprobs) * roll.resp_mask):sum(2)
  local r = roll.scores - ctx.kl_coef * kl
  local A = rl.rloo_advantages(r:reshape({ roll.B // G, G })):reshape({ roll.B, 1 })
  roll.advantages = A * roll.resp_mask
end

return {
  name = "rloo",
  description = "REINFORCE Leave-One-Out, critic-free (Ahmadian et al. 2024)",
  defaults = RT.defaults { group_size = 4, cliprange = 0.2, ppo_epochs = 2, out = "runs/rloo" },
  callables = { reward = true },
  docs = RT.docs { group_size = "G: responses sampled per prompt", cliprange = "ε: the ratio's clip range" },
  loss = loss, advantages = rl.rloo_advantages,
  train = function(cfg) return RT.train(cfg, { group_size = cfg.group_size, advantages = advantages, loss = loss }) end,
}
