/* tokenizer_load.c — making tokenizers: from a Hugging Face tokenizer.json,
 * from GPT-2's vocab.json + merges.txt, and the plain byte-level one; plus
 * the bos/eos/pad tokens and added tokens of tokenizer_config.json.
 *
 * What is read from tokenizer.json: model (type BPE: vocab, merges as
 * "a b" strings or [a, b] pairs, unk_token, fuse_unk, ignore_merges),
 * added_tokens, normalizer (null or NFC), pre_tokenizer (ByteLevel, or a
 * Sequence of Split regexes with the Isolated behaviour ending in
 * ByteLevel), post_processor (ByteLevel, TemplateProcessing, Roberta/Bert
 * processing, or a Sequence of those: what add_special_tokens adds), and
 * decoder (ByteLevel). Anything else is refused with an error naming the
 * file and the field. truncation and padding are kept for save() but do
 * not change encode(): batching pads and cuts on its own.
 * What it does not do: the encoding itself (tokenizer_bpe.c), saving
 * (tokenizer_save.c). */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP "tokenizer"

/* ======================================================================
 * Files
 * ====================================================================== */

/* the whole file, NUL-terminated; NULL with an error naming path */
static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return eng_errorf(OP ": cannot open %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (cap - n < 65536) {
      size_t nc = cap ? cap * 2 : 1 << 20;
      char *p = realloc(buf, nc + 1);
      if (!p) {
        free(buf);
        fclose(f);
        return eng_errorf(OP ": out of memory reading %s", path);
      }
      buf = p;
      cap = nc;
    }
    size_t k = fread(buf + n, 1, cap - n, f);
    n += k;
    if (k == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return eng_errorf(OP ": cannot read %s", path);
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

static bool file_exists(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  fclose(f);
  return true;
}

static json_t *parse_json(const char *text, size_t len, const char *name) {
  json_error_t e;
  json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &e);
  if (!root) return eng_errorf(OP ": %s:%d:%d: bad JSON: %s", name, e.line, e.column, e.text);
  return root;
}

/* ======================================================================
 * Small JSON readers (each error names the file and the field)
 * ====================================================================== */

static const char *jtype(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE: case JSON_FALSE: return "a boolean";
  default: return "null";
  }
}

/* optional boolean field: def when missing or null */
static int get_bool(const json_t *obj, const char *key, bool def, bool *out, const char *name, const char *field) {
  json_t *v = json_object_get(obj, key);
  *out = def;
  if (!v || json_is_null(v)) return 0;
  if (!json_is_boolean(v))
    return eng_errorf_status(OP ": %s: %s.%s must be a boolean, got %s", name, field, key, jtype(v));
  *out = json_is_true(v);
  return 0;
}

/* "type" of a component object */
static const char *get_type(const json_t *obj, const char *name, const char *field) {
  if (!json_is_object(obj)) return eng_errorf(OP ": %s: %s must be an object, got %s", name, field, jtype(obj));
  json_t *ty = json_object_get(obj, "type");
  if (!json_is_string(ty)) return eng_errorf(OP ": %s: %s.type is missing", name, field);
  return json_string_value(ty);
}

/* ======================================================================
 * The model
 * ====================================================================== */

static int set_vocab(eng_tokenizer *t, json_t *vocab, const char *name, const char *field) {
  if (!json_is_object(vocab))
    return eng_errorf_status(OP ": %s: %s must be an object of token: id, got %s", name, field,
                             vocab ? jtype(vocab) : "nothing");
  const char *key;
  size_t klen;
  json_t *v;
  json_int_t max = -1;
  json_object_keylen_foreach(vocab, key, klen, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX)
      return eng_errorf_status(OP ": %s: %s[\"%.100s\"] must be a token id (an integer >= 0), got %s", name,
                               field, key, jtype(v));
    if (json_integer_value(v) > max) max = json_integer_value(v);
  }
  if (max >= 0 && tok_ensure_id(t, max, OP)) return -1;
  if (tok_strmap_init(&t->model_map, (uint32_t)json_object_size(vocab), OP)) return -1;
  json_object_keylen_foreach(vocab, key, klen, v) {
    int32_t id = (int32_t)json_integer_value(v);
    if (t->flags[id] & TOK_F_MODEL)
      return eng_errorf_status(OP ": %s: %s gives id %d to both \"%.100s\" and \"%.100s\"", name, field, id,
                               t->model_str[id], key);
    if (tok_set_model_token(t, id, key, klen, OP)) return -1;
    int32_t old;
    if (tok_strmap_put(&t->model_map, t->model_str[id], t->model_len[id], id, &old, OP)) return -1;
  }
  for (int b = 0; b < 256; b++) {
    char sp[4];
    size_t n = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), sp);
    t->byte_id[b] = tok_strmap_get(&t->model_map, sp, n);
  }
  return 0;
}

