/* Star attention across ranks.
 *  - placement: own blocks partition the context (one per rank by default),
 *    anchors are the context's prefix, each block sees min(anchor, its
 *    start), and each rank keeps at most ceil(n / W) + one block of tokens,
 *    read from each rank's own placement;
 *  - phase 1: with a single block a block's attention is full causal
 *    attention bit for bit; every block's rows over [the prefix it sees |
 *    itself] equal a double-precision reference over exactly those keys;
 *  - phase 2: over sharded context KV (dense and paged), with single- and
 *    multi-token queries and earlier generated tokens, the merged result
 *    equals a double-precision reference of the same definition: every query
 *    sees every context token, and new tokens causally.
 * Q/K/V of a token are a hash of its absolute position, so every rank can
 * build any token's rows. */
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/half.h"
#include "base/status.h"
#include "worker/placement.h"
#include "worker/star_attention.h"
#include "transport/transport.h"
#include "tests/mpi/mpi_support.h"

typedef struct {
    int hq, hkv, hd, dtype;
} shape;

static size_t esize(int dt) { return dt == SR_DT_F32 ? 4 : 2; }

/* the value K/V storage holds (after rounding to the dtype) */
static float rounded(int dt, float x) {
    if (dt == SR_DT_F16) return sr_f16_to_f32(sr_f32_to_f16(x));
    if (dt == SR_DT_BF16) return sr_bf16_to_f32(sr_f32_to_bf16(x));
    return x;
}

static void store(int dt, void *base, int64_t at, float x) {
    if (dt == SR_DT_F32) ((float *)base)[at] = x;
    else if (dt == SR_DT_F16) ((sr_f16 *)base)[at] = sr_f32_to_f16(x);
    else ((sr_bf16 *)base)[at] = sr_f32_to_bf16(x);
}

/* rows for the tokens at pos[0..n): q fp32 (may be NULL), k/v in dtype */
static void make_rows(uint64_t seed, const int64_t *pos, int64_t n, const shape *s, float *q, void *k, void *v) {
    int64_t qw = (int64_t)s->hq * s->hd, kw = (int64_t)s->hkv * s->hd;
    for (int64_t r = 0; r < n; r++) {
        if (q)
            for (int64_t i = 0; i < qw; i++) q[r * qw + i] = sr_test_rng_at(seed, pos[r], i);
        for (int64_t i = 0; i < kw; i++) {
            store(s->dtype, k, r * kw + i, sr_test_rng_at(seed + 1, pos[r], i));
            store(s->dtype, v, r * kw + i, sr_test_rng_at(seed + 2, pos[r], i));
        }
    }
}

/* Double-precision reference: query r at qpos[r] sees key j iff !causal or
 * kpos[j] <= qpos[r]; K/V are the dtype-rounded hash values at kpos. */
static void reference(uint64_t seed, const shape *s, const float *q, const int64_t *qpos, int64_t nq,
                      const int64_t *kpos, int64_t nk, int causal, double *o, double *lse) {
    int64_t hd = s->hd, g = s->hq / s->hkv, kw = (int64_t)s->hkv * hd;
    double scale = 1.0 / sqrt((double)hd);
    double *sc = malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1));
    float *kf = malloc(sizeof(float) * (size_t)(nk * kw + 1)), *vf = malloc(sizeof(float) * (size_t)(nk * kw + 1));
    for (int64_t j = 0; j < nk; j++)
        for (int64_t i = 0; i < kw; i++) {
            kf[j * kw + i] = rounded(s->dtype, sr_test_rng_at(seed + 1, kpos[j], i));
            vf[j * kw + i] = rounded(s->dtype, sr_test_rng_at(seed + 2, kpos[j], i));
        }
    for (int64_t r = 0; r < nq; r++)
        for (int64_t h = 0; h < s->hq; h++) {
            int64_t kh = h / g;
            const float *qr = q + (r * s->hq + h) * hd;
            double mx = -INFINITY;
            for (int64_t j = 0; j < nk; j++) {
                sc[j] = -INFINITY;
                if (causal && kpos[j] > qpos[r]) continue;
                double dot = 0;
                for (int64_t i = 0; i < hd; i++)
                    dot += (double)qr[i] * kf[j * kw + kh * hd + i];
                sc[j] = dot * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            double *orow = o + (r * s->hq + h) * hd, sum = 0;
            memset(orow, 0, sizeof(double) * (size_t)hd);
            for (int64_t j = 0; j < nk; j++) {
                if (sc[j] == -INFINITY) continue;
                double p = exp(sc[j] - mx);
                sum += p;
                for (int64_t i = 0; i < hd; i++) orow[i] += p * vf[j * kw + kh * hd + i];
            }
            for (int64_t i = 0; i < hd && sum > 0; i++) orow[i] /= sum;
            lse[r * s->hq + h] = sum > 0 ? mx + log(sum) : -INFINITY;
        }
    free(sc);
    free(kf);
    free(vf);
}

