/* attention/: the CPU kernels against the double-precision reference
 * (tests/unit/ref_attention.c) on fresh random inputs. The seed is printed;
 * SR_TEST_SEED=N repeats a run. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/status.h"
#include "tests/support/rng.h"
#include "tests/unit/ref_attention.h"

#define ATOL 2e-6
#define RTOL 2e-6

static uint64_t seed_state;

typedef struct {
    int64_t nq, nk;
    int hq, hkv, d, causal;
    int64_t qpos, kpos;
    int dtype;
    float scale;
} tcase;

typedef struct {
    sr_attn_desc desc;
    float *q, *o, *lse, *ref_o, *ref_lse;
    void *k, *v; /* stored as desc.kv_dtype */
} tdata;

static size_t dt_size(int dt) { return dt == SR_DT_F32 ? 4 : 2; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void poison(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

/* Random Q, K, V for a case, and the reference result. */
static void make_data(const tcase *c, tdata *t, float lo, float hi) {
    sr_attn_desc d = {c->nq, c->nk, c->hq, c->hkv, c->d, c->causal, c->qpos, c->kpos, c->scale, c->dtype};
    t->desc = d;
    int64_t nqe = c->nq * c->hq * c->d, nke = c->nk * c->hkv * c->d;
    t->q = xmalloc((size_t)nqe * 4);
    t->o = xmalloc((size_t)nqe * 4);
    t->ref_o = xmalloc((size_t)nqe * 4);
    t->lse = xmalloc((size_t)(c->nq * c->hq) * 4);
    t->ref_lse = xmalloc((size_t)(c->nq * c->hq) * 4);
    t->k = xmalloc((size_t)nke * dt_size(c->dtype));
    t->v = xmalloc((size_t)nke * dt_size(c->dtype));
    float *tmp = xmalloc((size_t)nke * 4);
    sr_ref_attn_fill(t->q, nqe, lo, hi, &seed_state);
    sr_ref_attn_fill(tmp, nke, lo, hi, &seed_state);
    sr_ref_attn_store(tmp, nke, c->dtype, t->k);
    sr_ref_attn_fill(tmp, nke, -1.0f, 1.0f, &seed_state);
    sr_ref_attn_store(tmp, nke, c->dtype, t->v);
    free(tmp);
    sr_ref_attn_forward(&t->desc, t->q, t->k, t->v, t->ref_o, t->ref_lse);
}

static void free_data(tdata *t) {
    free(t->q);
    free(t->o);
    free(t->ref_o);
    free(t->lse);
    free(t->ref_lse);
    free(t->k);
    free(t->v);
}

/* Runs the kernel on poisoned outputs and counts mismatches against the
 * reference. */
static int64_t run_and_compare(tdata *t, const sr_attn_kv *kv, int n_threads, const char *label) {
    int64_t rows = t->desc.nq * t->desc.n_head_q;
    poison(t->o, rows * t->desc.head_dim);
    poison(t->lse, rows);
    int rc = sr_attn_forward(&t->desc, t->q, kv, t->o, t->lse, n_threads);
    if (rc != SR_OK) {
        fprintf(stderr, "# %s: sr_attn_forward failed: %s\n", label, sr_error_msg());
        return -1;
    }
    int64_t bad = sr_ref_attn_compare("O", t->o, t->ref_o, rows * t->desc.head_dim, ATOL, RTOL);
    bad += sr_ref_attn_compare("LSE", t->lse, t->ref_lse, rows, ATOL, RTOL);
    if (bad)
        fprintf(stderr,
                "# %s: nq=%lld nk=%lld hq=%d hkv=%d d=%d causal=%d qpos=%lld kpos=%lld dt=%d "
                "threads=%d: %lld bad\n",
                label, (long long)t->desc.nq, (long long)t->desc.nk, t->desc.n_head_q,
                t->desc.n_head_kv, t->desc.head_dim, t->desc.causal, (long long)t->desc.q_pos0,
                (long long)t->desc.k_pos0, t->desc.kv_dtype, n_threads, (long long)bad);
    return bad;
}

static void check_case(const tcase *c, const int *threads, int n_threads_list) {
    tdata t;
    make_data(c, &t, -1.0f, 1.0f);
    sr_attn_kv kv = sr_attn_kv_dense(t.k, t.v);
    for (int i = 0; i < n_threads_list; i++) assert_int_equal(run_and_compare(&t, &kv, threads[i], "dense"), 0);
    free_data(&t);
}

static const int threads_13[] = {1, 3};
static const int threads_02[] = {0, 2}; /* 0: all cores */

static void test_shapes(void **state) {
    (void)state;
    static const tcase cases[] = {
        /* nq  nk  hq hkv d  causal qpos kpos dtype scale */
        {1, 1, 1, 1, 64, 0, 0, 0, SR_DT_F32, 0},
        {1, 1, 1, 1, 64, 1, 0, 0, SR_DT_F32, 0},
        {7, 1, 2, 2, 64, 0, 0, 0, SR_DT_F32, 0},
        {33, 1, 4, 1, 80, 1, 0, 0, SR_DT_F32, 0},
        {100, 37, 8, 1, 96, 0, 0, 0, SR_DT_F32, 0},   /* nq > nk, GQA 8 */
        {37, 100, 8, 2, 128, 0, 0, 0, SR_DT_F32, 0},  /* GQA 4 */
        {65, 129, 3, 3, 64, 1, 64, 0, SR_DT_F32, 0},  /* GQA 1, odd sizes */
        {129, 129, 4, 1, 128, 1, 0, 0, SR_DT_F32, 0}, /* square causal */
        {9, 300, 2, 1, 80, 1, 291, 0, SR_DT_F32, 0},  /* decode-like tail */
        {250, 77, 1, 1, 16, 1, 0, 0, SR_DT_F32, 0},   /* nq > nk causal */
        {31, 200, 5, 5, 96, 0, 0, 0, SR_DT_F32, 0.3f},
        {97, 97, 4, 2, 256, 1, 0, 0, SR_DT_F32, 0},
        {8, 513, 8, 1, 128, 0, 0, 0, SR_DT_F32, 0},   /* decode path */
        {2, 1000, 8, 8, 64, 1, 500, 0, SR_DT_F32, 0}, /* decode, half visible */
        {64, 5000, 4, 1, 64, 1, 4936, 0, SR_DT_F32, 0}, /* few query tiles: KV split too */
        {20, 50, 160, 1, 16, 1, 30, 0, SR_DT_F32, 0},   /* more heads per KV head than rows per item */
        {3, 4000, 16, 16, 80, 0, 0, 0, SR_DT_F32, 0},   /* decode over many KV heads */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i], threads_13, 2);
}

/* Key block before, overlapping and after the query block, by absolute
 * position; fully masked rows must come back as O = 0, LSE = -inf. */
static void test_causal_offsets(void **state) {
    (void)state;
    const int64_t nq = 45, nk = 70, qpos = 1000;
    const int64_t kpos[] = {0, qpos - nk, qpos - nk + 1, qpos - 30, qpos, qpos + 3, qpos + nq - 1, qpos + nq,
                            qpos + 5000};
    for (size_t i = 0; i < sizeof kpos / sizeof kpos[0]; i++) {
        for (int nqq = 0; nqq < 2; nqq++) {
            tcase c = {nqq ? 5 : nq, nk, 4, 2, 64, 1, qpos, kpos[i], SR_DT_F32, 0};
            tdata t;
            make_data(&c, &t, -1.0f, 1.0f);
            sr_attn_kv kv = sr_attn_kv_dense(t.k, t.v);
            assert_int_equal(run_and_compare(&t, &kv, 2, "causal"), 0);
            /* rows that see nothing: O exactly 0, LSE exactly -inf */
            for (int64_t r = 0; r < c.nq; r++) {
                if (c.kpos <= c.qpos + r) continue;
                for (int h = 0; h < c.hq; h++) {
                    assert_true(isinf(t.lse[r * c.hq + h]) && t.lse[r * c.hq + h] < 0);
                    for (int e = 0; e < c.d; e++) assert_true(t.o[(r * c.hq + h) * c.d + e] == 0.0f);
                }
            }
            free_data(&t);
        }
    }
}

static void test_kv_dtypes(void **state) {
    (void)state;
    const int dts[] = {SR_DT_F16, SR_DT_BF16};
    for (int i = 0; i < 2; i++) {
        const tcase cases[] = {
            {70, 150, 8, 2, 128, 1, 80, 0, dts[i], 0},
            {33, 64, 4, 4, 80, 0, 0, 0, dts[i], 0},
            {3, 2000, 4, 1, 96, 1, 1999, 0, dts[i], 0},
            {128, 130, 8, 1, 64, 1, 0, 0, dts[i], 0},
        };
        for (size_t j = 0; j < sizeof cases / sizeof cases[0]; j++) check_case(&cases[j], threads_02, 2);
    }
}

/* Sharp softmax (large scores) exercises the exp and the running max. An
 * fp32 score carries an error of about 1e-7 |score|, which exp turns into a
 * relative error of the weights: with scores up to ~50 the bound is 1e-5. */
static void test_large_scores(void **state) {
    (void)state;
    tcase c = {60, 300, 4, 1, 64, 1, 250, 0, SR_DT_F32, 0.5f};
    const int threads[] = {1, 2};
    for (int nq1 = 0; nq1 < 2; nq1++) {
        c.nq = nq1 ? 2 : 60;
        tdata t;
        make_data(&c, &t, -2.0f, 2.0f);
        sr_attn_kv kv = sr_attn_kv_dense(t.k, t.v);
        for (int i = 0; i < 2; i++) {
            int64_t rows = c.nq * c.hq;
            poison(t.o, rows * c.d);
            poison(t.lse, rows);
            assert_int_equal(sr_attn_forward(&t.desc, t.q, &kv, t.o, t.lse, threads[i]), SR_OK);
            assert_int_equal(sr_ref_attn_compare("sharp O", t.o, t.ref_o, rows * c.d, 1e-5, 1e-5), 0);
            assert_int_equal(sr_ref_attn_compare("sharp LSE", t.lse, t.ref_lse, rows, 1e-5, 1e-5), 0);
        }
        free_data(&t);
    }
}

/* K/V of t in blocks of bl rows, each its own allocation, the unused tail
 * of the last one poisoned: those rows must not be read. */
typedef struct {
    void **kb, **vb;
    int64_t nb;
} tpages;

static sr_attn_kv make_pages(const tcase *c, const tdata *t, int64_t bl, tpages *p) {
    size_t row = (size_t)c->hkv * c->d * dt_size(c->dtype);
    p->nb = (c->nk + bl - 1) / bl;
    p->kb = xmalloc((size_t)p->nb * sizeof *p->kb);
    p->vb = xmalloc((size_t)p->nb * sizeof *p->vb);
    for (int64_t i = 0; i < p->nb; i++) {
        int64_t used = (i == p->nb - 1) ? c->nk - i * bl : bl;
        p->kb[i] = xmalloc((size_t)bl * row);
        p->vb[i] = xmalloc((size_t)bl * row);
        memcpy(p->kb[i], (char *)t->k + (size_t)(i * bl) * row, (size_t)used * row);
        memcpy(p->vb[i], (char *)t->v + (size_t)(i * bl) * row, (size_t)used * row);
        if (used < bl) {
            memset((char *)p->kb[i] + (size_t)used * row, 0xff, (size_t)(bl - used) * row);
            memset((char *)p->vb[i] + (size_t)used * row, 0xff, (size_t)(bl - used) * row);
        }
    }
    sr_attn_kv kv = {0, 0, (const void *const *)p->kb, (const void *const *)p->vb, bl};
    return kv;
}

static void free_pages(tpages *p) {
    for (int64_t i = 0; i < p->nb; i++) {
        free(p->kb[i]);
        free(p->vb[i]);
    }
    free(p->kb);
    free(p->vb);
}

/* K/V in blocks of block_len rows, each its own allocation, the last one
 * partly used. */
static void test_paged(void **state) {
    (void)state;
    const int64_t block_lens[] = {1, 7, 64, 100, 1000};
    const int dts[] = {SR_DT_F32, SR_DT_F16, SR_DT_BF16};
    for (size_t b = 0; b < sizeof block_lens / sizeof block_lens[0]; b++) {
        for (int di = 0; di < 3; di++) {
            for (int nqi = 0; nqi < 2; nqi++) {
                tcase c = {nqi ? 4 : 50, 301, 4, 2, 64, 1, 290, 0, dts[di], 0};
                tdata t;
                make_data(&c, &t, -1.0f, 1.0f);
                tpages p;
                sr_attn_kv kv = make_pages(&c, &t, block_lens[b], &p);
                assert_int_equal(run_and_compare(&t, &kv, 2, "paged"), 0);
                free_pages(&p);
                free_data(&t);
            }
        }
    }
}

/* Decode over several KV heads, which the narrow kernels take together,
 * key row by key row: GQA ratios 1, 4 and 8, KV ranges long enough that
 * one item takes every head (>= 2048 keys) and shorter ones where items
 * take a subset, odd lengths, a causal tail, dense and paged (odd pages). */
static void test_decode_heads(void **state) {
    (void)state;
    static const tcase cases[] = {
        /* nq  nk  hq hkv d  causal qpos kpos dtype scale */
        {1, 4099, 8, 8, 64, 0, 0, 0, SR_DT_F16, 0},     /* GQA 1 */
        {1, 4099, 32, 8, 128, 0, 0, 0, SR_DT_F16, 0},   /* GQA 4, the bench's shape */
        {1, 2501, 16, 2, 80, 1, 2500, 0, SR_DT_BF16, 0}, /* GQA 8 */
        {2, 3001, 12, 3, 96, 1, 2990, 0, SR_DT_F32, 0},  /* two positions, causal tail */
        {1, 1500, 32, 8, 128, 0, 0, 0, SR_DT_F16, 0},   /* short: items take a subset of heads */
        {3, 777, 6, 6, 16, 1, 770, 0, SR_DT_BF16, 0},
        /* 5 to 12 rows per KV head: every row blocking of the kernels
         * (AVX-512 and AVX2), and head dims that leave odd vector counts */
        {1, 2100, 20, 4, 48, 0, 0, 0, SR_DT_F16, 0},     /* 5 rows */
        {2, 2100, 6, 2, 256, 1, 2098, 0, SR_DT_BF16, 0}, /* 6 */
        {1, 2100, 14, 2, 32, 0, 0, 0, SR_DT_F32, 0},     /* 7 */
        {3, 2100, 12, 4, 80, 1, 2097, 0, SR_DT_F16, 0},  /* 9 */
        {1, 2100, 22, 2, 112, 0, 0, 0, SR_DT_BF16, 0},   /* 11 */
        {4, 2100, 12, 4, 16, 1, 2096, 0, SR_DT_F16, 0},  /* 12 */
    };
    const int threads[] = {1, 2, 3};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tdata t;
        make_data(&cases[i], &t, -1.0f, 1.0f);
        sr_attn_kv kv = sr_attn_kv_dense(t.k, t.v);
        for (size_t j = 0; j < sizeof threads / sizeof threads[0]; j++)
            assert_int_equal(run_and_compare(&t, &kv, threads[j], "decode heads"), 0);
        tpages p;
        kv = make_pages(&cases[i], &t, 61, &p);
        assert_int_equal(run_and_compare(&t, &kv, 2, "decode heads paged"), 0);
        free_pages(&p);
        free_data(&t);
    }
}

