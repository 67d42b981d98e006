/* ops_attention.c — fused scaled dot-product attention (eng_attention) with
 * grouped-query heads, a key padding mask and causal masking, forward and
 * backward side by side.
 *
 * Per (batch, query head) the forward computes the scores S = scale·Q·Kᵀ
 * with one gemm into a (T,S) workspace, turns them into masked softmax
 * probabilities in place, and multiplies by V with a second gemm. It saves
 * the output and the per-row logsumexp (B,H,T), in float64 so that the
 * recomputed probabilities stay exact for large scores — never the (B,H,T,S)
 * probabilities: the backward recomputes them from Q, K and the logsumexp.
 *
 * Visibility: query t sees key s iff key_mask[b,s] != 0 (when a mask is
 * given) and, when causal, s <= t + (S - T) (the last query is aligned with
 * the last key). A query row that sees no key at all outputs zeros, stores
 * logsumexp -inf, and gets zero gradient (no NaN anywhere).
 *
 * Threads: when there are at least as many (b,h) units as OpenMP threads,
 * the units run in parallel and each gemm runs on one thread (Debian's
 * OpenMP build of OpenBLAS runs single-threaded inside an active parallel
 * region, so there is no nested oversubscription); otherwise the units run
 * one after another, each gemm uses all threads and the row loops are split
 * across threads. Results are deterministic for a fixed thread count.
 *
 * Layout: q, k, v and the incoming gradient are read in place through their
 * strides when each (b,h) slice has unit stride along D and rows at least D
 * apart (e.g. the permuted (B,T,H,D) -> (B,H,T,D) view of a projection);
 * other layouts are copied to contiguous once per call.
 *
 * Not here: dropout on the probabilities, attention biases (ALiBi), KV
 * caches. */
#include "internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

/* everything one call needs; strides in elements */
typedef struct {
  int64_t B, H, Hkv, Tq, Sk, D, rep; /* rep = H / Hkv query heads per kv head */
  double scale;
  bool causal;
  const unsigned char *km; /* (B,S) 1 = visible key, or NULL */
  /* operands: base pointer, batch stride, head stride, row stride (ld) */
  const void *q, *k, *v, *go;
  int64_t qs[3], ks[3], vs[3], gs[3];
  void *o;                /* output (B,H,T,D), contiguous */
  double *lse;            /* logsumexp (B,H,T) in float64 for both dtypes */
  void *dq, *dk, *dv;     /* backward results (contiguous) or NULL */
  void *ws;               /* per-thread workspaces */
  int64_t ws_len;         /* elements per thread */
  size_t ws_bytes;        /* the whole block, for pool_free */
  bool par_units;         /* true: parallel over units; false: inside them */
} attn_plan;

/* number of keys a query row may see by position: keys [0, lim) */
static inline int64_t attn_limit(const attn_plan *p, int64_t t) {
  if (!p->causal) return p->Sk;
  int64_t lim = t + p->Sk - p->Tq + 1;
  return lim < 0 ? 0 : (lim > p->Sk ? p->Sk : lim);
}

