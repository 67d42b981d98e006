-- data_spec.lua — E.data: reading and checking JSONL (every error with its
-- exact "FILE:LINE: field ..." text), tokenization (masks, EOS, the
-- prompt/completion boundary, truncation, chat template), batches (shapes,
-- padding, masks, row order), and the loader (padding saved by grouping,
-- seeded order pinned against tests/fixtures/data/splitmix_order.py,
-- resume from a saved state). The tokenizers here are tiny byte-level ones
-- written for the test, so expected ids are the bytes of the text.
local H = require("helper")
local E = require("engine")
local D = E.data

local root = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$") or "."
local FIX = root .. "/tests/fixtures/data"

-- a byte-level tokenizer: id = byte value, eos 256, optional merges of two
-- bytes into one id (to show what tokenizing across a boundary would do),
-- optional bos, optionally put in front of every encode as Llama's does
local function make_tok(o)
  o = o or {}
  local tok = { eos_id = 256, bos_id = o.bos_id, pad_id = o.pad_id, merges = o.merges or {}, bos_in_encode = o.bos_in_encode }
  local unmerge = {}
  for pair, id in pairs(tok.merges) do unmerge[id] = pair end
  function tok:encode(text)
    local ids, i = {}, 1
    if self.bos_in_encode then ids[1] = self.bos_id end
    while i <= #text do
      local two = text:sub(i, i + 1)
      if #two == 2 and self.merges[two] then
        ids[#ids + 1], i = self.merges[two], i + 2
      else
        ids[#ids + 1], i = text:byte(i), i + 1
      end
    end
    return ids
  end
  function tok:decode(ids)
    local out = {}
    for _, id in ipairs(ids) do
      if id < 256 then out[#out + 1] = string.char(id) elseif unmerge[id] then out[#out + 1] = unmerge[id] end
    end
    return table.concat(out)
  end
  return tok
end

local function bytes(s)
  local t = {}
  for i = 1, #s do t[i] = s:byte(i) end
  return t
end

local function cat(...)
  local out = {}
  for _, t in ipairs({ ... }) do for _, v in ipairs(t) do out[#out + 1] = v end end
  return out
end

local function rep(v, n)
  local t = {}
  for i = 1, n do t[i] = v end
  return t
end

-- the message of the error fn raises (level 0 errors: the whole text)
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("read_jsonl", function()
  it("reads every format", function()
    local sft = D.read_jsonl(FIX .. "/sft.jsonl", { format = "sft" })
    assert.equals(4, #sft)
    assert.equals("hello world", sft[1].text)
    assert.equals("2+2=", sft[2].prompt)
    assert.equals("4", sft[2].completion)
    assert.equals("Hello!", sft[3].messages[3].content)
    assert.equals("café ", sft[4].prompt) -- \u00e9 decoded to UTF-8
    assert.equals(FIX .. "/sft.jsonl:1", D.source_of(sft[1]))
    assert.equals(FIX .. "/sft.jsonl:4", D.source_of(sft[3])) -- line 3 is blank
    assert.equals(FIX .. "/sft.jsonl:5", D.source_of(sft[4]))

    local pairs_ = D.read_jsonl(FIX .. "/pairs.jsonl", { format = "pairs" })
    assert.equals(3, #pairs_)
    assert.equals(" purple and loud", pairs_[2].rejected)

    local rk = D.read_jsonl(FIX .. "/rankings.jsonl", { format = "rankings" })
    assert.same({ 1, 3, 2 }, { rk[1].ranks[1], rk[1].ranks[2], rk[1].ranks[3] })
    assert.equals(" go away", rk[2].responses[3])

    local un = D.read_jsonl(FIX .. "/unpaired.jsonl", { format = "unpaired" })
    assert.is_true(un[1].label)
    assert.is_false(un[2].label)

    local seg = D.read_jsonl(FIX .. "/segments.jsonl", { format = "segments" })
    assert.equals(30, seg[1].segments[2]["end"])
    assert.equals(-1, seg[1].segments[2].scores.relevance)
  end)

  it("keeps integers as integers", function()
    local p = D.read_jsonl(FIX .. "/prompts.jsonl", { format = "prompts" })
    assert.equals("integer", math.type(p[1].answer))
    assert.equals(42, p[1].answer)
    assert.equals("float", math.type(p[1].weight))
    assert.equals("integer", math.type(p[2].answer))
    assert.equals(1 << 62, p[2].answer) -- exact beyond 2^53
    local rk = D.read_jsonl(FIX .. "/rankings.jsonl", { format = "rankings" })
    for _, r in ipairs(rk[1].ranks) do assert.equals("integer", math.type(r)) end
    local seg = D.read_jsonl(FIX .. "/segments.jsonl", { format = "segments" })
    assert.equals("integer", math.type(seg[1].segments[1]["end"]))
    assert.equals("integer", math.type(seg[1].segments[1].scores.factuality))
  end)

  it("reads a directory's .jsonl files in sorted order", function()
    for _, dir in ipairs({ FIX .. "/dir", FIX .. "/dir/" }) do
      local ex = D.read_jsonl(dir, { format = "sft" })
      local texts, where = {}, {}
      for i, e in ipairs(ex) do texts[i], where[i] = e.text, D.source_of(e) end
      -- .hidden.jsonl, notes.txt and the directory sub.jsonl are skipped
      assert.same({ "from a", "a again", "from b", "from c" }, texts)
      assert.same({ FIX .. "/dir/a.jsonl:1", FIX .. "/dir/a.jsonl:2", FIX .. "/dir/b.jsonl:1", FIX .. "/dir/c.jsonl:1" }, where)
    end
    -- sorted by name, not by creation order
    local tmp = H.tmpdir()
    H.write_file(tmp .. "/b.jsonl", '{"prompt": "second"}\n')
    H.write_file(tmp .. "/a.jsonl", '{"prompt": "first"}\n')
    H.write_file(tmp .. "/a0.jsonl", '{"prompt": "then"}\n')
    local ex = D.read_jsonl(tmp, { format = "prompts" })
    assert.same({ "first", "then", "second" }, { ex[1].prompt, ex[2].prompt, ex[3].prompt })
  end)

  it("tolerates CRLF line ends and a byte order mark", function()
    local tmp = H.tmpdir()
    H.write_file(tmp .. "/x.jsonl", '\239\187\191{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    local ex = D.read_jsonl(tmp .. "/x.jsonl", { format = "prompts" })
    assert.same({ "a", "b" }, { ex[1].prompt, ex[2].prompt })
  end)

  it("stops on the fixture errors with file, line and field", function()
    local B = FIX .. "/broken"
    assert.equals(B .. "/missing_chosen.jsonl:17: field 'chosen' is missing",
      raised(D.read_jsonl, B .. "/missing_chosen.jsonl", { format = "pairs" }))
    assert.equals(B .. "/bad_json.jsonl:3: not valid JSON: unterminated string at column 10",
      raised(D.read_jsonl, B .. "/bad_json.jsonl", { format = "sft" }))
    assert.equals(B .. "/ranks_float.jsonl:2: field 'ranks' must be a list of integers",
      raised(D.read_jsonl, B .. "/ranks_float.jsonl", { format = "rankings" }))
    assert.equals(B .. "/empty.jsonl: the data set is empty",
      raised(D.read_jsonl, B .. "/empty.jsonl", { format = "sft" }))
    assert.equals(B .. "/blank.jsonl: the data set is empty",
      raised(D.read_jsonl, B .. "/blank.jsonl", { format = "sft" }))
    assert.equals(B .. "/nojsonl/: no .jsonl files",
      raised(D.read_jsonl, B .. "/nojsonl/", { format = "sft" }))
    assert.equals(B .. "/nojsonl: no .jsonl files",
      raised(D.read_jsonl, B .. "/nojsonl", { format = "sft" }))
    assert.equals(B .. "/absent.jsonl: cannot read (No such file or directory)",
      raised(D.read_jsonl, B .. "/absent.jsonl", { format = "sft" }))
    -- a directory whose only .jsonl file is empty
    local tmp = H.tmpdir()
    H.write_file(tmp .. "/a.jsonl", "\n")
    assert.equals(tmp .. ": the data set is empty", raised(D.read_jsonl, tmp, { format = "sft" }))
    -- an error in the second file of a directory names that file
    H.write_file(tmp .. "/b.jsonl", '{"prompt": "x"}\n{"prompt": 3}\n')
    assert.equals(tmp .. "/b.jsonl:2: field 'prompt' must be a string, got number",
      raised(D.read_jsonl, tmp, { format = "prompts" }))
  end)

  -- {format, a good line, a bad line, the message after "FILE:2: "}
  local good = {
    sft = '{"text": "ok"}',
    pairs = '{"prompt": "p", "chosen": "a", "rejected": "b"}',
    rankings = '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]}',
    unpaired = '{"prompt": "p", "completion": "c", "label": true}',
    prompts = '{"prompt": "p"}',
    segments = '{"prompt": "p", "completion": "abc", "segments": [{"end": 3, "scores": {"x": 1}}]}',
  }
  local cases = {
    { "sft", '{"prompt": "p"}', "field 'completion' is missing" },
    { "sft", '{"completion": "c"}', "field 'prompt' is missing" },
    { "sft", '{"text": 5}', "field 'text' must be a string, got number" },
    { "sft", '{"text": null}', "field 'text' must be a string, got null" },
    { "sft", '{"prompt": "p", "completion": ["c"]}', "field 'completion' must be a string, got array" },
    { "sft", '{"foo": 1}', "field 'text' is missing (an SFT line has \"text\", \"prompt\" and \"completion\", or \"messages\")" },
    { "sft", '{"text": "a", "prompt": "b"}', "fields 'text' and 'prompt' cannot both be given" },
    { "sft", '{"messages": [], "completion": "x"}', "fields 'messages' and 'completion' cannot both be given" },
    { "sft", '{"messages": []}', "field 'messages' must be a non-empty list of {\"role\", \"content\"} objects, got an empty list" },
    { "sft", '{"messages": {"role": "user"}}', "field 'messages' must be a non-empty list of {\"role\", \"content\"} objects, got object" },
    { "sft", '{"messages": ["hi"]}', "message 1 must be an object with \"role\" and \"content\", got string" },
    { "sft", '{"messages": [{"role": "user", "content": "hi"}, {"content": "x"}]}', "field 'role' of message 2 is missing" },
    { "sft", '{"messages": [{"role": "user", "content": 3}]}', "field 'content' of message 1 must be a string, got number" },
    { "sft", '{"messages": [{"role": "user", "content": "hi"}]}',
      "field 'messages' must end with an assistant message (the completion); message 1 has role 'user'" },
    { "sft", '[1, 2]', "a line must be a JSON object, got array" },
    { "sft", 'null', "a line must be a JSON object, got null" },
    { "sft", '"text"', "a line must be a JSON object, got string" },
    { "sft", '{"text": "a"} {"text": "b"}', "not valid JSON: unexpected text after the value at column 15" },
    { "sft", '{"text": "a"', "not valid JSON: unterminated object at column 1" },
    { "pairs", '{"prompt": "p", "chosen": "c"}', "field 'rejected' is missing" },
    { "pairs", '{"chosen": "c", "rejected": "r"}', "field 'prompt' is missing" },
    { "pairs", '{"prompt": 1, "chosen": "c", "rejected": "r"}', "field 'prompt' must be a string, got number" },
    { "pairs", '{"prompt": "p", "chosen": true, "rejected": "r"}', "field 'chosen' must be a string, got boolean" },
    { "rankings", '{"prompt": "p", "ranks": [1, 2]}', "field 'responses' is missing" },
    { "rankings", '{"prompt": "p", "responses": "a", "ranks": [1]}', "field 'responses' must be a list of strings, got string" },
    { "rankings", '{"prompt": "p", "responses": ["a", 2], "ranks": [1, 2]}', "field 'responses' must be a list of strings; entry 2 is number" },
    { "rankings", '{"prompt": "p", "responses": ["a"], "ranks": [1]}', "field 'responses' must hold at least 2 responses, got 1" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"]}', "field 'ranks' is missing" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": "1,2"}', "field 'ranks' must be a list of integers" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2.5]}', "field 'ranks' must be a list of integers" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, "2"]}', "field 'ranks' must be a list of integers" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2e0]}', "field 'ranks' must be a list of integers" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2, 3]}', "field 'ranks' has 3 entries but 'responses' has 2" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}',
      "field 'ranks' entry 1 is 0; ranks run from 1 (best) to 2 (the number of responses)" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 3]}',
      "field 'ranks' entry 2 is 3; ranks run from 1 (best) to 2 (the number of responses)" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b"], "ranks": [2, 2]}', "field 'ranks' gives every response the same rank" },
    { "rankings", '{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 3]}',
      "field 'responses' has 3 entries but the first example (FILE:1) has 2; every ranking in a data set needs the same number" },
    { "unpaired", '{"prompt": "p", "completion": "c"}', "field 'label' is missing" },
    { "unpaired", '{"prompt": "p", "completion": "c", "label": "yes"}', "field 'label' must be true or false, got string" },
    { "unpaired", '{"prompt": "p", "completion": "c", "label": 1}', "field 'label' must be true or false, got number" },
    { "unpaired", '{"prompt": "p", "label": false}', "field 'completion' is missing" },
    { "prompts", '{"question": "q"}', "field 'prompt' is missing" },
    { "prompts", '{"prompt": ["q"]}', "field 'prompt' must be a string, got array" },
    { "segments", '{"prompt": "p", "completion": "abc"}', "field 'segments' is missing" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": []}',
      "field 'segments' must be a non-empty list of {\"end\", \"scores\"} objects, got an empty list" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [3]}',
      "segment 1 must be an object with \"end\" and \"scores\", got number" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"scores": {"x": 1}}]}', "field 'end' of segment 1 is missing" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 2.5, "scores": {"x": 1}}]}',
      "field 'end' of segment 1 must be an integer character offset, got 2.5" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": "2", "scores": {"x": 1}}]}',
      "field 'end' of segment 1 must be an integer character offset, got string" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 0, "scores": {"x": 1}}]}',
      "field 'end' of segment 1 is 0; ends must increase and be at least 1" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 2, "scores": {"x": 1}}, {"end": 2, "scores": {"x": 1}}]}',
      "field 'end' of segment 2 is 2; ends must increase (segment 1 ends at 2)" },
    { "segments", '{"prompt": "p", "completion": "\\u00e9t\\u00e9!", "segments": [{"end": 5, "scores": {"x": 1}}]}',
      "field 'end' of segment 1 is 5 but the completion has 4 characters" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 3}]}', "field 'scores' of segment 1 is missing" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 3, "scores": [1]}]}',
      "field 'scores' of segment 1 must be an object of numbers such as {\"relevance\": 1}, got array" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 3, "scores": {}}]}', "field 'scores' of segment 1 is empty" },
    { "segments", '{"prompt": "p", "completion": "abc", "segments": [{"end": 3, "scores": {"x": "1"}}]}',
      "score 'x' of segment 1 must be a number, got string" },
    { "segments", '{"prompt": "p", "completion": "a\255c", "segments": [{"end": 1, "scores": {"x": 1}}]}',
      "field 'completion' is not valid UTF-8 (byte 2)" },
  }
  it("stops on every kind of bad line with the exact message", function()
    local tmp = H.tmpdir()
    for n, c in ipairs(cases) do
      local fmt, line, msg = c[1], c[2], c[3]
      local path = tmp .. "/case" .. n .. ".jsonl"
      H.write_file(path, good[fmt] .. "\n" .. line .. "\n")
      local expected = path .. ":2: " .. msg:gsub("FILE", path)
      local got = raised(D.read_jsonl, path, { format = fmt })
      assert.equals(expected, got, "case " .. n .. ": " .. line)
      -- the good line alone reads fine, so the error comes from the bad line
      H.write_file(path, good[fmt] .. "\n")
      assert.equals(1, #D.read_jsonl(path, { format = fmt }))
    end
  end)

  it("raises on wrong arguments at the caller", function()
    assert.equals("read_jsonl: format must be one of \"sft\", \"pairs\", \"rankings\", \"unpaired\", \"prompts\", \"segments\", got 'dpo'",
      H.error_of(D.read_jsonl, FIX .. "/sft.jsonl", { format = "dpo" }))
    assert.equals("read_jsonl: format must be one of \"sft\", \"pairs\", \"rankings\", \"unpaired\", \"prompts\", \"segments\", got nil",
      H.error_of(D.read_jsonl, FIX .. "/sft.jsonl", {}))
    assert.equals("read_jsonl: unknown option 'fromat' (the option is format)",
      H.error_of(D.read_jsonl, FIX .. "/sft.jsonl", { fromat = "sft" }))
    assert.equals("read_jsonl: path must be a string, got nil", H.error_of(D.read_jsonl, nil, { format = "sft" }))
  end)
end)

