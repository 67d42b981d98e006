/* test_optim.c — the optimizers of engine_optim.h: AdamW and SGD steps
 * against the update written out in double precision here and against
 * PyTorch's values in tests/fixtures/optim.json (made by
 * scripts/make_optim_fixture.py; bit-exact on an AVX2+FMA build), the decay
 * ranges, clipping, zero_grad, grads accumulating through backward into the
 * flat block, re-attaching dropped grads, the non-finite skip, thread-count
 * independence, a state round trip, and the errors. */
#include "check.h"

#include <jansson.h>

#define F32 ENG_DTYPE_F32

/* exact comparisons where the kernels repeat ATen's operations bit for bit */
#if defined(__AVX__) && defined(__FMA__)
#define FIXTURE_RTOL 0.0
#else
#define FIXTURE_RTOL 1e-5
#endif

static eng_tensor *leaf(int ndim, const int64_t *shape, const double *vals) {
  eng_tensor *t = T(F32, ndim, shape, vals);
  eng_set_requires_grad(t, true);
  return t;
}

/* the float32 value of a double, as the engine stores it */
static double f32(double x) { return (double)(float)x; }

/* sets t's grad (attached by the optimizer) to vals */
static void set_grad_values(eng_tensor *t, const double *vals) {
  eng_tensor *g = T(F32, eng_tensor_ndim(t), eng_tensor_shape(t), vals);
  CHECK(eng_copy_(eng_grad(t), g) == 0);
  eng_tensor_release(g);
}

/* ---- AdamW against the formula, in double ------------------------------------ */

/* one AdamW step in double, the formula of Loshchilov & Hutter as PyTorch
 * writes it: p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) */
static void adamw_ref(double *p, const double *g, double *m, double *v, int n, int t, double lr, double b1,
                      double b2, double eps, double wd) {
  for (int i = 0; i < n; i++) {
    p[i] -= lr * wd * p[i];
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
    p[i] -= lr * mhat / (sqrt(vhat) + eps);
  }
}

static void test_adamw_vs_formula(void) {
  /* w (3,5) decays, b (7) does not: 22 elements, so both the 8-wide path and
   * the scalar tail run */
  int64_t sw[] = {3, 5}, sb[] = {7};
  double w0[15], b0[7], gw[3][15], gb[3][7];
  for (int i = 0; i < 15; i++) w0[i] = f32(0.1 * (i - 7) + 0.03);
  for (int i = 0; i < 7; i++) b0[i] = f32(0.5 - 0.2 * i);
  for (int k = 0; k < 3; k++) {
    for (int i = 0; i < 15; i++) gw[k][i] = f32(sin(1.0 + i + 7 * k) * (k + 1));
    for (int i = 0; i < 7; i++) gb[k][i] = f32(cos(2.0 + i * 3 + k) * 0.1);
  }
  gb[1][2] = f32(1e-9);
  eng_tensor *w = leaf(2, sw, w0), *b = leaf(1, sb, b0);
  eng_tensor *ps[] = {b, w}; /* given in the other order: decayed ones go first */
  bool decay[] = {false, true};
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
  c.lr = 0.02, c.beta1 = 0.8, c.beta2 = 0.99, c.eps = 1e-6, c.weight_decay = 0.1;
  eng_optim *o = eng_optim_new(&c, 2, ps, NULL, decay);
  CHECK(o != NULL);
  CHECK(eng_optim_numel(o) == 22 && eng_optim_decay_numel(o) == 15 && eng_optim_num_slots(o) == 2);
  eng_optim_slot s0, s1;
  eng_optim_slot_info(o, 0, &s0);
  eng_optim_slot_info(o, 1, &s1);
  CHECK(s0.index == 1 && s0.offset == 0 && s0.numel == 15 && s0.decay && s0.param == w);
  CHECK(s1.index == 0 && s1.offset == 15 && s1.numel == 7 && !s1.decay && s1.param == b);
  /* the parameters now live in the flat block, with their values */
  float *flat = eng_tensor_data(eng_optim_params(o));
  CHECK(eng_tensor_data(w) == (void *)flat && eng_tensor_data(b) == (void *)(flat + 15));
  CHECK(eng_tensor_data(eng_grad(w)) == eng_tensor_data(eng_optim_grads(o)));
  CHECK_CLOSE(at(w, 14), w0[14], 0);
  CHECK_CLOSE(at(b, 3), b0[3], 0);

  double pw[15], pb[7], mw[15] = {0}, vw[15] = {0}, mb[7] = {0}, vb[7] = {0};
  memcpy(pw, w0, sizeof pw);
  memcpy(pb, b0, sizeof pb);
  for (int k = 0; k < 3; k++) {
    set_grad_values(w, gw[k]);
    set_grad_values(b, gb[k]);
    bool updated = false;
    CHECK(eng_optim_step(o, &updated) == 0 && updated);
    adamw_ref(pw, gw[k], mw, vw, 15, k + 1, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay);
    adamw_ref(pb, gb[k], mb, vb, 7, k + 1, c.lr, c.beta1, c.beta2, c.eps, 0.0);
    /* float32 arithmetic against double: a few ulps of the parameter */
    for (int i = 0; i < 15; i++) CHECK_CLOSE(at(w, i), pw[i], 1e-6 * fabs(pw[i]) + 1e-8);
    for (int i = 0; i < 7; i++) CHECK_CLOSE(at(b, i), pb[i], 1e-6 * fabs(pb[i]) + 1e-8);
  }
  CHECK(eng_optim_step_count(o) == 3);
  eng_tensor *m = eng_optim_moment(o, "exp_avg"), *v = eng_optim_moment(o, "exp_avg_sq");
  for (int i = 0; i < 15; i++) CHECK_CLOSE(at(m, i), mw[i], 1e-6 * fabs(mw[i]) + 1e-9);
  for (int i = 0; i < 7; i++) CHECK_CLOSE(at(v, 15 + i), vb[i], 1e-6 * fabs(vb[i]) + 1e-12);
  CHECK(eng_optim_moment(o, "momentum_buffer") == NULL);
  eng_optim_free(o);
  eng_tensor_release(w);
  eng_tensor_release(b);
}

