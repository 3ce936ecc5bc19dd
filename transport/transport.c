/* transport: backend selection, argument checks, and collectives built from
 * point-to-point messages for backends without native ones. */
#include "transport/transport.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

/* tags of the point-to-point collectives, above the user range */
enum { TAG_BARRIER = SR_TP_TAG_MAX + 1, TAG_BCAST, TAG_GATHER };

static const sr_tp_backend *const backends[] = {&sr_tp_mpi_backend, &sr_tp_ucx_backend, &sr_tp_tcp_backend,
                                                &sr_tp_nccl_backend};

static const sr_tp_backend *find_backend(const char *name) {
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strcmp(backends[i]->name, name) == 0) return backends[i];
    return NULL;
}

sr_tp_opts sr_tp_opts_default(void) {
    sr_tp_opts o;
    memset(&o, 0, sizeof o);
    o.rank = -1;
    o.size = -1;
    o.device = -1;
    return o;
}

int sr_tp_available(const char *backend) {
    const sr_tp_backend *be = backend ? find_backend(backend) : NULL;
    return be ? be->available() : 0;
}

int sr_tp_open(sr_tp **out, const char *backend, const sr_tp_opts *opts) {
    if (!out) return sr_error_set(SR_EINVAL, "sr_tp_open: out is NULL");
    *out = NULL;
    const sr_tp_backend *be = backend ? find_backend(backend) : NULL;
    if (!be)
        return sr_error_set(SR_EINVAL, "unknown transport '%s' (choose mpi, ucx, tcp or nccl)",
                            backend ? backend : "(null)");
    sr_tp_opts def = sr_tp_opts_default();
    sr_tp *tp = calloc(1, sizeof *tp);
    if (!tp) return sr_error_set(SR_ENOMEM, "out of memory opening transport %s", backend);
    tp->be = be;
    int rc = be->open(tp, opts ? opts : &def);
    if (rc != SR_OK) {
        free(tp);
        return rc;
    }
    *out = tp;
    return SR_OK;
}

void sr_tp_close(sr_tp *tp) {
    if (!tp) return;
    tp->be->close(tp);
    free(tp);
}

int sr_tp_rank(const sr_tp *tp) { return tp->rank; }
int sr_tp_size(const sr_tp *tp) { return tp->size; }
const char *sr_tp_name(const sr_tp *tp) { return tp->be->name; }
int sr_tp_device_memory(const sr_tp *tp) { return tp->device_memory; }

static int check_p2p(sr_tp *tp, const void *buf, int64_t len, int peer, int tag, sr_tp_req **req,
                     int internal) {
    if (!tp || !req) return sr_error_set(SR_EINVAL, "transport or request pointer is NULL");
    *req = NULL;
    if (len < 0) return sr_error_set(SR_EINVAL, "negative message length %lld", (long long)len);
    if (len > 0 && !buf) return sr_error_set(SR_EINVAL, "NULL buffer for %lld bytes", (long long)len);
    if (peer < 0 || peer >= tp->size)
        return sr_error_set(SR_EINVAL, "peer rank %d out of range 0..%d", peer, tp->size - 1);
    if (tag < 0 || (!internal && tag > SR_TP_TAG_MAX))
        return sr_error_set(SR_EINVAL, "tag %d out of range 0..%d", tag, SR_TP_TAG_MAX);
    return SR_OK;
}

/* Checks and posts one send (src) or receive (dst); internal allows the
 * collectives' own tags. */
static int post(sr_tp *tp, int is_send, const void *src, void *dst, int64_t len, int peer, int tag,
                sr_tp_req **req, int internal) {
    int rc = check_p2p(tp, is_send ? src : dst, len, peer, tag, req, internal);
    if (rc != SR_OK) return rc;
    sr_tp_req *r = calloc(1, tp->be->req_size);
    if (!r) return sr_error_set(SR_ENOMEM, "out of memory for a transport request");
    *r = (sr_tp_req){.tp = tp, .len = len, .peer = peer, .tag = tag, .is_send = is_send};
    rc = is_send ? tp->be->isend(tp, r, src, len, peer, tag) : tp->be->irecv(tp, r, dst, len, peer, tag);
    if (rc != SR_OK) {
        free(r);
        return rc;
    }
    *req = r;
    return SR_OK;
}

int sr_tp_isend(sr_tp *tp, const void *buf, int64_t len, int peer, int tag, sr_tp_req **req) {
    return post(tp, 1, buf, NULL, len, peer, tag, req, 0);
}

int sr_tp_irecv(sr_tp *tp, void *buf, int64_t len, int peer, int tag, sr_tp_req **req) {
    return post(tp, 0, NULL, buf, len, peer, tag, req, 0);
}

int sr_tp_test(sr_tp_req *req, int *done) {
    if (!req || !done) return sr_error_set(SR_EINVAL, "sr_tp_test: NULL argument");
    return req->tp->be->test(req, done);
}

static void count(sr_tp *tp, int64_t sent, int64_t received) {
    __atomic_fetch_add(&tp->sent_bytes, sent, __ATOMIC_RELAXED);
    __atomic_fetch_add(&tp->received_bytes, received, __ATOMIC_RELAXED);
}

