/* special: special tokens in text through an Aho-Corasick automaton over
 * their reversed texts (see special.h). */
#include "tokenizer/special.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

/* Byte d from the end of token id's text. */
static unsigned char back_byte(const sr_tok__vocab *v, int32_t id, size_t d) {
    size_t len;
    const char *s = sr_tok__vocab_text(v, id, &len);
    return (unsigned char)s[len - 1 - d];
}

static size_t text_len(const sr_tok__vocab *v, int32_t id) {
    size_t len;
    sr_tok__vocab_text(v, id, &len);
    return len;
}

/* Reversed-text order: a text that ends the other comes first, ties by id. */
static int cmp_reversed(const void *pa, const void *pb, void *pv) {
    const sr_tok__vocab *v = pv;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    size_t la = text_len(v, a), lb = text_len(v, b);
    for (size_t d = 0; d < la && d < lb; d++) {
        unsigned char x = back_byte(v, a, d), y = back_byte(v, b, d);
        if (x != y) return x < y ? -1 : 1;
    }
    if (la != lb) return la < lb ? -1 : 1;
    return (a > b) - (a < b);
}

/* Child of node u along byte c, or -1. */
static int32_t child(const sr_tok__special *s, int32_t u, unsigned char c) {
    int32_t lo = s->first[u], hi = lo + s->n_child[u];
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (s->byte[mid] < c) lo = mid + 1;
        else hi = mid;
    }
    return lo < s->first[u] + s->n_child[u] && s->byte[lo] == c ? lo : -1;
}

/* Lays out the trie of the sorted ids breadth first: node u stands for the
 * ids [lo[u], hi[u]) that share its depth[u] last bytes. */
static void build_trie(sr_tok__special *s, const sr_tok__vocab *v, const int32_t *ids, int64_t k, int32_t *lo,
                       int32_t *hi, int32_t *depth) {
    int32_t made = 1;
    lo[0] = 0, hi[0] = (int32_t)k, depth[0] = 0;
    s->best_user[0] = s->best_any[0] = -1;
    for (int32_t u = 0; u < made; u++) {
        size_t d = (size_t)depth[u];
        int32_t i = lo[u];
        for (; i < hi[u] && text_len(v, ids[i]) == d; i++) { /* the tokens that are this node's string */
            if (s->best_any[u] < 0) s->best_any[u] = ids[i];
            if (s->best_user[u] < 0 && v->type[ids[i]] == SR_TOK__USER_DEFINED) s->best_user[u] = ids[i];
        }
        s->first[u] = made;
        s->n_child[u] = 0;
        while (i < hi[u]) {
            unsigned char c = back_byte(v, ids[i], d);
            int32_t j = i + 1;
            while (j < hi[u] && back_byte(v, ids[j], d) == c) j++;
            int32_t w = made++;
            s->byte[w] = c;
            lo[w] = i, hi[w] = j, depth[w] = (int32_t)d + 1;
            s->best_user[w] = s->best_any[w] = -1;
            s->n_child[u]++;
            i = j;
        }
    }
}

/* Failure links in breadth-first order, and with them the longest token
 * that ends each node's string. */
static void link_failures(sr_tok__special *s) {
    s->fail[0] = 0;
    for (int32_t u = 0; u < s->n_nodes; u++) {
        for (int32_t w = s->first[u]; w < s->first[u] + s->n_child[u]; w++) {
            int32_t f = 0;
            if (u != 0) {
                int32_t x = s->fail[u];
                while ((f = child(s, x, s->byte[w])) < 0 && x != 0) x = s->fail[x];
                if (f < 0) f = 0;
            }
            s->fail[w] = f;
            if (s->best_user[w] < 0) s->best_user[w] = s->best_user[f];
            if (s->best_any[w] < 0) s->best_any[w] = s->best_any[f];
        }
    }
}

