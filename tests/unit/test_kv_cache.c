/* model/kv_cache: blocks, the per-layer pointers into them, runs,
 * accounting, 64-bit sizes and positions, dropping a prefix in place,
 * blocks of their own, and the errors; every stored value is read back
 * through the pointers attention uses. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/half.h"
#include "base/status.h"
#include "model/kv_cache.h"
#include "tests/support/unit_main.h"

static float kv_val(int64_t pos, int layer, int which, int64_t e) {
    return (float)((pos * 31 + layer * 7 + which * 3 + e) % 97) / 8.0f - 6.0f; /* exact in f16 and bf16 */
}

/* element i of a block part of the cache's dtype, as float */
static float kv_load(const sr_kv_cache *c, const void *part, int64_t i) {
    if (c->dtype == SR_DT_F32) return ((const float *)part)[i];
    uint16_t h = ((const uint16_t *)part)[i];
    return c->dtype == SR_DT_F16 ? sr_f16_to_f32(h) : sr_bf16_to_f32(h);
}

/* Layer l's K and V rows (row floats each) of the n tokens at pos. */
static void kv_rows(int64_t pos, int64_t n, int l, int64_t row, float *k, float *v) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t e = 0; e < row; e++) {
            k[t * row + e] = kv_val(pos + t, l, 0, e);
            v[t * row + e] = kv_val(pos + t, l, 1, e);
        }
}

/* Stores n tokens at pos for every layer, with values from kv_val. */
static void kv_fill(sr_kv_cache *c, int64_t pos, int64_t n) {
    int64_t b0, off0;
    int64_t row = (int64_t)c->n_head_kv * c->head_dim;
    assert_int_equal(sr_kv_reserve(c, pos, n, &b0, &off0), SR_OK);
    float *k = malloc((size_t)(n * row) * sizeof(float)), *v = malloc((size_t)(n * row) * sizeof(float));
    for (int l = 0; l < c->n_layer; l++) {
        kv_rows(pos, n, l, row, k, v);
        assert_int_equal(sr_kv_store(c, l, b0, off0, n, k, v), SR_OK);
    }
    free(k);
    free(v);
}

/* Checks every stored value by walking the per-layer block pointers, and
 * that those point into the blocks as kv_cache.h lays them out. */
/* The cache's one run of contiguous positions (it must have exactly one). */
static sr_kv_run only_run(const sr_kv_cache *c) {
    sr_kv_run *runs;
    int64_t n_runs;
    assert_int_equal(sr_kv_runs(c, &runs, &n_runs), SR_OK);
    assert_int_equal(n_runs, 1);
    sr_kv_run one = runs[0];
    free(runs);
    return one;
}

static void kv_check(const sr_kv_cache *c) {
    int64_t row = (int64_t)c->n_head_kv * c->head_dim, held = 0;
    size_t part = (size_t)c->block_size * sr_kv_row_bytes(c);
    for (int64_t b = 0; b < c->n_blocks; b++) {
        held += c->block_len[b];
        assert_true(c->block_len[b] >= 1 && c->block_len[b] <= c->block_size);
        for (int l = 0; l < c->n_layer; l++) {
            assert_ptr_equal(c->k_ptr[l * c->cap_blocks + b], (const char *)c->blocks[b] + 2 * (size_t)l * part);
            assert_ptr_equal(c->v_ptr[l * c->cap_blocks + b], (const char *)c->blocks[b] + (2 * (size_t)l + 1) * part);
        }
    }
    assert_int_equal(held, c->n_tokens);
    for (int l = 0; l < c->n_layer; l++)
        for (int64_t b = 0; b < c->n_blocks; b++)
            for (int64_t t = 0; t < c->block_len[b]; t++)
                for (int64_t e = 0; e < row; e++)
                    for (int which = 0; which < 2; which++) {
                        const void *blk = which ? c->v_ptr[l * c->cap_blocks + b] : c->k_ptr[l * c->cap_blocks + b];
                        float got = kv_load(c, blk, t * row + e), want = kv_val(c->block_pos[b] + t, l, which, e);
                        if (got != want)
                            fail_msg("layer %d block %lld token %lld %s[%lld]: %g, want %g", l, (long long)b,
                                     (long long)t, which ? "V" : "K", (long long)e, got, want);
                    }
}

