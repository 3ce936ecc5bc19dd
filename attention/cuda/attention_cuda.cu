/* attention on CUDA: the public boundary. Arguments are checked here, once,
 * with the CPU library's descriptor check plus what the kernels need; then
 * the call goes to the tensor-core kernel (fp16/bf16 K/V) or the fp32 one. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "attention/cuda/attn_cuda.cuh"

namespace {

/* Kernels index query tiles of 32 or 64 rows with gridDim.x, heads with
 * gridDim.y. */
constexpr int64_t MAX_Q_TILES = INT32_MAX;
constexpr int MAX_HEADS = 65535;
/* Split KV only in pieces of at least this many keys (a multiple of the
 * kernels' 64-key tiles): below it the merge costs more than it gains. */
constexpr int64_t MIN_SPLIT = 256;

/* A NULL pointer, a misaligned one (need 16 bytes for vector loads, 4 for
 * plain floats) or plain host memory is refused with a message. */
int check_ptr(const void *p, const char *what, unsigned align) {
    if (!p) return sr_error_set(SR_EINVAL, "attention cuda: %s is NULL", what);
    if ((uintptr_t)p % align != 0)
        return sr_error_set(SR_EINVAL, "attention cuda: %s = %p is not %u-byte aligned", what, p, align);
    cudaPointerAttributes at;
    cudaError_t e = cudaPointerGetAttributes(&at, p);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear it, so that it does not surface at the next launch */
        return sr_error_set(SR_EDEVICE, "attention cuda: cannot query %s = %p: %s", what, p, cudaGetErrorString(e));
    }
    if (at.type == cudaMemoryTypeUnregistered)
        return sr_error_set(SR_EINVAL, "attention cuda: %s = %p is host memory; pass device memory (cudaMalloc)",
                            what, p);
    return SR_OK;
}

int check_merge_dims(int64_t rows, int head_dim) {
    if (rows < 0) return sr_error_set(SR_EINVAL, "attention cuda merge: rows = %lld, need >= 0", (long long)rows);
    if (head_dim < 1)
        return sr_error_set(SR_EINVAL, "attention cuda merge: head_dim = %d, need >= 1", head_dim);
    return SR_OK;
}

} /* namespace */

extern "C" int sr_cuda_available(void) {
    int n = 0, dev = 0, major = 0, minor = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess && n < 1) {
        sr_error_set(SR_EDEVICE, "no CUDA device found");
        return 0;
    }
    if (e == cudaSuccess) e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear it, so that it does not surface at the next launch */
        sr_error_set(SR_EDEVICE, "CUDA device query failed: %s", cudaGetErrorString(e));
        return 0;
    }
    /* the kernels are built for sm_80 and sm_90 (mma.sync bf16, cp.async) */
    if (major < 8) {
        sr_error_set(SR_EDEVICE, "CUDA device %d is sm_%d%d; starring's kernels need sm_80 or newer", dev, major,
                     minor);
        return 0;
    }
    return 1;
}

