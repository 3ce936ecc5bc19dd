/* cad: the attention servers' loop, and the model workers' side of a cad
 * prefill and decode (see cad.h). */
#include "worker/cad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/half.h"
#include "base/status.h"
#include "model/kv_cache.h"
#include "transport/group.h"
#include "worker/agree.h"
#include "worker/wire.h"

enum { TAG_CMD = 0, TAG_KV = 1, TAG_Q = 2, TAG_OUT = 3 };

int sr_cad_is_server(int rank, int size, int n_servers) {
    return n_servers >= 1 && n_servers < size && rank >= size - n_servers && rank < size;
}

int sr_cad_check(int size, int n_servers, int tag) {
    if (n_servers < 1 || n_servers >= size)
        return sr_error_set(SR_EINVAL, "--attn-servers: %d, allowed 1..%d (a job of %d ranks needs a model worker)",
                            n_servers, size - 1, size);
    if (tag < 0 || tag > SR_TP_TAG_MAX - (SR_CAD_TAGS - 1))
        return sr_error_set(SR_EINVAL, "cad: tag %d, allowed 0..%d", tag, SR_TP_TAG_MAX - (SR_CAD_TAGS - 1));
    return SR_OK;
}

/* ------------------------------------------------------------ layout */

/* A piece: the tokens of one worker span inside one KV chunk, sent by the
 * worker to the chunk's server. */
typedef struct {
    int64_t pos0, len;
    int worker, server;
    int64_t row; /* first row among the worker's local rows */
} piece;

/* A span's queries sent to one server. */
typedef struct {
    int64_t pos0, len;
    int worker, server;
    int span;    /* the worker's span 0 or 1 */
    int64_t row;
} qmsg;

/* What every rank derives alike from the context, W, K and the plan. */
typedef struct {
    int64_t n_pieces, n_q;
    piece *pieces; /* by position */
    qmsg *q;       /* by worker, span, server */
    double imbalance;
    int64_t chunk;
} layout;

static void layout_free(layout *y) {
    free(y->pieces);
    free(y->q);
    memset(y, 0, sizeof *y);
}

typedef struct {
    sr_span s;
    int worker;
    int64_t row;
} wspan;

static int by_pos(const void *a, const void *b) {
    const wspan *x = a, *y = b;
    return x->s.pos0 < y->s.pos0 ? -1 : x->s.pos0 > y->s.pos0;
}

sr_cad_cost sr_cad_cost_of(int n_head, int n_head_kv, int head_dim) {
    int64_t qd = (int64_t)n_head * head_dim;
    return (sr_cad_cost){4 * qd, 8 * (int64_t)n_head_kv * head_dim, 4 * (qd + n_head), 4.0 * (double)qd};
}

/* Bytes of one K or V element on the wire: the cache's dtype. */
static int64_t kv_elem(int dtype) { return dtype == SR_DT_F32 ? 4 : 2; }

static int layout_build(layout *y, const sr_cad_cmd *c, int k) {
    memset(y, 0, sizeof *y);
    int w = c->workers;
    sr_cad_plan plan;
    sr_cad_cost cost = sr_cad_cost_of(c->n_head, c->n_head_kv, c->head_dim);
    cost.kv_row_bytes = 2 * (int64_t)c->n_head_kv * c->head_dim * kv_elem(c->kv_dtype); /* as it moves */
    int rc = sr_cad_plan_build(&plan, &c->n_ctx, 1, c->chunk, k, &cost);
    if (rc != SR_OK) return rc;
    wspan *ws = malloc(sizeof *ws * (size_t)(2 * w));
    int64_t *first = malloc(sizeof *first * (size_t)k); /* each server's first KV position */
    y->pieces = malloc(sizeof *y->pieces * (size_t)(plan.n_chunks + 2 * w));
    y->q = malloc(sizeof *y->q * (size_t)(2 * w * k));
    if (!ws || !first || !y->pieces || !y->q) rc = sr_error_set(SR_ENOMEM, "cad: out of memory for the layout");
    int64_t nw = 0;
    for (int p = 0; p < w && rc == SR_OK; p++) {
        sr_span sp[2];
        if ((rc = sr_place_zigzag(c->n_ctx, w, p, sp)) != SR_OK) break;
        for (int i = 0; i < 2; i++)
            if (sp[i].len > 0) ws[nw++] = (wspan){sp[i], p, i == 0 ? 0 : sp[0].len};
    }
    if (rc == SR_OK) {
        qsort(ws, (size_t)nw, sizeof *ws, by_pos);
        for (int s = 0; s < k; s++) first[s] = INT64_MAX;
        for (int64_t i = 0; i < plan.n_chunks; i++)
            if (plan.chunks[i].pos0 < first[plan.chunks[i].server]) first[plan.chunks[i].server] = plan.chunks[i].pos0;
        /* spans and chunks both tile [0, n): their intersections in order */
        for (int64_t a = 0, b = 0; a < nw && b < plan.n_chunks;) {
            const sr_span *s = &ws[a].s;
            const sr_cad_chunk *ch = &plan.chunks[b];
            int64_t lo = s->pos0 > ch->pos0 ? s->pos0 : ch->pos0;
            int64_t hi = s->pos0 + s->len < ch->pos0 + ch->len ? s->pos0 + s->len : ch->pos0 + ch->len;
            if (hi > lo)
                y->pieces[y->n_pieces++] = (piece){lo, hi - lo, ws[a].worker, ch->server, ws[a].row + lo - s->pos0};
            if (s->pos0 + s->len <= ch->pos0 + ch->len) a++;
            else b++;
        }
        /* by worker, then its spans in order, then server */
        for (int p = 0; p < w; p++) {
            sr_span sp[2];
            sr_place_zigzag(c->n_ctx, w, p, sp);
            for (int i = 0; i < 2; i++)
                for (int s = 0; s < k && sp[i].len > 0; s++)
                    if (first[s] < sp[i].pos0 + sp[i].len)
                        y->q[y->n_q++] = (qmsg){sp[i].pos0, sp[i].len, p, s, i, i == 0 ? 0 : sp[0].len};
        }
        y->imbalance = plan.imbalance;
        y->chunk = plan.chunk;
    }
    free(ws);
    free(first);
    sr_cad_plan_free(&plan);
    if (rc != SR_OK) layout_free(y);
    return rc;
}

/* ------------------------------------------------------------ messages */

/* The sender's status after a message's floats, as a float: the codes are
 * small integers, exact in one. */
static void put_status(float *slot, int status) { *slot = (float)status; }

/* A peer's failure is returned as its error; a slot that is no status code
 * is SR_EFORMAT. */
