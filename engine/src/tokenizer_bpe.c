/* tokenizer_bpe.c — byte-level BPE encoding and decoding.
 *
 * Encoding, as Hugging Face tokenizers does it: added tokens that are not
 * "normalized" are found in the raw text first (leftmost-longest, through a
 * byte trie); each segment between them is normalized (none or NFC), then
 * split by the normalized added tokens, then run through the pre-tokenizer
 * pipeline (Split regexes, then ByteLevel: optional prefix space and GPT-2's
 * regex), and each piece is merged by BPE: its bytes start as one-byte
 * tokens and the adjacent pair of lowest rank is merged until none is left
 * (a heap ordered by rank then position, checked against the current pair,
 * as Hugging Face's Word::merge_all). Pieces are cached.
 * Decoding concatenates each id's bytes: the byte-level alphabet mapped
 * back to bytes, or a token's own UTF-8 when one of its characters is not
 * in the alphabet (Hugging Face's ByteLevel decoder does the same).
 *
 * Also here: the per-id tables, added tokens, lookups, freeing. The maps,
 * UTF-8 and the alphabet are in tokenizer_util.c; loading and saving in
 * tokenizer_load.c and tokenizer_save.c. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ======================================================================
 * Tokens by id
 * ====================================================================== */

eng_tokenizer *tok_new(void) {
  eng_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return eng_errorf("tokenizer: out of memory");
  for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
  t->unk_id = t->eos_id = t->bos_id = t->pad_id = -1;
  return t;
}

int tok_ensure_id(eng_tokenizer *t, int64_t id, const char *op) {
  if (id < 0 || id >= INT32_MAX) return eng_errorf_status("%s: token id %lld is out of range", op, (long long)id);
  if (id < t->vocab_size) return 0;
  int64_t need = id + 1;
  if (need > t->id_cap) {
    int64_t cap = t->id_cap ? t->id_cap : 256;
    while (cap < need) cap *= 2;
    size_t c = (size_t)cap;
    const char **ts = realloc(t->tok_str, sizeof *ts * c);
    if (ts) t->tok_str = ts;
    uint32_t *tl = realloc(t->tok_len, sizeof *tl * c);
    if (tl) t->tok_len = tl;
    char **ms = realloc(t->model_str, sizeof *ms * c);
    if (ms) t->model_str = ms;
    uint32_t *ml = realloc(t->model_len, sizeof *ml * c);
    if (ml) t->model_len = ml;
    char **d = realloc(t->dec, sizeof *d * c);
    if (d) t->dec = d;
    uint32_t *dl = realloc(t->dec_len, sizeof *dl * c);
    if (dl) t->dec_len = dl;
    uint8_t *f = realloc(t->flags, c);
    if (f) t->flags = f;
    if (!ts || !tl || !ms || !ml || !d || !dl || !f)
      return eng_errorf_status("%s: out of memory for %lld tokens", op, (long long)need);
    t->id_cap = cap;
  }
  for (int64_t i = t->vocab_size; i < need; i++) {
    t->tok_str[i] = NULL;
    t->tok_len[i] = 0;
    t->model_str[i] = NULL;
    t->model_len[i] = 0;
    t->dec[i] = NULL;
    t->dec_len[i] = 0;
    t->flags[i] = 0;
  }
  t->vocab_size = need;
  return 0;
}

/* id's decode bytes from spelling s: every char in the byte-level
 * alphabet -> its byte, else (one char outside it) the UTF-8 itself */
static int set_dec(eng_tokenizer *t, int32_t id, const char *s, size_t len, const char *op) {
  char *dec = malloc(len + 1);
  if (!dec) return eng_errorf_status("%s: out of memory", op);
  size_t i = 0, n = 0;
  while (i < len) {
    uint32_t cp;
    size_t k = tok_utf8_decode((const uint8_t *)s + i, len - i, &cp);
    int b = k ? tok_cp_to_byte(cp) : -1;
    if (b < 0) {
      memcpy(dec, s, len);
      n = len;
      break;
    }
    dec[n++] = (char)b;
    i += k;
  }
  dec[n] = 0;
  free(t->dec[id]);
  t->dec[id] = dec;
  t->dec_len[id] = (uint32_t)n;
  return 0;
}

