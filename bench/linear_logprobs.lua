-- bench/linear_logprobs.lua — the LM head's per-token log-probabilities,
-- forward and backward (the sum of log p, so that both h and W get their
-- gradient), at N = 1024 positions, C = 768, float32, for V = 50257 (GPT-2)
-- and V = 8192. Three ways, each in its own process so that its peak memory
-- is its own:
--   fused    E.linear_logprobs(h, W, labels): tiles of rows × tokens (what
--            CausalLM:logprobs runs now). Its backward reads the logits the
--            forward kept when they fit its keep budget (256 MiB: here
--            V = 8192, 34 MB, and V = 50257, 206 MB; the pool peak then
--            holds them) and recomputes them tile by tile otherwise
--   chunked  the Lua path CausalLM:logprobs ran before: per chunk of about
--            4M logits, matmul(h_chunk, Wᵀ) then token_logprobs, chunks
--            concatenated (each chunk's logits stay on the tape)
--   pytorch  F.linear + log_softmax + gather (its best CPU settings: passive
--            OpenMP waiting, glibc malloc told to keep freed memory)
-- Figures: median wall time of the forward and of the backward over `reps`
-- calls after one warm-up; "pool" the engine's peak tensor bytes above the
-- inputs (storage pool count); "rss" the peak resident memory above the
-- inputs (VmHWM − VmRSS, from /proc/self/status), comparable across the
-- three. The gradients' own size (dh + dW) is printed as the floor every
-- way pays. Also: the cost of CausalLM:logprobs's Lua label checks.
--   build/engine bench/linear_logprobs.lua [threads=2] [reps=5]
-- Prints figures and ratios; asserts nothing. Set OPENBLAS_CORETYPE first
-- (see AGENTS.md), or OpenBLAS may pick slow generic kernels.
local E = require("engine")

local N, C = 1024, 768
local MB = 1e6
local KEEP_BUDGET = 256 * 1024 * 1024 -- ops_linear_logprobs.c's LLP_KEEP_BYTES

-- VmRSS and VmHWM of this process, in bytes
local function rss()
  local f = io.open("/proc/self/status", "r")
  if not f then return 0, 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) * 1024, tonumber(s:match("VmHWM:%s*(%d+)")) * 1024
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- labels of the N positions: spread over the vocabulary, every one kept
local function labels(V)
  local lab = {}
  for i = 1, N do lab[i] = (i * 7919) % V end
  return lab
end

