/* worker/wire: the checks of what peers send. Good messages decode to what
 * was encoded; every bad one (the regressions of issue 7 among them: a span
 * count of 1000, a negative span length, a step of 2^60 tokens) fails with
 * SR_EFORMAT and a message naming the field, its value and the range. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/support/unit_main.h"
#include "worker/wire.h"

/* rc is code, and the message holds every one of the strings */
static void expect_error(int rc, int code, const char *a, const char *b) {
    if (rc != code || (a && !strstr(sr_error_msg(), a)) || (b && !strstr(sr_error_msg(), b)))
        fail_msg("got %d (%s), want %d naming '%s' and '%s'", rc, sr_error_msg(), code, a ? a : "", b ? b : "");
}

static void test_status(void **state) {
    int st = 1;
    for (int64_t w = SR_ESTATE; w <= SR_OK; w++) {
        assert_int_equal(sr_wire_status(w, 3, "test", &st), SR_OK);
        assert_int_equal(st, (int)w);
    }
    int64_t bad[] = {1, SR_ESTATE - 1, INT64_MIN, INT64_MAX, (int64_t)1 << 32};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(sr_wire_status(bad[i], 3, "test", &st), SR_EFORMAT, "rank 3 sent status", "-9..0");
}

static void test_step(void **state) {
    int64_t h[SR_WIRE_STEP_WORDS], n;
    int st;
    sr_wire_step_encode(h, 7, SR_OK);
    assert_int_equal(sr_wire_step_decode(h, 8, &n, &st), SR_OK);
    assert_int_equal(n, 7);
    assert_int_equal(st, SR_OK);
    sr_wire_step_encode(h, 0, SR_ENOMEM); /* the end of a failed query */
    assert_int_equal(sr_wire_step_decode(h, 8, &n, &st), SR_OK);
    assert_int_equal(n, 0);
    assert_int_equal(st, SR_ENOMEM);
    sr_wire_step_encode(h, 9, SR_OK);
    expect_error(sr_wire_step_decode(h, 8, &n, &st), SR_EFORMAT, "n_new 9", "0..8");
    sr_wire_step_encode(h, (int64_t)1 << 60, SR_OK);
    expect_error(sr_wire_step_decode(h, 512, &n, &st), SR_EFORMAT, "n_new 1152921504606846976", "0..512");
    sr_wire_step_encode(h, -1, SR_OK);
    expect_error(sr_wire_step_decode(h, 8, &n, &st), SR_EFORMAT, "n_new -1", NULL);
    sr_wire_step_encode(h, 3, SR_EINVAL); /* a failure carries no tokens */
    expect_error(sr_wire_step_decode(h, 8, &n, &st), SR_EFORMAT, "n_new 3", "0..0");
    h[0] = 1;
    h[1] = 12;
    expect_error(sr_wire_step_decode(h, 8, &n, &st), SR_EFORMAT, "status 12", NULL);
}

/* Decodes a table of world entries into the outputs. */
static int table(const int64_t (*e)[SR_WIRE_RING_WORDS], int world, sr_span *spans, int *n, int64_t *tokens) {
    return sr_wire_ring_table(&e[0][0], world, spans, n, tokens);
}

static void test_ring_table(void **state) {
    int64_t e[3][SR_WIRE_RING_WORDS];
    sr_span spans[3 * SR_RING_MAX_SPANS], mine[2] = {{0, 10}, {50, 10}}, theirs[2] = {{10, 40}, {60, 0}};
    int n[3];
    int64_t tokens[3];
    sr_wire_ring_encode(e[0], SR_OK, mine, 2);
    sr_wire_ring_encode(e[1], SR_OK, theirs, 2);
    sr_wire_ring_encode(e[2], SR_OK, NULL, 0);
    assert_int_equal(table(e, 3, spans, n, tokens), SR_OK);
    assert_int_equal(n[0], 2);
    assert_int_equal(n[1], 2);
    assert_int_equal(n[2], 0);
    assert_int_equal(tokens[0], 20);
    assert_int_equal(tokens[1], 40);
    assert_int_equal(tokens[2], 0);
    assert_int_equal(spans[1].pos0, 50);
    assert_int_equal(spans[SR_RING_MAX_SPANS].len, 40);

    int64_t save[SR_WIRE_RING_WORDS];
    memcpy(save, e[1], sizeof save);
    e[1][1] = 1000; /* span count */
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "rank 1 sent n_spans 1000", "0..4");
    e[1][1] = -1;
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "n_spans -1", NULL);
    memcpy(e[1], save, sizeof save);
    e[1][3] = -5; /* span length */
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "rank 1 span 0", "len -5");
    memcpy(e[1], save, sizeof save);
    e[1][2] = -1; /* span start */
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "pos0 -1", NULL);
    e[1][2] = SR_WIRE_MAX_POS - 5; /* span end past the largest position */
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "len 40", "0..5");
    e[1][2] = INT64_MAX;
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "pos0 9223372036854775807", NULL);
    memcpy(e[1], save, sizeof save);
    e[1][2] = 5; /* [5, 45) over rank 0's [0, 10) */
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "overlaps rank 0 span 0", NULL);
    memcpy(e[1], save, sizeof save);
    e[1][4] = 55; /* an empty span inside another rank's may stay */
    assert_int_equal(table(e, 3, spans, n, tokens), SR_OK);
    e[2][0] = SR_ENOMEM; /* a peer that failed */
    expect_error(table(e, 3, spans, n, tokens), SR_ENOMEM, "rank 2 failed", NULL);
    e[2][0] = 99;
    expect_error(table(e, 3, spans, n, tokens), SR_EFORMAT, "status 99", NULL);
}

static void test_hello(void **state) {
    int64_t h[3][SR_WIRE_HELLO_WORDS];
    for (int p = 0; p < 3; p++)
        for (int w = 0; w < SR_WIRE_HELLO_WORDS; w++) h[p][w] = w == SR_WIRE_HELLO_STATUS ? SR_OK : 100 + w;
    assert_int_equal(sr_wire_hello_check(&h[0][0], 3), SR_OK);
    h[2][SR_WIRE_HELLO_BATCH] = 7; /* batches may differ */
    assert_int_equal(sr_wire_hello_check(&h[0][0], 3), SR_OK);
    h[2][SR_WIRE_HELLO_BATCH] = 0;
    expect_error(sr_wire_hello_check(&h[0][0], 3), SR_EFORMAT, "rank 2 has batch rows 0", NULL);
    h[2][SR_WIRE_HELLO_BATCH] = 7;
    h[1][SR_WIRE_HELLO_HASH] = 5;
    expect_error(sr_wire_hello_check(&h[0][0], 3), SR_EFORMAT, "rank 1 has context hash 5", "rank 0 has 102");
    h[1][SR_WIRE_HELLO_HASH] = 100 + SR_WIRE_HELLO_HASH;
    h[2][SR_WIRE_HELLO_KV_HEADS] = 1;
    expect_error(sr_wire_hello_check(&h[0][0], 3), SR_EFORMAT, "kv heads 1", NULL);
    h[2][SR_WIRE_HELLO_KV_HEADS] = 100 + SR_WIRE_HELLO_KV_HEADS;
    h[1][SR_WIRE_HELLO_STATUS] = SR_EINVAL;
    expect_error(sr_wire_hello_check(&h[0][0], 3), SR_EINVAL, "rank 1 failed", NULL);
}

SR_TEST_MAIN(cmocka_unit_test(test_status), cmocka_unit_test(test_step), cmocka_unit_test(test_ring_table),
             cmocka_unit_test(test_hello))
