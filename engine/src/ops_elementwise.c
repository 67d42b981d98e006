/* ops_elementwise.c — broadcasting binary ops (+ - * / ^ maximum minimum),
 * the unary math ops, clamp and where; each backward beside its forward.
 * The kernels are written once as expressions and instantiated for float
 * and double; <tgmath.h> picks expf or exp by type. */
#include "internal.h"

#include <string.h>
#include <tgmath.h>

#define GELU_C 0.7978845608028654 /* sqrt(2/pi) */
#define GELU_K 0.044715

/* exp for float32 in a form the compiler vectorises (libm's expf is a call
 * per element): 2^n p(r) with n = round(x / ln 2), r = x - n ln 2 split in
 * two parts, p the degree-6 Taylor polynomial (|r| <= ln2/2: within ~2 ulp
 * of expf). x is clamped to the range where the result is a normal float. */
static inline float exp_f32_vec(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = rintf(x * 1.4426950408889634f);
  float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666668e-2f +
            r * (8.3333338e-3f + r * 1.3888889e-3f)))));
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
/* tanh(u) = sign(u) (1 - 2 / (exp(2|u|) + 1)); absolute error < 1e-7; 1
 * past |u| = 9.1, where tanh rounds to 1 in float32 */
static inline float tanh_f32_vec(float u) {
  float a = fabsf(u);
  float t = a > 9.1f ? 1.0f : 1.0f - 2.0f / (exp_f32_vec(2.0f * (a > 9.1f ? 9.1f : a)) + 1.0f);
  return u < 0 ? -t : t;
}
static inline double tanh_f64(double u) { return tanh(u); }
/* the tanh of the GELU and SiLU kernels: vectorised for float, libm's for double */
#define TANH_VEC(u) _Generic((u), float: tanh_f32_vec, default: tanh_f64)(u)

/* ---- kernel generators ----------------------------------------------------
 * Operands: p[0] out, p[1] a, p[2] b (binary) / p[1] x (unary). */
#define BIN_KERNEL(NAME, TY, EXPR)                                              \
  static void NAME(void *ctx, int64_t n, char **p, const int64_t *s) {         \
    typedef TY T;                                                              \
    (void)ctx;                                                                 \
    T *o = (T *)p[0];                                                          \
    const T *A = (const T *)p[1], *B = (const T *)p[2];                        \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1) {                                 \
      for (int64_t i = 0; i < n; i++) { T x = A[i], y = B[i]; (void)x; (void)y; o[i] = (EXPR); } \
    } else if (s[0] == 1 && s[1] == 1 && s[2] == 0) {                          \
      T y = B[0];                                                              \
      (void)y;                                                                 \
      for (int64_t i = 0; i < n; i++) { T x = A[i]; (void)x; o[i] = (EXPR); }           \
    } else if (s[0] == 1 && s[1] == 0 && s[2] == 1) {                          \
      T x = A[0];                                                              \
      (void)x;                                                                 \
      for (int64_t i = 0; i < n; i++) { T y = B[i]; (void)y; o[i] = (EXPR); }           \
    } else {                                                                   \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = A[i * s[1]], y = B[i * s[2]];                                    \
        (void)x; (void)y;                                                      \
        o[i * s[0]] = (EXPR);                                                  \
      }                                                                        \
    }                                                                          \
  }

#define UN_KERNEL(NAME, TY, EXPR)                                               \
  static void NAME(void *ctx, int64_t n, char **p, const int64_t *s) {         \
    typedef TY T;                                                              \
    const double *prm = ctx;                                                   \
    (void)prm;                                                                 \
    T *o = (T *)p[0];                                                          \
    const T *X = (const T *)p[1];                                              \
    if (s[0] == 1 && s[1] == 1) {                                              \
      for (int64_t i = 0; i < n; i++) { T x = X[i]; o[i] = (EXPR); }           \
    } else {                                                                   \
      for (int64_t i = 0; i < n; i++) { T x = X[i * s[1]]; o[i * s[0]] = (EXPR); } \
    }                                                                          \
  }

