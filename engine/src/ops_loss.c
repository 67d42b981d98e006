/* ops_loss.c — fused log-softmax losses over a vocabulary:
 * eng_cross_entropy (mean negative log-likelihood with an ignore_index) and
 * eng_token_logprobs (the log-probability of each position's label).
 *
 * Both read each logits row once (a blocked online logsumexp: the max of a
 * block and the sum of exponentials against the running max, rescaled when
 * the max grows), save only the per-row logsumexp (a float64 (...) tensor,
 * so that the recomputed softmax is exact for large logits in float32 too),
 * and recompute the softmax
 * from it in the backward: no second (...,V) tensor is ever built in the
 * forward. Rows whose label is skipped are not read at all.
 *
 * Numerics: -inf logits (a masked vocabulary) contribute 0 to the softmax; a
 * row of all -inf has logsumexp -inf, log-probability -inf and gradient 0
 * (as eng_log_softmax defines it); NaN propagates. The logits may be any
 * strided view (e.g. logits narrowed along T); the gradient is contiguous.
 *
 * Not here: label smoothing, class weights, reductions other than the mean. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#define LSE_BLOCK 512 /* elements per block of the online logsumexp (L1-sized) */

typedef struct {
  int64_t N, V, sv;    /* rows, vocabulary, stride of the vocabulary dim */
  const int64_t *roff; /* element offset of each row's first logit */
  const int64_t *lab;  /* label per row; -1 = skipped */
  const void *x;       /* logits at offset 0 */
  double *lse;         /* (N) logsumexp per row, float64 for both dtypes */
  void *lp;            /* (N) log-probability of the label per row */
  /* backward */
  void *dx;            /* (N,V) contiguous */
  const double *coef;  /* per-row factor a_r, or NULL to use coef0 */
  double coef0;
} loss_plan;

/* element offsets of the N positions of x's first nd dims, row-major */
static int64_t *row_offsets(const eng_tensor *x, int nd, int64_t N) {
  int64_t *off = malloc(sizeof(int64_t) * (size_t)(N ? N : 1));
  if (!off) return NULL;
  int64_t idx[ENG_MAX_DIMS] = {0}, cur = 0;
  for (int64_t r = 0; r < N; r++) {
    off[r] = cur;
    for (int d = nd - 1; d >= 0; d--) {
      cur += x->stride[d];
      if (++idx[d] < x->shape[d]) break;
      cur -= x->stride[d] * x->shape[d];
      idx[d] = 0;
    }
  }
  return off;
}

/* labels of the N positions, validated: ce (cross_entropy) skips
 * == ignore and requires [0,V) for the rest; otherwise (token_logprobs) < 0
 * is skipped and the rest must be below V. *count gets the kept rows. */
static int64_t *read_labels(const char *op, const eng_tensor *t, int64_t V, bool ce, int64_t ignore,
                            int64_t *count) {
  int64_t N = t->numel, kept = 0;
  int64_t *lab = malloc(sizeof(int64_t) * (size_t)(N ? N : 1));
  if (!lab) return eng_errorf("%s: out of memory", op);
  bool contig = eng_tensor_is_contiguous(t);
  const float *pf = (const float *)tensor_ptr(t);
  const double *pd = (const double *)tensor_ptr(t);
  const char *what = ce ? "target" : "label";
  for (int64_t i = 0; i < N; i++) {
    double v = !contig ? eng_tensor_get_flat(t, i) : t->dtype == ENG_DTYPE_F64 ? pd[i] : (double)pf[i];
    if (!(v == floor(v)) || fabs(v) > 9.0e15) {
      free(lab);
      return eng_errorf("%s: %s %g at %s is not an integer", op, what, v, pos_str(t, i));
    }
    int64_t k = (int64_t)v;
    if (ce ? k == ignore : k < 0) {
      lab[i] = -1;
      continue;
    }
    if (k < 0 || k >= V) {
      free(lab);
      if (ce)
        return eng_errorf("%s: target %lld at %s is out of range [0, %lld) and is not "
                          "ignore_index (%lld)",
                          op, (long long)k, pos_str(t, i), (long long)V, (long long)ignore);
      return eng_errorf("%s: label %lld at %s is out of range: the vocabulary has %lld "
                        "entries (labels < 0 are skipped)",
                        op, (long long)k, pos_str(t, i), (long long)V);
    }
    lab[i] = k;
    kept++;
  }
  *count = kept;
  return lab;
}

