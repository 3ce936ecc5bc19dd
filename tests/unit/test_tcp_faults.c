/* The tcp transport against faulty peers, with real processes on loopback:
 * each test forks the ranks of a small job (which open the transport and do
 * one thing), and the test process itself plays the faulty peer with raw
 * sockets and the wire encoders: garbage, impostors without the secret or of
 * another job, idle connections, bad frames, floods, silence, and a peer
 * SIGKILLed in the middle of a 16 MiB message. Every case must end in an
 * error on the real ranks that names what went wrong, or in the real ranks
 * getting on without the intruder; never in a hang or a crash.
 *
 * A rank reports through a pipe (its stderr: the transport's log lines, and
 * "open: rc=..." and "op: rc=..." lines); the test reads it until the rank
 * exits, under a generous hang guard; SR_TEST_VERBOSE=1 prints it. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "base/clock.h"
#include "base/status.h"
#include "transport/tcp_wire.h"
#include "transport/transport.h"

#define GUARD_S 60.0 /* no rank may take longer than this: a hang, not slowness */
#define BIG ((int64_t)16 << 20)

static char dir[256], key_a[300], key_b[300], key_open[300];
static const unsigned char secret_a[32] = "0123456789abcdef0123456789abcdef";
static const unsigned char secret_b[32] = "fedcba9876543210fedcba9876543210";
/* the keys the ranks make of those files (tcp_mesh.c: SHA-256 of the bytes) */
static unsigned char key_of_a[crypto_hash_sha256_BYTES], key_of_b[crypto_hash_sha256_BYTES];

/* ---- the ranks ---- */

enum { ACT_NONE, ACT_EXCHANGE, ACT_RECV, ACT_SEND, ACT_RECV_LOOP, ACT_SEND_LOOP };

typedef struct {
    int rank, size;
    char hosts[400];
    const char *key, *job;
    double io_timeout_s, open_timeout_s;
    int64_t max_buffered;
    int act, peer;
    int64_t bytes;
    double sleep_s; /* before the action: a rank busy computing */
} rank_spec;

typedef struct {
    pid_t pid;
    int fd; /* read end of the rank's stderr */
} proc;

static unsigned char pattern(int from, int to, int64_t i) { return (unsigned char)(from * 37 + to * 11 + i * 7 + (i >> 9)); }

static void report(const char *what, int rc) {
    fprintf(stderr, "%s: rc=%d %s\n", what, rc, rc == SR_OK ? "" : sr_error_msg());
}

/* Every rank to every rank: bytes each way, checked. */
static int exchange(sr_tp *tp, const rank_spec *s) {
    int n = s->size, me = s->rank, rc = SR_OK;
    unsigned char **out = calloc((size_t)n, sizeof *out), **in = calloc((size_t)n, sizeof *in);
    sr_tp_req **q = calloc(2 * (size_t)n, sizeof *q);
    for (int p = 0; p < n; p++) {
        out[p] = malloc((size_t)s->bytes);
        in[p] = malloc((size_t)s->bytes);
        for (int64_t i = 0; i < s->bytes; i++) out[p][i] = pattern(me, p, i);
        if (rc == SR_OK) rc = sr_tp_irecv(tp, in[p], s->bytes, p, 3, &q[p]);
        if (rc == SR_OK) rc = sr_tp_isend(tp, out[p], s->bytes, p, 3, &q[n + p]);
    }
    int wrc = sr_tp_waitall(2 * n, q);
    if (rc == SR_OK) rc = wrc;
    for (int p = 0; p < n; p++) {
        for (int64_t i = 0; rc == SR_OK && i < s->bytes; i++)
            if (in[p][i] != pattern(p, me, i)) rc = sr_error_set(SR_EFORMAT, "byte %lld from rank %d is wrong", (long long)i, p);
        free(out[p]);
        free(in[p]);
    }
    free(out);
    free(in);
    free(q);
    return rc;
}

static int one(sr_tp *tp, const rank_spec *s, int send, char *buf) {
    sr_tp_req *q = NULL;
    int rc = send ? sr_tp_isend(tp, buf, s->bytes, s->peer, 1, &q) : sr_tp_irecv(tp, buf, s->bytes, s->peer, 1, &q);
    return rc != SR_OK ? rc : sr_tp_wait(q);
}

