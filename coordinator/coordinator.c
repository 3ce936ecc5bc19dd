/* coordinator: the context table, the workers, and the API methods (see
 * coordinator.h). */
#include "coordinator/coordinator.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "coordinator/front.h"
#include "coordinator/grpc.h"
#include "coordinator/metrics.h"
#include "coordinator/openai.h"
#include "coordinator/placement.h"
#include "net/conn.h"
#include "net/join.h"
#include "grpc/health/v1/health.pb-c.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "starring/v1/starring.pb-c.h"
#include "tokenizer/tokenizer.h"
#include "worker/cp.h"
#include "worker/placement.h"

typedef struct coord coord;
typedef struct cctx cctx;
typedef struct req req;

enum { CTX_PREFILLING = 0, CTX_READY = 1 };
enum { REQ_CREATE = 0, REQ_GENERATE = 1 };

typedef struct {
    sr_conn *conn;          /* set at the Welcome */
    int joined, ok, lost;
    int leaving;            /* it asked to leave: no new context goes on it */
    double last_beat;
    int64_t data_sent, data_received; /* its data-plane bytes, as of its last heartbeat */
    int64_t kv_budget;
    double busy_s;          /* attention server: seconds computing attention, and the KV it holds, */
    int64_t attn_kv_tokens, attn_kv_bytes; /* as of its last heartbeat */
    uint8_t *addr;          /* its block of the address exchange's round, until all are in */
    size_t addr_len;
} wslot;

/* A control connection: the join's challenge and deadline, then its worker. */
typedef struct peer {
    coord *co;
    sr_conn *conn;
    uv_timer_t deadline;
    unsigned char nonce[SR_JOIN_NONCE_BYTES];
    int slot;               /* the worker's index; -1 until the Welcome */
    int pending;            /* counted in n_pending: the Welcome is not out yet */
    struct peer *next;
} peer;

struct cctx {
    uint64_t id;
    char sid[20];
    char *name;
    int mode, chat, ephemeral;
    int64_t block_size, anchor_size;
    char *text;             /* a text context keeps its text: questions are encoded after it */
    int32_t *tokens;        /* (n_tokens + n_ext) its token ids, for the prompts that start with them */
    size_t cap_tokens;      /* bytes */
    int64_t n_tokens;
    int64_t n_ext;          /* tokens fed by questions since, kept on the query worker (sr_cp_rewind_keep) */
    int kept;               /* the prompt of a request that asked for reuse, kept resident */
    int state;
    int n_prefilled, failed_rc;
    char failed[512];
    double prefill_s, last_used;
    int64_t questions;
    int64_t *kv_tokens, *kv_bytes, *est_bytes; /* (workers) by worker index; 0 off its group */
    int64_t plane;          /* the data plane its group is on */
    int *grp;               /* (n_grp) its workers, by group rank: only they get its commands; grp[0] is its query worker */
    int n_grp;
    req *creator;           /* the request waiting for the prefill */
    req *active;            /* the question running on it */
    req *wait_head, *wait_tail;
    int dropping;
    cctx *next;
};

struct req {
    coord *co;
    int kind;
    sr_sink *sink;          /* NULL once the client is gone or answered */
    sr_sink own;            /* the sink of a gRPC call (data: the call) */
    int working;            /* a tokenizing job is out */
    int admitted;           /* holds a queue slot */
    int linked;             /* a context refers to it */
    double t0, t_first;
    /* CreateContext */
    int got_options;
    Starring__V1__ContextOptions opts;
    char *name;
    char *text;
    size_t n_text, cap_text;
    int32_t *tokens;
    int64_t n_tok;
    size_t cap_tok;     /* bytes */
    /* Generate */
    Starring__V1__GenerateRequest *g; /* the gRPC request, until it is asked */
    char *prompt;           /* with invalid UTF-8 replaced */
    char *stop;             /* NULL: none */
    int32_t max_tokens, top_k;
    float temperature, top_p;
    uint64_t seed;
    int reuse;              /* sr_coord_question.reuse */
    int64_t cached;         /* context tokens that were resident already */
    int64_t keep;           /* of the context's n_ext, those this question follows */
    int extend;             /* once answered, its question tokens join the context's n_ext */
    cctx *ctx;
    uint64_t gen;
    int32_t *q;
    int64_t nq;
    int running, cancel_sent;
    int ready;              /* its token is out and it waits for a batched decode step */
    int in_step;            /* in the batched step in flight, whose token has not come back */
    uint64_t last_step;     /* the batched step it was last in: the longest waiting go first */
    int64_t n_out;
    req *next_wait;
    req *next;              /* in the coordinator's list of running questions */
};

/* A context that is gone without a client's Drop, so that its id gets a
 * better answer than "no context". */
typedef struct evicted {
    char sid[20];
    double when;
    char why[200];          /* "was ..." */
    struct evicted *next;
} evicted;

typedef struct watcher {
    sr_grpc_call *call;
    int last;
    struct watcher *next;
} watcher;

struct coord {
    const sr_coord_opts *o;
    uv_loop_t *loop;
    uv_tcp_t control;
    uv_timer_t tick, drain;
    uv_signal_t sigint, sigterm;
    sr_grpc *grpc;
    sr_openai *http;
    sr_metrics *metrics;
    char model_name[128];
    sr_gguf *gguf;
    sr_tokenizer *tok;
    sr_model_config cfg;
    int64_t block_bytes;    /* one KV block of the workers' caches */
    wslot *w;
    peer *peers;
    unsigned char key_salt[SR_JOIN_NONCE_BYTES]; /* the data plane's key, with the secret (net/join.h) */
    int64_t x_round;        /* address exchange rounds done */
    /* the newest data plane: every new context goes on it (under mpirun
     * plane 0, the job's); its workers in rank order, and how many have
     * said it is open */
    int64_t plane;
    int *plane_w;
    int plane_n, plane_acks;
    int started;            /* --workers joined once (and their plane opened): the cluster serves while one is up */
    int64_t beat_seq;       /* the coordinator's heartbeats to the workers */
    int n_ready;
    int broken;             /* a worker is gone for good (mpirun) or could not start */
    char broken_why[256];
    int fixed;              /* the workers asked for their indexes (mpirun ranks): a loss cannot be mended */
    int n_pending;          /* control connections that have not proved the secret yet */
    double refused_at;      /* when the last refusal over max_pending was logged */
    int64_t refused_quiet;  /* refusals since, not logged */
    char lost_why[256];     /* the last loss, until the workers are all up again */
    cctx *ctxs;
    req *gens;
    evicted *evicted;
    watcher *watchers;
    uint64_t next_id, next_gen;
    int step_out;           /* generations of the batched decode step in flight yet to answer */
    uint64_t step_seq;      /* batched decode steps sent */
    int64_t step_most;      /* the most generations in one of them (logged as it grows) */
    int in_flight;
    int64_t prefills, prefill_tokens, generations, generated, evictions, cancelled;
    int stopping;
    int draining;           /* SIGTERM: refuse new requests, let running ones finish until drain_end */
    double drain_end;
    int told_ready;
};

/* ------------------------------------------------------------ helpers */

static int serving(const coord *co) { return !co->broken && co->started && co->n_ready > 0; }

/* Whether two contexts are on the same workers (one transport on each of them). */
static int same_grp(const cctx *a, const cctx *b) {
    return a->plane == b->plane && a->n_grp == b->n_grp && memcmp(a->grp, b->grp, sizeof *a->grp * (size_t)a->n_grp) == 0;
}

static int in_grp(const cctx *c, int w) {
    for (int i = 0; i < c->n_grp; i++)
        if (c->grp[i] == w) return 1;
    return 0;
}

static int rc_status(int rc) {
    switch (rc) {
    case SR_EINVAL: return SR_GRPC_INVALID_ARGUMENT;
    case SR_ERANGE:
    case SR_ENOMEM: return SR_GRPC_RESOURCE_EXHAUSTED;
    case SR_ECOMM: return SR_GRPC_UNAVAILABLE;
    default: return SR_GRPC_INTERNAL;
    }
}

/* Invalid UTF-8 becomes U+FFFD (in place when it does not grow). Returns a
 * malloc'ed copy. */