#define ATTN_KERNELS(SUF, TY, GEMM)                                                        \
  /* C (M,N) = alpha·op(A)·op(B) + beta·C, row-major; degenerate sizes handled here */    \
  static void attn_gemm_##SUF(bool ta, bool tb, int64_t M, int64_t N, int64_t K, TY alpha,     \
                         const TY *A, int64_t lda, const TY *Bm, int64_t ldb, TY beta,    \
                         TY *C, int64_t ldc) {                                            \
    typedef TY T;                                                                         \
    if (M == 0 || N == 0) return;                                                         \
    if (K == 0) {                                                                         \
      for (int64_t i = 0; i < M; i++)                                                     \
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? (T)0 : beta * C[i * ldc + j]; \
      return;                                                                             \
    }                                                                                     \
    GEMM(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);                          \
  }                                                                                       \
                                                                                          \
  /* row (S) of scaled scores -> masked softmax in place; *lse its logsumexp */           \
  static void attn_row_softmax_##SUF(TY *row, int64_t lim, int64_t Sk,                    \
                                     const unsigned char *km, double *lse) {              \
    typedef TY T;                                                                         \
    int64_t nvis = 0;                                                                     \
    T m = -INFINITY;                                                                      \
    if (km) {                                                                             \
      for (int64_t s = 0; s < lim; s++)                                                   \
        if (km[s]) {                                                                      \
          nvis++;                                                                         \
          m = row[s] > m ? row[s] : m;                                                    \
        }                                                                                 \
    } else {                                                                              \
      nvis = lim;                                                                         \
      for (int64_t s = 0; s < lim; s++) m = row[s] > m ? row[s] : m;                      \
    }                                                                                     \
    if (nvis == 0) { /* no visible key: zeros, and no gradient later */                  \
      memset(row, 0, sizeof(T) * (size_t)Sk);                                             \
      *lse = -INFINITY;                                                                   \
      return;                                                                             \
    }                                                                                     \
    T sum = 0;                                                                            \
    if (km) {                                                                             \
      for (int64_t s = 0; s < lim; s++) {                                                 \
        T e = km[s] ? exp(row[s] - m) : (T)0;                                             \
        row[s] = e;                                                                       \
        sum += e;                                                                         \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t s = 0; s < lim; s++) {                                                 \
        T e = exp(row[s] - m);                                                            \
        row[s] = e;                                                                       \
        sum += e;                                                                         \
      }                                                                                   \
    }                                                                                     \
    T inv = 1 / sum;                                                                      \
    for (int64_t s = 0; s < lim; s++) row[s] *= inv;                                      \
    for (int64_t s = lim; s < Sk; s++) row[s] = 0;                                        \
    *lse = (double)m + log((double)sum);                                                  \
  }                                                                                       \
                                                                                          \
  /* row of scaled scores -> probabilities exp(score - lse), 0 where hidden;             \
   * lse is split in hi + lo so that score - hi is exact near the max */                  \
  static void attn_row_probs_##SUF(TY *row, int64_t lim, int64_t Sk,                      \
                                   const unsigned char *km, double lse) {                 \
    typedef TY T;                                                                         \
    if (lse == -INFINITY) lim = 0; /* the row saw no key */                               \
    T hi = (T)lse, lo = (T)(lse - (double)hi);                                            \
    if (km) {                                                                             \
      for (int64_t s = 0; s < lim; s++) row[s] = km[s] ? exp((row[s] - hi) - lo) : (T)0;  \
    } else {                                                                              \
      for (int64_t s = 0; s < lim; s++) row[s] = exp((row[s] - hi) - lo);                 \
    }                                                                                     \
    for (int64_t s = lim; s < Sk; s++) row[s] = 0;                                        \
  }                                                                                       \
                                                                                          \
  /* row of dP (S) -> dS = scale·P∘(dP − Δ) in place, Δ = Σ_d dO·O; exactly 0 where       \
   * P is 0 (hidden keys) */                                                              \
  static void attn_row_dscores_##SUF(TY *dp, const TY *pr, const TY *go, const TY *o,     \
                                     int64_t Sk, int64_t D, TY sc) {                      \
    typedef TY T;                                                                         \
    T delta = 0;                                                                          \
    for (int64_t d = 0; d < D; d++) delta += go[d] * o[d];                                \
    for (int64_t s = 0; s < Sk; s++) dp[s] = pr[s] == 0 ? (T)0 : sc * pr[s] * (dp[s] - delta); \
  }                                                                                       \
                                                                                          \
  /* forward of one (b,h): scores -> probabilities -> O; buf (T,S) */                     \
  static void attn_fwd_unit_##SUF(const attn_plan *p, int64_t b, int64_t h, TY *buf,      \
                                  bool rows_par) {                                        \
    typedef TY T;                                                                         \
    int64_t g = h / p->rep, Tq = p->Tq, Sk = p->Sk, D = p->D;                             \
    const T *Q = (const T *)p->q + b * p->qs[0] + h * p->qs[1];                           \
    const T *K = (const T *)p->k + b * p->ks[0] + g * p->ks[1];                           \
    const T *V = (const T *)p->v + b * p->vs[0] + g * p->vs[1];                           \
    T *O = (T *)p->o + (b * p->H + h) * Tq * D;                                           \
    double *L = p->lse + (b * p->H + h) * Tq;                                             \
    const unsigned char *km = p->km ? p->km + b * Sk : NULL;                              \
    /* (T,D)·(S,D)ᵀ -> (T,S) */                                                           \
    attn_gemm_##SUF(false, true, Tq, Sk, D, (T)p->scale, Q, p->qs[2], K, p->ks[2], 0, buf, Sk); \
    if (rows_par && Tq * Sk >= PARALLEL_MIN) {                                            \
      _Pragma("omp parallel for schedule(static)")                                        \
      for (int64_t t = 0; t < Tq; t++)                                                    \
        attn_row_softmax_##SUF(buf + t * Sk, attn_limit(p, t), Sk, km, L + t);            \
    } else {                                                                              \
      for (int64_t t = 0; t < Tq; t++)                                                    \
        attn_row_softmax_##SUF(buf + t * Sk, attn_limit(p, t), Sk, km, L + t);            \
    }                                                                                     \
    /* (T,S)·(S,D) -> (T,D) */                                                            \
    attn_gemm_##SUF(false, false, Tq, D, Sk, 1, buf, Sk, V, p->vs[2], 0, O, D);                \
  }                                                                                       \
                                                                                          \
  /* backward of one kv head (b,g) over its rep query heads; buf 2·(T,S).                 \
   * P = softmax(S), dV += Pᵀ·dO, dP = dO·Vᵀ, Δ_t = Σ_d dO·O,                             \
   * dS = scale·P∘(dP − Δ), dQ = dS·K, dK += dSᵀ·Q */                                     \
  static void attn_bwd_unit_##SUF(const attn_plan *p, int64_t b, int64_t g, TY *buf,      \
                                  bool rows_par) {                                        \
    typedef TY T;                                                                         \
    int64_t Tq = p->Tq, Sk = p->Sk, D = p->D;                                             \
    T *P = buf, *dP = buf + Tq * Sk;                                                      \
    const T *K = (const T *)p->k + b * p->ks[0] + g * p->ks[1];                           \
    const T *V = (const T *)p->v + b * p->vs[0] + g * p->vs[1];                           \
    T *dK = p->dk ? (T *)p->dk + (b * p->Hkv + g) * Sk * D : NULL;                        \
    T *dV = p->dv ? (T *)p->dv + (b * p->Hkv + g) * Sk * D : NULL;                        \
    const unsigned char *km = p->km ? p->km + b * Sk : NULL;                              \
    bool need_ds = p->dq || p->dk;                                                        \
    bool par = rows_par && Tq * Sk >= PARALLEL_MIN;                                       \
    for (int64_t h = g * p->rep; h < (g + 1) * p->rep; h++) {                             \
      const T *Q = (const T *)p->q + b * p->qs[0] + h * p->qs[1];                         \
      const T *G = (const T *)p->go + b * p->gs[0] + h * p->gs[1];                        \
      const T *O = (const T *)p->o + (b * p->H + h) * Tq * D;                             \
      const double *L = p->lse + (b * p->H + h) * Tq;                                     \
      attn_gemm_##SUF(false, true, Tq, Sk, D, (T)p->scale, Q, p->qs[2], K, p->ks[2], 0, P, Sk); \
      if (par) {                                                                          \
        _Pragma("omp parallel for schedule(static)")                                      \
        for (int64_t t = 0; t < Tq; t++)                                                  \
          attn_row_probs_##SUF(P + t * Sk, attn_limit(p, t), Sk, km, L[t]);               \
      } else {                                                                            \
        for (int64_t t = 0; t < Tq; t++)                                                  \
          attn_row_probs_##SUF(P + t * Sk, attn_limit(p, t), Sk, km, L[t]);               \
      }                                                                                   \
      if (dV) attn_gemm_##SUF(true, false, Sk, D, Tq, 1, P, Sk, G, p->gs[2], 1, dV, D);        \
      if (!need_ds) continue;                                                             \
      attn_gemm_##SUF(false, true, Tq, Sk, D, 1, G, p->gs[2], V, p->vs[2], 0, dP, Sk);         \
      T sc = (T)p->scale;                                                                 \
      if (par) {                                                                          \
        _Pragma("omp parallel for schedule(static)")                                      \
        for (int64_t t = 0; t < Tq; t++)                                                  \
          attn_row_dscores_##SUF(dP + t * Sk, P + t * Sk, G + t * p->gs[2], O + t * D, Sk, D, sc); \
      } else {                                                                            \
        for (int64_t t = 0; t < Tq; t++)                                                  \
          attn_row_dscores_##SUF(dP + t * Sk, P + t * Sk, G + t * p->gs[2], O + t * D, Sk, D, sc); \
      }                                                                                   \
      if (p->dq) {                                                                        \
        T *dQ = (T *)p->dq + (b * p->H + h) * Tq * D;                                     \
        attn_gemm_##SUF(false, false, Tq, D, Sk, 1, dP, Sk, K, p->ks[2], 0, dQ, D);            \
      }                                                                                   \
      if (dK) attn_gemm_##SUF(true, false, Sk, D, Tq, 1, dP, Sk, Q, p->qs[2], 1, dK, D);       \
    }                                                                                     \
  }                                                                                       \
                                                                                          \
  static void attn_run_##SUF(const attn_plan *p, bool backward) {                         \
    typedef TY T;                                                                         \
    int64_t heads = backward ? p->Hkv : p->H, units = p->B * heads;                       \
    T *ws = (T *)p->ws;                                                                   \
    if (p->par_units) {                                                                   \
      _Pragma("omp parallel for schedule(static)")                                        \
      for (int64_t u = 0; u < units; u++) {                                               \
        T *buf = ws + (int64_t)omp_get_thread_num() * p->ws_len;                          \
        if (backward)                                                                     \
          attn_bwd_unit_##SUF(p, u / heads, u % heads, buf, false);                       \
        else                                                                              \
          attn_fwd_unit_##SUF(p, u / heads, u % heads, buf, false);                       \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t u = 0; u < units; u++) {                                               \
        if (backward)                                                                     \
          attn_bwd_unit_##SUF(p, u / heads, u % heads, ws, true);                         \
        else                                                                              \
          attn_fwd_unit_##SUF(p, u / heads, u % heads, ws, true);                         \
      }                                                                                   \
    }                                                                                     \
  }

