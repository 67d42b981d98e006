/* test_softmax.c — softmax and log_softmax: values by hand, every dim
 * (in place and through the transposed copy), the -inf/+inf/NaN extremes
 * and their gradients, a threaded case against a double reference, error
 * messages, and float64 gradient checks (strided and masked inputs). */
#include "check.h"
#include "internal.h"
#include "softmax_kernels.h"

static const int64_t S23[] = {2, 3};
static const double inf = INFINITY;

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

static void test_values(void) {
  eng_tensor *x = T(ENG_DTYPE_F32, 2, S23, ((double[]){1, 2, 3, 1000, 1000, 998}));
  eng_tensor *s = eng_softmax(x, 1), *l = eng_log_softmax(x, -1);
  double z = exp(1.0) + exp(2.0) + exp(3.0);
  CHECK_CLOSE(at(s, 0), exp(1.0) / z, 1e-7);
  CHECK_CLOSE(at(s, 2), exp(3.0) / z, 1e-7);
  double z2 = 2 + exp(-2.0);
  CHECK_CLOSE(at(s, 3), 1 / z2, 1e-7);
  CHECK_CLOSE(at(s, 5), exp(-2.0) / z2, 1e-7);
  CHECK_CLOSE(at(l, 1), 2 - log(z), 1e-6);
  CHECK_CLOSE(at(l, 5), -2 - log(z2), 1e-4); /* float32 near 1000: ulp 6e-5 */
  /* over dim 0: through the transposed copy */
  eng_tensor *s0 = eng_softmax(x, 0), *l0 = eng_log_softmax(x, 0);
  CHECK(eng_tensor_is_contiguous(s0) && eng_tensor_shape(s0)[0] == 2);
  CHECK_CLOSE(at(s0, 0), 0, 1e-7);
  CHECK_CLOSE(at(s0, 3), 1, 1e-7);
  CHECK_CLOSE(at(s0, 2) + at(s0, 5), 1, 1e-6);
  CHECK_CLOSE(at(l0, 2), 3 - 998 - log1p(exp(3.0 - 998)), 1e-4);
  /* a transposed input over its last dim (not contiguous: copied) */
  eng_tensor *xt = eng_transpose(x, 0, 1);
  eng_tensor *st = eng_softmax(xt, 1);
  CHECK_CLOSE(at(st, 0), at(s0, 0), 1e-7); /* st[0][0] = s0[0][0] */
  CHECK_CLOSE(at(st, 5), at(s0, 5), 1e-7);
  /* a 0-dim input is one row of one element */
  eng_tensor *c = eng_scalar_like(x, -3), *sc = eng_softmax(c, 0);
  CHECK(sc && eng_tensor_ndim(sc) == 0 && at(sc, 0) == 1);
  CHECK_FAILS(eng_softmax(x, 2), "softmax: dim 3 is out of range for a tensor of shape [2,3]");
  CHECK_FAILS(eng_log_softmax(x, -3), "log_softmax: dim -3 is out of range");
  eng_tensor *ts[] = {x, s, l, s0, l0, xt, st, c, sc};
  for (size_t i = 0; i < 9; i++) eng_tensor_release(ts[i]);
}

/* rows: all -inf; {0, -inf, -inf}; two +inf; a NaN. Run over dim 1 of
 * (4,3) (row kernels) and over dim 0 of its contiguous transpose (3,4)
 * (column kernels); flat index of element (i, j) is given by ix */
static void check_extremes(bool columns) {
  const double rows[] = {-inf, -inf, -inf, 0, -inf, -inf, inf, 0, inf, NAN, 1, 2};
  double v[12];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++) v[columns ? j * 4 + i : i * 3 + j] = rows[i * 3 + j];
