/* binding.c — the Lua 5.4 binding of the engine: the one C file that
 * includes lua.h.
 *
 * What it does: tensors become full userdata boxes ("engine.Tensor") holding
 * one reference, released by __gc, __close and x:release() alike; arguments
 * are checked and converted (1-based dims and positions, nested tables,
 * Lua numbers in operators); engine failures become Lua errors carrying
 * eng_last_error(). Every function creates its Lua-owned result box before
 * calling the engine, and every temporary tensor it makes lives in a box
 * too, so a raised error leaks nothing. Functions of fixed arity start with
 * lua_settop, so the temporaries they push never pose as arguments.
 * luaopen_engine builds the module table, registers it in package.loaded,
 * puts ENGINE_LUA_DIR on package.path and lets lua/engine/api.lua add the
 * Lua-side pieces.
 *
 * Conventions seen from Lua: dims are 1-based (negative from the end);
 * x:narrow's start, x:gather's index values and x:max(dim)'s positions are
 * 1-based; vocabulary ids (embedding, cross_entropy, token_logprobs) are
 * the 0-based ids themselves. x:requires_grad(on) sets and returns x,
 * x:requires_grad() reads the flag. Index-like arguments may be nested
 * tables. Tensors of large memory make the binding run Lua's collector
 * when the engine's live bytes grow (gc_pressure), as Lua cannot see them.
 *
 * What it does not do: arithmetic (all of that is the engine's), or anything
 * that reads better in Lua (no_grad, gradcheck, the runner, models).
 *
 * Sections: boxes and errors · argument readers · nested tables · creation
 * · reading · autodiff · math · reductions · shape · linear algebra and
 * transformer ops · generators · threads and memory · metatables and
 * luaopen_engine. */
#include "binding.h"

#include <lualib.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#ifndef ENGINE_LUA_DIR
#error "ENGINE_LUA_DIR (the directory holding engine/api.lua) must be defined"
#endif


/* ======================================================================
 * Boxes and errors
 * ====================================================================== */

typedef struct {
  eng_rng *r;
  int owned; /* 0 for the process-wide default generator */
} GBox;

/* raise the engine's last error as a Lua error (position of the Lua caller
 * in front, as luaL_error does) */
int lb_raise_engine(lua_State *L) { return luaL_error(L, "%s", eng_last_error()); }

/* a type name for messages: "tensor" and "generator" for ours */
const char *lb_type_name(lua_State *L, int idx) {
  if (lua_isnone(L, idx)) return "no value";
  if (luaL_testudata(L, idx, TENSOR_MT)) return "tensor";
  if (luaL_testudata(L, idx, GENERATOR_MT)) return "generator";
  return luaL_typename(L, idx);
}

/* push an empty tensor box (filled after the engine call succeeds) */
TBox *lb_box_new(lua_State *L) {
  TBox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  luaL_setmetatable(L, TENSOR_MT);
  return b;
}

void lb_box_release(TBox *b) {
  if (b && b->t) {
    eng_tensor *t = b->t;
    b->t = NULL;
    eng_tensor_release(t);
  }
}

/* Lua's collector sees only the small boxes, not the tensor memory behind
 * them; so each new result counts as an allocation of its size: a
 * collector step "as if that many KB had been allocated". Unreachable boxes
 * (last step's activations) are then released about as fast as new ones
 * are made, and the pool hands their memory straight back. */
/* Lua sees a tensor box as a few bytes: tell its collector how much engine
 * memory was allocated since the last result, so that garbage boxes (and
 * their storage) are collected at the pace memory is used. Views and
 * results that reuse a freed block add nothing. When the incremental steps
 * fall behind (a large Lua heap takes long to traverse) and live engine
 * memory passes 1.5x what a full collection last left + 128 MiB, run a full
 * collection: garbage then stays within a bound of the live memory. */
static void gc_pressure(lua_State *L, eng_tensor *r) {
  static size_t last_in_use, after_full;
  (void)r;
  eng_memory_stats st;
  eng_memory_get_stats(&st);
  size_t grown = st.bytes_in_use > last_in_use ? st.bytes_in_use - last_in_use : 0;
  last_in_use = st.bytes_in_use;
  if (grown < 4096 || !lua_gc(L, LUA_GCISRUNNING)) return;
  if (st.bytes_in_use > after_full + after_full / 2 + ((size_t)128 << 20)) {
    lua_gc(L, LUA_GCCOLLECT);
    eng_memory_get_stats(&st);
    after_full = last_in_use = st.bytes_in_use;
    return;
  }
  size_t kb = grown >> 10;
  lua_gc(L, LUA_GCSTEP, kb > INT32_MAX ? INT32_MAX : (int)kb);
}

/* fill the result box on top of the stack, or raise the engine's error */
int lb_finish(lua_State *L, TBox *out, eng_tensor *r) {
  if (!r) return lb_raise_engine(L);
  out->t = r;
  gc_pressure(L, r);
  return 1;
}

int lb_is_tensor(lua_State *L, int idx) { return luaL_testudata(L, idx, TENSOR_MT) != NULL; }

eng_tensor *lb_check_tensor_what(lua_State *L, int idx, const char *op, const char *what) {
  TBox *b = luaL_testudata(L, idx, TENSOR_MT);
  if (!b) {
    if (what) luaL_error(L, "%s: %s must be a tensor, got %s", op, what, lb_type_name(L, idx));
    luaL_error(L, "%s: expected a tensor, got %s", op, lb_type_name(L, idx));
  }
  if (!b->t) luaL_error(L, "%s: tensor was released (closed or collected)", op);
  return b->t;
}

eng_tensor *lb_check_tensor(lua_State *L, int idx, const char *op) {
  return lb_check_tensor_what(L, idx, op, NULL);
}

/* a tensor, or nil / none for "not given" */
eng_tensor *lb_opt_tensor(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_isnoneornil(L, idx)) return NULL;
  return lb_check_tensor_what(L, idx, op, what);
}

static const char *shape_of(eng_tensor *t, char *buf, size_t len) { return eng_shape_str(t, buf, len); }

/* ======================================================================
 * Argument readers
 * ====================================================================== */

lua_Number lb_check_num(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: %s must be a number, got %s", op, what, lb_type_name(L, idx));
  return lua_tonumber(L, idx);
}

lua_Number lb_opt_num(lua_State *L, int idx, const char *op, const char *what, lua_Number def) {
  return lua_isnoneornil(L, idx) ? def : lb_check_num(L, idx, op, what);
}

lua_Integer lb_check_int(lua_State *L, int idx, const char *op, const char *what) {
  int ok = 0;
  lua_Integer v = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) v = lua_tointegerx(L, idx, &ok);
  if (!ok) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      luaL_error(L, "%s: %s must be an integer, got %f", op, what, lua_tonumber(L, idx));
    luaL_error(L, "%s: %s must be an integer, got %s", op, what, lb_type_name(L, idx));
  }
  return v;
}

int lb_opt_bool(lua_State *L, int idx, const char *op, const char *what, int def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (!lua_isboolean(L, idx))
    luaL_error(L, "%s: %s must be a boolean, got %s", op, what, lb_type_name(L, idx));
  return lua_toboolean(L, idx);
}

/* "float32" / "float64" (also "float" / "double"); nil gives def */
eng_dtype lb_opt_dtype(lua_State *L, int idx, const char *op, eng_dtype def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: dtype must be a string (\"float32\" or \"float64\"), got %s", op, lb_type_name(L, idx));
  const char *s = lua_tostring(L, idx);
  if (!strcmp(s, "float32") || !strcmp(s, "float")) return ENG_DTYPE_F32;
  if (!strcmp(s, "float64") || !strcmp(s, "double")) return ENG_DTYPE_F64;
  luaL_error(L, "%s: unknown dtype '%s' (use \"float32\" or \"float64\")", op, s);
  return def;
}

