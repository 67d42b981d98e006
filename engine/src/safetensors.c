/* safetensors.c — reading safetensors files: map the file, validate the
 * whole header before trusting any of it, answer questions about the
 * tensors, and load them into engine tensors (F32, F64, F16 and BF16, into
 * float32 or float64). Also the dtype table and the scalar F16/BF16
 * conversions, which the writer (safetensors_write.c) shares.
 *
 * The rules, each refused with a message naming the file, the tensor and the
 * rule: the file holds the 8-byte header length; the header length is at most
 * ENG_ST_MAX_HEADER and within the file; the header is JSON (parsed by
 * jansson, duplicate keys refused, no NUL bytes) and an object; "__metadata__", if there,
 * maps strings to strings; every other entry is an object with a dtype the
 * format defines, a shape of non-negative integers whose size in bytes fits
 * in 64 bits (and is a whole number of bytes), and data_offsets [begin, end]
 * of non-negative integers with begin <= end, end - begin the size, and end
 * within the data area; sorted by offset, the tensors tile the data area
 * exactly (the first starts at 0, each starts where the previous ended, the
 * last ends at the end of the file). The order of entries in the JSON does
 * not matter, as for the reference reader; unknown keys inside an entry are
 * ignored, as the reference reader ignores them.
 *
 * Not here: writing (safetensors_write.c), sharded checkpoints (Lua).
 * A file changed or truncated by someone else while it is mapped can still
 * fault on access: mapping trusts the file system for the file's size. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads little-endian data in place: it needs a little-endian host"
#endif

/* ======================================================================
 * Dtypes and scalar conversions
 * ====================================================================== */

/* every dtype the format defines, in the reference library's order */
static const struct {
  const char *name;
  int bits;
} DTYPES[] = {
    {"BOOL", 8},  {"F4", 4},       {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},   {"I8", 8},   {"F8_E5M2", 8},
    {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"I16", 16},   {"U16", 16},    {"F16", 16}, {"BF16", 16}, {"I32", 32},
    {"U32", 32},  {"F32", 32},     {"C64", 64},    {"F64", 64},    {"I64", 64}, {"U64", 64},
};
#define NDTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static int dtype_index(const char *name) {
  for (int i = 0; i < NDTYPES; i++)
    if (!strcmp(DTYPES[i].name, name)) return i;
  return -1;
}

int eng_st_dtype_bits(const char *dtype) {
  int i = dtype ? dtype_index(dtype) : -1;
  return i < 0 ? 0 : DTYPES[i].bits;
}

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* static inline so the loops below inline them (the public names are not
 * inlined in the position-independent library) */
static inline float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

static inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) & 0x8000u) | 0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
    float v = (float)m * 0x1p-24f;
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;   /* NaN */
  if (x >= 0x477ff000u) return sign | 0x7c00u;  /* >= 65520 rounds to infinity */
  if (x >= 0x38800000u) {                       /* normal half: >= 2^-14 */
    uint32_t r = x + 0xfffu + ((x >> 13) & 1u); /* round to nearest even at bit 13 */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
  }
  uint32_t e = x >> 23;
  if (e < 102) return sign; /* below 2^-25: rounds to zero */
  /* subnormal half: the value is mant * 2^(e-150); in units of 2^-24 that
   * is mant >> (126 - e), rounded to nearest even */
  uint32_t mant = (x & 0x7fffffu) | 0x800000u, shift = 126u - e;
  uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return sign | (uint16_t)q;
}

float eng_st_bf16_to_f32(uint16_t b) { return bf16_to_f32(b); }
uint16_t eng_st_f32_to_bf16(float f) { return f32_to_bf16(f); }
float eng_st_f16_to_f32(uint16_t h) { return f16_to_f32(h); }
uint16_t eng_st_f32_to_f16(float f) { return f32_to_f16(f); }

void eng_st_f32_to_f16_n(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}
void eng_st_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

/* ======================================================================
 * The handle
 * ====================================================================== */

typedef struct {
  char *key, *value;
} st_meta;

typedef struct {
  char *name;
  int dtype; /* index into DTYPES */
  int ndim;
  int64_t *shape;
  uint64_t begin, end;
} st_entry;

