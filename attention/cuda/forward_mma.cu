/* Flash-attention forward on tensor cores, for fp16/bf16 K/V.
 *
 * One CTA of 4 warps per (64-row query tile, query head); each warp owns 16
 * query rows. Per 64-key tile: S = Q K^T with mma.sync m16n8k16 (fp32
 * accumulators), online softmax in fp32 and base 2, P rounded to the KV type,
 * O += P V with mma.sync. K/V tiles are double-buffered in shared memory with
 * cp.async, so the next tile loads while this one computes. blockIdx.z picks
 * a range of keys when the caller splits KV (see sr_attn_cuda_args).
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 .f16/.bf16), g = lane / 4,
 * t = lane % 4:
 *   A 16x16 row-major, 4 regs of 2 elements: a0 (g, 2t..2t+1), a1 (g+8, 2t..),
 *     a2 (g, 2t+8..), a3 (g+8, 2t+8..)
 *   B 16x8, 2 regs: b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8..2t+9, n = g)
 *   C 16x8 fp32: c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
 * C of S has the layout of A for PV, so P never leaves registers. ldmatrix
 * hands lane the pair (row g, cols 2t..2t+1) of each 8x8 matrix, which is b0
 * or b1 of K^T for K stored [key][dim]; with .trans it is (rows 2t..2t+1,
 * col g), which is b0 or b1 of V stored [key][dim]. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "attention/cuda/attn_cuda.cuh"

namespace {

constexpr int BM = 64; /* query rows per CTA, 16 per warp */
constexpr int BN = 64; /* keys per tile */
constexpr int NWARPS = BM / 16;
constexpr int NTHREADS = 32 * NWARPS;
/* Shared rows are D + 8 elements: their 16-byte units are then odd, so the 8
 * row addresses of one ldmatrix phase fall in 8 different bank groups. */
constexpr int PAD = 8;
constexpr unsigned FULL = 0xffffffffu;

template <typename T> struct kv_type;

/* c += a b on the tensor cores, the K/V type named in PTX as ty ("f16", "bf16") */
#define MMA_M16N8K16(ty, c, a, b0, b1)                                                           \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." ty "." ty ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, " \
        "{%8,%9}, {%0,%1,%2,%3};\n"                                                              \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                         \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

/* the two 16-bit halves of a pair, as the register mma reads */
template <typename P> __device__ __forceinline__ uint32_t bits(P pair) {
    return *reinterpret_cast<uint32_t *>(&pair);
}

template <> struct kv_type<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) { return bits(__floats2half2_rn(lo, hi)); }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        MMA_M16N8K16("f16", c, a, b0, b1);
    }
};

template <> struct kv_type<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        return bits(__floats2bfloat162_rn(lo, hi));
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        MMA_M16N8K16("bf16", c, a, b0, b1);
    }
};

/* Four 8x8 b16 tiles from shared memory into r, as stored (mod "") or
 * transposed (".trans"). The "memory" clobbers keep the compiler from
 * moving shared-memory reads and writes across the cp.async waits and
 * __syncthreads. */
#define LDSM_X4(mod, r, smem)                                                                  \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" mod ".shared.b16 {%0,%1,%2,%3}, [%4];\n"     \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                              \
                 : "r"((uint32_t)__cvta_generic_to_shared(smem))                                \
                 : "memory")

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *smem) { LDSM_X4("", r, smem); }

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const void *smem) { LDSM_X4(".trans", r, smem); }

/* 16 bytes global -> shared; with valid false the destination is zero-filled
 * and nothing is read. */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

/* Starts the copy of keys n0..n0+BN-1 of KV head hk into one buffer; keys
 * past nk become zeros, so that masked P (= 0) times V stays 0. */
template <typename T, int D>
__device__ __forceinline__ void load_kv_tile(T *kd, T *vd, const T *kg, const T *vg, int64_t n0, int64_t nk,
                                             int64_t key_stride, int64_t head_off) {
    constexpr int LD = D + PAD, CHUNKS = D / 8;
    for (int i = threadIdx.x; i < BN * CHUNKS; i += NTHREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        const int64_t key = n0 + r;
        const bool valid = key < nk;
        const int64_t off = valid ? key * key_stride + head_off + c : 0;
        cp_async16(kd + r * LD + c, kg + off, valid);
        cp_async16(vd + r * LD + c, vg + off, valid);
    }
    cp_async_commit();
}

