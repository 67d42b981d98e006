-- bench/stats.lua — the statistics the benchmarks share. Loaded with
-- dofile(<bench dir> .. "/stats.lua"). Not here: timing loops, printing.
local S = {}

-- the median of a list of numbers (the mean of the middle two for an even
-- count); the list is left as it is
function S.median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

return S
