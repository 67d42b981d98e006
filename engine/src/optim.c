/* optim.c — AdamW and SGD over one flat parameter block (engine_optim.h).
 *
 * What it does: gathers the parameters into flat blocks (parameters, grads,
 * moments: one layout), keeps each parameter's grad attached to its slice,
 * and runs the update as one OpenMP-parallel, vectorised loop per decay
 * range. Also the gradient norm (double, fixed chunks, so the same for any
 * thread count), clipping, scaling and zeroing of the grad block, and the
 * non-finite check that makes a step skip.
 *
 * The update kernels repeat PyTorch 1.13's single-tensor steps operation by
 * operation in float32 (scalars rounded to float as ATen does, a fused
 * multiply-add exactly where ATen's CPU kernels use one): on an AVX2+FMA CPU
 * they give PyTorch's parameters and moments to the bit
 * (tests/fixtures/optim.json); elsewhere within an ulp per operation.
 * Clipping's factor is computed in float32 as PyTorch does, from the norm.
 *
 * What it does not do: schedules, the choice of which parameters decay,
 * checkpoint files (lua/engine/optim.lua and the trainer do those). */
#include "internal.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#endif

struct eng_optim {
  eng_optim_config cfg;
  const char *op;        /* "AdamW" or "SGD", for messages */
  int n;                 /* slots, in flat order */
  eng_tensor **params;   /* retained */
  eng_tensor **gviews;   /* retained: each parameter's slice of the grad block */
  char **names;          /* copies, or NULL entries */
  int *index;            /* position in the caller's list */
  int64_t *offset;       /* n + 1 entries */
  int n_decay;           /* slots [0, n_decay) take weight decay */
  eng_tensor *flat_p, *flat_g;
  eng_tensor *m, *v;     /* AdamW: exp_avg, exp_avg_sq; SGD: m = momentum_buffer or NULL */
  int64_t step, skipped;
};

/* ---- kernels ----------------------------------------------------------------
 * Each kernel is a plain vectorised loop over [lo, hi); run_ranges splits
 * [0, n) into one contiguous range per thread. The update kernels carry
 * their floating-point options themselves (OpenMP's outlined functions would
 * not inherit them; clang takes the standard pragma instead): contraction
 * off, so that a multiply-add is fused
 * exactly where ATen fuses one (MADD: its vec::fmadd of add(x, alpha=...),
 * and addcmul's inner a*b + c) and nowhere else. */
#if defined(__clang__)
#define KERNEL
#define NO_CONTRACT _Pragma("STDC FP_CONTRACT OFF")
#else
#define KERNEL __attribute__((optimize("fp-contract=off")))
#define NO_CONTRACT
#endif
#if defined(__FMA__)
#define MADD(a, b, c) fmaf((a), (b), (c)) /* a*b + c rounded once */
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

typedef void (*range_fn)(void *ctx, int64_t lo, int64_t hi);

static void run_ranges(int64_t n, range_fn fn, void *ctx) {
  if (n < PARALLEL_MIN) {
    if (n > 0) fn(ctx, 0, n);
    return;
  }
#pragma omp parallel
  {
    int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16; /* whole 64-byte lines */
    int64_t lo = t * per, hi = lo + per < n ? lo + per : n;
    if (lo < hi) fn(ctx, lo, hi);
  }
}

typedef struct {
  float *p, *m, *v;
  const float *g;
  float decay;     /* 1 - lr*wd */
  float b1, a1;    /* beta1, 1 - beta1 */
  float b2, a2;    /* beta2, 1 - beta2 */
  float bc2_sqrt;  /* sqrt(1 - beta2^t) */
  float eps;
  float neg_step;  /* -lr / (1 - beta1^t) */
} adamw_args;

/* p, g, m, v (n), in place — torch 1.13 _single_tensor_adamw:
 *   p <- p*(1 - lr*wd)                         param.mul_
 *   m <- m*b1 + (1-b1)*g                       exp_avg.mul_(b1).add_(g, alpha=1-b1)
 *   v <- v*b2 + (1-b2)*g*g                     exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2)
 *   p <- p + (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)      param.addcdiv_
 * gcc vectorises no loop calling sqrtf unless errno is off for the whole
 * file, so the AVX path spells out the same operations eight at a time;
 * the scalar loop finishes the range (and is the path on other CPUs). */
