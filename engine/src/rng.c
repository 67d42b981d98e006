/* rng.c — the seeded generator: xoshiro256** seeded through splitmix64.
 * Integer-only state updates, so a seed gives the same stream on every
 * machine; normals come from Box-Muller on two uniforms (one normal per
 * pair, so the state is just the four words). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

struct eng_rng {
  uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void eng_rng_seed(eng_rng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

eng_rng *eng_rng_new(uint64_t seed) {
  eng_rng *r = malloc(sizeof *r);
  if (!r) return eng_errorf("rng: out of memory");
  eng_rng_seed(r, seed);
  return r;
}

void eng_rng_free(eng_rng *r) { free(r); }

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t eng_rng_next_u64(eng_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double eng_rng_uniform(eng_rng *r) { return (double)(eng_rng_next_u64(r) >> 11) * 0x1.0p-53; }

double eng_rng_normal(eng_rng *r) {
  double u1 = 1.0 - eng_rng_uniform(r); /* (0,1] so log is finite */
  double u2 = eng_rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void eng_rng_get_state(const eng_rng *r, uint64_t state[4]) {
  for (int i = 0; i < 4; i++) state[i] = r->s[i];
}
void eng_rng_set_state(eng_rng *r, const uint64_t state[4]) {
  for (int i = 0; i < 4; i++) r->s[i] = state[i];
  if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) r->s[0] = 1; /* all-zero state is a fixed point */
}

eng_rng *eng_default_rng(void) {
  static eng_rng def = {{0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL, 1}};
  return &def;
}
