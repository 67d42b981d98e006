/* ops_linear_logprobs.c — eng_linear_logprobs (engine_fused.h): the
 * log-probability of each position's label under a linear LM head,
 *   logp[n] = z[n,y_n] − logsumexp_v z[n,v],   z[n,v] = h[n]·W[v],
 * without the (N,V) logits ever existing at once (unless they are small
 * and a backward will want them: "Kept logits" below).
 *
 * The kept rows (label >= 0; the others are never read) are cut into chunks
 * of R rows and the vocabulary into blocks of Vb tokens; one tile of R×Vb
 * logits lives at a time, made by one gemm (gemm_f32). Forward, per chunk:
 * an online logsumexp over the blocks (each block's max and Σexp, merged in
 * float64) and the label's logit; only the (K) logsumexp is kept, in
 * float64 (and the logits when small: below). Backward: recompute each
 * tile, turn it in place into
 *   G = g·(onehot(y) − softmax(z))          (R,Vb)
 * and accumulate
 *   dh_chunk += G · W_block                 (R,Vb)·(Vb,C)
 *   dW_block += Gᵀ · h_chunk                (Vb,R)·(R,C)
 * tile by tile in a fixed order (chunks outer, blocks inner), no atomics:
 * deterministic for a given thread count and tile shape. With all rows in
 * one chunk (the default up to LLP_ROWS kept rows) each block of dW is
 * written once and never re-read.
 *
 * Kept logits: when a gradient is being recorded and the whole (K,V)
 * logits take at most the keep budget (LLP_KEEP_BYTES, 256 MiB; K·V·4 bytes
 * in float32), the forward's gemm writes each tile into a saved (K·V)
 * buffer on the node, tile after tile (the tile of rows [k0,k0+n) and
 * tokens [v0,v0+vb) at element k0·V + n·v0, rows vb apart), and the backward
 * turns those tiles into G in place instead of recomputing them. Same tiles,
 * same order, same kernels, and the forward's tiles are the very bits the
 * recompute gemm makes (same operands and shapes; the gemm is
 * deterministic), so the backward's results are bit-identical to the
 * recompute path's (tests/c/test_linear_logprobs.c compares them bit for
 * bit). The buffer is dropped as soon as the backward has used it (it then
 * holds G, not logits), or with the node when the graph is dropped unused;
 * nothing is kept when no gradient is recorded (eval, reference log-probs),
 * above the budget, or when the buffer cannot be had (then recompute).
 * linear_logprobs_set_keep_budget changes the budget (tests, benchmarks).
 *
 * Cost: the forward is the head's gemm (2KVC flops). With kept logits the
 * backward is two gemms (4KVC): 3 in all, as the unfused head, which also
 * holds the logits from forward to backward (here K·V·4 bytes, no more
 * than the budget). Above the budget it is three (6KVC): 4 in all, in
 * exchange for never holding the (K,V) logits or their gradient.
 *
 * Numerics as eng_token_logprobs: logsumexp in float64; the softmax
 * recomputed as exp((z − hi) − lo), the logsumexp split in two floats; a
 * row of all -inf logits gets -inf and gradient 0; NaN propagates.
 *
 * Not here: a bias on the head, label smoothing, a temperature, reductions
 * over positions (the caller sums or means). */
#include "internal.h"
#include "softmax_kernels.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OP "linear_logprobs"
#define LLP_TILE ((int64_t)1 << 22) /* default logits per tile: 16 MB in float32 */
#define LLP_ROWS 1024               /* default rows per chunk */
#define LLP_MIN_VB 256              /* narrowest default vocabulary block */
#define LLP_KEEP_BYTES ((int64_t)256 << 20) /* kept logits at most: 256 MiB */

static int64_t keep_budget = LLP_KEEP_BYTES;

int64_t linear_logprobs_set_keep_budget(int64_t bytes) {
  return __atomic_exchange_n(&keep_budget, bytes < 0 ? LLP_KEEP_BYTES : bytes, __ATOMIC_RELAXED);
}

