/* sr_matmul, sr_matmul_weight_row and the scalar sr_dequant_row against a
 * double-precision reference written here, element by element from the
 * block layouts (ref_elem), which is itself checked on hand-made blocks. It
 * shares no code with gguf/dequant.c: in the portable build sr_matmul_weight_row
 * is sr_dequant_row, so checking one against the other proved nothing. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/half.h"
#include "base/status.h"
#include "gguf/gguf.h"
#include "matmul/matmul.h"
#include "matmul/q8.h"
#include "gguf/quant_blocks.h"
#include "tests/support/rng.h"
#include "tests/support/unit_main.h"

static const uint32_t TYPES[] = {SR_GGML_F32, SR_GGML_F16, SR_GGML_BF16, SR_GGML_Q8_0,
                                 SR_GGML_Q4_0, SR_GGML_Q4_1, SR_GGML_Q6_K};
#define N_TYPES (sizeof(TYPES) / sizeof(TYPES[0]))

static uint64_t rng; /* one fixed stream: reproducible across runs */
static uint32_t rnd(void) { return (uint32_t)sr_test_rng_next(&rng); }
static float rndf(float lo, float hi) { return sr_test_rng_float(&rng, lo, hi); }

/* Random weights of `type`: raw blocks with random quants and sane scales. */
static void *random_weight(uint32_t type, int64_t k, int64_t m) {
    uint64_t rb = sr_ggml_row_bytes(type, k);
    assert_true(rb > 0);
    uint8_t *data = malloc(rb * (uint64_t)m);
    assert_non_null(data);
    for (int64_t r = 0; r < m; r++) {
        uint8_t *row = data + rb * (uint64_t)r;
        switch (type) {
        case SR_GGML_F32:
            for (int64_t j = 0; j < k; j++) ((float *)row)[j] = rndf(-1, 1);
            break;
        case SR_GGML_F16:
            for (int64_t j = 0; j < k; j++) ((sr_f16 *)row)[j] = sr_f32_to_f16(rndf(-1, 1));
            break;
        case SR_GGML_BF16:
            for (int64_t j = 0; j < k; j++) ((sr_bf16 *)row)[j] = sr_f32_to_bf16(rndf(-1, 1));
            break;
        case SR_GGML_Q8_0:
            for (int64_t b = 0; b < k / SR_QK; b++) {
                sr_block_q8_0 *q = (sr_block_q8_0 *)row + b;
                q->d = sr_f32_to_f16(rndf(0.001f, 0.02f));
                for (int j = 0; j < SR_QK; j++) q->qs[j] = (int8_t)((int)(rnd() % 255) - 127);
            }
            break;
        case SR_GGML_Q4_0:
            for (int64_t b = 0; b < k / SR_QK; b++) {
                sr_block_q4_0 *q = (sr_block_q4_0 *)row + b;
                q->d = sr_f32_to_f16(rndf(0.01f, 0.2f));
                for (int j = 0; j < SR_QK / 2; j++) q->qs[j] = (uint8_t)rnd();
            }
            break;
        case SR_GGML_Q4_1:
            for (int64_t b = 0; b < k / SR_QK; b++) {
                sr_block_q4_1 *q = (sr_block_q4_1 *)row + b;
                q->d = sr_f32_to_f16(rndf(0.01f, 0.2f));
                q->m = sr_f32_to_f16(rndf(-1.5f, 0.5f));
                for (int j = 0; j < SR_QK / 2; j++) q->qs[j] = (uint8_t)rnd();
            }
            break;
        case SR_GGML_Q6_K:
            for (int64_t b = 0; b < k / SR_QK_K; b++) {
                sr_block_q6_k *q = (sr_block_q6_k *)row + b;
                q->d = sr_f32_to_f16(rndf(0.0005f, 0.002f));
                for (int j = 0; j < SR_QK_K / 2; j++) q->ql[j] = (uint8_t)rnd();
                for (int j = 0; j < SR_QK_K / 4; j++) q->qh[j] = (uint8_t)rnd();
                for (int j = 0; j < SR_QK_K / 16; j++) q->scales[j] = (int8_t)((int)(rnd() % 128) - 64);
            }
            break;
        default: fail();
        }
    }
    return data;
}

