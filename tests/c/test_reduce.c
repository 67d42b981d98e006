/* test_reduce.c — sum, mean, max and logsumexp: values by hand, every
 * kernel path (row mode, column mode, split across threads, strided and
 * zero-stride inputs), float32 accuracy, extremes, error messages, and
 * float64 gradient checks. */
#include "check.h"
#include "internal.h"

static const int64_t S23[] = {2, 3};

/* sum(y * (1..n)) so every output element has its own weight */
static eng_tensor *weighted_sum(eng_tensor *y) {
  eng_tensor *w = eng_arange(eng_tensor_dtype(y), eng_tensor_numel(y));
  eng_tensor *w2 = eng_reshape(w, eng_tensor_ndim(y), eng_tensor_shape(y));
  eng_tensor *one = eng_scalar_like(y, 1.0);
  eng_tensor *w3 = eng_add(w2, one);
  eng_tensor *p = eng_mul(y, w3);
  eng_tensor *s = eng_sum(p, ENG_ALL_DIMS, false);
  eng_tensor *ts[] = {w, w2, one, w3, p};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
  return s;
}

/* a float32 tensor of n values v(i) = f(i) in the given shape */
static eng_tensor *filled(int ndim, const int64_t *shape, double (*f)(int64_t)) {
  eng_tensor *t = eng_empty(ENG_DTYPE_F32, ndim, shape);
  float *p = eng_tensor_data(t);
  for (int64_t i = 0; i < eng_tensor_numel(t); i++) p[i] = (float)f(i);
  return t;
}
static double wave(int64_t i) { return sin((double)i * 0.37) * 3 + (double)(i % 7) * 0.25; }

static void test_sum_mean_values(void) {
  eng_tensor *x = T(ENG_DTYPE_F32, 2, S23, ((double[]){1, 2, 3, 4, 5, 6}));
  eng_tensor *s0 = eng_sum(x, 0, false), *s1 = eng_sum(x, -1, true), *sa = eng_sum(x, ENG_ALL_DIMS, false);
  CHECK(eng_tensor_ndim(s0) == 1 && eng_tensor_shape(s0)[0] == 3);
  CHECK_CLOSE(at(s0, 0), 5, 0);
  CHECK_CLOSE(at(s0, 2), 9, 0);
  CHECK(eng_tensor_ndim(s1) == 2 && eng_tensor_shape(s1)[0] == 2 && eng_tensor_shape(s1)[1] == 1);
  CHECK_CLOSE(at(s1, 0), 6, 0);
  CHECK_CLOSE(at(s1, 1), 15, 0);
  CHECK(eng_tensor_ndim(sa) == 0);
  CHECK_CLOSE(at(sa, 0), 21, 0);
  eng_tensor *sk = eng_sum(x, ENG_ALL_DIMS, true);
  CHECK(eng_tensor_ndim(sk) == 2 && eng_tensor_numel(sk) == 1);
  eng_tensor *m1 = eng_mean(x, 1, false), *ma = eng_mean(x, ENG_ALL_DIMS, false);
  CHECK_CLOSE(at(m1, 0), 2, 1e-7);
  CHECK_CLOSE(at(m1, 1), 5, 1e-7);
  CHECK_CLOSE(at(ma, 0), 3.5, 1e-7);
  /* a transposed view (column mode on a strided input) */
  eng_tensor *xt = eng_transpose(x, 0, 1); /* [[1,4],[2,5],[3,6]] */
  eng_tensor *t0 = eng_sum(xt, 0, false), *t1 = eng_sum(xt, 1, false), *ta = eng_sum(xt, ENG_ALL_DIMS, false);
  CHECK_CLOSE(at(t0, 0), 6, 0);
  CHECK_CLOSE(at(t0, 1), 15, 0);
  CHECK_CLOSE(at(t1, 0), 5, 0);
  CHECK_CLOSE(at(t1, 2), 9, 0);
  CHECK_CLOSE(at(ta, 0), 21, 0);
  /* a zero-stride (expanded) input */
  eng_tensor *e = eng_expand(x, 3, ((int64_t[]){4, 2, 3}));
  eng_tensor *e0 = eng_sum(e, 0, false), *ea = eng_sum(e, ENG_ALL_DIMS, false);
  CHECK_CLOSE(at(e0, 5), 24, 0);
  CHECK_CLOSE(at(ea, 0), 84, 0);
  /* empty: sum 0, mean NaN (0/0) */
  eng_tensor *z = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){2, 0}));
  eng_tensor *zs = eng_sum(z, 1, false), *zm = eng_mean(z, ENG_ALL_DIMS, false);
  CHECK(eng_tensor_numel(zs) == 2 && at(zs, 1) == 0);
  CHECK(isnan(at(zm, 0)));
  /* a 0-dim input reduces over "dim 0" */
  eng_tensor *sc = eng_scalar_like(x, 2.5);
  eng_tensor *scs = eng_sum(sc, 0, false);
  CHECK(scs && eng_tensor_ndim(scs) == 0 && at(scs, 0) == 2.5);
  CHECK_FAILS(eng_sum(x, 2, false), "sum: dim 3 is out of range for a tensor of shape [2,3]");
  CHECK_FAILS(eng_mean(x, -3, false), "mean: dim -3 is out of range");
  eng_tensor *ts[] = {x, s0, s1, sa, sk, m1, ma, xt, t0, t1, ta, e, e0, ea, z, zs, zm, sc, scs};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) eng_tensor_release(ts[i]);
}

