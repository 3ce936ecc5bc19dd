/* net/http.c over real loopback sockets: the server runs its loop on a
 * thread of its own, the test is a plain blocking-socket client. Keep-alive
 * and pipelined requests answered in order, a chunked stream, a body over
 * the cap (refused on its Content-Length), headers over the cap, garbage,
 * an unknown path, a slow client, a connection over the limit, and a client
 * that disconnects mid-stream (the handler hears of it). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/status.h"
#include "net/http.h"
#include "tests/support/unit_main.h"

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    sr_http *h;
    int port;
    atomic_int gone;       /* streams whose client went away */
    atomic_int events;     /* stream events written */
} server;

typedef struct {
    uv_timer_t t;
    sr_http_req *rq;
    int n;
} streamer;

static void on_hello(sr_http_req *rq) {
    size_t n;
    sr_http_req_body(rq, &n);
    char b[64];
    int k = snprintf(b, sizeof b, "hello %zu END", n);
    sr_http_respond(rq, 200, "text/plain", b, (size_t)k);
}

static void on_echo(sr_http_req *rq) {
    size_t n;
    const char *b = sr_http_req_body(rq, &n);
    sr_http_respond(rq, 200, "text/plain", b, n);
}

static void streamer_closed(uv_handle_t *h) { free(h->data); }

static void on_tick(uv_timer_t *t) {
    streamer *s = t->data;
    server *sv = sr_http_data(sr_http_req_server(s->rq));
    char ev[64];
    int k = snprintf(ev, sizeof ev, "data: %d\n\n", s->n++);
    sr_http_stream_write(s->rq, ev, (size_t)k);
    atomic_fetch_add(&sv->events, 1);
    if (s->n == 200) {
        sr_http_stream_end(s->rq);
        uv_close((uv_handle_t *)&s->t, streamer_closed);
    }
}

static void stream_gone(sr_http_req *rq) {
    streamer *s = *sr_http_req_slot(rq);
    server *sv = sr_http_data(sr_http_req_server(rq));
    atomic_fetch_add(&sv->gone, 1);
    uv_close((uv_handle_t *)&s->t, streamer_closed);
}

static void on_stream(sr_http_req *rq) {
    streamer *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->rq = rq;
    server *sv = sr_http_data(sr_http_req_server(rq));
    uv_timer_init(&sv->loop, &s->t);
    s->t.data = s;
    *sr_http_req_slot(rq) = s;
    sr_http_req_on_gone(rq, stream_gone);
    sr_http_stream_start(rq, 200, "text/event-stream");
    uv_timer_start(&s->t, on_tick, 0, 10);
}

static void error_json(int status, const char *msg, char *buf, size_t cap) {
    snprintf(buf, cap, "{\"error\": {\"message\": \"%s\", \"code\": %d}}", msg, status);
}

static void on_stop(uv_async_t *a) {
    server *sv = a->data;
    sr_http_close(sv->h);
    uv_close((uv_handle_t *)&sv->stop, NULL);
}

static void *run(void *arg) {
    server *sv = arg;
    uv_run(&sv->loop, UV_RUN_DEFAULT);
    return NULL;
}

static const sr_http_route routes[] = {
    {"GET", "/hello", on_hello},
    {"POST", "/echo", on_echo},
    {"GET", "/stream", on_stream},
};

static server *start(const sr_http_opts *o) {
    server *sv = calloc(1, sizeof *sv);
    assert_non_null(sv);
    assert_int_equal(uv_loop_init(&sv->loop), 0);
    uv_async_init(&sv->loop, &sv->stop, on_stop);
    sv->stop.data = sv;
    assert_int_equal(sr_http_open(&sv->h, &sv->loop, "127.0.0.1", 0, routes, 3, o, sv), SR_OK);
    sv->port = sr_http_port(sv->h);
    assert_int_equal(pthread_create(&sv->thread, NULL, run, sv), 0);
    return sv;
}

static void finish(server *sv) {
    uv_async_send(&sv->stop);
    pthread_join(sv->thread, NULL);
    assert_int_equal(uv_loop_close(&sv->loop), 0);
    free(sv);
}

