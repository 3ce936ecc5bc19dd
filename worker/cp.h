/* cp: context parallelism, the model run over a context spread across the
 * ranks of a transport.
 *
 * Prefill (collective; every rank passes the whole context's token ids):
 *   full  the query rank runs the single-process runtime over everything;
 *         the other ranks hold nothing.
 *   ring  (exact) tokens placed by sr_place_zigzag; each rank embeds its
 *         two spans at their absolute positions and, layer by layer, runs
 *         the projections, stores its K/V, runs sr_ring_forward for the
 *         attention over the whole context, then the output projection and
 *         the MLP. Every local row is in the run state at once, so the
 *         model's max_batch must hold the largest rank's share
 *         (sr_cp_batch_rows).
 *   star  (approximate; Star Attention's blockwise phase 1) blocks placed
 *         by sr_place_star, one per rank by default; each block is encoded
 *         as [anchor | block], the anchor at positions 0.. and the block at
 *         its global positions, independent of every other block (see
 *         placement.h). A rank computes the anchor's K/V once (one forward
 *         pass over it), then runs all its blocks' tokens through the model
 *         together in chunks of max_batch, each row attending to the anchor
 *         and its own block; then it drops the anchor's KV in place. Each
 *         block starts a KV cache block (a block shorter than the cache's
 *         block_size leaves the rest of that cache block unused).
 *   cad   (exact; core attention disaggregation, worker/cad.h) tokens
 *         placed as in ring over the model workers, which run everything
 *         but the core attention; that runs on the attention servers, which
 *         keep the context's KV: the model workers hold none of it.
 * After prefill every rank's sr_kv_cache (m->kv) holds the KV of its own
 * tokens only, at their positions.
 *
 * Query and generation (phase 2, exact, both sharded modes): rank 0 is the
 * query rank. It reads the user's input and writes the output, and under
 * zigzag it already holds the last context chunk. For each step of new
 * tokens (the question, then one generated token at a time) it broadcasts a
 * small step header, runs embeddings, projections and MLPs, and per layer
 * calls sr_star_query once: its queries go to every rank (all heads in one
 * message), each rank returns (O, LSE) over all its context KV runs, merged
 * on the query rank with the causal part over the new tokens' KV, which the
 * query rank keeps in a cache of its own (positions n..). The other ranks
 * follow the headers in sr_cp_serve until the query rank calls sr_cp_end,
 * so all ranks stay in step. In full mode a step is the single-process
 * forward.
 *
 * Failures: every collective here fails on every rank or on none. Prefill
 * first checks that all ranks were given the same context, options and
 * model (worker/wire.h), and agrees on each phase's result. A step that
 * fails on any rank ends the query on every rank: the query rank's
 * sr_cp_feed returns the error and the others' sr_cp_serve returns it too;
 * the context must then be prefilled again. */
#ifndef SR_WORKER_CP_H
#define SR_WORKER_CP_H

#include <stdint.h>

#include "model/generate.h"
#include "model/model.h"
#include "worker/cad.h"
#include "worker/ring_attention.h"
#include "worker/star_attention.h"
#include "transport/transport.h"

enum { SR_CP_FULL = 0, SR_CP_RING = 1, SR_CP_STAR = 2, SR_CP_CAD = 3 };


#define SR_CP_QUERY_RANK 0

