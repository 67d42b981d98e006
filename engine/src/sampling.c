/* sampling.c — one decode step's token choice for each row of a (B,V)
 * logits tensor: greedy (the first argmax), or a draw from
 * softmax(logits / T) restricted first to the top-k tokens and then to the
 * top-p nucleus, as Hugging Face's TopKLogitsWarper and TopPLogitsWarper
 * define them:
 *   top-k keeps every token whose scaled logit is >= the k-th largest (ties
 *         with the k-th are kept);
 *   top-p ranks the remaining tokens by probability (ties: lower id first)
 *         and keeps each token whose higher-ranked mass is < top_p; the most
 *         likely token is always kept.
 * The draw is an inverse CDF over the kept tokens in vocabulary order with
 * the caller's uniform u: the first id whose running mass exceeds u * Z. So
 * the result is a function of (logits, options, u) alone, and the caller
 * owns the random stream (lua/engine/generate.lua gives each row its own).
 * The log-probability is that of the same renormalised distribution:
 *   (x_id / T - m) - log Z,  m = max_i x_i / T,  Z = sum over kept exp(x_i / T - m)
 * A token with x_i / T - m < -708 counts as probability 0 (its true one is
 * below 1e-307; exp would be subnormal).
 * All arithmetic is float64 whatever the logits' dtype. Sums run over
 * blocks of SUM_BLOCK ids (vectorized within a block, blocks in order), and
 * the draw walks the block sums before the ids of one block; so results
 * agree to rounding with plain running sums (the reference in
 * tests/lua/generate_spec.lua).
 *
 * Work per row: one vectorized pass to scale and find the max, one of exp;
 * top-k adds a pass keeping a min-heap of the k largest (O(V log k) worst
 * case, ~O(V) on typical logits), top-p a weighted quickselect over the
 * tokens that can still be in the nucleus (O(V) expected; no full sort).
 * Rows run on the OpenMP threads.
 *
 * Not here: the decode loop, repetition penalties, beam search; no graph
 * is recorded (sampling is not differentiable). */
#include "sampling.h"

#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OP "sample_logits"

#define SUM_BLOCK 256

typedef struct {
  double *s;   /* (V) the scaled logits, then their exp(s - m) */
  double *bs;  /* (V / SUM_BLOCK + 1) block sums of s */
  double *top; /* (top_k) the min-heap of the k largest */
  int32_t *id; /* (V) top-p candidates */
} scratch;

enum { ROW_OK = 0, ROW_NAN, ROW_ALL_NEG_INF, ROW_POS_INF, ROW_OOM };

/* s[i] = x[i*sv] / t for a row of V logits of either dtype; returns the
 * max, or NaN when the row holds a NaN */
static double load_row(const void *x, bool f64, int64_t V, int64_t sv, double t, double *s) {
  double m = -INFINITY;
  if (f64) {
    const double *p = x;
    for (int64_t i = 0; i < V; i++) s[i] = p[i * sv];
  } else if (sv == 1) {
    const float *p = x;
    for (int64_t i = 0; i < V; i++) s[i] = (double)p[i];
  } else {
    const float *p = x;
    for (int64_t i = 0; i < V; i++) s[i] = (double)p[i * sv];
  }
  if (t != 1) {
#pragma omp simd
    for (int64_t i = 0; i < V; i++) s[i] /= t;
  }
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < V; i++) {
    nan |= s[i] != s[i];
    m = s[i] > m ? s[i] : m;
  }
  return nan ? NAN : m;
}

/* exp(x) for x in [-708, -0.0], branch-free so that loops over the
 * vocabulary vectorize: x = k ln2 + r with |r| <= ln2/2, e^r by its Taylor
 * series to r^13 (truncation error below 1e-17), times 2^k (k >= -1022)
 * built in the exponent bits. Within 1 ulp of libm's exp. */
