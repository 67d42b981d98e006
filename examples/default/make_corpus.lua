-- examples/default/make_corpus.lua — writes the bundled default task's
-- corpus of generated reviews (lua/engine/tasks/reviews.lua) to a file:
--
--   build/engine examples/default/make_corpus.lua [--n=20000] [--seed=1] [--out=PATH] [--format=txt|jsonl|text]
--   lua5.4 examples/default/make_corpus.lua ...            (the same; no engine needed)
--
--   --n       how many reviews (default 20000, about 2 MB)
--   --seed    the generator's seed (default 1); a seed gives the same file on every machine
--   --out     the file to write (default: corpus.txt next to this script)
--   --format  txt: one review per line, the prompt then the completion
--                  ("Review of the Nova blender: The motor is great. ...")
--             jsonl: one {"prompt": ..., "completion": ...} object per line, the
--                  completion starting with a space (the SFT data format)
--             text: one {"text": prompt .. completion} object per line (the
--                  pretraining mix of recipes/ppo_ptx.lua: data/pretrain.jsonl
--                  is --n=2000 --seed=11 --format=text)
--             (default: jsonl when --out ends in .jsonl, else txt)
--
-- It prints one line: how many reviews, bytes and distinct words it wrote.
-- It does not tokenize, train, or label anything.

local script_dir = (arg and arg[0] or ""):match("^(.*)[/\\][^/\\]*$") or "."
package.path = script_dir .. "/../../lua/?.lua;" .. package.path
local reviews = require("engine.tasks.reviews")

local USAGE = "usage: make_corpus.lua [--n=20000] [--seed=1] [--out=PATH] [--format=txt|jsonl|text]"

local function fail(msg)
  io.stderr:write("make_corpus.lua: ", msg, "\n")
  os.exit(1)
end

local opts = { n = 20000, seed = 1, out = script_dir .. "/corpus.txt", format = nil }
for i = 1, #arg do
  local a = arg[i]
  if a == "--help" or a == "-h" then
    print(USAGE)
    os.exit(0)
  end
  local k, v = a:match("^%-%-([%w_]+)=(.*)$")
  if not k then fail("cannot read argument '" .. a .. "'\n" .. USAGE) end
  if k == "n" or k == "seed" then
    local num = math.tointeger(tonumber(v))
    if not num or (k == "n" and num < 0) then
      fail("--" .. k .. " must be " .. (k == "n" and "a non-negative integer" or "an integer") .. ", got '" .. v .. "'")
    end
    opts[k] = num
  elseif k == "out" then
    opts.out = v
  elseif k == "format" then
    if v ~= "txt" and v ~= "jsonl" and v ~= "text" then fail("--format must be txt, jsonl or text, got '" .. v .. "'") end
    opts.format = v
  else
    fail("unknown option --" .. k .. "\n" .. USAGE)
  end
end
local format = opts.format or (opts.out:match("%.jsonl$") and "jsonl" or "txt")

-- a JSON string literal (the texts are ASCII, but escape what JSON requires anyway)
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n" elseif c == "\t" then return "\\t" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local recs = reviews.generate(opts.n, { seed = opts.seed })
local lines = {}
for i, r in ipairs(recs) do
  if format == "text" then
    lines[i] = '{"text": ' .. json_string(r.prompt .. r.completion) .. "}\n"
  elseif format == "jsonl" then
    lines[i] = '{"prompt": ' .. json_string(r.prompt) .. ', "completion": ' .. json_string(r.completion) .. "}\n"
  else
    lines[i] = r.prompt .. r.completion .. "\n"
  end
end
local text = table.concat(lines)

local f, err = io.open(opts.out, "wb")
if not f then fail("cannot write " .. tostring(err)) end
f:write(text)
f:close()

local words, nwords = {}, 0
for _, r in ipairs(recs) do
  for w in (r.prompt .. r.completion):lower():gmatch("[%a']+") do
    if not words[w] then words[w], nwords = true, nwords + 1 end
  end
end
print(string.format("wrote %d reviews (%d bytes, %d distinct words, seed %d) to %s as %s",
  #recs, #text, nwords, opts.seed, opts.out, format))
