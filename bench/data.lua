-- bench/data.lua — how fast E.data reads, checks, tokenizes and batches a
-- preference data set, next to the same steps in Python (json.loads, a
-- byte-level tokenizer, torch.tensor padding) run in the same invocation.
-- Prints figures and ratios; asserts nothing about time.
--   ENGINE_BUILD_DIR=build lua5.4 bench/data.lua [lines]
-- (or build/engine bench/data.lua). The tokenizer is byte-level in both, so
-- the figures measure the data code, not a BPE.

local build = os.getenv("ENGINE_BUILD_DIR") or "build"
package.cpath = build .. "/?.so;" .. package.cpath
local E = require("engine")
local D = E.data
local dkjson = require("dkjson")

local N = tonumber(arg and arg[1]) or 20000
local tmp = os.tmpname()

-- a data set of N pairs with prompts and responses of varied lengths
do
  local f = assert(io.open(tmp, "w"))
  local x = 1
  local function words(n)
    local t = {}
    for i = 1, n do
      x = (x * 1103515245 + 12345) % 2147483648
      t[i] = ("word" .. x % 1000)
    end
    return table.concat(t, " ")
  end
  for i = 1, N do
    f:write(dkjson.encode({ prompt = "Question " .. i .. ": " .. words(5 + i % 20),
      chosen = words(10 + i % 40), rejected = words(5 + i % 60) }), "\n")
  end
  f:close()
end

local tok = { eos_id = 256 }
function tok:encode(s) return { s:byte(1, -1) } end

local function time(fn)
  local t0 = os.clock()
  local r = fn()
  return os.clock() - t0, r
end

local t_read, ex = time(function() return D.read_jsonl(tmp, { format = "pairs" }) end)
local t_plain = time(function() -- dkjson without LPeg, decoding only, for comparison
  local n = 0
  for line in io.lines(tmp) do
    dkjson.decode(line, 1, dkjson.null)
    n = n + 1
  end
  return n
end)
local t_tok, items = time(function() return D.tokenize_pairs(ex, tok, { max_length = 512, max_prompt_length = 128 }) end)
local B = 8
local t_batch, stats = time(function()
  local l = D.Loader(items, { batch_size = B, seed = 1 })
  local pad, total = 0, 0
  for b in l:batches() do
    local s = b.ids:shape()
    local real = 0
    for _, n in ipairs(b.lengths) do real = real + n end
    pad, total = pad + s[1] * s[2] - real, total + s[1] * s[2]
  end
  return { pad = pad / total }
end)

local py = [==[
import json, sys, time, random, torch
path, B = sys.argv[1], int(sys.argv[2])
t0 = time.process_time()
ex = []
with open(path) as f:
    for line in f:
        o = json.loads(line)
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(o.get(k), str): raise SystemExit("bad")
        ex.append(o)
t_read = time.process_time() - t0
t0 = time.process_time()
items = []
for o in ex:
    p = list(o["prompt"].encode())[-128:]
    c = (list(o["chosen"].encode()) + [256])[:512 - len(p)]
    r = (list(o["rejected"].encode()) + [256])[:512 - len(p)]
    items.append((p, c, r))
t_tok = time.process_time() - t0
t0 = time.process_time()
order = list(range(len(items)))
random.Random(1).shuffle(order)
for s in range(0, len(order), B):
    rows = [items[i][0] + items[i][1] for i in order[s:s+B]] + [items[i][0] + items[i][2] for i in order[s:s+B]]
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], dtype=torch.float32)
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.float32)
t_batch = time.process_time() - t0
print(t_read, t_tok, t_batch)
]==]
local pyfile = os.tmpname()
do local f = assert(io.open(pyfile, "w")); f:write(py); f:close() end
local p = io.popen("OMP_NUM_THREADS=1 /usr/bin/python3 " .. pyfile .. " " .. tmp .. " " .. B .. " 2>/dev/null")
local out = p:read("a")
p:close()
os.remove(pyfile)
os.remove(tmp)
local pr, pt, pb = out:match("(%S+)%s+(%S+)%s+(%S+)")
pr, pt, pb = tonumber(pr), tonumber(pt), tonumber(pb)

print(string.format("E.data on %d preference pairs (byte-level tokenizer, batch %d):", N, B))
local function row(name, t, peer)
  io.write(string.format("  %-34s %8.3f s  %9.0f lines/s", name, t, N / t))
  if peer then io.write(string.format("   python %7.3f s  (%.2fx python's time)", peer, t / peer)) end
  io.write("\n")
end
row("read + check (dkjson" .. (package.loaded.lpeg and " + LPeg)" or ")"), t_read, pr)
row("decode only, dkjson without LPeg", t_plain)
row("tokenize_pairs", t_tok, pt)
row("Loader: one epoch of batches", t_batch, pb)
print(string.format("  padding in the batches: %.1f%% of tokens (grouped by length; python's are random)", 100 * stats.pad))
if not pr then print("  (python peer did not run)") end
