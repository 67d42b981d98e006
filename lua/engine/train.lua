-- engine/train.lua — the training loop every recipe shares.
--
--   local train = require("engine.train")
--   train.fit{
--     cfg = cfg,              -- resolved config: out, max_steps, grad_accum,
--                             -- max_grad_norm, log_every, eval_every,
--                             -- save_every, keep_checkpoints, resume, quiet
--     model = model,          -- :parameters() ({name=, tensor=} list), :save(dir)
--     optimizer = opt,        -- E.optim.AdamW/SGD: zero_grad, clip_grad_norm, step, state
--     schedule = fn,          -- optional: fn(step0) -> learning rate (step0 from 0)
--     loader = loader,        -- :next() -> batch, :state(), :set_state()
--     loss = fn,              -- fn(batch, step) -> loss tensor, metrics table, tokens
--     evaluate = fn,          -- optional: fn(step) -> metrics table (logged as eval/<name>)
--     state = {},             -- optional: the recipe's own state (a KL coefficient...)
--     generators = {...},     -- generators whose streams resume (default: E's default one)
--     final = fn(dir),        -- optional: how to save the final model (default model:save)
--   } -> {step=, metrics=, out=}
--
-- What it does: one directory per run (cfg.out) with config.json,
-- metrics.jsonl, checkpoints/ and, at the end, final/ and plots/; gradient
-- accumulation over cfg.grad_accum micro-batches; clipping by global norm;
-- progress on the terminal or a plain line every cfg.log_every steps;
-- evaluation every cfg.eval_every steps; a checkpoint every cfg.save_every
-- steps, keeping the newest cfg.keep_checkpoints. With cfg.resume = RUN_DIR
-- the run continues in RUN_DIR from its newest checkpoint and, on the same
-- machine and thread count, logs exactly what an uninterrupted run logs.
-- A non-finite loss or gradient stops the run before the optimizer step:
-- the step is run again with anomaly checks to name the first op that made
-- a NaN or inf, and the error says so; checkpoints already written are left
-- as they were.
local E = require("engine")
local checkpoint = require("engine.checkpoint")
local fs = require("engine.fs")
local json = require("engine.json")
local Metrics = require("engine.metrics")
local Progress = require("engine.progress")

local train = {}

-- the common config keys and their docs, for recipes to merge into theirs
train.defaults = {
  out = "runs/run", max_steps = 100, seed = 0, grad_accum = 1, max_grad_norm = 1.0,
  log_every = 10, eval_every = 0, save_every = 0, keep_checkpoints = 2, quiet = false, resume = "",
}
train.docs = {
  out = "the run directory (config, metrics.jsonl, checkpoints, plots)",
  max_steps = "optimizer steps to train for",
  seed = "seed of the data order, dropout and initialisation",
  grad_accum = "micro-batches accumulated into each optimizer step",
  max_grad_norm = "clip gradients to this global norm (0 = no clipping)",
  log_every = "steps between logged metric lines (and plain progress lines)",
  eval_every = "steps between evaluations on held-out data (0 = only at the end)",
  save_every = "steps between checkpoints (0 = only at the end)",
  keep_checkpoints = "how many of the newest checkpoints to keep",
  quiet = "print nothing but errors",
  resume = "a run directory to continue from its newest checkpoint",
}

-- a new table with the keys of each table in turn (later ones win): how
-- recipes build their defaults and docs from the common ones
function train.merge(...)
  local d = {}
  for i = 1, select("#", ...) do
    for k, v in pairs(select(i, ...) or {}) do d[k] = v end
  end
  return d
end

local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

local function add_into(acc, metrics, scale)
  for k, v in pairs(metrics or {}) do
    if type(v) == "number" then acc[k] = (acc[k] or 0) + v * scale end
  end
end

-- re-run the failed step's batch with anomaly checks on and name the op
local function diagnose(spec, batch, step)
  E.anomaly(true)
  local ok = pcall(function()
    local loss = spec.loss(batch, step)
    if loss.requires_grad and loss:requires_grad() then loss:backward() end
  end)
  local op = E.anomaly_op()
  E.anomaly(false)
  if not ok then return "an error while re-running the step" end
  return op and ("'" .. op .. "'") or "no single op (the values overflowed in the optimizer step)"
end

local function stop_nonfinite(spec, what, value, batch, step, last_ckpt)
  local where = diagnose(spec, batch, step)
  local kept = last_ckpt and ("; the last good checkpoint is " .. last_ckpt) or "; no checkpoint was written yet"
  local shown = value ~= value and "nan" or tostring(value)
  error(string.format("step %d: the %s is %s; the first non-finite value came from %s%s",
    step, what, shown, where, kept), 0)
end

function train.fit(spec)
  local cfg = spec.cfg
  local model, opt, loader = spec.model, spec.optimizer, spec.loader
  local generators = spec.generators or { E.default_generator() }
  local out = cfg.out
  local step = 0
  local last_ckpt
  local resume = cfg.resume
  if resume and resume ~= "" then
    local latest = checkpoint.latest(resume)
    if not latest then error("resume: no checkpoint found in " .. resume .. "/checkpoints", 0) end
    step = checkpoint.load(latest.dir, { model = model, optimizer = opt, loader = loader,
      state = spec.state, generators = generators })
    out = resume
    last_ckpt = latest.dir
  end
  assert(fs.mkdir_p(out))
  if step == 0 then json.write(out .. "/config.json", cfg) end
  local log = Metrics.open(out, step > 0 and step or nil)
  local progress = Progress.new { total = cfg.max_steps, start = step, every = cfg.log_every, quiet = cfg.quiet }
  local accum = math.max(1, cfg.grad_accum or 1)
  local metrics = {}

  local function save(at)
    last_ckpt = checkpoint.save(out, at, { model = model, optimizer = opt, loader = loader,
      state = spec.state, generators = generators })
    checkpoint.prune(out, cfg.keep_checkpoints)
  end

  local function evaluate(at)
    if not spec.evaluate then return end
    local m = E.no_grad(spec.evaluate, at)
    local row, parts = {}, {}
    for k, v in pairs(m) do row["eval/" .. k] = v end
    log:write(at, row)
    local keys = {}
    for k in pairs(m) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%s %.4g", k, m[k]) end
    progress:note(string.format("eval at step %d: %s", at, table.concat(parts, ", ")))
    return m
  end

  while step < cfg.max_steps do
    step = step + 1
    if spec.schedule then opt.lr = spec.schedule(step - 1) end
    opt:zero_grad()
    metrics = {}
    local tokens, batch = 0, nil
    for _ = 1, accum do
      batch = loader:next()
      local loss, m, ntok = spec.loss(batch, step)
      local value = loss:item()
      if not finite(value) then stop_nonfinite(spec, "loss", value, batch, step, last_ckpt) end
      if accum > 1 then loss = loss * (1 / accum) end
      loss:backward()
      add_into(metrics, m, 1 / accum)
      metrics.loss = (metrics.loss or 0) + value / accum
      tokens = tokens + (ntok or 0)
    end
    local norm = opt:clip_grad_norm((cfg.max_grad_norm and cfg.max_grad_norm > 0) and cfg.max_grad_norm or math.huge)
    if not finite(norm) then stop_nonfinite(spec, "gradient norm", norm, batch, step, last_ckpt) end
    opt:step()
    metrics.grad_norm = norm
    metrics.learning_rate = opt.lr
    if step % math.max(1, cfg.log_every or 1) == 0 or step == cfg.max_steps then log:write(step, metrics) end
    progress:update(step, { loss = metrics.loss }, tokens)
    if cfg.eval_every and cfg.eval_every > 0 and step % cfg.eval_every == 0 then evaluate(step) end
    if cfg.save_every and cfg.save_every > 0 and step % cfg.save_every == 0 then save(step) end
  end
  progress:finish()
  local final_eval
  if not (cfg.eval_every and cfg.eval_every > 0 and step % cfg.eval_every == 0) then final_eval = evaluate(step) end
  if not (cfg.save_every and cfg.save_every > 0 and step % cfg.save_every == 0) then save(step) end
  log:close()
  if spec.final then spec.final(out .. "/final")
  elseif model and model.save then model:save(out .. "/final") end
  local ok_plot, plot = pcall(require, "engine.plot")
  if ok_plot and plot.run_dir then pcall(plot.run_dir, out) end
  return { step = step, metrics = metrics, eval = final_eval, out = out }
end

return train