int tok_set_model_token(eng_tokenizer *t, int32_t id, const char *s, size_t len, const char *op) {
  if (tok_ensure_id(t, id, op)) return -1;
  if (len > UINT32_MAX / 2) return eng_errorf_status("%s: token %d is too long", op, id);
  char *str = malloc(len + 1);
  if (!str) return eng_errorf_status("%s: out of memory", op);
  memcpy(str, s, len);
  str[len] = 0;
  free(t->model_str[id]);
  t->model_str[id] = str;
  t->model_len[id] = (uint32_t)len;
  t->flags[id] |= TOK_F_MODEL | TOK_F_PRESENT;
  if (t->flags[id] & TOK_F_ADDED) return 0;
  t->tok_str[id] = str;
  t->tok_len[id] = (uint32_t)len;
  return set_dec(t, id, s, len, op);
}

/* ======================================================================
 * Added tokens and their tries
 * ====================================================================== */

int tok_add_added(eng_tokenizer *t, const char *content, size_t len, int32_t id, bool special,
                  bool lstrip, bool rstrip, bool normalized, const char *op) {
  if (tok_ensure_id(t, id, op)) return -1;
  if (len > UINT32_MAX / 2) return eng_errorf_status("%s: added token %d is too long", op, id);
  tok_added *a = realloc(t->added, sizeof *a * (size_t)(t->n_added + 1));
  if (!a) return eng_errorf_status("%s: out of memory", op);
  t->added = a;
  char *c = malloc(len + 1);
  if (!c) return eng_errorf_status("%s: out of memory", op);
  memcpy(c, content, len);
  c[len] = 0;
  if (set_dec(t, id, c, len, op)) {
    free(c);
    return -1;
  }
  a[t->n_added++] = (tok_added){c, (uint32_t)len, id, special, lstrip, rstrip, normalized};
  t->tok_str[id] = c;
  t->tok_len[id] = (uint32_t)len;
  t->flags[id] |= (uint8_t)(TOK_F_PRESENT | TOK_F_ADDED | (special ? TOK_F_SPECIAL : 0));
  return 0;
}

static int trie_node(tok_trie *tr, uint8_t byte, const char *op) {
  if (tr->n == tr->cap) {
    int32_t cap = tr->cap ? tr->cap * 2 : 64;
    tok_trie_node *n = realloc(tr->nodes, sizeof *n * (size_t)cap);
    if (!n) return eng_errorf_status("%s: out of memory", op);
    tr->nodes = n;
    tr->cap = cap;
  }
  tr->nodes[tr->n] = (tok_trie_node){-1, -1, -1, byte};
  return tr->n++;
}

static int trie_insert(tok_trie *tr, const char *s, size_t len, int32_t token, const char *op) {
  if (tr->n == 0 && trie_node(tr, 0, op) < 0) return -1;
  int32_t cur = 0;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = (uint8_t)s[i];
    int32_t ch = tr->nodes[cur].child;
    while (ch >= 0 && tr->nodes[ch].byte != c) ch = tr->nodes[ch].sibling;
    if (ch < 0) {
      ch = trie_node(tr, c, op);
      if (ch < 0) return -1;
      tr->nodes[ch].sibling = tr->nodes[cur].child;
      tr->nodes[cur].child = ch;
    }
    cur = ch;
  }
  /* the first registration of a content wins */
  if (tr->nodes[cur].token < 0) tr->nodes[cur].token = token;
  return 0;
}

