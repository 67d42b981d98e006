/* threads.c — one thread count for the engine's OpenMP kernels and
 * OpenBLAS. With Debian's OpenMP build of OpenBLAS both run on the same
 * pool, so they never spin against each other. */
#include "internal.h"

#include <cblas.h>
#include <omp.h>

void eng_set_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int eng_get_threads(void) { return omp_get_max_threads(); }
