/* matmul_small.c — C = A·op(B) in float32 for a few rows of A (the decode
 * step of generation: B prompts times a weight), without BLAS.
 *
 * Why: for M = 8 rows, sgemm spends most of its time packing the weight
 * into its panel layout, once per call, to use it for only 8 rows. Here
 * each weight element is loaded from memory once per call and used
 * straight from where it lies:
 *   x·W  (W (K,N) row-major, GPT-2's Conv1D): tiles of up to 8 rows × 16·NV
 *        columns held in vector registers; for each k, one row slice of W
 *        is loaded and multiplied by the broadcast A[m,k] of every row.
 *   x·Wᵀ (W (N,K) row-major, a Linear weight or a tied LM head): tiles of
 *        up to 4 rows × NR weight rows (16 sums); dot products along k, 16
 *        lanes at a time, the tile's 16 sums reduced together at the end.
 * The vectors are GCC/Clang vector extensions (16 floats), which the
 * compiler lowers to whatever the build targets: one AVX-512 register with
 * -march=native on this machine, two AVX registers or four SSE ones
 * elsewhere. No run-time CPU dispatch is needed: the code never uses an
 * instruction the rest of the build does not.
 *
 * Determinism: an output element is always summed in the same order (lane
 * by lane over k, then a fixed reduction tree), whichever thread computes
 * it; threads only split the columns. So results do not change run to run
 * nor with the thread count (unlike OpenBLAS's).
 *
 * Not here: float64, strided A columns (the caller packs A), gradients (the
 * caller keeps BLAS for backward), many rows (BLAS wins above a few dozen). */
#include "matmul_small.h"

#include <omp.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
#define VL 16

#define INLINE static inline __attribute__((always_inline))

INLINE v16 vload(const float *p) { return *(const v16u *)p; }
INLINE void vstore(float *p, v16 v) { *(v16u *)p = v; }

