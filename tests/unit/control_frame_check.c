/* The control-frame decoder's check (see control_frame_check.h). */
#include "tests/unit/control_frame_check.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "net/frame.h"

#define CAP 4096          /* the cap before the join (SR_JOIN_FRAME_MAX) */
#define MAX_FRAMES 64

typedef struct {
    int n;
    size_t len[MAX_FRAMES];
    uint8_t *packed[MAX_FRAMES]; /* each frame packed again */
    const char *bad;
} seen;

/* protobuf-c keeps the fields it does not know and packs them again as it
 * read them, even a field 0 in a varint of two bytes, which then does not
 * decode (found by the fuzzer; the daemon never packs a received frame
 * again): the round trip is of the fields known. */
static void drop_unknown(ProtobufCMessage *m) {
    for (unsigned i = 0; i < m->n_unknown_fields; i++) free(m->unknown_fields[i].data);
    free(m->unknown_fields);
    m->unknown_fields = NULL;
    m->n_unknown_fields = 0;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        char *at = (char *)m + fd->offset;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(size_t *)((char *)m + fd->quantifier_offset);
            for (size_t k = 0; k < n; k++) drop_unknown((*(ProtobufCMessage ***)at)[k]);
        } else if (*(ProtobufCMessage **)at) {
            drop_unknown(*(ProtobufCMessage **)at);
        }
    }
}

static int keep(void *data, sr_frame *f) {
    seen *s = data;
    size_t n = 0;
    uint8_t *b = NULL;
    drop_unknown(&f->base);
    if (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND__NOT_SET) s->bad = "a frame without a message was delivered";
    else if (sr_frame_pack(f, &b, &n) != SR_OK) s->bad = "a frame that decoded does not pack";
    sr_frame_free(f);
    if (!b) return SR_OK;
    /* packed again, it decodes and packs to the same bytes */
    sr_frame *g = starring__control__v1__frame__unpack(NULL, n - 4, b + 4);
    uint8_t *c = NULL;
    size_t m = 0;
    if (!g || sr_frame_pack(g, &c, &m) != SR_OK || m != n || memcmp(b, c, n) != 0)
        s->bad = "a frame packed again does not decode to the same frame";
    sr_frame_free(g);
    free(c);
    if (s->n < MAX_FRAMES) {
        s->len[s->n] = n;
        s->packed[s->n] = b;
    } else {
        free(b);
    }
    s->n++;
    return SR_OK;
}

static void drop(seen *s) {
    for (int i = 0; i < s->n && i < MAX_FRAMES; i++) free(s->packed[i]);
}

static const char *same(const seen *a, int rc_a, const seen *b, int rc_b) {
    if (a->bad) return a->bad;
    if (b->bad) return b->bad;
    if (rc_a != rc_b || a->n != b->n) return "two ways of reading the same frames disagree";
    for (int i = 0; i < a->n && i < MAX_FRAMES; i++)
        if (a->len[i] != b->len[i] || memcmp(a->packed[i], b->packed[i], a->len[i]) != 0)
            return "two ways of reading the same frames give different frames";
    return NULL;
}

/* Feeds bytes in pieces of `piece` (0: all at once) to a reader, with a MAC check under key if key. */
static int feed(const uint8_t *bytes, size_t n, size_t piece, const unsigned char *key, seen *s, const char **msg_bad) {
    sr_frame_reader r;
    sr_frame_reader_init(&r, key ? CAP + SR_FRAME_MAC_BYTES : CAP);
    if (key) sr_frame_mac_init(&r.mac, key, 1);
    sr_error_clear();
    int rc = SR_OK;
    for (size_t at = 0; at < n && rc == SR_OK;) {
        size_t k = piece && piece < n - at ? piece : n - at;
        rc = sr_frame_feed(&r, bytes + at, k, keep, s);
        at += k;
    }
    sr_frame_reader_free(&r);
    if (rc != SR_OK && ((rc != SR_ERANGE && rc != SR_EFORMAT && rc != SR_ECOMM) || !strstr(sr_error_msg(), "control frame")))
        *msg_bad = "a refusal is not SR_ERANGE, SR_EFORMAT or SR_ECOMM with a message about the control frame";
    return rc;
}

const char *sr_test_control_stream(const uint8_t *data, size_t size, int *frames, int *rc) {
    *frames = 0;
    *rc = SR_OK;
    if (size == 0) return NULL;
    int mode = data[0];
    data++;
    size--;
    const char *bad = NULL, *why;
    seen a = {0}, b = {0};
    int rc_a, rc_b;
    if (!(mode & 1)) {
        rc_a = feed(data, size, (size_t)(mode >> 1) + 1, NULL, &a, &bad);
        rc_b = feed(data, size, 0, NULL, &b, &bad);
    } else {
        /* the pieces as a sender would frame them, sealed: the same frames
         * and outcome as the unsealed pieces (the cap counts the MAC too) */
        static const unsigned char key[SR_FRAME_MAC_BYTES] = "fuzz control frame key, 32 bytes";
        sr_frame_mac m;
        sr_frame_mac_init(&m, key, 1);
        uint8_t *plain = malloc(size + 4), *sealed = malloc(size / 4 * (4 + SR_FRAME_MAC_BYTES) + size + 4 + SR_FRAME_MAC_BYTES);
        if (!plain || !sealed) abort();
        size_t np = 0, ns = 0;
        for (size_t at = 0; at + 4 <= size;) {
            size_t len = (size_t)data[at] << 24 | (size_t)data[at + 1] << 16 | (size_t)data[at + 2] << 8 | data[at + 3];
            if (len > size - at - 4) len = size - at - 4;
            if (len > CAP) len = CAP;
            uint8_t *p = plain + np, *q = sealed + ns;
            p[0] = q[0] = (uint8_t)(len >> 24);
            p[1] = q[1] = (uint8_t)(len >> 16);
            p[2] = q[2] = (uint8_t)(len >> 8);
            p[3] = q[3] = (uint8_t)len;
            memcpy(p + 4, data + at + 4, len);
            memcpy(q + 4, data + at + 4, len);
            if (sr_frame_seal(&m, q, 4 + len) != SR_OK) abort();
            np += 4 + len;
            ns += 4 + len + SR_FRAME_MAC_BYTES;
            at += 4 + len;
        }
        rc_a = feed(plain, np, 0, NULL, &a, &bad);
        rc_b = feed(sealed, ns, (size_t)(mode >> 1) + 1, key, &b, &bad);
        free(plain);
        free(sealed);
        if (rc_b == SR_ECOMM) bad = "a sealed frame fails its MAC";
    }
    why = bad ? bad : same(&a, rc_a, &b, rc_b);
    *frames = a.n;
    *rc = rc_a;
    drop(&a);
    drop(&b);
    return why;
}
