/* tokenizer_util.c — the tokenizer's plumbing: the growable byte buffer,
 * hashing, the string -> id and (id, id) -> rank hash maps (open
 * addressing, linear probing), strict UTF-8 decoding and encoding, and
 * GPT-2's byte-level alphabet (bytes_to_unicode). No tokenizer logic here:
 * that is tokenizer_bpe.c (encoding, decoding) and tokenizer_load.c. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ======================================================================
 * Buffers and hashing
 * ====================================================================== */

int tok_buf_reserve(tok_buf *b, size_t more, const char *op) {
  if (b->n + more + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->n + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return eng_errorf_status("%s: out of memory (%zu bytes)", op, cap);
  b->p = p;
  b->cap = cap;
  return 0;
}

int tok_buf_put(tok_buf *b, const void *s, size_t len, const char *op) {
  if (tok_buf_reserve(b, len, op)) return -1;
  if (len) memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = 0;
  return 0;
}

void tok_buf_free(tok_buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

uint64_t tok_hash(const void *s, size_t len) {
  const uint8_t *p = s;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (len * 0xC2B2AE3D27D4EB4Full);
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    h = (h ^ v) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    p += 8;
    len -= 8;
  }
  uint64_t v = 0;
  memcpy(&v, p, len);
  h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 32;
  return h;
}

static uint32_t pow2_at_least(uint64_t n) {
  uint32_t c = 16;
  while (c < n && c < (1u << 31)) c <<= 1;
  return c;
}

/* ======================================================================
 * String map
 * ====================================================================== */

int tok_strmap_init(tok_strmap *m, uint32_t expected, const char *op) {
  uint32_t cap = pow2_at_least((uint64_t)expected * 2);
  m->slots = malloc(sizeof *m->slots * cap);
  if (!m->slots) return eng_errorf_status("%s: out of memory", op);
  for (uint32_t i = 0; i < cap; i++) m->slots[i] = (tok_slot){NULL, 0, -1};
  m->mask = cap - 1;
  m->count = 0;
  return 0;
}

void tok_strmap_free(tok_strmap *m) {
  free(m->slots);
  m->slots = NULL;
  m->mask = m->count = 0;
}

static int strmap_grow(tok_strmap *m, const char *op) {
  tok_strmap n;
  if (tok_strmap_init(&n, m->mask + 1, op)) return -1;
  for (uint32_t i = 0; i <= m->mask; i++) {
    tok_slot sl = m->slots[i];
    if (sl.id < 0) continue;
    uint32_t s = (uint32_t)tok_hash(sl.key, sl.len) & n.mask;
    while (n.slots[s].id >= 0) s = (s + 1) & n.mask;
    n.slots[s] = sl;
  }
  n.count = m->count;
  tok_strmap_free(m);
  *m = n;
  return 0;
}

int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t id, int32_t *old, const char *op) {
  if (old) *old = -1;
  if (!m->slots && tok_strmap_init(m, 64, op)) return -1;
  if ((m->count + 1) * 2 > m->mask + 1 && strmap_grow(m, op)) return -1;
  uint32_t i = (uint32_t)tok_hash(key, len) & m->mask;
  for (;; i = (i + 1) & m->mask) {
    tok_slot *sl = &m->slots[i];
    if (sl->id < 0) break;
    if (sl->len == len && !memcmp(sl->key, key, len)) {
      if (old) *old = sl->id;
      sl->key = key;
      sl->id = id;
      return 0;
    }
  }
  m->slots[i] = (tok_slot){key, len, id};
  m->count++;
  return 0;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len) {
  if (!m->slots) return -1;
  uint32_t i = (uint32_t)tok_hash(s, len) & m->mask;
  for (;; i = (i + 1) & m->mask) {
    const tok_slot *sl = &m->slots[i];
    if (sl->id < 0) return -1;
    if (sl->len == len && !memcmp(sl->key, s, len)) return sl->id;
  }
}

/* ======================================================================
 * Pair map: (a, b) -> rank
 * ====================================================================== */

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static inline uint32_t pair_slot(uint64_t key, uint32_t mask) {
  key *= 0x9E3779B97F4A7C15ull;
  return (uint32_t)(key >> 32) & mask;
}