/* Decode prefetches each next tile's K rows while it sums V: KV ranges that
 * end one row past, at, and one row short of a tile and a page, with pages
 * of one row and of one tile (the row pointers of the next tile walk the
 * page list up to its last entry, never past it; the sanitizer build
 * checks that), on one and two threads. */
static void test_decode_prefetch_pages(void **state) {
    (void)state;
    static const int64_t nks[] = {2049, 4096, 4159};
    static const int64_t block_lens[] = {1, 64};
    for (size_t i = 0; i < sizeof nks / sizeof nks[0]; i++) {
        tcase c = {1, nks[i], 32, 8, 128, 1, nks[i] - 1, 0, SR_DT_F16, 0};
        tdata t;
        make_data(&c, &t, -1.0f, 1.0f);
        for (size_t b = 0; b < sizeof block_lens / sizeof block_lens[0]; b++) {
            tpages p;
            sr_attn_kv kv = make_pages(&c, &t, block_lens[b], &p);
            for (int th = 1; th <= 2; th++) assert_int_equal(run_and_compare(&t, &kv, th, "decode prefetch paged"), 0);
            free_pages(&p);
        }
        free_data(&t);
    }
}

/* Splitting the KV range at random cut points (some pieces fully masked)
 * and merging equals the unsplit result, with sr_attn_merge and with a chain
 * of sr_attn_merge_into. */