/* an options table: nil / none, or a table whose keys are all in `known` */
int lb_check_opts(lua_State *L, int idx, const char *op, const char *const *known) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: options must be a table, got %s", op, lb_type_name(L, idx));
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int found = 0;
    if (lua_type(L, -1) == LUA_TSTRING)
      for (int i = 0; known[i] && !found; i++) found = !strcmp(lua_tostring(L, -1), known[i]);
    if (!found) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; known[i]; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, known[i]);
      }
      luaL_pushresult(&b);
      const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : luaL_typename(L, -2);
      luaL_error(L, "%s: unknown option '%s' (the options are %s)", op, key, lua_tostring(L, -1));
    }
  }
  return 1;
}

/* push opts[key] (nil when there are no opts) and return its absolute index */
int lb_opt_field(lua_State *L, int opts_idx, const char *key) {
  if (lua_istable(L, opts_idx))
    lua_getfield(L, opts_idx, key);
  else
    lua_pushnil(L);
  return lua_gettop(L);
}

/* A shape: a table of sizes, or (when allow_varargs) the integers from idx
 * to the top of the stack. -1 entries allowed when allow_infer. */
int lb_read_shape(lua_State *L, int idx, const char *op, int64_t *shape, int allow_infer,
                      int allow_varargs) {
  if (allow_varargs && lua_type(L, idx) == LUA_TNUMBER) {
    int top = lua_gettop(L), n = top - idx + 1;
    if (n > ENG_MAX_DIMS) luaL_error(L, "%s: shape has %d dims; at most %d are supported", op, n, ENG_MAX_DIMS);
    for (int i = 0; i < n; i++) {
      lua_Integer v = lb_check_int(L, idx + i, op, "a size");
      if (v < 0 && !(allow_infer && v == -1))
        luaL_error(L, "%s: size %I at position %d is negative", op, v, i + 1);
      shape[i] = v;
    }
    return n;
  }
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: shape must be a table of sizes such as {2, 3}, got %s", op, lb_type_name(L, idx));
  lua_Unsigned n = lua_rawlen(L, idx);
  if (n > ENG_MAX_DIMS)
    luaL_error(L, "%s: shape has %d dims; at most %d are supported", op, (int)n, ENG_MAX_DIMS);
  for (int i = 0; i < (int)n; i++) {
    lua_rawgeti(L, idx, i + 1);
    int ok = 0;
    lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
    if (!ok) luaL_error(L, "%s: shape entry %d is %s, not an integer size", op, i + 1, luaL_tolstring(L, -1, NULL));
    if (v < 0 && !(allow_infer && v == -1))
      luaL_error(L, "%s: shape entry %d is %I; sizes must be >= 0", op, i + 1, v);
    shape[i] = v;
    lua_pop(L, 1);
  }
  return (int)n;
}

/* a 1-based (or negative, from the end) Lua dim -> 0-based C dim */
static int dim_value(lua_State *L, lua_Integer d, const char *op, eng_tensor *x) {
  int n = eng_tensor_ndim(x);
  if (d >= 1 && d <= n) return (int)d - 1;
  if (d < 0 && d >= -n) return n + (int)d;
  char buf[128];
  if (n == 0)
    luaL_error(L, "%s: dim %I is out of range for a tensor of shape [] (a 0-dim tensor has no dims)", op, d);
  luaL_error(L, "%s: dim %I is out of range for a tensor of shape %s (dims are 1..%d, or -%d..-1 from the end)",
             op, d, shape_of(x, buf, sizeof buf), n, n);
  return 0;
}

int lb_check_dim(lua_State *L, int idx, const char *op, eng_tensor *x) {
  return dim_value(L, lb_check_int(L, idx, op, "dim"), op, x);
}

/* nil -> ENG_ALL_DIMS */
static int opt_dim_all(lua_State *L, int idx, const char *op, eng_tensor *x) {
  return lua_isnoneornil(L, idx) ? ENG_ALL_DIMS : lb_check_dim(L, idx, op, x);
}

/* ======================================================================
 * Nested tables <-> tensors
 * ====================================================================== */

static void path_str(char *buf, size_t len, const int64_t *path, int depth) {
  size_t n = 0;
  buf[n++] = '[';
  buf[n] = 0;
  for (int i = 0; i < depth && n + 24 < len; i++)
    n += (size_t)snprintf(buf + n, len - n, i ? ",%lld" : "%lld", (long long)path[i]);
  snprintf(buf + n, len - n, "]");
}

/* "a number", "a string", "nil", ... for messages */
static const char *a_type(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return "nil";
    case LUA_TBOOLEAN: return "a boolean";
    case LUA_TNUMBER: return "a number";
    case LUA_TSTRING: return "a string";
    case LUA_TTABLE: return "a table";
    case LUA_TFUNCTION: return "a function";
    default: return lb_is_tensor(L, idx) ? "a tensor" : "a userdata";
  }
}

/* fill vals from the nested table at idx, checking it is rectangular */
static void fill_nested(lua_State *L, int idx, const char *op, int depth, int ndim, const int64_t *shape,
                        double *vals, int64_t *pos, int64_t *path) {
  char where[160];
  if (depth == ndim) {
    if (lua_type(L, idx) != LUA_TNUMBER) {
      path_str(where, sizeof where, path, depth);
      if (lua_istable(L, idx))
        luaL_error(L, "%s: ragged nested table: entry %s is a table, expected a number", op, where);
      luaL_error(L, "%s: entry %s is %s, not a number", op, where, a_type(L, idx));
    }
    vals[(*pos)++] = lua_tonumber(L, idx);
    return;
  }
  if (!lua_istable(L, idx)) {
    path_str(where, sizeof where, path, depth);
    luaL_error(L, "%s: ragged nested table: entry %s is %s, expected a table of length %I", op, where,
               a_type(L, idx), (lua_Integer)shape[depth]);
  }
  lua_Unsigned n = lua_rawlen(L, idx);
  if ((int64_t)n != shape[depth]) {
    path_str(where, sizeof where, path, depth);
    luaL_error(L, "%s: ragged nested table: row %s has length %I, expected %I", op, where, (lua_Integer)n,
               (lua_Integer)shape[depth]);
  }
  luaL_checkstack(L, 2, "nested table");
  for (int64_t i = 0; i < shape[depth]; i++) {
    path[depth] = i + 1;
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    fill_nested(L, lua_gettop(L), op, depth + 1, ndim, shape, vals, pos, path);
    lua_pop(L, 1);
  }
}

/* Push a box holding a new tensor made from the number or nested table at
 * idx. The shape comes from the first entries; fill_nested checks the rest. */
