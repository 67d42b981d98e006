/* gemm_f32.c — the engine's float32 matrix product,
 * C (M,N) <- alpha·op(A)·op(B) + beta·C, row-major.
 *
 * Why our own: the environment pins OpenBLAS to its Haswell (AVX2) kernels,
 * which reach ~124 GFLOP/s on two cores of a machine whose AVX-512 FMA peak
 * is ~330. On a CPU with AVX-512F this file's kernel runs instead (BLIS
 * layout: B packed in KC x NC blocks of NR-wide panels that stay in L1, A in
 * MC x KC blocks of MR-tall panels that stay in L2, a 14x32 register tile).
 * Elsewhere, and when ENGINE_SGEMM=openblas is set, cblas_sgemm does the work.
 *
 * Threads: the rows of C are cut into blocks (and the columns into chunks
 * when there are fewer row blocks than threads); each thread packs its own
 * copy of the B panels its blocks need, so threads never wait for each other
 * inside a product (with OMP_WAIT_POLICY=PASSIVE a barrier per K block cost
 * more than packing B twice). Inside an OpenMP parallel region (attention's
 * per-head products) the product runs on the calling thread alone.
 *
 * Determinism: every element of C is the same chain of FMAs over k (blocks
 * of KC in order, each block one accumulator from zero, added to C) whatever
 * the thread count or the split of rows and columns, so the result does not
 * depend on the number of threads. */
#include "internal.h"

#include <cblas.h>
#include <immintrin.h>
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MR 14
#define NR 32
#define KC 256
#define MC_MAX 336 /* multiple of MR; an A block is 336 KB, well inside L2 */
#define NC 3072    /* multiple of NR; a B block is 3 MB, in L3 */

/* products smaller than this many multiply-adds, or with fewer than
 * MIN_N columns, stay on cblas_sgemm (packing costs more than it saves) */
#define MIN_WORK 32768.0
#define MIN_N 8
#define MIN_PARALLEL_WORK 2.0e6

/* ---- which kernel ------------------------------------------------------ */

static int backend = -1; /* -1 unset, 0 OpenBLAS, 1 engine AVX-512 */

static int pick_backend(void) {
  const char *env = getenv("ENGINE_SGEMM");
  if (env && strcmp(env, "openblas") == 0) return 0;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

bool gemm_f32_engine_kernel(void) {
  int b = __atomic_load_n(&backend, __ATOMIC_RELAXED);
  if (b < 0) {
    b = pick_backend();
    __atomic_store_n(&backend, b, __ATOMIC_RELAXED);
  }
  return b == 1;
}

const char *eng_matmul_backend(void) { return gemm_f32_engine_kernel() ? "engine-avx512" : "openblas"; }

void gemm_f32_set_engine_kernel(bool on) {
  __atomic_store_n(&backend, on ? pick_backend() : 0, __ATOMIC_RELAXED);
}

/* ---- per-thread packing buffer (grows, never shrinks) ------------------- */

static _Thread_local float *ws_ptr;
static _Thread_local size_t ws_len;

static float *workspace(size_t n) {
  if (ws_len >= n) return ws_ptr;
  free(ws_ptr);
  size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
  ws_ptr = aligned_alloc(64, bytes);
  ws_len = ws_ptr ? n : 0;
  return ws_ptr;
}

/* ---- packing ------------------------------------------------------------ */

#define AVX512 __attribute__((target("avx512f")))

/* r[i] lane j -> r[j] lane i (a 16x16 block of floats) */
AVX512 static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; i++) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

/* rows [0, n) of src (each `len` floats from src + i*ld, n <= 16) as the
 * columns of dst: dst[k*dld + i] = src[i*ld + k] for k < len, i < 16 (rows
 * >= n read as zero); each dst row is written with the lanes in `keep` */
AVX512 static void transpose_rows(const float *src, int64_t ld, int64_t n, int64_t len, float *dst, int64_t dld,
                                  __mmask16 keep) {
  __m512 r[16];
  for (int64_t k = 0; k < len; k += 16) {
    int64_t w = len - k < 16 ? len - k : 16;
    __mmask16 m = (__mmask16)(w == 16 ? 0xFFFF : (1u << w) - 1);
    for (int i = 0; i < 16; i++) r[i] = i < n ? _mm512_maskz_loadu_ps(m, src + i * ld + k) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t kk = 0; kk < w; kk++) _mm512_mask_storeu_ps(dst + (k + kk) * dld, keep, r[kk]);
  }
}

