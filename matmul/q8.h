/* matmul_q8: an opt-in variant of sr_matmul for decode that trades exactness
 * for speed: activations are quantized to int8 and multiplied with integer
 * dot products (AVX-512 VNNI), as the fastest CPU runtimes do.
 *
 * For n < 8 activation rows, every group of 32 activations of a row (the
 * last group may be shorter) is quantized as ggml's Q8_0 does:
 *   a = max |x|, d = a / 127, q = nearbyintf(x * (127 / a)) (q = 0 if a = 0)
 * and the result is Y = (d q) W^T up to fp32 rounding: relative to
 * sum |w||x|, an output may be off by about 1/254. Weights Q4_0, Q4_1 and
 * Q8_0 take the integer path; other types multiply the rounded activations
 * in fp32. For n >= 8 (prefill) it is sr_matmul. Errors: as sr_matmul. */
#ifndef SR_MATMUL_Q8_H
#define SR_MATMUL_Q8_H

#include <stdint.h>

#include "matmul/matmul.h"

int sr_matmul_q8(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads);

#endif
