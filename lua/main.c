/* main.c — the `engine` executable: a Lua 5.4 state with the standard
 * libraries and the engine module preloaded, handing argv to
 * lua/engine/runner.lua, which does everything else (options, scripts,
 * recipes, the REPL, error reports). Only a failure of the runner itself
 * is reported from here. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int luaopen_engine(lua_State *L);

/* require("engine"); return require("engine.runner")(argv, interactive) */
static int boot(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "engine");
  lua_call(L, 1, 0); /* puts lua/ on package.path */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "engine.runner");
  lua_call(L, 1, 1);
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_pushboolean(L, isatty(0) && isatty(1));
  lua_call(L, 2, 1);
  return 1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

/* OpenMP's idle threads spin 300,000 rounds by default before they sleep:
 * fine on an idle machine, ruinous when anything else wants a core (each
 * parallel region then waits on a descheduled spinner; measured here: 2.3x
 * slower training steps beside one busy process). libgomp reads its
 * settings when it loads, before main, so the runner sets a short spin and
 * starts itself again, unless the user chose a wait policy. */
static void tune_openmp_wait(char **argv) {
  if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
  if (setenv("GOMP_SPINCOUNT", "10000", 1) != 0) return;
  execv("/proc/self/exe", argv); /* returns only on failure: go on as we are */
}

int main(int argc, char **argv) {
  tune_openmp_wait(argv);
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "engine: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_engine);
  lua_setfield(L, -2, "engine");
  lua_pop(L, 1);

  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, boot);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = 1;
  if (lua_pcall(L, 2, 1, 1) != LUA_OK)
    fprintf(stderr, "engine: %s\n", lua_tostring(L, -1));
  else
    status = (int)lua_tointeger(L, -1);
  lua_close(L);
  return status;
}
