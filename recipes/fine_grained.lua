-- recipes/fine_grained.lua — Fine-Grained RLHF (Wu et al. 2023, Eq. 1):
-- several reward functions each score segments (here sentences) of a
-- response, and each segment's reward lands on its last token:
--   r_t = Σ_k w_k Σ_{segments j of aspect k} [t = last token of j] R_k(x, y, j)
--         - β (log π(y_t) - log π_ref(y_t))
-- then PPO as in recipes/ppo.lua (GAE, whitening, clipped policy and value losses).
-- On the default task the aspects come from its judge: per sentence
-- on_topic (±1, the paper's relevance), clean (±1, its factuality) and
-- sentiment (-1..1); per response a length cost (its completeness),
-- -0.02 per word past 40, and a missing-EOS penalty, on the last token.
--   engine recipes/fine_grained.lua [--w_on_topic=0.5] [--w_clean=0.5] [--w_sentiment=1]
local rl = require("engine.rl")
local RT = require("engine.rl_train")
local ppo = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "ppo.lua")
local judge = require("engine.tasks.reviews").judge

-- the segments of each response: one per sentence, plus the sequence-level scores
local function segments(roll, tok, cfg)
  local all = {}
  for b = 1, roll.B do
    local text, segs = roll.texts[b], {}
    local ends = rl.token_ends(tok, roll.eos[b] and table.move(roll.tokens[b], 1, roll.lengths[b] - 1, 1, {})
      or roll.tokens[b])
    for _, s in ipairs(judge.sentences(text)) do
      local a = judge.aspects(roll.prompts[b], s.text)
      segs[#segs + 1] = { last = rl.token_index(ends, s.last),
        scores = { on_topic = a.on_topic, clean = a.clean, sentiment = judge.sentiment(s.text) } }
    end
    local words = judge.length(text)
    segs[#segs + 1] = { last = math.max(1, roll.lengths[b]),
      scores = { length = -math.max(0, words - 40), eos = roll.eos[b] and 0 or -1 } }
    all[b] = segs
  end
  return all
end

local function train(cfg)
  local tok
  local weights = { on_topic = cfg.w_on_topic, clean = cfg.w_clean, sentiment = cfg.w_sentiment,
    length = cfg.w_length, eos = cfg.missing_eos_penalty }
  return RT.train(cfg, {
    critic = true, advantages = ppo.advantages, loss = ppo.loss,
    on_start = function(_, t) tok = t end,
    rewards = function(roll)
      local dense = rl.dense_rewards(segments(roll, tok, cfg), weights, roll.N)
      return dense, { ["objective/dense_reward"] = dense:sum():item() / roll.B }
    end,
  })
end

local defaults = RT.defaults(ppo.defaults)
defaults.w_on_topic, defaults.w_clean, defaults.w_sentiment, defaults.w_length = 0.5, 0.5, 1.0, 0.02
-- β 0.15: the dense rewards are not normalised and add up over sentences, so
-- the default task's β of 0.05 let the KL reach 29 (0.15: 10.6)
defaults.kl_coef, defaults.normalize_reward, defaults.out = 0.15, false, "runs/fine_grained"
local docs = RT.docs(ppo.docs)
docs.w_on_topic = "weight of each sentence's on-topic score (±1)"
docs.w_clean = "weight of each sentence's clean score (±1: -1 with a banned word)"
docs.w_sentiment = "weight of each sentence's sentiment (-1..1)"
docs.w_length = "weight of the length cost (-1 per word past 40) on the last token"
docs.normalize_reward = "unused here: the dense rewards are used as they are"

return {
  name = "fine_grained",
  description = "Fine-Grained RLHF: dense segment-level rewards from several reward functions (Wu et al. 2023)",
  defaults = defaults, docs = docs, callables = { reward = true }, loss = ppo.loss, segments = segments,
  dense_rewards = rl.dense_rewards, token_ends = rl.token_ends, token_index = rl.token_index,
  train = train,
}
