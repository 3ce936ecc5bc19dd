/* starringd: the daemon. Under mpirun rank 0 is the coordinator and ranks
 * 1..N-1 are the workers:
 *
 *   mpirun -np N build/starringd --model FILE --listen 127.0.0.1:7070
 *
 * The workers get a communicator of their own for the data plane (the mpi
 * transport), and learn the coordinator's control address from rank 0
 * (MPI_Bcast); everything else goes over the control plane, so a start
 * without mpirun only needs another way to hand out that address and the
 * data plane's peers. Options come from one table (name, kind, default,
 * bounds, help); --help prints it. */
#include <errno.h>
#include <getopt.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/log.h"
#include "base/status.h"
#include "coordinator/coordinator.h"
#include "net/conn.h"
#include "daemon/workerd.h"
#include "transport/transport.h"

enum { K_STR, K_INT, K_BYTES, K_NUM };

typedef struct {
    const char *name;
    int kind;
    const char *def;      /* default, as typed on the command line; NULL: none */
    double lo, hi;        /* bounds of numbers */
    const char *help;
} opt_def;

static const opt_def opts[] = {
    {"model", K_STR, NULL, 0, 0, "GGUF model file (every rank reads it; the coordinator only its tokenizer)"},
    {"listen", K_STR, "127.0.0.1:7070", 0, 0, "HOST:PORT of the gRPC API"},
    {"control", K_STR, "", 0, 0, "HOST:PORT of the control plane (default: the API's host, any port)"},
    {"threads", K_INT, "1", 1, 1024, "compute threads per worker"},
    {"batch", K_INT, "4096", 16, 1 << 20, "model rows per forward call; ring mode holds a worker's share in one"},
    {"kv-budget", K_BYTES, "0", 0, 1e15, "bytes of KV per worker (K, M, G suffixes); 0: no limit"},
    {"queue", K_INT, "64", 1, 1 << 20, "requests admitted at once; more get RESOURCE_EXHAUSTED"},
    {"max-message", K_BYTES, "4M", 1024, 1 << 30, "largest gRPC request message and HTTP request body"},
    {"max-frame", K_BYTES, "80M", 1024, 1u << 31, "largest control-plane frame"},
    {"max-context", K_INT, "1048576", 1, 1 << 30, "most tokens of a context"},
    {"max-tokens", K_INT, "4096", 1, 1 << 30, "most tokens a question may ask for"},
    {"default-tokens", K_INT, "128", 1, 1 << 30, "tokens generated when a question does not say"},
    {"mode", K_STR, "star", 0, 0, "default mode of a context: star, ring or full"},
    {"heartbeat", K_NUM, "1", 0.05, 60, "seconds between worker heartbeats; 10 missed lose the worker"},
    {"log-level", K_STR, "info", 0, 0, "error, warn, info or debug"},
    {"http-listen", K_STR, "127.0.0.1:8080", 0, 0, "HOST:PORT of the OpenAI-compatible HTTP API, or off for none"},
    {"keep-prompts", K_INT, "8", 0, 1 << 20, "HTTP prompts kept resident for the next turn to reuse (LRU); 0: none"},
    {"api-key", K_STR, "", 0, 0, "bearer token both APIs require (needed to listen beyond loopback)"},
    {"api-key-file", K_STR, "", 0, 0, "file holding the API key (first line), kept out of the process list"},
};
enum { O_MODEL, O_LISTEN, O_CONTROL, O_THREADS, O_BATCH, O_KV_BUDGET, O_QUEUE, O_MAX_MESSAGE, O_MAX_FRAME,
       O_MAX_CONTEXT, O_MAX_TOKENS, O_DEFAULT_TOKENS, O_MODE, O_HEARTBEAT, O_LOG_LEVEL, O_HTTP_LISTEN,
       O_KEEP_PROMPTS, O_API_KEY, O_API_KEY_FILE, N_OPTS };

typedef struct {
    const char *s[N_OPTS];
    double v[N_OPTS];
} config;

static void usage(FILE *f) {
    fprintf(f, "usage: mpirun -np N starringd --model FILE [options]\n"
               "  rank 0 is the coordinator (the gRPC API), ranks 1..N-1 the workers\n\n");
    for (int i = 0; i < N_OPTS; i++) {
        char left[48];
        snprintf(left, sizeof left, "--%s %s", opts[i].name,
                 opts[i].kind == K_STR ? "S" : opts[i].kind == K_BYTES ? "BYTES" : "N");
        fprintf(f, "  %-24s %s", left, opts[i].help);
        if (opts[i].def && *opts[i].def) fprintf(f, " [%s]", opts[i].def);
        fputc('\n', f);
    }
}

