/* http: an HTTP/1.1 server on libuv with http-parser (see http.h). */
#include "net/http.h"

#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/status.h"
#include "net/conn.h"
#include "net/limit.h"

#define MAX_HEADERS 64

typedef struct conn conn;

struct sr_http_req {
    conn *c;
    const char *method;
    char *url, *path;               /* in the connection's head buffer */
    char *names[MAX_HEADERS], *values[MAX_HEADERS];
    int n_headers;
    sr_buf body;
    void *slot;
    void (*on_gone)(sr_http_req *rq);
    const char *route;              /* the route table's path once dispatched, else NULL */
    int keep_alive, streaming;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    sr_http *h;
    http_parser p;
    sr_http_req rq;                 /* the request being read or answered */
    char *head;                     /* request line and headers, NUL-separated; max_header + slack bytes */
    size_t n_head, cap_head;
    int last_was_value, in_message, busy, processing, reading, ending, closing, handles;
    int counted;                    /* holds a place under the connection limit */
    int64_t served;                 /* requests answered */
    int fail_status;                /* a parser callback's reason to answer an error */
    char fail_msg[160];
    sr_buf in;                      /* bytes read, parsed up to off_in */
    size_t off_in;
    char peer[64];
    conn *next, **pprev;
};

struct sr_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    sr_http_route *routes;
    int n_routes;
    sr_http_opts o;
    void *data;
    int port, refs, closing;
    sr_limit limit;
    conn *conns;
};

static http_parser_settings settings;

/* ------------------------------------------------------------ helpers */

const char *sr_http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static void server_unref(sr_http *h) {
    if (--h->refs > 0) return;
    free(h->routes);
    free(h);
}

typedef struct {
    uv_write_t w;
    conn *c;
    char data[];
} wr;

static void conn_close(conn *c, const char *why);

static void on_written(uv_write_t *w, int status) {
    wr *x = (wr *)w;
    if (status < 0 && status != UV_ECANCELED) conn_close(x->c, uv_strerror(status));
    free(x);
}

/* Writes head and body as one write (copied). */
static int conn_write(conn *c, const char *head, size_t nh, const char *body, size_t nb, const char *tail, size_t nt) {
    if (c->closing) return sr_error_set(SR_ECOMM, "http: the connection of %s is closed", c->peer);
    wr *x = malloc(sizeof *x + nh + nb + nt);
    if (!x) return sr_error_set(SR_ENOMEM, "http: out of memory for a response of %zu bytes", nh + nb + nt);
    x->c = c;
    memcpy(x->data, head, nh);
    if (nb) memcpy(x->data + nh, body, nb);
    if (nt) memcpy(x->data + nh + nb, tail, nt);
    uv_buf_t b = uv_buf_init(x->data, (unsigned)(nh + nb + nt));
    int rc = uv_write(&x->w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0) {
        free(x);
        conn_close(c, uv_strerror(rc));
        return sr_error_set(SR_ECOMM, "http: write to %s: %s", c->peer, uv_strerror(rc));
    }
    /* a client that reads nothing of a stream would hold its events here */
    if (c->tcp.write_queue_size > c->h->o.max_unsent) {
        conn_close(c, "it reads too slowly (over the unsent limit)");
        return sr_error_set(SR_ECOMM, "http: %s reads too slowly", c->peer);
    }
    return SR_OK;
}

static void on_handle_closed(uv_handle_t *hd) {
    conn *c = hd->data;
    if (--c->handles > 0) return;
    sr_http *h = c->h;
    sr_buf_free(&c->rq.body);
    free(c->head);
    sr_buf_free(&c->in);
    free(c);
    server_unref(h);
}

static void conn_close(conn *c, const char *why) {
    if (c->closing) return;
    c->closing = 1;
    if (why) SR_INFO("http: closing the connection of %s: %s", c->peer, why);
    if (c->busy && c->rq.on_gone) c->rq.on_gone(&c->rq);
    c->busy = 0;
    *c->pprev = c->next;
    if (c->next) c->next->pprev = c->pprev;
    if (c->counted) sr_limit_give(&c->h->limit);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *s, int status) { conn_close(s->data, NULL); }

/* Closes once what is written has gone out. */
static void conn_close_after_writes(conn *c) {
    if (c->closing || c->ending) return;
    c->ending = 1;
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) conn_close(c, NULL);
    else uv_read_stop((uv_stream_t *)&c->tcp);
}

