/* fuzz_tokenizer.c — libFuzzer target for the tokenizers
 * (engine/src/tokenizer_*.c). The first input byte picks a mode; the rest is
 * the text (or a tokenizer.json):
 *   0  GPT-2 (vocab.json + merges.txt): decode(encode(x)) == x, with and
 *      without split_special_tokens
 *   1  Llama-3-style Split regex + ignore_merges + template: the same
 *   2  Qwen2.5-style NFC + Split regex: with split_special_tokens,
 *      decode(encode(x)) == NFC(x), and NFC(NFC(x)) == NFC(x)
 *   3  the plain byte-level tokenizer: decode(encode(x)) == x
 *   4  x as a tokenizer.json: loading never crashes, and what loads encodes
 *      and decodes a few strings
 * Any failed property traps. It does not fuzz tokenizer_config.json.
 *
 * Build (from the repository root; clang with libFuzzer, Debian's
 * clang + libclang-rt-14-dev):
 *   mkdir -p build-fuzz && clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=all -Iengine/include -Iengine/src \
 *     engine/src/tokenizer_*.c engine/src/error.c "$PWD/fuzz/fuzz_tokenizer.c" \
 *     -ljansson -lpcre2-8 -o build-fuzz/fuzz_tokenizer
 * Run (GPT-2's files are found through this source's path, which is why
 * it is given absolute, or in FUZZ_TOKENIZER_DIR):
 *   mkdir -p build-fuzz/corpus && build-fuzz/fuzz_tokenizer -max_len=4096 \
 *     -max_total_time=300 build-fuzz/corpus
 */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static eng_tokenizer *gpt2, *llama, *qwen, *bytes_tok;

#define QWEN_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define LLAMA_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static void die(const char *what) {
  fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, eng_last_error());
  abort();
}

/* GPT-2's vocabulary and merges with other pre-tokenizer settings */
static eng_tokenizer *variant(const char *dir, const char *regex, bool nfc, bool llama_style) {
  char path[4096];
  json_error_t e;
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  json_t *vocab = json_load_file(path, 0, &e);
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  FILE *f = fopen(path, "rb");
  if (!vocab || !f) die("cannot read GPT-2's files");
  json_t *merges = json_array();
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    if (line[0] && strncmp(line, "#version", 8)) json_array_append_new(merges, json_string(line));
  }
  fclose(f);
  json_t *root = json_pack(
      "{s:[{s:i, s:s, s:b, s:b}, {s:i, s:s, s:b, s:b}],"
      " s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}, s:{s:s},"
      " s:{s:s, s:b, s:o, s:o}}",
      "added_tokens", "id", 50256, "content", "<|endoftext|>", "special", 1, "normalized", 0, "id", 50257, "content",
      "<|begin_of_text|>", "special", 1, "normalized", 0, "pre_tokenizer", "type", "Sequence", "pretokenizers", "type",
      "Split", "pattern", "Regex", regex, "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space",
      0, "use_regex", 0, "decoder", "type", "ByteLevel", "model", "type", "BPE", "ignore_merges", llama_style, "vocab",
      vocab, "merges", merges);
  if (nfc) json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC"));
  if (llama_style)
    json_object_set_new(root, "post_processor",
                        json_loads("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
                                   "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":"
                                   "{\"<s>\":{\"id\":\"<s>\",\"ids\":[50257],\"tokens\":[\"<s>\"]}}}",
                                   0, &e));
  char *text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  eng_tokenizer *t = eng_tok_load_json(text, strlen(text), "variant", NULL, 0);
  free(text);
  if (!t) die("variant");
  return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char dir[4096];
  const char *env = getenv("FUZZ_TOKENIZER_DIR");
  if (env) {
    snprintf(dir, sizeof dir, "%s", env);
  } else {
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    strncat(dir, "/../tests/fixtures/gpt2_tokenizer", sizeof dir - strlen(dir) - 1);
  }
  gpt2 = eng_tok_load(dir);
  if (!gpt2) die("GPT-2");
  llama = variant(dir, LLAMA_RE, false, true);
  qwen = variant(dir, QWEN_RE, true, false);
  const char *sp[] = {"<|endoftext|>", "<pad>", "<|im_start|>"};
  bytes_tok = eng_tok_bytes(sp, 3, NULL, NULL, NULL);
  if (!bytes_tok) die("bytes");
  return 0;
}

