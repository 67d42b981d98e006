/* engine_fused.h — part of the public API, included by engine.h: fused ops
 * that do the work of several composed ones without building their large
 * intermediate tensors.
 *
 * eng_linear_logprobs is the log-probability of each position's label under
 * a linear language-model head,
 *     logp[n] = h[n]·W[y_n] − logsumexp_v h[n]·W[v],
 * i.e. token_logprobs(matmul(h, Wᵀ), labels), computed over tiles of
 * (rows × vocabulary) so that the (N,V) logits never exist at once: the
 * forward keeps only the per-row logsumexp, the backward recomputes each
 * tile's logits, unless a gradient is recorded and the (K,V) logits of the
 * K kept rows fit 256 MiB: then the forward keeps them for the backward (the
 * same bits, one gemm fewer). Rows whose label is < 0 (prompt, padding)
 * never reach the head. Results are deterministic for a given thread count
 * and chunk size.
 *
 * Not here: label smoothing, a bias on the head, a softmax temperature. */
#ifndef ENGINE_FUSED_H
#define ENGINE_FUSED_H

#ifdef __cplusplus
extern "C" {
#endif

/* h (...,C), w (V,C) (row v is token v's output embedding, as a tied or
 * untied head stores it), labels (...) with integral values (0-based token
 * ids; a label < 0 gives 0 and no gradient) -> (...) in h's dtype.
 * Gradients flow to h and w, none to labels. A tile is chunk_rows kept
 * positions by chunk_vocab tokens; 0 picks the default for either (up to
 * 1024 rows, and as many tokens as make about 4M logits: 16 MB in
 * float32). h and w share a dtype (float32, or float64 for gradient
 * checks); labels may be either. */
eng_tensor *eng_linear_logprobs(eng_tensor *h, eng_tensor *w, eng_tensor *labels, int64_t chunk_rows,
                                int64_t chunk_vocab);

#ifdef __cplusplus
}
#endif

#endif
