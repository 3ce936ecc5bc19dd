/* tokenizer internals shared by tokenizer.c (vocabulary, special tokens,
 * dispatch), tokenizer_bpe.c, tokenizer_spm.c and chat.c. */
#ifndef SR_TOKENIZER_INTERNAL_H
#define SR_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* token types as stored in tokenizer.ggml.token_type */
enum {
    SR_TOK_NORMAL = 1, SR_TOK_UNKNOWN = 2, SR_TOK_CONTROL = 3,
    SR_TOK_USER_DEFINED = 4, SR_TOK_UNUSED = 5, SR_TOK_BYTE = 6,
};

enum { SR_TOK_KIND_BPE = 1, SR_TOK_KIND_SPM = 2 };

/* A growable id list that every encoder appends to. */
typedef struct {
    int32_t *v;
    int64_t n, cap;
} sr_tok__ids;

int sr_tok__push(sr_tok__ids *ids, int32_t id);

/* Merge table entry of byte-level BPE, keyed by the pair of token ids. */
typedef struct {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t id;   /* the merged token */
} sr_tok__merge;

struct sr_tokenizer {
    int kind;         /* SR_TOK_KIND_* */
    int64_t n_vocab;

    /* vocabulary text as stored in the file, and the bytes each token decodes to */
    char *text;
    int64_t *text_off;  /* (n_vocab + 1) */
    char *piece;
    int64_t *piece_off; /* (n_vocab + 1) */
    int32_t *type;      /* (n_vocab) SR_TOK_* */
    float *score;       /* (n_vocab) SentencePiece scores; 0 when absent */
    uint8_t *eog;       /* (n_vocab) 1 if generation ends at this token */

    /* open-addressing map from vocabulary text to id; slot holds id + 1 */
    int32_t *map;
    uint64_t map_mask;

    /* special tokens that encode can parse out of text: sorted by first byte,
     * then longest first; first_at[b]..first_at[b+1] indexes those starting with b */
    int32_t *special;
    int64_t n_special;
    int64_t first_at[257];

    int32_t bos, eos, unk;
    int add_bos, add_space_prefix;

    /* byte-level BPE */
    int32_t byte_id[256];   /* token of each raw byte, -1 if the vocabulary lacks it */
    sr_tok__merge *merges;
    uint64_t merges_mask;
    void *re[4];            /* pcre2_code*, applied in sequence */
    int n_re;
    int ignore_merges;      /* a piece that is a whole token is taken as is */

    /* SentencePiece */
    int32_t byte_token[256]; /* <0xXX> tokens, -1 when absent */

    char *chat_template;    /* NUL-terminated copy, NULL when the file has none */
};

/* id of a vocabulary string, or -1 */
int32_t sr_tok__find(const sr_tokenizer *t, const char *s, size_t n);

/* A binary min-heap of merge candidates (elements of `size` bytes ordered by
 * `before`): the queue both BPE and SentencePiece merge from. */
typedef struct {
    void *data;
    int64_t n, cap;
    size_t size;
    int (*before)(const void *a, const void *b);
} sr_tok__heap;

int sr_tok__heap_push(sr_tok__heap *h, const void *elem);
/* Removes the first element into out; h->n must be > 0. */
void sr_tok__heap_pop(sr_tok__heap *h, void *out);

/* BPE: builds byte ids, merges and the pre-tokenizer for `pre` (NULL: gpt2). */
int sr_tok__bpe_init(sr_tokenizer *t, const sr_gguf *g, const char *pre, size_t pre_len);
void sr_tok__bpe_free(sr_tokenizer *t);
/* Encodes raw text (no special tokens inside) and appends to ids. */
int sr_tok__bpe_encode(const sr_tokenizer *t, const char *text, size_t len, sr_tok__ids *ids);
/* Bytes of a BPE vocabulary string once the gpt2 byte-to-unicode map is undone;
 * out needs room for n bytes. Returns the byte count. */
size_t sr_tok__bpe_unmap(const char *s, size_t n, char *out);

/* SentencePiece: encodes raw text; add_prefix puts the space prefix first. */
int sr_tok__spm_init(sr_tokenizer *t);
int sr_tok__spm_encode(const sr_tokenizer *t, const char *text, size_t len, int add_prefix,
                       sr_tok__ids *ids);
/* Bytes of an SPM vocabulary string: U+2581 becomes a space; <0xXX> byte
 * tokens their byte. out needs room for n bytes. */
size_t sr_tok__spm_unmap(const char *s, size_t n, int type, char *out);

/* number of bytes of the UTF-8 sequence starting at s (1 for an invalid lead byte) */
size_t sr_tok__utf8_len(const unsigned char *s, size_t n);

#endif
