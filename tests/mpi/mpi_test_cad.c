/* Core attention disaggregation (worker/cad.h) under mpirun: the last K
 * ranks are attention servers that load no model, the first W the model
 * workers of sr_cp in mode cad.
 *  - tiny random models, f32 KV, several context lengths that are not
 *    multiples of the plan's chunk or the KV block: the logits after the
 *    context and question, and after each greedy token, equal the
 *    single-process runtime's within 1e-5 of their scale, the tokens too;
 *    the model workers hold no context KV; the servers together hold
 *    exactly the context's tokens, each KV chunk once; servers that hold
 *    KV were busy;
 *  - decode (phase 2 over the servers' KV): the greedy tokens above;
 *  - a bad --attn-servers count is refused by name;
 *  - SmolLM2 ($SR_MODEL, else the cache of scripts/fetch-model; missing is
 *    a failure) over a short text: greedy tokens equal single-process.
 * Every rank runs every case; rank 0 computes the references. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "transport/transport.h"
#include "worker/cad.h"
#include "worker/cp.h"
#include "tests/mpi/mpi_support.h"
#include "tests/support/compare.h"
#include "tests/unit/support_model.h"

enum { TAG = 11 };

typedef struct {
    const char *name;
    int64_t n, nq;   /* context and question tokens */
    int steps;       /* logits compared: after the question, then after each greedy token */
    int64_t chunk;   /* the plan's starting chunk (sr_cp_opts.block_size) */
    int64_t kv_block;
    int kv_dtype;
    double tol;
    int serial;      /* the servers without ping-pong */
} cad_case;

/* The servers: the last k ranks. */
static int servers_for(int world) { return world >= 4 ? 2 : 1; }

static int load_model(const char *path, const cad_case *c, int64_t batch, sr_model **m) {
    sr_model_opts o = {.n_threads = 1, .kv_dtype = c->kv_dtype, .block_size = c->kv_block, .max_batch = batch};
    return sr_model_load(m, path, &o);
}

/* Every model worker: prefills n ids; then the query worker feeds the
 * question (nq ids after them) and greedy steps, logits[steps][vocab] and
 * toks[steps], while the others serve. */
static int prefill_query(sr_cp *cp, sr_model *m, const int32_t *ids, int64_t n, int64_t nq, int steps, float *logits,
                         int32_t *toks) {
    int rc = sr_cp_prefill(cp, ids, n);
    if (rc != SR_OK || !sr_cp_is_query_rank(cp)) return rc == SR_OK ? sr_cp_serve(cp) : rc;
    int vocab = m->config.vocab_size;
    if (nq > 0) rc = sr_cp_feed(cp, ids + n, nq);
    for (int i = 0; i < steps && rc == SR_OK; i++) {
        memcpy(logits + (int64_t)i * vocab, m->state.logits, sizeof(float) * (size_t)vocab);
        toks[i] = sr_test_argmax(m->state.logits, vocab);
        if (i + 1 < steps) rc = sr_cp_feed(cp, &toks[i], 1);
    }
    int rc2 = sr_cp_end(cp);
    return rc != SR_OK ? rc : rc2;
}

/* The single-process runtime over the same ids, greedy, checked against
 * what cad gave; the failure count. */
static int against_single(const char *path, const cad_case *c, int64_t batch, const int32_t *ids, const float *logits,
                          const int32_t *toks) {
    sr_model *r = NULL;
    EXPECT_OK(load_model(path, c, batch, &r));
    int vocab = r->config.vocab_size, fails = 0;
    double worst = 0;
    int rc = sr_model_forward(r, ids, c->n + c->nq, 0);
    for (int i = 0; i < c->steps && rc == SR_OK; i++) {
        double e = sr_test_rel_err(logits + (int64_t)i * vocab, r->state.logits, vocab);
        if (!(e <= worst)) worst = e;
        int32_t want = sr_test_argmax(r->state.logits, vocab);
        if (toks[i] != want) {
            fprintf(stderr, "%s: step %d gave token %d, single process %d\n", c->name, i, toks[i], want);
            fails++;
            break;
        }
        if (i + 1 < c->steps) rc = sr_model_forward(r, &want, 1, c->n + c->nq + i);
    }
    if (rc != SR_OK) {
        fprintf(stderr, "%s: reference: %s\n", c->name, sr_error_msg());
        fails++;
    }
    if (!(worst <= c->tol)) {
        fprintf(stderr, "%s: logits differ by %.3g of their scale (tolerance %.0e)\n", c->name, worst, c->tol);
        fails++;
    }
    printf("# %s: %d steps, worst logit difference %.2e of scale\n", c->name, c->steps, worst);
    sr_model_free(r);
    return fails;
}