static void test_merge_split(void **state) {
    (void)state;
    for (int trial = 0; trial < 12; trial++) {
        int64_t nq = trial % 3 == 0 ? 3 : 40 + (int64_t)sr_test_rng_below(&seed_state, 30);
        int64_t nk = 150 + (int64_t)sr_test_rng_below(&seed_state, 200);
        /* the later pieces lie after every query: fully masked */
        tcase c = {nq, nk, 4, 2, 64, trial % 4 != 3, nk - 60 + (int64_t)sr_test_rng_below(&seed_state, 40), 0,
                   trial % 2 ? SR_DT_F16 : SR_DT_F32, 0};
        tdata t;
        make_data(&c, &t, -1.0f, 1.0f);
        int n_parts = 2 + (int)sr_test_rng_below(&seed_state, 6);
        int64_t cuts[10];
        cuts[0] = 0;
        cuts[n_parts] = nk;
        for (int p = 1; p < n_parts; p++) { /* sorted random cuts, each piece >= 1 row */
            int64_t lo = cuts[p - 1] + 1, hi = nk - (n_parts - p);
            cuts[p] = lo + (int64_t)sr_test_rng_below(&seed_state, (uint64_t)(hi - lo + 1));
        }
        int64_t rows = nq * c.hq, oe = rows * c.d;
        float *po[10], *pl[10];
        size_t row = (size_t)c.hkv * c.d * dt_size(c.dtype);
        for (int p = 0; p < n_parts; p++) {
            sr_attn_desc d = t.desc;
            d.nk = cuts[p + 1] - cuts[p];
            d.k_pos0 = c.kpos + cuts[p];
            po[p] = xmalloc((size_t)oe * 4);
            pl[p] = xmalloc((size_t)rows * 4);
            poison(po[p], oe);
            poison(pl[p], rows);
            sr_attn_kv kv = sr_attn_kv_dense((char *)t.k + (size_t)cuts[p] * row, (char *)t.v + (size_t)cuts[p] * row);
            assert_int_equal(sr_attn_forward(&d, t.q, &kv, po[p], pl[p], 1 + p % 3), SR_OK);
        }
        poison(t.o, oe);
        poison(t.lse, rows);
        assert_int_equal(sr_attn_merge(n_parts, (const float *const *)po, (const float *const *)pl, rows,
                                       c.d, t.o, t.lse),
                         SR_OK);
        assert_int_equal(sr_ref_attn_compare("merged O", t.o, t.ref_o, oe, ATOL, RTOL), 0);
        assert_int_equal(sr_ref_attn_compare("merged LSE", t.lse, t.ref_lse, rows, ATOL, RTOL), 0);
        /* ring order: acc := part 0, then merge_into each later part */
        float *acc_o = xmalloc((size_t)oe * 4), *acc_l = xmalloc((size_t)rows * 4);
        memcpy(acc_o, po[n_parts - 1], (size_t)oe * 4);
        memcpy(acc_l, pl[n_parts - 1], (size_t)rows * 4);
        for (int p = n_parts - 2; p >= 0; p--)
            assert_int_equal(sr_attn_merge_into(acc_o, acc_l, po[p], pl[p], rows, c.d), SR_OK);
        assert_int_equal(sr_ref_attn_compare("merge_into O", acc_o, t.ref_o, oe, ATOL, RTOL), 0);
        assert_int_equal(sr_ref_attn_compare("merge_into LSE", acc_l, t.ref_lse, rows, ATOL, RTOL), 0);
        /* out aliasing part 0 */
        assert_int_equal(sr_attn_merge(n_parts, (const float *const *)po, (const float *const *)pl, rows,
                                       c.d, po[0], pl[0]),
                         SR_OK);
        assert_int_equal(sr_ref_attn_compare("aliased O", po[0], t.ref_o, oe, ATOL, RTOL), 0);
        assert_int_equal(sr_ref_attn_compare("aliased LSE", pl[0], t.ref_lse, rows, ATOL, RTOL), 0);
        free(acc_o);
        free(acc_l);
        for (int p = 0; p < n_parts; p++) {
            free(po[p]);
            free(pl[p]);
        }
        free_data(&t);
    }
}

