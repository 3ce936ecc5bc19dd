/* Row dequantization with vector code where the build has it: AVX-512
 * through the kernels' loads (matmul/avx512.h); AVX2 for the 4- and 8-bit
 * types and F16, the same values as the scalar reference; else that. */
#include "gguf/gguf.h"
#include "matmul/kernels.h"
#include "gguf/quant_blocks.h"
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

/* The 32 quants of a 4-bit group as 4 x 8 int32, low nibbles first. */
static inline void nibbles32(const uint8_t *qs, __m256i q[4]) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs), lo4 = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(v, lo4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), lo4);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

/* The reference's arithmetic (gguf/dequant.c) 8 lanes at a time, product
 * then sum as it rounds them: the same values as sr_dequant_row. */
static int dequant_avx2(uint32_t type, const uint8_t *src, int64_t len, float *out) {
    switch (type) {
    case SR_GGML_Q8_0:
        for (int64_t b = 0; b < len / SR_QK; b++, out += SR_QK) {
            const sr_block_q8_0 *q = (const sr_block_q8_0 *)src + b;
            __m256 d = _mm256_set1_ps(_cvtsh_ss(q->d));
            for (int c = 0; c < 4; c++) {
                __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q->qs + 8 * c)));
                _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(d, _mm256_cvtepi32_ps(v)));
            }
        }
        return 1;
    case SR_GGML_Q4_0:
        for (int64_t b = 0; b < len / SR_QK; b++, out += SR_QK) {
            const sr_block_q4_0 *q = (const sr_block_q4_0 *)src + b;
            __m256 d = _mm256_set1_ps(_cvtsh_ss(q->d));
            __m256i v[4];
            nibbles32(q->qs, v);
            for (int c = 0; c < 4; c++)
                _mm256_storeu_ps(out + 8 * c,
                                 _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(v[c], _mm256_set1_epi32(8)))));
        }
        return 1;
    case SR_GGML_Q4_1:
        for (int64_t b = 0; b < len / SR_QK; b++, out += SR_QK) {
            const sr_block_q4_1 *q = (const sr_block_q4_1 *)src + b;
            __m256 d = _mm256_set1_ps(_cvtsh_ss(q->d)), m = _mm256_set1_ps(_cvtsh_ss(q->m));
            __m256i v[4];
            nibbles32(q->qs, v);
            for (int c = 0; c < 4; c++)
                _mm256_storeu_ps(out + 8 * c, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(v[c])), m));
        }
        return 1;
    case SR_GGML_F16: {
        const uint16_t *h = (const uint16_t *)src;
        int64_t j = 0;
        for (; j + 8 <= len; j += 8) _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + j))));
        if (j < len) sr_dequant_row(type, h + j, len - j, out + j);
        return 1;
    }
    default: return 0;
    }
}
#endif

void sr_matmul__dequant(uint32_t type, const void *src, int64_t len, float *out) {
#if defined(__AVX2__) && defined(__F16C__)
    if (dequant_avx2(type, src, len, out)) return;
#endif
    sr_dequant_row(type, src, len, out);
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include "matmul/avx512.h"

static inline __attribute__((always_inline)) void row_t(uint32_t type, const uint8_t *row, int64_t k, float *out) {
    int64_t groups = sr_matmul__groups(k);
    for (int64_t g = 0; g < groups; g++) {
        __m512 v[2];
        sr_matmul__load32(type, row, g, v);
        _mm512_storeu_ps(out + 32 * g, v[0]);
        _mm512_storeu_ps(out + 32 * g + 16, v[1]);
    }
    if (groups * 32 < k) sr_dequant_row(type, row + sr_ggml_row_bytes(type, groups * 32), k - groups * 32, out + groups * 32);
}

void sr_matmul__dequant_row(const sr_matmul_weight *w, int64_t r, float *out) {
    const uint8_t *row = (const uint8_t *)w->data + (uint64_t)r * sr_ggml_row_bytes(w->type, w->k);
    switch (w->type) {
    case SR_GGML_F32: row_t(SR_GGML_F32, row, w->k, out); break;
    case SR_GGML_F16: row_t(SR_GGML_F16, row, w->k, out); break;
    case SR_GGML_BF16: row_t(SR_GGML_BF16, row, w->k, out); break;
    case SR_GGML_Q8_0: row_t(SR_GGML_Q8_0, row, w->k, out); break;
    case SR_GGML_Q4_0: row_t(SR_GGML_Q4_0, row, w->k, out); break;
    case SR_GGML_Q4_1: row_t(SR_GGML_Q4_1, row, w->k, out); break;
    case SR_GGML_Q6_K: row_t(SR_GGML_Q6_K, row, w->k, out); break;
    default: sr_dequant_row(w->type, row, w->k, out); break;
    }
}
#else
void sr_matmul__dequant_row(const sr_matmul_weight *w, int64_t r, float *out) {
    const uint8_t *row = (const uint8_t *)w->data + (uint64_t)r * sr_ggml_row_bytes(w->type, w->k);
    sr_matmul__dequant(w->type, row, w->k, out);
}
#endif
