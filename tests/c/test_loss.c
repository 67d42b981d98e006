/* test_loss.c — eng_cross_entropy and eng_token_logprobs against log-softmax
 * computed by hand here, float64 finite-difference gradient checks (ignored
 * rows, strided logits, -inf vocabulary masks), the extremes (|logits| ~ 1e4,
 * all -inf rows, NaN), the parallel path in float32, the memory the forward
 * keeps, and the exact error messages. */
#include "check.h"
#include "internal.h"

/* log softmax(row)[y] of a row read through eng_tensor_get_flat, in double */
static double hand_logprob(const eng_tensor *x, int64_t row, int64_t V, int64_t y) {
  double m = -INFINITY;
  for (int64_t j = 0; j < V; j++) m = fmax(m, at(x, row * V + j));
  if (m == -INFINITY) return -INFINITY;
  double s = 0;
  for (int64_t j = 0; j < V; j++) s += exp(at(x, row * V + j) - m);
  return at(x, row * V + y) - m - log(s);
}

static double hand_softmax(const eng_tensor *x, int64_t row, int64_t V, int64_t j) {
  return exp(hand_logprob(x, row, V, j));
}

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape, bool grad) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  if (grad) eng_set_requires_grad(t, true);
  return t;
}

static bool all_finite(const eng_tensor *t) {
  for (int64_t i = 0; i < eng_tensor_numel(t); i++)
    if (!isfinite(at(t, i))) return false;
  return true;
}

/* ---- scalar functions for the gradient checks -------------------------------- */

typedef struct {
  eng_tensor *labels, *w;
  int64_t ignore;
} loss_ctx;

static eng_tensor *ce_fn(eng_tensor **in, void *vctx) {
  loss_ctx *c = vctx;
  return eng_cross_entropy(in[0], c->labels, c->ignore);
}

/* Σ w·token_logprobs, so every position gets its own weight */
static eng_tensor *tlp_fn(eng_tensor **in, void *vctx) {
  loss_ctx *c = vctx;
  eng_tensor *lp = eng_token_logprobs(in[0], c->labels);
  eng_tensor *m = lp ? eng_mul(lp, c->w) : NULL;
  eng_tensor *s = m ? eng_sum(m, ENG_ALL_DIMS, false) : NULL;
  eng_tensor_release(lp);
  eng_tensor_release(m);
  return s;
}

/* ---- cross entropy ------------------------------------------------------------- */

static void test_ce_values(void) {
  int64_t xs[3] = {2, 3, 5};
  double tv[6] = {1, -100, 4, 0, 2, -100};
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    eng_tensor *x = randn(dt, 1, 3, xs, true), *t = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), tv);
    double want = 0;
    int n = 0;
    for (int r = 0; r < 6; r++)
      if (tv[r] != -100) want -= hand_logprob(x, r, 5, (int64_t)tv[r]), n++;
    want /= n;
    eng_tensor *L = eng_cross_entropy(x, t, -100);
    CHECK(L && eng_tensor_ndim(L) == 0 && eng_tensor_dtype(L) == dt);
    CHECK_CLOSE(at(L, 0), want, f64 ? 1e-12 : 1e-6);
    /* d/dx = (softmax − onehot)/n on kept rows, 0 on ignored rows */
    CHECK(eng_backward(L, NULL) == 0);
    eng_tensor *g = eng_grad(x);
    double worst = 0;
    for (int r = 0; r < 6; r++)
      for (int j = 0; j < 5; j++) {
        double e = tv[r] == -100 ? 0 : (hand_softmax(x, r, 5, j) - (j == tv[r])) / n;
        worst = fmax(worst, fabs(at(g, r * 5 + j) - e));
      }
    CHECK_CLOSE(worst, 0, f64 ? 1e-12 : 1e-6);
    CHECK(at(g, 5) == 0 && at(g, 29) == 0);
    eng_tensor_release(L);
    /* a positive ignore_index: the targets equal to 2 are skipped */
    eng_tensor *t2 = T(ENG_DTYPE_F64, 1, ((int64_t[]){3}), ((double[]){2, 0, 2}));
    eng_tensor *x2 = eng_narrow(x, 0, 0, 1);
    eng_tensor *x2r = eng_reshape(x2, 2, (int64_t[]){3, 5});
    L = eng_cross_entropy(x2r, t2, 2);
    CHECK_CLOSE(at(L, 0), -hand_logprob(x, 1, 5, 0), f64 ? 1e-12 : 1e-6);
    eng_tensor_release(L);
    eng_tensor_release(x2r);
    eng_tensor_release(x2);
    eng_tensor_release(t2);
    eng_tensor_release(t);
    eng_tensor_release(x);
  }
}

