/* binding_fpmode.c — the Lua face of engine_fpmode.h:
 *   E.set_flush_denormal(on) -> supported   flush subnormals to zero (or not)
 *   E.flush_denormal()       -> boolean     whether this thread flushes them
 * and the default: binding_fpmode_open turns flushing on when the module
 * opens (require "engine", the runner), as a subnormal gradient is
 * meaningless next to AdamW's eps but makes a backward pass 10-25x slower on
 * Intel CPUs. It applies to the Lua interpreter's own arithmetic in this
 * thread as well (torch.set_flush_denormal does the same to Python's).
 * Not here: the mechanics (engine/src/threads.c). binding.c calls
 * binding_fpmode_open. */
#include "binding.h"

#include "engine_fpmode.h"


static int l_set_flush_denormal(lua_State *L) {
  if (!lua_isboolean(L, 1))
    return luaL_error(L, "set_flush_denormal: on must be a boolean, got %s", lb_type_name(L, 1));
  lua_pushboolean(L, eng_set_flush_denormal(lua_toboolean(L, 1)));
  return 1;
}

static int l_flush_denormal(lua_State *L) {
  lua_pushboolean(L, eng_get_flush_denormal());
  return 1;
}

/* adds the two functions to the module table on the top of the stack and
 * turns flushing on */
void binding_fpmode_open(lua_State *L) {
  lua_pushcfunction(L, l_set_flush_denormal);
  lua_setfield(L, -2, "set_flush_denormal");
  lua_pushcfunction(L, l_flush_denormal);
  lua_setfield(L, -2, "flush_denormal");
  eng_set_flush_denormal(true);
}
