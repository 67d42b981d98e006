/* binding_safetensors.c — the Lua binding of the engine's safetensors
 * functions, as the table E._safetensors that lua/engine/safetensors.lua
 * (E.safetensors) builds on:
 *
 *   open(path)            -> handle, or nil, message when the file cannot be
 *                            read (missing, unreadable); a file that is read
 *                            and refused raises the message naming the rule
 *   save(path, tensors, metadata?, dtype?)
 *                         -> true, or nil, message when the file cannot be
 *                            written; bad arguments raise
 *   write_atomic(path, s) -> true, or nil, message
 *
 * A handle ("engine.SafeTensors") has :names() (sorted), :info(name) (a
 * table, or nil for no such tensor), :load(name[, dtype]) (a tensor, float32
 * unless "float64" is asked for), :metadata() (a table of strings), :path(),
 * :close(); __gc and __close close it too, and closing twice is fine. Using a
 * closed handle raises.
 *
 * Not here: whole-file loading, directories and shards (the Lua module). */
#include "binding.h"

#include <errno.h>
#include <string.h>

#define ST_MT "engine.SafeTensors"

typedef struct {
  eng_safetensors *f; /* NULL once closed */
} SBox;

/* a string argument without embedded NULs */
static const char *check_cstring(lua_State *L, int idx, const char *op, const char *what) {
  size_t len;
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: %s must be a string, got %s", op, what, lb_type_name(L, idx));
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len) luaL_error(L, "%s: %s contains a NUL byte", op, what);
  return s;
}

static eng_safetensors *check_handle(lua_State *L, const char *op) {
  SBox *b = luaL_testudata(L, 1, ST_MT);
  if (!b) {
    luaL_error(L, "%s: expected a safetensors handle, got %s", op, lb_type_name(L, 1));
    return NULL;
  }
  if (!b->f) luaL_error(L, "%s: the safetensors handle is closed", op);
  return b->f;
}

/* open(path) */
static int l_open(lua_State *L) {
  lua_settop(L, 1);
  const char *path = check_cstring(L, 1, "safetensors.open", "path");
  SBox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->f = NULL;
  luaL_setmetatable(L, ST_MT);
  b->f = eng_safetensors_open(path);
  if (!b->f) {
    if (errno == EINVAL) return lb_raise_engine(L);
    lua_pushnil(L);
    lua_pushstring(L, eng_last_error());
    return 2;
  }
  return 1;
}

static int l_close(lua_State *L) {
  SBox *b = luaL_checkudata(L, 1, ST_MT);
  eng_safetensors *f = b->f;
  b->f = NULL;
  eng_safetensors_close(f);
  return 0;
}

static int l_names(lua_State *L) {
  eng_safetensors *f = check_handle(L, "names");
  int n = eng_safetensors_count(f);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, eng_safetensors_name(f, i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void push_u64(lua_State *L, uint64_t v) { lua_pushinteger(L, (lua_Integer)v); }

/* h:info(name) -> {dtype=, shape={...}, data_offsets={begin, end}, loadable=} or nil */
static int l_info(lua_State *L) {
  eng_safetensors *f = check_handle(L, "info");
  const char *name = check_cstring(L, 2, "info", "name");
  eng_st_info in;
  if (eng_safetensors_info(f, name, &in)) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 4);
  lua_pushstring(L, in.dtype);
  lua_setfield(L, -2, "dtype");
  lua_createtable(L, in.ndim, 0);
  for (int i = 0; i < in.ndim; i++) {
    lua_pushinteger(L, (lua_Integer)in.shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "shape");
  lua_createtable(L, 2, 0);
  push_u64(L, in.data_begin);
  lua_rawseti(L, -2, 1);
  push_u64(L, in.data_end);
  lua_rawseti(L, -2, 2);
  lua_setfield(L, -2, "data_offsets");
  lua_pushboolean(L, in.loadable);
  lua_setfield(L, -2, "loadable");
  return 1;
}

/* h:load(name[, dtype]) */
static int l_load(lua_State *L) {
  lua_settop(L, 3);
  eng_safetensors *f = check_handle(L, "load");
  const char *name = check_cstring(L, 2, "load", "name");
  eng_dtype dt = lb_opt_dtype(L, 3, "load", ENG_DTYPE_F32);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_safetensors_load(f, name, dt));
}

static int l_metadata(lua_State *L) {
  eng_safetensors *f = check_handle(L, "metadata");
  int n = eng_safetensors_metadata_count(f);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    const char *k = eng_safetensors_metadata_key(f, i);
    lua_pushstring(L, eng_safetensors_metadata_value(f, k));
    lua_setfield(L, -2, k);
  }
  return 1;
}