static void test_ce_all_ignored(void) {
  eng_tensor *x = randn(ENG_DTYPE_F64, 2, 2, (int64_t[]){3, 4}, true);
  eng_tensor *t = eng_full(ENG_DTYPE_F64, 1, (int64_t[]){3}, -1);
  eng_tensor *L = eng_cross_entropy(x, t, -1);
  CHECK(L && at(L, 0) == 0);
  CHECK(eng_backward(L, NULL) == 0);
  bool zero = true;
  for (int i = 0; i < 12; i++) zero = zero && at(eng_grad(x), i) == 0;
  CHECK(zero);
  eng_tensor_release(L);
  eng_tensor_release(t);
  eng_tensor_release(x);
}

static void test_ce_gradcheck(void) {
  int64_t xs[3] = {2, 3, 5};
  eng_tensor *x = t_randn64(3, 3, xs);
  loss_ctx c = {.labels = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){1, -100, 4, 0, 2, 3})),
                .ignore = -100};
  CHECK_GRAD(ce_fn, &c, &x, 1);
  eng_tensor_release(x);
  /* strided logits: positions 1..3 of a (2,4,5) leaf (a shifted LM window) */
  eng_rng *r = eng_rng_new(4);
  eng_tensor *base = eng_randn(r, ENG_DTYPE_F64, 3, (int64_t[]){2, 4, 5});
  eng_rng_free(r);
  x = tensor_view(base, 3, xs, (int64_t[]){20, 5, 1}, 5);
  eng_set_requires_grad(x, true);
  CHECK(!eng_tensor_is_contiguous(x));
  double v = 0;
  for (int row = 0; row < 6; row++) {
    int y[6] = {1, -1, 4, 0, 2, 3};
    if (y[row] >= 0) v -= hand_logprob(x, row, 5, y[row]);
  }
  eng_tensor *L = eng_cross_entropy(x, c.labels, -100);
  CHECK_CLOSE(at(L, 0), v / 5, 1e-12);
  eng_tensor_release(L);
  CHECK_GRAD(ce_fn, &c, &x, 1);
  eng_tensor_release(x);
  eng_tensor_release(base);
  /* vocabulary dim not unit-stride: a (5,6) leaf seen as (6,5) */
  r = eng_rng_new(5);
  base = eng_randn(r, ENG_DTYPE_F64, 2, (int64_t[]){5, 6});
  eng_rng_free(r);
  x = tensor_view(base, 2, (int64_t[]){6, 5}, (int64_t[]){1, 6}, 0);
  eng_set_requires_grad(x, true);
  eng_tensor *lab = eng_reshape(c.labels, 1, (int64_t[]){6});
  loss_ctx c2 = {.labels = lab, .ignore = -100};
  CHECK_GRAD(ce_fn, &c2, &x, 1);
  eng_tensor_release(lab);
  eng_tensor_release(x);
  eng_tensor_release(base);
  eng_tensor_release(c.labels);
}

/* ---- token log-probabilities ------------------------------------------------ */

