/* ops_matmul.c — eng_matmul and its backward: batched, broadcasting matrix
 * products through gemm_f32 (gemm_f32.c: the engine's AVX-512 kernel, or
 * OpenBLAS's cblas_sgemm) for float32 and cblas_dgemm for float64.
 *
 * How an operand reaches BLAS: the last two dims of each operand are read in
 * place, as a row-major matrix with a leading dim (CblasNoTrans) or as a
 * transposed one (strides (1, ld): CblasTrans). Only an operand whose last two
 * dims fit neither (e.g. an expanded or doubly strided view) is copied to a
 * contiguous buffer first. Batch dims may have any strides, broadcast ones
 * included. When b is one matrix for every batch entry (2-D, or broadcast) and
 * a's leading dims fold into its row dim, the whole product is ONE gemm with
 * M' = prod(batch)·M: the (B,T,C)·(C,OC) case of every linear layer. Many
 * small products are spread over OpenMP threads, one gemm per thread (BLAS
 * then runs single-threaded inside the parallel region).
 *
 * A float32 product of at most MATMUL_SMALL_MAX_M rows (after folding) goes
 * to matmul_small.c instead of sgemm: the decode step of generation (a few
 * rows times a weight, or attention's q·kᵀ and p·v per head), where sgemm
 * would spend most of its time packing b, once per call.
 * The forward takes that path with or without grad, so a product has the
 * same value in training and in evaluation; the products matmul_backward
 * computes always go to gemm_f32, so gradients are what they were.
 *
 * Not here: vector-specific BLAS calls (gemv, dot; gemm covers them), integer
 * types, and outputs written into caller-provided buffers. */
#include "internal.h"
#include "matmul_small.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

/* below this many multiply-adds per gemm, a batch is split across threads
 * rather than each gemm across threads */
#define SMALL_GEMM_MNK ((double)(1 << 24))

/* how BLAS reads one matrix */
typedef struct {
  bool trans;
  int64_t ld;
} blas_mat;

/* one operand seen as a stack of matrices over the output's batch dims */
typedef struct {
  char *base;                    /* element (0, ..., 0) */
  int64_t bstride[ENG_MAX_DIMS]; /* per output batch dim, elements; 0 = broadcast */
  int64_t rows, cols, rs, cs;    /* the matrix and its strides (elements) */
} operand;

/* A rows×cols matrix with strides (rs, cs) is row-major with leading dim rs
 * (no transpose) when cs == 1, or the transpose of a row-major cols×rows one
 * with leading dim cs when rs == 1. Strides of size-1 dims do not matter.
 * false when neither layout fits. */
static bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, blas_mat *m) {
  int64_t need_n = cols > 1 ? cols : 1, need_t = rows > 1 ? rows : 1;
  if (cols <= 1 || cs == 1) {
    int64_t ld = rows <= 1 ? need_n : rs;
    if (ld >= need_n) {
      m->trans = false;
      m->ld = ld;
      return true;
    }
  }
  if (rows <= 1 || rs == 1) {
    int64_t ld = cols <= 1 ? need_t : cs;
    if (ld >= need_t) {
      m->trans = true;
      m->ld = ld;
      return true;
    }
  }
  return false;
}

/* dims (sizes n, strides s), outermost first, folded into one dim of size *R
 * and stride *st when they form a single strided sequence */
static bool fold_dims(int k, const int64_t *n, const int64_t *s, int64_t *R, int64_t *st) {
  int64_t total = 1, in_size = 0, in_stride = 0, first = 0;
  bool have = false;
  for (int d = k - 1; d >= 0; d--) {
    total *= n[d];
    if (n[d] == 1) continue;
    if (have && s[d] != in_stride * in_size) return false;
    if (!have) first = s[d];
    have = true;
    in_size = n[d];
    in_stride = s[d];
  }
  *R = total;
  *st = first;
  return true;
}

