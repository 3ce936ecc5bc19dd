/* grpc_frame: gRPC's length-prefixed messages, as both the server
 * (coordinator/grpc.c) and the C client (clients/c) put them in the body of
 * an HTTP/2 stream: a flag byte (0: not compressed), the length in 4 bytes
 * big-endian, then the message. */
#ifndef SR_NET_GRPC_FRAME_H
#define SR_NET_GRPC_FRAME_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define SR_GRPC_FRAME_PREFIX 5

/* Appends m, packed, behind its prefix. SR_ERANGE for a message over
 * 4 GiB - 1 (the prefix cannot say it), SR_ENOMEM. */
int sr_grpc_frame_append(sr_buf *b, const ProtobufCMessage *m);

/* The prefix at p (SR_GRPC_FRAME_PREFIX bytes): the message's length, and
 * in *compressed its flag byte. */
size_t sr_grpc_frame_len(const uint8_t *p, int *compressed);

#endif
