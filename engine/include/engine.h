/* engine.h — the one public header of the engine's C core.
 *
 * Tensors (float32 for training, float64 for gradient checks), reverse-mode
 * autodiff, and the kernels a transformer needs. No Lua here: the binding in
 * lua/ is a client of this header like any C program.
 *
 * Conventions
 *   - Dims and indices are 0-based in C (the Lua binding converts); a negative
 *     dim counts from the end. Error messages number dims from 1, as the
 *     Lua user sees them.
 *   - Every function that can fail returns NULL (or a non-zero status) and
 *     leaves a message in eng_last_error(), such as
 *     "matmul: a is [2,3], b is [2,3]: inner dims differ". Nothing here
 *     aborts or prints on bad input.
 *   - A function returning eng_tensor * returns a new reference; release it
 *     with eng_tensor_release. Arguments are borrowed.
 *   - Ops record themselves for backward when grad mode is on and an input
 *     requires grad.
 */
#ifndef ENGINE_H
#define ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ENG_VERSION "0.1.0"
#define ENG_MAX_DIMS 8
/* reduce over every element (eng_sum, eng_mean, eng_max) */
#define ENG_ALL_DIMS INT32_MIN

typedef enum { ENG_DTYPE_F32 = 0, ENG_DTYPE_F64 = 1 } eng_dtype;

typedef struct eng_tensor eng_tensor;
typedef struct eng_rng eng_rng;

/* ---- errors ----------------------------------------------------------- */
const char *eng_last_error(void);
void eng_clear_error(void);

/* ---- lifetime and metadata -------------------------------------------- */
eng_tensor *eng_tensor_retain(eng_tensor *t);
void eng_tensor_release(eng_tensor *t);
eng_dtype eng_tensor_dtype(const eng_tensor *t);
int eng_tensor_ndim(const eng_tensor *t);
const int64_t *eng_tensor_shape(const eng_tensor *t);
const int64_t *eng_tensor_strides(const eng_tensor *t); /* in elements */
int64_t eng_tensor_numel(const eng_tensor *t);
bool eng_tensor_is_contiguous(const eng_tensor *t);
/* pointer to element 0 (after the view's offset); the layout is the strides */
void *eng_tensor_data(eng_tensor *t);
/* element at a row-major flat index of the logical shape, as double */
double eng_tensor_get_flat(const eng_tensor *t, int64_t i);
/* a 64-bit hash of dtype, shape and values (in logical order): the same
 * tensor gives the same hash on every machine; for cache keys */
uint64_t eng_tensor_hash(const eng_tensor *t, uint64_t seed);
/* "[2,3]" into buf; returns buf */
char *eng_shape_str(const eng_tensor *t, char *buf, size_t len);
const char *eng_dtype_name(eng_dtype dt);

/* ---- creation --------------------------------------------------------- */
eng_tensor *eng_empty(eng_dtype dt, int ndim, const int64_t *shape);
eng_tensor *eng_zeros(eng_dtype dt, int ndim, const int64_t *shape);
eng_tensor *eng_full(eng_dtype dt, int ndim, const int64_t *shape, double v);
/* values: numel doubles in row-major order */
eng_tensor *eng_from_doubles(eng_dtype dt, int ndim, const int64_t *shape,
                             const double *values);
eng_tensor *eng_arange(eng_dtype dt, int64_t n); /* 0 .. n-1 */
eng_tensor *eng_randn(eng_rng *rng, eng_dtype dt, int ndim, const int64_t *shape);
eng_tensor *eng_rand(eng_rng *rng, eng_dtype dt, int ndim, const int64_t *shape);
/* differentiable copy in another dtype (returns x itself, retained, if same) */
eng_tensor *eng_to_dtype(eng_tensor *x, eng_dtype dt);
/* differentiable contiguous copy (x retained if already contiguous) */
eng_tensor *eng_contiguous(eng_tensor *x);
/* a new tensor sharing x's storage, cut from the graph */
eng_tensor *eng_detach(eng_tensor *x);
/* in place, outside autodiff: dst <- src (broadcast), dst <- v */
int eng_copy_(eng_tensor *dst, eng_tensor *src);
int eng_fill_(eng_tensor *dst, double v);
/* make leaf t use src's storage and layout from now on (same shape and
 * dtype; t keeps its identity, requires_grad and grad): how an optimizer
 * moves parameters into one flat block */
int eng_tensor_set_data(eng_tensor *t, eng_tensor *src);
/* in place, outside autodiff: y <- beta*y + alpha*x (x broadcast to y) */
int eng_axpby_(eng_tensor *y, double alpha, eng_tensor *x, double beta);

