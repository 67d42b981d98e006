-- lora_spec.lua — E.lora on the fixture models (tests/fixtures/models):
-- zero-initialised B leaves the model unchanged bit for bit; an adapted
-- layer computes x·Wᵀ + (α/r)·x·Aᵀ·Bᵀ (checked by hand); disabled adapters
-- give the base model bit for bit; merging gives the adapted model; only the
-- adapters get gradients; adapters saved in PEFT's layout load back bit for
-- bit; the error messages word for word. Threads: 1 (tiny models).
local H = require("helper")
local E = require("engine")
local json = require("dkjson")

local threads = E.get_threads()
setup(function() E.set_threads(1) end)
teardown(function() E.set_threads(threads) end)

local REPO = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$") or "."
local FIXTURES = REPO .. "/tests/fixtures/models"

local IDS = { { 5, 17, 42, 3, 99, 0, 7 }, { 1, 2, 3, 4, 5, 6, 7 } }

local function load(name) return assert(E.models.load(FIXTURES .. "/" .. name)) end
local function logits(model) return E.no_grad(function() return model:forward(IDS) end) end
local function max_abs(a, b) return (a - b):abs():max():item() end

-- give every lora_B non-zero values (B starts at zero)
local function perturb(adapters, seed)
  local g = E.Generator(seed)
  E.no_grad(function()
    for _, p in ipairs(adapters:parameters()) do
      if p.name:match("lora_B") then p.tensor:copy_(E.randn(p.tensor:shape(), { generator = g }) * 0.2) end
    end
  end)
end

local function read_json(path)
  local f = assert(io.open(path, "rb"))
  local t = json.decode(f:read("a"))
  f:close()
  return t
end

