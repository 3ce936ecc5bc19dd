/* grpc: HTTP/2 (nghttp2) and gRPC framing on libuv (see grpc.h). */
#include "coordinator/grpc.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "base/buf.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "coordinator/auth.h"
#include "coordinator/grpc_session.h"
#include "net/conn.h"
#include "net/grpc_frame.h"
#include "net/limit.h"

typedef struct sr_grpc__conn conn;

struct sr_grpc {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_prepare_t flush;     /* writes what the turn's callbacks queued */
    sr_grpc_method *methods;
    int n_methods;
    sr_grpc_opts o;
    int port;
    void *data;
    conn *conns;
    int handles;            /* open uv handles; the server is freed at 0 */
    int closing;
    sr_auth auth;
    sr_limit limit;
};

struct sr_grpc_call {
    conn *c;
    int32_t id;
    const sr_grpc_method *m; /* NULL: unknown path */
    char path[256];
    int bad_type;            /* content-type is not application/grpc */
    int authorized;          /* the authorization metadata carries the API key */
    double deadline;         /* sr_now() seconds; 0: none */
    uv_timer_t *timer;
    uv_timer_t *input;       /* the client's time to send the headers, a message whole, or the next one */
    int64_t n_msgs;          /* request messages taken */
    sr_buf in;               /* a partial request message: 5-byte prefix, then body */
    int refused;             /* input refused: the rest is ignored */
    sr_buf out;              /* response bytes, taken by nghttp2 from off_out on */
    size_t off_out;
    int headers_sent, finished, released;
    int status;
    char *message;
    void *slot;
    sr_grpc_call *next;      /* in the connection's list */
};

struct sr_grpc__conn {
    uv_tcp_t tcp;            /* not opened for a socketless connection (sink set) */
    sr_grpc__sink sink;
    void *sink_data;
    sr_grpc *g;
    nghttp2_session *s;
    uv_timer_t *timer;       /* no call open: the time to the preface, to the end of a frame begun, or to idle */
    sr_grpc_call *calls;
    int dirty, closing, counted, spoke, in_frame;
    char peer[64];
    conn *next, *prev;
};

static const char *const status_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

const char *sr_grpc_status_name(int status) {
    return status >= 0 && status <= 16 ? status_names[status] : "?";
}

sr_grpc *sr_grpc_call_server(const sr_grpc_call *call) { return call->c->g; }
void **sr_grpc_call_slot(sr_grpc_call *call) { return &call->slot; }
const char *sr_grpc_call_path(const sr_grpc_call *call) { return call->path; }
int sr_grpc_port(const sr_grpc *g) { return g->port; }
void *sr_grpc_data(const sr_grpc *g) { return g->data; }

double sr_grpc_call_time_left(const sr_grpc_call *call) {
    return call->deadline > 0 ? call->deadline - sr_now() : 1e30;
}

/* ------------------------------------------------------------ handles */

static void server_unref(sr_grpc *g) {
    if (--g->handles > 0) return;
    free(g->methods);
    free(g);
}

static void on_handle_closed(uv_handle_t *h) { server_unref(h->data); }

static void on_timer_closed(uv_handle_t *h) { free(h); }

static void timer_drop(uv_timer_t **t) {
    if (!*t) return;
    (*t)->data = NULL;
    uv_close((uv_handle_t *)*t, on_timer_closed);
    *t = NULL;
}

/* (Re)starts *t, made on first use, to fire after s seconds. */
static int timer_set(sr_grpc *g, uv_timer_t **t, void *data, uv_timer_cb cb, double s) {
    if (!*t) {
        if (!(*t = malloc(sizeof **t)) || uv_timer_init(g->loop, *t) != 0) {
            free(*t);
            *t = NULL;
            return sr_error_set(SR_ENOMEM, "gRPC: out of memory for a timer");
        }
    }
    (*t)->data = data;
    uv_timer_start(*t, cb, s > 0 ? (uint64_t)(s * 1e3) + 1 : 0, 0);
    return SR_OK;
}

static void mark(conn *c) { c->dirty = 1; }

static void conn_close(conn *c, const char *why);

/* --------------------------------------------------------------- calls */

