/* workerd: a worker's compute thread, event loop and question threads (see
 * workerd.h). */
#include "daemon/workerd.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "daemon/attnd.h"
#include "net/conn.h"
#include "net/join.h"
#include "transport/group.h"
#include "worker/cp.h"

typedef struct wrk wrk;

/* A data plane: a transport over the workers the coordinator listed in its
 * Plane (under mpirun: the job's, plane 0). It stays open while a context
 * uses it, and until a newer one is open. */
typedef struct plane {
    int64_t id;
    sr_tp *tp;
    int owned;              /* opened here (not the caller's sr_workerd_opts.tp) */
    int n;
    int *workers;           /* (n) the worker at each rank */
    int users;              /* groups on it */
    struct plane *next;
} plane;

/* A context's workers on a plane, one transport for all the contexts placed
 * on the same ones (so that a batched step can run over them together). */
typedef struct grp {
    plane *pl;
    int n;
    int *workers;           /* (n) the worker at each group rank; the first is the query worker */
    sr_tp *tp;
    int users;              /* contexts on it */
    struct grp *next;
} grp;

/* A resident context: its runner and its KV, out of the model between commands. */
typedef struct wctx {
    uint64_t id;
    grp *g;
    sr_cp *cp;
    sr_kv_cache kv;
    float *logits;          /* query worker: of the last context token (a question of 0 tokens samples them) */
    int mode;
    struct wctx *next;
} wctx;

/* A question on the query worker. The fields under the handshake are read
 * and written with w->mu held. */
typedef struct gen {
    wrk *w;
    uint64_t id;
    wctx *ctx;
    int32_t *query;
    int64_t n_query;
    sr_gen_params p;
    char *stop;
    int32_t max_tokens;
    pthread_t th;
    /* handshake */
    int granted;            /* compute -> question: run one step (full mode), or sample after the batched one */
    int yielded;            /* question -> compute: the step and its sampling are over */
    int cancelled, finished;
    int32_t pending;        /* question -> compute: the token that the next batched step feeds */
    float *logits;          /* (vocab) where each feed leaves the logits it samples from */
    int step_rc;            /* compute -> question: how that step went (its logits are in the model's state) */
    /* question thread only */
    int64_t n_feeds, n_gen;
    int hit_limit;
    char *text;             /* emitted since the last token was reported */
    size_t n_text, cap_text;
    struct gen *next;
} gen;

typedef struct outmsg {
    uint8_t *bytes;
    size_t n;
    struct outmsg *next;
} outmsg;

typedef struct cmd {
    sr_frame *f;
    struct cmd *next;
} cmd;

struct wrk {
    const sr_workerd_opts *o;
    int index, n_workers;   /* this worker's, given at join */
    int attn;               /* this worker is an attention server (daemon/attnd.h) */
    sr_attnd_live live;     /* and its figures, for the heartbeats */
    unsigned char nonce[SR_JOIN_NONCE_BYTES], coord_nonce[SR_JOIN_NONCE_BYTES];
    int challenged;         /* loop */
    int64_t x_round;        /* compute: address exchange rounds */
    sr_model *m;
    sr_tokenizer *tok;
    sr_kv_cache parked;     /* the model's own empty cache, in m->kv between commands */
    sr_model_state spare;   /* the run state of steps run between a prefill's chunks */
    int64_t *between;       /* [3 * group ranks] scratch of prefill_between */
    uint64_t pf_ctx;        /* the context being prefilled */
    grp *pf_grp;            /* and its group */
    int pf_cancelled;       /* and the workers agreed to stop it */
    double pf_mark;         /* when its last chunk began */
    int64_t small_prefill;  /* tokens of a prefill that may run between chunks */
    /* event loop thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t beat, leave;
    uv_signal_t sigterm, sigint;
    sr_conn *conn;
    double last_heard;      /* the last frame from the coordinator */
    pthread_t loop_th;
    int64_t beat_seq;
    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cmd *in_head, *in_tail;
    outmsg *out_head, *out_tail;
    int gone;               /* the coordinator went away */
    int leaving;            /* loop -> compute: SIGTERM or the coordinator's Leave: do not join again */
    int connect;            /* compute -> loop: connect to the coordinator again */
    char rejoin_why[256];   /* loop -> compute: why the coordinator asked this worker to rejoin */
    int quit;               /* compute -> loop: stop */
    int joined;             /* compute -> loop: the model is loaded, the Join queued */
    int welcomed;           /* loop -> compute: the coordinator proved the secret and gave index and key */
    unsigned char data_key[SR_JOIN_KEY_BYTES];
    char join_error[512];   /* loop -> compute: why the join failed */
    sr_frame *x_list;       /* loop -> compute: the coordinator's AddressList */
    int told_ready;         /* loop */
    /* compute thread (the lists change under mu, for the heartbeat's bytes) */
    plane *planes;          /* the newest first */
    grp *grps;
    int64_t closed_sent, closed_received; /* data-plane bytes of the planes closed */
    int64_t x_size;         /* workers in the address exchange under way */
    wctx *ctxs;
    gen *gens;
    float *step_logits;     /* (cap_step, vocab) query worker: the logits of a batched step */
    int64_t cap_step;
};

/* ------------------------------------------------------------ outbound */

/* Queues a frame for the loop thread to write (any thread). */
static void send_frame(wrk *w, const sr_frame *f) {
    outmsg *o = calloc(1, sizeof *o);
    if (!o || sr_frame_pack(f, &o->bytes, &o->n) != SR_OK) {
        SR_ERROR("worker %d: could not queue a control frame: %s", w->index, sr_error_msg());
        free(o);
        return;
    }
    pthread_mutex_lock(&w->mu);
    if (w->out_tail) w->out_tail->next = o;
    else w->out_head = o;
    w->out_tail = o;
    pthread_mutex_unlock(&w->mu);
    uv_async_send(&w->wake);
}

#define FRAME(var, kind, KIND, Type, INIT)                                                        \
    Type var = INIT;                                                                            \
    sr_frame var##_f = STARRING__CONTROL__V1__FRAME__INIT;                                      \
    var##_f.kind_case = STARRING__CONTROL__V1__FRAME__KIND_##KIND;                              \
    var##_f.kind = &var

/* ------------------------------------------------------------ the loop */

static void connect_coordinator(wrk *w);

static void on_wake(uv_async_t *a) {
    wrk *w = a->data;
    pthread_mutex_lock(&w->mu);
    outmsg *o = w->out_head;
    w->out_head = w->out_tail = NULL;
    int quit = w->quit, connect = w->connect && !w->leaving;
    w->connect = 0;
    pthread_mutex_unlock(&w->mu);
    if (connect && !quit) connect_coordinator(w);
    while (o) {
        outmsg *next = o->next;
        if (w->conn) sr_conn_send_packed(w->conn, o->bytes, o->n);
        else free(o->bytes);
        free(o);
        o = next;
    }
    if (quit) {
        if (w->conn) sr_conn_close(w->conn, NULL);
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_close((uv_handle_t *)&w->beat, NULL);
        uv_close((uv_handle_t *)&w->leave, NULL);
        uv_close((uv_handle_t *)&w->sigterm, NULL);
        uv_close((uv_handle_t *)&w->sigint, NULL);
        /* closing the handles restored the default action: leaving anyway, a
         * SIGTERM to every rank (mpirun, systemd) must not make it a kill */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
    }
}

static void on_leave(uv_timer_t *t) {
    wrk *w = t->data;
    pthread_mutex_lock(&w->mu);
    w->leaving = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->conn) sr_conn_close(w->conn, NULL);
}

/* SIGTERM (mpirun passes it to every rank): the coordinator drains its
 * requests, which need this worker, then closes; leave by ourselves only if
 * it does not, or at a second signal. Without mpirun the signal is this
 * worker's alone: it tells the coordinator, which takes it out of
 * placement, drops its contexts and lets it go. */
static void on_signal(uv_signal_t *s, int sig) {
    wrk *w = s->data;
    if (uv_is_active((uv_handle_t *)&w->leave) || !w->conn) {
        on_leave(&w->leave);
        return;
    }
    uv_timer_start(&w->leave, on_leave, (uint64_t)((w->o->shutdown_grace_s + 5) * 1e3), 0);
    if (w->o->tp || !w->welcomed) return;
    FRAME(lv, leave, LEAVE, Starring__Control__V1__Leave, STARRING__CONTROL__V1__LEAVE__INIT);
    lv.reason = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    sr_conn_send(w->conn, &lv_f);
}