/* unary backward: p[0] gin, p[1] gout g, p[2] input x, p[3] output y */
#define UNB_KERNEL(NAME, TY, EXPR)                                              \
  static void NAME(void *ctx, int64_t n, char **p, const int64_t *s) {         \
    typedef TY T;                                                              \
    const double *prm = ctx;                                                   \
    (void)prm;                                                                 \
    T *o = (T *)p[0];                                                          \
    const T *G = (const T *)p[1], *X = (const T *)p[2], *Y = (const T *)p[3];  \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {                    \
      for (int64_t i = 0; i < n; i++) {                                        \
        T g = G[i], x = X[i], y = Y[i];                                        \
        (void)x; (void)y;                                                      \
        o[i] = (EXPR);                                                         \
      }                                                                        \
      return;                                                                  \
    }                                                                          \
    for (int64_t i = 0; i < n; i++) {                                          \
      T g = G[i * s[1]], x = X[i * s[2]], y = Y[i * s[3]];                     \
      (void)x; (void)y;                                                        \
      o[i * s[0]] = (EXPR);                                                    \
    }                                                                          \
  }

#define BOTH(GEN, NAME, EXPR) GEN(NAME##_f32, float, EXPR) GEN(NAME##_f64, double, EXPR)

/* binary forwards */
BOTH(BIN_KERNEL, k_add, x + y)
BOTH(BIN_KERNEL, k_sub, x - y)
BOTH(BIN_KERNEL, k_mul, x * y)
BOTH(BIN_KERNEL, k_div, x / y)
BOTH(BIN_KERNEL, k_pow, y == 2 ? x * x : (y == 1 ? x : pow(x, y)))
BOTH(BIN_KERNEL, k_max, (x > y || x != x) ? x : y)
BOTH(BIN_KERNEL, k_min, (x < y || x != x) ? x : y)
/* helpers for backwards: pow's d/da and d/db factors, tie-splitting masks */
BOTH(BIN_KERNEL, k_pow_da, y == 0 ? (T)0 : (y == 2 ? 2 * x : (y == 1 ? (T)1 : y * pow(x, y - 1))))
BOTH(BIN_KERNEL, k_log_pos, x > 0 ? log(x) * y : (T)0) /* log(a) * out, 0 where a <= 0 */
BOTH(BIN_KERNEL, k_gt_mask, x > y ? (T)1 : (x == y ? (T)0.5 : (T)0))
BOTH(BIN_KERNEL, k_lt_mask, x < y ? (T)1 : (x == y ? (T)0.5 : (T)0))

/* unary forwards (prm: clamp bounds) */
BOTH(UN_KERNEL, k_neg, -x)
BOTH(UN_KERNEL, k_exp, exp(x))
BOTH(UN_KERNEL, k_log, log(x))
BOTH(UN_KERNEL, k_sigmoid, x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)))
BOTH(UN_KERNEL, k_logsigmoid, (x < 0 ? x : (T)0) - log1p(exp(-fabs(x))))
BOTH(UN_KERNEL, k_relu, x > 0 ? x : (T)0)
BOTH(UN_KERNEL, k_tanh, tanh(x))
BOTH(UN_KERNEL, k_sqrt, sqrt(x))
BOTH(UN_KERNEL, k_abs, fabs(x))
BOTH(UN_KERNEL, k_gelu, (T)0.5 * x * (1 + TANH_VEC((T)GELU_C * (x + (T)GELU_K * x * x * x))))
BOTH(UN_KERNEL, k_silu, x >= 0 ? x / (1 + exp(-x)) : x * exp(x) / (1 + exp(x)))
BOTH(UN_KERNEL, k_clamp, x < (T)prm[0] ? (T)prm[0] : (x > (T)prm[1] ? (T)prm[1] : x))

