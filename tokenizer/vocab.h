/* vocab: the bottom of the tokenizer: the vocabulary read from GGUF
 * (tokenizer.ggml.tokens, token_type, scores) with its text -> id map, and
 * the little every encoder shares (the id list they append to, UTF-8
 * lengths). The encoders (bpe, spm, special) build on this; tokenizer.c on
 * them. Private to tokenizer/. */
#ifndef SR_TOKENIZER_VOCAB_H
#define SR_TOKENIZER_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

/* token types as stored in tokenizer.ggml.token_type */
enum {
    SR_TOK__NORMAL = 1, SR_TOK__UNKNOWN = 2, SR_TOK__CONTROL = 3,
    SR_TOK__USER_DEFINED = 4, SR_TOK__UNUSED = 5, SR_TOK__BYTE = 6,
};

typedef struct {
    int64_t n;          /* tokens */
    char *text;         /* every token's text as stored in the file, back to back */
    int64_t *text_off;  /* (n + 1) token i is text[text_off[i] .. text_off[i + 1]) */
    int32_t *type;      /* (n) SR_TOK__* */
    float *score;       /* (n) SentencePiece scores; 0 when absent */
    int32_t *map;       /* open-addressing map from text to id; a slot holds id + 1 */
    uint64_t map_mask;
} sr_tok__vocab;

/* Reads the vocabulary; SR_EFORMAT with the key's name when it is missing or
 * malformed. */
int sr_tok__vocab_load(sr_tok__vocab *v, const sr_gguf *g);
void sr_tok__vocab_free(sr_tok__vocab *v);

/* id of a vocabulary string (the first id when the file repeats it), or -1 */
int32_t sr_tok__vocab_find(const sr_tok__vocab *v, const char *s, size_t n);

static inline const char *sr_tok__vocab_text(const sr_tok__vocab *v, int32_t id, size_t *len) {
    *len = (size_t)(v->text_off[id + 1] - v->text_off[id]);
    return v->text + v->text_off[id];
}

/* Control, user-defined and unknown tokens: their text is their meaning, so
 * they decode to it and encode can match it in text (sr_tok__special). */
static inline int sr_tok__is_special_type(int32_t type) {
    return type == SR_TOK__CONTROL || type == SR_TOK__USER_DEFINED || type == SR_TOK__UNKNOWN;
}

/* A growable id list that every encoder appends to. */
typedef struct {
    int32_t *v;
    int64_t n, cap;
} sr_tok__ids;

int sr_tok__push(sr_tok__ids *ids, int32_t id);

/* number of bytes of the UTF-8 sequence starting at s (1 for an invalid lead byte) */
size_t sr_tok__utf8_len(const unsigned char *s, size_t n);

#endif
