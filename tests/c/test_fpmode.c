/* test_fpmode.c — eng_set_flush_denormal / eng_get_flush_denormal: with the
 * mode off an engine kernel keeps a subnormal exactly, with it on the
 * result is 0, in every thread of the OpenMP team (the element-wise kernels
 * split a large tensor across threads; matmul runs on OpenBLAS's threads),
 * also in threads the pool creates after the mode was set and after a
 * worker's own MXCSR drifted (eng_set_threads applies the mode again).
 * Inputs are written as bit patterns, so that no conversion in the test
 * itself depends on the mode; each team's MXCSR is also read directly. */
#include "check.h"
#include "engine_fpmode.h"
#include "internal.h"

#include <omp.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <xmmintrin.h>
#define BOTH_BITS 0x8040u /* FTZ | DAZ */

/* how many threads of a team of n lack either bit (and the team's size) */
static int threads_without_mode(int n, int *team) {
  int bad = 0, size = 0;
#pragma omp parallel num_threads(n) reduction(+ : bad)
  {
    bad += (_mm_getcsr() & BOTH_BITS) != BOTH_BITS;
#pragma omp single
    size = omp_get_num_threads();
  }
  *team = size;
  return bad;
}
#endif

#define SUB32 0x00080000u          /* 2^-130, a float32 subnormal */
#define SUB64 0x0000000000004000ull /* 2^-1060, a float64 subnormal */
#define N (4 * PARALLEL_MIN)        /* large enough to run on every thread */

static eng_tensor *filled32(int64_t n, uint32_t bits) {
  int64_t s[1] = {n};
  eng_tensor *t = eng_zeros(ENG_DTYPE_F32, 1, s);
  uint32_t *p = eng_tensor_data(t);
  for (int64_t i = 0; i < n; i++) p[i] = bits;
  return t;
}

/* elements of y (float32, n of them) in [lo, hi) whose bits differ from want */
static int64_t count_not32(eng_tensor *y, int64_t lo, int64_t hi, uint32_t want) {
  const uint32_t *p = eng_tensor_data(y);
  int64_t bad = 0;
  for (int64_t i = lo; i < hi; i++) bad += p[i] != want;
  return bad;
}

/* x * 1 over N elements of 2^-130: every element, in both halves (the two
 * threads' chunks), is want */
static void check_mul32(uint32_t want) {
  eng_tensor *x = filled32(N, SUB32);
  eng_tensor *one = eng_scalar_like(x, 1.0);
  eng_tensor *y = eng_mul(x, one);
  CHECK(y != NULL);
  if (y) {
    CHECK(count_not32(y, 0, N / 2, want) == 0);
    CHECK(count_not32(y, N / 2, N, want) == 0);
    CHECK(count_not32(y, N - 16, N, want) == 0); /* the last thread's tail */
  }
  eng_tensor_release(x);
  eng_tensor_release(one);
  eng_tensor_release(y);
}

/* float64: x + 0 over N elements of 2^-1060 */
static void check_add64(uint64_t want) {
  int64_t s[1] = {N};
  eng_tensor *x = eng_zeros(ENG_DTYPE_F64, 1, s);
  uint64_t *p = eng_tensor_data(x);
  for (int64_t i = 0; i < N; i++) p[i] = SUB64;
  eng_tensor *z = eng_scalar_like(x, 0.0);
  eng_tensor *y = eng_add(x, z);
  CHECK(y != NULL);
  if (y) {
    const uint64_t *q = eng_tensor_data(y);
    int64_t bad = 0;
    for (int64_t i = 0; i < N; i++) bad += q[i] != want;
    CHECK(bad == 0);
  }
  eng_tensor_release(x);
  eng_tensor_release(z);
  eng_tensor_release(y);
}

/* float64 matmul through OpenBLAS's dgemm, (256,256) @ I: a has 2^-1060 on
 * its diagonal (few subnormal operations: quick even when not flushed); the
 * product's diagonal is want, every other element 0 */