/* unary backwards: g is the incoming gradient, x the input, y the output */
BOTH(UNB_KERNEL, kb_exp, g * y)
BOTH(UNB_KERNEL, kb_log, g / x)
BOTH(UNB_KERNEL, kb_sigmoid, g * y * (1 - y))
/* d logsigmoid(x)/dx = sigmoid(-x) */
BOTH(UNB_KERNEL, kb_logsigmoid, g * (x >= 0 ? exp(-x) / (1 + exp(-x)) : 1 / (1 + exp(x))))
BOTH(UNB_KERNEL, kb_relu, x > 0 ? g : (T)0)
BOTH(UNB_KERNEL, kb_tanh, g * (1 - y * y))
BOTH(UNB_KERNEL, kb_sqrt, g * (T)0.5 / y)
BOTH(UNB_KERNEL, kb_abs, x > 0 ? g : (x < 0 ? -g : (T)0))
/* d/dx 0.5x(1+tanh u) = 0.5(1+t) + 0.5x(1-t^2)·c(1+3k x^2), u = c(x+k x^3) */
BOTH(UNB_KERNEL, kb_gelu,
     g * ((T)0.5 * (1 + TANH_VEC((T)GELU_C * (x + (T)GELU_K * x * x * x))) +
          (T)0.5 * x * (1 - TANH_VEC((T)GELU_C * (x + (T)GELU_K * x * x * x)) * TANH_VEC((T)GELU_C * (x + (T)GELU_K * x * x * x))) *
              (T)GELU_C * (1 + 3 * (T)GELU_K * x * x)))
/* d/dx xσ(x) = σ(x)(1 + x(1-σ(x))) */
BOTH(UNB_KERNEL, kb_silu,
     g * ((x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x))) *
          (1 + x * (1 - (x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)))))))
BOTH(UNB_KERNEL, kb_clamp, (x >= (T)prm[0] && x <= (T)prm[1]) ? g : (T)0)

/* where: p[0] out, p[1] cond, p[2] a, p[3] b */
#define WHERE_KERNEL(NAME, T)                                                  \
  static void NAME(void *ctx, int64_t n, char **p, const int64_t *s) {         \
    (void)ctx;                                                                 \
    T *o = (T *)p[0];                                                          \
    const T *C = (const T *)p[1], *A = (const T *)p[2], *B = (const T *)p[3];  \
    for (int64_t i = 0; i < n; i++)                                            \
      o[i * s[0]] = C[i * s[1]] != 0 ? A[i * s[2]] : B[i * s[3]];              \
  }
WHERE_KERNEL(k_where_f32, float)
WHERE_KERNEL(k_where_f64, double)

#define PICK(k, t) ((t)->dtype == ENG_DTYPE_F64 ? k##_f64 : k##_f32)

/* ---- runners -------------------------------------------------------------- */

/* out = kernel(a, b) with broadcasting; out NULL allocates */
static eng_tensor *run_binary(const char *op, iter_fn k, eng_tensor *out, eng_tensor *a, eng_tensor *b) {
  if (check_float_same_dtype(op, a, b)) return NULL;
  int nd;
  int64_t shape[ENG_MAX_DIMS];
  if (broadcast_shapes(op, a->ndim, a->shape, b->ndim, b->shape, &nd, shape)) return NULL;
  if (!out) {
    out = tensor_new(a->dtype, nd, shape);
    if (!out) return NULL;
  } else {
    eng_tensor_retain(out);
  }
  int64_t st[3][ENG_MAX_DIMS];
  memcpy(st[0], out->stride, sizeof(int64_t) * (size_t)nd);
  broadcast_strides(a, nd, shape, st[1]);
  broadcast_strides(b, nd, shape, st[2]);
  char *base[3] = {tensor_ptr(out), tensor_ptr(a), tensor_ptr(b)};
  size_t es = dtype_size(a->dtype), ess[3] = {es, es, es};
  iter_run(nd, shape, 3, base, st, ess, k, NULL);
  return out;
}

