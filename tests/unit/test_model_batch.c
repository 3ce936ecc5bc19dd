/* sr_model_forward_batch against each sequence run alone: B sequences of
 * different lengths, each with its own cache, decoded together give the
 * logits and greedy tokens of sr_model_forward over each one's cache. Below
 * SR_MATMUL__GEMM_MIN_N rows every matmul takes the matrix-vector kernel,
 * whose rows do not depend on each other: a decode step of 1 to 16
 * sequences equals each alone bit for bit; past that the matrix-matrix
 * kernel rounds differently: 1e-4 of the logits' scale. Uses the tiny
 * random model in tests/data/gguf (scripts/make-tiny-model). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attention.h"
#include "base/status.h"
#include "matmul/kernels.h"
#include "model/model.h"
#include "tests/support/compare.h"
#include "tests/support/rng.h"

#define TINY "tests/data/gguf/seed-tiny-llama-q4_0.gguf"
enum { MAX_SEQ = SR_MATMUL__GEMM_MIN_N - 1, STEPS = 6, MAX_BATCH = 32 };
/* past the keys from which a batch's sequence attends on every thread, not
 * in the team of the short ones (model.c's SHORT_MAX_KEYS, 2048), and far
 * enough that one thread would split its keys otherwise than two (4 pieces
 * against 5: attention/cpu/forward.c) */
enum { LONG_PROMPT = 5200 };

static sr_model *load(void) {
    sr_model_opts o = {.n_threads = 2, .kv_dtype = SR_DT_F32, .block_size = 8, .max_batch = MAX_BATCH};
    sr_model *m = NULL;
    if (sr_model_load(&m, TINY, &o) != SR_OK) fail_msg("%s (run from the repository root)", sr_error_msg());
    return m;
}

/* The model's own forward over cache c, the logits copied out. */
static void alone(sr_model *m, sr_kv_cache *c, const int32_t *t, int64_t n, float *logits) {
    sr_kv_cache own = m->kv;
    m->kv = *c;
    int rc = sr_model_forward(m, t, n, sr_model_next_pos(m));
    *c = m->kv;
    m->kv = own;
    if (rc != SR_OK) fail_msg("alone: %s", sr_error_msg());
    memcpy(logits, m->state.logits, sizeof(float) * (size_t)m->config.vocab_size);
}

/* n_seq sequences with prompts of 1..19 tokens (the first sequence's of
 * long_prompt tokens if that is positive); the first batched step feeds
 * 1..first tokens a sequence (a question's few), then one at a time.
 * tol 0: the logits must be the same bits. */
