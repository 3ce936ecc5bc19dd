/* The small-batch matrix-vector path of sr_matmul (2 to SR_MATMUL__GEMM_MIN_N - 1
 * activation rows, a decode step of many requests): every row of a batch
 * equals, bit for bit, the same row multiplied alone, for every weight type,
 * odd shapes and 1-2 threads; sr_matmul_multi equals sr_matmul; and batches
 * on both sides of the switch to the matrix-matrix kernel agree with a
 * double-precision product of the reference dequantization (sr_dequant_row). */
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
#include "gguf/quant_blocks.h"
#include "matmul/kernels.h"
#include "matmul/matmul.h"
#include "tests/support/rng.h"

enum { MAX_N = 24 };

static const uint32_t TYPES[] = {SR_GGML_F32, SR_GGML_F16, SR_GGML_BF16, SR_GGML_Q8_0,
                                 SR_GGML_Q4_0, SR_GGML_Q4_1, SR_GGML_Q6_K};
#define N_TYPES (sizeof(TYPES) / sizeof(TYPES[0]))

/* k values per type: whole groups of 32, a tail past them (float types), and
 * for Q4_1 more than 16 groups (its kernel takes the scales 16 at a time) */
static int64_t k_of(uint32_t type, int variant) {
    switch (type) {
    case SR_GGML_F32: case SR_GGML_F16: case SR_GGML_BF16: return variant ? 45 : 96;
    case SR_GGML_Q6_K: return variant ? 512 : 256;
    default: return variant ? 608 : 160;
    }
}

/* Weights of `type`: random bits for the quants, then every block's scales
 * (and the float types' values) set to sane numbers, so that no product
 * overflows or loses its digits. */
static void *make_weight(uint32_t type, int64_t k, int64_t m, uint64_t *rng) {
    const uint64_t rb = sr_ggml_row_bytes(type, k), total = rb * (uint64_t)m;
    uint8_t *data = malloc(total);
    assert_non_null(data);
    for (uint64_t i = 0; i < total; i++) data[i] = (uint8_t)sr_test_rng_next(rng);
    const int64_t count = type == SR_GGML_F32 || type == SR_GGML_F16 || type == SR_GGML_BF16 ? k * m
                          : type == SR_GGML_Q6_K                                                ? k / SR_QK_K * m
                                                                                                : k / SR_QK * m;
    for (int64_t i = 0; i < count; i++) {
        float v = sr_test_rng_float(rng, -1, 1), s = sr_test_rng_float(rng, 0.002f, 0.05f);
        switch (type) {
        case SR_GGML_F32: ((float *)data)[i] = v; break;
        case SR_GGML_F16: ((sr_f16 *)data)[i] = sr_f32_to_f16(v); break;
        case SR_GGML_BF16: ((sr_bf16 *)data)[i] = sr_f32_to_bf16(v); break;
        case SR_GGML_Q8_0: ((sr_block_q8_0 *)data)[i].d = sr_f32_to_f16(s); break;
        case SR_GGML_Q4_0: ((sr_block_q4_0 *)data)[i].d = sr_f32_to_f16(s); break;
        case SR_GGML_Q4_1:
            ((sr_block_q4_1 *)data)[i].d = sr_f32_to_f16(s);
            ((sr_block_q4_1 *)data)[i].m = sr_f32_to_f16(v * 0.5f);
            break;
        case SR_GGML_Q6_K: ((sr_block_q6_k *)data)[i].d = sr_f32_to_f16(s / 32); break;
        default: fail_msg("type %u", type);
        }
    }
    return data;
}

static float *make_x(int64_t count, uint64_t *rng) {
    float *x = malloc(sizeof(float) * (size_t)count);
    assert_non_null(x);
    for (int64_t i = 0; i < count; i++) x[i] = sr_test_rng_float(rng, -1, 1);
    return x;
}

