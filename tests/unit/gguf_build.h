/* An in-memory GGUF writer for tests and fuzz seeds: appends the raw fields
 * of a GGUF file in order, so that tests can build valid files and corrupt
 * them field by field. Support code linked into every unit test. */
#ifndef SR_TESTS_GGUF_BUILD_H
#define SR_TESTS_GGUF_BUILD_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* sr_buf_status() says whether an append failed (data is then incomplete) */
typedef sr_buf sr_test_gguf_buf;

void sr_test_gguf_free(sr_test_gguf_buf *b);

/* Raw little-endian fields. */
void sr_test_gguf_raw(sr_test_gguf_buf *b, const void *p, size_t n);
void sr_test_gguf_u8(sr_test_gguf_buf *b, uint8_t v);
void sr_test_gguf_u32(sr_test_gguf_buf *b, uint32_t v);
void sr_test_gguf_u64(sr_test_gguf_buf *b, uint64_t v);
void sr_test_gguf_str(sr_test_gguf_buf *b, const char *s);
/* Zero bytes up to the next multiple of `align`. */
void sr_test_gguf_pad(sr_test_gguf_buf *b, uint64_t align);

/* "GGUF", version, tensor count, metadata count. */
void sr_test_gguf_header(sr_test_gguf_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv);

/* Metadata entries: key, type, value. */
void sr_test_gguf_kv_raw(sr_test_gguf_buf *b, const char *key, uint32_t type, const void *v, size_t n);
void sr_test_gguf_kv_u32(sr_test_gguf_buf *b, const char *key, uint32_t v);
void sr_test_gguf_kv_i32(sr_test_gguf_buf *b, const char *key, int32_t v);
void sr_test_gguf_kv_u64(sr_test_gguf_buf *b, const char *key, uint64_t v);
void sr_test_gguf_kv_f32(sr_test_gguf_buf *b, const char *key, float v);
void sr_test_gguf_kv_bool(sr_test_gguf_buf *b, const char *key, int v);
void sr_test_gguf_kv_str(sr_test_gguf_buf *b, const char *key, const char *v);
void sr_test_gguf_kv_arr_str(sr_test_gguf_buf *b, const char *key, const char *const *v, uint64_t n);
void sr_test_gguf_kv_arr_i32(sr_test_gguf_buf *b, const char *key, const int32_t *v, uint64_t n);

/* One tensor info; ne has n_dims entries. */
void sr_test_gguf_tensor(sr_test_gguf_buf *b, const char *name, uint32_t n_dims, const int64_t *ne,
                         uint32_t type, uint64_t offset);

/* A small valid file holding metadata of every value type and one tensor of
 * each of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q6_K with deterministic data.
 * alignment 0 leaves general.alignment out (default 32). Returns 0, or -1
 * when out of memory. */
int sr_test_gguf_small(sr_test_gguf_buf *b, uint32_t version, uint32_t alignment);

#endif
