-- plot_spec.lua — engine.png (the PNG writer) and engine.plot (charts of a
-- run's metrics.jsonl as SVG and PNG, and the `engine plot` command).
-- PNG files are read back by a decoder written here from the PNG and
-- deflate specifications (RFC 2083, RFC 1950, RFC 1951), sharing no code
-- with the writer: chunk CRCs with a bitwise CRC-32, Adler-32, stored and
-- fixed-Huffman blocks. Expected chart coordinates are worked out by hand
-- from the layout plot.lua documents (margins 64/16/32/44, y padded by 5%).
local H = require("helper")
local E = require("engine")
local png = require("engine.png")
local plot = require("engine.plot")

local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local FIXTURE = HERE .. "/../fixtures/plot/metrics.jsonl"

---------------------------------------------------------------- a PNG reader

local function crc32_bitwise(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = c ~ s:byte(i)
    for _ = 1, 8 do
      local low = c & 1
      c = c >> 1
      if low == 1 then c = c ~ 0xEDB88320 end
    end
  end
  return c ~ 0xFFFFFFFF
end

local function adler32(bytes)
  local a, b = 1, 0
  for _, v in ipairs(bytes) do
    a = (a + v) % 65521
    b = (b + a) % 65521
  end
  return b * 65536 + a
end

-- RFC 1951 3.2.5: length symbols 257..285 and distance codes 0..29, their
-- bases and extra bits, derived from the rules rather than copied
local LBASE, LEXTRA, DBASE, DEXTRA = {}, {}, {}, {}
do
  local base = 3
  for sym = 257, 284 do
    local extra = sym < 265 and 0 or (sym - 261) // 4
    LBASE[sym], LEXTRA[sym] = base, extra
    base = base + (1 << extra)
  end
  LBASE[285], LEXTRA[285] = 258, 0
  base = 1
  for code = 0, 29 do
    local extra = code < 4 and 0 or code // 2 - 1
    DBASE[code], DEXTRA[code] = base, extra
    base = base + (1 << extra)
  end
end

-- a deflate stream (stored or fixed-Huffman blocks) -> list of bytes
local function inflate(s)
  local pos, acc, nacc = 1, 0, 0
  local function bits(n) -- n bits, least significant first
    while nacc < n do
      local b = assert(s:byte(pos), "inflate: the stream ends early")
      acc, nacc, pos = acc | (b << nacc), nacc + 8, pos + 1
    end
    local v = acc & ((1 << n) - 1)
    acc, nacc = acc >> n, nacc - n
    return v
  end
  local function code(n) -- a Huffman code of n bits, most significant first
    local v = 0
    for _ = 1, n do v = (v << 1) | bits(1) end
    return v
  end
  local out = {}
  repeat
    local final, kind = bits(1), bits(2)
    if kind == 0 then
      acc, nacc = 0, 0 -- the rest of the byte is padding
      local len = s:byte(pos) | s:byte(pos + 1) << 8
      local nlen = s:byte(pos + 2) | s:byte(pos + 3) << 8
      assert(len ~ nlen == 0xFFFF, "inflate: NLEN is not the complement of LEN")
      for i = 0, len - 1 do out[#out + 1] = s:byte(pos + 4 + i) end
      pos = pos + 4 + len
    elseif kind == 1 then
      while true do
        local sym
        local c = code(7)
        if c <= 0x17 then sym = 256 + c
        else
          c = (c << 1) | bits(1)
          if c >= 0x30 and c <= 0xBF then sym = c - 0x30
          elseif c >= 0xC0 and c <= 0xC7 then sym = 280 + c - 0xC0
          else sym = 144 + ((c << 1) | bits(1)) - 0x190 end
        end
        if sym < 256 then out[#out + 1] = sym
        elseif sym == 256 then break
        else
          local len = LBASE[sym] + bits(LEXTRA[sym])
          assert(sym ~= 284 or len < 258, "inflate: length 258 must be symbol 285")
          local d = code(5)
          local dist = DBASE[d] + bits(DEXTRA[d])
          assert(dist <= #out, "inflate: distance reaches before the start")
          for _ = 1, len do out[#out + 1] = out[#out + 1 - dist] end
        end
      end
    else
      error("inflate: unexpected block type " .. kind)
    end
  until final == 1
  return out, pos
end

-- parses and checks a PNG file's bytes; returns its header and pixel(x, y)
local function read_png(data)
  assert.equals("\137PNG\r\n\26\n", data:sub(1, 8))
  local pos, chunks = 9, {}
  while pos <= #data do
    local len, kind = string.unpack(">I4c4", data, pos)
    local body = data:sub(pos + 8, pos + 7 + len)
    local crc = string.unpack(">I4", data, pos + 8 + len)
    assert.equals(crc32_bitwise(kind .. body), crc, "CRC of chunk " .. kind)
    chunks[#chunks + 1] = { kind = kind, body = body }
    pos = pos + 12 + len
  end
  assert.equals(#data + 1, pos)
  assert.same({ "IHDR", "IDAT", "IEND" }, { chunks[1].kind, chunks[2].kind, chunks[3].kind })
  local w, h, depth, ctype, comp, filter, interlace = string.unpack(">I4I4BBBBB", chunks[1].body)
  assert.same({ 8, 0, 0, 0 }, { depth, comp, filter, interlace })
  local bpp = ({ [2] = 3, [6] = 4 })[ctype]
  assert.is_not_nil(bpp, "colour type " .. ctype)

  local z = chunks[2].body
  local cmf, flg = z:byte(1, 2)
  assert.equals(8, cmf & 0x0F) -- deflate
  assert.equals(0, (cmf * 256 + flg) % 31)
  assert.equals(0, flg & 0x20) -- no preset dictionary
  local raw, after = inflate(z:sub(3))
  assert.equals(#z - 2 - 4 + 1, after, "the Adler-32 follows the deflate stream")
  assert.equals(adler32(raw), string.unpack(">I4", z, #z - 3))
  local stride = w * bpp + 1
  assert.equals(h * stride, #raw)
  for y = 0, h - 1 do assert.equals(0, raw[y * stride + 1], "filter type of row " .. y) end
  local function pixel(x, y)
    local v = 0
    for i = 1, bpp do v = (v << 8) | raw[y * stride + 1 + x * bpp + i] end
    return v
  end
  return { width = w, height = h, color_type = ctype, size = #data, pixel = pixel }
end

---------------------------------------------------------------- helpers

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function run_with(lines)
  local dir = H.tmpdir()
  H.write_file(dir .. "/metrics.jsonl", table.concat(lines, "\n") .. "\n")
  return dir
end

local function fixture_run()
  local dir = H.tmpdir()
  H.write_file(dir .. "/metrics.jsonl", read(FIXTURE))
  return dir
end

-- the points of the SVG polyline of a class, as {x, y} pairs
local function polyline(svg, class)
  local pts = svg:match('<polyline class="' .. class .. '"[^>]-points="([^"]*)"')
  if not pts then return nil end
  local out = {}
  for x, y in pts:gmatch("(%S+),(%S+)") do out[#out + 1] = { tonumber(x), tonumber(y) } end
  return out
end

local function stroke(svg, class)
  return svg:match('<polyline class="' .. class .. '"[^>]-stroke="(#%x+)"')
end

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

-- the documented layout at 640 x 400: plot area x 64..624, y 32..356
local function sx(x, x0, x1) return 64 + (x - x0) / (x1 - x0) * 560 end
local function sy(y, y0, y1) return 32 + (y1 - y) / (y1 - y0) * 324 end

local BLUE, PALE, WHITE, GRID, AXIS = 0x1F77B4, 0xAEC7E8, 0xFFFFFF, 0xE6E6E6, 0x444444

---------------------------------------------------------------- png

describe("engine.png", function()
  it("computes the standard CRC-32 and Adler-32 check values", function()
    assert.equals(0xCBF43926, png.crc32("123456789"))
    assert.equals(0x11E60398, png.adler32("Wikipedia"))
    assert.equals(0, png.crc32(""))
    assert.equals(1, png.adler32(""))
  end)

  for _, mode in ipairs({ "stored", "fixed" }) do
    it("writes a small RGB image that decodes to its pixels (" .. mode .. ")", function()
      local pixels = { 0xFF0000, 0x00FF00, 0x0000FF, 0x000000, 0xFFFFFF, 0x123456 }
      local data = png.encode({ width = 3, height = 2, pixels = pixels }, { deflate = mode })
      -- IHDR: width 3, height 2, depth 8, colour type 2 (RGB)
      assert.equals("\0\0\0\13IHDR\0\0\0\3\0\0\0\2\8\2\0\0\0", data:sub(9, 29))
      local img = read_png(data)
      assert.equals(3, img.width)
      assert.equals(2, img.height)
      assert.equals(2, img.color_type)
      for i, v in ipairs(pixels) do
        assert.equals(v, img.pixel((i - 1) % 3, (i - 1) // 3), "pixel " .. i)
      end
    end)

    it("round-trips a large image with runs, repeated rows and noise (" .. mode .. ")", function()
      -- 200 x 120 RGB is 72120 bytes of scanlines: two stored blocks; in
      -- fixed mode the runs and repeated rows make long matches
      local w, h, seed = 200, 120, 7
      local pixels = {}
      for y = 0, h - 1 do
        for x = 0, w - 1 do
          local v
          if y < 40 then v = (x // (y + 1)) % 2 == 0 and 0xFF0000 or 0x00FF80
          elseif y < 80 then v = 0xEEEEEE
          else
            seed = (seed * 1103515245 + 12345) % 2147483648
            v = seed >> 7 & 0xFFFFFF
          end
          pixels[y * w + x + 1] = v
        end
      end
      local data = png.encode({ width = w, height = h, pixels = pixels }, { deflate = mode })
      local img = read_png(data)
      local bad = 0
      for y = 0, h - 1 do
        for x = 0, w - 1 do
          if img.pixel(x, y) ~= pixels[y * w + x + 1] then bad = bad + 1 end
        end
      end
      assert.equals(0, bad)
      if mode == "fixed" then
        assert.is_true(#data < 72120 * 0.45, "compressed to " .. #data .. " bytes")
      else
        assert.is_true(#data > 72120)
      end
    end)
  end

  it("writes RGBA with colour type 6", function()
    local pixels = { 0xFF000080, 0x00FF00FF, 0x0000FF00, 0x11223344 }
    local img = read_png(png.encode({ width = 2, height = 2, channels = 4, pixels = pixels }))
    assert.equals(6, img.color_type)
    for i, v in ipairs(pixels) do
      assert.equals(v, img.pixel((i - 1) % 2, (i - 1) // 2))
    end
  end)

  it("writes a file, and reports one it cannot write", function()
    local dir = H.tmpdir()
    assert.is_true(png.write(dir .. "/a.png", { width = 1, height = 1, pixels = { 0xABCDEF } }))
    assert.equals(0xABCDEF, read_png(read(dir .. "/a.png")).pixel(0, 0))
    local ok, err = png.write(dir .. "/no/such/dir/a.png", { width = 1, height = 1, pixels = { 0 } })
    assert.is_nil(ok)
    assert.equals("png: cannot write " .. dir .. "/no/such/dir/a.png: No such file or directory", err)
  end)

  it("rejects bad images with messages naming the problem", function()
    assert.equals("png: a 2x2 image needs 4 pixels, got 3",
      H.error_of(png.encode, { width = 2, height = 2, pixels = { 0, 0, 0 } }))
    assert.equals("png: channels must be 3 (RGB) or 4 (RGBA), got 1",
      H.error_of(png.encode, { width = 1, height = 1, channels = 1, pixels = { 0 } }))
    assert.equals("png: width and height must be positive integers, got 0 x 1",
      H.error_of(png.encode, { width = 0, height = 1, pixels = {} }))
    assert.equals("png: pixel 2 (x=1, y=0) is 16777216, not an integer 0xRRGGBB colour",
      H.error_of(png.encode, { width = 2, height = 1, pixels = { 0, 0x1000000 } }))
    assert.equals("png: opts.deflate must be 'fixed' or 'stored', got lz4",
      H.error_of(png.encode, { width = 1, height = 1, pixels = { 0 } }, { deflate = "lz4" }))
  end)
end)

---------------------------------------------------------------- plot

describe("plot.run_dir", function()
  it("is reachable as E.plot", function()
    assert.equals(plot, E.plot)
  end)

  it("writes an SVG and a PNG for every numeric metric", function()
    local dir = fixture_run()
    local files = plot.run_dir(dir)
    local expected = {}
    for _, name in ipairs({ "eval_loss", "learning_rate", "loss", "rewards_accuracies" }) do
      expected[#expected + 1] = dir .. "/plots/" .. name .. ".svg"
      expected[#expected + 1] = dir .. "/plots/" .. name .. ".png"
    end
    assert.same(expected, files)
    for _, f in ipairs(files) do assert.is_truthy(io.open(f)) end
  end)

  it("scales the SVG polyline by the documented layout", function()
    local dir = fixture_run()
    plot.run_dir(dir, { "loss" }, { formats = { "svg" } })
    local svg = read(dir .. "/plots/loss.svg")
    local pts = polyline(svg, "data")
    assert.equals(11, #pts)
    -- loss spans 0.2..0.7, padded by 0.025: y0 = 0.175, y1 = 0.725
    H.assert_close(pts[1], { 64, sy(0.7, 0.175, 0.725) }, 1e-4)
    H.assert_close(pts[6], { 344, 194 }, 1e-4) -- step 50 of 0..100, loss 0.45 mid-range
    H.assert_close(pts[11], { 624, sy(0.2, 0.175, 0.725) }, 1e-4)
    assert.equals("#1f77b4", stroke(svg, "data"))
    assert.is_nil(polyline(svg, "ema"))
    assert.equals(11, count(svg, "<circle "))
    assert.truthy(svg:find(">loss</text>", 1, true))
    -- ticks every 20 steps and every 0.1 of loss
    for _, label in ipairs({ "0", "20", "40", "60", "80", "100", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7" }) do
      assert.truthy(svg:find(">" .. label .. "</text>", 1, true), label)
    end
    assert.is_falsy(svg:find(">0.8</text>", 1, true))
    assert.truthy(svg:find('<line x1="176.00" y1="32" x2="176.00" y2="356"/>', 1, true)) -- grid at step 20
  end)

  it("draws the PNG: background, grid, axis, title and the line through the data", function()
    local dir = fixture_run()
    plot.run_dir(dir, { "loss" }, { formats = { "png" } })
    local img = read_png(read(dir .. "/plots/loss.png"))
    assert.same({ 640, 400, 2 }, { img.width, img.height, img.color_type })
    assert.equals(WHITE, img.pixel(0, 0))
    assert.equals(WHITE, img.pixel(639, 399))
    assert.equals(BLUE, img.pixel(344, 194)) -- step 50, loss 0.45
    assert.equals(BLUE, img.pixel(624, math.floor(sy(0.2, 0.175, 0.725)))) -- the last point
    assert.equals(GRID, img.pixel(176, 40)) -- the grid line at step 20, above the data
    assert.equals(AXIS, img.pixel(64, 300)) -- the y axis
    assert.equals(AXIS, img.pixel(400, 356)) -- the x axis
    local text = 0
    for y = 0, 30 do
      for x = 0, 639 do
        if img.pixel(x, y) == 0x222222 then text = text + 1 end
      end
    end
    assert.is_true(text > 40, "title pixels: " .. text)
  end)

  it("plots a sparse eval metric from the lines that have it", function()
    local dir = fixture_run()
    local files = plot.run_dir(dir, { "eval/loss" })
    assert.same({ dir .. "/plots/eval_loss.svg", dir .. "/plots/eval_loss.png" }, files)
    local pts = polyline(read(dir .. "/plots/eval_loss.svg"), "data")
    assert.equals(3, #pts)
    -- 0.33..0.71 padded by 0.019
    H.assert_close(pts[2], { 344, sy(0.5, 0.311, 0.729) }, 1e-4)
    -- a tick every 0.1 (0.418 / 5 rounds up to 10^-1): one decimal
    local svg = read(dir .. "/plots/eval_loss.svg")
    for _, label in ipairs({ "0.4", "0.5", "0.6", "0.7" }) do
      assert.truthy(svg:find(">" .. label .. "</text>", 1, true), label)
    end
    assert.is_falsy(svg:find(">0.3</text>", 1, true) or svg:find(">0.40</text>", 1, true))
  end)

  it("keeps a constant metric and a single point off division by zero", function()
    local dir = fixture_run()
    plot.run_dir(dir, { "learning_rate" }, { formats = { "svg" } })
    local svg = read(dir .. "/plots/learning_rate.svg")
    for _, p in ipairs(polyline(svg, "data")) do
      H.assert_close(p[2], 194, 1e-9) -- 5e-7 +- 10%: the middle of the plot area
    end
    assert.truthy(svg:find(">5.0e-07</text>", 1, true))
    assert.truthy(svg:find(">4.6e-07</text>", 1, true))
    assert.is_falsy(svg:find("nan[ ,\"]") or svg:find("inf[ ,\"]"))

    local one = run_with({ '{"step": 7, "loss": 0}' })
    plot.run_dir(one)
    svg = read(one .. "/plots/loss.svg")
    assert.same({ { 344, 194 } }, polyline(svg, "data"))
    assert.is_falsy(svg:find("nan[ ,\"]") or svg:find("inf[ ,\"]"))
    assert.equals(BLUE, read_png(read(one .. "/plots/loss.png")).pixel(344, 194))
  end)

  it("skips null, NaN and infinite values", function()
    local dir = run_with({
      '{"step": 1, "loss": 1, "bad": 1e999}',
      '{"step": 2, "loss": NaN, "nan": NaN}',
      '{"step": 3, "loss": Infinity, "bad": null}',
      '{"step": 4, "loss": -Infinity, "bad": -Infinity}',
      '{"step": 5, "loss": null}',
      '{"step": 6, "loss": 1e999}',
      '{"step": 7, "loss": 3}',
    })
    -- a metric only ever null or NaN is unknown (JSON has no NaN: both read as null)
    local files = plot.run_dir(dir, nil, { formats = { "svg" } })
    assert.same({ dir .. "/plots/bad.svg", dir .. "/plots/loss.svg" }, files)
    local pts = polyline(read(dir .. "/plots/loss.svg"), "data")
    H.assert_close(pts, { { 64, sy(1, 0.9, 3.1) }, { 624, sy(3, 0.9, 3.1) } }, 1e-4)
    local bad = read(dir .. "/plots/bad.svg")
    assert.is_nil(polyline(bad, "data"))
    assert.truthy(bad:find(">no finite values</text>", 1, true))
  end)

  it("draws a moving average over many points, and none when smooth = 0", function()
    local lines = { '{"step": 1, "y": 0}' }
    for s = 2, 100 do lines[s] = string.format('{"step": %d, "y": 1}', s) end
    local dir = run_with(lines)
    plot.run_dir(dir, nil, { formats = { "svg" } })
    local svg = read(dir .. "/plots/y.svg")
    assert.equals("#aec7e8", stroke(svg, "data"))
    assert.equals("#1f77b4", stroke(svg, "ema"))
    local ema = polyline(svg, "ema")
    assert.equals(100, #ema)
    -- the average after the first 0 and n - 1 ones is 1 - 0.9^(n-1)
    H.assert_close(ema[1], { 64, sy(0, -0.05, 1.05) }, 1e-4)
    H.assert_close(ema[11][2], sy(1 - 0.9 ^ 10, -0.05, 1.05), 1e-4)
    assert.equals(0, count(svg, "<circle "))

    plot.run_dir(dir, nil, { smooth = 0.5, formats = { "svg" } })
    H.assert_close(polyline(read(dir .. "/plots/y.svg"), "ema")[3][2], sy(0.75, -0.05, 1.05), 1e-4)
    plot.run_dir(dir, nil, { smooth = 0 })
    svg = read(dir .. "/plots/y.svg")
    assert.is_nil(polyline(svg, "ema"))
    assert.equals("#1f77b4", stroke(svg, "data"))
    local img = read_png(read(dir .. "/plots/y.png"))
    assert.equals(BLUE, img.pixel(624, math.floor(sy(1, -0.05, 1.05))))
  end)

  it("draws the raw line pale under the average in the PNG", function()
    local lines = {}
    for s = 1, 60 do lines[s] = string.format('{"step": %d, "y": %d}', s, s % 2) end
    local dir = run_with(lines)
    plot.run_dir(dir, nil, { formats = { "png" } })
    local img = read_png(read(dir .. "/plots/y.png"))
    -- step 1 is y = 1 at the top left; the average starts there too
    assert.equals(BLUE, img.pixel(64, math.floor(sy(1, -0.05, 1.05))))
    -- step 2 is y = 0 at the bottom, far below the average
    assert.equals(PALE, img.pixel(math.floor(sx(2, 1, 60)), math.floor(sy(0, -0.05, 1.05))))
  end)

  it("counts records for x when lines have no step, and survives huge ranges", function()
    local dir = run_with({ '{"loss": 2}', '', '{"loss": 4, "step": "n/a"}', '{"loss": 3}', '{"huge": -1e308}', '{"huge": 1e308}' })
    plot.run_dir(dir)
    local pts = polyline(read(dir .. "/plots/loss.svg"), "data")
    H.assert_close(pts, { { 64, sy(2, 1.9, 4.1) }, { sx(2, 1, 3), sy(4, 1.9, 4.1) }, { 624, sy(3, 1.9, 4.1) } }, 1e-4)
    -- records 4 and 5; -1e308..1e308 padded by 1e307 (here in units of 1e308)
    local huge = read(dir .. "/plots/huge.svg")
    H.assert_close(polyline(huge, "data"), { { 64, sy(-1, -1.1, 1.1) }, { 624, sy(1, -1.1, 1.1) } }, 1e-4)
    assert.truthy(huge:find(">1.0e+308</text>", 1, true)) -- ticks every 5e307
    assert.truthy(huge:find(">0</text>", 1, true))
    assert.equals(BLUE, read_png(read(dir .. "/plots/huge.png")).pixel(344, 194))
  end)

  it("names unknown metrics, missing files and bad lines", function()
    local dir = fixture_run()
    assert.equals("plot: no metric 'los' in " .. dir .. "/metrics.jsonl; available: eval/loss, "
      .. "learning_rate, loss, rewards/accuracies",
      H.error_of(plot.run_dir, dir, { "loss", "los" }))
    local empty = H.tmpdir()
    local ok, err = plot.run_dir(empty)
    assert.is_nil(ok)
    assert.equals("plot: cannot open " .. empty .. "/metrics.jsonl: No such file or directory", err)
    local broken = run_with({ '{"step": 1, "loss": 1}', '{"step": 2, "loss": }' })
    assert.equals("plot: " .. broken .. "/metrics.jsonl:2: not a JSON object "
      .. "(no valid JSON value at line 1, column 21)", H.error_of(plot.run_dir, broken))
    local list = run_with({ '{"step": 1, "loss": 1}', '[1, 2]' })
    assert.equals("plot: " .. list .. "/metrics.jsonl:2: not a JSON object (an array)",
      H.error_of(plot.run_dir, list))
  end)

  it("checks its options", function()
    local dir = fixture_run()
    assert.equals("plot: unknown option 'colour' (the options are formats, height, smooth, width)",
      H.error_of(plot.run_dir, dir, nil, { colour = 1 }))
    assert.equals("plot: opts.width must be an integer from 160 to 8000, got 10.5",
      H.error_of(plot.run_dir, dir, nil, { width = 10.5 }))
    assert.equals("plot: opts.smooth must be a number in [0, 1), got 1",
      H.error_of(plot.run_dir, dir, nil, { smooth = 1 }))
    assert.equals("plot: unknown format 'jpg' (the formats are svg, png)",
      H.error_of(plot.run_dir, dir, nil, { formats = { "jpg" } }))
  end)

  it("sizes the chart by width and height, and makes safe file names", function()
    local dir = run_with({ '{"step": 0, "a b:c": 1}', '{"step": 10, "a b:c": 2}' })
    local files = plot.run_dir(dir, nil, { width = 320, height = 200 })
    assert.same({ dir .. "/plots/a_b_c.svg", dir .. "/plots/a_b_c.png" }, files)
    local img = read_png(read(files[2]))
    assert.same({ 320, 200 }, { img.width, img.height })
    -- area x 64..304, y 32..156; step 10 at the right, value 2 at 5% below the top
    local last = polyline(read(files[1]), "data")[2]
    H.assert_close(last, { 304, 32 + 0.05 / 1.1 * 124 }, 1e-4)
    assert.truthy(read(files[1]):find(">a b:c</text>", 1, true))
  end)
end)

describe("plot.cli", function()
  local function sink()
    local buf = {}
    return { write = function(self, ...) for _, s in ipairs({ ... }) do buf[#buf + 1] = s end return self end,
             text = function() return table.concat(buf) end }
  end

  it("prints the files it writes", function()
    local dir = fixture_run()
    local out = sink()
    local files = plot.cli({ dir, "loss", "eval/loss", "--width=400" }, out)
    assert.equals(table.concat(files, "\n") .. "\n", out.text())
    assert.same({ dir .. "/plots/loss.svg", dir .. "/plots/loss.png",
                  dir .. "/plots/eval_loss.svg", dir .. "/plots/eval_loss.png" }, files)
    assert.equals(400, read_png(read(files[2])).width)
  end)

  it("gives usage on bad arguments and plain messages on failures", function()
    local usage = "usage: engine plot RUN_DIR [metric ...]"
    local err = H.error_of(plot.cli, {}, sink())
    assert.equals("plot: missing RUN_DIR\n" .. usage, err:sub(1, 22 + #usage))
    err = H.error_of(plot.cli, { "x", "--colour=red" }, sink())
    assert.equals("plot: bad option '--colour=red'\n" .. usage, err:sub(1, 32 + #usage))
    err = H.error_of(plot.cli, { "x", "--smooth=much" }, sink())
    assert.equals("plot: bad option '--smooth=much'\n" .. usage, err:sub(1, 33 + #usage))
    err = H.error_of(plot.cli, { "x", "--fast" }, sink())
    assert.equals("plot: unknown option '--fast'\n" .. usage, err:sub(1, 30 + #usage))
    local out = sink()
    assert.same({}, plot.cli({ "--help" }, out))
    assert.equals(plot.USAGE .. "\n", out.text())

    local dir = fixture_run()
    local ok, msg = pcall(plot.cli, { dir, "los" }, sink())
    assert.is_false(ok)
    assert.equals("plot: no metric 'los' in " .. dir .. "/metrics.jsonl; available: eval/loss, "
      .. "learning_rate, loss, rewards/accuracies", msg)
    ok, msg = pcall(plot.cli, { dir, "--smooth=2" }, sink())
    assert.equals("plot: opts.smooth must be a number in [0, 1), got 2", msg)
    local empty = H.tmpdir()
    ok, msg = pcall(plot.cli, { empty }, sink())
    assert.equals("plot: cannot open " .. empty .. "/metrics.jsonl: No such file or directory", msg)
  end)
end)
