/* ops_shape.c — ops that move or pick elements without arithmetic: reshape,
 * transpose, permute, narrow, expand (views of x's storage when the layout
 * allows), cat and gather (new tensors); each backward beside its forward.
 *
 * Gradients handed back by these backwards are always contiguous, so the
 * ops upstream never see a zero-stride or transposed gradient from here; the
 * backwards themselves accept gradients of any layout.
 *
 * Messages print dims and start positions 1-based (C value + 1), as the Lua
 * user passed them before the binding converted them; shapes as "[2,3]".
 * Not here: matmul (ops_matmul.c), contiguous/to_dtype copies (iter.c),
 * reductions (ops_reduce.c). */
#include "internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

static void contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i];
  }
}

/* a contiguous gradient from a (possibly strided) one */
static eng_tensor *contiguous_grad(eng_tensor *g) {
  if (!g) return NULL;
  eng_tensor *c = eng_contiguous(g);
  eng_tensor_release(g);
  return c;
}

/* ---- reshape ------------------------------------------------------------------- */

/* strides that present (on, oshape, ostride) as nshape without moving data;
 * false when the layout does not allow it (as PyTorch's view rule) */
static bool view_strides(int on, const int64_t *oshape, const int64_t *ostride, int nn,
                         const int64_t *nshape, int64_t numel, int64_t *nstride) {
  if (numel == 0 || on == 0) {
    contiguous_strides(nn, nshape, nstride);
    return true;
  }
  int view_d = nn - 1;
  int64_t chunk = ostride[on - 1], tnumel = 1, vnumel = 1;
  for (int td = on - 1; td >= 0; td--) {
    tnumel *= oshape[td];
    if (td == 0 || (oshape[td - 1] != 1 && ostride[td - 1] != tnumel * chunk)) {
      while (view_d >= 0 && (vnumel < tnumel || nshape[view_d] == 1)) {
        nstride[view_d] = vnumel * chunk;
        vnumel *= nshape[view_d];
        view_d--;
      }
      if (vnumel != tnumel) return false;
      if (td > 0) {
        chunk = ostride[td - 1];
        tnumel = 1;
        vnumel = 1;
      }
    }
  }
  return view_d == -1;
}

/* d reshape: g reshaped back to x's shape */
static int reshape_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  gin[0] = contiguous_grad(eng_reshape(g, x->ndim, x->shape));
  return gin[0] ? 0 : -1;
}

/* x (...) -> shape (same numel); one entry may be -1 */
eng_tensor *eng_reshape(eng_tensor *x, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > ENG_MAX_DIMS)
    return eng_errorf("reshape: %d dims requested; at most %d are supported", ndim, ENG_MAX_DIMS);
  int64_t ns[ENG_MAX_DIMS];
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < ndim; i++) {
    ns[i] = shape[i];
    if (shape[i] == -1) {
      if (infer >= 0)
        return eng_errorf("reshape: only one size may be -1, got %s", shp_dims(ndim, shape));
      infer = i;
    } else if (shape[i] < 0) {
      return eng_errorf("reshape: negative size %lld in %s", (long long)shape[i], shp_dims(ndim, shape));
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x->numel % known != 0)
      return eng_errorf("reshape: cannot view %s (%lld elements) as %s", shp(x), (long long)x->numel,
                        shp_dims(ndim, shape));
    ns[infer] = x->numel / known;
  } else if (known != x->numel) {
    return eng_errorf("reshape: cannot view %s (%lld elements) as %s (%lld elements)", shp(x),
                      (long long)x->numel, shp_dims(ndim, shape), (long long)known);
  }
  int64_t st[ENG_MAX_DIMS];
  eng_tensor *out;
  if (view_strides(x->ndim, x->shape, x->stride, ndim, ns, x->numel, st)) {
    out = tensor_view(x, ndim, ns, st, x->offset);
  } else {
    out = tensor_new(x->dtype, ndim, ns);
    if (out) {
      /* copy through a contiguous-shaped view of out with x's shape */
      int64_t xs[ENG_MAX_DIMS];
      contiguous_strides(x->ndim, x->shape, xs);
      eng_tensor *v = tensor_view(out, x->ndim, x->shape, xs, 0);
      if (!v) {
        eng_tensor_release(out);
        return NULL;
      }
      eng_copy_(v, x);
      eng_tensor_release(v);
    }
  }
  if (out) node_attach(out, "reshape", reshape_backward, 1, &x);
  return out;
}

