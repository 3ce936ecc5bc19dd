/* libFuzzer target for the control-frame decoder (net/frame.c and the
 * protobuf-c code of control.proto), the bytes a peer sends on the control
 * port before and after the join: the check of
 * tests/unit/control_frame_check.h, which test_net_frame also runs on the
 * inputs kept in tests/data/control/. */
#include <stddef.h>
#include <stdint.h>

#include "tests/unit/control_frame_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int frames, rc;
    if (sr_test_control_stream(data, size, &frames, &rc)) __builtin_trap();
    return 0;
}
