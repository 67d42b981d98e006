-- engine/data.lua — E.data: JSONL data sets to token batches. This file only
-- gathers the API; the work is in engine/data/jsonl.lua (reading and
-- checking), tokenize.lua (ids, masks, truncation, chat template), batch.lua
-- (padding, tensors) and loader.lua (batch order, epochs, resume).
--
--   local ex    = E.data.read_jsonl("data/train.jsonl", {format = "pairs"})
--   local items = E.data.tokenize_pairs(ex, tok, {max_length = 512, max_prompt_length = 256})
--   local dl    = E.data.Loader(items, {batch_size = 8, seed = cfg.seed})
--   local b     = dl:next()   -- b.ids (2B,T): rows 1..B chosen, B+1..2B rejected
--
-- Reading. read_jsonl(path, {format = F}) reads a .jsonl file, or every
-- *.jsonl file of a directory (not recursive, hidden files skipped) in
-- sorted name order, and returns the list of decoded examples (JSON objects;
-- integers stay Lua integers; null is E.data.null). F is one of
--   "sft"       {"text"} | {"prompt","completion"} | {"messages":[{"role","content"}...]}
--   "pairs"     {"prompt","chosen","rejected"}
--   "rankings"  {"prompt","responses":[K strings],"ranks":[K integers]}, rank 1 best,
--               K >= 2 and the same K on every line, ties allowed (not all equal)
--   "unpaired"  {"prompt","completion","label":true|false}  (KTO)
--   "prompts"   {"prompt", ...}  (RL prompts; other fields are kept)
--   "segments"  {"prompt","completion","segments":[{"end":E,"scores":{"aspect":x}}...]}
--               fine-grained labels: segment s is the completion's characters
--               from the previous end (0 first) to E, in Unicode characters as
--               Python counts them; ends strictly increase; an aspect may be
--               scored on some segments only (its own granularity).
-- A bad data set stops the run before training: read_jsonl raises (error
-- level 0, so the message is exactly this; a missing path too, since a run
-- cannot go on without its data) on the first problem:
--   "data/train.jsonl:17: field 'chosen' is missing"
--   "data/train.jsonl:17: field 'ranks' must be a list of integers"
--   "data/train.jsonl:3: not valid JSON: <dkjson's message>"
--   "data/: no .jsonl files"      "data/train.jsonl: the data set is empty"
--   "data/x.jsonl: cannot read (No such file or directory)"
-- source_of(example) gives the "FILE:LINE" an example was read from.
--
-- Tokenizing. tok is any tokenizer with tok:encode(text) -> 0-based ids,
-- tok.eos_id, optional tok.bos_id and tok.pad_id. Prompt and completion are
-- encoded separately and their ids concatenated (never a token across the
-- boundary); EOS ends every completion. Options (all optional):
--   max_length         longest prompt + completion, in tokens
--   max_prompt_length  longest prompt (default max_length - 1); < max_length
--   truncation         "keep_end" (default: the prompt keeps its end, next to
--                      the completion) or "keep_start"; completions always
--                      keep their start (and lose EOS when cut)
--   add_bos            prepend tok.bos_id to the prompt (default: when it is set)
--   chat_template      (sft) function(messages) -> prompt, completion;
--                      default E.data.chat_template: "<|role|>\ncontent\n" per
--                      turn, then "<|assistant|>\n"; the last turn is the completion
-- The items (Lua tables; positions 1-based, ids 0-based):
--   tokenize_sft       {ids, loss_mask, prompt_len, source}: loss_mask[t] is 1
--                      on completion tokens (EOS included), 0 on the prompt.
--                      The trainer predicts token t from tokens < t, so it
--                      uses loss_mask[t] for t >= 2.
--   tokenize_unpaired  as sft, plus label (boolean)
--   tokenize_segments  as sft, plus segments = {{pos, scores}}: pos is the
--                      segment's last token in ids (each segment is encoded
--                      on its own, so its end is a token boundary)
--   tokenize_pairs     {prompt, chosen, rejected, source}: id lists
--   tokenize_rankings  {prompt, responses = {K id lists}, ranks, source}
--   tokenize_prompts   {prompt, example, source}
-- The returned list also has pad_id = tok.pad_id, or tok.eos_id without one.
--
-- Batching. Loader(items, {batch_size = 8, seed = 0, shuffle = true,
-- group_by_length = true, group_size = 50, drop_last = false, pad_id})
--   loader:next()        the next batch; epochs roll over (batch.epoch, batch.index
--                        within the epoch, batch.indices of the items taken)
--   loader:batches()     iterator over the rest of the epoch (a full new one
--                        when the current one is done)
--   loader:epoch(), loader:num_batches()
--   loader:state()       a plain table {epoch, position, seed, items, batch_size}
--   loader:set_state(t)  the next batch is the one that followed when t was saved
-- The order is a function of (seed, epoch) only: shuffle the items; with
-- group_by_length sort chunks of group_size batches by length, cut batches,
-- shuffle the batches. A batch (see engine/data/batch.lua) is right-padded:
--   ids, attention_mask, loss_mask (rows, T) float32 tensors; lengths,
--   prompt_lens (Lua lists); size = B; items.
--   pairs: 2B rows, row i = chosen of item i, row B + i = rejected of item i.
--   rankings: K*B rows, row (k-1)*B + i = response k of item i; ranks (B,K).
--   unpaired: labels (B) 1/0.  segments: scores[aspect], score_mask[aspect] (B,T).
--   prompts: ids and attention_mask padded on the LEFT for generation;
--            prompts (id lists), examples.
-- left_pad(rows, pad_id) / right_pad(rows, pad_id) -> ids (B,T), mask (B,T)
-- pad any list of id lists; collate(items, pad_id) makes one batch.

local jsonl = require("engine.data.jsonl")
local tokenize = require("engine.data.tokenize")
local batch = require("engine.data.batch")
local loader = require("engine.data.loader")

return {
  null = jsonl.null,
  formats = jsonl.formats,
  read_jsonl = jsonl.read_jsonl,
  source_of = jsonl.source_of,

  chat_template = tokenize.chat_template,
  tokenize_sft = tokenize.tokenize_sft,
  tokenize_unpaired = tokenize.tokenize_unpaired,
  tokenize_segments = tokenize.tokenize_segments,
  tokenize_pairs = tokenize.tokenize_pairs,
  tokenize_rankings = tokenize.tokenize_rankings,
  tokenize_prompts = tokenize.tokenize_prompts,

  left_pad = batch.left_pad,
  right_pad = batch.right_pad,
  collate = batch.collate,
  Loader = loader.Loader,
}