static float *random_x(int64_t count) {
    float *x = malloc((size_t)count * sizeof(float));
    assert_non_null(x);
    for (int64_t i = 0; i < count; i++) x[i] = rndf(-1, 1);
    return x;
}

/* --- the reference: element e of a row, from the layouts of
 * gguf/quant_blocks.h read as raw little-endian bytes --- */

static double ref_f16(const uint8_t *p) {
    unsigned h = p[0] | (unsigned)p[1] << 8, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, (int)e - 25);
    return h >> 15 ? -v : v;
}

static double ref_elem(uint32_t type, const uint8_t *row, int64_t e) {
    switch (type) {
    case SR_GGML_F32: {
        float f;
        memcpy(&f, row + 4 * e, 4);
        return f;
    }
    case SR_GGML_F16: return ref_f16(row + 2 * e);
    case SR_GGML_BF16: {
        uint32_t u = (uint32_t)(row[2 * e] | row[2 * e + 1] << 8) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case SR_GGML_Q8_0: { /* d, then 32 int8 */
        const uint8_t *b = row + 34 * (e / 32);
        return ref_f16(b) * (int8_t)b[2 + e % 32];
    }
    case SR_GGML_Q4_0: { /* d, then 16 bytes: element j < 16 in the low nibble of byte j, j + 16 in its high one */
        const uint8_t *b = row + 18 * (e / 32);
        int j = (int)(e % 32), q = j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4;
        return ref_f16(b) * (q - 8);
    }
    case SR_GGML_Q4_1: { /* d, m, then nibbles as Q4_0 */
        const uint8_t *b = row + 20 * (e / 32);
        int j = (int)(e % 32), q = j < 16 ? b[4 + j] & 15 : b[4 + j - 16] >> 4;
        return ref_f16(b) * q + ref_f16(b + 2);
    }
    case SR_GGML_Q6_K: { /* ql[128], qh[64], scales[16], d */
        const uint8_t *b = row + 210 * (e / 256), *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        int p = (int)(e % 256), h = p / 128, i = p % 128 / 32, l = p % 32;
        int lo = ql[64 * h + l + 32 * (i & 1)];
        int q = (i < 2 ? lo & 15 : lo >> 4) | ((qh[32 * h + l] >> (2 * i)) & 3) << 4;
        return ref_f16(b + 208) * sc[8 * h + l / 16 + 2 * i] * (q - 32);
    }
    default: fail_msg("ref_elem: type %u", type);
    }
    return NAN;
}

/* Fails unless got[0..k) is ref_elem of the row to float precision: within
 * 1e-6 (1 + |value|), a few float roundings of the values used here. */
static void expect_row(const char *what, uint32_t type, const void *row, int64_t k, const float *got) {
    for (int64_t e = 0; e < k; e++) {
        double want = ref_elem(type, row, e);
        if (!(fabs(got[e] - want) <= 1e-6 * (1 + fabs(want))))
            fail_msg("%s %s: element %lld is %.9g, the layout gives %.9g", what, sr_ggml_type_name(type),
                     (long long)e, got[e], want);
    }
}

/* --- the reference itself, on hand-made blocks --- */

static void test_dequant_hand_q4_q8(void **state) {
    (void)state;
    float out[SR_QK];
    sr_block_q4_0 a = {.d = 0x3800}; /* 0.5 */
    memset(a.qs, 0x88, sizeof a.qs);  /* every quant 8: zero */
    a.qs[0] = 0x21;
    a.qs[15] = 0xf0;
    sr_dequant_row(SR_GGML_Q4_0, &a, SR_QK, out);
    assert_float_equal(out[0], -3.5f, 0);  /* 0.5 * (1 - 8) */
    assert_float_equal(out[16], -3.0f, 0); /* 0.5 * (2 - 8) */
    assert_float_equal(out[15], -4.0f, 0); /* 0.5 * (0 - 8) */
    assert_float_equal(out[31], 3.5f, 0);  /* 0.5 * (15 - 8) */
    assert_float_equal(out[1], 0.0f, 0);
    expect_row("hand", SR_GGML_Q4_0, &a, SR_QK, out);

    sr_block_q4_1 b = {.d = 0x3800, .m = 0x3c00}; /* 0.5, 1.0 */
    memset(b.qs, 0, sizeof b.qs);
    b.qs[3] = 0xf0;
    sr_dequant_row(SR_GGML_Q4_1, &b, SR_QK, out);
    assert_float_equal(out[3], 1.0f, 0);  /* 0 * 0.5 + 1 */
    assert_float_equal(out[19], 8.5f, 0); /* 15 * 0.5 + 1 */
    assert_float_equal(out[0], 1.0f, 0);
    expect_row("hand", SR_GGML_Q4_1, &b, SR_QK, out);

    sr_block_q8_0 c = {.d = 0x3400}; /* 0.25 */
    memset(c.qs, 0, sizeof c.qs);
    c.qs[5] = -7;
    c.qs[31] = 127;
    sr_dequant_row(SR_GGML_Q8_0, &c, SR_QK, out);
    assert_float_equal(out[5], -1.75f, 0);
    assert_float_equal(out[31], 31.75f, 0);
    assert_float_equal(out[6], 0.0f, 0);
    expect_row("hand", SR_GGML_Q8_0, &c, SR_QK, out);

    sr_f16 h[2] = {0x3c00, 0xc000}; /* 1, -2 */
    sr_dequant_row(SR_GGML_F16, h, 2, out);
    assert_float_equal(out[0], 1.0f, 0);
    assert_float_equal(out[1], -2.0f, 0);
    expect_row("hand", SR_GGML_F16, h, 2, out);
    sr_bf16 g[2] = {0x3f80, 0xc040}; /* 1, -3 */
    sr_dequant_row(SR_GGML_BF16, g, 2, out);
    assert_float_equal(out[0], 1.0f, 0);
    assert_float_equal(out[1], -3.0f, 0);
    expect_row("hand", SR_GGML_BF16, g, 2, out);
    /* halves by their definition: a subnormal, the largest finite, -0 */
    const uint8_t sub[2] = {0x01, 0x00}, big[2] = {0xff, 0x7b}, nz[2] = {0x00, 0x80};
    assert_true(ref_f16(sub) == 0x1p-24 && ref_f16(big) == 65504.0 && ref_f16(nz) == 0.0 && signbit(ref_f16(nz)));
}

static void test_dequant_hand_q6_k(void **state) {
    (void)state;
    float out[SR_QK_K];
    sr_block_q6_k b;
    memset(&b, 0, sizeof b);
    b.d = 0x4000; /* 2.0 */
    /* element 200: half 1, 72 into it: ql[64+8] high nibble, qh[32+8] bits 4-5, scale 12 */
    b.ql[72] = 0x50;
    b.qh[40] = 0x20;
    b.scales[12] = -3;
    /* element 37: half 0: ql[32+5] low nibble, qh[5] bits 2-3, scale 2 */
    b.ql[37] = 0x0a;
    b.qh[5] = 0x04;
    b.scales[2] = 7;
    sr_dequant_row(SR_GGML_Q6_K, &b, SR_QK_K, out);
    assert_float_equal(out[200], -30.0f, 0); /* 2 * -3 * ((5 | 2 << 4) - 32) */
    assert_float_equal(out[201], 192.0f, 0); /* 2 * -3 * (0 - 32) */
    assert_float_equal(out[37], -84.0f, 0);  /* 2 * 7 * ((10 | 1 << 4) - 32) */
    assert_float_equal(out[32], -448.0f, 0); /* 2 * 7 * -32 */
    assert_float_equal(out[0], 0.0f, 0);
    expect_row("hand", SR_GGML_Q6_K, &b, SR_QK_K, out);
}

/* sr_dequant_row on random rows of every type, two blocks long */
static void test_dequant_random(void **state) {
    (void)state;
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t k = 2 * (TYPES[t] == SR_GGML_Q6_K ? SR_QK_K : SR_QK), m = 5;
        uint8_t *w = random_weight(TYPES[t], k, m);
        float out[2 * SR_QK_K];
        uint64_t rb = sr_ggml_row_bytes(TYPES[t], k);
        for (int64_t r = 0; r < m; r++) {
            sr_dequant_row(TYPES[t], w + rb * (uint64_t)r, k, out);
            expect_row("sr_dequant_row", TYPES[t], w + rb * (uint64_t)r, k, out);
        }
        free(w);
    }
}

