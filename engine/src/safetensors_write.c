/* safetensors_write.c — writing safetensors files, atomically.
 *
 * The layout is the reference writer's (huggingface/safetensors,
 * tensor.rs `prepare`): tensors ordered by descending dtype (F64, F32, BF16,
 * F16) and then by name, data packed in that order from offset 0, the header
 * compact JSON with "__metadata__" first (its keys sorted here, so equal
 * inputs give equal bytes) and each entry as {"dtype","shape","data_offsets"},
 * padded with spaces to a multiple of 8 bytes so the data area starts
 * 8-aligned. float32 tensors are written as F32 and float64 as F64 unless a
 * dtype is asked for (then converted: to F16/BF16 rounding to nearest even).
 *
 * Atomic: the bytes go to PATH.tmp-<pid> in the same directory, which is
 * fsynced, closed and renamed over PATH; then the directory is fsynced. A
 * crash leaves either the old file or the new one (and at worst a stray
 * temporary), never a half-written PATH. On failure the temporary is removed.
 *
 * Not here: reading (safetensors.c), shards and index files (Lua). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ======================================================================
 * Atomic file replacement
 * ====================================================================== */

/* writes the file's contents to fd; 0, or -1 with errno and a message */
typedef int (*emit_fn)(int fd, const char *path, void *ctx);

static int io_error(const char *path, const char *what, int err) {
  eng_errorf("%s: %s: %s", path, what, strerror(err));
  errno = err;
  return -1;
}