/* Merging only empty parts stays empty; merging an empty part into a full
 * one changes nothing. */
static void test_merge_empty(void **state) {
    (void)state;
    enum { ROWS = 5, D = 16 };
    float o1[ROWS * D], l1[ROWS], o2[ROWS * D], l2[ROWS], o[ROWS * D], l[ROWS];
    for (int i = 0; i < ROWS * D; i++) o1[i] = o2[i] = 0.0f;
    for (int i = 0; i < ROWS; i++) l1[i] = l2[i] = -INFINITY;
    const float *op[2] = {o1, o2}, *lp[2] = {l1, l2};
    poison(o, ROWS * D);
    poison(l, ROWS);
    assert_int_equal(sr_attn_merge(2, op, lp, ROWS, D, o, l), SR_OK);
    for (int i = 0; i < ROWS * D; i++) assert_true(o[i] == 0.0f);
    for (int i = 0; i < ROWS; i++) assert_true(isinf(l[i]) && l[i] < 0);
    for (int i = 0; i < ROWS * D; i++) o2[i] = (float)i * 0.01f;
    for (int i = 0; i < ROWS; i++) l2[i] = 0.5f * (float)i;
    memcpy(o, o2, sizeof o);
    memcpy(l, l2, sizeof l);
    assert_int_equal(sr_attn_merge_into(o, l, o1, l1, ROWS, D), SR_OK);
    for (int i = 0; i < ROWS * D; i++) assert_float_equal(o[i], o2[i], 1e-7);
    for (int i = 0; i < ROWS; i++) assert_float_equal(l[i], l2[i], 1e-7);
}

