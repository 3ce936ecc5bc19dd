/* Matrix-vector products (decode, and a batch of decodes too small for
 * panels to pay off): each weight row is streamed once for all the activation
 * rows (fewer than SR_MATMUL__GEMM_MIN_N) and dequantized in registers, fp32
 * accumulation. Threads
 * take contiguous ranges of weight rows, so each reads its own part of W. */
#include <stddef.h>

#include <omp.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "matmul/kernels.h"
#include "gguf/quant_blocks.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include "matmul/avx512.h"

/* Weight rows r and r + 1 (nw of them, at row[]) against NX (<= SR_MATMUL__GEMV_ROWS)
 * activation rows; two weight rows at a time give four independent
 * accumulation chains even at NX = 1. Each activation row's sums run in the
 * same order whatever NX and the rows batched with it: a row's result does
 * not depend on the batch. */
static inline __attribute__((always_inline)) void pair_t(uint32_t type, int nx, const sr_matmul_weight *w,
                                                         const uint8_t *const row[2], int nw, const float *x,
                                                         float *y, int64_t r, float *tail) {
    const int64_t k = w->k, m = w->m, groups = sr_matmul__groups(k);
    const uint64_t rb = sr_ggml_row_bytes(type, k);
    /* the hardware prefetcher alone leaves much of the bandwidth unused
     * (Zen 4: Q8_0 at 6.5 GB/s a thread, 13 with this): fetch 1-2 KB ahead
     * of each row's current group, the shorter distance for short rows as
     * measured (harmless past the end) */
    const uint64_t gbytes = groups > 0 ? rb / (uint64_t)groups : 0, ahead = rb < 768 ? 1024 : 2048;
    __m512 acc[2][SR_MATMUL__GEMV_ROWS][2];
    for (int a = 0; a < 2; a++)
        for (int i = 0; i < SR_MATMUL__GEMV_ROWS; i++) acc[a][i][0] = acc[a][i][1] = _mm512_setzero_ps();
    /* Q8_0: w = d * q dotted as d * (q . x), one scale per group; two
     * groups per step, one accumulator each: independent FMA chains */
    for (int64_t g0 = 0; g0 < groups && type == SR_GGML_Q8_0; g0 += 2)
        for (int u = 0; u < 2; u++) {
            const int64_t g = g0 + u;
            if (g >= groups) break;
            __m512 q[2][2];
            float d[2];
            _mm_prefetch((const char *)row[0] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            _mm_prefetch((const char *)row[1] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            sr_matmul__q8_0_quants32(row[0], g, q[0], &d[0]);
            if (nw == 2) sr_matmul__q8_0_quants32(row[1], g, q[1], &d[1]);
            for (int i = 0; i < nx; i++) {
                __m512 x0 = _mm512_loadu_ps(x + i * k + 32 * g), x1 = _mm512_loadu_ps(x + i * k + 32 * g + 16);
                for (int a = 0; a < nw; a++) {
                    __m512 t = _mm512_fmadd_ps(q[a][1], x1, _mm512_mul_ps(q[a][0], x0));
                    acc[a][i][u] = _mm512_fmadd_ps(t, _mm512_set1_ps(d[a]), acc[a][i][u]);
                }
            }
        }
    /* Q4_1: the scales of 16 groups come in together (one gather), so
     * that a group's table is an FMA of broadcast loads; group by group
     * they cost three shuffles, and the shuffle port bounds this loop.
     * A tail of fewer than 8 groups is cheaper group by group (below). */
    int64_t gdone = 0;
    for (; type == SR_GGML_Q4_1 && groups - gdone >= 8; gdone += 16) {
        const int64_t g0 = gdone;
        const int ng = groups - g0 < 16 ? (int)(groups - g0) : 16;
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        float ds[2][16], ms[2][16];
        for (int a = 0; a < nw; a++) sr_matmul__q4_1_scales16(row[a], g0, ng, ds[a], ms[a]);
        for (int u = 0; u < ng; u++) {
            const int64_t g = g0 + u;
            __m512 wv[2][2];
            _mm_prefetch((const char *)row[0] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            _mm_prefetch((const char *)row[1] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
            for (int a = 0; a < nw; a++)
                sr_matmul__q4_lookup32(((const sr_block_q4_1 *)row[a] + g)->qs,
                                       _mm512_fmadd_ps(iota, _mm512_set1_ps(ds[a][u]), _mm512_set1_ps(ms[a][u])),
                                       wv[a]);
            for (int i = 0; i < nx; i++) {
                __m512 x0 = _mm512_loadu_ps(x + i * k + 32 * g), x1 = _mm512_loadu_ps(x + i * k + 32 * g + 16);
                for (int a = 0; a < nw; a++) {
                    acc[a][i][0] = _mm512_fmadd_ps(wv[a][0], x0, acc[a][i][0]);
                    acc[a][i][1] = _mm512_fmadd_ps(wv[a][1], x1, acc[a][i][1]);
                }
            }
        }
    }
    if (gdone > groups) gdone = groups;
    for (int64_t g = gdone; g < groups && type != SR_GGML_Q8_0; g++) {
        __m512 wv[2][2];
        _mm_prefetch((const char *)row[0] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
        _mm_prefetch((const char *)row[1] + ahead + (uint64_t)g * gbytes, _MM_HINT_T0);
        sr_matmul__load32(type, row[0], g, wv[0]);
        if (nw == 2) sr_matmul__load32(type, row[1], g, wv[1]);
        for (int i = 0; i < nx; i++) {
            __m512 x0 = _mm512_loadu_ps(x + i * k + 32 * g), x1 = _mm512_loadu_ps(x + i * k + 32 * g + 16);
            acc[0][i][0] = _mm512_fmadd_ps(wv[0][0], x0, acc[0][i][0]);
            acc[0][i][1] = _mm512_fmadd_ps(wv[0][1], x1, acc[0][i][1]);
            if (nw == 2) {
                acc[1][i][0] = _mm512_fmadd_ps(wv[1][0], x0, acc[1][i][0]);
                acc[1][i][1] = _mm512_fmadd_ps(wv[1][1], x1, acc[1][i][1]);
            }
        }
    }
    for (int a = 0; a < nw; a++) {
        int64_t done = groups * 32;
        if (done < k) sr_dequant_row(type, row[a] + sr_ggml_row_bytes(type, done), k - done, tail);
        for (int i = 0; i < nx; i++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[a][i][0], acc[a][i][1]));
            for (int64_t j = done; j < k; j++) s += tail[j - done] * x[i * k + j];
            y[i * m + r + a] = s;
        }
    }
}

/* Rows r0..r1 of Y for n (< SR_MATMUL__GEMM_MIN_N) activation rows: every
 * group of SR_MATMUL__GEMV_ROWS of them passes over a pair of weight rows
 * while it is in L1, so that the weights come from memory once for all n. */
static inline __attribute__((always_inline)) void rows_t(uint32_t type, const sr_matmul_weight *w, int n,
                                                         const float *x, float *y, int64_t r0, int64_t r1,
                                                         float *tail) {
    const int64_t k = w->k, m = w->m;
    const uint64_t rb = sr_ggml_row_bytes(type, k);
    for (int64_t r = r0; r < r1; r += 2) {
        const int nw = r + 1 < r1 ? 2 : 1;
        const uint8_t *row[2] = {(const uint8_t *)w->data + rb * (uint64_t)r, NULL};
        row[1] = nw == 2 ? row[0] + rb : row[0];
        int i0 = 0;
        for (; n - i0 >= SR_MATMUL__GEMV_ROWS; i0 += SR_MATMUL__GEMV_ROWS)
            pair_t(type, SR_MATMUL__GEMV_ROWS, w, row, nw, x + i0 * k, y + i0 * m, r, tail);
        switch (n - i0) {
        case 1: pair_t(type, 1, w, row, nw, x + i0 * k, y + i0 * m, r, tail); break;
        case 2: pair_t(type, 2, w, row, nw, x + i0 * k, y + i0 * m, r, tail); break;
        case 3: pair_t(type, 3, w, row, nw, x + i0 * k, y + i0 * m, r, tail); break;
        default: break;
        }
    }
}

static void rows(const sr_matmul_weight *w, int n, const float *x, float *y, int64_t r0, int64_t r1) {
    float tail[32];
    switch (w->type) {
    case SR_GGML_F32: rows_t(SR_GGML_F32, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_F16: rows_t(SR_GGML_F16, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_BF16: rows_t(SR_GGML_BF16, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_Q8_0: rows_t(SR_GGML_Q8_0, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_Q4_0: rows_t(SR_GGML_Q4_0, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_Q4_1: rows_t(SR_GGML_Q4_1, w, n, x, y, r0, r1, tail); break;
    case SR_GGML_Q6_K: rows_t(SR_GGML_Q6_K, w, n, x, y, r0, r1, tail); break;
    default: break;
    }
}
#else
/* Without AVX-512: dequantize a chunk of the row (AVX2 where there is, else
 * the reference code; the same values either way), then
 * dot it with each of the n activation rows (the compiler vectorizes what it
 * can): the chunk is dequantized once for all of them, and each row's sums
 * run in the same order whatever n. */
enum { CHUNK = 256, LANES = 16 };

static void rows(const sr_matmul_weight *w, int nx, const float *x, float *y, int64_t r0, int64_t r1) {
    const int64_t k = w->k, m = w->m, bs = sr_dequant_block_size(w->type);
    const uint64_t rb = sr_ggml_row_bytes(w->type, k);
    const int64_t chunk = CHUNK - CHUNK % bs;
    float buf[CHUNK];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + rb * (uint64_t)r;
        float s[SR_MATMUL__GEMM_MIN_N - 1] = {0};
        for (int64_t j0 = 0; j0 < k; j0 += chunk) {
            int64_t len = k - j0 < chunk ? k - j0 : chunk;
            sr_matmul__dequant(w->type, row + sr_ggml_row_bytes(w->type, j0), len, buf);
            for (int i = 0; i < nx; i++) {
                /* LANES separate sums: a reduction the compiler may vectorize without reassociating */
                const float *xi = x + i * k + j0;
                float part[LANES] = {0};
                int64_t j = 0;
                for (; j + LANES <= len; j += LANES)
                    for (int l = 0; l < LANES; l++) part[l] += buf[j + l] * xi[j + l];
                for (; j < len; j++) part[0] += buf[j] * xi[j];
                for (int l = 0; l < LANES; l++) s[i] += part[l];
            }
        }
        for (int i = 0; i < nx; i++) y[i * m + r] = s[i];
    }
}
#endif

int sr_matmul__gemv_multi(int n_w, const sr_matmul_weight *const *w, const float *x, float *const *y, int64_t n,
                          int n_threads) {
    const int64_t k = w[0]->k;
    int nt = 1;
    for (int i = 0; i < n_w; i++) {
        int t = sr_matmul__gemv_threads(w[i]->m, n_threads);
        nt = t > nt ? t : nt;
    }
    /* one team for all the weights: a decode step makes hundreds of these
     * calls, and each start and join of a team costs more than a small
     * product's share of the work */
#pragma omp parallel num_threads(nt)
    for (int i = 0; i < n_w; i++) {
        const int64_t m = w[i]->m;
        int64_t r0, r1;
        sr_matmul__gemv_rows(m, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
        for (int64_t i0 = 0; i0 < n && r0 < r1; i0 += SR_MATMUL__GEMM_MIN_N - 1) {
            int nx = n - i0 < SR_MATMUL__GEMM_MIN_N - 1 ? (int)(n - i0) : SR_MATMUL__GEMM_MIN_N - 1;
            rows(w[i], nx, x + i0 * k, y[i] + i0 * m, r0, r1);
        }
    }
    return SR_OK;
}

int sr_matmul__gemv(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads) {
    return sr_matmul__gemv_multi(1, &w, x, &y, n, n_threads);
}