describe("tokenize", function()
  local tok = make_tok()

  it("SFT masks the prompt out of the loss and appends EOS", function()
    local items = D.tokenize_sft({ { prompt = "ab", completion = "cd" }, { text = "xyz" } }, tok)
    assert.same(cat(bytes("abcd"), { 256 }), items[1].ids)
    assert.same({ 0, 0, 1, 1, 1 }, items[1].loss_mask)
    assert.equals(2, items[1].prompt_len)
    assert.same(cat(bytes("xyz"), { 256 }), items[2].ids)
    assert.same({ 1, 1, 1, 1 }, items[2].loss_mask)
    assert.equals(0, items[2].prompt_len)
    assert.equals(256, items.pad_id) -- no pad_id: pad with EOS
    assert.equals(7, D.tokenize_sft({ { text = "a" } }, make_tok({ pad_id = 7 })).pad_id)
  end)

  it("keeps the source line of each example", function()
    local ex = D.read_jsonl(FIX .. "/sft.jsonl", { format = "sft" })
    local items = D.tokenize_sft(ex, tok)
    assert.equals(FIX .. "/sft.jsonl:5", items[4].source)
    assert.same(cat(bytes("café "), bytes("olé"), { 256 }), items[4].ids)
  end)

  it("never merges a token across the prompt/completion boundary", function()
    local mtok = make_tok({ merges = { bc = 300, ab = 301 } })
    assert.same({ 301, 99 }, mtok:encode("abc")) -- "ab" merges in the whole text
    local it = D.tokenize_sft({ { prompt = "a", completion = "bc" } }, mtok)[1]
    assert.same({ 97, 300, 256 }, it.ids) -- "bc" inside the completion may merge
    assert.same({ 0, 1, 1 }, it.loss_mask)
    -- "ab" + "c": prompt "ab" is one token, and "bc" is never formed
    local it2 = D.tokenize_sft({ { prompt = "ab", completion = "c" } }, make_tok({ merges = { bc = 300 } }))[1]
    assert.same({ 97, 98, 99, 256 }, it2.ids)
    assert.same({ 0, 0, 1, 1 }, it2.loss_mask)
    local p = D.tokenize_pairs({ { prompt = "ab", chosen = "c", rejected = "cb" } }, make_tok({ merges = { bc = 300 } }))[1]
    assert.same({ 97, 98 }, p.prompt)
    assert.same({ 99, 256 }, p.chosen)
    assert.same({ 99, 98, 256 }, p.rejected)
  end)

  it("renders messages with the default chat template, or a given one", function()
    local msgs = { { role = "system", content = "S" }, { role = "user", content = "U" },
      { role = "assistant", content = "A1" }, { role = "user", content = "U2" }, { role = "assistant", content = "A2" } }
    local p, c = D.chat_template(msgs)
    assert.equals("<|system|>\nS\n<|user|>\nU\n<|assistant|>\nA1\n<|user|>\nU2\n<|assistant|>\n", p)
    assert.equals("A2", c)
    local it = D.tokenize_sft({ { messages = msgs } }, tok)[1]
    assert.same(cat(bytes(p), bytes("A2"), { 256 }), it.ids)
    assert.equals(#p, it.prompt_len)
    assert.same(cat(rep(0, #p), rep(1, 3)), it.loss_mask)
    local seen
    local custom = function(m)
      seen = m
      return "[" .. m[1].content .. "]", m[#m].content:upper()
    end
    local it2 = D.tokenize_sft({ { messages = { { role = "user", content = "q" }, { role = "assistant", content = "a" } } } },
      tok, { chat_template = custom })[1]
    assert.same(cat(bytes("[q]"), bytes("A"), { 256 }), it2.ids)
    assert.equals("q", seen[1].content)
    assert.equals("tokenize_sft: chat_template must return two strings (prompt, completion), got string and nil for example 1",
      raised(D.tokenize_sft, { { messages = { { role = "assistant", content = "a" } } } }, tok,
        { chat_template = function() return "p" end }))
  end)

  it("truncates the prompt keeping its end, then the completion keeping its start", function()
    local ex = { { prompt = "abcdef", completion = "uvwxyz" } }
    local it = D.tokenize_sft(ex, tok, { max_length = 7, max_prompt_length = 3 })[1]
    assert.same(cat(bytes("def"), bytes("uvwx")), it.ids) -- EOS cut with the completion's end
    assert.same({ 0, 0, 0, 1, 1, 1, 1 }, it.loss_mask)
    assert.equals(3, it.prompt_len)
    local ks = D.tokenize_sft(ex, tok, { max_length = 7, max_prompt_length = 3, truncation = "keep_start" })[1]
    assert.same(cat(bytes("abc"), bytes("uvwx")), ks.ids)
    -- a completion that fits keeps its EOS; the prompt is cut only when too long
    local fit = D.tokenize_sft({ { prompt = "ab", completion = "xy" } }, tok, { max_length = 5, max_prompt_length = 2 })[1]
    assert.same(cat(bytes("abxy"), { 256 }), fit.ids)
    -- without max_prompt_length the prompt is cut to max_length - 1
    local d = D.tokenize_sft(ex, tok, { max_length = 4 })[1]
    assert.same(cat(bytes("def"), bytes("u")), d.ids)
    assert.same({ 0, 0, 0, 1 }, d.loss_mask)
    local d2 = D.tokenize_sft(ex, tok, { max_length = 4, truncation = "keep_start" })[1]
    assert.same(cat(bytes("abc"), bytes("u")), d2.ids)
    -- max_prompt_length alone cuts only the prompt
    local p = D.tokenize_sft(ex, tok, { max_prompt_length = 2 })[1]
    assert.same(cat(bytes("ef"), bytes("uvwxyz"), { 256 }), p.ids)
    -- text examples: the whole text is the completion, cut at its end
    local t = D.tokenize_sft({ { text = "hello" } }, tok, { max_length = 3 })[1]
    assert.same(bytes("hel"), t.ids)
    -- pairs: both responses cut to max_length - #prompt
    local pr = D.tokenize_pairs({ { prompt = "abcdef", chosen = "12", rejected = "34567" } }, tok,
      { max_length = 6, max_prompt_length = 2 })[1]
    assert.same(bytes("ef"), pr.prompt)
    assert.same(cat(bytes("12"), { 256 }), pr.chosen)
    assert.same(bytes("3456"), pr.rejected)
    local pk = D.tokenize_pairs({ { prompt = "abcdef", chosen = "12", rejected = "34567" } }, tok,
      { max_length = 6, max_prompt_length = 2, truncation = "keep_start" })[1]
    assert.same(bytes("ab"), pk.prompt)
    -- prompts: max_prompt_length with either mode
    assert.same(bytes("def"), D.tokenize_prompts({ { prompt = "abcdef" } }, tok, { max_prompt_length = 3 })[1].prompt)
    assert.same(bytes("abc"), D.tokenize_prompts({ { prompt = "abcdef" } }, tok,
      { max_prompt_length = 3, truncation = "keep_start" })[1].prompt)
  end)

  it("puts BOS first, keeps it through truncation, and removes one the tokenizer adds", function()
    local btok = make_tok({ bos_id = 257 })
    local it = D.tokenize_sft({ { prompt = "abcdef", completion = "xy" } }, btok, { max_prompt_length = 3 })[1]
    assert.same(cat({ 257 }, bytes("ef"), bytes("xy"), { 256 }), it.ids)
    assert.equals(3, it.prompt_len)
    local ks = D.tokenize_sft({ { prompt = "abcdef", completion = "xy" } }, btok,
      { max_prompt_length = 3, truncation = "keep_start" })[1]
    assert.same(cat({ 257 }, bytes("ab"), bytes("xy"), { 256 }), ks.ids)
    local t = D.tokenize_sft({ { text = "hi" } }, btok)[1]
    assert.same({ 257, 104, 105, 256 }, t.ids)
    assert.same({ 0, 1, 1, 1 }, t.loss_mask)
    -- a tokenizer that puts BOS in front of every text: still one BOS, at the start
    local ltok = make_tok({ bos_id = 257, bos_in_encode = true })
    local l = D.tokenize_sft({ { prompt = "ab", completion = "c" } }, ltok)[1]
    assert.same({ 257, 97, 98, 99, 256 }, l.ids)
    local lp = D.tokenize_pairs({ { prompt = "ab", chosen = "c", rejected = "d" } }, ltok)[1]
    assert.same({ 257, 97, 98 }, lp.prompt)
    assert.same({ 99, 256 }, lp.chosen)
    -- add_bos = false: no BOS at all
    local nb = D.tokenize_sft({ { prompt = "ab", completion = "c" } }, ltok, { add_bos = false })[1]
    assert.same({ 97, 98, 99, 256 }, nb.ids)
  end)

  it("tokenizes pairs, rankings, unpaired examples and prompts", function()
    local r = D.tokenize_rankings(D.read_jsonl(FIX .. "/rankings.jsonl", { format = "rankings" }), tok)
    assert.same(bytes("Name a fruit:"), r[1].prompt)
    assert.same(cat(bytes(" rock"), { 256 }), r[1].responses[2])
    assert.same({ 1, 3, 2 }, r[1].ranks)
    assert.equals(FIX .. "/rankings.jsonl:1", r[1].source)
    local u = D.tokenize_unpaired(D.read_jsonl(FIX .. "/unpaired.jsonl", { format = "unpaired" }), tok)
    assert.same(cat(bytes("Is fire cold?"), bytes(" Yes."), { 256 }), u[2].ids)
    assert.equals(#"Is fire cold?", u[2].prompt_len)
    assert.is_false(u[2].label)
    assert.is_true(u[1].label)
    local ex = D.read_jsonl(FIX .. "/prompts.jsonl", { format = "prompts" })
    local p = D.tokenize_prompts(ex, tok)
    assert.same(bytes("What is 6*7?"), p[1].prompt)
    assert.equals(42, p[1].example.answer)
  end)

  it("places segment scores on each segment's last token", function()
    local ex = D.read_jsonl(FIX .. "/segments.jsonl", { format = "segments" })
    local items = D.tokenize_segments(ex, tok)
    local P = #"Tell me about Paris."
    local c = "Paris is in France. It is big, and old."
    assert.same(cat(bytes("Tell me about Paris."), bytes(c), { 256 }), items[1].ids)
    assert.equals(3, #items[1].segments)
    assert.same({ P + 19, P + 30, P + 39 }, { items[1].segments[1].pos, items[1].segments[2].pos, items[1].segments[3].pos })
    assert.same({ factuality = 1, relevance = 0.5 }, items[1].segments[1].scores)
    -- "été!" is 4 characters and 6 bytes: the segment ends after byte 6
    local P2 = #"Say été."
    assert.same({ { pos = P2 + 6, scores = { relevance = 2 } } }, items[2].segments)
    -- cut by max_length: segments whose last token is gone are dropped
    local cut = D.tokenize_segments(ex, tok, { max_length = P + 30, max_prompt_length = P })[1]
    assert.equals(2, #cut.segments)
    assert.equals(P + 30, cut.segments[2].pos)
    -- each segment is encoded alone: no merge across a segment end
    local mtok = make_tok({ merges = { ["e "] = 300 } })
    local m = D.tokenize_segments({ { prompt = "", completion = "me you", segments = { { ["end"] = 2, scores = { x = 1 } } } } }, mtok)[1]
    assert.same({ 109, 101, 32, 121, 111, 117, 256 }, m.ids)
    assert.equals(2, m.segments[1].pos)
    assert.same({ 109, 300, 121, 111, 117 }, mtok:encode("me you"))
  end)

  it("rejects bad options", function()
    local ex = { { text = "a" } }
    assert.equals("tokenize_sft: max_prompt_length (4) must be less than max_length (4) so that every completion keeps a token",
      H.error_of(D.tokenize_sft, ex, tok, { max_length = 4, max_prompt_length = 4 }))
    assert.equals("tokenize_sft: truncation must be \"keep_end\" or \"keep_start\", got left",
      H.error_of(D.tokenize_sft, ex, tok, { truncation = "left" }))
    assert.equals("tokenize_sft: max_length must be an integer >= 2, got 1.5",
      H.error_of(D.tokenize_sft, ex, tok, { max_length = 1.5 }))
    assert.equals("tokenize_pairs: unknown option 'chat_template' (the options are add_bos, max_length, max_prompt_length, truncation)",
      H.error_of(D.tokenize_pairs, ex, tok, { chat_template = D.chat_template }))
    assert.equals("tokenize_sft: tok.eos_id must be an integer token id, got nil",
      H.error_of(D.tokenize_sft, ex, { encode = tok.encode }))
    assert.equals("tokenize_sft: add_bos is true but tok.bos_id is nil", H.error_of(D.tokenize_sft, ex, tok, { add_bos = true }))
    assert.equals("tokenize_pairs: example 1: field 'chosen' must be a string, got nil",
      raised(D.tokenize_pairs, { { prompt = "p", rejected = "r" } }, tok))
  end)
end)

describe("batches", function()
  local tok = make_tok()

  it("right-pads sequences with attention and loss masks", function()
    local items = D.tokenize_sft({ { prompt = "ab", completion = "c" }, { text = "wxyz" } }, tok)
    local b = D.collate(items, 0)
    assert.same({ 2, 5 }, b.ids:shape())
    assert.same({ { 97, 98, 99, 256, 0 }, { 119, 120, 121, 122, 256 } }, b.ids:totable())
    assert.same({ { 1, 1, 1, 1, 0 }, { 1, 1, 1, 1, 1 } }, b.attention_mask:totable())
    assert.same({ { 0, 0, 1, 1, 0 }, { 1, 1, 1, 1, 1 } }, b.loss_mask:totable())
    assert.same({ 4, 5 }, b.lengths)
    assert.same({ 2, 0 }, b.prompt_lens)
    assert.equals(2, b.size)
    assert.equals("float32", b.ids:dtype())
  end)

  it("stacks chosen rows then rejected rows for pairs", function()
    local items = D.tokenize_pairs({ { prompt = "p", chosen = "a", rejected = "bcd" }, { prompt = "qq", chosen = "e", rejected = "f" } }, tok)
    local b = D.collate(items, 9)
    assert.same({ 4, 5 }, b.ids:shape())
    assert.same({
      { 112, 97, 256, 9, 9 },      -- chosen of item 1
      { 113, 113, 101, 256, 9 },   -- chosen of item 2
      { 112, 98, 99, 100, 256 },   -- rejected of item 1
      { 113, 113, 102, 256, 9 },   -- rejected of item 2
    }, b.ids:totable())
    assert.same({ { 0, 1, 1, 0, 0 }, { 0, 0, 1, 1, 0 }, { 0, 1, 1, 1, 1 }, { 0, 0, 1, 1, 0 } }, b.loss_mask:totable())
    assert.same({ { 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 0 }, { 1, 1, 1, 1, 1 }, { 1, 1, 1, 1, 0 } }, b.attention_mask:totable())
    assert.same({ 3, 4, 5, 4 }, b.lengths)
    assert.same({ 1, 2, 1, 2 }, b.prompt_lens)
    assert.equals(2, b.size)
  end)

  it("stacks rankings response-major with their ranks", function()
    local items = D.tokenize_rankings({
      { prompt = "p", responses = { "a", "b", "c" }, ranks = { 2, 1, 3 } },
      { prompt = "q", responses = { "d", "e", "f" }, ranks = { 1, 1, 2 } },
    }, tok)
    local b = D.collate(items, 0)
    assert.same({ 6, 3 }, b.ids:shape())
    assert.same({ { 112, 97, 256 }, { 113, 100, 256 }, { 112, 98, 256 }, { 113, 101, 256 }, { 112, 99, 256 }, { 113, 102, 256 } },
      b.ids:totable())
    assert.same({ { 2, 1, 3 }, { 1, 1, 2 } }, b.ranks:totable())
    assert.equals(3, b.k)
    assert.same(rep({ 0, 1, 1 }, 6), b.loss_mask:totable())
  end)

  it("adds labels for unpaired items and per-aspect scores for segments", function()
    local u = D.tokenize_unpaired({ { prompt = "p", completion = "a", label = true }, { prompt = "p", completion = "b", label = false } }, tok)
    assert.same({ 1, 0 }, D.collate(u, 0).labels:totable())
    local s = D.tokenize_segments({
      { prompt = "p", completion = "ab cd", segments = { { ["end"] = 2, scores = { x = 0.5, y = 2 } }, { ["end"] = 5, scores = { x = -1 } } } },
      { prompt = "pp", completion = "z", segments = { { ["end"] = 1, scores = { y = 3 } } } },
    }, tok)
    local b = D.collate(s, 0)
    assert.same({ 2, 7 }, b.ids:shape())
    -- row 1: "p" then "ab" ends at token 3, " cd" at token 6; row 2: "pp" then "z" at token 3
    assert.same({ { 0, 0, 0.5, 0, 0, -1, 0 }, { 0, 0, 0, 0, 0, 0, 0 } }, b.scores.x:totable())
    assert.same({ { 0, 0, 1, 0, 0, 1, 0 }, { 0, 0, 0, 0, 0, 0, 0 } }, b.score_mask.x:totable())
    assert.same({ { 0, 0, 2, 0, 0, 0, 0 }, { 0, 0, 3, 0, 0, 0, 0 } }, b.scores.y:totable())
    assert.same({ { 0, 0, 1, 0, 0, 0, 0 }, { 0, 0, 1, 0, 0, 0, 0 } }, b.score_mask.y:totable())
  end)

  it("left-pads prompts for generation", function()
    local items = D.tokenize_prompts({ { prompt = "abc", id = 1 }, { prompt = "d", id = 2 } }, tok)
    local b = D.collate(items, 5)
    assert.same({ { 97, 98, 99 }, { 5, 5, 100 } }, b.ids:totable())
    assert.same({ { 1, 1, 1 }, { 0, 0, 1 } }, b.attention_mask:totable())
    assert.same({ 3, 1 }, b.lengths)
    assert.equals(2, b.examples[2].id)
    local ids, mask = D.left_pad({ { 1, 2 }, { 3 }, {} }, 0)
    assert.same({ { 1, 2 }, { 0, 3 }, { 0, 0 } }, ids:totable())
    assert.same({ { 1, 1 }, { 0, 1 }, { 0, 0 } }, mask:totable())
    local rids, rmask = D.right_pad({ { 1, 2 }, { 3 } }, 7)
    assert.same({ { 1, 2 }, { 3, 7 } }, rids:totable())
    assert.same({ { 1, 1 }, { 1, 0 } }, rmask:totable())
    assert.equals("left_pad: rows must be a non-empty list of id lists, got an empty list", H.error_of(D.left_pad, {}, 0))
    assert.equals("left_pad: pad_id must be an integer token id, got nil", H.error_of(D.left_pad, { { 1 } }))
  end)
end)

describe("Loader", function()
  local tok = make_tok()

  -- n items with lengths from a fixed LCG, 1..maxlen tokens each
  local function items_of_lengths(n, maxlen, seed)
    local x, ex = seed, {}
    for i = 1, n do
      x = (x * 1103515245 + 12345) % 2147483648
      ex[i] = { text = string.rep("a", x % maxlen) }
    end
    return D.tokenize_sft(ex, tok)
  end

  local function one_epoch(loader)
    local out = {}
    for b in loader:batches() do out[#out + 1] = b end
    return out
  end

  it("follows the seeded order pinned by splitmix_order.py", function()
    local items = items_of_lengths(10, 5, 1)
    local l = D.Loader(items, { batch_size = 10, seed = 1234, group_by_length = false })
    assert.same({ 8, 6, 3, 9, 4, 10, 1, 7, 5, 2 }, l:next().indices)
    assert.same({ 6, 3, 1, 9, 2, 4, 10, 5, 8, 7 }, l:next().indices) -- epoch 2
    assert.equals(2, l:epoch())
    local m = D.Loader(items, { batch_size = 10, seed = -5, group_by_length = false })
    assert.same({ 1, 3, 2, 6, 9, 7, 10, 5, 8, 4 }, m:next().indices)
    local n = D.Loader(items, { batch_size = 4, shuffle = false, group_by_length = false })
    assert.same({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 }, { 9, 10 } }, { n:next().indices, n:next().indices, n:next().indices })
  end)

  it("shuffles deterministically from the seed, each epoch a permutation", function()
    local items = items_of_lengths(103, 40, 7)
    local function order(seed, epochs)
      local l = D.Loader(items, { batch_size = 8, seed = seed })
      local out = {}
      for e = 1, epochs do
        local seen, all = {}, {}
        for _, b in ipairs(one_epoch(l)) do
          assert.equals(e, b.epoch)
          for _, i in ipairs(b.indices) do
            assert.is_nil(seen[i])
            seen[i] = true
            all[#all + 1] = i
          end
        end
        assert.equals(103, #all)
        out[e] = all
      end
      return out
    end
    local a, b, c = order(11, 2), order(11, 2), order(12, 2)
    assert.same(a, b)
    assert.is_not.same(a[1], c[1])
    assert.is_not.same(a[1], a[2])
  end)

  it("groups by length to waste less padding than random batches", function()
    local items = items_of_lengths(800, 200, 3)
    local function waste(opts)
      local l = D.Loader(items, opts)
      local pad, total = 0, 0
      for _, b in ipairs(one_epoch(l)) do
        local B, T = b.ids:shape()[1], b.ids:shape()[2]
        local real = 0
        for _, n in ipairs(b.lengths) do real = real + n end
        assert.equals(real, b.attention_mask:sum():item())
        pad, total = pad + B * T - real, total + B * T
      end
      return pad / total
    end
    local grouped = waste({ batch_size = 8, seed = 1 })
    local random = waste({ batch_size = 8, seed = 1, group_by_length = false })
    print(string.format("\n  padding: %.1f%% grouped by length, %.1f%% random batches", 100 * grouped, 100 * random))
    assert.is_true(grouped < random / 5, string.format("grouped %.3f, random %.3f", grouped, random))
    -- grouped batches still come in a shuffled order: lengths do not just decrease
    local l = D.Loader(items, { batch_size = 8, seed = 1 })
    local ups, prev = 0, nil
    for _, b in ipairs(one_epoch(l)) do
      local T = b.ids:shape()[2]
      if prev and T > prev then ups = ups + 1 end
      prev = T
    end
    assert.is_true(ups > 10)
  end)

  it("resumes exactly from a saved state, across epochs", function()
    local items = items_of_lengths(37, 30, 5)
    local a = D.Loader(items, { batch_size = 4, seed = 99 })
    assert.equals(10, a:num_batches())
    for _ = 1, 13 do a:next() end -- into epoch 2
    local saved = a:state()
    assert.same({ epoch = 2, position = 3, seed = 99, items = 37, batch_size = 4 }, saved)
    local expected = {}
    for i = 1, 12 do
      local b = a:next()
      expected[i] = { b.epoch, b.index, b.ids:totable(), b.loss_mask:totable() }
    end
    local b2 = D.Loader(items, { batch_size = 4, seed = 99 })
    b2:set_state(saved)
    for i = 1, 12 do
      local b = b2:next()
      assert.same(expected[i], { b.epoch, b.index, b.ids:totable(), b.loss_mask:totable() })
    end
    -- a state at an epoch's end resumes into the next epoch
    local c = D.Loader(items, { batch_size = 4, seed = 99 })
    c:set_state({ epoch = 2, position = 10, seed = 99, items = 37, batch_size = 4 })
    local first3 = D.Loader(items, { batch_size = 4, seed = 99 })
    first3:set_state({ epoch = 3, position = 0 })
    assert.same(first3:next().indices, c:next().indices)
    assert.equals(3, c:epoch())
    assert.equals("Loader:set_state: the state is for seed = 98 but this loader has 99",
      H.error_of(function() c:set_state({ epoch = 1, position = 0, seed = 98 }) end))
    assert.equals("Loader:set_state: the state is for items = 36 but this loader has 37",
      H.error_of(function() c:set_state({ epoch = 1, position = 0, items = 36 }) end))
    assert.equals("Loader:set_state: position must be an integer from 0 to 10 (batches per epoch), got 11",
      H.error_of(function() c:set_state({ epoch = 1, position = 11 }) end))
  end)

  it("drops the short batch with drop_last, and says how many batches an epoch has", function()
    local items = items_of_lengths(10, 8, 2)
    local keep = D.Loader(items, { batch_size = 4, seed = 1 })
    local sizes = {}
    for _, b in ipairs(one_epoch(keep)) do sizes[#sizes + 1] = b.size end
    table.sort(sizes)
    assert.same({ 2, 4, 4 }, sizes)
    local drop = D.Loader(items, { batch_size = 4, seed = 1, drop_last = true })
    assert.equals(2, drop:num_batches())
    local n = 0
    for _, b in ipairs(one_epoch(drop)) do
      assert.equals(4, b.size)
      n = n + 1
    end
    assert.equals(2, n)
    -- batches() after a finished epoch gives the next full one
    assert.equals(2, #one_epoch(drop))
    assert.equals(2, drop:epoch())
    assert.equals("Loader: 3 items make no full batch of 4 (drop_last is true)",
      H.error_of(D.Loader, { items[1], items[2], items[3] }, { batch_size = 4, drop_last = true }))
  end)

  it("batches pairs with the pad id of the tokenizer", function()
    local items = D.tokenize_pairs(D.read_jsonl(FIX .. "/pairs.jsonl", { format = "pairs" }), make_tok({ pad_id = 0 }))
    local l = D.Loader(items, { batch_size = 3, shuffle = false, group_by_length = false })
    local b = l:next()
    assert.same({ 6, #"Q: grass?" + #" purple and loud" + 1 }, b.ids:shape())
    local row1 = b.ids:totable()[1]
    assert.same(cat(bytes("Q: sky?"), bytes(" blue"), { 256 }), { table.unpack(row1, 1, 13) })
    assert.equals(0, row1[14]) -- padded with tok.pad_id
    assert.same(cat(bytes("Q: sky?"), bytes(" green"), { 256 }), { table.unpack(b.ids:totable()[4], 1, 14) })
  end)

  it("rejects bad options and items", function()
    local items = items_of_lengths(4, 5, 1)
    assert.equals("Loader: unknown option 'batchsize' (the options are batch_size, seed, shuffle, group_by_length, group_size, drop_last, pad_id)",
      H.error_of(D.Loader, items, { batchsize = 2 }))
    assert.equals("Loader: batch_size must be an integer >= 1, got 0", H.error_of(D.Loader, items, { batch_size = 0 }))
    assert.equals("Loader: shuffle must be true or false, got string", H.error_of(D.Loader, items, { shuffle = "yes" }))
    assert.equals("Loader: items must be a non-empty list of tokenized items, got an empty list", H.error_of(D.Loader, {}))
    assert.equals("Loader: item 2 is not a tokenized item (use E.data.tokenize_*)", H.error_of(D.Loader, { items[1], { text = "x" } }))
  end)
end)
