/* test_linear.c — eng_linear (engine_linear.h): values against a float64
 * loop written here (both weight layouts, with and without bias, batched
 * x, the small-product and the gemm paths, more than one gemm K block),
 * strided and transposed operands (read in place or copied), float64
 * finite-difference gradient checks of x, W and b for both layouts
 * (strided, transposed and expanded output gradients too), gradients for a
 * subset of the inputs only, W's gradient in W's own layout, agreement with
 * the two-op path (eng_matmul then eng_add: values and gradients bit for
 * bit), empty shapes, the column sums' independence of the thread count,
 * the exact error messages (nothing allocated before them), and that the
 * node keeps its inputs only: never the output (the memory the two-op path
 * holds more). Thread count fixed (OMP_NUM_THREADS=2 under ctest). */
#include "check.h"
#include "engine_linear.h"
#include "internal.h"

static eng_tensor *randn(eng_dtype dt, uint64_t seed, int nd, const int64_t *shape, bool grad) {
  eng_rng *r = eng_rng_new(seed);
  eng_tensor *t = eng_randn(r, dt, nd, shape);
  eng_rng_free(r);
  if (grad) eng_set_requires_grad(t, true);
  return t;
}

/* op(W)[k,n]: W[k,n], or W[n,k] with transpose_w (read through get_flat) */
static double opw(const eng_tensor *w, bool tw, int64_t k, int64_t n) {
  int64_t cols = eng_tensor_shape(w)[1];
  return tw ? at(w, n * cols + k) : at(w, k * cols + n);
}

/* the worst |y - (x·op(W) + b)| over y, relative to Σ|terms| of each element;
 * x seen as (M,K) */
static double worst_error(const eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b,
                          bool tw, int64_t M, int64_t K, int64_t N) {
  double worst = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = b ? at(b, n) : 0, mag = fabs(s);
      for (int64_t k = 0; k < K; k++) {
        double t = at(x, m * K + k) * opw(w, tw, k, n);
        s += t;
        mag += fabs(t);
      }
      double e = fabs(at(y, m * N + n) - s) / (mag + 1e-30);
      if (!(e <= worst)) worst = e; /* NaN sticks */
    }
  return worst;
}

static bool same_shape(const eng_tensor *t, int nd, const int64_t *shape) {
  if (eng_tensor_ndim(t) != nd) return false;
  for (int d = 0; d < nd; d++)
    if (eng_tensor_shape(t)[d] != shape[d]) return false;
  return true;
}

/* W for x·op(W): (K,N), or (N,K) with tw */
static eng_tensor *weight(eng_dtype dt, uint64_t seed, bool tw, int64_t K, int64_t N, bool grad) {
  return randn(dt, seed, 2, tw ? (int64_t[]){N, K} : (int64_t[]){K, N}, grad);
}

/* ---- values ------------------------------------------------------------------ */

/* y = x·op(W) + b against the loop: both dtypes and layouts, with and without
 * b; (2,3,5)->4 (6 rows: the small-product path in float32), (3,50,300)->70
 * (150 rows, K over one 256-deep gemm block), a vector x (5)->4 */
static void test_values(void) {
  struct {
    int nd;
    int64_t shape[3], N;
  } cases[] = {{3, {2, 3, 5}, 4}, {3, {3, 50, 300}, 70}, {1, {5}, 4}};
  for (int f64 = 0; f64 <= 1; f64++)
    for (int tw = 0; tw <= 1; tw++)
      for (int bias = 0; bias <= 1; bias++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
          eng_dtype dt = f64 ? ENG_DTYPE_F64 : ENG_DTYPE_F32;
          int nd = cases[c].nd;
          int64_t K = cases[c].shape[nd - 1], N = cases[c].N, M = 1;
          for (int d = 0; d < nd - 1; d++) M *= cases[c].shape[d];
          eng_tensor *x = randn(dt, 1, nd, cases[c].shape, false), *w = weight(dt, 2, tw, K, N, false);
          eng_tensor *b = bias ? randn(dt, 3, 1, &N, false) : NULL;
          eng_tensor *y = eng_linear(x, w, b, tw);
          int64_t ys[3];
          memcpy(ys, cases[c].shape, sizeof ys);
          ys[nd - 1] = N;
          CHECK(y && same_shape(y, nd, ys) && eng_tensor_dtype(y) == dt && eng_tensor_is_contiguous(y));
          CHECK_CLOSE(worst_error(y, x, w, b, tw, M, K, N), 0, f64 ? 1e-14 : 3e-6);
          CHECK(eng_grad_fn_name(y) && strcmp(eng_grad_fn_name(y), "leaf") == 0); /* nothing requires grad */
          eng_tensor_release(y);
          eng_tensor_release(b);
          eng_tensor_release(w);
          eng_tensor_release(x);
        }
}

