/* test_linear_logprobs.c — eng_linear_logprobs (engine_fused.h) against the
 * log-softmax of h·Wᵀ computed by hand here in double, float64
 * finite-difference gradient checks of h and W (skipped labels, tiles that
 * do not divide the rows or the vocabulary, strided h and W, one row),
 * agreement with the unfused matmul + token_logprobs path in float32
 * (values and both gradients, on the threaded path), the extremes,
 * determinism: each of these on both backward paths, with the forward's
 * logits kept (under the keep budget) and recomputed (budget forced to 0).
 * Then the two paths against each other bit for bit, which one is taken
 * (budget, grad mode), the memory each keeps and when it is given back,
 * and the exact error messages. Results are compared at a fixed thread
 * count (OMP_NUM_THREADS=2 under ctest): OpenBLAS's rounding depends on it. */
#include "check.h"
#include "internal.h"

/* ops_linear_logprobs.c: the keep budget in bytes (0 never keeps, < 0 the default);
 * returns the previous one */

#define DEFAULT_BUDGET ((int64_t)256 << 20)

/* a test on each backward path: logits kept from the forward, then recomputed */
#define RUN_BOTH(test)                                                                             \
  do {                                                                                             \
    for (int path_ = 0; path_ < 2; path_++) {                                                      \
      linear_logprobs_set_keep_budget(path_ ? 0 : -1);                                             \
      printf("%-11s", path_ ? "recomputed" : "kept");                                              \
      RUN(test);                                                                                   \
    }                                                                                              \
    linear_logprobs_set_keep_budget(-1);                                                           \
  } while (0)

/* whether lp's node holds the forward's logits */
static bool kept_logits(const eng_tensor *lp) { return lp->grad_fn && lp->grad_fn->saved[1]; }

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape, double scale, bool grad) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  if (scale != 1) {
    eng_tensor *s = eng_scalar_like(t, scale), *m = eng_mul(t, s);
    eng_tensor_release(s);
    eng_tensor_release(t);
    t = m;
  }
  if (grad) eng_set_requires_grad(t, true);
  return t;
}

/* z = h[row]·W[v] in double, reading both through eng_tensor_get_flat (h viewed as (N,C)) */
static double hand_logit(const eng_tensor *h, const eng_tensor *w, int64_t row, int64_t v, int64_t C) {
  double z = 0;
  for (int64_t c = 0; c < C; c++) z += at(h, row * C + c) * at(w, v * C + c);
  return z;
}

/* log softmax(h[row]·Wᵀ)[y] in double */
static double hand_logprob(const eng_tensor *h, const eng_tensor *w, int64_t row, int64_t y, int64_t V, int64_t C) {
  double m = -INFINITY, s = 0;
  double *z = malloc(sizeof(double) * (size_t)V);
  for (int64_t v = 0; v < V; v++) m = fmax(m, z[v] = hand_logit(h, w, row, v, C));
  for (int64_t v = 0; v < V; v++) s += exp(z[v] - m);
  double r = z[y] - m - log(s);
  free(z);
  return r;
}

/* softmax(h[row]·Wᵀ)[v] */
static double hand_softmax(const eng_tensor *h, const eng_tensor *w, int64_t row, int64_t v, int64_t V, int64_t C) {
  return exp(hand_logprob(h, w, row, v, V, C));
}

static eng_tensor *labels_of(int n, const double *v) { return T(ENG_DTYPE_F64, 1, ((int64_t[]){n}), v); }

static bool all_finite(const eng_tensor *t) {
  for (int64_t i = 0; i < eng_tensor_numel(t); i++)
    if (!isfinite(at(t, i))) return false;
  return true;
}

/* ---- values and the gradient, against the formulas ------------------------------ */

/* lp_n = z[n,y_n] − lse_n, and with grad_out g: dh_n = g_n Σ_v (1[v=y_n] − p_nv) W_v,
 * dW_v = Σ_n g_n (1[v=y_n] − p_nv) h_n; 0 on rows with y_n < 0. For several tilings. */
