-- bench/subnormals.lua — what subnormal floats cost, and what flushing them
-- (E.set_flush_denormal) saves: a few ops at model sizes timed on normal
-- inputs and on inputs scaled into float32's subnormal range (2^-130), with
-- the flush off and on, and the same in PyTorch (torch.set_flush_denormal)
-- in /usr/bin/python3, in one run.
--   build/engine bench/subnormals.lua [threads=2] [reps=3]   (about 3 minutes on 2 cores)
-- Ops: matmul (1024,1024)@(1024,1024); its backward, and GELU's backward at
-- (1024,1024), each given a subnormal incoming gradient; and a DPO-like
-- step: a 2-layer MLP (128,1024)->4096->1024 whose loss -logsigmoid(mean + m)
-- saturates at m = 90, so that its gradient (-8.2e-40) is subnormal, as in
-- the saturated DPO steps that prompted the flush (forward + backward).
-- Prints medians and ratios subnormal/normal; asserts nothing. (torch's
-- set_flush_denormal sets the calling thread's MXCSR only, not its OpenMP
-- workers': its subnormal matmul is about halved by it, not cured.)
local E = require("engine")

local threads = tonumber(arg[1]) or 2
local reps = tonumber(arg[2]) or 3
E.set_threads(threads)

local S = 2 ^ -130 -- scales N(0,1) values into float32's subnormals (< 2^-126)
local D = 1024

local function median(times)
  table.sort(times)
  return 1000 * times[(#times + 1) // 2]
end

-- median ms of the timed part: fn() returns the seconds it measured
local function time_of(fn)
  fn()
  local ts = {}
  for i = 1, reps do ts[i] = fn() end
  return median(ts)
end

-- every tensor is made with the flush off, so a subnormal one holds
-- subnormals whatever the mode is when it is used
E.set_flush_denormal(false)
local function inputs(scale)
  return {
    a = E.randn({ D, D }, { seed = 1 }) * scale,
    b = E.randn({ D, D }, { seed = 2 }),
    g = E.randn({ D, D }, { seed = 3 }) * scale, -- an incoming gradient
    x = E.randn({ 128, D }, { seed = 4 }),
    w1 = E.randn({ D, 4 * D }, { seed = 5 }) * 0.02,
    w2 = E.randn({ 4 * D, D }, { seed = 6 }) * 0.02,
  }
end
local normal, subnormal = inputs(1), inputs(S)

local cases = {
  { "matmul (1024,1024)@(1024,1024)", function(t)
    local t0 = E.wall_time()
    local _ = E.matmul(t.a, t.b)
    return E.wall_time() - t0
  end },
  { "matmul backward, grad scaled", function(t)
    local a = t.b:detach():requires_grad(true)
    local b = E.randn({ D, D }, { seed = 7 }):requires_grad(true)
    local c = E.matmul(a, b)
    local t0 = E.wall_time()
    c:backward(t.g)
    return E.wall_time() - t0
  end },
  { "gelu backward (1024,1024), grad scaled", function(t)
    local x = t.b:detach():requires_grad(true)
    local y = E.gelu(x)
    local t0 = E.wall_time()
    y:backward(t.g)
    return E.wall_time() - t0
  end },
  { "MLP step, -logsigmoid(mean + m)", function(t)
    local w1 = t.w1:detach():requires_grad(true)
    local w2 = t.w2:detach():requires_grad(true)
    local t0 = E.wall_time()
    local h = E.gelu(E.matmul(t.x, w1))
    local z = E.matmul(h, w2):mean() + t.margin
    local L = -E.logsigmoid(z)
    L:backward()
    return E.wall_time() - t0
  end },
}
normal.margin, subnormal.margin = 0, 90

-- the MLP's gradient at the loss, to show it is subnormal (flush off) or 0 (on)
local function loss_grad(on)
  local z = (E.zeros({}) + 90):requires_grad(true)
  E.set_flush_denormal(on)
  local L = -E.logsigmoid(z)
  L:backward()
  E.set_flush_denormal(false)
  return z.grad:item()
end

local rows = {}
for i, c in ipairs(cases) do
  rows[i] = {}
  for _, on in ipairs({ false, true }) do
    E.set_flush_denormal(on)
    local n = time_of(function() return c[2](normal) end)
    local s = time_of(function() return c[2](subnormal) end)
    rows[i][on] = { n, s }
  end
end
E.set_flush_denormal(true)

local py = [[
import sys, time, torch
import torch.nn.functional as F
threads, reps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.set_flush_denormal(False)
S, D = 2.0 ** -130, 1024
def inputs(scale):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(a=r(D, D) * scale, b=r(D, D), g=r(D, D) * scale, x=r(128, D),
                w1=r(D, 4 * D) * 0.02, w2=r(4 * D, D) * 0.02)
normal, sub = inputs(1.0), inputs(S)
normal["m"], sub["m"] = 0.0, 90.0
def mm(t):
    t0 = time.perf_counter(); t["a"] @ t["b"]; return time.perf_counter() - t0
def mm_back(t):
    a = t["b"].clone().requires_grad_(); b = torch.randn(D, D).requires_grad_()
    c = a @ b
    t0 = time.perf_counter(); c.backward(t["g"]); return time.perf_counter() - t0
def gelu_back(t):
    x = t["b"].clone().requires_grad_(); y = F.gelu(x, approximate="tanh")
    t0 = time.perf_counter(); y.backward(t["g"]); return time.perf_counter() - t0
def mlp(t):
    w1 = t["w1"].clone().requires_grad_(); w2 = t["w2"].clone().requires_grad_()
    t0 = time.perf_counter()
    h = F.gelu(t["x"] @ w1, approximate="tanh")
    z = (h @ w2).mean() + t["m"]
    L = -F.logsigmoid(z); L.backward()
    return time.perf_counter() - t0
def med(fn, t):
    fn(t)
    ts = sorted(fn(t) for _ in range(reps))
    return 1000 * ts[(reps - 1) // 2]
for i, fn in enumerate([mm, mm_back, gelu_back, mlp]):
    for on in (False, True):
        torch.set_flush_denormal(on)
        print(i + 1, int(on), med(fn, normal), med(fn, sub))
]]

local function torch_rows()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(py)
  f:close()
  local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE"
  local p = io.popen(string.format("%s /usr/bin/python3 '%s' %d %d 2>/dev/null", env, script, threads, reps))
  local out = p and p:read("a") or ""
  if p then p:close() end
  os.remove(script)
  local t = {}
  for i, on, n, s in out:gmatch("(%d+) (%d) ([%d%.e%-]+) ([%d%.e%-]+)") do
    i = tonumber(i)
    t[i] = t[i] or {}
    t[i][on == "1"] = { tonumber(n), tonumber(s) }
  end
  return next(t) and t or nil
end
local trows = torch_rows()

print(string.format("Subnormal inputs (scaled by 2^-130) vs normal ones, %d threads, median of %d, ms:", threads, reps))
print(string.format("  gradient of -logsigmoid(90): flush off %.4g, flush on %.4g", loss_grad(false), loss_grad(true)))
print(string.format("  %-40s %-5s %9s %9s %7s | %9s %9s %7s", "op", "flush", "normal", "subnorm", "ratio",
  "torch n", "torch s", "ratio"))
for i, c in ipairs(cases) do
  for _, on in ipairs({ false, true }) do
    local n, s = rows[i][on][1], rows[i][on][2]
    local tail = "  (torch not available)"
    local tr = trows and trows[i] and trows[i][on]
    if tr then tail = string.format(" | %9.2f %9.2f %7.2f", tr[1], tr[2], tr[2] / tr[1]) end
    print(string.format("  %-40s %-5s %9.2f %9.2f %7.2f%s", c[1], on and "on" or "off", n, s, s / n, tail))
  end
end
for i, c in ipairs(cases) do
  local off_s, on_s = rows[i][false][2], rows[i][true][2]
  print(string.format("  %-40s subnormal inputs: flush off / on = %.2f", c[1], off_s / on_s))
end
