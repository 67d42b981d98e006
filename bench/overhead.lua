-- bench/overhead.lua — the engine's per-op cost seen from Lua: a "step" of
-- 200 ops on 4x4 tensors (forward with autodiff, then backward), so the
-- time is almost all binding, allocation and graph bookkeeping.
--   build/engine bench/overhead.lua [reps=2000]
local E = require("engine")
E.set_threads(1)
local reps = tonumber(arg[1]) or 2000

local a = E.randn({4, 4}, {seed = 1}):requires_grad(true)
local c = E.randn({4, 4}, {seed = 2})

-- 199 ops forward (+ the mean), then backward through all of them
local function step()
  local h = a
  for _ = 1, 33 do
    h = E.tanh(h * c + 0.5) - h * 0.1 -- mul, add, tanh, mul, sub
    h = h:exp():mean(2):reshape({4, 1}) + h -- (4,1) broadcast back to (4,4)
  end
  local loss = h:sum()
  loss:backward()
  a:zero_grad()
end

-- count ops in one step by construction: per iteration mul, add, tanh, mul, sub, exp, mean,
-- reshape, add = 9 ops; 33 iterations + sum = 298 ops
local ops_per_step = 33 * 9 + 1

for _ = 1, 50 do step() end
local times = {}
for r = 1, 5 do
  local t0 = E.wall_time()
  for _ = 1, reps // 5 do step() end
  times[r] = (E.wall_time() - t0) / (reps // 5)
end
table.sort(times)
local per_step = times[3]
print(string.format("%d ops per step (forward + backward), median step %.1f us, %.2f us per op (target < 10)",
  ops_per_step, per_step * 1e6, per_step * 1e6 / ops_per_step))
