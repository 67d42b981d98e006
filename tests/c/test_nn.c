/* test_nn.c — embedding, layer norm, RMS norm and dropout: values worked by
 * hand, float64 gradient checks (with and without weight/bias, on strided
 * and permuted inputs, with repeated ids), extremes (constant rows, large
 * offsets), dropout's mask statistics and its seed determinism, and the
 * exact error messages. */
#include "check.h"
#include "internal.h"

#define SH(...) ((int64_t[]){__VA_ARGS__})
#define F32 ENG_DTYPE_F32
#define F64 ENG_DTYPE_F64

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  return t;
}

static eng_tensor *leaf(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape) {
  eng_tensor *t = randn(dt, seed, nd, shape);
  eng_set_requires_grad(t, true);
  return t;
}

/* a leaf view over fresh random storage with the given layout */
static eng_tensor *view_leaf(uint64_t seed, int64_t storage, int nd, const int64_t *shape,
                             const int64_t *stride, int64_t offset) {
  eng_tensor *base = randn(F64, seed, 1, &storage);
  eng_tensor *v = tensor_view(base, nd, shape, stride, offset);
  eng_tensor_release(base);
  eng_set_requires_grad(v, true);
  return v;
}

/* loss = sum(out ⊙ R) with a fixed random R */
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

static void release_all(eng_tensor **ts, int n) {
  for (int i = 0; i < n; i++) eng_tensor_release(ts[i]);
}

/* ==== embedding ============================================================ */

static void test_embedding_values(void) {
  eng_tensor *w = T(F32, 2, SH(4, 3), ((double[]){0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32}));
  eng_tensor *ids = T(F32, 2, SH(2, 2), ((double[]){1, 3, 1, 0}));
  eng_tensor *e = eng_embedding(w, ids);
  CHECK(e && eng_tensor_ndim(e) == 3);
  CHECK(e && eng_tensor_shape(e)[0] == 2 && eng_tensor_shape(e)[1] == 2 && eng_tensor_shape(e)[2] == 3);
  double expect[] = {10, 11, 12, 30, 31, 32, 10, 11, 12, 0, 1, 2};
  for (int i = 0; e && i < 12; i++) CHECK_CLOSE(at(e, i), expect[i], 0);
  /* 0-dim ids give one row; float64 ids work the same */
  eng_tensor *one = eng_full(F64, 0, NULL, 2);
  eng_tensor *r = eng_embedding(w, one);
  CHECK(r && eng_tensor_ndim(r) == 1 && eng_tensor_shape(r)[0] == 3);
  CHECK_CLOSE(r ? at(r, 2) : -1, 22, 0);
  eng_tensor *all[] = {w, ids, e, one, r};
  release_all(all, 5);
}

typedef struct {
  eng_tensor *ids;
} emb_ctx;

static eng_tensor *emb_loss(eng_tensor **in, void *ctx) {
  return weighted_sum(eng_embedding(in[0], ((emb_ctx *)ctx)->ids));
}

static void test_embedding_grad(void) {
  /* ids repeat 2 three times and 0 twice; rows 1 and 4 are unused */
  eng_tensor *ids = T(F64, 2, SH(2, 4), ((double[]){2, 0, 2, 3, 0, 2, 3, 3}));
  emb_ctx c = {ids};
  eng_tensor *w = leaf(F64, 1, 2, SH(5, 3));
  CHECK_GRAD(emb_loss, &c, &w, 1);
  /* the scatter-add by hand: dW[v] = sum of g over positions with id v */
  eng_tensor *g = randn(F64, 2, 3, SH(2, 4, 3));
  eng_set_grad(w, NULL);
  eng_tensor *e = eng_embedding(w, ids);
  CHECK(e && eng_backward(e, g) == 0);
  eng_tensor *dw = eng_grad(w);
  CHECK(dw != NULL);
  for (int v = 0; dw && v < 5; v++)
    for (int ch = 0; ch < 3; ch++) {
      double s = 0;
      for (int i = 0; i < 8; i++)
        if ((int)at(ids, i) == v) s += at(g, i * 3 + ch);
      CHECK_CLOSE(at(dw, v * 3 + ch), s, 1e-14);
    }
  CHECK(dw && at(dw, 1 * 3) == 0 && at(dw, 4 * 3 + 2) == 0);
  /* a weight stored transposed: (5,3) with strides (1,5) */
  eng_tensor *wt = view_leaf(3, 15, 2, SH(5, 3), SH(1, 5), 0);
  CHECK_GRAD(emb_loss, &c, &wt, 1);
  /* many rows and a wide dim: the threaded paths */
  int64_t n = 4096;
  eng_tensor *big_ids = eng_empty(F64, 1, &n);
  for (int64_t i = 0; i < n; i++) ((double *)eng_tensor_data(big_ids))[i] = (double)((i * 7) % 11);
  eng_tensor *bw = leaf(F64, 4, 2, SH(11, 80));
  eng_tensor *be = eng_embedding(bw, big_ids);
  eng_tensor *ones = eng_full(F64, 2, SH(n, 80), 1.0);
  CHECK(be && eng_backward(be, ones) == 0);
  /* each id 0..10 occurs 4096/11 times, rounded by position */
  for (int v = 0; eng_grad(bw) && v < 11; v++) {
    int cnt = 0;
    for (int64_t i = 0; i < n; i++) cnt += (i * 7) % 11 == v;
    CHECK_CLOSE(at(eng_grad(bw), v * 80 + 79), cnt, 0);
  }
  CHECK_CLOSE(be ? at(be, 5 * 80 + 3) : 0, at(bw, ((5 * 7) % 11) * 80 + 3), 0);
  eng_tensor *all[] = {ids, w, g, e, wt, big_ids, bw, be, ones};
  release_all(all, 9);
}

