/* transport "tcp": plain sockets, no MPI. Every pair of ranks shares one
 * connection (full mesh, the lower rank listens); a progress thread per
 * transport polls all of them, so transfers go on while the caller computes.
 *
 * Frames are a 16-byte header (magic, tag, payload length) then the payload,
 * in the byte order of the host: the ranks of a job run on one architecture.
 * A frame that arrives before its receive is posted is kept in an
 * "unexpected" list (the payload is read into a buffer of its own) and copied
 * when the receive comes.
 *
 * One mutex guards all the state; the progress thread drops it only while it
 * sleeps in poll(). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#include "transport/transport.h"

#define FRAME_MAGIC 0x31465253u /* "SRF1" */
#define HELLO_MAGIC 0x4f4c4853u /* "SHLO" */
#define HDR_BYTES 16

typedef struct tcp_req {
    sr_tp_req base;
    struct tcp_req *next;
    char *buf;
    unsigned char hdr[HDR_BYTES]; /* sends: the frame header */
    int done, status;
    char msg[256]; /* the failure's message, re-raised on the waiting thread */
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

typedef struct {
    int fd; /* -1 for this rank itself */
    int dead;
    char err[200];
    tcp_req *sq_head, *sq_tail; /* sends, in order */
    int64_t s_off;              /* bytes of the head frame (header + payload) sent */
    unsigned char hdr[HDR_BYTES];
    int hdr_got;
    tcp_req *r_cur; /* receive being filled */
    umsg *u_cur;    /* unexpected frame being filled */
    int64_t r_off;
    tcp_req *posted_head, *posted_tail; /* receives waiting for a frame */
    umsg *unexp_head, *unexp_tail;
} peer;

typedef struct {
    peer *peers;
    int size;
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
    free(m->data);
    free(m);
}

/* Marks a peer unusable and fails everything still pending on it; frames
 * already read stay receivable. */
static void peer_fail(tcp_tp *t, int p, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void peer_fail(tcp_tp *t, int p, const char *fmt, ...) {
    peer *pe = &t->peers[p];
    if (pe->dead) return;
    pe->dead = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->err, sizeof pe->err, fmt, ap);
    va_end(ap);
    for (tcp_req *r = pe->sq_head, *n; r; r = n) {
        n = r->next;
        req_complete(t, r, SR_ECOMM, pe->err);
    }
    pe->sq_head = pe->sq_tail = NULL;
    for (tcp_req *r = pe->posted_head, *n; r; r = n) {
        n = r->next;
        req_complete(t, r, SR_ECOMM, pe->err);
    }
    pe->posted_head = pe->posted_tail = NULL;
    if (pe->r_cur) req_complete(t, pe->r_cur, SR_ECOMM, pe->err);
    pe->r_cur = NULL;
    if (pe->u_cur) { /* half-read: never completes */
        if (pe->u_cur->waiter) req_complete(t, pe->u_cur->waiter, SR_ECOMM, pe->err);
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
    uint32_t magic;
    int32_t tag;
    uint64_t len;
    memcpy(&magic, pe->hdr, 4);
    memcpy(&tag, pe->hdr + 4, 4);
    memcpy(&len, pe->hdr + 8, 8);
    if (magic != FRAME_MAGIC || tag < 0 || len > ((uint64_t)1 << 46)) {
        peer_fail(t, p, "rank %d sent a malformed frame (magic %08x, tag %d, length %llu)", p, magic, tag,
                  (unsigned long long)len);
        return -1;
    }
    pe->hdr_got = 0;
    pe->r_off = 0;
    int mismatched = 0;
    tcp_req *prev = NULL;
    for (tcp_req *r = pe->posted_head; r; prev = r, r = r->next) {
        if (r->base.tag != tag) continue;
        if (prev) prev->next = r->next;
        else pe->posted_head = r->next;
        if (pe->posted_tail == r) pe->posted_tail = prev;
        r->next = NULL;
        if (r->base.len == (int64_t)len) {
            pe->r_cur = r;
            return 0;
        }
        size_mismatch(t, r, (int64_t)len);
        mismatched = 1; /* the payload is read and dropped */
        break;
    }
    umsg *m = calloc(1, sizeof *m);
    char *data = len ? malloc(len) : NULL;
    if (!m || (len && !data)) {
        free(m);
        free(data);
        peer_fail(t, p, "out of memory for a %llu-byte message from rank %d", (unsigned long long)len, p);
        return -1;
    }
    m->tag = tag;
    m->len = (int64_t)len;
    m->data = data;
    m->discard = mismatched;
    if (pe->unexp_tail) pe->unexp_tail->next = m;
    else pe->unexp_head = m;
    pe->unexp_tail = m;
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
        } else {
            dst = pe->hdr + pe->hdr_got;
            want = (size_t)(HDR_BYTES - pe->hdr_got);
        }
        ssize_t n = recv(pe->fd, dst, want, 0);
        if (n == 0) {
            peer_fail(t, p, "rank %d closed the connection (did it exit or fail?)", p);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            peer_fail(t, p, "receiving from rank %d: %s", p, strerror(errno));
            return;
        }
        if (pe->r_cur) pe->r_off += n;
        else if (pe->u_cur) pe->u_cur->got += n;
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
        ssize_t n = 0;
        if (k) {
            struct msghdr mh;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = iov;
            mh.msg_iovlen = (size_t)k;
            n = sendmsg(pe->fd, &mh, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return;
                peer_fail(t, p, "sending to rank %d: %s (did it exit or fail?)", p, strerror(errno));
                return;
            }
        }
        pe->s_off += n;
        if (pe->s_off == HDR_BYTES + r->base.len) {
            pe->sq_head = r->next;
            if (!pe->sq_head) pe->sq_tail = NULL;
            pe->s_off = 0;
            req_complete(t, r, SR_OK, NULL);
        }
    }
}

