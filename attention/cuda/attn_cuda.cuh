/* attention/cuda internals: the checked arguments the public boundary
 * (attention_cuda.cu) hands to the kernels, and the launchers. */
#ifndef SR_ATTENTION_CUDA_ATTN_CUDA_CUH
#define SR_ATTENTION_CUDA_ATTN_CUDA_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "attention/cuda.h"

extern "C" {
#include "base/check.h"
#include "base/status.h"
}

/* One forward call after the checks: head_dim is one the kernels are built
 * for, pointers are device pointers, 16-byte aligned. */
struct sr_attn_cuda_args {
    int64_t nq, nk;
    int n_head_q, n_head_kv;
    int causal;
    int64_t delta;    /* q_pos0 - k_pos0: key j is visible to row i iff j <= i + delta */
    float scale_log2; /* softmax scale * log2(e): the kernels work in base 2 */
    const float *q;
    const void *k, *v;
    float *o, *lse;
    /* Split KV (flash-decoding) when query tiles alone leave the GPU idle:
     * gridDim.z = n_split, CTA z covers keys [z * split_len, (z + 1) *
     * split_len) and writes its partial O and LSE at o + z * nq * Hq * d and
     * lse + z * nq * Hq, to be merged. split_len is a multiple of 64. No
     * split: n_split = 1, split_len >= nk. */
    int64_t split_len;
    int n_split;
};

/* What CTA blockIdx.z of a split computes for the query tile of bm rows at
 * m0: keys [kbeg, kend) of its split, less those after the tile's last row,
 * and where its partial O and LSE go (see split_len). */
struct sr_attn_cuda__split {
    int64_t kbeg, kend;
    float *o, *lse;
};

__device__ __forceinline__ sr_attn_cuda__split sr_attn_cuda__split_of(const sr_attn_cuda_args &a, int64_t m0, int bm,
                                                                       int d) {
    sr_attn_cuda__split sp;
    sp.kbeg = (int64_t)blockIdx.z * a.split_len;
    sp.kend = min(a.nk, sp.kbeg + a.split_len);
    if (a.causal) sp.kend = min(sp.kend, min(m0 + bm, a.nq) - 1 + a.delta + 1);
    const int64_t rows_total = a.nq * a.n_head_q;
    sp.o = a.o + (int64_t)blockIdx.z * rows_total * d;
    sp.lse = a.lse + (int64_t)blockIdx.z * rows_total;
    return sp;
}

/* fp16/bf16 K/V on tensor cores (mma.sync m16n8k16). */
int sr_attn_cuda_forward_mma(const sr_attn_cuda_args *a, int head_dim, int kv_dtype,
                             cudaStream_t stream);

/* fp32 K/V, fp32 FMA. */
int sr_attn_cuda_forward_f32(const sr_attn_cuda_args *a, int head_dim, cudaStream_t stream);

/* Parts a kernel launch merges at once: one per lane of a warp. */
#define SR_ATTN_CUDA_MERGE_MAX 32

/* Merges n_parts <= SR_ATTN_CUDA_MERGE_MAX parts (device pointers). */
int sr_attn_cuda_merge_launch(int n_parts, const float *const *o_parts,
                              const float *const *lse_parts, int64_t rows, int head_dim, float *o,
                              float *lse, cudaStream_t stream);

#endif
