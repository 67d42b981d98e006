-- errors_spec.lua — every wrong call raises a Lua error that names the op
-- and the shapes; this pins the exact text. The last block calls every C
-- function of the module with a grid of wrong arguments: each call must
-- return or raise, never crash the process.
local H = require("helper")
local E = require("engine")

local err = H.error_of

describe("errors", function()
  local x
  before_each(function() x = E.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }) end)

  it("carry the position of the Lua caller", function()
    local ok, msg = pcall(function() return E.matmul(x, x) end)
    assert.is_false(ok)
    assert.matches("^[^:]*errors_spec%.lua:%d+: matmul: ", msg)
    local ok2, msg2 = pcall(function() return x + {} end)
    assert.is_false(ok2)
    assert.matches("^[^:]*errors_spec%.lua:%d+: add: ", msg2)
  end)

  it("wrong shapes", function()
    assert.equals("matmul: a is [2,3], b is [2,3]: inner dims differ", err(E.matmul, x, x))
    assert.equals("add: shapes [2,3] and [2] do not broadcast (dim 2: 3 vs 2)", err(function() return x + E.ones({ 2 }) end))
    assert.equals("item: tensor has 6 elements [2,3]; item() needs exactly one", err(function() return x:item() end))
    assert.equals("item: tensor has 0 elements [0]; item() needs exactly one", err(function() return E.tensor({}):item() end))
    assert.equals("permute: 1 dims given for a tensor of shape [2,3], which has 2", err(function() return x:permute(1) end))
    assert.equals("narrow: start 3 and length 2 do not fit dim 2 of shape [2,3] (start is 1-based)",
      err(function() return x:narrow(2, 3, 2) end))
    assert.equals("backward: a gradient can be implied only for a scalar; the tensor is [2] (pass one of the same shape)",
      err(function() (E.ones({ 2 }):requires_grad(true) * 2):backward() end))
  end)

  it("wrong types", function()
    assert.equals("add: expected a tensor or a number, got string", err(function() return x + "a" end))
    assert.equals("mul: expected a tensor or a number, got boolean", err(function() return true * x end))
    assert.equals("sub: expected a tensor or a number, got table", err(E.sub, x, {}))
    assert.equals("add: expected at least one tensor, got two numbers", err(E.add, 1, 2))
    assert.equals("exp: expected a tensor, got no value", err(function() return x.exp() end))
    assert.equals("exp: expected a tensor, got string", err(E.exp, "x"))
    assert.equals("matmul: expected a tensor, got generator", err(E.matmul, x, E.Generator(1)))
    assert.equals("zeros: shape must be a table of sizes such as {2, 3}, got number", err(E.zeros, 3))
    assert.equals("zeros: shape entry 2 is 1.5, not an integer size", err(E.zeros, { 2, 1.5 }))
    assert.equals("zeros: shape entry 2 is -1; sizes must be >= 0", err(E.zeros, { 2, -1 }))
    assert.equals("zeros: shape has 9 dims; at most 8 are supported", err(E.zeros, { 1, 1, 1, 1, 1, 1, 1, 1, 1 }))
    assert.equals("tensor: unknown dtype 'int8' (use \"float32\" or \"float64\")", err(E.tensor, { 1 }, "int8"))
    assert.equals("sum: keepdim must be a boolean, got number", err(function() return x:sum(1, 1) end))
    assert.equals("fill_: value must be a number, got string", err(function() return x:fill_("a") end))
    assert.equals("requires_grad: expected true or false, got number", err(function() return x:requires_grad(1) end))
    assert.equals("cat: entry 2 of the list is a number, expected a tensor", err(E.cat, { x, 1 }))
    assert.equals("layer_norm: weight must be a tensor, got string", err(E.layer_norm, x, "w"))
    assert.equals("embedding: ids must be a tensor or a nested table of numbers, got string", err(E.embedding, x, "ids"))
    assert.equals("grad: the new grad must be a tensor, got string", err(function() x.grad = "g" end))
    assert.equals("tensor: cannot set field 'foo' (only .grad can be assigned)", err(function() x.foo = 1 end))
    assert.equals("backward: grad is float64 but the tensor is float32",
      err(function() (E.ones({ 2 }):requires_grad(true) * 2):backward(E.ones({ 2 }, "float64")) end))
    assert.equals("no_grad: expected a function, got number", err(function() E.no_grad(1) end))
  end)

  it("dims out of range, with 1-based numbers", function()
    assert.equals("sum: dim 3 is out of range for a tensor of shape [2,3] (dims are 1..2, or -2..-1 from the end)",
      err(function() return x:sum(3) end))
    assert.equals("sum: dim 0 is out of range for a tensor of shape [2,3] (dims are 1..2, or -2..-1 from the end)",
      err(function() return x:sum(0) end))
    assert.equals("softmax: dim -3 is out of range for a tensor of shape [2,3] (dims are 1..2, or -2..-1 from the end)",
      err(E.softmax, x, -3))
    assert.equals("transpose: dim 3 is out of range for a tensor of shape [2,3] (dims are 1..2, or -2..-1 from the end)",
      err(function() return x:transpose(1, 3) end))
    assert.equals("sum: dim 1 is out of range for a tensor of shape [] (a 0-dim tensor has no dims)",
      err(function() return E.tensor(1):sum(1) end))
    assert.equals("sum: dim must be an integer, got 1.5", err(function() return x:sum(1.5) end))
    assert.equals("permute: dim 1 appears twice; the dims must be a permutation of 1..2",
      err(function() return x:permute(1, 1) end))
  end)

  it("released tensors", function()
    local kept
    do
      local y <close> = E.ones({ 2 })
      kept = y
    end
    assert.equals("exp: tensor was released (closed or collected)", err(function() return kept:exp() end))
    assert.equals("add: tensor was released (closed or collected)", err(function() return kept + 1 end))
    assert.equals("shape: tensor was released (closed or collected)", err(function() return kept:shape() end))
    assert.equals("grad: tensor was released (closed or collected)", err(function() return kept.grad end))
    assert.equals("cat: entry 2 of the list: tensor was released (closed or collected)", err(E.cat, { x, kept }))
    x:release()
    assert.equals("item: tensor was released (closed or collected)", err(function() return x:item() end))
  end)

  it("ragged and non-number tables", function()
    assert.equals("tensor: ragged nested table: row [2] has length 1, expected 2", err(E.tensor, { { 1, 2 }, { 3 } }))
    assert.equals("tensor: ragged nested table: row [1,2] has length 3, expected 2",
      err(E.tensor, { { { 1, 2 }, { 3, 4, 5 } } }))
    assert.equals("tensor: ragged nested table: entry [2] is a number, expected a table of length 2",
      err(E.tensor, { { 1, 2 }, 3 }))
    assert.equals("tensor: ragged nested table: entry [2] is a table, expected a number", err(E.tensor, { 1, { 2 } }))
    assert.equals("tensor: entry [2] is a string, not a number", err(E.tensor, { 1, "a" }))
    assert.equals("tensor: entry [2,2] is a boolean, not a number", err(E.tensor, { { 1, 2 }, { 3, true } }))
    assert.equals("tensor: expected a nested table of numbers, a number or a tensor, got string", err(E.tensor, "a"))
    assert.equals("tensor: the nested table is more than 8 levels deep", err(E.tensor, { { { { { { { { { 1 } } } } } } } } }))
    assert.equals("gather: ragged nested table: row [2] has length 2, expected 1",
      err(function() return x:gather(2, { { 1 }, { 1, 2 } }) end))
  end)

  it("options tables", function()
    assert.equals("attention: unknown option 'casual' (the options are mask, causal, scale)",
      err(E.attention, x, x, x, { casual = true }))
    assert.equals("randn: unknown option 'sed' (the options are seed, dtype, generator)", err(E.randn, { 2 }, { sed = 1 }))
    assert.equals("randn: give either seed or generator, not both", err(E.randn, { 2 }, { seed = 1, generator = E.Generator(1) }))
    assert.equals("cross_entropy: ignore_index must be an integer, got 0.5",
      err(E.cross_entropy, x, { 1, 1 }, { ignore_index = 0.5 }))
    assert.equals("set_threads: n must be in 1..1024, got 0", err(E.set_threads, 0))
    assert.equals("set_state: expected a table of 4 integers (from state()), got table",
      err(function() E.Generator(1):set_state({ 1, 2 }) end))
  end)

  it("autodiff misuse", function()
    local a = E.ones({ 1 }):requires_grad(true)
    assert.equals("requires_grad: only leaf tensors can change requires_grad (this one was made by mul); "
      .. "use detach() for a leaf copy", err(function() (a * 2):requires_grad(false) end))
    assert.equals("backward: the tensor [] does not require grad (no input of the ops that made it had "
      .. "requires_grad set)", err(function() x:sum():backward() end))
    assert.equals("set_grad: grad is float32 [3], tensor is float32 [1]", err(function() a.grad = E.ones({ 3 }) end))
  end)
