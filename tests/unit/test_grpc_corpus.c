/* coordinator/grpc.c fed without a socket (tests/unit/grpc_feed.c): every
 * input kept in tests/data/grpc/ (fuzz_grpc's seeds, captured from a
 * grpcio client, and its finds) goes through the server's HTTP/2 session
 * to decoded requests; the server's bytes back must parse as HTTP/2 frames
 * with decodable headers, and a seed-NAME-sCODE's first call must be
 * answered grpc-status CODE, whether its bytes come at once or a byte a
 * read. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/log.h"
#include "tests/unit/grpc_feed.h"

#define DATA_DIR "tests/data/grpc"

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: run the test from the repository root", path);
    size_t cap = 4096;
    uint8_t *b = malloc(cap);
    *n = 0;
    for (size_t k; b && (k = fread(b + *n, 1, cap - *n, f)) > 0;)
        if ((*n += k) == cap) b = realloc(b, cap *= 2);
    fclose(f);
    if (!b) fail_msg("out of memory reading %s", path);
    return b;
}

/* The status a seed's name promises ("seed-health-s0": 0), or -1. */
static int promised(const char *name) {
    const char *s = strrchr(name, '-');
    if (strncmp(name, "seed-", 5) != 0 || !s || s[1] != 's') return -1;
    return atoi(s + 2);
}

static void test_kept_inputs(void **state) {
    DIR *d = opendir(DATA_DIR);
    if (!d) fail_msg("cannot open %s: run the test from the repository root", DATA_DIR);
    int seeds = 0, files = 0, ok_calls = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", DATA_DIR, e->d_name);
        size_t n;
        uint8_t *b = read_all(path, &n);
        files++;
        int want = promised(e->d_name);
        /* as fuzz_grpc feeds it (its first byte picks the read size), then a byte a read */
        static const size_t pieces[] = {0, 1, 7, 100};
        size_t modes[2] = {n ? pieces[b[0] & 3] : 0, 1};
        for (int m = 0; m < 2 && n > 0; m++) {
            grpc_feed_result r;
            if (grpc_feed(b + 1, n - 1, modes[m], &r) != 0) fail_msg("%s: the server could not be set up", path);
            if (r.bad_output) fail_msg("%s (%zu bytes a read): the server's %zu bytes are not valid HTTP/2", path,
                                       modes[m], r.out_bytes);
            if (want >= 0 && r.first_status != want)
                fail_msg("%s (%zu bytes a read): the first call got grpc-status %d, not %d (%d decoded, %d not)", path,
                         modes[m], r.first_status, want, r.decoded, r.undecodable);
            if (want == 0 && r.decoded < 1) fail_msg("%s: no request message decoded", path);
            ok_calls += want == 0 && m == 0;
        }
        seeds += want >= 0;
        free(b);
    }
    closedir(d);
    if (seeds < 10 || ok_calls < 8)
        fail_msg("%s holds %d seeds (%d answered OK) of %d files; expected the 11 captured ones", DATA_DIR, seeds,
                 ok_calls, files);
}

/* Bytes that are not HTTP/2: the connection closes, nothing is decoded. */
static void test_not_http2(void **state) {
    static const uint8_t get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    grpc_feed_result r;
    assert_int_equal(grpc_feed(get, sizeof get - 1, 0, &r), 0);
    assert_true(r.closed);
    assert_int_equal(r.decoded, 0);
    assert_int_equal(r.first_status, -1);
    assert_false(r.bad_output);
}

int main(void) {
    sr_log_level = SR_LOG_ERROR; /* each refusal is logged; not this test's output */
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_kept_inputs), cmocka_unit_test(test_not_http2)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
