/* bpe: byte-level BPE (tokenizer.ggml.model "gpt2").
 *
 * Text is cut into pieces by the model's pre-tokenizer regexes (PCRE2, UTF-8
 * with Unicode properties; invalid UTF-8 is allowed and never matches, so it
 * ends up in the gaps between matches, which are pieces too). Each piece
 * starts as one token per byte and merges the adjacent pair of lowest rank
 * until none is left, exactly as the merges were learnt. Merges work on token
 * ids: the table maps a pair of ids to (rank, merged id). */
#include "tokenizer/bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "tokenizer/heap.h"

/* Pre-tokenizer regexes per tokenizer.ggml.pre, the same as the models'
 * Hugging Face tokenizer.json. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                           \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                       \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_DIGIT "\\p{N}"

typedef struct {
    const char *names; /* '|'-separated tokenizer.ggml.pre values */
    const char *re[2];
    int ignore_merges;
} pre_def;

static const pre_def pre_defs[] = {
    {"default|gpt2|gpt-2|phi-2|jina-es|jina-de|mpt|olmo|jais|bloom|gpt3-finnish|poro-chat|viking|tekken", {RE_GPT2, NULL}, 0},
    {"smollm|starcoder|refact|codeshell|command-r|exaone|minerva", {RE_DIGIT, RE_GPT2}, 0},
    {"llama3|llama-bpe|llama-v3|dbrx|smaug-bpe|falcon3|pixtral", {RE_LLAMA3, NULL}, 1},
    {"qwen2|deepseek-r1-qwen|megrez", {RE_QWEN2, NULL}, 0},
};

static int pre_matches(const char *names, const char *pre, size_t n) {
    const char *p = names;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && memcmp(p, pre, n) == 0) return 1;
        if (!bar) return 0;
        p = bar + 1;
    }
}

/* gpt2's byte-to-unicode map: printable Latin-1 bytes stand for themselves,
 * the other 68 (0-32, 127-160, 173) for U+0100 onwards, in order. */
static uint32_t gpt2_cp(unsigned b) {
    if (b <= 32) return 256 + b;
    if (b >= 127 && b <= 160) return 256 + 33 + (b - 127);
    if (b == 173) return 256 + 67;
    return b;
}

static int gpt2_byte(uint32_t cp) {
    if (cp < 256) return gpt2_cp(cp) == cp ? (int)cp : -1;
    uint32_t k = cp - 256;
    if (k <= 32) return (int)k;
    if (k <= 66) return (int)(127 + k - 33);
    if (k == 67) return 173;
    return -1;
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

size_t sr_tok__bpe_unmap(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t len = sr_tok__utf8_len(u, n - i);
        int b = -1;
        if (len == 2) b = gpt2_byte(((uint32_t)(u[0] & 0x1f) << 6) | (u[1] & 0x3f));
        else if (len == 1 && u[0] < 0x80) b = gpt2_byte(u[0]);
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            /* not a mapped byte: keep the text as it is */
            memcpy(out + o, u, len);
            o += len;
        }
        i += len;
    }
    return o;
}

static uint64_t merge_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

static uint64_t merge_slot(uint64_t key, uint64_t mask) {
    uint64_t h = key * 0x9e3779b97f4a7c15ull;
    return (h ^ (h >> 31)) & mask;
}

static const sr_tok__merge *merge_find(const sr_tok__bpe *bpe, int32_t a, int32_t b) {
    uint64_t key = merge_key(a, b);
    for (uint64_t i = merge_slot(key, bpe->merges_mask);; i = (i + 1) & bpe->merges_mask) {
        const sr_tok__merge *m = &bpe->merges[i];
        if (m->key == key) return m;
        if (m->key == 0) return NULL;
    }
}

