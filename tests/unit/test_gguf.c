/* gguf/gguf.c: the real model, hand-built v2/v3 files, truncation at every
 * byte, a table of corruptions that must each give SR_EFORMAT with a message
 * naming the problem, and the regression inputs in tests/data/gguf/. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/support/unit_main.h"
#include "tests/unit/gguf_build.h"
#include "gguf/gguf.h"
#include "tests/unit/support_model.h"

#define DATA_DIR "tests/data/gguf"

static int str_is(sr_gguf_str s, const char *z) { return s.len == strlen(z) && memcmp(s.ptr, z, s.len) == 0; }

/* Fail unless the metadata entry key reads as want. */
static void expect_u32(const sr_gguf *g, const char *key, uint32_t want) {
    uint32_t u = 0;
    int rc = sr_gguf_get_u32(g, key, &u);
    if (rc != SR_OK || u != want) fail_msg("%s: %d, %u; want %u (%s)", key, rc, u, want, sr_error_msg());
}
static void expect_f32(const sr_gguf *g, const char *key, float want) {
    float f = 0.0f;
    int rc = sr_gguf_get_f32(g, key, &f);
    if (rc != SR_OK || f != want) fail_msg("%s: %d, %g; want %g (%s)", key, rc, f, want, sr_error_msg());
}
static void expect_str(const sr_gguf *g, const char *key, const char *want) {
    sr_gguf_str s = {0};
    int rc = sr_gguf_get_str(g, key, &s);
    if (rc != SR_OK || !str_is(s, want)) fail_msg("%s: %d, '%.*s'; want '%s'", key, rc, (int)s.len, s.ptr, want);
}

/* Fails unless opening b gives SR_EFORMAT with `want` in the message. */
static void expect_format_error(const sr_test_gguf_buf *b, const char *what, const char *want) {
    sr_gguf *g = (sr_gguf *)1;
    sr_error_clear();
    int rc = sr_gguf_open_buffer(&g, b->data, b->len);
    if (rc != SR_EFORMAT || g != NULL || !strstr(sr_error_msg(), want) || !strstr(sr_error_msg(), "buffer"))
        fail_msg("%s: rc %d, message '%s' (wanted SR_EFORMAT naming the buffer and '%s')", what, rc,
                 sr_error_msg(), want);
}

/* Looking a tensor up by its own name gives it back (names holding a NUL
 * cannot be asked for, and count as found). */
static int finds_itself(const sr_gguf *g, const sr_gguf_tensor *t) {
    char name[256];
    if (t->name.len >= sizeof name || memchr(t->name.ptr, 0, t->name.len)) return 1;
    memcpy(name, t->name.ptr, t->name.len);
    name[t->name.len] = '\0';
    return sr_gguf_tensor_find(g, name) == t;
}

static void test_real_model(void **state) {
    char buf[4096];
    const char *path = sr_test_model_path(buf, sizeof buf);
    if (!path) fail_msg("SR_MODEL is not set and the model is not cached: run scripts/fetch-model, then "
                        "export SR_MODEL=<the path it prints>");
    sr_gguf *g = NULL;
    int rc = sr_gguf_open(&g, path);
    if (rc) fail_msg("%s", sr_error_msg());
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_tensors, 272);
    assert_int_equal(g->alignment, 32);

    expect_str(g, "general.architecture", "llama");
    expect_str(g, "tokenizer.ggml.model", "gpt2");
    expect_u32(g, "llama.block_count", 30);
    expect_u32(g, "llama.embedding_length", 576);
    expect_u32(g, "llama.attention.head_count_kv", 3);
    expect_f32(g, "llama.rope.freq_base", 100000.0f);
    int b;
    assert_int_equal(sr_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), SR_OK);

    const sr_gguf_kv *tokens = sr_gguf_find(g, "tokenizer.ggml.tokens");
    assert_non_null(tokens);
    assert_int_equal(tokens->type, SR_GGUF_ARRAY);
    assert_int_equal(tokens->arr_type, SR_GGUF_STRING);
    assert_int_equal(tokens->arr_len, 49152);
    assert_true(str_is(sr_gguf_arr_str(tokens, 0), "<|endoftext|>"));
    assert_true(str_is(sr_gguf_arr_str(tokens, 1), "<|im_start|>"));
    assert_true(str_is(sr_gguf_arr_str(tokens, 2), "<|im_end|>"));
    /* a copy of the kv takes the walking path; it must agree with the index */
    sr_gguf_kv copy = *tokens;
    for (uint64_t i = 0; i < 49152; i += 4093) {
        sr_gguf_str a = sr_gguf_arr_str(tokens, i), c = sr_gguf_arr_str(&copy, i);
        assert_true(a.len == c.len && a.ptr == c.ptr);
    }
    assert_int_equal(sr_gguf_arr_str(tokens, 49152).len, 0);

    const sr_gguf_tensor *t = sr_gguf_tensor_find(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SR_GGML_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->n_bytes, 576 / 32 * 34 * 49152);
    t = sr_gguf_tensor_find(g, "blk.29.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SR_GGML_Q4_1);
    assert_int_equal(t->ne[0], 1536);
    assert_int_equal(t->ne[1], 576);
    t = sr_gguf_tensor_find(g, "output_norm.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SR_GGML_F32);
    assert_int_equal(t->n_dims, 1);
    assert_null(sr_gguf_tensor_find(g, "blk.30.ffn_down.weight"));
    assert_null(sr_gguf_tensor_find(g, "output.weight")); /* tied embeddings */
    assert_null(sr_gguf_find(g, "llama.no_such_key"));

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const sr_gguf_tensor *ti = &g->tensors[i];
        const uint8_t *d = ti->data;
        assert_true(d >= g->map && d + ti->n_bytes <= g->map + g->map_size);
        assert_int_equal((uintptr_t)d % 32, 0);
        assert_true(finds_itself(g, ti));
    }
    sr_gguf_close(g);
}

