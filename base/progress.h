/* progress: the prefill progress shown on stderr by the command-line
 * programs (starring, starring-run): a bar with tokens done / total, rate
 * and time left when stderr is a terminal, redrawn at most every 0.1 s;
 * otherwise plain lines, at most one a second, or none. */
#ifndef SR_BASE_PROGRESS_H
#define SR_BASE_PROGRESS_H

#include <stdint.h>

typedef struct {
    const char *prog, *what; /* "starring", "prefill" */
    int tty;                 /* stderr is a terminal */
    int plain;               /* lines when it is not */
    double t0, last;         /* start, last shown */
    int shown;               /* anything was printed */
} sr_progress;

/* Starts the clock; plain: print lines when stderr is not a terminal. */
void sr_progress_init(sr_progress *p, const char *prog, const char *what, int plain);

/* Shows done of total; done == total ends the bar's line. */
void sr_progress_show(sr_progress *p, int64_t done, int64_t total);

#endif