int tok_finish_added(eng_tokenizer *t, const char *op) {
  if (tok_strmap_init(&t->added_map, (uint32_t)t->n_added + 1, op)) return -1;
  tok_buf nb = {0};
  for (int i = 0; i < t->n_added; i++) {
    tok_added *a = &t->added[i];
    if (a->len == 0) continue;
    if (tok_strmap_put(&t->added_map, a->content, a->len, a->id, NULL, op)) goto fail;
    const char *s = a->content;
    size_t len = a->len;
    /* normalized tokens are matched in normalized text: normalize them too */
    if (a->normalized && t->norm == TOK_NORM_NFC) {
      nb.n = 0;
      if (tok_nfc(s, len, &nb, op)) goto fail;
      s = nb.p;
      len = nb.n;
    }
    if (trie_insert(a->normalized ? &t->trie_norm : &t->trie_raw, s, len, i, op)) goto fail;
  }
  tok_buf_free(&nb);
  return 0;
fail:
  tok_buf_free(&nb);
  return -1;
}

/* the longest added token starting at s[0] (index into added[]; skipping
 * special ones when asked) and its length, or -1 */
static int trie_match(const eng_tokenizer *t, const tok_trie *tr, const char *s, size_t n, bool skip_special,
                      size_t *mlen) {
  if (tr->n == 0) return -1;
  int32_t cur = 0, best = -1;
  for (size_t i = 0; i < n; i++) {
    int32_t ch = tr->nodes[cur].child;
    uint8_t c = (uint8_t)s[i];
    while (ch >= 0 && tr->nodes[ch].byte != c) ch = tr->nodes[ch].sibling;
    if (ch < 0) break;
    cur = ch;
    int32_t tk = tr->nodes[cur].token;
    if (tk >= 0 && !(skip_special && t->added[tk].special)) {
      best = tk;
      *mlen = i + 1;
    }
  }
  return best;
}

/* Unicode White_Space (Rust's char::is_whitespace), for lstrip / rstrip */
static bool is_ws(uint32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

/* length of the whitespace that ends s[0..n) */
static size_t trailing_ws(const char *s, size_t n) {
  size_t end = n;
  while (end > 0) {
    size_t st = end - 1;
    while (st > 0 && end - st < 4 && ((uint8_t)s[st] & 0xC0) == 0x80) st--;
    uint32_t cp;
    if (tok_utf8_decode((const uint8_t *)s + st, end - st, &cp) != end - st || !is_ws(cp)) break;
    end = st;
  }
  return n - end;
}

static size_t leading_ws(const char *s, size_t n) {
  size_t i = 0;
  uint32_t cp;
  while (i < n) {
    size_t k = tok_utf8_decode((const uint8_t *)s + i, n - i, &cp);
    if (!k || !is_ws(cp)) break;
    i += k;
  }
  return i;
}

/* ======================================================================
 * BPE on one piece
 * ====================================================================== */

static int out_push(eng_tokenizer *t, int32_t id) {
  if (t->out_n == t->out_cap) {
    size_t cap = t->out_cap ? t->out_cap * 2 : 1024;
    int32_t *o = realloc(t->out, sizeof *o * cap);
    if (!o) return eng_errorf_status("encode: out of memory");
    t->out = o;
    t->out_cap = cap;
  }
  t->out[t->out_n++] = id;
  return 0;
}

static int work_reserve(eng_tokenizer *t, size_t n) {
  if (n <= t->w_cap) return 0;
  size_t cap = t->w_cap ? t->w_cap : 256;
  while (cap < n) cap *= 2;
  int32_t *a = realloc(t->w_sym, sizeof *a * cap);
  if (a) t->w_sym = a;
  int32_t *b = realloc(t->w_prev, sizeof *b * cap);
  if (b) t->w_prev = b;
  int32_t *c = realloc(t->w_next, sizeof *c * cap);
  if (c) t->w_next = c;
  uint64_t *h = realloc(t->w_heap, sizeof *h * cap * 2);
  if (h) t->w_heap = h;
  if (!a || !b || !c || !h) return eng_errorf_status("encode: out of memory for a piece of %zu bytes", n);
  t->w_cap = cap;
  t->w_heap_cap = cap * 2;
  return 0;
}

/* min-heap of (rank << 32 | position) */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h[p] <= v) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
  uint64_t top = h[0], v = h[--(*n)];
  size_t i = 0, m = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m) break;
    if (c + 1 < m && h[c + 1] < h[c]) c++;
    if (v <= h[c]) break;
    h[i] = h[c];
    i = c;
  }
  if (m) h[i] = v;
  return top;
}

