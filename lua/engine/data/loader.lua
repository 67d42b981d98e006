-- engine/data/loader.lua — E.data.Loader: the order in which tokenized items
-- are batched, epoch after epoch, deterministic from a seed, with a cursor
-- that checkpoints can save and restore. Padding and tensors are
-- engine/data/batch.lua's job. The shuffles use a private SplitMix64
-- generator (never math.random), so the order depends only on the seed, the
-- epoch and the item lengths, on any machine.
--
-- The batches of epoch e (1-based):
--   1. the item indices 1..N, shuffled (Fisher-Yates) by a generator seeded
--      from (seed, e) when shuffle is true;
--   2. group_by_length: that order is cut into chunks of
--      group_size * batch_size items, each chunk sorted by padded length
--      (longest first, ties by index) and cut into batches, and the batches
--      are then shuffled by the same generator (when shuffle is true), so
--      that a batch holds items of similar length but the batch order is
--      random. Without group_by_length the order is cut into batches as is;
--   3. at most one batch is short (the last one before the batch shuffle);
--      drop_last drops it.
-- With shuffle = false the order is the items' order (grouping, when on,
-- still sorts within chunks).

local batch = require("engine.data.batch")

local M = {}

-- SplitMix64 (Steele, Lea, Flood 2014): returns the next state and a 64-bit output
local function splitmix(x)
  x = x + 0x9E3779B97F4A7C15
  local z = x
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return x, z ~ (z >> 31)
end

-- a generator for (seed, epoch): rand(n) returns an integer in 1..n
local function generator(seed, epoch)
  local _, a = splitmix(seed)
  local state = a ~ epoch
  return function(n)
    local out
    state, out = splitmix(state)
    return (out >> 1) % n + 1
  end
end

local function shuffle(list, rand)
  for i = #list, 2, -1 do
    local j = rand(i)
    list[i], list[j] = list[j], list[i]
  end
end

local Loader = {}
Loader.__index = Loader

local option_names = {
  batch_size = true, seed = true, shuffle = true, group_by_length = true, group_size = true,
  drop_last = true, pad_id = true,
}

local function int_opt(opts, key, default, min)
  local v = opts[key]
  if v == nil then return default end
  local i = math.tointeger(v)
  if not i or i < min then
    error("Loader: " .. key .. " must be an integer >= " .. min .. ", got " .. tostring(v), 3)
  end
  return i
end

