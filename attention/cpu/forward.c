/* Work splitting of the CPU attention forward: query tiles x KV heads, and,
 * when that leaves threads idle (decode, short query blocks), also the KV
 * range, whose partial results are merged by log-sum-exp (flash-decoding). */
#include <omp.h>
#include <stdlib.h>

#include "attention/cpu/attn_cpu.h"
#include "attention/cpu/tile.h"
#include "base/status.h"

/* Rows (query positions x heads of a KV head) per work item: enough to
 * amortise converting each K/V tile, small enough to stay in L2. */
#define ROWS_PER_ITEM 128
/* Shortest KV piece worth its own work item and partial result. */
#define MIN_SPLIT_KEYS 1024
/* Cap on the memory of the partial results of a split KV range. */
#define MAX_PARTIAL_BYTES ((size_t)256 << 20)

int sr_attn_cpu_forward(const sr_attn_desc *d, const float *q, const sr_attn_kv *kv, float *o,
                        float *lse, int n_threads) {
    int G = d->n_head_q / d->n_head_kv, Hkv = d->n_head_kv;
    int64_t pos_per_tile = G >= ROWS_PER_ITEM ? 1 : ROWS_PER_ITEM / G;
    if (pos_per_tile > d->nq) pos_per_tile = d->nq;
    int64_t n_qt = (d->nq + pos_per_tile - 1) / pos_per_tile;
    int m_max = (int)pos_per_tile * G;
    /* keys any row sees: [0, kend) */
    int64_t kend = sr_attn__visible(d, d->nq - 1);
    /* narrow items take several KV heads, every one where the KV range is
     * long enough to split: a thread then streams whole K/V rows */
    int heads_per_item = 1;
    if (m_max <= SR_ATTN_NARROW_MAX_ROWS) {
        heads_per_item = kend >= 2 * MIN_SPLIT_KEYS ? Hkv : (Hkv + n_threads - 1) / n_threads;
        m_max *= heads_per_item;
    }
    int n_g = (Hkv + heads_per_item - 1) / heads_per_item;
    int64_t items_q = n_qt * n_g, n_split = 1;
    if (items_q < 2 * (int64_t)n_threads && kend >= 2 * MIN_SPLIT_KEYS) {
        n_split = (4 * (int64_t)n_threads + items_q - 1) / items_q;
        if (n_split > kend / MIN_SPLIT_KEYS) n_split = kend / MIN_SPLIT_KEYS;
        size_t part = (size_t)d->nq * d->n_head_q * (d->head_dim + 1) * sizeof(float);
        if ((size_t)n_split > MAX_PARTIAL_BYTES / part) n_split = (int64_t)(MAX_PARTIAL_BYTES / part);
        if (n_split < 1) n_split = 1;
    }
    /* pieces are whole key tiles */
    int64_t piece = (kend + n_split - 1) / n_split;
    piece = (piece + SR_ATTN_BK - 1) / SR_ATTN_BK * SR_ATTN_BK;
    if (piece > 0) n_split = (kend + piece - 1) / piece;
    if (n_split < 1) n_split = 1;

    size_t rows = (size_t)d->nq * d->n_head_q, orow = rows * d->head_dim;
    float *po = NULL, *pl = NULL;
    if (n_split > 1) {
        po = malloc((size_t)n_split * orow * sizeof(float));
        pl = malloc((size_t)n_split * rows * sizeof(float));
        if (!po || !pl) {
            free(po);
            free(pl);
            return sr_error_set(SR_ENOMEM, "attention: out of memory for %lld partial results",
                                (long long)n_split);
        }
    }
    int64_t n_items = items_q * n_split;
    int failed = 0;
#pragma omp parallel num_threads(n_threads)
    {
        sr_attn__ws ws;
        int ok = sr_attn__ws_init(&ws, d->head_dim, d->n_head_kv, m_max) == SR_OK;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        /* causal work grows with the query tile: the heaviest go first */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_items; t++) {
            if (!ok) continue;
            int64_t s = t % n_split, rest = t / n_split;
            int g = (int)(rest % n_g) * heads_per_item;
            int g1 = g + heads_per_item < Hkv ? g + heads_per_item : Hkv;
            int64_t qt = n_qt - 1 - rest / n_g;
            int64_t i0 = qt * pos_per_tile;
            int64_t np = d->nq - i0 < pos_per_tile ? d->nq - i0 : pos_per_tile;
            if (n_split == 1) {
                sr_attn__tile_run(&ws, d, kv, q, g, g1, i0, np, 0, d->nk, o, lse);
            } else {
                int64_t ka = s * piece, kb = ka + piece < kend ? ka + piece : kend;
                sr_attn__tile_run(&ws, d, kv, q, g, g1, i0, np, ka, kb, po + (size_t)s * orow,
                                  pl + (size_t)s * rows);
            }
        }
        sr_attn__ws_free(&ws);
    }
    if (failed) {
        free(po);
        free(pl);
        return sr_error_set(SR_ENOMEM, "attention: out of memory for the work space of %d threads", n_threads);
    }
    if (n_split > 1) {
        const float **op = malloc((size_t)n_split * sizeof *op), **lp = malloc((size_t)n_split * sizeof *lp);
        if (!op || !lp) {
            free(op);
            free(lp);
            free(po);
            free(pl);
            return sr_error_set(SR_ENOMEM, "attention: out of memory merging partial results");
        }
        for (int64_t s = 0; s < n_split; s++) {
            op[s] = po + (size_t)s * orow;
            lp[s] = pl + (size_t)s * rows;
        }
        sr_attn_cpu_merge((int)n_split, op, lp, (int64_t)rows, d->head_dim, o, lse);
        free(op);
        free(lp);
    }
    free(po);
    free(pl);
    return SR_OK;
}
