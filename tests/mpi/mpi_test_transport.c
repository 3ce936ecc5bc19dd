/* The same transport tests over every backend available: mpi, ucx (worker
 * addresses exchanged by an MPI_Allgather callback, as the coordinator will
 * at join, and with no callback over MPI), tcp (on 127.0.0.1, ports from a
 * random base agreed over MPI so that parallel runs do not collide) and nccl
 * (only with CUDA and a GPU; a TAP SKIP otherwise).
 * Every rank runs every test; failures are reduced across ranks and rank 0
 * prints the TAP lines. */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "base/status.h"
#include "transport/transport.h"
#include "tests/mpi/mpi_support.h"

#if SR_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int on_device; /* buffers handed to the transport are GPU memory (nccl) */

/* Buffers the transport moves: host memory, or device memory staged through
 * host copies so that the checks below stay the same for every backend. */
static void *tbuf_alloc(int64_t n) {
#if SR_HAVE_CUDA
    if (on_device) {
        void *p = NULL;
        return cudaMalloc(&p, (size_t)n + 1) == cudaSuccess ? p : NULL;
    }
#endif
    return malloc((size_t)n + 1);
}

static void tbuf_free(void *p) {
#if SR_HAVE_CUDA
    if (on_device) {
        cudaFree(p);
        return;
    }
#endif
    free(p);
}

/* Host memory to a transport buffer or back (CUDA tells which from the
 * pointers: unified addressing). */
static void tbuf_copy(void *dst, const void *src, int64_t n) {
#if SR_HAVE_CUDA
    if (on_device) {
        cudaMemcpy(dst, src, (size_t)n, cudaMemcpyDefault);
        return;
    }
#endif
    memcpy(dst, src, (size_t)n);
}

/* A send and a receive buffer: in host memory (s, r, one byte over for a
 * guard), and as the transport is handed them (ds, dr). */
typedef struct {
    unsigned char *s, *r, *ds, *dr;
} staged;

/* Returns non-zero (with nothing left allocated) when any allocation fails. */
static int staged_alloc(staged *b, int64_t ns, int64_t nr) {
    b->s = malloc((size_t)ns + 1), b->r = malloc((size_t)nr + 1);
    b->ds = tbuf_alloc(ns), b->dr = tbuf_alloc(nr);
    if (b->s && b->r && b->ds && b->dr) return 0;
    free(b->s), free(b->r);
    if (b->ds) tbuf_free(b->ds);
    if (b->dr) tbuf_free(b->dr);
    return 1;
}

static void staged_free(staged *b) {
    free(b->s), free(b->r);
    tbuf_free(b->ds);
    tbuf_free(b->dr);
}

static unsigned char pattern(int from, int to, int tag, int64_t i) {
    return (unsigned char)(from * 131 + to * 31 + tag * 7 + i * 13 + (i >> 11));
}

static void fill(unsigned char *b, int64_t n, int from, int to, int tag) {
    for (int64_t i = 0; i < n; i++) b[i] = pattern(from, to, tag, i);
}

static int check(const unsigned char *b, int64_t n, int from, int to, int tag) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += b[i] != pattern(from, to, tag, i);
    if (bad) fprintf(stderr, "rank %d: %lld wrong bytes from rank %d tag %d\n", rank, (long long)bad, from, tag);
    return bad != 0;
}

/* ring pass: r sends to r+1 and receives from r-1, checking every byte */
static int t_sizes(sr_tp *tp, int64_t n, int poll_with_test) {
    int fails = 0, next = (rank + 1) % size, prev = (rank + size - 1) % size, tag = 5;
    staged b;
    if (staged_alloc(&b, n, n)) return 1;
    unsigned char *s = b.s, *r = b.r, *ds = b.ds, *dr = b.dr;
    fill(s, n, rank, next, tag);
    memset(r, 0xee, (size_t)n + 1);
    tbuf_copy(ds, s, n);
    tbuf_copy(dr, r, n + 1);
    sr_tp_req *rq[2] = {0};
    COUNT_OK(sr_tp_irecv(tp, dr, n, prev, tag, &rq[0]));
    COUNT_OK(sr_tp_isend(tp, ds, n, next, tag, &rq[1]));
    if (poll_with_test && !fails) {
        int done[2] = {0, 0};
        for (long spins = 0; !(done[0] && done[1]) && spins < 100000000L; spins++)
            for (int k = 0; k < 2; k++)
                if (!done[k]) COUNT_OK(sr_tp_test(rq[k], &done[k]));
        fails += !(done[0] && done[1]);
    }
    COUNT_OK(sr_tp_waitall(2, rq));
    tbuf_copy(r, dr, n + 1);
    fails += check(r, n, prev, rank, tag);
    fails += r[n] != 0xee; /* nothing written past the end */
    staged_free(&b);
    return fails;
}