static void rank_main(const rank_spec *s) {
    sr_tp_opts o = sr_tp_opts_default();
    o.rank = s->rank;
    o.size = s->size;
    o.hosts = s->hosts;
    o.secret_file = s->key;
    o.job_id = s->job;
    o.io_timeout_s = s->io_timeout_s;
    o.timeout_s = s->open_timeout_s > 0 ? s->open_timeout_s : 20;
    o.max_buffered_bytes = s->max_buffered;
    sr_tp *tp = NULL;
    int rc = sr_tp_open(&tp, "tcp", &o);
    report("open", rc);
    if (rc != SR_OK) return;
    if (s->sleep_s > 0) usleep((useconds_t)(s->sleep_s * 1e6));
    char *buf = s->bytes ? calloc(1, (size_t)s->bytes) : NULL;
    switch (s->act) {
    case ACT_EXCHANGE: rc = exchange(tp, s); break;
    case ACT_RECV: rc = one(tp, s, 0, buf); break;
    case ACT_SEND: rc = one(tp, s, 1, buf); break;
    case ACT_RECV_LOOP:
    case ACT_SEND_LOOP:
        for (int round = 0; rc == SR_OK; round++) {
            rc = one(tp, s, s->act == ACT_SEND_LOOP, buf);
            if (rc == SR_OK) fprintf(stderr, "round %d\n", round);
        }
        break;
    default: break;
    }
    if (s->act != ACT_NONE) report("op", rc);
    free(buf);
    sr_tp_close(tp);
}

/* the processes this test started and has not reaped: killed if it fails */
static pid_t live[16];
static int n_live;

static void reaped(pid_t pid) {
    for (int i = 0; i < n_live; i++)
        if (live[i] == pid) live[i] = live[--n_live];
}

static void kill_and_reap(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    reaped(pid);
}

/* what the processes said, freed after each test (also a failed one, so
 * that the processes of later tests do not inherit it as a leak) */
static char *said[16];
static int n_said;

static int kill_leftovers(void **state) {
    while (n_live > 0) kill_and_reap(live[0]);
    while (n_said > 0) free(said[--n_said]);
    return 0;
}

/* Forks a process running fn(arg) with its stderr into a pipe. */
static proc spawn(void (*fn)(const void *), const void *arg) {
    if (n_live == (int)(sizeof live / sizeof live[0])) fail_msg("too many processes");
    int p[2];
    if (pipe(p) != 0) fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 2);
        dup2(p[1], 1);
        close(p[1]);
        fn(arg);
        fflush(NULL);
        exit(0); /* exit, not _exit: the sanitizer build checks this process for leaks too */
    }
    close(p[1]);
    live[n_live++] = pid;
    return (proc){pid, p[0]};
}

static void run_rank(const void *arg) { rank_main(arg); }
static proc spawn_rank(const rank_spec *s) { return spawn(run_rank, s); }

/* What a process said goes to stderr, not into the failure message: cmocka
 * cuts long messages short, and the TAP line after it must start a line. */
static void show(const char *who, const char *text) {
    fprintf(stderr, "---- %s said:\n%s%s----\n", who, text, text[0] && text[strlen(text) - 1] != '\n' ? "\n" : "");
    fflush(stderr);
}

/* Reads the process's output until it exits; kills it and fails the test if
 * that takes longer than the hang guard. Returns the text (the test's
 * teardown frees it). */
