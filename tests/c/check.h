/* check.h — the tiny harness the C tests share: CHECK macros that count
 * failures instead of stopping, float64 gradient checks, and helpers to
 * build tensors. Each test file defines test functions and lists them in
 * main through RUN(). */
#ifndef TESTS_CHECK_H
#define TESTS_CHECK_H

#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures, check_count;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    check_count++;                                                                   \
    if (!(cond)) {                                                                   \
      check_failures++;                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
    }                                                                                \
  } while (0)

#define CHECK_CLOSE(a, b, tol)                                                       \
  do {                                                                               \
    double a_ = (a), b_ = (b);                                                       \
    check_count++;                                                                   \
    if (!(fabs(a_ - b_) <= (tol)) && !(isinf(a_) && a_ == b_)) {                     \
      check_failures++;                                                              \
      fprintf(stderr, "%s:%d: %s = %.10g, expected %.10g (tol %g)\n", __FILE__,      \
              __LINE__, #a, a_, b_, (double)(tol));                                  \
    }                                                                                \
  } while (0)

/* a call expected to fail with a message containing `sub` */
#define CHECK_FAILS(expr, sub)                                                       \
  do {                                                                               \
    eng_clear_error();                                                               \
    eng_tensor *r_ = (expr);                                                         \
    check_count++;                                                                   \
    if (r_ || !strstr(eng_last_error(), (sub))) {                                    \
      check_failures++;                                                              \
      fprintf(stderr, "%s:%d: expected failure containing \"%s\", got %s: %s\n",     \
              __FILE__, __LINE__, (sub), r_ ? "success" : "failure", eng_last_error()); \
    }                                                                                \
    eng_tensor_release(r_);                                                          \
  } while (0)

/* gradient check in float64: fn(inputs, ctx) -> scalar */
#define CHECK_GRAD(fn, ctx, inputs, n)                                               \
  do {                                                                               \
    char rep_[512];                                                                  \
    int rc_ = eng_gradcheck((fn), (ctx), (inputs), (n), 1e-6, 1e-6, 1e-5, rep_,      \
                            sizeof rep_);                                            \
    check_count++;                                                                   \
    if (rc_ != 0) {                                                                  \
      check_failures++;                                                              \
      fprintf(stderr, "%s:%d: gradcheck of %s failed: %s\n", __FILE__, __LINE__, #fn, \
              rc_ < 0 ? eng_last_error() : rep_);                                    \
    }                                                                                \
  } while (0)

#define RUN(test)                                                                    \
  do {                                                                               \
    int before_ = check_failures;                                                    \
    test();                                                                          \
    printf("%s %s\n", check_failures == before_ ? "ok  " : "FAIL", #test);           \
  } while (0)

#define DONE()                                                                       \
  do {                                                                               \
    printf("%d checks, %d failed\n", check_count, check_failures);                   \
    return check_failures ? 1 : 0;                                                   \
  } while (0)

/* a float64 leaf of the given shape filled from a fixed seed, requiring grad */
static inline eng_tensor *t_randn64(uint64_t seed, int ndim, const int64_t *shape) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, ENG_DTYPE_F64, ndim, shape);
  eng_rng_free(r);
  eng_set_requires_grad(t, true);
  return t;
}

/* a tensor from literal values: T(ENG_DTYPE_F32, 2, ((int64_t[]){2, 3}), ((double[]){...})) */
#define T(dt, nd, shape, vals) eng_from_doubles((dt), (nd), (shape), (vals))

static inline double at(const eng_tensor *t, int64_t i) { return eng_tensor_get_flat(t, i); }

#endif
