/* Merging partial attention results (O_i, LSE_i) on the device.
 *
 * One warp per row: lane p reads LSE of part p (up to 32 parts a launch),
 * the warp reduces max and sum with shuffles, and each lane's normalised
 * weight is broadcast while the lanes stream the row's O elements (float4
 * when the row allows). Empty parts (LSE = -inf) get weight 0 and are not
 * read; a row whose parts are all empty becomes O = 0, LSE = -inf. */
#include <math.h>

#include "attention/cuda/attn_cuda.cuh"

namespace {

constexpr int WARPS = 8;
constexpr unsigned FULL = 0xffffffffu;

struct merge_parts {
    const float *o[SR_ATTN_CUDA_MERGE_MAX];
    const float *lse[SR_ATTN_CUDA_MERGE_MAX];
};

/* VEC floats per lane per access: 4 (all rows 16-byte aligned) or 1. Each
 * element of part 0 is read by the lane that later writes it, so o may
 * alias part 0. */
template <int VEC>
__global__ void __launch_bounds__(32 * WARPS)
    merge_kernel(const merge_parts parts, int n, int64_t rows, int d, float *o, float *lse) {
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * WARPS;
    for (int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5); r < rows; r += step) {
        const float lp = lane < n ? parts.lse[lane][r] : -INFINITY;
        float m = lp;
        for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(FULL, m, off));
        const float w = (m == -INFINITY || lp == -INFINITY) ? 0.f : expf(lp - m);
        float sum = w;
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(FULL, sum, off);
        const float wn = sum > 0.f ? w / sum : 0.f;

        const int64_t base = r * d;
        /* the loop bounds are the same for every lane, so the shuffles inside
         * run with the whole warp */
        for (int c0 = 0; c0 < d; c0 += 32 * VEC) {
            const int c = c0 + lane * VEC;
            float acc[VEC];
#pragma unroll
            for (int e = 0; e < VEC; e++) acc[e] = 0.f;
            for (int p = 0; p < n; p++) {
                const float wp = __shfl_sync(FULL, wn, p);
                if (c >= d || wp == 0.f) continue;
                if constexpr (VEC == 4) {
                    const float4 x = *reinterpret_cast<const float4 *>(parts.o[p] + base + c);
                    acc[0] = fmaf(wp, x.x, acc[0]);
                    acc[1] = fmaf(wp, x.y, acc[1]);
                    acc[2] = fmaf(wp, x.z, acc[2]);
                    acc[3] = fmaf(wp, x.w, acc[3]);
                } else {
                    acc[0] = fmaf(wp, parts.o[p][base + c], acc[0]);
                }
            }
            if (c >= d) continue;
            if constexpr (VEC == 4)
                *reinterpret_cast<float4 *>(o + base + c) = make_float4(acc[0], acc[1], acc[2], acc[3]);
            else
                o[base + c] = acc[0];
        }
        __syncwarp();
        if (lane == 0) lse[r] = m == -INFINITY ? -INFINITY : m + logf(sum);
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} /* namespace */

int sr_attn_cuda_merge_launch(int n_parts, const float *const *o_parts, const float *const *lse_parts, int64_t rows,
                              int head_dim, float *o, float *lse, cudaStream_t stream) {
    if (n_parts < 1 || n_parts > SR_ATTN_CUDA_MERGE_MAX)
        return sr_error_set(SR_EINVAL, "attention cuda merge: %d parts in one launch, need 1..%d", n_parts,
                            SR_ATTN_CUDA_MERGE_MAX);
    if (rows == 0) return SR_OK;
    merge_parts parts = {};
    bool vec = head_dim % 4 == 0 && aligned16(o);
    for (int p = 0; p < n_parts; p++) {
        parts.o[p] = o_parts[p];
        parts.lse[p] = lse_parts[p];
        vec = vec && aligned16(o_parts[p]);
    }
    const int64_t blocks = min((rows + WARPS - 1) / WARPS, (int64_t)1 << 20);
    if (vec)
        merge_kernel<4><<<(unsigned)blocks, 32 * WARPS, 0, stream>>>(parts, n_parts, rows, head_dim, o, lse);
    else
        merge_kernel<1><<<(unsigned)blocks, 32 * WARPS, 0, stream>>>(parts, n_parts, rows, head_dim, o, lse);
    SR_CUDA_CHECK(cudaGetLastError());
    return SR_OK;
}
