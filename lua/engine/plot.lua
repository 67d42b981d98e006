-- engine/plot.lua — curves of a run's training metrics, as SVG and PNG.
--
--   plot.run_dir(run_dir [, metrics [, opts]]) -> list of files written
--   plot.cli(args [, out])   the command `engine plot RUN_DIR [metric ...]`
--   plot.read_metrics(path)  -> { names = {...}, series = { name = {xs, ys} } }
--
-- run_dir reads RUN_DIR/metrics.jsonl (one JSON object per logged step:
-- {"step": 10, "loss": 0.69, "eval/loss": 0.7, ...}; a line may lack any
-- metric) and writes, for each chosen metric, RUN_DIR/plots/<name>.svg and
-- <name>.png (a '/' or any other character outside [A-Za-z0-9._-] in the
-- name becomes '_'). metrics is a list of names, or nil for every numeric
-- metric. A missing metrics.jsonl returns nil, message; an unknown metric or
-- a line that is not JSON raises an error naming it and the file.
--
-- One chart per metric: x = step (a line without "step" counts as its record
-- number), y = the metric; ticks at 1-2-5 steps, labelled, a light grid, the
-- metric's name as title. Values that are null, NaN or infinite (Python's
-- json writes NaN and Infinity; dkjson writes null) are skipped. Layout,
-- which the tests rely on: the plot area spans x from MARGIN.left to
-- width - MARGIN.right and y from MARGIN.top to height - MARGIN.bottom; x
-- covers the steps exactly, y the values padded by 5% of their range on each
-- side (a single step or constant values get +-10% of the value around
-- them, or +-1 around 0). The data line is COLORS.line; with opts.smooth > 0
-- and at least SMOOTH_MIN_POINTS points, the raw line is drawn pale
-- (COLORS.raw) and an exponential moving average over it in COLORS.line;
-- with at most MARKER_MAX_POINTS points each point gets a dot.
--
-- opts: width (640), height (400) in pixels; smooth, the EMA weight of the
-- previous average in [0, 1) (0.9; 0 draws no average); formats, a list
-- from {"svg", "png"} (both).
--
-- PNG text uses a built-in 5x7 bitmap font (printable ASCII); PNG lines are
-- not anti-aliased. What it does not do: several runs or metrics on one
-- chart, log scales, a wall-clock x axis.

local json = require("dkjson")
local lfs = require("lfs")
local png = require("engine.png")

local plot = {}

plot.MARGIN = { left = 64, right = 16, top = 32, bottom = 44 }
plot.COLORS = {
  background = 0xFFFFFF, grid = 0xE6E6E6, axis = 0x444444, text = 0x222222,
  line = 0x1F77B4, raw = 0xAEC7E8,
}
plot.SMOOTH_MIN_POINTS = 30
plot.MARKER_MAX_POINTS = 40

local DEFAULTS = { width = 640, height = 400, smooth = 0.9, formats = { "svg", "png" } }

---------------------------------------------------------------- reading

local function finite(v)
  return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge
end

-- dkjson reads standard JSON only; Python's json module writes the bare
-- tokens NaN, Infinity and -Infinity. Read them as null and as numbers too
-- big for a double (1e999 decodes to inf).
local function decode_line(line)
  local obj, _, err = json.decode(line)
  if obj == nil and err then
    local fixed = line:gsub("([:,%[]%s*)(-?)Infinity", "%1%21e999"):gsub("([:,%[]%s*)NaN", "%1null")
    local obj2 = json.decode(fixed)
    if obj2 ~= nil then return obj2 end
  end
  return obj, err
end

