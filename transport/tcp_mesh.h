/* transport "tcp", start-up: the job's settings from sr_tp_opts and the
 * environment, and the full mesh of authenticated connections (the higher
 * rank of each pair dials, the lower one listens on its own endpoint). */
#ifndef SR_TRANSPORT_TCP_MESH_H
#define SR_TRANSPORT_TCP_MESH_H

#include <stddef.h>
#include <stdint.h>

#include "transport/tcp_wire.h"
#include "transport/transport.h"

typedef struct {
    char host[256];
    char port[16];
} sr_tp__endpoint;

typedef struct {
    int rank, size;
    sr_tp__endpoint *ep; /* size entries, in rank order */
    unsigned char *key;  /* the job secret (NULL for a job of one rank) */
    size_t key_len;
    char job_id[SR_TP__JOB_ID_MAX + 1];
    double open_timeout_s, handshake_timeout_s, io_timeout_s;
    int64_t max_msg, max_buffered;
} sr_tp__tcp_cfg;

/* Resolves every setting (see sr_tp_opts in transport.h) and reads the
 * secret; the message names the option or variable at fault. */
int sr_tp__tcp_config(const sr_tp_opts *o, sr_tp__tcp_cfg *cfg);
void sr_tp__tcp_config_free(sr_tp__tcp_cfg *cfg);

/* Connects to every other rank: fds[p] is the non-blocking socket to rank p
 * (fds[rank] = -1). Handshakes run concurrently, each under its own
 * deadline; refused connections are logged and do not hold up the others. */
int sr_tp__tcp_mesh(const sr_tp__tcp_cfg *cfg, int *fds);

#endif
