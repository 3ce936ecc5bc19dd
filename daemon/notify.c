#include "daemon/notify.h"

#include <stdint.h>
#include <systemd/sd-daemon.h>

#include "base/clock.h"
#include "base/log.h"

void sr_notify_ready(const char *status, void *data) {
    int rc = sd_notifyf(0, "READY=1\nSTATUS=%s", status);
    if (rc < 0) SR_WARN("sd_notify READY=1: error %d", rc);
    else if (rc > 0) SR_INFO("told systemd: ready (%s)", status);
}

void sr_notify_tick(void *data) {
    static double last = -1;
    uint64_t usec = 0;
    /* the watchdog is off (or not ours): nothing to keep alive */
    if (sd_watchdog_enabled(0, &usec) <= 0) return;
    /* a quarter of the interval: the hooks come from timers of about a
     * second, so a keep-alive is never more than usec/4 + 1 s apart (any
     * WatchdogSec of 2 s and more) */
    double now = sr_now();
    if (last >= 0 && now - last < (double)usec * 0.25e-6) return;
    last = now;
    int rc = sd_notify(0, "WATCHDOG=1");
    if (rc < 0) SR_WARN("sd_notify WATCHDOG=1: error %d", rc);
}

void sr_notify_stopping(const char *status, void *data) {
    int rc = sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status);
    if (rc < 0) SR_WARN("sd_notify STOPPING=1: error %d", rc);
}
