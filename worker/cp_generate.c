/* cp_generate: the question and the decode loop over a sharded context. The
 * query rank samples and feeds each token; the other ranks serve the steps.
 * Text is streamed as sr_generate does (stop string, end of generation,
 * unfinished UTF-8 held back). */
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/status.h"
#include "worker/cp.h"

typedef struct {
    char *buf;
    size_t len, cap;
} cp__text;

static int cp__text_append(cp__text *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1) cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) return sr_error_set(SR_ENOMEM, "generate: out of memory");
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return SR_OK;
}

/* Bytes at the end of s that start an unfinished UTF-8 character. */
static size_t cp__utf8_tail(const char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue;
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

/* Emits what is final in t: all of it when final, else all but a possible
 * start of the stop string or of a UTF-8 character. Returns SR_GEN_* when
 * generation must stop, -1 otherwise. */
static int cp__text_flush(cp__text *t, const char *stop, int final, sr_gen_emit_fn emit, void *data) {
    size_t stop_len = stop ? strlen(stop) : 0, out = t->len;
    int why = -1;
    if (stop_len) {
        const char *hit = memmem(t->buf, t->len, stop, stop_len);
        if (hit) {
            out = (size_t)(hit - t->buf);
            why = SR_GEN_STOP_STRING;
            final = 1;
        } else if (!final) {
            for (size_t k = stop_len - 1; k > 0; k--)
                if (k <= out && memcmp(t->buf + out - k, stop, k) == 0) {
                    out -= k;
                    break;
                }
        }
    }
    if (!final) out -= cp__utf8_tail(t->buf, out);
    if (out > 0 && emit && emit(data, t->buf, out) && why < 0) why = SR_GEN_CALLBACK;
    if (why == SR_GEN_STOP_STRING) {
        t->len = 0;
    } else {
        memmove(t->buf, t->buf + out, t->len - out);
        t->len -= out;
    }
    return why;
}

static int cp__decode(sr_cp *cp, sr_model *m, const sr_tokenizer *tok, const int32_t *query, int64_t n_query,
                      const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats) {
    sr_sampler smp;
    int rc = sr_sampler_build(&smp, &p->sampling, m->config.vocab_size);
    if (rc != SR_OK) return rc;
    for (int64_t i = 0; i < n_query; i++) sr_sampler_accept(&smp, query[i]);
    double t0 = sr_now();
    if (n_query > 0) rc = sr_cp_feed(cp, query, n_query);
    stats->t_prompt = sr_now() - t0;
    stats->n_prompt = n_query;
    cp__text text = {0};
    int why = -1;
    stats->stop_reason = SR_GEN_LENGTH;
    t0 = sr_now();
    for (int64_t i = 0; rc == SR_OK && i < p->n_predict; i++) {
        int32_t id = sr_sampler_sample(&smp, m->state.logits);
        sr_sampler_accept(&smp, id);
        stats->n_gen++;
        if (sr_tok_is_eog(tok, id)) {
            stats->stop_reason = SR_GEN_EOG;
            break;
        }
        char piece[512];
        int np = sr_tok_piece(tok, id, piece, sizeof piece);
        if (np < 0) {
            rc = np;
            break;
        }
        if ((rc = cp__text_append(&text, piece, (size_t)np)) != SR_OK) break;
        if ((why = cp__text_flush(&text, p->stop, 0, emit, data)) >= 0) {
            stats->stop_reason = why;
            break;
        }
        if (i + 1 == p->n_predict) break; /* the last token needs no step */
        rc = sr_cp_feed(cp, &id, 1);
        stats->n_decode++;
    }
    stats->t_decode = sr_now() - t0;
    if (rc == SR_OK && why < 0 && (why = cp__text_flush(&text, p->stop, 1, emit, data)) >= 0)
        stats->stop_reason = why;
    free(text.buf);
    sr_sampler_free(&smp);
    return rc;
}

int sr_cp_generate(sr_cp *cp, const sr_tokenizer *tok, const int32_t *query, int64_t n_query,
                   const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats) {
    if (!cp) return sr_error_set(SR_EINVAL, "sr_cp_generate: NULL handle");
    if (!sr_cp_is_query_rank(cp)) return sr_cp_serve(cp);
    if (!tok || !p || !stats || n_query < 0 || (n_query > 0 && !query)) {
        int rc = sr_error_set(SR_EINVAL, "sr_cp_generate: bad arguments");
        sr_cp_end(cp); /* the other ranks are waiting for steps */
        return rc;
    }
    memset(stats, 0, sizeof *stats);
    int rc = cp__decode(cp, sr_cp_model(cp), tok, query, n_query, p, emit, data, stats);
    int rc2 = sr_cp_end(cp);
    return rc != SR_OK ? rc : rc2;
}

int sr_cp_encode(const sr_tokenizer *tok, const char *context, const char *question, int chat, const char *system,
                 int32_t **ctx, int64_t *n_ctx, int32_t **q, int64_t *n_q) {
    *ctx = *q = NULL;
    *n_ctx = *n_q = 0;
    if (!tok || !context) return sr_error_set(SR_EINVAL, "sr_cp_encode: no context");
    size_t lc = strlen(context), lq = question ? strlen(question) : 0;
    char *user = NULL, *full = NULL;
    const char *text = context, *rest = question ? question : "";
    size_t cut = lc;
    int rc = SR_OK;
    if (chat) {
        user = malloc(lc + lq + 2);
        if (!user) return sr_error_set(SR_ENOMEM, "out of memory for the prompt");
        memcpy(user, context, lc);
        user[lc] = 0;
        if (question) {
            user[lc] = '\n';
            memcpy(user + lc + 1, question, lq + 1);
        }
        full = sr_chat_prompt(tok, system, user);
        if (!full) rc = sr_error_set(SR_EINVAL, "the model's chat template could not be applied");
        /* a template that rewrites the message leaves no place to cut: all
         * of it is context then */
        const char *at = full ? strstr(full, user) : NULL;
        text = full;
        cut = at ? (size_t)(at - full) + lc : full ? strlen(full) : 0;
        rest = full ? full + cut : "";
    }
    if (rc == SR_OK) rc = sr_tok_encode(tok, text, cut, chat, 1, ctx, n_ctx);
    if (rc == SR_OK && *rest) rc = sr_tok_encode(tok, rest, strlen(rest), chat, 0, q, n_q);
    if (rc == SR_OK && *n_ctx == 0) rc = sr_error_set(SR_EINVAL, "the context has no tokens");
    if (rc != SR_OK) {
        free(*ctx);
        free(*q);
        *ctx = *q = NULL;
        *n_ctx = *n_q = 0;
    }
    free(user);
    free(full);
    return rc;
}