/* tags 1 and 2 sent in that order, received in the other */
static int t_tags(sr_tp *tp) {
    int fails = 0, next = (rank + 1) % size, prev = (rank + size - 1) % size;
    int64_t n1 = 3000, n2 = 70000;
    unsigned char *s1 = malloc(n1), *s2 = malloc(n2), *r1 = malloc(n1), *r2 = malloc(n2);
    if (!s1 || !s2 || !r1 || !r2) return 1;
    fill(s1, n1, rank, next, 1);
    fill(s2, n2, rank, next, 2);
    sr_tp_req *q[4] = {0};
    COUNT_OK(sr_tp_isend(tp, s1, n1, next, 1, &q[0]));
    COUNT_OK(sr_tp_isend(tp, s2, n2, next, 2, &q[1]));
    /* let tag 1 arrive first, so it must wait in the unexpected list */
    usleep(20000);
    COUNT_OK(sr_tp_irecv(tp, r2, n2, prev, 2, &q[2]));
    COUNT_OK(sr_tp_wait(q[2]));
    q[2] = NULL;
    COUNT_OK(sr_tp_irecv(tp, r1, n1, prev, 1, &q[3]));
    COUNT_OK(sr_tp_waitall(4, q));
    fails += check(r1, n1, prev, rank, 1) + check(r2, n2, prev, rank, 2);
    free(s1);
    free(s2);
    free(r1);
    free(r2);
    return fails;
}

/* every rank to every rank, itself included, all in flight at once */
static int t_all_pairs(sr_tp *tp) {
    int fails = 0, tag = 9;
    int64_t n = 10000 + 17 * rank;
    unsigned char **s = calloc((size_t)size, sizeof *s), **r = calloc((size_t)size, sizeof *r);
    unsigned char *h = malloc(20000);
    sr_tp_req **q = calloc(2 * (size_t)size, sizeof *q);
    if (!s || !r || !q || !h) return 1;
    for (int p = 0; p < size; p++) {
        int64_t rn = 10000 + 17 * p; /* length of what p sends */
        s[p] = tbuf_alloc(n);
        r[p] = tbuf_alloc(rn);
        fill(h, n, rank, p, tag);
        tbuf_copy(s[p], h, n);
        COUNT_OK(sr_tp_irecv(tp, r[p], rn, p, tag, &q[p]));
    }
    for (int k = 0; k < size; k++) {
        int p = (rank + k) % size;
        COUNT_OK(sr_tp_isend(tp, s[p], n, p, tag, &q[size + p]));
    }
    COUNT_OK(sr_tp_waitall(2 * size, q));
    for (int p = 0; p < size; p++) {
        tbuf_copy(h, r[p], 10000 + 17 * p);
        fails += check(h, 10000 + 17 * p, p, rank, tag);
        tbuf_free(s[p]);
        tbuf_free(r[p]);
    }
    free(h);
    free(s);
    free(r);
    free(q);
    return fails;
}

static int t_bcast(sr_tp *tp, int64_t n) {
    int fails = 0;
    unsigned char *b = malloc((size_t)n + 1), *d = tbuf_alloc(n);
    if (!b || !d) return 1;
    for (int root = 0; root < size; root++) {
        if (rank == root) fill(b, n, root, -1, 3);
        else memset(b, 0, (size_t)n);
        tbuf_copy(d, b, n);
        COUNT_OK(sr_tp_bcast(tp, d, n, root));
        tbuf_copy(b, d, n);
        fails += check(b, n, root, -1, 3);
    }
    free(b);
    tbuf_free(d);
    return fails;
}

static int t_gather(sr_tp *tp, int64_t n) {
    int fails = 0;
    staged b;
    if (staged_alloc(&b, n, n * size)) return 1;
    unsigned char *s = b.s, *r = b.r, *ds = b.ds, *dr = b.dr;
    fill(s, n, rank, -2, 4);
    tbuf_copy(ds, s, n);
    for (int root = 0; root < size; root++) {
        memset(r, 0, (size_t)n * size);
        tbuf_copy(dr, r, n * size);
        COUNT_OK(sr_tp_gather(tp, ds, n, dr, root));
        tbuf_copy(r, dr, n * size);
        if (rank == root)
            for (int p = 0; p < size; p++) fails += check(r + (int64_t)p * n, n, p, -2, 4);
    }
    memset(r, 0, (size_t)n * size);
    tbuf_copy(dr, r, n * size);
    COUNT_OK(sr_tp_allgather(tp, ds, n, dr));
    tbuf_copy(r, dr, n * size);
    for (int p = 0; p < size; p++) fails += check(r + (int64_t)p * n, n, p, -2, 4);
    staged_free(&b);
    return fails;
}

