-- recipes/ppo_ptx.lua — PPO-ptx (InstructGPT, Ouyang et al. 2022, Eq. 2):
-- PPO's objective plus γ times the log-likelihood of pretraining text,
-- mixed into the same update:
--   L = L_PPO + γ · NLL(batch of the pretraining corpus)
-- (one pretraining batch per PPO minibatch; NLL is the token mean).
--   engine recipes/ppo_ptx.lua [--ptx_coef=1] [--ptx_data=FILE.jsonl] [+ every ppo.lua key]
local E = require("engine")
local lm = require("engine.lm")
local RT = require("engine.rl_train")
local ppo = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "ppo.lua")
local P = require("engine.preference")

local defaults, docs = RT.defaults(ppo.defaults), RT.docs(ppo.docs)
defaults.ptx_coef, docs.ptx_coef = 1.0, "γ: weight of the pretraining negative log-likelihood"
defaults.ptx_data, docs.ptx_data = P.default_data .. "/pretrain.jsonl", "pretraining text (JSONL: text)"
defaults.ptx_batch_size, docs.ptx_batch_size = 8, "pretraining sequences per minibatch"
defaults.ptx_max_length, docs.ptx_max_length = 192, "longest pretraining sequence in tokens"
defaults.out = "runs/ppo_ptx"

local function train(cfg)
  local policy -- the policy RT.train builds, seen by the extra loss through the algo's hook
  local tok = assert(E.tokenizer.load(cfg.model))
  local items = E.data.tokenize_sft(E.data.read_jsonl(cfg.ptx_data, { format = "sft" }), tok, { max_length = cfg.ptx_max_length })
  local loader = E.data.Loader(items, { batch_size = cfg.ptx_batch_size, seed = cfg.seed + 2 })
  return RT.train(cfg, {
    critic = true, advantages = ppo.advantages, loss = ppo.loss,
    on_start = function(model) policy = model end,
    extra_loss = function()
      local nll = lm.nll(policy, loader:next())
      return cfg.ptx_coef * nll, { ptx_loss = nll:item() }
    end,
    resumable = { ptx = loader },
  })
end

return {
  name = "ppo_ptx",
  description = "PPO-ptx: PPO plus the pretraining log-likelihood (InstructGPT, Ouyang et al. 2022)",
  defaults = defaults, docs = docs, callables = { reward = true }, loss = ppo.loss,
  kl_rewards = ppo.kl_rewards, gae = ppo.gae, whiten = ppo.whiten, adaptive_kl = ppo.adaptive_kl,
  train = train,
}
