/* grpc: a gRPC server on a libuv loop: HTTP/2 by nghttp2, the
 * `application/grpc` framing (a flag byte, a 4-byte big-endian length, the
 * message), trailers with grpc-status and grpc-message.
 *
 * A method is a path and three callbacks. Each request message is handed to
 * on_message as bytes (the method unpacks it with protobuf-c), on_end marks
 * that the client has sent its last one, and on_cancel that the call is gone
 * before the method finished it: the client reset the stream or
 * disconnected, or its grpc-timeout passed (the server then answers
 * DEADLINE_EXCEEDED itself). After on_cancel returns, or once the method has
 * called sr_grpc_finish, the call belongs to the server again and must not
 * be touched.
 *
 * Input is capped before it is buffered: a request message longer than
 * max_message is answered RESOURCE_EXHAUSTED, an unknown path
 * UNIMPLEMENTED, a call without the API key (opts.api_key)
 * UNAUTHENTICATED; bytes that are not HTTP/2 close that connection. A
 * refusal is logged with the peer's address. A client that is too slow
 * loses its connection (logged): one that has not sent the HTTP/2 preface
 * within timeout_s, a call's headers or a request message not whole within
 * timeout_s of their first byte, a call silent for idle_s between two
 * messages; an idle connection (no call open for idle_s) gets GOAWAY. A
 * connection over max_conns is closed as it is accepted (logged at most
 * once a second, net/limit.h). Replies are flushed once per loop turn (a
 * uv_prepare_t). */
#ifndef SR_COORDINATOR_GRPC_H
#define SR_COORDINATOR_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <uv.h>

/* gRPC status codes (grpc/doc/statuscodes.md) */
enum {
    SR_GRPC_OK = 0,
    SR_GRPC_CANCELLED = 1,
    SR_GRPC_UNKNOWN = 2,
    SR_GRPC_INVALID_ARGUMENT = 3,
    SR_GRPC_DEADLINE_EXCEEDED = 4,
    SR_GRPC_NOT_FOUND = 5,
    SR_GRPC_RESOURCE_EXHAUSTED = 8,
    SR_GRPC_FAILED_PRECONDITION = 9,
    SR_GRPC_UNIMPLEMENTED = 12,
    SR_GRPC_INTERNAL = 13,
    SR_GRPC_UNAVAILABLE = 14,
    SR_GRPC_UNAUTHENTICATED = 16,
};

typedef struct sr_grpc sr_grpc;
typedef struct sr_grpc_call sr_grpc_call;

typedef struct {
    const char *path; /* "/package.Service/Method" */
    void (*on_message)(sr_grpc_call *call, const uint8_t *msg, size_t len);
    void (*on_end)(sr_grpc_call *call);
    void (*on_cancel)(sr_grpc_call *call, int status); /* SR_GRPC_CANCELLED or _DEADLINE_EXCEEDED */
} sr_grpc_method;

typedef struct {
    size_t max_message;         /* request message bytes; 0: SR_GRPC_MAX_MESSAGE */
    uint32_t max_streams;       /* concurrent calls per connection; 0: 100 */
    int max_conns;              /* connections at once; 0: 1024 */
    /* a client's time to send its HTTP/2 preface, a call's headers, and a
     * request message whole once begun; 0: 10 */
    double timeout_s;
    /* a connection with no call open, or a call between two request
     * messages, may be silent for this long; 0: 300 */
    double idle_s;
    /* NULL or "": no key. Else every call needs "authorization: Bearer KEY"
     * metadata (UNAUTHENTICATED otherwise, logged with the peer's address),
     * but those whose path starts with open_prefix (the health checks) */
    const char *api_key;
    const char *open_prefix;
    /* optional: every call's status as it ends (method: the method table's
     * path, NULL for an unknown one), with sr_grpc_data's data */
    void (*on_status)(const char *method, int status, void *data);
} sr_grpc_opts;

#define SR_GRPC_MAX_MESSAGE ((size_t)4 << 20)

/* Listens on host:port (port 0: any; sr_grpc_port tells which) and serves
 * the methods (copied; the path strings must outlive the server). data is
 * handed back by sr_grpc_data. */
int sr_grpc_open(sr_grpc **out, uv_loop_t *loop, const char *host, int port, const sr_grpc_method *methods,
                 int n_methods, const sr_grpc_opts *opts, void *data);
/* Stops listening and closes every connection (their calls are cancelled);
 * the memory goes once the loop has run the close callbacks. */
void sr_grpc_close(sr_grpc *g);
int sr_grpc_port(const sr_grpc *g);
void *sr_grpc_data(const sr_grpc *g);

/* The server of a call, the method's user slot, and the method's path. */
sr_grpc *sr_grpc_call_server(const sr_grpc_call *call);
void **sr_grpc_call_slot(sr_grpc_call *call);
const char *sr_grpc_call_path(const sr_grpc_call *call);
/* Seconds left until the call's grpc-timeout (a large number without one). */
double sr_grpc_call_time_left(const sr_grpc_call *call);

/* Queues one response message (packed here). */
int sr_grpc_send(sr_grpc_call *call, const ProtobufCMessage *msg);
/* Ends the call with a status and, unless OK, a message for the user
 * (printf-style; sent percent-encoded). */
void sr_grpc_finish(sr_grpc_call *call, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Name of a status ("NOT_FOUND"). */
const char *sr_grpc_status_name(int status);

#endif