typedef struct {
    int mode;            /* SR_CP_* */
    /* star sizes; 0 asks for the defaults of the reference implementation:
     * blocks of the context over the workers (one per worker), an anchor of
     * one block. Measured on SmolLM2-135M over 4 workers: at ~3k tokens the
     * defaults find a passkey even in the last block
     * (tests/sh/test_star_passkey.sh); at ~6k they lose it, while an anchor
     * of half the context keeps it (scripts/demo); scripts/bench-cp
     * accuracy measures more. */
    int64_t block_size;  /* star: context tokens per block; 0: ceil(context / workers) */
    int64_t anchor_size; /* star: anchor tokens; 0: one block */
    int tag;             /* ring: uses transport tags tag and tag + 1; cad: tag .. tag + SR_CAD_TAGS - 1 */
    /* cad: the last attn_servers ranks of the transport are attention
     * servers (they run sr_cad_serve, never sr_cp_open); the others are the
     * model workers, and sr_cp's ranks and collectives are theirs alone.
     * block_size is the plan's starting chunk (0: SR_CAD_DEFAULT_CHUNK).
     * cad_serial: the servers await each layer's messages before computing
     * (no ping-pong; the benchmark's baseline). */
    int attn_servers;
    int cad_serial;
    /* Optional, called on every rank between two chunks of a prefill, so
     * that a caller can do other work (the daemon runs other contexts'
     * steps) and report progress: ring after each layer, star after each
     * layer of each max_batch group (the anchor pass, then the blocks),
     * full after each layer of each max_batch group (the other ranks call
     * it as often, idle). Every rank calls it at the same points, with
     * nothing of the prefill in flight, so it may run collectives of its
     * own. done/total are context tokens, done = total * chunks done /
     * chunks (a share of the work, not of the tokens). A non-zero return
     * on any rank ends the prefill on every rank with that status. */
    int (*between)(void *data, int64_t done, int64_t total);
    void *between_data;
} sr_cp_opts;

/* This rank's accounting. */
typedef struct {
    int64_t n_ctx;       /* context tokens prefilled (the whole context) */
    int64_t block_size;  /* star: the block and anchor sizes used (the defaults resolved) */
    int64_t anchor_size;
    double t_prefill;    /* seconds of prefill, until every rank is done */
    int64_t kv_tokens;   /* context KV tokens held by this rank after prefill */
    int64_t kv_bytes;    /* bytes of the blocks holding them */
    sr_ring_stats ring;  /* ring prefill: attention, waits, transfers */
    sr_star_stats query; /* phase 2 attention over all steps so far */
    int64_t n_steps;     /* phase-2 steps (one per generated token, one per chunk of a question) */
    int64_t n_new;       /* new tokens fed through them */
    double t_steps;      /* seconds in those steps */
    int64_t messages;    /* point-to-point messages this rank sent in phase 2 (headers and queries or parts) */
} sr_cp_stats;

typedef struct sr_cp sr_cp;

/* A context-parallel runner of model m over transport tp (not owned; NULL
 * only in full mode, meaning a single process). Collective: the ranks agree
 * that every one opened. */
int sr_cp_open(sr_cp **out, sr_model *m, sr_tp *tp, const sr_cp_opts *opts);
void sr_cp_close(sr_cp *cp);

/* Rows the model's run state must hold (sr_model_opts.max_batch) to prefill
 * n tokens on world ranks in this mode; 0 when any batch works. */
int64_t sr_cp_batch_rows(const sr_cp_opts *opts, int64_t n, int world);

/* Mode name ("full", "ring", "star", "cad") and its inverse (-1 if unknown). */
const char *sr_cp_mode_name(int mode);
int sr_cp_mode_parse(const char *name);

sr_model *sr_cp_model(const sr_cp *cp);
/* cad mode: the handle on the attention servers; NULL in other modes. */
sr_cad *sr_cp_cad(const sr_cp *cp);
int sr_cp_rank(const sr_cp *cp);
int sr_cp_world(const sr_cp *cp);
int sr_cp_is_query_rank(const sr_cp *cp);

/* Collective: a new context of n tokens (the same on every rank). Afterwards
 * the query rank has the logits of the last context token in
 * m->state.logits. */
int sr_cp_prefill(sr_cp *cp, const int32_t *tokens, int64_t n);

/* Query rank: feeds n new tokens (a question, or a generated token) after
 * everything so far; leaves the logits of the last in m->state.logits. The
 * other ranks must be in sr_cp_serve. */
int sr_cp_feed(sr_cp *cp, const int32_t *tokens, int64_t n);