struct eng_safetensors {
  char *path;
  const unsigned char *buf; /* the whole file */
  size_t size;
  int mapped; /* buf is our mapping */
  const unsigned char *data; /* the data area */
  uint64_t data_size;
  int n;
  st_entry *e; /* sorted by name */
  int nmeta;
  st_meta *meta; /* sorted by key */
};

void eng_safetensors_close(eng_safetensors *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) {
    free(f->e[i].name);
    free(f->e[i].shape);
  }
  free(f->e);
  for (int i = 0; i < f->nmeta; i++) {
    free(f->meta[i].key);
    free(f->meta[i].value);
  }
  free(f->meta);
  if (f->mapped && f->buf) munmap((void *)f->buf, f->size);
  free(f->path);
  free(f);
}

/* "PATH: <message>" as the error; returns -1 */
static int st_fail(const eng_safetensors *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int st_fail(const eng_safetensors *f, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return eng_errorf_status("%s: %s", f->path, msg);
}

/* "[5,6]"; long shapes end in ",...]" */
static const char *dims_str(char *buf, size_t len, int ndim, const int64_t *shape) {
  size_t n = 0;
  buf[n++] = '[';
  buf[n] = 0;
  for (int i = 0; i < ndim; i++) {
    if (n + 32 >= len) {
      snprintf(buf + n, len - n, i ? ",..." : "...");
      n = strlen(buf);
      break;
    }
    n += (size_t)snprintf(buf + n, len - n, i ? ",%lld" : "%lld", (long long)shape[i]);
  }
  snprintf(buf + n, len - n, "]");
  return buf;
}

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
  }
}

/* compact JSON text of v, cut to fit buf */
static const char *json_text(char *buf, size_t len, const json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!s) {
    snprintf(buf, len, "%s", json_kind(v));
  } else if (strlen(s) < len) {
    snprintf(buf, len, "%s", s);
  } else {
    snprintf(buf, len, "%.*s...", (int)(len - 4), s);
  }
  free(s);
  return buf;
}

/* The key a duplicate-key error stopped at: jansson reports the byte
 * position just after the key's string token; the token starts at the
 * nearest quote before it that is not escaped (a quote inside a JSON string
 * always follows a backslash). jansson decodes the token. NULL if that
 * fails. */
static char *duplicate_key(const char *hdr, size_t len, int pos) {
  if (pos < 2 || (size_t)pos > len || hdr[pos - 1] != '"') return NULL;
  for (size_t s = (size_t)pos - 1; s-- > 0;) {
    if (hdr[s] != '"' || (s > 0 && hdr[s - 1] == '\\')) continue;
    json_t *k = json_loadb(hdr + s, (size_t)pos - s, JSON_DECODE_ANY, NULL);
    char *r = k && json_is_string(k) ? strdup(json_string_value(k)) : NULL;
    json_decref(k);
    return r;
  }
  return NULL;
}

/* a JSON integer >= 0, as uint64 */
static int json_size(const json_t *v, uint64_t *out) {
  if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
  *out = (uint64_t)json_integer_value(v);
  return 0;
}

static int parse_metadata(eng_safetensors *f, json_t *m) {
  if (json_is_null(m)) return 0;
  if (!json_is_object(m)) return st_fail(f, "__metadata__ is %s, not an object of strings", json_kind(m));
  size_t n = json_object_size(m);
  f->meta = calloc(n ? n : 1, sizeof *f->meta);
  if (!f->meta) return st_fail(f, "out of memory reading the header");
  const char *k;
  json_t *v;
  json_object_foreach(m, k, v) {
    if (!json_is_string(v)) return st_fail(f, "__metadata__ key '%s' holds %s, not a string", k, json_kind(v));
    st_meta *p = &f->meta[f->nmeta++];
    p->key = strdup(k);
    p->value = strdup(json_string_value(v));
    if (!p->key || !p->value) return st_fail(f, "out of memory reading the header");
  }
  return 0;
}