/* --- products --- */

/* Y = X W^T in double from ref_elem; returns max |err| / tolerance. */
static double check_product(const sr_matmul_weight *w, const float *x, const float *y, int64_t n) {
    double *row = malloc((size_t)w->k * sizeof(double));
    assert_non_null(row);
    double worst = 0;
    uint64_t rb = sr_ggml_row_bytes(w->type, w->k);
    int bad = 0;
    for (int64_t r = 0; r < w->m; r++) {
        for (int64_t j = 0; j < w->k; j++) row[j] = ref_elem(w->type, (const uint8_t *)w->data + rb * (uint64_t)r, j);
        for (int64_t i = 0; i < n; i++) {
            double s = 0, a = 0;
            for (int64_t j = 0; j < w->k; j++) {
                s += row[j] * x[i * w->k + j];
                a += fabs(row[j] * x[i * w->k + j]);
            }
            double got = y[i * w->m + r];
            double tol = 1e-5 * a + 1e-30;
            double e = isnan(got) ? INFINITY : fabs(got - s) / tol;
            if (e > 1 && bad++ < 5)
                fprintf(stderr, "# %s k=%lld m=%lld n=%lld: y[%lld,%lld] = %.9g, want %.9g\n",
                        sr_ggml_type_name(w->type), (long long)w->k, (long long)w->m, (long long)n,
                        (long long)i, (long long)r, got, s);
            if (e > worst) worst = e;
        }
    }
    free(row);
    return worst;
}

