/* tensor.c — tensor objects: creation, reference counts, views, metadata,
 * and the small helpers ops share (dims, broadcasting, index reading).
 * The arithmetic lives in the ops_*.c files. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i];
  }
}

static int check_shape(const char *op, int ndim, const int64_t *shape, int64_t *numel) {
  *numel = 0;
  if (ndim < 0 || ndim > ENG_MAX_DIMS)
    return eng_errorf_status("%s: %d dims requested; at most %d are supported", op, ndim, ENG_MAX_DIMS);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return eng_errorf_status("%s: negative size %lld in shape %s", op, (long long)shape[i],
                               shp_dims(ndim, shape));
    if (shape[i] && n > INT64_MAX / 8 / shape[i])
      return eng_errorf_status("%s: shape %s is too large", op, shp_dims(ndim, shape));
    n *= shape[i];
  }
  *numel = n;
  return 0;
}

eng_tensor *tensor_new(eng_dtype dt, int ndim, const int64_t *shape) {
  int64_t numel;
  if (check_shape("tensor", ndim, shape, &numel)) return NULL;
  eng_tensor *t = calloc(1, sizeof *t);
  if (!t) return eng_errorf("out of memory (tensor header)");
  t->storage = storage_new((size_t)numel * dtype_size(dt));
  if (!t->storage) {
    free(t);
    return NULL;
  }
  t->refcount = 1;
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  contiguous_strides(ndim, shape, t->stride);
  t->numel = numel;
  return t;
}

eng_tensor *tensor_new_like(const eng_tensor *t) { return tensor_new(t->dtype, t->ndim, t->shape); }

eng_tensor *tensor_view(eng_tensor *x, int ndim, const int64_t *shape, const int64_t *stride,
                        int64_t offset) {
  eng_tensor *t = calloc(1, sizeof *t);
  if (!t) return eng_errorf("out of memory (tensor header)");
  t->refcount = 1;
  t->dtype = x->dtype;
  t->ndim = ndim;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->stride[i] = stride[i];
    n *= shape[i];
  }
  t->numel = n;
  t->offset = offset;
  t->storage = x->storage;
  __atomic_add_fetch(&x->storage->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

eng_tensor *eng_tensor_retain(eng_tensor *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

static void node_free(eng_node *n);

void eng_tensor_release(eng_tensor *t) {
  if (!t) return;
  if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (t->grad_fn) node_free(t->grad_fn);
  eng_tensor_release(t->grad);
  storage_release(t->storage);
  free(t);
}

static void node_free(eng_node *n) {
  for (int i = 0; i < NODE_MAX_INPUTS; i++) eng_tensor_release(n->inputs[i]);
  for (int i = 0; i < NODE_MAX_SAVED; i++) eng_tensor_release(n->saved[i]);
  eng_tensor_release(n->grad_accum);
  free(n->extra);
  free(n);
}

eng_dtype eng_tensor_dtype(const eng_tensor *t) { return t->dtype; }
int eng_tensor_ndim(const eng_tensor *t) { return t->ndim; }
const int64_t *eng_tensor_shape(const eng_tensor *t) { return t->shape; }
const int64_t *eng_tensor_strides(const eng_tensor *t) { return t->stride; }
int64_t eng_tensor_numel(const eng_tensor *t) { return t->numel; }
void *eng_tensor_data(eng_tensor *t) { return tensor_ptr(t); }

bool eng_tensor_is_contiguous(const eng_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

static int64_t flat_to_offset(const eng_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t sz = t->shape[d];
    off += (i % sz) * t->stride[d];
    i /= sz;
  }
  return off;
}

double eng_tensor_get_flat(const eng_tensor *t, int64_t i) {
  int64_t off = flat_to_offset(t, i);
  if (t->dtype == ENG_DTYPE_F64) return ((const double *)tensor_ptr(t))[off];
  return ((const float *)tensor_ptr(t))[off];
}

int64_t index_at(const eng_tensor *idx, int64_t flat) {
  double v = eng_tensor_get_flat(idx, flat);
  return (int64_t)v;
}

int64_t *read_indices(const char *op, const eng_tensor *idx, int64_t base, int64_t lo, int64_t hi,
                      bool allow_negative_as_skip) {
  int64_t *out = malloc(sizeof(int64_t) * (size_t)(idx->numel ? idx->numel : 1));
  if (!out) return eng_errorf("%s: out of memory", op);
  for (int64_t i = 0; i < idx->numel; i++) {
    double v = eng_tensor_get_flat(idx, i);
    if (!(v == floor(v)) || fabs(v) > 9.0e15) {
      free(out);
      return eng_errorf("%s: index %g at %s is not an integer", op, v, pos_str(idx, i));
    }
    int64_t k = (int64_t)v - base;
    if (allow_negative_as_skip && (int64_t)v < 0) {
      out[i] = -1;
      continue;
    }
    if (k < lo || (hi >= 0 && k >= hi)) {
      free(out);
      return eng_errorf("%s: index %lld at %s is out of range [%lld, %lld)", op,
                        (long long)v, pos_str(idx, i), (long long)(lo + base), (long long)(hi + base));
    }
    out[i] = k;
  }
  return out;
}

int norm_dim(const char *op, const eng_tensor *x, int dim) {
  int n = x->ndim;
  int d = dim < 0 ? dim + n : dim;
  if (d < 0 || d >= n || (n == 0)) {
    /* messages number dims from 1, as the Lua user sees them */
    eng_errorf("%s: dim %d is out of range for a tensor of shape %s", op, dim >= 0 ? dim + 1 : dim, shp(x));
    return -1;
  }
  return d;
}

