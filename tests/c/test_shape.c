/* test_shape.c — reshape, transpose, permute, narrow, expand, cat, gather:
 * values, which results are views, exact error messages, backwards fed
 * non-contiguous gradients, and float64 gradient checks (strided inputs,
 * repeated gather indices, cats of more inputs than a graph node holds). */
#include "check.h"
#include "internal.h"

static const int64_t S23[] = {2, 3}, S34[] = {3, 4};

static eng_tensor *weighted_sum(eng_tensor *y) {
  eng_tensor *w = eng_arange(eng_tensor_dtype(y), eng_tensor_numel(y));
  eng_tensor *w2 = eng_reshape(w, eng_tensor_ndim(y), eng_tensor_shape(y));
  eng_tensor *one = eng_scalar_like(y, 1.0);
  eng_tensor *w3 = eng_add(w2, one);
  eng_tensor *p = eng_mul(y, w3);
  eng_tensor *s = eng_sum(p, ENG_ALL_DIMS, false);
  eng_tensor *ts[] = {w, w2, one, w3, p};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
  return s;
}

static eng_tensor *iota(eng_dtype dt, int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  eng_tensor *a = eng_arange(dt, n);
  eng_tensor *r = eng_reshape(a, ndim, shape);
  eng_tensor_release(a);
  return r;
}

static bool shape_is(const eng_tensor *t, int ndim, const int64_t *shape) {
  if (eng_tensor_ndim(t) != ndim) return false;
  for (int i = 0; i < ndim; i++)
    if (eng_tensor_shape(t)[i] != shape[i]) return false;
  return true;
}

static bool same_storage(eng_tensor *a, eng_tensor *b) { return a->storage == b->storage; }

/* ---- forward values and errors --------------------------------------------- */

static void test_reshape(void) {
  eng_tensor *x = iota(ENG_DTYPE_F32, 2, S23);
  eng_tensor *r = eng_reshape(x, 3, ((int64_t[]){3, 1, -1}));
  CHECK(shape_is(r, 3, ((int64_t[]){3, 1, 2})));
  CHECK(same_storage(r, x) && eng_tensor_is_contiguous(r));
  CHECK(at(r, 5) == 5);
  eng_tensor *s = eng_reshape(x, 0, NULL);
  CHECK(s == NULL);
  /* a transposed input cannot be viewed flat: copied, in logical order */
  eng_tensor *xt = eng_transpose(x, 0, 1);
  eng_tensor *f = eng_reshape(xt, 1, ((int64_t[]){6}));
  CHECK(!same_storage(f, x));
  const double want[] = {0, 3, 1, 4, 2, 5};
  for (int k = 0; k < 6; k++) CHECK(at(f, k) == want[k]);
  /* but splitting one of its dims is a view */
  eng_tensor *big = iota(ENG_DTYPE_F32, 2, ((int64_t[]){4, 6}));
  eng_tensor *bt = eng_transpose(big, 0, 1); /* (6,4) strides (1,6) */
  eng_tensor *sp = eng_reshape(bt, 3, ((int64_t[]){2, 3, 4}));
  CHECK(same_storage(sp, big));
  CHECK(at(sp, 4) == 1 && at(sp, 13) == 9); /* sp[1][0][1] = bt[3][1] = big[1][3] */
  /* a narrowed contiguous block flattens as a view */
  eng_tensor *nr = eng_narrow(big, 0, 1, 2);
  eng_tensor *nf = eng_reshape(nr, 1, ((int64_t[]){-1}));
  CHECK(same_storage(nf, big) && at(nf, 0) == 6 && at(nf, 11) == 17);
  CHECK_FAILS(eng_reshape(x, 2, ((int64_t[]){4, 2})), "reshape: cannot view [2,3] (6 elements) as [4,2] (8 elements)");
  CHECK_FAILS(eng_reshape(x, 2, ((int64_t[]){4, -1})), "reshape: cannot view [2,3] (6 elements) as [4,-1]");
  CHECK_FAILS(eng_reshape(x, 2, ((int64_t[]){-1, -1})), "reshape: only one size may be -1, got [-1,-1]");
  CHECK_FAILS(eng_reshape(x, 2, ((int64_t[]){-2, -3})), "reshape: negative size -2 in [-2,-3]");
  eng_tensor *z = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){0, 3}));
  CHECK_FAILS(eng_reshape(z, 2, ((int64_t[]){0, -1})), "reshape: cannot view [0,3] (0 elements) as [0,-1]");
  eng_tensor *ts[] = {x, r, xt, f, big, bt, sp, nr, nf, z};
  for (size_t i = 0; i < 10; i++) eng_tensor_release(ts[i]);
}

