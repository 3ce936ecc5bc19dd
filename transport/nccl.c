/* transport "nccl": GPU memory between GPUs, NCCL point-to-point on one CUDA
 * stream, bootstrapped by broadcasting the ncclUniqueId over MPI.
 *
 * NCCL has no tags and a send blocks until its receive is posted, so a rank
 * that sends to one peer and receives from another (a ring) must issue both
 * in one group. Requests are therefore queued and issued together, as one
 * ncclGroupStart/End, at the next test or wait; each request then waits on a
 * CUDA event recorded after the group. Between two ranks messages are
 * received in the order they were sent, whatever their tags. */
#include "base/check.h"
#include "base/status.h"
#include "transport/transport.h"

#if SR_HAVE_CUDA

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdlib.h>

typedef struct nccl_req {
    sr_tp_req base;
    struct nccl_req *next; /* queued, not yet issued */
    void *buf;
    cudaEvent_t ev;
    int issued, done, status;
} nccl_req;

typedef struct {
    MPI_Comm comm; /* bootstrap and barrier */
    ncclComm_t nccl;
    cudaStream_t stream;
    int device;
    nccl_req *q_head, *q_tail;
} nccl_tp;

static int nccl_available(void) {
    int n = 0, inited = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) return 0;
    return MPI_Initialized(&inited) == MPI_SUCCESS && inited;
}

static void nccl_close(sr_tp *tp);
static int open_impl(sr_tp *tp, const sr_tp_opts *o);

static int nccl_open(sr_tp *tp, const sr_tp_opts *o) {
    int rc = open_impl(tp, o);
    if (rc != SR_OK && tp->impl) {
        nccl_close(tp);
        tp->impl = NULL;
    }
    return rc;
}

static int open_impl(sr_tp *tp, const sr_tp_opts *o) {
    int inited = 0;
    SR_MPI_CHECK(MPI_Initialized(&inited));
    if (!inited) return sr_error_set(SR_ESTATE, "transport nccl: MPI is not initialised (call sr_tp_mpi_init first)");
    nccl_tp *t = calloc(1, sizeof *t);
    if (!t) return sr_error_set(SR_ENOMEM, "out of memory opening transport nccl");
    t->comm = MPI_COMM_NULL;
    tp->impl = t;
    tp->device_memory = 1;
    MPI_Comm parent = o->mpi_comm ? *(const MPI_Comm *)o->mpi_comm : MPI_COMM_WORLD;
    SR_MPI_CHECK(MPI_Comm_dup(parent, &t->comm));
    SR_MPI_CHECK(MPI_Comm_rank(t->comm, &tp->rank));
    SR_MPI_CHECK(MPI_Comm_size(t->comm, &tp->size));
    int ndev = 0;
    SR_CUDA_CHECK(cudaGetDeviceCount(&ndev));
    if (ndev <= 0) return sr_error_set(SR_EDEVICE, "transport nccl: no CUDA device visible");
    if (o->device >= 0) {
        t->device = o->device;
    } else { /* ranks on one host share its GPUs round-robin */
        MPI_Comm local;
        int lrank = 0;
        SR_MPI_CHECK(MPI_Comm_split_type(t->comm, MPI_COMM_TYPE_SHARED, tp->rank, MPI_INFO_NULL, &local));
        SR_MPI_CHECK(MPI_Comm_rank(local, &lrank));
        MPI_Comm_free(&local);
        t->device = lrank % ndev;
    }
    SR_CUDA_CHECK(cudaSetDevice(t->device));
    ncclUniqueId id;
    if (tp->rank == 0) SR_NCCL_CHECK(ncclGetUniqueId(&id));
    SR_MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, t->comm));
    SR_NCCL_CHECK(ncclCommInitRank(&t->nccl, tp->size, id, tp->rank));
    SR_CUDA_CHECK(cudaStreamCreateWithFlags(&t->stream, cudaStreamNonBlocking));
    return SR_OK;
}

static void nccl_close(sr_tp *tp) {
    nccl_tp *t = tp->impl;
    if (!t) return;
    if (t->stream) cudaStreamSynchronize(t->stream);
    if (t->nccl) ncclCommDestroy(t->nccl);
    if (t->stream) cudaStreamDestroy(t->stream);
    int fin = 0;
    if (t->comm != MPI_COMM_NULL && MPI_Finalized(&fin) == MPI_SUCCESS && !fin) MPI_Comm_free(&t->comm);
    free(t);
}

static int enqueue(sr_tp *tp, sr_tp_req *req, void *buf) {
    nccl_tp *t = tp->impl;
    nccl_req *r = (nccl_req *)req;
    r->buf = buf;
    SR_CUDA_CHECK(cudaEventCreateWithFlags(&r->ev, cudaEventDisableTiming));
    if (t->q_tail) t->q_tail->next = r;
    else t->q_head = r;
    t->q_tail = r;
    return SR_OK;
}

