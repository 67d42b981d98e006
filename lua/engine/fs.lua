-- engine/fs.lua — the few file-system operations runs need, on top of
-- LuaFileSystem: mkdir -p, rm -r of a directory the engine made, listing.
local lfs = require("lfs")

local fs = {}

function fs.exists(path) return lfs.attributes(path, "mode") ~= nil end
function fs.is_dir(path) return lfs.attributes(path, "mode") == "directory" end

-- fs.mkdir_p(path) -> true, or nil, message
function fs.mkdir_p(path)
  if fs.is_dir(path) then return true end
  local parent = path:match("^(.*)/[^/]+/?$")
  if parent and parent ~= "" and not fs.is_dir(parent) then
    local ok, err = fs.mkdir_p(parent)
    if not ok then return nil, err end
  end
  local ok, err = lfs.mkdir(path)
  if not ok and not fs.is_dir(path) then return nil, "cannot create directory " .. path .. ": " .. tostring(err) end
  return true
end

-- fs.rm_r(path): remove a file or a directory tree (symlinks are removed,
-- not followed)
function fs.rm_r(path)
  local mode = lfs.symlinkattributes(path, "mode")
  if mode == nil then return true end
  if mode == "directory" then
    for name in lfs.dir(path) do
      if name ~= "." and name ~= ".." then fs.rm_r(path .. "/" .. name) end
    end
    return lfs.rmdir(path)
  end
  return os.remove(path)
end

-- fs.list(dir) -> sorted entry names (no . and ..), or {} when dir is missing
function fs.list(dir)
  local names = {}
  if not fs.is_dir(dir) then return names end
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

return fs
