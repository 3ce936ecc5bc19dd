/* Batched decode across contexts (sr_cp_step_batch) under mpirun: B
 * contexts, star and ring mixed, of different lengths, each prefilled into
 * its own cache; their next tokens generated together, one step for all,
 * give the tokens and logits of each context generated alone with
 * sr_cp_feed (B = 3: the matrix-vector kernels, 1e-5; B = 9: matrix-matrix,
 * 1e-4 of the logits' scale; greedy tokens identical); a step sends one
 * message per layer from the query rank to each other rank whatever B; a
 * batch that one rank finds wrong fails on every rank. Tiny random model of
 * tests/data/gguf. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "model/model.h"
#include "tests/mpi/mpi_support.h"
#include "tests/support/compare.h"
#include "transport/transport.h"
#include "worker/cp.h"

#define TINY "tests/data/gguf/seed-tiny-llama-q4_0.gguf"
enum { MAX_CTX = 9, STEPS = 5 };

typedef struct {
    sr_model *m;
    sr_cp *cp[MAX_CTX];
    sr_kv_cache kv[MAX_CTX];
    sr_kv_cache parked;  /* the model's own, in m->kv between contexts (as the daemon does) */
    float *first;        /* (B, vocab) rank 0: logits after each context */
    int B, V;
} batch;

/* Context i: 23 + 17 i tokens, even i star with blocks of 16, odd i ring. */
static int open_contexts(batch *b, sr_tp *tp, int B) {
    memset(b, 0, sizeof *b);
    sr_model_opts mo = {.n_threads = 1, .kv_dtype = SR_DT_F16, .block_size = 16, .max_batch = 256};
    EXPECT_OK(sr_model_load(&b->m, TINY, &mo));
    b->B = B;
    b->V = b->m->config.vocab_size;
    b->parked = b->m->kv;
    b->first = malloc(sizeof(float) * (size_t)(B * b->V));
    if (!b->first) return 1;
    const sr_kv_cache *k = &b->parked;
    for (int i = 0; i < B; i++) {
        int64_t n = 23 + 17 * i;
        int32_t t[256];
        for (int64_t j = 0; j < n; j++) t[j] = (int32_t)((j * 131 + (uint64_t)i * 977 + 5) % (uint64_t)b->V);
        sr_cp_opts o = {.mode = i % 2 ? SR_CP_RING : SR_CP_STAR, .block_size = i % 2 ? 0 : 16, .tag = 7};
        EXPECT_OK(sr_kv_build(&b->kv[i], k->n_layer, k->n_head_kv, k->head_dim, k->dtype, k->block_size));
        b->m->kv = b->kv[i];
        int rc = sr_cp_open(&b->cp[i], b->m, tp, &o);
        if (rc == SR_OK) rc = sr_cp_prefill(b->cp[i], t, n);
        b->kv[i] = b->m->kv;
        b->m->kv = b->parked;
        EXPECT_OK(rc);
        memcpy(b->first + (int64_t)i * b->V, b->m->state.logits, sizeof(float) * (size_t)b->V);
    }
    return 0;
}

static void close_contexts(batch *b) {
    for (int i = 0; i < b->B; i++) {
        sr_cp_close(b->cp[i]);
        sr_kv_free(&b->kv[i]);
    }
    b->m->kv = b->parked;
    sr_model_free(b->m);
    free(b->first);
}

/* Context i alone, from the same first token, with sr_cp_feed: STEPS
 * steps' logits into out (STEPS, vocab) on rank 0. */
static int alone(batch *b, int i, float *out) {
    sr_cp *cp = b->cp[i];
    EXPECT_OK(sr_cp_rewind(cp));
    b->m->kv = b->kv[i];
    int rc = SR_OK;
    if (sr_cp_is_query_rank(cp)) {
        int32_t t = sr_test_argmax(b->first + (int64_t)i * b->V, b->V);
        for (int s = 0; s < STEPS && rc == SR_OK; s++) {
            if ((rc = sr_cp_feed(cp, &t, 1)) != SR_OK) break;
            memcpy(out + (int64_t)s * b->V, b->m->state.logits, sizeof(float) * (size_t)b->V);
            t = sr_test_argmax(out + (int64_t)s * b->V, b->V);
        }
        if (rc == SR_OK) rc = sr_cp_end(cp);
    } else {
        rc = sr_cp_serve(cp);
    }
    b->kv[i] = b->m->kv;
    b->m->kv = b->parked;
    EXPECT_OK(rc);
    return 0;
}

