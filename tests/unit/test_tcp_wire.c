/* transport/tcp_wire.c: frame headers and handshake messages round-trip;
 * each way of being malformed gives its error and a message that names it;
 * proofs verify only with the right key, role and hellos; and every input
 * kept in tests/data/tcp/ (fuzz seeds and finds) decodes or fails as its
 * name says (seed-*, ok-*: decodes; bad-*: fails cleanly). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/support/unit_main.h"
#include "transport/tcp_wire.h"

#define DATA_DIR "tests/data/tcp"
#define CAP ((int64_t)4 << 30) /* the default SR_TCP_MAX_MSG, as in fuzz_tcp_frame */

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void expect_frame_error(const unsigned char *b, size_t n, int64_t cap, int rc, const char *want) {
    sr_tp__frame f;
    sr_error_clear();
    int got = sr_tp__frame_decode(b, n, cap, &f);
    if (got != rc || !strstr(sr_error_msg(), want))
        fail_msg("frame of %zu bytes: rc %d, '%s' (wanted %d and '%s')", n, got, sr_error_msg(), rc, want);
}

static void test_frame_round_trip(void **state) {
    static const int32_t tags[] = {0, 7, SR_TP_TAG_MAX, SR_TP_TAG_MAX + 3, SR_TP__TAG_WIRE_MAX};
    static const int64_t lens[] = {0, 1, 4097, CAP, (int64_t)1 << 40};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) {
            unsigned char b[SR_TP__FRAME_BYTES];
            sr_tp__frame f;
            sr_tp__frame_encode(b, tags[i], lens[j]);
            assert_int_equal(sr_tp__frame_decode(b, sizeof b, (int64_t)1 << 40, &f), SR_OK);
            assert_int_equal(f.tag, tags[i]);
            assert_true(f.len == lens[j]);
        }
    unsigned char b[SR_TP__FRAME_BYTES];
    sr_tp__frame f;
    sr_tp__frame_encode(b, SR_TP__TAG_HEARTBEAT, 0);
    assert_int_equal(sr_tp__frame_decode(b, sizeof b, 0, &f), SR_OK);
    assert_int_equal(f.tag, SR_TP__TAG_HEARTBEAT);
    assert_true(f.len == 0);
    /* little-endian on the wire, whatever the host */
    sr_tp__frame_encode(b, 0x01020304, 0x0a0b0c0d0e0f1011);
    static const unsigned char want[16] = {'S', 'R', 'F', '2', 4, 3, 2, 1, 0x11, 0x10, 0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a};
    assert_memory_equal(b, want, sizeof want);
}

static void test_frame_errors(void **state) {
    unsigned char b[SR_TP__FRAME_BYTES];
    for (size_t n = 0; n < SR_TP__FRAME_BYTES; n++) {
        sr_tp__frame_encode(b, 1, 8);
        char want[64];
        snprintf(want, sizeof want, "truncated frame header: %zu of 16 bytes", n);
        expect_frame_error(b, n, CAP, SR_EFORMAT, want);
    }
    sr_tp__frame_encode(b, 1, 8);
    b[3] ^= 1;
    expect_frame_error(b, sizeof b, CAP, SR_EFORMAT, "bad magic 0x33465253");
    sr_tp__frame_encode(b, 1, (int64_t)1 << 46);
    expect_frame_error(b, sizeof b, CAP, SR_ERANGE, "frame of 70368744177664 bytes (tag 1) is over the cap of 4294967296");
    sr_tp__frame_encode(b, 1, CAP + 1);
    expect_frame_error(b, sizeof b, CAP, SR_ERANGE, "over the cap");
    put64(b + 8, UINT64_MAX); /* would be negative as int64_t */
    expect_frame_error(b, sizeof b, CAP, SR_ERANGE, "18446744073709551615 bytes");
    sr_tp__frame_encode(b, -2, 8);
    expect_frame_error(b, sizeof b, CAP, SR_EFORMAT, "tag -2, outside 0..30016");
    sr_tp__frame_encode(b, SR_TP__TAG_WIRE_MAX + 1, 8);
    expect_frame_error(b, sizeof b, CAP, SR_EFORMAT, "tag 30017");
    put32(b + 4, 0x80000000u);
    expect_frame_error(b, sizeof b, CAP, SR_EFORMAT, "tag -2147483648");
    sr_tp__frame_encode(b, SR_TP__TAG_HEARTBEAT, 1);
    expect_frame_error(b, sizeof b, CAP, SR_EFORMAT, "heartbeat frame with a 1-byte payload");
}

static void hello_of(unsigned char out[SR_TP__HELLO_BYTES], int rank, int size, const char *job, int nonce) {
    sr_tp__hello h;
    memset(&h, 0, sizeof h);
    h.rank = rank;
    h.size = size;
    snprintf(h.job_id, sizeof h.job_id, "%s", job);
    memset(h.nonce, nonce, sizeof h.nonce);
    sr_tp__hello_encode(out, &h);
}