/* strided operands, each against the loop: W transposed views (both layouts),
 * a narrowed W (row stride wider than its columns), a W no BLAS layout fits
 * (both strides 2: copied), x a transposed (T,B,K) view (leading dims do not
 * fold: copied), x stored column-major (strides (1,M): read transposed; 8
 * rows, the small path packs it, and 100 rows), x narrowed in its last dim,
 * x expanded over a leading dim (stride 0), b every other element */
static void test_strided(void) {
  const int64_t K = 6, N = 5;
  eng_rng *r = eng_rng_new(7);
  eng_tensor *big = eng_randn(r, ENG_DTYPE_F32, 2, (int64_t[]){40, 40});
  eng_tensor *xb = eng_randn(r, ENG_DTYPE_F32, 3, (int64_t[]){4, 3, K});       /* (T,B,K) */
  eng_tensor *xcm = eng_randn(r, ENG_DTYPE_F32, 2, (int64_t[]){K, 100});       /* column-major x */
  eng_tensor *bb = eng_randn(r, ENG_DTYPE_F32, 1, (int64_t[]){2 * N});
  eng_rng_free(r);
  eng_tensor *b = tensor_view(bb, 1, &N, (int64_t[]){2}, 0);
  eng_tensor *x0 = randn(ENG_DTYPE_F32, 8, 3, (int64_t[]){3, 4, K}, false);
  /* weights: op(W) = W (tw 0) or Wᵀ (tw 1), each a view of `big` */
  struct {
    bool tw;
    int64_t shape[2], stride[2];
    const char *what;
  } ws[] = {{false, {K, N}, {1, 40}, "W (K,N) a transposed view"},
            {true, {N, K}, {1, 40}, "W (N,K) a transposed view"},
            {false, {K, N}, {40, 1}, "W (K,N) narrowed"},
            {true, {N, K}, {40, 1}, "W (N,K) narrowed"},
            {false, {K, N}, {80, 2}, "W (K,N) strides (80,2)"},
            {true, {N, K}, {2, 80}, "W (N,K) strides (2,80)"}};
  eng_tensor *x1 = randn(ENG_DTYPE_F32, 11, 3, (int64_t[]){3, 20, K}, false);
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
    for (int big_x = 0; big_x <= 1; big_x++) { /* 12 rows (small path), 60 rows (gemm) */
      eng_tensor *x = big_x ? x1 : x0, *w = tensor_view(big, 2, ws[i].shape, ws[i].stride, 3);
      eng_tensor *y = eng_linear(x, w, b, ws[i].tw);
      double e = y ? worst_error(y, x, w, b, ws[i].tw, big_x ? 60 : 12, K, N) : INFINITY;
      if (!(e <= 3e-6)) fprintf(stderr, "  %s, %d rows: error %g\n", ws[i].what, big_x ? 60 : 12, e);
      CHECK_CLOSE(e, 0, 3e-6);
      eng_tensor_release(y);
      eng_tensor_release(w);
    }
  eng_tensor_release(x1);
  eng_tensor *w = weight(ENG_DTYPE_F32, 9, true, K, N, false);
  /* x (B,T,K) = the (T,B,K) tensor with dims 1, 2 swapped */
  eng_tensor *xt = eng_transpose(xb, 0, 1);
  eng_tensor *y = eng_linear(xt, w, b, true);
  CHECK(y && same_shape(y, 3, (int64_t[]){3, 4, N}));
  CHECK_CLOSE(worst_error(y, xt, w, b, true, 12, K, N), 0, 3e-6);
  eng_tensor_release(y);
  /* column-major x of 8 and of 100 rows */
  for (int64_t M = 8; M <= 100; M += 92) {
    eng_tensor *xn = eng_narrow(xcm, 1, 0, M), *xc = eng_transpose(xn, 0, 1);
    y = eng_linear(xc, w, b, true);
    CHECK(y && same_shape(y, 2, (int64_t[]){M, N}));
    CHECK_CLOSE(worst_error(y, xc, w, b, true, M, K, N), 0, 3e-6);
    eng_tensor_release(y);
    eng_tensor_release(xc);
    eng_tensor_release(xn);
  }
  /* x narrowed in its last dim: (3,4,K-2) with row stride K */
  eng_tensor *w2 = weight(ENG_DTYPE_F32, 10, false, K - 2, N, false);
  eng_tensor *xs = eng_narrow(x0, 2, 1, K - 2);
  y = eng_linear(xs, w2, b, false);
  CHECK_CLOSE(y ? worst_error(y, xs, w2, b, false, 12, K - 2, N) : INFINITY, 0, 3e-6);
  eng_tensor_release(y);
  /* x expanded: (5,4,K) with a zero stride over dim 1 */
  eng_tensor *row = eng_narrow(x0, 1, 0, 1);
  eng_tensor *xe = eng_expand(row, 3, (int64_t[]){3, 40, K});
  y = eng_linear(xe, w, b, true);
  CHECK_CLOSE(y ? worst_error(y, xe, w, b, true, 120, K, N) : INFINITY, 0, 3e-6);
  eng_tensor_release(y);
  eng_tensor_release(xe);
  eng_tensor_release(row);
  eng_tensor_release(xs);
  eng_tensor_release(w2);
  eng_tensor_release(xt);
  eng_tensor_release(w);
  eng_tensor_release(x0);
  eng_tensor_release(b);
  eng_tensor_release(bb);
  eng_tensor_release(xcm);
  eng_tensor_release(xb);
  eng_tensor_release(big);
}

