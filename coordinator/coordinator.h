/* coordinator: the coordinator role of starringd. It holds no KV and no
 * model weights: it opens the GGUF for the tokenizer and the model's shape
 * only, serves the client API (proto/starring/v1/starring.proto and the
 * standard grpc.health.v1.Health) over gRPC, keeps the table of resident
 * contexts, places and admits them under the per-worker KV budget (evicting
 * the least recently used), and drives the workers over the control plane
 * (proto/starring/v1/control.proto); the KV stays on the workers.
 *
 * Groups: each context is placed on a group of the workers that are up
 * (coordinator/placement.h) over the newest data plane (a Plane the
 * coordinator sends to every worker up, once --workers have joined and
 * again whenever one joins later); only its group gets its commands, in
 * the coordinator's one order, so any two workers see the commands they
 * share in the same order. A lost worker loses the contexts placed on it;
 * the others keep serving, and so does the cluster while a worker is up.
 *
 * Scheduling: a question runs step by step; the coordinator sends the next
 * step of a question as soon as its last token is back, so questions over
 * different contexts interleave token by token at the workers. Questions
 * over one context take turns (they share the context's runner). A prefill
 * is one command that the workers run in chunks, running the steps that
 * came in the meantime between two chunks, so a question waits at most one
 * chunk; the query worker reports progress per chunk (forwarded as
 * Progress events), and a client gone during a prefill sends every worker
 * a PrefillCancel, which stops it at the next chunk. All of it runs on the
 * event loop's thread but tokenizing, which runs on libuv's thread pool. */
#ifndef SR_COORDINATOR_COORDINATOR_H
#define SR_COORDINATOR_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *model;        /* GGUF path (tokenizer and shape only) */
    const char *listen_host;  /* the client API */
    int listen_port;
    const char *control_host; /* the control plane */
    int control_port;         /* 0: any */
    int workers;              /* must join before the first start; later ones take a lost one's place */
    int context_workers;      /* a new context's workers, of those up, unless it asks; 0: all */
    int attn_servers;         /* of the workers, the last attn_servers are attention servers (mode cad) */
    int64_t kv_budget;        /* bytes of KV per worker; 0: no limit */
    int queue;                /* requests admitted at once */
    size_t max_message;       /* gRPC request message bytes */
    size_t max_frame;         /* control frame bytes */
    int max_conns;            /* client connections at once, per client port */
    double client_timeout_s;  /* a client's time to its first request, and to send a request whole */
    double idle_timeout_s;    /* a client connection with nothing in progress is closed after */
    int64_t max_context;      /* tokens of a context */
    int64_t max_batch;        /* the workers' model rows (ring holds a worker's share in one batch) */
    int max_batch_decode;     /* generations stepped together in one decode step (<= max_batch); 0: 16 */
    int32_t max_tokens;       /* most tokens a question may ask for */
    int32_t default_tokens;   /* tokens when a question does not say */
    const char *mode;         /* default mode */
    double heartbeat_s;       /* the workers' interval; one missed for 10 of them is a lost worker */
    double shutdown_grace_s;  /* after SIGTERM, how long running requests may take before they are cancelled */
    const char *http_host;    /* the OpenAI-compatible HTTP API; NULL: off */
    int http_port;
    const char *metrics_host; /* Prometheus /metrics; NULL: off */
    int metrics_port;
    int keep_prompts;         /* HTTP prompts kept resident for reuse (least recently used go first) */
    const char *api_key;      /* NULL or "": none; else both APIs need "Bearer KEY" */
    const unsigned char *secret; /* the cluster secret, which every worker proves at join (net/join.h) */
    size_t secret_len;
    double join_timeout_s;    /* a connection that has not proved the secret by then is dropped */
    int max_pending;          /* control connections at most that have not proved it yet; more are refused */
    /* called once the control port listens (main broadcasts it to the workers); may be NULL */
    int (*on_listening)(const char *host, int port, void *data);
    /* optional, on the loop's thread (daemon/ passes them on to systemd):
     * on_ready the first time health is SERVING, on_tick every second
     * while the loop turns, on_stopping when SIGTERM or SIGINT arrives */
    void (*on_ready)(const char *status, void *data);
    void (*on_tick)(void *data);
    void (*on_stopping)(const char *status, void *data);
    void *data;
} sr_coord_opts;

/* Runs until SIGINT or SIGTERM (SR_OK) or a fault. On the first signal new
 * requests get UNAVAILABLE and health is NOT_SERVING; the loop ends once
 * the running ones are done, or after shutdown_grace_s, when they are
 * cancelled (UNAVAILABLE); a second signal ends it at once. */
int sr_coord_run(const sr_coord_opts *o);

#endif