/* a receive of the wrong length fails with SR_EFORMAT, and the transport
 * stays usable */
static int t_length_mismatch(sr_tp *tp) {
    int fails = 0, next = (rank + 1) % size, prev = (rank + size - 1) % size;
    unsigned char s[10], r[12];
    fill(s, 10, rank, next, 7);
    sr_tp_req *qs = NULL, *qr = NULL;
    COUNT_OK(sr_tp_isend(tp, s, 10, next, 7, &qs));
    COUNT_OK(sr_tp_irecv(tp, r, 12, prev, 7, &qr));
    int rc = sr_tp_wait(qr);
    if (rc != SR_EFORMAT) {
        fprintf(stderr, "rank %d: short message gave %s, expected SR_EFORMAT\n", rank, sr_strerror(rc));
        fails++;
    } else if (!strstr(sr_error_msg(), "expected 12")) {
        fprintf(stderr, "rank %d: unhelpful message: %s\n", rank, sr_error_msg());
        fails++;
    }
    COUNT_OK(sr_tp_wait(qs));
    COUNT_OK(sr_tp_barrier(tp));
    fails += t_sizes(tp, 100, 0);
    return fails;
}

/* a message longer than the receive fails it with SR_EFORMAT naming the
 * sender, writes nothing past the buffer, and the transport stays usable */
static int t_overlong(sr_tp *tp) {
    int fails = 0, next = (rank + 1) % size, prev = (rank + size - 1) % size;
    unsigned char s[64], r[64];
    fill(s, 64, rank, next, 8);
    memset(r, 0xee, sizeof r);
    sr_tp_req *qs = NULL, *qr = NULL;
    COUNT_OK(sr_tp_isend(tp, s, 64, next, 8, &qs));
    COUNT_OK(sr_tp_irecv(tp, r, 40, prev, 8, &qr));
    int rc = sr_tp_wait(qr);
    char want[32];
    snprintf(want, sizeof want, "rank %d tag 8", prev);
    if (rc != SR_EFORMAT || !strstr(sr_error_msg(), want)) {
        fprintf(stderr, "rank %d: long message gave %s: %s\n", rank, sr_strerror(rc), sr_error_msg());
        fails++;
    }
    for (int i = 40; i < 64; i++) fails += r[i] != 0xee;
    COUNT_OK(sr_tp_wait(qs));
    COUNT_OK(sr_tp_barrier(tp));
    fails += t_sizes(tp, 100, 0);
    return fails;
}

static int t_bad_args(sr_tp *tp) {
    int fails = 0;
    sr_tp_req *q = (sr_tp_req *)1;
    char b[4];
    fails += sr_tp_isend(tp, b, 4, size, 0, &q) != SR_EINVAL || q != NULL;
    fails += sr_tp_isend(tp, b, 4, 0, SR_TP_TAG_MAX + 1, &q) != SR_EINVAL;
    fails += sr_tp_irecv(tp, b, -1, 0, 0, &q) != SR_EINVAL;
    fails += sr_tp_bcast(tp, b, 4, -1) != SR_EINVAL;
    return fails;
}

static void run_suite(sr_tp *tp, const char *be) {
    int nccl = strcmp(be, "nccl") == 0;
    on_device = sr_tp_device_memory(tp);
    tap(sr_tp_rank(tp) != rank || sr_tp_size(tp) != size || strcmp(sr_tp_name(tp), be) != 0,
        "%s: rank %d of %d", be, rank, size);
    static const int64_t sizes[] = {0, 1, 4097, 16 << 20};
    for (int i = 0; i < 4; i++) tap(t_sizes(tp, sizes[i], 0), "%s: ring send/recv of %lld bytes", be, (long long)sizes[i]);
    tap(t_sizes(tp, 1 << 20, 1), "%s: sr_tp_test polls 1 MiB to completion", be);
    if (nccl)
        tap_skip("nccl: out-of-order tags", "nccl has no tags: messages arrive in send order");
    else
        tap(t_tags(tp), "%s: out-of-order tags", be);
    tap(t_all_pairs(tp), "%s: all pairs, self included", be);
    tap(t_bcast(tp, 4097) + t_bcast(tp, 0), "%s: bcast from every root (4097 and 0 bytes)", be);
    tap(t_gather(tp, 3001), "%s: gather to every root, allgather", be);
    int fails = 0;
    COUNT_OK(sr_tp_barrier(tp));
    tap(fails, "%s: barrier", be);
    if (!nccl) tap(t_length_mismatch(tp), "%s: length mismatch gives SR_EFORMAT and the transport recovers", be);
    if (!nccl) tap(t_overlong(tp), "%s: a longer message gives SR_EFORMAT, nothing past the buffer", be);
    tap(t_bad_args(tp), "%s: bad arguments give SR_EINVAL", be);
    on_device = 0;
}

