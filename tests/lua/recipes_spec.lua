-- recipes_spec.lua — the offline preference recipes' losses against the
-- issue's formulas computed independently with scalar Lua math, their
-- gradients against finite differences (float64), and the invariants:
-- DPO at π = π_ref is log 2 for any β; IPO's gradient vanishes at
-- h̄ = 1/(2β). Also engine.rankings, the plumbing of RRHF's K-wise path:
-- its (B,K) batch against log-probs summed by hand from the model's logits.
local E = require("engine")
local H = require("helper")

local function recipe(name) return dofile(H.repo .. "/recipes/" .. name .. ".lua") end

-- a hand-made batch of B = 3 pairs (sums of token log-probs and lengths)
local Sw, Sl = { -12.5, -30.0, -7.25 }, { -14.0, -26.5, -9.0 }
local Rw, Rl = { -13.0, -29.0, -7.0 }, { -13.5, -27.5, -8.0 }
local Nw, Nl = { 10, 24, 5 }, { 12, 20, 6 }

local function batch(dt)
  dt = dt or "float64"
  return {
    policy_chosen_logps = E.tensor(Sw, dt), policy_rejected_logps = E.tensor(Sl, dt),
    reference_chosen_logps = E.tensor(Rw, dt), reference_rejected_logps = E.tensor(Rl, dt),
    chosen_lengths = E.tensor(Nw, dt), rejected_lengths = E.tensor(Nl, dt),
  }
end

local function logsig(x) return x < 0 and x - math.log(1 + math.exp(x)) or -math.log(1 + math.exp(-x)) end
local function mean(f)
  local s = 0
  for i = 1, 3 do s = s + f(i) end
  return s / 3
end
local function nll()
  return -(Sw[1] + Sw[2] + Sw[3]) / (Nw[1] + Nw[2] + Nw[3])
end
local function h(i) return (Sw[i] - Rw[i]) - (Sl[i] - Rl[i]) end

-- the expected loss of each recipe, straight from the issue's table
local expected = {
  dpo = function(c) return mean(function(i) return -logsig(c.beta * h(i)) end) end,
  ipo = function(c)
    return mean(function(i)
      local hb = (Sw[i] - Rw[i]) / Nw[i] - (Sl[i] - Rl[i]) / Nl[i]
      return (hb - 1 / (2 * c.beta)) ^ 2
    end)
  end,
  rdpo = function(c) return mean(function(i) return -logsig(c.beta * h(i) + c.alpha * (Nw[i] - Nl[i])) end) end,
  simpo = function(c)
    return mean(function(i) return -logsig(c.beta * Sw[i] / Nw[i] - c.beta * Sl[i] / Nl[i] - c.gamma) end)
      + c.sft_weight * nll()
  end,
  cpo = function(c) return mean(function(i) return -logsig(c.beta * (Sw[i] - Sl[i])) end) + c.lambda * nll() end,
  orpo = function(c)
    return mean(function(i)
      local aw, al = Sw[i] / Nw[i], Sl[i] / Nl[i]
      local lo = (aw - al) - (math.log(1 - math.exp(aw)) - math.log(1 - math.exp(al)))
      return -c.lambda * logsig(lo)
    end) + nll()
  end,
  slic = function(c) return mean(function(i) return math.max(0, c.delta - Sw[i] + Sl[i]) end) + c.lambda * nll() end,
  rrhf = function(c) return mean(function(i) return math.max(0, Sl[i] / Nl[i] - Sw[i] / Nw[i]) end) + c.lambda * nll() end,
}

local configs = {
  dpo = { beta = 0.5, label_smoothing = 0, loss_type = "sigmoid" },
  ipo = { beta = 0.2 },
  rdpo = { beta = 0.3, alpha = 0.05 },
  simpo = { beta = 2.0, gamma = 0.5, sft_weight = 0.3 },
  cpo = { beta = 0.1, lambda = 0.7 },
  orpo = { lambda = 0.25 },
  slic = { delta = 3.0, lambda = 0.4 },
  rrhf = { lambda = 0.6 },
}

