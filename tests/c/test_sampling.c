/* test_sampling.c — eng_sample_logits (engine/src/sampling.c): choices and
 * log-probabilities worked out by hand; the top-k and top-p kept sets and
 * the draw against their definitions computed by brute force here (O(V^2),
 * nothing shared with the kernel's quickselects); the distribution a grid
 * of uniforms maps to; the vectorized exp against libm's; float64 and
 * strided logits; the multi-threaded path
 * against row-by-row calls; the exact error messages. */
#include "check.h"
#include "internal.h"
#include "sampling.h"

static eng_tensor *mat(eng_dtype dt, int64_t B, int64_t V, const double *v) {
  return eng_from_doubles(dt, 2, (int64_t[]){B, V}, v);
}

static int sample(eng_tensor *l, double T, int64_t k, double p, const double *u, int64_t *ids, double *lps) {
  eng_sample_opts o = {T, k, p};
  return eng_sample_logits(l, &o, u, ids, lps);
}

static void test_worked_by_hand(void) {
  eng_tensor *l = mat(ENG_DTYPE_F32, 2, 4, (double[]){0, 1, 2, -1, 5, 5, 1, 0});
  int64_t ids[2];
  double lps[2];
  double z1 = 1 + exp(1) + exp(2) + exp(-1), z2 = 2 * exp(5) + exp(1) + 1;
  /* greedy: first argmax, model log-probability */
  CHECK(sample(l, 0, 0, 1, NULL, ids, lps) == 0);
  CHECK(ids[0] == 2 && ids[1] == 0);
  CHECK_CLOSE(lps[0], 2 - log(z1), 1e-12);
  CHECK_CLOSE(lps[1], 5 - log(z2), 1e-12);
  /* row 1 masses in id order .087 .237 .644 .032: u = .3 lands in id 1 */
  CHECK(sample(l, 1, 0, 1, (double[]){0.3, 0.999}, ids, lps) == 0);
  CHECK(ids[0] == 1 && ids[1] == 3);
  CHECK_CLOSE(lps[0], 1 - log(z1), 1e-12);
  CHECK_CLOSE(lps[1], 0 - 5 - log(z2 / exp(5)), 1e-12);
  /* T = 0.5, top_k = 2: s = {0,2,4,-2}, kept ids 1 and 2 */
  CHECK(sample(l, 0.5, 2, 1, (double[]){0.1, 0.1}, ids, lps) == 0);
  CHECK(ids[0] == 1);
  CHECK_CLOSE(lps[0], -2 - log(1 + exp(-2)), 1e-12);
  CHECK(ids[1] == 0); /* row 2: ties at the 2nd value, ids 0 and 1 kept, 1/2 each */
  CHECK_CLOSE(lps[1], -log(2), 1e-12);
  /* top_k = 1 with a tie keeps both tied tokens (Hugging Face's rule) */
  CHECK(sample(l, 1, 1, 1, (double[]){0.9, 0.9}, ids, lps) == 0);
  CHECK(ids[0] == 2 && ids[1] == 1);
  CHECK_CLOSE(lps[0], 0, 0);
  CHECK_CLOSE(lps[1], -log(2), 1e-12);
  /* top_p = .7: ids 2 (mass above 0) and 1 (.644 < .7) kept, id 0 (.881) not */
  CHECK(sample(l, 1, 0, 0.7, (double[]){0.05, 0.2}, ids, lps) == 0);
  CHECK(ids[0] == 1);
  CHECK_CLOSE(lps[0], 1 - log(exp(1) + exp(2)), 1e-12);
  /* row 2: id 0 (above: 0) and id 1 (above: .494 < .7) kept */
  CHECK(ids[1] == 0);
  CHECK_CLOSE(lps[1], -log(2), 1e-12);
  /* equal masses .25 each, top_p = .5: the third token has exactly .5 above
   * it, which is not < .5, so two are kept */
  eng_tensor *flat = mat(ENG_DTYPE_F32, 1, 4, (double[]){0, 0, 0, 0});
  CHECK(sample(flat, 1, 0, 0.5, (double[]){0.99}, ids, lps) == 0);
  CHECK(ids[0] == 1);
  CHECK_CLOSE(lps[0], -log(2), 1e-15);
  /* u * Z landing exactly on a running sum: the next token (mass must exceed it) */
  CHECK(sample(flat, 1, 0, 1, (double[]){0.5}, ids, lps) == 0);
  CHECK(ids[0] == 2);
  CHECK(sample(flat, 1, 0, 1, (double[]){0.0}, ids, lps) == 0);
  CHECK(ids[0] == 0);
  eng_tensor_release(flat);
  /* the same at a boundary between the kernel's blocks of 256 ids */
  flat = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){1, 512});
  CHECK(sample(flat, 1, 0, 1, (double[]){0.5}, ids, lps) == 0);
  CHECK(ids[0] == 256);
  CHECK_CLOSE(lps[0], -log(512), 1e-14);
  eng_tensor_release(flat);
  /* u = 0 picks the first kept id; u just below 1 the last */
  CHECK(sample(l, 1, 0, 0.7, (double[]){0, 0.9999999999}, ids, lps) == 0);
  CHECK(ids[0] == 1 && ids[1] == 1);
  eng_tensor_release(l);
}

