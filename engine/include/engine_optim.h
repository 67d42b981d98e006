/* engine_optim.h — part of the public API, included by engine.h. */
#ifndef ENGINE_OPTIM_H
#define ENGINE_OPTIM_H

#endif