/* t as a matrix stack: 1-D a is (1,K), 1-D b is (K,1) */
static void matrix_dims(const eng_tensor *t, bool is_a, int64_t *rows, int64_t *cols, int64_t *rs,
                        int64_t *cs) {
  int nd = t->ndim;
  if (nd >= 2) {
    *rows = t->shape[nd - 2];
    *cols = t->shape[nd - 1];
    *rs = t->stride[nd - 2];
    *cs = t->stride[nd - 1];
  } else if (is_a) {
    *rows = 1;
    *cols = t->shape[0];
    *cs = t->stride[0];
    *rs = *cols * *cs;
  } else {
    *rows = t->shape[0];
    *cols = 1;
    *rs = t->stride[0];
    *cs = 1;
  }
}

static bool blas_readable(const eng_tensor *t, bool is_a) {
  int64_t r, c, rs, cs;
  blas_mat m;
  matrix_dims(t, is_a, &r, &c, &rs, &cs);
  return blas_layout(r, c, rs, cs, &m);
}

static void operand_init(operand *o, eng_tensor *t, bool is_a, int nbo, const int64_t *bshape) {
  o->base = tensor_ptr(t);
  matrix_dims(t, is_a, &o->rows, &o->cols, &o->rs, &o->cs);
  int tb = t->ndim > 2 ? t->ndim - 2 : 0;
  for (int i = 0; i < nbo; i++) {
    int it = tb - nbo + i;
    o->bstride[i] = (it >= 0 && t->shape[it] != 1 && bshape[i] != 1) ? t->stride[it] : 0;
  }
}

static void gemm(eng_dtype dt, blas_mat la, blas_mat lb, int64_t M, int64_t N, int64_t K, const char *A,
                 const char *B, char *C, int64_t ldc) {
  enum CBLAS_TRANSPOSE ta = la.trans ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE tb = lb.trans ? CblasTrans : CblasNoTrans;
  if (dt == ENG_DTYPE_F64)
    cblas_dgemm(CblasRowMajor, ta, tb, (blasint)M, (blasint)N, (blasint)K, 1.0, (const double *)A,
                (blasint)la.ld, (const double *)B, (blasint)lb.ld, 0.0, (double *)C, (blasint)ldc);
  else
    gemm_f32(la.trans, lb.trans, M, N, K, 1.0f, (const float *)A, la.ld, (const float *)B, lb.ld, 0.0f, (float *)C,
             ldc);
}

static bool fits_int(int64_t v) { return v <= INT_MAX; }

/* > 0 while matmul_backward runs on this thread: its products stay on BLAS */
static _Thread_local int in_backward;

/* C (R,N) = A·B by matmul_small.c: A (R,K) read through la (packed to
 * row-major first when stored transposed), B (K,N) through lb. -1 on OOM. */
static int small_run(blas_mat la, blas_mat lb, int64_t R, int64_t N, int64_t K, const char *A,
                     const char *B, char *C) {
  const float *a = (const float *)A;
  float *packed = NULL;
  int64_t lda = la.ld;
  size_t nbytes = (size_t)(R * K) * sizeof(float);
  if (la.trans) { /* element (m,k) at A[k*ld + m] */
    packed = pool_alloc(nbytes);
    if (!packed) return eng_errorf_status("matmul: out of memory packing a (%lld bytes)", (long long)nbytes);
    for (int64_t m = 0; m < R; m++)
      for (int64_t k = 0; k < K; k++) packed[m * K + k] = a[k * la.ld + m];
    a = packed;
    lda = K;
  }
  matmul_small_f32(R, N, K, a, lda, (const float *)B, lb.ld, lb.trans, (float *)C, N);
  if (packed) pool_free(packed, nbytes);
  return 0;
}

/* element offsets of batch entry i (row-major over bshape) in A and B */
static void batch_offsets(int64_t i, int nbo, const int64_t *bshape, const operand *A, const operand *B,
                          int64_t *oa, int64_t *ob) {
  int64_t rem = i;
  *oa = *ob = 0;
  for (int d = nbo - 1; d >= 0; d--) {
    int64_t k = rem % bshape[d];
    rem /= bshape[d];
    *oa += k * A->bstride[d];
    *ob += k * B->bstride[d];
  }
}

/* C (batch..., M, N), contiguous <- A·B over the broadcast batch dims.
 * Both operands' matrices are BLAS-readable (checked by the caller). */
