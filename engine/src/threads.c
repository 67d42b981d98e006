/* threads.c — the engine's worker threads: one thread count for the
 * engine's OpenMP kernels and OpenBLAS (with Debian's OpenMP build of
 * OpenBLAS both run on the same libgomp pool, so they never spin against
 * each other), and the floating-point mode of those threads
 * (engine_fpmode.h: flushing subnormals to zero).
 *
 * How the mode reaches every thread that runs a kernel. MXCSR is per
 * thread. eng_set_flush_denormal sets it in the calling thread, then runs
 * one parallel region of omp_get_max_threads() threads in which each sets
 * its own. That covers every thread the pool holds: libgomp ends a pool's
 * surplus threads when a smaller team starts, so after that region the pool
 * is exactly its team. Threads created later (a larger team, after
 * omp_set_num_threads or OMP_NUM_THREADS) are made by pthread_create from
 * the thread that opens the region, and a new thread inherits its creator's
 * floating-point environment (POSIX; Linux copies MXCSR on clone), so they
 * start in the mode of the calling thread. eng_set_threads applies the mode
 * again all the same (cheap, and safe under OpenMP runtimes that keep idle
 * threads docked). No check at each kernel's first use is needed, and none
 * is made: it would cost a parallel region per op.
 * Until eng_set_flush_denormal is first called, nothing here touches MXCSR,
 * so a host program's own setting (-ffast-math's startup code sets FTZ/DAZ)
 * stands. The mode belongs to the calling thread's pool: another thread
 * that runs engine ops calls eng_set_flush_denormal itself.
 *
 * Not here: thread affinity, OpenBLAS's own (non-OpenMP) thread server. */
#include "internal.h"

#include "engine_fpmode.h"

#include <cblas.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#define MXCSR_DAZ 0x0040u /* denormals are zero: subnormal inputs read as 0 */
#define MXCSR_FTZ 0x8000u /* flush to zero: subnormal results become 0 */
#else
#define HAVE_MXCSR 0
#endif

/* -1 until eng_set_flush_denormal is called, then 0 (off) or 1 (on) */
static atomic_int flush_mode = -1;

#if HAVE_MXCSR
/* whether MXCSR accepts DAZ: bit 6 of MXCSR_MASK in the FXSAVE area (a zero
 * mask means the default 0xffbf, without DAZ). Setting a bit the CPU lacks
 * would fault, so check once. */
static bool daz_supported(void) {
  static atomic_int known = 0; /* 0 unknown, 1 yes, 2 no */
  int k = atomic_load(&known);
  if (k == 0) {
    struct {
      _Alignas(16) unsigned char b[512];
    } area;
    memset(&area, 0, sizeof area);
    __asm__ volatile("fxsave %0" : "=m"(area));
    uint32_t mask;
    memcpy(&mask, area.b + 28, sizeof mask);
    if (mask == 0) mask = 0xffbfu;
    k = (mask & MXCSR_DAZ) ? 1 : 2;
    atomic_store(&known, k);
  }
  return k == 1;
}

static void set_this_thread(bool on) {
  unsigned c = _mm_getcsr();
  c = on ? (c | MXCSR_FTZ | MXCSR_DAZ) : (c & ~(MXCSR_FTZ | MXCSR_DAZ));
  _mm_setcsr(c);
}

/* the calling thread, then every thread of its pool */
static void apply_mode(bool on) {
  set_this_thread(on);
  if (omp_in_parallel()) return; /* a nested region would be this thread alone */
  int n = omp_get_max_threads();
#pragma omp parallel num_threads(n)
  set_this_thread(on);
}
#endif

bool eng_set_flush_denormal(bool on) {
#if HAVE_MXCSR
  if (!daz_supported()) return false;
  atomic_store(&flush_mode, on ? 1 : 0);
  apply_mode(on);
  return true;
#else
  (void)on;
  return false;
#endif
}

bool eng_get_flush_denormal(void) {
#if HAVE_MXCSR
  unsigned both = MXCSR_FTZ | MXCSR_DAZ;
  return (_mm_getcsr() & both) == both;
#else
  return false;
#endif
}

void eng_set_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
#if HAVE_MXCSR
  int m = atomic_load(&flush_mode);
  if (m >= 0) apply_mode(m == 1);
#endif
}

int eng_get_threads(void) { return omp_get_max_threads(); }
