/* test_attention.c — eng_attention against attention written out with plain
 * loops here (forward and backward), float64 finite-difference gradient
 * checks (grouped-query heads, padding mask, causal with T < S and T > S,
 * fully masked rows, strided q/k/v), both threading paths in float32, the
 * extremes, and the exact error messages. */
#include "check.h"
#include "internal.h"

typedef struct {
  int64_t B, H, Hkv, T, S, D;
} dims;

static int64_t i4(int64_t a, int64_t b, int64_t c, int64_t d, int64_t nb, int64_t nc, int64_t nd) {
  return ((a * nb + b) * nc + c) * nd + d;
}

static bool visible(const eng_tensor *mask, bool causal, dims z, int64_t b, int64_t t, int64_t s) {
  if (mask && eng_tensor_get_flat(mask, b * z.S + s) == 0) return false;
  return !causal || s <= t + (z.S - z.T);
}

/* the probabilities of (b,h,t) over keys into p (S); false when no key is visible */
static bool naive_probs(const eng_tensor *q, const eng_tensor *k, const eng_tensor *mask, bool causal,
                        double scale, dims z, int64_t b, int64_t h, int64_t t, double *p) {
  int64_t g = h / (z.H / z.Hkv);
  double m = -INFINITY;
  for (int64_t s = 0; s < z.S; s++) {
    p[s] = -INFINITY;
    if (!visible(mask, causal, z, b, t, s)) continue;
    double dot = 0;
    for (int64_t d = 0; d < z.D; d++)
      dot += at(q, i4(b, h, t, d, z.H, z.T, z.D)) * at(k, i4(b, g, s, d, z.Hkv, z.S, z.D));
    p[s] = scale * dot;
    if (p[s] > m) m = p[s];
  }
  if (m == -INFINITY) {
    for (int64_t s = 0; s < z.S; s++) p[s] = 0;
    return false;
  }
  double sum = 0;
  for (int64_t s = 0; s < z.S; s++) sum += (p[s] = exp(p[s] - m));
  for (int64_t s = 0; s < z.S; s++) p[s] /= sum;
  return true;
}

/* out (B,H,T,D) by plain loops */
static void naive_forward(const eng_tensor *q, const eng_tensor *k, const eng_tensor *v,
                          const eng_tensor *mask, bool causal, double scale, dims z, double *out) {
  double p[256];
  for (int64_t b = 0; b < z.B; b++)
    for (int64_t h = 0; h < z.H; h++)
      for (int64_t t = 0; t < z.T; t++) {
        int64_t g = h / (z.H / z.Hkv);
        naive_probs(q, k, mask, causal, scale, z, b, h, t, p);
        for (int64_t d = 0; d < z.D; d++) {
          double acc = 0;
          for (int64_t s = 0; s < z.S; s++) acc += p[s] * at(v, i4(b, g, s, d, z.Hkv, z.S, z.D));
          out[i4(b, h, t, d, z.H, z.T, z.D)] = acc;
        }
      }
}

/* dq, dk, dv for the gradient w of the output, by plain loops:
 * dv += p·w, dp = w·v, ds = p(dp − Σ p dp), dq = scale·ds·k, dk += scale·ds·q */
