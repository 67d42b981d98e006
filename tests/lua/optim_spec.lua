-- optim_spec.lua — E.optim seen from Lua: AdamW and SGD against the update
-- worked out here in double precision and against PyTorch's values in
-- tests/fixtures/optim.json (scripts/make_optim_fixture.py), the flat
-- blocks and the model's references, the no-decay rule, clipping, zero_grad,
-- gradient accumulation, the non-finite skip, state()/load_state(), the
-- schedules (against transformers' formulas and LambdaLR's values), and the
-- error messages. Results hold for a fixed build; the update itself does not
-- depend on the thread count (test_optim.c checks that).
local H = require("helper")
local E = require("engine")
local json = require("dkjson")

local err = H.error_of

local function fixture()
  local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/lua"
  local f = assert(io.open(dir .. "/../fixtures/optim.json"))
  local fx = json.decode(f:read("a"))
  f:close()
  return fx
end

local function f32(x) return (string.unpack("f", string.pack("f", x))) end

local function flat(t) return t:reshape({ -1 }):totable() end

-- max over i of |a[i] - b[i]| / max(|b[i]|, floor)
local function max_rel(a, b, floor)
  assert.equals(#b, #a)
  local worst = 0
  for i = 1, #a do
    local d = math.abs(a[i] - b[i]) / math.max(math.abs(b[i]), floor or 1e-30)
    if d > worst or d ~= d then worst = d end
  end
  return worst
end

-- the fixture's parameters as {name=, tensor=} entries
local function fixture_params(case)
  local list, byname = {}, {}
  for i, n in ipairs(case.names) do
    local t = E.tensor(case.init[n]):reshape(case.shapes[n]):requires_grad(true)
    list[i], byname[n] = { name = n, tensor = t }, t
  end
  return list, byname
end

local function fixture_no_decay(case)
  local decayed = {}
  for _, n in ipairs(case.decayed) do decayed[n] = true end
  return function(name) return not decayed[name] end
end

-- three steps of a fixture case; compares parameters (and clip norms)
local function run_case(case, make)
  local list, byname = fixture_params(case)
  local opt = make(list, case.options, fixture_no_decay(case))
  for k = 1, 3 do
    opt:zero_grad()
    for _, n in ipairs(case.names) do byname[n].grad:copy_(E.tensor(case.grads[k][n]):reshape(case.shapes[n])) end
    if case.options.max_norm then
      local norm = opt:clip_grad_norm(case.options.max_norm)
      assert.is_true(math.abs(norm - case.norms[k]) <= 2e-7 * case.norms[k], norm .. " vs " .. case.norms[k])
    end
    assert.is_true(opt:step())
    for _, n in ipairs(case.names) do
      -- bit-exact on AVX2+FMA builds (test_optim.c asserts that); 1e-6 here
      assert.is_true(max_rel(flat(byname[n]), case.after[k][n]) <= 1e-6, case.names[1] .. " step " .. k)
    end
  end
  local st = opt:state()
  for key, vals in pairs(case.state) do
    for _, l in ipairs(opt.layout) do
      local got = st[key]:narrow(1, l.offset, l.numel):totable()
      assert.is_true(max_rel(got, vals[l.name], 1e-30) <= 1e-6, key .. " of " .. l.name)
    end
  end
  return opt
end

describe("AdamW", function()
  it("moves the parameters into one flat block, keeping the tensors and their values", function()
    local b = E.tensor({ 0.5, -0.5 }):requires_grad(true)
    local w = E.tensor({ { 1, 2 }, { 3, 4 } }):requires_grad(true)
    local model = { layer = { w = w, b = b } }
    local opt = E.optim.AdamW({ { name = "fc.bias", tensor = b }, { name = "fc.weight", tensor = w } })
    assert.equals(6, opt.params:numel())
    assert.same({ 6 }, opt.grads:shape())
    -- decayed parameters first: the weight, then the bias
    assert.same({ 1, 2, 3, 4, 0.5, -0.5 }, opt.params:totable())
    assert.same({ name = "fc.weight", index = 2, offset = 1, numel = 4, shape = { 2, 2 }, decay = true }, opt.layout[1])
    assert.same({ name = "fc.bias", index = 1, offset = 5, numel = 2, shape = { 2 }, decay = false }, opt.layout[2])
    assert.same({ { 1, 2 }, { 3, 4 } }, model.layer.w:totable())
    -- the model's tensor is the block's slice: writing one shows in the other
    opt.params:narrow(1, 5, 1):fill_(9)
    assert.same({ 9, -0.5 }, model.layer.b:totable())
    assert.equals("AdamW(6 values in 2 tensors, lr=0.001)", tostring(opt))
  end)

  it("takes a model's :parameters() and a list of bare tensors", function()
    local w = E.ones({ 2, 2 }):requires_grad(true)
    local model = { parameters = function() return { { name = "w", tensor = w } } end }
    assert.equals("w", E.optim.AdamW(model).layout[1].name)
    local opt = E.optim.AdamW({ E.zeros({ 3 }):requires_grad(true), w, w })
    assert.equals(2, #opt.layout) -- w listed twice is taken once
    assert.is_nil(opt.layout[1].name)
    assert.same({ true, false }, { opt.layout[1].decay, opt.layout[2].decay }) -- dim < 2: no decay
  end)

  it("gives the update worked out in double precision, for one and three steps", function()
    local p0 = { { 0.3, -1.2, 2.0 }, { 0.05, 0.7, -0.4 } }
    local w = E.tensor(p0):requires_grad(true)
    local lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    local opt = E.optim.AdamW({ w }, { lr = lr, betas = { b1, b2 }, eps = eps, weight_decay = wd })
    local p, m, v = {}, {}, {}
    for i, x in ipairs(flat(E.tensor(p0))) do p[i], m[i], v[i] = x, 0, 0 end
    for t = 1, 3 do
      local g = {}
      for i = 1, 6 do g[i] = f32(math.sin(i * t) * t) end
      opt:zero_grad()
      w.grad:copy_(E.tensor(g):reshape({ 2, 3 }))
      opt:step()
      for i = 1, 6 do -- p -= lr wd p; m, v; p -= lr m_hat / (sqrt(v_hat) + eps)
        p[i] = p[i] - lr * wd * p[i]
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] ^ 2
        p[i] = p[i] - lr * (m[i] / (1 - b1 ^ t)) / (math.sqrt(v[i] / (1 - b2 ^ t)) + eps)
      end
      assert.is_true(max_rel(flat(w), p) <= 1e-6, "step " .. t)
      if t == 1 then -- the first step moves each weight by about lr, away from the gradient's sign
        assert.is_true(math.abs(flat(w)[1] - (0.3 * (1 - lr * wd) - lr)) < 1e-7)
      end
    end
    assert.equals(3, opt.steps)
    assert.is_true(max_rel(opt:state().exp_avg_sq:totable(), v) <= 1e-6)
  end)

  it("matches torch.optim.AdamW (fixture)", function()
    local fx = fixture()
    local make = function(list, o, nd)
      return E.optim.AdamW(list, { lr = o.lr, betas = o.betas, eps = o.eps, weight_decay = o.weight_decay, no_decay = nd })
    end
    run_case(fx.adamw, make)
    run_case(fx.adamw_clip, make)
  end)

  it("decays no biases, norms or 1-dim tensors by default", function()
    local names = { "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.0.ln_1.weight", "model.norm.weight",
      "LayerNorm.weight", "wte.weight", "scale" }
    local list = {}
    for i, n in ipairs(names) do
      local shape = (n == "scale" or n:find("bias")) and { 2 } or { 2, 2 }
      list[i] = { name = n, tensor = E.ones(shape):requires_grad(true) }
    end
    local opt = E.optim.AdamW(list, { lr = 0.1, weight_decay = 0.5 })
    local decays = {}
    for _, l in ipairs(opt.layout) do decays[l.name] = l.decay end
    assert.same({ ["h.0.attn.c_attn.weight"] = true, ["wte.weight"] = true, ["h.0.attn.c_attn.bias"] = false,
      ["h.0.ln_1.weight"] = false, ["model.norm.weight"] = false, ["LayerNorm.weight"] = false, scale = false }, decays)
    -- zero grads: only decay moves a parameter, and only the decayed ones
    opt:step()
    for _, e in ipairs(list) do
      local want = decays[e.name] and f32(1 - 0.1 * 0.5) or 1
      for _, x in ipairs(flat(e.tensor)) do assert.equals(want, x) end
    end
    -- a rule of one's own
    local opt2 = E.optim.AdamW(list, { no_decay = function(name) return name == "wte.weight" end })
    for _, l in ipairs(opt2.layout) do assert.equals(l.name ~= "wte.weight", l.decay) end
  end)

  it("clips by the global norm and returns the norm before clipping", function()
    local a = E.zeros({ 3 }):requires_grad(true)
    local b = E.zeros({ 2 }):requires_grad(true)
    local opt = E.optim.AdamW({ a, b })
    a.grad:copy_({ 3, 0, 4 })
    b.grad:copy_({ 0, 12 })
    assert.equals(13, opt:grad_norm())
    assert.equals(13, opt:clip_grad_norm(1.3))
    local c = f32(f32(1.3) / f32(13 + f32(1e-6)))
    assert.same({ f32(3 * c), 0, f32(4 * c) }, a.grad:totable())
    assert.is_true(math.abs(opt:grad_norm() - 1.3) < 1e-6)
    local before = opt.grads:totable()
    assert.is_true(math.abs(opt:clip_grad_norm(5) - 1.3) < 1e-6)
    assert.same(before, opt.grads:totable()) -- below max_norm: untouched
    opt:scale_grads(2)
    assert.same({ f32(6 * c), 0, f32(8 * c) }, a.grad:totable())
    assert.equals("clip_grad_norm: max_norm must be a number > 0, got -1", err(function() opt:clip_grad_norm(-1) end))
    assert.equals("clip_grad_norm: max_norm must be a number, got nil", err(function() opt:clip_grad_norm() end))
    -- math.huge: the norm, nothing clipped
    opt:zero_grad()
    a.grad:copy_({ 30, 0, 40 })
    assert.equals(50, opt:clip_grad_norm(math.huge))
    assert.same({ 30, 0, 40 }, a.grad:totable())
  end)

  it("zero_grad fills the grad block; backward accumulates into it", function()
    local w = E.tensor({ 1, 2, 3 }):requires_grad(true)
    local u = E.tensor({ { 1 }, { -1 } }):requires_grad(true)
    local opt = E.optim.SGD({ w, u }, { lr = 0.5 })
    local x = E.tensor({ 2, 0, -1 })
    for _ = 1, 2 do ((w * x):sum() + (u * u):sum()):backward() end
    -- u (2-D) comes first in the block: 2u + 2u, then x + x
    assert.same({ 4, -4, 4, 0, -2 }, opt.grads:totable())
    assert.same({ 4, 0, -2 }, w.grad:totable())
    opt:step()
    assert.same({ -1, 2, 4 }, w:totable())
    opt:zero_grad()
    assert.same({ 0, 0, 0, 0, 0 }, opt.grads:totable())
    assert.same({ { 0 }, { 0 } }, u.grad:totable())
    -- a grad dropped with x:zero_grad() comes back as the block's slice
    w:zero_grad()
    assert.is_nil(w.grad)
    ;(w * x):sum():backward()
    opt:step()
    assert.same({ 0, 0, 2, 0, -1 }, opt.grads:totable())
    assert.same({ -2, 2, 4.5 }, w:totable())
  end)

  it("k micro-batches with loss/k equal one big batch of a mean loss", function()
    local X = { { 1, 2 }, { 3, -1 }, { 0.5, 0.5 }, { -2, 1 } }
    local Y = { 1, 0, 2, -1 }
    local function setup()
      local w = E.tensor({ { 0.1 }, { -0.3 } }):requires_grad(true)
      return w, E.optim.AdamW({ { name = "w", tensor = w } }, { lr = 0.01 })
    end
    local function loss(w, rows)
      local xs, ys = {}, {}
      for i, r in ipairs(rows) do xs[i], ys[i] = X[r], { Y[r] } end
      return ((E.matmul(E.tensor(xs), w) - E.tensor(ys)) ^ 2):mean()
    end
    local w1, big = setup()
    loss(w1, { 1, 2, 3, 4 }):backward()
    local g_big = big.grads:totable()
    big:step()
    local w2, acc = setup()
    for _, rows in ipairs({ { 1, 2 }, { 3, 4 } }) do (loss(w2, rows) / 2):backward() end
    assert.is_true(max_rel(acc.grads:totable(), g_big) < 1e-6)
    acc:step()
    assert.is_true(max_rel(flat(w2), flat(w1)) < 1e-6)
    -- the same with scale_grads(1/k) instead of scaling the loss
    local w3, acc3 = setup()
    for _, rows in ipairs({ { 1, 2 }, { 3, 4 } }) do loss(w3, rows):backward() end
    acc3:scale_grads(1 / 2)
    assert.is_true(max_rel(acc3.grads:totable(), g_big) < 1e-6)
  end)

  it("skips a step with an inf or nan gradient and says so", function()
    local w = E.tensor({ 1, 2 }):requires_grad(true)
    local opt = E.optim.AdamW({ w }, { lr = 0.1 })
    w.grad:copy_({ 1, math.huge })
    assert.is_false(opt:step())
    w.grad:copy_({ 0 / 0, 1 })
    assert.is_false(opt:step())
    assert.same({ 1, 2 }, w:totable())
    assert.equals(0, opt.steps)
    assert.equals(2, opt.skipped_steps)
    w.grad:copy_({ 1, -math.huge })
    assert.equals(math.huge, opt:clip_grad_norm(1))
    assert.same({ 1, -math.huge }, w.grad:totable()) -- not scaled
    w.grad:copy_({ 1, 1 })
    assert.is_true(opt:step())
    assert.equals(1, opt.steps)
  end)

  it("has a settable lr, and step(lr) overrides it for one step", function()
    local w = E.tensor({ 1 }):requires_grad(true)
    local opt = E.optim.SGD({ w }, { lr = 0.5 })
    w.grad:fill_(1)
    opt.lr = 0.25
    assert.equals(0.25, opt.lr)
    opt:step()
    assert.same({ 0.75 }, w:totable())
    opt:step(0.5)
    assert.same({ 0.25 }, w:totable())
    assert.equals(0.25, opt.lr)
    assert.equals("SGD: lr must be a finite number >= 0, got -1", err(function() opt.lr = -1 end))
    assert.equals("SGD: lr must be a number, got string", err(function() opt.lr = "x" end))
    assert.equals("SGD: cannot set field 'steps' (only lr can be assigned)", err(function() opt.steps = 3 end))
    assert.equals("SGD: cannot set field 'params' (only lr can be assigned)", err(function() opt.params = 3 end))
    assert.equals(0.25, opt.lr)
  end)

  it("restores its state bit for bit: continuing after load_state equals continuing", function()
    local function grads(k)
      local g = {}
      for i = 1, 10 do g[i] = math.sin(i * k + 0.5) end
      return g
    end
    local function model(init)
      local w = E.tensor(init):reshape({ 2, 5 }):requires_grad(true)
      return w, E.optim.AdamW({ { name = "w", tensor = w } }, { lr = 0.05, weight_decay = 0.1 })
    end
    local w, opt = model(grads(0))
    for k = 1, 2 do
      w.grad:copy_(E.tensor(grads(k)):reshape({ 2, 5 }))
      opt:step()
    end
    local st = opt:state()
    assert.same({ 10 }, st.sizes)
    assert.equals(2, st.step)
    assert.equals("AdamW", st.kind)
    -- a checkpoint: copies of the live blocks and the numbers
    local saved = { kind = st.kind, step = st.step, lr = st.lr, sizes = st.sizes,
      exp_avg = E.tensor(st.exp_avg), exp_avg_sq = E.tensor(st.exp_avg_sq) }
    local saved_params = opt.params:totable()
    for k = 3, 4 do
      w.grad:copy_(E.tensor(grads(k)):reshape({ 2, 5 }))
      opt:step()
    end

    local w2, opt2 = model(saved_params)
    opt2.lr = 1
    opt2:load_state(saved)
    assert.equals(2, opt2.steps)
    assert.equals(0.05, opt2.lr)
    for k = 3, 4 do
      w2.grad:copy_(E.tensor(grads(k)):reshape({ 2, 5 }))
      opt2:step()
    end
    assert.same(w:totable(), w2:totable())
    assert.same(opt:state().exp_avg:totable(), opt2:state().exp_avg:totable())

    assert.equals("AdamW: load_state: the state is SGD's, this optimizer is AdamW",
      err(function() opt2:load_state({ kind = "SGD", step = 1 }) end))
    assert.equals("AdamW: load_state: parameter 1 ('w') has 10 elements here but 12 in the state",
      err(function() opt2:load_state({ step = 1, sizes = { 12 } }) end))
    assert.equals("AdamW: load_state: exp_avg is [9], the parameters [10]",
      err(function() opt2:load_state({ step = 1, exp_avg = E.zeros({ 9 }), exp_avg_sq = E.zeros({ 10 }) }) end))
    assert.equals("AdamW: load_state: exp_avg_sq must be a tensor, got nil",
      err(function() opt2:load_state({ step = 1, exp_avg = E.zeros({ 10 }) }) end))
    assert.equals("AdamW: load_state: step must be an integer >= 0, got 1.5",
      err(function() opt2:load_state({ step = 1.5 }) end))
    assert.same(w:totable(), w2:totable()) -- failed loads changed nothing
    assert.equals(4, opt2.steps)
  end)

  it("names the problem in its errors", function()
    local w = E.ones({ 2, 2 }):requires_grad(true)
    assert.equals("AdamW: the parameter list is empty", err(E.optim.AdamW, {}))
    assert.equals("AdamW: parameter 2 ('h.0.bias') is float64 [3]; parameters must be float32",
      err(E.optim.AdamW, { w, { name = "h.0.bias", tensor = E.zeros({ 3 }, "float64"):requires_grad(true) } }))
    assert.equals("AdamW: parameter 1 is not a leaf (it was made by mul); pass the model's parameters, "
      .. "not values computed from them", err(E.optim.AdamW, { w * 2 }))
    assert.equals("AdamW: parameter 1 ('frozen') [2] does not require grad; call requires_grad(true) on it or leave it out",
      err(E.optim.AdamW, { { name = "frozen", tensor = E.zeros({ 2 }) } }))
    assert.equals("AdamW: unknown option 'betas1' (the options are betas, eps, lr, no_decay, weight_decay)",
      err(E.optim.AdamW, { w }, { betas1 = 0.9 }))
    assert.equals("SGD: unknown option 'betas' (the options are dampening, lr, momentum, nesterov, no_decay, weight_decay)",
      err(E.optim.SGD, { w }, { betas = { 0.9, 0.99 } }))
    assert.equals("AdamW: params[2] must be a tensor or {name=, tensor=}, got string", err(E.optim.AdamW, { w, "b" }))
    assert.equals("AdamW: params[1] must be a tensor or {name=, tensor=}, got a table without a tensor field",
      err(E.optim.AdamW, { { name = "w" } }))
    assert.equals("AdamW: params must be a list of tensors or {name=, tensor=} entries, got nil", err(E.optim.AdamW))
    assert.equals("AdamW: params must be a list (1..n), but it has the key 'w'", err(E.optim.AdamW, { w = w }))
    assert.equals("AdamW: betas must be a table of two numbers {beta1, beta2}, got number",
      err(E.optim.AdamW, { w }, { betas = 0.9 }))
    assert.equals("AdamW: betas must be a table of two numbers {beta1, beta2}, got {0.9}",
      err(E.optim.AdamW, { w }, { betas = { 0.9 } }))
    assert.equals("AdamW: beta2 must be in [0, 1), got 1", err(E.optim.AdamW, { w }, { betas = { 0.9, 1 } }))
    assert.equals("AdamW: lr must be a number, got string", err(E.optim.AdamW, { w }, { lr = "1e-3" }))
    assert.equals("AdamW: no_decay must be a function(name, tensor), got boolean",
      err(E.optim.AdamW, { w }, { no_decay = true }))
    assert.equals("SGD: nesterov momentum needs momentum > 0 and dampening = 0 (got momentum 0, dampening 0)",
      err(E.optim.SGD, { w }, { nesterov = true }))
    assert.equals("SGD: nesterov must be true or false, got number", err(E.optim.SGD, { w }, { nesterov = 1 }))
    assert.is_nil(w.grad) -- nothing was taken by the failed calls
    -- a parameter taken by another optimizer (or moved by set_data_) is no longer this one's
    local p = E.ones({ 2 }):requires_grad(true)
    local first = E.optim.SGD({ { name = "p", tensor = p } })
    local second = E.optim.SGD({ p }, { lr = 1 })
    assert.equals("SGD: parameter 1 ('p') no longer lives in the optimizer's flat block (set_data_ moved it, "
      .. "or another optimizer took it)", err(function() first:step() end))
    p.grad:fill_(0.5)
    assert.is_true(second:step())
    assert.same({ 0.5, 0.5 }, p:totable())
    p:set_data_(E.zeros({ 2 }))
    assert.truthy(err(function() second:zero_grad() end):find("no longer lives", 1, true))
    -- the error points at the caller's line
    local ok, msg = pcall(E.optim.AdamW, {})
    assert.is_false(ok)
    assert.truthy(msg:find("^[^:]*optim_spec%.lua:%d+: AdamW: the parameter list is empty$"))
  end)
end)

describe("SGD", function()
  it("gives momentum as worked out by hand", function()
    local w = E.tensor({ 1, -1 }):requires_grad(true)
    local opt = E.optim.SGD({ w }, { lr = 0.1, momentum = 0.9 })
    -- buf1 = g1; buf2 = 0.9 buf1 + g2; p -= lr buf
    w.grad:copy_({ 1, 2 })
    opt:step()
    assert.same({ f32(1 - 0.1), f32(-1 - 0.2) }, w:totable())
    w.grad:copy_({ 1, -1 })
    opt:step()
    local b = { 0.9 * 1 + 1, 0.9 * 2 - 1 }
    assert.is_true(max_rel(w:totable(), { 0.9 - 0.1 * b[1], -1.2 - 0.1 * b[2] }) < 1e-6)
    assert.is_true(max_rel(opt:state().momentum_buffer:totable(), b) < 1e-6)
    assert.is_nil(opt:state().exp_avg)
  end)

  it("matches torch.optim.SGD (fixture: momentum with dampening, nesterov, plain)", function()
    local fx = fixture()
    for _, key in ipairs({ "sgd_momentum", "sgd_nesterov", "sgd_plain" }) do
      run_case(fx[key], function(list, o, nd)
        return E.optim.SGD(list, { lr = o.lr, momentum = o.momentum, dampening = o.dampening, nesterov = o.nesterov,
          weight_decay = o.weight_decay, no_decay = nd })
      end)
    end
  end)
end)

describe("schedule", function()
  it("gives transformers' values (fixture: LambdaLR before each step, counted from 0)", function()
    for _, c in ipairs(fixture().schedules) do
      local sched = E.optim.schedule({ kind = c.kind, lr = c.lr, warmup_steps = c.warmup_steps,
        total_steps = c.total_steps, min_lr = c.min_lr })
      for step, want in ipairs(c.lrs) do
        assert.equals(want, sched(step - 1), c.kind .. " step " .. (step - 1))
      end
    end
  end)

  it("follows the formulas at chosen steps", function()
    local lin = E.optim.schedule({ kind = "linear", lr = 1.0, warmup_steps = 4, total_steps = 12 })
    assert.equals(0, lin(0))
    assert.equals(0.5, lin(2))
    assert.equals(1, lin(4))
    assert.equals(0.5, lin(8)) -- (12 - 8) / (12 - 4)
    assert.equals(0, lin(12))
    assert.equals(0, lin(20))
    local cos = E.optim.schedule({ kind = "cosine", lr = 2.0, warmup_steps = 2, total_steps = 6 })
    assert.equals(1, cos(1))
    assert.equals(2, cos(2))
    assert.is_true(math.abs(cos(4) - 1) < 1e-15) -- halfway: 2 * 0.5 (1 + cos(pi/2))
    assert.is_true(math.abs(cos(3) - (1 + math.cos(math.pi / 4))) < 1e-15)
    assert.equals(0, cos(6))
    assert.equals(0, cos(9)) -- held after total_steps (transformers' would rise again)
    local mn = E.optim.schedule({ kind = "cosine", lr = 1.0, total_steps = 4, min_lr = 0.1 })
    assert.equals(1, mn(0))
    assert.is_true(math.abs(mn(2) - 0.55) < 1e-15)
    assert.is_true(math.abs(mn(4) - 0.1) < 1e-15)
    assert.is_true(math.abs(mn(100) - 0.1) < 1e-15)
    local lmin = E.optim.schedule({ kind = "linear", lr = 1.0, total_steps = 10, min_lr = 0.2 })
    assert.is_true(math.abs(lmin(5) - 0.6) < 1e-15)
    assert.is_true(math.abs(lmin(15) - 0.2) < 1e-15)
    local const = E.optim.schedule({ lr = 3e-4 })
    assert.equals(3e-4, const(0))
    assert.equals(3e-4, const(1e6))
    local cw = E.optim.schedule({ kind = "constant", lr = 1.0, warmup_steps = 4 })
    assert.same({ 0, 0.25, 0.5, 0.75, 1, 1 }, { cw(0), cw(1), cw(2), cw(3), cw(4), cw(5) })
  end)

  it("drives an optimizer's lr", function()
    local w = E.tensor({ 0 }):requires_grad(true)
    local opt = E.optim.SGD({ w }, { lr = 123 })
    local sched = E.optim.schedule({ kind = "linear", lr = 1.0, warmup_steps = 1, total_steps = 3 })
    local used = {}
    for _ = 1, 4 do
      opt.lr = sched(opt.steps)
      used[#used + 1] = opt.lr
      w.grad:fill_(-1)
      opt:step()
    end
    assert.same({ 0, 1, 0.5, 0 }, used)
    assert.same({ 1.5 }, w:totable())
  end)

  it("names the problem in its errors", function()
    assert.equals("schedule: unknown option 'warmup' (the options are kind, lr, min_lr, total_steps, warmup_steps)",
      err(E.optim.schedule, { lr = 1, warmup = 3 }))
    assert.equals("schedule: kind must be \"constant\", \"linear\" or \"cosine\", got step",
      err(E.optim.schedule, { kind = "step", lr = 1 }))
    assert.equals("schedule: cosine needs total_steps (an integer >= 1)", err(E.optim.schedule, { kind = "cosine", lr = 1 }))
    assert.equals("schedule: warmup_steps (5) exceeds total_steps (4)",
      err(E.optim.schedule, { kind = "linear", lr = 1, warmup_steps = 5, total_steps = 4 }))
    assert.equals("schedule: lr must be a finite number >= 0, got nil", err(E.optim.schedule, { kind = "linear" }))
    assert.equals("schedule: warmup_steps must be an integer >= 0, got 1.5",
      err(E.optim.schedule, { lr = 1, warmup_steps = 1.5 }))
    assert.equals("schedule: min_lr must be a number in [0, lr], got 2",
      err(E.optim.schedule, { kind = "cosine", lr = 1, total_steps = 3, min_lr = 2 }))
    assert.equals("schedule: step must be a number >= 0, got -1", err(E.optim.schedule({ lr = 1 }), -1))
  end)
end)
