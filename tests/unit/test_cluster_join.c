/* net/join.c, the proofs of the cluster secret at join: a proof verifies
 * with the secret, role and nonces it was made with, and with no other (a
 * wrong secret, the other role's label, a reflected proof with the nonces
 * swapped, one bit changed, a short proof); the data plane's key depends on
 * the secret and the salt, a control connection's key on the secret and
 * both nonces in their order; nonces are fresh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "net/join.h"

static unsigned char secret[32], other[32], a[SR_JOIN_NONCE_BYTES], b[SR_JOIN_NONCE_BYTES];

static int setup(void **state) {
    for (int i = 0; i < 32; i++) {
        secret[i] = (unsigned char)i;
        other[i] = (unsigned char)(i + 1);
    }
    if (sr_join_nonce(a) != SR_OK || sr_join_nonce(b) != SR_OK) return -1;
    return 0;
}

static void test_proof_verifies(void **state) {
    unsigned char p[SR_JOIN_PROOF_BYTES];
    sr_join_proof(p, secret, sizeof secret, SR_JOIN_WORKER, a, b);
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_WORKER, a, b), SR_OK);
    sr_join_proof(p, secret, sizeof secret, SR_JOIN_COORDINATOR, b, a);
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_COORDINATOR, b, a), SR_OK);
}

static void test_proof_refused(void **state) {
    unsigned char p[SR_JOIN_PROOF_BYTES];
    sr_join_proof(p, other, sizeof other, SR_JOIN_WORKER, a, b);
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_WORKER, a, b), SR_ECOMM);
    assert_non_null(strstr(sr_error_msg(), "another secret"));
    sr_join_proof(p, secret, sizeof secret, SR_JOIN_WORKER, a, b);
    /* the coordinator's proof over the same nonces is not the worker's */
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_COORDINATOR, a, b), SR_ECOMM);
    /* reflected: the nonces the other way round */
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_WORKER, b, a), SR_ECOMM);
    assert_int_equal(sr_join_check(p, sizeof p - 1, secret, sizeof secret, SR_JOIN_WORKER, a, b), SR_ECOMM);
    assert_non_null(strstr(sr_error_msg(), "31 bytes"));
    assert_int_equal(sr_join_check(NULL, 0, secret, sizeof secret, SR_JOIN_WORKER, a, b), SR_ECOMM);
    p[7] ^= 4;
    assert_int_equal(sr_join_check(p, sizeof p, secret, sizeof secret, SR_JOIN_WORKER, a, b), SR_ECOMM);
}

static void test_data_key(void **state) {
    unsigned char k1[SR_JOIN_KEY_BYTES], k2[SR_JOIN_KEY_BYTES], k3[SR_JOIN_KEY_BYTES], k4[SR_JOIN_KEY_BYTES];
    sr_join_data_key(k1, secret, sizeof secret, a);
    sr_join_data_key(k2, secret, sizeof secret, a);
    sr_join_data_key(k3, other, sizeof other, a);
    sr_join_data_key(k4, secret, sizeof secret, b);
    assert_memory_equal(k1, k2, sizeof k1);
    assert_memory_not_equal(k1, k3, sizeof k1);
    assert_memory_not_equal(k1, k4, sizeof k1);
    /* the key is not the secret itself */
    assert_memory_not_equal(k1, secret, sizeof k1);
}

static void test_session_key(void **state) {
    unsigned char k1[SR_JOIN_KEY_BYTES], k2[SR_JOIN_KEY_BYTES], k3[SR_JOIN_KEY_BYTES], k4[SR_JOIN_KEY_BYTES],
        k5[SR_JOIN_KEY_BYTES], d[SR_JOIN_KEY_BYTES];
    unsigned char c[SR_JOIN_NONCE_BYTES];
    memcpy(c, a, sizeof c);
    c[31] ^= 1;
    sr_join_session_key(k1, secret, sizeof secret, a, b);
    sr_join_session_key(k2, secret, sizeof secret, a, b);
    sr_join_session_key(k3, other, sizeof other, a, b);
    sr_join_session_key(k4, secret, sizeof secret, b, a);
    sr_join_session_key(k5, secret, sizeof secret, c, b);
    sr_join_data_key(d, secret, sizeof secret, a);
    assert_memory_equal(k1, k2, sizeof k1);
    assert_memory_not_equal(k1, k3, sizeof k1);
    assert_memory_not_equal(k1, k4, sizeof k1);
    assert_memory_not_equal(k1, k5, sizeof k1);
    assert_memory_not_equal(k1, d, sizeof k1);
    /* nor the worker's proof over the same nonces, which crossed the network */
    unsigned char p[SR_JOIN_PROOF_BYTES];
    sr_join_proof(p, secret, sizeof secret, SR_JOIN_WORKER, a, b);
    assert_memory_not_equal(k1, p, sizeof k1);
}

static void test_nonces_fresh(void **state) { assert_memory_not_equal(a, b, sizeof a); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proof_verifies),
        cmocka_unit_test(test_proof_refused),
        cmocka_unit_test(test_data_key),
        cmocka_unit_test(test_session_key),
        cmocka_unit_test(test_nonces_fresh),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
