/* test_tensor.c — creation, shape checks, copies through the strided
 * iterator (broadcast, views, threaded sizes), axpby_, dtype conversion. */
#include "check.h"
#include "internal.h"

static void test_creation(void) {
  int64_t s[] = {2, 3};
  eng_tensor *z = eng_zeros(ENG_DTYPE_F32, 2, s), *f = eng_full(ENG_DTYPE_F64, 2, s, 2.5);
  CHECK(eng_tensor_numel(z) == 6 && eng_tensor_is_contiguous(z));
  CHECK_CLOSE(at(z, 5), 0, 0);
  CHECK_CLOSE(at(f, 4), 2.5, 0);
  eng_tensor *r = eng_arange(ENG_DTYPE_F32, 4);
  CHECK_CLOSE(at(r, 3), 3, 0);
  int64_t bad[] = {2, -1};
  CHECK_FAILS(eng_zeros(ENG_DTYPE_F32, 2, bad), "tensor: negative size -1 in shape [2,-1]");
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  CHECK_FAILS(eng_zeros(ENG_DTYPE_F32, 9, nine), "tensor: 9 dims requested; at most 8 are supported");
  char buf[32];
  CHECK(strcmp(eng_shape_str(z, buf, sizeof buf), "[2,3]") == 0);
  eng_tensor *sc = eng_full(ENG_DTYPE_F32, 0, NULL, 7);
  CHECK(eng_tensor_ndim(sc) == 0 && eng_tensor_numel(sc) == 1);
  CHECK_CLOSE(at(sc, 0), 7, 0);
  eng_tensor *ts[] = {z, f, r, sc};
  for (int i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

static void test_strided_copy(void) {
  /* a transposed view of a (3,4) tensor, made by hand, copied out */
  int64_t s34[] = {3, 4};
  double v[12];
  for (int i = 0; i < 12; i++) v[i] = i;
  eng_tensor *x = T(ENG_DTYPE_F32, 2, s34, v);
  int64_t ts_shape[] = {4, 3}, ts_stride[] = {1, 4};
  eng_tensor *xt = tensor_view(x, 2, ts_shape, ts_stride, 0);
  CHECK(!eng_tensor_is_contiguous(xt));
  eng_tensor *c = eng_contiguous(xt);
  CHECK(eng_tensor_is_contiguous(c));
  /* c[i][j] = x[j][i] = 4j + i */
  CHECK_CLOSE(at(c, 1), 4, 0);  /* (0,1) */
  CHECK_CLOSE(at(c, 5), 9, 0);  /* (1,2) */
  CHECK_CLOSE(at(c, 11), 11, 0);
  /* broadcast copy of a row into a (3,4) destination */
  int64_t s4[] = {4};
  eng_tensor *row = T(ENG_DTYPE_F64, 1, s4, ((double[]){1, 2, 3, 4}));
  CHECK(eng_copy_(x, row) == 0); /* float64 into float32 */
  CHECK_CLOSE(at(x, 9), 2, 0);
  int64_t s5[] = {5};
  eng_tensor *bad = eng_zeros(ENG_DTYPE_F32, 1, s5);
  CHECK(eng_copy_(x, bad) != 0);
  CHECK(strcmp(eng_last_error(), "copy_: shapes [3,4] and [5] do not broadcast (dim 2: 4 vs 5)") == 0);
  eng_tensor *ts[] = {x, xt, c, row, bad};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
}

static void test_threaded_strided(void) {
  /* large enough for the threaded path; every element checked */
  int64_t s[] = {512, 300};
  eng_rng *r = eng_rng_new(3);
  eng_tensor *x = eng_randn(r, ENG_DTYPE_F32, 2, s);
  int64_t ts_shape[] = {300, 512}, ts_stride[] = {1, 300};
  eng_tensor *xt = tensor_view(x, 2, ts_shape, ts_stride, 0);
  eng_tensor *c = eng_contiguous(xt);
  int bad = 0;
  for (int64_t i = 0; i < 300; i++)
    for (int64_t j = 0; j < 512; j++)
      if (at(c, i * 512 + j) != at(x, j * 300 + i)) bad++;
  CHECK(bad == 0);
  eng_tensor *y = eng_zeros(ENG_DTYPE_F32, 2, s);
  CHECK(eng_axpby_(y, 2.0, x, 0.5) == 0);
  CHECK(eng_axpby_(y, -1.0, x, 1.0) == 0); /* y = x */
  bad = 0;
  for (int64_t i = 0; i < 512 * 300; i++)
    if (at(y, i) != at(x, i)) bad++;
  CHECK(bad == 0);
  eng_rng_free(r);
  eng_tensor *ts[] = {x, xt, c, y};
  for (int i = 0; i < 4; i++) eng_tensor_release(ts[i]);
}

static eng_tensor *to32_fn(eng_tensor **in, void *ctx) {
  /* float64 -> float32 -> float64 must pass the gradient through */
  eng_tensor *a = eng_to_dtype(in[0], ENG_DTYPE_F32);
  eng_tensor *b = eng_to_dtype(a, ENG_DTYPE_F64);
  eng_tensor *c = eng_mul(b, in[0]);
  eng_tensor *s = eng_sum(c, ENG_ALL_DIMS, false);
  eng_tensor_release(a);
  eng_tensor_release(b);
  eng_tensor_release(c);
  return s;
}

static void test_dtype_conversion(void) {
  int64_t s[] = {2, 2};
  eng_tensor *x = t_randn64(9, 2, s);
  eng_tensor *in[] = {x};
  char rep[256];
  /* the float32 round trip loses precision: compare loosely */
  int rc = eng_gradcheck(to32_fn, NULL, in, 1, 1e-3, 1e-4, 1e-3, rep, sizeof rep);
  if (rc) fprintf(stderr, "%s\n", rep);
  CHECK(rc == 0);
  eng_tensor_release(x);
}

static void test_set_data(void) {
  /* two parameters moved into one flat block keep their identity and grads */
  int64_t s2[] = {2}, s3[] = {3}, s5[] = {5};
  eng_tensor *a = T(ENG_DTYPE_F32, 1, s2, ((double[]){1, 2}));
  eng_tensor *b = T(ENG_DTYPE_F32, 1, s3, ((double[]){3, 4, 5}));
  eng_set_requires_grad(a, true);
  eng_tensor *flat = eng_zeros(ENG_DTYPE_F32, 1, s5);
  eng_tensor *va = eng_narrow(flat, 0, 0, 2), *vb = eng_narrow(flat, 0, 2, 3);
  eng_copy_(va, a);
  eng_copy_(vb, b);
  CHECK(eng_tensor_set_data(a, va) == 0 && eng_tensor_set_data(b, vb) == 0);
  CHECK(eng_requires_grad(a));
  eng_fill_(flat, 7); /* writes through the block reach the parameters */
  CHECK_CLOSE(at(a, 1), 7, 0);
  CHECK_CLOSE(at(b, 2), 7, 0);
  CHECK(eng_tensor_set_data(a, vb) != 0);
  CHECK(strcmp(eng_last_error(), "set_data: tensor is float32 [2] but the new data is float32 [3]") == 0);
  eng_tensor *e = eng_exp(a);
  CHECK(eng_tensor_set_data(e, va) != 0);
  CHECK(strstr(eng_last_error(), "only a leaf tensor") != NULL);
  eng_tensor *ts[] = {a, b, flat, va, vb, e};
  for (int i = 0; i < 6; i++) eng_tensor_release(ts[i]);
}

static void test_hash(void) {
  int64_t s23[] = {2, 3}, s32[] = {3, 2};
  double v[] = {1, 2, 3, 4, 5, 6};
  eng_tensor *a = T(ENG_DTYPE_F32, 2, s23, v), *b = T(ENG_DTYPE_F32, 2, s23, v);
  eng_tensor *c = T(ENG_DTYPE_F32, 2, s32, v), *d = T(ENG_DTYPE_F64, 2, s23, v);
  CHECK(eng_tensor_hash(a, 0) == eng_tensor_hash(b, 0));
  CHECK(eng_tensor_hash(a, 0) != eng_tensor_hash(a, 1));
  CHECK(eng_tensor_hash(a, 0) != eng_tensor_hash(c, 0)); /* same bytes, other shape */
  CHECK(eng_tensor_hash(a, 0) != eng_tensor_hash(d, 0));
  eng_fill_(b, 1);
  CHECK(eng_tensor_hash(a, 0) != eng_tensor_hash(b, 0));
  /* a transposed view hashes as its contiguous copy */
  eng_tensor *ct = eng_transpose(c, 0, 1), *cc = eng_contiguous(ct);
  CHECK(eng_tensor_hash(ct, 5) == eng_tensor_hash(cc, 5));
  eng_tensor *ts[] = {a, b, c, d, ct, cc};
  for (int i = 0; i < 6; i++) eng_tensor_release(ts[i]);
}

int main(void) {
  RUN(test_hash);
  RUN(test_set_data);
  RUN(test_creation);
  RUN(test_strided_copy);
  RUN(test_threaded_strided);
  RUN(test_dtype_conversion);
  DONE();
}