int tok_pairmap_init(tok_pairmap *m, uint32_t expected, const char *op) {
  uint32_t cap = pow2_at_least((uint64_t)expected * 2);
  m->keys = malloc(sizeof *m->keys * cap);
  m->ranks = malloc(sizeof *m->ranks * cap);
  if (!m->keys || !m->ranks) {
    free(m->keys);
    free(m->ranks);
    m->keys = NULL;
    m->ranks = NULL;
    return eng_errorf_status("%s: out of memory", op);
  }
  memset(m->keys, 0xff, sizeof *m->keys * cap);
  m->mask = cap - 1;
  m->count = 0;
  return 0;
}

void tok_pairmap_free(tok_pairmap *m) {
  free(m->keys);
  free(m->ranks);
  m->keys = NULL;
  m->ranks = NULL;
  m->mask = m->count = 0;
}

static int pairmap_grow(tok_pairmap *m, const char *op) {
  tok_pairmap n;
  if (tok_pairmap_init(&n, (m->mask + 1), op)) return -1;
  for (uint32_t i = 0; i <= m->mask; i++) {
    if (m->keys[i] == UINT64_MAX) continue;
    uint32_t s = pair_slot(m->keys[i], n.mask);
    while (n.keys[s] != UINT64_MAX) s = (s + 1) & n.mask;
    n.keys[s] = m->keys[i];
    n.ranks[s] = m->ranks[i];
  }
  n.count = m->count;
  tok_pairmap_free(m);
  *m = n;
  return 0;
}

/* a later rank for the same pair replaces the earlier one (as a HashMap
 * collected from the merges list does in Hugging Face tokenizers) */
int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, const char *op) {
  if (!m->keys && tok_pairmap_init(m, 64, op)) return -1;
  if ((m->count + 1) * 2 > m->mask + 1 && pairmap_grow(m, op)) return -1;
  uint64_t key = pair_key(a, b);
  uint32_t i = pair_slot(key, m->mask);
  while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
  if (m->keys[i] == UINT64_MAX) m->count++;
  m->keys[i] = key;
  m->ranks[i] = rank;
  return 0;
}

int32_t tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b) {
  if (!m->keys) return -1;
  uint64_t key = pair_key(a, b);
  uint32_t i = pair_slot(key, m->mask);
  for (;; i = (i + 1) & m->mask) {
    if (m->keys[i] == key) return m->ranks[i];
    if (m->keys[i] == UINT64_MAX) return -1;
  }
}

/* ======================================================================
 * UTF-8 and the byte-level alphabet
 * ====================================================================== */

size_t tok_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
  if (n == 0) return 0;
  uint8_t c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  uint32_t v, min;
  if (c >= 0xC2 && c <= 0xDF) len = 2, v = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, v = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, v = c & 0x07, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

size_t tok_utf8_encode(uint32_t cp, char *out) {
  uint8_t *o = (uint8_t *)out;
  if (cp < 0x80) {
    o[0] = (uint8_t)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (uint8_t)(0xC0 | (cp >> 6));
    o[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (uint8_t)(0xE0 | (cp >> 12));
    o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (uint8_t)(0xF0 | (cp >> 18));
  o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

bool tok_is_utf8(const char *s, size_t len) {
  size_t i = 0;
  uint32_t cp;
  while (i < len) {
    size_t k = tok_utf8_decode((const uint8_t *)s + i, len - i, &cp);
    if (!k) return false;
    i += k;
  }
  return true;
}

/* GPT-2's bytes_to_unicode: printable bytes (! to ~, ¡ to ¬, ® to ÿ) stand
 * for themselves; the other 68 bytes, in order, become U+0100 .. U+0143 */
uint32_t tok_byte_to_cp(uint8_t b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
  if (b <= 32) return 256u + b;
  if (b >= 127 && b <= 160) return 289u + (b - 127u);
  return 323u; /* 173, the soft hyphen */
}

int tok_cp_to_byte(uint32_t cp) {
  if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
  if (cp >= 256 && cp <= 288) return (int)(cp - 256);
  if (cp >= 289 && cp <= 322) return (int)(cp - 289 + 127);
  if (cp == 323) return 173;
  return -1;
}

int tok_bytes_to_spelling(tok_buf *b, const char *s, size_t len, const char *op) {
  if (tok_buf_reserve(b, len * 2, op)) return -1;
  for (size_t i = 0; i < len; i++) b->n += tok_utf8_encode(tok_byte_to_cp((uint8_t)s[i]), b->p + b->n);
  b->p[b->n] = 0;
  return 0;
}