/* ---- brute force: the definitions, token by token ---------------------------- */

static void brute(const double *x, int64_t V, double T, int64_t k, double p, double u, int64_t *id, double *lp) {
  double *s = malloc(sizeof(double) * V), *e = malloc(sizeof(double) * V);
  bool *keep = malloc(sizeof(bool) * V);
  double m = -INFINITY;
  for (int64_t i = 0; i < V; i++) {
    s[i] = x[i] / T;
    m = fmax(m, s[i]);
  }
  double z = 0;
  for (int64_t j = 0; j < V; j++) {
    int64_t greater = 0;
    for (int64_t i = 0; i < V; i++) greater += s[i] > s[j];
    keep[j] = (k == 0 || greater < k) && s[j] - m >= -708; /* s_j >= the k-th largest */
    e[j] = keep[j] ? exp(s[j] - m) : 0;
    z += e[j];
  }
  if (p < 1) {
    bool *keep2 = malloc(sizeof(bool) * V);
    for (int64_t j = 0; j < V; j++) {
      double above = 0; /* mass ranked above j: more probable, or as probable with a lower id */
      for (int64_t i = 0; i < V; i++)
        if (e[i] > e[j] || (e[i] == e[j] && i < j)) above += e[i];
      keep2[j] = e[j] > 0 && above < p * z;
    }
    z = 0;
    for (int64_t j = 0; j < V; j++) {
      if (!keep2[j]) e[j] = 0;
      z += e[j];
    }
    free(keep2);
  }
  double acc = 0;
  *id = -1;
  for (int64_t j = 0; j < V; j++) {
    if (e[j] == 0) continue;
    *id = j;
    acc += e[j];
    if (acc > u * z) break;
  }
  *lp = log(e[*id] / z);
  free(s);
  free(e);
  free(keep);
}

/* logits on a coarse grid (many exact ties) with some -inf */
static double *grid_logits(uint64_t seed, int64_t n) {
  eng_rng *r = eng_rng_new(seed);
  double *v = malloc(sizeof(double) * n);
  for (int64_t i = 0; i < n; i++) {
    double a = eng_rng_uniform(r);
    v[i] = a < 0.05 ? -INFINITY : floor(eng_rng_uniform(r) * 40) / 8 - 2;
  }
  eng_rng_free(r);
  return v;
}

static void test_against_brute_force(void) {
  const int64_t B = 4, V = 300;
  struct { double T; int64_t k; double p; } cases[] = {
      {1, 0, 1}, {0.6, 0, 1}, {1, 7, 1}, {1, 1, 1}, {1, 0, 0.9}, {2, 0, 0.5}, {1, 0, 1e-9},
      {0.8, 30, 0.75}, {1.3, 299, 0.99}, {1, 300, 1}, {1, 1000, 0.3},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    double *x = grid_logits(100 + c, B * V);
    for (int dt = 0; dt < 2; dt++) {
      eng_tensor *l = mat(dt ? ENG_DTYPE_F64 : ENG_DTYPE_F32, B, V, x);
      double u[4] = {0.01, 0.37, 0.62, 0.97};
      int64_t ids[4];
      double lps[4];
      CHECK(sample(l, cases[c].T, cases[c].k, cases[c].p, u, ids, lps) == 0);
      for (int64_t b = 0; b < B; b++) {
        double row[300];
        for (int64_t i = 0; i < V; i++) row[i] = at(l, b * V + i);
        int64_t id;
        double lp;
        brute(row, V, cases[c].T, cases[c].k, cases[c].p, u[b], &id, &lp);
        CHECK(ids[b] == id);
        CHECK_CLOSE(lps[b], lp, 1e-10);
      }
      eng_tensor_release(l);
    }
    free(x);
  }
}