/* a matrix as BLAS reads it: element (i,j) at p[i·ld + j], or p[j·ld + i] when trans */
typedef struct {
  const char *p;
  int64_t ld;
  bool trans;
} llp_mat;

typedef struct {
  eng_dtype dt;
  int64_t C, V, K, R, Vb;
  const int64_t *rows;  /* (K) flat positions (in labels' shape) of the kept rows */
  const int64_t *lab;   /* (K) their labels */
  const eng_tensor *h;  /* (...,C) */
  bool direct;          /* h contiguous and every row kept: chunks are read in place */
  llp_mat w;            /* (V,C) */
  char *zb;             /* (R,Vb) the tile (unless zs) */
  char *zs;             /* (K·V) every tile, kept from the forward for the backward, or NULL */
  char *hb;             /* (R,C) gathered rows (unless direct) */
  double *lse;          /* (K) */
  /* forward */
  char *lp;             /* (...) output, contiguous */
  /* backward */
  double *coef;         /* (K) g at each kept row */
  char *dh;             /* (...,C) contiguous, or NULL */
  char *dhb;            /* (R,C) (unless direct) */
  char *dw;             /* (V,C) contiguous, or NULL */
} llp_plan;

/* element offset of the row at flat position r of t's first nd dims */
static int64_t row_offset(const eng_tensor *t, int nd, int64_t r) {
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; d--) {
    off += (r % t->shape[d]) * t->stride[d];
    r /= t->shape[d];
  }
  return off;
}

/* how BLAS reads w (V,C) in place; false when it cannot (then w is copied) */
static bool w_layout(const eng_tensor *w, llp_mat *m) {
  int64_t V = w->shape[0], C = w->shape[1], rs = w->stride[0], cs = w->stride[1];
  int64_t need_n = C > 1 ? C : 1, need_t = V > 1 ? V : 1;
  m->p = tensor_ptr(w);
  if (C <= 1 || cs == 1) {
    int64_t ld = V <= 1 ? need_n : rs;
    if (ld >= need_n) {
      m->trans = false;
      m->ld = ld;
      return true;
    }
  }
  if (V <= 1 || rs == 1) {
    int64_t ld = C <= 1 ? need_t : cs;
    if (ld >= need_t) {
      m->trans = true;
      m->ld = ld;
      return true;
    }
  }
  return false;
}

/* C (M,N) <- alpha·op(A)·op(B) + beta·C, row-major; M, N, K >= 1 */
static void gemm(eng_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                 const void *B, int64_t ldb, double beta, void *Cm, int64_t ldc) {
  enum CBLAS_TRANSPOSE a = ta ? CblasTrans : CblasNoTrans, b = tb ? CblasTrans : CblasNoTrans;
  if (dt == ENG_DTYPE_F64)
    cblas_dgemm(CblasRowMajor, a, b, (blasint)M, (blasint)N, (blasint)K, 1.0, A, (blasint)lda, B, (blasint)ldb,
                beta, Cm, (blasint)ldc);
  else
    gemm_f32(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, (float)beta, Cm, ldc);
}

/* the rows [k0, k0+n) of h as an (n,C) row-major matrix (gathered into hb
 * unless read in place) */
static const char *chunk_h(const llp_plan *p, int64_t k0, int64_t n) {
  size_t es = dtype_size(p->dt);
  const eng_tensor *h = p->h;
  if (p->direct) return (const char *)tensor_ptr(h) + (size_t)(k0 * p->C) * es;
  int nd = h->ndim - 1;
  int64_t C = p->C, sc = h->stride[h->ndim - 1];
  for (int64_t i = 0; i < n; i++) {
    int64_t off = row_offset(h, nd, p->rows[k0 + i]);
    if (p->dt == ENG_DTYPE_F64) {
      const double *s = (const double *)tensor_ptr(h) + off;
      double *d = (double *)p->hb + i * C;
      for (int64_t c = 0; c < C; c++) d[c] = s[c * sc];
    } else {
      const float *s = (const float *)tensor_ptr(h) + off;
      float *d = (float *)p->hb + i * C;
      for (int64_t c = 0; c < C; c++) d[c] = s[c * sc];
    }
  }
  return p->hb;
}

