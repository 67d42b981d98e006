/* binding_tokenizer.c — the Lua binding of the engine's tokenizer functions. */
#include "binding.h"

void binding_tokenizer_open(lua_State *L) { (void)L; }