/* The servers' KV after prefill: exactly the context's tokens in all, and
 * busy where they hold some. */
static int check_servers(const cad_case *c, const sr_cad_server_stats *ss, int k) {
    int64_t held = 0;
    int fails = 0;
    for (int s = 0; s < k; s++) {
        held += ss[s].kv_tokens;
        if (ss[s].kv_tokens > 0 && !(ss[s].busy_s > 0 && ss[s].tasks > 0 && ss[s].bytes_recv > 0)) fails++;
        printf("#   server %d: %lld KV tokens, busy %.4f s, %lld answers\n", s, (long long)ss[s].kv_tokens,
               ss[s].busy_s, (long long)ss[s].tasks);
    }
    if (held != c->n) {
        fprintf(stderr, "%s: the servers hold %lld KV tokens, the context has %lld\n", c->name, (long long)held,
                (long long)c->n);
        fails++;
    }
    return fails;
}

static int run_case(const char *path, sr_tp *tp, const cad_case *c, const int32_t *text) {
    int k = servers_for(size);
    if (sr_cad_is_server(rank, size, k)) {
        EXPECT_OK(sr_cad_serve(tp, k, TAG, 1));
        return 0;
    }
    sr_cp_opts o = {.mode = SR_CP_CAD, .block_size = c->chunk, .tag = TAG, .attn_servers = k, .cad_serial = c->serial};
    int64_t batch = sr_cp_batch_rows(&o, c->n, size);
    if (batch < 64) batch = 64;
    sr_model *m = NULL;
    sr_cp *cp = NULL;
    int rc = load_model(path, c, batch, &m);
    if (rc != SR_OK) { /* the servers wait for rank 0's close */
        fprintf(stderr, "rank %d %s: %s\n", rank, c->name, sr_error_msg());
        sr_cad *bare = NULL;
        if (rank == 0 && sr_cad_open(&bare, tp, k, TAG) == SR_OK) sr_cad_close(bare);
        return 1;
    }
    EXPECT_OK(sr_cp_open(&cp, m, tp, &o)); /* a failed open has closed the servers */
    int vocab = m->config.vocab_size, fails = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(c->n + c->nq)), *toks = calloc((size_t)c->steps, sizeof(int32_t));
    float *logits = calloc((size_t)c->steps * (size_t)vocab, sizeof(float));
    for (int64_t i = 0; i < c->n + c->nq; i++)
        ids[i] = text ? text[i] : (int32_t)(sr_test_rng_at(5, (uint64_t)i, 0) * 1e6 + 1e6) % vocab;
    if ((rc = prefill_query(cp, m, ids, c->n, c->nq, c->steps, logits, toks)) != SR_OK) {
        fprintf(stderr, "rank %d %s: %s\n", rank, c->name, sr_error_msg());
        fails++;
    }
    /* the model workers hold none of the context's KV */
    sr_cp_stats st;
    sr_cp_get_stats(cp, &st);
    if (st.kv_tokens != 0 || m->kv.n_tokens != 0) {
        fprintf(stderr, "rank %d %s: a model worker holds %lld context KV tokens\n", rank, c->name,
                (long long)m->kv.n_tokens);
        fails++;
    }
    if (rank == 0 && !fails) {
        sr_cad_server_stats *ss = calloc((size_t)k, sizeof *ss);
        if (sr_cad_server_stats_get(sr_cp_cad(cp), ss) != SR_OK) {
            fprintf(stderr, "%s: server stats: %s\n", c->name, sr_error_msg());
            fails++;
        } else {
            fails += check_servers(c, ss, k);
        }
        free(ss);
        sr_cad_stats ws;
        sr_cad_get_stats(sr_cp_cad(cp), &ws);
        printf("#   plan: chunk %lld, imbalance %.3f\n", (long long)ws.plan_chunk, ws.plan_imbalance);
    }
    sr_cp_close(cp);
    if (rank == 0 && !fails) fails += against_single(path, c, m->state.max_batch, ids, logits, toks);
    free(ids);
    free(toks);
    free(logits);
    sr_model_free(m);
    return fails;
}

