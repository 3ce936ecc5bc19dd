/* starringd: the daemon. Under mpirun rank 0 is the coordinator and ranks
 * 1..N-1 are the workers:
 *
 *   mpirun -np N build/starringd --model FILE --listen 127.0.0.1:7070
 *
 * With --attn-servers K the last K of the N-1 workers are attention
 * servers (daemon/attnd.h): they load no weights and run the core attention
 * of mode cad contexts, whose KV they keep; the other workers run the model.
 *
 * The workers get a communicator of their own for the data plane (the mpi
 * transport, or ucx over it), and learn the coordinator's control address
 * and a cluster secret drawn for the run from rank 0 (MPI_Bcast);
 * everything else goes over the control plane. Without mpirun each process
 * has one role, and MPI is never initialised:
 *
 *   starringd --role coordinator --cluster-listen HOST:PORT --cluster-secret-file F --workers N --model FILE
 *   starringd --role worker --join HOST:PORT --cluster-secret-file F --model FILE
 *
 * Workers prove the secret at join, get their index, and open the ucx data
 * plane with the addresses the coordinator gathers (daemon/workerd.c).
 * Options come from one table (daemon/config.c): flags, --config FILE,
 * --help and --print-config.
 *
 * Under systemd (NOTIFY_SOCKET set) rank 0 alone talks to it: READY=1 once
 * health is SERVING (every worker has joined), WATCHDOG=1 from its event
 * loop; the coordinator loses a worker whose loop stops (heartbeats), so
 * one watchdog covers the job. */
#include <errno.h>
#include <mpi.h>
#include <sodium.h>
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
#include "net/join.h"
#include "transport/transport.h"

enum { ROLE_MPIRUN = 0, ROLE_COORDINATOR = 1, ROLE_WORKER = 2 };
enum { TP_AUTO = 0, TP_MPI = 1, TP_UCX = 2, TP_TCP = 3 };

/* The control address and the run's cluster secret, from rank 0 to every
 * rank (MPI trusts the ranks it started). */
typedef struct {
    char host[96];
    int port;
    unsigned char secret[SR_TP_SECRET_BYTES];
} ctl_addr;

static ctl_addr mpirun_addr;

static int bcast_addr(ctl_addr *a) {
    SR_MPI_CHECK(MPI_Bcast(a, (int)sizeof *a, MPI_BYTE, 0, MPI_COMM_WORLD));
    return SR_OK;
}

static int coordinator_listening(const char *host, int port, void *data) {
    mpirun_addr.port = port;
    snprintf(mpirun_addr.host, sizeof mpirun_addr.host, "%s", strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host);
    return bcast_addr(&mpirun_addr);
}

/* The secret of roles coordinator and worker, from --cluster-secret-file. */
static int cluster_secret(const sr_config *c, unsigned char secret[SR_TP_SECRET_BYTES]) {
    const char *file = c->s[SR_CFG_CLUSTER_SECRET_FILE];
    if (!*file)
        return sr_error_set(SR_EINVAL, "--role %s needs --cluster-secret-file FILE, the same file on every node (make "
                            "one with: head -c 32 /dev/urandom >FILE; chmod 600 FILE)", c->s[SR_CFG_ROLE]);
    return sr_tp_secret_read(file, "--cluster-secret-file", secret);
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

static int run_coordinator(const sr_config *c, int workers, const unsigned char *secret) {
    char lhost[96], chost[96], hhost[96], key[4097];
    int lport, cport = 0, hport = 0;
    int http = strcmp(c->s[SR_CFG_HTTP_LISTEN], "off") != 0, role = (int)c->v[SR_CFG_ROLE];
    /* without mpirun the workers must know where to join */
    const char *control = *c->s[SR_CFG_CLUSTER_LISTEN] ? c->s[SR_CFG_CLUSTER_LISTEN] : c->s[SR_CFG_CONTROL];
    if (role == ROLE_COORDINATOR && !*control)
        return sr_error_set(SR_EINVAL, "--role coordinator needs --cluster-listen HOST:PORT, where the workers --join");
    char mhost[96];
    int mport = 0, metrics = strcmp(c->s[SR_CFG_METRICS_LISTEN], "off") != 0;
    int rc = sr_addr_parse(c->s[SR_CFG_LISTEN], lhost, sizeof lhost, &lport);
    if (rc == SR_OK && *control) rc = sr_addr_parse(control, chost, sizeof chost, &cport);
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
        .max_conns = (int)c->v[SR_CFG_MAX_CONNECTIONS], .client_timeout_s = c->v[SR_CFG_CLIENT_TIMEOUT],
        .idle_timeout_s = c->v[SR_CFG_IDLE_TIMEOUT],
        .max_batch = (int64_t)c->v[SR_CFG_BATCH], .max_batch_decode = (int)c->v[SR_CFG_MAX_BATCH_DECODE],
        .context_workers = (int)c->v[SR_CFG_CONTEXT_WORKERS],
        .max_tokens = (int32_t)c->v[SR_CFG_MAX_TOKENS],
        .default_tokens = (int32_t)c->v[SR_CFG_DEFAULT_TOKENS], .mode = c->s[SR_CFG_MODE], .heartbeat_s = c->v[SR_CFG_HEARTBEAT],
        .shutdown_grace_s = c->v[SR_CFG_SHUTDOWN_GRACE], .http_host = http ? hhost : NULL, .http_port = hport,
        .metrics_host = metrics ? mhost : NULL, .metrics_port = mport,
        .keep_prompts = (int)c->v[SR_CFG_KEEP_PROMPTS], .api_key = key, .secret = secret,
        .secret_len = SR_TP_SECRET_BYTES, .join_timeout_s = c->v[SR_CFG_JOIN_TIMEOUT],
        .max_pending = (int)c->v[SR_CFG_CLUSTER_MAX_PENDING], .attn_servers = (int)c->v[SR_CFG_ATTN_SERVERS],
        .on_listening = role == ROLE_MPIRUN ? coordinator_listening : NULL,
        .on_ready = sr_notify_ready, .on_tick = sr_notify_tick, .on_stopping = sr_notify_stopping};
    return sr_coord_run(&o);
}