static void naive_backward(const eng_tensor *q, const eng_tensor *k, const eng_tensor *v,
                           const eng_tensor *mask, bool causal, double scale, dims z,
                           const eng_tensor *w, double *dq, double *dk, double *dv) {
  double p[256], dp[256];
  memset(dk, 0, sizeof(double) * (size_t)(z.B * z.Hkv * z.S * z.D));
  memset(dv, 0, sizeof(double) * (size_t)(z.B * z.Hkv * z.S * z.D));
  for (int64_t b = 0; b < z.B; b++)
    for (int64_t h = 0; h < z.H; h++)
      for (int64_t t = 0; t < z.T; t++) {
        int64_t g = h / (z.H / z.Hkv);
        naive_probs(q, k, mask, causal, scale, z, b, h, t, p);
        double pdp = 0;
        for (int64_t s = 0; s < z.S; s++) {
          dp[s] = 0;
          for (int64_t d = 0; d < z.D; d++) {
            double wv = at(w, i4(b, h, t, d, z.H, z.T, z.D));
            dp[s] += wv * at(v, i4(b, g, s, d, z.Hkv, z.S, z.D));
            dv[i4(b, g, s, d, z.Hkv, z.S, z.D)] += p[s] * wv;
          }
          pdp += p[s] * dp[s];
        }
        for (int64_t d = 0; d < z.D; d++) dq[i4(b, h, t, d, z.H, z.T, z.D)] = 0;
        for (int64_t s = 0; s < z.S; s++) {
          double ds = p[s] * (dp[s] - pdp) * scale;
          for (int64_t d = 0; d < z.D; d++) {
            dq[i4(b, h, t, d, z.H, z.T, z.D)] += ds * at(k, i4(b, g, s, d, z.Hkv, z.S, z.D));
            dk[i4(b, g, s, d, z.Hkv, z.S, z.D)] += ds * at(q, i4(b, h, t, d, z.H, z.T, z.D));
          }
        }
      }
}

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape, bool grad) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  if (grad) eng_set_requires_grad(t, true);
  return t;
}

static eng_tensor *mask_of(int64_t B, int64_t S, const double *vals) {
  return T(ENG_DTYPE_F64, 2, ((int64_t[]){B, S}), vals);
}

static double max_abs_diff(const eng_tensor *t, const double *ref) {
  double worst = 0;
  for (int64_t i = 0; i < eng_tensor_numel(t); i++) {
    double d = fabs(at(t, i) - ref[i]);
    if (!(d <= worst)) worst = d; /* NaN wins */
  }
  return worst;
}

/* ---- scalar functions for the gradient checks -------------------------------- */

typedef struct {
  eng_tensor *mask, *w;
  bool causal;
  double scale;
  int permute; /* inputs are (B,T,H,D) and get permuted inside */
} attn_ctx;

static eng_tensor *attn_loss(eng_tensor **in, void *vctx) {
  attn_ctx *c = vctx;
  eng_tensor *q = in[0], *k = in[1], *v = in[2], *views[3] = {0};
  if (c->permute) {
    const int perm[4] = {0, 2, 1, 3};
    for (int i = 0; i < 3; i++) views[i] = eng_permute(in[i], perm);
    q = views[0], k = views[1], v = views[2];
  }
  eng_tensor *a = eng_attention(q, k, v, c->mask, c->causal, c->scale);
  eng_tensor *m = a ? eng_mul(a, c->w) : NULL;
  eng_tensor *s = m ? eng_sum(m, ENG_ALL_DIMS, false) : NULL;
  eng_tensor_release(a);
  eng_tensor_release(m);
  for (int i = 0; i < 3; i++) eng_tensor_release(views[i]);
  return s;
}

/* runs forward + backward (gradient w) and compares with the loops above */
static void compare_with_naive(eng_dtype dt, dims z, eng_tensor *mask, bool causal, double scale,
                               double tol, uint64_t seed) {
  int64_t qs[4] = {z.B, z.H, z.T, z.D}, ks[4] = {z.B, z.Hkv, z.S, z.D};
  eng_tensor *q = randn(dt, seed, 4, qs, true), *k = randn(dt, seed + 1, 4, ks, true);
  eng_tensor *v = randn(dt, seed + 2, 4, ks, true), *w = randn(dt, seed + 3, 4, qs, false);
  int64_t nq = z.B * z.H * z.T * z.D, nk = z.B * z.Hkv * z.S * z.D;
  double *ref = malloc(sizeof(double) * (size_t)nq), *dq = malloc(sizeof(double) * (size_t)nq);
  double *dk = malloc(sizeof(double) * (size_t)nk), *dv = malloc(sizeof(double) * (size_t)nk);
  double sc = scale > 0 ? scale : 1 / sqrt((double)z.D);
  naive_forward(q, k, v, mask, causal, sc, z, ref);
  naive_backward(q, k, v, mask, causal, sc, z, w, dq, dk, dv);
  eng_tensor *out = eng_attention(q, k, v, mask, causal, scale);
  CHECK(out != NULL);
  if (out) {
    CHECK(eng_tensor_dtype(out) == dt && eng_tensor_ndim(out) == 4);
    CHECK(memcmp(eng_tensor_shape(out), qs, sizeof qs) == 0);
    CHECK_CLOSE(max_abs_diff(out, ref), 0, tol);
    CHECK(eng_backward(out, w) == 0);
    CHECK_CLOSE(max_abs_diff(eng_grad(q), dq), 0, tol);
    CHECK_CLOSE(max_abs_diff(eng_grad(k), dk), 0, tol);
    CHECK_CLOSE(max_abs_diff(eng_grad(v), dv), 0, tol);
  }
  eng_tensor_release(out);
  eng_tensor_release(q);
  eng_tensor_release(k);
  eng_tensor_release(v);
  eng_tensor_release(w);
  free(ref);
  free(dq);
  free(dk);
  free(dv);
}

