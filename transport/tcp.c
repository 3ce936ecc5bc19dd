/* transport "tcp": plain sockets, no MPI. Every pair of ranks shares one
 * connection, authenticated at open with the job secret (tcp_mesh.c); a
 * progress thread per transport polls all of them, so transfers go on while
 * the caller computes.
 *
 * Frames are a 16-byte header (tcp_wire.h: magic, tag, payload length) then
 * the payload. A frame that arrives before its receive is posted is kept in
 * an "unexpected" list (the payload is read into a buffer of its own) and
 * copied when the receive comes; what a peer may have held that way is
 * capped, as is the length of any frame.
 *
 * Liveness: the progress thread sends a heartbeat frame to each peer it has
 * sent nothing to for a quarter of the I/O timeout, and fails a peer it has
 * heard nothing from for the whole of it. A peer that computes for an hour
 * between messages is still heard; one that is stopped, hung or cut off is
 * not, and every request on it fails. A closed or reset socket fails at once.
 *
 * One mutex guards all the state; the progress thread drops it only while it
 * sleeps in poll(). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/status.h"
#include "transport/tcp_mesh.h"
#include "transport/tcp_wire.h"
#include "transport/transport.h"

#define HDR_BYTES SR_TP__FRAME_BYTES
#define SCRATCH_BYTES (64 << 10) /* sink for the payloads of refused frames */
#define MSG_BYTES 320

typedef struct tcp_req {
    sr_tp_req base;
    struct tcp_req *next;
    char *buf;
    unsigned char hdr[HDR_BYTES]; /* sends: the frame header */
    int done, status;
    char msg[MSG_BYTES]; /* the failure's message, re-raised on the waiting thread */
} tcp_req;

/* a frame that arrived before its receive */
typedef struct umsg {
    struct umsg *next;
    int tag;
    int64_t len, got;
    char *data;
    tcp_req *waiter; /* receive matched while the payload was still arriving */
    int discard;     /* matched by a receive of another length: drop when read */
} umsg;

/* what an unexpected frame counts against the peer's cap */
static int64_t umsg_cost(int64_t len) { return len + (int64_t)sizeof(umsg); }

typedef struct {
    int fd; /* -1 for this rank itself */
    int dead, err_code;
    char err[MSG_BYTES];
    tcp_req *sq_head, *sq_tail; /* sends, in order */
    int64_t s_off;              /* bytes of the head frame (header + payload) sent */
    tcp_req hb;                 /* the heartbeat, queued like a send */
    unsigned char hdr[HDR_BYTES];
    int hdr_got;
    tcp_req *r_cur;              /* receive being filled */
    umsg *u_cur;                 /* unexpected frame being filled */
    int64_t r_off;
    int64_t skip, skip_len;      /* payload of a refused frame still to drop, of how much */
    int skip_tag;
    tcp_req *posted_head, *posted_tail; /* receives waiting for a frame */
    umsg *unexp_head, *unexp_tail;
    int64_t buffered; /* umsg_cost of every frame in the unexpected list */
    double last_rx, last_tx;
} peer;

typedef struct {
    peer *peers;
    int size;
    int64_t max_msg, max_buffered;
    double io_timeout_s;
    char *scratch;
    int wake_fd; /* eventfd: new sends, or stop */
    int stop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a request completed */
} tcp_tp;

static void req_complete(tcp_tp *t, tcp_req *r, int status, const char *msg) {
    r->done = 1;
    r->status = status;
    if (status != SR_OK) snprintf(r->msg, sizeof r->msg, "%s", msg);
    pthread_cond_broadcast(&t->cv);
}

static void unexp_remove(peer *pe, umsg *m) {
    umsg *prev = NULL;
    for (umsg *x = pe->unexp_head; x; prev = x, x = x->next) {
        if (x != m) continue;
        if (prev) prev->next = x->next;
        else pe->unexp_head = x->next;
        if (pe->unexp_tail == x) pe->unexp_tail = prev;
        break;
    }
    pe->buffered -= umsg_cost(m->len);
    free(m->data);
    free(m);
}

