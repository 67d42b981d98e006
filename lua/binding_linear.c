/* binding_linear.c — the Lua face of engine_linear.h:
 *   y = E.linear(x, W, b, {transpose_w = false})
 * x (...,in), W (in,out) — or (out,in), torch's layout, with transpose_w =
 * true — b (out) or nil -> (...,out) = x·W + b (x·Wᵀ + b), one graph node,
 * differentiable in x, W and b. E.linear(x, W, b) is E.matmul(x, W) + b in
 * one op that keeps nothing but its inputs for the backward.
 * Not here: the layers (nn.Linear, nn.Conv1D in lua/engine/nn.lua call
 * this). binding.c calls binding_linear_open. */
#include "binding.h"

#include "engine_linear.h"

#define OP "linear"


static int l_linear(lua_State *L) {
  lua_settop(L, 4);
  static const char *const known[] = {"transpose_w", NULL};
  eng_tensor *x = lb_check_tensor_what(L, 1, OP, "x");
  eng_tensor *w = lb_check_tensor_what(L, 2, OP, "W");
  eng_tensor *b = lb_opt_tensor(L, 3, OP, "b");
  lb_check_opts(L, 4, OP, known);
  int tw = lb_opt_bool(L, lb_opt_field(L, 4, "transpose_w"), OP, "transpose_w", 0);
  TBox *out = lb_box_new(L);
  return lb_finish(L, out, eng_linear(x, w, b, tw != 0));
}

/* adds E.linear to the module table on the top of the stack */
void binding_linear_open(lua_State *L) {
  lua_pushcfunction(L, l_linear);
  lua_setfield(L, -2, "linear");
}
