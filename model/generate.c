/* generate: prefill, then sample and feed back one token at a time. */
#include "model/generate.h"

#include <string.h>

#include "base/buf.h"
#include "base/clock.h"
#include "base/status.h"

/* Bytes at the end of s that start an unfinished UTF-8 character. */
static size_t utf8_tail(const char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

/* Longest proper prefix of stop that ends s. */
static size_t stop_tail(const char *s, size_t n, const char *stop, size_t stop_len) {
    for (size_t k = stop_len - 1; k > 0; k--)
        if (k <= n && memcmp(s + n - k, stop, k) == 0) return k;
    return 0;
}

/* Emits what is final in t; *stopped is set when the stop string appeared. */
static void flush(sr_buf *t, const char *stop, int final, int *stopped, sr_gen_emit_fn emit, void *data,
                  int *cb_stop) {
    if (t->len == 0) return; /* nothing yet (-n 0, or tokens of no bytes); t->data may be NULL */
    size_t stop_len = stop ? strlen(stop) : 0, out = t->len;
    if (stop_len) {
        const char *hit = memmem(t->data, t->len, stop, stop_len);
        if (hit) {
            out = (size_t)(hit - t->data);
            *stopped = 1;
            final = 1;
        } else if (!final) {
            out -= stop_tail(t->data, t->len, stop, stop_len);
        }
    }
    if (!final) {
        size_t tail = utf8_tail(t->data, out);
        out -= tail;
    }
    if (out > 0 && emit && emit(data, t->data, out)) *cb_stop = 1;
    sr_buf_consume(t, *stopped ? t->len : out);
}

int sr_gen_run_fed(sr_model *m, sr_gen_feed_fn feed, void *feed_data, const sr_tokenizer *tok,
                   const int32_t *prompt, int64_t n_prompt, const sr_gen_params *p, sr_gen_emit_fn emit,
                   void *data, sr_gen_stats *stats) {
    memset(stats, 0, sizeof(*stats));
    sr_sampler smp;
    int rc = sr_sampler_build(&smp, &p->sampling, m->config.vocab_size);
    if (rc) return rc;
    for (int64_t i = 0; i < n_prompt; i++) sr_sampler_accept(&smp, prompt[i]);
    double t0 = sr_now();
    if (n_prompt > 0) rc = feed(feed_data, prompt, n_prompt);
    stats->t_prompt = sr_now() - t0;
    stats->n_prompt = n_prompt;

    sr_buf text = {0}; /* text waiting to be emitted */
    int stopped = 0, cb_stop = 0;
    stats->stop_reason = SR_GEN_LENGTH;
    t0 = sr_now();
    for (int64_t i = 0; rc == SR_OK && i < p->n_predict; i++) {
        int32_t id = sr_sampler_sample(&smp, p->logits ? p->logits : m->state.logits);
        sr_sampler_accept(&smp, id);
        stats->n_gen++;
        if (sr_tok_is_eog(tok, id)) {
            stats->stop_reason = SR_GEN_EOG;
            break;
        }
        char piece[512];
        int np = sr_tok_piece(tok, id, piece, sizeof(piece));
        if (np < 0) {
            rc = np;
            break;
        }
        if ((rc = sr_buf_append(&text, piece, (size_t)np))) break;
        flush(&text, p->stop, 0, &stopped, emit, data, &cb_stop);
        if (stopped || cb_stop) {
            stats->stop_reason = stopped ? SR_GEN_STOP_STRING : SR_GEN_CALLBACK;
            break;
        }
        if (i + 1 == p->n_predict) break; /* the last token needs no forward pass */
        rc = feed(feed_data, &id, 1);
        stats->n_decode++;
    }
    stats->t_decode = sr_now() - t0;
    if (rc == SR_OK && !stopped && !cb_stop) flush(&text, p->stop, 1, &stopped, emit, data, &cb_stop);
    sr_buf_free(&text);
    sr_sampler_free(&smp);
    return rc;
}

/* the single-process feed: the model's forward pass after its cache */
static int feed_model(void *data, const int32_t *tokens, int64_t n) {
    sr_model *m = data;
    return sr_model_forward(m, tokens, n, sr_model_next_pos(m));
}

int sr_gen_run(sr_model *m, const sr_tokenizer *tok, const int32_t *prompt, int64_t n_prompt,
               const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats) {
    if (n_prompt <= 0) {
        memset(stats, 0, sizeof(*stats));
        return sr_error_set(SR_EINVAL, "generate: the prompt is empty");
    }
    return sr_gen_run_fed(m, feed_model, m, tok, prompt, n_prompt, p, emit, data, stats);
}
