/* cad: core attention disaggregation across the ranks of a transport. The
 * first W ranks are model workers: they hold the weights and run
 * embeddings, projections and MLPs (tokens placed by zigzag, as ring). The
 * last K ranks are attention servers: they load no model, learn the shapes
 * from the query worker's prefill command (worker/cad_wire.h) and run the
 * core attention, softmax(QK^T)V, of every layer.
 *
 * Prefill (exact). Every rank builds the same plan (worker/cad_plan.h) of
 * the context's KV chunks over the K servers. Per layer each worker sends
 * the K/V rows of its tokens to the servers whose chunks they fall in
 * (each KV chunk reaches one server, once), and the queries of each of its
 * spans once to every server holding KV at or before the span's end. A
 * server stores the KV it receives in a cache of its own and answers each
 * span with (O, LSE) over all its KV (sr_star_attend, causal by absolute
 * position, so keys after a query are never seen); the worker merges the
 * servers' parts by LSE (sr_attn_merge_into). The servers keep that KV:
 * the model workers hold none of the context's.
 *
 * Overlap (ping-pong). A server answers the spans in the order of their
 * ends, each as soon as the KV before its end has arrived: under zigzag the
 * early halves' attention runs while the late halves' KV and queries are
 * still in flight, and every answer goes out while the next is computed.
 * Its wait time (sr_cad_server_stats) is the transfer left exposed; with
 * overlap off, the time of every transfer and the workers' compute.
 *
 * Decode. For each layer of each step the query worker (rank 0) sends its
 * queries to every server; each returns (O, LSE) over its KV, merged with
 * the part over the new tokens' KV, which the query worker keeps (as phase
 * 2 of star and ring does).
 *
 * Contexts. Every command names its context (sr_cad_name; 0 unnamed), so
 * a server holds many: a daemon's resident contexts, each with its own KV,
 * freed when the handle that prefilled it closes. A prefill's layers are
 * each announced by the query worker, so that it may step other contexts
 * between two of them (the daemon's prefill chunks). A context prefilled
 * under a name held already replaces it.
 *
 * Failures. Every message carries its sender's status, and a rank that
 * fails goes on sending and receiving what the plan says, so nobody waits
 * forever; the workers agree on the result of each layer (sr_agree over
 * their group). A prefill is committed in two phases: the query worker
 * sends the command, every server answers with its status, then the query
 * worker tells every server whether the prefill goes ahead. A command a
 * server cannot decode outside a prefill ends sr_cad_serve with the error. */
#ifndef SR_WORKER_CAD_H
#define SR_WORKER_CAD_H

#include <stdint.h>

#include "worker/cad_plan.h"
#include "worker/cad_wire.h"
#include "worker/placement.h"
#include "worker/star_attention.h"
#include "transport/transport.h"

/* tags tag .. tag + SR_CAD_TAGS - 1 of the transport are cad's */
enum { SR_CAD_TAGS = 4 };
/* the plan's starting chunk when the caller gives 0 */
enum { SR_CAD_DEFAULT_CHUNK = 256 };

typedef struct {
    int n_layer, n_head, n_head_kv, head_dim, kv_dtype;
    int64_t kv_block; /* tokens per block of the servers' KV caches */
    int64_t chunk;    /* the plan's starting chunk; 0: SR_CAD_DEFAULT_CHUNK */
    int64_t max_step; /* the most queries a decode step carries */
    int overlap;      /* 1: the servers' ping-pong; 0: they await each layer's messages first */
    int n_threads;    /* the query worker's own part of a decode step */
} sr_cad_shape;

/* A model worker's figures, accumulated until the handle is closed. */
typedef struct {
    double layer_s;     /* in prefill layers: sends, waits, merges */
    double wait_s;      /* of which blocked on the servers */
    double query_s;     /* decode: attention steps, own part and servers' */
    int64_t bytes_sent, bytes_recv, messages;
    double plan_imbalance; /* of the last prefill's plan */
    int64_t plan_chunk;
} sr_cad_stats;

typedef struct sr_cad sr_cad;

/* The plan's cost model for these shapes: queries, K/V and answers (O and
 * LSE) in fp32. The runtime sends K/V in the KV cache's dtype (f16 or bf16
 * halves them) and plans with that width. */
sr_cad_cost sr_cad_cost_of(int n_head, int n_head_kv, int head_dim);

