/* test_safetensors.c — the safetensors reader and writer.
 *
 * Every validation rule gets a deliberately broken file, built here, and
 * must be refused with its exact message (never read out of bounds: the
 * ASan build runs this too). Values come from committed fixtures made by
 * scripts/make_safetensors_fixtures.py with PyTorch (F16/BF16 widening, F64
 * rounding, the writer's F16/BF16 narrowing), from the reference library's
 * own test vectors (huggingface/safetensors, safetensors/src/tensor.rs:
 * test_serialization, test_serialization_forced_alignement, test_empty), and
 * from IEEE arithmetic done here in double (round to nearest even). Saves
 * must round-trip bit for bit and leave no temporary files. */
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

static char tmp_root[256];

/* the fixtures directory, found from this file's path */
static const char *fixture(const char *name) {
  static char buf[4][1024];
  static int slot;
  char *out = buf[slot++ % 4];
  const char *me = __FILE__;
  const char *cut = strstr(me, "tests/c/test_safetensors.c");
  snprintf(out, 1024, "%.*stests/fixtures/safetensors/%s", cut ? (int)(cut - me) : 0, me, name);
  return out;
}

static const char *tmp_path(const char *name) {
  static char buf[4][1024];
  static int slot;
  char *out = buf[slot++ % 4];
  snprintf(out, 1024, "%s/%s", tmp_root, name);
  return out;
}

/* a file image: 8-byte length of `header`, the header, then data_len bytes */
typedef struct {
  unsigned char *p;
  size_t len;
} image;

static image make_image(const char *header, size_t data_len) {
  size_t n = strlen(header);
  image im = {malloc(8 + n + data_len + 1), 8 + n + data_len};
  uint64_t n64 = n;
  memcpy(im.p, &n64, 8);
  memcpy(im.p + 8, header, n);
  for (size_t i = 0; i < data_len; i++) im.p[8 + n + i] = (unsigned char)(i * 7 + 1);
  return im;
}

/* open the image (exactly its bytes, in a buffer of exactly that size, so
 * ASan sees any read past it); expect refusal with exactly `msg` */
static void expect_refused_at(int line, image im, const char *msg) {
  unsigned char *exact = malloc(im.len ? im.len : 1);
  memcpy(exact, im.p, im.len);
  eng_clear_error();
  errno = 0;
  eng_safetensors *f = eng_safetensors_open_memory(exact, im.len, "t.safetensors");
  check_count++;
  if (f || errno != EINVAL || strcmp(eng_last_error(), msg)) {
    check_failures++;
    fprintf(stderr, "%s:%d: expected refusal\n    \"%s\"\n got %s (errno %d)\n    \"%s\"\n", __FILE__, line, msg,
            f ? "success" : "failure", errno, f ? "" : eng_last_error());
  }
  eng_safetensors_close(f);
  free(exact);
  free(im.p);
}
#define EXPECT_REFUSED(im, msg) expect_refused_at(__LINE__, (im), (msg))

static eng_safetensors *open_image_at(int line, image im, unsigned char **keep) {
  *keep = malloc(im.len);
  memcpy(*keep, im.p, im.len);
  free(im.p);
  eng_safetensors *f = eng_safetensors_open_memory(*keep, im.len, "t.safetensors");
  check_count++;
  if (!f) {
    check_failures++;
    fprintf(stderr, "%s:%d: expected the file to open, got: %s\n", __FILE__, line, eng_last_error());
  }
  return f;
}
#define OPEN_IMAGE(im, keep) open_image_at(__LINE__, (im), (keep))