TBox *lb_push_table_tensor(lua_State *L, int idx, const char *op, eng_dtype dt) {
  idx = lua_absindex(L, idx);
  int64_t shape[ENG_MAX_DIMS];
  int ndim = 0;
  int64_t numel = 1;
  lua_pushvalue(L, idx);
  while (lua_istable(L, -1)) {
    if (ndim == ENG_MAX_DIMS)
      luaL_error(L, "%s: the nested table is more than %d levels deep", op, ENG_MAX_DIMS);
    lua_Unsigned n = lua_rawlen(L, -1);
    shape[ndim++] = (int64_t)n;
    if (n > ((lua_Unsigned)1 << 40) || (n && numel > ((int64_t)1 << 40) / (int64_t)n))
      luaL_error(L, "%s: the nested table is too large", op);
    numel *= (int64_t)n;
    if (n == 0) break;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  double *vals = lua_newuserdatauv(L, sizeof(double) * (size_t)(numel ? numel : 1), 0);
  int64_t pos = 0, path[ENG_MAX_DIMS] = {0};
  fill_nested(L, idx, op, 0, ndim, shape, vals, &pos, path);
  TBox *b = lb_box_new(L);
  b->t = eng_from_doubles(dt, ndim, shape, vals);
  if (!b->t) lb_raise_engine(L);
  lua_remove(L, -2); /* the value buffer */
  return b;
}

/* A tensor argument that may also be a nested table of numbers (converted
 * in dt). A converted one is boxed in *temp; release it after the call. */
eng_tensor *lb_tensor_or_table(lua_State *L, int idx, const char *op, const char *what, eng_dtype dt,
                                   TBox **temp) {
  *temp = NULL;
  if (lua_istable(L, idx)) {
    *temp = lb_push_table_tensor(L, idx, op, dt);
    return (*temp)->t;
  }
  if (!lb_is_tensor(L, idx))
    luaL_error(L, "%s: %s must be a tensor or a nested table of numbers, got %s", op, what, lb_type_name(L, idx));
  return lb_check_tensor_what(L, idx, op, what);
}

static void push_nested(lua_State *L, eng_tensor *t, int d, int64_t base) {
  int nd = eng_tensor_ndim(t);
  if (d == nd) {
    lua_pushnumber(L, eng_tensor_get_flat(t, base));
    return;
  }
  const int64_t *shape = eng_tensor_shape(t);
  int64_t inner = 1;
  for (int i = d + 1; i < nd; i++) inner *= shape[i];
  luaL_checkstack(L, 3, "totable");
  lua_createtable(L, shape[d] > 1 << 26 ? 0 : (int)shape[d], 0);
  for (int64_t i = 0; i < shape[d]; i++) {
    push_nested(L, t, d + 1, base + i * inner);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static void add_number(luaL_Buffer *B, double v) {
  char buf[64];
  if (isnan(v))
    snprintf(buf, sizeof buf, "nan");
  else if (isinf(v))
    snprintf(buf, sizeof buf, v > 0 ? "inf" : "-inf");
  else
    snprintf(buf, sizeof buf, "%.6g", v);
  luaL_addstring(B, buf);
}

/* {a, b, ...}; with summarize, dims longer than 2*edge show their first
 * and last `edge` entries around "..." */
static void add_nested(luaL_Buffer *B, eng_tensor *t, int d, int64_t base, int summarize, int64_t edge) {
  int nd = eng_tensor_ndim(t);
  if (d == nd) {
    add_number(B, eng_tensor_get_flat(t, base));
    return;
  }
  const int64_t *shape = eng_tensor_shape(t);
  int64_t inner = 1;
  for (int i = d + 1; i < nd; i++) inner *= shape[i];
  luaL_addchar(B, '{');
  int64_t n = shape[d];
  for (int64_t i = 0; i < n; i++) {
    if (i) luaL_addstring(B, ", ");
    if (summarize && n > 2 * edge && i == edge) {
      luaL_addstring(B, "..., ");
      i = n - edge;
    }
    add_nested(B, t, d + 1, base + i * inner, summarize, edge);
  }
  luaL_addchar(B, '}');
}

/* ======================================================================
 * Creation
 * ====================================================================== */

/* E.tensor(nested_table_or_number_or_tensor [, dtype]) -> a new leaf */
static int l_tensor(lua_State *L) {
  lua_settop(L, 2);
  eng_dtype dt = lb_opt_dtype(L, 2, "tensor", ENG_DTYPE_F32);
  if (lb_is_tensor(L, 1)) { /* a copy, cut from the graph */
    eng_tensor *src = lb_check_tensor(L, 1, "tensor");
    TBox *out = lb_box_new(L);
    eng_tensor *r = eng_empty(lua_isnoneornil(L, 2) ? eng_tensor_dtype(src) : dt, eng_tensor_ndim(src),
                              eng_tensor_shape(src));
    if (r && eng_copy_(r, src)) {
      eng_tensor_release(r);
      r = NULL;
    }
    return lb_finish(L, out, r);
  }
  if (lua_type(L, 1) != LUA_TNUMBER && !lua_istable(L, 1))
    luaL_error(L, "tensor: expected a nested table of numbers, a number or a tensor, got %s", lb_type_name(L, 1));
  lb_push_table_tensor(L, 1, "tensor", dt);
  return 1;
}

/* E.zeros(shape, dtype?), E.ones(shape, dtype?), E.full(shape, v, dtype?) */
static int fill_op(lua_State *L, const char *op, int have_value, double v) {
  lua_settop(L, 3);
  int64_t shape[ENG_MAX_DIMS];
  int nd = lb_read_shape(L, 1, op, shape, 0, 0);
  if (have_value) v = lb_check_num(L, 2, op, "value");
  eng_dtype dt = lb_opt_dtype(L, have_value ? 3 : 2, op, ENG_DTYPE_F32);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_full(dt, nd, shape, v));
}
static int l_zeros(lua_State *L) { return fill_op(L, "zeros", 0, 0.0); }
static int l_ones(lua_State *L) { return fill_op(L, "ones", 0, 1.0); }
static int l_full(lua_State *L) { return fill_op(L, "full", 1, 0.0); }

static GBox *check_gen(lua_State *L, int idx, const char *op);

/* The generator for a random op from an argument: nil (the default
 * generator), a Generator, or a table {seed=, generator=} (plus the op's
 * other keys). A seed makes a temporary generator, boxed so it is freed. */
static eng_rng *rng_arg(lua_State *L, int idx, const char *op) {
  if (lua_isnoneornil(L, idx)) return eng_default_rng();
  if (luaL_testudata(L, idx, GENERATOR_MT)) return check_gen(L, idx, op)->r;
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: expected a generator or an options table, got %s", op, lb_type_name(L, idx));
  int g = lb_opt_field(L, idx, "generator");
  int s = lb_opt_field(L, idx, "seed");
  if (!lua_isnil(L, g) && !lua_isnil(L, s)) luaL_error(L, "%s: give either seed or generator, not both", op);
  if (!lua_isnil(L, g)) return check_gen(L, g, op)->r;
  if (lua_isnil(L, s)) return eng_default_rng();
  lua_Integer seed = lb_check_int(L, s, op, "seed");
  GBox *tmp = lua_newuserdatauv(L, sizeof *tmp, 0);
  tmp->r = NULL;
  tmp->owned = 1;
  luaL_setmetatable(L, GENERATOR_MT);
  tmp->r = eng_rng_new((uint64_t)seed);
  if (!tmp->r) lb_raise_engine(L);
  return tmp->r;
}

static int random_op(lua_State *L, const char *op, int normal) {
  lua_settop(L, 2);
  static const char *const known[] = {"seed", "dtype", "generator", NULL};
  int64_t shape[ENG_MAX_DIMS];
  int nd = lb_read_shape(L, 1, op, shape, 0, 0);
  eng_dtype dt = ENG_DTYPE_F32;
  if (lua_istable(L, 2)) {
    lb_check_opts(L, 2, op, known);
    dt = lb_opt_dtype(L, lb_opt_field(L, 2, "dtype"), op, ENG_DTYPE_F32);
  }
  eng_rng *rng = rng_arg(L, 2, op);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, normal ? eng_randn(rng, dt, nd, shape) : eng_rand(rng, dt, nd, shape));
}
static int l_randn(lua_State *L) { return random_op(L, "randn", 1); }
static int l_rand(lua_State *L) { return random_op(L, "rand", 0); }

static int l_arange(lua_State *L) {
  lua_settop(L, 2);
  lua_Integer n = lb_check_int(L, 1, "arange", "n");
  eng_dtype dt = lb_opt_dtype(L, 2, "arange", ENG_DTYPE_F32);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_arange(dt, n));
}

/* ======================================================================
 * Reading
 * ====================================================================== */