int check_float_same_dtype(const char *op, const eng_tensor *a, const eng_tensor *b) {
  if (a->dtype != b->dtype)
    return eng_errorf_status("%s: dtypes differ (%s and %s)", op, eng_dtype_name(a->dtype),
                             eng_dtype_name(b->dtype));
  return 0;
}

int broadcast_shapes(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                     int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t da = ia >= 0 ? sa[ia] : 1, db = ib >= 0 ? sb[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return eng_errorf_status("%s: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)", op,
                               shp_dims(na, sa), shp_dims(nb, sb), i + 1, (long long)da, (long long)db);
    out[i] = da == 1 ? db : da;
  }
  *nout = n;
  return 0;
}

void broadcast_strides(const eng_tensor *t, int ndim, const int64_t *shape, int64_t *strides) {
  for (int i = 0; i < ndim; i++) {
    int it = t->ndim - ndim + i;
    strides[i] = (it >= 0 && t->shape[it] == shape[i] && shape[i] != 1) ? t->stride[it] : 0;
  }
}

/* ---- creation ------------------------------------------------------------ */

eng_tensor *eng_empty(eng_dtype dt, int ndim, const int64_t *shape) { return tensor_new(dt, ndim, shape); }

eng_tensor *eng_zeros(eng_dtype dt, int ndim, const int64_t *shape) {
  eng_tensor *t = tensor_new(dt, ndim, shape);
  if (t) memset(t->storage->data, 0, (size_t)t->numel * dtype_size(dt));
  return t;
}

eng_tensor *eng_full(eng_dtype dt, int ndim, const int64_t *shape, double v) {
  eng_tensor *t = tensor_new(dt, ndim, shape);
  if (t) eng_fill_(t, v);
  return t;
}

eng_tensor *eng_from_doubles(eng_dtype dt, int ndim, const int64_t *shape, const double *values) {
  eng_tensor *t = tensor_new(dt, ndim, shape);
  if (!t) return NULL;
  if (dt == ENG_DTYPE_F64)
    memcpy(t->storage->data, values, sizeof(double) * (size_t)t->numel);
  else
    for (int64_t i = 0; i < t->numel; i++) ((float *)t->storage->data)[i] = (float)values[i];
  return t;
}

