/* engine_linear.h — part of the public API, included by engine.h: the linear
 * layer as one op,
 *     y = x·op(W) + b,   op(W) = W (transpose_w false) or Wᵀ (true),
 * the work of eng_matmul then eng_add in one graph node that keeps only x
 * and W (and b) for its backward: never its output, nor a pre-bias product.
 * The bias is written into the output first and the product added onto it
 * by the same gemm (beta = 1), so there is no separate pass for the bias.
 *
 * Not here: activations fused into the epilogue, a batched (per-entry)
 * weight, integer types. */
#ifndef ENGINE_LINEAR_H
#define ENGINE_LINEAR_H

#ifdef __cplusplus
extern "C" {
#endif

/* x (...,in) with any leading dims (none: a vector), W (in,out) when
 * transpose_w is false (GPT-2's Conv1D stores it so) or (out,in) when true
 * (torch's Linear), b (out) or NULL -> (...,out) in x's dtype. x, W and b
 * share a dtype (float32, or float64 for gradient checks); any of them may
 * be a strided view (read in place when BLAS can, else copied). Gradients
 * flow to each of x, W, b that requires grad; W's comes back in W's own
 * memory layout (a transposed view when W is one). */
eng_tensor *eng_linear(eng_tensor *x, eng_tensor *w, eng_tensor *b, bool transpose_w);

#ifdef __cplusplus
}
#endif

#endif
