/* bpe: byte-level BPE (tokenizer.ggml.model "gpt2"): the model's
 * pre-tokenizer regexes, then merges by rank (see bpe.c). Private to
 * tokenizer/. */
#ifndef SR_TOKENIZER_BPE_H
#define SR_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "tokenizer/vocab.h"

/* Merge table entry, keyed by the pair of token ids. */
typedef struct {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t id;   /* the merged token */
} sr_tok__merge;

typedef struct {
    int32_t byte_id[256]; /* token of each raw byte, -1 if the vocabulary lacks it */
    sr_tok__merge *merges;
    uint64_t merges_mask;
    void *re[4];          /* pcre2_code*, applied in sequence */
    int n_re;
    int ignore_merges;    /* a piece that is a whole token is taken as is */
} sr_tok__bpe;

/* Builds the byte ids, the merges and the pre-tokenizer for `pre` (NULL:
 * gpt2's) over vocabulary v, which must outlive b. */
int sr_tok__bpe_init(sr_tok__bpe *b, const sr_tok__vocab *v, const sr_gguf *g, const char *pre, size_t pre_len);
void sr_tok__bpe_free(sr_tok__bpe *b);

/* Encodes raw text (no special tokens inside) and appends to ids. */
int sr_tok__bpe_encode(const sr_tok__bpe *b, const sr_tok__vocab *v, const char *text, size_t len, sr_tok__ids *ids);

/* Bytes of a BPE vocabulary string once the gpt2 byte-to-unicode map is
 * undone; out needs room for n bytes. Returns the byte count. */
size_t sr_tok__bpe_unmap(const char *s, size_t n, char *out);

#endif