/* A worker: under mpirun (comm its workers' communicator) with the data
 * plane opened here; with --role worker (secret given) the coordinator at
 * --join gives its index, and the worker opens ucx itself. */
static int run_worker(const sr_config *c, int worker, int workers, MPI_Comm comm, const unsigned char *secret) {
    ctl_addr a;
    int rc = SR_OK, tpk = (int)c->v[SR_CFG_TRANSPORT];
    sr_tp *tp = NULL;
    if (secret) {
        if (!*c->s[SR_CFG_JOIN]) return sr_error_set(SR_EINVAL, "--role worker needs --join HOST:PORT, the coordinator's --cluster-listen");
        if (tpk == TP_MPI) return sr_error_set(SR_EINVAL, "--transport mpi needs mpirun; --role worker takes auto, ucx or tcp");
        if (tpk == TP_TCP && !*c->s[SR_CFG_DATA_LISTEN])
            return sr_error_set(SR_EINVAL, "--transport tcp needs --data-listen HOST:PORT, where the other workers reach this one");
        rc = sr_addr_parse(c->s[SR_CFG_JOIN], a.host, sizeof a.host, &a.port);
        memcpy(a.secret, secret, sizeof a.secret);
    } else {
        if (tpk == TP_TCP) return sr_error_set(SR_EINVAL, "--transport tcp is for --role worker; under mpirun use mpi or ucx");
        rc = bcast_addr(&a);
        sr_tp_opts to = sr_tp_opts_default();
        to.mpi_comm = &comm;
        if (rc == SR_OK) rc = sr_tp_open(&tp, tpk == TP_UCX ? "ucx" : "mpi", &to);
    }
    if (rc != SR_OK) return rc;
    sr_workerd_opts o = {.model = c->s[SR_CFG_MODEL], .worker = worker, .workers = workers, .tp = tp, .transport = tpk == TP_TCP ? "tcp" : "ucx",
                         .data_listen = c->s[SR_CFG_DATA_LISTEN],
                         .secret = a.secret, .secret_len = sizeof a.secret, .join_timeout_s = c->v[SR_CFG_JOIN_TIMEOUT],
                         .coord_host = a.host, .coord_port = a.port, .n_threads = (int)c->v[SR_CFG_THREADS],
                         .max_batch = (int64_t)c->v[SR_CFG_BATCH], .kv_budget = (int64_t)c->v[SR_CFG_KV_BUDGET],
                         .attn_servers = (int)c->v[SR_CFG_ATTN_SERVERS],
                         .heartbeat_s = c->v[SR_CFG_HEARTBEAT], .max_frame = (size_t)c->v[SR_CFG_MAX_FRAME],
                         .shutdown_grace_s = c->v[SR_CFG_SHUTDOWN_GRACE], .rejoin_timeout_s = c->v[SR_CFG_REJOIN_TIMEOUT],
                         .on_ready = sr_notify_ready, .on_tick = sr_notify_tick};
    rc = sr_workerd_run(&o);
    sr_tp_close(tp);
    sodium_memzero(a.secret, sizeof a.secret);
    return rc;
}