static void unexp_append(peer *pe, umsg *m) {
    if (pe->unexp_tail) pe->unexp_tail->next = m;
    else pe->unexp_head = m;
    pe->unexp_tail = m;
    pe->buffered += umsg_cost(m->len);
}

/* Takes the first receive posted for tag, if any. */
static tcp_req *posted_take(peer *pe, int tag) {
    tcp_req *prev = NULL;
    for (tcp_req *r = pe->posted_head; r; prev = r, r = r->next) {
        if (r->base.tag != tag) continue;
        if (prev) prev->next = r->next;
        else pe->posted_head = r->next;
        if (pe->posted_tail == r) pe->posted_tail = prev;
        r->next = NULL;
        return r;
    }
    return NULL;
}

/* Marks a peer unusable and fails everything still pending on it with code;
 * frames already read stay receivable. */
static void peer_fail(tcp_tp *t, int p, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void peer_fail(tcp_tp *t, int p, int code, const char *fmt, ...) {
    peer *pe = &t->peers[p];
    if (pe->dead) return;
    pe->dead = 1;
    pe->err_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->err, sizeof pe->err, fmt, ap);
    va_end(ap);
    for (tcp_req *r = pe->sq_head, *n; r; r = n) {
        n = r->next;
        req_complete(t, r, code, pe->err);
    }
    pe->sq_head = pe->sq_tail = NULL;
    for (tcp_req *r = pe->posted_head, *n; r; r = n) {
        n = r->next;
        req_complete(t, r, code, pe->err);
    }
    pe->posted_head = pe->posted_tail = NULL;
    if (pe->r_cur) req_complete(t, pe->r_cur, code, pe->err);
    pe->r_cur = NULL;
    if (pe->u_cur) { /* half-read: never completes */
        if (pe->u_cur->waiter) req_complete(t, pe->u_cur->waiter, code, pe->err);
        unexp_remove(pe, pe->u_cur);
        pe->u_cur = NULL;
    }
    if (pe->fd >= 0) shutdown(pe->fd, SHUT_RDWR);
}

static void size_mismatch(tcp_tp *t, tcp_req *r, int64_t got) {
    char msg[200];
    snprintf(msg, sizeof msg, "message from rank %d tag %d has %lld bytes, expected %lld", r->base.peer,
             r->base.tag, (long long)got, (long long)r->base.len);
    req_complete(t, r, SR_EFORMAT, msg);
}

/* An unexpected frame is complete: hand it to its receive, if one matched. */
static void unexp_done(tcp_tp *t, peer *pe, umsg *m) {
    if (m->discard) {
        unexp_remove(pe, m);
    } else if (m->waiter) {
        if (m->len > 0) memcpy(m->waiter->buf, m->data, (size_t)m->len);
        req_complete(t, m->waiter, SR_OK, NULL);
        unexp_remove(pe, m);
    }
}

/* A frame header has arrived: choose where its payload goes. */
static int on_header(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    sr_tp__frame f;
    pe->hdr_got = 0;
    int rc = sr_tp__frame_decode(pe->hdr, HDR_BYTES, t->max_msg, &f);
    if (rc != SR_OK) {
        peer_fail(t, p, rc, "rank %d sent a bad frame: %s", p, sr_error_msg());
        return -1;
    }
    if (f.tag == SR_TP__TAG_HEARTBEAT) return 0;
    pe->r_off = 0;
    tcp_req *r = posted_take(pe, f.tag);
    if (r && r->base.len == f.len) {
        pe->r_cur = r;
        return 0;
    }
    if (r) { /* the payload is read and dropped */
        size_mismatch(t, r, f.len);
        pe->skip = pe->skip_len = f.len;
        pe->skip_tag = f.tag;
        return 0;
    }
    if (umsg_cost(f.len) > t->max_buffered - pe->buffered) {
        peer_fail(t, p, SR_ERANGE,
                  "rank %d sent a %lld-byte message (tag %d) before its receive was posted while %lld bytes of such "
                  "messages were held: over the cap of %lld (SR_TCP_MAX_BUFFERED)",
                  p, (long long)f.len, f.tag, (long long)pe->buffered, (long long)t->max_buffered);
        return -1;
    }
    umsg *m = calloc(1, sizeof *m);
    char *data = f.len ? malloc((size_t)f.len) : NULL;
    if (!m || (f.len && !data)) {
        free(m);
        free(data);
        peer_fail(t, p, SR_ENOMEM, "out of memory for a %lld-byte message from rank %d", (long long)f.len, p);
        return -1;
    }
    m->tag = f.tag;
    m->len = f.len;
    m->data = data;
    unexp_append(pe, m);
    pe->u_cur = m;
    return 0;
}

