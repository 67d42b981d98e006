/* test_matmul.c — eng_matmul: values against hand results and a naive loop
 * (float32 and float64), numpy's 1-D rules, batch broadcasting, transposed
 * and strided operands (read in place, not copied), the one-gemm fold of
 * (B,T,C)·(C,OC), empty dims, exact error messages, and float64 gradient
 * checks of every case. The few-rows float32 kernel (matmul_small.c):
 * against cblas_sgemm and a float64 loop over row counts, both weight
 * layouts and ragged sizes, bit-identical run to run and across thread
 * counts, reached through eng_matmul (folded, batched, transposed a), and
 * gradients of such a product bit-identical to the BLAS ones. */
#include "check.h"
#include "internal.h"
#include "matmul_small.h"

#include <cblas.h>

/* ---- helpers ------------------------------------------------------------- */

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  return t;
}

/* a leaf of logical shape (..., R, C) whose last two dims are stored
 * transposed: strides (..., 1, R) */
static eng_tensor *transposed_leaf(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape) {
  int64_t sh[ENG_MAX_DIMS], st[ENG_MAX_DIMS];
  memcpy(sh, shape, sizeof(int64_t) * (size_t)nd);
  sh[nd - 2] = shape[nd - 1];
  sh[nd - 1] = shape[nd - 2];
  eng_tensor *base = randn(dt, seed, nd, sh);
  memcpy(st, eng_tensor_strides(base), sizeof(int64_t) * (size_t)nd);
  int64_t s2 = st[nd - 2];
  st[nd - 2] = st[nd - 1];
  st[nd - 1] = s2;
  eng_tensor *v = tensor_view(base, nd, shape, st, 0);
  eng_tensor_release(base);
  eng_set_requires_grad(v, true);
  return v;
}

/* a leaf (R, C) cut from every other column of an (R, 2C) block: strides (2C, 2) */
static eng_tensor *strided_leaf(eng_dtype dt, uint64_t seed, int64_t R, int64_t C) {
  int64_t big[2] = {R, 2 * C}, sh[2] = {R, C}, st[2] = {2 * C, 2};
  eng_tensor *base = randn(dt, seed, 2, big);
  eng_tensor *v = tensor_view(base, 2, sh, st, 1);
  eng_tensor_release(base);
  eng_set_requires_grad(v, true);
  return v;
}

static eng_tensor *leaf(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape) {
  eng_tensor *t = randn(dt, seed, nd, shape);
  eng_set_requires_grad(t, true);
  return t;
}

/* element of t at a logical multi-index given for its last nidx dims
 * (missing leading dims and size-1 dims broadcast) */
static double elem(const eng_tensor *t, int nidx, const int64_t *idx) {
  int nd = eng_tensor_ndim(t);
  const int64_t *sh = eng_tensor_shape(t);
  int64_t flat = 0;
  for (int d = 0; d < nd; d++) {
    int64_t i = idx[nidx - nd + d];
    flat = flat * sh[d] + (sh[d] == 1 ? 0 : i);
  }
  return at(t, flat);
}

/* numpy matmul by definition, in double: out holds the result row-major;
 * returns its numel */
static int64_t naive_matmul(const eng_tensor *a, const eng_tensor *b, double *out) {
  int na = eng_tensor_ndim(a), nb = eng_tensor_ndim(b);
  const int64_t *sa = eng_tensor_shape(a), *sb = eng_tensor_shape(b);
  int64_t M = na >= 2 ? sa[na - 2] : 1, K = sa[na - 1], N = nb >= 2 ? sb[nb - 1] : 1;
  int ba = na > 2 ? na - 2 : 0, bb = nb > 2 ? nb - 2 : 0, bo = ba > bb ? ba : bb;
  int64_t bshape[ENG_MAX_DIMS], count = 1;
  for (int i = 0; i < bo; i++) {
    int ia = ba - bo + i, ib = bb - bo + i;
    int64_t da = ia >= 0 ? sa[ia] : 1, db = ib >= 0 ? sb[ib] : 1;
    bshape[i] = da > db ? da : db;
    count *= bshape[i];
  }
  for (int64_t n = 0; n < count; n++) {
    int64_t idx[ENG_MAX_DIMS + 2], rem = n;
    for (int d = bo - 1; d >= 0; d--) {
      idx[d] = rem % bshape[d];
      rem /= bshape[d];
    }
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) {
          int64_t ia[ENG_MAX_DIMS + 2], ib[ENG_MAX_DIMS + 2];
          memcpy(ia, idx, sizeof(int64_t) * (size_t)bo);
          memcpy(ib, idx, sizeof(int64_t) * (size_t)bo);
          /* a (..., i, k) or (k); b (..., k, j) or (k) */
          double va, vb;
          if (na >= 2) {
            ia[bo] = i;
            ia[bo + 1] = k;
            va = elem(a, bo + 2, ia);
          } else {
            va = at(a, k);
          }
          if (nb >= 2) {
            ib[bo] = k;
            ib[bo + 1] = j;
            vb = elem(b, bo + 2, ib);
          } else {
            vb = at(b, k);
          }
          s += va * vb;
        }
        out[(n * M + i) * N + j] = s;
      }
  }
  return count * M * N;
}

