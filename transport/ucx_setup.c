/* transport "ucx", start-up (see ucx_setup.h). */
#include "transport/ucx_setup.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "transport/tcp_mesh.h"

#define DEFAULT_OPEN_S 60
#define DEFAULT_IO_S 30
#define DEFAULT_MAX_BUFFERED ((int64_t)1 << 30)
#define ADDR_MAX (1 << 20) /* a worker address longer than this is not one */

static int mpi_exchange(void *data, const void *send, size_t len, void *recv) {
    if (len > (size_t)INT32_MAX) return sr_error_set(SR_ERANGE, "transport ucx: %zu-byte address block over MPI", len);
    int rc = MPI_Allgather(send, (int)len, MPI_BYTE, recv, (int)len, MPI_BYTE, *(MPI_Comm *)data);
    return rc == MPI_SUCCESS ? SR_OK : sr_error_set(SR_ECOMM, "transport ucx: MPI_Allgather of addresses failed");
}

static int pick_s(double v, const char *name, double dflt, double *out) {
    if (v < 0 || v > 86400)
        return sr_error_set(SR_EINVAL, "sr_tp_opts.%s %g is not 0 (default) or up to 86400 seconds", name, v);
    *out = v > 0 ? v : dflt;
    return SR_OK;
}

/* rank, size, key and limits from the options, the environment or MPI */
static int config(const sr_tp_opts *o, sr_tp__ucx_cfg *c) {
    int rc;
    if (sodium_init() < 0) return sr_error_set(SR_ESTATE, "transport ucx: libsodium failed to initialise");
    if (o->key && (o->key_len < 16 || o->key_len > 4096))
        return sr_error_set(SR_EINVAL, "sr_tp_opts.key_len %zu is out of range 16..4096", o->key_len);
    if (o->max_buffered_bytes < 0)
        return sr_error_set(SR_EINVAL, "sr_tp_opts.max_buffered_bytes %lld is negative",
                            (long long)o->max_buffered_bytes);
    c->max_buffered = o->max_buffered_bytes ? o->max_buffered_bytes : DEFAULT_MAX_BUFFERED;
    if ((rc = pick_s(o->timeout_s, "timeout_s", DEFAULT_OPEN_S, &c->open_s)) != SR_OK ||
        (rc = pick_s(o->io_timeout_s, "io_timeout_s", DEFAULT_IO_S, &c->io_timeout_s)) != SR_OK)
        return rc;
    if (o->exchange) {
        c->exchange = o->exchange;
        c->exchange_data = o->exchange_data;
        if (o->key) {
            if (o->size < 1 || o->rank < 0 || o->rank >= o->size)
                return sr_error_set(SR_EINVAL, "transport ucx: sr_tp_opts.rank %d of size %d is out of range 0..size-1",
                                    o->rank, o->size);
            c->rank = o->rank;
            c->size = o->size;
            crypto_hash_sha256(c->key, o->key, (unsigned long long)o->key_len);
            return SR_OK;
        }
        /* the same rank, size and secret settings as tcp's (SR_RANK, SR_TCP_SECRET_FILE, ...) */
        sr_tp__tcp_cfg tc;
        if ((rc = sr_tp__tcp_config(o, &tc)) != SR_OK) return rc;
        c->rank = tc.rank;
        c->size = tc.size;
        if (tc.key) crypto_hash_sha256(c->key, tc.key, (unsigned long long)tc.key_len);
        sr_tp__tcp_config_free(&tc);
        return SR_OK;
    }
    int inited = 0, finalized = 0;
    if (MPI_Initialized(&inited) != MPI_SUCCESS || MPI_Finalized(&finalized) != MPI_SUCCESS || !inited || finalized)
        return sr_error_set(SR_EINVAL,
                            "transport ucx: no way to exchange worker addresses: set sr_tp_opts.exchange (an "
                            "allgather, e.g. through the coordinator) or run under mpirun with MPI initialised");
    c->comm = o->mpi_comm ? *(const MPI_Comm *)o->mpi_comm : MPI_COMM_WORLD;
    c->exchange = mpi_exchange;
    c->exchange_data = &c->comm;
    if (MPI_Comm_rank(c->comm, &c->rank) != MPI_SUCCESS || MPI_Comm_size(c->comm, &c->size) != MPI_SUCCESS)
        return sr_error_set(SR_ECOMM, "transport ucx: cannot read rank and size of the MPI communicator");
    if (o->key) {
        crypto_hash_sha256(c->key, o->key, (unsigned long long)o->key_len);
        return SR_OK;
    }
    /* MPI already trusts every rank it started; a fresh key per open */
    if (c->rank == 0) randombytes_buf(c->key, sizeof c->key);
    if (MPI_Bcast(c->key, sizeof c->key, MPI_BYTE, 0, c->comm) != MPI_SUCCESS)
        return sr_error_set(SR_ECOMM, "transport ucx: MPI_Bcast of the job key failed");
    return SR_OK;
}

