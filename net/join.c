/* join: the proofs of the cluster secret (see join.h), HMAC-SHA256 from
 * libsodium as the tcp transport's handshake. */
#include "net/join.h"

#include <sodium.h>
#include <string.h>

#include "base/status.h"

static const char *label(int role) { return role == SR_JOIN_WORKER ? "starring join worker" : "starring join coordinator"; }

int sr_join_nonce(unsigned char nonce[SR_JOIN_NONCE_BYTES]) {
    if (sodium_init() < 0) return sr_error_set(SR_ESTATE, "libsodium failed to initialise");
    randombytes_buf(nonce, SR_JOIN_NONCE_BYTES);
    return SR_OK;
}

void sr_join_proof(unsigned char out[SR_JOIN_PROOF_BYTES], const unsigned char *secret, size_t secret_len, int role,
                   const unsigned char theirs[SR_JOIN_NONCE_BYTES], const unsigned char mine[SR_JOIN_NONCE_BYTES]) {
    crypto_auth_hmacsha256_state st;
    const char *l = label(role);
    crypto_auth_hmacsha256_init(&st, secret, secret_len);
    /* the label with its NUL, so that no label is a prefix of another */
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)l, strlen(l) + 1);
    crypto_auth_hmacsha256_update(&st, theirs, SR_JOIN_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, mine, SR_JOIN_NONCE_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

int sr_join_check(const unsigned char *proof, size_t n, const unsigned char *secret, size_t secret_len, int role,
                  const unsigned char theirs[SR_JOIN_NONCE_BYTES], const unsigned char mine[SR_JOIN_NONCE_BYTES]) {
    if (n != SR_JOIN_PROOF_BYTES)
        return sr_error_set(SR_ECOMM, "the proof of the cluster secret has %zu bytes, not %d", n, SR_JOIN_PROOF_BYTES);
    unsigned char want[SR_JOIN_PROOF_BYTES];
    sr_join_proof(want, secret, secret_len, role, theirs, mine);
    int same = sodium_memcmp(want, proof, SR_JOIN_PROOF_BYTES) == 0;
    sodium_memzero(want, sizeof want);
    return same ? SR_OK : sr_error_set(SR_ECOMM, "the proof of the cluster secret does not verify: another secret");
}

void sr_join_data_key(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                      const unsigned char salt[SR_JOIN_NONCE_BYTES]) {
    static const char l[] = "starring data-plane key";
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, secret, secret_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)l, sizeof l);
    crypto_auth_hmacsha256_update(&st, salt, SR_JOIN_NONCE_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}