/* columns [j0, j0+nr) of rows [k0, k0+kc) of op(B) into dst[k*NR + j],
 * zero beyond nr */
AVX512 static void pack_b_panel(bool tb, const float *B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nr,
                                float *dst) {
  if (!tb) {
    const float *src = B + k0 * ldb + j0;
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
    for (int64_t k = 0; k < kc; k++, src += ldb, dst += NR) {
      _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m0, src));
      _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(m1, src + 16));
    }
    return;
  }
  /* element (k, j) at B[j*ldb + k]: rows of B are runs of k */
  const float *src = B + j0 * ldb + k0;
  transpose_rows(src, ldb, nr < 16 ? nr : 16, kc, dst, NR, 0xFFFF);
  transpose_rows(src + 16 * ldb, ldb, nr > 16 ? nr - 16 : 0, kc, dst + 16, NR, 0xFFFF);
}

/* rows [i0, i0+mr) of columns [k0, k0+kc) of op(A) into dst[k*MR + i],
 * zero beyond mr */
AVX512 static void pack_a_panel(bool ta, const float *A, int64_t lda, int64_t i0, int64_t mr, int64_t k0, int64_t kc,
                                float *dst) {
  if (ta) { /* element (i, k) at A[k*lda + i] */
    const float *src = A + k0 * lda + i0;
    __mmask16 m = (__mmask16)((1u << mr) - 1);
    for (int64_t k = 0; k < kc; k++, src += lda, dst += MR)
      _mm512_mask_storeu_ps(dst, (__mmask16)((1u << MR) - 1), _mm512_maskz_loadu_ps(m, src));
    return;
  }
  transpose_rows(A + i0 * lda + k0, lda, mr, kc, dst, MR, (__mmask16)((1u << MR) - 1));
}

/* ---- the 14x32 register tile -------------------------------------------- */

#define ACC_DECL(i) __m512 c##i##a = _mm512_setzero_ps(), c##i##b = _mm512_setzero_ps();
#define ACC_FMA(i)                                   \
  {                                                  \
    __m512 ai = _mm512_set1_ps(a[i]);                \
    c##i##a = _mm512_fmadd_ps(ai, b0, c##i##a);      \
    c##i##b = _mm512_fmadd_ps(ai, b1, c##i##b);      \
  }
