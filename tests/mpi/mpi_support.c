#include "tests/mpi/mpi_support.h"

#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
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

float val(uint64_t seed, int64_t pos, int64_t idx) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + (uint64_t)pos * 0xbf58476d1ce4e5b9ull + (uint64_t)idx + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

int open_tcp(sr_tp **tp) {
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int attempt = 0; attempt < 5; attempt++) {
        int base = 20000 + (rand() % 4000) * 10;
        MPI_Bcast(&base, 1, MPI_INT, 0, MPI_COMM_WORLD);
        sr_tp_opts o = sr_tp_opts_default();
        o.rank = rank;
        o.size = size;
        o.base_port = base;
        o.timeout_s = 10;
        int bad = sr_tp_open(tp, "tcp", &o) != SR_OK;
        if (bad) fprintf(stderr, "rank %d: tcp open on base port %d: %s\n", rank, base, sr_error_msg());
        MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (!bad) return SR_OK;
        sr_tp_close(*tp);
        *tp = NULL;
    }
    return sr_error_set(SR_ECOMM, "no free tcp ports after 5 tries");
}