/* The data-plane bytes of this session: every plane's, open or closed (a
 * group's count in its plane's). */
static void plane_bytes(wrk *w, int64_t *sent, int64_t *received) {
    pthread_mutex_lock(&w->mu);
    *sent = w->closed_sent;
    *received = w->closed_received;
    for (plane *p = w->planes; p; p = p->next) {
        int64_t s, r;
        sr_tp_bytes(p->tp, &s, &r);
        *sent += s;
        *received += r;
    }
    pthread_mutex_unlock(&w->mu);
}

static void on_beat(uv_timer_t *t) {
    wrk *w = t->data;
    if (!w->conn || !w->welcomed) return;
    /* the coordinator beats too (at most every second): silent for 10 of
     * them, it is gone even if TCP has not said so (its host, a link) */
    double late = 10 * (w->o->heartbeat_s > 1 ? w->o->heartbeat_s : 1);
    if (sr_now() - w->last_heard > late) {
        char why[96];
        snprintf(why, sizeof why, "no frame from the coordinator for %.0f s", sr_now() - w->last_heard);
        sr_conn_close(w->conn, why);
        return;
    }
    if (w->o->on_tick) w->o->on_tick(w->o->data);
    pthread_mutex_lock(&w->mu);
    int joined = w->joined;
    pthread_mutex_unlock(&w->mu);
    if (joined && !w->told_ready && w->o->on_ready) {
        char status[96];
        snprintf(status, sizeof status, "worker %d of %d: model loaded, joined", w->index, w->n_workers);
        w->o->on_ready(status, w->o->data);
    }
    w->told_ready |= joined;
    FRAME(hb, heartbeat, HEARTBEAT, Starring__Control__V1__Heartbeat, STARRING__CONTROL__V1__HEARTBEAT__INIT);
    hb.worker = w->index;
    hb.seq = ++w->beat_seq;
    if (joined) plane_bytes(w, &hb.data_sent_bytes, &hb.data_received_bytes);
    if (joined && w->attn) {
        sr_cad_server_stats st;
        sr_attnd_read(&w->live, &st);
        hb.busy_s = st.busy_s;
        hb.kv_tokens = st.kv_tokens;
        hb.kv_bytes = st.kv_bytes;
    }
    sr_conn_send(w->conn, &hb_f);
}

static int queue_cmd(wrk *w, sr_frame *f);

/* The coordinator's challenge: the answer proves the secret. */
static int on_challenge(wrk *w, const Starring__Control__V1__Challenge *ch) {
    if (w->challenged) return sr_error_set(SR_EFORMAT, "a second Challenge from the coordinator");
    if (ch->nonce.len != SR_JOIN_NONCE_BYTES)
        return sr_error_set(SR_EFORMAT, "Challenge.nonce has %zu bytes, not %d", ch->nonce.len, SR_JOIN_NONCE_BYTES);
    w->challenged = 1;
    memcpy(w->coord_nonce, ch->nonce.data, SR_JOIN_NONCE_BYTES);
    int rc = sr_join_nonce(w->nonce);
    if (rc != SR_OK) return rc;
    unsigned char proof[SR_JOIN_PROOF_BYTES];
    sr_join_proof(proof, w->o->secret, w->o->secret_len, SR_JOIN_WORKER, w->coord_nonce, w->nonce);
    FRAME(h, hello, HELLO, Starring__Control__V1__Hello, STARRING__CONTROL__V1__HELLO__INIT);
    h.nonce.data = w->nonce;
    h.nonce.len = sizeof w->nonce;
    h.proof.data = proof;
    h.proof.len = sizeof proof;
    h.worker = w->o->worker;
    return sr_conn_send(w->conn, &h_f);
}

/* The coordinator's Welcome: it proves the secret too, and gives this
 * worker its index and the data plane's key. */