static int t_batch(sr_tp *tp, int B, double tol) {
    batch b;
    if (open_contexts(&b, tp, B)) return 1;
    int fails = 0, V = b.V;
    float *got = malloc(sizeof(float) * (size_t)(STEPS * B * V)), *want = malloc(sizeof(float) * (size_t)(STEPS * V));
    int32_t tok[MAX_CTX];
    const sr_kv_cache *kvs[MAX_CTX];
    for (int i = 0; i < B; i++) {
        tok[i] = sr_test_argmax(b.first + (int64_t)i * V, V);
        kvs[i] = &b.kv[i];
    }
    sr_cp_stats st0;
    sr_cp_get_stats(b.cp[0], &st0);
    for (int s = 0; s < STEPS; s++) {
        float *l = got + (int64_t)s * B * V;
        EXPECT_OK(sr_cp_step_batch(b.cp, kvs, B, tok, l));
        for (int i = 0; i < B && rank == 0; i++) tok[i] = sr_test_argmax(l + (int64_t)i * V, V);
    }
    sr_cp_stats st;
    sr_cp_get_stats(b.cp[0], &st);
    int64_t per_step = (int64_t)b.m->config.n_layer * (size - 1) + 2 * (size - 1);
    if (rank == 0 && st.messages - st0.messages != STEPS * per_step) {
        fprintf(stderr, "rank 0 sent %lld messages in %d batched steps of %d contexts, expected %lld (one per layer "
                "and rank, and two agreements)\n", (long long)(st.messages - st0.messages), STEPS, B,
                (long long)(STEPS * per_step));
        fails++;
    }
    double worst = 0;
    for (int i = 0; i < B; i++) {
        EXPECT_OK(alone(&b, i, want));
        for (int s = 0; rank == 0 && s < STEPS; s++) {
            const float *g = got + ((int64_t)s * B + i) * V, *w = want + (int64_t)s * V;
            double e = sr_test_rel_err(g, w, V);
            worst = e > worst ? e : worst;
            if (e > tol || sr_test_argmax(g, V) != sr_test_argmax(w, V)) {
                if (fails < 4)
                    fprintf(stderr, "context %d step %d: batched logits off by %.3g of their scale (allowed %g), "
                            "token %d, alone %d\n", i, s, e, tol, sr_test_argmax(g, V), sr_test_argmax(w, V));
                fails++;
            }
        }
    }
    if (rank == 0) printf("# %d contexts: worst logit error %.3g\n", B, worst);
    free(got);
    free(want);
    close_contexts(&b);
    return fails;
}

/* The last rank names context 0 twice: the check fails there, and every
 * rank returns the error before any step message. */
static int t_bad_batch(sr_tp *tp) {
    batch b;
    if (open_contexts(&b, tp, 2)) return 1;
    sr_cp *cps[2] = {b.cp[0], rank == size - 1 ? b.cp[0] : b.cp[1]};
    const sr_kv_cache *kvs[2] = {&b.kv[0], &b.kv[1]};
    int32_t tok[2] = {1, 2};
    float *l = malloc(sizeof(float) * (size_t)(2 * b.V));
    int rc = sr_cp_step_batch(cps, kvs, 2, tok, l), fails = 0;
    if (rc != SR_EINVAL) {
        fprintf(stderr, "rank %d: a batch wrong on rank %d returned %d (%s), not SR_EINVAL\n", rank, size - 1, rc,
                sr_error_msg());
        fails++;
    }
    if (rank == size - 1 && !strstr(sr_error_msg(), "context 1 is also context 0")) {
        fprintf(stderr, "rank %d: message \"%s\"\n", rank, sr_error_msg());
        fails++;
    }
    /* nothing was stepped: the right batch runs next */
    cps[1] = b.cp[1];
    if (sr_cp_step_batch(cps, kvs, 2, tok, l) != SR_OK) {
        fprintf(stderr, "rank %d: the batch after a refused one: %s\n", rank, sr_error_msg());
        fails++;
    }
    free(l);
    close_contexts(&b);
    return fails;
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    sr_tp *mpi = NULL, *tcp = NULL;
    int opened = sr_tp_open(&mpi, "mpi", NULL) == SR_OK && open_tcp(&tcp) == SR_OK;
    tap(!opened, "the mpi and tcp transports open");
    if (!opened) return mpi_test_finish();
    tap(t_batch(mpi, 3, 1e-5), "3 contexts, star and ring, stepped together equal each alone (W=%d)", size);
    tap(t_batch(mpi, MAX_CTX, 1e-4), "%d contexts stepped together equal each alone (W=%d)", MAX_CTX, size);
    tap(t_batch(tcp, 4, 1e-5), "4 contexts over tcp (W=%d)", size);
    tap(t_bad_batch(mpi), "a batch that rank %d finds wrong fails on every rank, and the next one works", size - 1);
    sr_tp_close(tcp);
    sr_tp_close(mpi);
    return mpi_test_finish();
}
