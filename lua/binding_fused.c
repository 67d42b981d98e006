/* binding_fused.c — the Lua face of engine_fused.h:
 *   lp = E.linear_logprobs(h, w, labels, {chunk_rows=, chunk_vocab=})
 * h (...,C), w (V,C) the head weight as stored (row v = token v), labels
 * (...) a tensor or a nested table of 0-based token ids (a label < 0 gives
 * 0 and no gradient) -> (...) log softmax(h·wᵀ)[label], differentiable in h
 * and w. chunk_rows / chunk_vocab: positive integers, the tile's rows and
 * tokens (the engine picks them when absent). A table of labels is read as
 * float64, so ids stay exact.
 * Not here: the model-level wrapper (CausalLM:logprobs in
 * lua/engine/models/causal_lm.lua). binding.c calls binding_fused_open. */
#include "binding.h"

#define OP "linear_logprobs"

LB_API void binding_fused_open(lua_State *L);

/* opts[key]: nil gives 0 (the engine's default), else a positive integer */
static int64_t opt_chunk(lua_State *L, int opts, const char *key) {
  int i = lb_opt_field(L, opts, key);
  if (lua_isnil(L, i)) return 0;
  lua_Integer v = lb_check_int(L, i, OP, key);
  if (v < 1) luaL_error(L, OP ": %s must be a positive integer, got %I", key, v);
  return (int64_t)v;
}

static int l_linear_logprobs(lua_State *L) {
  lua_settop(L, 4);
  static const char *const known[] = {"chunk_rows", "chunk_vocab", NULL};
  eng_tensor *h = lb_check_tensor_what(L, 1, OP, "h");
  eng_tensor *w = lb_check_tensor_what(L, 2, OP, "w");
  lb_check_opts(L, 4, OP, known);
  int64_t rows = opt_chunk(L, 4, "chunk_rows"), vocab = opt_chunk(L, 4, "chunk_vocab");
  TBox *tmp;
  eng_tensor *labels = lb_tensor_or_table(L, 3, OP, "labels", ENG_DTYPE_F64, &tmp);
  TBox *out = lb_box_new(L);
  eng_tensor *r = eng_linear_logprobs(h, w, labels, rows, vocab);
  lb_box_release(tmp);
  return lb_finish(L, out, r);
}

/* adds E.linear_logprobs to the module table on the top of the stack */
void binding_fused_open(lua_State *L) {
  lua_pushcfunction(L, l_linear_logprobs);
  lua_setfield(L, -2, "linear_logprobs");
}
