/* ops_reduce.c — reductions over one dim or over everything: sum, mean, max
 * (with its argmax) and logsumexp, each backward beside its forward.
 *
 * Layout. The kept dims of x are coalesced into a plan (output k is the k-th
 * kept position in row-major order). When the reduced dim has the smallest
 * stride, each output reduces one run of x ("row mode"); when a kept dim is
 * innermost, whole rows of x are accumulated into the output row ("column
 * mode": bias gradients, sums over dim 0), never striding across the cache
 * per element. Few outputs with a long reduced dim split that dim across
 * threads and combine the partials in thread order (deterministic for a
 * fixed thread count). float32 sums accumulate in double.
 * logsumexp runs on the (Q, R, L) rows/columns of softmax_kernels.h (a
 * non-contiguous input is made contiguous first).
 *
 * Not here: softmax and log_softmax (ops_softmax.c); min, prod, argmin (not
 * in the API). Dims in messages are printed 1-based (C dim + 1), as the Lua
 * user passed them. */
#include "internal.h"
#include "softmax_kernels.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

/* ---- plans ----------------------------------------------------------------- */

typedef struct {
  int64_t nout;                              /* number of outputs */
  int64_t R, rs;                             /* reduced length and stride */
  int nk;                                    /* coalesced kept dims */
  int64_t kshape[ENG_MAX_DIMS], kstride[ENG_MAX_DIMS];
} rplan;

/* kept dims = all but d (d < 0: none reduced yet; the caller then picks R) */
static void plan_make(rplan *p, const eng_tensor *x, int d) {
  p->R = d >= 0 ? x->shape[d] : 1;
  p->rs = d >= 0 ? x->stride[d] : 0;
  p->nk = 0;
  p->nout = 1;
  for (int i = 0; i < x->ndim; i++) {
    if (i == d) continue;
    int64_t n = x->shape[i], s = x->stride[i];
    p->nout *= n;
    if (n == 1) continue;
    if (p->nk > 0 && p->kstride[p->nk - 1] == s * n) {
      p->kshape[p->nk - 1] *= n;
      p->kstride[p->nk - 1] = s;
      continue;
    }
    p->kshape[p->nk] = n;
    p->kstride[p->nk] = s;
    p->nk++;
  }
}

/* a plan reducing every element: possible without a copy when x's dims
 * coalesce into one run; returns false otherwise */
static bool plan_all(rplan *p, const eng_tensor *x) {
  plan_make(p, x, -1);
  if (p->nk > 1) return false;
  p->R = p->nk ? p->kshape[0] : x->numel;
  p->rs = p->nk ? p->kstride[0] : 1;
  p->nk = 0;
  p->nout = 1;
  return true;
}

/* offset in x of the first of the first `nk` kept dims' index o */
static int64_t plan_off(const rplan *p, int nk, int64_t o) {
  int64_t off = 0;
  for (int i = nk - 1; i >= 0; i--) {
    off += (o % p->kshape[i]) * p->kstride[i];
    o /= p->kshape[i];
  }
  return off;
}

static bool column_mode(const rplan *p) {
  return p->nk > 0 && p->R > 1 && llabs(p->kstride[p->nk - 1]) < llabs(p->rs);
}

static int threads_for(int64_t work) { return work >= PARALLEL_MIN ? omp_get_max_threads() : 1; }

#define BW 256 /* column-mode block width */

/* ---- sum kernels -------------------------------------------------------------
 * reduce_sum: out[o] = scale * sum_r x[off(o) + r*rs], out contiguous (nout). */
