-- tokenizer_spec.lua — E.tokenizer seen from Lua: GPT-2 against the
-- committed reference ids (tests/fixtures/gpt2_tokenizer/reference.json,
-- made by scripts/make_tokenizer_fixture.js with gpt-3-encoder and Hugging
-- Face's tokenizers.js), tokenizer.json variants built here on GPT-2's
-- vocabulary (Qwen2.5's and Llama-3's Split regexes; merges as strings and
-- as pairs), small tokenizers with ids worked out by hand, the plain
-- byte-level tokenizer, round trips of arbitrary bytes, save + load, and the
-- exact error messages.
local H = require("helper")
local E = require("engine")
local json = require("dkjson")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local FIX = here .. "/../fixtures/gpt2_tokenizer"

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local ref = json.decode(slurp(FIX .. "/reference.json"))

local function rm_r(dir) os.execute("rm -rf " .. H.quote(dir)) end

-- tokenizer.json text: the variant's fields plus model {BPE, GPT-2's vocab, merges}
local vocab_text = slurp(FIX .. "/vocab.json")
local merge_lines = {}
for line in slurp(FIX .. "/merges.txt"):gmatch("[^\n]+") do
  if not line:match("^#version") then merge_lines[#merge_lines + 1] = line end
end

local function variant_json(v, pairs)
  local merges
  if pairs then
    local list = {}
    for i, line in ipairs(merge_lines) do
      local a, b = line:match("^(%S+) (%S+)$")
      list[i] = { a, b }
    end
    merges = json.encode(list)
  else
    merges = json.encode(merge_lines)
  end
  local parts = json.encode(v.tokenizer)
  return parts:sub(1, -2) .. ',"model":{"type":"BPE","dropout":null,"unk_token":null,"fuse_unk":false,'
    .. '"byte_fallback":false,"ignore_merges":' .. tostring(v.ignore_merges) .. ',"vocab":' .. vocab_text
    .. ',"merges":' .. merges .. "}}"
end

local function load_text(text)
  local dir = H.tmpdir()
  H.write_file(dir .. "/tokenizer.json", text)
  local tok = E.tokenizer.load(dir)
  rm_r(dir)
  return tok
end

local gpt2 = assert(E.tokenizer.load(FIX))

describe("GPT-2 (vocab.json + merges.txt)", function()
  it("has GPT-2's vocabulary size and special tokens", function()
    assert.equals(50257, gpt2.vocab_size)
    assert.equals(50256, gpt2.eos_id)
    assert.is_nil(gpt2.bos_id)
    assert.is_nil(gpt2.pad_id)
    assert.equals("Tokenizer(vocab_size=50257)", tostring(gpt2))
  end)

  it("encodes every fixture string to gpt-3-encoder's ids, and decodes it back", function()
    assert.is_true(#ref.gpt2 >= 80)
    for _, c in ipairs(ref.gpt2) do
      local ids = gpt2:encode(c.text)
      assert.same(c.ids, ids, "ids of " .. string.format("%q", c.text))
      assert.equals(c.text, gpt2:decode(ids))
    end
  end)

  it("encodes <|endoftext|> in text as 50256 unless split_special_tokens", function()
    assert.same({ 15496, 50256, 995 }, gpt2:encode("Hello<|endoftext|> world"))
    assert.same({ 15496, 27, 91, 437, 1659, 5239, 91, 29, 995 },
      gpt2:encode("Hello<|endoftext|> world", { split_special_tokens = true }))
    -- GPT-2's post-processor adds nothing
    assert.same({ 15496 }, gpt2:encode("Hello", { add_special_tokens = true }))
    assert.equals("Hello world", gpt2:decode({ 15496, 50256, 995 }, { skip_special_tokens = true }))
    assert.equals("Hello<|endoftext|> world", gpt2:decode({ 15496, 50256, 995 }))
  end)

  it("decodes an id tensor too", function()
    assert.equals("Hello world", gpt2:decode(E.tensor({ 15496, 995 })))
  end)

  it("looks up ids and tokens as the vocabulary spells them", function()
    assert.equals(262, gpt2:id("Ġthe"))
    assert.equals("Ġthe", gpt2:token(262))
    assert.equals(50256, gpt2:id("<|endoftext|>"))
    assert.is_nil(gpt2:id("not a token"))
    assert.is_nil(gpt2:token(50257))
    assert.is_nil(gpt2:token(-1))
    assert.is_true(gpt2:is_special(50256))
    assert.is_false(gpt2:is_special(262))
  end)

  it("round-trips arbitrary bytes, invalid UTF-8 included", function()
    for _, s in ipairs({ "\xff\xfe", "\xc3", "\xed\xa0\x80", "a\x80b", "\xf0\x9f\x98", "caf\xe9", "\0\0x\0" }) do
      assert.equals(s, gpt2:decode(gpt2:encode(s)))
    end
    local seed = 12345
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    end
    for _ = 1, 300 do
      local bytes = {}
      for i = 1, rnd(80) do bytes[i] = string.char(rnd(256)) end
      local s = table.concat(bytes)
      assert.equals(s, gpt2:decode(gpt2:encode(s)))
    end
  end)

  it("raises exact errors", function()
    assert.equals("decode: unknown token id 60000 at position 3 (vocabulary has 50257)",
      H.error_of(gpt2.decode, gpt2, { 1, 2, 60000 }))
    assert.equals("decode: unknown token id -5 at position 1 (vocabulary has 50257)",
      H.error_of(gpt2.decode, gpt2, { -5 }))
    assert.equals("decode: ids[2] must be an integer, got 1.5", H.error_of(gpt2.decode, gpt2, { 1, 1.5 }))
    assert.equals("decode: ids[1] must be an integer, got string", H.error_of(gpt2.decode, gpt2, { "a" }))
    assert.equals("decode: ids must be a table or a 1-D tensor, got string", H.error_of(gpt2.decode, gpt2, "x"))
    assert.equals("encode: text must be a string, got number", H.error_of(gpt2.encode, gpt2, 5))
    assert.equals("encode: unknown option 'add_bos' (the options are add_special_tokens, split_special_tokens)",
      H.error_of(gpt2.encode, gpt2, "x", { add_bos = true }))
    assert.equals("encode: option add_special_tokens must be a boolean, got number",
      H.error_of(gpt2.encode, gpt2, "x", { add_special_tokens = 1 }))
    assert.equals("encode: expected a tokenizer, got string (call it as tok:encode(...))", H.error_of(gpt2.encode, "x"))
  end)

  it("reports the user's line in errors", function()
    local ok, err = pcall(function() return gpt2:decode({ 99999 }) end)
    assert.is_false(ok)
    assert.truthy(err:find("tokenizer_spec.lua:%d+: decode: unknown token id 99999"))
  end)
end)

describe("E.tokenizer.load", function()
  it("returns nil and a message for a directory without tokenizer files", function()
    local dir = H.tmpdir()
    local tok, err = E.tokenizer.load(dir)
    assert.is_nil(tok)
    assert.equals("tokenizer.load: " .. dir .. " has no tokenizer.json, nor vocab.json and merges.txt", err)
    rm_r(dir)
  end)

  it("refuses unsupported tokenizer.json files, naming the file and the field", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/tokenizer.json", '{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}')
    assert.equals("tokenizer: " .. dir .. "/tokenizer.json: model.type is \"Unigram\" (a SentencePiece Unigram model): "
      .. "only BPE models are supported", H.error_of(E.tokenizer.load, dir))
    H.write_file(dir .. "/tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, '
      .. '"pre_tokenizer": {"type": "Metaspace"}, "decoder": {"type": "Metaspace"}}')
    assert.equals("tokenizer: " .. dir .. "/tokenizer.json: pre_tokenizer.type is \"Metaspace\": only ByteLevel, or a "
      .. "Sequence of Split then ByteLevel, is supported", H.error_of(E.tokenizer.load, dir))
    rm_r(dir)
    assert.equals("tokenizer.load: dir must be a string, got nil", H.error_of(E.tokenizer.load))
  end)
end)

describe("tokenizer.json", function()
  it("matches tokenizers.js with Qwen2.5's Split regex and NFC (merges as strings)", function()
    local v = ref.variants[1]
    assert.truthy(v.name:find("qwen2.5", 1, true))
    local tok = load_text(variant_json(v, false))
    assert.equals(50259, tok.vocab_size)
    assert.equals(50256, tok.eos_id) -- <|endoftext|>, the usual name
    for _, c in ipairs(v.cases) do
      assert.same(c.ids, tok:encode(c.text, { add_special_tokens = c.add_special_tokens }),
        "ids of " .. string.format("%q", c.text))
    end
  end)

  it("matches tokenizers.js with Llama-3's regex, ignore_merges and template (merges as pairs)", function()
    local v = ref.variants[2]
    assert.truthy(v.name:find("llama3", 1, true))
    local tok = load_text(variant_json(v, true))
    assert.equals(50257, tok.bos_id)
    assert.equals(50256, tok.eos_id)
    local with_bos = 0
    for _, c in ipairs(v.cases) do
      local ids = tok:encode(c.text, { add_special_tokens = c.add_special_tokens })
      assert.same(c.ids, ids, "ids of " .. string.format("%q", c.text))
      if c.add_special_tokens then
        with_bos = with_bos + 1
        assert.equals(50257, ids[1])
      end
    end
    assert.is_true(with_bos > 10)
  end)

  -- all 256 bytes (id = byte value) plus ab 256, abc 257, bc 258, Ġab 259
  local function small(merges, pre)
    local vocab = {}
    for b = 0, 255 do
      local cp = b
      if not ((b >= 33 and b <= 126) or (b >= 161 and b <= 172) or b >= 174) then
        cp = b <= 32 and 256 + b or b == 173 and 323 or 289 + (b - 127)
      end
      vocab[#vocab + 1] = json.encode(utf8.char(cp)) .. ":" .. b
    end
    vocab = "{" .. table.concat(vocab, ",") .. ',"ab":256,"abc":257,"bc":258,"Ġab":259}'
    return load_text('{"added_tokens":[{"id":260,"content":"<eot>","special":true}],'
      .. '"pre_tokenizer":' .. (pre or '{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}')
      .. ',"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":' .. vocab .. ',"merges":' .. merges .. "}}")
  end

  it("reads merges as \"a b\" strings and as [a, b] pairs alike", function()
    for _, merges in ipairs({ '["a b","ab c","b c","Ġ ab"]', '[["a","b"],["ab","c"],["b","c"],["Ġ","ab"]]' }) do
      local tok = small(merges)
      assert.equals(261, tok.vocab_size)
      assert.same({ 257 }, tok:encode("abc"))          -- (a,b) then (ab,c)
      assert.same({ 258, 256 }, tok:encode("bcab"))    -- (a,b) rank 0 before (b,c) rank 2
      assert.same({ 259 }, tok:encode(" ab"))           -- Ġ a b -> Ġ ab -> Ġab
      assert.same({ 256, 260, 99 }, tok:encode("ab<eot>c"))
      assert.same({ 256, 60, 101, 111, 116, 62 }, tok:encode("ab<eot>", { split_special_tokens = true }))
      assert.equals("ab<eot>c", tok:decode({ 256, 260, 99 }))
      assert.equals("abc", tok:decode({ 256, 260, 99 }, { skip_special_tokens = true }))
    end
    -- GPT-2's regex: "abc abc" -> "abc", " abc" -> Ġ a b c -> Ġ ab c -> Ġ abc
    local tok = small('["a b","ab c","b c","Ġ ab"]', '{"type":"ByteLevel","add_prefix_space":false}')
    assert.same({ 257, 32, 257 }, tok:encode("abc abc"))
  end)
end)

describe("E.tokenizer.bytes", function()
  it("maps bytes to ids 0-255 and specials after them", function()
    local tok = E.tokenizer.bytes({ specials = { "<|endoftext|>", "<pad>" } })
    assert.equals(258, tok.vocab_size)
    assert.equals(256, tok.eos_id)
    assert.equals(257, tok.pad_id)
    assert.is_nil(tok.bos_id)
    assert.same({ 104, 105, 257, 0, 255, 256 }, tok:encode("hi<pad>\0\xff<|endoftext|>"))
    assert.same({}, tok:encode(""))
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    all = table.concat(all)
    assert.equals(all, tok:decode(tok:encode(all)))
    assert.equals("hi", tok:decode({ 104, 256, 105 }, { skip_special_tokens = true }))
    assert.equals("decode: unknown token id 258 at position 2 (vocabulary has 258)", H.error_of(tok.decode, tok, { 1, 258 }))
    assert.equals("<pad>", tok:token(257))
    assert.equals(257, tok:id("<pad>"))
  end)

  it("takes eos/bos/pad by name, or false for none", function()
    local tok = E.tokenizer.bytes({ specials = { "<s>", "</s>", "<pad>" }, bos = "<s>", eos = "</s>", pad = false })
    assert.equals(256, tok.bos_id)
    assert.equals(257, tok.eos_id)
    assert.is_nil(tok.pad_id)
    local plain = E.tokenizer.bytes()
    assert.equals(256, plain.vocab_size)
    assert.is_nil(plain.eos_id)
  end)

  it("checks its options", function()
    assert.equals("tokenizer.bytes: unknown option 'special' (the options are specials, eos, bos, pad)",
      H.error_of(E.tokenizer.bytes, { special = {} }))
    assert.equals("bytes: eos \"<x>\" is not one of the special tokens",
      H.error_of(E.tokenizer.bytes, { specials = { "<a>" }, eos = "<x>" }))
    assert.equals("tokenizer.bytes: specials[2] must be a string, got number",
      H.error_of(E.tokenizer.bytes, { specials = { "<a>", 5 } }))
  end)
end)

describe("tok:save", function()
  it("writes GPT-2 as tokenizer.json, tokenizer_config.json, vocab.json and merges.txt, which load back", function()
    local dir = H.tmpdir()
    gpt2:save(dir)
    for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt" }) do
      assert.truthy(io.open(dir .. "/" .. f), f)
    end
    assert.equals(slurp(FIX .. "/merges.txt"), slurp(dir .. "/merges.txt"))
    local cfg = json.decode(slurp(dir .. "/tokenizer_config.json"))
    assert.equals("<|endoftext|>", cfg.eos_token)
    local back = assert(E.tokenizer.load(dir))
    assert.equals(50257, back.vocab_size)
    assert.equals(50256, back.eos_id)
    for _, c in ipairs(ref.gpt2) do assert.same(c.ids, back:encode(c.text)) end
    rm_r(dir)
  end)

  it("saves the byte-level tokenizer as an equivalent BPE, keeping eos and pad", function()
    local tok = E.tokenizer.bytes({ specials = { "<|endoftext|>", "<pad>" } })
    local dir = H.tmpdir()
    tok:save(dir)
    local back = assert(E.tokenizer.load(dir))
    assert.equals(258, back.vocab_size)
    assert.equals(256, back.eos_id)
    assert.equals(257, back.pad_id)
    assert.same({ 104, 105, 257, 0, 255, 256 }, back:encode("hi<pad>\0\xff<|endoftext|>"))
    rm_r(dir)
  end)

  it("raises when the directory cannot be written", function()
    local err = H.error_of(gpt2.save, gpt2, "/nonexistent/dir")
    assert.equals("save: cannot write /nonexistent/dir/tokenizer.json: No such file or directory", err)
  end)
end)
