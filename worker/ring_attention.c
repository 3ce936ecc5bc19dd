/* ring_attention: K/V round the ring with double buffering, merge by LSE. */
#include "worker/ring_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/status.h"
#include "worker/agree.h"
#include "worker/wire.h"

/* rows computed between two progress polls of the transfers in flight: MPI
 * moves a large message only while some MPI call runs */
#define POLL_ROWS 256

struct sr_ring {
    sr_tp *tp;
    int world, rank;
    int *n_spans;   /* [world] */
    sr_span *spans; /* [world][SR_RING_MAX_SPANS] */
    int64_t *tokens;
    int64_t max_tokens;
    int32_t *agree; /* [world] scratch of sr_agree */
    /* receive buffers: [2] blocks of K and V, and the partial output */
    void *kbuf[2], *vbuf[2];
    size_t buf_bytes;
    float *o_part, *lse_part;
    size_t part_rows;
};

int sr_ring_init(sr_ring **out, sr_tp *tp, const sr_span *spans, int n_spans) {
    if (!out || !tp) return sr_error_set(SR_EINVAL, "sr_ring_init: NULL argument");
    *out = NULL;
    int w = sr_tp_size(tp);
    sr_ring *r = calloc(1, sizeof *r);
    int64_t *all = calloc((size_t)w, sizeof(int64_t) * SR_WIRE_RING_WORDS);
    if (r) {
        r->n_spans = calloc((size_t)w, sizeof *r->n_spans);
        r->spans = calloc((size_t)w * SR_RING_MAX_SPANS, sizeof *r->spans);
        r->tokens = calloc((size_t)w, sizeof *r->tokens);
        r->agree = calloc((size_t)w, sizeof *r->agree);
    }
    if (!r || !all || !r->n_spans || !r->spans || !r->tokens || !r->agree) {
        free(all);
        sr_ring_free(r);
        return sr_error_set(SR_ENOMEM, "out of memory for the ring of %d ranks", w);
    }
    r->tp = tp;
    r->world = w;
    r->rank = sr_tp_rank(tp);
    /* a rank whose own arguments are bad still sends its entry, with its
     * status, so that every rank fails alike */
    int rc = SR_OK;
    if (sr_tp_device_memory(tp))
        rc = sr_error_set(SR_EUNSUPPORTED, "ring attention runs on CPU memory; transport %s moves GPU memory",
                          sr_tp_name(tp));
    else if (n_spans < 0 || n_spans > SR_RING_MAX_SPANS || (n_spans && !spans))
        rc = sr_error_set(SR_EINVAL, "sr_ring_init: n_spans %d, allowed 0..%d with spans", n_spans,
                          SR_RING_MAX_SPANS);
    for (int i = 0; rc == SR_OK && i < n_spans; i++)
        if (spans[i].pos0 < 0 || spans[i].len < 0 || spans[i].pos0 > SR_WIRE_MAX_POS ||
            spans[i].len > SR_WIRE_MAX_POS - spans[i].pos0)
            rc = sr_error_set(SR_EINVAL, "sr_ring_init: span %d [%lld, +%lld) is outside 0..%lld", i,
                              (long long)spans[i].pos0, (long long)spans[i].len, (long long)SR_WIRE_MAX_POS);
    int64_t mine[SR_WIRE_RING_WORDS];
    sr_wire_ring_encode(mine, rc, spans, rc == SR_OK ? n_spans : 0);
    int rc2 = sr_tp_allgather(tp, mine, (int64_t)sizeof mine, all);
    /* every rank checks the same table, so every rank reaches the same verdict */
    if (rc == SR_OK) rc = rc2;
    if (rc == SR_OK) rc = sr_wire_ring_table(all, w, r->spans, r->n_spans, r->tokens);
    free(all);
    if (rc != SR_OK) {
        sr_ring_free(r);
        return rc;
    }
    for (int p = 0; p < w; p++)
        if (r->tokens[p] > r->max_tokens) r->max_tokens = r->tokens[p];
    *out = r;
    return SR_OK;
}

void sr_ring_free(sr_ring *r) {
    if (!r) return;
    for (int i = 0; i < 2; i++) {
        free(r->kbuf[i]);
        free(r->vbuf[i]);
    }
    free(r->o_part);
    free(r->lse_part);
    free(r->n_spans);
    free(r->spans);
    free(r->tokens);
    free(r->agree);
    free(r);
}

int64_t sr_ring_tokens(const sr_ring *r, int p) { return p >= 0 && p < r->world ? r->tokens[p] : 0; }

/* The receive buffers for blocks of kv_bytes and the partial outputs of
 * POLL_ROWS rows (the same on every rank, whatever its share). */