static void check_small(uint32_t version, uint32_t alignment) {
    sr_test_gguf_buf b = {0};
    assert_int_equal(sr_test_gguf_small(&b, version, alignment), 0);
    /* copy into an exact-size heap block so that ASan sees any over-read */
    uint8_t *data = malloc(b.len);
    assert_non_null(data);
    memcpy(data, b.data, b.len);
    sr_gguf *g = NULL;
    int rc = sr_gguf_open_buffer(&g, data, b.len);
    if (rc) fail_msg("v%u alignment %u: %s", version, alignment, sr_error_msg());
    assert_int_equal(g->version, version);
    assert_int_equal(g->n_kv, alignment ? 15 : 14);
    assert_int_equal(g->n_tensors, 7);
    assert_int_equal(g->alignment, alignment ? alignment : 32);

    uint32_t u;
    float f;
    int bl;
    sr_gguf_str s;
    expect_u32(g, "llama.block_count", 2);
    assert_int_equal(sr_gguf_get_u32(g, "llama.context_length", &u), SR_OK); /* from u64 */
    assert_int_equal(u, 4096);
    expect_u32(g, "test.u8", 200);
    expect_u32(g, "test.u16", 60000);
    assert_int_equal(sr_gguf_get_u32(g, "test.negative", &u), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "negative"));
    assert_int_equal(sr_gguf_get_u32(g, "test.i64", &u), SR_EFORMAT);
    assert_int_equal(sr_gguf_get_u32(g, "general.architecture", &u), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "not an integer"));
    assert_int_equal(sr_gguf_get_u32(g, "missing.key", &u), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "'missing.key' is missing"));
    assert_non_null(strstr(sr_error_msg(), "buffer"));
    expect_f32(g, "llama.rope.freq_base", 10000.0f);
    expect_f32(g, "test.f64", 0.25f);
    assert_int_equal(sr_gguf_get_f32(g, "test.u8", &f), SR_EFORMAT);
    assert_int_equal(sr_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &bl), SR_OK);
    assert_int_equal(bl, 1);
    assert_int_equal(sr_gguf_get_bool(g, "test.u8", &bl), SR_EFORMAT);
    expect_str(g, "general.architecture", "llama");
    assert_int_equal(sr_gguf_get_str(g, "test.i8", &s), SR_EFORMAT);

    const sr_gguf_kv *kv = sr_gguf_find(g, "test.i16");
    assert_non_null(kv);
    int16_t i16;
    memcpy(&i16, kv->data, 2);
    assert_int_equal(i16, -30000);
    kv = sr_gguf_find(g, "tokenizer.ggml.tokens");
    assert_non_null(kv);
    assert_int_equal(kv->arr_len, 5);
    assert_true(kv->data >= g->map && kv->data < g->map + g->map_size);
    assert_true(str_is(sr_gguf_arr_str(kv, 0), "<s>"));
    assert_true(str_is(sr_gguf_arr_str(kv, 1), ""));
    assert_true(str_is(sr_gguf_arr_str(kv, 3), "\xc4\xa0world"));
    assert_true(str_is(sr_gguf_arr_str(kv, 4), "\xe2\x82\xac"));
    sr_gguf_kv copy = *kv;
    assert_true(str_is(sr_gguf_arr_str(&copy, 4), "\xe2\x82\xac"));
    assert_true(str_is(sr_gguf_arr_str(&copy, 2), "hello"));
    kv = sr_gguf_find(g, "tokenizer.ggml.token_type");
    assert_non_null(kv);
    assert_int_equal(kv->arr_type, SR_GGUF_I32);
    int32_t t0;
    memcpy(&t0, kv->data, 4);
    assert_int_equal(t0, 3);
    assert_int_equal(sr_gguf_arr_str(kv, 0).len, 0); /* not a string array */

    static const struct {
        const char *name;
        uint32_t type, n_dims;
        int64_t ne0, n_bytes;
    } want[] = {
        {"f32.weight", SR_GGML_F32, 2, 4, 32},     {"f16.weight", SR_GGML_F16, 1, 8, 16},
        {"bf16.weight", SR_GGML_BF16, 3, 2, 16},   {"q8_0.weight", SR_GGML_Q8_0, 2, 32, 68},
        {"q4_0.weight", SR_GGML_Q4_0, 4, 32, 18},  {"q4_1.weight", SR_GGML_Q4_1, 1, 64, 40},
        {"q6_k.weight", SR_GGML_Q6_K, 1, 256, 210},
    };
    for (size_t i = 0; i < 7; i++) {
        const sr_gguf_tensor *t = sr_gguf_tensor_find(g, want[i].name);
        assert_non_null(t);
        assert_ptr_equal(t, &g->tensors[i]);
        assert_int_equal(t->type, want[i].type);
        assert_int_equal(t->n_dims, want[i].n_dims);
        assert_int_equal(t->ne[0], want[i].ne0);
        assert_int_equal(t->n_bytes, want[i].n_bytes);
        assert_int_equal(t->ne[3], 1);
        assert_int_equal((uint64_t)((const uint8_t *)t->data - g->map) % g->alignment, 0);
        const uint8_t *d = t->data;
        for (int64_t j = 0; j < want[i].n_bytes; j++) assert_int_equal(d[j], (uint8_t)(i * 16 + j));
    }
    /* the last tensor ends exactly at the end of the file */
    const sr_gguf_tensor *last = &g->tensors[6];
    assert_ptr_equal((const uint8_t *)last->data + last->n_bytes, g->map + g->map_size);
    sr_gguf_close(g);
    free(data);
    sr_test_gguf_free(&b);
}

