/* binding_safetensors.c — the Lua binding of the engine's safetensors functions. */
#include "binding.h"

void binding_safetensors_open(lua_State *L) { (void)L; }
