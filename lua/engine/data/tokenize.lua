-- engine/data/tokenize.lua — turns checked examples (engine/data/jsonl.lua)
-- into token id lists ready to batch: prompt and completion tokenized
-- separately and concatenated (so no token ever merges across the boundary),
-- EOS appended to every completion, a per-token loss mask that is 1 on the
-- completion, truncation to max_prompt_length / max_length, and a plain-text
-- chat template for "messages". It does not pad or make tensors
-- (engine/data/batch.lua does) and does not read files.
--
-- The tokenizer is any object with tok:encode(text) -> list of 0-based ids,
-- tok.eos_id, and optionally tok.bos_id and tok.pad_id.
--
-- BOS. When add_bos is true (the default when tok.bos_id is set) the prompt
-- starts with tok.bos_id; a BOS the tokenizer itself puts in front of a text
-- is removed first, so there is never one in the middle of a sequence. BOS
-- counts as a prompt token and is never cut.
--
-- Truncation, exactly:
--   1. the prompt P (BOS included) is cut to L = max_prompt_length, or to
--      max_length - 1 when max_prompt_length is not given (no cut when neither
--      is). truncation = "keep_end" (default) keeps BOS and the last L - #BOS
--      prompt tokens, the text nearest the completion; "keep_start" keeps the
--      first L tokens;
--   2. each completion C (EOS included) is then cut to its first
--      max_length - #P tokens: a completion always keeps its start, and loses
--      its EOS when cut.
-- max_prompt_length must be less than max_length, so every completion keeps
-- at least one token.

local jsonl = require("engine.data.jsonl")

local M = {}

