-- refcache_spec.lua — reference log-probs are computed once per (weights,
-- tokenizer, data) and read back bit-identical; other weights or other
-- data miss the cache.
local E = require("engine")
local H = require("helper")
local refcache = require("engine.refcache")

local function tiny(seed)
  return E.models.new({ model_type = "gpt2", vocab_size = 16, n_embd = 8, n_layer = 1, n_head = 2,
    n_positions = 8, n_ctx = 8, layer_norm_epsilon = 1e-5, initializer_range = 0.02 }, { seed = seed })
end

describe("refcache", function()
  it("computes once, then reads the same bits back", function()
    local dir = H.tmpdir()
    local model = tiny(1)
    local calls = 0
    local function compute()
      calls = calls + 1
      return { lp = model:logprobs({ { 1, 2, 3, 4 } }, { { 2, 3, 4, -1 } }) }
    end
    local parts = { "tok", refcache.ids_key({ { 1, 2, 3, 4 } }) }
    local a, hit1 = refcache.get { dir = dir, model = model, parts = parts, compute = compute }
    local b, hit2 = refcache.get { dir = dir, model = model, parts = parts, compute = compute }
    assert.is_false(hit1)
    assert.is_true(hit2)
    assert.equals(1, calls)
    assert.equals(E.hash(a.lp), E.hash(b.lp))
    -- other weights, or other data: a miss
    local _, hit3 = refcache.get { dir = dir, model = tiny(2), parts = parts, compute = compute }
    local _, hit4 = refcache.get { dir = dir, model = model, parts = { "tok", refcache.ids_key({ { 1, 2 } }) }, compute = compute }
    assert.is_false(hit3)
    assert.is_false(hit4)
    assert.equals(3, calls)
  end)

  it("digests strings with FNV-1a 64", function()
    -- reference values of the published FNV-1a 64-bit test vectors
    assert.equals("cbf29ce484222325", refcache.digest(""))
    assert.equals("af63dc4c8601ec8c", refcache.digest("a"))
    assert.equals("85944171f73967e8", refcache.digest("foobar"))
  end)
end)
