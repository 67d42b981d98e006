/* bench_matmul.c — eng_matmul against raw cblas_sgemm (OpenBLAS, with the
 * environment's core type) on the same shapes, float32, 2 threads: what the
 * engine's product costs or gains on a transformer-sized product. eng_matmul
 * runs gemm_f32 (engine/src/gemm_f32.c): the engine's AVX-512 kernel where
 * the CPU has AVX-512F, else OpenBLAS itself (then the figure is the cost
 * of the engine's dispatch: shape checks, output allocation from the pool,
 * layout decisions). Prints the median GFLOP/s of each, their ratio, and
 * the median of per-run ratios (raw and engine runs alternate); asserts
 * nothing.
 *
 * Cases
 *   (2048,768)·(768,3072)         one plain gemm
 *   (8,256,768)·(768,3072)        batched a, 2-D b: folded into one gemm
 *   (8,256,768)·(3072,768)ᵀ       the same with b a transposed view (CblasTrans)
 *
 * Build by hand after the CMake build (from the repository root):
 *   gcc -O2 -march=native -fopenmp -Iengine/include bench/bench_matmul.c \
 *       build/libengine_core.a $(pkg-config --cflags --libs openblas) -lm \
 *       -o build/bench_matmul
 *   ./build/bench_matmul [runs=20]
 */
#include "engine.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WARMUP 3

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* one case: a (batch·M, K) and b laid out as the engine sees them; raw runs
 * sgemm on the same buffers with M' = batch·M */
static int run_case(const char *name, eng_tensor *a, eng_tensor *b, bool b_trans, int runs) {
  const int64_t *as = eng_tensor_shape(a);
  int nd = eng_tensor_ndim(a);
  int64_t K = as[nd - 1], M = eng_tensor_numel(a) / K;
  int64_t N = b_trans ? eng_tensor_shape(b)[0] : eng_tensor_shape(b)[1];
  float *A = eng_tensor_data(a), *B = eng_tensor_data(b);
  float *C = aligned_alloc(64, sizeof(float) * (size_t)(M * N));
  eng_tensor *bv = b_trans ? eng_transpose(b, 0, 1) : eng_tensor_retain(b);
  if (!C || !bv) {
    fprintf(stderr, "%s: setup failed: %s\n", name, eng_last_error());
    return 1;
  }
  double *traw = malloc(sizeof(double) * (size_t)runs), *teng = malloc(sizeof(double) * (size_t)runs);
  double worst = 0;
  for (int i = -WARMUP; i < runs; i++) {
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_trans ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N,
                (blasint)K, 1.0f, A, (blasint)K, B, (blasint)(b_trans ? K : N), 0.0f, C, (blasint)N);
    double t1 = now();
    eng_tensor *c = eng_matmul(a, bv);
    double t2 = now();
    if (!c) {
      fprintf(stderr, "%s: %s\n", name, eng_last_error());
      return 1;
    }
    if (i == runs - 1) {
      const float *E = eng_tensor_data(c);
      for (int64_t j = 0; j < M * N; j++) worst = fmax(worst, fabs((double)E[j] - (double)C[j]));
    }
    eng_tensor_release(c);
    if (i >= 0) {
      traw[i] = t1 - t0;
      teng[i] = t2 - t1;
    }
  }
  /* the median of per-run ratios is robust to load that drifts during the
   * benchmark (each raw run is paired with the engine run right after it) */
  double *ratio = malloc(sizeof(double) * (size_t)runs);
  for (int i = 0; i < runs; i++) ratio[i] = traw[i] / teng[i];
  double paired = median(ratio, runs);
  free(ratio);
  double flop = 2.0 * (double)M * (double)N * (double)K;
  double g_raw = flop / median(traw, runs) * 1e-9, g_eng = flop / median(teng, runs) * 1e-9;
  printf("%-26s raw sgemm %6.1f GFLOP/s  eng_matmul %6.1f GFLOP/s  ratio %.3f  paired %.3f  max|diff| %.0e\n",
         name, g_raw, g_eng, g_eng / g_raw, paired, worst);
  free(traw);
  free(teng);
  free(C);
  eng_tensor_release(bv);
  return 0;
}

int main(int argc, char **argv) {
  int runs = argc > 1 ? atoi(argv[1]) : 20;
  if (runs < 1) runs = 1;
  eng_set_threads(2);
  eng_rng *r = eng_rng_new(1);
  eng_tensor *a2 = eng_randn(r, ENG_DTYPE_F32, 2, (int64_t[]){2048, 768});
  eng_tensor *a3 = eng_randn(r, ENG_DTYPE_F32, 3, (int64_t[]){8, 256, 768});
  eng_tensor *w = eng_randn(r, ENG_DTYPE_F32, 2, (int64_t[]){768, 3072});
  eng_tensor *wt = eng_randn(r, ENG_DTYPE_F32, 2, (int64_t[]){3072, 768});
  printf("float32, %d threads, median of %d runs after %d warm-up\n", eng_get_threads(), runs, WARMUP);
  int rc = run_case("(2048,768)x(768,3072)", a2, w, false, runs);
  rc |= run_case("(8,256,768)x(768,3072)", a3, w, false, runs);
  rc |= run_case("(8,256,768)x(3072,768)^T", a3, wt, true, runs);
  eng_tensor_release(a2);
  eng_tensor_release(a3);
  eng_tensor_release(w);
  eng_tensor_release(wt);
  eng_rng_free(r);
  return rc;
}