/* normwise relative error of o and lse against the reference */
static int compare(const char *what, const float *o, const float *lse, const double *ro, const double *rl,
                   int64_t rows, int hd) {
    double err = 0, scale = 0, lerr = 0;
    for (int64_t i = 0; i < rows * hd; i++) {
        double e = fabs(o[i] - ro[i]);
        if (!(e <= err)) err = isnan(e) ? INFINITY : e;
        if (fabs(ro[i]) > scale) scale = fabs(ro[i]);
    }
    for (int64_t i = 0; i < rows; i++) {
        double e = isinf(rl[i]) && lse[i] == rl[i] ? 0 : fabs(lse[i] - rl[i]) / fmax(1, fabs(rl[i]));
        if (!(e <= lerr)) lerr = isnan(e) ? INFINITY : e;
    }
    double rel = err / (scale > 0 ? scale : 1);
    if (rel < 1e-5 && lerr < 1e-5) return 0;
    fprintf(stderr, "rank %d %s: output rel error %.3g, lse rel error %.3g\n", rank, what, rel, lerr);
    return 1;
}

/* ---- placement and memory ---- */

static int t_placement(void) {
    static const int64_t ns[] = {1, 5, 63, 64, 65, 1000, 4097, 100003};
    static const int64_t blocks[] = {0, 1, 7, 64, 256}; /* 0: the default, one block per rank */
    static const int64_t anchors[] = {0, 3, 300};
    int fails = 0;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++)
            for (size_t c = 0; c < sizeof anchors / sizeof anchors[0]; c++) {
                int64_t n = ns[a], anc = anchors[c], blk = blocks[b] ? blocks[b] : (n + size - 1) / size;
                sr_star_place pl;
                EXPECT_OK(sr_place_star(n, blocks[b], anc, size, rank, &pl));
                if (pl.block_size != blk || (blocks[b] == 0 && pl.n_blocks > 1)) fails++;
                /* the blocks partition the context; each sees min(anchor, its start) */
                int64_t at = 0;
                for (int64_t g = 0; g * blk < n; g++) {
                    int64_t seen;
                    sr_span e = sr_star_block(&pl, g, &seen);
                    int64_t want_seen = anc ? (anc < n ? anc : n) : blk;
                    if (e.pos0 != at || e.len < 1 || e.len > blk || seen != (want_seen < at ? want_seen : at))
                        fails++;
                    at += e.len;
                }
                if (at != n) fails++;
                /* each rank reports its own accounting; rank 0 checks all */
                int64_t mine[4] = {pl.own.pos0, pl.own.len, pl.anchor.pos0, pl.anchor.len};
                int64_t *all = malloc(sizeof mine * (size_t)size);
                MPI_Allgather(mine, 4, MPI_INT64_T, all, 4, MPI_INT64_T, MPI_COMM_WORLD);
                int64_t next = 0, cap = (n + size - 1) / size + blk, a_len = anc ? (anc < n ? anc : n) : (blk < n ? blk : n);
                for (int p = 0; p < size; p++) {
                    const int64_t *e = all + 4 * p;
                    if (e[1] > 0 && e[0] != next) fails++;                       /* contiguous, in rank order */
                    if (e[1] > cap) fails++;                                    /* the memory bound */
                    if (e[2] != 0) fails++;                                     /* anchors are a prefix */
                    int64_t want_a = e[1] > 0 ? (a_len < e[0] ? a_len : e[0]) : 0;
                    if (e[3] != want_a) fails++;
                    if (e[1] > 0 && e[0] % blk) fails++;                         /* whole blocks */
                    next += e[1];
                }
                if (next != n) fails++;
                if (fails && rank == 0) {
                    fprintf(stderr, "star placement n=%lld block=%lld anchor=%lld is wrong\n", (long long)n,
                            (long long)blk, (long long)anc);
                    free(all);
                    return fails;
                }
                free(all);
            }
    /* zigzag: chunks r and 2W-1-r, lengths within one, covering [0, n) */
    for (int64_t n = 0; n < 50; n++) {
        int64_t covered = 0, mn = INT64_MAX, mx = 0;
        for (int p = 0; p < size; p++) {
            sr_span sp[2];
            EXPECT_OK(sr_place_zigzag(n, size, p, sp));
            for (int i = 0; i < 2; i++) {
                int64_t c = i == 0 ? p : 2 * size - 1 - p;
                int64_t want0 = n * c / (2 * size);
                if (sp[i].pos0 != want0 || sp[i].len != n * (c + 1) / (2 * size) - want0) fails++;
                covered += sp[i].len;
                if (sp[i].len < mn) mn = sp[i].len;
                if (sp[i].len > mx) mx = sp[i].len;
            }
        }
        if (covered != n || mx - mn > 1) fails++;
    }
    return fails;
}

