/* transport "tcp", the bytes on the wire: frame headers and the handshake
 * messages. Encoders and decoders are pure functions (bytes in, fields or an
 * error with its message out) so that they can be fuzzed
 * (tests/fuzz/fuzz_tcp_*.c) and fed the kept inputs (tests/data/tcp/). All
 * integers are little-endian.
 *
 * The handshake, per connection (the higher rank C dials the lower rank L):
 *
 *   C -> L  hello(C)                    rank, size, job id, a fresh nonce
 *   L -> C  hello(L), auth(L)           auth = HMAC-SHA256(secret, role, hello(C), hello(L))
 *   C -> L  auth(C)
 *   L -> C  accept
 *
 * Each side's MAC covers the other side's fresh nonce and names its own role,
 * so a recorded or reflected proof does not verify. The frames that follow
 * are not authenticated: the handshake keeps out processes without the
 * secret, not someone who can rewrite packets on the network. */
#ifndef SR_TRANSPORT_TCP_WIRE_H
#define SR_TRANSPORT_TCP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

#define SR_TP__FRAME_BYTES 16
#define SR_TP__HELLO_BYTES 112
#define SR_TP__AUTH_BYTES 36
#define SR_TP__ACCEPT_BYTES 4
#define SR_TP__NONCE_BYTES 32
#define SR_TP__MAC_BYTES 32
#define SR_TP__JOB_ID_MAX 63 /* characters */
#define SR_TP__MAX_RANKS 65536
/* the user's tags and the frontend's collectives above them */
#define SR_TP__TAG_WIRE_MAX (SR_TP_TAG_MAX + 16)
/* a frame with no payload that says "still here" (see tcp.c) */
#define SR_TP__TAG_HEARTBEAT (-1)
/* secrets longer than this are not keys someone meant to write */
#define SR_TP__KEY_MIN 16
#define SR_TP__KEY_MAX 4096

typedef struct {
    int32_t tag; /* 0..SR_TP__TAG_WIRE_MAX, or SR_TP__TAG_HEARTBEAT */
    int64_t len; /* payload bytes that follow */
} sr_tp__frame;

void sr_tp__frame_encode(unsigned char out[SR_TP__FRAME_BYTES], int32_t tag, int64_t len);
/* SR_EFORMAT for a short buffer, bad magic or tag, a heartbeat with a
 * payload; SR_ERANGE for a length over max_len. */
int sr_tp__frame_decode(const unsigned char *buf, size_t n, int64_t max_len, sr_tp__frame *out);

typedef struct {
    int32_t rank, size;
    char job_id[SR_TP__JOB_ID_MAX + 1]; /* printable ASCII, no spaces, NUL-terminated */
    unsigned char nonce[SR_TP__NONCE_BYTES];
} sr_tp__hello;

/* Checks a job id as the handshake carries it; `what` names its source in
 * the message (e.g. "SR_TCP_JOB_ID"). */
int sr_tp__job_id_check(const char *id, const char *what);

void sr_tp__hello_encode(unsigned char out[SR_TP__HELLO_BYTES], const sr_tp__hello *h);
/* SR_EFORMAT for a short buffer, another protocol or version, a rank or size
 * out of range, or a job id that is not printable and terminated. */
int sr_tp__hello_decode(const unsigned char *buf, size_t n, sr_tp__hello *out);

enum { SR_TP__ROLE_LISTENER = 1, SR_TP__ROLE_CONNECTOR = 2 };

/* The proof of `role`, over the two encoded hellos. */
void sr_tp__auth_encode(unsigned char out[SR_TP__AUTH_BYTES], const unsigned char *key, size_t key_len, int role,
                        const unsigned char hello_c[SR_TP__HELLO_BYTES],
                        const unsigned char hello_l[SR_TP__HELLO_BYTES]);
/* SR_EFORMAT for a short buffer or bad magic; SR_ECOMM if the MAC is not
 * role's over these hellos with this key (compared in constant time). */
int sr_tp__auth_check(const unsigned char *buf, size_t n, const unsigned char *key, size_t key_len, int role,
                      const unsigned char hello_c[SR_TP__HELLO_BYTES],
                      const unsigned char hello_l[SR_TP__HELLO_BYTES]);

void sr_tp__accept_encode(unsigned char out[SR_TP__ACCEPT_BYTES]);
/* SR_EFORMAT unless buf is an accept. */
int sr_tp__accept_check(const unsigned char *buf, size_t n);

#endif