static void test_kv_blocks(void **state) {
    static const int dts[] = {SR_DT_F16, SR_DT_BF16, SR_DT_F32};
    for (int d = 0; d < 3; d++) {
        int dt = dts[d];
        size_t elem = dt == SR_DT_F32 ? 4 : 2;
        sr_kv_cache c;
        assert_int_equal(sr_kv_build(&c, 3, 2, 16, dt, 8), SR_OK);
        assert_int_equal(sr_kv_row_bytes(&c), 2 * 16 * elem);
        assert_int_equal(sr_kv_block_bytes(&c), (size_t)3 * 2 * 8 * 2 * 16 * elem);
        kv_fill(&c, 0, 5);   /* block 0: 0..4 */
        kv_fill(&c, 5, 12);  /* fills block 0, block 1 full, block 2: 16 */
        kv_fill(&c, 17, 1);  /* continues block 2 */
        assert_int_equal(c.n_blocks, 3);
        assert_int_equal(c.n_tokens, 18);
        assert_int_equal(c.block_len[2], 2);
        assert_int_equal(sr_kv_bytes(&c), 3 * sr_kv_block_bytes(&c));
        kv_check(&c);
        sr_kv_run one = only_run(&c);
        assert_int_equal(one.len, 18);
        assert_int_equal(one.n, 3);
        sr_kv_run *runs;
        int64_t n_runs;
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
    sr_kv_run one = only_run(&c);
    assert_true(one.pos0 == far && one.len == 6);
    sr_kv_free(&c);
}

static void test_kv_rejects(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, 7, 4), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "f16, bf16 or f32"));
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, 0), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "block size 0 must be in 1..16777216"));
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, (1 << 24) + 1), SR_EINVAL);
    assert_int_equal(sr_kv_build(&c, 0, 1, 16, SR_DT_F16, 4), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "layers 0"));
    assert_int_equal(sr_kv_build(&c, 1, 0, 16, SR_DT_F16, 4), SR_EINVAL);
    assert_int_equal(sr_kv_build(&c, 1, 1, -16, SR_DT_F16, 4), SR_EINVAL);
}

/* out-of-range reserves, stores and pushes fail with a message; all but a
 * store running past the blocks leave the cache as it was */
static void test_kv_bounds(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 2, 1, 16, SR_DT_F16, 4), SR_OK);
    kv_fill(&c, 0, 6); /* block 0 full, block 1: 2 of 4 */
    int64_t b0 = -7, off0 = -7;
    const struct {
        int64_t pos, n;
        const char *msg;
    } reserves[] = {{6, 0, "reserve of 0 tokens"}, {6, -1, "reserve of -1"}, {-1, 1, "at -1"},
                    {5, 1, "position 5 is before the end of the cache (6)"}, {0, 3, "before the end"}};
    for (size_t i = 0; i < sizeof reserves / sizeof reserves[0]; i++) {
        assert_int_equal(sr_kv_reserve(&c, reserves[i].pos, reserves[i].n, &b0, &off0), SR_EINVAL);
        if (!strstr(sr_error_msg(), reserves[i].msg)) fail_msg("reserve %zu: '%s'", i, sr_error_msg());
    }
    float k[16 * 8] = {0}, v[16 * 8] = {0};
    const struct {
        int layer;
        int64_t b0, off0, n;
    } stores[] = {{-1, 0, 0, 1}, {2, 0, 0, 1}, {0, 2, 0, 1}, {0, -1, 0, 1}, {0, 0, 4, 1}, {0, 0, -1, 1}};
    for (size_t i = 0; i < sizeof stores / sizeof stores[0]; i++) {
        assert_int_equal(sr_kv_store(&c, stores[i].layer, stores[i].b0, stores[i].off0, stores[i].n, k, v), SR_EINVAL);
        if (!strstr(sr_error_msg(), "out of range")) fail_msg("store %zu: '%s'", i, sr_error_msg());
    }
    uint8_t *blk = calloc(1, sr_kv_block_bytes(&c));
    assert_non_null(blk);
    const int64_t pushes[][2] = {{6, 0}, {6, 5}, {-1, 1}, {5, 1}};
    for (size_t i = 0; i < sizeof pushes / sizeof pushes[0]; i++)
        assert_int_equal(sr_kv_push_block(&c, blk, pushes[i][0], pushes[i][1]), SR_EINVAL);
    free(blk);
    assert_int_equal(c.n_blocks, 2);
    assert_int_equal(c.n_tokens, 6);
    kv_check(&c);
    /* 2 + 4 + 4 rows from block 0 would need a third block */
    assert_int_equal(sr_kv_store(&c, 0, 0, 2, 10, k, v), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "runs past the reserved blocks"));
    assert_int_equal(sr_kv_store(&c, 0, 0, 2, -1, k, v), SR_EINVAL);
    kv_check(&c); /* a failed store wrote nothing */
    sr_kv_free(&c);
}

/* one reserve across many blocks, the pointer arrays regrown past their
 * first 16 blocks (laid out again per layer), block size 1, and a cleared
 * cache filled again */