static void test_values(void) {
  const int64_t N = 7, C = 5, V = 11;
  double lv[7] = {3, -100, 0, 10, -1, 10, 4};
  double gv[7] = {1, 5, -2, 0.5, 3, 1.5, -1};
  int64_t tiles[][2] = {{0, 0}, {1, 1}, {3, 4}, {2, 11}, {7, 3}, {100, 100}};
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    double tol = f64 ? 1e-12 : 2e-6;
    for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
      eng_tensor *h = randn(dt, 1, 2, (int64_t[]){N, C}, 1, true);
      eng_tensor *w = randn(dt, 2, 2, (int64_t[]){V, C}, 1, true);
      /* grad_out a strided view: every other element of a (2N) tensor */
      double gv2[14];
      for (int i = 0; i < 14; i++) gv2[i] = i % 2 ? 1e3 : gv[i / 2];
      eng_tensor *lab = labels_of(7, lv), *gbase = T(dt, 1, ((int64_t[]){2 * N}), gv2);
      eng_tensor *g = tensor_view(gbase, 1, (int64_t[]){N}, (int64_t[]){2}, 0);
      eng_tensor_release(gbase);
      eng_tensor *lp = eng_linear_logprobs(h, w, lab, tiles[t][0], tiles[t][1]);
      CHECK(lp && eng_tensor_ndim(lp) == 1 && eng_tensor_shape(lp)[0] == N && eng_tensor_dtype(lp) == dt);
      CHECK(strcmp(eng_grad_fn_name(lp), "linear_logprobs") == 0);
      double worst = 0;
      for (int64_t r = 0; r < N; r++)
        worst = fmax(worst, fabs(at(lp, r) - (lv[r] < 0 ? 0 : hand_logprob(h, w, r, (int64_t)lv[r], V, C))));
      CHECK_CLOSE(worst, 0, tol);
      CHECK(at(lp, 1) == 0 && at(lp, 4) == 0);
      CHECK(eng_backward(lp, g) == 0);
      double wh = 0, ww = 0;
      for (int64_t r = 0; r < N; r++)
        for (int64_t c = 0; c < C; c++) {
          double e = 0;
          if (lv[r] >= 0)
            for (int64_t v = 0; v < V; v++)
              e += gv[r] * ((v == lv[r]) - hand_softmax(h, w, r, v, V, C)) * at(w, v * C + c);
          wh = fmax(wh, fabs(at(eng_grad(h), r * C + c) - e));
        }
      for (int64_t v = 0; v < V; v++)
        for (int64_t c = 0; c < C; c++) {
          double e = 0;
          for (int64_t r = 0; r < N; r++)
            if (lv[r] >= 0) e += gv[r] * ((v == lv[r]) - hand_softmax(h, w, r, v, V, C)) * at(h, r * C + c);
          ww = fmax(ww, fabs(at(eng_grad(w), v * C + c) - e));
        }
      CHECK_CLOSE(wh, 0, 4 * tol);
      CHECK_CLOSE(ww, 0, 4 * tol);
      for (int64_t c = 0; c < C; c++) CHECK(at(eng_grad(h), 1 * C + c) == 0 && at(eng_grad(h), 4 * C + c) == 0);
      eng_tensor_release(lp);
      eng_tensor_release(g);
      eng_tensor_release(lab);
      eng_tensor_release(w);
      eng_tensor_release(h);
    }
  }
}

/* ---- float64 gradient checks ------------------------------------------------------ */

typedef struct {
  eng_tensor *labels, *wt;
  int64_t rows, vocab;
} llp_ctx;

/* Σ wt·linear_logprobs(h, W), so every position gets its own weight */
static eng_tensor *llp_fn(eng_tensor **in, void *vctx) {
  llp_ctx *c = vctx;
  eng_tensor *lp = eng_linear_logprobs(in[0], in[1], c->labels, c->rows, c->vocab);
  eng_tensor *m = lp ? eng_mul(lp, c->wt) : NULL;
  eng_tensor *s = m ? eng_sum(m, ENG_ALL_DIMS, false) : NULL;
  eng_tensor_release(lp);
  eng_tensor_release(m);
  return s;
}

static void test_gradcheck(void) {
  /* (2,3,C) positions with skipped labels; tiles of 4 rows by 3 tokens over 5 kept rows and V = 7 */
  int64_t hs[3] = {2, 3, 4};
  eng_tensor *in[2] = {t_randn64(11, 3, hs), t_randn64(12, 2, (int64_t[]){7, 4})};
  llp_ctx c = {.labels = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){6, -100, 0, 3, 3, 1})),
               .wt = randn(ENG_DTYPE_F64, 13, 2, (int64_t[]){2, 3}, 1, false),
               .rows = 4,
               .vocab = 3};
  int64_t tiles[][2] = {{4, 3}, {1, 1}, {2, 5}, {0, 0}};
  for (int t = 0; t < 4; t++) {
    c.rows = tiles[t][0];
    c.vocab = tiles[t][1];
    CHECK_GRAD(llp_fn, &c, in, 2);
  }
  /* only W requires grad, then only h */
  eng_set_requires_grad(in[0], false);
  CHECK_GRAD(llp_fn, &c, in, 2);
  CHECK(eng_grad(in[0]) == NULL);
  eng_set_requires_grad(in[0], true);
  eng_set_requires_grad(in[1], false);
  CHECK_GRAD(llp_fn, &c, in, 2);
  CHECK(eng_grad(in[1]) == NULL);
  eng_tensor_release(in[0]);
  eng_tensor_release(in[1]);
  /* strided operands: h a transposed (2,3,C) view of a (3,2,C) leaf, W a transposed view of a (C,V) leaf */
  eng_rng *r = eng_rng_new(14);
  eng_tensor *hb = eng_randn(r, ENG_DTYPE_F64, 3, (int64_t[]){3, 2, 4});
  eng_tensor *wb = eng_randn(r, ENG_DTYPE_F64, 2, (int64_t[]){4, 7});
  eng_rng_free(r);
  in[0] = tensor_view(hb, 3, hs, (int64_t[]){4, 8, 1}, 0);
  in[1] = tensor_view(wb, 2, (int64_t[]){7, 4}, (int64_t[]){1, 7}, 0);
  eng_set_requires_grad(in[0], true);
  eng_set_requires_grad(in[1], true);
  CHECK(!eng_tensor_is_contiguous(in[0]) && !eng_tensor_is_contiguous(in[1]));
  c.rows = 2;
  c.vocab = 3;
  eng_tensor *lp = eng_linear_logprobs(in[0], in[1], c.labels, 2, 3);
  CHECK_CLOSE(at(lp, 5), hand_logprob(in[0], in[1], 5, 1, 7, 4), 1e-12);
  CHECK_CLOSE(at(lp, 0), hand_logprob(in[0], in[1], 0, 6, 7, 4), 1e-12);
  eng_tensor_release(lp);
  CHECK_GRAD(llp_fn, &c, in, 2);
  /* every row kept, h contiguous (read in place), W with a row stride wider than C */
  eng_tensor_release(in[0]);
  eng_tensor_release(in[1]);
  eng_tensor_release(c.labels);
  in[0] = t_randn64(15, 3, hs);
  in[1] = t_randn64(16, 2, (int64_t[]){3, 4});
  eng_tensor *wide = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){3, 6});
  eng_tensor *wv = tensor_view(wide, 2, (int64_t[]){3, 4}, (int64_t[]){6, 1}, 1);
  eng_set_requires_grad(wv, true);
  eng_copy_(wv, in[1]);
  eng_tensor_release(in[1]);
  in[1] = wv;
  c.labels = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){2, 0, 1, 1, 2, 2}));
  c.rows = 4;
  c.vocab = 2;
  CHECK_GRAD(llp_fn, &c, in, 2);
  eng_tensor_release(wide);
  eng_tensor_release(in[0]);
  eng_tensor_release(in[1]);
  eng_tensor_release(hb);
  eng_tensor_release(wb);
  eng_tensor_release(c.labels);
  eng_tensor_release(c.wt);
}

