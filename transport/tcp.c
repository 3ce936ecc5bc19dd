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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/status.h"
#include "transport/peers.h"
#include "transport/tcp_mesh.h"
#include "transport/tcp_wire.h"
#include "transport/transport.h"

#define HDR_BYTES SR_TP__FRAME_BYTES
#define SCRATCH_BYTES (64 << 10) /* sink for the payloads of refused frames */

_Static_assert(HDR_BYTES <= SR_TP__HDR_BYTES, "a frame header fits a request's hdr");

typedef sr_tp__req tcp_req;
typedef sr_tp__umsg umsg;

typedef struct {
    int fd; /* -1 for this rank itself */
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
} peer;

typedef struct {
    sr_tp__peers ps; /* the lock, and what matching and failing need per peer */
    peer *peers;
    int64_t max_msg;
    char *scratch;
    int wake_fd; /* eventfd: new sends, or stop */
    int stop;
    pthread_t thread;
} tcp_tp;

/* The peer has failed (sr_tp__peer_fail): so do its sends and the frame
 * being read; frames already read stay receivable. */
static void on_fail(void *owner, int p) {
    tcp_tp *t = owner;
    peer *pe = &t->peers[p];
    sr_tp__peer *q = &t->ps.peer[p];
    for (tcp_req *r = pe->sq_head, *n; r; r = n) {
        n = r->next;
        sr_tp__complete(&t->ps, r, q->err_code, q->err);
    }
    pe->sq_head = pe->sq_tail = NULL;
    if (pe->r_cur) sr_tp__complete(&t->ps, pe->r_cur, q->err_code, q->err);
    pe->r_cur = NULL;
    if (pe->u_cur) { /* half-read: never completes */
        if (pe->u_cur->waiter) sr_tp__complete(&t->ps, pe->u_cur->waiter, q->err_code, q->err);
        sr_tp__unexp_remove(q, pe->u_cur);
        pe->u_cur = NULL;
    }
    if (pe->fd >= 0) shutdown(pe->fd, SHUT_RDWR);
}

static const sr_tp__peers_backend peers_backend = {"SR_TCP_MAX_BUFFERED", "SR_TCP_IO_TIMEOUT", on_fail};

/* An unexpected frame is complete: hand it to its receive, if one matched. */
static void unexp_done(tcp_tp *t, sr_tp__peer *q, umsg *m) {
    if (m->discard) {
        sr_tp__unexp_remove(q, m);
    } else if (m->waiter) {
        if (m->len > 0) memcpy(m->waiter->buf, m->data, (size_t)m->len);
        sr_tp__complete(&t->ps, m->waiter, SR_OK, NULL);
        sr_tp__unexp_remove(q, m);
    }
}

/* A frame header has arrived: choose where its payload goes. */
static int on_header(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    sr_tp__peer *q = &t->ps.peer[p];
    sr_tp__frame f;
    pe->hdr_got = 0;
    int rc = sr_tp__frame_decode(pe->hdr, HDR_BYTES, t->max_msg, &f);
    if (rc != SR_OK) {
        sr_tp__peer_fail(&t->ps, p, rc, "rank %d sent a bad frame: %s", p, sr_error_msg());
        return -1;
    }
    if (f.tag == SR_TP__TAG_HEARTBEAT) return 0;
    pe->r_off = 0;
    tcp_req *r = sr_tp__posted_take(q, f.tag);
    if (r && r->base.len == f.len) {
        pe->r_cur = r;
        return 0;
    }
    if (r) { /* the payload is read and dropped */
        sr_tp__size_mismatch(&t->ps, r, f.len);
        pe->skip = pe->skip_len = f.len;
        pe->skip_tag = f.tag;
        return 0;
    }
    if (!sr_tp__unexp_admit(&t->ps, p, f.len, f.tag)) return -1;
    umsg *m = sr_tp__umsg_new(f.tag, f.len, 1);
    if (!m) {
        sr_tp__peer_fail(&t->ps, p, SR_ENOMEM, "out of memory for a %lld-byte message from rank %d", (long long)f.len,
                         p);
        return -1;
    }
    sr_tp__unexp_append(q, m);
    pe->u_cur = m;
    return 0;
}

