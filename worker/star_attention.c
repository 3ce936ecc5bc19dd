/* star_attention: attention over a list of KV runs (both phases), and the
 * query broadcast, local attention, gather and merge of phase 2. */
#include "worker/star_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/status.h"
#include "worker/agree.h"
#include "worker/wire.h"

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

/* ------------------------------------------------------- attend to runs */

int sr_star_attend(const sr_star_desc *d, int64_t nq, int64_t q_pos0, const float *q, const sr_star_run *runs,
                   int64_t n_runs, float *o, float *lse, float *o_tmp, float *lse_tmp) {
    int rc = check_desc(d);
    if (rc != SR_OK) return rc;
    if (nq < 1 || q_pos0 < 0 || n_runs < 0 || (n_runs > 0 && !runs) || !q || !o || !lse || !o_tmp || !lse_tmp)
        return sr_error_set(SR_EINVAL, "sr_star_attend: %lld queries at %lld over %lld runs, or a NULL buffer",
                            (long long)nq, (long long)q_pos0, (long long)n_runs);
    int64_t rows = nq * d->n_head_q;
    int have = 0;
    for (int64_t i = 0; i < n_runs; i++) {
        const sr_star_run *r = &runs[i];
        if (r->n < 0 || r->pos0 < 0)
            return sr_error_set(SR_EINVAL, "sr_star_attend: run %lld has %lld rows at %lld", (long long)i,
                                (long long)r->n, (long long)r->pos0);
        if (r->n == 0 || r->pos0 > q_pos0 + nq - 1) continue; /* empty, or after every query */
        /* keys all at or before the first query need no mask */
        sr_attn_desc a = attn_desc(d, nq, r->n, r->pos0 + r->n - 1 > q_pos0, q_pos0, r->pos0);
        if (!have) {
            rc = sr_attn_forward(&a, q, &r->kv, o, lse, d->n_threads);
        } else if ((rc = sr_attn_forward(&a, q, &r->kv, o_tmp, lse_tmp, d->n_threads)) == SR_OK) {
            rc = sr_attn_merge_into(o, lse, o_tmp, lse_tmp, rows, d->head_dim);
        }
        if (rc != SR_OK) return rc;
        have = 1;
    }
    if (!have) {
        memset(o, 0, sizeof(float) * (size_t)(rows * d->head_dim));
        for (int64_t i = 0; i < rows; i++) lse[i] = -INFINITY;
    }
    return SR_OK;
}

/* -------------------------------------------------------------- phase 2 */

/* Sizes, in floats, that every rank computes alike from the arguments that
 * every rank passes alike: the buffers grow at the same calls everywhere. */
typedef struct {
    int64_t qn;    /* queries */
    int64_t part;  /* one rank's O and LSE */
    int64_t parts; /* every rank's part and status, on the query rank */
} star_sizes;

struct sr_star {
    sr_tp *tp;
    int world, rank;
    float *qbuf;    /* the broadcast: queries, then the query rank's status */
    float *mine;    /* this rank's part, then its status */
    float *tmp;     /* scratch of one part */
    float *parts;   /* on the query rank of the last growth: [W][part + 1] */
    star_sizes cap; /* what the buffers hold */
    int parts_rank; /* the rank that holds parts, the same on every rank; -1: none */
    int32_t *agree; /* [W] scratch of sr_agree */
};

int sr_star_init(sr_star **out, sr_tp *tp) {
    if (!out || !tp) return sr_error_set(SR_EINVAL, "sr_star_init: NULL argument");
    *out = NULL;
    if (sr_tp_device_memory(tp))
        return sr_error_set(SR_EUNSUPPORTED, "star attention runs on CPU memory; transport %s moves GPU memory",
                            sr_tp_name(tp));
    sr_star *s = calloc(1, sizeof *s);
    if (s) s->agree = calloc((size_t)sr_tp_size(tp), sizeof *s->agree);
    if (!s || !s->agree) {
        free(s);
        return sr_error_set(SR_ENOMEM, "out of memory for star attention");
    }
    s->tp = tp;
    s->world = sr_tp_size(tp);
    s->rank = sr_tp_rank(tp);
    s->parts_rank = -1;
    *out = s;
    return SR_OK;
}

static void release(sr_star *s) {
    free(s->qbuf);
    free(s->mine);
    free(s->tmp);
    free(s->parts);
    s->qbuf = s->mine = s->tmp = s->parts = NULL;
    s->cap = (star_sizes){0, 0, 0};
    s->parts_rank = -1;
}