#define CHECK_STR(a, b)                                                                           \
  do {                                                                                            \
    const char *a_ = (a), *b_ = (b);                                                              \
    check_count++;                                                                                \
    if (!a_ || !b_ || strcmp(a_, b_)) {                                                           \
      check_failures++;                                                                           \
      fprintf(stderr, "%s:%d: %s is \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a,           \
              a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                            \
    }                                                                                             \
  } while (0)

static const char *fmt(const char *f, ...) {
  static char buf[4][1024];
  static int slot;
  char *out = buf[slot++ % 4];
  va_list ap;
  va_start(ap, f);
  vsnprintf(out, 1024, f, ap);
  va_end(ap);
  return out;
}

static unsigned char *read_all(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *p = malloc((size_t)n + 1);
  *len = fread(p, 1, (size_t)n, fp);
  fclose(fp);
  return p;
}

/* names in tmp_root, sorted, joined with spaces */
static const char *listing(void) {
  static char out[4096];
  char names[64][256];
  int n = 0;
  DIR *d = opendir(tmp_root);
  struct dirent *e;
  while (d && (e = readdir(d)) && n < 64)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) snprintf(names[n++], 256, "%s", e->d_name);
  if (d) closedir(d);
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (strcmp(names[j], names[i]) < 0) {
        char t[256];
        memcpy(t, names[i], 256);
        memcpy(names[i], names[j], 256);
        memcpy(names[j], t, 256);
      }
  out[0] = 0;
  for (int i = 0; i < n; i++) snprintf(out + strlen(out), sizeof out - strlen(out), i ? " %s" : "%s", names[i]);
  return out;
}

static void clear_tmp(void) {
  DIR *d = opendir(tmp_root);
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      const char *p = tmp_path(e->d_name);
      if (rmdir(p)) unlink(p);
    }
  if (d) closedir(d);
}

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- the header length ---------------------------------------------------- */

static void test_header_length(void) {
  image im = {malloc(5), 5};
  memset(im.p, 0, 5);
  EXPECT_REFUSED(im, "t.safetensors: file is 5 bytes, too short for the 8-byte header length");

  im = make_image("{}", 0);
  im.len = 0;
  EXPECT_REFUSED(im, "t.safetensors: file is 0 bytes, too short for the 8-byte header length");

  /* claims 100 header bytes, holds 20 */
  im = make_image("{\"a\":1}             ", 0);
  uint64_t n = 100;
  memcpy(im.p, &n, 8);
  EXPECT_REFUSED(im, "t.safetensors: header length 100 runs past the end of the file (28 bytes)");

  /* just over the limit, and the largest 64-bit value (no overflow in 8 + n) */
  im = make_image("{}", 0);
  n = ENG_ST_MAX_HEADER + 1;
  memcpy(im.p, &n, 8);
  EXPECT_REFUSED(im, "t.safetensors: header length 100000001 is over the limit of 100000000 bytes");
  im = make_image("{}", 0);
  n = UINT64_MAX;
  memcpy(im.p, &n, 8);
  EXPECT_REFUSED(im, "t.safetensors: header length 18446744073709551615 is over the limit of 100000000 bytes");
  im = make_image("{}", 0);
  n = UINT64_MAX - 7; /* 8 + n wraps to 0 */
  memcpy(im.p, &n, 8);
  EXPECT_REFUSED(im, "t.safetensors: header length 18446744073709551608 is over the limit of 100000000 bytes");
}

/* ---- the JSON -------------------------------------------------------------- */

#define ENTRY(name, body) "{\"" name "\":" body "}"

static void test_header_json(void) {
  EXPECT_REFUSED(make_image("{\"a\":", 0),
                 "t.safetensors: header is not valid JSON: unexpected token near end of file (line 1, column 5)");
  EXPECT_REFUSED(make_image("", 0),
                 "t.safetensors: header is not valid JSON: '[' or '{' expected near end of file (line 1, column 0)");
  EXPECT_REFUSED(make_image("{\"a\":{}} x", 0),
                 "t.safetensors: header is not valid JSON: end of file expected near 'x' (line 1, column 10)");
  EXPECT_REFUSED(make_image("{\"\xff\":{}}", 0),
                 "t.safetensors: header is not valid JSON: unable to decode byte 0xff near '\"' (line 1, column 2)");
  EXPECT_REFUSED(make_image("[1,2]", 0), "t.safetensors: header is an array, not a JSON object");
  /* jansson would skip a NUL byte: [0,16<NUL>] would read as [0,16] */
  image nul = make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16 ]}"), 16);
  *(unsigned char *)memchr(nul.p + 8, ' ', nul.len - 8) = 0;
  EXPECT_REFUSED(nul, "t.safetensors: header holds a NUL byte at offset 52 (JSON text has none)");
  EXPECT_REFUSED(make_image("\"x\"", 0), "t.safetensors: header is not valid JSON: '[' or '{' expected near '\"x\"' (line 1, column 3)");

  /* duplicate names: short, long (jansson does not quote it), escaped */
  EXPECT_REFUSED(make_image("{\"a\":{},\"a\":{}}", 0),
                 "t.safetensors: header: key 'a' appears twice (line 1, column 11)");
  EXPECT_REFUSED(make_image("{\"h.0.attn.c_attn.weight.long\":{},\n \"h.0.attn.c_attn.weight.long\" :{}}", 0),
                 "t.safetensors: header: key 'h.0.attn.c_attn.weight.long' appears twice (line 2, column 30)");
  EXPECT_REFUSED(make_image("{\"q\\\"a\":{},\"q\\u0022a\":{}}", 0),
                 "t.safetensors: header: key 'q\"a' appears twice (line 1, column 21)");
  EXPECT_REFUSED(make_image("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\"}}", 0),
                 "t.safetensors: header: key 'dtype' appears twice (line 1, column 27)");
  EXPECT_REFUSED(make_image("{\"a\\u0000b\":{}}", 0),
                 "t.safetensors: header is not valid JSON: NUL byte in object key not supported near "
                 "'\"a\\u0000b\"' (line 1, column 11)");

  /* __metadata__ */
  EXPECT_REFUSED(make_image("{\"__metadata__\":[1]}", 0),
                 "t.safetensors: __metadata__ is an array, not an object of strings");
  EXPECT_REFUSED(make_image("{\"__metadata__\":{\"step\":10}}", 0),
                 "t.safetensors: __metadata__ key 'step' holds a number, not a string");
}

/* ---- one entry ------------------------------------------------------------- */