static int cache_get(eng_tokenizer *t, const char *s, size_t n, uint64_t hash);
static void cache_put(eng_tokenizer *t, const char *s, size_t n, uint64_t hash, const int32_t *ids, size_t k);
#define CACHE_MAX_KEY 128

static int bpe_piece(eng_tokenizer *t, const char *s, size_t n) {
  if (n == 0) return 0;
  uint64_t hash = 0;
  bool cacheable = n <= CACHE_MAX_KEY && t->n_merges > 0;
  if (cacheable) {
    hash = tok_hash(s, n);
    if (cache_get(t, s, n, hash)) return 0;
  }
  size_t out_start = t->out_n;
  if (t->ignore_merges) {
    t->word_buf.n = 0;
    if (tok_bytes_to_spelling(&t->word_buf, s, n, "encode")) return -1;
    int32_t id = tok_strmap_get(&t->model_map, t->word_buf.p, t->word_buf.n);
    if (id >= 0) {
      if (out_push(t, id)) return -1;
      goto done;
    }
  }
  if (n >= INT32_MAX / 4) return eng_errorf_status("encode: a piece of %zu bytes is too long", n);
  if (work_reserve(t, n)) return -1;
  int32_t *sym = t->w_sym, *prev = t->w_prev, *next = t->w_next;
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t b = (uint8_t)s[i];
    int32_t id = t->byte_id[b];
    if (id < 0) {
      if (t->unk_id < 0)
        return eng_errorf_status("encode: byte 0x%02x has no token in the vocabulary (and the model has no unk_token)", b);
      id = t->unk_id;
      if (t->fuse_unk && m > 0 && sym[m - 1] == id) continue;
    }
    sym[m++] = id;
  }
  if (t->n_merges == 0) {
    for (size_t i = 0; i < m; i++)
      if (out_push(t, sym[i])) return -1;
    goto done;
  }
  for (size_t i = 0; i < m; i++) {
    prev[i] = (int32_t)i - 1;
    next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
  }
  uint64_t *heap = t->w_heap;
  size_t hn = 0;
  for (size_t i = 0; i + 1 < m; i++) {
    int32_t r = tok_pairmap_get(&t->merges, sym[i], sym[i + 1]);
    if (r >= 0) heap_push(heap, &hn, ((uint64_t)r << 32) | i);
  }
  while (hn) {
    uint64_t top = heap_pop(heap, &hn);
    int32_t rank = (int32_t)(top >> 32);
    int32_t pos = (int32_t)(top & 0xFFFFFFFFu);
    if (sym[pos] < 0) continue; /* merged into its left neighbour */
    int32_t nx = next[pos];
    if (nx < 0) continue;
    int32_t cur = tok_pairmap_get(&t->merges, sym[pos], sym[nx]);
    if (cur < 0 || t->merge_out[cur] != t->merge_out[rank]) continue; /* stale entry */
    int32_t new_id = t->merge_out[rank];
    sym[pos] = new_id;
    sym[nx] = -1;
    next[pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = pos;
    /* at most two new pairs per merge, and each merge removes a symbol:
     * the heap never holds more than 3n entries; it was sized 2x, so
     * make room when needed */
    if (hn + 2 > t->w_heap_cap) {
      uint64_t *h = realloc(t->w_heap, sizeof *h * t->w_heap_cap * 2);
      if (!h) return eng_errorf_status("encode: out of memory");
      t->w_heap = heap = h;
      t->w_heap_cap *= 2;
    }
    if (prev[pos] >= 0) {
      int32_t r = tok_pairmap_get(&t->merges, sym[prev[pos]], new_id);
      if (r >= 0) heap_push(heap, &hn, ((uint64_t)r << 32) | (uint32_t)prev[pos]);
    }
    if (next[pos] >= 0) {
      int32_t r = tok_pairmap_get(&t->merges, new_id, sym[next[pos]]);
      if (r >= 0) heap_push(heap, &hn, ((uint64_t)r << 32) | (uint32_t)pos);
    }
  }
  for (int32_t i = 0; i >= 0; i = next[i])
    if (out_push(t, sym[i])) return -1;
done:
  if (cacheable) cache_put(t, s, n, hash, t->out + out_start, t->out_n - out_start);
  return 0;
}

