/* cad_plan: chunks, their loads, two assignments and the search over
 * chunk sizes (see cad_plan.h). */
#include "worker/cad_plan.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

/* sum of min(t, nk) over t = 1..x (0 for x <= 0) */
static double ramp(double x, double nk) {
    if (x <= 0) return 0;
    if (x <= nk) return x * (x + 1) / 2;
    return nk * (nk + 1) / 2 + (x - nk) * nk;
}

double sr_cad_pairs(int64_t q0, int64_t nq, int64_t k0, int64_t nk) {
    if (nq <= 0 || nk <= 0) return 0;
    /* query p sees min(nk, max(0, p - k0 + 1)) keys */
    double a = (double)(q0 - k0 + 1), b = a + (double)nq - 1;
    return ramp(b, (double)nk) - ramp(a - 1, (double)nk);
}

/* One candidate: chunks at a size, each one's load and server. */
typedef struct {
    int64_t chunk, n;
    sr_cad_chunk *c; /* [n] */
    double *load;    /* [n] FLOPs of the tasks on chunk i's KV */
    int *server;     /* [n] */
    double *flops;   /* [K] */
    int64_t *bytes;  /* [K] */
    double imbalance, bytes_per_flop;
} cand;

static void cand_free(cand *x) {
    free(x->c);
    free(x->load);
    free(x->server);
    free(x->flops);
    free(x->bytes);
    memset(x, 0, sizeof *x);
}

/* Cuts the documents at chunk size `chunk`; SR_ERANGE past the cap. */
static int cut(cand *x, const int64_t *docs, int64_t n_docs, int64_t chunk, int k) {
    int64_t n = 0;
    for (int64_t d = 0; d < n_docs; d++) {
        n += (docs[d] + chunk - 1) / chunk;
        if (n > SR_CAD_PLAN_MAX_CHUNKS)
            return sr_error_set(SR_ERANGE, "cad plan: chunks of %lld tokens cut more than %lld chunks", (long long)chunk,
                                (long long)SR_CAD_PLAN_MAX_CHUNKS);
    }
    x->chunk = chunk;
    x->n = n;
    x->c = malloc(sizeof *x->c * (size_t)n);
    x->load = malloc(sizeof *x->load * (size_t)n);
    x->server = malloc(sizeof *x->server * (size_t)n);
    x->flops = malloc(sizeof *x->flops * (size_t)k);
    x->bytes = malloc(sizeof *x->bytes * (size_t)k);
    if (!x->c || !x->load || !x->server || !x->flops || !x->bytes)
        return sr_error_set(SR_ENOMEM, "cad plan: out of memory for %lld chunks", (long long)n);
    int64_t i = 0;
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t m = (docs[d] + chunk - 1) / chunk;
        for (int64_t c = 0; c < m; c++, i++) {
            int64_t p0 = (int64_t)((__int128)docs[d] * c / m), p1 = (int64_t)((__int128)docs[d] * (c + 1) / m);
            x->c[i] = (sr_cad_chunk){d, p0, p1 - p0, 0};
            /* every query of the document from p0 on sees some of these keys */
            x->load[i] = sr_cad_pairs(p0, docs[d] - p0, p0, p1 - p0);
        }
    }
    return SR_OK;
}

/* FLOPs and bytes of each server under x->server; imbalance and bytes per
 * FLOP. seen: scratch of K flags. */
