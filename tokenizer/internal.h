/* The tokenizer's state, shared by tokenizer.c (building, encode and decode
 * dispatch) and chat.c. The encoders below it (bpe, spm, special) see only
 * the vocabulary. Private to tokenizer/. */
#ifndef SR_TOKENIZER_INTERNAL_H
#define SR_TOKENIZER_INTERNAL_H

#include <stdint.h>

#include "tokenizer/bpe.h"
#include "tokenizer/special.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

enum { SR_TOK__KIND_BPE = 1, SR_TOK__KIND_SPM = 2 };

struct sr_tokenizer {
    int kind;             /* SR_TOK__KIND_* */
    sr_tok__vocab vocab;
    char *piece;          /* the bytes each token decodes to, back to back */
    int64_t *piece_off;   /* (n_vocab + 1) */
    uint8_t *eog;         /* (n_vocab) 1 if generation ends at this token */
    sr_tok__special special;
    int32_t bos, eos, unk;
    int add_bos, add_space_prefix;
    sr_tok__bpe bpe;      /* kind BPE */
    sr_tok__spm spm;      /* kind SPM */
    char *chat_template;  /* NUL-terminated copy, NULL when the file has none */
};

#endif
