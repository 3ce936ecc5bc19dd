/* frame: the control plane's messages on a byte stream. Each frame is a
 * 4-byte big-endian length, then that many bytes of a protobuf-c
 * starring.control.v1.Frame (proto/starring/v1/control.proto).
 *
 * The reader takes bytes as they arrive, in any pieces, and checks each
 * length against its cap before allocating the body, so a peer cannot make
 * it allocate more than the cap. A frame over the cap, one that does not
 * decode, or one that carries no message is an error: the connection it
 * came on must be closed (sr_conn does). */
#ifndef SR_NET_FRAME_H
#define SR_NET_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "starring/v1/control.pb-c.h"

typedef Starring__Control__V1__Frame sr_frame;

/* Largest frame body by default: a Prefill of 16M tokens (4 bytes each,
 * packed) fits; anything larger is refused before it is read. */
#define SR_FRAME_MAX_DEFAULT ((size_t)80 << 20)

/* Receives each decoded frame; owns it (sr_frame_free). Returns SR_OK, or a
 * negative code to stop reading (the connection then closes). */
typedef int (*sr_frame_fn)(void *data, sr_frame *f);

/* After the join every frame of a connection carries a MAC under the key
 * both sides derived at join (net/join.h: sr_join_session_key): the body
 * is the packed Frame, then HMAC-SHA256(key, direction | seq | packed
 * Frame), where seq counts that direction's frames from 0 and is not sent.
 * A frame changed, replayed, reordered, reflected back or injected by
 * someone without the key fails, and the connection closes. */
#define SR_FRAME_MAC_BYTES 32
typedef struct {
    int on;
    unsigned char key[SR_FRAME_MAC_BYTES];
    uint8_t dir;       /* whose frames: the sender's role (SR_JOIN_WORKER, SR_JOIN_COORDINATOR) */
    uint64_t seq;      /* the next frame's */
} sr_frame_mac;

void sr_frame_mac_init(sr_frame_mac *m, const unsigned char key[SR_FRAME_MAC_BYTES], int dir);

/* Seals a frame packed by sr_frame_pack (n bytes with the length prefix)
 * in place: appends the MAC at frame + n (SR_FRAME_MAC_BYTES more bytes
 * must be there) and fixes the length. Returns SR_ERANGE past 4 GiB. */
int sr_frame_seal(sr_frame_mac *m, uint8_t *frame, size_t n);

typedef struct {
    sr_frame_mac mac;  /* on: every frame must carry its MAC */
    size_t cap;        /* most body bytes accepted (with the MAC) */
    uint8_t head[4];
    size_t n_head;     /* length bytes read so far */
    uint8_t *body;     /* (len) */
    size_t len, n_body;
} sr_frame_reader;

void sr_frame_reader_init(sr_frame_reader *r, size_t cap);
void sr_frame_reader_free(sr_frame_reader *r);

/* Feeds n bytes; calls fn for every frame they complete (fn may turn
 * r->mac on, for the frames after). On a bad frame returns SR_ERANGE (over
 * the cap), SR_ECOMM (its MAC does not verify) or SR_EFORMAT (does not
 * decode, or no message) with a message naming what was wrong; the reader
 * is then unusable. */
int sr_frame_feed(sr_frame_reader *r, const uint8_t *bytes, size_t n, sr_frame_fn fn, void *data);

/* The length prefix and the packed frame, in one malloc'ed buffer. */
int sr_frame_pack(const sr_frame *f, uint8_t **out, size_t *n);

void sr_frame_free(sr_frame *f);

#endif
