/* attnd: an attention server's loop and what it reports (see attnd.h). */
#include "daemon/attnd.h"

#include <string.h>

#include "base/log.h"
#include "base/status.h"

void sr_attnd_live_init(sr_attnd_live *l) {
    memset(&l->st, 0, sizeof l->st);
    pthread_mutex_init(&l->mu, NULL);
}

void sr_attnd_live_free(sr_attnd_live *l) { pthread_mutex_destroy(&l->mu); }

void sr_attnd_read(sr_attnd_live *l, sr_cad_server_stats *out) {
    pthread_mutex_lock(&l->mu);
    *out = l->st;
    pthread_mutex_unlock(&l->mu);
}

typedef struct {
    sr_attnd_send_fn send;
    void *data;
    sr_attnd_live *live;
} attnd;

/* A context's Prefilled, or its Dropped, to the coordinator. */
static void report(attnd *a, int dropped, uint64_t ctx, int status, int64_t kv_tokens, int64_t kv_bytes) {
    Starring__Control__V1__Prefilled p = STARRING__CONTROL__V1__PREFILLED__INIT;
    Starring__Control__V1__Dropped d = STARRING__CONTROL__V1__DROPPED__INIT;
    sr_frame f = STARRING__CONTROL__V1__FRAME__INIT;
    if (dropped) {
        f.kind_case = STARRING__CONTROL__V1__FRAME__KIND_DROPPED;
        f.dropped = &d;
        d.ctx = ctx;
        d.kv_bytes = kv_bytes;
    } else {
        f.kind_case = STARRING__CONTROL__V1__FRAME__KIND_PREFILLED;
        f.prefilled = &p;
        p.ctx = ctx;
        p.status = status;
        p.kv_tokens = kv_tokens;
        p.kv_bytes = kv_bytes;
        if (status != SR_OK) p.error = (char *)sr_error_msg();
    }
    a->send(a->data, &f);
}

static void on_prefilled(void *data, uint64_t ctx, int status, int64_t kv_tokens, int64_t kv_bytes) {
    SR_INFO("context %016llx: %lld KV tokens held here (%lld bytes)%s", (unsigned long long)ctx, (long long)kv_tokens,
            (long long)kv_bytes, status == SR_OK ? "" : ", its prefill failed");
    report(data, 0, ctx, status, kv_tokens, kv_bytes);
}

static void on_dropped(void *data, uint64_t ctx, int64_t kv_bytes) { report(data, 1, ctx, SR_OK, 0, kv_bytes); }

static void on_stats(void *data, const sr_cad_server_stats *st) {
    attnd *a = data;
    pthread_mutex_lock(&a->live->mu);
    a->live->st = *st;
    pthread_mutex_unlock(&a->live->mu);
}

int sr_attnd_serve(sr_tp *tp, int n_servers, int n_threads, int64_t kv_budget, sr_attnd_send_fn send, void *data,
                   sr_attnd_live *live) {
    if (!tp || !send || !live) return sr_error_set(SR_EINVAL, "sr_attnd_serve: NULL argument");
    attnd a = {send, data, live};
    sr_cad_hooks h = {on_prefilled, on_dropped, on_stats, &a, kv_budget};
    return sr_cad_serve_hooked(tp, n_servers, SR_ATTND_TAG, n_threads, &h);
}
