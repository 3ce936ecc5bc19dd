/* base/buf: appends keep the bytes and a NUL behind them, growth from the
 * given capacity, the first failure kept, consume, clear, steal, and gRPC's framing
 * (net/grpc_frame) on top of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/buf.h"
#include "base/status.h"
#include "net/grpc_frame.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tests/support/unit_main.h"

static void test_append_and_printf(void **state) {
    sr_buf b = {0};
    assert_int_equal(sr_buf_append(&b, NULL, 0), SR_OK);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(sr_buf_puts(&b, "ab"), SR_OK);
    assert_int_equal(sr_buf_append(&b, "c\0d", 3), SR_OK);
    assert_int_equal(sr_buf_printf(&b, "[%d:%s]", 42, "x"), SR_OK);
    assert_int_equal(b.len, 11);
    assert_memory_equal(b.data, "abc\0d[42:x]", 12); /* the NUL behind is kept */
    assert_int_equal(sr_buf_status(&b), SR_OK);
    sr_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_growth(void **state) {
    sr_buf b = {0};
    assert_int_equal(sr_buf_reserve(&b, 10, 64), SR_OK);
    assert_int_equal(b.cap, 64);
    assert_string_equal(b.data, ""); /* reserved, and already a C string */
    assert_int_equal(sr_buf_reserve(&b, 63, 0), SR_OK);
    assert_int_equal(b.cap, 64); /* 63 bytes and the NUL fit */
    assert_int_equal(sr_buf_reserve(&b, 64, 0), SR_OK);
    assert_int_equal(b.cap, 128);
    char chunk[1000];
    for (int i = 0; i < 5000; i++) {
        memset(chunk, 'a' + i % 26, sizeof chunk);
        assert_int_equal(sr_buf_append(&b, chunk, (size_t)(i % 7) * 100), SR_OK);
    }
    size_t want = 0;
    for (int i = 0; i < 5000; i++) want += (size_t)(i % 7) * 100;
    assert_int_equal(b.len, want);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], 0);
    assert_int_equal(b.data[0], 'b'); /* i == 1 wrote the first bytes */
    sr_buf_free(&b);
}

static void test_overflow_is_kept(void **state) {
    sr_buf b = {0};
    assert_int_equal(sr_buf_puts(&b, "keep"), SR_OK);
    assert_int_equal(sr_buf_reserve(&b, SIZE_MAX - 2, 0), SR_ENOMEM);
    assert_non_null(strstr(sr_error_msg(), "overflow"));
    /* the first failure stays: later appends do nothing */
    assert_int_equal(sr_buf_puts(&b, "more"), SR_ENOMEM);
    assert_int_equal(sr_buf_printf(&b, "%d", 1), SR_ENOMEM);
    assert_int_equal(sr_buf_status(&b), SR_ENOMEM);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "keep");
    sr_buf_free(&b);
    assert_int_equal(sr_buf_status(&b), SR_OK); /* empty again, usable */
}

static void test_consume_and_steal(void **state) {
    sr_buf b = {0};
    assert_int_equal(sr_buf_puts(&b, "hello world"), SR_OK);
    sr_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "world");
    sr_buf_consume(&b, 99);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(sr_buf_reserve(&b, SIZE_MAX, 0), SR_ENOMEM);
    sr_buf_clear(&b); /* forgets the failure, keeps the memory */
    assert_int_equal(sr_buf_status(&b), SR_OK);
    assert_non_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(sr_buf_puts(&b, "xyz"), SR_OK);
    size_t n = 0;
    char *s = sr_buf_steal(&b, &n);
    assert_int_equal(n, 3);
    assert_string_equal(s, "xyz");
    assert_null(b.data);
    assert_int_equal(b.len + b.cap, 0);
    free(s);
    assert_null(sr_buf_steal(&b, &n)); /* nothing appended */
    assert_int_equal(n, 0);
}

static void test_grpc_frame(void **state) {
    Grpc__Health__V1__HealthCheckRequest m = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    m.service = "starring.v1.Starring";
    size_t packed = protobuf_c_message_get_packed_size(&m.base);
    sr_buf b = {0};
    assert_int_equal(sr_grpc_frame_append(&b, &m.base), SR_OK);
    assert_int_equal(sr_grpc_frame_append(&b, &m.base), SR_OK);
    assert_int_equal(b.len, 2 * (SR_GRPC_FRAME_PREFIX + packed));
    const uint8_t *p = (const uint8_t *)b.data;
    assert_int_equal(p[0], 0);
    assert_int_equal(p[1] | p[2] | p[3], 0);
    assert_int_equal(p[4], packed);
    int compressed = -1;
    assert_int_equal(sr_grpc_frame_len(p, &compressed), packed);
    assert_int_equal(compressed, 0);
    Grpc__Health__V1__HealthCheckRequest *back =
        grpc__health__v1__health_check_request__unpack(NULL, packed, p + SR_GRPC_FRAME_PREFIX);
    assert_non_null(back);
    assert_string_equal(back->service, "starring.v1.Starring");
    grpc__health__v1__health_check_request__free_unpacked(back, NULL);
    assert_memory_equal(b.data, b.data + SR_GRPC_FRAME_PREFIX + packed, SR_GRPC_FRAME_PREFIX + packed);
    const uint8_t big[SR_GRPC_FRAME_PREFIX] = {1, 0x80, 0x01, 0x02, 0x03};
    assert_int_equal(sr_grpc_frame_len(big, &compressed), 0x80010203u);
    assert_int_equal(compressed, 1);
    sr_buf_free(&b);
}

SR_TEST_MAIN(cmocka_unit_test(test_append_and_printf), cmocka_unit_test(test_growth),
             cmocka_unit_test(test_overflow_is_kept), cmocka_unit_test(test_consume_and_steal),
             cmocka_unit_test(test_grpc_frame))
