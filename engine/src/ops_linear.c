/* ops_linear.c — eng_linear (engine_linear.h) and its backward, side by side:
 *   y = x·op(W) + b     x (...,K), op(W) (K,N), b (N) or none -> y (...,N)
 * with op(W) = W for W (K,N) (GPT-2's Conv1D) or Wᵀ for W (N,K) (torch's
 * Linear, transpose_w). One graph node, whose inputs x, W, b are all it
 * keeps: the output is never held for the backward (which needs only x, W
 * and g), and there is no pre-bias product at all.
 *
 * Forward: x's leading dims fold into the rows of one (M,K) matrix; ONE
 * gemm writes x·op(W) into y (float32 through gemm_f32.c, float64 through
 * cblas_dgemm), then b is added to each row in place: the same operations
 * in the same order as eng_matmul then eng_add, so the values are those of
 * the two-op path bit for bit (models and recipes give the results they gave
 * before this op existed; writing b first and accumulating with beta = 1
 * saved no measurable time). A float32 product of at most MATMUL_SMALL_MAX_M
 * rows goes to matmul_small.c instead, as in eng_matmul (the decode step of
 * generation, where gemm would spend its time packing W; the forward takes
 * that path with or without grad, so training and evaluation agree).
 *
 * Operands are read in place when BLAS can read them: a matrix with a
 * leading dim, either row-major or transposed (e.g. Wᵀ of a Linear's W, a
 * transposed view of W, a narrowed x); an operand that fits neither (an
 * expanded x, leading dims that do not fold, doubly strided W) is copied to
 * a contiguous buffer first.
 *
 * Backward, with G (M,N) the gradient of y and X (M,K):
 *   dX = G·op(W)ᵀ            one gemm
 *   dW = Xᵀ·G (or Gᵀ·X)      one gemm, computed in W's own memory layout
 *                            (a transposed view of W gets a transposed
 *                            view back), so a flat gradient block takes it
 *                            without a strided copy
 *   db = Σ_rows G            summed as eng_add's backward sums a broadcast
 *                            b (sum_to_shape), so every value and gradient
 *                            equals the two-op path's bit for bit
 * each only when its input requires grad. The backward's products always go
 * to gemm_f32 (never matmul_small.c), as eng_matmul's backward does.
 *
 * Not here: activations in the epilogue, a weight per batch entry (use
 * eng_matmul), integer types. */
#include "internal.h"
#include "engine_linear.h"
#include "matmul_small.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define OP "linear"

/* a matrix as BLAS reads it: element (i,j) at p[i·ld + j], or at p[j·ld + i]
 * when trans */
typedef struct {
  char *p;
  int64_t ld;
  bool trans;
} lin_mat;

/* the transpose of m: the same memory read the other way */
static lin_mat transposed(lin_mat m) {
  m.trans = !m.trans;
  return m;
}

/* A rows×cols matrix with strides (rs, cs) is row-major with leading dim rs
 * when cs == 1, or transposed with leading dim cs when rs == 1 (strides of
 * size-1 dims do not matter). false when neither fits BLAS (or the leading
 * dim is over 2^31). */
static bool mat_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, lin_mat *m) {
  int64_t need_n = cols > 1 ? cols : 1, need_t = rows > 1 ? rows : 1;
  if (cols <= 1 || cs == 1) {
    int64_t ld = rows <= 1 ? need_n : rs;
    if (ld >= need_n && ld <= INT_MAX) {
      m->trans = false;
      m->ld = ld;
      return true;
    }
  }
  if (rows <= 1 || rs == 1) {
    int64_t ld = cols <= 1 ? need_t : cs;
    if (ld >= need_t && ld <= INT_MAX) {
      m->trans = true;
      m->ld = ld;
      return true;
    }
  }
  return false;
}

/* the product of t's leading dims (all but the last) */
static int64_t lead_rows(const eng_tensor *t) {
  int64_t r = 1;
  for (int d = 0; d < t->ndim - 1; d++) r *= t->shape[d];
  return r;
}

/* t (...,C) as one (R,C) matrix read in place: false when its leading dims
 * do not fold into one strided dim or BLAS cannot read the result */
