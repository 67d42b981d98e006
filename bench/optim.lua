-- bench/optim.lua — one AdamW step over 10M parameters: the engine's fused
-- loop (E.optim.AdamW), the same update composed from tensor ops in Lua, and
-- torch.optim.AdamW (foreach=False and foreach=True) in /usr/bin/python3,
-- side by side in one run. Also the grad-norm clip and zero_grad.
--   build/engine bench/optim.lua [threads=2] [steps=20]
-- Prints figures and ratios; asserts nothing (timings are not tests).
local E = require("engine")

local threads = tonumber(arg[1]) or 2
local steps = tonumber(arg[2]) or 20
E.set_threads(threads)

-- 10M parameters: four (1000, 2496) weights and their biases, as a model has
local shapes = {}
for i = 1, 4 do
  shapes[#shapes + 1] = { 1000, 2496 }
  shapes[#shapes + 1] = { 2496 }
end
local params, total = {}, 0
for i, s in ipairs(shapes) do
  local t = (E.randn(s, { seed = i }) * 0.02):requires_grad(true)
  params[i] = { name = (#s == 2 and "w" or "bias") .. i, tensor = t }
  total = total + t:numel()
end

local lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
local opt = E.optim.AdamW(params, { lr = lr, weight_decay = wd })
opt.grads:copy_(E.randn({ total }, { seed = 99 }) * 0.01)

local function median(fn, n)
  for _ = 1, 2 do fn() end
  local times = {}
  for i = 1, n do
    local t0 = E.wall_time()
    fn()
    times[i] = E.wall_time() - t0
  end
  table.sort(times)
  return 1000 * times[(n + 1) // 2]
end

local fused_ms = median(function() opt:step() end, steps)
local clip_ms = median(function() opt:clip_grad_norm(1e9) end, steps)
local g_saved = E.tensor(opt.grads)
local zero_ms = median(function() opt:zero_grad() end, steps)
opt.grads:copy_(g_saved)

-- the same update from tensor ops, per parameter (PyTorch's single-tensor loop)
local m, v, t = {}, {}, 0
for i, p in ipairs(params) do
  m[i] = E.zeros(p.tensor:shape())
  v[i] = E.zeros(p.tensor:shape())
end
local function composed_step()
  t = t + 1
  local bc1, bc2 = 1 - b1 ^ t, 1 - b2 ^ t
  E.no_grad(function()
    for i, e in ipairs(params) do
      local p, g = e.tensor, e.tensor.grad
      if #shapes[i] == 2 then p:copy_(p * (1 - lr * wd)) end
      m[i]:copy_(m[i] * b1 + g * (1 - b1))
      v[i]:copy_(v[i] * b2 + g * g * (1 - b2))
      p:add_(m[i] / (E.sqrt(v[i]) / math.sqrt(bc2) + eps), -lr / bc1)
    end
  end)
end
local composed_ms = median(composed_step, steps)

local py = [[
import sys, time, torch
threads, steps, foreach = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(threads)
shapes = [(1000, 2496), (2496,)] * 4
ps = [(torch.randn(s) * 0.02).requires_grad_() for s in shapes]
for p in ps: p.grad = torch.randn(p.shape) * 0.01
groups = [{"params": [p for p in ps if p.dim() == 2], "weight_decay": 0.01},
          {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]
opt = torch.optim.AdamW(groups, lr=1e-3, foreach=foreach)
def med(fn):
    for _ in range(2): fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    ts.sort()
    return 1000 * ts[(steps - 1) // 2]
step_ms = med(opt.step)
clip_ms = med(lambda: torch.nn.utils.clip_grad_norm_(ps, 1e9))
print(step_ms, clip_ms)
]]
local function torch_ms(foreach)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(py)
  f:close()
  local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE"
  local p = io.popen(string.format("%s /usr/bin/python3 '%s' %d %d %d 2>/dev/null", env, script, threads, steps,
    foreach and 1 or 0))
  local out = p and p:read("a") or ""
  if p then p:close() end
  os.remove(script)
  local s, c = out:match("([%d%.e%-]+)%s+([%d%.e%-]+)")
  return tonumber(s), tonumber(c)
end
local t_loop, t_clip = torch_ms(false)
local t_foreach = torch_ms(true)

print(string.format("AdamW step, %d parameters (%.0f MiB per block), %d threads, median of %d:", total,
  total * 4 / 2^20, threads, steps))
print(string.format("  engine fused     %8.2f ms  (%.1f GB/s of p, g, m, v traffic)", fused_ms,
  total * 4 * 7 / fused_ms / 1e6))
print(string.format("  engine Lua ops   %8.2f ms  (ratio fused/composed = %.3f)", composed_ms, fused_ms / composed_ms))
if t_loop then
  print(string.format("  torch loop       %8.2f ms  (ratio fused/torch = %.3f)", t_loop, fused_ms / t_loop))
  if t_foreach then
    print(string.format("  torch foreach    %8.2f ms  (ratio fused/torch = %.3f)", t_foreach, fused_ms / t_foreach))
  end
else
  print("  torch: not available (/usr/bin/python3 with torch)")
end
print(string.format("clip_grad_norm: engine %.2f ms%s", clip_ms,
  t_clip and string.format(", torch %.2f ms (ratio %.3f)", t_clip, clip_ms / t_clip) or ""))
print(string.format("zero_grad:      engine %.2f ms", zero_ms))
