-- bench/generate.lua — E.generate against a plain PyTorch GPT-2 with a KV
-- cache (bench/generate_torch.py), in one run: 8 prompts of 32 tokens, 128
-- new tokens each, a random GPT-2 of vocab 8192, d 256, 4 layers, 4 heads.
-- No stop tokens, so every run decodes all 128 steps.
--   build/engine bench/generate.lua [threads=2] [reps=3] [modes=sample,greedy,topkp]
-- Modes: sample (temperature 1), greedy (temperature 0), topkp (temperature
-- 0.8, top_k 50, top_p 0.9). Prints new tokens per second for both and the
-- ratio engine/PyTorch (target >= 2), and the sampler's own cost per step.
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
local modes = {}
for m in (arg[3] or "sample,greedy,topkp"):gmatch("[^,]+") do modes[#modes + 1] = m end
E.set_threads(threads)

local V, B, P, N = 8192, 8, 32, 128
local model = E.models.new({
  model_type = "gpt2", vocab_size = V, n_embd = 256, n_layer = 4, n_head = 4, n_positions = 1024,
}, { seed = 0 })
local gen = E.Generator(1)
local prompts = {}
for b = 1, B do
  prompts[b] = {}
  for t = 1, P do prompts[b][t] = math.floor(gen:uniform() * V) end
end

local settings = {
  sample = { temperature = 1 },
  greedy = { temperature = 0 },
  topkp = { temperature = 0.8, top_k = 50, top_p = 0.9 },
}

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

local function engine_tps(opts)
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

-- the sampler alone on (B,V) logits: ms per call
local function sampler_ms(opts)
  local logits = E.randn({ B, V }, { seed = 4 }) * 3
  local u = {}
  for b = 1, B do u[b] = b / (B + 1) end
  E.sample_logits(logits, u, opts)
  local n, t0 = 100, E.wall_time()
  for _ = 1, n do E.sample_logits(logits, u, opts) end
  return 1000 * (E.wall_time() - t0) / n
end

local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE "
  .. "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

print(string.format("generate: %d prompts x %d tokens, %d new tokens, GPT-2 V=%d d=256 L=4 H=4, "
  .. "%d threads, median of %d", B, P, N, V, threads, reps))
for _, mode in ipairs(modes) do
  local s = settings[mode] or error("unknown mode " .. mode .. " (sample, greedy, topkp)")
  local tps = engine_tps(s)
  local p = io.popen(string.format("%s /usr/bin/python3 %s/generate_torch.py %d %d %s", env, here, threads, reps, mode))
  local torch_tps = p and tonumber(p:read("a"))
  if p then p:close() end
  local line = string.format("  %-7s engine %8.1f tok/s", mode, tps)
  if torch_tps then
    line = line .. string.format("   pytorch %8.1f tok/s   ratio engine/pytorch = %.2f (target >= 2)",
      torch_tps, tps / torch_tps)
  else
    line = line .. "   pytorch: not available (apt-get install python3-torch)"
  end
  print(line)
  print(string.format("          of each step, E.sample_logits on (%d,%d) logits: %.3f ms", B, V, sampler_ms(s)))
end
