-- engine/checkpoint.lua — checkpoints of a training run, written so that a
-- run killed at any instant leaves the previous checkpoint whole.
--
-- Layout: RUN/checkpoints/step-00000100/
--   model.safetensors      the parameters, by name (model:parameters())
--   optimizer.safetensors  the optimizer's tensors (moments), by key
--   state.json             step, optimizer numbers, generator states, the
--                          data cursor and the recipe's own state
-- A checkpoint is built in RUN/checkpoints/.tmp-step-N, each file flushed
-- to disk, then the directory is renamed into place and the parent flushed:
-- either the whole checkpoint is there under its final name or none of it.
-- Directories with other names (a crash's leftover .tmp-*) are ignored and
-- cleaned up by the next save.
local E = require("engine")
local fs = require("engine.fs")
local json = require("engine.json")

local checkpoint = {}

local function step_dir(run, step) return string.format("%s/checkpoints/step-%08d", run, step) end

-- checkpoint.list(run) -> ascending list of {step=, dir=}
function checkpoint.list(run)
  local found = {}
  for _, name in ipairs(fs.list(run .. "/checkpoints")) do
    local n = name:match("^step%-(%d+)$")
    if n and fs.exists(run .. "/checkpoints/" .. name .. "/state.json") then
      found[#found + 1] = { step = tonumber(n), dir = run .. "/checkpoints/" .. name }
    end
  end
  table.sort(found, function(a, b) return a.step < b.step end)
  return found
end

function checkpoint.latest(run)
  local all = checkpoint.list(run)
  return all[#all]
end

local function hex_words(words)
  local out = {}
  for i, w in ipairs(words) do out[i] = string.format("%016x", w) end
  return out
end

local function from_hex(words, where)
  local out = {}
  for i, h in ipairs(words) do
    local v = math.tointeger(tonumber(h, 16))
    if not v or #h ~= 16 then error(where .. ": generator state word " .. i .. " is not 16 hex digits", 0) end
    out[i] = v
  end
  return out
end

local function named_params(model)
  local t = {}
  for _, p in ipairs(model:parameters()) do t[p.name] = p.tensor end
  return t
end

-- checkpoint.save(run, step, parts) -> dir
--   parts.model      (has :parameters() -> {name=, tensor=} list)
--   parts.optimizer  (has :state() -> table of tensors and plain values)
--   parts.loader     (has :state() -> plain table)
--   parts.state      (a plain table: the recipe's own state)
--   parts.generators (list of generators whose streams must resume)
function checkpoint.save(run, step, parts)
  local root = run .. "/checkpoints"
  assert(fs.mkdir_p(root))
  for _, name in ipairs(fs.list(root)) do
    if name:match("^%.tmp%-") then fs.rm_r(root .. "/" .. name) end
  end
  local tmp = string.format("%s/.tmp-step-%08d", root, step)
  assert(fs.mkdir_p(tmp))
  local state = { step = step, format = 1 }
  local function write(name, tensors)
    local ok, err = E.safetensors.save(tmp .. "/" .. name, tensors)
    if not ok then error("checkpoint: " .. tostring(err), 0) end
  end
  if parts.model then write("model.safetensors", named_params(parts.model)) end
  if parts.optimizer then
    local tensors, plain = {}, {}
    for k, v in pairs(parts.optimizer:state()) do
      if E.is_tensor(v) then tensors[k] = v else plain[k] = v end
    end
    write("optimizer.safetensors", tensors)
    state.optimizer = plain
  end
  if parts.loader then state.loader = parts.loader:state() end
  if parts.state then state.recipe = parts.state end
  state.generators = {}
  for i, g in ipairs(parts.generators or {}) do state.generators[i] = hex_words(g:state()) end
  json.write(tmp .. "/state.json", state)
  assert(E.fsync(tmp))
  local final = step_dir(run, step)
  if fs.exists(final) then fs.rm_r(final) end
  assert(os.rename(tmp, final))
  assert(E.fsync(root))
  return final
end

-- checkpoint.load(dir, parts) -> step; restores into the same objects as save
function checkpoint.load(dir, parts)
  local state, err = json.read(dir .. "/state.json")
  if not state then error("resume: " .. err, 0) end
  if parts.model then
    local saved, err = E.safetensors.load(dir .. "/model.safetensors")
    if not saved then error("resume: " .. err, 0) end
    for _, p in ipairs(parts.model:parameters()) do
      local t = saved[p.name]
      if not t then error("resume: " .. dir .. "/model.safetensors has no tensor '" .. p.name .. "'", 0) end
      E.no_grad(function() p.tensor:copy_(t) end)
    end
  end
  if parts.optimizer then
    local st = {}
    for k, v in pairs(state.optimizer or {}) do st[k] = v end
    local saved, err = E.safetensors.load(dir .. "/optimizer.safetensors")
    if not saved then error("resume: " .. err, 0) end
    for k, v in pairs(saved) do st[k] = v end
    parts.optimizer:load_state(st)
  end
  if parts.loader and state.loader then parts.loader:set_state(state.loader) end
  if parts.state and state.recipe then
    for k, v in pairs(state.recipe) do parts.state[k] = v end
  end
  for i, g in ipairs(parts.generators or {}) do
    local words = state.generators and state.generators[i]
    if not words then error("resume: " .. dir .. "/state.json has no state for generator " .. i, 0) end
    g:set_state(from_hex(words, dir .. "/state.json"))
  end
  return state.step
end

-- checkpoint.prune(run, keep): delete all but the newest `keep` checkpoints
function checkpoint.prune(run, keep)
  if not keep or keep <= 0 then return end
  local all = checkpoint.list(run)
  for i = 1, #all - keep do fs.rm_r(all[i].dir) end
end

return checkpoint
