/* transport "ucx": UCX's UCP active messages, CPU memory. UCX picks the
 * fastest path to each peer (shared memory and CMA on one host, TCP or RDMA
 * verbs between hosts); messages up to its eager limit arrive in the
 * callback, longer ones by rendezvous (the receiver pulls the payload into
 * the posted buffer once a receive matches).
 *
 * Why active messages and not UCP's tag matching: a tagged receive matches a
 * message from any endpoint of the worker, so a process that reached the
 * worker's port could inject into a posted receive by claiming a rank in the
 * tag. An active message's callback gets the endpoint it came in on
 * (reply_ep), so the sender's rank is the endpoint's, not a field it wrote;
 * matching (peer, tag), first posted first matched, is done in peers.c,
 * as for tcp.
 *
 * Addresses: UCX worker addresses are opaque blobs, exchanged through
 * sr_tp_opts.exchange (an allgather the caller supplies: the coordinator at
 * join), or over MPI when that is NULL under mpirun.
 *
 * Authentication, per endpoint, at open: each rank sends each peer a fresh
 * nonce; each answers with HMAC-SHA256(job key, domain, its rank, the
 * receiver's rank, the job size, the receiver's nonce) over the same
 * endpoint; then each rank tells every peer it is ready once it has verified
 * all of them, and nothing else is sent before the peer's "ready" arrives.
 * What this protects:
 *  - reading: data is only ever sent on endpoints created from the exchanged
 *    addresses, and only after the process at the other end has proved the
 *    key on that endpoint. A stranger gets nothing from us.
 *  - injection by a process using UCX as shipped, even one holding our
 *    worker address: its connection is an endpoint of its own on our
 *    worker, not one of ours, so everything it sends is dropped (tested:
 *    eager and rendezvous); and it cannot complete the handshake without
 *    the key.
 * What it does not protect: the messages after the handshake carry no MAC.
 * Someone who forges UCX's packets (a raw AM header naming the endpoint id
 * of an authenticated peer, or a wire-up claiming a peer's worker id) can
 * inject; someone on the network path can read and rewrite, as with tcp.
 * On one host, UCX's System V segments are mode 660 (seen with ipcs -m), so
 * a process of the same user or group can attach them and read or write
 * what passes through; the same user can read our memory anyway (CMA,
 * ptrace). Encrypting or MACing every payload would cost the bandwidth this
 * backend is for. The worker addresses are only as trustworthy as the
 * exchange that delivered them (the coordinator's authenticated join).
 *
 * Progress: a thread per transport sleeps on the worker's event fd (and wakes
 * at least every PROGRESS_MS, for transports without events and for the
 * heartbeats), so transfers go on while the caller computes, as with tcp; a
 * caller in sr_tp_wait drives progress itself for a short spin before
 * sleeping, which is what keeps small-message latency low, and the thread
 * stands aside meanwhile (an armed worker makes every sender signal it
 * through a syscall). One mutex guards the worker (UCS_THREAD_MODE_SERIALIZED)
 * and all state here.
 *
 * Failures: as in tcp, a heartbeat goes to each peer we have sent nothing to
 * for a quarter of io_timeout_s and a peer we have heard nothing from for
 * the whole of it fails (checked by whoever drives progress, the thread or a
 * waiting caller): every request on that peer
 * ends with SR_ECOMM naming the rank, whether it exited, was killed, hung or
 * was cut off. UCX's own peer error handling is not used: in UCX 1.13 it
 * rules out the shared-memory transports (sysv, posix: "no peer failure
 * handler"), which on one host are 10x faster than TCP loopback (8 B
 * ping-pong here: 1.3 us against 15 us). Errors UCX still reports on a
 * request fail that request with SR_ECOMM. A peer that
 * closes its transport says so first, so requests on it fail at once.
 * Requests that UCX still holds when their peer fails are detached (their
 * completion, whenever UCX gives it, is dropped) so they can be released. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "transport/peers.h"
#include "transport/transport.h"
#include "transport/ucx_setup.h"

#define MSG_BYTES SR_TP__MSG_BYTES
#define NONCE_BYTES 32
#define MAC_BYTES crypto_auth_hmacsha256_BYTES
#define KEY_BYTES SR_TP__UCX_KEY_BYTES
#define TAG_WIRE_MAX (SR_TP_TAG_MAX + 16) /* the user's tags and the frontend's collectives */
#define PROGRESS_MS 10
#define SPIN_S 50e-6 /* a waiter drives progress itself this long before sleeping */
/* while waiters spin, the thread looks again this often (not at every wait's
 * end: waking it per message cost more than the message) */
