/* binding_sampling.c — E.sample_logits, the Lua face of sampling.c:
 *   ids, logprobs = E.sample_logits(logits, uniforms, {temperature=1, top_k=0, top_p=1})
 * logits (B,V); uniforms a list of B numbers in [0,1) (one per row; may be
 * nil when temperature is 0). Returns two Lua lists of B entries: the
 * 0-based token ids (integers) and their log-probabilities (see
 * engine/src/sampling.h for what they are). Plain lists rather than
 * tensors: the decode loop reads every id anyway (stop tokens, the next
 * step's input).
 * Not here: the random stream (the caller draws the uniforms) and the decode
 * loop (lua/engine/generate.lua). binding.c calls binding_sampling_open. */
#include "binding.h"

#include "../engine/src/sampling.h"

#define OP "sample_logits"

LB_API void binding_sampling_open(lua_State *L);

static int l_sample_logits(lua_State *L) {
  lua_settop(L, 3);
  static const char *const known[] = {"temperature", "top_k", "top_p", NULL};
  eng_tensor *logits = lb_check_tensor_what(L, 1, OP, "logits");
  lb_check_opts(L, 3, OP, known);
  eng_sample_opts o;
  o.temperature = lb_opt_num(L, lb_opt_field(L, 3, "temperature"), OP, "temperature", 1.0);
  int ki = lb_opt_field(L, 3, "top_k");
  o.top_k = lua_isnil(L, ki) ? 0 : (int64_t)lb_check_int(L, ki, OP, "top_k");
  o.top_p = lb_opt_num(L, lb_opt_field(L, 3, "top_p"), OP, "top_p", 1.0);

  /* B for the buffers; a logits tensor that is not 2-D gets the engine's error below */
  int64_t B = eng_tensor_ndim(logits) == 2 ? eng_tensor_shape(logits)[0] : 0;
  size_t n = (size_t)(B > 0 ? B : 1);
  double *u = lua_newuserdatauv(L, n * (2 * sizeof(double) + sizeof(int64_t)), 0);
  double *lp = u + n;
  int64_t *ids = (int64_t *)(lp + n);
  int have_u = !lua_isnil(L, 2);
  if (have_u) {
    if (!lua_istable(L, 2))
      return luaL_error(L, OP ": uniforms must be a list of numbers in [0, 1), got %s", lb_type_name(L, 2));
    lua_Integer len = (lua_Integer)lua_rawlen(L, 2);
    if (len != B && eng_tensor_ndim(logits) == 2)
      return luaL_error(L, OP ": uniforms has %d entries, logits has %d rows", (int)len, (int)B);
    for (int64_t b = 0; b < B; b++) {
      lua_rawgeti(L, 2, (lua_Integer)b + 1);
      u[b] = lb_check_num(L, -1, OP, "a uniform");
      lua_pop(L, 1);
    }
  }
  if (eng_sample_logits(logits, &o, have_u ? u : NULL, ids, lp)) return lb_raise_engine(L);

  lua_createtable(L, (int)B, 0);
  for (int64_t b = 0; b < B; b++) {
    lua_pushinteger(L, (lua_Integer)ids[b]);
    lua_rawseti(L, -2, (lua_Integer)b + 1);
  }
  lua_createtable(L, (int)B, 0);
  for (int64_t b = 0; b < B; b++) {
    lua_pushnumber(L, lp[b]);
    lua_rawseti(L, -2, (lua_Integer)b + 1);
  }
  return 2;
}

/* adds E.sample_logits to the module table on the top of the stack */
void binding_sampling_open(lua_State *L) {
  lua_pushcfunction(L, l_sample_logits);
  lua_setfield(L, -2, "sample_logits");
}
