/* The pieces of the model runtime that need no model file: the config read
 * from hand-built metadata, the sampler on hand-made logits, and the KV
 * cache's blocks, runs, accounting and 64-bit positions. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/half.h"
#include "base/status.h"
#include "tests/unit/gguf_build.h"
#include "gguf/gguf.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/sampler.h"

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
    assert_false(b->oom);
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
    assert_int_equal(c.arch, SR_ARCH_LLAMA);
    assert_int_equal(c.rope_type, SR_ROPE_NORM);
    assert_int_equal(c.dim, 576);
    assert_int_equal(c.n_layer, 30);
    assert_int_equal(c.n_head, 9);
    assert_int_equal(c.n_head_kv, 3);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.rope_dim, 64);
    assert_int_equal(c.hidden_dim, 1536);
    assert_true(c.rope_theta == 100000.0f && c.norm_eps == 1e-5f && c.rope_scale == 1.0f && !c.rope_llama3);
    assert_int_equal(cfg_read(CFG_QWEN2, &c), SR_OK);
    assert_int_equal(c.arch, SR_ARCH_QWEN2);
    assert_int_equal(c.rope_type, SR_ROPE_NEOX);
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

/* ------------------------------------------------------------- sampler */

static sr_sampler make_sampler(float temp, int top_k, float top_p, float penalty, int vocab, uint64_t seed) {
    sr_sampler_params p = sr_sampler_defaults();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repeat_penalty = penalty;
    p.seed = seed;
    sr_sampler s;
    assert_int_equal(sr_sampler_build(&s, &p, vocab), SR_OK);
    return s;
}

static void test_greedy(void **state) {
    float logits[6] = {0.1f, -2.0f, 3.5f, 3.4f, 0.0f, -7.0f};
    sr_sampler s = make_sampler(0.0f, 40, 0.95f, 1.0f, 6, 1);
    for (int i = 0; i < 5; i++) assert_int_equal(sr_sampler_sample(&s, logits), 2);
    sr_sampler_free(&s);
}

static void test_repeat_penalty(void **state) {
    /* token 2 was just generated: 3.5 / 1.2 = 2.92 < 3.4, so 3 wins; a
     * negative logit is multiplied, so it stays the lowest */
    float logits[6] = {0.1f, -2.0f, 3.5f, 3.4f, 0.0f, -7.0f};
    sr_sampler s = make_sampler(0.0f, 0, 1.0f, 1.2f, 6, 1);
    assert_int_equal(sr_sampler_sample(&s, logits), 2);
    sr_sampler_accept(&s, 2);
    sr_sampler_accept(&s, 2); /* repeated in the window: penalised once */
    assert_int_equal(sr_sampler_sample(&s, logits), 3);
    assert_true(logits[2] == 3.5f); /* the caller's logits are not modified */
    sr_sampler_accept(&s, 3);
    assert_int_equal(sr_sampler_sample(&s, logits), 2); /* 2.92 vs 2.83 */
    sr_sampler_free(&s);
}

static void test_penalty_window(void **state) {
    /* only the last repeat_last_n tokens count */
    float logits[4] = {2.0f, 1.9f, 0.0f, 0.0f};
    sr_sampler_params p = sr_sampler_defaults();
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    sr_sampler s;
    assert_int_equal(sr_sampler_build(&s, &p, 4), SR_OK);
    sr_sampler_accept(&s, 0);
    assert_int_equal(sr_sampler_sample(&s, logits), 1);
    sr_sampler_accept(&s, 2);
    sr_sampler_accept(&s, 3); /* 0 has left the window */
    assert_int_equal(sr_sampler_sample(&s, logits), 0);
    sr_sampler_free(&s);
}

/* Draws n samples and counts each id. */
static void histogram(sr_sampler *s, const float *logits, int vocab, int n, int *count) {
    memset(count, 0, (size_t)vocab * sizeof(int));
    for (int i = 0; i < n; i++) {
        int32_t id = sr_sampler_sample(s, logits);
        assert_true(id >= 0 && id < vocab);
        count[id]++;
    }
}

/* Fails unless count[ids[i]] of n draws is within 5 standard deviations of
 * n * p[i] (p: the softmax of the ids' logits at temperature temp), and
 * unless uniform draws would fall outside that for the most likely id. */