#define IDLE_NS 1000000L

enum { AM_DATA = 1, AM_CTL = 2 };
enum { CTL_HELLO = 1, CTL_PROOF, CTL_READY, CTL_BYE, CTL_HEARTBEAT };
#define CTL_BYTES (1 + NONCE_BYTES) /* kind, then a nonce or a MAC */

static const char domain[] = "starring ucx proof v1";

typedef sr_tp__req ucx_req;
typedef sr_tp__umsg umsg;

/* A UCX operation in flight for a request: UCX's completion callback gets
 * this, not the request, so a request failed early (its peer went silent)
 * can be released while UCX still holds the operation. */
typedef struct op {
    struct op *prev, *next;
    ucx_req *r;  /* NULL once detached */
    void *owner; /* the ucx_tp */
    int peer;
} op;

typedef struct {
    ucp_ep_h ep; /* NULL for this rank itself */
    int authed, ready;
    unsigned char nonce[NONCE_BYTES]; /* ours, for this peer to answer */
    unsigned char ctl_out[4][CTL_BYTES]; /* hello, proof, ready/bye, heartbeat: live until sent */
    op *ops;                              /* UCX operations in flight */
} peer;

typedef struct {
    sr_tp__peers ps; /* the lock, and what matching and failing need per peer */
    ucp_context_h ctx;
    ucp_worker_h worker;
    peer *peers;
    unsigned char key[KEY_BYTES];
    int ctl_pending; /* control messages not yet sent */
    long dropped;    /* messages from strangers' endpoints, or from peers already failed */
    int efd, wake_fd, stop;
    pthread_t thread;
    int spinning; /* waiters driving progress themselves */
    int live;         /* open: heartbeats and silence checks run */
    double next_live; /* when they are next due */
    unsigned drives;  /* calls of drive, to read the clock in only some */
    pthread_cond_t idle; /* a waiter stopped spinning without its request, or stop */
} ucx_tp;

/* The peer has failed (sr_tp__peer_fail): so do the requests UCX still
 * holds for it, detached from their operations. */
static void on_fail(void *owner, int p) {
    ucx_tp *t = owner;
    sr_tp__peer *q = &t->ps.peer[p];
    for (op *o = t->peers[p].ops; o; o = o->next) {
        if (o->r) sr_tp__complete(&t->ps, o->r, q->err_code, q->err);
        o->r = NULL;
    }
}

static const sr_tp__peers_backend peers_backend = {"sr_tp_opts.max_buffered_bytes", "sr_tp_opts.io_timeout_s",
                                                   on_fail};

static op *op_new(ucx_tp *t, ucx_req *r) {
    op *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    peer *pe = &t->peers[r->base.peer];
    o->r = r;
    o->owner = t;
    o->peer = r->base.peer;
    o->next = pe->ops;
    if (pe->ops) pe->ops->prev = o;
    pe->ops = o;
    return o;
}

/* UCX is done with o: returns its request, or NULL if it was detached. */
static ucx_req *op_end(op *o) {
    ucx_tp *t = o->owner;
    peer *pe = &t->peers[o->peer];
    if (o->prev) o->prev->next = o->next;
    else pe->ops = o->next;
    if (o->next) o->next->prev = o->prev;
    ucx_req *r = o->r;
    free(o);
    return r;
}

static int sender_rank(const ucx_tp *t, const ucp_am_recv_param_t *param) {
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || !param->reply_ep) return -1;
    for (int p = 0; p < t->ps.size; p++)
        if (t->peers[p].ep == param->reply_ep) return p;
    return -1;
}

