/* attnd: the attention-server role of a starringd worker (--attn-servers K
 * under mpirun: the last K worker ranks). An attention server loads no
 * weights: it serves the model workers' cad contexts over the data plane
 * (sr_cad_serve_hooked, worker/cad.h), keeping each context's KV until the
 * query worker drops it, and tells the coordinator what it holds: a
 * Prefilled frame for each context prefilled (its KV here), a Dropped for
 * each dropped, and its figures in every heartbeat (sr_attnd_read). The
 * coordinator sends it no context commands: the query worker's data-plane
 * commands carry everything. */
#ifndef SR_DAEMON_ATTND_H
#define SR_DAEMON_ATTND_H

#include <pthread.h>
#include <stdint.h>

#include "net/frame.h"
#include "transport/transport.h"
#include "worker/cad.h"

/* The data-plane tags of the daemon's cad contexts (SR_CAD_TAGS from it):
 * the model workers' own traffic, in their group, is between other ranks. */
enum { SR_ATTND_TAG = 0 };

/* The server's figures, written by the serving thread and read by the
 * event loop's heartbeat. */
typedef struct {
    pthread_mutex_t mu;
    sr_cad_server_stats st;
} sr_attnd_live;

void sr_attnd_live_init(sr_attnd_live *l);
void sr_attnd_live_free(sr_attnd_live *l);
void sr_attnd_read(sr_attnd_live *l, sr_cad_server_stats *out);

/* Queues a frame for the coordinator (any thread). */
typedef void (*sr_attnd_send_fn)(void *data, const sr_frame *f);

/* Serves on tp (whose last n_servers ranks serve; this rank is one) until
 * the query worker tells the servers to stop (SR_OK) or the data plane
 * fails. kv_budget: bytes of KV this server may hold (0: no limit). */
int sr_attnd_serve(sr_tp *tp, int n_servers, int n_threads, int64_t kv_budget, sr_attnd_send_fn send, void *data,
                   sr_attnd_live *live);

#endif