static int l_shape(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "shape");
  int nd = eng_tensor_ndim(x);
  const int64_t *s = eng_tensor_shape(x);
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, s[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* x:size(dim) -> the size of one dim */
static int l_size(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "size");
  int d = lb_check_dim(L, 2, "size", x);
  lua_pushinteger(L, eng_tensor_shape(x)[d]);
  return 1;
}

static int l_dim(lua_State *L) {
  lua_pushinteger(L, eng_tensor_ndim(lb_check_tensor(L, 1, "dim")));
  return 1;
}

static int l_numel(lua_State *L) {
  lua_pushinteger(L, eng_tensor_numel(lb_check_tensor(L, 1, "numel")));
  return 1;
}

static int l_item(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "item");
  int64_t n = eng_tensor_numel(x);
  if (n != 1) {
    char buf[128];
    luaL_error(L, "item: tensor has %I elements %s; item() needs exactly one", (lua_Integer)n,
               shape_of(x, buf, sizeof buf));
  }
  lua_pushnumber(L, eng_tensor_get_flat(x, 0));
  return 1;
}

/* nested tables of numbers; a 0-dim tensor gives a number */
static int l_totable(lua_State *L) {
  push_nested(L, lb_check_tensor(L, 1, "totable"), 0, 0);
  return 1;
}

static int l_dtype(lua_State *L) {
  lua_pushstring(L, eng_dtype_name(eng_tensor_dtype(lb_check_tensor(L, 1, "dtype"))));
  return 1;
}

static int l_is_contiguous(lua_State *L) {
  lua_pushboolean(L, eng_tensor_is_contiguous(lb_check_tensor(L, 1, "is_contiguous")));
  return 1;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, lb_is_tensor(L, 1));
  return 1;
}

/* tensor(float32, [2,3]) {{1, 2, 3}, {4, 5, 6}}; large ones abbreviated */
static int l_tostring(lua_State *L) {
  TBox *b = luaL_checkudata(L, 1, TENSOR_MT);
  if (!b->t) {
    lua_pushliteral(L, "tensor(released)");
    return 1;
  }
  eng_tensor *t = b->t;
  char buf[160];
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  luaL_addstring(&B, "tensor(");
  luaL_addstring(&B, eng_dtype_name(eng_tensor_dtype(t)));
  luaL_addstring(&B, ", ");
  luaL_addstring(&B, shape_of(t, buf, sizeof buf));
  if (!eng_is_leaf(t)) {
    luaL_addstring(&B, ", grad_fn=");
    luaL_addstring(&B, eng_grad_fn_name(t));
  } else if (eng_requires_grad(t)) {
    luaL_addstring(&B, ", requires_grad");
  }
  luaL_addstring(&B, ") ");
  int summarize = eng_tensor_numel(t) > 1000;
  add_nested(&B, t, 0, 0, summarize, eng_tensor_ndim(t) <= 4 ? 3 : 1);
  luaL_pushresult(&B);
  return 1;
}

/* #x: the size of the first dim */
static int l_len(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "len");
  if (eng_tensor_ndim(x) == 0) luaL_error(L, "len: a 0-dim tensor has no length");
  lua_pushinteger(L, eng_tensor_shape(x)[0]);
  return 1;
}

/* __gc, __close and x:release(): drop the box's reference (idempotent) */
static int l_release(lua_State *L) {
  lb_box_release(luaL_checkudata(L, 1, TENSOR_MT));
  return 0;
}

/* ======================================================================
 * Autodiff
 * ====================================================================== */

/* x:requires_grad(true|false) sets the flag (leaves only) and returns x;
 * x:requires_grad() returns the flag */
static int l_requires_grad(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "requires_grad");
  if (lua_isnone(L, 2)) {
    lua_pushboolean(L, eng_requires_grad(x));
    return 1;
  }
  if (!lua_isboolean(L, 2)) luaL_error(L, "requires_grad: expected true or false, got %s", lb_type_name(L, 2));
  if (eng_set_requires_grad(x, lua_toboolean(L, 2))) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

static int l_backward(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "backward");
  eng_tensor *g = lb_opt_tensor(L, 2, "backward", "grad");
  if (g && eng_tensor_dtype(g) != eng_tensor_dtype(x))
    luaL_error(L, "backward: grad is %s but the tensor is %s", eng_dtype_name(eng_tensor_dtype(g)),
               eng_dtype_name(eng_tensor_dtype(x)));
  if (eng_backward(x, g)) lb_raise_engine(L);
  return 0;
}

static int l_detach(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "detach");
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_detach(x));
}

static int l_is_leaf(lua_State *L) {
  lua_pushboolean(L, eng_is_leaf(lb_check_tensor(L, 1, "is_leaf")));
  return 1;
}

/* the name of the op that made x ("leaf" for leaves) */
static int l_grad_fn(lua_State *L) {
  lua_pushstring(L, eng_grad_fn_name(lb_check_tensor(L, 1, "grad_fn")));
  return 1;
}

static int l_grad_enabled(lua_State *L) {
  lua_pushboolean(L, eng_grad_enabled());
  return 1;
}

/* E.set_grad_enabled(on) -> the previous setting */
static int l_set_grad_enabled(lua_State *L) {
  if (!lua_isboolean(L, 1)) luaL_error(L, "set_grad_enabled: expected true or false, got %s", lb_type_name(L, 1));
  lua_pushboolean(L, eng_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

/* x.grad: a tensor or nil */
static void push_grad(lua_State *L, eng_tensor *x) {
  eng_tensor *g = eng_grad(x);
  if (!g) {
    lua_pushnil(L);
    return;
  }
  TBox *b = lb_box_new(L);
  b->t = eng_tensor_retain(g);
}

/* x.grad = g (same shape and dtype) or nil */
static void set_grad(lua_State *L, eng_tensor *x, int vidx) {
  eng_tensor *g = lua_isnil(L, vidx) ? NULL : lb_check_tensor_what(L, vidx, "grad", "the new grad");
  if (eng_set_grad(x, g)) lb_raise_engine(L);
}

/* ======================================================================
 * Math
 * ====================================================================== */

typedef eng_tensor *(*unary_fn)(eng_tensor *);
typedef eng_tensor *(*binary_fn)(eng_tensor *, eng_tensor *);

static int unary_op(lua_State *L, const char *op, unary_fn fn) {
  eng_tensor *x = lb_check_tensor(L, 1, op);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, fn(x));
}

#define UNARY(NAME)                                                            \
  static int l_##NAME(lua_State *L) { return unary_op(L, #NAME, eng_##NAME); }
UNARY(neg)
UNARY(exp)
UNARY(log)
UNARY(sigmoid)
UNARY(logsigmoid)
UNARY(relu)
UNARY(tanh)
UNARY(sqrt)
UNARY(abs)
UNARY(gelu)
UNARY(silu)

/* the unary minus metamethod gets (x, x) */
static int l_unm(lua_State *L) {
  lua_settop(L, 1);
  return unary_op(L, "neg", eng_neg);
}

static void check_operand(lua_State *L, int idx, const char *op) {
  if (!lb_is_tensor(L, idx) && lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: expected a tensor or a number, got %s", op, lb_type_name(L, idx));
}

/* the operand at idx as a tensor: itself, or a boxed 0-dim tensor in
 * like's dtype for a Lua number */
static eng_tensor *operand(lua_State *L, int idx, const char *op, eng_tensor *like, TBox **temp) {
  *temp = NULL;
  if (lb_is_tensor(L, idx)) return lb_check_tensor(L, idx, op);
  lua_Number v = lua_tonumber(L, idx);
  *temp = lb_box_new(L);
  (*temp)->t = eng_scalar_like(like, v);
  if (!(*temp)->t) lb_raise_engine(L);
  return (*temp)->t;
}

/* a op b with broadcasting; either may be a Lua number */
static int binary_op(lua_State *L, const char *op, binary_fn fn) {
  lua_settop(L, 2);
  check_operand(L, 1, op);
  check_operand(L, 2, op);
  if (!lb_is_tensor(L, 1) && !lb_is_tensor(L, 2)) luaL_error(L, "%s: expected at least one tensor, got two numbers", op);
  eng_tensor *like = lb_check_tensor(L, lb_is_tensor(L, 1) ? 1 : 2, op);
  TBox *ta, *tb;
  eng_tensor *a = operand(L, 1, op, like, &ta);
  eng_tensor *b = operand(L, 2, op, like, &tb);
  TBox *out = lb_box_new(L);
  eng_tensor *r = fn(a, b);
  lb_box_release(ta);
  lb_box_release(tb);
  return lb_finish(L, out, r);
}

#define BINARY(NAME)                                                           \
  static int l_##NAME(lua_State *L) { return binary_op(L, #NAME, eng_##NAME); }
BINARY(add)
BINARY(sub)
BINARY(mul)
BINARY(div)
BINARY(pow)
BINARY(maximum)
BINARY(minimum)

/* E.clamp(x, lo, hi); nil for no bound */
static int l_clamp(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "clamp");
  double lo = lb_opt_num(L, 2, "clamp", "lo", -INFINITY);
  double hi = lb_opt_num(L, 3, "clamp", "hi", INFINITY);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_clamp(x, lo, hi));
}