/* one step of the first AdamW update, by hand: m_hat = g, v_hat = g^2, so
 * p1 = p0(1 - lr wd) - lr g/(|g| + eps) */
static void test_adamw_first_step_by_hand(void) {
  int64_t s[] = {2, 2};
  eng_tensor *w = leaf(2, s, (double[]){1, -2, 0.5, 3});
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
  c.lr = 0.1, c.weight_decay = 0.5, c.eps = 0;
  eng_optim *o = eng_optim_new(&c, 1, &w, NULL, NULL);
  set_grad_values(w, (double[]){4, -0.25, 0, 1e-3});
  CHECK(eng_optim_step(o, NULL) == 0);
  CHECK_CLOSE(at(w, 0), 0.95 - 0.1, 1e-7);
  CHECK_CLOSE(at(w, 1), -1.9 + 0.1, 1e-7);
  CHECK(isnan(at(w, 2))); /* eps = 0 and a zero gradient: 0/0, as in PyTorch */
  CHECK_CLOSE(at(w, 3), 2.85 - 0.1, 1e-6);
  eng_optim_free(o);
  eng_tensor_release(w);
}

/* ---- the PyTorch fixture ----------------------------------------------------- */

static json_t *load_fixture(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s", __FILE__);
  char *slash = strrchr(path, '/');
  if (slash) snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "../fixtures/optim.json");
  else snprintf(path, sizeof path, "tests/fixtures/optim.json");
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) fprintf(stderr, "cannot read %s: %s (line %d)\n", path, err.text, err.line);
  return j;
}

static double *json_doubles(json_t *arr, int *n) {
  *n = (int)json_array_size(arr);
  double *v = malloc(sizeof(double) * (size_t)(*n ? *n : 1));
  for (int i = 0; i < *n; i++) v[i] = json_number_value(json_array_get(arr, (size_t)i));
  return v;
}

/* count of elements of t (from flat offset off) that differ from vals beyond rtol */
static int mismatches(eng_tensor *t, int64_t off, json_t *vals, double rtol, double *worst) {
  int n, bad = 0;
  double *want = json_doubles(vals, &n);
  for (int i = 0; i < n; i++) {
    double got = at(t, off + i), d = fabs(got - want[i]);
    if (!(d <= rtol * fabs(want[i]))) {
      bad++;
      if (d > *worst) *worst = d;
    }
  }
  free(want);
  return bad;
}