void sr_star_free(sr_star *s) {
    if (!s) return;
    release(s);
    free(s->agree);
    free(s);
}

/* Collective when the buffers must grow (or the query rank changed): the
 * ranks agree on the allocations, and on a failure every rank drops its
 * buffers, so that all decide alike at the next call. */
static int reserve(sr_star *s, star_sizes need, int query_rank) {
    if (need.qn <= s->cap.qn && need.part <= s->cap.part && need.parts <= s->cap.parts &&
        query_rank == s->parts_rank)
        return SR_OK;
    star_sizes n = {need.qn > s->cap.qn ? need.qn : s->cap.qn, need.part > s->cap.part ? need.part : s->cap.part,
                    need.parts > s->cap.parts ? need.parts : s->cap.parts};
    release(s);
    s->qbuf = malloc(sizeof(float) * (size_t)(n.qn + 1));
    s->mine = malloc(sizeof(float) * (size_t)(n.part + 1));
    s->tmp = malloc(sizeof(float) * (size_t)n.part);
    if (s->rank == query_rank) s->parts = malloc(sizeof(float) * (size_t)n.parts);
    int rc = s->qbuf && s->mine && s->tmp && (s->rank != query_rank || s->parts)
                 ? SR_OK
                 : sr_error_set(SR_ENOMEM, "out of memory for star attention buffers of %lld queries", (long long)n.qn);
    if ((rc = sr_agree(s->tp, rc, s->agree, "star attention")) != SR_OK) {
        release(s);
        return rc;
    }
    s->cap = n;
    s->parts_rank = query_rank;
    return SR_OK;
}

/* The status word after a message's floats. */
static void put_status(float *slot, int status) {
    int32_t v = status;
    memcpy(slot, &v, sizeof v);
}

static int get_status(const float *slot, int peer, int *status) {
    int32_t v;
    memcpy(&v, slot, sizeof v);
    return sr_wire_status(v, peer, "star attention", status);
}

/* This rank's own arguments (those that may differ between ranks). */
static int query_check(const sr_star_desc *d, int root, const float *q, const sr_star_seq *seqs, int64_t n_seq,
                       const float *o, const float *lse) {
    int rc = check_desc(d);
    if (rc != SR_OK) return rc;
    for (int64_t j = 0; j < n_seq; j++) {
        const sr_star_run *runs = seqs[j].runs;
        int64_t n_runs = seqs[j].n_runs;
        if (n_runs < 0 || (n_runs > 0 && !runs))
            return sr_error_set(SR_EINVAL, "sr_star_query: sequence %lld: n_runs %lld, allowed 0.. with runs",
                                (long long)j, (long long)n_runs);
        for (int64_t i = 0; i < n_runs; i++)
            if (runs[i].n < 0 || runs[i].pos0 < 0 || (runs[i].n > 0 && !runs[i].kv.k && !runs[i].kv.k_blocks))
                return sr_error_set(SR_EINVAL, "sr_star_query: sequence %lld: run %lld has %lld rows at position %lld",
                                    (long long)j, (long long)i, (long long)runs[i].n, (long long)runs[i].pos0);
    }
    if (root && (!q || !o || !lse)) return sr_error_set(SR_EINVAL, "sr_star_query: the query rank needs q, o and lse");
    return SR_OK;
}

int sr_star_query(sr_star *s, const sr_star_desc *d, int query_rank, int64_t nq, int64_t q_pos0, const float *q,
                  const sr_star_run *runs, int64_t n_runs, float *o, float *lse, sr_star_stats *stats) {
    sr_star_seq one = {nq, q_pos0, runs, n_runs};
    return sr_star_query_batch(s, d, query_rank, &one, 1, q, o, lse, stats);
}

