/* worker/cad: sr_cad_kv_estimate, the KV the coordinator budgets for each
 * attention server, against a real cache: for each server, the pieces it
 * would receive (every model worker's zigzag spans cut by the plan's
 * chunks on that server, in position order) reserved in an sr_kv_cache,
 * whose tokens and blocks must equal the estimate's, over sizes, worker
 * and server counts and block sizes; and the errors name the arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/status.h"
#include "model/kv_cache.h"
#include "worker/cad.h"

/* the reference's server s: tokens and blocks of a cache that reserves its pieces */
static void reference(const sr_cad_shape *sh, int64_t n, int w, int k, int s, int64_t *tokens, int64_t *blocks) {
    sr_cad_cost cost = sr_cad_cost_of(sh->n_head, sh->n_head_kv, sh->head_dim);
    cost.kv_row_bytes = 2 * (int64_t)sh->n_head_kv * sh->head_dim * 2; /* f16 on the wire, as the runtime plans */
    sr_cad_plan p;
    assert_int_equal(sr_cad_plan_build(&p, &n, 1, sh->chunk, k, &cost), SR_OK);
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, 1, 1, 8, SR_DT_F16, sh->kv_block), SR_OK);
    /* positions in order: walk the context, one token range at a time where owner and chunk agree */
    int64_t pos = 0;
    while (pos < n) {
        int64_t end = n;
        int on = 0;
        for (int64_t i = 0; i < p.n_chunks; i++) {
            const sr_cad_chunk *ch = &p.chunks[i];
            if (pos >= ch->pos0 && pos < ch->pos0 + ch->len) {
                on = ch->server == s;
                if (ch->pos0 + ch->len < end) end = ch->pos0 + ch->len;
            }
        }
        for (int r = 0; r < w; r++) {
            sr_span sp[2];
            assert_int_equal(sr_place_zigzag(n, w, r, sp), SR_OK);
            for (int i = 0; i < 2; i++)
                if (sp[i].len > 0 && pos >= sp[i].pos0 && pos < sp[i].pos0 + sp[i].len && sp[i].pos0 + sp[i].len < end)
                    end = sp[i].pos0 + sp[i].len;
        }
        if (on) {
            int64_t b0, off0;
            assert_int_equal(sr_kv_reserve(&c, pos, end - pos, &b0, &off0), SR_OK);
        }
        pos = end;
    }
    *tokens = c.n_tokens;
    *blocks = c.n_blocks;
    sr_kv_free(&c);
    sr_cad_plan_free(&p);
}

static void test_against_a_cache(void **state) {
    const int64_t sizes[] = {1, 5, 255, 256, 257, 794, 3000, 8192};
    const int64_t bss[] = {16, 256};
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int w = 1; w <= 3; w++)
            for (int k = 1; k <= 3; k++)
                for (size_t b = 0; b < 2; b++) {
                    sr_cad_shape sh = {.n_layer = 30, .n_head = 9, .n_head_kv = 3, .head_dim = 64,
                                       .kv_dtype = SR_DT_F16, .kv_block = bss[b], .chunk = 256};
                    int64_t tokens[3], blocks[3], sum = 0;
                    assert_int_equal(sr_cad_kv_estimate(&sh, sizes[a], w, k, tokens, blocks), SR_OK);
                    for (int s = 0; s < k; s++) {
                        int64_t rt, rb;
                        reference(&sh, sizes[a], w, k, s, &rt, &rb);
                        if (rt != tokens[s] || rb != blocks[s])
                            fail_msg("n %lld, %d workers, %d servers, blocks of %lld: server %d estimated %lld tokens "
                                     "in %lld blocks, the cache holds %lld in %lld", (long long)sizes[a], w, k,
                                     (long long)bss[b], s, (long long)tokens[s], (long long)blocks[s], (long long)rt,
                                     (long long)rb);
                        sum += tokens[s];
                    }
                    assert_int_equal(sum, sizes[a]);
                }
}

static void test_errors(void **state) {
    sr_cad_shape sh = {.n_layer = 2, .n_head = 4, .n_head_kv = 4, .head_dim = 64, .kv_dtype = SR_DT_F16, .kv_block = 256};
    int64_t t[1], b[1];
    assert_int_equal(sr_cad_kv_estimate(&sh, 100, 0, 1, t, b), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "0 workers and 1 servers"));
    assert_int_equal(sr_cad_kv_estimate(&sh, 100, 2, 0, t, b), SR_EINVAL);
    sh.kv_block = 0;
    assert_int_equal(sr_cad_kv_estimate(&sh, 100, 2, 1, t, b), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "kv blocks of 0 tokens"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_a_cache),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
