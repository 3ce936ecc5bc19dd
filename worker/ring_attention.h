/* ring_attention: one layer of exact attention over a context spread across
 * the ranks of a transport (Ring Attention).
 *
 * Each rank holds Q, K and V of its own tokens, given as a few ranges of
 * absolute positions (two under zigzag placement), rows in span order. It
 * computes its queries against its own K/V, then passes K/V round the ring
 * W-1 times: while it computes on the block it holds, the next block is
 * already on its way (double buffering). Partial results merge by
 * log-sum-exp, so the output equals full attention over the whole context.
 *
 * An sr_ring is long-lived (one per context and transport): it learns every
 * rank's spans once and keeps the two receive buffers between layers. Free
 * it after prefill so that a rank keeps only the KV of its own tokens. */
#ifndef SR_WORKER_RING_ATTENTION_H
#define SR_WORKER_RING_ATTENTION_H

#include <stdint.h>

#include "worker/placement.h"
#include "transport/transport.h"

#define SR_RING_MAX_SPANS 4

typedef struct {
    int n_head_q, n_head_kv, head_dim;
    int kv_dtype;  /* SR_DT_* of K and V */
    int causal;    /* mask by absolute position */
    float scale;   /* 0 means 1/sqrt(head_dim) */
    int n_threads; /* for sr_attn_forward; <= 0: all cores */
    int tag;       /* this call uses tags tag and tag + 1 */
} sr_ring_desc;

/* Where the time of one call went; accumulates over calls until cleared. */
typedef struct {
    double compute_s;   /* attention and merges */
    double wait_s;      /* blocked on transfers not yet complete after computing */
    double total_s;     /* whole calls */
    int64_t bytes_sent; /* K/V bytes sent by this rank */
    int64_t bytes_recv;
    double flops; /* attention FLOPs computed (unmasked pairs, as sr_attn_flops) */
    int64_t calls;
} sr_ring_stats;

typedef struct sr_ring sr_ring;

/* Collective: every rank gives its own spans (at most SR_RING_MAX_SPANS; the
 * spans of all ranks must be disjoint). Every rank checks every rank's spans
 * (worker/wire.h), so a bad span anywhere, or a failure on any rank, fails
 * every rank. */
int sr_ring_init(sr_ring **out, sr_tp *tp, const sr_span *spans, int n_spans);
void sr_ring_free(sr_ring *r);

/* Tokens held by rank p. */
int64_t sr_ring_tokens(const sr_ring *r, int p);

/* Collective, one layer. q: [n_local, Hq, d] fp32; k, v: [n_local, Hkv, d]
 * in d->kv_dtype; o: [n_local, Hq, d]; lse: [n_local, Hq]. stats may be NULL.
 * Every rank passes the same d. The ranks agree on their arguments before
 * the first transfer and on the result after the last: a failure on any
 * rank returns an error on every rank. */
int sr_ring_forward(sr_ring *r, const sr_ring_desc *d, const float *q, const void *k, const void *v, float *o,
                    float *lse, sr_ring_stats *stats);

#endif
