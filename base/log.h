/* Logging: one line per call, prefixed with time, level, role, rank and pid
 * so that interleaved logs of many processes stay readable. The level is
 * checked before anything is formatted. Lines go to stderr, or to a file
 * that can be reopened (log rotation). */
#ifndef SR_BASE_LOG_H
#define SR_BASE_LOG_H

enum { SR_LOG_ERROR = 0, SR_LOG_WARN = 1, SR_LOG_INFO = 2, SR_LOG_DEBUG = 3 };

extern int sr_log_level;

/* Sets the prefix fields (role: "coordinator", "worker", "run", ...; rank -1 if none). */
void sr_log_init(const char *role, int rank, int level);

/* Appends the log to path from now on (NULL or "": stays on stderr). */
int sr_log_open(const char *path);
/* Opens the log file's path again (after logrotate moved it: SIGHUP).
 * Only system calls (open, dup3, close), so a signal handler may call it;
 * 0 or -errno. */
int sr_log_reopen(void);

void sr_log_write(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define SR_LOG(level, ...)                                                \
    do {                                                                  \
        if ((level) <= sr_log_level) sr_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define SR_ERROR(...) SR_LOG(SR_LOG_ERROR, __VA_ARGS__)
#define SR_WARN(...) SR_LOG(SR_LOG_WARN, __VA_ARGS__)
#define SR_INFO(...) SR_LOG(SR_LOG_INFO, __VA_ARGS__)
#define SR_DEBUG(...) SR_LOG(SR_LOG_DEBUG, __VA_ARGS__)

#endif