/* ---- permute and transpose ------------------------------------------------------ */

/* iparams[0]: the inverse permutation packed 8 bits per dim */
static int permute_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  int inv[ENG_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++) inv[i] = (int)((n->iparams[0] >> (8 * i)) & 0xff);
  gin[0] = contiguous_grad(eng_permute(g, inv));
  return gin[0] ? 0 : -1;
}

static eng_tensor *permute_view(const char *op, eng_tensor *x, const int *perm) {
  int64_t shape[ENG_MAX_DIMS], stride[ENG_MAX_DIMS];
  int64_t packed = 0;
  for (int i = 0; i < x->ndim; i++) {
    shape[i] = x->shape[perm[i]];
    stride[i] = x->stride[perm[i]];
    packed |= (int64_t)i << (8 * perm[i]);
  }
  eng_tensor *out = tensor_view(x, x->ndim, shape, stride, x->offset);
  if (!out) return NULL;
  eng_node *n = node_attach(out, op, permute_backward, 1, &x);
  if (n) n->iparams[0] = packed;
  return out;
}

/* x with dims reordered: out.shape[i] = x.shape[dims[i]] (a view); dims
 * holds each of x's dims once (negative counts from the end) */
eng_tensor *eng_permute(eng_tensor *x, const int *dims) {
  int perm[ENG_MAX_DIMS];
  bool seen[ENG_MAX_DIMS] = {false};
  for (int i = 0; i < x->ndim; i++) {
    int d = norm_dim("permute", x, dims[i]);
    if (d < 0) return NULL;
    if (seen[d]) return eng_errorf("permute: dim %d appears twice (tensor %s)", d + 1, shp(x));
    seen[d] = true;
    perm[i] = d;
  }
  return permute_view("permute", x, perm);
}