/* ---- float64 gradient checks ---------------------------------------------------- */

typedef struct {
  bool tw;
  int how;         /* 0: Σ p·y   1: Σ p·yᵀ (y's gradient a transposed view)   2: Σ y (expanded) */
  bool x_strided;  /* in[0] is (T,B,K): x = its transpose (1,2) */
  eng_tensor *p;   /* probe, y's shape (how 0) or its transpose's (how 1) */
} lin_ctx;

/* a scalar of linear(x, W, b) that gives every output its own weight */
static eng_tensor *lin_fn(eng_tensor **in, void *vctx) {
  lin_ctx *c = vctx;
  eng_tensor *x = c->x_strided ? eng_transpose(in[0], 0, 1) : eng_tensor_retain(in[0]);
  eng_tensor *y = eng_linear(x, in[1], in[2], c->tw);
  eng_tensor_release(x);
  if (!y) return NULL;
  eng_tensor *s;
  if (c->how == 2) {
    s = eng_sum(y, ENG_ALL_DIMS, false);
  } else {
    eng_tensor *v = c->how == 1 ? eng_transpose(y, 0, -1) : eng_tensor_retain(y);
    eng_tensor *m = eng_mul(v, c->p);
    s = eng_sum(m, ENG_ALL_DIMS, false);
    eng_tensor_release(m);
    eng_tensor_release(v);
  }
  eng_tensor_release(y);
  return s;
}