local function bool_opt(opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "boolean" then error("Loader: " .. key .. " must be true or false, got " .. type(v), 3) end
  return v
end

-- Loader(items, opts) -> loader. opts: batch_size (8), seed (0), shuffle
-- (true), group_by_length (true), group_size (50: batches per sorted chunk),
-- drop_last (false), pad_id (default items.pad_id, set by the tokenize_*
-- functions, else 0: masks make the padding value irrelevant).
function M.Loader(items, opts)
  if type(items) ~= "table" or #items == 0 then
    error("Loader: items must be a non-empty list of tokenized items, got "
      .. (type(items) == "table" and "an empty list" or type(items)), 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("Loader: opts must be a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not option_names[k] then
      error("Loader: unknown option '" .. tostring(k) .. "' (the options are batch_size, seed, shuffle, "
        .. "group_by_length, group_size, drop_last, pad_id)", 2)
    end
  end
  local kind = batch.kind(items[1])
  local lengths = {}
  for i, it in ipairs(items) do
    local k = batch.kind(it)
    if k == nil then error("Loader: item " .. i .. " is not a tokenized item (use E.data.tokenize_*)", 2) end
    if k ~= kind then error("Loader: item 1 is " .. kind .. " but item " .. i .. " is " .. k, 2) end
    lengths[i] = batch.length(it)
  end
  local self = setmetatable({
    items = items,
    lengths = lengths,
    batch_size = int_opt(opts, "batch_size", 8, 1),
    seed = int_opt(opts, "seed", 0, math.mininteger),
    shuffle = bool_opt(opts, "shuffle", true),
    group_by_length = bool_opt(opts, "group_by_length", true),
    group_size = int_opt(opts, "group_size", 50, 1),
    drop_last = bool_opt(opts, "drop_last", false),
    pad_id = int_opt(opts, "pad_id", math.tointeger(items.pad_id) or 0, 0),
    _epoch = 1,
    _pos = 0, -- batches of the current epoch already returned
  }, Loader)
  if self.drop_last and #items < self.batch_size then
    error("Loader: " .. #items .. " items make no full batch of " .. self.batch_size .. " (drop_last is true)", 2)
  end
  return self
end

-- the batches of epoch e: a list of lists of item indices
function Loader:plan(e)
  local n, bs = #self.items, self.batch_size
  local order = {}
  for i = 1, n do order[i] = i end
  local rand = self.shuffle and generator(self.seed, e) or nil
  if rand then shuffle(order, rand) end
  local batches = {}
  local function cut(list)
    for s = 1, #list, bs do
      local b = {}
      for j = s, math.min(s + bs - 1, #list) do b[#b + 1] = list[j] end
      batches[#batches + 1] = b
    end
  end
  if self.group_by_length then
    local len = self.lengths
    local chunk = bs * self.group_size
    for s = 1, n, chunk do
      local c = {}
      for j = s, math.min(s + chunk - 1, n) do c[#c + 1] = order[j] end
      table.sort(c, function(a, b)
        if len[a] ~= len[b] then return len[a] > len[b] end
        return a < b
      end)
      cut(c)
    end
  else
    cut(order)
  end
  if self.drop_last and #batches[#batches] < bs then batches[#batches] = nil end
  if rand and self.group_by_length then shuffle(batches, rand) end
  return batches
end

-- the number of batches in an epoch
function Loader:num_batches()
  local n, bs = #self.items, self.batch_size
  return self.drop_last and n // bs or (n + bs - 1) // bs
end

-- the current epoch (1-based): that of the last batch returned, or the
-- first one before any
function Loader:epoch() return self._epoch end

-- the next batch (engine/data/batch.lua's collate); after the last batch of
-- an epoch, the next epoch starts. batch.epoch and batch.index (1-based,
-- within the epoch) say where it stands.
function Loader:next()
  if self._pos >= self:num_batches() then
    self._epoch, self._pos, self._plan = self._epoch + 1, 0, nil
  end
  self._plan = self._plan or self:plan(self._epoch)
  self._pos = self._pos + 1
  local idx = self._plan[self._pos]
  local its = {}
  for j, i in ipairs(idx) do its[j] = self.items[i] end
  local b = batch.collate(its, self.pad_id)
  b.epoch, b.index, b.indices = self._epoch, self._pos, idx
  return b
end

-- for b in loader:batches() do ... end: the rest of the current epoch, or a
-- whole new epoch when the current one is finished (so an evaluation loader
-- gives one full pass per call)
function Loader:batches()
  if self._pos >= self:num_batches() then
    self._epoch, self._pos, self._plan = self._epoch + 1, 0, nil
  end
  local e = self._epoch
  return function()
    if self._epoch ~= e or self._pos >= self:num_batches() then return nil end
    return self:next()
  end
end

-- state() -> a plain table for a checkpoint: {epoch, position, seed,
-- items, batch_size} (position = batches of the epoch already returned)
function Loader:state()
  return { epoch = self._epoch, position = self._pos, seed = self.seed, items = #self.items,
    batch_size = self.batch_size }
end

-- set_state(t): the next batch is the one that followed when t was saved.
-- The loader must have been built on the same items with the same seed and
-- batch size (checked).
function Loader:set_state(t)
  if type(t) ~= "table" then error("Loader:set_state: expected a table from loader:state(), got " .. type(t), 2) end
  local e, p = math.tointeger(t.epoch), math.tointeger(t.position)
  if not e or e < 1 then error("Loader:set_state: epoch must be an integer >= 1, got " .. tostring(t.epoch), 2) end
  if not p or p < 0 or p > self:num_batches() then
    error("Loader:set_state: position must be an integer from 0 to " .. self:num_batches()
      .. " (batches per epoch), got " .. tostring(t.position), 2)
  end
  for _, k in ipairs({ "seed", "items", "batch_size" }) do
    local mine = k == "items" and #self.items or self[k]
    if t[k] ~= nil and t[k] ~= mine then
      error("Loader:set_state: the state is for " .. k .. " = " .. tostring(t[k]) .. " but this loader has "
        .. tostring(mine), 2)
    end
  end
  self._epoch, self._pos = e, p
  self._plan = nil
end

return M
