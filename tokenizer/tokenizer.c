/* tokenizer: the vocabulary read from tokenizer.* GGUF metadata, the text ->
 * id hash map, special tokens, and encode / decode dispatch to the byte-level
 * BPE (tokenizer_bpe.c) and SentencePiece (tokenizer_spm.c) encoders. */
#include "tokenizer/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "tokenizer/internal.h"

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

static uint64_t hash__bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int32_t sr_tok__find(const sr_tokenizer *t, const char *s, size_t n) {
    uint64_t i = hash__bytes(s, n) & t->map_mask;
    for (;; i = (i + 1) & t->map_mask) {
        int32_t slot = t->map[i];
        if (slot == 0) return -1;
        int32_t id = slot - 1;
        int64_t len = t->text_off[id + 1] - t->text_off[id];
        if ((size_t)len == n && memcmp(t->text + t->text_off[id], s, n) == 0) return id;
    }
}

/* ---- reading the metadata ---- */

static int str__eq(sr_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

/* An array-valued key of the expected element type, or NULL when absent. */
static int arr__get(const sr_gguf *g, const char *key, int required, const sr_gguf_kv **out) {
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

static int arr__check_numeric(const sr_gguf *g, const sr_gguf_kv *kv, const char *key, int64_t n) {
    if (kv->arr_type != SR_GGUF_I32 && kv->arr_type != SR_GGUF_U32 && kv->arr_type != SR_GGUF_F32)
        return sr_error_set(SR_EFORMAT, "GGUF %s has element type %u; expected a 32-bit number", key, kv->arr_type);
    if ((int64_t)kv->arr_len != n)
        return sr_error_set(SR_EFORMAT, "GGUF %s has %llu entries but the vocabulary has %lld tokens", key,
                            (unsigned long long)kv->arr_len, (long long)n);
    if (kv->data < g->map || (uint64_t)(g->map + g->map_size - kv->data) / 4 < (uint64_t)n)
        return sr_error_set(SR_EFORMAT, "GGUF %s runs past the end of the file", key);
    return SR_OK;
}

static double arr__num(const sr_gguf_kv *kv, int64_t i) {
    const uint8_t *p = kv->data + 4 * i;
    switch (kv->arr_type) {
    case SR_GGUF_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case SR_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { float v; memcpy(&v, p, 4); return v; }
    }
}

/* Optional token id key: -1 when absent. */
static int id__get(const sr_gguf *g, const char *key, int64_t n_vocab, int32_t dflt, int32_t *out) {
    uint32_t v;
    *out = dflt;
    if (!sr_gguf_find(g, key)) return SR_OK;
    int rc = sr_gguf_get_u32(g, key, &v);
    if (rc) return rc;
    if ((int64_t)v >= n_vocab)
        return sr_error_set(SR_EFORMAT, "GGUF %s is %u, past the vocabulary of %lld tokens", key, v, (long long)n_vocab);
    *out = (int32_t)v;
    return SR_OK;
}

static int bool__get(const sr_gguf *g, const char *key, int dflt, int *out) {
    *out = dflt;
    if (!sr_gguf_find(g, key)) return SR_OK;
    return sr_gguf_get_bool(g, key, out);
}

/* ---- building ---- */

static int vocab__load(sr_tokenizer *t, const sr_gguf *g) {
    const sr_gguf_kv *tokens, *types, *scores;
    int rc;
    if ((rc = arr__get(g, "tokenizer.ggml.tokens", 1, &tokens))) return rc;
    if (tokens->arr_type != SR_GGUF_STRING) return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.tokens is not an array of strings");
    if (tokens->arr_len == 0 || tokens->arr_len >= INT32_MAX)
        return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.tokens has %llu entries", (unsigned long long)tokens->arr_len);
    int64_t n = (int64_t)tokens->arr_len;
    t->n_vocab = n;

    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += (int64_t)sr_gguf_arr_str(tokens, (uint64_t)i).len;
    t->text = malloc((size_t)total + 1);
    t->text_off = malloc((size_t)(n + 1) * sizeof(int64_t));
    t->type = malloc((size_t)n * sizeof(int32_t));
    t->score = calloc((size_t)n, sizeof(float));
    t->eog = calloc((size_t)n, 1);
    uint64_t slots = 1;
    while (slots < 2 * (uint64_t)n) slots <<= 1;
    t->map = calloc(slots, sizeof(int32_t));
    t->map_mask = slots - 1;
    if (!t->text || !t->text_off || !t->type || !t->score || !t->eog || !t->map)
        return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for a vocabulary of %lld tokens", (long long)n);

    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        sr_gguf_str s = sr_gguf_arr_str(tokens, (uint64_t)i);
        memcpy(t->text + off, s.ptr, s.len);
        t->text_off[i] = off;
        off += (int64_t)s.len;
        t->text_off[i + 1] = off;
        t->type[i] = SR_TOK_NORMAL;
        /* a duplicate string keeps its first id, as other runtimes do */
        if (sr_tok__find(t, s.ptr, s.len) < 0) {
            uint64_t h = hash__bytes(s.ptr, s.len) & t->map_mask;
            while (t->map[h]) h = (h + 1) & t->map_mask;
            t->map[h] = (int32_t)i + 1;
        }
    }

    if ((rc = arr__get(g, "tokenizer.ggml.token_type", 0, &types))) return rc;
    if (types) {
        if ((rc = arr__check_numeric(g, types, "tokenizer.ggml.token_type", n))) return rc;
        for (int64_t i = 0; i < n; i++) t->type[i] = (int32_t)arr__num(types, i);
    }
    if ((rc = arr__get(g, "tokenizer.ggml.scores", 0, &scores))) return rc;
    if (scores) {
        if ((rc = arr__check_numeric(g, scores, "tokenizer.ggml.scores", n))) return rc;
        for (int64_t i = 0; i < n; i++) t->score[i] = (float)arr__num(scores, i);
    }
    return SR_OK;
}

/* What each token decodes to: byte-level BPE undoes the gpt2 byte map,
 * SentencePiece turns U+2581 into spaces and <0xXX> into bytes; control,
 * user-defined and unknown tokens are their own text. */
static int pieces__build(sr_tokenizer *t) {
    int64_t n = t->n_vocab;
    t->piece = malloc((size_t)t->text_off[n] + 1);
    t->piece_off = malloc((size_t)(n + 1) * sizeof(int64_t));
    if (!t->piece || !t->piece_off) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for token pieces");
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *s = t->text + t->text_off[i];
        size_t len = (size_t)(t->text_off[i + 1] - t->text_off[i]);
        int ty = t->type[i];
        t->piece_off[i] = off;
        if (ty == SR_TOK_CONTROL || ty == SR_TOK_USER_DEFINED || ty == SR_TOK_UNKNOWN) {
            memcpy(t->piece + off, s, len);
            off += (int64_t)len;
        } else if (t->kind == SR_TOK_KIND_BPE) {
            off += (int64_t)sr_tok__bpe_unmap(s, len, t->piece + off);
        } else {
            off += (int64_t)sr_tok__spm_unmap(s, len, ty, t->piece + off);
        }
    }
    t->piece_off[n] = off;
    return SR_OK;
}

