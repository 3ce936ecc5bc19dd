/* transport "ucx", start-up: the job's settings from sr_tp_opts, the
 * environment or MPI; UCX's context and worker; the worker addresses
 * exchanged and an endpoint to every peer. The handshake that follows, and
 * everything after it, is ucx.c's. */
#ifndef SR_TRANSPORT_UCX_SETUP_H
#define SR_TRANSPORT_UCX_SETUP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <ucp/api/ucp.h>

#include "transport/transport.h"

#define SR_TP__UCX_KEY_BYTES 32 /* SHA-256 of the job key */

typedef struct {
    int rank, size;
    unsigned char key[SR_TP__UCX_KEY_BYTES];
    double open_s, io_timeout_s;
    int64_t max_buffered;
    int (*exchange)(void *data, const void *send, size_t len, void *recv);
    void *exchange_data;
    MPI_Comm comm; /* when the exchange is over MPI, its data points here */
} sr_tp__ucx_cfg;

/* Resolves every setting (see sr_tp_opts in transport.h); the message names
 * the option at fault. The cfg must not move before sr_tp__ucx_connect. */
int sr_tp__ucx_config(const sr_tp_opts *o, sr_tp__ucx_cfg *cfg);
void sr_tp__ucx_config_free(sr_tp__ucx_cfg *cfg);

typedef struct {
    unsigned id;
    ucp_am_recv_callback_t cb;
} sr_tp__ucx_handler;

/* A context and a worker (UCS_THREAD_MODE_SERIALIZED: the caller locks)
 * with n active-message handlers, each given arg; *efd is the worker's event
 * fd, or -1 without one. On failure, what was made is left in *ctx and
 * *worker (else NULL) for the caller to destroy. */
int sr_tp__ucx_worker(const sr_tp__ucx_handler *h, int n, void *arg, ucp_context_h *ctx, ucp_worker_h *worker,
                      int *efd);

/* Exchanges the worker addresses (collective) and connects eps[p] to every
 * rank p but this one (eps[rank] stays NULL; on failure some may be set). */
int sr_tp__ucx_connect(const sr_tp__ucx_cfg *cfg, ucp_worker_h worker, ucp_ep_h *eps);

#endif