eng_tensor *eng_arange(eng_dtype dt, int64_t n) {
  if (n < 0) return eng_errorf("arange: n must be >= 0, got %lld", (long long)n);
  eng_tensor *t = tensor_new(dt, 1, &n);
  if (!t) return NULL;
  for (int64_t i = 0; i < n; i++) {
    if (dt == ENG_DTYPE_F64)
      ((double *)t->storage->data)[i] = (double)i;
    else
      ((float *)t->storage->data)[i] = (float)i;
  }
  return t;
}

static eng_tensor *random_tensor(eng_rng *rng, eng_dtype dt, int ndim, const int64_t *shape, bool normal) {
  eng_tensor *t = tensor_new(dt, ndim, shape);
  if (!t) return NULL;
  if (!rng) rng = eng_default_rng();
  for (int64_t i = 0; i < t->numel; i++) {
    double v = normal ? eng_rng_normal(rng) : eng_rng_uniform(rng);
    if (dt == ENG_DTYPE_F64)
      ((double *)t->storage->data)[i] = v;
    else
      ((float *)t->storage->data)[i] = (float)v;
  }
  return t;
}

eng_tensor *eng_randn(eng_rng *rng, eng_dtype dt, int ndim, const int64_t *shape) {
  return random_tensor(rng, dt, ndim, shape, true);
}
eng_tensor *eng_rand(eng_rng *rng, eng_dtype dt, int ndim, const int64_t *shape) {
  return random_tensor(rng, dt, ndim, shape, false);
}

eng_tensor *eng_detach(eng_tensor *x) {
  return tensor_view(x, x->ndim, x->shape, x->stride, x->offset);
}

int eng_tensor_set_data(eng_tensor *t, eng_tensor *src) {
  if (t->grad_fn)
    return eng_errorf_status("set_data: only a leaf tensor can take new data (this one was made by %s)",
                             t->grad_fn->name);
  if (t->dtype != src->dtype || t->ndim != src->ndim ||
      (t->ndim && memcmp(t->shape, src->shape, sizeof(int64_t) * (size_t)t->ndim) != 0))
    return eng_errorf_status("set_data: tensor is %s %s but the new data is %s %s", eng_dtype_name(t->dtype),
                             shp(t), eng_dtype_name(src->dtype), shp(src));
  __atomic_add_fetch(&src->storage->refcount, 1, __ATOMIC_RELAXED);
  storage_release(t->storage);
  t->storage = src->storage;
  t->offset = src->offset;
  memcpy(t->stride, src->stride, sizeof t->stride);
  return 0;
}

/* a multiply-xorshift mix per 64-bit word; deterministic and fast enough to
 * hash a model's weights (a few GB/s) for cache keys, not cryptographic */
static inline uint64_t mix64(uint64_t h, uint64_t w) {
  h ^= w * 0x9e3779b97f4a7c15ULL;
  h = (h << 27) | (h >> 37);
  return h * 0xbf58476d1ce4e5b9ULL + 0x94d049bb133111ebULL;
}

uint64_t eng_tensor_hash(const eng_tensor *t, uint64_t seed) {
  uint64_t h = mix64(seed, (uint64_t)t->dtype + 1);
  h = mix64(h, (uint64_t)t->ndim);
  for (int d = 0; d < t->ndim; d++) h = mix64(h, (uint64_t)t->shape[d]);
  size_t es = dtype_size(t->dtype);
  if (eng_tensor_is_contiguous(t)) {
    const unsigned char *p = tensor_ptr(t);
    size_t n = (size_t)t->numel * es, i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      memcpy(&w, p + i, 8);
      h = mix64(h, w);
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, n - i);
    h = mix64(h, tail ^ (uint64_t)(n - i));
  } else {
    eng_tensor *c = tensor_new(t->dtype, t->ndim, t->shape);
    if (!c) return 0;
    eng_copy_(c, (eng_tensor *)t);
    uint64_t r = eng_tensor_hash(c, seed);
    eng_tensor_release(c);
    return r;
  }
  return mix64(h, (uint64_t)t->numel);
}
