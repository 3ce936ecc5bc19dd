/* Double-precision attention reference: see ref_attention.h. */
#include "tests/unit/ref_attention.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/half.h"
#include "tests/support/rng.h"

static double kv_at(const void *base, int dtype, size_t idx) {
    if (dtype == SR_DT_F32) return ((const float *)base)[idx];
    if (dtype == SR_DT_F16) return sr_f16_to_f32(((const sr_f16 *)base)[idx]);
    return sr_bf16_to_f32(((const sr_bf16 *)base)[idx]);
}

void sr_ref_attn_forward(const sr_attn_desc *d, const float *q, const void *k, const void *v,
                         float *o, float *lse) {
    int64_t Hq = d->n_head_q, Hkv = d->n_head_kv, D = d->head_dim, group = Hq / Hkv;
    double scale = d->scale != 0.0f ? (double)d->scale : 1.0 / sqrt((double)D);
    double *s = malloc((size_t)d->nk * sizeof *s);
    double *acc = malloc((size_t)D * sizeof *acc);
    if (!s || !acc) abort();
    for (int64_t i = 0; i < d->nq; i++) {
        for (int64_t h = 0; h < Hq; h++) {
            const float *qr = q + ((size_t)i * Hq + h) * D;
            float *orow = o + ((size_t)i * Hq + h) * D;
            int64_t hk = h / group;
            double m = -INFINITY;
            int64_t nvis = 0;
            for (int64_t j = 0; j < d->nk; j++) {
                if (d->causal && d->k_pos0 + j > d->q_pos0 + i) break;
                size_t kr = ((size_t)j * Hkv + hk) * D;
                double dot = 0.0;
                for (int64_t c = 0; c < D; c++) dot += (double)qr[c] * kv_at(k, d->kv_dtype, kr + c);
                s[j] = dot * scale;
                if (s[j] > m) m = s[j];
                nvis = j + 1;
            }
            if (nvis == 0) {
                for (int64_t c = 0; c < D; c++) orow[c] = 0.0f;
                lse[i * Hq + h] = -INFINITY;
                continue;
            }
            double l = 0.0;
            for (int64_t c = 0; c < D; c++) acc[c] = 0.0;
            for (int64_t j = 0; j < nvis; j++) {
                double p = exp(s[j] - m);
                size_t vr = ((size_t)j * Hkv + hk) * D;
                l += p;
                for (int64_t c = 0; c < D; c++) acc[c] += p * kv_at(v, d->kv_dtype, vr + c);
            }
            for (int64_t c = 0; c < D; c++) orow[c] = (float)(acc[c] / l);
            lse[i * Hq + h] = (float)(m + log(l));
        }
    }
    free(acc);
    free(s);
}

void sr_ref_attn_fill(float *x, int64_t n, float lo, float hi, uint64_t *state) {
    for (int64_t i = 0; i < n; i++) x[i] = sr_test_rng_float(state, lo, hi);
}

void sr_ref_attn_store(const float *x, int64_t n, int dtype, void *out) {
    for (int64_t i = 0; i < n; i++) {
        if (dtype == SR_DT_F32)
            ((float *)out)[i] = x[i];
        else if (dtype == SR_DT_F16)
            ((sr_f16 *)out)[i] = sr_f32_to_f16(x[i]);
        else
            ((sr_bf16 *)out)[i] = sr_f32_to_bf16(x[i]);
    }
}

int64_t sr_ref_attn_compare(const char *what, const float *got, const float *want, int64_t n,
                            double atol, double rtol) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        int ok;
        if (isinf(w) || isinf(g))
            ok = g == w;
        else
            ok = fabs(g - w) <= atol + rtol * fabs(w); /* false for NaN */
        if (!ok) {
            if (bad < 5) fprintf(stderr, "# %s[%lld]: got %.9g, want %.9g\n", what, (long long)i, g, w);
            bad++;
        }
    }
    if (bad > 5) fprintf(stderr, "# %s: %lld mismatches in all\n", what, (long long)bad);
    return bad;
}
