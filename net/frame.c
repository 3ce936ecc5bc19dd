/* frame: length-prefixed protobuf frames (see frame.h). */
#include "net/frame.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

void sr_frame_reader_init(sr_frame_reader *r, size_t cap) {
    memset(r, 0, sizeof *r);
    r->cap = cap;
}

void sr_frame_reader_free(sr_frame_reader *r) {
    free(r->body);
    r->body = NULL;
}

static int frame__decode(sr_frame_reader *r, sr_frame_fn fn, void *data) {
    sr_frame *f = starring__control__v1__frame__unpack(NULL, r->len, r->body);
    free(r->body);
    r->body = NULL;
    size_t len = r->len;
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
    b[0] = (uint8_t)(len >> 24);
    b[1] = (uint8_t)(len >> 16);
    b[2] = (uint8_t)(len >> 8);
    b[3] = (uint8_t)len;
    starring__control__v1__frame__pack(f, b + 4);
    *out = b;
    *n = len + 4;
    return SR_OK;
}

void sr_frame_free(sr_frame *f) {
    if (f) starring__control__v1__frame__free_unpacked(f, NULL);
}
