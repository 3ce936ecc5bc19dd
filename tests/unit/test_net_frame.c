/* net/frame.c: length-prefixed control frames fed in any pieces, and the
 * malformed input a peer may send: a frame over the cap (refused before its
 * body is read), a body that is not a Frame, an empty frame, a truncated
 * field, and a receiver that stops the stream. Frames with a MAC: the MAC
 * is HMAC-SHA256 over direction, sequence number and body (checked against
 * libsodium directly), and a frame tampered with, replayed, reordered,
 * reflected, under another key, or without a MAC is refused. Every input
 * kept in tests/data/control/ (fuzz seeds: seed-* decode to frames;
 * refusals: bad-*; what the fuzzer found: found-*; its merged corpus:
 * corpus-*) passes the check of tests/fuzz/fuzz_control_frame.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <sodium.h>
#include <stdio.h>

#include "base/status.h"
#include "net/frame.h"
#include "tests/support/unit_main.h"
#include "tests/unit/control_frame_check.h"

#define DATA_DIR "tests/data/control"

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
    const uint8_t unknown[] = {0, 0, 0, 3, 0x98, 0x06, 0x05}; /* field 99 = 5: no such field */
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

static const unsigned char KEY[SR_FRAME_MAC_BYTES] = "0123456789abcdef0123456789abcdef";

/* A heartbeat with seq sealed by m, in a buffer with room for the MAC. */
static uint8_t *sealed(sr_frame_mac *m, int64_t seq, size_t *n) {
    size_t plain;
    uint8_t *a = heartbeat(seq, &plain);
    uint8_t *b = malloc(plain + SR_FRAME_MAC_BYTES);
    assert_non_null(b);
    memcpy(b, a, plain);
    free(a);
    assert_int_equal(sr_frame_seal(m, b, plain), SR_OK);
    *n = plain + SR_FRAME_MAC_BYTES;
    return b;
}

/* Feeds bytes to a fresh reader expecting dir's MAC under KEY: its status,
 * and the frames received in g. */
static int feed_mac(int dir, const uint8_t *bytes, size_t n, got *g) {
    sr_frame_reader r;
    sr_frame_reader_init(&r, 1024);
    sr_frame_mac_init(&r.mac, KEY, dir);
    sr_error_clear();
    int rc = sr_frame_feed(&r, bytes, n, collect, g);
    sr_frame_reader_free(&r);
    return rc;
}

static void expect_cut_off(int dir, const uint8_t *bytes, size_t n, int frames_before) {
    got g = {0};
    int rc = feed_mac(dir, bytes, n, &g);
    if (rc != SR_ECOMM || !strstr(sr_error_msg(), "fails its MAC") || g.n != frames_before)
        fail_msg("got %d '%s' after %d frames; want SR_ECOMM 'fails its MAC' after %d", rc, sr_error_msg(), g.n,
                 frames_before);
}

static void test_mac_round_trip(void **state) {
    sr_frame_mac m;
    sr_frame_mac_init(&m, KEY, 1);
    size_t n[3];
    uint8_t *f[3], all[512];
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        f[i] = sealed(&m, 100 + i, &n[i]);
        memcpy(all + at, f[i], n[i]);
        at += n[i];
    }
    assert_int_equal(m.seq, 3);
    /* the second frame's MAC is HMAC-SHA256(key, 1 | seq 1 big-endian | body) */
    size_t body = n[1] - 4 - SR_FRAME_MAC_BYTES;
    assert_int_equal(((size_t)f[1][2] << 8 | f[1][3]), body + SR_FRAME_MAC_BYTES);
    uint8_t head[9] = {1, 0, 0, 0, 0, 0, 0, 0, 1};
    unsigned char want[SR_FRAME_MAC_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, KEY, sizeof KEY);
    crypto_auth_hmacsha256_update(&st, head, sizeof head);
    crypto_auth_hmacsha256_update(&st, f[1] + 4, body);
    crypto_auth_hmacsha256_final(&st, want);
    assert_memory_equal(want, f[1] + 4 + body, SR_FRAME_MAC_BYTES);
    /* all at once, and a byte at a time */
    got g = {0};
    assert_int_equal(feed_mac(1, all, at, &g), SR_OK);
    assert_int_equal(g.n, 3);
    assert_int_equal(g.seq[2], 102);
    sr_frame_reader r;
    memset(&g, 0, sizeof g);
    sr_frame_reader_init(&r, 1024);
    sr_frame_mac_init(&r.mac, KEY, 1);
    for (size_t i = 0; i < at; i++) assert_int_equal(sr_frame_feed(&r, all + i, 1, collect, &g), SR_OK);
    assert_int_equal(g.n, 3);
    assert_int_equal(g.seq[0], 100);
    sr_frame_reader_free(&r);
    for (int i = 0; i < 3; i++) free(f[i]);
}

