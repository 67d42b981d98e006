/* test_tokenizer.c — the byte-level BPE tokenizers against committed
 * reference ids (tests/fixtures/gpt2_tokenizer/reference.json, made by
 * scripts/make_tokenizer_fixture.js with gpt-3-encoder and Hugging Face's
 * tokenizers.js), small tokenizer.json files built here with ids worked out
 * by hand (both spellings of merges, added and special tokens), round trips
 * of arbitrary bytes, NFC, save + load, and the exact error messages. */
#include "check.h"
#include "tokenizer_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fixture_dir[4096];

static void set_fixture_dir(void) {
  snprintf(fixture_dir, sizeof fixture_dir, "%s", __FILE__);
  char *slash = strrchr(fixture_dir, '/');
  if (slash) *slash = 0;
  else snprintf(fixture_dir, sizeof fixture_dir, ".");
  strncat(fixture_dir, "/../fixtures/gpt2_tokenizer", sizeof fixture_dir - strlen(fixture_dir) - 1);
}

static char *fixture_path(const char *file) {
  static char buf[4200];
  snprintf(buf, sizeof buf, "%s/%s", fixture_dir, file);
  return buf;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  size_t k = fread(buf, 1, (size_t)n, f);
  fclose(f);
  buf[k] = 0;
  if (len) *len = k;
  return buf;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  fputs(text, f);
  fclose(f);
}

static char *make_tmpdir(void) {
  static char dirs[8][64];
  static int next;
  char *d = dirs[next++ % 8];
  snprintf(d, 64, "/tmp/test_tokenizer_XXXXXX");
  return mkdtemp(d);
}

static void rm_dir(const char *dir) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* encode text and compare with the JSON array of ids */
static int ids_equal(eng_tokenizer *t, const char *text, size_t len, json_t *want, bool add_special) {
  const int32_t *ids;
  eng_tok_encode_opts o = {.add_special_tokens = add_special};
  int64_t n = eng_tok_encode(t, text, len, &o, &ids);
  if (n < 0) {
    fprintf(stderr, "  encode failed: %s\n", eng_last_error());
    return 0;
  }
  int ok = (size_t)n == json_array_size(want);
  for (int64_t i = 0; ok && i < n; i++) ok = ids[i] == json_integer_value(json_array_get(want, (size_t)i));
  if (!ok) {
    fprintf(stderr, "  text \"%.*s\": got", (int)(len > 60 ? 60 : len), text);
    for (int64_t i = 0; i < n && i < 30; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "; expected");
    for (size_t i = 0; i < json_array_size(want) && i < 30; i++)
      fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(want, i)));
    fprintf(stderr, "\n");
  }
  return ok;
}

/* decode(encode(text)) == text */
static int round_trips(eng_tokenizer *t, const char *text, size_t len) {
  const int32_t *ids;
  int64_t n = eng_tok_encode(t, text, len, NULL, &ids);
  if (n < 0) return 0;
  int64_t *ids64 = malloc(sizeof *ids64 * (size_t)(n + 1));
  for (int64_t i = 0; i < n; i++) ids64[i] = ids[i];
  size_t dlen;
  const char *d = eng_tok_decode(t, ids64, (size_t)n, false, &dlen);
  free(ids64);
  return d && dlen == len && !memcmp(d, text, len);
}

static json_t *reference(void) {
  static json_t *ref;
  if (!ref) {
    json_error_t e;
    ref = json_load_file(fixture_path("reference.json"), 0, &e);
    if (!ref) fprintf(stderr, "cannot read reference.json: %s\n", e.text);
  }
  return ref;
}

static eng_tokenizer *gpt2(void) {
  static eng_tokenizer *t;
  if (!t) {
    t = eng_tok_load(fixture_dir);
    if (!t) fprintf(stderr, "cannot load GPT-2: %s\n", eng_last_error());
  }
  return t;
}

/* ---- GPT-2 against gpt-3-encoder's ids ------------------------------------ */
static void test_gpt2_fixture(void) {
  eng_tokenizer *t = gpt2();
  json_t *cases = json_object_get(reference(), "gpt2");
  CHECK(t && json_array_size(cases) >= 80);
  if (!t || !cases) return;
  CHECK(eng_tok_vocab_size(t) == 50257);
  CHECK(eng_tok_eos_id(t) == 50256);
  CHECK(eng_tok_bos_id(t) == -1 && eng_tok_pad_id(t) == -1);
  size_t i;
  json_t *c;
  int bad = 0;
  json_array_foreach(cases, i, c) {
    json_t *text = json_object_get(c, "text");
    if (!ids_equal(t, json_string_value(text), json_string_length(text), json_object_get(c, "ids"), false)) bad++;
    if (!round_trips(t, json_string_value(text), json_string_length(text))) bad++;
  }
  CHECK(bad == 0);
  /* the same text twice: the second pass comes from the cache */
  json_array_foreach(cases, i, c) {
    json_t *text = json_object_get(c, "text");
    if (!ids_equal(t, json_string_value(text), json_string_length(text), json_object_get(c, "ids"), false)) bad++;
  }
  CHECK(bad == 0);
}

