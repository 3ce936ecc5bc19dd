/* The per-peer bookkeeping that the tcp and ucx transports share; each owns
 * only its wire. Requests and their completion; receives posted and
 * messages that came before their receive ("unexpected"), matched by (peer,
 * tag), first posted first matched, with what a peer may have held that way
 * capped; a peer's failure, which fails everything pending on it; and the
 * clocks of the heartbeats. Everything here is called with mu held. */
#ifndef SR_TRANSPORT_PEERS_H
#define SR_TRANSPORT_PEERS_H

#include <pthread.h>
#include <stdint.h>

#include "transport/transport.h"

#define SR_TP__MSG_BYTES 320
#define SR_TP__HDR_BYTES 16 /* the largest wire header of a send (tcp's frame) */

typedef struct sr_tp__req {
    sr_tp_req base;
    struct sr_tp__req *next; /* in a posted list or the backend's send queue */
    char *buf;
    unsigned char hdr[SR_TP__HDR_BYTES]; /* sends: the backend's wire header, live until done */
    int done, status;
    char msg[SR_TP__MSG_BYTES]; /* the failure's message, re-raised on the waiting thread */
} sr_tp__req;

/* a message that arrived before its receive */
typedef struct sr_tp__umsg {
    struct sr_tp__umsg *next;
    int tag;
    int64_t len, got;   /* got: bytes of data in so far (tcp reads a frame in pieces) */
    char *data;         /* the payload, copied */
    void *desc;         /* ucx rendezvous instead: UCX's descriptor, to pull or release */
    sr_tp__req *waiter; /* tcp: receive matched while the payload was still arriving */
    int discard;        /* tcp: matched by a receive of another length: drop when read */
} sr_tp__umsg;

typedef struct {
    int dead, err_code;
    char err[SR_TP__MSG_BYTES];
    sr_tp__req *posted_head, *posted_tail; /* receives waiting for a message */
    sr_tp__umsg *unexp_head, *unexp_tail;
    int64_t buffered; /* what the unexpected list counts against max_buffered */
    double last_rx, last_tx;
} sr_tp__peer;

/* What a backend tells the bookkeeping about itself. */
typedef struct {
    /* where the user sets max_buffered and io_timeout_s, for the messages */
    const char *max_buffered_opt, *io_timeout_opt;
    /* fails what else the backend holds for peer p (sends, operations in flight) */
    void (*on_fail)(void *owner, int p);
} sr_tp__peers_backend;

typedef struct {
    sr_tp__peer *peer; /* (size) */
    int rank, size;
    int64_t max_buffered;
    double io_timeout_s;
    const sr_tp__peers_backend *be;
    void *owner; /* the backend's state, for be->on_fail */
    pthread_mutex_t mu; /* guards all of this and the backend's state */
    pthread_cond_t cv;  /* a request completed */
} sr_tp__peers;

/* Allocates size peers; sr_tp__peers_free is safe after either outcome. */
int sr_tp__peers_init(sr_tp__peers *ps, const sr_tp__peers_backend *be, void *owner, int rank, int size,
                      int64_t max_buffered, double io_timeout_s);
/* Frees the unexpected messages (their descriptors must be released first). */
void sr_tp__peers_free(sr_tp__peers *ps);

void sr_tp__complete(sr_tp__peers *ps, sr_tp__req *r, int status, const char *msg);
/* Fails receive r for a message of got bytes. */
void sr_tp__size_mismatch(sr_tp__peers *ps, sr_tp__req *r, int64_t got);
/* After sr_tp_wait's wait: r's status, its message raised again. */
int sr_tp__result(const sr_tp__req *r);

/* Marks peer p unusable and fails everything pending on it with code;
 * messages already in stay receivable. A dead peer stays dead. */
void sr_tp__peer_fail(sr_tp__peers *ps, int p, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Fails p if it has been silent for io_timeout_s; returns 1 if it did. */
int sr_tp__silent(sr_tp__peers *ps, int p, double now);

/* Takes the first receive posted on pe for tag, if any. */
sr_tp__req *sr_tp__posted_take(sr_tp__peer *pe, int tag);
/* For receive r of tag from peer p: the first unexpected message of its tag, or
 * NULL when there is none and r has been posted (or failed, p being dead). */
sr_tp__umsg *sr_tp__recv_match(sr_tp__peers *ps, int p, int tag, sr_tp__req *r);

/* A message of len bytes, with room for a copy if with_data; NULL if out of memory. */
sr_tp__umsg *sr_tp__umsg_new(int tag, int64_t len, int with_data);
/* Whether a copy of len bytes more fits under p's cap; fails p if not. */
int sr_tp__unexp_admit(sr_tp__peers *ps, int p, int64_t len, int tag);
void sr_tp__unexp_append(sr_tp__peer *pe, sr_tp__umsg *m);
/* Unlinks m from pe and frees it (its descriptor is the caller's). */
void sr_tp__unexp_remove(sr_tp__peer *pe, sr_tp__umsg *m);

/* Delivers send r to this rank: to a posted receive or the unexpected list. */
int sr_tp__send_self(sr_tp__peers *ps, sr_tp__req *r, const void *buf, int64_t len, int tag);

#endif