static void run_case(uint32_t type, int64_t k, int64_t m, int64_t n, int threads) {
    sr_matmul_weight w = {type, k, m, random_weight(type, k, m)};
    float *x = random_x(n * k);
    float *y = malloc((size_t)(n * m) * sizeof(float));
    assert_non_null(y);
    for (int64_t i = 0; i < n * m; i++) y[i] = NAN;
    int rc = sr_matmul(&w, x, y, n, threads);
    if (rc != SR_OK) fprintf(stderr, "# %s\n", sr_error_msg());
    assert_int_equal(rc, SR_OK);
    assert_true(check_product(&w, x, y, n) <= 1.0);
    free(y);
    free(x);
    free((void *)w.data);
}

static void test_products_all_types(void **state) {
    (void)state;
    static const int64_t ns[] = {1, 2, 3, 7, 16, 65};
    static const int64_t ms[] = {1, 5, 37, 130};
    static const int threads[] = {1, 2, 3};
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t bs = sr_dequant_block_size(TYPES[t]) == SR_QK_K ? SR_QK_K : SR_QK;
        for (int64_t k = bs; k <= 2 * bs; k += bs)
            for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
                for (size_t b = 0; b < sizeof ms / sizeof ms[0]; b++)
                    run_case(TYPES[t], k, ms[b], ns[a], threads[(a + b) % 3]);
    }
}

/* SmolLM2-like shapes, enough rows for the blocked paths to run full tiles and tails */
static void test_products_model_shapes(void **state) {
    (void)state;
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t k = TYPES[t] == SR_GGML_Q6_K ? 1536 : 576;
        run_case(TYPES[t], k, 67, 1, 2);
        run_case(TYPES[t], k, 67, 45, 2);
        run_case(TYPES[t], k, 192, 130, 3);
    }
}

