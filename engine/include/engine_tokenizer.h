/* engine_tokenizer.h — part of the public API, included by engine.h. */
#ifndef ENGINE_TOKENIZER_H
#define ENGINE_TOKENIZER_H

#endif