static void *progress_main(void *arg) {
    tcp_tp *t = arg;
    struct pollfd *fds = calloc((size_t)t->size + 1, sizeof *fds);
    int *who = calloc((size_t)t->size + 1, sizeof *who);
    pthread_mutex_lock(&t->mu);
    while (fds && who && !t->stop) {
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
        int rc = poll(fds, (nfds_t)n, -1);
        pthread_mutex_lock(&t->mu);
        if (rc < 0 && errno != EINTR) {
            for (int p = 0; p < t->size; p++)
                if (t->peers[p].fd >= 0) peer_fail(t, p, "poll failed: %s", strerror(errno));
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
            if (t->peers[p].fd >= 0) peer_fail(t, p, "out of memory in the tcp progress thread");
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

/* ---- connection setup ---- */

static int env_int(const char *a, const char *b, const char *c) {
    const char *names[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        const char *v = names[i] ? getenv(names[i]) : NULL;
        if (v && *v) return atoi(v);
    }
    return -1;
}

typedef struct {
    char host[300];
    char port[16];
} endpoint;

/* Parses "host:port,host:port,..." (IPv6 as [addr]:port) into size entries. */
static int parse_hosts(const char *s, endpoint *ep, int size) {
    int i = 0;
    const char *p = s;
    while (*p && i < size) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char item[300];
        if (n >= sizeof item) return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d is too long", i);
        memcpy(item, p, n);
        item[n] = '\0';
        char *colon = strrchr(item, ':');
        if (!colon || colon == item || !colon[1])
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d '%s' is not host:port", i, item);
        *colon = '\0';
        char *h = item;
        if (h[0] == '[' && h[strlen(h) - 1] == ']') {
            h[strlen(h) - 1] = '\0';
            h++;
        }
        long port = strtol(colon + 1, NULL, 10);
        if (port <= 0 || port > 65535)
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d has bad port '%s'", i, colon + 1);
        snprintf(ep[i].host, sizeof ep[i].host, "%s", h);
        snprintf(ep[i].port, sizeof ep[i].port, "%ld", port);
        i++;
        p = end ? end + 1 : p + n;
    }
    if (i != size || *p)
        return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS names %s endpoints than the %d ranks of the job",
                            i < size ? "fewer" : "more", size);
    return SR_OK;
}

/* Blocking full read/write with a deadline, for the hello exchange. */
static int io_full(int fd, void *buf, size_t n, int writing, double deadline) {
    char *b = buf;
    while (n > 0) {
        struct pollfd pf = {fd, (short)(writing ? POLLOUT : POLLIN), 0};
        int ms = (int)((deadline - sr_now()) * 1000);
        if (ms <= 0) return sr_error_set(SR_ECOMM, "timed out in the tcp hello exchange");
        int rc = poll(&pf, 1, ms);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) return sr_error_set(SR_ECOMM, "timed out in the tcp hello exchange");
        ssize_t k = writing ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);
        if (k == 0) return sr_error_set(SR_ECOMM, "peer closed the connection during the tcp hello");
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return sr_error_set(SR_ECOMM, "tcp hello: %s", strerror(errno));
        }
        b += k;
        n -= (size_t)k;
    }
    return SR_OK;
}