static void score(cand *x, int k, const sr_cad_cost *cost, char *seen, int *list) {
    memset(x->flops, 0, sizeof *x->flops * (size_t)k);
    memset(x->bytes, 0, sizeof *x->bytes * (size_t)k);
    double total = 0, most = 0, bytes = 0;
    int n_seen = 0;
    for (int64_t i = 0; i < x->n; i++) {
        const sr_cad_chunk *c = &x->c[i];
        if (i == 0 || c->doc != x->c[i - 1].doc) { /* a new document: no server has its chunks yet */
            for (int j = 0; j < n_seen; j++) seen[list[j]] = 0;
            n_seen = 0;
        }
        int s = x->server[i];
        x->flops[s] += x->load[i] * cost->flops_per_pair;
        x->bytes[s] += c->len * cost->kv_row_bytes;
        if (!seen[s]) {
            seen[s] = 1;
            list[n_seen++] = s;
        }
        /* q chunk i has a task on every server holding one of chunks 0..i of its document */
        for (int j = 0; j < n_seen; j++) x->bytes[list[j]] += c->len * (cost->q_row_bytes + cost->out_row_bytes);
    }
    for (int j = 0; j < n_seen; j++) seen[list[j]] = 0;
    for (int s = 0; s < k; s++) {
        total += x->flops[s];
        bytes += (double)x->bytes[s];
        if (x->flops[s] > most) most = x->flops[s];
    }
    x->imbalance = total > 0 ? most / (total / k) : 1.0;
    x->bytes_per_flop = total > 0 ? bytes / total : 0;
}

/* Each server a run of consecutive chunks: chunk i goes to the server whose
 * share of the total load its middle falls in. */
static void assign_contiguous(cand *x, int k) {
    double total = 0, before = 0;
    for (int64_t i = 0; i < x->n; i++) total += x->load[i];
    for (int64_t i = 0; i < x->n; i++) {
        double mid = before + x->load[i] / 2;
        int s = total > 0 ? (int)(mid * k / total) : 0;
        x->server[i] = s < k ? s : k - 1;
        before += x->load[i];
    }
}

typedef struct {
    int64_t a, b; /* chunk indexes; b == -1 for a lone middle chunk */
    double load;
} unit;

static int by_load(const void *pa, const void *pb) {
    const unit *a = pa, *b = pb;
    if (a->load != b->load) return a->load > b->load ? -1 : 1;
    return a->a < b->a ? -1 : a->a > b->a; /* ties in index order, the same on every rank */
}

/* Head-tail pairs of each document, largest first, each on the least
 * loaded server (the lowest index among equals). load: scratch of K. */
static int assign_head_tail(cand *x, int k, double *load) {
    unit *u = malloc(sizeof *u * (size_t)(x->n > 0 ? x->n : 1));
    if (!u) return sr_error_set(SR_ENOMEM, "cad plan: out of memory for %lld chunks", (long long)x->n);
    int64_t nu = 0;
    for (int64_t i = 0; i < x->n;) {
        int64_t m = 0;
        while (i + m < x->n && x->c[i + m].doc == x->c[i].doc) m++;
        for (int64_t c = 0; c < (m + 1) / 2; c++) {
            int64_t a = i + c, b = i + m - 1 - c;
            u[nu++] = (unit){a, b == a ? -1 : b, x->load[a] + (b == a ? 0 : x->load[b])};
        }
        i += m;
    }
    qsort(u, (size_t)nu, sizeof *u, by_load);
    for (int s = 0; s < k; s++) load[s] = 0;
    for (int64_t j = 0; j < nu; j++) {
        int best = 0;
        for (int s = 1; s < k; s++)
            if (load[s] < load[best]) best = s;
        load[best] += u[j].load;
        x->server[u[j].a] = best;
        if (u[j].b >= 0) x->server[u[j].b] = best;
    }
    free(u);
    return SR_OK;
}

static void cand_take(cand *dst, cand *src) {
    cand_free(dst);
    *dst = *src;
    memset(src, 0, sizeof *src);
}

