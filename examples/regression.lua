-- examples/regression.lua — the smallest end-to-end run: a two-layer MLP
-- learns y = tanh(3x) + x/2 on [-1, 1] with plain SGD, printing its loss as it
-- falls. Runs in a few seconds on a laptop.
--   build/engine examples/regression.lua [steps=600]
local E = require("engine")

local steps = tonumber(arg[1]) or 600
local hidden, n, lr = 64, 256, 0.05

local x = E.arange(n) * (2 / (n - 1)) - 1          -- (n)
x = x:reshape({n, 1})                              -- (n, 1)
local y = E.tanh(x * 3) + x * 0.5                  -- the target, (n, 1)

local W1 = (E.randn({1, hidden}, {seed = 1}) * 1.0):requires_grad(true)
local b1 = E.zeros({hidden}):requires_grad(true)
local W2 = (E.randn({hidden, 1}, {seed = 2}) * (1 / math.sqrt(hidden))):requires_grad(true)
local b2 = E.zeros({1}):requires_grad(true)
local params = {W1, b1, W2, b2}

local first
for step = 1, steps do
  local h = E.tanh(E.matmul(x, W1) + b1)
  local pred = E.matmul(h, W2) + b2
  local loss = ((pred - y) ^ 2):mean()
  loss:backward()
  for _, p in ipairs(params) do
    p:add_(p.grad, -lr)
    p:zero_grad()
  end
  local l = loss:item()
  first = first or l
  if step == 1 or step % 100 == 0 then
    print(string.format("step %4d  loss %.5f", step, l))
  end
end