static int reserve_merges(eng_tokenizer *t, size_t n) {
  if (n == 0) return 0;
  t->merge_a = malloc(sizeof *t->merge_a * n);
  t->merge_b = malloc(sizeof *t->merge_b * n);
  t->merge_out = malloc(sizeof *t->merge_out * n);
  if (!t->merge_a || !t->merge_b || !t->merge_out) return eng_errorf_status(OP ": out of memory for %zu merges", n);
  return tok_pairmap_init(&t->merges, (uint32_t)n, OP);
}

/* where a merge came from, formatted only for a message */
typedef struct {
  const char *file;
  size_t index;   /* 1-based */
  bool is_line;   /* merges.txt line number, else model.merges entry */
} merge_where;

static const char *where_str(const merge_where *w, char *buf, size_t len) {
  if (w->is_line) snprintf(buf, len, "%.500s:%zu", w->file, w->index);
  else snprintf(buf, len, "%.500s: model.merges, entry %zu", w->file, w->index);
  return buf;
}

/* the next merge: both parts and their concatenation must be in the
 * vocabulary */
static int add_merge(eng_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, const merge_where *w,
                     tok_buf *scratch) {
  char where[600];
  int32_t ia = tok_strmap_get(&t->model_map, a, alen);
  int32_t ib = tok_strmap_get(&t->model_map, b, blen);
  if (ia < 0 || ib < 0) {
    const char *miss = ia < 0 ? a : b;
    int mlen = (int)(ia < 0 ? alen : blen);
    return eng_errorf_status(OP ": %s: merge \"%.*s %.*s\": \"%.*s\" is not in the vocabulary",
                             where_str(w, where, sizeof where), (int)alen, a, (int)blen, b, mlen, miss);
  }
  scratch->n = 0;
  if (tok_buf_put(scratch, a, alen, OP) || tok_buf_put(scratch, b, blen, OP)) return -1;
  int32_t out = tok_strmap_get(&t->model_map, scratch->p, scratch->n);
  if (out < 0)
    return eng_errorf_status(OP ": %s: merge \"%.*s %.*s\": the merged token \"%s\" is not in the vocabulary",
                             where_str(w, where, sizeof where), (int)alen, a, (int)blen, b, scratch->p);
  int32_t r = (int32_t)t->n_merges++;
  t->merge_a[r] = ia;
  t->merge_b[r] = ib;
  t->merge_out[r] = out;
  return tok_pairmap_put(&t->merges, ia, ib, r, OP);
}

static int set_merges_json(eng_tokenizer *t, json_t *merges, const char *name) {
  if (!merges || json_is_null(merges)) return 0;
  if (!json_is_array(merges))
    return eng_errorf_status(OP ": %s: model.merges must be an array, got %s", name, jtype(merges));
  size_t n = json_array_size(merges);
  if (reserve_merges(t, n)) return -1;
  tok_buf scratch = {0};
  char where[600];
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    json_t *m = json_array_get(merges, i);
    merge_where w = {name, i + 1, false};
    if (json_is_string(m)) {
      const char *s = json_string_value(m);
      size_t len = json_string_length(m);
      const char *sp = memchr(s, ' ', len);
      if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
        rc = eng_errorf_status(OP ": %s: \"%.100s\" is not two tokens separated by one space",
                               where_str(&w, where, sizeof where), s);
      else
        rc = add_merge(t, s, (size_t)(sp - s), sp + 1, len - (size_t)(sp + 1 - s), &w, &scratch);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
      json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
      rc = add_merge(t, json_string_value(a), json_string_length(a), json_string_value(b), json_string_length(b),
                     &w, &scratch);
    } else {
      rc = eng_errorf_status(OP ": %s: expected \"a b\" or [\"a\", \"b\"], got %s",
                             where_str(&w, where, sizeof where), jtype(m));
    }
  }
  tok_buf_free(&scratch);
  return rc;
}

/* merges.txt: an optional "#version" line, then "a b" per line */
static int set_merges_txt(eng_tokenizer *t, const char *text, size_t len, const char *path) {
  size_t lines = 0;
  for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
  if (reserve_merges(t, lines + 1)) return -1;
  tok_buf scratch = {0};
  char where[600];
  size_t pos = 0, lineno = 0;
  int rc = 0;
  while (pos < len && !rc) {
    const char *line = text + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t ll = nl ? (size_t)(nl - line) : len - pos;
    pos += ll + (nl ? 1 : 0);
    lineno++;
    if (ll && line[ll - 1] == '\r') ll--;
    if (lineno == 1 && ll >= 8 && !memcmp(line, "#version", 8)) continue;
    merge_where w = {path, lineno, true};
    const char *sp = memchr(line, ' ', ll);
    if (!sp || memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - line))) {
      rc = eng_errorf_status(OP ": %s: \"%.*s\" is not two tokens separated by one space",
                             where_str(&w, where, sizeof where), (int)(ll > 100 ? 100 : ll), line);
      break;
    }
    rc = add_merge(t, line, (size_t)(sp - line), sp + 1, ll - (size_t)(sp + 1 - line), &w, &scratch);
  }
  tok_buf_free(&scratch);
  return rc;
}

