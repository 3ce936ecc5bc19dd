/* cad_group: a transport over a run of the ranks of another, so that the
 * model workers of a cad job (the first W ranks) run their collectives
 * among themselves while the attention servers (the last K) serve.
 *
 * The group's rank r is the parent's rank first + r. Messages go through
 * the parent's backend; the group's collectives are the point-to-point
 * ones of transport.c, so they never enter a collective of the parent's,
 * which the ranks outside the group would have to join. A group message
 * and a parent message between the same two ranks must not share a tag
 * while both are in flight. */
#ifndef SR_WORKER_CAD_GROUP_H
#define SR_WORKER_CAD_GROUP_H

#include "transport/transport.h"

/* The group of parent's ranks [first, first + count) (a range inside the
 * parent); *out is NULL on a rank outside it. Not collective. Close it with
 * sr_tp_close before the parent. */
int sr_cad_group_open(sr_tp **out, sr_tp *parent, int first, int count);

#endif
