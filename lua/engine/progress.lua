-- engine/progress.lua — progress of a long loop. On a terminal: one line
-- redrawn in place, "step 120/500 [=====>    ] loss 0.6931 | 1520 tok/s |
-- 3:12 left". Elsewhere (a log file, CI): one plain line every `every`
-- steps. quiet = true prints nothing. Rates and the time left come from
-- the wall clock since the first update.
local E = require("engine")

local Progress = {}
Progress.__index = Progress

-- Progress.new{total=, start=0, every=10, quiet=false, tty=E.isatty(1), label="step", out=io.stdout}
function Progress.new(opts)
  local p = setmetatable({}, Progress)
  p.total = opts.total
  p.done = opts.start or 0
  p.first = p.done
  p.every = math.max(1, opts.every or 10)
  p.quiet = opts.quiet or false
  p.tty = opts.tty
  if p.tty == nil then p.tty = E.isatty(1) end
  p.label = opts.label or "step"
  p.out = opts.out or io.stdout
  p.t0 = E.wall_time()
  p.tokens = 0
  return p
end

local function clock(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%d:%02d:%02d", s // 3600, s % 3600 // 60, s % 60) end
  return string.format("%d:%02d", s // 60, s % 60)
end
Progress.clock = clock

-- the text after the counter: "loss 0.6931 | 1520 tok/s | 3:12 left"
function Progress:status(values)
  local parts = {}
  if values then
    local keys = {}
    for k in pairs(values) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      if (a == "loss") ~= (b == "loss") then return a == "loss" end
      return a < b
    end)
    for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%s %.4g", k, values[k]) end
  end
  local elapsed = E.wall_time() - self.t0
  local steps = self.done - self.first
  if self.tokens > 0 and elapsed > 0 then parts[#parts + 1] = string.format("%.0f tok/s", self.tokens / elapsed) end
  if steps > 0 and self.total then
    parts[#parts + 1] = clock(elapsed / steps * (self.total - self.done)) .. " left"
  end
  return table.concat(parts, " | ")
end

-- p:update(step, values (table of numbers to show), tokens (processed this step))
function Progress:update(step, values, tokens)
  self.done = step
  self.tokens = self.tokens + (tokens or 0)
  if self.quiet then return end
  local counter = self.total and string.format("%s %d/%d", self.label, step, self.total)
    or string.format("%s %d", self.label, step)
  if self.tty then
    local bar = ""
    if self.total and self.total > 0 then
      local width = 24
      local filled = math.floor(width * step / self.total)
      bar = " [" .. string.rep("=", filled) .. (filled < width and ">" or "") ..
        string.rep(" ", math.max(0, width - filled - 1)) .. "]"
    end
    self.out:write("\r", counter, bar, " ", self:status(values), "\27[K")
    self.out:flush()
  elseif step % self.every == 0 or step == self.total then
    self.out:write(counter, " ", self:status(values), "\n")
    self.out:flush()
  end
end

-- p:note(text): a line of its own (an eval result) without breaking the bar
function Progress:note(text)
  if self.quiet then return end
  if self.tty then self.out:write("\r\27[K") end
  self.out:write(text, "\n")
  self.out:flush()
end

function Progress:finish()
  if self.quiet then return end
  if self.tty then self.out:write("\n") end
  self.out:flush()
end

return Progress
