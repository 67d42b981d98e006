-- engine/png.lua — writes an RGB or RGBA image as a PNG file, in plain Lua
-- 5.4 (integer arithmetic, no C, no library).
--
--   png.encode(image [, opts]) -> the PNG file's bytes (a string)
--   png.write(path, image [, opts]) -> true, or nil, message
--   png.crc32(s), png.adler32(s) -> the checksums PNG and zlib use
--
-- image = { width = W, height = H, channels = 3 or 4, pixels = {...} }:
-- pixels holds W*H integers, row by row from the top left, each 0xRRGGBB
-- (channels 3, the default) or 0xRRGGBBAA (channels 4).
-- opts.deflate = "fixed" (the default) compresses with deflate's fixed
-- Huffman codes and a matcher that looks at two distances only, the pixel to
-- the left and the pixel above: enough to shrink plots and flat-coloured
-- pictures to a few percent, not a general-purpose compressor.
-- opts.deflate = "stored" writes uncompressed deflate blocks.
--
-- What it does not do: palettes, grey, 16-bit depth, interlacing, scanline
-- filters other than None, ancillary chunks, and reading PNG files.

local png = {}

-- CRC-32 (ISO 3309, as in PNG and zlib): reflected polynomial 0xEDB88320
local CRC_TABLE = {}
for n = 0, 255 do
  local c = n
  for _ = 1, 8 do
    if c & 1 == 1 then c = 0xEDB88320 ~ (c >> 1) else c = c >> 1 end
  end
  CRC_TABLE[n] = c
end

function png.crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = CRC_TABLE[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8)
  end
  return c ~ 0xFFFFFFFF
end

-- Adler-32 (RFC 1950) over a list of byte values
local function adler32_bytes(b)
  local s1, s2 = 1, 0
  for i = 1, #b do
    s1 = (s1 + b[i]) % 65521
    s2 = (s2 + s1) % 65521
  end
  return (s2 << 16) | s1
end