/* compare matmul(a, b) with the naive product; rtol relative to sum |a||b| */
static void check_against_naive(eng_tensor *a, eng_tensor *b, int exp_nd, const int64_t *exp_shape,
                                double tol) {
  eng_tensor *c = eng_matmul(a, b);
  CHECK(c != NULL);
  if (!c) {
    fprintf(stderr, "  %s\n", eng_last_error());
    return;
  }
  CHECK(eng_tensor_ndim(c) == exp_nd);
  for (int d = 0; d < exp_nd && d < eng_tensor_ndim(c); d++) CHECK(eng_tensor_shape(c)[d] == exp_shape[d]);
  double *ref = malloc(sizeof(double) * (size_t)(eng_tensor_numel(c) + 1));
  int64_t n = naive_matmul(a, b, ref);
  CHECK(n == eng_tensor_numel(c));
  double worst = 0;
  for (int64_t i = 0; i < n && i < eng_tensor_numel(c); i++) {
    double e = fabs(at(c, i) - ref[i]) / (1 + fabs(ref[i]));
    if (e > worst) worst = e;
  }
  CHECK_CLOSE(worst, 0, tol);
  free(ref);
  eng_tensor_release(c);
}

/* loss = sum(out ⊙ R) with a fixed random R, so every output element counts */
static eng_tensor *weighted_sum(eng_tensor *out) {
  if (!out) return NULL;
  eng_tensor *r = randn(eng_tensor_dtype(out), 99, eng_tensor_ndim(out), eng_tensor_shape(out));
  eng_tensor *p = eng_mul(out, r);
  eng_tensor *s = p ? eng_sum(p, ENG_ALL_DIMS, false) : NULL;
  eng_tensor_release(r);
  eng_tensor_release(p);
  eng_tensor_release(out);
  return s;
}

static eng_tensor *mm_loss(eng_tensor **in, void *ctx) {
  (void)ctx;
  return weighted_sum(eng_matmul(in[0], in[1]));
}

static void gradcheck_pair(eng_tensor *a, eng_tensor *b) {
  eng_tensor *in[2] = {a, b};
  CHECK_GRAD(mm_loss, NULL, in, 2);
  eng_tensor_release(a);
  eng_tensor_release(b);
}

#define SH(...) ((int64_t[]){__VA_ARGS__})
#define F32 ENG_DTYPE_F32
#define F64 ENG_DTYPE_F64

/* ---- values ---------------------------------------------------------------- */

