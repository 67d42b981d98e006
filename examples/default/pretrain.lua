-- examples/default/pretrain.lua — pretrain the bundled default model: a
-- small GPT-2-shaped model (about 0.85M parameters) on the review corpus of
-- engine/tasks/reviews.lua, with a byte-level tokenizer. It is the starting
-- point of every recipe's default run.
--   build/engine examples/default/pretrain.lua [--max_steps=800] [--out=...]
-- Writes OUT/final (config.json, model.safetensors, tokenizer files) plus
-- the run files; `--install=true` (the default) copies the final model to
-- examples/default/model, where recipes look for it.
local E = require("engine")
local train = require("engine.train")
local lm = require("engine.lm")
local fs = require("engine.fs")
local reviews = require("engine.tasks.reviews")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local defaults = {
  out = "runs/pretrain", max_steps = 700, batch_size = 24, lr = 3e-3, warmup_steps = 50,
  n_examples = 20000, n_embd = 128, n_layer = 4, n_head = 4, n_positions = 192, seed = 1,
  threads = 2, install = true, log_every = 20, save_every = 200,
}
local docs = {
  batch_size = "sequences per step", lr = "peak learning rate (cosine decay after warm-up)",
  warmup_steps = "linear warm-up steps", n_examples = "reviews generated for the corpus",
  n_embd = "model width", n_layer = "transformer blocks", n_head = "attention heads",
  n_positions = "longest sequence", threads = "threads for the engine and OpenBLAS",
  install = "copy the final model to examples/default/model",
}
for k, v in pairs(train.docs) do docs[k] = docs[k] or v end
for k, v in pairs(train.defaults) do if defaults[k] == nil then defaults[k] = v end end

local function config(cfg, tok)
  return {
    model_type = "gpt2", architectures = { "GPT2LMHeadModel" }, vocab_size = tok.vocab_size,
    n_embd = cfg.n_embd, n_layer = cfg.n_layer, n_head = cfg.n_head, n_positions = cfg.n_positions,
    n_ctx = cfg.n_positions, n_inner = 4 * cfg.n_embd, activation_function = "gelu_new",
    layer_norm_epsilon = 1e-5, initializer_range = 0.02, resid_pdrop = 0.0, embd_pdrop = 0.0,
    attn_pdrop = 0.0, bos_token_id = tok.eos_id, eos_token_id = tok.eos_id, tie_word_embeddings = true,
  }
end

local function run(cfg)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local tok = E.tokenizer.bytes({ specials = { "<|endoftext|>" } })
  local model = E.models.new(config(cfg, tok), { seed = cfg.seed })
  local examples = {}
  for i, r in ipairs(reviews.generate(cfg.n_examples, { seed = cfg.seed })) do
    examples[i] = { prompt = "", completion = r.prompt .. r.completion }
  end
  local items = E.data.tokenize_sft(examples, tok, { max_length = cfg.n_positions })
  local loader = E.data.Loader(items, { batch_size = cfg.batch_size, seed = cfg.seed })
  local opt = E.optim.AdamW(model:parameters(), { lr = cfg.lr, weight_decay = 0.01, betas = { 0.9, 0.95 } })
  local schedule = E.optim.schedule { kind = "cosine", warmup_steps = cfg.warmup_steps,
    total_steps = cfg.max_steps, lr = cfg.lr, min_lr = cfg.lr * 0.1 }
  local result = train.fit {
    cfg = cfg, model = model, optimizer = opt, schedule = schedule, loader = loader,
    loss = function(batch)
      local loss, n = lm.nll(model, batch)
      return loss, {}, n
    end,
    final = function(dir)
      model:save(dir)
      tok:save(dir)
    end,
  }
  -- a few greedy continuations, judged
  local prompts = { "Review of the Nova blender:", "Paper Moon review. Rating: 5/5.", "Review of the Luna phone:" }
  local ids = {}
  for i, p in ipairs(prompts) do ids[i] = tok:encode(p) end
  local g = E.generate(model, ids, { max_new_tokens = 120, temperature = 0, stop_tokens = { tok.eos_id } })
  for i, p in ipairs(prompts) do
    local text = tok:decode(g.tokens[i], { skip_special_tokens = true })
    print(string.format("%s%s   [judge %.2f]", p, text, (reviews.judge.score(p, text))))
  end
  if cfg.install then
    local dest = here .. "/model"
    fs.rm_r(dest)
    assert(fs.mkdir_p(dest))
    model:save(dest)
    tok:save(dest)
    print("installed the model in " .. dest)
  end
  return result
end

return { name = "pretrain", description = "pretrain the default model on the review corpus",
  defaults = defaults, docs = docs, train = run }
