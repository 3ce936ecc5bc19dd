/* star_attention: the [anchor | own] span of phase 1, and the query
 * broadcast, local attention, gather and merge of phase 2. */
#include "worker/star_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/status.h"

static int check_desc(const sr_star_desc *d) {
    if (!d || d->n_head_q <= 0 || d->n_head_kv <= 0 || d->n_head_q % d->n_head_kv || d->head_dim <= 0 ||
        d->kv_dtype < SR_DT_F32 || d->kv_dtype > SR_DT_BF16)
        return sr_error_set(SR_EINVAL, "star attention: bad shape (Hq %d, Hkv %d, d %d, dtype %d)",
                            d ? d->n_head_q : 0, d ? d->n_head_kv : 0, d ? d->head_dim : 0, d ? d->kv_dtype : -1);
    return SR_OK;
}

static sr_attn_desc attn_desc(const sr_star_desc *d, int64_t nq, int64_t nk, int causal, int64_t qp, int64_t kp) {
    sr_attn_desc a = {.nq = nq, .nk = nk, .n_head_q = d->n_head_q, .n_head_kv = d->n_head_kv,
                      .head_dim = d->head_dim, .causal = causal, .q_pos0 = qp, .k_pos0 = kp,
                      .scale = d->scale, .kv_dtype = d->kv_dtype};
    return a;
}

int64_t sr_star_span_len(const sr_star_place *pl) { return pl ? pl->anchor.len + pl->own.len : 0; }

int sr_star_span_build(const sr_star_place *pl, const int32_t *context_tokens, int32_t *tokens, int64_t *pos) {
    if (!pl || (tokens && !context_tokens)) return sr_error_set(SR_EINVAL, "sr_star_span_build: NULL argument");
    const sr_span parts[2] = {pl->anchor, pl->own};
    int64_t r = 0;
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < parts[p].len; i++, r++) {
            if (tokens) tokens[r] = context_tokens[parts[p].pos0 + i];
            if (pos) pos[r] = parts[p].pos0 + i;
        }
    return SR_OK;
}

int sr_star_span_attention(const sr_star_desc *d, const sr_star_place *pl, const float *q, const void *k,
                           const void *v, float *o, float *lse) {
    int rc = check_desc(d);
    if (rc != SR_OK) return rc;
    if (!pl || !q || !k || !v || !o) return sr_error_set(SR_EINVAL, "sr_star_span_attention: NULL argument");
    int64_t a = pl->anchor.len, n = pl->own.len, hq = d->n_head_q, hd = d->head_dim;
    size_t row = (size_t)d->n_head_kv * (size_t)hd * (d->kv_dtype == SR_DT_F32 ? 4 : 2);
    if (a + n == 0) return SR_OK;
    float *lse_buf = NULL, *o_tmp = NULL, *lse_tmp = NULL;
    if (!lse) lse = lse_buf = malloc(sizeof(float) * (size_t)((a + n) * hq));
    if (a > 0 && n > 0) {
        o_tmp = malloc(sizeof(float) * (size_t)(n * hq * hd));
        lse_tmp = malloc(sizeof(float) * (size_t)(n * hq));
    }
    if (!lse || (a > 0 && n > 0 && (!o_tmp || !lse_tmp))) {
        rc = sr_error_set(SR_ENOMEM, "out of memory for a star span of %lld rows", (long long)(a + n));
        goto out;
    }
    sr_attn_kv anchor = sr_attn_kv_dense(k, v);
    if (a > 0) { /* anchor rows: causal among themselves */
        sr_attn_desc ad = attn_desc(d, a, a, 1, pl->anchor.pos0, pl->anchor.pos0);
        if ((rc = sr_attn_forward(&ad, q, &anchor, o, lse, d->n_threads)) != SR_OK) goto out;
    }
    if (n > 0) { /* own rows: causal over their own tokens ... */
        sr_attn_kv own = sr_attn_kv_dense((const char *)k + (size_t)a * row, (const char *)v + (size_t)a * row);
        sr_attn_desc od = attn_desc(d, n, n, 1, pl->own.pos0, pl->own.pos0);
        float *oo = o + a * hq * hd, *ol = lse + a * hq;
        if ((rc = sr_attn_forward(&od, q + a * hq * hd, &own, oo, ol, d->n_threads)) != SR_OK) goto out;
        if (a > 0) { /* ... and all of the anchor, which comes before them */
            sr_attn_desc xd = attn_desc(d, n, a, 0, pl->own.pos0, pl->anchor.pos0);
            if ((rc = sr_attn_forward(&xd, q + a * hq * hd, &anchor, o_tmp, lse_tmp, d->n_threads)) != SR_OK ||
                (rc = sr_attn_merge_into(oo, ol, o_tmp, lse_tmp, n * hq, (int)hd)) != SR_OK)
                goto out;
        }
    }
out:
    free(lse_buf);
    free(o_tmp);
    free(lse_tmp);
    return rc;
}

struct sr_star {
    sr_tp *tp;
    float *qbuf;  /* the broadcast queries */
    float *parts; /* [W][nq*Hq*(d+1)] on the query rank: each rank's O then LSE */
    float *mine;  /* this rank's part */
    float *tmp;   /* the query rank's part over its new tokens */
    size_t q_cap, parts_cap, part_cap, tmp_cap;
};

