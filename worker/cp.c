/* cp: ring, star and full prefill, and the phase-2 steps of new tokens
 * (see cp.h). */
#include "worker/cp.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/status.h"
#include "worker/agree.h"
#include "worker/placement.h"
#include "worker/wire.h"

struct sr_cp {
    sr_model *m;
    sr_tp *tp;          /* NULL: a single process in full mode */
    sr_cp_opts o;
    int rank, world;
    sr_star *star;      /* phase 2 (ring and star) */
    sr_cad *cad;        /* cad: the attention servers; tp is then the model workers' group */
    sr_kv_cache gen;    /* query rank: KV of the new tokens, positions n_ctx.. */
    int64_t n_ctx;      /* context tokens */
    int64_t n_new;      /* new tokens fed since the prefill */
    sr_kv_run *runs;    /* this rank's context KV as runs of contiguous positions */
    int64_t n_runs;
    sr_star_run *qruns; /* [n_runs + 1] one layer's runs for sr_star_query */
    int64_t max_step;   /* the most new tokens a step may carry: the query rank's batch */
    int32_t *agree;     /* [world] scratch of sr_agree */
    int64_t *hello;     /* [world][SR_WIRE_HELLO_WORDS] scratch of the prefill's check */
    int prefilled;
    int aborted;        /* query rank: a failed step has already ended the query */
    int64_t b_done, b_total; /* prefill chunks passed and in all (the most of any rank) */
    int b_stop;              /* the ranks agreed on a failure: no more chunks */
    int64_t b_tokens;        /* the context being prefilled */
    sr_cp_stats st;
};

static const char *const mode_names[] = {"full", "ring", "star", "cad"};

const char *sr_cp_mode_name(int mode) {
    return mode >= SR_CP_FULL && mode <= SR_CP_CAD ? mode_names[mode] : "?";
}

int sr_cp_mode_parse(const char *name) {
    for (int i = SR_CP_FULL; i <= SR_CP_CAD; i++)
        if (name && strcmp(name, mode_names[i]) == 0) return i;
    return -1;
}

sr_model *sr_cp_model(const sr_cp *cp) { return cp->m; }
sr_cad *sr_cp_cad(const sr_cp *cp) { return cp->cad; }
int sr_cp_rank(const sr_cp *cp) { return cp->rank; }
int sr_cp_world(const sr_cp *cp) { return cp->world; }
int sr_cp_is_query_rank(const sr_cp *cp) { return cp->rank == SR_CP_QUERY_RANK; }

int64_t sr_cp_batch_rows(const sr_cp_opts *opts, int64_t n, int world) {
    if (opts && opts->mode == SR_CP_CAD) world -= opts->attn_servers; /* the model workers hold the tokens */
    if (!opts || (opts->mode != SR_CP_RING && opts->mode != SR_CP_CAD) || world < 1) return 0;
    int64_t most = 0;
    for (int p = 0; p < world; p++) {
        sr_span sp[2];
        if (sr_place_zigzag(n, world, p, sp) == SR_OK && sr_span_total(sp, 2) > most) most = sr_span_total(sp, 2);
    }
    return most;
}

int sr_cp_open(sr_cp **out, sr_model *m, sr_tp *tp, const sr_cp_opts *opts) {
    if (!out || !m || !opts) return sr_error_set(SR_EINVAL, "sr_cp_open: NULL argument");
    *out = NULL;
    if (opts->mode < SR_CP_FULL || opts->mode > SR_CP_CAD)
        return sr_error_set(SR_EINVAL, "context parallel: unknown mode %d", opts->mode);
    if (opts->mode != SR_CP_FULL && !tp)
        return sr_error_set(SR_EINVAL, "context parallel: mode %s needs a transport", sr_cp_mode_name(opts->mode));
    if (opts->mode == SR_CP_CAD && opts->attn_servers < 1)
        return sr_error_set(SR_EINVAL, "context parallel: mode cad needs attention servers (attn_servers %d; "
                            "starring-run --attn-servers K)", opts->attn_servers);
    if (opts->block_size < 0 || opts->anchor_size < 0 || opts->tag < 0 || opts->tag + 1 > SR_TP_TAG_MAX)
        return sr_error_set(SR_EINVAL, "context parallel: block size %lld, anchor %lld and tag %d must be >= 0",
                            (long long)opts->block_size, (long long)opts->anchor_size, opts->tag);
    sr_cp *cp = calloc(1, sizeof *cp);
    if (!cp) return sr_error_set(SR_ENOMEM, "context parallel: out of memory");
    cp->m = m;
    cp->tp = tp;
    cp->o = *opts;
    /* a server rank or a bad count fails here, before any collective */
    int rc = opts->mode == SR_CP_CAD ? sr_cad_open(&cp->cad, tp, opts->attn_servers, opts->tag) : SR_OK;
    if (rc != SR_OK) {
        free(cp);
        return rc;
    }
    if (cp->cad) cp->tp = tp = sr_cad_group(cp->cad);
    cp->rank = tp ? sr_tp_rank(tp) : 0;
    cp->world = tp ? sr_tp_size(tp) : 1;
    const sr_kv_cache *kv = &m->kv;
    rc = sr_kv_build(&cp->gen, kv->n_layer, kv->n_head_kv, kv->head_dim, kv->dtype, kv->block_size);
    cp->agree = calloc((size_t)cp->world, sizeof *cp->agree);
    cp->hello = calloc((size_t)cp->world, sizeof *cp->hello * SR_WIRE_HELLO_WORDS);
    if (rc == SR_OK && (!cp->agree || !cp->hello)) rc = sr_error_set(SR_ENOMEM, "context parallel: out of memory");
    if (rc == SR_OK && opts->mode != SR_CP_FULL && opts->mode != SR_CP_CAD) rc = sr_star_init(&cp->star, tp);
    /* every rank opens or none does: one that failed would miss the others'
     * next collective */
    if (tp && cp->agree) rc = sr_agree(tp, rc, cp->agree, "context parallel");
    if (rc != SR_OK) {
        sr_cp_close(cp);
        return rc;
    }
    *out = cp;
    return SR_OK;
}

