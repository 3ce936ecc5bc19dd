/* The tile engine: see tile.h. Two shapes of the same online softmax:
 *  wide (many rows: prefill): S^T = K Q^T with rows of Q as vector lanes, so
 *    K rows are used as stored (no transpose) and the softmax max and sum
 *    run down columns, vectorised over rows; then O += P V. 16-bit K/V is
 *    converted to fp32 once per tile, fp32 K/V is read in place.
 *  narrow (few rows: decode): S = Q K^T by dot products and O += P V, with
 *    K/V converted in registers as they stream by (decode.c). */
#include "attention/cpu/tile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/cpu/attn_cpu.h"
#include "attention/cpu/simd.h"
#include "base/status.h"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

static void *alloc64(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    return p;
}

int sr_attn__ws_init(sr_attn__ws *ws, int head_dim, int n_head_kv, int m_max) {
    memset(ws, 0, sizeof *ws);
    ws->d = head_dim;
    ws->m_max = m_max;
    ws->mpad_max = (m_max + 15) / 16 * 16;
    size_t d = (size_t)head_dim, mp = (size_t)ws->mpad_max;
    ws->q = alloc64(d * mp * sizeof(float));
    ws->o = alloc64((size_t)m_max * d * sizeof(float));
    ws->m = alloc64(mp * sizeof(float));
    ws->l = alloc64(mp * sizeof(float));
    ws->alpha = alloc64(mp * sizeof(float));
    ws->s = alloc64((size_t)SR_ATTN_BK * mp * sizeof(float));
    ws->kc = alloc64((size_t)SR_ATTN_BK * d * sizeof(float));
    ws->vc = alloc64((size_t)SR_ATTN_BK * d * sizeof(float));
    ws->vis = alloc64(mp * sizeof(int64_t));
    ws->zrow = calloc((size_t)n_head_kv * d, sizeof(float));
    if (!ws->q || !ws->o || !ws->m || !ws->l || !ws->alpha || !ws->s || !ws->kc || !ws->vc || !ws->vis ||
        !ws->zrow) {
        sr_attn__ws_free(ws);
        return sr_error_set(SR_ENOMEM, "attention: out of memory for a %d-row work space", m_max);
    }
    return SR_OK;
}

void sr_attn__ws_free(sr_attn__ws *ws) {
    free(ws->q);
    free(ws->o);
    free(ws->m);
    free(ws->l);
    free(ws->alpha);
    free(ws->s);
    free(ws->kc);
    free(ws->vc);
    free(ws->vis);
    free(ws->zrow);
    memset(ws, 0, sizeof *ws);
}

/* One micro-kernel block; mr <= SR_ATTN_MR, nv <= SR_ATTN_NV. The switch
 * instantiates each shape with constant sizes. */
static void gemm_block(int mr, int nv, int64_t kdim, const float *A, int64_t ars, int64_t aks,
                       const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
#define SR_MK_CASE(MR)                                                                     \
    case MR:                                                                               \
        if (nv == 3)                                                                       \
            sr_attn__mk(MR, 3, kdim, A, ars, aks, B, ldb, C, ldc, acc);                   \
        else if (nv == 2)                                                                  \
            sr_attn__mk(MR, 2, kdim, A, ars, aks, B, ldb, C, ldc, acc);                   \
        else                                                                               \
            sr_attn__mk(MR, 1, kdim, A, ars, aks, B, ldb, C, ldc, acc);                   \
        break;
    switch (mr) {
        SR_MK_CASE(1)
        SR_MK_CASE(2)
        SR_MK_CASE(3)
        SR_MK_CASE(4)
        SR_MK_CASE(5)
        SR_MK_CASE(6)
        SR_MK_CASE(7)
        SR_MK_CASE(8)
    default: break;
    }
#undef SR_MK_CASE
}

/* Vector chunks of a width of nvec vectors, as even as possible. */
static int chunk_nv(int nvec, int v0) {
    int left = nvec - v0;
    if (left <= SR_ATTN_NV) return left;
    if (left == 4) return 2;
    return SR_ATTN_NV;
}