#define LOSS_KERNELS(SUF, TY)                                                               \
  /* logsumexp of x[0], x[sv], ... x[(n-1)sv] in one pass over memory, as                 \
   * *m + log Σ exp(x − *m) with the return value the log of the sum */                    \
  static double row_lse_##SUF(const TY *x, int64_t n, int64_t sv, TY *mout) {              \
    typedef TY T;                                                                          \
    T m = -INFINITY;                                                                       \
    double sum = 0;                                                                        \
    for (int64_t i0 = 0; i0 < n; i0 += LSE_BLOCK) {                                        \
      int64_t len = n - i0 < LSE_BLOCK ? n - i0 : LSE_BLOCK;                               \
      const T *xb = x + i0 * sv;                                                           \
      T bm = -INFINITY;                                                                    \
      if (sv == 1) {                                                                       \
        _Pragma("omp simd reduction(max : bm)")                                            \
        for (int64_t j = 0; j < len; j++) bm = xb[j] > bm ? xb[j] : bm;                    \
      } else {                                                                             \
        for (int64_t j = 0; j < len; j++) bm = xb[j * sv] > bm ? xb[j * sv] : bm;          \
      }                                                                                    \
      if (bm > m) {                                                                        \
        sum = m == -INFINITY ? 0 : sum * exp((double)(m - bm));                            \
        m = bm;                                                                            \
      }                                                                                    \
      if (m == -INFINITY) continue;                                                        \
      for (int64_t j = 0; j < len; j++) sum += exp(xb[j * sv] - m);                        \
    }                                                                                      \
    *mout = m;                                                                             \
    if (m == -INFINITY) { /* all -inf: lse -inf; NaN if a NaN is there */                  \
      for (int64_t j = 0; j < n; j++)                                                      \
        if (x[j * sv] != x[j * sv]) *mout = x[j * sv];                                     \
      return 0;                                                                            \
    }                                                                                      \
    return log(sum);                                                                       \
  }                                                                                        \
                                                                                           \
  /* lse[r] and lp[r] = (x[r, lab[r]] − m) − log Σ exp(x − m) for the kept rows, 0 for   \
   * the others (subtracting the max first keeps lp exact for |x| ~ 1e4 in float32) */     \
  static void loss_forward_##SUF(const loss_plan *p) {                                     \
    typedef TY T;                                                                          \
    const T *X = (const T *)p->x;                                                          \
    double *L = p->lse;                                                                    \
    T *LP = (T *)p->lp;                                                                    \
    _Pragma("omp parallel for schedule(static) if (p->N * p->V >= PARALLEL_MIN)")          \
    for (int64_t r = 0; r < p->N; r++) {                                                   \
      int64_t y = p->lab[r];                                                               \
      if (y < 0) {                                                                         \
        L[r] = 0;                                                                          \
        LP[r] = 0;                                                                         \
        continue;                                                                          \
      }                                                                                    \
      const T *row = X + p->roff[r];                                                       \
      T m;                                                                                 \
      double ls = row_lse_##SUF(row, p->V, p->sv, &m);                                     \
      L[r] = (double)m + ls;                                                               \
      LP[r] = m == -INFINITY ? m : (T)((double)(row[y * p->sv] - m) - ls);                 \
    }                                                                                      \
  }                                                                                        \
                                                                                           \
  /* dx[r,j] = a_r·(softmax_j − [j = lab_r]) with softmax = exp((x − hi) − lo), lse       \
   * split as hi + lo so x − hi is exact near the max; 0 for skipped rows and rows of      \
   * all -inf */                                                                           \
  static void loss_backward_##SUF(const loss_plan *p) {                                    \
    typedef TY T;                                                                          \
    const T *X = (const T *)p->x;                                                          \
    const double *L = p->lse;                                                              \
    T *DX = (T *)p->dx;                                                                    \
    int64_t V = p->V, sv = p->sv;                                                          \
    _Pragma("omp parallel for schedule(static) if (p->N * V >= PARALLEL_MIN)")             \
    for (int64_t r = 0; r < p->N; r++) {                                                   \
      T *d = DX + r * V;                                                                   \
      int64_t y = p->lab[r];                                                               \
      T a = (T)(p->coef ? p->coef[r] : p->coef0);                                          \
      double l = L[r];                                                                     \
      if (y < 0 || l == -INFINITY || a == 0) {                                             \
        memset(d, 0, sizeof(T) * (size_t)V);                                               \
        continue;                                                                          \
      }                                                                                    \
      const T *row = X + p->roff[r];                                                       \
      T hi = (T)l, lo = (T)(l - (double)hi);                                               \
      if (sv == 1)                                                                         \
        for (int64_t j = 0; j < V; j++) d[j] = a * exp((row[j] - hi) - lo);                \
      else                                                                                 \
        for (int64_t j = 0; j < V; j++) d[j] = a * exp((row[j * sv] - hi) - lo);           \
      d[y] -= a;                                                                           \
    }                                                                                      \
  }

