/* limit: connections at once on a client port (see limit.h). */
#include "net/limit.h"

#include "base/clock.h"
#include "base/log.h"

void sr_limit_init(sr_limit *l, int max) { *l = (sr_limit){.max = max, .logged = -1}; }

int sr_limit_take(sr_limit *l, const char *what, const char *peer) {
    if (l->n < l->max) {
        l->n++;
        return 1;
    }
    double now = sr_now();
    if (l->logged >= 0 && now - l->logged < 1) {
        l->unlogged++;
        return 0;
    }
    if (l->unlogged)
        SR_WARN("%s: refusing %s: %d connections at once is the limit (--max-connections); %lld more refused "
                "unlogged in the last %.0f s", what, peer, l->max, (long long)l->unlogged, now - l->logged);
    else
        SR_WARN("%s: refusing %s: %d connections at once is the limit (--max-connections)", what, peer, l->max);
    l->logged = now;
    l->unlogged = 0;
    return 0;
}

void sr_limit_give(sr_limit *l) { l->n--; }