/* ---- variants on GPT-2's vocabulary against tokenizers.js --------------------- */
static json_t *gpt2_model(bool pairs, bool ignore_merges) {
  json_error_t e;
  json_t *vocab = json_load_file(fixture_path("vocab.json"), 0, &e);
  char *merges_txt = slurp(fixture_path("merges.txt"), NULL);
  json_t *merges = json_array();
  char *save = NULL;
  for (char *line = strtok_r(merges_txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (!strncmp(line, "#version", 8)) continue;
    if (pairs) {
      char *sp = strchr(line, ' ');
      *sp = 0;
      json_array_append_new(merges, json_pack("[s, s]", line, sp + 1));
    } else {
      json_array_append_new(merges, json_string(line));
    }
  }
  free(merges_txt);
  return json_pack("{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout", "unk_token",
                   "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback", 0,
                   "ignore_merges", ignore_merges, "vocab", vocab, "merges", merges);
}

static eng_tokenizer *variant(json_t *v, bool pairs) {
  json_t *tj = json_deep_copy(json_object_get(v, "tokenizer"));
  json_object_set_new(tj, "model", gpt2_model(pairs, json_is_true(json_object_get(v, "ignore_merges"))));
  char *text = json_dumps(tj, JSON_COMPACT);
  json_decref(tj);
  eng_tokenizer *t = eng_tok_load_json(text, strlen(text), "variant.json", NULL, 0);
  if (!t) fprintf(stderr, "variant: %s\n", eng_last_error());
  free(text);
  return t;
}

static int check_variant_cases(eng_tokenizer *t, json_t *v) {
  size_t i;
  json_t *c;
  int bad = 0;
  json_array_foreach(json_object_get(v, "cases"), i, c) {
    json_t *text = json_object_get(c, "text");
    bool add = json_is_true(json_object_get(c, "add_special_tokens"));
    if (!ids_equal(t, json_string_value(text), json_string_length(text), json_object_get(c, "ids"), add)) bad++;
  }
  return bad;
}

static void test_variants(void) {
  json_t *vs = json_object_get(reference(), "variants");
  CHECK(json_array_size(vs) == 3);
  size_t i;
  json_t *v;
  json_array_foreach(vs, i, v) {
    /* merges as "a b" strings for the first variants, as pairs for the last */
    eng_tokenizer *t = variant(v, i == 2);
    CHECK(t != NULL);
    if (!t) continue;
    CHECK(json_array_size(json_object_get(v, "cases")) >= 15);
    int bad = check_variant_cases(t, v);
    if (bad) fprintf(stderr, "  in variant %s\n", json_string_value(json_object_get(v, "name")));
    CHECK(bad == 0);
    eng_tok_free(t);
  }
  /* the Qwen2.5 variant with pairs: the same ids */
  eng_tokenizer *t = variant(json_array_get(vs, 0), true);
  CHECK(t && check_variant_cases(t, json_array_get(vs, 0)) == 0);
  eng_tok_free(t);
}

/* ---- small tokenizers built here ------------------------------------------- */
/* model.vocab holds all 256 bytes (id = byte value) plus extra tokens;
 * pre_tokenizer ByteLevel without regex unless given */
static char *small_json(const char *extra_vocab, const char *merges, const char *added, const char *pre) {
  json_t *vocab = json_object();
  for (int b = 0; b < 256; b++) {
    char sp[4];
    size_t n = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), sp);
    json_object_setn_new(vocab, sp, n, json_integer(b));
  }
  json_error_t e;
  json_t *extra = json_loads(extra_vocab, 0, &e);
  json_object_update(vocab, extra);
  json_decref(extra);
  json_t *root = json_pack("{s:o, s:o, s:o, s:{s:s}, s:{s:s, s:o, s:o}}", "added_tokens", json_loads(added, 0, &e),
                           "pre_tokenizer",
                           json_loads(pre ? pre : "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}",
                                      0, &e),
                           "post_processor", json_null(), "decoder", "type", "ByteLevel", "model", "type", "BPE", "vocab",
                           vocab, "merges", json_loads(merges, 0, &e));
  char *s = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return s;
}