/* x with dims d1 and d2 swapped (a view) */
eng_tensor *eng_transpose(eng_tensor *x, int d1, int d2) {
  int a = norm_dim("transpose", x, d1);
  if (a < 0) return NULL;
  int b = norm_dim("transpose", x, d2);
  if (b < 0) return NULL;
  int perm[ENG_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  return permute_view("transpose", x, perm);
}

/* ---- narrow ---------------------------------------------------------------------- */

/* d narrow: g placed in a zero tensor of x's shape at [start, start+len) of
 * dim (iparams[0], iparams[1]) */
static int narrow_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  int d = (int)n->iparams[0];
  eng_tensor *out = eng_zeros(x->dtype, x->ndim, x->shape);
  if (!out) return -1;
  int64_t shape[ENG_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[d] = g->shape[d];
  eng_tensor *slice = tensor_view(out, x->ndim, shape, out->stride, n->iparams[1] * out->stride[d]);
  if (!slice || eng_copy_(slice, g)) {
    eng_tensor_release(slice);
    eng_tensor_release(out);
    return -1;
  }
  eng_tensor_release(slice);
  gin[0] = out;
  return 0;
}

/* x (..., S, ...) -> (..., len, ...): positions [start, start+len) of dim (a view) */
eng_tensor *eng_narrow(eng_tensor *x, int dim, int64_t start, int64_t len) {
  int d = norm_dim("narrow", x, dim);
  if (d < 0) return NULL;
  int64_t size = x->shape[d];
  if (start < 0 || start > size)
    return eng_errorf("narrow: start %lld is outside dim %d (size %lld) of %s", (long long)start + 1, d + 1,
                      (long long)size, shp(x));
  if (len < 0) return eng_errorf("narrow: length %lld is negative", (long long)len);
  if (start + len > size)
    return eng_errorf("narrow: start %lld + length %lld runs past the end of dim %d (size %lld) of %s",
                      (long long)start + 1, (long long)len, d + 1, (long long)size, shp(x));
  int64_t shape[ENG_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[d] = len;
  eng_tensor *out = tensor_view(x, x->ndim, shape, x->stride, x->offset + start * x->stride[d]);
  if (!out) return NULL;
  eng_node *n = node_attach(out, "narrow", narrow_backward, 1, &x);
  if (n) {
    n->iparams[0] = d;
    n->iparams[1] = start;
  }
  return out;
}

/* ---- expand ------------------------------------------------------------------------ */

/* d expand: g summed over the broadcast dims */
static int expand_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  gin[0] = contiguous_grad(sum_to_shape(g, x->ndim, x->shape));
  return gin[0] ? 0 : -1;
}

/* x broadcast to shape (a view with zero strides); shape may add leading
 * dims; -1 keeps x's size; a size-1 dim of x stretches to any size */
eng_tensor *eng_expand(eng_tensor *x, int ndim, const int64_t *shape) {
  if (ndim < x->ndim || ndim > ENG_MAX_DIMS)
    return eng_errorf("expand: cannot expand %s to %s (fewer dims)", shp(x), shp_dims(ndim, shape));
  int lead = ndim - x->ndim;
  int64_t ns[ENG_MAX_DIMS], st[ENG_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    int j = i - lead;
    int64_t want = shape[i];
    if (j < 0) {
      if (want < 0)
        return eng_errorf("expand: size %lld for the new leading dim %d of %s", (long long)want, i + 1,
                          shp_dims(ndim, shape));
      ns[i] = want;
      st[i] = 0;
      continue;
    }
    int64_t have = x->shape[j];
    if (want == -1 || want == have) {
      ns[i] = have;
      st[i] = x->stride[j];
    } else if (have == 1 && want >= 0) {
      ns[i] = want;
      st[i] = 0;
    } else {
      return eng_errorf("expand: cannot expand %s to %s (dim %d: %lld vs %lld)", shp(x),
                        shp_dims(ndim, shape), i + 1, (long long)have, (long long)want);
    }
  }
  eng_tensor *out = tensor_view(x, ndim, ns, st, x->offset);
  if (out) node_attach(out, "expand", expand_backward, 1, &x);
  return out;
}

/* ---- cat ------------------------------------------------------------------------------ */

/* d cat: the slice of g each input filled; iparams[0]: dim */
static int cat_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  int d = (int)n->iparams[0];
  int64_t start = 0;
  for (int i = 0; i < n->ninputs; i++) {
    eng_tensor *x = n->inputs[i];
    if (x->requires_grad) {
      gin[i] = contiguous_grad(eng_narrow(g, d, start, x->shape[d]));
      if (!gin[i]) return -1;
    }
    start += x->shape[d];
  }
  return 0;
}

/* xs[0..n) all alike but along dim -> their concatenation along dim.
 * A graph node holds at most NODE_MAX_INPUTS inputs, so a differentiable
 * cat of more tensors is built as a cat of cats (extra copies only then). */