/* one tensor entry: everything that can be checked without the others */
static int parse_entry(eng_safetensors *f, const char *name, json_t *v, st_entry *e) {
  char sb[256], tb[128];
  e->name = strdup(name);
  if (!e->name) return st_fail(f, "out of memory reading the header");
  if (!json_is_object(v)) return st_fail(f, "tensor '%s': entry is %s, not an object", name, json_kind(v));

  json_t *dt = json_object_get(v, "dtype");
  if (!dt) return st_fail(f, "tensor '%s': no \"dtype\"", name);
  if (!json_is_string(dt)) return st_fail(f, "tensor '%s': dtype is %s, not a string", name, json_kind(dt));
  e->dtype = dtype_index(json_string_value(dt));
  if (e->dtype < 0) return st_fail(f, "tensor '%s': unknown dtype '%s'", name, json_string_value(dt));
  const char *dname = DTYPES[e->dtype].name;

  json_t *sh = json_object_get(v, "shape");
  if (!sh) return st_fail(f, "tensor '%s': no \"shape\"", name);
  if (!json_is_array(sh)) return st_fail(f, "tensor '%s': shape is %s, not an array", name, json_kind(sh));
  size_t nd = json_array_size(sh);
  if (nd > INT32_MAX) return st_fail(f, "tensor '%s': shape has too many dims", name);
  e->ndim = (int)nd;
  e->shape = malloc(sizeof(int64_t) * (nd ? nd : 1));
  if (!e->shape) return st_fail(f, "out of memory reading the header");
  uint64_t numel = 1;
  int overflow = 0, zero = 0;
  for (size_t i = 0; i < nd; i++) {
    uint64_t s;
    if (json_size(json_array_get(sh, i), &s))
      return st_fail(f, "tensor '%s': shape entry %zu is %s, not a size (an integer >= 0)", name, i + 1,
                     json_text(tb, sizeof tb, json_array_get(sh, i)));
    e->shape[i] = (int64_t)s;
    if (s == 0) zero = 1;
    else if (numel > UINT64_MAX / s) overflow = 1;
    else numel *= s;
  }
  const char *shape = dims_str(sb, sizeof sb, e->ndim, e->shape);
  uint64_t bits = (uint64_t)DTYPES[e->dtype].bits;
  if (zero) numel = 0;
  else if (overflow || numel > UINT64_MAX / bits)
    return st_fail(f, "tensor '%s': the size of %s %s overflows 64 bits", name, dname, shape);
  if (numel * bits % 8)
    return st_fail(f, "tensor '%s': %s %s is %llu bits, not a whole number of bytes", name, dname, shape,
                   (unsigned long long)(numel * bits));
  uint64_t nbytes = numel * bits / 8;

  json_t *off = json_object_get(v, "data_offsets");
  if (!off) return st_fail(f, "tensor '%s': no \"data_offsets\"", name);
  if (!json_is_array(off) || json_array_size(off) != 2 || json_size(json_array_get(off, 0), &e->begin) ||
      json_size(json_array_get(off, 1), &e->end))
    return st_fail(f, "tensor '%s': data_offsets must be [begin, end], two integers >= 0; got %s", name,
                   json_text(tb, sizeof tb, off));
  unsigned long long b = e->begin, en = e->end;
  if (b > en) return st_fail(f, "tensor '%s': data_offsets [%llu, %llu] end before they begin", name, b, en);
  if (en - b != nbytes)
    return st_fail(f, "tensor '%s': data_offsets [%llu, %llu] but %s %s needs %llu bytes", name, b, en, dname,
                   shape, (unsigned long long)nbytes);
  if (en > f->data_size)
    return st_fail(f, "tensor '%s': data_offsets [%llu, %llu] run past the end of the data area (%llu bytes)",
                   name, b, en, (unsigned long long)f->data_size);
  return 0;
}

static int by_offset(const void *pa, const void *pb) {
  const st_entry *a = *(const st_entry *const *)pa, *b = *(const st_entry *const *)pb;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return strcmp(a->name, b->name);
}