static void expect_hello_error(const unsigned char *b, size_t n, const char *want) {
    sr_tp__hello h;
    sr_error_clear();
    int rc = sr_tp__hello_decode(b, n, &h);
    if (rc != SR_EFORMAT || !strstr(sr_error_msg(), want))
        fail_msg("hello: rc %d, '%s' (wanted SR_EFORMAT and '%s')", rc, sr_error_msg(), want);
}

static void test_hello_round_trip(void **state) {
    unsigned char b[SR_TP__HELLO_BYTES], again[SR_TP__HELLO_BYTES];
    char longest[SR_TP__JOB_ID_MAX + 1];
    memset(longest, 'j', SR_TP__JOB_ID_MAX);
    longest[SR_TP__JOB_ID_MAX] = '\0';
    const char *jobs[] = {"a", "job-42", "auto-0123456789abcdef", longest};
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) {
        hello_of(b, 3, SR_TP__MAX_RANKS, jobs[i], 0x5c);
        sr_tp__hello h;
        assert_int_equal(sr_tp__hello_decode(b, sizeof b, &h), SR_OK);
        assert_int_equal(h.rank, 3);
        assert_int_equal(h.size, SR_TP__MAX_RANKS);
        assert_string_equal(h.job_id, jobs[i]);
        for (int k = 0; k < SR_TP__NONCE_BYTES; k++) assert_int_equal(h.nonce[k], 0x5c);
        sr_tp__hello_encode(again, &h);
        assert_memory_equal(again, b, sizeof b);
    }
}

static void test_hello_errors(void **state) {
    unsigned char b[SR_TP__HELLO_BYTES];
    hello_of(b, 1, 2, "job", 1);
    expect_hello_error(b, SR_TP__HELLO_BYTES - 1, "truncated handshake hello: 111 of 112 bytes");
    expect_hello_error(b, 0, "truncated");
    b[0] = 'X';
    expect_hello_error(b, sizeof b, "bad magic 0x32485258 (not a starring tcp peer)");
    hello_of(b, 1, 2, "job", 1);
    b[4] = 2;
    expect_hello_error(b, sizeof b, "handshake version 2");
    hello_of(b, 1, 2, "job", 1);
    b[6] = 1;
    expect_hello_error(b, sizeof b, "flags 0x1");
    hello_of(b, 2, 2, "job", 1);
    expect_hello_error(b, sizeof b, "from rank 2 of 2");
    hello_of(b, 0, 0, "job", 1);
    expect_hello_error(b, sizeof b, "from rank 0 of 0");
    hello_of(b, 0, SR_TP__MAX_RANKS + 1, "job", 1);
    expect_hello_error(b, sizeof b, "of 65537");
    hello_of(b, 1, 2, "job", 1);
    put32(b + 8, 0xffffffffu);
    expect_hello_error(b, sizeof b, "from rank 4294967295 of 2");
    hello_of(b, 1, 2, "job", 1);
    memset(b + 16, 'j', SR_TP__JOB_ID_MAX + 1);
    expect_hello_error(b, sizeof b, "unterminated job id");
    hello_of(b, 1, 2, "job", 1);
    b[16 + 5] = 'x';
    expect_hello_error(b, sizeof b, "bytes after the job id's end");
    hello_of(b, 1, 2, "", 1);
    expect_hello_error(b, sizeof b, "job id '' is not 1 to 63 printable characters");
    hello_of(b, 1, 2, "two words", 1);
    expect_hello_error(b, sizeof b, "job id 'two words'");
    hello_of(b, 1, 2, "a\nWARN forged", 1);
    expect_hello_error(b, sizeof b, "is not 1 to 63 printable");
    hello_of(b, 1, 2, "caf\xc3\xa9", 1);
    expect_hello_error(b, sizeof b, "is not 1 to 63 printable");
}

static void test_job_id_check(void **state) {
    assert_int_equal(sr_tp__job_id_check("run-7", "SR_TCP_JOB_ID"), SR_OK);
    assert_int_equal(sr_tp__job_id_check("x y", "SR_TCP_JOB_ID"), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "SR_TCP_JOB_ID 'x y'"));
    char longer[80];
    memset(longer, 'k', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    assert_int_equal(sr_tp__job_id_check(longer, "SR_TCP_JOB_ID"), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "...' is not 1 to 63"));
}

/* Only the right key, role and pair of hellos verify: not another key, not
 * the other side's proof reflected back, not a proof over another nonce. */
