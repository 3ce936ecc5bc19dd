/* placement: the workers a new context goes on. A context spans a group of
 * workers, not every worker, so that a lost worker loses only the contexts
 * placed on it; the group is chosen among the workers that are up, the
 * least loaded first. */
#ifndef SR_COORDINATOR_PLACEMENT_H
#define SR_COORDINATOR_PLACEMENT_H

#include <stdint.h>

/* Chooses min(want, n) of the n candidate workers cand[] (want <= 0: all),
 * those with the least load[worker] first (ties to the lower index), and
 * writes them to out in increasing index order (the first is the context's
 * query worker). Returns how many, or a negative SR_E* code. */
int sr_coord_place(const int *cand, int n, const int64_t *load, int want, int *out);

#endif
