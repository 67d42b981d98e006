/* tokenizer_save.c — writing a tokenizer as Hugging Face lays it out:
 * tokenizer.json (model BPE with vocab and merges, added tokens, and the
 * normalizer / pre-tokenizer / post-processor / decoder: the ones read, as
 * read, or for tokenizers made here the equivalent ByteLevel ones),
 * tokenizer_config.json (as read, or a small one naming the special
 * tokens), and GPT-2's vocab.json + merges.txt when the merges fit that
 * format. What it does not do: create the directory, or write a tokenizer
 * that Hugging Face would encode differently (the loader refuses those). */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP "save"

static json_t *bytelevel(bool prefix, bool trim, bool use_regex) {
  return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", prefix, "trim_offsets", trim,
                   "use_regex", use_regex);
}

static json_t *jstr(const char *s, size_t n) { return json_stringn(s, n); }

/* model.vocab: spelling -> id, in id order */
static json_t *vocab_json(const eng_tokenizer *t) {
  json_t *v = json_object();
  if (!v) return NULL;
  for (int64_t id = 0; id < t->vocab_size; id++) {
    if (!(t->flags[id] & TOK_F_MODEL)) continue;
    json_t *n = json_integer(id);
    if (!n || json_object_setn_new(v, t->model_str[id], t->model_len[id], n)) {
      json_decref(v);
      return NULL;
    }
  }
  return v;
}

/* "a b" strings when no part holds a space, else [a, b] pairs */
static bool merges_as_strings(const eng_tokenizer *t) {
  for (int64_t r = 0; r < t->n_merges; r++)
    if (memchr(t->model_str[t->merge_a[r]], ' ', t->model_len[t->merge_a[r]]) ||
        memchr(t->model_str[t->merge_b[r]], ' ', t->model_len[t->merge_b[r]]))
      return false;
  return true;
}

static json_t *merges_json(const eng_tokenizer *t) {
  json_t *m = json_array();
  if (!m) return NULL;
  bool strings = merges_as_strings(t);
  tok_buf b = {0};
  for (int64_t r = 0; r < t->n_merges; r++) {
    int32_t a = t->merge_a[r], c = t->merge_b[r];
    json_t *item;
    if (strings) {
      b.n = 0;
      if (tok_buf_put(&b, t->model_str[a], t->model_len[a], OP) || tok_buf_put(&b, " ", 1, OP) ||
          tok_buf_put(&b, t->model_str[c], t->model_len[c], OP)) {
        item = NULL;
      } else {
        item = jstr(b.p, b.n);
      }
    } else {
      item = json_pack("[s%, s%]", t->model_str[a], (size_t)t->model_len[a], t->model_str[c], (size_t)t->model_len[c]);
    }
    if (!item || json_array_append_new(m, item)) {
      tok_buf_free(&b);
      json_decref(m);
      return NULL;
    }
  }
  tok_buf_free(&b);
  return m;
}

