/* coordinator/metrics.c: the Prometheus text of counters, request counts
 * (label values escaped), histograms (cumulative buckets, +Inf, _sum,
 * _count) and gauges; HELP and TYPE before each family's samples; input
 * out of range refused or ignored. The daemon's own /metrics is checked by
 * tests/py/test_metrics.py with prometheus_client's parser. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "coordinator/metrics.h"

static void assert_has(const char *text, const char *want) {
    if (!strstr(text, want)) fail_msg("the metrics text lacks '%s':\n%s", want, text);
}

static void test_render(void **state) {
    sr_metrics *m;
    assert_int_equal(sr_metrics_new(&m, 2), SR_OK);
    static const char method[] = "/a\"b\\c\nd";
    sr_metrics_request(m, "grpc", method, 5);
    sr_metrics_request(m, "grpc", method, 5);
    sr_metrics_request(m, "grpc", method, 0);
    sr_metrics_request(m, "http", NULL, 404);
    sr_metrics_add(m, SR_METRIC_GENERATED_TOKENS, 7);
    sr_metrics_add(m, SR_METRIC_GENERATED_TOKENS, 5);
    sr_metrics_observe(m, SR_METRIC_TTFT_SECONDS, 0.003);
    sr_metrics_observe(m, SR_METRIC_TTFT_SECONDS, 0.2);
    sr_metrics_observe(m, SR_METRIC_TTFT_SECONDS, 500);
    sr_metrics_worker ws[2] = {{.worker = 0, .up = 1, .kv_bytes = 4096, .kv_budget_bytes = 1 << 20},
                               {.worker = 1, .up = 0, .kv_bytes = 0, .kv_budget_bytes = 1 << 20}};
    sr_metrics_gauges g = {.queue_depth = 3, .queue_capacity = 64, .contexts = 2, .workers = 2, .worker = ws};
    char *text;
    size_t len;
    assert_int_equal(sr_metrics_render(m, &g, &text, &len), SR_OK);
    assert_int_equal(strlen(text), len);
    assert_has(text, "# TYPE starring_requests_total counter\n");
    assert_has(text, "starring_requests_total{api=\"grpc\",method=\"/a\\\"b\\\\c\\nd\",code=\"5\"} 2\n");
    assert_has(text, "starring_requests_total{api=\"grpc\",method=\"/a\\\"b\\\\c\\nd\",code=\"0\"} 1\n");
    assert_has(text, "starring_requests_total{api=\"http\",method=\"other\",code=\"404\"} 1\n");
    assert_has(text, "\nstarring_generated_tokens_total 12\n");
    assert_has(text, "# TYPE starring_time_to_first_token_seconds histogram\n");
    assert_has(text, "starring_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n");
    assert_has(text, "starring_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n");
    assert_has(text, "starring_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n");
    assert_has(text, "starring_time_to_first_token_seconds_bucket{le=\"120\"} 2\n");
    assert_has(text, "starring_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n");
    assert_has(text, "starring_time_to_first_token_seconds_sum 500.203\n");
    assert_has(text, "starring_time_to_first_token_seconds_count 3\n");
    assert_has(text, "starring_decode_seconds_count 0\n");
    assert_has(text, "\nstarring_queue_depth 3\n");
    assert_has(text, "\nstarring_contexts 2\n");
    assert_has(text, "starring_worker_up{worker=\"0\"} 1\nstarring_worker_up{worker=\"1\"} 0\n");
    assert_has(text, "starring_kv_bytes{worker=\"0\"} 4096\n");
    assert_has(text, "starring_kv_budget_bytes{worker=\"1\"} 1048576\n");
    /* each sample follows its family's HELP and TYPE (histograms add _bucket, _sum, _count) */
    char family[128] = "";
    int help = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        if (strncmp(p, "# HELP ", 7) == 0) {
            help = 1;
        } else if (strncmp(p, "# TYPE ", 7) == 0) {
            assert_true(help);
            help = 0;
            size_t n = strcspn(p + 7, " ");
            assert_true(n < sizeof family);
            memcpy(family, p + 7, n);
            family[n] = 0;
        } else if (!*family || strncmp(p, family, strlen(family)) != 0) {
            fail_msg("a sample outside its family '%s': %.*s", family, (int)(nl - p), p);
        }
        p = nl + 1;
    }
    free(text);

    /* GetStats: the same figures, buckets cumulative as in the text */
    Starring__V1__Stats st = STARRING__V1__STATS__INIT;
    sr_metrics_stats_buf b;
    assert_int_equal(sr_metrics_stats(m, &st, &b), SR_OK);
    assert_int_equal(st.n_requests, 3);
    assert_string_equal(st.requests[0]->method, method);
    assert_int_equal(st.requests[0]->code, 5);
    assert_int_equal(st.requests[0]->count, 2);
    assert_string_equal(st.requests[2]->method, "other");
    const Starring__V1__Histogram *h = st.time_to_first_token_seconds;
    assert_int_equal(h->n_bounds, SR_METRICS_N_BUCKETS);
    assert_int_equal(h->n_counts, SR_METRICS_N_BUCKETS + 1);
    assert_int_equal(h->counts[0], 1);
    assert_int_equal(h->counts[5], 2); /* le 0.25 */
    assert_int_equal(h->counts[SR_METRICS_N_BUCKETS - 1], 2);
    assert_int_equal(h->counts[SR_METRICS_N_BUCKETS], 3);
    assert_int_equal(h->count, 3);
    assert_int_equal(st.decode_seconds->count, 0);
    /* and it packs: every pointer is set */
    size_t n = starring__v1__stats__get_packed_size(&st);
    uint8_t *packed = malloc(n);
    assert_non_null(packed);
    assert_int_equal(starring__v1__stats__pack(&st, packed), n);
    Starring__V1__Stats *back = starring__v1__stats__unpack(NULL, n, packed);
    assert_non_null(back);
    assert_int_equal(back->time_to_first_token_seconds->counts[SR_METRICS_N_BUCKETS], 3);
    starring__v1__stats__free_unpacked(back, NULL);
    free(packed);
    sr_metrics_stats_done(&b);
    sr_metrics_free(m);
}

static void test_bad_input(void **state) {
    sr_metrics *m;
    assert_int_equal(sr_metrics_new(&m, -1), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "workers -1 must be in 0..4096"));
    assert_int_equal(sr_metrics_new(&m, 1), SR_OK);
    sr_metrics_observe(m, SR_METRIC_PREFILL_SECONDS, -1);
    sr_metrics_observe(m, SR_METRIC_PREFILL_SECONDS, NAN);
    sr_metrics_observe(m, SR_METRIC_N_HISTOGRAMS, 1);
    sr_metrics_add(m, SR_METRIC_N_COUNTERS, 1);
    sr_metrics_add(m, SR_METRIC_PROMPT_TOKENS, -5);
    assert_int_equal(sr_metrics_histogram(m, SR_METRIC_PREFILL_SECONDS)->count, 0);
    assert_int_equal(sr_metrics_counter(m, SR_METRIC_PROMPT_TOKENS), 0);
    assert_null(sr_metrics_histogram(m, -1));
    sr_metrics_free(m);
    sr_metrics_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_render), cmocka_unit_test(test_bad_input)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