static void dgemm_blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A, int64_t lda,
                       const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
              alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

ATTN_KERNELS(f32, float, gemm_f32)
ATTN_KERNELS(f64, double, dgemm_blas)

/* ---- plumbing ------------------------------------------------------------- */

/* x (..,R,C) as gemm rows: x itself when each (b,h) slice has unit stride
 * along C and rows at least C apart, else a contiguous copy. *ld gets the
 * row stride, s[0], s[1] the batch and head strides. NULL on OOM. */
static eng_tensor *attn_operand(eng_tensor *x, int64_t s[3]) {
  int64_t R = x->shape[2], C = x->shape[3], minld = C > 1 ? C : 1;
  bool inner = x->stride[3] == 1 || C <= 1;
  int64_t ld = R <= 1 ? minld : x->stride[2];
  eng_tensor *r;
  if (inner && ld >= minld) {
    r = eng_tensor_retain(x);
  } else {
    r = tensor_new_like(x);
    if (!r) return NULL;
    eng_copy_(r, x);
    ld = minld;
  }
  s[0] = r->stride[0];
  s[1] = r->stride[1];
  s[2] = ld;
  return r;
}

/* workspace for elems_per_unit per thread; decides the threading */
static int attn_workspace(attn_plan *p, int64_t units, int64_t elems_per_unit, size_t es) {
  int nt = omp_get_max_threads();
  p->par_units = nt > 1 && units >= nt;
  int nbuf = p->par_units ? nt : 1;
  p->ws_len = elems_per_unit;
  p->ws_bytes = (size_t)nbuf * (size_t)elems_per_unit * es;
  p->ws = pool_alloc(p->ws_bytes);
  if (!p->ws)
    return eng_errorf_status("attention: out of memory for %d score workspaces of %lld elements", nbuf,
                             (long long)elems_per_unit);
  return 0;
}