-- The default chat template: each turn but the last is "<|ROLE|>\nCONTENT\n",
-- the prompt ends with "<|assistant|>\n", and the last (assistant) turn's
-- content is the completion. Earlier assistant turns are part of the prompt
-- (no loss on them). Any function(messages) -> prompt, completion can
-- replace it (tokenize_sft's chat_template option).
function M.chat_template(messages)
  local parts = {}
  for i = 1, #messages - 1 do
    local m = messages[i]
    parts[#parts + 1] = "<|" .. m.role .. "|>\n" .. m.content .. "\n"
  end
  parts[#parts + 1] = "<|assistant|>\n"
  return table.concat(parts), messages[#messages].content
end

local option_names = {
  max_length = true, max_prompt_length = true, truncation = true, add_bos = true, chat_template = true,
}

local function is_int(v) return math.type(v) == "integer" or (type(v) == "number" and v == math.floor(v) and v == v) end

-- checks tok and opts; returns the settings every tokenize_* uses
local function setup(name, examples, tok, opts, allowed)
  local level = 3
  if type(examples) ~= "table" then error(name .. ": examples must be a list, got " .. type(examples), level) end
  if (type(tok) ~= "table" and type(tok) ~= "userdata") or type(tok.encode) ~= "function" then
    error(name .. ": tok must be a tokenizer with an encode method, got " .. type(tok), level)
  end
  if math.type(tok.eos_id) ~= "integer" then
    error(name .. ": tok.eos_id must be an integer token id, got " .. tostring(tok.eos_id), level)
  end
  if tok.bos_id ~= nil and math.type(tok.bos_id) ~= "integer" then
    error(name .. ": tok.bos_id must be nil or an integer token id, got " .. tostring(tok.bos_id), level)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error(name .. ": opts must be a table, got " .. type(opts), level) end
  for k in pairs(opts) do
    if not option_names[k] or not allowed[k] then
      local names = {}
      for a in pairs(allowed) do names[#names + 1] = a end
      table.sort(names)
      error(name .. ": unknown option '" .. tostring(k) .. "' (the options are " .. table.concat(names, ", ") .. ")", level)
    end
  end
  local ml, mpl = opts.max_length, opts.max_prompt_length
  if ml ~= nil and (not is_int(ml) or ml < 2) then
    error(name .. ": max_length must be an integer >= 2, got " .. tostring(ml), level)
  end
  if mpl ~= nil and (not is_int(mpl) or mpl < 1) then
    error(name .. ": max_prompt_length must be an integer >= 1, got " .. tostring(mpl), level)
  end
  if ml and mpl and mpl >= ml then
    error(name .. ": max_prompt_length (" .. mpl .. ") must be less than max_length (" .. ml
      .. ") so that every completion keeps a token", level)
  end
  local trunc = opts.truncation or "keep_end"
  if trunc ~= "keep_end" and trunc ~= "keep_start" then
    error(name .. ": truncation must be \"keep_end\" or \"keep_start\", got " .. tostring(trunc), level)
  end
  if opts.add_bos ~= nil and type(opts.add_bos) ~= "boolean" then
    error(name .. ": add_bos must be true or false, got " .. type(opts.add_bos), level)
  end
  local add_bos = opts.add_bos
  if add_bos == nil then add_bos = tok.bos_id ~= nil end
  if add_bos and tok.bos_id == nil then error(name .. ": add_bos is true but tok.bos_id is nil", level) end
  if opts.chat_template ~= nil and type(opts.chat_template) ~= "function" then
    error(name .. ": chat_template must be a function(messages) -> prompt, completion, got "
      .. type(opts.chat_template), level)
  end
  return {
    name = name, tok = tok,
    max_length = ml and math.tointeger(ml),
    prompt_limit = mpl and math.tointeger(mpl) or (ml and math.tointeger(ml) - 1),
    truncation = trunc, bos = add_bos and tok.bos_id or nil,
    chat_template = opts.chat_template or M.chat_template,
  }
end

-- a fresh list of the ids of text, without a leading BOS the tokenizer adds
local function encode(s, text)
  if text == "" then return {} end
  local ids = s.tok:encode(text)
  if type(ids) ~= "table" then
    error(s.name .. ": tok:encode must return a list of ids, got " .. type(ids), 0)
  end
  local first = 1
  if s.tok.bos_id ~= nil and ids[1] == s.tok.bos_id then first = 2 end
  return table.move(ids, first, #ids, 1, {})
end

-- the prompt's ids: BOS (when added) then the text, cut to the prompt limit
local function prompt_ids(s, text)
  local p = encode(s, text)
  local nbos = 0
  if s.bos then
    table.insert(p, 1, s.bos)
    nbos = 1
  end
  local limit = s.prompt_limit
  if limit == nil or #p <= limit then return p end
  local out = {}
  if s.truncation == "keep_start" then
    for i = 1, limit do out[i] = p[i] end
  else
    for i = 1, nbos do out[i] = p[i] end
    for i = #p - (limit - nbos) + 1, #p do out[#out + 1] = p[i] end
  end
  return out
end

-- cut a completion to its first n tokens (n = nil: no cut)
local function cut(c, n)
  if n == nil or #c <= n then return c end
  return table.move(c, 1, n, 1, {})
end

-- the completion's ids with EOS, cut to fit max_length after the prompt
local function completion_ids(s, text, plen)
  local c = encode(s, text)
  c[#c + 1] = s.tok.eos_id
  return cut(c, s.max_length and s.max_length - plen)
end

-- a field the tokenizer needs, with the example named when it is wrong
local function field(s, ex, i, key)
  local v = type(ex) == "table" and ex[key] or nil
  if type(v) ~= "string" then
    local src = type(ex) == "table" and jsonl.source_of(ex)
    error(s.name .. ": example " .. i .. (src and " (" .. src .. ")" or "") .. ": field '" .. key
      .. "' must be a string, got " .. type(v), 0)
  end
  return v
end

-- one sequence item: prompt then completion, loss mask on the completion
local function sequence(p, c)
  local ids = table.move(c, 1, #c, #p + 1, table.move(p, 1, #p, 1, {}))
  local mask = {}
  for i = 1, #p do mask[i] = 0 end
  for i = #p + 1, #ids do mask[i] = 1 end
  return { ids = ids, loss_mask = mask, prompt_len = #p }
end

local function new_list(tok)
  return { pad_id = tok.pad_id ~= nil and tok.pad_id or tok.eos_id }
end

-- tokenize_sft(examples, tok, opts) -> items {ids, loss_mask, prompt_len, source}
--   "text" examples have an empty prompt (only BOS, when added): the loss
--   covers the whole text and its EOS. "messages" go through chat_template.
function M.tokenize_sft(examples, tok, opts)
  local s = setup("tokenize_sft", examples, tok, opts, option_names)
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    local prompt, completion
    if type(ex) == "table" and ex.messages ~= nil then
      prompt, completion = s.chat_template(ex.messages)
      if type(prompt) ~= "string" or type(completion) ~= "string" then
        local src = jsonl.source_of(ex)
        error("tokenize_sft: chat_template must return two strings (prompt, completion), got "
          .. type(prompt) .. " and " .. type(completion) .. " for example " .. i .. (src and " (" .. src .. ")" or ""), 0)
      end
    elseif type(ex) == "table" and ex.text ~= nil then
      prompt, completion = "", field(s, ex, i, "text")
    else
      prompt, completion = field(s, ex, i, "prompt"), field(s, ex, i, "completion")
    end
    local p = prompt_ids(s, prompt)
    local item = sequence(p, completion_ids(s, completion, #p))
    item.source = jsonl.source_of(ex)
    out[i] = item
  end
  return out
end

-- tokenize_unpaired(examples, tok, opts) -> items as tokenize_sft's, plus
--   label (true: desirable)
function M.tokenize_unpaired(examples, tok, opts)
  local s = setup("tokenize_unpaired", examples, tok, opts,
    { max_length = true, max_prompt_length = true, truncation = true, add_bos = true })
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    local p = prompt_ids(s, field(s, ex, i, "prompt"))
    local item = sequence(p, completion_ids(s, field(s, ex, i, "completion"), #p))
    if type(ex.label) ~= "boolean" then
      error("tokenize_unpaired: example " .. i .. ": field 'label' must be true or false, got " .. type(ex.label), 0)
    end
    item.label = ex.label
    item.source = jsonl.source_of(ex)
    out[i] = item
  end
  return out
end

-- tokenize_pairs(examples, tok, opts) -> items {prompt, chosen, rejected, source}:
--   three id lists; chosen and rejected end with EOS unless cut
function M.tokenize_pairs(examples, tok, opts)
  local s = setup("tokenize_pairs", examples, tok, opts,
    { max_length = true, max_prompt_length = true, truncation = true, add_bos = true })
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    local p = prompt_ids(s, field(s, ex, i, "prompt"))
    out[i] = {
      prompt = p,
      chosen = completion_ids(s, field(s, ex, i, "chosen"), #p),
      rejected = completion_ids(s, field(s, ex, i, "rejected"), #p),
      source = jsonl.source_of(ex),
    }
  end
  return out
end

-- tokenize_rankings(examples, tok, opts) -> items {prompt, responses = {K id
--   lists}, ranks = {K integers, 1 best}, source}
function M.tokenize_rankings(examples, tok, opts)
  local s = setup("tokenize_rankings", examples, tok, opts,
    { max_length = true, max_prompt_length = true, truncation = true, add_bos = true })
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    local p = prompt_ids(s, field(s, ex, i, "prompt"))
    if type(ex.responses) ~= "table" or type(ex.ranks) ~= "table" or #ex.ranks ~= #ex.responses then
      error("tokenize_rankings: example " .. i .. ": fields 'responses' and 'ranks' must be lists of the same length", 0)
    end
    local responses, ranks = {}, {}
    for k, r in ipairs(ex.responses) do
      if type(r) ~= "string" then
        error("tokenize_rankings: example " .. i .. ": response " .. k .. " must be a string, got " .. type(r), 0)
      end
      responses[k] = completion_ids(s, r, #p)
      ranks[k] = ex.ranks[k]
    end
    out[i] = { prompt = p, responses = responses, ranks = ranks, source = jsonl.source_of(ex) }
  end
  return out
end

-- tokenize_prompts(examples, tok, opts) -> items {prompt, example, source}:
--   the prompt's ids (cut to max_prompt_length) and the example itself, for
--   reward functions that read its other fields
function M.tokenize_prompts(examples, tok, opts)
  local s = setup("tokenize_prompts", examples, tok, opts,
    { max_prompt_length = true, truncation = true, add_bos = true })
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    out[i] = { prompt = prompt_ids(s, field(s, ex, i, "prompt")), example = ex, source = jsonl.source_of(ex) }
  end
  return out
end

-- tokenize_segments(examples, tok, opts) -> items as tokenize_sft's, plus
--   segments = {{pos = P, scores = {aspect = x}}, ...}: P is the 1-based
--   position in ids of the segment's last token. The completion is tokenized
--   piece by piece (each segment, then the unlabelled rest) and the ids
--   concatenated, so every segment end falls on a token boundary. Segments
--   whose last token is cut by max_length are dropped.
function M.tokenize_segments(examples, tok, opts)
  local s = setup("tokenize_segments", examples, tok, opts,
    { max_length = true, max_prompt_length = true, truncation = true, add_bos = true })
  local out = new_list(tok)
  for i, ex in ipairs(examples) do
    local p = prompt_ids(s, field(s, ex, i, "prompt"))
    local text = field(s, ex, i, "completion")
    if type(ex.segments) ~= "table" then
      error("tokenize_segments: example " .. i .. ": field 'segments' must be a list, got " .. type(ex.segments), 0)
    end
    local c, ends, from = {}, {}, 1
    for k, seg in ipairs(ex.segments) do
      local stop = utf8.offset(text, seg["end"] + 1)
      if math.type(seg["end"]) ~= "integer" or not stop or stop <= from then
        error("tokenize_segments: example " .. i .. ": segment " .. k .. " has a bad end " .. tostring(seg["end"]), 0)
      end
      for _, id in ipairs(encode(s, text:sub(from, stop - 1))) do c[#c + 1] = id end
      ends[k] = #c
      from = stop
    end
    for _, id in ipairs(encode(s, text:sub(from))) do c[#c + 1] = id end
    c[#c + 1] = tok.eos_id
    c = cut(c, s.max_length and s.max_length - #p)
    local item = sequence(p, c)
    local segs = {}
    for k, seg in ipairs(ex.segments) do
      if ends[k] <= #c and ends[k] > 0 then
        local scores = {}
        for a, v in pairs(seg.scores) do scores[a] = v end
        segs[#segs + 1] = { pos = #p + ends[k], scores = scores }
      end
    end
    item.segments = segs
    item.source = jsonl.source_of(ex)
    out[i] = item
  end
  return out
end

return M