/* After a peer closes, operations on it fail with SR_ECOMM and say which
 * rank. Closes tp. */
static int t_disconnect(sr_tp *tp) {
    int fails = 0;
    if (rank == 1) {
        sr_tp_close(tp);
        MPI_Barrier(MPI_COMM_WORLD);
        return 0;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char b[8];
        sr_tp_req *q = NULL;
        COUNT_OK(sr_tp_irecv(tp, b, 8, 1, 0, &q));
        int rc = sr_tp_wait(q);
        if (rc != SR_ECOMM || !strstr(sr_error_msg(), "rank 1")) {
            fprintf(stderr, "rank 0: receive from a closed peer gave %s: %s\n", sr_strerror(rc), sr_error_msg());
            fails++;
        }
        rc = sr_tp_isend(tp, b, 8, 1, 0, &q);
        if (rc == SR_OK) rc = sr_tp_wait(q);
        fails += rc != SR_ECOMM;
    }
    sr_tp_close(tp);
    return fails;
}

/* A stranger: a UCX worker of its own in rank 1's process, holding rank 0's
 * worker address (as someone who reached rank 0's port would), sends
 * messages shaped like the transport's own (active message 1, a 4-byte tag
 * header) for receives rank 0 has posted from rank 1: one eager, one by
 * rendezvous. Rank 0 must drop both and receive rank 1's real messages. */
static int stranger_send(const void *addr, int tag, const void *buf, size_t len, unsigned flags) {
    ucp_params_t prm = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucp_config_t *cfg;
    ucp_context_h ctx;
    ucp_worker_h w;
    ucp_ep_h ep;
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK) return 1;
    ucs_status_t st = ucp_init(&prm, cfg, &ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) return 1;
    if (ucp_worker_create(ctx, &wp, &w) != UCS_OK) {
        ucp_cleanup(ctx);
        return 1;
    }
    ucp_ep_params_t ep_prm = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS, .address = addr};
    int fails = ucp_ep_create(w, &ep_prm, &ep) != UCS_OK;
    if (!fails) {
        int32_t hdr = tag;
        ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_AM_SEND_FLAG_REPLY | flags};
        ucs_status_ptr_t sp = ucp_am_send_nbx(ep, 1, &hdr, sizeof hdr, buf, len, &rp);
        double t0 = MPI_Wtime();
        while (sp && !UCS_PTR_IS_ERR(sp) && ucp_request_check_status(sp) == UCS_INPROGRESS && MPI_Wtime() - t0 < 10)
            ucp_worker_progress(w);
        fails += UCS_PTR_IS_ERR(sp) || (sp && ucp_request_check_status(sp) != UCS_OK);
        if (sp && !UCS_PTR_IS_ERR(sp)) ucp_request_free(sp);
        /* let rank 0 see it before the real message is sent */
        for (t0 = MPI_Wtime(); MPI_Wtime() - t0 < 0.05;) ucp_worker_progress(w);
        ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_EP_CLOSE_FLAG_FORCE};
        sp = ucp_ep_close_nbx(ep, &cp);
        while (sp && !UCS_PTR_IS_ERR(sp) && ucp_request_check_status(sp) == UCS_INPROGRESS) ucp_worker_progress(w);
        if (sp && !UCS_PTR_IS_ERR(sp)) ucp_request_free(sp);
    }
    ucp_worker_destroy(w);
    ucp_cleanup(ctx);
    return fails;
}

