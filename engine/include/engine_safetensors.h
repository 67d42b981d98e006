/* engine_safetensors.h — part of the public API, included by engine.h. */
#ifndef ENGINE_SAFETENSORS_H
#define ENGINE_SAFETENSORS_H

#endif
