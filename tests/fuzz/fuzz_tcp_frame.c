/* libFuzzer target for the tcp frame-header decoder (transport/tcp_wire.c).
 * The input is read as the receiver reads a connection: a header, its
 * payload skipped, the next header, until the bytes run out or a header is
 * refused. A refusal must be SR_EFORMAT or SR_ERANGE with a message; a
 * header that decodes must be in range and encode back to the same bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "transport/tcp_wire.h"

#define CAP ((int64_t)4 << 30) /* the default SR_TCP_MAX_MSG */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t at = 0;
    for (;;) {
        sr_tp__frame f;
        sr_error_clear();
        int rc = sr_tp__frame_decode(data + at, size - at, CAP, &f);
        if (rc != SR_OK) {
            if ((rc != SR_EFORMAT && rc != SR_ERANGE) || !strstr(sr_error_msg(), "frame")) __builtin_trap();
            return 0;
        }
        int heartbeat = f.tag == SR_TP__TAG_HEARTBEAT;
        if (f.len < 0 || f.len > CAP || (heartbeat && f.len != 0) ||
            (!heartbeat && (f.tag < 0 || f.tag > SR_TP__TAG_WIRE_MAX)))
            __builtin_trap();
        unsigned char again[SR_TP__FRAME_BYTES];
        sr_tp__frame_encode(again, f.tag, f.len);
        if (memcmp(again, data + at, SR_TP__FRAME_BYTES) != 0) __builtin_trap();
        at += SR_TP__FRAME_BYTES;
        if ((uint64_t)f.len > size - at) return 0; /* the payload would still be arriving */
        at += (size_t)f.len;
    }
}