/* one position: h (C) and a 0-dim label give a 0-dim result; N = 1 as (1,C) too */
static void test_one_row(void) {
  eng_tensor *in[2] = {t_randn64(21, 1, (int64_t[]){3}), t_randn64(22, 2, (int64_t[]){5, 3})};
  eng_tensor *lab0 = T(ENG_DTYPE_F64, 0, ((int64_t[]){1}), ((double[]){4}));
  eng_tensor *lp = eng_linear_logprobs(in[0], in[1], lab0, 0, 0);
  CHECK(lp && eng_tensor_ndim(lp) == 0);
  CHECK_CLOSE(at(lp, 0), hand_logprob(in[0], in[1], 0, 4, 5, 3), 1e-12);
  eng_tensor_release(lp);
  llp_ctx c = {.labels = lab0, .wt = eng_full(ENG_DTYPE_F64, 0, (int64_t[]){1}, -2.0), .rows = 0, .vocab = 2};
  CHECK_GRAD(llp_fn, &c, in, 2);
  eng_tensor_release(c.wt);
  eng_tensor *h2 = eng_reshape(in[0], 2, (int64_t[]){1, 3});
  eng_tensor *lab1 = T(ENG_DTYPE_F32, 1, ((int64_t[]){1}), ((double[]){4}));
  lp = eng_linear_logprobs(h2, in[1], lab1, 1, 1);
  CHECK(lp && eng_tensor_ndim(lp) == 1 && eng_tensor_shape(lp)[0] == 1);
  CHECK_CLOSE(at(lp, 0), hand_logprob(in[0], in[1], 0, 4, 5, 3), 1e-12);
  eng_tensor_release(lp);
  eng_tensor_release(lab1);
  eng_tensor_release(h2);
  eng_tensor_release(lab0);
  eng_tensor_release(in[0]);
  eng_tensor_release(in[1]);
}

/* all labels < 0 (-inf included): zeros, and zero gradients for both inputs */
static void test_all_skipped(void) {
  eng_tensor *h = t_randn64(31, 2, (int64_t[]){3, 4}), *w = t_randn64(32, 2, (int64_t[]){6, 4});
  eng_tensor *lab = labels_of(3, (double[]){-1, -100, -INFINITY});
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 0, 0);
  CHECK(lp && at(lp, 0) == 0 && at(lp, 1) == 0 && at(lp, 2) == 0);
  eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s, NULL) == 0);
  bool zero = eng_grad(h) && eng_grad(w);
  for (int i = 0; zero && i < 12; i++) zero = at(eng_grad(h), i) == 0;
  for (int i = 0; zero && i < 24; i++) zero = at(eng_grad(w), i) == 0;
  CHECK(zero);
  eng_tensor_release(s);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
}

/* ---- against the unfused path -------------------------------------------------------- */

/* float32, big enough for the threaded loops and several vocabulary blocks: the fused op
 * and token_logprobs(matmul(h, Wᵀ)) agree in value and in both gradients */
