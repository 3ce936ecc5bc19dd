/* sr_matmul_q8: int8 activations, integer dot products (see matmul_q8.h). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "matmul/kernels.h"
#include "matmul/q8.h"
#include "gguf/quant_blocks.h"

/* From this many rows on (prefill), sr_matmul as it is (see q8.h). */
enum { Q8_MAX_N = 8 };

/* Quantized activations: row i, group g at q[i k + 32 g], scale d[i G + g],
 * and s8[i G + g] = d * sum(q) / 8, the group's sum spread over 8 lanes. */
typedef struct {
    int8_t *q;
    float *d, *s8;
    int64_t groups;
} q8_acts;

static void quantize(const float *x, int64_t n, int64_t k, q8_acts *a) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < a->groups; g++) {
            const float *xg = x + i * k + 32 * g;
            int8_t *qg = a->q + i * k + 32 * g;
            int len = k - 32 * g < 32 ? (int)(k - 32 * g) : 32;
            float amax = 0;
            int finite = 1;
            for (int j = 0; j < len; j++) {
                float v = fabsf(xg[j]);
                finite &= v <= FLT_MAX; /* false for inf and NaN */
                if (v > amax) amax = v;
            }
            /* a non-finite activation makes its group NaN, as in fp32 */
            float d = finite ? amax / 127.0f : NAN, inv = finite && amax > 0 ? 127.0f / amax : 0;
            int sum = 0;
            for (int j = 0; j < len; j++) {
                qg[j] = (int8_t)(finite ? nearbyintf(xg[j] * inv) : 0);
                sum += qg[j];
            }
            a->d[i * a->groups + g] = d;
            a->s8[i * a->groups + g] = d * (float)sum / 8;
        }
}

/* Any type: the rounded activations in fp32, through the exact kernels. */
static int rounded_fp32(const sr_matmul_weight *w, const q8_acts *a, float *y, int64_t n, int n_threads) {
    const int64_t k = w->k;
    float *xr = malloc((size_t)(n * k) * sizeof(float));
    if (!xr) return sr_error_set(SR_ENOMEM, "sr_matmul_q8: no memory for %lld activations", (long long)(n * k));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < k; j++) xr[i * k + j] = a->d[i * a->groups + j / 32] * (float)a->q[i * k + j];
    int rc = sr_matmul__gemv(w, xr, y, n, n_threads);
    free(xr);
    return rc;
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__) && defined(__F16C__)
#include <immintrin.h>

enum { NX_MAX = SR_MATMUL__GEMV_ROWS };

/* Per group: the 32 weight quants as bytes (u8 for the 4-bit types, s8 for
 * Q8_0), and the block's scales as [d, mn] with w = d q + mn (the Q4_0 and
 * Q8_0 offsets are folded into the activation side: see rows_t). */
static inline __attribute__((always_inline)) __m256i wquants(uint32_t type, const uint8_t *row, int64_t g, __m128 *dm) {
    if (type == SR_GGML_Q8_0) {
        const sr_block_q8_0 *b = (const sr_block_q8_0 *)row + g;
        *dm = _mm_cvtph_ps(_mm_set1_epi16((short)b->d));
        return _mm256_loadu_si256((const __m256i *)b->qs);
    }
    const uint8_t *qs;
    if (type == SR_GGML_Q4_0) {
        const sr_block_q4_0 *b = (const sr_block_q4_0 *)row + g;
        *dm = _mm_cvtph_ps(_mm_set1_epi16((short)b->d));
        qs = b->qs;
    } else {
        const sr_block_q4_1 *b = (const sr_block_q4_1 *)row + g;
        uint32_t both;
        memcpy(&both, &b->d, sizeof both);
        *dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)both));
        qs = b->qs;
    }
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
}

/* Rows r0..r1 of Y for nx activation rows, two weight rows at a time. Per
 * group, [d, mn] * [dx, c s8] gives the product's scale and its offset term
 * mn * sum(x) / 8, with c = 1 (Q4_1), -8 (Q4_0: mn = -8 d), 0 (Q8_0); the
 * offsets add up in lane 1 of `off`. Q8_0 multiplies signed by signed
 * through |w| and sign(x, w). */
