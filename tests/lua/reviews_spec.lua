-- reviews_spec.lua — the bundled default task (lua/engine/tasks/reviews.lua):
-- the SplitMix64 generator against its reference outputs, the review
-- generator (a pinned first example, determinism, the mix of sentiments,
-- banned words and off-topic sentences, sizes), the judge on hand-written
-- sentences with hand-computed values (negation, intensifiers, sentence
-- offsets, aspects, the score formula, ranks with ties), the judge's
-- agreement with the generator's own labels, and examples/default/make_corpus.lua
-- run as a user would, under lua5.4 and under the engine runner.
local H = require("helper")

-- the module is pure Lua: load it from the source tree, without the engine
local root = debug.getinfo(1, "S").source:match("^@(.-)tests/lua/[^/]*$") or ""
if root == "" then root = "./" end
package.path = root .. "lua/?.lua;" .. package.path
local R = require("engine.tasks.reviews")
local J = R.judge
local err = H.error_of

local function close(a, b) return math.abs(a - b) <= 1e-12 end

describe("reviews.rng (SplitMix64)", function()
  it("gives the reference outputs", function()
    -- from the reference C code (Vigna's splitmix64.c) run with x = 0 and
    -- x = 1234567; Lua shows the 64-bit words as signed integers
    local r = R.rng(0)
    assert.equals(string.format("%x", -0x1DDF57C684E23251), string.format("%x", r:next64()))
    assert.equals(0x6E789E6AA1B965F4, r:next64())
    assert.equals(0x06C45D188009454F, r:next64())
    r = R.rng(1234567)
    assert.equals(6457827717110365317, r:next64())
    assert.equals(3203168211198807973, r:next64())
    assert.equals(-8629252141511181193, r:next64())
  end)

  it("draws integers in [1, n] and floats in [0, 1), all of them", function()
    local r = R.rng(5)
    local seen = {}
    for _ = 1, 2000 do
      local k = r:int(7)
      assert.is_true(math.type(k) == "integer" and k >= 1 and k <= 7)
      seen[k] = true
      local u = r:uniform()
      assert.is_true(u >= 0 and u < 1)
    end
    for k = 1, 7 do assert.is_true(seen[k]) end
    local s = r:shuffled({ 1, 2, 3, 4, 5 })
    table.sort(s)
    assert.same({ 1, 2, 3, 4, 5 }, s)
  end)

  it("rejects a seed that is not an integer", function()
    assert.equals("reviews.rng: seed must be an integer, got 1.5", err(R.rng, 1.5))
    assert.equals("reviews.rng: seed must be an integer, got x", err(R.rng, "x"))
    assert.equals(R.rng(3):next64(), R.rng(3.0):next64())
  end)
end)

describe("reviews.generate", function()
  it("pins the first reviews of seed 1", function()
    local r = R.generate(2, { seed = 1 })
    assert.equals("Luna phone review. Rating: 3/5.", r[1].prompt)
    assert.equals(" The charger is handy. I regret buying this phone. The store was busy on Sunday.", r[1].completion)
    assert.equals("Luna phone", r[1].item)
    assert.equals("phone", r[1].category)
    assert.equals("mixed", r[1].sentiment)
    assert.equals(3, r[1].rating)
    assert.equals(1, r[1].off_topic)
    assert.equals(0, r[1].banned)
    assert.same({ text = "The store was busy on Sunday.", kind = "off", on_topic = -1, clean = 1 }, r[1].sentences[3])
    assert.equals("Pico backpack review. Rating: 4/5.", r[2].prompt)
    assert.equals(" The seams are nice. This backpack is easy to use. I love the straps. The size is not fragile.",
      r[2].completion)
    assert.equals("positive", r[2].sentiment)
    local r42 = R.generate(1, { seed = 42 })[1]
    assert.equals("Review of the Luna toaster:", r42.prompt)
    assert.equals(" I use this toaster every day. This toaster is worth the money. I love the lever.", r42.completion)
  end)

  it("is deterministic for a seed, and a longer run extends a shorter one", function()
    assert.equals(R.corpus_text(300, 9), R.corpus_text(300, 9))
    assert.are_not.equals(R.corpus_text(300, 9), R.corpus_text(300, 10))
    local a, b = R.generate(20, { seed = 3 }), R.generate(50, { seed = 3 })
    assert.equals(20, #a)
    assert.equals(50, #b)
    for i = 1, 20 do assert.same(a[i], b[i]) end
    assert.same({}, R.generate(0))
    assert.same(R.generate(5, { seed = 1 }), R.generate(5)) -- seed 1 is the default
  end)

  it("writes the corpus as prompt .. completion lines", function()
    local recs = R.generate(40, { seed = 4 })
    local lines = {}
    for i, r in ipairs(recs) do lines[i] = r.prompt .. r.completion .. "\n" end
    assert.equals(table.concat(lines), R.corpus_text(40, 4))
    assert.equals(R.corpus_text(10, 1), R.corpus_text(10))
  end)

  describe("over 3000 reviews", function()
    local N = 3000
    local recs = R.generate(N, { seed = 7 })
    local function share(pred)
      local k = 0
      for _, r in ipairs(recs) do if pred(r) then k = k + 1 end end
      return k / N
    end

    -- the bounds are the expected share +- 5 standard deviations (sd <= 0.0092 at N = 3000)
    it("mixes sentiments, banned words and off-topic sentences as configured", function()
      local pos = share(function(r) return r.sentiment == "positive" end)
      local neg = share(function(r) return r.sentiment == "negative" end)
      local mix = share(function(r) return r.sentiment == "mixed" end)
      assert.is_true(math.abs(pos - 0.45) < 0.046, "positive share " .. pos)
      assert.is_true(math.abs(neg - 0.40) < 0.045, "negative share " .. neg)
      assert.is_true(math.abs(mix - 0.15) < 0.033, "mixed share " .. mix)
      assert.equals(1, pos + neg + mix)
      -- a banned word: 0.45 * 0.06 + 0.40 * 0.25 + 0.15 * 0.12 * (the 60% of mixed reviews with a
      -- plain sentiment sentence) = 0.1378
      local banned = share(function(r) return r.banned > 0 end)
      assert.is_true(math.abs(banned - 0.1378) < 0.032, "banned share " .. banned)
      -- negative reviews carry banned words about 4 times as often as positive ones
      local bn = share(function(r) return r.banned > 0 and r.sentiment == "negative" end) / neg
      local bp = share(function(r) return r.banned > 0 and r.sentiment == "positive" end) / pos
      assert.is_true(bn > 2.5 * bp, bn .. " vs " .. bp)
      -- off-topic: P = 0.2 times the share of plans with a sentence to spare (not the
      -- 2-sentence mixed {pos, neg} ones, nor 2-sentence ones holding a banned word):
      -- about 0.2 * (1 - 0.15 * 0.6 * 0.3 - 0.3 * (0.45 * 0.06 + 0.40 * 0.25)) = 0.187
      local off = share(function(r) return r.off_topic > 0 end)
      assert.is_true(math.abs(off - 0.187) < 0.036, "off-topic share " .. off)
      for _, r in ipairs(recs) do
        assert.is_true(r.banned <= 1 and r.off_topic <= 1)
        if r.sentiment == "positive" then assert.is_true(r.rating >= 4) end
        if r.sentiment == "negative" then assert.is_true(r.rating <= 2) end
        if r.sentiment == "mixed" then assert.equals(3, r.rating) end
      end
    end)

    it("keeps completions short, 2-4 sentences, with a few hundred distinct words", function()
      local bytes, most, vocab, nvocab = 0, 0, {}, 0
      local lengths = {}
      for _, r in ipairs(recs) do
        assert.equals(" ", r.completion:sub(1, 1))
        assert.is_true(#r.sentences >= 2 and #r.sentences <= 4)
        lengths[#r.sentences] = (lengths[#r.sentences] or 0) + 1
        bytes = bytes + #r.completion
        most = math.max(most, #r.completion)
        for w in (r.prompt .. r.completion):lower():gmatch("[%a']+") do
          if not vocab[w] then vocab[w], nvocab = true, nvocab + 1 end
        end
        assert.is_nil((r.prompt .. r.completion):find("[^%w%s%.,:/']"), r.completion)
      end
      assert.is_true(bytes / N < 200 and bytes / N > 50, "mean completion bytes " .. bytes / N)
      assert.is_true(most < 250, "longest completion " .. most)
      assert.is_true(nvocab >= 200 and nvocab <= 400, nvocab .. " distinct words")
      assert.is_true(lengths[2] > 0 and lengths[3] > lengths[2] and lengths[4] > 0)
    end)

    it("agrees with the judge, sentence by sentence", function()
      for _, r in ipairs(recs) do
        local sents = J.sentences(r.completion)
        assert.equals(#r.sentences, #sents, r.completion)
        for i, s in ipairs(sents) do
          assert.equals(r.sentences[i].text, s.text)
          local a = J.aspects(r.prompt, s.text)
          assert.equals(r.sentences[i].on_topic, a.on_topic, r.prompt .. " / " .. s.text)
          assert.equals(r.sentences[i].clean, a.clean, s.text)
        end
        local s = J.sentiment(r.completion)
        if r.sentiment == "positive" then assert.is_true(s > 0, r.completion) end
        if r.sentiment == "negative" then assert.is_true(s < 0, r.completion) end
      end
    end)

    it("scores positive reviews above mixed ones above negative ones on average", function()
      local sum, count = {}, {}
      for _, r in ipairs(recs) do
        sum[r.sentiment] = (sum[r.sentiment] or 0) + J.score(r.prompt, r.completion)
        count[r.sentiment] = (count[r.sentiment] or 0) + 1
      end
      local pos, mix, neg = sum.positive / count.positive, sum.mixed / count.mixed, sum.negative / count.negative
      assert.is_true(pos > mix + 0.3 and mix > neg + 0.3, pos .. " " .. mix .. " " .. neg)
    end)
  end)

  it("takes its mix from the options", function()
    for _, r in ipairs(R.generate(300, { seed = 2, off_topic = 0, banned = 0 })) do
      assert.equals(0, r.off_topic)
      assert.equals(0, r.banned)
    end
    for _, r in ipairs(R.generate(100, { seed = 2, classes = { 0, 1, 0 }, banned = 1, prompt_with_rating = 1 })) do
      assert.equals("negative", r.sentiment)
      assert.equals(1, r.banned)
      assert.equals(-1, J.aspects(r.prompt, r.completion).clean)
      assert.matches("^.+ review%. Rating: [12]/5%.$", r.prompt)
    end
    for _, r in ipairs(R.generate(100, { seed = 2, lengths = { 0, 0, 1 }, prompt_with_rating = 0 })) do
      assert.equals(4, #r.sentences)
      assert.matches("^Review of the .+:$", r.prompt)
    end
  end)

  it("rejects bad arguments, naming them", function()
    assert.equals("reviews.generate: n must be a non-negative integer, got -1", err(R.generate, -1))
    assert.equals("reviews.generate: n must be a non-negative integer, got 2.5", err(R.generate, 2.5))
    assert.equals("reviews.generate: seed must be an integer, got 1.5", err(R.generate, 2, { seed = 1.5 }))
    assert.equals("reviews.generate: unknown option sed (valid: banned, classes, lengths, off_topic, opener, "
      .. "prompt_with_rating, seed)", err(R.generate, 2, { sed = 1 }))
    assert.equals("reviews.generate: option off_topic must be a probability in [0, 1], got 2",
      err(R.generate, 2, { off_topic = 2 }))
    assert.equals("reviews.generate: option banned.mixed must be a probability in [0, 1], got nil",
      err(R.generate, 2, { banned = { positive = 0, negative = 0 } }))
    assert.equals("reviews.generate: option classes must be 3 non-negative weights, not all zero",
      err(R.generate, 2, { classes = { 0, 0, 0 } }))
    assert.equals("reviews.generate: options must be a table, got string", err(R.generate, 2, "x"))
    assert.equals("reviews.corpus_text: n must be a non-negative integer, got nil", err(R.corpus_text))
    -- the position is the caller's
    for _, f in ipairs({
      function() R.generate(2, { seed = 1.5 }) end, function() R.generate(2, { off_topic = 2 }) end,
      function() R.generate(2, { sed = 1 }) end, function() R.generate(-1) end, function() R.rng("x") end,
      function() J.sentiment(nil) end, function() J.rank("p", { 1 }) end,
    }) do
      local _, msg = pcall(f)
      assert.matches("^[^:]*reviews_spec%.lua:%d+: ", msg)
    end
  end)
end)

describe("reviews.judge", function()
  local P = "Review of the Nova blender:"

  it("scores sentiment from the lexicon, with negation and intensifiers", function()
    -- S / (2 + |S|), S the lexicon sum
    assert.equals(1 / 3, J.sentiment("The motor is good."))
    assert.equals(-0.2, J.sentiment("The motor is not good."))      -- S = -0.5
    assert.equals(0.2, J.sentiment("The jar is not bad."))          -- S = 0.5
    assert.equals(-0.2, J.sentiment("I don't like it."))            -- n't negates
    assert.equals(-0.2, J.sentiment("I would never recommend this blender."))
    assert.equals(1.5 / 3.5, J.sentiment("The jar is very good."))  -- S = 1.5
    assert.equals(-0.75 / 2.75, J.sentiment("The lid is not very good."))
    assert.equals(0, J.sentiment("The plot is good but the ending is bad."))
    assert.equals(1 / 3, J.sentiment("Not now, the jar is good."))  -- a comma ends the negation
    assert.equals(-1 / 3, J.sentiment("The jar is not at all great.")) -- 2 words between: still negated
    assert.equals(-1 / 3, J.sentiment("No one was ever bad.")) -- 3 words between: not negated
    assert.equals(0.5, J.sentiment("GREAT!!!"))
    assert.equals(-4 / 6, J.sentiment("The motor is terrible and the jar is awful."))
    assert.equals(1 / 3, J.sentiment("I hate to admit it, but the motor is really great.")) -- -2 + 3
    assert.equals(1 / 3, J.sentiment("The jar is not garbage at all."))  -- -0.5 * -2
    assert.equals(0, J.sentiment(""))
    assert.equals(0, J.sentiment("It rained all day."))
    assert.equals(3, J.lexicon_sum("Good. Great."))
    assert.equals("reviews.judge.sentiment: text must be a string, got nil", err(J.sentiment, nil))
  end)

  it("splits sentences with 1-based inclusive byte offsets", function()
    local t = "The jar is good. The motor is loud!  It rained"
    assert.same({
      { first = 1, last = 16, text = "The jar is good." },
      { first = 18, last = 35, text = "The motor is loud!" },
      { first = 38, last = 46, text = "It rained" },
    }, J.sentences(t))
    t = " Rated 4.5 stars... Wow!!\nNext line \n"
    assert.same({
      { first = 2, last = 19, text = "Rated 4.5 stars..." },
      { first = 21, last = 25, text = "Wow!!" },
      { first = 27, last = 35, text = "Next line" },
    }, J.sentences(t))
    assert.same({ { first = 1, last = 5, text = "Fine." } }, J.sentences("Fine.  "))
    assert.same({ { first = 1, last = 4, text = "Good" }, { first = 7, last = 10, text = "Good" } },
      J.sentences("Good \nGood"))
    assert.same({}, J.sentences(""))
    assert.same({}, J.sentences(" \n\t "))
    assert.equals("reviews.judge.sentences: text must be a string, got number", err(J.sentences, 3))
  end)

  it("judges two aspects per sentence: on-topic and clean", function()
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(P, "The motor is loud."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(P, "It rained all day."))
    assert.same({ on_topic = 1, clean = -1 }, J.aspects(P, "This blender is garbage."))
    assert.same({ on_topic = -1, clean = -1 }, J.aspects(P, "My cat is STUPID."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(P, "I also need a new toaster."))
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(P, "The Nova blender is fine."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(P, "The garbageman came.")) -- whole words only
    assert.same({ on_topic = -1, clean = -1 }, J.aspects(P, "He hates rain."))
    -- a film: its topic words, and its title as a phrase
    local F = "Paper Moon review. Rating: 4/5."
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(F, "Paper Moon made me smile."))
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(F, "The actors were dull."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(F, "The motor is loud."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(F, "The paper is thin."))
    -- an item the world does not know: the prompt's own words
    local U = "Review of the Zorb gizmo:"
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(U, "The gizmo is great."))
    assert.same({ on_topic = 1, clean = 1 }, J.aspects(U, "Zorb!"))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(U, "The motor is great."))
    assert.same({ on_topic = -1, clean = 1 }, J.aspects(U, "Review of the item."))
    assert.equals("reviews.judge.aspects: sentence must be a string, got nil", err(J.aspects, P, nil))
  end)

  it("finds the item a prompt names", function()
    assert.same({ name = "Nova blender", category = "blender", kind = "product" }, R.item_of(P))
    assert.same({ name = "Paper Moon", category = "film", kind = "film" }, R.item_of("Review of the film paper moon:"))
    assert.same({ name = "Apex coffee maker", category = "coffee maker", kind = "product" },
      R.item_of("Apex coffee maker review. Rating: 2/5."))
    assert.is_nil(R.item_of("Review of the Zorb gizmo:"))
  end)

  it("counts words", function()
    assert.equals(5, J.length("The motor is not bad."))
    assert.equals(4, J.length("I don't like it."))
    assert.equals(3, J.length("  4/5 stars -- ok "))
    assert.equals(0, J.length(""))
  end)

  it("combines the parts into one score, by the documented formula", function()
    -- sentiment 2/4, topic (1 - 1)/2, clean 1, 8 words
    local s, parts = J.score(P, " The motor is great. It rained all day.")
    assert.equals(1.0, s)
    assert.same({ sentiment = 0.5, topic = 0, clean = 1, length = 8, length_penalty = 0, sentences = 2 }, parts)
    -- sentiment -2/4, topic 1, clean -1
    assert.equals(-0.5, (J.score(P, " This blender is garbage.")))
    -- no sentences: topic -1, clean 1
    s, parts = J.score(P, "")
    assert.equals(0, s)
    assert.equals(-1, parts.topic)
    -- 48 words: 0.02 per word past 40
    s, parts = J.score(P, string.rep(" The jar is okay.", 12))
    assert.is_true(close(0.16, parts.length_penalty))
    assert.is_true(close(1 - 0.16, s))
    -- an off-topic positive sentence raises sentiment but costs topic
    local on = J.score(P, " The motor is good. The jar is okay.")
    local off = J.score(P, " The motor is good. The weather was lovely today.")
    assert.is_true(close(0.5 + 0.5 + 1 / 3, on))
    assert.is_true(close(0.5 + 0 + 0.5, off))
    assert.equals("reviews.judge.score: completion must be a string, got nil", err(J.score, P, nil))
  end)

  it("is monotonic in sentiment when the rest is equal", function()
    local ladder = { " The motor is terrible.", " The motor is bad.", " The motor is not good.",
      " The motor is okay.", " The motor is not bad.", " The motor is good.", " The motor is great.",
      " The motor is very great." }
    local last = -math.huge
    for _, c in ipairs(ladder) do
      local s, parts = J.score(P, c)
      assert.is_true(s > last, c)
      assert.is_true(close(1, s - parts.sentiment), c) -- topic 1, clean 1, no length cost
      last = s
    end
  end)

  it("ranks completions, 1 for the best, ties sharing a rank", function()
    local ranks, scores = J.rank(P, {
      " The motor is great.",  -- 0.5 + 0.5 + 0.5
      " The motor is bad.",    -- -1/3 + 1
      " The motor is great.",  -- the same text
      " It rained.",           -- 0 - 0.5 + 0.5
      " The jar is great.",    -- another text with the same score
    })
    assert.same({ 1, 4, 1, 5, 1 }, ranks)
    assert.equals(1.5, scores[1])
    assert.equals(0, scores[4])
    assert.same({}, (J.rank(P, {})))
    assert.same({ 1 }, (J.rank(P, { "" })))
    assert.is_true(J.prefer(P, " The motor is great.", " The motor is bad."))
    assert.is_false(J.prefer(P, " The motor is bad.", " The motor is great."))
    assert.is_false(J.prefer(P, " The motor is great.", " The jar is great."))
    assert.is_false(J.prefer(P, " The jar is great.", " The motor is great."))
    assert.is_true(J.prefer(P, " The jar is great.", " The jar is stupid great."))
    assert.equals("reviews.judge.rank: completions[2] must be a string, got number", err(J.rank, P, { "a", 3 }))
    assert.equals("reviews.judge.rank: completions must be an array of strings, got nil", err(J.rank, P))
    assert.equals("reviews.judge.prefer: b must be a string, got nil", err(J.prefer, P, "a"))
  end)
end)

describe("examples/default/make_corpus.lua", function()
  local script = H.quote(root .. "examples/default/make_corpus.lua")
  local dir = H.tmpdir()
  local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("a")
    f:close()
    return s
  end

  it("writes the corpus text under lua5.4", function()
    local out = dir .. "/c.txt"
    local status, stdout, stderr = H.run("lua5.4 " .. script .. " --n=50 --seed=3 --out=" .. H.quote(out))
    assert.equals(0, status, stderr)
    assert.equals(R.corpus_text(50, 3), slurp(out))
    assert.matches("^wrote 50 reviews %(%d+ bytes, %d+ distinct words, seed 3%) to .*c%.txt as txt\n$", stdout)
  end)

  it("writes JSONL that dkjson reads back, under the engine runner", function()
    local out = dir .. "/c.jsonl"
    local status, _, stderr = H.run(H.quote(H.engine_bin) .. " " .. script .. " --n=30 --seed=5 --out=" .. H.quote(out))
    assert.equals(0, status, stderr)
    local json = require("dkjson")
    local recs = R.generate(30, { seed = 5 })
    local i = 0
    for line in slurp(out):gmatch("([^\n]*)\n") do
      i = i + 1
      local obj = json.decode(line)
      assert.same({ prompt = recs[i].prompt, completion = recs[i].completion }, obj)
    end
    assert.equals(30, i)
  end)

  it("fails with a message on a bad option", function()
    local status, _, stderr = H.run("lua5.4 " .. script .. " --size=3")
    assert.equals(1, status)
    assert.matches("^make_corpus%.lua: unknown option %-%-size\nusage: ", stderr)
    status, _, stderr = H.run("lua5.4 " .. script .. " --n=-4")
    assert.equals(1, status)
    assert.equals("make_corpus.lua: --n must be a non-negative integer, got '-4'\n", stderr)
    status, _, stderr = H.run("lua5.4 " .. script .. " --n=2 --out=" .. H.quote(dir .. "/no/such/dir/c.txt"))
    assert.equals(1, status)
    assert.matches("^make_corpus%.lua: cannot write .*no/such/dir/c%.txt: No such file or directory\n$", stderr)
  end)
end)
