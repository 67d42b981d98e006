-- engine/generate.lua — continuations of a batch of prompts from a causal
-- language model, with a KV cache: E.generate(model, prompts, opts), the
-- same as E.generate.sample(model, prompts, opts).
--
--   local out = E.generate(model, {{464, 3290}, {40}}, {
--     max_new_tokens = 32,   -- required
--     temperature = 1.0,     -- 0 is greedy (evaluation)
--     top_k = 0,             -- 0 is off
--     top_p = 1.0,           -- 1 is off
--     stop_tokens = {50256}, -- a list of ids (or one id); the stop token is kept
--     pad_id = 0,            -- the id put on padded positions (masked anyway)
--     seed = 1234,           -- or generator = E.Generator(1234); neither: E.default_generator()
--   })
--
-- Prompts of different lengths are left-padded to the longest, P. Row b of
-- the batch draws its uniforms from its own generator, seeded from the main
-- one (seed or generator) before the first step, so a prompt's continuation
-- depends on the seed and its row, not on the other prompts. A row stops
-- growing at its first stop token; the loop ends when every row has
-- stopped or after max_new_tokens steps. Runs under E.no_grad.
--
-- Returns a table:
--   tokens           B lists of the new ids (up to and including the stop token)
--   logprobs         B lists: each new token's log-probability under the
--                    distribution it was drawn from: softmax(logits / T)
--                    after top-k and top-p, renormalised over the kept
--                    tokens (what PPO's old log-probs are). With
--                    temperature 0 (greedy) that distribution is a point
--                    mass, so the model's own log_softmax(logits) of the
--                    token is given instead (what evaluation wants).
--   ids              (B, P+N) tensor of prompt + completion ids, left-padded;
--                    N is the number of steps run (<= max_new_tokens)
--   mask             (B, P+N) 1 on real prompt tokens and on completion tokens
--   completion_mask  (B, P+N) 1 on completion tokens only
--   prompt_length    P
--
-- The model interface used: model:new_cache(B, max_len) -> cache (cache.len
-- advanced by the model), model:forward(ids, {attention_mask = (B, cache.len
-- + T) tensor, cache = cache}) -> logits (B, T, V); model.vocab_size (used,
-- when present, to check prompt ids). A model whose forward is CausalLM's
-- (engine.models) is run as model:hidden plus the head on the last position
-- only, which is all a step needs.
--
-- Speed: a decode step is B rows through the model, where per-call costs
-- dominate: E.matmul takes its few-rows kernel (engine/src/matmul_small.c),
-- the models' decode steps do attention in a few plain ops
-- (causal_lm.decode_attention), and Lua's collector runs once per token
-- instead of at every tensor op (pause_collector below).
--
-- One step's token choice is E.sample_logits (engine/src/sampling.c, bound
-- by lua/binding_sampling.c): greedy, or temperature, top-k and top-p as
-- Hugging Face's warpers define them, in one pass over each row in C.
--
-- Not here: beam search, repetition penalties, speculative decoding,
-- streaming output, detokenisation.
local E = require("engine")
local CausalLM = require("engine.models.causal_lm").CausalLM

local M = {}

-- ---- options -------------------------------------------------------------------

local function is_int(v) return type(v) == "number" and math.tointeger(v) ~= nil end

local known_opts = {
  max_new_tokens = true, temperature = true, top_k = true, top_p = true,
  stop_tokens = true, pad_id = true, seed = true, generator = true,
}
local known_list = "max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, seed, generator"

