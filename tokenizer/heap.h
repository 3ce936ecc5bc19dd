/* heap: the merge queue both BPE and SentencePiece merge from, a binary
 * min-heap of fixed-size elements ordered by `before`. Private to tokenizer/. */
#ifndef SR_TOKENIZER_HEAP_H
#define SR_TOKENIZER_HEAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    void *data;
    int64_t n, cap;
    size_t size;
    int (*before)(const void *a, const void *b);
} sr_tok__heap;

int sr_tok__heap_push(sr_tok__heap *h, const void *elem);
/* Removes the first element into out; h->n must be > 0. */
void sr_tok__heap_pop(sr_tok__heap *h, void *out);

#endif
