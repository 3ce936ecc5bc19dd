/* metrics: the coordinator's figures (counters, histograms with fixed
 * bucket boundaries) and their rendering in the Prometheus text exposition
 * format (version 0.0.4), served on their own port (--metrics-listen) at
 * GET /metrics.
 *
 * Everything is updated and read on the coordinator's event-loop thread
 * (the gRPC and HTTP servers, the control connections and the metrics
 * server all run there), so nothing is locked. The figures that are a
 * state rather than a count (queue depth, contexts, KV bytes, workers up)
 * are not kept here: the coordinator fills an sr_metrics_gauges at each
 * scrape. No prompt and no token's text is ever recorded: only counts,
 * durations, status codes and the fixed names of methods and routes. */
#ifndef SR_COORDINATOR_METRICS_H
#define SR_COORDINATOR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "starring/v1/starring.pb-c.h"

typedef struct sr_metrics sr_metrics;

/* counters */
enum {
    SR_METRIC_PROMPT_TOKENS = 0,   /* tokens fed to the model: prefills and questions */
    SR_METRIC_GENERATED_TOKENS,    /* tokens answered */
    SR_METRIC_CONTROL_IN_BYTES,    /* control frames from the workers, with their 4-byte length */
    SR_METRIC_CONTROL_OUT_BYTES,   /* control frames to the workers */
    SR_METRIC_N_COUNTERS
};

/* histograms (seconds) */
enum {
    SR_METRIC_PREFILL_SECONDS = 0, /* a context's prefill, on its slowest worker */
    SR_METRIC_DECODE_SECONDS,      /* a question's decode, on the query worker */
    SR_METRIC_TTFT_SECONDS,        /* a question's arrival to its first token */
    SR_METRIC_N_HISTOGRAMS
};

#define SR_METRICS_N_BUCKETS 14 /* the finite boundaries; +Inf is implicit */

typedef struct {
    double bounds[SR_METRICS_N_BUCKETS]; /* upper bounds, increasing */
    uint64_t counts[SR_METRICS_N_BUCKETS + 1]; /* per bucket, not cumulative; the last: over every bound */
    double sum;
    uint64_t count;
} sr_metrics_hist;

typedef struct {
    const char *api;    /* "grpc" or "http" */
    const char *method; /* the gRPC method path or the HTTP route; "other" for an unknown one */
    int status;         /* the gRPC status code or the HTTP status */
    uint64_t count;
} sr_metrics_requests;

typedef struct {
    int32_t worker;
    int up;             /* joined with the model loaded, and not lost */
    int64_t kv_bytes;   /* resident KV */
    int64_t kv_budget_bytes; /* 0: no limit */
    int64_t data_sent_bytes, data_received_bytes; /* the worker's data plane, as its last heartbeat said */
    int attn;           /* an attention server (starringd --attn-servers) */
    double busy_s;      /* attention server: seconds computing attention, as its last heartbeat said */
} sr_metrics_worker;

/* The state at a scrape, filled by the coordinator (zeroed before, but
 * workers and worker, which are set: the callback fills each worker). */
typedef struct {
    int32_t queue_depth, queue_capacity;
    int64_t contexts;   /* resident (not the ephemeral ones of a prompt) */
    int32_t workers;
    sr_metrics_worker *worker; /* (workers) */
} sr_metrics_gauges;

/* For a cluster of `workers` workers (0..4096). */
int sr_metrics_new(sr_metrics **out, int workers);
/* NULL is fine. Closes the server first if one was started. */
void sr_metrics_free(sr_metrics *m);

/* One answered request. method must be a string that outlives m (a method
 * table's or route table's path) or NULL ("other"). */
void sr_metrics_request(sr_metrics *m, const char *api, const char *method, int status);
void sr_metrics_add(sr_metrics *m, int counter, int64_t n);
void sr_metrics_observe(sr_metrics *m, int histogram, double seconds);

uint64_t sr_metrics_counter(const sr_metrics *m, int counter);
const sr_metrics_hist *sr_metrics_histogram(const sr_metrics *m, int histogram);

/* What sr_metrics_stats points a Stats message at. */
typedef struct {
    Starring__V1__RequestCount *rq, **rqp; /* (requests) */
    Starring__V1__Histogram h[SR_METRIC_N_HISTOGRAMS];
    double bounds[SR_METRIC_N_HISTOGRAMS][SR_METRICS_N_BUCKETS];
    int64_t counts[SR_METRIC_N_HISTOGRAMS][SR_METRICS_N_BUCKETS + 1]; /* cumulative, the last: +Inf */
} sr_metrics_stats_buf;

/* Sets the metrics' fields of a GetStats answer (prompt_tokens, control
 * bytes, requests, the histograms), pointing into b, which must outlive
 * the packing of s; sr_metrics_stats_done(b) after. */
int sr_metrics_stats(const sr_metrics *m, Starring__V1__Stats *s, sr_metrics_stats_buf *b);
void sr_metrics_stats_done(sr_metrics_stats_buf *b);

/* The text exposition (malloc'ed, NUL-terminated, *len bytes). */
int sr_metrics_render(const sr_metrics *m, const sr_metrics_gauges *g, char **out, size_t *len);

/* Serves GET /metrics on host:port (port 0: any; sr_metrics_port tells
 * which); gauges is called on the loop's thread at each scrape. */
int sr_metrics_serve(sr_metrics *m, uv_loop_t *loop, const char *host, int port,
                     void (*gauges)(sr_metrics_gauges *g, void *data), void *data);
int sr_metrics_port(const sr_metrics *m);
/* Stops the server (the memory goes once the loop has run the close callbacks). */
void sr_metrics_close(sr_metrics *m);

#endif