static int l_path(lua_State *L) {
  lua_pushstring(L, eng_safetensors_path(check_handle(L, "path")));
  return 1;
}

static int l_tostring(lua_State *L) {
  SBox *b = luaL_checkudata(L, 1, ST_MT);
  if (!b->f)
    lua_pushliteral(L, "safetensors (closed)");
  else
    lua_pushfstring(L, "safetensors %s (%d tensors)", eng_safetensors_path(b->f), eng_safetensors_count(b->f));
  return 1;
}

/* save(path, tensors, metadata?, dtype?) */
static int l_save(lua_State *L) {
  static const char op[] = "safetensors.save";
  lua_settop(L, 4);
  const char *path = check_cstring(L, 1, op, "path");
  if (!lua_istable(L, 2)) luaL_error(L, "%s: tensors must be a table of name -> tensor, got %s", op, lb_type_name(L, 2));
  if (!lua_isnil(L, 3) && !lua_istable(L, 3))
    luaL_error(L, "%s: metadata must be a table of strings, got %s", op, lb_type_name(L, 3));
  const char *dtype = lua_isnil(L, 4) ? NULL : check_cstring(L, 4, op, "dtype");

  /* count, then fill arrays that live in Lua-owned memory (nothing leaks on
   * a raised error); the strings stay alive in the tables */
  int n = 0, nmeta = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    if (n == INT32_MAX) luaL_error(L, "%s: too many tensors", op);
    n++;
  }
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pop(L, 1);
      if (nmeta == INT32_MAX) luaL_error(L, "%s: too many metadata entries", op);
      nmeta++;
    }
  }
  const char **names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
  eng_tensor **tensors = lua_newuserdatauv(L, sizeof(eng_tensor *) * (size_t)(n ? n : 1), 0);
  const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nmeta ? nmeta : 1), 0);
  const char **values = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nmeta ? nmeta : 1), 0);
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "%s: tensor names must be strings, got a %s key", op, luaL_typename(L, -2));
    if (i == n) luaL_error(L, "%s: the tensors table changed during the call", op);
    names[i] = check_cstring(L, -2, op, "a tensor name");
    if (!lb_is_tensor(L, -1))
      luaL_error(L, "%s: tensors['%s'] must be a tensor, got %s", op, names[i], lb_type_name(L, -1));
    tensors[i] = lb_check_tensor_what(L, -1, op, "a tensor");
    i++;
    lua_pop(L, 1);
  }
  int j = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "%s: metadata keys must be strings, got a %s key", op, luaL_typename(L, -2));
      if (j == nmeta) luaL_error(L, "%s: the metadata table changed during the call", op);
      keys[j] = check_cstring(L, -2, op, "a metadata key");
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s: metadata['%s'] must be a string, got %s", op, keys[j], lb_type_name(L, -1));
      values[j] = check_cstring(L, -1, op, "a metadata value");
      j++;
      lua_pop(L, 1);
    }
  }
  if (eng_safetensors_save_as(path, i, names, (eng_tensor *const *)tensors, j, keys, values, dtype)) {
    if (errno == EINVAL) return lb_raise_engine(L);
    lua_pushnil(L);
    lua_pushstring(L, eng_last_error());
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* write_atomic(path, string) */
static int l_write_atomic(lua_State *L) {
  lua_settop(L, 2);
  const char *path = check_cstring(L, 1, "write_atomic", "path");
  size_t len;
  if (lua_type(L, 2) != LUA_TSTRING)
    luaL_error(L, "write_atomic: contents must be a string, got %s", lb_type_name(L, 2));
  const char *s = lua_tolstring(L, 2, &len);
  if (eng_st_write_file_atomic(path, s, len)) {
    lua_pushnil(L);
    lua_pushstring(L, eng_last_error());
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg handle_methods[] = {
    {"names", l_names},       {"info", l_info}, {"load", l_load}, {"metadata", l_metadata},
    {"path", l_path},         {"close", l_close}, {NULL, NULL}};

static const luaL_Reg module_functions[] = {
    {"open", l_open}, {"save", l_save}, {"write_atomic", l_write_atomic}, {NULL, NULL}};

void binding_safetensors_open(lua_State *L) {
  int E = lua_gettop(L);
  luaL_newmetatable(L, ST_MT);
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, handle_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  luaL_newlib(L, module_functions);
  lua_setfield(L, E, "_safetensors");
  lua_settop(L, E);
}