/* A number with an optional K, M or G (powers of 1024) for bytes. */
static int parse_value(const opt_def *d, const char *s, double *out) {
    errno = 0;
    char *end;
    double x = strtod(s, &end);
    if (d->kind == K_BYTES && end != s) {
        if (*end == 'K' || *end == 'k') x *= 1024, end++;
        else if (*end == 'M' || *end == 'm') x *= 1024 * 1024, end++;
        else if (*end == 'G' || *end == 'g') x *= 1024.0 * 1024 * 1024, end++;
    }
    if (end == s || *end || errno || (d->kind != K_NUM && x != (double)(int64_t)x))
        return sr_error_set(SR_EINVAL, "--%s wants %s, not '%s'", d->name,
                            d->kind == K_NUM ? "a number" : d->kind == K_BYTES ? "a byte count" : "an integer", s);
    if (x < d->lo || x > d->hi)
        return sr_error_set(SR_EINVAL, "--%s %s is out of range %.15g..%.15g", d->name, s, d->lo, d->hi);
    *out = x;
    return SR_OK;
}

static int parse_args(int argc, char **argv, config *c) {
    struct option lo[N_OPTS + 2];
    for (int i = 0; i < N_OPTS; i++) {
        lo[i] = (struct option){opts[i].name, required_argument, 0, i};
        c->s[i] = opts[i].def;
    }
    lo[N_OPTS] = (struct option){"help", no_argument, 0, 'h'};
    lo[N_OPTS + 1] = (struct option){0, 0, 0, 0};
    int k;
    opterr = 0;
    while ((k = getopt_long(argc, argv, "m:t:h", lo, NULL)) != -1) {
        if (k == 'h') {
            usage(stdout);
            return 1;
        }
        if (k == 'm') k = O_MODEL;
        else if (k == 't') k = O_THREADS;
        else if (k < 0 || k >= N_OPTS)
            return sr_error_set(SR_EINVAL, "unknown option '%s' (see --help)", argv[optind - 1]);
        c->s[k] = optarg;
    }
    if (optind < argc) return sr_error_set(SR_EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!c->s[O_MODEL]) return sr_error_set(SR_EINVAL, "--model FILE is required (see --help)");
    for (int i = 0; i < N_OPTS; i++) {
        if (opts[i].kind == K_STR) continue;
        int rc = parse_value(&opts[i], c->s[i], &c->v[i]);
        if (rc != SR_OK) return rc;
    }
    if (strcmp(c->s[O_MODE], "star") && strcmp(c->s[O_MODE], "ring") && strcmp(c->s[O_MODE], "full"))
        return sr_error_set(SR_EINVAL, "--mode %s: use star, ring or full", c->s[O_MODE]);
    return SR_OK;
}