static const char *peer_word(ucs_status_t st) {
    return st == UCS_ERR_CANCELED ? "was cancelled" : "failed";
}

/* Completion of a rendezvous receive started by rndv_pull. */
static void pull_done(void *request, ucs_status_t status, size_t length, void *user_data) {
    op *o = user_data;
    ucx_tp *t = o->owner;
    ucx_req *r = op_end(o);
    ucp_request_free(request);
    if (!r) return;
    if (status == UCS_OK && (int64_t)length == r->base.len) {
        sr_tp__complete(&t->ps, r, SR_OK, NULL);
    } else if (status == UCS_OK) {
        sr_tp__size_mismatch(&t->ps, r, (int64_t)length);
    } else {
        char msg[MSG_BYTES];
        snprintf(msg, sizeof msg, "receiving %lld bytes from rank %d tag %d %s: %s (did it exit or fail?)",
                 (long long)r->base.len, r->base.peer, r->base.tag, peer_word(status), ucs_status_string(status));
        sr_tp__complete(&t->ps, r, SR_ECOMM, msg);
    }
}

/* Pulls a rendezvous message into a matched receive of the right length;
 * 0 if out of memory, when desc is still the caller's to drop. */
static int rndv_pull(ucx_tp *t, ucx_req *r, void *desc) {
    op *o = op_new(t, r);
    if (!o) {
        sr_tp__complete(&t->ps, r, SR_ENOMEM, "out of memory for a ucx receive");
        return 0;
    }
    ucp_request_param_t prm;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    prm.cb.recv_am = pull_done;
    prm.user_data = o;
    prm.datatype = ucp_dt_make_contig(1);
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(t->worker, desc, r->buf, (size_t)r->base.len, &prm);
    if (sp == NULL || UCS_PTR_IS_ERR(sp)) op_end(o);
    if (sp == NULL) {
        sr_tp__complete(&t->ps, r, SR_OK, NULL);
    } else if (UCS_PTR_IS_ERR(sp)) {
        char msg[MSG_BYTES];
        snprintf(msg, sizeof msg, "receiving %lld bytes from rank %d tag %d: %s", (long long)r->base.len,
                 r->base.peer, r->base.tag, ucs_status_string(UCS_PTR_STATUS(sp)));
        sr_tp__complete(&t->ps, r, SR_ECOMM, msg);
    }
    return 1;
}

static ucs_status_t on_data(void *arg, const void *header, size_t header_length, void *data, size_t length,
                            const ucp_am_recv_param_t *param) {
    ucx_tp *t = arg;
    int p = sender_rank(t, param);
    if (p < 0 || !t->peers[p].authed || t->ps.peer[p].dead) {
        t->dropped++;
        return UCS_OK; /* a rendezvous dropped this way completes the stranger's send, and nothing is read */
    }
    sr_tp__peer *q = &t->ps.peer[p];
    q->last_rx = sr_now();
    int32_t tag = -1;
    if (header_length == sizeof tag) memcpy(&tag, header, sizeof tag);
    if (tag < 0 || tag > TAG_WIRE_MAX) {
        sr_tp__peer_fail(&t->ps, p, SR_EFORMAT,
                         "rank %d sent a message with a %zu-byte header (tag %d): not this transport's", p,
                         header_length, tag);
        return UCS_OK;
    }
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    ucx_req *r = sr_tp__posted_take(q, tag);
    if (r) {
        if (r->base.len != (int64_t)length) {
            sr_tp__size_mismatch(&t->ps, r, (int64_t)length);
            return UCS_OK;
        }
        if (!rndv) {
            if (length) memcpy(r->buf, data, length);
            sr_tp__complete(&t->ps, r, SR_OK, NULL);
            return UCS_OK;
        }
        return rndv_pull(t, r, data) ? UCS_INPROGRESS : UCS_OK;
    }
    if (!rndv && !sr_tp__unexp_admit(&t->ps, p, (int64_t)length, tag)) return UCS_OK;
    umsg *m = sr_tp__umsg_new(tag, (int64_t)length, !rndv);
    if (!m) {
        sr_tp__peer_fail(&t->ps, p, SR_ENOMEM, "out of memory for a %zu-byte message from rank %d", length, p);
        return UCS_OK;
    }
    if (rndv) m->desc = data;
    else if (length) memcpy(m->data, data, length);
    sr_tp__unexp_append(q, m);
    return rndv ? UCS_INPROGRESS : UCS_OK;
}