static int nccl_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer, int tag) {
    return enqueue(tp, req, (void *)buf);
}

static int nccl_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag) {
    return enqueue(tp, req, buf);
}

/* Issues every queued request as one NCCL group. */
static int flush(nccl_tp *t) {
    if (!t->q_head) return SR_OK;
    SR_CUDA_CHECK(cudaSetDevice(t->device));
    SR_NCCL_CHECK(ncclGroupStart());
    for (nccl_req *r = t->q_head; r; r = r->next) {
        size_t n = (size_t)r->base.len;
        if (r->base.is_send)
            SR_NCCL_CHECK(ncclSend(r->buf, n, ncclInt8, r->base.peer, t->nccl, t->stream));
        else
            SR_NCCL_CHECK(ncclRecv(r->buf, n, ncclInt8, r->base.peer, t->nccl, t->stream));
    }
    SR_NCCL_CHECK(ncclGroupEnd());
    for (nccl_req *r = t->q_head, *n; r; r = n) {
        n = r->next;
        r->next = NULL;
        r->issued = 1;
        SR_CUDA_CHECK(cudaEventRecord(r->ev, t->stream));
    }
    t->q_head = t->q_tail = NULL;
    return SR_OK;
}

static int nccl_test(sr_tp_req *req, int *done) {
    nccl_req *r = (nccl_req *)req;
    int rc = flush(req->tp->impl);
    if (rc != SR_OK) return rc;
    cudaError_t e = cudaEventQuery(r->ev);
    if (e == cudaErrorNotReady) {
        *done = 0;
        return SR_OK;
    }
    *done = 1;
    SR_CUDA_CHECK(e);
    return SR_OK;
}

static int nccl_wait(sr_tp_req *req) {
    nccl_req *r = (nccl_req *)req;
    int rc = flush(req->tp->impl);
    if (rc == SR_OK && cudaEventSynchronize(r->ev) != cudaSuccess)
        rc = sr_error_set(SR_EDEVICE, "NCCL transfer with rank %d failed: %s", req->peer,
                          cudaGetErrorString(cudaGetLastError()));
    cudaEventDestroy(r->ev);
    return rc;
}

static int nccl_barrier(sr_tp *tp) {
    nccl_tp *t = tp->impl;
    int rc = flush(t);
    if (rc != SR_OK) return rc;
    SR_CUDA_CHECK(cudaStreamSynchronize(t->stream));
    SR_MPI_CHECK(MPI_Barrier(t->comm));
    return SR_OK;
}

static int nccl_bcast(sr_tp *tp, void *buf, int64_t len, int root) {
    nccl_tp *t = tp->impl;
    int rc = flush(t);
    if (rc != SR_OK) return rc;
    SR_NCCL_CHECK(ncclBroadcast(buf, buf, (size_t)len, ncclInt8, root, t->nccl, t->stream));
    SR_CUDA_CHECK(cudaStreamSynchronize(t->stream));
    return SR_OK;
}

static int nccl_gather(sr_tp *tp, const void *send, int64_t len, void *recv, int root) {
    nccl_tp *t = tp->impl;
    int rc = flush(t);
    if (rc != SR_OK) return rc;
    SR_NCCL_CHECK(ncclGroupStart());
    if (tp->rank == root) {
        for (int p = 0; p < tp->size; p++) {
            char *dst = (char *)recv + (int64_t)p * len;
            if (p == root)
                SR_CUDA_CHECK(cudaMemcpyAsync(dst, send, (size_t)len, cudaMemcpyDeviceToDevice, t->stream));
            else
                SR_NCCL_CHECK(ncclRecv(dst, (size_t)len, ncclInt8, p, t->nccl, t->stream));
        }
    } else {
        SR_NCCL_CHECK(ncclSend(send, (size_t)len, ncclInt8, root, t->nccl, t->stream));
    }
    SR_NCCL_CHECK(ncclGroupEnd());
    SR_CUDA_CHECK(cudaStreamSynchronize(t->stream));
    return SR_OK;
}

const sr_tp_backend sr_tp_nccl_backend = {
    .name = "nccl",
    .req_size = sizeof(nccl_req),
    .available = nccl_available,
    .open = nccl_open,
    .close = nccl_close,
    .isend = nccl_isend,
    .irecv = nccl_irecv,
    .test = nccl_test,
    .wait = nccl_wait,
    .barrier = nccl_barrier,
    .bcast = nccl_bcast,
    .gather = nccl_gather,
};

#else /* !SR_HAVE_CUDA */

static int nccl_available(void) { return 0; }

static int nccl_open(sr_tp *tp, const sr_tp_opts *o) {
    return sr_error_set(SR_EUNSUPPORTED, "transport nccl: built without CUDA; rebuild with make CUDA=1");
}

const sr_tp_backend sr_tp_nccl_backend = {
    .name = "nccl",
    .req_size = sizeof(sr_tp_req),
    .available = nccl_available,
    .open = nccl_open,
};

#endif