static void run_fixture_case(json_t *fx, const char *key, eng_optim_config c) {
  json_t *cs = json_object_get(fx, key);
  CHECK(cs != NULL);
  if (!cs) return;
  json_t *names = json_object_get(cs, "names"), *shapes = json_object_get(cs, "shapes");
  json_t *decayed = json_object_get(cs, "decayed"), *opts = json_object_get(cs, "options");
  int n = (int)json_array_size(names);
  eng_tensor *ps[8];
  const char *nm[8];
  bool decay[8];
  for (int i = 0; i < n; i++) {
    nm[i] = json_string_value(json_array_get(names, (size_t)i));
    json_t *shape = json_object_get(shapes, nm[i]);
    int64_t sh[ENG_MAX_DIMS];
    int nd = (int)json_array_size(shape);
    for (int d = 0; d < nd; d++) sh[d] = json_integer_value(json_array_get(shape, (size_t)d));
    int cnt;
    double *init = json_doubles(json_object_get(json_object_get(cs, "init"), nm[i]), &cnt);
    ps[i] = leaf(nd, sh, init);
    free(init);
    decay[i] = false;
    for (size_t j = 0; j < json_array_size(decayed); j++)
      if (!strcmp(json_string_value(json_array_get(decayed, j)), nm[i])) decay[i] = true;
  }
  eng_optim *o = eng_optim_new(&c, n, ps, nm, decay);
  CHECK(o != NULL);
  json_t *max_norm = json_object_get(opts, "max_norm");
  int bad = 0;
  double worst = 0;
  for (size_t k = 0; k < 3; k++) {
    for (int i = 0; i < n; i++) {
      int cnt;
      double *g = json_doubles(json_object_get(json_array_get(json_object_get(cs, "grads"), k), nm[i]), &cnt);
      set_grad_values(ps[i], g);
      free(g);
    }
    if (max_norm) {
      double norm = 0, want = json_number_value(json_array_get(json_object_get(cs, "norms"), k));
      CHECK(eng_optim_clip_grad_norm(o, json_number_value(max_norm), &norm) == 0);
      CHECK_CLOSE(norm, want, 2e-7 * want); /* ours in double, PyTorch's in float32 */
    }
    CHECK(eng_optim_step(o, NULL) == 0);
    for (int i = 0; i < n; i++)
      bad += mismatches(ps[i], 0, json_object_get(json_array_get(json_object_get(cs, "after"), k), nm[i]),
                        FIXTURE_RTOL, &worst);
  }
  /* the moments after the last step, slot by slot */
  const char *key_m;
  json_t *vals;
  json_object_foreach(json_object_get(cs, "state"), key_m, vals) {
    eng_tensor *mom = eng_optim_moment(o, key_m);
    CHECK(mom != NULL);
    for (int s = 0; mom && s < eng_optim_num_slots(o); s++) {
      eng_optim_slot info;
      eng_optim_slot_info(o, s, &info);
      bad += mismatches(mom, info.offset, json_object_get(vals, nm[info.index]), FIXTURE_RTOL, &worst);
    }
  }
  if (bad) fprintf(stderr, "fixture %s: %d values differ from PyTorch's (worst by %g)\n", key, bad, worst);
  CHECK(bad == 0);
  eng_optim_free(o);
  for (int i = 0; i < n; i++) eng_tensor_release(ps[i]);
}

static void test_fixture(void) {
  json_t *fx = load_fixture();
  CHECK(fx != NULL);
  if (!fx) return;
  const char *adamw_keys[] = {"adamw", "adamw_clip"};
  for (int i = 0; i < 2; i++) {
    json_t *o = json_object_get(json_object_get(fx, adamw_keys[i]), "options");
    eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
    c.lr = json_number_value(json_object_get(o, "lr"));
    c.beta1 = json_number_value(json_array_get(json_object_get(o, "betas"), 0));
    c.beta2 = json_number_value(json_array_get(json_object_get(o, "betas"), 1));
    c.eps = json_number_value(json_object_get(o, "eps"));
    c.weight_decay = json_number_value(json_object_get(o, "weight_decay"));
    run_fixture_case(fx, adamw_keys[i], c);
  }
  const char *sgd_keys[] = {"sgd_momentum", "sgd_nesterov", "sgd_plain"};
  for (int i = 0; i < 3; i++) {
    json_t *o = json_object_get(json_object_get(fx, sgd_keys[i]), "options");
    eng_optim_config c = eng_optim_defaults(ENG_OPTIM_SGD);
    c.lr = json_number_value(json_object_get(o, "lr"));
    c.momentum = json_number_value(json_object_get(o, "momentum"));
    c.dampening = json_number_value(json_object_get(o, "dampening"));
    c.nesterov = json_is_true(json_object_get(o, "nesterov"));
    c.weight_decay = json_number_value(json_object_get(o, "weight_decay"));
    run_fixture_case(fx, sgd_keys[i], c);
  }
  json_decref(fx);
}

/* ---- SGD against the formula --------------------------------------------------- */