static eng_tokenizer *small(const char *extra_vocab, const char *merges, const char *added, const char *pre) {
  char *s = small_json(extra_vocab, merges, added, pre);
  eng_tokenizer *t = eng_tok_load_json(s, strlen(s), "small.json", NULL, 0);
  if (!t) fprintf(stderr, "small: %s\n", eng_last_error());
  free(s);
  return t;
}

/* the ids of text as a space-separated string */
static const char *enc(eng_tokenizer *t, const char *text, bool add, bool split) {
  static char buf[1024];
  const int32_t *ids;
  eng_tok_encode_opts o = {add, split};
  int64_t n = eng_tok_encode(t, text, strlen(text), &o, &ids);
  if (n < 0) return eng_last_error();
  size_t k = 0;
  buf[0] = 0;
  for (int64_t i = 0; i < n && k < sizeof buf - 16; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, i ? " %d" : "%d", ids[i]);
  return buf;
}

#define SMALL_VOCAB "{\"ab\": 256, \"abc\": 257, \"bc\": 258, \"Ġab\": 259}"

static void test_small_merges_both_spellings(void) {
  /* ranks: (a,b) 0, (ab,c) 1, (b,c) 2, (Ġ,ab) 3 */
  const char *spellings[2] = {"[\"a b\", \"ab c\", \"b c\", \"Ġ ab\"]",
                              "[[\"a\", \"b\"], [\"ab\", \"c\"], [\"b\", \"c\"], [\"Ġ\", \"ab\"]]"};
  for (int s = 0; s < 2; s++) {
    eng_tokenizer *t = small(SMALL_VOCAB, spellings[s], "[]", NULL);
    CHECK(t != NULL);
    if (!t) continue;
    CHECK(eng_tok_vocab_size(t) == 260);
    /* abc: (a,b) first, then (ab,c) */
    CHECK(!strcmp(enc(t, "abc", false, false), "257"));
    /* bcab: (a,b) rank 0 before (b,c) rank 2 */
    CHECK(!strcmp(enc(t, "bcab", false, false), "258 256"));
    /* abab c: no regex, so the space joins: a b a b Ġ c -> ab ab Ġ c */
    CHECK(!strcmp(enc(t, "abab c", false, false), "256 256 32 99"));
    /* " ab" -> Ġ a b -> Ġ ab -> Ġab */
    CHECK(!strcmp(enc(t, " ab", false, false), "259"));
    /* bytes outside the merges stay single bytes */
    CHECK(!strcmp(enc(t, "xyz\xff", false, false), "120 121 122 255"));
    CHECK(eng_tok_id(t, "Ġab", strlen("Ġab")) == 259);
    size_t len;
    const char *sp = eng_tok_token(t, 259, &len);
    CHECK(sp && len == strlen("Ġab") && !memcmp(sp, "Ġab", len));
    CHECK(eng_tok_token(t, 260, &len) == NULL && eng_tok_id(t, "nope", 4) == -1);
    eng_tok_free(t);
  }
  /* with GPT-2's regex: "abc abc" -> "abc" " abc" -> 257, then Ġ+abc: Ġ a b c
   * -> Ġ ab c: (Ġ,ab) rank 3 vs (ab,c) rank 1 -> Ġ abc */
  eng_tokenizer *t = small(SMALL_VOCAB, spellings[0], "[]", "{\"type\":\"ByteLevel\",\"add_prefix_space\":false}");
  CHECK(t && !strcmp(enc(t, "abc abc", false, false), "257 32 257"));
  eng_tok_free(t);
  /* add_prefix_space (the default of a ByteLevel without the field) */
  t = small(SMALL_VOCAB, spellings[0], "[]", "{\"type\":\"ByteLevel\"}");
  CHECK(t && !strcmp(enc(t, "ab", false, false), "259"));
  eng_tok_free(t);
}