static void ctl_sent(void *request, ucs_status_t status, void *user_data) {
    ucx_tp *t = user_data;
    (void)status; /* a peer that is gone falls silent and fails by the heartbeat timeout */
    t->ctl_pending--;
    pthread_cond_broadcast(&t->ps.cv);
    ucp_request_free(request);
}

/* Sends a control message from slot (0 hello, 1 proof, 2 ready/bye,
 * 3 heartbeat) of p's. */
static void ctl_send(ucx_tp *t, int p, int slot) {
    peer *pe = &t->peers[p];
    ucp_request_param_t prm;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    prm.cb.send = ctl_sent;
    prm.user_data = t;
    prm.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    t->ps.peer[p].last_tx = sr_now();
    ucs_status_ptr_t sp = ucp_am_send_nbx(pe->ep, AM_CTL, NULL, 0, pe->ctl_out[slot], CTL_BYTES, &prm);
    if (UCS_PTR_IS_ERR(sp))
        sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "sending to rank %d: %s (did it exit or fail?)", p,
                         ucs_status_string(UCS_PTR_STATUS(sp)));
    else if (sp)
        t->ctl_pending++;
}

/* MAC that `from` proves the key with, answering `to`'s nonce. */
static void proof(const ucx_tp *t, int from, int to, const unsigned char nonce[NONCE_BYTES],
                  unsigned char out[MAC_BYTES]) {
    int32_t v[3] = {from, to, t->ps.size};
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, t->key, KEY_BYTES);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)domain, sizeof domain);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)v, sizeof v);
    crypto_auth_hmacsha256_update(&st, nonce, NONCE_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

static ucs_status_t on_ctl(void *arg, const void *header, size_t header_length, void *data, size_t length,
                           const ucp_am_recv_param_t *param) {
    ucx_tp *t = arg;
    (void)header;
    int p = sender_rank(t, param);
    if (p < 0 || t->ps.peer[p].dead || header_length != 0 || length != CTL_BYTES ||
        (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        t->dropped++;
        return UCS_OK;
    }
    peer *pe = &t->peers[p];
    if (pe->authed) t->ps.peer[p].last_rx = sr_now();
    const unsigned char *b = data;
    unsigned char mac[MAC_BYTES];
    switch (b[0]) {
    case CTL_HELLO:
        pe->ctl_out[1][0] = CTL_PROOF;
        proof(t, t->ps.rank, p, b + 1, pe->ctl_out[1] + 1);
        ctl_send(t, p, 1);
        break;
    case CTL_PROOF:
        proof(t, p, t->ps.rank, pe->nonce, mac);
        if (sodium_memcmp(mac, b + 1, MAC_BYTES) != 0)
            sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "rank %d failed the ucx handshake: it does not hold this job's key",
                             p);
        else
            pe->authed = 1;
        pthread_cond_broadcast(&t->ps.cv);
        break;
    case CTL_READY:
        pe->ready = 1; /* harmless if forged: data from p is still dropped until p is authenticated */
        pthread_cond_broadcast(&t->ps.cv);
        break;
    case CTL_BYE:
        if (pe->authed) sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "rank %d closed its transport", p);
        break;
    case CTL_HEARTBEAT:
        break;
    default:
        t->dropped++;
    }
    return UCS_OK;
}

/* Heartbeats due, silent peers failed; with the lock held. */
static void liveness(ucx_tp *t) {
    double now = sr_now();
    for (int p = 0; p < t->ps.size; p++) {
        peer *pe = &t->peers[p];
        if (!pe->ep || t->ps.peer[p].dead || sr_tp__silent(&t->ps, p, now)) continue;
        if (now - t->ps.peer[p].last_tx >= t->ps.io_timeout_s / 4) {
            pe->ctl_out[3][0] = CTL_HEARTBEAT;
            ctl_send(t, p, 3);
        }
    }
}