/* ---- random generator (same stream for the same seed on every machine) - */
eng_rng *eng_rng_new(uint64_t seed);
void eng_rng_free(eng_rng *r);
void eng_rng_seed(eng_rng *r, uint64_t seed);
uint64_t eng_rng_next_u64(eng_rng *r);
double eng_rng_uniform(eng_rng *r);  /* [0,1) with 53 random bits */
double eng_rng_normal(eng_rng *r);
/* state for checkpoints: 4 words */
void eng_rng_get_state(const eng_rng *r, uint64_t state[4]);
void eng_rng_set_state(eng_rng *r, const uint64_t state[4]);
/* the process-wide generator used when no other is given */
eng_rng *eng_default_rng(void);

/* ---- autodiff --------------------------------------------------------- */
int eng_set_requires_grad(eng_tensor *t, bool on); /* leaves only */
bool eng_requires_grad(const eng_tensor *t);
bool eng_is_leaf(const eng_tensor *t);
/* borrowed; NULL when none */
eng_tensor *eng_grad(eng_tensor *t);
/* replace t's grad (NULL clears it); g must have t's shape and dtype.
 * Later backward calls accumulate into g in place, so g may be a view
 * into a flat gradient block. */
int eng_set_grad(eng_tensor *t, eng_tensor *g);
/* walk the graph under `root` once, accumulate into the leaves' grads, then
 * free the graph. grad_out NULL means ones (root must then be a scalar). */
int eng_backward(eng_tensor *root, eng_tensor *grad_out);
/* returns the previous setting */
bool eng_set_grad_enabled(bool on);
bool eng_grad_enabled(void);
/* Anomaly checks, to find where a NaN or inf first appears: while on,
 * every op scans its output, and backward scans each
 * gradient it computes; the first op whose result holds a non-finite value
 * is remembered ("log", "backward of softmax"). Costs one pass
 * over each result: for re-running a failed step, not for training. */
void eng_anomaly_enable(bool on);
/* NULL when nothing non-finite was seen since enabling */
const char *eng_anomaly_first(void);
/* name of the op that made t ("leaf" for leaves, "freed" after backward) */
const char *eng_grad_fn_name(const eng_tensor *t);