static void test_added_tokens(void) {
  const char *added =
      "[{\"id\": 300, \"content\": \"<|eot|>\", \"special\": true, \"normalized\": false},"
      " {\"id\": 301, \"content\": \"xyz\", \"special\": false, \"normalized\": true},"
      " {\"id\": 302, \"content\": \"<m>\", \"special\": true, \"lstrip\": true, \"normalized\": false},"
      " {\"id\": 303, \"content\": \"<r>\", \"special\": true, \"rstrip\": true, \"normalized\": false},"
      " {\"id\": 304, \"content\": \"<|eot|>x\", \"special\": true, \"normalized\": false}]";
  eng_tokenizer *t = small(SMALL_VOCAB, "[\"a b\", \"ab c\", \"b c\", \"Ġ ab\"]", added, NULL);
  CHECK(t != NULL);
  if (!t) return;
  CHECK(eng_tok_vocab_size(t) == 305);
  CHECK(!strcmp(enc(t, "ab<|eot|>xyz", false, false), "256 304 121 122"));  /* longest match wins */
  CHECK(!strcmp(enc(t, "ab<|eot|>y xyz", false, false), "256 300 121 32 301"));
  /* split_special_tokens: the special's bytes are plain text; xyz still matches */
  CHECK(!strcmp(enc(t, "<|eot|>xyz", false, true), "60 124 101 111 116 124 62 301"));
  CHECK(!strcmp(enc(t, "a<|eot|>y", false, true), "97 60 124 101 111 116 124 62 121"));
  /* lstrip takes the spaces before, rstrip the spaces after */
  CHECK(!strcmp(enc(t, "ab  <m> c", false, false), "256 302 32 99"));
  CHECK(!strcmp(enc(t, "ab <r>  \n c", false, false), "256 32 303 99"));
  CHECK(eng_tok_is_special(t, 300) && !eng_tok_is_special(t, 301) && !eng_tok_is_special(t, 97));
  CHECK(eng_tok_id(t, "<|eot|>", 7) == 300);
  /* decode: specials as their text, or skipped */
  int64_t ids[] = {256, 300, 301, 32, 99};
  size_t len;
  const char *d = eng_tok_decode(t, ids, 5, false, &len);
  CHECK(d && !strcmp(d, "ab<|eot|>xyz c"));
  d = eng_tok_decode(t, ids, 5, true, &len);
  CHECK(d && !strcmp(d, "abxyz c"));
  /* eos from tokenizer_config.json, else guessed: "<|eot|>" is no usual name */
  CHECK(eng_tok_eos_id(t) == -1);
  eng_tok_free(t);
  char *s = small_json(SMALL_VOCAB, "[]", added, NULL);
  const char *cfg = "{\"eos_token\": {\"content\": \"<|eot|>\"}, \"pad_token\": \"<m>\", \"bos_token\": null}";
  t = eng_tok_load_json(s, strlen(s), "small.json", cfg, strlen(cfg));
  CHECK(t && eng_tok_eos_id(t) == 300 && eng_tok_pad_id(t) == 302 && eng_tok_bos_id(t) == -1);
  eng_tok_free(t);
  const char *bad_cfg = "{\"eos_token\": \"<none>\"}";
  eng_clear_error();
  t = eng_tok_load_json(s, strlen(s), "small.json", bad_cfg, strlen(bad_cfg));
  CHECK(!t && !strcmp(eng_last_error(), "tokenizer: tokenizer_config.json: eos_token \"<none>\" is not in the vocabulary"));
  free(s);
  /* a post-processor template (add_special_tokens) */
  char *j = small_json(SMALL_VOCAB, "[\"a b\"]", "[{\"id\": 300, \"content\": \"<s>\", \"special\": true}]", NULL);
  json_t *root = json_loads(j, 0, NULL);
  free(j);
  json_object_set_new(root, "post_processor",
                      json_loads("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                                 "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}}],"
                                 "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[300],\"tokens\":[\"<s>\"]}}}",
                                 0, NULL));
  j = json_dumps(root, 0);
  json_decref(root);
  t = eng_tok_load_json(j, strlen(j), "small.json", NULL, 0);
  free(j);
  CHECK(t && !strcmp(enc(t, "ab", true, false), "300 256 300"));
  CHECK(t && !strcmp(enc(t, "ab", false, false), "256"));
  CHECK(t && eng_tok_bos_id(t) == 300); /* "<s>" is a usual bos name */
  eng_tok_free(t);
}

/* ignore_merges: a word in the vocabulary is one token even when the merges
 * would not build it */
static void test_ignore_merges(void) {
  const char *vocab = "{\"bc\": 256, \"abc\": 257}";
  eng_tokenizer *t = small(vocab, "[\"b c\"]", "[]", NULL);
  CHECK(t && !strcmp(enc(t, "abc", false, false), "97 256"));
  eng_tok_free(t);
  char *j = small_json(vocab, "[\"b c\"]", "[]", NULL);
  json_t *root = json_loads(j, 0, NULL);
  free(j);
  json_object_set_new(json_object_get(root, "model"), "ignore_merges", json_true());
  j = json_dumps(root, 0);
  json_decref(root);
  t = eng_tok_load_json(j, strlen(j), "small.json", NULL, 0);
  free(j);
  CHECK(t && !strcmp(enc(t, "abc", false, false), "257"));
  CHECK(t && !strcmp(enc(t, "abcbc", false, false), "97 256 256"));
  eng_tok_free(t);
}