/* 1e7 float32 values of 0.1f: a float accumulator would be off by ~1e-2
 * relative; the double one is exact to ~1e-12 */
static void test_sum_accuracy(void) {
  int64_t n = 10000000;
  eng_tensor *x = eng_full(ENG_DTYPE_F32, 1, &n, 0.1);
  double want = (double)n * (double)0.1f;
  eng_tensor *s = eng_sum(x, 0, false), *sa = eng_sum(x, ENG_ALL_DIMS, false), *m = eng_mean(x, 0, false);
  CHECK_CLOSE(at(s, 0), want, want * 1e-7);
  CHECK_CLOSE(at(sa, 0), want, want * 1e-7);
  CHECK_CLOSE(at(m, 0), (double)0.1f, 1e-8);
  /* the same down a column: (n, 1) over dim 0 -> column mode split over r */
  eng_tensor *c = eng_reshape(x, 2, ((int64_t[]){n / 2, 2}));
  eng_tensor *cs = eng_sum(c, 0, false);
  CHECK_CLOSE(at(cs, 0), want / 2, want * 1e-7);
  CHECK_CLOSE(at(cs, 1), want / 2, want * 1e-7);
  eng_tensor *ts[] = {x, s, sa, m, c, cs};
  for (size_t i = 0; i < 6; i++) eng_tensor_release(ts[i]);
}

/* each kernel path on inputs big enough to run threaded, against a double
 * reference computed here */
static void check_sums(int64_t N, int64_t C) {
  eng_tensor *x = filled(2, ((int64_t[]){N, C}), wave);
  const float *p = eng_tensor_data(x);
  eng_tensor *s0 = eng_sum(x, 0, false), *s1 = eng_sum(x, 1, false);
  eng_tensor *xt = eng_transpose(x, 0, 1);
  eng_tensor *t1 = eng_sum(xt, 1, false), *t0 = eng_sum(xt, 0, false);
  eng_tensor *m0 = eng_max(x, 0, false, NULL), *mt = eng_max(xt, 1, false, NULL);
  double worst0 = 0, worst1 = 0, worstm = 0;
  for (int64_t c = 0; c < C; c++) {
    double ref = 0, mx = -INFINITY;
    for (int64_t r = 0; r < N; r++) {
      ref += p[r * C + c];
      if (p[r * C + c] > mx) mx = p[r * C + c];
    }
    worst0 = fmax(worst0, fabs(at(s0, c) - ref) + fabs(at(t1, c) - ref));
    worstm = fmax(worstm, fabs(at(m0, c) - mx) + fabs(at(mt, c) - mx));
  }
  for (int64_t r = 0; r < N; r++) {
    double ref = 0;
    for (int64_t c = 0; c < C; c++) ref += p[r * C + c];
    worst1 = fmax(worst1, fabs(at(s1, r) - ref) + fabs(at(t0, r) - ref));
  }
  CHECK(worst0 < 1e-6 * (double)N);
  CHECK(worst1 < 1e-6 * (double)C);
  CHECK(worstm == 0);
  eng_tensor *ts[] = {x, s0, s1, xt, t1, t0, m0, mt};
  for (size_t i = 0; i < 8; i++) eng_tensor_release(ts[i]);
}