static void liveness_due(ucx_tp *t) {
    if (!t->live) return;
    double now = sr_now();
    if (now < t->next_live) return;
    t->next_live = now + t->ps.io_timeout_s / 8;
    liveness(t);
}

/* Runs UCX's progress until it has nothing more to do, and the liveness
 * checks when due (whoever drives: a caller that keeps waiting keeps the
 * progress thread aside); with the lock held. The clock is read every 64th
 * time only: in a tight wait it was the largest cost. */
static void drive(ucx_tp *t) {
    while (ucp_worker_progress(t->worker) != 0) {
    }
    if ((++t->drives & 63) == 0) liveness_due(t);
}

static void *progress_main(void *arg) {
    ucx_tp *t = arg;
    pthread_mutex_lock(&t->ps.mu);
    while (!t->stop) {
        /* While a waiter spins it drives progress; arming the worker then
         * would only make every sender signal us through a syscall. */
        if (t->spinning) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += IDLE_NS;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&t->idle, &t->ps.mu, &ts);
            continue;
        }
        drive(t);
        liveness_due(t);
        /* BUSY: events arrived since the last progress, so progress again */
        if (t->efd >= 0 && ucp_worker_arm(t->worker) == UCS_ERR_BUSY) {
            pthread_mutex_unlock(&t->ps.mu);
            pthread_mutex_lock(&t->ps.mu);
            continue;
        }
        pthread_mutex_unlock(&t->ps.mu);
        struct pollfd fds[2] = {{.fd = t->efd, .events = POLLIN}, {.fd = t->wake_fd, .events = POLLIN}};
        if (poll(fds, 2, PROGRESS_MS) > 0 && (fds[1].revents & POLLIN)) {
            uint64_t v;
            ssize_t n = read(t->wake_fd, &v, sizeof v);
            (void)n; /* a stop request is read from t->stop, not from the count */
        }
        pthread_mutex_lock(&t->ps.mu);
    }
    pthread_mutex_unlock(&t->ps.mu);
    return NULL;
}

/* With the lock held, drives progress until cond holds (0 if the deadline
 * passed first): for open and close, when no progress thread runs. */
static int drive_until(ucx_tp *t, int (*cond)(ucx_tp *), double deadline) {
    while (!cond(t)) {
        if (sr_now() > deadline) return 0;
        drive(t);
        if (cond(t)) break;
        struct timespec ts = {0, 200000};
        pthread_mutex_unlock(&t->ps.mu);
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&t->ps.mu);
    }
    return 1;
}

static int all_authed(ucx_tp *t) {
    for (int p = 0; p < t->ps.size; p++)
        if (p != t->ps.rank && !t->peers[p].authed && !t->ps.peer[p].dead) return 0;
    return 1;
}

static int all_ready(ucx_tp *t) {
    for (int p = 0; p < t->ps.size; p++)
        if (p != t->ps.rank && !t->peers[p].ready && !t->ps.peer[p].dead) return 0;
    return t->ctl_pending == 0;
}

static int ctl_flushed(ucx_tp *t) { return t->ctl_pending == 0; }

/* The handshake (see the top of this file); the lock is held. */
static int authenticate(ucx_tp *t, double open_s) {
    double deadline = sr_now() + open_s;
    for (int p = 0; p < t->ps.size; p++) {
        if (p == t->ps.rank) continue;
        peer *pe = &t->peers[p];
        randombytes_buf(pe->nonce, NONCE_BYTES);
        pe->ctl_out[0][0] = CTL_HELLO;
        memcpy(pe->ctl_out[0] + 1, pe->nonce, NONCE_BYTES);
        ctl_send(t, p, 0);
    }
    double now = sr_now();
    for (int p = 0; p < t->ps.size; p++) t->ps.peer[p].last_rx = t->ps.peer[p].last_tx = now;
    int in_time = drive_until(t, all_authed, deadline);
    for (int p = 0; in_time && p < t->ps.size; p++) {
        if (p == t->ps.rank || t->ps.peer[p].dead) continue;
        t->peers[p].ctl_out[2][0] = CTL_READY;
        ctl_send(t, p, 2);
    }
    if (in_time) in_time = drive_until(t, all_ready, deadline);
    for (int p = 0; p < t->ps.size; p++) {
        peer *pe = &t->peers[p];
        const sr_tp__peer *q = &t->ps.peer[p];
        if (p == t->ps.rank) continue;
        if (q->dead) return sr_error_set(q->err_code, "transport ucx: %s", q->err);
        if (!pe->authed || !pe->ready)
            return sr_error_set(SR_ECOMM,
                                "transport ucx: rank %d did not complete the handshake within %g s (sr_tp_opts."
                                "timeout_s): is it running, and in this job?",
                                p, open_s);
    }
    return SR_OK;
}