/* ---- the plain byte-level tokenizer --------------------------------------- */
static void test_bytes_tokenizer(void) {
  const char *sp[] = {"<|endoftext|>", "<pad>"};
  eng_tokenizer *t = eng_tok_bytes(sp, 2, NULL, NULL, NULL);
  CHECK(t != NULL);
  if (!t) return;
  CHECK(eng_tok_vocab_size(t) == 258);
  CHECK(eng_tok_eos_id(t) == 256 && eng_tok_pad_id(t) == 257 && eng_tok_bos_id(t) == -1);
  CHECK(!strcmp(enc(t, "hi<pad>\xff<|endoftext|>", false, false), "104 105 257 255 256"));
  CHECK(!strcmp(enc(t, "", false, false), ""));
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  CHECK(round_trips(t, all, 256));
  eng_tok_free(t);
  t = eng_tok_bytes(sp, 2, "<pad>", "<|endoftext|>", "");
  CHECK(t && eng_tok_eos_id(t) == 257 && eng_tok_bos_id(t) == 256 && eng_tok_pad_id(t) == -1);
  eng_tok_free(t);
  eng_clear_error();
  CHECK(!eng_tok_bytes(sp, 2, "<x>", NULL, NULL));
  CHECK(!strcmp(eng_last_error(), "bytes: eos \"<x>\" is not one of the special tokens"));
  const char *dup[] = {"<a>", "<a>"};
  CHECK(!eng_tok_bytes(dup, 2, NULL, NULL, NULL));
  CHECK(!strcmp(eng_last_error(), "bytes: special token \"<a>\" is given twice (1 and 2)"));
  const char *bad[] = {"\xff"};
  CHECK(!eng_tok_bytes(bad, 1, NULL, NULL, NULL));
  CHECK(!strcmp(eng_last_error(), "bytes: special token 1 is not valid UTF-8"));
}

/* ---- round trips of arbitrary bytes --------------------------------------------- */
static uint64_t rng_state = 0x1234567887654321ull;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

static void test_roundtrip_bytes(void) {
  eng_tokenizer *g = gpt2();
  json_t *vs = json_object_get(reference(), "variants");
  eng_tokenizer *llama = variant(json_array_get(vs, 1), false);
  const char *sp[] = {"<|endoftext|>"};
  eng_tokenizer *b = eng_tok_bytes(sp, 1, NULL, NULL, NULL);
  CHECK(g && llama && b);
  if (!g || !llama || !b) return;
  const char *tricky[] = {"\xff\xfe", "\xc3", "\xed\xa0\x80", "a\x80" "b", "\xf0\x9f\x98", "\xf0\x9f\x98\x80\x80",
                          "\xc0\xaf", "caf\xe9", " \xe2\x80", "\n\xff\n", "\xf4\x90\x80\x80", "x\xcc\x81\xff\xcc\x81"};
  int bad = 0;
  for (size_t i = 0; i < sizeof tricky / sizeof *tricky; i++) {
    bad += !round_trips(g, tricky[i], strlen(tricky[i]));
    bad += !round_trips(llama, tricky[i], strlen(tricky[i]));
    bad += !round_trips(b, tricky[i], strlen(tricky[i]));
  }
  CHECK(bad == 0);
  CHECK(round_trips(g, "a\0b", 3) && round_trips(b, "\0\0", 2));
  /* random bytes; every fourth string from a small alphabet of spaces,
   * letters, digits, apostrophes and multi-byte sequences */
  const char *pieces[] = {" ", "  ", "\n", "a", "Z", "'s", "'", "7", "\xc3\xa9", "\xe2\x80", "\x80", "\xf0\x9f\x98\x80", "\t", "!"};
  char buf[512];
  for (int k = 0; k < 3000; k++) {
    size_t n = 0, want = rnd() % 200;
    if (k % 4 == 0) {
      while (n < want) {
        const char *p = pieces[rnd() % (sizeof pieces / sizeof *pieces)];
        size_t l = strlen(p);
        memcpy(buf + n, p, l);
        n += l;
      }
    } else {
      for (; n < want; n++) buf[n] = (char)rnd();
    }
    if (!round_trips(g, buf, n) || !round_trips(llama, buf, n) || !round_trips(b, buf, n)) bad++;
  }
  CHECK(bad == 0);
  eng_tok_free(llama);
  eng_tok_free(b);
}

/* ---- NFC ---------------------------------------------------------------------- */
static int nfc_is(const char *in, const char *want) {
  tok_buf out = {0};
  int ok = tok_nfc(in, strlen(in), &out, "test") == 0 && out.n == strlen(want) && !memcmp(out.p, want, out.n);
  if (!ok) fprintf(stderr, "  NFC(\"%s\") = \"%.*s\", expected \"%s\"\n", in, (int)out.n, out.p ? out.p : "", want);
  tok_buf_free(&out);
  return ok;
}

