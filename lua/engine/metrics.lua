-- engine/metrics.lua — RUN/metrics.jsonl: one JSON object per logged step,
-- "step" first, then the metrics by name (TRL's names where one exists).
-- Each line is flushed as it is written, so a killed run loses nothing it
-- logged. Opening for a resumed run first drops the lines logged after the
-- checkpoint it resumes from, so the file ends up as an uninterrupted run's.
local json = require("engine.json")

local Metrics = {}
Metrics.__index = Metrics

-- Metrics.open(run_dir, resume_step) -> writer
function Metrics.open(run, resume_step)
  local path = run .. "/metrics.jsonl"
  if resume_step then
    local kept = {}
    local f = io.open(path, "rb")
    if f then
      for line in f:lines() do
        local step = tonumber(line:match('^{"step":(%-?%d+)'))
        if step and step <= resume_step then kept[#kept + 1] = line end
      end
      f:close()
    end
    local w = assert(io.open(path, "wb"))
    for _, line in ipairs(kept) do w:write(line, "\n") end
    w:close()
  end
  local f, err = io.open(path, resume_step and "ab" or "wb")
  if not f then error("metrics: cannot open " .. path .. ": " .. err, 0) end
  return setmetatable({ path = path, file = f }, Metrics)
end

function Metrics:write(step, values)
  self.file:write(json.line("step", step, values), "\n")
  self.file:flush()
end

function Metrics:close()
  if self.file then self.file:close() end
  self.file = nil
end

-- Metrics.read(path) -> list of tables (for tests and plots)
function Metrics.read(path)
  local rows = {}
  local f = assert(io.open(path, "rb"))
  local n = 0
  for line in f:lines() do
    n = n + 1
    rows[#rows + 1] = json.decode(line, path .. ":" .. n)
  end
  f:close()
  return rows
end

return Metrics
