/* worker/cad_plan: the scheduler of the attention servers, against its
 * definition (cad_plan.h): the chunks tile every document; every causal
 * (query, key) pair of every document is in exactly one task, on the
 * server of its KV chunk; each server's FLOPs and bytes recomputed from
 * the task list equal the plan's; max/mean FLOPs <= 1.05 for a mixed batch
 * (one 32k and sixteen 1k-4k documents), a single document, and more
 * servers than chunks; and the errors name the argument. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/support/unit_main.h"
#include "worker/cad_plan.h"

/* SmolLM2's shapes: 9 query heads of 64, 3 KV heads, KV sent in fp32 */
static const sr_cad_cost cost = {4 * 9 * 64, 8 * 3 * 64, 4 * 9 * 65, 4.0 * 9 * 64};

/* The chunks tile each document in order; the tasks are every (i, j) of a
 * document with j <= i once; FLOPs and bytes per server from the tasks
 * equal the plan's. */
static void check_plan(const sr_cad_plan *p, const int64_t *docs, int64_t n_docs) {
    int k = p->n_servers;
    int64_t at = 0;
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t pos = 0;
        while (at < p->n_chunks && p->chunks[at].doc == d) {
            const sr_cad_chunk *c = &p->chunks[at];
            if (c->pos0 != pos || c->len < 1 || c->len > p->chunk || c->server < 0 || c->server >= k)
                fail_msg("doc %lld chunk %lld: [%lld, +%lld) on server %d, want it to start at %lld, 1..%lld long",
                         (long long)d, (long long)at, (long long)c->pos0, (long long)c->len, c->server, (long long)pos,
                         (long long)p->chunk);
            pos += c->len;
            at++;
        }
        assert_int_equal(pos, docs[d]);
    }
    assert_int_equal(at, p->n_chunks);
    sr_cad_task *t = NULL;
    int64_t nt = 0;
    assert_int_equal(sr_cad_plan_tasks(p, &cost, &t, &nt), SR_OK);
    double *flops = calloc((size_t)k, sizeof *flops);
    int64_t *bytes = calloc((size_t)k, sizeof *bytes);
    char *has = calloc((size_t)(p->n_chunks * k), 1); /* q chunk i has a task on server s */
    /* (i, j) pairs in order: i rising, j from the document's first chunk to i */
    int64_t want = 0, first = 0;
    for (int64_t i = 0; i < p->n_chunks; i++) {
        if (i > 0 && p->chunks[i].doc != p->chunks[i - 1].doc) first = i;
        for (int64_t j = first; j <= i; j++, want++) {
            assert_true(want < nt);
            assert_int_equal(t[want].q, i);
            assert_int_equal(t[want].kv, j);
            int s = p->chunks[j].server;
            flops[s] += t[want].flops;
            has[i * k + s] = 1;
        }
    }
    assert_int_equal(want, nt);
    for (int64_t i = 0; i < p->n_chunks; i++) {
        bytes[p->chunks[i].server] += p->chunks[i].len * cost.kv_row_bytes;
        for (int s = 0; s < k; s++)
            if (has[i * k + s]) bytes[s] += p->chunks[i].len * (cost.q_row_bytes + cost.out_row_bytes);
    }
    double total = 0, most = 0;
    for (int s = 0; s < k; s++) {
        assert_true(fabs(flops[s] - p->flops[s]) <= 1e-9 * (p->flops[s] + 1));
        assert_int_equal(bytes[s], p->bytes[s]);
        total += flops[s];
        if (flops[s] > most) most = flops[s];
    }
    /* every causal pair of every document, len (len + 1) / 2 each */
    double pairs = 0;
    for (int64_t d = 0; d < n_docs; d++) pairs += (double)docs[d] * (docs[d] + 1) / 2;
    assert_true(fabs(total - pairs * cost.flops_per_pair) <= 1e-9 * total);
    assert_true(fabs(most / (total / k) - p->imbalance) <= 1e-9);
    free(t);
    free(flops);
    free(bytes);
    free(has);
}

static void plan_ok(const int64_t *docs, int64_t n_docs, int64_t chunk, int k, double bound) {
    sr_cad_plan p;
    int rc = sr_cad_plan_build(&p, docs, n_docs, chunk, k, &cost);
    if (rc != SR_OK) fail_msg("plan of %lld documents over %d servers: %s", (long long)n_docs, k, sr_error_msg());
    check_plan(&p, docs, n_docs);
    printf("# %lld documents, %d servers, chunk %lld -> %lld chunks of %lld, %s, imbalance %.4f, %.4f bytes/FLOP\n",
           (long long)n_docs, k, (long long)chunk, (long long)p.n_chunks, (long long)p.chunk,
           p.head_tail ? "head-tail" : "contiguous", p.imbalance, p.bytes_per_flop);
    if (!(p.imbalance <= bound))
        fail_msg("%lld documents over %d servers: imbalance %.4f above %.2f", (long long)n_docs, k, p.imbalance, bound);
    sr_cad_plan_free(&p);
}

static void test_mixed_batch(void **state) {
    int64_t docs[17] = {32768};
    for (int i = 1; i < 17; i++) docs[i] = 1024 + (int64_t)(i * 2654435761u % 3073); /* 1k..4k */
    const int ks[] = {2, 3, 4, 8, 16};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) plan_ok(docs, 17, 512, ks[i], SR_CAD_PLAN_BOUND);
}

