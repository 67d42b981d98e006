-- engine/refcache.lua — reference log-probs computed once and kept on disk.
--
-- Recipes with a reference model need π_ref's log-probs of every training
-- example. They do not change during training, so they are computed in one
-- pass before it and stored under a key made from the reference weights,
-- the tokenizer and the tokenized data: a second run on the same data with
-- the same reference finds the file and skips the pass.
--
--   local refcache = require("engine.refcache")
--   local t, hit = refcache.get{
--     dir = ".cache/reflogps",               -- where the files live
--     model = ref_model,                     -- :parameters() list of {name=, tensor=}
--     parts = { tokenizer_key, data_key },   -- strings naming what else the values depend on
--     compute = function() return { chosen = tensor, rejected = tensor } end,
--   }
-- t is the table of tensors (computed, or read back bit-identical); hit
-- tells whether it came from disk. The file is written atomically.
local E = require("engine")
local fs = require("engine.fs")

local refcache = {}

-- FNV-1a, 64 bit, over a string: a short deterministic digest for keys
function refcache.digest(s)
  local h = -3750763034362895579 -- 0xcbf29ce484222325 as a signed integer
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = h * 1099511628211
  end
  return string.format("%016x", h)
end

-- a key for a model's weights: every parameter's name and value hash
function refcache.model_key(model)
  local parts = {}
  for _, p in ipairs(model:parameters()) do parts[#parts + 1] = p.name .. "=" .. E.hash(p.tensor) end
  return refcache.digest(table.concat(parts, ";"))
end

-- a key for a list of token-id lists (the tokenized data, in order)
function refcache.ids_key(rows)
  local parts = {}
  for i, r in ipairs(rows) do parts[i] = table.concat(r, ",") end
  return refcache.digest(table.concat(parts, ";"))
end

function refcache.get(opts)
  local key = refcache.digest(refcache.model_key(opts.model) .. "|" .. table.concat(opts.parts or {}, "|"))
  local path = string.format("%s/%s.safetensors", opts.dir, key)
  if fs.exists(path) then
    local t, err = E.safetensors.load(path)
    if not t then error("refcache: " .. err, 0) end
    return t, true, path
  end
  local t = E.no_grad(opts.compute)
  assert(fs.mkdir_p(opts.dir))
  local ok, err = E.safetensors.save(path, t, { key = key })
  if not ok then error("refcache: " .. tostring(err), 0) end
  return t, false, path
end

return refcache