template <typename T, int D>
__global__ void __launch_bounds__(NTHREADS) fwd_mma_kernel(const sr_attn_cuda_args a) {
    using K = kv_type<T>;
    constexpr int LD = D + PAD;
    constexpr int KSTEPS = D / 16;  /* k-steps of Q K^T */
    constexpr int NT_S = BN / 8;    /* 8-key column tiles of S */
    constexpr int NT_O = D / 8;     /* 8-dim column tiles of O */
    constexpr int TILE = BN * LD;   /* elements of one K or V buffer */
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *ks = reinterpret_cast<T *>(smem_raw); /* [2][BN][LD] */
    T *vs = ks + 2 * TILE;                   /* [2][BN][LD] */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    /* Causal tiles at the end of Q see the most keys: run them first so that
     * the grid does not end on a long straggler. */
    const int64_t m0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * BM;
    const int h = blockIdx.y;
    const int hk = h / (a.n_head_q / a.n_head_kv);
    const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
    const bool row_ok[2] = {row[0] < a.nq, row[1] < a.nq};

    const sr_attn_cuda__split sp = sr_attn_cuda__split_of(a, m0, BM, D);
    const int64_t kbeg = sp.kbeg, kend = sp.kend;
    float *const out_o = sp.o, *const out_lse = sp.lse;

    /* Q fragments, rounded to T, held for the whole key loop. */
    uint32_t qf[KSTEPS][4];
    {
        const float *qr[2];
        for (int r = 0; r < 2; r++)
            qr[r] = a.q + ((row_ok[r] ? row[r] : 0) * a.n_head_q + h) * (int64_t)D;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            const int c = kk * 16 + 2 * t;
            float2 x[2][2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                x[r][0] = row_ok[r] ? *reinterpret_cast<const float2 *>(qr[r] + c) : make_float2(0.f, 0.f);
                x[r][1] = row_ok[r] ? *reinterpret_cast<const float2 *>(qr[r] + c + 8) : make_float2(0.f, 0.f);
            }
            qf[kk][0] = K::pack(x[0][0].x, x[0][0].y);
            qf[kk][1] = K::pack(x[1][0].x, x[1][0].y);
            qf[kk][2] = K::pack(x[0][1].x, x[0][1].y);
            qf[kk][3] = K::pack(x[1][1].x, x[1][1].y);
        }
    }

    float of[NT_O][4];
#pragma unroll
    for (int n = 0; n < NT_O; n++) of[n][0] = of[n][1] = of[n][2] = of[n][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}; /* running max, base-2 units */
    float lrow[2] = {0.f, 0.f};             /* this thread's share of the running sum */

    const T *kg = static_cast<const T *>(a.k), *vg = static_cast<const T *>(a.v);
    const int64_t key_stride = (int64_t)a.n_head_kv * D, head_off = (int64_t)hk * D;
    const int64_t ntiles = kend > kbeg ? (kend - kbeg + BN - 1) / BN : 0;
    if (ntiles > 0) load_kv_tile<T, D>(ks, vs, kg, vg, kbeg, a.nk, key_stride, head_off);

    for (int64_t it = 0; it < ntiles; it++) {
        const int64_t n0 = kbeg + it * BN;
        const int buf = (int)(it & 1);
        cp_async_wait_all();
        __syncthreads(); /* tile `it` is in; every warp is done with the other buffer */
        if (it + 1 < ntiles)
            load_kv_tile<T, D>(ks + (buf ^ 1) * TILE, vs + (buf ^ 1) * TILE, kg, vg, n0 + BN, a.nk, key_stride,
                               head_off);
        const T *kb = ks + buf * TILE, *vb = vs + buf * TILE;

        float s[NT_S][4];
#pragma unroll
        for (int j = 0; j < NT_S; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int jj = 0; jj < NT_S / 2; jj++) {
                /* matrices: keys +0..7 / +8..15 (lane bit 4) x dims +0..7 / +8..15 (lane bit 3) */
                uint32_t b[4];
                ldsm_x4(b, kb + (jj * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                K::mma(s[2 * jj], qf[kk], b[0], b[1]);
                K::mma(s[2 * jj + 1], qf[kk], b[2], b[3]);
            }
        }

        /* Only tiles that reach past kend or past the diagonal need the mask;
         * no row sees a key at or after kend. */
        const bool need_mask = n0 + BN > kend || (a.causal && n0 + BN - 1 > m0 + a.delta);
#pragma unroll
        for (int j = 0; j < NT_S; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] * a.scale_log2;
                if (need_mask) {
                    const int64_t key = n0 + 8 * j + 2 * t + (e & 1);
                    if (key >= kend || (a.causal && key > row[e >> 1] + a.delta)) x = -INFINITY;
                }
                s[j][e] = x;
            }
        }

        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int j = 0; j < NT_S; j++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
        }
        float mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            /* the 4 lanes of a quad hold the columns of one row */
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 2));
            /* a row with nothing visible yet keeps -inf; subtracting 0 keeps exp2 = 0, not NaN */
            mu[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            const float alpha = exp2f(mrow[r] - mu[r]);
            mrow[r] = mx[r];
            lrow[r] *= alpha;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                of[n][2 * r] *= alpha;
                of[n][2 * r + 1] *= alpha;
            }
        }
