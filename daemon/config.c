#include "daemon/config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"

const sr_cfg_def sr_cfg_table[SR_CFG_N] = {
    [SR_CFG_MODEL] = {"model", 'm', SR_CFG_STR, NULL, 0, 0, NULL,
                      "GGUF model file (every rank reads it; the coordinator only its tokenizer)"},
    [SR_CFG_LISTEN] = {"listen", 0, SR_CFG_STR, "127.0.0.1:7070", 0, 0, NULL, "HOST:PORT of the gRPC API"},
    [SR_CFG_CONTROL] = {"control", 0, SR_CFG_STR, "", 0, 0, NULL,
                        "HOST:PORT of the control plane (empty: the API's host, any port)"},
    [SR_CFG_THREADS] = {"threads", 't', SR_CFG_INT, "1", 1, 1024, NULL, "compute threads per worker"},
    [SR_CFG_BATCH] = {"batch", 0, SR_CFG_INT, "4096", 16, 1 << 20, NULL,
                      "model rows per forward call; ring mode holds a worker's share in one"},
    [SR_CFG_MAX_BATCH_DECODE] = {"max-batch-decode", 0, SR_CFG_INT, "16", 1, 1024, NULL,
                                 "generations whose next tokens run in one decode step (one forward pass reads the "
                                 "weights once for all of them); more wait for the next step; 1: one at a time"},
    [SR_CFG_KV_BUDGET] = {"kv-budget", 0, SR_CFG_BYTES, "0", 0, 1e15, NULL, "bytes of KV per worker; 0: no limit"},
    [SR_CFG_QUEUE] = {"queue", 0, SR_CFG_INT, "64", 1, 1 << 20, NULL,
                      "requests admitted at once; more get RESOURCE_EXHAUSTED"},
    [SR_CFG_MAX_MESSAGE] = {"max-message", 0, SR_CFG_BYTES, "4M", 1024, 1 << 30, NULL, "largest gRPC request message and HTTP request body"},
    [SR_CFG_MAX_FRAME] = {"max-frame", 0, SR_CFG_BYTES, "80M", 1024, 1u << 31, NULL, "largest control-plane frame"},
    [SR_CFG_MAX_CONNECTIONS] = {"max-connections", 0, SR_CFG_INT, "1024", 1, 1 << 20, NULL,
                                "client connections at once on each client port (gRPC, HTTP); more are closed as they "
                                "come (logged at most once a second)"},
    [SR_CFG_CLIENT_TIMEOUT] = {"client-timeout", 0, SR_CFG_NUM, "10", 0.1, 3600, NULL,
                               "seconds a client has to send its first request (gRPC: the HTTP/2 preface), and a request "
                               "(its headers, each message, an HTTP body) to arrive whole once begun; a slower client is "
                               "dropped (logged)"},
    [SR_CFG_IDLE_TIMEOUT] = {"idle-timeout", 0, SR_CFG_NUM, "300", 0.1, 86400, NULL,
                             "seconds a client connection may stay open with no request in progress (gRPC: no call "
                             "open, or a call between two of its messages) before it is closed"},
    [SR_CFG_MAX_CONTEXT] = {"max-context", 0, SR_CFG_INT, "1048576", 1, 1 << 30, NULL, "most tokens of a context"},
    [SR_CFG_MAX_TOKENS] = {"max-tokens", 0, SR_CFG_INT, "4096", 1, 1 << 30, NULL, "most tokens a question may ask for"},
    [SR_CFG_DEFAULT_TOKENS] = {"default-tokens", 0, SR_CFG_INT, "128", 1, 1 << 30, NULL,
                               "tokens generated when a question does not say"},
    [SR_CFG_MODE] = {"mode", 0, SR_CFG_ENUM, "star", 0, 0, "star,ring,full,cad",
                     "default mode of a context (cad needs --attn-servers)"},
    [SR_CFG_HEARTBEAT] = {"heartbeat", 0, SR_CFG_NUM, "1", 0.05, 60, NULL,
                          "seconds between worker heartbeats; 10 missed lose the worker"},
    [SR_CFG_SHUTDOWN_GRACE] = {"shutdown-grace", 0, SR_CFG_NUM, "30", 0, 3600, NULL,
                               "seconds that running requests may take to finish after SIGTERM (new ones get "
                               "UNAVAILABLE); then they are cancelled"},
    [SR_CFG_LOG_LEVEL] = {"log-level", 0, SR_CFG_ENUM, "info", 0, 0, "error,warn,info,debug", "what is logged"},
    [SR_CFG_LOG_FILE] = {"log-file", 0, SR_CFG_STR, "", 0, 0, NULL,
                         "append the log to this file, reopened on SIGHUP (empty: stderr)"},
    [SR_CFG_HTTP_LISTEN] = {"http-listen", 0, SR_CFG_STR, "127.0.0.1:8080", 0, 0, NULL,
                            "HOST:PORT of the OpenAI-compatible HTTP API, or off for none"},
    [SR_CFG_METRICS_LISTEN] = {"metrics-listen", 0, SR_CFG_STR, "off", 0, 0, NULL,
                               "HOST:PORT of Prometheus metrics (GET /metrics: request counts by method and status, token "
                               "counts, queue, timing histograms, contexts, KV bytes, workers up; no prompt or token text), "
                               "or off. Off by default: it needs no API key, so choose where it listens"},
    [SR_CFG_KEEP_PROMPTS] = {"keep-prompts", 0, SR_CFG_INT, "8", 0, 1 << 20, NULL,
                             "HTTP prompts kept resident for the next turn to reuse (least recently used go first); 0: none"},
    [SR_CFG_API_KEY] = {"api-key", 0, SR_CFG_STR, "", 0, 0, NULL,
                        "bearer token both APIs require (needed to listen beyond loopback); prefer api-key-file"},
    [SR_CFG_API_KEY_FILE] = {"api-key-file", 0, SR_CFG_STR, "", 0, 0, NULL,
                             "file whose first line is the API key, kept out of the process list"},
    [SR_CFG_ROLE] = {"role", 0, SR_CFG_ENUM, "mpirun", 0, 0, "mpirun,coordinator,worker",
                     "mpirun: rank 0 coordinates, the other ranks work; coordinator or worker: one role, no MPI"},
    [SR_CFG_CLUSTER_LISTEN] = {"cluster-listen", 0, SR_CFG_STR, "", 0, 0, NULL,
                               "role coordinator: HOST:PORT the workers join at (empty: as --control)"},
    [SR_CFG_JOIN] = {"join", 0, SR_CFG_STR, "", 0, 0, NULL, "role worker: the coordinator's --cluster-listen HOST:PORT"},
    [SR_CFG_CLUSTER_SECRET_FILE] = {"cluster-secret-file", 0, SR_CFG_STR, "", 0, 0, NULL,
                                    "roles coordinator and worker: the cluster secret, 16 to 4096 bytes, mode 600, the same "
                                    "file on every node (head -c 32 /dev/urandom >F; chmod 600 F); proved at join, never sent"},
    [SR_CFG_WORKERS] = {"workers", 0, SR_CFG_INT, "1", 1, 65536, NULL,
                        "role coordinator: the workers that must join before it first serves; later a "
                        "lost one does not stop it, and one may join again in a lost one's place"},
    [SR_CFG_TRANSPORT] = {"transport", 0, SR_CFG_ENUM, "auto", 0, 0, "auto,mpi,ucx,tcp",
                          "the workers' data plane; auto: mpi under mpirun, ucx for role worker (addresses through the "
                          "coordinator); tcp: role worker only, with --data-listen"},
    [SR_CFG_DATA_LISTEN] = {"data-listen", 0, SR_CFG_STR, "", 0, 0, NULL,
                            "role worker, --transport tcp: HOST:PORT this worker's data plane listens on, reachable by "
                            "the other workers"},
    [SR_CFG_JOIN_TIMEOUT] = {"join-timeout", 0, SR_CFG_NUM, "5", 0.1, 600, NULL,
                             "seconds a control connection may take to prove the cluster secret before it is dropped"},
    [SR_CFG_REJOIN_TIMEOUT] = {"rejoin-timeout", 0, SR_CFG_NUM, "300", 0, 86400, NULL,
                               "role worker: seconds to keep joining again after the coordinator is lost or asks it to "
                               "(its contexts are gone, the model stays loaded); 0: leave at once"},
    [SR_CFG_CLUSTER_MAX_PENDING] = {"cluster-max-pending", 0, SR_CFG_INT, "64", 1, 65536, NULL,
                                    "role coordinator: control connections at most that are still proving the cluster "
                                    "secret; more are closed at once, with a log line"},
    [SR_CFG_CONTEXT_WORKERS] = {"context-workers", 0, SR_CFG_INT, "0", 0, 65536, NULL,
                                "role coordinator: the workers a new context is placed on (the least loaded of those "
                                "up), unless its ContextOptions.workers says; 0: all that are up. A lost worker loses "
                                "only the contexts placed on it"},
    [SR_CFG_ATTN_SERVERS] = {"attn-servers", 0, SR_CFG_INT, "0", 0, 65535, NULL,
                             "under mpirun: the last K worker ranks are attention servers for mode cad contexts: they "
                             "load no weights, hold those contexts' KV and compute their core attention; the other "
                             "workers run the model (at least one must); 0: none, and mode cad is refused"},
};

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

