/* The narrow shape's kernels (decode: a few query rows per KV head). K and
 * V are read once, converted to fp32 in registers as they are used: a
 * decode step is bound by streaming the KV cache, so nothing is copied.
 * The KV heads of a key row are adjacent in memory, so the kernels take
 * groups of 16 key rows and, within a group, every head of the item: the
 * cache is read in address order, which the prefetchers follow.
 * One body serves AVX-512 and AVX2 (VL lanes a vector); a machine without
 * either has the plain C loops at the end. */
#include "attention/cpu/tile.h"
#include "attention/cpu/simd.h"

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__) && !defined(__AVX512F__)
#include <immintrin.h>
#endif

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

#define VL 16
#define V(op) _mm512_##op
typedef __m512 vf;
#define PV_ROWS 6 /* rows x PV_NV accumulators of pv_block: 24 of the 32 registers */
#define PV_NV 4

/* Lanes c .. c + VL - 1 of a K or V row of type dt, as fp32. */
SR_ATTN_INLINE vf vld(const void *row, int dt, int c) {
    if (dt == SR_DT_F32) return _mm512_loadu_ps((const float *)row + c);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c));
    if (dt == SR_DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Lane k of the result = sum of the lanes of a[k]. */
SR_ATTN_INLINE vf vreduce(const vf a[VL]) {
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

/* Lanes r*kb .. r*kb+kb-1 of v to s + r * SR_ATTN_BK, for each of rb rows. */
SR_ATTN_INLINE void store_rows(int rb, int kb, float *s, vf v) {
#pragma GCC unroll 4
    for (int r = 0; r < rb; r++)
        _mm512_mask_storeu_ps(s + r * (SR_ATTN_BK - kb), (__mmask16)(((1u << kb) - 1u) << (r * kb)), v);
}

#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)

#define VL 8
#define V(op) _mm256_##op
typedef __m256 vf;
/* 4 x 2 accumulators, 2 V vectors and a broadcast: 11 of the 16 registers */
#define PV_ROWS 4
#define PV_NV 2

/* Lane k of the result = sum of the lanes of a[k]. */
SR_ATTN_INLINE vf vreduce(const vf a[VL]) {
    __m256 h[4], g[2];
    for (int i = 0; i < 4; i++) h[i] = _mm256_hadd_ps(a[2 * i], a[2 * i + 1]);
    for (int i = 0; i < 2; i++) g[i] = _mm256_hadd_ps(h[2 * i], h[2 * i + 1]);
    /* g[i]: the low 128 bits hold a[4i..4i+3]'s low-half sums, the high
     * bits their high-half sums */
    return _mm256_add_ps(_mm256_permute2f128_ps(g[0], g[1], 0x20), _mm256_permute2f128_ps(g[0], g[1], 0x31));
}

/* Lanes r*kb .. r*kb+kb-1 of v to s + r * SR_ATTN_BK, for each of rb rows:
 * by halves, since a masked store is slow on AMD. */
SR_ATTN_INLINE void store_rows(int rb, int kb, float *s, vf v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    if (kb == 8) {
        _mm256_storeu_ps(s, v);
    } else if (kb == 4) {
        _mm_storeu_ps(s, lo);
        _mm_storeu_ps(s + SR_ATTN_BK, hi);
    } else {
        _mm_storel_pi((__m64 *)s, lo);
        _mm_storeh_pi((__m64 *)(s + SR_ATTN_BK), lo);
        _mm_storel_pi((__m64 *)(s + 2 * SR_ATTN_BK), hi);
        _mm_storeh_pi((__m64 *)(s + 3 * SR_ATTN_BK), hi);
    }
    (void)rb;
}

SR_ATTN_INLINE vf vld(const void *row, int dt, int c) {
    if (dt == SR_DT_F32) return _mm256_loadu_ps((const float *)row + c);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
    if (dt == SR_DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#endif

#if defined(VL)

/* rb rows x VL/rb keys: VL dot products in VL accumulators, reduced
 * together; each K vector is converted once for all rb rows. */
SR_ATTN_INLINE void scores_block(int rb, int dt, int d, const float *q, const void *const *kr, size_t off,
                                 float *s) {
    const int kb = VL / rb;
    vf acc[VL];
#pragma GCC unroll 16
    for (int t = 0; t < VL; t++) acc[t] = V(setzero_ps)();
    for (int c = 0; c < d; c += VL) {
        vf kv[VL];
#pragma GCC unroll 16
        for (int t = 0; t < kb; t++) kv[t] = vld((const char *)kr[t] + off, dt, c);
#pragma GCC unroll 4
        for (int r = 0; r < rb; r++) {
            vf qv = V(loadu_ps)(q + r * d + c);
#pragma GCC unroll 16
            for (int t = 0; t < kb; t++) acc[r * kb + t] = V(fmadd_ps)(qv, kv[t], acc[r * kb + t]);
        }
    }
    store_rows(rb, kb, s, vreduce(acc));
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
                for (int t = 0; t < 16; t += VL / 4)
                    scores_block(4, dt, d, qh + r * d, kj + t, off, sh + r * SR_ATTN_BK + t);
            if (rows - r >= 2) {
                for (int t = 0; t < 16; t += VL / 2)
                    scores_block(2, dt, d, qh + r * d, kj + t, off, sh + r * SR_ATTN_BK + t);
                r += 2;
            }
            if (r < rows)
                for (int t = 0; t < 16; t += VL) scores_block(1, dt, d, qh + r * d, kj + t, off, sh + r * SR_ATTN_BK + t);
        }
}

/* o[rb rows, VL nv columns] += P V over kn keys. */
SR_ATTN_INLINE void pv_block(int rb, int nv, int dt, float *o, int d, const float *p, const void *const *vr,
                             size_t off, int64_t kn, int c0) {
    vf acc[PV_ROWS][PV_NV];
#pragma GCC unroll 6
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = V(loadu_ps)(o + r * d + c0 + VL * v);
    for (int64_t j = 0; j < kn; j++) {
        vf vv[PV_NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) vv[v] = vld((const char *)vr[j] + off, dt, c0 + VL * v);
#pragma GCC unroll 6
        for (int r = 0; r < rb; r++) {
            vf pb = V(set1_ps)(p[r * SR_ATTN_BK + j]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[r][v] = V(fmadd_ps)(pb, vv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) V(storeu_ps)(o + r * d + c0 + VL * v, acc[r][v]);
}

SR_ATTN_INLINE void pv_rows(int rb, int dt, float *o, int d, const float *p, const void *const *vr, size_t off,
                            int64_t kn) {
    int nvec = d / VL, v0 = 0;
    for (; v0 + PV_NV <= nvec; v0 += PV_NV) pv_block(rb, PV_NV, dt, o, d, p, vr, off, kn, VL * v0);
    for (; v0 + 2 <= nvec; v0 += 2) pv_block(rb, 2, dt, o, d, p, vr, off, kn, VL * v0);
    if (v0 < nvec) pv_block(rb, 1, dt, o, d, p, vr, off, kn, VL * v0);
}

/* The rows of one head against kn <= 16 keys, in blocks of at most
 * PV_ROWS rows, as even as possible. */
SR_ATTN_INLINE void pv_head(int dt, float *o, int d, int rows, const float *p, const void *const *vr, size_t off,
                            int64_t kn) {
    int nb = (rows + PV_ROWS - 1) / PV_ROWS;
    for (int r = 0; r < rows;) {
        int rb = (rows - r + nb - 1) / nb;
        nb--;
        float *ob = o + r * d;
        const float *pb = p + r * SR_ATTN_BK;
        switch (rb) {
#if PV_ROWS > 4
        case 6: pv_rows(6, dt, ob, d, pb, vr, off, kn); break;
        case 5: pv_rows(5, dt, ob, d, pb, vr, off, kn); break;
#endif
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

/* The arguments of both kernels: in is Q (scores) or P (pv), out S or O. */
typedef struct {
    int d, rows, nh;
    const float *in;
    float *out;
    const void *const *kv;
    size_t hs;
    int64_t kn;
    const void *const *pf;
    int64_t pfn;
} narrow_args;

SR_ATTN_INLINE void scores_job(int dt, const narrow_args *a) {
    scores_dt(dt, a->d, a->in, a->rows, a->nh, a->kv, a->hs, a->kn, a->out, a->pf, a->pfn);
}

SR_ATTN_INLINE void pv_job(int dt, const narrow_args *a) {
    pv_dt(dt, a->out, a->d, a->rows, a->nh, a->in, a->kv, a->hs, a->kn, a->pf, a->pfn);
}

/* job with dt a constant, so that each type's loads are inlined branch-free */
SR_ATTN_INLINE void by_type(void (*job)(int, const narrow_args *), int dt, const narrow_args *a) {
    if (dt == SR_DT_F16)
        job(SR_DT_F16, a);
    else if (dt == SR_DT_BF16)
        job(SR_DT_BF16, a);
    else
        job(SR_DT_F32, a);
}

void sr_attn__narrow_scores(int dt, int d, const float *q, int rows, int nh, const void *const *kr, size_t hs,
                            int64_t kn, float *s, const void *const *pf, int64_t pfn) {
    narrow_args a = {d, rows, nh, q, s, kr, hs, kn, pf, pfn};
    by_type(scores_job, dt, &a);
}

void sr_attn__narrow_pv(int dt, int d, float *o, int rows, int nh, const float *p, const void *const *vr, size_t hs,
                        int64_t kn, const void *const *pf, int64_t pfn) {
    narrow_args a = {d, rows, nh, p, o, vr, hs, kn, pf, pfn};
    by_type(pv_job, dt, &a);
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