static bool as_matrix(eng_tensor *t, lin_mat *m) {
  int nd = t->ndim;
  int64_t in_size = 0, in_stride = 0, rs = 0;
  bool have = false;
  for (int d = nd - 2; d >= 0; d--) { /* innermost leading dim first */
    if (t->shape[d] == 1) continue;
    if (have && t->stride[d] != in_stride * in_size) return false;
    if (!have) rs = t->stride[d];
    have = true;
    in_size = t->shape[d];
    in_stride = t->stride[d];
  }
  m->p = tensor_ptr(t);
  return mat_layout(lead_rows(t), t->shape[nd - 1], rs, t->stride[nd - 1], m);
}

/* t as a matrix for BLAS: t itself (retained) when it reads in place, else
 * a contiguous copy; NULL on failure */
static eng_tensor *matrix_operand(eng_tensor *t, lin_mat *m) {
  if (as_matrix(t, m)) return eng_tensor_retain(t);
  eng_tensor *c = plain_copy(t);
  if (c) as_matrix(c, m);
  return c;
}

/* op(W) (K,N) for BLAS: W's storage read through its strides, swapped when
 * transpose_w; a contiguous copy of W when they do not fit */
static eng_tensor *weight_operand(eng_tensor *w, bool tw, lin_mat *m) {
  for (int pass = 0; pass < 2; pass++) {
    eng_tensor *c = pass ? plain_copy(w) : eng_tensor_retain(w);
    if (!c) return NULL;
    int64_t K = c->shape[tw ? 1 : 0], N = c->shape[tw ? 0 : 1];
    int64_t rs = c->stride[tw ? 1 : 0], cs = c->stride[tw ? 0 : 1];
    m->p = tensor_ptr(c);
    if (mat_layout(K, N, rs, cs, m)) return c;
    eng_tensor_release(c);
  }
  return eng_errorf(OP ": W is %s: cannot lay it out for BLAS", shp(w)); /* a copy always fits */
}

/* C (M,N) <- A·B + beta·C, row-major, A (M,K) and B (K,N) as lin_mats;
 * M, N, K >= 1 (checked to fit BLAS's int by the caller) */
static void gemm(eng_dtype dt, lin_mat a, lin_mat b, int64_t M, int64_t N, int64_t K, double beta, char *c,
                 int64_t ldc) {
  if (dt == ENG_DTYPE_F64)
    cblas_dgemm(CblasRowMajor, a.trans ? CblasTrans : CblasNoTrans, b.trans ? CblasTrans : CblasNoTrans,
                (blasint)M, (blasint)N, (blasint)K, 1.0, (const double *)a.p, (blasint)a.ld,
                (const double *)b.p, (blasint)b.ld, beta, (double *)c, (blasint)ldc);
  else
    gemm_f32(a.trans, b.trans, M, N, K, 1.0f, (const float *)a.p, a.ld, (const float *)b.p, b.ld, (float)beta,
             (float *)c, ldc);
}

/* ---- kernels: the bias into y's rows ------------------------------------------ */

#define LIN_KERNELS(SFX, TY)                                                                       \
  /* y (M,N) contiguous <- b broadcast over rows (add: y + b); b (N) with stride bs */             \
  static void bias_rows_##SFX(TY *y, const TY *b, int64_t bs, int64_t M, int64_t N, bool add) {    \
    _Pragma("omp parallel for schedule(static) if (M * N >= PARALLEL_MIN)")                        \
    for (int64_t i = 0; i < M; i++) {                                                              \
      TY *row = y + i * N;                                                                         \
      if (add) {                                                                                   \
        for (int64_t j = 0; j < N; j++) row[j] = row[j] + b[j * bs];                               \
      } else if (bs == 1) {                                                                        \
        memcpy(row, b, sizeof(TY) * (size_t)N);                                                    \
      } else {                                                                                     \
        for (int64_t j = 0; j < N; j++) row[j] = b[j * bs];                                        \
      }                                                                                            \
    }                                                                                              \
  }

LIN_KERNELS(f32, float)
LIN_KERNELS(f64, double)