static void test_gradcheck(void) {
  const int64_t B = 2, T = 3, K = 4, N = 5;
  for (int tw = 0; tw <= 1; tw++)
    for (int how = 0; how <= 2; how++) {
      lin_ctx c = {.tw = tw, .how = how};
      c.p = randn(ENG_DTYPE_F64, 20, 3, how == 1 ? (int64_t[]){N, T, B} : (int64_t[]){B, T, N}, false);
      eng_tensor *in[3] = {t_randn64(21, 3, (int64_t[]){B, T, K}),
                           t_randn64(22, 2, tw ? (int64_t[]){N, K} : (int64_t[]){K, N}),
                           t_randn64(23, 1, &N)};
      CHECK_GRAD(lin_fn, &c, in, 3);
      /* no bias */
      eng_tensor *b = in[2];
      in[2] = NULL;
      CHECK_GRAD(lin_fn, &c, in, 2);
      in[2] = b;
      for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
      eng_tensor_release(c.p);
    }
  /* strided leaves: x a transposed view (inside fn), W a transposed view of
   * a contiguous leaf-less base, b every other element; 40 rows */
  for (int tw = 0; tw <= 1; tw++) {
    lin_ctx c = {.tw = tw, .how = 0, .x_strided = true};
    c.p = randn(ENG_DTYPE_F64, 30, 3, (int64_t[]){4, 10, N}, false);
    eng_tensor *wb = randn(ENG_DTYPE_F64, 31, 2, tw ? (int64_t[]){K, N} : (int64_t[]){N, K}, false);
    eng_tensor *bb = randn(ENG_DTYPE_F64, 32, 1, (int64_t[]){2 * N}, false);
    eng_tensor *in[3] = {t_randn64(33, 3, (int64_t[]){10, 4, K}), eng_transpose(wb, 0, 1),
                         tensor_view(bb, 1, &N, (int64_t[]){2}, 0)};
    eng_set_requires_grad(in[1], true);
    eng_set_requires_grad(in[2], true);
    CHECK(!eng_tensor_is_contiguous(in[1]) && !eng_tensor_is_contiguous(in[2]));
    CHECK_GRAD(lin_fn, &c, in, 3);
    for (int i = 0; i < 3; i++) eng_tensor_release(in[i]);
    eng_tensor_release(wb);
    eng_tensor_release(bb);
    eng_tensor_release(c.p);
  }
}

/* ---- gradients: a subset, the layout of dW, the two-op path ------------------------ */

/* with g = dL/dy: dx = g·op(W)ᵀ, dW = xᵀ·g in W's layout, db = Σ_rows g,
 * each against the loop; for each subset of {x, W, b} requiring grad, the
 * others get none */
static void test_subsets(void) {
  const int64_t M = 7, K = 3, N = 4;
  for (int tw = 0; tw <= 1; tw++)
    for (int mask = 1; mask < 8; mask++) {
      eng_tensor *x = randn(ENG_DTYPE_F64, 40, 2, (int64_t[]){M, K}, mask & 1);
      eng_tensor *w = weight(ENG_DTYPE_F64, 41, tw, K, N, mask & 2);
      eng_tensor *b = randn(ENG_DTYPE_F64, 42, 1, &N, mask & 4);
      eng_tensor *g = randn(ENG_DTYPE_F64, 43, 2, (int64_t[]){M, N}, false);
      eng_tensor *y = eng_linear(x, w, b, tw);
      CHECK(y && eng_requires_grad(y) && strcmp(eng_grad_fn_name(y), "linear") == 0);
      CHECK(eng_backward(y, g) == 0);
      CHECK((eng_grad(x) != NULL) == ((mask & 1) != 0));
      CHECK((eng_grad(w) != NULL) == ((mask & 2) != 0));
      CHECK((eng_grad(b) != NULL) == ((mask & 4) != 0));
      double ex = 0, ew = 0, eb = 0;
      if (eng_grad(x))
        for (int64_t m = 0; m < M; m++)
          for (int64_t k = 0; k < K; k++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++) s += at(g, m * N + n) * opw(w, tw, k, n);
            ex = fmax(ex, fabs(at(eng_grad(x), m * K + k) - s));
          }
      if (eng_grad(w))
        for (int64_t k = 0; k < K; k++)
          for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t m = 0; m < M; m++) s += at(x, m * K + k) * at(g, m * N + n);
            ew = fmax(ew, fabs(opw(eng_grad(w), tw, k, n) - s));
          }
      if (eng_grad(b))
        for (int64_t n = 0; n < N; n++) {
          double s = 0;
          for (int64_t m = 0; m < M; m++) s += at(g, m * N + n);
          eb = fmax(eb, fabs(at(eng_grad(b), n) - s));
        }
      CHECK_CLOSE(ex, 0, 1e-13);
      CHECK_CLOSE(ew, 0, 1e-13);
      CHECK_CLOSE(eb, 0, 1e-13);
      eng_tensor_release(y);
      eng_tensor_release(g);
      eng_tensor_release(b);
      eng_tensor_release(w);
      eng_tensor_release(x);
    }
}

