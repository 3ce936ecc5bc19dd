/* chat: the prompt text for one user turn (with an optional system message)
 * in the model's chat format. We do not run Jinja; the family is recognised
 * from marker strings in tokenizer.chat_template, and unknown templates fall
 * back to ChatML. BOS is not part of the text: encode with add_bos. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "tokenizer/internal.h"

enum { FAM_CHATML, FAM_LLAMA3, FAM_LLAMA2 };

static char *fmt__alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *fmt__alloc(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* A default system message written literally in a ChatML template, as in
 * '<|im_start|>system\nYou are a helpful AI assistant ...<|im_end|>' (the
 * newline may be a real one or the escape \n). A candidate that holds a quote
 * is template code around message['content'], not a literal, and is skipped.
 * Returns a malloc'ed string or NULL. */
static char *chatml__default_system(const char *tmpl) {
    static const char start[] = "<|im_start|>system";
    for (const char *p = strstr(tmpl, start); p; p = strstr(p + 1, start)) {
        const char *q = p + strlen(start);
        if (*q == '\n') q += 1;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        size_t n = (size_t)(end - q);
        if (memchr(q, '\'', n) || memchr(q, '"', n) || memchr(q, '{', n)) continue;
        char *s = malloc(n + 1);
        if (!s) return NULL;
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

static int family__of(const char *tmpl) {
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

char *sr_chat_prompt(const sr_tokenizer *t, const char *system, const char *user) {
    if (!t || !user) {
        sr_error_set(SR_EINVAL, "sr_chat_prompt: NULL argument");
        return NULL;
    }
    const char *tmpl = t->chat_template;
    char *out = NULL;
    switch (family__of(tmpl)) {
    case FAM_LLAMA3:
        if (system)
            out = fmt__alloc("<|start_header_id|>system<|end_header_id|>\n\n%s<|eot_id|>"
                             "<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n", system, user);
        else
            out = fmt__alloc("<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n", user);
        break;
    case FAM_LLAMA2:
        if (system && strstr(tmpl, "<<SYS>>"))
            out = fmt__alloc("[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]", system, user);
        else if (system) /* Mistral-style templates fold the system text into the first turn */
            out = fmt__alloc("[INST] %s\n\n%s [/INST]", system, user);
        else
            out = fmt__alloc("[INST] %s [/INST]", user);
        break;
    default: {
        char *dflt = system || !tmpl ? NULL : chatml__default_system(tmpl);
        const char *sys = system ? system : dflt;
        if (sys)
            out = fmt__alloc("<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", sys, user);
        else
            out = fmt__alloc("<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
        free(dflt);
        break;
    }
    }
    if (!out) sr_error_set(SR_ENOMEM, "chat: out of memory for the prompt");
    return out;
}