static void test_matches_unfused(void) {
  const int64_t B = 3, Tn = 45, C = 48, V = 2500, N = B * Tn;
  eng_tensor *h = randn(ENG_DTYPE_F32, 41, 3, (int64_t[]){B, Tn, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 42, 2, (int64_t[]){V, C}, 0.3, true);
  double *lv = malloc(sizeof(double) * (size_t)N);
  for (int64_t r = 0; r < N; r++) lv[r] = r % 7 == 3 ? -100 : (double)((r * 977) % V);
  eng_tensor *lab = T(ENG_DTYPE_F32, 2, ((int64_t[]){B, Tn}), lv);
  eng_tensor *g = randn(ENG_DTYPE_F32, 43, 2, (int64_t[]){B, Tn}, 1, false);
  /* unfused */
  eng_tensor *wt = eng_transpose(w, 0, 1), *z = eng_matmul(h, wt);
  eng_tensor *ref = eng_token_logprobs(z, lab);
  CHECK(eng_backward(ref, g) == 0);
  eng_tensor *rdh = eng_tensor_retain(eng_grad(h)), *rdw = eng_tensor_retain(eng_grad(w));
  int64_t tiles[][2] = {{0, 0}, {64, 700}, {N, 512}, {50, V}};
  for (int t = 0; t < 4; t++) {
    eng_set_grad(h, NULL);
    eng_set_grad(w, NULL);
    eng_tensor *lp = eng_linear_logprobs(h, w, lab, tiles[t][0], tiles[t][1]);
    double wv = 0, wh = 0, ww = 0;
    for (int64_t r = 0; r < N; r++) wv = fmax(wv, fabs(at(lp, r) - at(ref, r)));
    CHECK(eng_backward(lp, g) == 0);
    for (int64_t i = 0; i < N * C; i++) wh = fmax(wh, fabs(at(eng_grad(h), i) - at(rdh, i)));
    for (int64_t i = 0; i < V * C; i++) ww = fmax(ww, fabs(at(eng_grad(w), i) - at(rdw, i)));
    CHECK_CLOSE(wv, 0, 2e-5);
    CHECK_CLOSE(wh, 0, 2e-5);
    CHECK_CLOSE(ww, 0, 2e-5);
    eng_tensor_release(lp);
  }
  /* a few positions by hand, in double */
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 0, 0);
  for (int64_t r = 0; r < 6; r++) {
    double want = lv[r] < 0 ? 0 : hand_logprob(h, w, r, (int64_t)lv[r], V, C);
    CHECK_CLOSE(at(lp, r), want, 2e-5);
  }
  eng_tensor_release(lp);
  eng_tensor_release(rdh);
  eng_tensor_release(rdw);
  eng_tensor_release(ref);
  eng_tensor_release(z);
  eng_tensor_release(wt);
  eng_tensor_release(g);
  eng_tensor_release(lab);
  free(lv);
  eng_tensor_release(w);
  eng_tensor_release(h);
}

/* the same call twice gives the same bits (fixed thread count and tiles) */
static void test_deterministic(void) {
  const int64_t N = 96, C = 32, V = 3000;
  eng_tensor *h = randn(ENG_DTYPE_F32, 51, 2, (int64_t[]){N, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 52, 2, (int64_t[]){V, C}, 0.5, true);
  double lv[96];
  for (int r = 0; r < 96; r++) lv[r] = (r * 31) % V;
  eng_tensor *lab = labels_of(96, lv);
  eng_tensor *res[2][3];
  for (int k = 0; k < 2; k++) {
    eng_set_grad(h, NULL);
    eng_set_grad(w, NULL);
    res[k][0] = eng_linear_logprobs(h, w, lab, 40, 1000);
    eng_tensor *s = eng_sum(res[k][0], ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    eng_tensor_release(s);
    res[k][1] = eng_tensor_retain(eng_grad(h));
    res[k][2] = eng_tensor_retain(eng_grad(w));
  }
  for (int j = 0; j < 3; j++) {
    size_t bytes = (size_t)eng_tensor_numel(res[0][j]) * 4;
    CHECK(memcmp(eng_tensor_data(res[0][j]), eng_tensor_data(res[1][j]), bytes) == 0);
    eng_tensor_release(res[0][j]);
    eng_tensor_release(res[1][j]);
  }
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
}

/* ---- extremes ------------------------------------------------------------------------- */

static void test_extremes(void) {
  /* logits ~ ±1e4: finite, and exact against the hand formula */
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    eng_tensor *h = T(dt, 2, ((int64_t[]){2, 2}), ((double[]){100, 0, 0, -100}));
    eng_tensor *w = T(dt, 2, ((int64_t[]){4, 2}), ((double[]){100, 0, -100, 0, 99.995, 50, 0, 99.9}));
    eng_set_requires_grad(h, true);
    eng_set_requires_grad(w, true);
    eng_tensor *lab = labels_of(2, (double[]){2, 1});
    eng_tensor *lp = eng_linear_logprobs(h, w, lab, 1, 2);
    CHECK(all_finite(lp));
    /* row 0: z = (1e4, -1e4, 9999.5, 0); row 1: z = (0, 0, -5000, -9990) */
    CHECK_CLOSE(at(lp, 0), -0.5 - log(1 + exp(-0.5)), 1e-4);
    CHECK_CLOSE(at(lp, 1), -log(2 + exp(-5000.0)), f64 ? 1e-9 : 1e-6);
    eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    CHECK(all_finite(eng_grad(h)) && all_finite(eng_grad(w)));
    /* dW[0] = (0 − p_00)·h_0 + (0 − p_10)·h_1 = (−100·σ(0.5)·..., ...) */
    double p00 = 1 / (1 + exp(-0.5)), p10 = 0.5;
    CHECK_CLOSE(at(eng_grad(w), 0), -p00 * 100, 2e-3);
    CHECK_CLOSE(at(eng_grad(w), 1), -p10 * -100, 2e-3);
    eng_tensor_release(s);
    eng_tensor_release(lp);
    eng_tensor_release(lab);
    eng_tensor_release(w);
    eng_tensor_release(h);
  }
  /* a row whose logits are all -inf: log-probability -inf, and no NaN in its gradient */
  eng_tensor *hi = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 2}), ((double[]){-INFINITY, 1, 0.5, 1}));
  eng_tensor *wi = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 2}), ((double[]){1, 0, 2, 1, 0.5, -1}));
  eng_set_requires_grad(hi, true);
  eng_tensor *labi = labels_of(2, (double[]){1, 0});
  eng_tensor *lpi = eng_linear_logprobs(hi, wi, labi, 0, 2);
  CHECK(isinf(at(lpi, 0)) && at(lpi, 0) < 0);
  CHECK_CLOSE(at(lpi, 1), hand_logprob(hi, wi, 1, 0, 3, 2), 1e-12);
  eng_tensor *si = eng_sum(lpi, ENG_ALL_DIMS, false);
  CHECK(eng_backward(si, NULL) == 0);
  CHECK(at(eng_grad(hi), 0) == 0 && at(eng_grad(hi), 1) == 0 && all_finite(eng_grad(hi)));
  eng_tensor_release(si);
  eng_tensor_release(lpi);
  eng_tensor_release(labi);
  eng_tensor_release(wi);
  eng_tensor_release(hi);
  /* a NaN in h spoils its own row only */
  eng_tensor *h = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 2}), ((double[]){NAN, 1, 0.5, 1}));
  eng_tensor *w = T(ENG_DTYPE_F64, 2, ((int64_t[]){3, 2}), ((double[]){1, 0, 0, 1, 1, 1}));
  eng_tensor *lab = labels_of(2, (double[]){0, 2});
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 0, 2);
  CHECK(isnan(at(lp, 0)));
  CHECK_CLOSE(at(lp, 1), 1.5 - log(exp(0.5) + exp(1.0) + exp(1.5)), 1e-12);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
}

