/* SIMD primitives of the CPU attention kernels: a register-blocked GEMM
 * micro-kernel, a vector exp2 and 16-bit -> fp32 row conversion. Each has an
 * AVX-512 version and a plain C fallback (PORTABLE builds); exp2 and the row
 * max also an AVX2 one, which the decode kernels' softmax needs there. */
#ifndef SR_ATTENTION_CPU_SIMD_H
#define SR_ATTENTION_CPU_SIMD_H

#include <math.h>
#include <stdint.h>

#include "attention/attention.h"
#include "base/half.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define SR_ATTN_MR 8 /* rows of a micro-kernel block */
#define SR_ATTN_NV 3 /* 16-float column vectors of a block: 8 x 3 = 24 accumulators */

#define SR_ATTN_INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
/* 2^f for |f| <= 1/2: its Taylor series to degree 7, highest power first. */
static const float SR_ATTN__EXP2_POLY[8] = {1.5252733804059841e-05f, 1.5403530393381609e-04f, 1.3333558146428443e-03f,
                                            9.6181291076284772e-03f, 5.5504108664821580e-02f, 2.4022650695910071e-01f,
                                            6.9314718055994531e-01f, 1.0f};
#endif

#if defined(__AVX512F__)

/* C[mr, 16 nv] (+)= A[mr, kdim] B[kdim, 16 nv]. A is read element-wise at
 * A[r * ars + k * aks] (broadcast), B by rows of stride ldb, C by rows of
 * stride ldc. mr and nv are constants after inlining, so the accumulators
 * stay in registers. */
SR_ATTN_INLINE void sr_attn__mk(int mr, int nv, int64_t kdim, const float *A, int64_t ars,
                                int64_t aks, const float *B, int64_t ldb, float *C, int64_t ldc,
                                int accumulate) {
    __m512 c[SR_ATTN_MR][SR_ATTN_NV];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++)
            c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t k = 0; k < kdim; k++) {
        __m512 b[SR_ATTN_NV];
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) b[v] = _mm512_loadu_ps(B + k * ldb + 16 * v);
        const float *a = A + k * aks;
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            __m512 av = _mm512_set1_ps(a[r * ars]);
#pragma GCC unroll 3
            for (int v = 0; v < nv; v++) c[r][v] = _mm512_fmadd_ps(av, b[v], c[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(C + r * ldc + 16 * v, c[r][v]);
}

/* 2^x for x <= 0 (-inf gives 0): x = n + f, |f| <= 1/2, 2^f by its Taylor
 * series to degree 7 (relative error < 1e-8), scaled by 2^n. Below -125 it
 * is 0: a result that underflows (every masked score) costs a microcode
 * assist, which made masked tiles 2.6 times as slow as others. */
SR_ATTN_INLINE __m512 sr_attn__exp2_ps(__m512 x) {
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(SR_ATTN__EXP2_POLY[0]);
#pragma GCC unroll 7
    for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(SR_ATTN__EXP2_POLY[i]));
    return _mm512_maskz_scalef_ps(normal, p, n);
}

#else

SR_ATTN_INLINE void sr_attn__mk(int mr, int nv, int64_t kdim, const float *A, int64_t ars,
                                int64_t aks, const float *B, int64_t ldb, float *C, int64_t ldc,
                                int accumulate) {
    float c[SR_ATTN_MR][16 * SR_ATTN_NV];
    int nc = 16 * nv;
    for (int r = 0; r < mr; r++)
        for (int n = 0; n < nc; n++) c[r][n] = accumulate ? C[r * ldc + n] : 0.0f;
    for (int64_t k = 0; k < kdim; k++) {
        const float *b = B + k * ldb;
        for (int r = 0; r < mr; r++) {
            float a = A[r * ars + k * aks];
            for (int n = 0; n < nc; n++) c[r][n] += a * b[n];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int n = 0; n < nc; n++) C[r * ldc + n] = c[r][n];
}

#endif

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)

/* 2^x for x <= 0 as sr_attn__exp2_ps, on 8 lanes: without scalef, 2^n is
 * built in the exponent bits (n >= -125, so it stays normal). */
SR_ATTN_INLINE __m256 sr_attn__exp2_ps8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-125.0f);
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 f = _mm256_sub_ps(xc, n), p = _mm256_set1_ps(SR_ATTN__EXP2_POLY[0]);
#pragma GCC unroll 7
    for (int i = 1; i < 8; i++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(SR_ATTN__EXP2_POLY[i]));
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_cmp_ps(x, lo, _CMP_GE_OQ));
}

#endif

/* 2^x for x <= 0, in place, n elements; -inf gives 0. Returns the sum. */
SR_ATTN_INLINE float sr_attn__exp2_sum(float *x, int64_t n, float sub) {
    float sum = 0.0f;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps(), s = _mm512_set1_ps(sub);
    for (; i + 16 <= n; i += 16) {
        __m512 p = sr_attn__exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(x + i, p);
        acc = _mm512_add_ps(acc, p);
    }
    sum = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps(), s = _mm256_set1_ps(sub);
    for (; i + 8 <= n; i += 8) {
        __m256 p = sr_attn__exp2_ps8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, p);
        acc = _mm256_add_ps(acc, p);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    sum = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
    for (; i < n; i++) {
        x[i] = exp2f(x[i] - sub);
        sum += x[i];
    }
    return sum;
}

/* Largest of x[0..n), -inf for n = 0. */
SR_ATTN_INLINE float sr_attn__max(const float *x, int64_t n) {
    float m = -INFINITY;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
    m = _mm512_reduce_max_ps(mv);
#elif defined(__AVX2__)
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    m = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* n elements of a K or V row in dtype dt to fp32. */
SR_ATTN_INLINE void sr_attn__to_f32(const void *src, int dt, int n, float *dst) {
    int c = 0;
    if (dt == SR_DT_F32) {
        const float *s = src;
        for (; c < n; c++) dst[c] = s[c];
        return;
    }
    const uint16_t *s = src;
#if defined(__AVX512F__)
    if (dt == SR_DT_F16) {
        for (; c + 16 <= n; c += 16)
            _mm512_storeu_ps(dst + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + c))));
    } else {
        for (; c + 16 <= n; c += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + c)));
            _mm512_storeu_ps(dst + c, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
    }
#endif
    for (; c < n; c++) dst[c] = dt == SR_DT_F16 ? sr_f16_to_f32(s[c]) : sr_bf16_to_f32(s[c]);
}

#endif