/* where the tile of the chunk at k0 (n rows) and the block at v0 lives: its
 * place in the kept logits, or the one tile buffer */
static char *tile_at(const llp_plan *p, int64_t k0, int64_t n, int64_t v0) {
  if (!p->zs) return p->zb;
  return p->zs + (size_t)(k0 * p->V + n * v0) * dtype_size(p->dt);
}

/* the tile Z (n,vb) <- Hc (n,C) · W[v0:v0+vb]ᵀ */
static void tile_logits(const llp_plan *p, char *Z, const char *Hc, int64_t n, int64_t v0, int64_t vb) {
  size_t es = dtype_size(p->dt);
  if (p->C == 0) {
    memset(Z, 0, (size_t)(n * vb) * es);
    return;
  }
  const char *wb = p->w.p + (size_t)(p->w.trans ? v0 : v0 * p->w.ld) * es;
  gemm(p->dt, false, !p->w.trans, n, vb, p->C, Hc, p->C, wb, p->w.ld, 0.0, Z, vb);
}

#define LLP_KERNELS(SFX, TY)                                                                       \
  /* merge the rows of the tile zt into each row's running max m, Σexp(z − m) s and label     \
   * logit zy */                                                                                   \
  static void tile_stats_##SFX(const llp_plan *p, const char *zt, int64_t k0, int64_t n,           \
                               int64_t v0, int64_t vb, double *m, double *s, double *zy) {         \
    const TY *Z = (const TY *)zt;                                                                  \
    _Pragma("omp parallel for schedule(static) if (n * vb >= PARALLEL_MIN)")                       \
    for (int64_t i = 0; i < n; i++) {                                                              \
      const TY *row = Z + i * vb;                                                                  \
      int64_t y = p->lab[k0 + i];                                                                  \
      if (y >= v0 && y < v0 + vb) zy[i] = (double)row[y - v0];                                     \
      double mi = m[i];                                                                            \
      if (mi != mi || mi == INFINITY) continue; /* NaN or +inf: settled */                         \
      TY bm = sk_max_##SFX(row, vb);                                                               \
      if (bm != bm || bm == INFINITY) {                                                            \
        m[i] = (double)bm;                                                                         \
        continue;                                                                                  \
      }                                                                                            \
      if (bm == -INFINITY) continue;                                                               \
      double bs = sk_sumexp_##SFX(row, vb, bm);                                                    \
      if ((double)bm > mi) {                                                                       \
        s[i] = (mi == -INFINITY ? 0.0 : s[i] * exp(mi - (double)bm)) + bs;                         \
        m[i] = (double)bm;                                                                         \
      } else {                                                                                     \
        s[i] += bs * exp((double)bm - mi);                                                         \
      }                                                                                            \
    }                                                                                              \
  }                                                                                                \
                                                                                                   \
  /* the tile zt, in place: G = a·(onehot(y) − exp(z − lse)) with a = g at the row; 0 on rows     \
   * with a = 0 or lse = -inf (all -inf logits) */                                                 \
  static void tile_grad_##SFX(const llp_plan *p, char *zt, int64_t k0, int64_t n, int64_t v0,      \
                              int64_t vb) {                                                        \
    TY *Z = (TY *)zt;                                                                              \
    _Pragma("omp parallel for schedule(static) if (n * vb >= PARALLEL_MIN)")                       \
    for (int64_t i = 0; i < n; i++) {                                                              \
      TY *row = Z + i * vb;                                                                        \
      double l = p->lse[k0 + i];                                                                   \
      TY a = (TY)p->coef[k0 + i];                                                                  \
      if (a == 0 || l == -INFINITY) {                                                              \
        memset(row, 0, sizeof(TY) * (size_t)vb);                                                   \
        continue;                                                                                  \
      }                                                                                            \
      TY hi = (TY)l, lo = isfinite(l) ? (TY)(l - (double)hi) : (TY)0, na = -a;                     \
      for (int64_t j = 0; j < vb; j++) row[j] = na * SK_EXP_##SFX((row[j] - hi) - lo);             \
      int64_t y = p->lab[k0 + i];                                                                  \
      if (y >= v0 && y < v0 + vb) row[y - v0] += a;                                                \
    }                                                                                              \
  }                                                                                                \
                                                                                                   \
  /* lse and the output for the chunk's rows */                                                    \
  static void chunk_finish_##SFX(const llp_plan *p, int64_t k0, int64_t n, const double *m,       \
                                 const double *s, const double *zy) {                              \
    TY *LP = (TY *)p->lp;                                                                          \
    for (int64_t i = 0; i < n; i++) {                                                              \
      double mi = m[i], ls = isfinite(mi) ? log(s[i]) : 0.0;                                       \
      p->lse[k0 + i] = mi + ls;                                                                    \
      LP[p->rows[k0 + i]] = (TY)(isfinite(mi) ? (zy[i] - mi) - ls : mi == -INFINITY ? mi : zy[i] - mi); \
    }                                                                                              \
  }