/* Decode: a few query rows against a long f16 KV, split over threads. */
static void test_decode_long(void **state) {
    (void)state;
    const int64_t nqs[] = {1, 3, 8};
    const int threads[] = {1, 2, 3, 8};
    for (size_t i = 0; i < sizeof nqs / sizeof nqs[0]; i++) {
        int64_t nk = 100000;
        tcase c = {nqs[i], nk, 2, 1, 64, 1, nk - nqs[i] - (i == 1 ? 20000 : 0), 0, SR_DT_F16, 0};
        tdata t;
        make_data(&c, &t, -1.0f, 1.0f);
        sr_attn_kv kv = sr_attn_kv_dense(t.k, t.v);
        for (size_t j = 0; j < sizeof threads / sizeof threads[0]; j++)
            assert_int_equal(run_and_compare(&t, &kv, threads[j], "decode"), 0);
        free_data(&t);
    }
}

static void expect_einval(const sr_attn_desc *d, const sr_attn_kv *kv, const char *what) {
    float q[256], o[256], lse[16];
    sr_error_clear();
    int rc = sr_attn_forward(d, q, kv, o, lse, 1);
    if (rc != SR_EINVAL) fprintf(stderr, "# %s: got rc %d\n", what, rc);
    assert_int_equal(rc, SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "attention"));
}

