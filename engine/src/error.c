/* error.c — the thread-local message of the last failure, and shape strings
 * for messages. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *eng_last_error(void) { return last_error[0] ? last_error : "unknown error"; }
void eng_clear_error(void) { last_error[0] = 0; }

void *eng_errorf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return NULL;
}

int eng_errorf_status(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -1;
}

const char *shp_dims(int ndim, const int64_t *shape) {
  static _Thread_local char slots[8][128];
  static _Thread_local int next;
  char *buf = slots[next];
  next = (next + 1) % 8;
  size_t n = 0;
  buf[n++] = '[';
  for (int i = 0; i < ndim && n < 100; i++)
    n += (size_t)snprintf(buf + n, 128 - n, i ? ",%lld" : "%lld", (long long)shape[i]);
  buf[n++] = ']';
  buf[n] = 0;
  return buf;
}

const char *shp(const eng_tensor *t) { return shp_dims(t->ndim, t->shape); }

const char *pos_str(const eng_tensor *t, int64_t flat) {
  int64_t idx[ENG_MAX_DIMS];
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = flat % t->shape[d] + 1;
    flat /= t->shape[d];
  }
  return shp_dims(t->ndim, idx);
}

char *eng_shape_str(const eng_tensor *t, char *buf, size_t len) {
  snprintf(buf, len, "%s", shp(t));
  return buf;
}

const char *eng_dtype_name(eng_dtype dt) { return dt == ENG_DTYPE_F64 ? "float64" : "float32"; }
