/* grpc_frame: gRPC's length-prefixed messages; see grpc_frame.h. */
#include "net/grpc_frame.h"

#include "base/status.h"

/* protobuf-c packs into a ProtobufCBuffer: this one appends to an sr_buf */
typedef struct {
    ProtobufCBuffer base;
    sr_buf *b;
} to_buf;

static void to_buf_append(ProtobufCBuffer *pb, size_t len, const uint8_t *data) {
    sr_buf_append(((to_buf *)pb)->b, data, len); /* a failure stays in the buffer */
}

int sr_grpc_frame_append(sr_buf *b, const ProtobufCMessage *m) {
    size_t len = protobuf_c_message_get_packed_size(m);
    if (len > 0xffffffffu)
        return sr_error_set(SR_ERANGE, "gRPC: a message of %zu bytes is over the 4294967295 a prefix can say", len);
    uint8_t h[SR_GRPC_FRAME_PREFIX] = {0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    int rc = sr_buf_reserve(b, sizeof h + len, 0);
    if (rc != SR_OK) return rc;
    sr_buf_append(b, h, sizeof h);
    to_buf sink = {{.append = to_buf_append}, b};
    protobuf_c_message_pack_to_buffer(m, &sink.base);
    return sr_buf_status(b);
}

size_t sr_grpc_frame_len(const uint8_t *p, int *compressed) {
    *compressed = p[0] != 0;
    return (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
}