static void test_hand_values(void) {
  for (int dt = 0; dt < 2; dt++) {
    eng_tensor *a = T((eng_dtype)dt, 2, SH(2, 3), ((double[]){1, 2, 3, 4, 5, 6}));
    eng_tensor *b = T((eng_dtype)dt, 2, SH(3, 2), ((double[]){7, 8, 9, 10, 11, 12}));
    eng_tensor *c = eng_matmul(a, b);
    /* [1 2 3;4 5 6]·[7 8;9 10;11 12] = [58 64;139 154] */
    CHECK(c && eng_tensor_ndim(c) == 2 && eng_tensor_shape(c)[0] == 2 && eng_tensor_shape(c)[1] == 2);
    CHECK_CLOSE(at(c, 0), 58, 0);
    CHECK_CLOSE(at(c, 1), 64, 0);
    CHECK_CLOSE(at(c, 2), 139, 0);
    CHECK_CLOSE(at(c, 3), 154, 0);
    CHECK(eng_tensor_dtype(c) == (eng_dtype)dt);
    /* vector · vector = 1·7 + 2·9 + 3·11 = 58, a 0-dim result */
    int64_t three = 3;
    eng_tensor *u = T((eng_dtype)dt, 1, &three, ((double[]){1, 2, 3}));
    eng_tensor *v = T((eng_dtype)dt, 1, &three, ((double[]){7, 9, 11}));
    eng_tensor *d = eng_matmul(u, v);
    CHECK(d && eng_tensor_ndim(d) == 0 && eng_tensor_numel(d) == 1);
    CHECK_CLOSE(at(d, 0), 58, 0);
    /* vector · matrix = [1 2 3]·b = [58 64]; matrix · vector = a·[7 9 11] = [58 139] */
    eng_tensor *e = eng_matmul(u, b), *f = eng_matmul(a, v);
    CHECK(e && eng_tensor_ndim(e) == 1 && eng_tensor_shape(e)[0] == 2);
    CHECK(f && eng_tensor_ndim(f) == 1 && eng_tensor_shape(f)[0] == 2);
    CHECK_CLOSE(at(e, 0), 58, 0);
    CHECK_CLOSE(at(e, 1), 64, 0);
    CHECK_CLOSE(at(f, 0), 58, 0);
    CHECK_CLOSE(at(f, 1), 139, 0);
    eng_tensor *list[] = {a, b, c, u, v, d, e, f};
    for (int i = 0; i < 8; i++) eng_tensor_release(list[i]);
  }
}

/* float32 against a triple loop, over the layouts BLAS reads in place */
static void test_f32_naive(void) {
  eng_tensor *a = randn(F32, 1, 2, SH(37, 53)), *b = randn(F32, 2, 2, SH(53, 29));
  check_against_naive(a, b, 2, SH(37, 29), 1e-5);
  eng_tensor *at_ = transposed_leaf(F32, 3, 2, SH(37, 53)), *bt = transposed_leaf(F32, 4, 2, SH(53, 29));
  check_against_naive(at_, b, 2, SH(37, 29), 1e-5);
  check_against_naive(a, bt, 2, SH(37, 29), 1e-5);
  check_against_naive(at_, bt, 2, SH(37, 29), 1e-5);
  eng_tensor *as = strided_leaf(F32, 5, 37, 53);
  check_against_naive(as, bt, 2, SH(37, 29), 1e-5);
  /* batched with broadcasting: (3,1,5,7)·(4,7,6) -> (3,4,5,6) */
  eng_tensor *ba = randn(F32, 6, 4, SH(3, 1, 5, 7)), *bb = randn(F32, 7, 3, SH(4, 7, 6));
  check_against_naive(ba, bb, 4, SH(3, 4, 5, 6), 1e-5);
  /* the one-gemm fold: (4,33,40)·(40,50), and a transposed b */
  eng_tensor *x = randn(F32, 8, 3, SH(4, 33, 40)), *w = randn(F32, 9, 2, SH(40, 50));
  eng_tensor *wt = transposed_leaf(F32, 10, 2, SH(40, 50));
  check_against_naive(x, w, 3, SH(4, 33, 50), 1e-5);
  check_against_naive(x, wt, 3, SH(4, 33, 50), 1e-5);
  /* many small products: split across threads */
  eng_tensor *sa = randn(F32, 11, 3, SH(64, 8, 12)), *sb = transposed_leaf(F32, 12, 3, SH(64, 12, 9));
  check_against_naive(sa, sb, 3, SH(64, 8, 9), 1e-5);
  eng_tensor *list[] = {a, b, at_, bt, as, ba, bb, x, w, wt, sa, sb};
  for (int i = 0; i < 12; i++) eng_tensor_release(list[i]);
}