static void test_sgd_vs_formula(void) {
  int64_t s[] = {11};
  double p0[11], g[3][11];
  for (int i = 0; i < 11; i++) p0[i] = f32(0.3 * i - 1.4);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < 11; i++) g[k][i] = f32(sin(0.7 * i + k) + 0.1 * k);
  for (int nesterov = 0; nesterov < 2; nesterov++) {
    eng_tensor *p = leaf(1, s, p0);
    eng_optim_config c = eng_optim_defaults(ENG_OPTIM_SGD);
    c.lr = 0.1, c.momentum = 0.9, c.weight_decay = 0.05, c.nesterov = nesterov;
    c.dampening = nesterov ? 0 : 0.25;
    eng_optim *o = eng_optim_new(&c, 1, &p, NULL, NULL);
    double ref[11], buf[11];
    memcpy(ref, p0, sizeof ref);
    for (int k = 0; k < 3; k++) {
      set_grad_values(p, g[k]);
      CHECK(eng_optim_step(o, NULL) == 0);
      for (int i = 0; i < 11; i++) {
        double d = g[k][i] + c.weight_decay * ref[i];
        buf[i] = k == 0 ? d : c.momentum * buf[i] + (1 - c.dampening) * d;
        d = nesterov ? d + c.momentum * buf[i] : buf[i];
        ref[i] -= c.lr * d;
      }
      for (int i = 0; i < 11; i++) CHECK_CLOSE(at(p, i), ref[i], 1e-6 * fabs(ref[i]) + 1e-7);
    }
    eng_tensor *mb = eng_optim_moment(o, "momentum_buffer");
    for (int i = 0; i < 11; i++) CHECK_CLOSE(at(mb, i), buf[i], 1e-6 * fabs(buf[i]) + 1e-7);
    eng_optim_free(o);
    eng_tensor_release(p);
  }
  /* no momentum: no buffer, p -= lr g */
  eng_tensor *p = leaf(1, s, p0);
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_SGD);
  c.lr = 0.5;
  eng_optim *o = eng_optim_new(&c, 1, &p, NULL, NULL);
  CHECK(eng_optim_moment(o, "momentum_buffer") == NULL);
  set_grad_values(p, g[0]);
  eng_optim_step(o, NULL);
  for (int i = 0; i < 11; i++) CHECK_CLOSE(at(p, i), p0[i] - 0.5 * g[0][i], 1e-6);
  eng_optim_free(o);
  eng_tensor_release(p);
}

/* ---- decay ranges ---------------------------------------------------------------- */

static void test_decay_mask(void) {
  /* zero gradients: the Adam part is 0/(0 + eps) = 0, so only decay moves */
  int64_t sw[] = {2, 2}, sb[] = {3};
  eng_tensor *w = leaf(2, sw, (double[]){1, 2, 3, 4}), *b = leaf(1, sb, (double[]){5, 6, 7});
  eng_tensor *ps[] = {w, b};
  bool decay[] = {true, false};
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
  c.lr = 0.1, c.weight_decay = 0.5;
  eng_optim *o = eng_optim_new(&c, 2, ps, NULL, decay);
  eng_optim_step(o, NULL);
  eng_optim_step(o, NULL);
  for (int i = 0; i < 4; i++) CHECK_CLOSE(at(w, i), (i + 1) * 0.95 * 0.95, 1e-6);
  for (int i = 0; i < 3; i++) CHECK_CLOSE(at(b, i), 5 + i, 0); /* untouched, bit for bit */
  eng_optim_free(o);
  /* SGD's L2 term only on the decayed range too */
  eng_optim_config s = eng_optim_defaults(ENG_OPTIM_SGD);
  s.lr = 0.1, s.weight_decay = 0.5;
  o = eng_optim_new(&s, 2, ps, NULL, decay);
  double w1 = at(w, 0);
  eng_optim_step(o, NULL);
  CHECK_CLOSE(at(w, 0), w1 - 0.1 * 0.5 * w1, 1e-6);
  CHECK_CLOSE(at(b, 0), 5, 0);
  eng_optim_free(o);
  eng_tensor_release(w);
  eng_tensor_release(b);
}

/* ---- clipping, norms, zero_grad, scaling --------------------------------------- */