static void run_case(int n_seq, int first, double tol, int64_t long_prompt) {
    sr_model *m = load();
    const int V = m->config.vocab_size;
    const sr_kv_cache *k = &m->kv;
    sr_kv_cache bat[MAX_SEQ], ref[MAX_SEQ];
    float *lb = malloc(sizeof(float) * (size_t)(MAX_SEQ * V)), *lr = malloc(sizeof(float) * (size_t)V);
    assert_non_null(lb);
    assert_non_null(lr);
    int32_t next[MAX_SEQ][3];
    int64_t n_next[MAX_SEQ];
    uint64_t rng = 11 + (uint64_t)n_seq;
    for (int i = 0; i < n_seq; i++) {
        assert_int_equal(sr_kv_build(&bat[i], k->n_layer, k->n_head_kv, k->head_dim, k->dtype, k->block_size), SR_OK);
        assert_int_equal(sr_kv_build(&ref[i], k->n_layer, k->n_head_kv, k->head_dim, k->dtype, k->block_size), SR_OK);
        static int32_t prompt[LONG_PROMPT];
        int64_t np = i == 0 && long_prompt > 0 ? long_prompt : 1 + (int64_t)sr_test_rng_below(&rng, 19);
        for (int64_t j = 0; j < np; j++) prompt[j] = (int32_t)sr_test_rng_below(&rng, (uint64_t)V);
        alone(m, &bat[i], prompt, np, lr);
        alone(m, &ref[i], prompt, np, lr);
        n_next[i] = 1 + i % first;
        next[i][0] = sr_test_argmax(lr, V);
        for (int64_t j = 1; j < n_next[i]; j++) next[i][j] = (int32_t)sr_test_rng_below(&rng, (uint64_t)V);
    }
    int bad = 0;
    double worst = 0;
    for (int step = 0; step < STEPS; step++) {
        sr_model_seq seqs[MAX_SEQ];
        for (int i = 0; i < n_seq; i++) seqs[i] = (sr_model_seq){&bat[i], next[i], n_next[i]};
        if (sr_model_forward_batch(m, seqs, n_seq, lb) != SR_OK) fail_msg("batch step %d: %s", step, sr_error_msg());
        for (int i = 0; i < n_seq; i++) {
            alone(m, &ref[i], next[i], n_next[i], lr);
            double e = sr_test_rel_err(lb + (int64_t)i * V, lr, V);
            worst = e > worst ? e : worst;
            int32_t want = sr_test_argmax(lr, V), got = sr_test_argmax(lb + (int64_t)i * V, V);
            int differ = tol > 0 ? e > tol : memcmp(lb + (int64_t)i * V, lr, sizeof(float) * (size_t)V) != 0;
            if ((differ || want != got) && bad++ < 4)
                print_message("# step %d sequence %d: logits off by %.3g of their scale (allowed %.g), "
                              "greedy token %d, alone %d\n", step, i, e, tol, got, want);
            assert_int_equal(sr_kv_next_pos(&bat[i]), sr_kv_next_pos(&ref[i]));
            next[i][0] = want;
            n_next[i] = 1;
        }
    }
    print_message("# %d sequences: worst logit error %.3g of their scale\n", n_seq, worst);
    assert_int_equal(bad, 0);
    for (int i = 0; i < n_seq; i++) {
        sr_kv_free(&bat[i]);
        sr_kv_free(&ref[i]);
    }
    free(lb);
    free(lr);
    sr_model_free(m);
}

static void test_batch_small(void **state) { run_case(3, 3, 1e-6, 0); }
/* 12 sequences of 1-3 tokens: a first step past the matrix-vector sizes */
static void test_batch_gemm(void **state) { run_case(12, 3, 1e-4, 0); }

/* decode steps of 1 .. 16 sequences, one token each */
static void test_batch_decode_bitwise(void **state) {
    for (int n_seq = 1; n_seq <= MAX_SEQ; n_seq++) run_case(n_seq, 1, 0, 0);
}

/* a long sequence beside short ones: each attends its own way, the same
 * bits as alone */
static void test_batch_long_and_short(void **state) { run_case(4, 1, 0, LONG_PROMPT); }

static void test_batch_errors(void **state) {
    sr_model *m = load();
    const sr_kv_cache *k = &m->kv;
    sr_kv_cache c;
    assert_int_equal(sr_kv_build(&c, k->n_layer, k->n_head_kv, k->head_dim, k->dtype, k->block_size), SR_OK);
    float *lb = malloc(sizeof(float) * (size_t)m->config.vocab_size);
    int32_t t[MAX_BATCH + 1] = {0};
    sr_model_seq one = {&c, t, 1};
    assert_int_equal(sr_model_forward_batch(m, &one, 0, lb), SR_EINVAL);
    assert_string_equal(sr_error_msg(), "model: a batch of 0 sequences (allowed 1..32, the model's max_batch)");
    sr_model_seq big = {&c, t, MAX_BATCH + 1};
    assert_int_equal(sr_model_forward_batch(m, &big, 1, lb), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "batch sequence 0 has 33 tokens"));
    t[0] = m->config.vocab_size;
    assert_int_equal(sr_model_forward_batch(m, &one, 1, lb), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "outside the vocabulary"));
    sr_kv_free(&c);
    free(lb);
    sr_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_small),
        cmocka_unit_test(test_batch_gemm),
        cmocka_unit_test(test_batch_decode_bitwise),
        cmocka_unit_test(test_batch_long_and_short),
        cmocka_unit_test(test_batch_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