/* the backward hands a W that is a transposed view a transposed view (so a
 * gradient kept in a flat block in W's layout adds it without a strided
 * walk), and a contiguous W a contiguous one */
static void test_weight_grad_layout(void) {
  const int64_t M = 6, K = 3, N = 4;
  for (int tw = 0; tw <= 1; tw++)
    for (int view = 0; view <= 1; view++) {
      eng_tensor *x = randn(ENG_DTYPE_F32, 50, 2, (int64_t[]){M, K}, false);
      eng_tensor *base = weight(ENG_DTYPE_F32, 51, !tw != !view, K, N, false);
      eng_tensor *w = view ? eng_transpose(base, 0, 1) : eng_tensor_retain(base);
      eng_set_requires_grad(w, true);
      /* the node's backward itself, with g = 1: what it hands to W */
      eng_tensor *y = eng_linear(x, w, NULL, tw), *g = eng_full(ENG_DTYPE_F32, 2, (int64_t[]){M, N}, 1.0);
      eng_tensor *gin[NODE_MAX_INPUTS] = {NULL};
      bool prev = eng_set_grad_enabled(false);
      CHECK(y && y->grad_fn && y->grad_fn->backward(y->grad_fn, g, gin) == 0);
      eng_set_grad_enabled(prev);
      eng_tensor *gw = gin[1];
      CHECK(gin[0] == NULL && gin[2] == NULL); /* x requires no grad; no b */
      CHECK(gw && same_shape(gw, 2, eng_tensor_shape(w)));
      CHECK(gw && eng_tensor_strides(gw)[0] == eng_tensor_strides(w)[0] &&
            eng_tensor_strides(gw)[1] == eng_tensor_strides(w)[1]);
      /* d Σy / d op(W)[k,n] = Σ_m x[m,k] */
      double e = 0;
      for (int64_t k = 0; gw && k < K; k++) {
        double s = 0;
        for (int64_t m = 0; m < M; m++) s += at(x, m * K + k);
        for (int64_t n = 0; n < N; n++) e = fmax(e, fabs(opw(gw, tw, k, n) - s));
      }
      CHECK_CLOSE(e, 0, 1e-5);
      eng_tensor_release(gw);
      eng_tensor_release(g);
      eng_tensor_release(y);
      eng_tensor_release(w);
      eng_tensor_release(base);
      eng_tensor_release(x);
    }
}

/* float32 against eng_matmul + eng_add (how nn.Linear / nn.Conv1D were
 * built): values and all three gradients are the same bits, on the
 * small-product path (<= 32 rows) and the gemm path alike */
static void test_matches_two_ops(void) {
  int64_t Ts[2] = {4, 100};
  for (int tw = 0; tw <= 1; tw++)
    for (int t = 0; t < 2; t++) {
      const int64_t B = 2, T = Ts[t], K = 64, N = 48;
      eng_tensor *x = randn(ENG_DTYPE_F32, 60, 3, (int64_t[]){B, T, K}, true);
      eng_tensor *w = weight(ENG_DTYPE_F32, 61, tw, K, N, true);
      eng_tensor *b = randn(ENG_DTYPE_F32, 62, 1, &N, true);
      eng_tensor *g = randn(ENG_DTYPE_F32, 63, 3, (int64_t[]){B, T, N}, false);
      eng_tensor *y = eng_linear(x, w, b, tw);
      CHECK(eng_backward(y, g) == 0);
      eng_tensor *gx = eng_tensor_retain(eng_grad(x)), *gw = eng_tensor_retain(eng_grad(w)),
                 *gb = eng_tensor_retain(eng_grad(b));
      eng_set_grad(x, NULL);
      eng_set_grad(w, NULL);
      eng_set_grad(b, NULL);
      eng_tensor *wt = tw ? eng_transpose(w, 0, 1) : eng_tensor_retain(w);
      eng_tensor *p = eng_matmul(x, wt), *r = eng_add(p, b);
      CHECK(eng_backward(r, g) == 0);
      double ey = 0, ex = 0, ew = 0, eb = 0;
      bool bits = true;
      for (int64_t i = 0; i < B * T * N; i++) {
        ey = fmax(ey, fabs(at(y, i) - at(r, i)));
        bits = bits && at(y, i) == at(r, i);
      }
      for (int64_t i = 0; i < B * T * K; i++) ex = fmax(ex, fabs(at(gx, i) - at(eng_grad(x), i)));
      for (int64_t i = 0; i < K * N; i++) ew = fmax(ew, fabs(at(gw, i) - at(eng_grad(w), i)));
      for (int64_t i = 0; i < N; i++) eb = fmax(eb, fabs(at(gb, i) - at(eng_grad(b), i)));
      /* the same operations in the same order: equal, not just close */
      CHECK(bits);
      CHECK(ey == 0);
      CHECK(ex == 0);
      CHECK(ew == 0);
      CHECK(eb == 0);
      CHECK(gw && eng_tensor_is_contiguous(gw));
      for (eng_tensor **t2 = (eng_tensor *[]){p, r, wt, y, g, gx, gw, gb, b, w, x, NULL}; *t2; t2++)
        eng_tensor_release(*t2);
    }
}

