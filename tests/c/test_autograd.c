/* test_autograd.c — the graph: accumulation, shared inputs, freeing after
 * backward, no_grad, detach, grads that are views into a flat block, the
 * memory pool's reuse, and the generator's fixed stream. */
#include "check.h"
#include "internal.h"

static const int64_t S3[] = {3};

static void test_diamond_and_accumulation(void) {
  /* y = sum(x*x + x) -> dy/dx = 2x + 1; run twice: grads accumulate */
  eng_tensor *x = T(ENG_DTYPE_F64, 1, S3, ((double[]){1, -2, 3}));
  eng_set_requires_grad(x, true);
  for (int round = 1; round <= 2; round++) {
    eng_tensor *sq = eng_mul(x, x), *s = eng_add(sq, x), *y = eng_sum(s, ENG_ALL_DIMS, false);
    CHECK(strcmp(eng_grad_fn_name(y), "sum") == 0);
    CHECK(eng_backward(y, NULL) == 0);
    eng_tensor *g = eng_grad(x);
    CHECK_CLOSE(at(g, 0), 3 * round, 0);
    CHECK_CLOSE(at(g, 1), -3 * round, 0);
    CHECK_CLOSE(at(g, 2), 7 * round, 0);
    /* the graph is freed: a second backward is an error naming the op */
    CHECK(strcmp(eng_grad_fn_name(y), "freed") == 0);
    CHECK(eng_backward(y, NULL) != 0);
    CHECK(strstr(eng_last_error(), "already freed by an earlier backward()") != NULL);
    eng_tensor_release(sq);
    eng_tensor_release(s);
    eng_tensor_release(y);
  }
  eng_tensor_release(x);
}

static void test_errors(void) {
  eng_tensor *x = T(ENG_DTYPE_F32, 1, S3, ((double[]){1, 2, 3}));
  CHECK(eng_backward(x, NULL) != 0);
  CHECK(strstr(eng_last_error(), "does not require grad") != NULL);
  eng_set_requires_grad(x, true);
  eng_tensor *y = eng_exp(x);
  CHECK(eng_backward(y, NULL) != 0);
  CHECK(strcmp(eng_last_error(), "backward: a gradient can be implied only for a scalar; the tensor is [3] "
                                 "(pass one of the same shape)") == 0);
  CHECK(eng_set_requires_grad(y, false) != 0);
  CHECK(strstr(eng_last_error(), "only leaf tensors") != NULL);
  /* an explicit grad_out of the right shape works */
  eng_tensor *go = T(ENG_DTYPE_F32, 1, S3, ((double[]){1, 0, 2}));
  CHECK(eng_backward(y, go) == 0);
  CHECK_CLOSE(at(eng_grad(x), 0), exp(1.0), 1e-5);
  CHECK_CLOSE(at(eng_grad(x), 1), 0, 0);
  CHECK_CLOSE(at(eng_grad(x), 2), 2 * exp(3.0), 1e-4);
  eng_tensor_release(go);
  eng_tensor_release(y);
  eng_tensor_release(x);
}

static void test_no_grad_and_detach(void) {
  eng_tensor *x = T(ENG_DTYPE_F32, 1, S3, ((double[]){1, 2, 3}));
  eng_set_requires_grad(x, true);
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *y = eng_mul(x, x);
  eng_set_grad_enabled(prev);
  CHECK(!eng_requires_grad(y) && eng_is_leaf(y));
  eng_tensor *d = eng_detach(x);
  CHECK(!eng_requires_grad(d));
  eng_tensor *z = eng_mul(x, d); /* d is a constant: dz/dx = d */
  eng_tensor *s = eng_sum(z, ENG_ALL_DIMS, false);
  CHECK(eng_backward(s, NULL) == 0);
  CHECK_CLOSE(at(eng_grad(x), 2), 3, 0);
  eng_tensor *ts[] = {x, y, d, z, s};
  for (int i = 0; i < 5; i++) eng_tensor_release(ts[i]);
}

static void test_grad_into_flat_block(void) {
  /* two parameters whose grads are views into one flat block */
  int64_t n6[] = {6}, n2[] = {2}, n4[] = {4};
  eng_tensor *flat = eng_zeros(ENG_DTYPE_F32, 1, n6);
  eng_tensor *a = T(ENG_DTYPE_F32, 1, n2, ((double[]){1, 2}));
  eng_tensor *b = T(ENG_DTYPE_F32, 1, n4, ((double[]){1, 2, 3, 4}));
  eng_set_requires_grad(a, true);
  eng_set_requires_grad(b, true);
  eng_tensor *ga = eng_narrow(flat, 0, 0, 2), *gb = eng_narrow(flat, 0, 2, 4);
  CHECK(eng_set_grad(a, ga) == 0 && eng_set_grad(b, gb) == 0);
  eng_tensor *sa = eng_sum(a, ENG_ALL_DIMS, false), *pb = eng_mul(b, b), *sb = eng_sum(pb, ENG_ALL_DIMS, false);
  eng_tensor *l = eng_add(sa, sb);
  CHECK(eng_backward(l, NULL) == 0);
  CHECK(eng_grad(a) == ga);
  CHECK_CLOSE(at(flat, 0), 1, 0);
  CHECK_CLOSE(at(flat, 1), 1, 0);
  CHECK_CLOSE(at(flat, 5), 8, 0);
  CHECK(eng_set_grad(a, gb) != 0); /* wrong shape */
  eng_tensor *ts[] = {flat, a, b, ga, gb, sa, pb, sb, l};
  for (int i = 0; i < 9; i++) eng_tensor_release(ts[i]);
}