/* Whether rank is one of the n_servers attention servers of a job of size
 * ranks (the last ones). */
int sr_cad_is_server(int rank, int size, int n_servers);

/* Checks n_servers and tag for a job of size ranks: 1 <= n_servers < size,
 * 0 <= tag with tag + SR_CAD_TAGS - 1 <= SR_TP_TAG_MAX. */
int sr_cad_check(int size, int n_servers, int tag);

/* Attention-server ranks: serves prefills, steps and stats of the model
 * workers until the query worker closes (SR_OK), or a transport failure or
 * an undecodable command (the error). n_threads: for the attention. */
int sr_cad_serve(sr_tp *tp, int n_servers, int tag, int n_threads);

/* What a daemon's attention server hears while it serves, called on the
 * serving thread: a context's prefill is over (its KV here, 0 when it
 * failed), a context was dropped, and the server's figures after every
 * command. kv_budget: bytes of KV the server may hold, all contexts
 * together (0: no limit); a prefill over it fails. */
typedef struct {
    void (*prefilled)(void *data, uint64_t ctx, int status, int64_t kv_tokens, int64_t kv_bytes);
    void (*dropped)(void *data, uint64_t ctx, int64_t kv_bytes);
    void (*stats)(void *data, const sr_cad_server_stats *st);
    void *data;
    int64_t kv_budget;
} sr_cad_hooks;

/* sr_cad_serve with hooks (may be NULL). */
int sr_cad_serve_hooked(sr_tp *tp, int n_servers, int tag, int n_threads, const sr_cad_hooks *hooks);

/* On the query worker (rank 0): tells the servers to return from
 * sr_cad_serve, without a handle (a daemon's handles each drop their own
 * context when they close). */
int sr_cad_quit(sr_tp *tp, int n_servers, int tag);

/* The KV each of n_servers servers would hold of a context of n_ctx tokens
 * over workers model workers (the plan the prefill builds): tokens[s] and
 * blocks[s] of sh->kv_block tokens (for the coordinator's budget). */
int sr_cad_kv_estimate(const sr_cad_shape *sh, int64_t n_ctx, int workers, int n_servers, int64_t *tokens,
                       int64_t *blocks);

/* Model-worker ranks: a handle over tp, whose last n_servers ranks serve.
 * Not collective. */
int sr_cad_open(sr_cad **out, sr_tp *tp, int n_servers, int tag);
/* Names the context in every command to the servers (a daemon's context
 * id). Closing a named handle drops its context on the servers; an
 * unnamed one (starring-run's) tells the servers, on the query worker, to
 * return from sr_cad_serve. */
void sr_cad_name(sr_cad *c, uint64_t ctx);
void sr_cad_close(sr_cad *c);

/* The transport of the model workers alone (the job's first W ranks), for
 * their collectives. */
sr_tp *sr_cad_group(sr_cad *c);
int sr_cad_servers(const sr_cad *c);

/* Collective over the workers, and with the servers: a context of n_ctx
 * tokens placed by sr_place_zigzag over the workers; rc is this worker's
 * status so far. Every worker then calls sr_cad_layer n_layer times. */
int sr_cad_prefill_begin(sr_cad *c, const sr_cad_shape *sh, int64_t n_ctx, int rc);

/* Collective, one layer of the prefill. q [n_local, Hq, d], k and v
 * [n_local, Hkv, d] fp32, the worker's rows in span order; o and lse get the
 * exact attention over the whole context. rc: this worker's status so far
 * (a failed one still exchanges). Returns the first failure of this worker
 * or of a server it heard from; the caller agrees with the other workers. */
int sr_cad_layer(sr_cad *c, int rc, const float *q, const float *k, const float *v, float *o, float *lse);

/* Query worker, one layer l of a step of nq queries at positions pos..
 * (layer 0 first: it announces the step): q [nq, Hq, d] against every
 * server's KV and the runs of the query worker's own (the new tokens'),
 * merged into o and lse. Other workers return rc at once. */
int sr_cad_query(sr_cad *c, int l, int rc, int64_t nq, int64_t pos, const float *q, const sr_star_run *own,
                 int64_t n_own, float *o, float *lse);

/* Query worker: every server's figures (out[n_servers]). */
int sr_cad_server_stats_get(sr_cad *c, sr_cad_server_stats *out);

void sr_cad_get_stats(const sr_cad *c, sr_cad_stats *out);

#endif