static void call_free(sr_grpc_call *call) {
    timer_drop(&call->timer);
    timer_drop(&call->input);
    sr_buf_free(&call->in);
    sr_buf_free(&call->out);
    free(call->message);
    free(call);
}

/* The method lets go of a call that will not finish normally. */
static void call_cancel(sr_grpc_call *call, int status) {
    if (call->finished || call->released || !call->m) return;
    call->released = 1;
    if (call->m->on_cancel) call->m->on_cancel(call, status);
}

/* grpc-message is percent-encoded: printable ASCII but '%' as it is */
static char *percent_encode(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1), *p = o;
    if (!o) return NULL;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if (*q >= 0x20 && *q <= 0x7e && *q != '%') {
            *p++ = (char)*q;
        } else {
            sprintf(p, "%%%02X", *q);
            p += 3;
        }
    }
    *p = 0;
    return o;
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

/* The trailers (or the whole answer, trailers-only, when no message was
 * sent). */
static int submit_trailers(sr_grpc_call *call, int trailers_only) {
    char code[16];
    snprintf(code, sizeof code, "%d", call->status);
    char *msg = percent_encode(call->message ? call->message : "");
    if (!msg) return NGHTTP2_ERR_NOMEM;
    nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "application/grpc"), NV("grpc-status", code),
                       NV("grpc-message", msg)};
    int n = call->message && *call->message ? 4 : 3;
    int rv = trailers_only ? nghttp2_submit_response(call->c->s, call->id, nv, (size_t)n, NULL)
                           : nghttp2_submit_trailer(call->c->s, call->id, nv + 2, (size_t)n - 2);
    free(msg);
    return rv;
}

