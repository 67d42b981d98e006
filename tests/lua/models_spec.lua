-- models_spec.lua — E.nn and E.models: parity of GPT-2, Llama (GQA, untied
-- head) and Qwen2 (q/k/v biases, tied head) with the plain-PyTorch
-- references of scripts/make_model_fixtures.py (tests/fixtures/models/*),
-- including a left-padded batch; the KV cache against the full forward;
-- logprobs against log_softmax of the logits, worked out here by hand;
-- gradients against finite differences (float64); save-then-load bit for
-- bit; the loader's error messages word for word; the value and
-- multi-output heads. Threads: 1 for the whole file (the models are tiny:
-- thread start-up would dominate; the ops' own tests cover threading).
local H = require("helper")
local E = require("engine")
local json = require("dkjson")

local REPO = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$") or "."
local FIXTURES = REPO .. "/tests/fixtures/models"
local NAMES = { "gpt2", "llama", "qwen2" }

local threads = E.get_threads()
setup(function() E.set_threads(1) end)
teardown(function() E.set_threads(threads) end)

local function read_json(path)
  local f = assert(io.open(path, "rb"))
  local t = json.decode(f:read("a"), 1, json.null)
  f:close()
  return t
end

local function inputs(name) return read_json(FIXTURES .. "/" .. name .. "/inputs.json") end

-- columns a..b of each row of a table of rows
local function cols(rows, a, b)
  local out = {}
  for i, r in ipairs(rows) do out[i] = table.move(r, a, b, 1, {}) end
  return out
end

local function max_abs(a, b, mask)
  local d = (a - b):abs()
  if mask then d = d * mask end
  return d:max():item()
end

local function no_grad(fn) return E.no_grad(fn) end

local function tiny_llama(extra)
  local cfg = {
    model_type = "llama", vocab_size = 11, hidden_size = 8, intermediate_size = 12, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, initializer_range = 0.5, rope_theta = 100.0,
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return cfg
end

local function tiny_gpt2()
  return { model_type = "gpt2", vocab_size = 11, n_embd = 8, n_layer = 2, n_head = 2, n_positions = 8,
    initializer_range = 0.5 }
end

-- ---------------------------------------------------------------------------

describe("E.nn", function()
  it("names parameters as torch does, in order, tied ones once", function()
    local m = E.nn.Module()
    local emb = m:add_module("wte", E.nn.Embedding(5, 3))
    local blocks = m:add_module("h", E.nn.ModuleList({ E.nn.Linear(3, 2), E.nn.LayerNorm(2, { bias = false }) }))
    local head = m:add_module("head", E.nn.Module())
    head:register_parameter("weight", emb.weight) -- tied
    local names = {}
    for _, p in ipairs(m:parameters()) do names[#names + 1] = p.name end
    assert.same({ "wte.weight", "h.0.weight", "h.0.bias", "h.1.weight" }, names)
    assert.equals(15 + 6 + 2 + 2, m:num_parameters())
    assert.equals(2, #blocks)
    assert.equals(blocks[2], m:get_module("h.1"))
    local mods = {}
    for _, e in ipairs(m:named_modules()) do mods[#mods + 1] = e.name end
    assert.same({ "", "wte", "h", "h.0", "h.1", "head" }, mods)
  end)

  it("Linear is x·Wᵀ + b and Conv1D is x·W + b", function()
    local W = E.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } }) -- (out 3, in 2)
    local lin = E.nn.Linear(2, 3, { weight = W, bias_tensor = E.tensor({ 0.5, 0, -1 }) })
    H.assert_close(lin(E.tensor({ { 1, -1 } })):totable(), { { -0.5, -1, -2 } })
    local conv = E.nn.Conv1D(3, 2, { weight = E.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } }), bias = false })
    H.assert_close(conv(E.tensor({ { 1, 0, -1 } })):totable(), { { -4, -4 } })
  end)

  it("drops out in training mode only", function()
    local m = E.nn.Module()
    local d = m:add_module("drop", E.nn.Dropout(0.5, { generator = E.Generator(1) }))
    local x = E.ones({ 1000 })
    assert.is_false(d.training)
    assert.equals(1000, d(x):sum():item())
    m:train()
    local y = d(x):totable()
    local zeros, twos = 0, 0
    for _, v in ipairs(y) do
      if v == 0 then zeros = zeros + 1 elseif v == 2 then twos = twos + 1 end
    end
    assert.equals(1000, zeros + twos)
    assert.is_true(zeros > 400 and zeros < 600)
    m:eval()
    assert.equals(1000, d(x):sum():item())
  end)

  it("to() converts every parameter, keeping ties", function()
    local m = E.nn.Module()
    local a = m:add_module("a", E.nn.Linear(2, 2))
    local b = m:add_module("b", E.nn.Module())
    b:register_parameter("w", a.weight)
    m:to("float64")
    assert.equals("float64", a.weight:dtype())
    assert.equals(a.weight, b.w)
    assert.is_true(a.weight:requires_grad())
  end)
end)

-- ---------------------------------------------------------------------------

describe("parity with the PyTorch references", function()
  for _, name in ipairs(NAMES) do
    it(name .. ": plain and left-padded batches within 1e-4", function()
      local dir = FIXTURES .. "/" .. name
      local model = assert(E.models.load(dir))
      local inp = inputs(name)
      local exp = E.safetensors.load(dir .. "/expected.safetensors")
      local plain, padded = no_grad(function()
        return model:forward(inp.plain.input_ids),
            model:forward(inp.padded.input_ids, { attention_mask = inp.padded.attention_mask })
      end)
      assert.same({ 2, 7, 101 }, plain:shape())
      assert.equals(101, model.vocab_size)
      assert.is_true(max_abs(plain, exp["plain.logits"]) < 1e-4)
      local mask = E.tensor(inp.padded.attention_mask):reshape({ 3, 7, 1 })
      assert.is_true(max_abs(padded, exp["padded.logits"], mask) < 1e-4)
      -- row 2 of the padded batch is row 2 of the plain one behind 2 pads
      local a = padded:narrow(1, 2, 1):narrow(2, 3, 5)
      local b = plain:narrow(1, 2, 1):narrow(2, 1, 5)
      assert.is_true(max_abs(a, b) < 1e-5)
      assert.same({}, model.unused_tensors)
    end)
  end

  it("drops out in training mode only; to('float64') keeps the function", function()
    local model = assert(E.models.load(FIXTURES .. "/gpt2")) -- embd/resid_pdrop 0.1
    local ids = inputs("gpt2").plain.input_ids
    local a = no_grad(function() return model:forward(ids) end)
    model:train()
    local b = no_grad(function() return model:forward(ids) end)
    assert.is_true(max_abs(a, b) > 1e-3)
    model:eval()
    assert.equals(0, max_abs(a, no_grad(function() return model:forward(ids) end)))
    local llama = assert(E.models.load(FIXTURES .. "/llama"))
    local c = no_grad(function() return llama:forward(ids) end)
    llama:to("float64")
    local d = no_grad(function() return llama:forward(ids) end)
    assert.equals("float64", d:dtype())
    assert.is_true(max_abs(c:double(), d) < 1e-4)
  end)

  it("refuses an unknown option (a typo would silently drop the mask)", function()
    local model = assert(E.models.load(FIXTURES .. "/qwen2"))
    assert.equals("hidden: unknown option 'mask' (the options are attention_mask, cache, chunk_rows)",
      H.error_of(function() model:forward({ { 1, 2 } }, { mask = { { 1, 1 } } }) end))
  end)

  it("takes ids as a tensor too, and hidden gives (B,T,C)", function()
    local model = assert(E.models.load(FIXTURES .. "/llama"))
    local ids = inputs("llama").plain.input_ids
    no_grad(function()
      local a = model:forward(ids)
      local b = model:forward(E.tensor(ids))
      assert.equals(0, max_abs(a, b))
      assert.same({ 2, 7, 32 }, model:hidden(ids):shape())
    end)
  end)
end)

-- ---------------------------------------------------------------------------

describe("KV cache", function()
  for _, name in ipairs(NAMES) do
    it(name .. ": incremental forward equals the full one (left padding)", function()
      local model = assert(E.models.load(FIXTURES .. "/" .. name))
      local inp = inputs(name).padded
      local ids, mask = inp.input_ids, inp.attention_mask
      no_grad(function()
        local full = model:forward(ids, { attention_mask = mask })
        local cache = model:new_cache(3, 9)
        local parts = {}
        for _, s in ipairs({ { 1, 4 }, { 5, 5 }, { 6, 6 }, { 7, 7 } }) do
          parts[#parts + 1] = model:forward(cols(ids, s[1], s[2]), { attention_mask = cols(mask, 1, s[2]), cache = cache })
          assert.equals(s[2], cache.len)
        end
        local m = E.tensor(mask):reshape({ 3, 7, 1 })
        assert.is_true(max_abs(E.cat(parts, 2), full, m) < 1e-5)
      end)
    end)
  end

  it("without a mask, positions continue from cache.len", function()
    local model = assert(E.models.load(FIXTURES .. "/qwen2"))
    local ids = inputs("qwen2").plain.input_ids
    no_grad(function()
      local full = model:forward(ids)
      local cache = model:new_cache(2, 7)
      local a = model:forward(cols(ids, 1, 3), { cache = cache })
      local b = model:forward(cols(ids, 4, 7), { cache = cache })
      assert.is_true(max_abs(E.cat({ a, b }, 2), full) < 1e-5)
    end)
  end)

  it("refuses to overflow and checks the mask's length", function()
    local model = assert(E.models.load(FIXTURES .. "/gpt2"))
    local cache = model:new_cache(1, 4)
    no_grad(function() model:forward({ { 1, 2, 3 } }, { cache = cache }) end)
    assert.equals("hidden: the cache holds 4 positions; 3 are filled and 2 more were given",
      H.error_of(function() model:forward({ { 1, 2 } }, { cache = cache }) end))
    assert.equals("hidden: attention_mask is [1,1], expected (B,cache.len+T) = [1,4]",
      H.error_of(function() model:forward({ { 1 } }, { cache = cache, attention_mask = E.ones({ 1, 1 }) }) end))
    assert.equals("hidden: the cache was made for 1 rows, ids has 2",
      H.error_of(function() model:forward({ { 1 }, { 2 } }, { cache = cache }) end))
    -- the message points at the caller's line, not into the library
    local ok, err = pcall(function() model:logprobs({ { 1 }, { 2 } }, { { 1 }, { 2 } }, { cache = cache }) end)
    assert.is_false(ok)
    assert.truthy(err:match("^[^:]*models_spec%.lua:%d+: hidden: the cache was made for 1 rows"), err)
  end)
end)

-- ---------------------------------------------------------------------------

describe("logprobs", function()
  it("is log_softmax(logits) at the labels, 0 where a label is < 0", function()
    local model = assert(E.models.load(FIXTURES .. "/llama"))
    local inp = inputs("llama").padded
    local labels = { { 5, 17, 100, 0, 3, 42, -100 }, { -100, -100, 7, 8, 9, 10, 11 }, { -1, -1, -1, -1, 1, 2, 3 } }
    local opts = { attention_mask = inp.attention_mask }
    local logits = no_grad(function() return model:forward(inp.input_ids, opts) end):totable()
    for _, chunk in ipairs({ 2, 1000 }) do
      local lp = no_grad(function()
        return model:logprobs(inp.input_ids, labels, { attention_mask = inp.attention_mask, chunk_rows = chunk })
      end)
      assert.same({ 3, 7 }, lp:shape())
      lp = lp:totable()
      for b = 1, 3 do
        for t = 1, 7 do
          local l = labels[b][t]
          if l < 0 then
            assert.equals(0, lp[b][t])
          else
            local row, mx = logits[b][t], -math.huge
            for _, v in ipairs(row) do mx = math.max(mx, v) end
            local s = 0
            for _, v in ipairs(row) do s = s + math.exp(v - mx) end
            local want = row[l + 1] - mx - math.log(s)
            assert.is_true(math.abs(lp[b][t] - want) < 1e-5, string.format("[%d,%d] %g vs %g", b, t, lp[b][t], want))
          end
        end
      end
    end
  end)

  it("names a label out of range", function()
    local model = assert(E.models.load(FIXTURES .. "/gpt2"))
    assert.equals("logprobs: label 101 at [1,2] is out of range: the vocabulary has 101 entries",
      H.error_of(function() model:logprobs({ { 1, 2 } }, { { 0, 101 } }) end))
    assert.equals("logprobs: labels is [1,3], ids is [1,2]: they must have the same shape",
      H.error_of(function() model:logprobs({ { 1, 2 } }, E.zeros({ 1, 3 })) end))
  end)
end)

-- ---------------------------------------------------------------------------

describe("gradients (float64, against central differences)", function()
  -- E.gradcheck of the summed logprobs of a padded batch w.r.t. the named
  -- parameters (swapped in as gradcheck's float64 copies)
  local function check(cfg, names)
    local m = E.models.new(cfg, { seed = 5, dtype = "float64" })
    local ids = { { 1, 2, 3, 4, 5 }, { 0, 0, 6, 7, 8 } }
    local mask = { { 1, 1, 1, 1, 1 }, { 0, 0, 1, 1, 1 } }
    local labels = { { 2, 3, 4, 5, -100 }, { -100, -100, 7, 8, 9 } }
    local slots, inputs = {}, {}
    for i, n in ipairs(names) do
      local path, field = n:match("^(.*)%.([^.]+)$")
      slots[i] = { m:get_module(path), field }
      inputs[i] = slots[i][1][field]
    end
    local function f(...)
      local args, old = { ... }, {}
      for i, s in ipairs(slots) do
        old[i] = s[1][s[2]]
        rawset(s[1], s[2], args[i])
      end
      local lp = m:logprobs(ids, labels, { attention_mask = mask, chunk_rows = 3 })
      for i, s in ipairs(slots) do rawset(s[1], s[2], old[i]) end
      return -lp:sum()
    end
    local ok, report = E.gradcheck(f, inputs, { atol = 1e-6, rtol = 1e-5 })
    assert(ok, report)
  end

  it("llama (GQA, untied)", function()
    check(tiny_llama(), { "model.norm.weight", "model.layers.0.self_attn.k_proj.weight",
      "model.layers.1.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight" })
  end)

  it("gpt2 (tied head)", function()
    check(tiny_gpt2(), { "transformer.wte.weight", "transformer.wpe.weight",
      "transformer.h.0.attn.c_attn.bias", "transformer.h.1.mlp.c_fc.bias", "transformer.ln_f.weight" })
  end)

  it("qwen2 (biases, tied)", function()
    check(tiny_llama({ model_type = "qwen2", num_hidden_layers = 1, tie_word_embeddings = true }),
      { "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.v_proj.weight", "model.embed_tokens.weight" })
  end)
end)

-- ---------------------------------------------------------------------------

describe("save and load", function()
  local function same_parameters(a, b)
    local pa, pb = a:parameters(), b:parameters()
    assert.equals(#pa, #pb)
    for i = 1, #pa do
      assert.equals(pa[i].name, pb[i].name)
      assert.equals(pa[i].tensor:dtype(), pb[i].tensor:dtype())
      assert.same(pa[i].tensor:totable(), pb[i].tensor:totable())
    end
  end

  for _, name in ipairs(NAMES) do
    it(name .. ": bit for bit, config included", function()
      local a = assert(E.models.load(FIXTURES .. "/" .. name))
      local dir = H.tmpdir()
      a:save(dir)
      local b = assert(E.models.load(dir))
      same_parameters(a, b)
      local ids = inputs(name).plain.input_ids
      no_grad(function() assert.equals(0, max_abs(a:forward(ids), b:forward(ids))) end)
      local cfg = read_json(dir .. "/config.json")
      local orig = read_json(FIXTURES .. "/" .. name .. "/config.json")
      assert.same(orig, cfg)
      local names = {}
      for n in pairs(E.safetensors.load(dir .. "/model.safetensors")) do names[#names + 1] = n end
      table.sort(names)
      assert.equals(#a:parameters(), #names)
      if name == "gpt2" then
        assert.equals("transformer.h.0.attn.c_attn.bias", names[1]) -- the prefix Hugging Face writes
      end
    end)
  end

  it("a float64 model from E.models.new, bit for bit", function()
    local a = E.models.new(tiny_llama(), { seed = 9, dtype = "float64" })
    local dir = H.tmpdir()
    a:save(dir)
    local b = assert(E.models.load(dir, { dtype = "float64" }))
    same_parameters(a, b)
    assert.equals("LlamaForCausalLM", read_json(dir .. "/config.json").architectures[1])
  end)

  it("E.models.new is reproducible from its seed", function()
    local a = E.models.new(tiny_gpt2(), { seed = 3 })
    local b = E.models.new(tiny_gpt2(), { seed = 3 })
    local c = E.models.new(tiny_gpt2(), { seed = 4 })
    same_parameters(a, b)
    assert.are_not.same(a:parameters()[1].tensor:totable(), c:parameters()[1].tensor:totable())
    assert.is_true(a.transformer.h[1].ln_1.weight:requires_grad())
  end)
end)

-- ---------------------------------------------------------------------------

describe("loader errors", function()
  -- a copy of a fixture with its config and tensors edited
  local function broken(name, edit_cfg, edit_tensors)
    local src = FIXTURES .. "/" .. name
    local dir = H.tmpdir()
    local cfg = read_json(src .. "/config.json")
    if edit_cfg then edit_cfg(cfg) end
    H.write_file(dir .. "/config.json", json.encode(cfg))
    local tensors = E.safetensors.load(src .. "/model.safetensors")
    if edit_tensors then edit_tensors(tensors) end
    assert(E.safetensors.save(dir .. "/model.safetensors", tensors, { format = "pt" }))
    return dir
  end

  local function load_error(dir) return H.error_of(function() E.models.load(dir) end) end

  it("a missing key", function()
    local dir = broken("gpt2", function(c) c.n_head = nil end)
    assert.equals("models.load: " .. dir .. '/config.json: missing key "n_head"', load_error(dir))
    dir = broken("llama", function(c) c.model_type = nil end)
    assert.equals("models.load: " .. dir .. '/config.json: missing key "model_type"', load_error(dir))
  end)

  it("an unknown model_type", function()
    local dir = broken("llama", function(c) c.model_type = "bert" end)
    assert.equals("models.load: " .. dir .. '/config.json: unknown model_type "bert" (supported: gpt2, llama, qwen2)',
      load_error(dir))
  end)

  it("inconsistent or ill-typed keys", function()
    local dir = broken("llama", function(c) c.num_key_value_heads = 3 end)
    assert.equals("models.load: " .. dir
      .. '/config.json: "num_attention_heads" (4) is not a multiple of "num_key_value_heads" (3)', load_error(dir))
    dir = broken("gpt2", function(c) c.n_embd = 30 end)
    assert.equals("models.load: " .. dir .. '/config.json: "n_embd" (30) is not a multiple of "n_head" (4)',
      load_error(dir))
    dir = broken("qwen2", function(c) c.num_hidden_layers = "2" end)
    assert.equals("models.load: " .. dir .. '/config.json: key "num_hidden_layers" must be a positive integer, got "2"',
      load_error(dir))
    dir = broken("llama", function(c) c.hidden_act = "gelu" end)
    assert.equals("models.load: " .. dir .. '/config.json: key "hidden_act" is "gelu"; supported: silu', load_error(dir))
  end)

  it("a missing tensor", function()
    local dir = broken("llama", nil, function(t) t["model.layers.1.mlp.down_proj.weight"] = nil end)
    assert.equals("models.load: " .. dir .. '/model.safetensors: missing tensor "model.layers.1.mlp.down_proj.weight"',
      load_error(dir))
    dir = broken("llama", nil, function(t) t["lm_head.weight"] = nil end)
    assert.equals("models.load: " .. dir .. '/model.safetensors: missing tensor "lm_head.weight"', load_error(dir))
  end)

  it("a tensor of the wrong shape", function()
    local dir = broken("gpt2", nil, function(t) t["h.1.attn.c_attn.weight"] = E.zeros({ 96, 32 }) end)
    assert.equals("models.load: " .. dir .. '/model.safetensors: tensor "h.1.attn.c_attn.weight" is [96,32], expected [32,96]',
      load_error(dir))
  end)

  it("missing files are nil, message", function()
    local dir = H.tmpdir()
    local m, err = E.models.load(dir)
    assert.is_nil(m)
    assert.equals("models.load: " .. dir .. "/config.json: no such file", err)
    H.write_file(dir .. "/config.json", json.encode(tiny_gpt2()))
    m, err = E.models.load(dir)
    assert.is_nil(m)
    assert.equals("models.load: " .. dir .. ": no model.safetensors or model.safetensors.index.json", err)
  end)

  it("E.models.new checks the config the same way", function()
    assert.equals('models.new: config: missing key "vocab_size"',
      H.error_of(function() E.models.new({ model_type = "gpt2" }) end))
    assert.equals("models.new: unknown option 'sed' (the options are dtype, generator, seed)",
      H.error_of(function() E.models.new(tiny_gpt2(), { sed = 1 }) end))
  end)

  it("unknown tensors are listed, not fatal", function()
    local dir = broken("qwen2", nil, function(t) t["extra.weight"] = E.zeros({ 2 }) end)
    local m = assert(E.models.load(dir))
    assert.same({ "extra.weight" }, m.unused_tensors)
  end)
end)

-- ---------------------------------------------------------------------------

describe("value and multi-output heads", function()
  -- hidden · wᵀ by hand: (B,T,K)
  local function by_hand(h, w)
    local out = {}
    for b, row in ipairs(h) do
      out[b] = {}
      for t, x in ipairs(row) do
        out[b][t] = {}
        for k, wk in ipairs(w) do
          local s = 0
          for c = 1, #x do s = s + x[c] * wk[c] end
          out[b][t][k] = s
        end
      end
    end
    return out
  end

  it("values per position; score at the last non-padding token", function()
    local model = E.models.with_value_head(assert(E.models.load(FIXTURES .. "/llama")), { seed = 1 })
    local ids = { { 1, 2, 3, 4, 5 }, { 6, 7, 8, 9, 10 } }
    local mask = { { 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 1 } } -- right padding
    local want = by_hand(no_grad(function() return model:hidden(ids, { attention_mask = mask }) end):totable(),
      model.score_head.weight:totable())
    local v = no_grad(function() return model:values(ids, { attention_mask = mask }) end)
    assert.same({ 2, 5 }, v:shape())
    v = v:totable()
    for b = 1, 2 do
      for t = 1, 5 do assert.is_true(math.abs(v[b][t] - want[b][t][1]) < 1e-5) end
    end
    local s = no_grad(function() return model:score(ids, { attention_mask = mask }) end)
    assert.same({ 2 }, s:shape())
    assert.is_true(math.abs(s:totable()[1] - want[1][3][1]) < 1e-5)
    assert.is_true(math.abs(s:totable()[2] - want[2][5][1]) < 1e-5)
    assert.equals("score.weight", model:parameters()[#model:parameters()].name)
  end)

  it("a K-output head gives (B,T,K) and (B,K)", function()
    local model = E.models.with_value_head(assert(E.models.load(FIXTURES .. "/gpt2")), { num_outputs = 3, seed = 2 })
    local ids = { { 1, 2, 3, 4 } }
    local want = by_hand(no_grad(function() return model:hidden(ids) end):totable(), model.score_head.weight:totable())
    local o = no_grad(function() return model:outputs(ids) end)
    assert.same({ 1, 4, 3 }, o:shape())
    H.assert_close(o:totable(), want, 1e-5)
    H.assert_close(no_grad(function() return model:score(ids) end):totable(), { want[1][4] }, 1e-5)
    assert.equals("values: the head has 3 outputs; model:outputs(ids, opts) gives them as (B,T,K)",
      H.error_of(function() model:values(ids) end))
  end)

  it("a reward model saves as *ForSequenceClassification and loads back", function()
    local model = E.models.with_value_head(assert(E.models.load(FIXTURES .. "/qwen2")), { seed = 3 })
    local dir = H.tmpdir()
    model:save(dir)
    local cfg = read_json(dir .. "/config.json")
    assert.equals("Qwen2ForSequenceClassification", cfg.architectures[1])
    assert.same({ ["0"] = "LABEL_0" }, cfg.id2label)
    assert.same({ 1, 32 }, E.safetensors.load(dir .. "/model.safetensors")["score.weight"]:shape())
    local back = assert(E.models.load(dir))
    local ids = { { 3, 1, 4, 1, 5 } }
    no_grad(function() assert.equals(0, max_abs(model:values(ids), back:values(ids))) end)
  end)

  it("load(dir, {value_head=}) adds a fresh head", function()
    local model = assert(E.models.load(FIXTURES .. "/gpt2", { value_head = { seed = 4, num_outputs = 2 } }))
    assert.same({ 2, 32 }, model.score_head.weight:shape())
    assert.same({ 1, 3, 2 }, no_grad(function() return model:outputs({ { 1, 2, 3 } }) end):shape())
  end)

  it("a model without a head says so", function()
    local model = E.models.new(tiny_gpt2())
    assert.equals("values: the model has no value head (use E.models.with_value_head(model))",
      H.error_of(function() model:values({ { 1 } }) end))
  end)
end)