KERNEL static void adamw_kernel(void *ctx, int64_t lo, int64_t hi) {
  NO_CONTRACT
  const adamw_args c = *(const adamw_args *)ctx;
  float *restrict p = c.p, *restrict m = c.m, *restrict v = c.v;
  const float *restrict g = c.g;
  int64_t i = lo;
#if defined(__AVX__) && defined(__FMA__)
  const __m256 decay = _mm256_set1_ps(c.decay), b1 = _mm256_set1_ps(c.b1), a1 = _mm256_set1_ps(c.a1),
               b2 = _mm256_set1_ps(c.b2), a2 = _mm256_set1_ps(c.a2), bc2 = _mm256_set1_ps(c.bc2_sqrt),
               eps = _mm256_set1_ps(c.eps), step = _mm256_set1_ps(c.neg_step);
  for (; i + 8 <= hi; i += 8) {
    __m256 gi = _mm256_loadu_ps(g + i);
    __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    __m256 mi = _mm256_fmadd_ps(gi, a1, _mm256_mul_ps(_mm256_loadu_ps(m + i), b1));
    __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(a2, gi), gi, _mm256_mul_ps(_mm256_loadu_ps(v + i), b2));
    __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom)));
  }
#endif
  for (; i < hi; i++) {
    float gi = g[i];
    float pi = p[i] * c.decay;
    float mi = MADD(gi, c.a1, m[i] * c.b1);
    float vi = MADD(c.a2 * gi, gi, v[i] * c.b2);
    float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + c.neg_step * mi / denom;
  }
}

typedef struct {
  float *p, *buf; /* buf NULL: no momentum */
  const float *g;
  float wd;       /* L2 factor added to the gradient (0: none) */
  float mom;      /* momentum */
  float a;        /* 1 - dampening */
  float neg_lr;
  int first;      /* the buffer starts as the gradient */
  int nesterov;
} sgd_args;

/* p, g, buf (n) — torch 1.13 _single_tensor_sgd:
 *   d <- g + wd*p                                 g.add(p, alpha=wd)
 *   buf <- d (first step) | buf*mom + (1-dampening)*d
 *   d <- d + mom*buf (nesterov) | buf
 *   p <- p + (-lr)*d                              param.add_(d, alpha=-lr) */
KERNEL static void sgd_momentum_kernel(void *ctx, int64_t lo, int64_t hi) {
  NO_CONTRACT
  const sgd_args c = *(const sgd_args *)ctx;
  float *restrict p = c.p, *restrict buf = c.buf;
  const float *restrict g = c.g;
  for (int64_t i = lo; i < hi; i++) {
    float d = c.wd != 0 ? MADD(p[i], c.wd, g[i]) : g[i];
    float b = c.first ? d : MADD(d, c.a, buf[i] * c.mom);
    buf[i] = b;
    d = c.nesterov ? MADD(b, c.mom, d) : b;
    p[i] = MADD(d, c.neg_lr, p[i]);
  }
}

/* p, g (n): p <- p + (-lr)*(g + wd*p) */
KERNEL static void sgd_kernel(void *ctx, int64_t lo, int64_t hi) {
  NO_CONTRACT
  const sgd_args c = *(const sgd_args *)ctx;
  float *restrict p = c.p;
  const float *restrict g = c.g;
  for (int64_t i = lo; i < hi; i++) {
    float d = c.wd != 0 ? MADD(p[i], c.wd, g[i]) : g[i];
    p[i] = MADD(d, c.neg_lr, p[i]);
  }
}

/* g (n): true when every element is finite (exponent bits not all ones).
 * An integer test, so that it vectorises under any compiler's float rules. */
typedef uint32_t __attribute__((may_alias)) float_bits; /* a float's bits, read in place */

typedef struct {
  const float_bits *bits;
  int bad;
} finite_args;

static void finite_kernel(void *ctx, int64_t lo, int64_t hi) {
  finite_args *c = ctx;
  const float_bits *restrict u = c->bits;
  uint32_t bad = 0;
  for (int64_t i = lo; i < hi; i++) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
  if (bad) __atomic_store_n(&c->bad, 1, __ATOMIC_RELAXED);
}