static int matmul_run(eng_dtype dt, const operand *A, const operand *B, int nbo, const int64_t *bshape,
                      char *C, const eng_tensor *a, const eng_tensor *b) {
  int64_t M = A->rows, K = A->cols, N = B->cols, count = 1;
  for (int i = 0; i < nbo; i++) count *= bshape[i];
  size_t es = dtype_size(dt);
  if (count == 0 || M == 0 || N == 0) return 0;
  if (K == 0) {
    memset(C, 0, (size_t)(count * M * N) * es);
    return 0;
  }
  blas_mat la, lb;
  blas_layout(K, N, B->rs, B->cs, &lb);
  /* one gemm when b is the same matrix for every batch entry and a's batch
   * dims fold into its rows */
  bool b_const = true;
  for (int i = 0; i < nbo; i++)
    if (bshape[i] > 1 && B->bstride[i] != 0) b_const = false;
  if (b_const) {
    int64_t n[ENG_MAX_DIMS + 1], s[ENG_MAX_DIMS + 1], R, rs;
    for (int i = 0; i < nbo; i++) {
      n[i] = bshape[i];
      s[i] = A->bstride[i];
    }
    n[nbo] = M;
    s[nbo] = A->rs;
    if (fold_dims(nbo + 1, n, s, &R, &rs) && blas_layout(R, K, rs, A->cs, &la)) {
      if (dt == ENG_DTYPE_F32 && R <= MATMUL_SMALL_MAX_M && !in_backward)
        return small_run(la, lb, R, N, K, A->base, B->base, C);
      if (!fits_int(R) || !fits_int(N) || !fits_int(K) || !fits_int(la.ld) || !fits_int(lb.ld))
        return eng_errorf_status("matmul: a is %s, b is %s: too large for BLAS (a dim over 2^31)", shp(a),
                                 shp(b));
      gemm(dt, la, lb, R, N, K, A->base, B->base, C, N);
      return 0;
    }
  }
  blas_layout(M, K, A->rs, A->cs, &la);
  if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(la.ld) || !fits_int(lb.ld))
    return eng_errorf_status("matmul: a is %s, b is %s: too large for BLAS (a dim over 2^31)", shp(a),
                             shp(b));
  /* a few rows per product (the decode step's q·kᵀ and p·v): the small
   * kernel, one product per thread */
  bool small = dt == ENG_DTYPE_F32 && M <= MATMUL_SMALL_MAX_M && !la.trans && !in_backward;
  double mnk = (double)M * (double)N * (double)K;
  int nt = omp_get_max_threads();
  bool par = nt > 1 && count >= 2 * nt &&
             (small ? mnk * (double)count >= MATMUL_SMALL_PAR_MIN : mnk <= SMALL_GEMM_MNK);
  if (small && !par) { /* no parallel region: even an inactive one costs a few µs */
    for (int64_t i = 0; i < count; i++) {
      int64_t oa, ob;
      batch_offsets(i, nbo, bshape, A, B, &oa, &ob);
      matmul_small_f32(M, N, K, (const float *)A->base + oa, la.ld, (const float *)B->base + ob, lb.ld,
                       lb.trans, (float *)C + i * M * N, N);
    }
    return 0;
  }
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < count; i++) {
    int64_t oa, ob;
    batch_offsets(i, nbo, bshape, A, B, &oa, &ob);
    const char *pa = A->base + (size_t)oa * es, *pb = B->base + (size_t)ob * es;
    char *pc = C + (size_t)(i * M * N) * es;
    if (small)
      matmul_small_f32(M, N, K, (const float *)pa, la.ld, (const float *)pb, lb.ld, lb.trans, (float *)pc, N);
    else
      gemm(dt, la, lb, M, N, K, pa, pb, pc, N);
  }
  return 0;
}


/* ---- backward helpers: views (view_fold copies only when it must) ------- */

/* t with a size-1 dim inserted before position d (a view) */
static eng_tensor *view_unsqueeze(eng_tensor *t, int d) {
  int64_t sh[ENG_MAX_DIMS], st[ENG_MAX_DIMS];
  for (int i = 0, j = 0; i <= t->ndim; i++) {
    if (i == d) {
      sh[i] = 1;
      st[i] = d < t->ndim ? t->stride[d] * t->shape[d] : 1;
    } else {
      sh[i] = t->shape[j];
      st[i] = t->stride[j];
      j++;
    }
  }
  return tensor_view(t, t->ndim + 1, sh, st, t->offset);
}