static json_t *added_json(const eng_tokenizer *t) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  /* in id order, as Hugging Face writes them */
  for (int64_t id = 0; id < t->vocab_size; id++) {
    if (!(t->flags[id] & TOK_F_ADDED)) continue;
    const tok_added *a = NULL;
    for (int i = 0; i < t->n_added && !a; i++)
      if (t->added[i].id == id) a = &t->added[i];
    json_t *o = json_pack("{s:I, s:s%, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)id, "content", a->content,
                          (size_t)a->len, "single_word", 0, "lstrip", a->lstrip, "rstrip", a->rstrip, "normalized",
                          a->normalized, "special", a->special);
    if (!o || json_array_append_new(arr, o)) {
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

static json_t *or_null(json_t *v) { return v ? json_incref(v) : json_null(); }

static json_t *tokenizer_json(const eng_tokenizer *t) {
  json_t *pre = t->j_pre_tokenizer ? json_incref(t->j_pre_tokenizer)
                                   : bytelevel(t->steps[0].add_prefix_space, true, t->steps[0].re != NULL);
  json_t *post = t->j_pre_tokenizer ? or_null(t->j_post_processor) : bytelevel(true, false, true);
  json_t *dec = t->j_decoder ? json_incref(t->j_decoder) : bytelevel(true, true, true);
  json_t *norm = t->j_normalizer ? json_incref(t->j_normalizer)
                 : t->norm == TOK_NORM_NFC ? json_pack("{s:s}", "type", "NFC") : json_null();
  json_t *model = json_pack("{s:s, s:n, s:o, s:s, s:s, s:b, s:b}", "type", "BPE", "dropout", "unk_token",
                            t->unk_token ? json_string(t->unk_token) : json_null(), "continuing_subword_prefix", "",
                            "end_of_word_suffix", "", "fuse_unk", t->fuse_unk, "byte_fallback", 0);
  json_t *root = NULL;
  if (!pre || !post || !dec || !norm || !model) goto fail;
  if (t->ignore_merges && json_object_set_new(model, "ignore_merges", json_true())) goto fail;
  if (json_object_set_new(model, "vocab", vocab_json(t)) || json_object_set_new(model, "merges", merges_json(t)))
    goto fail;
  root = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "version", "1.0", "truncation",
                   or_null(t->j_truncation), "padding", or_null(t->j_padding), "added_tokens", added_json(t),
                   "normalizer", norm, "pre_tokenizer", pre, "post_processor", post, "decoder", dec, "model", model);
  return root;
fail:
  json_decref(pre), json_decref(post), json_decref(dec), json_decref(norm), json_decref(model);
  return NULL;
}

static json_t *config_json(const eng_tokenizer *t) {
  json_t *c = json_pack("{s:s, s:b}", "tokenizer_class", "PreTrainedTokenizerFast", "clean_up_tokenization_spaces", 0);
  if (!c) return NULL;
  const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
  int32_t ids[3] = {t->bos_id, t->eos_id, t->pad_id};
  for (int i = 0; i < 3; i++) {
    if (ids[i] < 0) continue;
    if (json_object_set_new(c, keys[i], jstr(t->tok_str[ids[i]], t->tok_len[ids[i]]))) {
      json_decref(c);
      return NULL;
    }
  }
  return c;
}

static int write_json(json_t *j, const char *dir, const char *file, size_t flags) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  if (!j) return eng_errorf_status(OP ": cannot build %s (out of memory)", path);
  int rc = json_dump_file(j, path, flags);
  json_decref(j);
  if (rc) return eng_errorf_status(OP ": cannot write %s: %s", path, strerror(errno));
  return 0;
}

static int write_text(const char *dir, const char *file, const char *text, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE *f = fopen(path, "wb");
  if (!f) return eng_errorf_status(OP ": cannot write %s: %s", path, strerror(errno));
  size_t k = fwrite(text, 1, len, f);
  int bad = k != len || fflush(f) != 0;
  bad |= fclose(f) != 0;
  if (bad) return eng_errorf_status(OP ": cannot write %s: %s", path, strerror(errno));
  return 0;
}

static int write_merges_txt(const eng_tokenizer *t, const char *dir) {
  tok_buf b = {0};
  int rc = tok_buf_put(&b, "#version: 0.2\n", 14, OP);
  for (int64_t r = 0; r < t->n_merges && !rc; r++) {
    int32_t a = t->merge_a[r], c = t->merge_b[r];
    rc = tok_buf_put(&b, t->model_str[a], t->model_len[a], OP) || tok_buf_put(&b, " ", 1, OP) ||
         tok_buf_put(&b, t->model_str[c], t->model_len[c], OP) || tok_buf_put(&b, "\n", 1, OP);
  }
  if (!rc) rc = write_text(dir, "merges.txt", b.p, b.n);
  tok_buf_free(&b);
  return rc;
}

int eng_tok_save(const eng_tokenizer *t, const char *dir) {
  if (!t || !dir) return eng_errorf_status(OP ": no tokenizer or directory");
  if (write_json(tokenizer_json(t), dir, "tokenizer.json", JSON_INDENT(2))) return -1;
  if (t->config_text ? write_text(dir, "tokenizer_config.json", t->config_text, t->config_len)
                     : write_json(config_json(t), dir, "tokenizer_config.json", JSON_INDENT(2)))
    return -1;
  if (!merges_as_strings(t)) return 0;
  if (write_json(vocab_json(t), dir, "vocab.json", JSON_COMPACT)) return -1;
  return write_merges_txt(t, dir);
}