static void test_transpose_permute(void) {
  eng_tensor *x = iota(ENG_DTYPE_F32, 3, ((int64_t[]){2, 3, 4}));
  eng_tensor *t = eng_transpose(x, 0, -1);
  CHECK(shape_is(t, 3, ((int64_t[]){4, 3, 2})) && same_storage(t, x));
  CHECK(at(t, 1) == 12); /* t[0][0][1] = x[1][0][0] */
  int dims[] = {1, 2, 0};
  eng_tensor *p = eng_permute(x, dims);
  CHECK(shape_is(p, 3, ((int64_t[]){3, 4, 2})));
  CHECK(at(p, 3) == 13); /* p[0][1][1] = x[1][0][1] */
  CHECK_FAILS(eng_transpose(x, 0, 3), "transpose: dim 4 is out of range for a tensor of shape [2,3,4]");
  CHECK_FAILS(eng_permute(x, ((int[]){0, 2, -1})), "permute: dim 3 appears twice (tensor [2,3,4])");
  eng_tensor *ts[] = {x, t, p};
  for (size_t i = 0; i < 3; i++) eng_tensor_release(ts[i]);
}

static void test_narrow_expand(void) {
  eng_tensor *x = iota(ENG_DTYPE_F32, 2, S34);
  eng_tensor *n = eng_narrow(x, 1, 1, 2);
  CHECK(shape_is(n, 2, ((int64_t[]){3, 2})) && same_storage(n, x));
  CHECK(at(n, 0) == 1 && at(n, 5) == 10);
  eng_tensor *e0 = eng_narrow(x, 0, 3, 0);
  CHECK(e0 && eng_tensor_numel(e0) == 0);
  CHECK_FAILS(eng_narrow(x, 1, 3, 2), "narrow: start 4 + length 2 runs past the end of dim 2 (size 4) of [3,4]");
  CHECK_FAILS(eng_narrow(x, 0, -1, 1), "narrow: start 0 is outside dim 1 (size 3) of [3,4]");
  CHECK_FAILS(eng_narrow(x, 0, 0, -1), "narrow: length -1 is negative");
  CHECK_FAILS(eng_narrow(x, 2, 0, 1), "narrow: dim 3 is out of range");
  eng_tensor *c = T(ENG_DTYPE_F32, 2, ((int64_t[]){3, 1}), ((double[]){1, 2, 3}));
  eng_tensor *e = eng_expand(c, 3, ((int64_t[]){2, -1, 4}));
  CHECK(shape_is(e, 3, ((int64_t[]){2, 3, 4})) && same_storage(e, c));
  CHECK(eng_tensor_strides(e)[0] == 0 && eng_tensor_strides(e)[2] == 0);
  CHECK(at(e, 0) == 1 && at(e, 7) == 2 && at(e, 23) == 3);
  CHECK_FAILS(eng_expand(c, 2, ((int64_t[]){4, 4})), "expand: cannot expand [3,1] to [4,4] (dim 1: 3 vs 4)");
  CHECK_FAILS(eng_expand(c, 1, ((int64_t[]){3})), "expand: cannot expand [3,1] to [3] (fewer dims)");
  eng_tensor *ts[] = {x, n, e0, c, e};
  for (size_t i = 0; i < 5; i++) eng_tensor_release(ts[i]);
}