/* ---- tests ------------------------------------------------------------------- */

/* a hand-sized case: one query, two keys, D = 1 */
static void test_by_hand(void) {
  int64_t s1[4] = {1, 1, 1, 1}, s2[4] = {1, 1, 2, 1};
  eng_tensor *q = T(ENG_DTYPE_F64, 4, s1, ((double[]){2}));
  eng_tensor *k = T(ENG_DTYPE_F64, 4, s2, ((double[]){1, 0}));
  eng_tensor *v = T(ENG_DTYPE_F64, 4, s2, ((double[]){10, 20}));
  /* scores 2·1·1 = 2 and 0: p = (e²/(e²+1), 1/(e²+1)) */
  eng_tensor *o = eng_attention(q, k, v, NULL, false, 0);
  double p0 = exp(2) / (exp(2) + 1);
  CHECK_CLOSE(at(o, 0), 10 * p0 + 20 * (1 - p0), 1e-12);
  eng_tensor_release(o);
  /* scale 0.5: scores 1 and 0 */
  o = eng_attention(q, k, v, NULL, false, 0.5);
  p0 = exp(1) / (exp(1) + 1);
  CHECK_CLOSE(at(o, 0), 10 * p0 + 20 * (1 - p0), 1e-12);
  eng_tensor_release(o);
  /* causal with T=1 < S=2 sees both keys: same as not causal */
  o = eng_attention(q, k, v, NULL, true, 0.5);
  CHECK_CLOSE(at(o, 0), 10 * p0 + 20 * (1 - p0), 1e-12);
  eng_tensor_release(o);
  /* masking the first key leaves v of the second */
  eng_tensor *m = mask_of(1, 2, (double[]){0, 1});
  o = eng_attention(q, k, v, m, false, 0);
  CHECK_CLOSE(at(o, 0), 20, 1e-12);
  eng_tensor_release(o);
  eng_tensor_release(m);
  eng_tensor_release(q);
  eng_tensor_release(k);
  eng_tensor_release(v);
}

static void test_against_loops(void) {
  dims z = {2, 4, 2, 3, 5, 4};
  eng_tensor *mask = mask_of(2, 5, (double[]){1, 1, 0, 1, 1, 1, 1, 1, 0, 0});
  compare_with_naive(ENG_DTYPE_F64, z, NULL, false, 0, 1e-12, 10);
  compare_with_naive(ENG_DTYPE_F64, z, mask, false, 0, 1e-12, 20);
  compare_with_naive(ENG_DTYPE_F64, z, mask, true, 0.7, 1e-12, 30);
  compare_with_naive(ENG_DTYPE_F32, z, mask, true, 0, 1e-5, 40);
  dims mha = {1, 3, 3, 4, 4, 2}; /* Hkv = H, T = S */
  compare_with_naive(ENG_DTYPE_F64, mha, NULL, true, 0, 1e-12, 50);
  dims mqa = {2, 4, 1, 2, 6, 3}; /* one kv head */
  compare_with_naive(ENG_DTYPE_F64, mqa, NULL, true, 0, 1e-12, 60);
  eng_tensor_release(mask);
}

