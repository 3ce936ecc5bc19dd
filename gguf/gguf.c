/* GGUF v2/v3 reader: parses the header, metadata and tensor infos of a mapped
 * file or caller's buffer, validating every length, count and offset against
 * the bytes actually present, so that a hostile file can only produce an
 * error. Layout (little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv[n_kv] |
 *   tensor_info[n_tensors] | padding to alignment | tensor data
 * kv->data always points into the map (callers may walk arrays themselves).
 * For sr_gguf_arr_str to be O(1), open builds a table of each string array's
 * elements (kv->arr_strs). */
#include "gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/status.h"

enum {
    MAX_DIMS = 4,
    DEFAULT_ALIGNMENT = 32,
    /* smallest encodings, used to cap counts before allocating */
    MIN_KV_BYTES = 8 + 4 + 1,              /* empty key, type, 1-byte value */
    MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8,  /* empty name, n_dims, 1 dim, type, offset */
    HEADER_BYTES = 4 + 4 + 8 + 8,
};
/* Far beyond any real tensor, and small enough that element counts times
 * bytes per element (at most 8) cannot overflow in sr_ggml_row_bytes. */
#define MAX_ELEMENTS (UINT64_C(1) << 56)

/* The public struct first, so that sr_gguf * and impl * convert. */
typedef struct impl {
    sr_gguf pub;
    uint64_t *kv_hash, *tensor_hash; /* open addressing: index + 1, 0 = empty */
    uint64_t kv_cap, tensor_cap;     /* power of two */
    sr_gguf_str *strs;               /* all string-array elements */
    int mapped;                      /* map is ours to munmap */
    char *name;                      /* the path, or "buffer", for messages */
} impl;

typedef struct {
    const uint8_t *p;
    uint64_t size, pos;
    const char *name; /* the path, or "buffer" */
} cursor;

/* Up to 64 bytes of a name from the file, printable ASCII only: keys and
 * tensor names in a hostile file may hold anything. */