static void test_tlp_values(void) {
  int64_t xs[3] = {2, 3, 6};
  double lv[6] = {0, 5, -1, 3, -100, 2};
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    eng_tensor *x = randn(dt, 6, 3, xs, true), *lab = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), lv);
    eng_tensor *lp = eng_token_logprobs(x, lab);
    CHECK(lp && eng_tensor_ndim(lp) == 2 && eng_tensor_shape(lp)[0] == 2 && eng_tensor_shape(lp)[1] == 3);
    CHECK(strcmp(eng_grad_fn_name(lp), "token_logprobs") == 0);
    double worst = 0;
    for (int r = 0; r < 6; r++) {
      double want = lv[r] < 0 ? 0 : hand_logprob(x, r, 6, (int64_t)lv[r]);
      worst = fmax(worst, fabs(at(lp, r) - want));
    }
    CHECK_CLOSE(worst, 0, f64 ? 1e-12 : 1e-6);
    CHECK(at(lp, 2) == 0 && at(lp, 4) == 0);
    /* d/dx_r = g_r·(onehot − softmax), 0 where the label is < 0 */
    double gv[6] = {1, -2, 3, 0.5, 7, -1};
    eng_tensor *g = T(dt, 2, ((int64_t[]){2, 3}), gv);
    CHECK(eng_backward(lp, g) == 0);
    worst = 0;
    for (int r = 0; r < 6; r++)
      for (int j = 0; j < 6; j++) {
        double e = lv[r] < 0 ? 0 : gv[r] * ((j == lv[r]) - hand_softmax(x, r, 6, j));
        worst = fmax(worst, fabs(at(eng_grad(x), r * 6 + j) - e));
      }
    CHECK_CLOSE(worst, 0, f64 ? 1e-12 : 1e-6);
    eng_tensor_release(g);
    eng_tensor_release(lp);
    eng_tensor_release(lab);
    eng_tensor_release(x);
  }
  /* 1-D logits: one position, a 0-dim result */
  eng_tensor *x = T(ENG_DTYPE_F64, 1, ((int64_t[]){3}), ((double[]){0, 0, 0}));
  eng_tensor *lab = T(ENG_DTYPE_F64, 0, ((int64_t[]){1}), ((double[]){1})); /* 0 dims */
  eng_tensor *lp = eng_token_logprobs(x, lab);
  CHECK(lp && eng_tensor_ndim(lp) == 0);
  CHECK_CLOSE(at(lp, 0), -log(3.0), 1e-15);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(x);
}

static void test_tlp_gradcheck(void) {
  int64_t xs[3] = {2, 3, 5};
  eng_tensor *x = t_randn64(7, 3, xs);
  loss_ctx c = {.labels = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){4, -1, 0, 2, 2, -7})),
                .w = randn(ENG_DTYPE_F64, 8, 2, (int64_t[]){2, 3}, false)};
  CHECK_GRAD(tlp_fn, &c, &x, 1);
  /* masked vocabulary: -inf logits stay -inf-free in the output and get 0 */
  double *d = eng_tensor_data(x);
  d[0] = d[7] = d[13] = d[14] = -INFINITY;
  eng_tensor *lp = eng_token_logprobs(x, c.labels);
  CHECK(all_finite(lp));
  CHECK_CLOSE(at(lp, 3), hand_logprob(x, 3, 5, 2), 1e-12);
  eng_tensor_release(lp);
  CHECK_GRAD(tlp_fn, &c, &x, 1);
  CHECK(all_finite(eng_grad(x)) && at(eng_grad(x), 7) == 0 && at(eng_grad(x), 13) == 0);
  eng_tensor_release(x);
  /* strided logits (narrowed along positions) and strided labels */
  eng_rng *r = eng_rng_new(9);
  eng_tensor *base = eng_randn(r, ENG_DTYPE_F64, 3, (int64_t[]){2, 4, 5});
  eng_rng_free(r);
  x = tensor_view(base, 3, xs, (int64_t[]){20, 5, 1}, 0);
  eng_set_requires_grad(x, true);
  eng_tensor *lt = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 2}), ((double[]){4, 2, -1, 2, 0, 1}));
  eng_tensor *labt = eng_transpose(lt, 0, 1); /* [[4,-1,0],[2,2,1]] */
  loss_ctx c2 = {.labels = labt, .w = c.w};
  lp = eng_token_logprobs(x, labt);
  CHECK_CLOSE(at(lp, 5), hand_logprob(x, 5, 5, 1), 1e-12);
  CHECK(at(lp, 1) == 0);
  eng_tensor_release(lp);
  CHECK_GRAD(tlp_fn, &c2, &x, 1);
  eng_tensor_release(x);
  eng_tensor_release(base);
  eng_tensor_release(labt);
  eng_tensor_release(lt);
  eng_tensor_release(c.labels);
  eng_tensor_release(c.w);
}

/* ---- extremes ----------------------------------------------------------------- */

