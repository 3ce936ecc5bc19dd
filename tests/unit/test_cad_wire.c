/* worker/cad_wire: the commands an attention server decodes before it
 * trusts anything of them. Every command round-trips; each prefill field
 * outside its range, a word an op does not use, an unknown op, a step the
 * held context cannot take, a step too large to hold, and a server's
 * figures that are negative or carry a failure are refused with a message
 * that names the field, its value and the range. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/status.h"
#include "tests/support/unit_main.h"
#include "worker/cad_wire.h"
#include "worker/wire.h"

static const sr_cad_cmd good = {SR_CAD_OP_PREFILL, 3001, 2, 30, 9, 3, 64, SR_DT_F16, 256, 256, 512, 1, 0, 0};

static void refused(const int64_t *w, int workers, int64_t n_ctx, int64_t max_step, int code, const char *needle) {
    sr_cad_cmd c;
    int rc = sr_cad_wire_cmd_decode(w, workers, n_ctx, max_step, &c);
    if (rc != code || !strstr(sr_error_msg(), needle))
        fail_msg("got %d \"%s\", want %d with \"%s\"", rc, sr_error_msg(), code, needle);
}

static void test_round_trip(void **state) {
    int64_t w[SR_CAD_WIRE_CMD_WORDS];
    sr_cad_cmd c;
    sr_cad_wire_cmd_encode(w, &good);
    assert_int_equal(sr_cad_wire_cmd_decode(w, 2, 0, 0, &c), SR_OK);
    assert_memory_equal(&c, &good, sizeof c);
    const sr_cad_cmd step = {.op = SR_CAD_OP_STEP, .nq = 7, .pos = 3005};
    sr_cad_wire_cmd_encode(w, &step);
    assert_int_equal(sr_cad_wire_cmd_decode(w, 2, 3001, 512, &c), SR_OK);
    assert_int_equal(c.op, SR_CAD_OP_STEP);
    assert_int_equal(c.nq, 7);
    assert_int_equal(c.pos, 3005);
    for (int op = SR_CAD_OP_STATS; op <= SR_CAD_OP_DROP; op++) {
        sr_cad_wire_cmd_encode(w, &(sr_cad_cmd){.op = op, .layer = op == SR_CAD_OP_LAYER ? 29 : 0, .ctx = ~0ull - op});
        assert_int_equal(sr_cad_wire_cmd_decode(w, 2, 0, 0, &c), SR_OK);
        assert_int_equal(c.op, op);
        assert_int_equal(c.layer, op == SR_CAD_OP_LAYER ? 29 : 0);
        assert_true(c.ctx == ~0ull - op);
    }
    /* a daemon's context id travels with the prefill */
    sr_cad_cmd named = good;
    named.ctx = 0x8000000000000001ull;
    sr_cad_wire_cmd_encode(w, &named);
    assert_int_equal(sr_cad_wire_cmd_decode(w, 2, 0, 0, &c), SR_OK);
    assert_memory_equal(&c, &named, sizeof c);
}