static eng_tensor *run_unary(iter_fn k, eng_tensor *x, double *prm) {
  eng_tensor *out = tensor_new_like(x);
  if (!out) return NULL;
  int64_t st[2][ENG_MAX_DIMS];
  memcpy(st[0], out->stride, sizeof(int64_t) * (size_t)x->ndim);
  memcpy(st[1], x->stride, sizeof(int64_t) * (size_t)x->ndim);
  char *base[2] = {tensor_ptr(out), tensor_ptr(x)};
  size_t es = dtype_size(x->dtype), ess[2] = {es, es};
  iter_run(x->ndim, x->shape, 2, base, st, ess, k, prm);
  return out;
}

/* gin = kernel(g, x, y) for a unary op's backward */
static eng_tensor *run_unary_backward(iter_fn k, eng_tensor *g, eng_tensor *x, eng_tensor *y, double *prm) {
  eng_tensor *out = tensor_new_like(x);
  if (!out) return NULL;
  int nd = x->ndim;
  int64_t st[4][ENG_MAX_DIMS];
  memcpy(st[0], out->stride, sizeof(int64_t) * (size_t)nd);
  memcpy(st[1], g->stride, sizeof(int64_t) * (size_t)nd);
  memcpy(st[2], x->stride, sizeof(int64_t) * (size_t)nd);
  memcpy(st[3], y->stride, sizeof(int64_t) * (size_t)nd);
  char *base[4] = {tensor_ptr(out), tensor_ptr(g), tensor_ptr(x), tensor_ptr(y)};
  size_t es = dtype_size(x->dtype), ess[4] = {es, es, es, es};
  iter_run(nd, x->shape, 4, base, st, ess, k, prm);
  return out;
}

int tensor_add_inplace(eng_tensor *dst, eng_tensor *src) {
  eng_tensor *r = run_binary("add_", PICK(k_add, dst), dst, dst, src);
  if (!r) return -1;
  eng_tensor_release(r);
  return 0;
}

eng_tensor *eng_scalar_like(eng_tensor *x, double v) { return eng_full(x->dtype, 0, NULL, v); }

/* ---- binary ops ----------------------------------------------------------- */

/* reduce g (the output's shape) to input i's shape; NULL slot if not needed */
static int reduce_into(eng_node *n, int i, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *in = n->inputs[i];
  if (!in->requires_grad) {
    eng_tensor_release(g);
    return 0;
  }
  gin[i] = g ? sum_to_shape(g, in->ndim, in->shape) : NULL;
  eng_tensor_release(g);
  return gin[i] ? 0 : -1;
}