static void ucx_free(ucx_tp *t) {
    for (int p = 0; t->ps.peer && p < t->ps.size; p++)
        for (umsg *m = t->ps.peer[p].unexp_head; m; m = m->next)
            if (m->desc) ucp_am_data_release(t->worker, m->desc);
    if (t->worker) ucp_worker_destroy(t->worker);
    /* operations UCX never completed (their peer was gone) */
    for (int p = 0; t->peers && p < t->ps.size; p++)
        while (t->peers[p].ops) op_end(t->peers[p].ops);
    if (t->ctx) ucp_cleanup(t->ctx);
    if (t->wake_fd >= 0) close(t->wake_fd);
    sodium_memzero(t->key, sizeof t->key);
    sr_tp__peers_free(&t->ps);
    pthread_cond_destroy(&t->idle);
    free(t->peers);
    free(t);
}

/* Says goodbye to every live peer and closes the endpoints, within a bound:
 * a peer that is gone fails its endpoint rather than holding us up. */
static void disconnect_all(ucx_tp *t) {
    double deadline = sr_now() + (t->ps.io_timeout_s < 5 ? t->ps.io_timeout_s : 5);
    for (int p = 0; p < t->ps.size; p++) {
        peer *pe = &t->peers[p];
        if (!pe->ep || t->ps.peer[p].dead) continue;
        pe->ctl_out[2][0] = CTL_BYE;
        ctl_send(t, p, 2);
    }
    drive_until(t, ctl_flushed, deadline);
    for (int p = 0; p < t->ps.size; p++) {
        peer *pe = &t->peers[p];
        if (!pe->ep) continue;
        ucp_request_param_t prm;
        memset(&prm, 0, sizeof prm);
        prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        prm.flags = t->ps.peer[p].dead ? UCP_EP_CLOSE_FLAG_FORCE : 0;
        ucs_status_ptr_t sp = ucp_ep_close_nbx(pe->ep, &prm);
        pe->ep = NULL;
        while (sp && !UCS_PTR_IS_ERR(sp) && ucp_request_check_status(sp) == UCS_INPROGRESS && sr_now() < deadline)
            ucp_worker_progress(t->worker);
        if (sp && !UCS_PTR_IS_ERR(sp)) ucp_request_free(sp);
    }
}

static int ucx_available(void) { return 1; }