/* A value or key shown in a message: printable ASCII only, at most 64 bytes. */
static void shown(char *out, size_t cap, const char *s, size_t n) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 5 < cap && i < 64; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f) out[j++] = (char)ch;
        else j += (size_t)snprintf(out + j, cap - j, "\\x%02x", ch);
    }
    if (n > 64 && j + 4 < cap) memcpy(out + j, "...", 3), j += 3;
    out[j] = 0;
}

/* Where a value came from, for messages: "--threads '0'" or "FILE:3: threads = '0'". */
static void describe(char *out, size_t cap, const sr_cfg_def *d, const char *value, const char *where) {
    char v[300];
    shown(v, sizeof v, value, strlen(value));
    if (where) snprintf(out, cap, "%s: %s = '%s'", where, d->name, v);
    else snprintf(out, cap, "--%s '%s'", d->name, v);
}

static void allowed(char *out, size_t cap, const sr_cfg_def *d) {
    switch (d->kind) {
    case SR_CFG_ENUM: snprintf(out, cap, "one of %s", d->choices); break;
    case SR_CFG_BYTES: snprintf(out, cap, "a byte count %.0f..%.0f (K, M, G: powers of 1024)", d->lo, d->hi); break;
    case SR_CFG_INT: snprintf(out, cap, "an integer %.0f..%.0f", d->lo, d->hi); break;
    case SR_CFG_NUM: snprintf(out, cap, "a number %.15g..%.15g", d->lo, d->hi); break;
    default: snprintf(out, cap, "any text"); break;
    }
}