typedef struct {
    int first, len;
    int32_t id;
} special__ent;

static int special__cmp(const void *a, const void *b) {
    const special__ent *x = a, *y = b;
    if (x->first != y->first) return x->first - y->first;
    if (x->len != y->len) return y->len - x->len;
    return (x->id > y->id) - (x->id < y->id);
}

static int special__build(sr_tokenizer *t) {
    int64_t n = t->n_vocab, k = 0;
    for (int64_t i = 0; i < n; i++) {
        int ty = t->type[i];
        if ((ty == SR_TOK_CONTROL || ty == SR_TOK_USER_DEFINED || ty == SR_TOK_UNKNOWN) && t->text_off[i + 1] > t->text_off[i]) k++;
    }
    special__ent *e = malloc((size_t)(k ? k : 1) * sizeof(*e));
    t->special = malloc((size_t)(k ? k : 1) * sizeof(int32_t));
    if (!e || !t->special) {
        free(e);
        return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for special tokens");
    }
    k = 0;
    for (int64_t i = 0; i < n; i++) {
        int ty = t->type[i];
        int64_t len = t->text_off[i + 1] - t->text_off[i];
        if ((ty == SR_TOK_CONTROL || ty == SR_TOK_USER_DEFINED || ty == SR_TOK_UNKNOWN) && len > 0) {
            e[k].first = (unsigned char)t->text[t->text_off[i]];
            e[k].len = len > INT32_MAX ? INT32_MAX : (int)len;
            e[k].id = (int32_t)i;
            k++;
        }
    }
    qsort(e, (size_t)k, sizeof(*e), special__cmp);
    int64_t j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < k && e[j].first < b) j++;
        t->first_at[b] = j;
    }
    for (int64_t i = 0; i < k; i++) t->special[i] = e[i].id;
    t->n_special = k;
    free(e);
    return SR_OK;
}

