/* ops_nn.c — the per-layer transformer ops that are not matmul or attention:
 * embedding lookup, layer norm, RMS norm and inverted dropout, each with its
 * fused backward beside the forward.
 *
 * Kernels are instantiated for float and double (<tgmath.h> picks sqrtf or
 * sqrt). Rows of the normalised input may sit anywhere (narrowed or permuted
 * leading dims are read in place through a row-offset table); only a last dim
 * with stride != 1 is copied first. Parameter gradients (embedding rows,
 * norm weight and bias) are summed per column block, so they come out the
 * same on any number of threads.
 *
 * Not here: attention, cross entropy, the activation functions (see
 * ops_elementwise.c), and any "training mode" switch: dropout always drops;
 * the caller decides whether to call it. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

/* parameter-gradient loops split the columns into blocks of this many */
#define COL_BLOCK 64


/* ---- rows of the last dim, read in place ----------------------------------
 * x (..., C) with a unit-stride last dim: row r starts at base + off[r]
 * (off NULL when x is contiguous: r*C). */
typedef struct {
  eng_tensor *t; /* retained: x itself or a contiguous copy */
  int64_t rows, C;
  int64_t *off;  /* malloc'd, or NULL */
} rows_view;

static void rows_free(rows_view *v) {
  eng_tensor_release(v->t);
  free(v->off);
  v->t = NULL;
  v->off = NULL;
}

static int rows_init(rows_view *v, eng_tensor *x, const char *op) {
  memset(v, 0, sizeof *v);
  int nd = x->ndim;
  v->C = x->shape[nd - 1];
  v->rows = v->C ? x->numel / v->C : 0;
  if (x->shape[nd - 1] > 1 && x->stride[nd - 1] != 1) {
    v->t = plain_copy(x);
    return v->t ? 0 : -1;
  }
  v->t = eng_tensor_retain(x);
  if (eng_tensor_is_contiguous(x)) return 0;
  v->off = malloc(sizeof(int64_t) * (size_t)(v->rows ? v->rows : 1));
  if (!v->off) {
    rows_free(v);
    return eng_errorf_status("%s: out of memory", op);
  }
  for (int64_t r = 0; r < v->rows; r++) {
    int64_t rem = r, o = 0;
    for (int d = nd - 2; d >= 0; d--) {
      o += (rem % x->shape[d]) * x->stride[d];
      rem /= x->shape[d];
    }
    v->off[r] = o;
  }
  return 0;
}

#define ROW_OFF(v, r) ((v)->off ? (v)->off[r] : (r) * (v)->C)

/* ==== embedding =========================================================== */

/* weight (V,C) strides (ws0, ws1), ids[n] -> out (n,C) contiguous */
#define EMB_KERNELS(SUF, TY)                                                         \
  static void emb_fwd_##SUF(const TY *W, int64_t ws0, int64_t ws1, const int64_t *ids, \
                            int64_t n, int64_t C, TY *out) {                         \
    typedef TY T;                                                                    \
    _Pragma("omp parallel for schedule(static) if (n * C >= PARALLEL_MIN)")          \
    for (int64_t i = 0; i < n; i++) {                                                \
      const T *w = W + ids[i] * ws0;                                                 \
      T *o = out + i * C;                                                            \
      if (ws1 == 1) memcpy(o, w, sizeof(T) * (size_t)C);                             \
      else for (int64_t c = 0; c < C; c++) o[c] = w[c * ws1];                        \
    }                                                                                \
  }                                                                                  \
  /* dW (V,C) zeroed, += g (n,C) contiguous at the rows ids[i] */                    \
  static void emb_bwd_##SUF(const TY *G, const int64_t *ids, int64_t n, int64_t C, TY *dW) { \
    typedef TY T;                                                                    \
    int64_t nblk = (C + COL_BLOCK - 1) / COL_BLOCK;                                  \
    _Pragma("omp parallel for schedule(static) if (n * C >= PARALLEL_MIN)")          \
    for (int64_t bk = 0; bk < nblk; bk++) {                                          \
      int64_t c0 = bk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;      \
      for (int64_t i = 0; i < n; i++) {                                              \
        T *d = dW + ids[i] * C;                                                      \
        const T *g = G + i * C;                                                      \
        for (int64_t c = c0; c < c1; c++) d[c] += g[c];                              \
      }                                                                              \
    }                                                                                \
  }
EMB_KERNELS(f32, float)
EMB_KERNELS(f64, double)

