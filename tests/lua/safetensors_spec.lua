-- safetensors_spec.lua — E.safetensors seen from Lua: files (load, open,
-- save), checkpoint directories (load_dir, save_dir, shards and their
-- index), the errors (nil, message for a missing file; a raised message
-- naming the file, tensor and rule for a broken one). Reference values come
-- from the fixtures scripts/make_safetensors_fixtures.py made with PyTorch,
-- or are worked out by hand. The C test (tests/c/test_safetensors.c) covers
-- every validation rule of the reader; here the Lua layers on top.
local H = require("helper")
local E = require("engine")
local json = require("dkjson")
local lfs = require("lfs")

local S = E.safetensors
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local FIX = here .. "/../fixtures/safetensors"

local function ls(dir)
  local out = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- a safetensors image from a header string and data bytes
local function image(header, data) return string.pack("<I8", #header) .. header .. (data or "") end

-- the float32 bit patterns of a flat table of numbers
local function f32_bits(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = string.unpack("<I4", string.pack("<f", v)) end
  return out
end

local function flat(x) return x:reshape({ -1 }):totable() end

describe("E.safetensors.load", function()
  it("reads F32, F64, F16 and BF16 as float32 with PyTorch's values", function()
    local t, meta = S.load(FIX .. "/dtypes.safetensors", { skip_unloadable = true })
    local want = S.load(FIX .. "/dtypes_expected.safetensors")
    for _, name in ipairs({ "f16", "bf16", "f64" }) do
      assert.equals("float32", t[name]:dtype())
      assert.same(want[name]:shape(), t[name]:shape())
      H.assert_close(flat(t[name]), flat(want[name]), 0)
    end
    assert.same({ 2, 6 }, t.f64:shape())
    local max_f32 = (string.unpack("<f", string.pack("<I4", 0x7f7fffff)))
    local min_sub = (string.unpack("<f", string.pack("<I4", 1)))
    assert.same({ { 1.5, 0, max_f32 }, { min_sub, -math.huge, -7.25 } }, t.f32:totable())
    assert.equals(42.5, t.scalar:item())
    assert.same({ 0, 3 }, t.empty:shape())
    assert.is_nil(t.i64)
    assert.is_nil(t.u8)
    assert.same({ format = "pt", made_by = "scripts/make_safetensors_fixtures.py" }, meta)
  end)

  it("loads into float64 when asked, exactly", function()
    local t = S.load(FIX .. "/dtypes.safetensors", { dtype = "float64", skip_unloadable = true })
    assert.equals("float64", t.f64:dtype())
    assert.equals(0.1, t.f64:totable()[1][1])
    assert.equals(1e300, t.f64:totable()[1][3])
    assert.equals(2 ^ -24, t.f16:totable()[1][3]) -- 0x0001, the smallest subnormal half
  end)

  it("raises naming the file and tensor for a dtype the engine cannot load", function()
    local path = FIX .. "/dtypes.safetensors"
    assert.equals(path .. ": tensor 'i64' is I64, which the engine cannot load (it loads F32, F64, F16 and BF16)",
      H.error_of(S.load, path))
    -- the position in front is the caller's, not the library's
    local ok, err = pcall(function() local t = S.load(path) return t end)
    assert.is_false(ok)
    assert.truthy(err:find("^[^\n]*safetensors_spec%.lua:%d+: "), err)
  end)

  it("returns nil and a message for a missing file", function()
    local dir = H.tmpdir()
    local t, err = S.load(dir .. "/nope.safetensors")
    assert.is_nil(t)
    assert.equals(dir .. "/nope.safetensors: cannot open: No such file or directory", err)
  end)

  it("raises with the rule for a corrupt file", function()
    local dir = H.tmpdir()
    local path = dir .. "/bad.safetensors"
    write(path, image('{"w":{"dtype":"F32","shape":[5,6],"data_offsets":[0,100]}}', string.rep("\0", 100)))
    assert.equals(path .. ": tensor 'w': data_offsets [0, 100] but F32 [5,6] needs 120 bytes",
      H.error_of(S.load, path))
    write(path, image('{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}', string.rep("\0", 16)))
    assert.equals(path .. ": tensor 'w': the size of F32 [4611686018427387904,4] overflows 64 bits",
      H.error_of(S.open, path))
    write(path, string.pack("<I8", 1000) .. "{}")
    assert.equals(path .. ": header length 1000 runs past the end of the file (10 bytes)", H.error_of(S.load, path))
  end)

  it("checks its arguments", function()
    assert.equals("safetensors.load: path must be a string, got nil", H.error_of(S.load))
    assert.equals("safetensors.load: unknown option 'dtyp' (the options are dtype, skip_unloadable)",
      H.error_of(S.load, "x", { dtyp = "float64" }))
    assert.equals('safetensors.load: dtype must be "float32" or "float64", got F16',
      H.error_of(S.load, "x", { dtype = "F16" }))
  end)
end)

describe("E.safetensors.open", function()
  it("lists, describes and loads tensors one at a time", function()
    local h <close> = S.open(FIX .. "/dtypes.safetensors")
    assert.same({ "bf16", "empty", "f16", "f32", "f64", "i64", "scalar", "u8" }, h:names())
    -- laid out by descending dtype (I64, F64, F32, BF16, F16, U8), then name
    assert.same({ dtype = "I64", shape = { 3 }, data_offsets = { 0, 24 }, loadable = false }, h:info("i64"))
    assert.same({ dtype = "F32", shape = { 0, 3 }, data_offsets = { 120, 120 }, loadable = true }, h:info("empty"))
    assert.same({ dtype = "F16", shape = { 4, 16 }, data_offsets = { 244, 372 }, loadable = true }, h:info("f16"))
    assert.same({ dtype = "U8", shape = { 3 }, data_offsets = { 372, 375 }, loadable = false }, h:info("u8"))
    assert.is_nil(h:info("nope"))
    assert.equals("float64", h:load("f32", "float64"):dtype())
    assert.equals(FIX .. "/dtypes.safetensors: tensor 'u8' is U8, which the engine cannot load (it loads F32, F64, F16 and BF16)",
      H.error_of(h.load, h, "u8"))
    assert.equals(FIX .. "/dtypes.safetensors: no tensor named 'zz'", H.error_of(h.load, h, "zz"))
    assert.equals("pt", h:metadata().format)
    assert.equals(FIX .. "/dtypes.safetensors", h:path())
    assert.equals("safetensors " .. FIX .. "/dtypes.safetensors (8 tensors)", tostring(h))
  end)

  it("closes once, by :close(), <close> or the collector; a closed handle raises", function()
    local h = S.open(FIX .. "/layout.safetensors")
    local x = h:load("b")
    h:close()
    h:close()
    assert.equals("safetensors (closed)", tostring(h))
    assert.equals("names: the safetensors handle is closed", H.error_of(h.names, h))
    assert.equals("load: the safetensors handle is closed", H.error_of(h.load, h, "b"))
    assert.same({ { 0, 0.25, 0.5 }, { 0.75, 1, 1.25 } }, x:totable()) -- the tensor outlives the handle
    do
      local g <close> = S.open(FIX .. "/layout.safetensors")
      h = g
    end
    assert.equals("safetensors (closed)", tostring(h))
    assert.equals("names: expected a safetensors handle, got number", H.error_of(h.names, 5))
  end)
end)

describe("E.safetensors.save", function()
  it("round-trips float32 and float64 bit for bit, with metadata", function()
    local dir = H.tmpdir()
    local a = E.randn({ 3, 5 }, { seed = 3 }) * 1e-3
    local b = E.randn({ 4 }, { seed = 4, dtype = "float64" })
    local c = E.tensor({ -0.0, 1 / 0, 3.4e38, 1e-45 })
    assert.is_true(S.save(dir .. "/m.safetensors", { a = a, ["b.weight"] = b, c = c }, { step = "3", note = "x" }))
    local t, meta = S.load(dir .. "/m.safetensors", { dtype = "float64" })
    assert.same({ step = "3", note = "x" }, meta)
    assert.same(f32_bits(flat(a)), f32_bits(flat(t.a)))
    assert.same(flat(b), flat(t["b.weight"])) -- float64 values compare exactly
    assert.same(f32_bits(flat(c)), f32_bits(flat(t.c))) -- -0 keeps its sign
    local h <close> = S.open(dir .. "/m.safetensors")
    assert.equals("F64", h:info("b.weight").dtype) -- float64 is written as F64
    assert.equals("F32", h:info("a").dtype)
    assert.same({ "m.safetensors" }, ls(dir)) -- no temporary left behind
  end)

  it("converts on request, rounding to nearest even", function()
    local dir = H.tmpdir()
    -- 1 + 2^-8 is halfway between two bfloat16 values: rounds to even (1);
    -- 1 + 3*2^-8 rounds up to 1 + 2^-6; 65520 overflows float16
    local x = E.tensor({ 1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 65520, 1 / 3 })
    assert.is_true(S.save(dir .. "/b.safetensors", { x = x }, nil, { dtype = "bfloat16" }))
    assert.is_true(S.save(dir .. "/h.safetensors", { x = x }, nil, { dtype = "F16" }))
    local b = S.load(dir .. "/b.safetensors").x:totable()
    local h = S.load(dir .. "/h.safetensors").x:totable()
    assert.same({ 1, 1 + 2 ^ -6, 65536, 0.333984375 }, b)
    assert.same({ 1 + 2 ^ -8, 1 + 3 * 2 ^ -8, math.huge, 0.333251953125 }, h)
    local hb <close> = S.open(dir .. "/b.safetensors")
    assert.equals("BF16", hb:info("x").dtype)
  end)

  it("returns nil and a message when the file cannot be written", function()
    local dir = H.tmpdir()
    local ok, err = S.save(dir .. "/no/such/dir/m.safetensors", { x = E.ones({ 2 }) })
    assert.is_nil(ok)
    local prefix = dir .. "/no/such/dir/m.safetensors: cannot create m.safetensors.tmp-"
    assert.equals(prefix, err:sub(1, #prefix))
    assert.truthy(err:sub(#prefix + 1):find("^%d+: No such file or directory$"), err)
    assert.same({}, ls(dir))
  end)

  it("raises for bad arguments, before writing anything", function()
    local dir = H.tmpdir()
    local p = dir .. "/m.safetensors"
    assert.equals("safetensors.save: tensors['x'] must be a tensor, got number", H.error_of(S.save, p, { x = 1 }))
    assert.equals("safetensors.save: tensor names must be strings, got a number key", H.error_of(S.save, p, { E.ones({ 1 }) }))
    assert.equals("safetensors.save: metadata['k'] must be a string, got number",
      H.error_of(S.save, p, { x = E.ones({ 1 }) }, { k = 1 }))
    assert.equals("safetensors.save: tensors must be a table of name -> tensor, got nil", H.error_of(S.save, p))
    assert.equals(p .. ": '__metadata__' cannot name a tensor (the header reserves it)",
      H.error_of(S.save, p, { __metadata__ = E.ones({ 1 }) }))
    assert.equals("safetensors.save: dtype must be one of F32, F64, F16, BF16 (or float32, float64, float16, bfloat16), got I8",
      H.error_of(S.save, p, { x = E.ones({ 1 }) }, nil, { dtype = "I8" }))
    assert.equals("safetensors.save: a tensor name contains a NUL byte", H.error_of(S.save, p, { ["a\0b"] = E.ones({ 1 }) }))
    assert.same({}, ls(dir))
  end)
end)

describe("E.safetensors.load_dir", function()
  it("loads a sharded checkpoint through its index", function()
    local t, meta = S.load_dir(FIX .. "/sharded")
    local names = {}
    for k in pairs(t) do names[#names + 1] = k end
    table.sort(names)
    assert.same({ "h.0.ln_1.bias", "h.0.ln_1.weight", "ln_f.weight", "wpe.weight", "wte.weight" }, names)
    -- the fixture's values are k/8 for k = 0, 1, 2, ... in the order the script made them
    local function seq(from, n)
      local out = {}
      for i = 1, n do out[i] = (from + i - 1) / 8 end
      return out
    end
    assert.same(seq(0, 20), flat(t["wte.weight"]))
    assert.same({ 5, 4 }, t["wte.weight"]:shape())
    assert.same(seq(20, 12), flat(t["wpe.weight"]))
    assert.same(seq(32, 4), flat(t["h.0.ln_1.weight"]))
    assert.same(seq(36, 4), flat(t["h.0.ln_1.bias"]))
    assert.same(seq(40, 4), flat(t["ln_f.weight"]))
    assert.equals(176, meta.total_size)
  end)

  it("returns nil, message for a missing directory or an empty one", function()
    local dir = H.tmpdir()
    local t, err = S.load_dir(dir .. "/nope")
    assert.is_nil(t)
    assert.equals(dir .. "/nope: no such directory", err)
    t, err = S.load_dir(dir)
    assert.is_nil(t)
    assert.equals(dir .. ": holds neither model.safetensors nor model.safetensors.index.json", err)
  end)

  -- a copy of the sharded fixture with its index replaced by `edit(index)`
  local function broken(edit)
    local dir = H.tmpdir()
    for _, name in ipairs(ls(FIX .. "/sharded")) do write(dir .. "/" .. name, read(FIX .. "/sharded/" .. name)) end
    local index = json.decode(read(dir .. "/model.safetensors.index.json"))
    local text = edit(index, dir)
    write(dir .. "/model.safetensors.index.json", text or json.encode(index))
    return dir, dir .. "/model.safetensors.index.json"
  end
  local S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

  it("refuses an index whose shard is missing", function()
    local dir, index = broken(function(_, d) os.remove(d .. "/" .. S2) end)
    assert.equals(index .. ": tensor 'h.0.ln_1.bias' is mapped to '" .. S2 .. "', which does not exist",
      H.error_of(S.load_dir, dir))
  end)

  it("refuses an index that lists a tensor its shard does not hold", function()
    local dir, index = broken(function(ix) ix.weight_map.extra = S1 end)
    assert.equals(index .. ": tensor 'extra' is mapped to '" .. S1 .. "', which does not hold it",
      H.error_of(S.load_dir, dir))
  end)

  it("refuses a shard holding a tensor the index does not list, or puts elsewhere", function()
    local dir, index = broken(function(ix) ix.weight_map["wpe.weight"] = nil end)
    assert.equals(index .. ": shard '" .. S1 .. "' holds tensor 'wpe.weight', which weight_map does not list",
      H.error_of(S.load_dir, dir))
    dir, index = broken(function(ix) ix.weight_map["wpe.weight"] = S2 end)
    assert.equals(index .. ": shard '" .. S1 .. "' holds tensor 'wpe.weight', which weight_map puts in '" .. S2 .. "'",
      H.error_of(S.load_dir, dir))
  end)

  it("refuses shard names outside the directory, and malformed indexes", function()
    local dir, index = broken(function(ix) ix.weight_map.x = "../x.safetensors" end)
    assert.equals(index .. ": tensor 'x': shard '../x.safetensors' is not a file name in the checkpoint's directory",
      H.error_of(S.load_dir, dir))
    dir, index = broken(function(ix) ix.weight_map.x = 5 end)
    assert.equals(index .. ": tensor 'x': the shard must be a file name, got number", H.error_of(S.load_dir, dir))
    dir, index = broken(function() return '{"weight_map": {"a": "b"' end)
    assert.equals(index .. ": not valid JSON: unterminated object at line 1, column 16", H.error_of(S.load_dir, dir))
    dir, index = broken(function() return '{"weight_map": {}} x' end)
    assert.equals(index .. ": not valid JSON: text after the value at byte 19", H.error_of(S.load_dir, dir))
    dir, index = broken(function() return '{"metadata": {}}' end)
    assert.equals(index .. ': has no "weight_map" object', H.error_of(S.load_dir, dir))
    dir, index = broken(function() return '[1]' end)
    assert.equals(index .. ": is a JSON array, not an object", H.error_of(S.load_dir, dir))
  end)

  it("passes on a shard's own refusal", function()
    local dir = broken(function(_, d) write(d .. "/" .. S2, image("{}", "xyz")) end)
    assert.equals(dir .. "/" .. S2 .. ": the header lists no tensors, but the data area holds 3 bytes",
      H.error_of(S.load_dir, dir))
  end)
end)

describe("E.safetensors.save_dir", function()
  it("writes one model.safetensors (format pt) when everything fits", function()
    local dir = H.tmpdir() .. "/a/b"
    local x, y = E.randn({ 4, 3 }, { seed = 1 }), E.ones({ 2 }, "float64")
    assert.is_true(S.save_dir(dir, { x = x, y = y }, { metadata = { step = "7" } }))
    assert.same({ "model.safetensors" }, ls(dir))
    local t, meta = S.load_dir(dir)
    assert.same({ format = "pt", step = "7" }, meta)
    assert.same(f32_bits(flat(x)), f32_bits(flat(t.x)))
    assert.same({ 1, 1 }, t.y:totable())
  end)

  it("shards as Hugging Face does, and loads back", function()
    local dir = H.tmpdir()
    -- sorted: a (400 B), b (400 B), c (1200 B, over the limit: a shard of
    -- its own, emitted first), d (40 B, does not fit after a and b)
    local ts = { a = E.full({ 100 }, 1), b = E.full({ 100 }, 2), c = E.full({ 300 }, 3), d = E.full({ 10 }, 4) }
    assert.is_true(S.save_dir(dir, ts, { max_shard_bytes = 800 }))
    local f1, f2, f3 = "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors"
    assert.same({ f1, f2, f3, "model.safetensors.index.json" }, ls(dir))
    local index = json.decode(read(dir .. "/model.safetensors.index.json"))
    assert.same({ total_size = 2040 }, index.metadata)
    assert.same({ a = f2, b = f2, c = f1, d = f3 }, index.weight_map)
    local h <close> = S.open(dir .. "/" .. f2)
    assert.same({ "a", "b" }, h:names())
    assert.equals("pt", h:metadata().format)
    local t = S.load_dir(dir)
    for k, v in pairs(ts) do assert.same(v:totable(), t[k]:totable()) end
  end)

  it("counts the written dtype's bytes when converting", function()
    local dir = H.tmpdir()
    local ts = { a = E.ones({ 100 }), b = E.ones({ 100 }) } -- 200 B each as BF16
    assert.is_true(S.save_dir(dir, ts, { max_shard_bytes = 400, dtype = "BF16" }))
    assert.same({ "model.safetensors" }, ls(dir))
    assert.is_true(S.save_dir(dir, ts, { max_shard_bytes = 399, dtype = "BF16" }))
    assert.same({ "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                  "model.safetensors.index.json" }, ls(dir))
  end)

  it("removes what a save in the other layout left behind", function()
    local dir = H.tmpdir()
    local big = { a = E.ones({ 100 }), b = E.ones({ 100 }), c = E.ones({ 100 }) }
    assert.is_true(S.save_dir(dir, big, { max_shard_bytes = 400 }))
    assert.equals(4, #ls(dir))
    assert.is_true(S.save_dir(dir, big))
    assert.same({ "model.safetensors" }, ls(dir))
    assert.is_true(S.save_dir(dir, big, { max_shard_bytes = 400 }))
    assert.is_true(S.save_dir(dir, big, { max_shard_bytes = 800 }))
    assert.same({ "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                  "model.safetensors.index.json" }, ls(dir))
    assert.equals(3, (function() local n = 0 for _ in pairs(S.load_dir(dir)) do n = n + 1 end return n end)())
  end)

  it("checks its arguments", function()
    local dir = H.tmpdir()
    assert.equals("safetensors.save_dir: max_shard_bytes must be a positive integer, got 0",
      H.error_of(S.save_dir, dir, {}, { max_shard_bytes = 0 }))
    assert.equals("safetensors.save_dir: tensors['x'] must be a tensor, got string",
      H.error_of(S.save_dir, dir, { x = "w" }))
    assert.equals("safetensors.save_dir: unknown option 'shard' (the options are dtype, max_shard_bytes, metadata)",
      H.error_of(S.save_dir, dir, {}, { shard = 1 }))
    write(dir .. "/file", "x")
    local ok, err = S.save_dir(dir .. "/file", {})
    assert.is_nil(ok)
    assert.equals(dir .. "/file: exists and is not a directory", err)
  end)
end)
