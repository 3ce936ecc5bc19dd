/* conn: a control-plane connection: frames (frame.h) over a libuv TCP
 * stream, on the loop's thread only.
 *
 * A bad frame closes the connection, with the reason logged; so does a
 * receiver that returns an error, a write error and the peer going away.
 * on_close is called once, then the memory goes when the loop has closed
 * the handle. */
#ifndef SR_NET_CONN_H
#define SR_NET_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/frame.h"

typedef struct sr_conn sr_conn;

/* Receives each frame and owns it; a negative return closes the connection
 * (with sr_error_msg as the reason). */
typedef int (*sr_conn_frame_fn)(sr_conn *c, sr_frame *f);
typedef void (*sr_conn_close_fn)(sr_conn *c, const char *why);
/* status 0 or a libuv error */
typedef void (*sr_conn_connect_fn)(sr_conn *c, int status);

struct sr_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    sr_frame_reader rd;
    sr_frame_mac seal;         /* on: the frames written carry a MAC (sr_conn_secure) */
    sr_conn_frame_fn on_frame;
    sr_conn_close_fn on_close;
    sr_conn_connect_fn on_connect;
    void *data;                /* free for the user */
    int closing;
    char peer[64];
};

/* Accepts a connection waiting on server. */
int sr_conn_accept(sr_conn **out, uv_stream_t *server, size_t cap, sr_conn_frame_fn on_frame,
                   sr_conn_close_fn on_close, void *data);

/* Connects to host:port; on_connect tells how it went (on failure the
 * connection is closed after it returns). */
int sr_conn_connect(sr_conn **out, uv_loop_t *loop, const char *host, int port, size_t cap, sr_conn_frame_fn on_frame,
                    sr_conn_close_fn on_close, sr_conn_connect_fn on_connect, void *data);

/* Writes one frame. */
int sr_conn_send(sr_conn *c, const sr_frame *f);
/* Writes bytes already packed by sr_frame_pack; takes them. */
int sr_conn_send_packed(sr_conn *c, uint8_t *bytes, size_t n);

void sr_conn_close(sr_conn *c, const char *why);

/* From now on every frame written carries a MAC under key as role mine,
 * and every frame read must carry the peer's (role theirs); see frame.h.
 * Called by both sides at the end of the join, each after its last
 * unauthenticated frame (net/join.h). */
void sr_conn_secure(sr_conn *c, const unsigned char key[SR_FRAME_MAC_BYTES], int mine, int theirs);

/* "host:port" (IPv4 or a name, or [IPv6]:port) into host and port. */
int sr_addr_parse(const char *s, char *host, size_t cap, int *port);

/* The peer's "ip:port" ("?" when unknown). */
void sr_peer_name(const uv_tcp_t *t, char *out, size_t cap);

/* A libuv alloc_cb for reads: 64 KiB from malloc (the read callback frees
 * it; len 0 when out of memory, which libuv reports as UV_ENOBUFS). */
void sr_conn_alloc(uv_handle_t *h, size_t want, uv_buf_t *b);

/* Binds and listens on host:port (port 0: any); *bound_port tells which. */
int sr_listen(uv_tcp_t *t, uv_loop_t *loop, const char *host, int port, uv_connection_cb cb, int *bound_port);

#endif
