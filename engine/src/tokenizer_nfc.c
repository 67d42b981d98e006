/* tokenizer_nfc.c — Unicode Normalization Form C for the tokenizer's NFC
 * normalizer (Qwen2's tokenizer.json asks for it): canonical decomposition,
 * canonical ordering by combining class, then canonical composition, as in
 * UAX #15, with Hangul by arithmetic and the tables of tokenizer_nfc_data.c
 * (Unicode 14.0). A quick check skips text that NFC leaves unchanged
 * (every code point below U+0300, or none in the "unsafe" set).
 * Invalid UTF-8 bytes are copied through unchanged, and nothing composes
 * across them. What it does not do: NFD, NFKC, NFKD, case folding. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define SBASE 0xAC00u
#define LBASE 0x1100u
#define VBASE 0x1161u
#define TBASE 0x11A7u
#define LCOUNT 19u
#define VCOUNT 21u
#define TCOUNT 28u
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)

static int ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  int lo = 0, hi = tok_nfc_ccc_table_n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint32_t v = tok_nfc_ccc_table[mid].cp;
    if (v == cp) return tok_nfc_ccc_table[mid].ccc;
    if (v < cp) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

static const tok_nfc_dec *dec_of(uint32_t cp) {
  int lo = 0, hi = tok_nfc_dec_table_n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint32_t v = tok_nfc_dec_table[mid].cp;
    if (v == cp) return &tok_nfc_dec_table[mid];
    if (v < cp) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

/* the primary composite of a + b, or 0 */
static uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
    return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
  if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
    return a + (b - TBASE);
  int lo = 0, hi = tok_nfc_comp_table_n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    const tok_nfc_comp *c = &tok_nfc_comp_table[mid];
    if (c->a == a && c->b == b) return c->c;
    if (c->a < a || (c->a == a && c->b < b)) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

static bool unsafe(uint32_t cp) {
  if (cp < 0x300) return false;
  int lo = 0, hi = tok_nfc_unsafe_table_n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (cp < tok_nfc_unsafe_table[mid].lo) hi = mid - 1;
    else if (cp > tok_nfc_unsafe_table[mid].hi) lo = mid + 1;
    else return true;
  }
  return false;
}

bool tok_nfc_quick(const char *s, size_t len) {
  const uint8_t *p = (const uint8_t *)s;
  size_t i = 0;
  while (i < len) {
    if (p[i] < 0xCC) { /* ASCII, and 2-byte sequences below U+0300 */
      i += p[i] < 0x80 ? 1 : 1 + (i + 1 < len && (p[i + 1] & 0xC0) == 0x80);
      continue;
    }
    uint32_t cp;
    size_t k = tok_utf8_decode(p + i, len - i, &cp);
    if (!k) {
      i++;
      continue;
    }
    if (unsafe(cp)) return false;
    i += k;
  }
  return true;
}

/* code point buffer */
typedef struct {
  uint32_t *v;
  size_t n, cap;
} cpbuf;

static int cp_push(cpbuf *b, uint32_t cp) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    uint32_t *v = realloc(b->v, sizeof *v * cap);
    if (!v) return -1;
    b->v = v;
    b->cap = cap;
  }
  b->v[b->n++] = cp;
  return 0;
}

static int decompose(cpbuf *b, uint32_t cp, int depth) {
  if (cp >= SBASE && cp < SBASE + SCOUNT) {
    uint32_t si = cp - SBASE;
    if (cp_push(b, LBASE + si / NCOUNT) || cp_push(b, VBASE + (si % NCOUNT) / TCOUNT)) return -1;
    if (si % TCOUNT) return cp_push(b, TBASE + si % TCOUNT);
    return 0;
  }
  const tok_nfc_dec *d = depth < 8 ? dec_of(cp) : NULL;
  if (!d) return cp_push(b, cp);
  if (decompose(b, d->a, depth + 1)) return -1;
  return d->b ? decompose(b, d->b, depth + 1) : 0;
}

/* NFC of the code points v[0..n) in place; returns the new length */
static size_t nfc_run(uint32_t *v, size_t n) {
  if (n == 0) return 0;
  /* canonical ordering: stable sort of each run of non-starters by class */
  for (size_t i = 1; i < n; i++) {
    int c = ccc_of(v[i]);
    if (c == 0) continue;
    size_t j = i;
    while (j > 0) {
      int p = ccc_of(v[j - 1]);
      if (p <= c) break;
      uint32_t tmp = v[j];
      v[j] = v[j - 1];
      v[j - 1] = tmp;
      j--;
    }
  }
  /* composition (UAX #15's reference algorithm) */
  size_t starter = 0, out = 1;
  uint32_t starter_cp = v[0];
  int last = ccc_of(starter_cp) ? 256 : 0;
  for (size_t i = 1; i < n; i++) {
    uint32_t ch = v[i];
    int cls = ccc_of(ch);
    uint32_t comp = compose(starter_cp, ch);
    if (comp && (last < cls || last == 0)) {
      v[starter] = starter_cp = comp;
    } else {
      if (cls == 0) {
        starter = out;
        starter_cp = ch;
      }
      last = cls;
      v[out++] = ch;
    }
  }
  return out;
}

static int flush(cpbuf *b, tok_buf *out, const char *op) {
  size_t n = nfc_run(b->v, b->n);
  if (tok_buf_reserve(out, n * 4, op)) return -1;
  for (size_t i = 0; i < n; i++) out->n += tok_utf8_encode(b->v[i], out->p + out->n);
  out->p[out->n] = 0;
  b->n = 0;
  return 0;
}

int tok_nfc(const char *s, size_t len, tok_buf *out, const char *op) {
  cpbuf b = {0};
  const uint8_t *p = (const uint8_t *)s;
  size_t i = 0;
  int rc = 0;
  while (i < len && !rc) {
    uint32_t cp;
    size_t k = tok_utf8_decode(p + i, len - i, &cp);
    if (!k) { /* an invalid byte: a barrier, copied as it is */
      rc = flush(&b, out, op) || tok_buf_put(out, s + i, 1, op) ? -1 : 0;
      i++;
      continue;
    }
    if (decompose(&b, cp, 0)) rc = eng_errorf_status("%s: out of memory", op);
    i += k;
  }
  if (!rc) rc = flush(&b, out, op);
  free(b.v);
  return rc;
}
