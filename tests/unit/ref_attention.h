/* Plain double-precision attention reference for tests: the definition of
 * attention/attention.h written as directly as possible, no tiling, no
 * online softmax. Support code linked into every unit test. */
#ifndef SR_TESTS_REF_ATTENTION_H
#define SR_TESTS_REF_ATTENTION_H

#include <stdint.h>

#include "attention/attention.h"

/* O [nq, Hq, d] and LSE [nq, Hq] of q against dense k, v ([nk, Hkv, d] of
 * d->kv_dtype), computed in double and rounded to float at the end. Rows
 * that see no key get O = 0, LSE = -INFINITY. */
void sr_ref_attn_forward(const sr_attn_desc *d, const float *q, const void *k, const void *v,
                         float *o, float *lse);

/* Uniform floats between lo and hi from the stream *state
 * (tests/support/rng.h; any seed). */
void sr_ref_attn_fill(float *x, int64_t n, float lo, float hi, uint64_t *state);

/* Writes x[0..n) as dtype (SR_DT_*) into out (4 or 2 bytes per element),
 * rounding to nearest even like base/half.h. */
void sr_ref_attn_store(const float *x, int64_t n, int dtype, void *out);

/* Counts elements with |got - want| > atol + rtol * |want| (infinities
 * must match exactly, NaN in got always counts) and prints the first few
 * with `what` and their index. */
int64_t sr_ref_attn_compare(const char *what, const float *got, const float *want, int64_t n,
                            double atol, double rtol);

#endif
