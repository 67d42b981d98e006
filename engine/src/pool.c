/* pool.c — storage memory, reused across steps.
 *
 * Freed blocks are kept in free lists keyed by a size class and handed out
 * again, so a training loop that allocates the same activations every step
 * stops faulting in fresh pages after its first step. Classes are exact
 * multiples of 64 bytes below 64 KiB and quarter-power-of-two steps above,
 * so a block wastes at most ~19%. The cache never holds more than the peak
 * of live bytes (at least 256 MiB, eng_memory_set_cache_floor): batches of ever-changing shapes would
 * otherwise fill it with blocks of sizes that never come back. Reaching
 * that, the cache is emptied back to the system and starts again (a loop of
 * fixed shapes never gets there); eng_memory_trim() empties it on demand. Thread-safe through one mutex (allocation is per op,
 * not per element). */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct block {
  struct block *next;
} block;

#define NCLASSES 1025 /* small classes 1..1024 */
static block *free_lists[NCLASSES];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static eng_memory_stats stats;

/* class index and the size it stands for */
static int size_class(size_t n, size_t *rounded) {
  if (n <= 65536) {
    size_t c = (n + 63) / 64;
    if (c == 0) c = 1;
    *rounded = c * 64;
    return (int)c; /* 1 .. 1024 */
  }
  int e = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
  size_t base = (size_t)1 << e, quarter = base / 4;
  size_t q = (n - base + quarter - 1) / quarter; /* 1..4 */
  *rounded = base + q * quarter;
  return NCLASSES + (e - 16) * 4 + (int)q - 1;
}

#define NBIG 256
static block *big_lists[NBIG];

static block **class_list(int c) {
  if (c < NCLASSES) return &free_lists[c];
  return c - NCLASSES < NBIG ? &big_lists[c - NCLASSES] : NULL;
}

void *pool_alloc(size_t nbytes) {
  size_t rounded;
  int c = size_class(nbytes, &rounded);
  block **list = class_list(c);
  void *p = NULL;
  pthread_mutex_lock(&pool_lock);
  if (list && *list) {
    block *b = *list;
    *list = b->next;
    p = b;
    stats.bytes_cached -= rounded;
    stats.reuses++;
  }
  stats.allocs++;
  stats.bytes_in_use += rounded;
  if (stats.bytes_in_use > stats.peak_in_use) stats.peak_in_use = stats.bytes_in_use;
  pthread_mutex_unlock(&pool_lock);
  if (!p) {
    p = aligned_alloc(64, rounded);
    if (!p) {
      pthread_mutex_lock(&pool_lock);
      stats.bytes_in_use -= rounded;
      pthread_mutex_unlock(&pool_lock);
    }
  }
  return p;
}

static void drain_all_locked(void);
static size_t cache_floor = (size_t)256 << 20;

void eng_memory_set_cache_floor(size_t bytes) {
  pthread_mutex_lock(&pool_lock);
  cache_floor = bytes;
  pthread_mutex_unlock(&pool_lock);
}

void pool_free(void *p, size_t nbytes) {
  if (!p) return;
  size_t rounded;
  int c = size_class(nbytes, &rounded);
  block **list = class_list(c);
  pthread_mutex_lock(&pool_lock);
  stats.bytes_in_use -= rounded;
  size_t limit = stats.peak_in_use > cache_floor ? stats.peak_in_use : cache_floor;
  if (list && stats.bytes_cached + rounded > limit) drain_all_locked();
  if (list) {
    block *b = p;
    b->next = *list;
    *list = b;
    stats.bytes_cached += rounded;
  }
  pthread_mutex_unlock(&pool_lock);
  if (!list) free(p);
}

void eng_memory_get_stats(eng_memory_stats *s) {
  pthread_mutex_lock(&pool_lock);
  *s = stats;
  pthread_mutex_unlock(&pool_lock);
}

static void drain(block **list) {
  while (*list) {
    block *b = *list;
    *list = b->next;
    free(b);
  }
}

static void drain_all_locked(void) {
  for (int i = 0; i < NCLASSES; i++) drain(&free_lists[i]);
  for (int i = 0; i < NBIG; i++) drain(&big_lists[i]);
  stats.bytes_cached = 0;
}

void eng_memory_trim(void) {
  pthread_mutex_lock(&pool_lock);
  drain_all_locked();
  pthread_mutex_unlock(&pool_lock);
}

eng_storage *storage_new(size_t nbytes) {
  eng_storage *s = malloc(sizeof *s);
  if (!s) return eng_errorf("out of memory (storage header)");
  s->data = pool_alloc(nbytes ? nbytes : 1);
  if (!s->data) {
    free(s);
    return eng_errorf("out of memory: could not allocate %zu bytes", nbytes);
  }
  s->refcount = 1;
  s->nbytes = nbytes ? nbytes : 1;
  return s;
}

void storage_release(eng_storage *s) {
  if (!s) return;
  if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
    pool_free(s->data, s->nbytes);
    free(s);
  }
}