/* dW[v] = sum of g[i] over the positions i with ids[i] == v (repeats add up) */
static int embedding_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *w = n->inputs[0];
  const int64_t *ids = n->extra;
  int64_t cnt = n->iparams[0], C = w->shape[1];
  eng_tensor *gc = eng_tensor_is_contiguous(g) ? eng_tensor_retain(g) : plain_copy(g);
  eng_tensor *dw = gc ? eng_zeros(w->dtype, 2, w->shape) : NULL;
  if (!dw) {
    eng_tensor_release(gc);
    return -1;
  }
  if (w->dtype == ENG_DTYPE_F64)
    emb_bwd_f64(tensor_ptr(gc), ids, cnt, C, tensor_ptr(dw));
  else
    emb_bwd_f32(tensor_ptr(gc), ids, cnt, C, tensor_ptr(dw));
  eng_tensor_release(gc);
  gin[0] = dw;
  return 0;
}

/* weight (V,C), ids (...) integral in [0,V) -> (..., C) */
eng_tensor *eng_embedding(eng_tensor *weight, eng_tensor *ids) {
  if (weight->ndim != 2)
    return eng_errorf("embedding: weight is %s, expected 2 dims (V,C)", shp(weight));
  if (ids->ndim + 1 > ENG_MAX_DIMS)
    return eng_errorf("embedding: ids is %s: the result would have more than %d dims", shp(ids),
                      ENG_MAX_DIMS);
  int64_t V = weight->shape[0], C = weight->shape[1];
  int64_t *idx = read_indices("embedding", ids, 0, 0, V, false);
  if (!idx) return NULL;
  int64_t shape[ENG_MAX_DIMS];
  memcpy(shape, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
  shape[ids->ndim] = C;
  eng_tensor *out = tensor_new(weight->dtype, ids->ndim + 1, shape);
  if (!out) {
    free(idx);
    return NULL;
  }
  if (weight->dtype == ENG_DTYPE_F64)
    emb_fwd_f64(tensor_ptr(weight), weight->stride[0], weight->stride[1], idx, ids->numel, C,
                tensor_ptr(out));
  else
    emb_fwd_f32(tensor_ptr(weight), weight->stride[0], weight->stride[1], idx, ids->numel, C,
                tensor_ptr(out));
  eng_node *n = node_attach(out, "embedding", embedding_backward, 1, &weight);
  if (n) {
    n->extra = idx;
    n->iparams[0] = ids->numel;
  } else {
    free(idx);
  }
  return out;
}

/* ==== layer norm and RMS norm ==============================================
 * One pair of kernels for both: with center, mu is the row mean (layer norm),
 * without it mu = 0 (RMS norm). Per row of C:
 *   rstd = 1/sqrt(mean((x-mu)^2) + eps),  xh = (x-mu)·rstd,  y = xh·w + b
 * Backward, with dxh = g·w:
 *   dx = rstd·(dxh - [center] mean(dxh) - xh·mean(dxh·xh))
 *   dw = sum over rows of g·xh,  db = sum over rows of g */

typedef struct {
  const rows_view *x, *g;
  const void *w, *b;  /* contiguous (C) or NULL */
  void *y, *dx;       /* contiguous (rows, C) */
  void *mean, *rstd;  /* (rows); mean NULL without center */
  double *dw, *db;    /* (C) accumulators, or NULL */
  double eps;
  bool center;
} norm_args;

#define NORM_KERNELS(SUF, TY)                                                        \
  static void norm_fwd_##SUF(const norm_args *a) {                                   \
    typedef TY T;                                                                    \
    const rows_view *xv = a->x;                                                      \
    const T *X = tensor_ptr(xv->t), *W = a->w, *B = a->b;                            \
    T *Y = a->y, *MU = a->mean, *RS = a->rstd;                                       \
    int64_t C = xv->C, rows = xv->rows;                                              \
    _Pragma("omp parallel for schedule(static) if (rows * C >= PARALLEL_MIN)")       \
    for (int64_t r = 0; r < rows; r++) {                                             \
      const T *x = X + ROW_OFF(xv, r);                                               \
      T *y = Y + r * C;                                                              \
      /* shifted by the row's first element so a large common offset does */  \
      /* not cost precision: d = (x - sh) - m, mu = sh + m                    */ \
      T sh = 0, m = 0, ss = 0;                                                       \
      if (a->center) {                                                               \
        T s = 0;                                                                     \
        sh = x[0];                                                                   \
        _Pragma("omp simd reduction(+ : s)")                                         \
        for (int64_t c = 0; c < C; c++) s += x[c] - sh;                              \
        m = s / (T)C;                                                                \
      }                                                                              \
      _Pragma("omp simd reduction(+ : ss)")                                          \
      for (int64_t c = 0; c < C; c++) ss += (x[c] - sh - m) * (x[c] - sh - m);       \
      T rs = 1 / sqrt(ss / (T)C + (T)a->eps), mu = sh + m;                           \
      if (W && B)                                                                    \
        for (int64_t c = 0; c < C; c++) y[c] = (x[c] - sh - m) * rs * W[c] + B[c];   \
      else if (W)                                                                    \
        for (int64_t c = 0; c < C; c++) y[c] = (x[c] - sh - m) * rs * W[c];          \
      else if (B)                                                                    \
        for (int64_t c = 0; c < C; c++) y[c] = (x[c] - sh - m) * rs + B[c];          \
      else                                                                           \
        for (int64_t c = 0; c < C; c++) y[c] = (x[c] - sh - m) * rs;                 \
      if (MU) MU[r] = mu;                                                            \
      if (RS) RS[r] = rs;                                                            \
    }                                                                                \
  }                                                                                  \
  static void norm_bwd_dx_##SUF(const norm_args *a) {                                \
    typedef TY T;                                                                    \
    const rows_view *xv = a->x, *gv = a->g;                                          \
    const T *X = tensor_ptr(xv->t), *G = tensor_ptr(gv->t), *W = a->w;               \
    const T *MU = a->mean, *RS = a->rstd;                                            \
    T *DX = a->dx;                                                                   \
    int64_t C = xv->C, rows = xv->rows;                                              \
    _Pragma("omp parallel for schedule(static) if (rows * C >= PARALLEL_MIN)")       \
    for (int64_t r = 0; r < rows; r++) {                                             \
      const T *x = X + ROW_OFF(xv, r), *g = G + ROW_OFF(gv, r);                      \
      T *dx = DX + r * C;                                                            \
      T mu = MU ? MU[r] : 0, rs = RS[r], s1 = 0, s2 = 0;                             \
      _Pragma("omp simd reduction(+ : s1, s2)")                                      \
      for (int64_t c = 0; c < C; c++) {                                              \
        T dxh = W ? g[c] * W[c] : g[c];                                              \
        s1 += dxh;                                                                   \
        s2 += dxh * (x[c] - mu) * rs;                                                \
      }                                                                              \
      T m1 = a->center ? s1 / (T)C : 0, m2 = s2 / (T)C;                              \
      for (int64_t c = 0; c < C; c++) {                                              \
        T dxh = W ? g[c] * W[c] : g[c];                                              \
        dx[c] = rs * (dxh - m1 - (x[c] - mu) * rs * m2);                             \
      }                                                                              \
    }                                                                                \
  }                                                                                  \
  /* dw, db (zeroed doubles) += per column over all rows */                         \
  static void norm_bwd_params_##SUF(const norm_args *a) {                            \
    typedef TY T;                                                                    \
    const rows_view *xv = a->x, *gv = a->g;                                          \
    const T *X = tensor_ptr(xv->t), *G = tensor_ptr(gv->t);                          \
    const T *MU = a->mean, *RS = a->rstd;                                            \
    double *DW = a->dw, *DB = a->db;                                                 \
    int64_t C = xv->C, rows = xv->rows, nblk = (C + COL_BLOCK - 1) / COL_BLOCK;      \
    _Pragma("omp parallel for schedule(static) if (rows * C >= PARALLEL_MIN)")       \
    for (int64_t bk = 0; bk < nblk; bk++) {                                          \
      int64_t c0 = bk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;      \
      for (int64_t r = 0; r < rows; r++) {                                           \
        const T *x = X + ROW_OFF(xv, r), *g = G + ROW_OFF(gv, r);                    \
        T mu = MU ? MU[r] : 0, rs = RS[r];                                           \
        if (DW)                                                                      \
          for (int64_t c = c0; c < c1; c++) DW[c] += (double)(g[c] * (x[c] - mu) * rs); \
        if (DB)                                                                      \
          for (int64_t c = c0; c < c1; c++) DB[c] += (double)g[c];                   \
      }                                                                              \
    }                                                                                \
  }