static int load_merges(sr_tok__bpe *bpe, const sr_tok__vocab *v, const sr_gguf *g) {
    const sr_gguf_kv *kv = sr_gguf_find(g, "tokenizer.ggml.merges");
    if (!kv) return sr_error_set(SR_EFORMAT, "GGUF has no tokenizer.ggml.merges, which a \"gpt2\" tokenizer needs");
    if (kv->type != SR_GGUF_ARRAY || kv->arr_type != SR_GGUF_STRING)
        return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.merges is not an array of strings");
    if (kv->arr_len >= INT32_MAX) return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.merges has %llu entries", (unsigned long long)kv->arr_len);
    uint64_t slots = 1;
    while (slots < 2 * kv->arr_len + 2) slots <<= 1;
    bpe->merges = calloc(slots, sizeof(*bpe->merges));
    if (!bpe->merges) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for %llu merges", (unsigned long long)kv->arr_len);
    bpe->merges_mask = slots - 1;

    char *buf = NULL;
    size_t buf_cap = 0;
    int64_t skipped = 0;
    for (uint64_t r = 0; r < kv->arr_len; r++) {
        sr_gguf_str ms = sr_gguf_arr_str(kv, r);
        const char *s = ms.ptr;
        size_t len = (size_t)ms.len;
        const char *sp = memchr(s, ' ', len);
        if (!sp) {
            free(buf);
            return sr_error_set(SR_EFORMAT, "GGUF tokenizer.ggml.merges[%llu] has no space between its two tokens", (unsigned long long)r);
        }
        size_t la = (size_t)(sp - s), lb = len - la - 1;
        if (la + lb > buf_cap) {
            buf_cap = 2 * (la + lb) + 64;
            char *nb = realloc(buf, buf_cap);
            if (!nb) {
                free(buf);
                return sr_error_set(SR_ENOMEM, "tokenizer: out of memory reading merges");
            }
            buf = nb;
        }
        memcpy(buf, s, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t a = sr_tok__vocab_find(v, s, la), b = sr_tok__vocab_find(v, sp + 1, lb), m = sr_tok__vocab_find(v, buf, la + lb);
        if (a < 0 || b < 0 || m < 0) {
            skipped++;
            continue;
        }
        uint64_t key = merge_key(a, b), i = merge_slot(key, bpe->merges_mask);
        sr_tok__merge *e = bpe->merges;
        while (e[i].key && e[i].key != key) i = (i + 1) & bpe->merges_mask;
        if (e[i].key) continue; /* a repeated pair keeps its first (lowest) rank */
        e[i].key = key;
        e[i].rank = (int32_t)r;
        e[i].id = m;
    }
    free(buf);
    if (skipped) SR_WARN("tokenizer: %lld merges name tokens missing from the vocabulary; ignored", (long long)skipped);
    return SR_OK;
}

int sr_tok__bpe_init(sr_tok__bpe *bpe, const sr_tok__vocab *v, const sr_gguf *g, const char *pre, size_t pre_len) {
    const pre_def *def = NULL;
    if (!pre) {
        SR_WARN("tokenizer: GGUF has no tokenizer.ggml.pre; using the gpt2 pre-tokenizer");
        def = &pre_defs[0];
    }
    for (size_t i = 0; !def && i < sizeof(pre_defs) / sizeof(pre_defs[0]); i++)
        if (pre_matches(pre_defs[i].names, pre, pre_len)) def = &pre_defs[i];
    if (!def) {
        SR_WARN("tokenizer: pre-tokenizer \"%.*s\" is not known; using gpt2's, so some token ids may differ from the model's own",
                (int)(pre_len > 64 ? 64 : pre_len), pre);
        def = &pre_defs[0];
    }
    bpe->ignore_merges = def->ignore_merges;
    for (int i = 0; i < 2 && def->re[i]; i++) {
        int err;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)def->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            if (pcre2_get_error_message(err, msg, sizeof(msg)) < 0) strcpy((char *)msg, "unknown error");
            return sr_error_set(SR_EUNSUPPORTED, "tokenizer: PCRE2 rejects the pre-tokenizer regex at %zu: %s", (size_t)at, (char *)msg);
        }
        bpe->re[bpe->n_re++] = re;
        /* JIT is several times faster; without it PCRE2 interprets the same pattern */
        int jrc = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        if (jrc) SR_DEBUG("tokenizer: PCRE2 JIT unavailable (%d); matching without it", jrc);
    }
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t n = utf8_put(gpt2_cp((unsigned)b), s);
        bpe->byte_id[b] = sr_tok__vocab_find(v, s, n);
    }
    return load_merges(bpe, v, g);
}

void sr_tok__bpe_free(sr_tok__bpe *bpe) {
    for (int i = 0; i < bpe->n_re; i++) pcre2_code_free((pcre2_code *)bpe->re[i]);
    bpe->n_re = 0;
    free(bpe->merges);
    bpe->merges = NULL;
}

/* ---- merging one piece ---- */

typedef struct {
    int32_t rank, left; /* ordered by rank, then leftmost first */
    int32_t lid, rid;   /* the pair when it was queued; stale once either changed */
    int32_t id;         /* what they merge into */
} cand;

typedef struct {
    int32_t *id, *next, *prev;
    sr_tok__heap heap; /* of cand */
    int64_t cap;
    char *mapped; /* the piece in gpt2 characters, for ignore_merges */
} work;

static void work_free(work *w) {
    free(w->id);
    free(w->next);
    free(w->prev);
    free(w->heap.data);
    free(w->mapped);
}

static int work_reserve(work *w, int64_t n) {
    if (n <= w->cap) return SR_OK;
    int64_t cap = n < 256 ? 256 : 2 * n;
    int32_t *id = realloc(w->id, (size_t)cap * sizeof(int32_t));
    if (id) w->id = id;
    int32_t *next = realloc(w->next, (size_t)cap * sizeof(int32_t));
    if (next) w->next = next;
    int32_t *prev = realloc(w->prev, (size_t)cap * sizeof(int32_t));
    if (prev) w->prev = prev;
    char *mapped = realloc(w->mapped, (size_t)cap * 2);
    if (mapped) w->mapped = mapped;
    if (!id || !next || !prev || !mapped) return sr_error_set(SR_ENOMEM, "tokenizer: out of memory for a piece of %lld bytes", (long long)n);
    w->cap = cap;
    return SR_OK;
}