-- the chunked path CausalLM:logprobs ran before the fused op (its body, for
-- (N,C) hidden states and a flat list of labels)
local function chunked(h2, W, lab)
  local V = W:shape()[1]
  local kept_rows, kept_labels, gather_idx = {}, {}, {}
  for r = 1, #lab do
    local l = lab[r]
    if l >= 0 then
      kept_rows[#kept_rows + 1] = r - 1
      kept_labels[#kept_labels + 1] = l
      gather_idx[#gather_idx + 1] = #kept_rows + 1
    else
      gather_idx[#gather_idx + 1] = 1
    end
  end
  local K, n_all = #kept_rows, #lab
  local rows = K == n_all and h2 or E.embedding(h2, kept_rows)
  local labt = E.tensor(kept_labels)
  local Wt = W:transpose(1, 2)
  local chunk = math.max(1, (1 << 22) // V)
  local parts = {}
  for start = 1, K, chunk do
    local n = math.min(chunk, K - start + 1)
    local logits = E.matmul(K == n and rows or rows:narrow(1, start, n), Wt)
    parts[#parts + 1] = E.token_logprobs(logits, K == n and labt or labt:narrow(1, start, n))
  end
  local lp = #parts == 1 and parts[1] or E.cat(parts, 1)
  if K < n_all then lp = E.cat({ E.zeros({ 1 }, lp:dtype()), lp }, 1):gather(1, gather_idx) end
  return lp
end

-- child: one way, one V; prints "fwd_ms bwd_ms pool_bytes rss_bytes"
local function child(way, V, threads, reps)
  E.set_threads(threads)
  local h = (E.randn({ N, C }, { seed = 1 }) * 0.05):detach():requires_grad(true)
  local W = E.randn({ V, C }, { seed = 2 }):requires_grad(true)
  local lab = labels(V)
  local labt = E.tensor(lab, "float64")
  collectgarbage()
  local base_pool = E.memory_stats().bytes_in_use
  local base_rss = rss()
  local fwd, bwd = {}, {}
  for i = 0, reps do
    h:zero_grad()
    W:zero_grad()
    local t0 = E.wall_time()
    local lp = way == "fused" and E.linear_logprobs(h, W, labt) or chunked(h, W, lab)
    local t1 = E.wall_time()
    lp:sum():backward()
    local t2 = E.wall_time()
    if i > 0 then fwd[i], bwd[i] = t1 - t0, t2 - t1 end
    lp = nil
    collectgarbage()
  end
  local _, hwm = rss()
  print(string.format("%.3f %.3f %d %d", 1000 * median(fwd), 1000 * median(bwd),
    E.memory_stats().peak_in_use - base_pool, hwm - base_rss))
end

local TORCH = [[
import sys, time, torch
import torch.nn.functional as F
threads, V, reps, N, C = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
def rss():
    s = open("/proc/self/status").read()
    get = lambda k: int(s.split(k + ":")[1].split()[0]) * 1024
    return get("VmRSS"), get("VmHWM")
g = torch.Generator().manual_seed(0)
h = (torch.randn(N, C, generator=g) * 0.05).requires_grad_()
W = torch.randn(V, C, generator=g).requires_grad_()
lab = ((torch.arange(N) + 1) * 7919) % V
base, _ = rss()
fwd, bwd = [], []
for i in range(reps + 1):
    h.grad = None  # as the engine's zero_grad: the backward makes fresh ones
    W.grad = None
    t0 = time.perf_counter()
    lp = F.log_softmax(F.linear(h, W), dim=-1).gather(1, lab[:, None]).squeeze(1)
    t1 = time.perf_counter()
    lp.sum().backward()
    t2 = time.perf_counter()
    if i > 0:
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    del lp
fwd.sort(); bwd.sort()
_, hwm = rss()
print("%.3f %.3f 0 %d" % (1000 * fwd[(len(fwd) - 1) // 2], 1000 * bwd[(len(bwd) - 1) // 2], hwm - base))
]]

if arg[1] == "--child" then
  child(arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]))
  return
end

if not os.getenv("OPENBLAS_CORETYPE") then
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end
local threads = tonumber(arg[1]) or 2
local reps = tonumber(arg[2]) or 5
local engine_bin = arg[-1] or "build/engine"
local script = debug.getinfo(1, "S").source:match("^@(.*)$")
local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE "
  .. "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
local torch_py = os.tmpname()
do
  local f = assert(io.open(torch_py, "w"))
  f:write(TORCH)
  f:close()
end

-- run one way in its own process; nil when it failed (PyTorch missing)
local function measure(way, V)
  local cmd
  if way == "pytorch" then
    cmd = string.format("%s /usr/bin/python3 %s %d %d %d %d %d 2>/dev/null", env, torch_py, threads, V, reps, N, C)
  else
    cmd = string.format("OMP_NUM_THREADS=%d %s %s --child %s %d %d %d", threads, engine_bin, script, way, V,
      threads, reps)
  end
  local p = io.popen(cmd)
  local out = p and p:read("a") or ""
  if p then p:close() end
  local f, b, pool, r = out:match("([%d.]+) ([%d.]+) (%-?%d+) (%-?%d+)")
  if not f then return nil end
  return { fwd = tonumber(f), bwd = tonumber(b), pool = tonumber(pool), rss = tonumber(r) }
end

print(string.format("LM head log-probs, forward + backward: N=%d C=%d float32, %d threads, median of %d", N, C,
  threads, reps))
for _, V in ipairs({ 50257, 8192 }) do
  local grads = (N * C + V * C) * 4
  print(string.format("\nV=%d   (logits %.0f MB: fused %s; the gradients dh + dW alone: %.0f MB)", V,
    N * V * 4 / MB, N * V * 4 <= KEEP_BUDGET and "keeps them for the backward" or "recomputes them", grads / MB))
  print("  way        fwd ms    bwd ms  total ms   pool peak MB   rss peak MB")
  local res = {}
  for _, way in ipairs({ "fused", "chunked", "pytorch" }) do
    local r = measure(way, V)
    res[way] = r
    if r then
      print(string.format("  %-8s %8.1f  %8.1f  %8.1f   %12s   %11.0f", way, r.fwd, r.bwd, r.fwd + r.bwd,
        way == "pytorch" and "-" or string.format("%.0f", r.pool / MB), r.rss / MB))
    else
      print(string.format("  %-8s not available", way))
    end
  end
  local f = res.fused
  for _, other in ipairs({ "chunked", "pytorch" }) do
    local o = res[other]
    if f and o then
      print(string.format("  fused/%s: time %.2fx (fwd %.2fx, bwd %.2fx), rss peak %.2fx", other,
        (f.fwd + f.bwd) / (o.fwd + o.bwd), f.fwd / o.fwd, f.bwd / o.bwd, f.rss / o.rss))
    end
  end
end
os.remove(torch_py)

-- the label checks CausalLM:logprobs does in Lua before the op (B*T labels)
local lab = {}
for b = 1, 16 do
  lab[b] = {}
  for t = 1, 1024 do lab[b][t] = (b * t) % 50257 end
end
local t0 = E.wall_time()
local floor, mtype = math.floor, math.type
for _ = 1, 10 do
  for b = 1, 16 do
    local row = lab[b]
    for t = 1, 1024 do
      local l = row[t]
      if mtype(l) ~= "integer" and (mtype(l) ~= "float" or l ~= floor(l)) then error("not an integer") end
      if l >= 50257 then error("out of range") end
    end
  end
end
print(string.format("\nCausalLM:logprobs's Lua label checks: %.2f ms per 16x1024 labels", (E.wall_time() - t0) * 100))