/* Row lengths around the GEMV's scale chunks (Q4_1 takes the scales of 16
 * groups at a time, a tail of under 8 groups one by one): 7, 8, 15, 16,
 * 23 and 24 groups, one and two activation rows, odd and even row counts. */
static void test_products_scale_chunks(void **state) {
    (void)state;
    static const int64_t groups[] = {7, 8, 15, 16, 23, 24};
    for (size_t t = 0; t < N_TYPES; t++) {
        if (sr_dequant_block_size(TYPES[t]) != SR_QK) continue;
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
            run_case(TYPES[t], SR_QK * groups[g], 33, 1, 1);
            run_case(TYPES[t], SR_QK * groups[g], 34, 2, 2);
        }
    }
}

/* sr_matmul_multi: the same bits as one sr_matmul per weight (decode
 * relies on it to stay equal to the reference), for weights of different
 * types and row counts (the Q, K and V shapes) on 1-3 threads, GEMV and
 * GEMM sizes; and its argument errors. */
static void test_multi(void **state) {
    (void)state;
    static const int64_t ns[] = {1, 3, 9};
    const int64_t k = 576, ms[3] = {576, 192, 37};
    const uint32_t types[3] = {SR_GGML_Q4_1, SR_GGML_Q8_0, SR_GGML_F16};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (int threads = 1; threads <= 3; threads++) {
            int64_t n = ns[a];
            sr_matmul_weight w[3];
            const sr_matmul_weight *wp[3];
            float *y[3], *want[3];
            float *x = random_x(n * k);
            for (int i = 0; i < 3; i++) {
                w[i] = (sr_matmul_weight){types[i], k, ms[i], random_weight(types[i], k, ms[i])};
                wp[i] = &w[i];
                y[i] = malloc((size_t)(n * ms[i]) * sizeof(float));
                want[i] = malloc((size_t)(n * ms[i]) * sizeof(float));
                assert_non_null(y[i]);
                assert_non_null(want[i]);
                for (int64_t j = 0; j < n * ms[i]; j++) y[i][j] = NAN;
                assert_int_equal(sr_matmul(&w[i], x, want[i], n, threads), SR_OK);
            }
            assert_int_equal(sr_matmul_multi(3, wp, x, y, n, threads), SR_OK);
            for (int i = 0; i < 3; i++) {
                assert_memory_equal(y[i], want[i], (size_t)(n * ms[i]) * sizeof(float));
                free(y[i]);
                free(want[i]);
                free((void *)w[i].data);
            }
            free(x);
        }
    float x[64] = {0}, y0[64], y1[64];
    uint8_t data[1024] = {0};
    sr_matmul_weight a = {SR_GGML_F32, 32, 1, data}, b = {SR_GGML_F32, 64, 1, data};
    const sr_matmul_weight *ab[2] = {&a, &b};
    float *ys[2] = {y0, y1};
    assert_int_equal(sr_matmul_multi(2, ab, x, ys, 1, 1), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "k=64"));
    assert_int_equal(sr_matmul_multi(0, ab, x, ys, 1, 1), SR_EINVAL);
    ys[1] = NULL;
    ab[1] = &a;
    assert_int_equal(sr_matmul_multi(2, ab, x, ys, 1, 1), SR_EINVAL);
}

/* sr_matmul_q8 against the exact product with activations rounded to int8 as
 * its header specifies (groups of 32, the last one possibly shorter). */
static void round_q8(const float *x, int64_t n, int64_t k, float *xr) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t g0 = 0; g0 < k; g0 += 32) {
            const float *xg = x + i * k + g0;
            int64_t len = k - g0 < 32 ? k - g0 : 32;
            float amax = 0;
            for (int64_t j = 0; j < len; j++) amax = fmaxf(amax, fabsf(xg[j]));
            for (int64_t j = 0; j < len; j++)
                xr[i * k + g0 + j] = amax > 0 ? amax / 127.0f * nearbyintf(xg[j] * (127.0f / amax)) : 0;
        }
}

