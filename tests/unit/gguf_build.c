/* In-memory GGUF writer for tests (see gguf_build.h). */
#include "tests/unit/gguf_build.h"

#include <string.h>

#include "base/status.h"
#include "gguf/gguf.h"

void sr_test_gguf_free(sr_test_gguf_buf *b) { sr_buf_free(b); }

void sr_test_gguf_raw(sr_test_gguf_buf *b, const void *p, size_t n) { sr_buf_append(b, p, n); }

void sr_test_gguf_u8(sr_test_gguf_buf *b, uint8_t v) { sr_test_gguf_raw(b, &v, 1); }
void sr_test_gguf_u32(sr_test_gguf_buf *b, uint32_t v) { sr_test_gguf_raw(b, &v, 4); }
void sr_test_gguf_u64(sr_test_gguf_buf *b, uint64_t v) { sr_test_gguf_raw(b, &v, 8); }

void sr_test_gguf_str(sr_test_gguf_buf *b, const char *s) {
    sr_test_gguf_u64(b, strlen(s));
    sr_test_gguf_raw(b, s, strlen(s));
}

void sr_test_gguf_pad(sr_test_gguf_buf *b, uint64_t align) {
    while (sr_buf_status(b) == SR_OK && b->len % align) sr_test_gguf_u8(b, 0);
}

void sr_test_gguf_header(sr_test_gguf_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    sr_test_gguf_raw(b, "GGUF", 4);
    sr_test_gguf_u32(b, version);
    sr_test_gguf_u64(b, n_tensors);
    sr_test_gguf_u64(b, n_kv);
}

void sr_test_gguf_kv_raw(sr_test_gguf_buf *b, const char *key, uint32_t type, const void *v, size_t n) {
    sr_test_gguf_str(b, key);
    sr_test_gguf_u32(b, type);
    sr_test_gguf_raw(b, v, n);
}

void sr_test_gguf_kv_u32(sr_test_gguf_buf *b, const char *key, uint32_t v) {
    sr_test_gguf_kv_raw(b, key, SR_GGUF_U32, &v, 4);
}
void sr_test_gguf_kv_i32(sr_test_gguf_buf *b, const char *key, int32_t v) {
    sr_test_gguf_kv_raw(b, key, SR_GGUF_I32, &v, 4);
}
void sr_test_gguf_kv_u64(sr_test_gguf_buf *b, const char *key, uint64_t v) {
    sr_test_gguf_kv_raw(b, key, SR_GGUF_U64, &v, 8);
}
void sr_test_gguf_kv_f32(sr_test_gguf_buf *b, const char *key, float v) {
    sr_test_gguf_kv_raw(b, key, SR_GGUF_F32, &v, 4);
}
void sr_test_gguf_kv_bool(sr_test_gguf_buf *b, const char *key, int v) {
    uint8_t u = v ? 1 : 0;
    sr_test_gguf_kv_raw(b, key, SR_GGUF_BOOL, &u, 1);
}
void sr_test_gguf_kv_str(sr_test_gguf_buf *b, const char *key, const char *v) {
    sr_test_gguf_str(b, key);
    sr_test_gguf_u32(b, SR_GGUF_STRING);
    sr_test_gguf_str(b, v);
}

void sr_test_gguf_kv_arr_str(sr_test_gguf_buf *b, const char *key, const char *const *v, uint64_t n) {
    sr_test_gguf_str(b, key);
    sr_test_gguf_u32(b, SR_GGUF_ARRAY);
    sr_test_gguf_u32(b, SR_GGUF_STRING);
    sr_test_gguf_u64(b, n);
    for (uint64_t i = 0; i < n; i++) sr_test_gguf_str(b, v[i]);
}

void sr_test_gguf_kv_arr_i32(sr_test_gguf_buf *b, const char *key, const int32_t *v, uint64_t n) {
    sr_test_gguf_str(b, key);
    sr_test_gguf_u32(b, SR_GGUF_ARRAY);
    sr_test_gguf_u32(b, SR_GGUF_I32);
    sr_test_gguf_u64(b, n);
    sr_test_gguf_raw(b, v, n * 4);
}