static bool all_finite(const float *g, int64_t n) {
  finite_args c = {(const float_bits *)(const void *)g, 0};
  run_ranges(n, finite_kernel, &c);
  return !c.bad;
}

/* g (n) -> sum g^2 in double. Partial sums over fixed chunks combined in
 * chunk order: the result does not depend on the thread count. */
#define NORM_CHUNK 4096
static int sum_squares(const char *op, const float *g, int64_t n, double *out) {
  int64_t nchunks = (n + NORM_CHUNK - 1) / NORM_CHUNK;
  double *part = malloc(sizeof(double) * (size_t)(nchunks ? nchunks : 1));
  if (!part) return eng_errorf_status("%s: out of memory (grad norm: %lld partial sums)", op, (long long)nchunks);
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t c = 0; c < nchunks; c++) {
    int64_t lo = c * NORM_CHUNK, hi = lo + NORM_CHUNK < n ? lo + NORM_CHUNK : n;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; i++) s += (double)g[i] * (double)g[i];
    part[c] = s;
  }
  double total = 0;
  for (int64_t c = 0; c < nchunks; c++) total += part[c];
  free(part);
  *out = total;
  return 0;
}

/* x (n) <- x * s */
typedef struct {
  float *x;
  float s;
} scale_args;

static void scale_range(void *ctx, int64_t lo, int64_t hi) {
  const scale_args *c = ctx;
  float *restrict x = c->x;
  const float s = c->s;
  for (int64_t i = lo; i < hi; i++) x[i] *= s;
}

static void scale_kernel(float *x, int64_t n, float s) {
  scale_args c = {x, s};
  run_ranges(n, scale_range, &c);
}

/* x (n) <- 0 */
static void zero_kernel(float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) x[i] = 0;
}

/* ---- construction ------------------------------------------------------------ */

eng_optim_config eng_optim_defaults(eng_optim_kind kind) {
  eng_optim_config c;
  memset(&c, 0, sizeof c);
  c.kind = kind;
  c.lr = 1e-3;
  if (kind == ENG_OPTIM_ADAMW) {
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = 1e-2;
  }
  return c;
}

static const char *kind_name(eng_optim_kind k) {
  return k == ENG_OPTIM_ADAMW ? "AdamW" : k == ENG_OPTIM_SGD ? "SGD" : "optim";
}

static int check_lr(const char *op, double lr) {
  if (!(isfinite(lr) && lr >= 0)) return eng_errorf_status("%s: lr must be a finite number >= 0, got %g", op, lr);
  return 0;
}

static int check_config(const eng_optim_config *c) {
  const char *op = kind_name(c->kind);
  if (c->kind != ENG_OPTIM_ADAMW && c->kind != ENG_OPTIM_SGD)
    return eng_errorf_status("optim: unknown optimizer kind %d", (int)c->kind);
  if (check_lr(op, c->lr)) return -1;
  if (!(isfinite(c->weight_decay) && c->weight_decay >= 0))
    return eng_errorf_status("%s: weight_decay must be a finite number >= 0, got %g", op, c->weight_decay);
  if (c->kind == ENG_OPTIM_ADAMW) {
    if (!(c->beta1 >= 0 && c->beta1 < 1)) return eng_errorf_status("%s: beta1 must be in [0, 1), got %g", op, c->beta1);
    if (!(c->beta2 >= 0 && c->beta2 < 1)) return eng_errorf_status("%s: beta2 must be in [0, 1), got %g", op, c->beta2);
    if (!(isfinite(c->eps) && c->eps >= 0))
      return eng_errorf_status("%s: eps must be a finite number >= 0, got %g", op, c->eps);
  } else {
    if (!(isfinite(c->momentum) && c->momentum >= 0))
      return eng_errorf_status("%s: momentum must be a finite number >= 0, got %g", op, c->momentum);
    if (!isfinite(c->dampening))
      return eng_errorf_status("%s: dampening must be a finite number, got %g", op, c->dampening);
    if (c->nesterov && (c->momentum <= 0 || c->dampening != 0))
      return eng_errorf_status("%s: nesterov momentum needs momentum > 0 and dampening = 0 (got momentum %g, "
                               "dampening %g)",
                               op, c->momentum, c->dampening);
  }
  return 0;
}