static int t_ucx_stranger(sr_tp *tp, const mpi_exchange_log *log) {
    int fails = 0;
    const int64_t small = 64, big = 1 << 20;
    unsigned char *s1 = malloc(small), *s2 = malloc(big), *junk = malloc(big);
    if (!s1 || !s2 || !junk || !log->blocks) return 1;
    memset(junk, 0xab, big);
    fill(s1, small, 1, 0, 11);
    fill(s2, big, 1, 0, 12);
    sr_tp_req *q[2] = {0};
    if (rank == 0) {
        COUNT_OK(sr_tp_irecv(tp, s1, small, 1, 11, &q[0]));
        COUNT_OK(sr_tp_irecv(tp, s2, big, 1, 12, &q[1]));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        fails += stranger_send(log->blocks, 11, junk, small, UCP_AM_SEND_FLAG_EAGER);
        fails += stranger_send(log->blocks, 12, junk, big, UCP_AM_SEND_FLAG_RNDV);
        if (fails) fprintf(stderr, "rank 1: the stranger could not send\n");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        COUNT_OK(sr_tp_isend(tp, s1, small, 0, 11, &q[0]));
        COUNT_OK(sr_tp_isend(tp, s2, big, 0, 12, &q[1]));
    }
    COUNT_OK(sr_tp_waitall(2, q));
    if (rank == 0) fails += check(s1, small, 1, 0, 11) + check(s2, big, 1, 0, 12);
    free(s1);
    free(s2);
    free(junk);
    COUNT_OK(sr_tp_barrier(tp));
    return fails;
}

/* The ucx transport over every rank with an I/O timeout of 1 s, addresses
 * exchanged over MPI, a key of 32 bytes of fill. */
static int open_ucx_1s(sr_tp **tp, unsigned char fill) {
    unsigned char key[32];
    memset(key, fill, sizeof key);
    sr_tp_opts o = sr_tp_opts_default();
    o.rank = rank;
    o.size = size;
    o.timeout_s = 10;
    o.io_timeout_s = 1;
    o.exchange = mpi_exchange;
    o.key = key;
    o.key_len = sizeof key;
    return sr_tp_open(tp, "ucx", &o);
}

/* A peer that stops (SIGSTOP: as a hung or cut-off one looks) fails the
 * requests on it with SR_ECOMM naming it within about io_timeout_s; then it
 * is resumed and every rank closes. */