#define IX(i, j) (columns ? (j) * 4 + (i) : (i) * 3 + (j))
  int dim = columns ? 0 : 1;
  eng_tensor *x = T(ENG_DTYPE_F64, 2, columns ? ((int64_t[]){3, 4}) : ((int64_t[]){4, 3}), v);
  eng_set_requires_grad(x, true);
  eng_tensor *s = eng_softmax(x, dim), *l = eng_log_softmax(x, dim);
  for (int j = 0; j < 3; j++) CHECK(at(s, IX(0, j)) == 0 && at(l, IX(0, j)) == -inf);
  CHECK(at(s, IX(1, 0)) == 1 && at(s, IX(1, 1)) == 0 && at(s, IX(1, 2)) == 0);
  CHECK(at(l, IX(1, 0)) == 0 && at(l, IX(1, 1)) == -inf && at(l, IX(1, 2)) == -inf);
  CHECK(at(s, IX(2, 0)) == 0.5 && at(s, IX(2, 1)) == 0 && at(s, IX(2, 2)) == 0.5);
  CHECK_CLOSE(at(l, IX(2, 0)), -log(2.0), 1e-15);
  CHECK(at(l, IX(2, 1)) == -inf);
  for (int j = 0; j < 3; j++) CHECK(isnan(at(s, IX(3, j))) && isnan(at(l, IX(3, j))));
  /* backward with g = 1 on the first two runs, 0 on the others: softmax
   * gives 0 on both (all -inf; one-hot), log_softmax gives 0 on the all
   * -inf run and g - exp(y) sum(g) = {1-3, 1, 1} on {0, -inf, -inf} */
  double gv[12] = {0};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) gv[IX(i, j)] = 1;
  eng_tensor *g = T(ENG_DTYPE_F64, 2, eng_tensor_shape(x), gv);
  CHECK(eng_backward(s, g) == 0);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) CHECK(at(eng_grad(x), IX(i, j)) == 0);
  eng_set_grad(x, NULL);
  CHECK(eng_backward(l, g) == 0);
  const double want_l[] = {0, 0, 0, -2, 1, 1};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) CHECK_CLOSE(at(eng_grad(x), IX(i, j)), want_l[i * 3 + j], 1e-15);
