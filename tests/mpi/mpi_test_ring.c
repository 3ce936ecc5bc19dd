/* Ring attention across ranks equals single-process full attention: every
 * rank builds the rows of its own tokens (values are a hash of the absolute
 * position, so the same token has the same Q/K/V wherever it lives), runs
 * sr_ring_forward, and rank 0 gathers all outputs and compares them with
 * sr_attn_forward over the whole sequence. fp32 error must stay under 1e-5
 * of the output's scale. */
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
#include "worker/ring_attention.h"
#include "worker/wire.h"
#include "transport/transport.h"
#include "tests/mpi/mpi_support.h"

typedef struct {
    const char *name;
    int64_t n;
    int hq, hkv, hd, dtype, causal;
    int zigzag; /* else contiguous blocks */
    const char *backend;
} ring_case;

static size_t esize(int dt) { return dt == SR_DT_F32 ? 4 : 2; }

/* Fills rows of Q (fp32) and K, V (dtype) for tokens at the given positions. */
static void make_rows(uint64_t seed, const sr_span *sp, int nsp, const ring_case *c, float *q, void *k, void *v) {
    int64_t r = 0, qw = (int64_t)c->hq * c->hd, kw = (int64_t)c->hkv * c->hd;
    for (int s = 0; s < nsp; s++)
        for (int64_t t = 0; t < sp[s].len; t++, r++) {
            int64_t pos = sp[s].pos0 + t;
            for (int64_t i = 0; i < qw; i++) q[r * qw + i] = sr_test_rng_at(seed, pos, i);
            for (int64_t i = 0; i < kw; i++) {
                float kf = sr_test_rng_at(seed + 1, pos, i), vf = sr_test_rng_at(seed + 2, pos, i);
                int64_t at = r * kw + i;
                if (c->dtype == SR_DT_F32) {
                    ((float *)k)[at] = kf;
                    ((float *)v)[at] = vf;
                } else if (c->dtype == SR_DT_F16) {
                    ((sr_f16 *)k)[at] = sr_f32_to_f16(kf);
                    ((sr_f16 *)v)[at] = sr_f32_to_f16(vf);
                } else {
                    ((sr_bf16 *)k)[at] = sr_f32_to_bf16(kf);
                    ((sr_bf16 *)v)[at] = sr_f32_to_bf16(vf);
                }
            }
        }
}

static void place(const ring_case *c, int p, sr_span sp[2], int *nsp) {
    if (c->zigzag) {
        sr_place_zigzag(c->n, size, p, sp);
        *nsp = 2;
    } else {
        sp[0].pos0 = c->n * p / size;
        sp[0].len = c->n * (p + 1) / size - sp[0].pos0;
        *nsp = 1;
    }
}

/* Runs one case (layers times, with fresh inputs per layer) and checks it on
 * rank 0; returns the local failure count. */
