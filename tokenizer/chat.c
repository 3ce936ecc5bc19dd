/* chat: the prompt text for one user turn (with an optional system message)
 * in the model's chat format. We do not run Jinja; the family is recognised
 * from marker strings in tokenizer.chat_template, and unknown templates fall
 * back to ChatML. BOS is not part of the text: encode with add_bos.
 *
 * Every scan of the template is linear in its length, so that a hostile
 * template (megabytes of repeated markers) costs no more than reading it. */
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/status.h"
#include "tokenizer/internal.h"

enum { FAM_CHATML, FAM_LLAMA3, FAM_LLAMA2 };

/* First occurrence of pat (m bytes) in [s, end), or NULL. A plain scan, so
 * that the cost stays what is scanned: strstr under the sanitizers measures
 * the whole rest of the string on every call. */
static const char *find(const char *s, const char *end, const char *pat, size_t m) {
    for (; (size_t)(end - s) >= m; s++)
        if (*s == pat[0] && memcmp(s, pat, m) == 0) return s;
    return NULL;
}

/* First quote or brace in [s, end), or NULL. */
static const char *find_code(const char *s, const char *end) {
    for (; s < end; s++)
        if (*s == '\'' || *s == '"' || *s == '{') return s;
    return NULL;
}

/* A default system message written literally in a ChatML template, as in
 * '<|im_start|>system\nYou are a helpful AI assistant ...<|im_end|>' (the
 * newline may be a real one or the escape \n). A candidate that holds a quote
 * or a brace is template code around message['content'], not a literal, and
 * is skipped. The next <|im_end|> and the next quote or brace only move
 * forward as the candidates do, so each byte is looked at a bounded number of
 * times. Returns a malloc'ed string, or NULL (*oom set when allocation failed). */
static char *chatml_default_system(const char *tmpl, int *oom) {
    static const char start[] = "<|im_start|>system", stop[] = "<|im_end|>";
    const size_t ls = sizeof start - 1, lstop = sizeof stop - 1;
    const char *all = tmpl + strlen(tmpl), *end = tmpl, *code = tmpl;
    for (const char *p = find(tmpl, all, start, ls); p; p = find(p + 1, all, start, ls)) {
        const char *q = p + ls;
        if (*q == '\n') q += 1;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        if (end < q) end = find(q, all, stop, lstop);
        if (!end) return NULL; /* no <|im_end|> after here: no later candidate has one either */
        if (code && code < q) code = find_code(q, all);
        if (end == q || (code && code < end)) continue;
        size_t n = (size_t)(end - q);
        char *s = malloc(n + 1);
        if (!s) {
            *oom = 1;
            return NULL;
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            if (q[i] == '\\' && i + 1 < n && q[i + 1] == 'n') s[o++] = '\n', i++;
            else s[o++] = q[i];
        }
        s[o] = 0;
        return s;
    }
    return NULL;
}

static int family_of(const char *tmpl) {
    if (!tmpl) {
        SR_WARN("chat: the model has no tokenizer.chat_template; using ChatML");
        return FAM_CHATML;
    }
    if (strstr(tmpl, "<|im_start|>")) return FAM_CHATML;
    if (strstr(tmpl, "<|start_header_id|>")) return FAM_LLAMA3;
    if (strstr(tmpl, "[INST]")) return FAM_LLAMA2;
    SR_WARN("chat: chat template not recognised (not ChatML, Llama 3 or Llama 2); using ChatML");
    return FAM_CHATML;
}

/* one user message, after an optional system one: a conversation of its own */
int sr_tok_chat_prompt(const sr_tokenizer *t, const char *system, const char *user, size_t user_len, char **out,
                       size_t *out_len) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out || !out_len || (!user && user_len))
        return sr_error_set(SR_EINVAL, "sr_tok_chat_prompt: NULL argument");
    sr_chat_msg m[2];
    int n = 0;
    if (system) m[n++] = (sr_chat_msg){"system", system, strlen(system)};
    m[n++] = (sr_chat_msg){"user", user, user_len};
    return sr_tok_chat_render(t, m, n, out, out_len);
}

int sr_tok_chat_render(const sr_tokenizer *t, const sr_chat_msg *m, int n, char **out, size_t *out_len) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out || !out_len || n < 0 || (n && !m)) return sr_error_set(SR_EINVAL, "sr_tok_chat_render: NULL argument");
    const char *tmpl = t->chat_template;
    int fam = family_of(tmpl);
    sr_buf b = {0};
    int oom = 0;
    char *dflt = NULL;
    const char *system = NULL;
    int first = 0;
    if (n > 0 && strcmp(m[0].role, "system") == 0) system = m[0].content, first = 1;
    else if (fam == FAM_CHATML && tmpl) system = dflt = chatml_default_system(tmpl, &oom);
    if (fam == FAM_CHATML && system) {
        sr_buf_puts(&b, "<|im_start|>system\n");
        sr_buf_append(&b, system, first ? m[0].len : strlen(system));
        sr_buf_puts(&b, "<|im_end|>\n");
    } else if (fam == FAM_LLAMA3 && system) {
        sr_buf_puts(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
        sr_buf_append(&b, system, m[0].len);
        sr_buf_puts(&b, "<|eot_id|>");
    }
    for (int i = first; i < n; i++) {
        int user = strcmp(m[i].role, "user") == 0;
        if (fam == FAM_CHATML) {
            sr_buf_puts(&b, "<|im_start|>");
            sr_buf_puts(&b, m[i].role);
            sr_buf_puts(&b, "\n");
            sr_buf_append(&b, m[i].content, m[i].len);
            sr_buf_puts(&b, "<|im_end|>\n");
        } else if (fam == FAM_LLAMA3) {
            sr_buf_puts(&b, "<|start_header_id|>");
            sr_buf_puts(&b, m[i].role);
            sr_buf_puts(&b, "<|end_header_id|>\n\n");
            sr_buf_append(&b, m[i].content, m[i].len);
            sr_buf_puts(&b, "<|eot_id|>");
        } else if (user) { /* Llama 2: the system text folds into the first turn */
            sr_buf_puts(&b, "[INST] ");
            if (system && i == first) {
                if (strstr(tmpl, "<<SYS>>")) sr_buf_puts(&b, "<<SYS>>\n");
                sr_buf_append(&b, system, m[0].len);
                sr_buf_puts(&b, strstr(tmpl, "<<SYS>>") ? "\n<</SYS>>\n\n" : "\n\n");
            }
            sr_buf_append(&b, m[i].content, m[i].len);
            sr_buf_puts(&b, " [/INST]");
        } else {
            sr_buf_puts(&b, " ");
            sr_buf_append(&b, m[i].content, m[i].len);
            sr_buf_puts(&b, " </s><s>");
        }
    }
    if (fam == FAM_CHATML) sr_buf_puts(&b, "<|im_start|>assistant\n");
    else if (fam == FAM_LLAMA3) sr_buf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(dflt);
    if (oom || sr_buf_status(&b) != SR_OK) {
        sr_buf_free(&b);
        return sr_error_set(SR_ENOMEM, "chat: out of memory for a conversation of %d messages", n);
    }
    *out = sr_buf_steal(&b, out_len);
    return SR_OK;
}
