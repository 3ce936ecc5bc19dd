/* special: where special tokens (control, user-defined, unknown) stand in a
 * text. At each point the longest one starting there is taken, left to
 * right, without overlaps; user-defined tokens always, the others only with
 * parse_special.
 *
 * Linear in the text and in the tokens' total length, however many tokens
 * share a prefix: an Aho-Corasick automaton over the tokens' reversed texts,
 * run over the text from its end, gives at each position the longest token
 * that starts there. Private to tokenizer/. */
#ifndef SR_TOKENIZER_SPECIAL_H
#define SR_TOKENIZER_SPECIAL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/vocab.h"

/* The automaton: a trie of the reversed token texts whose nodes are numbered
 * breadth first, so that the children of a node are consecutive (by byte). */
typedef struct {
    int64_t n_tokens;   /* special tokens in the trie */
    int32_t n_nodes;
    int32_t *first;     /* (n_nodes) first child */
    uint16_t *n_child;  /* (n_nodes) */
    uint8_t *byte;      /* (n_nodes) byte on the edge into the node */
    int32_t *fail;      /* (n_nodes) node of the longest proper suffix of the node's string */
    int32_t *best_user; /* (n_nodes) longest user-defined token that ends the node's string, -1 if none */
    int32_t *best_any;  /* (n_nodes) the same over every special token */
} sr_tok__special;

/* A special token found in the text: text[pos .. pos + len) is token id. */
typedef struct {
    int64_t pos;
    int32_t len, id;
} sr_tok__hit;

typedef struct {
    sr_tok__hit *v;
    int64_t n, cap;
} sr_tok__hits;

/* Builds the automaton over v's special tokens; SR_EFORMAT when their texts
 * total more bytes than it can index. */
int sr_tok__special_build(sr_tok__special *s, const sr_tok__vocab *v);
void sr_tok__special_free(sr_tok__special *s);

/* The special tokens of text[0 .. len), in order, appended to hits
 * (which the caller frees). */
int sr_tok__special_find(const sr_tok__special *s, const sr_tok__vocab *v, const char *text, size_t len,
                         int parse_special, sr_tok__hits *hits);

#endif
