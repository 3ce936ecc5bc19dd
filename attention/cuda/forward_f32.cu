/* Flash-attention forward for fp32 K/V with plain fp32 FMA (no tensor
 * cores), the fp32 counterpart of the CPU kernel.
 *
 * One CTA of 128 threads per (32-row query tile, query head); 4 threads
 * share a query row, each holding every fourth float4 of its q and o, so
 * that the 4 read adjacent 16-byte pieces of a shared K/V row and the 8 rows
 * of a warp read the same key (a broadcast). Scores are summed across the 4
 * with two shuffles; all 4 then hold the same softmax state. */
#include <math.h>

#include "attention/cuda/attn_cuda.cuh"

namespace {

constexpr int BM = 32; /* query rows per CTA */
constexpr int BN = 32; /* keys per tile */
constexpr int NTHREADS = 4 * BM;
constexpr unsigned FULL = 0xffffffffu;

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

template <int D> __global__ void __launch_bounds__(NTHREADS) fwd_f32_kernel(const sr_attn_cuda_args a) {
    constexpr int RV = D / 4;  /* float4s per row */
    constexpr int NV = D / 16; /* float4s of a row per thread */
    __shared__ float4 ks[BN][RV], vs[BN][RV];

    const int rl = threadIdx.x >> 2, part = threadIdx.x & 3;
    /* heaviest causal tiles first, as in the tensor-core kernel */
    const int64_t m0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * BM;
    const int h = blockIdx.y;
    const int hk = h / (a.n_head_q / a.n_head_kv);
    const int64_t row = m0 + rl;
    const bool row_ok = row < a.nq;

    const sr_attn_cuda__split sp = sr_attn_cuda__split_of(a, m0, BM, D);
    const int64_t kbeg = sp.kbeg, kend = sp.kend;
    float *const out_o = sp.o, *const out_lse = sp.lse;

    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 q[NV], o[NV];
    {
        const float4 *qr = reinterpret_cast<const float4 *>(a.q + ((row_ok ? row : 0) * a.n_head_q + h) * (int64_t)D);
#pragma unroll
        for (int i = 0; i < NV; i++) {
            q[i] = row_ok ? qr[4 * i + part] : zero;
            o[i] = zero;
        }
    }
    float m = -INFINITY, l = 0.f; /* running max (base 2) and sum */

    const float4 *kg = static_cast<const float4 *>(a.k), *vg = static_cast<const float4 *>(a.v);
    const int64_t key_stride = (int64_t)a.n_head_kv * RV, head_off = (int64_t)hk * RV;
    for (int64_t n0 = kbeg; n0 < kend; n0 += BN) {
        __syncthreads(); /* everyone is done with the previous tile */
        for (int i = threadIdx.x; i < BN * RV; i += NTHREADS) {
            const int r = i / RV, c = i % RV;
            const int64_t key = n0 + r;
            const bool valid = key < a.nk;
            ks[r][c] = valid ? kg[key * key_stride + head_off + c] : zero;
            vs[r][c] = valid ? vg[key * key_stride + head_off + c] : zero;
        }
        __syncthreads();

        const bool need_mask = n0 + BN > kend || (a.causal && n0 + BN - 1 > m0 + a.delta);
        float s[BN];
        float mx = m;
#pragma unroll
        for (int j = 0; j < BN; j++) {
            float acc = 0.f;
#pragma unroll
            for (int i = 0; i < NV; i++) acc = dot4(q[i], ks[j][4 * i + part], acc);
            acc += __shfl_xor_sync(FULL, acc, 1);
            acc += __shfl_xor_sync(FULL, acc, 2);
            acc *= a.scale_log2;
            if (need_mask) {
                const int64_t key = n0 + j;
                if (key >= kend || (a.causal && key > row + a.delta)) acc = -INFINITY;
            }
            s[j] = acc;
            mx = fmaxf(mx, acc);
        }
        /* nothing visible yet: subtract 0 so that exp2(-inf) = 0, not NaN */
        const float mu = mx == -INFINITY ? 0.f : mx;
        const float alpha = exp2f(m - mu);
        m = mx;
        l *= alpha;
#pragma unroll
        for (int i = 0; i < NV; i++) {
            o[i].x *= alpha;
            o[i].y *= alpha;
            o[i].z *= alpha;
            o[i].w *= alpha;
        }
#pragma unroll
        for (int j = 0; j < BN; j++) {
            const float p = exp2f(s[j] - mu);
            l += p;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const float4 v = vs[j][4 * i + part];
                o[i].x = fmaf(p, v.x, o[i].x);
                o[i].y = fmaf(p, v.y, o[i].y);
                o[i].z = fmaf(p, v.z, o[i].z);
                o[i].w = fmaf(p, v.w, o[i].w);
            }
        }
    }

    if (!row_ok) return;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float4 *orow = reinterpret_cast<float4 *>(out_o + (row * a.n_head_q + h) * (int64_t)D);
#pragma unroll
    for (int i = 0; i < NV; i++)
        orow[4 * i + part] = make_float4(o[i].x * inv, o[i].y * inv, o[i].z * inv, o[i].w * inv);
    if (part == 0) out_lse[row * a.n_head_q + h] = l > 0.f ? (m + log2f(l)) * 0.69314718055994531f : -INFINITY;
}

template <int D> int launch(const sr_attn_cuda_args *a, cudaStream_t stream) {
    const dim3 grid((unsigned)((a->nq + BM - 1) / BM), (unsigned)a->n_head_q, (unsigned)a->n_split);
    fwd_f32_kernel<D><<<grid, NTHREADS, 0, stream>>>(*a);
    SR_CUDA_CHECK(cudaGetLastError());
    return SR_OK;
}

} /* namespace */

int sr_attn_cuda_forward_f32(const sr_attn_cuda_args *a, int head_dim, cudaStream_t stream) {
    switch (head_dim) {
    case 64: return launch<64>(a, stream);
    case 80: return launch<80>(a, stream);
    case 96: return launch<96>(a, stream);
    case 128: return launch<128>(a, stream);
    default: return sr_error_set(SR_EUNSUPPORTED, "attention cuda: head_dim = %d has no fp32 kernel", head_dim);
    }
}
