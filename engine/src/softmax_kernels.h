/* softmax_kernels.h — what logsumexp (ops_reduce.c), softmax and log_softmax
 * (ops_softmax.c) share: a float exp gcc vectorizes, the per-run statistics
 * m = max and s = sum exp(x - m), and the (Q, R, L) view of a contiguous
 * tensor reduced over one dim.
 *
 * A contiguous x reduced over dim d is Q blocks of R rows of L: with L == 1
 * each run of R is contiguous ("rows"); otherwise the kernels walk whole
 * rows of L and keep per-column statistics ("columns"), so no transposed
 * copy is needed and no access strides across the cache per element.
 * Non-contiguous inputs are made contiguous by the callers first.
 *
 * Statistics: m is NaN when the run holds a NaN, -inf when the run is all
 * -inf (or empty), +inf when it holds +inf; s is meaningful only when m is
 * finite. Callers treat the non-finite cases apart. Not public API. */
#ifndef ENGINE_SOFTMAX_KERNELS_H
#define ENGINE_SOFTMAX_KERNELS_H

#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* column-block width for the (Q, R, L) kernels */
#define SK_BW 256

/* exp for float32 written so gcc vectorizes it (Cephes' expf: x = n ln2 + r,
 * a degree-6 polynomial in r, 2^n from the exponent bits). Relative error
 * below 3e-7 on [-87.3, 88.72]; exp(x < -87.3) = 0 (so exp(-inf) = 0),
 * exp(x > 88.72) = inf, NaN stays NaN. */
static inline float sk_expf(float x) {
  float xc = x > 88.72f ? 88.72f : x;
  xc = xc < -87.3f ? -87.3f : xc;
  xc = xc == xc ? xc : 0.0f; /* keeps the integer conversion below defined */
  const float shifter = 12582912.0f; /* 1.5 * 2^23: rounds to the nearest integer */
  float n = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  /* 2^n as 2^h * 2^(n-h): n spans [-126, 128], one exponent field does not */
  int32_t ni = (int32_t)n, h = ni >> 1;
  uint32_t b1 = (uint32_t)(h + 127) << 23, b2 = (uint32_t)(ni - h + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, sizeof s1);
  memcpy(&s2, &b2, sizeof s2);
  y = y * s1 * s2;
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.72f ? INFINITY : y;
  return x == x ? y : x;
}
#define SK_EXP_f32(x) sk_expf(x)
#define SK_EXP_f64(x) exp(x)

/* (Q, R, L) of a contiguous x reduced over d (d < 0: everything, one run) */
static inline void sk_split(const eng_tensor *x, int d, int64_t *Q, int64_t *R, int64_t *L) {
  if (d < 0) {
    *Q = 1;
    *R = x->numel;
    *L = 1;
    return;
  }
  int64_t q = 1, l = 1;
  for (int i = 0; i < d; i++) q *= x->shape[i];
  for (int i = d + 1; i < x->ndim; i++) l *= x->shape[i];
  *Q = q;
  *R = x->shape[d];
  *L = l;
}

#define SK_KERNELS(SFX, TY)                                                     \
  /* NaN-aware max of a contiguous run (-inf when empty): 16 lanes of a    \
   * plain max plus a NaN flag, which vectorizes better than a NaN-aware    \
   * select */                                                               \
  static inline TY sk_max_##SFX(const TY *x, int64_t n) {                      \
    TY a[16];                                                                  \
    int nan[16];                                                               \
    for (int k = 0; k < 16; k++) {                                             \
      a[k] = -INFINITY;                                                        \
      nan[k] = 0;                                                              \
    }                                                                          \
    int64_t i = 0;                                                             \
    for (; i + 16 <= n; i += 16)                                               \
      for (int k = 0; k < 16; k++) {                                           \
        TY v = x[i + k];                                                       \
        a[k] = v > a[k] ? v : a[k];                                            \
        nan[k] |= v != v;                                                      \
      }                                                                        \
    TY m = -INFINITY;                                                          \
    int anynan = 0;                                                            \
    for (; i < n; i++) {                                                       \
      m = x[i] > m ? x[i] : m;                                                 \
      anynan |= x[i] != x[i];                                                  \
    }                                                                          \
    for (int k = 0; k < 16; k++) {                                             \
      m = a[k] > m ? a[k] : m;                                                 \
      anynan |= nan[k];                                                        \
    }                                                                          \
    return anynan ? (TY)NAN : m;                                               \
  }                                                                            \
  /* sum of a contiguous run in double; 8 lanes */                            \
  static inline double sk_sum_##SFX(const TY *x, int64_t n) {                  \
    double a[8] = {0};                                                         \
    int64_t i = 0;                                                             \
    for (; i + 8 <= n; i += 8)                                                 \
      for (int k = 0; k < 8; k++) a[k] += (double)x[i + k];                    \
    for (; i < n; i++) a[0] += (double)x[i];                                   \
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); \
  }                                                                            \
  /* sum exp(x - m) of a contiguous run, in double (m finite) */              \
  static inline double sk_sumexp_##SFX(const TY *x, int64_t n, TY m) {         \
    TY tmp[512];                                                               \
    double s = 0;                                                              \
    for (int64_t i0 = 0; i0 < n; i0 += 512) {                                  \
      int64_t w = n - i0 < 512 ? n - i0 : 512;                                 \
      for (int64_t i = 0; i < w; i++) tmp[i] = SK_EXP_##SFX(x[i0 + i] - m);   \
      s += sk_sum_##SFX(tmp, w);                                               \
    }                                                                          \
    return s;                                                                  \
  }                                                                            \
  /* per-column m[j], s[j] over R rows of stride L, columns [0, w) of the    \
   * block starting at x */                                                   \
  static inline void sk_cols_##SFX(const TY *x, int64_t R, int64_t L, int64_t w, TY *m, \
                                   double *s) {                                \
    TY sh[SK_BW];                                                              \
    for (int64_t j = 0; j < w; j++) m[j] = -INFINITY;                          \
    for (int64_t r = 0; r < R; r++) {                                          \
      const TY *row = x + r * L;                                               \
      for (int64_t j = 0; j < w; j++) {                                        \
        TY v = row[j];                                                         \
        m[j] = (v > m[j] || v != v) ? v : m[j];                                \
      }                                                                        \
    }                                                                          \
    for (int64_t j = 0; j < w; j++) {                                          \
      sh[j] = isfinite(m[j]) ? m[j] : (TY)0;                                   \
      s[j] = 0;                                                                \
    }                                                                          \
    for (int64_t r = 0; r < R; r++) {                                          \
      const TY *row = x + r * L;                                               \
      for (int64_t j = 0; j < w; j++) s[j] += (double)SK_EXP_##SFX(row[j] - sh[j]); \
    }                                                                          \
  }

SK_KERNELS(f32, float)
SK_KERNELS(f64, double)

#endif
