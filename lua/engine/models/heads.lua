-- engine/models/heads.lua — scalar heads on a causal LM's final hidden
-- states: the value/reward head of reward models and PPO critics, and the
-- multi-output head of fine-grained reward models (K scalars per position).
--
-- Both are one Linear(C, K) with no bias (a bias is kept when a checkpoint
-- has one), a child of the model named "score" (kept in model.score_head,
-- as model:score is a method), saved as "score.weight"
-- (K, C) as Hugging Face's *ForSequenceClassification stores it: a K = 1
-- head is a reward model, a K > 1 head is the same class with num_labels K
-- (HF pools its (B,T,K) logits at the last token; model:outputs gives all
-- positions). Methods added to every model:
--   model:outputs(ids, opts) -> (B,T,K)
--   model:values(ids, opts)  -> (B,T)       (K = 1)
--   model:score(ids, opts)   -> (B) or (B,K): at the last non-padding token
-- The last non-padding token of a row is its last position whose
-- attention_mask entry is 1 (the last position without a mask), as with
-- right padding; with left padding it is the last position.
--
-- Not here: TRL's separate v_head naming, dropout on the head input.
local E = require("engine")
local nn = require("engine.nn")
local base = require("engine.models.causal_lm")

local H = {}

-- attach a head to model (in place; returns model). opts: num_outputs (1),
-- seed or generator (the init draws normal(0, initializer_range)), weight
-- and bias (tensors to use as they are)
function H.attach(model, opts)
  opts = opts or {}
  if rawget(model, "score_head") then base.fail("with_value_head: the model already has a head (score)") end
  local K = opts.num_outputs or 1
  if math.type(K) ~= "integer" or K < 1 then
    base.fail("with_value_head: num_outputs must be a positive integer, got %s", base.show(K))
  end
  local C = model.hp.n_embd
  local w = opts.weight
  if not w then
    local gen = opts.generator or (opts.seed and E.Generator(opts.seed))
    w = (E.randn({ K, C }, { generator = gen, dtype = model.dtype }) * model.hp.init_std):requires_grad(true)
  end
  local lin = model:add_module("score", nn.Linear(C, K, { weight = w, bias_tensor = opts.bias, bias = false }),
    { field = "score_head" })
  lin.training = model.training
  rawset(model, "num_outputs", K)
  return model
end

local function head(self, op)
  local s = rawget(self, "score_head")
  if not s then base.fail("%s: the model has no value head (use E.models.with_value_head(model))", op) end
  return s
end

local CausalLM = base.CausalLM

-- (B,T,K)
function CausalLM:outputs(ids, opts)
  local s = head(self, "outputs")
  return s(self:hidden(ids, opts))
end
CausalLM.outputs = base.guard(CausalLM.outputs)

-- (B,T) for a one-output head
function CausalLM:values(ids, opts)
  local s = head(self, "values")
  if s.out_features ~= 1 then
    base.fail("values: the head has %d outputs; model:outputs(ids, opts) gives them as (B,T,K)", s.out_features)
  end
  local o = s(self:hidden(ids, opts))
  local sh = o:shape()
  return o:reshape({ sh[1], sh[2] })
end
CausalLM.values = base.guard(CausalLM.values)

-- the head's output at each row's last non-padding token: (B) for one
-- output, (B,K) for K
function CausalLM:score(ids, opts)
  opts = opts or {}
  local s = head(self, "score")
  local past = opts.cache and opts.cache.len or 0
  local o = s(self:hidden(ids, opts)) -- (B,T,K)
  local sh = o:shape()
  local B, T, K = sh[1], sh[2], sh[3]
  local last = {}
  local mask = opts.attention_mask
  local rows = mask and (E.is_tensor(mask) and mask:totable() or mask)
  for b = 1, B do
    local t = T
    if rows then
      t = 0
      for j = T, 1, -1 do
        if rows[b][past + j] ~= 0 then
          t = j
          break
        end
      end
      if t == 0 then base.fail("score: row %d of attention_mask has no real token among its last %d positions", b, T) end
    end
    local idx = {}
    for k = 1, K do idx[k] = t end
    last[b] = { idx }
  end
  local picked = o:gather(2, last) -- (B,1,K)
  if K == 1 then return picked:reshape({ B }) end
  return picked:reshape({ B, K })
end
CausalLM.score = base.guard(CausalLM.score)

return H
