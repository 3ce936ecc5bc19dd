/* workerd: the worker role of starringd. A worker loads the model, joins
 * the coordinator over the control plane, holds the KV of its share of every
 * resident context and runs the coordinator's commands (control.proto):
 * prefill a context, a question's steps, drop.
 *
 * Join: the worker and the coordinator prove the cluster secret to each
 * other (net/join.h) before the worker loads the model and sends its Join.
 *
 * Threads: the thread that calls sr_workerd_run computes (it is the one
 * that may call MPI, and the data plane is MPI under mpirun; without
 * mpirun it opens the data plane, and its address exchange blocks it until
 * the coordinator has every worker's address); the libuv
 * event loop, with the control connection and the heartbeats, runs on a
 * thread of its own and hands commands over through a queue; results go
 * back through another, with uv_async_send to wake the loop.
 *
 * Contexts: sr_model holds one KV cache (m->kv) and sr_cp one context's
 * state, so each context keeps its own sr_cp and its own sr_kv_cache, and
 * the compute thread moves that cache into m->kv for each command on the
 * context and back out after it (between commands m->kv is an empty cache).
 *
 * Questions: on the query worker each question runs sr_gen_run_fed on a
 * thread of its own, and its feed function waits for the compute thread to
 * grant it each step (the Step command, which every worker gets, so that
 * the other workers serve the same step). The question itself is a step of
 * its own; the generated tokens of star and ring contexts go in batched
 * steps: one Step lists every generation that waits for its next token
 * (up to the coordinator's --max-batch-decode), and every worker runs them
 * in one sr_cp_step_batch, one forward pass over all of their contexts;
 * then the query worker grants every generation at once to sample from
 * its row of the logits (each its own copy) and report its token.
 * Full-mode contexts still step one at a time. */
#ifndef SR_DAEMON_WORKERD_H
#define SR_DAEMON_WORKERD_H

#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

typedef struct {
    const char *model;      /* GGUF path */
    /* under mpirun: this worker's rank on the data plane, and how many;
     * -1 and 0: the coordinator gives them at join */
    int worker, workers;
    /* the data plane between the workers (not owned), or NULL: once welcomed
     * open `transport` over the workers, its addresses exchanged through the
     * coordinator and its key derived at join (net/join.h) */
    sr_tp *tp;
    const char *transport;  /* "ucx" or "tcp" */
    const char *data_listen; /* tcp: this worker's HOST:PORT, sent to the others through the coordinator */
    const unsigned char *secret; /* the cluster secret, proved at join */
    size_t secret_len;
    double join_timeout_s;  /* how long the join may take (the model loads after it) */
    const char *coord_host; /* the coordinator's control address */
    int coord_port;
    int n_threads;
    int64_t max_batch;      /* model rows per forward call (ring holds a worker's whole share) */
    int64_t kv_budget;      /* bytes of KV this worker may hold (reported in Join; 0: no limit) */
    /* under mpirun: the last attn_servers workers are attention servers
     * (daemon/attnd.h), which load no model; the others run it, and their
     * star, ring and full contexts run among themselves alone */
    int attn_servers;
    double heartbeat_s;
    size_t max_frame;       /* control frame cap */
    double shutdown_grace_s; /* after SIGTERM, how long to wait for the coordinator to let this worker go */
    /* without mpirun: how long to keep joining again once the coordinator is
     * lost (or asks it to rejoin) before giving up; 0: leave at once */
    double rejoin_timeout_s;
    /* optional, on the loop's thread (daemon/ passes them on to systemd):
     * on_ready once the model is loaded and the Join is on its way, on_tick
     * with every heartbeat */
    void (*on_ready)(const char *status, void *data);
    void (*on_tick)(void *data);
    void *data;
} sr_workerd_opts;

/* Runs until the coordinator lets the workers go (SR_OK) or a fault.
 * Without mpirun, a coordinator that is lost or that sends a Rejoin (it lost
 * another worker) is joined again, with backoff, for up to
 * rejoin_timeout_s: the contexts are dropped (and logged), the data plane
 * reopened, the model kept. A join refused, or a coordinator that fails its
 * proof, ends the run. SIGTERM or SIGINT: the coordinator (which mpirun
 * signals too) drains and lets the workers go; a worker leaves by itself
 * after shutdown_grace_s + 5 s, or at a second signal. */
int sr_workerd_run(const sr_workerd_opts *o);

#endif