/* ---- the two backward paths ----------------------------------------------------------- */

/* h (N,C) (or a strided view), W (V,C) (or a transposed view), labels, grad_out and the
 * tile; lp, dh, dW from the kept path and from the recomputed one, which must agree bit for
 * bit: same tiles, same order, same arithmetic, and the forward's tiles are the bits the
 * recompute gemm makes */
static void check_paths_agree(eng_tensor *h, eng_tensor *w, eng_tensor *lab, eng_tensor *g, int64_t rows,
                              int64_t vocab) {
  eng_tensor *res[2][3];
  for (int path = 0; path < 2; path++) {
    linear_logprobs_set_keep_budget(path ? 0 : -1);
    eng_set_grad(h, NULL);
    eng_set_grad(w, NULL);
    eng_tensor *lp = eng_linear_logprobs(h, w, lab, rows, vocab);
    CHECK(lp && kept_logits(lp) == (path == 0));
    CHECK(eng_backward(lp, g) == 0);
    res[path][0] = lp;
    res[path][1] = eng_tensor_retain(eng_grad(h));
    res[path][2] = eng_tensor_retain(eng_grad(w));
  }
  linear_logprobs_set_keep_budget(-1);
  for (int j = 0; j < 3; j++) {
    CHECK(!res[0][j] == !res[1][j]);
    if (!res[0][j] || !res[1][j]) {
      eng_tensor_release(res[0][j]);
      eng_tensor_release(res[1][j]);
      continue;
    }
    size_t bytes = (size_t)eng_tensor_numel(res[0][j]) * dtype_size(eng_tensor_dtype(res[0][j]));
    CHECK(eng_tensor_is_contiguous(res[0][j]) && eng_tensor_is_contiguous(res[1][j]));
    CHECK(memcmp(eng_tensor_data(res[0][j]), eng_tensor_data(res[1][j]), bytes) == 0);
    eng_tensor_release(res[0][j]);
    eng_tensor_release(res[1][j]);
  }
}

