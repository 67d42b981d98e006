/* tokenizer_internal.h — what the tokenizer's files share: the tokenizer
 * struct, the growable buffer, the string and pair hash maps, the byte-level
 * alphabet, and the functions each file offers the others.
 *   tokenizer_util.c    the buffer, hashing, the maps, UTF-8, the alphabet
 *   tokenizer_bpe.c     per-id tables, encoding (added tokens, pipeline,
 *                       BPE merges with a cache), decoding, lookups, freeing
 *   tokenizer_load.c    tokenizer.json, vocab.json + merges.txt,
 *                       tokenizer_config.json, the plain byte-level tokenizer
 *   tokenizer_save.c    writing tokenizer.json, vocab.json, merges.txt
 *   tokenizer_nfc.c     Unicode NFC (with tables in tokenizer_nfc_data.c)
 * Nothing here is public API. */
#ifndef ENGINE_TOKENIZER_INTERNAL_H
#define ENGINE_TOKENIZER_INTERNAL_H

#include "internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

/* ---- growable byte buffer ------------------------------------------------- */
typedef struct {
  char *p;
  size_t n, cap;
} tok_buf;
/* room for `more` bytes after n; -1 (with an error naming op) when out of memory */
int tok_buf_reserve(tok_buf *b, size_t more, const char *op);
int tok_buf_put(tok_buf *b, const void *s, size_t len, const char *op);
void tok_buf_free(tok_buf *b);

/* ---- hashing ---------------------------------------------------------------- */
uint64_t tok_hash(const void *s, size_t len);

/* string -> id map; keys are borrowed (they live as long as the map) */
typedef struct {
  const char *key;
  uint32_t len;
  int32_t id; /* -1 empty */
} tok_slot;
typedef struct {
  tok_slot *slots;
  uint32_t mask; /* capacity - 1 */
  uint32_t count;
} tok_strmap;

/* (left id, right id) -> merge rank */
typedef struct {
  uint64_t *keys; /* UINT64_MAX empty */
  int32_t *ranks;
  uint32_t mask;
  uint32_t count;
} tok_pairmap;

/* the cache of encoded pieces: bytes -> ids, all in one arena, cleared when
 * full */
typedef struct {
  uint64_t *hashes;
  uint32_t *key_off, *key_len, *ids_off, *ids_len; /* key_len UINT32_MAX: empty */
  uint32_t mask, count;
  tok_buf keys;  /* key bytes */
  int32_t *ids;  /* id arena */
  size_t ids_n, ids_cap;
} tok_cache;

/* ---- added tokens and the trie that finds them in text ------------------- */
typedef struct {
  char *content;
  uint32_t len;
  int32_t id;
  bool special, lstrip, rstrip, normalized;
} tok_added;

typedef struct {
  int32_t child, sibling; /* node indices, -1 none */
  int32_t token;          /* index into added[], -1 when no token ends here */
  uint8_t byte;
} tok_trie_node;

typedef struct {
  tok_trie_node *nodes;
  int32_t n, cap;
} tok_trie;

/* ---- the pre-tokenizer pipeline ------------------------------------------ */
typedef enum { TOK_STEP_SPLIT = 0, TOK_STEP_BYTELEVEL = 1 } tok_step_kind;
typedef struct {
  tok_step_kind kind;
  pcre2_code *re;        /* the split regex (ByteLevel: GPT-2's, or NULL when use_regex is false) */
  bool add_prefix_space; /* ByteLevel */
} tok_step;
#define TOK_MAX_STEPS 8

typedef enum { TOK_NORM_NONE = 0, TOK_NORM_NFC = 1 } tok_norm_kind;

/* GPT-2's pre-tokenizer regex (Hugging Face's ByteLevel uses the same) */
#define TOK_GPT2_PATTERN \
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

struct eng_tokenizer {
  /* per id (vocab_size entries; holes have no TOK_F_PRESENT) */
  int64_t vocab_size, id_cap;
  const char **tok_str;  /* how the id is spelled: an added token's content,
                            else the model's spelling (borrowed from those) */
  uint32_t *tok_len;
  char **model_str;      /* model.vocab's spelling (owned), NULL when none */
  uint32_t *model_len;
  char **dec;            /* the bytes decode() writes for the id (owned) */
  uint32_t *dec_len;
  uint8_t *flags;        /* TOK_F_* */
  /* the model (BPE) */
  tok_strmap model_map;  /* model.vocab spelling -> id */
  int32_t byte_id[256];  /* id of each byte's one-char token, -1 when absent */
  int32_t *merge_a, *merge_b, *merge_out; /* by rank */
  int64_t n_merges;
  tok_pairmap merges;
  bool ignore_merges;
  int32_t unk_id;        /* -1 none */
  /* added tokens */
  tok_added *added;
  int n_added;
  tok_strmap added_map;  /* content -> id */
  tok_trie trie_raw, trie_norm; /* normalized == false / true */
  /* pipeline */
  tok_norm_kind norm;
  tok_step steps[TOK_MAX_STEPS];
  int n_steps;
  /* post-processor template for add_special_tokens */
  int32_t *prefix_ids, *suffix_ids;
  int n_prefix, n_suffix;
  /* specials */
  int32_t eos_id, bos_id, pad_id;
  /* what save() writes back as it was read (JSON subtrees; NULL: build) */
  json_t *j_normalizer, *j_pre_tokenizer, *j_post_processor, *j_decoder;
  json_t *j_truncation, *j_padding;
  char *unk_token;       /* model.unk_token, NULL none */
  bool fuse_unk;
  char *config_text;     /* tokenizer_config.json as read, NULL none */
  size_t config_len;
  /* scratch */
  tok_cache cache;
  int32_t *out;          /* encode's result */
  size_t out_n, out_cap;
  tok_buf dec_buf, norm_buf, piece_buf, word_buf;
  pcre2_match_data *md;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jit_stack;
  /* BPE work arrays */
  int32_t *w_sym, *w_prev, *w_next;
  uint64_t *w_heap;
  size_t w_cap, w_heap_cap;
};