static void test_kv_growth(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 3, 2, 8, SR_DT_BF16, 3), SR_OK);
    int64_t b0, off0;
    kv_fill(&c, 0, 2);
    assert_int_equal(sr_kv_reserve(&c, 2, 11, &b0, &off0), SR_OK); /* 1 + 3 + 3 + 3 + 1 */
    assert_true(b0 == 0 && off0 == 2);
    assert_int_equal(c.n_blocks, 5);
    assert_int_equal(c.block_len[4], 1);
    assert_int_equal(c.block_pos[4], 12);
    sr_kv_clear(&c);
    kv_fill(&c, 0, 100); /* 34 blocks: the arrays grow from 16 to 64 */
    assert_int_equal(c.n_blocks, 34);
    assert_true(c.cap_blocks >= 34);
    kv_check(&c);
    for (int i = 0; i < 7; i++) kv_fill(&c, 100 + i, 1); /* one at a time over block ends */
    assert_int_equal(c.n_blocks, 36);
    kv_check(&c);
    sr_kv_run one = only_run(&c);
    assert_true(one.n == 36 && one.len == 107);
    sr_kv_run *runs;
    int64_t n_runs;
    sr_kv_free(&c);

    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, 1), SR_OK);
    kv_fill(&c, 0, 5);
    kv_fill(&c, 9, 2);
    assert_int_equal(c.n_blocks, 7);
    kv_check(&c);
    assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
    assert_true(n_runs == 2 && runs[0].len == 5 && runs[1].b0 == 5 && runs[1].pos0 == 9 && runs[1].len == 2);
    free(runs);
    sr_kv_free(&c);
}

/* a run holds contiguous positions in full blocks but its last: a partly
 * filled block ends a run even when the next block continues its positions */
static void test_kv_runs(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 1, 1, 16, SR_DT_F16, 4), SR_OK);
    sr_kv_run *runs = (sr_kv_run *)1;
    int64_t n_runs = -1;
    assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
    assert_true(runs == NULL && n_runs == 0);
    uint8_t *blk = calloc(1, sr_kv_block_bytes(&c));
    assert_non_null(blk);
    assert_int_equal(sr_kv_push_block(&c, blk, 0, 3), SR_OK);  /* [0, 3) */
    assert_int_equal(sr_kv_push_block(&c, blk, 3, 4), SR_OK);  /* [3, 7): follows, but block 0 is short */
    assert_int_equal(sr_kv_push_block(&c, blk, 7, 4), SR_OK);  /* [7, 11) */
    assert_int_equal(sr_kv_push_block(&c, blk, 20, 2), SR_OK); /* [20, 22) */
    free(blk);
    assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
    assert_int_equal(n_runs, 3);
    assert_true(runs[0].b0 == 0 && runs[0].n == 1 && runs[0].pos0 == 0 && runs[0].len == 3);
    assert_true(runs[1].b0 == 1 && runs[1].n == 2 && runs[1].pos0 == 3 && runs[1].len == 8);
    assert_true(runs[2].b0 == 3 && runs[2].n == 1 && runs[2].pos0 == 20 && runs[2].len == 2);
    free(runs);
    assert_int_equal(c.n_tokens, 3 + 4 + 4 + 2);
    assert_int_equal(sr_kv_bytes(&c), 4 * sr_kv_block_bytes(&c));
    /* a reserve after a short pushed block at its end continues it */
    int64_t b0, off0;
    assert_int_equal(sr_kv_reserve(&c, 22, 3, &b0, &off0), SR_OK);
    assert_true(b0 == 3 && off0 == 2 && c.n_blocks == 5 && c.block_pos[4] == 24);
    sr_kv_free(&c);
}

/* Stores n tokens at pos in blocks of their own (sr_kv_reserve_new_block:
 * what lets each Star block be addressed as a run of its own). */
static void kv_fill_new_block(sr_kv_cache *c, int64_t pos, int64_t n) {
    int64_t b0, row = (int64_t)c->n_head_kv * c->head_dim;
    assert_int_equal(sr_kv_reserve_new_block(c, pos, n, &b0), SR_OK);
    float *k = malloc((size_t)(n * row) * sizeof(float)), *v = malloc((size_t)(n * row) * sizeof(float));
    for (int l = 0; l < c->n_layer; l++) {
        kv_rows(pos, n, l, row, k, v);
        for (int64_t t = 0, b = b0; t < n; t += c->block_len[b], b++) /* block after block from b0 */
            assert_int_equal(sr_kv_store(c, l, b, 0, c->block_len[b], k + t * row, v + t * row), SR_OK);
    }
    free(k);
    free(v);
}

/* kv_check, and that the blocks hold n_tokens in increasing positions. */
static void kv_check_n(const sr_kv_cache *c, int64_t n_tokens) {
    kv_check(c);
    for (int64_t b = 1; b < c->n_blocks; b++) assert_true(c->block_pos[b] >= c->block_pos[b - 1] + c->block_len[b - 1]);
    assert_int_equal(c->n_tokens, n_tokens);
}