static void test_extremes(void) {
  /* |logits| ~ 1e4: exp would overflow without the max shift */
  double xv[8] = {1e4, -1e4, 9999.5, 0, -2e4, -1.5e4, -1e4, -9990};
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    eng_tensor *x = T(dt, 2, ((int64_t[]){2, 4}), xv);
    eng_set_requires_grad(x, true);
    eng_tensor *lab = T(ENG_DTYPE_F64, 1, ((int64_t[]){2}), ((double[]){2, 1}));
    eng_tensor *lp = eng_token_logprobs(x, lab);
    CHECK(all_finite(lp));
    /* row 0: log(e^-0.5 / (1 + e^-0.5 + ~0)); row 1: -1.5e4 - (-9990) - log(1 + ...) */
    double l0 = -0.5 - log(1 + exp(-0.5)),
           l1 = -15000 + 9990 - log(1 + exp(-10.0) + exp(-5010.0) + exp(-10010.0));
    CHECK_CLOSE(at(lp, 0), l0, 1e-6);
    CHECK_CLOSE(at(lp, 1), l1, f64 ? 1e-9 : 2e-3);
    eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    CHECK(all_finite(eng_grad(x)));
    CHECK_CLOSE(at(eng_grad(x), 0), -1 / (1 + exp(-0.5)), 1e-6);
    eng_tensor *L = eng_cross_entropy(x, lab, -100);
    CHECK(L && isfinite(at(L, 0)));
    CHECK_CLOSE(at(L, 0), -(l0 + l1) / 2, f64 ? 1e-9 : 2e-3);
    eng_tensor_release(L);
    eng_tensor_release(s);
    eng_tensor_release(lp);
    eng_tensor_release(lab);
    eng_tensor_release(x);
  }
  /* a row of all -inf: log-prob -inf, loss +inf, gradient 0 (no NaN);
   * a NaN logit propagates to its row only */
  double nv[6] = {-INFINITY, -INFINITY, -INFINITY, 1, NAN, 2};
  eng_tensor *x = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), nv);
  eng_set_requires_grad(x, true);
  eng_tensor *lab = T(ENG_DTYPE_F64, 1, ((int64_t[]){2}), ((double[]){1, 0}));
  eng_tensor *lab0 = T(ENG_DTYPE_F64, 1, ((int64_t[]){2}), ((double[]){1, -1}));
  eng_tensor *lp = eng_token_logprobs(x, lab);
  CHECK(isinf(at(lp, 0)) && at(lp, 0) < 0);
  CHECK(isnan(at(lp, 1)));
  eng_tensor_release(lp);
  lp = eng_token_logprobs(x, lab0);
  eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s, NULL) == 0);
  bool zero = true;
  for (int i = 0; i < 6; i++) zero = zero && at(eng_grad(x), i) == 0;
  CHECK(zero);
  eng_tensor *L = eng_cross_entropy(x, lab0, -1);
  CHECK(isinf(at(L, 0)) && at(L, 0) > 0);
  eng_tensor_release(L);
  eng_tensor_release(s);
  eng_tensor_release(lp);
  eng_tensor_release(lab0);
  eng_tensor_release(lab);
  eng_tensor_release(x);
}

/* float32 big enough for the threaded path (N·V >= PARALLEL_MIN), with long
 * rows that span several blocks of the online logsumexp */
static void test_parallel_f32(void) {
  int64_t xs[3] = {4, 16, 1500}, N = 64, V = 1500;
  eng_tensor *x = randn(ENG_DTYPE_F32, 10, 3, xs, true);
  float *xd = eng_tensor_data(x);
  for (int64_t r = 0; r < N; r++) xd[r * V + (r * 37) % V] += 8.0f + (float)r; /* growing maxima */
  double lv[64];
  for (int64_t r = 0; r < N; r++) lv[r] = r % 5 == 0 ? -100 : (double)((r * 131) % V);
  eng_tensor *lab = T(ENG_DTYPE_F32, 2, ((int64_t[]){4, 16}), lv);
  eng_tensor *lp = eng_token_logprobs(x, lab);
  double worst = 0, want_ce = 0;
  int n = 0;
  for (int64_t r = 0; r < N; r++) {
    double want = lv[r] < 0 ? 0 : hand_logprob(x, r, V, (int64_t)lv[r]);
    if (lv[r] >= 0) want_ce -= want, n++;
    worst = fmax(worst, fabs(at(lp, r) - want));
  }
  CHECK_CLOSE(worst, 0, 2e-5);
  eng_tensor *L = eng_cross_entropy(x, lab, -100);
  CHECK_CLOSE(at(L, 0), want_ce / n, 2e-5);
  CHECK(eng_backward(L, NULL) == 0);
  worst = 0;
  for (int64_t r = 0; r < N; r++) {
    double lse = -hand_logprob(x, r, V, 0) + at(x, r * V); /* logsumexp of the row */
    for (int64_t j = 0; j < V; j++) {
      double e = lv[r] < 0 ? 0 : (exp(at(x, r * V + j) - lse) - (j == lv[r])) / n;
      worst = fmax(worst, fabs(at(eng_grad(x), r * V + j) - e));
    }
  }
  CHECK_CLOSE(worst, 0, 1e-7);
  eng_tensor_release(L);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(x);
}