static ssize_t data_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud) {
    sr_grpc_call *call = src->ptr;
    size_t avail = call->out.len - call->off_out, n = avail < len ? avail : len;
    memcpy(buf, call->out.data + call->off_out, n);
    call->off_out += n;
    if (call->off_out == call->out.len) {
        sr_buf_clear(&call->out);
        call->off_out = 0;
    }
    if (n == 0 && !call->finished) return NGHTTP2_ERR_DEFERRED;
    if (call->out.len == 0 && call->finished) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (submit_trailers(call, 0) != 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

static int start_response(sr_grpc_call *call) {
    if (call->headers_sent) {
        nghttp2_session_resume_data(call->c->s, call->id); /* fails harmlessly when not deferred */
        return SR_OK;
    }
    call->headers_sent = 1;
    nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider dp = {.source.ptr = call, .read_callback = data_read};
    if (nghttp2_submit_response(call->c->s, call->id, nv, 2, &dp) != 0)
        return sr_error_set(SR_EIO, "gRPC: could not start the response of stream %d", call->id);
    return SR_OK;
}

int sr_grpc_send(sr_grpc_call *call, const ProtobufCMessage *msg) {
    if (call->finished) return sr_error_set(SR_ESTATE, "gRPC: send after the call finished");
    int rc = sr_grpc_frame_append(&call->out, msg);
    if (rc != SR_OK) return rc;
    mark(call->c);
    return start_response(call);
}

/* Ends the call (either side: the method, or the server for it). */
static void call_end(sr_grpc_call *call, int status, const char *msg) {
    if (call->finished) return;
    call->finished = 1;
    call->status = status;
    call->message = msg && *msg ? strdup(msg) : NULL;
    timer_drop(&call->timer);
    timer_drop(&call->input);
    if (call->c->g->o.on_status) call->c->g->o.on_status(call->m ? call->m->path : NULL, status, call->c->g->data);
    if (status != SR_GRPC_OK)
        SR_DEBUG("gRPC %s from %s: %s %s", call->path, call->c->peer, sr_grpc_status_name(status), msg ? msg : "");
    if (call->headers_sent)
        nghttp2_session_resume_data(call->c->s, call->id);
    else if (submit_trailers(call, 1) != 0)
        SR_WARN("gRPC: could not answer stream %d of %s", call->id, call->c->peer);
    mark(call->c);
}

void sr_grpc_finish(sr_grpc_call *call, int status, const char *fmt, ...) {
    char msg[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
    }
    call->released = 1;
    call_end(call, status, msg);
}

/* The server ends a call the method still holds. */
static void call_abort(sr_grpc_call *call, int status, const char *msg) {
    if (call->finished) return;
    call->refused = 1;
    call_cancel(call, status);
    call_end(call, status, msg);
}

/* The server refuses what the client sent: logged, naming the peer. */
static void call_refuse(sr_grpc_call *call, int status, const char *msg) {
    SR_WARN("gRPC %s from %s refused: %s %s", call->path, call->c->peer, sr_grpc_status_name(status), msg);
    call_abort(call, status, msg);
}

/* A client too slow to send its request (or silent within it) holds a
 * stream and a connection: it loses the connection. */
static void on_input_timeout(uv_timer_t *t) {
    sr_grpc_call *call = t->data;
    if (!call) return;
    const sr_grpc_opts *o = &call->c->g->o;
    int between = call->path[0] && !call->in.len; /* headers done, no message begun */
    char why[400];
    snprintf(why, sizeof why, "%s of %.200s not received within %.3g s (starringd %s)",
             between ? "the next request message" : call->path[0] ? "a request message" : "the request headers",
             call->path[0] ? call->path : "a call", between ? o->idle_s : o->timeout_s,
             between ? "--idle-timeout" : "--client-timeout");
    conn_close(call->c, why);
}

static void input_wait(sr_grpc_call *call, double s) {
    if (timer_set(call->c->g, &call->input, call, on_input_timeout, s) != SR_OK)
        SR_WARN("gRPC: %s (no input deadline for a call of %s)", sr_error_msg(), call->c->peer);
}

static void on_deadline(uv_timer_t *t) {
    sr_grpc_call *call = t->data;
    if (call) call_abort(call, SR_GRPC_DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)");
}

/* grpc-timeout: up to 8 digits and a unit (H M S m u n) */
static double parse_timeout(const uint8_t *v, size_t n) {
    if (n < 2 || n > 9) return -1;
    double x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (!isdigit(v[i])) return -1;
        x = 10 * x + (v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H': return x * 3600;
    case 'M': return x * 60;
    case 'S': return x;
    case 'm': return x * 1e-3;
    case 'u': return x * 1e-6;
    case 'n': return x * 1e-9;
    default: return -1;
    }
}

/* ------------------------------------------------------ nghttp2 events */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    sr_grpc_call *call = calloc(1, sizeof *call);
    if (!call) return NGHTTP2_ERR_CALLBACK_FAILURE;
    call->c = c;
    call->id = f->hd.stream_id;
    call->bad_type = 1;
    call->next = c->calls;
    c->calls = call;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, call);
    if (c->timer) uv_timer_stop(c->timer); /* a call is open: the connection is not idle */
    c->in_frame = 0;
    input_wait(call, c->g->o.timeout_s);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    sr_grpc_call *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!call) return 0;
    if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
        size_t n = vlen < sizeof call->path - 1 ? vlen : sizeof call->path - 1;
        memcpy(call->path, value, n);
        call->path[n] = 0;
    } else if (nlen == 12 && memcmp(name, "content-type", 12) == 0) {
        call->bad_type = !(vlen >= 16 && memcmp(value, "application/grpc", 16) == 0);
    } else if (nlen == 13 && memcmp(name, "authorization", 13) == 0) {
        call->authorized = sr_auth_check(&call->c->g->auth, (const char *)value, vlen);
    } else if (nlen == 12 && memcmp(name, "grpc-timeout", 12) == 0) {
        double t = parse_timeout(value, vlen);
        if (t >= 0) call->deadline = sr_now() + t;
    }
    return 0;
}

