/* libFuzzer target for worker/wire.c, the checks of what peers send: the
 * step header, the ring span table and the prefill hello. Input: one byte
 * that picks the message and a size, then the message's int64 words (zeros
 * where the input ends). Whatever the words, a check must return SR_OK with
 * outputs inside their ranges (tested here independently of wire.c), or an
 * error code with a message; UBSan and ASan watch the arithmetic and reads. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "worker/wire.h"

enum { MAX_WORLD = 8 };

static void words(const uint8_t *data, size_t size, int64_t *out, size_t n) {
    memset(out, 0, n * sizeof *out);
    memcpy(out, data, size < n * sizeof *out ? size : n * sizeof *out);
}

static void failed(int rc) {
    if (rc > SR_OK || rc < SR_ESTATE || !sr_error_msg()[0]) __builtin_trap();
}

static void step(const uint8_t *data, size_t size, int64_t max_new) {
    int64_t h[SR_WIRE_STEP_WORDS], n = -1;
    int status = 1;
    words(data, size, h, SR_WIRE_STEP_WORDS);
    int rc = sr_wire_step_decode(h, max_new, &n, &status);
    if (rc != SR_OK) {
        if (rc != SR_EFORMAT || strncmp(sr_error_msg(), "step header: ", 13) != 0) __builtin_trap();
        return;
    }
    if (n != h[0] || status != h[1] || status > SR_OK || status < SR_ESTATE || n < 0 || n > max_new ||
        (status != SR_OK && n != 0))
        __builtin_trap();
}

static void ring(const uint8_t *data, size_t size, int world) {
    int64_t all[MAX_WORLD * SR_WIRE_RING_WORDS], tokens[MAX_WORLD];
    sr_span spans[MAX_WORLD * SR_RING_MAX_SPANS];
    int n[MAX_WORLD];
    words(data, size, all, (size_t)world * SR_WIRE_RING_WORDS);
    int rc = sr_wire_ring_table(all, world, spans, n, tokens);
    if (rc != SR_OK) {
        failed(rc);
        return;
    }
    for (int p = 0; p < world; p++) {
        if (n[p] < 0 || n[p] > SR_RING_MAX_SPANS) __builtin_trap();
        int64_t sum = 0;
        for (int i = 0; i < n[p]; i++) {
            sr_span s = spans[p * SR_RING_MAX_SPANS + i];
            if (s.pos0 < 0 || s.len < 0 || s.pos0 > SR_WIRE_MAX_POS || s.len > SR_WIRE_MAX_POS - s.pos0)
                __builtin_trap();
            sum += s.len;
            /* no other non-empty span overlaps it */
            for (int q = 0; q < world && s.len > 0; q++)
                for (int j = 0; j < n[q]; j++) {
                    sr_span t = spans[q * SR_RING_MAX_SPANS + j];
                    if ((q != p || j != i) && t.len > 0 && t.pos0 < s.pos0 + s.len && s.pos0 < t.pos0 + t.len)
                        __builtin_trap();
                }
        }
        if (sum != tokens[p]) __builtin_trap();
    }
}

static void hello(const uint8_t *data, size_t size, int world) {
    int64_t all[MAX_WORLD * SR_WIRE_HELLO_WORDS];
    words(data, size, all, (size_t)world * SR_WIRE_HELLO_WORDS);
    int rc = sr_wire_hello_check(all, world);
    if (rc != SR_OK) {
        failed(rc);
        return;
    }
    for (int p = 0; p < world; p++)
        for (int w = 0; w < SR_WIRE_HELLO_WORDS; w++) {
            int64_t v = all[p * SR_WIRE_HELLO_WORDS + w];
            if (w == SR_WIRE_HELLO_STATUS ? v != SR_OK
                : w == SR_WIRE_HELLO_BATCH ? v < 1 || v > SR_WIRE_MAX_POS
                                           : v != all[w])
                __builtin_trap();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int pick = data[0] & 3, k = data[0] >> 2; /* 0..63 */
    sr_error_clear();
    if (pick == 0)
        step(data + 1, size - 1, k == 63 ? INT64_MAX : (int64_t)k * 1000);
    else if (pick == 1)
        ring(data + 1, size - 1, 1 + k % MAX_WORLD);
    else if (pick == 2)
        hello(data + 1, size - 1, 1 + k % MAX_WORLD);
    else {
        int64_t w;
        int status = 1;
        words(data + 1, size - 1, &w, 1);
        int rc = sr_wire_status(w, k, "fuzz", &status);
        if (rc == SR_OK ? status != w || w > SR_OK || w < SR_ESTATE : rc != SR_EFORMAT) __builtin_trap();
    }
    return 0;
}