static void test_single_document(void **state) {
    const int64_t ns[] = {32768, 1000, 4097, 100003};
    const int ks[] = {1, 2, 3, 7};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) plan_ok(&ns[i], 1, 256, ks[j], SR_CAD_PLAN_BOUND);
}

static void test_more_servers_than_chunks(void **state) {
    /* 4 chunks of 256 over 8 and 13 servers: the plan cuts finer */
    const int64_t n = 1000, two[] = {900, 77};
    plan_ok(&n, 1, 256, 8, SR_CAD_PLAN_BOUND);
    plan_ok(&n, 1, 256, 13, SR_CAD_PLAN_BOUND);
    plan_ok(two, 2, 4096, 6, SR_CAD_PLAN_BOUND);
}

/* Tokens too few to balance: the plan of least imbalance, which says so. */
static void test_unbalanceable(void **state) {
    const int64_t n = 3;
    sr_cad_plan p;
    assert_int_equal(sr_cad_plan_build(&p, &n, 1, 64, 4, &cost), SR_OK);
    check_plan(&p, &n, 1);
    /* 3 tokens carry 3, 2 and 1 pairs: the best is 3 / (6 / 4) */
    assert_true(fabs(p.imbalance - 2.0) < 1e-12);
    sr_cad_plan_free(&p);
}

/* Every causal token pair of small documents, counted over the tasks:
 * exactly once each. */
static void test_pairs_covered_once(void **state) {
    const int64_t docs[] = {7, 13, 1, 40};
    sr_cad_plan p;
    assert_int_equal(sr_cad_plan_build(&p, docs, 4, 3, 3, &cost), SR_OK);
    sr_cad_task *t = NULL;
    int64_t nt = 0;
    assert_int_equal(sr_cad_plan_tasks(&p, &cost, &t, &nt), SR_OK);
    for (int64_t d = 0; d < 4; d++) {
        int64_t n = docs[d];
        int *seen = calloc((size_t)(n * n), sizeof *seen);
        for (int64_t i = 0; i < nt; i++) {
            const sr_cad_chunk *q = &p.chunks[t[i].q], *kv = &p.chunks[t[i].kv];
            assert_int_equal(q->doc, kv->doc);
            if (q->doc != d) continue;
            for (int64_t a = q->pos0; a < q->pos0 + q->len; a++)
                for (int64_t b = kv->pos0; b < kv->pos0 + kv->len; b++)
                    if (b <= a) seen[a * n + b]++;
        }
        for (int64_t a = 0; a < n; a++)
            for (int64_t b = 0; b <= a; b++)
                if (seen[a * n + b] != 1) fail_msg("doc %lld pair (%lld, %lld) covered %d times", (long long)d,
                                                   (long long)a, (long long)b, seen[a * n + b]);
        free(seen);
    }
    free(t);
    sr_cad_plan_free(&p);
}

static void test_pairs(void **state) {
    for (int64_t q0 = 0; q0 < 12; q0++)
        for (int64_t nq = 0; nq < 6; nq++)
            for (int64_t k0 = 0; k0 < 12; k0++)
                for (int64_t nk = 0; nk < 6; nk++) {
                    double want = 0;
                    for (int64_t a = q0; a < q0 + nq; a++)
                        for (int64_t b = k0; b < k0 + nk; b++) want += b <= a;
                    assert_true(sr_cad_pairs(q0, nq, k0, nk) == want);
                }
    /* a million-token document's triangle, exactly */
    assert_true(sr_cad_pairs(0, 1000000, 0, 1000000) == 1000000.0 * 1000001 / 2);
}

static void expect_error(const int64_t *docs, int64_t n_docs, int64_t chunk, int k, const sr_cad_cost *c,
                         const char *needle) {
    sr_cad_plan p;
    assert_int_equal(sr_cad_plan_build(&p, docs, n_docs, chunk, k, c), SR_EINVAL);
    if (!strstr(sr_error_msg(), needle)) fail_msg("message \"%s\" lacks \"%s\"", sr_error_msg(), needle);
}

static void test_errors(void **state) {
    const int64_t ok[] = {10, 20}, bad[] = {10, 0}, huge[] = {(int64_t)1 << 41};
    sr_cad_cost free_pairs = cost;
    free_pairs.flops_per_pair = 0;
    expect_error(ok, 2, 0, 2, &cost, "chunk 0, allowed 1..");
    expect_error(ok, 2, 16, 0, &cost, "0 servers, allowed 1..");
    expect_error(bad, 2, 16, 2, &cost, "document 1 has 0 tokens");
    expect_error(huge, 1, 16, 2, &cost, "document 0 has 2199023255552 tokens");
    expect_error(ok, 0, 16, 2, &cost, "0 documents");
    expect_error(ok, 2, 16, 2, &free_pairs, "FLOPs per pair 0");
    /* a batch the cap cannot cut: one token per chunk past 2^16 chunks */
    const int64_t many = SR_CAD_PLAN_MAX_CHUNKS + 1;
    sr_cad_plan p;
    assert_int_equal(sr_cad_plan_build(&p, &many, 1, 1, 2, &cost), SR_ERANGE);
    assert_non_null(strstr(sr_error_msg(), "more than 65536 chunks"));
    sr_cad_plan_free(&p);
}

SR_TEST_MAIN(cmocka_unit_test(test_pairs), cmocka_unit_test(test_pairs_covered_once),
             cmocka_unit_test(test_mixed_batch), cmocka_unit_test(test_single_document),
             cmocka_unit_test(test_more_servers_than_chunks), cmocka_unit_test(test_unbalanceable),
             cmocka_unit_test(test_errors))
