#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int sr_log_level = SR_LOG_INFO;
static char log_role[32] = "starring";
static int log_rank = -1;

void sr_log_init(const char *role, int rank, int level) {
    snprintf(log_role, sizeof log_role, "%s", role ? role : "starring");
    log_rank = rank;
    sr_log_level = level;
}

void sr_log_write(int level, const char *file, int line, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    char rank[16] = "";
    if (log_rank >= 0) snprintf(rank, sizeof rank, "/%d", log_rank);
    /* one fprintf per line so that lines from threads do not interleave */
    fprintf(stderr, "%s.%03ld %-5s %s%s[%d] %s:%d: %s\n", when, ts.tv_nsec / 1000000L,
            names[level < 0 ? 0 : level > 3 ? 3 : level], log_role, rank, (int)getpid(),
            base ? base + 1 : file, line, msg);
}