/* The request headers are complete: find the method, start the deadline. */
static void call_start(sr_grpc_call *call) {
    sr_grpc *g = call->c->g;
    for (int i = 0; i < g->n_methods; i++)
        if (strcmp(g->methods[i].path, call->path) == 0) call->m = &g->methods[i];
    if (call->bad_type) {
        call->refused = 1;
        call_end(call, SR_GRPC_INVALID_ARGUMENT, "content-type must be application/grpc");
        return;
    }
    if (g->auth.on && !call->authorized &&
        !(g->o.open_prefix && strncmp(call->path, g->o.open_prefix, strlen(g->o.open_prefix)) == 0)) {
        SR_WARN("gRPC %s from %s refused: no valid API key", call->path, call->c->peer);
        call->refused = 1;
        call_end(call, SR_GRPC_UNAUTHENTICATED, "this server needs its API key: send the metadata 'authorization: Bearer KEY'");
        return;
    }
    if (!call->m) {
        char msg[320];
        snprintf(msg, sizeof msg, "unknown method %s", call->path[0] ? call->path : "(no :path)");
        call->refused = 1;
        call_end(call, SR_GRPC_UNIMPLEMENTED, msg);
        return;
    }
    if (call->deadline > 0) {
        double left = call->deadline - sr_now();
        if (!(call->timer = malloc(sizeof *call->timer)) || uv_timer_init(g->loop, call->timer) != 0) {
            free(call->timer);
            call->timer = NULL;
            call_abort(call, SR_GRPC_INTERNAL, "out of memory for the deadline timer");
            return;
        }
        call->timer->data = call;
        uv_timer_start(call->timer, on_deadline, left > 0 ? (uint64_t)(left * 1e3) + 1 : 0, 0);
    }
}

/* Splits the buffered input into messages. */
static void call_input(sr_grpc_call *call) {
    size_t cap = call->c->g->o.max_message;
    while (!call->refused && !call->finished && call->in.len >= SR_GRPC_FRAME_PREFIX) {
        int compressed;
        size_t len = sr_grpc_frame_len((const uint8_t *)call->in.data, &compressed);
        if (len > cap) {
            char msg[160];
            snprintf(msg, sizeof msg, "request message of %zu bytes is over the server's cap of %zu bytes "
                     "(starringd --max-message)", len, cap);
            call_refuse(call, SR_GRPC_RESOURCE_EXHAUSTED, msg);
            return;
        }
        if (compressed) {
            call_refuse(call, SR_GRPC_UNIMPLEMENTED, "compressed messages are not supported (send identity)");
            return;
        }
        if (call->in.len < SR_GRPC_FRAME_PREFIX + len) return;
        call->n_msgs++;
        call->m->on_message(call, (const uint8_t *)call->in.data + SR_GRPC_FRAME_PREFIX, len);
        if (call->finished || call->released) return;
        sr_buf_consume(&call->in, SR_GRPC_FRAME_PREFIX + len);
    }
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
    sr_grpc_call *call = nghttp2_session_get_stream_user_data(s, id);
    if (!call || call->refused || call->finished || !call->m) return 0;
    /* only the prefix and what the cap allows are ever buffered */
    size_t cap = call->c->g->o.max_message + SR_GRPC_FRAME_PREFIX;
    int64_t msgs = call->n_msgs;
    int began = call->in.len == 0 && len > 0;
    while (len > 0 && !call->refused && !call->finished) {
        size_t room = cap - call->in.len, take = len < room ? len : room;
        if (take == 0) break;
        if (sr_buf_append(&call->in, data, take) != SR_OK) {
            call_abort(call, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory for the request");
            return 0;
        }
        data += take;
        len -= take;
        call_input(call);
    }
    /* a message begun has timeout_s to arrive whole; between two, idle_s */
    if (!call->refused && !call->finished && !call->released && call->input) {
        if (call->in.len == 0 && (began || call->n_msgs != msgs)) input_wait(call, call->c->g->o.idle_s);
        else if (call->in.len > 0 && (began || call->n_msgs != msgs)) input_wait(call, call->c->g->o.timeout_s);
    }
    return 0;
}

static void conn_idle(conn *c);

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    conn *c = ud;
    c->spoke = 1;
    if (!c->calls) conn_idle(c);
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    sr_grpc_call *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!call) return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        call_start(call);
        if (call->input && !call->finished) input_wait(call, c->g->o.idle_s);
    }
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) timer_drop(&call->input);
    if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !call->refused && !call->finished && !call->released && call->m) {
        if (call->in.len > 0)
            call_refuse(call, SR_GRPC_INTERNAL, "the request ended inside a message");
        else if (call->m->on_end)
            call->m->on_end(call);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error_code, void *ud) {
    conn *c = ud;
    sr_grpc_call *call = nghttp2_session_get_stream_user_data(s, id);
    if (!call) return 0;
    call_cancel(call, SR_GRPC_CANCELLED);
    for (sr_grpc_call **p = &c->calls; *p; p = &(*p)->next)
        if (*p == call) {
            *p = call->next;
            break;
        }
    call_free(call);
    if (!c->calls) conn_idle(c);
    return 0;
}

