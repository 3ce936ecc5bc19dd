/* auth: the API key compared in constant time (see auth.h). */
#include "coordinator/auth.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "base/status.h"

int sr_auth_init(sr_auth *a, const char *key) {
    memset(a, 0, sizeof *a);
    if (!key || !*key) return SR_OK;
    if (sodium_init() < 0) return sr_error_set(SR_ESTATE, "libsodium cannot start");
    size_t n = strlen(key);
    if (n > 4096) return sr_error_set(SR_EINVAL, "the API key is %zu bytes; at most 4096", n);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof a->want);
    crypto_generichash_update(&st, (const unsigned char *)"Bearer ", 7);
    crypto_generichash_update(&st, (const unsigned char *)key, n);
    crypto_generichash_final(&st, a->want, sizeof a->want);
    a->on = 1;
    return SR_OK;
}

int sr_auth_check(const sr_auth *a, const char *value, size_t len) {
    if (!a->on) return 1;
    if (!value) return 0;
    uint8_t got[32];
    crypto_generichash(got, sizeof got, (const unsigned char *)value, len, NULL, 0);
    return sodium_memcmp(got, a->want, sizeof got) == 0;
}
