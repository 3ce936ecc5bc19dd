/* starring-bench attention: our CPU attention against an OpenBLAS baseline
 * (prefill) and against the machine's read bandwidth (decode), checked for
 * correctness on every run. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "attention/attention.h"
#include "attention/cpu/simd.h"
#include "base/half.h"
#include "base/status.h"
#include "bench/ceiling.h"
#include "bench/commands.h"
#include "bench/harness.h"

/* glibc's vector expf (libmvec, reached through -lm): the baseline's softmax
 * should not be held back by a scalar exp. */
#if defined(__AVX512F__)
__m512 _ZGVeN16v_expf(__m512 x);
#elif defined(__AVX2__)
__m256 _ZGVdN8v_expf(__m256 x);
#endif

#define HEAD_DIM 128
#define BASE_BLOCK 256 /* query rows per baseline sgemm */

/* ours vs the baseline (both fp32 math): far above rounding, far below a bug */
#define O_ATOL 2e-5
#define O_RTOL 2e-4
#define LSE_ATOL 1e-4
#define LSE_RTOL 1e-5

static const int64_t prefill_n[] = {1024, 2048, 4096, 8192, 16384, 32768};
static const int64_t prefill_n_quick[] = {96, 300};
static const int64_t decode_n[] = {65536, 262144, 1048576};
static const int64_t decode_n_quick[] = {1000, 4099};
static const int kv_types[] = {SR_DT_F32, SR_DT_F16};

typedef struct {
    srb_ceilings ceil;
    srb_report *r;
} attn_ctx;

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* uniform in [-1, 1), a pure function of (seed, i) so that threads can fill */
static void fill_f32(float *p, size_t n, uint64_t seed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(mix64(seed * 0x100000001b3ull + i) >> 40) * 0x1p-23f - 1.0f;
}

/* random sign, magnitude in [1/8, 2): built from bits, fast for gigabytes */
static void fill_f16(sr_f16 *p, size_t n, uint64_t seed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix64(seed * 0x100000001b3ull + i);
        p[i] = (sr_f16)((r & 0x83ffu) | ((12u + ((r >> 16) & 3u)) << 10));
    }
}

static int64_t visible(const sr_attn_desc *d, int64_t i) {
    if (!d->causal) return d->nk;
    int64_t n = d->q_pos0 + i - d->k_pos0 + 1;
    return n < 0 ? 0 : (n > d->nk ? d->nk : n);
}

static int64_t count_wrong(const float *x, const float *ref, int64_t n, double atol, double rtol) {
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isinf(ref[i]) && x[i] == ref[i]) continue; /* empty rows: -inf on both sides */
        if (!(fabs((double)x[i] - ref[i]) <= atol + rtol * fabs((double)ref[i]))) wrong++;
    }
    return wrong;
}

/* ---- prefill ---------------------------------------------------------- */

typedef struct {
    sr_attn_desc d;
    int threads;
    double ceiling;
    float *q, *o, *lse;   /* Q, ours: [n, Hq, d], [n, Hq] */
    void *k, *v;          /* [n, Hkv, d] in d.kv_dtype */
    float *k32, *v32;     /* the baseline's fp32 copies of 16-bit K/V */
    float *o_b, *lse_b;   /* the baseline's output */
    float *scores;        /* per thread: [BASE_BLOCK, n] */
} prefill_case;

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* case i: size i / 2, K/V type i % 2 */
static int prefill_n_cases(void *ctx, const srb_opts *o) {
    return 2 * (o->quick ? COUNT(prefill_n_quick) : COUNT(prefill_n));
}

static void prefill_teardown(void *arg) {
    prefill_case *c = arg;
    free(c->q), free(c->o), free(c->lse), free(c->k), free(c->v), free(c->k32), free(c->v32);
    free(c->o_b), free(c->lse_b), free(c->scores);
    free(c);
}

