/* model/kv_cache: dropping the tokens before a position in place (what Star
 * does with the anchor after phase 1), and reserving into a new block (what
 * lets each Star block be addressed as a run of its own). Every kept value
 * is read back at its position through the per-layer pointers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/half.h"
#include "base/status.h"
#include "model/kv_cache.h"

static float val(int64_t pos, int layer, int which, int64_t e) {
    return (float)((pos * 31 + layer * 7 + which * 3 + e) % 97) / 8.0f - 6.0f; /* exact in f16 and bf16 */
}

static float load(const sr_kv_cache *c, const void *part, int64_t i) {
    if (c->dtype == SR_DT_F32) return ((const float *)part)[i];
    uint16_t h = ((const uint16_t *)part)[i];
    return c->dtype == SR_DT_F16 ? sr_f16_to_f32(h) : sr_bf16_to_f32(h);
}

/* Stores n tokens at pos (in a new block if fresh) with values from val. */
static void fill(sr_kv_cache *c, int64_t pos, int64_t n, int fresh) {
    int64_t b0, off0 = 0, row = (int64_t)c->n_head_kv * c->head_dim;
    if (fresh)
        assert_int_equal(sr_kv_reserve_new_block(c, pos, n, &b0), SR_OK);
    else
        assert_int_equal(sr_kv_reserve(c, pos, n, &b0, &off0), SR_OK);
    float *k = malloc(sizeof(float) * (size_t)(n * row)), *v = malloc(sizeof(float) * (size_t)(n * row));
    for (int l = 0; l < c->n_layer; l++) {
        for (int64_t t = 0; t < n; t++)
            for (int64_t e = 0; e < row; e++) {
                k[t * row + e] = val(pos + t, l, 0, e);
                v[t * row + e] = val(pos + t, l, 1, e);
            }
        if (fresh)
            for (int64_t t = 0, b = b0; t < n; t += c->block_len[b], b++) /* block after block from b0 */
                assert_int_equal(sr_kv_store(c, l, b, 0, c->block_len[b], k + t * row, v + t * row), SR_OK);
        else
            assert_int_equal(sr_kv_store(c, l, b0, off0, n, k, v), SR_OK);
    }
    free(k);
    free(v);
}

/* Every block holds exactly the positions it claims, in increasing order,
 * n_tokens in all. */
static void check(const sr_kv_cache *c, int64_t n_tokens) {
    int64_t row = (int64_t)c->n_head_kv * c->head_dim, held = 0;
    for (int64_t b = 0; b < c->n_blocks; b++) {
        assert_true(c->block_len[b] >= 1 && c->block_len[b] <= c->block_size);
        if (b > 0) assert_true(c->block_pos[b] >= c->block_pos[b - 1] + c->block_len[b - 1]);
        held += c->block_len[b];
        for (int l = 0; l < c->n_layer; l++)
            for (int64_t t = 0; t < c->block_len[b]; t++)
                for (int64_t e = 0; e < row; e++) {
                    assert_true(load(c, c->k_ptr[l * c->cap_blocks + b], t * row + e) ==
                                val(c->block_pos[b] + t, l, 0, e));
                    assert_true(load(c, c->v_ptr[l * c->cap_blocks + b], t * row + e) ==
                                val(c->block_pos[b] + t, l, 1, e));
                }
    }
    assert_int_equal(held, n_tokens);
    assert_int_equal(c->n_tokens, n_tokens);
}

static void test_drop_before(void **state) {
    for (int dt = SR_DT_F32; dt <= SR_DT_BF16; dt++) {
        sr_kv_cache c;
        assert_int_equal(sr_kv_build(&c, 3, 2, 16, dt, 8), SR_OK);
        fill(&c, 0, 18, 0);   /* blocks 0..7, 8..15, 16..17 */
        fill(&c, 100, 10, 0); /* blocks 100..107, 108..109 */
        check(&c, 28);
        void *second = c.blocks[1], *fourth = c.blocks[3];
        size_t bytes = sr_kv_bytes(&c);

        /* inside block 0: it keeps 3..7, moved to its start; nothing allocated */
        assert_int_equal(sr_kv_drop_before(&c, 3), SR_OK);
        check(&c, 25);
        assert_int_equal(c.n_blocks, 5);
        assert_int_equal(c.block_pos[0], 3);
        assert_int_equal(c.block_len[0], 5);
        assert_ptr_equal(c.blocks[1], second);
        assert_int_equal(sr_kv_bytes(&c), bytes);

        /* block 0 goes, block 1 keeps 10..15 */
        assert_int_equal(sr_kv_drop_before(&c, 10), SR_OK);
        check(&c, 18);
        assert_int_equal(c.n_blocks, 4);
        assert_ptr_equal(c.blocks[0], second);
        assert_int_equal(c.block_pos[0], 10);
        assert_int_equal(sr_kv_bytes(&c), bytes - sr_kv_block_bytes(&c));

        /* in the gap: whole blocks only */
        assert_int_equal(sr_kv_drop_before(&c, 50), SR_OK);
        check(&c, 10);
        assert_int_equal(c.n_blocks, 2);
        assert_ptr_equal(c.blocks[0], fourth);
        assert_int_equal(c.block_pos[0], 100);
        sr_kv_run *runs;
        int64_t n_runs;
        assert_int_equal(sr_kv_runs(&c, &runs, &n_runs), SR_OK);
        assert_int_equal(n_runs, 1);
        assert_int_equal(runs[0].pos0, 100);
        assert_int_equal(runs[0].len, 10);
        free(runs);

        /* before the first position: nothing changes; then the cache grows on */
        assert_int_equal(sr_kv_drop_before(&c, 0), SR_OK);
        check(&c, 10);
        fill(&c, 110, 3, 0);
        check(&c, 13);

        /* past the end: empty, and usable again */
        assert_int_equal(sr_kv_drop_before(&c, 1000), SR_OK);
        check(&c, 0);
        assert_int_equal(c.n_blocks, 0);
        assert_int_equal(sr_kv_bytes(&c), 0);
        fill(&c, 2000, 9, 0);
        check(&c, 9);
        assert_int_equal(sr_kv_drop_before(&c, -1), SR_EINVAL);
        sr_kv_free(&c);
    }
}

static void test_reserve_new_block(void **state) {
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 2, 1, 16, SR_DT_F16, 8), SR_OK);
    fill(&c, 0, 5, 0);
    fill(&c, 5, 7, 1); /* would continue block 0; starts block 1 instead */
    check(&c, 12);
    assert_int_equal(c.n_blocks, 2);
    assert_int_equal(c.block_pos[1], 5);
    assert_int_equal(c.block_len[1], 7);
    fill(&c, 12, 3, 0); /* continues block 1, then block 2 */
    fill(&c, 15, 20, 1);
    check(&c, 35);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drop_before),
        cmocka_unit_test(test_reserve_new_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