static void test_prefill_fields(void **state) {
    int64_t w[SR_CAD_WIRE_CMD_WORDS];
    /* word, a value outside, what the message says */
    static const struct {
        int word;
        int64_t value;
        const char *says;
    } bad[] = {
        {1, 0, "context tokens 0, allowed 1..1099511627776"},
        {1, ((int64_t)1 << 40) + 1, "context tokens 1099511627777"},
        {2, 3, "workers 3, allowed 2..2"},
        {3, 0, "layers 0, allowed 1..4096"},
        {4, 4097, "query heads 4097, allowed 1..4096"},
        {5, -1, "kv heads -1"},
        {6, 1025, "head dim 1025, allowed 1..1024"},
        {7, 3, "kv type 3, allowed 0..2"},
        {8, 0, "kv block 0"},
        {9, 0, "chunk 0"},
        {10, ((int64_t)1 << 20) + 1, "max step 1048577, allowed 1..1048576"},
        {11, 2, "overlap 2, allowed 0..1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sr_cad_wire_cmd_encode(w, &good);
        w[bad[i].word] = bad[i].value;
        refused(w, 2, 0, 0, SR_EFORMAT, bad[i].says);
    }
    sr_cad_wire_cmd_encode(w, &good);
    w[5] = 2; /* 9 query heads over 2 kv heads */
    refused(w, 2, 0, 0, SR_EFORMAT, "9 query heads are not a multiple of 2 kv heads");
    /* a step result of 2^20 rows of 4096 heads of 1025 floats */
    sr_cad_wire_cmd_encode(w, &good);
    w[4] = 4096, w[5] = 4096, w[6] = 1024, w[10] = (int64_t)1 << 20;
    refused(w, 2, 0, 0, SR_EFORMAT, "bytes, allowed up to 17179869184");
}

static void test_other_ops(void **state) {
    int64_t w[SR_CAD_WIRE_CMD_WORDS] = {0};
    w[0] = 9;
    refused(w, 2, 0, 0, SR_EFORMAT, "cad command: op 9, allowed 1..6");
    w[0] = SR_CAD_OP_CLOSE, w[3] = 5;
    refused(w, 2, 0, 0, SR_EFORMAT, "op 4 has word 3 = 5, allowed 0");
    w[0] = SR_CAD_OP_LAYER, w[1] = SR_CAD_WIRE_MAX_LAYERS, w[3] = 0;
    refused(w, 2, 0, 0, SR_EFORMAT, "cad layer command: layer 4096, allowed 0..4095");
    w[1] = -1;
    refused(w, 2, 0, 0, SR_EFORMAT, "layer -1, allowed 0..4095");
    memset(w, 0, sizeof w);
    w[0] = SR_CAD_OP_STEP, w[1] = 1, w[2] = 100;
    refused(w, 2, 0, 0, SR_ESTATE, "holds no context");
    w[1] = 513;
    refused(w, 2, 100, 512, SR_EFORMAT, "nq 513, allowed 1..512");
    w[1] = 0;
    refused(w, 2, 100, 512, SR_EFORMAT, "nq 0, allowed 1..512");
    w[1] = 4, w[2] = 99;
    refused(w, 2, 100, 512, SR_EFORMAT, "position 99, allowed 100..");
    w[2] = SR_WIRE_MAX_POS;
    refused(w, 2, 100, 512, SR_EFORMAT, "position 1099511627776");
}

static void test_stats(void **state) {
    sr_cad_server_stats s = {0.25, 1000, 65536, 4096, 2048, 12, 0.5}, back;
    int64_t w[SR_CAD_WIRE_STATS_WORDS];
    sr_cad_wire_stats_encode(w, SR_OK, &s);
    assert_int_equal(sr_cad_wire_stats_decode(w, 3, &back), SR_OK);
    assert_true(back.busy_s == 0.25 && back.wait_s == 0.5);
    assert_int_equal(back.kv_tokens, 1000);
    assert_int_equal(back.tasks, 12);
    w[2] = -1;
    assert_int_equal(sr_cad_wire_stats_decode(w, 3, &back), SR_EFORMAT);
    assert_non_null(strstr(sr_error_msg(), "rank 3 sent kv tokens -1, allowed 0 or more"));
    sr_cad_wire_stats_encode(w, SR_ENOMEM, &s);
    assert_int_equal(sr_cad_wire_stats_decode(w, 3, &back), SR_ENOMEM);
    assert_non_null(strstr(sr_error_msg(), "rank 3 failed"));
    w[0] = 77;
    assert_int_equal(sr_cad_wire_stats_decode(w, 3, &back), SR_EFORMAT);
}

SR_TEST_MAIN(cmocka_unit_test(test_round_trip), cmocka_unit_test(test_prefill_fields),
             cmocka_unit_test(test_other_ops), cmocka_unit_test(test_stats))
