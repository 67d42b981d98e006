-- bench/generate.lua — E.generate against a plain PyTorch GPT-2 with a KV
-- cache (bench/generate_torch.py), in one run: 8 prompts of 32 tokens, 128
-- new tokens each, no stop tokens (every run decodes all 128 steps), on
--   a     a random GPT-2 of vocab 8192, d 256, 4 layers, 4 heads (issue 3's
--         config (a); target: engine >= 2x PyTorch's tokens/s)
--   tiny  examples/default/model (vocab 257, d 128, 4 layers, 4 heads), the
--         model the RL recipes sample from by default (PyTorch runs a random
--         model of the same shapes: speed does not depend on the values)
--   build/engine bench/generate.lua [threads=2] [reps=3] [modes=sample,greedy,topkp]
--                                   [models=a,tiny] [rounds=3]
-- Modes: sample (temperature 1), greedy (temperature 0), topkp (temperature
-- 0.8, top_k 50, top_p 0.9). Each round times `reps` runs of the engine and
-- then `reps` runs of PyTorch (a fresh process), so that the two alternate
-- and share whatever else the machine is doing; it prints the medians of
-- the rounds' new tokens per second, the median of the rounds' ratios
-- engine/PyTorch, and the sampler's own cost per step.
-- PyTorch runs with its best CPU settings here: its own thread count, passive
-- OpenMP waiting, and glibc malloc told to keep freed memory. On a busy
-- machine run the engine with OMP_WAIT_POLICY=PASSIVE too: spinning OpenMP
-- threads that share cores with other work slow it down many times.
local E = require("engine")

if not os.getenv("OPENBLAS_CORETYPE") then
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end

local threads = tonumber(arg[1]) or 2
local reps = tonumber(arg[2]) or 3
local function list(s)
  local out = {}
  for m in s:gmatch("[^,]+") do out[#out + 1] = m end
  return out
end
local modes = list(arg[3] or "sample,greedy,topkp")
local models = list(arg[4] or "a,tiny")
local rounds = tonumber(arg[5]) or 3
E.set_threads(threads)

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local B, P, N = 8, 32, 128

local function make_model(name)
  if name == "a" then
    return E.models.new({
      model_type = "gpt2", vocab_size = 8192, n_embd = 256, n_layer = 4, n_head = 4, n_positions = 1024,
    }, { seed = 0 }), "GPT-2 V=8192 d=256 L=4 H=4 (random)"
  elseif name == "tiny" then
    local dir = here .. "/../examples/default/model"
    local m = assert(E.models.load(dir))
    local hp = m.hp
    return m, string.format("examples/default/model: GPT-2 V=%d d=%d L=%d H=%d", hp.vocab_size, hp.n_embd,
      hp.n_layer, hp.n_head)
  end
  error("unknown model " .. name .. " (a, tiny)")
end

local settings = {
  sample = { temperature = 1 },
  greedy = { temperature = 0 },
  topkp = { temperature = 0.8, top_k = 50, top_p = 0.9 },
}

local median = dofile(here .. "/stats.lua").median

-- tokens/s of the engine: the median of `reps` runs after a warm-up
local function engine_tps(model, prompts, opts)
  local o = { max_new_tokens = N, seed = 3 }
  for k, v in pairs(opts) do o[k] = v end
  E.generate(model, prompts, o) -- warm-up
  local times = {}
  for r = 1, reps do
    local t0 = E.wall_time()
    local out = E.generate(model, prompts, o)
    times[r] = E.wall_time() - t0
    assert(#out.tokens[B] == N)
  end
  return B * N / median(times)
end

local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE "
  .. "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

-- tokens/s of PyTorch (one process: warm-up, then the median of `reps` runs), or nil
local function torch_tps(name, mode)
  local p = io.popen(string.format("%s /usr/bin/python3 %s/generate_torch.py %d %d %s %s 2>/dev/null", env, here,
    threads, reps, mode, name))
  local v = p and tonumber(p:read("a"))
  if p then p:close() end
  return v
end

-- the sampler alone on (B,V) logits: ms per call
local function sampler_ms(V, opts)
  local logits = E.randn({ B, V }, { seed = 4 }) * 3
  local u = {}
  for b = 1, B do u[b] = b / (B + 1) end
  E.sample_logits(logits, u, opts)
  local n, t0 = 100, E.wall_time()
  for _ = 1, n do E.sample_logits(logits, u, opts) end
  return 1000 * (E.wall_time() - t0) / n
end

for _, name in ipairs(models) do
  local model, what = make_model(name)
  local V = model.vocab_size
  local gen = E.Generator(1)
  local prompts = {}
  for b = 1, B do
    prompts[b] = {}
    for t = 1, P do prompts[b][t] = math.floor(gen:uniform() * V) end
  end
  print(string.format("generate [%s]: %d prompts x %d tokens, %d new tokens, %s, %d threads, "
    .. "%d rounds of %d runs", name, B, P, N, what, threads, rounds, reps))
  for _, mode in ipairs(modes) do
    local s = settings[mode] or error("unknown mode " .. mode .. " (sample, greedy, topkp)")
    local eng, pt, ratio = {}, {}, {}
    for r = 1, rounds do
      eng[r] = engine_tps(model, prompts, s)
      pt[r] = torch_tps(name, mode)
      if pt[r] then ratio[r] = eng[r] / pt[r] end
    end
    local line = string.format("  %-7s engine %8.1f tok/s", mode, median(eng))
    if #ratio == rounds then
      line = line .. string.format("   pytorch %8.1f tok/s   ratio engine/pytorch = %.2f%s", median(pt),
        median(ratio), name == "a" and " (target >= 2)" or "")
    else
      line = line .. "   pytorch: not available (apt-get install python3-torch)"
    end
    print(line)
    print(string.format("          of each step, E.sample_logits on (%d,%d) logits: %.3f ms", B, V,
      sampler_ms(V, s)))
  end
end
