-- engine/data/jsonl.lua — reads a JSONL data set (one file, or every .jsonl
-- file of a directory) and checks each line against one of the data formats.
-- It decodes with Debian's dkjson (through LPeg when that is installed; both
-- keep JSON integers as Lua integers) and stops at the first bad line with
-- "FILE:LINE: field 'NAME' ..." raised as an error at level 0, so that a run
-- fails before training with exactly that message. It does not tokenize
-- (engine/data/tokenize.lua does) and holds no state between calls.
--
-- The formats (field names as the Python tools write them):
--   sft        {"text"} | {"prompt","completion"} | {"messages":[{"role","content"},...]}
--              (messages end with an "assistant" turn: the completion)
--   pairs      {"prompt","chosen","rejected"}
--   rankings   {"prompt","responses":[...],"ranks":[...]}: K >= 2 responses,
--              ranks are JSON integers from 1 (best) to K, ties allowed but
--              not all equal; every line of a data set has the same K
--   unpaired   {"prompt","completion","label":true|false}
--   prompts    {"prompt"} (other fields are kept, e.g. a reference answer)
--   segments   {"prompt","completion","segments":[{"end":E,"scores":{"aspect":x,...}},...]}
--              per-segment labels for fine-grained RLHF (Wu et al. 2023):
--              segment s covers the completion's characters from the previous
--              end (0 at first) up to E, counted in Unicode characters as
--              Python's len() counts them, so segment s is completion[prev:E]
--              in Python. Ends are integers, strictly increasing, 1..len;
--              text after the last end is unlabelled. "scores" is a non-empty
--              object of numbers; an aspect may be absent from a segment (the
--              segment is not a boundary at that aspect's granularity, e.g.
--              "factuality" scored per sentence, "relevance" per sub-sentence).
-- Strings must be JSON strings; null counts as a wrong type, not as missing.
-- Blank lines are skipped (they still count for line numbers); a UTF-8 byte
-- order mark and a trailing "\r" are tolerated.

local json = require("dkjson")
local lfs = require("lfs")

local decoder = json
if pcall(require, "lpeg") then decoder = json.use_lpeg() end -- a separate table; dkjson itself is untouched

local M = {}
M.null = json.null -- what a JSON null decodes to in the examples returned

-- "FILE:LINE" of each example returned, weakly keyed so that examples the
-- caller drops are collected
local sources = setmetatable({}, { __mode = "k" })

-- the "FILE:LINE" an example of read_jsonl came from (nil for other tables)
function M.source_of(example) return sources[example] end

local function fail(where, msg) error(where .. ": " .. msg, 0) end

-- the JSON type of a decoded value, for messages
local function jtype(v)
  if v == json.null then return "null" end
  local t = type(v)
  if t == "table" then
    local mt = getmetatable(v)
    return mt and mt.__jsontype or "object"
  end
  return t
end

local function is_array(v) return type(v) == "table" and jtype(v) == "array" end
local function is_object(v) return type(v) == "table" and jtype(v) == "object" end

-- a required string field
local function string_field(obj, key, where, what)
  local v = obj[key]
  what = what or ""
  if v == nil then fail(where, "field '" .. key .. "'" .. what .. " is missing") end
  if type(v) ~= "string" then
    fail(where, "field '" .. key .. "'" .. what .. " must be a string, got " .. jtype(v))
  end
  return v
end