static int on_welcome(wrk *w, const Starring__Control__V1__Welcome *wl) {
    int rc = SR_OK;
    if (!w->challenged || w->welcomed) rc = sr_error_set(SR_EFORMAT, "a Welcome out of turn");
    else if (sr_join_check(wl->proof.data, wl->proof.len, w->o->secret, w->o->secret_len, SR_JOIN_COORDINATOR,
                           w->nonce, w->coord_nonce) != SR_OK)
        rc = sr_error_set(SR_ECOMM, "the coordinator at %s:%d did not prove the cluster secret: %s", w->o->coord_host,
                          w->o->coord_port, sr_error_msg());
    else if (wl->workers < 1 || wl->workers > 65536 || wl->worker < 0 || wl->worker >= wl->workers ||
             (w->o->worker >= 0 && (wl->worker != w->o->worker || wl->workers != w->o->workers)))
        rc = sr_error_set(SR_EFORMAT, "Welcome.worker %d of %d is out of range (0..workers-1, workers 1..65536%s)",
                          wl->worker, wl->workers, w->o->worker >= 0 ? ", and this worker's rank" : "");
    else if (wl->key_salt.len != SR_JOIN_NONCE_BYTES)
        rc = sr_error_set(SR_EFORMAT, "Welcome.key_salt has %zu bytes, not %d", wl->key_salt.len, SR_JOIN_NONCE_BYTES);
    pthread_mutex_lock(&w->mu);
    if (rc == SR_OK) {
        w->index = wl->worker;
        w->n_workers = wl->workers;
        sr_join_data_key(w->data_key, w->o->secret, w->o->secret_len, wl->key_salt.data);
        unsigned char key[SR_JOIN_KEY_BYTES];
        sr_join_session_key(key, w->o->secret, w->o->secret_len, w->coord_nonce, w->nonce);
        sr_conn_secure(w->conn, key, SR_JOIN_WORKER, SR_JOIN_COORDINATOR);
        sodium_memzero(key, sizeof key);
        w->conn->rd.cap = w->o->max_frame;
        w->welcomed = 1;
    } else {
        snprintf(w->join_error, sizeof w->join_error, "%s", sr_error_msg());
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (rc == SR_OK) {
        /* the log's rank is the data plane's, as under mpirun */
        sr_log_init("worker", w->index + 1, sr_log_level);
        SR_INFO("worker %d of %d: joined the coordinator at %s:%d, both proved the cluster secret", w->index,
                w->n_workers, w->o->coord_host, w->o->coord_port);
    }
    return rc;
}

/* The coordinator's Rejoin (it lost another worker, so every context is
 * gone) or Leave (it stops): the connection ends here, and the compute
 * thread joins again or leaves. */
static void on_part(wrk *w, sr_conn *c, int rejoin, const char *reason) {
    pthread_mutex_lock(&w->mu);
    if (rejoin) snprintf(w->rejoin_why, sizeof w->rejoin_why, "%s", reason);
    else w->leaving = 1;
    pthread_mutex_unlock(&w->mu);
    if (rejoin) SR_WARN("worker %d: the coordinator asks this worker to join again: %s", w->index, reason);
    else SR_INFO("worker %d: the coordinator lets this worker go: %s", w->index, reason);
    sr_conn_close(c, NULL);
}

static int on_frame(sr_conn *c, sr_frame *f) {
    wrk *w = c->data;
    int rc = SR_OK;
    int rejoin = f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_REJOIN;
    w->last_heard = sr_now();
    if (w->welcomed && f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_HEARTBEAT) {
        sr_frame_free(f);
        return SR_OK;
    }
    if (w->welcomed && (rejoin || f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_LEAVE)) {
        on_part(w, c, rejoin, rejoin ? f->rejoin->reason : f->leave->reason);
        sr_frame_free(f);
        return SR_OK;
    }
    switch (f->kind_case) {
    case STARRING__CONTROL__V1__FRAME__KIND_CHALLENGE: rc = on_challenge(w, f->challenge); break;
    case STARRING__CONTROL__V1__FRAME__KIND_WELCOME: rc = on_welcome(w, f->welcome); break;
    case STARRING__CONTROL__V1__FRAME__KIND_ADDRESS_LIST:
        /* the compute thread waits for it in the exchange */
        pthread_mutex_lock(&w->mu);
        if (w->x_list) sr_frame_free(w->x_list);
        w->x_list = f;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        return SR_OK;
    default:
        if (!w->welcomed) rc = sr_error_set(SR_EFORMAT, "a control frame of kind %d before the Welcome", (int)f->kind_case);
        else return queue_cmd(w, f);
    }
    sr_frame_free(f);
    return rc;
}

static int queue_cmd(wrk *w, sr_frame *f) {
    cmd *k = calloc(1, sizeof *k);
    if (!k) {
        sr_frame_free(f);
        return sr_error_set(SR_ENOMEM, "out of memory for a command");
    }
    k->f = f;
    pthread_mutex_lock(&w->mu);
    if (w->in_tail) w->in_tail->next = k;
    else w->in_head = k;
    w->in_tail = k;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return SR_OK;
}

static void on_conn_close(sr_conn *c, const char *why) {
    wrk *w = c->data;
    w->conn = NULL;
    uv_timer_stop(&w->beat);
    pthread_mutex_lock(&w->mu);
    w->gone = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void on_connect(sr_conn *c, int status) {
    wrk *w = c->data;
    if (status != 0) {
        SR_ERROR("worker %d: cannot reach the coordinator at %s:%d: %s", w->index, w->o->coord_host,
                 w->o->coord_port, uv_strerror(status));
        return;
    }
    uv_timer_start(&w->beat, on_beat, (uint64_t)(w->o->heartbeat_s * 1e3), (uint64_t)(w->o->heartbeat_s * 1e3));
}

/* A new control connection, for a join again (the first is made before the
 * loop runs, so that a bad address fails the start). */
static void connect_coordinator(wrk *w) {
    /* an attempt still connecting (to a host that does not answer) is dropped, unheard */
    if (w->conn) {
        sr_conn *old = w->conn;
        w->conn = NULL;
        old->on_close = NULL;
        uv_timer_stop(&w->beat);
        sr_conn_close(old, "no Welcome in time; trying again");
    }
    w->challenged = 0;
    if (sr_conn_connect(&w->conn, &w->loop, w->o->coord_host, w->o->coord_port, SR_JOIN_FRAME_MAX, on_frame,
                        on_conn_close, on_connect, w) == SR_OK)
        return;
    SR_ERROR("worker %d: %s", w->index, sr_error_msg());
    pthread_mutex_lock(&w->mu);
    w->gone = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *loop_main(void *arg) {
    wrk *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ------------------------------------------------------------ contexts */

static wctx *ctx_find(wrk *w, uint64_t id) {
    for (wctx *c = w->ctxs; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

/* The context's cache into the model for a command, and back out. */
static void ctx_in(wrk *w, wctx *c) { w->m->kv = c->kv; }
static void ctx_out(wrk *w, wctx *c) {
    c->kv = w->m->kv;
    w->m->kv = w->parked;
}

/* ------------------------------------------------------------ planes and groups */

static plane *plane_find(wrk *w, int64_t id) {
    for (plane *p = w->planes; p; p = p->next)
        if (p->id == id) return p;
    return NULL;
}

static void plane_free(wrk *w, plane *p) {
    int64_t s, r;
    sr_tp_bytes(p->tp, &s, &r);
    pthread_mutex_lock(&w->mu);
    for (plane **q = &w->planes; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    w->closed_sent += s;
    w->closed_received += r;
    pthread_mutex_unlock(&w->mu);
    if (p->owned) sr_tp_close(p->tp);
    free(p->workers);
    free(p);
}

/* Closes the planes that no context uses and a newer one replaces. */
static void planes_trim(wrk *w) {
    for (plane *p = w->planes ? w->planes->next : NULL, *n; p; p = n) {
        n = p->next;
        if (p->users == 0) {
            SR_INFO("worker %d: data plane %lld closed (no context on it, plane %lld replaces it)", w->index,
                    (long long)p->id, (long long)w->planes->id);
            plane_free(w, p);
        }
    }
}

/* A plane from a list of n workers, the newest. */
static int plane_add(wrk *w, int64_t id, sr_tp *tp, int owned, const int32_t *workers, int n) {
    plane *p = calloc(1, sizeof *p);
    if (!p || !(p->workers = malloc(sizeof *p->workers * (size_t)n))) {
        free(p);
        return sr_error_set(SR_ENOMEM, "out of memory for a data plane");
    }
    for (int i = 0; i < n; i++) p->workers[i] = workers ? workers[i] : i;
    p->id = id;
    p->tp = tp;
    p->owned = owned;
    p->n = n;
    pthread_mutex_lock(&w->mu);
    p->next = w->planes;
    w->planes = p;
    pthread_mutex_unlock(&w->mu);
    planes_trim(w);
    return SR_OK;
}

static void grp_release(wrk *w, grp *g) {
    if (!g || --g->users > 0) return;
    for (grp **q = &w->grps; *q; q = &(*q)->next)
        if (*q == g) {
            *q = g->next;
            break;
        }
    sr_tp_close(g->tp);
    g->pl->users--;
    free(g->workers);
    free(g);
    planes_trim(w);
}

/* The group of a Prefill (its plane and workers; none listed: all of the
 * plane's), shared with the contexts on the same workers; *out NULL if
 * this worker is not in it. */
static int grp_get(wrk *w, const Starring__Control__V1__Prefill *p, grp **out) {
    *out = NULL;
    plane *pl = plane_find(w, p->plane);
    if (!pl) return sr_error_set(SR_ESTATE, "Prefill.plane %lld: this worker has no such data plane", (long long)p->plane);
    int n = p->n_workers ? (int)p->n_workers : pl->n;
    if (n > pl->n)
        return sr_error_set(SR_EFORMAT, "Prefill.workers has %d entries; plane %lld has %d workers", n,
                            (long long)p->plane, pl->n);
    int *ranks = malloc(sizeof *ranks * (size_t)n), *workers = malloc(sizeof *workers * (size_t)n);
    int rc = ranks && workers ? SR_OK : sr_error_set(SR_ENOMEM, "out of memory for a group");
    for (int i = 0; rc == SR_OK && i < n; i++) {
        workers[i] = p->n_workers ? p->workers[i] : pl->workers[i];
        ranks[i] = -1;
        for (int r = 0; r < pl->n; r++)
            if (pl->workers[r] == workers[i]) ranks[i] = r;
        if (ranks[i] < 0)
            rc = sr_error_set(SR_EFORMAT, "Prefill.workers[%d] = %d is not a worker of data plane %lld", i, workers[i],
                              (long long)p->plane);
    }
    grp *g = NULL;
    for (grp *e = w->grps; rc == SR_OK && e && !g; e = e->next)
        if (e->pl == pl && e->n == n && memcmp(e->workers, workers, sizeof *workers * (size_t)n) == 0) g = e;
    if (rc == SR_OK && !g) {
        sr_tp *tp = NULL;
        rc = sr_tp_group_open(&tp, pl->tp, ranks, n);
        if (rc == SR_OK && !tp)
            rc = sr_error_set(SR_EFORMAT, "worker %d got the Prefill of a context not placed on it", w->index);
        if (rc == SR_OK && !(g = calloc(1, sizeof *g))) rc = sr_error_set(SR_ENOMEM, "out of memory for a group");
        if (rc == SR_OK) {
            *g = (grp){pl, n, workers, tp, 0, w->grps};
            workers = NULL;
            w->grps = g;
            pl->users++;
        } else {
            sr_tp_close(tp);
        }
    }
    free(ranks);
    free(workers);
    if (rc == SR_OK) {
        g->users++;
        *out = g;
    }
    return rc;
}

static void ctx_free(wrk *w, wctx *c) {
    sr_cp_close(c->cp);
    grp_release(w, c->g);
    sr_kv_free(&c->kv);
    free(c->logits);
    free(c);
}

/* A command on context c failed here (a peer of its group gone, say): the
 * coordinator loses that context, not the cluster. */
static void ctx_fault(wrk *w, uint64_t ctx, int rc, const char *what) {
    FRAME(f, context_fault, CONTEXT_FAULT, Starring__Control__V1__ContextFault, STARRING__CONTROL__V1__CONTEXT_FAULT__INIT);
    char msg[700];
    snprintf(msg, sizeof msg, "worker %d: %s: %s", w->index, what, sr_error_msg());
    SR_WARN("context %016llx: %s", (unsigned long long)ctx, msg);
    f.ctx = ctx;
    f.status = rc;
    f.error = msg;
    send_frame(w, &f_f);
}

static void handle(wrk *w, const sr_frame *f);

/* ------------------------------------------------------------ cad */

/* Before the data plane closes: the query worker lets the attention
 * servers go (the contexts are freed, so each has dropped its KV there).
 * Attention servers exist under mpirun only, on the job's transport. */
static void attn_servers_release(wrk *w) {
    int k = w->o->attn_servers;
    if (k > 0 && !w->attn && w->joined && w->index == SR_CP_QUERY_RANK && sr_cad_quit(w->o->tp, k, SR_ATTND_TAG) != SR_OK)
        SR_WARN("worker %d: could not let the attention servers go: %s", w->index, sr_error_msg());
}

/* A context's runner: a cad context over the job's whole data plane (the
 * attention servers are its last ranks) under its id, the others over
 * their group (model workers only). */
static int cp_open(wrk *w, wctx *c, sr_cp_opts *co) {
    if (co->mode != SR_CP_CAD) return sr_cp_open(&c->cp, w->m, c->g->tp, co);
    co->attn_servers = w->o->attn_servers;
    co->tag = SR_ATTND_TAG;
    int rc = sr_cp_open(&c->cp, w->m, w->o->tp, co);
    if (rc == SR_OK) sr_cad_name(sr_cp_cad(c->cp), c->id);
    return rc;
}

/* Whether the context's generated tokens run in batched steps; full and
 * cad contexts step one at a time (sr_cp_step_batch takes star and ring). */
static int batched(const wctx *c) { return c->mode != SR_CP_FULL && c->mode != SR_CP_CAD; }

static void attnd_send(void *data, const sr_frame *f) { send_frame(data, f); }

/* Commands a worker may run in the middle of a prefill. Collective (the
 * workers run them together): Begin, Step, and a Prefill of at most
 * small_prefill tokens (no more work than one chunk; it runs whole). Local:
 * Cancel, Drop, and a PrefillCancel of another context (its Prefill is
 * ahead of it in the queue, so it is over or waits in front). A larger
 * Prefill waits, and so does the running prefill's PrefillCancel, which
 * the next chunk must see. */
static grp *cmd_grp(wrk *w, const sr_frame *f) {
    const wctx *c = NULL;
    if (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_BEGIN) c = ctx_find(w, f->begin->ctx);
    else if (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_STEP)
        c = ctx_find(w, f->step->n_ctxs ? f->step->ctxs[0] : f->step->ctx);
    return c ? c->g : NULL;
}
/* Of the running prefill's group only: the workers of another group are
 * not in this prefill, and may be in a collective of their own. */
static int cmd_collective(wrk *w, const sr_frame *f) {
    if (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_PREFILL) {
        const Starring__Control__V1__Prefill *p = f->prefill;
        const grp *g = w->pf_grp;
        return (int64_t)p->n_tokens <= w->small_prefill && g && p->plane == g->pl->id && (int)p->n_workers == g->n &&
               memcmp(p->workers, g->workers, sizeof *g->workers * (size_t)g->n) == 0;
    }
    return (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_BEGIN ||
            f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_STEP) && w->pf_grp && cmd_grp(w, f) == w->pf_grp;
}
static int cmd_between(wrk *w, const sr_frame *f) {
    return cmd_collective(w, f) || f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_CANCEL ||
           f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_DROP ||
           (f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_PREFILL_CANCEL && f->prefill_cancel->ctx != w->pf_ctx);
}

/* Runs the queued commands up to the n-th collective one, in order, with
 * the spare run state and each command's own context in the model; the
 * prefill's activations and KV are put back after. */
static void run_between(wrk *w, int64_t n) {
    sr_kv_cache kv = w->m->kv;
    sr_model_state st = w->m->state;
    w->m->state = w->spare;
    for (int64_t ran = 0; ran < n;) {
        pthread_mutex_lock(&w->mu);
        cmd *k = w->in_head;
        if (k && cmd_between(w, k->f) && !(w->in_head = k->next)) w->in_tail = NULL;
        pthread_mutex_unlock(&w->mu);
        if (!k || !cmd_between(w, k->f)) break;
        ran += cmd_collective(w, k->f);
        handle(w, k->f);
        sr_frame_free(k->f);
        free(k);
    }
    w->spare = w->m->state;
    w->m->state = st;
    w->m->kv = kv;
}

/* The collective commands this worker has in front of the first command
 * that must wait (cmd_between), and whether the running prefill's
 * PrefillCancel is queued. Under w->mu. */
static int64_t queued_between(wrk *w, int *cancelled) {
    int64_t n = 0;
    int open = 1;
    for (cmd *k = w->in_head; k; k = k->next) {
        if (k->f->kind_case == STARRING__CONTROL__V1__FRAME__KIND_PREFILL_CANCEL && k->f->prefill_cancel->ctx == w->pf_ctx)
            *cancelled = 1;
        if (!cmd_between(w, k->f)) open = 0;
        if (open) n += cmd_collective(w, k->f);
    }
    return n;
}

/* Waits up to `ms` for a collective command to run between chunks. */
static void wait_between(wrk *w, int ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    int cancelled = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->gone && queued_between(w, &cancelled) == 0 && !cancelled)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) != 0) break;
    pthread_mutex_unlock(&w->mu);
}

/* Between two chunks of a prefill (sr_cp_opts.between), on every worker, in
 * rounds: one allgather over the data plane agrees whether the prefill is
 * cancelled (a worker has its PrefillCancel, or lost the coordinator), how
 * many runnable collective commands every worker has (every worker gets the
 * same commands in the same order, so running the first n is the same on
 * all) and whether there is time for another round. The questions that run
 * get up to half as long as the chunk took, one step each per round (the
 * next step comes from the coordinator once a token is out), so a running
 * question waits at most one chunk and the prefill keeps at least two
 * thirds of the time. The query worker reports the progress. */
static int prefill_between(void *data, int64_t done, int64_t total) {
    wrk *w = data;
    sr_tp *tp = w->pf_grp->tp;
    double until = sr_now() + (sr_now() - w->pf_mark) / 2;
    for (int round = 0;; round++) {
        if (round > 0) wait_between(w, 50);
        int cancelled = 0;
        pthread_mutex_lock(&w->mu);
        int64_t mine[3] = {w->gone, queued_between(w, &cancelled), sr_now() < until};
        pthread_mutex_unlock(&w->mu);
        mine[0] |= cancelled;
        int rc = sr_tp_allgather(tp, mine, (int64_t)sizeof mine, w->between);
        if (rc != SR_OK) return rc;
        int64_t stop = 0, n = mine[1], more = 1;
        for (int p = 0; p < sr_tp_size(tp); p++) {
            stop |= w->between[3 * p];
            if (w->between[3 * p + 1] < n) n = w->between[3 * p + 1];
            more &= w->between[3 * p + 2];
        }
        if (stop) {
            w->pf_cancelled = 1;
            return sr_error_set(SR_ESTATE, "the prefill of context %016llx was cancelled at %lld of %lld tokens",
                                (unsigned long long)w->pf_ctx, (long long)done, (long long)total);
        }
        if (round == 0 && sr_tp_rank(tp) == SR_CP_QUERY_RANK) {
            FRAME(g, progress, PROGRESS, Starring__Control__V1__PrefillProgress, STARRING__CONTROL__V1__PREFILL_PROGRESS__INIT);
            g.ctx = w->pf_ctx;
            g.done = done;
            g.total = total;
            send_frame(w, &g_f);
        }
        if (n == 0) break;
        run_between(w, n);
        if (!more) break;
    }
    w->pf_mark = sr_now();
    return SR_OK;
}

static void do_prefill(wrk *w, const Starring__Control__V1__Prefill *p) {
    FRAME(r, prefilled, PREFILLED, Starring__Control__V1__Prefilled, STARRING__CONTROL__V1__PREFILLED__INIT);
    r.ctx = p->ctx;
    sr_error_clear();
    int nested = w->pf_ctx != 0;
    wctx *c = calloc(1, sizeof *c);
    int rc = c ? SR_OK : sr_error_set(SR_ENOMEM, "out of memory for a context");
    const sr_kv_cache *pk = &w->parked;
    if (rc == SR_OK && ctx_find(w, p->ctx)) rc = sr_error_set(SR_ESTATE, "context %llx exists", (unsigned long long)p->ctx);
    if (rc == SR_OK) rc = sr_kv_build(&c->kv, pk->n_layer, pk->n_head_kv, pk->head_dim, pk->dtype, pk->block_size);
    if (rc == SR_OK) rc = grp_get(w, p, &c->g);
    if (rc == SR_OK && !nested && !(w->between = calloc((size_t)c->g->n, 3 * sizeof(int64_t))))
        rc = sr_error_set(SR_ENOMEM, "out of memory");
    double t0 = sr_now();
    if (rc == SR_OK) {
        c->id = p->ctx;
        c->mode = p->mode;
        /* a small prefill between another's chunks runs whole */
        sr_cp_opts co = {.mode = p->mode, .block_size = p->block_size, .anchor_size = p->anchor_size, .tag = 0,
                         .between = nested ? NULL : prefill_between, .between_data = w};
        if (!nested) {
            w->pf_ctx = p->ctx;
            w->pf_grp = c->g;
            w->pf_mark = sr_now();
        }
        ctx_in(w, c);
        rc = cp_open(w, c, &co);
        if (rc == SR_OK) rc = sr_cp_prefill(c->cp, p->tokens, (int64_t)p->n_tokens);
        if (rc == SR_OK && sr_cp_is_query_rank(c->cp)) {
            size_t nb = sizeof(float) * (size_t)w->m->config.vocab_size;
            if ((c->logits = malloc(nb))) memcpy(c->logits, w->m->state.logits, nb);
            else rc = sr_error_set(SR_ENOMEM, "out of memory for the context's logits");
        }
        ctx_out(w, c);
    }
    r.status = rc;
    r.seconds = sr_now() - t0;
    if (rc == SR_OK) {
        sr_cp_stats st;
        sr_cp_get_stats(c->cp, &st);
        r.kv_tokens = st.kv_tokens;
        r.kv_bytes = (int64_t)sr_kv_bytes(&c->kv);
        c->next = w->ctxs;
        w->ctxs = c;
        SR_INFO("context %016llx: %zu tokens prefilled in %.2f s, %lld here (%lld bytes)", (unsigned long long)p->ctx,
                p->n_tokens, r.seconds, (long long)r.kv_tokens, (long long)r.kv_bytes);
    } else {
        r.error = (char *)sr_error_msg();
        r.cancelled = !nested && w->pf_cancelled;
        if (r.cancelled) SR_INFO("%s", r.error);
        if (c) ctx_free(w, c);
    }
    if (!nested) {
        w->pf_ctx = 0;
        w->pf_grp = NULL;
        w->pf_cancelled = 0;
        free(w->between);
        w->between = NULL;
    }
    send_frame(w, &r_f);
}

static void do_drop(wrk *w, uint64_t id) {
    FRAME(r, dropped, DROPPED, Starring__Control__V1__Dropped, STARRING__CONTROL__V1__DROPPED__INIT);
    r.ctx = id;
    for (wctx **p = &w->ctxs; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            wctx *c = *p;
            *p = c->next;
            r.kv_bytes = (int64_t)sr_kv_bytes(&c->kv);
            SR_INFO("context %016llx dropped (%lld bytes of KV here)", (unsigned long long)id, (long long)r.kv_bytes);
            ctx_free(w, c);
            break;
        }
    send_frame(w, &r_f);
}

/* ------------------------------------------------------------ questions */

static int gen_emit(void *data, const char *text, size_t len) {
    gen *g = data;
    if (g->n_text + len + 1 > g->cap_text) {
        size_t cap = g->cap_text ? 2 * g->cap_text : 256;
        while (cap < g->n_text + len + 1) cap *= 2;
        char *b = realloc(g->text, cap);
        if (!b) return 1;
        g->text = b;
        g->cap_text = cap;
    }
    memcpy(g->text + g->n_text, text, len);
    g->n_text += len;
    return 0;
}

static void gen_report(gen *g, int32_t id, int more) {
    FRAME(t, token, TOKEN, Starring__Control__V1__TokenOut, STARRING__CONTROL__V1__TOKEN_OUT__INIT);
    t.gen = g->id;
    t.id = id;
    t.text.data = (uint8_t *)g->text;
    t.text.len = g->n_text;
    t.more = more;
    send_frame(g->w, &t_f);
    g->n_text = 0;
}

/* The question thread waits for its next step (it holds none). */
static int gen_wait_grant(gen *g) {
    wrk *w = g->w;
    pthread_mutex_lock(&w->mu);
    while (!g->granted && !g->cancelled) pthread_cond_wait(&w->cv, &w->mu);
    /* a granted step runs even when cancelled: the other workers serve it */
    int go = g->granted;
    g->granted = 0;
    pthread_mutex_unlock(&w->mu);
    return go ? SR_OK : sr_error_set(SR_ESTATE, "the question was cancelled");
}

/* Every feed but the question's carries the token just sampled (without a
 * question, every feed does): report it, give the step back, wait for the
 * next one. */
static int gen_feed(void *data, const int32_t *tokens, int64_t n) {
    gen *g = data;
    wrk *w = g->w;
    if (g->n_feeds++ > 0) {
        g->n_gen++;
        int more = g->n_gen < g->max_tokens;
        gen_report(g, tokens[0], more);
        if (!more) {
            g->hit_limit = 1; /* the token is reported; no step for it */
            return sr_error_set(SR_ESTATE, "token limit");
        }
        pthread_mutex_lock(&w->mu);
        g->pending = tokens[0];
        g->yielded = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        int rc = gen_wait_grant(g);
        if (rc != SR_OK) return rc;
        /* a sharded context's token ran in a batched step (do_step_batch) */
        if (batched(g->ctx)) return g->step_rc;
    }
    int rc = sr_cp_feed(g->ctx->cp, tokens, n);
    int rc2 = g->ctx->mode != SR_CP_FULL ? sr_cp_end(g->ctx->cp) : SR_OK;
    /* the model's state is this question's while it holds the step */
    memcpy(g->logits, w->m->state.logits, sizeof(float) * (size_t)w->m->config.vocab_size);
    return rc != SR_OK ? rc : rc2;
}

static void *gen_main(void *arg) {
    gen *g = arg;
    wrk *w = g->w;
    FRAME(d, done, DONE, Starring__Control__V1__GenDone, STARRING__CONTROL__V1__GEN_DONE__INIT);
    d.gen = g->id;
    sr_gen_stats st = {0};
    sr_error_clear();
    int rc = gen_wait_grant(g);
    if (rc == SR_OK) {
        /* with no question the first token comes from the context's own logits */
        if (g->n_query == 0) memcpy(g->logits, g->ctx->logits, sizeof(float) * (size_t)w->m->config.vocab_size);
        rc = sr_gen_run_fed(w->m, gen_feed, g, w->tok, g->query, g->n_query, &g->p, gen_emit, g, &st);
    }
    int cancelled = 0;
    pthread_mutex_lock(&w->mu);
    cancelled = g->cancelled;
    pthread_mutex_unlock(&w->mu);
    if (g->hit_limit) {
        rc = SR_OK;
        st.stop_reason = SR_GEN_LENGTH;
    }
    if (g->n_text > 0) gen_report(g, -1, 0);
    d.status = cancelled && !g->hit_limit ? SR_OK : rc;
    d.cancelled = cancelled && !g->hit_limit;
    if (rc != SR_OK && !d.cancelled) d.error = (char *)sr_error_msg();
    d.stop_reason = st.stop_reason;
    d.prompt_tokens = g->n_query;
    d.generated_tokens = g->n_gen + (st.stop_reason == SR_GEN_STOP_STRING);
    d.question_s = st.t_prompt;
    d.decode_s = st.t_decode;
    send_frame(w, &d_f);
    pthread_mutex_lock(&w->mu);
    g->finished = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static gen *gen_find(wrk *w, uint64_t id) {
    for (gen *g = w->gens; g; g = g->next)
        if (g->id == id) return g;
    return NULL;
}

static void gen_free(gen *g) {
    free(g->logits);
    free(g->query);
    free(g->stop);
    free(g->text);
    free(g);
}

/* Joins the question threads that are over. */
static void gen_reap(wrk *w, int all) {
    for (gen **p = &w->gens; *p;) {
        gen *g = *p;
        pthread_mutex_lock(&w->mu);
        if (all) g->cancelled = 1;
        pthread_cond_broadcast(&w->cv);
        int over = g->finished;
        pthread_mutex_unlock(&w->mu);
        if (over || all) {
            pthread_join(g->th, NULL);
            *p = g->next;
            gen_free(g);
        } else {
            p = &g->next;
        }
    }
}

/* Grants the question one step with its context in the model, and waits
 * until it has sampled after it (or ended). */
static void gen_step(wrk *w, gen *g) {
    ctx_in(w, g->ctx);
    pthread_mutex_lock(&w->mu);
    g->granted = 1;
    g->yielded = 0;
    pthread_cond_broadcast(&w->cv);
    while (!g->yielded && !g->finished) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    ctx_out(w, g->ctx);
}

/* A fault the coordinator must hear of: the workers may be out of step. */
static void fault(wrk *w, int rc, const char *what) {
    FRAME(f, fault, FAULT, Starring__Control__V1__Fault, STARRING__CONTROL__V1__FAULT__INIT);
    char msg[700];
    snprintf(msg, sizeof msg, "worker %d: %s: %s", w->index, what, sr_error_msg());
    SR_ERROR("%s", msg);
    f.status = rc;
    f.error = msg;
    send_frame(w, &f_f);
}

static void do_begin(wrk *w, const Starring__Control__V1__Begin *b) {
    wctx *c = ctx_find(w, b->ctx);
    if (!c) {
        sr_error_set(SR_ESTATE, "no context %llx", (unsigned long long)b->ctx);
        fault(w, SR_ESTATE, "begin");
        return;
    }
    ctx_in(w, c);
    int rc = sr_cp_rewind_keep(c->cp, b->keep);
    ctx_out(w, c);
    if (rc != SR_OK) {
        ctx_fault(w, c->id, rc, "rewind");
        return;
    }
    if (!sr_cp_is_query_rank(c->cp)) {
        if (b->n_query > 0) {
            ctx_in(w, c);
            rc = sr_cp_serve(c->cp);
            ctx_out(w, c);
            if (rc != SR_OK) ctx_fault(w, c->id, rc, "serve the question");
        }
        return;
    }
    gen *g = calloc(1, sizeof *g);
    if (!g || !(g->query = malloc(sizeof(int32_t) * (b->n_query + 1))) ||
        !(g->logits = malloc(sizeof(float) * (size_t)w->m->config.vocab_size)) ||
        (b->stop && *b->stop && !(g->stop = strdup(b->stop)))) {
        if (g) gen_free(g);
        sr_error_set(SR_ENOMEM, "out of memory for a question");
        fault(w, SR_ENOMEM, "begin");
        return;
    }
    g->w = w;
    g->id = b->gen;
    g->ctx = c;
    if (b->n_query) memcpy(g->query, b->query, sizeof(int32_t) * b->n_query);
    g->n_query = (int64_t)b->n_query;
    /* with no question the first feed already carries a sampled token, to
     * report before its step (the other workers served no question) */
    g->n_feeds = g->n_query == 0;
    g->max_tokens = b->max_tokens;
    g->p.sampling = sr_sampler_defaults();
    g->p.sampling.temperature = b->temperature;
    if (b->top_k > 0) g->p.sampling.top_k = b->top_k;
    if (b->top_p > 0) g->p.sampling.top_p = b->top_p;
    g->p.sampling.seed = b->seed;
    g->p.stop = g->stop;
    g->p.logits = g->logits;
    /* one more than the limit: the last token is caught in the feed, so that its id is known */
    g->p.n_predict = (int64_t)b->max_tokens + 1;
    if (pthread_create(&g->th, NULL, gen_main, g) != 0) {
        gen_free(g);
        sr_error_set(SR_ENOMEM, "cannot start a question thread");
        fault(w, SR_ENOMEM, "begin");
        return;
    }
    g->next = w->gens;
    w->gens = g;
    gen_step(w, g);
}

/* One batched decode step (Step.gens): every worker runs the next token
 * of every listed generation in one sr_cp_step_batch over their contexts;
 * then the query worker lets every generation sample from its row of the
 * logits and report its token, all at once. */
static void do_step_batch(wrk *w, const Starring__Control__V1__Step *s) {
    int64_t n = (int64_t)s->n_gens;
    int rc = s->n_ctxs == s->n_gens ? SR_OK
                                    : sr_error_set(SR_EFORMAT, "a batched Step has %zu generations and %zu contexts, "
                                                   "not one context each", s->n_gens, s->n_ctxs);
    sr_cp **cps = calloc((size_t)n, sizeof *cps);
    const sr_kv_cache **kvs = calloc((size_t)n, sizeof *kvs);
    gen **gs = calloc((size_t)n, sizeof *gs);
    int32_t *tok = calloc((size_t)n, sizeof *tok);
    if (rc == SR_OK && (!cps || !kvs || !gs || !tok)) rc = sr_error_set(SR_ENOMEM, "out of memory for a batched step");
    for (int64_t i = 0; rc == SR_OK && i < n; i++) {
        wctx *c = ctx_find(w, s->ctxs[i]);
        if (!c) {
            rc = sr_error_set(SR_ESTATE, "no context %llx", (unsigned long long)s->ctxs[i]);
            break;
        }
        cps[i] = c->cp;
        kvs[i] = &c->kv;
        if (!sr_cp_is_query_rank(c->cp)) continue;
        if (!(gs[i] = gen_find(w, s->gens[i])) || gs[i]->ctx != c)
            rc = sr_error_set(SR_ESTATE, "no question %llx over context %llx", (unsigned long long)s->gens[i],
                              (unsigned long long)s->ctxs[i]);
        else tok[i] = gs[i]->pending; /* set before it yielded */
    }
    int query = rc == SR_OK && sr_cp_is_query_rank(cps[0]);
    int64_t vocab = w->m->config.vocab_size;
    if (query && n > w->cap_step) {
        float *l = realloc(w->step_logits, sizeof(float) * (size_t)(n * vocab));
        if (!l) rc = sr_error_set(SR_ENOMEM, "out of memory for the logits of a batched step of %lld", (long long)n);
        else {
            w->step_logits = l;
            w->cap_step = n;
        }
    }
    if (rc != SR_OK) { /* the workers are out of step: the coordinator must hear of it */
        fault(w, rc, "batched step");
    } else {
        rc = sr_cp_step_batch(cps, kvs, n, tok, w->step_logits);
        for (int64_t i = 0; rc != SR_OK && !query && i < n; i++) ctx_fault(w, s->ctxs[i], rc, "serve a batched step");
        /* a failed step fails each generation in it, with the error; they
         * sample and report at once, each from its own logits */
        pthread_mutex_lock(&w->mu);
        for (int64_t i = 0; query && i < n; i++) {
            gs[i]->step_rc = rc;
            if (rc == SR_OK) memcpy(gs[i]->logits, w->step_logits + i * vocab, sizeof(float) * (size_t)vocab);
            gs[i]->granted = 1;
            gs[i]->yielded = 0;
        }
        pthread_cond_broadcast(&w->cv);
        for (int64_t i = 0; query && i < n; i++)
            while (!gs[i]->yielded && !gs[i]->finished) pthread_cond_wait(&w->cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
    }
    free(cps);
    free(kvs);
    free(gs);
    free(tok);
}

static void do_step(wrk *w, const Starring__Control__V1__Step *s) {
    if (s->n_gens > 0) {
        do_step_batch(w, s);
        return;
    }
    wctx *c = ctx_find(w, s->ctx);
    if (!c) {
        sr_error_set(SR_ESTATE, "no context %llx", (unsigned long long)s->ctx);
        fault(w, SR_ESTATE, "step");
        return;
    }
    if (!sr_cp_is_query_rank(c->cp)) {
        ctx_in(w, c);
        int rc = sr_cp_serve(c->cp);
        ctx_out(w, c);
        if (rc != SR_OK) ctx_fault(w, c->id, rc, "serve a step");
        return;
    }
    gen *g = gen_find(w, s->gen);
    if (!g) {
        sr_error_set(SR_ESTATE, "no question %llx", (unsigned long long)s->gen);
        fault(w, SR_ESTATE, "step");
        return;
    }
    gen_step(w, g);
}

static void do_cancel(wrk *w, uint64_t id) {
    gen *g = gen_find(w, id);
    if (!g) return;
    pthread_mutex_lock(&w->mu);
    g->cancelled = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void do_plane(wrk *w, const Starring__Control__V1__Plane *pl);

static void handle(wrk *w, const sr_frame *f) {
    switch (f->kind_case) {
    case STARRING__CONTROL__V1__FRAME__KIND_PREFILL: do_prefill(w, f->prefill); break;
    case STARRING__CONTROL__V1__FRAME__KIND_BEGIN: do_begin(w, f->begin); break;
    case STARRING__CONTROL__V1__FRAME__KIND_STEP: do_step(w, f->step); break;
    case STARRING__CONTROL__V1__FRAME__KIND_CANCEL: do_cancel(w, f->cancel->gen); break;
    case STARRING__CONTROL__V1__FRAME__KIND_DROP: do_drop(w, f->drop->ctx); break;
    case STARRING__CONTROL__V1__FRAME__KIND_PREFILL_CANCEL: break; /* its prefill is over: nothing to stop */
    case STARRING__CONTROL__V1__FRAME__KIND_PLANE: do_plane(w, f->plane); break;
    default: SR_WARN("worker %d: ignoring a control frame of kind %d", w->index, (int)f->kind_case);
    }
}

/* ------------------------------------------------------------ the join */

/* Waits for the Welcome (or the reason there is none). */
static int wait_welcome(wrk *w) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)w->o->join_timeout_s + 1;
    pthread_mutex_lock(&w->mu);
    int timed_out = 0;
    while (!w->welcomed && !w->gone && !*w->join_error && !timed_out)
        timed_out = pthread_cond_timedwait(&w->cv, &w->mu, &until) != 0;
    int ok = w->welcomed;
    char why[sizeof w->join_error];
    snprintf(why, sizeof why, "%s", w->join_error);
    pthread_mutex_unlock(&w->mu);
    if (ok) return SR_OK;
    if (*why) return sr_error_set(SR_ECOMM, "the join failed: %s", why);
    return sr_error_set(SR_ECOMM, "no Welcome from the coordinator at %s:%d%s: is it up, and is --cluster-secret-file "
                        "the same file as the coordinator's? (a refusal is in the coordinator's log)",
                        w->o->coord_host, w->o->coord_port, timed_out ? " in time" : " (it closed the connection)");
}

/* sr_tp_opts.exchange through the coordinator: this worker's block goes out
 * in an Address, every worker's come back in the AddressList. On the
 * compute thread; blocks until the coordinator answers, with no timeout of
 * its own: the others may be in a long prefill before they reach the Plane,
 * and the coordinator fails the round (AddressList.error) if one is lost. */
static int cluster_exchange(void *data, const void *send, size_t len, void *recv) {
    wrk *w = data;
    FRAME(a, address, ADDRESS, Starring__Control__V1__Address, STARRING__CONTROL__V1__ADDRESS__INIT);
    a.round = ++w->x_round;
    a.block.data = (uint8_t *)send;
    a.block.len = len;
    send_frame(w, &a_f);
    sr_frame *f = NULL;
    pthread_mutex_lock(&w->mu);
    while (!w->gone && !(w->x_list && w->x_list->address_list->round == a.round)) pthread_cond_wait(&w->cv, &w->mu);
    if (w->x_list && w->x_list->address_list->round == a.round) {
        f = w->x_list;
        w->x_list = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    if (!f)
        return sr_error_set(SR_ECOMM, "lost the coordinator in round %lld of the data plane's address exchange",
                            (long long)a.round);
    const Starring__Control__V1__AddressList *l = f->address_list;
    int rc = SR_OK;
    if (l->error && *l->error)
        rc = sr_error_set(SR_ECOMM, "the address exchange failed at the coordinator: %s", l->error);
    else if (l->n_block != (size_t)w->x_size)
        rc = sr_error_set(SR_EFORMAT, "AddressList has %zu blocks, not one per worker of the data plane (%lld)", l->n_block,
                          (long long)w->x_size);
    for (size_t i = 0; rc == SR_OK && i < l->n_block; i++) {
        if (l->block[i].len != len)
            rc = sr_error_set(SR_EFORMAT, "AddressList.block[%zu] has %zu bytes, not %zu", i,
                              l->block[i].len, len);
        else memcpy((uint8_t *)recv + i * len, l->block[i].data, len);
    }
    sr_frame_free(f);
    return rc;
}

/* tcp takes a host list: every worker's --data-listen, gathered with one
 * round of the exchange, in worker order. */
#define ENDPOINT_BYTES 280
static int tcp_hosts(wrk *w, char **out) {
    char mine[ENDPOINT_BYTES] = {0};
    if (strlen(w->o->data_listen) >= sizeof mine)
        return sr_error_set(SR_EINVAL, "--data-listen '%.40s...' is over %d characters", w->o->data_listen, ENDPOINT_BYTES - 1);
    snprintf(mine, sizeof mine, "%s", w->o->data_listen);
    size_t n = (size_t)w->x_size;
    char *all = malloc(n * ENDPOINT_BYTES), *hosts = malloc(n * (ENDPOINT_BYTES + 1));
    int rc = all && hosts ? cluster_exchange(w, mine, sizeof mine, all) : sr_error_set(SR_ENOMEM, "out of memory for hosts");
    size_t at = 0;
    for (size_t i = 0; rc == SR_OK && i < n; i++) {
        const char *e = all + i * ENDPOINT_BYTES;
        size_t len = strnlen(e, ENDPOINT_BYTES);
        if (len == 0 || len == ENDPOINT_BYTES || strchr(e, ',')) {
            rc = sr_error_set(SR_EFORMAT, "rank %zu's --data-listen is empty, unterminated or holds a comma", i);
            break;
        }
        memcpy(hosts + at, e, len);
        at += len;
        hosts[at++] = i + 1 < n ? ',' : 0;
    }
    free(all);
    if (rc != SR_OK) free(hosts);
    else *out = hosts;
    return rc;
}

/* A data plane over the workers of a Plane, this one at rank `rank`. */
static int open_data_plane(wrk *w, sr_tp **out, int rank, int size) {
    sr_tp_opts to = sr_tp_opts_default();
    char *hosts = NULL;
    int tcp = strcmp(w->o->transport, "tcp") == 0;
    w->x_size = size;
    int rc = tcp ? tcp_hosts(w, &hosts) : SR_OK;
    to.rank = rank;
    to.size = size;
    to.hosts = hosts;
    to.exchange = tcp ? NULL : cluster_exchange;
    to.exchange_data = w;
    to.key = w->data_key;
    to.key_len = sizeof w->data_key;
    /* a peer silent for as long as the coordinator waits for a heartbeat
     * is lost, so that a worker blocked on a dead one gives up as soon */
    to.io_timeout_s = 10 * w->o->heartbeat_s < 5 ? 5 : 10 * w->o->heartbeat_s;
    if (rc == SR_OK) rc = sr_tp_open(out, w->o->transport, &to);
    free(hosts);
    return rc;
}

/* The coordinator's Plane: a data plane over the workers that are up (it
 * runs in the order of the commands on every one of them, so their address
 * exchanges meet); the answer says whether it opened. */
static void do_plane(wrk *w, const Starring__Control__V1__Plane *pl) {
    FRAME(r, plane_open, PLANE_OPEN, Starring__Control__V1__PlaneOpen, STARRING__CONTROL__V1__PLANE_OPEN__INIT);
    r.plane = pl->plane;
    sr_error_clear();
    int rank = -1, rc = SR_OK;
    for (size_t i = 0; i < pl->n_workers; i++)
        if (pl->workers[i] == w->index) rank = (int)i;
    if (w->o->tp) rc = sr_error_set(SR_ESTATE, "a Plane under mpirun, whose data plane is the job's");
    else if (rank < 0) rc = sr_error_set(SR_EFORMAT, "a Plane whose workers do not list this worker (%d)", w->index);
    else if (pl->plane <= (w->planes ? w->planes->id : 0) || pl->round < w->x_round)
        rc = sr_error_set(SR_EFORMAT, "Plane %lld (round %lld) after plane %lld (round %lld)", (long long)pl->plane,
                          (long long)pl->round, (long long)(w->planes ? w->planes->id : 0), (long long)w->x_round);
    sr_tp *tp = NULL;
    double t0 = sr_now();
    if (rc == SR_OK) {
        /* the planes no context uses go first: tcp listens on the one --data-listen port */
        for (plane *p = w->planes, *n; p; p = n) {
            n = p->next;
            if (p->users == 0) plane_free(w, p);
        }
        w->x_round = pl->round;
        rc = open_data_plane(w, &tp, rank, (int)pl->n_workers);
    }
    if (rc == SR_OK && (rc = plane_add(w, pl->plane, tp, 1, pl->workers, (int)pl->n_workers)) != SR_OK) sr_tp_close(tp);
    r.status = rc;
    if (rc == SR_OK)
        SR_INFO("worker %d: data plane (%s) open in %.2f s: plane %lld over %zu workers, this one rank %d", w->index,
                sr_tp_name(tp), sr_now() - t0, (long long)pl->plane, pl->n_workers, rank);
    else {
        r.error = (char *)sr_error_msg();
        SR_WARN("worker %d: data plane %lld not open: %s", w->index, (long long)pl->plane, r.error);
    }
    send_frame(w, &r_f);
}

/* --------------------------------------------------------------- main */

/* One session with the coordinator: the Welcome, the model (loaded at the
 * first), the data plane, the Join, then the commands until the
 * connection goes. *served: the Join went out without an error. */
static int session(wrk *w, int *served) {
    const sr_workerd_opts *o = w->o;
    FRAME(j, join, JOIN, Starring__Control__V1__Join, STARRING__CONTROL__V1__JOIN__INIT);
    sr_model_opts mo = {.n_threads = o->n_threads, .kv_dtype = SR_DT_F16, .block_size = 0, .max_batch = o->max_batch};
    double t0 = sr_now();
    int rc = wait_welcome(w), welcomed = rc == SR_OK;
    if (rc == SR_OK && !w->m && !w->attn) {
        rc = sr_model_load(&w->m, o->model, &mo);
        if (rc == SR_OK) rc = sr_tok_from_gguf(&w->tok, w->m->gguf);
        if (rc == SR_OK) rc = sr_model_state_build(&w->spare, w->m);
        if (rc == SR_OK) {
            w->small_prefill = w->m->state.max_batch / w->m->config.n_layer;
            w->parked = w->m->kv;
        }
    }
    /* under mpirun the job's transport is plane 0; else the coordinator sends a Plane once the workers are in */
    if (rc == SR_OK && o->tp) rc = plane_add(w, 0, o->tp, 0, NULL, sr_tp_size(o->tp));
    j.worker = w->index;
    j.workers = w->n_workers;
    j.pid = (int)getpid();
    j.kv_budget_bytes = o->kv_budget;
    j.role = w->attn ? "attn" : "model";
    if (rc == SR_OK && w->attn) {
        SR_INFO("worker %d of %d: attention server %d of %d (no weights loaded), data plane (%s) open in %.2f s",
                w->index, w->n_workers, w->index - (w->n_workers - o->attn_servers), o->attn_servers,
                sr_tp_name(o->tp), sr_now() - t0);
    } else if (rc == SR_OK) {
        j.vocab_size = w->m->config.vocab_size;
        SR_INFO("worker %d of %d: model loaded in %.2f s", w->index, w->n_workers, sr_now() - t0);
    } else {
        j.error = (char *)sr_error_msg();
        /* without a Welcome main logs it, and there is no index yet */
        if (welcomed) SR_ERROR("worker %d: %s", w->index, j.error);
    }
    if (welcomed) send_frame(w, &j_f);
    pthread_mutex_lock(&w->mu);
    w->joined = rc == SR_OK;
    pthread_mutex_unlock(&w->mu);
    *served = rc == SR_OK;
    if (rc == SR_OK && w->attn) /* its commands come over the data plane */
        return sr_attnd_serve(o->tp, o->attn_servers, o->n_threads, o->kv_budget, attnd_send, w, &w->live);

    for (int up = rc == SR_OK; up;) {
        pthread_mutex_lock(&w->mu);
        while (!w->in_head && !w->gone) pthread_cond_wait(&w->cv, &w->mu);
        /* once the coordinator is gone the queue is not run: the other
         * workers may not have had the same commands */
        cmd *k = w->gone ? NULL : w->in_head;
        if (k && !(w->in_head = k->next)) w->in_tail = NULL;
        pthread_mutex_unlock(&w->mu);
        if (!k) break;
        handle(w, k->f);
        sr_frame_free(k->f);
        free(k);
        gen_reap(w, 0);
    }
    return rc;
}

static void free_queues(wrk *w) {
    for (cmd *k = w->in_head, *n; k; k = n) {
        n = k->next;
        sr_frame_free(k->f);
        free(k);
    }
    for (outmsg *m = w->out_head, *n; m; m = n) {
        n = m->next;
        free(m->bytes);
        free(m);
    }
    w->in_head = w->in_tail = NULL;
    w->out_head = w->out_tail = NULL;
    if (w->x_list) sr_frame_free(w->x_list);
    w->x_list = NULL;
}

/* After a session: its contexts span its data plane, so they go with it;
 * what was queued for it goes too. */
static void session_end(wrk *w, const char *why) {
    gen_reap(w, 1);
    int n = 0;
    for (; w->ctxs; n++) {
        wctx *c = w->ctxs;
        w->ctxs = c->next;
        ctx_free(w, c);
    }
    attn_servers_release(w);
    while (w->planes) plane_free(w, w->planes);
    w->closed_sent = w->closed_received = 0;
    if (w->joined) SR_WARN("worker %d: the session with the coordinator is over (%s): %d resident contexts dropped",
                           w->index, why, n);
    w->x_round = 0;
    sodium_memzero(w->data_key, sizeof w->data_key);
    pthread_mutex_lock(&w->mu);
    free_queues(w);
    w->gone = w->welcomed = w->joined = 0;
    *w->join_error = *w->rejoin_why = 0;
    pthread_mutex_unlock(&w->mu);
}

/* Sleeps up to s seconds; 1 if the worker is leaving. */
static int wait_leaving(wrk *w, double s) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ns = until.tv_nsec + (long)(s * 1e9);
    until.tv_sec += ns / 1000000000L;
    until.tv_nsec = ns % 1000000000L;
    pthread_mutex_lock(&w->mu);
    while (!w->leaving && pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0) {}
    int leaving = w->leaving;
    pthread_mutex_unlock(&w->mu);
    return leaving;
}

/* Sessions until the coordinator lets this worker go, or it cannot join
 * again (see sr_workerd_run). */
static int sessions(wrk *w) {
    int served, ever_welcomed = 0, rc = session(w, &served);
    double since = sr_now(), backoff = 0.1;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int leaving = w->leaving, refused = *w->join_error != 0;
        char why[sizeof w->rejoin_why];
        snprintf(why, sizeof why, "%s", *w->rejoin_why ? w->rejoin_why : "the connection closed");
        ever_welcomed |= w->welcomed;
        pthread_mutex_unlock(&w->mu);
        session_end(w, why);
        if (served) {
            since = sr_now();
            backoff = 0.1;
        }
        /* let go (or SIGTERM): whatever the session was doing, the leave is on purpose */
        if (leaving) return SR_OK;
        if (w->o->tp || refused || !ever_welcomed || !w->m || w->o->rejoin_timeout_s <= 0) return rc;
        if (sr_now() - since > w->o->rejoin_timeout_s)
            return sr_error_set(SR_ECOMM, "could not join the coordinator at %s:%d again within %.0f s "
                                "(--rejoin-timeout): leaving", w->o->coord_host, w->o->coord_port,
                                w->o->rejoin_timeout_s);
        if (wait_leaving(w, backoff)) return SR_OK;
        backoff = backoff * 2 < 2 ? backoff * 2 : 2;
        SR_INFO("worker %d: joining the coordinator at %s:%d again", w->index, w->o->coord_host, w->o->coord_port);
        pthread_mutex_lock(&w->mu);
        w->connect = 1;
        pthread_mutex_unlock(&w->mu);
        uv_async_send(&w->wake);
        rc = session(w, &served);
    }
}

int sr_workerd_run(const sr_workerd_opts *o) {
    wrk *w = calloc(1, sizeof *w);
    if (!w) return sr_error_set(SR_ENOMEM, "out of memory");
    w->o = o;
    w->index = o->worker;
    w->n_workers = o->workers;
    w->attn = o->attn_servers > 0 && o->worker >= o->workers - o->attn_servers;
    sr_attnd_live_init(&w->live);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    uv_loop_init(&w->loop);
    uv_async_init(&w->loop, &w->wake, on_wake);
    uv_timer_init(&w->loop, &w->beat);
    uv_timer_init(&w->loop, &w->leave);
    uv_signal_init(&w->loop, &w->sigterm);
    uv_signal_init(&w->loop, &w->sigint);
    w->wake.data = w->beat.data = w->leave.data = w->sigterm.data = w->sigint.data = w;
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    int rc = sr_conn_connect(&w->conn, &w->loop, o->coord_host, o->coord_port, SR_JOIN_FRAME_MAX, on_frame, on_conn_close,
                             on_connect, w);
    if (rc != SR_OK) {
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_close((uv_handle_t *)&w->beat, NULL);
        uv_close((uv_handle_t *)&w->leave, NULL);
        uv_close((uv_handle_t *)&w->sigterm, NULL);
        uv_close((uv_handle_t *)&w->sigint, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
        sr_attnd_live_free(&w->live);
        free(w);
        return rc;
    }
    pthread_create(&w->loop_th, NULL, loop_main, w);
    rc = sessions(w);
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_mutex_unlock(&w->mu);
    uv_async_send(&w->wake);
    pthread_join(w->loop_th, NULL);
    uv_loop_close(&w->loop);
    free_queues(w);
    if (w->m) w->m->kv = w->parked.n_layer ? w->parked : w->m->kv;
    if (w->tok) sr_tok_free(w->tok);
    sr_model_state_free(&w->spare);
    free(w->step_logits);
    sr_model_free(w->m);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    sr_attnd_live_free(&w->live);
    free(w);
    return rc;
}