/* ---- edges ------------------------------------------------------------------------ */

/* no rows, no in features (y = b, or 0), no out features; gradients of the
 * inputs' shapes, zeros where nothing flows */
static void test_empty(void) {
  for (int tw = 0; tw <= 1; tw++) {
    eng_tensor *x = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){3, 0});
    eng_tensor *w = eng_zeros(ENG_DTYPE_F64, 2, tw ? (int64_t[]){4, 0} : (int64_t[]){0, 4});
    eng_tensor *b = T(ENG_DTYPE_F64, 1, ((int64_t[]){4}), ((double[]){1, 2, 3, 4}));
    eng_set_requires_grad(x, true);
    eng_set_requires_grad(w, true);
    eng_set_requires_grad(b, true);
    eng_tensor *y = eng_linear(x, w, b, tw), *y0 = eng_linear(x, w, NULL, tw);
    CHECK(y && same_shape(y, 2, (int64_t[]){3, 4}) && at(y, 5) == 2 && at(y, 11) == 4);
    CHECK(y0 && at(y0, 0) == 0 && at(y0, 11) == 0);
    eng_tensor *s = eng_sum(y, ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    CHECK(eng_grad(b) && at(eng_grad(b), 0) == 3 && at(eng_grad(b), 3) == 3);
    CHECK(eng_grad(x) && eng_tensor_numel(eng_grad(x)) == 0 && eng_grad(w) && eng_tensor_numel(eng_grad(w)) == 0);
    eng_tensor_release(s);
    eng_tensor_release(y0);
    eng_tensor_release(y);
    eng_tensor_release(x);
    /* no rows: x (0,5), W (5,4): y (0,4); dW and db zeros */
    eng_set_grad(b, NULL);
    x = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){0, 5});
    eng_tensor *w2 = randn(ENG_DTYPE_F64, 70, 2, tw ? (int64_t[]){4, 5} : (int64_t[]){5, 4}, true);
    y = eng_linear(x, w2, b, tw);
    CHECK(y && same_shape(y, 2, (int64_t[]){0, 4}));
    s = eng_sum(y, ENG_ALL_DIMS, false);
    CHECK(eng_backward(s, NULL) == 0);
    CHECK(eng_grad(w2) && at(eng_grad(w2), 0) == 0 && at(eng_grad(w2), 19) == 0);
    CHECK(eng_grad(b) && at(eng_grad(b), 0) == 0 && at(eng_grad(b), 3) == 0);
    eng_tensor_release(s);
    eng_tensor_release(y);
    eng_tensor_release(w2);
    eng_tensor_release(x);
    eng_tensor_release(b);
    eng_tensor_release(w);
  }
}