static int reserve(sr_ring *r, size_t kv_bytes, int hq, int hd) {
    if (kv_bytes > r->buf_bytes) {
        for (int i = 0; i < 2; i++) {
            free(r->kbuf[i]);
            free(r->vbuf[i]);
            r->kbuf[i] = malloc(kv_bytes);
            r->vbuf[i] = malloc(kv_bytes);
        }
        r->buf_bytes = kv_bytes;
        for (int i = 0; i < 2; i++)
            if (!r->kbuf[i] || !r->vbuf[i]) r->buf_bytes = 0;
        if (!r->buf_bytes) return sr_error_set(SR_ENOMEM, "out of memory for ring buffers of %zu bytes", kv_bytes);
    }
    size_t need = (size_t)POLL_ROWS * (size_t)hq;
    if (need > r->part_rows) {
        free(r->o_part);
        free(r->lse_part);
        r->part_rows = need;
        r->o_part = malloc(need * (size_t)hd * sizeof(float));
        r->lse_part = malloc(need * sizeof(float));
        if (!r->o_part || !r->lse_part) {
            r->part_rows = 0;
            return sr_error_set(SR_ENOMEM, "out of memory for ring partial outputs");
        }
    }
    return SR_OK;
}

/* Drives the transfers in flight; errors surface at the wait. */
static void poke(sr_tp_req **reqs, int n) {
    for (int i = 0; i < n; i++) {
        int done;
        if (reqs[i]) sr_tp_test(reqs[i], &done);
    }
}

/* Query rows [q0, q0 + nq) at positions qpos0.. against a dense K/V range at
 * kpos0.., merged into o/lse, in slices so transfers progress meanwhile. */
static int attend(sr_ring *r, const sr_ring_desc *d, const float *q, int64_t q0, int64_t nq, int64_t qpos0,
                  const void *k, const void *v, int64_t nk, int64_t kpos0, int causal, float *o, float *lse,
                  sr_tp_req **reqs, int nreq, double *flops) {
    int64_t hq = d->n_head_q, hd = d->head_dim;
    sr_attn_kv kv = sr_attn_kv_dense(k, v);
    for (int64_t i = 0; i < nq; i += POLL_ROWS) {
        int64_t n = nq - i < POLL_ROWS ? nq - i : POLL_ROWS;
        if (causal && kpos0 > qpos0 + i + n - 1) continue; /* these rows see none of it */
        sr_attn_desc a = {.nq = n, .nk = nk, .n_head_q = d->n_head_q, .n_head_kv = d->n_head_kv,
                          .head_dim = d->head_dim, .causal = causal, .q_pos0 = qpos0 + i, .k_pos0 = kpos0,
                          .scale = d->scale, .kv_dtype = d->kv_dtype};
        int rc = sr_attn_forward(&a, q + (q0 + i) * hq * hd, &kv, r->o_part, r->lse_part, d->n_threads);
        if (rc != SR_OK) return rc;
        rc = sr_attn_merge_into(o + (q0 + i) * hq * hd, lse + (q0 + i) * hq, r->o_part, r->lse_part, n * hq,
                                d->head_dim);
        if (rc != SR_OK) return rc;
        *flops += sr_attn_flops(&a);
        poke(reqs, nreq);
    }
    return SR_OK;
}

/* Own queries against the K/V block of rank src (dense, rows in span order). */
static int attend_block(sr_ring *r, const sr_ring_desc *d, const float *q, const void *k, const void *v,
                        int src, float *o, float *lse, sr_tp_req **reqs, int nreq, double *flops) {
    size_t row = (size_t)d->n_head_kv * (size_t)d->head_dim * (d->kv_dtype == SR_DT_F32 ? 4 : 2);
    const sr_span *qs = r->spans + r->rank * SR_RING_MAX_SPANS, *ks = r->spans + src * SR_RING_MAX_SPANS;
    int64_t q0 = 0;
    for (int i = 0; i < r->n_spans[r->rank]; q0 += qs[i].len, i++) {
        if (qs[i].len == 0) continue;
        if (!d->causal) { /* positions do not matter: one pass over the whole block */
            if (r->tokens[src] == 0) continue;
            int rc = attend(r, d, q, q0, qs[i].len, qs[i].pos0, k, v, r->tokens[src], 0, 0, o, lse, reqs, nreq,
                            flops);
            if (rc != SR_OK) return rc;
            continue;
        }
        int64_t k0 = 0;
        for (int j = 0; j < r->n_spans[src]; k0 += ks[j].len, j++) {
            if (ks[j].len == 0 || ks[j].pos0 > qs[i].pos0 + qs[i].len - 1) continue; /* all masked */
            /* keys all at or before the first query: no mask needed */
            int causal = ks[j].pos0 + ks[j].len - 1 > qs[i].pos0;
            int rc = attend(r, d, q, q0, qs[i].len, qs[i].pos0, (const char *)k + (size_t)k0 * row,
                            (const char *)v + (size_t)k0 * row, ks[j].len, ks[j].pos0, causal, o, lse, reqs, nreq,
                            flops);
            if (rc != SR_OK) return rc;
        }
    }
    return SR_OK;
}

