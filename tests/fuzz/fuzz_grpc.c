/* libFuzzer: the gRPC request path. Bytes as a client would send them over
 * TCP go into the server's HTTP/2 session (coordinator/grpc.c, without a
 * socket: grpc_session.h), through the gRPC framing, to request messages
 * decoded as the API's own types (tests/unit/grpc_feed.c). It must never
 * crash, leak or read out of bounds, and what it writes back must parse as
 * HTTP/2 frames with decodable headers. The first input byte picks how the
 * rest is cut into reads (at once, or 1, 7, 100 bytes a read), as a network
 * cuts them. */
#include <stdint.h>
#include <stdlib.h>

#include "base/log.h"
#include "tests/unit/grpc_feed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const size_t pieces[] = {0, 1, 7, 100};
    sr_log_level = SR_LOG_ERROR; /* the server logs every refusal: not the fuzzer's output */
    if (size < 1) return 0;
    grpc_feed_result r;
    if (grpc_feed(data + 1, size - 1, pieces[data[0] & 3], &r) != 0) abort();
    if (r.bad_output) abort();
    return 0;
}