static void test_embedding_errors(void) {
  eng_tensor *w = randn(F32, 5, 2, SH(5, 3)), *w1 = randn(F32, 6, 1, SH(5));
  eng_tensor *bad = T(F32, 1, SH(4), ((double[]){0, 1, 4, 5}));
  eng_tensor *neg = T(F32, 1, SH(2), ((double[]){0, -1}));
  eng_tensor *frac = T(F32, 1, SH(2), ((double[]){0, 1.5}));
  CHECK_FAILS(eng_embedding(w, bad), "embedding: index 5 at [4] is out of range [0, 5)");
  CHECK_FAILS(eng_embedding(w, neg), "embedding: index -1 at [2] is out of range [0, 5)");
  CHECK_FAILS(eng_embedding(w, frac), "embedding: index 1.5 at [2] is not an integer");
  CHECK_FAILS(eng_embedding(w1, bad), "embedding: weight is [5], expected 2 dims (V,C)");
  eng_tensor *all[] = {w, w1, bad, neg, frac};
  release_all(all, 5);
}

/* ==== layer norm / RMS norm ================================================= */

static void test_norm_values(void) {
  /* row [1 2 3 4]: mean 2.5, var 1.25; row [5 5 5 5]: var 0 */
  eng_tensor *x = T(F32, 2, SH(2, 4), ((double[]){1, 2, 3, 4, 5, 5, 5, 5}));
  eng_tensor *w = T(F32, 1, SH(4), ((double[]){1, 2, 3, 4}));
  eng_tensor *b = T(F32, 1, SH(4), ((double[]){0.5, 0, -0.5, 1}));
  double eps = 1e-5, rs = 1 / sqrt(1.25 + eps);
  eng_tensor *y = eng_layer_norm(x, w, b, eps);
  CHECK(y != NULL);
  for (int c = 0; y && c < 4; c++) {
    CHECK_CLOSE(at(y, c), (c + 1 - 2.5) * rs * (c + 1) + at(b, c), 1e-5);
    CHECK_CLOSE(at(y, 4 + c), at(b, c), 1e-6); /* a constant row gives the bias */
  }
  eng_tensor *y0 = eng_layer_norm(x, NULL, NULL, eps);
  CHECK_CLOSE(y0 ? at(y0, 0) : 0, -1.5 * rs, 1e-6);
  CHECK_CLOSE(y0 ? at(y0, 5) : 1, 0, 0);
  /* RMS norm of [3 4]: mean square 12.5 */
  eng_tensor *x2 = T(F64, 1, SH(2), ((double[]){3, 4}));
  eng_tensor *w2 = T(F64, 1, SH(2), ((double[]){2, -1}));
  eng_tensor *r = eng_rms_norm(x2, w2, 0.5);
  CHECK_CLOSE(r ? at(r, 0) : 0, 3 / sqrt(13.0) * 2, 1e-14);
  CHECK_CLOSE(r ? at(r, 1) : 0, 4 / sqrt(13.0) * -1, 1e-14);
  eng_tensor *r0 = eng_rms_norm(x2, NULL, 0);
  CHECK_CLOSE(r0 ? at(r0, 1) : 0, 4 / sqrt(12.5), 1e-14);
  eng_tensor *all[] = {x, w, b, y, y0, x2, w2, r, r0};
  release_all(all, 9);
}