static void test_auth(void **state) {
    static const unsigned char key[32] = "job secret job secret job secre";
    static const unsigned char other[32] = "not the secret, not the secret!";
    unsigned char hc[SR_TP__HELLO_BYTES], hl[SR_TP__HELLO_BYTES], hl2[SR_TP__HELLO_BYTES];
    hello_of(hc, 1, 2, "job", 0x11);
    hello_of(hl, 0, 2, "job", 0x22);
    hello_of(hl2, 0, 2, "job", 0x23);
    unsigned char a[SR_TP__AUTH_BYTES], l[SR_TP__AUTH_BYTES];
    sr_tp__auth_encode(a, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl);
    sr_tp__auth_encode(l, key, sizeof key, SR_TP__ROLE_LISTENER, hc, hl);
    assert_int_equal(sr_tp__auth_check(a, sizeof a, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl), SR_OK);
    assert_int_equal(sr_tp__auth_check(l, sizeof l, key, sizeof key, SR_TP__ROLE_LISTENER, hc, hl), SR_OK);
    assert_int_equal(sr_tp__auth_check(a, sizeof a, other, sizeof other, SR_TP__ROLE_CONNECTOR, hc, hl), SR_ECOMM);
    assert_non_null(strstr(sr_error_msg(), "wrong proof of the job secret"));
    assert_int_equal(sr_tp__auth_check(l, sizeof l, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl), SR_ECOMM);
    assert_int_equal(sr_tp__auth_check(a, sizeof a, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl2), SR_ECOMM);
    unsigned char near[sizeof key];
    memcpy(near, key, sizeof key);
    near[sizeof near - 1] ^= 1;
    assert_int_equal(sr_tp__auth_check(a, sizeof a, near, sizeof near, SR_TP__ROLE_CONNECTOR, hc, hl), SR_ECOMM);
    for (size_t i = 4; i < sizeof a; i++) { /* any flipped bit of the MAC */
        a[i] ^= 0x80;
        assert_int_equal(sr_tp__auth_check(a, sizeof a, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl), SR_ECOMM);
        a[i] ^= 0x80;
    }
    assert_int_equal(sr_tp__auth_check(a, sizeof a - 1, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "truncated handshake proof: 35 of 36 bytes"));
    a[0] ^= 1;
    assert_int_equal(sr_tp__auth_check(a, sizeof a, key, sizeof key, SR_TP__ROLE_CONNECTOR, hc, hl), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "handshake proof with bad magic"));

    unsigned char acc[SR_TP__ACCEPT_BYTES];
    sr_tp__accept_encode(acc);
    assert_int_equal(sr_tp__accept_check(acc, sizeof acc), SR_OK);
    assert_int_equal(sr_tp__accept_check(acc, 3), SR_EFORMAT);
    acc[1] = 0;
    assert_int_equal(sr_tp__accept_check(acc, sizeof acc), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "handshake accept with bad magic"));
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    size_t cap = 1 << 12;
    unsigned char *b = malloc(cap);
    *n = 0;
    for (size_t k; (k = fread(b + *n, 1, cap - *n, f)) > 0;)
        if ((*n += k) == cap) b = realloc(b, cap *= 2);
    fclose(f);
    return b;
}

/* Feeds every file of DATA_DIR/sub to decode; returns how many were seeds
 * and how many bad. */
static void feed_dir(const char *sub, int (*decode)(const unsigned char *, size_t), const char *word, int *seeds,
                     int *bad) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", DATA_DIR, sub);
    DIR *d = opendir(path);
    if (!d) fail_msg("cannot open %s: run the test from the repository root", path);
    *seeds = *bad = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/%s", DATA_DIR, sub, e->d_name);
        size_t n;
        unsigned char *b = read_all(path, &n);
        sr_error_clear();
        int rc = decode(b, n);
        free(b);
        int must_decode = !strncmp(e->d_name, "seed-", 5) || !strncmp(e->d_name, "ok-", 3);
        int must_fail = !strncmp(e->d_name, "bad-", 4);
        if (must_decode && rc != SR_OK) fail_msg("%s does not decode: %s", path, sr_error_msg());
        if (must_fail && rc == SR_OK) fail_msg("%s decodes, but was kept as a malformed input", path);
        if (rc != SR_OK && ((rc != SR_EFORMAT && rc != SR_ERANGE) || !strstr(sr_error_msg(), word)))
            fail_msg("%s: rc %d, '%s'", path, rc, sr_error_msg());
        *seeds += must_decode;
        *bad += must_fail;
    }
    closedir(d);
}

static int decode_frame(const unsigned char *b, size_t n) {
    sr_tp__frame f;
    return sr_tp__frame_decode(b, n, CAP, &f);
}

static int decode_hello(const unsigned char *b, size_t n) {
    sr_tp__hello h;
    return sr_tp__hello_decode(b, n, &h);
}

static void test_kept_inputs(void **state) {
    int seeds, bad;
    feed_dir("frame", decode_frame, "frame", &seeds, &bad);
    if (seeds < 4 || bad < 8) fail_msg("%s/frame holds %d seed-* and %d bad-* files; expected more", DATA_DIR, seeds, bad);
    feed_dir("hello", decode_hello, "handshake", &seeds, &bad);
    if (seeds < 4 || bad < 12) fail_msg("%s/hello holds %d seed-* and %d bad-* files; expected more", DATA_DIR, seeds, bad);
}

SR_TEST_MAIN(cmocka_unit_test(test_frame_round_trip), cmocka_unit_test(test_frame_errors),
             cmocka_unit_test(test_hello_round_trip), cmocka_unit_test(test_hello_errors),
             cmocka_unit_test(test_job_id_check), cmocka_unit_test(test_auth), cmocka_unit_test(test_kept_inputs))
