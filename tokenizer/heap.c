/* heap: the merge queue of the tokenizers (see heap.h). */
#include "tokenizer/heap.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

static void *at(const sr_tok__heap *h, int64_t i) { return (char *)h->data + (size_t)i * h->size; }

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
        if (!h->before(elem, at(h, p))) break;
        memcpy(at(h, i), at(h, p), h->size);
        i = p;
    }
    memcpy(at(h, i), elem, h->size);
    return SR_OK;
}

void sr_tok__heap_pop(sr_tok__heap *h, void *out) {
    memcpy(out, h->data, h->size);
    int64_t n = --h->n, i = 0;
    if (n == 0) return;
    const void *last = at(h, n);
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h->before(at(h, c + 1), at(h, c))) c++;
        if (!h->before(at(h, c), last)) break;
        memcpy(at(h, i), at(h, c), h->size);
        i = c;
    }
    memcpy(at(h, i), last, h->size);
}