/* E.where(cond, a, b): a and b tensors or numbers; cond a tensor or table */
static int l_where(lua_State *L) {
  lua_settop(L, 3);
  const char *op = "where";
  check_operand(L, 2, op);
  check_operand(L, 3, op);
  int li = lb_is_tensor(L, 2) ? 2 : lb_is_tensor(L, 3) ? 3 : 0;
  eng_tensor *like = li ? lb_check_tensor(L, li, op) : NULL;
  TBox *tc, *ta, *tb;
  eng_tensor *c = lb_tensor_or_table(L, 1, op, "cond", like ? eng_tensor_dtype(like) : ENG_DTYPE_F32, &tc);
  if (!like) like = c;
  eng_tensor *a = operand(L, 2, op, like, &ta);
  eng_tensor *b = operand(L, 3, op, like, &tb);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_where(c, a, b);
  lb_box_release(tc);
  lb_box_release(ta);
  lb_box_release(tb);
  return lb_finish(L, out, r);
}

/* x:to(dtype), x:double(), x:float(): differentiable dtype conversion */
static int to_dtype(lua_State *L, eng_dtype dt) {
  eng_tensor *x = lb_check_tensor(L, 1, "to");
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_to_dtype(x, dt));
}
static int l_to(lua_State *L) {
  lb_check_tensor(L, 1, "to");
  if (lua_isnoneornil(L, 2)) luaL_error(L, "to: expected a dtype (\"float32\" or \"float64\"), got %s", lb_type_name(L, 2));
  return to_dtype(L, lb_opt_dtype(L, 2, "to", ENG_DTYPE_F32));
}
static int l_double(lua_State *L) { return to_dtype(L, ENG_DTYPE_F64); }
static int l_float(lua_State *L) { return to_dtype(L, ENG_DTYPE_F32); }

/* in place, outside autodiff; each returns x */
static int l_fill_(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "fill_");
  if (eng_fill_(x, lb_check_num(L, 2, "fill_", "value"))) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}
static int l_zero_(lua_State *L) {
  if (eng_fill_(lb_check_tensor(L, 1, "zero_"), 0.0)) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}
static int l_copy_(lua_State *L) {
  lua_settop(L, 2);
  eng_tensor *x = lb_check_tensor(L, 1, "copy_");
  TBox *tmp;
  eng_tensor *src = lb_tensor_or_table(L, 2, "copy_", "source", eng_tensor_dtype(x), &tmp);
  int rc = eng_copy_(x, src);
  lb_box_release(tmp);
  if (rc) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

/* x:add_(other, alpha=1): x <- x + alpha*other in place, outside autodiff
 * (optimizer updates) */
static int l_add_(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "add_");
  TBox *tmp;
  eng_tensor *src = lb_tensor_or_table(L, 2, "add_", "other", eng_tensor_dtype(x), &tmp);
  double alpha = luaL_optnumber(L, 3, 1.0);
  int rc = eng_axpby_(x, alpha, src, 1.0);
  lb_box_release(tmp);
  if (rc) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

/* x:set_data_(src): x (a leaf) shares src's storage and layout from now on,
 * keeping its identity, requires_grad and grad */
static int l_set_data_(lua_State *L) {
  lua_settop(L, 2);
  eng_tensor *x = lb_check_tensor(L, 1, "set_data_");
  eng_tensor *src = lb_check_tensor_what(L, 2, "set_data_", "source");
  if (eng_tensor_set_data(x, src)) lb_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

/* x:zero_grad(): drop x's gradient (the next backward makes a fresh one) */
static int l_zero_grad(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "zero_grad");
  eng_set_grad(x, NULL);
  lua_settop(L, 1);
  return 1;
}

/* E.anomaly(on): turn the engine's non-finite checks on or off (and
 * forget what was seen); E.anomaly_op(): the first op that made a NaN or
 * inf since, or nil */
static int l_anomaly(lua_State *L) {
  eng_anomaly_enable(lua_toboolean(L, 1));
  return 0;
}
static int l_anomaly_op(lua_State *L) {
  const char *op = eng_anomaly_first();
  if (op) lua_pushstring(L, op);
  else lua_pushnil(L);
  return 1;
}

/* E.hash(x [, seed]) -> 16 hex digits of eng_tensor_hash */
static int l_hash(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "hash");
  uint64_t seed = (uint64_t)luaL_optinteger(L, 2, 0);
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", (unsigned long long)eng_tensor_hash(x, seed));
  lua_pushstring(L, buf);
  return 1;
}

/* E.isatty(fd): is file descriptor fd (1 = stdout) a terminal */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)));
  return 1;
}

/* E.fsync(path): flush a file or a directory to disk; nil, message on
 * failure (how checkpoints are made durable before and after a rename) */
static int l_fsync(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY);
  if (fd < 0 || fsync(fd) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    lua_pushnil(L);
    lua_pushfstring(L, "fsync: %s: %s", path, strerror(e));
    return 2;
  }
  close(fd);
  lua_pushboolean(L, 1);
  return 1;
}

/* E.wall_time(): monotonic seconds, for timing (os.clock adds up all threads) */
static int l_wall_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
  return 1;
}

/* ======================================================================
 * Reductions
 * ====================================================================== */

typedef eng_tensor *(*reduce_fn)(eng_tensor *, int, bool);

/* x:sum(dim?, keepdim?) and friends; no dim reduces everything */
static int reduce_op(lua_State *L, const char *op, reduce_fn fn) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, op);
  int dim = opt_dim_all(L, 2, op, x);
  int keep = lb_opt_bool(L, 3, op, "keepdim", 0);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, fn(x, dim, keep));
}
static int l_sum(lua_State *L) { return reduce_op(L, "sum", eng_sum); }
static int l_mean(lua_State *L) { return reduce_op(L, "mean", eng_mean); }
static int l_logsumexp(lua_State *L) { return reduce_op(L, "logsumexp", eng_logsumexp); }

/* x:max() -> the largest value; x:max(dim, keepdim?) -> values and 1-based
 * positions */