/* A copy of x with the other assignment, scored. */
static int cand_dup(cand *dst, const cand *x, int k) {
    memset(dst, 0, sizeof *dst);
    dst->chunk = x->chunk;
    dst->n = x->n;
    dst->c = malloc(sizeof *dst->c * (size_t)x->n);
    dst->load = malloc(sizeof *dst->load * (size_t)x->n);
    dst->server = malloc(sizeof *dst->server * (size_t)x->n);
    dst->flops = malloc(sizeof *dst->flops * (size_t)k);
    dst->bytes = malloc(sizeof *dst->bytes * (size_t)k);
    if (!dst->c || !dst->load || !dst->server || !dst->flops || !dst->bytes)
        return sr_error_set(SR_ENOMEM, "cad plan: out of memory for %lld chunks", (long long)x->n);
    memcpy(dst->c, x->c, sizeof *dst->c * (size_t)x->n);
    memcpy(dst->load, x->load, sizeof *dst->load * (size_t)x->n);
    return SR_OK;
}

/* Whether a is the better plan: within the bound with fewer bytes per
 * FLOP, else less imbalanced. */
static int better(const cand *a, const cand *b) {
    if (!b->c) return 1;
    int ia = a->imbalance <= SR_CAD_PLAN_BOUND, ib = b->imbalance <= SR_CAD_PLAN_BOUND;
    if (ia != ib) return ia;
    if (ia) return a->bytes_per_flop < b->bytes_per_flop;
    return a->imbalance < b->imbalance;
}

static int check_args(const sr_cad_plan *plan, const int64_t *docs, int64_t n_docs, int64_t chunk, int n_servers,
                      const sr_cad_cost *cost) {
    if (!plan || !cost || (n_docs > 0 && !docs)) return sr_error_set(SR_EINVAL, "sr_cad_plan_build: NULL argument");
    if (n_docs < 1 || n_docs > SR_CAD_PLAN_MAX_CHUNKS)
        return sr_error_set(SR_EINVAL, "cad plan: %lld documents, allowed 1..%lld", (long long)n_docs,
                            (long long)SR_CAD_PLAN_MAX_CHUNKS);
    if (chunk < 1 || chunk > SR_CAD_PLAN_MAX_DOC)
        return sr_error_set(SR_EINVAL, "cad plan: chunk %lld, allowed 1..%lld", (long long)chunk,
                            (long long)SR_CAD_PLAN_MAX_DOC);
    if (n_servers < 1 || n_servers > SR_CAD_PLAN_MAX_CHUNKS)
        return sr_error_set(SR_EINVAL, "cad plan: %d servers, allowed 1..%lld", n_servers,
                            (long long)SR_CAD_PLAN_MAX_CHUNKS);
    for (int64_t d = 0; d < n_docs; d++)
        if (docs[d] < 1 || docs[d] > SR_CAD_PLAN_MAX_DOC)
            return sr_error_set(SR_EINVAL, "cad plan: document %lld has %lld tokens, allowed 1..%lld", (long long)d,
                                (long long)docs[d], (long long)SR_CAD_PLAN_MAX_DOC);
    if (cost->q_row_bytes < 0 || cost->kv_row_bytes < 0 || cost->out_row_bytes < 0 || !(cost->flops_per_pair > 0) ||
        cost->q_row_bytes > SR_CAD_PLAN_MAX_DOC || cost->kv_row_bytes > SR_CAD_PLAN_MAX_DOC ||
        cost->out_row_bytes > SR_CAD_PLAN_MAX_DOC)
        return sr_error_set(SR_EINVAL, "cad plan: row bytes %lld, %lld, %lld must be in 0..%lld and FLOPs per pair "
                            "%g above 0", (long long)cost->q_row_bytes, (long long)cost->kv_row_bytes,
                            (long long)cost->out_row_bytes, (long long)SR_CAD_PLAN_MAX_DOC, cost->flops_per_pair);
    return SR_OK;
}

