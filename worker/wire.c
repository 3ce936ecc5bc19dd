/* wire: checks of the messages workers exchange (see wire.h). Pure: no
 * transport, so that the fuzz target links this file alone. */
#include "worker/wire.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

int sr_wire_status(int64_t word, int peer, const char *what, int *status) {
    if (word > SR_OK || word < SR_ESTATE)
        return sr_error_set(SR_EFORMAT, "%s: rank %d sent status %lld, which is not a status code (%d..0)", what,
                            peer, (long long)word, SR_ESTATE);
    *status = (int)word;
    return SR_OK;
}

/* ---- ring entry ---- */

void sr_wire_ring_encode(int64_t out[SR_WIRE_RING_WORDS], int status, const sr_span *spans, int n_spans) {
    memset(out, 0, sizeof(int64_t) * SR_WIRE_RING_WORDS);
    out[0] = status;
    out[1] = n_spans;
    for (int i = 0; i < n_spans && i < SR_RING_MAX_SPANS; i++) {
        out[2 + 2 * i] = spans[i].pos0;
        out[3 + 2 * i] = spans[i].len;
    }
}

static int ring_entry(const int64_t *e, int peer, sr_span *spans, int *n_spans, int64_t *tokens) {
    int status = SR_OK, rc = sr_wire_status(e[0], peer, "ring span table", &status);
    if (rc != SR_OK) return rc;
    if (status != SR_OK) return sr_error_set(status, "ring span table: rank %d failed (%s)", peer, sr_strerror(status));
    if (e[1] < 0 || e[1] > SR_RING_MAX_SPANS)
        return sr_error_set(SR_EFORMAT, "ring span table: rank %d sent n_spans %lld, allowed 0..%d", peer,
                            (long long)e[1], SR_RING_MAX_SPANS);
    *n_spans = (int)e[1];
    *tokens = 0;
    for (int i = 0; i < *n_spans; i++) {
        int64_t pos0 = e[2 + 2 * i], len = e[3 + 2 * i];
        if (pos0 < 0 || pos0 > SR_WIRE_MAX_POS)
            return sr_error_set(SR_EFORMAT, "ring span table: rank %d span %d: pos0 %lld, allowed 0..%lld", peer, i,
                                (long long)pos0, (long long)SR_WIRE_MAX_POS);
        if (len < 0 || len > SR_WIRE_MAX_POS - pos0)
            return sr_error_set(SR_EFORMAT, "ring span table: rank %d span %d at %lld: len %lld, allowed 0..%lld",
                                peer, i, (long long)pos0, (long long)len, (long long)(SR_WIRE_MAX_POS - pos0));
        spans[i] = (sr_span){pos0, len};
        *tokens += len; /* at most SR_RING_MAX_SPANS * 2^40 */
    }
    return SR_OK;
}

typedef struct {
    sr_span s;
    int peer, index;
} owned_span;

static int by_pos(const void *a, const void *b) {
    const owned_span *x = a, *y = b;
    return x->s.pos0 < y->s.pos0 ? -1 : x->s.pos0 > y->s.pos0;
}

int sr_wire_ring_table(const int64_t *all, int world, sr_span *spans, int *n_spans, int64_t *tokens) {
    if (!all || world < 1 || !spans || !n_spans || !tokens)
        return sr_error_set(SR_EINVAL, "ring span table: bad arguments (world %d)", world);
    int64_t total = 0;
    for (int p = 0; p < world; p++) {
        int rc = ring_entry(all + (size_t)p * SR_WIRE_RING_WORDS, p, spans + (size_t)p * SR_RING_MAX_SPANS,
                            &n_spans[p], &tokens[p]);
        if (rc != SR_OK) return rc;
        total += n_spans[p];
    }
    /* disjoint: sorted by start, each non-empty span ends before the next starts */
    owned_span *list = malloc(sizeof *list * (size_t)(total ? total : 1));
    if (!list) return sr_error_set(SR_ENOMEM, "ring span table: out of memory for %lld spans", (long long)total);
    int64_t k = 0;
    for (int p = 0; p < world; p++)
        for (int i = 0; i < n_spans[p]; i++)
            if (spans[(size_t)p * SR_RING_MAX_SPANS + i].len > 0)
                list[k++] = (owned_span){spans[(size_t)p * SR_RING_MAX_SPANS + i], p, i};
    qsort(list, (size_t)k, sizeof *list, by_pos);
    int rc = SR_OK;
    for (int64_t j = 1; j < k && rc == SR_OK; j++) {
        const owned_span *a = &list[j - 1], *b = &list[j];
        if (a->s.pos0 + a->s.len > b->s.pos0)
            rc = sr_error_set(SR_EFORMAT,
                              "ring span table: rank %d span %d [%lld, +%lld) overlaps rank %d span %d [%lld, +%lld)",
                              b->peer, b->index, (long long)b->s.pos0, (long long)b->s.len, a->peer, a->index,
                              (long long)a->s.pos0, (long long)a->s.len);
    }
    free(list);
    return rc;
}

/* ---- step header ---- */

void sr_wire_step_encode(int64_t out[SR_WIRE_STEP_WORDS], int64_t n_new, int status) {
    out[0] = n_new;
    out[1] = status;
}

int sr_wire_step_decode(const int64_t in[SR_WIRE_STEP_WORDS], int64_t max_new, int64_t *n_new, int *status) {
    int rc = sr_wire_status(in[1], 0, "step header", status);
    if (rc != SR_OK) return rc;
    int64_t hi = *status == SR_OK ? max_new : 0;
    if (in[0] < 0 || in[0] > hi)
        return sr_error_set(SR_EFORMAT, "step header: n_new %lld with status %d, allowed 0..%lld", (long long)in[0],
                            *status, (long long)hi);
    *n_new = in[0];
    return SR_OK;
}

/* ---- prefill hello ---- */

static const char *const hello_names[SR_WIRE_HELLO_WORDS] = {
    "status", "context tokens", "context hash", "mode", "block size", "anchor size", "layers",
    "query heads", "kv heads", "head dim", "vocabulary", "kv type", "batch rows",
};

int sr_wire_hello_check(const int64_t *all, int world) {
    if (!all || world < 1) return sr_error_set(SR_EINVAL, "prefill: bad arguments (world %d)", world);
    for (int p = 0; p < world; p++) {
        const int64_t *e = all + (size_t)p * SR_WIRE_HELLO_WORDS;
        int status = SR_OK, rc = sr_wire_status(e[SR_WIRE_HELLO_STATUS], p, "prefill", &status);
        if (rc != SR_OK) return rc;
        if (status != SR_OK) return sr_error_set(status, "prefill: rank %d failed (%s)", p, sr_strerror(status));
        for (int w = SR_WIRE_HELLO_STATUS + 1; w < SR_WIRE_HELLO_WORDS; w++) {
            if (w == SR_WIRE_HELLO_BATCH) {
                if (e[w] < 1 || e[w] > SR_WIRE_MAX_POS)
                    return sr_error_set(SR_EFORMAT, "prefill: rank %d has batch rows %lld, allowed 1..%lld", p,
                                        (long long)e[w], (long long)SR_WIRE_MAX_POS);
            } else if (e[w] != all[w]) {
                return sr_error_set(SR_EFORMAT, "prefill: rank %d has %s %lld, rank 0 has %lld; every rank must "
                                    "pass the same context and options and load the same model", p, hello_names[w],
                                    (long long)e[w], (long long)all[w]);
            }
        }
    }
    return SR_OK;
}