static const char *printable(sr_gguf_str s, char buf[80]) {
    uint64_t n = s.len < 64 ? s.len : 64, j = 0;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[j++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (s.len > 64) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}

static int need(cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return sr_error_set(SR_EFORMAT,
                            "%s: %s at offset %llu needs %llu bytes but only %llu remain (file size "
                            "%llu); the file is truncated or corrupt",
                            c->name, what, (unsigned long long)c->pos, (unsigned long long)n,
                            (unsigned long long)(c->size - c->pos), (unsigned long long)c->size);
    return SR_OK;
}

static int read_bytes(cursor *c, void *v, uint64_t n, const char *what) {
    int rc = need(c, n, what);
    if (rc) return rc;
    memcpy(v, c->p + c->pos, (size_t)n);
    c->pos += n;
    return SR_OK;
}

static int read_u32(cursor *c, uint32_t *v, const char *what) { return read_bytes(c, v, 4, what); }

static int read_u64(cursor *c, uint64_t *v, const char *what) { return read_bytes(c, v, 8, what); }

static int read_str(cursor *c, sr_gguf_str *s, const char *what) {
    uint64_t len;
    int rc = read_u64(c, &len, what);
    if (rc) return rc;
    if (len > c->size - c->pos)
        return sr_error_set(SR_EFORMAT,
                            "%s: %s at offset %llu has length %llu, past the end of the file (%llu "
                            "bytes remain); the file is truncated or corrupt",
                            c->name, what, (unsigned long long)(c->pos - 8), (unsigned long long)len,
                            (unsigned long long)(c->size - c->pos));
    s->ptr = (const char *)c->p + c->pos;
    s->len = len;
    c->pos += len;
    return SR_OK;
}

/* Bytes of one scalar value; 0 for strings, arrays and unknown types. */
static uint64_t scalar_size(uint32_t type) {
    switch (type) {
    case SR_GGUF_U8: case SR_GGUF_I8: case SR_GGUF_BOOL: return 1;
    case SR_GGUF_U16: case SR_GGUF_I16: return 2;
    case SR_GGUF_U32: case SR_GGUF_I32: case SR_GGUF_F32: return 4;
    case SR_GGUF_U64: case SR_GGUF_I64: case SR_GGUF_F64: return 8;
    default: return 0;
    }
}

static uint64_t hash_name(const char *s, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static int str_eq(sr_gguf_str a, const char *b, uint64_t blen) {
    return a.len == blen && memcmp(a.ptr, b, blen) == 0;
}

static uint64_t table_cap(uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

/* Inserts index i under `name`; returns the index already there (+1) on a
 * duplicate, 0 when inserted. names(j) is the name of entry j. */
static uint64_t table_insert(uint64_t *table, uint64_t cap, sr_gguf_str name, uint64_t i,
                             const sr_gguf_str *names, size_t stride) {
    uint64_t h = hash_name(name.ptr, name.len) & (cap - 1);
    while (table[h]) {
        const sr_gguf_str *other = (const sr_gguf_str *)((const char *)names + (table[h] - 1) * stride);
        if (str_eq(*other, name.ptr, name.len)) return table[h];
        h = (h + 1) & (cap - 1);
    }
    table[h] = i + 1;
    return 0;
}

static const void *table_lookup(const uint64_t *table, uint64_t cap, const char *name,
                                const sr_gguf_str *names, size_t stride) {
    if (!table || !name) return NULL;
    uint64_t n = strlen(name);
    uint64_t h = hash_name(name, n) & (cap - 1);
    while (table[h]) {
        const sr_gguf_str *s = (const sr_gguf_str *)((const char *)names + (table[h] - 1) * stride);
        if (str_eq(*s, name, n)) return s;
        h = (h + 1) & (cap - 1);
    }
    return NULL;
}

/* Reads one value of `kv`'s type (after its key and type), checking its
 * extent. For a string array it stops after the array header: the caller
 * walks the elements. */
static int read_value(cursor *c, sr_gguf_kv *kv, const char *key) {
    char what[160];
    kv->data = c->p + c->pos;
    if (kv->type == SR_GGUF_STRING) {
        sr_gguf_str s;
        snprintf(what, sizeof what, "string value of key '%s'", key);
        return read_str(c, &s, what);
    }
    if (kv->type != SR_GGUF_ARRAY) {
        uint64_t sz = scalar_size(kv->type);
        if (sz == 0)
            return sr_error_set(SR_EFORMAT, "%s: key '%s' has unknown value type %u (valid: 0..12)",
                                c->name, key, kv->type);
        snprintf(what, sizeof what, "value of key '%s'", key);
        int rc = need(c, sz, what);
        if (rc) return rc;
        if (kv->type == SR_GGUF_BOOL && c->p[c->pos] > 1)
            return sr_error_set(SR_EFORMAT, "%s: key '%s' is a bool with value %u (must be 0 or 1)",
                                c->name, key, c->p[c->pos]);
        c->pos += sz;
        return SR_OK;
    }
    snprintf(what, sizeof what, "array header of key '%s'", key);
    int rc = read_u32(c, &kv->arr_type, what);
    if (!rc) rc = read_u64(c, &kv->arr_len, what);
    if (rc) return rc;
    kv->data = c->p + c->pos;
    if (kv->arr_type == SR_GGUF_ARRAY)
        return sr_error_set(SR_EFORMAT, "%s: key '%s' is an array of arrays, which this reader does "
                            "not support", c->name, key);
    if (kv->arr_type == SR_GGUF_STRING) {
        /* each element needs at least its 8-byte length */
        if (kv->arr_len > (c->size - c->pos) / 8)
            return sr_error_set(SR_EFORMAT,
                                "%s: key '%s' claims %llu strings, more than the %llu bytes left "
                                "could hold; the file is truncated or corrupt",
                                c->name, key, (unsigned long long)kv->arr_len,
                                (unsigned long long)(c->size - c->pos));
        return SR_OK;
    }
    uint64_t sz = scalar_size(kv->arr_type);
    if (sz == 0)
        return sr_error_set(SR_EFORMAT, "%s: key '%s' is an array of unknown type %u (valid: 0..12)",
                            c->name, key, kv->arr_type);
    if (kv->arr_len > (c->size - c->pos) / sz)
        return sr_error_set(SR_EFORMAT,
                            "%s: array '%s' of %llu elements x %llu bytes at offset %llu extends past "
                            "the end of the file (%llu bytes remain); the file is truncated or corrupt",
                            c->name, key, (unsigned long long)kv->arr_len, (unsigned long long)sz,
                            (unsigned long long)c->pos, (unsigned long long)(c->size - c->pos));
    if (kv->arr_type == SR_GGUF_BOOL)
        for (uint64_t i = 0; i < kv->arr_len; i++)
            if (c->p[c->pos + i] > 1)
                return sr_error_set(SR_EFORMAT, "%s: bool array '%s' has value %u at index %llu "
                                    "(must be 0 or 1)", c->name, key, c->p[c->pos + i],
                                    (unsigned long long)i);
    c->pos += kv->arr_len * sz;
    return SR_OK;
}

/* Reads the elements of a string array into strs[0..arr_len). */
static int read_strings(cursor *c, const sr_gguf_kv *kv, sr_gguf_str *strs, const char *key) {
    char what[160];
    for (uint64_t i = 0; i < kv->arr_len; i++) {
        snprintf(what, sizeof what, "string %llu of array '%s'", (unsigned long long)i, key);
        int rc = read_str(c, &strs[i], what);
        if (rc) return rc;
    }
    return SR_OK;
}

/* An integer value as int64 / uint64, with its sign. */
static int int_value(const sr_gguf_kv *kv, int64_t *sv, uint64_t *uv, int *is_signed) {
    const uint8_t *d = kv->data;
    *is_signed = 1;
    switch (kv->type) {
    case SR_GGUF_U8: *is_signed = 0; *uv = d[0]; return 1;
    case SR_GGUF_I8: { int8_t v; memcpy(&v, d, 1); *sv = v; return 1; }
    case SR_GGUF_U16: { uint16_t v; memcpy(&v, d, 2); *is_signed = 0; *uv = v; return 1; }
    case SR_GGUF_I16: { int16_t v; memcpy(&v, d, 2); *sv = v; return 1; }
    case SR_GGUF_U32: { uint32_t v; memcpy(&v, d, 4); *is_signed = 0; *uv = v; return 1; }
    case SR_GGUF_I32: { int32_t v; memcpy(&v, d, 4); *sv = v; return 1; }
    case SR_GGUF_U64: { uint64_t v; memcpy(&v, d, 8); *is_signed = 0; *uv = v; return 1; }
    case SR_GGUF_I64: { int64_t v; memcpy(&v, d, 8); *sv = v; return 1; }
    default: return 0;
    }
}

static int get_u64(const cursor *c, const sr_gguf_kv *kv, const char *key, uint64_t max,
                         uint64_t *out) {
    int64_t sv = 0;
    uint64_t uv = 0;
    int is_signed;
    if (!int_value(kv, &sv, &uv, &is_signed))
        return sr_error_set(SR_EFORMAT, "%s: key '%s' has type %u, not an integer", c->name, key,
                            kv->type);
    if (is_signed) {
        if (sv < 0)
            return sr_error_set(SR_EFORMAT, "%s: key '%s' is negative (%lld)", c->name, key,
                                (long long)sv);
        uv = (uint64_t)sv;
    }
    if (uv > max)
        return sr_error_set(SR_EFORMAT, "%s: key '%s' is %llu, more than %llu", c->name, key,
                            (unsigned long long)uv, (unsigned long long)max);
    *out = uv;
    return SR_OK;
}

static int read_kvs(cursor *c, impl *g) {
    sr_gguf *pub = &g->pub;
    for (uint64_t i = 0; i < pub->n_kv; i++) {
        sr_gguf_kv *kv = &pub->kv[i];
        char what[160], key[80];
        snprintf(what, sizeof what, "key of metadata entry %llu", (unsigned long long)i);
        int rc = read_str(c, &kv->key, what);
        if (rc) return rc;
        printable(kv->key, key);
        if (kv->key.len == 0)
            return sr_error_set(SR_EFORMAT, "%s: metadata entry %llu has an empty key", c->name,
                                (unsigned long long)i);
        uint64_t dup = table_insert(g->kv_hash, g->kv_cap, kv->key, i, &pub->kv[0].key, sizeof *kv);
        if (dup)
            return sr_error_set(SR_EFORMAT, "%s: metadata key '%s' appears twice (entries %llu and %llu)",
                                c->name, key, (unsigned long long)(dup - 1), (unsigned long long)i);
        snprintf(what, sizeof what, "type of key '%s'", key);
        if ((rc = read_u32(c, &kv->type, what))) return rc;
        if ((rc = read_value(c, kv, key))) return rc;
        if (kv->type == SR_GGUF_ARRAY && kv->arr_type == SR_GGUF_STRING) {
            /* validated and skipped here; indexed once the table is sized */
            for (uint64_t j = 0; j < kv->arr_len; j++) {
                sr_gguf_str s;
                char swhat[160];
                snprintf(swhat, sizeof swhat, "string %llu of array '%s'", (unsigned long long)j, key);
                if ((rc = read_str(c, &s, swhat))) return rc;
            }
        }
    }
    return SR_OK;
}

typedef struct {
    uint64_t offset, n_bytes, index;
} extent;

static int extent_cmp(const void *a, const void *b) {
    const extent *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int read_tensor(cursor *c, impl *g, uint64_t i) {
    sr_gguf_tensor *t = &g->pub.tensors[i];
    char what[160], name[80];
    snprintf(what, sizeof what, "name of tensor %llu", (unsigned long long)i);
    int rc = read_str(c, &t->name, what);
    if (rc) return rc;
    printable(t->name, name);
    uint64_t dup = table_insert(g->tensor_hash, g->tensor_cap, t->name, i, &g->pub.tensors[0].name,
                                sizeof *t);
    if (dup)
        return sr_error_set(SR_EFORMAT, "%s: tensor name '%s' appears twice (tensors %llu and %llu)",
                            c->name, name, (unsigned long long)(dup - 1), (unsigned long long)i);
    snprintf(what, sizeof what, "n_dims of tensor '%s'", name);
    if ((rc = read_u32(c, &t->n_dims, what))) return rc;
    if (t->n_dims < 1 || t->n_dims > MAX_DIMS)
        return sr_error_set(SR_EFORMAT, "%s: tensor '%s' has %u dimensions (must be 1..%d)", c->name,
                            name, t->n_dims, MAX_DIMS);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < MAX_DIMS; d++) {
        uint64_t ne = 1;
        if (d < t->n_dims) {
            snprintf(what, sizeof what, "dimension %u of tensor '%s'", d, name);
            if ((rc = read_u64(c, &ne, what))) return rc;
            if (ne < 1 || ne > MAX_ELEMENTS / n_el)
                return sr_error_set(SR_EFORMAT, "%s: tensor '%s' has dimension %u of size %llu (must be "
                                    ">= 1, with at most 2^56 elements in all)",
                                    c->name, name, d, (unsigned long long)ne);
        }
        t->ne[d] = (int64_t)ne;
        n_el *= ne;
    }
    snprintf(what, sizeof what, "type of tensor '%s'", name);
    if ((rc = read_u32(c, &t->type, what))) return rc;
    uint64_t row = sr_ggml_row_bytes(t->type, t->ne[0]);
    if (row == 0) {
        if (sr_ggml_row_bytes(t->type, 256) == 0)
            return sr_error_set(SR_EFORMAT, "%s: tensor '%s' has unknown type %u", c->name, name, t->type);
        return sr_error_set(SR_EFORMAT, "%s: tensor '%s' of type %s has rows of %lld elements, not a "
                            "multiple of the type's block size", c->name, name,
                            sr_ggml_type_name(t->type), (long long)t->ne[0]);
    }
    uint64_t rows = n_el / (uint64_t)t->ne[0];
    if (rows > UINT64_MAX / row)
        return sr_error_set(SR_EFORMAT, "%s: tensor '%s' size overflows 64 bits", c->name, name);
    t->n_bytes = row * rows;
    snprintf(what, sizeof what, "data offset of tensor '%s'", name);
    if ((rc = read_u64(c, &t->offset, what))) return rc;
    if (t->offset % g->pub.alignment != 0)
        return sr_error_set(SR_EFORMAT, "%s: tensor '%s' has data offset %llu, not a multiple of the "
                            "alignment %llu", c->name, name, (unsigned long long)t->offset,
                            (unsigned long long)g->pub.alignment);
    return SR_OK;
}

/* Checks that every tensor lies inside the file after data_start and that
 * no two overlap, then sets the data pointers. */
static int place_tensors(cursor *c, impl *g, uint64_t data_start) {
    sr_gguf *pub = &g->pub;
    if (pub->n_tensors == 0) return SR_OK;
    char name[80], other[80];
    if (data_start > c->size)
        return sr_error_set(SR_EFORMAT, "%s: the tensor data section starts at %llu, past the end of "
                            "the file (size %llu); the file is truncated or corrupt",
                            c->name, (unsigned long long)data_start, (unsigned long long)c->size);
    uint64_t avail = c->size - data_start;
    extent *ext = malloc(pub->n_tensors * sizeof *ext);
    if (!ext) return sr_error_set(SR_ENOMEM, "%s: out of memory for %llu tensor extents", c->name,
                                  (unsigned long long)pub->n_tensors);
    int rc = SR_OK;
    for (uint64_t i = 0; i < pub->n_tensors; i++) {
        sr_gguf_tensor *t = &pub->tensors[i];
        if (t->offset > avail) {
            rc = sr_error_set(SR_EFORMAT,
                              "%s: tensor '%s' starts past end of file (data section %llu + offset %llu "
                              "> file size %llu); the file is truncated or corrupt",
                              c->name, printable(t->name, name), (unsigned long long)data_start,
                              (unsigned long long)t->offset, (unsigned long long)c->size);
            goto done;
        }
        if (t->n_bytes > avail - t->offset) {
            rc = sr_error_set(SR_EFORMAT,
                              "%s: tensor '%s' extends past end of file (offset %llu + %llu bytes > "
                              "file size %llu); the file is truncated or corrupt",
                              c->name, printable(t->name, name),
                              (unsigned long long)(data_start + t->offset), (unsigned long long)t->n_bytes,
                              (unsigned long long)c->size);
            goto done;
        }
        t->data = c->p + data_start + t->offset;
        ext[i] = (extent){t->offset, t->n_bytes, i};
    }
    qsort(ext, pub->n_tensors, sizeof *ext, extent_cmp);
    for (uint64_t i = 1; i < pub->n_tensors; i++)
        if (ext[i - 1].offset + ext[i - 1].n_bytes > ext[i].offset) {
            rc = sr_error_set(SR_EFORMAT, "%s: tensors '%s' and '%s' overlap (offsets %llu + %llu bytes "
                              "and %llu)", c->name,
                              printable(pub->tensors[ext[i - 1].index].name, name),
                              printable(pub->tensors[ext[i].index].name, other),
                              (unsigned long long)ext[i - 1].offset, (unsigned long long)ext[i - 1].n_bytes,
                              (unsigned long long)ext[i].offset);
            goto done;
        }
done:
    free(ext);
    return rc;
}

static int parse(cursor *c, impl *g) {
    sr_gguf *pub = &g->pub;
    int rc = need(c, HEADER_BYTES, "header");
    if (rc) return rc;
    if (memcmp(c->p, "GGUF", 4) != 0)
        return sr_error_set(SR_EFORMAT, "%s: not a GGUF file (magic is %02x %02x %02x %02x, expected "
                            "\"GGUF\")", c->name, c->p[0], c->p[1], c->p[2], c->p[3]);
    c->pos = 4;
    if ((rc = read_u32(c, &pub->version, "version"))) return rc;
    if (pub->version == 1)
        return sr_error_set(SR_EFORMAT, "%s: GGUF version 1 is not supported (only 2 and 3); convert "
                            "the model again with a current llama.cpp", c->name);
    if (pub->version != 2 && pub->version != 3)
        return sr_error_set(SR_EFORMAT, "%s: GGUF version %u is not supported (only 2 and 3)%s", c->name,
                            pub->version, (pub->version & 0xffff) == 0 ? "; the file may be big-endian" : "");
    if ((rc = read_u64(c, &pub->n_tensors, "tensor count")) ||
        (rc = read_u64(c, &pub->n_kv, "metadata count")))
        return rc;
    uint64_t left = c->size - c->pos;
    if (pub->n_kv > left / MIN_KV_BYTES)
        return sr_error_set(SR_EFORMAT, "%s: header claims %llu metadata entries, more than the %llu bytes "
                            "after the header could hold; the file is truncated or corrupt", c->name,
                            (unsigned long long)pub->n_kv, (unsigned long long)left);
    if (pub->n_tensors > left / MIN_TENSOR_BYTES)
        return sr_error_set(SR_EFORMAT, "%s: header claims %llu tensors, more than the %llu bytes after "
                            "the header could hold; the file is truncated or corrupt", c->name,
                            (unsigned long long)pub->n_tensors, (unsigned long long)left);

    g->kv_cap = table_cap(pub->n_kv);
    g->tensor_cap = table_cap(pub->n_tensors);
    pub->kv = calloc(pub->n_kv ? pub->n_kv : 1, sizeof *pub->kv);
    pub->tensors = calloc(pub->n_tensors ? pub->n_tensors : 1, sizeof *pub->tensors);
    g->kv_hash = calloc(g->kv_cap, sizeof *g->kv_hash);
    g->tensor_hash = calloc(g->tensor_cap, sizeof *g->tensor_hash);
    if (!pub->kv || !pub->tensors || !g->kv_hash || !g->tensor_hash)
        return sr_error_set(SR_ENOMEM, "%s: out of memory for %llu metadata entries and %llu tensors",
                            c->name, (unsigned long long)pub->n_kv, (unsigned long long)pub->n_tensors);

    /* Pass 1 validates every key and value and counts string-array elements;
     * pass 2 (only if there are any) fills the string table. */
    if ((rc = read_kvs(c, g))) return rc;
    uint64_t n_strs = 0;
    for (uint64_t i = 0; i < pub->n_kv; i++)
        if (pub->kv[i].type == SR_GGUF_ARRAY && pub->kv[i].arr_type == SR_GGUF_STRING)
            n_strs += pub->kv[i].arr_len; /* each <= file size / 8: cannot overflow */
    if (n_strs) {
        uint64_t kv_end = c->pos;
        g->strs = malloc(n_strs * sizeof *g->strs);
        if (!g->strs)
            return sr_error_set(SR_ENOMEM, "%s: out of memory for %llu array strings", c->name,
                                (unsigned long long)n_strs);
        sr_gguf_str *next = g->strs;
        for (uint64_t i = 0; i < pub->n_kv; i++) {
            sr_gguf_kv *kv = &pub->kv[i];
            if (kv->type != SR_GGUF_ARRAY || kv->arr_type != SR_GGUF_STRING) continue;
            char key[80];
            c->pos = (uint64_t)(kv->data - c->p);
            if ((rc = read_strings(c, kv, next, printable(kv->key, key)))) return rc;
            kv->arr_strs = next;
            next += kv->arr_len;
        }
        c->pos = kv_end;
    }

    pub->alignment = DEFAULT_ALIGNMENT;
    const sr_gguf_kv *al = sr_gguf_find(pub, "general.alignment");
    if (al) {
        uint64_t a = 0;
        if ((rc = get_u64(c, al, "general.alignment", UINT32_MAX, &a))) return rc;
        if (a == 0 || (a & (a - 1)) != 0)
            return sr_error_set(SR_EFORMAT, "%s: general.alignment is %llu, not a power of two", c->name,
                                (unsigned long long)a);
        pub->alignment = a;
    }

    for (uint64_t i = 0; i < pub->n_tensors; i++)
        if ((rc = read_tensor(c, g, i))) return rc;

    /* the data section starts at the next multiple of the alignment */
    uint64_t pad = (pub->alignment - c->pos % pub->alignment) % pub->alignment;
    return place_tensors(c, g, c->pos + pad);
}

static int open_image(sr_gguf **out, const uint8_t *p, size_t size, const char *name, int mapped) {
    impl *g = calloc(1, sizeof *g);
    if (!g) return sr_error_set(SR_ENOMEM, "%s: out of memory", name);
    g->pub.map = p;
    g->pub.map_size = size;
    g->mapped = mapped;
    g->name = strdup(name);
    if (!g->name) {
        free(g);
        return sr_error_set(SR_ENOMEM, "%s: out of memory", name);
    }
    cursor c = {p, size, 0, name};
    int rc = parse(&c, g);
    if (rc) {
        g->mapped = 0; /* the caller unmaps on failure */
        sr_gguf_close(&g->pub);
        return rc;
    }
    *out = &g->pub;
    return SR_OK;
}

int sr_gguf_open_buffer(sr_gguf **out, const void *buf, size_t size) {
    if (!out || (!buf && size))
        return sr_error_set(SR_EINVAL, "sr_gguf_open_buffer: NULL argument");
    *out = NULL;
    static const uint8_t empty[1];
    return open_image(out, buf ? buf : empty, size, "buffer", 0);
}

int sr_gguf_open(sr_gguf **out, const char *path) {
    if (!out || !path) return sr_error_set(SR_EINVAL, "sr_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sr_error_set(SR_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return sr_error_set(SR_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sr_error_set(SR_EIO, "%s: not a regular file", path);
    }
    if (st.st_size < HEADER_BYTES) {
        close(fd);
        return sr_error_set(SR_EFORMAT, "%s: file is %lld bytes, too small for a GGUF header (%d bytes)",
                            path, (long long)st.st_size, HEADER_BYTES);
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED) return sr_error_set(SR_EIO, "%s: cannot mmap %zu bytes: %s", path, size, strerror(e));
    int rc = open_image(out, map, size, path, 1);
    if (rc) munmap(map, size);
    return rc;
}

void sr_gguf_close(sr_gguf *pub) {
    if (!pub) return;
    impl *g = (impl *)pub;
    if (g->mapped) munmap((void *)pub->map, pub->map_size);
    free(pub->kv);
    free(pub->tensors);
    free(g->kv_hash);
    free(g->tensor_hash);
    free(g->strs);
    free(g->name);
    free(g);
}

const sr_gguf_kv *sr_gguf_find(const sr_gguf *pub, const char *key) {
    if (!pub) return NULL;
    const impl *g = (const impl *)pub;
    return table_lookup(g->kv_hash, g->kv_cap, key, &pub->kv[0].key, sizeof(sr_gguf_kv));
}

const sr_gguf_tensor *sr_gguf_tensor_find(const sr_gguf *pub, const char *name) {
    if (!pub) return NULL;
    const impl *g = (const impl *)pub;
    return table_lookup(g->tensor_hash, g->tensor_cap, name, &pub->tensors[0].name,
                        sizeof(sr_gguf_tensor));
}

static const char *file_name(const sr_gguf *g) {
    return g ? ((const impl *)g)->name : "(no GGUF file)";
}

static int find_typed(const sr_gguf *g, const char *key, const sr_gguf_kv **kv) {
    *kv = sr_gguf_find(g, key);
    if (!*kv)
        return sr_error_set(SR_EFORMAT, "%s: metadata key '%s' is missing", file_name(g), key ? key : "(null)");
    return SR_OK;
}

int sr_gguf_get_u32(const sr_gguf *g, const char *key, uint32_t *out) {
    const sr_gguf_kv *kv;
    int rc = find_typed(g, key, &kv);
    if (rc) return rc;
    cursor c = {g->map, g->map_size, 0, file_name(g)};
    uint64_t v = 0;
    if ((rc = get_u64(&c, kv, key, UINT32_MAX, &v))) return rc;
    *out = (uint32_t)v;
    return SR_OK;
}

int sr_gguf_get_f32(const sr_gguf *g, const char *key, float *out) {
    const sr_gguf_kv *kv;
    int rc = find_typed(g, key, &kv);
    if (rc) return rc;
    if (kv->type == SR_GGUF_F32) {
        memcpy(out, kv->data, 4);
        return SR_OK;
    }
    if (kv->type == SR_GGUF_F64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
        return SR_OK;
    }
    return sr_error_set(SR_EFORMAT, "%s: metadata key '%s' has type %u, not a float", file_name(g), key,
                        kv->type);
}

int sr_gguf_get_bool(const sr_gguf *g, const char *key, int *out) {
    const sr_gguf_kv *kv;
    int rc = find_typed(g, key, &kv);
    if (rc) return rc;
    if (kv->type != SR_GGUF_BOOL)
        return sr_error_set(SR_EFORMAT, "%s: metadata key '%s' has type %u, not a bool", file_name(g), key,
                            kv->type);
    *out = kv->data[0] != 0;
    return SR_OK;
}

int sr_gguf_get_str(const sr_gguf *g, const char *key, sr_gguf_str *out) {
    const sr_gguf_kv *kv;
    int rc = find_typed(g, key, &kv);
    if (rc) return rc;
    if (kv->type != SR_GGUF_STRING)
        return sr_error_set(SR_EFORMAT, "%s: metadata key '%s' has type %u, not a string", file_name(g),
                            key, kv->type);
    uint64_t len;
    memcpy(&len, kv->data, 8);
    *out = (sr_gguf_str){(const char *)kv->data + 8, len};
    return SR_OK;
}

sr_gguf_str sr_gguf_arr_str(const sr_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != SR_GGUF_ARRAY || kv->arr_type != SR_GGUF_STRING || i >= kv->arr_len)
        return (sr_gguf_str){"", 0};
    if (kv->arr_strs) return kv->arr_strs[i];
    /* a kv built elsewhere: walk the elements */
    const uint8_t *p = kv->data;
    uint64_t len;
    for (;; i--) {
        memcpy(&len, p, 8);
        if (i == 0) break;
        p += 8 + len;
    }
    return (sr_gguf_str){(const char *)p + 8, len};
}
