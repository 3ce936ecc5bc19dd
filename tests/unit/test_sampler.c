/* model/sampler: greedy, temperature, top-k, top-p, the repetition penalty
 * and seeded replay on hand-made logits. Frequencies are checked against
 * the softmax to 5 standard deviations, tight enough that uniform draws
 * fail; the draws are seeded, so each run is the same. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "model/sampler.h"
#include "tests/support/unit_main.h"

static sr_sampler make_sampler(float temp, int top_k, float top_p, float penalty, int vocab, uint64_t seed) {
    sr_sampler_params p = sr_sampler_defaults();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repeat_penalty = penalty;
    p.seed = seed;
    sr_sampler s;
    assert_int_equal(sr_sampler_build(&s, &p, vocab), SR_OK);
    return s;
}

static void test_greedy(void **state) {
    float logits[6] = {0.1f, -2.0f, 3.5f, 3.4f, 0.0f, -7.0f};
    sr_sampler s = make_sampler(0.0f, 40, 0.95f, 1.0f, 6, 1);
    for (int i = 0; i < 5; i++) assert_int_equal(sr_sampler_sample(&s, logits), 2);
    sr_sampler_free(&s);
}

static void test_repeat_penalty(void **state) {
    /* token 2 was just generated: 3.5 / 1.2 = 2.92 < 3.4, so 3 wins; a
     * negative logit is multiplied, so it stays the lowest */
    float logits[6] = {0.1f, -2.0f, 3.5f, 3.4f, 0.0f, -7.0f};
    sr_sampler s = make_sampler(0.0f, 0, 1.0f, 1.2f, 6, 1);
    assert_int_equal(sr_sampler_sample(&s, logits), 2);
    sr_sampler_accept(&s, 2);
    sr_sampler_accept(&s, 2); /* repeated in the window: penalised once */
    assert_int_equal(sr_sampler_sample(&s, logits), 3);
    assert_true(logits[2] == 3.5f); /* the caller's logits are not modified */
    sr_sampler_accept(&s, 3);
    assert_int_equal(sr_sampler_sample(&s, logits), 2); /* 2.92 vs 2.83 */
    sr_sampler_free(&s);
}

static void test_penalty_window(void **state) {
    /* only the last repeat_last_n tokens count */
    float logits[4] = {2.0f, 1.9f, 0.0f, 0.0f};
    sr_sampler_params p = sr_sampler_defaults();
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    sr_sampler s;
    assert_int_equal(sr_sampler_build(&s, &p, 4), SR_OK);
    sr_sampler_accept(&s, 0);
    assert_int_equal(sr_sampler_sample(&s, logits), 1);
    sr_sampler_accept(&s, 2);
    sr_sampler_accept(&s, 3); /* 0 has left the window */
    assert_int_equal(sr_sampler_sample(&s, logits), 0);
    sr_sampler_free(&s);
}

/* Draws n samples and counts each id. */
static void histogram(sr_sampler *s, const float *logits, int vocab, int n, int *count) {
    memset(count, 0, (size_t)vocab * sizeof(int));
    for (int i = 0; i < n; i++) {
        int32_t id = sr_sampler_sample(s, logits);
        assert_true(id >= 0 && id < vocab);
        count[id]++;
    }
}

/* Fails unless count[ids[i]] of n draws is within 5 standard deviations of
 * n * p[i] (p: the softmax of the ids' logits at temperature temp), and
 * unless uniform draws would fall outside that for the most likely id. */
static void expect_frequencies(const int *count, const int *ids, const float *logits, int k, float temp, int n) {
    double p[8], sum = 0;
    assert_true(k <= 8);
    for (int i = 0; i < k; i++) sum += p[i] = exp(logits[ids[i]] / temp);
    for (int i = 0; i < k; i++) {
        p[i] /= sum;
        double want = n * p[i], tol = 5 * sqrt(n * p[i] * (1 - p[i]));
        if (fabs(count[ids[i]] - want) > tol)
            fail_msg("id %d: %d of %d draws, want %.0f +- %.0f", ids[i], count[ids[i]], n, want, tol);
        if (i == 0) assert_true(fabs((double)n / k - want) > tol); /* the test rejects uniform */
    }
}

