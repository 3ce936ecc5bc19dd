/* Per-peer bookkeeping of the tcp and ucx transports (see peers.h). */
#include "transport/peers.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"

/* what a message counts against its peer's cap: the copy and its record,
 * so that a flood of empty messages is bounded too */
static int64_t cost(int64_t copied) { return copied + (int64_t)sizeof(sr_tp__umsg); }

static int64_t umsg_cost(const sr_tp__umsg *m) { return cost(m->desc ? 0 : m->len); }

int sr_tp__peers_init(sr_tp__peers *ps, const sr_tp__peers_backend *be, void *owner, int rank, int size,
                      int64_t max_buffered, double io_timeout_s) {
    *ps = (sr_tp__peers){.rank = rank, .size = size, .max_buffered = max_buffered, .io_timeout_s = io_timeout_s,
                         .be = be, .owner = owner};
    pthread_mutex_init(&ps->mu, NULL);
    pthread_cond_init(&ps->cv, NULL);
    ps->peer = calloc((size_t)size, sizeof *ps->peer);
    if (!ps->peer) return sr_error_set(SR_ENOMEM, "out of memory for %d transport peers", size);
    return SR_OK;
}

void sr_tp__peers_free(sr_tp__peers *ps) {
    for (int p = 0; ps->peer && p < ps->size; p++) {
        for (sr_tp__umsg *m = ps->peer[p].unexp_head, *n; m; m = n) {
            n = m->next;
            free(m->data);
            free(m);
        }
    }
    pthread_mutex_destroy(&ps->mu);
    pthread_cond_destroy(&ps->cv);
    free(ps->peer);
    ps->peer = NULL;
}

void sr_tp__complete(sr_tp__peers *ps, sr_tp__req *r, int status, const char *msg) {
    r->done = 1;
    r->status = status;
    if (status != SR_OK) snprintf(r->msg, sizeof r->msg, "%s", msg);
    pthread_cond_broadcast(&ps->cv);
}

void sr_tp__size_mismatch(sr_tp__peers *ps, sr_tp__req *r, int64_t got) {
    char msg[200];
    snprintf(msg, sizeof msg, "message from rank %d tag %d has %lld bytes, expected %lld", r->base.peer,
             r->base.tag, (long long)got, (long long)r->base.len);
    sr_tp__complete(ps, r, SR_EFORMAT, msg);
}

int sr_tp__result(const sr_tp__req *r) {
    if (r->status != SR_OK) return sr_error_set(r->status, "%s", r->msg);
    return SR_OK;
}

void sr_tp__peer_fail(sr_tp__peers *ps, int p, int code, const char *fmt, ...) {
    sr_tp__peer *pe = &ps->peer[p];
    if (pe->dead) return;
    pe->dead = 1;
    pe->err_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->err, sizeof pe->err, fmt, ap);
    va_end(ap);
    for (sr_tp__req *r = pe->posted_head, *n; r; r = n) {
        n = r->next;
        sr_tp__complete(ps, r, code, pe->err);
    }
    pe->posted_head = pe->posted_tail = NULL;
    ps->be->on_fail(ps->owner, p);
    pthread_cond_broadcast(&ps->cv);
}

int sr_tp__silent(sr_tp__peers *ps, int p, double now) {
    double quiet = now - ps->peer[p].last_rx;
    if (quiet < ps->io_timeout_s) return 0;
    sr_tp__peer_fail(ps, p, SR_ECOMM,
                     "rank %d has sent nothing for %.1f s, not even a heartbeat: it is stopped, hung or cut off "
                     "(%s is %g s)",
                     p, quiet, ps->be->io_timeout_opt, ps->io_timeout_s);
    return 1;
}

sr_tp__req *sr_tp__posted_take(sr_tp__peer *pe, int tag) {
    sr_tp__req *prev = NULL;
    for (sr_tp__req *r = pe->posted_head; r; prev = r, r = r->next) {
        if (r->base.tag != tag) continue;
        if (prev) prev->next = r->next;
        else pe->posted_head = r->next;
        if (pe->posted_tail == r) pe->posted_tail = prev;
        r->next = NULL;
        return r;
    }
    return NULL;
}

sr_tp__umsg *sr_tp__recv_match(sr_tp__peers *ps, int p, int tag, sr_tp__req *r) {
    sr_tp__peer *pe = &ps->peer[p];
    sr_tp__umsg *m = pe->unexp_head;
    while (m && (m->tag != tag || m->waiter || m->discard)) m = m->next;
    if (m) return m;
    if (pe->dead) {
        sr_tp__complete(ps, r, pe->err_code, pe->err);
        return NULL;
    }
    r->next = NULL;
    if (pe->posted_tail) pe->posted_tail->next = r;
    else pe->posted_head = r;
    pe->posted_tail = r;
    return NULL;
}

sr_tp__umsg *sr_tp__umsg_new(int tag, int64_t len, int with_data) {
    sr_tp__umsg *m = calloc(1, sizeof *m);
    char *data = with_data && len ? malloc((size_t)len) : NULL;
    if (!m || (with_data && len && !data)) {
        free(m);
        free(data);
        return NULL;
    }
    m->tag = tag;
    m->len = len;
    m->data = data;
    return m;
}

int sr_tp__unexp_admit(sr_tp__peers *ps, int p, int64_t len, int tag) {
    sr_tp__peer *pe = &ps->peer[p];
    if (cost(len) <= ps->max_buffered - pe->buffered) return 1;
    sr_tp__peer_fail(ps, p, SR_ERANGE,
                     "rank %d sent a %lld-byte message (tag %d) before its receive was posted while %lld bytes of such "
                     "messages were held: over the cap of %lld (%s)",
                     p, (long long)len, tag, (long long)pe->buffered, (long long)ps->max_buffered,
                     ps->be->max_buffered_opt);
    return 0;
}

void sr_tp__unexp_append(sr_tp__peer *pe, sr_tp__umsg *m) {
    if (pe->unexp_tail) pe->unexp_tail->next = m;
    else pe->unexp_head = m;
    pe->unexp_tail = m;
    pe->buffered += umsg_cost(m);
}

void sr_tp__unexp_remove(sr_tp__peer *pe, sr_tp__umsg *m) {
    sr_tp__umsg *prev = NULL;
    for (sr_tp__umsg *x = pe->unexp_head; x; prev = x, x = x->next) {
        if (x != m) continue;
        if (prev) prev->next = x->next;
        else pe->unexp_head = x->next;
        if (pe->unexp_tail == x) pe->unexp_tail = prev;
        break;
    }
    pe->buffered -= umsg_cost(m);
    free(m->data);
    free(m);
}

int sr_tp__send_self(sr_tp__peers *ps, sr_tp__req *r, const void *buf, int64_t len, int tag) {
    sr_tp__peer *pe = &ps->peer[ps->rank];
    sr_tp__req *m = sr_tp__posted_take(pe, tag);
    if (m && m->base.len != len) {
        sr_tp__size_mismatch(ps, m, len);
    } else if (m) {
        if (len) memcpy(m->buf, buf, (size_t)len);
        sr_tp__complete(ps, m, SR_OK, NULL);
    } else {
        sr_tp__umsg *u = sr_tp__umsg_new(tag, len, 1);
        if (!u) return sr_error_set(SR_ENOMEM, "out of memory for a %lld-byte message to self", (long long)len);
        if (len) memcpy(u->data, buf, (size_t)len);
        u->got = len;
        sr_tp__unexp_append(pe, u);
    }
    sr_tp__complete(ps, r, SR_OK, NULL);
    return SR_OK;
}