static void attn_run(const attn_plan *p, eng_dtype dt, bool backward) {
  if (dt == ENG_DTYPE_F64)
    attn_run_f64(p, backward);
  else
    attn_run_f32(p, backward);
}

/* d/dq, d/dk, d/dv as above; saved[0] the output O, saved[1] the logsumexp,
 * extra the (B,S) visibility bytes (NULL without a mask) */
static int attention_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *q = n->inputs[0], *k = n->inputs[1], *v = n->inputs[2];
  eng_tensor *O = n->saved[0], *L = n->saved[1];
  attn_plan p = {.B = q->shape[0], .H = q->shape[1], .Hkv = k->shape[1], .Tq = q->shape[2],
                 .Sk = k->shape[2], .D = q->shape[3], .scale = n->dparams[0],
                 .causal = n->iparams[0] != 0, .km = n->extra};
  p.rep = p.H / p.Hkv;
  eng_tensor *qc = attn_operand(q, p.qs), *kc = attn_operand(k, p.ks), *vc = attn_operand(v, p.vs);
  eng_tensor *gc = attn_operand(g, p.gs);
  eng_tensor *dq = q->requires_grad ? tensor_new_like(q) : NULL;
  eng_tensor *dk = k->requires_grad ? eng_zeros(k->dtype, 4, k->shape) : NULL;
  eng_tensor *dv = v->requires_grad ? eng_zeros(v->dtype, 4, v->shape) : NULL;
  int rc = -1;
  if (!qc || !kc || !vc || !gc || (q->requires_grad && !dq) || (k->requires_grad && !dk) ||
      (v->requires_grad && !dv))
    goto done;
  p.q = tensor_ptr(qc);
  p.k = tensor_ptr(kc);
  p.v = tensor_ptr(vc);
  p.go = tensor_ptr(gc);
  p.o = tensor_ptr(O);
  p.lse = tensor_ptr(L);
  p.dq = dq ? tensor_ptr(dq) : NULL;
  p.dk = dk ? tensor_ptr(dk) : NULL;
  p.dv = dv ? tensor_ptr(dv) : NULL;
  size_t es = dtype_size(q->dtype);
  if (attn_workspace(&p, p.B * p.Hkv, 2 * p.Tq * p.Sk, es)) goto done;
  attn_run(&p, q->dtype, true);
  pool_free(p.ws, p.ws_bytes);
  gin[0] = dq;
  gin[1] = dk;
  gin[2] = dv;
  dq = dk = dv = NULL;
  rc = 0;