LLP_KERNELS(f32, float)
LLP_KERNELS(f64, double)

/* forward: p->lse and p->lp for every kept row (and the logits in p->zs when
 * kept); m, s, zy have R entries */
static void llp_forward(const llp_plan *p, double *m, double *s, double *zy) {
  bool f64 = p->dt == ENG_DTYPE_F64;
  for (int64_t k0 = 0; k0 < p->K; k0 += p->R) {
    int64_t n = p->K - k0 < p->R ? p->K - k0 : p->R;
    const char *Hc = chunk_h(p, k0, n);
    for (int64_t i = 0; i < n; i++) {
      m[i] = -INFINITY;
      s[i] = 0;
      zy[i] = 0;
    }
    for (int64_t v0 = 0; v0 < p->V; v0 += p->Vb) {
      int64_t vb = p->V - v0 < p->Vb ? p->V - v0 : p->Vb;
      char *Z = tile_at(p, k0, n, v0);
      tile_logits(p, Z, Hc, n, v0, vb);
      f64 ? tile_stats_f64(p, Z, k0, n, v0, vb, m, s, zy) : tile_stats_f32(p, Z, k0, n, v0, vb, m, s, zy);
    }
    f64 ? chunk_finish_f64(p, k0, n, m, s, zy) : chunk_finish_f32(p, k0, n, m, s, zy);
  }
}

/* backward: p->dh (rows of skipped labels left as they are) and p->dw, each
 * when not NULL; the tiles are recomputed, or read from p->zs (and turned
 * into G there) when the forward kept them */
static void llp_backward_run(const llp_plan *p) {
  bool f64 = p->dt == ENG_DTYPE_F64;
  size_t es = dtype_size(p->dt);
  int64_t C = p->C;
  for (int64_t k0 = 0; k0 < p->K; k0 += p->R) {
    int64_t n = p->K - k0 < p->R ? p->K - k0 : p->R;
    const char *Hc = chunk_h(p, k0, n);
    char *dHc = !p->dh ? NULL : p->direct ? p->dh + (size_t)(k0 * C) * es : p->dhb;
    for (int64_t v0 = 0; v0 < p->V; v0 += p->Vb) {
      int64_t vb = p->V - v0 < p->Vb ? p->V - v0 : p->Vb;
      char *Z = tile_at(p, k0, n, v0);
      if (!p->zs) tile_logits(p, Z, Hc, n, v0, vb);
      f64 ? tile_grad_f64(p, Z, k0, n, v0, vb) : tile_grad_f32(p, Z, k0, n, v0, vb);
      if (C == 0) continue;
      if (p->dh) {
        const char *wb = p->w.p + (size_t)(p->w.trans ? v0 : v0 * p->w.ld) * es;
        gemm(p->dt, false, p->w.trans, n, C, vb, Z, vb, wb, p->w.ld, v0 == 0 ? 0.0 : 1.0, dHc, C);
      }
      if (p->dw)
        gemm(p->dt, true, false, vb, C, n, Z, vb, Hc, C, k0 == 0 ? 0.0 : 1.0, p->dw + (size_t)(v0 * C) * es, C);
    }
    if (p->dh && !p->direct && C > 0)
      for (int64_t i = 0; i < n; i++)
        memcpy(p->dh + (size_t)(p->rows[k0 + i] * C) * es, p->dhb + (size_t)(i * C) * es, (size_t)C * es);
  }
}

