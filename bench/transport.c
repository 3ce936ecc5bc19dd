/* starring-bench transport: latency and bandwidth of the transports between
 * two ranks, side by side, under mpirun -np 2 (8 B to 64 MiB).
 *
 *   pingpong  rank 0 sends a message, rank 1 sends it back; the figure is
 *             half the round trip, in microseconds.
 *   stream    rank 0 sends a window of messages that rank 1 has posted
 *             receives for, then waits for a 1-byte ack; GB/s of payload.
 *
 * The repeats of every backend are interleaved (run 1 of mpi, ucx, tcp, then
 * run 2, ...) so that a busy machine slows them alike; medians are reported,
 * with mpi's figure as the baseline of the row. Every run is checked, as in
 * nccl-tests: rank 1 sends back what it received, so rank 0 compares both
 * directions of the ping-pong against the pattern, and rank 1 compares every
 * streamed buffer of the last window; wrong bytes are summed over ranks. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/status.h"
#include "bench/commands.h"
#include "bench/harness.h"
#include "transport/transport.h"

#define N_BACKENDS 3
#define MAX_WINDOW 16
#define TAG_DATA 1
#define TAG_ACK 2

static const char *const backend_names[N_BACKENDS] = {"mpi", "ucx", "tcp"};
static const int64_t sizes[] = {8, 64, 512, 4096, 32768, 262144, 2097152, 16777216, 67108864};
#define N_SIZES ((int)(sizeof sizes / sizeof sizes[0]))
#define QUICK_SIZES 5 /* --quick: up to 32 KiB */
#define MAX_REPEATS 64 /* as the harness allows for --repeats */

typedef struct {
    int rank;
    unsigned char *send, *recv[MAX_WINDOW], ack;
} bufs;

static unsigned char pattern(int64_t i, int64_t n) { return (unsigned char)(i * 131 + n * 7 + (i >> 9)); }

static int64_t count_wrong(const unsigned char *b, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += b[i] != pattern(i, n);
    return bad;
}

/* messages per window: enough in flight to fill the pipe, at most 128 MiB */
static int window(int64_t n) {
    int64_t w = ((int64_t)128 << 20) / n;
    return (int)(w < 2 ? 2 : w > MAX_WINDOW ? MAX_WINDOW : w);
}

/* iterations per run: about 64 MiB of ping-pong, 256 MiB of stream */
static int pp_iters(int64_t n) {
    int64_t k = ((int64_t)64 << 20) / n;
    return (int)(k < 5 ? 5 : k > 2000 ? 2000 : k);
}

static int st_iters(int64_t n) {
    int64_t k = ((int64_t)256 << 20) / (n * window(n));
    return (int)(k < 3 ? 3 : k > 500 ? 500 : k);
}

static int xfer(sr_tp *tp, void *buf, int64_t n, int peer, int tag, int send) {
    sr_tp_req *q = NULL;
    int rc = send ? sr_tp_isend(tp, buf, n, peer, tag, &q) : sr_tp_irecv(tp, buf, n, peer, tag, &q);
    return rc != SR_OK ? rc : sr_tp_wait(q);
}

/* One ping-pong run; seconds on rank 0, wrong bytes of what came back. */
static int pingpong(sr_tp *tp, bufs *b, int64_t n, int iters, double *secs, int64_t *wrong) {
    int rc = SR_OK;
    memset(b->recv[0], 0, (size_t)n);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = sr_now();
    for (int i = 0; i < iters && rc == SR_OK; i++) {
        if (b->rank == 0) {
            if ((rc = xfer(tp, b->send, n, 1, TAG_DATA, 1)) == SR_OK) rc = xfer(tp, b->recv[0], n, 1, TAG_DATA, 0);
        } else {
            if ((rc = xfer(tp, b->recv[0], n, 0, TAG_DATA, 0)) == SR_OK) rc = xfer(tp, b->recv[0], n, 0, TAG_DATA, 1);
        }
    }
    *secs = sr_now() - t0;
    *wrong = b->rank == 0 ? count_wrong(b->recv[0], n) : 0;
    return rc;
}

static int post_window(sr_tp *tp, bufs *b, int64_t n, int w, sr_tp_req **q) {
    for (int k = 0; k < w; k++) {
        int rc = sr_tp_irecv(tp, b->recv[k], n, 0, TAG_DATA, &q[k]);
        if (rc != SR_OK) return rc;
    }
    return SR_OK;
}