static int ucx_open(sr_tp *tp, const sr_tp_opts *o) {
    sr_tp__ucx_cfg cfg;
    int rc = sr_tp__ucx_config(o, &cfg);
    if (rc != SR_OK) return rc;
    ucx_tp *t = calloc(1, sizeof *t);
    if (!t) {
        sr_tp__ucx_config_free(&cfg);
        return sr_error_set(SR_ENOMEM, "out of memory opening transport ucx");
    }
    t->efd = t->wake_fd = -1;
    pthread_cond_init(&t->idle, NULL);
    rc = sr_tp__peers_init(&t->ps, &peers_backend, t, cfg.rank, cfg.size, cfg.max_buffered, cfg.io_timeout_s);
    memcpy(t->key, cfg.key, KEY_BYTES);
    ucp_ep_h *eps = NULL;
    if (rc == SR_OK && (!(t->peers = calloc((size_t)t->ps.size, sizeof *t->peers)) ||
                        !(eps = calloc((size_t)t->ps.size, sizeof *eps))))
        rc = sr_error_set(SR_ENOMEM, "out of memory for %d ucx peers", t->ps.size);
    const sr_tp__ucx_handler h[2] = {{AM_DATA, on_data}, {AM_CTL, on_ctl}};
    if (rc == SR_OK) rc = sr_tp__ucx_worker(h, 2, t, &t->ctx, &t->worker, &t->efd);
    if (rc == SR_OK) rc = sr_tp__ucx_connect(&cfg, t->worker, eps);
    for (int p = 0; eps && p < t->ps.size; p++) t->peers[p].ep = eps[p];
    free(eps);
    double open_s = cfg.open_s;
    sr_tp__ucx_config_free(&cfg);
    pthread_mutex_lock(&t->ps.mu);
    if (rc == SR_OK) rc = authenticate(t, open_s);
    pthread_mutex_unlock(&t->ps.mu);
    if (rc == SR_OK && (t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = sr_error_set(SR_ECOMM, "eventfd: %s", strerror(errno));
    t->live = rc == SR_OK;
    if (rc == SR_OK && pthread_create(&t->thread, NULL, progress_main, t) != 0)
        rc = sr_error_set(SR_ECOMM, "cannot start the ucx progress thread");
    if (rc != SR_OK) {
        t->live = 0;
        if (t->worker && t->peers) {
            pthread_mutex_lock(&t->ps.mu);
            disconnect_all(t);
            pthread_mutex_unlock(&t->ps.mu);
        }
        ucx_free(t);
        return rc;
    }
    tp->rank = t->ps.rank;
    tp->size = t->ps.size;
    tp->impl = t;
    return SR_OK;
}

static void ucx_close(sr_tp *tp) {
    ucx_tp *t = tp->impl;
    pthread_mutex_lock(&t->ps.mu);
    t->stop = 1;
    t->live = 0;
    pthread_cond_signal(&t->idle);
    pthread_mutex_unlock(&t->ps.mu);
    uint64_t one = 1;
    ssize_t n = write(t->wake_fd, &one, sizeof one);
    (void)n; /* the thread also wakes on its timer */
    pthread_join(t->thread, NULL);
    pthread_mutex_lock(&t->ps.mu);
    disconnect_all(t);
    pthread_mutex_unlock(&t->ps.mu);
    if (t->dropped)
        SR_WARN("transport ucx: dropped %ld messages that came from no authenticated peer's endpoint (a stranger, or a "
                "peer already failed)",
                t->dropped);
    ucx_free(t);
}

static void send_done(void *request, ucs_status_t status, void *user_data) {
    op *o = user_data;
    ucx_tp *t = o->owner;
    ucx_req *r = op_end(o);
    ucp_request_free(request);
    if (!r) return;
    if (status == UCS_OK) {
        sr_tp__complete(&t->ps, r, SR_OK, NULL);
    } else {
        char msg[MSG_BYTES];
        snprintf(msg, sizeof msg, "sending %lld bytes to rank %d tag %d %s: %s (did it exit or fail?)",
                 (long long)r->base.len, r->base.peer, r->base.tag, peer_word(status), ucs_status_string(status));
        sr_tp__complete(&t->ps, r, SR_ECOMM, msg);
    }
}

static int ucx_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer_rank, int tag) {
    ucx_tp *t = tp->impl;
    ucx_req *r = (ucx_req *)req;
    int rc = SR_OK;
    op *o = NULL;
    pthread_mutex_lock(&t->ps.mu);
    peer *pe = &t->peers[peer_rank];
    sr_tp__peer *q = &t->ps.peer[peer_rank];
    if (peer_rank == t->ps.rank) {
        rc = sr_tp__send_self(&t->ps, r, buf, len, tag);
    } else if (q->dead) {
        sr_tp__complete(&t->ps, r, q->err_code, q->err);
    } else if (!(o = op_new(t, r))) {
        rc = sr_error_set(SR_ENOMEM, "out of memory for a ucx send");
    } else {
        int32_t wire_tag = tag;
        memcpy(r->hdr, &wire_tag, sizeof wire_tag);
        q->last_tx = sr_now();
        ucp_request_param_t prm;
        memset(&prm, 0, sizeof prm);
        prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS |
                           UCP_OP_ATTR_FIELD_DATATYPE;
        prm.cb.send = send_done;
        prm.user_data = o;
        prm.flags = UCP_AM_SEND_FLAG_REPLY;
        prm.datatype = ucp_dt_make_contig(1);
        ucs_status_ptr_t sp = ucp_am_send_nbx(pe->ep, AM_DATA, r->hdr, sizeof wire_tag, buf, (size_t)len, &prm);
        if (sp == NULL || UCS_PTR_IS_ERR(sp)) op_end(o);
        if (sp == NULL) {
            sr_tp__complete(&t->ps, r, SR_OK, NULL);
        } else if (UCS_PTR_IS_ERR(sp)) {
            char msg[MSG_BYTES];
            snprintf(msg, sizeof msg, "sending %lld bytes to rank %d tag %d: %s (did it exit or fail?)",
                     (long long)len, peer_rank, tag, ucs_status_string(UCS_PTR_STATUS(sp)));
            sr_tp__complete(&t->ps, r, SR_ECOMM, msg);
        }
    }
    pthread_mutex_unlock(&t->ps.mu);
    return rc;
}

static int ucx_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer_rank, int tag) {
    ucx_tp *t = tp->impl;
    ucx_req *r = (ucx_req *)req;
    r->buf = buf;
    pthread_mutex_lock(&t->ps.mu);
    umsg *m = sr_tp__recv_match(&t->ps, peer_rank, tag, r);
    if (m) {
        if (m->len != len) {
            sr_tp__size_mismatch(&t->ps, r, m->len);
            if (m->desc) ucp_am_data_release(t->worker, m->desc); /* the sender's send completes */
        } else if (m->desc) {
            if (!rndv_pull(t, r, m->desc)) ucp_am_data_release(t->worker, m->desc);
        } else {
            if (len) memcpy(buf, m->data, (size_t)len);
            sr_tp__complete(&t->ps, r, SR_OK, NULL);
        }
        sr_tp__unexp_remove(&t->ps.peer[peer_rank], m);
    }
    pthread_mutex_unlock(&t->ps.mu);
    return SR_OK;
}