/* " ('name')" or "" */
static const char *name_note(const char *const *names, int i, char *buf, size_t len) {
  if (names && names[i]) snprintf(buf, len, " ('%s')", names[i]);
  else buf[0] = 0;
  return buf;
}

static int check_params(const char *op, int n, eng_tensor *const *params, const char *const *names) {
  char nb[160];
  if (n <= 0 || !params) return eng_errorf_status("%s: the parameter list is empty", op);
  for (int i = 0; i < n; i++) {
    eng_tensor *p = params[i];
    if (!p) return eng_errorf_status("%s: parameter %d is NULL", op, i + 1);
    const char *nm = name_note(names, i, nb, sizeof nb);
    if (p->dtype != ENG_DTYPE_F32)
      return eng_errorf_status("%s: parameter %d%s is %s %s; parameters must be float32", op, i + 1, nm,
                               eng_dtype_name(p->dtype), shp(p));
    if (p->grad_fn)
      return eng_errorf_status("%s: parameter %d%s is not a leaf (it was made by %s); pass the model's "
                               "parameters, not values computed from them",
                               op, i + 1, nm, eng_grad_fn_name(p));
    if (!p->requires_grad)
      return eng_errorf_status("%s: parameter %d%s %s does not require grad; call requires_grad(true) on it "
                               "or leave it out",
                               op, i + 1, nm, shp(p));
  }
  return 0;
}

static void contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    stride[d] = s;
    s *= shape[d];
  }
}

/* a view of the flat block `flat` with p's shape at element offset off */
static eng_tensor *slice_like(eng_tensor *flat, const eng_tensor *p, int64_t off) {
  int64_t stride[ENG_MAX_DIMS];
  contiguous_strides(p->ndim, p->shape, stride);
  return tensor_view(flat, p->ndim, p->shape, stride, flat->offset + off);
}

void eng_optim_free(eng_optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    if (o->params) eng_tensor_release(o->params[i]);
    if (o->gviews) eng_tensor_release(o->gviews[i]);
    if (o->names) free(o->names[i]);
  }
  free(o->params);
  free(o->gviews);
  free(o->names);
  free(o->index);
  free(o->offset);
  eng_tensor_release(o->flat_p);
  eng_tensor_release(o->flat_g);
  eng_tensor_release(o->m);
  eng_tensor_release(o->v);
  free(o);
}

eng_optim *eng_optim_new(const eng_optim_config *cfg, int n, eng_tensor *const *params,
                         const char *const *names, const bool *decay) {
  if (!cfg) return eng_errorf("optim: no configuration given");
  if (check_config(cfg)) return NULL;
  const char *op = kind_name(cfg->kind);
  if (check_params(op, n, params, names)) return NULL;

  eng_optim *o = calloc(1, sizeof *o);
  if (!o) return eng_errorf("%s: out of memory", op);
  o->cfg = *cfg;
  o->op = op;
  o->params = calloc((size_t)n, sizeof *o->params);
  o->gviews = calloc((size_t)n, sizeof *o->gviews);
  o->names = calloc((size_t)n, sizeof *o->names);
  o->index = calloc((size_t)n, sizeof *o->index);
  o->offset = calloc((size_t)n + 1, sizeof *o->offset);
  if (!o->params || !o->gviews || !o->names || !o->index || !o->offset) goto oom;

  /* flat order: decayed parameters first, then the others; duplicates once */
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < n; i++) {
      bool d = decay ? decay[i] : true;
      if (d != (pass == 0)) continue;
      bool dup = false;
      for (int j = 0; j < i && !dup; j++) dup = params[j] == params[i];
      if (dup) continue;
      o->index[o->n] = i;
      o->params[o->n] = eng_tensor_retain(params[i]);
      o->offset[o->n + 1] = o->offset[o->n] + params[i]->numel;
      if (names && names[i] && !(o->names[o->n] = strdup(names[i]))) {
        o->n++;
        goto oom;
      }
      o->n++;
    }
    if (pass == 0) o->n_decay = o->n;
  }

  int64_t total = o->offset[o->n];
  o->flat_p = tensor_new(ENG_DTYPE_F32, 1, &total);
  o->flat_g = eng_zeros(ENG_DTYPE_F32, 1, &total);
  if (!o->flat_p || !o->flat_g) goto fail;
  bool adamw = cfg->kind == ENG_OPTIM_ADAMW;
  if (adamw || cfg->momentum != 0) {
    o->m = eng_zeros(ENG_DTYPE_F32, 1, &total);
    if (!o->m) goto fail;
  }
  if (adamw) {
    o->v = eng_zeros(ENG_DTYPE_F32, 1, &total);
    if (!o->v) goto fail;
  }

  /* copy everything in first; move the parameters only once nothing can fail */
  eng_tensor **pviews = calloc((size_t)o->n, sizeof *pviews);
  if (!pviews) goto oom;
  for (int i = 0; i < o->n; i++) {
    eng_tensor *p = o->params[i];
    pviews[i] = slice_like(o->flat_p, p, o->offset[i]);
    o->gviews[i] = slice_like(o->flat_g, p, o->offset[i]);
    if (!pviews[i] || !o->gviews[i] || eng_copy_(pviews[i], p) ||
        (p->grad && eng_copy_(o->gviews[i], p->grad))) {
      for (int j = 0; j <= i; j++) eng_tensor_release(pviews[j]);
      free(pviews);
      goto fail;
    }
  }
  for (int i = 0; i < o->n; i++) {
    eng_tensor_set_data(o->params[i], pviews[i]); /* cannot fail: leaf, same shape and dtype */
    eng_set_grad(o->params[i], o->gviews[i]);
    eng_tensor_release(pviews[i]);
  }
  free(pviews);
  return o;

