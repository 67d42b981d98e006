-- examples/default/make_datasets.lua — the default task's data sets, made
-- as the DPO paper made its IMDb data: sample completions from the
-- pretrained model (examples/default/model) and label them with the
-- programmatic judge (engine/tasks/reviews.lua) playing the human labeller.
--   build/engine examples/default/make_datasets.lua [--prompts=800] [--k=4] [--seed=2]
-- Writes examples/default/data/{sft,pairs,rankings,unpaired,segments,prompts}_{train,eval}.jsonl
-- (the last tenth of the prompts is the held-out split):
--   sft       a demonstration per prompt: the generator's own positive review
--   pairs     the judge's best and worst of K samples (ties skipped)
--   rankings  all K samples with the judge's ranks (1 = best)
--   unpaired  every sample, desirable when its score is above the median
--   segments  the best sample, each sentence scored for on_topic and clean,
--             and the whole for sentiment (the sequence-level aspect)
--   prompts   the prompts alone, for the RL recipes
local E = require("engine")
local json = require("engine.json")
local fs = require("engine.fs")
local reviews = require("engine.tasks.reviews")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local defaults = { prompts = 800, k = 4, seed = 2, model = here .. "/model", out = here .. "/data",
  max_new_tokens = 96, temperature = 1.0, batch = 64, threads = 2 }
local docs = {
  prompts = "prompts to sample for", k = "samples per prompt", seed = "seed of prompts and sampling",
  model = "the model to sample from", out = "where the .jsonl files go",
  max_new_tokens = "longest sampled completion", temperature = "sampling temperature",
  batch = "prompts sampled together", threads = "threads for the engine and OpenBLAS",
}

local function run(cfg)
  E.set_threads(cfg.threads)
  local model = assert(E.models.load(cfg.model))
  local tok = assert(E.tokenizer.load(cfg.model))
  local judge = reviews.judge
  local source = reviews.generate(cfg.prompts, { seed = cfg.seed, classes = { 1, 0, 0 } })
  local n_eval = math.max(1, cfg.prompts // 10)
  local sets = { sft = {}, pairs = {}, rankings = {}, unpaired = {}, segments = {}, prompts = {} }
  local samples = {}
  local t0 = E.wall_time()
  for first = 1, #source, cfg.batch do
    local last = math.min(#source, first + cfg.batch - 1)
    local ids = {}
    for i = first, last do
      for _ = 1, cfg.k do ids[#ids + 1] = tok:encode(source[i].prompt) end
    end
    local g = E.generate(model, ids, { max_new_tokens = cfg.max_new_tokens, temperature = cfg.temperature,
      stop_tokens = { tok.eos_id }, seed = cfg.seed * 100003 + first })
    for r = 1, #ids do
      local i = first + (r - 1) // cfg.k
      samples[i] = samples[i] or {}
      local text = tok:decode(g.tokens[r], { skip_special_tokens = true })
      samples[i][#samples[i] + 1] = text
    end
    io.stdout:write(string.format("\rsampled %d/%d prompts", last, #source))
    io.stdout:flush()
  end
  print(string.format("  (%.0f s)", E.wall_time() - t0))
  local all_scores = {}
  for i, ex in ipairs(source) do
    for _, c in ipairs(samples[i]) do all_scores[#all_scores + 1] = (judge.score(ex.prompt, c)) end
  end
  table.sort(all_scores)
  local median = all_scores[(#all_scores + 1) // 2]
  for i, ex in ipairs(source) do
    local split = i > #source - n_eval and "eval" or "train"
    local function add(set, row)
      local key = set .. "_" .. split
      sets[key] = sets[key] or {}
      table.insert(sets[key], row)
    end
    local p, cs = ex.prompt, samples[i]
    add("sft", { prompt = p, completion = ex.completion })
    add("prompts", { prompt = p })
    local scores, best, worst = {}, 1, 1
    for j, c in ipairs(cs) do
      scores[j] = judge.score(p, c)
      if scores[j] > scores[best] then best = j end
      if scores[j] < scores[worst] then worst = j end
    end
    if scores[best] > scores[worst] then add("pairs", { prompt = p, chosen = cs[best], rejected = cs[worst] }) end
    local ranks = judge.rank(p, cs)
    local distinct = false
    for j = 2, #ranks do if ranks[j] ~= ranks[1] then distinct = true end end
    if distinct then add("rankings", { prompt = p, responses = cs, ranks = ranks }) end
    for j, c in ipairs(cs) do add("unpaired", { prompt = p, completion = c, label = scores[j] > median }) end
    local segs = {}
    for _, s in ipairs(judge.sentences(cs[best])) do
      local a = judge.aspects(p, s.text)
      segs[#segs + 1] = { ["end"] = s.last, scores = { on_topic = a.on_topic, clean = a.clean } }
    end
    if #segs > 0 then
      segs[#segs].scores.sentiment = judge.sentiment(cs[best])
      add("segments", { prompt = p, completion = cs[best], segments = segs })
    end
  end
  assert(fs.mkdir_p(cfg.out))
  local names = {}
  for key in pairs(sets) do if key:find("_") then names[#names + 1] = key end end
  table.sort(names)
  for _, key in ipairs(names) do
    local f = assert(io.open(cfg.out .. "/" .. key .. ".jsonl", "wb"))
    for _, row in ipairs(sets[key]) do f:write(json.encode(row), "\n") end
    f:close()
    print(string.format("%-22s %5d lines", key .. ".jsonl", #sets[key]))
  end
  local mean = 0
  for _, s in ipairs(all_scores) do mean = mean + s end
  print(string.format("judge score of the samples: mean %.3f, median %.3f", mean / #all_scores, median))
end

return { name = "make_datasets", description = "sample the default model and label with the judge",
  defaults = defaults, docs = docs, train = run }