eng_tensor *eng_cat(eng_tensor **xs, int n, int dim) {
  if (n < 1) return eng_errorf("cat: no tensors given");
  eng_tensor *x0 = xs[0];
  if (x0->ndim == 0) return eng_errorf("cat: tensor 1 is a scalar (0-dim); cat needs at least 1 dim");
  int d = norm_dim("cat", x0, dim);
  if (d < 0) return NULL;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    eng_tensor *x = xs[i];
    if (x->dtype != x0->dtype)
      return eng_errorf("cat: tensor %d is %s but tensor 1 is %s", i + 1, eng_dtype_name(x->dtype),
                        eng_dtype_name(x0->dtype));
    bool same = x->ndim == x0->ndim;
    for (int k = 0; same && k < x->ndim; k++)
      if (k != d && x->shape[k] != x0->shape[k]) same = false;
    if (!same)
      return eng_errorf("cat: tensor %d is %s but tensor 1 is %s (only dim %d may differ)", i + 1, shp(x),
                        shp(x0), d + 1);
    total += x->shape[d];
  }
  if (n > NODE_MAX_INPUTS && needs_grad(n, xs)) {
    /* groups of up to NODE_MAX_INPUTS, then a cat of the groups */
    int ng = (n + NODE_MAX_INPUTS - 1) / NODE_MAX_INPUTS;
    eng_tensor *groups[64];
    eng_tensor **gs = ng <= (int)(sizeof groups / sizeof *groups) ? groups : malloc(sizeof *gs * (size_t)ng);
    if (!gs) return eng_errorf("cat: out of memory");
    int made = 0;
    eng_tensor *out = NULL;
    for (; made < ng; made++) {
      int k0 = made * NODE_MAX_INPUTS, k = n - k0 < NODE_MAX_INPUTS ? n - k0 : NODE_MAX_INPUTS;
      gs[made] = eng_cat(xs + k0, k, d);
      if (!gs[made]) break;
    }
    if (made == ng) out = eng_cat(gs, ng, d);
    for (int i = 0; i < made; i++) eng_tensor_release(gs[i]);
    if (gs != groups) free(gs);
    return out;
  }
  int64_t shape[ENG_MAX_DIMS];
  memcpy(shape, x0->shape, sizeof(int64_t) * (size_t)x0->ndim);
  shape[d] = total;
  eng_tensor *out = tensor_new(x0->dtype, x0->ndim, shape);
  if (!out) return NULL;
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    shape[d] = xs[i]->shape[d];
    eng_tensor *slice = tensor_view(out, out->ndim, shape, out->stride, start * out->stride[d]);
    if (!slice) {
      eng_tensor_release(out);
      return NULL;
    }
    eng_copy_(slice, xs[i]);
    eng_tensor_release(slice);
    start += xs[i]->shape[d];
  }
  eng_node *node = node_attach(out, "cat", cat_backward, n, xs);
  if (node) node->iparams[0] = d;
  return out;
}

/* ---- gather ---------------------------------------------------------------------------
 * index (I0..In) and x (X0..Xn) with Ik <= Xk for k != dim:
 *   out[i..] = x[i.. with i_dim replaced by index[i..] - base]
 * Rows run over all but the last dim of index; within a row the last dim is
 * walked with x's last stride (dim != last) or gives the gathered position
 * (dim == last). */

typedef struct {
  int ndim, dim;
  int64_t ishape[ENG_MAX_DIMS]; /* index (= out) shape */
  int64_t xstride[ENG_MAX_DIMS];
  int64_t nrows, inner;
} gplan;

static void gplan_make(gplan *p, const eng_tensor *idx, const int64_t *xstride, int dim) {
  p->ndim = idx->ndim;
  p->dim = dim;
  memcpy(p->ishape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
  memcpy(p->xstride, xstride, sizeof(int64_t) * (size_t)idx->ndim);
  p->inner = idx->shape[idx->ndim - 1];
  p->nrows = p->inner ? idx->numel / p->inner : 0;
}

/* x offset of row r's element 0, not counting the gathered dim */
static int64_t grow_off(const gplan *p, int64_t r) {
  int64_t off = 0;
  for (int i = p->ndim - 2; i >= 0; i--) {
    int64_t c = r % p->ishape[i];
    r /= p->ishape[i];
    if (i != p->dim) off += c * p->xstride[i];
  }
  return off;
}

#define GATHER_KERNELS(SFX, TY)                                                 \
  static void gather_##SFX(const gplan *p, const TY *x, const int64_t *idx, TY *out) { \
    int last = p->ndim - 1;                                                    \
    int64_t sl = p->xstride[last], sd = p->xstride[p->dim];                    \
    int nt = p->nrows * p->inner >= PARALLEL_MIN ? omp_get_max_threads() : 1;  \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t r = 0; r < p->nrows; r++) {                                   \
      const TY *xr = x + grow_off(p, r);                                       \
      const int64_t *ir = idx + r * p->inner;                                  \
      TY *o = out + r * p->inner;                                              \
      if (p->dim == last)                                                      \
        for (int64_t j = 0; j < p->inner; j++) o[j] = xr[ir[j] * sl];          \
      else                                                                     \
        for (int64_t j = 0; j < p->inner; j++) o[j] = xr[j * sl + ir[j] * sd]; \
    }                                                                          \
  }                                                                            \
  /* gx[...] += g at the gathered positions; rows are disjoint in gx only    \
   * when the gathered dim is the last one, so only then in parallel */      \
  static void scatter_add_##SFX(const gplan *p, const TY *g, const int64_t *idx, TY *gx) { \
    int last = p->ndim - 1;                                                    \
    int64_t sl = p->xstride[last], sd = p->xstride[p->dim];                    \
    int nt = p->dim == last && p->nrows * p->inner >= PARALLEL_MIN ? omp_get_max_threads() : 1; \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")   \
    for (int64_t r = 0; r < p->nrows; r++) {                                   \
      TY *xr = gx + grow_off(p, r);                                            \
      const int64_t *ir = idx + r * p->inner;                                  \
      const TY *gr = g + r * p->inner;                                         \
      if (p->dim == last)                                                      \
        for (int64_t j = 0; j < p->inner; j++) xr[ir[j] * sl] += gr[j];        \
      else                                                                     \
        for (int64_t j = 0; j < p->inner; j++) xr[j * sl + ir[j] * sd] += gr[j]; \
    }                                                                          \
  }