int sr_star_init(sr_star **out, sr_tp *tp) {
    if (!out || !tp) return sr_error_set(SR_EINVAL, "sr_star_init: NULL argument");
    if (sr_tp_device_memory(tp))
        return sr_error_set(SR_EUNSUPPORTED, "star attention runs on CPU memory; transport %s moves GPU memory",
                            sr_tp_name(tp));
    *out = calloc(1, sizeof **out);
    if (!*out) return sr_error_set(SR_ENOMEM, "out of memory for star attention");
    (*out)->tp = tp;
    return SR_OK;
}

void sr_star_free(sr_star *s) {
    if (!s) return;
    free(s->qbuf);
    free(s->parts);
    free(s->mine);
    free(s->tmp);
    free(s);
}

static int grow(float **p, size_t *cap, size_t n) {
    if (n <= *cap) return SR_OK;
    free(*p);
    *p = malloc(n * sizeof(float));
    *cap = *p ? n : 0;
    return *p ? SR_OK : sr_error_set(SR_ENOMEM, "out of memory for %zu floats of star attention", n);
}

int sr_star_query(sr_star *s, const sr_star_desc *d, int query_rank, int64_t nq, int64_t q_pos0, const float *q,
                  const sr_attn_kv *ctx, int64_t n_ctx, const sr_attn_kv *q_new, int64_t n_new, int64_t new_pos0,
                  float *o, float *lse, sr_star_stats *stats) {
    int rc = check_desc(d);
    if (rc != SR_OK) return rc;
    if (!s) return sr_error_set(SR_EINVAL, "sr_star_query: NULL handle");
    int me = sr_tp_rank(s->tp), w = sr_tp_size(s->tp), root = me == query_rank;
    if (query_rank < 0 || query_rank >= w || nq < 1 || n_ctx < 0 || (n_ctx > 0 && !ctx))
        return sr_error_set(SR_EINVAL, "sr_star_query: query rank %d of %d, %lld queries, %lld context rows",
                            query_rank, w, (long long)nq, (long long)n_ctx);
    if (root && (!q || !o || !lse || n_new < 0 || (n_new > 0 && !q_new)))
        return sr_error_set(SR_EINVAL, "sr_star_query: the query rank needs q, o, lse and its new tokens' KV");
    double t0 = sr_now(), comm = 0;
    int64_t hq = d->n_head_q, hd = d->head_dim, qn = nq * hq * hd, part = nq * hq * (hd + 1);
    if ((rc = grow(&s->qbuf, &s->q_cap, (size_t)qn)) != SR_OK || (rc = grow(&s->mine, &s->part_cap, (size_t)part)) != SR_OK)
        return rc;
    if (root) {
        if ((rc = grow(&s->parts, &s->parts_cap, (size_t)(part * w))) != SR_OK ||
            (rc = grow(&s->tmp, &s->tmp_cap, (size_t)part)) != SR_OK)
            return rc;
        memcpy(s->qbuf, q, sizeof(float) * (size_t)qn);
    }
    /* 1. the queries, all heads in one message */
    double c0 = sr_now();
    if ((rc = sr_tp_bcast(s->tp, s->qbuf, qn * (int64_t)sizeof(float), query_rank)) != SR_OK) return rc;
    comm += sr_now() - c0;

    /* 2. this rank's part: over its context, no mask */
    float *po = s->mine, *pl = s->mine + qn;
    if (n_ctx > 0) {
        sr_attn_desc a = attn_desc(d, nq, n_ctx, 0, q_pos0, 0);
        if ((rc = sr_attn_forward(&a, s->qbuf, ctx, po, pl, d->n_threads)) != SR_OK) return rc;
    } else {
        memset(po, 0, sizeof(float) * (size_t)qn);
        for (int64_t i = 0; i < nq * hq; i++) pl[i] = -INFINITY;
    }
    if (root && n_new > 0) { /* the new tokens, causally */
        sr_attn_desc a = attn_desc(d, nq, n_new, 1, q_pos0, new_pos0);
        if ((rc = sr_attn_forward(&a, s->qbuf, q_new, s->tmp, s->tmp + qn, d->n_threads)) != SR_OK ||
            (rc = sr_attn_merge_into(po, pl, s->tmp, s->tmp + qn, nq * hq, (int)hd)) != SR_OK)
            return rc;
    }

    /* 3. every part to the query rank, one message each, and merge */
    c0 = sr_now();
    if ((rc = sr_tp_gather(s->tp, s->mine, part * (int64_t)sizeof(float), s->parts, query_rank)) != SR_OK) return rc;
    comm += sr_now() - c0;
    if (root) {
        const float **op = malloc(sizeof(float *) * (size_t)w), **lp = malloc(sizeof(float *) * (size_t)w);
        if (!op || !lp) {
            free(op);
            free(lp);
            return sr_error_set(SR_ENOMEM, "out of memory merging star attention");
        }
        for (int p = 0; p < w; p++) {
            op[p] = s->parts + (int64_t)p * part;
            lp[p] = op[p] + qn;
        }
        rc = sr_attn_merge(w, op, lp, nq * hq, (int)hd, o, lse);
        free(op);
        free(lp);
        if (rc != SR_OK) return rc;
    }
    if (stats) {
        int64_t qb = qn * (int64_t)sizeof(float), pb = part * (int64_t)sizeof(float);
        stats->comm_s += comm;
        stats->total_s += sr_now() - t0;
        stats->compute_s += sr_now() - t0 - comm;
        stats->bytes_sent += root ? qb * (w - 1) : pb;
        stats->bytes_recv += root ? pb * (w - 1) : qb;
        stats->messages += root ? w - 1 : 1;
        stats->calls++;
    }
    return SR_OK;
}