static void test_small_v2(void **state) { check_small(2, 0); }
static void test_small_v3(void **state) { check_small(3, 0); }
static void test_small_alignments(void **state) {
    check_small(3, 1);
    check_small(3, 8);
    check_small(2, 64);
    check_small(3, 4096);
}

/* Every proper prefix of a valid file must fail cleanly (exact-size copies,
 * so that ASan catches a read one byte past the end). */
static void test_truncation(void **state) {
    for (uint32_t version = 2; version <= 3; version++) {
        sr_test_gguf_buf b = {0};
        assert_int_equal(sr_test_gguf_small(&b, version, version == 2 ? 16 : 0), 0);
        for (size_t n = 0; n < b.len; n++) {
            uint8_t *data = malloc(n ? n : 1);
            assert_non_null(data);
            memcpy(data, b.data, n);
            sr_gguf *g = NULL;
            sr_error_clear();
            int rc = sr_gguf_open_buffer(&g, data, n);
            if (rc != SR_EFORMAT || g || !strstr(sr_error_msg(), "buffer"))
                fail_msg("prefix of %zu of %zu bytes: rc %d, '%s'", n, b.len, rc, sr_error_msg());
            free(data);
        }
        sr_test_gguf_free(&b);
    }
}

/* the data section: padding to the default alignment, then n zero bytes */
static void zero_data(sr_test_gguf_buf *b, size_t n) {
    sr_test_gguf_pad(b, 32);
    for (size_t i = 0; i < n; i++) sr_test_gguf_u8(b, 0);
}

/* A file with no metadata and one tensor whose info is given; `data` zero
 * bytes of data follow at the default alignment. */
static void one_tensor(sr_test_gguf_buf *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
                       uint64_t offset, size_t data) {
    sr_test_gguf_header(b, 3, 1, 0);
    sr_test_gguf_tensor(b, name, n_dims, ne, type, offset);
    zero_data(b, data);
}

static void kv_header(sr_test_gguf_buf *b, uint64_t n_kv) { sr_test_gguf_header(b, 3, 0, n_kv); }
/* a file of one metadata entry, up to its type: the caller writes the value */
static void one_kv(sr_test_gguf_buf *b, const char *key, uint32_t type) {
    kv_header(b, 1);
    sr_test_gguf_str(b, key);
    sr_test_gguf_u32(b, type);
}
/* the same for an array of n elements of type elem, up to its elements */
static void one_array(sr_test_gguf_buf *b, const char *key, uint32_t elem, uint64_t n) {
    one_kv(b, key, SR_GGUF_ARRAY);
    sr_test_gguf_u32(b, elem);
    sr_test_gguf_u64(b, n);
}

