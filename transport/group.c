/* group: a backend that forwards to the parent's (see group.h). */
#include "transport/group.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

typedef struct {
    sr_tp *parent;
    int *ranks; /* (size) the parent's rank of each group rank */
} group;

typedef struct {
    sr_tp_req base;
    sr_tp_req *inner; /* the parent backend's request */
} group_req;

static int group_available(void) { return 1; }

static int group_open(sr_tp *tp, const sr_tp_opts *opts) {
    return sr_error_set(SR_EUNSUPPORTED, "a transport group opens with sr_tp_group_open, not by name");
}

static void group_close(sr_tp *tp) {
    group *g = tp->impl;
    free(g->ranks);
    free(g);
}

static int post(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag, int send) {
    group *g = tp->impl;
    sr_tp *p = g->parent;
    int to = g->ranks[peer];
    sr_tp_req *in = calloc(1, p->be->req_size);
    if (!in) return sr_error_set(SR_ENOMEM, "out of memory for a transport request");
    *in = (sr_tp_req){p, len, to, tag, send, NULL};
    int rc = send ? p->be->isend(p, in, buf, len, to, tag) : p->be->irecv(p, in, buf, len, to, tag);
    if (rc != SR_OK) {
        free(in);
        return rc;
    }
    ((group_req *)req)->inner = in;
    return SR_OK;
}

static int group_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, (void *)buf, len, peer, tag, 1);
}

static int group_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, buf, len, peer, tag, 0);
}

static int group_test(sr_tp_req *req, int *done) {
    sr_tp_req *in = ((group_req *)req)->inner;
    return in->tp->be->test(in, done);
}

/* The parent's backend does not count (its front end does, in sr_tp_wait,
 * which the group bypasses): the group counts for it here, and its own
 * front end counts for the group. */
static int group_wait(sr_tp_req *req) {
    sr_tp_req *in = ((group_req *)req)->inner;
    sr_tp *p = in->tp;
    int rc = p->be->wait(in);
    if (rc == SR_OK && in->peer != p->rank)
        __atomic_fetch_add(in->is_send ? &p->sent_bytes : &p->received_bytes, in->len, __ATOMIC_RELAXED);
    free(in);
    return rc;
}

static const sr_tp_backend group_backend = {
    .name = "group",
    .req_size = sizeof(group_req),
    .available = group_available,
    .open = group_open,
    .close = group_close,
    .isend = group_isend,
    .irecv = group_irecv,
    .test = group_test,
    .wait = group_wait,
};

int sr_tp_group_open(sr_tp **out, sr_tp *parent, const int *ranks, int n) {
    if (!out || !parent || !ranks) return sr_error_set(SR_EINVAL, "sr_tp_group_open: NULL argument");
    *out = NULL;
    int size = sr_tp_size(parent), me = -1;
    if (n < 1 || n > size)
        return sr_error_set(SR_EINVAL, "transport group: %d ranks, out of range 1..%d (the parent's size)", n, size);
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= size)
            return sr_error_set(SR_EINVAL, "transport group: rank %d (entry %d) is out of range 0..%d", ranks[i], i,
                                size - 1);
        for (int j = 0; j < i; j++)
            if (ranks[j] == ranks[i])
                return sr_error_set(SR_EINVAL, "transport group: rank %d is listed twice (entries %d and %d)",
                                    ranks[i], j, i);
        if (ranks[i] == sr_tp_rank(parent)) me = i;
    }
    if (me < 0) return SR_OK;
    sr_tp *tp = calloc(1, sizeof *tp);
    group *g = calloc(1, sizeof *g);
    int *copy = malloc(sizeof *copy * (size_t)n);
    if (!tp || !g || !copy) {
        free(tp);
        free(g);
        free(copy);
        return sr_error_set(SR_ENOMEM, "out of memory for a transport group");
    }
    memcpy(copy, ranks, sizeof *copy * (size_t)n);
    *g = (group){parent, copy};
    *tp = (sr_tp){.be = &group_backend, .rank = me, .size = n, .device_memory = sr_tp_device_memory(parent), .impl = g};
    *out = tp;
    return SR_OK;
}

int sr_tp_group_range(sr_tp **out, sr_tp *parent, int first, int count) {
    if (!out || !parent) return sr_error_set(SR_EINVAL, "sr_tp_group_range: NULL argument");
    *out = NULL;
    int size = sr_tp_size(parent);
    if (first < 0 || count < 1 || count > size - first)
        return sr_error_set(SR_EINVAL, "transport group: ranks [%d, +%d) are not inside the %d ranks of the parent",
                            first, count, size);
    int *ranks = malloc(sizeof *ranks * (size_t)count);
    if (!ranks) return sr_error_set(SR_ENOMEM, "out of memory for a transport group");
    for (int i = 0; i < count; i++) ranks[i] = first + i;
    int rc = sr_tp_group_open(out, parent, ranks, count);
    free(ranks);
    return rc;
}