/* O[rows, d] += P[rows, kn] V[kn, d]; P[r][j] at p[r * prs + j * pks]. */
static void pv(float *o, int rows, int d, const float *p, int64_t prs, int64_t pks, int64_t kn,
               const float *v, int64_t ldv) {
    int nvec = d / 16;
    for (int v0 = 0; v0 < nvec;) {
        int nv = chunk_nv(nvec, v0);
        for (int r = 0; r < rows; r += SR_ATTN_MR) {
            int mr = rows - r < SR_ATTN_MR ? rows - r : SR_ATTN_MR;
            gemm_block(mr, nv, kn, p + r * prs, prs, pks, v + 16 * v0, ldv, o + (int64_t)r * d + 16 * v0,
                       d, 1);
        }
        v0 += nv;
    }
}

/* Rows [j0, j0 + kn) of K (which = 0) or V (1) for KV head g as fp32: in
 * place where possible (*ld = row stride), else converted into buf. */
static const float *kv_rows(const sr_attn_desc *d, const sr_attn_kv *kv, int which, int g, int64_t j0,
                            int64_t kn, float *buf, int64_t *ld) {
    int in_place = d->kv_dtype == SR_DT_F32 &&
                   (kv->k || j0 / kv->block_len == (j0 + kn - 1) / kv->block_len);
    if (in_place) {
        *ld = (int64_t)d->n_head_kv * d->head_dim;
        return sr_attn__kv_row(d, kv, which, j0, g);
    }
    for (int64_t j = 0; j < kn; j++)
        sr_attn__to_f32(sr_attn__kv_row(d, kv, which, j0 + j, g), d->kv_dtype, d->head_dim,
                        buf + j * d->head_dim);
    *ld = d->head_dim;
    return buf;
}

/* Pointers to rows [j0, j0 + kn) of K (which = 0) or V (1), KV head g,
 * then pointers to the zero row up to a multiple of 16; walks pages
 * without dividing. */
static void row_ptrs(const sr_attn__ws *ws, const sr_attn_desc *d, const sr_attn_kv *kv, int which, int g,
                     int64_t j0, int64_t kn, const void **out) {
    size_t es = sr_attn__dtype_size(d->kv_dtype);
    size_t row = (size_t)d->n_head_kv * d->head_dim * es, off = (size_t)g * d->head_dim * es;
    int64_t j = 0;
    if (kv->k) {
        const char *base = (const char *)(which ? kv->v : kv->k) + (size_t)j0 * row + off;
        for (; j < kn; j++) out[j] = base + (size_t)j * row;
    } else {
        const void *const *blocks = which ? kv->v_blocks : kv->k_blocks;
        int64_t b = j0 / kv->block_len, in = j0 % kv->block_len;
        for (; j < kn; j++) {
            out[j] = (const char *)blocks[b] + (size_t)in * row + off;
            if (++in == kv->block_len) {
                b++;
                in = 0;
            }
        }
    }
    for (; j % 16; j++) out[j] = ws->zrow;
}

/* Online-softmax step of one row: new max from the tile max mt, returns
 * the subtrahend for the tile's exponents (0 while the row has seen no key,
 * so that masked -inf scores give 0, never NaN). */
static inline float row_step(float *m, float mt, float *alpha) {
    float mn = mt > *m ? mt : *m;
    float muse = mn == -INFINITY ? 0.0f : mn;
    *alpha = exp2f(*m - muse);
    *m = mn;
    return muse;
}

static void scale_rows(float *o, const float *alpha, int rows, int d) {
    for (int r = 0; r < rows; r++) {
        float a = alpha[r];
        if (a == 1.0f) continue;
        float *orow = o + (int64_t)r * d;
        for (int c = 0; c < d; c++) orow[c] *= a;
    }
}