static void bad_magic(sr_test_gguf_buf *b) {
    sr_test_gguf_small(b, 3, 0);
    b->data[0] = 'G', b->data[1] = 'G', b->data[2] = 'M', b->data[3] = 'L';
}
static void bad_version1(sr_test_gguf_buf *b) { sr_test_gguf_header(b, 1, 0, 0); }
static void bad_version4(sr_test_gguf_buf *b) { sr_test_gguf_header(b, 4, 0, 0); }
static void bad_big_endian(sr_test_gguf_buf *b) { sr_test_gguf_header(b, 3u << 24, 0, 0); }
static void bad_huge_n_kv(sr_test_gguf_buf *b) {
    sr_test_gguf_header(b, 3, 0, UINT64_MAX);
    sr_test_gguf_kv_u32(b, "a", 1);
}
static void bad_huge_n_tensors(sr_test_gguf_buf *b) {
    sr_test_gguf_header(b, 3, UINT64_C(1) << 60, 0);
    sr_test_gguf_u64(b, 0);
}
static void bad_more_kv_than_present(sr_test_gguf_buf *b) {
    kv_header(b, 3);
    sr_test_gguf_kv_u32(b, "a", 1);
    sr_test_gguf_kv_u32(b, "b", 1);
    sr_test_gguf_u64(b, UINT64_MAX); /* room for one more, but not a valid one */
    sr_test_gguf_u64(b, UINT64_MAX);
}
static void bad_key_length(sr_test_gguf_buf *b) {
    kv_header(b, 1);
    sr_test_gguf_u64(b, UINT64_C(1) << 40);
    sr_test_gguf_raw(b, "abcdefghijklmnop", 16);
}
static void bad_key_length_max(sr_test_gguf_buf *b) {
    kv_header(b, 1);
    sr_test_gguf_u64(b, UINT64_MAX);
    sr_test_gguf_raw(b, "abcdefghijklmnop", 16);
}
static void bad_value_length(sr_test_gguf_buf *b) {
    one_kv(b, "general.name", SR_GGUF_STRING);
    sr_test_gguf_u64(b, 100);
    sr_test_gguf_raw(b, "short", 5);
}
static void bad_duplicate_key(sr_test_gguf_buf *b) {
    kv_header(b, 3);
    sr_test_gguf_kv_u32(b, "llama.block_count", 1);
    sr_test_gguf_kv_str(b, "general.name", "x");
    sr_test_gguf_kv_u32(b, "llama.block_count", 2);
}
static void bad_duplicate_binary_key(sr_test_gguf_buf *b) {
    kv_header(b, 2);
    sr_test_gguf_kv_u32(b, "k\x01\xff", 1);
    sr_test_gguf_kv_u32(b, "k\x01\xff", 1);
}
static void bad_array_overflow(sr_test_gguf_buf *b) {
    one_array(b, "x", SR_GGUF_U64, UINT64_C(1) << 61); /* x 8 bytes wraps to 0 */
    sr_test_gguf_u64(b, 0);
}
static void bad_array_past_end(sr_test_gguf_buf *b) {
    int32_t v[3] = {1, 2, 3};
    one_array(b, "x", SR_GGUF_I32, 4);
    sr_test_gguf_raw(b, v, sizeof v);
}
static void bad_string_array_count(sr_test_gguf_buf *b) {
    one_array(b, "tokenizer.ggml.tokens", SR_GGUF_STRING, UINT64_MAX / 2);
    sr_test_gguf_str(b, "a");
}
static void bad_string_in_array(sr_test_gguf_buf *b) {
    one_array(b, "tokenizer.ggml.tokens", SR_GGUF_STRING, 3);
    sr_test_gguf_str(b, "a");
    sr_test_gguf_u64(b, 1000);
    sr_test_gguf_str(b, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
}
static void bad_nested_array(sr_test_gguf_buf *b) {
    one_array(b, "x", SR_GGUF_ARRAY, 1);
    sr_test_gguf_u32(b, SR_GGUF_U8);
    sr_test_gguf_u64(b, 1);
    sr_test_gguf_u8(b, 1);
}
static void bad_array_type(sr_test_gguf_buf *b) {
    one_array(b, "x", 77, 1);
    sr_test_gguf_u64(b, 0);
}
static void bad_bool_array(sr_test_gguf_buf *b) {
    one_array(b, "x", SR_GGUF_BOOL, 3);
    sr_test_gguf_raw(b, "\x00\x01\x05", 3);
}
static void bad_no_data_section(sr_test_gguf_buf *b) {
    int64_t ne[1] = {4};
    sr_test_gguf_header(b, 3, 1, 0);
    sr_test_gguf_tensor(b, "t", 1, ne, SR_GGML_F32, 0);
}
static void bad_tensor_name_length(sr_test_gguf_buf *b) {
    sr_test_gguf_header(b, 3, 1, 0);
    sr_test_gguf_u64(b, UINT64_MAX - 4);
    for (int i = 0; i < 64; i++) sr_test_gguf_u8(b, 'a');
}

static const struct {
    const char *name;
    void (*build)(sr_test_gguf_buf *b);
    const char *want;
} corruptions[] = {
    {"bad magic", bad_magic, "not a GGUF file"},
    {"version 1", bad_version1, "version 1 is not supported"},
    {"version 4", bad_version4, "version 4 is not supported"},
    {"big-endian", bad_big_endian, "big-endian"},
    {"huge n_kv", bad_huge_n_kv, "metadata entries"},
    {"huge n_tensors", bad_huge_n_tensors, "tensors, more than"},
    {"kv count past the data", bad_more_kv_than_present, "key of metadata entry 2"},
    {"key length past EOF", bad_key_length, "key of metadata entry 0"},
    {"key length UINT64_MAX", bad_key_length_max, "past the end"},
    {"string value past EOF", bad_value_length, "string value of key 'general.name'"},
    {"duplicate key", bad_duplicate_key, "'llama.block_count' appears twice"},
    {"duplicate binary key", bad_duplicate_binary_key, "'k?\?' appears twice"},
    {"array length overflow", bad_array_overflow, "extends past"},
    {"array past EOF", bad_array_past_end, "extends past"},
    {"string array count", bad_string_array_count, "claims"},
    {"string in array past EOF", bad_string_in_array, "string 1 of array 'tokenizer.ggml.tokens'"},
    {"nested array", bad_nested_array, "array of arrays"},
    {"unknown array type", bad_array_type, "unknown type 77"},
    {"bool array value", bad_bool_array, "at index 2"},
    {"no data section", bad_no_data_section, "data section starts"},
    {"tensor name length", bad_tensor_name_length, "name of tensor 0"},
};

/* Files of one metadata entry whose key, type or value is wrong: the value
 * is str for a string, else the first n bytes of num (little-endian). */
static const struct {
    const char *name, *key;
    uint32_t type;
    uint64_t num;
    size_t n;
    const char *str;
    const char *want;
} kv_corruptions[] = {
    {"empty key", "", SR_GGUF_U32, 1, 4, NULL, "empty key"},
    {"unknown value type", "x", 13, 0, 4, NULL, "unknown value type 13"},
    {"bool 2", "x", SR_GGUF_BOOL, 2, 1, NULL, "must be 0 or 1"},
    {"alignment 48", "general.alignment", SR_GGUF_U32, 48, 4, NULL, "not a power of two"},
    {"alignment 0", "general.alignment", SR_GGUF_U32, 0, 4, NULL, "not a power of two"},
    {"alignment string", "general.alignment", SR_GGUF_STRING, 0, 0, "32", "not an integer"},
    {"alignment 2^40", "general.alignment", SR_GGUF_U64, UINT64_C(1) << 40, 8, NULL, "more than"},
    {"alignment negative", "general.alignment", SR_GGUF_I32, (uint32_t)-32, 4, NULL, "negative"},
};

/* Files of one tensor (one_tensor) whose info is wrong in one field. */
static const struct {
    const char *name;
    const char *tensor;
    uint32_t n_dims;
    int64_t ne[5];
    uint32_t type;
    uint64_t offset;
    size_t data;
    const char *want;
} tensor_corruptions[] = {
    {"n_dims 0", "t", 0, {4}, SR_GGML_F32, 0, 16, "0 dimensions"},
    {"n_dims 5", "t", 5, {1, 1, 1, 1, 1}, SR_GGML_F32, 0, 16, "5 dimensions"},
    {"ne 0", "t", 2, {4, 0}, SR_GGML_F32, 0, 16, "dimension 1 of size 0"},
    {"ne -1", "t", 2, {4, -1}, SR_GGML_F32, 0, 16, "dimension 1"},
    {"element count overflow", "t", 3, {INT64_C(1) << 31, INT64_C(1) << 31, 1 << 20}, SR_GGML_Q8_0, 0, 16, "2^56"},
    /* 2^62 + 1 floats: 4 bytes each would wrap a 64-bit byte count to 4 */
    {"row bytes wrap", "t", 1, {(INT64_C(1) << 62) + 1}, SR_GGML_F32, 0, 16, "2^56"},
    {"unknown tensor type", "t", 1, {4}, 99, 0, 16, "unknown type 99"},
    {"removed tensor type", "t", 1, {32}, 4 /* Q4_2, removed from ggml */, 0, 64, "unknown type 4"},
    {"row not a block multiple", "blk.0.attn_q.weight", 2, {16, 2}, SR_GGML_Q4_0, 0, 64,
     "'blk.0.attn_q.weight' of type Q4_0 has rows of 16"},
    {"unaligned offset", "t", 1, {4}, SR_GGML_F32, 4, 64, "not a multiple of the alignment 32"},
    {"tensor past EOF", "blk.3.attn_q.weight", 2, {64, 64}, SR_GGML_F32, 0, 4095,
     "'blk.3.attn_q.weight' extends past end of file"},
    {"tensor offset past EOF", "t", 1, {4}, SR_GGML_F32, UINT64_MAX - 31, 16, "starts past end of file"},
};

/* Files of n 1-D F32 tensors of ne0 elements at the given offsets, then
 * `data` zero bytes, whose layout is wrong. */
static const struct {
    const char *name;
    int n;
    const char *tensor[3];
    int64_t ne0;
    uint64_t offset[3];
    size_t data;
    const char *want;
} layout_corruptions[] = {
    /* 64 bytes each, the second starts at 32 */
    {"overlapping tensors", 2, {"a", "b"}, 16, {0, 32}, 128, "'a' and 'b' overlap"},
    {"same offset", 3, {"a", "b", "c"}, 8, {64, 0, 64}, 128, "overlap"},
    {"duplicate tensor", 2, {"token_embd.weight", "token_embd.weight"}, 8, {0, 32}, 64,
     "'token_embd.weight' appears twice"},
};

/* b was built whole, opening it fails naming `want`; b is freed */
static void expect_corrupt(sr_test_gguf_buf *b, const char *name, const char *want) {
    assert_int_equal(sr_buf_status(b), SR_OK);
    expect_format_error(b, name, want);
    sr_test_gguf_free(b);
}

static void test_corruptions(void **state) {
    sr_test_gguf_buf b = {0};
    for (size_t i = 0; i < sizeof corruptions / sizeof corruptions[0]; i++) {
        corruptions[i].build(&b);
        expect_corrupt(&b, corruptions[i].name, corruptions[i].want);
    }
    for (size_t i = 0; i < sizeof kv_corruptions / sizeof kv_corruptions[0]; i++) {
        const __typeof__(kv_corruptions[0]) *c = &kv_corruptions[i];
        kv_header(&b, 1);
        if (c->str) sr_test_gguf_kv_str(&b, c->key, c->str);
        else sr_test_gguf_kv_raw(&b, c->key, c->type, &c->num, c->n);
        expect_corrupt(&b, c->name, c->want);
    }
    for (size_t i = 0; i < sizeof tensor_corruptions / sizeof tensor_corruptions[0]; i++) {
        const __typeof__(tensor_corruptions[0]) *c = &tensor_corruptions[i];
        one_tensor(&b, c->tensor, c->n_dims, c->ne, c->type, c->offset, c->data);
        expect_corrupt(&b, c->name, c->want);
    }
    for (size_t i = 0; i < sizeof layout_corruptions / sizeof layout_corruptions[0]; i++) {
        const __typeof__(layout_corruptions[0]) *c = &layout_corruptions[i];
        sr_test_gguf_header(&b, 3, (uint64_t)c->n, 0);
        for (int t = 0; t < c->n; t++) sr_test_gguf_tensor(&b, c->tensor[t], 1, &c->ne0, SR_GGML_F32, c->offset[t]);
        zero_data(&b, c->data);
        expect_corrupt(&b, c->name, c->want);
    }
}

/* The corruption builders must be one field away from valid files: the same
 * shapes with the field fixed open. */
static void test_valid_neighbours(void **state) {
    sr_test_gguf_buf b = {0};
    sr_gguf *g = NULL;
    int64_t ne[2] = {16, 2};
    one_tensor(&b, "t", 2, ne, SR_GGML_F32, 0, 128);
    assert_int_equal(sr_gguf_open_buffer(&g, b.data, b.len), SR_OK);
    assert_int_equal(g->tensors[0].n_bytes, 128);
    sr_gguf_close(g);
    sr_test_gguf_free(&b);

    kv_header(&b, 1);
    sr_test_gguf_kv_u32(&b, "general.alignment", 64);
    assert_int_equal(sr_gguf_open_buffer(&g, b.data, b.len), SR_OK);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->n_tensors, 0);
    sr_gguf_close(g);
    sr_test_gguf_free(&b);

    /* adjacent tensors do not overlap */
    int64_t ne1[1] = {8};
    sr_test_gguf_header(&b, 2, 2, 0);
    sr_test_gguf_tensor(&b, "b", 1, ne1, SR_GGML_F32, 32);
    sr_test_gguf_tensor(&b, "a", 1, ne1, SR_GGML_F32, 0);
    sr_test_gguf_pad(&b, 32);
    for (int i = 0; i < 64; i++) sr_test_gguf_u8(&b, (uint8_t)i);
    assert_int_equal(sr_gguf_open_buffer(&g, b.data, b.len), SR_OK);
    assert_int_equal(((const uint8_t *)sr_gguf_tensor_find(g, "b")->data)[0], 32);
    sr_gguf_close(g);
    sr_test_gguf_free(&b);

    /* header only */
    kv_header(&b, 0);
    assert_int_equal(sr_gguf_open_buffer(&g, b.data, b.len), SR_OK);
    assert_int_equal(g->n_kv, 0);
    assert_null(sr_gguf_find(g, "general.architecture"));
    assert_null(sr_gguf_tensor_find(g, "t"));
    sr_gguf_close(g);
    sr_test_gguf_free(&b);
    sr_gguf_close(NULL);
}