/* Once the answer of a call has ended while the client may still send on
 * it (a refusal, or an answer before the request's end), the stream is
 * reset, as gRPC servers do, so that the client stops sending. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    conn *c = ud;
    /* what nghttp2 found wrong with the client's bytes, as it answers them */
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR)
        SR_WARN("gRPC: the HTTP/2 of %s is wrong: %s (%.*s); GOAWAY sent", c->peer,
                nghttp2_http2_strerror(f->goaway.error_code), (int)(f->goaway.opaque_data_len > 200 ? 200 : f->goaway.opaque_data_len),
                (const char *)f->goaway.opaque_data);
    if (f->hd.type == NGHTTP2_RST_STREAM && f->rst_stream.error_code != NGHTTP2_NO_ERROR)
        SR_INFO("gRPC: stream %d of %s reset: %s", f->hd.stream_id, c->peer, nghttp2_http2_strerror(f->rst_stream.error_code));
    if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    if (nghttp2_session_get_stream_remote_close(s, f->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}


/* ---------------------------------------------------------- connections */

static void conn_free(conn *c) {
    sr_grpc *g = c->g;
    if (c->counted) sr_limit_give(&g->limit);
    free(c);
    server_unref(g);
}

static void on_conn_closed(uv_handle_t *h) { conn_free(h->data); }

static void conn_close(conn *c, const char *why) {
    if (c->closing) return;
    c->closing = 1;
    if (why) SR_WARN("gRPC: closing the connection of %s: %s", c->peer, why);
    timer_drop(&c->timer);
    for (sr_grpc_call *call = c->calls, *next; call; call = next) {
        next = call->next;
        call_cancel(call, SR_GRPC_CANCELLED);
        if (c->s) nghttp2_session_set_stream_user_data(c->s, call->id, NULL);
        call_free(call);
    }
    c->calls = NULL;
    if (c->s) nghttp2_session_del(c->s);
    c->s = NULL;
    if (c->prev) c->prev->next = c->next;
    else c->g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->sink) {
        c->sink(c->sink_data, NULL, 0);
        conn_free(c);
    } else {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    }
}

static void on_written(uv_write_t *w, int status) {
    conn *c = w->data;
    free(w);
    if (status < 0 && status != UV_ECANCELED) conn_close(c, uv_strerror(status));
}

static void conn_flush(conn *c) {
    c->dirty = 0;
    sr_buf out = {0}; /* the write request, then its bytes: one allocation */
    for (;;) {
        const uint8_t *data;
        ssize_t k = nghttp2_session_mem_send(c->s, &data);
        if (k < 0) {
            sr_buf_free(&out);
            conn_close(c, nghttp2_strerror((int)k));
            return;
        }
        if (k == 0) break;
        if (out.len == 0) {
            uv_write_t w = {0};
            if (sr_buf_reserve(&out, sizeof w + (size_t)k + 4096, 0) != SR_OK) break;
            sr_buf_append(&out, &w, sizeof w);
        }
        if (sr_buf_append(&out, data, (size_t)k) != SR_OK) break;
    }
    size_t n;
    char *buf = sr_buf_steal(&out, &n);
    if (buf && c->sink) {
        c->sink(c->sink_data, (uint8_t *)buf + sizeof(uv_write_t), n - sizeof(uv_write_t));
        free(buf);
    } else if (buf) {
        uv_write_t *w = (uv_write_t *)buf;
        w->data = c;
        uv_buf_t b = uv_buf_init(buf + sizeof(uv_write_t), (unsigned)(n - sizeof(uv_write_t)));
        int rc = uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
        if (rc < 0) {
            free(buf);
            conn_close(c, uv_strerror(rc));
            return;
        }
    }
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s)) conn_close(c, NULL);
}

static void on_flush(uv_prepare_t *p) {
    sr_grpc *g = p->data;
    for (conn *c = g->conns, *next; c; c = next) {
        next = c->next;
        if (c->dirty && !c->closing) conn_flush(c);
    }
}