/* the sum of the 16 lanes, in a fixed order */
INLINE float hsum(v16 v) {
  v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

/* ---- x·W: A (MR,K), B (K,N) row-major --------------------------------------- */

/* rows of B per pass over the columns. A tile walking down all K rows of a
 * few columns would touch a new page every row, which the hardware
 * prefetchers do not follow; a pass reads NN_KB rows side by side, each
 * sequentially along the columns, and the partial sums go through C (a few
 * rows of it, which stay in L1) from one pass to the next. */
#define NN_KB 16

/* C (MR, 16·NV) (+)= A (MR, [k0,k1)) · B ([k0,k1), 16·NV): one register
 * tile; C's old values are the starting sums unless k0 == 0 */
INLINE void nn_tile(const int MR, const int NV, int64_t k0, int64_t k1, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float *C, int64_t ldc) {
  v16 acc[8][8];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++) acc[i][j] = k0 == 0 ? (v16){0} : vload(C + i * ldc + j * VL);
  for (int64_t k = k0; k < k1; k++) {
    v16 b[8];
    for (int j = 0; j < NV; j++) b[j] = vload(B + k * ldb + j * VL);
    for (int i = 0; i < MR; i++) {
      float a = A[i * lda + k];
      for (int j = 0; j < NV; j++) acc[i][j] += b[j] * a;
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++) vstore(C + i * ldc + j * VL, acc[i][j]);
}

/* the same over w columns: tiles of 16·NV columns, then of 16, then one
 * column at a time */
INLINE void nn_span(const int MR, const int NV, int64_t k0, int64_t k1, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float *C, int64_t ldc, int64_t w) {
  int64_t j = 0;
  for (; j + NV * VL <= w; j += NV * VL) nn_tile(MR, NV, k0, k1, A, lda, B + j, ldb, C + j, ldc);
  for (; j + VL <= w; j += VL) nn_tile(MR, 1, k0, k1, A, lda, B + j, ldb, C + j, ldc);
  for (; j < w; j++)
    for (int i = 0; i < MR; i++) {
      float s = k0 == 0 ? 0.0f : C[i * ldc + j];
      for (int64_t k = k0; k < k1; k++) s += A[i * lda + k] * B[k * ldb + j];
      C[i * ldc + j] = s;
    }
}

/* mr rows (8, 4, 2 or 1) */
static void nn_rows(int mr, int64_t k0, int64_t k1, const float *A, int64_t lda, const float *B, int64_t ldb,
                    float *C, int64_t ldc, int64_t w) {
  switch (mr) {
  case 8: nn_span(8, 2, k0, k1, A, lda, B, ldb, C, ldc, w); break;
  case 4: nn_span(4, 4, k0, k1, A, lda, B, ldb, C, ldc, w); break;
  case 2: nn_span(2, 8, k0, k1, A, lda, B, ldb, C, ldc, w); break;
  default: nn_span(1, 8, k0, k1, A, lda, B, ldb, C, ldc, w); break;
  }
}

/* C (M, w) = A (M,K) · B (K, w): passes of NN_KB rows of B, each over every
 * group of 8, 4, 2, 1 rows of A (the pass's rows of B are then in cache) */
static void nn_range(int64_t M, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc, int64_t w) {
  for (int64_t k0 = 0; k0 < K; k0 += NN_KB) {
    int64_t k1 = K - k0 < NN_KB ? K : k0 + NN_KB;
    for (int64_t m = 0; m < M;) {
      int64_t left = M - m;
      int mr = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
      nn_rows(mr, k0, k1, A + m * lda, lda, B, ldb, C + m * ldc, ldc, w);
      m += mr;
    }
  }
}

/* ---- x·Wᵀ: A (MR,K), W (N,K) row-major ------------------------------------- */

/* lane i of the result = the sum of the 16 lanes of x[i], for 16 vectors at
 * once: four rounds that each add pairs of half-vectors, gathering the
 * partial sums of two sources into one vector. The rounds leave source i in
 * lane bitreverse4(i), so the sources are taken in that order. */
INLINE v16 hsum16(const v16 *x) {
  static const int br[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  v16 y[8], z[4], w[2];
  for (int i = 0; i < 8; i++) {
    v16 a = x[br[2 * i]], b = x[br[2 * i + 1]];
    y[i] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 4; i++)
    z[i] = __builtin_shufflevector(y[2 * i], y[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26,
                                   27) +
           __builtin_shufflevector(y[2 * i], y[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30,
                                   31);
  for (int i = 0; i < 2; i++)
    w[i] = __builtin_shufflevector(z[2 * i], z[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28,
                                   29) +
           __builtin_shufflevector(z[2 * i], z[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30,
                                   31);
  return __builtin_shufflevector(w[0], w[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(w[0], w[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

/* the dot products of MR rows of A with NR rows of W, 16 lanes along k:
 * acc[i·NR + j] gathers A row i · W row j over k < K rounded down to 16 */
INLINE void nt_acc(const int MR, const int NR, int64_t K, const float *A, int64_t lda, const float *W,
                   int64_t ldw, v16 *acc) {
  for (int i = 0; i < MR * NR; i++) acc[i] = (v16){0};
  for (int64_t k = 0; k + VL <= K; k += VL) {
    v16 w[16];
    for (int j = 0; j < NR; j++) w[j] = vload(W + j * ldw + k);
    for (int i = 0; i < MR; i++) {
      v16 a = vload(A + i * lda + k);
      for (int j = 0; j < NR; j++) acc[i * NR + j] += a * w[j];
    }
  }
}

/* the last K % 16 terms of A row i · W row j, added to s */
INLINE float nt_tail(float s, int64_t K, const float *a, const float *w) {
  for (int64_t r = K - K % VL; r < K; r++) s += a[r] * w[r];
  return s;
}

/* C (MR, NR) = A (MR,K) · W (NR,K)ᵀ with MR·NR = 16: the 16 sums reduced
 * together */
INLINE void nt_tile16(const int MR, const int NR, int64_t K, const float *A, int64_t lda, const float *W,
                      int64_t ldw, float *C, int64_t ldc) {
  v16 acc[16];
  nt_acc(MR, NR, K, A, lda, W, ldw, acc);
  v16 s = hsum16(acc);
  if (K % VL)
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NR; j++) s[i * NR + j] = nt_tail(s[i * NR + j], K, A + i * lda, W + j * ldw);
  if (MR == 1) {
    vstore(C, s);
    return;
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) C[i * ldc + j] = s[i * NR + j];
}

/* C (MR, 1) = A (MR,K) · W (1,K)ᵀ: one weight row, each sum reduced alone */
INLINE void nt_tile1(const int MR, int64_t K, const float *A, int64_t lda, const float *W, float *C,
                     int64_t ldc) {
  v16 acc[8];
  nt_acc(MR, 1, K, A, lda, W, 0, acc);
  for (int i = 0; i < MR; i++) C[i * ldc] = nt_tail(hsum(acc[i]), K, A + i * lda, W);
}

/* C (MR, n) = A (MR,K) · W (n,K)ᵀ: tiles of NR weight rows, then single rows */
INLINE void nt_span(const int MR, const int NR, int64_t K, const float *A, int64_t lda, const float *W,
                    int64_t ldw, float *C, int64_t ldc, int64_t n) {
  int64_t j = 0;
  for (; j + NR <= n; j += NR) nt_tile16(MR, NR, K, A, lda, W + j * ldw, ldw, C + j, ldc);
  for (; j < n; j++) nt_tile1(MR, K, A, lda, W + j * ldw, C + j, ldc);
}

/* mr rows (4, 2 or 1) */
static void nt_rows(int mr, int64_t K, const float *A, int64_t lda, const float *W, int64_t ldw, float *C,
                    int64_t ldc, int64_t n) {
  switch (mr) {
  case 4: nt_span(4, 4, K, A, lda, W, ldw, C, ldc, n); break;
  case 2: nt_span(2, 8, K, A, lda, W, ldw, C, ldc, n); break;
  default: nt_span(1, 16, K, A, lda, W, ldw, C, ldc, n); break;
  }
}

/* ---- the entry point ----------------------------------------------------------- */

/* C (M, n) = A (M,K) · W (n,K)ᵀ: tiles over W's rows for each group of
 * 4, 2, 1 rows of A. Groups of 4 rows by 4 weight rows beat groups of 8 by
 * 2 (measured: about 20% on the (8,256)·(8192,256)ᵀ head): a k step loads
 * 8 vectors for 16 multiply-adds instead of 18, and the panel of W the
 * second group reads again is in cache. */
static void nt_range(int64_t M, int64_t K, const float *A, int64_t lda, const float *W, int64_t ldw, float *C,
                     int64_t ldc, int64_t n) {
  for (int64_t m = 0; m < M;) {
    int64_t left = M - m;
    int mr = left >= 4 ? 4 : left >= 2 ? 2 : 1;
    nt_rows(mr, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, n);
    m += mr;
  }
}

/* columns [p·pw, (p+1)·pw) of C */
static void panel(int64_t p, int64_t pw, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                  const float *B, int64_t ldb, bool trans_b, float *C, int64_t ldc) {
  int64_t n0 = p * pw, w = N - n0 < pw ? N - n0 : pw;
  if (trans_b)
    nt_range(M, K, A, lda, B + n0 * ldb, ldb, C + n0, ldc, w);
  else
    nn_range(M, K, A, lda, B + n0, ldb, C + n0, ldc, w);
}

void matmul_small_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, bool trans_b, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) C[m * ldc + n] = 0;
    return;
  }
  /* the columns are cut into one contiguous range per thread (a multiple
   * of 32 columns, the widest tile), or, for x·Wᵀ, into panels of 64
   * weight rows (64 KB for K = 256: each group of rows of A after the first
   * finds the panel in cache) handed out in order */
  int nt = omp_get_max_threads();
  bool par = nt > 1 && !omp_in_parallel() && (double)M * (double)N * (double)K >= MATMUL_SMALL_PAR_MIN;
  int64_t pw;
  if (trans_b) {
    pw = 64;
  } else {
    int64_t parts = par ? nt : 1;
    pw = ((N + parts - 1) / parts + 31) / 32 * 32;
  }
  int64_t np = (N + pw - 1) / pw;
  if (!par || np == 1) { /* no parallel region at all: even an inactive one costs a few µs */
    for (int64_t p = 0; p < np; p++) panel(p, pw, M, N, K, A, lda, B, ldb, trans_b, C, ldc);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < np; p++) panel(p, pw, M, N, K, A, lda, B, ldb, trans_b, C, ldc);
}