static void test_file_errors(void **state) {
    sr_gguf *g = NULL;
    assert_int_equal(sr_gguf_open(&g, "/nonexistent/dir/model.gguf"), SR_EIO);
    assert_non_null(strstr(sr_error_msg(), "/nonexistent/dir/model.gguf"));
    assert_null(g);
    assert_int_equal(sr_gguf_open(&g, "/"), SR_EIO);
    assert_non_null(strstr(sr_error_msg(), "not a regular file"));
    assert_int_equal(sr_gguf_open_buffer(&g, NULL, 0), SR_EFORMAT);
    assert_int_equal(sr_gguf_open_buffer(NULL, "GGUF", 4), SR_EINVAL);
    uint32_t u;
    assert_int_equal(sr_gguf_get_u32(NULL, "general.alignment", &u), SR_EFORMAT);
    assert_null(sr_gguf_tensor_find(NULL, "t"));

    /* through a real file: a valid one, an empty one and a truncated one */
    char path[] = "/tmp/test_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    sr_test_gguf_buf b = {0};
    assert_int_equal(sr_test_gguf_small(&b, 3, 0), 0);
    assert_int_equal(write(fd, b.data, b.len), (ssize_t)b.len);
    assert_int_equal(sr_gguf_open(&g, path), SR_OK);
    assert_int_equal(g->n_tensors, 7);
    assert_int_equal(g->map_size, b.len);
    assert_int_equal(memcmp(g->map, b.data, b.len), 0);
    sr_gguf_close(g);
    assert_int_equal(ftruncate(fd, (off_t)b.len - 1), 0);
    assert_int_equal(sr_gguf_open(&g, path), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), path));
    assert_non_null(strstr(sr_error_msg(), "'q6_k.weight' extends past end of file"));
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(sr_gguf_open(&g, path), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "too small"));
    assert_null(g);
    close(fd);
    unlink(path);
    sr_test_gguf_free(&b);
}