static void test_clip(void) {
  int64_t s3[] = {3}, s2[] = {2};
  eng_tensor *a = leaf(1, s3, (double[]){0, 0, 0}), *b = leaf(1, s2, (double[]){0, 0});
  eng_tensor *ps[] = {a, b};
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_SGD, .lr = 1}, 2, ps, NULL, NULL);
  set_grad_values(a, (double[]){3, 0, 4});
  set_grad_values(b, (double[]){0, 12});
  double norm = 0;
  CHECK(eng_optim_grad_norm(o, &norm) == 0);
  CHECK_CLOSE(norm, 13, 1e-12); /* sqrt(9 + 16 + 144) */
  /* above max_norm: scaled by max/(norm + 1e-6), computed in float32 */
  CHECK(eng_optim_clip_grad_norm(o, 6.5, &norm) == 0);
  CHECK_CLOSE(norm, 13, 1e-12);
  double coef = (double)(6.5f / (13.0f + 1e-6f));
  CHECK_CLOSE(at(eng_grad(a), 0), f32(3 * coef), 1e-7);
  CHECK_CLOSE(at(eng_grad(b), 1), f32(12 * coef), 1e-6);
  eng_optim_grad_norm(o, &norm);
  CHECK_CLOSE(norm, 6.5, 1e-5);
  /* below max_norm: unchanged */
  CHECK(eng_optim_clip_grad_norm(o, 100, &norm) == 0);
  CHECK_CLOSE(at(eng_grad(a), 2), f32(4 * coef), 0);
  /* scale_grads */
  CHECK(eng_optim_scale_grads(o, 0.5) == 0);
  CHECK_CLOSE(at(eng_grad(a), 2), f32(f32(4 * coef) * 0.5), 0);
  /* a non-finite norm is returned and nothing is scaled */
  set_grad_values(b, (double[]){INFINITY, 1});
  CHECK(eng_optim_clip_grad_norm(o, 1, &norm) == 0);
  CHECK(isinf(norm));
  CHECK_CLOSE(at(eng_grad(b), 1), 1, 0);
  set_grad_values(b, (double[]){NAN, 1});
  eng_optim_grad_norm(o, &norm);
  CHECK(isnan(norm));
  /* zero_grad: one fill of the block */
  CHECK(eng_optim_zero_grad(o) == 0);
  for (int i = 0; i < 5; i++) CHECK_CLOSE(at(eng_optim_grads(o), i), 0, 0);
  CHECK(eng_optim_clip_grad_norm(o, 0, &norm) != 0);
  CHECK(strcmp(eng_last_error(), "clip_grad_norm: max_norm must be a number > 0, got 0") == 0);
  CHECK(eng_optim_clip_grad_norm(o, NAN, &norm) != 0);
  set_grad_values(a, (double[]){30, 0, 40});
  CHECK(eng_optim_clip_grad_norm(o, INFINITY, &norm) == 0); /* the norm, nothing clipped */
  CHECK_CLOSE(norm, 50, 1e-12);
  CHECK_CLOSE(at(eng_grad(a), 2), 40, 0);
  eng_optim_free(o);
  eng_tensor_release(a);
  eng_tensor_release(b);
}

/* large enough to be split across threads, with sums over many chunks */
static void test_norm_large(void) {
  int64_t n = 300001;
  eng_tensor *p = eng_zeros(F32, 1, &n);
  eng_set_requires_grad(p, true);
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_SGD, .lr = 1}, 1, &p, NULL, NULL);
  float *g = eng_tensor_data(eng_grad(p));
  /* squares that float32 cannot hold exactly: (1 + 2^-20)^2 needs 41 bits;
   * rounding each to float would put the norm off by 2^-41 (4.5e-13) */
  long double want = 0;
  for (int64_t i = 0; i < n; i++) {
    g[i] = (float)((i % 7) - 3) * (1.0f + 0x1p-20f);
    want += (long double)g[i] * g[i];
  }
  double norm;
  eng_optim_grad_norm(o, &norm);
  CHECK_CLOSE(norm, (double)sqrtl(want), 1e-13 * (double)sqrtl(want));
  eng_optim_free(o);
  eng_tensor_release(p);
}

/* ---- grads through backward ----------------------------------------------------- */

