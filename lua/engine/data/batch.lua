-- engine/data/batch.lua — pads token id lists into tensors and collates the
-- items of engine/data/tokenize.lua into training batches. Training rows are
-- padded on the right, generation prompts on the left. All tensors are
-- float32 (ids are exact in float32 up to 2^24); masks are 1 and 0. It does
-- not choose which items go together (engine/data/loader.lua does).
--
-- The batch of each kind of item (B = number of items, T = longest row):
--   sequences (sft, unpaired, segments): ids, attention_mask, loss_mask (B,T);
--     lengths, prompt_lens (Lua lists of B integers); unpaired items add
--     labels (B) (1 desirable, 0 not); segment items add scores[aspect] and
--     score_mask[aspect] (B,T): the aspect's score on each segment's last
--     token and 1 there, 0 elsewhere.
--   pairs: 2B rows, row i = prompt_i .. chosen_i and row B + i =
--     prompt_i .. rejected_i (all chosen first, then all rejected), so one
--     forward pass scores both; ids, attention_mask, loss_mask (2B,T) with
--     the loss mask on the responses; lengths, prompt_lens (2B).
--   rankings with K responses: K*B rows, row (k-1)*B + i = prompt_i ..
--     response k of item i; ids, attention_mask, loss_mask (KB,T); lengths,
--     prompt_lens (KB); ranks (B,K) (1 best); k = K.
--   prompts: ids, attention_mask (B,T) padded on the LEFT, for generation;
--     lengths; prompts (the B id lists); examples (the B source examples).
-- Every batch also has size = B and items = the B items.

local M = {}

local E -- the engine module, loaded on first use so that requiring this file needs no C module
local function engine()
  E = E or require("engine")
  return E
end

local function check_rows(name, rows, pad_id)
  if type(rows) ~= "table" or #rows == 0 then
    error(name .. ": rows must be a non-empty list of id lists, got "
      .. (type(rows) == "table" and "an empty list" or type(rows)), 3)
  end
  for i, r in ipairs(rows) do
    if type(r) ~= "table" then error(name .. ": row " .. i .. " must be a list of ids, got " .. type(r), 3) end
  end
  if math.type(pad_id) ~= "integer" then
    error(name .. ": pad_id must be an integer token id, got " .. tostring(pad_id), 3)
  end
end

-- constant rows to copy from with table.move (C speed), grown on demand
local ZEROS, ONES = {}, {}
local function grow(n)
  for i = #ZEROS + 1, n do ZEROS[i], ONES[i] = 0, 1 end
end

-- a fresh row of T entries: z zeros, o ones, zeros to the end
local function mask_row(T, z, o)
  local r = table.move(ZEROS, 1, z, 1, {})
  table.move(ONES, 1, o, z + 1, r)
  table.move(ZEROS, 1, T - z - o, z + o + 1, r)
  return r
end