/* Finishes the current payload if all of it is in. */
static void payload_check(tcp_tp *t, peer *pe) {
    if (pe->r_cur && pe->r_off == pe->r_cur->base.len) {
        tcp_req *r = pe->r_cur;
        pe->r_cur = NULL;
        req_complete(t, r, SR_OK, NULL);
    } else if (pe->u_cur && pe->u_cur->got == pe->u_cur->len) {
        umsg *m = pe->u_cur;
        pe->u_cur = NULL;
        unexp_done(t, pe, m);
    }
}

/* The connection ended: say where in the stream, since a frame cut short
 * means the peer died mid-message. */
static void peer_closed(tcp_tp *t, int p, const char *why) {
    peer *pe = &t->peers[p];
    int64_t len = -1, got = 0;
    int tag = 0;
    if (pe->r_cur) len = pe->r_cur->base.len, got = pe->r_off, tag = pe->r_cur->base.tag;
    else if (pe->u_cur) len = pe->u_cur->len, got = pe->u_cur->got, tag = pe->u_cur->tag;
    else if (pe->skip) len = pe->skip_len, got = pe->skip_len - pe->skip, tag = pe->skip_tag;
    if (len >= 0)
        peer_fail(t, p, SR_ECOMM, "rank %d %s %lld bytes into a %lld-byte message (tag %d): did it exit or fail?", p,
                  why, (long long)got, (long long)len, tag);
    else if (pe->hdr_got)
        peer_fail(t, p, SR_ECOMM, "rank %d %s after %d of the %d bytes of a frame header: did it exit or fail?", p, why,
                  pe->hdr_got, HDR_BYTES);
    else
        peer_fail(t, p, SR_ECOMM, "rank %d %s (did it exit or fail?)", p, why);
}

/* Reads what the socket has; returns when it would block or the peer failed. */
static void peer_read(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    while (!pe->dead) {
        void *dst;
        size_t want;
        if (pe->r_cur) {
            dst = pe->r_cur->buf + pe->r_off;
            want = (size_t)(pe->r_cur->base.len - pe->r_off);
        } else if (pe->u_cur) {
            dst = pe->u_cur->data + pe->u_cur->got;
            want = (size_t)(pe->u_cur->len - pe->u_cur->got);
        } else if (pe->skip) {
            dst = t->scratch;
            want = pe->skip < SCRATCH_BYTES ? (size_t)pe->skip : SCRATCH_BYTES;
        } else {
            dst = pe->hdr + pe->hdr_got;
            want = (size_t)(HDR_BYTES - pe->hdr_got);
        }
        ssize_t n = recv(pe->fd, dst, want, 0);
        if (n == 0) {
            peer_closed(t, p, "closed the connection");
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            char why[120];
            snprintf(why, sizeof why, "broke the connection (%s)", strerror(errno));
            peer_closed(t, p, why);
            return;
        }
        pe->last_rx = sr_now();
        if (pe->r_cur) pe->r_off += n;
        else if (pe->u_cur) pe->u_cur->got += n;
        else if (pe->skip) pe->skip -= n;
        else if ((pe->hdr_got += (int)n) == HDR_BYTES && on_header(t, p) != 0) return;
        payload_check(t, pe);
    }
}

