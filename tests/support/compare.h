/* Comparisons of model outputs shared by the tests: the greedy token of a
 * row of logits, and the largest difference of two rows relative to the
 * reference's scale (NaN counts as infinitely far). Header only. */
#ifndef SR_TESTS_SUPPORT_COMPARE_H
#define SR_TESTS_SUPPORT_COMPARE_H

#include <math.h>
#include <stdint.h>

static inline int32_t sr_test_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* max |a - b| / max |b| (1 when b is all zero) */
static inline double sr_test_rel_err(const float *a, const float *b, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return e / (s > 0 ? s : 1);
}

#endif
