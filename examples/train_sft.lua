-- examples/train_sft.lua — a whole training run in ten lines: the bundled model, a
-- JSONL data set, AdamW, progress, checkpoints, --resume and plots (engine.train).
--   build/engine examples/train_sft.lua [OUT=runs/train_sft] [RESUME=""]
local E = require("engine")
local model, tok = E.models.load("examples/default/model"), E.tokenizer.load("examples/default/model")
local items = E.data.tokenize_sft(E.data.read_jsonl("examples/default/data/sft_train.jsonl", { format = "sft" }), tok, { max_length = 192 })
local loader = E.data.Loader(items, { batch_size = 16, seed = 0 })
local opt = E.optim.AdamW(model:parameters(), { lr = 1e-4 })
require("engine.train").fit {
  cfg = { out = arg[1] or "runs/train_sft", resume = arg[2] or "", max_steps = 60, log_every = 10, save_every = 20, keep_checkpoints = 2 },
  model = model, optimizer = opt, loader = loader,
  loss = function(batch) return (require("engine.lm").nll(model, batch)) end,
}