/* a large common offset: two-pass statistics keep float32 accurate */
static void test_norm_extremes(void) {
  int64_t C = 256;
  eng_tensor *x = randn(F64, 10, 2, SH(3, C));
  eng_tensor *shift = eng_full(F64, 0, NULL, 1e4);
  eng_tensor *xs = eng_add(x, shift);
  eng_tensor *x32 = eng_to_dtype(xs, F32);
  /* the reference sees the same rounded inputs, in float64 */
  eng_tensor *x32up = eng_to_dtype(x32, F64);
  eng_tensor *ref = eng_layer_norm(x32up, NULL, NULL, 1e-5);
  eng_tensor *y = eng_layer_norm(x32, NULL, NULL, 1e-5);
  double worst = 0;
  for (int64_t i = 0; y && ref && i < 3 * C; i++) worst = fmax(worst, fabs(at(y, i) - at(ref, i)));
  CHECK_CLOSE(worst, 0, 1e-4);
  /* an all-zero row with eps = 0 gives NaN (0/0), as the formula says; eps > 0 gives 0 */
  eng_tensor *z = eng_zeros(F32, 1, SH(4));
  eng_tensor *zn = eng_rms_norm(z, NULL, 0), *zp = eng_rms_norm(z, NULL, 1e-6);
  CHECK(zn && isnan(at(zn, 0)));
  CHECK(zp && at(zp, 0) == 0);
  /* float32 and float64 agree */
  eng_tensor *y64 = eng_rms_norm(x, NULL, 1e-6), *x32b = eng_to_dtype(x, F32);
  eng_tensor *y32 = eng_rms_norm(x32b, NULL, 1e-6);
  worst = 0;
  for (int64_t i = 0; y32 && y64 && i < 3 * C; i++) worst = fmax(worst, fabs(at(y32, i) - at(y64, i)));
  CHECK_CLOSE(worst, 0, 1e-5);
  eng_tensor *all[] = {x, shift, xs, x32, x32up, ref, y, z, zn, zp, y64, x32b, y32};
  release_all(all, 13);
}

typedef struct {
  int has_w, has_b;
  bool rms;
} norm_ctx;

/* inputs: x, then w and b as the ctx says */
static eng_tensor *norm_loss(eng_tensor **in, void *vctx) {
  norm_ctx *c = vctx;
  eng_tensor *w = c->has_w ? in[1] : NULL, *b = c->has_b ? in[c->has_w ? 2 : 1] : NULL;
  return weighted_sum(c->rms ? eng_rms_norm(in[0], w, 1e-3) : eng_layer_norm(in[0], w, b, 1e-3));
}

static void gradcheck_norm(eng_tensor *x, bool rms, int has_w, int has_b) {
  int64_t C = eng_tensor_shape(x)[eng_tensor_ndim(x) - 1];
  eng_tensor *in[3] = {x, NULL, NULL};
  int n = 1;
  if (has_w) in[n++] = leaf(F64, 200, 1, &C);
  if (has_b) in[n++] = leaf(F64, 201, 1, &C);
  norm_ctx c = {has_w, has_b, rms};
  CHECK_GRAD(norm_loss, &c, in, n);
  release_all(in, n);
}

static void test_layer_norm_grad(void) {
  for (int w = 0; w < 2; w++)
    for (int b = 0; b < 2; b++) gradcheck_norm(leaf(F64, 210, 2, SH(3, 5)), false, w, b);
  /* transposed input: (3,5) with strides (1,3), copied to rows */
  gradcheck_norm(view_leaf(211, 15, 2, SH(3, 5), SH(1, 3), 0), false, 1, 1);
  /* narrowed rows: (3,5) out of (3,7) from column 1, read in place */
  gradcheck_norm(view_leaf(212, 21, 2, SH(3, 5), SH(7, 1), 1), false, 1, 1);
  /* permuted leading dims: (2,3,4) with strides (4,8,1), rows through offsets */
  gradcheck_norm(view_leaf(213, 24, 3, SH(2, 3, 4), SH(4, 8, 1), 0), false, 1, 0);
  /* a single feature: x - mean is 0, so dx is 0 and y is the bias */
  gradcheck_norm(leaf(F64, 214, 2, SH(4, 1)), false, 1, 1);
}

static void test_rms_norm_grad(void) {
  gradcheck_norm(leaf(F64, 220, 2, SH(3, 5)), true, 0, 0);
  gradcheck_norm(leaf(F64, 221, 3, SH(2, 2, 5)), true, 1, 0);
  gradcheck_norm(view_leaf(222, 15, 2, SH(3, 5), SH(1, 3), 0), true, 1, 0);
  gradcheck_norm(view_leaf(223, 24, 3, SH(2, 3, 4), SH(4, 8, 1), 0), true, 1, 0);
  gradcheck_norm(leaf(F64, 224, 1, SH(6)), true, 1, 0);
}