static char *utf8_clean(const char *s, size_t n, size_t *out_n) {
    char *o = malloc(3 * n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = len > 0 && i + len <= n && c != 0;
        for (size_t j = 1; ok && j < len; j++) ok = ((unsigned char)s[i + j] & 0xc0) == 0x80;
        if (ok && len > 1) {
            uint32_t cp = c & (0x7f >> len);
            for (size_t j = 1; j < len; j++) cp = cp << 6 | ((unsigned char)s[i + j] & 0x3f);
            ok = cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) &&
                 cp >= (len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u);
        }
        if (ok) {
            memcpy(o + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

int sr_coord_serving(const sr_coord *co, char *msg, size_t cap) {
    if (serving(co)) return 1;
    if (co->broken) snprintf(msg, cap, "%s", co->broken_why);
    else if (*co->lost_why)
        snprintf(msg, cap, "%s; %d of %d workers have joined again, the cluster serves when all have", co->lost_why,
                 co->n_ready, co->o->workers);
    else if (co->started) snprintf(msg, cap, "no worker is up (of %d)", co->o->workers);
    else snprintf(msg, cap, "%d of %d workers are up: the others are joining or loading the model", co->n_ready, co->o->workers);
    return 0;
}

const sr_tokenizer *sr_coord_tokenizer(const sr_coord *co) { return co->tok; }
const char *sr_coord_model_name(const sr_coord *co) { return co->model_name; }

static void ctx_message(const coord *co, const cctx *c, Starring__V1__Context *m, Starring__V1__Shard *sh,
                        Starring__V1__Shard **shp) {
    starring__v1__context__init(m);
    m->id = (char *)c->sid;
    m->n_tokens = c->n_tokens;
    m->mode = (char *)sr_cp_mode_name(c->mode);
    m->state = c->dropping ? "dropping" : c->state == CTX_READY ? "ready" : "prefilling";
    m->name = c->name ? c->name : "";
    m->chat = c->chat;
    m->questions = c->questions;
    for (int i = 0; i < c->n_grp; i++) {
        starring__v1__shard__init(&sh[i]);
        sh[i].worker = c->grp[i];
        sh[i].kv_tokens = c->kv_tokens[c->grp[i]];
        sh[i].kv_bytes = c->kv_bytes[c->grp[i]];
        shp[i] = &sh[i];
    }
    int n = c->n_grp;
    /* a cad context's KV is on the attention servers, the last workers */
    for (int w = co->o->workers - co->o->attn_servers; c->mode == SR_CP_CAD && w < co->o->workers; w++, n++) {
        starring__v1__shard__init(&sh[n]);
        sh[n].worker = w;
        sh[n].kv_tokens = c->kv_tokens[w];
        sh[n].kv_bytes = c->kv_bytes[w];
        shp[n] = &sh[n];
    }
    m->n_shards = (size_t)n;
    m->shards = shp;
}

/* ------------------------------------------------------------ cad */

/* The workers that run the model: all but the attention servers. */
static int model_workers(const coord *co) { return co->o->workers - co->o->attn_servers; }
/* Whether worker w is an attention server: the last --attn-servers workers. */
static int attn_server(const coord *co, int w) { return w >= model_workers(co); }

/* The commands on contexts, which attention servers never get: the query
 * worker's data-plane commands carry what they need (daemon/attnd.h). */
static int context_frame(const sr_frame *f) {
    switch (f->kind_case) {
    case STARRING__CONTROL__V1__FRAME__KIND_PREFILL:
    case STARRING__CONTROL__V1__FRAME__KIND_PREFILL_CANCEL:
    case STARRING__CONTROL__V1__FRAME__KIND_BEGIN:
    case STARRING__CONTROL__V1__FRAME__KIND_STEP:
    case STARRING__CONTROL__V1__FRAME__KIND_CANCEL:
    case STARRING__CONTROL__V1__FRAME__KIND_DROP: return 1;
    default: return 0;
    }
}

/* An attention server's KV of a cad context, estimated from the plan the
 * prefill builds (est_bytes[w] of the servers; the model workers hold none). */
static int cad_estimate(coord *co, cctx *c) {
    int W = model_workers(co), K = co->o->attn_servers;
    int64_t tokens[K], blocks[K];
    sr_cad_shape sh = {.n_layer = co->cfg.n_layer, .n_head = co->cfg.n_head, .n_head_kv = co->cfg.n_head_kv,
                       .head_dim = co->cfg.head_dim, .kv_dtype = SR_DT_F16, .kv_block = SR_KV_DEFAULT_BLOCK,
                       .chunk = c->block_size};
    int rc = sr_cad_kv_estimate(&sh, c->n_tokens, W, K, tokens, blocks);
    for (int s = 0; rc == SR_OK && s < K; s++) c->est_bytes[W + s] = blocks[s] * co->block_bytes;
    return rc;
}

/* An attention server's Prefilled: its KV of a cad context, whether the
 * model workers' replies are in or not (only theirs make it ready). */
static void cad_prefilled(coord *co, int w, const Starring__Control__V1__Prefilled *p) {
    for (cctx *c = co->ctxs; c; c = c->next)
        if (c->id == p->ctx && c->mode == SR_CP_CAD) {
            c->kv_tokens[w] = p->kv_tokens;
            c->kv_bytes[w] = p->kv_bytes;
        }
}

/* Sends one frame to the n workers listed (NULL: to every worker). */
static void to_list(coord *co, const sr_frame *f, const int *list, int n) {
    uint8_t *b;
    size_t nb;
    if (sr_frame_pack(f, &b, &nb) != SR_OK) {
        SR_ERROR("cannot pack a command: %s", sr_error_msg());
        return;
    }
    for (int k = 0; k < (list ? n : co->o->workers); k++) {
        int i = list ? list[k] : k;
        if (!co->w[i].conn || (attn_server(co, i) && context_frame(f))) continue;
        uint8_t *copy = malloc(nb);
        if (!copy) continue;
        memcpy(copy, b, nb);
        sr_conn_send_packed(co->w[i].conn, copy, nb);
        sr_metrics_add(co->metrics, SR_METRIC_CONTROL_OUT_BYTES, (int64_t)nb);
    }
    free(b);
}

/* Sends one frame to every worker, or to worker `only` (>= 0). */
static void to_workers(coord *co, const sr_frame *f, int only) { to_list(co, f, only >= 0 ? &only : NULL, 1); }

/* Sends one of context c's commands to its group. */
static void to_group(coord *co, const cctx *c, const sr_frame *f) { to_list(co, f, c->grp, c->n_grp); }

#define FRAME(var, kind, KIND, Type, INIT)                                                        \
    Type var = INIT;                                                                            \
    sr_frame var##_f = STARRING__CONTROL__V1__FRAME__INIT;                                      \
    var##_f.kind_case = STARRING__CONTROL__V1__FRAME__KIND_##KIND;                              \
    var##_f.kind = &var

/* ------------------------------------------------------------ requests */

static void req_free_if_done(req *r) {
    if (r->sink || r->working || r->linked) return;
    if (r->admitted) r->co->in_flight--;
    free(r->name);
    free((char *)r->opts.mode);
    free(r->prompt);
    free(r->stop);
    free(r->text);
    free(r->tokens);
    free(r->q);
    if (r->g) starring__v1__generate_request__free_unpacked(r->g, NULL);
    free(r);
}

static void req_finish(req *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_finish(req *r, int status, const char *fmt, ...) {
    if (r->sink) {
        char msg[1024] = "";
        if (fmt) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(msg, sizeof msg, fmt, ap);
            va_end(ap);
        }
        sr_sink *s = r->sink;
        r->sink = NULL;
        s->req = NULL;
        s->ops->finish(s, status, status == SR_GRPC_OK ? NULL : msg);
    }
    req_free_if_done(r);
}

static void send_progress_ctx(req *r, int64_t done, int64_t total) {
    if (r->sink && r->sink->ops->progress) r->sink->ops->progress(r->sink, done, total);
}

/* ------------------------------------------------------------ contexts */

static cctx *ctx_find(coord *co, const char *sid) {
    for (cctx *c = co->ctxs; c; c = c->next)
        if (!c->ephemeral && strcmp(c->sid, sid) == 0) return c;
    return NULL;
}

static cctx *ctx_by_id(coord *co, uint64_t id) {
    for (cctx *c = co->ctxs; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static void ctx_free(cctx *c) {
    free(c->name);
    free(c->text);
    free(c->tokens);
    free(c->kv_tokens);
    free(c->kv_bytes);
    free(c->est_bytes);
    free(c->grp);
    free(c);
}

/* Removes a context from the table and tells the workers to drop it. */
static void ctx_drop(coord *co, cctx *c, const char *why) {
    for (cctx **p = &co->ctxs; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    FRAME(d, drop, DROP, Starring__Control__V1__Drop, STARRING__CONTROL__V1__DROP__INIT);
    d.ctx = c->id;
    to_group(co, c, &d_f);
    if (why) SR_INFO("context %s (%lld tokens) dropped: %s", c->sid, (long long)c->n_tokens, why);
    for (req *r = c->wait_head, *n; r; r = n) {
        n = r->next_wait;
        r->linked = 0;
        req_finish(r, SR_GRPC_NOT_FOUND, "context %s was dropped", c->sid);
    }
    ctx_free(c);
}

/* KV bytes each worker will hold for n tokens in this placement. */
static int ctx_estimate(coord *co, cctx *c) {
    int W = c->n_grp;
    int64_t bs = SR_KV_DEFAULT_BLOCK;
    if (c->mode == SR_CP_CAD) return cad_estimate(co, c);
    for (int w = 0; w < W; w++) {
        int64_t blocks = 0;
        if (c->mode == SR_CP_RING) {
            sr_span sp[2];
            int rc = sr_place_zigzag(c->n_tokens, W, w, sp);
            if (rc != SR_OK) return rc;
            blocks = (sp[0].len + bs - 1) / bs + (sp[1].len + bs - 1) / bs;
        } else if (c->mode == SR_CP_STAR) {
            sr_star_place pl;
            int rc = sr_place_star(c->n_tokens, c->block_size, c->anchor_size, W, w, &pl);
            if (rc != SR_OK) return rc;
            blocks = (pl.own.len + bs - 1) / bs;
        } else if (w == SR_CP_QUERY_RANK && c->mode == SR_CP_FULL) {
            blocks = (c->n_tokens + bs - 1) / bs;
        }
        c->est_bytes[c->grp[w]] = blocks * co->block_bytes;
    }
    return SR_OK;
}

static void ctx_forget(coord *co, const cctx *c, const char *why) {
    evicted *e = calloc(1, sizeof *e);
    if (!e) return;
    snprintf(e->sid, sizeof e->sid, "%s", c->sid);
    snprintf(e->why, sizeof e->why, "%s", why);
    e->when = sr_now();
    e->next = co->evicted;
    co->evicted = e;
}

/* Makes room for c under the KV budget, evicting idle contexts least
 * recently used first. Returns a gRPC status (and a message in msg). */
static int ctx_admit(coord *co, cctx *c, char *msg, size_t cap) {
    int W = co->o->workers;
    int64_t budget = co->o->kv_budget;
    if (budget <= 0) return SR_GRPC_OK;
    for (int w = 0; w < W; w++)
        if (c->est_bytes[w] > budget) {
            snprintf(msg, cap, "a context of %lld tokens in %s mode needs %lld bytes of KV on worker %d; the budget is "
                     "%lld bytes per worker (--kv-budget): use more workers or a shorter context",
                     (long long)c->n_tokens, sr_cp_mode_name(c->mode), (long long)c->est_bytes[w], w, (long long)budget);
            return SR_GRPC_RESOURCE_EXHAUSTED;
        }
    for (;;) {
        int fits = 1;
        for (int w = 0; w < W && fits; w++) {
            int64_t used = c->est_bytes[w];
            for (cctx *o = co->ctxs; o; o = o->next) used += o->state == CTX_READY ? o->kv_bytes[w] : o->est_bytes[w];
            fits = used <= budget;
        }
        if (fits) return SR_GRPC_OK;
        cctx *lru = NULL;
        for (cctx *o = co->ctxs; o; o = o->next)
            if (o->state == CTX_READY && !o->ephemeral && !o->active && !o->wait_head && !o->dropping &&
                (!lru || o->last_used < lru->last_used))
                lru = o;
        if (!lru) {
            snprintf(msg, cap, "the KV budget (--kv-budget %lld bytes per worker) is held by contexts in use; "
                     "try again when they are answered", (long long)budget);
            return SR_GRPC_RESOURCE_EXHAUSTED;
        }
        ctx_forget(co, lru, "evicted to make room under the KV budget (--kv-budget, least recently used first)");
        co->evictions++;
        SR_WARN("evicting context %s (%lld tokens, idle %.1f s) to make room for %lld tokens under --kv-budget",
                lru->sid, (long long)lru->n_tokens, sr_now() - lru->last_used, (long long)c->n_tokens);
        ctx_drop(co, lru, NULL);
    }
}

static void not_found(coord *co, req *r, const char *sid) {
    for (evicted *e = co->evicted; e; e = e->next)
        if (strcmp(e->sid, sid) == 0) {
            req_finish(r, SR_GRPC_NOT_FOUND, "context %s was %s %.0f s ago: upload it again", sid, e->why,
                       sr_now() - e->when);
            return;
        }
    req_finish(r, SR_GRPC_NOT_FOUND, "no context '%s' (ListContexts shows the resident ones)", sid);
}

/* ------------------------------------------------------------ questions */

static void gen_start(coord *co, req *r);

static void gen_next(coord *co, cctx *c) {
    c->active = NULL;
    if (c->ephemeral || (c->dropping && !c->wait_head)) {
        ctx_drop(co, c, c->ephemeral ? NULL : "dropped by a client");
        return;
    }
    if (c->wait_head) {
        req *r = c->wait_head;
        if (!(c->wait_head = r->next_wait)) c->wait_tail = NULL;
        gen_start(co, r);
    }
}

static void gen_start(coord *co, req *r) {
    cctx *c = r->ctx;
    if (!r->sink) { /* the client left while it waited */
        r->linked = 0;
        req_free_if_done(r);
        if (!c->active) gen_next(co, c);
        return;
    }
    c->active = r;
    c->last_used = sr_now();
    c->questions++;
    r->running = 1;
    r->gen = ++co->next_gen;
    r->next = co->gens;
    co->gens = r;
    FRAME(b, begin, BEGIN, Starring__Control__V1__Begin, STARRING__CONTROL__V1__BEGIN__INIT);
    b.gen = r->gen;
    b.ctx = c->id;
    b.n_query = (size_t)r->nq;
    b.query = r->q;
    b.max_tokens = r->max_tokens > 0 ? r->max_tokens : co->o->default_tokens;
    b.temperature = r->temperature;
    b.top_k = r->top_k;
    b.top_p = r->top_p;
    b.seed = r->seed;
    b.stop = r->stop ? r->stop : "";
    b.keep = r->keep;
    c->n_ext = r->keep; /* what the workers keep of it from now on */
    to_group(co, c, &b_f);
}

static req *gen_find(coord *co, uint64_t gen) {
    for (req *r = co->gens; r; r = r->next)
        if (r->gen == gen) return r;
    return NULL;
}

static void gen_unlist(coord *co, req *r) {
    for (req **p = &co->gens; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
}

/* The client of a running question is gone: stop it before its next step. */
static void gen_cancel(coord *co, req *r) {
    if (!r->running || r->cancel_sent) return;
    r->cancel_sent = 1;
    r->ready = 0; /* no more steps: the Cancel ends it at the query worker */
    co->cancelled++;
    FRAME(k, cancel, CANCEL, Starring__Control__V1__Cancel, STARRING__CONTROL__V1__CANCEL__INIT);
    k.gen = r->gen;
    to_workers(co, &k_f, r->ctx->grp[0]);
}

/* The generation has answered for the batched step it was in. */
static void step_answered(coord *co, req *r) {
    if (!r->in_step) return;
    r->in_step = 0;
    co->step_out--;
}

/* Once every generation of the last batched step has answered: the next
 * step, of every generation that waits for one (the longest waiting first,
 * up to --max-batch-decode) whose context is on the same workers as the
 * longest waiting one's, in one Step to those workers, so that they run all
 * their next tokens in one forward pass. A generation whose token comes
 * back while a step is out, or of other workers, joins a later one. */
static void step_dispatch(coord *co) {
    if (co->step_out > 0) return;
    int64_t cap = co->o->max_batch_decode > 0 ? co->o->max_batch_decode : 16;
    if (cap > co->o->max_batch) cap = co->o->max_batch;
    uint64_t *gens = malloc(sizeof *gens * (size_t)cap), *ctxs = malloc(sizeof *ctxs * (size_t)cap);
    if (!gens || !ctxs) {
        /* the generations wait for the next answer to try again; one is always out when any waits */
        SR_ERROR("out of memory for a decode step of %lld generations", (long long)cap);
        free(gens);
        free(ctxs);
        return;
    }
    int64_t n = 0;
    const cctx *first = NULL;
    co->step_seq++;
    for (; n < cap; n++) {
        req *pick = NULL;
        for (req *r = co->gens; r; r = r->next)
            if (r->ready && r->sink && !r->cancel_sent && (!first || same_grp(first, r->ctx)) &&
                (!pick || r->last_step < pick->last_step))
                pick = r;
        if (!pick) break;
        pick->ready = 0;
        pick->in_step = 1;
        pick->last_step = co->step_seq;
        gens[n] = pick->gen;
        ctxs[n] = pick->ctx->id;
        first = pick->ctx;
    }
    if (n > 0) {
        FRAME(s, step, STEP, Starring__Control__V1__Step, STARRING__CONTROL__V1__STEP__INIT);
        s.n_gens = s.n_ctxs = (size_t)n;
        s.gens = gens;
        s.ctxs = ctxs;
        co->step_out = (int)n;
        to_group(co, first, &s_f);
        if (n > co->step_most) {
            co->step_most = n;
            SR_INFO("batched decode: a step of %lld generations, the most so far (--max-batch-decode %lld)",
                    (long long)n, (long long)cap);
        }
    }
    free(gens);
    free(ctxs);
}

static void on_token(coord *co, int w, const Starring__Control__V1__TokenOut *t) {
    req *r = gen_find(co, t->gen);
    if (!r || r->ctx->grp[0] != w) return;
    step_answered(co, r);
    if (r->sink) {
        if (!r->t_first) r->t_first = sr_now();
        size_t n;
        char *text = utf8_clean((const char *)t->text.data, t->text.len, &n);
        r->sink->ops->token(r->sink, t->id, text ? text : "");
        free(text);
        if (t->id >= 0) r->n_out++;
    }
    if (t->more && !r->sink) gen_cancel(co, r);
    /* full: one rank holds it all; cad: the servers answer one context's steps */
    if (t->more && r->sink && (r->ctx->mode == SR_CP_FULL || r->ctx->mode == SR_CP_CAD)) { /* a step of its own */
        FRAME(s, step, STEP, Starring__Control__V1__Step, STARRING__CONTROL__V1__STEP__INIT);
        s.gen = r->gen;
        s.ctx = r->ctx->id;
        to_group(co, r->ctx, &s_f);
    } else if (t->more && r->sink) {
        r->ready = 1;
    }
    step_dispatch(co);
}

static void *grow_bytes(void *buf, size_t *cap, size_t need);

/* An answered question's tokens join its context: the next question keeps
 * their KV (Begin.keep) and a prompt that starts with them reuses it. */
static void ctx_extend(cctx *c, const int32_t *q, int64_t nq) {
    size_t need = sizeof *q * (size_t)(c->n_tokens + c->n_ext + nq);
    int32_t *t = grow_bytes(c->tokens, &c->cap_tokens, need);
    if (!t) return; /* then only the context itself is matched */
    c->tokens = t;
    memcpy(t + c->n_tokens + c->n_ext, q, sizeof *q * (size_t)nq);
    c->n_ext += nq;
}

static void on_done(coord *co, int w, const Starring__Control__V1__GenDone *d) {
    req *r = gen_find(co, d->gen);
    if (!r || r->ctx->grp[0] != w) return;
    gen_unlist(co, r);
    step_answered(co, r); /* a generation that failed in its step answers with its GenDone */
    r->ready = 0;
    cctx *c = r->ctx;
    r->running = 0;
    r->linked = 0;
    co->generations++;
    co->generated += d->generated_tokens;
    sr_metrics_add(co->metrics, SR_METRIC_PROMPT_TOKENS, d->prompt_tokens);
    sr_metrics_add(co->metrics, SR_METRIC_GENERATED_TOKENS, d->generated_tokens);
    sr_metrics_observe(co->metrics, SR_METRIC_DECODE_SECONDS, d->decode_s);
    if (r->t_first) sr_metrics_observe(co->metrics, SR_METRIC_TTFT_SECONDS, r->t_first - r->t0);
    if (r->sink) {
        if (d->status != SR_OK) {
            req_finish(r, rc_status(d->status), "the question failed on the query worker: %s", d->error);
        } else {
            static const char *const reasons[] = {"length", "eos", "stop", "cancelled"};
            sr_sink_done dn = {
                .context_id = c->ephemeral ? "" : c->sid,
                .stop_reason = reasons[d->stop_reason >= 0 && d->stop_reason <= 3 ? d->stop_reason : 0],
                .prompt_tokens = d->prompt_tokens,
                .generated_tokens = d->generated_tokens,
                .context_tokens = c->n_tokens,
                .cached_tokens = r->cached,
                .prefill_reused = r->cached > 0,
                .prefill_s = r->cached ? 0 : c->prefill_s,
                .time_to_first_token_s = r->t_first ? r->t_first - r->t0 : 0,
                .tokens_per_s = d->decode_s > 0 ? (double)(d->generated_tokens > 1 ? d->generated_tokens - 1 : 0) / d->decode_s : 0,
            };
            r->sink->ops->done(r->sink, &dn);
            if (r->extend && !d->cancelled) ctx_extend(c, r->q, r->nq);
            req_finish(r, SR_GRPC_OK, NULL);
        }
    } else {
        req_free_if_done(r);
    }
    gen_next(co, c);
    step_dispatch(co);
}

/* ------------------------------------------------------------ prefill */

/* Room for one more kept prompt: past --keep-prompts, the least recently
 * used idle one goes. */
static void keep_room(coord *co) {
    for (;;) {
        int n = 0;
        cctx *lru = NULL;
        for (cctx *o = co->ctxs; o; o = o->next) {
            if (!o->kept) continue;
            n++;
            if (o->state == CTX_READY && !o->active && !o->wait_head && !o->dropping && (!lru || o->last_used < lru->last_used))
                lru = o;
        }
        if (n < co->o->keep_prompts || !lru) return;
        ctx_drop(co, lru, "the oldest kept prompt, past --keep-prompts");
    }
}

/* The resident context with the most tokens that the n tokens start with
 * (fewer than n: the rest is the question), or NULL; *len tells how many
 * matched and *keep how many of them its earlier questions fed. */
static cctx *ctx_prefix(coord *co, const int32_t *tokens, int64_t n, int64_t *len, int64_t *keep) {
    cctx *best = NULL;
    *len = *keep = 0;
    for (cctx *c = co->ctxs; c; c = c->next) {
        if (c->state != CTX_READY || c->ephemeral || c->dropping || !c->tokens) continue;
        for (int64_t ext = c->n_ext;; ext = 0) {
            int64_t m = c->n_tokens + ext;
            if (m < n && m > *len && memcmp(c->tokens, tokens, sizeof *tokens * (size_t)m) == 0) {
                best = c;
                *len = m;
                *keep = ext;
                break;
            }
            if (ext == 0) break;
        }
    }
    return best;
}

static int worker_up(const coord *co, int w) {
    return co->w[w].ok && !co->w[w].lost && !co->w[w].leaving && co->w[w].conn;
}

/* Places c on the newest plane: want (0: --context-workers, then all) of
 * its model workers that are up, those with the fewest contexts first. A
 * cad context takes every model worker in order (its query worker first,
 * the attention servers after them on the job's data plane). */
static int ctx_place(coord *co, cctx *c, int want, int mode) {
    int W = co->o->workers, n = 0;
    int *cand = malloc(sizeof *cand * (size_t)W);
    int64_t *load = calloc((size_t)W, sizeof *load);
    c->grp = malloc(sizeof *c->grp * (size_t)W);
    if (!cand || !load || !c->grp) {
        free(cand);
        free(load);
        return sr_error_set(SR_ENOMEM, "out of memory placing a context");
    }
    for (int i = 0; i < co->plane_n; i++)
        if (worker_up(co, co->plane_w[i]) && !attn_server(co, co->plane_w[i])) cand[n++] = co->plane_w[i];
    if (mode == SR_CP_CAD) {
        free(cand);
        free(load);
        for (int i = 0; i < model_workers(co); i++)
            if (!worker_up(co, i)) return sr_error_set(SR_ECOMM, "model worker %d is not up: a cad context needs all", i);
        for (int i = 0; i < model_workers(co); i++) c->grp[i] = i;
        c->n_grp = model_workers(co);
        c->plane = co->plane;
        return SR_OK;
    }
    for (cctx *o = co->ctxs; o; o = o->next)
        for (int i = 0; i < o->n_grp; i++) load[o->grp[i]]++;
    int k = sr_coord_place(cand, n, load, want > 0 ? want : co->o->context_workers, c->grp);
    free(cand);
    free(load);
    if (k < 0) return k;
    if (k == 0) return sr_error_set(SR_ECOMM, "no worker of data plane %lld is up", (long long)co->plane);
    c->n_grp = k;
    c->plane = co->plane;
    return SR_OK;
}

static void prefill_start(coord *co, req *r, int32_t *tokens, int64_t n, int32_t *q, int64_t nq) {
    char msg[512];
    const Starring__V1__ContextOptions *o = &r->opts;
    const char *mode_name = o && o->mode && *o->mode ? o->mode : co->o->mode;
    int mode = sr_cp_mode_parse(mode_name);
    int64_t block = o ? o->block_size : 0, anchor = o ? o->anchor_size : 0;
    if (!serving(co)) {
        free(tokens);
        free(q);
        sr_coord_serving(co, msg, sizeof msg);
        req_finish(r, SR_GRPC_UNAVAILABLE, "%s (Health/Check says SERVING when they are up)", msg);
        return;
    }
    if (n > co->o->max_context) {
        free(tokens);
        free(q);
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "the context has %lld tokens; this server takes at most %lld (--max-context)",
                   (long long)n, (long long)co->o->max_context);
        return;
    }
    if (r->opts.workers < 0 || r->opts.workers > 65536) {
        free(tokens);
        free(q);
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "ContextOptions.workers %d is out of range 0..65536 (0: the server's "
                   "--context-workers)", r->opts.workers);
        return;
    }
    cctx *c = calloc(1, sizeof *c);
    int W = co->o->workers;
    if (!c || !(c->kv_tokens = calloc((size_t)W, sizeof(int64_t))) || !(c->kv_bytes = calloc((size_t)W, sizeof(int64_t))) ||
        !(c->est_bytes = calloc((size_t)W, sizeof(int64_t))) || ctx_place(co, c, r->opts.workers, mode) != SR_OK) {
        int unavailable = c && c->kv_tokens && c->kv_bytes && c->est_bytes && c->grp;
        snprintf(msg, sizeof msg, "%s", unavailable ? sr_error_msg() : "out of memory for a context");
        if (c) ctx_free(c);
        free(tokens);
        free(q);
        req_finish(r, unavailable ? SR_GRPC_UNAVAILABLE : SR_GRPC_RESOURCE_EXHAUSTED, "%s", msg);
        return;
    }
    sr_cp_opts copts = {.mode = mode, .block_size = block, .anchor_size = anchor, .attn_servers = co->o->attn_servers};
    int64_t rows = sr_cp_batch_rows(&copts, n, mode == SR_CP_CAD ? co->o->workers : c->n_grp);
    if (rows > co->o->max_batch) {
        free(tokens);
        free(q);
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "%s mode holds each worker's share in one batch: %lld tokens over %d workers "
                   "need %lld rows, the workers have %lld (--batch); use star mode or more workers",
                   sr_cp_mode_name(mode), (long long)n, c->n_grp, (long long)rows, (long long)co->o->max_batch);
        ctx_free(c);
        return;
    }
    c->id = ++co->next_id;
    snprintf(c->sid, sizeof c->sid, "%016llx", (unsigned long long)c->id);
    c->mode = mode;
    c->block_size = block;
    c->anchor_size = anchor;
    c->n_tokens = n;
    c->kept = r->kind == REQ_GENERATE && r->reuse && co->o->keep_prompts > 0;
    c->ephemeral = r->kind == REQ_GENERATE && !c->kept;
    c->chat = r->opts.chat;
    c->last_used = sr_now();
    if (r->kind == REQ_CREATE) {
        c->name = r->name;
        r->name = NULL;
        c->text = r->text;
        r->text = NULL;
    }
    int st = ctx_estimate(co, c);
    if (st != SR_OK) {
        snprintf(msg, sizeof msg, "%s", sr_error_msg());
        st = SR_GRPC_INVALID_ARGUMENT;
    } else {
        st = ctx_admit(co, c, msg, sizeof msg);
    }
    if (st == SR_GRPC_OK && c->kept) keep_room(co);
    if (st != SR_GRPC_OK) {
        ctx_free(c);
        free(tokens);
        free(q);
        req_finish(r, st, "%s", msg);
        return;
    }
    c->next = co->ctxs;
    co->ctxs = c;
    c->creator = r;
    r->linked = 1;
    r->ctx = c;
    r->q = q;
    r->nq = nq;
    send_progress_ctx(r, 0, n);
    FRAME(p, prefill, PREFILL, Starring__Control__V1__Prefill, STARRING__CONTROL__V1__PREFILL__INIT);
    p.ctx = c->id;
    p.mode = mode;
    p.block_size = block;
    p.anchor_size = anchor;
    p.n_tokens = (size_t)n;
    p.tokens = tokens;
    p.plane = c->plane;
    p.n_workers = (size_t)c->n_grp;
    p.workers = c->grp;
    to_group(co, c, &p_f);
    c->tokens = tokens;
    c->cap_tokens = sizeof *tokens * (size_t)n;
    char on[128] = "";
    for (int i = 0, at = 0; i < c->n_grp && at < (int)sizeof on - 12; i++)
        at += snprintf(on + at, sizeof on - (size_t)at, "%s%d", i ? "," : "", c->grp[i]);
    SR_INFO("context %s: %lld tokens, %s mode, prefill sent to %d workers (%s) of data plane %lld", c->sid, (long long)n,
            sr_cp_mode_name(mode), c->n_grp, on, (long long)c->plane);
}

/* The query worker's progress between two chunks of a prefill. */
static void on_progress(coord *co, int w, const Starring__Control__V1__PrefillProgress *p) {
    cctx *c = ctx_by_id(co, p->ctx);
    if (c && c->grp[0] == w && c->state == CTX_PREFILLING && c->creator && p->done < c->n_tokens)
        send_progress_ctx(c->creator, p->done, c->n_tokens);
}

/* The client of a prefill is gone: every worker stops it at its next
 * chunk; on_prefilled frees the context and the request's queue slot. */
static void prefill_cancel(coord *co, req *r) {
    cctx *c = r->ctx;
    if (!c || c->state != CTX_PREFILLING || c->creator != r) return;
    co->cancelled++;
    FRAME(k, prefill_cancel, PREFILL_CANCEL, Starring__Control__V1__PrefillCancel, STARRING__CONTROL__V1__PREFILL_CANCEL__INIT);
    k.ctx = c->id;
    to_group(co, c, &k_f);
}

static void on_prefilled(coord *co, int w, const Starring__Control__V1__Prefilled *p) {
    if (attn_server(co, w)) {
        cad_prefilled(co, w, p);
        return;
    }
    cctx *c = ctx_by_id(co, p->ctx);
    if (!c || c->state != CTX_PREFILLING || !in_grp(c, w)) return;
    c->kv_tokens[w] = p->kv_tokens;
    c->kv_bytes[w] = p->kv_bytes;
    if (p->status != SR_OK && !c->failed_rc) {
        c->failed_rc = p->status;
        snprintf(c->failed, sizeof c->failed, "worker %d: %s", w, p->error);
    }
    if (p->seconds > c->prefill_s) c->prefill_s = p->seconds;
    if (++c->n_prefilled < c->n_grp) return;
    req *r = c->creator;
    c->creator = NULL;
    r->linked = 0;
    if (c->failed_rc) {
        req_finish(r, rc_status(c->failed_rc), "prefill failed: %s", c->failed);
        ctx_drop(co, c, p->cancelled ? "its client went away during the prefill" : "its prefill failed");
        return;
    }
    c->state = CTX_READY;
    co->prefills++;
    co->prefill_tokens += c->n_tokens;
    sr_metrics_add(co->metrics, SR_METRIC_PROMPT_TOKENS, c->n_tokens);
    sr_metrics_observe(co->metrics, SR_METRIC_PREFILL_SECONDS, c->prefill_s);
    SR_INFO("context %s ready: %lld tokens prefilled in %.2f s", c->sid, (long long)c->n_tokens, c->prefill_s);
    if (!r->sink) { /* cancelled mid-prefill: nobody knows its id */
        req_free_if_done(r);
        ctx_drop(co, c, "its client went away during the prefill");
        return;
    }
    send_progress_ctx(r, c->n_tokens, c->n_tokens);
    if (r->kind == REQ_GENERATE) {
        r->linked = 1;
        gen_start(co, r);
        return;
    }
    if (r->sink->ops->ready) r->sink->ops->ready(r->sink, c->sid);
    req_finish(r, SR_GRPC_OK, NULL);
}

/* ---------------------------------------------------------- tokenizing */

typedef struct {
    uv_work_t w;
    req *r;
    char *context;          /* the context's text (a copy) */
    const char *question;   /* NULL: the text alone is a context */
    int chat, raw_question; /* raw_question: a token context, the question encoded alone */
    int rc;
    char err[512];
    int32_t *ctx, *q;
    int64_t n_ctx, n_q;
} tok_job;

static void tok_work(uv_work_t *w) {
    tok_job *j = w->data;
    coord *co = j->r->co;
    sr_error_clear();
    if (j->raw_question)
        j->rc = j->question && *j->question
                    ? sr_tok_encode(co->tok, j->question, strlen(j->question), 0, 0, &j->q, &j->n_q)
                    : SR_OK;
    else
        j->rc = sr_cp_encode(co->tok, j->context, strlen(j->context), j->question, j->chat, NULL, &j->ctx,
                             &j->n_ctx, &j->q, &j->n_q);
    if (j->rc != SR_OK) snprintf(j->err, sizeof j->err, "%s", sr_error_msg());
}

static void tok_done(uv_work_t *w, int status) {
    tok_job *j = w->data;
    req *r = j->r;
    coord *co = r->co;
    cctx *m;
    int64_t len, keep;
    r->working = 0;
    free(j->context);
    if (!r->sink || co->stopping) {
        free(j->ctx);
        free(j->q);
        free(j);
        req_free_if_done(r);
        return;
    }
    if (j->rc != SR_OK) {
        req_finish(r, rc_status(j->rc), "cannot tokenize: %s", j->err);
        free(j->ctx);
        free(j->q);
        free(j);
        return;
    }
    if (r->kind == REQ_CREATE) {
        free(j->q);
        prefill_start(co, r, j->ctx, j->n_ctx, NULL, 0);
    } else if (r->ctx) {
        free(j->ctx);
        r->q = j->q;
        r->nq = j->n_q;
        cctx *c = r->ctx;
        r->linked = 1;
        if (!c->active) {
            gen_start(co, r);
        } else {
            if (c->wait_tail) c->wait_tail->next_wait = r;
            else c->wait_head = r;
            c->wait_tail = r;
        }
    } else if (r->reuse && serving(co) && (m = ctx_prefix(co, j->ctx, j->n_ctx, &len, &keep))) {
        /* only what follows the resident context is fed */
        int64_t nq = j->n_ctx - len + j->n_q;
        int32_t *q = malloc(sizeof *q * (size_t)(nq > 0 ? nq : 1));
        if (!q) {
            req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            memcpy(q, j->ctx + len, sizeof *q * (size_t)(j->n_ctx - len));
            if (j->n_q) memcpy(q + j->n_ctx - len, j->q, sizeof *q * (size_t)j->n_q);
            r->q = q;
            r->nq = nq;
            r->ctx = m;
            r->cached = len;
            r->keep = keep;
            r->extend = 1;
            m->last_used = sr_now();
            r->linked = 1;
            if (!m->active) {
                gen_start(co, r);
            } else {
                if (m->wait_tail) m->wait_tail->next_wait = r;
                else m->wait_head = r;
                m->wait_tail = r;
            }
        }
        free(j->ctx);
        free(j->q);
    } else if (r->reuse && j->n_ctx >= 2 && !j->n_q) {
        /* kept for the next turn without its last token, which is fed as
         * the question: the same prompt again then matches too */
        int32_t *q = malloc(sizeof *q);
        if (!q) {
            free(j->ctx);
            free(j->q);
            req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            *q = j->ctx[j->n_ctx - 1];
            free(j->q);
            prefill_start(co, r, j->ctx, j->n_ctx - 1, q, 1);
        }
    } else {
        prefill_start(co, r, j->ctx, j->n_ctx, j->q, j->n_q);
    }
    free(j);
}

static void tokenize(coord *co, req *r, const char *context, const char *question, int chat, int raw_question) {
    tok_job *j = calloc(1, sizeof *j);
    if (!j || (context && !(j->context = strdup(context)))) {
        free(j);
        req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    j->r = r;
    j->question = question;
    j->chat = chat;
    j->raw_question = raw_question;
    j->w.data = j;
    r->working = 1;
    if (uv_queue_work(co->loop, &j->w, tok_work, tok_done) != 0) {
        r->working = 0;
        free(j->context);
        free(j);
        req_finish(r, SR_GRPC_INTERNAL, "cannot queue the tokenizer");
    }
}

/* ------------------------------------------------------------ methods */

/* The sinks of the gRPC methods: events become ContextEvent or
 * GenerateEvent messages of the call. */
static void grpc_progress(sr_sink *s, int64_t done, int64_t total) {
    Starring__V1__Progress p = STARRING__V1__PROGRESS__INIT;
    p.done = done;
    p.total = total;
    if (((req *)s->req)->kind == REQ_CREATE) {
        Starring__V1__ContextEvent e = STARRING__V1__CONTEXT_EVENT__INIT;
        e.event_case = STARRING__V1__CONTEXT_EVENT__EVENT_PROGRESS;
        e.progress = &p;
        sr_grpc_send(s->data, &e.base);
    } else {
        Starring__V1__GenerateEvent e = STARRING__V1__GENERATE_EVENT__INIT;
        e.event_case = STARRING__V1__GENERATE_EVENT__EVENT_PROGRESS;
        e.progress = &p;
        sr_grpc_send(s->data, &e.base);
    }
}

static void grpc_token(sr_sink *s, int32_t id, const char *text) {
    Starring__V1__Token tk = STARRING__V1__TOKEN__INIT;
    tk.id = id;
    tk.text = (char *)text;
    Starring__V1__GenerateEvent e = STARRING__V1__GENERATE_EVENT__INIT;
    e.event_case = STARRING__V1__GENERATE_EVENT__EVENT_TOKEN;
    e.token = &tk;
    sr_grpc_send(s->data, &e.base);
}

static void grpc_ready(sr_sink *s, const char *context_id) {
    coord *co = ((req *)s->req)->co;
    cctx *c = ctx_find(co, context_id);
    if (!c) return;
    Starring__V1__Shard sh[co->o->workers], *shp[co->o->workers];
    Starring__V1__Context m;
    ctx_message(co, c, &m, sh, shp);
    Starring__V1__ContextEvent e = STARRING__V1__CONTEXT_EVENT__INIT;
    e.event_case = STARRING__V1__CONTEXT_EVENT__EVENT_READY;
    e.ready = &m;
    sr_grpc_send(s->data, &e.base);
}

static void grpc_done(sr_sink *s, const sr_sink_done *d) {
    Starring__V1__Done dn = STARRING__V1__DONE__INIT;
    dn.stop_reason = (char *)d->stop_reason;
    dn.prompt_tokens = d->prompt_tokens;
    dn.generated_tokens = d->generated_tokens;
    dn.context_tokens = d->context_tokens;
    dn.prefill_reused = d->prefill_reused;
    dn.prefill_s = d->prefill_s;
    dn.time_to_first_token_s = d->time_to_first_token_s;
    dn.tokens_per_s = d->tokens_per_s;
    Starring__V1__GenerateEvent e = STARRING__V1__GENERATE_EVENT__INIT;
    e.event_case = STARRING__V1__GENERATE_EVENT__EVENT_DONE;
    e.done = &dn;
    sr_grpc_send(s->data, &e.base);
}

static void grpc_finish(sr_sink *s, int status, const char *msg) {
    sr_grpc_call *call = s->data;
    *sr_grpc_call_slot(call) = NULL;
    sr_grpc_finish(call, status, msg ? "%s" : NULL, msg);
}

static const sr_sink_ops grpc_sink = {grpc_progress, grpc_token, grpc_ready, grpc_done, grpc_finish};

static req *req_alloc(coord *co, int kind) {
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->co = co;
    r->kind = kind;
    r->t0 = sr_now();
    return r;
}

static req *req_new(sr_grpc_call *call, int kind) {
    req *r = req_alloc(sr_grpc_data(sr_grpc_call_server(call)), kind);
    if (!r) {
        sr_grpc_finish(call, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    r->own = (sr_sink){.ops = &grpc_sink, .data = call, .req = r};
    r->sink = &r->own;
    *sr_grpc_call_slot(call) = r;
    return r;
}

static int admit(req *r) {
    coord *co = r->co;
    if (co->draining) {
        req_finish(r, SR_GRPC_UNAVAILABLE, "the server is shutting down: try another one");
        return 0;
    }
    if (co->in_flight >= co->o->queue) {
        req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "the queue is full (%d requests at once, --queue): try again", co->o->queue);
        return 0;
    }
    co->in_flight++;
    r->admitted = 1;
    return 1;
}

void sr_coord_sink_cancel(sr_sink *s) {
    req *r = s->req;
    if (!r) return;
    s->req = NULL;
    r->sink = NULL;
    if (r->running) gen_cancel(r->co, r);
    prefill_cancel(r->co, r);
    req_free_if_done(r);
}

static void on_cancel_req(sr_grpc_call *call, int status) {
    req *r = *sr_grpc_call_slot(call);
    if (r && r->sink) sr_coord_sink_cancel(r->sink);
}

static int check_options(req *r, const char *mode, int64_t block_size, int64_t anchor_size) {
    if (mode && *mode && sr_cp_mode_parse(mode) < 0) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "mode '%s' does not exist: use star, ring, full or cad (or leave it empty)", mode);
        return 0;
    }
    if (mode && sr_cp_mode_parse(mode) == SR_CP_CAD && r->co->o->attn_servers == 0) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "mode 'cad' needs attention servers, and this server has none: start "
                   "starringd under mpirun with --attn-servers K (the last K worker ranks), or use star, ring or full");
        return 0;
    }
    if (block_size < 0 || block_size > (1 << 24) || anchor_size < 0 || anchor_size > (1 << 24)) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "block_size %lld and anchor_size %lld must be in 0..16777216 (0: the default)",
                   (long long)block_size, (long long)anchor_size);
        return 0;
    }
    return 1;
}