typedef struct {
    uint32_t magic;
    int32_t rank, size, pad;
} hello;

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return sr_error_set(SR_ECOMM, "fcntl(O_NONBLOCK): %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return SR_OK;
}

/* Connects to a lower rank, retrying while it is not yet listening. */
static int connect_peer(const endpoint *ep, int me, int size, int p, double deadline, int *out) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (g != 0)
        return sr_error_set(SR_ECOMM, "cannot resolve rank %d's address %s:%s: %s", p, ep->host, ep->port,
                            gai_strerror(g));
    int fd = -1, last = 0;
    while (fd < 0) {
        for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
            fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) continue;
            if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
                last = errno;
                close(fd);
                fd = -1;
            }
        }
        if (fd >= 0 || sr_now() > deadline) break;
        usleep(20000);
    }
    freeaddrinfo(res);
    if (fd < 0)
        return sr_error_set(SR_ECOMM, "cannot connect to rank %d at %s:%s: %s (is it running?)", p, ep->host,
                            ep->port, strerror(last));
    hello h = {HELLO_MAGIC, me, size, 0}, r;
    int rc = io_full(fd, &h, sizeof h, 1, deadline);
    if (rc == SR_OK) rc = io_full(fd, &r, sizeof r, 0, deadline);
    if (rc == SR_OK && (r.magic != HELLO_MAGIC || r.rank != p || r.size != size))
        rc = sr_error_set(SR_ECOMM, "%s:%s answered as rank %d of %d, expected rank %d of %d (another job on that port?)",
                          ep->host, ep->port, r.rank, r.size, p, size);
    if (rc != SR_OK) {
        close(fd);
        return rc;
    }
    *out = fd;
    return SR_OK;
}

static int listen_on(const endpoint *ep, int local_only, int *out) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = local_only ? AF_INET : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int g = getaddrinfo(local_only ? ep->host : NULL, ep->port, &hints, &res);
    if (g != 0) return sr_error_set(SR_ECOMM, "cannot resolve listen port %s: %s", ep->port, gai_strerror(g));
    int fd = -1, last = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            last = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return sr_error_set(SR_ECOMM, "cannot listen on port %s: %s (choose another SR_TCP_PORT?)", ep->port,
                            strerror(last));
    *out = fd;
    return SR_OK;
}

/* Accepts the connections of the higher ranks and checks their hellos. */
static int accept_peers(tcp_tp *t, int lfd, int me, int size, double deadline) {
    for (int need = size - 1 - me; need > 0;) {
        struct pollfd pf = {lfd, POLLIN, 0};
        int ms = (int)((deadline - sr_now()) * 1000);
        if (ms <= 0 || poll(&pf, 1, ms) == 0)
            return sr_error_set(SR_ECOMM, "timed out waiting for %d higher rank(s) to connect", need);
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
            return sr_error_set(SR_ECOMM, "accept: %s", strerror(errno));
        }
        hello h;
        if (io_full(fd, &h, sizeof h, 0, deadline) != SR_OK || h.magic != HELLO_MAGIC || h.size != size ||
            h.rank <= me || h.rank >= size || t->peers[h.rank].fd >= 0) {
            close(fd); /* a stray or duplicate connection: not one of ours */
            continue;
        }
        hello r = {HELLO_MAGIC, me, size, 0};
        if (io_full(fd, &r, sizeof r, 1, deadline) != SR_OK) {
            close(fd);
            continue;
        }
        t->peers[h.rank].fd = fd;
        need--;
    }
    return SR_OK;
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
    free(t->peers);
    free(t);
}

static int tcp_available(void) { return 1; }

