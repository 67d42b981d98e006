/* sampling.h — the next-token chooser of the decode loop (sampling.c):
 * greedy, or sampling with temperature, top-k and top-p, returning each
 * chosen token's log-probability under the distribution actually sampled.
 * Internal to the engine and its binding (lua/binding_sampling.c); not part
 * of the public API in engine/include. */
#ifndef ENGINE_SAMPLING_H
#define ENGINE_SAMPLING_H

#include "engine.h"

typedef struct {
  double temperature; /* > 0 samples softmax(logits / temperature); 0 is greedy */
  int64_t top_k;      /* keep the top_k largest logits (and ties with the k-th); 0 is off */
  double top_p;       /* keep the smallest most-likely set with mass >= top_p; 1 is off */
} eng_sample_opts;

/* logits (B,V) float32 or float64, any strides. u (B): one uniform in [0,1)
 * per row, which picks the token by inverse CDF over the kept tokens taken
 * in vocabulary order (u may be NULL when greedy). Fills ids (B) with
 * 0-based token ids and logprobs (B) with
 *   sampling: log p(id) of softmax(logits/T) renormalised over the kept set
 *   greedy:   the first argmax, and log_softmax(logits)[id] (temperature 1,
 *             nothing filtered: the model's own log-probability)
 * Returns 0, or -1 with an error naming the option, the shape or the row
 * (a NaN or +inf logit, or every logit -inf). Records no graph. */
int eng_sample_logits(eng_tensor *logits, const eng_sample_opts *opts, const double *u, int64_t *ids,
                      double *logprobs);

/* exp(x) for x <= 0 (and -inf) as the sampler computes it: vectorizable,
 * within 1 ulp of exp for x >= -708, and 0 below; exposed for tests */
double sampling_exp_le0(double x);

#endif