static void test_backward_accumulates_into_block(void) {
  int64_t s[] = {3};
  eng_tensor *w = leaf(1, s, (double[]){1, 2, 3}), *u = leaf(1, s, (double[]){-1, 0, 1});
  eng_tensor *x = T(F32, 1, s, ((double[]){0.5, -2, 4}));
  eng_tensor *ps[] = {w, u};
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_SGD, .lr = 0.1}, 2, ps, NULL, NULL);
  float *gflat = eng_tensor_data(eng_optim_grads(o));
  for (int rep = 0; rep < 2; rep++) { /* loss = sum(w*x) + sum(u*u): dw = x, du = 2u */
    eng_tensor *wx = eng_mul(w, x), *uu = eng_mul(u, u), *s1 = eng_sum(wx, ENG_ALL_DIMS, false),
               *s2 = eng_sum(uu, ENG_ALL_DIMS, false), *loss = eng_add(s1, s2);
    CHECK(eng_backward(loss, NULL) == 0);
    eng_tensor *ts[] = {wx, uu, s1, s2, loss};
    for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
  }
  /* two backward calls accumulated in place, in the flat block */
  CHECK(eng_tensor_data(eng_grad(w)) == (void *)gflat);
  double want[] = {1, -4, 8, -4, 0, 4};
  for (int i = 0; i < 6; i++) CHECK_CLOSE(gflat[i], want[i], 0);
  eng_optim_step(o, NULL);
  CHECK_CLOSE(at(w, 2), 3 - 0.1 * 8, 1e-6);
  CHECK_CLOSE(at(u, 0), -1 + 0.1 * 4, 1e-6);
  CHECK(eng_optim_zero_grad(o) == 0);
  for (int i = 0; i < 6; i++) CHECK_CLOSE(gflat[i], 0, 0);

  /* a grad dropped by hand (x:zero_grad()) is re-attached, and one that
   * backward then made elsewhere is copied into the block first */
  eng_set_grad(w, NULL);
  eng_tensor *wx = eng_mul(w, x), *l = eng_sum(wx, ENG_ALL_DIMS, false);
  eng_backward(l, NULL);
  CHECK(eng_tensor_data(eng_grad(w)) != (void *)gflat);
  double w2 = at(w, 1);
  eng_optim_step(o, NULL);
  CHECK(eng_tensor_data(eng_grad(w)) == (void *)gflat);
  CHECK_CLOSE(gflat[1], -2, 0);
  CHECK_CLOSE(at(w, 1), w2 + 0.1 * 2, 1e-6);
  eng_set_grad(u, NULL); /* dropped and not recomputed: its slice reads 0 */
  gflat[4] = 123;
  double norm;
  CHECK(eng_optim_grad_norm(o, &norm) == 0);
  CHECK_CLOSE(norm, 4.5, 0); /* w's grad x = (0.5, -2, 4) only: u's slice was cleared */
  CHECK(eng_grad(u) != NULL && eng_tensor_data(eng_grad(u)) == (void *)(gflat + 3));
  CHECK_CLOSE(gflat[4], 0, 0);
  eng_tensor_release(wx);
  eng_tensor_release(l);
  eng_optim_free(o);
  eng_tensor_release(w);
  eng_tensor_release(u);
  eng_tensor_release(x);
}

/* a parameter's existing grad is copied in; a duplicate is taken once */
static void test_existing_grad_and_duplicates(void) {
  int64_t s[] = {2};
  eng_tensor *w = leaf(1, s, (double[]){1, 2});
  eng_tensor *g = T(F32, 1, s, ((double[]){0.25, -0.5}));
  eng_set_grad(w, g);
  eng_tensor *ps[] = {w, w};
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_SGD, .lr = 1}, 2, ps, NULL, NULL);
  CHECK(eng_optim_num_slots(o) == 1 && eng_optim_numel(o) == 2);
  CHECK(eng_grad(w) != g);
  CHECK_CLOSE(at(eng_optim_grads(o), 1), -0.5, 0);
  eng_optim_free(o);
  eng_tensor_release(g);
  eng_tensor_release(w);
}

/* ---- non-finite gradients --------------------------------------------------------- */

static void test_nonfinite_skip(void) {
  int64_t s[] = {3};
  eng_tensor *w = leaf(1, s, (double[]){1, 2, 3});
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_ADAMW, .lr = 0.1, .beta1 = 0.9,
                                                   .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1},
                               1, &w, NULL, NULL);
  double bad[][3] = {{1, INFINITY, 0}, {NAN, 0, 0}, {0, 0, -INFINITY}};
  for (int k = 0; k < 3; k++) {
    set_grad_values(w, bad[k]);
    bool updated = true;
    CHECK(eng_optim_step(o, &updated) == 0 && !updated);
  }
  CHECK(eng_optim_step_count(o) == 0 && eng_optim_skipped(o) == 3);
  for (int i = 0; i < 3; i++) {
    CHECK_CLOSE(at(w, i), i + 1, 0);
    CHECK_CLOSE(at(eng_optim_moment(o, "exp_avg"), i), 0, 0);
  }
  set_grad_values(w, (double[]){1, 1, 1});
  bool updated = false;
  CHECK(eng_optim_step(o, &updated) == 0 && updated && eng_optim_step_count(o) == 1);
  eng_optim_free(o);
  eng_tensor_release(w);
}

/* ---- thread count and state ----------------------------------------------------------- */

/* AdamW over init (n) for nsteps steps with the given grads, clipping at
 * max_norm first; returns the parameters and the last grad norm */
