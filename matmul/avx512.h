/* matmul_avx512: AVX-512 loads of 32 consecutive weights of a row, whatever
 * its type, as two fp32 vectors. Shared by the matrix-vector kernels (which
 * dequantize in registers) and the panel packing of the matrix-matrix path.
 * Only included where __AVX512F__ and __AVX512BW__ are defined. */
#ifndef SR_MATMUL_AVX512_H
#define SR_MATMUL_AVX512_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "base/half.h"
#include "gguf/gguf.h"
#include "gguf/quant_blocks.h"

static inline float sr_matmul__h2f(sr_f16 h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return sr_f16_to_f32(h);
#endif
}

static inline __m512 sr_matmul__i8_ps(__m128i q) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)); }

/* The 32 weights of a 4-bit group: table[nibble], low nibbles first. One
 * widening of the 16 bytes serves both halves: the low nibbles are the
 * index as is (vpermps reads only the low 4 bits of each index), the high
 * ones a shift away. */
static inline __attribute__((always_inline)) void sr_matmul__q4_lookup32(const uint8_t *qs, __m512 table,
                                                                         __m512 w[2]) {
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    w[0] = _mm512_permutexvar_ps(v, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}

/* Weights 32g .. 32g+31 of `row` into w[0] (first 16) and w[1]. For Q6_K a
 * group of 32 is one (half, quarter) of a super-block: one ql nibble plane,
 * one qh bit pair, two scales. Called with a constant type, so that each
 * caller's loop is compiled for one type. */
static inline __attribute__((always_inline)) void sr_matmul__load32(uint32_t type, const uint8_t *row, int64_t g,
                                                                    __m512 w[2]) {
    const __m128i lo4 = _mm_set1_epi8(15);
    switch (type) {
    case SR_GGML_F32: {
        const float *p = (const float *)row + 32 * g;
        w[0] = _mm512_loadu_ps(p);
        w[1] = _mm512_loadu_ps(p + 16);
        break;
    }
    case SR_GGML_F16: {
        const sr_f16 *p = (const sr_f16 *)row + 32 * g;
        w[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        w[1] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
        break;
    }
    case SR_GGML_BF16: {
        const sr_bf16 *p = (const sr_bf16 *)row + 32 * g;
        w[0] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
        w[1] = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 16))), 16));
        break;
    }
    case SR_GGML_Q8_0: {
        const sr_block_q8_0 *b = (const sr_block_q8_0 *)row + g;
        __m512 d = _mm512_set1_ps(sr_matmul__h2f(b->d));
        w[0] = _mm512_mul_ps(d, sr_matmul__i8_ps(_mm_loadu_si128((const __m128i *)b->qs)));
        w[1] = _mm512_mul_ps(d, sr_matmul__i8_ps(_mm_loadu_si128((const __m128i *)(b->qs + 16))));
        break;
    }
    case SR_GGML_Q4_0: {
        /* table look-up as for Q4_1 below */
        const sr_block_q4_0 *b = (const sr_block_q4_0 *)row + g;
        __m512 table = _mm512_mul_ps(_mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7),
                                     _mm512_set1_ps(sr_matmul__h2f(b->d)));
        sr_matmul__q4_lookup32(b->qs, table, w);
        break;
    }
    case SR_GGML_Q4_1: {
        /* the 16 possible values d * q + m in one register, looked up by
         * nibble (vpermps reads only the low 4 bits of each index) */
        const sr_block_q4_1 *b = (const sr_block_q4_1 *)row + g;
        __m512 d, m;
#if defined(__F16C__)
        /* d and m are adjacent: one 32-bit broadcast load (no shuffle-port
         * work), converted as (d, m) pairs, then one lane-duplicating
         * shuffle each, instead of two scalar conversions and broadcasts;
         * the shuffle port is what bounds this loop */
        uint32_t dm;
        memcpy(&dm, &b->d, sizeof dm);
        __m512 pairs = _mm512_cvtph_ps(_mm256_set1_epi32((int)dm));
        d = _mm512_moveldup_ps(pairs);
        m = _mm512_movehdup_ps(pairs);
#else
        d = _mm512_set1_ps(sr_matmul__h2f(b->d));
        m = _mm512_set1_ps(sr_matmul__h2f(b->m));
#endif
        __m512 table = _mm512_fmadd_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), d, m);
        /* one widening of the 16 bytes serves both nibbles: the low ones
         * are the index as is, the high ones a shift away */
        sr_matmul__q4_lookup32(b->qs, table, w);
        break;
    }
    case SR_GGML_Q6_K: {
        const sr_block_q6_k *b = (const sr_block_q6_k *)row + g / 8;
        int h = (int)(g % 8) / 4, i = (int)(g % 4);
        const uint8_t *ql = b->ql + 64 * h + 32 * (i & 1), *qh = b->qh + 32 * h;
        float d = sr_matmul__h2f(b->d);
        __m128i lshift = _mm_cvtsi32_si128(i < 2 ? 0 : 4), hshift = _mm_cvtsi32_si128(2 * i);
        for (int c = 0; c < 2; c++) {
            __m128i l = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)(ql + 16 * c)), lshift), lo4);
            __m128i hb = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)(qh + 16 * c)), hshift),
                                       _mm_set1_epi8(3));
            __m128i q = _mm_sub_epi8(_mm_or_si128(l, _mm_slli_epi16(hb, 4)), _mm_set1_epi8(32));
            w[c] = _mm512_mul_ps(_mm512_set1_ps(d * (float)b->scales[8 * h + 2 * i + c]), sr_matmul__i8_ps(q));
        }
        break;
    }
    default: break;
    }
}

/* d and m of Q4_1 groups g0 .. g0+n-1 (n <= 16) of `row` as fp32: one
 * gather of the (d, m) pairs and one conversion each, where converting and
 * broadcasting them group by group costs three shuffles a group. */
static inline void sr_matmul__q4_1_scales16(const uint8_t *row, int64_t g0, int n, float d[16], float m[16]) {
    const int bs = (int)sizeof(sr_block_q4_1);
    const __m512i at = _mm512_setr_epi32(0, bs, 2 * bs, 3 * bs, 4 * bs, 5 * bs, 6 * bs, 7 * bs, 8 * bs, 9 * bs,
                                         10 * bs, 11 * bs, 12 * bs, 13 * bs, 14 * bs, 15 * bs);
    /* masked lanes read nothing: safe at the end of the row */
    __m512i dm = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), (__mmask16)((1u << n) - 1u), at,
                                             row + (size_t)bs * (size_t)g0, 1);
    _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
    _mm512_storeu_ps(m, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
}

/* Q8_0 group g as integer-valued floats and its scale: a dot product can
 * then scale once per group instead of once per weight. */
static inline void sr_matmul__q8_0_quants32(const uint8_t *row, int64_t g, __m512 q[2], float *d) {
    const sr_block_q8_0 *b = (const sr_block_q8_0 *)row + g;
    *d = sr_matmul__h2f(b->d);
    q[0] = sr_matmul__i8_ps(_mm_loadu_si128((const __m128i *)b->qs));
    q[1] = sr_matmul__i8_ps(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
}

/* Rows of a weight type hold whole groups of 32 except for the float types,
 * whose last k % 32 values the callers handle one by one. */
static inline int64_t sr_matmul__groups(int64_t k) { return k / 32; }

#endif