int sr_cad_plan_build(sr_cad_plan *plan, const int64_t *docs, int64_t n_docs, int64_t chunk, int n_servers,
                      const sr_cad_cost *cost) {
    int rc = check_args(plan, docs, n_docs, chunk, n_servers, cost);
    if (rc != SR_OK) return rc;
    memset(plan, 0, sizeof *plan);
    int k = n_servers;
    char *seen = calloc((size_t)k, 1);
    int *list = malloc(sizeof *list * (size_t)k);
    double *load = malloc(sizeof *load * (size_t)k);
    if (!seen || !list || !load) rc = sr_error_set(SR_ENOMEM, "cad plan: out of memory for %d servers", k);
    cand best = {0}, a = {0}, b = {0};
    int best_ht = 0, tried = 0;
    for (int64_t c = chunk; rc == SR_OK && c >= 1; c /= 2) {
        if ((rc = cut(&a, docs, n_docs, c, k)) != SR_OK) break;
        if ((rc = cand_dup(&b, &a, k)) != SR_OK) break;
        assign_contiguous(&a, k);
        score(&a, k, cost, seen, list);
        if ((rc = assign_head_tail(&b, k, load)) != SR_OK) break;
        score(&b, k, cost, seen, list);
        int ht = better(&b, &a);
        cand *win = ht ? &b : &a;
        if (better(win, &best)) {
            best_ht = ht;
            cand_take(&best, win);
        }
        cand_free(&a);
        cand_free(&b);
        tried++;
        if (best.imbalance <= SR_CAD_PLAN_BOUND) break;
    }
    /* a finer cut past the cap is no failure once a plan exists */
    if (rc == SR_ERANGE && tried > 0) rc = SR_OK;
    cand_free(&a);
    cand_free(&b);
    free(seen);
    free(list);
    free(load);
    if (rc != SR_OK) {
        cand_free(&best);
        return rc;
    }
    for (int64_t i = 0; i < best.n; i++) best.c[i].server = best.server[i];
    plan->chunk = best.chunk;
    plan->n_servers = k;
    plan->head_tail = best_ht;
    plan->n_chunks = best.n;
    plan->chunks = best.c;
    plan->flops = best.flops;
    plan->bytes = best.bytes;
    plan->imbalance = best.imbalance;
    plan->bytes_per_flop = best.bytes_per_flop;
    free(best.load);
    free(best.server);
    return SR_OK;
}

int sr_cad_plan_tasks(const sr_cad_plan *plan, const sr_cad_cost *cost, sr_cad_task **out, int64_t *n_out) {
    if (!plan || !cost || !out || !n_out) return sr_error_set(SR_EINVAL, "sr_cad_plan_tasks: NULL argument");
    *out = NULL;
    *n_out = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < plan->n_chunks;) {
        int64_t m = 0;
        while (i + m < plan->n_chunks && plan->chunks[i + m].doc == plan->chunks[i].doc) m++;
        n += m * (m + 1) / 2; /* m <= 2^16 */
        if (n > SR_CAD_PLAN_MAX_TASKS)
            return sr_error_set(SR_ERANGE, "cad plan: more than %lld tasks", (long long)SR_CAD_PLAN_MAX_TASKS);
        i += m;
    }
    sr_cad_task *t = malloc(sizeof *t * (size_t)(n > 0 ? n : 1));
    if (!t) return sr_error_set(SR_ENOMEM, "cad plan: out of memory for %lld tasks", (long long)n);
    int64_t at = 0, first = 0;
    for (int64_t i = 0; i < plan->n_chunks; i++) {
        if (i > 0 && plan->chunks[i].doc != plan->chunks[i - 1].doc) first = i;
        const sr_cad_chunk *q = &plan->chunks[i];
        for (int64_t j = first; j <= i; j++) {
            const sr_cad_chunk *kv = &plan->chunks[j];
            t[at++] = (sr_cad_task){i, j, sr_cad_pairs(q->pos0, q->len, kv->pos0, kv->len) * cost->flops_per_pair};
        }
    }
    *out = t;
    *n_out = n;
    return SR_OK;
}

void sr_cad_plan_free(sr_cad_plan *plan) {
    if (!plan) return;
    free(plan->chunks);
    free(plan->flops);
    free(plan->bytes);
    memset(plan, 0, sizeof *plan);
}
