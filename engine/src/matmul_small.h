/* matmul_small.h — the few-rows float32 matrix product of matmul_small.c,
 * used by ops_matmul.c for the decode step of generation (a handful of rows
 * times a weight matrix), where BLAS spends most of its time packing the
 * weight. Internal to the engine; not part of the public API. */
#ifndef ENGINE_MATMUL_SMALL_H
#define ENGINE_MATMUL_SMALL_H

#include <stdbool.h>
#include <stdint.h>

/* the most rows of a that ops_matmul.c gives the kernel: it beat
 * OpenBLAS's sgemm by 1.3-2.4x up to here on this project's shapes (x·W and
 * x·Wᵀ, K 128-1024, N 384-8192, 1 and 2 threads) */
#define MATMUL_SMALL_MAX_M 32
/* below this many multiply-adds a product stays on one thread: waking the
 * others costs more than it saves */
#define MATMUL_SMALL_PAR_MIN (1 << 20)

/* C (M,N) = A (M,K) · op(B), all float32, row-major:
 *   A: element (m,k) at A[m*lda + k]
 *   trans_b false: B is (K,N), element (k,n) at B[k*ldb + n]  (x·W, GPT-2's Conv1D)
 *   trans_b true:  B is Wᵀ for W (N,K), element (k,n) at B[n*ldb + k]  (x·Wᵀ, Linear)
 *   C: element (m,n) at C[m*ldc + n]
 * Each weight element is read from memory once per call (the groups of
 * rows of A after the first find it in cache). Every C element is summed
 * in the same order whatever the thread count, so the result is the same
 * run to run and thread count to thread count. Columns of C are split
 * across OpenMP threads when the product is large enough to pay (never
 * inside a parallel region). M may be any size (it is cut in groups of a
 * few rows); the kernel pays over BLAS for M up to about
 * MATMUL_SMALL_MAX_M. */
void matmul_small_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, bool trans_b, float *C, int64_t ldc);

#endif
