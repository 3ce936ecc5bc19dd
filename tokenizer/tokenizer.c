/* tokenizer: builds a tokenizer from tokenizer.* GGUF metadata over the
 * vocabulary (vocab.c), and dispatches encoding to the special-token finder
 * (special.c) and the byte-level BPE (bpe.c) or SentencePiece (spm.c)
 * encoder; decoding reads the bytes of each token from one table. */
#include "tokenizer/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "tokenizer/internal.h"

/* ---- reading the metadata ---- */

static int str_eq(sr_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

/* An optional token id key: dflt when absent. */
static int get_id(const sr_gguf *g, const char *key, int64_t n_vocab, int32_t dflt, int32_t *out) {
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

static int get_bool(const sr_gguf *g, const char *key, int dflt, int *out) {
    *out = dflt;
    if (!sr_gguf_find(g, key)) return SR_OK;
    return sr_gguf_get_bool(g, key, out);
}

/* ---- building ---- */

/* What each token decodes to: byte-level BPE undoes the gpt2 byte map,
 * SentencePiece turns U+2581 into spaces and <0xXX> into bytes; special
 * tokens are their own text. */
static int build_pieces(sr_tokenizer *t) {
    const sr_tok__vocab *v = &t->vocab;
    t->piece = malloc((size_t)v->text_off[v->n] + 1);
    t->piece_off = malloc((size_t)(v->n + 1) * sizeof(int64_t));
    if (!t->piece || !t->piece_off) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for token pieces");
    int64_t off = 0;
    for (int64_t i = 0; i < v->n; i++) {
        size_t len;
        const char *s = sr_tok__vocab_text(v, (int32_t)i, &len);
        int ty = v->type[i];
        t->piece_off[i] = off;
        if (sr_tok__is_special_type(ty)) {
            memcpy(t->piece + off, s, len);
            off += (int64_t)len;
        } else if (t->kind == SR_TOK__KIND_BPE) {
            off += (int64_t)sr_tok__bpe_unmap(s, len, t->piece + off);
        } else {
            off += (int64_t)sr_tok__spm_unmap(s, len, ty, t->piece + off);
        }
    }
    t->piece_off[v->n] = off;
    return SR_OK;
}

static int mark_eog(sr_tokenizer *t, const sr_gguf *g) {
    static const char *const keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    static const char *const texts[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|end_of_text|>"};
    const sr_tok__vocab *v = &t->vocab;
    t->eog = calloc((size_t)v->n, 1);
    if (!t->eog) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for a vocabulary of %lld tokens", (long long)v->n);
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        int32_t id;
        if (get_id(g, keys[k], v->n, -1, &id) == SR_OK && id >= 0) t->eog[id] = 1;
    }
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
        int32_t id = sr_tok__vocab_find(v, texts[k], strlen(texts[k]));
        if (id >= 0 && (v->type[id] == SR_TOK__CONTROL || v->type[id] == SR_TOK__USER_DEFINED)) t->eog[id] = 1;
    }
    sr_error_clear(); /* a malformed optional key only leaves its token unmarked */
    return SR_OK;
}

static int build(sr_tokenizer *t, const sr_gguf *g) {
    sr_gguf_str model, pre = {NULL, 0}, tmpl;
    int rc = sr_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc) return rc;
    if (str_eq(model, "gpt2")) t->kind = SR_TOK__KIND_BPE;
    else if (str_eq(model, "llama")) t->kind = SR_TOK__KIND_SPM;
    else
        return sr_error_set(SR_EUNSUPPORTED, "tokenizer.ggml.model \"%.*s\" is not supported (only \"gpt2\" and \"llama\")",
                            (int)(model.len > 64 ? 64 : model.len), model.ptr);
    if ((rc = sr_tok__vocab_load(&t->vocab, g))) return rc;
    int64_t n = t->vocab.n;
    int spm = t->kind == SR_TOK__KIND_SPM;
    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", n, spm ? 1 : -1, &t->bos))) return rc;
    if ((rc = get_id(g, "tokenizer.ggml.eos_token_id", n, spm ? 2 : -1, &t->eos))) return rc;
    if ((rc = get_id(g, "tokenizer.ggml.unknown_token_id", n, spm ? 0 : -1, &t->unk))) return rc;
    if ((rc = get_bool(g, "tokenizer.ggml.add_bos_token", spm, &t->add_bos))) return rc;
    if ((rc = get_bool(g, "tokenizer.ggml.add_space_prefix", spm, &t->add_space_prefix))) return rc;
    if (sr_gguf_find(g, "tokenizer.chat_template")) {
        if ((rc = sr_gguf_get_str(g, "tokenizer.chat_template", &tmpl))) return rc;
        t->chat_template = malloc(tmpl.len + 1);
        if (!t->chat_template) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for the chat template");
        memcpy(t->chat_template, tmpl.ptr, tmpl.len);
        t->chat_template[tmpl.len] = 0;
    }
    if ((rc = build_pieces(t)) || (rc = sr_tok__special_build(&t->special, &t->vocab)) || (rc = mark_eog(t, g)))
        return rc;
    if (spm) {
        sr_tok__spm_init(&t->spm, &t->vocab, t->unk);
        return SR_OK;
    }
    if (sr_gguf_find(g, "tokenizer.ggml.pre") && (rc = sr_gguf_get_str(g, "tokenizer.ggml.pre", &pre))) return rc;
    return sr_tok__bpe_init(&t->bpe, &t->vocab, g, pre.ptr, (size_t)pre.len);
}