/* This rank's arguments, and the buffers they need. */
static int forward_check(sr_ring *r, const sr_ring_desc *d, const float *q, const void *k, const void *v,
                         const float *o, const float *lse, size_t *row) {
    if (!d) return sr_error_set(SR_EINVAL, "sr_ring_forward: NULL descriptor");
    if (d->n_head_q <= 0 || d->n_head_kv <= 0 || d->n_head_q % d->n_head_kv || d->head_dim <= 0 ||
        d->kv_dtype < SR_DT_F32 || d->kv_dtype > SR_DT_BF16 || d->tag < 0 || d->tag + 1 > SR_TP_TAG_MAX)
        return sr_error_set(SR_EINVAL, "sr_ring_forward: bad shape (Hq %d, Hkv %d, d %d, dtype %d, tag %d)",
                            d->n_head_q, d->n_head_kv, d->head_dim, d->kv_dtype, d->tag);
    if (r->tokens[r->rank] > 0 && (!q || !k || !v || !o || !lse))
        return sr_error_set(SR_EINVAL, "sr_ring_forward: rank %d holds %lld tokens but q, k, v, o or lse is NULL",
                            r->rank, (long long)r->tokens[r->rank]);
    size_t kv_bytes;
    *row = (size_t)d->n_head_kv * (size_t)d->head_dim * (d->kv_dtype == SR_DT_F32 ? 4 : 2);
    if (__builtin_mul_overflow((size_t)r->max_tokens, *row, &kv_bytes))
        return sr_error_set(SR_ERANGE, "ring attention: blocks of %lld tokens of %zu bytes overflow", 
                            (long long)r->max_tokens, *row);
    return reserve(r, kv_bytes, d->n_head_q, d->head_dim);
}

int sr_ring_forward(sr_ring *r, const sr_ring_desc *d, const float *q, const void *k, const void *v, float *o,
                    float *lse, sr_ring_stats *stats) {
    if (!r) return sr_error_set(SR_EINVAL, "sr_ring_forward: NULL ring");
    size_t row = 0;
    int rc = sr_agree(r->tp, forward_check(r, d, q, k, v, o, lse, &row), r->agree, "ring attention");
    if (rc != SR_OK) return rc;
    double t0 = sr_now(), compute = 0, wait = 0, flops = 0;
    int64_t sent = 0, recvd = 0;
    int64_t nloc = r->tokens[r->rank], hq = d->n_head_q, hd = d->head_dim;
    /* start from the empty result: o = 0, lse = -inf */
    if (nloc > 0) memset(o, 0, (size_t)(nloc * hq * hd) * sizeof(float));
    for (int64_t i = 0; i < nloc * hq; i++) lse[i] = -INFINITY;

    /* a failure stops this rank's computing, not its part in the ring: the
     * neighbours still send and wait for their blocks */
    int w = r->world, next = (r->rank + 1) % w, prev = (r->rank + w - 1) % w;
    const void *ck = k, *cv = v;
    for (int s = 0; s < w; s++) {
        int src = (r->rank - s + w) % w;
        sr_tp_req *reqs[4] = {0};
        int nreq = 0;
        if (s < w - 1) {
            /* the block that arrives now is the one prev held: from rank src - 1 */
            int64_t in = r->tokens[(src - 1 + w) % w] * (int64_t)row, outb = r->tokens[src] * (int64_t)row;
            void *kb = r->kbuf[s % 2], *vb = r->vbuf[s % 2];
            int prc = SR_OK;
            if ((prc = sr_tp_irecv(r->tp, kb, in, prev, d->tag, &reqs[0])) == SR_OK &&
                (prc = sr_tp_irecv(r->tp, vb, in, prev, d->tag + 1, &reqs[1])) == SR_OK &&
                (prc = sr_tp_isend(r->tp, ck, outb, next, d->tag, &reqs[2])) == SR_OK)
                prc = sr_tp_isend(r->tp, cv, outb, next, d->tag + 1, &reqs[3]);
            if (rc == SR_OK) rc = prc;
            nreq = 4;
            sent += 2 * outb;
            recvd += 2 * in;
        }
        double c0 = sr_now();
        if (rc == SR_OK && nloc > 0) rc = attend_block(r, d, q, ck, cv, src, o, lse, reqs, nreq, &flops);
        double c1 = sr_now();
        int wrc = sr_tp_waitall(nreq, reqs);
        wait += sr_now() - c1;
        compute += c1 - c0;
        if (rc == SR_OK) rc = wrc;
        if (s < w - 1) {
            ck = r->kbuf[s % 2];
            cv = r->vbuf[s % 2];
        }
    }
    if ((rc = sr_agree(r->tp, rc, r->agree, "ring attention")) != SR_OK) return rc;
    if (stats) {
        stats->compute_s += compute;
        stats->wait_s += wait;
        stats->total_s += sr_now() - t0;
        stats->bytes_sent += sent;
        stats->bytes_recv += recvd;
        stats->flops += flops;
        stats->calls++;
    }
    return SR_OK;
}