static void test_cat(void) {
  eng_tensor *a = iota(ENG_DTYPE_F32, 2, S23);
  eng_tensor *b = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 1}), ((double[]){-1, -2}));
  eng_tensor *bt = eng_transpose(a, 0, 1); /* (3,2), strided */
  eng_tensor *c1 = eng_cat((eng_tensor *[]){a, b}, 2, -1);
  CHECK(shape_is(c1, 2, ((int64_t[]){2, 4})));
  const double w1[] = {0, 1, 2, -1, 3, 4, 5, -2};
  for (int k = 0; k < 8; k++) CHECK(at(c1, k) == w1[k]);
  eng_tensor *a2 = eng_reshape(a, 2, ((int64_t[]){3, 2}));
  eng_tensor *c0 = eng_cat((eng_tensor *[]){bt, a2}, 2, 0);
  const double w0[] = {0, 3, 1, 4, 2, 5, 0, 1, 2, 3, 4, 5};
  CHECK(shape_is(c0, 2, ((int64_t[]){6, 2})));
  for (int k = 0; k < 12; k++) CHECK(at(c0, k) == w0[k]);
  eng_tensor *one = eng_cat(&a, 1, 0);
  CHECK(shape_is(one, 2, S23) && at(one, 4) == 4);
  eng_tensor *wrong = T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 4}), ((double[]){0, 0, 0, 0, 0, 0, 0, 0}));
  CHECK_FAILS(eng_cat((eng_tensor *[]){a, wrong}, 2, 0), "cat: tensor 2 is [2,4] but tensor 1 is [2,3] (only dim 1 may differ)");
  eng_tensor *a64 = eng_to_dtype(a, ENG_DTYPE_F64);
  CHECK_FAILS(eng_cat((eng_tensor *[]){a, a, a64}, 3, 1), "cat: tensor 3 is float64 but tensor 1 is float32");
  CHECK_FAILS(eng_cat(NULL, 0, 0), "cat: no tensors given");
  eng_tensor *sc = eng_scalar_like(a, 1);
  CHECK_FAILS(eng_cat(&sc, 1, 0), "cat: tensor 1 is a scalar (0-dim); cat needs at least 1 dim");
  CHECK_FAILS(eng_cat((eng_tensor *[]){a, b}, 2, 2), "cat: dim 3 is out of range");
  eng_tensor *ts[] = {a, b, bt, c1, a2, c0, one, wrong, a64, sc};
  for (size_t i = 0; i < 10; i++) eng_tensor_release(ts[i]);
}