-- checked options and prompts; errors point `level` frames up from here
local function check(model, prompts, opts, level)
  local op = "generate"
  local function fail(msg) error(op .. ": " .. msg, level + 1) end
  if type(model) ~= "table" or type(model.forward) ~= "function" or type(model.new_cache) ~= "function" then
    fail("model must be a model with forward and new_cache methods, got " .. type(model))
  end
  if type(prompts) ~= "table" or #prompts == 0 then
    fail("prompts must be a non-empty list of token-id lists, got "
      .. (type(prompts) == "table" and "an empty list" or type(prompts)))
  end
  opts = opts or {}
  if type(opts) ~= "table" then fail("options must be a table, got " .. type(opts)) end
  for key in pairs(opts) do
    if not known_opts[key] then
      fail("unknown option '" .. tostring(key) .. "' (the options are " .. known_list .. ")")
    end
  end
  local o = {}
  local T = opts.temperature == nil and 1.0 or opts.temperature
  local k = opts.top_k == nil and 0 or opts.top_k
  local p = opts.top_p == nil and 1.0 or opts.top_p
  if type(T) ~= "number" or not (T >= 0) or T == math.huge then
    fail("temperature must be a finite number >= 0 (0 is greedy), got " .. tostring(T))
  end
  if not is_int(k) or k < 0 then fail("top_k must be an integer >= 0 (0 is off), got " .. tostring(k)) end
  if type(p) ~= "number" or not (p > 0 and p <= 1) then
    fail("top_p must be in (0, 1] (1 is off), got " .. tostring(p))
  end
  o.temperature, o.top_k, o.top_p = T, math.tointeger(k), p
  local n = opts.max_new_tokens
  if n == nil then fail("max_new_tokens is required (how many tokens to add at most)") end
  if not is_int(n) or n < 0 then fail("max_new_tokens must be an integer >= 0, got " .. tostring(n)) end
  o.max_new_tokens = math.tointeger(n)
  local V = model.vocab_size
  local function check_id(v, what)
    if not is_int(v) or v < 0 or (V and v >= V) then
      fail(what .. " must be a token id in [0, " .. (V and tostring(V) or "V") .. "), got " .. tostring(v))
    end
    return math.tointeger(v)
  end
  local stops = opts.stop_tokens
  if type(stops) == "number" then stops = { stops } end
  if stops ~= nil and type(stops) ~= "table" then
    fail("stop_tokens must be a list of token ids, got " .. type(stops))
  end
  o.stop = {}
  for i, v in ipairs(stops or {}) do o.stop[check_id(v, "stop_tokens[" .. i .. "]")] = true end
  o.pad_id = check_id(opts.pad_id == nil and 0 or opts.pad_id, "pad_id")
  if opts.seed ~= nil and opts.generator ~= nil then fail("give either seed or generator, not both") end
  if opts.seed ~= nil and math.type(opts.seed) ~= "integer" then
    fail("seed must be an integer, got " .. tostring(opts.seed))
  end
  if opts.generator ~= nil and type(opts.generator) ~= "userdata" then
    fail("generator must be an E.Generator, got " .. type(opts.generator))
  end
  o.seed, o.generator = opts.seed, opts.generator
  for b, prompt in ipairs(prompts) do
    if type(prompt) ~= "table" then fail("prompt " .. b .. " must be a list of token ids, got " .. type(prompt)) end
    if #prompt == 0 then fail("prompt " .. b .. " is empty (a prompt needs at least one token)") end
    for t, v in ipairs(prompt) do check_id(v, "prompt " .. b .. " token " .. t) end
  end
  return o
end

-- ---- the decode loop -------------------------------------------------------------

