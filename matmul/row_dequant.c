/* Row dequantization with vector code where the build has it. */
#include "gguf/gguf.h"
#include "matmul/kernels.h"
#include "gguf/quant_blocks.h"
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
    sr_dequant_row(w->type, row, w->k, out);
}
#endif