static int prefill_setup(void *ctx, int i, const srb_opts *o, void **state) {
    attn_ctx *a = ctx;
    int64_t n = (o->quick ? prefill_n_quick : prefill_n)[i / 2];
    *state = NULL;
    if (o->max_n > 0 && n > o->max_n) return SR_OK;
    prefill_case *c = calloc(1, sizeof *c);
    if (!c) return sr_error_set(SR_ENOMEM, "prefill: out of memory");
    sr_attn_desc d = {.nq = n, .nk = n, .n_head_q = 8, .n_head_kv = 2, .head_dim = HEAD_DIM,
                      .causal = 1, .kv_dtype = kv_types[i % 2]};
    c->d = d;
    c->threads = o->threads;
    c->ceiling = a->ceil.sgemm_gflops;
    size_t nq = (size_t)n * 8 * HEAD_DIM, nkv = (size_t)n * 2 * HEAD_DIM;
    size_t es = d.kv_dtype == SR_DT_F32 ? 4 : 2;
    c->q = malloc(nq * 4), c->o = malloc(nq * 4), c->o_b = malloc(nq * 4);
    c->lse = malloc((size_t)n * 8 * 4), c->lse_b = malloc((size_t)n * 8 * 4);
    c->k = malloc(nkv * es), c->v = malloc(nkv * es);
    c->scores = malloc((size_t)o->threads * BASE_BLOCK * (size_t)n * 4);
    if (d.kv_dtype != SR_DT_F32) c->k32 = malloc(nkv * 4), c->v32 = malloc(nkv * 4);
    if (!c->q || !c->o || !c->o_b || !c->lse || !c->lse_b || !c->k || !c->v || !c->scores ||
        (d.kv_dtype != SR_DT_F32 && (!c->k32 || !c->v32))) {
        prefill_teardown(c);
        return sr_error_set(SR_ENOMEM, "prefill n=%lld: out of memory", (long long)n);
    }
    fill_f32(c->q, nq, 1, o->threads);
    if (d.kv_dtype == SR_DT_F32) {
        fill_f32(c->k, nkv, 2, o->threads);
        fill_f32(c->v, nkv, 3, o->threads);
    } else {
        fill_f16(c->k, nkv, 2, o->threads);
        fill_f16(c->v, nkv, 3, o->threads);
    }
    /* poison the outputs, so that an element nobody writes is counted wrong */
    memset(c->o, 0xff, nq * 4), memset(c->o_b, 0xff, nq * 4);
    memset(c->lse, 0xff, (size_t)n * 8 * 4), memset(c->lse_b, 0xff, (size_t)n * 8 * 4);
    *state = c;
    return SR_OK;
}

static int prefill_run(void *arg) {
    prefill_case *c = arg;
    sr_attn_kv kv = sr_attn_kv_dense(c->k, c->v);
    return sr_attn_forward(&c->d, c->q, &kv, c->o, c->lse, c->threads);
}

/* s[j] := exp(s[j] - m) for j < n; returns the sum. */
static float row_exp(float *s, int64_t n, float m) {
    int64_t j = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    __m512 vs = _mm512_setzero_ps(), vm = _mm512_set1_ps(m);
    for (; j + 16 <= n; j += 16) {
        __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        _mm512_storeu_ps(s + j, e);
        vs = _mm512_add_ps(vs, e);
    }
    sum = _mm512_reduce_add_ps(vs);
#elif defined(__AVX2__)
    __m256 vs = _mm256_setzero_ps(), vm = _mm256_set1_ps(m);
    for (; j + 8 <= n; j += 8) {
        __m256 e = _ZGVdN8v_expf(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vs);
    for (int l = 0; l < 8; l++) sum += lanes[l];
#endif
    for (; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}

/* One block of query rows, one head: S = Q K^T over the keys the block can
 * see, causal mask and softmax, O = P V. */
static void base_block(prefill_case *c, const float *k, const float *v, int64_t r0, int h,
                       float *s) {
    const sr_attn_desc *d = &c->d;
    int64_t D = d->head_dim, Hq = d->n_head_q, ldq = Hq * D, ldk = d->n_head_kv * D;
    int64_t m = d->nq - r0 < BASE_BLOCK ? d->nq - r0 : BASE_BLOCK;
    int64_t nvis = visible(d, r0 + m - 1); /* the block's last row sees the most */
    int hk = h / (d->n_head_q / d->n_head_kv);
    const float *qh = c->q + r0 * ldq + h * D, *kh = k + hk * D, *vh = v + hk * D;
    float *oh = c->o_b + r0 * ldq + h * D, *lse = c->lse_b + r0 * Hq + h;
    float scale = d->scale != 0.0f ? d->scale : 1.0f / sqrtf((float)D);
    float inv[BASE_BLOCK];
    if (nvis > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nvis, (int)D, scale, qh,
                    (int)ldq, kh, (int)ldk, 0.0f, s, (int)nvis);
    for (int64_t i = 0; i < m; i++) {
        float *row = s + i * nvis;
        int64_t lim = visible(d, r0 + i);
        if (lim == 0) {
            inv[i] = 0.0f;
            lse[i * Hq] = -INFINITY;
        } else {
            float mx = sr_attn__max(row, lim), sum = row_exp(row, lim, mx);
            inv[i] = 1.0f / sum;
            lse[i * Hq] = mx + logf(sum);
        }
        memset(row + lim, 0, (size_t)(nvis - lim) * sizeof(float));
    }
    if (nvis > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)nvis, 1.0f, s,
                    (int)nvis, vh, (int)ldk, 0.0f, oh, (int)ldq);
    for (int64_t i = 0; i < m; i++)
        for (int64_t e = 0; e < D; e++) oh[i * ldq + e] = nvis > 0 ? oh[i * ldq + e] * inv[i] : 0.0f;
}

static void to_f32(const sr_f16 *x, float *y, size_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i += 4096) {
        size_t e = i + 4096 < n ? i + 4096 : n, j = i;
#if defined(__AVX512F__)
        for (; j + 16 <= e; j += 16)
            _mm512_storeu_ps(y + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + j))));
