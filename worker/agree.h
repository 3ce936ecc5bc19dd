/* agree: whether every rank of a transport succeeded at a step.
 *
 * A collective function that fails on one rank must not return where the
 * others go on to the next collective: they would wait for it forever. Each
 * rank instead carries its status to a point where the ranks agree on it;
 * a failure anywhere then fails every rank, before anyone enters the next
 * collective. */
#ifndef SR_WORKER_AGREE_H
#define SR_WORKER_AGREE_H

#include <stdint.h>

#include "transport/transport.h"

/* Collective: rc if it is a failure (its message kept), else the first
 * failure of another rank (as "what: rank P failed"), else SR_OK. all is
 * scratch of sr_tp_size(tp) words, so that agreeing allocates nothing. */
int sr_agree(sr_tp *tp, int rc, int32_t *all, const char *what);

#endif