oom:
  eng_errorf("%s: out of memory", op);
fail:
  eng_optim_free(o);
  return NULL;
}

/* ---- accessors ----------------------------------------------------------------- */

const eng_optim_config *eng_optim_get_config(const eng_optim *o) { return &o->cfg; }
double eng_optim_lr(const eng_optim *o) { return o->cfg.lr; }

int eng_optim_set_lr(eng_optim *o, double lr) {
  if (check_lr(o->op, lr)) return -1;
  o->cfg.lr = lr;
  return 0;
}

eng_tensor *eng_optim_params(eng_optim *o) { return o->flat_p; }
eng_tensor *eng_optim_grads(eng_optim *o) { return o->flat_g; }

eng_tensor *eng_optim_moment(eng_optim *o, const char *name) {
  if (!name) return NULL;
  if (o->cfg.kind == ENG_OPTIM_ADAMW) {
    if (!strcmp(name, "exp_avg")) return o->m;
    if (!strcmp(name, "exp_avg_sq")) return o->v;
    return NULL;
  }
  return strcmp(name, "momentum_buffer") ? NULL : o->m;
}

int64_t eng_optim_numel(const eng_optim *o) { return o->offset[o->n]; }
int64_t eng_optim_decay_numel(const eng_optim *o) { return o->offset[o->n_decay]; }
int eng_optim_num_slots(const eng_optim *o) { return o->n; }

int eng_optim_slot_info(const eng_optim *o, int i, eng_optim_slot *out) {
  if (i < 0 || i >= o->n)
    return eng_errorf_status("%s: slot %d out of range (there are %d parameters)", o->op, i, o->n);
  out->index = o->index[i];
  out->offset = o->offset[i];
  out->numel = o->offset[i + 1] - o->offset[i];
  out->decay = i < o->n_decay;
  out->param = o->params[i];
  return 0;
}

int64_t eng_optim_step_count(const eng_optim *o) { return o->step; }
int64_t eng_optim_skipped(const eng_optim *o) { return o->skipped; }

int eng_optim_set_step_count(eng_optim *o, int64_t step) {
  if (step < 0) return eng_errorf_status("%s: step count must be >= 0, got %lld", o->op, (long long)step);
  o->step = step;
  return 0;
}

/* ---- keeping parameters and grads on their slices ------------------------------ */

static int sync(eng_optim *o) {
  char nb[160];
  for (int i = 0; i < o->n; i++) {
    eng_tensor *p = o->params[i], *gv = o->gviews[i];
    if (p->storage != o->flat_p->storage || p->offset != o->flat_p->offset + o->offset[i] ||
        !eng_tensor_is_contiguous(p))
      return eng_errorf_status("%s: parameter %d%s no longer lives in the optimizer's flat block (set_data_ "
                               "moved it, or another optimizer took it)",
                               o->op, o->index[i] + 1, name_note((const char *const *)o->names, i, nb, sizeof nb));
    if (p->grad == gv) continue;
    if (p->grad) {
      if (eng_copy_(gv, p->grad)) return -1;
    } else {
      zero_kernel(tensor_ptr(gv), gv->numel);
    }
    eng_set_grad(p, gv);
  }
  return 0;
}

