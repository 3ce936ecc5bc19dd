/* attention on CUDA: the forward and merge of attention/attention.h, same
 * layouts and semantics, on device memory and a CUDA stream.
 *
 *   Q, O : [nq, n_head_q, head_dim]   fp32, device memory
 *   K, V : [nk, n_head_kv, head_dim]  fp32, fp16 or bf16 (d->kv_dtype), dense
 *   LSE  : [nq, n_head_q]             fp32, natural log
 *
 * fp16/bf16 K/V run on tensor cores: Q is rounded to the KV type, S = QK^T
 * and O = PV accumulate in fp32, P is rounded to the KV type for PV; the
 * softmax is fp32. fp32 K/V run a plain fp32 kernel. head_dim must be 64,
 * 80, 96 or 128. Pointers must be 16-byte aligned (cudaMalloc's are).
 * Calls with too few query tiles to fill the GPU (decode) also split the KV
 * range and merge the parts, using scratch from cudaMallocAsync on `stream`.
 * Calls are asynchronous on `stream` (a cudaStream_t; NULL: the default
 * stream); errors found at launch return SR_EDEVICE with CUDA's message.
 *
 * Defined only in builds with CUDA=1 (SR_HAVE_CUDA). */
#ifndef SR_ATTENTION_CUDA_H
#define SR_ATTENTION_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "attention/attention.h"

/* 1 if a CUDA device is usable, else 0 with the reason in sr_error_msg(). */
int sr_cuda_available(void);

/* O and LSE of Q against K/V (all device pointers), as sr_attn_forward. */
int sr_attn_forward_cuda(const sr_attn_desc *d, const float *q, const void *k, const void *v,
                         float *o, float *lse, void *stream);

/* As sr_attn_merge: o_parts and lse_parts are host arrays of n_parts device
 * pointers; o/lse (device) may alias part 0. */
int sr_attn_merge_cuda(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                       int64_t rows, int head_dim, float *o, float *lse, void *stream);

/* acc := merge(acc, part) on the device: the step of a ring. */
int sr_attn_merge_into_cuda(float *o_acc, float *lse_acc, const float *o_part,
                            const float *lse_part, int64_t rows, int head_dim, void *stream);

#ifdef __cplusplus
}
#endif

#endif