/* d(a+b) = g, g */
static int add_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  if (reduce_into(n, 0, eng_tensor_retain(g), gin)) return -1;
  return reduce_into(n, 1, eng_tensor_retain(g), gin);
}
/* d(a-b) = g, -g */
static int sub_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  if (reduce_into(n, 0, eng_tensor_retain(g), gin)) return -1;
  return reduce_into(n, 1, n->inputs[1]->requires_grad ? eng_neg(g) : NULL, gin);
}
/* d(a*b) = g*b, g*a */
static int mul_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *a = n->inputs[0], *b = n->inputs[1];
  if (reduce_into(n, 0, a->requires_grad ? eng_mul(g, b) : NULL, gin)) return -1;
  return reduce_into(n, 1, b->requires_grad ? eng_mul(g, a) : NULL, gin);
}
/* d(a/b) = g/b, -g*out/b */
static int div_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *a = n->inputs[0], *b = n->inputs[1];
  if (reduce_into(n, 0, a->requires_grad ? eng_div(g, b) : NULL, gin)) return -1;
  eng_tensor *gb = NULL;
  if (b->requires_grad) {
    eng_tensor *t = eng_mul(g, n->saved[0]);
    eng_tensor *u = t ? eng_div(t, b) : NULL;
    gb = u ? eng_neg(u) : NULL;
    eng_tensor_release(t);
    eng_tensor_release(u);
  }
  return reduce_into(n, 1, gb, gin);
}
/* d(a^b) = g*b*a^(b-1), g*out*log(a) (0 where a <= 0) */
static int pow_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *a = n->inputs[0], *b = n->inputs[1];
  eng_tensor *ga = NULL, *gb = NULL;
  if (a->requires_grad) {
    eng_tensor *d = run_binary("pow", PICK(k_pow_da, a), NULL, a, b);
    ga = d ? eng_mul(g, d) : NULL;
    eng_tensor_release(d);
  }
  if (reduce_into(n, 0, ga, gin)) return -1;
  if (b->requires_grad) {
    eng_tensor *d = run_binary("pow", PICK(k_log_pos, a), NULL, a, n->saved[0]);
    gb = d ? eng_mul(g, d) : NULL;
    eng_tensor_release(d);
  }
  return reduce_into(n, 1, gb, gin);
}
/* maximum/minimum: the gradient goes to the larger/smaller input, split on ties */
static int minmax_backward(eng_node *n, eng_tensor *g, eng_tensor **gin, bool is_max) {
  eng_tensor *a = n->inputs[0], *b = n->inputs[1];
  for (int i = 0; i < 2; i++) {
    eng_tensor *gi = NULL;
    if (n->inputs[i]->requires_grad) {
      eng_tensor *x = i == 0 ? a : b, *y = i == 0 ? b : a;
      eng_tensor *m = run_binary("maximum", is_max ? PICK(k_gt_mask, a) : PICK(k_lt_mask, a), NULL, x, y);
      gi = m ? eng_mul(g, m) : NULL;
      eng_tensor_release(m);
    }
    if (reduce_into(n, i, gi, gin)) return -1;
  }
  return 0;
}
static int max_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) { return minmax_backward(n, g, gin, true); }
static int min_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) { return minmax_backward(n, g, gin, false); }

#define DEFINE_BINARY(FN, OPNAME, KERNEL, BACKWARD, SAVE_OUT)                   \
  eng_tensor *FN(eng_tensor *a, eng_tensor *b) {                                \
    eng_tensor *out = run_binary(OPNAME, PICK(KERNEL, a), NULL, a, b);          \
    if (!out) return NULL;                                                      \
    eng_tensor *in[2] = {a, b};                                                 \
    eng_node *n = node_attach(out, OPNAME, BACKWARD, 2, in);                    \
    if (n && SAVE_OUT) node_save(n, 0, out);                                    \
    return out;                                                                 \
  }

DEFINE_BINARY(eng_add, "add", k_add, add_backward, 0)
DEFINE_BINARY(eng_sub, "sub", k_sub, sub_backward, 0)
DEFINE_BINARY(eng_mul, "mul", k_mul, mul_backward, 0)
DEFINE_BINARY(eng_div, "div", k_div, div_backward, 1)
DEFINE_BINARY(eng_pow, "pow", k_pow, pow_backward, 1)
DEFINE_BINARY(eng_maximum, "maximum", k_max, max_backward, 0)
DEFINE_BINARY(eng_minimum, "minimum", k_min, min_backward, 0)

/* ---- unary ops ------------------------------------------------------------ */

static int neg_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  (void)n;
  gin[0] = eng_neg(g);
  return gin[0] ? 0 : -1;
}

/* backward kernels indexed like the forwards below; saved[0] is the output */
static int unary_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  iter_fn k = (iter_fn)n->aux_fn;
  double prm[2] = {n->dparams[0], n->dparams[1]};
  gin[0] = run_unary_backward(k, g, x, n->saved[0], prm);
  return gin[0] ? 0 : -1;
}

static eng_tensor *unary(const char *name, iter_fn fwd, iter_fn bwd, eng_tensor *x, double *prm) {
  eng_tensor *out = run_unary(fwd, x, prm);
  if (!out) return NULL;
  eng_node *n = node_attach(out, name, bwd ? unary_backward : neg_backward, 1, &x);
  if (n && bwd) {
    node_save(n, 0, out);
    n->aux_fn = (void (*)(void))bwd;
    if (prm) {
      n->dparams[0] = prm[0];
      n->dparams[1] = prm[1];
    }
  }
  return out;
}