#define SUM_KERNELS(SFX, TY)                                                    \
  static double sum_run_##SFX(const TY *x, int64_t n, int64_t s) {             \
    if (s == 1) return sk_sum_##SFX(x, n);                                     \
    double a[8] = {0};                                                         \
    for (int64_t i = 0; i < n; i++) a[i & 7] += (double)x[i * s];              \
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); \
  }                                                                            \
  /* acc[j] = sum_{r in [r0,r1)} x[base + r*rs + j*is], j < w */              \
  static void sum_cols_##SFX(const TY *base, int64_t w, int64_t is, int64_t rs, \
                             int64_t r0, int64_t r1, double *acc) {            \
    for (int64_t j = 0; j < w; j++) acc[j] = 0;                                \
    for (int64_t r = r0; r < r1; r++) {                                        \
      const TY *row = base + r * rs;                                           \
      if (is == 1)                                                             \
        for (int64_t j = 0; j < w; j++) acc[j] += (double)row[j];              \
      else                                                                     \
        for (int64_t j = 0; j < w; j++) acc[j] += (double)row[j * is];         \
    }                                                                          \
  }                                                                            \
  static int reduce_sum_##SFX(const rplan *p, const TY *x, TY *out, double scale) { \
    int64_t total = p->nout * p->R;                                            \
    int nt = threads_for(total);                                               \
    if (p->nout == 0) return 0;                                                \
    if (!column_mode(p)) {                                                     \
      if (p->nout >= nt) {                                                     \
        _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
        for (int64_t o = 0; o < p->nout; o++)                                  \
          out[o] = (TY)(scale * sum_run_##SFX(x + plan_off(p, p->nk, o), p->R, p->rs)); \
        return 0;                                                              \
      }                                                                        \
      for (int64_t o = 0; o < p->nout; o++) {                                  \
        double part[64] = {0};                                                 \
        const TY *xo = x + plan_off(p, p->nk, o);                              \
        if (nt > 64) nt = 64;                                                  \
        _Pragma("omp parallel num_threads(nt)")                                \
        {                                                                      \
          int t = omp_get_thread_num(), n = omp_get_num_threads();            \
          int64_t r0 = p->R * t / n, r1 = p->R * (t + 1) / n;                  \
          part[t] = sum_run_##SFX(xo + r0 * p->rs, r1 - r0, p->rs);            \
        }                                                                      \
        double s = 0;                                                          \
        for (int t = 0; t < nt; t++) s += part[t];                             \
        out[o] = (TY)(scale * s);                                              \
      }                                                                        \
      return 0;                                                                \
    }                                                                          \
    int64_t L = p->kshape[p->nk - 1], is = p->kstride[p->nk - 1];              \
    int64_t Q = p->nout / L, nb = (L + BW - 1) / BW, items = Q * nb;           \
    if (items >= nt) {                                                         \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t it = 0; it < items; it++) {                                 \
        double acc[BW];                                                        \
        int64_t q = it / nb, j0 = (it % nb) * BW, w = L - j0 < BW ? L - j0 : BW; \
        sum_cols_##SFX(x + plan_off(p, p->nk - 1, q) + j0 * is, w, is, p->rs, 0, p->R, acc); \
        for (int64_t j = 0; j < w; j++) out[q * L + j0 + j] = (TY)(scale * acc[j]); \
      }                                                                        \
      return 0;                                                                \
    }                                                                          \
    /* zeroed: if the runtime gives fewer threads, the rest add nothing */   \
    double *part = calloc((size_t)(nt * p->nout), sizeof(double));             \
    if (!part) return eng_errorf_status("sum: out of memory");                 \
    _Pragma("omp parallel num_threads(nt)")                                    \
    {                                                                          \
      int t = omp_get_thread_num(), n = omp_get_num_threads();                \
      int64_t r0 = p->R * t / n, r1 = p->R * (t + 1) / n;                      \
      double *pt = part + t * p->nout;                                         \
      for (int64_t it = 0; it < items; it++) {                                 \
        int64_t q = it / nb, j0 = (it % nb) * BW, w = L - j0 < BW ? L - j0 : BW; \
        sum_cols_##SFX(x + plan_off(p, p->nk - 1, q) + j0 * is, w, is, p->rs, r0, r1, pt + q * L + j0); \
      }                                                                        \
    }                                                                          \
    for (int64_t o = 0; o < p->nout; o++) {                                    \
      double s = 0;                                                            \
      for (int t = 0; t < nt; t++) s += part[t * p->nout + o];                 \
      out[o] = (TY)(scale * s);                                                \
    }                                                                          \
    free(part);                                                                \
    return 0;                                                                  \
  }

SUM_KERNELS(f32, float)
SUM_KERNELS(f64, double)

/* ---- max kernels -------------------------------------------------------------
 * out[o] = max_r x[off(o) + r*rs], idx[o] = the first r attaining it; NaN
 * counts as the largest value (it propagates). */