/* Writes queued frames until the socket would block. */
static void peer_write(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    while (!pe->dead && pe->sq_head) {
        tcp_req *r = pe->sq_head;
        struct iovec iov[2];
        int k = 0;
        if (pe->s_off < HDR_BYTES) {
            iov[k].iov_base = r->hdr + pe->s_off;
            iov[k++].iov_len = (size_t)(HDR_BYTES - pe->s_off);
        }
        int64_t poff = pe->s_off > HDR_BYTES ? pe->s_off - HDR_BYTES : 0;
        if (r->base.len > poff) {
            iov[k].iov_base = r->buf + poff;
            iov[k++].iov_len = (size_t)(r->base.len - poff);
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)k;
        ssize_t n = sendmsg(pe->fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            peer_fail(t, p, SR_ECOMM, "sending to rank %d: %s (did it exit or fail?)", p, strerror(errno));
            return;
        }
        pe->last_tx = sr_now();
        pe->s_off += n;
        if (pe->s_off == HDR_BYTES + r->base.len) {
            pe->sq_head = r->next;
            if (!pe->sq_head) pe->sq_tail = NULL;
            pe->s_off = 0;
            req_complete(t, r, SR_OK, NULL);
        }
    }
}

static void send_enqueue(peer *pe, tcp_req *r) {
    r->next = NULL;
    if (pe->sq_tail) pe->sq_tail->next = r;
    else pe->sq_head = r;
    pe->sq_tail = r;
}

/* Heartbeats due, silent peers failed; returns seconds until the next check. */
static double liveness(tcp_tp *t) {
    double now = sr_now(), hb_every = t->io_timeout_s / 4, next = t->io_timeout_s;
    for (int p = 0; p < t->size; p++) {
        peer *pe = &t->peers[p];
        if (pe->fd < 0 || pe->dead) continue;
        double quiet = now - pe->last_rx;
        if (quiet >= t->io_timeout_s) {
            peer_fail(t, p, SR_ECOMM,
                      "rank %d has sent nothing for %.1f s, not even a heartbeat: it is stopped, hung or cut off "
                      "(SR_TCP_IO_TIMEOUT is %g s)",
                      p, quiet, t->io_timeout_s);
            continue;
        }
        if (t->io_timeout_s - quiet < next) next = t->io_timeout_s - quiet;
        if (!pe->sq_head && now - pe->last_tx >= hb_every) {
            sr_tp__frame_encode(pe->hb.hdr, SR_TP__TAG_HEARTBEAT, 0);
            send_enqueue(pe, &pe->hb);
            peer_write(t, p);
        }
        double hb_in = pe->sq_head ? hb_every : hb_every - (now - pe->last_tx);
        if (hb_in < next) next = hb_in;
    }
    return next;
}

static void *progress_main(void *arg) {
    tcp_tp *t = arg;
    struct pollfd *fds = calloc((size_t)t->size + 1, sizeof *fds);
    int *who = calloc((size_t)t->size + 1, sizeof *who);
    pthread_mutex_lock(&t->mu);
    while (fds && who && !t->stop) {
        double wait_s = liveness(t);
        int n = 0;
        fds[n].fd = t->wake_fd;
        fds[n].events = POLLIN;
        who[n++] = -1;
        for (int p = 0; p < t->size; p++) {
            peer *pe = &t->peers[p];
            if (pe->fd < 0 || pe->dead) continue;
            fds[n].fd = pe->fd;
            fds[n].events = (short)(POLLIN | (pe->sq_head ? POLLOUT : 0));
            who[n++] = p;
        }
        pthread_mutex_unlock(&t->mu);
        int rc = poll(fds, (nfds_t)n, wait_s > 0 ? (int)ceil(wait_s * 1000) : 0);
        pthread_mutex_lock(&t->mu);
        if (rc < 0 && errno != EINTR) {
            for (int p = 0; p < t->size; p++)
                if (t->peers[p].fd >= 0) peer_fail(t, p, SR_ECOMM, "poll failed: %s", strerror(errno));
            break;
        }
        for (int i = 0; rc > 0 && i < n; i++) {
            if (!fds[i].revents) continue;
            if (who[i] < 0) {
                uint64_t v;
                if (read(t->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN) break;
                continue;
            }
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) peer_read(t, who[i]);
            if (fds[i].revents & POLLOUT) peer_write(t, who[i]);
        }
    }
    if (!fds || !who)
        for (int p = 0; p < t->size; p++)
            if (t->peers[p].fd >= 0) peer_fail(t, p, SR_ENOMEM, "out of memory in the tcp progress thread");
    pthread_mutex_unlock(&t->mu);
    free(fds);
    free(who);
    return NULL;
}