/* ---- the plan: tile shape, w's layout, work buffers ---------------------------- */

/* workspace tensors of a plan (released by plan_free) */
typedef struct {
  eng_tensor *wc, *zb, *hb, *dhb;
} llp_work;

static void plan_free(llp_work *wk) {
  eng_tensor_release(wk->wc);
  eng_tensor_release(wk->zb);
  eng_tensor_release(wk->hb);
  eng_tensor_release(wk->dhb);
  memset(wk, 0, sizeof *wk);
}

static eng_tensor *buffer(eng_dtype dt, int64_t rows, int64_t cols) {
  int64_t shape[2] = {rows, cols};
  return tensor_new(dt, 2, shape);
}

/* R rows by Vb tokens a tile, from the requested sizes (0 = default) */
static void tile_shape(int64_t K, int64_t V, int64_t chunk_rows, int64_t chunk_vocab, int64_t *R, int64_t *Vb) {
  int64_t r = chunk_rows > 0 ? chunk_rows : LLP_ROWS;
  if (r > K) r = K;
  if (r < 1) r = 1;
  int64_t vb = chunk_vocab;
  if (vb <= 0) {
    vb = LLP_TILE / r;
    if (vb < LLP_MIN_VB) vb = LLP_MIN_VB;
    if (vb < V) vb -= vb % 16; /* rows of the tile stay 64-byte aligned */
  }
  if (vb > V) vb = V;
  if (vb < 1) vb = 1;
  *R = r;
  *Vb = vb;
}

/* fill p (all but lp, lse, coef, dh, dw) for h, w and the kept rows; zs the
 * kept logits (no tile buffer then) or NULL; backward adds dhb */
static int plan_init(llp_plan *p, llp_work *wk, eng_tensor *h, eng_tensor *w, const int64_t *rows,
                     const int64_t *lab, int64_t K, int64_t R, int64_t Vb, char *zs, bool backward) {
  memset(p, 0, sizeof *p);
  memset(wk, 0, sizeof *wk);
  p->dt = h->dtype;
  p->C = h->shape[h->ndim - 1];
  p->V = w->shape[0];
  p->K = K;
  p->R = R;
  p->Vb = Vb;
  p->rows = rows;
  p->lab = lab;
  p->h = h;
  int64_t N = 1;
  for (int d = 0; d < h->ndim - 1; d++) N *= h->shape[d];
  p->direct = K == N && eng_tensor_is_contiguous(h);
  if (!w_layout(w, &p->w)) {
    wk->wc = contiguous_nograd(w);
    if (!wk->wc) return -1;
    w_layout(wk->wc, &p->w);
  }
  if (K == 0) return 0;
  p->zs = zs;
  if (!zs) {
    wk->zb = buffer(p->dt, R, Vb);
    if (!wk->zb) return -1;
    p->zb = tensor_ptr(wk->zb);
  }
  if (!p->direct) {
    wk->hb = buffer(p->dt, R, p->C);
    if (!wk->hb) return -1;
    p->hb = tensor_ptr(wk->hb);
    if (backward) {
      wk->dhb = buffer(p->dt, R, p->C);
      if (!wk->dhb) return -1;
      p->dhb = tensor_ptr(wk->dhb);
    }
  }
  return 0;
}

/* ---- backward -------------------------------------------------------------------- */

/* out_n = z[n,y_n] − lse_n  =>  dout/dz_n = g_n·(onehot(y_n) − softmax(z_n)); with z = h·Wᵀ:
 *   dh = G·W,  dW = Gᵀ·h   (G (N,V), 0 on rows whose label is < 0)
 * inputs h, w; saved[0] the (K) logsumexp, saved[1] the (K·V) logits when kept (else NULL;
 * dropped here once used: it then holds G); extra the kept rows (K) then their labels (K);
 * iparams K, R, Vb */