#define BETTER(v, b) ((v) > (b) || ((v) != (v) && (b) == (b)))
#define MAX_KERNELS(SFX, TY)                                                    \
  static int64_t max_run_##SFX(const TY *x, int64_t n, int64_t s, TY *best) {  \
    if (s == 1) { /* a vectorized max, then the first position holding it */  \
      TY m = sk_max_##SFX(x, n);                                               \
      int64_t i = 0;                                                           \
      if (m == m)                                                              \
        while (x[i] != m) i++;                                                 \
      else                                                                     \
        while (x[i] == x[i]) i++;                                              \
      *best = m;                                                               \
      return i;                                                                \
    }                                                                          \
    TY b = x[0];                                                               \
    int64_t bi = 0;                                                            \
    for (int64_t i = 1; i < n; i++) {                                          \
      TY v = x[i * s];                                                         \
      if (BETTER(v, b)) { b = v; bi = i; }                                     \
    }                                                                          \
    *best = b;                                                                 \
    return bi;                                                                 \
  }                                                                            \
  static void max_cols_##SFX(const TY *base, int64_t w, int64_t is, int64_t rs, \
                             int64_t r0, int64_t r1, TY *bv, int64_t *bi) {     \
    for (int64_t j = 0; j < w; j++) { bv[j] = base[r0 * rs + j * is]; bi[j] = r0; } \
    for (int64_t r = r0 + 1; r < r1; r++) {                                    \
      const TY *row = base + r * rs;                                           \
      for (int64_t j = 0; j < w; j++) {                                        \
        TY v = row[j * is];                                                    \
        if (BETTER(v, bv[j])) { bv[j] = v; bi[j] = r; }                        \
      }                                                                        \
    }                                                                          \
  }                                                                            \
  static int reduce_max_##SFX(const rplan *p, const TY *x, TY *out, int64_t *idx) { \
    int64_t total = p->nout * p->R;                                            \
    int nt = threads_for(total);                                               \
    if (p->nout == 0) return 0;                                                \
    if (!column_mode(p)) {                                                     \
      if (p->nout >= nt) {                                                     \
        _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
        for (int64_t o = 0; o < p->nout; o++)                                  \
          idx[o] = max_run_##SFX(x + plan_off(p, p->nk, o), p->R, p->rs, &out[o]); \
        return 0;                                                              \
      }                                                                        \
      for (int64_t o = 0; o < p->nout; o++) {                                  \
        TY pv[64];                                                             \
        int64_t pi[64];                                                        \
        int used = 1;                                                          \
        const TY *xo = x + plan_off(p, p->nk, o);                              \
        if (nt > 64) nt = 64;                                                  \
        _Pragma("omp parallel num_threads(nt)")                                \
        {                                                                      \
          int t = omp_get_thread_num(), n = omp_get_num_threads();            \
          int64_t r0 = p->R * t / n, r1 = p->R * (t + 1) / n;                  \
          if (t == 0) used = n;                                                \
          pi[t] = r1 > r0 ? r0 + max_run_##SFX(xo + r0 * p->rs, r1 - r0, p->rs, &pv[t]) : -1; \
        }                                                                      \
        TY b = 0;                                                              \
        int64_t bi = -1;                                                       \
        for (int t = 0; t < used; t++)                                         \
          if (pi[t] >= 0 && (bi < 0 || BETTER(pv[t], b))) { b = pv[t]; bi = pi[t]; } \
        out[o] = b;                                                            \
        idx[o] = bi;                                                           \
      }                                                                        \
      return 0;                                                                \
    }                                                                          \
    int64_t L = p->kshape[p->nk - 1], is = p->kstride[p->nk - 1];              \
    int64_t Q = p->nout / L, nb = (L + BW - 1) / BW, items = Q * nb;           \
    if (items >= nt || p->R < 2 * nt) {                                        \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t it = 0; it < items; it++) {                                 \
        int64_t q = it / nb, j0 = (it % nb) * BW, w = L - j0 < BW ? L - j0 : BW; \
        max_cols_##SFX(x + plan_off(p, p->nk - 1, q) + j0 * is, w, is, p->rs, 0, p->R, \
                       out + q * L + j0, idx + q * L + j0);                    \
      }                                                                        \
      return 0;                                                                \
    }                                                                          \
    TY *pv = malloc(sizeof(TY) * (size_t)(nt * p->nout));                      \
    int64_t *pi = malloc(sizeof(int64_t) * (size_t)(nt * p->nout));            \
    if (!pv || !pi) {                                                          \
      free(pv);                                                                \
      free(pi);                                                                \
      return eng_errorf_status("max: out of memory");                          \
    }                                                                          \
    int used = 1;                                                              \
    _Pragma("omp parallel num_threads(nt)")                                    \
    {                                                                          \
      int t = omp_get_thread_num(), n = omp_get_num_threads();                \
      int64_t r0 = p->R * t / n, r1 = p->R * (t + 1) / n;                      \
      if (t == 0) used = n;                                                    \
      for (int64_t it = 0; it < items; it++) {                                 \
        int64_t q = it / nb, j0 = (it % nb) * BW, w = L - j0 < BW ? L - j0 : BW; \
        max_cols_##SFX(x + plan_off(p, p->nk - 1, q) + j0 * is, w, is, p->rs, r0, r1, \
                       pv + t * p->nout + q * L + j0, pi + t * p->nout + q * L + j0); \
      }                                                                        \
    }                                                                          \
    for (int64_t o = 0; o < p->nout; o++) {                                    \
      TY b = pv[o];                                                            \
      int64_t bi = pi[o];                                                      \
      for (int t = 1; t < used; t++)                                           \
        if (BETTER(pv[t * p->nout + o], b)) { b = pv[t * p->nout + o]; bi = pi[t * p->nout + o]; } \
      out[o] = b;                                                              \
      idx[o] = bi;                                                             \
    }                                                                          \
    free(pv);                                                                  \
    free(pi);                                                                  \
    return 0;                                                                  \
  }

