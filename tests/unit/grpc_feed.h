/* grpc_feed: bytes as a gRPC client would send them, through the server's
 * HTTP/2 session (coordinator/grpc_session.h, no socket) to the decoded
 * request messages, with methods that decode them as the API's own types
 * and answer; then the server's bytes parsed back (frames, HPACK headers,
 * grpc-status). Shared by tests/fuzz/fuzz_grpc.c and test_grpc_corpus. */
#ifndef SR_TESTS_GRPC_FEED_H
#define SR_TESTS_GRPC_FEED_H

#include <stddef.h>
#include <stdint.h>

#define GRPC_FEED_MAX_MESSAGE 4096 /* small, so that a fuzzed length goes over it often */

typedef struct {
    int decoded;          /* request messages that decoded as their method's type */
    int undecodable;      /* those that did not (answered INVALID_ARGUMENT) */
    int cancelled;        /* calls the server took back from the methods */
    int statuses[17];     /* grpc-status values answered, by code */
    int first_status;     /* the first grpc-status answered; -1: none */
    int closed;           /* the server closed the connection */
    int bad_output;       /* the server's bytes did not parse as HTTP/2 frames and headers */
    size_t out_bytes;
} grpc_feed_result;

/* Feeds data (in pieces of `piece` bytes; 0: at once) to a fresh server and
 * connection, runs the loop until the answers are written, closes it all.
 * 0, or -1 if the server could not be set up. */
int grpc_feed(const uint8_t *data, size_t n, size_t piece, grpc_feed_result *r);

#endif