static void test_gather(void) {
  eng_tensor *x = iota(ENG_DTYPE_F32, 2, S34); /* [[0..3],[4..7],[8..11]] */
  eng_tensor *i1 = T(ENG_DTYPE_F64, 2, ((int64_t[]){2, 3}), ((double[]){3, 0, 3, 1, 1, 2}));
  eng_tensor *g1 = eng_gather(x, 1, i1, 0);
  CHECK(shape_is(g1, 2, S23) && eng_tensor_dtype(g1) == ENG_DTYPE_F32);
  const double w1[] = {3, 0, 3, 5, 5, 6};
  for (int k = 0; k < 6; k++) CHECK(at(g1, k) == w1[k]);
  /* dim 0 with 1-based positions (Lua's), index narrower than x */
  eng_tensor *i0 = T(ENG_DTYPE_F32, 2, ((int64_t[]){1, 2}), ((double[]){3, 1}));
  eng_tensor *g0 = eng_gather(x, 0, i0, 1);
  CHECK(at(g0, 0) == 8 && at(g0, 1) == 1);
  /* a transposed x */
  eng_tensor *xt = eng_transpose(x, 0, 1); /* (4,3) */
  eng_tensor *it = T(ENG_DTYPE_F32, 2, ((int64_t[]){4, 1}), ((double[]){2, 0, 1, 2}));
  eng_tensor *gt = eng_gather(xt, 1, it, 0);
  const double wt[] = {8, 1, 6, 11};
  for (int k = 0; k < 4; k++) CHECK(at(gt, k) == wt[k]);
  eng_tensor *bad = T(ENG_DTYPE_F32, 2, ((int64_t[]){1, 1}), ((double[]){4}));
  CHECK_FAILS(eng_gather(x, 1, bad, 0), "gather: index 4 at [1,1] is out of range [0, 4)");
  eng_tensor *zero = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){1, 1}));
  CHECK_FAILS(eng_gather(x, 1, zero, 1), "gather: index 0 at [1,1] is out of range [1, 5)");
  eng_tensor *frac = T(ENG_DTYPE_F32, 2, ((int64_t[]){1, 1}), ((double[]){1.5}));
  CHECK_FAILS(eng_gather(x, 1, frac, 0), "gather: index 1.5 at [1,1] is not an integer");
  eng_tensor *tall = eng_zeros(ENG_DTYPE_F32, 2, ((int64_t[]){4, 1}));
  CHECK_FAILS(eng_gather(x, 1, tall, 0),
              "gather: index [4,1] is larger than x [3,4] at dim 1 (only dim 2, the gathered one, may be larger)");
  eng_tensor *flat = eng_zeros(ENG_DTYPE_F32, 1, ((int64_t[]){2}));
  CHECK_FAILS(eng_gather(x, 1, flat, 0), "gather: index is [2] but x is [3,4] (they need the same number of dims)");
  eng_tensor *ts[] = {x, i1, g1, i0, g0, xt, it, gt, bad, zero, frac, tall, flat};
  for (size_t i = 0; i < 13; i++) eng_tensor_release(ts[i]);
}