static int set_model(eng_tokenizer *t, json_t *model, const char *name) {
  if (!json_is_object(model))
    return eng_errorf_status(OP ": %s: model must be an object, got %s", name, model ? jtype(model) : "nothing");
  json_t *ty = json_object_get(model, "type");
  const char *type = json_is_string(ty) ? json_string_value(ty) : NULL;
  if (!type && !json_object_get(model, "merges"))
    return eng_errorf_status(OP ": %s: model.type is missing (and there are no model.merges)", name);
  if (type && strcmp(type, "BPE")) {
    const char *what = !strcmp(type, "Unigram") ? " (a SentencePiece Unigram model)" : "";
    return eng_errorf_status(OP ": %s: model.type is \"%s\"%s: only BPE models are supported", name, type, what);
  }
  json_t *v = json_object_get(model, "dropout");
  if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
    return eng_errorf_status(OP ": %s: model.dropout is set: BPE dropout is not supported", name);
  const char *empty_only[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int i = 0; i < 2; i++) {
    v = json_object_get(model, empty_only[i]);
    if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
      return eng_errorf_status(OP ": %s: model.%s is set: only byte-level BPE without it is supported", name,
                               empty_only[i]);
  }
  bool byte_fallback = false;
  if (get_bool(model, "byte_fallback", false, &byte_fallback, name, "model")) return -1;
  if (byte_fallback)
    return eng_errorf_status(OP ": %s: model.byte_fallback is true (a SentencePiece-style BPE): only byte-level BPE "
                             "is supported", name);
  if (get_bool(model, "fuse_unk", false, &t->fuse_unk, name, "model")) return -1;
  if (get_bool(model, "ignore_merges", false, &t->ignore_merges, name, "model")) return -1;
  if (set_vocab(t, json_object_get(model, "vocab"), name, "model.vocab")) return -1;
  v = json_object_get(model, "unk_token");
  if (v && !json_is_null(v)) {
    if (!json_is_string(v))
      return eng_errorf_status(OP ": %s: model.unk_token must be a string, got %s", name, jtype(v));
    t->unk_id = tok_strmap_get(&t->model_map, json_string_value(v), json_string_length(v));
    if (t->unk_id < 0)
      return eng_errorf_status(OP ": %s: model.unk_token \"%.100s\" is not in model.vocab", name, json_string_value(v));
    t->unk_token = strdup(json_string_value(v));
    if (!t->unk_token) return eng_errorf_status(OP ": out of memory");
  }
  return set_merges_json(t, json_object_get(model, "merges"), name);
}

/* ======================================================================
 * Added tokens
 * ====================================================================== */

/* one added token from an object with content, special, lstrip, rstrip,
 * normalized, single_word (and id unless given) */
static int add_token_json(eng_tokenizer *t, json_t *a, int64_t id, const char *name, const char *field) {
  if (!json_is_object(a)) return eng_errorf_status(OP ": %s: %s must be an object, got %s", name, field, jtype(a));
  if (id < 0) {
    json_t *jid = json_object_get(a, "id");
    if (!json_is_integer(jid) || json_integer_value(jid) < 0 || json_integer_value(jid) >= INT32_MAX)
      return eng_errorf_status(OP ": %s: %s.id must be a token id (an integer >= 0), got %s", name, field,
                               jid ? jtype(jid) : "nothing");
    id = json_integer_value(jid);
  }
  json_t *c = json_object_get(a, "content");
  if (!json_is_string(c) || json_string_length(c) == 0)
    return eng_errorf_status(OP ": %s: %s.content must be a non-empty string", name, field);
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
  if (get_bool(a, "special", false, &special, name, field) || get_bool(a, "lstrip", false, &lstrip, name, field) ||
      get_bool(a, "rstrip", false, &rstrip, name, field) ||
      get_bool(a, "normalized", !special, &normalized, name, field) ||
      get_bool(a, "single_word", false, &single_word, name, field))
    return -1;
  if (single_word)
    return eng_errorf_status(OP ": %s: %s.single_word is true (\"%.100s\"): not supported", name, field,
                             json_string_value(c));
  for (int i = 0; i < t->n_added; i++)
    if (t->added[i].id == id)
      return eng_errorf_status(OP ": %s: %s: id %lld is already the added token \"%.100s\"", name, field,
                               (long long)id, t->added[i].content);
  return tok_add_added(t, json_string_value(c), json_string_length(c), (int32_t)id, special, lstrip, rstrip,
                       normalized, OP);
}

static int set_added_tokens(eng_tokenizer *t, json_t *arr, const char *name) {
  if (!arr || json_is_null(arr)) return 0;
  if (!json_is_array(arr)) return eng_errorf_status(OP ": %s: added_tokens must be an array, got %s", name, jtype(arr));
  char field[64];
  for (size_t i = 0; i < json_array_size(arr); i++) {
    snprintf(field, sizeof field, "added_tokens[%zu]", i);
    if (add_token_json(t, json_array_get(arr, i), -1, name, field)) return -1;
  }
  return 0;
}

