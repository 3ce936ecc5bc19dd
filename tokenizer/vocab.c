/* vocab: the vocabulary from tokenizer.* GGUF metadata and its text -> id
 * map (see vocab.h). */
#include "tokenizer/vocab.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

int sr_tok__push(sr_tok__ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        int64_t cap = ids->cap ? 2 * ids->cap : 64;
        int32_t *v = realloc(ids->v, (size_t)cap * sizeof(*v));
        if (!v) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for %lld token ids", (long long)cap);
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return SR_OK;
}

size_t sr_tok__utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    uint32_t min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) len = 2, min = 0x80;
    else if ((c & 0xf0) == 0xe0) len = 3, min = 0x800;
    else if ((c & 0xf8) == 0xf0) len = 4, min = 0x10000;
    else return 1;
    if (len > n) return 1;
    uint32_t cp = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 1;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* overlong forms, surrogates and values past U+10FFFF are invalid too */
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 1;
    return len;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int32_t sr_tok__vocab_find(const sr_tok__vocab *v, const char *s, size_t n) {
    uint64_t i = hash_bytes(s, n) & v->map_mask;
    for (;; i = (i + 1) & v->map_mask) {
        int32_t slot = v->map[i];
        if (slot == 0) return -1;
        size_t len;
        const char *t = sr_tok__vocab_text(v, slot - 1, &len);
        if (len == n && memcmp(t, s, n) == 0) return slot - 1;
    }
}

/* An array-valued key, or NULL when it is absent and not required. */
static int array_get(const sr_gguf *g, const char *key, int required, const sr_gguf_kv **out) {
    const sr_gguf_kv *kv = sr_gguf_find(g, key);
    *out = NULL;
    if (!kv) {
        if (required) return sr_error_set(SR_EFORMAT, "GGUF has no %s: the file carries no tokenizer", key);
        return SR_OK;
    }
    if (kv->type != SR_GGUF_ARRAY) return sr_error_set(SR_EFORMAT, "GGUF key %s is not an array", key);
    *out = kv;
    return SR_OK;
}

static int array_check_numeric(const sr_gguf *g, const sr_gguf_kv *kv, const char *key, int64_t n) {
    if (kv->arr_type != SR_GGUF_I32 && kv->arr_type != SR_GGUF_U32 && kv->arr_type != SR_GGUF_F32)
        return sr_error_set(SR_EFORMAT, "GGUF %s has element type %u; expected a 32-bit number", key, kv->arr_type);
    if ((int64_t)kv->arr_len != n)
        return sr_error_set(SR_EFORMAT, "GGUF %s has %llu entries but the vocabulary has %lld tokens", key,
                            (unsigned long long)kv->arr_len, (long long)n);
    if (kv->data < g->map || (uint64_t)(g->map + g->map_size - kv->data) / 4 < (uint64_t)n)
        return sr_error_set(SR_EFORMAT, "GGUF %s runs past the end of the file", key);
    return SR_OK;
}

static double array_num(const sr_gguf_kv *kv, int64_t i) {
    const uint8_t *p = kv->data + 4 * i;
    switch (kv->arr_type) {
    case SR_GGUF_I32: { int32_t x; memcpy(&x, p, 4); return x; }
    case SR_GGUF_U32: { uint32_t x; memcpy(&x, p, 4); return x; }
    default: { float x; memcpy(&x, p, 4); return x; }
    }
}

int sr_tok__vocab_load(sr_tok__vocab *v, const sr_gguf *g) {
    const sr_gguf_kv *tokens, *types, *scores;
    int rc;
    memset(v, 0, sizeof(*v));
    if ((rc = array_get(g, "tokenizer.ggml.tokens", 1, &tokens))) return rc;
    if (tokens->arr_type != SR_GGUF_STRING)
        return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.tokens is not an array of strings");
    if (tokens->arr_len == 0 || tokens->arr_len >= INT32_MAX)
        return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.tokens has %llu entries (1..%d allowed)",
                            (unsigned long long)tokens->arr_len, INT32_MAX - 1);
    int64_t n = (int64_t)tokens->arr_len;
    v->n = n;

    /* the strings lie in the file, so their total is below its size */
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += (int64_t)sr_gguf_arr_str(tokens, (uint64_t)i).len;
    v->text = malloc((size_t)total + 1);
    v->text_off = malloc((size_t)(n + 1) * sizeof(int64_t));
    v->type = malloc((size_t)n * sizeof(int32_t));
    v->score = calloc((size_t)n, sizeof(float));
    uint64_t slots = 1;
    while (slots < 2 * (uint64_t)n) slots <<= 1;
    v->map = calloc(slots, sizeof(int32_t));
    v->map_mask = slots - 1;
    if (!v->text || !v->text_off || !v->type || !v->score || !v->map)
        return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for a vocabulary of %lld tokens", (long long)n);

    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        sr_gguf_str s = sr_gguf_arr_str(tokens, (uint64_t)i);
        memcpy(v->text + off, s.ptr, s.len);
        v->text_off[i] = off;
        off += (int64_t)s.len;
        v->text_off[i + 1] = off;
        v->type[i] = SR_TOK__NORMAL;
        /* a duplicate string keeps its first id, as other runtimes do */
        if (sr_tok__vocab_find(v, s.ptr, s.len) < 0) {
            uint64_t h = hash_bytes(s.ptr, s.len) & v->map_mask;
            while (v->map[h]) h = (h + 1) & v->map_mask;
            v->map[h] = (int32_t)i + 1;
        }
    }

    if ((rc = array_get(g, "tokenizer.ggml.token_type", 0, &types))) return rc;
    if (types) {
        if ((rc = array_check_numeric(g, types, "tokenizer.ggml.token_type", n))) return rc;
        for (int64_t i = 0; i < n; i++) {
            double x = array_num(types, i); /* a float array may hold anything: no known type then */
            v->type[i] = x >= INT32_MIN && x <= INT32_MAX ? (int32_t)x : 0;
        }
    }
    if ((rc = array_get(g, "tokenizer.ggml.scores", 0, &scores))) return rc;
    if (scores) {
        if ((rc = array_check_numeric(g, scores, "tokenizer.ggml.scores", n))) return rc;
        for (int64_t i = 0; i < n; i++) v->score[i] = (float)array_num(scores, i);
    }
    return SR_OK;
}

void sr_tok__vocab_free(sr_tok__vocab *v) {
    free(v->text);
    free(v->text_off);
    free(v->type);
    free(v->score);
    free(v->map);
    memset(v, 0, sizeof(*v));
}