MAX_KERNELS(f32, float)
MAX_KERNELS(f64, double)

/* ---- shared helpers ------------------------------------------------------------ */

/* dim -> d (-1 for all elements); a 0-dim x reduces "over dim 0 or -1" too */
static int resolve_dim(const char *op, const eng_tensor *x, int dim, int *d) {
  if (dim == ENG_ALL_DIMS || (x->ndim == 0 && (dim == 0 || dim == -1))) {
    *d = -1;
    return 0;
  }
  *d = norm_dim(op, x, dim);
  return *d < 0 ? -1 : 0;
}

/* output shape of reducing x over d (-1: all) */
static int out_shape(const eng_tensor *x, int d, bool keepdim, int64_t *shape) {
  int n = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (d < 0 || i == d) {
      if (keepdim) shape[n++] = 1;
    } else {
      shape[n++] = x->shape[i];
    }
  }
  return n;
}

/* a plan for x over d; *xc is x or a contiguous copy (new reference) */
static int plan_for(const eng_tensor *x, eng_tensor *xin, int d, rplan *p, eng_tensor **xc) {
  if (d >= 0) {
    plan_make(p, x, d);
    *xc = eng_tensor_retain(xin);
    return 0;
  }
  if (plan_all(p, x)) {
    *xc = eng_tensor_retain(xin);
    return 0;
  }
  bool prev = eng_set_grad_enabled(false);
  *xc = eng_contiguous(xin);
  eng_set_grad_enabled(prev);
  if (!*xc) return -1;
  plan_all(p, *xc);
  return 0;
}

/* g (the output's shape, any layout) broadcast back to x's shape, times
 * scale: a new contiguous tensor */
static eng_tensor *expand_back(eng_tensor *g, const eng_tensor *x, int d, double scale) {
  int64_t shape[ENG_MAX_DIMS], stride[ENG_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) {
    if (d < 0) {
      shape[i] = 1;
      stride[i] = 0;
    } else if (g->ndim == x->ndim) {
      shape[i] = g->shape[i];
      stride[i] = g->stride[i];
    } else {
      shape[i] = i == d ? 1 : x->shape[i];
      stride[i] = i == d ? 0 : g->stride[i < d ? i : i - 1];
    }
  }
  eng_tensor *v = tensor_view(g, x->ndim, shape, stride, g->offset);
  if (!v) return NULL;
  eng_tensor *out = tensor_new(x->dtype, x->ndim, x->shape);
  if (out) eng_copy_(out, v);
  eng_tensor_release(v);
  if (out && scale != 1.0) {
    int64_t n = out->numel;
    int nt = threads_for(n);
    if (out->dtype == ENG_DTYPE_F64) {
      double *o = tensor_ptr(out);
#pragma omp parallel for num_threads(nt) if (nt > 1)
      for (int64_t i = 0; i < n; i++) o[i] *= scale;
    } else {
      float *o = tensor_ptr(out);
      float s = (float)scale;
#pragma omp parallel for num_threads(nt) if (nt > 1)
      for (int64_t i = 0; i < n; i++) o[i] *= s;
    }
  }
  return out;
}