int sr_tok_from_gguf(sr_tokenizer **out, const sr_gguf *g) {
    if (!out || !g) return sr_error_set(SR_EINVAL, "sr_tok_from_gguf: NULL argument");
    *out = NULL;
    sr_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory");
    int rc = build(t, g);
    if (rc) {
        sr_tok_free(t);
        return rc;
    }
    SR_DEBUG("tokenizer: %s, %lld tokens, %lld special", t->kind == SR_TOK__KIND_BPE ? "byte-level BPE" : "SentencePiece",
             (long long)t->vocab.n, (long long)t->special.n_tokens);
    *out = t;
    return SR_OK;
}

void sr_tok_free(sr_tokenizer *t) {
    if (!t) return;
    sr_tok__bpe_free(&t->bpe);
    sr_tok__special_free(&t->special);
    sr_tok__vocab_free(&t->vocab);
    free(t->piece);
    free(t->piece_off);
    free(t->eog);
    free(t->chat_template);
    free(t);
}

/* ---- encoding and decoding ---- */

/* Text between special tokens. SentencePiece puts its space prefix before
 * every such fragment, since each one starts the text or follows a special token. */
static int encode_raw(const sr_tokenizer *t, const char *text, size_t len, sr_tok__ids *ids) {
    if (len == 0) return SR_OK;
    if (t->kind == SR_TOK__KIND_BPE) return sr_tok__bpe_encode(&t->bpe, &t->vocab, text, len, ids);
    return sr_tok__spm_encode(&t->spm, &t->vocab, text, len, t->add_space_prefix, ids);
}

int sr_tok_encode(const sr_tokenizer *t, const char *text, size_t len, int parse_special, int add_bos,
                  int32_t **ids, int64_t *n_ids) {
    if (!t || !ids || !n_ids || (!text && len)) return sr_error_set(SR_EINVAL, "sr_tok_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    sr_tok__ids v = {0};
    sr_tok__hits hits = {0};
    int rc = SR_OK;
    if (add_bos && t->add_bos && t->bos >= 0) rc = sr_tok__push(&v, t->bos);
    if (!rc) rc = sr_tok__special_find(&t->special, &t->vocab, text, len, parse_special, &hits);
    size_t start = 0;
    for (int64_t i = 0; !rc && i < hits.n; i++) {
        size_t at = (size_t)hits.v[i].pos;
        if (!(rc = encode_raw(t, text + start, at - start, &v))) rc = sr_tok__push(&v, hits.v[i].id);
        start = at + (size_t)hits.v[i].len;
    }
    if (!rc) rc = encode_raw(t, text + start, len - start, &v);
    free(hits.v);
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
    if (id < 0 || id >= t->vocab.n)
        return sr_error_set(SR_EINVAL, "token id %d is outside the vocabulary (0..%lld)", id, (long long)t->vocab.n - 1);
    size_t n = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    if (n > cap || n > INT32_MAX) return sr_error_set(SR_ERANGE, "token %d decodes to %zu bytes; the buffer holds %zu", id, n, cap);
    if (n) memcpy(buf, t->piece + t->piece_off[id], n);
    return (int)n;
}

int32_t sr_tok_bos(const sr_tokenizer *t) { return t->bos; }
int32_t sr_tok_eos(const sr_tokenizer *t) { return t->eos; }
int64_t sr_tok_vocab_size(const sr_tokenizer *t) { return t->vocab.n; }

int sr_tok_is_eog(const sr_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->vocab.n && t->eog[id];
}
