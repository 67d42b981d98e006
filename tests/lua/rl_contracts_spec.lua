-- rl_contracts_spec.lua — the RL contracts of issue 6 (recipes/ppo.lua's
-- kl_rewards, gae, whiten, loss and adaptive_kl; grpo.advantages;
-- rloo.advantages; fine_grained.dense_rewards) on hand-made float32 tensors
-- against tests/fixtures/rl/contracts.json, which
-- scripts/make_rl_fixtures.py computes independently in float64 with plain
-- loops (the PPO loss's gradients cross-checked there with torch autograd).
-- The fixture has right-padded rows of different lengths, a row with one real
-- token, garbage in the padding where the contract says it is ignored, ratios
-- and value changes on both sides of the clip ranges, and all-equal groups.
-- A few invariants are worked out here by hand: kl_coef 0 leaves only the
-- score, GAE with γ = λ = 1 and V = 0 is the reward-to-go, whitened tokens
-- have mean 0 and unbiased variance 1. fg.token_index is tested elsewhere.
local E = require("engine")
local H = require("helper")
local json = require("engine.json")

local TOL = 1e-5 -- float32 engine against the float64 reference

local loaded = {}
local function recipe(name)
  if not loaded[name] then loaded[name] = dofile(H.repo .. "/recipes/" .. name .. ".lua") end
  return loaded[name]
end

local FX
local function fixture()
  if not FX then
    FX = assert(json.read(H.repo .. "/tests/fixtures/rl/contracts.json"))
  end
  return FX
end

local function T(x) return E.tensor(x) end

-- the largest |v| in a nested table
local function scale_of(t)
  if type(t) == "number" then return math.abs(t) end
  local s = 0
  for i = 1, #t do s = math.max(s, scale_of(t[i])) end
  return s
end

-- every element of got within TOL of want, relative to the element or to
-- the size of the quantity (its largest |expected| element), whichever is
-- larger: |got - want| <= TOL * max(|want|, scale)
local function check(got, want, what, scale)
  scale = math.max(scale or scale_of(want), 1e-6)
  local function walk(g, w, path)
    if type(w) == "number" then
      assert(type(g) == "number", what .. path .. ": got " .. tostring(g) .. ", expected a number")
      local bound = TOL * math.max(math.abs(w), scale)
      if not (math.abs(g - w) <= bound) then
        error(string.format("%s%s: got %.9g, expected %.9g (|diff| %.3g > %.3g)",
          what, path, g, w, math.abs(g - w), bound), 0)
      end
      return
    end
    assert(type(g) == "table", what .. path .. ": got " .. tostring(g) .. ", expected a table")
    if #g ~= #w then error(string.format("%s%s: got %d entries, expected %d", what, path, #g, #w), 0) end
    for i = 1, #w do walk(g[i], w[i], path .. "[" .. i .. "]") end
  end
  walk(got, want, "")
end

local function shape_of(x)
  local s = x:shape()
  return table.concat(s, "x")
end

describe("ppo.kl_rewards", function()
  it("matches the fixture (padded rows, a one-token row, garbage in the padding)", function()
    local ppo = recipe("ppo")
    for i, c in ipairs(fixture().kl_rewards) do
      local r = ppo.kl_rewards(T(c.scores), T(c.logprobs), T(c.ref_logprobs), T(c.mask), c.kl_coef)
      assert.equals("3x5", shape_of(r))
      check(r:totable(), c.rewards, "kl_rewards case " .. i .. " (kl_coef " .. c.kl_coef .. ")")
    end
  end)

  it("with kl_coef 0 puts exactly the score on the last real token and 0 elsewhere", function()
    local ppo = recipe("ppo")
    local scores = { 1.5, -2.0, 0.25 }
    local lengths = { 4, 2, 1 }
    local mask, lp, ref = {}, {}, {}
    for b = 1, 3 do
      mask[b], lp[b], ref[b] = {}, {}, {}
      for t = 1, 4 do
        mask[b][t] = t <= lengths[b] and 1 or 0
        lp[b][t] = -0.25 * t - b
        ref[b][t] = 0.5 * t - 2 * b
      end
    end
    local r = ppo.kl_rewards(T(scores), T(lp), T(ref), T(mask), 0):totable()
    for b = 1, 3 do
      for t = 1, 4 do
        local want = t == lengths[b] and scores[b] or 0
        assert.is_true(r[b][t] == want, ("row %d token %d: got %s, expected %s"):format(b, t, r[b][t], want))
      end
    end
  end)
end)

describe("ppo.gae", function()
  it("matches the fixture on rows of different lengths", function()
    local ppo = recipe("ppo")
    for _, c in ipairs(fixture().gae) do
      local A, R = ppo.gae(T(c.rewards), T(c.values), T(c.mask), c.gamma, c.lam)
      assert.equals("4x7", shape_of(A))
      assert.equals("4x7", shape_of(R))
      check(A:totable(), c.advantages, "gae (" .. c.name .. ") advantages")
      check(R:totable(), c.returns, "gae (" .. c.name .. ") returns")
    end
  end)

  it("with gamma = lam = 1 and values 0 gives the reward-to-go sums", function()
    local ppo = recipe("ppo")
    local rewards = { { 0.5, -1.0, 0.25, 2.0, -0.75 }, { 1.0, 0.5, -0.5, 0, 0 }, { 3.0, 0, 0, 0, 0 } }
    local lengths = { 5, 3, 1 }
    local mask, zeros, want = {}, {}, {}
    for b = 1, 3 do
      mask[b], zeros[b], want[b] = {}, {}, {}
      local togo = 0
      for t = 5, 1, -1 do
        mask[b][t] = t <= lengths[b] and 1 or 0
        zeros[b][t] = 0
        if t <= lengths[b] then togo = togo + rewards[b][t] end
        want[b][t] = t <= lengths[b] and togo or 0
      end
    end
    local A, R = ppo.gae(T(rewards), T(zeros), T(mask), 1, 1)
    check(A:totable(), want, "reward-to-go advantages")
    check(R:totable(), want, "reward-to-go returns")
  end)
end)

describe("ppo.whiten", function()
  it("matches the fixture (masked mean, unbiased variance, 0 on padding)", function()
    local ppo = recipe("ppo")
    for i, c in ipairs(fixture().whiten) do
      local w = ppo.whiten(T(c.x), T(c.mask))
      check(w:totable(), c.out, "whiten case " .. i)
    end
  end)

  it("leaves the real tokens with mean ~0 and unbiased variance ~1", function()
    local ppo = recipe("ppo")
    local lengths = { 6, 3, 1, 5 }
    local mask = {}
    for b = 1, 4 do
      mask[b] = {}
      for t = 1, 6 do mask[b][t] = t <= lengths[b] and 1 or 0 end
    end
    local x = E.randn({ 4, 6 }, { seed = 3 }) * 3 + 2
    local w = ppo.whiten(x, T(mask)):totable()
    local n, s = 0, 0
    for b = 1, 4 do
      for t = 1, 6 do
        if mask[b][t] == 1 then
          n, s = n + 1, s + w[b][t]
        else
          assert.is_true(w[b][t] == 0, ("padding at row %d token %d is %s"):format(b, t, w[b][t]))
        end
      end
    end
    local m, ss = s / n, 0
    for b = 1, 4 do
      for t = 1, lengths[b] do ss = ss + (w[b][t] - m) ^ 2 end
    end
    assert.is_true(math.abs(m) < 1e-5, "mean " .. m)
    assert.is_true(math.abs(ss / (n - 1) - 1) < 1e-5, "unbiased variance " .. ss / (n - 1))
  end)
end)

describe("ppo.loss", function()
  local function batch_of(c)
    local b = {}
    for k, v in pairs(c.batch) do b[k] = T(v) end
    b.logprobs:requires_grad(true)
    b.values:requires_grad(true)
    return b
  end

  it("matches the fixture's loss, metrics and gradients (both clip sides, padding ignored)", function()
    local ppo = recipe("ppo")
    for i, c in ipairs(fixture().loss) do
      local what = ("loss case %d (cliprange %.3g, cliprange_value %.3g, vf_coef %.3g)"):format(
        i, c.cfg.cliprange, c.cfg.cliprange_value, c.cfg.vf_coef)
      local b = batch_of(c)
      local L, m = ppo.loss(b, c.cfg)
      assert.equals(1, L:numel())
      -- the scalars are sums of terms of size ~0.1 to 1: that is their scale
      check(L:item(), c.loss, what .. " loss", 0.1)
      for _, k in ipairs({ "pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approxkl" }) do
        assert(type(m[k]) == "number", what .. ": metrics." .. k .. " is " .. tostring(m[k]) .. ", expected a number")
        check(m[k], c.metrics[k], what .. " metrics." .. k, 0.1)
      end
      L:backward()
      assert(b.logprobs.grad, what .. ": no gradient reached logprobs")
      assert(b.values.grad, what .. ": no gradient reached values")
      check(b.logprobs.grad:totable(), c.grad_logprobs, what .. " d loss/d logprobs")
      check(b.values.grad:totable(), c.grad_values, what .. " d loss/d values")
    end
  end)
end)

describe("ppo.adaptive_kl", function()
  it("follows the fixture's sequence of updates; without a target it is fixed", function()
    local ppo = recipe("ppo")
    for i, c in ipairs(fixture().adaptive_kl) do
      local ctl = ppo.adaptive_kl({ init = c.init, target = c.target, horizon = c.horizon })
      assert.equals(c.init, ctl.value)
      for k, u in ipairs(c.updates) do
        ctl:update(u[1], u[2])
        local want = c.values[k]
        if c.target == nil then
          assert.equals(want, ctl.value)
        else
          assert(math.abs(ctl.value - want) <= 1e-12 * want, ("adaptive_kl case %d update %d (kl %g, n_steps %d): got %.17g, expected %.17g"):format(i, k, u[1], u[2], ctl.value, want))
        end
      end
    end
  end)
end)

describe("group advantages", function()
  it("grpo: (r - group mean) / (unbiased group std + 1e-4)", function()
    local grpo = recipe("grpo")
    for i, c in ipairs(fixture().grpo) do
      local A = grpo.advantages(T(c.rewards))
      assert.equals(#c.rewards .. "x" .. #c.rewards[1], shape_of(A))
      check(A:totable(), c.advantages, "grpo case " .. i)
    end
  end)

  it("rloo: r minus the mean of the other G-1 samples", function()
    local rloo = recipe("rloo")
    for i, c in ipairs(fixture().rloo) do
      local A = rloo.advantages(T(c.rewards))
      assert.equals(#c.rewards .. "x" .. #c.rewards[1], shape_of(A))
      check(A:totable(), c.advantages, "rloo case " .. i)
    end
  end)
end)

describe("fine_grained.dense_rewards", function()
  it("puts each segment's weighted score on its last token", function()
    local fg = recipe("fine_grained")
    for i, c in ipairs(fixture().dense_rewards) do
      local r = fg.dense_rewards(c.segments, c.weights, c.T)
      assert.equals(#c.segments .. "x" .. c.T, shape_of(r))
      check(r:totable(), c.rewards, "dense_rewards case " .. i)
    end
  end)
end)
