/* ops_softmax.c — softmax and log_softmax over one dim, each backward beside
 * its forward.
 *
 * A contiguous x over dim d is (Q, R, L) (softmax_kernels.h): the last dim
 * (L == 1) runs row by row; any other dim walks whole rows of L keeping
 * per-column statistics, so neither needs a transposed copy. A
 * non-contiguous x is made contiguous first. Work is spread over OpenMP
 * threads by rows or column blocks; sums accumulate in double; float32 uses
 * the vectorized sk_expf.
 *
 * Extremes: a run of all -inf gives softmax 0 and log_softmax -inf, and the
 * gradient through it is 0 (not NaN); -inf entries of other runs get
 * probability 0 and a finite gradient; a run holding +inf shares the
 * probability equally among its +inf entries; a NaN makes its run NaN.
 *
 * Not here: logsumexp (ops_reduce.c); cross_entropy and token_logprobs,
 * which fuse log_softmax with a gather. */
#include "internal.h"
#include "softmax_kernels.h"

#include <omp.h>
#include <tgmath.h>

#define SOFTMAX_KERNELS(SFX, TY)                                                \
  /* a run (n at stride st) whose max m is not finite */                      \
  static void sm_special_##SFX(const TY *x, int64_t n, int64_t st, TY m, bool logp, TY *y) { \
    int64_t ninf = 0;                                                          \
    for (int64_t i = 0; i < n; i++) ninf += x[i * st] == INFINITY;             \
    TY share = ninf == 0 ? (TY)0 : logp ? -log((TY)ninf) : (TY)1 / (TY)ninf;   \
    TY rest = logp ? (TY)-INFINITY : (TY)0;                                    \
    for (int64_t i = 0; i < n; i++)                                            \
      y[i * st] = m != m ? m : (m == INFINITY && x[i * st] == INFINITY) ? share : rest; \
  }                                                                            \
  /* x (Q, R, L) contiguous -> y: softmax or log_softmax over R */            \
  static void sm_fwd_##SFX(const TY *x, int64_t Q, int64_t R, int64_t L, TY *y, bool logp) { \
    int nt = Q * R * L >= PARALLEL_MIN ? omp_get_max_threads() : 1;           \
    if (L == 1) {                                                              \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t k = 0; k < Q; k++) {                                        \
        const TY *r = x + k * R;                                               \
        TY *o = y + k * R;                                                     \
        TY m = sk_max_##SFX(r, R);                                             \
        if (!isfinite(m)) {                                                    \
          sm_special_##SFX(r, R, 1, m, logp, o);                               \
          continue;                                                            \
        }                                                                      \
        if (logp) {                                                            \
          TY lse = (TY)((double)m + log(sk_sumexp_##SFX(r, R, m)));            \
          for (int64_t i = 0; i < R; i++) o[i] = r[i] - lse;                   \
        } else {                                                               \
          for (int64_t i = 0; i < R; i++) o[i] = SK_EXP_##SFX(r[i] - m);       \
          TY inv = (TY)(1.0 / sk_sum_##SFX(o, R));                             \
          for (int64_t i = 0; i < R; i++) o[i] *= inv;                         \
        }                                                                      \
      }                                                                        \
      return;                                                                  \
    }                                                                          \
    int64_t nb = (L + SK_BW - 1) / SK_BW, items = Q * nb;                      \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t it = 0; it < items; it++) {                                   \
      int64_t q = it / nb, j0 = (it % nb) * SK_BW, w = L - j0 < SK_BW ? L - j0 : SK_BW; \
      const TY *xb = x + q * R * L + j0;                                       \
      TY *ob = y + q * R * L + j0, m[SK_BW], sh[SK_BW], sc[SK_BW];             \
      double s[SK_BW];                                                         \
      sk_cols_##SFX(xb, R, L, w, m, s);                                        \
      for (int64_t j = 0; j < w; j++) {                                        \
        bool fin = isfinite(m[j]);                                             \
        sh[j] = !fin ? (TY)0 : logp ? (TY)((double)m[j] + log(s[j])) : m[j];   \
        sc[j] = fin ? (TY)(1.0 / s[j]) : (TY)0;                                \
      }                                                                        \
      for (int64_t r = 0; r < R; r++) {                                        \
        const TY *xr = xb + r * L;                                             \
        TY *orow = ob + r * L;                                                 \
        if (logp)                                                              \
          for (int64_t j = 0; j < w; j++) orow[j] = xr[j] - sh[j];             \
        else                                                                   \
          for (int64_t j = 0; j < w; j++) orow[j] = SK_EXP_##SFX(xr[j] - sh[j]) * sc[j]; \
      }                                                                        \
      for (int64_t j = 0; j < w; j++)                                          \
        if (!isfinite(m[j])) sm_special_##SFX(xb + j, R, L, m[j], logp, ob + j); \
    }                                                                          \
  }                                                                            \
  /* softmax:     dx = y * (g - sum(g*y))                                     \
   * log_softmax: dx = g - exp(y) * sum(g); 0 for a run of all -inf */        \
  static void sm_bwd_##SFX(const TY *y, const TY *g, int64_t Q, int64_t R, int64_t L, TY *dx, \
                           bool logp) {                                        \
    int nt = Q * R * L >= PARALLEL_MIN ? omp_get_max_threads() : 1;           \
    if (L == 1) {                                                              \
      _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)") \
      for (int64_t k = 0; k < Q; k++) {                                        \
        const TY *yr = y + k * R, *gr = g + k * R;                             \
        TY *o = dx + k * R;                                                    \
        if (logp) {                                                            \
          if (sk_max_##SFX(yr, R) == -INFINITY) {                              \
            for (int64_t i = 0; i < R; i++) o[i] = 0;                          \
            continue;                                                          \
          }                                                                    \
          TY st = (TY)sk_sum_##SFX(gr, R);                                     \
          for (int64_t i = 0; i < R; i++) o[i] = gr[i] - SK_EXP_##SFX(yr[i]) * st; \
        } else {                                                               \
          double a[8] = {0};                                                   \
          int64_t i = 0;                                                       \
          for (; i + 8 <= R; i += 8)                                           \
            for (int kk = 0; kk < 8; kk++) a[kk] += (double)gr[i + kk] * (double)yr[i + kk]; \
          for (; i < R; i++) a[0] += (double)gr[i] * (double)yr[i];            \
          TY st = (TY)(((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))); \
          for (i = 0; i < R; i++) o[i] = yr[i] * (gr[i] - st);                 \
        }                                                                      \
      }                                                                        \
      return;                                                                  \
    }                                                                          \
    int64_t nb = (L + SK_BW - 1) / SK_BW, items = Q * nb;                      \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t it = 0; it < items; it++) {                                   \
      int64_t q = it / nb, j0 = (it % nb) * SK_BW, w = L - j0 < SK_BW ? L - j0 : SK_BW; \
      const TY *yb = y + q * R * L + j0, *gb = g + q * R * L + j0;             \
      TY *ob = dx + q * R * L + j0, m[SK_BW], st[SK_BW];                       \
      double s[SK_BW];                                                         \
      for (int64_t j = 0; j < w; j++) {                                        \
        s[j] = 0;                                                              \
        m[j] = -INFINITY;                                                      \
      }                                                                        \
      for (int64_t r = 0; r < R; r++) {                                        \
        const TY *yr = yb + r * L, *gr = gb + r * L;                           \
        if (logp)                                                              \
          for (int64_t j = 0; j < w; j++) {                                    \
            s[j] += (double)gr[j];                                             \
            m[j] = yr[j] > m[j] ? yr[j] : m[j];                                \
          }                                                                    \
        else                                                                   \
          for (int64_t j = 0; j < w; j++) s[j] += (double)gr[j] * (double)yr[j]; \
      }                                                                        \
      for (int64_t j = 0; j < w; j++) st[j] = (TY)s[j];                        \
      for (int64_t r = 0; r < R; r++) {                                        \
        const TY *yr = yb + r * L, *gr = gb + r * L;                           \
        TY *orow = ob + r * L;                                                 \
        if (logp)                                                              \
          for (int64_t j = 0; j < w; j++) orow[j] = gr[j] - SK_EXP_##SFX(yr[j]) * st[j]; \
        else                                                                   \
          for (int64_t j = 0; j < w; j++) orow[j] = yr[j] * (gr[j] - st[j]);   \
      }                                                                        \
      if (logp)                                                                \
        for (int64_t j = 0; j < w; j++)                                        \
          if (m[j] == -INFINITY && R > 0) {                                    \
            bool nan = false;                                                  \
            for (int64_t r = 0; r < R; r++) nan |= yb[r * L + j] != yb[r * L + j]; \
            for (int64_t r = 0; r < R; r++) ob[r * L + j] = nan ? (TY)NAN : (TY)0; \
          }                                                                    \
    }                                                                          \
  }

SOFTMAX_KERNELS(f32, float)
SOFTMAX_KERNELS(f64, double)


/* dim -> d; a 0-dim x is one run of one element (d = -1) */
static int resolve(const char *op, const eng_tensor *x, int dim, int *d) {
  if (x->ndim == 0 && (dim == 0 || dim == -1)) {
    *d = -1;
    return 0;
  }
  *d = norm_dim(op, x, dim);
  return *d < 0 ? -1 : 0;
}

/* saved[0]: the output (contiguous); iparams[0]: d, iparams[1]: log */
static int softmax_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *y = n->saved[0];
  bool logp = n->iparams[1] != 0;
  int64_t Q, R, L;
  sk_split(y, (int)n->iparams[0], &Q, &R, &L);
  eng_tensor *gc = eng_contiguous(g);
  eng_tensor *dx = gc ? tensor_new(y->dtype, y->ndim, y->shape) : NULL;
  if (!dx) {
    eng_tensor_release(gc);
    return -1;
  }
  if (y->dtype == ENG_DTYPE_F64)
    sm_bwd_f64(tensor_ptr(y), tensor_ptr(gc), Q, R, L, tensor_ptr(dx), logp);
  else
    sm_bwd_f32(tensor_ptr(y), tensor_ptr(gc), Q, R, L, tensor_ptr(dx), logp);
  eng_tensor_release(gc);
  gin[0] = dx;
  return 0;
}