static void test_entries(void) {
  EXPECT_REFUSED(make_image(ENTRY("a", "[1]"), 0), "t.safetensors: tensor 'a': entry is an array, not an object");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"shape\":[],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': no \"dtype\"");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":5,\"shape\":[],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': dtype is a number, not a string");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"Q4\",\"shape\":[],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': unknown dtype 'Q4'");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"f32\",\"shape\":[],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': unknown dtype 'f32'");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': no \"shape\"");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}"), 16),
                 "t.safetensors: tensor 'a': shape is a number, not an array");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}"), 8),
                 "t.safetensors: tensor 'a': shape entry 2 is -1, not a size (an integer >= 0)");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}"), 8),
                 "t.safetensors: tensor 'a': shape entry 1 is 2.5, not a size (an integer >= 0)");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[\"3\"],\"data_offsets\":[0,12]}"), 12),
                 "t.safetensors: tensor 'a': shape entry 1 is \"3\", not a size (an integer >= 0)");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': shape entry 1 is null, not a size (an integer >= 0)");
  /* a shape past what jansson holds (2^64 - 2) is its error */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[18446744073709551614],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: header is not valid JSON: too big integer near '18446744073709551614' (line 1, column 49)");

  /* overflow: elements (2^62 * 4 = 2^64), bits (2^61 * 64), bytes of U8 */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}"), 16),
                 "t.safetensors: tensor 'a': the size of F32 [4611686018427387904,4] overflows 64 bits");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,16]}"), 16),
                 "t.safetensors: tensor 'a': the size of F64 [2305843009213693952] overflows 64 bits");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"U8\",\"shape\":[9223372036854775807,3],\"data_offsets\":[0,16]}"), 16),
                 "t.safetensors: tensor 'a': the size of U8 [9223372036854775807,3] overflows 64 bits");
  /* a 0 anywhere makes the tensor empty: nothing overflows */
  {
    unsigned char *keep;
    eng_safetensors *f = OPEN_IMAGE(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4,0],\"data_offsets\":[0,0]}"), 0), &keep);
    eng_st_info in;
    CHECK(f && eng_safetensors_info(f, "a", &in) == 0 && in.ndim == 3 && in.shape[0] == 4611686018427387904LL);
    eng_safetensors_close(f);
    free(keep);
  }
  /* sub-byte dtypes must fill whole bytes */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}"), 2),
                 "t.safetensors: tensor 'a': F4 [3] is 12 bits, not a whole number of bytes");

  /* data_offsets */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1]}"), 4),
                 "t.safetensors: tensor 'a': no \"data_offsets\"");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}"), 4),
                 "t.safetensors: tensor 'a': data_offsets must be [begin, end], two integers >= 0; got [0]");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}"), 4),
                 "t.safetensors: tensor 'a': data_offsets must be [begin, end], two integers >= 0; got [0,4,8]");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}"), 4),
                 "t.safetensors: tensor 'a': data_offsets must be [begin, end], two integers >= 0; got [-4,0]");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}"), 4),
                 "t.safetensors: tensor 'a': data_offsets must be [begin, end], two integers >= 0; got [0,4.0]");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0-4\"}"), 4),
                 "t.safetensors: tensor 'a': data_offsets must be [begin, end], two integers >= 0; got \"0-4\"");
  /* reversed ("unsorted") offsets */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}"), 8),
                 "t.safetensors: tensor 'a': data_offsets [8, 4] end before they begin");
  /* size against dtype and shape */
  EXPECT_REFUSED(make_image(ENTRY("h.0.attn.c_attn.weight", "{\"dtype\":\"F32\",\"shape\":[5,6],\"data_offsets\":[0,100]}"), 100),
                 "t.safetensors: tensor 'h.0.attn.c_attn.weight': data_offsets [0, 100] but F32 [5,6] needs 120 bytes");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}"), 4),
                 "t.safetensors: tensor 'a': data_offsets [0, 4] but BF16 [] needs 2 bytes");
  /* past the end of the data area (a truncated file) */
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"), 8),
                 "t.safetensors: tensor 'a': data_offsets [0, 16] run past the end of the data area (8 bytes)");
  EXPECT_REFUSED(make_image(ENTRY("a", "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,9223372036854775804]}"), 8),
                 "t.safetensors: tensor 'a': data_offsets [9223372036854775800, 9223372036854775804] run past the end "
                 "of the data area (8 bytes)");
}

/* ---- the tensors together --------------------------------------------------- */

#define F32x2(b, e) "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" #b "," #e "]}"

static void test_tiling(void) {
  EXPECT_REFUSED(make_image("{\"a\":" F32x2(0, 8) ",\"b\":" F32x2(4, 12) "}", 12),
                 "t.safetensors: tensor 'b': data_offsets [4, 12] overlap tensor 'a' at [0, 8]");
  EXPECT_REFUSED(make_image("{\"b\":" F32x2(0, 8) ",\"a\":" F32x2(0, 8) "}", 8),
                 "t.safetensors: tensor 'b': data_offsets [0, 8] overlap tensor 'a' at [0, 8]");
  EXPECT_REFUSED(make_image("{\"a\":" F32x2(0, 8) ",\"b\":" F32x2(12, 20) "}", 20),
                 "t.safetensors: tensor 'b': data_offsets [12, 20] leave a gap of 4 bytes after tensor 'a' (which ends at 8)");
  EXPECT_REFUSED(make_image("{\"a\":" F32x2(4, 12) "}", 12),
                 "t.safetensors: tensor 'a': data_offsets [4, 12] leave a gap of 4 bytes at the start of the data area");
  EXPECT_REFUSED(make_image("{\"a\":" F32x2(0, 8) "}", 12),
                 "t.safetensors: the data area holds 12 bytes, but the tensors end at 8 (tensor 'a'): 4 bytes are "
                 "unaccounted for");
  EXPECT_REFUSED(make_image("{}", 3), "t.safetensors: the header lists no tensors, but the data area holds 3 bytes");
  EXPECT_REFUSED(make_image("{\"__metadata__\":{\"a\":\"b\"}}", 3),
                 "t.safetensors: the header lists no tensors, but the data area holds 3 bytes");

  /* valid: JSON order is not offset order; padding before and after;
   * empty tensors sharing an offset; an unknown key; null metadata */
  unsigned char *keep;
  eng_safetensors *f = OPEN_IMAGE(make_image(" \n{\"c\":" F32x2(8, 16) ",\"__metadata__\":null,\"b\":"
                                             "{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[8,8],\"x\":1},"
                                             "\"a\":" F32x2(0, 8) ",\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[8,8]}}  \t\n",
                                             16),
                                  &keep);
  if (f) {
    CHECK(eng_safetensors_count(f) == 4);
    CHECK_STR(eng_safetensors_name(f, 0), "a");
    CHECK_STR(eng_safetensors_name(f, 3), "e");
    CHECK(eng_safetensors_name(f, 4) == NULL && eng_safetensors_name(f, -1) == NULL);
    CHECK(eng_safetensors_metadata_count(f) == 0);
    eng_st_info in;
    CHECK(eng_safetensors_info(f, "c", &in) == 0 && in.data_begin == 8 && in.data_end == 16 && in.loadable);
    CHECK(eng_safetensors_info(f, "b", &in) == 0 && !strcmp(in.dtype, "I64") && !in.loadable && in.ndim == 2);
    eng_tensor *c = eng_safetensors_load(f, "c", ENG_DTYPE_F32);
    /* bytes 9..16 of the pattern i*7+1 */
    uint32_t want0 = 57u | 64u << 8 | 71u << 16 | 78u << 24;
    CHECK(c && bits_of(((float *)eng_tensor_data(c))[0]) == want0);
    eng_tensor_release(c);
    eng_tensor *e = eng_safetensors_load(f, "e", ENG_DTYPE_F64);
    CHECK(e && eng_tensor_numel(e) == 0 && eng_tensor_ndim(e) == 1);
    eng_tensor_release(e);
  }
  eng_safetensors_close(f);
  free(keep);

  f = OPEN_IMAGE(make_image("{}", 0), &keep);
  CHECK(f && eng_safetensors_count(f) == 0);
  eng_st_info in;
  CHECK(f && eng_safetensors_info(f, "a", &in) == -1);
  CHECK_STR(eng_last_error(), "t.safetensors: no tensor named 'a'");
  eng_safetensors_close(f);
  free(keep);
}

