/* spm: SentencePiece-style tokenization (tokenizer.ggml.model
 * "llama"). Spaces become U+2581 ("▁"), optionally with one put in front;
 * the text starts as one symbol per UTF-8 character and repeatedly merges
 * the adjacent pair whose concatenation is the vocabulary token of highest
 * score (leftmost first on ties). A symbol left that is not a token is
 * spelled with the <0xXX> byte tokens, so any bytes survive. */
#include "tokenizer/spm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tokenizer/heap.h"

static const char SPACE[] = "\xe2\x96\x81"; /* U+2581 */

void sr_tok__spm_init(sr_tok__spm *spm, const sr_tok__vocab *v, int32_t unk) {
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof(s), "<0x%02X>", b);
        spm->byte_token[b] = sr_tok__vocab_find(v, s, 6);
    }
    spm->unk = unk;
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

size_t sr_tok__spm_unmap(const char *s, size_t n, int type, char *out) {
    if (type == SR_TOK__BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hex_val(s[3]) >= 0 && hex_val(s[4]) >= 0) {
        out[0] = (char)(hex_val(s[3]) * 16 + hex_val(s[4]));
        return 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (n - i >= 3 && memcmp(s + i, SPACE, 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

typedef struct {
    float score;
    int32_t left, right;
    int32_t size; /* bytes of the pair when queued; stale once either side changed */
} cand;

static int cand_before(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    const sr_tok__vocab *v;
    const char *s;
    int32_t *start, *len, *prev, *next;
    sr_tok__heap heap; /* of cand */
} work;

static int queue_pair(work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return SR_OK;
    int32_t size = w->len[l] + w->len[r];
    int32_t id = sr_tok__vocab_find(w->v, w->s + w->start[l], (size_t)size);
    if (id < 0) return SR_OK;
    cand c = {w->v->score[id], l, r, size};
    return sr_tok__heap_push(&w->heap, &c);
}

static int emit_symbol(const sr_tok__spm *spm, const sr_tok__vocab *v, const char *s, int32_t n, sr_tok__ids *ids) {
    int32_t id = sr_tok__vocab_find(v, s, (size_t)n);
    if (id >= 0) return sr_tok__push(ids, id);
    for (int32_t i = 0; i < n; i++) {
        id = spm->byte_token[(unsigned char)s[i]];
        if (id < 0) id = spm->unk;
        int rc = id >= 0 ? sr_tok__push(ids, id) : SR_OK;
        if (rc) return rc;
    }
    return SR_OK;
}

int sr_tok__spm_encode(const sr_tok__spm *spm, const sr_tok__vocab *v, const char *text, size_t len, int add_prefix,
                       sr_tok__ids *ids) {
    if (len > INT32_MAX / 4) return sr_error_set(SR_ERANGE, "tokenizer: a text fragment of %zu bytes is too long for SentencePiece", len);
    size_t cap = 3 * len + 3;
    char *s = malloc(cap);
    work w = {.v = v, .s = s, .heap = {.size = sizeof(cand), .before = cand_before}};
    w.start = malloc(cap * sizeof(int32_t));
    w.len = malloc(cap * sizeof(int32_t));
    w.prev = malloc(cap * sizeof(int32_t));
    w.next = malloc(cap * sizeof(int32_t));
    int rc = SR_OK;
    if (!s || !w.start || !w.len || !w.prev || !w.next) {
        rc = sr_error_set(SR_ENOMEM, "tokenizer: out of memory for a text of %zu bytes", len);
        goto out;
    }
    size_t n = 0;
    if (add_prefix) memcpy(s, SPACE, 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(s + n, SPACE, 3), n += 3;
        else s[n++] = text[i];
    }
    int32_t n_sym = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = sr_tok__utf8_len((const unsigned char *)s + i, n - i);
        w.start[n_sym] = (int32_t)i;
        w.len[n_sym] = (int32_t)cl;
        w.prev[n_sym] = n_sym - 1;
        w.next[n_sym] = -1;
        if (n_sym) w.next[n_sym - 1] = n_sym;
        n_sym++;
        i += cl;
    }
    for (int32_t i = 1; i < n_sym && !rc; i++) rc = queue_pair(&w, i - 1, i);
    while (!rc && w.heap.n) {
        cand c;
        sr_tok__heap_pop(&w.heap, &c);
        if (w.len[c.left] == 0 || w.len[c.right] == 0 || w.len[c.left] + w.len[c.right] != c.size) continue;
        w.len[c.left] += w.len[c.right];
        w.len[c.right] = 0;
        w.next[c.left] = w.next[c.right];
        if (w.next[c.right] >= 0) w.prev[w.next[c.right]] = c.left;
        rc = queue_pair(&w, w.prev[c.left], c.left);
        if (!rc) rc = queue_pair(&w, c.left, w.next[c.left]);
    }
    for (int32_t i = n_sym ? 0 : -1; i >= 0 && !rc; i = w.next[i]) rc = emit_symbol(spm, v, s + w.start[i], w.len[i], ids);
out:
    free(s);
    free(w.start);
    free(w.len);
    free(w.prev);
    free(w.next);
    free(w.heap.data);
    return rc;
}