GATHER_KERNELS(f32, float)
GATHER_KERNELS(f64, double)

/* d gather: g scatter-added into zeros of x's shape at the gathered
 * positions (repeated indices add up). extra: the indices; iparams[0]: dim */
static int gather_backward(eng_node *n, eng_tensor *g, eng_tensor **gin) {
  eng_tensor *x = n->inputs[0];
  eng_tensor *gx = eng_zeros(x->dtype, x->ndim, x->shape);
  eng_tensor *gc = gx ? eng_contiguous(g) : NULL;
  if (!gc) {
    eng_tensor_release(gx);
    return -1;
  }
  gplan p;
  gplan_make(&p, g, gx->stride, (int)n->iparams[0]);
  if (x->dtype == ENG_DTYPE_F64)
    scatter_add_f64(&p, tensor_ptr(gc), n->extra, tensor_ptr(gx));
  else
    scatter_add_f32(&p, tensor_ptr(gc), n->extra, tensor_ptr(gx));
  eng_tensor_release(gc);
  gin[0] = gx;
  return 0;
}

/* x (X0..Xn), index (I0..In) of any float dtype -> out (I0..In) in x's dtype */
eng_tensor *eng_gather(eng_tensor *x, int dim, eng_tensor *index, int64_t index_base) {
  int d = norm_dim("gather", x, dim);
  if (d < 0) return NULL;
  if (index->ndim != x->ndim)
    return eng_errorf("gather: index is %s but x is %s (they need the same number of dims)", shp(index),
                      shp(x));
  for (int k = 0; k < x->ndim; k++)
    if (k != d && index->shape[k] > x->shape[k])
      return eng_errorf("gather: index %s is larger than x %s at dim %d (only dim %d, the gathered one, may "
                        "be larger)",
                        shp(index), shp(x), k + 1, d + 1);
  int64_t *idx = read_indices("gather", index, index_base, 0, x->shape[d], false);
  if (!idx) return NULL;
  eng_tensor *out = tensor_new(x->dtype, index->ndim, index->shape);
  if (!out) {
    free(idx);
    return NULL;
  }
  if (out->numel > 0) {
    gplan p;
    gplan_make(&p, index, x->stride, d);
    if (x->dtype == ENG_DTYPE_F64)
      gather_f64(&p, tensor_ptr(x), idx, tensor_ptr(out));
    else
      gather_f32(&p, tensor_ptr(x), idx, tensor_ptr(out));
  }
  eng_node *n = node_attach(out, "gather", gather_backward, 1, &x);
  if (n) {
    n->iparams[0] = d;
    n->extra = idx;
  } else {
    free(idx);
  }
  return out;
}