/* ======================================================================
 * Normalizer, pre-tokenizer, post-processor, decoder
 * ====================================================================== */

static int set_normalizer(eng_tokenizer *t, json_t *n, const char *name) {
  if (!n || json_is_null(n)) return 0;
  const char *type = get_type(n, name, "normalizer");
  if (!type) return -1;
  if (!strcmp(type, "NFC")) {
    t->norm = TOK_NORM_NFC;
    return 0;
  }
  if (!strcmp(type, "Sequence")) {
    json_t *list = json_object_get(n, "normalizers");
    if (!json_is_array(list)) return eng_errorf_status(OP ": %s: normalizer.normalizers must be an array", name);
    for (size_t i = 0; i < json_array_size(list); i++) {
      char field[64];
      snprintf(field, sizeof field, "normalizer.normalizers[%zu]", i);
      const char *ty = get_type(json_array_get(list, i), name, field);
      if (!ty) return -1;
      if (strcmp(ty, "NFC"))
        return eng_errorf_status(OP ": %s: %s.type is \"%s\": only the NFC normalizer is supported", name, field, ty);
      t->norm = TOK_NORM_NFC;
    }
    return 0;
  }
  return eng_errorf_status(OP ": %s: normalizer.type is \"%s\": only NFC (or none) is supported", name, type);
}

static int add_step(eng_tokenizer *t, tok_step st, const char *name, const char *field) {
  if (t->n_steps == TOK_MAX_STEPS) {
    pcre2_code_free(st.re);
    return eng_errorf_status(OP ": %s: %s: more than %d pre-tokenizers", name, field, TOK_MAX_STEPS);
  }
  t->steps[t->n_steps++] = st;
  return 0;
}

static int pretok_bytelevel(eng_tokenizer *t, json_t *p, const char *name, const char *field) {
  bool prefix = true, use_regex = true;
  if (get_bool(p, "add_prefix_space", true, &prefix, name, field) ||
      get_bool(p, "use_regex", true, &use_regex, name, field))
    return -1;
  tok_step st = {TOK_STEP_BYTELEVEL, NULL, prefix};
  if (use_regex) {
    char where[600];
    snprintf(where, sizeof where, OP ": %.500s: %s", name, field);
    st.re = tok_compile_regex(TOK_GPT2_PATTERN, strlen(TOK_GPT2_PATTERN), false, where);
    if (!st.re) return -1;
  }
  return add_step(t, st, name, field);
}

static int pretok_split(eng_tokenizer *t, json_t *p, const char *name, const char *field) {
  json_t *beh = json_object_get(p, "behavior");
  if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated"))
    return eng_errorf_status(OP ": %s: %s.behavior is %s%s%s: only \"Isolated\" is supported", name, field,
                             json_is_string(beh) ? "\"" : "", json_is_string(beh) ? json_string_value(beh) : "missing",
                             json_is_string(beh) ? "\"" : "");
  bool invert = false;
  if (get_bool(p, "invert", false, &invert, name, field)) return -1;
  if (invert) return eng_errorf_status(OP ": %s: %s.invert is true: not supported", name, field);
  json_t *pat = json_object_get(p, "pattern");
  json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
  json_t *lit = json_is_object(pat) ? json_object_get(pat, "String") : NULL;
  json_t *s = re ? re : lit;
  if (!json_is_string(s))
    return eng_errorf_status(OP ": %s: %s.pattern must be {\"Regex\": \"...\"} or {\"String\": \"...\"}", name, field);
  char where[600];
  snprintf(where, sizeof where, OP ": %.500s: %s.pattern", name, field);
  tok_step st = {TOK_STEP_SPLIT, NULL, false};
  st.re = tok_compile_regex(json_string_value(s), json_string_length(s), !re, where);
  if (!st.re) return -1;
  return add_step(t, st, name, field);
}

static int set_pre_tokenizer(eng_tokenizer *t, json_t *p, const char *name) {
  if (!p || json_is_null(p))
    return eng_errorf_status(OP ": %s: pre_tokenizer is null: only byte-level BPE (a ByteLevel pre-tokenizer) is "
                             "supported", name);
  const char *type = get_type(p, name, "pre_tokenizer");
  if (!type) return -1;
  if (!strcmp(type, "ByteLevel")) return pretok_bytelevel(t, p, name, "pre_tokenizer");
  if (strcmp(type, "Sequence"))
    return eng_errorf_status(OP ": %s: pre_tokenizer.type is \"%s\": only ByteLevel, or a Sequence of Split then "
                             "ByteLevel, is supported", name, type);
  json_t *list = json_object_get(p, "pretokenizers");
  if (!json_is_array(list)) return eng_errorf_status(OP ": %s: pre_tokenizer.pretokenizers must be an array", name);
  size_t n = json_array_size(list);
  for (size_t i = 0; i < n; i++) {
    char field[64];
    snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%zu]", i);
    json_t *item = json_array_get(list, i);
    const char *ty = get_type(item, name, field);
    if (!ty) return -1;
    if (!strcmp(ty, "Split")) {
      if (i + 1 == n)
        return eng_errorf_status(OP ": %s: %s is a Split, but the last pre-tokenizer must be ByteLevel", name, field);
      if (pretok_split(t, item, name, field)) return -1;
    } else if (!strcmp(ty, "ByteLevel")) {
      if (i + 1 != n)
        return eng_errorf_status(OP ": %s: %s is a ByteLevel before the last pre-tokenizer: not supported", name, field);
      if (pretok_bytelevel(t, item, name, field)) return -1;
    } else {
      return eng_errorf_status(OP ": %s: %s.type is \"%s\": only Split and ByteLevel are supported", name, field, ty);
    }
  }
  if (n == 0) return eng_errorf_status(OP ": %s: pre_tokenizer.pretokenizers is empty: it must end in ByteLevel", name);
  return 0;
}

