/* test_gemm.c — gemm_f32 (engine/src/gemm_f32.c), the float32 product
 * under every matmul, attention and LM-head op: against a float64 loop for
 * all four transpose cases over sizes that cut every block edge (rows not a
 * multiple of the 14-row tile, columns not a multiple of 32, K over several
 * 256-deep blocks, N over a 3072-wide block), alpha and beta (beta 0 never
 * reads C: NaN there stays out), leading dims wider than the matrix (the
 * padding is never written), bit-identical results for 1 and 2 threads and
 * inside a parallel region, and the OpenBLAS fallback agreeing within
 * rounding. On a CPU without AVX-512F both paths are OpenBLAS and the
 * kernel-specific checks say so. */
#include "check.h"
#include "internal.h"

#include <omp.h>

typedef struct {
  int64_t M, N, K;
} dims;

/* sizes: tile edges (14 x 32), block edges (K 256, N 3072), degenerate */
static const dims CASES[] = {
    {1, 8, 1},     {14, 32, 256},  {15, 33, 257},  {13, 31, 255},   {29, 64, 513},  {100, 50, 300},
    {337, 97, 70}, {1000, 40, 77}, {5, 3100, 40},  {60, 3200, 600}, {28, 16, 1030}, {3, 9, 4},
};
#define NCASES (int)(sizeof CASES / sizeof CASES[0])

static float *random_floats(uint64_t seed, int64_t n) {
  float *p = malloc((size_t)n * sizeof(float));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    p[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
  }
  return p;
}

typedef struct {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float *A, *B, *C0;
} problem;

static problem make(bool ta, bool tb, dims d, uint64_t seed) {
  problem p = {ta, tb, d.M, d.N, d.K, 0, 0, 0, NULL, NULL, NULL};
  p.lda = (ta ? d.M : d.K) + 3;
  p.ldb = (tb ? d.K : d.N) + 5;
  p.ldc = d.N + 7;
  p.A = random_floats(seed, (ta ? d.K : d.M) * p.lda);
  p.B = random_floats(seed + 1, (tb ? d.N : d.K) * p.ldb);
  p.C0 = random_floats(seed + 2, d.M * p.ldc);
  return p;
}

static void drop(problem *p) {
  free(p->A);
  free(p->B);
  free(p->C0);
}

static float *run(const problem *p, float alpha, float beta) {
  float *C = malloc((size_t)(p->M * p->ldc) * sizeof(float));
  memcpy(C, p->C0, (size_t)(p->M * p->ldc) * sizeof(float));
  gemm_f32(p->ta, p->tb, p->M, p->N, p->K, alpha, p->A, p->lda, p->B, p->ldb, beta, C, p->ldc);
  return C;
}

/* max |C - (alpha·op(A)·op(B) + beta·C0)| over the matrix, by a float64
 * loop; *pad_ok false if any padding column changed */
static double max_error(const problem *p, const float *C, float alpha, float beta, bool *pad_ok) {
  double worst = 0;
  *pad_ok = true;
  for (int64_t i = 0; i < p->M; i++) {
    for (int64_t j = 0; j < p->N; j++) {
      double s = 0;
      for (int64_t k = 0; k < p->K; k++) {
        double a = p->ta ? p->A[k * p->lda + i] : p->A[i * p->lda + k];
        double b = p->tb ? p->B[j * p->ldb + k] : p->B[k * p->ldb + j];
        s += a * b;
      }
      double want = alpha * s + (beta == 0.0f ? 0.0 : beta * (double)p->C0[i * p->ldc + j]);
      double e = fabs(want - (double)C[i * p->ldc + j]);
      if (!(e <= worst)) worst = e; /* NaN counts as the worst */
    }
    for (int64_t j = p->N; j < p->ldc; j++)
      if (memcmp(&C[i * p->ldc + j], &p->C0[i * p->ldc + j], sizeof(float))) *pad_ok = false;
  }
  return worst;
}

