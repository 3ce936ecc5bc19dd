/* notify: starringd and systemd (sd_notify from libsystemd). A unit of
 * Type=notify learns that the process is ready (READY=1) and, with
 * WatchdogSec, that its event loop still turns (WATCHDOG=1 from the loop's
 * timer, so a wedged loop gets the process restarted). Without
 * NOTIFY_SOCKET in the environment (not under systemd) every call does
 * nothing. The hooks have the shape of sr_coord_opts' and
 * sr_workerd_opts' on_ready and on_tick. */
#ifndef SR_DAEMON_NOTIFY_H
#define SR_DAEMON_NOTIFY_H

/* READY=1 with a status line for systemctl status. */
void sr_notify_ready(const char *status, void *data);
/* WATCHDOG=1, when systemd asked for a watchdog (WATCHDOG_USEC) and a
 * quarter of its interval has passed since the last one. Called about once
 * a second, so WatchdogSec must be 2 s or more. */
void sr_notify_tick(void *data);
/* STOPPING=1 with a status line. */
void sr_notify_stopping(const char *status, void *data);

#endif