static int run_case(sr_tp *tp, const ring_case *c, int layers) {
    sr_span sp[2];
    int nsp;
    place(c, rank, sp, &nsp);
    int64_t nloc = sr_span_total(sp, nsp), maxloc = 0;
    for (int p = 0; p < size; p++) {
        sr_span s2[2];
        int n2;
        place(c, p, s2, &n2);
        if (sr_span_total(s2, n2) > maxloc) maxloc = sr_span_total(s2, n2);
    }
    int64_t qw = (int64_t)c->hq * c->hd, kw = (int64_t)c->hkv * c->hd;
    int64_t m = maxloc > 0 ? maxloc : 1;
    float *q = malloc(sizeof(float) * m * qw), *o = malloc(sizeof(float) * m * qw), *lse = malloc(sizeof(float) * m * c->hq);
    void *k = malloc(esize(c->dtype) * m * kw), *v = malloc(esize(c->dtype) * m * kw);
    float *all_o = NULL, *all_lse = NULL;
    if (rank == 0) {
        all_o = malloc(sizeof(float) * m * qw * size);
        all_lse = malloc(sizeof(float) * m * c->hq * size);
    }
    sr_ring *ring = NULL;
    EXPECT_OK(sr_ring_init(&ring, tp, sp, nsp));
    int fails = 0;
    sr_ring_stats st;
    memset(&st, 0, sizeof st);
    for (int layer = 0; layer < layers; layer++) {
        uint64_t seed = 1000 + 17 * (uint64_t)layer + (uint64_t)c->n;
        make_rows(seed, sp, nsp, c, q, k, v);
        sr_ring_desc d = {c->hq, c->hkv, c->hd, c->dtype, c->causal, 0.0f, 1, 2 * layer};
        for (int64_t i = 0; i < nloc * qw; i++) o[i] = NAN; /* poison: every row must be written */
        EXPECT_OK(sr_ring_forward(ring, &d, q, k, v, o, lse, &st));
        EXPECT_OK(sr_tp_gather(tp, o, (int64_t)sizeof(float) * m * qw, all_o, 0));
        EXPECT_OK(sr_tp_gather(tp, lse, (int64_t)sizeof(float) * m * c->hq, all_lse, 0));
        if (rank != 0) continue;
        /* reference: the whole sequence in one process */
        sr_span full = {0, c->n};
        float *fq = malloc(sizeof(float) * c->n * qw), *fo = malloc(sizeof(float) * c->n * qw);
        float *flse = malloc(sizeof(float) * c->n * c->hq);
        void *fk = malloc(esize(c->dtype) * c->n * kw), *fv = malloc(esize(c->dtype) * c->n * kw);
        make_rows(seed, &full, 1, c, fq, fk, fv);
        sr_attn_desc a = {.nq = c->n, .nk = c->n, .n_head_q = c->hq, .n_head_kv = c->hkv, .head_dim = c->hd,
                          .causal = c->causal, .kv_dtype = c->dtype};
        sr_attn_kv kv = sr_attn_kv_dense(fk, fv);
        EXPECT_OK(sr_attn_forward(&a, fq, &kv, fo, flse, 1));
        double max_err = 0, max_ref = 0, max_lse_err = 0;
        for (int p = 0; p < size; p++) {
            sr_span s2[2];
            int n2;
            place(c, p, s2, &n2);
            int64_t r = 0;
            for (int s = 0; s < n2; s++)
                for (int64_t t = 0; t < s2[s].len; t++, r++) {
                    int64_t pos = s2[s].pos0 + t;
                    const float *got = all_o + ((int64_t)p * m + r) * qw, *ref = fo + pos * qw;
                    for (int64_t i = 0; i < qw; i++) {
                        double e = fabs((double)got[i] - ref[i]);
                        if (!(e <= max_err)) max_err = isnan(e) ? INFINITY : e;
                        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
                    }
                    const float *gl = all_lse + ((int64_t)p * m + r) * c->hq, *rl = flse + pos * c->hq;
                    for (int h = 0; h < c->hq; h++) {
                        double e = fabs((double)gl[h] - rl[h]) / fmax(1.0, fabs(rl[h]));
                        if (!(e <= max_lse_err)) max_lse_err = isnan(e) ? INFINITY : e;
                    }
                }
        }
        double rel = max_err / (max_ref > 0 ? max_ref : 1);
        if (!(rel < 1e-5) || !(max_lse_err < 1e-5)) {
            fprintf(stderr, "%s layer %d: output error %.3g of scale %.3g (rel %.3g), lse rel error %.3g\n", c->name,
                    layer, max_err, max_ref, rel, max_lse_err);
            fails++;
        }
        free(fq);
        free(fo);
        free(flse);
        free(fk);
        free(fv);
    }
    /* every unmasked (query, key) pair is computed exactly once somewhere */
    double fl = st.flops;
    MPI_Allreduce(MPI_IN_PLACE, &fl, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    sr_attn_desc a = {.nq = c->n, .nk = c->n, .n_head_q = c->hq, .n_head_kv = c->hkv, .head_dim = c->hd,
                      .causal = c->causal, .kv_dtype = c->dtype};
    double want = layers * sr_attn_flops(&a);
    if (fabs(fl - want) > 1e-9 * want) {
        fprintf(stderr, "%s: ranks computed %.6g FLOPs, full attention has %.6g\n", c->name, fl, want);
        fails++;
    }
    /* each rank sends every block but the one it will receive last */
    int64_t bytes = 0;
    for (int p = 0; p < size; p++) {
        sr_span s2[2];
        int n2;
        place(c, p, s2, &n2);
        if (p != (rank + 1) % size) bytes += 2 * sr_span_total(s2, n2) * kw * (int64_t)esize(c->dtype);
    }
    if (st.bytes_sent != layers * bytes || st.calls != layers || !(st.compute_s > 0) || st.wait_s < 0) {
        fprintf(stderr, "rank %d %s: stats sent %lld (want %lld), calls %lld, compute %.3g s, wait %.3g s\n", rank,
                c->name, (long long)st.bytes_sent, (long long)(layers * bytes), (long long)st.calls, st.compute_s,
                st.wait_s);
        fails++;
    }
    sr_ring_free(ring);
    free(q);
    free(o);
    free(lse);
    free(k);
    free(v);
    free(all_o);
    free(all_lse);
    return fails;
}

/* ---- failures: every rank comes back with an error ---- */

/* One rank sends a forged entry into sr_ring_init's allgather (the other
 * ranks call sr_ring_init): every honest rank refuses the table with
 * SR_EFORMAT naming the field, and reads nothing out of bounds (ASan). */
static int t_forged_entry(sr_tp *tp, const int64_t forged[SR_WIRE_RING_WORDS], const char *field) {
    int liar = size - 1, fails = 0;
    if (rank == liar) {
        int64_t *all = malloc(sizeof(int64_t) * SR_WIRE_RING_WORDS * size);
        EXPECT_OK(sr_tp_allgather(tp, forged, sizeof(int64_t) * SR_WIRE_RING_WORDS, all));
        free(all);
        return 0;
    }
    sr_span one = {rank * 10, 10};
    sr_ring *r = NULL;
    int rc = sr_ring_init(&r, tp, &one, 1);
    char want[64];
    snprintf(want, sizeof want, "rank %d", liar);
    if (rc != SR_EFORMAT || r || !strstr(sr_error_msg(), field) || !strstr(sr_error_msg(), want)) {
        fprintf(stderr, "rank %d: forged entry (%s) gave %d: %s\n", rank, field, rc, sr_error_msg());
        fails++;
    }
    sr_ring_free(r);
    return fails;
}

/* A bad argument on one rank only, at init and at a layer: every rank fails;
 * then a good layer on the same ring works. */
static int t_one_rank_fails(sr_tp *tp) {
    int bad_rank = size - 1, fails = 0;
    sr_span sp[5] = {{rank, 1}, {size + rank, 1}, {2 * size + rank, 1}, {3 * size + rank, 1}, {4 * size + rank, 1}};
    sr_ring *r = NULL;
    if (sr_ring_init(&r, tp, sp, rank == bad_rank ? 5 : 2) != SR_EINVAL || r) {
        fprintf(stderr, "rank %d: init with 5 spans on rank %d: %s\n", rank, bad_rank, sr_error_msg());
        fails++;
    }
    EXPECT_OK(sr_ring_init(&r, tp, sp, 2));
    float q[2 * 2 * 64] = {0}, k[2 * 64] = {0}, v[2 * 64] = {0}, o[2 * 2 * 64], lse[2 * 2];
    sr_ring_desc d = {2, 1, 64, SR_DT_F32, 1, 0, 1, 0};
    int rc = sr_ring_forward(r, &d, rank == bad_rank ? NULL : q, k, v, o, lse, NULL);
    if (rc != SR_EINVAL || (rank != bad_rank && !strstr(sr_error_msg(), "failed"))) {
        fprintf(stderr, "rank %d: layer with q NULL on rank %d gave %d: %s\n", rank, bad_rank, rc, sr_error_msg());
        fails++;
    }
    if (sr_ring_forward(r, &d, q, k, v, o, lse, NULL) != SR_OK) fails++;
    sr_ring_free(r);
    return fails;
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    sr_tp *mpi = NULL, *tcp = NULL;
    int bad = sr_tp_open(&mpi, "mpi", NULL) != SR_OK;
    tap(bad, "open mpi transport");
    bad = open_tcp(&tcp) != SR_OK;
    tap(bad, "open tcp transport");
    if (!mpi || !tcp) {
        MPI_Finalize();
        return 1;
    }
    static const ring_case cases[] = {
        {"causal zigzag, GQA 4, n=1237", 1237, 8, 2, 64, SR_DT_F32, 1, 1, "mpi"},
        {"non-causal zigzag, GQA 4, n=1237", 1237, 8, 2, 64, SR_DT_F32, 0, 1, "mpi"},
        {"causal zigzag, f16 K/V, d=128, n=777", 777, 4, 4, 128, SR_DT_F16, 1, 1, "mpi"},
        {"causal zigzag, bf16 K/V, GQA 8, d=80, n=301", 301, 8, 1, 80, SR_DT_BF16, 1, 1, "mpi"},
        {"causal zigzag, n=5 (some ranks hold nothing)", 5, 2, 1, 64, SR_DT_F32, 1, 1, "mpi"},
        {"causal contiguous blocks, n=1001", 1001, 4, 2, 96, SR_DT_F32, 1, 0, "mpi"},
        {"causal zigzag over tcp, GQA 2, n=999", 999, 4, 2, 64, SR_DT_F32, 1, 1, "tcp"},
        {"non-causal contiguous over tcp, f16, n=500", 500, 4, 1, 64, SR_DT_F16, 0, 0, "tcp"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ring_case *c = &cases[i];
        sr_tp *tp = strcmp(c->backend, "tcp") == 0 ? tcp : mpi;
        tap(run_case(tp, c, i == 0 ? 3 : 1), "ring %s (%s, W=%d%s)", c->name, c->backend, size,
            i == 0 ? ", 3 layers" : "");
    }
    /* bad spans and shapes are refused */
    {
        sr_ring *r = NULL;
        sr_span sp[5] = {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}};
        int fails = sr_ring_init(&r, mpi, sp, 5) != SR_EINVAL || r != NULL;
        sr_span one = {rank, 1};
        if (sr_ring_init(&r, mpi, &one, 1) == SR_OK) {
            sr_ring_desc d = {6, 4, 64, SR_DT_F32, 1, 0, 1, 0};
            float x[6 * 64], lse[6];
            fails += sr_ring_forward(r, &d, x, x, x, x, lse, NULL) != SR_EINVAL;
            sr_ring_free(r);
        } else {
            fails++;
        }
        tap(fails, "bad spans and shapes give SR_EINVAL");
    }
    tap(t_one_rank_fails(mpi), "a bad argument on rank %d only, at init and at a layer: every rank fails", size - 1);
    tap(t_one_rank_fails(tcp), "the same over tcp");
    {
        sr_span sp[SR_RING_MAX_SPANS] = {{1000000, 5}};
        int64_t e[SR_WIRE_RING_WORDS];
        sr_wire_ring_encode(e, SR_OK, sp, 1);
        e[1] = 1000;
        tap(t_forged_entry(mpi, e, "n_spans 1000"), "a peer's span count of 1000 is refused by name");
        e[1] = 1;
        e[3] = -5;
        tap(t_forged_entry(mpi, e, "len -5"), "a peer's negative span length is refused by name");
        e[3] = 5;
        e[2] = 3; /* rank 0 holds [0, 10) */
        tap(t_forged_entry(mpi, e, "overlaps rank 0"), "a peer's span over another rank's is refused");
        e[2] = 1000000;
        e[0] = 77;
        tap(t_forged_entry(tcp, e, "status 77"), "a peer's status word that is no status code is refused (tcp)");
    }
    sr_tp_close(tcp);
    sr_tp_close(mpi);
    return mpi_test_finish();
}
