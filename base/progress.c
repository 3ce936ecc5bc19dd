/* progress: the stderr progress bar and lines (see progress.h). */
#include "base/progress.h"

#include <stdio.h>
#include <unistd.h>

#include "base/clock.h"

void sr_progress_init(sr_progress *p, const char *prog, const char *what, int plain) {
    *p = (sr_progress){prog, what, isatty(2), plain, sr_now(), 0, 0};
}

void sr_progress_show(sr_progress *p, int64_t done, int64_t total) {
    double now = sr_now(), el = now - p->t0, rate = el > 0 && done > 0 ? (double)done / el : 0;
    int end = done >= total;
    /* a chunked prefill reports hundreds of times: redraws are rationed */
    if (!end && p->shown && now - p->last < (p->tty ? 0.1 : 1.0)) return;
    if (p->tty) {
        int w = 30, fill = total > 0 ? (int)(w * done / total) : 0;
        char bar[64];
        for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
        bar[w] = 0;
        fprintf(stderr, "\r%s [%s] %lld/%lld tokens", p->what, bar, (long long)done, (long long)total);
        if (rate > 0 && !end) fprintf(stderr, "  %.0f tok/s  %.0f s left", rate, (double)(total - done) / rate);
        else fprintf(stderr, "  %.1f s", el);
        fprintf(stderr, "\033[K");
        if (end) fputc('\n', stderr);
    } else if (p->plain) {
        fprintf(stderr, "%s: %s %lld/%lld tokens after %.1f s\n", p->prog, p->what, (long long)done, (long long)total, el);
    } else {
        return;
    }
    fflush(stderr);
    p->last = now;
    p->shown = 1;
}