static int log_level(const char *s) {
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

/* The control address, from rank 0 to every rank. */
typedef struct {
    char host[96];
    int port;
} ctl_addr;

static int bcast_addr(ctl_addr *a) {
    SR_MPI_CHECK(MPI_Bcast(a, (int)sizeof *a, MPI_BYTE, 0, MPI_COMM_WORLD));
    return SR_OK;
}

static int coordinator_listening(const char *host, int port, void *data) {
    ctl_addr a = {{0}, port};
    snprintf(a.host, sizeof a.host, "%s", strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host);
    return bcast_addr(&a);
}

static int loopback(const char *host) {
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0;
}

/* The API key from --api-key or the first line of --api-key-file. */
static int api_key(const config *c, char *key, size_t cap) {
    key[0] = 0;
    if (*c->s[O_API_KEY] && *c->s[O_API_KEY_FILE])
        return sr_error_set(SR_EINVAL, "give --api-key or --api-key-file, not both");
    if (*c->s[O_API_KEY]) {
        if (strlen(c->s[O_API_KEY]) >= cap) return sr_error_set(SR_EINVAL, "--api-key is over %zu bytes", cap - 1);
        snprintf(key, cap, "%s", c->s[O_API_KEY]);
        return SR_OK;
    }
    if (!*c->s[O_API_KEY_FILE]) return SR_OK;
    FILE *f = fopen(c->s[O_API_KEY_FILE], "r");
    if (!f) return sr_error_set(SR_EIO, "--api-key-file %s: %s", c->s[O_API_KEY_FILE], strerror(errno));
    if (!fgets(key, (int)cap, f)) key[0] = 0;
    fclose(f);
    key[strcspn(key, "\r\n")] = 0;
    if (!*key) return sr_error_set(SR_EINVAL, "--api-key-file %s: the first line is empty", c->s[O_API_KEY_FILE]);
    return SR_OK;
}

static int run_coordinator(const config *c, int workers) {
    char lhost[96], chost[96], hhost[96], key[4097];
    int lport, cport = 0, hport = 0;
    int http = strcmp(c->s[O_HTTP_LISTEN], "off") != 0;
    int rc = sr_addr_parse(c->s[O_LISTEN], lhost, sizeof lhost, &lport);
    if (rc == SR_OK && *c->s[O_CONTROL]) rc = sr_addr_parse(c->s[O_CONTROL], chost, sizeof chost, &cport);
    else snprintf(chost, sizeof chost, "%s", lhost);
    if (rc == SR_OK && http) rc = sr_addr_parse(c->s[O_HTTP_LISTEN], hhost, sizeof hhost, &hport);
    if (rc == SR_OK) rc = api_key(c, key, sizeof key);
    if (rc != SR_OK) return rc;
    if (!*key && (!loopback(lhost) || (http && !loopback(hhost))))
        return sr_error_set(SR_EINVAL, "the %s API would listen on %s, beyond loopback, without a key: give --api-key-file "
                            "FILE (or --api-key KEY) so that clients must send 'Authorization: Bearer KEY', or listen "
                            "on 127.0.0.1", !loopback(lhost) ? "gRPC" : "HTTP", !loopback(lhost) ? lhost : hhost);
    sr_coord_opts o = {
        .model = c->s[O_MODEL], .listen_host = lhost, .listen_port = lport, .control_host = chost,
        .control_port = cport, .workers = workers, .kv_budget = (int64_t)c->v[O_KV_BUDGET],
        .queue = (int)c->v[O_QUEUE], .max_message = (size_t)c->v[O_MAX_MESSAGE],
        .max_frame = (size_t)c->v[O_MAX_FRAME], .max_context = (int64_t)c->v[O_MAX_CONTEXT],
        .max_batch = (int64_t)c->v[O_BATCH], .max_tokens = (int32_t)c->v[O_MAX_TOKENS],
        .default_tokens = (int32_t)c->v[O_DEFAULT_TOKENS], .mode = c->s[O_MODE], .heartbeat_s = c->v[O_HEARTBEAT],
        .http_host = http ? hhost : NULL, .http_port = hport, .keep_prompts = (int)c->v[O_KEEP_PROMPTS],
        .api_key = key, .on_listening = coordinator_listening};
    return sr_coord_run(&o);
}

static int run_worker(const config *c, int worker, int workers, MPI_Comm comm) {
    ctl_addr a;
    int rc = bcast_addr(&a);
    sr_tp *tp = NULL;
    sr_tp_opts to = sr_tp_opts_default();
    to.mpi_comm = &comm;
    if (rc == SR_OK) rc = sr_tp_open(&tp, "mpi", &to);
    if (rc != SR_OK) return rc;
    sr_workerd_opts o = {.model = c->s[O_MODEL], .worker = worker, .workers = workers, .tp = tp,
                         .coord_host = a.host, .coord_port = a.port, .n_threads = (int)c->v[O_THREADS],
                         .max_batch = (int64_t)c->v[O_BATCH], .kv_budget = (int64_t)c->v[O_KV_BUDGET],
                         .heartbeat_s = c->v[O_HEARTBEAT], .max_frame = (size_t)c->v[O_MAX_FRAME]};
    rc = sr_workerd_run(&o);
    sr_tp_close(tp);
    return rc;
}

int main(int argc, char **argv) {
    config c;
    int rc = sr_tp_mpi_init(&argc, &argv);
    int rank = 0, size = 1;
    if (rc == SR_OK) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    int parsed = rc == SR_OK ? parse_args(argc, argv, &c) : rc;
    if (parsed == 1) {
        MPI_Finalize();
        return 0;
    }
    int level = parsed == SR_OK ? log_level(c.s[O_LOG_LEVEL]) : SR_LOG_INFO;
    if (parsed == SR_OK && level < 0) parsed = sr_error_set(SR_EINVAL, "--log-level %s: use error, warn, info or debug", c.s[O_LOG_LEVEL]);
    if (parsed != SR_OK) {
        if (rank == 0) fprintf(stderr, "starringd: %s\n", sr_error_msg());
        if (rc == SR_OK) MPI_Finalize();
        return 2;
    }
    sr_log_init(rank == 0 ? "coordinator" : "worker", rank, level);
    /* a write to a peer that has gone (a client, or the coordinator at
     * shutdown) must fail with EPIPE on that connection, not end the process */
    signal(SIGPIPE, SIG_IGN);
    MPI_Comm workers = MPI_COMM_NULL;
    if (MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? MPI_UNDEFINED : 1, rank, &workers) != MPI_SUCCESS)
        rc = sr_error_set(SR_ECOMM, "MPI_Comm_split failed");
    if (rc == SR_OK) rc = rank == 0 ? run_coordinator(&c, size - 1) : run_worker(&c, rank - 1, size - 1, workers);
    if (rc != SR_OK) {
        SR_ERROR("%s", sr_error_msg());
        /* one rank's failure ends the job rather than leaving the others waiting */
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (workers != MPI_COMM_NULL) MPI_Comm_free(&workers);
    MPI_Finalize();
    return 0;
}