/* The index of word in a comma-separated list, or -1. */
static int choice_index(const char *choices, const char *word) {
    size_t n = strlen(word);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (n && len == n && memcmp(p, word, n) == 0) return i;
        if (!e) break;
        p = e + 1;
    }
    return -1;
}

static int parse_value(const sr_cfg_def *d, const char *s, const char *where, double *out) {
    char what[512], ok[160];
    describe(what, sizeof what, d, s, where);
    if (d->kind == SR_CFG_STR) {
        /* text that a config file could not hold as it is (--print-config must write it back) */
        size_t n = strlen(s);
        int bad = n && (is_space(s[0]) || is_space(s[n - 1]) || s[0] == '#');
        for (size_t i = 0; i < n && !bad; i++)
            bad = (unsigned char)s[i] < 0x20 || s[i] == 0x7f || (s[i] == '#' && i && is_space(s[i - 1]));
        if (bad)
            return sr_error_set(SR_EINVAL, "%s: control characters, spaces at either end and a '#' that would begin "
                                "a comment are not allowed in text", what);
        *out = 0;
        return SR_OK;
    }
    allowed(ok, sizeof ok, d);
    if (d->kind == SR_CFG_ENUM) {
        int i = choice_index(d->choices, s);
        if (i < 0) return sr_error_set(SR_EINVAL, "%s is not allowed: use %s", what, ok);
        *out = i;
        return SR_OK;
    }
    errno = 0;
    char *end;
    double x = strtod(s, &end);
    /* strtod also takes leading spaces, "inf", "nan" and hex: none is a number a person writes here */
    if (strspn(s, "0123456789.eE+-") < (size_t)(end - s)) end = (char *)s;
    if (d->kind == SR_CFG_BYTES && end != s) {
        if (*end == 'K' || *end == 'k') x *= 1024, end++;
        else if (*end == 'M' || *end == 'm') x *= 1024 * 1024, end++;
        else if (*end == 'G' || *end == 'g') x *= 1024.0 * 1024 * 1024, end++;
    }
    if (end == s || *end || errno || !isfinite(x) || (d->kind != SR_CFG_NUM && x != floor(x)))
        return sr_error_set(SR_EINVAL, "%s is not %s", what, ok);
    if (!(x >= d->lo && x <= d->hi)) return sr_error_set(SR_EINVAL, "%s is out of range: allowed is %s", what, ok);
    *out = x;
    return SR_OK;
}

