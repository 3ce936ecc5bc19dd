/* Monotonic time for timing lines and benchmarks. */
#ifndef SR_BASE_CLOCK_H
#define SR_BASE_CLOCK_H

#include <time.h>

static inline double sr_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