/* the id of a post-processor's special token given as [content, id] */
static int pair_token(json_t *pair, int32_t *id, const char *name, const char *field) {
  json_t *jid = json_array_get(pair, 1);
  if (!json_is_array(pair) || !json_is_integer(jid) || json_integer_value(jid) < 0 ||
      json_integer_value(jid) >= INT32_MAX)
    return eng_errorf_status(OP ": %s: %s must be [token, id]", name, field);
  *id = (int32_t)json_integer_value(jid);
  return 0;
}

static int push_ids(int32_t **arr, int *n, const int32_t *ids, int k) {
  int32_t *a = realloc(*arr, sizeof *a * (size_t)(*n + k + 1));
  if (!a) return eng_errorf_status(OP ": out of memory");
  memcpy(a + *n, ids, sizeof *ids * (size_t)k);
  *arr = a;
  *n += k;
  return 0;
}

static int post_template(eng_tokenizer *t, json_t *p, const char *name, const char *field) {
  json_t *single = json_object_get(p, "single");
  json_t *specials = json_object_get(p, "special_tokens");
  if (!json_is_array(single)) return eng_errorf_status(OP ": %s: %s.single must be an array", name, field);
  bool seen_a = false;
  for (size_t i = 0; i < json_array_size(single); i++) {
    json_t *item = json_array_get(single, i);
    json_t *seq = json_object_get(item, "Sequence");
    json_t *sp = json_object_get(item, "SpecialToken");
    if (seq) {
      const char *sid = json_string_value(json_object_get(seq, "id"));
      if (!sid || strcmp(sid, "A") || seen_a)
        return eng_errorf_status(OP ": %s: %s.single[%zu]: only one Sequence \"A\" is supported", name, field, i);
      seen_a = true;
    } else if (sp) {
      const char *sid = json_string_value(json_object_get(sp, "id"));
      json_t *def = sid ? json_object_get(specials, sid) : NULL;
      json_t *ids = json_object_get(def, "ids");
      if (!json_is_array(ids))
        return eng_errorf_status(OP ": %s: %s.single[%zu]: special token %s%s%s has no ids in %s.special_tokens",
                                 name, field, i, sid ? "\"" : "", sid ? sid : "(unnamed)", sid ? "\"" : "", field);
      for (size_t k = 0; k < json_array_size(ids); k++) {
        json_t *v = json_array_get(ids, k);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX)
          return eng_errorf_status(OP ": %s: %s.special_tokens[\"%s\"].ids must hold token ids", name, field, sid);
        int32_t id = (int32_t)json_integer_value(v);
        if (push_ids(seen_a ? &t->suffix_ids : &t->prefix_ids, seen_a ? &t->n_suffix : &t->n_prefix, &id, 1))
          return -1;
      }
    } else {
      return eng_errorf_status(OP ": %s: %s.single[%zu] must be a Sequence or a SpecialToken", name, field, i);
    }
  }
  if (!seen_a) return eng_errorf_status(OP ": %s: %s.single has no Sequence \"A\"", name, field);
  return 0;
}

static int post_one(eng_tokenizer *t, json_t *p, const char *name, const char *field) {
  const char *type = get_type(p, name, field);
  if (!type) return -1;
  if (!strcmp(type, "ByteLevel")) return 0;
  if (!strcmp(type, "TemplateProcessing")) return post_template(t, p, name, field);
  if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
    int32_t cls = -1, sep = -1;
    char f[128];
    snprintf(f, sizeof f, "%s.cls", field);
    if (pair_token(json_object_get(p, "cls"), &cls, name, f)) return -1;
    snprintf(f, sizeof f, "%s.sep", field);
    if (pair_token(json_object_get(p, "sep"), &sep, name, f)) return -1;
    return push_ids(&t->prefix_ids, &t->n_prefix, &cls, 1) || push_ids(&t->suffix_ids, &t->n_suffix, &sep, 1) ? -1 : 0;
  }
  return eng_errorf_status(OP ": %s: %s.type is \"%s\": only ByteLevel, TemplateProcessing, RobertaProcessing, "
                           "BertProcessing and Sequence are supported", name, field, type);
}