static void test_pool_reuse(void) {
  int64_t shape[] = {256, 256};
  eng_tensor *w = eng_full(ENG_DTYPE_F32, 2, shape, 0.5);
  eng_set_requires_grad(w, true);
  eng_memory_stats s0, s1, s2;
  for (int step = 0; step < 3; step++) {
    if (step == 1) eng_memory_get_stats(&s0);
    eng_tensor *h = eng_tanh(w), *h2 = eng_mul(h, h), *l = eng_sum(h2, ENG_ALL_DIMS, false);
    eng_backward(l, NULL);
    eng_tensor_release(h);
    eng_tensor_release(h2);
    eng_tensor_release(l);
    if (step == 1) eng_memory_get_stats(&s1);
  }
  eng_memory_get_stats(&s2);
  /* after the first step, a step allocates nothing new from the system and
   * leaves no more memory in use than before it */
  CHECK(s2.bytes_in_use == s1.bytes_in_use);
  CHECK(s1.bytes_in_use == s0.bytes_in_use);
  CHECK(s2.reuses > s0.reuses);
  CHECK(s2.bytes_cached == s1.bytes_cached);
  eng_tensor_release(w);
}

static void test_pool_cache_bound(void) {
  /* blocks of ever larger size classes freed in turn (their sum far above
   * the peak in use): the cache stays within max(peak in use, floor) */
  eng_memory_trim();
  eng_memory_set_cache_floor(1 << 20);
  eng_memory_stats s;
  size_t total = 0;
  for (int i = 0; i < 40; i++) {
    int64_t n[] = {(int64_t)(65536 + 65536 * i)}; /* 256 KiB .. 10 MiB: distinct classes */
    eng_tensor *t = eng_empty(ENG_DTYPE_F32, 1, n);
    total += (size_t)n[0] * 4;
    eng_tensor_release(t);
  }
  eng_memory_get_stats(&s);
  size_t limit = s.peak_in_use > ((size_t)1 << 20) ? s.peak_in_use : ((size_t)1 << 20);
  CHECK(total > 2 * limit);
  CHECK(s.bytes_cached <= limit);
  CHECK(s.bytes_cached > 0);
  eng_memory_set_cache_floor((size_t)256 << 20);
  eng_memory_trim();
  eng_memory_get_stats(&s);
  CHECK(s.bytes_cached == 0);
}

static void test_rng_stream(void) {
  /* xoshiro256** seeded by splitmix64(42): values from an independent
   * Python implementation of the published algorithms */
  eng_rng *r = eng_rng_new(42);
  CHECK(eng_rng_next_u64(r) == 0x15780b2e0c2ec716ULL);
  CHECK(eng_rng_next_u64(r) == 0x6104d9866d113a7eULL);
  CHECK(eng_rng_next_u64(r) == 0xae17533239e499a1ULL);
  uint64_t st[4];
  eng_rng_get_state(r, st);
  double u1 = eng_rng_uniform(r);
  eng_rng_set_state(r, st);
  CHECK(eng_rng_uniform(r) == u1);
  /* normals: mean ~0, variance ~1 over 100k draws */
  double m = 0, v = 0;
  for (int i = 0; i < 100000; i++) {
    double z = eng_rng_normal(r);
    m += z;
    v += z * z;
  }
  m /= 100000;
  v = v / 100000 - m * m;
  CHECK(fabs(m) < 0.02);
  CHECK(fabs(v - 1) < 0.02);
  eng_rng_free(r);
}

static void test_anomaly(void) {
  /* y = sum(exp(log(x) * w)) with x[1] = -1: log makes the first NaN */
  int64_t s2[] = {2};
  eng_tensor *x = T(ENG_DTYPE_F64, 1, s2, ((double[]){2, -1}));
  eng_tensor *w = T(ENG_DTYPE_F64, 1, s2, ((double[]){1, 1}));
  eng_set_requires_grad(x, true);
  eng_anomaly_enable(true);
  CHECK(eng_anomaly_first() == NULL);
  eng_tensor *l = eng_log(x), *m = eng_mul(l, w), *e = eng_exp(m), *y = eng_sum(e, ENG_ALL_DIMS, false);
  CHECK(eng_anomaly_first() && strcmp(eng_anomaly_first(), "log") == 0);
  eng_anomaly_enable(false);
  CHECK(eng_anomaly_first() == NULL);
  /* finite forward, non-finite gradient: d sqrt(x)/dx at 0 is inf */
  eng_tensor *z = T(ENG_DTYPE_F64, 1, s2, ((double[]){0, 4}));
  eng_set_requires_grad(z, true);
  eng_anomaly_enable(true);
  eng_tensor *r = eng_sqrt(z), *s = eng_sum(r, ENG_ALL_DIMS, false);
  CHECK(eng_anomaly_first() == NULL);
  CHECK(eng_backward(s, NULL) == 0);
  CHECK(eng_anomaly_first() && strcmp(eng_anomaly_first(), "backward of sqrt") == 0);
  eng_anomaly_enable(false);
  eng_tensor *ts[] = {x, w, l, m, e, y, z, r, s};
  for (int i = 0; i < 9; i++) eng_tensor_release(ts[i]);
}

int main(void) {
  RUN(test_anomaly);
  RUN(test_diamond_and_accumulation);
  RUN(test_errors);
  RUN(test_no_grad_and_detach);
  RUN(test_grad_into_flat_block);
  RUN(test_pool_reuse);
  RUN(test_pool_cache_bound);
  RUN(test_rng_stream);
  DONE();
}
