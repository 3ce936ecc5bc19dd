/* config: starringd's options, from one declarative table (name, kind,
 * bounds, default, help). The command-line flags, --help, the config file
 * parser and the example config (--print-config) all come from it, so a new
 * option is one row.
 *
 * A config file (--config FILE) holds the same keys as the flags, one
 * `key = value` a line; `#` starts a comment (a whole line, or after a
 * value), blank lines are skipped, and spaces around key and value are not
 * part of them. Flags override the file, the file overrides the defaults. An
 * unknown key, a malformed line or a value out of range is an error that
 * names the file, the line, the key, the value and what is allowed. */
#ifndef SR_DAEMON_CONFIG_H
#define SR_DAEMON_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    SR_CFG_STR,   /* any text */
    SR_CFG_INT,   /* an integer in lo..hi */
    SR_CFG_BYTES, /* an integer in lo..hi with an optional K, M or G (powers of 1024) */
    SR_CFG_NUM,   /* a number in lo..hi */
    SR_CFG_ENUM,  /* one of the comma-separated words in choices */
} sr_cfg_kind;

typedef struct {
    const char *name;    /* the flag without "--", and the file's key */
    char short_name;     /* a one-letter flag, or 0 */
    sr_cfg_kind kind;
    const char *def;     /* the default as it would be typed; NULL: none (the option is required) */
    double lo, hi;       /* bounds of INT, BYTES and NUM */
    const char *choices; /* ENUM: "star,ring,full" */
    const char *help;
} sr_cfg_def;

/* The rows of the table, in its order. */
enum {
    SR_CFG_MODEL,
    SR_CFG_LISTEN,
    SR_CFG_CONTROL,
    SR_CFG_THREADS,
    SR_CFG_BATCH,
    SR_CFG_MAX_BATCH_DECODE,
    SR_CFG_KV_BUDGET,
    SR_CFG_QUEUE,
    SR_CFG_MAX_MESSAGE,
    SR_CFG_MAX_FRAME,
    SR_CFG_MAX_CONNECTIONS,
    SR_CFG_CLIENT_TIMEOUT,
    SR_CFG_IDLE_TIMEOUT,
    SR_CFG_MAX_CONTEXT,
    SR_CFG_MAX_TOKENS,
    SR_CFG_DEFAULT_TOKENS,
    SR_CFG_MODE,
    SR_CFG_HEARTBEAT,
    SR_CFG_SHUTDOWN_GRACE,
    SR_CFG_LOG_LEVEL,
    SR_CFG_LOG_FILE,
    SR_CFG_HTTP_LISTEN,
    SR_CFG_METRICS_LISTEN,
    SR_CFG_KEEP_PROMPTS,
    SR_CFG_API_KEY,
    SR_CFG_API_KEY_FILE,
    SR_CFG_ROLE,
    SR_CFG_CLUSTER_LISTEN,
    SR_CFG_JOIN,
    SR_CFG_CLUSTER_SECRET_FILE,
    SR_CFG_WORKERS,
    SR_CFG_TRANSPORT,
    SR_CFG_JOIN_TIMEOUT,
    SR_CFG_DATA_LISTEN,
    SR_CFG_REJOIN_TIMEOUT,
    SR_CFG_CLUSTER_MAX_PENDING,
    SR_CFG_CONTEXT_WORKERS,
    SR_CFG_ATTN_SERVERS,
    SR_CFG_N
};

extern const sr_cfg_def sr_cfg_table[SR_CFG_N];

typedef struct {
    char *s[SR_CFG_N];   /* each value as given (owned); NULL: not set and no default */
    double v[SR_CFG_N];  /* INT, BYTES, NUM: the number; ENUM: the index of the choice */
} sr_config;

/* What sr_config_parse_args found besides options. */
enum { SR_CFG_RUN = 0, SR_CFG_HELP = 1, SR_CFG_PRINT = 2 };

/* Fills c with the defaults. */
int sr_config_init(sr_config *c);
void sr_config_free(sr_config *c);

/* Sets one option from its text; `where` names the source in errors
 * ("--threads", or "FILE:LINE"). */
int sr_config_set(sr_config *c, int key, const char *value, const char *where);

/* Applies `key = value` lines of text (n bytes, need not end in NUL); path
 * names the file in errors. */
int sr_config_parse_text(sr_config *c, const char *text, size_t n, const char *path);
/* Reads and applies a config file. */
int sr_config_load(sr_config *c, const char *path);

/* Defaults, then --config FILE, then the other flags. Returns SR_CFG_RUN,
 * SR_CFG_HELP (--help), SR_CFG_PRINT (--print-config) or an error. The
 * required options (no default) are checked only for SR_CFG_RUN. */
int sr_config_parse_args(sr_config *c, int argc, char **argv);

/* --help: every option with its default and range, and the file format. */
void sr_config_usage(FILE *f);
/* A config file that sets every option to its value in c (with the
 * defaults, the example config); an option without a value is a comment. */
void sr_config_print(FILE *f, const sr_config *c);

#endif
