/* cad_wire: the commands the query worker sends to the attention servers
 * of a cad job, and their replies, with pure functions that check them (as
 * worker/wire.h does for the workers' own messages). An attention server
 * loads no model: everything it knows of the shapes comes in a prefill
 * command, and it trusts none of it before sr_cad_wire_cmd_decode has.
 * Messages are int64 words in the host's byte order.
 *
 *   prefill  [op, n_ctx, workers, layers, heads, kv heads, head dim,
 *             kv type, kv block, chunk, max step, overlap]
 *   step     [op, nq, pos]: per layer one query message of nq rows follows
 *   layer    [op, l]: layer l of the context's prefill follows (the
 *             layers in order, each announced, so that a daemon's query
 *             worker may step other contexts between two layers)
 *   stats    [op]: the server replies with SR_CAD_WIRE_STATS_WORDS words
 *   drop     [op]: the server frees the context's KV
 *   close    [op]: the server returns from sr_cad_serve
 * The last word names the context of every op (a daemon's context id; 0
 * for starring-run's one), any value. Other unused words are 0. A server
 * answers a prefill with one status word (so that every worker knows
 * before sending it anything). */
#ifndef SR_WORKER_CAD_WIRE_H
#define SR_WORKER_CAD_WIRE_H

#include <stdint.h>

enum { SR_CAD_OP_PREFILL = 1, SR_CAD_OP_STEP = 2, SR_CAD_OP_STATS = 3, SR_CAD_OP_CLOSE = 4, SR_CAD_OP_LAYER = 5,
       SR_CAD_OP_DROP = 6 };
enum { SR_CAD_WIRE_CMD_WORDS = 13 };

/* Shapes a peer may name. */
#define SR_CAD_WIRE_MAX_LAYERS 4096
#define SR_CAD_WIRE_MAX_HEADS 4096
#define SR_CAD_WIRE_MAX_HEAD_DIM 1024
#define SR_CAD_WIRE_MAX_BLOCK ((int64_t)1 << 24)
#define SR_CAD_WIRE_MAX_STEP ((int64_t)1 << 20)
/* the most bytes one step's query or result message may take */
#define SR_CAD_WIRE_MAX_MSG ((int64_t)1 << 34)

typedef struct {
    int op;             /* SR_CAD_OP_* */
    int64_t n_ctx;      /* prefill: context tokens */
    int workers;        /* prefill: model workers, the first ranks of the job */
    int n_layer, n_head, n_head_kv, head_dim, kv_dtype;
    int64_t kv_block;   /* prefill: tokens per block of the server's KV cache */
    int64_t chunk;      /* prefill: the plan's starting chunk size */
    int64_t max_step;   /* prefill: the most queries a step carries */
    int overlap;        /* prefill: 1 ping-pong (see worker/cad.h), 0 await each layer's messages first */
    int64_t nq, pos;    /* step: queries, at positions pos.. */
    int64_t layer;      /* layer: its index (the server checks it against the context's layers) */
    uint64_t ctx;       /* every op: the context */
} sr_cad_cmd;

void sr_cad_wire_cmd_encode(int64_t out[SR_CAD_WIRE_CMD_WORDS], const sr_cad_cmd *c);

/* Checks a command from the query worker. workers: the model workers this
 * job has (a prefill must name them); n_ctx and max_step: the context the
 * server holds (0 if none: a step is refused), which a step must follow.
 * SR_EFORMAT names the field, its value and the allowed range. */
int sr_cad_wire_cmd_decode(const int64_t in[SR_CAD_WIRE_CMD_WORDS], int workers, int64_t n_ctx, int64_t max_step,
                           sr_cad_cmd *out);

/* ---- a server's figures ---- */

enum { SR_CAD_WIRE_STATS_WORDS = 8 };

typedef struct {
    double busy_s;                 /* attention and KV stores */
    int64_t kv_tokens, kv_bytes;   /* context KV held */
    int64_t bytes_recv, bytes_sent;
    int64_t tasks;                 /* query messages answered */
    double wait_s;                 /* prefill: blocked on messages not yet arrived */
} sr_cad_server_stats;

void sr_cad_wire_stats_encode(int64_t out[SR_CAD_WIRE_STATS_WORDS], int status, const sr_cad_server_stats *s);

/* Checks server `peer`'s reply: its status, then every figure >= 0. */
int sr_cad_wire_stats_decode(const int64_t in[SR_CAD_WIRE_STATS_WORDS], int peer, sr_cad_server_stats *out);

#endif