/* ---- element-wise (broadcasting) -------------------------------------- */
eng_tensor *eng_add(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_sub(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_mul(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_div(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_pow(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_maximum(eng_tensor *a, eng_tensor *b);
eng_tensor *eng_minimum(eng_tensor *a, eng_tensor *b);
/* a 0-dim tensor of a number, in x's dtype: for Lua numbers in operators */
eng_tensor *eng_scalar_like(eng_tensor *x, double v);
eng_tensor *eng_neg(eng_tensor *x);
eng_tensor *eng_exp(eng_tensor *x);
eng_tensor *eng_log(eng_tensor *x);
eng_tensor *eng_sigmoid(eng_tensor *x);
eng_tensor *eng_logsigmoid(eng_tensor *x);
eng_tensor *eng_relu(eng_tensor *x);
eng_tensor *eng_tanh(eng_tensor *x);
eng_tensor *eng_sqrt(eng_tensor *x);
eng_tensor *eng_abs(eng_tensor *x);
eng_tensor *eng_gelu(eng_tensor *x); /* tanh approximation, as GPT-2 */
eng_tensor *eng_silu(eng_tensor *x);
/* lo/hi may be -INFINITY/INFINITY for "no bound" */
eng_tensor *eng_clamp(eng_tensor *x, double lo, double hi);
/* cond != 0 picks a, else b; no gradient flows to cond */
eng_tensor *eng_where(eng_tensor *cond, eng_tensor *a, eng_tensor *b);

/* ---- reductions ------------------------------------------------------- */
/* dim may be ENG_ALL_DIMS; keepdim keeps the reduced dim with size 1 */
eng_tensor *eng_sum(eng_tensor *x, int dim, bool keepdim);
eng_tensor *eng_mean(eng_tensor *x, int dim, bool keepdim);
/* max: *indices (may be NULL) receives 0-based positions (float tensor of
 * x's dtype) when dim is not ENG_ALL_DIMS */
eng_tensor *eng_max(eng_tensor *x, int dim, bool keepdim, eng_tensor **indices);
eng_tensor *eng_logsumexp(eng_tensor *x, int dim, bool keepdim);
/* a row of all -inf gives softmax 0 everywhere and log_softmax -inf:
 * defined, and the gradient through such a row is 0 */
eng_tensor *eng_softmax(eng_tensor *x, int dim);
eng_tensor *eng_log_softmax(eng_tensor *x, int dim);

/* ---- shape ------------------------------------------------------------ */
/* one entry of shape may be -1 (inferred); a view when the layout allows */
eng_tensor *eng_reshape(eng_tensor *x, int ndim, const int64_t *shape);
eng_tensor *eng_transpose(eng_tensor *x, int d1, int d2);           /* view */
eng_tensor *eng_permute(eng_tensor *x, const int *dims);            /* view */
eng_tensor *eng_narrow(eng_tensor *x, int dim, int64_t start, int64_t len); /* view */
/* broadcast x to shape (view with zero strides) */
eng_tensor *eng_expand(eng_tensor *x, int ndim, const int64_t *shape);
eng_tensor *eng_cat(eng_tensor **xs, int n, int dim);
/* out[i][j] = x[i][index[i][j]] along dim (index holds integral values;
 * index_base is subtracted first: 1 for Lua's 1-based positions) */
eng_tensor *eng_gather(eng_tensor *x, int dim, eng_tensor *index, int64_t index_base);

/* ---- linear algebra --------------------------------------------------- */
/* (...,M,K)·(...,K,N) -> (...,M,N), batch dims broadcast; 1-D operands as in
 * numpy. Transposed views go to sgemm as flags, not copies. */
eng_tensor *eng_matmul(eng_tensor *a, eng_tensor *b);

/* ---- transformer ops -------------------------------------------------- */
/* weight (V,C), ids (any shape, integral values in [0,V)) -> (ids..., C) */
eng_tensor *eng_embedding(eng_tensor *weight, eng_tensor *ids);
/* over the last dim; weight/bias (C) may be NULL */
eng_tensor *eng_layer_norm(eng_tensor *x, eng_tensor *weight, eng_tensor *bias, double eps);
eng_tensor *eng_rms_norm(eng_tensor *x, eng_tensor *weight, double eps);
/* inverted dropout: kept values scaled by 1/(1-p); p = 0 returns x */
eng_tensor *eng_dropout(eng_tensor *x, double p, eng_rng *rng);
/* q (B,H,T,D), k and v (B,Hkv,S,D) with H a multiple of Hkv (grouped-query);
 * key_mask (B,S) or NULL: 1 for real keys, 0 for padding; causal aligns the
 * last query with the last key. scale <= 0 means 1/sqrt(D).
 * A query row with no visible key yields zeros. -> (B,H,T,D) */
eng_tensor *eng_attention(eng_tensor *q, eng_tensor *k, eng_tensor *v,
                          eng_tensor *key_mask, bool causal, double scale);
/* logits (...,V), targets (...) integral; targets == ignore_index are
 * skipped; mean over the rest (0 when none) */
eng_tensor *eng_cross_entropy(eng_tensor *logits, eng_tensor *targets, int64_t ignore_index);
/* logits (...,V), labels (...) -> (...): log softmax(logits)[label];
 * a label < 0 gives 0. Never builds a second (...,V) tensor. */
eng_tensor *eng_token_logprobs(eng_tensor *logits, eng_tensor *labels);

/* ---- threads and memory ----------------------------------------------- */
/* sets the engine's OpenMP threads and OpenBLAS's together */
void eng_set_threads(int n);
int eng_get_threads(void);
/* what runs float32 matrix products: "engine-avx512" (results independent
 * of the thread count) or "openblas" (no AVX-512F, or ENGINE_SGEMM=openblas) */
const char *eng_matmul_backend(void);
typedef struct {
  size_t bytes_in_use;   /* held by live storages */
  size_t bytes_cached;   /* freed storages kept for reuse */
  size_t peak_in_use;
  uint64_t allocs, reuses;
} eng_memory_stats;
void eng_memory_get_stats(eng_memory_stats *s);
void eng_memory_trim(void); /* return the cached blocks to the system */
/* the cache of freed blocks holds at most max(floor, peak bytes in use);
 * reaching it, it is emptied (default floor 256 MiB) */
void eng_memory_set_cache_floor(size_t bytes);

/* ---- gradient check --------------------------------------------------- */
/* fn builds a scalar from inputs (with grad on). Compares the analytic
 * gradient of every input that requires grad with central differences.
 * Returns 0 when all agree within atol + rtol*|numeric|, 1 when not, -1 on
 * error; report (may be NULL) gets the worst mismatch. */
typedef eng_tensor *(*eng_scalar_fn)(eng_tensor **inputs, void *ctx);
int eng_gradcheck(eng_scalar_fn fn, void *ctx, eng_tensor **inputs, int n,
                  double eps, double atol, double rtol, char *report, size_t report_len);

#ifdef __cplusplus
}
#endif

/* the rest of the API, by topic */
#include "engine_optim.h"
#include "engine_safetensors.h"
#include "engine_tokenizer.h"
#include "engine_fused.h"
#include "engine_fpmode.h"
#include "engine_linear.h"

#endif
