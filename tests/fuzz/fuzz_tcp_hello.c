/* libFuzzer target for the tcp handshake decoders (transport/tcp_wire.c),
 * from the listener's side: the input is what a dialler sends, a hello then
 * its proof. A hello must decode (in range, a printable job id, encoding
 * back to the same bytes) or fail with SR_EFORMAT; the proof that follows
 * must be refused (nobody here holds the key), while the right proof over
 * the same hellos verifies and the listener's own proof reflected back does
 * not. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "transport/tcp_wire.h"

static const unsigned char key[32] = "fuzz key, never on any wire 0123";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sr_tp__hello h;
    sr_error_clear();
    int rc = sr_tp__hello_decode(data, size, &h);
    if (rc != SR_OK) {
        if (rc != SR_EFORMAT || !strstr(sr_error_msg(), "handshake")) __builtin_trap();
        return 0;
    }
    size_t n = strnlen(h.job_id, sizeof h.job_id);
    if (h.size < 1 || h.size > SR_TP__MAX_RANKS || h.rank < 0 || h.rank >= h.size || n == 0 ||
        n > SR_TP__JOB_ID_MAX || sr_tp__job_id_check(h.job_id, "job id") != SR_OK)
        __builtin_trap();
    unsigned char again[SR_TP__HELLO_BYTES];
    sr_tp__hello_encode(again, &h);
    if (memcmp(again, data, SR_TP__HELLO_BYTES) != 0) __builtin_trap();

    sr_tp__hello lh = h;
    lh.rank = 0;
    memset(lh.nonce, 0x42, sizeof lh.nonce);
    unsigned char mine[SR_TP__HELLO_BYTES];
    sr_tp__hello_encode(mine, &lh);
    const uint8_t *rest = data + SR_TP__HELLO_BYTES;
    size_t left = size - SR_TP__HELLO_BYTES;
    rc = sr_tp__auth_check(rest, left, key, sizeof key, SR_TP__ROLE_CONNECTOR, data, mine);
    if (rc != SR_EFORMAT && rc != SR_ECOMM) __builtin_trap();
    if (left >= SR_TP__AUTH_BYTES) {
        rc = sr_tp__accept_check(rest + SR_TP__AUTH_BYTES, left - SR_TP__AUTH_BYTES);
        if (rc != SR_OK && rc != SR_EFORMAT) __builtin_trap();
    }
    unsigned char good[SR_TP__AUTH_BYTES], ours[SR_TP__AUTH_BYTES];
    sr_tp__auth_encode(good, key, sizeof key, SR_TP__ROLE_CONNECTOR, data, mine);
    sr_tp__auth_encode(ours, key, sizeof key, SR_TP__ROLE_LISTENER, data, mine);
    if (sr_tp__auth_check(good, sizeof good, key, sizeof key, SR_TP__ROLE_CONNECTOR, data, mine) != SR_OK ||
        sr_tp__auth_check(ours, sizeof ours, key, sizeof key, SR_TP__ROLE_CONNECTOR, data, mine) != SR_ECOMM)
        __builtin_trap();
    return 0;
}