static char *collect(proc *pr) {
    if (n_said == (int)(sizeof said / sizeof said[0])) fail_msg("too many outputs");
    size_t cap = 1 << 14, len = 0;
    char *text = malloc(cap);
    said[n_said++] = text;
    double end = sr_now() + GUARD_S;
    for (;;) {
        struct pollfd pf = {pr->fd, POLLIN, 0};
        int ms = (int)((end - sr_now()) * 1000);
        if (ms <= 0 || poll(&pf, 1, ms) == 0) {
            kill_and_reap(pr->pid);
            text[len] = '\0';
            show("the hung process", text);
            fail_msg("process %d still running after %g s (a hang)", (int)pr->pid, GUARD_S);
        }
        if (len + 4096 >= cap) text = said[n_said - 1] = realloc(text, cap *= 2);
        ssize_t k = read(pr->fd, text + len, cap - len - 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        len += (size_t)k;
    }
    text[len] = '\0';
    if (getenv("SR_TEST_VERBOSE")) show("a process", text);
    close(pr->fd);
    int st = 0;
    waitpid(pr->pid, &st, 0);
    reaped(pr->pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        show("the failed process", text);
        fail_msg("process %d ended with status 0x%x (a crash or a sanitizer report)", (int)pr->pid, st);
    }
    return text;
}

/* Reads the process's output until a line holds want. */
static void await_line(proc *pr, const char *want) {
    char buf[8192];
    size_t len = 0;
    double end = sr_now() + GUARD_S;
    while (len < sizeof buf - 1) {
        struct pollfd pf = {pr->fd, POLLIN, 0};
        int ms = (int)((end - sr_now()) * 1000);
        if (ms <= 0 || poll(&pf, 1, ms) == 0) break;
        ssize_t k = read(pr->fd, buf + len, 1); /* a byte at a time: leave the rest for collect */
        if (k <= 0) break;
        len++;
        buf[len] = '\0';
        if (strstr(buf, want)) return;
    }
    buf[len] = '\0';
    kill_and_reap(pr->pid);
    show("the process", buf);
    fail_msg("process %d never said '%s'", (int)pr->pid, want);
}

static void expect_has(const char *text, const char *want, const char *who) {
    if (strstr(text, want)) return;
    show(who, text);
    fail_msg("%s: wanted '%s' in its output (above)", who, want);
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        fail_msg("no free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* A job of size ranks on fresh loopback ports; every rank gets key_a and
 * job "faults", and does nothing until the test says. */
static void job(rank_spec *s, int size, int ports[]) {
    char hosts[400];
    size_t at = 0;
    for (int p = 0; p < size; p++) {
        ports[p] = free_port();
        at += (size_t)snprintf(hosts + at, sizeof hosts - at, "%s127.0.0.1:%d", p ? "," : "", ports[p]);
    }
    for (int p = 0; p < size; p++) {
        memset(&s[p], 0, sizeof s[p]);
        s[p].rank = p;
        s[p].size = size;
        snprintf(s[p].hosts, sizeof s[p].hosts, "%s", hosts);
        s[p].key = key_a;
        s[p].job = "faults";
    }
}

/* A job of two where rank 0 will do act (send or receive bytes) with rank
 * 1, and the test plays rank 1 over raw sockets. */
static void facing_raw_peer(rank_spec s[2], int ports[2], int act, int64_t bytes) {
    job(s, 2, ports);
    s[0].act = act;
    s[0].peer = 1;
    s[0].bytes = bytes;
}

/* ---- the faulty peer: raw sockets ---- */

/* retry: while refused (the rank may not be listening yet) */
static int raw_connect_to(const char *ip, int port, int retry) {
    double end = sr_now() + GUARD_S;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, ip, &a.sin_addr);
        struct timeval tv = {20, 0}; /* hang guard on every blocking call */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
        int e = errno;
        close(fd);
        errno = e;
        if (!retry || e != ECONNREFUSED || sr_now() > end) return -1;
        usleep(20000);
    }
}

static int raw_connect(int port) {
    int fd = raw_connect_to("127.0.0.1", port, 1);
    if (fd < 0) fail_msg("cannot connect to 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

/* 1 if all n bytes went (the victims use this: they may not fail_msg) */
static int send_all(int fd, const void *b, size_t n) {
    for (size_t sent = 0; sent < n;) {
        ssize_t k = send(fd, (const char *)b + sent, n - sent, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        sent += (size_t)k;
    }
    return 1;
}

static void raw_send(int fd, const void *b, size_t n) {
    if (!send_all(fd, b, n)) fail_msg("raw send of %zu bytes: %s", n, strerror(errno));
}

/* Reads exactly n bytes; 0 if the peer closed first. */
static int raw_recv(int fd, void *b, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t k = recv(fd, (char *)b + got, n - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        got += (size_t)k;
    }
    return 1;
}

/* Waits for the far end to close: reads and drops until EOF or reset. */
static void raw_await_close(int fd) {
    char b[4096];
    for (;;) {
        ssize_t k = recv(fd, b, sizeof b, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) fail_msg("the connection was not closed");
        if (k <= 0) return;
    }
}

static void make_hello(unsigned char out[SR_TP__HELLO_BYTES], int rank, int size, const char *job_id) {
    sr_tp__hello h;
    memset(&h, 0, sizeof h);
    h.rank = rank;
    h.size = size;
    snprintf(h.job_id, sizeof h.job_id, "%s", job_id);
    for (int i = 0; i < SR_TP__NONCE_BYTES; i++) h.nonce[i] = (unsigned char)(rand() & 0xff);
    sr_tp__hello_encode(out, &h);
}

/* Dials as rank `as` with hello, reads the listener's hello and proof into
 * reply (0 if it closed instead). */
static int raw_hello(int fd, const unsigned char hello[SR_TP__HELLO_BYTES],
                     unsigned char reply[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES]) {
    return send_all(fd, hello, SR_TP__HELLO_BYTES) && raw_recv(fd, reply, SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES);
}

/* The whole handshake as rank `as` of the job, with this secret; 1 if
 * accepted. */
static int raw_join(int fd, int as, int size, const char *job_id, const unsigned char *key, size_t key_len) {
    unsigned char hello[SR_TP__HELLO_BYTES], reply[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES], a[SR_TP__AUTH_BYTES];
    make_hello(hello, as, size, job_id);
    if (!raw_hello(fd, hello, reply)) return 0;
    sr_tp__auth_encode(a, key, key_len, SR_TP__ROLE_CONNECTOR, hello, reply);
    unsigned char acc[SR_TP__ACCEPT_BYTES];
    return send_all(fd, a, sizeof a) && raw_recv(fd, acc, sizeof acc) && sr_tp__accept_check(acc, sizeof acc) == SR_OK;
}

static int joined(int port) {
    int fd = raw_connect(port);
    if (!raw_join(fd, 1, 2, "faults", key_of_a, sizeof key_of_a)) fail_msg("the raw peer's handshake was refused");
    return fd;
}

static int send_frame(int fd, int32_t tag, int64_t len) {
    unsigned char h[SR_TP__FRAME_BYTES];
    sr_tp__frame_encode(h, tag, len);
    return send_all(fd, h, sizeof h);
}

static void raw_frame(int fd, int32_t tag, int64_t len) {
    if (!send_frame(fd, tag, len)) fail_msg("raw send of a frame header: %s", strerror(errno));
}

/* ---- setup ---- */

static void write_key(const char *path, const unsigned char *key, size_t n, mode_t mode) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(key, 1, n, f) != n || fclose(f) != 0 || chmod(path, mode) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
}

static int setup(void **state) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/starring-tcp-faults-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return -1;
    snprintf(key_a, sizeof key_a, "%s/key-a", dir);
    snprintf(key_b, sizeof key_b, "%s/key-b", dir);
    snprintf(key_open, sizeof key_open, "%s/key-open", dir);
    write_key(key_a, secret_a, sizeof secret_a, 0600);
    write_key(key_b, secret_b, sizeof secret_b, 0600);
    write_key(key_open, secret_a, sizeof secret_a, 0644);
    crypto_hash_sha256(key_of_a, secret_a, sizeof secret_a);
    crypto_hash_sha256(key_of_b, secret_b, sizeof secret_b);
    srand((unsigned)getpid());
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int teardown(void **state) {
    unlink(key_a);
    unlink(key_b);
    unlink(key_open);
    rmdir(dir);
    return 0;
}

/* ---- tests ---- */

/* Three real ranks, the lower two listening on their own address only. */
static void test_three_ranks_exchange(void **state) {
    rank_spec s[3];
    int ports[3];
    job(s, 3, ports);
    proc pr[3];
    for (int p = 0; p < 3; p++) {
        s[p].act = ACT_EXCHANGE;
        s[p].bytes = 100000;
        pr[p] = spawn_rank(&s[p]);
    }
    for (int p = 0; p < 3; p++) {
        char *t = collect(&pr[p]);
        expect_has(t, "open: rc=0", "rank");
        expect_has(t, "op: rc=0", "rank");
    }
}

/* Rank 0 listens on 127.0.0.1 as SR_TCP_HOSTS says, not on every address:
 * 127.0.0.2 (loopback too, but not named) gets no answer. */
static void test_listens_on_named_address_only(void **state) {
    rank_spec s[2];
    int ports[2];
    job(s, 2, ports);
    proc r0 = spawn_rank(&s[0]);
    close(raw_connect(ports[0])); /* up */
    int fd = raw_connect_to("127.0.0.2", ports[0], 0);
    if (fd >= 0) {
        close(fd);
        fail_msg("rank 0 accepted a connection on 127.0.0.2, an address SR_TCP_HOSTS does not name");
    }
    proc r1 = spawn_rank(&s[1]);
    char *t0 = collect(&r0), *t1 = collect(&r1);
    expect_has(t0, "open: rc=0", "rank 0");
    expect_has(t1, "open: rc=0", "rank 1");
}

/* Without a secret, or with one others can read, open fails naming the
 * variable; the job id is checked too. */
static void test_secret_settings(void **state) {
    sr_tp_opts o = sr_tp_opts_default();
    o.rank = 0;
    o.size = 2;
    o.base_port = free_port();
    sr_tp *tp = (sr_tp *)1;
    unsetenv("SR_TCP_SECRET_FILE");
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EINVAL);
    assert_null(tp);
    expect_has(sr_error_msg(), "SR_TCP_SECRET_FILE", "no secret");
    o.secret_file = key_open;
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EINVAL);
    expect_has(sr_error_msg(), "chmod 600", "readable secret");
    char missing[400];
    snprintf(missing, sizeof missing, "%s/none", dir);
    o.secret_file = missing;
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EIO);
    expect_has(sr_error_msg(), missing, "missing secret");
    o.secret_file = key_a;
    o.job_id = "two words";
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EINVAL);
    expect_has(sr_error_msg(), "sr_tp_opts.job_id", "bad job id");
    o.job_id = NULL;
    setenv("SR_TCP_IO_TIMEOUT", "soon", 1);
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EINVAL);
    expect_has(sr_error_msg(), "SR_TCP_IO_TIMEOUT='soon'", "bad timeout");
    unsetenv("SR_TCP_IO_TIMEOUT");
    setenv("SR_TCP_MAX_MSG", "12Q", 1);
    assert_int_equal(sr_tp_open(&tp, "tcp", &o), SR_EINVAL);
    expect_has(sr_error_msg(), "SR_TCP_MAX_MSG='12Q'", "bad cap");
    unsetenv("SR_TCP_MAX_MSG");
}

