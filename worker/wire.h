/* wire: the small messages the workers exchange besides K/V and attention
 * rows, and pure functions that check them.
 *
 * A receiver trusts nothing a peer sends: every count, length, position and
 * status is checked against what the receiver expects before it is used, and
 * a failure is SR_EFORMAT with a message that names the peer, the field, its
 * value and the allowed range. Messages are int64 words in the host's byte
 * order (every rank of a job runs the same build).
 *
 *   status word   a peer's SR_OK or SR_E* code (ring table, star parts,
 *                 the agreement of sr_agree)
 *   ring entry    one rank's spans, allgathered by sr_ring_init:
 *                 [status, n_spans, pos0, len, pos0, len, ...]
 *   step header   broadcast by the query rank before each phase-2 step:
 *                 [n_new, status]; n_new = 0 ends the query, a failed status
 *                 ends it with that error
 *   prefill hello every rank's view of a new context, allgathered by
 *                 sr_cp_prefill: the ranks must agree on all of it */
#ifndef SR_WORKER_WIRE_H
#define SR_WORKER_WIRE_H

#include <stdint.h>

#include "worker/placement.h"
#include "worker/ring_attention.h"

/* Positions and lengths a peer may name: a trillion tokens is far beyond any
 * context, and keeps every sum of a few of them far from overflow. */
#define SR_WIRE_MAX_POS ((int64_t)1 << 40)

/* A peer's status word: SR_OK or one of the SR_E* codes. */
int sr_wire_status(int64_t word, int peer, const char *what, int *status);

/* ---- ring entry ---- */

enum { SR_WIRE_RING_WORDS = 2 + 2 * SR_RING_MAX_SPANS };

/* The entry of a rank with n_spans spans (at most SR_RING_MAX_SPANS) and its
 * status; unused words are 0. */
void sr_wire_ring_encode(int64_t out[SR_WIRE_RING_WORDS], int status, const sr_span *spans, int n_spans);

/* Checks the entries of all world ranks (all: [world][SR_WIRE_RING_WORDS]):
 * each a status of SR_OK, 0..SR_RING_MAX_SPANS spans with 0 <= pos0,
 * 0 <= len and pos0 + len <= SR_WIRE_MAX_POS, and no two spans of any ranks
 * overlapping. Fills spans ([world][SR_RING_MAX_SPANS]), n_spans and tokens
 * ([world] each). A failed peer's status is returned as that peer's error. */
int sr_wire_ring_table(const int64_t *all, int world, sr_span *spans, int *n_spans, int64_t *tokens);

/* ---- step header ---- */

enum { SR_WIRE_STEP_WORDS = 2 };

void sr_wire_step_encode(int64_t out[SR_WIRE_STEP_WORDS], int64_t n_new, int status);

/* A step of 1..max_new new tokens (*status SR_OK), the end of a query
 * (*n_new 0, *status SR_OK), or the end of a failed one (*n_new 0, *status
 * the query rank's error). */
int sr_wire_step_decode(const int64_t in[SR_WIRE_STEP_WORDS], int64_t max_new, int64_t *n_new, int *status);

/* ---- prefill hello ---- */

enum {
    SR_WIRE_HELLO_STATUS, /* this rank's status so far */
    SR_WIRE_HELLO_TOKENS, /* context tokens */
    SR_WIRE_HELLO_HASH,   /* a hash of their ids */
    SR_WIRE_HELLO_MODE,   /* then the options and the model's shape, which must agree too */
    SR_WIRE_HELLO_BLOCK,
    SR_WIRE_HELLO_ANCHOR,
    SR_WIRE_HELLO_LAYERS,
    SR_WIRE_HELLO_HEADS,
    SR_WIRE_HELLO_KV_HEADS,
    SR_WIRE_HELLO_HEAD_DIM,
    SR_WIRE_HELLO_VOCAB,
    SR_WIRE_HELLO_KV_TYPE,
    SR_WIRE_HELLO_BATCH,  /* rows per step: may differ (the query rank's bounds a step) */
    SR_WIRE_HELLO_WORDS
};

/* Checks every rank's hello (all: [world][SR_WIRE_HELLO_WORDS]) against
 * rank 0's: statuses SR_OK, every word but the batch equal, every batch in
 * 1..SR_WIRE_MAX_POS. */
int sr_wire_hello_check(const int64_t *all, int world);

#endif