static int set_post_processor(eng_tokenizer *t, json_t *p, const char *name) {
  if (!p || json_is_null(p)) return 0;
  const char *type = get_type(p, name, "post_processor");
  if (!type) return -1;
  if (strcmp(type, "Sequence")) return post_one(t, p, name, "post_processor");
  json_t *list = json_object_get(p, "processors");
  if (!json_is_array(list)) return eng_errorf_status(OP ": %s: post_processor.processors must be an array", name);
  for (size_t i = 0; i < json_array_size(list); i++) {
    char field[64];
    snprintf(field, sizeof field, "post_processor.processors[%zu]", i);
    if (post_one(t, json_array_get(list, i), name, field)) return -1;
  }
  return 0;
}

static int check_decoder(json_t *d, const char *name) {
  if (!d || json_is_null(d))
    return eng_errorf_status(OP ": %s: decoder is null: only the ByteLevel decoder is supported", name);
  const char *type = get_type(d, name, "decoder");
  if (!type) return -1;
  if (!strcmp(type, "ByteLevel")) return 0;
  if (!strcmp(type, "Sequence")) {
    json_t *list = json_object_get(d, "decoders");
    if (!json_is_array(list) || json_array_size(list) == 0)
      return eng_errorf_status(OP ": %s: decoder.decoders must be a non-empty array", name);
    for (size_t i = 0; i < json_array_size(list); i++) {
      char field[64];
      snprintf(field, sizeof field, "decoder.decoders[%zu]", i);
      const char *ty = get_type(json_array_get(list, i), name, field);
      if (!ty) return -1;
      if (strcmp(ty, "ByteLevel"))
        return eng_errorf_status(OP ": %s: %s.type is \"%s\": only ByteLevel is supported", name, field, ty);
    }
    return 0;
  }
  return eng_errorf_status(OP ": %s: decoder.type is \"%s\": only ByteLevel is supported", name, type);
}

static json_t *keep(json_t *v) { return v && !json_is_null(v) ? json_incref(v) : NULL; }

static int from_tokenizer_json(eng_tokenizer *t, json_t *root, const char *name) {
  if (!json_is_object(root)) return eng_errorf_status(OP ": %s: expected a JSON object, got %s", name, jtype(root));
  if (set_model(t, json_object_get(root, "model"), name)) return -1;
  if (set_added_tokens(t, json_object_get(root, "added_tokens"), name)) return -1;
  if (set_normalizer(t, json_object_get(root, "normalizer"), name)) return -1;
  if (set_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), name)) return -1;
  if (set_post_processor(t, json_object_get(root, "post_processor"), name)) return -1;
  if (check_decoder(json_object_get(root, "decoder"), name)) return -1;
  for (int i = 0; i < t->n_prefix + t->n_suffix; i++) {
    int32_t id = i < t->n_prefix ? t->prefix_ids[i] : t->suffix_ids[i - t->n_prefix];
    if (id >= t->vocab_size || !(t->flags[id] & TOK_F_PRESENT))
      return eng_errorf_status(OP ": %s: post_processor adds token id %d, which is not in the vocabulary", name, id);
  }
  t->j_normalizer = keep(json_object_get(root, "normalizer"));
  t->j_pre_tokenizer = keep(json_object_get(root, "pre_tokenizer"));
  t->j_post_processor = keep(json_object_get(root, "post_processor"));
  t->j_decoder = keep(json_object_get(root, "decoder"));
  t->j_truncation = keep(json_object_get(root, "truncation"));
  t->j_padding = keep(json_object_get(root, "padding"));
  return 0;
}

/* ======================================================================
 * tokenizer_config.json: special tokens (and added tokens for GPT-2 files)
 * ====================================================================== */

/* -1: the key is absent (guess); -2: null (none); else the id */
static int64_t config_special(eng_tokenizer *t, json_t *cfg, const char *key, const char *name) {
  json_t *v = json_object_get(cfg, key);
  if (!v) return -1;
  if (json_is_null(v)) return -2;
  if (json_is_object(v)) v = json_object_get(v, "content");
  if (!json_is_string(v)) {
    eng_errorf(OP ": %s: %s must be a string or an object with a content string", name, key);
    return -3;
  }
  int64_t id = eng_tok_id(t, json_string_value(v), json_string_length(v));
  if (id < 0) {
    eng_errorf(OP ": %s: %s \"%.100s\" is not in the vocabulary", name, key, json_string_value(v));
    return -3;
  }
  return id;
}

/* the usual names, among the special tokens */
static int32_t guess_special(eng_tokenizer *t, const char *const *names) {
  for (int i = 0; names[i]; i++) {
    int32_t id = tok_strmap_get(&t->added_map, names[i], strlen(names[i]));
    if (id >= 0 && (t->flags[id] & TOK_F_SPECIAL)) return id;
  }
  return -1;
}