/* Wide softmax over S^T [kn, mpad]: column r is row r. */
static void wide_softmax(sr_attn__ws *ws, int64_t kn, int mpad) {
    float *st = ws->s;
#if defined(__AVX512F__)
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int v = 0; v < mpad; v += 16) {
        __m512 mt = ninf;
        for (int64_t j = 0; j < kn; j++) mt = _mm512_max_ps(mt, _mm512_load_ps(st + j * mpad + v));
        __m512 mo = _mm512_load_ps(ws->m + v);
        __m512 mn = _mm512_max_ps(mo, mt);
        __m512 muse = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mn, ninf, _CMP_EQ_OQ), mn, _mm512_setzero_ps());
        __m512 alpha = sr_attn__exp2_ps(_mm512_sub_ps(mo, muse));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < kn; j++) {
            __m512 p = sr_attn__exp2_ps(_mm512_sub_ps(_mm512_load_ps(st + j * mpad + v), muse));
            _mm512_store_ps(st + j * mpad + v, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_store_ps(ws->l + v, _mm512_fmadd_ps(_mm512_load_ps(ws->l + v), alpha, sum));
        _mm512_store_ps(ws->m + v, mn);
        _mm512_store_ps(ws->alpha + v, alpha);
    }
#else
    for (int r = 0; r < mpad; r++) {
        float mt = -INFINITY;
        for (int64_t j = 0; j < kn; j++) mt = st[j * mpad + r] > mt ? st[j * mpad + r] : mt;
        float muse = row_step(&ws->m[r], mt, &ws->alpha[r]);
        float sum = 0.0f;
        for (int64_t j = 0; j < kn; j++) {
            float p = exp2f(st[j * mpad + r] - muse);
            st[j * mpad + r] = p;
            sum += p;
        }
        ws->l[r] = ws->l[r] * ws->alpha[r] + sum;
    }
#endif
}

/* One tile of the wide shape: keys [j0, j0 + kn), masked where some row's
 * visible end falls inside the tile. */
static void wide_tile(sr_attn__ws *ws, const sr_attn_desc *d, const sr_attn_kv *kv, int g, int rows,
                      int mpad, int64_t j0, int64_t kn, int64_t vis_min) {
    int D = d->head_dim, nvec = mpad / 16;
    int64_t ldk, ldv;
    const float *kp = kv_rows(d, kv, 0, g, j0, kn, ws->kc, &ldk);
    for (int v0 = 0; v0 < nvec;) {
        int nv = chunk_nv(nvec, v0);
        for (int64_t j = 0; j < kn; j += SR_ATTN_MR) {
            int mr = kn - j < SR_ATTN_MR ? (int)(kn - j) : SR_ATTN_MR;
            gemm_block(mr, nv, D, kp + j * ldk, ldk, 1, ws->q + 16 * v0, mpad, ws->s + j * mpad + 16 * v0,
                       mpad, 0);
        }
        v0 += nv;
    }
    if (j0 + kn > vis_min) {
        for (int64_t j = 0; j < kn; j++)
            for (int r = 0; r < rows; r++)
                if (j0 + j >= ws->vis[r]) ws->s[j * mpad + r] = -INFINITY;
    }
    wide_softmax(ws, kn, mpad);
    scale_rows(ws->o, ws->alpha, rows, D);
    const float *vp = kv_rows(d, kv, 1, g, j0, kn, ws->vc, &ldv);
    pv(ws->o, rows, D, ws->s, 1, mpad, kn, vp, ldv);
}

/* One tile of the narrow shape: the M rows of each KV head in [g0, g1). */
static void narrow_tile(sr_attn__ws *ws, const sr_attn_desc *d, const sr_attn_kv *kv, int g0, int g1, int M,
                        int64_t j0, int64_t kn, int64_t kend) {
    int D = d->head_dim, nh = g1 - g0, rows = nh * M;
    size_t hs = (size_t)D * sr_attn__dtype_size(d->kv_dtype);
    const void *kr[SR_ATTN_BK], *vr[SR_ATTN_BK], *kn_r[SR_ATTN_BK];
    row_ptrs(ws, d, kv, 0, g0, j0, kn, kr);
    row_ptrs(ws, d, kv, 1, g0, j0, kn, vr);
    /* the cache streams once: V is fetched while K is scored, the next
     * tile's K while V is summed */
    int64_t j1 = j0 + kn, kn1 = kend - j1 < SR_ATTN_BK ? kend - j1 : SR_ATTN_BK;
    if (kn1 > 0) row_ptrs(ws, d, kv, 0, g0, j1, kn1, kn_r);
    else kn1 = 0;
    sr_attn__narrow_scores(d->kv_dtype, D, ws->q, M, nh, kr, hs, kn, ws->s, vr, kn);
    for (int r = 0; r < rows; r++) {
        float *s = ws->s + (int64_t)r * SR_ATTN_BK;
        int64_t lim = ws->vis[r] - j0;
        for (int64_t j = lim < 0 ? 0 : lim; j < kn; j++) s[j] = -INFINITY;
        float mt = sr_attn__max(s, kn);
        float muse = row_step(&ws->m[r], mt, &ws->alpha[r]);
        ws->l[r] = ws->l[r] * ws->alpha[r] + sr_attn__exp2_sum(s, kn, muse);
    }
    scale_rows(ws->o, ws->alpha, rows, D);
    sr_attn__narrow_pv(d->kv_dtype, D, ws->o, M, nh, ws->s, vr, hs, kn, kn_r, kn1);
}