#elif defined(__F16C__)
        for (; j + 8 <= e; j += 8)
            _mm256_storeu_ps(y + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + j))));
#endif
        for (; j < e; j++) y[j] = sr_f16_to_f32(x[j]);
    }
}

static int prefill_base(void *arg) {
    prefill_case *c = arg;
    const sr_attn_desc *d = &c->d;
    const float *k = c->k, *v = c->v;
    if (d->kv_dtype == SR_DT_F16) {
        size_t nkv = (size_t)d->nk * (size_t)d->n_head_kv * (size_t)d->head_dim;
        to_f32(c->k, c->k32, nkv, c->threads);
        to_f32(c->v, c->v32, nkv, c->threads);
        k = c->k32, v = c->v32;
    }
    int64_t nblk = (d->nq + BASE_BLOCK - 1) / BASE_BLOCK, Hq = d->n_head_q, tasks = nblk * Hq;
    /* the last blocks see the most keys: hand them out first */
#pragma omp parallel for num_threads(c->threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        float *s = c->scores + (size_t)omp_get_thread_num() * BASE_BLOCK * (size_t)d->nk;
        base_block(c, k, v, (nblk - 1 - t / Hq) * BASE_BLOCK, (int)(t % Hq), s);
    }
    return SR_OK;
}

static int prefill_check(void *arg, int64_t *wrong) {
    prefill_case *c = arg;
    int64_t rows = c->d.nq * c->d.n_head_q;
    *wrong = count_wrong(c->o, c->o_b, rows * c->d.head_dim, O_ATOL, O_RTOL) +
             count_wrong(c->lse, c->lse_b, rows, LSE_ATOL, LSE_RTOL);
    return SR_OK;
}

static void prefill_describe(void *arg, srb_row *row, double *work, double *ceiling) {
    prefill_case *c = arg;
    snprintf(row->name, sizeof row->name, "nq=nk=%lld H=%d/%d d=%d", (long long)c->d.nq,
             c->d.n_head_q, c->d.n_head_kv, c->d.head_dim);
    snprintf(row->kv, sizeof row->kv, "%s", c->d.kv_dtype == SR_DT_F32 ? "f32" : "f16");
    row->unit = "GFLOP/s";
    *work = sr_attn_flops(&c->d) * 1e-9;
    *ceiling = c->ceiling;
}

static const srb_plugin prefill_plugin = {
    .section = "prefill",
    .n_cases = prefill_n_cases,
    .setup = prefill_setup,
    .run = prefill_run,
    .run_base = prefill_base,
    .check = prefill_check,
    .describe = prefill_describe,
    .teardown = prefill_teardown,
};

/* ---- decode ----------------------------------------------------------- */

typedef struct {
    sr_attn_desc d;
    int threads;
    double ceiling;
    float *q, *o, *lse; /* [1, Hq, d], [1, Hq] */
    sr_f16 *k, *v;      /* [nk, Hkv, d] */
} decode_case;

