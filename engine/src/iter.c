/* iter.c — the strided N-operand iterator every element-wise kernel runs
 * on, and the copies built on it (contiguous, copy_, fill_, to_dtype). */
#include "internal.h"

#include <omp.h>
#include <string.h>

typedef struct {
  int ndim, nops;
  int64_t shape[ENG_MAX_DIMS];
  int64_t stride[ITER_MAX_OPS][ENG_MAX_DIMS]; /* bytes */
  int64_t estride[ITER_MAX_OPS];              /* innermost, in elements */
  char *base[ITER_MAX_OPS];
} iter_plan;

static void run_range(const iter_plan *p, int64_t start, int64_t end, iter_fn fn, void *ctx) {
  int nd = p->ndim;
  int64_t idx[ENG_MAX_DIMS];
  char *ptr[ITER_MAX_OPS];
  int64_t rem = start;
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = rem % p->shape[d];
    rem /= p->shape[d];
  }
  int64_t inner = p->shape[nd - 1];
  int64_t pos = start;
  while (pos < end) {
    for (int o = 0; o < p->nops; o++) {
      char *q = p->base[o];
      for (int d = 0; d < nd; d++) q += idx[d] * p->stride[o][d];
      ptr[o] = q;
    }
    int64_t len = inner - idx[nd - 1];
    if (len > end - pos) len = end - pos;
    fn(ctx, len, ptr, p->estride);
    pos += len;
    idx[nd - 1] += len;
    for (int d = nd - 1; d > 0 && idx[d] >= p->shape[d]; d--) {
      idx[d] = 0;
      idx[d - 1]++;
    }
  }
}

void iter_run(int ndim, const int64_t *shape, int nops, char **base, int64_t strides[][ENG_MAX_DIMS],
              const size_t *elsize, iter_fn fn, void *ctx) {
  iter_plan p;
  p.nops = nops;
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) numel *= shape[d];
  if (numel == 0) return;
  /* drop size-1 dims, then merge dims that are contiguous for every operand */
  int nd = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    if (nd > 0) {
      bool mergeable = true;
      for (int o = 0; o < nops; o++)
        if (p.stride[o][nd - 1] != strides[o][d] * shape[d] * (int64_t)elsize[o]) mergeable = false;
      if (mergeable) {
        p.shape[nd - 1] *= shape[d];
        for (int o = 0; o < nops; o++) p.stride[o][nd - 1] = strides[o][d] * (int64_t)elsize[o];
        continue;
      }
    }
    p.shape[nd] = shape[d];
    for (int o = 0; o < nops; o++) p.stride[o][nd] = strides[o][d] * (int64_t)elsize[o];
    nd++;
  }
  if (nd == 0) {
    p.shape[0] = 1;
    for (int o = 0; o < nops; o++) p.stride[o][0] = 0;
    nd = 1;
  }
  p.ndim = nd;
  for (int o = 0; o < nops; o++) {
    p.base[o] = base[o];
    p.estride[o] = p.stride[o][nd - 1] / (int64_t)elsize[o];
  }
  int nt = numel >= PARALLEL_MIN ? omp_get_max_threads() : 1;
  if (nt <= 1) {
    run_range(&p, 0, numel, fn, ctx);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), n = omp_get_num_threads();
    /* chunk boundaries rounded to 16 elements keep vector loops aligned */
    int64_t per = (numel / n + 15) & ~(int64_t)15;
    int64_t s = per * t, e = s + per;
    if (t == n - 1 || e > numel) e = numel;
    if (s < e) run_range(&p, s, e, fn, ctx);
  }
}

/* ---- copies -------------------------------------------------------------- */

typedef struct {
  eng_dtype dst, src;
} copy_ctx;

static void copy_kernel(void *vctx, int64_t n, char **p, const int64_t *s) {
  copy_ctx *c = vctx;
  if (c->dst == ENG_DTYPE_F32 && c->src == ENG_DTYPE_F32) {
    float *o = (float *)p[0];
    const float *x = (const float *)p[1];
    if (s[0] == 1 && s[1] == 1)
      memcpy(o, x, sizeof(float) * (size_t)n);
    else
      for (int64_t i = 0; i < n; i++) o[i * s[0]] = x[i * s[1]];
  } else if (c->dst == ENG_DTYPE_F64 && c->src == ENG_DTYPE_F64) {
    double *o = (double *)p[0];
    const double *x = (const double *)p[1];
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = x[i * s[1]];
  } else if (c->dst == ENG_DTYPE_F32) {
    float *o = (float *)p[0];
    const double *x = (const double *)p[1];
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = (float)x[i * s[1]];
  } else {
    double *o = (double *)p[0];
    const float *x = (const float *)p[1];
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = x[i * s[1]];
  }
}

