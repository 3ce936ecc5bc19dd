/* transport "tcp": frame headers and handshake messages (see tcp_wire.h). */
#include "transport/tcp_wire.h"

#include <sodium.h>
#include <string.h>

#include "base/status.h"

#define FRAME_MAGIC 0x32465253u  /* "SRF2" */
#define HELLO_MAGIC 0x32485253u  /* "SRH2" */
#define AUTH_MAGIC 0x31415253u   /* "SRA1" */
#define ACCEPT_MAGIC 0x4b4f5253u /* "SROK" */
#define HELLO_VERSION 1

/* hello layout */
enum { H_MAGIC = 0, H_VERSION = 4, H_FLAGS = 6, H_RANK = 8, H_SIZE = 12, H_JOB = 16, H_NONCE = 80 };
_Static_assert(H_NONCE + SR_TP__NONCE_BYTES == SR_TP__HELLO_BYTES, "hello layout");
_Static_assert(H_NONCE - H_JOB == SR_TP__JOB_ID_MAX + 1, "hello job id field");
_Static_assert(4 + SR_TP__MAC_BYTES == SR_TP__AUTH_BYTES, "auth layout");
_Static_assert(crypto_auth_hmacsha256_BYTES == SR_TP__MAC_BYTES, "HMAC-SHA256 size");

static void put16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void sr_tp__frame_encode(unsigned char out[SR_TP__FRAME_BYTES], int32_t tag, int64_t len) {
    put32(out, FRAME_MAGIC);
    put32(out + 4, (uint32_t)tag);
    put64(out + 8, (uint64_t)len);
}

int sr_tp__frame_decode(const unsigned char *buf, size_t n, int64_t max_len, sr_tp__frame *out) {
    if (n < SR_TP__FRAME_BYTES)
        return sr_error_set(SR_EFORMAT, "truncated frame header: %zu of %d bytes", n, SR_TP__FRAME_BYTES);
    uint32_t magic = get32(buf);
    int32_t tag = (int32_t)get32(buf + 4);
    uint64_t len = get64(buf + 8);
    if (magic != FRAME_MAGIC)
        return sr_error_set(SR_EFORMAT, "frame header with bad magic 0x%08x (not a starring tcp frame)", magic);
    if (tag != SR_TP__TAG_HEARTBEAT && (tag < 0 || tag > SR_TP__TAG_WIRE_MAX))
        return sr_error_set(SR_EFORMAT, "frame with tag %d, outside 0..%d", tag, SR_TP__TAG_WIRE_MAX);
    if (len > (uint64_t)max_len)
        return sr_error_set(SR_ERANGE, "frame of %llu bytes (tag %d) is over the cap of %lld bytes (SR_TCP_MAX_MSG)",
                            (unsigned long long)len, tag, (long long)max_len);
    if (tag == SR_TP__TAG_HEARTBEAT && len != 0)
        return sr_error_set(SR_EFORMAT, "heartbeat frame with a %llu-byte payload (must be empty)",
                            (unsigned long long)len);
    out->tag = tag;
    out->len = (int64_t)len;
    return SR_OK;
}

int sr_tp__job_id_check(const char *id, const char *what) {
    size_t n = strnlen(id, SR_TP__JOB_ID_MAX + 1);
    int printable = n > 0 && n <= SR_TP__JOB_ID_MAX;
    for (size_t i = 0; printable && i < n; i++) printable = id[i] > ' ' && id[i] <= '~';
    if (!printable)
        return sr_error_set(SR_EFORMAT, "%s '%.*s%s' is not 1 to %d printable characters without spaces", what,
                            SR_TP__JOB_ID_MAX, id, n > SR_TP__JOB_ID_MAX ? "..." : "", SR_TP__JOB_ID_MAX);
    return SR_OK;
}

void sr_tp__hello_encode(unsigned char out[SR_TP__HELLO_BYTES], const sr_tp__hello *h) {
    memset(out, 0, SR_TP__HELLO_BYTES);
    put32(out + H_MAGIC, HELLO_MAGIC);
    put16(out + H_VERSION, HELLO_VERSION);
    put32(out + H_RANK, (uint32_t)h->rank);
    put32(out + H_SIZE, (uint32_t)h->size);
    memcpy(out + H_JOB, h->job_id, strnlen(h->job_id, SR_TP__JOB_ID_MAX));
    memcpy(out + H_NONCE, h->nonce, SR_TP__NONCE_BYTES);
}