static int fail_between(void *data, int64_t done, int64_t total) { return *(const int *)data ? SR_EIO : SR_OK; }

/* The last model worker fails between the two layers of a prefill: every
 * worker's prefill fails (the servers get the failure in the messages of
 * the layer that still runs), and the next prefill and a step work. */
static int t_prefill_fails(const char *path, sr_tp *tp) {
    int k = servers_for(size), w = size - k, bad = rank == w - 1, fails = 0;
    if (sr_cad_is_server(rank, size, k)) {
        EXPECT_OK(sr_cad_serve(tp, k, TAG, 1));
        return 0;
    }
    cad_case c = {"", 100, 0, 1, 16, 16, SR_DT_F32, 0, 0};
    sr_model *m = NULL;
    sr_cp *cp = NULL;
    EXPECT_OK(load_model(path, &c, 100, &m));
    sr_cp_opts o = {.mode = SR_CP_CAD, .block_size = 16, .tag = TAG, .attn_servers = k, .between = fail_between,
                    .between_data = &bad};
    EXPECT_OK(sr_cp_open(&cp, m, tp, &o));
    int32_t ids[102], tok;
    for (int i = 0; i < 102; i++) ids[i] = (i * 37 + 11) % m->config.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)m->config.vocab_size);
    int rc = sr_cp_prefill(cp, ids, 100);
    if (rc != SR_EIO) {
        fprintf(stderr, "rank %d: a hook failing on rank %d gave %d: %s\n", rank, w - 1, rc, sr_error_msg());
        fails++;
    }
    bad = 0;
    COUNT_OK(prefill_query(cp, m, ids, 100, 2, 1, logits, &tok));
    free(logits);
    sr_cp_close(cp);
    sr_model_free(m);
    return fails;
}

/* Counts of servers a job cannot have are refused by name, on any rank. */
static int t_bad_count(sr_tp *tp) {
    int fails = 0;
    sr_cad *c = NULL;
    if (sr_cad_open(&c, tp, size, TAG) != SR_EINVAL || !strstr(sr_error_msg(), "--attn-servers")) fails++;
    if (sr_cad_open(&c, tp, 0, TAG) != SR_EINVAL) fails++;
    if (sr_cad_serve(tp, size, TAG, 1) != SR_EINVAL) fails++;
    if (sr_cad_open(&c, tp, 1, SR_TP_TAG_MAX) != SR_EINVAL || !strstr(sr_error_msg(), "tag")) fails++;
    if (c) fails++;
    return fails;
}