int sr_tok__special_build(sr_tok__special *s, const sr_tok__vocab *v) {
    memset(s, 0, sizeof(*s));
    int64_t k = 0, total = 0;
    for (int64_t i = 0; i < v->n; i++) {
        size_t len = text_len(v, (int32_t)i);
        if (sr_tok__is_special_type(v->type[i]) && len > 0) k++, total += (int64_t)len;
    }
    if (total >= INT32_MAX)
        return sr_error_set(SR_EFORMAT, "tokenizer: the special tokens' texts total %lld bytes (at most %d supported)",
                            (long long)total, INT32_MAX - 1);
    s->n_tokens = k;
    if (k == 0) return SR_OK;
    int32_t *ids = malloc((size_t)k * sizeof(*ids));
    if (!ids) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for %lld special tokens", (long long)k);
    for (int64_t i = 0, j = 0; i < v->n; i++)
        if (sr_tok__is_special_type(v->type[i]) && text_len(v, (int32_t)i) > 0) ids[j++] = (int32_t)i;
    qsort_r(ids, (size_t)k, sizeof(*ids), cmp_reversed, (void *)v);
    /* nodes: one per distinct suffix, the root included */
    int64_t nodes = 1;
    for (int64_t i = 0; i < k; i++) {
        size_t len = text_len(v, ids[i]), common = 0;
        if (i > 0) {
            size_t prev = text_len(v, ids[i - 1]);
            while (common < len && common < prev && back_byte(v, ids[i], common) == back_byte(v, ids[i - 1], common))
                common++;
        }
        nodes += (int64_t)(len - common);
    }
    s->n_nodes = (int32_t)nodes;
    size_t n = (size_t)nodes;
    s->first = malloc(n * sizeof(int32_t));
    s->n_child = malloc(n * sizeof(uint16_t));
    s->byte = malloc(n);
    s->fail = malloc(n * sizeof(int32_t));
    s->best_user = malloc(n * sizeof(int32_t));
    s->best_any = malloc(n * sizeof(int32_t));
    int32_t *lo = malloc(n * sizeof(int32_t)), *hi = malloc(n * sizeof(int32_t)), *depth = malloc(n * sizeof(int32_t));
    int rc = SR_OK;
    if (!s->first || !s->n_child || !s->byte || !s->fail || !s->best_user || !s->best_any || !lo || !hi || !depth) {
        rc = sr_error_set(SR_ENOMEM, "tokenizer: out of memory for %lld special tokens", (long long)k);
    } else {
        build_trie(s, v, ids, k, lo, hi, depth);
        link_failures(s);
    }
    free(ids);
    free(lo);
    free(hi);
    free(depth);
    return rc;
}

void sr_tok__special_free(sr_tok__special *s) {
    free(s->first);
    free(s->n_child);
    free(s->byte);
    free(s->fail);
    free(s->best_user);
    free(s->best_any);
    memset(s, 0, sizeof(*s));
}

static int push_hit(sr_tok__hits *h, int64_t pos, int32_t len, int32_t id) {
    if (h->n == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 64;
        sr_tok__hit *p = realloc(h->v, (size_t)cap * sizeof(*p));
        if (!p) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for %lld special tokens", (long long)cap);
        h->v = p;
        h->cap = cap;
    }
    h->v[h->n++] = (sr_tok__hit){pos, len, id};
    return SR_OK;
}

int sr_tok__special_find(const sr_tok__special *s, const sr_tok__vocab *v, const char *text, size_t len,
                         int parse_special, sr_tok__hits *hits) {
    if (s->n_tokens == 0) return SR_OK;
    const int32_t *best = parse_special ? s->best_any : s->best_user;
    /* from the end: the string read so far is text[i..] reversed, so the
     * longest token ending it is the longest one starting at i */
    int32_t state = 0;
    for (size_t i = len; i-- > 0;) {
        unsigned char c = (unsigned char)text[i];
        int32_t next;
        while ((next = child(s, state, c)) < 0 && state != 0) state = s->fail[state];
        state = next >= 0 ? next : 0;
        int32_t id = best[state];
        int rc = id >= 0 ? push_hit(hits, (int64_t)i, (int32_t)text_len(v, id), id) : SR_OK;
        if (rc) return rc;
    }
    /* into text order, then keep each hit that starts after the last one kept */
    for (int64_t a = 0, b = hits->n - 1; a < b; a++, b--) {
        sr_tok__hit t = hits->v[a];
        hits->v[a] = hits->v[b];
        hits->v[b] = t;
    }
    int64_t kept = 0, free_from = 0;
    for (int64_t r = 0; r < hits->n; r++) {
        if (hits->v[r].pos < free_from) continue;
        free_from = hits->v[r].pos + hits->v[r].len;
        hits->v[kept++] = hits->v[r];
    }
    hits->n = kept;
    return SR_OK;
}