static void test_paths_bit_identical(void) {
  /* float32, (B,T,C) with skipped rows (gathered), several vocabulary blocks, threaded kernels */
  const int64_t B = 3, Tn = 45, C = 48, V = 2500, N = B * Tn;
  eng_tensor *h = randn(ENG_DTYPE_F32, 71, 3, (int64_t[]){B, Tn, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 72, 2, (int64_t[]){V, C}, 0.3, true);
  double *lv = malloc(sizeof(double) * (size_t)N);
  for (int64_t r = 0; r < N; r++) lv[r] = r % 5 == 1 ? -100 : (double)((r * 613) % V);
  eng_tensor *lab = T(ENG_DTYPE_F32, 2, ((int64_t[]){B, Tn}), lv);
  eng_tensor *g = randn(ENG_DTYPE_F32, 73, 2, (int64_t[]){B, Tn}, 1, false);
  int64_t tiles[][2] = {{0, 0}, {64, 700}, {N, 512}, {50, V}, {7, 300}};
  for (int t = 0; t < 5; t++) check_paths_agree(h, w, lab, g, tiles[t][0], tiles[t][1]);
  /* every row kept and h contiguous (read in place) */
  for (int64_t r = 0; r < N; r++) lv[r] = (double)((r * 389) % V);
  eng_tensor *lab_all = T(ENG_DTYPE_F64, 2, ((int64_t[]){B, Tn}), lv);
  check_paths_agree(h, w, lab_all, g, 0, 0);
  check_paths_agree(h, w, lab_all, g, 40, 1000);
  /* only W, then only h requiring grad */
  eng_set_requires_grad(h, false);
  check_paths_agree(h, w, lab, g, 64, 700);
  eng_set_requires_grad(h, true);
  eng_set_requires_grad(w, false);
  check_paths_agree(h, w, lab, g, 64, 700);
  eng_tensor_release(lab_all);
  eng_tensor_release(g);
  eng_tensor_release(lab);
  free(lv);
  eng_tensor_release(w);
  eng_tensor_release(h);
  /* float64, h a transposed (2,3,C) view, W a transposed view of a (C,V) leaf (read as Wᵀ) */
  eng_rng *r = eng_rng_new(74);
  eng_tensor *hb = eng_randn(r, ENG_DTYPE_F64, 3, (int64_t[]){3, 2, 8});
  eng_tensor *wb = eng_randn(r, ENG_DTYPE_F64, 2, (int64_t[]){8, 300});
  eng_rng_free(r);
  h = tensor_view(hb, 3, (int64_t[]){2, 3, 8}, (int64_t[]){8, 16, 1}, 0);
  w = tensor_view(wb, 2, (int64_t[]){300, 8}, (int64_t[]){1, 300}, 0);
  eng_set_requires_grad(h, true);
  eng_set_requires_grad(w, true);
  lab = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){299, -1, 0, 17, 17, 150}));
  g = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){1, 2, -0.5, 3, 0.25, -1}));
  check_paths_agree(h, w, lab, g, 2, 64);
  check_paths_agree(h, w, lab, g, 0, 0);
  eng_tensor_release(g);
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
  eng_tensor_release(wb);
  eng_tensor_release(hb);
}

/* a probe op: y = x, whose backward passes the gradient on and notes whether probe_head
 * (a linear_logprobs node above it, whose backward has run by then) still holds logits */
static eng_node *probe_head;
static bool probe_saw_logits;

static int probe_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  probe_saw_logits = probe_head && probe_head->saved[1];
  gin[0] = eng_tensor_retain(g);
  return 0;
}

static eng_tensor *probe(eng_tensor *x) {
  eng_tensor *y = eng_contiguous(x);
  eng_tensor *out = eng_detach(y);
  eng_tensor_release(y);
  node_attach(out, "probe", probe_backward, 1, &x);
  return out;
}

/* the logits are kept when K·V·(dtype size) <= the budget (256 MiB by default) and a gradient
 * is recorded; never in eval (grad mode off, or no input requiring grad), or with no kept row */
static void test_which_path(void) {
  CHECK(linear_logprobs_set_keep_budget(-1) == DEFAULT_BUDGET);
  CHECK(linear_logprobs_set_keep_budget(-1) == DEFAULT_BUDGET);
  const int64_t N = 6, C = 3, V = 10;
  eng_tensor *h = randn(ENG_DTYPE_F32, 81, 2, (int64_t[]){N, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 82, 2, (int64_t[]){V, C}, 1, true);
  eng_tensor *h64 = t_randn64(83, 2, (int64_t[]){N, C}), *w64 = t_randn64(84, 2, (int64_t[]){V, C});
  eng_tensor *lab = labels_of(6, (double[]){1, -1, 9, 0, -100, 4}); /* K = 4 */
  struct {
    int64_t budget;
    eng_tensor *h, *w;
    bool kept;
  } cases[] = {
      {4 * V * 4, h, w, true},          {4 * V * 4 - 1, h, w, false},     {4 * V * 8, h64, w64, true},
      {4 * V * 8 - 1, h64, w64, false}, {DEFAULT_BUDGET, h, w, true},     {0, h, w, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    linear_logprobs_set_keep_budget(cases[i].budget);
    eng_tensor *lp = eng_linear_logprobs(cases[i].h, cases[i].w, lab, 0, 0);
    CHECK(kept_logits(lp) == cases[i].kept);
    if (cases[i].kept && kept_logits(lp)) CHECK(eng_tensor_numel(lp->grad_fn->saved[1]) == 4 * V);
    eng_tensor_release(lp);
  }
  linear_logprobs_set_keep_budget(-1);
  /* eval: grad mode off, or nothing requiring grad: no node, nothing kept */
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 0, 0);
  CHECK(lp && !lp->grad_fn);
  eng_tensor_release(lp);
  eng_set_grad_enabled(prev);
  eng_tensor *hc = randn(ENG_DTYPE_F32, 81, 2, (int64_t[]){N, C}, 1, false);
  eng_tensor *wc = randn(ENG_DTYPE_F32, 82, 2, (int64_t[]){V, C}, 1, false);
  lp = eng_linear_logprobs(hc, wc, lab, 0, 0);
  CHECK(lp && !lp->grad_fn);
  eng_tensor_release(lp);
  /* no kept row: nothing to keep */
  eng_tensor *none = labels_of(6, (double[]){-1, -1, -1, -1, -1, -1});
  lp = eng_linear_logprobs(h, w, none, 0, 0);
  CHECK(lp && lp->grad_fn && !kept_logits(lp));
  eng_tensor_release(lp);
  /* the head's backward gives the kept logits back at once, before the backwards of the
   * ops below it run (not only when the whole backward ends): a probe op under h looks */
  eng_tensor *hp = probe(h);
  lp = eng_linear_logprobs(hp, w, lab, 0, 0);
  eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
  probe_head = lp->grad_fn;
  probe_saw_logits = true;
  CHECK(kept_logits(lp));
  CHECK(eng_backward(s, NULL) == 0);
  CHECK(!probe_saw_logits);
  CHECK(eng_grad(h) != NULL);
  probe_head = NULL;
  eng_tensor_release(s);
  eng_tensor_release(lp);
  eng_tensor_release(hp);
  eng_tensor *objs[] = {none, hc, wc, lab, h, w, h64, w64};
  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) eng_tensor_release(objs[i]);
}