static void expect_frequencies(const int *count, const int *ids, const float *logits, int k, float temp, int n) {
    double p[8], sum = 0;
    assert_true(k <= 8);
    for (int i = 0; i < k; i++) sum += p[i] = exp(logits[ids[i]] / temp);
    for (int i = 0; i < k; i++) {
        p[i] /= sum;
        double want = n * p[i], tol = 5 * sqrt(n * p[i] * (1 - p[i]));
        if (fabs(count[ids[i]] - want) > tol)
            fail_msg("id %d: %d of %d draws, want %.0f +- %.0f", ids[i], count[ids[i]], n, want, tol);
        if (i == 0) assert_true(fabs((double)n / k - want) > tol); /* the test rejects uniform */
    }
}

static void test_top_k(void **state) {
    enum { V = 1000, N = 4000 };
    float *logits = malloc(V * sizeof(float));
    int *count = malloc(V * sizeof(int));
    /* a permutation of 0..9.96, then the top 3 at 12, 11, 10: softmax
     * 0.665, 0.245, 0.090 among them, but over the whole vocabulary the
     * other 997 ids would take 93% of the mass */
    int top[3];
    for (int i = 0; i < V; i++) {
        int v = (i * 7919) % V;
        logits[i] = (float)v / 100.0f;
        if (v >= 997) {
            top[999 - v] = i;
            logits[i] = (float)(12 - (999 - v));
        }
    }
    sr_sampler s = make_sampler(1.0f, 3, 1.0f, 1.0f, V, 42);
    histogram(&s, logits, V, N, count);
    int in_top = count[top[0]] + count[top[1]] + count[top[2]];
    assert_int_equal(in_top, N);
    expect_frequencies(count, top, logits, 3, 1.0f, N);
    sr_sampler_free(&s);
    /* temperature 2 flattens them to 0.506, 0.307, 0.186 */
    s = make_sampler(2.0f, 3, 1.0f, 1.0f, V, 43);
    histogram(&s, logits, V, N, count);
    expect_frequencies(count, top, logits, 3, 2.0f, N);
    sr_sampler_free(&s);
    /* top-k 1 is greedy whatever the temperature */
    s = make_sampler(5.0f, 1, 1.0f, 1.0f, V, 7);
    for (int i = 0; i < 20; i++) assert_int_equal(sr_sampler_sample(&s, logits), top[0]);
    sr_sampler_free(&s);
    free(logits);
    free(count);
}

static void test_top_p(void **state) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 */
    float logits[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    int count[4];
    sr_sampler s = make_sampler(1.0f, 0, 0.7f, 1.0f, 4, 3);
    histogram(&s, logits, 4, 5000, count);
    /* 0.5 + 0.3 reaches 0.7: only ids 1 and 3, in ratio 5:3 */
    assert_int_equal(count[0] + count[2], 0);
    double frac = count[1] / 5000.0;
    assert_true(fabs(frac - 0.625) < 0.03);
    sr_sampler_free(&s);
    /* top-p 1 keeps all: the sampled frequencies follow the softmax */
    s = make_sampler(1.0f, 0, 1.0f, 1.0f, 4, 3);
    histogram(&s, logits, 4, 20000, count);
    const double want[4] = {0.15, 0.5, 0.05, 0.3};
    for (int i = 0; i < 4; i++) assert_true(fabs(count[i] / 20000.0 - want[i]) < 0.015);
    sr_sampler_free(&s);
}

static void test_seed_replays(void **state) {
    enum { V = 300 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = sinf((float)i);
    sr_sampler a = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 1234), b = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 1234),
               c = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 99);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        int32_t x = sr_sampler_sample(&a, logits), y = sr_sampler_sample(&b, logits), z = sr_sampler_sample(&c, logits);
        assert_int_equal(x, y);
        differ += x != z;
        sr_sampler_accept(&a, x);
        sr_sampler_accept(&b, y);
        sr_sampler_accept(&c, z);
    }
    assert_true(differ > 10);
    sr_sampler_free(&a);
    sr_sampler_free(&b);
    sr_sampler_free(&c);
}

static void test_sampler_rejects(void **state) {
    sr_sampler s;
    sr_sampler_params p = sr_sampler_defaults();
    p.top_p = 0.0f;
    assert_int_equal(sr_sampler_build(&s, &p, 10), SR_EINVAL);
    p = sr_sampler_defaults();
    p.temperature = -1.0f;
    assert_int_equal(sr_sampler_build(&s, &p, 10), SR_EINVAL);
    p = sr_sampler_defaults();
    assert_int_equal(sr_sampler_build(&s, &p, 0), SR_EINVAL);
}

/* ------------------------------------------------------------ KV cache */