/* db is the same bits with 1 and 2 threads (columns summed in row order) */
static void test_bias_grad_threads(void) {
  const int64_t M = 300, N = 257;
  eng_tensor *g = randn(ENG_DTYPE_F32, 80, 2, (int64_t[]){M, N}, false);
  eng_tensor *x = randn(ENG_DTYPE_F32, 81, 2, (int64_t[]){M, 3}, false);
  eng_tensor *w = randn(ENG_DTYPE_F32, 82, 2, (int64_t[]){3, N}, false);
  eng_tensor *dbs[2] = {NULL, NULL};
  int before = eng_get_threads();
  for (int t = 0; t < 2; t++) {
    eng_set_threads(t + 1);
    eng_tensor *b = randn(ENG_DTYPE_F32, 83, 1, &N, true);
    eng_tensor *y = eng_linear(x, w, b, false);
    CHECK(eng_backward(y, g) == 0);
    dbs[t] = eng_tensor_retain(eng_grad(b));
    eng_tensor_release(y);
    eng_tensor_release(b);
  }
  eng_set_threads(before);
  bool same = dbs[0] && dbs[1];
  double e = 0;
  for (int64_t n = 0; same && n < N; n++) {
    same = at(dbs[0], n) == at(dbs[1], n);
    double s = 0;
    for (int64_t m = 0; m < M; m++) s += at(g, m * N + n);
    e = fmax(e, fabs(at(dbs[0], n) - s));
  }
  CHECK(same);
  CHECK_CLOSE(e, 0, 1e-5);
  eng_tensor_release(dbs[0]);
  eng_tensor_release(dbs[1]);
  eng_tensor_release(w);
  eng_tensor_release(x);
  eng_tensor_release(g);
}

/* ---- errors ----------------------------------------------------------------------- */

#define CHECK_MSG(expr, msg)                                                                       \
  do {                                                                                             \
    eng_memory_stats s0_, s1_;                                                                     \
    eng_memory_get_stats(&s0_);                                                                    \
    CHECK_FAILS(expr, msg);                                                                        \
    eng_memory_get_stats(&s1_);                                                                    \
    CHECK(strcmp(eng_last_error(), msg) == 0);                                                     \
    CHECK(s1_.allocs == s0_.allocs && s1_.reuses == s0_.reuses); /* nothing allocated */           \
  } while (0)

static void test_errors(void) {
  eng_tensor *x = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){2, 3});
  eng_tensor *w45 = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){4, 5});
  eng_tensor *w35 = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){3, 5});
  eng_tensor *w53 = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){5, 3});
  eng_tensor *w64 = eng_zeros(ENG_DTYPE_F64, 2, (int64_t[]){3, 5});
  eng_tensor *v3 = eng_zeros(ENG_DTYPE_F32, 1, (int64_t[]){3});
  eng_tensor *b4 = eng_zeros(ENG_DTYPE_F32, 1, (int64_t[]){4});
  eng_tensor *b5d = eng_zeros(ENG_DTYPE_F64, 1, (int64_t[]){5});
  eng_tensor *b15 = eng_zeros(ENG_DTYPE_F32, 2, (int64_t[]){1, 5});
  eng_tensor *s = eng_zeros(ENG_DTYPE_F32, 0, NULL);
  CHECK_MSG(eng_linear(x, w45, NULL, false), "linear: x is [2,3], W is [4,5]: in features differ (W is (in,out))");
  CHECK_MSG(eng_linear(x, w35, NULL, true),
            "linear: x is [2,3], W is [3,5]: in features differ (W is (out,in) with transpose_w)");
  CHECK_MSG(eng_linear(x, w53, NULL, false), "linear: x is [2,3], W is [5,3]: in features differ (W is (in,out))");
  CHECK_MSG(eng_linear(x, w35, b4, false), "linear: W is [3,5], b is [4]: b must be [5], the out features");
  CHECK_MSG(eng_linear(x, w53, b4, true), "linear: W is [5,3], b is [4]: b must be [5], the out features");
  CHECK_MSG(eng_linear(x, w35, b15, false), "linear: W is [3,5], b is [1,5]: b must be [5], the out features");
  CHECK_MSG(eng_linear(x, w64, NULL, false), "linear: x is float32, W is float64: they must have the same dtype");
  CHECK_MSG(eng_linear(x, w35, b5d, false), "linear: x is float32, b is float64: they must have the same dtype");
  CHECK_MSG(eng_linear(s, w35, NULL, false), "linear: x is []: it needs a last dim (the in features)");
  CHECK_MSG(eng_linear(x, v3, NULL, false), "linear: W is [3]: it must be 2-D, (in,out), or (out,in) with transpose_w");
  /* a vector x is one row */
  eng_tensor *y = eng_linear(v3, w35, NULL, false);
  CHECK(y && same_shape(y, 1, (int64_t[]){5}));
  eng_tensor_release(y);
  for (eng_tensor **t = (eng_tensor *[]){x, w45, w35, w53, w64, v3, b4, b5d, b15, s, NULL}; *t; t++)
    eng_tensor_release(*t);
}

