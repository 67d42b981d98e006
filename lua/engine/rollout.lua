-- engine/rollout.lua — one batch of RL experience: sample responses to
-- prompts with the KV-cached sampler, then the per-token quantities the RL
-- losses read, each for the whole batch in one forward pass.
--
--   local R = require("engine.rollout")
--   local roll = R.sample(policy, tok, prompt_rows, prompt_texts, {max_new_tokens =, temperature =, seed =})
--   R.logprobs(model, roll)  -> (B,N) log π(y_t | x, y_<t) of the response tokens (0 on padding)
--   R.values(critic, roll)   -> (B,N) V of the state each response token was sampled in
--   R.rows(roll, list)       -> a roll holding only those rows (1-based), for minibatches
--
-- A roll holds: B, P (the left-padded prompt length), N (response columns),
-- ids (B,P+N) prompt + response ids, mask (B,P+N), mask (B,N) as resp_mask,
-- tokens and texts (B lists of the response ids, B decoded responses
-- without the stop token), prompts (B prompt strings), lengths (response
-- token counts), eos (B booleans: the response ended with the stop token)
-- and sample_logprobs (B,N): each token's log-probability under the
-- distribution it was drawn from (softmax(logits / temperature)).
--
-- Position P+t of ids holds response token t; it is predicted from the
-- positions before it, so the model is run on ids[1 .. P+N-1] and its
-- outputs at P .. P+N-1 belong to response tokens 1 .. N.
--
-- Not here: scoring (engine.rl_train's reward functions), advantages and
-- losses (engine.rl and the recipes).
local E = require("engine")

local R = {}

local function to_table_rows(list, N, fill)
  local rows = {}
  for b, l in ipairs(list) do
    local row = {}
    for t = 1, N do row[t] = l[t] or fill end
    rows[b] = row
  end
  return rows
end

function R.sample(policy, tok, prompt_rows, prompt_texts, opts)
  local g = E.generate(policy, prompt_rows, {
    max_new_tokens = opts.max_new_tokens, temperature = opts.temperature or 1, top_k = opts.top_k or 0,
    top_p = opts.top_p or 1, stop_tokens = { tok.eos_id }, seed = opts.seed, generator = opts.generator,
  })
  local B, P = #prompt_rows, g.prompt_length
  local N = g.ids:shape()[2] - P
  local roll = { B = B, P = P, N = N, ids = g.ids, mask = g.mask, tokens = g.tokens, prompts = prompt_texts,
    texts = {}, lengths = {}, eos = {} }
  local resp = {}
  for b = 1, B do
    local ids = g.tokens[b]
    local n = #ids
    roll.eos[b] = n > 0 and ids[n] == tok.eos_id
    roll.lengths[b] = n
    roll.texts[b] = tok:decode(roll.eos[b] and table.move(ids, 1, n - 1, 1, {}) or ids, { skip_special_tokens = true })
    resp[b] = {}
    for t = 1, N do resp[b][t] = t <= n and 1 or 0 end
  end
  roll.resp_mask = E.tensor(resp)
  roll.sample_logprobs = E.tensor(to_table_rows(g.logprobs, N, 0))
  return roll
end

-- the model's inputs and the labels of the response tokens: ids[1..L-1],
-- its mask, and labels (B,L-1) holding ids[t+1] where t+1 is a response token
local function inputs(roll)
  if roll._ctx then return roll._ctx, roll._ctx_mask, roll._labels end
  local L = roll.P + roll.N
  local ctx = roll.ids:narrow(2, 1, L - 1):contiguous()
  local ctx_mask = roll.mask:narrow(2, 1, L - 1):contiguous()
  local next_ids = roll.ids:narrow(2, 2, L - 1)
  local is_resp = roll.P == 1 and roll.resp_mask or E.cat({ E.zeros({ roll.B, roll.P - 1 }), roll.resp_mask }, 2)
  local labels = E.where(is_resp, next_ids, -1)
  roll._ctx, roll._ctx_mask, roll._labels = ctx, ctx_mask, labels
  return ctx, ctx_mask, labels
end

-- (B,N) log-probabilities of the response tokens (differentiable when grad
-- is on); opts.temperature divides the logits first, as the sampler did
function R.logprobs(model, roll, opts)
  local ctx, ctx_mask, labels = inputs(roll)
  local lp = model:logprobs(ctx, labels, { attention_mask = ctx_mask, temperature = opts and opts.temperature })
  return lp:narrow(2, roll.P, roll.N)
end

-- (B,N) values from a model with a value head
function R.values(critic, roll)
  local ctx, ctx_mask = inputs(roll)
  return critic:values(ctx, { attention_mask = ctx_mask }):narrow(2, roll.P, roll.N) * roll.resp_mask
end

-- the rows of a (B,...) tensor, as a new tensor
local function pick_tensor(x, rows0)
  local s = x:shape()
  if #s == 1 then return E.embedding(x:reshape({ s[1], 1 }), rows0):reshape({ #rows0 }) end
  return E.embedding(x, rows0)
end

-- a roll with only the given rows (1-based); tensors gathered, lists picked;
-- fields added to the roll by the recipe (advantages, returns...) come along
function R.rows(roll, list)
  local rows0, sub = {}, { B = #list, P = roll.P, N = roll.N }
  for i, r in ipairs(list) do rows0[i] = r - 1 end
  for k, v in pairs(roll) do
    if k:sub(1, 1) ~= "_" and sub[k] == nil then
      if E.is_tensor(v) and v:dim() >= 1 and v:shape()[1] == roll.B then
        sub[k] = pick_tensor(v, rows0)
      elseif type(v) == "table" and #v == roll.B then
        local t = {}
        for i, r in ipairs(list) do t[i] = v[r] end
        sub[k] = t
      else
        sub[k] = v
      end
    end
  end
  return sub
end

return R