/* ======================================================================
 * The cache of pieces
 * ====================================================================== */

#define CACHE_SLOTS (1u << 15)
#define CACHE_MAX_ENTRIES (CACHE_SLOTS / 2)

static void cache_clear(tok_cache *c) {
  if (c->key_len) memset(c->key_len, 0xff, sizeof *c->key_len * CACHE_SLOTS);
  c->count = 0;
  c->keys.n = 0;
  c->ids_n = 0;
}

static int cache_get(eng_tokenizer *t, const char *s, size_t n, uint64_t hash) {
  tok_cache *c = &t->cache;
  if (!c->count) return 0;
  for (uint32_t i = (uint32_t)hash & c->mask;; i = (i + 1) & c->mask) {
    if (c->key_len[i] == UINT32_MAX) return 0;
    if (c->hashes[i] == hash && c->key_len[i] == n && !memcmp(c->keys.p + c->key_off[i], s, n)) {
      size_t k = c->ids_len[i];
      if (t->out_n + k > t->out_cap) {
        size_t cap = t->out_cap ? t->out_cap : 1024;
        while (cap < t->out_n + k) cap *= 2;
        int32_t *o = realloc(t->out, sizeof *o * cap);
        if (!o) return 0; /* recomputed, which reports the failure */
        t->out = o;
        t->out_cap = cap;
      }
      memcpy(t->out + t->out_n, c->ids + c->ids_off[i], sizeof *c->ids * k);
      t->out_n += k;
      return 1;
    }
  }
}

/* best effort: a failed allocation only means the piece is not cached */
static void cache_put(eng_tokenizer *t, const char *s, size_t n, uint64_t hash, const int32_t *ids, size_t k) {
  tok_cache *c = &t->cache;
  if (!c->key_len) {
    c->hashes = malloc(sizeof *c->hashes * CACHE_SLOTS);
    c->key_off = malloc(sizeof *c->key_off * CACHE_SLOTS);
    c->key_len = malloc(sizeof *c->key_len * CACHE_SLOTS);
    c->ids_off = malloc(sizeof *c->ids_off * CACHE_SLOTS);
    c->ids_len = malloc(sizeof *c->ids_len * CACHE_SLOTS);
    if (!c->hashes || !c->key_off || !c->key_len || !c->ids_off || !c->ids_len) {
      free(c->hashes), free(c->key_off), free(c->key_len), free(c->ids_off), free(c->ids_len);
      c->hashes = NULL, c->key_off = NULL, c->key_len = NULL, c->ids_off = NULL, c->ids_len = NULL;
      return;
    }
    c->mask = CACHE_SLOTS - 1;
    cache_clear(c);
  }
  if (c->count >= CACHE_MAX_ENTRIES) cache_clear(c);
  if (c->ids_n + k > c->ids_cap) {
    size_t cap = c->ids_cap ? c->ids_cap : 4096;
    while (cap < c->ids_n + k) cap *= 2;
    int32_t *p = realloc(c->ids, sizeof *p * cap);
    if (!p) return;
    c->ids = p;
    c->ids_cap = cap;
  }
  size_t key_off = c->keys.n;
  if (tok_buf_put(&c->keys, s, n, "encode")) return;
  memcpy(c->ids + c->ids_n, ids, sizeof *ids * k);
  uint32_t i = (uint32_t)hash & c->mask;
  while (c->key_len[i] != UINT32_MAX) i = (i + 1) & c->mask;
  c->hashes[i] = hash;
  c->key_off[i] = (uint32_t)key_off;
  c->key_len[i] = (uint32_t)n;
  c->ids_off[i] = (uint32_t)c->ids_n;
  c->ids_len[i] = (uint32_t)k;
  c->ids_n += k;
  c->count++;
}

