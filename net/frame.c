/* frame: length-prefixed protobuf frames (see frame.h). */
#include "net/frame.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "base/status.h"

void sr_frame_reader_init(sr_frame_reader *r, size_t cap) {
    memset(r, 0, sizeof *r);
    r->cap = cap;
}

void sr_frame_reader_free(sr_frame_reader *r) {
    free(r->body);
    r->body = NULL;
    sodium_memzero(&r->mac, sizeof r->mac);
}

void sr_frame_mac_init(sr_frame_mac *m, const unsigned char key[SR_FRAME_MAC_BYTES], int dir) {
    memcpy(m->key, key, SR_FRAME_MAC_BYTES);
    m->dir = (uint8_t)dir;
    m->seq = 0;
    m->on = 1;
}

/* The MAC of the next frame of m's direction over body (n bytes). */
static void mac_of(const sr_frame_mac *m, const uint8_t *body, size_t n, unsigned char out[SR_FRAME_MAC_BYTES]) {
    uint8_t head[9] = {m->dir};
    for (int i = 0; i < 8; i++) head[1 + i] = (uint8_t)(m->seq >> (56 - 8 * i));
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, m->key, SR_FRAME_MAC_BYTES);
    crypto_auth_hmacsha256_update(&st, head, sizeof head);
    crypto_auth_hmacsha256_update(&st, body, n);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

static void put_len(uint8_t *b, size_t len) {
    b[0] = (uint8_t)(len >> 24);
    b[1] = (uint8_t)(len >> 16);
    b[2] = (uint8_t)(len >> 8);
    b[3] = (uint8_t)len;
}

int sr_frame_seal(sr_frame_mac *m, uint8_t *frame, size_t n) {
    if (n < 4 || n - 4 > 0xffffffffu - SR_FRAME_MAC_BYTES)
        return sr_error_set(SR_ERANGE, "control frame of %zu bytes is too large to seal", n);
    mac_of(m, frame + 4, n - 4, frame + n);
    put_len(frame, n - 4 + SR_FRAME_MAC_BYTES);
    m->seq++;
    return SR_OK;
}

static int frame__decode(sr_frame_reader *r, sr_frame_fn fn, void *data) {
    size_t len = r->len;
    if (r->mac.on) {
        unsigned char want[SR_FRAME_MAC_BYTES];
        int ok = len >= SR_FRAME_MAC_BYTES;
        if (ok) {
            len -= SR_FRAME_MAC_BYTES;
            mac_of(&r->mac, r->body, len, want);
            ok = sodium_memcmp(want, r->body + len, SR_FRAME_MAC_BYTES) == 0;
        }
        if (!ok) {
            free(r->body);
            r->body = NULL;
            return sr_error_set(SR_ECOMM, "control frame %llu (%zu bytes) fails its MAC: changed, replayed, reordered "
                                "or not from the peer that joined; cut off", (unsigned long long)r->mac.seq, r->len);
        }
        r->mac.seq++;
    }
    sr_frame *f = starring__control__v1__frame__unpack(NULL, len, r->body);
    free(r->body);
    r->body = NULL;
    r->n_head = r->n_body = r->len = 0;
    if (!f) return sr_error_set(SR_EFORMAT, "control frame of %zu bytes is not a starring.control.v1.Frame", len);
    if (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND__NOT_SET) {
        sr_frame_free(f);
        return sr_error_set(SR_EFORMAT, "control frame of %zu bytes carries no message", len);
    }
    return fn(data, f);
}

int sr_frame_feed(sr_frame_reader *r, const uint8_t *bytes, size_t n, sr_frame_fn fn, void *data) {
    while (n > 0) {
        if (r->n_head < 4) {
            size_t take = 4 - r->n_head < n ? 4 - r->n_head : n;
            memcpy(r->head + r->n_head, bytes, take);
            r->n_head += take;
            bytes += take;
            n -= take;
            if (r->n_head < 4) break;
            r->len = (size_t)r->head[0] << 24 | (size_t)r->head[1] << 16 | (size_t)r->head[2] << 8 | r->head[3];
            if (r->len > r->cap)
                return sr_error_set(SR_ERANGE, "control frame length %zu is over the cap of %zu bytes", r->len,
                                    r->cap);
            r->n_body = 0;
            /* one byte more so that an empty frame has a buffer too */
            if (!(r->body = malloc(r->len + 1)))
                return sr_error_set(SR_ENOMEM, "out of memory for a control frame of %zu bytes", r->len);
        }
        size_t take = r->len - r->n_body < n ? r->len - r->n_body : n;
        memcpy(r->body + r->n_body, bytes, take);
        r->n_body += take;
        bytes += take;
        n -= take;
        if (r->n_body == r->len) {
            int rc = frame__decode(r, fn, data);
            if (rc != SR_OK) return rc;
        }
    }
    return SR_OK;
}

int sr_frame_pack(const sr_frame *f, uint8_t **out, size_t *n) {
    size_t len = starring__control__v1__frame__get_packed_size(f);
    if (len > 0xffffffffu) return sr_error_set(SR_ERANGE, "control frame of %zu bytes is too large", len);
    uint8_t *b = malloc(len + 4);
    if (!b) return sr_error_set(SR_ENOMEM, "out of memory for a control frame of %zu bytes", len);
    put_len(b, len);
    starring__control__v1__frame__pack(f, b + 4);
    *out = b;
    *n = len + 4;
    return SR_OK;
}

void sr_frame_free(sr_frame *f) {
    if (f) starring__control__v1__frame__free_unpacked(f, NULL);
}