extern "C" int sr_attn_forward_cuda(const sr_attn_desc *d, const float *q, const void *k, const void *v, float *o,
                                    float *lse, void *stream) {
    int rc = sr_attn_desc_check(d);
    if (rc) return rc;
    if (d->head_dim != 64 && d->head_dim != 80 && d->head_dim != 96 && d->head_dim != 128)
        return sr_error_set(SR_EUNSUPPORTED, "attention cuda: head_dim = %d not supported (64, 80, 96 or 128)",
                            d->head_dim);
    if (d->n_head_q > MAX_HEADS)
        return sr_error_set(SR_EUNSUPPORTED, "attention cuda: n_head_q = %d, at most %d", d->n_head_q, MAX_HEADS);
    if ((d->nq + 31) / 32 > MAX_Q_TILES)
        return sr_error_set(SR_ERANGE, "attention cuda: nq = %lld is too many rows for one call; split the queries",
                            (long long)d->nq);
    if ((rc = check_ptr(q, "q", 16)) || (rc = check_ptr(k, "k", 16)) || (rc = check_ptr(v, "v", 16)) ||
        (rc = check_ptr(o, "o", 16)) || (rc = check_ptr(lse, "lse", 4)))
        return rc;

    const float scale = d->scale > 0.0f ? d->scale : 1.0f / sqrtf((float)d->head_dim);
    sr_attn_cuda_args a;
    a.nq = d->nq;
    a.nk = d->nk;
    a.n_head_q = d->n_head_q;
    a.n_head_kv = d->n_head_kv;
    a.causal = d->causal;
    a.delta = d->q_pos0 - d->k_pos0;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.q = q;
    a.k = k;
    a.v = v;
    a.o = o;
    a.lse = lse;
    a.split_len = d->nk;
    a.n_split = 1;
    cudaStream_t s = static_cast<cudaStream_t>(stream);

    /* Few query tiles (decode) leave most SMs idle: split the KV range too,
     * aiming at two CTAs per SM, and merge the parts (flash-decoding). */
    int dev = 0, sms = 0;
    SR_CUDA_CHECK(cudaGetDevice(&dev));
    SR_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const int64_t ctas = (d->nq + 63) / 64 * d->n_head_q;
    if (ctas < sms && d->nk >= 2 * MIN_SPLIT) {
        int64_t want = (2 * sms + ctas - 1) / ctas;
        want = want < SR_ATTN_CUDA_MERGE_MAX ? want : SR_ATTN_CUDA_MERGE_MAX;
        want = want < d->nk / MIN_SPLIT ? want : d->nk / MIN_SPLIT;
        if (want > 1) {
            a.split_len = ((d->nk + want - 1) / want + 63) / 64 * 64;
            a.n_split = (int)((d->nk + a.split_len - 1) / a.split_len);
        }
    }
    if (a.n_split == 1) {
        if (d->kv_dtype == SR_DT_F32) return sr_attn_cuda_forward_f32(&a, d->head_dim, s);
        return sr_attn_cuda_forward_mma(&a, d->head_dim, d->kv_dtype, s);
    }

    /* parts live in a stream-ordered scratch buffer, freed behind the merge */
    const int64_t rows = d->nq * d->n_head_q;
    float *ws = nullptr;
    SR_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void **>(&ws),
                                  (size_t)a.n_split * (size_t)rows * ((size_t)d->head_dim + 1) * sizeof(float), s));
    a.o = ws;
    a.lse = ws + (size_t)a.n_split * rows * d->head_dim;
    if (d->kv_dtype == SR_DT_F32) rc = sr_attn_cuda_forward_f32(&a, d->head_dim, s);
    else rc = sr_attn_cuda_forward_mma(&a, d->head_dim, d->kv_dtype, s);
    if (rc == SR_OK) {
        const float *op[SR_ATTN_CUDA_MERGE_MAX], *lp[SR_ATTN_CUDA_MERGE_MAX];
        for (int z = 0; z < a.n_split; z++) {
            op[z] = a.o + (size_t)z * rows * d->head_dim;
            lp[z] = a.lse + (size_t)z * rows;
        }
        rc = sr_attn_cuda_merge_launch(a.n_split, op, lp, rows, d->head_dim, o, lse, s);
    }
    cudaError_t e = cudaFreeAsync(ws, s);
    if (rc == SR_OK && e != cudaSuccess)
        return sr_error_set(SR_EDEVICE, "attention cuda: cudaFreeAsync: %s", cudaGetErrorString(e));
    return rc;
}

extern "C" int sr_attn_merge_cuda(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                                  int64_t rows, int head_dim, float *o, float *lse, void *stream) {
    int rc = check_merge_dims(rows, head_dim);
    if (rc) return rc;
    if (n_parts < 1) return sr_error_set(SR_EINVAL, "attention cuda merge: n_parts = %d, need >= 1", n_parts);
    if (!o_parts || !lse_parts)
        return sr_error_set(SR_EINVAL, "attention cuda merge: o_parts and lse_parts must not be NULL");
    if ((rc = check_ptr(o, "merge o", 4)) || (rc = check_ptr(lse, "merge lse", 4))) return rc;
    for (int p = 0; p < n_parts; p++) {
        char on[32], ln[32];
        snprintf(on, sizeof on, "merge o_parts[%d]", p);
        snprintf(ln, sizeof ln, "merge lse_parts[%d]", p);
        if ((rc = check_ptr(o_parts[p], on, 4)) || (rc = check_ptr(lse_parts[p], ln, 4))) return rc;
    }
    cudaStream_t s = static_cast<cudaStream_t>(stream);

    /* More parts than one launch takes: merge the first chunk into o, then
     * fold each further chunk in with o as its part 0. */
    const int max = SR_ATTN_CUDA_MERGE_MAX;
    int done = n_parts < max ? n_parts : max;
    rc = sr_attn_cuda_merge_launch(done, o_parts, lse_parts, rows, head_dim, o, lse, s);
    while (rc == SR_OK && done < n_parts) {
        const float *op[SR_ATTN_CUDA_MERGE_MAX], *lp[SR_ATTN_CUDA_MERGE_MAX];
        op[0] = o;
        lp[0] = lse;
        int n = 1;
        while (n < max && done < n_parts) {
            op[n] = o_parts[done];
            lp[n] = lse_parts[done];
            n++;
            done++;
        }
        rc = sr_attn_cuda_merge_launch(n, op, lp, rows, head_dim, o, lse, s);
    }
    return rc;
}

extern "C" int sr_attn_merge_into_cuda(float *o_acc, float *lse_acc, const float *o_part, const float *lse_part,
                                       int64_t rows, int head_dim, void *stream) {
    const float *op[2] = {o_acc, o_part}, *lp[2] = {lse_acc, lse_part};
    return sr_attn_merge_cuda(2, op, lp, rows, head_dim, o_acc, lse_acc, stream);
}