static int linear_logprobs_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *h = n->inputs[0], *w = n->inputs[1];
  int64_t K = n->iparams[0], R = n->iparams[1], Vb = n->iparams[2];
  const int64_t *rows = n->extra, *lab = rows + K;
  llp_plan p;
  llp_work wk;
  double *coef = malloc(sizeof(double) * (size_t)(K ? K : 1));
  if (!coef) return eng_errorf_status(OP ": out of memory");
  char *zs = n->saved[1] ? tensor_ptr(n->saved[1]) : NULL;
  int rc = plan_init(&p, &wk, h, w, rows, lab, K, R, Vb, zs, true);
  eng_tensor *dh = NULL, *dw = NULL;
  if (rc == 0 && h->requires_grad) {
    dh = p.direct ? tensor_new(h->dtype, h->ndim, h->shape) : eng_zeros(h->dtype, h->ndim, h->shape);
    if (!dh) rc = -1;
  }
  if (rc == 0 && w->requires_grad) {
    dw = K ? tensor_new(w->dtype, 2, w->shape) : eng_zeros(w->dtype, 2, w->shape);
    if (!dw) rc = -1;
  }
  if (rc == 0) {
    const char *gp = tensor_ptr(g);
    for (int64_t k = 0; k < K; k++) {
      int64_t off = row_offset(g, g->ndim, rows[k]);
      coef[k] = g->dtype == ENG_DTYPE_F64 ? ((const double *)gp)[off] : (double)((const float *)gp)[off];
    }
    p.lse = tensor_ptr(n->saved[0]);
    p.coef = coef;
    p.dh = dh ? tensor_ptr(dh) : NULL;
    p.dw = dw ? tensor_ptr(dw) : NULL;
    llp_backward_run(&p);
    eng_tensor_release(n->saved[1]);
    n->saved[1] = NULL;
  }
  plan_free(&wk);
  free(coef);
  if (rc) {
    eng_tensor_release(dh);
    eng_tensor_release(dw);
    return -1;
  }
  gin[0] = dh;
  gin[1] = dw;
  return 0;
}

/* ---- forward --------------------------------------------------------------------- */

static int check_args(eng_tensor *h, eng_tensor *w, eng_tensor *labels, int64_t chunk_rows, int64_t chunk_vocab) {
  if (h->dtype != w->dtype)
    return eng_errorf_status(OP ": h is %s, w is %s: they must have the same dtype", eng_dtype_name(h->dtype),
                             eng_dtype_name(w->dtype));
  if (h->ndim < 1)
    return eng_errorf_status(OP ": h is %s: it needs a last dim (the hidden size C)", shp(h));
  int64_t C = h->shape[h->ndim - 1];
  if (w->ndim != 2 || w->shape[1] != C)
    return eng_errorf_status(OP ": h is %s, w is %s: w must be (V,C) with C = %lld, the last dim of h", shp(h),
                             shp(w), (long long)C);
  bool ok = labels->ndim == h->ndim - 1;
  for (int d = 0; ok && d < labels->ndim; d++) ok = labels->shape[d] == h->shape[d];
  if (!ok)
    return eng_errorf_status(OP ": h is %s, labels is %s: labels must have the shape of h without its last dim",
                             shp(h), shp(labels));
  if (chunk_rows < 0)
    return eng_errorf_status(OP ": chunk_rows is %lld: it must be >= 1 (or 0 for the default)",
                             (long long)chunk_rows);
  if (chunk_vocab < 0)
    return eng_errorf_status(OP ": chunk_vocab is %lld: it must be >= 1 (or 0 for the default)",
                             (long long)chunk_vocab);
  int64_t V = w->shape[0], ld = w->stride[0] > w->stride[1] ? w->stride[0] : w->stride[1];
  if (C > INT_MAX || V > INT_MAX || ld > INT_MAX)
    return eng_errorf_status(OP ": h is %s, w is %s: too large for BLAS (a dim over 2^31)", shp(h), shp(w));
  return 0;
}

/* the kept rows (label >= 0) and their labels, in idx[0..K) and idx[K..2K); labels are
 * integral, < 0 (-inf too) for skipped rows, below V otherwise */