LOSS_KERNELS(f32, float)
LOSS_KERNELS(f64, double)

/* logits (...,V) and labels (...) must agree on the leading dims */
static int loss_check(const char *op, const char *what, const eng_tensor *x, const eng_tensor *t) {
  if (x->ndim < 1)
    return eng_errorf_status("%s: logits is %s: it needs a last dim (the vocabulary)", op, shp(x));
  bool ok = t->ndim == x->ndim - 1;
  for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == x->shape[d];
  if (!ok)
    return eng_errorf_status("%s: logits is %s, %s is %s: %s must have the shape of logits without "
                             "its last dim",
                             op, shp(x), what, shp(t), what);
  return 0;
}

/* plan over logits x, labels lab; roff allocated (caller frees) */
static int loss_plan_init(const char *op, loss_plan *p, eng_tensor *x, const int64_t *lab) {
  memset(p, 0, sizeof *p);
  p->V = x->shape[x->ndim - 1];
  int64_t n = 1;
  for (int d = 0; d < x->ndim - 1; d++) n *= x->shape[d];
  p->N = n;
  p->sv = x->stride[x->ndim - 1];
  p->lab = lab;
  p->x = tensor_ptr(x);
  p->roff = row_offsets(x, x->ndim - 1, n);
  if (!p->roff) return eng_errorf_status("%s: out of memory", op);
  return 0;
}

static void loss_run(const loss_plan *p, eng_dtype dt, bool backward) {
  if (dt == ENG_DTYPE_F64)
    backward ? loss_backward_f64(p) : loss_forward_f64(p);
  else
    backward ? loss_backward_f32(p) : loss_forward_f32(p);
}

/* gradient of logits for a node: inputs[0] logits, saved[0] the (N) or (...)
 * logsumexp, extra the labels; coef / coef0 the per-row factors a_r */
static eng_tensor *loss_grad(eng_node *n, const double *coef, double coef0) {
  eng_tensor *x = n->inputs[0];
  loss_plan p;
  if (loss_plan_init(n->name, &p, x, n->extra)) return NULL;
  eng_tensor *dx = tensor_new_like(x);
  if (dx) {
    p.lse = tensor_ptr(n->saved[0]);
    p.dx = tensor_ptr(dx);
    p.coef = coef;
    p.coef0 = coef0;
    loss_run(&p, x->dtype, true);
  }
  free((void *)p.roff);
  return dx;
}

/* ---- cross entropy ---------------------------------------------------------- */

/* L = −(1/n) Σ_kept log softmax(x_r)[y_r]  =>  dL/dx_r = g/n·(softmax(x_r) − onehot(y_r)),
 * 0 on ignored rows */
static int cross_entropy_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  int64_t count = n->iparams[0];
  double coef = count ? eng_tensor_get_flat(g, 0) / (double)count : 0.0;
  gin[0] = loss_grad(n, NULL, coef);
  return gin[0] ? 0 : -1;
}