static void test_vectors_and_batches_f64(void) {
  eng_tensor *v = randn(F64, 20, 1, SH(5)), *m = randn(F64, 21, 2, SH(5, 4));
  eng_tensor *mk = randn(F64, 22, 2, SH(3, 5)), *bt = randn(F64, 23, 3, SH(2, 5, 4));
  eng_tensor *ba = randn(F64, 24, 3, SH(2, 3, 5));
  check_against_naive(v, v, 0, NULL, 1e-12);
  check_against_naive(v, m, 1, SH(4), 1e-12);
  check_against_naive(mk, v, 1, SH(3), 1e-12);
  check_against_naive(v, bt, 2, SH(2, 4), 1e-12);
  check_against_naive(ba, v, 2, SH(2, 3), 1e-12);
  check_against_naive(ba, bt, 3, SH(2, 3, 4), 1e-12);
  check_against_naive(mk, bt, 3, SH(2, 3, 4), 1e-12);
  /* a strided vector: every other element of a (10) */
  eng_tensor *base = randn(F64, 25, 1, SH(10));
  eng_tensor *sv = tensor_view(base, 1, SH(5), SH(2), 1);
  check_against_naive(sv, m, 1, SH(4), 1e-12);
  check_against_naive(mk, sv, 1, SH(3), 1e-12);
  /* b expanded over a batch dim with stride 0 still folds: (2,3,5)·expand((5,4) -> (2,5,4)) */
  eng_tensor *ex = tensor_view(m, 3, SH(2, 5, 4), SH(0, 4, 1), 0);
  check_against_naive(ba, ex, 3, SH(2, 3, 4), 1e-12);
  /* a expanded inside its matrix (stride 0 rows): BLAS cannot read it, copied */
  eng_tensor *er = tensor_view(v, 2, SH(3, 5), SH(0, 1), 0);
  check_against_naive(er, m, 2, SH(3, 4), 1e-12);
  eng_tensor *list[] = {v, m, mk, bt, ba, base, sv, ex, er};
  for (int i = 0; i < 9; i++) eng_tensor_release(list[i]);
}

/* transposed views go to BLAS as flags: the only new storage is the result */
static void test_no_copies(void) {
  eng_tensor *at_ = transposed_leaf(F32, 30, 3, SH(4, 16, 24)), *b = randn(F32, 31, 2, SH(24, 8));
  eng_tensor *bt = transposed_leaf(F32, 32, 2, SH(24, 8)), *as = strided_leaf(F32, 33, 16, 24);
  struct { eng_tensor *a, *b; uint64_t allocs; } cases[] = {
      {at_, b, 1}, {at_, bt, 1}, {as, b, 2} /* every other column: copied once */};
  for (int i = 0; i < 3; i++) {
    eng_memory_stats s0, s1;
    eng_memory_get_stats(&s0);
    eng_tensor *c = eng_matmul(cases[i].a, cases[i].b);
    eng_memory_get_stats(&s1);
    CHECK(c != NULL);
    CHECK(s1.allocs - s0.allocs == cases[i].allocs);
    eng_tensor_release(c);
  }
  eng_tensor_release(at_);
  eng_tensor_release(b);
  eng_tensor_release(bt);
  eng_tensor_release(as);
}

static void test_empty(void) {
  eng_tensor *a = randn(F32, 40, 2, SH(2, 0)), *b = randn(F32, 41, 2, SH(0, 3));
  eng_tensor *c = eng_matmul(a, b); /* K = 0: all zeros */
  CHECK(c && eng_tensor_numel(c) == 6);
  for (int i = 0; c && i < 6; i++) CHECK(at(c, i) == 0);
  eng_tensor *z = randn(F32, 42, 2, SH(0, 4)), *w = randn(F32, 43, 2, SH(4, 3));
  eng_tensor *d = eng_matmul(z, w); /* M = 0 */
  CHECK(d && eng_tensor_numel(d) == 0 && eng_tensor_shape(d)[0] == 0 && eng_tensor_shape(d)[1] == 3);
  eng_tensor *list[] = {a, b, c, z, w, d};
  for (int i = 0; i < 6; i++) eng_tensor_release(list[i]);
}