static void eog__mark(sr_tokenizer *t, const sr_gguf *g) {
    static const char *const keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    static const char *const texts[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|end_of_text|>"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        int32_t id;
        if (id__get(g, keys[k], t->n_vocab, -1, &id) == SR_OK && id >= 0) t->eog[id] = 1;
    }
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
        int32_t id = sr_tok__find(t, texts[k], strlen(texts[k]));
        if (id >= 0 && (t->type[id] == SR_TOK_CONTROL || t->type[id] == SR_TOK_USER_DEFINED)) t->eog[id] = 1;
    }
    sr_error_clear();
}

static int tok__build(sr_tokenizer *t, const sr_gguf *g) {
    sr_gguf_str model, pre = {NULL, 0}, tmpl;
    int rc = sr_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc) return rc;
    if (str__eq(model, "gpt2")) t->kind = SR_TOK_KIND_BPE;
    else if (str__eq(model, "llama")) t->kind = SR_TOK_KIND_SPM;
    else
        return sr_error_set(SR_EUNSUPPORTED, "tokenizer.ggml.model \"%.*s\" is not supported (only \"gpt2\" and \"llama\")",
                            (int)(model.len > 64 ? 64 : model.len), model.ptr);
    if ((rc = vocab__load(t, g))) return rc;
    int spm = t->kind == SR_TOK_KIND_SPM;
    if ((rc = id__get(g, "tokenizer.ggml.bos_token_id", t->n_vocab, spm ? 1 : -1, &t->bos))) return rc;
    if ((rc = id__get(g, "tokenizer.ggml.eos_token_id", t->n_vocab, spm ? 2 : -1, &t->eos))) return rc;
    if ((rc = id__get(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, spm ? 0 : -1, &t->unk))) return rc;
    if ((rc = bool__get(g, "tokenizer.ggml.add_bos_token", spm, &t->add_bos))) return rc;
    if ((rc = bool__get(g, "tokenizer.ggml.add_space_prefix", spm, &t->add_space_prefix))) return rc;
    if (sr_gguf_find(g, "tokenizer.chat_template")) {
        if ((rc = sr_gguf_get_str(g, "tokenizer.chat_template", &tmpl))) return rc;
        t->chat_template = malloc(tmpl.len + 1);
        if (!t->chat_template) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for the chat template");
        memcpy(t->chat_template, tmpl.ptr, tmpl.len);
        t->chat_template[tmpl.len] = 0;
    }
    if ((rc = pieces__build(t))) return rc;
    if ((rc = special__build(t))) return rc;
    eog__mark(t, g);
    if (spm) return sr_tok__spm_init(t);
    if (sr_gguf_find(g, "tokenizer.ggml.pre") && (rc = sr_gguf_get_str(g, "tokenizer.ggml.pre", &pre))) return rc;
    return sr_tok__bpe_init(t, g, pre.ptr, (size_t)pre.len);
}

int sr_tok_from_gguf(sr_tokenizer **out, const sr_gguf *g) {
    if (!out || !g) return sr_error_set(SR_EINVAL, "sr_tok_from_gguf: NULL argument");
    *out = NULL;
    sr_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory");
    int rc = tok__build(t, g);
    if (rc) {
        sr_tok_free(t);
        return rc;
    }
    SR_DEBUG("tokenizer: %s, %lld tokens, %lld special", t->kind == SR_TOK_KIND_BPE ? "byte-level BPE" : "SentencePiece",
             (long long)t->n_vocab, (long long)t->n_special);
    *out = t;
    return SR_OK;
}