/* float32 large enough for both threading paths: many units in parallel
 * (gemm on one thread), and one unit with threaded gemm and row loops */
static void test_threading_paths(void) {
  dims many = {2, 4, 2, 40, 48, 16};
  compare_with_naive(ENG_DTYPE_F32, many, NULL, true, 0, 2e-5, 70);
  dims one = {1, 1, 1, 200, 200, 16}; /* T·S = 40000 >= PARALLEL_MIN */
  eng_tensor *mask = eng_full(ENG_DTYPE_F32, 2, (int64_t[]){1, 200}, 1);
  for (int s = 0; s < 200; s += 7) ((float *)eng_tensor_data(mask))[s] = 0;
  compare_with_naive(ENG_DTYPE_F32, one, mask, true, 0, 2e-5, 80);
  compare_with_naive(ENG_DTYPE_F64, one, mask, false, 0, 1e-12, 90);
  eng_tensor_release(mask);
}

static void test_gradcheck(void) {
  int64_t qs[4] = {2, 4, 3, 4}, ks[4] = {2, 2, 5, 4};
  eng_tensor *in[3] = {t_randn64(1, 4, qs), t_randn64(2, 4, ks), t_randn64(3, 4, ks)};
  eng_tensor *mask = mask_of(2, 5, (double[]){1, 0, 1, 1, 1, 0, 1, 1, 1, 1});
  attn_ctx c = {.mask = NULL, .w = randn(ENG_DTYPE_F64, 4, 4, qs, false), .causal = false, .scale = 0};
  CHECK_GRAD(attn_loss, &c, in, 3); /* GQA H=4, Hkv=2 */
  c.mask = mask;
  CHECK_GRAD(attn_loss, &c, in, 3); /* padding mask */
  c.causal = true;
  c.scale = 0.3;
  CHECK_GRAD(attn_loss, &c, in, 3); /* causal, T=3 < S=5, mask, explicit scale */
  /* only some inputs requiring grad */
  eng_set_requires_grad(in[0], false);
  CHECK_GRAD(attn_loss, &c, in, 3);
  eng_set_requires_grad(in[0], true);
  eng_set_requires_grad(in[1], false);
  eng_set_requires_grad(in[2], false);
  CHECK_GRAD(attn_loss, &c, in, 3);
  for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
  eng_tensor_release(mask);
  eng_tensor_release(c.w);
}