static void test_top_k(void **state) {
    enum { V = 1000, N = 4000 };
    float *logits = malloc(V * sizeof(float));
    int *count = malloc(V * sizeof(int));
    /* a permutation of 0..9.96, then the top 3 at 12, 11, 10: softmax
     * 0.665, 0.245, 0.090 among them, but over the whole vocabulary the
     * other 997 ids would take 93% of the mass */
    int top[3];
    for (int i = 0; i < V; i++) {
        int v = (i * 7919) % V;
        logits[i] = (float)v / 100.0f;
        if (v >= 997) {
            top[999 - v] = i;
            logits[i] = (float)(12 - (999 - v));
        }
    }
    sr_sampler s = make_sampler(1.0f, 3, 1.0f, 1.0f, V, 42);
    histogram(&s, logits, V, N, count);
    int in_top = count[top[0]] + count[top[1]] + count[top[2]];
    assert_int_equal(in_top, N);
    expect_frequencies(count, top, logits, 3, 1.0f, N);
    sr_sampler_free(&s);
    /* temperature 2 flattens them to 0.506, 0.307, 0.186 */
    s = make_sampler(2.0f, 3, 1.0f, 1.0f, V, 43);
    histogram(&s, logits, V, N, count);
    expect_frequencies(count, top, logits, 3, 2.0f, N);
    sr_sampler_free(&s);
    /* top-k 1 is greedy whatever the temperature */
    s = make_sampler(5.0f, 1, 1.0f, 1.0f, V, 7);
    for (int i = 0; i < 20; i++) assert_int_equal(sr_sampler_sample(&s, logits), top[0]);
    sr_sampler_free(&s);
    free(logits);
    free(count);
}

static void test_top_p(void **state) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 */
    float logits[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    int count[4];
    sr_sampler s = make_sampler(1.0f, 0, 0.7f, 1.0f, 4, 3);
    histogram(&s, logits, 4, 5000, count);
    /* 0.5 + 0.3 reaches 0.7: only ids 1 and 3, in ratio 5:3 */
    assert_int_equal(count[0] + count[2], 0);
    expect_frequencies(count, (const int[]){1, 3}, logits, 2, 1.0f, 5000);
    sr_sampler_free(&s);
    /* top-p 1 keeps all: the sampled frequencies follow the softmax */
    s = make_sampler(1.0f, 0, 1.0f, 1.0f, 4, 3);
    histogram(&s, logits, 4, 20000, count);
    expect_frequencies(count, (const int[]){1, 3, 0, 2}, logits, 4, 1.0f, 20000);
    sr_sampler_free(&s);
    /* a tiny top-p keeps the most likely token only, whatever the temperature */
    s = make_sampler(50.0f, 0, 1e-6f, 1.0f, 4, 3);
    for (int i = 0; i < 200; i++) assert_int_equal(sr_sampler_sample(&s, logits), 1);
    sr_sampler_free(&s);
    /* top-k, then top-p over what top-k kept: of the top 3 (0.5, 0.3, 0.15
     * renormalised to 0.526, 0.316, 0.158), 0.526 + 0.316 reaches 0.8 */
    s = make_sampler(1.0f, 3, 0.8f, 1.0f, 4, 5);
    histogram(&s, logits, 4, 5000, count);
    assert_int_equal(count[0] + count[2], 0);
    expect_frequencies(count, (const int[]){1, 3}, logits, 2, 1.0f, 5000);
    sr_sampler_free(&s);
}

static void test_seed_replays(void **state) {
    enum { V = 300 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = sinf((float)i);
    sr_sampler a = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 1234), b = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 1234),
               c = make_sampler(0.8f, 50, 0.9f, 1.1f, V, 99);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        int32_t x = sr_sampler_sample(&a, logits), y = sr_sampler_sample(&b, logits), z = sr_sampler_sample(&c, logits);
        assert_int_equal(x, y);
        differ += x != z;
        sr_sampler_accept(&a, x);
        sr_sampler_accept(&b, y);
        sr_sampler_accept(&c, z);
    }
    assert_true(differ > 10);
    sr_sampler_free(&a);
    sr_sampler_free(&b);
    sr_sampler_free(&c);
}

static void test_sampler_rejects(void **state) {
    sr_sampler s;
    const sr_sampler_params d = sr_sampler_defaults();
    sr_sampler_params bad[9];
    for (int i = 0; i < 9; i++) bad[i] = d;
    bad[0].top_p = 0.0f;
    bad[1].top_p = 1.5f;
    bad[2].top_p = NAN;
    bad[3].temperature = -1.0f;
    bad[4].temperature = NAN;
    bad[5].top_k = -1;
    bad[6].repeat_penalty = 0.0f;
    bad[7].repeat_penalty = NAN;
    bad[8].repeat_last_n = -1;
    for (int i = 0; i < 9; i++) {
        sr_error_clear();
        if (sr_sampler_build(&s, &bad[i], 10) != SR_EINVAL) fail_msg("bad parameters %d were accepted", i);
        assert_non_null(strstr(sr_error_msg(), "sampler: need"));
    }
    assert_int_equal(sr_sampler_build(&s, &d, 0), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "vocabulary size 0"));
    assert_int_equal(sr_sampler_build(&s, &d, -5), SR_EINVAL);
}

