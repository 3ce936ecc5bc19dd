/* attention: blockwise attention with online softmax, returning the output
 * and the log-sum-exp of every (query row, head), so that results over
 * different KV ranges (other blocks, other ranks) merge exactly.
 *
 * Layouts (row-major, all offsets 64-bit):
 *   Q, O : [nq, n_head_q, head_dim]   fp32
 *   K, V : [nk, n_head_kv, head_dim]  fp32, fp16 or bf16 (math is fp32)
 *   LSE  : [nq, n_head_q]             fp32, natural log
 * Query head h reads KV head h / (n_head_q / n_head_kv) (GQA).
 *
 * Causal masking is by absolute position: query row i sits at q_pos0 + i,
 * key row j at k_pos0 + j, and j is visible to i iff k_pos0 + j <= q_pos0 + i.
 * A row that sees no key gets O = 0 and LSE = -INFINITY, which merges as an
 * empty part. */
#ifndef SR_ATTENTION_H
#define SR_ATTENTION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SR_DT_F32 = 0, SR_DT_F16 = 1, SR_DT_BF16 = 2 };

typedef struct {
    int64_t nq;     /* query rows, >= 1 */
    int64_t nk;     /* key/value rows, >= 1 */
    int n_head_q;   /* Hq, a multiple of n_head_kv */
    int n_head_kv;  /* Hkv */
    int head_dim;   /* d: 64, 80, 96, 128 (any multiple of 16 up to 256 on CPU) */
    int causal;     /* 0: every key visible; 1: mask by absolute position */
    int64_t q_pos0; /* absolute position of query row 0 */
    int64_t k_pos0; /* absolute position of key row 0 */
    float scale;    /* softmax scale; 0 means 1/sqrt(head_dim) */
    int kv_dtype;   /* SR_DT_* of K and V */
} sr_attn_desc;

/* Where K and V live. Dense: k and v point at [nk, Hkv, d]. Paged (a KV
 * cache held in blocks): k_blocks/v_blocks hold ceil(nk / block_len)
 * pointers, each to [block_len, Hkv, d]; the last block may be partly used. */
typedef struct {
    const void *k, *v;
    const void *const *k_blocks;
    const void *const *v_blocks;
    int64_t block_len;
} sr_attn_kv;

static inline sr_attn_kv sr_attn_kv_dense(const void *k, const void *v) {
    sr_attn_kv kv = {k, v, 0, 0, 0};
    return kv;
}

/* Checks a descriptor; returns SR_OK or SR_EINVAL with a message. */
int sr_attn_desc_check(const sr_attn_desc *d);

/* O and LSE of Q against all of K/V (after masking), on n_threads threads
 * (<= 0: all cores). Small nq (decode) is split over the KV range and merged
 * (flash-decoding); larger nq is split over query tiles and heads. */
int sr_attn_forward(const sr_attn_desc *d, const float *q, const sr_attn_kv *kv, float *o,
                    float *lse, int n_threads);

/* Merges n_parts partial results over disjoint KV ranges into the exact
 * result over their union. rows = nq * n_head_q. o/lse may alias part 0. */
int sr_attn_merge(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                  int64_t rows, int head_dim, float *o, float *lse);

/* acc := merge(acc, part), in place: the step of a ring. */
int sr_attn_merge_into(float *o_acc, float *lse_acc, const float *o_part, const float *lse_part,
                       int64_t rows, int head_dim);

/* FLOPs of one call (2*d for QK^T plus 2*d for PV per visible (query, key)
 * pair per head), counting only unmasked pairs. */
double sr_attn_flops(const sr_attn_desc *d);

#ifdef __cplusplus
}
#endif

#endif
