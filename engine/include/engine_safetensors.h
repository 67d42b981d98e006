/* engine_safetensors.h — part of the public API, included by engine.h:
 * reading and writing safetensors files (the format of Hugging Face
 * checkpoints).
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON (an
 * object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]},
 * plus an optional "__metadata__" object of strings), then the data area the
 * offsets point into, tensors stored row-major and little-endian.
 *
 * Reading: eng_safetensors_open maps the file and validates the whole header
 * before anything is trusted (header length within the file and at most
 * 100000000 bytes; every entry's dtype, shape and offsets well formed; sizes
 * that match dtype and shape with no 64-bit overflow; offsets that tile the
 * data area exactly: sorted, contiguous, not overlapping, ending at its end).
 * A refused file gives NULL and a message naming the file, the tensor and
 * the rule, such as
 *   "model.safetensors: tensor 'h.0.attn.c_attn.weight': data_offsets [0, 100]
 *    but F32 [5,6] needs 120 bytes".
 * Every dtype of the format is listed; F32, F64, F16 and BF16 load (into
 * float32 or float64 tensors), the others are a clear error on load.
 *
 * Writing: eng_safetensors_save writes what PyTorch's and Hugging Face's
 * readers accept, laid out as the reference writer lays it out (tensors by
 * descending dtype width, then by name; header padded with spaces so the data
 * starts at a multiple of 8), atomically: PATH.tmp-<pid> is written, synced
 * and renamed over PATH, and the directory is synced.
 *
 * Not here: sharded checkpoints (model.safetensors.index.json), which the Lua
 * library handles on top of these functions. Hosts are assumed little-endian.
 */
#ifndef ENGINE_SAFETENSORS_H
#define ENGINE_SAFETENSORS_H

#ifdef __cplusplus
extern "C" {
#endif

/* the most header bytes a file may declare (the reference reader's limit) */
#define ENG_ST_MAX_HEADER 100000000ull

typedef struct eng_safetensors eng_safetensors;

/* Map and validate a file. NULL on failure with a message; errno then tells
 * why: EINVAL when the file was read and refused, otherwise the system's
 * reason for not reading it (ENOENT for a missing file, ...). */
eng_safetensors *eng_safetensors_open(const char *path);
/* The same over a caller's buffer, which must outlive the handle (nothing is
 * copied); `name` stands for the file in messages. */
eng_safetensors *eng_safetensors_open_memory(const void *data, size_t size, const char *name);
void eng_safetensors_close(eng_safetensors *f); /* NULL is fine */

/* the path (or name) given to open */
const char *eng_safetensors_path(const eng_safetensors *f);

/* tensors, sorted by name (strcmp order); i in [0, count) */
int eng_safetensors_count(const eng_safetensors *f);
const char *eng_safetensors_name(const eng_safetensors *f, int i); /* NULL out of range */

typedef struct {
  const char *dtype;     /* as the header spells it: "F32", "BF16", "I64", ... */
  int ndim;
  const int64_t *shape;  /* ndim entries; valid while the handle is open */
  uint64_t data_begin;   /* offsets into the data area, as in the header */
  uint64_t data_end;
  bool loadable;         /* F32, F64, F16 or BF16 with at most ENG_MAX_DIMS dims */
} eng_st_info;
/* 0, or -1 with "PATH: no tensor named 'x'" */
int eng_safetensors_info(const eng_safetensors *f, const char *name, eng_st_info *info);

/* __metadata__, sorted by key */
int eng_safetensors_metadata_count(const eng_safetensors *f);
const char *eng_safetensors_metadata_key(const eng_safetensors *f, int i); /* NULL out of range */
const char *eng_safetensors_metadata_value(const eng_safetensors *f, const char *key); /* NULL if absent */

/* A new tensor of dtype dt holding the named tensor's values (F16 and BF16
 * widened exactly, F64 into float32 rounded to nearest). */
eng_tensor *eng_safetensors_load(eng_safetensors *f, const char *name, eng_dtype dt);

/* Write n tensors (any layout; float32 as F32, float64 as F64, so a save and
 * a load give back identical bits) and nmeta metadata pairs. Names must be
 * distinct UTF-8 strings other than "__metadata__". Returns 0, or -1 with a
 * message; errno is then EINVAL for refused arguments, otherwise the system's
 * reason the file could not be written (and no temporary file is left). */
int eng_safetensors_save(const char *path, int n, const char *const *names, eng_tensor *const *tensors,
                         int nmeta, const char *const *keys, const char *const *values);
/* The same, every tensor converted to `dtype` on the way: "F32", "F64",
 * "F16" or "BF16" (round to nearest even; NULL keeps each tensor's own). */
int eng_safetensors_save_as(const char *path, int n, const char *const *names, eng_tensor *const *tensors,
                            int nmeta, const char *const *keys, const char *const *values,
                            const char *dtype);

/* Replace path's contents with n bytes, atomically as above. 0 or -1 (errno
 * set, message naming the path). */
int eng_st_write_file_atomic(const char *path, const void *data, size_t n);

/* Element width in bits of a dtype the format defines ("F4" is 4, "BOOL" 8),
 * 0 for a name it does not define. */
int eng_st_dtype_bits(const char *dtype);

/* Scalar conversions (IEEE binary16 and bfloat16). Widening is exact (an
 * F16 NaN comes back quiet, as the x86 instruction and PyTorch give it).
 * Narrowing rounds to nearest even and overflows to infinity, as PyTorch
 * does; any NaN becomes the quiet NaN with its sign kept (0x7E00/0xFE00 for
 * F16, 0x7FC0/0xFFC0 for BF16). */
float eng_st_f16_to_f32(uint16_t h);
float eng_st_bf16_to_f32(uint16_t b);
uint16_t eng_st_f32_to_f16(float f);
uint16_t eng_st_f32_to_bf16(float f);
/* the same over n values */
void eng_st_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void eng_st_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

#ifdef __cplusplus
}
#endif

#endif