static int l_max(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "max");
  if (lua_isnoneornil(L, 2)) {
    int keep = lb_opt_bool(L, 3, "max", "keepdim", 0);
    TBox *out = lb_box_new(L);
    return lb_finish(L, out, eng_max(x, ENG_ALL_DIMS, keep, NULL));
  }
  int dim = lb_check_dim(L, 2, "max", x);
  int keep = lb_opt_bool(L, 3, "max", "keepdim", 0);
  TBox *vals = lb_box_new(L);
  TBox *pos = lb_box_new(L);
  TBox *one = lb_box_new(L);
  eng_tensor *idx = NULL;
  vals->t = eng_max(x, dim, keep, &idx);
  if (!vals->t) return lb_raise_engine(L);
  pos->t = idx; /* 0-based for now; boxed so an error below frees it */
  one->t = eng_scalar_like(idx, 1.0);
  if (!one->t) return lb_raise_engine(L);
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *p1 = eng_add(idx, one->t);
  eng_set_grad_enabled(prev);
  if (!p1) return lb_raise_engine(L);
  lb_box_release(one);
  lb_box_release(pos);
  pos->t = p1;
  lua_pop(L, 1);
  return 2;
}

typedef eng_tensor *(*dim_fn)(eng_tensor *, int);

/* E.softmax(x, dim): dim defaults to the last */
static int softmax_op(lua_State *L, const char *op, dim_fn fn) {
  lua_settop(L, 2);
  eng_tensor *x = lb_check_tensor(L, 1, op);
  int dim = lua_isnoneornil(L, 2) ? dim_value(L, -1, op, x) : lb_check_dim(L, 2, op, x);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, fn(x, dim));
}
static int l_softmax(lua_State *L) { return softmax_op(L, "softmax", eng_softmax); }
static int l_log_softmax(lua_State *L) { return softmax_op(L, "log_softmax", eng_log_softmax); }

/* ======================================================================
 * Shape
 * ====================================================================== */

/* x:reshape({2, 3}) or x:reshape(2, 3); one size may be -1 */
static int l_reshape(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "reshape");
  int64_t shape[ENG_MAX_DIMS];
  int nd = lb_read_shape(L, 2, "reshape", shape, 1, 1);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_reshape(x, nd, shape));
}

static int l_expand(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "expand");
  int64_t shape[ENG_MAX_DIMS];
  int nd = lb_read_shape(L, 2, "expand", shape, 1, 1);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_expand(x, nd, shape));
}

static int l_transpose(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "transpose");
  int d1 = lb_check_dim(L, 2, "transpose", x);
  int d2 = lb_check_dim(L, 3, "transpose", x);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_transpose(x, d1, d2));
}

/* x:permute(3, 1, 2) or x:permute({3, 1, 2}): output dim i is input dim p[i] */
static int l_permute(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "permute");
  int nd = eng_tensor_ndim(x);
  int dims[ENG_MAX_DIMS], seen[ENG_MAX_DIMS] = {0};
  int from_table = lua_istable(L, 2);
  int n = from_table ? (int)lua_rawlen(L, 2) : lua_gettop(L) - 1;
  char buf[128];
  if (n != nd)
    luaL_error(L, "permute: %d dims given for a tensor of shape %s, which has %d", n, shape_of(x, buf, sizeof buf),
               nd);
  for (int i = 0; i < n; i++) {
    int idx = 2 + i;
    if (from_table) {
      lua_rawgeti(L, 2, i + 1);
      idx = lua_gettop(L);
    }
    int d = lb_check_dim(L, idx, "permute", x);
    if (seen[d]) luaL_error(L, "permute: dim %d appears twice; the dims must be a permutation of 1..%d", d + 1, nd);
    seen[d] = 1;
    dims[i] = d;
    if (from_table) lua_pop(L, 1);
  }
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_permute(x, dims));
}

/* x:narrow(dim, start, len): start is 1-based (negative from the end) */
static int l_narrow(lua_State *L) {
  lua_settop(L, 4);
  eng_tensor *x = lb_check_tensor(L, 1, "narrow");
  int d = lb_check_dim(L, 2, "narrow", x);
  lua_Integer start = lb_check_int(L, 3, "narrow", "start");
  lua_Integer len = lb_check_int(L, 4, "narrow", "length");
  int64_t size = eng_tensor_shape(x)[d];
  lua_Integer s0 = start < 0 ? size + start : start - 1;
  if (start == 0 || s0 < 0 || s0 > size || len < 0 || s0 + len > size) {
    char buf[128];
    luaL_error(L, "narrow: start %I and length %I do not fit dim %d of shape %s (start is 1-based)", start, len,
               d + 1, shape_of(x, buf, sizeof buf));
  }
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_narrow(x, d, s0, len));
}

static int l_contiguous(lua_State *L) {
  eng_tensor *x = lb_check_tensor(L, 1, "contiguous");
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_contiguous(x));
}

/* E.cat({a, b, ...}, dim): dim defaults to 1 */
static int l_cat(lua_State *L) {
  lua_settop(L, 2);
  if (!lua_istable(L, 1)) luaL_error(L, "cat: expected a list of tensors, got %s", lb_type_name(L, 1));
  lua_Unsigned n = lua_rawlen(L, 1);
  if (n == 0) luaL_error(L, "cat: expected a non-empty list of tensors");
  if (n > (1u << 24)) luaL_error(L, "cat: too many tensors (%I)", (lua_Integer)n);
  eng_tensor **xs = lua_newuserdatauv(L, sizeof *xs * (size_t)n, 0);
  for (lua_Unsigned i = 0; i < n; i++) {
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    TBox *b = luaL_testudata(L, -1, TENSOR_MT);
    if (!b) luaL_error(L, "cat: entry %I of the list is %s, expected a tensor", (lua_Integer)i + 1, a_type(L, -1));
    if (!b->t) luaL_error(L, "cat: entry %I of the list: tensor was released (closed or collected)", (lua_Integer)i + 1);
    xs[i] = b->t;
    lua_pop(L, 1);
  }
  int dim = lua_isnoneornil(L, 2) ? 0 : lb_check_dim(L, 2, "cat", xs[0]);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_cat(xs, (int)n, dim));
}

/* x:gather(dim, index): index values are 1-based positions along dim */
static int l_gather(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "gather");
  int d = lb_check_dim(L, 2, "gather", x);
  TBox *tmp;
  eng_tensor *index = lb_tensor_or_table(L, 3, "gather", "index", eng_tensor_dtype(x), &tmp);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_gather(x, d, index, 1);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* ======================================================================
 * Linear algebra and transformer ops
 * ====================================================================== */

static int l_matmul(lua_State *L) {
  eng_tensor *a = lb_check_tensor(L, 1, "matmul");
  eng_tensor *b = lb_check_tensor(L, 2, "matmul");
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_matmul(a, b));
}

/* E.embedding(weight (V,C), ids) with 0-based vocabulary ids */
static int l_embedding(lua_State *L) {
  lua_settop(L, 2);
  eng_tensor *w = lb_check_tensor_what(L, 1, "embedding", "weight");
  TBox *tmp;
  eng_tensor *ids = lb_tensor_or_table(L, 2, "embedding", "ids", eng_tensor_dtype(w), &tmp);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_embedding(w, ids);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* E.layer_norm(x, weight?, bias?, eps = 1e-5) over the last dim */
static int l_layer_norm(lua_State *L) {
  lua_settop(L, 4);
  eng_tensor *x = lb_check_tensor(L, 1, "layer_norm");
  eng_tensor *w = lb_opt_tensor(L, 2, "layer_norm", "weight");
  eng_tensor *b = lb_opt_tensor(L, 3, "layer_norm", "bias");
  double eps = lb_opt_num(L, 4, "layer_norm", "eps", 1e-5);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_layer_norm(x, w, b, eps));
}

/* E.rms_norm(x, weight?, eps = 1e-6) over the last dim */
static int l_rms_norm(lua_State *L) {
  lua_settop(L, 3);
  eng_tensor *x = lb_check_tensor(L, 1, "rms_norm");
  eng_tensor *w = lb_opt_tensor(L, 2, "rms_norm", "weight");
  double eps = lb_opt_num(L, 3, "rms_norm", "eps", 1e-6);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_rms_norm(x, w, eps));
}

