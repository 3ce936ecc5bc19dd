/* The model runtime at its limits, on SmolLM2: run-state sizes that would
 * overflow are refused with a message naming max_batch and its range (they
 * were a signed overflow, then a short allocation), a batch of one row still
 * runs a longer prompt, and generating no tokens touches no empty buffer
 * (it passed NULL to memmove). */
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
#include "gguf/gguf.h"
#include "model/generate.h"
#include "model/model.h"
#include "tests/unit/support_model.h"
#include "tokenizer/tokenizer.h"

static char path_buf[4096];
static const char *path;

static int setup(void **state) {
    path = sr_test_model_path(path_buf, sizeof path_buf);
    if (!path) fprintf(stderr, "SR_MODEL is not set and the model is not cached: run scripts/fetch-model\n");
    return path ? 0 : -1;
}

static void test_batch_limits(void **state) {
    sr_model *m = (sr_model *)1;
    sr_model_opts o = {.n_threads = 1, .kv_dtype = SR_DT_F16, .max_batch = INT64_C(1) << 62};
    assert_int_equal(sr_model_load(&m, path, &o), SR_ERANGE);
    assert_null(m);
    assert_non_null(strstr(sr_error_msg(), "max_batch 4611686018427387904 is too large"));
    assert_non_null(strstr(sr_error_msg(), "allowed 1.."));
    o.max_batch = INT64_MAX;
    assert_int_equal(sr_model_load(&m, path, &o), SR_ERANGE);
    o.max_batch = -1;
    assert_int_equal(sr_model_load(&m, path, &o), SR_EINVAL);
    assert_non_null(strstr(sr_error_msg(), "max_batch -1"));

    /* one row per pass: a prompt of three runs in three chunks, to the same logits */
    o.max_batch = 1;
    assert_int_equal(sr_model_load(&m, path, &o), SR_OK);
    const int32_t ids[] = {19556, 905, 28};
    assert_int_equal(sr_model_forward(m, ids, 3, 0), SR_OK);
    int vocab = m->config.vocab_size;
    float *one = malloc((size_t)vocab * sizeof(float));
    assert_non_null(one);
    memcpy(one, m->state.logits, (size_t)vocab * sizeof(float));
    sr_model_free(m);
    o.max_batch = 0; /* the default, 512 */
    assert_int_equal(sr_model_load(&m, path, &o), SR_OK);
    assert_int_equal(m->state.max_batch, 512);
    assert_int_equal(sr_model_forward(m, ids, 3, 0), SR_OK);
    int64_t far = 0;
    for (int i = 0; i < vocab; i++) {
        float d = one[i] - m->state.logits[i];
        if (d > 1e-3f || d < -1e-3f) far++;
    }
    assert_int_equal(far, 0);
    free(one);
    sr_model_free(m);
}

static int count_emit(void *data, const char *text, size_t len) {
    (*(int *)data)++;
    return 0;
}

static void test_generate_nothing(void **state) {
    sr_model *m = NULL;
    sr_tokenizer *tok = NULL;
    assert_int_equal(sr_model_load(&m, path, NULL), SR_OK);
    assert_int_equal(sr_tok_from_gguf(&tok, m->gguf), SR_OK);
    const int32_t ids[] = {19556, 905};
    sr_gen_params p = {.n_predict = 0, .sampling = sr_sampler_defaults(), .stop = "stop"};
    sr_gen_stats st;
    int calls = 0;
    assert_int_equal(sr_gen_run(m, tok, ids, 2, &p, count_emit, &calls, &st), SR_OK);
    assert_int_equal(st.n_gen, 0);
    assert_int_equal(st.n_prompt, 2);
    assert_int_equal(st.stop_reason, SR_GEN_LENGTH);
    assert_int_equal(calls, 0);
    /* one token then: sampled from the prompt's logits, emitted, no further pass */
    p.n_predict = 1;
    sr_model_reset(m);
    assert_int_equal(sr_gen_run(m, tok, ids, 2, &p, count_emit, &calls, &st), SR_OK);
    assert_int_equal(st.n_gen, 1);
    assert_int_equal(st.n_decode, 0);
    sr_tok_free(tok);
    sr_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_limits),
        cmocka_unit_test(test_generate_nothing),
    };
    return cmocka_run_group_tests_name("runtime limits (SmolLM2)", tests, setup, NULL);
}