/* --attn-servers and --mode cad, alike on every rank: workers (0 without
 * mpirun) is how many worker ranks the job has. */
static int check_cad(const sr_config *c, int workers) {
    int k = (int)c->v[SR_CFG_ATTN_SERVERS];
    if (k > 0 && workers == 0)
        return sr_error_set(SR_EINVAL, "--attn-servers %d: attention servers run under mpirun for now (the last K "
                            "worker ranks); --role %s takes 0", k, c->s[SR_CFG_ROLE]);
    if (k > 0 && k >= workers)
        return sr_error_set(SR_EINVAL, "--attn-servers: %d, allowed 0..%d (mpirun -np %d starts %d workers, and at least "
                            "one must run the model)", k, workers - 1, workers + 1, workers);
    if (k == 0 && strcmp(c->s[SR_CFG_MODE], "cad") == 0)
        return sr_error_set(SR_EINVAL, "--mode cad needs attention servers: start with mpirun and --attn-servers K (the "
                            "last K worker ranks serve the core attention)");
    return SR_OK;
}

static void on_sighup(int sig) {
    int e = errno;
    sr_log_reopen();
    errno = e;
}

static void signals(void) {
    /* a write to a peer that has gone (a client, or the coordinator at
     * shutdown) must fail with EPIPE on that connection, not end the process */
    signal(SIGPIPE, SIG_IGN);
    /* logrotate's SIGHUP: the reopen is system calls only (open, dup3, close) */
    struct sigaction hup = {.sa_handler = on_sighup, .sa_flags = SA_RESTART};
    sigemptyset(&hup.sa_mask);
    if (sigaction(SIGHUP, &hup, NULL) != 0) SR_WARN("cannot handle SIGHUP (%s): --log-file will not be reopened", strerror(errno));
}

/* --role coordinator or worker: one process, one role, no MPI. */
static int run_role(sr_config *c) {
    int role = (int)c->v[SR_CFG_ROLE];
    unsigned char secret[SR_TP_SECRET_BYTES];
    int rc = sr_log_open(c->s[SR_CFG_LOG_FILE]);
    if (rc == SR_OK) rc = check_cad(c, 0);
    if (rc == SR_OK) rc = cluster_secret(c, secret);
    if (rc != SR_OK) {
        fprintf(stderr, "starringd: %s\n", sr_error_msg());
        sr_config_free(c);
        return 2;
    }
    /* a worker's rank in the log is its index, known once it has joined */
    sr_log_init(role == ROLE_COORDINATOR ? "coordinator" : "worker", role == ROLE_COORDINATOR ? 0 : -1,
                (int)c->v[SR_CFG_LOG_LEVEL]);
    signals();
    rc = role == ROLE_COORDINATOR ? run_coordinator(c, (int)c->v[SR_CFG_WORKERS], secret)
                                  : run_worker(c, -1, 0, MPI_COMM_NULL, secret);
    sodium_memzero(secret, sizeof secret);
    if (rc != SR_OK) SR_ERROR("%s", sr_error_msg());
    sr_config_free(c);
    return rc == SR_OK ? 0 : 1;
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
    if (parsed == SR_CFG_RUN && c.v[SR_CFG_ROLE] != ROLE_MPIRUN) return run_role(&c);
    /* a bad command line outside mpirun (a role's, say) starts no MPI just to say so */
    if (parsed < 0 && !getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE")) {
        fprintf(stderr, "starringd: %s\n", sr_error_msg());
        return 2;
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
    signals();
    /* systemd watches the job through rank 0 (see the top of this file) */
    if (rank != 0) {
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
    }
    MPI_Comm workers = MPI_COMM_NULL;
    if (MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? MPI_UNDEFINED : 1, rank, &workers) != MPI_SUCCESS)
        rc = sr_error_set(SR_ECOMM, "MPI_Comm_split failed");
    /* the run's cluster secret: 32 fresh random bytes, broadcast with the address */
    if (rc == SR_OK) rc = check_cad(&c, size - 1);
    if (rc == SR_OK && rank == 0) rc = sr_join_nonce(mpirun_addr.secret);
    if (rc == SR_OK)
        rc = rank == 0 ? run_coordinator(&c, size - 1, mpirun_addr.secret) : run_worker(&c, rank - 1, size - 1, workers, NULL);
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
