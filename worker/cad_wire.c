/* cad_wire: checks of the attention servers' commands (see cad_wire.h).
 * Pure: no transport, so that a fuzz target can link it alone. */
#include "worker/cad_wire.h"

#include <string.h>

#include "attention/attention.h"
#include "base/status.h"
#include "worker/wire.h"

void sr_cad_wire_cmd_encode(int64_t out[SR_CAD_WIRE_CMD_WORDS], const sr_cad_cmd *c) {
    memset(out, 0, sizeof(int64_t) * SR_CAD_WIRE_CMD_WORDS);
    out[0] = c->op;
    if (c->op == SR_CAD_OP_PREFILL) {
        int64_t w[] = {c->n_ctx, c->workers, c->n_layer, c->n_head, c->n_head_kv, c->head_dim, c->kv_dtype,
                       c->kv_block, c->chunk, c->max_step, c->overlap};
        memcpy(out + 1, w, sizeof w);
    } else if (c->op == SR_CAD_OP_STEP) {
        out[1] = c->nq;
        out[2] = c->pos;
    } else if (c->op == SR_CAD_OP_LAYER) {
        out[1] = c->layer;
    }
    out[SR_CAD_WIRE_CMD_WORDS - 1] = (int64_t)c->ctx;
}

static const char *const prefill_names[] = {"context tokens", "workers", "layers", "query heads", "kv heads",
                                            "head dim", "kv type", "kv block", "chunk", "max step", "overlap"};

static int field(const int64_t *in, int i, int64_t lo, int64_t hi, int64_t *v) {
    if (in[i] < lo || in[i] > hi)
        return sr_error_set(SR_EFORMAT, "cad prefill command: %s %lld, allowed %lld..%lld", prefill_names[i - 1],
                            (long long)in[i], (long long)lo, (long long)hi);
    *v = in[i];
    return SR_OK;
}

static int decode_prefill(const int64_t *in, int workers, sr_cad_cmd *c) {
    int64_t v[11];
    const int64_t lo[11] = {1, workers, 1, 1, 1, 1, SR_DT_F32, 1, 1, 1, 0};
    const int64_t hi[11] = {SR_WIRE_MAX_POS, workers, SR_CAD_WIRE_MAX_LAYERS, SR_CAD_WIRE_MAX_HEADS,
                            SR_CAD_WIRE_MAX_HEADS, SR_CAD_WIRE_MAX_HEAD_DIM, SR_DT_BF16, SR_CAD_WIRE_MAX_BLOCK,
                            SR_WIRE_MAX_POS, SR_CAD_WIRE_MAX_STEP, 1};
    for (int i = 0; i < 11; i++) {
        int rc = field(in, i + 1, lo[i], hi[i], &v[i]);
        if (rc != SR_OK) return rc;
    }
    if (v[3] % v[4])
        return sr_error_set(SR_EFORMAT, "cad prefill command: %lld query heads are not a multiple of %lld kv heads",
                            (long long)v[3], (long long)v[4]);
    /* a step's result: max_step rows of Hq * (d + 1) floats; bounded by the
     * limits above, so the product cannot overflow */
    int64_t bytes = v[9] * v[3] * (v[5] + 1) * 4;
    if (bytes > SR_CAD_WIRE_MAX_MSG)
        return sr_error_set(SR_EFORMAT, "cad prefill command: a step of %lld queries of %lld heads of %lld takes %lld "
                            "bytes, allowed up to %lld", (long long)v[9], (long long)v[3], (long long)v[5],
                            (long long)bytes, (long long)SR_CAD_WIRE_MAX_MSG);
    *c = (sr_cad_cmd){SR_CAD_OP_PREFILL, v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], (int)v[6],
                      v[7], v[8], v[9], (int)v[10], 0, 0, 0, 0};
    return SR_OK;
}