/* buf grown to hold need bytes (doubling from 4 KiB), or NULL when out of
 * memory (buf is then unchanged). The caller has capped need (--max-context). */
static void *grow_bytes(void *buf, size_t *cap, size_t need) {
    if (need <= *cap) return buf;
    size_t c = *cap ? 2 * *cap : 4096;
    while (c < need) c *= 2;
    void *b = realloc(buf, c);
    if (b) *cap = c;
    return b;
}
static void create_message(sr_grpc_call *call, const uint8_t *msg, size_t len) {
    req *r = *sr_grpc_call_slot(call);
    if (!r && !(r = req_new(call, REQ_CREATE))) return;
    coord *co = r->co;
    Starring__V1__ContextChunk *ch = starring__v1__context_chunk__unpack(NULL, len, msg);
    if (!ch) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "a ContextChunk of %zu bytes does not decode", len);
        return;
    }
    if (!r->got_options) {
        r->got_options = 1;
        if (ch->options) {
            if (!check_options(r, ch->options->mode, ch->options->block_size, ch->options->anchor_size)) {
                starring__v1__context_chunk__free_unpacked(ch, NULL);
                return;
            }
            r->opts = *ch->options;
            r->opts.base = ch->options->base;
            r->opts.mode = NULL;
            r->opts.name = NULL;
            if (ch->options->mode && *ch->options->mode) r->opts.mode = strdup(ch->options->mode);
            if (ch->options->name && *ch->options->name) r->name = strdup(ch->options->name);
        }
    }
    size_t tl = ch->text ? strlen(ch->text) : 0;
    if ((tl && r->n_tok) || (ch->n_tokens && r->n_text)) {
        starring__v1__context_chunk__free_unpacked(ch, NULL);
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "a context is text or tokens, not both");
        return;
    }
    /* a token is at least a byte of text: more bytes than 16 per token allowed is over any context */
    if (r->n_text + tl > (size_t)co->o->max_context * 16 || r->n_tok + (int64_t)ch->n_tokens > co->o->max_context) {
        starring__v1__context_chunk__free_unpacked(ch, NULL);
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "the context is over this server's %lld tokens (--max-context)",
                   (long long)co->o->max_context);
        return;
    }
    int ok = 1;
    if (tl) {
        char *t = grow_bytes(r->text, &r->cap_text, r->n_text + tl + 1);
        if ((ok = t != NULL)) {
            r->text = t;
            memcpy(r->text + r->n_text, ch->text, tl);
            r->n_text += tl;
            r->text[r->n_text] = 0;
        }
    }
    if (ch->n_tokens && ok) {
        int32_t *t = grow_bytes(r->tokens, &r->cap_tok, sizeof(int32_t) * ((size_t)r->n_tok + ch->n_tokens));
        if ((ok = t != NULL)) {
            r->tokens = t;
            memcpy(r->tokens + r->n_tok, ch->tokens, sizeof(int32_t) * ch->n_tokens);
            r->n_tok += (int64_t)ch->n_tokens;
        }
    }
    starring__v1__context_chunk__free_unpacked(ch, NULL);
    if (!ok) req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory for the context");
}