int sr_config_set(sr_config *c, int key, const char *value, const char *where) {
    if (key < 0 || key >= SR_CFG_N) return sr_error_set(SR_EINVAL, "option %d does not exist (0..%d)", key, SR_CFG_N - 1);
    double v;
    int rc = parse_value(&sr_cfg_table[key], value, where, &v);
    if (rc != SR_OK) return rc;
    char *copy = strdup(value);
    if (!copy) return sr_error_set(SR_ENOMEM, "out of memory for --%s", sr_cfg_table[key].name);
    free(c->s[key]);
    c->s[key] = copy;
    c->v[key] = v;
    return SR_OK;
}

int sr_config_init(sr_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < SR_CFG_N; i++) {
        if (!sr_cfg_table[i].def) continue;
        int rc = sr_config_set(c, i, sr_cfg_table[i].def, "the default");
        if (rc != SR_OK) {
            sr_config_free(c);
            return rc;
        }
    }
    return SR_OK;
}

void sr_config_free(sr_config *c) {
    for (int i = 0; i < SR_CFG_N; i++) {
        free(c->s[i]);
        c->s[i] = NULL;
    }
}

static int key_index(const char *name, size_t n) {
    for (int i = 0; i < SR_CFG_N; i++)
        if (strlen(sr_cfg_table[i].name) == n && memcmp(sr_cfg_table[i].name, name, n) == 0) return i;
    return -1;
}

int sr_config_parse_text(sr_config *c, const char *text, size_t n, const char *path) {
    int set_at[SR_CFG_N] = {0};
    int line = 0;
    for (size_t at = 0; at < n;) {
        line++;
        const char *p = text + at;
        const char *nl = memchr(p, '\n', n - at);
        size_t len = nl ? (size_t)(nl - p) : n - at;
        at += len + (nl != NULL);
        char where[300], show[300];
        snprintf(where, sizeof where, "%s:%d", path, line);
        if (memchr(p, 0, len)) return sr_error_set(SR_EFORMAT, "%s: the line holds a NUL byte: a config file is text", where);
        /* '#' at the start or after a space begins a comment */
        for (size_t i = 0; i < len; i++)
            if (p[i] == '#' && (i == 0 || is_space(p[i - 1]))) {
                len = i;
                break;
            }
        while (len && is_space(p[len - 1])) len--;
        while (len && is_space(*p)) p++, len--;
        if (!len) continue;
        const char *eq = memchr(p, '=', len);
        if (!eq) {
            shown(show, sizeof show, p, len);
            return sr_error_set(SR_EFORMAT, "%s: '%s' is not a 'key = value' line", where, show);
        }
        size_t kn = (size_t)(eq - p);
        while (kn && is_space(p[kn - 1])) kn--;
        const char *v = eq + 1;
        size_t vn = len - (size_t)(v - p);
        while (vn && is_space(*v)) v++, vn--;
        int key = key_index(p, kn);
        if (key < 0) {
            shown(show, sizeof show, p, kn);
            return sr_error_set(SR_EINVAL, "%s: unknown key '%s' (the keys are the long flags without --: see starringd --help)",
                                where, show);
        }
        if (set_at[key])
            return sr_error_set(SR_EINVAL, "%s: %s is set twice (first on line %d)", where, sr_cfg_table[key].name, set_at[key]);
        set_at[key] = line;
        char *value = strndup(v, vn);
        if (!value) return sr_error_set(SR_ENOMEM, "%s: out of memory", where);
        int rc = sr_config_set(c, key, value, where);
        free(value);
        if (rc != SR_OK) return rc;
    }
    return SR_OK;
}