/* A job of two ranks that will exchange 5000 bytes; rank 0 starts now and
 * rank 1 waits for the test (which plays impostors at rank 0 first). */
static proc rank0_of_exchange(rank_spec s[2], int ports[2]) {
    job(s, 2, ports);
    s[0].act = s[1].act = ACT_EXCHANGE;
    s[0].bytes = s[1].bytes = 5000;
    return spawn_rank(&s[0]);
}

/* Then the real rank 1 joins and the exchange succeeds on both; returns
 * rank 0's log. */
static char *rank1_completes(proc *r0, const rank_spec *s1) {
    proc r1 = spawn_rank(s1);
    char *t0 = collect(r0), *t1 = collect(&r1);
    expect_has(t0, "op: rc=0", "rank 0");
    expect_has(t1, "op: rc=0", "rank 1");
    return t0;
}

/* Connections that are not a rank of this job, each refused with its reason
 * in rank 0's log while the open goes on; then the real rank 1 gets in. */
static void test_refused_connections(void **state) {
    rank_spec s[2];
    int ports[2];
    proc r0 = rank0_of_exchange(s, ports);
    unsigned char hello[SR_TP__HELLO_BYTES], reply[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES], a[SR_TP__AUTH_BYTES];

    int fd = raw_connect(ports[0]); /* garbage */
    memset(hello, 'x', sizeof hello);
    raw_send(fd, hello, sizeof hello);
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* the old clear-text hello: magic, rank, size */
    memset(hello, 0, sizeof hello);
    memcpy(hello, "SHLO", 4);
    hello[4] = 1;
    hello[8] = 2;
    raw_send(fd, hello, sizeof hello);
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* another job, even with the secret */
    make_hello(hello, 1, 2, "other-job");
    assert_true(raw_hello(fd, hello, reply));
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* a job of another size */
    make_hello(hello, 1, 3, "faults");
    assert_true(raw_hello(fd, hello, reply));
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* a rank that should not dial rank 0 */
    make_hello(hello, 0, 2, "faults");
    assert_true(raw_hello(fd, hello, reply));
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* rank 1 without the secret */
    make_hello(hello, 1, 2, "faults");
    assert_true(raw_hello(fd, hello, reply));
    sr_tp__auth_encode(a, key_of_b, sizeof key_of_b, SR_TP__ROLE_CONNECTOR, hello, reply);
    raw_send(fd, a, sizeof a);
    raw_await_close(fd);
    close(fd);

    fd = raw_connect(ports[0]); /* rank 1 reflecting rank 0's own proof back */
    make_hello(hello, 1, 2, "faults");
    assert_true(raw_hello(fd, hello, reply));
    assert_int_equal(sr_tp__auth_check(reply + SR_TP__HELLO_BYTES, SR_TP__AUTH_BYTES, key_of_a, sizeof key_of_a,
                                       SR_TP__ROLE_LISTENER, hello, reply),
                     SR_OK);
    raw_send(fd, reply + SR_TP__HELLO_BYTES, SR_TP__AUTH_BYTES);
    raw_await_close(fd);
    close(fd);

    char *t0 = rank1_completes(&r0, &s[1]);
    expect_has(t0, "bad magic 0x78787878", "garbage");
    expect_has(t0, "bad magic 0x4f4c4853", "old hello");
    expect_has(t0, "belongs to job 'other-job', this is job 'faults'", "other job");
    expect_has(t0, "this job has 2", "other size");
    expect_has(t0, "only ranks above 0", "rank 0 claim");
    expect_has(t0, "claims rank 1: wrong proof of the job secret", "no secret");
}