/* a grid of M uniforms maps onto the kept distribution: each token's share
 * of the grid is its probability within 1/M */
static void test_grid_distribution(void) {
  const int64_t V = 6, M = 20000;
  double x[6] = {0.5, -1, 2, 2, 0, -3};
  eng_tensor *l = mat(ENG_DTYPE_F32, 1, V, x);
  struct { double T; int64_t k; double p; } cases[] = {{1, 0, 1}, {0.5, 3, 1}, {1, 0, 0.8}, {2, 4, 0.9}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    int64_t count[6] = {0};
    double prob[6] = {0};
    for (int64_t i = 0; i < M; i++) {
      double u = (i + 0.5) / M, lp;
      int64_t id;
      CHECK(sample(l, cases[c].T, cases[c].k, cases[c].p, &u, &id, &lp) == 0);
      count[id]++;
      prob[id] = exp(lp);
    }
    double total = 0;
    for (int64_t j = 0; j < V; j++) {
      CHECK_CLOSE((double)count[j] / M, prob[j], 1.0 / M + 1e-12);
      total += prob[j];
    }
    CHECK_CLOSE(total, 1, 1e-12);
  }
  /* by hand for T = 0.5, top_k = 3: s = {1,-2,4,4,0,-6}; kept ids 0, 2, 3 */
  double lp;
  int64_t id;
  double z = exp(-3) + 2;
  CHECK(sample(l, 0.5, 3, 1, (double[]){0.0}, &id, &lp) == 0);
  CHECK(id == 0);
  CHECK_CLOSE(lp, -3 - log(z), 1e-12);
  eng_tensor_release(l);
}

/* the vectorized exp against libm's: relative error at most 1 ulp on a
 * fine sweep of [-708, 0]; 0 below -708 and for -inf */
static void test_exp(void) {
  double worst = 0;
  for (int64_t i = 0; i <= 2000000; i++) {
    double x = -708.0 * (double)i / 2000000.0 - 1e-7 * (double)(i % 7);
    if (x < -708) x = -708;
    double e = exp(x), got = sampling_exp_le0(x);
    worst = fmax(worst, fabs(got - e) / e);
  }
  CHECK(worst <= 2.3e-16);
  CHECK(sampling_exp_le0(0.0) == 1.0);
  CHECK(sampling_exp_le0(-0.0) == 1.0);
  CHECK(sampling_exp_le0(-1.0) == exp(-1.0));
  CHECK(sampling_exp_le0(-708.0) > 0);
  CHECK(sampling_exp_le0(-708.0000001) == 0.0);
  CHECK(sampling_exp_le0(-1e300) == 0.0);
  CHECK(sampling_exp_le0(-INFINITY) == 0.0);
}

static void test_strided_and_threads(void) {
  /* (V,B) transposed to a (B,V) view */
  const int64_t B = 8, V = 5000; /* B*V over the parallel threshold */
  double *x = grid_logits(7, B * V);
  eng_tensor *vb = eng_from_doubles(ENG_DTYPE_F32, 2, (int64_t[]){V, B}, x);
  eng_tensor *view = eng_transpose(vb, 0, 1);
  eng_tensor *cont = eng_contiguous(view);
  CHECK(!eng_tensor_is_contiguous(view));
  double u[8] = {0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75};
  int64_t a[8], b1[8];
  double la[8], lb[8];
  eng_set_threads(2);
  CHECK(sample(view, 0.9, 50, 0.9, u, a, la) == 0);
  eng_set_threads(1);
  CHECK(sample(cont, 0.9, 50, 0.9, u, b1, lb) == 0);
  for (int64_t b = 0; b < B; b++) {
    CHECK(a[b] == b1[b]);
    CHECK(la[b] == lb[b]);
    /* and row by row */
    eng_tensor *row = eng_narrow(cont, 0, b, 1);
    int64_t id;
    double lp;
    CHECK(sample(row, 0.9, 50, 0.9, &u[b], &id, &lp) == 0);
    CHECK(id == a[b] && lp == la[b]);
    eng_tensor_release(row);
  }
  eng_set_threads(2);
  CHECK(sample(view, 0, 0, 1, NULL, a, la) == 0);
  for (int64_t b = 0; b < B; b++) {
    double best = -INFINITY;
    int64_t arg = -1;
    for (int64_t i = 0; i < V; i++)
      if (at(cont, b * V + i) > best) best = at(cont, b * V + i), arg = i;
    CHECK(a[b] == arg);
  }
  eng_tensor_release(cont);
  eng_tensor_release(view);
  eng_tensor_release(vb);
  free(x);
}