/* ---- phase 1 ---- */

/* n <= block: one rank holds everything, and its block's attention (a run
 * of its own keys) is full causal attention, bit for bit */
static int t_single_block(void) {
    shape s = {8, 2, 64, SR_DT_F32};
    int64_t n = 300, qw = s.hq * s.hd, kw = s.hkv * s.hd;
    sr_star_place pl;
    EXPECT_OK(sr_place_star(n, 512, 0, size, rank, &pl));
    if (rank != 0) return pl.own.len != 0;
    int64_t seen;
    sr_span blk = sr_star_block(&pl, 0, &seen);
    if (pl.own.len != n || pl.anchor.len != 0 || blk.len != n || seen != 0) return 1;
    int64_t *pos = malloc(sizeof(int64_t) * n);
    for (int64_t i = 0; i < n; i++) pos[i] = i;
    float *q = malloc(sizeof(float) * n * qw), *k = malloc(sizeof(float) * n * kw), *v = malloc(sizeof(float) * n * kw);
    float *o1 = malloc(sizeof(float) * n * qw), *o2 = malloc(sizeof(float) * n * qw);
    float *l1 = malloc(sizeof(float) * n * s.hq), *l2 = malloc(sizeof(float) * n * s.hq);
    float *ot = malloc(sizeof(float) * n * qw), *lt = malloc(sizeof(float) * n * s.hq);
    make_rows(7, pos, n, &s, q, k, v);
    sr_star_desc d = {s.hq, s.hkv, s.hd, s.dtype, 0, 1};
    sr_star_run self = {sr_attn_kv_dense(k, v), 0, n};
    EXPECT_OK(sr_star_attend(&d, n, 0, q, &self, 1, o1, l1, ot, lt));
    sr_attn_desc a = {.nq = n, .nk = n, .n_head_q = s.hq, .n_head_kv = s.hkv, .head_dim = s.hd, .causal = 1};
    sr_attn_kv kv = sr_attn_kv_dense(k, v);
    EXPECT_OK(sr_attn_forward(&a, q, &kv, o2, l2, 1));
    int fails = memcmp(o1, o2, sizeof(float) * n * qw) != 0 || memcmp(l1, l2, sizeof(float) * n * s.hq) != 0;
    free(pos), free(q), free(k), free(v), free(o1), free(o2), free(l1), free(l2), free(ot), free(lt);
    return fails;
}

/* Every block of every rank: its rows over the runs [the prefix it sees |
 * itself] equal the reference over exactly those keys, causally; rows are
 * given in chunks that do not start at the block's start, as the runner
 * gives them. */
