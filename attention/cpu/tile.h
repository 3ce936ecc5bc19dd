/* The tile engine of the CPU attention: one work item is a set of query
 * positions x the query heads of one KV head, against a range of keys,
 * walked in key tiles with an online softmax. Work splitting (threads,
 * query tiles, KV ranges) is the caller's. */
#ifndef SR_ATTENTION_CPU_TILE_H
#define SR_ATTENTION_CPU_TILE_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"

#define SR_ATTN_BK 64 /* keys per tile */

/* Up to this many rows per KV head a work item uses the narrow shape
 * (decode), and then spans several KV heads, so that a thread streams whole
 * K/V rows of its KV range. */
#define SR_ATTN_NARROW_MAX_ROWS 12

/* Per-thread scratch, sized for at most m_max rows (query positions x
 * heads per KV head) of head_dim d and K/V rows of up to n_head_kv heads. */
typedef struct {
    int d, m_max, mpad_max;
    float *q;      /* wide: Q^T [d, mpad]; narrow: Q [m, d]; scaled by scale * log2(e) */
    float *o;      /* [m_max, d] unnormalised output */
    float *m, *l;  /* [mpad_max] running max (log2 domain) and sum of each row */
    float *alpha;  /* [mpad_max] rescale of each row in the current tile */
    float *s;      /* wide: S^T then P^T [BK, mpad]; narrow: S then P [m, BK] */
    float *kc, *vc; /* [BK, d] K and V rows converted to fp32 */
    int64_t *vis;  /* [m_max] end of the keys each row sees */
    void *zrow;    /* a zero K/V row of every head, the padding of narrow tiles */
} sr_attn__ws;

/* Narrow-shape kernels (decode.c) over nh KV heads of `rows` rows each:
 * row h * rows + r of q at stride d, of s and p at stride SR_ATTN_BK.
 * kr/vr: kn pointers to the first head's part of each key row (head h is
 * h * hs bytes on), padded with pointers to a zero row up to a multiple
 * of 16 (scores reads the padding, pv does not).
 * scores: s[h,r][j] = q_{h,r} . k_{j,h};  pv: o[h,r] += sum_j p[h,r][j] v_{j,h}.
 * pf: pfn row pointers (laid out as kr) that the kernel prefetches into L2
 * as it goes: the rows it reads next. */
void sr_attn__narrow_scores(int dt, int d, const float *q, int rows, int nh, const void *const *kr, size_t hs,
                            int64_t kn, float *s, const void *const *pf, int64_t pfn);
void sr_attn__narrow_pv(int dt, int d, float *o, int rows, int nh, const float *p, const void *const *vr, size_t hs,
                        int64_t kn, const void *const *pf, int64_t pfn);

int sr_attn__ws_init(sr_attn__ws *ws, int head_dim, int n_head_kv, int m_max);
void sr_attn__ws_free(sr_attn__ws *ws);

/* Query positions [i0, i0 + n_pos) x the query heads of KV heads
 * [g0, g1) against keys [ka, kb), written normalised into o [nq, Hq, d] and
 * lse [nq, Hq] (rows that see no key: O = 0, LSE = -inf).
 * (g1 - g0) * n_pos * G <= ws->m_max; g1 = g0 + 1 unless narrow. */
void sr_attn__tile_run(sr_attn__ws *ws, const sr_attn_desc *d, const sr_attn_kv *kv, const float *q,
                       int g0, int g1, int64_t i0, int64_t n_pos, int64_t ka, int64_t kb, float *o,
                       float *lse);

#endif
