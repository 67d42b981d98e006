-- bench/model_step.lua — training steps of a GPT-2 (forward, next-token
-- cross-entropy, backward, AdamW) in the engine and in PyTorch
-- (bench/model_step_torch.py: the same architecture written as plain torch
-- ops, the same weights, token batch, loss and optimizer), in one run, on
-- issue 3's two configs:
--   a   vocab 8192, d 256, 4 layers, 4 heads, T 128, batch 8
--   b   GPT-2 small shapes (vocab 50257, d 768, 12 layers, 12 heads,
--       124M parameters), T 256, batch 4
-- Both models are random (E.models.new, Hugging Face's GPT-2 init, eval mode:
-- no dropout); the engine writes its weights to a temporary safetensors file
-- that PyTorch reads, so the two start from the same model and their losses
-- can be compared. The token batch is id[b,t] = ((b*T + t)·2654435761 mod
-- 2^32) mod V (0-based b, t) on both sides.
--
-- The engine's step is what a recipe runs (engine/lm.lua's nll): the
-- log-probabilities of the next tokens through the fused head,
-- model:logprobs(ids, labels) (E.linear_logprobs: the (B,T,V) logits never
-- exist), loss = -sum / (B·(T-1)), loss:backward(), E.optim.AdamW over
-- model:parameters(). With head=ce it takes the logits instead,
-- E.cross_entropy(model:forward(ids), targets) (the last position ignored).
-- PyTorch's: h[:, :-1] @ wteᵀ, F.cross_entropy, backward, torch.optim.AdamW.
-- AdamW: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on 2-D
-- tensors only (the engine's default rule) on both sides.
--
-- Figures per config:
--   step time   median over `steps` timed steps after `warmup` ones. PyTorch
--               runs as a coprocess (model_step_torch.py serve) that steps
--               when told, so the timed steps alternate one by one (engine,
--               PyTorch, PyTorch, engine, ...) and the two share whatever
--               else the machine is doing; the ratio engine/PyTorch is the
--               median of the pairs' ratios (issue 3's aim: <= 0.67, floor
--               1.0). Each process's own steps are printed too.
--   FLOPs       per step = 6·P·N + 12·L·T²·d·B, N = B·T tokens, P = the
--               parameters that take part in matmuls: every parameter but the
--               position embeddings (a lookup); the tied token embedding is
--               counted once, as the head's matmul. The attention term counts
--               the full T×T scores (no causal halving), as PaLM's MFU does.
--   MFU         achieved GFLOP/s over the sgemm peak measured in the same run:
--               E.matmul of (2048x768)x(768x3072) on the same threads, the
--               median of 5 after 2 warm-ups, taken before and after the
--               timed steps; MFU uses the larger of the two (what else runs
--               on the machine only ever lowers it) (issue 3's aim at config
--               b: >= 70%)
--   memory      VmHWM of each process over the timed steps (reset through
--               /proc/self/clear_refs after the warm-up), and the engine pool's
--               peak bytes in use (E.memory_stats().peak_in_use, since the
--               process started: model, grads, moments and the step's
--               activations); what the step needs is 16·P bytes (float32
--               parameters, gradients and AdamW's two moments, all P) plus
--               the bytes the tape holds between forward and backward
--               (measured after the timed steps, as bench/memory.lua does);
--               issue 3's target: pool peak <= 1.3x that. bench/memory.lua
--               breaks memory down further.
--
-- mode=profile: where the engine's step time goes (engine only, no PyTorch):
--   phases      zero_grad, forward + loss, backward, AdamW step: medians
--   forward     the model's pieces timed in place by wrapping, inside this
--               process only, nn.Conv1D.forward (split by shape: qkv, attn
--               proj, fc, fc2), nn.LayerNorm.forward, nn.Embedding.forward,
--               E.attention, the head split/merge helpers, E.gelu and
--               E.linear_logprobs; "other" is the rest (residual adds,
--               narrow, Lua)
--   ops         each piece alone at the model's shapes: forward and backward
--               (y:backward(g) with a fixed random g) per call, times the
--               number of calls per step, and GFLOP/s for the matmuls
--
--   OMP_WAIT_POLICY=PASSIVE build/engine bench/model_step.lua [key=value ...]
--     configs=a,b  threads=2  mode=compare|profile|both  head=logprobs|ce
--     warmup=N steps=N (defaults per config: a 2/20, b 2/3)
--     torch=0 (the engine alone: no PyTorch process, e.g. under perf)
-- PyTorch runs with its best CPU settings here: its own thread count, passive
-- OpenMP waiting, glibc malloc told to keep freed memory. Run the engine with
-- OMP_WAIT_POLICY=PASSIVE too on a shared machine: spinning OpenMP threads
-- that share cores with other work slow it down many times. Prints figures;
-- asserts nothing.
local E = require("engine")
local nn = require("engine.nn")
local base = require("engine.models.causal_lm")

if not os.getenv("OPENBLAS_CORETYPE") then
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end

local args = { configs = "a,b", threads = "2", mode = "compare", head = "logprobs", torch = "1" }
local known = { configs = true, threads = true, mode = true, head = true, torch = true, warmup = true, steps = true }
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  if not k then error("bench/model_step.lua: arguments are key=value, got '" .. a .. "'") end
  if not known[k] then
    error("bench/model_step.lua: unknown key '" .. k .. "' (configs, threads, mode, head, torch, warmup, steps)")
  end
  args[k] = v
end
for _, k in ipairs({ "threads", "warmup", "steps" }) do
  local n = args[k] and math.tointeger(tonumber(args[k]))
  if args[k] and not (n and n >= (k == "warmup" and 0 or 1)) then
    error("bench/model_step.lua: " .. k .. " must be an integer >= " .. (k == "warmup" and 0 or 1) .. ", got "
      .. args[k])
  end
end
local threads = tonumber(args.threads)
E.set_threads(threads)
local mode = args.mode
if mode ~= "compare" and mode ~= "profile" and mode ~= "both" then
  error("bench/model_step.lua: mode must be compare, profile or both, got " .. mode)
end
if args.head ~= "logprobs" and args.head ~= "ce" then
  error("bench/model_step.lua: head must be logprobs or ce, got " .. args.head)
end

local configs = {
  a = { name = "GPT-2 V=8192 d=256 L=4 H=4, T=128, B=8", V = 8192, C = 256, L = 4, H = 4, T = 128, B = 8,
    warmup = 2, steps = 20 },
  b = { name = "GPT-2 small shapes V=50257 d=768 L=12 H=12, T=256, B=4", V = 50257, C = 768, L = 12, H = 12,
    T = 256, B = 4, warmup = 2, steps = 3 },
}
local NPOS = 1024

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE "
  .. "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

local median = dofile(here .. "/stats.lua").median

local proc = dofile(here .. "/proc_memory.lua")
local status, reset_hwm = proc.status_kb, proc.reset_hwm

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l")
  f:close()
  return s:match("^(%S+ %S+ %S+)")
end

-- the sgemm peak: GFLOP/s of E.matmul (2048x768)x(768x3072)
-- (its operands are made and released here, so that they do not count in
-- the pool's peak before the first step)
local function sgemm_peak()
  local a, b = E.randn({ 2048, 768 }, { seed = 11 }), E.randn({ 768, 3072 }, { seed = 12 })
  local t = {}
  for i = 1, 7 do
    local t0 = E.wall_time()
    local y = E.matmul(a, b)
    local dt = E.wall_time() - t0
    y:release()
    if i > 2 then t[#t + 1] = dt end
  end
  a:release()
  b:release()
  return 2 * 2048 * 768 * 3072 / median(t) / 1e9
end

-- ---- the model, the batch and the step -----------------------------------------

local function make(c)
  local model = E.models.new({ model_type = "gpt2", vocab_size = c.V, n_embd = c.C, n_layer = c.L, n_head = c.H,
    n_positions = NPOS }, { seed = 0 })
  local ids, labels, targets = {}, {}, {}
  for b = 1, c.B do
    ids[b], labels[b], targets[b] = {}, {}, {}
    for t = 1, c.T do ids[b][t] = (((b - 1) * c.T + (t - 1)) * 2654435761) % 4294967296 % c.V end
    for t = 1, c.T do
      labels[b][t] = t < c.T and ids[b][t + 1] or -1
      targets[b][t] = t < c.T and ids[b][t + 1] or -100
    end
  end
  local s = {
    model = model, ids = E.tensor(ids), labels = E.tensor(labels, "float64"), targets = E.tensor(targets),
    n = c.B * (c.T - 1),
  }
  s.opt = E.optim.AdamW(model:parameters(), { lr = 1e-4, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01 })
  s.numel = s.opt.params:numel()
  s.matmul_params = s.numel - NPOS * c.C
  return s
end

-- the loss of the step (a scalar tensor) on s's batch
local function loss_of(s)
  if args.head == "ce" then return E.cross_entropy(s.model:forward(s.ids), s.targets) end
  return -s.model:logprobs(s.ids, s.labels):sum() / s.n
end

local function step(s)
  s.opt:zero_grad()
  local loss = loss_of(s)
  local v = loss:item()
  loss:backward()
  s.opt:step()
  return v
end

local function flops(c, s)
  return 6 * s.matmul_params * c.B * c.T + 12 * c.L * c.T * c.T * c.C * c.B
end

-- ---- PyTorch -------------------------------------------------------------------

-- PyTorch as a coprocess (model_step_torch.py serve): commands go through a
-- FIFO to its stdin, answers come back through a pipe, so that engine and
-- PyTorch steps can alternate one by one. -> peer, or nil, message
local Peer = {}
Peer.__index = Peer

local function parse(line)
  local f = {}
  for k, v in (line or ""):gmatch("([%w_]+)=([%d%.%-naif]+)") do f[k] = tonumber(v) end
  return f
end

local function torch_start(c, warmup, weights)
  local fifo = os.tmpname()
  os.remove(fifo)
  if not os.execute("mkfifo " .. fifo) then return nil, "mkfifo failed" end
  local cmd = string.format("%s /usr/bin/python3 %s/model_step_torch.py %d %d %d %d %d %d %d %d %d 0 %s serve "
    .. "< %s 2>&1", env, here, threads, c.V, c.C, c.L, c.H, NPOS, c.B, c.T, warmup, weights or "-", fifo)
  local out = io.popen(cmd, "r")
  local inp = out and io.open(fifo, "w") -- blocks until the shell opens the FIFO to read
  os.remove(fifo)
  if not (out and inp) then return nil, "cannot start " .. cmd end
  inp:setvbuf("line")
  local self = setmetatable({ out = out, inp = inp }, Peer)
  local lines = {}
  while true do -- anything before "ready" (a Python error, a missing torch) is kept for the message
    local l = out:read("l")
    if not l then
      self:close()
      return nil, table.concat(lines, "\n")
    end
    if l:match("^ready") then
      local f = parse(l)
      self.loss_first, self.params = f.loss_first, f.params
      return self
    end
    lines[#lines + 1] = l
  end
end

function Peer:send(cmd)
  self.inp:write(cmd, "\n")
  local l = self.out:read("l")
  if not l or l:match("^error") or l:match("Traceback") then
    error("model_step_torch.py: '" .. cmd .. "' got " .. tostring(l) .. "\n" .. (self.out:read("a") or ""))
  end
  return parse(l)
end

function Peer:close()
  if self.inp then pcall(self.inp.write, self.inp, "end\n") end
  local f = {}
  if self.inp then self.inp:close() end
  if self.out then
    f = parse(self.out:read("a"))
    self.out:close()
  end
  self.inp, self.out = nil, nil
  return f
end

-- ---- compare -------------------------------------------------------------------

local function compare(key, c)
  local warmup = tonumber(args.warmup) or c.warmup
  local steps = tonumber(args.steps) or c.steps
  local s = make(c)
  local F = flops(c, s)
  print(string.format("config %s: %s, %d threads, head %s", key, c.name, threads,
    args.head == "ce" and "E.cross_entropy on logits" or "model:logprobs (fused)"))
  print(string.format("  %.2fM parameters (%.2fM in matmuls), %d tokens/step; FLOPs/step = 6*P*N + 12*L*T^2*d*B"
    .. " = %.1f + %.1f = %.1f GFLOP", s.numel / 1e6, s.matmul_params / 1e6, c.B * c.T,
    6 * s.matmul_params * c.B * c.T / 1e9, 12 * c.L * c.T * c.T * c.C * c.B / 1e9, F / 1e9))
  local peer, err
  if args.torch ~= "0" then
    local weights = os.tmpname()
    assert(E.safetensors.save(weights, s.model:state_tensors()))
    peer, err = torch_start(c, warmup, weights) -- loads the weights and runs its warm-up alone
    os.remove(weights)
  else
    err = "skipped (torch=0)"
  end
  local peak_before = E.memory_stats().peak_in_use
  local peaks = { sgemm_peak() }
  local load0 = loadavg()
  local first
  for i = 1, warmup do
    local v = step(s)
    first = first or v
  end
  local hwm_ok = reset_hwm()
  if peer then peer:send("reset") end
  -- timed steps, alternating: engine then PyTorch, PyTorch then engine, ...
  local eng, pt, ratio, last, t_last = {}, {}, {}, nil, nil
  for i = 1, steps do
    local function run_engine()
      local t0 = E.wall_time()
      last = step(s)
      eng[i] = 1000 * (E.wall_time() - t0)
    end
    local function run_torch()
      if not peer then return end
      local f = peer:send("step")
      pt[i], t_last = f.ms, f.loss
    end
    if i % 2 == 1 then
      run_engine()
      run_torch()
    else
      run_torch()
      run_engine()
    end
    if pt[i] then ratio[i] = eng[i] / pt[i] end
  end
  local e_hwm = hwm_ok and status("VmHWM") or nil
  local tf = peer and peer:close() or {}
  peaks[2] = sgemm_peak()
  local mem = E.memory_stats()
  -- the bytes the tape holds between forward and backward (activations
  -- saved for backward, and the batch), as bench/memory.lua counts them
  s.opt:zero_grad()
  collectgarbage()
  local a0 = E.memory_stats().bytes_in_use
  local saved
  do
    local loss = loss_of(s)
    collectgarbage()
    saved = E.memory_stats().bytes_in_use - a0
    loss:backward()
  end
  s.opt:zero_grad()
  local peak = math.max(peaks[1], peaks[2])
  local function list(xs)
    local o = {}
    for i, x in ipairs(xs) do o[i] = string.format("%.0f", x) end
    return table.concat(o, " ")
  end
  print(string.format("  load before %s, after %s; sgemm peak %.1f / %.1f GFLOP/s (before / after), using %.1f",
    load0, loadavg(), peaks[1], peaks[2], peak))
  local e_ms = median(eng)
  print(string.format("  engine   %9.1f ms/step  %6.1f GFLOP/s  MFU %5.1f%%  loss %.6f -> %.6f (after %d steps)"
    .. "  [steps: %s]", e_ms, F / e_ms / 1e6, 100 * F / e_ms / 1e6 / peak, first or 0 / 0, last, warmup + steps,
    list(eng)))
  if #ratio == steps then
    local t_ms = median(pt)
    print(string.format("  pytorch  %9.1f ms/step  %6.1f GFLOP/s  MFU %5.1f%%  loss %.6f -> %.6f  [steps: %s]", t_ms,
      F / t_ms / 1e6, 100 * F / t_ms / 1e6 / peak, peer.loss_first or 0 / 0, t_last, list(pt)))
    print(string.format("  ratio engine/pytorch = %.3f (median of %d alternating pairs; ratio of medians %.3f; "
      .. "aim <= 0.67, floor 1.0)%s", median(ratio), steps, e_ms / t_ms,
      key == "b" and string.format("; MFU aim at b >= 70%%") or ""))
  else
    print("  pytorch: not available: " .. tostring(err):sub(1, 600))
  end
  print(string.format("  memory MB: engine VmHWM %s, pool peak in use %.1f%s; pytorch VmHWM %s; VmHWM "
    .. "engine/pytorch = %s", e_hwm and string.format("%.1f", e_hwm * 1024 / 1e6) or "-", mem.peak_in_use / 1e6,
    mem.peak_in_use > peak_before and "" or " (reached before the steps)",
    (tf.hwm_kb or -1) > 0 and string.format("%.1f", tf.hwm_kb * 1024 / 1e6) or "-",
    (e_hwm and (tf.hwm_kb or -1) > 0) and string.format("%.3f", e_hwm / tf.hwm_kb) or "-"))
  local need = 16 * s.numel + saved
  print(string.format("  engine needs %.1f MB = params+grads+AdamW moments %.1f + saved for backward %.1f; "
    .. "pool peak / needed = %.3f (target <= 1.3)", need / 1e6, 16 * s.numel / 1e6, saved / 1e6,
    mem.peak_in_use / need))
end

-- ---- profile -------------------------------------------------------------------

-- wrap tbl[key] with a timer that adds its wall time to acc[label(...)];
-- returns the function that undoes it
local function wrap(tbl, key, acc, label)
  local orig = tbl[key]
  tbl[key] = function(...)
    local t0 = E.wall_time()
    local r = table.pack(orig(...))
    local l = label(...)
    acc[l] = (acc[l] or 0) + (E.wall_time() - t0)
    return table.unpack(r, 1, r.n)
  end
  return function() tbl[key] = orig end
end

-- forward + loss with the model's pieces timed; -> acc (label -> s), total s
local function forward_pieces(s, c)
  local acc = {}
  local C = c.C
  local names = { [3 * C] = "qkv linear x·W(C,3C)+b", [4 * C] = "fc linear x·W(C,4C)+b" }
  local undo = {
    wrap(nn.Conv1D, "forward", acc, function(m)
      if m.in_features == 4 * C then return "fc2 linear x·W(4C,C)+b" end
      return names[m.out_features] or "attn proj linear x·W(C,C)+b"
    end),
    wrap(nn.LayerNorm, "forward", acc, function() return "layer norm" end),
    wrap(nn.Embedding, "forward", acc, function() return "embeddings (wte, wpe)" end),
    wrap(E, "attention", acc, function() return "attention (E.attention)" end),
    wrap(base, "split_heads", acc, function() return "split/merge heads" end),
    wrap(base, "merge_heads", acc, function() return "split/merge heads" end),
    wrap(E, "gelu", acc, function() return "gelu" end),
    wrap(E, "linear_logprobs", acc, function() return "LM head (fused logprobs)" end),
    wrap(E, "cross_entropy", acc, function() return "cross_entropy" end),
  }
  local ok, err = pcall(function()
    s.opt:zero_grad()
    local t0 = E.wall_time()
    local loss = loss_of(s)
    loss:item()
    acc.total = E.wall_time() - t0
    loss:backward()
    s.opt:step()
  end)
  for i = #undo, 1, -1 do undo[i]() end
  if not ok then error(err, 0) end
  return acc
end

-- forward and backward time of fwd(inputs) alone: median over reps (after
-- one warm-up) -> fwd s, bwd s
local function op_time(leaves, fwd, reps)
  local g
  local tf, tb = {}, {}
  for r = 0, reps do
    for _, x in ipairs(leaves) do x:zero_grad() end
    local t0 = E.wall_time()
    local y = fwd()
    local t1 = E.wall_time()
    g = g or E.randn(y:shape(), { seed = 5 })
    y:backward(g)
    local t2 = E.wall_time()
    if r > 0 then tf[r], tb[r] = t1 - t0, t2 - t1 end
  end
  return median(tf), median(tb)
end

local function leaf(shape, seed, scale)
  return (E.randn(shape, { seed = seed }) * (scale or 1)):requires_grad(true)
end

local function op_table(s, c, reps)
  local B, T, C, H, V, L = c.B, c.T, c.C, c.H, c.V, c.L
  local D = C // H
  local N = B * T
  local rows = {}
  local function add(name, count, leaves, fwd, mm_flops)
    local f, b = op_time(leaves, fwd, reps)
    rows[#rows + 1] = { name = name, count = count, f = f, b = b, flops = mm_flops }
  end
  local x = leaf({ B, T, C }, 1)
  local function linear(name, fan_in, fan_out, seed)
    local xin = fan_in == C and x or leaf({ B, T, fan_in }, seed + 100)
    local w, bias = leaf({ fan_in, fan_out }, seed, 0.02), leaf({ fan_out }, seed + 1, 0)
    add(name, L, { xin, w, bias }, function() return E.matmul(xin, w) + bias end, 2 * N * fan_in * fan_out)
  end
  local wte, wpe = leaf({ V, C }, 2, 0.02), leaf({ NPOS, C }, 3, 0.02)
  local pos = {}
  for b = 1, B do
    pos[b] = {}
    for t = 1, T do pos[b][t] = t - 1 end
  end
  pos = E.tensor(pos)
  add("embeddings wte[ids] + wpe[pos]", 1, { wte, wpe }, function()
    return E.embedding(wte, s.ids) + E.embedding(wpe, pos)
  end)
  local lw, lb = E.ones({ C }):requires_grad(true), E.zeros({ C }):requires_grad(true)
  add("layer norm (B,T,C)", 2 * L + 1, { x, lw, lb }, function() return E.layer_norm(x, lw, lb, 1e-5) end)
  linear("qkv linear x·W(C,3C)+b", C, 3 * C, 10)
  local qkv = leaf({ B, T, 3 * C }, 20, 0.5)
  add("attention + split/merge heads", L, { qkv }, function()
    local q = base.split_heads(qkv:narrow(3, 1, C), H, D)
    local k = base.split_heads(qkv:narrow(3, C + 1, C), H, D)
    local v = base.split_heads(qkv:narrow(3, 2 * C + 1, C), H, D)
    return base.merge_heads(E.attention(q, k, v, { causal = true, scale = 1 / math.sqrt(D) }))
  end, 4 * B * H * T * T * D)
  local q, k, v = leaf({ B, H, T, D }, 21, 0.5), leaf({ B, H, T, D }, 22, 0.5), leaf({ B, H, T, D }, 23)
  add("  of which E.attention alone (contiguous q,k,v)", L, { q, k, v }, function()
    return E.attention(q, k, v, { causal = true, scale = 1 / math.sqrt(D) })
  end, 4 * B * H * T * T * D)
  linear("attn proj linear x·W(C,C)+b", C, C, 30)
  local x2 = leaf({ B, T, C }, 40)
  add("residual add (B,T,C)", 2 * L, { x, x2 }, function() return x + x2 end)
  linear("fc linear x·W(C,4C)+b", C, 4 * C, 50)
  local u = leaf({ B, T, 4 * C }, 60)
  add("gelu (B,T,4C)", L, { u }, function() return E.gelu(u) end)
  linear("fc2 linear x·W(4C,C)+b", 4 * C, C, 70)
  local hw = leaf({ V, C }, 80, 0.02)
  add("LM head: E.linear_logprobs", 1, { x, hw }, function() return E.linear_logprobs(x, hw, s.labels) end,
    2 * (N - B) * V * C)
  add("  alternative: matmul + E.cross_entropy", 1, { x, hw }, function()
    return E.cross_entropy(E.matmul(x, hw:transpose(1, 2)), s.targets)
  end, 2 * N * V * C)
  return rows
end

local function profile(key, c)
  local warmup = tonumber(args.warmup) or c.warmup
  local steps = tonumber(args.steps) or c.steps
  local s = make(c)
  print(string.format("profile %s: %s, %d threads, head %s (load %s)", key, c.name, threads, args.head, loadavg()))
  for _ = 1, warmup do step(s) end
  -- phases
  local ph = { zero = {}, fwd = {}, bwd = {}, opt = {}, total = {} }
  for i = 1, steps do
    local t0 = E.wall_time()
    s.opt:zero_grad()
    local t1 = E.wall_time()
    local loss = loss_of(s)
    loss:item()
    local t2 = E.wall_time()
    loss:backward()
    local t3 = E.wall_time()
    s.opt:step()
    local t4 = E.wall_time()
    ph.zero[i], ph.fwd[i], ph.bwd[i], ph.opt[i], ph.total[i] = t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0
  end
  local tot = median(ph.total)
  local function pct(x) return string.format("%8.1f ms %5.1f%%", 1000 * x, 100 * x / tot) end
  print(string.format("  phases (median of %d steps): step %.1f ms", steps, 1000 * tot))
  print("    zero_grad        " .. pct(median(ph.zero)))
  print("    forward + loss   " .. pct(median(ph.fwd)))
  print("    backward         " .. pct(median(ph.bwd)))
  print("    AdamW step       " .. pct(median(ph.opt)) .. string.format("   (%.2fM parameters: %.2f GB/s of "
    .. "params+grads+m+v read and params+m+v written)", s.numel / 1e6, 28 * s.numel / median(ph.opt) / 1e9))
  -- forward pieces
  local runs = {}
  for i = 1, math.max(steps, 1) do runs[i] = forward_pieces(s, c) end
  local labels = {}
  for l in pairs(runs[1]) do if l ~= "total" then labels[#labels + 1] = l end end
  local med = {}
  for _, l in ipairs(labels) do
    local xs = {}
    for i, r in ipairs(runs) do xs[i] = r[l] or 0 end
    med[l] = median(xs)
  end
  table.sort(labels, function(p, q) return med[p] > med[q] end)
  local totals = {}
  for i, r in ipairs(runs) do totals[i] = r.total end
  local ftot, sum = median(totals), 0
  print(string.format("  forward + loss, timed in place (median of %d): %.1f ms", #runs, 1000 * ftot))
  for _, l in ipairs(labels) do
    sum = sum + med[l]
    print(string.format("    %-40s %8.1f ms %5.1f%%", l, 1000 * med[l], 100 * med[l] / ftot))
  end
  print(string.format("    %-40s %8.1f ms %5.1f%%", args.head == "ce" and "other (head matmul, residual adds, Lua)"
    or "other (residual adds, narrow, loss, Lua)", 1000 * (ftot - sum), 100 * (ftot - sum) / ftot))
  -- ops alone
  local rows = op_table(s, c, math.max(steps, 2))
  print(string.format("  each piece alone at the model's shapes (median of %d; per step = calls x (fwd + bwd)):",
    math.max(steps, 2)))
  print(string.format("    %-46s %5s %9s %9s %10s %6s %6s", "", "calls", "fwd ms", "bwd ms", "per step", "fwd", "bwd"))
  local stot = 0
  for _, r in ipairs(rows) do
    local per = r.count * (r.f + r.b)
    local sub = r.name:sub(1, 2) == "  "
    if not sub then stot = stot + per end
    local gf = r.flops and string.format("%6.0f %6.0f", r.flops / r.f / 1e9, 2 * r.flops / r.b / 1e9)
      or "     -      -"
    print(string.format("    %-46s %5d %9.2f %9.2f %8.1f ms %s", r.name, r.count, 1000 * r.f, 1000 * r.b,
      1000 * per, gf))
  end
  print(string.format("    sum of the pieces %.1f ms vs forward + backward measured %.1f ms "
    .. "(GFLOP/s columns: matmul FLOPs, backward counted as 2x forward)",
    1000 * stot, 1000 * (median(ph.fwd) + median(ph.bwd))))
  print(string.format("  sgemm peak now: %.1f GFLOP/s", sgemm_peak()))
end

for key in args.configs:gmatch("[^,]+") do
  local c = configs[key] or error("bench/model_step.lua: unknown config " .. key .. " (a, b)")
  if mode == "compare" or mode == "both" then compare(key, c) end
  collectgarbage()
  E.memory_trim()
  if mode == "profile" or mode == "both" then profile(key, c) end
  collectgarbage()
  E.memory_trim()
end