/* Two views open at once keep separate string indexes. */
static void test_two_views(void **state) {
    static const char *const a[] = {"x", "yy"}, *const c[] = {"zzz"};
    sr_test_gguf_buf b1 = {0}, b2 = {0};
    kv_header(&b1, 1);
    sr_test_gguf_kv_arr_str(&b1, "v", a, 2);
    kv_header(&b2, 1);
    sr_test_gguf_kv_arr_str(&b2, "v", c, 1);
    sr_gguf *g1, *g2;
    assert_int_equal(sr_gguf_open_buffer(&g1, b1.data, b1.len), SR_OK);
    assert_int_equal(sr_gguf_open_buffer(&g2, b2.data, b2.len), SR_OK);
    assert_true(str_is(sr_gguf_arr_str(sr_gguf_find(g1, "v"), 1), "yy"));
    assert_true(str_is(sr_gguf_arr_str(sr_gguf_find(g2, "v"), 0), "zzz"));
    sr_gguf_close(g1);
    assert_true(str_is(sr_gguf_arr_str(sr_gguf_find(g2, "v"), 0), "zzz"));
    sr_gguf_close(g2);
    sr_test_gguf_free(&b1);
    sr_test_gguf_free(&b2);
}

/* Thousands of keys and tensors: every one is found by name, and names
 * that differ only in their last byte or length are kept apart. */
