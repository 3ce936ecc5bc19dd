/* grpc_feed: a gRPC server fed without a socket (see grpc_feed.h). */
#include "tests/unit/grpc_feed.h"

#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "coordinator/grpc_session.h"
#include "grpc/health/v1/health.pb-c.h"
#include "starring/v1/starring.pb-c.h"

typedef struct {
    uint8_t *out;
    size_t n, cap;
    int closed;
    grpc_feed_result *r;
} feed;

/* the API's methods and their request types; the answers are small
 * messages of any type */
static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *d;
} types[] = {
    {"/starring.v1.Starring/CreateContext", &starring__v1__context_chunk__descriptor},
    {"/starring.v1.Starring/Generate", &starring__v1__generate_request__descriptor},
    {"/starring.v1.Starring/GetContext", &starring__v1__context_ref__descriptor},
    {"/starring.v1.Starring/ListContexts", &starring__v1__list_contexts_request__descriptor},
    {"/starring.v1.Starring/DropContext", &starring__v1__context_ref__descriptor},
    {"/starring.v1.Starring/GetStats", &starring__v1__stats_request__descriptor},
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor},
    {"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor},
};
#define N_TYPES (sizeof types / sizeof types[0])

static const ProtobufCMessageDescriptor *request_type(const char *path) {
    for (size_t i = 0; i < N_TYPES; i++)
        if (strcmp(types[i].path, path) == 0) return types[i].d;
    return NULL;
}

static feed *of(sr_grpc_call *call) { return sr_grpc_data(sr_grpc_call_server(call)); }

static void on_message(sr_grpc_call *call, const uint8_t *msg, size_t len) {
    feed *f = of(call);
    ProtobufCMessage *m = protobuf_c_message_unpack(request_type(sr_grpc_call_path(call)), NULL, len, msg);
    if (!m) {
        f->r->undecodable++;
        sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "request message of %zu bytes does not decode", len);
        return;
    }
    f->r->decoded++;
    protobuf_c_message_free_unpacked(m, NULL);
    /* the server streams answer as they go; the unary ones at the end */
    if (strstr(sr_grpc_call_path(call), "Generate") || strstr(sr_grpc_call_path(call), "CreateContext")) {
        Starring__V1__Done d = STARRING__V1__DONE__INIT;
        d.stop_reason = "fuzz";
        d.generated_tokens = (int64_t)len;
        sr_grpc_send(call, &d.base);
    }
}

static void on_end(sr_grpc_call *call) {
    Grpc__Health__V1__HealthCheckResponse h = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    h.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    sr_grpc_send(call, &h.base);
    sr_grpc_finish(call, SR_GRPC_OK, NULL);
}

static void on_cancel(sr_grpc_call *call, int status) { of(call)->r->cancelled++; }

static void sink(void *data, const uint8_t *b, size_t n) {
    feed *f = data;
    if (!b) {
        f->closed = 1;
        return;
    }
    if (f->n + n > f->cap) {
        size_t cap = f->cap ? f->cap : 4096;
        while (cap < f->n + n) cap *= 2;
        uint8_t *o = realloc(f->out, cap);
        if (!o) abort(); /* a test harness: out of memory ends it */
        f->out = o;
        f->cap = cap;
    }
    memcpy(f->out + f->n, b, n);
    f->n += n;
}

/* The server's frames: lengths in bounds, each header block decodes (HPACK
 * state carries over), grpc-status counted. */
static void parse_output(const feed *f, grpc_feed_result *r) {
    nghttp2_hd_inflater *inf;
    r->first_status = -1;
    if (nghttp2_hd_inflate_new(&inf) != 0) {
        r->bad_output = 1;
        return;
    }
    size_t off = 0;
    while (off < f->n && !r->bad_output) {
        if (f->n - off < 9) {
            r->bad_output = 1;
            break;
        }
        const uint8_t *h = f->out + off;
        size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        if (len > 16384 || f->n - off - 9 < len) {
            r->bad_output = 1;
            break;
        }
        if (h[3] == NGHTTP2_HEADERS) {
            const uint8_t *in = h + 9;
            size_t left = len;
            for (;;) {
                nghttp2_nv nv;
                int flags = 0;
                ssize_t k = nghttp2_hd_inflate_hd2(inf, &nv, &flags, in, left, 1);
                if (k < 0) {
                    r->bad_output = 1;
                    break;
                }
                in += k;
                left -= (size_t)k;
                if (flags & NGHTTP2_HD_INFLATE_EMIT && nv.namelen == 11 && memcmp(nv.name, "grpc-status", 11) == 0) {
                    int code = nv.valuelen == 1 ? nv.value[0] - '0'
                               : nv.valuelen == 2 ? (nv.value[0] - '0') * 10 + nv.value[1] - '0' : -1;
                    if (code >= 0 && code <= 16) {
                        r->statuses[code]++;
                        if (r->first_status < 0) r->first_status = code;
                    } else {
                        r->bad_output = 1;
                    }
                }
                if (flags & NGHTTP2_HD_INFLATE_FINAL) {
                    nghttp2_hd_inflate_end_headers(inf);
                    break;
                }
                if (k == 0 && left == 0) break;
            }
        }
        off += 9 + len;
    }
    nghttp2_hd_inflate_del(inf);
}

int grpc_feed(const uint8_t *data, size_t n, size_t piece, grpc_feed_result *r) {
    sr_grpc_method methods[N_TYPES];
    for (size_t i = 0; i < N_TYPES; i++) methods[i] = (sr_grpc_method){types[i].path, on_message, on_end, on_cancel};
    memset(r, 0, sizeof *r);
    feed f = {.r = r};
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return -1;
    sr_grpc *g;
    sr_grpc__conn *c;
    sr_grpc_opts o = {.max_message = GRPC_FEED_MAX_MESSAGE, .max_streams = 8};
    if (sr_grpc__new(&g, &loop, methods, (int)N_TYPES, &o, &f) != 0) {
        uv_loop_close(&loop);
        return -1;
    }
    int ok = sr_grpc__conn_open(&c, g, sink, &f) == 0;
    for (size_t off = 0; ok && off < n && !f.closed;) {
        size_t k = piece && piece < n - off ? piece : n - off;
        if (sr_grpc__conn_feed(c, data + off, k) != 0) break;
        off += k;
        uv_run(&loop, UV_RUN_NOWAIT); /* a loop turn: the answers are written */
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    r->closed = f.closed;
    sr_grpc_close(g);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    r->out_bytes = f.n;
    parse_output(&f, r);
    free(f.out);
    return ok ? 0 : -1;
}