void sr_cp_close(sr_cp *cp) {
    if (!cp) return;
    sr_star_free(cp->star);
    sr_cad_close(cp->cad);
    sr_kv_free(&cp->gen);
    free(cp->runs);
    free(cp->qruns);
    free(cp->agree);
    free(cp->hello);
    free(cp);
}

/* ------------------------------------------------------------- helpers */

/* Whether every rank got SR_OK; a failure anywhere fails all ranks, so that
 * none waits in a collective the others will not enter. */
static int cp__agree(sr_cp *cp, int rc) {
    return cp->tp ? sr_agree(cp->tp, rc, cp->agree, "context parallel") : rc;
}

/* FNV-1a of the token ids: ranks given different contexts disagree. */
static int64_t cp__ids_hash(const int32_t *ids, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int j = 0; j < 4; j++, v >>= 8) h = (h ^ (v & 0xff)) * 1099511628211ull;
    }
    return (int64_t)(h >> 1);
}

/* Collective: every rank's view of the new context and of the model, which
 * must agree; also learns the query rank's batch, the bound of a step. */
static int cp__hello(sr_cp *cp, int rc, const int32_t *tokens, int64_t n) {
    const sr_model *m = cp->m;
    const sr_model_config *c = &m->config;
    int64_t mine[SR_WIRE_HELLO_WORDS] = {
        [SR_WIRE_HELLO_STATUS] = rc,
        [SR_WIRE_HELLO_TOKENS] = n,
        [SR_WIRE_HELLO_HASH] = rc == SR_OK ? cp__ids_hash(tokens, n) : 0,
        [SR_WIRE_HELLO_MODE] = cp->o.mode,
        [SR_WIRE_HELLO_BLOCK] = cp->o.block_size,
        [SR_WIRE_HELLO_ANCHOR] = cp->o.anchor_size,
        [SR_WIRE_HELLO_LAYERS] = c->n_layer,
        [SR_WIRE_HELLO_HEADS] = c->n_head,
        [SR_WIRE_HELLO_KV_HEADS] = c->n_head_kv,
        [SR_WIRE_HELLO_HEAD_DIM] = c->head_dim,
        [SR_WIRE_HELLO_VOCAB] = c->vocab_size,
        [SR_WIRE_HELLO_KV_TYPE] = m->kv.dtype,
        [SR_WIRE_HELLO_BATCH] = m->state.max_batch,
    };
    int rc2 = sr_tp_allgather(cp->tp, mine, (int64_t)sizeof mine, cp->hello);
    if (rc != SR_OK) return rc;
    if (rc2 != SR_OK) return rc2;
    /* every rank checks the same table, so every rank reaches the same verdict */
    if ((rc = sr_wire_hello_check(cp->hello, cp->world)) != SR_OK) return rc;
    cp->max_step = cp->hello[SR_CP_QUERY_RANK * SR_WIRE_HELLO_WORDS + SR_WIRE_HELLO_BATCH];
    return SR_OK;
}

/* Copies n rows of layer l's K and V out of a cache, starting at slot
 * (b, off), into dense [n][Hkv][d] buffers. */
static void cp__kv_gather(const sr_kv_cache *c, int l, int64_t b, int64_t off, int64_t n, char *kd, char *vd) {
    size_t rb = sr_kv_row_bytes(c);
    while (n > 0) {
        int64_t take = c->block_size - off < n ? c->block_size - off : n;
        int64_t at = (int64_t)l * c->cap_blocks + b;
        memcpy(kd, (const char *)c->k_ptr[at] + (size_t)off * rb, (size_t)take * rb);
        memcpy(vd, (const char *)c->v_ptr[at] + (size_t)off * rb, (size_t)take * rb);
        kd += (size_t)take * rb;
        vd += (size_t)take * rb;
        n -= take;
        b++;
        off = 0;
    }
}

/* Between two chunks of a prefill: the caller's hook (sr_cp_opts.between),
 * then the ranks agree on it and on rc. Every rank passes the same
 * b_total - 1 boundaries (a rank with less work calls cp__between_rest at
 * its end); after an agreed failure there are no more. */
static int cp__between(sr_cp *cp, int rc) {
    if (!cp->o.between || cp->b_stop || cp->b_done + 1 >= cp->b_total) return rc;
    cp->b_done++;
    int h = cp->o.between(cp->o.between_data, cp->b_tokens * cp->b_done / cp->b_total, cp->b_tokens);
    if ((rc = cp__agree(cp, rc != SR_OK ? rc : h)) != SR_OK) cp->b_stop = 1;
    return rc;
}

static int cp__between_rest(sr_cp *cp, int rc) {
    while (cp->o.between && !cp->b_stop && cp->b_done + 1 < cp->b_total) rc = cp__between(cp, rc);
    return rc;
}

/* Rank p's batch rows (the hello table; without a transport, this rank's). */
static int64_t cp__batch_of(const sr_cp *cp, int p) {
    return cp->tp ? cp->hello[p * SR_WIRE_HELLO_WORDS + SR_WIRE_HELLO_BATCH] : cp->m->state.max_batch;
}

static int64_t cp__groups(int64_t n, int64_t batch) { return n > 0 ? (n + batch - 1) / batch : 0; }

/* sr_model_forward without the logits, with a boundary after each layer of
 * each group of rows. */
