/* transport "mpi": Open MPI point-to-point and collectives on a private
 * duplicate of the job's communicator, CPU memory. MPI counts are int, so a
 * message is cut into pieces of at most 1 GiB, sent with the same tag (MPI
 * keeps their order). Errors come back as codes (MPI_ERRORS_RETURN). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/status.h"
#include "transport/transport.h"

#define PIECE ((int64_t)1 << 30)

/* For MPI calls whose failure needs more context than SR_MPI_CHECK gives. */
static int mpi_fail(int mpi_rc, const char *what, const char *file, int line) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(mpi_rc, msg, &n) != MPI_SUCCESS) n = 0;
    msg[n] = '\0';
    return sr_error_set(SR_ECOMM, "%s:%d: %s failed: %s", file, line, what, n ? msg : "unknown MPI error");
}

typedef struct {
    MPI_Comm comm;
} mpi_tp;

typedef struct {
    sr_tp_req base;
    int n; /* pieces */
    MPI_Request *reqs;
    MPI_Status *st;
    MPI_Request one_req; /* storage when n == 1 */
    MPI_Status one_st;
    int done, status;
    char msg[256]; /* the failure's message, re-raised on the waiting thread */
} mpi_req;

static int pieces(int64_t len) { return len <= PIECE ? 1 : (int)((len + PIECE - 1) / PIECE); }

int sr_tp_mpi_init(int *argc, char ***argv) {
    int inited = 0, finalized = 0;
    SR_MPI_CHECK(MPI_Initialized(&inited));
    SR_MPI_CHECK(MPI_Finalized(&finalized));
    if (finalized) return sr_error_set(SR_ESTATE, "MPI was already finalized in this process");
    if (!inited) {
        int provided = 0;
        SR_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
        if (provided < MPI_THREAD_FUNNELED)
            return sr_error_set(SR_ECOMM, "MPI provides thread level %d, need MPI_THREAD_FUNNELED", provided);
    }
    return SR_OK;
}

static int mpi_available(void) {
    int inited = 0, finalized = 0;
    if (MPI_Initialized(&inited) != MPI_SUCCESS || MPI_Finalized(&finalized) != MPI_SUCCESS) return 0;
    return inited && !finalized;
}

static int mpi_open(sr_tp *tp, const sr_tp_opts *opts) {
    if (!mpi_available())
        return sr_error_set(SR_ESTATE, "transport mpi: MPI is not initialised (call sr_tp_mpi_init first)");
    MPI_Comm parent = opts->mpi_comm ? *(const MPI_Comm *)opts->mpi_comm : MPI_COMM_WORLD;
    mpi_tp *m = calloc(1, sizeof *m);
    if (!m) return sr_error_set(SR_ENOMEM, "out of memory opening transport mpi");
    int rc = MPI_Comm_dup(parent, &m->comm);
    if (rc != MPI_SUCCESS) {
        free(m);
        return mpi_fail(rc, "MPI_Comm_dup", __FILE__, __LINE__);
    }
    if ((rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(m->comm, &tp->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(m->comm, &tp->size)) != MPI_SUCCESS) {
        MPI_Comm_free(&m->comm);
        free(m);
        return mpi_fail(rc, "setting up the MPI communicator", __FILE__, __LINE__);
    }
    tp->impl = m;
    return SR_OK;
}

static void mpi_close(sr_tp *tp) {
    mpi_tp *m = tp->impl;
    if (mpi_available()) MPI_Comm_free(&m->comm);
    free(m);
}

static int post(sr_tp *tp, sr_tp_req *base, void *buf, int64_t len, int peer, int tag, int send) {
    mpi_tp *m = tp->impl;
    mpi_req *r = (mpi_req *)base;
    r->n = pieces(len);
    if (r->n == 1) {
        r->reqs = &r->one_req;
        r->st = &r->one_st;
    } else {
        r->reqs = calloc((size_t)r->n, sizeof *r->reqs);
        r->st = calloc((size_t)r->n, sizeof *r->st);
        if (!r->reqs || !r->st) {
            free(r->reqs);
            free(r->st);
            return sr_error_set(SR_ENOMEM, "out of memory for %d MPI requests", r->n);
        }
    }
    for (int i = 0; i < r->n; i++) r->reqs[i] = MPI_REQUEST_NULL;
    for (int i = 0; i < r->n; i++) {
        int64_t off = (int64_t)i * PIECE;
        int64_t n = len - off < PIECE ? len - off : PIECE;
        char *p = buf ? (char *)buf + off : NULL;
        int rc = send ? MPI_Isend(p, (int)n, MPI_BYTE, peer, tag, m->comm, &r->reqs[i])
                      : MPI_Irecv(p, (int)n, MPI_BYTE, peer, tag, m->comm, &r->reqs[i]);
        if (rc != MPI_SUCCESS) {
            /* pieces already posted cannot be withdrawn safely; let them finish */
            MPI_Waitall(i, r->reqs, MPI_STATUSES_IGNORE);
            if (r->n > 1) {
                free(r->reqs);
                free(r->st);
            }
            return mpi_fail(rc, send ? "MPI_Isend" : "MPI_Irecv", __FILE__, __LINE__);
        }
    }
    return SR_OK;
}

static int mpi_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, (void *)buf, len, peer, tag, 1);
}

