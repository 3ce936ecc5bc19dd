/* grpc_client: a blocking gRPC client on nghttp2 (see grpc_client.h). */
#include "clients/c/grpc_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "base/buf.h"
#include "base/status.h"
#include "net/grpc_frame.h"

struct sr_gc {
    int fd;
    nghttp2_session *s;
    sr_buf req;             /* framed request messages, sent from off_req on */
    size_t off_req;
    sr_buf in;              /* a partial response message */
    int32_t stream;
    int closed, status, cancel;
    char message[512];
    sr_gc_msg_fn fn;
    void *data;
};

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud) {
    sr_gc *c = ud;
    ssize_t k = send(c->fd, data, len, MSG_NOSIGNAL);
    return k < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : k;
}

static void percent_decode(char *s) {
    char *o = s;
    for (; *s; s++) {
        unsigned v;
        if (*s == '%' && s[1] && s[2] && sscanf(s + 1, "%2x", &v) == 1) {
            *o++ = (char)v;
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    sr_gc *c = ud;
    if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        c->status = atoi((const char *)value);
    } else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        size_t n = vlen < sizeof c->message - 1 ? vlen : sizeof c->message - 1;
        memcpy(c->message, value, n);
        c->message[n] = 0;
        percent_decode(c->message);
    } else if (nlen == 7 && memcmp(name, ":status", 7) == 0 && (vlen != 3 || memcmp(value, "200", 3) != 0)) {
        c->status = 2; /* UNKNOWN: not a gRPC answer */
        snprintf(c->message, sizeof c->message, "HTTP status %.*s", (int)vlen, value);
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
    sr_gc *c = ud;
    if (c->cancel) return 0;
    if (sr_buf_append(&c->in, data, len) != SR_OK) return NGHTTP2_ERR_CALLBACK_FAILURE;
    while (c->in.len >= SR_GRPC_FRAME_PREFIX && !c->cancel) {
        int compressed; /* the server never compresses */
        size_t n = sr_grpc_frame_len((const uint8_t *)c->in.data, &compressed);
        if (c->in.len < SR_GRPC_FRAME_PREFIX + n) break;
        if (c->fn && c->fn(c->data, (const uint8_t *)c->in.data + SR_GRPC_FRAME_PREFIX, n)) {
            c->cancel = 1;
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
        }
        sr_buf_consume(&c->in, SR_GRPC_FRAME_PREFIX + n);
    }
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t err, void *ud) {
    sr_gc *c = ud;
    if (id == c->stream) c->closed = 1;
    return 0;
}

static ssize_t req_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud) {
    sr_gc *c = ud;
    size_t n = c->req.len - c->off_req < len ? c->req.len - c->off_req : len;
    memcpy(buf, c->req.data + c->off_req, n);
    c->off_req += n;
    if (c->off_req == c->req.len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

int sr_gc_open(sr_gc **out, const char *host, int port) {
    *out = NULL;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0) return sr_error_set(SR_EIO, "cannot resolve '%s'", host);
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) return sr_error_set(SR_EIO, "cannot connect to %s:%d (is starringd running?)", host, port);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sr_gc *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return sr_error_set(SR_ENOMEM, "out of memory");
    }
    c->fd = fd;
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    int rv = nghttp2_session_client_new(&c->s, cb, c);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0 || nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0) != 0) {
        sr_gc_close(c);
        return sr_error_set(SR_EIO, "cannot start an HTTP/2 session");
    }
    *out = c;
    return SR_OK;
}

void sr_gc_close(sr_gc *c) {
    if (!c) return;
    if (c->s) nghttp2_session_del(c->s);
    close(c->fd);
    sr_buf_free(&c->req);
    sr_buf_free(&c->in);
    free(c);
}

int sr_gc_add(sr_gc *c, const ProtobufCMessage *m) {
    return sr_grpc_frame_append(&c->req, m);
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

int sr_gc_call(sr_gc *c, const char *path, sr_gc_msg_fn fn, void *data, char *msg, size_t cap) {
    c->fn = fn;
    c->data = data;
    c->closed = c->cancel = 0;
    c->status = -1;
    c->message[0] = 0;
    c->off_req = 0;
    nghttp2_nv nv[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path), NV(":authority", "starringd"),
                       NV("content-type", "application/grpc"), NV("te", "trailers")};
    nghttp2_data_provider dp = {.read_callback = req_read};
    c->stream = nghttp2_submit_request(c->s, NULL, nv, sizeof nv / sizeof nv[0], &dp, c);
    if (c->stream < 0) {
        snprintf(msg, cap, "cannot start the call %s", path);
        return -1;
    }
    uint8_t buf[65536];
    while (!c->closed) {
        if (nghttp2_session_send(c->s) != 0) break;
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) break;
        ssize_t k = recv(c->fd, buf, sizeof buf, 0);
        if (k <= 0 || nghttp2_session_mem_recv(c->s, buf, (size_t)k) < 0) break;
    }
    nghttp2_session_send(c->s);
    sr_buf_clear(&c->req);
    if (!c->closed) {
        snprintf(msg, cap, "the connection to starringd was lost");
        return -1;
    }
    if (c->cancel && c->status < 0) c->status = 1; /* CANCELLED by us */
    if (c->status < 0) {
        snprintf(msg, cap, "the answer had no grpc-status");
        return 2;
    }
    snprintf(msg, cap, "%s", c->message);
    return c->status;
}