/* rows with no visible key: zeros out, zero gradient, no NaN */
static void test_fully_masked_rows(void) {
  /* causal with T=4 > S=2: query t sees s <= t - 2, so t = 0, 1 see nothing;
   * batch 1 has every key padded */
  int64_t qs[4] = {2, 2, 4, 3}, ks[4] = {2, 1, 2, 3};
  eng_tensor *in[3] = {t_randn64(5, 4, qs), t_randn64(6, 4, ks), t_randn64(7, 4, ks)};
  eng_tensor *mask = mask_of(2, 2, (double[]){1, 1, 0, 0});
  attn_ctx c = {.mask = mask, .w = randn(ENG_DTYPE_F64, 8, 4, qs, false), .causal = true};
  eng_tensor *o = eng_attention(in[0], in[1], in[2], mask, true, 0);
  bool finite = true;
  for (int64_t i = 0; i < eng_tensor_numel(o); i++) finite = finite && isfinite(at(o, i));
  CHECK(finite);
  for (int64_t h = 0; h < 2; h++)
    for (int64_t t = 0; t < 4; t++)
      for (int64_t d = 0; d < 3; d++) {
        if (t < 2) CHECK(at(o, i4(0, h, t, d, 2, 4, 3)) == 0);
        CHECK(at(o, i4(1, h, t, d, 2, 4, 3)) == 0);
      }
  /* row t = 2 of batch 0 sees only key 0: it is v[0,0,0] */
  CHECK_CLOSE(at(o, i4(0, 1, 2, 1, 2, 4, 3)), at(in[2], i4(0, 0, 0, 1, 1, 2, 3)), 1e-12);
  CHECK(eng_backward(o, c.w) == 0);
  eng_tensor *gq = eng_grad(in[0]), *gk = eng_grad(in[1]), *gv = eng_grad(in[2]);
  bool ok = true;
  for (int64_t i = 0; i < eng_tensor_numel(gq); i++) ok = ok && isfinite(at(gq, i));
  for (int64_t i = 0; i < eng_tensor_numel(gk); i++) ok = ok && isfinite(at(gk, i)) && isfinite(at(gv, i));
  CHECK(ok);
  for (int64_t h = 0; h < 2; h++)
    for (int64_t t = 0; t < 4; t++)
      for (int64_t d = 0; d < 3; d++) {
        if (t < 2) CHECK(at(gq, i4(0, h, t, d, 2, 4, 3)) == 0);
        CHECK(at(gq, i4(1, h, t, d, 2, 4, 3)) == 0);
      }
  for (int64_t i = 6; i < 12; i++) CHECK(at(gk, i) == 0 && at(gv, i) == 0); /* batch 1 */
  eng_tensor_release(o);
  CHECK_GRAD(attn_loss, &c, in, 3);
  for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
  eng_tensor_release(mask);
  eng_tensor_release(c.w);
}

/* (B,H,T,D) leaves laid out some other way, via tensor_view */
static eng_tensor *strided_leaf(uint64_t seed, dims z, int64_t heads, int64_t rows, int layout) {
  int64_t B = z.B, H = heads, R = rows, D = z.D;
  eng_rng *r = eng_rng_new(seed);
  int64_t shape[4] = {B, H, R, D}, stride[4];
  eng_tensor *base;
  if (layout == 0) { /* (B,R,H,D) permuted: rows H·D apart */
    base = eng_randn(r, ENG_DTYPE_F64, 4, (int64_t[]){B, R, H, D});
    int64_t st[4] = {R * H * D, D, H * D, 1};
    memcpy(stride, st, sizeof st);
  } else if (layout == 1) { /* (B,H,D,R) transposed: D not unit-stride */
    base = eng_randn(r, ENG_DTYPE_F64, 4, (int64_t[]){B, H, D, R});
    int64_t st[4] = {H * D * R, D * R, 1, R};
    memcpy(stride, st, sizeof st);
  } else { /* (B,H,R,D+3) narrowed to D, at offset 1 */
    base = eng_randn(r, ENG_DTYPE_F64, 4, (int64_t[]){B, H, R, D + 3});
    int64_t st[4] = {H * R * (D + 3), R * (D + 3), D + 3, 1};
    memcpy(stride, st, sizeof st);
  }
  eng_rng_free(r);
  eng_tensor *v = tensor_view(base, 4, shape, stride, layout == 2 ? 1 : 0);
  eng_tensor_release(base);
  eng_set_requires_grad(v, true);
  return v;
}

