/* tokenizer: text <-> token ids from a GGUF vocabulary: byte-level BPE
 * (tokenizer.ggml.model "gpt2", merges, pre-tokenizer regex through PCRE2)
 * and SentencePiece-style ("llama", scores), with special tokens. */
#ifndef SR_TOKENIZER_TOKENIZER_H
#define SR_TOKENIZER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

typedef struct sr_tokenizer sr_tokenizer;

/* Builds a tokenizer from the file's tokenizer.* metadata. The tokenizer
 * keeps no pointer into g after return. */
int sr_tok_from_gguf(sr_tokenizer **out, const sr_gguf *g);
void sr_tok_free(sr_tokenizer *t);

/* Encodes len bytes of text (any bytes; invalid UTF-8 becomes byte tokens).
 * parse_special: 1 to turn special-token text such as "<|im_start|>" into its
 * id. add_bos: prepend BOS if the model asks for it. *ids is malloc'ed. */
int sr_tok_encode(const sr_tokenizer *t, const char *text, size_t len, int parse_special,
                  int add_bos, int32_t **ids, int64_t *n_ids);

/* Appends the bytes of token `id` to buf (capacity cap); returns the byte
 * count written (may be a partial UTF-8 sequence), or a negative SR_E* code. */
int sr_tok_piece(const sr_tokenizer *t, int32_t id, char *buf, size_t cap);

int32_t sr_tok_bos(const sr_tokenizer *t);
int32_t sr_tok_eos(const sr_tokenizer *t);
/* 1 if generation should stop at this token (EOS, EOT, <|im_end|>, ...). */
int sr_tok_is_eog(const sr_tokenizer *t, int32_t id);
int64_t sr_tok_vocab_size(const sr_tokenizer *t);

/* Applies the model's chat template (ChatML, Llama 2/3, ... chosen from
 * tokenizer.chat_template) to one user message of user_len bytes (any bytes,
 * NUL included) with an optional system message (NULL: the template's own
 * default, if any), adding the assistant prefix. *out is malloc'ed and
 * NUL-terminated; *out_len counts the bytes before that NUL. */
int sr_tok_chat_prompt(const sr_tokenizer *t, const char *system, const char *user, size_t user_len, char **out,
                       size_t *out_len);

/* One message of a conversation: role "system" (first only), "user" or
 * "assistant"; content of len bytes. */
typedef struct {
    const char *role;
    const char *content;
    size_t len;
} sr_chat_msg;

/* Applies the model's chat template to a whole conversation, adding the
 * assistant prefix after it; the same text as sr_tok_chat_prompt for one
 * user message. A conversation and its next turn render to texts one of
 * which starts with the other, so a resident context of the first is
 * reused by the second. *out is malloc'ed and NUL-terminated. */
int sr_tok_chat_render(const sr_tokenizer *t, const sr_chat_msg *m, int n, char **out, size_t *out_len);

#endif