static void on_timeout(uv_timer_t *t) {
    conn *c = t->data;
    if (c->busy) return;
    if (c->in_message) {
        SR_WARN("http: %s did not send its request within %.1f s", c->peer, c->h->o.timeout_s);
        char body[512];
        const char *msg = "the request was not received in time";
        if (c->h->o.error_body) c->h->o.error_body(408, msg, body, sizeof body);
        else snprintf(body, sizeof body, "%s\n", msg);
        char head[256];
        int nh = snprintf(head, sizeof head, "HTTP/1.1 408 Request Timeout\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n", c->h->o.error_body ? c->h->o.error_type : "text/plain",
                          strlen(body));
        if (conn_write(c, head, (size_t)nh, body, strlen(body), NULL, 0) == SR_OK) conn_close_after_writes(c);
    } else if (!c->served) {
        SR_WARN("http: closing the connection of %s: no request within %.1f s of connecting", c->peer,
                c->h->o.timeout_s);
        conn_close(c, NULL);
    } else {
        SR_INFO("http: closing the connection of %s: idle for %.3g s", c->peer, c->h->o.idle_s);
        conn_close(c, NULL);
    }
}

/* A request (or the first one) has timeout_s to arrive; between requests a
 * connection may idle for idle_s. */
static void timer_arm(conn *c, double s) { uv_timer_start(&c->timer, on_timeout, (uint64_t)(s * 1000), 0); }

/* ------------------------------------------------------------ answers */

static int head_line(conn *c, char *buf, size_t cap, int status, const char *type, const char *framing) {
    return snprintf(buf, cap, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sConnection: %s\r\n\r\n", status,
                    sr_http_reason(status), type, framing, c->rq.keep_alive ? "keep-alive" : "close");
}

static void conn_process(conn *c);
static void read_start(conn *c);

static void request_done(conn *c) {
    sr_http_req *rq = &c->rq;
    int keep = rq->keep_alive;
    c->busy = 0;
    rq->slot = NULL;
    rq->on_gone = NULL;
    rq->route = NULL;
    rq->streaming = 0;
    sr_buf_clear(&rq->body);
    c->served++;
    if (!keep) {
        conn_close_after_writes(c);
        return;
    }
    timer_arm(c, c->h->o.idle_s);
    if (!c->reading && !c->closing) read_start(c);
    conn_process(c);
}

int sr_http_respond(sr_http_req *rq, int status, const char *content_type, const char *body, size_t len) {
    conn *c = rq->c;
    if (!c->busy || rq->streaming) return sr_error_set(SR_ESTATE, "sr_http_respond: the request is not waiting for an answer");
    char head[512], framing[64];
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", len);
    if (c->h->o.on_status) c->h->o.on_status(rq->route, status, c->h->data);
    int nh = head_line(c, head, sizeof head, status, content_type, framing);
    int rc = conn_write(c, head, (size_t)nh, body, len, NULL, 0);
    if (!c->closing) request_done(c);
    return rc;
}