static int ucx_test(sr_tp_req *req, int *done) {
    ucx_tp *t = req->tp->impl;
    pthread_mutex_lock(&t->ps.mu);
    if (!((ucx_req *)req)->done) drive(t);
    *done = ((ucx_req *)req)->done;
    pthread_mutex_unlock(&t->ps.mu);
    return SR_OK;
}

/* No deadline of its own: a request ends when the peer delivers, closes, or
 * fails (UCX's keepalive; see the top of this file). */
static int ucx_wait(sr_tp_req *req) {
    ucx_tp *t = req->tp->impl;
    ucx_req *r = (ucx_req *)req;
    pthread_mutex_lock(&t->ps.mu);
    if (!r->done) {
        t->spinning++;
        double until = sr_now() + SPIN_S;
        for (unsigned i = 1; !r->done && ((i & 15) || sr_now() < until); i++) {
            drive(t);
            if (r->done) break;
            pthread_mutex_unlock(&t->ps.mu);
            pthread_mutex_lock(&t->ps.mu);
        }
        /* the thread takes over at once only if this waiter is going to sleep */
        if (--t->spinning == 0 && !r->done) pthread_cond_signal(&t->idle);
    }
    while (!r->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += PROGRESS_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&t->ps.cv, &t->ps.mu, &ts);
    }
    pthread_mutex_unlock(&t->ps.mu);
    return sr_tp__result(r);
}

const sr_tp_backend sr_tp_ucx_backend = {
    .name = "ucx",
    .req_size = sizeof(ucx_req),
    .available = ucx_available,
    .open = ucx_open,
    .close = ucx_close,
    .isend = ucx_isend,
    .irecv = ucx_irecv,
    .test = ucx_test,
    .wait = ucx_wait,
};
