/* net/frame.c: length-prefixed control frames fed in any pieces, and the
 * malformed input a peer may send: a frame over the cap (refused before its
 * body is read), a body that is not a Frame, an empty frame, a truncated
 * field, and a receiver that stops the stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "net/frame.h"

typedef struct {
    int n;          /* frames received */
    int64_t seq[8]; /* their heartbeat seq */
    int stop_at;    /* return an error on this frame (1-based), 0: never */
} got;

static int collect(void *data, sr_frame *f) {
    got *g = data;
    int n = ++g->n;
    if (n <= 8 && f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_HEARTBEAT) g->seq[n - 1] = f->heartbeat->seq;
    sr_frame_free(f);
    return n == g->stop_at ? sr_error_set(SR_ESTATE, "receiver stopped") : SR_OK;
}

/* A packed heartbeat frame with this seq. */
static uint8_t *heartbeat(int64_t seq, size_t *n) {
    Starring__Control__V1__Heartbeat hb = STARRING__CONTROL__V1__HEARTBEAT__INIT;
    sr_frame f = STARRING__CONTROL__V1__FRAME__INIT;
    hb.worker = 2;
    hb.seq = seq;
    f.kind_case = STARRING__CONTROL__V1__FRAME__KIND_HEARTBEAT;
    f.heartbeat = &hb;
    uint8_t *b = NULL;
    assert_int_equal(sr_frame_pack(&f, &b, n), SR_OK);
    return b;
}

static void test_round_trip_in_pieces(void **state) {
    size_t n1, n2;
    uint8_t *a = heartbeat(7, &n1), *b = heartbeat(1234567890123LL, &n2);
    uint8_t both[256];
    assert_true(n1 + n2 <= sizeof both);
    memcpy(both, a, n1);
    memcpy(both + n1, b, n2);
    /* all at once */
    sr_frame_reader r;
    got g = {0};
    sr_frame_reader_init(&r, 1024);
    assert_int_equal(sr_frame_feed(&r, both, n1 + n2, collect, &g), SR_OK);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.seq[0], 7);
    assert_int_equal(g.seq[1], 1234567890123LL);
    sr_frame_reader_free(&r);
    /* one byte at a time: nothing before the last byte of each frame */
    memset(&g, 0, sizeof g);
    sr_frame_reader_init(&r, 1024);
    for (size_t i = 0; i < n1 + n2; i++) {
        assert_int_equal(sr_frame_feed(&r, both + i, 1, collect, &g), SR_OK);
        assert_int_equal(g.n, i + 1 < n1 ? 0 : i + 1 < n1 + n2 ? 1 : 2);
    }
    assert_int_equal(g.seq[1], 1234567890123LL);
    sr_frame_reader_free(&r);
    free(a);
    free(b);
}

static void test_short_input_waits(void **state) {
    size_t n;
    uint8_t *a = heartbeat(3, &n);
    sr_frame_reader r;
    got g = {0};
    sr_frame_reader_init(&r, 1024);
    /* half a length, then the length and half the body: no frame, no error */
    assert_int_equal(sr_frame_feed(&r, a, 2, collect, &g), SR_OK);
    assert_int_equal(sr_frame_feed(&r, a + 2, (n - 2) / 2, collect, &g), SR_OK);
    assert_int_equal(g.n, 0);
    /* and the connection closing here frees the partial body */
    sr_frame_reader_free(&r);
    free(a);
}

static void test_oversized_refused_from_the_length(void **state) {
    sr_frame_reader r;
    got g = {0};
    sr_frame_reader_init(&r, 1000);
    /* only the 4 length bytes of a 4 GiB - 1 frame: refused at once */
    const uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    sr_error_clear();
    assert_int_equal(sr_frame_feed(&r, huge, 4, collect, &g), SR_ERANGE);
    assert_non_null(strstr(sr_error_msg(), "4294967295"));
    assert_non_null(strstr(sr_error_msg(), "cap of 1000"));
    assert_null(r.body);
    sr_frame_reader_free(&r);
    /* one byte over the cap is refused, exactly the cap is read */
    uint8_t over[4] = {0, 0, 0x03, 0xe9};
    sr_frame_reader_init(&r, 1000);
    assert_int_equal(sr_frame_feed(&r, over, 4, collect, &g), SR_ERANGE);
    sr_frame_reader_free(&r);
    uint8_t at[4] = {0, 0, 0x03, 0xe8};
    sr_frame_reader_init(&r, 1000);
    assert_int_equal(sr_frame_feed(&r, at, 4, collect, &g), SR_OK);
    assert_non_null(r.body);
    sr_frame_reader_free(&r);
    assert_int_equal(g.n, 0);
}

/* Fails unless feeding bytes gives SR_EFORMAT with `want` in the message. */
static void expect_format(const uint8_t *bytes, size_t n, const char *want) {
    sr_frame_reader r;
    got g = {0};
    sr_frame_reader_init(&r, 1024);
    sr_error_clear();
    int rc = sr_frame_feed(&r, bytes, n, collect, &g);
    if (rc != SR_EFORMAT || !strstr(sr_error_msg(), want) || g.n != 0)
        fail_msg("got %d '%s', %d frames; want SR_EFORMAT with '%s'", rc, sr_error_msg(), g.n, want);
    sr_frame_reader_free(&r);
}

static void test_garbage(void **state) {
    /* wire type 7 does not exist */
    const uint8_t bad_wire[] = {0, 0, 0, 3, 0x0f, 0xff, 0xff};
    expect_format(bad_wire, sizeof bad_wire, "is not a starring.control.v1.Frame");
    /* field 2 (heartbeat) says 100 bytes follow, 1 does */
    const uint8_t truncated[] = {0, 0, 0, 3, 0x12, 100, 0x08};
    expect_format(truncated, sizeof truncated, "is not a starring.control.v1.Frame");
    /* a varint that never ends */
    const uint8_t varint[] = {0, 0, 0, 12, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    expect_format(varint, sizeof varint, "is not a starring.control.v1.Frame");
    /* an empty frame and one with only an unknown field decode but carry nothing */
    const uint8_t empty[] = {0, 0, 0, 0};
    expect_format(empty, sizeof empty, "carries no message");
    const uint8_t unknown[] = {0, 0, 0, 3, 0xf8, 0x01, 0x05}; /* field 31 = 5 */
    expect_format(unknown, sizeof unknown, "carries no message");
    /* ASCII: an HTTP request on the control port reads as a 1.2 GB length */
    sr_frame_reader r;
    got g = {0};
    sr_frame_reader_init(&r, 1024);
    assert_int_equal(sr_frame_feed(&r, (const uint8_t *)"GET / HTTP/1.1\r\n", 16, collect, &g), SR_ERANGE);
    sr_frame_reader_free(&r);
}

static void test_receiver_stops(void **state) {
    size_t n;
    uint8_t *a = heartbeat(1, &n);
    uint8_t three[192];
    assert_true(3 * n <= sizeof three);
    for (int i = 0; i < 3; i++) memcpy(three + i * n, a, n);
    sr_frame_reader r;
    got g = {.stop_at = 2};
    sr_frame_reader_init(&r, 1024);
    assert_int_equal(sr_frame_feed(&r, three, 3 * n, collect, &g), SR_ESTATE);
    assert_int_equal(g.n, 2);
    sr_frame_reader_free(&r);
    free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_in_pieces), cmocka_unit_test(test_short_input_waits),
        cmocka_unit_test(test_oversized_refused_from_the_length), cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_receiver_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