int sr_tp__hello_decode(const unsigned char *buf, size_t n, sr_tp__hello *out) {
    if (n < SR_TP__HELLO_BYTES)
        return sr_error_set(SR_EFORMAT, "truncated handshake hello: %zu of %d bytes", n, SR_TP__HELLO_BYTES);
    uint32_t magic = get32(buf + H_MAGIC);
    if (magic != HELLO_MAGIC)
        return sr_error_set(SR_EFORMAT, "handshake hello with bad magic 0x%08x (not a starring tcp peer)", magic);
    uint16_t version = get16(buf + H_VERSION), flags = get16(buf + H_FLAGS);
    if (version != HELLO_VERSION || flags != 0)
        return sr_error_set(SR_EFORMAT, "handshake version %u (flags 0x%x); this build speaks version %d", version,
                            flags, HELLO_VERSION);
    uint32_t rank = get32(buf + H_RANK), size = get32(buf + H_SIZE);
    if (size < 1 || size > SR_TP__MAX_RANKS || rank >= size)
        return sr_error_set(SR_EFORMAT, "handshake hello from rank %u of %u (ranks 0..size-1, size 1..%d)", rank, size,
                            SR_TP__MAX_RANKS);
    const unsigned char *job = buf + H_JOB;
    if (!memchr(job, 0, SR_TP__JOB_ID_MAX + 1))
        return sr_error_set(SR_EFORMAT, "handshake hello with an unterminated job id");
    for (size_t i = strlen((const char *)job) + 1; i <= SR_TP__JOB_ID_MAX; i++)
        if (job[i]) return sr_error_set(SR_EFORMAT, "handshake hello with bytes after the job id's end");
    int rc = sr_tp__job_id_check((const char *)job, "handshake job id");
    if (rc != SR_OK) return rc;
    out->rank = (int32_t)rank;
    out->size = (int32_t)size;
    memcpy(out->job_id, job, SR_TP__JOB_ID_MAX + 1);
    memcpy(out->nonce, buf + H_NONCE, SR_TP__NONCE_BYTES);
    return SR_OK;
}

static void mac(unsigned char out[SR_TP__MAC_BYTES], const unsigned char *key, size_t key_len, int role,
                const unsigned char *hello_c, const unsigned char *hello_l) {
    static const char domain[] = "starring tcp handshake v1";
    unsigned char r = (unsigned char)role;
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)domain, sizeof domain);
    crypto_auth_hmacsha256_update(&st, &r, 1);
    crypto_auth_hmacsha256_update(&st, hello_c, SR_TP__HELLO_BYTES);
    crypto_auth_hmacsha256_update(&st, hello_l, SR_TP__HELLO_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

void sr_tp__auth_encode(unsigned char out[SR_TP__AUTH_BYTES], const unsigned char *key, size_t key_len, int role,
                        const unsigned char hello_c[SR_TP__HELLO_BYTES],
                        const unsigned char hello_l[SR_TP__HELLO_BYTES]) {
    put32(out, AUTH_MAGIC);
    mac(out + 4, key, key_len, role, hello_c, hello_l);
}

int sr_tp__auth_check(const unsigned char *buf, size_t n, const unsigned char *key, size_t key_len, int role,
                      const unsigned char hello_c[SR_TP__HELLO_BYTES],
                      const unsigned char hello_l[SR_TP__HELLO_BYTES]) {
    if (n < SR_TP__AUTH_BYTES)
        return sr_error_set(SR_EFORMAT, "truncated handshake proof: %zu of %d bytes", n, SR_TP__AUTH_BYTES);
    uint32_t magic = get32(buf);
    if (magic != AUTH_MAGIC) return sr_error_set(SR_EFORMAT, "handshake proof with bad magic 0x%08x", magic);
    unsigned char want[SR_TP__MAC_BYTES];
    mac(want, key, key_len, role, hello_c, hello_l);
    if (crypto_verify_32(want, buf + 4) != 0)
        return sr_error_set(SR_ECOMM, "wrong proof of the job secret (not the same SR_TCP_SECRET_FILE key?)");
    return SR_OK;
}

void sr_tp__accept_encode(unsigned char out[SR_TP__ACCEPT_BYTES]) { put32(out, ACCEPT_MAGIC); }

int sr_tp__accept_check(const unsigned char *buf, size_t n) {
    if (n < SR_TP__ACCEPT_BYTES)
        return sr_error_set(SR_EFORMAT, "truncated handshake accept: %zu of %d bytes", n, SR_TP__ACCEPT_BYTES);
    uint32_t magic = get32(buf);
    if (magic != ACCEPT_MAGIC) return sr_error_set(SR_EFORMAT, "handshake accept with bad magic 0x%08x", magic);
    return SR_OK;
}