/* the forward keeps (...)-sized tensors only, never a second (...,V) one */
static void test_tlp_memory(void) {
  int64_t xs[3] = {4, 8, 20000};
  eng_tensor *x = randn(ENG_DTYPE_F64, 11, 3, xs, true);
  eng_tensor *lab = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){4, 8});
  eng_memory_stats before, after;
  eng_memory_get_stats(&before);
  eng_tensor *lp = eng_token_logprobs(x, lab);
  eng_memory_get_stats(&after);
  size_t logits_bytes = 4 * 8 * 20000 * sizeof(double);
  /* kept: the output and the logsumexp, 32 values each */
  CHECK(after.bytes_in_use - before.bytes_in_use < logits_bytes / 100);
  /* nothing (N,V)-sized even for a moment (x itself is in before.bytes_in_use,
   * above the peaks of the earlier tests) */
  CHECK(after.peak_in_use < before.bytes_in_use + logits_bytes / 2);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(x);
}

static void test_errors(void) {
  eng_tensor *x = eng_zeros(ENG_DTYPE_F32, 3, (int64_t[]){2, 3, 5});
  eng_tensor *x0 = eng_zeros(ENG_DTYPE_F32, 0, (int64_t[]){1}); /* 0 dims */
  eng_tensor *bad_shape = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){2, 4});
  eng_tensor *too_big = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 5, 1, 1, 1, 1}));
  eng_tensor *frac = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1.5, 1, 1, 1}));
  eng_tensor *neg = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1, -3, 1, 1}));
  CHECK_FAILS(eng_cross_entropy(x, bad_shape, -100),
              "cross_entropy: logits is [2,3,5], targets is [2,4]: targets must have the shape of logits without its last dim");
  CHECK_FAILS(eng_cross_entropy(x0, x0, -100), "cross_entropy: logits is []: it needs a last dim (the vocabulary)");
  CHECK_FAILS(eng_cross_entropy(x, too_big, -100),
              "cross_entropy: target 5 at [1,2] is out of range [0, 5) and is not ignore_index (-100)");
  CHECK_FAILS(eng_cross_entropy(x, neg, -100),
              "cross_entropy: target -3 at [2,1] is out of range [0, 5) and is not ignore_index (-100)");
  CHECK_FAILS(eng_cross_entropy(x, frac, -100), "cross_entropy: target 1.5 at [1,3] is not an integer");
  CHECK_FAILS(eng_token_logprobs(x, bad_shape),
              "token_logprobs: logits is [2,3,5], labels is [2,4]: labels must have the shape of logits without its last dim");
  CHECK_FAILS(eng_token_logprobs(x, too_big),
              "token_logprobs: label 5 at [1,2] is out of range: the vocabulary has 5 entries (labels < 0 are skipped)");
  CHECK_FAILS(eng_token_logprobs(x, frac), "token_logprobs: label 1.5 at [1,3] is not an integer");
  eng_tensor *ok = eng_cross_entropy(x, neg, -3); /* -3 is the ignore_index here */
  CHECK(ok && fabs(at(ok, 0) - log(5.0)) < 1e-6);
  eng_tensor_release(ok);
  ok = eng_token_logprobs(x, neg);
  CHECK(ok && at(ok, 3) == 0);
  eng_tensor_release(ok);
  eng_tensor_release(x);
  eng_tensor_release(x0);
  eng_tensor_release(bad_shape);
  eng_tensor_release(too_big);
  eng_tensor_release(frac);
  eng_tensor_release(neg);
}

int main(void) {
  RUN(test_ce_values);
  RUN(test_ce_all_ignored);
  RUN(test_ce_gradcheck);
  RUN(test_tlp_values);
  RUN(test_tlp_gradcheck);
  RUN(test_extremes);
  RUN(test_parallel_f32);
  RUN(test_tlp_memory);
  RUN(test_errors);
  DONE();
}