NORM_KERNELS(f32, float)
NORM_KERNELS(f64, double)

/* a (C) parameter as a contiguous tensor (a copy only when strided) */
static eng_tensor *param_contig(eng_tensor *p) {
  if (!p) return NULL;
  return eng_tensor_is_contiguous(p) ? eng_tensor_retain(p) : plain_copy(p);
}

/* (C) doubles -> a new tensor of dtype dt */
static eng_tensor *from_acc(eng_dtype dt, int64_t C, const double *acc) {
  return eng_from_doubles(dt, 1, &C, acc);
}

/* inputs: x, then weight if iparams[0], then bias if iparams[1];
 * iparams[2]: center; saved[0] mean (center only), saved[1] rstd */
static int norm_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  bool has_w = n->iparams[0], has_b = n->iparams[1];
  eng_tensor *w = has_w ? n->inputs[1] : NULL;
  eng_tensor *b = has_b ? n->inputs[has_w ? 2 : 1] : NULL;
  const char *op = n->name;
  rows_view xv, gv;
  if (rows_init(&xv, x, op)) return -1;
  if (rows_init(&gv, g, op)) {
    rows_free(&xv);
    return -1;
  }
  int64_t C = xv.C;
  eng_tensor *wc = param_contig(w);
  double *acc = calloc((size_t)(2 * C + 1), sizeof(double));
  norm_args a = {.x = &xv, .g = &gv, .w = wc ? tensor_ptr(wc) : NULL, .b = NULL,
                 .mean = n->saved[0] ? tensor_ptr(n->saved[0]) : NULL,
                 .rstd = tensor_ptr(n->saved[1]), .center = n->iparams[2] != 0};
  int rc = 0;
  if ((w && !wc) || !acc) rc = eng_errorf_status("%s: out of memory", op);
  bool f64 = x->dtype == ENG_DTYPE_F64;
  if (rc == 0 && x->requires_grad) {
    eng_tensor *dx = tensor_new_like(x);
    if (!dx) rc = -1;
    else {
      a.dx = tensor_ptr(dx);
      if (f64) norm_bwd_dx_f64(&a);
      else norm_bwd_dx_f32(&a);
      gin[0] = dx;
    }
  }
  bool need_w = w && w->requires_grad, need_b = b && b->requires_grad;
  if (rc == 0 && (need_w || need_b)) {
    a.dw = need_w ? acc : NULL;
    a.db = need_b ? acc + C : NULL;
    if (f64) norm_bwd_params_f64(&a);
    else norm_bwd_params_f32(&a);
    if (need_w && !(gin[1] = from_acc(w->dtype, C, acc))) rc = -1;
    if (rc == 0 && need_b && !(gin[has_w ? 2 : 1] = from_acc(b->dtype, C, acc + C))) rc = -1;
  }
  free(acc);
  eng_tensor_release(wc);
  rows_free(&xv);
  rows_free(&gv);
  return rc;
}

