/* binding.h — what the binding's C files share: the tensor box, argument
 * readers that raise Lua errors naming the op, and the hooks through which
 * each topic's binding file adds its functions to the module table.
 * Conventions (binding.c's header says more): dims and positions are
 * 1-based in Lua; create the result box (lb_box_new) before calling the
 * engine, then lb_finish(L, box, result) fills it or raises the engine's
 * error, so a raised error leaks nothing. */
#ifndef ENGINE_BINDING_H
#define ENGINE_BINDING_H

#include "engine.h"

#include <lauxlib.h>
#include <lua.h>

#define TENSOR_MT "engine.Tensor"
#define GENERATOR_MT "engine.Generator"

#define LB_API __attribute__((visibility("hidden")))

typedef struct {
  eng_tensor *t; /* one reference, or NULL once released */
} TBox;

/* raise eng_last_error() as a Lua error (never returns) */
LB_API int lb_raise_engine(lua_State *L);
/* "tensor", "generator", or Lua's type name; "no value" past the top */
LB_API const char *lb_type_name(lua_State *L, int idx);
/* push an empty tensor box; lb_finish fills it (or raises) and returns 1 */
LB_API TBox *lb_box_new(lua_State *L);
LB_API void lb_box_release(TBox *b);
LB_API int lb_finish(lua_State *L, TBox *out, eng_tensor *r);
LB_API int lb_is_tensor(lua_State *L, int idx);
/* the tensor at idx (borrowed) or an error "op: expected a tensor, got ..."
 * ("op: <what> must be a tensor, got ..." when what is given) */
LB_API eng_tensor *lb_check_tensor_what(lua_State *L, int idx, const char *op, const char *what);
LB_API eng_tensor *lb_check_tensor(lua_State *L, int idx, const char *op);
/* NULL for nil/none */
LB_API eng_tensor *lb_opt_tensor(lua_State *L, int idx, const char *op, const char *what);
LB_API lua_Number lb_check_num(lua_State *L, int idx, const char *op, const char *what);
LB_API lua_Number lb_opt_num(lua_State *L, int idx, const char *op, const char *what, lua_Number def);
LB_API lua_Integer lb_check_int(lua_State *L, int idx, const char *op, const char *what);
LB_API int lb_opt_bool(lua_State *L, int idx, const char *op, const char *what, int def);
/* "float32" / "float64" (or nil for def) */
LB_API eng_dtype lb_opt_dtype(lua_State *L, int idx, const char *op, eng_dtype def);
/* an options table at idx (or nil): raises on keys not in the NULL-ended
 * list; returns 1 when a table is there */
LB_API int lb_check_opts(lua_State *L, int idx, const char *op, const char *const *known);
/* push opts[key]; returns its Lua type */
LB_API int lb_opt_field(lua_State *L, int opts_idx, const char *key);
/* a shape table at idx into shape[]; returns ndim */
LB_API int lb_read_shape(lua_State *L, int idx, const char *op, int64_t *shape, int allow_infer,
                         int allow_varargs);
/* a 1-based Lua dim at idx, checked against x, as a 0-based C dim */
LB_API int lb_check_dim(lua_State *L, int idx, const char *op, eng_tensor *x);
/* a nested table of numbers at idx as a new boxed tensor on the stack */
LB_API TBox *lb_push_table_tensor(lua_State *L, int idx, const char *op, eng_dtype dt);
/* the tensor at idx, or a nested table converted into a boxed temporary
 * (*temp, pushed on the stack; release it with lb_box_release) */
LB_API eng_tensor *lb_tensor_or_table(lua_State *L, int idx, const char *op, const char *what, eng_dtype dt,
                                      TBox **temp);

/* Each binding file adds its functions to the module table on the top of
 * the stack (and leaves the stack as it found it). */
LB_API void binding_safetensors_open(lua_State *L);
LB_API void binding_tokenizer_open(lua_State *L);
LB_API void binding_optim_open(lua_State *L);
LB_API void binding_sampling_open(lua_State *L);
LB_API void binding_fused_open(lua_State *L);
LB_API void binding_fpmode_open(lua_State *L);
LB_API void binding_linear_open(lua_State *L);

#endif