/* E.dropout(x, p, generator | {seed=} | {generator=} | nil) */
static int l_dropout(lua_State *L) {
  lua_settop(L, 3);
  static const char *const known[] = {"seed", "generator", NULL};
  eng_tensor *x = lb_check_tensor(L, 1, "dropout");
  double p = lb_check_num(L, 2, "dropout", "p");
  if (lua_istable(L, 3)) lb_check_opts(L, 3, "dropout", known);
  eng_rng *rng = rng_arg(L, 3, "dropout");
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_dropout(x, p, rng));
}

/* E.attention(q, k, v, {mask=, causal=, scale=}) */
static int l_attention(lua_State *L) {
  lua_settop(L, 4);
  static const char *const known[] = {"mask", "causal", "scale", NULL};
  eng_tensor *q = lb_check_tensor_what(L, 1, "attention", "q");
  eng_tensor *k = lb_check_tensor_what(L, 2, "attention", "k");
  eng_tensor *v = lb_check_tensor_what(L, 3, "attention", "v");
  lb_check_opts(L, 4, "attention", known);
  int mi = lb_opt_field(L, 4, "mask");
  TBox *tmp = NULL;
  eng_tensor *mask = lua_isnil(L, mi) ? NULL : lb_tensor_or_table(L, mi, "attention", "mask", eng_tensor_dtype(q), &tmp);
  int causal = lb_opt_bool(L, lb_opt_field(L, 4, "causal"), "attention", "causal", 0);
  double scale = lb_opt_num(L, lb_opt_field(L, 4, "scale"), "attention", "scale", 0.0);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_attention(q, k, v, mask, causal, scale);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* E.cross_entropy(logits, targets, {ignore_index = -100}) */
static int l_cross_entropy(lua_State *L) {
  lua_settop(L, 3);
  static const char *const known[] = {"ignore_index", NULL};
  eng_tensor *logits = lb_check_tensor_what(L, 1, "cross_entropy", "logits");
  lb_check_opts(L, 3, "cross_entropy", known);
  int ii = lb_opt_field(L, 3, "ignore_index");
  lua_Integer ignore = lua_isnil(L, ii) ? -100 : lb_check_int(L, ii, "cross_entropy", "ignore_index");
  TBox *tmp;
  eng_tensor *targets = lb_tensor_or_table(L, 2, "cross_entropy", "targets", eng_tensor_dtype(logits), &tmp);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_cross_entropy(logits, targets, ignore);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* E.token_logprobs(logits (...,V), labels (...)) -> (...) */
static int l_token_logprobs(lua_State *L) {
  lua_settop(L, 2);
  eng_tensor *logits = lb_check_tensor_what(L, 1, "token_logprobs", "logits");
  TBox *tmp;
  eng_tensor *labels = lb_tensor_or_table(L, 2, "token_logprobs", "labels", eng_tensor_dtype(logits), &tmp);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_token_logprobs(logits, labels);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* ======================================================================
 * Generators
 * ====================================================================== */

static GBox *check_gen(lua_State *L, int idx, const char *op) {
  GBox *g = luaL_testudata(L, idx, GENERATOR_MT);
  if (!g) luaL_error(L, "%s: expected a generator, got %s", op, lb_type_name(L, idx));
  if (!g->r) luaL_error(L, "%s: generator was released", op);
  return g;
}

/* E.Generator(seed = 0) */
static int l_generator(lua_State *L) {
  lua_Integer seed = lua_isnoneornil(L, 1) ? 0 : lb_check_int(L, 1, "Generator", "seed");
  GBox *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->r = NULL;
  g->owned = 1;
  luaL_setmetatable(L, GENERATOR_MT);
  g->r = eng_rng_new((uint64_t)seed);
  if (!g->r) return lb_raise_engine(L);
  return 1;
}

/* E.default_generator(): the process-wide generator used when none is given */
static int l_default_generator(lua_State *L) {
  GBox *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->r = eng_default_rng();
  g->owned = 0;
  luaL_setmetatable(L, GENERATOR_MT);
  return 1;
}

static int l_gen_gc(lua_State *L) {
  GBox *g = luaL_checkudata(L, 1, GENERATOR_MT);
  if (g->owned && g->r) eng_rng_free(g->r);
  g->r = NULL;
  return 0;
}

static int l_gen_seed(lua_State *L) {
  GBox *g = check_gen(L, 1, "seed");
  eng_rng_seed(g->r, (uint64_t)lb_check_int(L, 2, "seed", "seed"));
  lua_settop(L, 1);
  return 1;
}

/* g:state() -> {w1, w2, w3, w4}: the four 64-bit words as Lua integers */
static int l_gen_state(lua_State *L) {
  GBox *g = check_gen(L, 1, "state");
  uint64_t s[4];
  eng_rng_get_state(g->r, s);
  lua_createtable(L, 4, 0);
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, (lua_Integer)s[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_gen_set_state(lua_State *L) {
  GBox *g = check_gen(L, 1, "set_state");
  if (!lua_istable(L, 2) || lua_rawlen(L, 2) != 4)
    luaL_error(L, "set_state: expected a table of 4 integers (from state()), got %s", lb_type_name(L, 2));
  uint64_t s[4];
  for (int i = 0; i < 4; i++) {
    lua_rawgeti(L, 2, i + 1);
    s[i] = (uint64_t)lb_check_int(L, -1, "set_state", "a state word");
    lua_pop(L, 1);
  }
  eng_rng_set_state(g->r, s);
  lua_settop(L, 1);
  return 1;
}

/* g:uniform() in [0, 1); g:normal() standard normal */
static int l_gen_uniform(lua_State *L) {
  lua_pushnumber(L, eng_rng_uniform(check_gen(L, 1, "uniform")->r));
  return 1;
}
static int l_gen_normal(lua_State *L) {
  lua_pushnumber(L, eng_rng_normal(check_gen(L, 1, "normal")->r));
  return 1;
}

/* E.manual_seed(s): reseed the default generator */
static int l_manual_seed(lua_State *L) {
  eng_rng_seed(eng_default_rng(), (uint64_t)lb_check_int(L, 1, "manual_seed", "seed"));
  return 0;
}

/* ======================================================================
 * Threads and memory
 * ====================================================================== */

#define MAX_THREADS 1024

static int l_set_threads(lua_State *L) {
  lua_Integer n = lb_check_int(L, 1, "set_threads", "n");
  if (n < 1 || n > MAX_THREADS) luaL_error(L, "set_threads: n must be in 1..%d, got %I", MAX_THREADS, n);
  eng_set_threads((int)n);
  return 0;
}

static int l_get_threads(lua_State *L) {
  lua_pushinteger(L, eng_get_threads());
  return 1;
}

/* E.matmul_backend() -> "engine-avx512" | "openblas" */
static int l_matmul_backend(lua_State *L) {
  lua_pushstring(L, eng_matmul_backend());
  return 1;
}

static int l_memory_stats(lua_State *L) {
  eng_memory_stats s;
  eng_memory_get_stats(&s);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)s.bytes_in_use);
  lua_setfield(L, -2, "bytes_in_use");
  lua_pushinteger(L, (lua_Integer)s.bytes_cached);
  lua_setfield(L, -2, "bytes_cached");
  lua_pushinteger(L, (lua_Integer)s.peak_in_use);
  lua_setfield(L, -2, "peak_in_use");
  lua_pushinteger(L, (lua_Integer)s.allocs);
  lua_setfield(L, -2, "allocs");
  lua_pushinteger(L, (lua_Integer)s.reuses);
  lua_setfield(L, -2, "reuses");
  return 1;
}

static int l_memory_trim(lua_State *L) {
  (void)L;
  eng_memory_trim();
  return 0;
}

/* ======================================================================
 * Metatables and luaopen_engine
 * ====================================================================== */

/* x.grad, then the methods (upvalue 1) */
static int l_index(lua_State *L) {
  TBox *b = luaL_checkudata(L, 1, TENSOR_MT);
  if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "grad")) {
    if (!b->t) luaL_error(L, "grad: tensor was released (closed or collected)");
    push_grad(L, b->t);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* only .grad may be assigned */
static int l_newindex(lua_State *L) {
  TBox *b = luaL_checkudata(L, 1, TENSOR_MT);
  if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "grad")) {
    if (!b->t) luaL_error(L, "grad: tensor was released (closed or collected)");
    set_grad(L, b->t, 3);
    return 0;
  }
  return luaL_error(L, "tensor: cannot set field '%s' (only .grad can be assigned)", luaL_tolstring(L, 2, NULL));
}

/* functions that are both E.f(x, ...) and x:f(...) */
static const luaL_Reg tensor_functions[] = {
    {"shape", l_shape},           {"size", l_size},
    {"dim", l_dim},               {"numel", l_numel},
    {"item", l_item},             {"totable", l_totable},
    {"dtype", l_dtype},           {"is_contiguous", l_is_contiguous},
    {"release", l_release},       {"requires_grad", l_requires_grad},
    {"backward", l_backward},     {"detach", l_detach},
    {"is_leaf", l_is_leaf},       {"grad_fn", l_grad_fn},
    {"neg", l_neg},               {"exp", l_exp},
    {"log", l_log},               {"sigmoid", l_sigmoid},
    {"logsigmoid", l_logsigmoid}, {"relu", l_relu},
    {"tanh", l_tanh},             {"sqrt", l_sqrt},
    {"abs", l_abs},               {"gelu", l_gelu},
    {"silu", l_silu},             {"add", l_add},
    {"sub", l_sub},               {"mul", l_mul},
    {"div", l_div},               {"pow", l_pow},
    {"maximum", l_maximum},       {"minimum", l_minimum},
    {"clamp", l_clamp},           {"to", l_to},
    {"double", l_double},         {"float", l_float},
    {"fill_", l_fill_},           {"zero_", l_zero_},
    {"copy_", l_copy_},           {"sum", l_sum},
    {"add_", l_add_},             {"zero_grad", l_zero_grad},
    {"set_data_", l_set_data_},
    {"mean", l_mean},             {"max", l_max},
    {"logsumexp", l_logsumexp},   {"softmax", l_softmax},
    {"log_softmax", l_log_softmax}, {"reshape", l_reshape},
    {"expand", l_expand},         {"transpose", l_transpose},
    {"permute", l_permute},       {"narrow", l_narrow},
    {"contiguous", l_contiguous}, {"gather", l_gather},
    {"matmul", l_matmul},         {"dropout", l_dropout},
    {NULL, NULL}};

/* functions only on E */
static const luaL_Reg module_functions[] = {
    {"tensor", l_tensor},
    {"zeros", l_zeros},
    {"ones", l_ones},
    {"full", l_full},
    {"randn", l_randn},
    {"rand", l_rand},
    {"arange", l_arange},
    {"is_tensor", l_is_tensor},
    {"where", l_where},
    {"cat", l_cat},
    {"embedding", l_embedding},
    {"layer_norm", l_layer_norm},
    {"rms_norm", l_rms_norm},
    {"attention", l_attention},
    {"cross_entropy", l_cross_entropy},
    {"token_logprobs", l_token_logprobs},
    {"grad_enabled", l_grad_enabled},
    {"set_grad_enabled", l_set_grad_enabled},
    {"Generator", l_generator},
    {"default_generator", l_default_generator},
    {"manual_seed", l_manual_seed},
    {"set_threads", l_set_threads},
    {"get_threads", l_get_threads},
    {"matmul_backend", l_matmul_backend},
    {"memory_stats", l_memory_stats},
    {"memory_trim", l_memory_trim},
    {"wall_time", l_wall_time},
    {"anomaly", l_anomaly},
    {"anomaly_op", l_anomaly_op},
    {"isatty", l_isatty},
    {"hash", l_hash},
    {"fsync", l_fsync},
    {NULL, NULL}};

static const luaL_Reg tensor_meta[] = {
    {"__gc", l_release}, {"__close", l_release}, {"__tostring", l_tostring}, {"__len", l_len},
    {"__add", l_add},    {"__sub", l_sub},       {"__mul", l_mul},           {"__div", l_div},
    {"__pow", l_pow},    {"__unm", l_unm},       {"__newindex", l_newindex}, {NULL, NULL}};

static const luaL_Reg generator_methods[] = {
    {"seed", l_gen_seed},       {"state", l_gen_state},   {"set_state", l_gen_set_state},
    {"uniform", l_gen_uniform}, {"normal", l_gen_normal}, {NULL, NULL}};

/* prepend ENGINE_LUA_DIR/?.lua to package.path unless it is there */
static void add_lua_path(lua_State *L) {
  static const char entry[] = ENGINE_LUA_DIR "/?.lua;" ENGINE_LUA_DIR "/?/init.lua";
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) luaL_error(L, "engine: the package library is not loaded");
  lua_getfield(L, -1, "path");
  const char *path = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
  const char *hit = strstr(path, entry);
  size_t n = sizeof entry - 1;
  int present = hit && (hit == path || hit[-1] == ';') && (hit[n] == ';' || hit[n] == 0);
  if (!present) {
    lua_pushfstring(L, "%s;%s", entry, path);
    lua_setfield(L, -3, "path");
  }
  lua_pop(L, 2);
}

