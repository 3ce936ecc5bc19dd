/* star_attention: the attention steps of Star Attention across ranks.
 *
 * Phase 1 (context encoding, approximate): with sr_place_star's placement,
 * each rank runs every layer over the span [anchor | own blocks], the anchor
 * at its original positions 0.. and the own tokens at their global positions,
 * causally within the span. Afterwards the rank keeps the KV of its own
 * tokens only. sr_star_span_* build that span and its attention.
 *
 * Phase 2 (query and generation, exact): the query rank broadcasts a layer's
 * queries (all heads in one message); every rank computes (O_i, LSE_i) of
 * them over its own context KV, with no mask (every query comes after every
 * context token); the query rank also attends to the KV of the new tokens
 * (earlier generated ones and these queries) causally; the parts are
 * gathered to the query rank (one message per rank) and merged by LSE. */
#ifndef SR_WORKER_STAR_ATTENTION_H
#define SR_WORKER_STAR_ATTENTION_H

#include <stdint.h>

#include "attention/attention.h"
#include "worker/placement.h"
#include "transport/transport.h"

typedef struct {
    int n_head_q, n_head_kv, head_dim;
    int kv_dtype;  /* SR_DT_* of K and V */
    float scale;   /* 0 means 1/sqrt(head_dim) */
    int n_threads; /* for sr_attn_forward; <= 0: all cores */
} sr_star_desc;

/* ---- phase 1 ---- */

/* Rows of this rank's span: anchor.len + own.len. */
int64_t sr_star_span_len(const sr_star_place *pl);

/* Token ids and absolute positions of the span [anchor | own], taken from the
 * whole context's token ids; either output may be NULL. */
int sr_star_span_build(const sr_star_place *pl, const int32_t *context_tokens, int32_t *tokens, int64_t *pos);

/* Causal attention within the span. q: [span, Hq, d]; k, v: [span, Hkv, d];
 * o: [span, Hq, d]; lse: [span, Hq] (may be NULL). Anchor rows see the anchor
 * causally; own rows see the whole anchor and their own tokens causally. */
int sr_star_span_attention(const sr_star_desc *d, const sr_star_place *pl, const float *q, const void *k,
                           const void *v, float *o, float *lse);

/* ---- phase 2 ---- */

typedef struct {
    double compute_s; /* local attention and the merge */
    double comm_s;    /* broadcast of the queries and gather of the parts */
    double total_s;
    int64_t bytes_sent, bytes_recv; /* payload this rank sent and received */
    int64_t messages;               /* point-to-point messages this rank sent */
    int64_t calls;
} sr_star_stats;

typedef struct sr_star sr_star;

/* A long-lived handle on a transport: keeps the buffers that a query's
 * broadcast and gather need between calls. */
int sr_star_init(sr_star **out, sr_tp *tp);
void sr_star_free(sr_star *s);

/* Collective, one layer of one query step. Every rank passes the same d,
 * query_rank and nq.
 *   q         [nq, Hq, d] on the query rank; ignored elsewhere
 *   ctx       this rank's context KV (dense or paged), n_ctx rows (may be 0)
 *   q_new     query rank only: KV of the new tokens, n_new rows at positions
 *             new_pos0.., the queries' own K/V included; the queries sit at
 *             q_pos0.. and see new tokens at positions <= their own
 *   o, lse    query rank: the merged result [nq, Hq, d] and [nq, Hq]
 * stats may be NULL. */
int sr_star_query(sr_star *s, const sr_star_desc *d, int query_rank, int64_t nq, int64_t q_pos0, const float *q,
                  const sr_attn_kv *ctx, int64_t n_ctx, const sr_attn_kv *q_new, int64_t n_new, int64_t new_pos0,
                  float *o, float *lse, sr_star_stats *stats);

#endif