#undef IX
  eng_tensor *ts[] = {x, s, l, g};
  for (size_t i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

static void test_extremes(void) {
  check_extremes(false);
  check_extremes(true);
}

/* the vectorized float exp against libm's double exp */
static void test_expf(void) {
  double worst = 0;
  for (float v = -87.0f; v < 88.72f; v += 0.0007f) {
    double e = exp((double)v);
    worst = fmax(worst, fabs(sk_expf(v) - e) / e);
  }
  CHECK(worst < 3e-7);
  CHECK(sk_expf(-INFINITY) == 0 && sk_expf(-100) == 0 && sk_expf(0) == 1);
  CHECK(sk_expf(INFINITY) == INFINITY && sk_expf(100) == INFINITY && isnan(sk_expf(NAN)));
}

/* float32 inputs big enough to run threaded, over the last dim (rows) and
 * over dim 0 (column blocks), against a double reference */
static double worst_error(const float *p, int64_t n0, int64_t n1, bool over0, eng_tensor *s, eng_tensor *l) {
  int64_t runs = over0 ? n1 : n0, len = over0 ? n0 : n1;
  double worst = 0;
  for (int64_t a = 0; a < runs; a++) {
#define AT(b) (over0 ? (b) * n1 + a : a * n1 + (b))
    double m = -inf, z = 0;
    for (int64_t b = 0; b < len; b++) m = fmax(m, p[AT(b)]);
    for (int64_t b = 0; b < len; b++) z += exp(p[AT(b)] - m);
    for (int64_t b = 0; b < len; b++) {
      double v = p[AT(b)] - m - log(z);
      worst = fmax(worst, fabs(at(s, AT(b)) - exp(v)) + fabs(at(l, AT(b)) - v));
    }
#undef AT
  }
  return worst;
}

static void test_threaded(void) {
  const int64_t shape[] = {300, 517};
  eng_rng *r = eng_rng_new(3);
  eng_tensor *x = eng_randn(r, ENG_DTYPE_F32, 2, shape);
  eng_rng_free(r);
  eng_tensor *s = eng_softmax(x, 1), *l = eng_log_softmax(x, 1);
  eng_tensor *s0 = eng_softmax(x, 0), *l0 = eng_log_softmax(x, 0);
  CHECK(worst_error(eng_tensor_data(x), shape[0], shape[1], false, s, l) < 1e-5);
  CHECK(worst_error(eng_tensor_data(x), shape[0], shape[1], true, s0, l0) < 1e-5);
  eng_tensor *ts[] = {x, s, l, s0, l0};
  for (size_t i = 0; i < 5; i++) eng_tensor_release(ts[i]);
}

/* ---- gradient checks ------------------------------------------------------- */

typedef struct {
  bool logp, transpose;
  int dim;
  eng_tensor *mask; /* where(mask, y, 0) before the sum, or NULL */
} scase;

static eng_tensor *softmax_fn(eng_tensor **in, void *vctx) {
  scase *c = vctx;
  eng_tensor *x = c->transpose ? eng_transpose(in[0], 0, 1) : eng_tensor_retain(in[0]);
  eng_tensor *y = c->logp ? eng_log_softmax(x, c->dim) : eng_softmax(x, c->dim);
  eng_tensor_release(x);
  if (!y) return NULL;
  if (c->mask) {
    eng_tensor *zero = eng_scalar_like(y, 0);
    eng_tensor *w = eng_where(c->mask, y, zero);
    eng_tensor_release(zero);
    eng_tensor_release(y);
    y = w;
  }
  eng_tensor *s = weighted_sum(y);
  eng_tensor_release(y);
  return s;
}

static void test_gradients(void) {
  const int64_t shape[] = {3, 4, 5};
  int dims[] = {0, 1, 2, -1};
  for (int lp = 0; lp < 2; lp++)
    for (int k = 0; k < 4; k++)
      for (int tr = 0; tr < 2; tr++) {
        eng_tensor *x = t_randn64(21 + (uint64_t)k, 3, shape);
        scase c = {lp, tr, dims[k], NULL};
        CHECK_GRAD(softmax_fn, &c, &x, 1);
        eng_tensor_release(x);
      }
  /* a non-contiguous leaf */
  eng_tensor *base = t_randn64(8, 2, ((int64_t[]){5, 3}));
  eng_tensor *leaf = tensor_view(base, 2, ((int64_t[]){3, 5}), ((int64_t[]){1, 3}), 0);
  eng_set_requires_grad(leaf, true);
  for (int lp = 0; lp < 2; lp++)
    for (int d = 0; d < 2; d++) {
      scase c = {lp, false, d, NULL};
      CHECK_GRAD(softmax_fn, &c, &leaf, 1);
    }
  /* masked rows: -inf entries and an all -inf row; the mask keeps the
   * -inf outputs of log_softmax out of the sum */
  eng_tensor *m = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 3}),
                    ((double[]){0.3, -inf, 1.2, -inf, -inf, -inf, -0.7, 0.1, -inf}));
  eng_tensor *mask = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 3}), ((double[]){1, 0, 1, 0, 0, 0, 1, 1, 0}));
  eng_set_requires_grad(m, true);
  for (int lp = 0; lp < 2; lp++) {
    scase c = {lp, false, 1, lp ? mask : NULL};
    CHECK_GRAD(softmax_fn, &c, &m, 1);
    CHECK(eng_grad(m) && at(eng_grad(m), 1) == 0 && at(eng_grad(m), 4) == 0);
  }
  eng_tensor *ts[] = {base, leaf, m, mask};
  for (size_t i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

/* the backward accepts a non-contiguous incoming gradient */
static void test_strided_gradient(void) {
  eng_tensor *x = T(ENG_DTYPE_F64, 2, S23, ((double[]){0.1, -0.4, 0.9, 1.5, 0.2, -1}));
  eng_set_requires_grad(x, true);
  eng_tensor *g0 = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 2}), ((double[]){1, 4, 2, 5, 3, 6}));
  eng_tensor *g = eng_transpose(g0, 0, 1); /* [[1,2,3],[4,5,6]] */
  eng_tensor *y = eng_softmax(x, 1);
  CHECK(eng_backward(y, g) == 0);
  for (int i = 0; i < 2; i++) {
    double sg = 0;
    for (int j = 0; j < 3; j++) sg += (1 + 3 * i + j) * at(y, 3 * i + j);
    for (int j = 0; j < 3; j++)
      CHECK_CLOSE(at(eng_grad(x), 3 * i + j), at(y, 3 * i + j) * ((1 + 3 * i + j) - sg), 1e-14);
  }
  eng_tensor *ts[] = {x, g0, g, y};
  for (size_t i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

int main(void) {
  RUN(test_values);
  RUN(test_extremes);
  RUN(test_expf);
  RUN(test_threaded);
  RUN(test_gradients);
  RUN(test_strided_gradient);
  DONE();
}
