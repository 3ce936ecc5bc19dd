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

/* HMAC-SHA256(secret, label with its NUL | a | b), b may be NULL; with
 * the NUL no label is a prefix of another. */
static void derive(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                   const char *label, const unsigned char a[SR_JOIN_NONCE_BYTES],
                   const unsigned char b[SR_JOIN_NONCE_BYTES]) {
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, secret, secret_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label) + 1);
    crypto_auth_hmacsha256_update(&st, a, SR_JOIN_NONCE_BYTES);
    if (b) crypto_auth_hmacsha256_update(&st, b, SR_JOIN_NONCE_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

void sr_join_proof(unsigned char out[SR_JOIN_PROOF_BYTES], const unsigned char *secret, size_t secret_len, int role,
                   const unsigned char theirs[SR_JOIN_NONCE_BYTES], const unsigned char mine[SR_JOIN_NONCE_BYTES]) {
    derive(out, secret, secret_len, label(role), theirs, mine);
}

void sr_join_session_key(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                         const unsigned char nonce_c[SR_JOIN_NONCE_BYTES],
                         const unsigned char nonce_w[SR_JOIN_NONCE_BYTES]) {
    derive(out, secret, secret_len, "starring control session key", nonce_c, nonce_w);
}

void sr_join_data_key(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                      const unsigned char salt[SR_JOIN_NONCE_BYTES]) {
    derive(out, secret, secret_len, "starring data-plane key", salt, NULL);
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