static void test_values(void) {
  static const float alphas[] = {1.0f, 0.5f, -2.0f};
  static const float betas[] = {0.0f, 1.0f, -0.75f};
  for (int c = 0; c < NCASES; c++)
    for (int t = 0; t < 4; t++) {
      problem p = make(t & 1, t & 2, CASES[c], (uint64_t)(c * 4 + t));
      float alpha = alphas[(c + t) % 3], beta = betas[c % 3];
      float *C = run(&p, alpha, beta);
      bool pad_ok;
      double err = max_error(&p, C, alpha, beta, &pad_ok);
      /* float32 accumulation over K terms of size <= 0.25: error ~ K·eps */
      double tol = 4e-7 * (double)p.K * fabs(alpha) + 1e-6;
      if (!(err <= tol))
        fprintf(stderr, "  ta=%d tb=%d M=%lld N=%lld K=%lld: max error %g (tol %g)\n", p.ta, p.tb,
                (long long)p.M, (long long)p.N, (long long)p.K, err, tol);
      CHECK(err <= tol);
      CHECK(pad_ok);
      free(C);
      drop(&p);
    }
}

/* beta = 0 must not read C: NaN (and Inf) there must not reach the result */
static void test_beta_zero_ignores_c(void) {
  dims d = {45, 70, 300};
  for (int t = 0; t < 4; t++) {
    problem p = make(t & 1, t & 2, d, 77 + (uint64_t)t);
    for (int64_t i = 0; i < p.M * p.ldc; i++) p.C0[i] = i % 2 ? NAN : INFINITY;
    float *C = run(&p, 1.0f, 0.0f);
    bool pad_ok;
    CHECK(max_error(&p, C, 1.0f, 0.0f, &pad_ok) < 1e-4);
    free(C);
    drop(&p);
  }
}

/* the same bits for 1 and 2 threads, and from inside a parallel region */
static void test_thread_independent(void) {
  dims ds[] = {{300, 700, 600}, {1024, 256, 300}, {29, 3100, 257}};
  for (int c = 0; c < 3; c++)
    for (int t = 0; t < 4; t++) {
      problem p = make(t & 1, t & 2, ds[c], 500 + (uint64_t)(c * 4 + t));
      eng_set_threads(2);
      float *C2 = run(&p, 1.0f, 0.5f);
      eng_set_threads(1);
      float *C1 = run(&p, 1.0f, 0.5f);
      eng_set_threads(2);
      float *Cn = malloc((size_t)(p.M * p.ldc) * sizeof(float));
      memcpy(Cn, p.C0, (size_t)(p.M * p.ldc) * sizeof(float));
#pragma omp parallel num_threads(2)
      {
#pragma omp single
        gemm_f32(p.ta, p.tb, p.M, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.ldb, 0.5f, Cn, p.ldc);
      }
      size_t nb = (size_t)(p.M * p.ldc) * sizeof(float);
      CHECK(memcmp(C1, C2, nb) == 0);
      CHECK(memcmp(Cn, C2, nb) == 0);
      free(C1);
      free(C2);
      free(Cn);
      drop(&p);
    }
}

/* the engine kernel and cblas_sgemm agree within float32 rounding */
static void test_against_openblas(void) {
  if (!gemm_f32_engine_kernel()) {
    fprintf(stderr, "  (no AVX-512F here: gemm_f32 is OpenBLAS; kernel comparison skipped)\n");
    return;
  }
  dims d = {200, 300, 700};
  for (int t = 0; t < 4; t++) {
    problem p = make(t & 1, t & 2, d, 900 + (uint64_t)t);
    float *Ce = run(&p, 1.0f, 1.0f);
    gemm_f32_set_engine_kernel(false);
    CHECK(!gemm_f32_engine_kernel());
    float *Cb = run(&p, 1.0f, 1.0f);
    gemm_f32_set_engine_kernel(true);
    CHECK(gemm_f32_engine_kernel());
    double worst = 0;
    bool differ = false;
    for (int64_t i = 0; i < p.M * p.ldc; i++) {
      double e = fabs((double)Ce[i] - (double)Cb[i]);
      if (e > worst) worst = e;
      if (Ce[i] != Cb[i]) differ = true;
    }
    CHECK(worst < 5e-5);
    CHECK(differ); /* the two really are different kernels */
    free(Ce);
    free(Cb);
    drop(&p);
  }
}

int main(void) {
  eng_set_threads(2);
  fprintf(stderr, "gemm_f32 backend: %s\n", gemm_f32_engine_kernel() ? "engine AVX-512" : "OpenBLAS");
  RUN(test_values);
  RUN(test_beta_zero_ignores_c);
  RUN(test_thread_independent);
  RUN(test_against_openblas);
  DONE();
}