/* a (B*T, V) token gather big enough to run threaded, forward and backward */
static void test_gather_threaded(void) {
  const int64_t n = 40000, v = 50;
  eng_tensor *x = iota(ENG_DTYPE_F32, 2, ((int64_t[]){n, v}));
  eng_tensor *idx = eng_empty(ENG_DTYPE_F32, 2, ((int64_t[]){n, 2}));
  float *ip = eng_tensor_data(idx);
  for (int64_t r = 0; r < n; r++) {
    ip[2 * r] = (float)((r * 7) % v);
    ip[2 * r + 1] = (float)((r * 7) % v); /* repeated: the gradient adds */
  }
  eng_set_requires_grad(x, true);
  eng_tensor *g = eng_gather(x, 1, idx, 0);
  bool ok = true;
  for (int64_t r = 0; r < n && ok; r++) ok = at(g, 2 * r) == (float)(r * v + (r * 7) % v);
  CHECK(ok);
  eng_tensor *s = eng_sum(g, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s, NULL) == 0);
  const float *gp = eng_tensor_data(eng_grad(x));
  ok = true;
  for (int64_t r = 0; r < n && ok; r++)
    for (int64_t c = 0; c < v && ok; c++) ok = gp[r * v + c] == (c == (r * 7) % v ? 2.0f : 0.0f);
  CHECK(ok);
  eng_tensor *ts[] = {x, idx, g, s};
  for (size_t i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

/* ---- backwards fed a non-contiguous gradient ------------------------------- */

/* each op's output is (4,3); backward with g = a transposed view holding
 * G[a][b] = 10 a + b, and the input gradient checked element by element */
static void test_strided_gradients(void) {
  eng_tensor *g0 = eng_empty(ENG_DTYPE_F64, 2, S34);
  double *gp = eng_tensor_data(g0);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 4; j++) gp[i * 4 + j] = 10 * j + i; /* g0^T [j][i] = 10 j + i */
  eng_tensor *g = eng_transpose(g0, 0, 1);                 /* (4,3), G[a][b] = 10a + b */
  /* transpose: dx[i][j] = G[j][i] */
  eng_tensor *x = iota(ENG_DTYPE_F64, 2, S34);
  eng_set_requires_grad(x, true);
  eng_tensor *y = eng_transpose(x, 0, 1);
  CHECK(eng_backward(y, g) == 0);
  bool ok = true;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 4; j++) ok &= at(eng_grad(x), i * 4 + j) == 10 * j + i;
  CHECK(ok && eng_tensor_is_contiguous(eng_grad(x)));
  /* reshape (3,4) -> (4,3): dx flat k = G flat k */
  eng_set_grad(x, NULL);
  eng_tensor *r = eng_reshape(x, 2, ((int64_t[]){4, 3}));
  CHECK(eng_backward(r, g) == 0);
  ok = true;
  for (int k = 0; k < 12; k++) ok &= at(eng_grad(x), k) == 10 * (k / 3) + k % 3;
  CHECK(ok);
  /* narrow (5,3) rows 1..4 -> (4,3) */
  eng_tensor *x5 = iota(ENG_DTYPE_F64, 2, ((int64_t[]){5, 3}));
  eng_set_requires_grad(x5, true);
  eng_tensor *n = eng_narrow(x5, 0, 1, 4);
  CHECK(eng_backward(n, g) == 0);
  ok = true;
  for (int k = 0; k < 15; k++) ok &= at(eng_grad(x5), k) == (k < 3 ? 0 : 10 * (k / 3 - 1) + k % 3);
  CHECK(ok);
  /* expand (1,3) -> (4,3): dx[b] = sum_a G[a][b] */
  eng_tensor *x1 = iota(ENG_DTYPE_F64, 2, ((int64_t[]){1, 3}));
  eng_set_requires_grad(x1, true);
  eng_tensor *e = eng_expand(x1, 2, ((int64_t[]){4, 3}));
  CHECK(eng_backward(e, g) == 0);
  for (int b = 0; b < 3; b++) CHECK(at(eng_grad(x1), b) == 60 + 4 * b);
  /* cat of (1,3) and (3,3) along dim 0 */
  eng_tensor *xa = iota(ENG_DTYPE_F64, 2, ((int64_t[]){1, 3})), *xb = iota(ENG_DTYPE_F64, 2, ((int64_t[]){3, 3}));
  eng_set_requires_grad(xa, true);
  eng_set_requires_grad(xb, true);
  eng_tensor *c = eng_cat((eng_tensor *[]){xa, xb}, 2, 0);
  CHECK(eng_backward(c, g) == 0);
  ok = at(eng_grad(xa), 2) == 2;
  for (int k = 0; k < 9; k++) ok &= at(eng_grad(xb), k) == 10 * (k / 3 + 1) + k % 3;
  CHECK(ok);
  /* gather along dim 1 of (4,5) with index (4,3) = {4, 0, 4} per row */
  eng_tensor *xg = iota(ENG_DTYPE_F64, 2, ((int64_t[]){4, 5}));
  eng_set_requires_grad(xg, true);
  eng_tensor *ig = T(ENG_DTYPE_F32, 2, ((int64_t[]){4, 3}), ((double[]){4, 0, 4, 4, 0, 4, 4, 0, 4, 4, 0, 4}));
  eng_tensor *ga = eng_gather(xg, 1, ig, 0);
  CHECK(eng_backward(ga, g) == 0);
  ok = true;
  for (int a = 0; a < 4; a++) {
    ok &= at(eng_grad(xg), a * 5 + 0) == 10 * a + 1;
    ok &= at(eng_grad(xg), a * 5 + 4) == 2 * (10 * a) + 2;
    ok &= at(eng_grad(xg), a * 5 + 2) == 0;
  }
  CHECK(ok);
  eng_tensor *ts[] = {g0, g, x, y, r, x5, n, x1, e, xa, xb, c, xg, ig, ga};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) eng_tensor_release(ts[i]);
}

/* ---- gradient checks ------------------------------------------------------- */