static void create_end(sr_grpc_call *call) {
    req *r = *sr_grpc_call_slot(call);
    if (!r && !(r = req_new(call, REQ_CREATE))) return;
    coord *co = r->co;
    if (!r->n_text && !r->n_tok) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "the context is empty: send its text or its tokens");
        return;
    }
    if (!admit(r)) return;
    if (r->n_tok) {
        for (int64_t i = 0; i < r->n_tok; i++)
            if (r->tokens[i] < 0 || r->tokens[i] >= co->cfg.vocab_size) {
                req_finish(r, SR_GRPC_INVALID_ARGUMENT, "token %d at %lld is outside the vocabulary (0..%d)",
                           r->tokens[i], (long long)i, co->cfg.vocab_size - 1);
                return;
            }
        if (r->opts.chat) {
            req_finish(r, SR_GRPC_INVALID_ARGUMENT, "chat needs a text context (the template wraps the text)");
            return;
        }
        int32_t *t = r->tokens;
        r->tokens = NULL;
        prefill_start(co, r, t, r->n_tok, NULL, 0);
        return;
    }
    size_t n;
    char *clean = utf8_clean(r->text, r->n_text, &n);
    if (!clean) {
        req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    free(r->text);
    r->text = clean;
    r->n_text = n;
    tokenize(co, r, r->text, NULL, r->opts.chat, 0);
}