static int cp__forward(sr_cp *cp, const int32_t *tokens, int64_t n, int64_t pos0) {
    sr_model *m = cp->m;
    int rc = SR_OK;
    for (int64_t done = 0; done < n && rc == SR_OK;) {
        int64_t take = n - done < m->state.max_batch ? n - done : m->state.max_batch;
        if ((rc = sr_model_embed(m, tokens + done, take, pos0 + done)) == SR_OK) rc = sr_model_kv_reserve(m);
        for (int l = 0; l < m->config.n_layer && rc == SR_OK; l++) {
            if ((rc = sr_model_layer_qkv(m, l)) == SR_OK && (rc = sr_model_layer_kv_append(m, l)) == SR_OK &&
                (rc = sr_model_layer_attention(m, l)) == SR_OK && (rc = sr_model_layer_attn_out(m, l)) == SR_OK)
                rc = sr_model_layer_mlp(m, l);
            rc = cp__between(cp, rc);
        }
        done += take;
    }
    return rc;
}

/* Broadcasts the logits of the last context token from the rank that
 * computed them to every rank. */
static int cp__share_logits(sr_cp *cp, int owner) {
    return sr_tp_bcast(cp->tp, cp->m->state.logits, (int64_t)sizeof(float) * cp->m->config.vocab_size, owner);
}

/* ---------------------------------------------------------------- ring */

/* Embeds the local rows of the spans (rows in span order) with the RoPE
 * angles of each row's absolute position. sr_model_embed takes one
 * contiguous range, so the angles of the later spans are made by embedding
 * them alone first and saved. */
static int cp__embed_spans(sr_model *m, const int32_t *tokens, const sr_span *sp, int nsp, int32_t *local) {
    sr_model_state *s = &m->state;
    int64_t half = m->config.rope_dim / 2, n = 0;
    for (int i = 0; i < nsp; i++) {
        memcpy(local + n, tokens + sp[i].pos0, sizeof(int32_t) * (size_t)sp[i].len);
        n += sp[i].len;
    }
    int64_t later = n - sp[0].len;
    float *saved = later > 0 ? malloc(sizeof(float) * (size_t)(2 * later * half + 1)) : NULL;
    if (later > 0 && !saved) return sr_error_set(SR_ENOMEM, "ring prefill: out of memory");
    int rc = SR_OK;
    int64_t row = 0;
    for (int i = 1; i < nsp && rc == SR_OK; i++) {
        if (sp[i].len == 0) continue;
        if ((rc = sr_model_embed(m, tokens + sp[i].pos0, sp[i].len, sp[i].pos0)) != SR_OK) break;
        memcpy(saved + row * half, s->rope_cos, sizeof(float) * (size_t)(sp[i].len * half));
        memcpy(saved + (later + row) * half, s->rope_sin, sizeof(float) * (size_t)(sp[i].len * half));
        row += sp[i].len;
    }
    if (rc == SR_OK && (rc = sr_model_embed(m, local, n, sp[0].pos0)) == SR_OK && later > 0) {
        memcpy(s->rope_cos + sp[0].len * half, saved, sizeof(float) * (size_t)(later * half));
        memcpy(s->rope_sin + sp[0].len * half, saved + later * half, sizeof(float) * (size_t)(later * half));
    }
    free(saved);
    return rc;
}

/* After a zigzag prefill: the rank whose last row is token n-1 computes
 * the logits, and every rank gets them. */
static int cp__zigzag_logits(sr_cp *cp, int64_t n, int rc) {
    int owner = 0;
    for (int p = 0; p < cp->world; p++) {
        sr_span q[2];
        sr_place_zigzag(n, cp->world, p, q);
        const sr_span *last = q[1].len > 0 ? &q[1] : &q[0];
        if (last->len > 0 && last->pos0 + last->len == n) owner = p;
    }
    if (rc == SR_OK && cp->rank == owner) rc = sr_model_logits(cp->m);
    if ((rc = cp__agree(cp, rc)) == SR_OK) rc = cp__share_logits(cp, owner);
    return rc;
}

/* This rank's zigzag spans and their rows, which must fit the run state;
 * a rank that fails here returns (a status to agree on) after placing. */
static int cp__zigzag_rows(sr_cp *cp, int64_t n, sr_span sp[2], int64_t *nloc, int *rc, const char *what) {
    if ((*rc = sr_place_zigzag(n, cp->world, cp->rank, sp)) != SR_OK) return *rc;
    *nloc = sr_span_total(sp, 2);
    if (*nloc > cp->m->state.max_batch)
        *rc = sr_error_set(SR_EINVAL, "%s: %lld local tokens do not fit a batch of %lld rows "
                           "(load the model with max_batch >= sr_cp_batch_rows)", what, (long long)*nloc,
                           (long long)cp->m->state.max_batch);
    return SR_OK;
}