/* Connections that stay silent, before or after their hello, cost rank 0 a
 * slot each but do not hold up the job: the real rank 1 gets in while they
 * are still pending, and they are closed once every rank is in. More of
 * them than rank 0 has slots for push out the oldest, not the real rank. */
static void test_idle_connections_do_not_stall(void **state) {
    enum { IDLE = 40 };
    rank_spec s[2];
    int ports[2];
    proc r0 = rank0_of_exchange(s, ports);
    int claimed = raw_connect(ports[0]); /* claims rank 1, then never proves it */
    unsigned char hello[SR_TP__HELLO_BYTES], reply[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES];
    make_hello(hello, 1, 2, "faults");
    assert_true(raw_hello(claimed, hello, reply));
    int idle[IDLE];
    for (int i = 0; i < IDLE; i++) idle[i] = raw_connect(ports[0]);
    char *t0 = rank1_completes(&r0, &s[1]);
    expect_has(t0, "dropped for a newer connection: too many handshakes pending", "rank 0");
    expect_has(t0, "unfinished handshake(s) once every rank was in", "rank 0");
    raw_await_close(claimed);
    close(claimed);
    for (int i = 0; i < IDLE; i++) {
        raw_await_close(idle[i]);
        close(idle[i]);
    }
}

/* Real ranks with different secrets, or of different jobs, refuse each
 * other, and both sides say why. */