/* require("engine.api")(E), with E at index e */
static int load_api(lua_State *L) {
  int e = 1;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "engine.api");
  lua_call(L, 1, 1);
  if (!lua_isfunction(L, -1)) luaL_error(L, "engine: engine/api.lua must return a function");
  lua_pushvalue(L, e);
  lua_call(L, 1, 0);
  return 0;
}

#if defined(ENGINE_IN_RUNNER)
int luaopen_engine(lua_State *L);
#else
LUAMOD_API int luaopen_engine(lua_State *L);
#endif

int luaopen_engine(lua_State *L) {
  /* the tensor metatable; methods reached through __index */
  luaL_newmetatable(L, TENSOR_MT);
  luaL_setfuncs(L, tensor_meta, 0);
  lua_newtable(L); /* methods */
  luaL_setfuncs(L, tensor_functions, 0);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_index, 1);
  lua_setfield(L, -3, "__index");
  int methods = lua_gettop(L);

  luaL_newmetatable(L, GENERATOR_MT);
  lua_pushcfunction(L, l_gen_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, generator_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  /* the module table */
  lua_createtable(L, 0, 128);
  int E = lua_gettop(L);
  luaL_setfuncs(L, tensor_functions, 0);
  luaL_setfuncs(L, module_functions, 0);
  lua_pushliteral(L, ENG_VERSION);
  lua_setfield(L, E, "version");
  lua_pushvalue(L, methods); /* E.Tensor: the tensor methods; Lua may add more */
  lua_setfield(L, E, "Tensor");
  /* the other binding files add their functions to E */
  lua_pushvalue(L, E);
  binding_safetensors_open(L);
  binding_tokenizer_open(L);
  binding_optim_open(L);
  binding_sampling_open(L);
  binding_fused_open(L);
  binding_fpmode_open(L);
  binding_linear_open(L);
  lua_settop(L, E);

  /* registered early so that the Lua side can require("engine") */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, E);
  lua_setfield(L, -2, "engine");
  lua_pop(L, 1);

  add_lua_path(L);
  lua_pushcfunction(L, load_api);
  lua_pushvalue(L, E);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    lua_setfield(L, -2, "engine");
    lua_pop(L, 1);
    return lua_error(L);
  }
  lua_pushvalue(L, E);
  return 1;
}