static void test_errors(void) {
  eng_tensor *a = randn(F32, 50, 2, SH(2, 3)), *a64 = randn(F64, 51, 2, SH(3, 2));
  eng_tensor *s = eng_full(F32, 0, NULL, 1.0);
  eng_tensor *b1 = randn(F32, 52, 3, SH(2, 2, 3)), *b2 = randn(F32, 53, 3, SH(3, 3, 4));
  eng_tensor *v = randn(F32, 54, 1, SH(4));
  CHECK_FAILS(eng_matmul(a, a), "matmul: a is [2,3], b is [2,3]: inner dims differ");
  CHECK_FAILS(eng_matmul(v, a), "matmul: a is [4], b is [2,3]: inner dims differ");
  CHECK_FAILS(eng_matmul(a, v), "matmul: a is [2,3], b is [4]: inner dims differ");
  CHECK_FAILS(eng_matmul(b1, b2), "matmul: a is [2,2,3], b is [3,3,4]: batch dims do not broadcast");
  CHECK_FAILS(eng_matmul(s, a), "matmul: a is [], b is [2,3]: both operands need at least one dim");
  CHECK_FAILS(eng_matmul(a, a64), "matmul: dtypes differ (float32 and float64)");
  eng_tensor *list[] = {a, a64, s, b1, b2, v};
  for (int i = 0; i < 6; i++) eng_tensor_release(list[i]);
}

/* ---- gradients (float64, central differences) ------------------------------ */

static void test_grad_2d(void) {
  gradcheck_pair(leaf(F64, 60, 2, SH(3, 4)), leaf(F64, 61, 2, SH(4, 5)));
  gradcheck_pair(transposed_leaf(F64, 62, 2, SH(3, 4)), leaf(F64, 63, 2, SH(4, 5)));
  gradcheck_pair(leaf(F64, 64, 2, SH(3, 4)), transposed_leaf(F64, 65, 2, SH(4, 5)));
  gradcheck_pair(transposed_leaf(F64, 66, 2, SH(3, 4)), transposed_leaf(F64, 67, 2, SH(4, 5)));
  gradcheck_pair(strided_leaf(F64, 68, 3, 4), strided_leaf(F64, 69, 4, 2));
}

static void test_grad_1d(void) {
  gradcheck_pair(leaf(F64, 70, 1, SH(4)), leaf(F64, 71, 1, SH(4)));
  gradcheck_pair(leaf(F64, 72, 1, SH(4)), leaf(F64, 73, 2, SH(4, 3)));
  gradcheck_pair(leaf(F64, 74, 2, SH(3, 4)), leaf(F64, 75, 1, SH(4)));
  gradcheck_pair(leaf(F64, 76, 1, SH(4)), leaf(F64, 77, 3, SH(2, 4, 3)));
  gradcheck_pair(leaf(F64, 78, 3, SH(2, 3, 4)), leaf(F64, 79, 1, SH(4)));
  gradcheck_pair(leaf(F64, 80, 1, SH(4)), transposed_leaf(F64, 81, 2, SH(4, 3)));
}

static void test_grad_batched(void) {
  /* (B,T,C)·(C,OC): one gemm forward, one gemm for dB */
  gradcheck_pair(leaf(F64, 90, 3, SH(2, 3, 4)), leaf(F64, 91, 2, SH(4, 5)));
  gradcheck_pair(leaf(F64, 92, 3, SH(2, 3, 4)), transposed_leaf(F64, 93, 2, SH(4, 5)));
  /* a transposed within each batch entry: no fold, one gemm per entry */
  gradcheck_pair(transposed_leaf(F64, 94, 3, SH(2, 3, 4)), leaf(F64, 95, 2, SH(4, 5)));
  /* both batched, broadcast both ways: (2,1,3,4)·(5,4,2) -> (2,5,3,2) */
  gradcheck_pair(leaf(F64, 96, 4, SH(2, 1, 3, 4)), leaf(F64, 97, 3, SH(5, 4, 2)));
  gradcheck_pair(transposed_leaf(F64, 98, 4, SH(2, 1, 3, 4)), transposed_leaf(F64, 99, 3, SH(5, 4, 2)));
  /* 2-D a against batched b: dA sums over the batch */
  gradcheck_pair(leaf(F64, 100, 2, SH(3, 4)), leaf(F64, 101, 3, SH(3, 4, 2)));
  /* batch dims of size 1 on b: (2,3,4)·(1,4,5) */
  gradcheck_pair(leaf(F64, 102, 3, SH(2, 3, 4)), leaf(F64, 103, 3, SH(1, 4, 5)));
}