describe("preference recipe losses", function()
  for name, c in pairs(configs) do
    it(name .. " matches the formula and its gradient", function()
      local r = recipe(name)
      assert.equals(name, r.name)
      assert.is_function(r.train)
      local L, m = r.loss(batch(), c)
      assert.is_true(math.abs(L:item() - expected[name](c)) < 1e-9, name .. ": " .. L:item() .. " vs " .. expected[name](c))
      assert.is_number(m["rewards/accuracies"])
      -- float32 agrees to float32 precision
      assert.is_true(math.abs(r.loss(batch("float32"), c):item() - expected[name](c)) < 1e-4)
      -- d L / d policy log-probs against central differences
      local ok, report = E.gradcheck(function(pw, pl)
        local b = batch()
        b.policy_chosen_logps, b.policy_rejected_logps = pw, pl
        return (r.loss(b, c))
      end, { E.tensor(Sw, "float64"):requires_grad(true), E.tensor(Sl, "float64"):requires_grad(true) })
      assert.is_true(ok, report)
    end)
  end

  it("sft is the token-mean NLL of the masked tokens", function()
    local sft = recipe("sft")
    local lp = { { -1.5, -2.0, -0.25 }, { -3.0, -0.5, -4.0 } }
    local mask = { { 1, 1, 0 }, { 1, 0, 1 } }
    local L = sft.loss({ token_logps = E.tensor(lp, "float64"), mask = E.tensor(mask, "float64") }, {})
    assert.is_true(math.abs(L:item() - (1.5 + 2.0 + 3.0 + 4.0) / 4) < 1e-12)
    local ok, report = E.gradcheck(function(x)
      return (sft.loss({ token_logps = x, mask = E.tensor(mask, "float64") }, {}))
    end, { E.tensor(lp, "float64"):requires_grad(true) })
    assert.is_true(ok, report)
  end)

  it("rrhf's K-wise ranking term sums the hinge over every ranked pair", function()
    local rrhf = recipe("rrhf")
    local A = { { -1.0, -2.0, -0.5, -3.0 }, { -0.2, -0.4, -0.4, -0.1 } }
    local ranks = { { 1, 2, 3, 4 }, { 2, 1, 1, 4 } }
    local want = 0
    for b = 1, 2 do
      for i = 1, 4 do
        for j = 1, 4 do
          if ranks[b][i] < ranks[b][j] then want = want + math.max(0, A[b][j] - A[b][i]) end
        end
      end
    end
    want = want / 2 + 0.5 * 1.25
    local L = rrhf.ranking_loss(E.tensor(A, "float64"), E.tensor(ranks), E.tensor(1.25, "float64"), { lambda = 0.5 })
    assert.is_true(math.abs(L:item() - want) < 1e-12)
    local ok, report = E.gradcheck(function(s)
      return (rrhf.ranking_loss(s, E.tensor(ranks), E.tensor(0.0, "float64"), { lambda = 0.5 }))
    end, { E.tensor(A, "float64"):requires_grad(true) })
    assert.is_true(ok, report)
  end)

  -- a hand-made rankings batch: B = 2 prompts, K = 3 responses, ties in row 2
  local KS = { { -10, -14, -9 }, { -20, -18, -24 } }
  local KN = { { 10, 12, 6 }, { 16, 12, 20 } }
  local KR = { { 2, 1, 3 }, { 1, 1, 3 } }
  local function kbatch(logps)
    return { logps = logps or E.tensor(KS, "float64"), lengths = E.tensor(KN, "float64"), ranks = E.tensor(KR),
      best = E.tensor({ { 0, 1, 0 }, { 1, 0, 0 } }, "float64"), worst = E.tensor({ { 0, 0, 1 }, { 0, 0, 1 } }, "float64") }
  end

  it("rrhf's K-wise loss: the ranking hinge over ranked pairs plus λ times the best responses' NLL", function()
    local rrhf = recipe("rrhf")
    local c = { lambda = 0.3 }
    local want, right, pairs = 0, 0, 0
    for b = 1, 2 do
      for i = 1, 3 do
        for j = 1, 3 do
          if KR[b][i] < KR[b][j] then
            local Ai, Aj = KS[b][i] / KN[b][i], KS[b][j] / KN[b][j]
            want, pairs = want + math.max(0, Aj - Ai) / 2, pairs + 1
            if Ai > Aj then right = right + 1 end
          end
        end
      end
    end
    local nll = (14 + 20) / (12 + 16) -- -(S[1][2] + S[2][1]) / (|y| of the same)
    want = want + c.lambda * nll
    local L, m = rrhf.kwise_loss(kbatch(), c)
    assert.is_true(math.abs(L:item() - want) < 1e-12, L:item() .. " vs " .. want)
    assert.is_true(math.abs(m.nll_loss - nll) < 1e-12)
    assert.equals(right / pairs, m["rewards/accuracies"])
    assert.is_true(math.abs(m["rewards/chosen"] - (-14 / 12 - 20 / 16) / 2) < 1e-12)
    assert.is_true(math.abs(m["logps/rejected"] - (-9 - 24) / 2) < 1e-12)
    local ok, report = E.gradcheck(function(x) return (rrhf.kwise_loss(kbatch(x), c)) end,
      { E.tensor(KS, "float64"):requires_grad(true) })
    assert.is_true(ok, report)
  end)

  it("rrhf's K-wise loss with K = 2 is its pair loss", function()
    local rrhf = recipe("rrhf")
    local c = { lambda = 0.6 }
    local rows, lens, ranks, best, worst = {}, {}, {}, {}, {}
    for i = 1, 3 do
      rows[i], lens[i], ranks[i], best[i], worst[i] = { Sw[i], Sl[i] }, { Nw[i], Nl[i] }, { 1, 2 }, { 1, 0 }, { 0, 1 }
    end
    local kb = { logps = E.tensor(rows, "float64"), lengths = E.tensor(lens, "float64"), ranks = E.tensor(ranks),
      best = E.tensor(best, "float64"), worst = E.tensor(worst, "float64") }
    local Lk, mk = rrhf.kwise_loss(kb, c)
    local Lp, mp = rrhf.loss(batch(), c)
    assert.is_true(math.abs(Lk:item() - Lp:item()) < 1e-12)
    for _, k in ipairs({ "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
      "logps/rejected", "nll_loss" }) do
      assert.is_true(math.abs(mk[k] - mp[k]) < 1e-12, k .. ": " .. mk[k] .. " vs " .. mp[k])
    end
  end)

  it("engine.rankings: a (B,K) batch from one forward, equal to log-probs summed by hand", function()
    local R = require("engine.rankings")
    local fixtures = H.repo .. "/tests/fixtures/recipes/"
    assert.equals("rankings", R.format(fixtures .. "rankings.jsonl"))
    assert.equals("pairs", R.format(fixtures .. "pairs.jsonl"))
    local model = assert(E.models.load(H.repo .. "/examples/default/model"))
    local tok = assert(E.tokenizer.load(H.repo .. "/examples/default/model"))
    local topts = { max_length = 192, max_prompt_length = 64 }
    local pr = R.read(fixtures .. "pairs.jsonl", tok, topts) -- pairs read as K = 2 rankings
    assert.same({ 1, 2 }, pr[1].ranks)
    assert.equals(2, #pr[1].responses)
    local items = R.read(fixtures .. "rankings.jsonl", tok, topts)
    -- the third with ties for the best and for the worst: the first of each is picked
    local tied = { prompt = items[3].prompt, responses = items[3].responses, ranks = { 3, 1, 3, 1 } }
    local rows = { items[1], items[2], tied }
    local b = E.no_grad(R.loss_batch, model, E.data.collate(rows, items.pad_id))
    assert.same({ 3, 4 }, b.logps:shape())
    local S, N, best, worst = b.logps:totable(), b.lengths:totable(), b.best:totable(), b.worst:totable()
    for i, it in ipairs(rows) do
      local lo, hi = math.huge, -math.huge
      for _, r in ipairs(it.ranks) do lo, hi = math.min(lo, r), math.max(hi, r) end
      local first_lo, first_hi
      for k, resp in ipairs(it.responses) do
        local ids = {}
        table.move(it.prompt, 1, #it.prompt, 1, ids)
        table.move(resp, 1, #resp, #ids + 1, ids)
        local lp = E.no_grad(function() return E.log_softmax(model:forward({ ids }), 3) end):totable()[1]
        local want = 0
        for t = #it.prompt + 1, #ids do want = want + lp[t - 1][ids[t] + 1] end
        assert.is_true(math.abs(S[i][k] - want) < 1e-3 * math.max(1, math.abs(want)), S[i][k] .. " vs " .. want)
        assert.equals(#resp, N[i][k])
        if it.ranks[k] == lo and not first_lo then first_lo = k end
        if it.ranks[k] == hi and not first_hi then first_hi = k end
      end
      for k = 1, 4 do
        assert.equals(k == first_lo and 1 or 0, best[i][k])
        assert.equals(k == first_hi and 1 or 0, worst[i][k])
      end
    end
  end)

  it("kto matches its formula, and z0 passes no gradient", function()
    local kto = recipe("kto")
    local S, R, lab = { -5, -6, -7, -4 }, { -5.5, -5, -7.5, -4.25 }, { 1, 0, 1, 0 }
    local KS, KR = { -9, -8, -7, -6 }, { -9.5, -8.2, -7.3, -6.4 }
    local c = { beta = 0.5, desirable_weight = 1.0, undesirable_weight = 2.0 }
    local z0 = 0
    for i = 1, 4 do z0 = z0 + (KS[i] - KR[i]) / 4 end
    z0 = math.max(0, z0)
    local function sig(x) return 1 / (1 + math.exp(-x)) end
    local want = 0
    for i = 1, 4 do
      local r = S[i] - R[i]
      want = want + (lab[i] == 1 and c.desirable_weight * (1 - sig(c.beta * (r - z0)))
        or c.undesirable_weight * (1 - sig(c.beta * (z0 - r)))) / 4
    end
    local function b64(ps, kps)
      return { policy_logps = ps, reference_logps = E.tensor(R, "float64"), labels = E.tensor(lab, "float64"),
        kl_policy_logps = kps, kl_reference_logps = E.tensor(KR, "float64") }
    end
    local ps, kps = E.tensor(S, "float64"):requires_grad(true), E.tensor(KS, "float64"):requires_grad(true)
    local L, m = kto.loss(b64(ps, kps), c)
    assert.is_true(math.abs(L:item() - want) < 1e-12)
    assert.is_true(math.abs(m.kl - z0) < 1e-12)
    L:backward()
    assert.is_nil(kps.grad) -- z0 is detached
    local ok, report = E.gradcheck(function(p) return (kto.loss(b64(p, E.tensor(KS, "float64")), c)) end,
      { E.tensor(S, "float64"):requires_grad(true) })
    assert.is_true(ok, report)
  end)

  it("reward is InstructGPT's K-wise ranking loss, ties skipped", function()
    local reward = recipe("reward")
    local r = { { 1.0, -0.5, 0.25, 2.0 }, { 0.1, 0.1, -1.0, 0.3 } }
    local ranks = { { 1, 3, 2, 4 }, { 1, 1, 3, 2 } }
    local function logsig(x) return x < 0 and x - math.log(1 + math.exp(x)) or -math.log(1 + math.exp(-x)) end
    local want, right, pairs = 0, 0, 0
    for p = 1, 2 do
      local s, n = 0, 0
      for i = 1, 4 do
        for j = 1, 4 do
          if ranks[p][i] < ranks[p][j] then
            s, n = s - logsig(r[p][i] - r[p][j]), n + 1
            right, pairs = right + (r[p][i] > r[p][j] and 1 or 0), pairs + 1
          end
        end
      end
      want = want + s / n / 2
    end
    local L, m = reward.loss({ rewards = E.tensor(r, "float64"), ranks = ranks }, {})
    assert.is_true(math.abs(L:item() - want) < 1e-12)
    assert.equals(right / pairs, m.accuracy)
    local ok, report = E.gradcheck(function(x) return (reward.loss({ rewards = x, ranks = ranks }, {})) end,
      { E.tensor(r, "float64"):requires_grad(true) })
    assert.is_true(ok, report)
  end)

  it("dpo at π = π_ref is log 2 for any β, in all three forms' sigmoid case", function()
    local dpo = recipe("dpo")
    for _, beta in ipairs({ 0.01, 0.1, 1, 10 }) do
      local b = batch()
      b.reference_chosen_logps, b.reference_rejected_logps = b.policy_chosen_logps, b.policy_rejected_logps
      local L = dpo.loss(b, { beta = beta, label_smoothing = 0, loss_type = "sigmoid" })
      assert.is_true(math.abs(L:item() - math.log(2)) < 1e-12)
    end
  end)

  it("dpo's cDPO, hinge and robust forms", function()
    local dpo = recipe("dpo")
    local beta, eps = 0.5, 0.1
    local cdpo = mean(function(i) return -(1 - eps) * logsig(beta * h(i)) - eps * logsig(-beta * h(i)) end)
    local hinge = mean(function(i) return math.max(0, 1 - beta * h(i)) end)
    local robust = mean(function(i) return (-(1 - eps) * logsig(beta * h(i)) + eps * logsig(-beta * h(i))) / (1 - 2 * eps) end)
    assert.is_true(math.abs(dpo.loss(batch(), { beta = beta, label_smoothing = eps, loss_type = "sigmoid" }):item() - cdpo) < 1e-12)
    assert.is_true(math.abs(dpo.loss(batch(), { beta = beta, loss_type = "hinge" }):item() - hinge) < 1e-12)
    assert.is_true(math.abs(dpo.loss(batch(), { beta = beta, label_smoothing = eps, loss_type = "robust" }):item() - robust) < 1e-12)
    assert.has_error(function() dpo.loss(batch(), { beta = beta, loss_type = "nope" }) end,
      "dpo: unknown loss_type 'nope' (sigmoid, hinge or robust)")
  end)

  it("ipo's gradient vanishes at h̄ = 1/(2β)", function()
    local ipo = recipe("ipo")
    local beta = 0.25
    -- choose the policy's chosen sums so that h̄ = 1/(2β) = 2 exactly
    local pw = {}
    for i = 1, 3 do pw[i] = Rw[i] + Nw[i] * (2 + (Sl[i] - Rl[i]) / Nl[i]) end
    local b = batch()
    b.policy_chosen_logps = E.tensor(pw, "float64"):requires_grad(true)
    b.policy_rejected_logps = E.tensor(Sl, "float64"):requires_grad(true)
    local L = ipo.loss(b, { beta = beta })
    assert.is_true(L:item() < 1e-20)
    L:backward()
    for _, g in ipairs(b.policy_chosen_logps.grad:totable()) do assert.is_true(math.abs(g) < 1e-12) end
    for _, g in ipairs(b.policy_rejected_logps.grad:totable()) do assert.is_true(math.abs(g) < 1e-12) end
  end)

  it("orpo's log(1 - e^A) stays accurate near 0 and far below", function()
    local orpo = recipe("orpo")
    for _, a in ipairs({ -1e-5, -0.3, -0.69, -0.7, -5, -40 }) do
      local b = {
        policy_chosen_logps = E.tensor({ a * 4 }, "float64"), policy_rejected_logps = E.tensor({ -2.0 }, "float64"),
        chosen_lengths = E.tensor({ 4 }, "float64"), rejected_lengths = E.tensor({ 4 }, "float64"),
      }
      local _, m = orpo.loss(b, { lambda = 1 })
      local want = (a + 0.5) - (math.log(1 - math.exp(a)) - math.log(1 - math.exp(-0.5)))
      assert.is_true(math.abs(m.log_odds_ratio - want) < 1e-6 * math.max(1, math.abs(want)), a .. ": " .. m.log_odds_ratio .. " vs " .. want)
    end
  end)
end)