static float kv_val(int64_t pos, int layer, int which, int64_t e) {
    return (float)((pos * 31 + layer * 7 + which * 3 + e) % 97) / 8.0f - 6.0f; /* exact in f16 and bf16 */
}

/* Stores n tokens at pos for every layer, with values from kv_val. */
static void kv_fill(sr_kv_cache *c, int64_t pos, int64_t n) {
    int64_t b0, off0;
    int64_t row = (int64_t)c->n_head_kv * c->head_dim;
    assert_int_equal(sr_kv_reserve(c, pos, n, &b0, &off0), SR_OK);
    float *k = malloc((size_t)(n * row) * sizeof(float)), *v = malloc((size_t)(n * row) * sizeof(float));
    for (int l = 0; l < c->n_layer; l++) {
        for (int64_t t = 0; t < n; t++)
            for (int64_t e = 0; e < row; e++) {
                k[t * row + e] = kv_val(pos + t, l, 0, e);
                v[t * row + e] = kv_val(pos + t, l, 1, e);
            }
        assert_int_equal(sr_kv_store(c, l, b0, off0, n, k, v), SR_OK);
    }
    free(k);
    free(v);
}

/* Checks every stored value by walking the per-layer block pointers. */
static void kv_check(const sr_kv_cache *c) {
    int64_t row = (int64_t)c->n_head_kv * c->head_dim;
    for (int l = 0; l < c->n_layer; l++)
        for (int64_t b = 0; b < c->n_blocks; b++)
            for (int64_t t = 0; t < c->block_len[b]; t++)
                for (int64_t e = 0; e < row; e++)
                    for (int which = 0; which < 2; which++) {
                        const void *blk = which ? c->v_ptr[l * c->cap_blocks + b] : c->k_ptr[l * c->cap_blocks + b];
                        uint16_t h = ((const uint16_t *)blk)[t * row + e];
                        float got = c->dtype == SR_DT_F16 ? sr_f16_to_f32(h) : sr_bf16_to_f32(h);
                        assert_true(got == kv_val(c->block_pos[b] + t, l, which, e));
                    }
}

static void test_kv_blocks(void **state) {
    for (int dt = SR_DT_F16; dt <= SR_DT_BF16; dt++) {
        sr_kv_cache c;
        assert_int_equal(sr_kv_build(&c, 3, 2, 16, dt, 8), SR_OK);
        assert_int_equal(sr_kv_block_bytes(&c), (size_t)3 * 2 * 8 * 2 * 16 * 2);
        kv_fill(&c, 0, 5);   /* block 0: 0..4 */
        kv_fill(&c, 5, 12);  /* fills block 0, block 1 full, block 2: 16 */
        kv_fill(&c, 17, 1);  /* continues block 2 */
        assert_int_equal(c.n_blocks, 3);
        assert_int_equal(c.n_tokens, 18);
        assert_int_equal(c.block_len[2], 2);
        assert_int_equal(sr_kv_bytes(&c), 3 * sr_kv_block_bytes(&c));
        kv_check(&c);
        sr_kv_run *runs;
        int64_t n_runs;
        assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
        assert_int_equal(n_runs, 1);
        assert_int_equal(runs[0].len, 18);
        assert_int_equal(runs[0].n, 3);
        free(runs);
        /* a gap in positions starts a new block and a new run */
        kv_fill(&c, 100, 10);
        assert_int_equal(c.n_blocks, 5);
        assert_int_equal(c.block_pos[3], 100);
        assert_int_equal(c.block_pos[4], 108);
        kv_check(&c);
        assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
        assert_int_equal(n_runs, 2);
        assert_int_equal(runs[1].b0, 3);
        assert_int_equal(runs[1].pos0, 100);
        assert_int_equal(runs[1].len, 10);
        free(runs);
        /* positions never go back */
        int64_t b0, off0;
        assert_int_equal(sr_kv_reserve(&c, 50, 1, &b0, &off0), SR_EINVAL);
        sr_kv_clear(&c);
        assert_int_equal(c.n_blocks, 0);
        assert_int_equal(sr_kv_bytes(&c), 0);
        sr_kv_free(&c);
    }
}