static void test_strided_inputs(void) {
  dims z = {2, 4, 2, 3, 5, 4};
  eng_tensor *mask = mask_of(2, 5, (double[]){1, 1, 1, 0, 1, 0, 1, 1, 1, 1});
  int64_t qs[4] = {2, 4, 3, 4};
  attn_ctx c = {.mask = mask, .w = randn(ENG_DTYPE_F64, 9, 4, qs, false), .causal = true};
  for (int layout = 0; layout < 3; layout++) {
    eng_tensor *in[3] = {strided_leaf(11, z, 4, 3, layout), strided_leaf(12, z, 2, 5, (layout + 1) % 3),
                         strided_leaf(13, z, 2, 5, (layout + 2) % 3)};
    CHECK(!eng_tensor_is_contiguous(in[0]));
    double ref[96];
    naive_forward(in[0], in[1], in[2], mask, true, 0.5, z, ref);
    eng_tensor *o = eng_attention(in[0], in[1], in[2], mask, true, 0);
    CHECK_CLOSE(max_abs_diff(o, ref), 0, 1e-12);
    eng_tensor_release(o);
    CHECK_GRAD(attn_loss, &c, in, 3);
    for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
  }
  /* through eng_permute of (B,T,H,D) leaves, as a model would call it */
  eng_tensor *in[3] = {t_randn64(14, 4, (int64_t[]){2, 3, 4, 4}), t_randn64(15, 4, (int64_t[]){2, 5, 2, 4}),
                       t_randn64(16, 4, (int64_t[]){2, 5, 2, 4})};
  c.permute = 1;
  CHECK_GRAD(attn_loss, &c, in, 3);
  for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
  /* an incoming gradient with zero strides (sum's backward expands a scalar) */
  eng_tensor *q = t_randn64(17, 4, qs), *k = t_randn64(18, 4, (int64_t[]){2, 2, 5, 4});
  eng_tensor *v = t_randn64(19, 4, (int64_t[]){2, 2, 5, 4});
  eng_tensor *o = eng_attention(q, k, v, mask, false, 0), *s = eng_sum(o, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s, NULL) == 0);
  eng_tensor *ones = eng_full(ENG_DTYPE_F64, 4, qs, 1);
  double dq[96], dk[80], dv[80];
  naive_backward(q, k, v, mask, false, 0.5, z, ones, dq, dk, dv);
  CHECK_CLOSE(max_abs_diff(eng_grad(q), dq), 0, 1e-12);
  CHECK_CLOSE(max_abs_diff(eng_grad(k), dk), 0, 1e-12);
  CHECK_CLOSE(max_abs_diff(eng_grad(v), dv), 0, 1e-12);
  eng_tensor_release(ones);
  eng_tensor_release(s);
  eng_tensor_release(o);
  eng_tensor_release(q);
  eng_tensor_release(k);
  eng_tensor_release(v);
  eng_tensor_release(mask);
  eng_tensor_release(c.w);
}

