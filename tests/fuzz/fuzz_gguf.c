/* libFuzzer target for gguf/gguf.c: any input must open or fail with
 * SR_EFORMAT and a message; on success every pointer handed out must lie
 * inside the input (ASan catches reads past it, since libFuzzer's buffer
 * has exactly the input's size). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "gguf/gguf.h"

static void fuzz_gguf_check(const sr_gguf *g, const uint8_t *data, size_t size) {
    const uint8_t *end = data + size;
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const sr_gguf_tensor *t = &g->tensors[i];
        const uint8_t *p = t->data;
        if (p < data || t->n_bytes > (uint64_t)(end - p)) __builtin_trap();
        if (t->n_bytes) sink ^= p[0] ^ p[t->n_bytes - 1];
        char name[256];
        if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
            memcpy(name, t->name.ptr, t->name.len);
            name[t->name.len] = '\0';
            if (sr_gguf_tensor_find(g, name) != t) __builtin_trap(); /* names are unique */
        }
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const sr_gguf_kv *kv = &g->kv[i];
        if ((const uint8_t *)kv->key.ptr < data || kv->key.len > (uint64_t)(end - (const uint8_t *)kv->key.ptr))
            __builtin_trap();
        char key[64];
        size_t n = kv->key.len < sizeof key - 1 ? kv->key.len : sizeof key - 1;
        memcpy(key, kv->key.ptr, n);
        key[n] = '\0';
        sr_gguf_find(g, key);
        uint32_t u;
        float f;
        int b;
        sr_gguf_str s;
        if (!memchr(key, 0, n) && n == kv->key.len) {
            sr_gguf_get_u32(g, key, &u);
            sr_gguf_get_f32(g, key, &f);
            sr_gguf_get_bool(g, key, &b);
            if (sr_gguf_get_str(g, key, &s) == SR_OK && s.len) sink ^= (uint8_t)s.ptr[s.len - 1];
        }
        if (kv->type == SR_GGUF_ARRAY && kv->arr_type == SR_GGUF_STRING) {
            sr_gguf_kv copy = *kv; /* takes the walking path */
            for (uint64_t j = 0; j < kv->arr_len && j < 64; j++) {
                sr_gguf_str a = sr_gguf_arr_str(kv, j), c = sr_gguf_arr_str(&copy, j);
                if (a.ptr != c.ptr || a.len != c.len) __builtin_trap();
                if ((const uint8_t *)a.ptr < data || a.len > (uint64_t)(end - (const uint8_t *)a.ptr))
                    __builtin_trap();
                if (a.len) sink ^= (uint8_t)a.ptr[a.len - 1];
            }
        }
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sr_gguf *g = NULL;
    int rc = sr_gguf_open_buffer(&g, data, size);
    if (rc == SR_OK) {
        fuzz_gguf_check(g, data, size);
        sr_gguf_close(g);
    } else if (rc != SR_EFORMAT || g != NULL || strncmp(sr_error_msg(), "buffer: ", 8) != 0) {
        __builtin_trap(); /* only SR_EFORMAT with a message (SR_ENOMEM cannot happen at these sizes) */
    }
    return 0;
}