static int check_param(const char *op, const char *what, const eng_tensor *x, const eng_tensor *p) {
  if (!p) return 0;
  if (check_float_same_dtype(op, x, p)) return -1;
  if (p->ndim != 1 || p->shape[0] != x->shape[x->ndim - 1])
    return eng_errorf_status("%s: %s is %s, expected [%lld] (the last dim of x %s)", op, what, shp(p),
                             (long long)x->shape[x->ndim - 1], shp(x));
  return 0;
}

static eng_tensor *norm(const char *op, eng_tensor *x, eng_tensor *w, eng_tensor *b, double eps,
                        bool center) {
  if (x->ndim == 0) return eng_errorf("%s: x is %s: it needs at least one dim", op, shp(x));
  if (check_param(op, "weight", x, w) || check_param(op, "bias", x, b)) return NULL;
  if (!(eps >= 0) || isinf(eps)) return eng_errorf("%s: eps must be finite and >= 0, got %g", op, eps);
  eng_tensor *in[3] = {x, NULL, NULL};
  int nin = 1;
  if (w) in[nin++] = w;
  if (b) in[nin++] = b;
  bool grad = needs_grad(nin, in);
  rows_view xv;
  if (rows_init(&xv, x, op)) return NULL;
  eng_tensor *wc = param_contig(w), *bc = param_contig(b);
  eng_tensor *y = tensor_new_like(x), *mean = NULL, *rstd = NULL;
  bool ok = y && (!w || wc) && (!b || bc);
  if (ok && grad) {
    rstd = tensor_new(x->dtype, 1, &xv.rows);
    mean = center ? tensor_new(x->dtype, 1, &xv.rows) : NULL;
    ok = rstd && (!center || mean);
  }
  if (ok) {
    norm_args a = {.x = &xv, .w = wc ? tensor_ptr(wc) : NULL, .b = bc ? tensor_ptr(bc) : NULL,
                   .y = tensor_ptr(y), .mean = mean ? tensor_ptr(mean) : NULL,
                   .rstd = rstd ? tensor_ptr(rstd) : NULL, .eps = eps, .center = center};
    if (x->dtype == ENG_DTYPE_F64) norm_fwd_f64(&a);
    else norm_fwd_f32(&a);
    eng_node *n = node_attach(y, op, norm_backward, nin, in);
    if (n) {
      n->iparams[0] = w != NULL;
      n->iparams[1] = b != NULL;
      n->iparams[2] = center;
      node_save(n, 0, mean);
      node_save(n, 1, rstd);
    }
  } else {
    eng_tensor_release(y);
    y = NULL;
  }
  eng_tensor_release(mean);
  eng_tensor_release(rstd);
  eng_tensor_release(wc);
  eng_tensor_release(bc);
  rows_free(&xv);
  return y;
}