static int cand_before(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int queue_pair(const sr_tok__bpe *bpe, work *w, int32_t left) {
    if (left < 0) return SR_OK;
    int32_t right = w->next[left];
    if (right < 0) return SR_OK;
    const sr_tok__merge *m = merge_find(bpe, w->id[left], w->id[right]);
    if (!m) return SR_OK;
    cand c = {m->rank, left, w->id[left], w->id[right], m->id};
    return sr_tok__heap_push(&w->heap, &c);
}

static int encode_piece(const sr_tok__bpe *bpe, const sr_tok__vocab *v, work *w, const unsigned char *s, size_t len,
                        sr_tok__ids *ids) {
    if (len > INT32_MAX / 2) return sr_error_set(SR_ERANGE, "tokenizer: a single pre-token of %zu bytes is too long", len);
    int32_t n = (int32_t)len;
    int rc = work_reserve(w, n);
    if (rc) return rc;
    if (bpe->ignore_merges) {
        size_t m = 0;
        for (int32_t i = 0; i < n; i++) m += utf8_put(gpt2_cp(s[i]), w->mapped + m);
        int32_t id = sr_tok__vocab_find(v, w->mapped, m);
        if (id >= 0) return sr_tok__push(ids, id);
    }
    /* a byte the vocabulary lacks (SmolLM2 has none for 0xF5-0xFF, for
     * example) is dropped before merging, as Hugging Face tokenizers does:
     * the unknown token would read as end-of-text to such a model */
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (bpe->byte_id[s[i]] >= 0) w->id[k++] = bpe->byte_id[s[i]];
    n = k;
    for (int32_t i = 0; i < n; i++) {
        w->prev[i] = i - 1;
        w->next[i] = i + 1 < n ? i + 1 : -1;
    }
    w->heap.n = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        if ((rc = queue_pair(bpe, w, i))) return rc;
    while (w->heap.n) {
        cand c;
        sr_tok__heap_pop(&w->heap, &c);
        int32_t l = c.left, r = w->next[l];
        if (w->id[l] != c.lid || r < 0 || w->id[r] != c.rid) continue;
        w->id[l] = c.id;
        w->id[r] = -2; /* merged away */
        w->next[l] = w->next[r];
        if (w->next[r] >= 0) w->prev[w->next[r]] = l;
        if ((rc = queue_pair(bpe, w, w->prev[l])) || (rc = queue_pair(bpe, w, l))) return rc;
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = w->next[i])
        if ((rc = sr_tok__push(ids, w->id[i]))) return rc;
    return SR_OK;
}

/* ---- pre-tokenizing ---- */

typedef struct {
    const sr_tok__bpe *bpe;
    const sr_tok__vocab *v;
    pcre2_match_data *md[4];
    work w;
    sr_tok__ids *ids;
} split;

/* Cuts s by regex `level` into matches and the gaps between them, and hands
 * each to the next regex, or to BPE after the last one. */
static int split_run(split *sp, int level, const char *s, size_t n) {
    if (n == 0) return SR_OK;
    if (level == sp->bpe->n_re) return encode_piece(sp->bpe, sp->v, &sp->w, (const unsigned char *)s, n, sp->ids);
    const pcre2_code *re = sp->bpe->re[level];
    pcre2_match_data *md = sp->md[level];
    size_t at = 0;
    while (at < n) {
        int mrc = pcre2_match(re, (PCRE2_SPTR)s, n, at, 0, md, NULL);
        if (mrc == PCRE2_ERROR_NOMATCH) break;
        if (mrc < 0) {
            PCRE2_UCHAR msg[256];
            if (pcre2_get_error_message(mrc, msg, sizeof(msg)) < 0) strcpy((char *)msg, "unknown error");
            return sr_error_set(SR_EINVAL, "tokenizer: PCRE2 match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t m0 = ov[0], m1 = ov[1];
        if (m1 <= m0) m1 = m0 + sr_tok__utf8_len((const unsigned char *)s + m0, n - m0); /* never loop on an empty match */
        int rc = split_run(sp, level + 1, s + at, m0 - at);
        if (!rc) rc = split_run(sp, level + 1, s + m0, m1 - m0);
        if (rc) return rc;
        at = m1;
    }
    return split_run(sp, level + 1, s + at, n - at);
}

int sr_tok__bpe_encode(const sr_tok__bpe *bpe, const sr_tok__vocab *v, const char *text, size_t len, sr_tok__ids *ids) {
    split sp = {.bpe = bpe, .v = v, .ids = ids, .w.heap = {.size = sizeof(cand), .before = cand_before}};
    int rc = SR_OK;
    for (int i = 0; i < bpe->n_re; i++) {
        sp.md[i] = pcre2_match_data_create_from_pattern((const pcre2_code *)bpe->re[i], NULL);
        if (!sp.md[i]) rc = sr_error_set(SR_ENOMEM, "tokenizer: out of memory for PCRE2 match data");
    }
    if (!rc) rc = split_run(&sp, 0, text, len);
    for (int i = 0; i < bpe->n_re; i++) pcre2_match_data_free(sp.md[i]);
    work_free(&sp.w);
    return rc;
}
