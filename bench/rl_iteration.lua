-- bench/rl_iteration.lua — where the time of an online RL iteration goes:
-- generation (KV-cached sampling of the rollout), scoring (the reward
-- function), reference (the old policy's, the reference's and the critic's
-- per-token values, one forward each over the whole rollout) and update
-- (ppo_epochs passes of minibatch forward + backward + AdamW).
--   build/engine bench/rl_iteration.lua [recipe=ppo] [iterations=4] [key=value ...]
-- Runs the recipe on the bundled default task (defaults unless overridden,
-- e.g. rollout_batch_size=16) and prints the median seconds of each phase
-- over the iterations and its share of the iteration.
local E = require("engine")
local Metrics = require("engine.metrics")

if not os.getenv("OPENBLAS_CORETYPE") then
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end

local here = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
local name = arg[1] or "ppo"
local iterations = tonumber(arg[2]) or 4
local recipe = dofile(here .. "/recipes/" .. name .. ".lua")
local cfg = {}
for k, v in pairs(recipe.defaults) do cfg[k] = v end
for i = 3, #arg do
  local k, v = arg[i]:match("^([%w_]+)=(.*)$")
  if not k or cfg[k] == nil then error("bench: cannot read '" .. arg[i] .. "' (key=value with a recipe key)", 0) end
  cfg[k] = type(cfg[k]) == "number" and tonumber(v) or v
end
local dir = os.tmpname()
os.remove(dir)
cfg.out, cfg.max_steps, cfg.report, cfg.quiet, cfg.normalize_reward = dir, iterations, false, true, false

local t0 = E.wall_time()
recipe.train(cfg)
local total = E.wall_time() - t0
local rows = Metrics.read(dir .. "/metrics.jsonl")
os.execute("rm -rf '" .. dir .. "'")

local median = dofile(here .. "/bench/stats.lua").median
local phases = { "time/generation", "time/scoring", "time/reference", "time/update" }
local med, sum = {}, 0
for _, p in ipairs(phases) do
  local l = {}
  for _, r in ipairs(rows) do l[#l + 1] = r[p] end
  med[p] = median(l)
  sum = sum + med[p]
end
local tokens = {}
for _, r in ipairs(rows) do tokens[#tokens + 1] = r["val/mean_length"] * cfg.rollout_batch_size end
print(string.format("%s on the default task: %d iterations, rollout %d x up to %d tokens, %d epochs of minibatch %d, %d threads",
  name, iterations, cfg.rollout_batch_size, cfg.max_new_tokens, cfg.ppo_epochs, cfg.mini_batch_size, cfg.threads))
print(string.format("%-12s %10s %8s", "phase", "median s", "share"))
for _, p in ipairs(phases) do
  print(string.format("%-12s %10.3f %7.1f%%", p:sub(6), med[p], 100 * med[p] / sum))
end
print(string.format("%-12s %10.3f   (%.0f sampled tokens per iteration, median; whole run %.1f s)", "iteration",
  sum, median(tokens), total))
