/* engine_fpmode.h — part of the public API, included by engine.h: the
 * floating-point mode of the threads that run the engine's kernels.
 *
 * Flushing subnormals (|x| < 2^-126 in float32, < 2^-1022 in float64) to
 * zero, as torch.set_flush_denormal does: the CPU's FTZ bit (subnormal
 * results become 0) and DAZ bit (subnormal inputs read as 0) in MXCSR. On
 * Intel CPUs every operation on a subnormal takes a microcode assist; a
 * backward pass whose incoming gradient is subnormal (a saturated
 * log-sigmoid in DPO) then runs 10-25x slower, for values that AdamW's eps
 * makes meaningless anyway.
 *
 * The mode is per thread: eng_set_flush_denormal sets it in the calling
 * thread and in every thread of its OpenMP pool (the engine's kernels and
 * OpenBLAS share it), and the pool's later threads inherit it (threads.c
 * says how). It also governs plain C (and Lua) arithmetic in the calling
 * thread. x86-64 only; elsewhere a no-op.
 *
 * Not here: the rounding mode, floating-point exceptions, x87. */
#ifndef ENGINE_FPMODE_H
#define ENGINE_FPMODE_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* on: flush subnormals to zero (FTZ and DAZ); off: IEEE subnormals. Call it
 * outside a parallel region. Returns whether the CPU supports the mode
 * (false, changing nothing, off x86-64). */
bool eng_set_flush_denormal(bool on);
/* whether the calling thread flushes subnormals (both bits set) */
bool eng_get_flush_denormal(void);

#ifdef __cplusplus
}
#endif

#endif