/* One stream run; seconds on rank 0, wrong bytes of the last window on rank 1. */
static int stream(sr_tp *tp, bufs *b, int64_t n, int iters, double *secs, int64_t *wrong) {
    int w = window(n), rc = SR_OK, rc2;
    sr_tp_req *q[MAX_WINDOW] = {0};
    for (int k = 0; k < w; k++) memset(b->recv[k], 0, (size_t)n);
    if (b->rank == 1) rc = post_window(tp, b, n, w, q);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = sr_now();
    for (int i = 0; i < iters && rc == SR_OK; i++) {
        if (b->rank == 0) {
            for (int k = 0; k < w && rc == SR_OK; k++) rc = sr_tp_isend(tp, b->send, n, 1, TAG_DATA, &q[k]);
            if ((rc2 = sr_tp_waitall(w, q)) != SR_OK && rc == SR_OK) rc = rc2;
            if (rc == SR_OK) rc = xfer(tp, &b->ack, 1, 1, TAG_ACK, 0);
        } else {
            rc = sr_tp_waitall(w, q);
            if (rc == SR_OK && i + 1 < iters) rc = post_window(tp, b, n, w, q);
            if (rc == SR_OK) rc = xfer(tp, &b->ack, 1, 0, TAG_ACK, 1);
        }
    }
    *secs = sr_now() - t0;
    *wrong = 0;
    for (int k = 0; b->rank == 1 && k < w; k++) *wrong += count_wrong(b->recv[k], n);
    if (rc != SR_OK) sr_tp_waitall(w, q);
    return rc;
}

/* tcp wants a job secret in a file of mode 600 and free ports: a fresh key
 * from rank 0 and a random base port, as the tests do. */