static void bias_rows(eng_dtype dt, char *y, const eng_tensor *b, int64_t M, int64_t N, bool add) {
  if (dt == ENG_DTYPE_F64)
    bias_rows_f64((double *)y, (const double *)tensor_ptr(b), b->stride[0], M, N, add);
  else
    bias_rows_f32((float *)y, (const float *)tensor_ptr(b), b->stride[0], M, N, add);
}

/* ---- backward --------------------------------------------------------------- */

/* y = x·op(W) + b  =>  with G = dL/dy (M,N), X (M,K):
 *   dX = G·op(W)ᵀ,   d op(W) = Xᵀ·G (so dW = Xᵀ·G, or Gᵀ·X with transpose_w),   db = Σ_rows G
 * inputs x, W, and b when there is one; iparams[0] transpose_w. Nothing saved. */
static int linear_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0], *w = n->inputs[1], *b = n->ninputs > 2 ? n->inputs[2] : NULL;
  bool tw = n->iparams[0] != 0;
  eng_dtype dt = x->dtype;
  int64_t M = lead_rows(x), K = x->shape[x->ndim - 1], N = w->shape[tw ? 0 : 1];
  bool want_x = x->requires_grad, want_w = w->requires_grad, want_b = b && b->requires_grad;
  bool product = M > 0 && K > 0 && N > 0;
  lin_mat G, X, W;
  eng_tensor *gc = NULL, *xc = NULL, *wc = NULL, *dx = NULL, *dw = NULL, *dwt = NULL, *db = NULL;
  int rc = 0;
  if (M > 0 && N > 0 && (product || want_b)) {
    gc = matrix_operand(g, &G);
    if (!gc) rc = -1;
  }
  if (rc == 0 && want_x) {
    dx = product ? tensor_new(dt, x->ndim, x->shape) : eng_zeros(dt, x->ndim, x->shape);
    if (!dx || (product && !(wc = weight_operand(w, tw, &W)))) rc = -1;
    if (rc == 0 && product) gemm(dt, G, transposed(W), M, K, N, 0.0, tensor_ptr(dx), K);
  }
  if (rc == 0 && want_w) {
    /* W a transposed view of a contiguous matrix: compute dWᵀ contiguous and
     * hand back its transpose (W's layout) */
    bool wt = w->shape[0] > 1 && w->shape[1] > 1 && w->stride[0] == 1 && w->stride[1] == w->shape[0];
    int64_t ts[2] = {w->shape[wt ? 1 : 0], w->shape[wt ? 0 : 1]};
    dwt = product ? tensor_new(dt, 2, ts) : eng_zeros(dt, 2, ts);
    if (!dwt || (product && !(xc = matrix_operand(x, &X)))) rc = -1;
    if (rc == 0 && product) {
      /* the (K,N) gradient of op(W) stored as is, or its transpose (N,K) */
      if (tw == wt)
        gemm(dt, transposed(X), G, K, N, M, 0.0, tensor_ptr(dwt), N);
      else
        gemm(dt, transposed(G), X, N, K, M, 0.0, tensor_ptr(dwt), K);
    }
    if (rc == 0) {
      dw = wt ? tensor_view(dwt, 2, w->shape, (int64_t[]){1, w->shape[0]}, dwt->offset) : eng_tensor_retain(dwt);
      if (!dw) rc = -1;
    }
  }
  if (rc == 0 && want_b) {
    /* the reduction eng_add's backward makes of a broadcast b: the same bits */
    db = sum_to_shape(g, b->ndim, b->shape);
    if (!db) rc = -1;
  }
  eng_tensor_release(gc);
  eng_tensor_release(xc);
  eng_tensor_release(wc);
  eng_tensor_release(dwt);
  if (rc) {
    eng_tensor_release(dx);
    eng_tensor_release(dw);
    eng_tensor_release(db);
    return -1;
  }
  gin[0] = dx;
  gin[1] = dw;
  if (b) gin[2] = db;
  return 0;
}

/* ---- forward ---------------------------------------------------------------- */

