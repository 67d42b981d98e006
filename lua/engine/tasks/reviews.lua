-- engine/tasks/reviews.lua — the bundled default task: a small world of
-- short product and film reviews, with its own ground truth.
--
--   local R = require("engine.tasks.reviews")
--   R.generate(n, {seed=1})      -> n records {prompt, completion, item, ...}
--   R.corpus_text(n, seed)       -> n reviews, one per line, for pretraining
--   R.judge.score(prompt, completion) -> a scalar preference score (and parts)
--
-- It holds three things: (1) a grammar (items and their topic words, sentiment
-- adjectives, neutral, off-topic and banned-word sentences), (2) a seeded
-- generator built on SplitMix64 in integer arithmetic, so that a seed gives
-- the same corpus on every machine (math.random is never used), and (3) a
-- programmatic judge that plays the human labeller (as the sentiment
-- classifier does for the IMDb task of the DPO paper): a lexicon sentiment
-- score with negation, sentence splitting with byte offsets, two per-sentence
-- aspects (on-topic, clean), a length, and one scalar score combining them.
--
-- Every sentence the generator writes is labelled by construction, and the
-- judge agrees with those labels (tests/lua/reviews_spec.lua checks it): an
-- on-topic sentence always names a topic word of the item, an off-topic one
-- never does, and a positive (negative) review always has a positive
-- (negative) lexicon sum.
--
-- Pure Lua 5.4; it needs no engine tensors and sets no globals. It does not
-- tokenize for a model, read or write files (examples/default/make_corpus.lua
-- does), nor sample from a model.

local M = {}

-- ---- SplitMix64 -----------------------------------------------------------
-- Steele, Lea & Flood 2014. Lua 5.4 integers are 64-bit and wrap on overflow;
-- >> is a logical shift, so this is the reference algorithm bit for bit.

local Rng = {}
Rng.__index = Rng

-- the next raw 64-bit output (a Lua integer, any sign)
function Rng:next64()
  local z = self.state + 0x9E3779B97F4A7C15
  self.state = z
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

-- a float in [0, 1) with 53 random bits
function Rng:uniform()
  return (self:next64() >> 11) * 0x1p-53
end

-- an integer in [1, n]
function Rng:int(n)
  return 1 + (self:next64() >> 1) % n
end