static int open_tcp(sr_tp **tp, int rank) {
    unsigned char key[32] = {0};
    int bad = rank == 0 && getentropy(key, sizeof key) != 0;
    MPI_Bcast(key, sizeof key, MPI_BYTE, 0, MPI_COMM_WORLD);
    const char *dir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/starring-bench-key-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = bad ? -1 : mkstemp(path);
    if (fd >= 0) {
        bad = write(fd, key, sizeof key) != (ssize_t)sizeof key;
        close(fd);
    } else {
        bad = 1;
    }
    int base = 0;
    if (rank == 0) {
        srand((unsigned)time(NULL) ^ (unsigned)getpid());
        base = 20000 + (rand() % 4000) * 10;
    }
    MPI_Bcast(&base, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int rc = bad ? sr_error_set(SR_EIO, "cannot write the tcp job secret under %s", dir && *dir ? dir : "/tmp")
                 : SR_OK;
    if (rc == SR_OK) {
        sr_tp_opts o = sr_tp_opts_default();
        o.base_port = base;
        o.secret_file = path;
        o.timeout_s = 20;
        rc = sr_tp_open(tp, "tcp", &o);
    }
    if (fd >= 0) unlink(path);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Runs kind (0 pingpong, 1 stream) of size n on every open backend, repeats
 * interleaved, and reports a row per backend. */
static int measure(sr_tp *const *tps, bufs *b, int64_t n, int kind, const srb_opts *o, srb_report *r) {
    double secs[N_BACKENDS][MAX_REPEATS];
    int64_t wrong[N_BACKENDS] = {0};
    int iters = kind == 0 ? pp_iters(n) : st_iters(n), reps = o->repeats;
    for (int rep = 0; rep < reps + 1; rep++) /* the first is the warm-up */
        for (int be = 0; be < N_BACKENDS; be++) {
            if (!tps[be]) continue;
            double s = 0;
            int64_t bad = 0;
            int rc = kind == 0 ? pingpong(tps[be], b, n, iters, &s, &bad) : stream(tps[be], b, n, iters, &s, &bad);
            if (rc != SR_OK) return rc;
            if (rep > 0) secs[be][rep - 1] = s;
            wrong[be] += bad;
        }
    MPI_Allreduce(MPI_IN_PLACE, wrong, N_BACKENDS, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (b->rank != 0) return SR_OK;
    double rate[N_BACKENDS], med[N_BACKENDS];
    for (int be = 0; be < N_BACKENDS; be++) {
        if (!tps[be]) continue;
        med[be] = median(secs[be], reps);
        rate[be] = kind == 0 ? med[be] / (2.0 * iters) * 1e6 : (double)n * window(n) * iters / med[be] / 1e9;
    }
    for (int be = 0; be < N_BACKENDS; be++) {
        if (!tps[be]) continue;
        srb_row row;
        memset(&row, 0, sizeof row);
        snprintf(row.section, sizeof row.section, "%s", backend_names[be]);
        int shift = n >= 1 << 20 ? 20 : n >= 1 << 10 ? 10 : 0;
        snprintf(row.name, sizeof row.name, "%s %lld %s", kind ? "stream" : "pingpong", (long long)(n >> shift),
                 shift == 20 ? "MiB" : shift == 10 ? "KiB" : "B");
        snprintf(row.kv, sizeof row.kv, "-");
        row.unit = kind == 0 ? "us" : "GB/s";
        row.t.median_s = med[be];
        row.t.samples = reps;
        row.rate = rate[be];
        row.base_rate = tps[0] ? rate[0] : NAN;
        row.base_samples = tps[0] ? reps : 0;
        row.vs_base = tps[0] ? rate[be] / rate[0] : NAN;
        row.vs_ceil = NAN;
        row.wrong = wrong[be];
        int rc = srb_report_row(r, &row);
        if (rc != SR_OK) return rc;
    }
    return SR_OK;
}

int srb_cmd_transport(int argc, char **argv) {
    srb_opts o;
    int rc = srb_opts_parse(argc, argv, "transport",
                            "Latency (ping-pong, half round trip) and bandwidth (a window of sends) between two\n"
                            "ranks for the mpi, ucx and tcp transports side by side, 8 B to 64 MiB; run it\n"
                            "under mpirun -np 2. --only mpi|ucx|tcp keeps one backend; --quick stops at 32 KiB.",
                            &o);
    if (rc != SR_OK) return rc == 1 ? 0 : 2;
    if (o.only && strcmp(o.only, "mpi") && strcmp(o.only, "ucx") && strcmp(o.only, "tcp")) {
        fprintf(stderr, "starring-bench transport: --only '%s' is not mpi, ucx or tcp\n", o.only);
        return 2;
    }
    if (sr_tp_mpi_init(&argc, &argv) != SR_OK) {
        fprintf(stderr, "starring-bench transport: %s\n", sr_error_msg());
        return 1;
    }
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0) fprintf(stderr, "starring-bench transport: needs 2 ranks (mpirun -np 2), not %d\n", size);
        MPI_Finalize();
        return 2;
    }
    int n_sizes = o.quick ? QUICK_SIZES : N_SIZES;
    int64_t max = sizes[n_sizes - 1];
    bufs b = {.rank = rank};
    sr_tp *tps[N_BACKENDS] = {0};
    rc = (b.send = malloc((size_t)max)) ? SR_OK
                                        : sr_error_set(SR_ENOMEM, "out of memory for %lld bytes", (long long)max);
    for (int be = 0; be < N_BACKENDS && rc == SR_OK; be++) {
        if (o.only && strcmp(o.only, backend_names[be])) continue;
        rc = be == 2 ? open_tcp(&tps[be], rank) : sr_tp_open(&tps[be], backend_names[be], NULL);
    }
    int failed = rc != SR_OK; /* every rank stops, or none */
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (failed && rc == SR_OK) rc = sr_error_set(SR_ECOMM, "the other rank could not open its transports");
    srb_report *r = rank == 0 && rc == SR_OK ? srb_report_new(&o) : NULL;
    if (rank == 0 && rc == SR_OK && !r) rc = sr_error_set(SR_ENOMEM, "out of memory for the report");
    if (r) {
        char host[256] = "?";
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
        srb_report_fact_str(r, "host", host);
        srb_report_fact_num(r, "ranks", size);
        srb_report_fact_str(r, "pingpong", "half round trip in us (lower is better); base is mpi");
        srb_report_fact_str(r, "stream", "GB/s of payload, a window of sends then an ack; base is mpi");
    }
    for (int i = 0; i < n_sizes && rc == SR_OK; i++) {
        /* a window's receive buffers: at most 128 MiB, so allocated per size */
        for (int k = 0; k < window(sizes[i]) && rc == SR_OK; k++)
            if (!(b.recv[k] = malloc((size_t)sizes[i])))
                rc = sr_error_set(SR_ENOMEM, "out of memory for %d buffers of %lld bytes", window(sizes[i]),
                                  (long long)sizes[i]);
        for (int64_t k = 0; rc == SR_OK && k < sizes[i]; k++) b.send[k] = pattern(k, sizes[i]);
        if (rc == SR_OK) rc = measure(tps, &b, sizes[i], 0, &o, r);
        if (rc == SR_OK) rc = measure(tps, &b, sizes[i], 1, &o, r);
        for (int k = 0; k < MAX_WINDOW; k++) {
            free(b.recv[k]);
            b.recv[k] = NULL;
        }
    }
    int64_t wrong = r ? srb_report_wrong(r) : 0;
    if (r) {
        if (srb_report_finish(r) != SR_OK) rc = rc == SR_OK ? SR_EIO : rc;
        srb_report_free(r);
    }
    if (rc != SR_OK) fprintf(stderr, "starring-bench transport: rank %d: %s\n", rank, sr_error_msg());
    for (int be = 0; be < N_BACKENDS; be++) sr_tp_close(tps[be]);
    free(b.send);
    MPI_Finalize();
    if (wrong) fprintf(stderr, "starring-bench transport: %lld wrong bytes\n", (long long)wrong);
    return rc != SR_OK ? 1 : wrong ? 3 : 0;
}