static eng_tensor *reshape_fn(eng_tensor **in, void *ctx) {
  eng_tensor *t = eng_transpose(in[0], 0, 1); /* (4,3) strided: reshape copies */
  eng_tensor *r = eng_reshape(t, 3, ((int64_t[]){2, -1, 3}));
  eng_tensor *s = weighted_sum(r);
  eng_tensor_release(t);
  eng_tensor_release(r);
  return s;
}
static eng_tensor *permute_fn(eng_tensor **in, void *ctx) {
  eng_tensor *p = eng_permute(in[0], ((int[]){2, 0, 1}));
  eng_tensor *s = weighted_sum(p);
  eng_tensor_release(p);
  return s;
}
static eng_tensor *narrow_fn(eng_tensor **in, void *ctx) {
  eng_tensor *t = eng_transpose(in[0], 0, 1);
  eng_tensor *n = eng_narrow(t, 1, 1, 2);
  eng_tensor *s = weighted_sum(n);
  eng_tensor_release(t);
  eng_tensor_release(n);
  return s;
}
static eng_tensor *expand_fn(eng_tensor **in, void *ctx) {
  eng_tensor *e = eng_expand(in[0], 3, ((int64_t[]){2, 3, 4}));
  eng_tensor *s = weighted_sum(e);
  eng_tensor_release(e);
  return s;
}
static eng_tensor *cat_fn(eng_tensor **in, void *ctx) {
  int n = *(int *)ctx;
  eng_tensor *c = eng_cat(in, n, 1);
  if (!c) return NULL;
  eng_tensor *s = weighted_sum(c);
  eng_tensor_release(c);
  return s;
}
static eng_tensor *gather_fn(eng_tensor **in, void *ctx) {
  eng_tensor *t = eng_transpose(in[0], 0, 1); /* (4,3) */
  eng_tensor *g = eng_gather(t, 0, ctx, 1);
  eng_tensor *s = weighted_sum(g);
  eng_tensor_release(t);
  eng_tensor_release(g);
  return s;
}

static void test_gradients(void) {
  eng_tensor *x = t_randn64(1, 2, S34);
  CHECK_GRAD(reshape_fn, NULL, &x, 1);
  CHECK_GRAD(narrow_fn, NULL, &x, 1);
  eng_tensor *x3 = t_randn64(2, 3, ((int64_t[]){2, 3, 4}));
  CHECK_GRAD(permute_fn, NULL, &x3, 1);
  eng_tensor *xe = t_randn64(3, 2, ((int64_t[]){3, 1}));
  CHECK_GRAD(expand_fn, NULL, &xe, 1);
  /* two inputs, and six (more than a graph node holds: a cat of cats) */
  eng_tensor *cs[6];
  for (int i = 0; i < 6; i++) cs[i] = t_randn64(10 + (uint64_t)i, 2, ((int64_t[]){2, 1 + i % 3}));
  int two = 2, six = 6;
  CHECK_GRAD(cat_fn, &two, cs, 2);
  CHECK_GRAD(cat_fn, &six, cs, 6);
  eng_set_requires_grad(cs[3], false); /* one input without grad */
  CHECK_GRAD(cat_fn, &six, cs, 6);
  CHECK(eng_grad(cs[3]) == NULL);
  /* repeated 1-based indices along dim 0 of a transposed x */
  eng_tensor *idx = T(ENG_DTYPE_F64, 2, ((int64_t[]){5, 2}), ((double[]){1, 3, 4, 3, 1, 3, 2, 2, 4, 1}));
  CHECK_GRAD(gather_fn, idx, &x, 1);
  eng_tensor_release(x);
  eng_tensor_release(x3);
  eng_tensor_release(xe);
  eng_tensor_release(idx);
  for (int i = 0; i < 6; i++) eng_tensor_release(cs[i]);
}

int main(void) {
  RUN(test_reshape);
  RUN(test_transpose_permute);
  RUN(test_narrow_expand);
  RUN(test_cat);
  RUN(test_gather);
  RUN(test_gather_threaded);
  RUN(test_strided_gradients);
  RUN(test_gradients);
  DONE();
}