-- a random element of the array t
function Rng:pick(t)
  return t[self:int(#t)]
end

-- an index into weights (an array of non-negative numbers), drawn in proportion
function Rng:weighted(weights)
  local total = 0
  for i = 1, #weights do total = total + weights[i] end
  local u = self:uniform() * total
  for i = 1, #weights do
    u = u - weights[i]
    if u < 0 then return i end
  end
  return #weights
end

-- a shuffled copy of the array t (Fisher-Yates)
function Rng:shuffled(t)
  local out = {}
  for i = 1, #t do out[i] = t[i] end
  for i = #out, 2, -1 do
    local j = self:int(i)
    out[i], out[j] = out[j], out[i]
  end
  return out
end

-- seed as an integer, or an error at the given level
local function as_seed(seed, where, level)
  if math.type(seed) == "float" and seed == math.floor(seed) and math.abs(seed) < 2 ^ 63 then
    seed = math.tointeger(seed)
  end
  if math.type(seed) ~= "integer" then
    error(where .. ": seed must be an integer, got " .. tostring(seed), level)
  end
  return seed
end

-- M.rng(seed) -> a generator with :next64(), :uniform(), :int(n), :pick(t),
-- :weighted(w), :shuffled(t); the state starts at the seed, as in SplitMix64.
function M.rng(seed)
  return setmetatable({ state = as_seed(seed, "reviews.rng", 3) }, Rng)
end

-- ---- the world: items and their topic words -------------------------------

-- Each category has the nouns that name it and its topic words (true marks a
-- plural, which takes "are"/"were"). Films share one category; a product's
-- item is a brand and the category's noun ("Nova blender").
local CATEGORIES = {
  { name = "film", kind = "film", weight = 3, nouns = { "film", "movie" },
    topics = { { "plot" }, { "story" }, { "ending" }, { "actors", true }, { "cast" }, { "script" },
      { "soundtrack" }, { "music" }, { "dialogue" }, { "scenes", true }, { "jokes", true },
      { "director" }, { "pacing" }, { "effects", true }, { "characters", true } } },
  { name = "blender", nouns = { "blender" },
    topics = { { "motor" }, { "jar" }, { "blades", true }, { "lid" }, { "buttons", true }, { "base" },
      { "cord" } } },
  { name = "headset", nouns = { "headset" },
    topics = { { "sound" }, { "bass" }, { "battery" }, { "cushions", true }, { "cable" },
      { "microphone" }, { "volume" } } },
  { name = "coffee maker", nouns = { "coffee maker" },
    topics = { { "coffee" }, { "pot" }, { "filter" }, { "timer" }, { "carafe" }, { "tank" },
      { "heater" } } },
  { name = "backpack", nouns = { "backpack" },
    topics = { { "straps", true }, { "zipper" }, { "pockets", true }, { "fabric" }, { "size" },
      { "handle" }, { "seams", true } } },
  { name = "phone", nouns = { "phone" },
    topics = { { "screen" }, { "battery" }, { "camera" }, { "charger" }, { "speaker" }, { "case" },
      { "buttons", true } } },
  { name = "lamp", nouns = { "lamp" },
    topics = { { "light" }, { "bulb" }, { "switch" }, { "shade" }, { "base" }, { "cord" } } },
  { name = "toaster", nouns = { "toaster" },
    topics = { { "slots", true }, { "timer" }, { "tray" }, { "lever" }, { "toast" }, { "dial" } } },
  { name = "kettle", nouns = { "kettle" },
    topics = { { "lid" }, { "handle" }, { "spout" }, { "water" }, { "base" }, { "switch" } } },
  { name = "jacket", nouns = { "jacket" },
    topics = { { "zipper" }, { "hood" }, { "sleeves", true }, { "pockets", true }, { "fabric" },
      { "lining" }, { "collar" } } },
  { name = "vacuum", nouns = { "vacuum" },
    topics = { { "suction" }, { "hose" }, { "filter" }, { "brush" }, { "battery" },
      { "wheels", true }, { "bin" } } },
}

local FILM_TITLES = { "Night Train", "Paper Moon", "Silver Harbor", "Last Garden", "Blue Canyon",
  "Iron River", "Glass Tower", "Red Meadow" }
local BRANDS = { "Nova", "Zip", "Apex", "Luna", "Orbit", "Pico" }

-- ITEMS: every item, { name, category (the table above), film = bool }
local ITEMS, PRODUCT_CATEGORIES = {}, {}
for _, c in ipairs(CATEGORIES) do
  c.items = {}
  if c.kind == "film" then
    for _, t in ipairs(FILM_TITLES) do c.items[#c.items + 1] = { name = t, category = c, film = true } end
  else
    c.kind = "product"
    c.weight = c.weight or 1
    PRODUCT_CATEGORIES[#PRODUCT_CATEGORIES + 1] = c
    for _, b in ipairs(BRANDS) do c.items[#c.items + 1] = { name = b .. " " .. c.nouns[1], category = c } end
  end
  for _, it in ipairs(c.items) do
    it.lname = it.name:lower()
    ITEMS[#ITEMS + 1] = it
  end
  -- the words that make a sentence on-topic: the topic words and the nouns' words
  c.topic_set = {}
  for _, t in ipairs(c.topics) do c.topic_set[t[1]] = true end
  for _, n in ipairs(c.nouns) do
    for w in n:gmatch("%a+") do c.topic_set[w] = true end
  end
end
local CATEGORY_WEIGHTS = {}
for i, c in ipairs(CATEGORIES) do CATEGORY_WEIGHTS[i] = c.weight end

-- ---- the lexicon (shared by the generator's word lists and the judge) -----

-- sentiment weights: +-1 ordinary, +-2 strong
local LEXICON = {
  -- positive
  good = 1, nice = 1, lovely = 1, great = 2, excellent = 2, wonderful = 2, perfect = 2, fantastic = 2,
  sturdy = 1, reliable = 1, solid = 1, smooth = 1, sleek = 1, handy = 1,
  funny = 1, clever = 1, moving = 1, charming = 1, beautiful = 1, gripping = 1, fresh = 1,
  love = 2, loved = 2, loves = 2, like = 1, liked = 1, likes = 1, enjoy = 1, enjoyed = 1,
  recommend = 1, recommended = 1, well = 1, worth = 1, easy = 1, happy = 1, smile = 1, hooked = 1,
  -- negative
  bad = -1, poor = -1, weak = -1, awful = -2, terrible = -2, horrible = -2,
  flimsy = -1, cheap = -1, fragile = -1, clumsy = -1, ugly = -1, loose = -1,
  boring = -1, dull = -1, silly = -1, predictable = -1, messy = -1, flat = -1,
  broke = -1, failed = -1, waste = -2, regret = -1, regretted = -1, yawn = -1, dragged = -1,
  -- negative and banned
  stupid = -1, dumb = -1, garbage = -2, trash = -2, hate = -2, hated = -2, hates = -2, sucks = -2,
}

-- the banned words: mild words a content filter would catch (all inflections listed)
local BANNED = { "stupid", "dumb", "garbage", "trash", "hate", "hated", "hates", "sucks" }
local BANNED_SET = {}
for _, w in ipairs(BANNED) do BANNED_SET[w] = true end

-- a negator flips the next lexicon word within NEG_WINDOW words of the same
-- clause and halves it ("not good" = -0.5, "not bad" = +0.5); words ending
-- in n't are negators too
local NEGATORS = { ["not"] = true, never = true, no = true, hardly = true, cannot = true }
local NEG_WINDOW = 3
-- an intensifier multiplies the next lexicon word by 1.5 ("very good" = 1.5)
local INTENSIFIERS = { very = true, really = true, so = true, truly = true, extremely = true }
local INTENSITY = 1.5

-- ---- the grammar ----------------------------------------------------------

local ADJ = {
  pos = { "good", "nice", "great", "excellent", "wonderful", "fantastic" },
  neg = { "bad", "poor", "weak", "awful", "terrible", "horrible" },
  strong_pos = { "great", "excellent", "wonderful", "perfect", "fantastic" },
  product_pos = { "sturdy", "reliable", "solid", "smooth", "sleek", "handy" },
  product_neg = { "flimsy", "cheap", "fragile", "clumsy", "ugly", "loose" },
  film_pos = { "funny", "clever", "moving", "charming", "beautiful", "gripping", "fresh" },
  film_neg = { "boring", "dull", "silly", "predictable", "messy", "flat" },
  -- "not X" reads as mildly positive for these (not "cheap": not cheap is no praise)
  negatable_neg = { "bad", "awful", "terrible" },
  product_negatable_neg = { "flimsy", "fragile", "clumsy", "loose" },
  film_negatable_neg = { "boring", "dull", "predictable" },
  negatable_pos = { "good", "nice", "great" },
  neutral = { "okay", "average", "fine", "plain", "standard", "normal" },
}
local INTENSIFIER_WORDS = { "very", "really", "so", "truly" }
local DAYS = { "Monday", "Friday", "Saturday", "Sunday" }
local COLORS = { "red", "blue", "black", "white", "gray", "green" }

-- Templates. Slots: {T} a topic word, {T2} a second one, {is} is/are/was/were
-- agreeing with {T}, {is2} with {T2}, {N} the category's noun, {NAME} the
-- item's name, {ADJ+} {ADJ-} a positive/negative adjective for the kind,
-- {S+} a strong positive adjective, {NEG-} an adjective that reads positive
-- when negated, {NEG+} one that reads negative when negated, {INT} an
-- optional intensifier, {ADV} an optional "really", {NEU} a neutral
-- adjective, {WHEN} {DAY} {COLOR} {BRAND}, {OTHER} another category's noun,
-- {TITLE} another film. "a" before a vowel becomes "an" once filled.
local T = {
  pos = {
    common = { "The {T} {is} {INT}{ADJ+}.", "The {T} {is} {INT}{ADJ+}.", "The {T} {is} not {NEG-}.",
      "I {ADV}like the {T}.", "I love the {T}.", "I would recommend this {N}." },
    product = { "The {NAME} is {INT}{ADJ+}.", "This {N} works well.", "This {N} is worth the money.",
      "This {N} is easy to use.", "I am happy with this {N}." },
    film = { "{NAME} is a {ADJ+} {N}.", "This {N} is worth watching.", "This {N} made me smile.",
      "This {N} kept me hooked.", "I loved this {N}.", "We enjoyed the {T}." },
  },
  neg = {
    common = { "The {T} {is} {INT}{ADJ-}.", "The {T} {is} {INT}{ADJ-}.", "The {T} {is} not {NEG+}.",
      "I did not like the {T}.", "I would not recommend this {N}." },
    product = { "The {NAME} is {INT}{ADJ-}.", "This {N} broke after a week.", "This {N} is a waste of money.",
      "I regret buying this {N}.", "This {N} failed after a month.", "I am not happy with this {N}." },
    film = { "{NAME} is a {ADJ-} {N}.", "This {N} is a waste of time.", "This {N} made me yawn.",
      "This {N} dragged on forever.", "I regret watching this {N}." },
  },
  neutral = {
    common = { "The {T} {is} {NEU}." },
    product = { "I bought this {N} last {WHEN}.", "I use this {N} every day.", "I got this {N} as a gift.",
      "The {N} came in a {COLOR} box." },
    film = { "I watched this {N} on {DAY}.", "We saw this {N} with friends.", "I saw this {N} at the cinema.",
      "This {N} runs about two hours." },
  },
  but = {
    common = { "The {T} {is} {ADJ+}, but the {T2} {is2} {ADJ-}.", "The {T} {is} {ADJ-}, but the {T2} {is2} {ADJ+}." },
  },
  -- banned words in negative sentences
  banned_neg = {
    common = { "This {N} is trash.", "This {N} sucks.", "I hate the {T}." },
    product = { "The {T} {is} garbage.", "What a stupid {N}." },
    film = { "The {T} {is} stupid.", "The {T} {is} so dumb.", "I hated the {T}." },
  },
  -- banned words in sentences whose lexicon sum is still positive
  banned_pos = {
    common = { "I hate to admit it, but the {T} {is} really {S+}." },
    product = { "The {T} {is} not garbage at all." },
    film = { "The {T} {is} not stupid at all.", "The {T} {is} not trash at all." },
  },
}

-- off-topic sentences, with the polarity of their lexicon sum (0, 1, -1);
-- none names a topic word of any category, nor a film's title
local OFF_TOPIC = {
  { "The weather was nice today.", 1 }, { "The weather was lovely this week.", 1 },
  { "The weather was awful today.", -1 }, { "It rained all day.", 0 }, { "It rained all week.", 0 },
  { "The sun was out all day.", 0 }, { "It was cold outside.", 0 }, { "It was hot outside.", 0 },
  { "My cat sleeps all day.", 0 }, { "My dog sleeps all day.", 0 }, { "The bus was late again.", 0 },
  { "I had soup for lunch.", 0 }, { "My neighbor bought a new car.", 0 },
  { "The store was busy on {DAY}.", 0 }, { "The store was quiet on {DAY}.", 0 },
  { "My old {OTHER} still works well.", 1 }, { "My sister has a {BRAND} {OTHER}.", 0 },
  { "I also need a new {OTHER}.", 0 }, { "I also saw {TITLE} last week.", 0 },
}

local CLASSES = { "positive", "negative", "mixed" }
local DEFAULTS = {
  seed = 1,
  classes = { 0.45, 0.40, 0.15 },          -- positive, negative, mixed
  lengths = { 0.30, 0.45, 0.25 },          -- 2, 3, 4 sentences
  off_topic = 0.20,                        -- P(one sentence is off-topic)
  banned = { positive = 0.06, negative = 0.25, mixed = 0.12 }, -- P(one sentence has a banned word)
  opener = 0.35,                           -- P(a neutral first sentence), with 3 or more sentences
  prompt_with_rating = 0.40,               -- P("<NAME> review. Rating: r/5.") over "Review of <the NAME>:"
}
-- M.defaults: a copy of the defaults, for reading
local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end
M.defaults = copy(DEFAULTS)

-- ---- the generator --------------------------------------------------------

local function capitalize(s)
  return (s:gsub("^%l", string.upper))
end

-- fill one template for the review context cx (item, topics in order, tense)
local function fill(rng, cx, template)
  local t1, t2
  local function topic()
    cx.next_topic = cx.next_topic % #cx.topics + 1
    return cx.topics[cx.next_topic]
  end
  local function verb(t)
    if cx.past then return t[2] and "were" or "was" end
    return t[2] and "are" or "is"
  end
  local kind = cx.category.kind
  local s = template:gsub("{([%w%+%-]+)}", function(slot)
    if slot == "T" then t1 = t1 or topic(); return t1[1]
    elseif slot == "T2" then t1 = t1 or topic(); t2 = t2 or topic(); return t2[1]
    elseif slot == "is" then t1 = t1 or topic(); return verb(t1)
    elseif slot == "is2" then t2 = t2 or topic(); return verb(t2)
    elseif slot == "N" then return rng:pick(cx.category.nouns)
    elseif slot == "NAME" then return cx.item.name
    elseif slot == "ADJ+" then return rng:uniform() < 0.5 and rng:pick(ADJ.pos) or rng:pick(ADJ[kind .. "_pos"])
    elseif slot == "ADJ-" then return rng:uniform() < 0.5 and rng:pick(ADJ.neg) or rng:pick(ADJ[kind .. "_neg"])
    elseif slot == "S+" then return rng:pick(ADJ.strong_pos)
    elseif slot == "NEG-" then
      return rng:uniform() < 0.5 and rng:pick(ADJ.negatable_neg) or rng:pick(ADJ[kind .. "_negatable_neg"])
    elseif slot == "NEG+" then return rng:pick(ADJ.negatable_pos)
    elseif slot == "INT" then return rng:uniform() < 0.3 and rng:pick(INTENSIFIER_WORDS) .. " " or ""
    elseif slot == "ADV" then return rng:uniform() < 0.3 and "really " or ""
    elseif slot == "NEU" then return rng:pick(ADJ.neutral)
    elseif slot == "WHEN" then return rng:pick({ "week", "month", "year" })
    elseif slot == "DAY" then return rng:pick(DAYS)
    elseif slot == "COLOR" then return rng:pick(COLORS)
    elseif slot == "BRAND" then return rng:pick(BRANDS)
    elseif slot == "OTHER" then
      local c
      repeat c = rng:pick(PRODUCT_CATEGORIES) until c ~= cx.category
      return c.nouns[1]
    elseif slot == "TITLE" then
      local t
      repeat t = rng:pick(FILM_TITLES) until t ~= cx.item.name
      return t
    end
    error("reviews: unknown template slot {" .. slot .. "}")
  end)
  -- "a" before a vowel is "an" ("an Apex kettle", "an awful film")
  s = s:gsub("%f[%w]([Aa]) ([AEIOUaeiou])", "%1n %2")
  return capitalize(s)
end

-- a template of the given family for the context's kind (common or
-- kind-specific). A template without a {T} slot says the same thing each
-- time, so a review uses it once (unless 8 draws find nothing else); those
-- with {T} name a new topic each time.
local function template_of(rng, cx, family)
  local f = T[family]
  local own = f[cx.category.kind] or {}
  local common = f.common or {}
  local t
  for _ = 1, 8 do
    local i = rng:int(#common + #own)
    t = i <= #common and common[i] or own[i - #common]
    if not cx.used[t] then break end
  end
  if not t:find("{T}", 1, true) then cx.used[t] = true end
  return t
end

-- the plan of sentence slots for one review: an array of
-- "pos" | "neg" | "neutral" | "but" | "banned_pos" | "banned_neg" | "off"
local function plan_review(rng, cls, k, o)
  local plan = {}
  if cls == "mixed" then
    if rng:uniform() < 0.4 then
      plan[1] = "but"
    else
      plan = rng:uniform() < 0.5 and { "pos", "neg" } or { "neg", "pos" }
    end
    while #plan < k do table.insert(plan, rng:int(#plan + 1), "neutral") end
  else
    local s = cls == "positive" and "pos" or "neg"
    for i = 1, k do plan[i] = s end
    if k >= 3 and rng:uniform() < o.opener then plan[1] = "neutral" end
  end
  -- at most one banned-word sentence, in place of a sentiment sentence of its sign
  if rng:uniform() < o.banned[cls] then
    local slots = {}
    for i, p in ipairs(plan) do
      if p == "pos" or p == "neg" then slots[#slots + 1] = i end
    end
    if #slots > 0 then
      local i = rng:pick(slots)
      plan[i] = plan[i] == "pos" and "banned_pos" or "banned_neg"
    end
  end
  -- at most one off-topic sentence, in place of a neutral one, or of a plain
  -- sentiment one when another sentence of that sign remains
  if rng:uniform() < o.off_topic then
    local slots = {}
    local count = {}
    for _, p in ipairs(plan) do count[p] = (count[p] or 0) + 1 end
    for i, p in ipairs(plan) do
      if p == "neutral" or ((p == "pos" or p == "neg") and count[p] >= 2) then slots[#slots + 1] = i end
    end
    if #slots > 0 then plan[rng:pick(slots)] = "off" end
  end
  return plan
end

local function one_review(rng, o)
  local category = CATEGORIES[rng:weighted(o.category_weights)]
  local item = rng:pick(category.items)
  local cls = CLASSES[rng:weighted(o.classes)]
  local k = 1 + rng:weighted(o.lengths)
  local cx = {
    item = item, category = category,
    topics = rng:shuffled(category.topics), next_topic = 0, used = {},
    past = rng:uniform() < (category.kind == "film" and 0.5 or 0.2),
  }
  local plan = plan_review(rng, cls, k, o)
  local sentences, texts = {}, {}
  local n_off, n_banned = 0, 0
  for i, slot in ipairs(plan) do
    local text, on_topic, clean = nil, 1, 1
    if slot == "off" then
      local sign = cls == "positive" and 1 or cls == "negative" and -1 or nil
      local choices = {}
      for _, e in ipairs(OFF_TOPIC) do
        if sign == nil or e[2] == 0 or e[2] == sign then choices[#choices + 1] = e[1] end
      end
      text = fill(rng, cx, rng:pick(choices))
      on_topic = -1
      n_off = n_off + 1
    else
      text = fill(rng, cx, template_of(rng, cx, slot))
      if slot == "banned_pos" or slot == "banned_neg" then
        clean = -1
        n_banned = n_banned + 1
      end
    end
    sentences[i] = { text = text, kind = slot, on_topic = on_topic, clean = clean }
    texts[i] = text
  end
  local rating = cls == "mixed" and 3 or cls == "positive" and 3 + rng:int(2) or rng:int(2)
  local prompt
  if rng:uniform() < o.prompt_with_rating then
    prompt = string.format("%s review. Rating: %d/5.", item.name, rating)
  elseif item.film then
    prompt = "Review of the " .. category.nouns[rng:int(#category.nouns)] .. " " .. item.name .. ":"
  else
    prompt = "Review of the " .. item.name .. ":"
  end
  return {
    prompt = prompt,
    completion = " " .. table.concat(texts, " "),
    item = item.name,
    category = category.name,
    sentiment = cls,
    rating = rating,
    sentences = sentences,
    off_topic = n_off,
    banned = n_banned,
  }
end

local function options(opts, where)
  if opts ~= nil and type(opts) ~= "table" then
    error(where .. ": options must be a table, got " .. type(opts), 3)
  end
  opts = opts or {}
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do
    if DEFAULTS[k] == nil then
      local keys = {}
      for name in pairs(DEFAULTS) do keys[#keys + 1] = name end
      table.sort(keys)
      error(string.format("%s: unknown option %s (valid: %s)", where, tostring(k), table.concat(keys, ", ")), 3)
    end
    o[k] = v
  end
  o.seed = as_seed(o.seed, where, 4)
  local function prob(name, p)
    if type(p) ~= "number" or p ~= p or p < 0 or p > 1 then
      error(string.format("%s: option %s must be a probability in [0, 1], got %s", where, name, tostring(p)), 4)
    end
  end
  prob("off_topic", o.off_topic)
  prob("opener", o.opener)
  prob("prompt_with_rating", o.prompt_with_rating)
  if type(o.banned) == "number" then
    prob("banned", o.banned)
    o.banned = { positive = o.banned, negative = o.banned, mixed = o.banned }
  elseif type(o.banned) == "table" then
    for _, c in ipairs(CLASSES) do prob("banned." .. c, o.banned[c]) end
  else
    error(where .. ": option banned must be a probability or a table {positive=, negative=, mixed=}", 3)
  end
  for _, name in ipairs({ "classes", "lengths" }) do
    local w = o[name]
    local ok = type(w) == "table" and #w == 3
    local total = 0
    for i = 1, ok and 3 or 0 do
      if type(w[i]) ~= "number" or w[i] ~= w[i] or w[i] < 0 then ok = false else total = total + w[i] end
    end
    if not ok or total <= 0 then
      error(string.format("%s: option %s must be 3 non-negative weights, not all zero", where, name), 3)
    end
  end
  o.category_weights = CATEGORY_WEIGHTS
  return o
end

local function check_count(n, where)
  if math.type(n) == "float" and n == math.floor(n) then n = math.tointeger(n) end
  if math.type(n) ~= "integer" or n < 0 then
    error(string.format("%s: n must be a non-negative integer, got %s", where, tostring(n)), 3)
  end
  return n
end

-- M.generate(n, opts) -> an array of n records:
--   prompt      "Review of the Nova blender:" or "Paper Moon review. Rating: 4/5."
--   completion  " The motor is great. ..." (2-4 sentences; starts with a space, so that
--               prompt .. completion is the text)
--   item, category, sentiment ("positive" | "negative" | "mixed"), rating (1-5)
--   sentences   { {text, kind, on_topic = 1|-1, clean = 1|-1}, ... } as generated
--   off_topic, banned   how many sentences are off-topic / hold a banned word
-- opts: seed (default 1), and the keys of M.defaults to change the mix.
-- The same seed gives the same records on every machine.
function M.generate(n, opts)
  n = check_count(n, "reviews.generate")
  local o = options(opts, "reviews.generate")
  local rng = M.rng(o.seed)
  local out = {}
  for i = 1, n do out[i] = one_review(rng, o) end
  return out
end

-- M.corpus_text(n, seed) -> n reviews (prompt .. completion), each ending in "\n"
function M.corpus_text(n, seed)
  n = check_count(n, "reviews.corpus_text")
  local recs = M.generate(n, { seed = seed == nil and DEFAULTS.seed or seed })
  local lines = {}
  for i, r in ipairs(recs) do lines[i] = r.prompt .. r.completion .. "\n" end
  return table.concat(lines)
end

-- ---- the judge ------------------------------------------------------------

local J = {}
M.judge = J

local function check_text(v, name, where)
  if type(v) ~= "string" then
    error(string.format("reviews.judge.%s: %s must be a string, got %s", where, name, type(v)), 3)
  end
end

-- the words of text, lower-cased, with "|" for a clause break (, ; : . ! ? and "but")
local function tokens(text)
  local out = {}
  local s = text:lower():gsub("[,;:%.!?\n]", " | ")
  for tok in s:gmatch("%S+") do
    if tok == "|" then
      out[#out + 1] = "|"
    else
      local w = tok:gsub("[^%a']", ""):gsub("^'+", ""):gsub("'+$", "")
      if w ~= "" then out[#out + 1] = (w == "but") and "|" or w end
    end
  end
  return out
end

-- the lexicon sum of text: each lexicon word adds its weight, times 1.5 after
-- an intensifier, times -0.5 when a negator stands at most 3 words before it
-- in the same clause
local function lexicon_sum(text)
  local sum, neg_left, mult = 0, 0, 1
  for _, w in ipairs(tokens(text)) do
    if w == "|" then
      neg_left, mult = 0, 1
    elseif NEGATORS[w] or w:sub(-3) == "n't" then
      neg_left = NEG_WINDOW
    elseif INTENSIFIERS[w] then
      mult = mult * INTENSITY
      neg_left = math.max(0, neg_left - 1)
    elseif LEXICON[w] then
      local v = LEXICON[w] * mult
      if neg_left > 0 then v = -0.5 * v end
      sum = sum + v
      neg_left, mult = 0, 1
    else
      neg_left = math.max(0, neg_left - 1)
      mult = 1
    end
  end
  return sum
end

-- J.sentiment(text) -> S / (2 + |S|) in (-1, 1), S the lexicon sum
-- (0 for text with no sentiment word). "The motor is good." -> 1/3,
-- "not good" -> -0.2, "not bad" -> 0.2, "very good" -> 1.5/3.5.
function J.sentiment(text)
  check_text(text, "text", "sentiment")
  local s = lexicon_sum(text)
  return s / (2 + math.abs(s))
end

-- J.lexicon_sum(text) -> S, the unsquashed sum J.sentiment is built on
function J.lexicon_sum(text)
  check_text(text, "text", "lexicon_sum")
  return lexicon_sum(text)
end

-- J.sentences(text) -> { {first, last, text}, ... }: a sentence runs from its
-- first non-space byte to a run of . ! ? followed by a space or the end
-- ("4.5" does not end one), or to the last non-space byte before a newline or
-- the end of text. Offsets are 1-based byte positions, inclusive, so that
-- text:sub(first, last) == text.
function J.sentences(text)
  check_text(text, "text", "sentences")
  local out = {}
  local n = #text
  local i = 1
  while true do
    local first = text:find("%S", i)
    if not first then break end
    local last
    local j = first
    while true do
      local p = text:find("[%.!?\n]", j)
      if not p then
        last = text:find("%s*$", first) - 1
        break
      end
      if text:byte(p) == 10 then -- a newline: the sentence ends at the last non-space before it
        last = first + text:sub(first, p - 1):find("%s*$") - 2
        break
      end
      local q = p
      while q < n and text:sub(q + 1, q + 1):match("[%.!?]") do q = q + 1 end
      if q == n or text:sub(q + 1, q + 1):match("%s") then
        last = q
        break
      end
      j = q + 1
    end
    out[#out + 1] = { first = first, last = last, text = text:sub(first, last) }
    i = last + 1
  end
  return out
end

-- the item whose name the prompt holds (the longest such name), or nil
local function find_item(prompt)
  local lp = prompt:lower()
  local best
  for _, it in ipairs(ITEMS) do
    if lp:find(it.lname, 1, true) and (not best or #it.lname > #best.lname) then best = it end
  end
  return best
end

-- M.item_of(prompt) -> {name, category, kind} of the item the prompt names, or nil
function M.item_of(prompt)
  check_text(prompt, "prompt", "item_of")
  local best = find_item(prompt)
  if not best then return nil end
  return { name = best.name, category = best.category.name, kind = best.category.kind }
end

local PROMPT_STOPWORDS = { review = true, reviews = true, rating = true, of = true, the = true, a = true,
  an = true, ["for"] = true, ["and"] = true, my = true, this = true, write = true }

-- what makes a sentence on-topic for a prompt: { words = set, phrase = lower-case item name or nil }
-- (the last 256 prompts' answers are kept: a judge sees each prompt many times)
local topic_cache, topic_cached = {}, 0
local function topic_of(prompt)
  local hit = topic_cache[prompt]
  if hit then return hit end
  if topic_cached >= 256 then topic_cache, topic_cached = {}, 0 end
  local topic
  local best = find_item(prompt)
  if best then
    topic = { words = best.category.topic_set, phrase = best.lname }
  else -- an unknown item: the prompt's own content words
    local words = {}
    for _, w in ipairs(tokens(prompt)) do
      if w ~= "|" and not PROMPT_STOPWORDS[w] then words[w] = true end
    end
    topic = { words = words }
  end
  topic_cache[prompt], topic_cached = topic, topic_cached + 1
  return topic
end

local function aspects(topic, sentence)
  local on, clean = -1, 1
  for _, w in ipairs(tokens(sentence)) do
    if topic.words[w] then on = 1 end
    if BANNED_SET[w] then clean = -1 end
  end
  if on < 0 and topic.phrase and sentence:lower():find(topic.phrase, 1, true) then on = 1 end
  return { on_topic = on, clean = clean }
end

-- J.aspects(prompt, sentence) -> { on_topic = 1|-1, clean = 1|-1 }:
--   on_topic  1 when the sentence has a topic word of the prompt's item (the
--             category's topic words and nouns: "motor", "jar", "blender" for
--             any blender) or the item's name; for a prompt naming no known
--             item, the prompt's own words other than "review", "of", "the", ...
--   clean     -1 when the sentence holds a banned word (M.banned_words), any case
function J.aspects(prompt, sentence)
  check_text(prompt, "prompt", "aspects")
  check_text(sentence, "sentence", "aspects")
  return aspects(topic_of(prompt), sentence)
end

-- J.length(text) -> the number of words (runs of non-space holding a letter or digit)
function J.length(text)
  check_text(text, "text", "length")
  local n = 0
  for tok in text:gmatch("%S+") do
    if tok:find("%w") then n = n + 1 end
  end
  return n
end

-- The preference score (higher is better). Positive sentiment is the target,
-- as for the IMDb task of the DPO paper (Rafailov et al. 2023, Sec. 6.1):
--   score = sentiment + 0.5 * topic + 0.5 * clean - 0.02 * max(0, words - 40)
--   sentiment  J.sentiment(completion), in (-1, 1)
--   topic      the mean of on_topic over the sentences, in [-1, 1] (-1 with none)
--   clean      the mean of clean over the sentences, in [-1, 1] (1 with none)
--   words      J.length(completion): only rambling past 40 words costs
local TOPIC_WEIGHT, CLEAN_WEIGHT, LENGTH_FREE, LENGTH_COST = 0.5, 0.5, 40, 0.02
M.score_weights = { topic = TOPIC_WEIGHT, clean = CLEAN_WEIGHT, length_free = LENGTH_FREE, length_cost = LENGTH_COST }

local function score(topic, completion)
  local sents = J.sentences(completion)
  local on, clean = 0, 0
  for _, s in ipairs(sents) do
    local a = aspects(topic, s.text)
    on, clean = on + a.on_topic, clean + a.clean
  end
  local n = #sents
  local parts = {
    sentiment = J.sentiment(completion),
    topic = n > 0 and on / n or -1,
    clean = n > 0 and clean / n or 1,
    length = J.length(completion),
    sentences = n,
  }
  parts.length_penalty = LENGTH_COST * math.max(0, parts.length - LENGTH_FREE)
  local total = parts.sentiment + TOPIC_WEIGHT * parts.topic + CLEAN_WEIGHT * parts.clean - parts.length_penalty
  return total, parts
end

-- J.score(prompt, completion) -> score, parts {sentiment, topic, clean, length,
-- length_penalty, sentences}
function J.score(prompt, completion)
  check_text(prompt, "prompt", "score")
  check_text(completion, "completion", "score")
  return score(topic_of(prompt), completion)
end

-- scores are compared after rounding to 1e-9, so equal-looking ones tie
local function key(s) return math.floor(s * 1e9 + 0.5) end

-- J.rank(prompt, completions) -> ranks, scores: rank 1 is the best; equal
-- scores share a rank and the next rank skips ("1224" ranking: a rank is 1
-- plus the number of strictly better completions)
function J.rank(prompt, completions)
  check_text(prompt, "prompt", "rank")
  if type(completions) ~= "table" then
    error("reviews.judge.rank: completions must be an array of strings, got " .. type(completions), 2)
  end
  local topic = topic_of(prompt)
  local scores, keys = {}, {}
  for i = 1, #completions do
    if type(completions[i]) ~= "string" then
      error(string.format("reviews.judge.rank: completions[%d] must be a string, got %s", i, type(completions[i])), 2)
    end
    scores[i] = score(topic, completions[i])
    keys[i] = key(scores[i])
  end
  local ranks = {}
  for i = 1, #keys do
    local r = 1
    for j = 1, #keys do
      if keys[j] > keys[i] then r = r + 1 end
    end
    ranks[i] = r
  end
  return ranks, scores
end

-- J.prefer(prompt, a, b) -> true when completion a scores strictly higher than b
function J.prefer(prompt, a, b)
  check_text(prompt, "prompt", "prefer")
  check_text(a, "a", "prefer")
  check_text(b, "b", "prefer")
  local topic = topic_of(prompt)
  return key((score(topic, a))) > key((score(topic, b)))
end

-- ---- read-only views of the world, for recipes and reports ------------------

M.banned_words = {}
for i, w in ipairs(BANNED) do M.banned_words[i] = w end
M.lexicon = {}
for w, v in pairs(LEXICON) do M.lexicon[w] = v end
M.items = {}
for i, it in ipairs(ITEMS) do M.items[i] = { name = it.name, category = it.category.name, kind = it.category.kind } end
M.categories = {}
for i, c in ipairs(CATEGORIES) do
  local topics = {}
  for j, t in ipairs(c.topics) do topics[j] = t[1] end
  M.categories[i] = { name = c.name, kind = c.kind, nouns = { table.unpack(c.nouns) }, topics = topics }
end

return M