static void test_errors(void **state) {
    (void)state;
    float kbuf[256] = {0}, vbuf[256] = {0};
    sr_attn_kv kv = sr_attn_kv_dense(kbuf, vbuf);
    const sr_attn_desc good = {1, 1, 1, 1, 64, 0, 0, 0, 0.0f, SR_DT_F32};
    assert_int_equal(sr_attn_desc_check(&good), SR_OK);
    sr_attn_desc d;
    d = good; d.nq = 0; expect_einval(&d, &kv, "nq 0");
    d = good; d.nk = 0; expect_einval(&d, &kv, "nk 0");
    d = good; d.nk = -5; expect_einval(&d, &kv, "nk < 0");
    d = good; d.n_head_kv = 0; expect_einval(&d, &kv, "hkv 0");
    d = good; d.n_head_q = 3; d.n_head_kv = 2; expect_einval(&d, &kv, "hq not a multiple");
    d = good; d.head_dim = 72; expect_einval(&d, &kv, "head_dim 72");
    d = good; d.head_dim = 0; expect_einval(&d, &kv, "head_dim 0");
    d = good; d.head_dim = 512; expect_einval(&d, &kv, "head_dim 512");
    d = good; d.causal = 2; expect_einval(&d, &kv, "causal 2");
    d = good; d.kv_dtype = 7; expect_einval(&d, &kv, "dtype 7");
    d = good; d.scale = NAN; expect_einval(&d, &kv, "scale nan");
    d = good; d.scale = -1.0f; expect_einval(&d, &kv, "scale < 0");
    d = good; d.q_pos0 = -1; expect_einval(&d, &kv, "q_pos0 < 0");
    assert_int_equal(sr_attn_desc_check(NULL), SR_EINVAL);
    sr_attn_kv half = sr_attn_kv_dense(kbuf, NULL);
    expect_einval(&good, &half, "v NULL");
    expect_einval(&good, NULL, "kv NULL");
    const void *blocks[1] = {kbuf}, *nullb[1] = {NULL};
    sr_attn_kv both = {kbuf, vbuf, blocks, blocks, 1};
    expect_einval(&good, &both, "dense and paged");
    sr_attn_kv paged0 = {0, 0, blocks, blocks, 0};
    expect_einval(&good, &paged0, "block_len 0");
    sr_attn_kv pagednull = {0, 0, blocks, nullb, 1};
    expect_einval(&good, &pagednull, "NULL block");
    float o[64], lse[1];
    assert_int_equal(sr_attn_forward(&good, NULL, &kv, o, lse, 1), SR_EINVAL);
    assert_int_equal(sr_attn_forward(&good, kbuf, &kv, o, NULL, 1), SR_EINVAL);
    const float *op[1] = {o}, *lp[1] = {lse};
    assert_int_equal(sr_attn_merge(0, op, lp, 1, 64, o, lse), SR_EINVAL);
    assert_int_equal(sr_attn_merge(1, op, lp, 1, 0, o, lse), SR_EINVAL);
    assert_int_equal(sr_attn_merge(1, op, lp, -1, 64, o, lse), SR_EINVAL);
    assert_int_equal(sr_attn_merge_into(o, NULL, o, lse, 1, 64), SR_EINVAL);
    /* an invalid description has no flops: 0, whatever is wrong with it */
    assert_true(sr_attn_flops(&d) == 0.0); /* d.q_pos0 < 0 */
    d = good; d.head_dim = 72;
    assert_true(sr_attn_flops(&d) == 0.0);
    assert_true(sr_attn_flops(NULL) == 0.0);
    assert_true(sr_attn_flops(&good) == 4.0 * 64); /* one pair, one head */
}