describe("E.lora", function()
  it("zero-initialised B changes nothing, bit for bit", function()
    for _, case in ipairs({ { "llama", { "q_proj", "v_proj" } }, { "gpt2", { "c_attn" } } }) do
      local model = load(case[1])
      local base = logits(model)
      local a = E.lora.apply(model, { rank = 4, alpha = 8, targets = case[2], seed = 1 })
      assert.equals(0, max_abs(logits(model), base))
      assert.equals(2, a.scaling)
    end
  end)

  it("an adapted layer is x·Wᵀ + (α/r)·x·Aᵀ·Bᵀ", function()
    local model = load("llama")
    local a = E.lora.apply(model, { rank = 2, alpha = 3, targets = { "k_proj" }, seed = 2 })
    perturb(a, 3)
    local layer = model.model.layers[2].self_attn.k_proj
    local x = E.randn({ 1, 32 }, { seed = 4 })
    local y = E.no_grad(function() return layer(x) end):totable()[1]
    local xv, W, A, B = x:totable()[1], layer.weight:totable(), layer.lora_A.weight:totable(), layer.lora_B.weight:totable()
    local ax = {}
    for r = 1, 2 do
      ax[r] = 0
      for i = 1, 32 do ax[r] = ax[r] + A[r][i] * xv[i] end
    end
    for o = 1, #W do
      local want = 0
      for i = 1, 32 do want = want + W[o][i] * xv[i] end
      for r = 1, 2 do want = want + 1.5 * B[o][r] * ax[r] end
      assert.is_true(math.abs(y[o] - want) < 1e-5, string.format("output %d: %g vs %g", o, y[o], want))
    end
  end)

  it("disabled adapters give the base model; with_disabled restores them", function()
    local model = load("qwen2")
    local base = logits(model)
    local base_lp = E.no_grad(function() return model:logprobs(IDS, IDS) end)
    local a = E.lora.apply(model, { rank = 4, alpha = 16, targets = { "q_proj", "v_proj", "down_proj" }, seed = 1 })
    perturb(a, 5)
    local adapted = logits(model)
    assert.is_true(max_abs(adapted, base) > 1e-2)
    local ref = E.lora.with_disabled(model, function()
      return E.no_grad(function() return model:logprobs(IDS, IDS) end)
    end)
    assert.equals(0, max_abs(ref, base_lp))
    assert.equals(0, max_abs(logits(model), adapted))
    E.lora.disable(model)
    assert.equals(0, max_abs(logits(model), base))
    E.lora.enable(model)
    assert.equals(0, max_abs(logits(model), adapted))
    assert.is_false(pcall(E.lora.with_disabled, model, function() error("boom") end))
    assert.equals(0, max_abs(logits(model), adapted))
  end)

  it("only the adapters require and get gradients", function()
    local model = load("gpt2")
    local a = E.lora.apply(model, { rank = 2, alpha = 4, targets = { "c_attn", "c_fc" }, seed = 1 })
    perturb(a, 6)
    local adapter = {}
    for _, p in ipairs(a:parameters()) do adapter[p.tensor] = true end
    assert.equals(8, #a:parameters())
    assert.equals("transformer.h.0.attn.c_attn.lora_A.weight", a:parameters()[1].name)
    model:logprobs(IDS, IDS):sum():backward()
    for _, p in ipairs(model:parameters()) do
      assert.equals(adapter[p.tensor] == true, p.tensor:requires_grad(), p.name)
      assert.equals(adapter[p.tensor] == true, p.tensor.grad ~= nil, p.name)
    end
    assert.is_true(a:parameters()[1].tensor.grad:abs():sum():item() > 0)
  end)

  it("merge gives the adapted model (Linear and Conv1D) and removes the adapters", function()
    for _, case in ipairs({ { "llama", { "q_proj", "o_proj", "up_proj" } }, { "gpt2", { "c_attn", "c_proj" } } }) do
      local model = load(case[1])
      local n = #model:parameters()
      local a = E.lora.apply(model, { rank = 3, alpha = 6, targets = case[2], seed = 7 })
      perturb(a, 8)
      local adapted = logits(model)
      E.lora.merge(model)
      assert.is_true(max_abs(logits(model), adapted) < 1e-4)
      assert.equals(n, #model:parameters())
      assert.is_true(model:parameters()[1].tensor:requires_grad())
      local dir = H.tmpdir()
      model:save(dir)
      assert.is_nil(io.open(dir .. "/adapter_config.json"))
      assert.equals(0, max_abs(logits(assert(E.models.load(dir))), logits(model)))
    end
  end)

  it("unload gives the base model back", function()
    local model = load("llama")
    local base = logits(model)
    perturb(E.lora.apply(model, { rank = 2, targets = { "gate_proj" } }), 9)
    E.lora.unload(model)
    assert.equals(0, max_abs(logits(model), base))
    assert.equals("lora.merge: the model has no LoRA adapters (use E.lora.apply)",
      H.error_of(function() E.lora.merge(model) end))
  end)

  it("saves in PEFT's layout and loads back bit for bit", function()
    local model = load("llama")
    local a = E.lora.apply(model, { rank = 4, alpha = 8, targets = { "q_proj", "v_proj" }, seed = 3 })
    perturb(a, 10)
    local adapted = logits(model)
    local dir = H.tmpdir()
    E.lora.save(model, dir)
    local cfg = read_json(dir .. "/adapter_config.json")
    assert.equals("LORA", cfg.peft_type)
    assert.equals(4, cfg.r)
    assert.equals(8, cfg.lora_alpha)
    assert.same({ "q_proj", "v_proj" }, cfg.target_modules)
    assert.equals("CAUSAL_LM", cfg.task_type)
    assert.is_false(cfg.fan_in_fan_out)
    local st = E.safetensors.load(dir .. "/adapter_model.safetensors")
    assert.same({ 4, 32 }, st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]:shape())
    assert.same({ 16, 4 }, st["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]:shape())
    local n = 0
    for _ in pairs(st) do n = n + 1 end
    assert.equals(8, n)

    local fresh = load("llama")
    assert(E.lora.load(fresh, dir))
    assert.equals(0, max_abs(logits(fresh), adapted))

    -- model:save keeps unmerged adapters beside the base weights
    local full = H.tmpdir()
    model:save(full)
    local back = assert(E.models.load(full))
    assert.equals(0, max_abs(logits(back), adapted))
    assert.equals(8, #E.lora.parameters(back))
    local base = assert(E.models.load(full, { adapters = false }))
    assert.equals(0, max_abs(logits(base), logits(load("llama"))))
  end)

  it("GPT-2's Conv1D adapters are saved with fan_in_fan_out", function()
    local model = load("gpt2")
    E.lora.apply(model, { rank = 2, targets = { "c_attn" } })
    local dir = H.tmpdir()
    E.lora.save(model, dir)
    assert.is_true(read_json(dir .. "/adapter_config.json").fan_in_fan_out)
    assert.same({ 96, 2 },
      E.safetensors.load(dir .. "/adapter_model.safetensors")["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]:shape())
  end)

  it("names what is wrong", function()
    local model = load("gpt2")
    assert.equals('lora.apply: target "q_proj" matches no layer (the linear layers are c_attn, c_proj, c_fc)',
      H.error_of(function() E.lora.apply(model, { rank = 2, targets = { "q_proj" } }) end))
    assert.equals('lora.apply: target "mlp" matches transformer.h.0.mlp, which is not a Linear or Conv1D layer',
      H.error_of(function() E.lora.apply(model, { rank = 2, targets = { "mlp" } }) end))
    assert.equals("lora.apply: rank must be a positive integer, got 0",
      H.error_of(function() E.lora.apply(model, { rank = 0, targets = { "c_fc" } }) end))
    E.lora.apply(model, { rank = 2, targets = { "c_fc" } })
    assert.equals("lora.apply: the model already has LoRA adapters",
      H.error_of(function() E.lora.apply(model, { rank = 2, targets = { "c_fc" } }) end))

    -- a missing tensor: named, and the model is left without adapters
    local src = load("llama")
    E.lora.apply(src, { rank = 2, targets = { "q_proj" } })
    local dir = H.tmpdir()
    E.lora.save(src, dir)
    local st = E.safetensors.load(dir .. "/adapter_model.safetensors")
    st["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"] = nil
    assert(E.safetensors.save(dir .. "/adapter_model.safetensors", st, { format = "pt" }))
    local fresh = load("llama")
    assert.equals("lora.load: " .. dir
      .. '/adapter_model.safetensors: missing tensor "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"',
      H.error_of(function() E.lora.load(fresh, dir) end))
    assert.is_nil(rawget(fresh, "_lora"))
    assert.is_true(fresh:parameters()[1].tensor:requires_grad())
    local ok, err = E.lora.load(fresh, H.tmpdir() .. "/none")
    assert.is_nil(ok)
    assert.truthy(err:match("adapter_config.json: no such file$"))
  end)
end)
