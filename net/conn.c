/* conn: frames over libuv TCP (see conn.h). */
#include "net/conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "base/log.h"
#include "base/status.h"

static void on_closed(uv_handle_t *h) {
    sr_conn *c = h->data;
    sr_frame_reader_free(&c->rd);
    sodium_memzero(&c->seal, sizeof c->seal);
    free(c);
}

void sr_conn_secure(sr_conn *c, const unsigned char key[SR_FRAME_MAC_BYTES], int mine, int theirs) {
    sr_frame_mac_init(&c->seal, key, mine);
    sr_frame_mac_init(&c->rd.mac, key, theirs);
}

void sr_conn_close(sr_conn *c, const char *why) {
    if (!c || c->closing) return;
    c->closing = 1;
    if (why) SR_WARN("control connection %s closed: %s", c->peer, why);
    if (c->on_close) c->on_close(c, why);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static int deliver(void *data, sr_frame *f) {
    sr_conn *c = data;
    if (c->closing) {
        sr_frame_free(f);
        return SR_OK;
    }
    return c->on_frame(c, f);
}

void sr_conn_alloc(uv_handle_t *h, size_t want, uv_buf_t *b) {
    b->base = malloc(65536);
    b->len = b->base ? 65536 : 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    sr_conn *c = s->data;
    if (nread < 0) {
        sr_conn_close(c, nread == UV_EOF ? "the peer closed it" : uv_strerror((int)nread));
    } else if (nread > 0 && !c->closing) {
        sr_error_clear();
        if (sr_frame_feed(&c->rd, (const uint8_t *)b->base, (size_t)nread, deliver, c) != SR_OK)
            sr_conn_close(c, sr_error_msg());
    }
    free(b->base);
}

void sr_peer_name(const uv_tcp_t *t, char *out, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[64] = "?";
    snprintf(out, cap, "?");
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
        snprintf(out, cap, "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
        snprintf(out, cap, "[%s]:%d", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    }
}

static sr_conn *conn_new(uv_loop_t *loop, size_t cap, sr_conn_frame_fn on_frame, sr_conn_close_fn on_close,
                         void *data) {
    sr_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    sr_frame_reader_init(&c->rd, cap ? cap : SR_FRAME_MAX_DEFAULT);
    c->on_frame = on_frame;
    c->on_close = on_close;
    c->data = data;
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    return c;
}

int sr_conn_accept(sr_conn **out, uv_stream_t *server, size_t cap, sr_conn_frame_fn on_frame,
                   sr_conn_close_fn on_close, void *data) {
    *out = NULL;
    sr_conn *c = conn_new(server->loop, cap, on_frame, on_close, data);
    if (!c) return sr_error_set(SR_ENOMEM, "out of memory for a control connection");
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc == 0) rc = uv_read_start((uv_stream_t *)&c->tcp, sr_conn_alloc, on_read);
    if (rc != 0) {
        c->on_close = NULL;
        sr_conn_close(c, NULL);
        return sr_error_set(SR_EIO, "control connection: accept failed: %s", uv_strerror(rc));
    }
    uv_tcp_nodelay(&c->tcp, 1);
    sr_peer_name(&c->tcp, c->peer, sizeof c->peer);
    *out = c;
    return SR_OK;
}

static void on_connected(uv_connect_t *req, int status) {
    sr_conn *c = req->data;
    if (status == 0) status = uv_read_start((uv_stream_t *)&c->tcp, sr_conn_alloc, on_read);
    if (status == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        sr_peer_name(&c->tcp, c->peer, sizeof c->peer);
    }
    if (c->on_connect) c->on_connect(c, status);
    if (status != 0) sr_conn_close(c, uv_strerror(status));
}

int sr_conn_connect(sr_conn **out, uv_loop_t *loop, const char *host, int port, size_t cap, sr_conn_frame_fn on_frame,
                    sr_conn_close_fn on_close, sr_conn_connect_fn on_connect, void *data) {
    *out = NULL;
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
        return sr_error_set(SR_EINVAL, "control address '%s' is not an IPv4 or IPv6 address", host);
    sr_conn *c = conn_new(loop, cap, on_frame, on_close, data);
    if (!c) return sr_error_set(SR_ENOMEM, "out of memory for a control connection");
    c->on_connect = on_connect;
    c->connect.data = c;
    snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    int rc = uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&addr, on_connected);
    if (rc != 0) {
        c->on_close = NULL;
        sr_conn_close(c, NULL);
        return sr_error_set(SR_EIO, "cannot connect to %s:%d: %s", host, port, uv_strerror(rc));
    }
    *out = c;
    return SR_OK;
}

static void on_written(uv_write_t *w, int status) {
    sr_conn *c = w->data;
    free(w);
    if (status < 0) sr_conn_close(c, uv_strerror(status));
}

int sr_conn_send_packed(sr_conn *c, uint8_t *bytes, size_t n) {
    if (c->closing) {
        free(bytes);
        return sr_error_set(SR_EIO, "control connection %s is closed", c->peer);
    }
    /* the request and the bytes are freed together */
    size_t mac = c->seal.on ? SR_FRAME_MAC_BYTES : 0;
    uv_write_t *w = malloc(sizeof *w + n + mac);
    if (!w) {
        free(bytes);
        return sr_error_set(SR_ENOMEM, "out of memory for a control frame of %zu bytes", n);
    }
    memcpy(w + 1, bytes, n);
    free(bytes);
    if (mac && sr_frame_seal(&c->seal, (uint8_t *)(w + 1), n) != SR_OK) {
        free(w);
        return SR_ERANGE;
    }
    n += mac;
    w->data = c;
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
    int rc = uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc != 0) {
        free(w);
        sr_conn_close(c, uv_strerror(rc));
        return sr_error_set(SR_EIO, "control connection %s: write failed: %s", c->peer, uv_strerror(rc));
    }
    return SR_OK;
}

int sr_conn_send(sr_conn *c, const sr_frame *f) {
    uint8_t *b;
    size_t n;
    int rc = sr_frame_pack(f, &b, &n);
    return rc != SR_OK ? rc : sr_conn_send_packed(c, b, n);
}

int sr_addr_parse(const char *s, char *host, size_t cap, int *port) {
    const char *colon = s ? strrchr(s, ':') : NULL;
    if (!colon || colon == s) return sr_error_set(SR_EINVAL, "address '%s' must be HOST:PORT", s ? s : "");
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535)
        return sr_error_set(SR_EINVAL, "address '%s': port must be a number in 0..65535", s);
    if (hl + 1 > cap) return sr_error_set(SR_EINVAL, "address '%s': host is too long", s);
    memcpy(host, h, hl);
    host[hl] = 0;
    if (strcmp(host, "localhost") == 0) snprintf(host, cap, "127.0.0.1");
    *port = (int)p;
    return SR_OK;
}

int sr_listen(uv_tcp_t *t, uv_loop_t *loop, const char *host, int port, uv_connection_cb cb, int *bound_port) {
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
        return sr_error_set(SR_EINVAL, "'%s' is not an IPv4 or IPv6 address", host);
    int rc = uv_tcp_bind(t, (struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)t, 128, cb);
    if (rc != 0) return sr_error_set(SR_EIO, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    struct sockaddr_storage b;
    int len = sizeof b;
    uv_tcp_getsockname(t, (struct sockaddr *)&b, &len);
    *bound_port = ntohs(b.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&b)->sin6_port
                                                : ((struct sockaddr_in *)&b)->sin_port);
    return SR_OK;
}