int sr_cad_wire_cmd_decode(const int64_t in[SR_CAD_WIRE_CMD_WORDS], int workers, int64_t n_ctx, int64_t max_step,
                           sr_cad_cmd *out) {
    if (!in || !out) return sr_error_set(SR_EINVAL, "sr_cad_wire_cmd_decode: NULL argument");
    memset(out, 0, sizeof *out);
    int last = 0; /* the last word the op uses */
    switch (in[0]) {
    case SR_CAD_OP_PREFILL: last = 11; break;
    case SR_CAD_OP_STEP: last = 2; break;
    case SR_CAD_OP_LAYER: last = 1; break;
    case SR_CAD_OP_STATS:
    case SR_CAD_OP_DROP:
    case SR_CAD_OP_CLOSE: break;
    default:
        return sr_error_set(SR_EFORMAT, "cad command: op %lld, allowed %d..%d", (long long)in[0], SR_CAD_OP_PREFILL,
                            SR_CAD_OP_DROP);
    }
    for (int i = last + 1; i < SR_CAD_WIRE_CMD_WORDS - 1; i++)
        if (in[i] != 0)
            return sr_error_set(SR_EFORMAT, "cad command: op %lld has word %d = %lld, allowed 0", (long long)in[0], i,
                                (long long)in[i]);
    uint64_t ctx = (uint64_t)in[SR_CAD_WIRE_CMD_WORDS - 1];
    if (in[0] == SR_CAD_OP_PREFILL) {
        int rc = decode_prefill(in, workers, out);
        out->ctx = ctx;
        return rc;
    }
    out->op = (int)in[0];
    out->ctx = ctx;
    if (in[0] == SR_CAD_OP_LAYER) {
        if (in[1] < 0 || in[1] >= SR_CAD_WIRE_MAX_LAYERS)
            return sr_error_set(SR_EFORMAT, "cad layer command: layer %lld, allowed 0..%d", (long long)in[1],
                                SR_CAD_WIRE_MAX_LAYERS - 1);
        out->layer = in[1];
        return SR_OK;
    }
    if (in[0] != SR_CAD_OP_STEP) return SR_OK;
    if (n_ctx < 1) return sr_error_set(SR_ESTATE, "cad step command: this server holds no context");
    if (in[1] < 1 || in[1] > max_step)
        return sr_error_set(SR_EFORMAT, "cad step command: nq %lld, allowed 1..%lld", (long long)in[1],
                            (long long)max_step);
    if (in[2] < n_ctx || in[2] > SR_WIRE_MAX_POS - in[1])
        return sr_error_set(SR_EFORMAT, "cad step command: position %lld, allowed %lld..%lld", (long long)in[2],
                            (long long)n_ctx, (long long)(SR_WIRE_MAX_POS - in[1]));
    out->nq = in[1];
    out->pos = in[2];
    return SR_OK;
}

/* ---- a server's figures ---- */

void sr_cad_wire_stats_encode(int64_t out[SR_CAD_WIRE_STATS_WORDS], int status, const sr_cad_server_stats *s) {
    memset(out, 0, sizeof(int64_t) * SR_CAD_WIRE_STATS_WORDS);
    out[0] = status;
    if (status != SR_OK) return;
    /* times in nanoseconds */
    int64_t w[] = {(int64_t)(s->busy_s * 1e9), s->kv_tokens, s->kv_bytes, s->bytes_recv, s->bytes_sent, s->tasks,
                   (int64_t)(s->wait_s * 1e9)};
    memcpy(out + 1, w, sizeof w);
}

int sr_cad_wire_stats_decode(const int64_t in[SR_CAD_WIRE_STATS_WORDS], int peer, sr_cad_server_stats *out) {
    static const char *const names[] = {"busy ns", "kv tokens", "kv bytes", "bytes received", "bytes sent", "tasks",
                                        "wait ns"};
    int status = SR_OK, rc = sr_wire_status(in[0], peer, "cad server stats", &status);
    if (rc != SR_OK) return rc;
    if (status != SR_OK)
        return sr_error_set(status, "cad server stats: rank %d failed (%s)", peer, sr_strerror(status));
    for (int i = 1; i < SR_CAD_WIRE_STATS_WORDS; i++)
        if (in[i] < 0)
            return sr_error_set(SR_EFORMAT, "cad server stats: rank %d sent %s %lld, allowed 0 or more", peer,
                                names[i - 1], (long long)in[i]);
    *out = (sr_cad_server_stats){in[1] * 1e-9, in[2], in[3], in[4], in[5], in[6], in[7] * 1e-9};
    return SR_OK;
}
