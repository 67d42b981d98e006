/* binding_optim.c — the Lua binding of the engine's optimizers
 * (engine_optim.h).
 *
 * What it does: wraps an eng_optim in a userdata ("engine.Optim", freed by
 * __gc) and registers the constructor and its methods as the module
 * "engine.optim_core" in package.loaded, for lua/engine/optim.lua, which is
 * what users call (E.optim.AdamW, E.optim.SGD). Nothing is added to E
 * itself, so E.optim stays the lazily loaded Lua module.
 *
 * What it does not do: option tables, names and the no-decay rule,
 * schedules, state tables (all in optim.lua). Its argument checks are for
 * optim.lua's calls; the messages of the engine's own checks (op "AdamW" or
 * "SGD") reach the user unchanged.
 *
 *   core.new(kind, params, names, decay, cfg) -> optim
 *     kind "AdamW" | "SGD"; params a list of tensors; names a list of
 *     strings or false; decay a list of booleans; cfg a table of numbers
 *     (lr, weight_decay, beta1, beta2, eps, momentum, dampening) and
 *     nesterov (boolean)
 *   o:zero_grad()  o:grad_norm() -> n  o:clip_grad_norm(max) -> n
 *   o:scale_grads(s)  o:step() -> updated  o:lr()  o:set_lr(lr)
 *   o:params()  o:grads()  o:moment(name) -> tensor or nil
 *   o:step_count()  o:set_step_count(n)  o:skipped()  o:numel()
 *   o:slots() -> { {index=, offset=, numel=, decay=}, ... } (1-based,
 *   flat order) */
#include "binding.h"

#include <string.h>

#define OPTIM_MT "engine.Optim"

typedef struct {
  eng_optim *o; /* NULL until made */
} OBox;

static eng_optim *check_optim(lua_State *L, int idx) {
  OBox *b = luaL_testudata(L, idx, OPTIM_MT);
  if (!b || !b->o) luaL_error(L, "optim: expected an optimizer, got %s", lb_type_name(L, idx));
  return b->o;
}

static int l_gc(lua_State *L) {
  OBox *b = luaL_checkudata(L, 1, OPTIM_MT);
  eng_optim_free(b->o);
  b->o = NULL;
  return 0;
}

/* cfg[key] as a number, or def when absent */
static double cfg_num(lua_State *L, int cfg, const char *key, double def) {
  lua_getfield(L, cfg, key);
  double v = lb_opt_num(L, -1, "optim", key, def);
  lua_pop(L, 1);
  return v;
}

/* a scratch array owned by Lua (freed by the collector, so an error leaks nothing) */
static void *scratch(lua_State *L, size_t bytes) { return lua_newuserdatauv(L, bytes ? bytes : 1, 0); }

static int l_new(lua_State *L) {
  lua_settop(L, 5);
  const char *kind = luaL_checkstring(L, 1);
  eng_optim_kind k;
  if (!strcmp(kind, "AdamW")) k = ENG_OPTIM_ADAMW;
  else if (!strcmp(kind, "SGD")) k = ENG_OPTIM_SGD;
  else return luaL_error(L, "optim: unknown optimizer '%s' (AdamW or SGD)", kind);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TTABLE);
  luaL_checktype(L, 5, LUA_TTABLE);

  eng_optim_config cfg = eng_optim_defaults(k);
  cfg.lr = cfg_num(L, 5, "lr", cfg.lr);
  cfg.weight_decay = cfg_num(L, 5, "weight_decay", cfg.weight_decay);
  cfg.beta1 = cfg_num(L, 5, "beta1", cfg.beta1);
  cfg.beta2 = cfg_num(L, 5, "beta2", cfg.beta2);
  cfg.eps = cfg_num(L, 5, "eps", cfg.eps);
  cfg.momentum = cfg_num(L, 5, "momentum", cfg.momentum);
  cfg.dampening = cfg_num(L, 5, "dampening", cfg.dampening);
  lua_getfield(L, 5, "nesterov");
  cfg.nesterov = lb_opt_bool(L, -1, "optim", "nesterov", cfg.nesterov);
  lua_pop(L, 1);

  lua_Integer n = luaL_len(L, 2);
  if (n > 1 << 30) return luaL_error(L, "optim: too many parameters (%d)", (int)n);
  eng_tensor **params = scratch(L, sizeof *params * (size_t)n);
  const char **names = scratch(L, sizeof *names * (size_t)n);
  bool *decay = scratch(L, sizeof *decay * (size_t)n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    params[i - 1] = lb_check_tensor_what(L, -1, "optim", "a parameter");
    lua_pop(L, 1);
    lua_geti(L, 3, i); /* the string stays referenced by the names table */
    names[i - 1] = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1);
    lua_geti(L, 4, i);
    decay[i - 1] = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }

  OBox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->o = NULL;
  luaL_setmetatable(L, OPTIM_MT);
  b->o = eng_optim_new(&cfg, (int)n, params, names, decay);
  if (!b->o) return lb_raise_engine(L);
  return 1;
}