static void test_nfc(void) {
  CHECK(nfc_is("e\xcc\x81", "\xc3\xa9"));                        /* e + U+0301 -> é */
  CHECK(nfc_is("A\xcc\x8a", "\xc3\x85"));                        /* A + ring -> Å */
  CHECK(nfc_is("\xe2\x84\xab", "\xc3\x85"));                     /* U+212B ANGSTROM SIGN -> Å (singleton) */
  CHECK(nfc_is("\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab", "\xed\x95\x9c")); /* jamo ᄒ ᅡ ᆫ -> 한 */
  CHECK(nfc_is("\xed\x95\x9c", "\xed\x95\x9c"));                 /* 한 stays */
  CHECK(nfc_is("a\xcc\xa8\xcc\x81", "\xc4\x85\xcc\x81"));        /* a + ogonek + acute -> ą + acute */
  CHECK(nfc_is("x\xcc\x81\xcc\x96", "x\xcc\x96\xcc\x81"));       /* reordered: ccc 220 before 230 */
  CHECK(nfc_is("a\xcc\x96\xcc\x81", "\xc3\xa1\xcc\x96"));        /* a + U+0316 + U+0301: á composes past 220 < 230 */
  CHECK(nfc_is("\xc3\xa9", "\xc3\xa9"));
  CHECK(nfc_is("e\xff\xcc\x81", "e\xff\xcc\x81"));               /* nothing composes across an invalid byte */
  CHECK(nfc_is("plain ascii", "plain ascii"));
  CHECK(tok_nfc_quick("plain caf\xc3\xa9", 10) && !tok_nfc_quick("e\xcc\x81", 3));
}

/* ---- errors -------------------------------------------------------------------- */
static void check_load_error(const char *json, const char *want) {
  eng_clear_error();
  eng_tokenizer *t = eng_tok_load_json(json, strlen(json), "t.json", NULL, 0);
  check_count++;
  if (t || strcmp(eng_last_error(), want)) {
    check_failures++;
    fprintf(stderr, "  load error: got \"%s\"\n            expected \"%s\"\n", t ? "(success)" : eng_last_error(), want);
  }
  eng_tok_free(t);
}

