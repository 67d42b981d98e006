-- recipes/ppo.lua — PPO with a per-token KL penalty, as in InstructGPT
-- (Ouyang et al. 2022, Eq. 2; Ziegler et al. 2019; Schulman et al. 2017):
--   r_t   = -β (log π(y_t) - log π_SFT(y_t)) + [t = last] · r_φ(x, y)
--   A_t   = GAE(γ, λ) of r_t with the critic's V, whitened over the batch
--   L_pg  = E_t max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε, 1+ε)),   ρ_t = π(y_t) / π_old(y_t)
--   L_vf  = ½ E_t max((V - R)², (V_old + clip(V - V_old, -ε_v, ε_v) - R)²)
--   L     = L_pg + c_vf · L_vf
--   engine recipes/ppo.lua [--kl_coef=0.05] [--kl_target=6] [--reward=DIR]
local E = require("engine")
local rl = require("engine.rl")
local RT = require("engine.rl_train")

local function loss(b, cfg)
  local n = b.mask:sum():item()
  local pg_tok, won = rl.clipped_pg(b.logprobs, b.old_logprobs, b.advantages, cfg.cliprange)
  local pg = rl.masked_mean(pg_tok, b.mask, n)
  local old_v, R = b.old_values:detach(), b.returns:detach()
  local v_clip = old_v + E.clamp(b.values - old_v, -cfg.cliprange_value, cfg.cliprange_value)
  local vf_plain, vf_clipped = (b.values - R) ^ 2, (v_clip - R) ^ 2
  local vf = 0.5 * rl.masked_mean(E.maximum(vf_plain, vf_clipped), b.mask, n)
  local m = rl.policy_metrics(b.logprobs, b.old_logprobs, won, b.mask, n)
  m.pg_loss, m.vf_loss = pg:item(), vf:item()
  m.vf_clipfrac = rl.masked_mean(E.where(E.maximum(vf_clipped:detach() - vf_plain:detach(), 0), 1, 0), b.mask, n):item()
  return pg + cfg.vf_coef * vf, m
end

-- KL-shaped rewards -> GAE -> whitened advantages (and the critic's returns)
local function advantages(roll, cfg, ctx)
  local rewards = roll.dense_rewards and roll.dense_rewards * roll.resp_mask - ctx.kl_coef *
    (roll.old_logprobs - roll.ref_logprobs) * roll.resp_mask or rl.kl_rewards(roll.scores, roll.old_logprobs,
      roll.ref_logprobs, roll.resp_mask, ctx.kl_coef)
  local adv, ret = rl.gae(rewards, roll.old_values, roll.resp_mask, cfg.gamma, cfg.lam)
  roll.advantages = cfg.whiten_advantages and rl.whiten(adv, roll.resp_mask) or adv
  roll.returns = ret
end

local defaults = RT.defaults { cliprange = 0.2, cliprange_value = 0.2, vf_coef = 0.1, gamma = 1.0, lam = 0.95,
  whiten_advantages = true, critic_model = "", out = "runs/ppo" }
local docs = RT.docs {
  cliprange = "ε: the policy ratio's clip range", cliprange_value = "ε_v: the value's clip range around V_old",
  vf_coef = "c_vf: weight of the value loss", gamma = "γ: discount", lam = "λ: GAE's bias-variance trade-off",
  whiten_advantages = "whiten advantages over each rollout batch",
  critic_model = "the critic's starting weights ('' = the policy's; e.g. the reward model, as InstructGPT)",
}

return {
  name = "ppo",
  description = "PPO with a per-token KL penalty to the SFT model (InstructGPT, Ouyang et al. 2022)",
  defaults = defaults, docs = docs, callables = { reward = true },
  loss = loss, advantages = advantages,
  kl_rewards = rl.kl_rewards, gae = rl.gae, whiten = rl.whiten, adaptive_kl = rl.adaptive_kl,
  train = function(cfg) return RT.train(cfg, { critic = true, advantages = advantages, loss = loss }) end,
}
