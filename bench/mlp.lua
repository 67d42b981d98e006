-- bench/mlp.lua — one training step of a 4-layer MLP (width 1024, batch 256,
-- ReLU, MSE loss, SGD) in the engine and in PyTorch, side by side in one run.
--   build/engine bench/mlp.lua [threads=2] [steps=30]
-- PyTorch runs with its best CPU settings here: its own thread count, passive
-- OpenMP waiting, and glibc malloc told to keep freed memory.
local E = require("engine")

if not os.getenv("OPENBLAS_CORETYPE") then
  -- on VMs that hide the CPU model OpenBLAS falls back to SSE3 kernels (~4x slower)
  print("note: OPENBLAS_CORETYPE is not set; OpenBLAS may pick slow generic kernels")
end

local threads = tonumber(arg[1]) or 2
local steps = tonumber(arg[2]) or 30
E.set_threads(threads)

local width, batch, layers, lr = 1024, 256, 4, 1e-3
local W, b = {}, {}
for i = 1, layers do
  W[i] = (E.randn({width, width}, {seed = i}) * 0.03):requires_grad(true)
  b[i] = E.zeros({width}):requires_grad(true)
end
local x = E.randn({batch, width}, {seed = 100})
local y = E.randn({batch, width}, {seed = 101})

local function step()
  local h = x
  for i = 1, layers do
    h = E.matmul(h, W[i]:transpose(1, 2)) + b[i]
    if i < layers then h = E.relu(h) end
  end
  local loss = ((h - y) ^ 2):mean()
  loss:backward()
  for i = 1, layers do
    for _, p in ipairs({W[i], b[i]}) do
      p:add_(p.grad, -lr)
      p:zero_grad()
    end
  end
  return loss:item()
end

local function now()
  -- wall time: os.clock counts CPU time of all threads
  return E.wall_time()
end

for _ = 1, 3 do step() end
local times = {}
local first = step()
for i = 1, steps do
  local t0 = now()
  step()
  times[i] = now() - t0
end
table.sort(times)
local engine_ms = 1000 * times[(steps + 1) // 2]
local mem = E.memory_stats()

local env = "OMP_NUM_THREADS=" .. threads .. " OMP_WAIT_POLICY=PASSIVE "
  .. "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local p = io.popen(env .. " /usr/bin/python3 " .. here .. "/mlp_torch.py " .. threads .. " " .. steps)
local torch_ms = p and tonumber(p:read("a"))
if p then p:close() end

print(string.format("MLP step (4x1024, batch 256, %d threads), median of %d:", threads, steps))
print(string.format("  engine  %8.2f ms   (loss %.4f, %.1f MiB in use, %.1f MiB cached)", engine_ms, first,
  mem.bytes_in_use / 2^20, mem.bytes_cached / 2^20))
if torch_ms then
  print(string.format("  pytorch %8.2f ms", torch_ms))
  print(string.format("  ratio engine/pytorch = %.3f (target <= 1.0, aim 0.8)", engine_ms / torch_ms))
else
  print("  pytorch: not available (apt-get install python3-torch)")
end