static int write_all(int fd, const char *path, const void *buf, size_t n) {
  const char *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return io_error(path, "cannot write", errno);
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* fsync the directory holding path, so the rename itself is durable */
static int sync_dir(const char *path) {
  char *copy = strdup(path);
  if (!copy) return io_error(path, "cannot sync its directory", ENOMEM);
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(copy);
  if (fd < 0) return io_error(path, "cannot open its directory to sync it", errno);
  int rc = 0;
  /* file systems that cannot sync a directory say EINVAL: nothing to do */
  if (fsync(fd) && errno != EINVAL) rc = io_error(path, "cannot sync its directory", errno);
  close(fd);
  return rc;
}

static int write_atomic(const char *path, emit_fn emit, void *ctx) {
  size_t len = strlen(path) + 32;
  char *tmp = malloc(len);
  if (!tmp) return io_error(path, "cannot write", ENOMEM);
  snprintf(tmp, len, "%s.tmp-%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && errno == EEXIST) { /* left by a crashed process that had our pid */
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  }
  if (fd < 0) {
    int err = errno;
    char what[64];
    snprintf(what, sizeof what, "cannot create %s", strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp);
    free(tmp);
    return io_error(path, what, err);
  }
  int rc = emit(fd, path, ctx);
  if (!rc && fsync(fd)) rc = io_error(path, "cannot sync", errno);
  if (close(fd) && !rc) rc = io_error(path, "cannot write (close failed)", errno);
  if (!rc && rename(tmp, path)) rc = io_error(path, "cannot replace it", errno);
  if (rc) {
    int err = errno;
    unlink(tmp);
    errno = err;
  } else {
    rc = sync_dir(path);
  }
  free(tmp);
  return rc;
}

typedef struct {
  const void *data;
  size_t n;
} bytes_ctx;

static int emit_bytes(int fd, const char *path, void *ctx) {
  bytes_ctx *b = ctx;
  return write_all(fd, path, b->data, b->n);
}

int eng_st_write_file_atomic(const char *path, const void *data, size_t n) {
  if (!path || (!data && n)) {
    errno = EINVAL;
    return eng_errorf_status("write_file_atomic: no path or data given");
  }
  bytes_ctx b = {data, n};
  return write_atomic(path, emit_bytes, &b);
}

/* ======================================================================
 * The safetensors writer
 * ====================================================================== */

/* the dtypes written, with their rank in the reference's dtype order */
typedef enum { OUT_F16, OUT_BF16, OUT_F32, OUT_F64 } out_kind;
static const char *const OUT_NAMES[] = {"F16", "BF16", "F32", "F64"};
static const size_t OUT_SIZE[] = {2, 2, 4, 8};

typedef struct {
  const char *name;
  eng_tensor *t;
  out_kind kind;
  uint64_t nbytes, begin;
} item;

typedef struct {
  item *items;
  int n;
  const char *header; /* padded */
  size_t header_len;
} save_ctx;

static int invalid(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int invalid(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  eng_errorf("%s", msg);
  errno = EINVAL;
  return -1;
}

static int item_by_name(const void *pa, const void *pb) {
  return strcmp(((const item *)pa)->name, ((const item *)pb)->name);
}

/* descending dtype, then name: the reference's layout */
static int item_by_layout(const void *pa, const void *pb) {
  const item *a = pa, *b = pb;
  if (a->kind != b->kind) return a->kind > b->kind ? -1 : 1;
  return strcmp(a->name, b->name);
}

static int str_by_value(const void *pa, const void *pb) {
  return strcmp(**(const char *const *const *)pa, **(const char *const *const *)pb);
}

/* one tensor's values in `kind`, streamed through a small buffer when they
 * need converting. x is contiguous. */
static int emit_tensor(int fd, const char *path, eng_tensor *x, out_kind kind) {
  int64_t n = eng_tensor_numel(x);
  eng_dtype dt = eng_tensor_dtype(x);
  const void *src = eng_tensor_data(x);
  if ((kind == OUT_F32 && dt == ENG_DTYPE_F32) || (kind == OUT_F64 && dt == ENG_DTYPE_F64))
    return write_all(fd, path, src, (size_t)n * OUT_SIZE[kind]);
  enum { CHUNK = 4096 };
  float f[CHUNK];
  double d[CHUNK];
  uint16_t h[CHUNK];
  for (int64_t at = 0; at < n; at += CHUNK) {
    size_t m = (size_t)(n - at < CHUNK ? n - at : CHUNK);
    const void *out = f;
    if (kind == OUT_F64) { /* float32 -> F64 */
      for (size_t i = 0; i < m; i++) d[i] = ((const float *)src)[at + i];
      out = d;
    } else {
      if (dt == ENG_DTYPE_F64)
        for (size_t i = 0; i < m; i++) f[i] = (float)((const double *)src)[at + i];
      else
        memcpy(f, (const float *)src + at, m * sizeof(float));
      if (kind == OUT_F16) eng_st_f32_to_f16_n(h, f, m);
      if (kind == OUT_BF16) eng_st_f32_to_bf16_n(h, f, m);
      if (kind != OUT_F32) out = h;
    }
    if (write_all(fd, path, out, m * OUT_SIZE[kind])) return -1;
  }
  return 0;
}

static int emit_file(int fd, const char *path, void *vctx) {
  save_ctx *c = vctx;
  uint64_t n = c->header_len;
  unsigned char len8[8];
  memcpy(len8, &n, 8); /* little-endian host (checked in safetensors.c) */
  if (write_all(fd, path, len8, 8) || write_all(fd, path, c->header, c->header_len)) return -1;
  bool prev = eng_set_grad_enabled(false);
  int rc = 0;
  for (int i = 0; i < c->n && !rc; i++) {
    eng_tensor *x = eng_contiguous(c->items[i].t);
    if (!x) {
      char why[512];
      snprintf(why, sizeof why, "%s", eng_last_error());
      eng_errorf("%s: tensor '%s': %s", path, c->items[i].name, why);
      errno = ENOMEM;
      rc = -1;
      break;
    }
    rc = emit_tensor(fd, path, x, c->items[i].kind);
    eng_tensor_release(x);
  }
  eng_set_grad_enabled(prev);
  return rc;
}

/* the header: compact JSON, padded with spaces to a multiple of 8 */
static char *build_header(const char *path, item *items, int n, int nmeta, const char *const *keys,
                          const char *const *values, size_t *len) {
  json_t *root = json_object();
  const char ***order = nmeta ? malloc(sizeof *order * (size_t)nmeta) : NULL;
  char *text = NULL, *padded = NULL;
  if (!root || (nmeta && !order)) goto oom;
  if (nmeta) {
    json_t *meta = json_object();
    if (!meta || json_object_set_new(root, "__metadata__", meta)) goto oom;
    for (int i = 0; i < nmeta; i++) order[i] = (const char **)&keys[i];
    qsort(order, (size_t)nmeta, sizeof *order, str_by_value);
    for (int i = 0; i < nmeta; i++) {
      int k = (int)(order[i] - (const char **)keys);
      if (json_object_set_new(meta, keys[k], json_string(values[k]))) goto oom;
    }
  }
  for (int i = 0; i < n; i++) {
    json_t *e = json_object(), *shape = json_array(), *off = json_array();
    if (!e || !shape || !off) {
      json_decref(e);
      json_decref(shape);
      json_decref(off);
      goto oom;
    }
    const int64_t *s = eng_tensor_shape(items[i].t);
    for (int d = 0; d < eng_tensor_ndim(items[i].t); d++) json_array_append_new(shape, json_integer(s[d]));
    json_array_append_new(off, json_integer((json_int_t)items[i].begin));
    json_array_append_new(off, json_integer((json_int_t)(items[i].begin + items[i].nbytes)));
    json_object_set_new(e, "dtype", json_string(OUT_NAMES[items[i].kind]));
    json_object_set_new(e, "shape", shape);
    json_object_set_new(e, "data_offsets", off);
    if (json_object_set_new(root, items[i].name, e)) goto oom;
  }
  text = json_dumps(root, JSON_COMPACT);
  if (!text) goto oom;
  size_t tl = strlen(text), pad = (8 - tl % 8) % 8;
  padded = malloc(tl + pad + 1);
  if (!padded) goto oom;
  memcpy(padded, text, tl);
  memset(padded + tl, ' ', pad);
  padded[tl + pad] = 0;
  *len = tl + pad;
  free(text);
  free(order);
  json_decref(root);
  return padded;
oom:
  free(text);
  free(order);
  json_decref(root);
  eng_errorf("%s: out of memory building the header", path);
  errno = ENOMEM;
  return NULL;
}

/* a string jansson accepts as JSON text (valid UTF-8) */
static bool utf8_ok(const char *s) {
  json_t *j = json_string(s);
  json_decref(j);
  return j != NULL;
}

int eng_safetensors_save_as(const char *path, int n, const char *const *names, eng_tensor *const *tensors,
                            int nmeta, const char *const *keys, const char *const *values,
                            const char *dtype) {
  if (!path) return invalid("safetensors save: no path given");
  if (n < 0 || (n && (!names || !tensors)))
    return invalid("%s: %d tensors given without their names and tensors", path, n);
  if (nmeta < 0 || (nmeta && (!keys || !values)))
    return invalid("%s: %d metadata entries given without their keys and values", path, nmeta);
  int want = -1;
  if (dtype) {
    for (int k = 0; k < 4; k++)
      if (!strcmp(dtype, OUT_NAMES[k])) want = k;
    if (want < 0) return invalid("%s: cannot write dtype '%s' (the writer writes F32, F64, F16 or BF16)", path, dtype);
  }
  for (int i = 0; i < n; i++) {
    if (!names[i]) return invalid("%s: tensor %d has no name", path, i + 1);
    if (!tensors[i]) return invalid("%s: tensor '%s' is NULL", path, names[i]);
    if (!strcmp(names[i], "__metadata__"))
      return invalid("%s: '__metadata__' cannot name a tensor (the header reserves it)", path);
    if (!utf8_ok(names[i])) return invalid("%s: tensor name '%s' is not valid UTF-8", path, names[i]);
  }
  for (int i = 0; i < nmeta; i++) {
    if (!keys[i] || !values[i]) return invalid("%s: metadata entry %d has no key or value", path, i + 1);
    if (!utf8_ok(keys[i])) return invalid("%s: metadata key '%s' is not valid UTF-8", path, keys[i]);
    if (!utf8_ok(values[i]))
      return invalid("%s: metadata value of key '%s' is not valid UTF-8", path, keys[i]);
    for (int j = 0; j < i; j++)
      if (!strcmp(keys[i], keys[j])) return invalid("%s: metadata key '%s' appears twice", path, keys[i]);
  }

  item *items = malloc(sizeof *items * (size_t)(n ? n : 1));
  if (!items) return io_error(path, "cannot write", ENOMEM);
  for (int i = 0; i < n; i++) {
    items[i].name = names[i];
    items[i].t = tensors[i];
    items[i].kind = want >= 0 ? (out_kind)want
                              : eng_tensor_dtype(tensors[i]) == ENG_DTYPE_F64 ? OUT_F64 : OUT_F32;
    items[i].nbytes = (uint64_t)eng_tensor_numel(tensors[i]) * OUT_SIZE[items[i].kind];
  }
  qsort(items, (size_t)n, sizeof *items, item_by_name);
  for (int i = 1; i < n; i++)
    if (!strcmp(items[i].name, items[i - 1].name)) {
      invalid("%s: tensor name '%s' appears twice", path, items[i].name);
      free(items);
      return -1;
    }
  qsort(items, (size_t)n, sizeof *items, item_by_layout);
  uint64_t at = 0;
  for (int i = 0; i < n; i++) {
    items[i].begin = at;
    at += items[i].nbytes;
    if (at > (uint64_t)INT64_MAX) {
      free(items);
      return invalid("%s: the tensors add up to more than 2^63 bytes", path);
    }
  }

  save_ctx c = {items, n, NULL, 0};
  char *header = build_header(path, items, n, nmeta, keys, values, &c.header_len);
  if (!header) {
    free(items);
    return -1;
  }
  c.header = header;
  if (c.header_len > ENG_ST_MAX_HEADER) {
    invalid("%s: the header would be %zu bytes, over the %llu readers accept", path, c.header_len, ENG_ST_MAX_HEADER);
    free(header);
    free(items);
    return -1;
  }
  int rc = write_atomic(path, emit_file, &c);
  int err = errno;
  free(header);
  free(items);
  errno = err;
  return rc;
}

int eng_safetensors_save(const char *path, int n, const char *const *names, eng_tensor *const *tensors,
                         int nmeta, const char *const *keys, const char *const *values) {
  return eng_safetensors_save_as(path, n, names, tensors, nmeta, keys, values, NULL);
}