/* huge scores: softmax stays finite and the output a convex mix of v */
static void test_extremes(void) {
  dims z = {1, 2, 1, 3, 4, 2};
  int64_t qs[4] = {1, 2, 3, 2}, ks[4] = {1, 1, 4, 2};
  for (int f64 = 0; f64 <= 1; f64++) {
    eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
    eng_tensor *q = randn(dt, 21, 4, qs, false), *k = randn(dt, 22, 4, ks, false);
    eng_tensor *v = randn(dt, 23, 4, ks, true);
    for (int64_t i = 0; i < 12; i++) { /* scores of magnitude ~1e4 */
      if (f64)
        ((double *)eng_tensor_data(q))[i] *= 1e4;
      else
        ((float *)eng_tensor_data(q))[i] *= 1e4f;
    }
    eng_set_requires_grad(q, true);
    eng_tensor *o = eng_attention(q, k, v, NULL, false, 0);
    bool ok = true;
    for (int64_t i = 0; i < eng_tensor_numel(o); i++) {
      double x = at(o, i), lo = INFINITY, hi = -INFINITY;
      int64_t d = i % 2;
      for (int64_t s = 0; s < 4; s++) {
        double vs = at(v, s * 2 + d);
        lo = vs < lo ? vs : lo;
        hi = vs > hi ? vs : hi;
      }
      ok = ok && isfinite(x) && x >= lo - 1e-5 && x <= hi + 1e-5;
    }
    CHECK(ok);
    if (f64) {
      double ref[12];
      naive_forward(q, k, v, NULL, false, 1 / sqrt(2.0), z, ref);
      CHECK_CLOSE(max_abs_diff(o, ref), 0, 1e-9);
    }
    eng_tensor *s = eng_sum(o, ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    bool gfin = true;
    for (int64_t i = 0; i < 12; i++) gfin = gfin && isfinite(at(eng_grad(q), i));
    for (int64_t i = 0; i < 8; i++) gfin = gfin && isfinite(at(eng_grad(v), i));
    CHECK(gfin);
    eng_tensor_release(s);
    eng_tensor_release(o);
    eng_tensor_release(q);
    eng_tensor_release(k);
    eng_tensor_release(v);
  }
}

static void test_no_grad_and_empty(void) {
  int64_t qs[4] = {1, 2, 3, 4}, ks[4] = {1, 2, 0, 4};
  eng_tensor *q = randn(ENG_DTYPE_F32, 31, 4, qs, false), *k = eng_zeros(ENG_DTYPE_F32, 4, ks);
  eng_tensor *o = eng_attention(q, k, k, NULL, false, 0); /* S = 0: nothing visible */
  CHECK(o != NULL && !eng_requires_grad(o) && strcmp(eng_grad_fn_name(o), "leaf") == 0);
  bool zero = true;
  for (int64_t i = 0; i < 24; i++) zero = zero && at(o, i) == 0;
  CHECK(zero);
  eng_tensor_release(o);
  eng_tensor_release(q);
  eng_tensor_release(k);
}

static void test_errors(void) {
  eng_tensor *q = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){2, 3, 4, 8});
  eng_tensor *k = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){2, 2, 5, 8});
  eng_tensor *k1 = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){2, 1, 5, 8});
  eng_tensor *k6 = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){2, 1, 6, 8});
  eng_tensor *kd = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){2, 1, 5, 4});
  eng_tensor *kb = eng_zeros(ENG_DTYPE_F32, 4, (int64_t[]){3, 1, 5, 8});
  eng_tensor *k64 = eng_zeros(ENG_DTYPE_F64, 4, (int64_t[]){2, 1, 5, 8});
  eng_tensor *q3 = eng_zeros(ENG_DTYPE_F32, 3, (int64_t[]){2, 4, 8});
  eng_tensor *m = eng_full(ENG_DTYPE_F32, 2, (int64_t[]){2, 4}, 1);
  CHECK_FAILS(eng_attention(q3, k, k, NULL, false, 0),
              "attention: q is [2,4,8], k is [2,2,5,8], v is [2,2,5,8]: expected q (B,H,T,D) and k, v (B,Hkv,S,D)");
  CHECK_FAILS(eng_attention(q, k64, k64, NULL, false, 0), "attention: dtypes differ (float32 and float64)");
  CHECK_FAILS(eng_attention(q, k1, k6, NULL, false, 0),
              "attention: k is [2,1,5,8] but v is [2,1,6,8]: they must have the same shape");
  CHECK_FAILS(eng_attention(q, kb, kb, NULL, false, 0), "attention: q is [2,3,4,8], k is [3,1,5,8]: batch sizes differ");
  CHECK_FAILS(eng_attention(q, kd, kd, NULL, false, 0), "attention: q is [2,3,4,8], k is [2,1,5,4]: head dims differ");
  CHECK_FAILS(eng_attention(q, k, k, NULL, false, 0),
              "attention: q is [2,3,4,8], k is [2,2,5,8]: the 3 query heads must be a multiple of the 2 kv heads");
  CHECK_FAILS(eng_attention(q, k1, k1, m, false, 0), "attention: key_mask is [2,4], expected (B,S) = [2,5]");
  eng_tensor *ok = eng_attention(q, k1, k1, NULL, true, 0);
  CHECK(ok != NULL);
  eng_tensor_release(ok);
  eng_tensor_release(m);
  eng_tensor_release(q);
  eng_tensor_release(k);
  eng_tensor_release(k1);
  eng_tensor_release(k6);
  eng_tensor_release(kd);
  eng_tensor_release(kb);
  eng_tensor_release(k64);
  eng_tensor_release(q3);
}

int main(void) {
  RUN(test_by_hand);
  RUN(test_against_loops);
  RUN(test_threading_paths);
  RUN(test_gradcheck);
  RUN(test_fully_masked_rows);
  RUN(test_strided_inputs);
  RUN(test_extremes);
  RUN(test_no_grad_and_empty);
  RUN(test_errors);
  DONE();
}