void sr_attn__tile_run(sr_attn__ws *ws, const sr_attn_desc *d, const sr_attn_kv *kv, const float *q,
                       int g0, int g1, int64_t i0, int64_t n_pos, int64_t ka, int64_t kb, float *o,
                       float *lse) {
    int D = d->head_dim, Hq = d->n_head_q, G = d->n_head_q / d->n_head_kv;
    /* row r: KV head g0 + r / M, position i0 + (r % M) / G, head-in-group r % G */
    int M = (int)n_pos * G, rows = (g1 - g0) * M, mpad = (rows + 15) / 16 * 16;
    int narrow = M <= SR_ATTN_NARROW_MAX_ROWS;
    float qscale = (d->scale != 0.0f ? d->scale : 1.0f / sqrtf((float)D)) * LOG2E;
    int64_t vis_min = kb, vis_max = ka;
    for (int r = 0; r < rows; r++) {
        int64_t e = sr_attn__visible(d, i0 + (r % M) / G);
        e = e < kb ? e : kb;
        ws->vis[r] = e;
        vis_min = e < vis_min ? e : vis_min;
        vis_max = e > vis_max ? e : vis_max;
    }
    for (int r = 0; r < rows; r++) {
        size_t row = (size_t)(i0 + (r % M) / G) * Hq + (size_t)(g0 + r / M) * G + (size_t)(r % G);
        const float *src = q + row * D;
        for (int c = 0; c < D; c++) {
            if (narrow)
                ws->q[(size_t)r * D + c] = src[c] * qscale;
            else
                ws->q[(size_t)c * mpad + r] = src[c] * qscale;
        }
    }
    if (!narrow)
        for (int c = 0; c < D; c++)
            for (int r = rows; r < mpad; r++) ws->q[(size_t)c * mpad + r] = 0.0f;
    memset(ws->o, 0, (size_t)rows * D * sizeof(float));
    for (int r = 0; r < mpad; r++) {
        ws->m[r] = -INFINITY;
        ws->l[r] = 0.0f;
    }
    for (int64_t j0 = ka; j0 < vis_max; j0 += SR_ATTN_BK) {
        int64_t kn = vis_max - j0 < SR_ATTN_BK ? vis_max - j0 : SR_ATTN_BK;
        if (narrow) {
            narrow_tile(ws, d, kv, g0, g1, M, j0, kn, vis_max);
        } else {
            wide_tile(ws, d, kv, g0, rows, mpad, j0, kn, vis_min);
        }
    }
    for (int r = 0; r < rows; r++) {
        size_t row = (size_t)(i0 + (r % M) / G) * Hq + (size_t)(g0 + r / M) * G + (size_t)(r % G);
        float *out = o + row * D;
        const float *acc = ws->o + (size_t)r * D;
        if (ws->l[r] == 0.0f) {
            memset(out, 0, (size_t)D * sizeof(float));
            lse[row] = -INFINITY;
            continue;
        }
        float inv = 1.0f / ws->l[r];
        for (int c = 0; c < D; c++) out[c] = acc[c] * inv;
        lse[row] = (ws->m[r] + log2f(ws->l[r])) * LN2;
    }
}