/* ---- files ------------------------------------------------------------------ */

static void test_files(void) {
  const char *missing = tmp_path("missing.safetensors");
  errno = 0;
  CHECK(eng_safetensors_open(missing) == NULL && errno == ENOENT);
  CHECK_STR(eng_last_error(), fmt("%s: cannot open: No such file or directory", missing));
  errno = 0;
  CHECK(eng_safetensors_open(tmp_root) == NULL && errno == EISDIR);
  CHECK_STR(eng_last_error(), fmt("%s: cannot open: Is a directory", tmp_root));
  FILE *fp = fopen(tmp_path("empty.safetensors"), "wb");
  fclose(fp);
  errno = 0;
  CHECK(eng_safetensors_open(tmp_path("empty.safetensors")) == NULL && errno == EINVAL);
  CHECK_STR(eng_last_error(), fmt("%s: file is 0 bytes, too short for the 8-byte header length",
                                  tmp_path("empty.safetensors")));
  /* a truncated copy of a real file */
  size_t len;
  unsigned char *all = read_all(fixture("layout.safetensors"), &len);
  CHECK(all != NULL);
  if (!all) return;
  fp = fopen(tmp_path("cut.safetensors"), "wb");
  fwrite(all, 1, len - 3, fp);
  fclose(fp);
  errno = 0;
  CHECK(eng_safetensors_open(tmp_path("cut.safetensors")) == NULL && errno == EINVAL);
  CHECK_STR(eng_last_error(), fmt("%s: tensor 'c.weight': data_offsets [76, 80] run past the end of the data area (77 bytes)",
                                  tmp_path("cut.safetensors")));
  free(all);
  clear_tmp();
}

/* ---- dtypes, against PyTorch ---------------------------------------------------- */

static void test_fixture_listing(void) {
  eng_safetensors *f = eng_safetensors_open(fixture("dtypes.safetensors"));
  CHECK(f != NULL);
  if (!f) {
    fprintf(stderr, "%s\n", eng_last_error());
    return;
  }
  static const char *names[] = {"bf16", "empty", "f16", "f32", "f64", "i64", "scalar", "u8"};
  static const char *dtypes[] = {"BF16", "F32", "F16", "F32", "F64", "I64", "F32", "U8"};
  static const int loadable[] = {1, 1, 1, 1, 1, 0, 1, 0};
  CHECK(eng_safetensors_count(f) == 8);
  for (int i = 0; i < 8; i++) {
    CHECK_STR(eng_safetensors_name(f, i), names[i]);
    eng_st_info in;
    CHECK(eng_safetensors_info(f, names[i], &in) == 0);
    CHECK_STR(in.dtype, dtypes[i]);
    CHECK(in.loadable == loadable[i]);
  }
  eng_st_info in;
  eng_safetensors_info(f, "f16", &in);
  CHECK(in.ndim == 2 && in.shape[0] == 4 && in.shape[1] == 16 && in.data_end - in.data_begin == 128);
  eng_safetensors_info(f, "scalar", &in);
  CHECK(in.ndim == 0);
  CHECK(eng_safetensors_metadata_count(f) == 2);
  CHECK_STR(eng_safetensors_metadata_key(f, 0), "format");
  CHECK_STR(eng_safetensors_metadata_key(f, 1), "made_by");
  CHECK_STR(eng_safetensors_metadata_value(f, "format"), "pt");
  CHECK_STR(eng_safetensors_metadata_value(f, "made_by"), "scripts/make_safetensors_fixtures.py");
  CHECK(eng_safetensors_metadata_value(f, "nope") == NULL);

  CHECK_FAILS(eng_safetensors_load(f, "i64", ENG_DTYPE_F32),
              "dtypes.safetensors: tensor 'i64' is I64, which the engine cannot load (it loads F32, F64, F16 and BF16)");
  CHECK_FAILS(eng_safetensors_load(f, "u8", ENG_DTYPE_F64), "tensor 'u8' is U8, which the engine cannot load");
  CHECK_FAILS(eng_safetensors_load(f, "nope", ENG_DTYPE_F32), "dtypes.safetensors: no tensor named 'nope'");
  eng_tensor *s = eng_safetensors_load(f, "scalar", ENG_DTYPE_F32);
  CHECK(s && eng_tensor_ndim(s) == 0 && at(s, 0) == 42.5);
  eng_tensor_release(s);
  eng_tensor *e = eng_safetensors_load(f, "empty", ENG_DTYPE_F32);
  CHECK(e && eng_tensor_ndim(e) == 2 && eng_tensor_shape(e)[0] == 0 && eng_tensor_shape(e)[1] == 3);
  eng_tensor_release(e);
  eng_safetensors_close(f);
}