static void test_mismatched_ranks(void **state) {
    for (int k = 0; k < 2; k++) {
        rank_spec s[2];
        int ports[2];
        job(s, 2, ports);
        if (k == 0) s[1].key = key_b;
        else s[1].job = "other-job";
        s[0].open_timeout_s = 3;
        proc r0 = spawn_rank(&s[0]), r1 = spawn_rank(&s[1]);
        char *t0 = collect(&r0), *t1 = collect(&r1);
        expect_has(t0, "open: rc=-8", "rank 0");
        expect_has(t0, "timed out after 3 s waiting for rank(s) 1 to connect", "rank 0");
        expect_has(t1, "open: rc=-8", "rank 1");
        if (k == 0) {
            expect_has(t1, "rank 0 at 127.0.0.1", "rank 1");
            expect_has(t1, "did not prove it holds the job secret", "rank 1");
        } else {
            expect_has(t1, "belongs to job 'faults', this rank to job 'other-job'", "rank 1");
            expect_has(t0, "it belongs to job 'other-job'", "rank 0");
        }
    }
}

/* After the handshake: a bad magic, a length of 2^46 (refused, never
 * allocated), a payload cut short, a header cut short. */
static void test_bad_frames(void **state) {
    static const struct {
        const char *name, *want1, *want2;
        int rc;
    } cases[] = {
        {"bad magic", "rank 1 sent a bad frame", "bad magic", SR_EFORMAT},
        {"2^46 bytes", "70368744177664 bytes (tag 1) is over the cap", "SR_TCP_MAX_MSG", SR_ERANGE},
        {"short payload", "rank 1 closed the connection 100 bytes into a 1000-byte message (tag 1)", "", SR_ECOMM},
        {"short header", "rank 1 closed the connection after 10 of the 16 bytes of a frame header", "", SR_ECOMM},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        rank_spec s[2];
        int ports[2];
        facing_raw_peer(s, ports, ACT_RECV, 1000);
        proc r0 = spawn_rank(&s[0]);
        int fd = joined(ports[0]);
        unsigned char junk[SR_TP__FRAME_BYTES + 100];
        memset(junk, 0x5a, sizeof junk);
        if (k == 0) {
            raw_send(fd, junk, SR_TP__FRAME_BYTES);
        } else if (k == 1) {
            raw_frame(fd, 1, (int64_t)1 << 46);
        } else if (k == 2) {
            raw_frame(fd, 1, 1000);
            raw_send(fd, junk, 100);
        } else {
            raw_send(fd, junk, 10);
        }
        shutdown(fd, SHUT_WR);
        char *t = collect(&r0);
        char want[64];
        snprintf(want, sizeof want, "op: rc=%d", cases[k].rc);
        expect_has(t, want, cases[k].name);
        expect_has(t, cases[k].want1, cases[k].name);
        expect_has(t, cases[k].want2, cases[k].name);
        close(fd);
    }
}