/* y, n rows of m, is NaN everywhere first: an output the kernel skips shows */
static float *make_y(int64_t count) {
    float *y = malloc(sizeof(float) * (size_t)count);
    assert_non_null(y);
    for (int64_t i = 0; i < count; i++) y[i] = NAN;
    return y;
}

static const int64_t MS[] = {1, 2, 7, 37, 130};
#define N_MS (sizeof(MS) / sizeof(MS[0]))

static void test_batch_rows_equal_alone(void **state) {
    (void)state;
    uint64_t rng = 5;
    int checked = 0;
    for (size_t t = 0; t < N_TYPES; t++)
        for (int variant = 0; variant < 2; variant++)
            for (size_t b = 0; b < N_MS; b++) {
                const int64_t k = k_of(TYPES[t], variant), m = MS[b];
                sr_matmul_weight w = {TYPES[t], k, m, make_weight(TYPES[t], k, m, &rng)};
                const int64_t max_n = SR_MATMUL__GEMM_MIN_N - 1;
                float *x = make_x(max_n * k, &rng), *alone = make_y(max_n * m), *y = make_y(max_n * m);
                int nt = 1 + (int)(b % 2);
                for (int64_t i = 0; i < max_n; i++)
                    assert_int_equal(sr_matmul(&w, x + i * k, alone + i * m, 1, nt), SR_OK);
                for (int64_t n = 2; n <= max_n; n++) {
                    assert_int_equal(sr_matmul(&w, x, y, n, nt), SR_OK);
                    for (int64_t i = 0; i < n; i++)
                        if (memcmp(y + i * m, alone + i * m, sizeof(float) * (size_t)m) != 0)
                            fail_msg("%s k=%lld m=%lld, %d threads: row %lld of a batch of %lld differs from it alone",
                                     sr_ggml_type_name(TYPES[t]), (long long)k, (long long)m, nt, (long long)i,
                                     (long long)n);
                    checked++;
                }
                free(x);
                free(alone);
                free(y);
                free((void *)w.data);
            }
    assert_int_equal(checked, (int)(N_TYPES * 2 * N_MS) * (SR_MATMUL__GEMM_MIN_N - 2));
}

/* Q, K, V of one input in one call give what three calls give. */
static void test_batch_multi_equals_single(void **state) {
    (void)state;
    uint64_t rng = 9;
    const int64_t k = 160, ms[3] = {130, 37, 37};
    for (size_t t = 3; t < N_TYPES; t++) {
        const int64_t kt = TYPES[t] == SR_GGML_Q6_K ? 256 : k;
        sr_matmul_weight ws[3];
        const sr_matmul_weight *wp[3];
        float *ym[3], *ys[3];
        for (int j = 0; j < 3; j++) {
            ws[j] = (sr_matmul_weight){TYPES[t], kt, ms[j], make_weight(TYPES[t], kt, ms[j], &rng)};
            wp[j] = &ws[j];
            ym[j] = make_y(MAX_N * ms[j]);
            ys[j] = make_y(MAX_N * ms[j]);
        }
        float *x = make_x(MAX_N * kt, &rng);
        for (int64_t n = 2; n < SR_MATMUL__GEMM_MIN_N; n += 3) {
            assert_int_equal(sr_matmul_multi(3, wp, x, ym, n, 2), SR_OK);
            for (int j = 0; j < 3; j++) {
                assert_int_equal(sr_matmul(&ws[j], x, ys[j], n, 2), SR_OK);
                assert_memory_equal(ym[j], ys[j], sizeof(float) * (size_t)(n * ms[j]));
            }
        }
        for (int j = 0; j < 3; j++) {
            free(ym[j]);
            free(ys[j]);
            free((void *)ws[j].data);
        }
        free(x);
    }
}

/* Every output against sum_j w_j x_j in double over the reference
 * dequantization; allowed 1e-5 of sum_j |w_j x_j| (fp32 weights and sums, a
 * kernel's own rounding of the scales). Returns the worst ratio to that. */