/* the raw float bits of a loaded tensor equal the expected ones */
static void check_same_bits(int line, eng_tensor *got, eng_tensor *want, const char *what) {
  check_count++;
  if (!got || !want || eng_tensor_numel(got) != eng_tensor_numel(want)) {
    check_failures++;
    fprintf(stderr, "%s:%d: %s: missing or numel differs\n", __FILE__, line, what);
    return;
  }
  const float *g = eng_tensor_data(got), *w = eng_tensor_data(want);
  for (int64_t i = 0; i < eng_tensor_numel(got); i++)
    if (bits_of(g[i]) != bits_of(w[i])) {
      check_failures++;
      fprintf(stderr, "%s:%d: %s element %lld: got 0x%08x (%g), expected 0x%08x (%g)\n", __FILE__, line, what,
              (long long)i, bits_of(g[i]), g[i], bits_of(w[i]), w[i]);
      return;
    }
}

static void test_widening_against_torch(void) {
  eng_safetensors *f = eng_safetensors_open(fixture("dtypes.safetensors"));
  eng_safetensors *x = eng_safetensors_open(fixture("dtypes_expected.safetensors"));
  CHECK(f && x);
  if (!f || !x) return;
  static const char *names[] = {"f16", "bf16", "f64"};
  for (int i = 0; i < 3; i++) {
    eng_tensor *got = eng_safetensors_load(f, names[i], ENG_DTYPE_F32);
    eng_tensor *want = eng_safetensors_load(x, names[i], ENG_DTYPE_F32);
    check_same_bits(__LINE__, got, want, names[i]);
    CHECK(got && eng_tensor_ndim(got) == 2);
    /* into float64: the same values, exactly */
    eng_tensor *d = eng_safetensors_load(f, names[i], ENG_DTYPE_F64);
    CHECK(d && eng_tensor_dtype(d) == ENG_DTYPE_F64);
    int same = d != NULL;
    for (int64_t k = 0; same && k < eng_tensor_numel(d); k++) {
      double dv = ((double *)eng_tensor_data(d))[k], fv = ((float *)eng_tensor_data(want))[k];
      if (i < 2) same = (isnan(dv) && isnan(fv)) || dv == fv;
    }
    CHECK(same);
    eng_tensor_release(got);
    eng_tensor_release(want);
    eng_tensor_release(d);
  }
  /* F64 loaded as float64 is the file's bits: 0.1 stays 0.1 */
  eng_tensor *d = eng_safetensors_load(f, "f64", ENG_DTYPE_F64);
  CHECK(d && ((double *)eng_tensor_data(d))[0] == 0.1 && ((double *)eng_tensor_data(d))[4] == 1e-320);
  eng_tensor_release(d);
  eng_safetensors_close(f);
  eng_safetensors_close(x);
}

static void test_narrowing_against_torch(void) {
  eng_safetensors *x = eng_safetensors_open(fixture("dtypes_expected.safetensors"));
  CHECK(x != NULL);
  if (!x) return;
  eng_tensor *src = eng_safetensors_load(x, "src", ENG_DTYPE_F32);
  static const char *kinds[] = {"BF16", "F16"};
  static const char *want_names[] = {"src_bf16", "src_f16"};
  for (int k = 0; k < 2; k++) {
    const char *names[] = {"src"};
    CHECK(eng_safetensors_save_as(tmp_path("n.safetensors"), 1, names, &src, 0, NULL, NULL, kinds[k]) == 0);
    eng_safetensors *f = eng_safetensors_open(tmp_path("n.safetensors"));
    eng_st_info in;
    CHECK(f && eng_safetensors_info(f, "src", &in) == 0 && !strcmp(in.dtype, kinds[k]));
    eng_tensor *got = f ? eng_safetensors_load(f, "src", ENG_DTYPE_F32) : NULL;
    eng_tensor *want = eng_safetensors_load(x, want_names[k], ENG_DTYPE_F32);
    /* widening is one-to-one, so equal float bits mean equal 16-bit bits;
     * a NaN is the canonical quiet NaN (PyTorch's BF16 NaN differs by path) */
    int ok = got && want;
    for (int64_t i = 0; ok && i < eng_tensor_numel(got); i++) {
      float g = ((float *)eng_tensor_data(got))[i], w = ((float *)eng_tensor_data(want))[i];
      if (isnan(w) && k == 0) ok = bits_of(g) == 0x7fc00000u;
      else ok = bits_of(g) == bits_of(w);
      if (!ok) fprintf(stderr, "%s element %lld: got 0x%08x, torch 0x%08x\n", kinds[k], (long long)i, bits_of(g), bits_of(w));
    }
    CHECK(ok);
    eng_tensor_release(got);
    eng_tensor_release(want);
    eng_safetensors_close(f);
  }
  eng_tensor_release(src);
  eng_safetensors_close(x);
  clear_tmp();
}

/* IEEE binary16 by hand: every finite half widens exactly and narrows back;
 * the midpoint between two neighbours rounds to the even one; a hair above
 * or below goes to the nearer one. bfloat16 the same way. */
