/* metrics: counters and histograms, and their Prometheus text (see metrics.h). */
#include "coordinator/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "net/http.h"

/* seconds: from a fast step of a small model to a long prefill */
static const double bucket_bounds[SR_METRICS_N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                           1,     2.5,  5,     10,   30,  60,   120};

struct sr_metrics {
    uint64_t counter[SR_METRIC_N_COUNTERS];
    sr_metrics_hist hist[SR_METRIC_N_HISTOGRAMS];
    sr_metrics_requests *req;
    size_t n_req, cap_req;
    int workers;
    sr_metrics_worker *worker; /* (workers) filled at each scrape */
    sr_http *http;
    void (*gauges)(sr_metrics_gauges *g, void *data);
    void *data;
};

static const struct {
    const char *name, *help;
} counter_info[SR_METRIC_N_COUNTERS] = {
    {"starring_prompt_tokens_total", "Tokens fed to the model: context prefills and questions."},
    {"starring_generated_tokens_total", "Tokens generated."},
    {"starring_control_received_bytes_total", "Control-plane bytes received from the workers (frames with their length)."},
    {"starring_control_sent_bytes_total", "Control-plane bytes sent to the workers (frames with their length)."},
}, hist_info[SR_METRIC_N_HISTOGRAMS] = {
    {"starring_prefill_seconds", "Prefill time of a context, on its slowest worker."},
    {"starring_decode_seconds", "Decode time of a question, on the query worker."},
    {"starring_time_to_first_token_seconds", "Time from a question's arrival to its first token."},
};

int sr_metrics_new(sr_metrics **out, int workers) {
    *out = NULL;
    if (workers < 0 || workers > 4096)
        return sr_error_set(SR_EINVAL, "metrics: workers %d must be in 0..4096", workers);
    sr_metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->worker = calloc((size_t)workers + 1, sizeof *m->worker))) {
        free(m);
        return sr_error_set(SR_ENOMEM, "out of memory for the metrics");
    }
    m->workers = workers;
    for (int h = 0; h < SR_METRIC_N_HISTOGRAMS; h++) memcpy(m->hist[h].bounds, bucket_bounds, sizeof bucket_bounds);
    *out = m;
    return SR_OK;
}

void sr_metrics_free(sr_metrics *m) {
    if (!m) return;
    sr_metrics_close(m);
    free(m->req);
    free(m->worker);
    free(m);
}

void sr_metrics_request(sr_metrics *m, const char *api, const char *method, int status) {
    if (!m) return;
    if (!method) method = "other";
    for (size_t i = 0; i < m->n_req; i++) {
        sr_metrics_requests *r = &m->req[i];
        if (r->status == status && strcmp(r->api, api) == 0 && strcmp(r->method, method) == 0) {
            r->count++;
            return;
        }
    }
    if (m->n_req == m->cap_req) {
        size_t cap = m->cap_req ? 2 * m->cap_req : 32;
        sr_metrics_requests *r = realloc(m->req, cap * sizeof *r);
        if (!r) return; /* a count lost is better than a request refused */
        m->req = r;
        m->cap_req = cap;
    }
    m->req[m->n_req++] = (sr_metrics_requests){.api = api, .method = method, .status = status, .count = 1};
}

void sr_metrics_add(sr_metrics *m, int counter, int64_t n) {
    if (m && counter >= 0 && counter < SR_METRIC_N_COUNTERS && n > 0) m->counter[counter] += (uint64_t)n;
}

void sr_metrics_observe(sr_metrics *m, int histogram, double seconds) {
    if (!m || histogram < 0 || histogram >= SR_METRIC_N_HISTOGRAMS || !(seconds >= 0)) return;
    sr_metrics_hist *h = &m->hist[histogram];
    int b = 0;
    while (b < SR_METRICS_N_BUCKETS && seconds > h->bounds[b]) b++;
    h->counts[b]++;
    h->sum += seconds;
    h->count++;
}

uint64_t sr_metrics_counter(const sr_metrics *m, int counter) {
    return counter >= 0 && counter < SR_METRIC_N_COUNTERS ? m->counter[counter] : 0;
}

const sr_metrics_hist *sr_metrics_histogram(const sr_metrics *m, int histogram) {
    return histogram >= 0 && histogram < SR_METRIC_N_HISTOGRAMS ? &m->hist[histogram] : NULL;
}

