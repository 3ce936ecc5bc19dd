#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/status.h"

int sr_log_level = SR_LOG_INFO;
static char log_role[32] = "starring";
static int log_rank = -1;
/* each line is one write(2) to log_fd; a reopen dup3()s the new file onto
 * it, so a thread writing meanwhile writes to the old file or the new one */
static int log_fd = 2;
static char log_path[4096];

void sr_log_init(const char *role, int rank, int level) {
    snprintf(log_role, sizeof log_role, "%s", role ? role : "starring");
    log_rank = rank;
    sr_log_level = level;
}

static int open_log(void) {
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return -errno;
    if (log_fd == 2) {
        log_fd = fd;
        return 0;
    }
    /* dup3 keeps close-on-exec, which dup2 would drop */
    int rc = dup3(fd, log_fd, O_CLOEXEC) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int sr_log_open(const char *path) {
    if (!path || !*path) return SR_OK;
    if (strlen(path) >= sizeof log_path)
        return sr_error_set(SR_EINVAL, "log file path of %zu bytes is over %zu", strlen(path), sizeof log_path - 1);
    snprintf(log_path, sizeof log_path, "%s", path);
    int rc = open_log();
    if (rc < 0) {
        log_path[0] = 0;
        return sr_error_set(SR_EIO, "cannot open the log file %s: %s", path, strerror(-rc));
    }
    return SR_OK;
}

int sr_log_reopen(void) { return log_path[0] ? open_log() : 0; }

void sr_log_write(int level, const char *file, int line, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    char rank[16] = "";
    if (log_rank >= 0) snprintf(rank, sizeof rank, "/%d", log_rank);
    char buf[1400];
    int n = snprintf(buf, sizeof buf, "%s.%03ldZ %-5s %s%s[%d] %s:%d: ", when, ts.tv_nsec / 1000000L,
                     names[level < 0 ? 0 : level > 3 ? 3 : level], log_role, rank, (int)getpid(),
                     base ? base + 1 : file, line);
    if (n < 0 || (size_t)n >= sizeof buf - 1) n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : (size_t)(n + m) >= sizeof buf - 1 ? (int)sizeof buf - 2 : n + m;
    buf[n++] = '\n';
    /* one write per line so that lines from threads and processes do not interleave */
    for (int off = 0; off < n;) {
        ssize_t w = write(log_fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (int)w;
    }
}