/* big enough for the threaded loops; the parameter grads match a serial sum */
static void test_norm_threaded(void) {
  int64_t R = 512, C = 96;
  eng_tensor *x = leaf(F64, 230, 2, SH(R, C)), *w = leaf(F64, 231, 1, &C), *b = leaf(F64, 232, 1, &C);
  eng_tensor *g = randn(F64, 233, 2, SH(R, C));
  eng_tensor *y = eng_layer_norm(x, w, b, 1e-5);
  CHECK(y && eng_backward(y, g) == 0);
  for (int64_t c = 0; eng_grad(w) && c < C; c += 19) {
    double sw = 0, sb = 0;
    for (int64_t r = 0; r < R; r++) {
      double mu = 0, var = 0;
      for (int64_t k = 0; k < C; k++) mu += at(x, r * C + k) / C;
      for (int64_t k = 0; k < C; k++) var += (at(x, r * C + k) - mu) * (at(x, r * C + k) - mu) / C;
      sw += at(g, r * C + c) * (at(x, r * C + c) - mu) / sqrt(var + 1e-5);
      sb += at(g, r * C + c);
    }
    CHECK_CLOSE(at(eng_grad(w), c), sw, 1e-9);
    CHECK_CLOSE(at(eng_grad(b), c), sb, 1e-9);
  }
  eng_tensor *all[] = {x, w, b, g, y};
  release_all(all, 5);
}

static void test_norm_errors(void) {
  eng_tensor *x = randn(F32, 240, 2, SH(2, 4)), *w5 = randn(F32, 241, 1, SH(5));
  eng_tensor *w64 = randn(F64, 242, 1, SH(4)), *s = eng_full(F32, 0, NULL, 1);
  CHECK_FAILS(eng_layer_norm(x, w5, NULL, 1e-5),
              "layer_norm: weight is [5], expected [4] (the last dim of x [2,4])");
  CHECK_FAILS(eng_layer_norm(x, NULL, w5, 1e-5),
              "layer_norm: bias is [5], expected [4] (the last dim of x [2,4])");
  CHECK_FAILS(eng_rms_norm(x, w5, 1e-5), "rms_norm: weight is [5], expected [4] (the last dim of x [2,4])");
  CHECK_FAILS(eng_layer_norm(x, w64, NULL, 1e-5), "layer_norm: dtypes differ (float32 and float64)");
  CHECK_FAILS(eng_layer_norm(x, NULL, NULL, -1), "layer_norm: eps must be finite and >= 0, got -1");
  CHECK_FAILS(eng_rms_norm(x, NULL, NAN), "rms_norm: eps must be finite and >= 0, got nan");
  CHECK_FAILS(eng_rms_norm(s, NULL, 1e-5), "rms_norm: x is []: it needs at least one dim");
  eng_tensor *all[] = {x, w5, w64, s};
  release_all(all, 4);
}

/* ==== dropout ================================================================ */

static void test_dropout_p0_and_errors(void) {
  eng_tensor *x = randn(F32, 300, 1, SH(10));
  eng_tensor *y = eng_dropout(x, 0, NULL);
  CHECK(y == x);
  eng_tensor_release(y);
  CHECK_FAILS(eng_dropout(x, 1, NULL), "dropout: p must be in [0, 1), got 1");
  CHECK_FAILS(eng_dropout(x, -0.1, NULL), "dropout: p must be in [0, 1), got -0.1");
  CHECK_FAILS(eng_dropout(x, NAN, NULL), "dropout: p must be in [0, 1), got nan");
  /* the default generator is used when none is given */
  eng_tensor *d = eng_dropout(x, 0.5, NULL);
  CHECK(d && eng_tensor_numel(d) == 10);
  eng_tensor_release(d);
  eng_tensor_release(x);
}

/* the mask follows x's logical order, one uniform per element: u >= p keeps */
static void check_mask(eng_tensor *x, eng_tensor *y, double p, uint64_t seed) {
  eng_rng *ref = eng_rng_new(seed);
  int bad = 0;
  for (int64_t i = 0; i < eng_tensor_numel(x); i++) {
    double e = eng_rng_uniform(ref) >= p ? at(x, i) / (1 - p) : 0;
    if (fabs(at(y, i) - e) > 1e-6 * (1 + fabs(e))) bad++;
  }
  CHECK(bad == 0);
  eng_rng_free(ref);
}