done:
  eng_tensor_release(qc);
  eng_tensor_release(kc);
  eng_tensor_release(vc);
  eng_tensor_release(gc);
  eng_tensor_release(dq);
  eng_tensor_release(dk);
  eng_tensor_release(dv);
  return rc;
}

static int attn_check(eng_tensor *q, eng_tensor *k, eng_tensor *v, eng_tensor *key_mask) {
  if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4)
    return eng_errorf_status("attention: q is %s, k is %s, v is %s: expected q (B,H,T,D) and k, v "
                             "(B,Hkv,S,D)",
                             shp(q), shp(k), shp(v));
  if (check_float_same_dtype("attention", q, k) || check_float_same_dtype("attention", q, v)) return -1;
  if (memcmp(k->shape, v->shape, sizeof(int64_t) * 4) != 0)
    return eng_errorf_status("attention: k is %s but v is %s: they must have the same shape", shp(k),
                             shp(v));
  if (q->shape[0] != k->shape[0])
    return eng_errorf_status("attention: q is %s, k is %s: batch sizes differ", shp(q), shp(k));
  if (q->shape[3] != k->shape[3])
    return eng_errorf_status("attention: q is %s, k is %s: head dims differ", shp(q), shp(k));
  if (k->shape[1] < 1 || q->shape[1] % k->shape[1] != 0)
    return eng_errorf_status("attention: q is %s, k is %s: the %lld query heads must be a multiple "
                             "of the %lld kv heads",
                             shp(q), shp(k), (long long)q->shape[1], (long long)k->shape[1]);
  if (key_mask && (key_mask->ndim != 2 || key_mask->shape[0] != k->shape[0] ||
                   key_mask->shape[1] != k->shape[2]))
    return eng_errorf_status("attention: key_mask is %s, expected (B,S) = [%lld,%lld]", shp(key_mask),
                             (long long)k->shape[0], (long long)k->shape[2]);
  return 0;
}

