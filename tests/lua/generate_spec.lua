-- generate_spec.lua — E.generate (lua/engine/generate.lua) and the sampler
-- under it, E.sample_logits (engine/src/sampling.c), against a plain-Lua
-- reference of its definition written here (a full sort, running sums).
--
-- The decode loop runs against mock models that follow the model interface
-- (new_cache, forward with attention_mask and cache) and whose logits are a
-- known function of the real tokens so far, so expected continuations and
-- log-probabilities are worked out by hand or by a separate loop here.
-- Distribution checks are chi-square tests on a fixed seed: deterministic,
-- so they cannot flake, with bounds loose enough (p = 0.001) that a correct
-- sampler passes for any seed but a wrong distribution does not.
-- With a real model (a small random GPT-2 from E.models.new): KV-cached
-- generation equals recomputing the full forward at every step, and a
-- left-padded prompt continues as it does alone.
local H = require("helper")
local E = require("engine")

local close = H.assert_close
local exp, log = math.exp, math.log

-- ---- mock models ------------------------------------------------------------

-- A causal LM over V tokens whose logits at a position are fn(history): the
-- real (mask 1) token ids up to and including that position. The cache keeps
-- each row's positions; every call is recorded in model.calls. Masked
-- positions get zero logits.
local function mock(V, fn)
  local model = { vocab_size = V, config = { vocab_size = V }, calls = {} }
  function model:new_cache(B, max_len)
    return { len = 0, B = B, max_len = max_len, rows = {} }
  end
  function model:forward(ids, opts)
    opts = opts or {}
    local rows = E.is_tensor(ids) and ids:totable() or ids
    local B, T = #rows, #rows[1]
    local cache = opts.cache
    local past = cache and cache.len or 0
    local mask = opts.attention_mask and opts.attention_mask:totable()
    assert(not mask or (#mask == B and #mask[1] == past + T), "attention_mask must cover cache.len + T")
    self.calls[#self.calls + 1] = { T = T, past = past, ids = rows, mask = mask }
    local out = {}
    for b = 1, B do
      local hist = cache and cache.rows[b] or {}
      if cache then cache.rows[b] = hist end
      out[b] = {}
      for t = 1, T do
        local pos = past + t
        hist[pos] = { id = math.tointeger(rows[b][t]), m = mask and mask[b][pos] or 1 }
        local real = {}
        for j = 1, pos do
          if hist[j].m == 1 then real[#real + 1] = hist[j].id end
        end
        if hist[pos].m == 1 then
          out[b][t] = fn(real)
        else
          out[b][t] = {}
          for v = 1, V do out[b][t][v] = 0 end
        end
      end
    end
    if cache then
      cache.len = past + T
      assert(cache.len <= cache.max_len, "cache overflow")
    end
    return E.tensor(out)
  end
  return model
end

-- V = 7; logits[v] = (3 last + 5 v + 2 n) mod 7 with n the number of real
-- tokens: a permutation of 0..6 over v, so the argmax is unique, and it
-- depends on the position count (padding must not count)
local function ctx_logits(h)
  local last, n, row = h[#h], #h, {}
  for v = 0, 6 do row[v + 1] = (3 * last + 5 * v + 2 * n) % 7 end
  return row
end

-- the greedy continuation of one prompt under ctx_logits, by hand
local function greedy_by_hand(prompt, n)
  local h, out = { table.unpack(prompt) }, {}
  for _ = 1, n do
    local row, best, arg = ctx_logits(h), -1, nil
    for v = 0, 6 do
      if row[v + 1] > best then best, arg = row[v + 1], v end
    end
    out[#out + 1] = arg
    h[#h + 1] = arg
  end
  return out
end

-- constant logits over 4 tokens, whatever the history
local X4 = { 0, 1, 2, -1 }
local function const4() return { 0, 1, 2, -1 } end

-- chi-square statistic of counts against probabilities (0-based ids)
local function chi2(counts, probs, n)
  local s = 0
  for v = 0, #probs - 1 do
    local e = probs[v + 1] * n
    if e > 0 then s = s + ((counts[v] or 0) - e) ^ 2 / e
    else assert.equals(0, counts[v] or 0, "token " .. v .. " has probability 0 but was drawn") end
  end
  return s
end
-- chi-square quantiles at p = 0.001 by degrees of freedom
local CHI2_999 = { 10.83, 13.82, 16.27 }

describe("generate with E.sample_logits", function()

  it("greedy equals the argmax worked out by hand, with the model's log-probabilities", function()
    local m = mock(7, ctx_logits)
    local out = E.generate(m, { { 1, 2, 3 }, { 4 } }, { max_new_tokens = 6, temperature = 0 })
    assert.same(greedy_by_hand({ 1, 2, 3 }, 6), out.tokens[1])
    assert.same(greedy_by_hand({ 4 }, 6), out.tokens[2])
    -- logits are a permutation of 0..6: log_softmax of the max is -log sum_j e^-j
    local z = 0
    for j = 0, 6 do z = z + exp(-j) end
    for b = 1, 2 do
      for t = 1, 6 do close(out.logprobs[b][t], -log(z), 1e-6) end
    end
  end)

  it("top_k = 1 and a tiny top_p equal greedy, with log-probability 0", function()
    local m = mock(7, ctx_logits)
    local prompts = { { 1, 2, 3 }, { 4 }, { 0, 6 } }
    local greedy = E.generate(m, prompts, { max_new_tokens = 8, temperature = 0 })
    local settings = {
      { top_k = 1 }, { top_p = 1e-6 }, { top_k = 1, temperature = 3 }, { top_p = 0.05, temperature = 0.7 },
    }
    for _, o in ipairs(settings) do
      o.max_new_tokens, o.seed = 8, 11
      local out = E.generate(m, prompts, o)
      assert.same(greedy.tokens, out.tokens)
      for b = 1, 3 do
        assert.same({ 0, 0, 0, 0, 0, 0, 0, 0 }, out.logprobs[b])
      end
    end
  end)

  it("log-probabilities are those of the renormalised sampling distribution", function()
    local m = mock(4, const4)
    -- by hand, from logits {0, 1, 2, -1}
    local z1 = 1 + exp(1) + exp(2) + exp(-1)
    local cases = {
      { opts = { temperature = 1 }, lp = { -log(z1), 1 - log(z1), 2 - log(z1), -1 - log(z1) } },
      -- s = x/0.5 = {0,2,4,-2}; top 2 = ids 2, 1
      { opts = { temperature = 0.5, top_k = 2 }, lp = { nil, -2 - log(1 + exp(-2)), -log(1 + exp(-2)), nil } },
      -- p = {.087, .237, .644, .032}: id 2 (mass above 0), id 1 (.644 < .7) kept; id 0 (.881) not
      { opts = { top_p = 0.7 }, lp = { nil, 1 - log(exp(1) + exp(2)), 2 - log(exp(1) + exp(2)), nil } },
      -- s = {0,.5,1,-.5}; top 3 drops id 3; p = {.186,.307,.507}; top_p .6 keeps ids 2 and 1
      { opts = { temperature = 2, top_k = 3, top_p = 0.6 },
        lp = { nil, 0.5 - log(exp(0.5) + exp(1)), 1 - log(exp(0.5) + exp(1)), nil } },
    }
    local B = 1500
    local prompts = {}
    for b = 1, B do prompts[b] = { 0 } end
    for ci, c in ipairs(cases) do
      c.opts.max_new_tokens, c.opts.seed = 1, 100 + ci
      local out = E.generate(m, prompts, c.opts)
      local counts, probs = {}, {}
      for v = 1, 4 do probs[v] = c.lp[v] and exp(c.lp[v]) or 0 end
      for b = 1, B do
        local id = out.tokens[b][1]
        assert(c.lp[id + 1], "case " .. ci .. ": token " .. id .. " is outside the kept set")
        close(out.logprobs[b][1], c.lp[id + 1], 1e-6)
        counts[id] = (counts[id] or 0) + 1
      end
      local kept = 0
      for v = 1, 4 do if c.lp[v] then kept = kept + 1 end end
      local s = chi2(counts, probs, B)
      assert(s < CHI2_999[kept - 1], string.format("case %d: chi-square %.2f with %d dof", ci, s, kept - 1))
    end
  end)

  it("the sampled frequencies match the model's distribution over many steps", function()
    -- a history-dependent model: logits = X4 shifted by the last token
    local m = mock(4, function(h)
      local r = {}
      for v = 1, 4 do r[v] = X4[(v + h[#h] - 1) % 4 + 1] end
      return r
    end)
    local out = E.generate(m, { { 0 }, { 1 }, { 2 }, { 3 } }, { max_new_tokens = 400, seed = 5 })
    -- count transitions last -> next; each row of the table must follow softmax(shifted X4)
    local trans, totals = {}, {}
    for b, prompt in ipairs({ { 0 }, { 1 }, { 2 }, { 3 } }) do
      local prev = prompt[1]
      for _, id in ipairs(out.tokens[b]) do
        trans[prev] = trans[prev] or {}
        trans[prev][id] = (trans[prev][id] or 0) + 1
        totals[prev] = (totals[prev] or 0) + 1
        prev = id
      end
    end
    for last = 0, 3 do
      local z, probs = 0, {}
      for v = 1, 4 do z = z + exp(X4[(v + last - 1) % 4 + 1]) end
      for v = 1, 4 do probs[v] = exp(X4[(v + last - 1) % 4 + 1]) / z end
      assert(totals[last] > 50)
      local s = chi2(trans[last], probs, totals[last])
      assert(s < CHI2_999[3], string.format("after token %d: chi-square %.2f", last, s))
    end
  end)

  it("stops each row at its stop token and ends early when all have stopped", function()
    -- next token is last + 1 (mod 6), by a wide margin
    local m = mock(6, function(h)
      local r = {}
      for v = 0, 5 do r[v + 1] = v == (h[#h] + 1) % 6 and 10 or 0 end
      return r
    end)
    local out = E.generate(m, { { 5, 0 }, { 2 } },
      { max_new_tokens = 10, temperature = 0, stop_tokens = { 3 }, pad_id = 5 })
    assert.same({ { 1, 2, 3 }, { 3 } }, out.tokens)
    assert.equals(3, #out.logprobs[1])
    assert.equals(1, #out.logprobs[2])
    assert.equals(2, out.prompt_length)
    assert.same({ { 5, 0, 1, 2, 3 }, { 5, 2, 3, 5, 5 } }, out.ids:totable())
    assert.same({ { 1, 1, 1, 1, 1 }, { 0, 1, 1, 0, 0 } }, out.mask:totable())
    assert.same({ { 0, 0, 1, 1, 1 }, { 0, 0, 1, 0, 0 } }, out.completion_mask:totable())
    -- one prefill and two decode steps; the stopped row is fed the pad id, masked
    assert.equals(3, #m.calls)
    assert.same({ { 2 }, { 5 } }, m.calls[3].ids)
    assert.same({ 0, 1, 1, 0 }, m.calls[3].mask[2])
    -- a single stop id is accepted too; no stop token runs all steps
    assert.same({ { 3 } }, E.generate(m, { { 2 } }, { max_new_tokens = 4, temperature = 0, stop_tokens = 3 }).tokens)
    assert.same({ { 3, 4, 5, 0 } }, E.generate(m, { { 2 } }, { max_new_tokens = 4, temperature = 0 }).tokens)
  end)

  it("feeds the model a left-padded prefill, then one token a step through the cache", function()
    local m = mock(7, ctx_logits)
    local out = E.generate(m, { { 1, 2, 3 }, { 4 } }, { max_new_tokens = 3, temperature = 0, pad_id = 6 })
    assert.equals(3, #m.calls)
    assert.same({ T = 3, past = 0, ids = { { 1, 2, 3 }, { 6, 6, 4 } }, mask = { { 1, 1, 1 }, { 0, 0, 1 } } },
      m.calls[1])
    for s = 2, 3 do
      local c = m.calls[s]
      assert.equals(1, c.T)
      assert.equals(3 + s - 2, c.past)
      assert.same({ { out.tokens[1][s - 1] }, { out.tokens[2][s - 1] } }, c.ids)
      assert.same({ 0, 0, 1 }, { table.unpack(c.mask[2], 1, 3) })
      assert.equals(3 + s - 1, #c.mask[1])
      for j = 4, 3 + s - 1 do
        assert.equals(1, c.mask[1][j])
        assert.equals(1, c.mask[2][j])
      end
    end
  end)

  it("a left-padded prompt continues as the same prompt alone", function()
    local m = mock(7, ctx_logits)
    local batch = E.generate(m, { { 1, 2, 3, 4 }, { 4 } }, { max_new_tokens = 7, temperature = 0 })
    local alone = E.generate(m, { { 4 } }, { max_new_tokens = 7, temperature = 0 })
    assert.same(alone.tokens[1], batch.tokens[2])
    close(batch.logprobs[2], alone.logprobs[1], 1e-12)
    -- sampled: row 1 draws from the same stream in both runs
    local sb = E.generate(m, { { 4 }, { 1, 2, 3, 4 } }, { max_new_tokens = 12, seed = 9 })
    local sa = E.generate(m, { { 4 } }, { max_new_tokens = 12, seed = 9 })
    assert.same(sa.tokens[1], sb.tokens[1])
    close(sb.logprobs[1], sa.logprobs[1], 1e-12)
  end)

  it("is deterministic for a seed or a generator", function()
    local m = mock(7, ctx_logits)
    local prompts = { { 1, 2 }, { 3 }, { 5, 5, 5 } }
    local o = { max_new_tokens = 20, seed = 42, temperature = 1.3 }
    local a, b = E.generate(m, prompts, o), E.generate(m, prompts, o)
    assert.same(a.tokens, b.tokens)
    assert.same(a.logprobs, b.logprobs)
    local c = E.generate(m, prompts, { max_new_tokens = 20, seed = 43, temperature = 1.3 })
    assert.is_not.same(a.tokens, c.tokens)
    local g = E.Generator(42)
    local d = E.generate(m, prompts, { max_new_tokens = 20, generator = g, temperature = 1.3 })
    assert.same(a.tokens, d.tokens)
    -- the generator moved on: the next call differs
    local e = E.generate(m, prompts, { max_new_tokens = 20, generator = g, temperature = 1.3 })
    assert.is_not.same(a.tokens, e.tokens)
  end)
end)

describe("generate", function()
  it("with max_new_tokens = 0 returns the padded prompts and calls no model", function()
    local m = mock(7, ctx_logits)
    local out = E.generate.sample(m, { { 1, 2 }, { 3 } }, { max_new_tokens = 0 })
    assert.same({ {}, {} }, out.tokens)
    assert.same({ { 1, 2 }, { 0, 3 } }, out.ids:totable())
    assert.same({ { 1, 1 }, { 0, 1 } }, out.mask:totable())
    assert.same({ { 0, 0 }, { 0, 0 } }, out.completion_mask:totable())
    assert.equals(0, #m.calls)
  end)

  it("runs under no_grad", function()
    local m = mock(4, const4)
    local seen
    local forward = m.forward
    function m.forward(self, ids, o)
      seen = E.grad_enabled()
      return forward(self, ids, o)
    end
    E.generate(m, { { 1 } }, { max_new_tokens = 2, seed = 1 })
    assert.is_false(seen)
    assert.is_true(E.grad_enabled())
  end)

  it("names the option, prompt and token in its errors", function()
    local m = mock(7, ctx_logits)
    local function err(p, o) return H.error_of(E.generate, m, p, o) end
    assert.equals("generate: max_new_tokens is required (how many tokens to add at most)", err({ { 1 } }, {}))
    assert.equals("generate: unknown option 'top_q' (the options are max_new_tokens, temperature, top_k, "
      .. "top_p, stop_tokens, pad_id, seed, generator)", err({ { 1 } }, { max_new_tokens = 1, top_q = 1 }))
    assert.equals("generate: temperature must be a finite number >= 0 (0 is greedy), got -1",
      err({ { 1 } }, { max_new_tokens = 1, temperature = -1 }))
    assert.equals("generate: top_p must be in (0, 1] (1 is off), got 0",
      err({ { 1 } }, { max_new_tokens = 1, top_p = 0 }))
    assert.equals("generate: top_k must be an integer >= 0 (0 is off), got 1.5",
      err({ { 1 } }, { max_new_tokens = 1, top_k = 1.5 }))
    assert.equals("generate: max_new_tokens must be an integer >= 0, got -2", err({ { 1 } }, { max_new_tokens = -2 }))
    assert.equals("generate: prompt 2 token 3 must be a token id in [0, 7), got 7",
      err({ { 1 }, { 1, 2, 7 } }, { max_new_tokens = 1 }))
    assert.equals("generate: prompt 1 is empty (a prompt needs at least one token)",
      err({ {} }, { max_new_tokens = 1 }))
    assert.equals("generate: prompts must be a non-empty list of token-id lists, got an empty list",
      err({}, { max_new_tokens = 1 }))
    assert.equals("generate: stop_tokens[2] must be a token id in [0, 7), got -1",
      err({ { 1 } }, { max_new_tokens = 1, stop_tokens = { 1, -1 } }))
    assert.equals("generate: give either seed or generator, not both",
      err({ { 1 } }, { max_new_tokens = 1, seed = 1, generator = E.Generator(1) }))
    assert.equals("generate: model must be a model with forward and new_cache methods, got table",
      H.error_of(E.generate, {}, { { 1 } }, { max_new_tokens = 1 }))
    -- the error points at the caller
    local ok, msg = pcall(function() E.generate(m, { { 1 } }, {}) end)
    assert.is_false(ok)
    assert.truthy(msg:match("generate_spec%.lua:%d+: generate: max_new_tokens"), msg)
  end)
end)

-- ---- the step sampler --------------------------------------------------------

-- ids (0-based), logprobs = reference(logits (B,V), uniforms, opts): the
-- definition E.sample_logits implements (engine/src/sampling.c), in plain
-- Lua with a full sort and running sums: greedy takes the first argmax and
-- its log_softmax; sampling scales by 1/T, keeps the logits >= the k-th
-- largest, then the tokens whose higher-ranked mass (ranked by probability,
-- ties by lower id) is < top_p, and picks the first id in vocabulary order
-- whose running mass exceeds u * Z; a token more than 708 below the max
-- scaled logit has probability 0.
local function reference(logits, uniforms, opts)
  opts = opts or {}
  local T, k, p = opts.temperature or 1, opts.top_k or 0, opts.top_p or 1
  local rows = logits:totable()
  local V = #rows[1]
  local ids, lps = {}, {}
  for b, x in ipairs(rows) do
    if T == 0 then
      local m, a, z = -math.huge, nil, 0
      for i = 1, V do
        if x[i] > m then m, a = x[i], i end
      end
      for i = 1, V do z = z + exp(x[i] - m) end
      ids[b], lps[b] = a - 1, -log(z)
    else
      local s, m = {}, -math.huge
      for i = 1, V do
        s[i] = x[i] / T
        m = math.max(m, s[i])
      end
      local thr = -math.huge
      if k > 0 and k < V then
        local sorted = table.move(s, 1, V, 1, {})
        table.sort(sorted, function(c, d) return c > d end)
        thr = sorted[k]
      end
      local e, z = {}, 0
      for i = 1, V do
        e[i] = (s[i] >= thr and s[i] - m >= -708) and exp(s[i] - m) or 0.0
        z = z + e[i]
      end
      if p < 1 then
        local order = {}
        for i = 1, V do
          if e[i] > 0 then order[#order + 1] = i end
        end
        table.sort(order, function(i, j) return e[i] > e[j] or (e[i] == e[j] and i < j) end)
        local acc, target = 0, p * z
        for _, i in ipairs(order) do
          if acc >= target then e[i] = 0.0 else acc = acc + e[i] end
        end
        z = 0
        for i = 1, V do z = z + e[i] end
      end
      local target, acc, pick = uniforms[b] * z, 0, nil
      for i = 1, V do
        if e[i] ~= 0 then
          pick = i
          acc = acc + e[i]
          if acc > target then break end
        end
      end
      ids[b], lps[b] = pick - 1, (s[pick] - m) - log(z)
    end
  end
  return ids, lps
end

describe("E.sample_logits", function()
  it("gives the worked-out greedy and sampled choices, as the reference does", function()
    local l = E.tensor({ { 0, 1, 2, -1 }, { 5, 5, 1, 0 } })
    local z1, z2 = 1 + exp(1) + exp(2) + exp(-1), 2 * exp(5) + exp(1) + 1
    for _, f in ipairs({ E.sample_logits, reference }) do
      local ids, lps = f(l, nil, { temperature = 0 })
      assert.same({ 2, 0 }, ids) -- ties: the first
      close(lps, { 2 - log(z1), 5 - log(z2) }, 1e-7)
      -- inverse CDF in vocabulary order: row 1 masses .087 .237 .644 .032
      ids, lps = f(l, { 0.3, 0.999 }, {})
      assert.same({ 1, 3 }, ids)
      close(lps, { 1 - log(z1), -log(z2) }, 1e-7)
      assert.same({ 2, 1 }, (f(l, { 0.33, 0.5 }, {})))
      -- top_k = 1 keeps both tied 5s in row 2
      ids, lps = f(l, { 0.9, 0.9 }, { top_k = 1 })
      assert.same({ 2, 1 }, ids)
      close(lps, { 0, -log(2) }, 1e-12)
      -- top_p = .7 keeps ids 2 and 1 of row 1 (mass above id 0: .881)
      ids, lps = f(l, { 0.05, 0.2 }, { top_p = 0.7 })
      assert.same({ 1, 0 }, ids)
      close(lps, { 1 - log(exp(1) + exp(2)), -log(2) }, 1e-7)
      -- four equal masses, top_p = .5: the third has exactly .5 above it, not < .5
      ids, lps = f(E.zeros({ 1, 4 }), { 0.99 }, { top_p = 0.5 })
      assert.same({ 1 }, ids)
      close(lps, { -log(2) }, 1e-15)
      -- u * Z exactly on a running sum: the next id (its mass must exceed u * Z)
      assert.same({ 2 }, (f(E.zeros({ 1, 4 }), { 0.5 }, {})))
    end
  end)

  -- logits with ties and -inf entries, from a fixed LCG
  local function test_logits(B, V, seed, dtype)
    local state, rows = seed, {}
    for b = 1, B do
      rows[b] = {}
      for v = 1, V do
        state = (state * 1103515245 + 12345) % 2147483648
        local r = state / 2147483648
        rows[b][v] = r < 0.05 and -1 / 0 or math.floor(r * 40) / 8 - 2 -- many exact ties
      end
    end
    return E.tensor(rows, dtype), rows
  end

  it("matches the reference: ids exactly, log-probabilities to 1e-12", function()
    local option_sets = {
      { temperature = 0 }, {}, { temperature = 0.7 }, { top_k = 5 }, { top_k = 1 }, { top_k = 40 },
      { top_p = 0.9 }, { top_p = 0.3 }, { top_p = 1e-9 }, { temperature = 1.5, top_k = 12, top_p = 0.8 },
      { temperature = 0.3, top_k = 200, top_p = 0.95 },
    }
    for si, o in ipairs(option_sets) do
      for _, shape in ipairs({ { 6, 37 }, { 3, 3000 } }) do
        for _, dtype in ipairs({ "float32", "float64" }) do
          local l = test_logits(shape[1], shape[2], si * 7 + shape[2], dtype)
          local u = {}
          for b = 1, shape[1] do u[b] = ((b * 0.6180339887) + si * 0.1) % 1 end
          local ids, lps = E.sample_logits(l, u, o)
          local rids, rlps = reference(l, u, o)
          assert.same(rids, ids)
          close(lps, rlps, 1e-12)
        end
      end
    end
  end)

  it("reads strided logits (a transposed view)", function()
    local l = test_logits(40, 5, 3) -- (V=40, B=5) -> transposed (5, 40)
    local t = l:transpose(1, 2)
    assert.is_false(t:is_contiguous())
    local u = { 0.1, 0.3, 0.5, 0.7, 0.9 }
    for _, o in ipairs({ { temperature = 0 }, { top_k = 4, top_p = 0.8 } }) do
      local ids, lps = E.sample_logits(t, u, o)
      local rids, rlps = E.sample_logits(t:contiguous(), u, o)
      assert.same(rids, ids)
      assert.same(rlps, lps)
    end
  end)

  it("names the row and the option in its errors", function()
    local err = H.error_of
    assert.equals("sample_logits: row 2 of logits [2,2] holds a NaN logit",
      err(E.sample_logits, E.tensor({ { 0, 1 }, { 0 / 0, 1 } }), { 0.5, 0.5 }))
    assert.equals("sample_logits: row 1 of logits [1,2] has every logit -inf: no token can be chosen",
      err(E.sample_logits, E.tensor({ { -1 / 0, -1 / 0 } }), { 0.5 }))
    assert.equals("sample_logits: row 1 of logits [1,2] holds a +inf logit",
      err(E.sample_logits, E.tensor({ { 1 / 0, 0 } }), nil, { temperature = 0 }))
    assert.equals("sample_logits: uniforms has 1 entries, logits has 2 rows",
      err(E.sample_logits, E.zeros({ 2, 3 }), { 0.5 }))
    assert.equals("sample_logits: uniform 1 for row 1 is not in [0, 1)", err(E.sample_logits, E.zeros({ 1, 3 }), { 1 }))
    assert.equals("sample_logits: logits must be (B,V), got [3]", err(E.sample_logits, E.zeros({ 3 }), { 0.5 }))
    assert.equals("sample_logits: top_p must be in (0, 1] (1 is off), got 1.5",
      err(E.sample_logits, E.zeros({ 1, 3 }), { 0.5 }, { top_p = 1.5 }))
    assert.equals("sample_logits: temperature must be a finite number >= 0 (0 is greedy), got -1",
      err(E.sample_logits, E.zeros({ 1, 3 }), { 0.5 }, { temperature = -1 }))
    assert.equals("sample_logits: top_k must be an integer >= 0 (0 is off), got -3",
      err(E.sample_logits, E.zeros({ 1, 3 }), { 0.5 }, { top_k = -3 }))
    assert.equals("sample_logits: sampling needs one uniform per row, got none",
      err(E.sample_logits, E.zeros({ 1, 3 })))
  end)
end)

-- ---- with a real model ---------------------------------------------------------


-- ---- with a real model -----------------------------------------------------------

describe("generate with a GPT-2 model", function()
  local V = 61
  local model = E.models.new({
    model_type = "gpt2", vocab_size = V, n_embd = 32, n_layer = 2, n_head = 4, n_positions = 64,
    initializer_range = 0.5, -- peaked logits: no near-ties for float32 noise to flip
  }, { seed = 7 })
  local prompts = { { 5, 9, 2, 44, 3 }, { 17 }, { 8, 8, 30 } }
  local N = 10

  -- the last position's logits (B rows of V) of each row's first n ids, by a
  -- full forward without a cache
  local function full_last_logits(ids, mask, n)
    return E.no_grad(function()
      local rows, mrows = {}, {}
      for b = 1, #ids do
        rows[b] = { table.unpack(ids[b], 1, n) }
        mrows[b] = { table.unpack(mask[b], 1, n) }
      end
      local logits = model:forward(rows, { attention_mask = E.tensor(mrows) })
      return logits:narrow(2, n, 1):reshape({ #ids, V }):totable()
    end)
  end

  -- log-probability of id under softmax(x / T) restricted to the k largest, by hand
  local function lp_topk(x, id, T, k)
    local s = {}
    for v = 1, V do s[v] = x[v] / T end
    local sorted = { table.unpack(s) }
    table.sort(sorted, function(a, b) return a > b end)
    local thr, m, z = sorted[k], sorted[1], 0
    for v = 1, V do
      if s[v] >= thr then z = z + exp(s[v] - m) end
    end
    assert(s[id + 1] >= thr, "token " .. id .. " is outside the top " .. k)
    return s[id + 1] - m - log(z)
  end

  it("KV-cached generation equals recomputing the full forward each step", function()
    for _, o in ipairs({ { temperature = 0 }, { temperature = 0.7, top_k = 10, seed = 3 } }) do
      o.max_new_tokens = N
      local out = E.generate(model, prompts, o)
      local ids, mask, P = out.ids:totable(), out.mask:totable(), out.prompt_length
      assert.same({ 3, P + N }, out.ids:shape())
      for t = 1, N do
        local last = full_last_logits(ids, mask, P + t - 1)
        for b = 1, #prompts do
          local x, id = last[b], ids[b][P + t]
          assert.equals(out.tokens[b][t], id)
          if o.temperature == 0 then
            local best, arg, z = -math.huge, nil, 0
            for v = 1, V do
              if x[v] > best then best, arg = x[v], v - 1 end
            end
            for v = 1, V do z = z + exp(x[v] - best) end
            assert.equals(arg, id)
            close(out.logprobs[b][t], -log(z), 1e-4)
          else
            close(out.logprobs[b][t], lp_topk(x, id, 0.7, 10), 1e-4)
          end
        end
      end
    end
  end)

  it("a left-padded prompt continues as the same prompt alone", function()
    local batch = E.generate(model, prompts, { max_new_tokens = N, temperature = 0 })
    for b = 1, #prompts do
      local alone = E.generate(model, { prompts[b] }, { max_new_tokens = N, temperature = 0 })
      assert.same(alone.tokens[1], batch.tokens[b])
      close(batch.logprobs[b], alone.logprobs[1], 1e-4)
    end
  end)
end)

-- ---- the decode step -----------------------------------------------------------

describe("the decode step", function()
  local base = require("engine.models.causal_lm")
  local V = 61
  local configs = {
    gpt2 = { model_type = "gpt2", vocab_size = V, n_embd = 32, n_layer = 2, n_head = 4, n_positions = 64,
      initializer_range = 0.5 },
    -- grouped-query attention: 4 query heads on 2 kv heads
    llama = { model_type = "llama", vocab_size = V, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
      num_attention_heads = 4, num_key_value_heads = 2, initializer_range = 0.5, tie_word_embeddings = false },
  }
  local prompts = { { 5, 9, 2, 44, 3 }, { 17 }, { 8, 8, 30 } }

  it("attention in plain ops equals the fused op, masked keys, grouped heads and an empty row included", function()
    local B, H, S, D = 3, 4, 9, 8
    local q = E.randn({ B, H, 1, D }, { seed = 1 })
    for _, Hkv in ipairs({ 4, 2, 1 }) do
      -- k and v: the first S of 12 cached positions, as the cache hands them out
      local k = E.randn({ B, Hkv, 12, D }, { seed = 2 }):narrow(3, 1, S)
      local v = E.randn({ B, Hkv, 12, D }, { seed = 3 }):narrow(3, 1, S)
      local masks = {
        E.tensor({ { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, { 0, 0, 1, 1, 0, 1, 1, 1, 1 }, { 0, 0, 0, 0, 0, 0, 0, 0, 0 } }),
      }
      for _, mask in ipairs({ masks[1], false }) do
        for _, scale in ipairs({ 0.3, false }) do
          local got = E.no_grad(base.decode_attention, q, k, v, mask or nil, scale or nil)
          local want = E.attention(q, k, v, { mask = mask or nil, causal = true, scale = scale or nil })
          assert.same({ B, H, 1, D }, got:shape())
          assert.is_true((got - want):abs():max():item() < 1e-6)
          if mask then -- row 3 sees no key: zeros, as the fused op gives
            assert.equals(0, got:narrow(1, 3, 1):abs():max():item())
          end
        end
      end
    end
  end)

  it("KV-cached generation of a grouped-query Llama equals recomputing the full forward each step", function()
    local model = E.models.new(configs.llama, { seed = 7 })
    local N = 8
    local out = E.generate(model, prompts, { max_new_tokens = N, temperature = 0 })
    local ids, mask, P = out.ids:totable(), out.mask:totable(), out.prompt_length
    for t = 1, N do
      local rows, mrows = {}, {}
      for b = 1, #prompts do
        rows[b] = { table.unpack(ids[b], 1, P + t - 1) }
        mrows[b] = { table.unpack(mask[b], 1, P + t - 1) }
      end
      local last = E.no_grad(function()
        return model:forward(rows, { attention_mask = E.tensor(mrows) }):narrow(2, P + t - 1, 1):reshape({ 3, V })
      end):totable()
      for b = 1, #prompts do
        local x, best, arg, z = last[b], -math.huge, nil, 0
        for j = 1, V do
          if x[j] > best then best, arg = x[j], j - 1 end
        end
        for j = 1, V do z = z + exp(x[j] - best) end
        assert.equals(arg, out.tokens[b][t])
        close(out.logprobs[b][t], -log(z), 1e-4)
      end
    end
  end)

  -- Pinned from the implementation before the few-rows matmul kernel and
  -- the plain-ops decode attention (commit c9e0654: BLAS for every product,
  -- the fused attention op in every step, the head applied to every prompt
  -- position), running these same calls: the tokens must not change, the
  -- log-probabilities only by float rounding.
  local pinned = {
    gpt2 = {
      { { 60, 40, 13, 59, 59, 59, 59, 47, 13, 13, 13, 59 }, { 29, 48, 10, 59, 5, 5, 13, 59, 13, 59, 29, 9 },
        { 44, 60, 24, 59, 59, 59, 59, 59, 59, 59, 5, 59 } },
      { { 22, 8, 10, 18, 13, 10, 59, 13, 7, 21, 13, 59 }, { 44, 48, 5, 47, 47, 58, 47, 7, 7, 29, 19, 60 },
        { 54, 30, 57, 41, 50, 32, 1, 24, 24, 29, 8, 54 } },
      { { 3, 59, 59, 59, 59, 5, 59, 59, 59, 51, 24, 21 }, { 29, 8, 10, 59, 5, 48, 48, 8, 54, 24, 1, 59 },
        { 60, 59, 59, 59, 59, 59, 59, 59, 59, 40, 59, 59 } },
    },
    llama = {
      { { 30, 55, 47, 38, 29, 40, 42, 22, 3, 33, 14, 22 }, { 0, 33, 0, 33, 0, 24, 25, 29, 29, 22, 25, 46 },
        { 0, 0, 0, 0, 46, 44, 0, 46, 1, 0, 3, 29 } },
      { { 14, 14, 28, 15, 46, 13, 38, 29, 49, 29, 26, 49 }, { 33, 55, 0, 42, 29, 59, 44, 42, 24, 44, 0, 57 },
        { 34, 8, 15, 8, 40, 48, 8, 0, 53, 59, 11, 51 } },
      { { 6, 33, 51, 15, 2, 2, 15, 49, 0, 51, 34, 2 }, { 0, 0, 33, 0, 9, 26, 8, 31, 47, 59, 15, 24 },
        { 46, 57, 3, 42, 15, 42, 7, 29, 41, 34, 1, 38 } },
    },
  }
  -- the first row's log-probabilities of each setting, pinned the same way
  local pinned_lp = {
    gpt2 = {
      { -0.91147, -0.66440, -1.52137, -1.34077, -0.24698, -1.58793, -0.57995, -0.52431, -1.26395, -1.07900,
        -0.79202, -0.93112 },
      { -5.40850, -2.57961, -1.16901, -6.04533, -1.81623, -4.15243, -0.82139, -0.87202, -0.44681, -0.20486,
        -0.73017, -1.67321 },
      { -2.46029, -1.13786, -0.75128, -0.11213, 0.00000, -0.59107, 0.00000, -2.51522, -1.23406, -3.14058,
        -1.46686, -0.25973 },
    },
    llama = {
      { -0.40070, -0.68796, -0.79746, -1.39290, -0.42966, -0.98856, -0.49466, -1.01332, -0.27258, -1.19864,
        -1.24958, -1.04546 },
      { -5.96051, -2.55950, -7.02156, -1.39233, -2.68762, -2.81858, -0.83967, -0.42371, -0.93111, -1.90258,
        -2.61960, -3.52308 },
      { -3.25861, -0.25062, -2.84935, -0.02914, -0.21349, -0.78696, -0.55616, -3.06206, 0.00000, -0.97551,
        -2.23624, -0.57991 },
    },
  }
  local settings = { { temperature = 0 }, { temperature = 1, seed = 11 },
    { temperature = 0.8, top_k = 20, top_p = 0.9, seed = 12 } }

  for _, name in ipairs({ "gpt2", "llama" }) do
    it(name .. ": gives the tokens the implementation before it gave", function()
      local model = E.models.new(configs[name], { seed = 7 })
      for i, s in ipairs(settings) do
        local o = { max_new_tokens = 12 }
        for k, v in pairs(s) do o[k] = v end
        local out = E.generate(model, prompts, o)
        assert.same(pinned[name][i], out.tokens)
        close(out.logprobs[1], pinned_lp[name][i], 1e-4)
      end
    end)
  end

  it("applies the head to the last prompt position only, as a full forward's last position", function()
    local model = E.models.new(configs.gpt2, { seed = 7 })
    -- the same model behind a forward that is not CausalLM's: generate then
    -- runs it whole and takes the last position
    local proxy = setmetatable({
      forward = function(_, ids, opts) return model:forward(ids, opts) end,
    }, { __index = model })
    for _, o in ipairs({ { temperature = 0 }, { temperature = 0.9, top_k = 30, seed = 4 } }) do
      o.max_new_tokens = 9
      local a, b = E.generate(model, prompts, o), E.generate(proxy, prompts, o)
      assert.same(b.tokens, a.tokens)
      for r = 1, #prompts do close(a.logprobs[r], b.logprobs[r], 1e-5) end
    end
  end)

  it("gives the collector back as it found it, after an error too", function()
    local model = E.models.new(configs.gpt2, { seed = 7 })
    local o = { max_new_tokens = 3, seed = 1 }
    local mode0 = collectgarbage("incremental") -- the runner's own mode, put back at the end
    E.generate(model, prompts, o)
    assert.is_true(collectgarbage("isrunning"))
    assert.equals("incremental", collectgarbage("incremental"))
    -- stopped before: stopped after
    collectgarbage("stop")
    E.generate(model, prompts, o)
    assert.is_false(collectgarbage("isrunning"))
    collectgarbage("restart")
    -- generational before: generational after
    collectgarbage("generational")
    E.generate(model, prompts, o)
    assert.equals("generational", collectgarbage("incremental"))
    -- a model failing in the middle of the loop
    local calls = 0
    local failing = setmetatable({
      hidden = function(self, ids, opts)
        calls = calls + 1
        if calls == 3 then error("model broke") end
        return model.hidden(self, ids, opts)
      end,
    }, { __index = model })
    local ok, err = pcall(E.generate, failing, prompts, o)
    assert.is_false(ok)
    assert.truthy(tostring(err):match("model broke"), err)
    assert.equals(3, calls)
    assert.is_true(collectgarbage("isrunning"))
    assert.equals("incremental", collectgarbage(mode0))
  end)
end)