static void test_dropout_determinism(void) {
  eng_tensor *x = randn(F32, 310, 2, SH(7, 9));
  eng_rng *r1 = eng_rng_new(42), *r2 = eng_rng_new(42), *r3 = eng_rng_new(43);
  eng_tensor *a = eng_dropout(x, 0.25, r1), *b = eng_dropout(x, 0.25, r2), *c = eng_dropout(x, 0.25, r3);
  int same = 0, diff = 0;
  for (int i = 0; i < 63; i++) {
    same += at(a, i) == at(b, i);
    diff += at(a, i) != at(c, i);
  }
  CHECK(same == 63);
  CHECK(diff > 0);
  check_mask(x, a, 0.25, 42);
  /* a transposed input: the mask is still in logical order */
  eng_tensor *base = randn(F64, 311, 2, SH(9, 7));
  eng_tensor *xt = tensor_view(base, 2, SH(7, 9), SH(1, 7), 0);
  eng_rng_seed(r1, 5);
  eng_tensor *yt = eng_dropout(xt, 0.5, r1);
  CHECK(yt != NULL);
  if (yt) check_mask(xt, yt, 0.5, 5);
  eng_rng_free(r1);
  eng_rng_free(r2);
  eng_rng_free(r3);
  eng_tensor *all[] = {x, a, b, c, base, xt, yt};
  release_all(all, 7);
}

static void test_dropout_statistics(void) {
  int64_t n = 200000;
  eng_tensor *x = eng_full(F32, 1, &n, 1.0);
  eng_rng *r = eng_rng_new(7);
  double p = 0.3;
  eng_tensor *y = eng_dropout(x, p, r);
  int64_t kept = 0;
  double sum = 0;
  bool values_ok = true;
  for (int64_t i = 0; y && i < n; i++) {
    double v = at(y, i);
    kept += v != 0;
    sum += v;
    if (v != 0 && fabs(v - 1 / (1 - p)) > 1e-6) values_ok = false;
  }
  /* the kept fraction's standard deviation is sqrt(p(1-p)/n) ~ 0.001 */
  CHECK_CLOSE((double)kept / n, 1 - p, 0.005);
  CHECK_CLOSE(sum / n, 1.0, 0.01);
  CHECK(values_ok);
  /* no long runs: neighbouring elements are independent */
  int64_t both = 0;
  for (int64_t i = 0; y && i + 1 < n; i++) both += at(y, i) != 0 && at(y, i + 1) != 0;
  CHECK_CLOSE((double)both / (n - 1), (1 - p) * (1 - p), 0.005);
  eng_rng_free(r);
  eng_tensor_release(x);
  eng_tensor_release(y);
}

static eng_tensor *dropout_loss(eng_tensor **in, void *ctx) {
  eng_rng *r = ctx;
  eng_rng_seed(r, 11); /* the same mask on every evaluation */
  return weighted_sum(eng_dropout(in[0], 0.4, r));
}

static void test_dropout_grad(void) {
  eng_rng *r = eng_rng_new(11);
  eng_tensor *x = leaf(F64, 320, 2, SH(4, 6));
  CHECK_GRAD(dropout_loss, r, &x, 1);
  eng_tensor *xt = view_leaf(321, 24, 2, SH(4, 6), SH(1, 4), 0);
  CHECK_GRAD(dropout_loss, r, &xt, 1);
  /* d/dx = mask/(1-p): with g = 1 the grad equals y/x */
  eng_set_grad(x, NULL);
  eng_rng_seed(r, 12);
  eng_tensor *y = eng_dropout(x, 0.4, r);
  eng_tensor *ones = eng_full(F64, 2, SH(4, 6), 1);
  CHECK(y && eng_backward(y, ones) == 0);
  for (int i = 0; eng_grad(x) && i < 24; i++) CHECK_CLOSE(at(eng_grad(x), i), at(y, i) / at(x, i), 1e-12);
  eng_rng_free(r);
  eng_tensor *all[] = {x, xt, y, ones};
  release_all(all, 4);
}

int main(void) {
  eng_set_threads(2);
  RUN(test_embedding_values);
  RUN(test_embedding_grad);
  RUN(test_embedding_errors);
  RUN(test_norm_values);
  RUN(test_norm_extremes);
  RUN(test_layer_norm_grad);
  RUN(test_rms_norm_grad);
  RUN(test_norm_threaded);
  RUN(test_norm_errors);
  RUN(test_dropout_p0_and_errors);
  RUN(test_dropout_determinism);
  RUN(test_dropout_statistics);
  RUN(test_dropout_grad);
  DONE();
}