static int check_args(eng_tensor *x, eng_tensor *w, eng_tensor *b, bool tw) {
  if (x->dtype != w->dtype)
    return eng_errorf_status(OP ": x is %s, W is %s: they must have the same dtype", eng_dtype_name(x->dtype),
                             eng_dtype_name(w->dtype));
  if (b && b->dtype != x->dtype)
    return eng_errorf_status(OP ": x is %s, b is %s: they must have the same dtype", eng_dtype_name(x->dtype),
                             eng_dtype_name(b->dtype));
  if (x->ndim < 1) return eng_errorf_status(OP ": x is %s: it needs a last dim (the in features)", shp(x));
  if (w->ndim != 2)
    return eng_errorf_status(OP ": W is %s: it must be 2-D, (in,out), or (out,in) with transpose_w", shp(w));
  int64_t K = x->shape[x->ndim - 1], N = w->shape[tw ? 0 : 1];
  if (w->shape[tw ? 1 : 0] != K)
    return eng_errorf_status(OP ": x is %s, W is %s: in features differ (W is %s)", shp(x), shp(w),
                             tw ? "(out,in) with transpose_w" : "(in,out)");
  if (b && (b->ndim != 1 || b->shape[0] != N))
    return eng_errorf_status(OP ": W is %s, b is %s: b must be [%lld], the out features", shp(w), shp(b),
                             (long long)N);
  int64_t M = lead_rows(x);
  if (M > INT_MAX || K > INT_MAX || N > INT_MAX)
    return eng_errorf_status(OP ": x is %s, W is %s: too large for BLAS (a dim over 2^31)", shp(x), shp(w));
  return 0;
}

/* y (M,N) contiguous <- x·op(W) + b */
static int linear_forward(eng_tensor *y, eng_tensor *x, eng_tensor *w, eng_tensor *b, bool tw) {
  eng_dtype dt = x->dtype;
  int64_t M = lead_rows(x), K = x->shape[x->ndim - 1], N = y->shape[y->ndim - 1];
  char *yp = tensor_ptr(y);
  if (M == 0 || N == 0) return 0;
  if (K == 0) { /* an empty product: y = b, or 0 */
    if (b) bias_rows(dt, yp, b, M, N, false);
    else memset(yp, 0, (size_t)(M * N) * dtype_size(dt));
    return 0;
  }
  lin_mat X, W;
  eng_tensor *wc = weight_operand(w, tw, &W), *xc = wc ? matrix_operand(x, &X) : NULL;
  if (!xc) {
    eng_tensor_release(wc);
    return -1;
  }
  if (dt == ENG_DTYPE_F32 && M <= MATMUL_SMALL_MAX_M) {
    if (X.trans) { /* the small kernel reads x row-major */
      eng_tensor *c = plain_copy(xc);
      eng_tensor_release(xc);
      xc = c;
      if (!xc) {
        eng_tensor_release(wc);
        return -1;
      }
      as_matrix(xc, &X);
    }
    matmul_small_f32(M, N, K, (const float *)X.p, X.ld, (const float *)W.p, W.ld, W.trans, (float *)yp, N);
    if (b) bias_rows(dt, yp, b, M, N, true);
  } else {
    gemm(dt, X, W, M, N, K, 0.0, yp, N);
    if (b) bias_rows(dt, yp, b, M, N, true);
  }
  eng_tensor_release(xc);
  eng_tensor_release(wc);
  return 0;
}

/* x (...,K), W (K,N) or (N,K) with transpose_w, b (N) or NULL -> (...,N) */
eng_tensor *eng_linear(eng_tensor *x, eng_tensor *w, eng_tensor *b, bool transpose_w) {
  if (check_args(x, w, b, transpose_w)) return NULL;
  int64_t shape[ENG_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = w->shape[transpose_w ? 0 : 1];
  eng_tensor *y = tensor_new(x->dtype, x->ndim, shape);
  if (!y) return NULL;
  if (linear_forward(y, x, w, b, transpose_w)) {
    eng_tensor_release(y);
    return NULL;
  }
  eng_tensor *in[3] = {x, w, b};
  eng_node *n = node_attach(y, OP, linear_backward, b ? 3 : 2, in);
  if (n) n->iparams[0] = transpose_w;
  return y;
}