/* ---- memory ----------------------------------------------------------------------------- */

/* eval (grad mode off, default budget) and recomputed (budget 0): the forward keeps
 * (N)-sized tensors only, and never holds the (N,V) logits, not even for a moment; the
 * backward adds the two gradients and one tile. Run first, so that the pool's peak is this
 * test's own (blocks round up by at most ~19%). */
static void test_memory_recomputed(void) {
  const int64_t N = 64, C = 16, V = 20000;
  eng_tensor *h = randn(ENG_DTYPE_F32, 61, 2, (int64_t[]){N, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 62, 2, (int64_t[]){V, C}, 1, true);
  eng_tensor *lab = eng_zeros(ENG_DTYPE_F32, 1, (int64_t[]){N});
  size_t tile = (size_t)32 * 1024 * 4, logits = (size_t)(N * V) * 4;
  eng_memory_stats before, after;
  eng_memory_get_stats(&before);
  CHECK(before.peak_in_use < before.bytes_in_use + tile);
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 32, 1024);
  eng_set_grad_enabled(prev);
  eng_memory_get_stats(&after);
  CHECK(lp && !lp->grad_fn);
  CHECK(after.bytes_in_use - before.bytes_in_use < 4096); /* the output */
  CHECK(after.peak_in_use < before.bytes_in_use + 2 * tile);
  eng_tensor_release(lp);
  linear_logprobs_set_keep_budget(0);
  lp = eng_linear_logprobs(h, w, lab, 32, 1024);
  eng_memory_get_stats(&after);
  CHECK(after.bytes_in_use - before.bytes_in_use < 4096); /* the output and the logsumexp */
  CHECK(after.peak_in_use < before.bytes_in_use + 2 * tile);
  eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
  eng_memory_get_stats(&before);
  CHECK(eng_backward(s, NULL) == 0);
  eng_memory_get_stats(&after);
  size_t grads = (size_t)(N * C + V * C) * 4;
  CHECK(after.peak_in_use < before.bytes_in_use + grads * 6 / 5 + 2 * tile);
  CHECK(after.peak_in_use < before.bytes_in_use + grads + logits / 2);
  eng_tensor_release(s);
  eng_tensor_release(lp);
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
  linear_logprobs_set_keep_budget(-1);
}

/* kept: the forward holds the (K,V) logits and no tile besides; the backward adds only the
 * two gradients, and gives the logits back (at once: see test_which_path); a graph dropped
 * without a backward gives them back too. Run second: the peak before it
 * is below what it measures. */
static void test_memory_kept(void) {
  const int64_t N = 64, C = 16, V = 20000, K = 48;
  eng_tensor *h = randn(ENG_DTYPE_F32, 63, 2, (int64_t[]){N, C}, 1, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 64, 2, (int64_t[]){V, C}, 1, true);
  double lv[64];
  for (int r = 0; r < 64; r++) lv[r] = r % 4 == 3 ? -1 : (r * 101) % V;
  eng_tensor *lab = labels_of(64, lv);
  size_t logits = (size_t)(K * V) * 4, grads = (size_t)(N * C + V * C) * 4;
  eng_memory_stats before, after, mid;
  eng_memory_get_stats(&before);
  CHECK(before.peak_in_use < before.bytes_in_use + logits);
  eng_tensor *lp = eng_linear_logprobs(h, w, lab, 0, 0);
  CHECK(kept_logits(lp));
  eng_memory_get_stats(&mid);
  CHECK(mid.bytes_in_use - before.bytes_in_use >= logits);
  CHECK(mid.bytes_in_use - before.bytes_in_use < logits * 6 / 5 + 4096);
  CHECK(mid.peak_in_use < before.bytes_in_use + logits * 6 / 5 + 4096); /* no tile buffer besides */
  eng_tensor *s = eng_sum(lp, ENG_ALL_DIMS, false);
  eng_memory_get_stats(&mid);
  CHECK(eng_backward(s, NULL) == 0);
  eng_memory_get_stats(&after);
  CHECK(after.peak_in_use < mid.bytes_in_use + grads * 6 / 5 + 4096); /* no tile buffer */
  CHECK(after.bytes_in_use < before.bytes_in_use + grads * 6 / 5 + 4096); /* the logits are given back */
  eng_tensor_release(s);
  eng_tensor_release(lp);
  eng_set_grad(h, NULL);
  eng_set_grad(w, NULL);
  /* dropped without a backward */
  eng_memory_get_stats(&before);
  lp = eng_linear_logprobs(h, w, lab, 0, 0);
  eng_memory_get_stats(&mid);
  CHECK(mid.bytes_in_use - before.bytes_in_use >= logits);
  eng_tensor_release(lp);
  eng_memory_get_stats(&after);
  CHECK(after.bytes_in_use == before.bytes_in_use);
  eng_tensor_release(lab);
  eng_tensor_release(w);
  eng_tensor_release(h);
}