static int dial(const server *sv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sv->port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void put(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t k = write(fd, s, n);
        assert_true(k > 0);
        s += k;
        n -= (size_t)k;
    }
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Reads until buf holds `want` copies of needle, the peer closes, or 5 s
 * pass. Returns 1 if the peer closed. */
static int take(int fd, char *buf, size_t cap, const char *needle, int want) {
    size_t n = strlen(buf);
    for (int waited = 0; waited < 5000 && (!needle || count(buf, needle) < want);) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) == 0) {
            waited += 50;
            continue;
        }
        ssize_t k = read(fd, buf + n, cap - 1 - n);
        if (k <= 0) return 1;
        n += (size_t)k;
        buf[n] = 0;
    }
    return 0;
}

/* Fails unless each of the strings (NULL-terminated) is in buf. */
static void expect_in(const char *buf, ...) {
    va_list ap;
    va_start(ap, buf);
    for (const char *want; (want = va_arg(ap, const char *));)
        if (!strstr(buf, want)) fail_msg("'%s' is not in the answer:\n%s", want, buf);
    va_end(ap);
}

/* Sends req and reads its answer into buf (emptied first), as take does. */
static int ask(int fd, char *buf, size_t cap, const char *req, size_t n, const char *needle, int want) {
    buf[0] = 0;
    put(fd, req, n);
    return take(fd, buf, cap, needle, want);
}

static void test_keep_alive_and_pipelining(void **state) {
    server *sv = start(NULL);
    int fd = dial(sv);
    char buf[8192] = "";
    ask(fd, buf, sizeof buf, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 32, "END", 1);
    expect_in(buf, "HTTP/1.1 200 OK\r\n", "Connection: keep-alive", "hello 0 END", NULL);
    /* three in one write, answered in order on the same connection */
    const char *three = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nfirstEND"
                        "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nthi\r\n6\r\nrd END\r\n0\r\n\r\n";
    ask(fd, buf, sizeof buf, three, strlen(three), "END", 3);
    char *a = strstr(buf, "firstEND"), *b = strstr(buf, "hello 0 END"), *c = strstr(buf, "third END");
    assert_true(a && b && c && a < b && b < c);
    assert_int_equal(count(buf, "HTTP/1.1 200 OK"), 3);
    /* an unknown path and a wrong method keep the connection */
    ask(fd, buf, sizeof buf, "GET /nope HTTP/1.1\r\n\r\nDELETE /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n", 71, "END", 1);
    expect_in(buf, "HTTP/1.1 404 Not Found", "HTTP/1.1 405 Method Not Allowed", "hello 0 END", NULL);
    close(fd);
    finish(sv);
}