/* sorted by offset, the tensors must tile the data area exactly */
static int check_tiling(eng_safetensors *f) {
  st_entry **order = malloc(sizeof *order * (size_t)(f->n ? f->n : 1));
  if (!order) return st_fail(f, "out of memory reading the header");
  for (int i = 0; i < f->n; i++) order[i] = &f->e[i];
  qsort(order, (size_t)f->n, sizeof *order, by_offset);
  uint64_t at = 0;
  const st_entry *prev = NULL;
  int rc = 0;
  for (int i = 0; i < f->n && !rc; i++) {
    const st_entry *e = order[i];
    unsigned long long b = e->begin, en = e->end;
    if (b < at)
      rc = st_fail(f, "tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' at [%llu, %llu]", e->name, b, en,
                   prev->name, (unsigned long long)prev->begin, (unsigned long long)prev->end);
    else if (b > at && !prev)
      rc = st_fail(f, "tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes at the start of the data area",
                   e->name, b, en, b - at);
    else if (b > at)
      rc = st_fail(f, "tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes after tensor '%s' (which ends at %llu)",
                   e->name, b, en, b - (unsigned long long)at, prev->name, (unsigned long long)at);
    at = e->end;
    prev = e;
  }
  if (!rc && at != f->data_size) {
    unsigned long long ds = f->data_size;
    if (!prev)
      rc = st_fail(f, "the header lists no tensors, but the data area holds %llu bytes", ds);
    else
      rc = st_fail(f, "the data area holds %llu bytes, but the tensors end at %llu (tensor '%s'): %llu bytes are unaccounted for",
                   ds, (unsigned long long)at, prev->name, ds - (unsigned long long)at);
  }
  free(order);
  return rc;
}

static int by_name(const void *pa, const void *pb) {
  return strcmp(((const st_entry *)pa)->name, ((const st_entry *)pb)->name);
}

static int by_key(const void *pa, const void *pb) {
  return strcmp(((const st_meta *)pa)->key, ((const st_meta *)pb)->key);
}

/* validate f->buf (f->size bytes) and fill in the rest of f */
static int parse(eng_safetensors *f) {
  if (f->size < 8)
    return st_fail(f, "file is %zu bytes, too short for the 8-byte header length", f->size);
  uint64_t n;
  memcpy(&n, f->buf, 8);
  if (n > ENG_ST_MAX_HEADER)
    return st_fail(f, "header length %llu is over the limit of %llu bytes", (unsigned long long)n,
                   ENG_ST_MAX_HEADER);
  if (n > f->size - 8)
    return st_fail(f, "header length %llu runs past the end of the file (%zu bytes)", (unsigned long long)n,
                   f->size);
  const char *hdr = (const char *)f->buf + 8;
  f->data = f->buf + 8 + n;
  f->data_size = f->size - 8 - n;

  /* jansson skips NUL bytes in its input; JSON has none outside strings and
   * none raw inside them */
  const char *nul = memchr(hdr, 0, (size_t)n);
  if (nul) return st_fail(f, "header holds a NUL byte at offset %zu (JSON text has none)", (size_t)(nul - hdr));
  json_error_t err;
  json_t *root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &err);
  if (!root) {
    if (json_error_code(&err) == json_error_duplicate_key) {
      char *k = duplicate_key(hdr, (size_t)n, err.position);
      int rc = k ? st_fail(f, "header: key '%s' appears twice (line %d, column %d)", k, err.line, err.column)
                 : st_fail(f, "header: %s (line %d, column %d)", err.text, err.line, err.column);
      free(k);
      return rc;
    }
    return st_fail(f, "header is not valid JSON: %s (line %d, column %d)", err.text, err.line, err.column);
  }
  int rc = 0;
  if (!json_is_object(root)) {
    rc = st_fail(f, "header is %s, not a JSON object", json_kind(root));
    json_decref(root);
    return rc;
  }
  size_t count = json_object_size(root);
  if (count > INT32_MAX) {
    json_decref(root);
    return st_fail(f, "header lists too many tensors");
  }
  f->e = calloc(count ? count : 1, sizeof *f->e);
  if (!f->e) {
    json_decref(root);
    return st_fail(f, "out of memory reading the header");
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (!strcmp(key, "__metadata__")) {
      rc = parse_metadata(f, v);
    } else {
      rc = parse_entry(f, key, v, &f->e[f->n]);
      f->n++;
    }
    if (rc) break;
  }
  json_decref(root);
  if (!rc) rc = check_tiling(f);
  if (!rc) {
    qsort(f->e, (size_t)f->n, sizeof *f->e, by_name);
    if (f->nmeta > 1) qsort(f->meta, (size_t)f->nmeta, sizeof *f->meta, by_key);
  }
  return rc;
}