static void test_many_entries(void **state) {
    enum { N = 3000 };
    sr_test_gguf_buf b = {0};
    char name[64];
    sr_test_gguf_header(&b, 3, N, N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "key.%d", i);
        sr_test_gguf_kv_u32(&b, name, (uint32_t)i * 7);
    }
    for (int i = 0; i < N; i++) {
        int64_t ne[1] = {i % 8 + 1};
        snprintf(name, sizeof name, "blk.%d.w", i);
        sr_test_gguf_tensor(&b, name, 1, ne, SR_GGML_F32, (uint64_t)i * 32);
    }
    sr_test_gguf_pad(&b, 32);
    for (int i = 0; i < N * 32; i++) sr_test_gguf_u8(&b, (uint8_t)(i / 32));
    assert_int_equal(sr_buf_status(&b), SR_OK);
    sr_gguf *g = NULL;
    if (sr_gguf_open_buffer(&g, b.data, b.len)) fail_msg("%s", sr_error_msg());
    for (int i = 0; i < N; i++) {
        uint32_t u = 0;
        snprintf(name, sizeof name, "key.%d", i);
        assert_int_equal(sr_gguf_get_u32(g, name, &u), SR_OK);
        assert_int_equal(u, (uint32_t)i * 7);
        snprintf(name, sizeof name, "blk.%d.w", i);
        const sr_gguf_tensor *t = sr_gguf_tensor_find(g, name);
        assert_ptr_equal(t, &g->tensors[i]);
        assert_int_equal(t->ne[0], i % 8 + 1);
        assert_int_equal(((const uint8_t *)t->data)[0], (uint8_t)i);
    }
    assert_null(sr_gguf_find(g, "key."));
    assert_null(sr_gguf_find(g, "key.30000"));
    assert_null(sr_gguf_tensor_find(g, "blk.3000.w"));
    sr_gguf_close(g);
    sr_test_gguf_free(&b);
}

/* Every file kept in tests/data/gguf/ (fuzz seeds and found cases) opens
 * or fails with SR_EFORMAT and a message naming it. By name: seed-* and ok-*
 * must open, bad-* must fail. */