/* dB of the folded (B,T,C)·(C,OC) equals the sum over the batch of A_bᵀ·G_b */
static void test_fold_grad_values(void) {
  eng_tensor *a = leaf(F64, 110, 3, SH(3, 4, 5)), *b = leaf(F64, 111, 2, SH(5, 2));
  eng_tensor *g = randn(F64, 112, 3, SH(3, 4, 2));
  eng_tensor *c = eng_matmul(a, b);
  CHECK(c && eng_backward(c, g) == 0);
  eng_tensor *db = eng_grad(b);
  CHECK(db != NULL);
  for (int k = 0; db && k < 5; k++)
    for (int j = 0; j < 2; j++) {
      double s = 0;
      for (int n = 0; n < 3; n++)
        for (int t = 0; t < 4; t++) s += at(a, (n * 4 + t) * 5 + k) * at(g, (n * 4 + t) * 2 + j);
      CHECK_CLOSE(at(db, k * 2 + j), s, 1e-12);
    }
  eng_tensor_release(a);
  eng_tensor_release(b);
  eng_tensor_release(g);
  eng_tensor_release(c);
}


/* ---- the few-rows kernel (matmul_small.c) ----------------------------------- */

/* n floats from a fixed LCG, uniform in [-1, 1) */
static float *rand_floats(int64_t n, uint32_t seed) {
  float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  uint32_t s = seed;
  for (int64_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    v[i] = (float)((double)(s >> 8) / (double)(1 << 23) - 1.0);
  }
  return v;
}

/* worst |c - ref| / sum_k |a_mk·b_kn| over C (M,N): the error relative to
 * the scale of each dot product, which rounding can reach (a plain
 * relative error is unbounded where the sum cancels to ~0) */
static double worst_rel(int64_t M, int64_t N, int64_t K, const float *A, const float *B, bool tb,
                        const float *C, const float *ref) {
  double worst = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double scale = 1e-30;
      for (int64_t k = 0; k < K; k++) scale += fabs((double)A[m * K + k] * (tb ? B[n * K + k] : B[k * N + n]));
      double e = fabs((double)C[m * N + n] - (double)ref[m * N + n]) / scale;
      if (e > worst) worst = e;
    }
  return worst;
}

/* the kernel against cblas_sgemm and a float64 loop: row counts up to the
 * limit, both weight layouts, sizes off the 16-lane and tile grid */
static void test_small_kernel_values(void) {
  /* every group split of the rows (8/4/2/1 and 4/2/1) and the limit */
  int64_t Ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 23, MATMUL_SMALL_MAX_M};
  int64_t Ns[] = {1, 17, 33, 130, 257}, Ks[] = {1, 7, 16, 130};
  for (int mi = 0; mi < 13; mi++)
    for (int ni = 0; ni < 5; ni++)
      for (int ki = 0; ki < 4; ki++)
        for (int tb = 0; tb < 2; tb++) {
          int64_t M = Ms[mi], N = Ns[ni], K = Ks[ki];
          float *A = rand_floats(M * K, 1 + (uint32_t)M), *Bm = rand_floats(K * N, 2 + (uint32_t)N);
          float *C = malloc(sizeof(float) * (size_t)(M * N)), *S = malloc(sizeof(float) * (size_t)(M * N));
          float *D = malloc(sizeof(float) * (size_t)(M * N));
          matmul_small_f32(M, N, K, A, K, Bm, tb ? K : N, tb, C, N);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                      (int)K, Bm, tb ? (int)K : (int)N, 0.0f, S, (int)N);
          for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
              double acc = 0;
              for (int64_t k = 0; k < K; k++) acc += (double)A[m * K + k] * (tb ? Bm[n * K + k] : Bm[k * N + n]);
              D[m * N + n] = (float)acc;
            }
          double e_blas = worst_rel(M, N, K, A, Bm, tb, C, S), e_exact = worst_rel(M, N, K, A, Bm, tb, C, D);
          if (!(e_blas <= 1e-5) || !(e_exact <= 1e-5))
            fprintf(stderr, "  M=%lld N=%lld K=%lld %s: vs sgemm %.3g, vs float64 %.3g\n", (long long)M,
                    (long long)N, (long long)K, tb ? "x·Wᵀ" : "x·W", e_blas, e_exact);
          CHECK(e_blas <= 1e-5);
          CHECK(e_exact <= 1e-5);
          free(A);
          free(Bm);
          free(C);
          free(S);
          free(D);
        }
}

