/* internal.h — what the engine's own files share: the tensor and graph-node
 * layouts, error helpers, the storage pool, and the strided iterator.
 * Nothing here is public API. */
#ifndef ENGINE_INTERNAL_H
#define ENGINE_INTERNAL_H

#include "engine.h"

#include <stdarg.h>

/* ---- storage (reference counted, allocated from the pool) -------------- */
typedef struct eng_storage {
  int64_t refcount;
  size_t nbytes;
  void *data;
} eng_storage;

eng_storage *storage_new(size_t nbytes);
void storage_release(eng_storage *s);

void *pool_alloc(size_t nbytes);          /* 64-byte aligned, never NULL-on-0 */
void pool_free(void *p, size_t nbytes);

/* ---- graph nodes -------------------------------------------------------- */
typedef struct eng_node eng_node;
/* gout has the output's shape; fill gin[i] (new references) for each input i
 * with node->inputs[i] requiring grad; leave the others NULL. Runs with grad
 * mode off. Returns 0, or -1 with an error set. */
typedef int (*node_backward_fn)(eng_node *n, eng_tensor *gout, eng_tensor **gin);

#define NODE_MAX_INPUTS 4
#define NODE_MAX_SAVED 4

struct eng_node {
  const char *name;
  node_backward_fn backward;
  int ninputs;
  eng_tensor *inputs[NODE_MAX_INPUTS];   /* retained */
  eng_tensor *saved[NODE_MAX_SAVED];     /* retained; detached */
  double dparams[4];
  int64_t iparams[4];
  void *extra;                           /* freed with free() */
  void (*aux_fn)(void);                  /* an op's own use, e.g. a kernel */
  bool freed;
  /* backward bookkeeping */
  eng_tensor *grad_accum;
  uint64_t mark;
  int pending;
};

struct eng_tensor {
  int64_t refcount;
  eng_dtype dtype;
  int ndim;
  int64_t shape[ENG_MAX_DIMS];
  int64_t stride[ENG_MAX_DIMS];
  int64_t offset; /* elements */
  int64_t numel;
  eng_storage *storage;
  bool requires_grad;
  eng_tensor *grad;
  eng_node *grad_fn; /* owned; NULL for leaves */
};

/* ---- float32 matrix product (gemm_f32.c) -------------------------------- */
/* C (M,N) <- alpha·op(A)·op(B) + beta·C, row-major; op transposes when ta/tb.
 * The engine's AVX-512 kernel where the CPU has it (results independent of
 * the thread count), cblas_sgemm otherwise or with ENGINE_SGEMM=openblas. */
void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
              const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
bool gemm_f32_engine_kernel(void);
void gemm_f32_set_engine_kernel(bool on); /* for benchmarks and tests */

/* ---- the fused LM head (ops_linear_logprobs.c) ---------------------------- */
/* the budget in bytes for keeping the (K,V) logits from forward to backward:
 * 0 never keeps them, < 0 restores the default (256 MiB); returns the previous
 * budget. For tests and benchmarks. */
int64_t linear_logprobs_set_keep_budget(int64_t bytes);

/* ---- errors ------------------------------------------------------------- */
/* sets the message; returns NULL so `return eng_errorf(...)` works */
void *eng_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int eng_errorf_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* shape as "[2,3]" in a rotating static thread-local buffer (8 slots),
 * so several can appear in one message */
const char *shp(const eng_tensor *t);
const char *shp_dims(int ndim, const int64_t *shape);
/* the 1-based coordinates "[2,1]" of a row-major flat index into t */
const char *pos_str(const eng_tensor *t, int64_t flat);

/* ---- tensor helpers ----------------------------------------------------- */
static inline size_t dtype_size(eng_dtype dt) { return dt == ENG_DTYPE_F64 ? 8 : 4; }
/* new contiguous tensor of dt and shape; NULL with an error on bad shape */
eng_tensor *tensor_new(eng_dtype dt, int ndim, const int64_t *shape);
eng_tensor *tensor_new_like(const eng_tensor *t);
/* a contiguous copy of t outside autodiff (always a new tensor) */
eng_tensor *plain_copy(eng_tensor *t);
/* t made contiguous outside autodiff (t itself retained when it is) */
eng_tensor *contiguous_nograd(eng_tensor *t);
/* a view: shares x's storage with the given layout */
eng_tensor *tensor_view(eng_tensor *x, int ndim, const int64_t *shape,
                        const int64_t *stride, int64_t offset);
static inline void *tensor_ptr(const eng_tensor *t) {
  return (char *)t->storage->data + (size_t)t->offset * dtype_size(t->dtype);
}
/* normalise a possibly negative dim; -1 with an error naming op if bad */
int norm_dim(const char *op, const eng_tensor *x, int dim);
int check_float_same_dtype(const char *op, const eng_tensor *a, const eng_tensor *b);
/* integral value of an index tensor's element (any float dtype) */
int64_t index_at(const eng_tensor *idx, int64_t flat);
/* contiguous float64 copy of idx values read as integers, validated to be
 * integral and within [lo, hi) after subtracting base (hi < 0: no upper
 * bound check). NULL with error naming op. Caller frees. */
int64_t *read_indices(const char *op, const eng_tensor *idx, int64_t base,
                      int64_t lo, int64_t hi, bool allow_negative_as_skip);

/* ---- autodiff helpers --------------------------------------------------- */
/* true when grad mode is on and any of the inputs requires grad */
bool needs_grad(int n, eng_tensor *const *inputs);
/* attach a node to out recording inputs; returns the node (for saved
 * tensors/params) or NULL when no grad is needed. On allocation failure
 * returns NULL with out unchanged (it then simply carries no graph). */
eng_node *node_attach(eng_tensor *out, const char *name, node_backward_fn bw,
                      int ninputs, eng_tensor *const *inputs);
/* save a detached alias of t in slot i */
void node_save(eng_node *n, int i, eng_tensor *t);
/* sum g over broadcast dims so it has `shape`; returns a new reference
 * (g itself retained when no reduction is needed) */
eng_tensor *sum_to_shape(eng_tensor *g, int ndim, const int64_t *shape);

/* ---- broadcasting ------------------------------------------------------- */
int broadcast_shapes(const char *op, int na, const int64_t *sa, int nb,
                     const int64_t *sb, int *nout, int64_t *out);
/* strides of t seen through broadcasting to (ndim, shape) (0 where broadcast) */
void broadcast_strides(const eng_tensor *t, int ndim, const int64_t *shape, int64_t *strides);

/* ---- the strided iterator ------------------------------------------------
 * Walks `nops` operands of one logical shape (operand 0 is usually the
 * output) and calls fn on runs along the innermost dim:
 *   fn(ctx, len, ptrs, inner_strides)   ptrs are byte pointers.
 * Dims are coalesced first; the work is split across OpenMP threads when
 * numel is large enough to pay. */
#define ITER_MAX_OPS 4
typedef void (*iter_fn)(void *ctx, int64_t len, char **ptrs, const int64_t *strides);
void iter_run(int ndim, const int64_t *shape, int nops, char **base,
              int64_t strides[][ENG_MAX_DIMS], const size_t *elsize,
              iter_fn fn, void *ctx);
/* elements below which kernels stay on one thread */
#define PARALLEL_MIN 32768

/* in-place add used by gradient accumulation: dst += src (same shape) */
int tensor_add_inplace(eng_tensor *dst, eng_tensor *src);

#endif