static eng_tensor *run_adamw(int threads, eng_tensor *init, eng_tensor **grads, int nsteps, double max_norm,
                             double *norm) {
  eng_set_threads(threads);
  eng_tensor *p = eng_zeros(F32, 1, eng_tensor_shape(init));
  eng_copy_(p, init);
  eng_set_requires_grad(p, true);
  eng_optim *o = eng_optim_new(&(eng_optim_config){.kind = ENG_OPTIM_ADAMW, .lr = 1e-2, .beta1 = 0.9,
                                                   .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1},
                               1, &p, NULL, NULL);
  for (int k = 0; k < nsteps; k++) {
    eng_copy_(eng_optim_grads(o), grads[k]);
    eng_optim_clip_grad_norm(o, max_norm, norm);
    eng_optim_step(o, NULL);
  }
  eng_optim_free(o);
  return p;
}

/* the threaded path gives the serial path's values (checked on a slice run
 * alone, below the threading threshold), and any thread count the same */
static void test_thread_independence(void) {
  int before = eng_get_threads();
  int64_t n = 200003, tail = 1000;
  eng_rng *r = eng_rng_new(42);
  eng_tensor *init = eng_randn(r, F32, 1, &n), *grads[3], *tgrads[3];
  for (int k = 0; k < 3; k++) {
    grads[k] = eng_randn(r, F32, 1, &n);
    tgrads[k] = eng_narrow(grads[k], 0, n - tail, tail);
  }
  eng_rng_free(r);
  double n1, n2, nt;
  eng_tensor *a = run_adamw(1, init, grads, 3, 100.0, &n1), *b = run_adamw(2, init, grads, 3, 100.0, &n2);
  CHECK(n1 == n2);
  CHECK(memcmp(eng_tensor_data(a), eng_tensor_data(b), sizeof(float) * (size_t)n) == 0);
  eng_tensor *c = run_adamw(2, init, grads, 3, INFINITY, &n1);
  eng_tensor *tinit = eng_narrow(init, 0, n - tail, tail);
  eng_tensor *t = run_adamw(2, tinit, tgrads, 3, INFINITY, &nt);
  CHECK(memcmp((float *)eng_tensor_data(c) + (n - tail), eng_tensor_data(t), sizeof(float) * (size_t)tail) == 0);
  eng_set_threads(before);
  eng_tensor *ts[] = {init, a, b, c, tinit, t};
  for (int i = 0; i < 6; i++) eng_tensor_release(ts[i]);
  for (int k = 0; k < 3; k++) {
    eng_tensor_release(grads[k]);
    eng_tensor_release(tgrads[k]);
  }
}

/* a fresh copy of t's values */
static eng_tensor *copy_of(eng_tensor *t) {
  eng_tensor *c = eng_zeros(eng_tensor_dtype(t), eng_tensor_ndim(t), eng_tensor_shape(t));
  eng_copy_(c, t);
  return c;
}

/* continuing after restoring (parameters, moments, step count) equals
 * continuing without the round trip, bit for bit */