/* Finishes the current payload if all of it is in. */
static void payload_check(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    if (pe->r_cur && pe->r_off == pe->r_cur->base.len) {
        tcp_req *r = pe->r_cur;
        pe->r_cur = NULL;
        sr_tp__complete(&t->ps, r, SR_OK, NULL);
    } else if (pe->u_cur && pe->u_cur->got == pe->u_cur->len) {
        umsg *m = pe->u_cur;
        pe->u_cur = NULL;
        unexp_done(t, &t->ps.peer[p], m);
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
        sr_tp__peer_fail(&t->ps, p, SR_ECOMM,
                         "rank %d %s %lld bytes into a %lld-byte message (tag %d): did it exit or fail?", p, why,
                         (long long)got, (long long)len, tag);
    else if (pe->hdr_got)
        sr_tp__peer_fail(&t->ps, p, SR_ECOMM,
                         "rank %d %s after %d of the %d bytes of a frame header: did it exit or fail?", p, why,
                         pe->hdr_got, HDR_BYTES);
    else
        sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "rank %d %s (did it exit or fail?)", p, why);
}

/* Reads what the socket has; returns when it would block or the peer failed. */
static void peer_read(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    sr_tp__peer *q = &t->ps.peer[p];
    while (!q->dead) {
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
        q->last_rx = sr_now();
        if (pe->r_cur) pe->r_off += n;
        else if (pe->u_cur) pe->u_cur->got += n;
        else if (pe->skip) pe->skip -= n;
        else if ((pe->hdr_got += (int)n) == HDR_BYTES && on_header(t, p) != 0) return;
        payload_check(t, p);
    }
}

/* Writes queued frames until the socket would block. */
static void peer_write(tcp_tp *t, int p) {
    peer *pe = &t->peers[p];
    sr_tp__peer *q = &t->ps.peer[p];
    while (!q->dead && pe->sq_head) {
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
            sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "sending to rank %d: %s (did it exit or fail?)", p, strerror(errno));
            return;
        }
        q->last_tx = sr_now();
        pe->s_off += n;
        if (pe->s_off == HDR_BYTES + r->base.len) {
            pe->sq_head = r->next;
            if (!pe->sq_head) pe->sq_tail = NULL;
            pe->s_off = 0;
            sr_tp__complete(&t->ps, r, SR_OK, NULL);
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
    double timeout = t->ps.io_timeout_s, now = sr_now(), hb_every = timeout / 4, next = timeout;
    for (int p = 0; p < t->ps.size; p++) {
        peer *pe = &t->peers[p];
        sr_tp__peer *q = &t->ps.peer[p];
        if (pe->fd < 0 || q->dead || sr_tp__silent(&t->ps, p, now)) continue;
        if (timeout - (now - q->last_rx) < next) next = timeout - (now - q->last_rx);
        if (!pe->sq_head && now - q->last_tx >= hb_every) {
            sr_tp__frame_encode(pe->hb.hdr, SR_TP__TAG_HEARTBEAT, 0);
            send_enqueue(pe, &pe->hb);
            peer_write(t, p);
        }
        double hb_in = pe->sq_head ? hb_every : hb_every - (now - q->last_tx);
        if (hb_in < next) next = hb_in;
    }
    return next;
}

