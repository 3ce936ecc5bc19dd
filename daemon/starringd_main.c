/* starringd: the daemon. Under mpirun rank 0 is the coordinator and ranks
 * 1..N-1 are the workers:
 *
 *   mpirun -np N build/starringd --model FILE --listen 127.0.0.1:7070
 *
 * The workers get a communicator of their own for the data plane (the mpi
 * transport), and learn the coordinator's control address from rank 0
 * (MPI_Bcast); everything else goes over the control plane, so a start
 * without mpirun only needs another way to hand out that address and the
 * data plane's peers. Options come from one table (daemon/config.c): flags,
 * --config FILE, --help and --print-config.
 *
 * Under systemd (NOTIFY_SOCKET set) rank 0 alone talks to it: READY=1 once
 * health is SERVING (every worker has joined), WATCHDOG=1 from its event
 * loop; the coordinator loses a worker whose loop stops (heartbeats), so
 * one watchdog covers the job. */
#include <errno.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "base/log.h"
#include "base/status.h"
#include "coordinator/coordinator.h"
#include "daemon/config.h"
#include "daemon/notify.h"
#include "daemon/workerd.h"
#include "net/conn.h"
#include "transport/transport.h"

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
static int api_key(const sr_config *c, char *key, size_t cap) {
    key[0] = 0;
    const char *k = c->s[SR_CFG_API_KEY], *file = c->s[SR_CFG_API_KEY_FILE];
    if (*k && *file) return sr_error_set(SR_EINVAL, "give --api-key or --api-key-file, not both");
    if (*k) {
        if (strlen(k) >= cap) return sr_error_set(SR_EINVAL, "--api-key is over %zu bytes", cap - 1);
        snprintf(key, cap, "%s", k);
        return SR_OK;
    }
    if (!*file) return SR_OK;
    FILE *f = fopen(file, "r");
    if (!f) return sr_error_set(SR_EIO, "--api-key-file %s: %s", file, strerror(errno));
    if (!fgets(key, (int)cap, f)) key[0] = 0;
    fclose(f);
    key[strcspn(key, "\r\n")] = 0;
    if (!*key) return sr_error_set(SR_EINVAL, "--api-key-file %s: the first line is empty", file);
    return SR_OK;
}

static int run_coordinator(const sr_config *c, int workers) {
    char lhost[96], chost[96], hhost[96], key[4097];
    int lport, cport = 0, hport = 0;
    int http = strcmp(c->s[SR_CFG_HTTP_LISTEN], "off") != 0;
    char mhost[96];
    int mport = 0, metrics = strcmp(c->s[SR_CFG_METRICS_LISTEN], "off") != 0;
    int rc = sr_addr_parse(c->s[SR_CFG_LISTEN], lhost, sizeof lhost, &lport);
    if (rc == SR_OK && *c->s[SR_CFG_CONTROL]) rc = sr_addr_parse(c->s[SR_CFG_CONTROL], chost, sizeof chost, &cport);
    else snprintf(chost, sizeof chost, "%s", lhost);
    if (rc == SR_OK && http) rc = sr_addr_parse(c->s[SR_CFG_HTTP_LISTEN], hhost, sizeof hhost, &hport);
    if (rc == SR_OK && metrics) rc = sr_addr_parse(c->s[SR_CFG_METRICS_LISTEN], mhost, sizeof mhost, &mport);
    if (rc == SR_OK) rc = api_key(c, key, sizeof key);
    if (rc != SR_OK) return rc;
    if (!*key && (!loopback(lhost) || (http && !loopback(hhost))))
        return sr_error_set(SR_EINVAL, "the %s API would listen on %s, beyond loopback, without a key: give --api-key-file "
                            "FILE (or --api-key KEY) so that clients must send 'Authorization: Bearer KEY', or listen "
                            "on 127.0.0.1", !loopback(lhost) ? "gRPC" : "HTTP", !loopback(lhost) ? lhost : hhost);
    sr_coord_opts o = {
        .model = c->s[SR_CFG_MODEL], .listen_host = lhost, .listen_port = lport, .control_host = chost,
        .control_port = cport, .workers = workers, .kv_budget = (int64_t)c->v[SR_CFG_KV_BUDGET],
        .queue = (int)c->v[SR_CFG_QUEUE], .max_message = (size_t)c->v[SR_CFG_MAX_MESSAGE],
        .max_frame = (size_t)c->v[SR_CFG_MAX_FRAME], .max_context = (int64_t)c->v[SR_CFG_MAX_CONTEXT],
        .max_batch = (int64_t)c->v[SR_CFG_BATCH], .max_tokens = (int32_t)c->v[SR_CFG_MAX_TOKENS],
        .default_tokens = (int32_t)c->v[SR_CFG_DEFAULT_TOKENS], .mode = c->s[SR_CFG_MODE], .heartbeat_s = c->v[SR_CFG_HEARTBEAT],
        .shutdown_grace_s = c->v[SR_CFG_SHUTDOWN_GRACE], .http_host = http ? hhost : NULL, .http_port = hport,
        .metrics_host = metrics ? mhost : NULL, .metrics_port = mport,
        .keep_prompts = (int)c->v[SR_CFG_KEEP_PROMPTS], .api_key = key, .on_listening = coordinator_listening,
        .on_ready = sr_notify_ready, .on_tick = sr_notify_tick, .on_stopping = sr_notify_stopping};
    return sr_coord_run(&o);
}