static void test_kv_push_block(void **state) {
    /* a block copied out of one cache and pushed into another reads the same */
    sr_kv_cache a, b;
    assert_int_equal(sr_kv_build(&a, 2, 1, 16, SR_DT_F16, 4), SR_OK);
    assert_int_equal(sr_kv_build(&b, 2, 1, 16, SR_DT_F16, 4), SR_OK);
    kv_fill(&a, 0, 7);
    assert_int_equal(sr_kv_push_block(&b, a.blocks[0], 0, 4), SR_OK);
    assert_int_equal(sr_kv_push_block(&b, a.blocks[1], 4, 3), SR_OK);
    assert_int_equal(b.n_tokens, 7);
    kv_check(&b);
    assert_int_equal(sr_kv_push_block(&b, a.blocks[0], 2, 4), SR_EINVAL); /* behind the end */
    sr_kv_free(&a);
    sr_kv_free(&b);
}

static void test_kv_attention_over_blocks(void **state) {
    /* paged attention over the cache equals dense attention over the same
     * values, across a partly filled last block */
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 1, 2, 16, SR_DT_F16, 8), SR_OK);
    kv_fill(&c, 0, 21);
    int64_t row = 32, nk = 21;
    float *k = malloc((size_t)(nk * row) * sizeof(float)), *v = malloc((size_t)(nk * row) * sizeof(float));
    for (int64_t t = 0; t < nk; t++)
        for (int64_t e = 0; e < row; e++) {
            k[t * row + e] = kv_val(t, 0, 0, e) / 8.0f;
            v[t * row + e] = kv_val(t, 0, 1, e);
        }
    float q[4 * 16], o1[4 * 16], o2[4 * 16], l1[4], l2[4]; /* one query row, 4 heads of 16 */
    for (int i = 0; i < 4 * 16; i++) q[i] = sinf((float)i) * 0.1f;
    sr_attn_desc d = {.nq = 1, .nk = nk, .n_head_q = 4, .n_head_kv = 2, .head_dim = 16, .causal = 1,
                      .q_pos0 = 20, .k_pos0 = 0, .scale = 0.125f, .kv_dtype = SR_DT_F16};
    sr_attn_kv paged = {NULL, NULL, c.k_ptr, c.v_ptr, c.block_size};
    assert_int_equal(sr_attn_forward(&d, q, &paged, o1, l1, 1), SR_OK);
    /* the cached K are kv_val, dense K are kv_val/8 at scale 1: same logits */
    d.kv_dtype = SR_DT_F32;
    d.scale = 1.0f;
    sr_attn_kv dense = sr_attn_kv_dense(k, v);
    assert_int_equal(sr_attn_forward(&d, q, &dense, o2, l2, 1), SR_OK);
    for (int i = 0; i < 4 * 16; i++) assert_true(fabsf(o1[i] - o2[i]) <= 1e-4f * (1.0f + fabsf(o2[i])));
    for (int i = 0; i < 4; i++) assert_true(fabsf(l1[i] - l2[i]) <= 1e-4f * (1.0f + fabsf(l2[i])));
    free(k);
    free(v);
    sr_kv_free(&c);
}

static void test_kv_64bit(void **state) {
    /* 80 layers x 8 KV heads x 128 dims, a 1M-token block: 320 GiB, which a
     * 32-bit size would wrap; computed, never allocated */
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 80, 8, 128, SR_DT_BF16, 1 << 20), SR_OK);
    assert_true(sr_kv_block_bytes(&c) == (size_t)80 * 2 * (1 << 20) * 8 * 128 * 2);
    assert_true(sr_kv_block_bytes(&c) > ((size_t)1 << 32));
    sr_kv_free(&c);
    /* positions past 2^32 in a small cache: blocks and runs keep them */
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, 4), SR_OK);
    int64_t far = ((int64_t)3 << 32) + 2;
    kv_fill(&c, far, 6);
    assert_true(c.block_pos[0] == far);
    assert_true(c.block_pos[1] == far + 4);
    kv_check(&c);
    sr_kv_run *runs;
    int64_t n_runs;
    assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
    assert_int_equal(n_runs, 1);
    assert_true(runs[0].pos0 == far && runs[0].len == 6);
    free(runs);
    sr_kv_free(&c);
}

static void test_kv_rejects(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, 7, 4), SR_EINVAL);
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, 0), SR_EINVAL);
    assert_int_equal(sr_kv_build(&c, 0, 1, 16, SR_DT_F16, 4), SR_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_load_missing_tensor),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_penalty_window),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_seed_replays),
        cmocka_unit_test(test_sampler_rejects),
        cmocka_unit_test(test_kv_blocks),
        cmocka_unit_test(test_kv_push_block),
        cmocka_unit_test(test_kv_attention_over_blocks),
        cmocka_unit_test(test_kv_64bit),
        cmocka_unit_test(test_kv_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