-- messages: a non-empty list of {role, content} objects ending with an
-- assistant turn
local function check_messages(obj, where)
  local msgs = obj.messages
  if not is_array(msgs) or #msgs == 0 then
    fail(where, "field 'messages' must be a non-empty list of {\"role\", \"content\"} objects, got "
      .. (is_array(msgs) and "an empty list" or jtype(msgs)))
  end
  for i, m in ipairs(msgs) do
    if not is_object(m) then
      fail(where, "message " .. i .. " must be an object with \"role\" and \"content\", got " .. jtype(m))
    end
    string_field(m, "role", where, " of message " .. i)
    string_field(m, "content", where, " of message " .. i)
  end
  local last = msgs[#msgs]
  if last.role ~= "assistant" then
    fail(where, "field 'messages' must end with an assistant message (the completion); message "
      .. #msgs .. " has role '" .. last.role .. "'")
  end
end

local function check_sft(obj, where)
  local has = {}
  for _, k in ipairs({ "text", "prompt", "completion", "messages" }) do has[k] = obj[k] ~= nil end
  if has.messages then
    for _, k in ipairs({ "text", "prompt", "completion" }) do
      if has[k] then fail(where, "fields 'messages' and '" .. k .. "' cannot both be given") end
    end
    check_messages(obj, where)
  elseif has.text then
    for _, k in ipairs({ "prompt", "completion" }) do
      if has[k] then fail(where, "fields 'text' and '" .. k .. "' cannot both be given") end
    end
    string_field(obj, "text", where)
  elseif has.prompt or has.completion then
    string_field(obj, "prompt", where)
    string_field(obj, "completion", where)
  else
    fail(where, "field 'text' is missing (an SFT line has \"text\", \"prompt\" and \"completion\", or \"messages\")")
  end
end

local function check_pairs(obj, where)
  string_field(obj, "prompt", where)
  string_field(obj, "chosen", where)
  string_field(obj, "rejected", where)
end

local function check_rankings(obj, where)
  string_field(obj, "prompt", where)
  local resp = obj.responses
  if resp == nil then fail(where, "field 'responses' is missing") end
  if not is_array(resp) then fail(where, "field 'responses' must be a list of strings, got " .. jtype(resp)) end
  for i, r in ipairs(resp) do
    if type(r) ~= "string" then
      fail(where, "field 'responses' must be a list of strings; entry " .. i .. " is " .. jtype(r))
    end
  end
  if #resp < 2 then
    fail(where, "field 'responses' must hold at least 2 responses, got " .. #resp)
  end
  local ranks = obj.ranks
  if ranks == nil then fail(where, "field 'ranks' is missing") end
  if not is_array(ranks) then fail(where, "field 'ranks' must be a list of integers") end
  for _, r in ipairs(ranks) do
    if math.type(r) ~= "integer" then fail(where, "field 'ranks' must be a list of integers") end
  end
  if #ranks ~= #resp then
    fail(where, "field 'ranks' has " .. #ranks .. " entries but 'responses' has " .. #resp)
  end
  local all_same = true
  for i, r in ipairs(ranks) do
    if r < 1 or r > #resp then
      fail(where, "field 'ranks' entry " .. i .. " is " .. r .. "; ranks run from 1 (best) to "
        .. #resp .. " (the number of responses)")
    end
    if r ~= ranks[1] then all_same = false end
  end
  if all_same then fail(where, "field 'ranks' gives every response the same rank") end
end

local function check_unpaired(obj, where)
  string_field(obj, "prompt", where)
  string_field(obj, "completion", where)
  local label = obj.label
  if label == nil then fail(where, "field 'label' is missing") end
  if type(label) ~= "boolean" then fail(where, "field 'label' must be true or false, got " .. jtype(label)) end
end

local function check_prompts(obj, where)
  string_field(obj, "prompt", where)
end

local function check_segments(obj, where)
  string_field(obj, "prompt", where)
  local completion = string_field(obj, "completion", where)
  local nchars, bad = utf8.len(completion)
  if not nchars then fail(where, "field 'completion' is not valid UTF-8 (byte " .. bad .. ")") end
  local segs = obj.segments
  if segs == nil then fail(where, "field 'segments' is missing") end
  if not is_array(segs) or #segs == 0 then
    fail(where, "field 'segments' must be a non-empty list of {\"end\", \"scores\"} objects, got "
      .. (is_array(segs) and "an empty list" or jtype(segs)))
  end
  local prev = 0
  for i, s in ipairs(segs) do
    local of = " of segment " .. i
    if not is_object(s) then fail(where, "segment " .. i .. " must be an object with \"end\" and \"scores\", got " .. jtype(s)) end
    local e = s["end"]
    if e == nil then fail(where, "field 'end'" .. of .. " is missing") end
    if math.type(e) ~= "integer" then
      fail(where, "field 'end'" .. of .. " must be an integer character offset, got "
        .. (type(e) == "number" and tostring(e) or jtype(e)))
    end
    if e <= prev then
      fail(where, "field 'end'" .. of .. " is " .. e .. "; ends must increase"
        .. (i > 1 and " (segment " .. (i - 1) .. " ends at " .. prev .. ")" or " and be at least 1"))
    end
    if e > nchars then
      fail(where, "field 'end'" .. of .. " is " .. e .. " but the completion has " .. nchars .. " characters")
    end
    prev = e
    local sc = s.scores
    if sc == nil then fail(where, "field 'scores'" .. of .. " is missing") end
    if not is_object(sc) then
      fail(where, "field 'scores'" .. of .. " must be an object of numbers such as {\"relevance\": 1}, got " .. jtype(sc))
    end
    local keys = {}
    for k in pairs(sc) do keys[#keys + 1] = k end
    if #keys == 0 then fail(where, "field 'scores'" .. of .. " is empty") end
    table.sort(keys)
    for _, k in ipairs(keys) do
      if type(sc[k]) ~= "number" then
        fail(where, "score '" .. k .. "'" .. of .. " must be a number, got " .. jtype(sc[k]))
      end
    end
  end
end

local checks = {
  sft = check_sft, pairs = check_pairs, rankings = check_rankings,
  unpaired = check_unpaired, prompts = check_prompts, segments = check_segments,
}
M.formats = { "sft", "pairs", "rankings", "unpaired", "prompts", "segments" }

-- the .jsonl files a path names: itself, or the directory's *.jsonl files
-- (not recursive, names starting with "." skipped) in byte order of names
local function list_files(path)
  local mode, msg = lfs.attributes(path, "mode")
  if mode == nil then fail(path, "cannot read (" .. (tostring(msg):match(": ([^:]*)$") or tostring(msg)) .. ")") end
  if mode ~= "directory" then return { path } end
  local names = {}
  for name in lfs.dir(path) do
    if name:sub(1, 1) ~= "." and name:match("%.jsonl$") then
      local full = (path:sub(-1) == "/" and path or path .. "/") .. name
      if lfs.attributes(full, "mode") == "file" then names[#names + 1] = full end
    end
  end
  if #names == 0 then fail(path, "no .jsonl files") end
  table.sort(names)
  return names
end

-- decode and check the lines of one file, appending to out
local function read_file(file, check, out, state)
  local f, msg = io.open(file, "r")
  if not f then fail(file, "cannot read (" .. (msg:match(": ([^:]*)$") or msg) .. ")") end
  local n = 0
  for line in f:lines() do
    n = n + 1
    if n == 1 and line:sub(1, 3) == "\239\187\191" then line = line:sub(4) end
    if line:find("%S") then
      local where = file .. ":" .. n
      local obj, pos, err = decoder.decode(line, 1, json.null)
      if err or obj == nil then
        f:close()
        -- dkjson says "at line 1, column C" of the one line it was given
        fail(where, "not valid JSON: " .. (tostring(err):gsub(" at line 1, column (%d+)$", " at column %1")))
      end
      if line:find("%S", pos) then
        f:close()
        fail(where, "not valid JSON: unexpected text after the value at column " .. line:find("%S", pos))
      end
      if not is_object(obj) then
        f:close()
        fail(where, "a line must be a JSON object, got " .. (obj == json.null and "null" or jtype(obj)))
      end
      local ok, e = pcall(check, obj, where)
      if not ok then
        f:close()
        error(e, 0)
      end
      if state.k then -- rankings: the same K on every line
        local k = #obj.responses
        if state.k.k == nil then
          state.k.k, state.k.where = k, where
        elseif k ~= state.k.k then
          f:close()
          fail(where, "field 'responses' has " .. k .. " entries but the first example (" .. state.k.where
            .. ") has " .. state.k.k .. "; every ranking in a data set needs the same number")
        end
      end
      out[#out + 1] = obj
      sources[obj] = where
    end
  end
  f:close()
end

-- read_jsonl(path, {format = "sft"|"pairs"|...}) -> list of examples.
-- path is a .jsonl file or a directory. Each example is the decoded JSON
-- object (every field kept). Raises "FILE:LINE: ..." (level 0) on the first
-- bad line, "DIR: no .jsonl files", "PATH: the data set is empty",
-- "PATH: cannot read (reason)".
function M.read_jsonl(path, opts)
  if type(path) ~= "string" then error("read_jsonl: path must be a string, got " .. type(path), 2) end
  if type(opts) ~= "table" then error("read_jsonl: expected an options table {format = ...}, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if k ~= "format" then error("read_jsonl: unknown option '" .. tostring(k) .. "' (the option is format)", 2) end
  end
  local check = checks[opts.format]
  if not check then
    error("read_jsonl: format must be one of \"" .. table.concat(M.formats, "\", \"") .. "\", got "
      .. (opts.format == nil and "nil" or "'" .. tostring(opts.format) .. "'"), 2)
  end
  local out = {}
  local state = { k = opts.format == "rankings" and {} or nil }
  for _, file in ipairs(list_files(path)) do read_file(file, check, out, state) end
  if #out == 0 then fail(path, "the data set is empty") end
  return out
end

return M