static void check_matmul64(uint64_t want) {
  enum { M = 256 };
  int64_t s[2] = {M, M};
  eng_tensor *a = eng_zeros(ENG_DTYPE_F64, 2, s), *b = eng_zeros(ENG_DTYPE_F64, 2, s);
  uint64_t *pa = eng_tensor_data(a);
  double *pb = eng_tensor_data(b);
  for (int i = 0; i < M; i++) {
    pa[i * M + i] = SUB64;
    pb[i * M + i] = 1.0;
  }
  eng_tensor *c = eng_matmul(a, b);
  CHECK(c != NULL);
  if (c) {
    const uint64_t *q = eng_tensor_data(c);
    int bad = 0;
    for (int i = 0; i < M; i++)
      for (int j = 0; j < M; j++) bad += q[i * M + j] != (i == j ? want : 0);
    CHECK(bad == 0);
  }
  eng_tensor_release(a);
  eng_tensor_release(b);
  eng_tensor_release(c);
}

static void test_off_keeps_subnormals(void) {
  eng_set_threads(2);
  eng_set_flush_denormal(false);
  CHECK(!eng_get_flush_denormal());
  check_mul32(SUB32);
  check_add64(SUB64);
  check_matmul64(SUB64);
}

#if defined(__x86_64__)
static void test_supported_and_getter(void) {
  CHECK(eng_set_flush_denormal(true));
  CHECK(eng_get_flush_denormal());
  CHECK((_mm_getcsr() & BOTH_BITS) == BOTH_BITS);
  CHECK(eng_set_flush_denormal(false));
  CHECK(!eng_get_flush_denormal());
  CHECK((_mm_getcsr() & BOTH_BITS) == 0);
}

/* the pool's threads exist (made by the kernels above, mode off) before the
 * mode is turned on: the setter must reach them */
static void test_on_flushes_in_every_thread(void) {
  eng_set_threads(2);
  eng_set_flush_denormal(false);
  check_mul32(SUB32); /* the team of 2 runs, without the mode */
  CHECK(eng_set_flush_denormal(true));
  int team = 0;
  CHECK(threads_without_mode(2, &team) == 0);
  CHECK(team == 2);
  check_mul32(0);
  check_add64(0);
  check_matmul64(0);
  /* and off again, in every thread */
  CHECK(eng_set_flush_denormal(false));
  CHECK(threads_without_mode(2, &team) == 2);
  check_mul32(SUB32);
  check_matmul64(SUB64);
}

/* a larger team made later, bypassing eng_set_threads: its new threads
 * start in the mode */
static void test_new_threads_inherit(void) {
  eng_set_threads(2);
  CHECK(eng_set_flush_denormal(true));
  omp_set_num_threads(4);
  int team = 0;
  CHECK(threads_without_mode(4, &team) == 0);
  CHECK(team == 4);
  check_mul32(0);
  check_matmul64(0);
  eng_set_threads(2);
  eng_set_flush_denormal(false);
}

/* threads whose MXCSR drifted (each clears its bits) get the mode back
 * from eng_set_threads, and a grown team keeps it */
static void test_set_threads_reapplies(void) {
  eng_set_threads(2);
  CHECK(eng_set_flush_denormal(true));
  int team = 0;
#pragma omp parallel num_threads(2)
  _mm_setcsr(_mm_getcsr() & ~BOTH_BITS);
  CHECK(threads_without_mode(2, &team) == 2);
  eng_set_threads(2);
  CHECK(threads_without_mode(2, &team) == 0);
  check_mul32(0);
  eng_set_threads(3);
  CHECK(threads_without_mode(3, &team) == 0);
  CHECK(team == 3);
  check_mul32(0);
  eng_set_threads(2);
  eng_set_flush_denormal(false);
  check_mul32(SUB32);
}
#else
static void test_unsupported_is_noop(void) {
  CHECK(!eng_set_flush_denormal(true));
  CHECK(!eng_get_flush_denormal());
  check_mul32(SUB32);
}
#endif

int main(void) {
  RUN(test_off_keeps_subnormals);
#if defined(__x86_64__)
  RUN(test_supported_and_getter);
  RUN(test_on_flushes_in_every_thread);
  RUN(test_new_threads_inherit);
  RUN(test_set_threads_reapplies);
#else
  RUN(test_unsupported_is_noop);
#endif
  DONE();
}