/* ---- sum and mean ------------------------------------------------------------- */

/* d sum / dx = g broadcast over the reduced dim; mean also divides by R
 * (iparams[0]: d, dparams[0]: the scale) */
static int sum_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  gin[0] = expand_back(g, n->inputs[0], (int)n->iparams[0], n->dparams[0]);
  return gin[0] ? 0 : -1;
}

static eng_tensor *sum_like(const char *op, eng_tensor *x, int dim, bool keepdim, bool mean) {
  int d;
  if (resolve_dim(op, x, dim, &d)) return NULL;
  int64_t shape[ENG_MAX_DIMS];
  int nd = out_shape(x, d, keepdim, shape);
  rplan p;
  eng_tensor *xc;
  if (plan_for(x, x, d, &p, &xc)) return NULL;
  eng_tensor *out = tensor_new(x->dtype, nd, shape);
  if (!out) {
    eng_tensor_release(xc);
    return NULL;
  }
  double scale = mean ? 1.0 / (double)(d < 0 ? x->numel : x->shape[d]) : 1.0;
  int rc = x->dtype == ENG_DTYPE_F64 ? reduce_sum_f64(&p, tensor_ptr(xc), tensor_ptr(out), scale)
                                     : reduce_sum_f32(&p, tensor_ptr(xc), tensor_ptr(out), scale);
  eng_tensor_release(xc);
  if (rc) {
    eng_tensor_release(out);
    return NULL;
  }
  eng_node *n = node_attach(out, op, sum_backward, 1, &x);
  if (n) {
    n->iparams[0] = d;
    n->dparams[0] = scale;
  }
  return out;
}

/* x (...) -> x summed over dim (or all) */
eng_tensor *eng_sum(eng_tensor *x, int dim, bool keepdim) { return sum_like("sum", x, dim, keepdim, false); }
/* x (...) -> the mean over dim (or all); NaN over an empty dim, as 0/0 */
eng_tensor *eng_mean(eng_tensor *x, int dim, bool keepdim) { return sum_like("mean", x, dim, keepdim, true); }

/* ---- max ---------------------------------------------------------------------- */

/* d max / dx = g at the (first) argmax of each reduced run, 0 elsewhere.
 * extra: the argmax per output (int64); iparams[0]: d. */
static int max_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  int d = (int)n->iparams[0];
  const int64_t *idx = n->extra;
  eng_tensor *out = eng_zeros(x->dtype, x->ndim, x->shape);
  if (!out) return -1;
  eng_tensor *gc = eng_contiguous(g);
  if (!gc) {
    eng_tensor_release(out);
    return -1;
  }
  rplan p;
  if (d >= 0) plan_make(&p, out, d);
  else plan_all(&p, out); /* out is contiguous: one run */
  int64_t nout = p.nout;
  if (x->dtype == ENG_DTYPE_F64) {
    double *o = tensor_ptr(out);
    const double *gv = tensor_ptr(gc);
    for (int64_t k = 0; k < nout; k++) o[plan_off(&p, p.nk, k) + idx[k] * p.rs] = gv[k];
  } else {
    float *o = tensor_ptr(out);
    const float *gv = tensor_ptr(gc);
    for (int64_t k = 0; k < nout; k++) o[plan_off(&p, p.nk, k) + idx[k] * p.rs] = gv[k];
  }
  eng_tensor_release(gc);
  gin[0] = out;
  return 0;
}