static void test_sum_paths(void) {
  check_sums(4096, 300); /* column mode, blocks across threads; rows per output */
  check_sums(200000, 3); /* column mode split over rows; few long rows */
  check_sums(3, 70000);  /* one long run per output, split across threads */
  check_sums(5, 7);      /* small: one thread */
}

static void test_max_values(void) {
  eng_tensor *x = T(ENG_DTYPE_F32, 2, S23, ((double[]){3, 7, 7, -1, -5, -2}));
  eng_tensor *idx = NULL;
  eng_tensor *m1 = eng_max(x, 1, false, &idx);
  CHECK_CLOSE(at(m1, 0), 7, 0);
  CHECK_CLOSE(at(m1, 1), -1, 0);
  CHECK(idx && eng_tensor_dtype(idx) == ENG_DTYPE_F32 && eng_tensor_numel(idx) == 2);
  CHECK_CLOSE(at(idx, 0), 1, 0); /* the first of the tied 7s */
  CHECK_CLOSE(at(idx, 1), 0, 0);
  eng_tensor *i0 = NULL;
  eng_tensor *m0 = eng_max(x, 0, true, &i0);
  CHECK(eng_tensor_ndim(m0) == 2 && eng_tensor_shape(m0)[0] == 1);
  CHECK_CLOSE(at(m0, 0), 3, 0);
  CHECK_CLOSE(at(m0, 2), 7, 0);
  CHECK_CLOSE(at(i0, 0), 0, 0);
  CHECK_CLOSE(at(i0, 1), 0, 0);
  eng_tensor *ia = (eng_tensor *)&ia; /* must come back NULL */
  eng_tensor *ma = eng_max(x, ENG_ALL_DIMS, false, &ia);
  CHECK(ia == NULL);
  CHECK_CLOSE(at(ma, 0), 7, 0);
  /* -inf rows, NaN propagation */
  double inf = INFINITY;
  eng_tensor *y = T(ENG_DTYPE_F64, 2, S23, ((double[]){-inf, -inf, -inf, 1, NAN, 2}));
  eng_tensor *iy = NULL;
  eng_tensor *my = eng_max(y, 1, false, &iy);
  CHECK(at(my, 0) == -inf && at(iy, 0) == 0);
  CHECK(isnan(at(my, 1)) && at(iy, 1) == 1);
  eng_tensor *z = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){2, 0}));
  CHECK_FAILS(eng_max(z, 1, false, NULL), "max: dim 2 of [2,0] is empty");
  CHECK_FAILS(eng_max(x, 5, false, NULL), "max: dim 6 is out of range");
  eng_tensor *ts[] = {x, idx, m1, i0, m0, ma, y, iy, my, z};
  for (size_t i = 0; i < 10; i++) eng_tensor_release(ts[i]);
}

/* the argmax of a long run split across threads is the first maximum */
static void test_max_split(void) {
  int64_t n = 300000;
  eng_tensor *x = eng_zeros(ENG_DTYPE_F32, 1, &n);
  float *p = eng_tensor_data(x);
  p[250000] = 5;
  p[290000] = 5;
  p[10] = 4;
  eng_tensor *i = NULL;
  eng_tensor *m = eng_max(x, 0, false, &i);
  CHECK_CLOSE(at(m, 0), 5, 0);
  CHECK_CLOSE(at(i, 0), 250000, 0);
  /* column mode split over rows: (n/3, 3) over dim 0 */
  eng_tensor *c = eng_reshape(x, 2, ((int64_t[]){n / 3, 3}));
  eng_tensor *ic = NULL;
  eng_tensor *mc = eng_max(c, 0, false, &ic);
  CHECK_CLOSE(at(mc, 1), 5, 0); /* 250000 = 3*83333 + 1 */
  CHECK_CLOSE(at(ic, 1), 83333, 0);
  CHECK_CLOSE(at(mc, 0), 0, 0);
  CHECK_CLOSE(at(ic, 0), 0, 0);
  eng_tensor *ts[] = {x, i, m, c, ic, mc};
  for (size_t k = 0; k < 6; k++) eng_tensor_release(ts[k]);
}