/* A short text of SmolLM2's tokens, on every rank. */
static int text_ids(sr_model *m, int32_t **ids, int64_t *n) {
    sr_tokenizer *tok = NULL;
    int rc = sr_tok_from_gguf(&tok, m->gguf);
    const char *s = "The river runs past the old mill, the bakery and the school. The baker wakes at four, the "
                    "teacher at six, the miller at five. Every morning the bells of the church ring seven times. "
                    "Question: who wakes first? Answer: the";
    if (rc == SR_OK) rc = sr_tok_encode(tok, s, strlen(s), 0, 1, ids, n);
    sr_tok_free(tok);
    return rc;
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    sr_tp *mpi = NULL, *tcp = NULL;
    int opened = open_mpi_and_tcp(&mpi, &tcp) == 0;
    char tiny[256] = "", tiny_gqa[256] = "";
    if (mpi_make_tiny_pair(tiny, tiny_gqa, "F32") || !opened) return mpi_test_finish();
    int k = servers_for(size);

    tap(t_bad_count(mpi), "a job of %d ranks refuses %d or 0 attention servers, and a tag past the range", size, size);
    tap(t_prefill_fails(tiny, mpi), "a model worker failing between two layers fails every worker's prefill, and the "
        "next prefill and a step work");
    static const cad_case tiny_cases[] = {
        {"tiny, n=301, question 5, chunks from 64, KV block 16", 301, 5, 5, 64, 16, 0, 1e-5, 0},
        {"tiny, n=37, chunks from 256 (the plan cuts finer)", 37, 2, 4, 0, 16, 0, 1e-5, 0},
        {"tiny, n=5 (some workers hold nothing)", 5, 0, 3, 0, 16, 0, 1e-5, 0},
        {"tiny, n=1000, chunks from 100, KV block 48", 1000, 3, 4, 100, 48, 0, 1e-5, 0},
    };
    for (size_t i = 0; i < sizeof tiny_cases / sizeof tiny_cases[0]; i++) {
        cad_case c = tiny_cases[i];
        c.kv_dtype = SR_DT_F32;
        tap(run_case(tiny, mpi, &c, NULL), "cad %s: f32 logits within 1e-5 of one process, greedy tokens equal (W=%d, "
            "K=%d)", c.name, size - k, k);
    }
    {
        cad_case c = {"tiny GQA 4, n=333 over tcp", 333, 4, 4, 50, 32, SR_DT_F32, 1e-5, 0};
        tap(run_case(tiny_gqa, tcp, &c, NULL), "cad %s: f32 logits within 1e-5, greedy tokens equal (W=%d, K=%d)",
            c.name, size - k, k);
        cad_case h = {"tiny GQA 4, n=333, f16 KV", 333, 4, 4, 50, 32, SR_DT_F16, 1e-4, 0};
        tap(run_case(tiny_gqa, mpi, &h, NULL), "cad %s: logits within 1e-4, greedy tokens equal (W=%d, K=%d)", h.name,
            size - k, k);
        cad_case z = {"tiny GQA 4, n=333, servers without ping-pong", 333, 2, 3, 50, 32, SR_DT_F32, 1e-5, 1};
        tap(run_case(tiny_gqa, mpi, &z, NULL), "cad %s: f32 logits within 1e-5, greedy tokens equal (W=%d, K=%d)",
            z.name, size - k, k);
    }

    /* SmolLM2 over a short text */
    char model_buf[4096];
    const char *want = getenv("SR_MODEL");
    if (want && strcmp(want, "none") == 0) {
        tap_skip("SmolLM2 cad case", "SR_MODEL=none");
    } else {
        const char *model = sr_test_model_path(model_buf, sizeof model_buf);
        if (model && access(model, R_OK) != 0) model = NULL;
        tap(!model, "SmolLM2 found ($SR_MODEL or the cache of scripts/fetch-model): %s", model ? model : "missing");
        if (model) {
            /* rank 0 tokenizes (the servers load nothing) and every rank gets the ids */
            int32_t *ids = NULL;
            int64_t n = 0;
            int trc = SR_OK;
            if (rank == 0) {
                sr_model *m = NULL;
                sr_model_opts o = {.n_threads = 1, .max_batch = 8};
                if ((trc = sr_model_load(&m, model, &o)) == SR_OK) trc = text_ids(m, &ids, &n);
                sr_model_free(m);
            }
            int64_t hdr[2] = {trc, n};
            MPI_Bcast(hdr, 2, MPI_INT64_T, 0, MPI_COMM_WORLD);
            if (rank != 0 && hdr[0] == SR_OK) ids = malloc(sizeof(int32_t) * (size_t)hdr[1]);
            if (hdr[0] == SR_OK) MPI_Bcast(ids, (int)hdr[1], MPI_INT32_T, 0, MPI_COMM_WORLD);
            cad_case c = {"SmolLM2, a short text", hdr[1] - 4, 4, 4, 16, 16, SR_DT_F16, 1e-3, 0};
            tap(hdr[0] != SR_OK || run_case(model, mpi, &c, ids), "cad %s of %lld tokens: greedy tokens equal one "
                "process (W=%d, K=%d)", c.name, (long long)hdr[1], size - k, k);
            free(ids);
        }
    }
    sr_tp_close(tcp);
    sr_tp_close(mpi);
    if (rank == 0) {
        unlink(tiny);
        unlink(tiny_gqa);
    }
    return mpi_test_finish();
}
