/* engine_optim.h — part of the public API, included by engine.h: optimizers
 * over one flat parameter block.
 *
 * eng_optim_new gathers float32 leaf parameters into one contiguous block
 * and moves each onto its slice (eng_tensor_set_data: the tensor keeps its
 * identity, so a model's references stay valid); each parameter's grad
 * becomes the matching slice of one flat gradient block, into which
 * backward accumulates in place. The optimizer's moments have the same
 * layout, so a step is one loop over four arrays and a checkpoint is a few
 * writes. Parameters that take weight decay come first in the blocks, the
 * others after them, so decay is a range, not a per-element mask.
 *
 * The updates are those of torch.optim.AdamW and torch.optim.SGD (PyTorch
 * 1.13, amsgrad = maximize = false), computed in float32 with the same
 * operations in the same order (bit-exact with PyTorch's CPU kernels on an
 * AVX2+FMA machine); the step's scalars (bias corrections) in double. Every
 * update is element-wise and the gradient norm is summed over fixed chunks
 * in double, combined in chunk order, so results do not depend on the
 * thread count.
 *
 * Unlike PyTorch, every parameter takes part in every step: one that got no
 * gradient since zero_grad is updated as if its gradient were zero (PyTorch
 * skips parameters whose grad is None). A parameter belongs to one optimizer
 * at a time: the last one made over it. Views taken of a parameter before
 * the optimizer was made still show its old storage: take views after (or
 * per forward, as ops do).
 *
 * Not here: learning-rate schedules and the choice of which parameters
 * decay (lua/engine/optim.lua does those), mixed precision, sharding. */
#ifndef ENGINE_OPTIM_H
#define ENGINE_OPTIM_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ENG_OPTIM_ADAMW = 0, ENG_OPTIM_SGD = 1 } eng_optim_kind;

typedef struct {
  eng_optim_kind kind;
  double lr;           /* >= 0 */
  double weight_decay; /* >= 0; AdamW: p -= lr*wd*p before the update;
                          SGD: wd*p added to the gradient (L2) */
  /* AdamW */
  double beta1, beta2; /* in [0, 1) */
  double eps;          /* >= 0 */
  /* SGD */
  double momentum;     /* >= 0; 0: plain SGD, no buffer */
  double dampening;
  bool nesterov;       /* needs momentum > 0 and dampening == 0 */
} eng_optim_config;

typedef struct eng_optim eng_optim;

/* where one parameter lives in the flat blocks */
typedef struct {
  int index;         /* its position in the list given to eng_optim_new (0-based) */
  int64_t offset;    /* its first element in the flat blocks (0-based) */
  int64_t numel;
  bool decay;        /* takes weight decay */
  eng_tensor *param; /* borrowed */
} eng_optim_slot;

/* PyTorch's defaults: AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 0.01; SGD lr 1e-3, no momentum, no weight decay */
eng_optim_config eng_optim_defaults(eng_optim_kind kind);

/* params: n float32 leaves that require grad; names (may be NULL, or hold
 * NULLs) name them in messages; decay[i] says whether params[i] takes weight
 * decay (decay NULL: all do). A tensor listed twice is taken once, at its
 * first place. Decayed parameters are laid out first, each group in the
 * given order. A parameter's existing grad is copied into the grad block.
 * Errors (op "AdamW" or "SGD"): an empty list, a parameter that is not
 * float32, not a leaf or does not require grad, an invalid setting. */
eng_optim *eng_optim_new(const eng_optim_config *cfg, int n, eng_tensor *const *params,
                         const char *const *names, const bool *decay);
void eng_optim_free(eng_optim *o);

const eng_optim_config *eng_optim_get_config(const eng_optim *o);
double eng_optim_lr(const eng_optim *o);
int eng_optim_set_lr(eng_optim *o, double lr); /* a finite lr >= 0 */

/* the flat blocks (borrowed, 1-D, eng_optim_numel elements). moment:
 * "exp_avg" and "exp_avg_sq" (AdamW), "momentum_buffer" (SGD with
 * momentum); NULL (no error) for a name this optimizer does not keep */
eng_tensor *eng_optim_params(eng_optim *o);
eng_tensor *eng_optim_grads(eng_optim *o);
eng_tensor *eng_optim_moment(eng_optim *o, const char *name);
int64_t eng_optim_numel(const eng_optim *o);
int64_t eng_optim_decay_numel(const eng_optim *o); /* elements [0, this) decay */
int eng_optim_num_slots(const eng_optim *o);
int eng_optim_slot_info(const eng_optim *o, int i, eng_optim_slot *out); /* i in flat order */

/* updates done so far (PyTorch's state["step"]); set by checkpoint loading */
int64_t eng_optim_step_count(const eng_optim *o);
int eng_optim_set_step_count(eng_optim *o, int64_t step);
/* steps skipped because a gradient was inf or nan */
int64_t eng_optim_skipped(const eng_optim *o);

/* Each call below first checks that every parameter still lives on its
 * slice (an error otherwise) and re-attaches a grad that was dropped
 * (x:zero_grad(), x.grad = nil: the slice is zeroed) or replaced by another
 * tensor (copied into the slice). */

/* every gradient to 0: one fill of the grad block */
int eng_optim_zero_grad(eng_optim *o);
/* sqrt(sum g^2) over the whole grad block, summed in double over fixed
 * chunks: inf or nan when a gradient is */
int eng_optim_grad_norm(eng_optim *o, double *norm);
/* as torch.nn.utils.clip_grad_norm_: *norm gets the norm before clipping;
 * when it is finite and above max_norm the grads are scaled by
 * max_norm / (norm + 1e-6). A non-finite norm leaves the grads as they are.
 * max_norm must be > 0; INFINITY gives the norm without clipping. */
int eng_optim_clip_grad_norm(eng_optim *o, double max_norm, double *norm);
/* grads *= s (e.g. 1/k after k accumulated micro-batches) */
int eng_optim_scale_grads(eng_optim *o, double s);
/* one update with the current lr. When any gradient is inf or nan nothing
 * changes (parameters, moments, step count), the skip is counted, and
 * *updated (may be NULL) is false. */
int eng_optim_step(eng_optim *o, bool *updated);

#ifdef __cplusplus
}
#endif

#endif