static void generate_message(sr_grpc_call *call, const uint8_t *msg, size_t len) {
    req *r = *sr_grpc_call_slot(call);
    if (r) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "Generate takes one request message");
        return;
    }
    if (!(r = req_new(call, REQ_GENERATE))) return;
    if (!(r->g = starring__v1__generate_request__unpack(NULL, len, msg)))
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "a GenerateRequest of %zu bytes does not decode", len);
}

/* A question (r has its sink): checked, then tokenized (see tok_done). */
static void ask(coord *co, req *r, const sr_coord_question *q) {
    if (q->max_tokens < 0 || q->max_tokens > co->o->max_tokens) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "max_tokens %d must be in 0..%d (0: %d)", q->max_tokens, co->o->max_tokens,
                   co->o->default_tokens);
        return;
    }
    if (!(q->temperature >= 0 && q->temperature <= 100) || q->top_k < 0 || !(q->top_p >= 0 && q->top_p <= 1)) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "temperature %g must be in 0..100, top_k %d >= 0, top_p %g in 0..1",
                   q->temperature, q->top_k, q->top_p);
        return;
    }
    if (!check_options(r, q->mode, q->block_size, q->anchor_size)) return;
    size_t n;
    const char *prompt = q->prompt ? q->prompt : "";
    r->prompt = utf8_clean(prompt, strlen(prompt), &n);
    if ((q->mode && *q->mode && !(r->opts.mode = strdup(q->mode))) || !r->prompt ||
        (q->stop && *q->stop && !(r->stop = strdup(q->stop)))) {
        req_finish(r, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    r->opts.block_size = q->block_size;
    r->opts.anchor_size = q->anchor_size;
    r->opts.chat = q->chat;
    r->max_tokens = q->max_tokens;
    r->temperature = q->temperature;
    r->top_k = q->top_k;
    r->top_p = q->top_p;
    r->seed = q->seed;
    r->reuse = q->reuse;
    if (!q->context_id || !*q->context_id) {
        if (!*r->prompt) {
            req_finish(r, SR_GRPC_INVALID_ARGUMENT, "the context is empty: give a context_id or a prompt");
            return;
        }
        if (!admit(r)) return;
        tokenize(co, r, r->prompt, NULL, q->chat, 0);
        return;
    }
    cctx *c = ctx_find(co, q->context_id);
    if (!c) {
        not_found(co, r, q->context_id);
        return;
    }
    if (c->state != CTX_READY || c->dropping) {
        req_finish(r, SR_GRPC_FAILED_PRECONDITION, "context %s is %s", c->sid, c->dropping ? "being dropped" : "still prefilling");
        return;
    }
    if (!!q->chat != !!c->chat) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "context %s was uploaded %s chat: ask with chat %s", c->sid,
                   c->chat ? "with" : "without", c->chat ? "true" : "false");
        return;
    }
    if (!serving(co)) {
        char msg[600];
        sr_coord_serving(co, msg, sizeof msg);
        req_finish(r, SR_GRPC_UNAVAILABLE, "%s", msg);
        return;
    }
    if (!admit(r)) return;
    r->ctx = c;
    r->cached = c->n_tokens;
    c->last_used = sr_now();
    /* a text context encodes the question after its text, as starring-run -f FILE -p QUESTION does */
    tokenize(co, r, c->text, r->prompt, c->chat, c->text == NULL);
}

void sr_coord_ask(sr_coord *co, const sr_coord_question *q, sr_sink *s) {
    req *r = req_alloc(co, REQ_GENERATE);
    if (!r) {
        s->req = NULL;
        s->ops->finish(s, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    s->req = r;
    r->sink = s;
    ask(co, r, q);
}

static void generate_end(sr_grpc_call *call) {
    req *r = *sr_grpc_call_slot(call);
    if (!r) {
        sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "no GenerateRequest");
        return;
    }
    const Starring__V1__GenerateRequest *g = r->g;
    if (g->n_stop > 1 || (g->n_stop == 1 && !*g->stop[0])) {
        req_finish(r, SR_GRPC_INVALID_ARGUMENT, "give at most one stop string, not empty (%zu given)", g->n_stop);
        return;
    }
    const Starring__V1__ContextOptions *o = g->options;
    sr_coord_question q = {
        .context_id = g->context_id, .prompt = g->prompt, .chat = g->chat,
        .mode = o ? o->mode : NULL, .block_size = o ? o->block_size : 0, .anchor_size = o ? o->anchor_size : 0,
        .max_tokens = g->max_tokens, .temperature = g->temperature, .top_p = g->top_p, .top_k = g->top_k,
        .seed = g->seed, .stop = g->n_stop ? g->stop[0] : NULL,
    };
    ask(r->co, r, &q);
}

/* unary methods: the one request message, then the answer at on_end */
typedef struct {
    uint8_t *msg;
    size_t len;
} unary;

static void unary_message(sr_grpc_call *call, const uint8_t *msg, size_t len) {
    unary *u = *sr_grpc_call_slot(call);
    if (u) {
        free(u->msg);
        free(u);
        *sr_grpc_call_slot(call) = NULL;
        sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "one request message expected");
        return;
    }
    if (!(u = calloc(1, sizeof *u)) || !(u->msg = malloc(len + 1))) {
        free(u);
        sr_grpc_finish(call, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    memcpy(u->msg, msg, len);
    u->len = len;
    *sr_grpc_call_slot(call) = u;
}

static void unary_cancel(sr_grpc_call *call, int status) {
    unary *u = *sr_grpc_call_slot(call);
    if (u) free(u->msg);
    free(u);
}

/* Takes the call's request message; NULL (and an answer) if there is none. */
static unary *unary_take(sr_grpc_call *call) {
    unary *u = *sr_grpc_call_slot(call);
    *sr_grpc_call_slot(call) = NULL;
    if (!u) sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "no request message");
    return u;
}

static void unary_free(unary *u) {
    free(u->msg);
    free(u);
}

static void reply_context(sr_grpc_call *call, coord *co, cctx *c, const char *state) {
    Starring__V1__Shard sh[co->o->workers], *shp[co->o->workers];
    Starring__V1__Context m;
    ctx_message(co, c, &m, sh, shp);
    if (state) m.state = (char *)state;
    sr_grpc_send(call, &m.base);
    sr_grpc_finish(call, SR_GRPC_OK, NULL);
}

static void context_ref_end(sr_grpc_call *call, int drop) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    unary *u = unary_take(call);
    if (!u) return;
    Starring__V1__ContextRef *ref = starring__v1__context_ref__unpack(NULL, u->len, u->msg);
    unary_free(u);
    if (!ref) {
        sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "a ContextRef that does not decode");
        return;
    }
    cctx *c = ctx_find(co, ref->id);
    if (!c) {
        req *r = req_new(call, REQ_GENERATE);
        if (r) not_found(co, r, ref->id);
    } else if (!drop) {
        reply_context(call, co, c, NULL);
    } else if (c->state != CTX_READY) {
        sr_grpc_finish(call, SR_GRPC_FAILED_PRECONDITION, "context %s is still prefilling", c->sid);
    } else {
        reply_context(call, co, c, "dropped");
        c->dropping = 1;
        for (req *r = c->wait_head, *n; r; r = n) {
            n = r->next_wait;
            r->linked = 0;
            req_finish(r, SR_GRPC_NOT_FOUND, "context %s was dropped", c->sid);
        }
        c->wait_head = c->wait_tail = NULL;
        if (!c->active) ctx_drop(co, c, "dropped by a client");
    }
    starring__v1__context_ref__free_unpacked(ref, NULL);
}

static void get_context_end(sr_grpc_call *call) { context_ref_end(call, 0); }
static void drop_context_end(sr_grpc_call *call) { context_ref_end(call, 1); }

static void list_contexts_end(sr_grpc_call *call) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    unary *u = unary_take(call);
    if (!u) return;
    unary_free(u);
    int W = co->o->workers, n = 0;
    for (cctx *c = co->ctxs; c; c = c->next) n += !c->ephemeral;
    Starring__V1__Context *ms = calloc((size_t)n + 1, sizeof *ms), **mp = calloc((size_t)n + 1, sizeof *mp);
    Starring__V1__Shard *sh = calloc((size_t)(n * W) + 1, sizeof *sh), **shp = calloc((size_t)(n * W) + 1, sizeof *shp);
    if (!ms || !mp || !sh || !shp) {
        sr_grpc_finish(call, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        int i = 0;
        for (cctx *c = co->ctxs; c; c = c->next)
            if (!c->ephemeral) {
                ctx_message(co, c, &ms[i], sh + i * W, shp + i * W);
                mp[i] = &ms[i];
                i++;
            }
        Starring__V1__ListContextsResponse resp = STARRING__V1__LIST_CONTEXTS_RESPONSE__INIT;
        resp.n_contexts = (size_t)n;
        resp.contexts = mp;
        sr_grpc_send(call, &resp.base);
        sr_grpc_finish(call, SR_GRPC_OK, NULL);
    }
    free(ms);
    free(mp);
    free(sh);
    free(shp);
}