static void test_logsumexp_values(void) {
  double inf = INFINITY;
  eng_tensor *x = T(ENG_DTYPE_F32, 2, S23, ((double[]){1, 2, 3, 1000, 1000, -inf}));
  eng_tensor *l = eng_logsumexp(x, 1, false);
  CHECK_CLOSE(at(l, 0), log(exp(1.0) + exp(2.0) + exp(3.0)), 1e-5);
  CHECK_CLOSE(at(l, 1), 1000 + log(2.0), 1e-3);
  eng_tensor *l0 = eng_logsumexp(x, 0, true); /* column kernels */
  CHECK(eng_tensor_ndim(l0) == 2 && eng_tensor_shape(l0)[1] == 3);
  CHECK_CLOSE(at(l0, 0), 1000, 1e-3);
  CHECK_CLOSE(at(l0, 2), 3, 1e-6);
  eng_tensor *la = eng_logsumexp(x, ENG_ALL_DIMS, false);
  CHECK_CLOSE(at(la, 0), 1000 + log(2.0), 1e-3);
  eng_tensor *y = T(ENG_DTYPE_F64, 2, S23, ((double[]){-inf, -inf, -inf, 0, inf, 1}));
  eng_tensor *ly = eng_logsumexp(y, 1, false);
  CHECK(at(ly, 0) == -inf);
  CHECK(at(ly, 1) == inf);
  eng_tensor *z = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){2, 0}));
  eng_tensor *lz = eng_logsumexp(z, 1, false);
  CHECK(at(lz, 0) == -inf);
  /* gradients at the extremes: an all -inf row gets 0, a +inf row sends
   * the gradient to its +inf entry, a -inf entry gets 0 */
  eng_set_requires_grad(y, true);
  eng_tensor *ly2 = eng_logsumexp(y, 1, false);
  eng_tensor *ones = eng_full(ENG_DTYPE_F64, 1, ((int64_t[]){2}), 1.0);
  CHECK(eng_backward(ly2, ones) == 0);
  eng_tensor *g = eng_grad(y);
  for (int k = 0; k < 6; k++) CHECK(at(g, k) == (k == 4 ? 1.0 : 0.0));
  /* the same runs as columns (the column kernels) */
  eng_tensor *yc = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 2}), ((double[]){-inf, 0, -inf, inf, -inf, 1}));
  eng_set_requires_grad(yc, true);
  eng_tensor *lc = eng_logsumexp(yc, 0, false);
  CHECK(at(lc, 0) == -inf && at(lc, 1) == inf);
  CHECK(eng_backward(lc, ones) == 0);
  for (int k = 0; k < 6; k++) CHECK(at(eng_grad(yc), k) == (k == 3 ? 1.0 : 0.0));
  eng_tensor *yn = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 2}), ((double[]){NAN, 1, 2, 3}));
  eng_tensor *ln0 = eng_logsumexp(yn, 0, false), *ln1 = eng_logsumexp(yn, 1, false);
  CHECK(isnan(at(ln0, 0)) && isnan(at(ln1, 0)));
  CHECK_CLOSE(at(ln0, 1), 3 + log1p(exp(-2.0)), 1e-6);
  CHECK_CLOSE(at(ln1, 1), 3 + log1p(exp(-1.0)), 1e-6);
  eng_set_requires_grad(x, true);
  eng_tensor *l3 = eng_logsumexp(x, 1, false);
  eng_tensor *s3 = eng_sum(l3, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s3, NULL) == 0);
  g = eng_grad(x);
  CHECK_CLOSE(at(g, 3), 0.5, 1e-4); /* float32 lse near 1000 is good to ~6e-5 */
  CHECK(at(g, 5) == 0);
  CHECK_CLOSE(at(g, 0) + at(g, 1) + at(g, 2), 1, 1e-6);
  CHECK_FAILS(eng_logsumexp(x, 2, false), "logsumexp: dim 3 is out of range");
  eng_tensor *ts[] = {x, l, l0, la, y, ly, z, lz, ly2, l3, s3, ones, yc, lc, yn, ln0, ln1};
  for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) eng_tensor_release(ts[k]);
}

