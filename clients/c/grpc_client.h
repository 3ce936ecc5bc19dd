/* grpc_client: one gRPC call at a time over HTTP/2 (nghttp2) on a blocking
 * socket, for the command-line client. The request messages are framed up
 * front; response messages are handed to a callback as they arrive. */
#ifndef SR_CLIENTS_GRPC_CLIENT_H
#define SR_CLIENTS_GRPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

typedef struct sr_gc sr_gc;

/* Receives each response message (bytes to unpack); non-zero cancels. */
typedef int (*sr_gc_msg_fn)(void *data, const uint8_t *msg, size_t len);

/* Connects to host:port. */
int sr_gc_open(sr_gc **out, const char *host, int port);
void sr_gc_close(sr_gc *c);

/* Frames and queues one request message of the next call. */
int sr_gc_add(sr_gc *c, const ProtobufCMessage *m);

/* Runs the call: sends the queued messages, ends the request, and returns
 * the grpc-status (0 OK; -1 when the connection failed), with
 * grpc-message in msg. */
int sr_gc_call(sr_gc *c, const char *path, sr_gc_msg_fn fn, void *data, char *msg, size_t cap);

#endif