/* ======================================================================
 * Regexes and the pre-tokenizer pipeline
 * ====================================================================== */

/* Oniguruma's \s (what Hugging Face compiles patterns with) is Unicode's
 * White_Space; PCRE2's also takes U+180E (MONGOLIAN VOWEL SEPARATOR, no
 * longer white space since Unicode 6.3). Spell it out: \s and \S outside
 * classes, \s inside them. */
#define WS_CLASS "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

static int rewrite_ws(const char *p, size_t len, tok_buf *out) {
  bool in_class = false;
  for (size_t i = 0; i < len; i++) {
    char c = p[i];
    if (c == '\\' && i + 1 < len) {
      char d = p[i + 1];
      if (d == 's' || (d == 'S' && !in_class)) {
        const char *rep = d == 's' ? (in_class ? WS_CLASS : "[" WS_CLASS "]") : "[^" WS_CLASS "]";
        if (tok_buf_put(out, rep, strlen(rep), "tokenizer")) return -1;
      } else if (tok_buf_put(out, p + i, 2, "tokenizer")) {
        return -1;
      }
      i++;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      if (tok_buf_put(out, p + i, 1, "tokenizer")) return -1;
      /* a ']' right after '[' or '[^' is a literal */
      if (i + 1 < len && p[i + 1] == '^') {
        if (tok_buf_put(out, "^", 1, "tokenizer")) return -1;
        i++;
      }
      if (i + 1 < len && p[i + 1] == ']') {
        if (tok_buf_put(out, "]", 1, "tokenizer")) return -1;
        i++;
      }
      continue;
    }
    if (in_class && c == ']') in_class = false;
    if (tok_buf_put(out, &c, 1, "tokenizer")) return -1;
  }
  return 0;
}

pcre2_code *tok_compile_regex(const char *pattern, size_t len, bool literal, const char *where) {
  tok_buf rw = {0};
  if (!literal) {
    if (rewrite_ws(pattern, len, &rw)) return NULL;
    pattern = rw.p ? rw.p : "";
    len = rw.n;
  }
  int err;
  PCRE2_SIZE off;
  uint32_t flags = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : 0);
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, flags, &err, &off, NULL);
  tok_buf_free(&rw);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return eng_errorf("%s: bad regex: %s (at offset %zu)", where, (const char *)msg, (size_t)off);
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
  return re;
}

int tok_prepare(eng_tokenizer *t, const char *op) {
  t->md = pcre2_match_data_create(4, NULL);
  t->mctx = pcre2_match_context_create(NULL);
  t->jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
  if (!t->md || !t->mctx || !t->jit_stack) return eng_errorf_status("%s: out of memory", op);
  pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
  return 0;
}

static int pipeline(eng_tokenizer *t, int step, const char *s, size_t n);