#pragma unroll
        for (int j = 0; j < NT_S; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(s[j][e] - mu[e >> 1]);
                lrow[e >> 1] += s[j][e];
            }
        }

#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint32_t pf[4] = {K::pack(s[2 * kk][0], s[2 * kk][1]), K::pack(s[2 * kk][2], s[2 * kk][3]),
                                    K::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    K::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dd = 0; dd < D / 16; dd++) {
                /* matrices: keys +0..7 / +8..15 (lane bit 3) x dims +0..7 / +8..15 (lane bit 4) */
                uint32_t b[4];
                ldsm_x4_trans(b, vb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dd * 16 + (lane >> 4) * 8);
                K::mma(of[2 * dd], pf, b[0], b[1]);
                K::mma(of[2 * dd + 1], pf, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(FULL, l, 1);
        l += __shfl_xor_sync(FULL, l, 2);
        if (!row_ok[r]) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        float *orow = out_o + (row[r] * a.n_head_q + h) * (int64_t)D;
#pragma unroll
        for (int n = 0; n < NT_O; n++)
            *reinterpret_cast<float2 *>(orow + n * 8 + 2 * t) = make_float2(of[n][2 * r] * inv, of[n][2 * r + 1] * inv);
        if (t == 0)
            out_lse[row[r] * a.n_head_q + h] = l > 0.f ? (mrow[r] + log2f(l)) * 0.69314718055994531f : -INFINITY;
    }
}

template <typename T, int D> int launch(const sr_attn_cuda_args *a, cudaStream_t stream) {
    const size_t smem = 4 * (size_t)BN * (D + PAD) * sizeof(T);
    SR_CUDA_CHECK(cudaFuncSetAttribute(fwd_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((a->nq + BM - 1) / BM), (unsigned)a->n_head_q, (unsigned)a->n_split);
    fwd_mma_kernel<T, D><<<grid, NTHREADS, smem, stream>>>(*a);
    SR_CUDA_CHECK(cudaGetLastError());
    return SR_OK;
}

template <typename T> int dispatch(const sr_attn_cuda_args *a, int head_dim, cudaStream_t stream) {
    switch (head_dim) {
    case 64: return launch<T, 64>(a, stream);
    case 80: return launch<T, 80>(a, stream);
    case 96: return launch<T, 96>(a, stream);
    case 128: return launch<T, 128>(a, stream);
    default: return sr_error_set(SR_EUNSUPPORTED, "attention cuda: head_dim = %d has no tensor-core kernel", head_dim);
    }
}

} /* namespace */

int sr_attn_cuda_forward_mma(const sr_attn_cuda_args *a, int head_dim, int kv_dtype, cudaStream_t stream) {
    if (kv_dtype == SR_DT_F16) return dispatch<__half>(a, head_dim, stream);
    if (kv_dtype == SR_DT_BF16) return dispatch<__nv_bfloat16>(a, head_dim, stream);
    return sr_error_set(SR_EINVAL, "attention cuda: kv_dtype = %d is not a 16-bit type", kv_dtype);
}