static void test_errors(void) {
  eng_tokenizer *g = gpt2();
  if (!g) return;
  int64_t ids[] = {1, 2, 60000};
  size_t len;
  eng_clear_error();
  CHECK(eng_tok_decode(g, ids, 3, false, &len) == NULL);
  CHECK(!strcmp(eng_last_error(), "decode: unknown token id 60000 at position 3 (vocabulary has 50257)"));
  int64_t neg[] = {-1};
  CHECK(eng_tok_decode(g, neg, 1, false, &len) == NULL);
  CHECK(!strcmp(eng_last_error(), "decode: unknown token id -1 at position 1 (vocabulary has 50257)"));

  check_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
                   "tokenizer: t.json: model.type is \"Unigram\" (a SentencePiece Unigram model): only BPE models are supported");
  check_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}",
                   "tokenizer: t.json: model.type is \"WordPiece\": only BPE models are supported");
  check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"byte_fallback\": true}}",
                   "tokenizer: t.json: model.byte_fallback is true (a SentencePiece-style BPE): only byte-level BPE is supported");
  check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\", \"a q\"]}}",
                   "tokenizer: t.json: model.merges, entry 2: merge \"a q\": \"q\" is not in the vocabulary");
  check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\"]]}}",
                   "tokenizer: t.json: model.merges, entry 1: merge \"a b\": the merged token \"ab\" is not in the vocabulary");
  check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a  b\"]}}",
                   "tokenizer: t.json: model.merges, entry 1: \"a  b\" is not two tokens separated by one space");
  check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
                   "tokenizer: t.json: model.vocab gives id 0 to both \"a\" and \"b\"");
  const char *tail = ", \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
  char buf[1024];
  snprintf(buf, sizeof buf, "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"_\"}%s", tail);
  check_load_error(buf, "tokenizer: t.json: pre_tokenizer.type is \"Metaspace\": only ByteLevel, or a Sequence of Split "
                        "then ByteLevel, is supported");
  snprintf(buf, sizeof buf, "{\"pre_tokenizer\": null%s", tail);
  check_load_error(buf, "tokenizer: t.json: pre_tokenizer is null: only byte-level BPE (a ByteLevel pre-tokenizer) is "
                        "supported");
  snprintf(buf, sizeof buf,
           "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
           "{\"Regex\": \"x\"}, \"behavior\": \"Removed\", \"invert\": false}, {\"type\": \"ByteLevel\"}]}%s", tail);
  check_load_error(buf, "tokenizer: t.json: pre_tokenizer.pretokenizers[0].behavior is \"Removed\": only \"Isolated\" is "
                        "supported");
  snprintf(buf, sizeof buf,
           "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
           "{\"Regex\": \"(x\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\"}]}%s", tail);
  check_load_error(buf, "tokenizer: t.json: pre_tokenizer.pretokenizers[0].pattern: bad regex: missing closing "
                        "parenthesis (at offset 2)");
  snprintf(buf, sizeof buf, "{\"normalizer\": {\"type\": \"Lowercase\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}%s", tail);
  check_load_error(buf, "tokenizer: t.json: normalizer.type is \"Lowercase\": only NFC (or none) is supported");
  snprintf(buf, sizeof buf,
           "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"Metaspace\"}, \"model\": "
           "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
  check_load_error(buf, "tokenizer: t.json: decoder.type is \"Metaspace\": only ByteLevel is supported");
  snprintf(buf, sizeof buf,
           "{\"added_tokens\": [{\"id\": 5, \"content\": \"<x>\", \"single_word\": true}], \"pre_tokenizer\": "
           "{\"type\": \"ByteLevel\"}%s", tail);
  check_load_error(buf, "tokenizer: t.json: added_tokens[0].single_word is true (\"<x>\"): not supported");
  eng_clear_error();
  CHECK(!eng_tok_load_json("{\"model\": ", 10, "t.json", NULL, 0));
  CHECK(!strncmp(eng_last_error(), "tokenizer: t.json:1:", 20) && strstr(eng_last_error(), "bad JSON"));

  /* encode: a byte without a token (and no unk_token) */
  snprintf(buf, sizeof buf, "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}%s", tail);
  eng_tokenizer *t = eng_tok_load_json(buf, strlen(buf), "t.json", NULL, 0);
  CHECK(t != NULL);
  const int32_t *out;
  eng_clear_error();
  CHECK(t && eng_tok_encode(t, "az", 2, NULL, &out) == -1);
  CHECK(!strcmp(eng_last_error(), "encode: byte 0x20 has no token in the vocabulary (and the model has no unk_token)"));
  eng_tok_free(t);

  /* files: a missing directory, a bad merges.txt line */
  char *dir = make_tmpdir();
  eng_clear_error();
  CHECK(!eng_tok_load(dir));
  snprintf(buf, sizeof buf, "tokenizer: %s has no tokenizer.json, nor vocab.json and merges.txt", dir);
  CHECK(!strcmp(eng_last_error(), buf));
  char path[512];
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  write_text(path, "{\"a\": 0, \"b\": 1, \"ab\": 2, \"c\": 3}");
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  write_text(path, "#version: 0.2\na b\na b c\n");
  CHECK(!eng_tok_load(dir));
  snprintf(buf, sizeof buf, "tokenizer: %s/merges.txt:3: \"a b c\" is not two tokens separated by one space", dir);
  CHECK(!strcmp(eng_last_error(), buf));
  write_text(path, "#version: 0.2\na b\n");
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  write_text(path, "{\"eos_token\": 5}");
  CHECK(!eng_tok_load(dir));
  snprintf(buf, sizeof buf, "tokenizer: %s/tokenizer_config.json: eos_token must be a string or an object with a content string", dir);
  CHECK(!strcmp(eng_last_error(), buf));
  rm_dir(dir);
}

/* ---- save, then load what was saved ------------------------------------------------ */
static int same_on_fixture(eng_tokenizer *t) {
  size_t i;
  json_t *c;
  int bad = 0;
  json_array_foreach(json_object_get(reference(), "gpt2"), i, c) {
    json_t *text = json_object_get(c, "text");
    bad += !ids_equal(t, json_string_value(text), json_string_length(text), json_object_get(c, "ids"), false);
  }
  return bad;
}