static int t_blocks(int64_t n, int64_t blk, int64_t anc, shape s) {
    sr_star_place pl;
    EXPECT_OK(sr_place_star(n, blk, anc, size, rank, &pl));
    int64_t qw = s.hq * s.hd, kw = s.hkv * s.hd;
    int fails = 0;
    for (int64_t g = pl.first_block; g < pl.first_block + pl.n_blocks; g++) {
        int64_t seen;
        sr_span b = sr_star_block(&pl, g, &seen);
        int64_t m = seen + b.len, *pos = malloc(sizeof(int64_t) * m);
        for (int64_t i = 0; i < seen; i++) pos[i] = i;
        for (int64_t i = 0; i < b.len; i++) pos[seen + i] = b.pos0 + i;
        float *q = malloc(sizeof(float) * m * qw), *o = malloc(sizeof(float) * m * qw), *l = malloc(sizeof(float) * m * s.hq);
        float *ot = malloc(sizeof(float) * m * qw), *lt = malloc(sizeof(float) * m * s.hq);
        void *k = malloc(esize(s.dtype) * m * kw), *v = malloc(esize(s.dtype) * m * kw);
        double *ro = malloc(sizeof(double) * m * qw), *rl = malloc(sizeof(double) * m * s.hq);
        make_rows(11, pos, m, &s, q, k, v);
        sr_star_desc d = {s.hq, s.hkv, s.hd, s.dtype, 0, 1};
        size_t off = (size_t)seen * (size_t)kw * esize(s.dtype);
        for (int64_t r0 = 0; r0 < b.len;) {
            int64_t nr = b.len - r0 < 37 ? b.len - r0 : 37;
            sr_star_run runs[2] = {{sr_attn_kv_dense(k, v), 0, seen},
                                   {sr_attn_kv_dense((char *)k + off, (char *)v + off), b.pos0, r0 + nr}};
            EXPECT_OK(sr_star_attend(&d, nr, b.pos0 + r0, q + (seen + r0) * qw, runs, 2, o + (seen + r0) * qw,
                                     l + (seen + r0) * s.hq, ot, lt));
            r0 += nr;
        }
        reference(11, &s, q + seen * qw, pos + seen, b.len, pos, m, 1, ro, rl);
        if (compare("phase 1 block", o + seen * qw, l + seen * s.hq, ro, rl, b.len * s.hq, s.hd)) {
            fprintf(stderr, "rank %d: block %lld [%lld, +%lld) seeing [0, %lld)\n", rank, (long long)g,
                    (long long)b.pos0, (long long)b.len, (long long)seen);
            fails++;
        }
        free(pos), free(q), free(o), free(l), free(ot), free(lt), free(k), free(v), free(ro), free(rl);
    }
    return fails;
}

/* ---- phase 2 ---- */

typedef struct {
    int64_t n, blk, nq, n_new;
    shape s;
    int query_rank; /* -1: the last rank */
    int paged;
    int zigzag;     /* context placed by zigzag (two runs per rank), else by star blocks (one) */
} q_case;

/* One context run of this rank: its rows (dense, or as blocks of blk rows). */
typedef struct {
    sr_span sp;
    void *k, *v;
    const void **kb, **vb;
} ctx_run;

static void ctx_run_make(ctx_run *r, uint64_t seed, sr_span sp, const q_case *c) {
    const shape *s = &c->s;
    int64_t kw = s->hkv * s->hd;
    r->sp = sp;
    int64_t *pos = calloc((size_t)sp.len + 1, sizeof(int64_t));
    for (int64_t i = 0; i < sp.len; i++) pos[i] = sp.pos0 + i;
    r->k = malloc(esize(s->dtype) * (sp.len + 1) * kw);
    r->v = malloc(esize(s->dtype) * (sp.len + 1) * kw);
    make_rows(seed, pos, sp.len, s, NULL, r->k, r->v);
    free(pos);
    r->kb = r->vb = NULL;
    if (c->paged && sp.len > 0) {
        int64_t nb = (sp.len + c->blk - 1) / c->blk;
        r->kb = malloc(sizeof(void *) * nb);
        r->vb = malloc(sizeof(void *) * nb);
        for (int64_t b = 0; b < nb; b++) {
            r->kb[b] = (char *)r->k + (size_t)(b * c->blk * kw) * esize(s->dtype);
            r->vb[b] = (char *)r->v + (size_t)(b * c->blk * kw) * esize(s->dtype);
        }
    }
}