static int get_status(const float *slot, int peer, int *status) {
    float f = *slot;
    int rc = sr_wire_status(f == f && fabsf(f) < 1e6f && f == (float)(int)f ? (int64_t)f : INT64_MIN, peer,
                            "cad attention", status);
    if (rc == SR_OK && *status != SR_OK)
        rc = sr_error_set(*status, "cad attention: rank %d failed (%s)", peer, sr_strerror(*status));
    return rc;
}

static int64_t out_floats(const sr_cad_cmd *c, int64_t rows) { return rows * c->n_head * (c->head_dim + 1) + 1; }
static int64_t q_floats(const sr_cad_cmd *c, int64_t rows) { return rows * c->n_head * c->head_dim + 1; }
/* a KV message: K rows, V rows in the cache's dtype, then the status float
 * (4-aligned: the rows take an even number of 2-byte elements) */
static int64_t kv_msg_bytes(const sr_cad_cmd *c, int64_t rows) {
    return 2 * rows * c->n_head_kv * c->head_dim * kv_elem(c->kv_dtype) + 4;
}

/* n fp32 values to the cache's dtype, for the wire (the same rounding as
 * the cache's own store), and back (exact: every f16 or bf16 is a float). */
static void kv_pack(void *dst, const float *src, int64_t n, int dtype) {
    uint16_t *d = dst;
    if (dtype == SR_DT_F32) memcpy(dst, src, sizeof(float) * (size_t)n);
    else if (dtype == SR_DT_F16)
        for (int64_t i = 0; i < n; i++) d[i] = sr_f32_to_f16(src[i]);
    else
        for (int64_t i = 0; i < n; i++) d[i] = sr_f32_to_bf16(src[i]);
}
static void kv_unpack(float *dst, const void *src, int64_t n, int dtype) {
    const uint16_t *h = src;
    if (dtype == SR_DT_F16)
        for (int64_t i = 0; i < n; i++) dst[i] = sr_f16_to_f32(h[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = sr_bf16_to_f32(h[i]);
}

static sr_star_desc star_desc(const sr_cad_cmd *c, int n_threads) {
    return (sr_star_desc){c->n_head, c->n_head_kv, c->head_dim, c->kv_dtype, 0.0f, n_threads};
}

static int send_words(sr_tp *tp, const int64_t *w, int n, int peer, int tag) {
    sr_tp_req *r = NULL;
    int rc = sr_tp_isend(tp, w, (int64_t)sizeof *w * n, peer, tag, &r);
    return rc == SR_OK ? sr_tp_wait(r) : rc;
}

static int recv_words(sr_tp *tp, int64_t *w, int n, int peer, int tag) {
    sr_tp_req *r = NULL;
    int rc = sr_tp_irecv(tp, w, (int64_t)sizeof *w * n, peer, tag, &r);
    return rc == SR_OK ? sr_tp_wait(r) : rc;
}

/* ------------------------------------------------------------ server */

/* One context on a server: its prefill command, its KV, and the buffers
 * of its messages. */
typedef struct sctx {
    uint64_t id;
    sr_cad_cmd ctx;      /* its prefill command */
    int have;            /* prefilled: steps may follow */
    int rc;              /* the prefill's status so far */
    int64_t layers;      /* prefill layers done */
    layout lay;
    sr_kv_cache kv;      /* every layer's KV of this server's chunks */
    int64_t *b0, *off0;  /* [n_pieces] where each piece of this server's goes in kv */
    sr_kv_run *runs;
    int64_t n_runs;
    sr_star_run *qruns;  /* [n_runs] */
    uint8_t *in_kv;      /* this server's KV messages of one layer */
    float *kv32;         /* their rows in fp32, for the cache's store (f16 and bf16 on the wire) */
    float *in_q, *out, *tmp; /* its query messages, answers and scratch (the prefill's) */
    int64_t n_mine, n_mq;
    int64_t *mine, *kv_at;      /* [n_mine] this server's pieces (in position order), their byte offsets in in_kv */
    int64_t *mq, *q_at, *out_at; /* [n_mq] its queries in the order answered, offsets in in_q and out */
    sr_tp_req **reqs;
    int64_t n_reqs;
    struct sctx *next;
} sctx;

typedef struct {
    sr_tp *tp;
    int k, w, me, rank, tag, n_threads;
    sctx *ctxs;
    /* a step's query, answer and scratch, for the largest max_step of the
     * contexts held: one command runs at a time, so the contexts share it */
    float *step;
    int64_t step_cap; /* floats */
    sr_cad_hooks h;
    sr_cad_server_stats st; /* kv_*: of every context held */
} server;

/* What only the prefill needs, once it is over: a resident context keeps
 * its KV and runs. */
static void sctx_shed(sctx *x) {
    layout_free(&x->lay);
    free(x->b0);
    free(x->off0);
    free(x->in_kv);
    free(x->kv32);
    free(x->in_q);
    free(x->out);
    free(x->tmp);
    free(x->reqs);
    free(x->mine);
    free(x->kv_at);
    free(x->mq);
    free(x->q_at);
    free(x->out_at);
    x->b0 = x->off0 = x->mine = x->kv_at = x->mq = x->q_at = x->out_at = NULL;
    x->in_kv = NULL;
    x->kv32 = x->in_q = x->out = x->tmp = NULL;
    x->reqs = NULL;
}

static void sctx_free(sctx *x) {
    if (!x) return;
    sctx_shed(x);
    sr_kv_free(&x->kv);
    free(x->runs);
    free(x->qruns);
    free(x);
}

/* floats of a step of nq queries: the query, the answer, the scratch */
static int64_t step_floats(const sr_cad_cmd *c, int64_t nq) {
    return q_floats(c, nq) + out_floats(c, nq) + nq * c->n_head * (c->head_dim + 1);
}

static sctx *server_find(server *s, uint64_t id) {
    for (sctx *x = s->ctxs; x; x = x->next)
        if (x->id == id) return x;
    return NULL;
}

/* The figures of every context held, after a change. */
static void server_count(server *s) {
    s->st.kv_tokens = s->st.kv_bytes = 0;
    for (sctx *x = s->ctxs; x; x = x->next) {
        s->st.kv_tokens += x->kv.n_tokens;
        s->st.kv_bytes += (int64_t)sr_kv_bytes(&x->kv);
    }
}

/* Frees context id (if held); returns its KV bytes. */
static int64_t server_drop(server *s, uint64_t id) {
    int64_t bytes = 0;
    for (sctx **p = &s->ctxs; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            sctx *x = *p;
            *p = x->next;
            bytes = (int64_t)sr_kv_bytes(&x->kv);
            sctx_free(x);
            break;
        }
    server_count(s);
    return bytes;
}

/* Layer l's runs of this server's KV before position end: in a ping-pong
 * layer the slots after it may not hold this layer's KV yet. */
static int64_t layer_runs(const sr_kv_cache *kv, const sr_kv_run *runs, int64_t n, int l, int64_t end,
                          sr_star_run *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < n && runs[i].pos0 < end; i++) {
        int64_t at = (int64_t)l * kv->cap_blocks + runs[i].b0, len = end - runs[i].pos0;
        out[m++] = (sr_star_run){{NULL, NULL, &kv->k_ptr[at], &kv->v_ptr[at], kv->block_size}, runs[i].pos0,
                                 len < runs[i].len ? len : runs[i].len};
    }
    return m;
}

/* queries (indexes into the layout's, in q) by the end of their span,
 * then worker: the order answered */
static int by_end(const void *a, const void *b, void *q) {
    const qmsg *x = &((const qmsg *)q)[*(const int64_t *)a], *y = &((const qmsg *)q)[*(const int64_t *)b];
    int64_t ex = x->pos0 + x->len, ey = y->pos0 + y->len;
    if (ex != ey) return ex < ey ? -1 : 1;
    return x->worker < y->worker ? -1 : x->worker > y->worker;
}

/* The cache slots, buffers and runs of a new context; within the
 * server's KV budget (s->h.kv_budget) with the contexts it holds. */
static int server_setup(server *s, sctx *x) {
    const sr_cad_cmd *c = &x->ctx;
    int rc = layout_build(&x->lay, c, s->k);
    if (rc == SR_OK) rc = sr_kv_build(&x->kv, c->n_layer, c->n_head_kv, c->head_dim, c->kv_dtype, c->kv_block);
    if (rc != SR_OK) return rc;
    const layout *y = &x->lay;
    int64_t np = 0, nq = 0;
    for (int64_t i = 0; i < y->n_pieces; i++) np += y->pieces[i].server == s->me;
    for (int64_t i = 0; i < y->n_q; i++) nq += y->q[i].server == s->me;
    x->b0 = malloc(sizeof *x->b0 * (size_t)(y->n_pieces + 1));
    x->off0 = malloc(sizeof *x->off0 * (size_t)(y->n_pieces + 1));
    x->mine = malloc(sizeof *x->mine * (size_t)(np + 1));
    x->kv_at = malloc(sizeof *x->kv_at * (size_t)(np + 1));
    x->mq = malloc(sizeof *x->mq * (size_t)(nq + 1));
    x->q_at = malloc(sizeof *x->q_at * (size_t)(nq + 1));
    x->out_at = malloc(sizeof *x->out_at * (size_t)(nq + 1));
    x->n_reqs = np + 2 * nq + 1;
    x->reqs = calloc((size_t)x->n_reqs, sizeof *x->reqs);
    if (!x->b0 || !x->off0 || !x->mine || !x->kv_at || !x->mq || !x->q_at || !x->out_at || !x->reqs)
        return sr_error_set(SR_ENOMEM, "cad server: out of memory for a context of %lld tokens", (long long)c->n_ctx);
    int64_t nkv = 0, nqf = 0, nout = 0, most = 1, longest = 0;
    for (int64_t i = 0; i < y->n_pieces; i++)
        if (y->pieces[i].server == s->me) {
            x->kv_at[x->n_mine] = nkv;
            x->mine[x->n_mine++] = i;
            nkv += kv_msg_bytes(c, y->pieces[i].len);
            if (y->pieces[i].len > longest) longest = y->pieces[i].len;
        }
    for (int64_t i = 0; i < y->n_q; i++)
        if (y->q[i].server == s->me) x->mq[x->n_mq++] = i;
    qsort_r(x->mq, (size_t)x->n_mq, sizeof *x->mq, by_end, y->q);
    for (int64_t j = 0; j < x->n_mq; j++) {
        const qmsg *m = &y->q[x->mq[j]];
        x->q_at[j] = nqf;
        x->out_at[j] = nout;
        nqf += q_floats(c, m->len);
        nout += out_floats(c, m->len);
        if (m->len > most) most = m->len;
    }
    /* the steps' buffer, for this context's largest (bounded by the command's checks) */
    int64_t need = step_floats(c, c->max_step);
    if (need > s->step_cap) {
        float *b = realloc(s->step, sizeof(float) * (size_t)need);
        if (!b) return sr_error_set(SR_ENOMEM, "cad server: out of memory for steps of %lld queries", (long long)c->max_step);
        s->step = b;
        s->step_cap = need;
    }
    x->in_kv = calloc((size_t)(nkv + 4), 1);
    x->kv32 = malloc(sizeof(float) * (size_t)(2 * longest * c->n_head_kv * c->head_dim + 1));
    x->in_q = calloc((size_t)(nqf + 1), sizeof(float));
    x->out = calloc((size_t)(nout + 1), sizeof(float));
    x->tmp = malloc(sizeof(float) * (size_t)(most * c->n_head * (c->head_dim + 1)));
    if (!x->in_kv || !x->kv32 || !x->in_q || !x->out || !x->tmp)
        return sr_error_set(SR_ENOMEM, "cad server: out of memory for a context of %lld tokens", (long long)c->n_ctx);
    for (int64_t j = 0; j < x->n_mine && rc == SR_OK; j++) {
        const piece *p = &y->pieces[x->mine[j]];
        rc = sr_kv_reserve(&x->kv, p->pos0, p->len, &x->b0[x->mine[j]], &x->off0[x->mine[j]]);
    }
    if (rc == SR_OK) rc = sr_kv_runs(&x->kv, &x->runs, &x->n_runs);
    if (rc == SR_OK && !(x->qruns = malloc(sizeof *x->qruns * (size_t)(x->n_runs + 1))))
        rc = sr_error_set(SR_ENOMEM, "cad server: out of memory");
    int64_t kvb = (int64_t)sr_kv_bytes(&x->kv);
    if (rc == SR_OK && s->h.kv_budget > 0 && s->st.kv_bytes + kvb > s->h.kv_budget)
        rc = sr_error_set(SR_ENOMEM, "attention server %d: a context of %lld tokens needs %lld bytes of KV here, with "
                          "%lld held the budget of %lld bytes (--kv-budget) is exceeded", s->me, (long long)c->n_ctx,
                          (long long)kvb, (long long)s->st.kv_bytes, (long long)s->h.kv_budget);
    return rc;
}

/* nq queries at positions pos0.. (in q) against layer l of the context's
 * KV on this server, into out [O | LSE | status]; rc: the sender's status
 * so far. */
static int server_attend(server *s, sctx *x, int l, int rc, int64_t nq, int64_t pos0, const float *q, float *out,
                         float *tmp) {
    const sr_cad_cmd *c = &x->ctx;
    int64_t qn = nq * c->n_head * c->head_dim;
    double t0 = sr_now();
    if (rc == SR_OK) {
        sr_star_desc d = star_desc(c, s->n_threads);
        rc = sr_star_attend(&d, nq, pos0, q, x->qruns, layer_runs(&x->kv, x->runs, x->n_runs, l, pos0 + nq, x->qruns), out,
                            out + qn, tmp, tmp + qn);
    }
    put_status(out + qn + nq * c->n_head, rc);
    s->st.busy_s += sr_now() - t0;
    s->st.tasks++;
    return rc;
}

/* Waits for request i of this layer, counting the time as waiting. */
static int server_wait(server *s, sctx *x, int64_t i) {
    double t0 = sr_now();
    int rc = sr_tp_wait(x->reqs[i]);
    x->reqs[i] = NULL;
    s->st.wait_s += sr_now() - t0;
    return rc;
}

/* Stores piece j of this server's (a received message) in layer l. */
static int server_store(server *s, sctx *x, int l, int64_t j, int rc) {
    const sr_cad_cmd *c = &x->ctx;
    const piece *p = &x->lay.pieces[x->mine[j]];
    const uint8_t *kvm = x->in_kv + x->kv_at[j];
    int64_t kvd = (int64_t)c->n_head_kv * c->head_dim, n = 2 * p->len * kvd;
    int st = SR_OK;
    double t0 = sr_now();
    if (rc == SR_OK) rc = get_status((const float *)(kvm + kv_msg_bytes(c, p->len) - 4), p->worker, &st);
    const float *rows = (const float *)kvm;
    if (rc == SR_OK && c->kv_dtype != SR_DT_F32) {
        kv_unpack(x->kv32, kvm, n, c->kv_dtype);
        rows = x->kv32;
    }
    if (rc == SR_OK) rc = sr_kv_store(&x->kv, l, x->b0[x->mine[j]], x->off0[x->mine[j]], p->len, rows, rows + p->len * kvd);
    s->st.busy_s += sr_now() - t0;
    return rc;
}

/* One prefill layer of context x. Every receive is posted first; then the
 * queries are answered in the order of their spans' ends, each as soon as
 * the pieces before its end have arrived (ping-pong: the early spans'
 * attention runs while the late spans' KV and queries are in flight), each
 * answer sent at once. With overlap off everything is awaited first (the
 * benchmark's baseline). A failure of the attention (in *rcp) goes on
 * through every message; the return is the transport's. */
static int server_layer(server *s, sctx *x, int l, int *rcp) {
    int rc = *rcp;
    const sr_cad_cmd *c = &x->ctx;
    const layout *y = &x->lay;
    int64_t nr = 0, np = x->n_mine, nq = x->n_mq;
    int trc = SR_OK;
    for (int64_t j = 0; j < np && trc == SR_OK; j++) {
        const piece *p = &y->pieces[x->mine[j]];
        int64_t n = kv_msg_bytes(c, p->len);
        trc = sr_tp_irecv(s->tp, x->in_kv + x->kv_at[j], n, p->worker, s->tag + TAG_KV, &x->reqs[nr++]);
        s->st.bytes_recv += n;
    }
    for (int64_t j = 0; j < nq && trc == SR_OK; j++) {
        const qmsg *m = &y->q[x->mq[j]];
        int64_t n = q_floats(c, m->len);
        trc = sr_tp_irecv(s->tp, x->in_q + x->q_at[j], n * (int64_t)sizeof(float), m->worker, s->tag + TAG_Q,
                          &x->reqs[nr++]);
        s->st.bytes_recv += n * (int64_t)sizeof(float);
    }
    if (trc != SR_OK) { /* the transport itself failed: nothing more can be exchanged */
        sr_tp_waitall((int)nr, x->reqs);
        return trc;
    }
    if (!c->overlap)
        for (int64_t j = 0; j < np + nq && trc == SR_OK; j++) trc = server_wait(s, x, j);
    int64_t stored = 0, sends = np + nq;
    for (int64_t j = 0; j < nq && trc == SR_OK; j++) {
        const qmsg *m = &y->q[x->mq[j]];
        for (; stored < np && y->pieces[x->mine[stored]].pos0 < m->pos0 + m->len && trc == SR_OK; stored++)
            if ((trc = server_wait(s, x, stored)) == SR_OK) rc = server_store(s, x, l, stored, rc);
        if (trc != SR_OK || (trc = server_wait(s, x, np + j)) != SR_OK) break;
        float *qm = x->in_q + x->q_at[j], *out = x->out + x->out_at[j];
        int qrc = rc, st = SR_OK;
        if (qrc == SR_OK) qrc = get_status(qm + q_floats(c, m->len) - 1, m->worker, &st);
        /* a sender's failure is its own; this server's is every later answer's */
        int arc = server_attend(s, x, l, qrc, m->len, m->pos0, qm, out, x->tmp);
        if (rc == SR_OK && qrc == SR_OK) rc = arc;
        int64_t n = out_floats(c, m->len);
        trc = sr_tp_isend(s->tp, out, n * (int64_t)sizeof(float), m->worker, s->tag + TAG_OUT, &x->reqs[sends++]);
        s->st.bytes_sent += n * (int64_t)sizeof(float);
    }
    /* pieces after every query this server answers: none, but stored alike */
    for (; stored < np && trc == SR_OK; stored++)
        if ((trc = server_wait(s, x, stored)) == SR_OK) rc = server_store(s, x, l, stored, rc);
    int wrc = sr_tp_waitall((int)sends, x->reqs);
    *rcp = rc;
    return trc != SR_OK ? trc : wrc;
}

/* A prefill command: answer with this server's status, learn whether it
 * goes ahead; its layers follow, each announced (server_layer_cmd). A
 * context of the same id is replaced (starring-run names every one 0). */
static int server_prefill(server *s, const int64_t *words) {
    sctx *x = calloc(1, sizeof *x);
    int rc = x ? sr_cad_wire_cmd_decode(words, s->w, 0, 0, &x->ctx)
               : sr_error_set(SR_ENOMEM, "cad server: out of memory for a context");
    if (x && rc == SR_OK) {
        x->id = x->ctx.ctx;
        server_drop(s, x->id);
        rc = server_setup(s, x);
    }
    int64_t status = rc, go = SR_OK;
    int trc = send_words(s->tp, &status, 1, 0, s->tag + TAG_CMD);
    if (trc == SR_OK) trc = recv_words(s->tp, &go, 1, 0, s->tag + TAG_CMD);
    if (trc != SR_OK || rc != SR_OK || go != SR_OK) {
        sctx_free(x);
        return trc; /* SR_OK: the workers know: no prefill */
    }
    x->next = s->ctxs;
    s->ctxs = x;
    server_count(s);
    return SR_OK;
}

/* A layer command: that layer of the context's prefill; after the last
 * the context is held (or, failed, freed) and the hook hears of it. */
static int server_layer_cmd(server *s, const sr_cad_cmd *c) {
    sctx *x = server_find(s, c->ctx);
    if (!x || x->have || c->layer != x->layers)
        return sr_error_set(SR_EFORMAT, "cad layer command: layer %lld of context %llx, which is not %s",
                            (long long)c->layer, (unsigned long long)c->ctx,
                            !x ? "held here" : x->have ? "prefilling" : "the next layer");
    int trc = server_layer(s, x, (int)c->layer, &x->rc);
    if (trc != SR_OK) return trc; /* the message sequence is broken */
    if (++x->layers < x->ctx.n_layer) return SR_OK;
    int rc = x->rc;
    int64_t tokens = x->kv.n_tokens, bytes = (int64_t)sr_kv_bytes(&x->kv);
    x->have = rc == SR_OK;
    if (x->have) sctx_shed(x);
    else server_drop(s, x->id);
    if (s->h.prefilled) s->h.prefilled(s->h.data, c->ctx, rc, x->have ? tokens : 0, x->have ? bytes : 0);
    return SR_OK;
}

/* A decode step: per layer the query worker's queries against this
 * server's KV of the context. */
static int server_step(server *s, sctx *x, const sr_cad_cmd *c) {
    const sr_cad_cmd *h = &x->ctx;
    int64_t nqf = q_floats(h, c->nq), nof = out_floats(h, c->nq);
    /* the prefill sized s->step for this context's max_step, which nq is within */
    float *q = s->step, *out = q + nqf, *tmp = out + nof;
    for (int l = 0; l < h->n_layer; l++) {
        sr_tp_req *r[2] = {0};
        int rc = sr_tp_irecv(s->tp, q, nqf * (int64_t)sizeof(float), 0, s->tag + TAG_Q, &r[0]);
        if (rc == SR_OK) rc = sr_tp_wait(r[0]);
        if (rc != SR_OK) return rc;
        int st = SR_OK, qrc = get_status(q + nqf - 1, 0, &st);
        server_attend(s, x, l, qrc, c->nq, c->pos, q, out, tmp);
        if ((rc = sr_tp_isend(s->tp, out, nof * (int64_t)sizeof(float), 0, s->tag + TAG_OUT, &r[1])) == SR_OK)
            rc = sr_tp_wait(r[1]);
        if (rc != SR_OK) return rc;
        s->st.bytes_recv += nqf * (int64_t)sizeof(float);
        s->st.bytes_sent += nof * (int64_t)sizeof(float);
    }
    return SR_OK;
}

/* One command other than a prefill; *quit on close. */
static int server_cmd(server *s, const int64_t *words, int *quit) {
    /* a step names its context first: its checks need the context's sizes */
    sctx *x = server_find(s, (uint64_t)words[SR_CAD_WIRE_CMD_WORDS - 1]);
    int held = x && x->have;
    sr_cad_cmd c;
    int rc = sr_cad_wire_cmd_decode(words, s->w, held ? x->ctx.n_ctx : 0, held ? x->ctx.max_step : 0, &c);
    if (rc != SR_OK) return rc;
    switch (c.op) {
    case SR_CAD_OP_CLOSE: *quit = 1; return SR_OK;
    case SR_CAD_OP_LAYER: return server_layer_cmd(s, &c);
    case SR_CAD_OP_STEP: return server_step(s, x, &c);
    case SR_CAD_OP_DROP: {
        int64_t bytes = server_drop(s, c.ctx);
        if (s->h.dropped) s->h.dropped(s->h.data, c.ctx, bytes);
        return SR_OK;
    }
    default: { /* stats */
        int64_t out[SR_CAD_WIRE_STATS_WORDS];
        sr_cad_wire_stats_encode(out, SR_OK, &s->st);
        return send_words(s->tp, out, SR_CAD_WIRE_STATS_WORDS, 0, s->tag + TAG_CMD);
    }
    }
}

int sr_cad_serve_hooked(sr_tp *tp, int n_servers, int tag, int n_threads, const sr_cad_hooks *hooks) {
    if (!tp) return sr_error_set(SR_EINVAL, "sr_cad_serve: NULL transport");
    int size = sr_tp_size(tp), rank = sr_tp_rank(tp);
    int rc = sr_cad_check(size, n_servers, tag);
    if (rc != SR_OK) return rc;
    if (!sr_cad_is_server(rank, size, n_servers))
        return sr_error_set(SR_EINVAL, "sr_cad_serve: rank %d is a model worker (the servers are ranks %d..%d)", rank,
                            size - n_servers, size - 1);
    if (sr_tp_device_memory(tp))
        return sr_error_set(SR_EUNSUPPORTED, "cad attention runs on CPU memory; transport %s moves GPU memory",
                            sr_tp_name(tp));
    server s = {.tp = tp, .k = n_servers, .w = size - n_servers, .me = rank - (size - n_servers), .rank = rank,
                .tag = tag, .n_threads = n_threads};
    if (hooks) s.h = *hooks;
    for (int quit = 0; !quit;) {
        int64_t words[SR_CAD_WIRE_CMD_WORDS];
        if ((rc = recv_words(tp, words, SR_CAD_WIRE_CMD_WORDS, 0, tag + TAG_CMD)) != SR_OK) break;
        rc = words[0] == SR_CAD_OP_PREFILL ? server_prefill(&s, words) : server_cmd(&s, words, &quit);
        if (rc != SR_OK) break;
        if (s.h.stats) s.h.stats(s.h.data, &s.st);
    }
    while (s.ctxs) server_drop(&s, s.ctxs->id);
    free(s.step);
    if (s.h.stats) s.h.stats(s.h.data, &s.st);
    return rc;
}

int sr_cad_serve(sr_tp *tp, int n_servers, int tag, int n_threads) {
    return sr_cad_serve_hooked(tp, n_servers, tag, n_threads, NULL);
}

/* ------------------------------------------------------------ workers */

struct sr_cad {
    sr_tp *tp, *group;
    int k, w, rank, tag;
    int32_t *agree;      /* [w] scratch of sr_agree */
    sr_cad_cmd ctx;      /* the context: its prefill command */
    uint64_t id;         /* its name in the servers' commands (sr_cad_name) */
    int named;
    int64_t layer;       /* the prefill's next layer */
    int n_threads;
    layout lay;
    uint8_t *send_kv;    /* this worker's KV messages of one layer (the cache's dtype) */
    float *send_q, *in;  /* its query messages and the answers */
    sr_tp_req **reqs;
    int64_t n_reqs;
    float *step_q, *step_in, *step_o, *step_l; /* query worker, decode: max_step queries */
    int64_t step_cap;
    sr_tp_req **step_reqs; /* [2k] */
    sr_cad_stats st;
};

static void worker_drop(sr_cad *c) {
    layout_free(&c->lay);
    free(c->send_kv);
    free(c->send_q);
    free(c->in);
    free(c->reqs);
    free(c->step_q);
    free(c->step_in);
    free(c->step_o);
    free(c->step_l);
    c->send_kv = NULL;
    c->send_q = c->in = NULL;
    c->step_q = c->step_in = c->step_o = c->step_l = NULL;
    c->reqs = NULL;
    c->n_reqs = c->step_cap = 0;
}

int sr_cad_open(sr_cad **out, sr_tp *tp, int n_servers, int tag) {
    if (!out || !tp) return sr_error_set(SR_EINVAL, "sr_cad_open: NULL argument");
    *out = NULL;
    int size = sr_tp_size(tp), rank = sr_tp_rank(tp);
    int rc = sr_cad_check(size, n_servers, tag);
    if (rc != SR_OK) return rc;
    if (sr_cad_is_server(rank, size, n_servers))
        return sr_error_set(SR_EINVAL, "sr_cad_open: rank %d is an attention server (it runs sr_cad_serve)", rank);
    if (sr_tp_device_memory(tp))
        return sr_error_set(SR_EUNSUPPORTED, "cad attention runs on CPU memory; transport %s moves GPU memory",
                            sr_tp_name(tp));
    sr_cad *c = calloc(1, sizeof *c);
    if (c) {
        c->agree = calloc((size_t)(size - n_servers), sizeof *c->agree);
        c->step_reqs = calloc((size_t)(2 * n_servers), sizeof *c->step_reqs);
    }
    if (!c || !c->agree || !c->step_reqs) {
        if (c) free(c->agree), free(c->step_reqs);
        free(c);
        return sr_error_set(SR_ENOMEM, "out of memory for cad");
    }
    c->tp = tp;
    c->k = n_servers;
    c->w = size - n_servers;
    c->rank = rank;
    c->tag = tag;
    if ((rc = sr_tp_group_range(&c->group, tp, 0, c->w)) != SR_OK) {
        free(c->agree);
        free(c->step_reqs);
        free(c);
        return rc;
    }
    *out = c;
    return SR_OK;
}

/* The query worker's command to every server; the first failure. */
static int to_servers(sr_tp *tp, int w, int k, int tag, const sr_cad_cmd *cmd) {
    int64_t words[SR_CAD_WIRE_CMD_WORDS];
    sr_cad_wire_cmd_encode(words, cmd);
    int rc = SR_OK;
    for (int s = 0; s < k; s++) {
        int trc = send_words(tp, words, SR_CAD_WIRE_CMD_WORDS, w + s, tag + TAG_CMD);
        if (rc == SR_OK) rc = trc;
    }
    return rc;
}

void sr_cad_close(sr_cad *c) {
    if (!c) return;
    if (c->rank == 0) to_servers(c->tp, c->w, c->k, c->tag, &(sr_cad_cmd){.op = c->named ? SR_CAD_OP_DROP : SR_CAD_OP_CLOSE,
                                                                        .ctx = c->id});
    worker_drop(c);
    sr_tp_close(c->group);
    free(c->agree);
    free(c->step_reqs);
    free(c);
}

void sr_cad_name(sr_cad *c, uint64_t ctx) {
    c->id = ctx;
    c->named = 1;
}

int sr_cad_quit(sr_tp *tp, int n_servers, int tag) {
    if (!tp) return sr_error_set(SR_EINVAL, "sr_cad_quit: NULL transport");
    int size = sr_tp_size(tp), rc = sr_cad_check(size, n_servers, tag);
    if (rc == SR_OK && sr_tp_rank(tp) != 0)
        return sr_error_set(SR_EINVAL, "sr_cad_quit: rank %d is not the query worker (0)", sr_tp_rank(tp));
    return rc == SR_OK ? to_servers(tp, size - n_servers, n_servers, tag, &(sr_cad_cmd){.op = SR_CAD_OP_CLOSE}) : rc;
}

sr_tp *sr_cad_group(sr_cad *c) { return c->group; }
int sr_cad_servers(const sr_cad *c) { return c->k; }

/* The query worker's decode buffers for nq queries. */
static int step_reserve(sr_cad *c, int64_t nq) {
    if (nq <= c->step_cap) return SR_OK;
    const sr_cad_cmd *x = &c->ctx;
    free(c->step_q);
    free(c->step_in);
    free(c->step_o);
    free(c->step_l);
    c->step_q = malloc(sizeof(float) * (size_t)q_floats(x, nq));
    c->step_in = malloc(sizeof(float) * (size_t)(out_floats(x, nq) * c->k));
    c->step_o = malloc(sizeof(float) * (size_t)(nq * x->n_head * x->head_dim));
    c->step_l = malloc(sizeof(float) * (size_t)(nq * x->n_head));
    c->step_cap = c->step_q && c->step_in && c->step_o && c->step_l ? nq : 0;
    return c->step_cap ? SR_OK : sr_error_set(SR_ENOMEM, "cad: out of memory for a step of %lld queries", (long long)nq);
}

/* This worker's layout and buffers for the context in c->ctx. */
static int worker_setup(sr_cad *c) {
    int rc = layout_build(&c->lay, &c->ctx, c->k);
    if (rc != SR_OK) return rc;
    const layout *y = &c->lay;
    const sr_cad_cmd *x = &c->ctx;
    int64_t nkv = 0, nq = 0, nin = 0, nr = 0;
    for (int64_t i = 0; i < y->n_pieces; i++)
        if (y->pieces[i].worker == c->rank) nkv += kv_msg_bytes(x, y->pieces[i].len), nr++;
    sr_span sp[2];
    sr_place_zigzag(x->n_ctx, c->w, c->rank, sp);
    nq = q_floats(x, sp[0].len) + q_floats(x, sp[1].len);
    for (int64_t i = 0; i < y->n_q; i++)
        if (y->q[i].worker == c->rank) nin += out_floats(x, y->q[i].len), nr += 2;
    c->send_kv = calloc((size_t)(nkv + 4), 1);
    c->send_q = calloc((size_t)nq, sizeof(float));
    c->in = calloc((size_t)(nin + 1), sizeof(float));
    c->n_reqs = nr;
    c->reqs = calloc((size_t)(nr + 1), sizeof *c->reqs);
    if (!c->send_kv || !c->send_q || !c->in || !c->reqs)
        return sr_error_set(SR_ENOMEM, "cad: out of memory for a context of %lld tokens", (long long)x->n_ctx);
    c->st.plan_imbalance = y->imbalance;
    c->st.plan_chunk = y->chunk;
    return c->rank == 0 ? step_reserve(c, x->max_step) : SR_OK;
}

int sr_cad_prefill_begin(sr_cad *c, const sr_cad_shape *sh, int64_t n_ctx, int rc) {
    if (!c) return sr_error_set(SR_EINVAL, "sr_cad_prefill_begin: NULL handle");
    worker_drop(c);
    if (rc == SR_OK && !sh) rc = sr_error_set(SR_EINVAL, "sr_cad_prefill_begin: NULL shape");
    if (rc == SR_OK) {
        c->ctx = (sr_cad_cmd){SR_CAD_OP_PREFILL, n_ctx, c->w, sh->n_layer, sh->n_head, sh->n_head_kv, sh->head_dim,
                              sh->kv_dtype, sh->kv_block, sh->chunk > 0 ? sh->chunk : SR_CAD_DEFAULT_CHUNK,
                              sh->max_step, sh->overlap, 0, 0, 0, c->id};
        c->n_threads = sh->n_threads;
        c->layer = 0;
        /* the check the servers will make, here first: a bad shape fails every worker alike */
        int64_t words[SR_CAD_WIRE_CMD_WORDS];
        sr_cad_cmd back;
        sr_cad_wire_cmd_encode(words, &c->ctx);
        rc = sr_cad_wire_cmd_decode(words, c->w, 0, 0, &back);
    }
    if (rc == SR_OK) rc = worker_setup(c);
    if ((rc = sr_agree(c->group, rc, c->agree, "cad prefill")) != SR_OK) {
        worker_drop(c);
        return rc;
    }
    /* two phases: every server's status, then whether the prefill goes ahead */
    int64_t verdict = SR_OK;
    if (c->rank == 0) {
        int64_t words[SR_CAD_WIRE_CMD_WORDS];
        sr_cad_wire_cmd_encode(words, &c->ctx);
        for (int s = 0; s < c->k && rc == SR_OK; s++)
            rc = send_words(c->tp, words, SR_CAD_WIRE_CMD_WORDS, c->w + s, c->tag + TAG_CMD);
        for (int s = 0; s < c->k && rc == SR_OK; s++) {
            int64_t status;
            int st = SR_OK;
            if ((rc = recv_words(c->tp, &status, 1, c->w + s, c->tag + TAG_CMD)) == SR_OK &&
                (rc = sr_wire_status(status, c->w + s, "cad prefill", &st)) == SR_OK && st != SR_OK && verdict == SR_OK)
                verdict = sr_error_set(st, "cad prefill: attention server rank %d failed (%s)", c->w + s, sr_strerror(st));
        }
        if (rc == SR_OK) rc = (int)verdict;
        int64_t go = rc;
        for (int s = 0; s < c->k; s++) {
            int trc = send_words(c->tp, &go, 1, c->w + s, c->tag + TAG_CMD);
            if (rc == SR_OK) rc = trc;
        }
    }
    if ((rc = sr_agree(c->group, rc, c->agree, "cad prefill")) != SR_OK) worker_drop(c);
    return rc;
}

int sr_cad_layer(sr_cad *c, int rc, const float *q, const float *k, const float *v, float *o, float *lse) {
    if (!c || !c->reqs) return sr_error_set(SR_ESTATE, "sr_cad_layer: no prefill begun");
    const layout *y = &c->lay;
    const sr_cad_cmd *x = &c->ctx;
    int64_t qd = (int64_t)x->n_head * x->head_dim, kvd = (int64_t)x->n_head_kv * x->head_dim, nr = 0;
    double t0 = sr_now();
    if (rc == SR_OK && (!q || !k || !v || !o || !lse)) rc = sr_error_set(SR_EINVAL, "sr_cad_layer: a NULL row buffer");
    /* the layer announced: the servers take the commands in order */
    int prc = c->rank == 0 ? to_servers(c->tp, c->w, c->k, c->tag, &(sr_cad_cmd){.op = SR_CAD_OP_LAYER, .layer = c->layer,
                                                                               .ctx = c->id})
                           : SR_OK;
    c->layer++;
    /* the answers first, so that they can land as soon as they are sent */
    float *in = c->in;
    for (int64_t i = 0; i < y->n_q && prc == SR_OK; i++) {
        const qmsg *m = &y->q[i];
        if (m->worker != c->rank) continue;
        int64_t n = out_floats(x, m->len);
        prc = sr_tp_irecv(c->tp, in, n * (int64_t)sizeof(float), c->w + m->server, c->tag + TAG_OUT, &c->reqs[nr++]);
        c->st.bytes_recv += n * (int64_t)sizeof(float);
        in += n;
    }
    uint8_t *kvm = c->send_kv;
    for (int64_t i = 0; i < y->n_pieces && prc == SR_OK; i++) {
        const piece *p = &y->pieces[i];
        if (p->worker != c->rank) continue;
        int64_t n = kv_msg_bytes(x, p->len), half = p->len * kvd * kv_elem(x->kv_dtype);
        if (rc == SR_OK) {
            kv_pack(kvm, k + p->row * kvd, p->len * kvd, x->kv_dtype);
            kv_pack(kvm + half, v + p->row * kvd, p->len * kvd, x->kv_dtype);
        }
        put_status((float *)(kvm + n - 4), rc);
        prc = sr_tp_isend(c->tp, kvm, n, c->w + p->server, c->tag + TAG_KV, &c->reqs[nr++]);
        c->st.bytes_sent += n;
        c->st.messages++;
        kvm += n;
    }
    /* each span's queries once, to every server that needs them */
    sr_span sp[2];
    sr_place_zigzag(x->n_ctx, c->w, c->rank, sp);
    float *qm[2] = {c->send_q, c->send_q + q_floats(x, sp[0].len)};
    for (int i = 0; i < 2; i++) {
        if (rc == SR_OK && sp[i].len > 0) memcpy(qm[i], q + (i ? sp[0].len : 0) * qd, sizeof(float) * (size_t)(sp[i].len * qd));
        put_status(qm[i] + q_floats(x, sp[i].len) - 1, rc);
    }
    for (int64_t i = 0; i < y->n_q && prc == SR_OK; i++) {
        const qmsg *m = &y->q[i];
        if (m->worker != c->rank) continue;
        int64_t n = q_floats(x, m->len);
        prc = sr_tp_isend(c->tp, qm[m->span], n * (int64_t)sizeof(float), c->w + m->server, c->tag + TAG_Q,
                          &c->reqs[nr++]);
        c->st.bytes_sent += n * (int64_t)sizeof(float);
        c->st.messages++;
    }
    double t1 = sr_now();
    int wrc = sr_tp_waitall((int)nr, c->reqs);
    c->st.wait_s += sr_now() - t1;
    if (rc == SR_OK) rc = prc != SR_OK ? prc : wrc;
    /* merge the servers' parts of each span, in server order */
    in = c->in;
    int started[2] = {0, 0};
    for (int64_t i = 0; i < y->n_q; i++) {
        const qmsg *m = &y->q[i];
        if (m->worker != c->rank) continue;
        int64_t rows = m->len * x->n_head, st_rc = SR_OK;
        int st = SR_OK, span = m->span;
        float *oo = o + m->row * qd, *ll = lse + m->row * x->n_head;
        if (rc == SR_OK) st_rc = get_status(in + out_floats(x, m->len) - 1, c->w + m->server, &st);
        if (rc == SR_OK) rc = (int)st_rc;
        if (rc == SR_OK && !started[span]) {
            memcpy(oo, in, sizeof(float) * (size_t)(rows * x->head_dim));
            memcpy(ll, in + rows * x->head_dim, sizeof(float) * (size_t)rows);
            started[span] = 1;
        } else if (rc == SR_OK) {
            rc = sr_attn_merge_into(oo, ll, in, in + rows * x->head_dim, rows, x->head_dim);
        }
        in += out_floats(x, m->len);
    }
    c->st.layer_s += sr_now() - t0;
    return rc;
}

int sr_cad_query(sr_cad *c, int l, int rc, int64_t nq, int64_t pos, const float *q, const sr_star_run *own,
                 int64_t n_own, float *o, float *lse) {
    if (!c) return sr_error_set(SR_EINVAL, "sr_cad_query: NULL handle");
    if (c->rank != 0) return rc;
    const sr_cad_cmd *x = &c->ctx;
    /* the step's size was checked by the caller against max_step: the
     * servers' buffers hold it */
    if (nq < 1 || nq > x->max_step)
        return sr_error_set(SR_EINVAL, "sr_cad_query: %lld queries, allowed 1..%lld", (long long)nq, (long long)x->max_step);
    double t0 = sr_now();
    int trc = SR_OK;
    if (l == 0) {
        trc = to_servers(c->tp, c->w, c->k, c->tag, &(sr_cad_cmd){.op = SR_CAD_OP_STEP, .nq = nq, .pos = pos, .ctx = c->id});
        if (trc != SR_OK) return trc;
    }
    /* every layer's message goes out even after a failure: the servers expect it */
    int64_t qn = nq * x->n_head * x->head_dim, nof = out_floats(x, nq), nqf = q_floats(x, nq);
    if (rc == SR_OK && !q) rc = sr_error_set(SR_EINVAL, "sr_cad_query: NULL queries");
    if (rc == SR_OK) memcpy(c->step_q, q, sizeof(float) * (size_t)qn);
    put_status(c->step_q + nqf - 1, rc);
    sr_tp_req **reqs = c->step_reqs;
    for (int s = 0; s < c->k && trc == SR_OK; s++) {
        if ((trc = sr_tp_irecv(c->tp, c->step_in + s * nof, nof * (int64_t)sizeof(float), c->w + s, c->tag + TAG_OUT,
                               &reqs[2 * s])) == SR_OK)
            trc = sr_tp_isend(c->tp, c->step_q, nqf * (int64_t)sizeof(float), c->w + s, c->tag + TAG_Q, &reqs[2 * s + 1]);
    }
    /* the new tokens' part meanwhile */
    sr_star_desc d = star_desc(x, c->n_threads);
    if (rc == SR_OK) rc = sr_star_attend(&d, nq, pos, q, own, n_own, o, lse, c->step_o, c->step_l);
    int wrc = sr_tp_waitall(2 * c->k, reqs);
    if (trc == SR_OK) trc = wrc;
    if (trc != SR_OK) return trc;
    for (int s = 0; s < c->k && rc == SR_OK; s++) {
        const float *in = c->step_in + s * nof;
        int st = SR_OK;
        if ((rc = get_status(in + nof - 1, c->w + s, &st)) == SR_OK)
            rc = sr_attn_merge_into(o, lse, in, in + qn, nq * x->n_head, x->head_dim);
    }
    c->st.bytes_sent += c->k * nqf * (int64_t)sizeof(float);
    c->st.bytes_recv += c->k * nof * (int64_t)sizeof(float);
    c->st.messages += c->k * (l == 0 ? 2 : 1);
    c->st.query_s += sr_now() - t0;
    return rc;
}

int sr_cad_server_stats_get(sr_cad *c, sr_cad_server_stats *out) {
    if (!c || !out) return sr_error_set(SR_EINVAL, "sr_cad_server_stats_get: NULL argument");
    if (c->rank != 0) return sr_error_set(SR_ESTATE, "sr_cad_server_stats_get: only the query worker asks the servers");
    sr_cad_cmd cmd = {.op = SR_CAD_OP_STATS};
    int64_t words[SR_CAD_WIRE_CMD_WORDS], in[SR_CAD_WIRE_STATS_WORDS];
    sr_cad_wire_cmd_encode(words, &cmd);
    int rc = SR_OK;
    for (int s = 0; s < c->k && rc == SR_OK; s++)
        if ((rc = send_words(c->tp, words, SR_CAD_WIRE_CMD_WORDS, c->w + s, c->tag + TAG_CMD)) == SR_OK &&
            (rc = recv_words(c->tp, in, SR_CAD_WIRE_STATS_WORDS, c->w + s, c->tag + TAG_CMD)) == SR_OK)
            rc = sr_cad_wire_stats_decode(in, c->w + s, &out[s]);
    return rc;
}

void sr_cad_get_stats(const sr_cad *c, sr_cad_stats *out) { *out = c->st; }

int sr_cad_kv_estimate(const sr_cad_shape *sh, int64_t n_ctx, int workers, int n_servers, int64_t *tokens,
                       int64_t *blocks) {
    if (!sh || !tokens || !blocks || workers < 1 || n_servers < 1 || sh->kv_block < 1)
        return sr_error_set(SR_EINVAL, "sr_cad_kv_estimate: NULL argument, or %d workers and %d servers (1 or more "
                            "each) with kv blocks of %lld tokens", workers, n_servers, (long long)sh->kv_block);
    sr_cad_cmd c = {.op = SR_CAD_OP_PREFILL, .n_ctx = n_ctx, .workers = workers, .n_layer = sh->n_layer,
                    .n_head = sh->n_head, .n_head_kv = sh->n_head_kv, .head_dim = sh->head_dim,
                    .kv_dtype = sh->kv_dtype, .kv_block = sh->kv_block,
                    .chunk = sh->chunk > 0 ? sh->chunk : SR_CAD_DEFAULT_CHUNK, .max_step = 1};
    layout y;
    int rc = layout_build(&y, &c, n_servers);
    if (rc != SR_OK) return rc;
    for (int s = 0; s < n_servers; s++) {
        /* as sr_kv_reserve fills a server's cache, piece by piece in position order */
        int64_t end = -1, fill = 0, bs = sh->kv_block;
        tokens[s] = blocks[s] = 0;
        for (int64_t i = 0; i < y.n_pieces; i++) {
            const piece *p = &y.pieces[i];
            if (p->server != s) continue;
            int64_t len = p->len;
            if (p->pos0 == end && fill < bs) {
                int64_t take = len < bs - fill ? len : bs - fill;
                fill += take;
                len -= take;
            }
            if (len > 0) {
                blocks[s] += (len + bs - 1) / bs;
                fill = len % bs ? len % bs : bs;
            }
            tokens[s] += p->len;
            end = p->pos0 + p->len;
        }
    }
    layout_free(&y);
    return SR_OK;
}