/* Every rank, outside a query: one step of n contexts at once, one new
 * token each (the next token of n generations): their rows run through the
 * model together and, per layer, the queries of all n go out in one
 * message, each rank attends each context's queries over its own KV of
 * that context and sends the parts back in one message, merged per
 * context (sr_star_query_batch). Every rank passes its own runners of the
 * same contexts in the same order, with the cache that held each one's
 * m->kv at its prefill (kvs; the daemon keeps each context's cache out of
 * the model between commands) (star or ring, prefilled, on one model
 * and transport; n up to the query rank's max_batch); the query rank also
 * the tokens (n) and gets the logits (n, vocab). The results equal n calls
 * of sr_cp_feed (to fp32 rounding from 8 contexts, where the weight
 * matmuls take the matrix-matrix kernel). A failure on any rank fails the
 * step on every rank, and each of the n contexts must be prefilled again.
 * The context's accounting (n_steps, n_new) counts the step; the
 * messages and time go to the first context's. */
int sr_cp_step_batch(sr_cp *const *cps, const sr_kv_cache *const *kvs, int64_t n, const int32_t *tokens,
                     float *logits);

/* Query rank: tells the other ranks that the query is over (nothing after a
 * failed sr_cp_feed, which has told them already). */
int sr_cp_end(sr_cp *cp);

/* Every rank, outside a query: forgets every token fed since the prefill,
 * so that the next query follows the context again (a fresh question over a
 * resident context; the daemon asks many). The logits of the last context
 * token are not restored: a query of 0 new tokens after a rewind needs the
 * caller to have kept them. */
int sr_cp_rewind(sr_cp *cp);

/* Every rank, outside a query: as sr_cp_rewind, but the first keep tokens
 * fed since the prefill stay (0..those fed): their KV, on the query rank,
 * becomes part of the context that the next query follows (the daemon
 * keeps a conversation's turns so). */
int sr_cp_rewind_keep(sr_cp *cp, int64_t keep);

/* Query rank: ends the query with an error (status < 0) that every other
 * rank's sr_cp_serve returns; the context must be prefilled again. */
int sr_cp_abort(sr_cp *cp, int status);

/* Other ranks: take part in every step fed by the query rank until
 * sr_cp_end (SR_OK) or a failure (the error). Returns at once on the query
 * rank and in full mode. */
int sr_cp_serve(sr_cp *cp);

/* Collective: feeds the question (n_query tokens, may be 0: then the first
 * token follows the context) and generates as sr_gen_run does, streaming
 * text to emit on the query rank; ends the query. Only the query rank uses
 * tok, query, p, emit and stats. */
int sr_cp_generate(sr_cp *cp, const sr_tokenizer *tok, const int32_t *query, int64_t n_query,
                   const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats);

/* Token ids of a context of context_len bytes (any bytes, NUL included)
 * and of a question to feed after it (question may be NULL: then *n_q is 0,
 * or with chat the template's closing text). With chat the model's template
 * wraps "context\nquestion" as one user message, cut where the context text
 * ends. The context starts with BOS if the model asks for it. *ctx and *q
 * are malloc'ed. */
int sr_cp_encode(const sr_tokenizer *tok, const char *context, size_t context_len, const char *question, int chat,
                 const char *system, int32_t **ctx, int64_t *n_ctx, int32_t **q, int64_t *n_q);

/* This rank's accounting so far. */
void sr_cp_get_stats(const sr_cp *cp, sr_cp_stats *out);

/* One rank's figures, as gathered for a report. */
typedef struct {
    int64_t kv_tokens, kv_bytes; /* context KV after prefill */
    int64_t peak_rss;            /* bytes (getrusage) */
    double t_prefill;
    double ring_compute_s, ring_wait_s; /* ring prefill attention, and waits on transfers */
    int64_t ring_bytes_sent;
    int64_t messages, n_steps;   /* phase 2 */
    double query_compute_s, query_comm_s; /* phase 2 attention, and its broadcasts and gathers */
} sr_cp_rank_info;

/* Collective: every rank's figures in rank order (sr_cp_world entries), on
 * every rank. */
int sr_cp_gather(sr_cp *cp, sr_cp_rank_info *all);

#endif