static sr_star_run ctx_run_view(const ctx_run *r, int64_t blk) {
    sr_star_run v = {sr_attn_kv_dense(r->k, r->v), r->sp.pos0, r->sp.len};
    if (r->kb) v.kv = (sr_attn_kv){NULL, NULL, r->kb, r->vb, blk};
    return v;
}

static void ctx_run_free(ctx_run *r) {
    free(r->k), free(r->v), free(r->kb), free(r->vb);
}

static int t_query(sr_tp *tp, const q_case *c) {
    const shape *s = &c->s;
    int qr = c->query_rank < 0 ? size - 1 : c->query_rank, root = rank == qr;
    int64_t qw = s->hq * s->hd, kw = s->hkv * s->hd;
    uint64_t seed = 23;
    /* this rank's context KV: its own tokens only, in one or two runs */
    sr_span sp[2] = {{0, 0}, {0, 0}};
    int nsp = 1;
    if (c->zigzag) {
        EXPECT_OK(sr_place_zigzag(c->n, size, rank, sp));
        nsp = 2;
    } else {
        sr_star_place pl;
        EXPECT_OK(sr_place_star(c->n, c->blk, 0, size, rank, &pl));
        sp[0] = pl.own;
    }
    ctx_run cr[2];
    sr_star_run runs[3];
    int n_runs = 0;
    for (int i = 0; i < nsp; i++) {
        ctx_run_make(&cr[i], seed, sp[i], c);
        runs[n_runs++] = ctx_run_view(&cr[i], c->blk);
    }
    /* the query rank: new tokens at n.., the queries are the last nq of them */
    int64_t new0 = c->n, q0 = c->n + c->n_new - c->nq;
    int64_t *npos = malloc(sizeof(int64_t) * c->n_new);
    for (int64_t i = 0; i < c->n_new; i++) npos[i] = new0 + i;
    void *nk = malloc(esize(s->dtype) * c->n_new * kw), *nv = malloc(esize(s->dtype) * c->n_new * kw);
    float *nq_all = malloc(sizeof(float) * c->n_new * qw);
    make_rows(seed, npos, c->n_new, s, nq_all, nk, nv);
    const float *q = nq_all + (c->n_new - c->nq) * qw;
    if (root) runs[n_runs++] = (sr_star_run){sr_attn_kv_dense(nk, nv), new0, c->n_new};
    float *o = malloc(sizeof(float) * c->nq * qw), *l = malloc(sizeof(float) * c->nq * s->hq);
    for (int64_t i = 0; i < c->nq * qw; i++) o[i] = NAN;
    sr_star *st = NULL;
    EXPECT_OK(sr_star_init(&st, tp));
    sr_star_desc d = {s->hq, s->hkv, s->hd, s->dtype, 0, 1};
    sr_star_stats stats;
    memset(&stats, 0, sizeof stats);
    /* twice: the second call reuses the buffers of the first */
    int fails = 0;
    for (int call = 0; call < 2; call++)
        EXPECT_OK(sr_star_query(st, &d, qr, c->nq, q0, root ? q : NULL, runs, n_runs, root ? o : NULL,
                                root ? l : NULL, &stats));
    if (root) {
        /* every context token and the new ones up to each query's position */
        int64_t nall = c->n + c->n_new;
        int64_t *kpos = malloc(sizeof(int64_t) * nall), *qpos = malloc(sizeof(int64_t) * c->nq);
        for (int64_t i = 0; i < nall; i++) kpos[i] = i;
        for (int64_t i = 0; i < c->nq; i++) qpos[i] = q0 + i;
        double *ro = malloc(sizeof(double) * c->nq * qw), *rl = malloc(sizeof(double) * c->nq * s->hq);
        reference(seed, s, q, qpos, c->nq, kpos, nall, 1, ro, rl);
        fails += compare("phase 2", o, l, ro, rl, c->nq * s->hq, s->hd);
        free(kpos), free(qpos), free(ro), free(rl);
    }
    /* per call one message per peer and per direction, all heads and the
     * sender's status in it, whatever the number of runs */
    int64_t qb = (c->nq * qw + 1) * 4, pb = (c->nq * s->hq * (s->hd + 1) + 1) * 4;
    if (stats.messages != 2 * (root ? size - 1 : 1) || stats.bytes_sent != 2 * (root ? qb * (size - 1) : pb) ||
        stats.bytes_recv != 2 * (root ? pb * (size - 1) : qb) || stats.calls != 2) {
        fprintf(stderr, "rank %d: star stats: %lld messages, %lld bytes sent over %lld calls\n", rank,
                (long long)stats.messages, (long long)stats.bytes_sent, (long long)stats.calls);
        fails++;
    }
    sr_star_free(st);
    for (int i = 0; i < nsp; i++) ctx_run_free(&cr[i]);
    free(npos), free(nk), free(nv), free(nq_all), free(o), free(l);
    return fails;
}