#define ACC_SAVE(i)                          \
  _mm512_store_ps(t + (i) * NR, c##i##a);    \
  _mm512_store_ps(t + (i) * NR + 16, c##i##b);
#define FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

/* t (MR x NR) <- a·b over kc steps of packed panels. Nothing else is live in
 * the loop, so the 28 accumulators, two B vectors and the broadcast fit the
 * 32 registers without spills. */
AVX512 __attribute__((noinline)) static void tile_14x32(int64_t kc, const float *restrict a,
                                                                     const float *restrict b, float *restrict t) {
  FOR_ROWS(ACC_DECL)
  for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    FOR_ROWS(ACC_FMA)
  }
  FOR_ROWS(ACC_SAVE)
}

/* C[0:mr, 0:nr] <- alpha·(a·b) + beta·C (C not read when beta is 0) */
AVX512 static void kernel_14x32(int64_t kc, const float *a, const float *b, float *c,
                                                             int64_t ldc, int mr, int nr, float alpha, float beta) {
  _Alignas(64) float t[MR * NR];
  tile_14x32(kc, a, b, t);
  __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; i++, c += ldc) {
    __m512 v0 = _mm512_mul_ps(va, _mm512_load_ps(t + i * NR));
    __m512 v1 = _mm512_mul_ps(va, _mm512_load_ps(t + i * NR + 16));
    if (beta != 0.0f) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

/* ---- blocking and threads ------------------------------------------------ */

typedef struct {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha, beta;
  const float *A, *B;
  float *C;
  int64_t mc, n_i, n_j; /* row blocks of mc rows; each block's columns in n_j chunks */
  int64_t bstride;      /* floats between two threads' B blocks */
  float *bpack, *apack; /* per thread: a KC x NC block of B, an MC_MAX x KC block of A */
} gemm_plan;

/* the NR-wide panels [*q0, *q1) of a column block of `panels` that unit u
 * covers */
static void unit_panels(const gemm_plan *p, int64_t u, int64_t panels, int64_t *q0, int64_t *q1) {
  int64_t per = (panels + p->n_j - 1) / p->n_j;
  *q0 = (u % p->n_j) * per;
  *q1 = *q0 + per < panels ? *q0 + per : panels;
}

/* thread t of nt: its share of the units (row block x column chunk), with
 * its own packed copies of the B panels and A rows it needs, so the threads
 * never wait for each other (a barrier per K block costs more than packing
 * B twice) */
static void run_thread(const gemm_plan *p, int t, int nt) {
  int64_t units = p->n_i * p->n_j, u0 = units * t / nt, u1 = units * (t + 1) / nt;
  float *bp = p->bpack + (int64_t)t * p->bstride, *ap = p->apack + (int64_t)t * MC_MAX * KC;
  for (int64_t jc = 0; jc < p->N; jc += NC) {
    int64_t nc = p->N - jc < NC ? p->N - jc : NC, panels = (nc + NR - 1) / NR;
    int64_t lo = panels, hi = 0;
    for (int64_t u = u0; u < u1; u++) {
      int64_t q0, q1;
      unit_panels(p, u, panels, &q0, &q1);
      if (q0 < q1 && p->mc * (u / p->n_j) < p->M) {
        lo = q0 < lo ? q0 : lo;
        hi = q1 > hi ? q1 : hi;
      }
    }
    if (lo >= hi) continue;
    for (int64_t pc = 0; pc < p->K; pc += KC) {
      int64_t kc = p->K - pc < KC ? p->K - pc : KC;
      float beta = pc == 0 ? p->beta : 1.0f;
      for (int64_t q = lo; q < hi; q++) {
        int64_t nr = nc - q * NR < NR ? nc - q * NR : NR;
        pack_b_panel(p->tb, p->B, p->ldb, pc, kc, jc + q * NR, nr, bp + (q - lo) * kc * NR);
      }
      int64_t packed_block = -1;
      for (int64_t u = u0; u < u1; u++) {
        int64_t bi = u / p->n_j, i0 = bi * p->mc, mc = p->M - i0 < p->mc ? p->M - i0 : p->mc, q0, q1;
        unit_panels(p, u, panels, &q0, &q1);
        if (mc <= 0 || q0 >= q1) continue;
        if (bi != packed_block) {
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int64_t mr = mc - ir < MR ? mc - ir : MR;
            pack_a_panel(p->ta, p->A, p->lda, i0 + ir, mr, pc, kc, ap + ir * kc);
          }
          packed_block = bi;
        }
        for (int64_t q = q0; q < q1; q++) {
          int64_t jr = q * NR, nr = nc - jr < NR ? nc - jr : NR;
          const float *b = bp + (q - lo) * kc * NR;
          float *cblk = p->C + i0 * p->ldc + jc + jr;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int64_t mr = mc - ir < MR ? mc - ir : MR;
            kernel_14x32(kc, ap + ir * kc, b, cblk + ir * p->ldc, p->ldc, (int)mr, (int)nr, p->alpha, beta);
          }
        }
      }
    }
  }
}

static void run_plan(const gemm_plan *p, int nt) {
  if (nt == 1) {
    run_thread(p, 0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  run_thread(p, omp_get_thread_num(), omp_get_num_threads());
}

static void blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                 const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (blasint)M,
              (blasint)N, (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
              const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  double work = (double)M * (double)N * (double)K;
  if (K <= 0 || work < MIN_WORK || N < MIN_N || !gemm_f32_engine_kernel()) {
    blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (work < MIN_PARALLEL_WORK) nt = 1;
  gemm_plan p = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = ldc,
                 .alpha = alpha, .beta = beta, .A = A, .B = B, .C = C};
  /* row blocks: at most MC_MAX rows, a multiple of the thread count when
   * there are rows enough; otherwise the columns are split too */
  int64_t n_i = (M + MC_MAX - 1) / MC_MAX;
  if (nt > 1 && M >= (int64_t)nt * 4 * MR) n_i = (n_i + nt - 1) / nt * nt;
  int64_t mc = (M + n_i - 1) / n_i;
  mc = (mc + MR - 1) / MR * MR;
  if (mc > MC_MAX) mc = MC_MAX;
  p.mc = mc;
  p.n_i = (M + mc - 1) / mc;
  p.n_j = p.n_i % nt == 0 ? 1 : nt;
  int64_t ncap = N < NC ? (N + NR - 1) / NR * NR : NC;
  int64_t kcap = K < KC ? K : KC;
  p.bstride = kcap * ncap; /* a multiple of NR: every block stays 128-byte aligned */
  float *ws = workspace((size_t)nt * (size_t)(p.bstride + MC_MAX * KC));
  if (!ws) {
    blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  p.bpack = ws;
  p.apack = ws + nt * p.bstride;
  run_plan(&p, nt);
}