static void test_products_q8_activations(void **state) {
    (void)state;
    static const int64_t ns[] = {1, 2, 3, 5, 7, 9};
    static const int64_t ms[] = {1, 5, 37, 130};
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t k = TYPES[t] == SR_GGML_Q6_K ? 256 : t < 3 ? 81 : 96;
        for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
            for (size_t b = 0; b < sizeof ms / sizeof ms[0]; b++) {
                int64_t n = ns[a], m = ms[b];
                sr_matmul_weight w = {TYPES[t], k, m, random_weight(TYPES[t], k, m)};
                float *x = random_x(n * k), *xr = malloc((size_t)(n * k) * sizeof(float));
                float *y = malloc((size_t)(n * m) * sizeof(float));
                assert_non_null(xr);
                assert_non_null(y);
                x[0] = 0; /* a zero and a group's extreme */
                x[1] = -1;
                for (int64_t i = 0; i < n * m; i++) y[i] = NAN;
                assert_int_equal(sr_matmul_q8(&w, x, y, n, 1 + (int)(a % 3)), SR_OK);
                /* from 8 rows on it is sr_matmul, on the activations as given */
                if (n < 8) round_q8(x, n, k, xr);
                else memcpy(xr, x, (size_t)(n * k) * sizeof(float));
                assert_true(check_product(&w, xr, y, n) <= 1.0);
                free(y);
                free(xr);
                free(x);
                free((void *)w.data);
            }
    }
    /* a NaN or inf activation poisons its outputs, as it does in fp32 */
    sr_matmul_weight wn = {SR_GGML_Q4_1, 64, 3, random_weight(SR_GGML_Q4_1, 64, 3)};
    float xn[64], yn[3];
    for (int j = 0; j < 64; j++) xn[j] = 0.5f;
    xn[40] = NAN;
    assert_int_equal(sr_matmul_q8(&wn, xn, yn, 1, 1), SR_OK);
    for (int r = 0; r < 3; r++) assert_true(isnan(yn[r]));
    xn[40] = INFINITY;
    assert_int_equal(sr_matmul_q8(&wn, xn, yn, 1, 1), SR_OK);
    for (int r = 0; r < 3; r++) assert_false(isfinite(yn[r]));
    free((void *)wn.data);

    float x[32] = {0}, y[1];
    assert_int_equal(sr_matmul_q8(NULL, x, y, 1, 1), SR_EINVAL);
    sr_matmul_weight w = {SR_GGML_Q4_0, 48, 1, x};
    assert_int_equal(sr_matmul_q8(&w, x, y, 1, 1), SR_EINVAL);
}

/* float types take any k: tails shorter than a vector */
static void test_products_odd_k(void **state) {
    (void)state;
    static const int64_t ks[] = {1, 5, 37, 100};
    for (size_t t = 0; t < 3; t++)
        for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++) {
            run_case(TYPES[t], ks[a], 37, 1, 2);
            run_case(TYPES[t], ks[a], 5, 3, 1);
            run_case(TYPES[t], ks[a], 37, 29, 3);
        }
}

/* x, y and the weight rows need no particular alignment */
static void test_unaligned(void **state) {
    (void)state;
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t k = TYPES[t] == SR_GGML_Q6_K ? 256 : 64, m = 19;
        uint64_t rb = sr_ggml_row_bytes(TYPES[t], k);
        void *src = random_weight(TYPES[t], k, m);
        /* shift by 2 bytes: every type's blocks are 2-byte aligned in a GGUF file */
        uint8_t *buf = malloc(rb * (uint64_t)m + 2);
        assert_non_null(buf);
        memcpy(buf + 2, src, rb * (uint64_t)m);
        sr_matmul_weight w = {TYPES[t], k, m, TYPES[t] == SR_GGML_F32 ? src : buf + 2};
        for (int64_t n = 1; n <= 9; n += 8) {
            float *xb = random_x(n * k + 1), *yb = malloc((size_t)(n * m + 1) * sizeof(float));
            assert_non_null(yb);
            for (int64_t i = 0; i < n * m + 1; i++) yb[i] = NAN;
            assert_int_equal(sr_matmul(&w, xb + 1, yb + 1, n, 2), SR_OK);
            assert_true(check_product(&w, xb + 1, yb + 1, n) <= 1.0);
            free(yb);
            free(xb);
        }
        free(buf);
        free(src);
    }
}