/* x (...) -> the max over dim (or all); *indices: the argmax as x's dtype */
eng_tensor *eng_max(eng_tensor *x, int dim, bool keepdim, eng_tensor **indices) {
  if (indices) *indices = NULL;
  int d;
  if (resolve_dim("max", x, dim, &d)) return NULL;
  if ((d < 0 ? x->numel : x->shape[d]) == 0)
    return d < 0 ? eng_errorf("max: cannot take the max of an empty tensor %s", shp(x))
                 : eng_errorf("max: dim %d of %s is empty", d + 1, shp(x));
  int64_t shape[ENG_MAX_DIMS];
  int nd = out_shape(x, d, keepdim, shape);
  rplan p;
  eng_tensor *xc;
  if (plan_for(x, x, d, &p, &xc)) return NULL;
  eng_tensor *out = tensor_new(x->dtype, nd, shape);
  eng_tensor *it = out && indices && d >= 0 ? tensor_new(x->dtype, nd, shape) : NULL;
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)(p.nout ? p.nout : 1));
  int rc = -1;
  if (!out || (indices && d >= 0 && !it)) goto fail;
  if (!idx) {
    eng_errorf("max: out of memory");
    goto fail;
  }
  rc = x->dtype == ENG_DTYPE_F64 ? reduce_max_f64(&p, tensor_ptr(xc), tensor_ptr(out), idx)
                                 : reduce_max_f32(&p, tensor_ptr(xc), tensor_ptr(out), idx);
  if (rc) goto fail;
  if (it) {
    if (x->dtype == ENG_DTYPE_F64)
      for (int64_t k = 0; k < p.nout; k++) ((double *)tensor_ptr(it))[k] = (double)idx[k];
    else
      for (int64_t k = 0; k < p.nout; k++) ((float *)tensor_ptr(it))[k] = (float)idx[k];
  }
  eng_tensor_release(xc);
  eng_node *n = node_attach(out, "max", max_backward, 1, &x);
  if (n) {
    n->iparams[0] = d;
    n->extra = idx;
  } else {
    free(idx);
  }
  if (indices) *indices = it;
  return out;
fail:
  eng_tensor_release(xc);
  eng_tensor_release(out);
  eng_tensor_release(it);
  free(idx);
  return NULL;
}

/* ---- logsumexp ------------------------------------------------------------------
 * x contiguous as (Q, R, L) -> out (Q, L): m + log sum_r exp(x - m), m the
 * max over r; NaN, -inf (all -inf or empty) and +inf runs give m itself. */
#define LSE_KERNELS(SFX, TY)                                                    \
  static void lse_fwd_##SFX(const TY *x, int64_t Q, int64_t R, int64_t L, TY *out) { \
    int nt = threads_for(Q * R * L);                                           \
    if (L == 1) {                                                              \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t k = 0; k < Q; k++) {                                        \
        const TY *r = x + k * R;                                               \
        TY m = sk_max_##SFX(r, R);                                             \
        out[k] = isfinite(m) ? (TY)((double)m + log(sk_sumexp_##SFX(r, R, m))) : m; \
      }                                                                        \
      return;                                                                  \
    }                                                                          \
    int64_t nb = (L + SK_BW - 1) / SK_BW, items = Q * nb;                      \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t it = 0; it < items; it++) {                                   \
      int64_t q = it / nb, j0 = (it % nb) * SK_BW, w = L - j0 < SK_BW ? L - j0 : SK_BW; \
      TY m[SK_BW];                                                             \
      double s[SK_BW];                                                         \
      sk_cols_##SFX(x + q * R * L + j0, R, L, w, m, s);                        \
      for (int64_t j = 0; j < w; j++)                                          \
        out[q * L + j0 + j] = isfinite(m[j]) ? (TY)((double)m[j] + log(s[j])) : m[j]; \
    }                                                                          \
  }                                                                            \
  /* a run (n at stride st) whose lse l is not finite: NaN stays NaN, -inf   \
   * gives 0, +inf sends g to the +inf entries in equal shares */             \
  static void lse_back_special_##SFX(const TY *x, int64_t n, int64_t st, TY l, TY g, TY *o) { \
    int64_t ninf = 0;                                                          \
    for (int64_t i = 0; i < n; i++) ninf += x[i * st] == INFINITY;             \
    for (int64_t i = 0; i < n; i++)                                            \
      o[i * st] = l != l ? l : (l == INFINITY && x[i * st] == INFINITY) ? g / (TY)ninf : (TY)0; \
  }                                                                            \
  /* gin = g * exp(x - lse), the softmax of each run times its gradient */    \
  static void lse_bwd_##SFX(const TY *x, const TY *l, const TY *g, int64_t Q, int64_t R, \
                            int64_t L, TY *gin) {                              \
    int nt = threads_for(Q * R * L);                                           \
    if (L == 1) {                                                              \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t k = 0; k < Q; k++) {                                        \
        const TY *r = x + k * R;                                               \
        TY *o = gin + k * R, lk = l[k], gk = g[k];                             \
        if (!isfinite(lk)) {                                                   \
          lse_back_special_##SFX(r, R, 1, lk, gk, o);                          \
          continue;                                                            \
        }                                                                      \
        for (int64_t i = 0; i < R; i++) o[i] = gk * SK_EXP_##SFX(r[i] - lk);   \
      }                                                                        \
      return;                                                                  \
    }                                                                          \
    int64_t nb = (L + SK_BW - 1) / SK_BW, items = Q * nb;                      \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t it = 0; it < items; it++) {                                   \
      int64_t q = it / nb, j0 = (it % nb) * SK_BW, w = L - j0 < SK_BW ? L - j0 : SK_BW; \
      const TY *xb = x + q * R * L + j0, *lb = l + q * L + j0, *gb = g + q * L + j0; \
      TY *ob = gin + q * R * L + j0, sh[SK_BW];                                \
      for (int64_t j = 0; j < w; j++) sh[j] = isfinite(lb[j]) ? lb[j] : (TY)0; \
      for (int64_t r = 0; r < R; r++)                                          \
        for (int64_t j = 0; j < w; j++) ob[r * L + j] = gb[j] * SK_EXP_##SFX(xb[r * L + j] - sh[j]); \
      for (int64_t j = 0; j < w; j++)                                          \
        if (!isfinite(lb[j])) lse_back_special_##SFX(xb + j, R, L, lb[j], gb[j], ob + j); \
    }                                                                          \
  }