static eng_tensor *softmax_like(const char *op, eng_tensor *x, int dim, bool logp) {
  int d;
  if (resolve(op, x, dim, &d)) return NULL;
  eng_tensor *xc = contiguous_nograd(x);
  if (!xc) return NULL;
  eng_tensor *y = tensor_new(x->dtype, x->ndim, x->shape);
  if (!y) {
    eng_tensor_release(xc);
    return NULL;
  }
  int64_t Q, R, L;
  sk_split(xc, d, &Q, &R, &L);
  if (x->dtype == ENG_DTYPE_F64)
    sm_fwd_f64(tensor_ptr(xc), Q, R, L, tensor_ptr(y), logp);
  else
    sm_fwd_f32(tensor_ptr(xc), Q, R, L, tensor_ptr(y), logp);
  eng_tensor_release(xc);
  eng_node *n = node_attach(y, op, softmax_backward, 1, &x);
  if (n) {
    node_save(n, 0, y);
    n->iparams[0] = d;
    n->iparams[1] = logp;
  }
  return y;
}

/* x (...) -> exp(x - logsumexp(x, dim)), same shape */
eng_tensor *eng_softmax(eng_tensor *x, int dim) { return softmax_like("softmax", x, dim, false); }
/* x (...) -> x - logsumexp(x, dim), same shape */
eng_tensor *eng_log_softmax(eng_tensor *x, int dim) { return softmax_like("log_softmax", x, dim, true); }
