/* group: a transport over an ordered list of the ranks of another (its
 * parent), so that a subset of a job's ranks runs its collectives among
 * themselves: the model workers of a cad job while the attention servers
 * serve, or the workers of one context in starringd while the others serve
 * other contexts.
 *
 * The group's rank r is the parent's rank ranks[r]. Messages go through
 * the parent's backend; the group's collectives are the point-to-point
 * ones of transport.c, so they never enter a collective of the parent's,
 * which the ranks outside the group would have to join. A group message
 * and a parent message (or another group's) between the same two ranks
 * must not share a tag while both are in flight.
 *
 * Bytes: a group's messages count in the group's sr_tp_bytes and in the
 * parent's too, so that the parent's figure is every byte of the data
 * plane once (a reader adds no group's figure to it). */
#ifndef SR_TRANSPORT_GROUP_H
#define SR_TRANSPORT_GROUP_H

#include "transport/transport.h"

/* The group of the n parent ranks ranks[0..n-1] (distinct, each inside the
 * parent; the list is copied); *out is NULL on a rank outside it. Not
 * collective. Close it with sr_tp_close before the parent. */
int sr_tp_group_open(sr_tp **out, sr_tp *parent, const int *ranks, int n);

/* The group of the parent's ranks [first, first + count). */
int sr_tp_group_range(sr_tp **out, sr_tp *parent, int first, int count);

#endif
