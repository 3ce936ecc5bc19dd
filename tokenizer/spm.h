/* spm: SentencePiece-style tokenization (tokenizer.ggml.model "llama"):
 * merges by score with <0xXX> byte fallback (see spm.c). Private to
 * tokenizer/. */
#ifndef SR_TOKENIZER_SPM_H
#define SR_TOKENIZER_SPM_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/vocab.h"

typedef struct {
    int32_t byte_token[256]; /* <0xXX> tokens, -1 when absent */
    int32_t unk;             /* for a byte with no <0xXX> token; -1: dropped */
} sr_tok__spm;

void sr_tok__spm_init(sr_tok__spm *s, const sr_tok__vocab *v, int32_t unk);

/* Encodes raw text (no special tokens inside) and appends to ids;
 * add_prefix puts the space prefix first. */
int sr_tok__spm_encode(const sr_tok__spm *s, const sr_tok__vocab *v, const char *text, size_t len, int add_prefix,
                       sr_tok__ids *ids);

/* Bytes of an SPM vocabulary string: U+2581 becomes a space; <0xXX> byte
 * tokens their byte. out needs room for n bytes. */
size_t sr_tok__spm_unmap(const char *s, size_t n, int type, char *out);

#endif
