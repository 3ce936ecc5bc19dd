/* The check that tests/fuzz/fuzz_control_frame.c runs on every input and
 * test_net_frame runs on every input kept in tests/data/control/. */
#ifndef SR_TESTS_CONTROL_FRAME_CHECK_H
#define SR_TESTS_CONTROL_FRAME_CHECK_H

#include <stddef.h>
#include <stdint.h>

/* Input: one mode byte, then a byte stream of control frames. Mode bit 0
 * clear: the stream as a peer sends it, fed in pieces of (mode >> 1) + 1
 * bytes and again all at once; bit 0 set: the stream's length-prefixed
 * pieces are sealed with a MAC first and read by a reader that checks it.
 * Each way must give the same frames and the same outcome; a refusal must
 * be SR_ERANGE, SR_EFORMAT or SR_ECOMM with a message; every frame must
 * carry a message and pack back to bytes that decode to the same.
 * Returns NULL, or what was wrong (static). *frames: how many decoded,
 * *rc: the outcome. */
const char *sr_test_control_stream(const uint8_t *data, size_t size, int *frames, int *rc);

#endif