/* ---- gradient checks ------------------------------------------------------- */

typedef struct {
  int op; /* 0 sum, 1 mean, 2 max, 3 logsumexp */
  int dim;
  bool keepdim, transpose;
} rcase;

static eng_tensor *reduce_fn(eng_tensor **in, void *vctx) {
  rcase *c = vctx;
  eng_tensor *x = c->transpose ? eng_transpose(in[0], 0, 1) : eng_tensor_retain(in[0]);
  eng_tensor *y = c->op == 0   ? eng_sum(x, c->dim, c->keepdim)
                  : c->op == 1 ? eng_mean(x, c->dim, c->keepdim)
                  : c->op == 2 ? eng_max(x, c->dim, c->keepdim, NULL)
                               : eng_logsumexp(x, c->dim, c->keepdim);
  eng_tensor_release(x);
  if (!y) return NULL;
  eng_tensor *s = weighted_sum(y);
  eng_tensor_release(y);
  return s;
}

static void test_gradients(void) {
  const int64_t shape[] = {3, 4, 5};
  int dims[] = {0, 1, 2, -1, ENG_ALL_DIMS};
  for (int op = 0; op < 4; op++)
    for (int k = 0; k < 5; k++)
      for (int kd = 0; kd < 2; kd++) {
        eng_tensor *x = t_randn64(11 + (uint64_t)op, 3, shape);
        rcase c = {op, dims[k], kd, false};
        CHECK_GRAD(reduce_fn, &c, &x, 1);
        c.transpose = true; /* the same through a transposed view */
        CHECK_GRAD(reduce_fn, &c, &x, 1);
        eng_tensor_release(x);
      }
  /* a non-contiguous leaf: (4,3) seen through a (3,4) column-major layout */
  eng_tensor *base = t_randn64(5, 2, ((int64_t[]){4, 3}));
  eng_tensor *leaf = tensor_view(base, 2, ((int64_t[]){3, 4}), ((int64_t[]){1, 3}), 0);
  eng_set_requires_grad(leaf, true);
  for (int op = 0; op < 4; op++)
    for (int k = 0; k < 2; k++) {
      rcase c = {op, k, false, false};
      CHECK_GRAD(reduce_fn, &c, &leaf, 1);
    }
  /* masked logsumexp: -inf entries get gradient 0 and the rest stay exact */
  eng_tensor *m = T(ENG_DTYPE_F64, 2, S23, ((double[]){0.3, -INFINITY, 1.2, -INFINITY, -0.5, -INFINITY}));
  eng_set_requires_grad(m, true);
  rcase c = {3, 1, false, false};
  CHECK_GRAD(reduce_fn, &c, &m, 1);
  eng_tensor_release(base);
  eng_tensor_release(leaf);
  eng_tensor_release(m);
}

/* max routes the whole gradient to the first argmax, even on ties */
static void test_max_backward_ties(void) {
  eng_tensor *x = T(ENG_DTYPE_F64, 2, S23, ((double[]){2, 2, 1, 0, 5, 5}));
  eng_set_requires_grad(x, true);
  eng_tensor *m = eng_max(x, 1, false, NULL);
  eng_tensor *g = T(ENG_DTYPE_F64, 1, ((int64_t[]){2}), ((double[]){3, 4}));
  CHECK(eng_backward(m, g) == 0);
  const double want[] = {3, 0, 0, 0, 4, 0};
  for (int k = 0; k < 6; k++) CHECK_CLOSE(at(eng_grad(x), k), want[k], 0);
  eng_tensor *ts[] = {x, m, g};
  for (size_t k = 0; k < 3; k++) eng_tensor_release(ts[k]);
}

int main(void) {
  RUN(test_sum_mean_values);
  RUN(test_sum_accuracy);
  RUN(test_sum_paths);
  RUN(test_max_values);
  RUN(test_max_split);
  RUN(test_logsumexp_values);
  RUN(test_gradients);
  RUN(test_max_backward_ties);
  DONE();
}
