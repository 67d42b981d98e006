-- engine/tokenizer.lua — E.tokenizer: loading byte-level BPE tokenizers
-- (GPT-2, Qwen2, Llama-3 style) from a model directory, and the plain
-- byte-level tokenizer for tiny models. The work is in C
-- (engine/src/tokenizer_*.c, bound by lua/binding_tokenizer.c); this file
-- adds the argument and option checks that read better in Lua.
--
--   local tok = E.tokenizer.load(dir)   -- tokenizer.json, or vocab.json + merges.txt
--                                       -- (nil, message when dir has neither)
--   local tok = E.tokenizer.bytes({specials = {"<|endoftext|>", "<pad>"}})
--                                       -- ids 0-255 are bytes, specials 256, 257, ...
--   tok:encode(text [, opts]) -> {ids}  -- 0-based vocabulary ids
--   tok:decode(ids [, opts]) -> string  -- ids: a table or a 1-D tensor
--   tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id (nil when absent)
--   tok:id(token) -> id or nil          -- token spelled as the vocabulary does ("Ġthe")
--   tok:token(id) -> string or nil
--   tok:is_special(id) -> boolean
--   tok:save(dir)                       -- tokenizer.json, tokenizer_config.json, and
--                                       -- vocab.json + merges.txt: loadable by Hugging Face
--
-- encode options:
--   add_special_tokens (false)   add what the post-processor's template adds (Llama-3's
--                                <|begin_of_text|> in front); GPT-2 and Qwen2 add nothing.
--                                The default differs from Hugging Face's (true): the data
--                                pipeline adds BOS and EOS itself.
--   split_special_tokens (false) read special tokens in the text as plain text. By
--                                default "<|endoftext|>" in the text becomes its id, as
--                                Hugging Face does.
-- decode options:
--   skip_special_tokens (false)  leave special tokens out.
-- decode returns the exact bytes: any byte string round-trips through
-- encode and decode, invalid UTF-8 too (Hugging Face would show U+FFFD).
-- An id outside the vocabulary is an error:
--   "decode: unknown token id 60000 at position 3 (vocabulary has 50257)".
--
-- eos/bos/pad come from tokenizer_config.json's eos_token, bos_token and
-- pad_token when the directory has one; otherwise they are guessed among the
-- special tokens by their usual names (<|endoftext|>, <|end_of_text|>, </s>;
-- <|begin_of_text|>, <s>; <pad>, <|pad|>). GPT-2 has eos = <|endoftext|> =
-- 50256, and no bos or pad.
-- Not here: SentencePiece/Unigram/WordPiece models, which load() refuses with
-- an error naming the file and the field; truncation and padding settings of
-- tokenizer.json (kept by save, not applied by encode).

local E = require("engine")
local C = E._tokenizer

local M = {}

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- run a C maker; its error is raised at the caller's line
local function call(fn, ...)
  local ok, res = pcall(fn, ...)
  if not ok then error((tostring(res):gsub("^[^\n:]+:%d+: ", "", 1)), 3) end
  return res
end

-- E.tokenizer.load(dir) -> tokenizer, or nil, message when dir holds no
-- tokenizer files. A malformed or unsupported file is an error.
function M.load(dir)
  if type(dir) ~= "string" then error("tokenizer.load: dir must be a string, got " .. type(dir), 2) end
  dir = dir:gsub("(.)/+$", "%1")
  if not exists(dir .. "/tokenizer.json") and not (exists(dir .. "/vocab.json") and exists(dir .. "/merges.txt")) then
    return nil, "tokenizer.load: " .. dir .. " has no tokenizer.json, nor vocab.json and merges.txt"
  end
  return call(C.load, dir)
end

local bytes_options = { specials = true, eos = true, bos = true, pad = true }

-- E.tokenizer.bytes({specials = {...}, eos = name | false, bos = ..., pad = ...})
--   ids 0-255 are the bytes, specials[i] is 255 + i. eos/bos/pad name one of
--   the specials (false: none); left out, they are guessed from the usual
--   names ("<|endoftext|>" is eos, "<pad>" is pad, ...).
function M.bytes(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("tokenizer.bytes: options must be a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not bytes_options[k] then
      error("tokenizer.bytes: unknown option '" .. tostring(k) .. "' (the options are specials, eos, bos, pad)", 2)
    end
  end
  local specials = opts.specials or {}
  if type(specials) ~= "table" then
    error("tokenizer.bytes: specials must be a list of strings, got " .. type(specials), 2)
  end
  return call(C.bytes, specials, opts.eos, opts.bos, opts.pad)
end

return M