static void test_save_load(void) {
  eng_tokenizer *g = gpt2();
  if (!g) return;
  char *dir = make_tmpdir();
  CHECK(eng_tok_save(g, dir) == 0);
  char path[512];
  /* vocab.json + merges.txt alone (tokenizer.json moved away) */
  char *sub = make_tmpdir();
  const char *files[] = {"vocab.json", "merges.txt"};
  for (int i = 0; i < 2; i++) {
    char from[512];
    snprintf(from, sizeof from, "%s/%s", dir, files[i]);
    snprintf(path, sizeof path, "%s/%s", sub, files[i]);
    CHECK(rename(from, path) == 0);
  }
  /* merges.txt is written as GPT-2's was */
  snprintf(path, sizeof path, "%s/merges.txt", sub);
  size_t l1, l2;
  char *a = slurp(path, &l1), *b = slurp(fixture_path("merges.txt"), &l2);
  CHECK(a && b && l1 == l2 && !memcmp(a, b, l1));
  free(a), free(b);
  /* tokenizer.json spells merges as "a b" strings, as GPT-2's does */
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  json_t *saved = json_load_file(path, 0, NULL);
  json_t *m0 = json_array_get(json_object_get(json_object_get(saved, "model"), "merges"), 0);
  CHECK(json_is_string(m0) && !strcmp(json_string_value(m0), "Ġ t"));
  CHECK(json_array_size(json_object_get(json_object_get(saved, "model"), "merges")) == 50000);
  json_decref(saved);
  eng_tokenizer *t = eng_tok_load(sub);
  CHECK(t && same_on_fixture(t) == 0 && eng_tok_eos_id(t) == 50256 && eng_tok_vocab_size(t) == 50257);
  eng_tok_free(t);
  t = eng_tok_load(dir); /* tokenizer.json + tokenizer_config.json */
  CHECK(t && same_on_fixture(t) == 0 && eng_tok_eos_id(t) == 50256 && eng_tok_vocab_size(t) == 50257);
  eng_tok_free(t);
  rm_dir(dir);
  rm_dir(sub);

  /* a variant keeps its pre-tokenizer, normalizer, template and added tokens */
  json_t *vs = json_object_get(reference(), "variants");
  for (int k = 0; k < 3; k++) {
    json_t *v = json_array_get(vs, (size_t)k);
    eng_tokenizer *q = variant(v, false);
    dir = make_tmpdir();
    CHECK(q && eng_tok_save(q, dir) == 0);
    eng_tokenizer *r = eng_tok_load(dir);
    CHECK(r && check_variant_cases(r, v) == 0);
    eng_tok_free(q);
    eng_tok_free(r);
    rm_dir(dir);
  }

  /* a merge part with a space: pairs, and no merges.txt (it cannot say so) */
  eng_tokenizer *sp_t = small("{\"b c\": 256, \"ab c\": 257}", "[[\"a\", \"b c\"]]", "[]", NULL);
  dir = make_tmpdir();
  CHECK(sp_t && eng_tok_save(sp_t, dir) == 0);
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  saved = json_load_file(path, 0, NULL);
  m0 = json_array_get(json_object_get(json_object_get(saved, "model"), "merges"), 0);
  CHECK(json_is_array(m0) && !strcmp(json_string_value(json_array_get(m0, 1)), "b c"));
  json_decref(saved);
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  CHECK(access(path, F_OK) != 0);
  eng_tokenizer *back = eng_tok_load(dir);
  CHECK(back && eng_tok_vocab_size(back) == 258);
  eng_tok_free(back);
  eng_tok_free(sp_t);
  rm_dir(dir);

  /* the byte-level tokenizer saves as an equivalent BPE with no merges */
  const char *sp[] = {"<|endoftext|>", "<pad>"};
  eng_tokenizer *bt = eng_tok_bytes(sp, 2, NULL, NULL, NULL);
  dir = make_tmpdir();
  CHECK(bt && eng_tok_save(bt, dir) == 0);
  eng_tokenizer *r = eng_tok_load(dir);
  CHECK(r && eng_tok_vocab_size(r) == 258 && eng_tok_eos_id(r) == 256 && eng_tok_pad_id(r) == 257);
  CHECK(r && !strcmp(enc(r, "hi<pad>\xff<|endoftext|>", false, false), "104 105 257 255 256"));
  CHECK(r && round_trips(r, "\x00\x01\xff abc", 8));
  eng_tok_free(bt);
  eng_tok_free(r);
  rm_dir(dir);
}

/* ---- the cache: clearing it when full changes nothing -------------------------------- */
static void test_cache_overflow(void) {
  eng_tokenizer *g = gpt2();
  if (!g) return;
  /* more distinct pieces than the cache holds */
  size_t cap = 40000 * 8, n = 0;
  char *text = malloc(cap);
  for (int i = 0; i < 40000; i++) n += (size_t)snprintf(text + n, cap - n, " w%dx", i);
  const int32_t *ids;
  CHECK(eng_tok_encode(g, text, n, NULL, &ids) > 40000);
  free(text);
  CHECK(same_on_fixture(g) == 0);
}

int main(void) {
  set_fixture_dir();
  RUN(test_gpt2_fixture);
  RUN(test_variants);
  RUN(test_small_merges_both_spellings);
  RUN(test_added_tokens);
  RUN(test_ignore_merges);
  RUN(test_bytes_tokenizer);
  RUN(test_roundtrip_bytes);
  RUN(test_nfc);
  RUN(test_errors);
  RUN(test_save_load);
  RUN(test_cache_overflow);
  eng_tok_free(gpt2());
  json_decref(reference());
  DONE();
}
