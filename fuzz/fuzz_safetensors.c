/* fuzz_safetensors.c — a libFuzzer target for the safetensors reader (and,
 * for inputs it accepts, the writer): any bytes must be either refused with
 * a message or opened, listed and loaded without reading outside the input;
 * an accepted file saved again must load back with the same names, shapes
 * and bits.
 *
 * Build (from the repository root) and run:
 *   mkdir -p build-fuzz && clang -g -O1 -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *     -Iengine/include -Iengine/src fuzz/fuzz_safetensors.c engine/src/?*.c \
 *     $(pkg-config --cflags --libs jansson libpcre2-8 openblas) -lm -o build-fuzz/fuzz_safetensors
 *   mkdir -p /tmp/st-corpus && cp tests/fixtures/safetensors/?*.safetensors /tmp/st-corpus/
 *   OMP_NUM_THREADS=1 ./build-fuzz/fuzz_safetensors /tmp/st-corpus -max_total_time=300 -max_len=4096
 * Round trips write to $FUZZ_TMPDIR (default /dev/shm, else /tmp).
 *
 * Not a test CMake runs: it needs clang's libFuzzer. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_path[512];
static volatile double sink;

static void setup(void) {
  if (tmp_path[0]) return;
  const char *dir = getenv("FUZZ_TMPDIR");
  if (!dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(tmp_path, sizeof tmp_path, "%s/fuzz_safetensors-%ld.safetensors", dir, (long)getpid());
}

#define MAX_LOAD 4096 /* elements: enough for the fuzzer's inputs, bounded for speed */

/* save what f holds (its loadable tensors as float32, its metadata), load
 * it back and compare */
static void round_trip(eng_safetensors *f) {
  int n = eng_safetensors_count(f), m = eng_safetensors_metadata_count(f);
  const char **names = calloc((size_t)n + 1, sizeof *names);
  eng_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
  const char **keys = calloc((size_t)m + 1, sizeof *keys), **vals = calloc((size_t)m + 1, sizeof *vals);
  int k = 0;
  for (int i = 0; i < n; i++) {
    eng_st_info in;
    const char *name = eng_safetensors_name(f, i);
    if (eng_safetensors_info(f, name, &in) || !in.loadable) continue;
    eng_tensor *t = eng_safetensors_load(f, name, ENG_DTYPE_F32);
    if (!t) continue;
    names[k] = name;
    ts[k++] = t;
  }
  for (int i = 0; i < m; i++) {
    keys[i] = eng_safetensors_metadata_key(f, i);
    vals[i] = eng_safetensors_metadata_value(f, keys[i]);
  }
  if (eng_safetensors_save(tmp_path, k, names, ts, m, keys, vals)) {
    fprintf(stderr, "save refused an opened file's contents: %s\n", eng_last_error());
    __builtin_trap();
  }
  {
    eng_safetensors *g = eng_safetensors_open(tmp_path);
    if (!g || eng_safetensors_count(g) != k || eng_safetensors_metadata_count(g) != m) __builtin_trap();
    for (int i = 0; i < k; i++) {
      eng_tensor *u = eng_safetensors_load(g, names[i], ENG_DTYPE_F32);
      if (!u || eng_tensor_numel(u) != eng_tensor_numel(ts[i]) || eng_tensor_ndim(u) != eng_tensor_ndim(ts[i]) ||
          memcmp(eng_tensor_data(u), eng_tensor_data(ts[i]), sizeof(float) * (size_t)eng_tensor_numel(u)))
        __builtin_trap();
      eng_tensor_release(u);
    }
    for (int i = 0; i < m; i++)
      if (strcmp(eng_safetensors_metadata_value(g, keys[i]), vals[i])) __builtin_trap();
    eng_safetensors_close(g);
    unlink(tmp_path);
  }
  for (int i = 0; i < k; i++) eng_tensor_release(ts[i]);
  free(names);
  free(ts);
  free(keys);
  free(vals);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup();
  eng_safetensors *f = eng_safetensors_open_memory(data, size, "fuzz.safetensors");
  if (!f) {
    if (!eng_last_error()[0]) __builtin_trap();
    return 0;
  }
  int n = eng_safetensors_count(f);
  double sum = 0;
  int small = 1;
  for (int i = 0; i < n; i++) {
    const char *name = eng_safetensors_name(f, i);
    eng_st_info in;
    if (!name || eng_safetensors_info(f, name, &in)) __builtin_trap();
    int64_t numel = 1;
    for (int d = 0; d < in.ndim; d++) numel = in.shape[d] && numel > INT64_MAX / in.shape[d] ? INT64_MAX : numel * in.shape[d];
    if (numel > MAX_LOAD) small = 0;
    if (!in.loadable || numel > MAX_LOAD) continue;
    for (int dt = 0; dt < 2; dt++) {
      eng_tensor *t = eng_safetensors_load(f, name, dt ? ENG_DTYPE_F64 : ENG_DTYPE_F32);
      if (!t) __builtin_trap();
      for (int64_t j = 0; j < eng_tensor_numel(t); j++) sum += eng_tensor_get_flat(t, j);
      eng_tensor_release(t);
    }
  }
  for (int i = 0; i < eng_safetensors_metadata_count(f); i++)
    if (!eng_safetensors_metadata_value(f, eng_safetensors_metadata_key(f, i))) __builtin_trap();
  if (small) round_trip(f);
  eng_safetensors_close(f);
  sink = sum; /* keep the loads */
  return 0;
}
