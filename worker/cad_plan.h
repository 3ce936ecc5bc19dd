/* cad_plan: the scheduler of core attention disaggregation (DistCA, arXiv
 * 2510.18121): which attention server holds which KV chunk, and so runs
 * which attention tasks. Pure functions: no transport, no model.
 *
 * A batch of documents is cut into chunks (document d of len tokens into
 * m = ceil(len / chunk) chunks whose lengths differ by at most one). A task
 * is a pair (q chunk i, kv chunk j) of one document with j <= i: the
 * queries of i against the keys of j, causal when i == j. Each KV chunk
 * lives on one server, which runs every task on it, so a server receives a
 * KV chunk once and a q chunk once for all its tasks.
 *
 * Cost model, per server:
 *   FLOPs  every task's unmasked (query, key) pairs times flops_per_pair
 *          (a q chunk against an earlier chunk: q * kv; against itself:
 *          the triangle len * (len + 1) / 2);
 *   bytes  its KV chunks (kv_row_bytes a token), plus every q chunk that
 *          has a task on it, sent (q_row_bytes) and returned as O and LSE
 *          (out_row_bytes).
 *
 * Balanced rebatching: two assignments are tried at a chunk size,
 * contiguous (each server a run of consecutive chunks of equal load: few
 * servers per q chunk, so few bytes) and head-tail pairs (chunk c with
 * chunk m-1-c of the same document, as zigzag does, placed largest first on
 * the least loaded server); the one within SR_CAD_PLAN_BOUND (max/mean
 * FLOPs) that moves fewer bytes per FLOP wins. If neither is within it, the
 * chunk size halves and both are tried again, down to one token; failing
 * that the plan of least imbalance is kept, and its imbalance says so. */
#ifndef SR_WORKER_CAD_PLAN_H
#define SR_WORKER_CAD_PLAN_H

#include <stdint.h>

#define SR_CAD_PLAN_BOUND 1.05
/* The most chunks a plan may cut (its tasks grow as their square per document). */
#define SR_CAD_PLAN_MAX_CHUNKS ((int64_t)1 << 16)
#define SR_CAD_PLAN_MAX_DOC ((int64_t)1 << 40)
/* The most tasks sr_cad_plan_tasks lists. */
#define SR_CAD_PLAN_MAX_TASKS ((int64_t)1 << 24)

typedef struct {
    int64_t q_row_bytes;   /* one token's queries, every head */
    int64_t kv_row_bytes;  /* one token's K and V */
    int64_t out_row_bytes; /* one token's O and LSE */
    double flops_per_pair; /* one (query, key) pair over every head */
} sr_cad_cost;

typedef struct {
    int64_t doc;       /* the document */
    int64_t pos0, len; /* its tokens [pos0, pos0 + len) */
    int server;        /* the server that holds its KV and runs its tasks */
} sr_cad_chunk;

typedef struct {
    int64_t q, kv; /* chunk indexes, of one document, kv <= q */
    double flops;
} sr_cad_task;

typedef struct {
    int64_t chunk;            /* the chunk size the plan uses */
    int n_servers;
    int head_tail;            /* 1: the head-tail assignment won; 0: contiguous */
    int64_t n_chunks;
    sr_cad_chunk *chunks;     /* [n_chunks] by document, then position */
    double *flops;            /* [n_servers] */
    int64_t *bytes;           /* [n_servers] */
    double imbalance;         /* max / mean FLOPs over the servers */
    double bytes_per_flop;    /* all bytes over all FLOPs */
} sr_cad_plan;

/* Plans n_docs documents of 1..SR_CAD_PLAN_MAX_DOC tokens each over n_servers >= 1
 * servers, starting at chunk >= 1 tokens. SR_EINVAL names a bad argument;
 * SR_ERANGE a batch that needs more than SR_CAD_PLAN_MAX_CHUNKS chunks or
 * whose tasks overflow. plan_free takes a plan that failed or was zeroed. */
int sr_cad_plan_build(sr_cad_plan *plan, const int64_t *docs, int64_t n_docs, int64_t chunk, int n_servers,
                      const sr_cad_cost *cost);
void sr_cad_plan_free(sr_cad_plan *plan);

/* Every task of a plan, by q chunk then kv chunk, with its FLOPs (*out
 * malloc'ed); SR_ERANGE past SR_CAD_PLAN_MAX_TASKS. The plan itself never
 * lists them: a server finds its own from the chunks it holds. */
int sr_cad_plan_tasks(const sr_cad_plan *plan, const sr_cad_cost *cost, sr_cad_task **out, int64_t *n_out);

/* Unmasked (query, key) pairs of the queries [q0, q0 + nq) against the keys
 * [k0, k0 + nk) of one document, causally (exact below 2^53). */
double sr_cad_pairs(int64_t q0, int64_t nq, int64_t k0, int64_t nk);

#endif