/* ---- grads ------------------------------------------------------------------------ */

int eng_optim_zero_grad(eng_optim *o) {
  if (sync(o)) return -1;
  zero_kernel(tensor_ptr(o->flat_g), o->flat_g->numel);
  return 0;
}

int eng_optim_grad_norm(eng_optim *o, double *norm) {
  if (sync(o)) return -1;
  double ss = 0;
  if (sum_squares(o->op, tensor_ptr(o->flat_g), o->flat_g->numel, &ss)) return -1;
  *norm = sqrt(ss);
  return 0;
}

int eng_optim_clip_grad_norm(eng_optim *o, double max_norm, double *norm) {
  if (!(max_norm > 0)) /* inf is allowed: the norm, no clipping */
    return eng_errorf_status("clip_grad_norm: max_norm must be a number > 0, got %g", max_norm);
  double nrm;
  if (eng_optim_grad_norm(o, &nrm)) return -1;
  *norm = nrm;
  if (!isfinite(nrm)) return 0;
  /* in float32, as PyTorch computes it from its float32 norm */
  float fcoef = (float)max_norm / ((float)nrm + 1e-6f);
  if (fcoef < 1) scale_kernel(tensor_ptr(o->flat_g), o->flat_g->numel, fcoef);
  return 0;
}

int eng_optim_scale_grads(eng_optim *o, double s) {
  if (!isfinite(s)) return eng_errorf_status("scale_grads: the factor must be finite, got %g", s);
  if (sync(o)) return -1;
  scale_kernel(tensor_ptr(o->flat_g), o->flat_g->numel, (float)s);
  return 0;
}

/* ---- the step ---------------------------------------------------------------------- */

int eng_optim_step(eng_optim *o, bool *updated) {
  if (updated) *updated = false;
  if (sync(o)) return -1;
  int64_t total = o->offset[o->n], nd = o->offset[o->n_decay];
  float *p = tensor_ptr(o->flat_p), *g = tensor_ptr(o->flat_g);
  if (!all_finite(g, total)) {
    o->skipped++;
    return 0;
  }
  const eng_optim_config *c = &o->cfg;
  o->step++;
  if (c->kind == ENG_OPTIM_ADAMW) {
    double t = (double)o->step;
    double bc1 = 1 - pow(c->beta1, t), bc2 = 1 - pow(c->beta2, t);
    adamw_args a = {
        .p = p, .g = g, .m = tensor_ptr(o->m), .v = tensor_ptr(o->v),
        .decay = (float)(1 - c->lr * c->weight_decay),
        .b1 = (float)c->beta1, .a1 = (float)(1 - c->beta1),
        .b2 = (float)c->beta2, .a2 = (float)(1 - c->beta2),
        .bc2_sqrt = (float)sqrt(bc2), .eps = (float)c->eps,
        .neg_step = (float)(-(c->lr / bc1)),
    };
    run_ranges(nd, adamw_kernel, &a);                 /* decayed range */
    a.p += nd, a.g += nd, a.m += nd, a.v += nd;
    a.decay = 1.0f;
    run_ranges(total - nd, adamw_kernel, &a);         /* the rest */
  } else {
    sgd_args a = {
        .p = p, .g = g, .buf = o->m ? tensor_ptr(o->m) : NULL,
        .wd = (float)c->weight_decay, .mom = (float)c->momentum, .a = (float)(1 - c->dampening),
        .neg_lr = (float)(-c->lr), .first = o->step == 1, .nesterov = c->nesterov,
    };
    range_fn fn = a.buf ? sgd_momentum_kernel : sgd_kernel;
    run_ranges(nd, fn, &a);                      /* decayed range */
    a.p += nd, a.g += nd;
    if (a.buf) a.buf += nd;
    a.wd = 0;
    run_ranges(total - nd, fn, &a);              /* the rest */
  }
  if (updated) *updated = true;
  return 0;
}