static int t_ucx_silent_peer(void) {
    int fails = 0;
    sr_tp *tp = NULL;
    EXPECT_OK(open_ucx_1s(&tp, 0x3c));
    int pid1 = (int)getpid();
    MPI_Bcast(&pid1, 1, MPI_INT, 1, MPI_COMM_WORLD);
    if (rank == 1) {
        raise(SIGSTOP);
    } else if (rank == 0) {
        char b[8];
        sr_tp_req *q = NULL;
        double t0 = MPI_Wtime();
        COUNT_OK(sr_tp_irecv(tp, b, 8, 1, 0, &q));
        int rc = sr_tp_wait(q);
        double took = MPI_Wtime() - t0;
        if (rc != SR_ECOMM || !strstr(sr_error_msg(), "rank 1") || took > 5) {
            fprintf(stderr, "rank 0: receive from a stopped peer gave %s after %.1f s: %s\n", sr_strerror(rc), took,
                    sr_error_msg());
            fails++;
        }
        kill((pid_t)pid1, SIGCONT);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    sr_tp_close(tp);
    return fails;
}

/* Ranks 0 and 1 ping-pong for 2.5 io_timeout_s while rank 2 waits for one
 * message from rank 0: a rank busy waiting on one peer still sends the
 * others its heartbeats, so nobody is failed for silence. */
static int t_ucx_busy_peer(void) {
    int fails = 0;
    sr_tp *tp = NULL;
    EXPECT_OK(open_ucx_1s(&tp, 0x77));
    char b[8] = "busy";
    sr_tp_req *q = NULL;
    if (rank <= 1) {
        double t0 = MPI_Wtime();
        int more = 1;
        while (more && !fails) {
            if (rank == 0) more = MPI_Wtime() - t0 < 2.5;
            sr_tp_req *r2 = NULL;
            if (rank == 0) {
                COUNT_OK(sr_tp_isend(tp, &more, sizeof more, 1, 1, &q));
                COUNT_OK(sr_tp_irecv(tp, b, 8, 1, 2, &r2));
            } else {
                COUNT_OK(sr_tp_irecv(tp, &more, sizeof more, 0, 1, &q));
                COUNT_OK(sr_tp_wait(q));
                q = NULL;
                COUNT_OK(sr_tp_isend(tp, b, 8, 0, 2, &r2));
            }
            COUNT_OK(sr_tp_wait(q));
            COUNT_OK(sr_tp_wait(r2));
            q = NULL;
        }
        if (rank == 0 && size > 2) {
            COUNT_OK(sr_tp_isend(tp, b, 8, 2, 3, &q));
            COUNT_OK(sr_tp_wait(q));
        }
    } else if (rank == 2) {
        COUNT_OK(sr_tp_irecv(tp, b, 8, 0, 3, &q));
        COUNT_OK(sr_tp_wait(q));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    sr_tp_close(tp);
    return fails;
}

/* Rank 1 holds another key: every rank's open fails in time (those that
 * verified rank 1 themselves name it and the key; the others may see a peer
 * give up first). */
static int t_ucx_wrong_key(void) {
    unsigned char key[32];
    memset(key, rank == 1 ? 0x5a : 0xa5, sizeof key);
    sr_tp *tp = NULL;
    int rc = open_ucx(&tp, NULL, key, sizeof key);
    if (rc != SR_ECOMM || tp || (rank <= 1 && !strstr(sr_error_msg(), "key"))) {
        fprintf(stderr, "rank %d: open with a wrong key gave %s: %s\n", rank, sr_strerror(rc), sr_error_msg());
        sr_tp_close(tp);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    int fails = 0;
    sr_tp *tp = NULL;

    /* mpi */
    COUNT_OK(sr_tp_open(&tp, "mpi", NULL));
    tap(fails, "mpi: open");
    if (tp) run_suite(tp, "mpi");
    sr_tp_close(tp);
    tp = NULL;

    /* tcp */
    fails = 0;
    COUNT_OK(open_tcp(&tp));
    tap(fails, "tcp: open on 127.0.0.1 with a random base port");
    if (tp) {
        run_suite(tp, "tcp");
        if (size >= 2) tap(t_disconnect(tp), "tcp: a closed peer gives SR_ECOMM naming the rank");
        else sr_tp_close(tp);
    }
    tp = NULL;

    /* ucx, addresses through a caller-supplied allgather */
    fails = 0;
    mpi_exchange_log log = {0};
    COUNT_OK(open_ucx(&tp, &log, NULL, 0));
    tap(fails, "ucx: open with an MPI_Allgather exchange and a key in sr_tp_opts");
    if (tp) {
        run_suite(tp, "ucx");
        if (size >= 2) tap(t_ucx_stranger(tp, &log), "ucx: a stranger's UCX endpoint cannot inject, eager or rendezvous");
        if (size >= 2) tap(t_disconnect(tp), "ucx: a closed peer gives SR_ECOMM naming the rank");
        else sr_tp_close(tp);
    }
    free(log.blocks);
    tp = NULL;
    if (size >= 2) tap(t_ucx_wrong_key(), "ucx: a rank with another key is refused at open");
    if (size >= 2) tap(t_ucx_silent_peer(), "ucx: a stopped peer gives SR_ECOMM naming the rank within io_timeout_s");
    if (size >= 3) tap(t_ucx_busy_peer(), "ucx: ranks busy with each other past io_timeout_s still heartbeat a third");
    fails = 0;
    COUNT_OK(sr_tp_open(&tp, "ucx", NULL));
    tap(fails, "ucx: open with no exchange given, over MPI with a fresh key");
    if (tp) tap(t_sizes(tp, 1 << 20, 0) + t_all_pairs(tp), "ucx over MPI: ring and all pairs");
    sr_tp_close(tp);
    tp = NULL;

    /* nccl */
    if (sr_tp_available("nccl")) {
        fails = 0;
        COUNT_OK(sr_tp_open(&tp, "nccl", NULL));
        tap(fails, "nccl: open");
        if (tp) run_suite(tp, "nccl");
        sr_tp_close(tp);
    } else {
        sr_tp *none = NULL;
        int rc = sr_tp_open(&none, "nccl", NULL);
#if SR_HAVE_CUDA
        tap_skip("nccl: open", "no GPU visible");
        sr_tp_close(none);
#else
        tap(rc != SR_EUNSUPPORTED || none != NULL || !strstr(sr_error_msg(), "make CUDA=1"),
            "nccl: without CUDA, open says to rebuild with make CUDA=1");
#endif
        (void)rc;
    }
    sr_tp *bad = (sr_tp *)1;
    tap(sr_tp_open(&bad, "carrier-pigeon", NULL) != SR_EINVAL || bad != NULL, "unknown backend name gives SR_EINVAL");

    return mpi_test_finish();
}
