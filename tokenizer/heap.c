/* The merge queue of the tokenizers: a binary heap of fixed-size elements. */
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tokenizer/internal.h"

static void *heap__at(const sr_tok__heap *h, int64_t i) { return (char *)h->data + (size_t)i * h->size; }

int sr_tok__heap_push(sr_tok__heap *h, const void *elem) {
    if (h->n == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 256;
        void *d = realloc(h->data, (size_t)cap * h->size);
        if (!d) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for the merge queue");
        h->data = d;
        h->cap = cap;
    }
    int64_t i = h->n++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!h->before(elem, heap__at(h, p))) break;
        memcpy(heap__at(h, i), heap__at(h, p), h->size);
        i = p;
    }
    memcpy(heap__at(h, i), elem, h->size);
    return SR_OK;
}

void sr_tok__heap_pop(sr_tok__heap *h, void *out) {
    memcpy(out, h->data, h->size);
    int64_t n = --h->n, i = 0;
    if (n == 0) return;
    const void *last = heap__at(h, n);
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h->before(heap__at(h, c + 1), heap__at(h, c))) c++;
        if (!h->before(heap__at(h, c), last)) break;
        memcpy(heap__at(h, i), heap__at(h, c), h->size);
        i = c;
    }
    memcpy(heap__at(h, i), last, h->size);
}