#define CHECK_SAMPLE_FAILS(call, msg)                                                \
  do {                                                                               \
    eng_clear_error();                                                               \
    check_count++;                                                                   \
    if ((call) != -1 || strcmp(eng_last_error(), (msg))) {                           \
      check_failures++;                                                              \
      fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__,   \
              (msg), eng_last_error());                                              \
    }                                                                                \
  } while (0)

static void test_errors(void) {
  int64_t ids[2];
  double lps[2], u[2] = {0.5, 0.5};
  eng_tensor *l = mat(ENG_DTYPE_F32, 2, 2, (double[]){0, 1, NAN, 1});
  eng_tensor *ninf = mat(ENG_DTYPE_F32, 1, 2, (double[]){-INFINITY, -INFINITY});
  eng_tensor *pinf = mat(ENG_DTYPE_F64, 1, 2, (double[]){INFINITY, 0});
  eng_tensor *v = eng_zeros(ENG_DTYPE_F32, 1, (int64_t[]){3});
  eng_tensor *empty = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){2, 0});
  eng_tensor *ok = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){2, 3});
  CHECK_SAMPLE_FAILS(sample(l, 1, 0, 1, u, ids, lps), "sample_logits: row 2 of logits [2,2] holds a NaN logit");
  CHECK_SAMPLE_FAILS(sample(l, 0, 0, 1, NULL, ids, lps), "sample_logits: row 2 of logits [2,2] holds a NaN logit");
  CHECK_SAMPLE_FAILS(sample(ninf, 1, 0, 1, u, ids, lps),
                     "sample_logits: row 1 of logits [1,2] has every logit -inf: no token can be chosen");
  CHECK_SAMPLE_FAILS(sample(pinf, 0, 0, 1, u, ids, lps), "sample_logits: row 1 of logits [1,2] holds a +inf logit");
  CHECK_SAMPLE_FAILS(sample(v, 1, 0, 1, u, ids, lps), "sample_logits: logits must be (B,V), got [3]");
  CHECK_SAMPLE_FAILS(sample(empty, 1, 0, 1, u, ids, lps), "sample_logits: logits [2,0] has an empty vocabulary");
  CHECK_SAMPLE_FAILS(sample(ok, -1, 0, 1, u, ids, lps),
                     "sample_logits: temperature must be a finite number >= 0 (0 is greedy), got -1");
  CHECK_SAMPLE_FAILS(sample(ok, NAN, 0, 1, u, ids, lps),
                     "sample_logits: temperature must be a finite number >= 0 (0 is greedy), got nan");
  CHECK_SAMPLE_FAILS(sample(ok, 1, -2, 1, u, ids, lps),
                     "sample_logits: top_k must be an integer >= 0 (0 is off), got -2");
  CHECK_SAMPLE_FAILS(sample(ok, 1, 0, 0, u, ids, lps), "sample_logits: top_p must be in (0, 1] (1 is off), got 0");
  CHECK_SAMPLE_FAILS(sample(ok, 1, 0, 1, NULL, ids, lps),
                     "sample_logits: sampling needs one uniform per row, got none");
  CHECK_SAMPLE_FAILS(sample(ok, 1, 0, 1, (double[]){0.5, 1.0}, ids, lps),
                     "sample_logits: uniform 1 for row 2 is not in [0, 1)");
  /* -inf entries alone are fine: they are never chosen */
  eng_tensor *some = mat(ENG_DTYPE_F32, 1, 3, (double[]){-INFINITY, 0, -INFINITY});
  for (int i = 0; i < 3; i++) {
    double uu = i / 3.0;
    CHECK(sample(some, 1, 0, 0.5, &uu, ids, lps) == 0);
    CHECK(ids[0] == 1 && lps[0] == 0);
  }
  eng_tensor_release(some);
  eng_tensor_release(l);
  eng_tensor_release(ninf);
  eng_tensor_release(pinf);
  eng_tensor_release(v);
  eng_tensor_release(empty);
  eng_tensor_release(ok);
}

int main(void) {
  RUN(test_worked_by_hand);
  RUN(test_against_brute_force);
  RUN(test_grid_distribution);
  RUN(test_exp);
  RUN(test_strided_and_threads);
  RUN(test_errors);
  DONE();
}