void sr_tok_free(sr_tokenizer *t) {
    if (!t) return;
    sr_tok__bpe_free(t);
    free(t->text);
    free(t->text_off);
    free(t->piece);
    free(t->piece_off);
    free(t->type);
    free(t->score);
    free(t->eog);
    free(t->map);
    free(t->special);
    free(t->chat_template);
    free(t);
}

/* ---- encoding and decoding ---- */

/* Longest special token that starts at text[0], or -1. */
static int32_t special__at(const sr_tokenizer *t, const char *text, size_t len, int parse_special, size_t *tlen) {
    unsigned char b = (unsigned char)text[0];
    for (int64_t k = t->first_at[b]; k < t->first_at[b + 1]; k++) {
        int32_t id = t->special[k];
        if (!parse_special && t->type[id] != SR_TOK_USER_DEFINED) continue;
        size_t n = (size_t)(t->text_off[id + 1] - t->text_off[id]);
        if (n <= len && memcmp(text, t->text + t->text_off[id], n) == 0) {
            *tlen = n;
            return id;
        }
    }
    return -1;
}

/* Text between special tokens. SentencePiece puts its space prefix before
 * every such fragment, since each one starts the text or follows a special token. */
static int raw__encode(const sr_tokenizer *t, const char *text, size_t len, sr_tok__ids *ids) {
    if (len == 0) return SR_OK;
    if (t->kind == SR_TOK_KIND_BPE) return sr_tok__bpe_encode(t, text, len, ids);
    return sr_tok__spm_encode(t, text, len, t->add_space_prefix, ids);
}

int sr_tok_encode(const sr_tokenizer *t, const char *text, size_t len, int parse_special, int add_bos,
                  int32_t **ids, int64_t *n_ids) {
    if (!t || !ids || !n_ids || (!text && len)) return sr_error_set(SR_EINVAL, "sr_tok_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    sr_tok__ids v = {0};
    int rc = SR_OK;
    if (add_bos && t->add_bos && t->bos >= 0) rc = sr_tok__push(&v, t->bos);
    /* user-defined tokens are always matched; control ones only when asked */
    size_t start = 0, pos = 0;
    while (!rc && t->n_special > 0 && pos < len) {
        size_t tl;
        int32_t id = special__at(t, text + pos, len - pos, parse_special, &tl);
        if (id < 0) {
            pos++;
            continue;
        }
        rc = raw__encode(t, text + start, pos - start, &v);
        if (!rc) rc = sr_tok__push(&v, id);
        pos += tl;
        start = pos;
    }
    if (!rc) rc = raw__encode(t, text + start, len - start, &v);
    /* an empty result is still an allocation, so that callers need no special case */
    if (!rc && !v.v && !(v.v = malloc(sizeof(int32_t)))) rc = sr_error_set(SR_ENOMEM, "tokenizer: out of memory");
    if (rc) {
        free(v.v);
        return rc;
    }
    *ids = v.v;
    *n_ids = v.n;
    return SR_OK;
}

int sr_tok_piece(const sr_tokenizer *t, int32_t id, char *buf, size_t cap) {
    if (!t || (!buf && cap)) return sr_error_set(SR_EINVAL, "sr_tok_piece: NULL argument");
    if (id < 0 || id >= t->n_vocab)
        return sr_error_set(SR_EINVAL, "token id %d is outside the vocabulary of %lld tokens", id, (long long)t->n_vocab);
    size_t n = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    if (n > cap) return sr_error_set(SR_ERANGE, "token %d decodes to %zu bytes; the buffer holds %zu", id, n, cap);
    if (n) memcpy(buf, t->piece + t->piece_off[id], n);
    return (int)n;
}

int32_t sr_tok_bos(const sr_tokenizer *t) { return t->bos; }
int32_t sr_tok_eos(const sr_tokenizer *t) { return t->eos; }
int64_t sr_tok_vocab_size(const sr_tokenizer *t) { return t->n_vocab; }

int sr_tok_is_eog(const sr_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->eog[id];
}