int sr_http_stream_start(sr_http_req *rq, int status, const char *content_type) {
    conn *c = rq->c;
    if (!c->busy || rq->streaming) return sr_error_set(SR_ESTATE, "sr_http_stream_start: the request is not waiting for an answer");
    char head[512];
    int nh = head_line(c, head, sizeof head, status, content_type, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
    if (c->h->o.on_status) c->h->o.on_status(rq->route, status, c->h->data);
    rq->streaming = 1;
    return conn_write(c, head, (size_t)nh, NULL, 0, NULL, 0);
}

int sr_http_stream_write(sr_http_req *rq, const char *data, size_t len) {
    if (!rq->streaming || !len) return sr_error_set(SR_ESTATE, "sr_http_stream_write: no stream started, or an empty chunk");
    char head[32];
    int nh = snprintf(head, sizeof head, "%zx\r\n", len);
    return conn_write(rq->c, head, (size_t)nh, data, len, "\r\n", 2);
}

int sr_http_stream_end(sr_http_req *rq) {
    conn *c = rq->c;
    if (!rq->streaming) return sr_error_set(SR_ESTATE, "sr_http_stream_end: no stream started");
    int rc = conn_write(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
    if (!c->closing) request_done(c);
    return rc;
}

/* The server's own error answer; the connection closes after it (logged
 * unless quiet: the caller has logged it). */
static void conn_fail(conn *c, int status, const char *msg, int quiet) {
    sr_http *h = c->h;
    char body[1024];
    if (h->o.error_body) h->o.error_body(status, msg, body, sizeof body);
    else snprintf(body, sizeof body, "%s\n", msg);
    if (!quiet) SR_INFO("http: %s: %d %s", c->peer, status, msg);
    c->rq.keep_alive = 0;
    char head[512], framing[64];
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", strlen(body));
    int nh = head_line(c, head, sizeof head, status, h->o.error_body ? h->o.error_type : "text/plain", framing);
    if (conn_write(c, head, (size_t)nh, body, strlen(body), NULL, 0) == SR_OK) conn_close_after_writes(c);
}

/* An error answer to a request that was read whole: the connection stays. */
static void answer_error(conn *c, int status, const char *msg) {
    char body[1024];
    if (c->h->o.error_body) c->h->o.error_body(status, msg, body, sizeof body);
    else snprintf(body, sizeof body, "%s\n", msg);
    sr_http_respond(&c->rq, status, c->h->o.error_body ? c->h->o.error_type : "text/plain", body, strlen(body));
}

/* ------------------------------------------------------------ parsing */

static int fail(conn *c, int status, const char *fmt, const char *arg) {
    c->fail_status = status;
    snprintf(c->fail_msg, sizeof c->fail_msg, fmt, arg);
    return -1;
}

/* Appends a piece of the head; a NUL ends each string. */
static int head_put(conn *c, const char *at, size_t len, int terminate) {
    if (c->n_head + len + 1 > c->h->o.max_header) {
        char cap[32];
        snprintf(cap, sizeof cap, "%zu", c->h->o.max_header);
        return fail(c, 431, "the request line and headers are over %s bytes", cap);
    }
    memcpy(c->head + c->n_head, at, len);
    c->n_head += len;
    if (terminate) c->head[c->n_head++] = 0;
    return 0;
}

static int on_message_begin(http_parser *p) {
    conn *c = p->data;
    sr_http_req *rq = &c->rq;
    c->in_message = 1;
    c->n_head = 0;
    c->last_was_value = 0;
    rq->n_headers = 0;
    sr_buf_clear(&rq->body);
    rq->url = c->head;
    timer_arm(c, c->h->o.timeout_s);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) { return head_put(p->data, at, len, 0); }

static int on_header_field(http_parser *p, const char *at, size_t len) {
    conn *c = p->data;
    sr_http_req *rq = &c->rq;
    if (c->last_was_value || rq->n_headers == 0) {
        /* ends the URL or the last value */
        if (head_put(c, "", 0, 1) != 0) return -1;
        if (rq->n_headers == MAX_HEADERS) return fail(c, 431, "more than %s headers", "64");
        rq->values[rq->n_headers] = NULL;
        rq->names[rq->n_headers++] = c->head + c->n_head;
        c->last_was_value = 0;
    }
    return head_put(c, at, len, 0);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    conn *c = p->data;
    sr_http_req *rq = &c->rq;
    if (!c->last_was_value) {
        if (head_put(c, "", 0, 1) != 0) return -1;
        rq->values[rq->n_headers - 1] = c->head + c->n_head;
        c->last_was_value = 1;
    }
    return head_put(c, at, len, 0);
}

static int on_headers_complete(http_parser *p) {
    conn *c = p->data;
    sr_http_req *rq = &c->rq;
    if (head_put(c, "", 0, 1) != 0) return -1;
    if (rq->n_headers > 0 && !c->last_was_value) rq->values[rq->n_headers - 1] = c->head + c->n_head - 1;
    rq->method = http_method_str((enum http_method)p->method);
    struct http_parser_url u;
    http_parser_url_init(&u);
    size_t n_url = strlen(rq->url);
    if (http_parser_parse_url(rq->url, n_url, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)))
        return fail(c, 400, "the request target '%.100s' is not a path", rq->url);
    rq->path = c->head + c->n_head;
    if (head_put(c, rq->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len, 1) != 0) return -1;
    if (p->content_length != ULLONG_MAX && p->content_length > c->h->o.max_body) {
        char cap[32];
        snprintf(cap, sizeof cap, "%zu", c->h->o.max_body);
        return fail(c, 413, "the request body is over this server's %s bytes", cap);
    }
    const char *expect = sr_http_req_header(rq, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (conn_write(c, cont, sizeof cont - 1, NULL, 0, NULL, 0) != SR_OK) return fail(c, 500, "%s", "write failed");
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    conn *c = p->data;
    sr_http_req *rq = &c->rq;
    if (rq->body.len + len > c->h->o.max_body) {
        char cap[32];
        snprintf(cap, sizeof cap, "%zu", c->h->o.max_body);
        return fail(c, 413, "the request body is over this server's %s bytes", cap);
    }
    if (sr_buf_reserve(&rq->body, len, 4096) != SR_OK) return fail(c, 413, "%s", "out of memory for the request body");
    sr_buf_append(&rq->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p) {
    conn *c = p->data;
    c->in_message = 0;
    c->busy = 1;
    c->rq.keep_alive = http_should_keep_alive(p);
    /* a body with no bytes is "" too */
    if (sr_buf_reserve(&c->rq.body, 0, 0) != SR_OK) return fail(c, 500, "%s", "out of memory");
    uv_timer_stop(&c->timer);
    /* answered before the next request is parsed (see conn_process) */
    http_parser_pause(p, 1);
    return 0;
}

static void dispatch(conn *c) {
    sr_http *h = c->h;
    sr_http_req *rq = &c->rq;
    int path_known = 0;
    rq->route = NULL;
    for (int i = 0; i < h->n_routes; i++) {
        if (strcmp(h->routes[i].path, rq->path) != 0) continue;
        path_known = 1;
        if (strcmp(h->routes[i].method, rq->method) == 0) {
            rq->route = h->routes[i].path;
            h->routes[i].handler(rq);
            return;
        }
    }
    char msg[256];
    snprintf(msg, sizeof msg, path_known ? "%s is not allowed on %.100s" : "no route %s %.100s", rq->method, rq->path);
    answer_error(c, path_known ? 405 : 404, msg);
}

static void conn_process(conn *c) {
    if (c->processing) return;
    c->processing = 1;
    while (!c->closing && !c->ending && !c->busy && c->off_in < c->in.len) {
        size_t n = http_parser_execute(&c->p, &settings, c->in.data + c->off_in, c->in.len - c->off_in);
        c->off_in += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
        if (c->fail_status) {
            conn_fail(c, c->fail_status, c->fail_msg, 0);
            break;
        }
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->p, 0);
            dispatch(c);
        } else if (e != HPE_OK) {
            conn_fail(c, 400, http_errno_description(e), 0);
            break;
        }
    }
    if (c->off_in == c->in.len) {
        sr_buf_clear(&c->in);
        c->off_in = 0;
    }
    c->processing = 0;
}

/* ------------------------------------------------------------ reading */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn *c = s->data;
    if (nread < 0) {
        free(b->base);
        const char *why = nread != UV_EOF ? uv_strerror((int)nread)
                          : c->busy       ? "the client went away mid-answer"
                          : c->in_message ? "the client went away mid-request"
                                          : NULL;
        conn_close(c, why);
        return;
    }
    if (nread > 0 && !c->closing && !c->ending) {
        sr_buf_consume(&c->in, c->off_in);
        c->off_in = 0;
        if (sr_buf_reserve(&c->in, (size_t)nread, 65536) != SR_OK) {
            free(b->base);
            conn_close(c, "out of memory for its input");
            return;
        }
        sr_buf_append(&c->in, b->base, (size_t)nread);
        /* pipelined requests wait while one is answered; past a request's
         * worth of them, stop reading until it is */
        if (c->busy && c->in.len > c->h->o.max_header + c->h->o.max_body) {
            uv_read_stop(s);
            c->reading = 0;
        }
        conn_process(c);
    }
    free(b->base);
}