static int cp__prefill_ring(sr_cp *cp, const int32_t *tokens, int64_t n) {
    sr_model *m = cp->m;
    sr_model_state *s = &m->state;
    const sr_model_config *c = &m->config;
    sr_span sp[2];
    int64_t nloc = 0, kvd = (int64_t)c->n_head_kv * c->head_dim;
    int rc;
    if (cp__zigzag_rows(cp, n, sp, &nloc, &rc, "ring prefill") != SR_OK) return rc;
    size_t rb = sr_kv_row_bytes(&m->kv);
    char *kbuf = malloc(rb * (size_t)(nloc + 1)), *vbuf = malloc(rb * (size_t)(nloc + 1));
    int32_t *local = malloc(sizeof(int32_t) * (size_t)(nloc + 1));
    if (rc == SR_OK && (!kbuf || !vbuf || !local)) rc = sr_error_set(SR_ENOMEM, "ring prefill: out of memory");
    sr_ring *ring = NULL;
    if ((rc = cp__agree(cp, rc)) == SR_OK) rc = sr_ring_init(&ring, cp->tp, sp, 2);
    int64_t b0[2] = {0, 0}, off0[2] = {0, 0};
    if (rc == SR_OK && nloc > 0) rc = cp__embed_spans(m, tokens, sp, 2, local);
    for (int i = 0; i < 2 && rc == SR_OK; i++)
        if (sp[i].len > 0) rc = sr_kv_reserve(&m->kv, sp[i].pos0, sp[i].len, &b0[i], &off0[i]);
    rc = cp__agree(cp, rc);
    sr_ring_desc d = {c->n_head, c->n_head_kv, c->head_dim, m->kv.dtype, 1, 0.0f, m->n_threads, cp->o.tag};
    /* every rank leaves the loop at the same layer: the local steps' status
     * is agreed on before the ring, which agrees on its own */
    for (int l = 0; l < c->n_layer; l++) {
        if (rc == SR_OK && nloc > 0 && (rc = sr_model_layer_qkv(m, l)) == SR_OK) {
            /* store in the cache, then read the cache's rows back, so that
             * the ring sees exactly the K/V the single-process runtime would */
            int64_t row = 0;
            for (int i = 0; i < 2 && rc == SR_OK; row += sp[i].len, i++)
                if (sp[i].len > 0 &&
                    (rc = sr_kv_store(&m->kv, l, b0[i], off0[i], sp[i].len, s->k + row * kvd, s->v + row * kvd)) == SR_OK)
                    cp__kv_gather(&m->kv, l, b0[i], off0[i], sp[i].len, kbuf + (size_t)row * rb, vbuf + (size_t)row * rb);
        }
        if ((rc = cp__agree(cp, rc)) != SR_OK ||
            (rc = sr_ring_forward(ring, &d, s->q, kbuf, vbuf, s->att, s->lse, &cp->st.ring)) != SR_OK)
            break;
        if (nloc > 0 && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
        rc = cp__between(cp, rc);
    }
    rc = cp__zigzag_logits(cp, n, rc);
    sr_ring_free(ring);
    free(kbuf);
    free(vbuf);
    free(local);
    return rc;
}

/* ----------------------------------------------------------------- cad */

/* Ring's placement and layer loop, with the core attention on the servers
 * (worker/cad.h); every layer's exchange runs even after a failure, since
 * the servers expect it. */
static int cp__prefill_cad(sr_cp *cp, const int32_t *tokens, int64_t n) {
    sr_model *m = cp->m;
    sr_model_state *s = &m->state;
    const sr_model_config *c = &m->config;
    sr_span sp[2];
    int64_t nloc = 0;
    int rc;
    if (cp__zigzag_rows(cp, n, sp, &nloc, &rc, "cad prefill") != SR_OK) return rc;
    int32_t *local = malloc(sizeof(int32_t) * (size_t)(nloc + 1));
    if (rc == SR_OK && !local) rc = sr_error_set(SR_ENOMEM, "cad prefill: out of memory");
    if (rc == SR_OK && nloc > 0) rc = cp__embed_spans(m, tokens, sp, 2, local);
    sr_cad_shape sh = {c->n_layer, c->n_head, c->n_head_kv, c->head_dim, m->kv.dtype, m->kv.block_size,
                       cp->o.block_size, cp->max_step, !cp->o.cad_serial, m->n_threads};
    if ((rc = sr_cad_prefill_begin(cp->cad, &sh, n, rc)) == SR_OK) {
        for (int l = 0; l < c->n_layer; l++) {
            if (rc == SR_OK && nloc > 0) rc = sr_model_layer_qkv(m, l);
            rc = cp__agree(cp, sr_cad_layer(cp->cad, rc, s->q, s->k, s->v, s->att, s->lse));
            if (rc == SR_OK && nloc > 0 && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
            rc = cp__between(cp, rc);
        }
        rc = cp__zigzag_logits(cp, n, rc);
    }
    free(local);
    return rc;
}

/* ---------------------------------------------------------------- star */

/* The rows of one Star block within a chunk of the run state. */
typedef struct {
    int64_t row0, n, pos0; /* rows [row0, row0 + n) at positions pos0.. */
    int64_t b, off;        /* where their K/V go in the cache */
    int64_t blk;           /* the block, counted from this rank's first */
} cp__seg;

/* The paged view of layer l's K/V from cache block b on, n rows at pos0. */
static sr_star_run cp__run(const sr_kv_cache *kv, int l, int64_t b, int64_t pos0, int64_t n) {
    int64_t at = (int64_t)l * kv->cap_blocks + b;
    return (sr_star_run){{NULL, NULL, &kv->k_ptr[at], &kv->v_ptr[at], kv->block_size}, pos0, n};
}

/* Phase 1 over this rank's blocks, the anchor's K/V already in the cache
 * (from block 0 on): the blocks' rows go through the model together, in
 * chunks of the batch, and each row attends to what its block sees (see
 * placement.h): the anchor's keys, the keys of this rank's earlier blocks
 * that lie inside the anchor, and its own block's causally. Each block
 * starts a cache block, so that it is a run of its own. */
static int cp__star_blocks(sr_cp *cp, const int32_t *tokens, const sr_star_place *pl) {
    sr_model *m = cp->m;
    sr_model_state *s = &m->state;
    const sr_model_config *c = &m->config;
    sr_kv_cache *kv = &m->kv;
    int64_t qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_head_kv * c->head_dim;
    int64_t *first = malloc(sizeof(int64_t) * (size_t)pl->n_blocks); /* each block's first cache block */
    cp__seg *seg = malloc(sizeof(cp__seg) * (size_t)(s->max_batch + 1));
    sr_star_run *runs = malloc(sizeof(sr_star_run) * (size_t)(pl->n_blocks + 1));
    int rc = first && seg && runs ? SR_OK : sr_error_set(SR_ENOMEM, "star prefill: out of memory");
    sr_star_desc d = {c->n_head, c->n_head_kv, c->head_dim, kv->dtype, 0.0f, m->n_threads};
    int64_t end = pl->own.pos0 + pl->own.len;
    for (int64_t c0 = pl->own.pos0; rc == SR_OK && c0 < end;) {
        int64_t take = end - c0 < s->max_batch ? end - c0 : s->max_batch, nseg = 0;
        rc = sr_model_embed(m, tokens + c0, take, c0);
        for (int64_t p = c0; rc == SR_OK && p < c0 + take; nseg++) {
            int64_t g = p / pl->block_size;
            sr_span blk = sr_star_block(pl, g, NULL);
            cp__seg *sg = &seg[nseg];
            *sg = (cp__seg){p - c0, (blk.pos0 + blk.len < c0 + take ? blk.pos0 + blk.len : c0 + take) - p, p, 0, 0,
                            g - pl->first_block};
            if (p == blk.pos0 && (rc = sr_kv_reserve_new_block(kv, p, sg->n, &sg->b)) == SR_OK)
                first[sg->blk] = sg->b;
            else if (p != blk.pos0)
                rc = sr_kv_reserve(kv, p, sg->n, &sg->b, &sg->off);
            p += sg->n;
        }
        for (int l = 0; l < c->n_layer && rc == SR_OK; l++) {
            rc = sr_model_layer_qkv(m, l);
            for (int64_t i = 0; i < nseg && rc == SR_OK; i++)
                rc = sr_kv_store(kv, l, seg[i].b, seg[i].off, seg[i].n, s->k + seg[i].row0 * kvd,
                                 s->v + seg[i].row0 * kvd);
            for (int64_t i = 0; i < nseg && rc == SR_OK; i++) {
                const cp__seg *sg = &seg[i];
                int64_t g = pl->first_block + sg->blk, seen, nr = 0;
                sr_span blk = sr_star_block(pl, g, &seen);
                if (pl->anchor.len > 0) runs[nr++] = cp__run(kv, l, 0, 0, pl->anchor.len);
                for (int64_t j = 0; j < sg->blk; j++) { /* earlier blocks of this rank inside the anchor */
                    sr_span e = sr_star_block(pl, pl->first_block + j, NULL);
                    int64_t n = (seen < e.pos0 + e.len ? seen : e.pos0 + e.len) - e.pos0;
                    if (n > 0) runs[nr++] = cp__run(kv, l, first[j], e.pos0, n);
                }
                runs[nr++] = cp__run(kv, l, first[sg->blk], blk.pos0, sg->pos0 + sg->n - blk.pos0);
                rc = sr_star_attend(&d, sg->n, sg->pos0, s->q + sg->row0 * qd, runs, nr, s->att + sg->row0 * qd,
                                    s->lse + sg->row0 * c->n_head, s->att_part, s->lse_part);
            }
            if (rc == SR_OK && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
            rc = cp__between(cp, rc);
        }
        c0 += take;
    }
    free(first);
    free(seg);
    free(runs);
    return rc;
}

static int cp__prefill_star(sr_cp *cp, const int32_t *tokens, int64_t n) {
    sr_model *m = cp->m;
    sr_star_place pl;
    int rc = sr_place_star(n, cp->o.block_size, cp->o.anchor_size, cp->world, cp->rank, &pl);
    if (rc != SR_OK) return rc;
    cp->st.block_size = pl.block_size;
    cp->st.anchor_size = pl.anchor_size;
    int owner = 0;
    for (int p = 0; p < cp->world; p++) {
        sr_star_place q;
        sr_place_star(n, cp->o.block_size, cp->o.anchor_size, cp->world, p, &q);
        if (q.own.len > 0 && q.own.pos0 + q.own.len == n) owner = p;
        int64_t b = cp__batch_of(cp, p), units = (cp__groups(q.anchor.len, b) + cp__groups(q.own.len, b)) * m->config.n_layer;
        if (units > cp->b_total) cp->b_total = units;
    }
    if (pl.own.len > 0) {
        /* the anchor is the context's prefix, so its K/V are exact causal
         * attention over it: computed once, whatever the number of blocks */
        if (pl.anchor.len > 0) rc = cp__forward(cp, tokens, pl.anchor.len, 0);
        if (rc == SR_OK) rc = cp__star_blocks(cp, tokens, &pl);
        if (rc == SR_OK && pl.own.pos0 + pl.own.len == n) rc = sr_model_logits(m);
        if (rc == SR_OK && pl.anchor.len > 0) rc = sr_kv_drop_before(&m->kv, pl.own.pos0);
    }
    rc = cp__between_rest(cp, rc);
    if ((rc = cp__agree(cp, rc)) == SR_OK) rc = cp__share_logits(cp, owner);
    return rc;
}

/* ------------------------------------------------------------- prefill */

int sr_cp_prefill(sr_cp *cp, const int32_t *tokens, int64_t n) {
    if (!cp) return sr_error_set(SR_EINVAL, "sr_cp_prefill: NULL handle");
    sr_model *m = cp->m;
    sr_model_reset(m);
    sr_kv_clear(&cp->gen);
    free(cp->runs);
    free(cp->qruns);
    cp->runs = NULL;
    cp->qruns = NULL;
    cp->n_runs = 0;
    cp->prefilled = cp->aborted = 0;
    memset(&cp->st, 0, sizeof cp->st);
    cp->b_done = cp->b_total = 0;
    cp->b_stop = 0;
    cp->b_tokens = n;
    /* a rank given no context still says so to the others */
    int rc = tokens && n >= 1 ? SR_OK : sr_error_set(SR_EINVAL, "sr_cp_prefill: no context (%lld tokens)", (long long)n);
    if (cp->tp) rc = cp__hello(cp, rc, tokens, n);
    if (rc != SR_OK) return rc;
    double t0 = sr_now();
    if (cp->o.mode == SR_CP_FULL) {
        cp->b_total = cp__groups(n, cp__batch_of(cp, SR_CP_QUERY_RANK)) * m->config.n_layer;
        if (cp->rank == SR_CP_QUERY_RANK && (rc = cp__forward(cp, tokens, n, 0)) == SR_OK) rc = sr_model_logits(m);
        rc = cp__agree(cp, cp__between_rest(cp, rc));
    } else if (cp->o.mode == SR_CP_RING || cp->o.mode == SR_CP_CAD) {
        cp->b_total = m->config.n_layer;
        rc = cp->cad ? cp__prefill_cad(cp, tokens, n) : cp__prefill_ring(cp, tokens, n);
    } else {
        rc = cp__prefill_star(cp, tokens, n);
    }
    if (rc != SR_OK) return rc;
    cp->st.t_prefill = sr_now() - t0;
    cp->st.n_ctx = n;
    cp->st.kv_tokens = m->kv.n_tokens;
    cp->st.kv_bytes = (int64_t)sr_kv_bytes(&m->kv);
    cp->n_ctx = n;
    cp->n_new = 0;
    if (cp->o.mode != SR_CP_FULL) {
        if ((rc = sr_kv_runs(&m->kv, &cp->runs, &cp->n_runs)) == SR_OK &&
            !(cp->qruns = malloc(sizeof *cp->qruns * (size_t)(cp->n_runs + 1))))
            rc = sr_error_set(SR_ENOMEM, "context parallel: out of memory");
        if ((rc = cp__agree(cp, rc)) != SR_OK) return rc;
    }
    cp->prefilled = 1;
    return SR_OK;
}

/* -------------------------------------------------------------- phase 2 */

/* The runs of layer l that this rank attends to in a step: its context KV
 * (in kv, the cache of the prefill) and, on the query rank, the new
 * tokens'. */
static int64_t cp__layer_runs(sr_cp *cp, const sr_kv_cache *kv, int l) {
    const sr_kv_cache *gen = &cp->gen;
    int64_t n = 0;
    for (int64_t i = 0; i < cp->n_runs; i++) {
        const sr_kv_run *r = &cp->runs[i];
        int64_t at = (int64_t)l * kv->cap_blocks + r->b0;
        cp->qruns[n++] = (sr_star_run){{NULL, NULL, &kv->k_ptr[at], &kv->v_ptr[at], kv->block_size}, r->pos0, r->len};
    }
    if (cp->rank == SR_CP_QUERY_RANK && gen->n_tokens > 0) { /* positions n_ctx.., in full blocks but the last */
        int64_t at = (int64_t)l * gen->cap_blocks;
        cp->qruns[n++] = (sr_star_run){{NULL, NULL, &gen->k_ptr[at], &gen->v_ptr[at], gen->block_size}, cp->n_ctx,
                                       gen->n_tokens};
    }
    return n;
}

/* One step of nq new tokens on every rank (tokens only on the query rank).
 * A failure on any rank leaves every rank in step: a rank that fails goes
 * on through every layer's query, and the failure reaches the query rank
 * in the gathered parts. */
static int cp__step(sr_cp *cp, const int32_t *tokens, int64_t nq) {
    sr_model *m = cp->m;
    sr_model_state *s = &m->state;
    const sr_model_config *c = &m->config;
    int root = cp->rank == SR_CP_QUERY_RANK, rc = SR_OK;
    int64_t pos = cp->n_ctx + cp->n_new, b0 = 0, off0 = 0, before = cp->st.query.messages;
    if (root && (rc = sr_model_embed(m, tokens, nq, pos)) == SR_OK)
        rc = sr_kv_reserve(&cp->gen, pos, nq, &b0, &off0);
    sr_star_desc d = {c->n_head, c->n_head_kv, c->head_dim, m->kv.dtype, 0.0f, m->n_threads};
    for (int l = 0; l < c->n_layer; l++) {
        if (root && rc == SR_OK && (rc = sr_model_layer_qkv(m, l)) == SR_OK)
            rc = sr_kv_store(&cp->gen, l, b0, off0, nq, s->k, s->v);
        int64_t nr = cp__layer_runs(cp, &m->kv, l);
        int rq = cp->cad ? sr_cad_query(cp->cad, l, rc, nq, pos, s->q, cp->qruns, nr, s->att, s->lse)
                         : sr_star_query(cp->star, &d, SR_CP_QUERY_RANK, nq, pos, s->q, cp->qruns, nr, s->att, s->lse,
                                         &cp->st.query);
        if (rc == SR_OK) rc = rq;
        if (root && rc == SR_OK && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
    }
    if (root && rc == SR_OK) rc = sr_model_logits(m);
    cp->n_new += nq;
    cp->st.messages += cp->st.query.messages - before;
    cp->st.n_steps++;
    cp->st.n_new += nq;
    return rc;
}

/* Arguments of a batched step that every rank checks alike (each rank's
 * own contexts, in the same order as the others'). */
static int cp__batch_check(sr_cp *const *cps, const sr_kv_cache *const *kvs, int64_t n) {
    if (n > cps[0]->max_step)
        return sr_error_set(SR_EINVAL, "sr_cp_step_batch: %lld contexts; a step holds 1..%lld rows (the query rank's "
                            "max_batch)", (long long)n, (long long)cps[0]->max_step);
    for (int64_t i = 0; i < n; i++) {
        const sr_cp *cp = cps[i];
        if (!cp || !kvs[i] || cp->m != cps[0]->m || cp->tp != cps[0]->tp || cp->o.mode == SR_CP_FULL || !cp->prefilled)
            return sr_error_set(SR_ESTATE, "sr_cp_step_batch: context %lld of the batch has no cache, or is not a "
                                "prefilled star or ring context on this batch's model and transport", (long long)i);
        for (int64_t j = 0; j < i; j++)
            if (cps[j] == cp)
                return sr_error_set(SR_EINVAL, "sr_cp_step_batch: context %lld is also context %lld of the batch",
                                    (long long)i, (long long)j);
    }
    return SR_OK;
}

int sr_cp_step_batch(sr_cp *const *cps, const sr_kv_cache *const *kvs, int64_t n, const int32_t *tokens,
                     float *logits) {
    if (!cps || !kvs || n < 1 || !cps[0])
        return sr_error_set(SR_EINVAL, "sr_cp_step_batch: %lld contexts (allowed 1..), or a NULL list", (long long)n);
    sr_cp *cp0 = cps[0];
    /* a rank that finds the batch wrong says so before any message */
    int rc = cp0->tp ? cp__agree(cp0, cp__batch_check(cps, kvs, n)) : cp__batch_check(cps, kvs, n);
    if (rc != SR_OK) return rc;
    sr_model *m = cp0->m;
    sr_model_state *s = &m->state;
    const sr_model_config *c = &m->config;
    int root = cp0->rank == SR_CP_QUERY_RANK;
    double t0 = sr_now();
    int64_t before = cp0->st.query.messages;
    int64_t *pos = malloc(sizeof *pos * (size_t)(4 * n));
    sr_star_seq *seqs = malloc(sizeof *seqs * (size_t)n);
    if (!pos || !seqs) rc = sr_error_set(SR_ENOMEM, "context parallel: out of memory for a batch of %lld", (long long)n);
    else if (root && (!tokens || !logits)) rc = sr_error_set(SR_EINVAL, "sr_cp_step_batch: the query rank needs tokens and logits");
    int64_t *b0 = pos ? pos + n : NULL, *off0 = pos ? pos + 2 * n : NULL, *rows = pos ? pos + 3 * n : NULL;
    for (int64_t i = 0; pos && i < n; i++) {
        pos[i] = cps[i]->n_ctx + cps[i]->n_new;
        rows[i] = i;
    }
    if (root && rc == SR_OK) rc = sr_model_embed_rows(m, tokens, pos, n);
    for (int64_t i = 0; root && rc == SR_OK && i < n; i++) rc = sr_kv_reserve(&cps[i]->gen, pos[i], 1, &b0[i], &off0[i]);
    /* every rank goes through every layer's query, failed or not, so that
     * all stay in step; the failure reaches the others in the messages and
     * in the agreement after */
    sr_star_desc d = {c->n_head, c->n_head_kv, c->head_dim, m->kv.dtype, 0.0f, m->n_threads};
    int64_t kvd = (int64_t)c->n_head_kv * c->head_dim;
    for (int l = 0; seqs && l < c->n_layer; l++) {
        if (root && rc == SR_OK) rc = sr_model_layer_qkv(m, l);
        for (int64_t i = 0; root && rc == SR_OK && i < n; i++)
            rc = sr_kv_store(&cps[i]->gen, l, b0[i], off0[i], 1, s->k + i * kvd, s->v + i * kvd);
        for (int64_t i = 0; i < n; i++) seqs[i] = (sr_star_seq){1, pos[i], cps[i]->qruns, cp__layer_runs(cps[i], kvs[i], l)};
        int rq = sr_star_query_batch(cp0->star, &d, SR_CP_QUERY_RANK, seqs, n, s->q, s->att, s->lse, &cp0->st.query);
        if (rc == SR_OK) rc = rq;
        if (root && rc == SR_OK && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
    }
    if (root && rc == SR_OK) rc = sr_model_logits_rows(m, rows, n, logits);
    free(pos);
    free(seqs);
    rc = cp__agree(cp0, rc);
    cp0->st.messages += cp0->st.query.messages - before + 2 * (cp0->world - 1); /* the queries or parts, and two agreements */
    cp0->st.t_steps += sr_now() - t0;
    for (int64_t i = 0; i < n; i++) {
        sr_cp *cp = cps[i];
        if (rc != SR_OK) { /* as after a failed query: prefill again */
            cp->prefilled = 0;
            continue;
        }
        cp->n_new++;
        cp->st.n_steps++;
        cp->st.n_new++;
    }
    return rc;
}

/* The step header from the query rank: n_new tokens follow, or n_new = 0
 * ends the query with status. Every rank checks it, and the ranks agree
 * that it did, before the step. */
static int cp__header(sr_cp *cp, int64_t *n_new, int *status) {
    int root = cp->rank == SR_CP_QUERY_RANK;
    int64_t h[SR_WIRE_STEP_WORDS];
    if (root) sr_wire_step_encode(h, *n_new, *status);
    int rc = sr_tp_bcast(cp->tp, h, (int64_t)sizeof h, SR_CP_QUERY_RANK);
    if (rc != SR_OK) return rc;
    if (!root) rc = sr_wire_step_decode(h, cp->max_step, n_new, status);
    cp->st.messages += (root ? cp->world - 1 : 0) + cp->world - 1; /* the header, and the agreement */
    return cp__agree(cp, rc);
}

/* Query rank: ends the query, with an error if status is one; a failed
 * query leaves no usable context on any rank. */
static int cp__end(sr_cp *cp, int status) {
    if (cp->aborted) { /* a failed step has ended it already */
        cp->aborted = 0;
        return SR_OK;
    }
    int64_t zero = 0;
    int rc = cp__header(cp, &zero, &status);
    if (status != SR_OK) cp->prefilled = 0;
    return rc;
}

int sr_cp_feed(sr_cp *cp, const int32_t *tokens, int64_t n) {
    if (!cp || !tokens || n < 1) return sr_error_set(SR_EINVAL, "sr_cp_feed: no tokens");
    if (cp->rank != SR_CP_QUERY_RANK || !cp->prefilled)
        return sr_error_set(SR_ESTATE, "sr_cp_feed: rank %d is not the query rank, or no context is prefilled "
                            "(after a failed query, prefill again)", cp->rank);
    double t0 = sr_now();
    int rc = SR_OK;
    if (cp->o.mode == SR_CP_FULL) {
        rc = sr_model_forward(cp->m, tokens, n, sr_model_next_pos(cp->m));
        cp->st.n_steps++;
        cp->st.n_new += n;
    } else {
        for (int64_t done = 0; done < n && rc == SR_OK;) {
            int64_t take = n - done < cp->m->state.max_batch ? n - done : cp->m->state.max_batch;
            int status = SR_OK;
            if ((rc = cp__header(cp, &take, &status)) != SR_OK) { /* every rank knows: the query is over */
                cp->prefilled = 0;
                cp->aborted = 1;
            } else if ((rc = cp__step(cp, tokens + done, take)) != SR_OK) { /* the others learn it now */
                cp__end(cp, rc);
                cp->aborted = 1;
            }
            done += take;
        }
    }
    cp->st.t_steps += sr_now() - t0;
    return rc;
}

int sr_cp_end(sr_cp *cp) {
    if (!cp || cp->rank != SR_CP_QUERY_RANK) return sr_error_set(SR_ESTATE, "sr_cp_end: not the query rank");
    return cp->o.mode == SR_CP_FULL ? SR_OK : cp__end(cp, SR_OK);
}

/* Keeps the tokens before position end of a cache (full mode: the new
 * tokens follow the context in the model's own cache). */
static int cp__kv_keep_before(sr_kv_cache *c, int64_t end) {
    sr_kv_cache kept;
    int rc = sr_kv_build(&kept, c->n_layer, c->n_head_kv, c->head_dim, c->dtype, c->block_size);
    for (int64_t b = 0; rc == SR_OK && b < c->n_blocks && c->block_pos[b] < end; b++) {
        int64_t len = end - c->block_pos[b] < c->block_len[b] ? end - c->block_pos[b] : c->block_len[b];
        rc = sr_kv_push_block(&kept, c->blocks[b], c->block_pos[b], len);
    }
    if (rc != SR_OK) {
        sr_kv_free(&kept);
        return rc;
    }
    sr_kv_free(c);
    *c = kept;
    return SR_OK;
}

int sr_cp_rewind(sr_cp *cp) { return sr_cp_rewind_keep(cp, 0); }

int sr_cp_rewind_keep(sr_cp *cp, int64_t keep) {
    if (!cp || !cp->prefilled) return sr_error_set(SR_ESTATE, "sr_cp_rewind: no context is prefilled");
    int full = cp->o.mode == SR_CP_FULL, root = cp->rank == SR_CP_QUERY_RANK;
    /* full mode feeds the model's own cache, on the query rank only */
    int64_t fed = full ? (root ? sr_model_next_pos(cp->m) - cp->n_ctx : 0) : cp->n_new;
    if (keep < 0 || (keep > fed && (root || !full)))
        return sr_error_set(SR_EINVAL, "sr_cp_rewind_keep: keep %lld must be in 0..%lld (the tokens fed since the prefill)",
                            (long long)keep, (long long)fed);
    int rc = SR_OK;
    if (full && root && fed > keep) rc = cp__kv_keep_before(&cp->m->kv, cp->n_ctx + keep);
    else if (!full && keep == 0) sr_kv_clear(&cp->gen);
    else if (!full && root && fed > keep) rc = cp__kv_keep_before(&cp->gen, cp->n_ctx + keep);
    if (rc == SR_OK && !full) cp->n_new = keep;
    return rc;
}

int sr_cp_abort(sr_cp *cp, int status) {
    if (!cp || cp->rank != SR_CP_QUERY_RANK || status >= SR_OK)
        return sr_error_set(SR_EINVAL, "sr_cp_abort: not the query rank, or status %d is not an error", status);
    if (cp->o.mode == SR_CP_FULL) return SR_OK;
    return cp__end(cp, status);
}

int sr_cp_serve(sr_cp *cp) {
    if (!cp) return sr_error_set(SR_EINVAL, "sr_cp_serve: NULL handle");
    if (cp->o.mode == SR_CP_FULL || cp->rank == SR_CP_QUERY_RANK) return SR_OK;
    if (!cp->prefilled) return sr_error_set(SR_ESTATE, "sr_cp_serve: no context is prefilled");
    int failed = SR_OK; /* this rank's failed step: the query rank ends the query next */
    for (;;) {
        int64_t nq = 0;
        int status = SR_OK;
        int rc = cp__header(cp, &nq, &status);
        if (rc == SR_OK && nq == 0 && status != SR_OK)
            rc = failed != SR_OK ? failed
                                 : sr_error_set(status, "context parallel: the query failed (%s)", sr_strerror(status));
        if (rc != SR_OK || nq == 0) {
            if (rc != SR_OK) cp->prefilled = 0;
            return failed != SR_OK ? failed : rc;
        }
        double t0 = sr_now();
        rc = cp__step(cp, NULL, nq);
        if (failed == SR_OK) failed = rc;
        cp->st.t_steps += sr_now() - t0;
    }
}

void sr_cp_get_stats(const sr_cp *cp, sr_cp_stats *out) {
    *out = cp->st;
}

int sr_cp_gather(sr_cp *cp, sr_cp_rank_info *all) {
    struct rusage ru;
    /* no return before the collective: an unknown peak is 0 */
    int64_t rss = getrusage(RUSAGE_SELF, &ru) == 0 ? (int64_t)ru.ru_maxrss * 1024 : 0;
    const sr_cp_stats *st = &cp->st;
    sr_cp_rank_info mine = {st->kv_tokens, st->kv_bytes, rss, st->t_prefill,
                            st->ring.compute_s, st->ring.wait_s, st->ring.bytes_sent, st->messages, st->n_steps,
                            st->query.compute_s, st->query.comm_s};
    if (!cp->tp) {
        all[0] = mine;
        return SR_OK;
    }
    return sr_tp_allgather(cp->tp, &mine, sizeof mine, all);
}
