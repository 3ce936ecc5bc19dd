/* worker/placement: zigzag (ring) and contiguous-block (star) placements
 * checked against their definitions in placement.h over many shapes: one
 * rank, more ranks than tokens or blocks, block sizes that do not divide n,
 * anchors shorter and longer than a block, 2^62 tokens; and the errors. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/support/unit_main.h"
#include "worker/placement.h"

/* chunk c of k over n tokens starts at floor(c n / k), in 128 bits */
static int64_t chunk_start(int64_t n, int64_t k, int64_t c) {
    return (int64_t)((__int128)c * n / k);
}

/* Every rank's two chunks are the ones placement.h names; over all ranks
 * the chunks tile [0, n); rank totals differ by at most 2. */
static void check_zigzag(int64_t n, int world) {
    int64_t k = 2 * (int64_t)world, covered = 0, lo = INT64_MAX, hi = 0;
    for (int r = 0; r < world; r++) {
        sr_span s[2] = {{-1, -1}, {-1, -1}};
        if (sr_place_zigzag(n, world, r, s) != SR_OK) fail_msg("n %lld, W %d, rank %d: %s", (long long)n, world, r, sr_error_msg());
        const int64_t c[2] = {r, k - 1 - r};
        for (int i = 0; i < 2; i++) {
            int64_t pos0 = chunk_start(n, k, c[i]), len = chunk_start(n, k, c[i] + 1) - pos0;
            if (s[i].pos0 != pos0 || s[i].len != len)
                fail_msg("n %lld, W %d, rank %d, span %d: [%lld, +%lld), want chunk %lld: [%lld, +%lld)", (long long)n,
                         world, r, i, (long long)s[i].pos0, (long long)s[i].len, (long long)c[i], (long long)pos0,
                         (long long)len);
            assert_true(len == n / k || len == n / k + 1);
        }
        int64_t total = sr_span_total(s, 2);
        assert_true(total == s[0].len + s[1].len);
        covered += total;
        if (total < lo) lo = total;
        if (total > hi) hi = total;
    }
    /* chunks are consecutive by index, so the lengths summing to n tiles [0, n) */
    assert_true(covered == n);
    assert_true(hi - lo <= 2);
}

static void test_zigzag(void **state) {
    static const int64_t ns[] = {0, 1, 2, 3, 7, 8, 15, 16, 17, 100, 1000, 4097, 131072, 1000003};
    static const int worlds[] = {1, 2, 3, 4, 5, 8, 16, 64};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t w = 0; w < sizeof worlds / sizeof worlds[0]; w++) check_zigzag(ns[i], worlds[w]);
    check_zigzag((int64_t)1 << 62, 3);
    check_zigzag(((int64_t)1 << 62) + 12345, 1000);
    /* the most ranks there can be: the remainder times the chunk index
     * passes 2^63 (a signed overflow before) */
    const int64_t n = 2 * (int64_t)INT_MAX - 1, k = 2 * (int64_t)INT_MAX;
    const int ranks[] = {0, 1, INT_MAX / 2, INT_MAX - 1};
    for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++) {
        sr_span sp[2];
        assert_int_equal(sr_place_zigzag(n, INT_MAX, ranks[i], sp), SR_OK);
        const int64_t c[2] = {ranks[i], k - 1 - ranks[i]};
        for (int j = 0; j < 2; j++) {
            assert_true(sp[j].pos0 == chunk_start(n, k, c[j]));
            assert_true(sp[j].len == chunk_start(n, k, c[j] + 1) - chunk_start(n, k, c[j]));
        }
    }
    /* one rank holds both halves */
    sr_span s[2];
    assert_int_equal(sr_place_zigzag(11, 1, 0, s), SR_OK);
    assert_true(s[0].pos0 == 0 && s[0].len == 5 && s[1].pos0 == 5 && s[1].len == 6);
    /* 4 ranks over 8 tokens: rank 1 holds tokens 1 and 6 */
    assert_int_equal(sr_place_zigzag(8, 4, 1, s), SR_OK);
    assert_true(s[0].pos0 == 1 && s[0].len == 1 && s[1].pos0 == 6 && s[1].len == 1);
    /* fewer tokens than chunks: some spans are empty */
    assert_int_equal(sr_place_zigzag(3, 4, 0, s), SR_OK);
    assert_true(s[0].len == 0 && s[1].len == 1);
}

