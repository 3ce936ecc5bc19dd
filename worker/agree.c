/* agree: an allgather of every rank's status (see agree.h). */
#include "worker/agree.h"

#include "base/status.h"
#include "worker/wire.h"

int sr_agree(sr_tp *tp, int rc, int32_t *all, const char *what) {
    int32_t mine = rc;
    int rc2 = sr_tp_allgather(tp, &mine, sizeof mine, all);
    if (rc2 != SR_OK) return rc != SR_OK ? rc : rc2;
    for (int p = 0; rc == SR_OK && p < sr_tp_size(tp); p++) {
        int status = SR_OK;
        if ((rc = sr_wire_status(all[p], p, what, &status)) == SR_OK && status != SR_OK)
            rc = sr_error_set(status, "%s: rank %d failed (%s)", what, p, sr_strerror(status));
    }
    return rc;
}
