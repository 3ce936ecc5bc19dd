/* CPU backend of attention/attention.h. Arguments are checked once in
 * attention/attention.c; these functions trust them. */
#ifndef SR_ATTENTION_CPU_ATTN_CPU_H
#define SR_ATTENTION_CPU_ATTN_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"

/* Tiled flash-attention forward over query tiles x KV heads; where that
 * leaves threads idle (decode), the KV range is split too and merged. */
int sr_attn_cpu_forward(const sr_attn_desc *d, const float *q, const sr_attn_kv *kv, float *o,
                        float *lse, int n_threads);

void sr_attn_cpu_merge(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                       int64_t rows, int head_dim, float *o, float *lse);

/* Number of keys visible to query row i (a prefix of the KV range). */
static inline int64_t sr_attn__visible(const sr_attn_desc *d, int64_t i) {
    if (!d->causal) return d->nk;
    int64_t n = d->q_pos0 + i - d->k_pos0 + 1;
    return n < 0 ? 0 : (n > d->nk ? d->nk : n);
}

static inline size_t sr_attn__dtype_size(int dt) { return dt == SR_DT_F32 ? 4 : 2; }

/* Pointer to row j, KV head h of K (which = 0) or V (which = 1). */
static inline const void *sr_attn__kv_row(const sr_attn_desc *d, const sr_attn_kv *kv, int which,
                                          int64_t j, int h) {
    size_t row = (size_t)d->n_head_kv * (size_t)d->head_dim * sr_attn__dtype_size(d->kv_dtype);
    size_t off = (size_t)h * (size_t)d->head_dim * sr_attn__dtype_size(d->kv_dtype);
    if (kv->k) {
        const char *base = which ? kv->v : kv->k;
        return base + (size_t)j * row + off;
    }
    const void *const *blocks = which ? kv->v_blocks : kv->k_blocks;
    const char *base = blocks[j / kv->block_len];
    return base + (size_t)(j % kv->block_len) * row + off;
}

#endif
