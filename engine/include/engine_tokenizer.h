/* engine_tokenizer.h — part of the public API, included by engine.h.
 *
 * Byte-level BPE tokenizers as GPT-2, Qwen2 and Llama-3 use them, loaded
 * from a Hugging Face model directory (tokenizer.json, or GPT-2's
 * vocab.json + merges.txt), and a plain byte-level tokenizer (ids 0-255 are
 * the bytes, special tokens after them) for tiny models.
 *
 * Encoding follows Hugging Face tokenizers: added tokens found in the text
 * are split off first (leftmost-longest; special ones too unless asked not
 * to), each remaining segment is normalized (none, or NFC), pre-tokenized
 * (GPT-2's regex, or Split regexes such as Qwen2.5's and Llama-3's), mapped
 * to bytes and merged by rank. Any byte string encodes, invalid UTF-8 too,
 * and decodes back to the same bytes (Hugging Face would replace invalid
 * UTF-8 by U+FFFD when decoding; this API returns the bytes themselves).
 *
 * Ids are 0-based vocabulary ids. A tokenizer is not safe to use from two
 * threads at once (it keeps a cache and scratch buffers); separate
 * tokenizers are independent. Functions that fail return NULL or -1 and
 * leave a message in eng_last_error().
 */
#ifndef ENGINE_TOKENIZER_H
#define ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng_tokenizer eng_tokenizer;

/* ---- making and freeing ------------------------------------------------- */
/* dir/tokenizer.json if it exists, else dir/vocab.json + dir/merges.txt
 * (GPT-2 style: GPT-2's regex, <|endoftext|> registered as special when in
 * the vocabulary). dir/tokenizer_config.json, when present, gives
 * bos/eos/pad tokens (and, for vocab.json + merges.txt, added_tokens_decoder
 * and add_prefix_space). Unsupported settings (a Unigram or WordPiece
 * model, a Metaspace pre-tokenizer, ...) are errors naming file and field. */
eng_tokenizer *eng_tok_load(const char *dir);
/* the same from memory: a tokenizer.json text (name is used in messages);
 * config_json (may be NULL) is a tokenizer_config.json text */
eng_tokenizer *eng_tok_load_json(const char *json, size_t len, const char *name,
                                 const char *config_json, size_t config_len);
/* the plain byte-level tokenizer: ids 0-255 are bytes, specials[i] gets id
 * 256 + i. eos/bos/pad name one of the specials (NULL: guessed from the
 * usual names, "<|endoftext|>", "<pad>", ...; "" for none). */
eng_tokenizer *eng_tok_bytes(const char *const *specials, int n_specials, const char *eos,
                             const char *bos, const char *pad);
void eng_tok_free(eng_tokenizer *t);

/* ---- saving ------------------------------------------------------------- */
/* writes dir/tokenizer.json (loadable by Hugging Face tokenizers),
 * dir/tokenizer_config.json (the one loaded, or a small one naming the
 * special tokens), and vocab.json + merges.txt when the merges can be
 * written in that format (no merge part holds a space). dir must exist. */
int eng_tok_save(const eng_tokenizer *t, const char *dir);

/* ---- facts ---------------------------------------------------------------- */
/* one more than the largest id (model vocabulary and added tokens) */
int64_t eng_tok_vocab_size(const eng_tokenizer *t);
/* -1 when the tokenizer has none */
int64_t eng_tok_eos_id(const eng_tokenizer *t);
int64_t eng_tok_bos_id(const eng_tokenizer *t);
int64_t eng_tok_pad_id(const eng_tokenizer *t);
/* the id of a token as the vocabulary spells it ("Ġthe"), added tokens
 * first; -1 when absent (no error set) */
int64_t eng_tok_id(const eng_tokenizer *t, const char *token, size_t len);
/* the vocabulary's spelling of id (borrowed, *len set); NULL when the id is
 * not in the vocabulary (no error set) */
const char *eng_tok_token(const eng_tokenizer *t, int64_t id, size_t *len);
bool eng_tok_is_special(const eng_tokenizer *t, int64_t id);

/* ---- encoding and decoding ------------------------------------------------ */
typedef struct {
  /* apply the post-processor's template (e.g. Llama-3's <|begin_of_text|>
   * in front); GPT-2's and Qwen2's add nothing */
  bool add_special_tokens;
  /* treat special tokens in the text as plain text (their bytes are
   * tokenized like any other); non-special added tokens still match */
  bool split_special_tokens;
} eng_tok_encode_opts;

/* text (len bytes, any bytes) -> *ids, a buffer owned by t that stays valid
 * until the next call on t; returns the count, or -1. opts may be NULL. */
int64_t eng_tok_encode(eng_tokenizer *t, const char *text, size_t len,
                       const eng_tok_encode_opts *opts, const int32_t **ids);
/* ids -> bytes in a buffer owned by t (valid until the next call on t, and
 * NUL-terminated after *len bytes); NULL with
 * "decode: unknown token id 60000 at position 3 (vocabulary has 50257)"
 * (positions counted from 1) when an id is not in the vocabulary */
const char *eng_tok_decode(eng_tokenizer *t, const int64_t *ids, size_t n,
                           bool skip_special_tokens, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