/* the Isolated split: matches and the gaps between them are pieces */
static int regex_split(eng_tokenizer *t, pcre2_code *re, int next_step, const char *s, size_t n) {
  size_t pos = 0, gap = 0;
  while (pos <= n) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, 0, t->md, t->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return eng_errorf_status("encode: pre-tokenizer regex failed on a piece of %zu bytes: %s", n,
                               (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
    size_t ms = ov[0], me = ov[1];
    if (ms > gap && pipeline(t, next_step, s + gap, ms - gap)) return -1;
    if (me > ms && pipeline(t, next_step, s + ms, me - ms)) return -1;
    gap = me;
    if (me > ms) {
      pos = me;
    } else {
      if (me >= n) break;
      uint32_t cp;
      size_t k = tok_utf8_decode((const uint8_t *)s + me, n - me, &cp);
      pos = me + (k ? k : 1);
    }
  }
  if (gap < n && pipeline(t, next_step, s + gap, n - gap)) return -1;
  return 0;
}

static int pipeline(eng_tokenizer *t, int step, const char *s, size_t n) {
  if (n == 0) return 0;
  if (step == t->n_steps) return bpe_piece(t, s, n);
  tok_step *st = &t->steps[step];
  if (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space && s[0] != ' ') {
    /* ByteLevel is the last step, so piece_buf is not in use further up */
    t->piece_buf.n = 0;
    if (tok_buf_put(&t->piece_buf, " ", 1, "encode") || tok_buf_put(&t->piece_buf, s, n, "encode")) return -1;
    s = t->piece_buf.p;
    n = t->piece_buf.n;
  }
  if (!st->re) return pipeline(t, step + 1, s, n);
  return regex_split(t, st->re, step + 1, s, n);
}

/* ======================================================================
 * Encoding
 * ====================================================================== */

/* split s by the tokens of trie tr; gaps go to gap_fn */
typedef int (*gap_fn)(eng_tokenizer *t, const char *s, size_t n);

static int split_added(eng_tokenizer *t, const tok_trie *tr, bool skip_special, const char *s, size_t n,
                       gap_fn gap) {
  size_t start = 0, i = 0;
  if (tr->n == 0) return gap(t, s, n);
  while (i < n) {
    size_t mlen = 0;
    int k = trie_match(t, tr, s + i, n - i, skip_special, &mlen);
    if (k < 0) {
      i++;
      continue;
    }
    const tok_added *a = &t->added[k];
    size_t ms = i, me = i + mlen;
    if (a->lstrip) ms -= trailing_ws(s + start, ms - start);
    if (a->rstrip) me += leading_ws(s + me, n - me);
    if (ms > start && gap(t, s + start, ms - start)) return -1;
    if (out_push(t, a->id)) return -1;
    start = i = me;
  }
  if (start < n) return gap(t, s + start, n - start);
  return 0;
}

static int gap_normalized(eng_tokenizer *t, const char *s, size_t n) { return pipeline(t, 0, s, n); }

static int gap_raw(eng_tokenizer *t, const char *s, size_t n) {
  if (t->norm == TOK_NORM_NFC && !tok_nfc_quick(s, n)) {
    t->norm_buf.n = 0;
    if (tok_nfc(s, n, &t->norm_buf, "encode")) return -1;
    s = t->norm_buf.p;
    n = t->norm_buf.n;
  }
  return split_added(t, &t->trie_norm, false, s, n, gap_normalized);
}

/* split_special_tokens: the raw pass skips special tokens; the normalized
 * pass then must skip them too */
static int gap_raw_nospecial(eng_tokenizer *t, const char *s, size_t n) {
  if (t->norm == TOK_NORM_NFC && !tok_nfc_quick(s, n)) {
    t->norm_buf.n = 0;
    if (tok_nfc(s, n, &t->norm_buf, "encode")) return -1;
    s = t->norm_buf.p;
    n = t->norm_buf.n;
  }
  return split_added(t, &t->trie_norm, true, s, n, gap_normalized);
}

int64_t eng_tok_encode(eng_tokenizer *t, const char *text, size_t len, const eng_tok_encode_opts *opts,
                       const int32_t **ids) {
  eng_tok_encode_opts o = {0};
  if (opts) o = *opts;
  if (!t) return eng_errorf_status("encode: no tokenizer");
  if (!text && len) return eng_errorf_status("encode: text is NULL");
  t->out_n = 0;
  if (o.add_special_tokens)
    for (int i = 0; i < t->n_prefix; i++)
      if (out_push(t, t->prefix_ids[i])) return -1;
  if (split_added(t, &t->trie_raw, o.split_special_tokens, text ? text : "", len,
                  o.split_special_tokens ? gap_raw_nospecial : gap_raw))
    return -1;
  if (o.add_special_tokens)
    for (int i = 0; i < t->n_suffix; i++)
      if (out_push(t, t->suffix_ids[i])) return -1;
  if (!t->out && out_push(t, 0) == 0) t->out_n = 0; /* a valid pointer even when empty */
  *ids = t->out;
  return (int64_t)t->out_n;
}

/* ======================================================================
 * Decoding and lookups
 * ====================================================================== */

const char *eng_tok_decode(eng_tokenizer *t, const int64_t *ids, size_t n, bool skip_special, size_t *len) {
  t->dec_buf.n = 0;
  if (tok_buf_reserve(&t->dec_buf, 0, "decode")) return NULL;
  for (size_t i = 0; i < n; i++) {
    int64_t id = ids[i];
    if (id < 0 || id >= t->vocab_size || !(t->flags[id] & TOK_F_PRESENT))
      return eng_errorf("decode: unknown token id %lld at position %zu (vocabulary has %lld)", (long long)id,
                        i + 1, (long long)t->vocab_size);
    if (skip_special && (t->flags[id] & TOK_F_SPECIAL)) continue;
    if (tok_buf_put(&t->dec_buf, t->dec[id], t->dec_len[id], "decode")) return NULL;
  }
  t->dec_buf.p[t->dec_buf.n] = 0;
  *len = t->dec_buf.n;
  return t->dec_buf.p;
}

int64_t eng_tok_vocab_size(const eng_tokenizer *t) { return t->vocab_size; }
int64_t eng_tok_eos_id(const eng_tokenizer *t) { return t->eos_id; }
int64_t eng_tok_bos_id(const eng_tokenizer *t) { return t->bos_id; }
int64_t eng_tok_pad_id(const eng_tokenizer *t) { return t->pad_id; }

int64_t eng_tok_id(const eng_tokenizer *t, const char *token, size_t len) {
  int32_t id = tok_strmap_get(&t->added_map, token, len);
  if (id >= 0) return id;
  return tok_strmap_get(&t->model_map, token, len);
}

const char *eng_tok_token(const eng_tokenizer *t, int64_t id, size_t *len) {
  if (id < 0 || id >= t->vocab_size || !(t->flags[id] & TOK_F_PRESENT)) return NULL;
  *len = t->tok_len[id];
  return t->tok_str[id];
}

bool eng_tok_is_special(const eng_tokenizer *t, int64_t id) {
  return id >= 0 && id < t->vocab_size && (t->flags[id] & TOK_F_SPECIAL);
}

void eng_tok_free(eng_tokenizer *t) {
  if (!t) return;
  for (int64_t i = 0; i < t->vocab_size; i++) {
    free(t->model_str[i]);
    free(t->dec[i]);
  }
  free(t->tok_str), free(t->tok_len), free(t->model_str), free(t->model_len);
  free(t->dec), free(t->dec_len), free(t->flags);
  tok_strmap_free(&t->model_map);
  tok_strmap_free(&t->added_map);
  free(t->merge_a), free(t->merge_b), free(t->merge_out);
  tok_pairmap_free(&t->merges);
  for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
  free(t->added);
  free(t->trie_raw.nodes), free(t->trie_norm.nodes);
  for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
  free(t->prefix_ids), free(t->suffix_ids);
  json_decref(t->j_normalizer), json_decref(t->j_pre_tokenizer), json_decref(t->j_post_processor);
  json_decref(t->j_decoder), json_decref(t->j_truncation), json_decref(t->j_padding);
  free(t->unk_token);
  free(t->config_text);
  tok_cache *c = &t->cache;
  free(c->hashes), free(c->key_off), free(c->key_len), free(c->ids_off), free(c->ids_len);
  tok_buf_free(&c->keys);
  free(c->ids);
  free(t->out);
  tok_buf_free(&t->dec_buf), tok_buf_free(&t->norm_buf), tok_buf_free(&t->piece_buf), tok_buf_free(&t->word_buf);
  pcre2_match_data_free(t->md);
  pcre2_match_context_free(t->mctx);
  pcre2_jit_stack_free(t->jit_stack);
  free(t->w_sym), free(t->w_prev), free(t->w_next), free(t->w_heap);
  free(t);
}
