/* cp_generate: the question and the decode loop over a sharded context: the
 * loop of sr_gen_run on the query rank, each token fed as a context-parallel
 * step; the other ranks serve the steps. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "worker/cp.h"

static int cp__feed(void *data, const int32_t *tokens, int64_t n) { return sr_cp_feed(data, tokens, n); }

int sr_cp_generate(sr_cp *cp, const sr_tokenizer *tok, const int32_t *query, int64_t n_query,
                   const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats) {
    if (!cp) return sr_error_set(SR_EINVAL, "sr_cp_generate: NULL handle");
    if (!sr_cp_is_query_rank(cp)) return sr_cp_serve(cp);
    if (!tok || !p || !stats || n_query < 0 || (n_query > 0 && !query)) {
        int rc = sr_error_set(SR_EINVAL, "sr_cp_generate: bad arguments (%lld query tokens)", (long long)n_query);
        sr_cp_abort(cp, rc); /* the other ranks are waiting for steps */
        return rc;
    }
    int rc = sr_gen_run_fed(sr_cp_model(cp), cp__feed, cp, tok, query, n_query, p, emit, data, stats);
    if (rc != SR_OK) {
        sr_cp_abort(cp, rc);
        return rc;
    }
    return sr_cp_end(cp);
}

int sr_cp_encode(const sr_tokenizer *tok, const char *context, size_t context_len, const char *question, int chat,
                 const char *system, int32_t **ctx, int64_t *n_ctx, int32_t **q, int64_t *n_q) {
    *ctx = *q = NULL;
    *n_ctx = *n_q = 0;
    if (!tok || !context) return sr_error_set(SR_EINVAL, "sr_cp_encode: no context");
    size_t lc = context_len, lq = question ? strlen(question) : 0;
    char *user = NULL, *full = NULL;
    const char *text = context, *rest = question ? question : "";
    size_t cut = lc, n_rest = lq;
    int rc = SR_OK;
    if (chat) {
        if (lc > SIZE_MAX - lq - 2) return sr_error_set(SR_ERANGE, "a context of %zu bytes is too long", lc);
        size_t lu = lc + (question ? 1 + lq : 0), n_full = 0;
        user = malloc(lu + 1);
        if (!user) return sr_error_set(SR_ENOMEM, "out of memory for the prompt");
        memcpy(user, context, lc);
        if (question) {
            user[lc] = '\n';
            memcpy(user + lc + 1, question, lq);
        }
        rc = sr_tok_chat_prompt(tok, system, user, lu, &full, &n_full);
        /* a template that rewrites the message leaves no place to cut: all
         * of it is context then */
        const char *at = full ? memmem(full, n_full, user, lu) : NULL;
        text = full;
        cut = at ? (size_t)(at - full) + lc : n_full;
        rest = full ? full + cut : "";
        n_rest = n_full - cut;
    }
    if (rc == SR_OK) rc = sr_tok_encode(tok, text, cut, chat, 1, ctx, n_ctx);
    if (rc == SR_OK && n_rest) rc = sr_tok_encode(tok, rest, n_rest, chat, 0, q, n_q);
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
