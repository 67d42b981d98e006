-- bench/linear.lua — the fused linear op (E.linear: one node, the product
-- then the bias added in place) against the two
-- ops it replaced in nn.Linear / nn.Conv1D (E.matmul(x, W) then + b), in
-- the same invocation:
--   time    forward + backward of nn.Conv1D at GPT-2 small shapes,
--           (4,256,768)->3072 (c_fc) and (4,256,3072)->768 (c_proj), with x,
--           W and b requiring grad and a fixed output gradient; medians of
--           `reps` interleaved repetitions (the machine is shared: medians,
--           and old and fused alternate so drift hits both alike), and the
--           ratio of the medians per phase; PyTorch's F.linear (same shapes,
--           threads and repetitions) beside them when /usr/bin/python3 has it
--   memory  the bytes the tape holds between forward and backward of a DPO
--           step on bench/memory.lua's default config (GPT-2 V=257 d=128
--           L=4 H=4, 32 rows x 192 tokens; its way: pool bytes in use after
--           the forward, once Lua's collector has run, minus those before),
--           with nn.Linear / nn.Conv1D as they are (fused) and with their old
--           forward put back for the measurement; PyTorch's figure from
--           bench/memory_torch.py for the engine/pytorch ratios
-- Prints figures and ratios; asserts nothing.
--   build/engine bench/linear.lua [threads=2] [reps=15] [torch=1]
local E = require("engine")
local nn = require("engine.nn")

local threads = tonumber(arg[1]) or 2
local reps = tonumber(arg[2]) or 15
local with_torch = (arg[3] or "1") ~= "0"
E.set_threads(threads)
if not os.getenv("OPENBLAS_CORETYPE") then
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end
assert(E.linear, "bench/linear.lua: this build has no E.linear (lua/binding_linear.c not registered)")

local here = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."

local median = dofile(here .. "/bench/stats.lua").median

-- the forward nn.Linear and nn.Conv1D had before E.linear (for the memory figure)
local function old_linear_forward(self, x)
  local y = E.matmul(x, self.weight:transpose(1, 2))
  if self.bias then y = y + self.bias end
  if self.adapter then y = self.adapter:add(self, x, y) end
  return y
end
local function old_conv1d_forward(self, x)
  local y = E.matmul(x, self.weight)
  if self.bias then y = y + self.bias end
  if self.adapter then y = self.adapter:add(self, x, y) end
  return y
end

-- ---- time: forward + backward of a Conv1D ------------------------------------------

local shapes = { { B = 4, T = 256, C = 768, O = 3072, name = "c_fc   (4,256,768)->3072" },
  { B = 4, T = 256, C = 3072, O = 768, name = "c_proj (4,256,3072)->768" } }

