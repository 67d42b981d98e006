/* binding_tokenizer.c — the Lua binding of the engine's tokenizers.
 *
 * A tokenizer is a full userdata ("engine.Tokenizer") holding one
 * eng_tokenizer, freed by __gc (or tok:close()). Its methods are called
 * straight from the user's code, so an error names the user's line:
 *   tok:encode(text [, {add_special_tokens=, split_special_tokens=}]) -> {ids}
 *   tok:decode(ids [, {skip_special_tokens=}]) -> string  (ids: a table or
 *                                                        a 1-D tensor)
 *   tok:id(token) -> id | nil        tok:token(id) -> string | nil
 *   tok:is_special(id) -> boolean    tok:save(dir)    tok:close()
 * and its fields are read through __index: tok.vocab_size, tok.eos_id,
 * tok.bos_id, tok.pad_id (nil when absent). Ids are the 0-based vocabulary
 * ids. Lists are built in Lua-owned memory (the table, or a userdata
 * buffer for decode's ids) so that a raised error leaks nothing.
 * It adds E._tokenizer = {load = fn(dir), bytes = fn(specials, eos, bos,
 * pad)}; lua/engine/tokenizer.lua turns those into E.tokenizer.load and
 * E.tokenizer.bytes (missing files, option tables). */
#include "binding.h"

#include <math.h>
#include <string.h>

#define TOKENIZER_MT "engine.Tokenizer"

typedef struct {
  eng_tokenizer *t; /* NULL once closed */
} TokBox;

static TokBox *tok_box_new(lua_State *L) {
  TokBox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  luaL_setmetatable(L, TOKENIZER_MT);
  return b;
}

static eng_tokenizer *check_tok(lua_State *L, int idx, const char *op) {
  TokBox *b = luaL_testudata(L, idx, TOKENIZER_MT);
  if (!b) luaL_error(L, "%s: expected a tokenizer, got %s (call it as tok:%s(...))", op, lb_type_name(L, idx), op);
  if (!b->t) luaL_error(L, "%s: the tokenizer was closed", op);
  return b->t;
}

static int l_gc(lua_State *L) {
  TokBox *b = luaL_checkudata(L, 1, TOKENIZER_MT);
  if (b->t) {
    eng_tok_free(b->t);
    b->t = NULL;
  }
  return 0;
}

/* E._tokenizer.load(dir) */
static int l_load(lua_State *L) {
  lua_settop(L, 1);
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "tokenizer.load: dir must be a string, got %s", lb_type_name(L, 1));
  TokBox *b = tok_box_new(L);
  b->t = eng_tok_load(lua_tostring(L, 1));
  if (!b->t) return lb_raise_engine(L);
  return 1;
}

/* E._tokenizer.bytes(specials, eos, bos, pad): eos/bos/pad a string, or
 * false for none, or nil to guess */
static int l_bytes(lua_State *L) {
  lua_settop(L, 4);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 0 || n > 1000000) return luaL_error(L, "tokenizer.bytes: too many specials (%d)", (int)n);
  const char **specials = lua_newuserdatauv(L, sizeof *specials * (size_t)(n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "tokenizer.bytes: specials[%d] must be a string, got %s", (int)i, lb_type_name(L, -1));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len) return luaL_error(L, "tokenizer.bytes: specials[%d] holds a NUL byte", (int)i);
    specials[i - 1] = s; /* kept alive by the table at index 1 */
    lua_pop(L, 1);
  }
  const char *names[3];
  const char *what[3] = {"eos", "bos", "pad"};
  for (int i = 0; i < 3; i++) {
    int idx = 2 + i;
    if (lua_isnil(L, idx)) names[i] = NULL;
    else if (lua_isboolean(L, idx) && !lua_toboolean(L, idx)) names[i] = "";
    else if (lua_type(L, idx) == LUA_TSTRING) names[i] = lua_tostring(L, idx);
    else return luaL_error(L, "tokenizer.bytes: %s must be a string or false, got %s", what[i], lb_type_name(L, idx));
  }
  TokBox *b = tok_box_new(L);
  b->t = eng_tok_bytes(specials, (int)n, names[0], names[1], names[2]);
  if (!b->t) return lb_raise_engine(L);
  return 1;
}