end)

describe("no wrong call crashes the process", function()
  it("survives every C function called with a grid of wrong arguments", function()
    local released = E.ones({ 2 })
    released:release()
    local pool = {
      false, 0, 1, -1, 2.5, 1e300, 0 / 0, -1 / 0, "float64", "abc", true, {}, { 2, 3 }, { { 1, 2 }, { 3 } },
      { 1, 2, 3 }, { -1 }, { { 0, 1 }, { 1, 0 } }, { x = 1 },
      E.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }), E.tensor({ 1, 2, 3 }, "float64"), E.tensor(2), E.tensor({}),
      E.ones({ 1, 1, 2, 2 }), E.ones({ 2, 3 }):transpose(1, 2), released, E.Generator(1),
      E.ones({ 3 }):requires_grad(true), { seed = 1 }, { mask = { { 1 } }, causal = true },
    }
    local npool = #pool
    pool[1] = nil -- nil is an argument too; slot 1 stands for it
    local names = {}
    for k, v in pairs(E) do
      if type(v) == "function" and debug.getinfo(v, "S").what == "C" then names[#names + 1] = k end
    end
    table.sort(names)
    assert.is_true(#names > 60)
    local threads, calls, state = E.get_threads(), 0, 12345
    local function pick()
      state = (state * 1103515245 + 12345) % 2147483648
      return pool[state % npool + 1]
    end
    for _, name in ipairs(names) do
      for trial = 1, 150 do
        local nargs = trial % 4
        local args = {}
        for i = 1, nargs do args[i] = pick() end
        local ok, e = pcall(E[name], table.unpack(args, 1, nargs))
        calls = calls + 1
        assert(ok or type(e) == "string", name .. " raised a non-string error")
        E.set_grad_enabled(true)
      end
    end
    E.set_threads(threads)
    E.manual_seed(0)
    collectgarbage("collect")
    assert.is_true(calls > 9000)
  end)
end)