LSE_KERNELS(f32, float)
LSE_KERNELS(f64, double)


/* iparams[0]: d; saved[0]: x contiguous, saved[1]: the output */
static int lse_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *xc = n->saved[0], *out = n->saved[1];
  int64_t Q, R, L;
  sk_split(xc, (int)n->iparams[0], &Q, &R, &L);
  eng_tensor *gc = eng_contiguous(g);
  eng_tensor *gx = gc ? tensor_new(xc->dtype, xc->ndim, xc->shape) : NULL;
  if (!gx) {
    eng_tensor_release(gc);
    return -1;
  }
  if (xc->dtype == ENG_DTYPE_F64)
    lse_bwd_f64(tensor_ptr(xc), tensor_ptr(out), tensor_ptr(gc), Q, R, L, tensor_ptr(gx));
  else
    lse_bwd_f32(tensor_ptr(xc), tensor_ptr(out), tensor_ptr(gc), Q, R, L, tensor_ptr(gx));
  eng_tensor_release(gc);
  gin[0] = gx;
  return 0;
}

/* x (...) -> log sum exp over dim (or all); -inf over an empty dim */
eng_tensor *eng_logsumexp(eng_tensor *x, int dim, bool keepdim) {
  int d;
  if (resolve_dim("logsumexp", x, dim, &d)) return NULL;
  int64_t shape[ENG_MAX_DIMS];
  int nd = out_shape(x, d, keepdim, shape);
  eng_tensor *xc = contiguous_nograd(x);
  if (!xc) return NULL;
  eng_tensor *out = tensor_new(x->dtype, nd, shape);
  if (!out) {
    eng_tensor_release(xc);
    return NULL;
  }
  int64_t Q, R, L;
  sk_split(xc, d, &Q, &R, &L);
  if (x->dtype == ENG_DTYPE_F64)
    lse_fwd_f64(tensor_ptr(xc), Q, R, L, tensor_ptr(out));
  else
    lse_fwd_f32(tensor_ptr(xc), Q, R, L, tensor_ptr(out));
  eng_node *n = node_attach(out, "logsumexp", lse_backward, 1, &x);
  if (n) {
    n->iparams[0] = d;
    node_save(n, 0, xc);
    node_save(n, 1, out);
  }
  eng_tensor_release(xc);
  return out;
}