-- a fresh row of T ids: pad_id * off, then a, then b (may be nil), then pad_id
local function id_row(T, pad_id, off, a, b)
  local r = {}
  for t = 1, off do r[t] = pad_id end
  table.move(a, 1, #a, off + 1, r)
  local n = off + #a
  if b then
    table.move(b, 1, #b, n + 1, r)
    n = n + #b
  end
  for t = n + 1, T do r[t] = pad_id end
  return r
end

local function longest(rows)
  local T = 0
  for _, r in ipairs(rows) do if #r > T then T = #r end end
  return T
end

-- ids and mask tables (B,T) of rows padded with pad_id on the given side
local function pad(rows, pad_id, left)
  local T = longest(rows)
  grow(T)
  local ids, mask = {}, {}
  for b, r in ipairs(rows) do
    local off = left and T - #r or 0
    ids[b], mask[b] = id_row(T, pad_id, off, r), mask_row(T, off, #r)
  end
  return ids, mask, T
end

-- right_pad(rows, pad_id) -> ids (B,T), attention_mask (B,T): rows padded
-- after their end (training)
function M.right_pad(rows, pad_id)
  check_rows("right_pad", rows, pad_id)
  local ids, mask = pad(rows, pad_id, false)
  local e = engine()
  return e.tensor(ids), e.tensor(mask)
end

-- left_pad(rows, pad_id) -> ids (B,T), attention_mask (B,T): rows padded
-- before their start, so every row's last token is at T (generation)
function M.left_pad(rows, pad_id)
  check_rows("left_pad", rows, pad_id)
  local ids, mask = pad(rows, pad_id, true)
  local e = engine()
  return e.tensor(ids), e.tensor(mask)
end

-- the kind of an item, from its fields
function M.kind(item)
  if type(item) ~= "table" then return nil end
  if item.ids then return "sequence" end
  if item.chosen then return "pairs" end
  if item.responses then return "rankings" end
  if item.prompt then return "prompts" end
  return nil
end

-- the padded length an item needs (the longest of its rows)
function M.length(item)
  if item.ids then return #item.ids end
  local p = #item.prompt
  if item.chosen then return p + math.max(#item.chosen, #item.rejected) end
  if item.responses then
    local m = 0
    for _, r in ipairs(item.responses) do if #r > m then m = #r end end
    return p + m
  end
  return p
end

-- tensors for right-padded rows: row r is first[r] .. second[r] (second may
-- be nil), its loss mask masks[r] when given (a list as long as first[r]),
-- else 0 on first and 1 on second
local function sequences(batch, first, second, masks, pad_id)
  local R = #first
  local T, lengths, plens = 0, {}, {}
  for r = 1, R do
    local n = #first[r] + (second[r] and #second[r] or 0)
    lengths[r] = n
    if n > T then T = n end
  end
  grow(T)
  local ids, attn, lm = {}, {}, {}
  for r = 1, R do
    local a, b, n = first[r], second[r], lengths[r]
    ids[r], attn[r] = id_row(T, pad_id, 0, a, b), mask_row(T, 0, n)
    if masks then
      local m = table.move(masks[r], 1, n, 1, {})
      table.move(ZEROS, 1, T - n, n + 1, m)
      lm[r] = m
    else
      lm[r] = mask_row(T, #a, n - #a)
      plens[r] = #a
    end
  end
  local e = engine()
  batch.ids, batch.attention_mask, batch.loss_mask = e.tensor(ids), e.tensor(attn), e.tensor(lm)
  batch.lengths = lengths
  if not masks then batch.prompt_lens = plens end
  return T
end

-- collate(items, pad_id) -> batch (described at the top of this file)
function M.collate(items, pad_id)
  if type(items) ~= "table" or #items == 0 then
    error("collate: items must be a non-empty list, got " .. (type(items) == "table" and "an empty list" or type(items)), 2)
  end
  if math.type(pad_id) ~= "integer" then error("collate: pad_id must be an integer token id, got " .. tostring(pad_id), 2) end
  local kind = M.kind(items[1])
  for i, it in ipairs(items) do
    local k = M.kind(it)
    if k == nil then error("collate: item " .. i .. " is not a tokenized item (no ids, chosen, responses or prompt)", 2) end
    if k ~= kind then error("collate: item 1 is " .. kind .. " but item " .. i .. " is " .. k, 2) end
  end
  local B = #items
  local batch = { size = B, items = items }
  local e = engine()
  if kind == "sequence" then
    local rows, masks, plens = {}, {}, {}
    for b, it in ipairs(items) do rows[b], masks[b], plens[b] = it.ids, it.loss_mask, it.prompt_len end
    local T = sequences(batch, rows, {}, masks, pad_id)
    batch.prompt_lens = plens
    if items[1].label ~= nil then
      local labels = {}
      for b, it in ipairs(items) do labels[b] = it.label and 1 or 0 end
      batch.labels = e.tensor(labels)
    end
    if items[1].segments ~= nil then
      local aspects = {}
      for _, it in ipairs(items) do
        for _, seg in ipairs(it.segments) do
          for a in pairs(seg.scores) do aspects[a] = true end
        end
      end
      local scores, smask = {}, {}
      for a in pairs(aspects) do
        local sv, sm = {}, {}
        for b, it in ipairs(items) do
          local rv, rm = {}, {}
          for t = 1, T do rv[t], rm[t] = 0, 0 end
          for _, seg in ipairs(it.segments) do
            local x = seg.scores[a]
            if x ~= nil then rv[seg.pos], rm[seg.pos] = rv[seg.pos] + x, 1 end
          end
          sv[b], sm[b] = rv, rm
        end
        scores[a], smask[a] = e.tensor(sv), e.tensor(sm)
      end
      batch.scores, batch.score_mask = scores, smask
    end
  elseif kind == "pairs" then
    local first, second = {}, {}
    for b, it in ipairs(items) do
      first[b], second[b] = it.prompt, it.chosen
      first[B + b], second[B + b] = it.prompt, it.rejected
    end
    sequences(batch, first, second, nil, pad_id)
  elseif kind == "rankings" then
    local K = #items[1].responses
    local first, second, ranks = {}, {}, {}
    for b, it in ipairs(items) do
      if #it.responses ~= K then
        error("collate: item 1 has " .. K .. " responses but item " .. b .. " has " .. #it.responses, 2)
      end
      for k = 1, K do
        first[(k - 1) * B + b], second[(k - 1) * B + b] = it.prompt, it.responses[k]
      end
      ranks[b] = it.ranks
    end
    sequences(batch, first, second, nil, pad_id)
    batch.ranks, batch.k = e.tensor(ranks), K
  else -- prompts
    local rows, lengths, examples = {}, {}, {}
    for b, it in ipairs(items) do rows[b], lengths[b], examples[b] = it.prompt, #it.prompt, it.example end
    local ids, mask = pad(rows, pad_id, true)
    batch.ids, batch.attention_mask = e.tensor(ids), e.tensor(mask)
    batch.lengths, batch.prompts, batch.examples = lengths, rows, examples
  end
  return batch
end

return M