static inline __attribute__((always_inline)) void rows_t(uint32_t type, int nx, const sr_matmul_weight *w,
                                                         const q8_acts *a, float *y, int64_t r0, int64_t r1) {
    const int64_t k = w->k, m = w->m, groups = k / 32;
    const uint64_t rb = sr_ggml_row_bytes(type, k);
    const float c = type == SR_GGML_Q4_1 ? 1.0f : type == SR_GGML_Q4_0 ? -8.0f : 0.0f;
    const __m128 cv = _mm_setr_ps(1, c, 0, 0);
    /* software prefetch as in the fp32 kernel (matmul_gemv.c) */
    const uint64_t gbytes = groups > 0 ? rb / (uint64_t)groups : 0, ahead = rb < 768 ? 1024 : 2048;
    for (int64_t r = r0; r < r1; r += 2) {
        const int nw = r + 1 < r1 ? 2 : 1;
        const uint8_t *row[2] = {(const uint8_t *)w->data + rb * (uint64_t)r, NULL};
        row[1] = nw == 2 ? row[0] + rb : row[0];
        __m256 acc[2][NX_MAX];
        __m128 off[2][NX_MAX];
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < NX_MAX; i++) {
                acc[b][i] = _mm256_setzero_ps();
                off[b][i] = _mm_setzero_ps();
            }
        for (int64_t g = 0; g < groups; g++) {
            __m128 dm[2];
            __m256i wq[2];
            _mm_prefetch((const char *)row[0] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            _mm_prefetch((const char *)row[1] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            wq[0] = wquants(type, row[0], g, &dm[0]);
            if (nw == 2) wq[1] = wquants(type, row[1], g, &dm[1]);
            for (int i = 0; i < nx; i++) {
                __m256i xq = _mm256_loadu_si256((const __m256i *)(a->q + i * k + 32 * g));
                __m128 xs = _mm_mul_ps(cv, _mm_setr_ps(a->d[i * groups + g], a->s8[i * groups + g], 0, 0));
                for (int b = 0; b < nw; b++) {
                    __m256i p;
                    if (type == SR_GGML_Q8_0)
                        p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(wq[b]), _mm256_sign_epi8(xq, wq[b]));
                    else
                        p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq[b], xq);
                    __m128 prod = _mm_mul_ps(dm[b], xs);
                    acc[b][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(prod), acc[b][i]);
                    off[b][i] = _mm_add_ps(off[b][i], prod);
                }
            }
        }
        for (int b = 0; b < nw; b++)
            for (int i = 0; i < nx; i++) {
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[b][i]), _mm256_extractf128_ps(acc[b][i], 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_movehdup_ps(h));
                y[i * m + r + b] = _mm_cvtss_f32(h) + 8 * _mm_cvtss_f32(_mm_movehdup_ps(off[b][i]));
            }
    }
}

#define NX_CASES(T)                                            \
    switch (nx) {                                              \
    case 1: rows_t(T, 1, w, a, y, r0, r1); break;              \
    case 2: rows_t(T, 2, w, a, y, r0, r1); break;              \
    case 3: rows_t(T, 3, w, a, y, r0, r1); break;              \
    default: rows_t(T, NX_MAX, w, a, y, r0, r1); break;        \
    }

static void rows(const sr_matmul_weight *w, int nx, const q8_acts *a, float *y, int64_t r0, int64_t r1) {
    switch (w->type) {
    case SR_GGML_Q8_0: NX_CASES(SR_GGML_Q8_0); break;
    case SR_GGML_Q4_0: NX_CASES(SR_GGML_Q4_0); break;
    case SR_GGML_Q4_1: NX_CASES(SR_GGML_Q4_1); break;
    default: break;
    }
}

static int integer_path(const sr_matmul_weight *w, const q8_acts *a, float *y, int64_t n, int n_threads) {
    const int64_t m = w->m;
#pragma omp parallel num_threads(sr_matmul__gemv_threads(m, n_threads))
    {
        int64_t r0, r1;
        sr_matmul__gemv_rows(m, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
        for (int64_t i0 = 0; i0 < n && r0 < r1; i0 += NX_MAX) {
            int nx = n - i0 < NX_MAX ? (int)(n - i0) : NX_MAX;
            q8_acts sub = {a->q + i0 * w->k, a->d + i0 * a->groups, a->s8 + i0 * a->groups, a->groups};
            rows(w, nx, &sub, y + i0 * m, r0, r1);
        }
    }
    return SR_OK;
}

#define INTEGER_PATH 1
#endif

int sr_matmul_q8(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads) {
    int rc = sr_matmul__check(w, x, y, n, n_threads, "sr_matmul_q8");
    if (rc != SR_OK || n == 0) return rc;
    if (n >= Q8_MAX_N) return sr_matmul(w, x, y, n, n_threads);
    q8_acts a = {.groups = (w->k + 31) / 32};
    a.q = malloc((size_t)(n * w->k));
    a.d = malloc((size_t)(n * a.groups) * sizeof(float));
    a.s8 = malloc((size_t)(n * a.groups) * sizeof(float));
    if (!a.q || !a.d || !a.s8) {
        rc = sr_error_set(SR_ENOMEM, "sr_matmul_q8: no memory for %lld quantized activations", (long long)(n * w->k));
    } else {
        quantize(x, n, w->k, &a);
#if defined(INTEGER_PATH)
        if (w->type == SR_GGML_Q8_0 || w->type == SR_GGML_Q4_0 || w->type == SR_GGML_Q4_1)
            rc = integer_path(w, &a, y, n, n_threads);
        else
#endif
            rc = rounded_fp32(w, &a, y, n, n_threads);
    }
    free(a.q);
    free(a.d);
    free(a.s8);
    return rc;
}