static inline double exp_kernel(double x) {
  const double log2e = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
               ln2_lo = 1.90821492927058770002e-10, shifter = 6755399441055744.0; /* 1.5 * 2^52 */
  double big = x * log2e + shifter; /* round(x log2e) in the low mantissa bits */
  double kf = big - shifter;
  double r = (x - kf * ln2_hi) - kf * ln2_lo;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t b;
  memcpy(&b, &big, sizeof b);
  b = (b + 1023) << 52; /* the low bits of big are 2^51 + k: (k + 1023) << 52 */
  double scale;
  memcpy(&scale, &b, sizeof scale);
  return p * scale;
}

/* s[i] = exp(s[i] - m) for s[i] <= m (or -inf), and 0 where s[i] - m < -708
 * (probability below 1e-307 of the max token's: subnormal, and slow). Two
 * loops, neither with a floating-point select after the compare (with
 * -ftrapping-math that stops the vectorizer): the first writes d = -(m - s)
 * (-0.0 for the max, so every kept d has its sign bit set) or +0.0 for
 * "none"; the second masks by the sign bit. */
static void exp_shift(double *s, int64_t V, double m) {
#pragma omp simd
  for (int64_t i = 0; i < V; i++) {
    double d = -(m - s[i]);
    s[i] = d < -708.0 ? 0.0 : d;
  }
#pragma omp simd
  for (int64_t i = 0; i < V; i++) {
    uint64_t xb;
    memcpy(&xb, &s[i], sizeof xb);
    uint64_t keep = (uint64_t)((int64_t)xb >> 63); /* all ones for a kept d */
    xb &= keep;                                    /* +0.0 for the others: finite work */
    double x, e;
    memcpy(&x, &xb, sizeof x);
    e = exp_kernel(x);
    uint64_t eb;
    memcpy(&eb, &e, sizeof eb);
    eb &= keep;
    memcpy(&s[i], &eb, sizeof eb);
  }
}

double sampling_exp_le0(double x) {
  exp_shift(&x, 1, 0.0);
  return x;
}

/* the k-th largest of s[0..V) (counting repeats), 1 <= k <= V: a min-heap
 * h of the k largest seen so far; a later value enters only if it beats the
 * heap's least */
static void sift_down(double *h, int64_t k, int64_t i) {
  double v = h[i];
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= k) break;
    if (c + 1 < k && h[c + 1] < h[c]) c++;
    if (h[c] >= v) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
}

static double kth_largest(const double *s, int64_t V, int64_t k, double *h) {
  for (int64_t i = 0; i < k; i++) h[i] = s[i];
  for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(h, k, i);
  for (int64_t i = k; i < V; i++) {
    if (s[i] > h[0]) {
      h[0] = s[i];
      sift_down(h, k, 0);
    }
  }
  return h[0];
}

/* sum of e[0..V): the block sums into bs (vectorized), added in order */
static double block_sums(const double *e, int64_t V, double *bs) {
  double z = 0;
  for (int64_t b = 0, lo = 0; lo < V; b++, lo += SUM_BLOCK) {
    int64_t hi = lo + SUM_BLOCK < V ? lo + SUM_BLOCK : V;
    double t = 0;
#pragma omp simd reduction(+ : t)
    for (int64_t i = lo; i < hi; i++) t += e[i];
    bs[b] = t;
    z += t;
  }
  return z;
}

/* the first id whose running mass exceeds target: over the block sums,
 * then inside the block; rounding that leaves the running mass short picks
 * the last id with mass */
static int64_t draw(const double *e, int64_t V, const double *bs, double target) {
  int64_t nb = (V + SUM_BLOCK - 1) / SUM_BLOCK, b = 0;
  double acc = 0;
  while (b < nb - 1 && acc + bs[b] <= target) acc += bs[b++];
  int64_t lo = b * SUM_BLOCK, hi = lo + SUM_BLOCK < V ? lo + SUM_BLOCK : V, pick = -1;
  for (int64_t i = lo; i < hi; i++) {
    if (e[i] == 0) continue;
    pick = i;
    acc += e[i];
    if (acc > target) break;
  }
  for (int64_t i = lo - 1; pick < 0 && i >= 0; i--)
    if (e[i] != 0) pick = i;
  return pick;
}