/* the same call twice, and with 1 and 2 threads, gives the same bits (the
 * shapes are large enough to split the columns across threads) */
static void test_small_kernel_deterministic(void) {
  struct { int64_t M, N, K; bool tb; } cases[] = {{8, 1024, 256, false}, {8, 8192, 256, true}, {13, 999, 300, false},
                                                  {5, 3001, 130, true}};
  for (int c = 0; c < 4; c++) {
    int64_t M = cases[c].M, N = cases[c].N, K = cases[c].K;
    bool tb = cases[c].tb;
    CHECK((double)M * (double)N * (double)K >= MATMUL_SMALL_PAR_MIN);
    float *A = rand_floats(M * K, 7), *Bm = rand_floats(K * N, 8);
    float *C[3];
    for (int r = 0; r < 3; r++) {
      C[r] = malloc(sizeof(float) * (size_t)(M * N));
      eng_set_threads(r == 2 ? 1 : 2);
      matmul_small_f32(M, N, K, A, K, Bm, tb ? K : N, tb, C[r], N);
    }
    eng_set_threads(2);
    CHECK(memcmp(C[0], C[1], sizeof(float) * (size_t)(M * N)) == 0);
    CHECK(memcmp(C[0], C[2], sizeof(float) * (size_t)(M * N)) == 0);
    for (int r = 0; r < 3; r++) free(C[r]);
    free(A);
    free(Bm);
  }
}

/* float32 data of a contiguous tensor */
static const float *fdata(eng_tensor *t) { return (const float *)eng_tensor_data(t); }

/* eng_matmul takes the kernel for a few rows: the same bits as calling it
 * directly, for the folded (B,T,C)·(C,N), a transposed weight view (a
 * Linear's x·Wᵀ), a transposed a (packed first), and a batched product of
 * one row per entry (the decode step's q·kᵀ, k a view into a longer cache) */
static void test_small_through_matmul(void) {
  eng_tensor *x = randn(F32, 120, 3, SH(2, 4, 40)), *w = randn(F32, 121, 2, SH(40, 50));
  eng_tensor *wl = randn(F32, 122, 2, SH(50, 40));
  eng_tensor *wt = eng_transpose(wl, 0, 1);
  float *ref = malloc(sizeof(float) * 8 * 50);
  eng_tensor *c1 = eng_matmul(x, w), *c2 = eng_matmul(x, wt);
  CHECK(c1 && c2);
  matmul_small_f32(8, 50, 40, fdata(x), 40, fdata(w), 50, false, ref, 50);
  CHECK(c1 && memcmp(fdata(c1), ref, sizeof(float) * 400) == 0);
  matmul_small_f32(8, 50, 40, fdata(x), 40, fdata(wl), 40, true, ref, 50);
  CHECK(c2 && memcmp(fdata(c2), ref, sizeof(float) * 400) == 0);
  check_against_naive(x, w, 3, SH(2, 4, 50), 1e-5);
  check_against_naive(x, wt, 3, SH(2, 4, 50), 1e-5);
  /* a (6,40) stored transposed: packed to rows, then the kernel */
  eng_tensor *at_ = transposed_leaf(F32, 123, 2, SH(6, 40));
  eng_tensor *ac = plain_copy(at_);
  eng_tensor *c3 = eng_matmul(at_, w);
  matmul_small_f32(6, 50, 40, fdata(ac), 40, fdata(w), 50, false, ref, 50);
  CHECK(c3 && memcmp(fdata(c3), ref, sizeof(float) * 300) == 0);
  check_against_naive(at_, w, 2, SH(6, 50), 1e-5);
  /* q (3,2,1,16) · kᵀ with k the first 9 of 20 cached rows (3,2,20,16) */
  eng_tensor *q = randn(F32, 124, 4, SH(3, 2, 1, 16)), *cache = randn(F32, 125, 4, SH(3, 2, 20, 16));
  eng_tensor *k = eng_narrow(cache, 2, 0, 9);
  eng_tensor *kt = eng_transpose(k, 2, 3);
  eng_tensor *s = eng_matmul(q, kt);
  CHECK(s && eng_tensor_shape(s)[3] == 9);
  for (int e = 0; s && e < 6; e++) {
    matmul_small_f32(1, 9, 16, fdata(q) + e * 16, 16, fdata(cache) + e * 20 * 16, 16, true, ref, 9);
    CHECK(memcmp(fdata(s) + e * 9, ref, sizeof(float) * 9) == 0);
  }
  check_against_naive(q, kt, 4, SH(3, 2, 1, 9), 1e-5);
  eng_tensor *list[] = {x, w, wl, wt, c1, c2, at_, ac, c3, q, cache, k, kt, s};
  for (int i = 0; i < 14; i++) eng_tensor_release(list[i]);
  free(ref);
}