static int mpi_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, buf, len, peer, tag, 0);
}

/* Checks the byte counts of completed receive pieces against what was posted:
 * MPI reports a longer message as truncation, a shorter one only by count. */
static int finish_status(mpi_req *r, int mpi_rc) {
    if (mpi_rc != MPI_SUCCESS) {
        int err = mpi_rc;
        if (mpi_rc == MPI_ERR_IN_STATUS)
            for (int i = 0; i < r->n; i++)
                if (r->st[i].MPI_ERROR != MPI_SUCCESS) err = r->st[i].MPI_ERROR;
        if (err == MPI_ERR_TRUNCATE)
            return sr_error_set(SR_EFORMAT, "message from rank %d tag %d is longer than the %lld bytes expected",
                                r->base.peer, r->base.tag, (long long)r->base.len);
        return mpi_fail(err, r->base.is_send ? "MPI send" : "MPI receive", __FILE__, __LINE__);
    }
    if (!r->base.is_send) {
        int64_t got = 0;
        for (int i = 0; i < r->n; i++) {
            int c = 0;
            MPI_Get_count(&r->st[i], MPI_BYTE, &c);
            got += c;
        }
        if (got != r->base.len)
            return sr_error_set(SR_EFORMAT, "message from rank %d tag %d has %lld bytes, expected %lld",
                                r->base.peer, r->base.tag, (long long)got, (long long)r->base.len);
    }
    return SR_OK;
}

static void finish(mpi_req *r, int mpi_rc) {
    r->done = 1;
    r->status = finish_status(r, mpi_rc);
    if (r->status != SR_OK) snprintf(r->msg, sizeof r->msg, "%s", sr_error_msg());
}

static int mpi_test(sr_tp_req *req, int *done) {
    mpi_req *r = (mpi_req *)req;
    if (!r->done) {
        int flag = 0;
        int rc = MPI_Testall(r->n, r->reqs, &flag, r->st);
        if (flag || rc != MPI_SUCCESS) finish(r, rc);
    }
    *done = r->done;
    return SR_OK;
}

static int mpi_wait(sr_tp_req *req) {
    mpi_req *r = (mpi_req *)req;
    if (!r->done) finish(r, MPI_Waitall(r->n, r->reqs, r->st));
    if (r->n > 1) {
        free(r->reqs);
        free(r->st);
    }
    if (r->status != SR_OK) return sr_error_set(r->status, "%s", r->msg);
    return SR_OK;
}

static int mpi_barrier(sr_tp *tp) {
    SR_MPI_CHECK(MPI_Barrier(((mpi_tp *)tp->impl)->comm));
    return SR_OK;
}

static int mpi_bcast(sr_tp *tp, void *buf, int64_t len, int root) {
    MPI_Comm c = ((mpi_tp *)tp->impl)->comm;
    for (int64_t off = 0; off < len; off += PIECE) {
        int64_t n = len - off < PIECE ? len - off : PIECE;
        SR_MPI_CHECK(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, c));
    }
    return SR_OK;
}

/* Gathers beyond int counts go piecewise over point-to-point messages. */
static int mpi_gather(sr_tp *tp, const void *send, int64_t len, void *recv, int root) {
    MPI_Comm c = ((mpi_tp *)tp->impl)->comm;
    if (len <= PIECE) {
        SR_MPI_CHECK(MPI_Gather(send, (int)len, MPI_BYTE, recv, (int)len, MPI_BYTE, root, c));
        return SR_OK;
    }
    int tag = SR_TP_TAG_MAX + 3;
    if (tp->rank != root) {
        for (int64_t off = 0; off < len; off += PIECE) {
            int64_t n = len - off < PIECE ? len - off : PIECE;
            SR_MPI_CHECK(MPI_Send((const char *)send + off, (int)n, MPI_BYTE, root, tag, c));
        }
        return SR_OK;
    }
    for (int p = 0; p < tp->size; p++) {
        char *dst = (char *)recv + (int64_t)p * len;
        for (int64_t off = 0; off < len; off += PIECE) {
            int64_t n = len - off < PIECE ? len - off : PIECE;
            if (p == root)
                memcpy(dst + off, (const char *)send + off, (size_t)n);
            else
                SR_MPI_CHECK(MPI_Recv(dst + off, (int)n, MPI_BYTE, p, tag, c, MPI_STATUS_IGNORE));
        }
    }
    return SR_OK;
}

const sr_tp_backend sr_tp_mpi_backend = {
    .name = "mpi",
    .req_size = sizeof(mpi_req),
    .available = mpi_available,
    .open = mpi_open,
    .close = mpi_close,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .test = mpi_test,
    .wait = mpi_wait,
    .barrier = mpi_barrier,
    .bcast = mpi_bcast,
    .gather = mpi_gather,
};