static void test_mac_tampered(void **state) {
    sr_frame_mac m;
    sr_frame_mac_init(&m, KEY, 1);
    size_t n;
    uint8_t *f = sealed(&m, 5, &n);
    for (size_t i = 4; i < n; i++) { /* every byte of the body and of the MAC */
        f[i] ^= 0x10;
        expect_cut_off(1, f, n, 0);
        f[i] ^= 0x10;
    }
    /* the MAC cut short: the length says so, the MAC no longer matches */
    uint8_t c[128];
    memcpy(c, f, n - 1);
    c[3]--;
    expect_cut_off(1, c, n - 1, 0);
    /* another key */
    sr_frame_mac o;
    unsigned char k2[SR_FRAME_MAC_BYTES];
    memcpy(k2, KEY, sizeof k2);
    k2[0] ^= 1;
    sr_frame_mac_init(&o, k2, 1);
    uint8_t *g = sealed(&o, 5, &n);
    expect_cut_off(1, g, n, 0);
    free(f);
    free(g);
}

static void test_mac_replayed_reordered_reflected(void **state) {
    sr_frame_mac m;
    sr_frame_mac_init(&m, KEY, 1);
    size_t n0, n1;
    uint8_t *f0 = sealed(&m, 1, &n0), *f1 = sealed(&m, 2, &n1), buf[256];
    /* replayed: the first frame twice */
    memcpy(buf, f0, n0);
    memcpy(buf + n0, f0, n0);
    expect_cut_off(1, buf, 2 * n0, 1);
    /* reordered: the second first */
    memcpy(buf, f1, n1);
    memcpy(buf + n1, f0, n0);
    expect_cut_off(1, buf, n0 + n1, 0);
    /* reflected: a frame of the other direction sent back */
    expect_cut_off(2, f0, n0, 0);
    free(f0);
    free(f1);
}

static void test_mac_missing(void **state) {
    /* a frame without a MAC injected after the join: too short, or no MAC that matches */
    size_t n;
    uint8_t *a = heartbeat(9, &n);
    assert_true(n - 4 < SR_FRAME_MAC_BYTES);
    expect_cut_off(1, a, n, 0);
    free(a);
    uint8_t big[4 + 40] = {0, 0, 0, 40};
    memset(big + 4, 0x12, 40);
    expect_cut_off(1, big, sizeof big, 0);
}

static void test_kept_inputs(void **state) {
    DIR *d = opendir(DATA_DIR);
    if (!d) fail_msg("cannot open %s (run from the repository root)", DATA_DIR);
    int seeds = 0, bad = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", DATA_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) fail_msg("cannot read %s", path);
        static uint8_t buf[1 << 16];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        int frames, rc;
        const char *why = sr_test_control_stream(buf, n, &frames, &rc);
        if (why) fail_msg("%s: %s", path, why);
        if (strncmp(e->d_name, "seed-", 5) == 0) {
            seeds++;
            if (rc != SR_OK || frames < 1) fail_msg("%s: a seed gives %d frames and status %d", path, frames, rc);
        } else if (strncmp(e->d_name, "bad-", 4) == 0) {
            bad++;
            if (rc == SR_OK) fail_msg("%s: a bad input is not refused (%d frames)", path, frames);
        }
    }
    closedir(d);
    if (seeds < 10 || bad < 8) fail_msg("%s holds %d seed-* and %d bad-* files; expected the seeds and refusals", DATA_DIR,
                                        seeds, bad);
}

SR_TEST_MAIN(cmocka_unit_test(test_round_trip_in_pieces), cmocka_unit_test(test_short_input_waits),
             cmocka_unit_test(test_oversized_refused_from_the_length), cmocka_unit_test(test_garbage),
             cmocka_unit_test(test_receiver_stops), cmocka_unit_test(test_mac_round_trip),
             cmocka_unit_test(test_mac_tampered), cmocka_unit_test(test_mac_replayed_reordered_reflected),
             cmocka_unit_test(test_mac_missing), cmocka_unit_test(test_kept_inputs))