static void wake(tcp_tp *t) {
    uint64_t one = 1;
    ssize_t n = write(t->wake_fd, &one, sizeof one);
    (void)n; /* a full counter already means "wake up" */
}

static void tcp_free(tcp_tp *t) {
    for (int p = 0; p < t->size; p++) {
        peer *pe = &t->peers[p];
        if (pe->fd >= 0) close(pe->fd);
        for (umsg *m = pe->unexp_head, *n; m; m = n) {
            n = m->next;
            free(m->data);
            free(m);
        }
    }
    if (t->wake_fd >= 0) close(t->wake_fd);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t->scratch);
    free(t->peers);
    free(t);
}

static int tcp_available(void) { return 1; }

static int tcp_open(sr_tp *tp, const sr_tp_opts *o) {
    sr_tp__tcp_cfg cfg;
    int rc = sr_tp__tcp_config(o, &cfg);
    if (rc != SR_OK) return rc;
    int size = cfg.size;
    tcp_tp *t = calloc(1, sizeof *t);
    int *fds = calloc((size_t)size, sizeof *fds);
    if (t) t->peers = calloc((size_t)size, sizeof *t->peers);
    if (t) t->scratch = malloc(SCRATCH_BYTES);
    if (!t || !fds || !t->peers || !t->scratch) {
        if (t) {
            free(t->peers);
            free(t->scratch);
        }
        free(t);
        free(fds);
        sr_tp__tcp_config_free(&cfg);
        return sr_error_set(SR_ENOMEM, "out of memory opening transport tcp");
    }
    t->size = size;
    t->wake_fd = -1;
    t->max_msg = cfg.max_msg;
    t->max_buffered = cfg.max_buffered;
    t->io_timeout_s = cfg.io_timeout_s;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    for (int p = 0; p < size; p++) t->peers[p].fd = -1;

    rc = sr_tp__tcp_mesh(&cfg, fds);
    double now = sr_now();
    for (int p = 0; rc == SR_OK && p < size; p++) {
        t->peers[p].fd = fds[p];
        t->peers[p].last_rx = t->peers[p].last_tx = now;
    }
    free(fds);
    tp->rank = cfg.rank;
    sr_tp__tcp_config_free(&cfg);
    if (rc == SR_OK && (t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = sr_error_set(SR_ECOMM, "eventfd: %s", strerror(errno));
    if (rc == SR_OK && pthread_create(&t->thread, NULL, progress_main, t) != 0)
        rc = sr_error_set(SR_ECOMM, "cannot start the tcp progress thread");
    if (rc != SR_OK) {
        tcp_free(t);
        return rc;
    }
    tp->size = size;
    tp->impl = t;
    return SR_OK;
}

static void tcp_close(sr_tp *tp) {
    tcp_tp *t = tp->impl;
    /* Flush what is still queued so a peer's last receive completes; a peer
     * that stopped reading fails by the I/O timeout. */
    pthread_mutex_lock(&t->mu);
    for (int p = 0; p < t->size; p++)
        while (t->peers[p].sq_head && !t->peers[p].dead) pthread_cond_wait(&t->cv, &t->mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->mu);
    wake(t);
    pthread_join(t->thread, NULL);
    tcp_free(t);
}

static int check_len(const tcp_tp *t, int64_t len) {
    if (len > t->max_msg)
        return sr_error_set(SR_ERANGE,
                            "transport tcp: a %lld-byte message is over the cap of %lld bytes (raise SR_TCP_MAX_MSG or "
                            "sr_tp_opts.max_msg_bytes, the same on every rank)",
                            (long long)len, (long long)t->max_msg);
    return SR_OK;
}

static int tcp_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer_rank, int tag) {
    tcp_tp *t = tp->impl;
    tcp_req *r = (tcp_req *)req;
    int rc = check_len(t, len);
    if (rc != SR_OK) return rc;
    r->buf = (char *)buf;
    sr_tp__frame_encode(r->hdr, tag, len);
    pthread_mutex_lock(&t->mu);
    peer *pe = &t->peers[peer_rank];
    if (peer_rank == tp->rank) {
        /* to this rank: deliver now, through a posted receive or the unexpected list */
        tcp_req *m = posted_take(pe, tag);
        if (m && m->base.len != len) {
            size_mismatch(t, m, len);
        } else if (m) {
            if (len) memcpy(m->buf, buf, (size_t)len);
            req_complete(t, m, SR_OK, NULL);
        } else {
            umsg *u = calloc(1, sizeof *u);
            char *data = len ? malloc((size_t)len) : NULL;
            if (!u || (len && !data)) {
                free(u);
                free(data);
                rc = sr_error_set(SR_ENOMEM, "out of memory for a %lld-byte message to self", (long long)len);
            } else {
                if (len) memcpy(data, buf, (size_t)len);
                u->tag = tag;
                u->len = u->got = len;
                u->data = data;
                unexp_append(pe, u);
            }
        }
        if (rc == SR_OK) req_complete(t, r, SR_OK, NULL);
    } else if (pe->dead) {
        req_complete(t, r, pe->err_code, pe->err);
    } else {
        int was_empty = pe->sq_head == NULL;
        send_enqueue(pe, r);
        /* write what fits now (small messages leave at once); the progress
         * thread needs waking only to take over a send it does not poll for */
        if (was_empty) peer_write(t, peer_rank);
        if (pe->sq_head == r) wake(t);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static int tcp_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer_rank, int tag) {
    tcp_tp *t = tp->impl;
    tcp_req *r = (tcp_req *)req;
    int rc = check_len(t, len);
    if (rc != SR_OK) return rc;
    r->buf = buf;
    pthread_mutex_lock(&t->mu);
    peer *pe = &t->peers[peer_rank];
    umsg *m = pe->unexp_head;
    while (m && (m->tag != tag || m->waiter || m->discard)) m = m->next;
    if (m) {
        if (m->len != len) {
            size_mismatch(t, r, m->len);
            m->discard = 1;
            if (m->got == m->len && m != pe->u_cur) unexp_remove(pe, m);
        } else if (m->got == m->len && m != pe->u_cur) {
            if (len) memcpy(buf, m->data, (size_t)len);
            req_complete(t, r, SR_OK, NULL);
            unexp_remove(pe, m);
        } else {
            m->waiter = r;
        }
    } else if (pe->dead) {
        req_complete(t, r, pe->err_code, pe->err);
    } else {
        if (pe->posted_tail) pe->posted_tail->next = r;
        else pe->posted_head = r;
        pe->posted_tail = r;
    }
    pthread_mutex_unlock(&t->mu);
    return SR_OK;
}

static int tcp_test(sr_tp_req *req, int *done) {
    tcp_tp *t = req->tp->impl;
    pthread_mutex_lock(&t->mu);
    *done = ((tcp_req *)req)->done;
    pthread_mutex_unlock(&t->mu);
    return SR_OK;
}

/* No deadline of its own: a request on a peer ends when the peer delivers,
 * closes, or falls silent for the I/O timeout (see the top of this file). */
static int tcp_wait(sr_tp_req *req) {
    tcp_tp *t = req->tp->impl;
    tcp_req *r = (tcp_req *)req;
    pthread_mutex_lock(&t->mu);
    while (!r->done) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
    if (r->status != SR_OK) return sr_error_set(r->status, "%s", r->msg);
    return SR_OK;
}

const sr_tp_backend sr_tp_tcp_backend = {
    .name = "tcp",
    .req_size = sizeof(tcp_req),
    .available = tcp_available,
    .open = tcp_open,
    .close = tcp_close,
    .isend = tcp_isend,
    .irecv = tcp_irecv,
    .test = tcp_test,
    .wait = tcp_wait,
};