static void test_scalar_conversions(void) {
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; h++) {
    float v = eng_st_f16_to_f32((uint16_t)h);
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 31 && m) {
      bad += !isnan(v) || eng_st_f32_to_f16(v) != ((h & 0x8000) | 0x7e00);
      continue;
    }
    /* the value from the definition, in double */
    double want = e == 0 ? ldexp((double)m, -24) : e == 31 ? INFINITY : ldexp(1.0 + m / 1024.0, (int)e - 15);
    if (h & 0x8000) want = -want;
    bad += (double)v != want || (signbit(v) != 0) != ((h & 0x8000) != 0);
    bad += eng_st_f32_to_f16(v) != h;
    if ((h & 0x7fff) < 0x7bff) { /* h and its neighbour away from zero are finite */
      double next = eng_st_f16_to_f32((uint16_t)(h + 1));
      float mid = (float)((v + next) / 2); /* exact: 12 significant bits */
      uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
      bad += eng_st_f32_to_f16(mid) != even;
      bad += eng_st_f32_to_f16(nextafterf(mid, 0)) != h;
      bad += eng_st_f32_to_f16(nextafterf(mid, copysignf(INFINITY, mid))) != h + 1;
    }
  }
  CHECK(bad == 0);
  CHECK(eng_st_f32_to_f16(65519.0f) == 0x7bff && eng_st_f32_to_f16(65520.0f) == 0x7c00);
  CHECK(eng_st_f32_to_f16(-1e9f) == 0xfc00 && eng_st_f32_to_f16(float_of(0xffc00001u)) == 0xfe00);
  CHECK(eng_st_f32_to_f16(0x1p-25f) == 0 && eng_st_f32_to_f16(nextafterf(0x1p-25f, 1)) == 1);
  CHECK(eng_st_f32_to_f16(0x1.8p-24f) == 2 && eng_st_f32_to_f16(0x1.4p-23f) == 2); /* ties to even */

  bad = 0;
  for (uint32_t b = 0; b < 0x10000; b++) {
    float v = eng_st_bf16_to_f32((uint16_t)b);
    bad += bits_of(v) != b << 16;
    if (isnan(v)) bad += eng_st_f32_to_bf16(v) != ((b & 0x8000) | 0x7fc0);
    else bad += eng_st_f32_to_bf16(v) != b;
    if (!isnan(v) && !isinf(v) && (b & 0x7fff) < 0x7f7f) {
      float mid = float_of((b << 16) | 0x8000u); /* halfway to the next one away from zero */
      uint16_t even = (b & 1) ? (uint16_t)(b + 1) : (uint16_t)b;
      bad += eng_st_f32_to_bf16(mid) != even;
      bad += eng_st_f32_to_bf16(float_of((b << 16) | 0x8001u)) != (uint16_t)(b + 1);
      bad += eng_st_f32_to_bf16(float_of((b << 16) | 0x7fffu)) != (uint16_t)b;
    }
  }
  CHECK(bad == 0);
  CHECK(eng_st_f32_to_bf16(3.4028235e38f) == 0x7f80); /* rounds up to infinity */
}

/* ---- the writer --------------------------------------------------------------- */