/* ---- errors ------------------------------------------------------------------------------ */

static void test_errors(void) {
  eng_tensor *h = eng_zeros(ENG_DTYPE_F32, 3, (int64_t[]){2, 3, 4});
  eng_tensor *w = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){5, 4});
  eng_tensor *w64 = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){5, 4});
  eng_tensor *w3 = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){5, 3});
  eng_tensor *w1 = eng_zeros(ENG_DTYPE_F32, 1, (int64_t[]){4});
  eng_tensor *h0 = eng_zeros(ENG_DTYPE_F32, 0, (int64_t[]){1});
  eng_tensor *ok = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){2, 3});
  eng_tensor *bad_shape = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){3, 2});
  eng_tensor *too_big = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 5, 1, 1, 1, 1}));
  eng_tensor *inf = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1, 1, INFINITY, 1}));
  eng_tensor *frac = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1.5, 1, 1, 1}));
  eng_tensor *negfrac = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1, -0.5, 1, 1}));
  eng_tensor *nan = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){0, 1, 1, 1, 1, NAN}));
  CHECK_FAILS(eng_linear_logprobs(h, w64, ok, 0, 0),
              "linear_logprobs: h is float32, w is float64: they must have the same dtype");
  CHECK_FAILS(eng_linear_logprobs(h0, w, ok, 0, 0), "linear_logprobs: h is []: it needs a last dim (the hidden size C)");
  CHECK_FAILS(eng_linear_logprobs(h, w3, ok, 0, 0),
              "linear_logprobs: h is [2,3,4], w is [5,3]: w must be (V,C) with C = 4, the last dim of h");
  CHECK_FAILS(eng_linear_logprobs(h, w1, ok, 0, 0),
              "linear_logprobs: h is [2,3,4], w is [4]: w must be (V,C) with C = 4, the last dim of h");
  CHECK_FAILS(eng_linear_logprobs(h, w, bad_shape, 0, 0),
              "linear_logprobs: h is [2,3,4], labels is [3,2]: labels must have the shape of h without its last dim");
  CHECK_FAILS(eng_linear_logprobs(h, w, too_big, 0, 0),
              "linear_logprobs: label 5 at [1,2] is out of range: the vocabulary has 5 entries (labels < 0 are skipped)");
  CHECK_FAILS(eng_linear_logprobs(h, w, inf, 0, 0),
              "linear_logprobs: label inf at [2,2] is out of range: the vocabulary has 5 entries (labels < 0 are skipped)");
  CHECK_FAILS(eng_linear_logprobs(h, w, frac, 0, 0), "linear_logprobs: label 1.5 at [1,3] is not an integer");
  CHECK_FAILS(eng_linear_logprobs(h, w, negfrac, 0, 0), "linear_logprobs: label -0.5 at [2,1] is not an integer");
  CHECK_FAILS(eng_linear_logprobs(h, w, nan, 0, 0), "linear_logprobs: label nan at [2,3] is not an integer");
  CHECK_FAILS(eng_linear_logprobs(h, w, ok, -1, 0),
              "linear_logprobs: chunk_rows is -1: it must be >= 1 (or 0 for the default)");
  CHECK_FAILS(eng_linear_logprobs(h, w, ok, 0, -8),
              "linear_logprobs: chunk_vocab is -8: it must be >= 1 (or 0 for the default)");
  /* the all-zero case: every logit 0, log(1/5) */
  eng_tensor *lp = eng_linear_logprobs(h, w, ok, 0, 0);
  CHECK(lp && fabs(at(lp, 5) + log(5.0)) < 1e-6);
  eng_tensor_release(lp);
  eng_tensor *objs[] = {h, w, w64, w3, w1, h0, ok, bad_shape, too_big, inf, frac, negfrac, nan};
  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) eng_tensor_release(objs[i]);
}

int main(void) {
  RUN(test_memory_recomputed);
  RUN(test_memory_kept);
  RUN_BOTH(test_values);
  RUN_BOTH(test_gradcheck);
  RUN_BOTH(test_one_row);
  RUN_BOTH(test_all_skipped);
  RUN_BOTH(test_matches_unfused);
  RUN_BOTH(test_deterministic);
  RUN_BOTH(test_extremes);
  RUN(test_paths_bit_identical);
  RUN(test_which_path);
  RUN(test_errors);
  DONE();
}
