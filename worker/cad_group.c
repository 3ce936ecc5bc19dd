/* cad_group: a backend that forwards to the parent's (see cad_group.h). */
#include "worker/cad_group.h"

#include <stdlib.h>

#include "base/status.h"

typedef struct {
    sr_tp *parent;
    int first;
} group;

typedef struct {
    sr_tp_req base;
    sr_tp_req *inner; /* the parent backend's request */
} group_req;

static int group_available(void) { return 1; }

static int group_open(sr_tp *tp, const sr_tp_opts *opts) {
    return sr_error_set(SR_EUNSUPPORTED, "a cad group opens with sr_cad_group_open, not by name");
}

static void group_close(sr_tp *tp) { free(tp->impl); }

static int post(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag, int send) {
    group *g = tp->impl;
    sr_tp *p = g->parent;
    sr_tp_req *in = calloc(1, p->be->req_size);
    if (!in) return sr_error_set(SR_ENOMEM, "out of memory for a transport request");
    *in = (sr_tp_req){p, len, g->first + peer, tag, send, NULL};
    int rc = send ? p->be->isend(p, in, buf, len, g->first + peer, tag) : p->be->irecv(p, in, buf, len, g->first + peer, tag);
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

static int group_wait(sr_tp_req *req) {
    sr_tp_req *in = ((group_req *)req)->inner;
    int rc = in->tp->be->wait(in);
    free(in);
    return rc;
}

static const sr_tp_backend group_backend = {
    .name = "cad group",
    .req_size = sizeof(group_req),
    .available = group_available,
    .open = group_open,
    .close = group_close,
    .isend = group_isend,
    .irecv = group_irecv,
    .test = group_test,
    .wait = group_wait,
};

int sr_cad_group_open(sr_tp **out, sr_tp *parent, int first, int count) {
    if (!out || !parent) return sr_error_set(SR_EINVAL, "sr_cad_group_open: NULL argument");
    *out = NULL;
    int size = sr_tp_size(parent), r = sr_tp_rank(parent);
    if (first < 0 || count < 1 || count > size - first)
        return sr_error_set(SR_EINVAL, "cad group: ranks [%d, +%d) are not inside the %d ranks of the job", first,
                            count, size);
    if (r < first || r >= first + count) return SR_OK;
    sr_tp *tp = calloc(1, sizeof *tp);
    group *g = calloc(1, sizeof *g);
    if (!tp || !g) {
        free(tp);
        free(g);
        return sr_error_set(SR_ENOMEM, "out of memory for a cad group");
    }
    *g = (group){parent, first};
    *tp = (sr_tp){.be = &group_backend, .rank = r - first, .size = count,
                  .device_memory = sr_tp_device_memory(parent), .impl = g};
    *out = tp;
    return SR_OK;
}