static void test_body_over_cap(void **state) {
    sr_http_opts o = {.max_body = 1024, .error_body = error_json, .error_type = "application/json"};
    server *sv = start(&o);
    int fd = dial(sv);
    char buf[8192] = "";
    /* refused on its Content-Length: none of the body is sent */
    put(fd, "POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 46);
    assert_int_equal(take(fd, buf, sizeof buf, NULL, 0), 1);
    expect_in(buf, "HTTP/1.1 413 Payload Too Large", "Content-Type: application/json",
              "{\"error\": {\"message\": \"the request body is over this server's 1024 bytes\"", NULL);
    close(fd);
    /* chunked, without a length: stopped once it passes the cap */
    fd = dial(sv);
    char big[1400];
    int k = snprintf(big, sizeof big, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n500\r\n");
    memset(big + k, 'x', 1280);
    ask(fd, buf, sizeof buf, big, (size_t)k + 1280, NULL, 0);
    assert_non_null(strstr(buf, "HTTP/1.1 413"));
    close(fd);
    /* a body just under the cap is served */
    fd = dial(sv);
    char ok[1200];
    k = snprintf(ok, sizeof ok, "POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n");
    memset(ok + k, 'y', 997);
    memcpy(ok + k + 997, "END", 3);
    ask(fd, buf, sizeof buf, ok, (size_t)k + 1000, "END", 1);
    assert_non_null(strstr(buf, "HTTP/1.1 200 OK"));
    close(fd);
    finish(sv);
}

static void test_headers_over_cap_and_garbage(void **state) {
    sr_http_opts o = {.max_header = 2048};
    server *sv = start(&o);
    int fd = dial(sv);
    char buf[8192] = "", req[6000];
    int k = snprintf(req, sizeof req, "GET /hello HTTP/1.1\r\nX-Big: ");
    memset(req + k, 'z', 4000);
    k += 4000;
    k += snprintf(req + k, sizeof req - (size_t)k, "\r\n\r\n");
    put(fd, req, (size_t)k);
    assert_int_equal(take(fd, buf, sizeof buf, NULL, 0), 1);
    assert_non_null(strstr(buf, "HTTP/1.1 431"));
    close(fd);
    fd = dial(sv);
    buf[0] = 0;
    put(fd, "\x16\x03\x01 not http at all\r\n\r\n", 24);
    assert_int_equal(take(fd, buf, sizeof buf, NULL, 0), 1);
    assert_non_null(strstr(buf, "HTTP/1.1 400 Bad Request"));
    close(fd);
    /* the server still serves */
    fd = dial(sv);
    ask(fd, buf, sizeof buf, "GET /hello HTTP/1.1\r\n\r\n", 23, "END", 1);
    assert_non_null(strstr(buf, "hello 0 END"));
    close(fd);
    finish(sv);
}

static void test_stream_and_disconnect(void **state) {
    server *sv = start(NULL);
    int fd = dial(sv);
    char buf[65536] = "";
    ask(fd, buf, sizeof buf, "GET /stream HTTP/1.1\r\n\r\n", 24, "data: 199\n\n\r\n0\r\n\r\n", 1);
    /* one chunk per event, then the last chunk */
    expect_in(buf, "Transfer-Encoding: chunked", "Content-Type: text/event-stream", "9\r\ndata: 0\n\n\r\n",
              "data: 199\n\n\r\n0\r\n\r\n", NULL);
    assert_int_equal(atomic_load(&sv->gone), 0);
    close(fd);
    /* the client leaves after a few events: the handler is told, the events stop */
    fd = dial(sv);
    ask(fd, buf, sizeof buf, "GET /stream HTTP/1.1\r\n\r\n", 24, "data: 3\n\n", 1);
    close(fd);
    for (int i = 0; i < 200 && atomic_load(&sv->gone) == 0; i++) usleep(10000);
    assert_int_equal(atomic_load(&sv->gone), 1);
    int ev = atomic_load(&sv->events);
    usleep(100000);
    assert_int_equal(atomic_load(&sv->events), ev);
    assert_true(ev < 200 + 100);
    finish(sv);
}

static void test_slow_client_and_connection_limit(void **state) {
    sr_http_opts o = {.timeout_s = 0.3, .max_conns = 2};
    server *sv = start(&o);
    int a = dial(sv), b = dial(sv), c = dial(sv);
    char buf[4096] = "";
    /* the third is over the limit */
    assert_int_equal(take(c, buf, sizeof buf, NULL, 0), 1);
    assert_non_null(strstr(buf, "HTTP/1.1 503"));
    close(c);
    /* a request begun and not finished in time is answered 408 */
    buf[0] = 0;
    put(a, "GET /hel", 8);
    assert_int_equal(take(a, buf, sizeof buf, NULL, 0), 1);
    assert_non_null(strstr(buf, "HTTP/1.1 408"));
    close(a);
    /* an idle keep-alive connection is closed quietly */
    buf[0] = 0;
    assert_int_equal(take(b, buf, sizeof buf, NULL, 0), 1);
    assert_string_equal(buf, "");
    close(b);
    int d = dial(sv);
    buf[0] = 0;
    put(d, "GET /hello HTTP/1.1\r\n\r\n", 23);
    take(d, buf, sizeof buf, "END", 1);
    assert_non_null(strstr(buf, "hello 0 END"));
    close(d);
    finish(sv);
}

SR_TEST_MAIN(cmocka_unit_test(test_keep_alive_and_pipelining), cmocka_unit_test(test_body_over_cap),
             cmocka_unit_test(test_headers_over_cap_and_garbage), cmocka_unit_test(test_stream_and_disconnect),
             cmocka_unit_test(test_slow_client_and_connection_limit))
