/* gguf: a read-only, validated view of a GGUF (v2, v3) file, mapped with mmap.
 *
 * sr_gguf_open checks every length, count, offset and tensor extent against
 * the file size before anything is used; afterwards all pointers handed out
 * stay valid until sr_gguf_close. Tensor data is used in place (no copies). */
#ifndef SR_GGUF_GGUF_H
#define SR_GGUF_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* ggml tensor type ids, as stored in the file */
enum {
    SR_GGML_F32 = 0, SR_GGML_F16 = 1, SR_GGML_Q4_0 = 2, SR_GGML_Q4_1 = 3,
    SR_GGML_Q8_0 = 8, SR_GGML_Q6_K = 14, SR_GGML_BF16 = 30,
};

/* GGUF metadata value types */
enum {
    SR_GGUF_U8 = 0, SR_GGUF_I8 = 1, SR_GGUF_U16 = 2, SR_GGUF_I16 = 3, SR_GGUF_U32 = 4,
    SR_GGUF_I32 = 5, SR_GGUF_F32 = 6, SR_GGUF_BOOL = 7, SR_GGUF_STRING = 8, SR_GGUF_ARRAY = 9,
    SR_GGUF_U64 = 10, SR_GGUF_I64 = 11, SR_GGUF_F64 = 12,
};

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} sr_gguf_str;

typedef struct {
    sr_gguf_str key;
    uint32_t type;       /* SR_GGUF_* */
    uint32_t arr_type;   /* element type when type == SR_GGUF_ARRAY */
    uint64_t arr_len;    /* element count when type == SR_GGUF_ARRAY */
    const uint8_t *data; /* the value (or first array element) inside the map */
    const sr_gguf_str *arr_strs; /* string arrays: the arr_len elements, indexed at open */
} sr_gguf_kv;

typedef struct {
    sr_gguf_str name;
    uint32_t n_dims;
    int64_t ne[4];      /* ggml order: ne[0] is the contiguous (row) dimension */
    uint32_t type;      /* SR_GGML_* */
    uint64_t offset;    /* from the start of the data section */
    uint64_t n_bytes;
    const void *data;   /* in the map */
} sr_gguf_tensor;

typedef struct sr_gguf {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    sr_gguf_kv *kv;
    sr_gguf_tensor *tensors;
    uint64_t alignment;
    const uint8_t *map;
    size_t map_size;
} sr_gguf;

/* Opens and validates `path`. On error returns a negative SR_E* code with a
 * message (sr_error_msg) naming the file and what is wrong. */
int sr_gguf_open(sr_gguf **out, const char *path);
/* Same over a caller-owned buffer (tests, fuzzing); the buffer must outlive the view. */
int sr_gguf_open_buffer(sr_gguf **out, const void *buf, size_t size);
void sr_gguf_close(sr_gguf *g);

/* Look-ups; NULL when absent. */
const sr_gguf_kv *sr_gguf_find(const sr_gguf *g, const char *key);
const sr_gguf_tensor *sr_gguf_tensor_find(const sr_gguf *g, const char *name);

/* Typed getters: SR_OK, or SR_EFORMAT with a message when the key is missing
 * or has another type (integers of any width convert when the value fits). */
int sr_gguf_get_u32(const sr_gguf *g, const char *key, uint32_t *out);
int sr_gguf_get_f32(const sr_gguf *g, const char *key, float *out);
int sr_gguf_get_bool(const sr_gguf *g, const char *key, int *out);
int sr_gguf_get_str(const sr_gguf *g, const char *key, sr_gguf_str *out);
/* i-th string of a string array (bounds validated and indexed at open: O(1));
 * arrays of arrays are rejected at open. */
sr_gguf_str sr_gguf_arr_str(const sr_gguf_kv *kv, uint64_t i);

/* Bytes of one row of n elements of a ggml type, 0 if the type is unknown
 * or n is not a multiple of its block size. */
uint64_t sr_ggml_row_bytes(uint32_t type, int64_t n);
const char *sr_ggml_type_name(uint32_t type);

#endif