static eng_safetensors *new_handle(const char *path) {
  eng_safetensors *f = calloc(1, sizeof *f);
  if (f) f->path = strdup(path);
  if (!f || !f->path) {
    free(f);
    errno = ENOMEM;
    return eng_errorf("%s: out of memory", path);
  }
  return f;
}

eng_safetensors *eng_safetensors_open_memory(const void *data, size_t size, const char *name) {
  if (!name) name = "(memory)";
  if (!data && size) {
    errno = EINVAL;
    return eng_errorf("%s: no buffer given", name);
  }
  eng_safetensors *f = new_handle(name);
  if (!f) return NULL;
  f->buf = data;
  f->size = size;
  if (parse(f)) {
    eng_safetensors_close(f);
    errno = EINVAL;
    return NULL;
  }
  return f;
}

/* the system's reason, as "PATH: cannot open: ...", errno kept */
static void *io_fail(const char *path, const char *what, int err) {
  eng_errorf("%s: %s: %s", path, what, strerror(err));
  errno = err;
  return NULL;
}

eng_safetensors *eng_safetensors_open(const char *path) {
  if (!path) {
    errno = EINVAL;
    return eng_errorf("safetensors: no path given");
  }
  /* O_NONBLOCK: a FIFO must not hang the open; it is then refused below */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return io_fail(path, "cannot open", errno);
  struct stat st;
  if (fstat(fd, &st)) {
    int err = errno;
    close(fd);
    return io_fail(path, "cannot stat", err);
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return io_fail(path, "cannot open", EISDIR);
  }
  eng_safetensors *f = new_handle(path);
  if (!f) {
    close(fd);
    return NULL;
  }
  f->size = (size_t)st.st_size;
  if (!S_ISREG(st.st_mode) || st.st_size < 8) {
    /* nothing to map: let parse() word the refusal */
    close(fd);
    if (!S_ISREG(st.st_mode)) {
      st_fail(f, "not a regular file");
    } else {
      f->buf = (const unsigned char *)"";
      parse(f);
    }
    eng_safetensors_close(f);
    errno = EINVAL;
    return NULL;
  }
  void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd);
  if (m == MAP_FAILED) {
    eng_safetensors_close(f);
    return io_fail(path, "cannot map", err);
  }
  f->buf = m;
  f->mapped = 1;
  if (parse(f)) {
    eng_safetensors_close(f);
    errno = EINVAL;
    return NULL;
  }
  return f;
}

/* ======================================================================
 * Questions
 * ====================================================================== */

const char *eng_safetensors_path(const eng_safetensors *f) { return f ? f->path : NULL; }
int eng_safetensors_count(const eng_safetensors *f) { return f ? f->n : 0; }

const char *eng_safetensors_name(const eng_safetensors *f, int i) {
  return f && i >= 0 && i < f->n ? f->e[i].name : NULL;
}

static st_entry *find(const eng_safetensors *f, const char *name) {
  st_entry key = {.name = (char *)name};
  return f->n ? bsearch(&key, f->e, (size_t)f->n, sizeof *f->e, by_name) : NULL;
}

static int loadable_dtype(int dt) {
  const char *n = DTYPES[dt].name;
  return !strcmp(n, "F32") || !strcmp(n, "F64") || !strcmp(n, "F16") || !strcmp(n, "BF16");
}

int eng_safetensors_info(const eng_safetensors *f, const char *name, eng_st_info *info) {
  if (!f || !name || !info) return eng_errorf_status("safetensors info: no handle, name or result given");
  st_entry *e = find(f, name);
  if (!e) return st_fail(f, "no tensor named '%s'", name);
  info->dtype = DTYPES[e->dtype].name;
  info->ndim = e->ndim;
  info->shape = e->shape;
  info->data_begin = e->begin;
  info->data_end = e->end;
  info->loadable = loadable_dtype(e->dtype) && e->ndim <= ENG_MAX_DIMS;
  return 0;
}

int eng_safetensors_metadata_count(const eng_safetensors *f) { return f ? f->nmeta : 0; }

const char *eng_safetensors_metadata_key(const eng_safetensors *f, int i) {
  return f && i >= 0 && i < f->nmeta ? f->meta[i].key : NULL;
}

