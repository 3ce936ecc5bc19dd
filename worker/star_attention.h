/* star_attention: the attention steps of Star Attention across ranks.
 *
 * Phase 1 (context encoding, approximate; arXiv 2411.17116): with
 * sr_place_star's placement, every context block is encoded on its own,
 * prefixed by the anchor: the block's queries see the anchor's keys (at
 * positions 0..) and the block's own keys causally (at its global
 * positions), never another block's. A rank computes the anchor's K/V once
 * and runs all its blocks through the model together, each row's attention
 * being sr_star_attend over [anchor, own block] (worker/cp.c); then it
 * drops the anchor and keeps the KV of its own blocks only.
 *
 * Phase 2 (query and generation, exact): the query rank broadcasts a layer's
 * queries (all heads in one message); every rank computes (O_i, LSE_i) of
 * them over its own KV runs (its context, and on the query rank the new
 * tokens: earlier generated ones and these queries, causally); the parts
 * are gathered to the query rank (one message per rank) and merged by LSE. */
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

/* ---- both phases ---- */

/* K/V rows at absolute positions pos0 .. pos0 + n - 1, dense or paged. */
typedef struct {
    sr_attn_kv kv;
    int64_t pos0, n;
} sr_star_run;

/* nq queries at positions q_pos0.. ([nq, Hq, d]) against a list of runs
 * (phase 1: the anchor and the block; phase 2: a rank's KV),
 * each key visible to the queries at or after its position; merged by LSE
 * into o [nq, Hq, d] and lse [nq, Hq]. o_tmp and lse_tmp are scratch of the
 * same shapes. A query that sees no key gets O = 0, LSE = -inf. */
int sr_star_attend(const sr_star_desc *d, int64_t nq, int64_t q_pos0, const float *q, const sr_star_run *runs,
                   int64_t n_runs, float *o, float *lse, float *o_tmp, float *lse_tmp);

/* ---- phase 2 ---- */

typedef struct {
    double compute_s; /* local attention and the merge */
    double comm_s;    /* broadcast of the queries and gather of the parts */
    double total_s;
    int64_t bytes_sent, bytes_recv; /* bytes this rank sent and received */
    int64_t messages;               /* point-to-point messages this rank sent */
    int64_t calls;
} sr_star_stats;

typedef struct sr_star sr_star;

/* A long-lived handle on a transport: keeps the buffers that a query's
 * broadcast and gather need between calls. */
int sr_star_init(sr_star **out, sr_tp *tp);
void sr_star_free(sr_star *s);

/* Collective, one layer of one query step. Every rank passes the same d
 * (its kv_dtype and n_threads may differ), query_rank, nq and q_pos0.
 *   q       [nq, Hq, d] at positions q_pos0.. on the query rank; ignored elsewhere
 *   runs    this rank's KV: its context KV and, on the query rank, the KV of
 *           the new tokens, the queries' own included (n_runs may be 0); a
 *           query sees the keys at positions <= its own
 *   o, lse  query rank: the merged result [nq, Hq, d] and [nq, Hq]
 * The queries go out in one message and each rank's part comes back in one,
 * each with the sender's status: a rank whose own arguments or attention
 * fail still takes part. The query rank returns the first failure of any
 * rank; the others return their own or the query rank's (the other ranks'
 * failures reach them through the caller's next agreement). stats may be
 * NULL. */
int sr_star_query(sr_star *s, const sr_star_desc *d, int query_rank, int64_t nq, int64_t q_pos0, const float *q,
                  const sr_star_run *runs, int64_t n_runs, float *o, float *lse, sr_star_stats *stats);

/* One sequence of a batched query step: nq queries at positions q_pos0..
 * and this rank's KV runs for them (as sr_star_query's). */
typedef struct {
    int64_t nq, q_pos0;
    const sr_star_run *runs;
    int64_t n_runs;
} sr_star_seq;

/* sr_star_query for n_seq sequences at once (a decode step of many
 * requests, each over its own context): q, o and lse hold the sequences'
 * rows one after the other ([sum nq, Hq, d]); each sequence's queries see
 * only its own runs. Still one message out and one back per rank, whatever
 * n_seq. Every rank passes the same n_seq, nq and q_pos0 of each. */
int sr_star_query_batch(sr_star *s, const sr_star_desc *d, int query_rank, const sr_star_seq *seqs, int64_t n_seq,
                        const float *q, float *o, float *lse, sr_star_stats *stats);

#endif