static int opt_flag(lua_State *L, int opts, const char *key, const char *op) {
  lua_getfield(L, opts, key);
  int t = lua_type(L, -1);
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_error(L, "%s: option %s must be a boolean, got %s", op, key, lb_type_name(L, -1));
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int l_encode(lua_State *L) {
  lua_settop(L, 3);
  eng_tokenizer *t = check_tok(L, 1, "encode");
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "encode: text must be a string, got %s", lb_type_name(L, 2));
  static const char *const known[] = {"add_special_tokens", "split_special_tokens", NULL};
  eng_tok_encode_opts o = {0};
  if (lb_check_opts(L, 3, "encode", known)) {
    o.add_special_tokens = opt_flag(L, 3, "add_special_tokens", "encode");
    o.split_special_tokens = opt_flag(L, 3, "split_special_tokens", "encode");
  }
  size_t len;
  const char *text = lua_tolstring(L, 2, &len);
  const int32_t *ids;
  int64_t n = eng_tok_encode(t, text, len, &o, &ids);
  if (n < 0) return lb_raise_engine(L);
  /* ids live in t until the next call on t: nothing below calls it */
  lua_createtable(L, n > INT32_MAX ? INT32_MAX : (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_decode(lua_State *L) {
  lua_settop(L, 3);
  eng_tokenizer *t = check_tok(L, 1, "decode");
  static const char *const known[] = {"skip_special_tokens", NULL};
  int skip = 0;
  if (lb_check_opts(L, 3, "decode", known)) skip = opt_flag(L, 3, "skip_special_tokens", "decode");
  size_t n;
  int64_t *ids;
  if (lb_is_tensor(L, 2)) {
    eng_tensor *x = lb_check_tensor(L, 2, "decode");
    if (eng_tensor_ndim(x) > 1)
      return luaL_error(L, "decode: ids must be a table or a 1-D tensor, got a tensor of %d dims", eng_tensor_ndim(x));
    n = (size_t)eng_tensor_numel(x);
    ids = lua_newuserdatauv(L, sizeof *ids * (n ? n : 1), 0);
    for (size_t i = 0; i < n; i++) {
      double v = eng_tensor_get_flat(x, (int64_t)i);
      if (!(fabs(v) < 9.2e18) || v != floor(v))
        return luaL_error(L, "decode: ids[%d] must be an integer, got %g", (int)i + 1, v);
      ids[i] = (int64_t)v;
    }
  } else if (lua_istable(L, 2)) {
    n = (size_t)luaL_len(L, 2);
    ids = lua_newuserdatauv(L, sizeof *ids * (n ? n : 1), 0);
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, 2, (lua_Integer)i + 1);
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      if (!isint || lua_type(L, -1) != LUA_TNUMBER) {
        if (lua_type(L, -1) == LUA_TNUMBER)
          return luaL_error(L, "decode: ids[%d] must be an integer, got %s", (int)i + 1, lua_tostring(L, -1));
        return luaL_error(L, "decode: ids[%d] must be an integer, got %s", (int)i + 1, lb_type_name(L, -1));
      }
      ids[i] = (int64_t)v;
      lua_pop(L, 1);
    }
  } else {
    return luaL_error(L, "decode: ids must be a table or a 1-D tensor, got %s", lb_type_name(L, 2));
  }
  size_t len;
  const char *s = eng_tok_decode(t, ids, n, skip, &len);
  if (!s) return lb_raise_engine(L);
  lua_pushlstring(L, s, len);
  return 1;
}

static int l_id(lua_State *L) {
  lua_settop(L, 2);
  eng_tokenizer *t = check_tok(L, 1, "id");
  if (lua_type(L, 2) != LUA_TSTRING) return luaL_error(L, "id: token must be a string, got %s", lb_type_name(L, 2));
  size_t len;
  const char *s = lua_tolstring(L, 2, &len);
  int64_t id = eng_tok_id(t, s, len);
  if (id < 0) lua_pushnil(L);
  else lua_pushinteger(L, id);
  return 1;
}

static lua_Integer check_id(lua_State *L, int idx, const char *op) {
  int isint;
  lua_Integer id = lua_tointegerx(L, idx, &isint);
  if (!isint || lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: id must be an integer, got %s", op,
               lua_type(L, idx) == LUA_TNUMBER ? lua_tostring(L, idx) : lb_type_name(L, idx));
  return id;
}

static int l_token(lua_State *L) {
  lua_settop(L, 2);
  eng_tokenizer *t = check_tok(L, 1, "token");
  size_t len;
  const char *s = eng_tok_token(t, check_id(L, 2, "token"), &len);
  if (!s) lua_pushnil(L);
  else lua_pushlstring(L, s, len);
  return 1;
}

static int l_is_special(lua_State *L) {
  lua_settop(L, 2);
  eng_tokenizer *t = check_tok(L, 1, "is_special");
  lua_pushboolean(L, eng_tok_is_special(t, check_id(L, 2, "is_special")));
  return 1;
}

static int l_save(lua_State *L) {
  lua_settop(L, 2);
  eng_tokenizer *t = check_tok(L, 1, "save");
  if (lua_type(L, 2) != LUA_TSTRING) return luaL_error(L, "save: dir must be a string, got %s", lb_type_name(L, 2));
  if (eng_tok_save(t, lua_tostring(L, 2))) return lb_raise_engine(L);
  return 0;
}

static int l_close(lua_State *L) {
  luaL_checkudata(L, 1, TOKENIZER_MT);
  return l_gc(L);
}

static void push_id_or_nil(lua_State *L, int64_t id) {
  if (id < 0) lua_pushnil(L);
  else lua_pushinteger(L, id);
}

/* __index: methods first, then the fields */
static int l_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k) return 0;
  TokBox *b = luaL_checkudata(L, 1, TOKENIZER_MT);
  if (!b->t) return luaL_error(L, "%s: the tokenizer was closed", k);
  if (!strcmp(k, "vocab_size")) lua_pushinteger(L, eng_tok_vocab_size(b->t));
  else if (!strcmp(k, "eos_id")) push_id_or_nil(L, eng_tok_eos_id(b->t));
  else if (!strcmp(k, "bos_id")) push_id_or_nil(L, eng_tok_bos_id(b->t));
  else if (!strcmp(k, "pad_id")) push_id_or_nil(L, eng_tok_pad_id(b->t));
  else lua_pushnil(L);
  return 1;
}

static int l_tostring(lua_State *L) {
  TokBox *b = luaL_checkudata(L, 1, TOKENIZER_MT);
  if (!b->t) lua_pushliteral(L, "Tokenizer(closed)");
  else lua_pushfstring(L, "Tokenizer(vocab_size=%d)", (int)eng_tok_vocab_size(b->t));
  return 1;
}

static const luaL_Reg methods[] = {
    {"encode", l_encode}, {"decode", l_decode},         {"id", l_id},     {"token", l_token},
    {"is_special", l_is_special}, {"save", l_save}, {"close", l_close}, {NULL, NULL}};

void binding_tokenizer_open(lua_State *L) {
  int E = lua_gettop(L);
  luaL_newmetatable(L, TOKENIZER_MT);
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, methods);
  lua_pushcclosure(L, l_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_load);
  lua_setfield(L, -2, "load");
  lua_pushcfunction(L, l_bytes);
  lua_setfield(L, -2, "bytes");
  lua_setfield(L, E, "_tokenizer");
  lua_settop(L, E);
}