void sr_tp_bytes(const sr_tp *tp, int64_t *sent, int64_t *received) {
    *sent = __atomic_load_n(&tp->sent_bytes, __ATOMIC_RELAXED);
    *received = __atomic_load_n(&tp->received_bytes, __ATOMIC_RELAXED);
}

int sr_tp_wait(sr_tp_req *req) {
    if (!req) return SR_OK;
    sr_tp *tp = req->tp;
    int rc = tp->be->wait(req);
    if (rc == SR_OK && req->peer != tp->rank) count(tp, req->is_send ? req->len : 0, req->is_send ? 0 : req->len);
    free(req);
    return rc;
}

int sr_tp_waitall(int n, sr_tp_req **reqs) {
    int first = SR_OK;
    for (int i = 0; i < n; i++) {
        int rc = sr_tp_wait(reqs[i]);
        reqs[i] = NULL;
        if (rc != SR_OK && first == SR_OK) first = rc;
    }
    return first;
}

/* Point-to-point collectives are rooted fan-in/fan-out: O(size) messages at
 * the root, which is what the job sizes here (a handful of workers) need.
 * to_root (gather): every rank's len bytes of send go to the root, into
 * recv at rank * len; else (bcast) the root's send goes into every other
 * rank's recv. */
static int p2p_rooted(sr_tp *tp, int to_root, const void *send, void *recv, int64_t len, int root, int tag) {
    int rc;
    if (tp->rank != root) {
        sr_tp_req *r;
        if ((rc = post(tp, to_root, send, recv, len, root, tag, &r, 1)) != SR_OK) return rc;
        return sr_tp_wait(r);
    }
    sr_tp_req **reqs = calloc((size_t)tp->size, sizeof *reqs);
    if (!reqs) return sr_error_set(SR_ENOMEM, "out of memory in %s", to_root ? "gather" : "bcast");
    rc = SR_OK;
    for (int p = 0; p < tp->size && rc == SR_OK; p++) {
        char *dst = to_root && recv ? (char *)recv + (int64_t)p * len : NULL;
        if (p != root) rc = post(tp, !to_root, send, dst, len, p, tag, &reqs[p], 1);
        else if (to_root && len > 0) memcpy(dst, send, (size_t)len);
    }
    int rc2 = sr_tp_waitall(tp->size, reqs);
    free(reqs);
    return rc != SR_OK ? rc : rc2;
}

int sr_tp_barrier(sr_tp *tp) {
    if (!tp) return sr_error_set(SR_EINVAL, "sr_tp_barrier: transport is NULL");
    if (tp->be->barrier) return tp->be->barrier(tp);
    char dummy = 0;
    int rc = p2p_rooted(tp, 1, &dummy, NULL, 0, 0, TAG_BARRIER);
    if (rc != SR_OK) return rc;
    return p2p_rooted(tp, 0, &dummy, &dummy, 0, 0, TAG_BCAST);
}

int sr_tp_bcast(sr_tp *tp, void *buf, int64_t len, int root) {
    if (!tp) return sr_error_set(SR_EINVAL, "sr_tp_bcast: transport is NULL");
    if (len < 0 || (len > 0 && !buf))
        return sr_error_set(SR_EINVAL, "sr_tp_bcast: bad buffer (%lld bytes)", (long long)len);
    if (root < 0 || root >= tp->size)
        return sr_error_set(SR_EINVAL, "bcast root %d out of range 0..%d", root, tp->size - 1);
    if (!tp->be->bcast) return p2p_rooted(tp, 0, buf, buf, len, root, TAG_BCAST);
    int rc = tp->be->bcast(tp, buf, len, root);
    if (rc == SR_OK) count(tp, tp->rank == root ? len * (tp->size - 1) : 0, tp->rank == root ? 0 : len);
    return rc;
}

int sr_tp_gather(sr_tp *tp, const void *send, int64_t len, void *recv, int root) {
    if (!tp) return sr_error_set(SR_EINVAL, "sr_tp_gather: transport is NULL");
    if (root < 0 || root >= tp->size)
        return sr_error_set(SR_EINVAL, "gather root %d out of range 0..%d", root, tp->size - 1);
    if (len < 0 || (len > 0 && (!send || (tp->rank == root && !recv))))
        return sr_error_set(SR_EINVAL, "sr_tp_gather: bad buffer (%lld bytes)", (long long)len);
    if (!tp->be->gather) return p2p_rooted(tp, 1, send, recv, len, root, TAG_GATHER);
    int rc = tp->be->gather(tp, send, len, recv, root);
    if (rc == SR_OK) count(tp, tp->rank == root ? 0 : len, tp->rank == root ? len * (tp->size - 1) : 0);
    return rc;
}

int sr_tp_allgather(sr_tp *tp, const void *send, int64_t len, void *recv) {
    int rc = sr_tp_gather(tp, send, len, recv, 0);
    if (rc != SR_OK) return rc;
    return sr_tp_bcast(tp, recv, len * tp->size, 0);
}