/* x (..., C), weight/bias (C) or NULL -> (..., C) */
eng_tensor *eng_layer_norm(eng_tensor *x, eng_tensor *weight, eng_tensor *bias, double eps) {
  return norm("layer_norm", x, weight, bias, eps, true);
}

/* x (..., C), weight (C) or NULL -> (..., C): x / sqrt(mean(x^2) + eps) * weight */
eng_tensor *eng_rms_norm(eng_tensor *x, eng_tensor *weight, double eps) {
  return norm("rms_norm", x, weight, NULL, eps, false);
}

/* ==== dropout ==============================================================
 * The mask is one byte per element, drawn in x's logical row-major order,
 * one eng_rng_uniform per element (kept when u >= p): the same seed gives the
 * same mask on every machine and thread count. */

/* p[0] out, p[1] in, p[2] mask (bytes): out = mask ? in·scale : 0 */
#define DROP_KERNEL(NAME, TY)                                                        \
  static void NAME(void *ctx, int64_t n, char **p, const int64_t *s) {               \
    typedef TY T;                                                                    \
    T scale = (T)*(const double *)ctx;                                               \
    T *o = (T *)p[0];                                                                \
    const T *x = (const T *)p[1];                                                    \
    const uint8_t *m = (const uint8_t *)p[2];                                        \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1)                                         \
      for (int64_t i = 0; i < n; i++) o[i] = m[i] ? x[i] * scale : (T)0;             \
    else                                                                             \
      for (int64_t i = 0; i < n; i++) o[i * s[0]] = m[i * s[2]] ? x[i * s[1]] * scale : (T)0; \
  }
DROP_KERNEL(k_drop_f32, float)
DROP_KERNEL(k_drop_f64, double)

/* out (contiguous, x's shape) = mask ? x·scale : 0 */
static eng_tensor *apply_mask(eng_tensor *x, const uint8_t *mask, double scale) {
  eng_tensor *out = tensor_new_like(x);
  if (!out) return NULL;
  int nd = x->ndim;
  int64_t st[3][ENG_MAX_DIMS];
  memcpy(st[0], out->stride, sizeof(int64_t) * (size_t)nd);
  memcpy(st[1], x->stride, sizeof(int64_t) * (size_t)nd);
  memcpy(st[2], out->stride, sizeof(int64_t) * (size_t)nd);
  char *base[3] = {tensor_ptr(out), tensor_ptr(x), (char *)mask};
  size_t es = dtype_size(x->dtype), ess[3] = {es, es, 1};
  iter_run(nd, x->shape, 3, base, st, ess, x->dtype == ENG_DTYPE_F64 ? k_drop_f64 : k_drop_f32, &scale);
  return out;
}

/* d dropout = g · mask / (1-p) */
static int dropout_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  gin[0] = apply_mask(g, n->extra, n->dparams[0]);
  return gin[0] ? 0 : -1;
}

/* x (...) -> (...): each element zeroed with probability p, the rest scaled
 * by 1/(1-p); p == 0 returns x itself */
eng_tensor *eng_dropout(eng_tensor *x, double p, eng_rng *rng) {
  if (!(p >= 0 && p < 1)) return eng_errorf("dropout: p must be in [0, 1), got %g", p);
  if (p == 0) return eng_tensor_retain(x);
  if (!rng) rng = eng_default_rng();
  uint8_t *mask = malloc((size_t)(x->numel ? x->numel : 1));
  if (!mask) return eng_errorf("dropout: out of memory for the mask of %s", shp(x));
  for (int64_t i = 0; i < x->numel; i++) mask[i] = eng_rng_uniform(rng) >= p;
  double scale = 1.0 / (1.0 - p);
  eng_tensor *out = apply_mask(x, mask, scale);
  if (!out) {
    free(mask);
    return NULL;
  }
  eng_node *n = node_attach(out, "dropout", dropout_backward, 1, &x);
  if (n) {
    n->extra = mask;
    n->dparams[0] = scale;
  } else {
    free(mask);
  }
  return out;
}