local function engine_times(s)
  local m = nn.Conv1D(s.C, s.O, { generator = E.Generator(1) })
  local x = E.randn({ s.B, s.T, s.C }, { seed = 2 }):requires_grad(true)
  local g = E.randn({ s.B, s.T, s.O }, { seed = 3 })
  local paths = {
    old = function() return E.matmul(x, m.weight) + m.bias end,
    fused = function() return m(x) end,
  }
  local t = { old = { fwd = {}, bwd = {}, all = {} }, fused = { fwd = {}, bwd = {}, all = {} } }
  local function once(name, record)
    x:zero_grad()
    m.weight:zero_grad()
    m.bias:zero_grad()
    local t0 = E.wall_time()
    local y = paths[name]()
    local t1 = E.wall_time()
    y:backward(g)
    local t2 = E.wall_time()
    y = nil
    if record then
      local r = t[name]
      r.fwd[#r.fwd + 1], r.bwd[#r.bwd + 1], r.all[#r.all + 1] = 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t2 - t0)
    end
    collectgarbage()
  end
  for _ = 1, 2 do
    once("old", false)
    once("fused", false)
  end
  for i = 1, reps do -- alternate which goes first
    local a, b = "old", "fused"
    if i % 2 == 0 then a, b = b, a end
    once(a, true)
    once(b, true)
  end
  local out = {}
  for _, p in ipairs({ "old", "fused" }) do
    out[p] = { fwd = median(t[p].fwd), bwd = median(t[p].bwd), all = median(t[p].all) }
  end
  return out
end

local TORCH_TIMES = [[
import sys, time, statistics, torch
import torch.nn.functional as F
threads, reps, B, T, C, O = map(int, sys.argv[1:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
x = torch.randn(B, T, C, requires_grad=True)
W = (torch.randn(O, C) * 0.02).requires_grad_()
b = torch.zeros(O, requires_grad=True)
g = torch.randn(B, T, O)
fw, bw = [], []
for i in range(reps + 2):
    for p in (x, W, b):
        p.grad = None
    t0 = time.perf_counter(); y = F.linear(x, W, b); t1 = time.perf_counter()
    y.backward(g); t2 = time.perf_counter()
    if i >= 2:
        fw.append(1e3 * (t1 - t0)); bw.append(1e3 * (t2 - t1))
tot = [a + c for a, c in zip(fw, bw)]
print("fwd=%.3f bwd=%.3f all=%.3f" % (statistics.median(fw), statistics.median(bw), statistics.median(tot)))
]]

local function torch_times(s)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(TORCH_TIMES)
  f:close()
  local cmd = string.format("OMP_NUM_THREADS=%d OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 %s %d %d %d %d %d %d 2>&1",
    threads, path, threads, reps, s.B, s.T, s.C, s.O)
  local p = io.popen(cmd)
  local out = p and p:read("a") or ""
  if p then p:close() end
  os.remove(path)
  local r = {}
  for k, v in out:gmatch("(%a+)=([%d.]+)") do r[k] = tonumber(v) end
  if not r.all then return nil, out end
  return r
end

print(string.format("nn.Conv1D forward + backward, ms (median of %d, %d threads; x, W, b require grad)", reps, threads))
print(string.format("  %-26s %-8s %9s %9s %9s %9s %12s", "shape", "phase", "two-op", "fused", "pytorch", "fused/old",
  "fused/torch"))
for _, s in ipairs(shapes) do
  local e = engine_times(s)
  local tt, terr = nil, nil
  if with_torch then tt, terr = torch_times(s) end
  for _, ph in ipairs({ "fwd", "bwd", "all" }) do
    print(string.format("  %-26s %-8s %9.2f %9.2f %9s %9.3f %12s", s.name, ph == "all" and "fwd+bwd" or ph,
      e.old[ph], e.fused[ph], tt and string.format("%.2f", tt[ph]) or "-", e.fused[ph] / e.old[ph],
      tt and string.format("%.3f", e.fused[ph] / tt[ph]) or "-"))
  end
  if with_torch and not tt then print("  pytorch: not available: " .. (terr or ""):sub(1, 200)) end
end

-- ---- memory: the tape between forward and backward of a DPO step -----------------

local D = dofile(here .. "/bench/dpo_batch.lua")(here)
local cfg = { V = 257, C = 128, L = 4, H = 4, npos = 192, inner = 512, rows = 32, T = 192, prompt = 64 }

local model = E.models.new({ model_type = "gpt2", vocab_size = cfg.V, n_embd = cfg.C, n_layer = cfg.L,
  n_head = cfg.H, n_positions = cfg.npos, n_inner = cfg.inner }, { seed = 0 })
local batch = D.with_ref(model, D.full_batch(cfg.rows, cfg.T, cfg.prompt, 2, cfg.V))
D.saved_bytes(model, batch) -- warm-up
local fused_saved = D.saved_bytes(model, batch)
local lin_fwd, conv_fwd = nn.Linear.forward, nn.Conv1D.forward
nn.Linear.forward, nn.Conv1D.forward = old_linear_forward, old_conv1d_forward
local old_saved = D.saved_bytes(model, batch)
nn.Linear.forward, nn.Conv1D.forward = lin_fwd, conv_fwd

local torch_saved
if with_torch then
  local cmd = string.format("OMP_NUM_THREADS=%d OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 %s/bench/memory_torch.py "
    .. "%d %d %d %d %d %d %d %d %d 2>&1", threads, here, threads, cfg.V, cfg.C, cfg.L, cfg.H, cfg.npos, cfg.rows,
    cfg.T, cfg.prompt)
  local p = io.popen(cmd)
  local out = p and p:read("a") or ""
  if p then p:close() end
  torch_saved = tonumber(out:match("saved=(%d+)"))
end

print(string.format("\nactivations saved for backward, DPO step, GPT-2 V=%d d=%d L=%d H=%d, %d rows x %d tokens (MB)",
  cfg.V, cfg.C, cfg.L, cfg.H, cfg.rows, cfg.T))
print(string.format("  two-op (matmul + add)  %9.2f%s", old_saved / 1e6,
  torch_saved and string.format("   engine/pytorch %.3f", old_saved / torch_saved) or ""))
print(string.format("  fused (E.linear)       %9.2f%s", fused_saved / 1e6,
  torch_saved and string.format("   engine/pytorch %.3f", fused_saved / torch_saved) or ""))
if torch_saved then print(string.format("  pytorch                %9.2f", torch_saved / 1e6)) end
print(string.format("  fused/two-op = %.3f (%.2f MB less)", fused_saved / old_saved, (old_saved - fused_saved) / 1e6))