/* t (size 1 at dim d) without that dim (a view) */
static eng_tensor *view_squeeze(eng_tensor *t, int d) {
  int64_t sh[ENG_MAX_DIMS], st[ENG_MAX_DIMS];
  for (int i = 0, j = 0; i < t->ndim; i++) {
    if (i == d) continue;
    sh[j] = t->shape[i];
    st[j] = t->stride[i];
    j++;
  }
  return tensor_view(t, t->ndim - 1, sh, st, t->offset);
}

/* t (..., R, C) as one (prod(...)·R, C) matrix: a view when the leading dims
 * fold, else a contiguous copy */
static eng_tensor *view_fold(eng_tensor *t) {
  int nd = t->ndim;
  int64_t R, rs;
  if (fold_dims(nd - 1, t->shape, t->stride, &R, &rs)) {
    int64_t sh[2] = {R, t->shape[nd - 1]}, st[2] = {rs, t->stride[nd - 1]};
    return tensor_view(t, 2, sh, st, t->offset);
  }
  eng_tensor *c = plain_copy(t);
  if (!c) return NULL;
  eng_tensor *v = view_fold(c);
  eng_tensor_release(c);
  return v;
}

/* the 1-D operands promoted as in the forward: a (K) -> (1,K), b (K) -> (K,1),
 * and the output grad with those dims put back */
static eng_tensor *promote(eng_tensor *t, bool is_a) {
  if (t->ndim >= 2) return eng_tensor_retain(t);
  return view_unsqueeze(t, is_a ? 0 : 1);
}

static eng_tensor *promote_grad(eng_tensor *g, bool a_vec, bool b_vec) {
  eng_tensor *cur = eng_tensor_retain(g);
  if (a_vec) {
    eng_tensor *v = view_unsqueeze(cur, b_vec ? cur->ndim : cur->ndim - 1);
    eng_tensor_release(cur);
    if (!v) return NULL;
    cur = v;
  }
  if (b_vec) {
    eng_tensor *v = view_unsqueeze(cur, cur->ndim);
    eng_tensor_release(cur);
    cur = v;
  }
  return cur;
}

/* d reduced to the promoted input's shape, then to the input's own shape */
static eng_tensor *to_input_shape(eng_tensor *d, const eng_tensor *promoted, const eng_tensor *in,
                                  bool is_a) {
  if (!d) return NULL;
  eng_tensor *s = sum_to_shape(d, promoted->ndim, promoted->shape);
  eng_tensor_release(d);
  if (!s || in->ndim >= 2) return s;
  eng_tensor *v = view_squeeze(s, is_a ? 0 : 1);
  eng_tensor_release(s);
  return v;
}

/* out = a·b, with a, b promoted to (...,M,K), (...,K,N) and g to (...,M,N):
 *   dA = g·Bᵀ   summed over a's broadcast batch dims
 *   dB = Aᵀ·g   summed over b's broadcast batch dims
 * Transposes are views (BLAS flags). When b is one matrix and a is batched,
 * dB is one gemm: fold(A)ᵀ (K, B·M) · fold(g) (B·M, N). */