/* q (B,H,T,D), k, v (B,Hkv,S,D), key_mask (B,S) or NULL -> (B,H,T,D):
 * out[b,h,t] = Σ_s softmax_s(scale·q[b,h,t]·k[b,g,s] over visible s)·v[b,g,s]
 * with g = h / (H/Hkv); rows with no visible key are 0 */
eng_tensor *eng_attention(eng_tensor *q, eng_tensor *k, eng_tensor *v, eng_tensor *key_mask, bool causal,
                          double scale) {
  if (attn_check(q, k, v, key_mask)) return NULL;
  attn_plan p = {.B = q->shape[0], .H = q->shape[1], .Hkv = k->shape[1], .Tq = q->shape[2],
                 .Sk = k->shape[2], .D = q->shape[3], .causal = causal};
  p.rep = p.H / p.Hkv;
  p.scale = scale > 0 ? scale : (p.D > 0 ? 1.0 / sqrt((double)p.D) : 1.0);
  unsigned char *km = NULL;
  if (key_mask) {
    int64_t nm = p.B * p.Sk;
    km = malloc((size_t)(nm ? nm : 1));
    if (!km) return eng_errorf("attention: out of memory");
    for (int64_t i = 0; i < nm; i++) km[i] = eng_tensor_get_flat(key_mask, i) != 0;
  }
  p.km = km;
  int64_t lshape[3] = {p.B, p.H, p.Tq};
  eng_tensor *qc = attn_operand(q, p.qs), *kc = attn_operand(k, p.ks), *vc = attn_operand(v, p.vs);
  eng_tensor *out = tensor_new_like(q), *lse = tensor_new(ENG_DTYPE_F64, 3, lshape);
  eng_tensor *result = NULL;
  if (!qc || !kc || !vc || !out || !lse) goto done;
  p.q = tensor_ptr(qc);
  p.k = tensor_ptr(kc);
  p.v = tensor_ptr(vc);
  p.o = tensor_ptr(out);
  p.lse = tensor_ptr(lse);
  size_t es = dtype_size(q->dtype);
  if (attn_workspace(&p, p.B * p.H, p.Tq * p.Sk, es)) goto done;
  attn_run(&p, q->dtype, false);
  pool_free(p.ws, p.ws_bytes);
  eng_tensor *in[3] = {q, k, v};
  eng_node *n = node_attach(out, "attention", attention_backward, 3, in);
  if (n) {
    node_save(n, 0, out);
    node_save(n, 1, lse);
    n->dparams[0] = p.scale;
    n->iparams[0] = causal;
    n->extra = km;
    km = NULL;
  }
  result = out;
  out = NULL;
done:
  free(km);
  eng_tensor_release(qc);
  eng_tensor_release(kc);
  eng_tensor_release(vc);
  eng_tensor_release(out);
  eng_tensor_release(lse);
  return result;
}
