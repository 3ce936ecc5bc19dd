/* Merging partial attention results by log-sum-exp. */
#include <math.h>

#include "attention/cpu/attn_cpu.h"

/* Row by row; within a row, part 0 is read at each element before that
 * element is written, so o/lse may alias part 0. */
void sr_attn_cpu_merge(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                       int64_t rows, int head_dim, float *o, float *lse) {
    for (int64_t r = 0; r < rows; r++) {
        float m = -INFINITY;
        for (int p = 0; p < n_parts; p++)
            if (lse_parts[p][r] > m) m = lse_parts[p][r];
        float *out = o + (size_t)r * (size_t)head_dim;
        if (m == -INFINITY) { /* every part empty: so is their union */
            for (int c = 0; c < head_dim; c++) out[c] = 0.0f;
            lse[r] = -INFINITY;
            continue;
        }
        float sum = 0.0f;
        for (int p = 0; p < n_parts; p++) {
            float w = expf(lse_parts[p][r] - m);
            const float *src = o_parts[p] + (size_t)r * (size_t)head_dim;
            if (p == 0) {
                for (int c = 0; c < head_dim; c++) out[c] = w * src[c];
            } else if (w > 0.0f) {
                for (int c = 0; c < head_dim; c++) out[c] += w * src[c];
            }
            sum += w;
        }
        float inv = 1.0f / sum;
        for (int c = 0; c < head_dim; c++) out[c] *= inv;
        lse[r] = m + logf(sum);
    }
}