static double worst_error(const sr_matmul_weight *w, const float *x, const float *y, int64_t n) {
    const int64_t k = w->k, m = w->m;
    const uint64_t rb = sr_ggml_row_bytes(w->type, k);
    float *row = malloc(sizeof(float) * (size_t)k);
    assert_non_null(row);
    double worst = 0;
    for (int64_t r = 0; r < m; r++) {
        sr_dequant_row(w->type, (const uint8_t *)w->data + rb * (uint64_t)r, k, row);
        for (int64_t i = 0; i < n; i++) {
            double s = 0, mag = 0;
            for (int64_t j = 0; j < k; j++) {
                s += (double)row[j] * x[i * k + j];
                mag += fabs((double)row[j] * x[i * k + j]);
            }
            double e = fabs((double)y[i * m + r] - s) / (1e-5 * mag + 1e-30);
            if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
        }
    }
    free(row);
    return worst;
}

static void test_batch_against_reference(void **state) {
    (void)state;
    uint64_t rng = 13;
    /* 1 .. the last matrix-vector size, and the first matrix-matrix ones */
    static const int64_t ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, SR_MATMUL__GEMM_MIN_N - 1, SR_MATMUL__GEMM_MIN_N,
                                 SR_MATMUL__GEMM_MIN_N + 3};
    for (size_t t = 0; t < N_TYPES; t++)
        for (size_t b = 2; b < N_MS; b++) {
            const int64_t k = k_of(TYPES[t], (int)(b % 2)), m = MS[b];
            sr_matmul_weight w = {TYPES[t], k, m, make_weight(TYPES[t], k, m, &rng)};
            float *x = make_x(MAX_N * k, &rng), *y = make_y(MAX_N * m);
            for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
                assert_true(ns[a] <= MAX_N);
                assert_int_equal(sr_matmul(&w, x, y, ns[a], 2), SR_OK);
                double e = worst_error(&w, x, y, ns[a]);
                if (!(e <= 1.0))
                    fail_msg("%s k=%lld m=%lld n=%lld: an output is off by %.3g times the tolerance",
                             sr_ggml_type_name(TYPES[t]), (long long)k, (long long)m, (long long)ns[a], e);
            }
            free(x);
            free(y);
            free((void *)w.data);
        }
}

/* Without AVX-512 the kernels dequantize with sr_matmul__dequant, which
 * claims the reference's values: the portable and the AVX2 builds then
 * multiply the same weights. The AVX-512 loads round Q4_1 once, by FMA, so
 * that build has no such claim and does not plan this case (a run-time skip
 * would fail CI on AVX-512 hosts). */
#if !(defined(__AVX512F__) && defined(__AVX512BW__))
static void test_batch_dequant_is_reference(void **state) {
    (void)state;
    uint64_t rng = 17;
    for (size_t t = 0; t < N_TYPES; t++) {
        const int64_t k = k_of(TYPES[t], 1), m = 3;
        sr_matmul_weight w = {TYPES[t], k, m, make_weight(TYPES[t], k, m, &rng)};
        float *got = make_y(k), *want = make_y(k);
        for (int64_t r = 0; r < m; r++) {
            assert_int_equal(sr_matmul_weight_row(&w, r, got), SR_OK);
            sr_dequant_row(w.type, (const uint8_t *)w.data + sr_ggml_row_bytes(w.type, k) * (uint64_t)r, k, want);
            if (memcmp(got, want, sizeof(float) * (size_t)k) != 0)
                fail_msg("%s k=%lld: row %lld differs from sr_dequant_row's", sr_ggml_type_name(w.type), (long long)k,
                         (long long)r);
        }
        free(got);
        free(want);
        free((void *)w.data);
    }
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_rows_equal_alone),
        cmocka_unit_test(test_batch_multi_equals_single),
        cmocka_unit_test(test_batch_against_reference),
#if !(defined(__AVX512F__) && defined(__AVX512BW__))
        cmocka_unit_test(test_batch_dequant_is_reference),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
