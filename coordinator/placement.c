/* placement: the workers of a new context (see placement.h). */
#include "coordinator/placement.h"

#include <stdlib.h>

#include "base/status.h"

static int by_index(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int sr_coord_place(const int *cand, int n, const int64_t *load, int want, int *out) {
    if (n < 0 || (n > 0 && (!cand || !load || !out)))
        return sr_error_set(SR_EINVAL, "sr_coord_place: %d candidates (allowed 0..) or a NULL list", n);
    int k = want <= 0 || want > n ? n : want;
    int *left = malloc(sizeof *left * (size_t)(n ? n : 1));
    if (!left) return sr_error_set(SR_ENOMEM, "out of memory placing a context");
    for (int i = 0; i < n; i++) left[i] = cand[i];
    /* k picks of the least loaded: a handful of workers, so O(n k) is fine */
    for (int j = 0; j < k; j++) {
        int best = j;
        for (int i = j + 1; i < n; i++)
            if (load[left[i]] < load[left[best]] || (load[left[i]] == load[left[best]] && left[i] < left[best])) best = i;
        int t = left[j];
        left[j] = left[best];
        left[best] = t;
        out[j] = left[j];
    }
    free(left);
    qsort(out, (size_t)k, sizeof *out, by_index);
    return k;
}