static int decode_n_cases(void *ctx, const srb_opts *o) {
    return o->quick ? COUNT(decode_n_quick) : COUNT(decode_n);
}

static void decode_teardown(void *arg) {
    decode_case *c = arg;
    free(c->q), free(c->o), free(c->lse), free(c->k), free(c->v);
    free(c);
}

static int decode_setup(void *ctx, int i, const srb_opts *o, void **state) {
    attn_ctx *a = ctx;
    int64_t n = (o->quick ? decode_n_quick : decode_n)[i];
    *state = NULL;
    if (o->max_n > 0 && n > o->max_n) return SR_OK;
    decode_case *c = calloc(1, sizeof *c);
    if (!c) return sr_error_set(SR_ENOMEM, "decode: out of memory");
    /* the new token is the last position: it sees every key */
    sr_attn_desc d = {.nq = 1, .nk = n, .n_head_q = 32, .n_head_kv = 8, .head_dim = HEAD_DIM,
                      .causal = 1, .q_pos0 = n - 1, .kv_dtype = SR_DT_F16};
    c->d = d;
    c->threads = o->threads;
    size_t nq = 32 * HEAD_DIM, nkv = (size_t)n * 8 * HEAD_DIM;
    c->q = malloc(nq * 4), c->o = malloc(nq * 4), c->lse = malloc(32 * 4);
    c->k = malloc(nkv * 2), c->v = malloc(nkv * 2);
    if (!c->q || !c->o || !c->lse || !c->k || !c->v) {
        decode_teardown(c);
        return sr_error_set(SR_ENOMEM, "decode nk=%lld: out of memory", (long long)n);
    }
    fill_f32(c->q, nq, 4, o->threads);
    fill_f16(c->k, nkv, 5, o->threads);
    fill_f16(c->v, nkv, 6, o->threads);
    memset(c->o, 0xff, nq * 4), memset(c->lse, 0xff, 32 * 4);
    /* the read bandwidth again, just before this row: on a shared machine
     * it drifts over the minutes a run takes, and the ratio is the figure */
    srb_ceilings now;
    memset(&now, 0, sizeof now);
    int rc = srb_ceiling_memory(o, &now);
    if (rc < 0) {
        decode_teardown(c);
        return rc;
    }
    c->ceiling = now.read_gbs;
    char key[48];
    snprintf(key, sizeof key, "read_gbs_nk_%lld", (long long)n);
    if ((rc = srb_report_fact_num(a->r, key, now.read_gbs)) < 0) {
        decode_teardown(c);
        return rc;
    }
    *state = c;
    return SR_OK;
}

static int decode_run(void *arg) {
    decode_case *c = arg;
    sr_attn_kv kv = sr_attn_kv_dense(c->k, c->v);
    return sr_attn_forward(&c->d, c->q, &kv, c->o, c->lse, c->threads);
}

/* A spot check: a few heads (from different KV heads) in double. */
static int decode_check(void *arg, int64_t *wrong) {
    decode_case *c = arg;
    const sr_attn_desc *d = &c->d;
    int64_t nk = d->nk, D = d->head_dim, Hkv = d->n_head_kv;
    static const int heads[] = {0, 13, 31};
    double *sc = malloc((size_t)nk * sizeof *sc);
    if (!sc) return sr_error_set(SR_ENOMEM, "decode check: out of memory");
    *wrong = 0;
    for (int hi = 0; hi < 3; hi++) {
        int h = heads[hi], hk = h / (d->n_head_q / d->n_head_kv);
        const float *q = c->q + (size_t)h * D;
        double scale = 1.0 / sqrt((double)D), mx = -INFINITY, sum = 0.0, acc[HEAD_DIM] = {0};
#pragma omp parallel for num_threads(c->threads) reduction(max : mx)
        for (int64_t j = 0; j < nk; j++) {
            const sr_f16 *kr = c->k + ((size_t)j * Hkv + hk) * D;
            double s = 0.0;
            for (int64_t e = 0; e < D; e++) s += (double)q[e] * sr_f16_to_f32(kr[e]);
            sc[j] = s * scale;
            mx = sc[j] > mx ? sc[j] : mx;
        }
#pragma omp parallel for num_threads(c->threads) reduction(+ : sum, acc[:HEAD_DIM])
        for (int64_t j = 0; j < nk; j++) {
            const sr_f16 *vr = c->v + ((size_t)j * Hkv + hk) * D;
            double p = exp(sc[j] - mx);
            sum += p;
            for (int64_t e = 0; e < D; e++) acc[e] += p * sr_f16_to_f32(vr[e]);
        }
        float ref[HEAD_DIM], ref_lse = (float)(mx + log(sum));
        for (int64_t e = 0; e < D; e++) ref[e] = (float)(acc[e] / sum);
        *wrong += count_wrong(c->o + (size_t)h * D, ref, D, 1e-5, 1e-4) +
                  count_wrong(c->lse + h, &ref_lse, 1, LSE_ATOL, LSE_RTOL);
    }
    free(sc);
    return SR_OK;
}

