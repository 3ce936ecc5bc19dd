#include "tests/mpi/mpi_support.h"

#include <mpi.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int rank, size, n_tests, n_failed;

int mpi_test_init(int *argc, char ***argv) {
    if (sr_tp_mpi_init(argc, argv) != SR_OK) {
        fprintf(stderr, "MPI init: %s\n", sr_error_msg());
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return 0;
}

int mpi_test_finish(void) {
    if (rank == 0) printf("1..%d\n", n_tests);
    MPI_Finalize();
    return n_failed ? 1 : 0;
}

void tap(int local_fail, const char *fmt, ...) {
    int fail = local_fail != 0;
    MPI_Allreduce(MPI_IN_PLACE, &fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    n_tests++;
    n_failed += fail;
    if (rank != 0) return;
    char name[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    printf("%sok %d - %s\n", fail ? "not " : "", n_tests, name);
    fflush(stdout);
}

void tap_skip(const char *name, const char *why) {
    n_tests++;
    if (rank == 0) printf("ok %d - %s # SKIP %s\n", n_tests, name, why);
}

/* Writes the job secret where only this process can read it (mkstemp makes
 * the file mode 600); path gets its name. */
static int write_secret(const unsigned char *key, size_t n, char *path, size_t path_len) {
    const char *dir = getenv("TMPDIR");
    snprintf(path, path_len, "%s/starring-tcp-key-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) return sr_error_set(SR_EIO, "mkstemp %s: %s", path, strerror(errno));
    int ok = write(fd, key, n) == (ssize_t)n;
    close(fd);
    if (!ok) {
        unlink(path);
        return sr_error_set(SR_EIO, "writing the tcp secret to %s failed", path);
    }
    return SR_OK;
}

int mpi_make_tiny(char *path, size_t cap, const char *args) {
    static int made; /* the same count on every rank */
    int rc = 0;
    if (rank == 0) {
        snprintf(path, cap, "/tmp/sr_tiny_%d_%d.gguf", (int)getpid(), made);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "python3 scripts/make-tiny-model %s %s >/dev/null", path, args);
        rc = system(cmd);
    }
    made++;
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(path, (int)cap, MPI_CHAR, 0, MPI_COMM_WORLD);
    return rc == 0 ? SR_OK : sr_error_set(SR_EIO, "scripts/make-tiny-model %s failed", args);
}

int mpi_make_tiny_pair(char *tiny, char *tiny_gqa, const char *gqa_type) {
    char gqa[160];
    snprintf(gqa, sizeof gqa, "--type %s --layers 3 --dim 256 --heads 8 --kv-heads 2 --ffn 384 --vocab 300 --seed 5",
             gqa_type);
    int ok = mpi_make_tiny(tiny, 256, "--type F32 --layers 2 --dim 128 --heads 2 --kv-heads 1 --ffn 256 --vocab 512") ==
                 SR_OK &&
             mpi_make_tiny(tiny_gqa, 256, gqa) == SR_OK;
    tap(!ok, "tiny random models written");
    return !ok;
}

int open_mpi_and_tcp(sr_tp **mpi, sr_tp **tcp) {
    tap(sr_tp_open(mpi, "mpi", NULL) != SR_OK, "open mpi transport");
    tap(open_tcp(tcp) != SR_OK, "open tcp transport");
    return !*mpi || !*tcp;
}

int open_tcp(sr_tp **tp) {
    unsigned char key[32] = {0};
    int no_key = rank == 0 && getentropy(key, sizeof key) != 0;
    MPI_Bcast(key, sizeof key, MPI_BYTE, 0, MPI_COMM_WORLD);
    char path[512];
    int rc = no_key ? sr_error_set(SR_EIO, "getentropy: %s", strerror(errno)) : write_secret(key, sizeof key, path, sizeof path);
    int bad = rc != SR_OK;
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (bad) {
        if (rc == SR_OK) unlink(path);
        return rc != SR_OK ? rc : sr_error_set(SR_EIO, "another rank could not write its tcp secret");
    }
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int attempt = 0; attempt < 5; attempt++) {
        int base = 20000 + (rand() % 4000) * 10;
        MPI_Bcast(&base, 1, MPI_INT, 0, MPI_COMM_WORLD);
        sr_tp_opts o = sr_tp_opts_default();
        o.rank = rank;
        o.size = size;
        o.base_port = base;
        o.timeout_s = 10;
        o.secret_file = path;
        bad = sr_tp_open(tp, "tcp", &o) != SR_OK;
        if (bad) fprintf(stderr, "rank %d: tcp open on base port %d: %s\n", rank, base, sr_error_msg());
        MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (!bad) break;
        sr_tp_close(*tp);
        *tp = NULL;
    }
    unlink(path);
    return bad ? sr_error_set(SR_ECOMM, "no free tcp ports after 5 tries") : SR_OK;
}

int mpi_exchange(void *data, const void *send, size_t len, void *recv) {
    if (len > (size_t)INT32_MAX) return sr_error_set(SR_ERANGE, "mpi_exchange: %zu bytes", len);
    if (MPI_Allgather(send, (int)len, MPI_BYTE, recv, (int)len, MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS)
        return sr_error_set(SR_ECOMM, "mpi_exchange: MPI_Allgather failed");
    mpi_exchange_log *log = data;
    if (!log) return SR_OK;
    unsigned char *copy = malloc(len * (size_t)size);
    if (!copy) return sr_error_set(SR_ENOMEM, "mpi_exchange: out of memory");
    memcpy(copy, recv, len * (size_t)size);
    free(log->blocks);
    log->blocks = copy;
    log->len = len;
    return SR_OK;
}

int open_ucx(sr_tp **tp, mpi_exchange_log *log, const unsigned char *key, size_t key_len) {
    unsigned char fresh[32] = {0};
    int bad = rank == 0 && !key && getentropy(fresh, sizeof fresh) != 0;
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (bad) return sr_error_set(SR_EIO, "getentropy failed on rank 0");
    MPI_Bcast(fresh, sizeof fresh, MPI_BYTE, 0, MPI_COMM_WORLD);
    sr_tp_opts o = sr_tp_opts_default();
    o.rank = rank;
    o.size = size;
    o.timeout_s = 10;
    o.exchange = mpi_exchange;
    o.exchange_data = log;
    o.key = key ? key : fresh;
    o.key_len = key ? key_len : sizeof fresh;
    return sr_tp_open(tp, "ucx", &o);
}
