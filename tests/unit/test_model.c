/* The model's config read from hand-built metadata, and the load's message
 * for a missing tensor: what needs no model file. The sampler and the KV
 * cache have their own tests (test_sampler.c, test_kv_cache.c). */
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
#include "model/model.h"

/* -------------------------------------------------------------- config */

enum { CFG_NO_HEADS = 1, CFG_QWEN2 = 2, CFG_LLAMA3 = 4, CFG_GPT2 = 8, CFG_BAD_GQA = 16, CFG_YARN = 32 };

/* Metadata of a SmolLM2-shaped model, with the variations in flags; no tensors. */
static void cfg_gguf(sr_test_gguf_buf *b, int flags) {
    const char *arch = flags & CFG_QWEN2 ? "qwen2" : flags & CFG_GPT2 ? "gpt2" : "llama";
    char k[64];
#define KEY(s) (snprintf(k, sizeof(k), "%s.%s", arch, s), k)
    int n_kv = 8 - !!(flags & CFG_NO_HEADS) + (flags & CFG_LLAMA3 ? 5 : 0) + (flags & CFG_YARN ? 1 : 0);
    memset(b, 0, sizeof(*b));
    sr_test_gguf_header(b, 3, 0, (uint64_t)n_kv);
    sr_test_gguf_kv_str(b, "general.architecture", arch);
    sr_test_gguf_kv_u32(b, KEY("embedding_length"), 576);
    sr_test_gguf_kv_u32(b, KEY("block_count"), 30);
    if (!(flags & CFG_NO_HEADS)) sr_test_gguf_kv_u32(b, KEY("attention.head_count"), 9);
    sr_test_gguf_kv_u32(b, KEY("attention.head_count_kv"), flags & CFG_BAD_GQA ? 4 : 3);
    sr_test_gguf_kv_u32(b, KEY("feed_forward_length"), 1536);
    sr_test_gguf_kv_f32(b, KEY("rope.freq_base"), 100000.0f);
    sr_test_gguf_kv_f32(b, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    if (flags & CFG_LLAMA3) {
        sr_test_gguf_kv_str(b, KEY("rope.scaling.type"), "llama3");
        sr_test_gguf_kv_f32(b, KEY("rope.scaling.factor"), 8.0f);
        sr_test_gguf_kv_u32(b, KEY("rope.scaling.original_context_length"), 8192);
        sr_test_gguf_kv_f32(b, KEY("rope.scaling.low_freq_factor"), 1.0f);
        sr_test_gguf_kv_f32(b, KEY("rope.scaling.high_freq_factor"), 4.0f);
    }
    if (flags & CFG_YARN) sr_test_gguf_kv_str(b, KEY("rope.scaling.type"), "yarn");
#undef KEY
    assert_int_equal(sr_buf_status(b), SR_OK);
}

static int cfg_read(int flags, sr_model_config *c) {
    sr_test_gguf_buf b;
    cfg_gguf(&b, flags);
    sr_gguf *g;
    assert_int_equal(sr_gguf_open_buffer(&g, b.data, b.len), SR_OK);
    int rc = sr_model_config_read(c, g);
    sr_gguf_close(g);
    sr_test_gguf_free(&b);
    return rc;
}

static void test_config(void **state) {
    sr_model_config c;
    assert_int_equal(cfg_read(0, &c), SR_OK);
    assert_int_equal(c.arch, SR_MODEL_ARCH_LLAMA);
    assert_int_equal(c.rope_type, SR_MODEL_ROPE_NORM);
    assert_int_equal(c.dim, 576);
    assert_int_equal(c.n_layer, 30);
    assert_int_equal(c.n_head, 9);
    assert_int_equal(c.n_head_kv, 3);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.rope_dim, 64);
    assert_int_equal(c.hidden_dim, 1536);
    assert_true(c.rope_theta == 100000.0f && c.norm_eps == 1e-5f && c.rope_scale == 1.0f && !c.rope_llama3);
    assert_int_equal(cfg_read(CFG_QWEN2, &c), SR_OK);
    assert_int_equal(c.arch, SR_MODEL_ARCH_QWEN2);
    assert_int_equal(c.rope_type, SR_MODEL_ROPE_NEOX);
    assert_int_equal(cfg_read(CFG_LLAMA3, &c), SR_OK);
    assert_true(c.rope_llama3 && c.rope_factor == 8.0f && c.rope_orig_ctx == 8192 && c.rope_high_freq == 4.0f);
}

static void test_config_errors(void **state) {
    sr_model_config c;
    assert_int_equal(cfg_read(CFG_GPT2, &c), SR_EUNSUPPORTED);
    assert_non_null(strstr(sr_error_msg(), "gpt2"));
    assert_int_equal(cfg_read(CFG_NO_HEADS, &c), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "llama.attention.head_count"));
    assert_int_equal(cfg_read(CFG_BAD_GQA, &c), SR_EFORMAT);
    assert_int_equal(cfg_read(CFG_YARN, &c), SR_EUNSUPPORTED);
    assert_non_null(strstr(sr_error_msg(), "yarn"));
}

static void test_load_missing_tensor(void **state) {
    /* complete metadata, no tensors: the load names the first missing one */
    sr_test_gguf_buf b;
    cfg_gguf(&b, 0);
    char path[] = "/tmp/sr_test_model_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b.data, 1, b.len, f), b.len);
    assert_int_equal(fclose(f), 0);
    sr_model *m = NULL;
    assert_int_equal(sr_model_load(&m, path, NULL), SR_EFORMAT);
    assert_null(m);
    assert_non_null(strstr(sr_error_msg(), "token_embd.weight"));
    unlink(path);
    sr_test_gguf_free(&b);
}

SR_TEST_MAIN(cmocka_unit_test(test_config), cmocka_unit_test(test_config_errors),
             cmocka_unit_test(test_load_missing_tensor))