static void decode_describe(void *arg, srb_row *row, double *work, double *ceiling) {
    decode_case *c = arg;
    snprintf(row->name, sizeof row->name, "nk=%lld H=%d/%d d=%d", (long long)c->d.nk,
             c->d.n_head_q, c->d.n_head_kv, c->d.head_dim);
    snprintf(row->kv, sizeof row->kv, "f16");
    row->unit = "GB/s";
    *work = 2.0 * (double)c->d.nk * c->d.n_head_kv * c->d.head_dim * sizeof(sr_f16) * 1e-9;
    *ceiling = c->ceiling;
}

static const srb_plugin decode_plugin = {
    .section = "decode",
    .n_cases = decode_n_cases,
    .setup = decode_setup,
    .run = decode_run,
    .run_base = NULL,
    .check = decode_check,
    .describe = decode_describe,
    .teardown = decode_teardown,
};

int srb_cmd_attention(int argc, char **argv) {
    srb_opts o;
    int rc = srb_opts_parse(
        argc, argv, "attention",
        "Prefill (causal, d=128, Hq=8, Hkv=2, nq=nk 1k..32k, f32 and f16 K/V) against an OpenBLAS\n"
        "baseline (sgemm per 256-row block and head, softmax, sgemm) and the sgemm ceiling;\n"
        "decode (nq=1, Hq=32, Hkv=8, f16 K/V, nk 64k..1M) against the read bandwidth, measured\n"
        "again just before each decode row.\n"
        "Every row is checked; exit status 1 if any element is wrong.",
        &o);
    if (rc != 0) return rc > 0 ? 0 : 2;
    if (o.only && strcmp(o.only, prefill_plugin.section) && strcmp(o.only, decode_plugin.section)) {
        fprintf(stderr, "starring-bench attention: --only wants prefill or decode, got '%s'\n",
                o.only);
        return 2;
    }
    attn_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    rc = srb_ceiling_sgemm(&o, &ctx.ceil);
    if (rc == SR_OK) rc = srb_ceiling_best_blas(&ctx.ceil, argc, argv);
    if (rc == SR_OK) rc = srb_ceiling_memory(&o, &ctx.ceil);
    if (rc < 0) {
        fprintf(stderr, "starring-bench attention: %s\n", sr_error_msg());
        return 1;
    }
    /* the baseline runs one sgemm per thread itself, over blocks and heads */
    openblas_set_num_threads(1);
    srb_report *r = srb_report_new(&o);
    if (!r) {
        fprintf(stderr, "starring-bench attention: out of memory\n");
        return 1;
    }
    ctx.r = r;
    rc = srb_report_fact_num(r, "threads", o.threads);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "baseline_core", openblas_get_corename());
    if (rc == SR_OK) rc = srb_ceiling_report(&ctx.ceil, &o, r);
    if (rc == SR_OK) rc = srb_run_plugin(&prefill_plugin, &ctx, &o, r);
    if (rc == SR_OK) rc = srb_run_plugin(&decode_plugin, &ctx, &o, r);
    if (rc == SR_OK) rc = srb_report_finish(r);
    int64_t wrong = srb_report_wrong(r);
    srb_report_free(r);
    if (rc < 0) {
        fprintf(stderr, "starring-bench attention: %s\n", sr_error_msg());
        return 1;
    }
    if (wrong > 0) {
        fprintf(stderr, "starring-bench attention: %lld wrong elements\n", (long long)wrong);
        return 1;
    }
    return 0;
}