static const char *const EOS_NAMES[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", NULL};
static const char *const BOS_NAMES[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|bos|>", NULL};
static const char *const PAD_NAMES[] = {"<pad>", "<|pad|>", "[PAD]", "<|padding|>", NULL};

static int resolve_specials(eng_tokenizer *t, json_t *cfg, const char *name) {
  const char *keys[3] = {"eos_token", "bos_token", "pad_token"};
  const char *const *guesses[3] = {EOS_NAMES, BOS_NAMES, PAD_NAMES};
  int32_t *dst[3] = {&t->eos_id, &t->bos_id, &t->pad_id};
  for (int i = 0; i < 3; i++) {
    int64_t id = cfg ? config_special(t, cfg, keys[i], name) : -1;
    if (id == -3) return -1;
    *dst[i] = id == -1 ? guess_special(t, guesses[i]) : id == -2 ? -1 : (int32_t)id;
  }
  return 0;
}

static int config_added_tokens(eng_tokenizer *t, json_t *cfg, const char *name) {
  json_t *dec = json_object_get(cfg, "added_tokens_decoder");
  if (!dec || json_is_null(dec)) return 0;
  if (!json_is_object(dec))
    return eng_errorf_status(OP ": %s: added_tokens_decoder must be an object, got %s", name, jtype(dec));
  const char *key;
  json_t *v;
  json_object_foreach(dec, key, v) {
    char *end;
    errno = 0;
    long long id = strtoll(key, &end, 10);
    char field[96];
    snprintf(field, sizeof field, "added_tokens_decoder[\"%.40s\"]", key);
    if (!*key || *end || errno || id < 0 || id >= INT32_MAX)
      return eng_errorf_status(OP ": %s: %s: the key must be a token id", name, field);
    if (id < t->vocab_size && (t->flags[id] & TOK_F_ADDED)) continue; /* already added (GPT-2's default) */
    if (add_token_json(t, v, id, name, field)) return -1;
  }
  return 0;
}

/* ======================================================================
 * Public makers
 * ====================================================================== */

static eng_tokenizer *finish(eng_tokenizer *t, json_t *cfg, const char *cfg_name) {
  if (tok_finish_added(t, OP) || resolve_specials(t, cfg, cfg_name) || tok_prepare(t, OP)) {
    eng_tok_free(t);
    return NULL;
  }
  return t;
}

static int keep_config(eng_tokenizer *t, const char *text, size_t len) {
  t->config_text = malloc(len + 1);
  if (!t->config_text) return eng_errorf_status(OP ": out of memory");
  memcpy(t->config_text, text, len);
  t->config_text[len] = 0;
  t->config_len = len;
  return 0;
}

/* tokenizer.json text (name in messages) and an optional
 * tokenizer_config.json text (cfg_name in messages) */
static eng_tokenizer *load_json(const char *json, size_t len, const char *name, const char *config_json,
                                size_t config_len, const char *cfg_name) {
  json_t *root = parse_json(json, len, name);
  if (!root) return NULL;
  json_t *cfg = NULL;
  if (config_json) {
    cfg = parse_json(config_json, config_len, cfg_name);
    if (!cfg) {
      json_decref(root);
      return NULL;
    }
    if (!json_is_object(cfg)) {
      json_decref(root), json_decref(cfg);
      return eng_errorf(OP ": %s: expected a JSON object", cfg_name);
    }
  }
  eng_tokenizer *t = tok_new();
  if (!t || from_tokenizer_json(t, root, name) || (cfg && keep_config(t, config_json, config_len))) {
    eng_tok_free(t);
    t = NULL;
  } else {
    t = finish(t, cfg, cfg_name);
  }
  json_decref(root);
  json_decref(cfg);
  return t;
}

eng_tokenizer *eng_tok_load_json(const char *json, size_t len, const char *name, const char *config_json,
                                 size_t config_len) {
  if (!json) return eng_errorf(OP ": no tokenizer.json text");
  return load_json(json, len, name ? name : "tokenizer.json", config_json, config_len, "tokenizer_config.json");
}

/* GPT-2 style: vocab.json + merges.txt, GPT-2's regex, ByteLevel decoding */
static int from_gpt2_files(eng_tokenizer *t, const char *vocab_path, const char *merges_path, json_t *cfg) {
  size_t len;
  char *text = read_file(vocab_path, &len);
  if (!text) return -1;
  json_t *vocab = parse_json(text, len, vocab_path);
  free(text);
  if (!vocab) return -1;
  int rc = set_vocab(t, vocab, vocab_path, "the vocabulary");
  json_decref(vocab);
  if (rc) return -1;
  text = read_file(merges_path, &len);
  if (!text) return -1;
  rc = set_merges_txt(t, text, len, merges_path);
  free(text);
  if (rc) return -1;
  bool prefix = false;
  if (cfg && get_bool(cfg, "add_prefix_space", false, &prefix, "tokenizer_config.json", "(top level)")) return -1;
  tok_step st = {TOK_STEP_BYTELEVEL, NULL, prefix};
  st.re = tok_compile_regex(TOK_GPT2_PATTERN, strlen(TOK_GPT2_PATTERN), false, OP);
  if (!st.re) return -1;
  t->steps[t->n_steps++] = st;
  if (cfg && config_added_tokens(t, cfg, "tokenizer_config.json")) return -1;
  int32_t eot = tok_strmap_get(&t->model_map, "<|endoftext|>", 13);
  if (eot >= 0 && !(t->flags[eot] & TOK_F_ADDED) &&
      tok_add_added(t, "<|endoftext|>", 13, eot, true, false, false, true, OP))
    return -1;
  return 0;
}

static char *join(const char *dir, const char *file) {
  size_t n = strlen(dir) + strlen(file) + 2;
  char *p = malloc(n);
  if (!p) return eng_errorf(OP ": out of memory");
  snprintf(p, n, "%s/%s", dir, file);
  return p;
}

eng_tokenizer *eng_tok_load(const char *dir) {
  if (!dir) return eng_errorf(OP ": no directory given");
  char *tj = join(dir, "tokenizer.json"), *vj = join(dir, "vocab.json"), *mt = join(dir, "merges.txt");
  char *cj = join(dir, "tokenizer_config.json");
  eng_tokenizer *t = NULL;
  char *text = NULL, *ctext = NULL;
  size_t len = 0, clen = 0;
  json_t *cfg = NULL;
  if (!tj || !vj || !mt || !cj) goto out;
  if (file_exists(cj)) {
    ctext = read_file(cj, &clen);
    if (!ctext) goto out;
  }
  if (file_exists(tj)) {
    text = read_file(tj, &len);
    if (text) t = load_json(text, len, tj, ctext, clen, cj);
    goto out;
  }
  if (!file_exists(vj) || !file_exists(mt)) {
    eng_errorf(OP ": %s has no tokenizer.json, nor vocab.json and merges.txt", dir);
    goto out;
  }
  if (ctext) {
    cfg = parse_json(ctext, clen, cj);
    if (!cfg) goto out;
    if (!json_is_object(cfg)) {
      eng_errorf(OP ": %s: expected a JSON object", cj);
      goto out;
    }
  }
  t = tok_new();
  if (!t) goto out;
  if (from_gpt2_files(t, vj, mt, cfg) || (ctext && keep_config(t, ctext, clen))) {
    eng_tok_free(t);
    t = NULL;
    goto out;
  }
  t = finish(t, cfg, cj);
out:
  json_decref(cfg);
  free(text), free(ctext), free(tj), free(vj), free(mt), free(cj);
  return t;
}

eng_tokenizer *eng_tok_bytes(const char *const *specials, int n, const char *eos, const char *bos, const char *pad) {
  if (n < 0 || (n > 0 && !specials)) return eng_errorf("bytes: bad list of special tokens");
  eng_tokenizer *t = tok_new();
  if (!t) return NULL;
  if (tok_ensure_id(t, 255 + n, "bytes") || tok_strmap_init(&t->model_map, 256, "bytes")) goto fail;
  for (int b = 0; b < 256; b++) {
    char sp[4];
    size_t k = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), sp);
    if (tok_set_model_token(t, b, sp, k, "bytes") ||
        tok_strmap_put(&t->model_map, t->model_str[b], t->model_len[b], b, NULL, "bytes"))
      goto fail;
    t->byte_id[b] = b;
  }
  for (int i = 0; i < n; i++) {
    const char *s = specials[i];
    size_t len = s ? strlen(s) : 0;
    if (!len) {
      eng_errorf("bytes: special token %d is empty", i + 1);
      goto fail;
    }
    if (!tok_is_utf8(s, len)) {
      eng_errorf("bytes: special token %d is not valid UTF-8", i + 1);
      goto fail;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(specials[j], s)) {
        eng_errorf("bytes: special token \"%.100s\" is given twice (%d and %d)", s, j + 1, i + 1);
        goto fail;
      }
    if (tok_add_added(t, s, len, 256 + i, true, false, false, false, "bytes")) goto fail;
  }
  t->steps[0] = (tok_step){TOK_STEP_BYTELEVEL, NULL, false};
  t->n_steps = 1;
  if (tok_finish_added(t, "bytes") || tok_prepare(t, "bytes")) goto fail;
  const char *names[3] = {eos, bos, pad};
  const char *what[3] = {"eos", "bos", "pad"};
  const char *const *guesses[3] = {EOS_NAMES, BOS_NAMES, PAD_NAMES};
  int32_t *dst[3] = {&t->eos_id, &t->bos_id, &t->pad_id};
  for (int i = 0; i < 3; i++) {
    if (!names[i]) {
      *dst[i] = guess_special(t, guesses[i]);
    } else if (!*names[i]) {
      *dst[i] = -1;
    } else {
      *dst[i] = tok_strmap_get(&t->added_map, names[i], strlen(names[i]));
      if (*dst[i] < 0) {
        eng_errorf("bytes: %s \"%.100s\" is not one of the special tokens", what[i], names[i]);
        goto fail;
      }
    }
  }
  return t;
fail:
  eng_tok_free(t);
  return NULL;
}