static void test_data_dir(void **state) {
    DIR *d = opendir(DATA_DIR);
    if (!d) fail_msg("cannot open %s: run the test from the repository root", DATA_DIR);
    int seeds = 0, bad = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", DATA_DIR, e->d_name);
        sr_gguf *g = NULL;
        sr_error_clear();
        int rc = sr_gguf_open(&g, path);
        int must_open = strncmp(e->d_name, "seed-", 5) == 0 || strncmp(e->d_name, "ok-", 3) == 0;
        int must_fail = strncmp(e->d_name, "bad-", 4) == 0;
        if (must_open && rc != SR_OK) fail_msg("%s: does not open: %s", path, sr_error_msg());
        if (must_fail && rc == SR_OK) fail_msg("%s: opens, but was kept as a malformed file", path);
        if (rc != SR_OK && (rc != SR_EFORMAT || !strstr(sr_error_msg(), path)))
            fail_msg("%s: rc %d, '%s'", path, rc, sr_error_msg());
        if (rc == SR_OK) {
            for (uint64_t i = 0; i < g->n_tensors; i++) {
                const sr_gguf_tensor *t = &g->tensors[i];
                assert_true((const uint8_t *)t->data + t->n_bytes <= g->map + g->map_size);
                assert_true(finds_itself(g, t));
            }
            for (uint64_t i = 0; i < g->n_kv; i++) {
                const sr_gguf_kv *kv = &g->kv[i];
                if (kv->type == SR_GGUF_ARRAY && kv->arr_type == SR_GGUF_STRING && kv->arr_len) {
                    sr_gguf_str s = sr_gguf_arr_str(kv, kv->arr_len - 1);
                    assert_true((const uint8_t *)s.ptr + s.len <= g->map + g->map_size);
                }
            }
            sr_gguf_close(g);
        }
        seeds += strncmp(e->d_name, "seed-", 5) == 0;
        bad += must_fail;
    }
    closedir(d);
    if (seeds < 4 || bad < 20)
        fail_msg("%s holds %d seed-* and %d bad-* files; expected the fuzz seeds and found cases", DATA_DIR,
                 seeds, bad);
}

/* A file written by scripts/make-tiny-model (the gguf package's writer):
 * scripts/make-tiny-model tests/data/gguf/seed-tiny-llama-q4_0.gguf --type Q4_0
 *   --dim 32 --heads 2 --kv-heads 1 --ffn 64 --vocab 280 --layers 1 --tied */
static void test_tiny_model_file(void **state) {
    sr_gguf *g = NULL;
    if (sr_gguf_open(&g, DATA_DIR "/seed-tiny-llama-q4_0.gguf")) fail_msg("%s", sr_error_msg());
    expect_str(g, "general.architecture", "llama");
    expect_u32(g, "llama.block_count", 1);
    expect_u32(g, "llama.embedding_length", 32);
    expect_u32(g, "llama.rope.dimension_count", 16);
    expect_f32(g, "llama.rope.freq_base", 10000.0f);
    expect_u32(g, "tokenizer.ggml.eos_token_id", 2);
    const sr_gguf_kv *tok = sr_gguf_find(g, "tokenizer.ggml.tokens");
    assert_non_null(tok);
    assert_int_equal(tok->arr_len, 280);
    assert_true(str_is(sr_gguf_arr_str(tok, 1), "<|im_start|>"));
    assert_true(str_is(sr_gguf_arr_str(tok, 3), "\xc4\x80"));      /* byte 0x00 */
    assert_true(str_is(sr_gguf_arr_str(tok, 3 + 0x21), "!")); /* byte 0x21 */
    assert_true(str_is(sr_gguf_arr_str(tok, 279), "<|reserved_279|>"));
    const sr_gguf_kv *merges = sr_gguf_find(g, "tokenizer.ggml.merges");
    assert_non_null(merges);
    assert_true(str_is(sr_gguf_arr_str(merges, 0), "\xc4\xa0 t"));
    const sr_gguf_tensor *t = sr_gguf_tensor_find(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SR_GGML_Q4_0);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[1], 280);
    assert_int_equal(t->n_bytes, 280 * 18);
    t = sr_gguf_tensor_find(g, "blk.0.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 32);
    t = sr_gguf_tensor_find(g, "blk.0.attn_k.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[1], 16);
    assert_null(sr_gguf_tensor_find(g, "output.weight"));
    assert_int_equal(g->n_tensors, 2 + 9);
    sr_gguf_close(g);
}

SR_TEST_MAIN(cmocka_unit_test(test_real_model), cmocka_unit_test(test_small_v2), cmocka_unit_test(test_small_v3),
             cmocka_unit_test(test_small_alignments), cmocka_unit_test(test_truncation),
             cmocka_unit_test(test_corruptions), cmocka_unit_test(test_valid_neighbours),
             cmocka_unit_test(test_file_errors), cmocka_unit_test(test_two_views), cmocka_unit_test(test_data_dir),
             cmocka_unit_test(test_tiny_model_file), cmocka_unit_test(test_many_entries))
