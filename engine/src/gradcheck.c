/* gradcheck.c — compare the analytic gradient of a scalar function with
 * central finite differences. Meant for float64 inputs; with float32 the
 * tolerances must be loose. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int eval(eng_scalar_fn fn, void *ctx, eng_tensor **inputs, double *out) {
  eng_tensor *y = fn(inputs, ctx);
  if (!y) return -1;
  if (y->numel != 1) {
    eng_errorf("gradcheck: the function must return a scalar, got %s", shp(y));
    eng_tensor_release(y);
    return -1;
  }
  *out = eng_tensor_get_flat(y, 0);
  eng_tensor_release(y);
  return 0;
}

static int64_t offset_of(const eng_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (i % t->shape[d]) * t->stride[d];
    i /= t->shape[d];
  }
  return off;
}

int eng_gradcheck(eng_scalar_fn fn, void *ctx, eng_tensor **inputs, int n, double eps, double atol,
                  double rtol, char *report, size_t report_len) {
  if (report && report_len) report[0] = 0;
  for (int i = 0; i < n; i++) {
    if (inputs[i]->grad_fn) return eng_errorf_status("gradcheck: input %d is not a leaf", i + 1);
    eng_set_grad(inputs[i], NULL);
  }
  eng_tensor *y = fn(inputs, ctx);
  if (!y) return -1;
  if (y->numel != 1) {
    eng_errorf("gradcheck: the function must return a scalar, got %s", shp(y));
    eng_tensor_release(y);
    return -1;
  }
  int rc = eng_backward(y, NULL);
  eng_tensor_release(y);
  if (rc) return -1;
  bool prev = eng_set_grad_enabled(false);
  double worst = 0;
  int status = 0;
  for (int i = 0; i < n && status >= 0; i++) {
    eng_tensor *x = inputs[i];
    if (!x->requires_grad) continue;
    for (int64_t j = 0; j < x->numel; j++) {
      int64_t off = offset_of(x, j);
      double orig = eng_tensor_get_flat(x, j), fp, fm;
      bool f64 = x->dtype == ENG_DTYPE_F64;
      double *pd = f64 ? (double *)tensor_ptr(x) + off : NULL;
      float *pf = f64 ? NULL : (float *)tensor_ptr(x) + off;
      if (f64) *pd = orig + eps; else *pf = (float)(orig + eps);
      int e1 = eval(fn, ctx, inputs, &fp);
      if (f64) *pd = orig - eps; else *pf = (float)(orig - eps);
      int e2 = eval(fn, ctx, inputs, &fm);
      if (f64) *pd = orig; else *pf = (float)orig;
      if (e1 || e2) {
        status = -1;
        break;
      }
      double num = (fp - fm) / (2 * eps);
      double ana = x->grad ? eng_tensor_get_flat(x->grad, j) : 0.0;
      double err = fabs(num - ana), tol = atol + rtol * fabs(num);
      bool bad = !(err <= tol) && !(isnan(num) && isnan(ana));
      if (bad && (status == 0 || err / tol > worst)) {
        worst = err / tol;
        status = 1;
        if (report)
          snprintf(report, report_len, "input %d %s element %lld: analytic %.10g, numeric %.10g", i + 1,
                   shp(x), (long long)j, ana, num);
      }
    }
  }
  eng_set_grad_enabled(prev);
  return status;
}