/* logits (...,V), targets (...) -> () */
eng_tensor *eng_cross_entropy(eng_tensor *logits, eng_tensor *targets, int64_t ignore_index) {
  if (loss_check("cross_entropy", "targets", logits, targets)) return NULL;
  int64_t V = logits->shape[logits->ndim - 1], count = 0;
  int64_t *lab = read_labels("cross_entropy", targets, V, true, ignore_index, &count);
  if (!lab) return NULL;
  loss_plan p;
  if (loss_plan_init("cross_entropy", &p, logits, lab)) {
    free(lab);
    return NULL;
  }
  eng_tensor *lse = tensor_new(ENG_DTYPE_F64, 1, &p.N), *lp = tensor_new(logits->dtype, 1, &p.N);
  eng_tensor *out = NULL;
  if (lse && lp) {
    p.lse = tensor_ptr(lse);
    p.lp = tensor_ptr(lp);
    loss_run(&p, logits->dtype, false);
    double s = 0; /* serial, so the sum is the same for any thread count */
    for (int64_t r = 0; r < p.N; r++)
      if (lab[r] >= 0)
        s += logits->dtype == ENG_DTYPE_F64 ? ((const double *)p.lp)[r] : (double)((const float *)p.lp)[r];
    int64_t no_dims[1] = {1}; /* a 0-dim result; the array is never read */
    out = eng_full(logits->dtype, 0, no_dims, count ? -s / (double)count : 0.0);
  }
  free((void *)p.roff);
  if (out) {
    eng_node *n = node_attach(out, "cross_entropy", cross_entropy_backward, 1, &logits);
    if (n) {
      node_save(n, 0, lse);
      n->iparams[0] = count;
      n->extra = lab;
      lab = NULL;
    }
  }
  free(lab);
  eng_tensor_release(lse);
  eng_tensor_release(lp);
  return out;
}

/* ---- token log-probabilities -------------------------------------------------- */

/* out_r = x[r, y_r] − lse_r  =>  dout/dx_r = g_r·(onehot(y_r) − softmax(x_r)), 0 where y_r < 0 */
static int token_logprobs_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  int64_t N = g->numel;
  double *coef = malloc(sizeof(double) * (size_t)(N ? N : 1));
  int64_t *goff = row_offsets(g, g->ndim, N);
  if (!coef || !goff) {
    free(coef);
    free(goff);
    return eng_errorf_status("token_logprobs: out of memory");
  }
  const void *gp = tensor_ptr(g);
  for (int64_t r = 0; r < N; r++)
    coef[r] = -(g->dtype == ENG_DTYPE_F64 ? ((const double *)gp)[goff[r]] : ((const float *)gp)[goff[r]]);
  free(goff);
  gin[0] = loss_grad(n, coef, 0);
  free(coef);
  return gin[0] ? 0 : -1;
}

/* logits (...,V), labels (...) -> (...) */
eng_tensor *eng_token_logprobs(eng_tensor *logits, eng_tensor *labels) {
  if (loss_check("token_logprobs", "labels", logits, labels)) return NULL;
  int64_t V = logits->shape[logits->ndim - 1], count = 0;
  int64_t *lab = read_labels("token_logprobs", labels, V, false, 0, &count);
  if (!lab) return NULL;
  loss_plan p;
  if (loss_plan_init("token_logprobs", &p, logits, lab)) {
    free(lab);
    return NULL;
  }
  eng_tensor *lse = tensor_new(ENG_DTYPE_F64, labels->ndim, labels->shape);
  eng_tensor *out = tensor_new(logits->dtype, labels->ndim, labels->shape);
  if (lse && out) {
    p.lse = tensor_ptr(lse);
    p.lp = tensor_ptr(out);
    loss_run(&p, logits->dtype, false);
    eng_node *n = node_attach(out, "token_logprobs", token_logprobs_backward, 1, &logits);
    if (n) {
      node_save(n, 0, lse);
      n->extra = lab;
      lab = NULL;
    }
  } else {
    eng_tensor_release(out);
    out = NULL;
  }
  free((void *)p.roff);
  free(lab);
  eng_tensor_release(lse);
  return out;
}