int sr_metrics_stats(const sr_metrics *m, Starring__V1__Stats *s, sr_metrics_stats_buf *b) {
    memset(b, 0, sizeof *b);
    if (!(b->rq = calloc(m->n_req + 1, sizeof *b->rq)) || !(b->rqp = calloc(m->n_req + 1, sizeof *b->rqp))) {
        sr_metrics_stats_done(b);
        return sr_error_set(SR_ENOMEM, "out of memory for the stats");
    }
    for (size_t i = 0; i < m->n_req; i++) {
        starring__v1__request_count__init(&b->rq[i]);
        b->rq[i].api = (char *)m->req[i].api;
        b->rq[i].method = (char *)m->req[i].method;
        b->rq[i].code = m->req[i].status;
        b->rq[i].count = (int64_t)m->req[i].count;
        b->rqp[i] = &b->rq[i];
    }
    s->n_requests = m->n_req;
    s->requests = b->rqp;
    for (int h = 0; h < SR_METRIC_N_HISTOGRAMS; h++) {
        const sr_metrics_hist *mh = &m->hist[h];
        Starring__V1__Histogram *ph = &b->h[h];
        starring__v1__histogram__init(ph);
        int64_t total = 0;
        for (int k = 0; k <= SR_METRICS_N_BUCKETS; k++) {
            if (k < SR_METRICS_N_BUCKETS) b->bounds[h][k] = mh->bounds[k];
            b->counts[h][k] = total += (int64_t)mh->counts[k];
        }
        ph->n_bounds = SR_METRICS_N_BUCKETS;
        ph->bounds = b->bounds[h];
        ph->n_counts = SR_METRICS_N_BUCKETS + 1;
        ph->counts = b->counts[h];
        ph->sum = mh->sum;
        ph->count = (int64_t)mh->count;
    }
    s->prefill_seconds = &b->h[SR_METRIC_PREFILL_SECONDS];
    s->decode_seconds = &b->h[SR_METRIC_DECODE_SECONDS];
    s->time_to_first_token_seconds = &b->h[SR_METRIC_TTFT_SECONDS];
    s->prompt_tokens = (int64_t)m->counter[SR_METRIC_PROMPT_TOKENS];
    s->control_received_bytes = (int64_t)m->counter[SR_METRIC_CONTROL_IN_BYTES];
    s->control_sent_bytes = (int64_t)m->counter[SR_METRIC_CONTROL_OUT_BYTES];
    return SR_OK;
}

void sr_metrics_stats_done(sr_metrics_stats_buf *b) {
    free(b->rq);
    free(b->rqp);
    b->rq = NULL;
    b->rqp = NULL;
}

/* ---------------------------------------------------------------- text */