static int l_zero_grad(lua_State *L) {
  if (eng_optim_zero_grad(check_optim(L, 1))) return lb_raise_engine(L);
  return 0;
}

static int l_grad_norm(lua_State *L) {
  double norm;
  if (eng_optim_grad_norm(check_optim(L, 1), &norm)) return lb_raise_engine(L);
  lua_pushnumber(L, norm);
  return 1;
}

static int l_clip_grad_norm(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  double max_norm = lb_check_num(L, 2, "clip_grad_norm", "max_norm"), norm;
  if (eng_optim_clip_grad_norm(o, max_norm, &norm)) return lb_raise_engine(L);
  lua_pushnumber(L, norm);
  return 1;
}

static int l_scale_grads(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  if (eng_optim_scale_grads(o, lb_check_num(L, 2, "scale_grads", "the factor"))) return lb_raise_engine(L);
  return 0;
}

static int l_step(lua_State *L) {
  bool updated;
  if (eng_optim_step(check_optim(L, 1), &updated)) return lb_raise_engine(L);
  lua_pushboolean(L, updated);
  return 1;
}

static int l_lr(lua_State *L) {
  lua_pushnumber(L, eng_optim_lr(check_optim(L, 1)));
  return 1;
}

static int l_set_lr(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  if (eng_optim_set_lr(o, lb_check_num(L, 2, "optim", "lr"))) return lb_raise_engine(L);
  return 0;
}

/* a new box holding one more reference to t (nil for NULL) */
static int push_block(lua_State *L, eng_tensor *t) {
  if (!t) {
    lua_pushnil(L);
    return 1;
  }
  TBox *b = lb_box_new(L);
  b->t = eng_tensor_retain(t);
  return 1;
}

static int l_params(lua_State *L) { return push_block(L, eng_optim_params(check_optim(L, 1))); }
static int l_grads(lua_State *L) { return push_block(L, eng_optim_grads(check_optim(L, 1))); }
static int l_moment(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  return push_block(L, eng_optim_moment(o, luaL_checkstring(L, 2)));
}

static int l_step_count(lua_State *L) {
  lua_pushinteger(L, eng_optim_step_count(check_optim(L, 1)));
  return 1;
}

static int l_set_step_count(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  if (eng_optim_set_step_count(o, lb_check_int(L, 2, "load_state", "step"))) return lb_raise_engine(L);
  return 0;
}

static int l_skipped(lua_State *L) {
  lua_pushinteger(L, eng_optim_skipped(check_optim(L, 1)));
  return 1;
}

static int l_numel(lua_State *L) {
  lua_pushinteger(L, eng_optim_numel(check_optim(L, 1)));
  return 1;
}

static int l_slots(lua_State *L) {
  eng_optim *o = check_optim(L, 1);
  int n = eng_optim_num_slots(o);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    eng_optim_slot s;
    eng_optim_slot_info(o, i, &s);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s.index + 1);
    lua_setfield(L, -2, "index");
    lua_pushinteger(L, s.offset + 1);
    lua_setfield(L, -2, "offset");
    lua_pushinteger(L, s.numel);
    lua_setfield(L, -2, "numel");
    lua_pushboolean(L, s.decay);
    lua_setfield(L, -2, "decay");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static const luaL_Reg optim_methods[] = {
    {"zero_grad", l_zero_grad},   {"grad_norm", l_grad_norm}, {"clip_grad_norm", l_clip_grad_norm},
    {"scale_grads", l_scale_grads}, {"step", l_step},         {"lr", l_lr},
    {"set_lr", l_set_lr},         {"params", l_params},       {"grads", l_grads},
    {"moment", l_moment},         {"step_count", l_step_count}, {"set_step_count", l_set_step_count},
    {"skipped", l_skipped},       {"numel", l_numel},         {"slots", l_slots},
    {NULL, NULL}};

void binding_optim_open(lua_State *L) {
  if (luaL_newmetatable(L, OPTIM_MT)) {
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, optim_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_new);
  lua_setfield(L, -2, "new");
  lua_setfield(L, -2, "engine.optim_core");
  lua_pop(L, 1);
}
