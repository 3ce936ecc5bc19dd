/* The ucx transport between real processes started without mpirun, as the
 * daemon's workers will be: the test process is rank 0 and forks rank 1; the
 * worker addresses go through a caller-supplied exchange (an allgather over
 * a socketpair, where the daemon will use the coordinator). A message each
 * way; a peer SIGKILLed while a receive waits on it gives SR_ECOMM naming it
 * within about io_timeout_s; and with neither an exchange nor MPI the open
 * fails, saying what is missing. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "base/status.h"
#include "tests/support/unit_main.h"
#include "transport/transport.h"

#define N 100000 /* past UCX's eager limit on shared memory: rendezvous */
#define IO_TIMEOUT_S 1.0

static const unsigned char key[32] = "ucx test key, 32 bytes long ....";

static int full_io(int fd, void *buf, size_t n, int out) {
    for (size_t got = 0; got < n;) {
        ssize_t k = out ? write(fd, (char *)buf + got, n - got) : read(fd, (char *)buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        got += (size_t)k;
    }
    return 0;
}

typedef struct {
    int fd, rank;
} pair;

/* an allgather of two ranks over a socketpair */
static int pair_exchange(void *data, const void *send, size_t len, void *recv) {
    pair *p = data;
    char *mine = (char *)recv + (size_t)p->rank * len, *theirs = (char *)recv + (size_t)(1 - p->rank) * len;
    memcpy(mine, send, len);
    if (full_io(p->fd, (void *)send, len, 1) != 0 || full_io(p->fd, theirs, len, 0) != 0)
        return sr_error_set(SR_EIO, "pair_exchange: the other process is gone");
    return SR_OK;
}

static int open_rank(pair *p, sr_tp **tp) {
    sr_tp_opts o = sr_tp_opts_default();
    o.rank = p->rank;
    o.size = 2;
    o.timeout_s = 20;
    o.io_timeout_s = IO_TIMEOUT_S;
    o.exchange = pair_exchange;
    o.exchange_data = p;
    o.key = key;
    o.key_len = sizeof key;
    return sr_tp_open(tp, "ucx", &o);
}

static void fill(unsigned char *b, int n, int seed) {
    for (int i = 0; i < n; i++) b[i] = (unsigned char)(i * 7 + seed + (i >> 8));
}

static int xfer(sr_tp *tp, void *b, int64_t n, int peer, int tag, int send) {
    sr_tp_req *q = NULL;
    int rc = send ? sr_tp_isend(tp, b, n, peer, tag, &q) : sr_tp_irecv(tp, b, n, peer, tag, &q);
    return rc != SR_OK ? rc : sr_tp_wait(q);
}

/* Rank 1: receives N bytes, sends them back, and then either closes or says
 * "ready" on the socketpair and waits to be killed. Exit status: what failed. */
static void rank1_main(int fd, int wait_for_kill) {
    pair p = {fd, 1};
    sr_tp *tp = NULL;
    unsigned char *b = malloc(N);
    if (!b || open_rank(&p, &tp) != SR_OK) {
        fprintf(stderr, "rank 1: open: %s\n", sr_error_msg());
        _exit(2);
    }
    if (xfer(tp, b, N, 0, 1, 0) != SR_OK || xfer(tp, b, N, 0, 2, 1) != SR_OK) {
        fprintf(stderr, "rank 1: %s\n", sr_error_msg());
        _exit(3);
    }
    if (wait_for_kill) {
        char c = 'r';
        if (full_io(fd, &c, 1, 1) != 0) _exit(4);
        for (;;) pause();
    }
    sr_tp_close(tp);
    free(b);
    _exit(0);
}

static pid_t start_rank1(int *fd, int wait_for_kill) {
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        rank1_main(sv[1], wait_for_kill);
    }
    close(sv[1]);
    *fd = sv[0];
    return pid;
}

/* rank 0's half of the round trip: N bytes out, the same back */
static void round_trip(sr_tp *tp) {
    unsigned char *s = malloc(N), *r = malloc(N);
    assert_non_null(s);
    assert_non_null(r);
    fill(s, N, 5);
    memset(r, 0, N);
    assert_int_equal(xfer(tp, s, N, 1, 1, 1), SR_OK);
    assert_int_equal(xfer(tp, r, N, 1, 2, 0), SR_OK);
    assert_memory_equal(s, r, N);
    free(s);
    free(r);
}

/* Forks rank 1, opens rank 0 with it and does the round trip. */
static sr_tp *open_pair(int wait_for_kill, int *fd, pid_t *pid) {
    *pid = start_rank1(fd, wait_for_kill);
    pair p = {*fd, 0}; /* the exchange is used only while opening */
    sr_tp *tp = NULL;
    int rc = open_rank(&p, &tp);
    if (rc != SR_OK) fprintf(stderr, "rank 0: open: %s\n", sr_error_msg());
    assert_int_equal(rc, SR_OK);
    assert_int_equal(sr_tp_size(tp), 2);
    round_trip(tp);
    return tp;
}

static void test_round_trip(void **state) {
    (void)state;
    int fd;
    pid_t pid;
    sr_tp *tp = open_pair(0, &fd, &pid);
    sr_tp_close(tp);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fd);
}

static void test_killed_peer(void **state) {
    (void)state;
    int fd;
    pid_t pid;
    sr_tp *tp = open_pair(1, &fd, &pid);
    char c = 0;
    assert_int_equal(full_io(fd, &c, 1, 0), 0);
    char b[8];
    sr_tp_req *q = NULL;
    assert_int_equal(sr_tp_irecv(tp, b, sizeof b, 1, 3, &q), SR_OK);
    assert_int_equal(kill(pid, SIGKILL), 0);
    double t0 = sr_now();
    int rc = sr_tp_wait(q);
    double took = sr_now() - t0;
    if (rc != SR_ECOMM || !strstr(sr_error_msg(), "rank 1") || took > 5 * IO_TIMEOUT_S)
        fprintf(stderr, "receive from a killed peer: %s after %.2f s: %s\n", sr_strerror(rc), took, sr_error_msg());
    assert_int_equal(rc, SR_ECOMM);
    assert_non_null(strstr(sr_error_msg(), "rank 1"));
    assert_true(took < 5 * IO_TIMEOUT_S);
    /* and a send to it fails at once, naming it */
    rc = sr_tp_isend(tp, b, sizeof b, 1, 3, &q);
    if (rc == SR_OK) rc = sr_tp_wait(q);
    assert_int_equal(rc, SR_ECOMM);
    assert_non_null(strstr(sr_error_msg(), "rank 1"));
    sr_tp_close(tp);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    close(fd);
}

static void test_open_needs_an_exchange(void **state) {
    (void)state;
    sr_tp *tp = (sr_tp *)1;
    assert_int_equal(sr_tp_open(&tp, "ucx", NULL), SR_EINVAL);
    assert_null(tp);
    assert_non_null(strstr(sr_error_msg(), "sr_tp_opts.exchange"));
    assert_non_null(strstr(sr_error_msg(), "mpirun"));
    sr_tp_opts o = sr_tp_opts_default();
    pair p = {-1, 0};
    o.exchange = pair_exchange;
    o.exchange_data = &p;
    o.key = key;
    o.key_len = 8;
    assert_int_equal(sr_tp_open(&tp, "ucx", &o), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "sr_tp_opts.key_len 8 is out of range 16..4096"));
}

SR_TEST_MAIN(cmocka_unit_test(test_round_trip), cmocka_unit_test(test_killed_peer),
             cmocka_unit_test(test_open_needs_an_exchange))