/* a is ranked above b: more probable, or as probable with a lower id */
static inline bool above(const double *e, int32_t a, int32_t b) {
  return e[a] > e[b] || (e[a] == e[b] && a < b);
}

static inline void swap_i(int32_t *a, int32_t *b) {
  int32_t t = *a;
  *a = *b;
  *b = t;
}

/* top-p: zero e[i] for every token whose higher-ranked mass is >= target
 * (= top_p * Z). A weighted quickselect on the ranking: after a partition
 * around a pivot, either the mass above the pivot already reaches the
 * target (the pivot and all below it go; look above) or it does not (all
 * above and the pivot stay; look below).
 * Tokens with e <= (1 - top_p) Z / V go first, unranked: the tokens more
 * probable than such a token hold at least Z - V e >= top_p Z, so it is
 * never kept (`lowest` is that bound less a 1e-6 margin against rounding). */
static void nucleus(double *e, int64_t V, double target, double lowest, int32_t *id) {
  int64_t n = 0;
  for (int64_t i = 0; i < V; i++) {
    if (e[i] > lowest) id[n++] = (int32_t)i;
    else e[i] = 0;
  }
  int64_t lo = 0, hi = n;
  double acc = 0; /* mass of the tokens known to rank above id[lo..hi) */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
    /* median of three by rank, moved to the end */
    if (above(e, id[mid], id[lo])) swap_i(&id[mid], &id[lo]);
    if (above(e, id[last], id[lo])) swap_i(&id[last], &id[lo]);
    if (above(e, id[mid], id[last])) swap_i(&id[mid], &id[last]);
    int32_t piv = id[last];
    int64_t st = lo;
    double mass = 0;
    for (int64_t j = lo; j < last; j++) {
      if (above(e, id[j], piv)) {
        mass += e[id[j]];
        swap_i(&id[st++], &id[j]);
      }
    }
    swap_i(&id[st], &id[last]);
    if (acc + mass >= target) {
      for (int64_t j = st; j < hi; j++) e[id[j]] = 0;
      hi = st;
    } else {
      acc += mass + e[id[st]];
      lo = st + 1;
    }
  }
}

/* greedy: the first argmax and its log_softmax at temperature 1 */
static int greedy_row(const void *x, bool f64, int64_t V, int64_t sv, double *s, int64_t *id,
                      double *lp) {
  double m = load_row(x, f64, V, sv, 1.0, s);
  if (m != m) return ROW_NAN;
  if (m == -INFINITY) return ROW_ALL_NEG_INF;
  if (m == INFINITY) return ROW_POS_INF;
  int64_t a = 0;
  while (s[a] != m) a++;
  exp_shift(s, V, m);
  double z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t i = 0; i < V; i++) z += s[i];
  *id = a;
  *lp = -log(z);
  return ROW_OK;
}

static int sample_row(const void *x, bool f64, int64_t V, int64_t sv, const eng_sample_opts *o, double u,
                      scratch *w, int64_t *id, double *lp) {
  double *s = w->s;
  double m = load_row(x, f64, V, sv, o->temperature, s);
  if (m != m) return ROW_NAN;
  if (m == -INFINITY) return ROW_ALL_NEG_INF;
  if (m == INFINITY) return ROW_POS_INF;
  if (o->top_k > 0 && o->top_k < V) {
    double thr = kth_largest(s, V, o->top_k, w->top);
#pragma omp simd
    for (int64_t i = 0; i < V; i++) s[i] = s[i] >= thr ? s[i] : -INFINITY;
  }
  exp_shift(s, V, m);
  double z = block_sums(s, V, w->bs);
  if (o->top_p < 1) {
    nucleus(s, V, o->top_p * z, (1 - o->top_p) * z / (double)V * (1 - 1e-6), w->id);
    z = block_sums(s, V, w->bs);
  }
  /* the max token has s = 1 and is always kept, so a token is found */
  int64_t pick = draw(s, V, w->bs, u * z);
  double xi = f64 ? ((const double *)x)[pick * sv] : (double)((const float *)x)[pick * sv];
  *id = pick;
  *lp = (xi / o->temperature - m) - log(z);
  return ROW_OK;
}

