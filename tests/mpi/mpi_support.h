/* Support for the tests that run under mpirun: TAP results agreed by every
 * rank, a check macro, deterministic values (sr_test_rng_at of
 * tests/support/rng.h), and a tcp transport on free ports. Linked into every
 * tests/mpi/mpi_test_* program. */
#ifndef SR_TESTS_MPI_SUPPORT_H
#define SR_TESTS_MPI_SUPPORT_H

#include <stdint.h>
#include <stdio.h>

#include "base/status.h"
#include "tests/support/rng.h"
#include "transport/transport.h"

extern int rank, size;           /* this process in MPI_COMM_WORLD */
extern int n_tests, n_failed;    /* TAP results so far */

/* Initialises MPI (and rank, size); returns non-zero on failure. */
int mpi_test_init(int *argc, char ***argv);
/* Prints the plan, finalises MPI; returns the exit status. */
int mpi_test_finish(void);

/* Records one result: failed if local_fail is non-zero on any rank. Rank 0
 * prints the TAP line. Collective. */
void tap(int local_fail, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tap_skip(const char *name, const char *why);

/* A call that must succeed: explains a failure on stderr, then runs on_fail. */
#define CHECK_CALL(call, on_fail)                                                                   \
    do {                                                                                            \
        int rc_ = (call);                                                                           \
        if (rc_ != SR_OK) {                                                                         \
            fprintf(stderr, "rank %d: %s:%d: %s -> %s: %s\n", rank, __FILE__, __LINE__, #call,      \
                    sr_strerror(rc_), sr_error_msg());                                              \
            on_fail;                                                                                \
        }                                                                                           \
    } while (0)
/* ... returning 1 from the caller */
#define EXPECT_OK(call) CHECK_CALL(call, return 1)
/* ... counting the failure in the caller's `fails` */
#define COUNT_OK(call) CHECK_CALL(call, fails++)

/* A tiny random model written by scripts/make-tiny-model ARGS on rank 0
 * into a fresh /tmp path (in path, on every rank). Collective. */
int mpi_make_tiny(char *path, size_t cap, const char *args);

/* The two tiny models of the cp and cad tests (256-byte paths): 2 layers,
 * 2 heads over 1 KV head, F32; and 3 layers of GQA, 8 heads over 2, in
 * gqa_type (F32, F16, ...). One TAP line; non-zero unless both were written.
 * Collective. */
int mpi_make_tiny_pair(char *tiny, char *tiny_gqa, const char *gqa_type);

/* Opens the tcp transport over all ranks on a random base port agreed over
 * MPI, retrying if the ports were taken, with a fresh job secret (a file of
 * each rank's, removed once open). Collective. */
int open_tcp(sr_tp **tp);

/* Opens the mpi transport and open_tcp's, with a TAP line each; non-zero
 * unless both opened. Collective. */
int open_mpi_and_tcp(sr_tp **mpi, sr_tp **tcp);

/* An sr_tp_opts.exchange for ucx built on MPI_Allgather over
 * MPI_COMM_WORLD. data may be NULL, or an mpi_exchange_log that keeps a copy
 * of the last exchange's blocks (for a ucx open: every rank's worker
 * address, each padded to len bytes). */
typedef struct {
    unsigned char *blocks; /* size * len bytes, malloc'd */
    size_t len;
} mpi_exchange_log;
int mpi_exchange(void *data, const void *send, size_t len, void *recv);

/* Opens the ucx transport with mpi_exchange and a fresh 32-byte key from
 * rank 0, or with key if it is not NULL (key_len bytes). Collective. */
int open_ucx(sr_tp **tp, mpi_exchange_log *log, const unsigned char *key, size_t key_len);

#endif