/* the reference library's byte vectors */
static void test_reference_bytes(void) {
  size_t len;
  int64_t shape[4] = {1, 2, 3};
  double vals[6] = {0, 1, 2, 3, 4, 5};
  eng_tensor *t = eng_from_doubles(ENG_DTYPE_F32, 3, shape, vals);
  const char *names[] = {"attn.0"};
  CHECK(eng_safetensors_save(tmp_path("r.safetensors"), 1, names, &t, 0, NULL, NULL) == 0);
  static const unsigned char serialization[] = {
      64,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,  58,  123, 34,  100,
      116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104, 97,  112, 101, 34,  58,  91,
      49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,
      58,  91,  48,  44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,  0,   0,   0,   64,
      0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64};
  unsigned char *got = read_all(tmp_path("r.safetensors"), &len);
  CHECK(got && len == sizeof serialization && !memcmp(got, serialization, len));
  free(got);
  eng_tensor_release(t);

  int64_t shape4[4] = {1, 1, 2, 3};
  t = eng_from_doubles(ENG_DTYPE_F32, 4, shape4, vals);
  names[0] = "attn0";
  CHECK(eng_safetensors_save(tmp_path("r.safetensors"), 1, names, &t, 0, NULL, NULL) == 0);
  static const unsigned char aligned[] = {
      72,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 48,  34,  58,  123, 34,  100, 116,
      121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104, 97,  112, 101, 34,  58,  91,  49,
      44,  49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115,
      34,  58,  91,  48,  44,  50,  52,  93,  125, 125, 32,  32,  32,  32,  32,  32,  32,  0,   0,   0,   0,
      0,   0,   128, 63,  0,   0,   0,   64,  0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64};
  got = read_all(tmp_path("r.safetensors"), &len);
  CHECK(got && len == sizeof aligned && !memcmp(got, aligned, len));
  free(got);
  eng_tensor_release(t);

  CHECK(eng_safetensors_save(tmp_path("r.safetensors"), 0, NULL, NULL, 0, NULL, NULL) == 0);
  static const unsigned char empty[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
  got = read_all(tmp_path("r.safetensors"), &len);
  CHECK(got && len == sizeof empty && !memcmp(got, empty, len));
  free(got);
  const char *k[] = {"framework"}, *v[] = {"pt"};
  CHECK(eng_safetensors_save(tmp_path("r.safetensors"), 0, NULL, NULL, 1, k, v) == 0);
  static const unsigned char meta[] = {40,  0,   0,   0,   0,   0,   0,   0,   123, 34,  95,  95,  109, 101,
                                       116, 97,  100, 97,  116, 97,  95,  95,  34,  58,  123, 34,  102, 114,
                                       97,  109, 101, 119, 111, 114, 107, 34,  58,  34,  112, 116, 34,  125,
                                       125, 32,  32,  32,  32,  32};
  got = read_all(tmp_path("r.safetensors"), &len);
  CHECK(got && len == sizeof meta && !memcmp(got, meta, len));
  free(got);
  CHECK_STR(listing(), "r.safetensors");
  clear_tmp();
}

/* the fixture's layout (F64 before F32, then names; metadata first),
 * reproduced byte for byte from its own tensors */
static void test_layout_matches_fixture(void) {
  eng_safetensors *f = eng_safetensors_open(fixture("layout.safetensors"));
  CHECK(f != NULL);
  if (!f) return;
  int n = eng_safetensors_count(f);
  const char *names[8];
  eng_tensor *ts[8];
  for (int i = 0; i < n; i++) {
    eng_st_info in;
    names[i] = eng_safetensors_name(f, i);
    eng_safetensors_info(f, names[i], &in);
    ts[i] = eng_safetensors_load(f, names[i], strcmp(in.dtype, "F64") ? ENG_DTYPE_F32 : ENG_DTYPE_F64);
  }
  /* metadata given in the other order: the writer sorts it */
  const char *keys[] = {"step", "format"}, *vals[] = {"10", "pt"};
  /* tensors given in reverse order: the writer sorts them */
  const char *rn[8];
  eng_tensor *rt[8];
  for (int i = 0; i < n; i++) {
    rn[i] = names[n - 1 - i];
    rt[i] = ts[n - 1 - i];
  }
  CHECK(eng_safetensors_save(tmp_path("l.safetensors"), n, rn, rt, 2, keys, vals) == 0);
  size_t la, lb;
  unsigned char *a = read_all(fixture("layout.safetensors"), &la), *b = read_all(tmp_path("l.safetensors"), &lb);
  CHECK(a && b && la == lb && !memcmp(a, b, la));
  free(a);
  free(b);
  for (int i = 0; i < n; i++) eng_tensor_release(ts[i]);
  eng_safetensors_close(f);
  clear_tmp();
}

static void test_round_trip(void) {
  eng_rng *r = eng_rng_new(5);
  int64_t s1[2] = {7, 9}, s2[1] = {11};
  eng_tensor *a = eng_randn(r, ENG_DTYPE_F32, 2, s1);
  eng_tensor *b = eng_randn(r, ENG_DTYPE_F64, 1, s2);
  float *pa = eng_tensor_data(a);
  /* specials: a NaN with a payload, -0, the smallest subnormal, infinity */
  pa[0] = float_of(0x7fa12345u);
  pa[1] = -0.0f;
  pa[2] = float_of(1u);
  pa[3] = -INFINITY;
  ((double *)eng_tensor_data(b))[0] = 0.1;
  eng_tensor *bt = eng_transpose(a, 0, 1); /* a non-contiguous view */
  eng_tensor *sc = eng_full(ENG_DTYPE_F32, 0, NULL, 3.25);
  const char *names[] = {"w.t", "v", "w", "s"};
  eng_tensor *ts[] = {bt, b, a, sc};
  const char *k[] = {"note"}, *v[] = {"h\xc3\xa9llo \"quoted\"\n"};
  CHECK(eng_safetensors_save(tmp_path("rt.safetensors"), 4, names, ts, 1, k, v) == 0);
  eng_safetensors *f = eng_safetensors_open(tmp_path("rt.safetensors"));
  CHECK(f != NULL);
  if (f) {
    eng_tensor *la = eng_safetensors_load(f, "w", ENG_DTYPE_F32);
    CHECK(la && !memcmp(eng_tensor_data(la), pa, sizeof(float) * 63));
    eng_tensor *lb = eng_safetensors_load(f, "v", ENG_DTYPE_F64);
    CHECK(lb && !memcmp(eng_tensor_data(lb), eng_tensor_data(b), sizeof(double) * 11));
    eng_tensor *lt = eng_safetensors_load(f, "w.t", ENG_DTYPE_F32);
    CHECK(lt && eng_tensor_shape(lt)[0] == 9 && eng_tensor_shape(lt)[1] == 7);
    int same = lt != NULL;
    for (int i = 0; same && i < 9; i++)
      for (int j = 0; j < 7; j++) same &= bits_of(((float *)eng_tensor_data(lt))[i * 7 + j]) == bits_of(pa[j * 9 + i]);
    CHECK(same);
    eng_tensor *ls = eng_safetensors_load(f, "s", ENG_DTYPE_F32);
    CHECK(ls && eng_tensor_ndim(ls) == 0 && at(ls, 0) == 3.25);
    eng_st_info in;
    CHECK(eng_safetensors_info(f, "v", &in) == 0 && !strcmp(in.dtype, "F64") && in.data_begin == 0);
    CHECK(eng_safetensors_info(f, "s", &in) == 0 && !strcmp(in.dtype, "F32") && in.data_begin == 88);
    CHECK_STR(eng_safetensors_metadata_value(f, "note"), v[0]);
    eng_tensor_release(la);
    eng_tensor_release(lb);
    eng_tensor_release(lt);
    eng_tensor_release(ls);
    eng_safetensors_close(f);
  }
  /* the data area starts 8-aligned */
  size_t len;
  unsigned char *all = read_all(tmp_path("rt.safetensors"), &len);
  uint64_t n;
  memcpy(&n, all, 8);
  CHECK(n % 8 == 0 && all[8 + n - 1] != 0);
  free(all);
  CHECK_STR(listing(), "rt.safetensors");
  eng_tensor_release(a);
  eng_tensor_release(b);
  eng_tensor_release(bt);
  eng_tensor_release(sc);
  eng_rng_free(r);
  clear_tmp();
}

static void test_save_refusals(void) {
  double one = 1;
  eng_tensor *t = eng_from_doubles(ENG_DTYPE_F32, 0, NULL, &one);
  const char *p = tmp_path("x.safetensors");
#define SAVE_REFUSED(call, msg)                                                              \
  do {                                                                                       \
    errno = 0;                                                                               \
    CHECK((call) == -1 && errno == EINVAL);                                                  \
    CHECK_STR(eng_last_error(), fmt(msg, p));                                                \
  } while (0)
  eng_tensor *two[] = {t, t};
  const char *dup[] = {"a", "a"};
  SAVE_REFUSED(eng_safetensors_save(p, 2, dup, two, 0, NULL, NULL), "%s: tensor name 'a' appears twice");
  const char *reserved[] = {"__metadata__"};
  SAVE_REFUSED(eng_safetensors_save(p, 1, reserved, two, 0, NULL, NULL),
               "%s: '__metadata__' cannot name a tensor (the header reserves it)");
  const char *badutf[] = {"a\xff"};
  SAVE_REFUSED(eng_safetensors_save(p, 1, badutf, two, 0, NULL, NULL), "%s: tensor name 'a\xff' is not valid UTF-8");
  eng_tensor *none[] = {NULL};
  SAVE_REFUSED(eng_safetensors_save(p, 1, dup, none, 0, NULL, NULL), "%s: tensor 'a' is NULL");
  SAVE_REFUSED(eng_safetensors_save_as(p, 1, dup, two, 0, NULL, NULL, "I64"),
               "%s: cannot write dtype 'I64' (the writer writes F32, F64, F16 or BF16)");
  const char *k[] = {"x", "x"}, *v[] = {"1", "2"};
  SAVE_REFUSED(eng_safetensors_save(p, 1, dup, two, 2, k, v), "%s: metadata key 'x' appears twice");
  /* a header readers would refuse is not written */
  char *huge = malloc(ENG_ST_MAX_HEADER + 1);
  memset(huge, 'x', ENG_ST_MAX_HEADER);
  huge[ENG_ST_MAX_HEADER] = 0;
  const char *hk[] = {"k"}, *hv[] = {huge};
  SAVE_REFUSED(eng_safetensors_save(p, 0, NULL, NULL, 1, hk, hv),
               "%s: the header would be 100000032 bytes, over the 100000000 readers accept");
  free(huge);
  CHECK_STR(listing(), "");

  /* I/O failures: errno tells the reason, no temporary is left */
  errno = 0;
  CHECK(eng_safetensors_save(tmp_path("nodir/x.safetensors"), 1, dup, two, 0, NULL, NULL) == -1 && errno == ENOENT);
  CHECK_STR(eng_last_error(), fmt("%s: cannot create x.safetensors.tmp-%ld: No such file or directory",
                                  tmp_path("nodir/x.safetensors"), (long)getpid()));
  mkdir(tmp_path("d.safetensors"), 0755);
  errno = 0;
  CHECK(eng_safetensors_save(tmp_path("d.safetensors"), 1, dup, two, 0, NULL, NULL) == -1 && errno == EISDIR);
  CHECK_STR(eng_last_error(), fmt("%s: cannot replace it: Is a directory", tmp_path("d.safetensors")));
  CHECK_STR(listing(), "d.safetensors");
  eng_tensor_release(t);
  clear_tmp();
}

/* saving over a file replaces it whole; a refused save leaves it alone */
static void test_atomic_replace(void) {
  double v3[3] = {1, 2, 3}, v1 = 9;
  int64_t s3 = 3;
  eng_tensor *a = eng_from_doubles(ENG_DTYPE_F32, 1, &s3, v3), *b = eng_from_doubles(ENG_DTYPE_F64, 0, NULL, &v1);
  const char *p = tmp_path("m.safetensors");
  const char *na[] = {"a"}, *nb[] = {"b"};
  CHECK(eng_safetensors_save(p, 1, na, &a, 0, NULL, NULL) == 0);
  eng_safetensors *f = eng_safetensors_open(p); /* stays mapped across the replace */
  CHECK(eng_safetensors_save(p, 1, nb, &b, 0, NULL, NULL) == 0);
  eng_safetensors *g = eng_safetensors_open(p);
  CHECK(f && g && eng_safetensors_count(f) == 1 && !strcmp(eng_safetensors_name(f, 0), "a"));
  CHECK(g && !strcmp(eng_safetensors_name(g, 0), "b"));
  eng_tensor *la = f ? eng_safetensors_load(f, "a", ENG_DTYPE_F32) : NULL;
  CHECK(la && at(la, 2) == 3);
  eng_tensor_release(la);
  eng_safetensors_close(f);
  eng_safetensors_close(g);
  const char *dup[] = {"b", "b"};
  eng_tensor *two[] = {b, b};
  CHECK(eng_safetensors_save(p, 2, dup, two, 0, NULL, NULL) == -1);
  g = eng_safetensors_open(p);
  CHECK(g && eng_safetensors_count(g) == 1);
  eng_safetensors_close(g);
  CHECK(eng_st_write_file_atomic(tmp_path("t.txt"), "hello\n", 6) == 0);
  size_t len;
  unsigned char *txt = read_all(tmp_path("t.txt"), &len);
  CHECK(txt && len == 6 && !memcmp(txt, "hello\n", 6));
  free(txt);
  CHECK_STR(listing(), "m.safetensors t.txt");
  eng_tensor_release(a);
  eng_tensor_release(b);
  clear_tmp();
}

int main(void) {
  snprintf(tmp_root, sizeof tmp_root, "%s/test_safetensors-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmp_root)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_header_length);
  RUN(test_header_json);
  RUN(test_entries);
  RUN(test_tiling);
  RUN(test_files);
  RUN(test_fixture_listing);
  RUN(test_widening_against_torch);
  RUN(test_narrowing_against_torch);
  RUN(test_scalar_conversions);
  RUN(test_reference_bytes);
  RUN(test_layout_matches_fixture);
  RUN(test_round_trip);
  RUN(test_save_refusals);
  RUN(test_atomic_replace);
  clear_tmp();
  rmdir(tmp_root);
  DONE();
}
