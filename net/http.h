/* http: an HTTP/1.1 server on a libuv loop, requests parsed by Debian's
 * http-parser, on the loop's thread only.
 *
 * A route is a method, a path and a handler. The handler gets the whole
 * request (headers and body read, capped) and answers it, then or later,
 * with one sr_http_respond, or with sr_http_stream_start, any number of
 * sr_http_stream_write (each sent at once as one chunk: Server-Sent Events
 * are flushed per event) and sr_http_stream_end. A handler that answers
 * later sets on_gone: it is called if the client goes away (closes, resets,
 * or stops reading) before the answer ends; after it returns the request
 * belongs to the server again and must not be touched.
 *
 * Connections are kept alive and requests may be pipelined: they are
 * answered in order, one at a time. The server answers on its own, with
 * the error body of opts.error_body and Connection: close: 400 for bytes
 * that are not HTTP, 431 for a request line and headers over max_header,
 * 413 for a body over max_body (refused on its Content-Length before any
 * of it is buffered), 404 for an unknown path, 405 for a known path with
 * another method, 408 for a request not read within timeout_s of its first
 * byte (a slow client), and 503 for a connection over max_conns (logged
 * at most once a second: net/limit.h). A connection that sends no request
 * within timeout_s of connecting is closed (logged), and so is a keep-alive
 * one idle for idle_s. */
#ifndef SR_NET_HTTP_H
#define SR_NET_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct sr_http sr_http;
typedef struct sr_http_req sr_http_req;

typedef struct {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* exact, without the query */
    void (*handler)(sr_http_req *rq);
} sr_http_route;

typedef struct {
    size_t max_header;  /* bytes of the request line and headers; 0: 16 KiB */
    size_t max_body;    /* bytes of a body; 0: 1 MiB */
    int max_conns;      /* connections at once; 0: 256 */
    double timeout_s;   /* to send the first request, and to send a request whole once begun; 0: 30 */
    double idle_s;      /* to idle between requests; 0: timeout_s */
    size_t max_unsent;  /* response bytes a client may leave unread before it is dropped; 0: 16 MiB */
    /* the body of the server's own error answers (writes at most cap bytes,
     * NUL-terminated); NULL: the message as text/plain */
    void (*error_body)(int status, const char *msg, char *buf, size_t cap);
    const char *error_type; /* its content type */
    /* optional: every answer's status as it starts (route: the route
     * table's path, NULL for the server's own answers), with sr_http_data's data */
    void (*on_status)(const char *route, int status, void *data);
} sr_http_opts;

/* Listens on host:port (port 0: any; sr_http_port tells which) and serves
 * the routes (copied; their strings must outlive the server). */
int sr_http_open(sr_http **out, uv_loop_t *loop, const char *host, int port, const sr_http_route *routes,
                 int n_routes, const sr_http_opts *opts, void *data);
/* Stops listening and closes every connection (their requests are gone);
 * the memory goes once the loop has run the close callbacks. */
void sr_http_close(sr_http *h);
int sr_http_port(const sr_http *h);
void *sr_http_data(const sr_http *h);

sr_http *sr_http_req_server(const sr_http_req *rq);
const char *sr_http_req_method(const sr_http_req *rq);
const char *sr_http_req_path(const sr_http_req *rq);
/* A header's value (names compare case-insensitively), or NULL. */
const char *sr_http_req_header(const sr_http_req *rq, const char *name);
/* The body (NUL-terminated after len bytes). */
const char *sr_http_req_body(const sr_http_req *rq, size_t *len);
const char *sr_http_req_peer(const sr_http_req *rq);
void **sr_http_req_slot(sr_http_req *rq);
void sr_http_req_on_gone(sr_http_req *rq, void (*on_gone)(sr_http_req *rq));

/* The whole answer, with Content-Length; ends the request. */
int sr_http_respond(sr_http_req *rq, int status, const char *content_type, const char *body, size_t len);
/* The status line and headers of a chunked answer. */
int sr_http_stream_start(sr_http_req *rq, int status, const char *content_type);
/* One chunk (len > 0), written now. */
int sr_http_stream_write(sr_http_req *rq, const char *data, size_t len);
/* The last chunk; ends the request. */
int sr_http_stream_end(sr_http_req *rq);

/* The reason phrase of a status ("Payload Too Large"). */
const char *sr_http_reason(int status);

#endif