static void test_weight_row(void **state) {
    (void)state;
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t k = TYPES[t] == SR_GGML_Q6_K ? 512 : 96, m = 7;
        sr_matmul_weight w = {TYPES[t], k, m, random_weight(TYPES[t], k, m)};
        float *got = malloc((size_t)k * sizeof(float));
        assert_non_null(got);
        uint64_t rb = sr_ggml_row_bytes(w.type, k);
        for (int64_t r = 0; r < m; r++) {
            for (int64_t j = 0; j < k; j++) got[j] = NAN;
            assert_int_equal(sr_matmul_weight_row(&w, r, got), SR_OK);
            expect_row("sr_matmul_weight_row", w.type, (const uint8_t *)w.data + rb * (uint64_t)r, k, got);
        }
        assert_int_equal(sr_matmul_weight_row(&w, m, got), SR_ERANGE);
        assert_int_equal(sr_matmul_weight_row(&w, -1, got), SR_ERANGE);
        free(got);
        free((void *)w.data);
    }
}

static void test_errors(void **state) {
    (void)state;
    float x[64] = {0}, y[64];
    uint8_t data[1024] = {0};
    sr_matmul_weight w = {SR_GGML_Q4_0, 48, 1, data}; /* 48: not a multiple of 32 */
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "multiple"));
    w = (sr_matmul_weight){SR_GGML_Q6_K, 128, 1, data};
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    w = (sr_matmul_weight){12 /* Q4_K */, 256, 1, data};
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "Q4_K"));
    w = (sr_matmul_weight){999, 32, 1, data};
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    assert_int_equal(sr_matmul_weight_row(&w, 0, y), SR_EINVAL);
    w = (sr_matmul_weight){SR_GGML_F32, 32, 1, data};
    assert_int_equal(sr_matmul(NULL, x, y, 1, 1), SR_EINVAL);
    assert_int_equal(sr_matmul(&w, NULL, y, 1, 1), SR_EINVAL);
    assert_int_equal(sr_matmul(&w, x, NULL, 1, 1), SR_EINVAL);
    assert_int_equal(sr_matmul(&w, x, y, -1, 1), SR_EINVAL);
    assert_int_equal(sr_matmul(&w, x, y, 1, 0), SR_EINVAL);
    assert_int_equal(sr_matmul_weight_row(&w, 0, NULL), SR_EINVAL);
    assert_int_equal(sr_matmul_weight_row(NULL, 0, y), SR_EINVAL);
    w.data = NULL;
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    w = (sr_matmul_weight){SR_GGML_F32, 0, 1, data};
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    w = (sr_matmul_weight){SR_GGML_F32, 32, 0, data};
    assert_int_equal(sr_matmul(&w, x, y, 1, 1), SR_EINVAL);
    /* n = 0 is an empty product, not an error */
    w = (sr_matmul_weight){SR_GGML_F32, 32, 1, data};
    assert_int_equal(sr_matmul(&w, x, y, 0, 1), SR_OK);
}

SR_TEST_MAIN(cmocka_unit_test(test_dequant_hand_q4_q8), cmocka_unit_test(test_dequant_hand_q6_k),
             cmocka_unit_test(test_dequant_random), cmocka_unit_test(test_products_all_types),
             cmocka_unit_test(test_products_model_shapes), cmocka_unit_test(test_products_scale_chunks),
             cmocka_unit_test(test_products_odd_k), cmocka_unit_test(test_products_q8_activations),
             cmocka_unit_test(test_multi), cmocka_unit_test(test_unaligned), cmocka_unit_test(test_weight_row),
             cmocka_unit_test(test_errors))