static void get_stats_end(sr_grpc_call *call) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    unary *u = unary_take(call);
    if (!u) return;
    unary_free(u);
    int W = co->o->workers;
    Starring__V1__Stats s = STARRING__V1__STATS__INIT;
    Starring__V1__WorkerStats ws[W + 1], *wp[W + 1];
    s.workers = W;
    s.workers_ready = co->n_ready;
    s.prefills = co->prefills;
    s.prefill_tokens = co->prefill_tokens;
    s.generations = co->generations;
    s.generated_tokens = co->generated;
    s.evictions = co->evictions;
    s.cancelled = co->cancelled;
    s.queue_depth = co->in_flight;
    s.queue_capacity = co->o->queue;
    sr_metrics_stats_buf mb;
    if (sr_metrics_stats(co->metrics, &s, &mb) != SR_OK) {
        sr_grpc_finish(call, SR_GRPC_RESOURCE_EXHAUSTED, "%s", sr_error_msg());
        return;
    }
    for (int w = 0; w < W; w++) {
        starring__v1__worker_stats__init(&ws[w]);
        ws[w].worker = w;
        ws[w].state = co->w[w].lost ? "lost" : co->w[w].ok ? "ready" : co->w[w].joined ? "failed" : "joining";
        ws[w].kv_budget_bytes = co->o->kv_budget;
        ws[w].last_heartbeat_s = co->w[w].last_beat ? sr_now() - co->w[w].last_beat : -1;
        ws[w].up = co->w[w].ok && !co->w[w].lost;
        ws[w].data_sent_bytes = co->w[w].data_sent;
        ws[w].data_received_bytes = co->w[w].data_received;
        ws[w].role = attn_server(co, w) ? "attn" : "model";
        ws[w].busy_s = co->w[w].busy_s;
        s.data_sent_bytes += co->w[w].data_sent;
        s.data_received_bytes += co->w[w].data_received;
        wp[w] = &ws[w];
    }
    for (cctx *c = co->ctxs; c; c = c->next) {
        if (c->state != CTX_READY) continue;
        s.contexts += !c->ephemeral;
        for (int i = 0; i < c->n_grp; i++) {
            int w = c->grp[i];
            s.kv_tokens += c->kv_tokens[w];
            s.kv_bytes += c->kv_bytes[w];
            ws[w].contexts++;
            ws[w].kv_tokens += c->kv_tokens[w];
            ws[w].kv_bytes += c->kv_bytes[w];
        }
        for (int w = model_workers(co); c->mode == SR_CP_CAD && w < W; w++) {
            s.kv_tokens += c->kv_tokens[w];
            s.kv_bytes += c->kv_bytes[w];
            ws[w].contexts++;
        }
    }
    /* an attention server's KV as it last said: what it holds, freed or not */
    for (int w = model_workers(co); w < W; w++) {
        ws[w].kv_tokens = co->w[w].attn_kv_tokens;
        ws[w].kv_bytes = co->w[w].attn_kv_bytes;
    }
    s.attn_servers = co->o->attn_servers;
    s.n_worker = (size_t)W;
    s.worker = wp;
    sr_grpc_send(call, &s.base);
    sr_grpc_finish(call, SR_GRPC_OK, NULL);
    sr_metrics_stats_done(&mb);
}

/* The state at a /metrics scrape (the same figures as GetStats). */
static void metrics_gauges(sr_metrics_gauges *g, void *data) {
    coord *co = data;
    int W = co->o->workers;
    sr_metrics_worker *ws = g->worker;
    g->queue_depth = co->in_flight;
    g->queue_capacity = co->o->queue;
    for (int w = 0; w < W; w++)
        ws[w] = (sr_metrics_worker){.worker = w, .up = co->w[w].ok && !co->w[w].lost, .kv_budget_bytes = co->o->kv_budget,
                                    .data_sent_bytes = co->w[w].data_sent, .data_received_bytes = co->w[w].data_received,
                                    .attn = attn_server(co, w), .busy_s = co->w[w].busy_s};
    for (cctx *c = co->ctxs; c; c = c->next) {
        if (c->state != CTX_READY) continue;
        g->contexts += !c->ephemeral;
        for (int w = 0; w < W; w++) ws[w].kv_bytes += c->kv_bytes[w];
    }
}

static void grpc_status(const char *method, int status, void *data) {
    sr_metrics_request(((coord *)data)->metrics, "grpc", method, status);
}

/* ------------------------------------------------------------ health */

static int health_status(coord *co) {
    return serving(co) && !co->draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

/* "" (the whole server) and the API's service are known */
static int health_service(sr_grpc_call *call, int *status) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    unary *u = unary_take(call);
    if (!u) return 0;
    Grpc__Health__V1__HealthCheckRequest *hr = grpc__health__v1__health_check_request__unpack(NULL, u->len, u->msg);
    unary_free(u);
    if (!hr) {
        sr_grpc_finish(call, SR_GRPC_INVALID_ARGUMENT, "a HealthCheckRequest that does not decode");
        return 0;
    }
    int known = !*hr->service || strcmp(hr->service, "starring.v1.Starring") == 0;
    if (!known) sr_grpc_finish(call, SR_GRPC_NOT_FOUND, "unknown service '%s'", hr->service);
    grpc__health__v1__health_check_request__free_unpacked(hr, NULL);
    *status = health_status(co);
    return known;
}

static void health_send(sr_grpc_call *call, int status) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = status;
    sr_grpc_send(call, &resp.base);
}

static void check_end(sr_grpc_call *call) {
    int st;
    if (!health_service(call, &st)) return;
    health_send(call, st);
    sr_grpc_finish(call, SR_GRPC_OK, NULL);
}