-- names: every key holding a number somewhere (besides "step"), sorted;
-- series[name] = { xs = {...}, ys = {...} }, finite values only
function plot.read_metrics(path)
  local f, err = io.open(path, "r")
  if not f then return nil, "plot: cannot open " .. tostring(err) end
  local series, names = {}, {}
  local lineno, record = 0, 0
  for line in f:lines() do
    lineno = lineno + 1
    if line:match("%S") then
      local obj, derr = decode_line(line)
      local array = type(obj) == "table" and (getmetatable(obj) or {}).__jsontype == "array"
      if type(obj) ~= "table" or array then
        f:close()
        error(string.format("plot: %s:%d: not a JSON object (%s)", path, lineno,
          derr or (array and "an array" or "a " .. type(obj))), 0)
      end
      record = record + 1
      local x = obj.step
      if type(x) ~= "number" then x = record end
      for k, v in pairs(obj) do
        if k ~= "step" and type(k) == "string" and type(v) == "number" then
          local s = series[k]
          if not s then
            s = { xs = {}, ys = {} }
            series[k] = s
            names[#names + 1] = k
          end
          if finite(v) and finite(x) then
            s.xs[#s.xs + 1], s.ys[#s.ys + 1] = x, v
          end
        end
      end
    end
  end
  f:close()
  table.sort(names)
  return { names = names, series = series }
end

---------------------------------------------------------------- the chart

-- ticks at multiples of 1, 2 or 5 x 10^k, about `target` of them within
-- [lo, hi]; returns the ticks and k (for the label's decimals)
local function nice_ticks(lo, hi, target, min_step)
  local raw = (hi / 2 - lo / 2) / target * 2 -- in halves: -1e308..1e308 does not overflow
  local k = math.floor(math.log(raw, 10))
  local f = raw / 10 ^ k
  local m = f < 1.5 and 1 or f < 3 and 2 or f < 7 and 5 or 10
  local step = m * 10 ^ k
  if m == 10 then k = k + 1 end
  if min_step and step < min_step then step, k = min_step, 0 end
  local ticks = {}
  for i = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) do
    ticks[#ticks + 1] = i * step
  end
  return ticks, k
end

-- ticks are multiples of 10^k: fixed-point with -k decimals, or for very
-- small or large values an exponent with as many digits as tell them apart
-- ("1.05e-06")
local function tick_label(v, k, biggest)
  if v == 0 then return "0" end
  if k < -4 or biggest >= 1e6 then
    local digits = math.floor(math.log(biggest, 10)) - k
    return string.format("%." .. math.min(6, math.max(0, digits)) .. "e", v)
  end
  return string.format("%." .. math.max(0, -k) .. "f", v)
end

local function labels(ticks, k)
  local biggest = 0
  for _, t in ipairs(ticks) do biggest = math.max(biggest, math.abs(t)) end
  local out = {}
  for i, t in ipairs(ticks) do out[i] = tick_label(t, k, biggest) end
  return out
end

local function min_max(list)
  local lo, hi = math.huge, -math.huge
  for _, v in ipairs(list) do lo, hi = math.min(lo, v), math.max(hi, v) end
  return lo, hi
end

local BIG = 1.7976931348623157e308 -- the largest double

-- the range around a single value
local function widen(v)
  local pad = v ~= 0 and math.abs(v) * 0.1 or 1
  return math.max(v - pad, -BIG), math.min(v + pad, BIG)
end

-- a linear map of [lo, hi] onto [a, b]. It works on halves, so that
-- neither a range as wide as -1e308..1e308 nor integer steps overflow.
local function linear(lo, hi, a, b)
  local half_lo, half_span = lo / 2, hi / 2 - lo / 2
  return function(v) return a + (v / 2 - half_lo) / half_span * (b - a) end
end

-- everything both renderers draw, in pixel coordinates (y down)
local function chart(name, s, opts)
  local W, H, M = opts.width, opts.height, plot.MARGIN
  local ax0, ax1, ay0, ay1 = M.left, W - M.right, M.top, H - M.bottom
  local n = #s.xs
  local x0, x1, y0, y1 = 0, 1, 0, 1
  if n > 0 then
    x0, x1 = min_max(s.xs)
    y0, y1 = min_max(s.ys)
    if x0 == x1 then x0, x1 = widen(x0) end
    if y0 == y1 then y0, y1 = widen(y0)
    else
      local pad = 0.1 * (y1 / 2 - y0 / 2) -- 5% of the range
      y0, y1 = math.max(y0 - pad, -BIG), math.min(y1 + pad, BIG)
    end
  end
  local sx, sy = linear(x0, x1, ax0, ax1), linear(y0, y1, ay1, ay0)

  local integer_steps = true
  for _, x in ipairs(s.xs) do
    if math.type(x) ~= "integer" then integer_steps = false end
  end
  local c = { title = name, width = W, height = H, area = { ax0, ay0, ax1, ay1 },
              xticks = {}, yticks = {}, lines = {}, markers = {} }
  local xt, xk = nice_ticks(x0, x1, 6, integer_steps and 1 or nil)
  for i, lab in ipairs(labels(xt, xk)) do c.xticks[i] = { pos = sx(xt[i]), label = lab } end
  local yt, yk = nice_ticks(y0, y1, 5)
  for i, lab in ipairs(labels(yt, yk)) do c.yticks[i] = { pos = sy(yt[i]), label = lab } end

  local pts = {}
  for i = 1, n do pts[i] = { sx(s.xs[i]), sy(s.ys[i]) } end
  if n == 0 then c.note = "no finite values" end
  local smooth = opts.smooth
  if smooth > 0 and n >= plot.SMOOTH_MIN_POINTS then
    local ema, avg = {}, s.ys[1]
    for i = 1, n do
      avg = smooth * avg + (1 - smooth) * s.ys[i]
      ema[i] = { pts[i][1], sy(avg) }
    end
    c.lines[1] = { kind = "data", color = plot.COLORS.raw, width = 1, points = pts }
    c.lines[2] = { kind = "ema", color = plot.COLORS.line, width = 2, points = ema }
  else
    c.lines[1] = { kind = "data", color = plot.COLORS.line, width = 2, points = pts }
  end
  if n <= plot.MARKER_MAX_POINTS then c.markers = pts end
  return c
end

---------------------------------------------------------------- SVG

local function hex(c) return string.format("#%06x", c) end

local function xml_escape(s)
  return (s:gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" }))
end

local function svg(c)
  local ax0, ay0, ax1, ay1 = table.unpack(c.area)
  local out = {}
  local function add(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
    .. 'font-family="sans-serif" font-size="11">', c.width, c.height, c.width, c.height)
  add('<rect width="100%%" height="100%%" fill="%s"/>', hex(plot.COLORS.background))
  add('<g stroke="%s" stroke-width="1">', hex(plot.COLORS.grid))
  for _, t in ipairs(c.xticks) do add('<line x1="%.2f" y1="%d" x2="%.2f" y2="%d"/>', t.pos, ay0, t.pos, ay1) end
  for _, t in ipairs(c.yticks) do add('<line x1="%d" y1="%.2f" x2="%d" y2="%.2f"/>', ax0, t.pos, ax1, t.pos) end
  add('</g>')
  add('<g stroke="%s" stroke-width="1">', hex(plot.COLORS.axis))
  add('<line x1="%d" y1="%d" x2="%d" y2="%d"/>', ax0, ay1, ax1, ay1)
  add('<line x1="%d" y1="%d" x2="%d" y2="%d"/>', ax0, ay0, ax0, ay1)
  for _, t in ipairs(c.xticks) do add('<line x1="%.2f" y1="%d" x2="%.2f" y2="%d"/>', t.pos, ay1, t.pos, ay1 + 4) end
  for _, t in ipairs(c.yticks) do add('<line x1="%d" y1="%.2f" x2="%d" y2="%.2f"/>', ax0 - 4, t.pos, ax0, t.pos) end
  add('</g>')
  add('<g fill="%s">', hex(plot.COLORS.text))
  for _, t in ipairs(c.xticks) do
    add('<text x="%.2f" y="%d" text-anchor="middle">%s</text>', t.pos, ay1 + 16, t.label)
  end
  for _, t in ipairs(c.yticks) do
    add('<text x="%d" y="%.2f" text-anchor="end" dominant-baseline="middle">%s</text>', ax0 - 7, t.pos, t.label)
  end
  add('<text x="%.1f" y="%d" text-anchor="middle">step</text>', (ax0 + ax1) / 2, c.height - 8)
  add('<text x="%.1f" y="20" text-anchor="middle" font-size="15">%s</text>', c.width / 2, xml_escape(c.title))
  if c.note then
    add('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>', (ax0 + ax1) / 2, (ay0 + ay1) / 2, c.note)
  end
  add('</g>')
  for _, l in ipairs(c.lines) do
    if #l.points > 0 then
      local pts = {}
      for i, p in ipairs(l.points) do pts[i] = string.format("%.2f,%.2f", p[1], p[2]) end
      add('<polyline class="%s" fill="none" stroke="%s" stroke-width="%d" stroke-linejoin="round" points="%s"/>',
        l.kind, hex(l.color), l.width, table.concat(pts, " "))
    end
  end
  for _, p in ipairs(c.markers) do
    add('<circle cx="%.2f" cy="%.2f" r="2.5" fill="%s"/>', p[1], p[2], hex(plot.COLORS.line))
  end
  add('</svg>\n')
  return table.concat(out, "\n")
end

---------------------------------------------------------------- raster

-- The 5x7 font for printable ASCII (0x20 to 0x7E): 5 columns a glyph, each
-- a byte in hex whose bit 0 is the top row.
local FONT = table.concat({
  "0000000000", "00005F0000", "0007000700", "147F147F14", "242A7F2A12", "2313086462", "3649552250", "0005030000", -- space ! " # $ % & '
  "001C224100", "0041221C00", "142A1C2A14", "08083E0808", "0050300000", "0808080808", "0060600000", "2010080402", -- ( ) * + , - . /
  "3E5149453E", "00427F4000", "4261514946", "2141454B31", "1814127F10", "2745454539", "3C4A494930", "0171090503", -- 0 1 2 3 4 5 6 7
  "3649494936", "064949291E", "0036360000", "0056360000", "0814224100", "1414141414", "0041221408", "0201510906", -- 8 9 : ; < = > ?
  "324979413E", "7E1111117E", "7F49494936", "3E41414122", "7F4141221C", "7F49494941", "7F09090101", "3E41415132", -- @ A B C D E F G
  "7F0808087F", "00417F4100", "2040413F01", "7F08142241", "7F40404040", "7F0204027F", "7F0408107F", "3E4141413E", -- H I J K L M N O
  "7F09090906", "3E4151215E", "7F09192946", "4649494931", "01017F0101", "3F4040403F", "1F2040201F", "7F2018207F", -- P Q R S T U V W
  "6314081463", "0304780403", "6151494543", "007F414100", "0204081020", "0041417F00", "0402010204", "4040404040", -- X Y Z [ \ ] ^ _
  "0001020400", "2054545478", "7F48444438", "3844444420", "384444487F", "3854545418", "087E090102", "0C5252523E", -- ` a b c d e f g
  "7F08040478", "00447D4000", "2040443D00", "007F102844", "00417F4000", "7C04180478", "7C08040478", "3844444438", -- h i j k l m n o
  "7C14141408", "081414187C", "7C08040408", "4854545420", "043F444020", "3C4040207C", "1C2040201C", "3C4030403C", -- p q r s t u v w
  "4428102844", "0C5050503C", "4464544C44", "0008364100", "00007F0000", "0041360800", "0201020402",               -- x y z { | } ~
})

-- a W x H canvas of 0xRRGGBB pixels
local Canvas = {}
Canvas.__index = Canvas

local function canvas(w, h, color)
  local px = {}
  for i = 1, w * h do px[i] = color end
  return setmetatable({ w = w, h = h, pixels = px }, Canvas)
end

function Canvas:set(x, y, color)
  if x >= 0 and x < self.w and y >= 0 and y < self.h then
    self.pixels[y * self.w + x + 1] = color
  end
end

function Canvas:fill(x, y, w, h, color)
  for j = y, y + h - 1 do
    for i = x, x + w - 1 do self:set(i, j, color) end
  end
end

-- a line between pixel centres (Bresenham), `width` pixels thick; nothing
-- for coordinates that are not finite or far off the canvas
function Canvas:line(x0, y0, x1, y1, color, width)
  if not (math.abs(x0) + math.abs(y0) + math.abs(x1) + math.abs(y1) < 1e6) then return end
  width = width or 1
  local off = (width - 1) // 2
  local dx, dy = math.abs(x1 - x0), -math.abs(y1 - y0)
  local stx, sty = x0 < x1 and 1 or -1, y0 < y1 and 1 or -1
  local err = dx + dy
  while true do
    self:fill(x0 - off, y0 - off, width, width, color)
    if x0 == x1 and y0 == y1 then break end
    local e2 = 2 * err
    if e2 >= dy then err, x0 = err + dy, x0 + stx end
    if e2 <= dx then err, y0 = err + dx, y0 + sty end
  end
end

function Canvas:dot(x, y, color)
  for j = -2, 2 do
    for i = -2, 2 do
      if i * i + j * j <= 5 then self:set(x + i, y + j, color) end
    end
  end
end

local GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6

local function text_width(s, scale) return (#s * ADVANCE - 1) * scale end

-- text with its top left corner at (x, y); characters outside printable
-- ASCII show as '?'
function Canvas:text(x, y, s, color, scale)
  scale = scale or 1
  for k = 1, #s do
    local b = s:byte(k)
    if b < 0x20 or b > 0x7E then b = 0x3F end
    local at = (b - 0x20) * 10
    for col = 0, GLYPH_W - 1 do
      local bits = tonumber(FONT:sub(at + 2 * col + 1, at + 2 * col + 2), 16)
      for row = 0, GLYPH_H - 1 do
        if bits >> row & 1 == 1 then
          self:fill(x + ((k - 1) * ADVANCE + col) * scale, y + row * scale, scale, scale, color)
        end
      end
    end
  end
end

local function px(v) return math.floor(v) end

local function raster(c)
  local C = plot.COLORS
  local cv = canvas(c.width, c.height, C.background)
  local ax0, ay0, ax1, ay1 = table.unpack(c.area)
  for _, t in ipairs(c.xticks) do cv:line(px(t.pos), ay0, px(t.pos), ay1, C.grid) end
  for _, t in ipairs(c.yticks) do cv:line(ax0, px(t.pos), ax1, px(t.pos), C.grid) end
  cv:line(ax0, ay1, ax1, ay1, C.axis)
  cv:line(ax0, ay0, ax0, ay1, C.axis)
  for _, t in ipairs(c.xticks) do
    cv:line(px(t.pos), ay1, px(t.pos), ay1 + 4, C.axis)
    cv:text(px(t.pos) - text_width(t.label, 1) // 2, ay1 + 8, t.label, C.text)
  end
  for _, t in ipairs(c.yticks) do
    cv:line(ax0 - 4, px(t.pos), ax0, px(t.pos), C.axis)
    cv:text(ax0 - 7 - text_width(t.label, 1), px(t.pos) - 3, t.label, C.text)
  end
  cv:text((ax0 + ax1) // 2 - text_width("step", 1) // 2, c.height - 14, "step", C.text)
  cv:text(c.width // 2 - text_width(c.title, 2) // 2, 6, c.title, C.text, 2)
  if c.note then
    cv:text((ax0 + ax1) // 2 - text_width(c.note, 1) // 2, (ay0 + ay1) // 2 - 3, c.note, C.text)
  end
  for _, l in ipairs(c.lines) do
    local p = l.points
    for i = 2, #p do
      cv:line(px(p[i - 1][1]), px(p[i - 1][2]), px(p[i][1]), px(p[i][2]), l.color, l.width)
    end
    if #p == 1 then cv:fill(px(p[1][1]), px(p[1][2]), l.width, l.width, l.color) end
  end
  for _, p in ipairs(c.markers) do cv:dot(px(p[1]), px(p[2]), C.line) end
  return { width = c.width, height = c.height, channels = 3, pixels = cv.pixels }
end

---------------------------------------------------------------- files

local function file_name(metric) return (metric:gsub("[^%w%._%-]", "_")) end

local function write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then error("plot: cannot write " .. tostring(err), 0) end
  f:write(data)
  f:close()
end

local function check_opts(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if DEFAULTS[k] == nil then
      error("plot: unknown option '" .. tostring(k) .. "' (the options are formats, height, smooth, width)", 3)
    end
    o[k] = v
  end
  for _, k in ipairs({ "width", "height" }) do
    if math.type(o[k]) ~= "integer" or o[k] < 160 or o[k] > 8000 then
      error("plot: opts." .. k .. " must be an integer from 160 to 8000, got " .. tostring(o[k]), 3)
    end
  end
  if type(o.smooth) ~= "number" or not (o.smooth >= 0 and o.smooth < 1) then
    error("plot: opts.smooth must be a number in [0, 1), got " .. tostring(o.smooth), 3)
  end
  if type(o.formats) ~= "table" then error("plot: opts.formats must be a list such as {\"svg\", \"png\"}", 3) end
  for _, fmt in ipairs(o.formats) do
    if fmt ~= "svg" and fmt ~= "png" then
      error("plot: unknown format '" .. tostring(fmt) .. "' (the formats are svg, png)", 3)
    end
  end
  return o
end

function plot.run_dir(run_dir, metrics, opts)
  if type(run_dir) ~= "string" then error("plot: run_dir must be a string, got " .. type(run_dir), 2) end
  if metrics ~= nil and type(metrics) ~= "table" then
    error("plot: metrics must be a list of names or nil, got " .. type(metrics), 2)
  end
  local o = check_opts(opts)
  local path = run_dir .. "/metrics.jsonl"
  local data, err = plot.read_metrics(path)
  if not data then return nil, err end
  local chosen = metrics or data.names
  for _, m in ipairs(chosen) do
    if not data.series[m] then
      error(string.format("plot: no metric '%s' in %s; available: %s", tostring(m), path,
        #data.names > 0 and table.concat(data.names, ", ") or "none"), 2)
    end
  end

  local dir = run_dir .. "/plots"
  if lfs.attributes(dir, "mode") ~= "directory" then
    local ok, merr = lfs.mkdir(dir)
    if not ok then error("plot: cannot create " .. dir .. ": " .. tostring(merr), 2) end
  end
  local written = {}
  for _, m in ipairs(chosen) do
    local c = chart(m, data.series[m], o)
    for _, fmt in ipairs(o.formats) do
      local file = dir .. "/" .. file_name(m) .. "." .. fmt
      write_file(file, fmt == "svg" and svg(c) or png.encode(raster(c)))
      written[#written + 1] = file
    end
  end
  return written
end

---------------------------------------------------------------- command

plot.USAGE = [[
usage: engine plot RUN_DIR [metric ...] [--width=N] [--height=N] [--smooth=W]

Writes RUN_DIR/plots/<metric>.svg and .png from RUN_DIR/metrics.jsonl, one
chart per metric (all numeric metrics when none is named; '/' in a name
becomes '_' in the file name).

  --width=N, --height=N   image size in pixels (640 x 400)
  --smooth=W              weight of the moving average, in [0, 1) (0.9;
                          0 for none); drawn from 30 points on]]

-- args: the words after `engine plot`; out: where to print (io.stdout).
-- Prints the files written, one a line, and returns their list; a bad
-- argument raises the usage text, a failure raises its message.
function plot.cli(args, out)
  out = out or io.stdout
  local run_dir, metrics, opts = nil, {}, {}
  for _, a in ipairs(args or {}) do
    if a == "-h" or a == "--help" then
      out:write(plot.USAGE, "\n")
      return {}
    end
    local key, value = a:match("^%-%-(%w+)=(.*)$")
    if key then
      local v = tonumber(value)
      if (key == "width" or key == "height") and math.tointeger(v) then
        opts[key] = math.tointeger(v)
      elseif key == "smooth" and v then
        opts.smooth = v
      else
        error(string.format("plot: bad option '%s'\n%s", a, plot.USAGE), 0)
      end
    elseif a:sub(1, 2) == "--" then
      error(string.format("plot: unknown option '%s'\n%s", a, plot.USAGE), 0)
    elseif not run_dir then
      run_dir = a
    else
      metrics[#metrics + 1] = a
    end
  end
  if not run_dir then error("plot: missing RUN_DIR\n" .. plot.USAGE, 0) end
  local ok, written, err = pcall(plot.run_dir, run_dir, #metrics > 0 and metrics or nil, opts)
  if not ok then error((tostring(written):gsub("^[^\n]-:%d+: ", "", 1)), 0) end
  if not written then error(err, 0) end
  for _, f in ipairs(written) do out:write(f, "\n") end
  return written
end

return plot