static const char *row_problem(int code) {
  switch (code) {
  case ROW_NAN: return "holds a NaN logit";
  case ROW_ALL_NEG_INF: return "has every logit -inf: no token can be chosen";
  case ROW_POS_INF: return "holds a +inf logit";
  default: return "ran out of memory";
  }
}

int eng_sample_logits(eng_tensor *logits, const eng_sample_opts *o, const double *u, int64_t *ids,
                      double *logprobs) {
  if (!logits) return eng_errorf_status(OP ": logits is NULL");
  if (logits->ndim != 2) return eng_errorf_status(OP ": logits must be (B,V), got %s", shp(logits));
  if (!(o->temperature >= 0) || isinf(o->temperature))
    return eng_errorf_status(OP ": temperature must be a finite number >= 0 (0 is greedy), got %g",
                             o->temperature);
  if (o->top_k < 0)
    return eng_errorf_status(OP ": top_k must be an integer >= 0 (0 is off), got %lld", (long long)o->top_k);
  if (!(o->top_p > 0 && o->top_p <= 1))
    return eng_errorf_status(OP ": top_p must be in (0, 1] (1 is off), got %g", o->top_p);
  int64_t B = logits->shape[0], V = logits->shape[1];
  if (V == 0) return eng_errorf_status(OP ": logits %s has an empty vocabulary", shp(logits));
  if (V > INT32_MAX) return eng_errorf_status(OP ": logits %s: vocabulary too large", shp(logits));
  bool greedy = o->temperature == 0;
  if (!greedy) {
    if (!u) return eng_errorf_status(OP ": sampling needs one uniform per row, got none");
    for (int64_t b = 0; b < B; b++)
      if (!(u[b] >= 0 && u[b] < 1))
        return eng_errorf_status(OP ": uniform %g for row %lld is not in [0, 1)", u[b], (long long)b + 1);
  }
  if (B == 0) return 0;

  int *status = calloc((size_t)B, sizeof *status);
  if (!status) return eng_errorf_status(OP ": out of memory");
  bool f64 = logits->dtype == ENG_DTYPE_F64;
  size_t esz = dtype_size(logits->dtype);
  const char *base = tensor_ptr(logits);
  int64_t rs = logits->stride[0], sv = logits->stride[1];
  bool need_top = !greedy && o->top_k > 0 && o->top_k < V, need_id = !greedy && o->top_p < 1;
  int nth = B > 1 && B * V >= PARALLEL_MIN ? eng_get_threads() : 1;
  if (nth > B) nth = (int)B;

#pragma omp parallel num_threads(nth)
  {
    scratch w = {malloc(sizeof(double) * (size_t)V), malloc(sizeof(double) * (size_t)(V / SUM_BLOCK + 1)),
                 need_top ? malloc(sizeof(double) * (size_t)o->top_k) : NULL,
                 need_id ? malloc(sizeof(int32_t) * (size_t)V) : NULL};
    bool oom = !w.s || !w.bs || (need_top && !w.top) || (need_id && !w.id);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) {
      const void *x = base + (size_t)(b * rs) * esz;
      if (oom) status[b] = ROW_OOM;
      else if (greedy) status[b] = greedy_row(x, f64, V, sv, w.s, &ids[b], &logprobs[b]);
      else status[b] = sample_row(x, f64, V, sv, o, u[b], &w, &ids[b], &logprobs[b]);
    }
    free(w.s);
    free(w.bs);
    free(w.top);
    free(w.id);
  }

  int rc = 0;
  for (int64_t b = 0; b < B; b++) {
    if (status[b] != ROW_OK) {
      if (status[b] == ROW_OOM) eng_errorf(OP ": out of memory for a vocabulary of %lld", (long long)V);
      else eng_errorf(OP ": row %lld of logits %s %s", (long long)b + 1, shp(logits), row_problem(status[b]));
      rc = -1;
      break;
    }
  }
  free(status);
  return rc;
}