/* Bytes from the client; SR_OK, or an error once the connection is closed
 * over them (it is gone then). */
static void on_conn_timeout(uv_timer_t *t);

static int conn_feed(conn *c, const uint8_t *b, size_t n) {
    /* with no call open, a frame begun has timeout_s to end (a call's
     * frames have their own deadlines), else a slow client idles */
    if (c->spoke && !c->calls && !c->in_frame && n > 0) {
        c->in_frame = 1;
        if (timer_set(c->g, &c->timer, c, on_conn_timeout, c->g->o.timeout_s) != SR_OK)
            SR_WARN("gRPC: %s (no frame deadline for %s)", sr_error_msg(), c->peer);
    }
    ssize_t k = nghttp2_session_mem_recv(c->s, b, n);
    if (k < 0) {
        char why[128];
        snprintf(why, sizeof why, "not HTTP/2 (%s)", nghttp2_strerror((int)k));
        conn_close(c, why);
        return SR_EFORMAT;
    }
    mark(c);
    return SR_OK;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
    conn *c = st->data;
    if (nread < 0) {
        free(b->base);
        /* a peer that goes mid-request, or before it spoke HTTP/2, is worth a line */
        conn_close(c, nread != UV_EOF ? uv_strerror((int)nread)
                      : !c->spoke     ? "it went away before its HTTP/2 preface"
                      : c->calls      ? "it went away with calls open"
                                      : NULL);
        return;
    }
    if (nread > 0 && !c->closing) conn_feed(c, (const uint8_t *)b->base, (size_t)nread);
    free(b->base);
}

static void on_conn_timeout(uv_timer_t *t) {
    conn *c = t->data;
    if (!c) return;
    if (!c->spoke || c->in_frame) {
        char why[128];
        snprintf(why, sizeof why, "%s within %.3g s (starringd --client-timeout)",
                 c->spoke ? "an HTTP/2 frame begun was not received whole" : "no HTTP/2 preface", c->g->o.timeout_s);
        conn_close(c, why);
        return;
    }
    /* idle: GOAWAY (the client reconnects when it needs to), then the close */
    SR_INFO("gRPC: closing the connection of %s: idle for %.3g s", c->peer, c->g->o.idle_s);
    if (nghttp2_session_terminate_session(c->s, NGHTTP2_NO_ERROR) != 0) conn_close(c, NULL);
    else mark(c);
}

/* No call is open (any more): the connection may idle for idle_s. */
static void conn_idle(conn *c) {
    c->in_frame = 0;
    if (c->closing || c->calls) return;
    if (timer_set(c->g, &c->timer, c, on_conn_timeout, c->g->o.idle_s) != SR_OK)
        SR_WARN("gRPC: %s (no idle timeout for %s)", sr_error_msg(), c->peer);
}

/* A connection's session, its first SETTINGS and the preface deadline. */
static int conn_start(conn *c) {
    sr_grpc *g = c->g;
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) return sr_error_set(SR_ENOMEM, "gRPC: out of memory");
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    int rv = nghttp2_session_server_new(&c->s, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry set[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, g->o.max_streams}};
    if (rv != 0 || nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, set, 1) != 0)
        return sr_error_set(SR_ENOMEM, "gRPC: could not start an HTTP/2 session");
    int rc = timer_set(g, &c->timer, c, on_conn_timeout, g->o.timeout_s);
    if (rc != SR_OK) return rc;
    mark(c);
    return SR_OK;
}

static conn *conn_new(sr_grpc *g) {
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->g = g;
    g->handles++;
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    return c;
}

static void on_connection(uv_stream_t *ls, int status) {
    sr_grpc *g = ls->data;
    if (status < 0 || g->closing) return;
    conn *c = conn_new(g);
    if (!c) {
        SR_WARN("gRPC: out of memory for a connection");
        return;
    }
    uv_tcp_init(g->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, "accept failed");
        return;
    }
    sr_peer_name(&c->tcp, c->peer, sizeof c->peer);
    /* accepted and closed at once: left in the backlog it would stall everyone */
    if (!(c->counted = sr_limit_take(&g->limit, "gRPC", c->peer))) {
        conn_close(c, NULL);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (conn_start(c) != SR_OK) {
        conn_close(c, sr_error_msg());
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, sr_conn_alloc, on_read) != 0) conn_close(c, "cannot read");
}

