-- engine/safetensors.lua — E.safetensors: safetensors files and Hugging Face
-- checkpoint directories (model.safetensors, or shards listed by
-- model.safetensors.index.json).
--
--   open(path)                          -> handle, or nil, message
--       handle:names() (sorted), :info(name) ({dtype=, shape=, data_offsets=,
--       loadable=}, or nil for no such tensor), :load(name[, dtype]),
--       :metadata(), :path(), :close() (also __gc and __close)
--   load(path[, opts])                  -> tensors (name -> tensor), metadata
--   save(path, tensors[, metadata[, opts]]) -> true
--   load_dir(dir[, opts])               -> tensors, metadata
--   save_dir(dir, tensors[, opts])      -> true
--
-- opts: dtype (load: "float32" (default) or "float64", the engine dtype the
-- tensors get; save: the dtype written, "F32"/"float32", "F64"/"float64",
-- "F16"/"float16" or "BF16"/"bfloat16"; by default float32 tensors are
-- written as F32 and float64 as F64, bit-exact); skip_unloadable (load: leave
-- out tensors of dtypes the engine cannot load, such as I64, instead of
-- raising); max_shard_bytes (save_dir, default 5e9 as Hugging Face's 5GB)
-- and metadata (save_dir: the files' __metadata__, "format" = "pt" added as
-- Hugging Face's loaders want it).
--
-- Errors. Expected failures return nil, message: a file or directory that is
-- missing or cannot be read or written. A file that is there but broken
-- raises, with a message naming the file, the tensor and the rule it breaks
-- ("model.safetensors: tensor 'w': data_offsets [0, 100] but F32 [5,6] needs
-- 120 bytes"); so does a broken index ("dir/model.safetensors.index.json:
-- tensor 'w' is mapped to 'model-00002-of-00002.safetensors', which does not
-- exist"); so do bad arguments. A corrupt checkpoint is never mistaken for a
-- missing one.
--
-- load_dir reads model.safetensors when the directory has it (as Hugging
-- Face's loader does), else the index: every name in weight_map must be a
-- plain file name in the directory, every shard must exist and hold exactly
-- the tensors the index maps to it. Its metadata is the file's __metadata__,
-- or the index's "metadata" object for shards. save_dir splits as Hugging
-- Face does (names in sorted order; a shard closes when the next tensor would
-- take it past max_shard_bytes; a larger tensor gets a shard of its own),
-- names shards model-00001-of-00002.safetensors, writes every file
-- atomically (the index last), then removes what a previous save in the
-- other layout left behind (model.safetensors, or the old index and shards).
--
-- Not here: validation of the files themselves, which is the C core's
-- (engine/src/safetensors.c), nor config.json and tokenizers (E.models).
local E = require("engine")
local json = require("dkjson")
local lfs = require("lfs")

local C = E._safetensors
local M = {}

local SINGLE = "model.safetensors"
local INDEX = "model.safetensors.index.json"
local DEFAULT_MAX_SHARD = 5000000000

-- Public functions run protected: an error raised anywhere inside (by the C
-- functions, which put this file's position in front, or by error(msg, 0)
-- here) is raised again at the caller's line, without our own position.
local function api(fn)
  return function(...)
    local r = table.pack(pcall(fn, ...))
    if not r[1] then
      local msg = r[2]
      if type(msg) == "string" then msg = msg:gsub("^[^\n]-safetensors%.lua:%d+: ", "", 1) end
      error(msg, 2)
    end
    return table.unpack(r, 2, r.n)
  end
end

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local function check_opts(op, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail("%s: options must be a table, got %s", op, type(opts)) end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      fail("%s: unknown option '%s' (the options are %s)", op, tostring(k), table.concat(names, ", "))
    end
  end
  return opts
end

local function check_string(op, what, v)
  if type(v) ~= "string" then fail("%s: %s must be a string, got %s", op, what, type(v)) end
end

local LOAD_DTYPES = { float32 = true, float = true, float64 = true, double = true }
local SAVE_DTYPES = {
  F32 = "F32", float32 = "F32", F64 = "F64", float64 = "F64",
  F16 = "F16", float16 = "F16", BF16 = "BF16", bfloat16 = "BF16",
}
local SAVE_BYTES = { F32 = 4, F64 = 8, F16 = 2, BF16 = 2 }

local function load_dtype(op, opts)
  local dt = opts.dtype
  if dt ~= nil and not LOAD_DTYPES[dt] then
    fail("%s: dtype must be \"float32\" or \"float64\", got %s", op, tostring(dt))
  end
  return dt
end

local function save_dtype(op, opts)
  local dt = opts.dtype
  if dt == nil then return nil end
  if not SAVE_DTYPES[dt] then
    fail("%s: dtype must be one of F32, F64, F16, BF16 (or float32, float64, float16, bfloat16), got %s", op,
      tostring(dt))
  end
  return SAVE_DTYPES[dt]
end

-- every tensor of an open handle, name -> tensor
local function load_all(h, names, dtype, skip)
  local out = {}
  for _, name in ipairs(names) do
    if not skip or h:info(name).loadable then out[name] = h:load(name, dtype) end
  end
  return out
end

local function load_file(path, dtype, skip)
  local h, err = C.open(path)
  if not h then return nil, err end
  local _ <close> = h
  return load_all(h, h:names(), dtype, skip), h:metadata()
end

local load_opts = { dtype = true, skip_unloadable = true }

M.open = C.open

M.load = api(function(path, opts)
  check_string("safetensors.load", "path", path)
  opts = check_opts("safetensors.load", opts, load_opts)
  return load_file(path, load_dtype("safetensors.load", opts), opts.skip_unloadable)
end)

M.save = api(function(path, tensors, metadata, opts)
  check_string("safetensors.save", "path", path)
  opts = check_opts("safetensors.save", opts, { dtype = true })
  return C.save(path, tensors, metadata, save_dtype("safetensors.save", opts))
end)

-- ---------------------------------------------------------------------------
-- directories

local function mode_of(path) return (lfs.attributes(path, "mode")) end

local function read_text(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s, rerr = f:read("a")
  f:close()
  if not s then return nil, path .. ": " .. tostring(rerr) end
  return s
end

-- "object", "array", or the Lua type of a value dkjson decoded
local function json_kind(v)
  if type(v) ~= "table" then return v == nil and "null" or type(v) end
  local mt = getmetatable(v)
  return mt and mt.__jsontype or "object"
end

-- decode an index file: the table, or raises naming the file
local function decode_index(path, text)
  local v, pos, err = json.decode(text, 1, nil)
  if err then fail("%s: not valid JSON: %s", path, err) end
  if text:find("%S", pos) then fail("%s: not valid JSON: text after the value at byte %d", path, pos) end
  if json_kind(v) ~= "object" then fail("%s: is a JSON %s, not an object", path, json_kind(v)) end
  if json_kind(v.weight_map) ~= "object" then fail("%s: has no \"weight_map\" object", path) end
  return v
end

local function plain_file_name(s)
  return s ~= "" and s ~= "." and s ~= ".." and not s:find("/", 1, true) and not s:find("\0", 1, true)
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function load_sharded(dir, index_path, dtype, skip)
  local text, err = read_text(index_path)
  if not text then return nil, err end
  local index = decode_index(index_path, text)
  local wm = index.weight_map
  local by_shard = {}
  for _, name in ipairs(sorted_keys(wm)) do
    local shard = wm[name]
    if type(shard) ~= "string" then
      fail("%s: tensor '%s': the shard must be a file name, got %s", index_path, name, json_kind(shard))
    end
    if not plain_file_name(shard) then
      fail("%s: tensor '%s': shard '%s' is not a file name in the checkpoint's directory", index_path, name, shard)
    end
    by_shard[shard] = by_shard[shard] or {}
    table.insert(by_shard[shard], name)
  end
  local shards = sorted_keys(by_shard)

  -- open and check every shard before loading any tensor
  local handles = {}
  local _ <close> = setmetatable({}, { __close = function()
    for _, h in pairs(handles) do h:close() end
  end })
  for _, shard in ipairs(shards) do
    local listed = by_shard[shard]
    local path = dir .. "/" .. shard
    if not mode_of(path) then
      fail("%s: tensor '%s' is mapped to '%s', which does not exist", index_path, listed[1], shard)
    end
    local h, oerr = C.open(path)
    if not h then fail("%s: tensor '%s' is mapped to '%s', which cannot be read: %s", index_path, listed[1], shard, oerr) end
    handles[shard] = h
    local held = {}
    for _, n in ipairs(h:names()) do
      held[n] = true
      if wm[n] ~= shard then
        if wm[n] == nil then
          fail("%s: shard '%s' holds tensor '%s', which weight_map does not list", index_path, shard, n)
        end
        fail("%s: shard '%s' holds tensor '%s', which weight_map puts in '%s'", index_path, shard, n, wm[n])
      end
    end
    for _, n in ipairs(listed) do
      if not held[n] then fail("%s: tensor '%s' is mapped to '%s', which does not hold it", index_path, n, shard) end
    end
  end

  local tensors = {}
  for _, shard in ipairs(shards) do
    for n, t in pairs(load_all(handles[shard], by_shard[shard], dtype, skip)) do tensors[n] = t end
  end
  local meta = json_kind(index.metadata) == "object" and index.metadata or {}
  return tensors, meta
end

M.load_dir = api(function(dir, opts)
  check_string("safetensors.load_dir", "dir", dir)
  opts = check_opts("safetensors.load_dir", opts, load_opts)
  local dtype = load_dtype("safetensors.load_dir", opts)
  local mode = mode_of(dir)
  if mode == nil then return nil, dir .. ": no such directory" end
  if mode ~= "directory" then return nil, dir .. ": not a directory" end
  local single = dir .. "/" .. SINGLE
  if mode_of(single) then return load_file(single, dtype, opts.skip_unloadable) end
  local index = dir .. "/" .. INDEX
  if not mode_of(index) then return nil, dir .. ": holds neither " .. SINGLE .. " nor " .. INDEX end
  return load_sharded(dir, index, dtype, opts.skip_unloadable)
end)

local function mkdir_p(dir)
  local mode = mode_of(dir)
  if mode == "directory" then return true end
  if mode then return nil, dir .. ": exists and is not a directory" end
  local parent = dir:match("^(.*[^/])/+[^/]+/*$")
  if parent then
    local ok, err = mkdir_p(parent)
    if not ok then return nil, err end
  end
  local ok, err = lfs.mkdir(dir)
  if not ok and mode_of(dir) ~= "directory" then
    return nil, dir .. ": cannot create the directory: " .. tostring(err)
  end
  return true
end

-- the shard files an existing index names (none when it is unreadable)
local function old_shards(index_path)
  local text = read_text(index_path)
  if not text then return {} end
  local ok, index = pcall(decode_index, index_path, text)
  if not ok then return {} end
  local out = {}
  for _, shard in pairs(index.weight_map) do
    if type(shard) == "string" and shard:match("^model%-%d+%-of%-%d+%.safetensors$") then out[shard] = true end
  end
  return out
end

-- Hugging Face's split (huggingface_hub split_state_dict_into_shards_factory)
local function split(names, sizes, max)
  local shards, cur, cur_size = {}, {}, 0
  for _, n in ipairs(names) do
    local s = sizes[n]
    if s > max then
      shards[#shards + 1] = { n }
    else
      if cur_size + s > max then
        shards[#shards + 1] = cur
        cur, cur_size = {}, 0
      end
      cur[#cur + 1] = n
      cur_size = cur_size + s
    end
  end
  if #cur > 0 then shards[#shards + 1] = cur end
  return shards
end

local save_dir_opts = { max_shard_bytes = true, metadata = true, dtype = true }

M.save_dir = api(function(dir, tensors, opts)
  local op = "safetensors.save_dir"
  check_string(op, "dir", dir)
  if type(tensors) ~= "table" then fail("%s: tensors must be a table of name -> tensor, got %s", op, type(tensors)) end
  opts = check_opts(op, opts, save_dir_opts)
  local dtype = save_dtype(op, opts)
  local max = opts.max_shard_bytes or DEFAULT_MAX_SHARD
  if type(max) ~= "number" or max ~= math.floor(max) or max < 1 then
    fail("%s: max_shard_bytes must be a positive integer, got %s", op, tostring(max))
  end
  local meta = { format = "pt" }
  if opts.metadata ~= nil then
    if type(opts.metadata) ~= "table" then fail("%s: metadata must be a table of strings, got %s", op, type(opts.metadata)) end
    for k, v in pairs(opts.metadata) do meta[k] = v end
  end

  local names, sizes, total = {}, {}, 0
  for name, t in pairs(tensors) do
    if type(name) ~= "string" then fail("%s: tensor names must be strings, got a %s key", op, type(name)) end
    if not E.is_tensor(t) then fail("%s: tensors['%s'] must be a tensor, got %s", op, name, type(t)) end
    names[#names + 1] = name
    local width = dtype and SAVE_BYTES[dtype] or (t:dtype() == "float64" and 8 or 4)
    sizes[name] = t:numel() * width
    total = total + sizes[name]
  end
  table.sort(names)

  local ok, err = mkdir_p(dir)
  if not ok then return nil, err end
  local index_path, single_path = dir .. "/" .. INDEX, dir .. "/" .. SINGLE
  local stale = old_shards(index_path)
  local shards = split(names, sizes, max)

  if #shards <= 1 then
    ok, err = C.save(single_path, tensors, meta, dtype)
    if not ok then return nil, err end
    if mode_of(index_path) then os.remove(index_path) end
  else
    local weight_map, keyorder = {}, { "metadata", "total_size", "weight_map" }
    for i, group in ipairs(shards) do
      local file = string.format("model-%05d-of-%05d.safetensors", i, #shards)
      local sub = {}
      for _, n in ipairs(group) do
        sub[n] = tensors[n]
        weight_map[n] = file
      end
      ok, err = C.save(dir .. "/" .. file, sub, meta, dtype)
      if not ok then return nil, err end
      stale[file] = nil
    end
    for _, n in ipairs(names) do keyorder[#keyorder + 1] = n end
    local text = json.encode({ metadata = { total_size = total }, weight_map = weight_map },
      { indent = true, keyorder = keyorder })
    ok, err = C.write_atomic(index_path, text .. "\n")
    if not ok then return nil, err end
    if mode_of(single_path) then os.remove(single_path) end
  end
  for file in pairs(stale) do os.remove(dir .. "/" .. file) end
  return true
end)

return M