const char *eng_safetensors_metadata_value(const eng_safetensors *f, const char *key) {
  if (!f || !key) return NULL;
  st_meta k = {.key = (char *)key};
  st_meta *hit = f->nmeta ? bsearch(&k, f->meta, (size_t)f->nmeta, sizeof *f->meta, by_key) : NULL;
  return hit ? hit->value : NULL;
}

/* ======================================================================
 * Loading
 * ====================================================================== */

/* src (n elements of a file dtype, any alignment) -> dst (float or double);
 * the file's pages are touched in parallel for large tensors */
#define CONVERT_LOOP(DST_T, EXPR, WIDTH)                                      \
  do {                                                                        \
    DST_T *d_ = dst;                                                          \
    _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")       \
    for (int64_t i = 0; i < n; i++) {                                         \
      const unsigned char *p = src + (size_t)i * (WIDTH);                     \
      d_[i] = (DST_T)(EXPR);                                                  \
    }                                                                         \
  } while (0)

static inline float ld_f32(const unsigned char *p) {
  float v;
  memcpy(&v, p, 4);
  return v;
}
static inline double ld_f64(const unsigned char *p) {
  double v;
  memcpy(&v, p, 8);
  return v;
}
static inline uint16_t ld_u16(const unsigned char *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

/* a plain copy in chunks spread over the threads */
static void copy_parallel(void *dst, const void *src, size_t nbytes) {
  const size_t chunk = (size_t)1 << 20;
  int64_t nchunks = (int64_t)((nbytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (nchunks >= 8)
  for (int64_t c = 0; c < nchunks; c++) {
    size_t off = (size_t)c * chunk, len = nbytes - off < chunk ? nbytes - off : chunk;
    memcpy((char *)dst + off, (const char *)src + off, len);
  }
}

static void convert(const unsigned char *src, const char *from, void *dst, eng_dtype to, int64_t n) {
  if (!strcmp(from, "F32")) {
    if (to == ENG_DTYPE_F32) copy_parallel(dst, src, (size_t)n * 4);
    else CONVERT_LOOP(double, ld_f32(p), 4);
  } else if (!strcmp(from, "F64")) {
    if (to == ENG_DTYPE_F64) copy_parallel(dst, src, (size_t)n * 8);
    else CONVERT_LOOP(float, ld_f64(p), 8);
  } else if (!strcmp(from, "F16")) {
    if (to == ENG_DTYPE_F32) CONVERT_LOOP(float, f16_to_f32(ld_u16(p)), 2);
    else CONVERT_LOOP(double, f16_to_f32(ld_u16(p)), 2);
  } else { /* BF16 */
    if (to == ENG_DTYPE_F32) CONVERT_LOOP(float, bf16_to_f32(ld_u16(p)), 2);
    else CONVERT_LOOP(double, bf16_to_f32(ld_u16(p)), 2);
  }
}

eng_tensor *eng_safetensors_load(eng_safetensors *f, const char *name, eng_dtype dt) {
  if (!f || !name) return eng_errorf("safetensors load: no handle or name given");
  if (dt != ENG_DTYPE_F32 && dt != ENG_DTYPE_F64)
    return eng_errorf("%s: tensor '%s': unknown engine dtype %d", f->path, name, (int)dt);
  st_entry *e = find(f, name);
  if (!e) return st_fail(f, "no tensor named '%s'", name), NULL;
  const char *from = DTYPES[e->dtype].name;
  if (!loadable_dtype(e->dtype))
    return st_fail(f, "tensor '%s' is %s, which the engine cannot load (it loads F32, F64, F16 and BF16)", name,
                   from),
           NULL;
  if (e->ndim > ENG_MAX_DIMS)
    return st_fail(f, "tensor '%s' has %d dims; the engine's tensors have at most %d", name, e->ndim, ENG_MAX_DIMS),
           NULL;
  eng_tensor *t = eng_empty(dt, e->ndim, e->shape);
  if (!t) {
    char why[512];
    snprintf(why, sizeof why, "%s", eng_last_error());
    return st_fail(f, "tensor '%s': %s", name, why), NULL;
  }
  convert(f->data + e->begin, from, eng_tensor_data(t), dt, eng_tensor_numel(t));
  return t;
}