/* 200 frames of 1 MiB on a tag never received: the buffer for them is
 * capped, and the peer fails when it goes over. */
static void test_unexpected_frames_capped(void **state) {
    rank_spec s[2];
    int ports[2];
    facing_raw_peer(s, ports, ACT_RECV, 16);
    s[0].max_buffered = 8 << 20;
    proc r0 = spawn_rank(&s[0]);
    int fd = joined(ports[0]);
    char *mib = calloc(1, 1 << 20);
    for (int i = 0; i < 200; i++) {
        unsigned char h[SR_TP__FRAME_BYTES];
        sr_tp__frame_encode(h, 77, 1 << 20);
        if (send(fd, h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h ||
            send(fd, mib, 1 << 20, MSG_NOSIGNAL) != 1 << 20)
            break; /* rank 0 dropped us: what we want */
    }
    free(mib);
    char *t = collect(&r0);
    expect_has(t, "op: rc=-6", "rank 0");
    expect_has(t, "rank 1 sent a 1048576-byte message (tag 77) before its receive was posted", "rank 0");
    expect_has(t, "over the cap of 8388608 (SR_TCP_MAX_BUFFERED)", "rank 0");
    close(fd);
}

/* A peer that finished the handshake and then says nothing fails after the
 * I/O timeout; a real peer that computes for longer than that between
 * messages does not, since its progress thread sends heartbeats. */
static void test_silent_and_slow_peers(void **state) {
    rank_spec s[2];
    int ports[2];
    facing_raw_peer(s, ports, ACT_RECV, 64);
    s[0].io_timeout_s = 1;
    proc r0 = spawn_rank(&s[0]);
    int fd = joined(ports[0]);
    char *t = collect(&r0);
    expect_has(t, "op: rc=-8", "silent peer");
    expect_has(t, "rank 1 has sent nothing for", "silent peer");
    expect_has(t, "SR_TCP_IO_TIMEOUT is 1 s", "silent peer");
    close(fd);

    job(s, 2, ports);
    s[0].act = ACT_RECV;
    s[1].act = ACT_SEND;
    s[0].peer = 1;
    s[1].peer = 0;
    s[0].bytes = s[1].bytes = 64;
    s[0].io_timeout_s = s[1].io_timeout_s = 1;
    s[1].sleep_s = 3; /* three I/O timeouts of "compute" before the send */
    proc r[2] = {spawn_rank(&s[0]), spawn_rank(&s[1])};
    for (int p = 0; p < 2; p++) {
        t = collect(&r[p]);
        expect_has(t, "op: rc=0", "slow peer");
    }
}

typedef struct {
    int port, read_first; /* read_first: bytes to take of rank 0's message */
    int ready;            /* write end of a pipe: "ready" once mid-transfer */
} victim_spec;

/* A peer that joins as rank 1, gets into the middle of a 16 MiB message
 * (sending it, or receiving it), says so, and waits to be killed. */
static void victim_main(const void *arg) {
    const victim_spec *v = arg;
    int fd = raw_connect_to("127.0.0.1", v->port, 1);
    if (fd < 0 || !raw_join(fd, 1, 2, "faults", key_of_a, sizeof key_of_a)) return;
    char *buf = calloc(1, 3 << 20);
    int ok = v->read_first ? raw_recv(fd, buf, (size_t)v->read_first)
                           : send_frame(fd, 1, BIG) && send_all(fd, buf, 3 << 20);
    if (!ok || write(v->ready, "ready\n", 6) != 6) {
        free(buf);
        return;
    }
    pause();
}

/* SIGKILL in the middle of a 16 MiB message, either way: the rank on the
 * other end fails at once with a message naming rank 1. */
static void test_peer_killed_mid_transfer(void **state) {
    for (int k = 0; k < 2; k++) {
        rank_spec s[2];
        int ports[2];
        facing_raw_peer(s, ports, k == 0 ? ACT_RECV : ACT_SEND, BIG);
        proc r0 = spawn_rank(&s[0]);
        int ready[2];
        if (pipe(ready) != 0) fail_msg("pipe: %s", strerror(errno));
        victim_spec v = {ports[0], k == 0 ? 0 : 1 << 20, ready[1]};
        proc victim = spawn(victim_main, &v);
        close(ready[1]);
        char line[8] = "";
        struct pollfd pf = {ready[0], POLLIN, 0};
        if (poll(&pf, 1, (int)(GUARD_S * 1000)) != 1 || read(ready[0], line, 6) != 6)
            fail_msg("the victim never got into the transfer");
        close(ready[0]);
        kill_and_reap(victim.pid);
        close(victim.fd);
        char *t = collect(&r0);
        expect_has(t, "op: rc=-8", k == 0 ? "receiver" : "sender");
        expect_has(t, "rank 1", k == 0 ? "receiver" : "sender");
        if (k == 0) expect_has(t, "-byte message", "receiver");
    }
}

/* A real rank SIGKILLed while it streams 16 MiB messages to rank 0: rank 0,
 * and rank 2 that waits on it, both fail naming rank 1. */
static void test_real_rank_killed(void **state) {
    rank_spec s[3];
    int ports[3];
    job(s, 3, ports);
    s[0].act = ACT_RECV_LOOP;
    s[0].peer = 1;
    s[1].act = ACT_SEND_LOOP;
    s[1].peer = 0;
    s[2].act = ACT_RECV;
    s[2].peer = 1;
    s[0].bytes = s[1].bytes = BIG;
    s[2].bytes = 8;
    proc r[3];
    for (int p = 0; p < 3; p++) r[p] = spawn_rank(&s[p]);
    await_line(&r[0], "round 2\n");
    kill_and_reap(r[1].pid);
    close(r[1].fd);
    for (int p = 0; p < 3; p += 2) {
        char *t = collect(&r[p]);
        expect_has(t, "op: rc=-8", p == 0 ? "rank 0" : "rank 2");
        expect_has(t, "rank 1", p == 0 ? "rank 0" : "rank 2");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_three_ranks_exchange, kill_leftovers),
        cmocka_unit_test_teardown(test_listens_on_named_address_only, kill_leftovers),
        cmocka_unit_test_teardown(test_secret_settings, kill_leftovers),
        cmocka_unit_test_teardown(test_refused_connections, kill_leftovers),
        cmocka_unit_test_teardown(test_idle_connections_do_not_stall, kill_leftovers),
        cmocka_unit_test_teardown(test_mismatched_ranks, kill_leftovers),
        cmocka_unit_test_teardown(test_bad_frames, kill_leftovers),
        cmocka_unit_test_teardown(test_unexpected_frames_capped, kill_leftovers),
        cmocka_unit_test_teardown(test_silent_and_slow_peers, kill_leftovers),
        cmocka_unit_test_teardown(test_peer_killed_mid_transfer, kill_leftovers),
        cmocka_unit_test_teardown(test_real_rank_killed, kill_leftovers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