-- the byte values of s as a list (in slices: string.byte returns them on
-- the Lua stack)
local function bytes_of(s)
  local b = {}
  for i = 1, #s, 4096 do
    local slice = { s:byte(i, math.min(i + 4095, #s)) }
    table.move(slice, 1, #slice, #b + 1, b)
  end
  return b
end

-- a list of byte values as a string
local function string_of(b)
  local parts = {}
  for i = 1, #b, 4096 do
    parts[#parts + 1] = string.char(table.unpack(b, i, math.min(i + 4095, #b)))
  end
  return table.concat(parts)
end

function png.adler32(s) return adler32_bytes(bytes_of(s)) end

-- Deflate (RFC 1951), stored blocks: BFINAL and BTYPE=00 in a byte of
-- their own, then LEN and its complement NLEN (little-endian), then the data.
local function deflate_stored(b)
  local out, n = {}, #b
  local pos = 1
  repeat
    local len = math.min(65535, n - pos + 1)
    local final = (pos + len > n) and 1 or 0
    local hdr = { final, len & 0xFF, len >> 8, ~len & 0xFF, (~len >> 8) & 0xFF }
    table.move(hdr, 1, 5, #out + 1, out)
    table.move(b, pos, pos + len - 1, #out + 1, out)
    pos = pos + len
  until pos > n
  return out
end

-- Deflate, one block with the fixed Huffman codes (RFC 1951, 3.2.6).
-- Lengths 3..258 are symbols 257..285 plus extra bits; distances are
-- symbols 0..29 plus extra bits (RFC 1951, 3.2.5).
local LEN_BASE = { 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
  35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258 }
local LEN_EXTRA = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
  3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0 }
local DIST_BASE = { 1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
  257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577 }
local DIST_EXTRA = { 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
  7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13 }
local MAX_DIST, MAX_LEN = 32768, 258

-- Huffman codes go into the stream from their most significant bit, while
-- the bit writer fills bytes from the least significant one: store them
-- reversed.
local function reverse_bits(code, len)
  local r = 0
  for _ = 1, len do
    r = (r << 1) | (code & 1)
    code = code >> 1
  end
  return r
end

-- the fixed literal/length code: symbol -> reversed code, code length
local FIXED_CODE, FIXED_LEN = {}, {}
for sym = 0, 287 do
  local code, len
  if sym <= 143 then code, len = 0x30 + sym, 8
  elseif sym <= 255 then code, len = 0x190 + sym - 144, 9
  elseif sym <= 279 then code, len = sym - 256, 7
  else code, len = 0xC0 + sym - 280, 8 end
  FIXED_CODE[sym], FIXED_LEN[sym] = reverse_bits(code, len), len
end

-- match length -> its symbol, extra bit count and extra value. Lengths
-- 227..258 fit symbol 284's range, but 258 has symbol 285 of its own:
-- going up the table, the later symbol wins.
local LEN_SYM, LEN_NBITS, LEN_VALUE = {}, {}, {}
for k = 1, #LEN_BASE do
  for len = LEN_BASE[k], math.min(LEN_BASE[k] + (1 << LEN_EXTRA[k]) - 1, MAX_LEN) do
    LEN_SYM[len], LEN_NBITS[len], LEN_VALUE[len] = 256 + k, LEN_EXTRA[k], len - LEN_BASE[k]
  end
end

-- distance -> the reversed 5-bit code, extra bit count and extra value
local function dist_code(d)
  local k = #DIST_BASE
  while DIST_BASE[k] > d do k = k - 1 end
  return reverse_bits(k - 1, 5), DIST_EXTRA[k], d - DIST_BASE[k]
end

-- the length of the match at b[i..] against the bytes d before, up to 258
local function match_len(b, i, d, n)
  local limit = math.min(MAX_LEN, n - i + 1)
  local len = 0
  while len < limit and b[i + len] == b[i + len - d] do len = len + 1 end
  return len
end

-- b: the byte values; dists: the candidate match distances
local function deflate_fixed(b, dists)
  local out, acc, nacc = {}, 0, 0
  local function put(bits, n) -- n bits, least significant first
    acc = acc | (bits << nacc)
    nacc = nacc + n
    while nacc >= 8 do
      out[#out + 1] = acc & 0xFF
      acc, nacc = acc >> 8, nacc - 8
    end
  end
  local codes = {}
  for k, d in ipairs(dists) do codes[k] = { dist_code(d) } end

  put(1, 1) -- BFINAL
  put(1, 2) -- BTYPE = 01, fixed Huffman codes
  local i, n = 1, #b
  while i <= n do
    local best_len, best_k = 0, nil
    for k, d in ipairs(dists) do
      if i > d then
        local len = match_len(b, i, d, n)
        if len > best_len then best_len, best_k = len, k end
      end
    end
    if best_len >= 3 then
      local sym = LEN_SYM[best_len]
      put(FIXED_CODE[sym], FIXED_LEN[sym])
      put(LEN_VALUE[best_len], LEN_NBITS[best_len])
      local code, nbits, value = table.unpack(codes[best_k])
      put(code, 5)
      put(value, nbits)
      i = i + best_len
    else
      put(FIXED_CODE[b[i]], FIXED_LEN[b[i]])
      i = i + 1
    end
  end
  put(FIXED_CODE[256], FIXED_LEN[256]) -- end of block
  if nacc > 0 then put(0, 8 - nacc) end
  return out
end

-- a PNG chunk: length, type, data, CRC of type and data
local function chunk(kind, data)
  return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", png.crc32(kind .. data))
end

local function check_image(image)
  if type(image) ~= "table" then error("png: image must be a table, got " .. type(image), 3) end
  local w, h, ch, px = image.width, image.height, image.channels or 3, image.pixels
  if math.type(w) ~= "integer" or math.type(h) ~= "integer" or w < 1 or h < 1 or w > 0x7FFFFFFF or h > 0x7FFFFFFF then
    error("png: width and height must be positive integers, got "
      .. tostring(w) .. " x " .. tostring(h), 3)
  end
  if ch ~= 3 and ch ~= 4 then error("png: channels must be 3 (RGB) or 4 (RGBA), got " .. tostring(ch), 3) end
  if type(px) ~= "table" or #px ~= w * h then
    error(string.format("png: a %dx%d image needs %d pixels, got %s", w, h, w * h,
      type(px) == "table" and tostring(#px) or type(px)), 3)
  end
  return w, h, ch, px
end

function png.encode(image, opts)
  local w, h, ch, px = check_image(image)
  local mode = opts and opts.deflate or "fixed"
  if mode ~= "fixed" and mode ~= "stored" then
    error("png: opts.deflate must be 'fixed' or 'stored', got " .. tostring(mode), 2)
  end

  -- the scanlines: a filter-type byte (0, None) then the row's samples
  local fmt = ch == 3 and ">I3" or ">I4"
  local packed = {} -- colour -> its bytes
  local rows = {}
  for y = 0, h - 1 do
    local row = { "\0" }
    for x = 1, w do
      local v = px[y * w + x]
      local s = packed[v]
      if not s then
        if math.type(v) ~= "integer" or v < 0 or v >= (1 << (8 * ch)) then
          error(string.format("png: pixel %d (x=%d, y=%d) is %s, not an integer 0x%s colour",
            y * w + x, x - 1, y, tostring(v), ch == 3 and "RRGGBB" or "RRGGBBAA"), 2)
        end
        s = string.pack(fmt, v)
        packed[v] = s
      end
      row[x + 1] = s
    end
    rows[y + 1] = table.concat(row)
  end
  local raw = bytes_of(table.concat(rows))

  local stream
  if mode == "stored" then
    stream = deflate_stored(raw)
  else
    local stride = w * ch + 1
    stream = deflate_fixed(raw, stride <= MAX_DIST and { ch, stride } or { ch })
  end
  -- zlib: CMF 0x78 (deflate, 32K window), FLG 0x01 (0x7801 is a multiple
  -- of 31, no dictionary), the deflate stream, Adler-32 of the raw bytes
  local idat = "\x78\x01" .. string_of(stream) .. string.pack(">I4", adler32_bytes(raw))

  local ihdr = string.pack(">I4I4BBBBB", w, h, 8, ch == 3 and 2 or 6, 0, 0, 0)
  return "\x89PNG\r\n\x1a\n" .. chunk("IHDR", ihdr) .. chunk("IDAT", idat) .. chunk("IEND", "")
end

function png.write(path, image, opts)
  local data = png.encode(image, opts)
  local f, err = io.open(path, "wb")
  if not f then return nil, "png: cannot write " .. tostring(err) end
  local ok, werr = f:write(data)
  f:close()
  if not ok then return nil, "png: cannot write " .. path .. ": " .. tostring(werr) end
  return true
end

return png