static void test_state_round_trip(void) {
  int64_t n = 37;
  eng_rng *r = eng_rng_new(7);
  eng_tensor *p = eng_randn(r, F32, 1, &n), *grads[4];
  for (int k = 0; k < 4; k++) grads[k] = eng_randn(r, F32, 1, &n);
  eng_rng_free(r);
  eng_set_requires_grad(p, true);
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
  c.lr = 0.05;
  eng_optim *a = eng_optim_new(&c, 1, &p, NULL, NULL);
  for (int k = 0; k < 2; k++) {
    eng_copy_(eng_optim_grads(a), grads[k]);
    eng_optim_step(a, NULL);
  }
  eng_tensor *sp = copy_of(eng_optim_params(a)), *sm = copy_of(eng_optim_moment(a, "exp_avg")),
             *sv = copy_of(eng_optim_moment(a, "exp_avg_sq"));
  int64_t step = eng_optim_step_count(a);
  for (int k = 2; k < 4; k++) {
    eng_copy_(eng_optim_grads(a), grads[k]);
    eng_optim_step(a, NULL);
  }

  eng_tensor *q = copy_of(sp);
  eng_set_requires_grad(q, true);
  eng_optim *b = eng_optim_new(&c, 1, &q, NULL, NULL);
  eng_copy_(eng_optim_moment(b, "exp_avg"), sm);
  eng_copy_(eng_optim_moment(b, "exp_avg_sq"), sv);
  CHECK(eng_optim_set_step_count(b, step) == 0 && step == 2);
  for (int k = 2; k < 4; k++) {
    eng_copy_(eng_optim_grads(b), grads[k]);
    eng_optim_step(b, NULL);
  }
  CHECK(memcmp(eng_tensor_data(p), eng_tensor_data(q), sizeof(float) * (size_t)n) == 0);
  CHECK(memcmp(eng_tensor_data(eng_optim_moment(a, "exp_avg_sq")), eng_tensor_data(eng_optim_moment(b, "exp_avg_sq")),
               sizeof(float) * (size_t)n) == 0);
  /* and without the step count the bias corrections differ: the check can fail */
  eng_copy_(eng_optim_moment(b, "exp_avg"), sm);
  eng_copy_(eng_optim_moment(b, "exp_avg_sq"), sv);
  eng_copy_(q, sp);
  eng_optim_set_step_count(b, 0);
  for (int k = 2; k < 4; k++) {
    eng_copy_(eng_optim_grads(b), grads[k]);
    eng_optim_step(b, NULL);
  }
  CHECK(memcmp(eng_tensor_data(p), eng_tensor_data(q), sizeof(float) * (size_t)n) != 0);
  eng_optim_free(a);
  eng_optim_free(b);
  eng_tensor *ts[] = {p, q, sp, sm, sv};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
  for (int k = 0; k < 4; k++) eng_tensor_release(grads[k]);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(void) {
  eng_optim_config c = eng_optim_defaults(ENG_OPTIM_ADAMW);
  int64_t s[] = {2};
  CHECK(eng_optim_new(&c, 0, NULL, NULL, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: the parameter list is empty") == 0);
  eng_tensor *d = T(ENG_DTYPE_F64, 1, s, ((double[]){1, 2}));
  eng_set_requires_grad(d, true);
  const char *names[] = {"w", "h.0.bias"};
  eng_tensor *w = leaf(1, s, (double[]){1, 2});
  eng_tensor *ps[] = {w, d};
  CHECK(eng_optim_new(&c, 2, ps, names, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: parameter 2 ('h.0.bias') is float64 [2]; parameters must be float32") == 0);
  eng_tensor *y = eng_mul(w, w);
  ps[1] = y;
  CHECK(eng_optim_new(&c, 2, ps, NULL, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: parameter 2 is not a leaf (it was made by mul); pass the model's "
                                 "parameters, not values computed from them") == 0);
  eng_tensor *frozen = T(F32, 1, s, ((double[]){1, 2}));
  ps[1] = frozen;
  CHECK(eng_optim_new(&c, 2, ps, names, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: parameter 2 ('h.0.bias') [2] does not require grad; call "
                                 "requires_grad(true) on it or leave it out") == 0);
  eng_optim_config bad = c;
  bad.lr = -1;
  CHECK(eng_optim_new(&bad, 1, &w, NULL, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: lr must be a finite number >= 0, got -1") == 0);
  bad = c;
  bad.beta2 = 1;
  CHECK(eng_optim_new(&bad, 1, &w, NULL, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "AdamW: beta2 must be in [0, 1), got 1") == 0);
  bad = eng_optim_defaults(ENG_OPTIM_SGD);
  bad.nesterov = true;
  CHECK(eng_optim_new(&bad, 1, &w, NULL, NULL) == NULL);
  CHECK(strcmp(eng_last_error(), "SGD: nesterov momentum needs momentum > 0 and dampening = 0 (got momentum 0, "
                                 "dampening 0)") == 0);
  /* nothing was moved by the failed calls */
  CHECK(eng_grad(w) == NULL);

  /* a parameter moved away by set_data after the optimizer took it */
  eng_optim *o = eng_optim_new(&c, 1, &w, names, NULL);
  CHECK(o != NULL);
  eng_tensor *elsewhere = T(F32, 1, s, ((double[]){5, 6}));
  eng_tensor_set_data(w, elsewhere);
  bool updated = true;
  CHECK(eng_optim_step(o, &updated) == -1 && !updated);
  CHECK(strcmp(eng_last_error(), "AdamW: parameter 1 ('w') no longer lives in the optimizer's flat block "
                                 "(set_data_ moved it, or another optimizer took it)") == 0);
  CHECK(eng_optim_set_lr(o, NAN) == -1);
  CHECK(strcmp(eng_last_error(), "AdamW: lr must be a finite number >= 0, got nan") == 0);
  CHECK(eng_optim_set_step_count(o, -1) == -1);
  eng_optim_free(o);
  eng_tensor *ts[] = {d, w, y, frozen, elsewhere};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
}

int main(void) {
  RUN(test_adamw_vs_formula);
  RUN(test_adamw_first_step_by_hand);
  RUN(test_fixture);
  RUN(test_sgd_vs_formula);
  RUN(test_decay_mask);
  RUN(test_clip);
  RUN(test_norm_large);
  RUN(test_backward_accumulates_into_block);
  RUN(test_existing_grad_and_duplicates);
  RUN(test_nonfinite_skip);
  RUN(test_thread_independence);
  RUN(test_state_round_trip);
  RUN(test_errors);
  DONE();
}