/* Dropping the tokens before a position in place (what Star does with the
 * anchor after phase 1). */

static void test_drop_before(void **state) {
    for (int dt = SR_DT_F32; dt <= SR_DT_BF16; dt++) {
        sr_kv_cache c;
        assert_int_equal(sr_kv_build(&c, 3, 2, 16, dt, 8), SR_OK);
        kv_fill(&c, 0, 18);   /* blocks 0..7, 8..15, 16..17 */
        kv_fill(&c, 100, 10); /* blocks 100..107, 108..109 */
        kv_check_n(&c, 28);
        void *second = c.blocks[1], *fourth = c.blocks[3];
        size_t bytes = sr_kv_bytes(&c);

        /* inside block 0: it keeps 3..7, moved to its start; nothing allocated */
        assert_int_equal(sr_kv_drop_before(&c, 3), SR_OK);
        kv_check_n(&c, 25);
        assert_int_equal(c.n_blocks, 5);
        assert_int_equal(c.block_pos[0], 3);
        assert_int_equal(c.block_len[0], 5);
        assert_ptr_equal(c.blocks[1], second);
        assert_int_equal(sr_kv_bytes(&c), bytes);

        /* block 0 goes, block 1 keeps 10..15 */
        assert_int_equal(sr_kv_drop_before(&c, 10), SR_OK);
        kv_check_n(&c, 18);
        assert_int_equal(c.n_blocks, 4);
        assert_ptr_equal(c.blocks[0], second);
        assert_int_equal(c.block_pos[0], 10);
        assert_int_equal(sr_kv_bytes(&c), bytes - sr_kv_block_bytes(&c));

        /* in the gap: whole blocks only */
        assert_int_equal(sr_kv_drop_before(&c, 50), SR_OK);
        kv_check_n(&c, 10);
        assert_int_equal(c.n_blocks, 2);
        assert_ptr_equal(c.blocks[0], fourth);
        assert_int_equal(c.block_pos[0], 100);
        sr_kv_run one = only_run(&c);
        assert_int_equal(one.pos0, 100);
        assert_int_equal(one.len, 10);

        /* before the first position: nothing changes; then the cache grows on */
        assert_int_equal(sr_kv_drop_before(&c, 0), SR_OK);
        kv_check_n(&c, 10);
        kv_fill(&c, 110, 3);
        kv_check_n(&c, 13);

        /* past the end: empty, and usable again */
        assert_int_equal(sr_kv_drop_before(&c, 1000), SR_OK);
        kv_check_n(&c, 0);
        assert_int_equal(c.n_blocks, 0);
        assert_int_equal(sr_kv_bytes(&c), 0);
        kv_fill(&c, 2000, 9);
        kv_check_n(&c, 9);
        assert_int_equal(sr_kv_drop_before(&c, -1), SR_EINVAL);
        sr_kv_free(&c);
    }
}

static void test_reserve_new_block(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 2, 1, 16, SR_DT_F16, 8), SR_OK);
    kv_fill(&c, 0, 5);
    kv_fill_new_block(&c, 5, 7); /* would continue block 0; starts block 1 instead */
    kv_check_n(&c, 12);
    assert_int_equal(c.n_blocks, 2);
    assert_int_equal(c.block_pos[1], 5);
    assert_int_equal(c.block_len[1], 7);
    kv_fill(&c, 12, 3); /* continues block 1, then block 2 */
    kv_fill_new_block(&c, 15, 20);
    kv_check_n(&c, 35);
    /* runs: [0, 5), then [5, 15) and [15, 35) as their own runs */
    sr_kv_run *runs;
    int64_t n_runs;
    assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
    assert_int_equal(n_runs, 3);
    int64_t want[3][2] = {{0, 5}, {5, 10}, {15, 20}};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(runs[i].pos0, want[i][0]);
        assert_int_equal(runs[i].len, want[i][1]);
    }
    free(runs);
    int64_t b0;
    assert_int_equal(sr_kv_reserve_new_block(&c, 30, 1, &b0), SR_EINVAL); /* before the end */
    assert_int_equal(sr_kv_reserve_new_block(&c, 40, 0, &b0), SR_EINVAL);
    sr_kv_free(&c);
}

SR_TEST_MAIN(cmocka_unit_test(test_kv_blocks), cmocka_unit_test(test_kv_push_block),
             cmocka_unit_test(test_kv_attention_over_blocks), cmocka_unit_test(test_kv_64bit),
             cmocka_unit_test(test_kv_rejects), cmocka_unit_test(test_kv_bounds), cmocka_unit_test(test_kv_growth),
             cmocka_unit_test(test_kv_runs), cmocka_unit_test(test_drop_before),
             cmocka_unit_test(test_reserve_new_block))