static void read_start(conn *c) {
    if (uv_read_start((uv_stream_t *)&c->tcp, sr_conn_alloc, on_read) == 0) c->reading = 1;
    else conn_close(c, "cannot read");
}

static void on_connection(uv_stream_t *s, int status) {
    sr_http *h = s->data;
    if (status < 0 || h->closing) return;
    conn *c = calloc(1, sizeof *c);
    if (!c || !(c->head = malloc(h->o.max_header + 8))) {
        free(c);
        SR_WARN("http: out of memory for a connection");
        return;
    }
    c->h = h;
    c->rq.c = c;
    uv_tcp_init(h->loop, &c->tcp);
    uv_timer_init(h->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    h->refs++;
    c->next = h->conns;
    if (c->next) c->next->pprev = &c->next;
    c->pprev = &h->conns;
    h->conns = c;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    if (uv_accept(s, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, NULL);
        return;
    }
    sr_peer_name(&c->tcp, c->peer, sizeof c->peer);
    if (!(c->counted = sr_limit_take(&h->limit, "http", c->peer))) {
        char msg[128];
        snprintf(msg, sizeof msg, "this server takes %d connections at once: try again", h->o.max_conns);
        conn_fail(c, 503, msg, 1);
        return;
    }
    timer_arm(c, h->o.timeout_s);
    read_start(c);
}

/* ------------------------------------------------------------ server */

int sr_http_open(sr_http **out, uv_loop_t *loop, const char *host, int port, const sr_http_route *routes,
                 int n_routes, const sr_http_opts *opts, void *data) {
    *out = NULL;
    if (!loop || !host || n_routes < 0 || (n_routes && !routes))
        return sr_error_set(SR_EINVAL, "sr_http_open: NULL loop, host or routes");
    settings = (http_parser_settings){.on_message_begin = on_message_begin, .on_url = on_url,
                                      .on_header_field = on_header_field, .on_header_value = on_header_value,
                                      .on_headers_complete = on_headers_complete, .on_body = on_body,
                                      .on_message_complete = on_message_complete};
    sr_http *h = calloc(1, sizeof *h);
    if (!h || !(h->routes = malloc(sizeof *routes * (size_t)(n_routes + 1)))) {
        free(h);
        return sr_error_set(SR_ENOMEM, "http: out of memory");
    }
    if (n_routes) memcpy(h->routes, routes, sizeof *routes * (size_t)n_routes);
    h->n_routes = n_routes;
    h->loop = loop;
    h->data = data;
    h->o = opts ? *opts : (sr_http_opts){0};
    if (!h->o.max_header) h->o.max_header = 16 << 10;
    if (!h->o.max_body) h->o.max_body = 1 << 20;
    if (h->o.max_conns <= 0) h->o.max_conns = 256;
    if (!(h->o.timeout_s > 0)) h->o.timeout_s = 30;
    if (!(h->o.idle_s > 0)) h->o.idle_s = h->o.timeout_s;
    sr_limit_init(&h->limit, h->o.max_conns);
    if (!h->o.max_unsent) h->o.max_unsent = 16 << 20;
    if (!h->o.error_type) h->o.error_type = "text/plain";
    h->refs = 1;
    uv_tcp_init(loop, &h->listener);
    h->listener.data = h;
    int rc = sr_listen(&h->listener, loop, host, port, on_connection, &h->port);
    if (rc != SR_OK) {
        h->closing = 1;
        uv_close((uv_handle_t *)&h->listener, NULL);
        free(h->routes);
        free(h);
        return rc;
    }
    *out = h;
    return SR_OK;
}

static void on_listener_closed(uv_handle_t *hd) { server_unref(hd->data); }

void sr_http_close(sr_http *h) {
    if (!h || h->closing) return;
    h->closing = 1;
    while (h->conns) conn_close(h->conns, NULL);
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
}

int sr_http_port(const sr_http *h) { return h->port; }
void *sr_http_data(const sr_http *h) { return h->data; }

sr_http *sr_http_req_server(const sr_http_req *rq) { return rq->c->h; }
const char *sr_http_req_method(const sr_http_req *rq) { return rq->method; }
const char *sr_http_req_path(const sr_http_req *rq) { return rq->path; }
const char *sr_http_req_peer(const sr_http_req *rq) { return rq->c->peer; }
void **sr_http_req_slot(sr_http_req *rq) { return &rq->slot; }
void sr_http_req_on_gone(sr_http_req *rq, void (*on_gone)(sr_http_req *rq)) { rq->on_gone = on_gone; }

const char *sr_http_req_header(const sr_http_req *rq, const char *name) {
    for (int i = 0; i < rq->n_headers; i++)
        if (rq->values[i] && strcasecmp(rq->names[i], name) == 0) return rq->values[i];
    return NULL;
}

const char *sr_http_req_body(const sr_http_req *rq, size_t *len) {
    if (len) *len = rq->body.len;
    return rq->body.data ? rq->body.data : "";
}
