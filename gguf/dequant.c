/* Scalar dequantization of every weight type: simple on purpose, it is the
 * reference the vector kernels and the tests are checked against. */
#include <string.h>

#include "gguf/gguf.h"
#include "gguf/quant_blocks.h"

int64_t sr_dequant_block_size(uint32_t type) {
    switch (type) {
    case SR_GGML_F32: case SR_GGML_F16: case SR_GGML_BF16: return 1;
    case SR_GGML_Q4_0: case SR_GGML_Q4_1: case SR_GGML_Q8_0: return SR_QK;
    case SR_GGML_Q6_K: return SR_QK_K;
    default: return 0;
    }
}

static void q4_0_row(const sr_block_q4_0 *b, int64_t nb, float *out) {
    for (int64_t i = 0; i < nb; i++, out += SR_QK) {
        float d = sr_f16_to_f32(b[i].d);
        for (int j = 0; j < SR_QK / 2; j++) {
            out[j] = d * (float)((b[i].qs[j] & 15) - 8);
            out[j + SR_QK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void q4_1_row(const sr_block_q4_1 *b, int64_t nb, float *out) {
    for (int64_t i = 0; i < nb; i++, out += SR_QK) {
        float d = sr_f16_to_f32(b[i].d), m = sr_f16_to_f32(b[i].m);
        for (int j = 0; j < SR_QK / 2; j++) {
            out[j] = d * (float)(b[i].qs[j] & 15) + m;
            out[j + SR_QK / 2] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static void q8_0_row(const sr_block_q8_0 *b, int64_t nb, float *out) {
    for (int64_t i = 0; i < nb; i++, out += SR_QK) {
        float d = sr_f16_to_f32(b[i].d);
        for (int j = 0; j < SR_QK; j++) out[j] = d * (float)b[i].qs[j];
    }
}

static void q6_k_row(const sr_block_q6_k *b, int64_t nb, float *out) {
    for (int64_t i = 0; i < nb; i++) {
        float d = sr_f16_to_f32(b[i].d);
        for (int h = 0; h < 2; h++, out += 128) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            const int8_t *sc = b[i].scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                int s = l / 16;
                int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                out[l] = d * (float)(sc[s] * q1);
                out[l + 32] = d * (float)(sc[s + 2] * q2);
                out[l + 64] = d * (float)(sc[s + 4] * q3);
                out[l + 96] = d * (float)(sc[s + 6] * q4);
            }
        }
    }
}

void sr_dequant_row(uint32_t type, const void *row, int64_t k, float *out) {
    switch (type) {
    case SR_GGML_F32:
        memcpy(out, row, (size_t)k * sizeof(float));
        break;
    case SR_GGML_F16: {
        const sr_f16 *h = row;
        for (int64_t j = 0; j < k; j++) out[j] = sr_f16_to_f32(h[j]);
        break;
    }
    case SR_GGML_BF16: {
        const sr_bf16 *h = row;
        for (int64_t j = 0; j < k; j++) out[j] = sr_bf16_to_f32(h[j]);
        break;
    }
    case SR_GGML_Q4_0: q4_0_row(row, k / SR_QK, out); break;
    case SR_GGML_Q4_1: q4_1_row(row, k / SR_QK, out); break;
    case SR_GGML_Q8_0: q8_0_row(row, k / SR_QK, out); break;
    case SR_GGML_Q6_K: q6_k_row(row, k / SR_QK_K, out); break;
    default: break;
    }
}