/* ---- what the node keeps ------------------------------------------------------------ */

/* the node holds x, W, b as its inputs and saves nothing; after the forward
 * (output released, a sum over it), the two-op path holds exactly one more
 * output-sized block: the matmul's product the add node keeps */
static void test_keeps_no_output(void) {
  const int64_t B = 4, T = 16, K = 32, N = 256; /* y: 64 KiB, an exact pool size class */
  eng_tensor *x = randn(ENG_DTYPE_F32, 90, 3, (int64_t[]){B, T, K}, false);
  eng_tensor *w = randn(ENG_DTYPE_F32, 91, 2, (int64_t[]){K, N}, true);
  eng_tensor *b = randn(ENG_DTYPE_F32, 92, 1, &N, true);
  eng_tensor *y = eng_linear(x, w, b, false);
  eng_node *n = y ? y->grad_fn : NULL;
  CHECK(n && n->ninputs == 3 && n->inputs[0] == x && n->inputs[1] == w && n->inputs[2] == b);
  for (int i = 0; n && i < NODE_MAX_SAVED; i++) CHECK(n->saved[i] == NULL);
  eng_tensor *y2 = eng_linear(x, w, NULL, false);
  CHECK(y2 && y2->grad_fn && y2->grad_fn->ninputs == 2);
  eng_tensor_release(y2);
  eng_tensor_release(y);

  size_t held[2];
  for (int path = 0; path < 2; path++) {
    eng_memory_stats s0, s1;
    eng_memory_get_stats(&s0);
    eng_tensor *out;
    if (path == 0) {
      out = eng_linear(x, w, b, false);
    } else {
      eng_tensor *p = eng_matmul(x, w);
      out = eng_add(p, b);
      eng_tensor_release(p);
    }
    eng_tensor *L = eng_sum(out, ENG_ALL_DIMS, false);
    eng_tensor_release(out);
    eng_memory_get_stats(&s1);
    held[path] = s1.bytes_in_use - s0.bytes_in_use;
    CHECK(eng_backward(L, NULL) == 0);
    eng_tensor_release(L);
    eng_set_grad(w, NULL);
    eng_set_grad(b, NULL);
  }
  size_t ybytes = (size_t)(B * T * N) * sizeof(float);
  CHECK(held[1] - held[0] == ybytes);
  CHECK(held[0] >= ybytes && held[0] <= ybytes + 256); /* y (kept by the sum) and the scalar */
  eng_tensor_release(b);
  eng_tensor_release(w);
  eng_tensor_release(x);
}

/* no graph without grad mode */
static void test_no_grad(void) {
  eng_tensor *x = randn(ENG_DTYPE_F32, 95, 2, (int64_t[]){3, 4}, true);
  eng_tensor *w = randn(ENG_DTYPE_F32, 96, 2, (int64_t[]){4, 2}, true);
  bool prev = eng_set_grad_enabled(false);
  eng_tensor *y = eng_linear(x, w, NULL, false);
  eng_set_grad_enabled(prev);
  CHECK(y && !eng_requires_grad(y) && eng_is_leaf(y));
  eng_tensor_release(y);
  eng_tensor_release(w);
  eng_tensor_release(x);
}

int main(void) {
  RUN(test_values);
  RUN(test_strided);
  RUN(test_gradcheck);
  RUN(test_subsets);
  RUN(test_weight_grad_layout);
  RUN(test_matches_two_ops);
  RUN(test_empty);
  RUN(test_bias_grad_threads);
  RUN(test_errors);
  RUN(test_keeps_no_output);
  RUN(test_no_grad);
  DONE();
}
