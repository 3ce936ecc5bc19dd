/* grpc_session: a connection of the gRPC server (grpc.h) without a socket,
 * for the fuzzer and its regression test: bytes go in as a client would
 * send them, and what the server writes goes to a sink. Everything else
 * (the loop's turns flush the answers, timers, sr_grpc_close) is as for a
 * connection from the network. */
#ifndef SR_COORDINATOR_GRPC_SESSION_H
#define SR_COORDINATOR_GRPC_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "coordinator/grpc.h"

typedef struct sr_grpc__conn sr_grpc__conn;

/* What the server writes (bytes, n); (NULL, 0) once when it closes the
 * connection, which is gone then. */
typedef void (*sr_grpc__sink)(void *data, const uint8_t *bytes, size_t n);

/* A server that does not listen (as sr_grpc_open but for the socket). */
int sr_grpc__new(sr_grpc **out, uv_loop_t *loop, const sr_grpc_method *methods, int n_methods,
                 const sr_grpc_opts *opts, void *data);
int sr_grpc__conn_open(sr_grpc__conn **out, sr_grpc *g, sr_grpc__sink sink, void *data);
/* Bytes from the client. SR_OK, or an error when the server closed the
 * connection over them (the sink has been told; the connection is gone). */
int sr_grpc__conn_feed(sr_grpc__conn *c, const uint8_t *bytes, size_t n);

#endif
