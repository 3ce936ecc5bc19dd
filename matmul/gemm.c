/* Matrix-matrix products (prefill). The weight rows are cut into panels of
 * NP rows; a panel is dequantized once into an fp32 buffer laid out k-major
 * (NP consecutive outputs per input index) and then reused for every
 * activation row by a register-blocked micro-kernel computing MR x NP
 * outputs. Work items are (chunk of activation rows, panel); each thread
 * owns one panel buffer. */
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "gguf/quant_blocks.h"
#include "matmul/kernels.h"

enum {
    NP = 32, /* outputs per panel: two AVX-512 vectors */
    MR = 12, /* activation rows per micro-kernel call: 24 accumulators */
    CHUNK_N = 256, /* activation rows a chunk aims at: ~0.6-1.5 MB of X, cache-resident */
};

/* Scalar packing: the whole row, or (vector builds) the float types' last
 * k % 32 values, from column kk0 on. Columns past nj are left to the caller. */
static void pack_scalar(const sr_matmul_weight *w, int64_t j0, int64_t nj, int64_t kk0, float *row, float *wp) {
    const int64_t k = w->k;
    const uint64_t rb = sr_ggml_row_bytes(w->type, k);
    for (int64_t j = 0; j < nj; j++) {
        const uint8_t *src = (const uint8_t *)w->data + rb * (uint64_t)(j0 + j) + sr_ggml_row_bytes(w->type, kk0);
        sr_matmul__dequant(w->type, src, k - kk0, row);
        for (int64_t kk = kk0; kk < k; kk++) wp[kk * NP + j] = row[kk - kk0];
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include "matmul/avx512.h"

/* In-register transpose: r[i] lane j becomes r[j] lane i. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
    __m512 t[16], s[16];
    for (int p = 0; p < 8; p++) {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    for (int q = 0; q < 4; q++) { /* s[4q + c], lane L: column 4L + c of rows 4q .. 4q+3 */
        s[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
        s[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
        s[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
        s[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) { /* then a 4 x 4 transpose of 128-bit lanes */
        __m512 v0 = _mm512_shuffle_f32x4(s[c], s[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(s[c], s[4 + c], 0xdd);
        __m512 v2 = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0x88), v3 = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
    }
}

/* Dequantizes 32 values of 16 rows at a time into `tmp` (L1), then
 * transposes 16 x 16 tiles into the panel. */
static inline __attribute__((always_inline)) void pack_t(uint32_t type, const sr_matmul_weight *w, int64_t j0,
                                                         int64_t nj, float *tmp, float *wp) {
    const int64_t k = w->k, groups = sr_matmul__groups(k);
    const uint64_t rb = sr_ggml_row_bytes(type, k);
    const uint8_t *base = (const uint8_t *)w->data + rb * (uint64_t)j0;
    for (int64_t g = 0; g < groups; g++)
        for (int h = 0; h < NP / 16; h++) {
            __m512 r[16];
            if (16 * h >= nj) {
                for (int c = 0; c < 32; c++) _mm512_store_ps(wp + (32 * g + c) * NP + 16 * h, _mm512_setzero_ps());
                continue;
            }
            for (int j = 0; j < 16; j++) {
                __m512 v[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
                if (16 * h + j < nj) sr_matmul__load32(type, base + rb * (uint64_t)(16 * h + j), g, v);
                _mm512_store_ps(tmp + 32 * j, v[0]);
                _mm512_store_ps(tmp + 32 * j + 16, v[1]);
            }
            for (int c = 0; c < 2; c++) {
                for (int j = 0; j < 16; j++) r[j] = _mm512_load_ps(tmp + 32 * j + 16 * c);
                transpose16(r);
                for (int q = 0; q < 16; q++) _mm512_store_ps(wp + (32 * g + 16 * c + q) * NP + 16 * h, r[q]);
            }
        }
    if (groups * 32 < k) {
        for (int64_t kk = groups * 32; kk < k; kk++)
            for (int j = 0; j < NP; j++) wp[kk * NP + j] = 0;
        pack_scalar(w, j0, nj, groups * 32, tmp, wp);
    }
}

/* Dequantizes weight rows j0 .. j0+nj-1 into wp[k][NP], zero columns past nj.
 * `tmp` holds max(16 x 32, k) floats. */
static void pack_panel(const sr_matmul_weight *w, int64_t j0, int64_t nj, float *tmp, float *wp) {
    switch (w->type) {
    case SR_GGML_F32: pack_t(SR_GGML_F32, w, j0, nj, tmp, wp); break;
    case SR_GGML_F16: pack_t(SR_GGML_F16, w, j0, nj, tmp, wp); break;
    case SR_GGML_BF16: pack_t(SR_GGML_BF16, w, j0, nj, tmp, wp); break;
    case SR_GGML_Q8_0: pack_t(SR_GGML_Q8_0, w, j0, nj, tmp, wp); break;
    case SR_GGML_Q4_0: pack_t(SR_GGML_Q4_0, w, j0, nj, tmp, wp); break;
    case SR_GGML_Q4_1: pack_t(SR_GGML_Q4_1, w, j0, nj, tmp, wp); break;
    case SR_GGML_Q6_K: pack_t(SR_GGML_Q6_K, w, j0, nj, tmp, wp); break;
    default: break;
    }
}


/* y[r][0..nj) = sum_kk x[r][kk] * wp[kk][..] for r < R. */
static inline __attribute__((always_inline)) void micro_t(int R, int64_t k, const float *x, const float *wp, float *y,
                                                          int64_t m, int64_t nj) {
    __m512 c[MR][2];
    for (int r = 0; r < R; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m512 b0 = _mm512_load_ps(wp + kk * NP), b1 = _mm512_load_ps(wp + kk * NP + 16);
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(x[r * k + kk]);
            c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
        }
    }
    __mmask16 m0 = (__mmask16)(nj >= 16 ? 0xffff : (1u << nj) - 1);
    __mmask16 m1 = (__mmask16)(nj >= 32 ? 0xffff : nj <= 16 ? 0 : (1u << (nj - 16)) - 1);
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(y + r * m, m0, c[r][0]);
        _mm512_mask_storeu_ps(y + r * m + 16, m1, c[r][1]);
    }
}
#else
static void pack_panel(const sr_matmul_weight *w, int64_t j0, int64_t nj, float *tmp, float *wp) {
    if (nj < NP) memset(wp, 0, (size_t)w->k * NP * sizeof(float));
    pack_scalar(w, j0, nj, 0, tmp, wp);
}

static inline __attribute__((always_inline)) void micro_t(int R, int64_t k, const float *x, const float *wp, float *y,
                                                          int64_t m, int64_t nj) {
    float c[MR][NP] = {{0}};
    for (int64_t kk = 0; kk < k; kk++)
        for (int r = 0; r < R; r++) {
            float a = x[r * k + kk];
            for (int j = 0; j < NP; j++) c[r][j] += a * wp[kk * NP + j];
        }
    for (int r = 0; r < R; r++)
        for (int64_t j = 0; j < nj; j++) y[r * m + j] = c[r][j];
}
#endif

static void micro(int R, int64_t k, const float *x, const float *wp, float *y, int64_t m, int64_t nj) {
    switch (R) {
#define CASE(n) case n: micro_t(n, k, x, wp, y, m, nj); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11)
#undef CASE
    default: micro_t(MR, k, x, wp, y, m, nj); break;
    }
}

int sr_matmul__gemm(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads) {
    const int64_t k = w->k, m = w->m, panels = (m + NP - 1) / NP;
    /* Rows of X in chunks of at most ~CHUNK_N, so that a chunk stays in cache
     * while every panel passes over it; more chunks when there are too few
     * panels to keep the threads busy. Whole MR blocks per chunk. */
    int64_t chunks = (n + CHUNK_N - 1) / CHUNK_N;
    int64_t want = (4 * (int64_t)n_threads + panels - 1) / panels;
    int64_t max_chunks = (n + 4 * MR - 1) / (4 * MR);
    if (chunks < want) chunks = want < max_chunks ? want : max_chunks;
    if (chunks < 1) chunks = 1;
    int64_t chunk_n = ((n + chunks - 1) / chunks + MR - 1) / MR * MR;
    chunks = (n + chunk_n - 1) / chunk_n;
    /* whole cache lines per thread keep every panel 64-byte aligned */
    const size_t tmp_len = k > 16 * 32 ? (size_t)k : 16 * 32;
    const size_t per_thread = ((size_t)k * NP + tmp_len + 15) / 16 * 16;
    float *buf = aligned_alloc(64, per_thread * sizeof(float) * (size_t)n_threads);
    if (!buf) return sr_error_set(SR_ENOMEM, "sr_matmul: no memory for %d panels of %d x %lld floats", n_threads, NP, (long long)k);
    int64_t items = panels * chunks;
#pragma omp parallel num_threads(n_threads)
    {
        float *wp = buf + per_thread * (size_t)omp_get_thread_num();
        float *tmp = wp + (size_t)k * NP;
        int64_t packed = -1;
        /* chunk-major: each thread walks the panels over a chunk of X held in cache */
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            int64_t ch = it / panels, p = it % panels;
            int64_t j0 = p * NP, nj = m - j0 < NP ? m - j0 : NP;
            if (packed != p) {
                pack_panel(w, j0, nj, tmp, wp);
                packed = p;
            }
            int64_t i1 = (ch + 1) * chunk_n < n ? (ch + 1) * chunk_n : n;
            for (int64_t i = ch * chunk_n; i < i1; i += MR) {
                int R = i1 - i < MR ? (int)(i1 - i) : MR;
                micro(R, k, x + i * k, wp, y + i * m + j0, m, nj);
            }
        }
    }
    free(buf);
    return SR_OK;
}