static int ucs_fail(ucs_status_t st, const char *what) {
    return sr_error_set(SR_ECOMM, "transport ucx: %s: %s", what, ucs_status_string(st));
}

int sr_tp__ucx_config(const sr_tp_opts *o, sr_tp__ucx_cfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    int rc = config(o, cfg);
    if (rc != SR_OK) sr_tp__ucx_config_free(cfg);
    return rc;
}

void sr_tp__ucx_config_free(sr_tp__ucx_cfg *cfg) { sodium_memzero(cfg->key, sizeof cfg->key); }

int sr_tp__ucx_worker(const sr_tp__ucx_handler *h, int n, void *arg, ucp_context_h *ctx, ucp_worker_h *worker,
                      int *efd) {
    *ctx = NULL;
    *worker = NULL;
    *efd = -1;
    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) return ucs_fail(st, "ucp_config_read");
    ucp_params_t prm;
    memset(&prm, 0, sizeof prm);
    prm.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
    prm.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    prm.name = "starring";
    st = ucp_init(&prm, cfg, ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        *ctx = NULL;
        return ucs_fail(st, "ucp_init");
    }
    ucp_worker_params_t wp;
    memset(&wp, 0, sizeof wp);
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    if ((st = ucp_worker_create(*ctx, &wp, worker)) != UCS_OK) {
        *worker = NULL;
        return ucs_fail(st, "ucp_worker_create");
    }
    for (int i = 0; i < n; i++) {
        ucp_am_handler_param_t hp;
        memset(&hp, 0, sizeof hp);
        hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
        hp.id = h[i].id;
        hp.cb = h[i].cb;
        hp.arg = arg;
        if ((st = ucp_worker_set_am_recv_handler(*worker, &hp)) != UCS_OK)
            return ucs_fail(st, "ucp_worker_set_am_recv_handler");
    }
    if (ucp_worker_get_efd(*worker, efd) != UCS_OK) *efd = -1; /* the progress thread then wakes on its timer */
    return SR_OK;
}

/* The addresses' lengths go first: they differ by rank. */
int sr_tp__ucx_connect(const sr_tp__ucx_cfg *c, ucp_worker_h worker, ucp_ep_h *eps) {
    ucp_address_t *addr = NULL;
    size_t addr_len = 0;
    ucs_status_t st = ucp_worker_get_address(worker, &addr, &addr_len);
    if (st != UCS_OK) return ucs_fail(st, "ucp_worker_get_address");
    uint64_t mine = addr_len, *lens = calloc((size_t)c->size, sizeof *lens);
    char *mine_pad = NULL, *all = NULL;
    int rc = lens ? c->exchange(c->exchange_data, &mine, sizeof mine, lens)
                  : sr_error_set(SR_ENOMEM, "out of memory for %d address lengths", c->size);
    uint64_t max = 0;
    for (int p = 0; rc == SR_OK && p < c->size; p++) {
        if (lens[p] == 0 || lens[p] > ADDR_MAX)
            rc = sr_error_set(SR_EFORMAT, "transport ucx: rank %d's worker address is %llu bytes, allowed 1..%d", p,
                              (unsigned long long)lens[p], ADDR_MAX);
        else if (lens[p] > max)
            max = lens[p];
    }
    if (rc == SR_OK && (!(mine_pad = calloc(1, max)) || !(all = malloc(max * (size_t)c->size))))
        rc = sr_error_set(SR_ENOMEM, "out of memory for %d worker addresses", c->size);
    if (rc == SR_OK) {
        memcpy(mine_pad, addr, addr_len);
        rc = c->exchange(c->exchange_data, mine_pad, max, all);
    }
    ucp_worker_release_address(worker, addr);
    for (int p = 0; rc == SR_OK && p < c->size; p++) {
        if (p == c->rank) continue;
        ucp_ep_params_t ep;
        memset(&ep, 0, sizeof ep);
        /* no UCX peer error handling: see the top of transport/ucx.c */
        ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
        ep.address = (const ucp_address_t *)(all + (size_t)p * max);
        ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
        if ((st = ucp_ep_create(worker, &ep, &eps[p])) != UCS_OK) {
            eps[p] = NULL;
            rc = sr_error_set(SR_ECOMM, "transport ucx: connecting to rank %d: %s", p, ucs_status_string(st));
        }
    }
    free(lens);
    free(mine_pad);
    free(all);
    return rc;
}