/* A label value: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\\') fputs("\\\\", f);
        else if (*s == '"') fputs("\\\"", f);
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
}

static void head(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(FILE *f, const char *name, const char *help, const sr_metrics_hist *h) {
    head(f, name, "histogram", help);
    uint64_t cum = 0;
    for (int b = 0; b < SR_METRICS_N_BUCKETS; b++) {
        cum += h->counts[b];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[b], (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, (unsigned long long)h->count, name,
            h->sum, name, (unsigned long long)h->count);
}

int sr_metrics_render(const sr_metrics *m, const sr_metrics_gauges *g, char **out, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return sr_error_set(SR_ENOMEM, "out of memory for the metrics text");
    head(f, "starring_requests_total", "counter", "Requests answered, by API, method (gRPC) or route (HTTP), and status code.");
    for (size_t i = 0; i < m->n_req; i++) {
        fprintf(f, "starring_requests_total{api=\"");
        label(f, m->req[i].api);
        fprintf(f, "\",method=\"");
        label(f, m->req[i].method);
        fprintf(f, "\",code=\"%d\"} %llu\n", m->req[i].status, (unsigned long long)m->req[i].count);
    }
    for (int c = 0; c < SR_METRIC_N_COUNTERS; c++) {
        head(f, counter_info[c].name, "counter", counter_info[c].help);
        fprintf(f, "%s %llu\n", counter_info[c].name, (unsigned long long)m->counter[c]);
    }
    for (int h = 0; h < SR_METRIC_N_HISTOGRAMS; h++) histogram(f, hist_info[h].name, hist_info[h].help, &m->hist[h]);
    if (g) {
        head(f, "starring_queue_depth", "gauge", "Requests admitted and not finished.");
        fprintf(f, "starring_queue_depth %d\n", g->queue_depth);
        head(f, "starring_queue_capacity", "gauge", "Requests admitted at once (--queue).");
        fprintf(f, "starring_queue_capacity %d\n", g->queue_capacity);
        head(f, "starring_contexts", "gauge", "Resident contexts.");
        fprintf(f, "starring_contexts %lld\n", (long long)g->contexts);
        head(f, "starring_workers", "gauge", "Workers of the cluster.");
        fprintf(f, "starring_workers %d\n", g->workers);
        head(f, "starring_worker_up", "gauge", "1 when the worker is joined with the model loaded, else 0.");
        for (int w = 0; w < g->workers; w++) fprintf(f, "starring_worker_up{worker=\"%d\"} %d\n", g->worker[w].worker, !!g->worker[w].up);
        head(f, "starring_kv_bytes", "gauge", "Resident KV bytes on the worker.");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_kv_bytes{worker=\"%d\"} %lld\n", g->worker[w].worker, (long long)g->worker[w].kv_bytes);
        head(f, "starring_kv_budget_bytes", "gauge", "KV bytes the worker may hold (--kv-budget); 0: no limit.");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_kv_budget_bytes{worker=\"%d\"} %lld\n", g->worker[w].worker,
                    (long long)g->worker[w].kv_budget_bytes);
        head(f, "starring_data_plane_sent_bytes_total", "counter",
             "Data-plane bytes (KV blocks, queries, partial outputs) the worker sent to other workers, as of its last heartbeat.");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_data_plane_sent_bytes_total{worker=\"%d\"} %lld\n", g->worker[w].worker,
                    (long long)g->worker[w].data_sent_bytes);
        head(f, "starring_data_plane_received_bytes_total", "counter",
             "Data-plane bytes the worker received from other workers, as of its last heartbeat.");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_data_plane_received_bytes_total{worker=\"%d\"} %lld\n", g->worker[w].worker,
                    (long long)g->worker[w].data_received_bytes);
        head(f, "starring_worker_role", "gauge",
             "1 for the worker's role: model (loads the weights) or attn (an attention server, --attn-servers).");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_worker_role{worker=\"%d\",role=\"%s\"} 1\n", g->worker[w].worker,
                    g->worker[w].attn ? "attn" : "model");
        head(f, "starring_attention_busy_seconds_total", "counter",
             "Seconds an attention server spent computing attention, as of its last heartbeat (0 on model workers).");
        for (int w = 0; w < g->workers; w++)
            fprintf(f, "starring_attention_busy_seconds_total{worker=\"%d\"} %.6f\n", g->worker[w].worker,
                    g->worker[w].busy_s);
    }
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return sr_error_set(SR_ENOMEM, "out of memory for the metrics text");
    }
    *out = buf;
    *len = n;
    return SR_OK;
}

/* -------------------------------------------------------------- server */

static void on_metrics(sr_http_req *rq) {
    sr_metrics *m = sr_http_data(sr_http_req_server(rq));
    memset(m->worker, 0, sizeof *m->worker * (size_t)m->workers);
    sr_metrics_gauges g = {.workers = m->workers, .worker = m->worker};
    if (m->gauges) m->gauges(&g, m->data);
    char *text;
    size_t len;
    if (sr_metrics_render(m, &g, &text, &len) != SR_OK) {
        const char *msg = sr_error_msg();
        if (sr_http_respond(rq, 500, "text/plain", msg, strlen(msg)) != SR_OK) SR_WARN("metrics: %s", sr_error_msg());
        return;
    }
    if (sr_http_respond(rq, 200, "text/plain; version=0.0.4; charset=utf-8", text, len) != SR_OK)
        SR_WARN("metrics: %s", sr_error_msg());
    free(text);
}

static const sr_http_route routes[] = {{"GET", "/metrics", on_metrics}};

int sr_metrics_serve(sr_metrics *m, uv_loop_t *loop, const char *host, int port,
                     void (*gauges)(sr_metrics_gauges *g, void *data), void *data) {
    if (m->http) return sr_error_set(SR_ESTATE, "the metrics server is started already");
    m->gauges = gauges;
    m->data = data;
    /* a scrape is one small GET: no body, few connections */
    sr_http_opts ho = {.max_body = 1024, .max_conns = 16, .timeout_s = 10};
    int rc = sr_http_open(&m->http, loop, host, port, routes, 1, &ho, m);
    if (rc != SR_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", sr_error_msg());
        return sr_error_set(rc, "--metrics-listen %s:%d: %s", host, port, why);
    }
    return SR_OK;
}

int sr_metrics_port(const sr_metrics *m) { return m->http ? sr_http_port(m->http) : 0; }

void sr_metrics_close(sr_metrics *m) {
    if (!m || !m->http) return;
    sr_http_close(m->http);
    m->http = NULL;
}