/* A bad argument on one rank only: every rank comes back, the query rank
 * with that rank's failure, the failing rank with its own; then a good call
 * on the same handle works. */
static int t_query_fails(sr_tp *tp, int bad_rank) {
    shape s = {4, 2, 64, SR_DT_F32};
    int64_t qw = s.hq * s.hd, kw = s.hkv * s.hd, n = 16;
    float *q = calloc((size_t)qw, sizeof(float)), *o = calloc((size_t)qw, sizeof(float)), l[4];
    float *k = calloc((size_t)(n * kw), sizeof(float)), *v = calloc((size_t)(n * kw), sizeof(float));
    sr_star_run run = {sr_attn_kv_dense(k, v), n * rank, n};
    sr_star *st = NULL;
    EXPECT_OK(sr_star_init(&st, tp));
    sr_star_desc d = {s.hq, s.hkv, s.hd, s.dtype, 0, 1};
    int fails = 0;
    int rc = sr_star_query(st, &d, 0, 1, n * size, q, &run, rank == bad_rank ? -1 : 1, o, l, NULL);
    if (rank == 0 || rank == bad_rank) {
        if (rc != SR_EINVAL) fails++;
        char want[64];
        snprintf(want, sizeof want, "rank %d failed", bad_rank);
        if (rank != bad_rank && !strstr(sr_error_msg(), want)) fails++;
        if (fails) fprintf(stderr, "rank %d: a failure on rank %d gave %d: %s\n", rank, bad_rank, rc, sr_error_msg());
    } else if (rc != SR_OK) {
        fails++;
    }
    /* the query rank's own failure reaches every rank in the broadcast */
    rc = sr_star_query(st, &d, 0, 1, n * size, q, &run, 1, rank == 0 ? NULL : o, l, NULL);
    if (rc != SR_EINVAL) fails++;
    rc = sr_star_query(st, &d, 0, 1, n * size, q, &run, 1, o, l, NULL);
    if (rc != SR_OK) fails++;
    sr_star_free(st);
    free(q), free(o), free(k), free(v);
    return fails;
}

/* Sizes that overflow (as a corrupt step header could ask for) fail on
 * every rank before any message. */
