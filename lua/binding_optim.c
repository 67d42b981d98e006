/* binding_optim.c — the Lua binding of the engine's optim functions. */
#include "binding.h"

void binding_optim_open(lua_State *L) { (void)L; }