static void watch_end(sr_grpc_call *call) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    int st;
    if (!health_service(call, &st)) return;
    watcher *w = calloc(1, sizeof *w);
    if (!w) {
        sr_grpc_finish(call, SR_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = call;
    w->last = st;
    w->next = co->watchers;
    co->watchers = w;
    *sr_grpc_call_slot(call) = w;
    health_send(call, st);
}

static void watch_cancel(sr_grpc_call *call, int status) {
    coord *co = sr_grpc_data(sr_grpc_call_server(call));
    watcher *w = *sr_grpc_call_slot(call);
    if (!w) {
        unary_cancel(call, status);
        return;
    }
    for (watcher **p = &co->watchers; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    free(w);
}

static void health_changed(coord *co) {
    int st = health_status(co);
    int up = st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    SR_INFO("health: %s", up ? "SERVING" : "NOT_SERVING");
    if (up && !co->told_ready && co->o->on_ready) {
        char status[96];
        snprintf(status, sizeof status, "SERVING with %d workers", co->o->workers);
        co->o->on_ready(status, co->o->data);
    }
    co->told_ready |= up;
    for (watcher *w = co->watchers; w; w = w->next)
        if (w->last != st) {
            w->last = st;
            health_send(w->call, st);
        }
}

static const sr_grpc_method methods[] = {
    {"/starring.v1.Starring/CreateContext", create_message, create_end, on_cancel_req},
    {"/starring.v1.Starring/Generate", generate_message, generate_end, on_cancel_req},
    {"/starring.v1.Starring/GetContext", unary_message, get_context_end, unary_cancel},
    {"/starring.v1.Starring/ListContexts", unary_message, list_contexts_end, unary_cancel},
    {"/starring.v1.Starring/DropContext", unary_message, drop_context_end, unary_cancel},
    {"/starring.v1.Starring/GetStats", unary_message, get_stats_end, unary_cancel},
    {"/grpc.health.v1.Health/Check", unary_message, check_end, unary_cancel},
    {"/grpc.health.v1.Health/Watch", unary_message, watch_end, watch_cancel},
};

/* ------------------------------------------------------------ workers */

/* The requests that wait for context c (its prefill, its turn) end UNAVAILABLE with why. */
static void ctx_fail_waiting(cctx *c, const char *why) {
    if (c->creator) {
        c->creator->linked = 0;
        req_finish(c->creator, SR_GRPC_UNAVAILABLE, "%s", why);
        c->creator = NULL;
    }
    for (req *r = c->wait_head, *n; r; r = n) {
        n = r->next_wait;
        r->linked = 0;
        req_finish(r, SR_GRPC_UNAVAILABLE, "%s", why);
    }
    c->wait_head = c->wait_tail = NULL;
}

/* Every request on the workers ends UNAVAILABLE with why. */
static void fail_all(coord *co, const char *why) {
    for (req *r = co->gens, *n; r; r = n) {
        n = r->next;
        r->running = 0;
        r->linked = 0;
        req_finish(r, SR_GRPC_UNAVAILABLE, "%s", why);
    }
    co->gens = NULL;
    co->step_out = 0;
    for (cctx *c = co->ctxs; c; c = c->next) {
        c->active = NULL;
        ctx_fail_waiting(c, why);
    }
}

/* The cluster cannot serve again: a worker could not start, or one is gone
 * from an mpirun job. */
static void cluster_broken(coord *co, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cluster_broken(coord *co, const char *fmt, ...) {
    if (co->broken) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(co->broken_why, sizeof co->broken_why, fmt, ap);
    va_end(ap);
    co->broken = 1;
    SR_ERROR("%s", co->broken_why);
    health_changed(co);
    fail_all(co, co->broken_why);
}

/* A worker is gone, or the workers are out of step: every context spans
 * every worker, so they are all lost. The requests end UNAVAILABLE, the
 * workers that are left are told to rejoin (they keep the model, drop their
 * contexts and open a new data plane), and the cluster serves again once
 * --workers have joined, a restarted one among them. Under mpirun the job
 * is fixed and the cluster stays broken. */
static void cluster_reset(coord *co, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cluster_reset(coord *co, const char *fmt, ...) {
    char why[sizeof co->lost_why];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (co->fixed || co->broken || co->stopping) {
        cluster_broken(co, "%s", why);
        return;
    }
    int n_ctx = 0;
    for (cctx *c = co->ctxs; c; c = c->next) n_ctx += !c->ephemeral;
    SR_ERROR("%s: %d contexts lost; the workers left rejoin", why, n_ctx);
    snprintf(co->lost_why, sizeof co->lost_why, "%s", why);
    fail_all(co, why);
    char lost[sizeof ((evicted *)0)->why];
    snprintf(lost, sizeof lost, "lost (%.180s)", why);
    while (co->ctxs) {
        cctx *c = co->ctxs;
        co->ctxs = c->next;
        if (!c->ephemeral) ctx_forget(co, c, lost);
        ctx_free(c);
    }
    FRAME(rj, rejoin, REJOIN, Starring__Control__V1__Rejoin, STARRING__CONTROL__V1__REJOIN__INIT);
    rj.reason = why;
    to_workers(co, &rj_f, -1);
    for (peer *p = co->peers; p; p = p->next)
        if (p->slot >= 0) {
            p->slot = -1; /* its close is no second loss */
            sr_conn_close(p->conn, NULL);
        }
    for (int i = 0; i < co->o->workers; i++) {
        free(co->w[i].addr);
        memset(&co->w[i], 0, sizeof co->w[i]);
    }
    co->n_ready = 0;
    co->x_round = 0;
    co->started = 0;
    co->plane_n = co->plane_acks = 0;
    /* a new data-plane key for the new data plane */
    if (sr_join_nonce(co->key_salt) != SR_OK) cluster_broken(co, "%s", sr_error_msg());
    health_changed(co);
}

/* ------------------------------------------------------------ membership */

/* Context c is lost (a worker of its group is gone, or a command on it
 * failed on one): its requests end UNAVAILABLE with why, later ones on its
 * id get NOT_FOUND "was lost (why)", the rest of its group drops it. */
static void ctx_lose(coord *co, cctx *c, const char *why) {
    for (req *r = co->gens, *n; r; r = n) {
        n = r->next;
        if (r->ctx != c) continue;
        gen_unlist(co, r);
        step_answered(co, r);
        r->running = r->ready = 0;
        r->linked = 0;
        req_finish(r, SR_GRPC_UNAVAILABLE, "%s", why);
    }
    c->active = NULL;
    ctx_fail_waiting(c, why);
    char lost[sizeof ((evicted *)0)->why];
    snprintf(lost, sizeof lost, "lost (%.180s)", why);
    if (!c->ephemeral) ctx_forget(co, c, lost);
    ctx_drop(co, c, lost);
}

/* A new data plane over every worker that is up, for the contexts placed
 * from now on (the older planes stay while their contexts do). An exchange
 * still under way fails its round, so that its workers stop waiting. */
static void plane_form(coord *co) {
    int W = co->o->workers, n = 0;
    if (co->plane_acks < co->plane_n) {
        FRAME(l, address_list, ADDRESS_LIST, Starring__Control__V1__AddressList, STARRING__CONTROL__V1__ADDRESS_LIST__INIT);
        char why[96];
        snprintf(why, sizeof why, "data plane %lld is given up for a new one: its workers changed", (long long)co->plane);
        l.round = ++co->x_round;
        l.error = why;
        to_list(co, &l_f, co->plane_w, co->plane_n);
    }
    for (int i = 0; i < W; i++) {
        free(co->w[i].addr);
        co->w[i].addr = NULL;
        if (worker_up(co, i)) co->plane_w[n++] = i;
    }
    co->plane_n = n;
    co->plane_acks = 0;
    if (n == 0) return;
    co->plane++;
    FRAME(pl, plane, PLANE, Starring__Control__V1__Plane, STARRING__CONTROL__V1__PLANE__INIT);
    pl.plane = co->plane;
    pl.n_workers = (size_t)n;
    pl.workers = co->plane_w;
    pl.round = co->x_round;
    to_list(co, &pl_f, co->plane_w, n);
    SR_INFO("data plane %lld: opening over the %d workers up", (long long)co->plane, n);
}

static void on_plane_open(coord *co, int w, const Starring__Control__V1__PlaneOpen *po) {
    if (po->plane != co->plane || co->plane_acks >= co->plane_n) return; /* a plane given up since */
    if (po->status != SR_OK) {
        cluster_reset(co, "worker %d could not open data plane %lld: %s", w, (long long)po->plane, po->error);
        return;
    }
    if (++co->plane_acks < co->plane_n) return;
    SR_INFO("data plane %lld open over %d workers: new contexts go on it", (long long)co->plane, co->plane_n);
    if (co->started) return;
    co->started = 1;
    if (*co->lost_why) SR_INFO("the cluster is whole again, after: %s", co->lost_why);
    *co->lost_why = 0;
    health_changed(co);
}

/* A command on a context failed on a worker of its group: that context is lost. */
static void on_context_fault(coord *co, int w, const Starring__Control__V1__ContextFault *f) {
    cctx *c = ctx_by_id(co, f->ctx);
    if (!c || !in_grp(c, w)) return; /* lost already */
    char why[sizeof co->lost_why];
    snprintf(why, sizeof why, "%s", f->error);
    SR_ERROR("context %s lost: %s", c->sid, why);
    ctx_lose(co, c, why);
    step_dispatch(co);
}

/* Loses every context placed on worker w; returns how many a client named. */
static int ctxs_lose_on(coord *co, int w, const char *why) {
    int n = 0;
    for (cctx *c = co->ctxs, *next; c; c = next) {
        next = c->next;
        if (!in_grp(c, w)) continue;
        n += !c->ephemeral;
        ctx_lose(co, c, why);
    }
    return n;
}

/* Worker w is gone (not under mpirun, once the cluster has started): the
 * contexts placed on it are lost, the others keep serving, and the cluster
 * serves on the workers left. */
static void worker_lost(coord *co, int w, const char *why) {
    char msg[sizeof co->lost_why];
    snprintf(msg, sizeof msg, "worker %d is gone (%s)", w, why ? why : "closed");
    int n = ctxs_lose_on(co, w, msg);
    SR_ERROR("%s: %d contexts placed on it lost; %d workers serve the others", msg, n, co->n_ready);
    int pending = co->plane_acks < co->plane_n;
    for (int i = 0; pending && i < co->plane_n; i++)
        if (co->plane_w[i] == w) plane_form(co);
    health_changed(co);
    step_dispatch(co);
}

/* Worker w leaves on purpose (its SIGTERM; not under mpirun): out of
 * placement, its contexts dropped (their requests end UNAVAILABLE, later
 * ones get NOT_FOUND saying it left), then it is let go. */
static void worker_leaves(coord *co, int w, const char *reason) {
    char msg[sizeof co->lost_why];
    snprintf(msg, sizeof msg, "worker %d left (%.100s)", w, reason);
    co->w[w].leaving = 1;
    int n = ctxs_lose_on(co, w, msg);
    SR_INFO("%s: out of placement, %d contexts placed on it dropped; letting it go", msg, n);
    FRAME(lv, leave, LEAVE, Starring__Control__V1__Leave, STARRING__CONTROL__V1__LEAVE__INIT);
    lv.reason = "its contexts are dropped";
    to_workers(co, &lv_f, w);
    health_changed(co);
    step_dispatch(co);
}

/* The Hello, the first frame of a connection: a worker that proves the
 * secret gets a free index (or the one it asks for) and the Welcome. */
static int on_hello(coord *co, peer *p, const sr_frame *f) {
    int W = co->o->workers;
    if (f->kind_case != STARRING__CONTROL__V1__FRAME__KIND_HELLO)
        return sr_error_set(SR_EFORMAT, "refused the join: the first control frame must be a Hello, not kind %d",
                            (int)f->kind_case);
    const Starring__Control__V1__Hello *h = f->hello;
    if (h->nonce.len != SR_JOIN_NONCE_BYTES)
        return sr_error_set(SR_EFORMAT, "refused the join: Hello.nonce has %zu bytes, not %d", h->nonce.len,
                            SR_JOIN_NONCE_BYTES);
    if (sr_join_check(h->proof.data, h->proof.len, co->o->secret, co->o->secret_len, SR_JOIN_WORKER, p->nonce,
                      h->nonce.data) != SR_OK)
        return sr_error_set(SR_ECOMM, "refused the join: %s (is --cluster-secret-file the same file as the "
                            "coordinator's?)", sr_error_msg());
    int slot = -1;
    co->fixed |= h->worker >= 0;
    if (h->worker >= 0) {
        if (h->worker >= W || co->w[h->worker].conn || co->w[h->worker].joined || co->w[h->worker].lost)
            return sr_error_set(SR_EINVAL, "refused the join: Hello.worker %d is taken or out of range 0..%d",
                                h->worker, W - 1);
        slot = h->worker;
    } else if (h->worker != -1) {
        return sr_error_set(SR_EINVAL, "refused the join: Hello.worker %d is not -1 (any) or 0..%d", h->worker, W - 1);
    }
    for (int i = 0; slot < 0 && i < W; i++)
        if (!co->w[i].conn && !co->w[i].joined && !co->w[i].lost) slot = i;
    /* a lost worker's place (it restarted, or another takes it) */
    for (int i = 0; slot < 0 && !co->fixed && co->started && i < W; i++)
        if (!co->w[i].conn && co->w[i].lost) {
            free(co->w[i].addr);
            memset(&co->w[i], 0, sizeof co->w[i]);
            slot = i;
        }
    if (slot < 0)
        return sr_error_set(SR_ESTATE, "refused the join: the cluster has its %d workers (--workers)%s", W,
                            co->fixed ? "; under mpirun a worker that left does not come back" : "");
    unsigned char proof[SR_JOIN_PROOF_BYTES];
    sr_join_proof(proof, co->o->secret, co->o->secret_len, SR_JOIN_COORDINATOR, h->nonce.data, p->nonce);
    FRAME(wl, welcome, WELCOME, Starring__Control__V1__Welcome, STARRING__CONTROL__V1__WELCOME__INIT);
    wl.proof.data = proof;
    wl.proof.len = sizeof proof;
    wl.worker = slot;
    wl.workers = W;
    wl.key_salt.data = co->key_salt;
    wl.key_salt.len = sizeof co->key_salt;
    int rc = sr_conn_send(p->conn, &wl_f);
    if (rc != SR_OK) return rc;
    unsigned char key[SR_JOIN_KEY_BYTES];
    sr_join_session_key(key, co->o->secret, co->o->secret_len, p->nonce, h->nonce.data);
    sr_conn_secure(p->conn, key, SR_JOIN_COORDINATOR, SR_JOIN_WORKER);
    sodium_memzero(key, sizeof key);
    p->conn->rd.cap = co->o->max_frame;
    uv_timer_stop(&p->deadline);
    co->n_pending -= p->pending;
    p->pending = 0;
    p->slot = slot;
    co->w[slot].conn = p->conn;
    co->w[slot].last_beat = sr_now();
    SR_INFO("worker %d of %d at %s proved the cluster secret; loading", slot, W, p->conn->peer);
    return SR_OK;
}

static int on_join(coord *co, int w, sr_conn *c, const Starring__Control__V1__Join *j) {
    wslot *s = &co->w[w];
    if (s->joined || j->worker != w || j->workers != co->o->workers)
        return sr_error_set(SR_EFORMAT, "Join of worker %d of %d on the connection of worker %d of %d: each joins once, "
                            "as it was welcomed", j->worker, j->workers, w, co->o->workers);
    s->joined = 1;
    s->kv_budget = j->kv_budget_bytes;
    if (j->error && *j->error) {
        SR_ERROR("worker %d (pid %d) could not start: %s", w, j->pid, j->error);
        cluster_broken(co, "worker %d could not start: %s", w, j->error);
    } else if (attn_server(co, w) != (j->role && strcmp(j->role, "attn") == 0)) {
        cluster_broken(co, "worker %d joined as a %s, but the coordinator counts it as %s (--attn-servers %d)", w,
                       j->role && *j->role ? j->role : "model", attn_server(co, w) ? "an attention server" : "a model worker",
                       co->o->attn_servers);
    } else if (!attn_server(co, w) && j->vocab_size != co->cfg.vocab_size) {
        cluster_broken(co, "worker %d has a vocabulary of %d, the coordinator %d: not the same model", w,
                       j->vocab_size, co->cfg.vocab_size);
    } else {
        s->ok = 1;
        co->n_ready++;
        SR_INFO("worker %d of %d joined (pid %d, %s)%s", w, co->o->workers, j->pid, c->peer,
                attn_server(co, w) ? " as an attention server" : "");
        if (co->started && !co->fixed) {
            plane_form(co); /* one that joins late gets a data plane with the others */
        } else if (!co->started && co->n_ready == co->o->workers && co->fixed) {
            /* under mpirun the data plane is the job's: plane 0 */
            co->plane_n = co->plane_acks = co->o->workers;
            for (int i = 0; i < co->plane_n; i++) co->plane_w[i] = i;
            co->started = 1;
            health_changed(co);
        } else if (!co->started && co->n_ready == co->o->workers) {
            plane_form(co);
        }
    }
    return SR_OK;
}

/* One round of the data plane's address exchange: once every worker's
 * block is in, every worker gets them all, in worker order. */
static int on_address(coord *co, int w, const Starring__Control__V1__Address *a) {
    int W = co->plane_n, member = 0;
    wslot *s = &co->w[w];
    for (int i = 0; i < W; i++) member |= co->plane_w[i] == w;
    if (a->round <= co->x_round && a->round > 0) return SR_OK; /* of a plane given up: its round failed */
    if (a->round != co->x_round + 1 || s->addr || !member)
        return sr_error_set(SR_EFORMAT, "worker %d sent Address.round %lld; this round is %lld, one block each from the "
                            "workers of data plane %lld", w, (long long)a->round, (long long)co->x_round + 1,
                            (long long)co->plane);
    if (!(s->addr = malloc(a->block.len ? a->block.len : 1))) return sr_error_set(SR_ENOMEM, "out of memory for an address");
    memcpy(s->addr, a->block.data, a->block.len);
    s->addr_len = a->block.len;
    for (int i = 0; i < W; i++)
        if (!co->w[co->plane_w[i]].addr) return SR_OK;
    FRAME(l, address_list, ADDRESS_LIST, Starring__Control__V1__AddressList, STARRING__CONTROL__V1__ADDRESS_LIST__INIT);
    ProtobufCBinaryData *blocks = malloc(sizeof *blocks * (size_t)W);
    if (!blocks) return sr_error_set(SR_ENOMEM, "out of memory for the address list of %d workers", W);
    int same = 1;
    l.round = ++co->x_round;
    for (int i = 0; i < W; i++) {
        const wslot *m = &co->w[co->plane_w[i]];
        blocks[i] = (ProtobufCBinaryData){m->addr_len, m->addr};
        same &= m->addr_len == s->addr_len;
    }
    if (!same) {
        l.error = "the workers sent address blocks of different lengths";
        SR_ERROR("address exchange round %lld: %s", (long long)l.round, l.error);
    } else {
        l.n_block = (size_t)W;
        l.block = blocks;
    }
    to_list(co, &l_f, co->plane_w, W);
    free(blocks);
    for (int i = 0; i < W; i++) {
        free(co->w[co->plane_w[i]].addr);
        co->w[co->plane_w[i]].addr = NULL;
    }
    return SR_OK;
}

static int on_control_frame(sr_conn *c, sr_frame *f) {
    peer *p = c->data;
    coord *co = p->co;
    int w = p->slot, rc = SR_OK;
    sr_metrics_add(co->metrics, SR_METRIC_CONTROL_IN_BYTES, 4 + (int64_t)starring__control__v1__frame__get_packed_size(f));
    if (w < 0) {
        rc = on_hello(co, p, f);
        sr_frame_free(f);
        return rc;
    }
    co->w[w].last_beat = sr_now();
    switch (f->kind_case) {
    case STARRING__CONTROL__V1__FRAME__KIND_HEARTBEAT:
        co->w[w].data_sent = f->heartbeat->data_sent_bytes;
        co->w[w].data_received = f->heartbeat->data_received_bytes;
        co->w[w].busy_s = f->heartbeat->busy_s;
        co->w[w].attn_kv_tokens = f->heartbeat->kv_tokens;
        co->w[w].attn_kv_bytes = f->heartbeat->kv_bytes;
        break;
    case STARRING__CONTROL__V1__FRAME__KIND_JOIN: rc = on_join(co, w, c, f->join); break;
    case STARRING__CONTROL__V1__FRAME__KIND_ADDRESS: rc = on_address(co, w, f->address); break;
    case STARRING__CONTROL__V1__FRAME__KIND_PREFILLED: on_prefilled(co, w, f->prefilled); break;
    case STARRING__CONTROL__V1__FRAME__KIND_PROGRESS: on_progress(co, w, f->progress); break;
    case STARRING__CONTROL__V1__FRAME__KIND_TOKEN: on_token(co, w, f->token); break;
    case STARRING__CONTROL__V1__FRAME__KIND_DONE: on_done(co, w, f->done); break;
    case STARRING__CONTROL__V1__FRAME__KIND_DROPPED: break;
    case STARRING__CONTROL__V1__FRAME__KIND_FAULT: cluster_reset(co, "%s", f->fault->error); break;
    case STARRING__CONTROL__V1__FRAME__KIND_CONTEXT_FAULT: on_context_fault(co, w, f->context_fault); break;
    case STARRING__CONTROL__V1__FRAME__KIND_PLANE_OPEN: on_plane_open(co, w, f->plane_open); break;
    case STARRING__CONTROL__V1__FRAME__KIND_LEAVE:
        if (co->fixed || co->stopping) break; /* under mpirun every rank has the signal: the coordinator drains */
        worker_leaves(co, w, f->leave->reason);
        break;
    default: rc = sr_error_set(SR_EFORMAT, "worker %d sent a frame of kind %d, which workers do not send", w, (int)f->kind_case);
    }
    sr_frame_free(f);
    return rc;
}

static void peer_free(uv_handle_t *h) { free(h->data); }

static void on_control_close(sr_conn *c, const char *why) {
    peer *p = c->data;
    coord *co = p->co;
    int w = p->slot;
    for (peer **q = &co->peers; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    uv_close((uv_handle_t *)&p->deadline, peer_free);
    co->n_pending -= p->pending;
    if (w < 0) return;
    free(co->w[w].addr);
    co->w[w].addr = NULL;
    co->w[w].conn = NULL;
    co->w[w].lost = 1;
    if (co->w[w].ok) co->n_ready--;
    if (co->stopping) return;
    int joined = co->w[w].joined;
    if (co->started && !co->fixed) {
        worker_lost(co, w, why);
        return;
    }
    /* before the first start the cluster's join (its first data plane) is not over */
    cluster_reset(co, "worker %d is gone (%s)%s", w, why ? why : "closed", joined && co->started ? "" : ": it left during the join");
    /* under mpirun, gone before its Join: the others' address exchange cannot complete */
    if (co->broken && !joined) {
        char msg[160];
        snprintf(msg, sizeof msg, "worker %d left during the join", w);
        FRAME(l, address_list, ADDRESS_LIST, Starring__Control__V1__AddressList, STARRING__CONTROL__V1__ADDRESS_LIST__INIT);
        l.round = co->x_round + 1;
        l.error = msg;
        to_workers(co, &l_f, -1);
    }
}

static void on_join_deadline(uv_timer_t *t) {
    peer *p = t->data;
    char why[96];
    snprintf(why, sizeof why, "no join within %.0f s (a worker proves the cluster secret first)", p->co->o->join_timeout_s);
    sr_conn_close(p->conn, why);
}

/* A new control connection gets its challenge, and join_timeout_s to answer. */
static void on_control_connection(uv_stream_t *s, int status) {
    coord *co = s->data;
    sr_conn *c;
    if (status < 0 || co->stopping) return;
    peer *p = calloc(1, sizeof *p);
    if (!p) {
        SR_WARN("out of memory for a control connection");
        return;
    }
    if (sr_conn_accept(&c, s, SR_JOIN_FRAME_MAX, on_control_frame, on_control_close, p) != SR_OK) {
        SR_WARN("%s", sr_error_msg());
        free(p);
        return;
    }
    p->co = co;
    p->conn = c;
    p->slot = -1;
    p->next = co->peers;
    co->peers = p;
    uv_timer_init(co->loop, &p->deadline);
    p->deadline.data = p;
    /* a flood of connections that never join must not crowd out the workers */
    if (co->o->max_pending > 0 && co->n_pending >= co->o->max_pending) {
        /* one line a second at most, so that the flood does not flood the log */
        if (sr_now() - co->refused_at >= 1) {
            SR_WARN("refused a control connection from %s: %d are already proving the cluster secret "
                    "(--cluster-max-pending); %lld more refused since the last such line", c->peer, co->n_pending,
                    (long long)co->refused_quiet);
            co->refused_at = sr_now();
            co->refused_quiet = 0;
        } else {
            co->refused_quiet++;
        }
        sr_conn_close(c, NULL);
        return;
    }
    p->pending = 1;
    co->n_pending++;
    uv_timer_start(&p->deadline, on_join_deadline, (uint64_t)(co->o->join_timeout_s * 1e3), 0);
    FRAME(ch, challenge, CHALLENGE, Starring__Control__V1__Challenge, STARRING__CONTROL__V1__CHALLENGE__INIT);
    ch.nonce.data = p->nonce;
    ch.nonce.len = sizeof p->nonce;
    if (sr_join_nonce(p->nonce) != SR_OK || sr_conn_send(c, &ch_f) != SR_OK) sr_conn_close(c, sr_error_msg());
}

/* Every heartbeat interval (1 s at most): the coordinator's own heartbeat
 * to the workers, so that they notice a coordinator that went silent (its
 * host gone, a link cut) as it notices them. */
static void on_tick(uv_timer_t *t) {
    coord *co = t->data;
    if (co->o->on_tick) co->o->on_tick(co->o->data);
    FRAME(hb, heartbeat, HEARTBEAT, Starring__Control__V1__Heartbeat, STARRING__CONTROL__V1__HEARTBEAT__INIT);
    hb.worker = -1;
    hb.seq = ++co->beat_seq;
    to_workers(co, &hb_f, -1);
    double late = 10 * co->o->heartbeat_s;
    for (int i = 0; i < co->o->workers; i++)
        if (co->w[i].conn && sr_now() - co->w[i].last_beat > late) {
            char why[96];
            snprintf(why, sizeof why, "no heartbeat for %.0f s", sr_now() - co->w[i].last_beat);
            sr_conn_close(co->w[i].conn, why);
        }
}

static void stop(coord *co) {
    if (co->stopping) return;
    co->stopping = 1;
    SR_INFO("stopping");
    FRAME(lv, leave, LEAVE, Starring__Control__V1__Leave, STARRING__CONTROL__V1__LEAVE__INIT);
    lv.reason = "the coordinator is stopping";
    to_workers(co, &lv_f, -1);
    sr_grpc_close(co->grpc);
    sr_openai_close(co->http);
    sr_metrics_close(co->metrics);
    while (co->peers) sr_conn_close(co->peers->conn, NULL);
    uv_close((uv_handle_t *)&co->control, NULL);
    uv_close((uv_handle_t *)&co->tick, NULL);
    uv_close((uv_handle_t *)&co->drain, NULL);
    uv_close((uv_handle_t *)&co->sigint, NULL);
    uv_close((uv_handle_t *)&co->sigterm, NULL);
}

/* While draining: stop once nothing runs, or cancel what still does when the grace is over. */
static void on_drain(uv_timer_t *t) {
    coord *co = t->data;
    double now = sr_now();
    if (co->in_flight > 0 && now < co->drain_end) return;
    if (co->in_flight > 0 && !co->broken) {
        SR_WARN("%d requests still running after the %.0f s grace (--shutdown-grace): cancelling them", co->in_flight,
                co->o->shutdown_grace_s);
        cluster_broken(co, "the server shut down before this request finished (--shutdown-grace %.0f s)",
                       co->o->shutdown_grace_s);
        /* their statuses are flushed on the next loop turns, before stop closes the connections */
        co->drain_end = now + 0.5;
        return;
    }
    stop(co);
}

static void on_signal(uv_signal_t *s, int sig) {
    coord *co = s->data;
    if (co->draining) {
        SR_INFO("signal %d while draining: stopping now", sig);
        co->drain_end = 0;
        on_drain(&co->drain);
        return;
    }
    co->draining = 1;
    co->drain_end = sr_now() + co->o->shutdown_grace_s;
    SR_INFO("signal %d: refusing new requests; %d running may finish within %.0f s", sig, co->in_flight,
            co->o->shutdown_grace_s);
    if (co->o->on_stopping) co->o->on_stopping("draining: new requests get UNAVAILABLE", co->o->data);
    health_changed(co);
    uv_timer_start(&co->drain, on_drain, 0, 100);
}

/* ---------------------------------------------------------------- run */

int sr_coord_run(const sr_coord_opts *o) {
    coord *co = calloc(1, sizeof *co);
    if (!co || !(co->w = calloc((size_t)(o->workers > 0 ? o->workers : 1), sizeof *co->w)) ||
        !(co->plane_w = calloc((size_t)(o->workers > 0 ? o->workers : 1), sizeof *co->plane_w))) {
        if (co) free(co->w);
        free(co);
        return sr_error_set(SR_ENOMEM, "out of memory");
    }
    co->o = o;
    co->loop = uv_default_loop();
    int rc = sr_metrics_new(&co->metrics, o->workers);
    if (rc == SR_OK) rc = sr_gguf_open(&co->gguf, o->model);
    if (rc == SR_OK) rc = sr_model_config_read(&co->cfg, co->gguf);
    if (rc == SR_OK) rc = sr_tok_from_gguf(&co->tok, co->gguf);
    if (rc == SR_OK) {
        sr_kv_cache k;
        rc = sr_kv_build(&k, co->cfg.n_layer, co->cfg.n_head_kv, co->cfg.head_dim, SR_DT_F16, SR_KV_DEFAULT_BLOCK);
        co->block_bytes = (int64_t)sr_kv_block_bytes(&k);
        sr_kv_free(&k);
    }
    /* ids differ between runs, so an old id does not name a new context */
    co->next_id = ((uint64_t)getpid() << 40) ^ ((uint64_t)(sr_now() * 1e6) << 16);
    if (rc == SR_OK && (!o->secret || o->secret_len < 16))
        rc = sr_error_set(SR_EINVAL, "the coordinator needs a cluster secret of 16 bytes or more (--cluster-secret-file)");
    if (rc == SR_OK) rc = sr_join_nonce(co->key_salt);
    int port = 0;
    uv_tcp_init(co->loop, &co->control);
    co->control.data = co;
    if (rc == SR_OK) rc = sr_listen(&co->control, co->loop, o->control_host, o->control_port, on_control_connection, &port);
    if (rc == SR_OK) {
        SR_INFO("control plane on %s:%d for %d workers", o->control_host, port, o->workers);
        rc = o->on_listening ? o->on_listening(o->control_host, port, o->data) : SR_OK;
    }
    const char *base = strrchr(o->model, '/');
    snprintf(co->model_name, sizeof co->model_name, "%s", base ? base + 1 : o->model);
    char *dot = strstr(co->model_name, ".gguf");
    if (dot) *dot = 0;
    sr_grpc_opts go = {.max_message = o->max_message, .api_key = o->api_key, .open_prefix = "/grpc.health.v1.Health/",
                       .on_status = grpc_status, .max_conns = o->max_conns, .timeout_s = o->client_timeout_s,
                       .idle_s = o->idle_timeout_s};
    if (rc == SR_OK)
        rc = sr_grpc_open(&co->grpc, co->loop, o->listen_host, o->listen_port, methods,
                          (int)(sizeof methods / sizeof methods[0]), &go, co);
    sr_openai_opts ho = {.host = o->http_host, .port = o->http_port, .api_key = o->api_key, .max_body = o->max_message,
                         .metrics = co->metrics, .max_conns = o->max_conns, .timeout_s = o->client_timeout_s,
                         .idle_s = o->idle_timeout_s};
    if (rc == SR_OK && o->http_host) {
        rc = sr_openai_open(&co->http, co->loop, co, &ho);
        if (rc == SR_OK) SR_INFO("serving the OpenAI HTTP API on http://%s:%d/v1", o->http_host, sr_openai_port(co->http));
    }
    if (rc == SR_OK && o->metrics_host) {
        rc = sr_metrics_serve(co->metrics, co->loop, o->metrics_host, o->metrics_port, metrics_gauges, co);
        if (rc == SR_OK)
            SR_INFO("serving Prometheus metrics on http://%s:%d/metrics", o->metrics_host, sr_metrics_port(co->metrics));
    }
    uv_timer_init(co->loop, &co->tick);
    uv_timer_init(co->loop, &co->drain);
    uv_signal_init(co->loop, &co->sigint);
    uv_signal_init(co->loop, &co->sigterm);
    co->tick.data = co->drain.data = co->sigint.data = co->sigterm.data = co;
    if (rc == SR_OK) {
        SR_INFO("serving gRPC on %s:%d (NOT_SERVING until %d workers join)", o->listen_host, sr_grpc_port(co->grpc),
                o->workers);
        uint64_t beat_ms = o->heartbeat_s > 0 && o->heartbeat_s < 1 ? (uint64_t)(o->heartbeat_s * 1e3) : 1000;
        uv_timer_start(&co->tick, on_tick, beat_ms, beat_ms);
        uv_signal_start(&co->sigint, on_signal, SIGINT);
        uv_signal_start(&co->sigterm, on_signal, SIGTERM);
        uv_run(co->loop, UV_RUN_DEFAULT);
    } else {
        co->stopping = 1;
        if (co->grpc) sr_grpc_close(co->grpc);
        sr_openai_close(co->http);
        sr_metrics_close(co->metrics);
        uv_close((uv_handle_t *)&co->control, NULL);
        uv_close((uv_handle_t *)&co->tick, NULL);
        uv_close((uv_handle_t *)&co->drain, NULL);
        uv_close((uv_handle_t *)&co->sigint, NULL);
        uv_close((uv_handle_t *)&co->sigterm, NULL);
        uv_run(co->loop, UV_RUN_DEFAULT);
    }
    while (co->ctxs) {
        cctx *c = co->ctxs;
        co->ctxs = c->next;
        ctx_free(c);
    }
    while (co->evicted) {
        evicted *e = co->evicted;
        co->evicted = e->next;
        free(e);
    }
    while (co->watchers) {
        watcher *w = co->watchers;
        co->watchers = w->next;
        free(w);
    }
    if (co->tok) sr_tok_free(co->tok);
    sr_gguf_close(co->gguf);
    sr_metrics_free(co->metrics);
    free(co->w);
    free(co->plane_w);
    free(co);
    return rc;
}
