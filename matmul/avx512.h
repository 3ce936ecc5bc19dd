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
        __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
        w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(v), table);
        w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(v, 4)), table);
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
        __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
        w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(v), table);
        w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(v, 4)), table);
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