int sr_grpc__conn_open(sr_grpc__conn **out, sr_grpc *g, sr_grpc__sink sink, void *data) {
    *out = NULL;
    if (!sink) return sr_error_set(SR_EINVAL, "sr_grpc__conn_open: no sink");
    conn *c = conn_new(g);
    if (!c) return sr_error_set(SR_ENOMEM, "gRPC: out of memory for a connection");
    c->sink = sink;
    c->sink_data = data;
    snprintf(c->peer, sizeof c->peer, "(socketless)");
    int rc = conn_start(c);
    if (rc != SR_OK) {
        c->sink = NULL; /* says nothing to a caller that gets the error */
        c->closing = 1;
        timer_drop(&c->timer);
        if (c->s) nghttp2_session_del(c->s);
        if (c->prev) c->prev->next = c->next;
        else g->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        conn_free(c);
        return rc;
    }
    *out = c;
    return SR_OK;
}

int sr_grpc__conn_feed(sr_grpc__conn *c, const uint8_t *b, size_t n) { return conn_feed(c, b, n); }

/* --------------------------------------------------------------- server */

int sr_grpc__new(sr_grpc **out, uv_loop_t *loop, const sr_grpc_method *methods, int n_methods,
                 const sr_grpc_opts *opts, void *data) {
    *out = NULL;
    if (n_methods < 0 || (n_methods && !methods))
        return sr_error_set(SR_EINVAL, "gRPC: %d methods at %p", n_methods, (const void *)methods);
    sr_grpc *g = calloc(1, sizeof *g);
    if (!g || !(g->methods = malloc(sizeof *methods * (size_t)(n_methods + 1)))) {
        free(g);
        return sr_error_set(SR_ENOMEM, "gRPC: out of memory");
    }
    if (n_methods) memcpy(g->methods, methods, sizeof *methods * (size_t)n_methods);
    g->n_methods = n_methods;
    g->loop = loop;
    g->data = data;
    if (opts) g->o = *opts;
    if (!g->o.max_message) g->o.max_message = SR_GRPC_MAX_MESSAGE;
    if (!g->o.max_streams) g->o.max_streams = 100;
    if (g->o.max_conns <= 0) g->o.max_conns = 1024;
    if (!(g->o.timeout_s > 0)) g->o.timeout_s = 10;
    if (!(g->o.idle_s > 0)) g->o.idle_s = 300;
    sr_limit_init(&g->limit, g->o.max_conns);
    int rc = sr_auth_init(&g->auth, g->o.api_key);
    if (rc != SR_OK) {
        free(g->methods);
        free(g);
        return rc;
    }
    uv_tcp_init(loop, &g->listener);
    uv_prepare_init(loop, &g->flush);
    g->listener.data = g->flush.data = g;
    g->handles = 2;
    uv_prepare_start(&g->flush, on_flush);
    *out = g;
    return SR_OK;
}

int sr_grpc_open(sr_grpc **out, uv_loop_t *loop, const char *host, int port, const sr_grpc_method *methods,
                 int n_methods, const sr_grpc_opts *opts, void *data) {
    *out = NULL;
    if (port < 0 || port > 65535) return sr_error_set(SR_EINVAL, "gRPC: port %d must be in 0..65535", port);
    sr_grpc *g;
    int rc = sr_grpc__new(&g, loop, methods, n_methods, opts, data);
    if (rc != SR_OK) return rc;
    rc = sr_listen(&g->listener, loop, host, port, on_connection, &g->port);
    if (rc != SR_OK) {
        sr_grpc_close(g);
        return rc;
    }
    *out = g;
    return SR_OK;
}

void sr_grpc_close(sr_grpc *g) {
    if (!g || g->closing) return;
    g->closing = 1;
    while (g->conns) conn_close(g->conns, NULL);
    uv_close((uv_handle_t *)&g->listener, on_handle_closed);
    uv_close((uv_handle_t *)&g->flush, on_handle_closed);
}
