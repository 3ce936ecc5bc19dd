/* quant_blocks: the ggml quantized block layouts (as in ggml-common.h) and
 * the scalar dequantization that is the reference for every faster kernel.
 *
 *   Q4_0: x[j] = d * (q[j] - 8),   q[j] = qs[j] & 15, q[j+16] = qs[j] >> 4
 *   Q4_1: x[j] = d * q[j] + m,     same nibble order as Q4_0
 *   Q8_0: x[j] = d * qs[j]
 *   Q6_K: 256 values in two halves of 128; in half h, for l < 32:
 *         x[l + 32 i] = d * scales[8h + l/16 + 2i] * (q6 - 32), i = 0..3, with
 *         q6 = low/high nibble of ql[64h + l + 32 (i & 1)] (low for i < 2)
 *              | ((qh[32h + l] >> 2i) & 3) << 4 */
#ifndef SR_GGUF_QUANT_BLOCKS_H
#define SR_GGUF_QUANT_BLOCKS_H

#include <stdint.h>

#include "base/half.h"

enum { SR_QK = 32, SR_QK_K = 256 };

typedef struct {
    sr_f16 d;
    uint8_t qs[SR_QK / 2];
} sr_block_q4_0;

typedef struct {
    sr_f16 d, m;
    uint8_t qs[SR_QK / 2];
} sr_block_q4_1;

typedef struct {
    sr_f16 d;
    int8_t qs[SR_QK];
} sr_block_q8_0;

typedef struct {
    uint8_t ql[SR_QK_K / 2];     /* low 4 bits */
    uint8_t qh[SR_QK_K / 4];     /* high 2 bits */
    int8_t scales[SR_QK_K / 16]; /* one per 16 values */
    sr_f16 d;
} sr_block_q6_k;

_Static_assert(sizeof(sr_block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(sr_block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(sr_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(sr_block_q6_k) == 210, "Q6_K block is 210 bytes");

/* Elements per block of a type sr_dequant_row handles, 0 for any other type. */
int64_t sr_dequant_block_size(uint32_t type);

/* Scalar reference: dequantizes k values (a multiple of the block size) of
 * one row stored at `row` into out[k]. The type must be supported. */
void sr_dequant_row(uint32_t type, const void *row, int64_t k, float *out);

#endif
