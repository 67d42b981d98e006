-- bench/proc_memory.lua — the process's memory as Linux reports it, for the
-- benchmarks (loaded with dofile):
--   M.status_kb(key) -> a /proc/self/status field in kB (VmRSS, VmHWM), or nil
--   M.reset_hwm()    -> true when VmHWM was reset to the current RSS
--                       (writing 5 to /proc/self/clear_refs), false if not
local M = {}

function M.status_kb(key)
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(key .. ":%s*(%d+)"))
end

function M.reset_hwm()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  f:write("5")
  f:close()
  return true
end

return M
