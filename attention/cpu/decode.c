/* The narrow shape's kernels (decode: a few query rows per KV head). K and
 * V are read once, converted to fp32 in registers as they are used: a
 * decode step is bound by streaming the KV cache, so nothing is copied.
 * The KV heads of a key row are adjacent in memory, so the kernels take
 * groups of 16 key rows and, within a group, every head of the item: the
 * cache is read in address order, which the prefetchers follow. */
#include "attention/cpu/tile.h"
#include "attention/cpu/simd.h"

/* Into L2: head h of rows [j, j + 16) of pf (of pfn), one 64-byte line at a
 * time. The kernels spread these over their compute, so that the stream
 * that comes next (V while scoring, the next tile's K while summing V) is
 * on its way without a burst of requests that would stall the loads. */
static inline void prefetch_rows(const void *const *pf, int64_t pfn, int64_t j, int h, size_t hs) {
    int64_t n = pfn - j < 16 ? pfn - j : 16;
    for (int64_t t = 0; t < n; t++)
        for (size_t b = 0; b < hs; b += 64) __builtin_prefetch((const char *)pf[j + t] + (size_t)h * hs + b, 0, 2);
}

#if defined(__AVX512F__)

SR_ATTN_INLINE __m512 ld16(const void *row, int dt, int c) {
    if (dt == SR_DT_F32) return _mm512_loadu_ps((const float *)row + c);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c));
    if (dt == SR_DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Lane k of the result = sum of the lanes of a[k]. */
SR_ATTN_INLINE __m512 reduce16(const __m512 a[16]) {
    __m512 s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; i++)
        s1[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                              _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(s1[2 * i]), y = _mm512_castps_pd(s1[2 * i + 1]);
        s2[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++)
        s3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* rb rows x 16/rb keys: 16 dot products in 16 accumulators, reduced
 * together; each K vector is converted once for all rb rows. */
SR_ATTN_INLINE void scores_block(int rb, int dt, int d, const float *q, const void *const *kr, size_t off,
                                 float *s) {
    const int kb = 16 / rb;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
        __m512 kv[16];
#pragma GCC unroll 16
        for (int t = 0; t < kb; t++) kv[t] = ld16((const char *)kr[t] + off, dt, c);
#pragma GCC unroll 4
        for (int r = 0; r < rb; r++) {
            __m512 qv = _mm512_load_ps(q + r * d + c);
#pragma GCC unroll 16
            for (int t = 0; t < kb; t++) acc[r * kb + t] = _mm512_fmadd_ps(qv, kv[t], acc[r * kb + t]);
        }
    }
    __m512 sc = reduce16(acc);
    /* lanes r*kb .. r*kb+kb-1 belong to row r */
#pragma GCC unroll 4
    for (int r = 0; r < rb; r++)
        _mm512_mask_storeu_ps(s + r * (SR_ATTN_BK - kb), (__mmask16)(((1u << kb) - 1u) << (r * kb)), sc);
}

SR_ATTN_INLINE void scores_dt(int dt, int d, const float *q, int rows, int nh, const void *const *kr,
                              size_t hs, int64_t kn, float *s, const void *const *pf, int64_t pfn) {
    for (int64_t j = 0; j < kn; j += 16)
        for (int h = 0; h < nh; h++) {
            prefetch_rows(pf, pfn, j, h, hs);
            const float *qh = q + (size_t)h * rows * d;
            const void *const *kj = kr + j;
            float *sh = s + (size_t)h * rows * SR_ATTN_BK + j;
            size_t off = (size_t)h * hs;
            int r = 0;
            for (; r + 4 <= rows; r += 4)
                for (int t = 0; t < 16; t += 4) scores_block(4, dt, d, qh + r * d, kj + t, off, sh + r * SR_ATTN_BK + t);
            if (rows - r >= 2) {
                for (int t = 0; t < 16; t += 8) scores_block(2, dt, d, qh + r * d, kj + t, off, sh + r * SR_ATTN_BK + t);
                r += 2;
            }
            if (r < rows) scores_block(1, dt, d, qh + r * d, kj, off, sh + r * SR_ATTN_BK);
        }
}

void sr_attn__narrow_scores(int dt, int d, const float *q, int rows, int nh, const void *const *kr, size_t hs,
                            int64_t kn, float *s, const void *const *pf, int64_t pfn) {
    if (dt == SR_DT_F16)
        scores_dt(SR_DT_F16, d, q, rows, nh, kr, hs, kn, s, pf, pfn);
    else if (dt == SR_DT_BF16)
        scores_dt(SR_DT_BF16, d, q, rows, nh, kr, hs, kn, s, pf, pfn);
    else
        scores_dt(SR_DT_F32, d, q, rows, nh, kr, hs, kn, s, pf, pfn);
}

/* o[rb rows, 16 nv columns] += P V over kn keys. */
SR_ATTN_INLINE void pv_block(int rb, int nv, int dt, float *o, int d, const float *p, const void *const *vr,
                             size_t off, int64_t kn, int c0) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_loadu_ps(o + r * d + c0 + 16 * v);
    for (int64_t j = 0; j < kn; j++) {
        __m512 vv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) vv[v] = ld16((const char *)vr[j] + off, dt, c0 + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < rb; r++) {
            __m512 pb = _mm512_set1_ps(p[r * SR_ATTN_BK + j]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(pb, vv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(o + r * d + c0 + 16 * v, acc[r][v]);
}

SR_ATTN_INLINE void pv_rows(int rb, int dt, float *o, int d, const float *p, const void *const *vr, size_t off,
                            int64_t kn) {
    int nvec = d / 16, v0 = 0;
    for (; v0 + 4 <= nvec; v0 += 4) pv_block(rb, 4, dt, o, d, p, vr, off, kn, 16 * v0);
    switch (nvec - v0) {
    case 3: pv_block(rb, 3, dt, o, d, p, vr, off, kn, 16 * v0); break;
    case 2: pv_block(rb, 2, dt, o, d, p, vr, off, kn, 16 * v0); break;
    case 1: pv_block(rb, 1, dt, o, d, p, vr, off, kn, 16 * v0); break;
    default: break;
    }
}

/* The rows of one head against kn <= 16 keys. */
SR_ATTN_INLINE void pv_head(int dt, float *o, int d, int rows, const float *p, const void *const *vr, size_t off,
                            int64_t kn) {
    /* row blocks of at most 6, as even as possible */
    int nb = (rows + 5) / 6;
    for (int r = 0; r < rows;) {
        int rb = (rows - r + nb - 1) / nb;
        nb--;
        float *ob = o + r * d;
        const float *pb = p + r * SR_ATTN_BK;
        switch (rb) {
        case 6: pv_rows(6, dt, ob, d, pb, vr, off, kn); break;
        case 5: pv_rows(5, dt, ob, d, pb, vr, off, kn); break;
        case 4: pv_rows(4, dt, ob, d, pb, vr, off, kn); break;
        case 3: pv_rows(3, dt, ob, d, pb, vr, off, kn); break;
        case 2: pv_rows(2, dt, ob, d, pb, vr, off, kn); break;
        default: pv_rows(1, dt, ob, d, pb, vr, off, kn); break;
        }
        r += rb;
    }
}

SR_ATTN_INLINE void pv_dt(int dt, float *o, int d, int rows, int nh, const float *p, const void *const *vr,
                          size_t hs, int64_t kn, const void *const *pf, int64_t pfn) {
    for (int64_t j = 0; j < kn; j += 16) {
        int64_t n = kn - j < 16 ? kn - j : 16;
        for (int h = 0; h < nh; h++) {
            prefetch_rows(pf, pfn, j, h, hs);
            pv_head(dt, o + (size_t)h * rows * d, d, rows, p + (size_t)h * rows * SR_ATTN_BK + j, vr + j,
                    (size_t)h * hs, n);
        }
    }
}

void sr_attn__narrow_pv(int dt, int d, float *o, int rows, int nh, const float *p, const void *const *vr, size_t hs,
                        int64_t kn, const void *const *pf, int64_t pfn) {
    if (dt == SR_DT_F16)
        pv_dt(SR_DT_F16, o, d, rows, nh, p, vr, hs, kn, pf, pfn);
    else if (dt == SR_DT_BF16)
        pv_dt(SR_DT_BF16, o, d, rows, nh, p, vr, hs, kn, pf, pfn);
    else
        pv_dt(SR_DT_F32, o, d, rows, nh, p, vr, hs, kn, pf, pfn);
}

#else

static float ld1(const void *row, int dt, int c) {
    if (dt == SR_DT_F32) return ((const float *)row)[c];
    if (dt == SR_DT_F16) return sr_f16_to_f32(((const uint16_t *)row)[c]);
    return sr_bf16_to_f32(((const uint16_t *)row)[c]);
}

void sr_attn__narrow_scores(int dt, int d, const float *q, int rows, int nh, const void *const *kr, size_t hs,
                            int64_t kn, float *s, const void *const *pf, int64_t pfn) {
    for (int64_t j = 0; j < pfn; j += 16)
        for (int h = 0; h < nh; h++) prefetch_rows(pf, pfn, j, h, hs);
    for (int h = 0; h < nh; h++)
        for (int r = 0; r < rows; r++)
            for (int64_t j = 0; j < kn; j++) {
                const char *k = (const char *)kr[j] + (size_t)h * hs;
                const float *qr = q + ((size_t)h * rows + r) * d;
                float acc = 0.0f;
                for (int c = 0; c < d; c++) acc += qr[c] * ld1(k, dt, c);
                s[((size_t)h * rows + r) * SR_ATTN_BK + j] = acc;
            }
}

void sr_attn__narrow_pv(int dt, int d, float *o, int rows, int nh, const float *p, const void *const *vr, size_t hs,
                        int64_t kn, const void *const *pf, int64_t pfn) {
    for (int64_t j = 0; j < pfn; j += 16)
        for (int h = 0; h < nh; h++) prefetch_rows(pf, pfn, j, h, hs);
    for (int64_t j = 0; j < kn; j++)
        for (int h = 0; h < nh; h++)
            for (int r = 0; r < rows; r++) {
                const char *v = (const char *)vr[j] + (size_t)h * hs;
                float pj = p[((size_t)h * rows + r) * SR_ATTN_BK + j];
                float *orow = o + ((size_t)h * rows + r) * d;
                for (int c = 0; c < d; c++) orow[c] += pj * ld1(v, dt, c);
            }
}

#endif
