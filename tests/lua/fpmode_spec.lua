-- fpmode_spec.lua — E.set_flush_denormal / E.flush_denormal: on by default
-- (require "engine" and the runner); off keeps subnormals exactly, on turns
-- them to 0 in the engine's kernels on every OpenMP thread (tensors large
-- enough to be split across the team) and in a backward pass through a
-- saturated log-sigmoid (the DPO case); argument errors.
-- A tensor's values are read with the mode off: with it on, reading a
-- subnormal float32 into a Lua number would itself give 0.
local H = require("helper")
local E = require("engine")

local S32 = 2 ^ -130        -- a float32 subnormal (a normal double)
local N = 4 * 32768         -- 4x the engine's PARALLEL_MIN: every thread gets a chunk
local X86_64 = (io.popen("uname -m"):read("l") or "") == "x86_64"

-- how many of t's elements (a flat list) in [lo, hi] differ from v
local function count_not(t, lo, hi, v)
  local bad = 0
  for i = lo, hi do
    if t[i] ~= v then bad = bad + 1 end
  end
  return bad
end

describe("flush_denormal", function()
  local threads = E.get_threads()
  after_each(function()
    E.set_flush_denormal(true)
    E.set_threads(threads)
  end)

  it("is on once the module is loaded, and in the runner", function()
    assert.equals(X86_64, E.flush_denormal())
    local status, out = H.run(H.quote(H.engine_bin) .. [[ -e 'print(require("engine").flush_denormal())']])
    assert.equals(0, status)
    assert.equals(tostring(X86_64) .. "\n", out)
  end)

  it("set_flush_denormal says whether it is supported; the getter follows", function()
    assert.equals(X86_64, E.set_flush_denormal(false))
    assert.is_false(E.flush_denormal())
    assert.equals(X86_64, E.set_flush_denormal(true))
    assert.equals(X86_64, E.flush_denormal())
  end)

  it("off: a kernel keeps a float32 subnormal exactly, on every thread", function()
    E.set_threads(2)
    E.set_flush_denormal(false)
    local x = E.full({ N }, S32)
    local y = (x * 1):totable()
    assert.equals(0, count_not(y, 1, N // 2, S32))
    assert.equals(0, count_not(y, N // 2 + 1, N, S32))
  end)

  if not X86_64 then return end

  it("on: a kernel gives 0 for a subnormal input, on every thread", function()
    for _, n in ipairs({ 2, 3 }) do
      E.set_threads(n)
      E.set_flush_denormal(false)
      local x = E.full({ N }, S32)       -- made while off: it holds 2^-130
      E.set_flush_denormal(true)
      local y = x * 1
      local z = x + E.zeros({ N })
      E.set_flush_denormal(false)       -- to read the stored values
      local ty, tz = y:totable(), z:totable()
      for t = 0, n - 1 do                -- each thread's chunk
        local lo, hi = t * N // n + 1, (t + 1) * N // n
        assert.equals(0, count_not(ty, lo, hi, 0), "x * 1, chunk " .. t .. " of " .. n)
        assert.equals(0, count_not(tz, lo, hi, 0), "x + 0, chunk " .. t .. " of " .. n)
      end
      assert.equals(0, count_not(x:totable(), 1, N, S32)) -- the input is untouched
    end
  end)

  it("on: float64 subnormals too, and Lua's own arithmetic in this thread", function()
    E.set_flush_denormal(false)
    local s64 = 2 ^ -530 * 2 ^ -530   -- 2^-1060, a float64 subnormal
    assert.equals(2 ^ -1060, s64)
    local x = E.full({ N }, s64, "float64")
    E.set_flush_denormal(true)
    assert.equals(0, 2 ^ -530 * 2 ^ -530)
    local y = x * 1
    E.set_flush_denormal(false)
    local t = y:totable()
    assert.equals(0, count_not(t, 1, N, 0))
  end)

  it("a saturated log-sigmoid's gradient is subnormal when off, 0 when on", function()
    -- d/dz -logsigmoid(z) = -sigmoid(-z) = -1 / (1 + e^z); at z = 90: -8.194e-40
    local function grad_at_90()
      local z = E.tensor({ 90 }):requires_grad(true)
      local L = -E.logsigmoid(z):sum()
      L:backward()
      return z.grad
    end
    E.set_flush_denormal(false)
    local g = grad_at_90():item()
    assert.is_true(g < 0 and g > -2 ^ -126, "a subnormal: " .. g)
    H.assert_close(g, -1 / (1 + math.exp(90)), 1e-5)
    E.set_flush_denormal(true)
    local g_on = grad_at_90()
    E.set_flush_denormal(false)
    assert.equals(0, g_on:item())
  end)

  it("raises on a non-boolean", function()
    assert.equals("set_flush_denormal: on must be a boolean, got number", H.error_of(E.set_flush_denormal, 1))
    assert.equals("set_flush_denormal: on must be a boolean, got no value", H.error_of(E.set_flush_denormal))
    assert.equals("set_flush_denormal: on must be a boolean, got nil", H.error_of(E.set_flush_denormal, nil))
  end)
end)