/* A config file is small: more than this is not one. */
#define CONFIG_MAX_BYTES (1 << 20)

int sr_config_load(sr_config *c, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return sr_error_set(SR_EIO, "--config %s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    int err = ferror(f);
    fclose(f);
    int rc;
    if (!buf) rc = sr_error_set(SR_ENOMEM, "--config %s: out of memory", path);
    else if (err) rc = sr_error_set(SR_EIO, "--config %s: cannot read", path);
    else if (n > CONFIG_MAX_BYTES) rc = sr_error_set(SR_ERANGE, "--config %s: over %d bytes: not a config file", path, CONFIG_MAX_BYTES);
    else rc = sr_config_parse_text(c, buf, n, path);
    free(buf);
    return rc;
}

/* getopt_long's values of the long options: above any short flag's character */
enum { OPT_ROW = 1000, OPT_CONFIG = OPT_ROW + SR_CFG_N, OPT_PRINT, OPT_HELP };

int sr_config_parse_args(sr_config *c, int argc, char **argv) {
    struct option lo[SR_CFG_N + 4];
    char shorts[2 * SR_CFG_N + 4] = ":h";
    size_t ns = 2;
    for (int i = 0; i < SR_CFG_N; i++) {
        lo[i] = (struct option){sr_cfg_table[i].name, required_argument, 0, OPT_ROW + i};
        if (sr_cfg_table[i].short_name) {
            shorts[ns++] = sr_cfg_table[i].short_name;
            shorts[ns++] = ':';
        }
    }
    shorts[ns] = 0;
    lo[SR_CFG_N] = (struct option){"config", required_argument, 0, OPT_CONFIG};
    lo[SR_CFG_N + 1] = (struct option){"print-config", no_argument, 0, OPT_PRINT};
    lo[SR_CFG_N + 2] = (struct option){"help", no_argument, 0, OPT_HELP};
    lo[SR_CFG_N + 3] = (struct option){0, 0, 0, 0};

    /* the flags are applied after the file, so first only collected */
    int *keys = calloc((size_t)argc + 1, sizeof *keys);
    char **vals = calloc((size_t)argc + 1, sizeof *vals);
    const char *file = NULL;
    int n = 0, what = SR_CFG_RUN, rc = SR_OK, k;
    if (!keys || !vals) rc = sr_error_set(SR_ENOMEM, "out of memory");
    optind = 0; /* GNU: start afresh (parse_args may be called more than once) */
    opterr = 0;
    while (rc == SR_OK && (k = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        if (k == 'h' || k == OPT_HELP) what = SR_CFG_HELP;
        else if (k == OPT_PRINT) what = what == SR_CFG_HELP ? what : SR_CFG_PRINT;
        else if (k == OPT_CONFIG && file) rc = sr_error_set(SR_EINVAL, "--config is given twice ('%s', '%s')", file, optarg);
        else if (k == OPT_CONFIG) file = optarg;
        else if (k == ':') rc = sr_error_set(SR_EINVAL, "%s needs a value (see --help)", argv[optind - 1]);
        else if (k == '?') rc = sr_error_set(SR_EINVAL, "unknown option '%s' (see --help)", argv[optind - 1]);
        else {
            for (int i = 0; k < OPT_ROW && i < SR_CFG_N; i++)
                if (k == sr_cfg_table[i].short_name) k = OPT_ROW + i;
            keys[n] = k - OPT_ROW;
            vals[n++] = optarg;
        }
    }
    if (rc == SR_OK && optind < argc) rc = sr_error_set(SR_EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
    if (rc == SR_OK) rc = sr_config_init(c);
    else memset(c, 0, sizeof *c);
    if (rc == SR_OK && file) rc = sr_config_load(c, file);
    for (int i = 0; rc == SR_OK && i < n; i++) rc = sr_config_set(c, keys[i], vals[i], NULL);
    for (int i = 0; rc == SR_OK && what == SR_CFG_RUN && i < SR_CFG_N; i++)
        if (!c->s[i])
            rc = sr_error_set(SR_EINVAL, "--%s is required (on the command line, or '%s = ...' in the --config file; see --help)",
                              sr_cfg_table[i].name, sr_cfg_table[i].name);
    free(keys);
    free(vals);
    if (rc != SR_OK) {
        sr_config_free(c);
        return rc;
    }
    return what;
}

static const char *value_name(const sr_cfg_def *d) {
    switch (d->kind) {
    case SR_CFG_INT:
    case SR_CFG_NUM: return "N";
    case SR_CFG_BYTES: return "BYTES";
    case SR_CFG_ENUM: return "WORD";
    default: return "S";
    }
}

void sr_config_usage(FILE *f) {
    fprintf(f, "usage: mpirun -np N starringd --model FILE [options]\n"
               "  rank 0 is the coordinator (the gRPC API), ranks 1..N-1 the workers\n\n");
    for (int i = 0; i < SR_CFG_N; i++) {
        const sr_cfg_def *d = &sr_cfg_table[i];
        char left[64], ok[160];
        if (d->short_name) snprintf(left, sizeof left, "-%c, --%s %s", d->short_name, d->name, value_name(d));
        else snprintf(left, sizeof left, "    --%s %s", d->name, value_name(d));
        if (d->kind == SR_CFG_ENUM) snprintf(ok, sizeof ok, "%s", d->choices);
        else if (d->kind != SR_CFG_STR) snprintf(ok, sizeof ok, "%.15g..%.15g", d->lo, d->hi);
        else ok[0] = 0;
        fprintf(f, "  %-24s %s [%s%s%s%s]\n", left, d->help, ok, *ok ? ", " : "", d->def ? "default " : "required",
                !d->def ? "" : *d->def ? d->def : "empty");
    }
    fprintf(f, "  %-24s %s\n", "    --config FILE", "read options from FILE first (the format is below)");
    fprintf(f, "  %-24s %s\n", "    --print-config", "print the options as a config file, then exit");
    fprintf(f, "  %-24s %s\n", "-h, --help", "print this, then exit");
    fprintf(f, "\nconfig file: one 'key = value' a line, the keys are the long flags without --\n"
               "(threads = 4); '#' at the start of a line or after a space begins a comment;\n"
               "a key may appear once. Flags override the file, the file the defaults.\n"
               "SIGTERM: stop taking requests, let running ones finish for --shutdown-grace\n"
               "seconds, cancel the rest, exit 0. SIGHUP: reopen --log-file.\n");
}

void sr_config_print(FILE *f, const sr_config *c) {
    fprintf(f, "# starringd configuration (starringd --config FILE).\n"
               "# One 'key = value' a line; the keys are starringd's long flags without --,\n"
               "# and a flag on the command line overrides its key here. '#' at the start\n"
               "# of a line or after a space begins a comment. Byte counts take K, M or G.\n"
               "# Written by 'starringd --print-config' from the option table.\n");
    for (int i = 0; i < SR_CFG_N; i++) {
        const sr_cfg_def *d = &sr_cfg_table[i];
        char ok[160];
        allowed(ok, sizeof ok, d);
        if (d->kind == SR_CFG_STR) fprintf(f, "\n# %s%s\n", d->help, d->def ? "" : " (required)");
        else fprintf(f, "\n# %s (%s)\n", d->help, ok);
        if (c->s[i]) fprintf(f, "%s =%s%s\n", d->name, *c->s[i] ? " " : "", c->s[i]);
        else fprintf(f, "#%s =\n", d->name);
    }
}
