/* transport "mpi": Open MPI point-to-point and collectives on a private
 * duplicate of the job's communicator, CPU memory. Errors come back as codes
 * (MPI_ERRORS_RETURN).
 *
 * Every message is one MPI message, so that MPI matches its length against
 * the receive: a longer one fails with MPI_ERR_TRUNCATE and nothing is
 * written past the buffer; a shorter one is caught by its byte count. MPI counts
 * are int, so a message beyond INT_MAX bytes travels as one element of a
 * derived type (whole GiB blocks, then the rest) rather than as pieces,
 * which a receive of another length could pair with the wrong message. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/status.h"
#include "transport/transport.h"

#define BLOCK ((int64_t)1 << 30)

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
    MPI_Request req;
    MPI_Status st;
    MPI_Datatype type; /* MPI_BYTE, or the derived type of a long message */
    int done, status;
    char msg[256]; /* the failure's message, re-raised on the waiting thread */
} mpi_req;

/* len bytes as (count, type): MPI_BYTE up to INT_MAX, else one element of a
 * committed derived type the caller frees with type_release. */
static int byte_type(int64_t len, int *count, MPI_Datatype *type) {
    *type = MPI_BYTE;
    *count = (int)len;
    if (len <= INT_MAX) return SR_OK;
    MPI_Datatype block;
    int lens[2] = {(int)(len / BLOCK), (int)(len % BLOCK)};
    MPI_Aint disp[2] = {0, (MPI_Aint)(len / BLOCK * BLOCK)};
    int rc = MPI_Type_contiguous((int)BLOCK, MPI_BYTE, &block);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Type_contiguous", __FILE__, __LINE__);
    MPI_Datatype types[2] = {block, MPI_BYTE};
    rc = MPI_Type_create_struct(2, lens, disp, types, type);
    if (rc == MPI_SUCCESS && (rc = MPI_Type_commit(type)) != MPI_SUCCESS) MPI_Type_free(type);
    MPI_Type_free(&block);
    if (rc != MPI_SUCCESS) {
        *type = MPI_BYTE;
        return mpi_fail(rc, "building the type of a long message", __FILE__, __LINE__);
    }
    *count = 1;
    return SR_OK;
}

static void type_release(MPI_Datatype *type) {
    if (*type != MPI_BYTE) MPI_Type_free(type);
    *type = MPI_BYTE;
}

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
    int count;
    int rc = byte_type(len, &count, &r->type);
    if (rc != SR_OK) return rc;
    rc = send ? MPI_Isend(buf, count, r->type, peer, tag, m->comm, &r->req)
              : MPI_Irecv(buf, count, r->type, peer, tag, m->comm, &r->req);
    if (rc != MPI_SUCCESS) {
        type_release(&r->type);
        return mpi_fail(rc, send ? "MPI_Isend" : "MPI_Irecv", __FILE__, __LINE__);
    }
    return SR_OK;
}

static int mpi_isend(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, (void *)buf, len, peer, tag, 1);
}

static int mpi_irecv(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag) {
    return post(tp, req, buf, len, peer, tag, 0);
}

/* Checks a completed receive's byte count against what was posted. */
static int finish_status(mpi_req *r, int mpi_rc) {
    if (mpi_rc == MPI_ERR_TRUNCATE || (mpi_rc == MPI_ERR_IN_STATUS && r->st.MPI_ERROR == MPI_ERR_TRUNCATE))
        return sr_error_set(SR_EFORMAT, "message from rank %d tag %d is longer than the %lld bytes expected",
                            r->base.peer, r->base.tag, (long long)r->base.len);
    if (mpi_rc != MPI_SUCCESS)
        return mpi_fail(mpi_rc, r->base.is_send ? "MPI send" : "MPI receive", __FILE__, __LINE__);
    if (r->base.is_send) return SR_OK;
    /* counted in bytes: Open MPI says MPI_UNDEFINED for a short message on a
     * derived type, where the byte count is what we compare */
    MPI_Count got = 0;
    int rc = MPI_Get_elements_x(&r->st, MPI_BYTE, &got);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Get_elements_x", __FILE__, __LINE__);
    if (got != r->base.len)
        return sr_error_set(SR_EFORMAT, "message from rank %d tag %d has %lld bytes, expected %lld", r->base.peer,
                            r->base.tag, (long long)got, (long long)r->base.len);
    return SR_OK;
}

static void finish(mpi_req *r, int mpi_rc) {
    r->done = 1;
    r->status = finish_status(r, mpi_rc);
    if (r->status != SR_OK) snprintf(r->msg, sizeof r->msg, "%s", sr_error_msg());
    type_release(&r->type);
}

static int mpi_test(sr_tp_req *req, int *done) {
    mpi_req *r = (mpi_req *)req;
    if (!r->done) {
        int flag = 0;
        int rc = MPI_Test(&r->req, &flag, &r->st);
        if (flag || rc != MPI_SUCCESS) finish(r, rc);
    }
    *done = r->done;
    return SR_OK;
}

static int mpi_wait(sr_tp_req *req) {
    mpi_req *r = (mpi_req *)req;
    if (!r->done) finish(r, MPI_Wait(&r->req, &r->st));
    if (r->status != SR_OK) return sr_error_set(r->status, "%s", r->msg);
    return SR_OK;
}

static int mpi_barrier(sr_tp *tp) {
    SR_MPI_CHECK(MPI_Barrier(((mpi_tp *)tp->impl)->comm));
    return SR_OK;
}

static int mpi_bcast(sr_tp *tp, void *buf, int64_t len, int root) {
    int count;
    MPI_Datatype type;
    int rc = byte_type(len, &count, &type);
    if (rc != SR_OK) return rc;
    int mrc = MPI_Bcast(buf, count, type, root, ((mpi_tp *)tp->impl)->comm);
    type_release(&type);
    return mrc == MPI_SUCCESS ? SR_OK : mpi_fail(mrc, "MPI_Bcast", __FILE__, __LINE__);
}

static int mpi_gather(sr_tp *tp, const void *send, int64_t len, void *recv, int root) {
    int count;
    MPI_Datatype type;
    int rc = byte_type(len, &count, &type);
    if (rc != SR_OK) return rc;
    int mrc = MPI_Gather(send, count, type, recv, count, type, root, ((mpi_tp *)tp->impl)->comm);
    type_release(&type);
    return mrc == MPI_SUCCESS ? SR_OK : mpi_fail(mrc, "MPI_Gather", __FILE__, __LINE__);
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