static int t_query_huge(sr_tp *tp) {
    sr_star *st = NULL;
    EXPECT_OK(sr_star_init(&st, tp));
    sr_star_desc d = {9, 3, 64, SR_DT_F16, 0, 1};
    float x[64] = {0};
    int fails = 0;
    int64_t huge[] = {(int64_t)1 << 60, INT64_MAX, ((int64_t)1 << 62) / 9};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        int rc = sr_star_query(st, &d, 0, huge[i], 0, x, NULL, 0, x, x, NULL);
        if (rc != SR_EINVAL || !strstr(sr_error_msg(), "nq")) {
            fprintf(stderr, "rank %d: nq %lld gave %d: %s\n", rank, (long long)huge[i], rc, sr_error_msg());
            fails++;
        }
    }
    sr_star_free(st);
    return fails;
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    sr_tp *mpi = NULL, *tcp = NULL;
    if (open_mpi_and_tcp(&mpi, &tcp)) {
        MPI_Finalize();
        return 1;
    }
    tap(t_placement(), "placement: star blocks partition the context, anchors are its prefix, "
                       "each rank keeps <= ceil(n/W) + one block; zigzag chunks balanced (W=%d)", size);
    tap(t_single_block(), "phase 1 with a single block equals full causal attention exactly");
    shape f32 = {8, 2, 64, SR_DT_F32}, f16 = {4, 4, 128, SR_DT_F16};
    tap(t_blocks(1000, 100, 0, f32), "phase 1 blocks [anchor | block], anchor = block, n=1000 block=100");
    tap(t_blocks(1000, 96, 40, f16), "phase 1 blocks, f16 K/V, anchor 40 < block 96");
    tap(t_blocks(777, 64, 250, f32), "phase 1 blocks, anchor 250 longer than block 64");
    tap(t_blocks(777, 0, 0, f32), "phase 1 blocks at the defaults: one block per rank, anchor = block");
    static const q_case qc[] = {
        {1000, 64, 1, 1, {8, 2, 64, SR_DT_F32}, 0, 0, 0},
        {1000, 64, 1, 1, {8, 2, 64, SR_DT_F32}, -1, 0, 0},
        {1000, 64, 7, 12, {8, 2, 64, SR_DT_F32}, 0, 0, 0},
        {1000, 64, 7, 12, {8, 2, 64, SR_DT_F32}, -1, 1, 0},
        {555, 100, 5, 5, {4, 4, 128, SR_DT_F16}, -1, 0, 0},
        {40, 64, 3, 9, {4, 1, 64, SR_DT_BF16}, 0, 0, 0},
        {1001, 32, 1, 3, {8, 2, 64, SR_DT_F16}, 0, 1, 1},
        {777, 16, 4, 6, {4, 2, 64, SR_DT_F32}, -1, 0, 1},
    };
    for (size_t i = 0; i < sizeof qc / sizeof qc[0]; i++) {
        const q_case *c = &qc[i];
        tap(t_query(mpi, c), "phase 2 (mpi): n=%lld block=%lld, %lld queries after %lld new tokens, query rank %d%s%s%s",
            (long long)c->n, (long long)c->blk, (long long)c->nq, (long long)(c->n_new - c->nq),
            c->query_rank < 0 ? size - 1 : c->query_rank, c->paged ? ", paged KV" : "",
            c->zigzag ? ", zigzag: two runs per rank in one call" : "",
            c->s.dtype == SR_DT_F16 ? ", f16" : c->s.dtype == SR_DT_BF16 ? ", bf16 (some ranks hold nothing)" : "");
    }
    q_case tc = {1000, 64, 7, 12, {8, 2, 64, SR_DT_F32}, 1 % size, 0, 0};
    tap(t_query(tcp, &tc), "phase 2 (tcp): n=1000, 7 queries after 5 new tokens, query rank %d", tc.query_rank);
    {
        sr_star *st = NULL;
        int fails = sr_star_init(&st, mpi) != SR_OK;
        sr_star_desc bad = {6, 4, 64, SR_DT_F32, 0, 1};
        float x[64];
        fails += sr_star_query(st, &bad, 0, 1, 0, x, NULL, 0, x, x, NULL) != SR_EINVAL;
        sr_star_desc good = {4, 4, 64, SR_DT_F32, 0, 1};
        fails += sr_star_query(st, &good, size, 1, 0, x, NULL, 0, x, x, NULL) != SR_EINVAL;
        sr_star_free(st);
        tap(fails, "bad shapes and query ranks give SR_EINVAL");
    }
    tap(t_query_fails(mpi, size - 1), "a bad argument on rank %d only: every rank returns, the query rank with "
                                      "its failure; the query rank's own failure reaches every rank", size - 1);
    tap(t_query_fails(tcp, size - 1), "the same over tcp");
    tap(t_query_huge(mpi), "nq of 2^60 and other overflowing sizes give SR_EINVAL on every rank");
    sr_tp_close(tcp);
    sr_tp_close(mpi);
    return mpi_test_finish();
}