void sr_test_gguf_tensor(sr_test_gguf_buf *b, const char *name, uint32_t n_dims, const int64_t *ne,
                         uint32_t type, uint64_t offset) {
    sr_test_gguf_str(b, name);
    sr_test_gguf_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) sr_test_gguf_u64(b, (uint64_t)ne[d]);
    sr_test_gguf_u32(b, type);
    sr_test_gguf_u64(b, offset);
}

static const struct {
    const char *name;
    uint32_t type, n_dims;
    int64_t ne[4];
} small_tensors[] = {
    {"f32.weight", SR_GGML_F32, 2, {4, 2, 1, 1}},
    {"f16.weight", SR_GGML_F16, 1, {8, 1, 1, 1}},
    {"bf16.weight", SR_GGML_BF16, 3, {2, 2, 2, 1}},
    {"q8_0.weight", SR_GGML_Q8_0, 2, {32, 2, 1, 1}},
    {"q4_0.weight", SR_GGML_Q4_0, 4, {32, 1, 1, 1}},
    {"q4_1.weight", SR_GGML_Q4_1, 1, {64, 1, 1, 1}},
    {"q6_k.weight", SR_GGML_Q6_K, 1, {256, 1, 1, 1}},
};

int sr_test_gguf_small(sr_test_gguf_buf *b, uint32_t version, uint32_t alignment) {
    static const char *const tokens[] = {"<s>", "", "hello", "\xc4\xa0world", "\xe2\x82\xac"};
    static const int32_t types[] = {3, 1, 1, 1, 1};
    const size_t n_t = sizeof small_tensors / sizeof small_tensors[0];
    const uint64_t align = alignment ? alignment : 32;
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5;
    double f64 = 0.25;

    sr_test_gguf_header(b, version, n_t, 14 + (alignment ? 1 : 0));
    sr_test_gguf_kv_str(b, "general.architecture", "llama");
    sr_test_gguf_kv_u32(b, "llama.block_count", 2);
    sr_test_gguf_kv_u64(b, "llama.context_length", 4096);
    sr_test_gguf_kv_i32(b, "test.negative", -7);
    sr_test_gguf_kv_f32(b, "llama.rope.freq_base", 10000.0f);
    sr_test_gguf_kv_bool(b, "tokenizer.ggml.add_bos_token", 1);
    sr_test_gguf_kv_raw(b, "test.u8", SR_GGUF_U8, &u8, 1);
    sr_test_gguf_kv_raw(b, "test.i8", SR_GGUF_I8, &i8, 1);
    sr_test_gguf_kv_raw(b, "test.u16", SR_GGUF_U16, &u16, 2);
    sr_test_gguf_kv_raw(b, "test.i16", SR_GGUF_I16, &i16, 2);
    sr_test_gguf_kv_raw(b, "test.i64", SR_GGUF_I64, &i64, 8);
    sr_test_gguf_kv_raw(b, "test.f64", SR_GGUF_F64, &f64, 8);
    sr_test_gguf_kv_arr_str(b, "tokenizer.ggml.tokens", tokens, 5);
    sr_test_gguf_kv_arr_i32(b, "tokenizer.ggml.token_type", types, 5);
    if (alignment) sr_test_gguf_kv_u32(b, "general.alignment", alignment);

    uint64_t offset = 0, sizes[sizeof small_tensors / sizeof small_tensors[0]];
    for (size_t i = 0; i < n_t; i++) {
        const int64_t *ne = small_tensors[i].ne;
        sizes[i] = sr_ggml_row_bytes(small_tensors[i].type, ne[0]) * (uint64_t)(ne[1] * ne[2] * ne[3]);
        sr_test_gguf_tensor(b, small_tensors[i].name, small_tensors[i].n_dims, ne, small_tensors[i].type,
                            offset);
        offset += (sizes[i] + align - 1) / align * align;
    }
    for (size_t i = 0; i < n_t; i++) {
        sr_test_gguf_pad(b, align);
        for (uint64_t j = 0; j < sizes[i]; j++) sr_test_gguf_u8(b, (uint8_t)(i * 16 + j));
    }
    return sr_buf_status(b) == SR_OK ? 0 : -1;
}