static int tcp_open(sr_tp *tp, const sr_tp_opts *o) {
    int rank = o->rank >= 0 ? o->rank : env_int("SR_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK");
    int size = o->size >= 0 ? o->size : env_int("SR_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE");
    if (size <= 0 || rank < 0 || rank >= size)
        return sr_error_set(SR_EINVAL, "transport tcp: rank %d of %d is invalid (set SR_RANK and SR_SIZE)", rank,
                            size);
    endpoint *ep = calloc((size_t)size, sizeof *ep);
    tcp_tp *t = calloc(1, sizeof *t);
    if (t) t->peers = calloc((size_t)size, sizeof *t->peers);
    if (!ep || !t || !t->peers) {
        free(ep);
        if (t) free(t->peers);
        free(t);
        return sr_error_set(SR_ENOMEM, "out of memory opening transport tcp");
    }
    t->size = size;
    t->wake_fd = -1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    for (int p = 0; p < size; p++) t->peers[p].fd = -1;

    const char *hosts = o->hosts ? o->hosts : getenv("SR_TCP_HOSTS");
    int local = !(hosts && *hosts);
    int rc = SR_OK;
    if (!local) {
        rc = parse_hosts(hosts, ep, size);
    } else {
        int base = o->base_port > 0 ? o->base_port : env_int("SR_TCP_PORT", NULL, NULL);
        if (base <= 0) base = 29500;
        if (base + size - 1 > 65535) rc = sr_error_set(SR_EINVAL, "tcp base port %d + %d ranks exceeds 65535", base, size);
        for (int p = 0; p < size; p++) {
            snprintf(ep[p].host, sizeof ep[p].host, "127.0.0.1");
            snprintf(ep[p].port, sizeof ep[p].port, "%d", base + p);
        }
    }
    double deadline = sr_now() + (o->timeout_s > 0 ? o->timeout_s : 60.0);
    int lfd = -1;
    if (rc == SR_OK && rank < size - 1) rc = listen_on(&ep[rank], local, &lfd);
    for (int p = 0; rc == SR_OK && p < rank; p++) rc = connect_peer(&ep[p], rank, size, p, deadline, &t->peers[p].fd);
    if (rc == SR_OK && lfd >= 0) rc = accept_peers(t, lfd, rank, size, deadline);
    if (lfd >= 0) close(lfd);
    free(ep);
    for (int p = 0; rc == SR_OK && p < size; p++)
        if (t->peers[p].fd >= 0) rc = set_nonblock(t->peers[p].fd);
    if (rc == SR_OK && (t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = sr_error_set(SR_ECOMM, "eventfd: %s", strerror(errno));
    if (rc == SR_OK && pthread_create(&t->thread, NULL, progress_main, t) != 0)
        rc = sr_error_set(SR_ECOMM, "cannot start the tcp progress thread");
    if (rc != SR_OK) {
        tcp_free(t);
        return rc;
    }
    tp->rank = rank;
    tp->size = size;
    tp->impl = t;
    return SR_OK;
}

static void tcp_close(sr_tp *tp) {
    tcp_tp *t = tp->impl;
    /* Flush what is still queued so a peer's last receive completes. */
    pthread_mutex_lock(&t->mu);
    for (int p = 0; p < t->size; p++)
        while (t->peers[p].sq_head && !t->peers[p].dead) pthread_cond_wait(&t->cv, &t->mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->mu);
    wake(t);
    pthread_join(t->thread, NULL);
    tcp_free(t);
}

static int tcp_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer_rank, int tag) {
    tcp_tp *t = tp->impl;
    tcp_req *r = (tcp_req *)req;
    r->buf = (char *)buf;
    uint32_t magic = FRAME_MAGIC;
    int32_t tg = tag;
    uint64_t ln = (uint64_t)len;
    memcpy(r->hdr, &magic, 4);
    memcpy(r->hdr + 4, &tg, 4);
    memcpy(r->hdr + 8, &ln, 8);
    pthread_mutex_lock(&t->mu);
    peer *pe = &t->peers[peer_rank];
    int rc = SR_OK;
    if (peer_rank == tp->rank) {
        /* to this rank: deliver now, through a posted receive or the unexpected list */
        tcp_req *prev = NULL, *m = pe->posted_head;
        while (m && m->base.tag != tag) {
            prev = m;
            m = m->next;
        }
        if (m) {
            if (prev) prev->next = m->next;
            else pe->posted_head = m->next;
            if (pe->posted_tail == m) pe->posted_tail = prev;
            if (m->base.len != len) {
                size_mismatch(t, m, len);
            } else {
                if (len) memcpy(m->buf, buf, (size_t)len);
                req_complete(t, m, SR_OK, NULL);
            }
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
                if (pe->unexp_tail) pe->unexp_tail->next = u;
                else pe->unexp_head = u;
                pe->unexp_tail = u;
            }
        }
        if (rc == SR_OK) req_complete(t, r, SR_OK, NULL);
    } else if (pe->dead) {
        req_complete(t, r, SR_ECOMM, pe->err);
    } else {
        int was_empty = pe->sq_head == NULL;
        if (pe->sq_tail) pe->sq_tail->next = r;
        else pe->sq_head = r;
        pe->sq_tail = r;
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
        req_complete(t, r, SR_ECOMM, pe->err);
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