int eng_copy_(eng_tensor *dst, eng_tensor *src) {
  int nd;
  int64_t shape[ENG_MAX_DIMS];
  if (broadcast_shapes("copy_", dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape)) return -1;
  if (nd != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * (size_t)nd) != 0)
    return eng_errorf_status("copy_: source %s does not broadcast to destination %s", shp(src), shp(dst));
  int64_t st[2][ENG_MAX_DIMS];
  memcpy(st[0], dst->stride, sizeof(int64_t) * (size_t)nd);
  broadcast_strides(src, nd, shape, st[1]);
  char *base[2] = {tensor_ptr(dst), tensor_ptr(src)};
  size_t es[2] = {dtype_size(dst->dtype), dtype_size(src->dtype)};
  copy_ctx c = {dst->dtype, src->dtype};
  iter_run(nd, shape, 2, base, st, es, copy_kernel, &c);
  return 0;
}

static void fill_kernel(void *vctx, int64_t n, char **p, const int64_t *s) {
  double v = *(double *)vctx;
  (void)s;
  float *o = (float *)p[0];
  for (int64_t i = 0; i < n; i++) o[i * s[0]] = (float)v;
}
static void fill_kernel64(void *vctx, int64_t n, char **p, const int64_t *s) {
  double v = *(double *)vctx;
  double *o = (double *)p[0];
  for (int64_t i = 0; i < n; i++) o[i * s[0]] = v;
}

int eng_fill_(eng_tensor *dst, double v) {
  int64_t st[1][ENG_MAX_DIMS];
  memcpy(st[0], dst->stride, sizeof(int64_t) * (size_t)dst->ndim);
  char *base[1] = {tensor_ptr(dst)};
  size_t es[1] = {dtype_size(dst->dtype)};
  iter_run(dst->ndim, dst->shape, 1, base, st, es,
           dst->dtype == ENG_DTYPE_F64 ? fill_kernel64 : fill_kernel, &v);
  return 0;
}

typedef struct {
  double alpha, beta;
} axpby_ctx;

static void axpby_kernel32(void *vctx, int64_t n, char **p, const int64_t *s) {
  axpby_ctx *c = vctx;
  float *y = (float *)p[0];
  const float *x = (const float *)p[1];
  float a = (float)c->alpha, b = (float)c->beta;
  if (s[0] == 1 && s[1] == 1)
    for (int64_t i = 0; i < n; i++) y[i] = b * y[i] + a * x[i];
  else
    for (int64_t i = 0; i < n; i++) y[i * s[0]] = b * y[i * s[0]] + a * x[i * s[1]];
}
static void axpby_kernel64(void *vctx, int64_t n, char **p, const int64_t *s) {
  axpby_ctx *c = vctx;
  double *y = (double *)p[0];
  const double *x = (const double *)p[1];
  for (int64_t i = 0; i < n; i++) y[i * s[0]] = c->beta * y[i * s[0]] + c->alpha * x[i * s[1]];
}

int eng_axpby_(eng_tensor *y, double alpha, eng_tensor *x, double beta) {
  if (check_float_same_dtype("axpby_", y, x)) return -1;
  int nd;
  int64_t shape[ENG_MAX_DIMS];
  if (broadcast_shapes("axpby_", y->ndim, y->shape, x->ndim, x->shape, &nd, shape)) return -1;
  if (nd != y->ndim || memcmp(shape, y->shape, sizeof(int64_t) * (size_t)nd) != 0)
    return eng_errorf_status("axpby_: %s does not broadcast to %s", shp(x), shp(y));
  int64_t st[2][ENG_MAX_DIMS];
  memcpy(st[0], y->stride, sizeof(int64_t) * (size_t)nd);
  broadcast_strides(x, nd, shape, st[1]);
  char *base[2] = {tensor_ptr(y), tensor_ptr(x)};
  size_t es = dtype_size(y->dtype), ess[2] = {es, es};
  axpby_ctx c = {alpha, beta};
  iter_run(nd, shape, 2, base, st, ess, y->dtype == ENG_DTYPE_F64 ? axpby_kernel64 : axpby_kernel32, &c);
  return 0;
}

static eng_tensor *copy_as(eng_tensor *x, eng_dtype dt) {
  eng_tensor *out = tensor_new(dt, x->ndim, x->shape);
  if (!out) return NULL;
  eng_copy_(out, x);
  return out;
}

static int identity_backward(eng_node *n, eng_tensor *gout, eng_tensor **gin) {
  eng_dtype dt = n->inputs[0]->dtype;
  gin[0] = gout->dtype == dt ? eng_contiguous(gout) : copy_as(gout, dt);
  return gin[0] ? 0 : -1;
}

eng_tensor *eng_contiguous(eng_tensor *x) {
  if (eng_tensor_is_contiguous(x)) return eng_tensor_retain(x);
  eng_tensor *out = copy_as(x, x->dtype);
  if (out) node_attach(out, "contiguous", identity_backward, 1, &x);
  return out;
}

eng_tensor *eng_to_dtype(eng_tensor *x, eng_dtype dt) {
  if (x->dtype == dt) return eng_tensor_retain(x);
  eng_tensor *out = copy_as(x, dt);
  if (out) node_attach(out, "to_dtype", identity_backward, 1, &x);
  return out;
}

eng_tensor *plain_copy(eng_tensor *t) { return copy_as(t, t->dtype); }

eng_tensor *contiguous_nograd(eng_tensor *t) {
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *c = eng_contiguous(t);
  eng_set_grad_enabled(prev);
  return c;
}