-- The collector during the loop. A decode step makes about a hundred small
-- tensor boxes that die within the step, and the binding asks Lua's
-- collector for a step for each result it makes, sized by the result's
-- elements, views included: each view of the KV cache asks for a step as if
-- the whole cache had been allocated, which in Lua's default incremental
-- mode comes to about a full collection per layer. So for the loop the
-- collector is switched to generational mode and stopped, and runs once per
-- token (a young collection: that step's boxes). The previous mode and
-- state come back when the loop ends, by error or not (a to-be-closed
-- guard).
local function pause_collector()
  local running = collectgarbage("isrunning")
  collectgarbage("stop")
  local mode = collectgarbage("generational")
  return setmetatable({}, {
    __close = function()
      collectgarbage(mode)
      if running then collectgarbage("restart") end
    end,
  })
end

-- the (B,V) logits of the last position of ids, advancing the cache. A
-- model whose forward is CausalLM's gets the head applied to that position
-- only (the prompt's other positions never reach it); any other model is
-- run whole and its last position taken.
local function last_logits(model, ids, opts)
  if rawequal(model.forward, CausalLM.forward) then
    local h = model:hidden(ids, opts)
    local s = h:shape()
    local last = s[2] == 1 and h or h:narrow(2, s[2], 1)
    return E.matmul(last:reshape({ s[1], s[3] }), model:head_weight("forward"):transpose(1, 2))
  end
  local logits = model:forward(ids, opts)
  local s = logits:shape()
  return logits:narrow(2, s[2], 1):reshape({ s[1], s[3] })
end

-- one generator per row, seeded from the main stream
local function row_generators(B, o)
  local g = o.generator or (o.seed and E.Generator(o.seed)) or E.default_generator()
  local gens = {}
  for b = 1, B do gens[b] = E.Generator(math.tointeger(math.floor(g:uniform() * 2 ^ 53))) end
  return gens
end

local function run(model, prompts, o)
  local B, N = #prompts, o.max_new_tokens
  local P = 0
  for _, prompt in ipairs(prompts) do P = math.max(P, #prompt) end
  local pad = o.pad_id
  local ids_rows, comp_rows, prompt_rows, mask_rows = {}, {}, {}, {}
  for b, prompt in ipairs(prompts) do
    local ids, mask, comp, gap = {}, {}, {}, P - #prompt
    for t = 1, P do
      ids[t] = t > gap and math.tointeger(prompt[t - gap]) or pad
      mask[t] = t > gap and 1 or 0
      comp[t] = 0
    end
    ids_rows[b], mask_rows[b], comp_rows[b], prompt_rows[b] = ids, mask, comp, table.move(ids, 1, P, 1, {})
  end
  local tokens, logprobs, done, n_done = {}, {}, {}, 0
  for b = 1, B do tokens[b], logprobs[b], done[b] = {}, {}, false end

  local mask_full = E.zeros({ B, P + N })
  mask_full:narrow(2, 1, P):copy_(E.tensor(mask_rows))
  if N > 0 then
    local greedy = o.temperature == 0
    local gens = not greedy and row_generators(B, o) or nil
    local sopts = { temperature = o.temperature, top_k = o.top_k, top_p = o.top_p }
    local cache = model:new_cache(B, P + N)
    local gc <close> = pause_collector()
    local last = last_logits(model, E.tensor(prompt_rows),
      { attention_mask = mask_full:narrow(2, 1, P), cache = cache })
    local u = {}
    for t = 1, N do
      if gens then
        for b = 1, B do u[b] = done[b] and 0 or gens[b]:uniform() end
      end
      local ids, lps = E.sample_logits(last, gens and u or nil, sopts)
      local col, next_ids = {}, {} -- fresh each step: the model may keep what it is given
      for b = 1, B do
        local id = ids[b]
        if done[b] then
          ids_rows[b][P + t], mask_rows[b][P + t], comp_rows[b][P + t] = pad, 0, 0
          col[b], next_ids[b] = { 0 }, { pad }
        else
          local j = #tokens[b] + 1
          tokens[b][j], logprobs[b][j] = id, lps[b]
          ids_rows[b][P + t], mask_rows[b][P + t], comp_rows[b][P + t] = id, 1, 1
          col[b], next_ids[b] = { 1 }, { id }
          if o.stop[id] then
            done[b], n_done = true, n_done + 1
          end
        end
      end
      if n_done == B or t == N then break end
      mask_full:narrow(2, P + t, 1):copy_(E.tensor(col))
      last = last_logits(model, next_ids, { attention_mask = mask_full:narrow(2, 1, P + t), cache = cache })
      collectgarbage("step", 0)
    end
  end
  return {
    tokens = tokens,
    logprobs = logprobs,
    ids = E.tensor(ids_rows),
    mask = E.tensor(mask_rows),
    completion_mask = E.tensor(comp_rows),
    prompt_length = P,
  }
end

-- out = M.sample(model, prompts, opts): see the top of this file
function M.sample(model, prompts, opts)
  local o = check(model, prompts, opts, 3)
  return E.no_grad(run, model, prompts, o)
end

return setmetatable(M, {
  __call = function(_, model, prompts, opts)
    local o = check(model, prompts, opts, 3)
    return E.no_grad(run, model, prompts, o)
  end,
})
