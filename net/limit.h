/* limit: how many connections a client port (gRPC, HTTP) holds at once, and
 * the log of those refused over it. A flood of connections would flood the
 * log too, so a refusal is logged at most once a second per port; the next
 * line says how many went unlogged in between. On the loop's thread only. */
#ifndef SR_NET_LIMIT_H
#define SR_NET_LIMIT_H

#include <stdint.h>

typedef struct {
    int max, n;        /* the limit, connections held */
    double logged;     /* sr_now() of the last refusal logged */
    int64_t unlogged;  /* refusals since */
} sr_limit;

void sr_limit_init(sr_limit *l, int max);
/* A new connection from peer: 1 if it may stay (it is counted; sr_limit_give
 * once it closes), 0 if it is over the limit (the refusal is logged, naming
 * what server and the peer). */
int sr_limit_take(sr_limit *l, const char *what, const char *peer);
void sr_limit_give(sr_limit *l);

#endif