static void test_defaults(void **state) {
    sr_sampler_params p = sr_sampler_defaults();
    assert_true(p.temperature == 0.0f && p.top_k == 40 && p.top_p == 0.95f && p.repeat_penalty == 1.0f);
    assert_int_equal(p.repeat_last_n, 64);
    assert_int_equal(p.seed, 0);
}

/* temperature 0 is argmax whatever top-k, top-p and the seed say; ties go
 * to the lowest id; one-token vocabularies and masked (-inf) logits */
static void test_greedy_edges(void **state) {
    float tie[5] = {1.0f, 4.0f, -1.0f, 4.0f, 4.0f};
    for (uint64_t seed = 0; seed < 4; seed++) {
        sr_sampler s = make_sampler(0.0f, (int)seed, 1e-3f + 0.3f * (float)seed, 1.0f, 5, seed);
        assert_int_equal(sr_sampler_sample(&s, tie), 1);
        sr_sampler_free(&s);
    }
    float one = -3.0f;
    sr_sampler s = make_sampler(1.0f, 0, 1.0f, 1.0f, 1, 9);
    for (int i = 0; i < 10; i++) assert_int_equal(sr_sampler_sample(&s, &one), 0);
    sr_sampler_free(&s);
    /* -inf is never drawn: ids 1 and 3 in ratio 1 : e */
    float masked[4] = {-INFINITY, 0.0f, -INFINITY, 1.0f};
    int count[4];
    s = make_sampler(1.0f, 0, 1.0f, 1.0f, 4, 11);
    histogram(&s, masked, 4, 4000, count);
    assert_int_equal(count[0] + count[2], 0);
    expect_frequencies(count, (const int[]){3, 1}, masked, 2, 1.0f, 4000);
    sr_sampler_free(&s);
    /* a top-k above the vocabulary size is no top-k (and reads nothing past
     * it): equal logits are drawn equally, to 5 standard deviations */
    float flat[3] = {0.0f, 0.0f, 0.0f};
    s = make_sampler(1.0f, 10, 1.0f, 1.0f, 3, 12);
    histogram(&s, flat, 3, 3000, count);
    for (int i = 0; i < 3; i++) assert_true(abs(count[i] - 1000) < 130);
    sr_sampler_free(&s);
}

/* the penalty at temperature > 0: a penalised token loses its share by the
 * factor exp(l - l / penalty); ids outside the vocabulary are ignored */
static void test_penalty_sampling(void **state) {
    float logits[3] = {2.0f, 2.0f, -1.0f};
    int count[3];
    sr_sampler s = make_sampler(1.0f, 0, 1.0f, 2.0f, 3, 21);
    sr_sampler_accept(&s, 0);
    sr_sampler_accept(&s, -1);
    sr_sampler_accept(&s, 3);
    sr_sampler_accept(&s, 1 << 30);
    histogram(&s, logits, 3, 6000, count);
    const float penalised[3] = {1.0f, 2.0f, -1.0f}; /* 2 / 2 */
    expect_frequencies(count, (const int[]){1, 0, 2}, penalised, 3, 1.0f, 6000);
    sr_sampler_free(&s);
    /* a window of 0 remembers nothing */
    sr_sampler_params p = sr_sampler_defaults();
    p.repeat_penalty = 5.0f;
    p.repeat_last_n = 0;
    assert_int_equal(sr_sampler_build(&s, &p, 3), SR_OK);
    sr_sampler_accept(&s, 0);
    assert_int_equal(sr_sampler_sample(&s, logits), 0);
    sr_sampler_free(&s);
}

/* the same seed replays a whole run after a rebuild; seed 0 is a seed */
static void test_seed_rebuild(void **state) {
    enum { V = 64, N = 200 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = cosf((float)i * 0.7f);
    int32_t first[N];
    for (int round = 0; round < 2; round++) {
        sr_sampler s = make_sampler(1.3f, 0, 1.0f, 1.0f, V, 0);
        int distinct = 0, seen[V] = {0};
        for (int i = 0; i < N; i++) {
            int32_t id = sr_sampler_sample(&s, logits);
            if (round == 0) first[i] = id;
            else assert_int_equal(id, first[i]);
            distinct += !seen[id]++;
        }
        assert_true(distinct > 20);
        sr_sampler_free(&s);
    }
}

SR_TEST_MAIN(cmocka_unit_test(test_defaults), cmocka_unit_test(test_greedy), cmocka_unit_test(test_greedy_edges),
             cmocka_unit_test(test_repeat_penalty), cmocka_unit_test(test_penalty_window),
             cmocka_unit_test(test_penalty_sampling), cmocka_unit_test(test_top_k), cmocka_unit_test(test_top_p),
             cmocka_unit_test(test_seed_replays), cmocka_unit_test(test_seed_rebuild),
             cmocka_unit_test(test_sampler_rejects))