static int run_worker(const sr_config *c, int worker, int workers, MPI_Comm comm) {
    ctl_addr a;
    int rc = bcast_addr(&a);
    sr_tp *tp = NULL;
    sr_tp_opts to = sr_tp_opts_default();
    to.mpi_comm = &comm;
    if (rc == SR_OK) rc = sr_tp_open(&tp, "mpi", &to);
    if (rc != SR_OK) return rc;
    sr_workerd_opts o = {.model = c->s[SR_CFG_MODEL], .worker = worker, .workers = workers, .tp = tp,
                         .coord_host = a.host, .coord_port = a.port, .n_threads = (int)c->v[SR_CFG_THREADS],
                         .max_batch = (int64_t)c->v[SR_CFG_BATCH], .kv_budget = (int64_t)c->v[SR_CFG_KV_BUDGET],
                         .heartbeat_s = c->v[SR_CFG_HEARTBEAT], .max_frame = (size_t)c->v[SR_CFG_MAX_FRAME],
                         .shutdown_grace_s = c->v[SR_CFG_SHUTDOWN_GRACE], .on_ready = sr_notify_ready,
                         .on_tick = sr_notify_tick};
    rc = sr_workerd_run(&o);
    sr_tp_close(tp);
    return rc;
}

static void on_sighup(int sig) {
    int e = errno;
    sr_log_reopen();
    errno = e;
}

int main(int argc, char **argv) {
    sr_config c;
    /* options first: --help and --print-config need no MPI */
    int parsed = sr_config_parse_args(&c, argc, argv);
    if (parsed == SR_CFG_HELP || parsed == SR_CFG_PRINT) {
        if (parsed == SR_CFG_HELP) sr_config_usage(stdout);
        else sr_config_print(stdout, &c);
        sr_config_free(&c);
        return 0;
    }
    char why[1024];
    snprintf(why, sizeof why, "%s", parsed < 0 ? sr_error_msg() : "");
    int rc = sr_tp_mpi_init(&argc, &argv);
    int rank = 0, size = 1;
    if (rc == SR_OK) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    if (parsed == SR_OK && rc == SR_OK) parsed = sr_log_open(c.s[SR_CFG_LOG_FILE]);
    if (parsed < 0 && !*why) snprintf(why, sizeof why, "%s", sr_error_msg());
    if (parsed < 0 || rc != SR_OK) {
        if (rank == 0) fprintf(stderr, "starringd: %s\n", parsed < 0 ? why : sr_error_msg());
        if (parsed == SR_OK) sr_config_free(&c);
        if (rc == SR_OK) MPI_Finalize();
        return 2;
    }
    sr_log_init(rank == 0 ? "coordinator" : "worker", rank, (int)c.v[SR_CFG_LOG_LEVEL]);
    /* a write to a peer that has gone (a client, or the coordinator at
     * shutdown) must fail with EPIPE on that connection, not end the process */
    signal(SIGPIPE, SIG_IGN);
    /* logrotate's SIGHUP: the reopen is system calls only (open, dup3, close) */
    struct sigaction hup = {.sa_handler = on_sighup, .sa_flags = SA_RESTART};
    sigemptyset(&hup.sa_mask);
    if (sigaction(SIGHUP, &hup, NULL) != 0) SR_WARN("cannot handle SIGHUP (%s): --log-file will not be reopened", strerror(errno));
    /* systemd watches the job through rank 0 (see the top of this file) */
    if (rank != 0) {
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
    }
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
    sr_config_free(&c);
    MPI_Finalize();
    return 0;
}