/* the gradients of a few-rows product are those BLAS gives: dA = g·Bᵀ and
 * dB = Aᵀ·g bit for bit as cblas_sgemm computes them (the backward keeps
 * its products on BLAS), for b a plain and a transposed (Linear) weight */
static void test_small_backward_is_blas(void) {
  for (int tb = 0; tb < 2; tb++) {
    int64_t M = 5, K = 24, N = 33;
    eng_tensor *a = leaf(F32, 130, 2, SH(M, K));
    eng_tensor *b = tb ? transposed_leaf(F32, 131, 2, SH(K, N)) : leaf(F32, 131, 2, SH(K, N));
    eng_tensor *g = randn(F32, 132, 2, SH(M, N));
    eng_tensor *c = eng_matmul(a, b);
    CHECK(c && eng_backward(c, g) == 0);
    eng_tensor *da = eng_grad(a), *db = eng_grad(b);
    CHECK(da && db);
    eng_tensor *bc = plain_copy(b); /* (K,N) row-major */
    float *ra = malloc(sizeof(float) * (size_t)(M * K)), *rb = malloc(sizeof(float) * (size_t)(K * N));
    /* dA (M,K) = g (M,N) · Bᵀ, read as the backward reads b */
    if (tb) /* b = Wᵀ with W (N,K) row-major: Bᵀ is W itself */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, 1.0f, fdata(g), (int)N,
                  (const float *)eng_tensor_data(b), (int)K, 0.0f, ra, (int)K);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)K, (int)N, 1.0f, fdata(g), (int)N,
                  fdata(bc), (int)N, 0.0f, ra, (int)K);
    /* dB: (K,N) = Aᵀ·g, or for the Linear layout dBᵀ (N,K) = gᵀ·A */
    if (tb)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N, (int)K, (int)M, 1.0f, fdata(g), (int)N,
                  fdata(a), (int)K, 0.0f, rb, (int)K);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)N, (int)M, 1.0f, fdata(a), (int)K,
                  fdata(g), (int)N, 0.0f, rb, (int)N);
    eng_tensor *dac = da ? plain_copy(da) : NULL, *dbc = db ? plain_copy(db) : NULL;
    CHECK(dac && memcmp(fdata(dac), ra, sizeof(float) * (size_t)(M * K)) == 0);
    bool same = dbc != NULL;
    for (int64_t k = 0; same && k < K; k++)
      for (int64_t n = 0; n < N; n++)
        if (fdata(dbc)[k * N + n] != (tb ? rb[n * K + k] : rb[k * N + n])) same = false;
    CHECK(same);
    eng_tensor *list[] = {a, b, g, c, bc, dac, dbc};
    for (int i = 0; i < 7; i++) eng_tensor_release(list[i]);
    free(ra);
    free(rb);
  }
}

int main(void) {
  eng_set_threads(2);
  RUN(test_hand_values);
  RUN(test_f32_naive);
  RUN(test_vectors_and_batches_f64);
  RUN(test_no_copies);
  RUN(test_empty);
  RUN(test_errors);
  RUN(test_grad_2d);
  RUN(test_grad_1d);
  RUN(test_grad_batched);
  RUN(test_fold_grad_values);
  RUN(test_small_kernel_values);
  RUN(test_small_kernel_deterministic);
  RUN(test_small_through_matmul);
  RUN(test_small_backward_is_blas);
  DONE();
}