static void test_zigzag_errors(void **state) {
    sr_span s[2];
    const struct {
        int64_t n;
        int world, rank;
    } bad[] = {{-1, 2, 0}, {10, 0, 0}, {10, -3, 0}, {10, 2, 2}, {10, 2, -1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sr_error_clear();
        assert_int_equal(sr_place_zigzag(bad[i].n, bad[i].world, bad[i].rank, s), SR_EINVAL);
        assert_non_null(strstr(sr_error_msg(), "zigzag placement"));
    }
    assert_int_equal(sr_place_zigzag(10, 2, 0, NULL), SR_EINVAL);
    assert_int_equal(sr_span_total(s, 0), 0);
}

/* Blocks split as placement.h says: floor(nb / W) each, one more for the
 * first nb % W ranks, in rank order; own spans tile [0, n); the anchor is
 * the part of [0, a) before a rank's own tokens; and the stated bound of
 * ceil(n / W) + block tokens per rank holds. */
static void check_star(int64_t n, int64_t bs, int64_t anchor_len, int world) {
    int64_t nb = n / bs + (n % bs != 0), next_block = 0, next_pos = 0;
    int64_t a = anchor_len ? anchor_len : bs;
    if (a > n) a = n;
    for (int r = 0; r < world; r++) {
        sr_star_place p;
        memset(&p, 0xa5, sizeof p);
        if (sr_place_star(n, bs, anchor_len, world, r, &p) != SR_OK)
            fail_msg("n %lld, block %lld, anchor %lld, W %d, rank %d: %s", (long long)n, (long long)bs,
                     (long long)anchor_len, world, r, sr_error_msg());
        int64_t want_blocks = nb / world + (r < nb % world);
        if (p.block_size != bs || p.n_blocks != want_blocks || (want_blocks && p.first_block != next_block))
            fail_msg("n %lld, block %lld, W %d, rank %d: blocks %lld+%lld of size %lld, want %lld+%lld", (long long)n,
                     (long long)bs, world, r, (long long)p.first_block, (long long)p.n_blocks, (long long)p.block_size,
                     (long long)next_block, (long long)want_blocks);
        next_block += want_blocks;
        int64_t end = next_block * bs < n ? next_block * bs : n;
        if (p.own.len != end - next_pos || (p.own.len && p.own.pos0 != next_pos))
            fail_msg("n %lld, block %lld, W %d, rank %d: own [%lld, +%lld), want [%lld, +%lld)", (long long)n,
                     (long long)bs, world, r, (long long)p.own.pos0, (long long)p.own.len, (long long)next_pos,
                     (long long)(end - next_pos));
        int64_t want_anchor = p.own.len == 0 ? 0 : a < next_pos ? a : next_pos;
        if (p.anchor.pos0 != 0 || p.anchor.len != want_anchor)
            fail_msg("n %lld, block %lld, anchor %lld, W %d, rank %d: anchor [%lld, +%lld), want [0, +%lld)",
                     (long long)n, (long long)bs, (long long)anchor_len, world, r, (long long)p.anchor.pos0,
                     (long long)p.anchor.len, (long long)want_anchor);
        assert_true(p.own.len <= (n + world - 1) / world + bs);
        next_pos = end;
    }
    assert_true(next_block == nb && next_pos == n);
}

static void test_star(void **state) {
    static const int64_t ns[] = {0, 1, 5, 63, 64, 65, 127, 128, 129, 1000, 4096, 6000, 100003};
    static const int64_t blocks[] = {1, 7, 64, 128, 1536};
    static const int64_t anchors[] = {0, 1, 64, 100, 3072};
    static const int worlds[] = {1, 2, 3, 4, 7, 16, 200};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++)
            for (size_t a = 0; a < sizeof anchors / sizeof anchors[0]; a++)
                for (size_t w = 0; w < sizeof worlds / sizeof worlds[0]; w++)
                    check_star(ns[i], blocks[b], anchors[a], worlds[w]);
    check_star((int64_t)1 << 62, 256, 0, 5);
    check_star(((int64_t)1 << 62) + 3, (int64_t)1 << 20, 3 << 20, 1000);

    /* one rank: everything, no anchor to prepend */
    sr_star_place p;
    assert_int_equal(sr_place_star(1000, 128, 0, 1, 0, &p), SR_OK);
    assert_true(p.first_block == 0 && p.n_blocks == 8 && p.own.pos0 == 0 && p.own.len == 1000 && p.anchor.len == 0);
    /* 6000 tokens in blocks of 1536 on 4 ranks (the passkey test): one block
     * each, the last 1392 long; the anchor of 3072 covers rank 1's prefix
     * (1536) and the first two blocks for ranks 2 and 3 */
    const int64_t own_len[4] = {1536, 1536, 1536, 1392}, anchor[4] = {0, 1536, 3072, 3072};
    for (int r = 0; r < 4; r++) {
        assert_int_equal(sr_place_star(6000, 1536, 3072, 4, r, &p), SR_OK);
        assert_true(p.first_block == r && p.n_blocks == 1 && p.own.pos0 == 1536 * r);
        assert_true(p.own.len == own_len[r] && p.anchor.len == anchor[r]);
    }
    /* more ranks than blocks: the last ranks hold nothing and prepend nothing */
    assert_int_equal(sr_place_star(300, 128, 0, 5, 2, &p), SR_OK);
    assert_true(p.n_blocks == 1 && p.own.pos0 == 256 && p.own.len == 44 && p.anchor.len == 128);
    assert_int_equal(sr_place_star(300, 128, 0, 5, 3, &p), SR_OK);
    assert_true(p.n_blocks == 0 && p.own.len == 0 && p.anchor.len == 0);
    /* an anchor longer than the context is clipped to it */
    assert_int_equal(sr_place_star(100, 10, 500, 2, 1, &p), SR_OK);
    assert_true(p.own.pos0 == 50 && p.anchor.len == 50);
}

static void test_star_errors(void **state) {
    sr_star_place p;
    const struct {
        int64_t n, bs, anchor;
        int world, rank;
    } bad[] = {{-1, 64, 0, 2, 0}, {100, -64, 0, 2, 0}, {100, 64, -1, 2, 0},
               {100, 64, 0, 0, 0}, {100, 64, 0, 2, 2},  {100, 64, 0, 2, -1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sr_error_clear();
        assert_int_equal(sr_place_star(bad[i].n, bad[i].bs, bad[i].anchor, bad[i].world, bad[i].rank, &p), SR_EINVAL);
        assert_non_null(strstr(sr_error_msg(), "star placement"));
    }
    assert_int_equal(sr_place_star(100, 64, 0, 2, 0, NULL), SR_EINVAL);
}

SR_TEST_MAIN(cmocka_unit_test(test_zigzag), cmocka_unit_test(test_zigzag_errors), cmocka_unit_test(test_star),
             cmocka_unit_test(test_star_errors))