eng_tensor *eng_neg(eng_tensor *x) { return unary("neg", PICK(k_neg, x), NULL, x, NULL); }

#define DEFINE_UNARY(FN, OPNAME, K)                                             \
  eng_tensor *FN(eng_tensor *x) { return unary(OPNAME, PICK(k_##K, x), PICK(kb_##K, x), x, NULL); }

DEFINE_UNARY(eng_exp, "exp", exp)
DEFINE_UNARY(eng_log, "log", log)
DEFINE_UNARY(eng_sigmoid, "sigmoid", sigmoid)
DEFINE_UNARY(eng_logsigmoid, "logsigmoid", logsigmoid)
DEFINE_UNARY(eng_relu, "relu", relu)
DEFINE_UNARY(eng_tanh, "tanh", tanh)
DEFINE_UNARY(eng_sqrt, "sqrt", sqrt)
DEFINE_UNARY(eng_abs, "abs", abs)
DEFINE_UNARY(eng_gelu, "gelu", gelu)
DEFINE_UNARY(eng_silu, "silu", silu)

eng_tensor *eng_clamp(eng_tensor *x, double lo, double hi) {
  if (lo > hi) return eng_errorf("clamp: lower bound %g is above upper bound %g", lo, hi);
  double prm[2] = {lo, hi};
  return unary("clamp", PICK(k_clamp, x), PICK(kb_clamp, x), x, prm);
}

/* ---- where ---------------------------------------------------------------- */

/* d where(c, a, b) = where(c, g, 0), where(c, 0, g) */
static int where_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *c = n->inputs[0];
  eng_tensor *zero = eng_scalar_like(g, 0);
  if (!zero) return -1;
  int rc = 0;
  for (int i = 1; i <= 2 && rc == 0; i++) {
    if (!n->inputs[i]->requires_grad) continue;
    eng_tensor *w = i == 1 ? eng_where(c, g, zero) : eng_where(c, zero, g);
    rc = reduce_into(n, i, w, gin);
  }
  eng_tensor_release(zero);
  return rc;
}

eng_tensor *eng_where(eng_tensor *cond, eng_tensor *a, eng_tensor *b) {
  if (check_float_same_dtype("where", a, b)) return NULL;
  int nd1, nd;
  int64_t s1[ENG_MAX_DIMS], shape[ENG_MAX_DIMS];
  if (broadcast_shapes("where", a->ndim, a->shape, b->ndim, b->shape, &nd1, s1)) return NULL;
  if (broadcast_shapes("where", cond->ndim, cond->shape, nd1, s1, &nd, shape)) return NULL;
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *c = eng_to_dtype(cond, a->dtype);
  eng_set_grad_enabled(prev);
  if (!c) return NULL;
  eng_tensor *out = tensor_new(a->dtype, nd, shape);
  if (!out) {
    eng_tensor_release(c);
    return NULL;
  }
  int64_t st[4][ENG_MAX_DIMS];
  memcpy(st[0], out->stride, sizeof(int64_t) * (size_t)nd);
  broadcast_strides(c, nd, shape, st[1]);
  broadcast_strides(a, nd, shape, st[2]);
  broadcast_strides(b, nd, shape, st[3]);
  char *base[4] = {tensor_ptr(out), tensor_ptr(c), tensor_ptr(a), tensor_ptr(b)};
  size_t es = dtype_size(a->dtype), ess[4] = {es, es, es, es};
  iter_run(nd, shape, 4, base, st, ess, PICK(k_where, a), NULL);
  eng_tensor *in[3] = {c, a, b};
  node_attach(out, "where", where_backward, 3, in);
  eng_tensor_release(c);
  return out;
}