/* sr_attn_flops against counting the visible pairs one by one. */
static void test_flops(void **state) {
    (void)state;
    for (int trial = 0; trial < 200; trial++) {
        sr_attn_desc d = {1 + (int64_t)sr_test_rng_below(&seed_state, 60), 1 + (int64_t)sr_test_rng_below(&seed_state, 60),
                          8, 2, 64, trial % 5 != 0, (int64_t)sr_test_rng_below(&seed_state, 100),
                          (int64_t)sr_test_rng_below(&seed_state, 100), 0.0f, SR_DT_F32};
        double pairs = 0;
        for (int64_t i = 0; i < d.nq; i++)
            for (int64_t j = 0; j < d.nk; j++) pairs += !d.causal || d.k_pos0 + j <= d.q_pos0 + i;
        assert_true(sr_attn_flops(&d) == pairs * 4.0 * 64 * 8);
    }
}

int main(void) {
    const char *env = getenv("SR_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    seed_state = seed;
    printf("# SR_TEST_SEED=%llu\n", (unsigned long long)seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),       cmocka_unit_test(test_causal_offsets),
        cmocka_unit_test(test_kv_dtypes),    cmocka_unit_test(test_large_scores),
        cmocka_unit_test(test_paged),        cmocka_unit_test(test_merge_split),
        cmocka_unit_test(test_merge_empty),  cmocka_unit_test(test_decode_long),
        cmocka_unit_test(test_decode_heads), cmocka_unit_test(test_decode_prefetch_pages),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_flops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