int sr_star_query_batch(sr_star *s, const sr_star_desc *d, int query_rank, const sr_star_seq *seqs, int64_t n_seq,
                        const float *q, float *o, float *lse, sr_star_stats *stats) {
    /* the arguments that size the messages are the same on every rank, so
     * that they fail alike everywhere, before any message */
    if (!s || !d || !seqs || n_seq < 1)
        return sr_error_set(SR_EINVAL, "sr_star_query: NULL handle, descriptor or sequences, or %lld sequences "
                            "(allowed 1..)", (long long)n_seq);
    int w = s->world, root = s->rank == query_rank;
    star_sizes z;
    int64_t rows, nq = 0;
    for (int64_t j = 0; j < n_seq; j++)
        if (seqs[j].nq < 1 || seqs[j].q_pos0 < 0 || __builtin_add_overflow(nq, seqs[j].nq, &nq))
            return sr_error_set(SR_EINVAL, "sr_star_query: sequence %lld has nq %lld at position %lld (allowed nq 1.., "
                                "position 0..)", (long long)j, (long long)seqs[j].nq, (long long)seqs[j].q_pos0);
    if (query_rank < 0 || query_rank >= w || d->n_head_q <= 0 || d->head_dim <= 0 ||
        __builtin_mul_overflow(nq, (int64_t)d->n_head_q, &rows) ||
        __builtin_mul_overflow(rows, (int64_t)d->head_dim, &z.qn) ||
        __builtin_mul_overflow(rows, (int64_t)d->head_dim + 1, &z.part) ||
        __builtin_mul_overflow(z.part + 1, (int64_t)w, &z.parts) || z.parts > INT64_MAX / (int64_t)sizeof(float))
        return sr_error_set(SR_EINVAL, "sr_star_query: query rank %d of %d, nq %lld, Hq %d, d %d: "
                            "allowed ranks 0..%d, nq >= 1 with nq * Hq * (d + 1) * W floats addressable",
                            query_rank, w, (long long)nq, d->n_head_q, d->head_dim, w - 1);
    int rc = reserve(s, z, query_rank);
    if (rc != SR_OK) return rc;
    double t0 = sr_now(), comm = 0;
    rc = query_check(d, root, q, seqs, n_seq, o, lse);
    if (root) {
        if (rc == SR_OK) memcpy(s->qbuf, q, sizeof(float) * (size_t)z.qn);
        put_status(s->qbuf + z.qn, rc);
    }
    /* 1. the queries of every sequence, all heads in one message, and the query rank's status */
    double c0 = sr_now();
    int rc2 = sr_tp_bcast(s->tp, s->qbuf, (z.qn + 1) * (int64_t)sizeof(float), query_rank);
    if (rc2 != SR_OK) return rc2;
    comm += sr_now() - c0;
    int status = SR_OK;
    if (!root && rc == SR_OK && (rc = get_status(s->qbuf + z.qn, query_rank, &status)) == SR_OK && status != SR_OK)
        rc = sr_error_set(status, "star attention: the query rank %d failed (%s)", query_rank, sr_strerror(status));

    /* 2. this rank's part, each sequence's queries over its own runs */
    float *po = s->mine, *pl = s->mine + z.qn;
    int64_t hd = (int64_t)d->n_head_q * d->head_dim;
    for (int64_t j = 0, r = 0; j < n_seq && rc == SR_OK; r += seqs[j].nq, j++)
        rc = sr_star_attend(d, seqs[j].nq, seqs[j].q_pos0, s->qbuf + r * hd, seqs[j].runs, seqs[j].n_runs,
                            po + r * hd, pl + r * d->n_head_q, s->tmp, s->tmp + z.qn);
    put_status(s->mine + z.part, rc);

    /* 3. every part to the query rank, one message each, and merge */
    c0 = sr_now();
    if ((rc2 = sr_tp_gather(s->tp, s->mine, (z.part + 1) * (int64_t)sizeof(float), s->parts, query_rank)) != SR_OK)
        return rc != SR_OK ? rc : rc2;
    comm += sr_now() - c0;
    if (root) {
        const float **op = malloc(sizeof(float *) * (size_t)w), **lp = malloc(sizeof(float *) * (size_t)w);
        if (rc == SR_OK && (!op || !lp)) rc = sr_error_set(SR_ENOMEM, "out of memory merging star attention");
        for (int p = 0; p < w && rc == SR_OK; p++) {
            op[p] = s->parts + (int64_t)p * (z.part + 1);
            lp[p] = op[p] + z.qn;
            if ((rc = get_status(op[p] + z.part, p, &status)) == SR_OK && status != SR_OK)
                rc = sr_error_set(status, "star attention: rank %d failed (%s)", p, sr_strerror(status));
        }
        if (rc == SR_OK) rc = sr_attn_merge(w, op, lp, rows, d->head_dim, o, lse);
        free(op);
        free(lp);
    }
    if (rc != SR_OK) return rc;
    if (stats) {
        int64_t qb = (z.qn + 1) * (int64_t)sizeof(float), pb = (z.part + 1) * (int64_t)sizeof(float);
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