#define TOK_F_PRESENT 1
#define TOK_F_ADDED 2
#define TOK_F_SPECIAL 4
#define TOK_F_MODEL 8

/* ---- tokenizer_bpe.c ------------------------------------------------------ */
/* a new empty tokenizer (vocab_size 0); NULL when out of memory */
eng_tokenizer *tok_new(void);
/* grow the per-id arrays to hold id; -1 on failure */
int tok_ensure_id(eng_tokenizer *t, int64_t id, const char *op);
/* set model.vocab's spelling of id (copied) and, unless id is an added
 * token, its decode bytes by the byte-level rule. -1 on failure. */
int tok_set_model_token(eng_tokenizer *t, int32_t id, const char *s, size_t len, const char *op);

int tok_strmap_init(tok_strmap *m, uint32_t expected, const char *op);
/* key -> id (key borrowed); a key already there gets the new id (its old
 * id through *old, else -1) */
int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t id, int32_t *old, const char *op);
int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len);
void tok_strmap_free(tok_strmap *m);

int tok_pairmap_init(tok_pairmap *m, uint32_t expected, const char *op);
int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, const char *op);
int32_t tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b);
void tok_pairmap_free(tok_pairmap *m);

/* register an added token (content copied): id (which may also be a model
 * token) is then spelled and decoded by its content. -1 on failure. */
int tok_add_added(eng_tokenizer *t, const char *content, size_t len, int32_t id, bool special,
                  bool lstrip, bool rstrip, bool normalized, const char *op);
/* build the tries and the content map from added[]; call once after the
 * added tokens and the normalizer are set */
int tok_finish_added(eng_tokenizer *t, const char *op);
/* compile a pre-tokenizer regex (UTF, Unicode properties, JIT, invalid
 * UTF-8 tolerated); NULL with an error naming where */
pcre2_code *tok_compile_regex(const char *pattern, size_t len, bool literal, const char *where);
/* the scratch a tokenizer needs to encode; call once when loaded */
int tok_prepare(eng_tokenizer *t, const char *op);

/* the byte-level alphabet: byte -> code point, and code point -> byte
 * (-1 when the code point is not in the alphabet) */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);
/* append the byte-level spelling of bytes s[0..len) to b */
int tok_bytes_to_spelling(tok_buf *b, const char *s, size_t len, const char *op);
/* decode one UTF-8 char at s (n bytes left); returns its length, or 0 when
 * the bytes there are not valid UTF-8; *cp receives the code point */
size_t tok_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
size_t tok_utf8_encode(uint32_t cp, char *out);
bool tok_is_utf8(const char *s, size_t len);

/* ---- tokenizer_nfc.c and its tables (tokenizer_nfc_data.c) --------------- */
typedef struct { uint32_t cp; uint8_t ccc; } tok_nfc_ccc;   /* sorted by cp */
typedef struct { uint32_t cp, a, b; } tok_nfc_dec;          /* cp -> a b (b 0: a alone) */
typedef struct { uint32_t a, b, c; } tok_nfc_comp;          /* sorted by (a, b) */
typedef struct { uint32_t lo, hi; } tok_nfc_range;          /* sorted */
extern const tok_nfc_ccc tok_nfc_ccc_table[];
extern const int tok_nfc_ccc_table_n;
extern const tok_nfc_dec tok_nfc_dec_table[];
extern const int tok_nfc_dec_table_n;
extern const tok_nfc_comp tok_nfc_comp_table[];
extern const int tok_nfc_comp_table_n;
extern const tok_nfc_range tok_nfc_unsafe_table[];
extern const int tok_nfc_unsafe_table_n;
/* append NFC(s) to out; invalid UTF-8 bytes pass through unchanged and
 * stop composition across them. -1 when out of memory. */
int tok_nfc(const char *s, size_t len, tok_buf *out, const char *op);
/* true when NFC(s) == s for sure (fast check) */
bool tok_nfc_quick(const char *s, size_t len);

#endif