static void *progress_main(void *arg) {
    tcp_tp *t = arg;
    struct pollfd *fds = calloc((size_t)t->ps.size + 1, sizeof *fds);
    int *who = calloc((size_t)t->ps.size + 1, sizeof *who);
    pthread_mutex_lock(&t->ps.mu);
    while (fds && who && !t->stop) {
        double wait_s = liveness(t);
        int n = 0;
        fds[n].fd = t->wake_fd;
        fds[n].events = POLLIN;
        who[n++] = -1;
        for (int p = 0; p < t->ps.size; p++) {
            peer *pe = &t->peers[p];
            if (pe->fd < 0 || t->ps.peer[p].dead) continue;
            fds[n].fd = pe->fd;
            fds[n].events = (short)(POLLIN | (pe->sq_head ? POLLOUT : 0));
            who[n++] = p;
        }
        pthread_mutex_unlock(&t->ps.mu);
        int rc = poll(fds, (nfds_t)n, wait_s > 0 ? (int)ceil(wait_s * 1000) : 0);
        pthread_mutex_lock(&t->ps.mu);
        if (rc < 0 && errno != EINTR) {
            for (int p = 0; p < t->ps.size; p++)
                if (t->peers[p].fd >= 0) sr_tp__peer_fail(&t->ps, p, SR_ECOMM, "poll failed: %s", strerror(errno));
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
        for (int p = 0; p < t->ps.size; p++)
            if (t->peers[p].fd >= 0)
                sr_tp__peer_fail(&t->ps, p, SR_ENOMEM, "out of memory in the tcp progress thread");
    pthread_mutex_unlock(&t->ps.mu);
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
    for (int p = 0; t->peers && p < t->ps.size; p++)
        if (t->peers[p].fd >= 0) close(t->peers[p].fd);
    if (t->wake_fd >= 0) close(t->wake_fd);
    sr_tp__peers_free(&t->ps);
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
    if (!t) {
        sr_tp__tcp_config_free(&cfg);
        return sr_error_set(SR_ENOMEM, "out of memory opening transport tcp");
    }
    t->wake_fd = -1;
    t->max_msg = cfg.max_msg;
    rc = sr_tp__peers_init(&t->ps, &peers_backend, t, cfg.rank, size, cfg.max_buffered, cfg.io_timeout_s);
    int *fds = calloc((size_t)size, sizeof *fds);
    t->peers = calloc((size_t)size, sizeof *t->peers);
    t->scratch = malloc(SCRATCH_BYTES);
    if (rc == SR_OK && (!fds || !t->peers || !t->scratch))
        rc = sr_error_set(SR_ENOMEM, "out of memory opening transport tcp");
    for (int p = 0; t->peers && p < size; p++) t->peers[p].fd = -1;

    if (rc == SR_OK) rc = sr_tp__tcp_mesh(&cfg, fds);
    double now = sr_now();
    for (int p = 0; rc == SR_OK && p < size; p++) {
        t->peers[p].fd = fds[p];
        t->ps.peer[p].last_rx = t->ps.peer[p].last_tx = now;
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
    pthread_mutex_lock(&t->ps.mu);
    for (int p = 0; p < t->ps.size; p++)
        while (t->peers[p].sq_head && !t->ps.peer[p].dead) pthread_cond_wait(&t->ps.cv, &t->ps.mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->ps.mu);
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
    pthread_mutex_lock(&t->ps.mu);
    peer *pe = &t->peers[peer_rank];
    sr_tp__peer *q = &t->ps.peer[peer_rank];
    if (peer_rank == tp->rank) {
        rc = sr_tp__send_self(&t->ps, r, buf, len, tag);
    } else if (q->dead) {
        sr_tp__complete(&t->ps, r, q->err_code, q->err);
    } else {
        int was_empty = pe->sq_head == NULL;
        send_enqueue(pe, r);
        /* write what fits now (small messages leave at once); the progress
         * thread needs waking only to take over a send it does not poll for */
        if (was_empty) peer_write(t, peer_rank);
        if (pe->sq_head == r) wake(t);
    }
    pthread_mutex_unlock(&t->ps.mu);
    return rc;
}

static int tcp_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer_rank, int tag) {
    tcp_tp *t = tp->impl;
    tcp_req *r = (tcp_req *)req;
    int rc = check_len(t, len);
    if (rc != SR_OK) return rc;
    r->buf = buf;
    pthread_mutex_lock(&t->ps.mu);
    peer *pe = &t->peers[peer_rank];
    sr_tp__peer *q = &t->ps.peer[peer_rank];
    umsg *m = sr_tp__recv_match(&t->ps, peer_rank, tag, r);
    if (m && m->len != len) {
        sr_tp__size_mismatch(&t->ps, r, m->len);
        m->discard = 1;
        if (m->got == m->len && m != pe->u_cur) sr_tp__unexp_remove(q, m);
    } else if (m && m->got == m->len && m != pe->u_cur) {
        if (len) memcpy(buf, m->data, (size_t)len);
        sr_tp__complete(&t->ps, r, SR_OK, NULL);
        sr_tp__unexp_remove(q, m);
    } else if (m) {
        m->waiter = r;
    }
    pthread_mutex_unlock(&t->ps.mu);
    return SR_OK;
}

static int tcp_test(sr_tp_req *req, int *done) {
    tcp_tp *t = req->tp->impl;
    pthread_mutex_lock(&t->ps.mu);
    *done = ((tcp_req *)req)->done;
    pthread_mutex_unlock(&t->ps.mu);
    return SR_OK;
}

/* No deadline of its own: a request on a peer ends when the peer delivers,
 * closes, or falls silent for the I/O timeout (see the top of this file). */
static int tcp_wait(sr_tp_req *req) {
    tcp_tp *t = req->tp->impl;
    tcp_req *r = (tcp_req *)req;
    pthread_mutex_lock(&t->ps.mu);
    while (!r->done) pthread_cond_wait(&t->ps.cv, &t->ps.mu);
    pthread_mutex_unlock(&t->ps.mu);
    return sr_tp__result(r);
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