static int matmul_backward_blas(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *a = n->inputs[0], *b = n->inputs[1];
  bool a_vec = a->ndim == 1, b_vec = b->ndim == 1;
  eng_tensor *pa = promote(a, true), *pb = promote(b, false), *pg = promote_grad(g, a_vec, b_vec);
  int rc = (pa && pb && pg) ? 0 : -1;
  if (rc == 0 && a->requires_grad) {
    eng_tensor *bt = eng_transpose(pb, -2, -1);
    eng_tensor *d = bt ? eng_matmul(pg, bt) : NULL;
    eng_tensor_release(bt);
    gin[0] = to_input_shape(d, pa, a, true);
    if (!gin[0]) rc = -1;
  }
  if (rc == 0 && b->requires_grad) {
    eng_tensor *d = NULL;
    /* b a transposed view of a contiguous (N,K) matrix (a Linear weight):
     * compute dbᵀ = gᵀ·a, contiguous in the weight's own layout, and hand
     * back its transpose view, so the weight's grad needs no strided copy */
    bool b_transposed = pb->ndim == 2 && pb->shape[0] > 1 && pb->shape[1] > 1 && pb->stride[0] == 1 &&
                        pb->stride[1] == pb->shape[0];
    if (b_transposed) {
      eng_tensor *a2 = view_fold(pa), *g2 = view_fold(pg);
      eng_tensor *gt = g2 ? eng_transpose(g2, -2, -1) : NULL;
      eng_tensor *dt = (gt && a2) ? eng_matmul(gt, a2) : NULL;
      d = dt ? eng_transpose(dt, -2, -1) : NULL;
      eng_tensor_release(a2);
      eng_tensor_release(g2);
      eng_tensor_release(gt);
      eng_tensor_release(dt);
    } else if (pb->ndim == 2 && pa->ndim > 2) {
      eng_tensor *a2 = view_fold(pa), *g2 = view_fold(pg);
      eng_tensor *at = a2 ? eng_transpose(a2, -2, -1) : NULL;
      d = (at && g2) ? eng_matmul(at, g2) : NULL;
      eng_tensor_release(a2);
      eng_tensor_release(g2);
      eng_tensor_release(at);
    } else {
      eng_tensor *at = eng_transpose(pa, -2, -1);
      d = at ? eng_matmul(at, pg) : NULL;
      eng_tensor_release(at);
    }
    gin[1] = to_input_shape(d, pb, b, false);
    if (!gin[1]) rc = -1;
  }
  eng_tensor_release(pa);
  eng_tensor_release(pb);
  eng_tensor_release(pg);
  return rc;
}

/* the backward above, with every product it makes kept on BLAS */
static int matmul_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  in_backward++;
  int rc = matmul_backward_blas(n, g, gin);
  in_backward--;
  return rc;
}

/* a (...,M,K) · b (...,K,N) -> (...,M,N), batch dims broadcast; a (K) acts as
 * (1,K) and b (K) as (K,1), the added dim dropped from the result (numpy). */
eng_tensor *eng_matmul(eng_tensor *a, eng_tensor *b) {
  if (check_float_same_dtype("matmul", a, b)) return NULL;
  if (a->ndim == 0 || b->ndim == 0)
    return eng_errorf("matmul: a is %s, b is %s: both operands need at least one dim", shp(a), shp(b));
  int64_t K = a->shape[a->ndim - 1], Kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
  if (K != Kb) return eng_errorf("matmul: a is %s, b is %s: inner dims differ", shp(a), shp(b));
  int na = a->ndim > 2 ? a->ndim - 2 : 0, nb = b->ndim > 2 ? b->ndim - 2 : 0;
  int nbo = na > nb ? na : nb;
  int64_t shape[ENG_MAX_DIMS];
  for (int i = 0; i < nbo; i++) {
    int ia = na - nbo + i, ib = nb - nbo + i;
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return eng_errorf("matmul: a is %s, b is %s: batch dims do not broadcast", shp(a), shp(b));
    shape[i] = da == 1 ? db : da;
  }
  int nd = nbo;
  if (a->ndim >= 2) shape[nd++] = a->shape[a->ndim - 2];
  if (b->ndim >= 2) shape[nd++] = b->shape[b->ndim - 1];
  eng_tensor *out = tensor_new(a->dtype, nd, shape);
  if (!out) return NULL;
  eng_tensor *ac = blas_readable(a, true) ? eng_tensor_retain(a) : plain_copy(a);
  eng_tensor *bc = blas_readable(b, false) ? eng_tensor_retain(b) : plain_copy(b);
  int rc = -1;
  if (ac && bc) {
    operand A, B;
    operand_init(&A, ac, true, nbo, shape);
    operand_init(&B, bc, false, nbo, shape);
    rc = matmul_run(a->dtype, &A, &B, nbo, shape, tensor_ptr(out), a, b);
  }
  eng_tensor_release(ac);
  eng_tensor_release(bc);
  if (rc) {
    eng_tensor_release(out);
    return NULL;
  }
  eng_tensor *in[2] = {a, b};
  node_attach(out, "matmul", matmul_backward, 2, in);
  return out;
}