static int64_t *read_kept(const eng_tensor *t, int64_t V, int64_t *K) {
  int64_t N = t->numel, k = 0;
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)(2 * N + 1));
  if (!idx) return eng_errorf(OP ": out of memory");
  int64_t *lab = idx + N;
  bool contig = eng_tensor_is_contiguous(t);
  const float *pf = (const float *)tensor_ptr(t);
  const double *pd = (const double *)tensor_ptr(t);
  for (int64_t i = 0; i < N; i++) {
    double v = !contig ? eng_tensor_get_flat(t, i) : t->dtype == ENG_DTYPE_F64 ? pd[i] : (double)pf[i];
    if (!(v == floor(v))) {
      free(idx);
      return eng_errorf(OP ": label %g at %s is not an integer", v, pos_str(t, i));
    }
    if (v < 0) continue;
    if (v >= (double)V) {
      free(idx);
      if (v < 9.0e15)
        return eng_errorf(OP ": label %lld at %s is out of range: the vocabulary has %lld entries (labels < 0 "
                          "are skipped)",
                          (long long)v, pos_str(t, i), (long long)V);
      return eng_errorf(OP ": label %g at %s is out of range: the vocabulary has %lld entries (labels < 0 are "
                        "skipped)",
                        v, pos_str(t, i), (long long)V);
    }
    idx[k] = i;
    lab[k] = (int64_t)v;
    k++;
  }
  memmove(idx + k, lab, sizeof(int64_t) * (size_t)k);
  *K = k;
  return idx;
}

/* h (...,C), w (V,C), labels (...) -> (...) */
eng_tensor *eng_linear_logprobs(eng_tensor *h, eng_tensor *w, eng_tensor *labels, int64_t chunk_rows,
                                int64_t chunk_vocab) {
  if (check_args(h, w, labels, chunk_rows, chunk_vocab)) return NULL;
  int64_t V = w->shape[0], K = 0, R, Vb;
  int64_t *idx = read_kept(labels, V, &K);
  if (!idx) return NULL;
  tile_shape(K, V, chunk_rows, chunk_vocab, &R, &Vb);
  eng_tensor *in[2] = {h, w};
  /* keep the logits for the backward when one is recorded and they fit the budget */
  int64_t budget = __atomic_load_n(&keep_budget, __ATOMIC_RELAXED), es = (int64_t)dtype_size(h->dtype);
  eng_tensor *kept = NULL;
  if (K > 0 && needs_grad(2, in) && K <= budget / es / V) {
    int64_t KV = K * V;
    kept = tensor_new(h->dtype, 1, &KV);
    if (!kept) eng_clear_error(); /* no room: recompute in the backward instead */
  }
  llp_plan p;
  llp_work wk = {0};
  eng_tensor *out = eng_zeros(h->dtype, labels->ndim, labels->shape);
  eng_tensor *lse = tensor_new(ENG_DTYPE_F64, 1, &K);
  double *stats = malloc(sizeof(double) * (size_t)(3 * R));
  int rc = (out && lse && stats)
               ? plan_init(&p, &wk, h, w, idx, idx + K, K, R, Vb, kept ? tensor_ptr(kept) : NULL, false)
               : -1;
  if (rc == 0) {
    p.lse = tensor_ptr(lse);
    p.lp = tensor_ptr(out);
    llp_forward(&p, stats, stats + R, stats + 2 * R);
  } else if (!stats) {
    eng_errorf(OP ": out of memory");
  }
  plan_free(&wk);
  free(stats);
  if (rc) {
    eng_tensor_release(out);
    eng_tensor_release(lse);
    eng_tensor_release(kept);
    free(idx);
    return NULL;
  }
  eng_node *n = node_attach(out, OP, linear_logprobs_backward, 2, in);
  if (n) {
    node_save(n, 0, lse);
    node_save(n, 1, kept);
    n->iparams[0] = K;
    n->iparams[1] = R;
    n->iparams[2] = Vb;
    n->extra = idx;
    idx = NULL;
  }
  free(idx);
  eng_tensor_release(lse);
  eng_tensor_release(kept);
  return out;
}