/* decode(encode(text)) into *out (malloc'd) */
static char *cycle(eng_tokenizer *t, const char *text, size_t len, bool split, bool add, size_t *out_len) {
  const int32_t *ids;
  eng_tok_encode_opts o = {add, split};
  int64_t n = eng_tok_encode(t, text, len, &o, &ids);
  if (n < 0) die("encode");
  int64_t *ids64 = malloc(sizeof *ids64 * (size_t)(n + 1));
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= eng_tok_vocab_size(t)) abort();
    ids64[i] = ids[i];
  }
  size_t dl;
  const char *d = eng_tok_decode(t, ids64 + (add && n > 0 ? 1 : 0), (size_t)(n - (add && n > 0 ? 1 : 0)), false, &dl);
  free(ids64);
  if (!d) die("decode");
  char *copy = malloc(dl + 1);
  memcpy(copy, d, dl + 1);
  *out_len = dl;
  return copy;
}

static void expect_same(const char *a, size_t al, const char *b, size_t bl, const char *what) {
  if (al != bl || memcmp(a, b, al)) {
    fprintf(stderr, "fuzz_tokenizer: %s: round trip differs (%zu vs %zu bytes)\n", what, al, bl);
    abort();
  }
}

static void roundtrip(eng_tokenizer *t, const char *s, size_t n, bool add, const char *what) {
  size_t l;
  char *d = cycle(t, s, n, false, add, &l);
  expect_same(d, l, s, n, what);
  free(d);
  d = cycle(t, s, n, true, false, &l);
  expect_same(d, l, s, n, what);
  free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  int mode = data[0] % 5;
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  if (mode == 0) {
    roundtrip(gpt2, s, n, false, "gpt2");
  } else if (mode == 1) {
    /* with the template, the first id is the BOS it adds (skipped by cycle) */
    roundtrip(llama, s, n, true, "llama");
  } else if (mode == 2) {
    tok_buf nfc = {0}, nfc2 = {0};
    if (tok_nfc(s, n, &nfc, "fuzz") || tok_nfc(nfc.p ? nfc.p : "", nfc.n, &nfc2, "fuzz")) die("nfc");
    expect_same(nfc2.p, nfc2.n, nfc.p, nfc.n, "NFC is idempotent");
    if (tok_nfc_quick(s, n)) expect_same(nfc.p, nfc.n, s, n, "quick check says NFC changes nothing");
    size_t l;
    char *d = cycle(qwen, s, n, true, false, &l);
    expect_same(d, l, nfc.p ? nfc.p : "", nfc.n, "qwen");
    free(d);
    tok_buf_free(&nfc);
    tok_buf_free(&nfc2);
  } else if (mode == 3) {
    roundtrip(bytes_tok, s, n, false, "bytes");
  } else {
    eng_tokenizer *t = eng_tok_load_json(s, n, "fuzz.json", NULL, 0);
    if (!t) return 0;
    const char *texts[] = {"", "Hello world", "\xff\xfe abc  \n\n 123 <|endoftext|>", "e\xcc\x81"};
    for (int i = 0; i < 4; i++) {
      const int32_t *ids;
      eng_tok_encode_opts o = {i & 1, i & 2};
      int64_t k = eng_tok_encode(t, texts[i], strlen(texts[i]), &o, &ids);
      if (k < 0) continue; /* e.g. a byte without a token */
      int64_t *ids64 = malloc(sizeof *ids64 * (size_t)(k + 1));
      for (int64_t j = 0; j < k; j++) ids64[j] = ids[j];
      size_t dl;
      if (!eng_tok_decode(t, ids64, (size_t)k, i & 1, &dl)) die("decode of encoded ids");
      free(ids64);
    }
    eng_tok_free(t);
  }
  return 0;
}
