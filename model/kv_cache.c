/* kv_cache: blocks of fp16/bf16 keys and values (see kv_cache.h). */
#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "attention/attention.h"
#include "base/half.h"
#include "base/status.h"

int sr_kv_build(sr_kv_cache *c, int n_layer, int n_head_kv, int head_dim, int dtype,
                int64_t block_size) {
    memset(c, 0, sizeof(*c));
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0)
        return sr_error_set(SR_EINVAL, "kv cache: bad shape (layers %d, kv heads %d, head dim %d)",
                            n_layer, n_head_kv, head_dim);
    if (dtype != SR_DT_F16 && dtype != SR_DT_BF16 && dtype != SR_DT_F32)
        return sr_error_set(SR_EINVAL, "kv cache: type must be f16, bf16 or f32");
    if (block_size <= 0 || block_size > (1 << 24))
        return sr_error_set(SR_EINVAL, "kv cache: block size %lld must be in 1..16777216",
                            (long long)block_size);
    *c = (sr_kv_cache){
        .n_layer = n_layer, .n_head_kv = n_head_kv, .head_dim = head_dim, .dtype = dtype, .block_size = block_size};
    return SR_OK;
}

void sr_kv_free(sr_kv_cache *c) {
    sr_kv_clear(c);
    free(c->blocks);
    free(c->block_pos);
    free(c->block_len);
    free(c->k_ptr);
    free(c->v_ptr);
    memset(c, 0, sizeof(*c));
}

static size_t elem_size(int dtype) {
    return dtype == SR_DT_F32 ? 4 : 2;
}

int64_t sr_kv_next_pos(const sr_kv_cache *c) {
    return c->n_blocks == 0 ? 0 : c->block_pos[c->n_blocks - 1] + c->block_len[c->n_blocks - 1];
}

size_t sr_kv_row_bytes(const sr_kv_cache *c) {
    return (size_t)c->n_head_kv * (size_t)c->head_dim * elem_size(c->dtype);
}

size_t sr_kv_block_bytes(const sr_kv_cache *c) {
    return (size_t)c->n_layer * 2 * (size_t)c->block_size * sr_kv_row_bytes(c);
}

size_t sr_kv_bytes(const sr_kv_cache *c) {
    return (size_t)c->n_blocks * sr_kv_block_bytes(c);
}

/* Grows the per-block arrays to hold at least need blocks. The per-layer
 * pointer arrays are laid out (layer, cap), so growing re-lays them out. */
static int grow(sr_kv_cache *c, int64_t need) {
    if (need <= c->cap_blocks) return SR_OK;
    int64_t cap = c->cap_blocks ? c->cap_blocks : 16;
    while (cap < need) cap *= 2;
    void **blocks = realloc(c->blocks, (size_t)cap * sizeof(*blocks));
    if (!blocks) return sr_error_set(SR_ENOMEM, "kv cache: out of memory for %lld blocks", (long long)cap);
    c->blocks = blocks;
    int64_t *pos = realloc(c->block_pos, (size_t)cap * sizeof(*pos));
    if (!pos) return sr_error_set(SR_ENOMEM, "kv cache: out of memory for %lld blocks", (long long)cap);
    c->block_pos = pos;
    int64_t *len = realloc(c->block_len, (size_t)cap * sizeof(*len));
    if (!len) return sr_error_set(SR_ENOMEM, "kv cache: out of memory for %lld blocks", (long long)cap);
    c->block_len = len;
    const void **kp = malloc((size_t)c->n_layer * (size_t)cap * sizeof(*kp));
    const void **vp = malloc((size_t)c->n_layer * (size_t)cap * sizeof(*vp));
    if (!kp || !vp) {
        free(kp);
        free(vp);
        return sr_error_set(SR_ENOMEM, "kv cache: out of memory for %lld blocks", (long long)cap);
    }
    for (int64_t l = 0; l < c->n_layer; l++) {
        for (int64_t b = 0; b < c->n_blocks; b++) {
            kp[l * cap + b] = c->k_ptr[l * c->cap_blocks + b];
            vp[l * cap + b] = c->v_ptr[l * c->cap_blocks + b];
        }
    }
    free(c->k_ptr);
    free(c->v_ptr);
    c->k_ptr = kp;
    c->v_ptr = vp;
    c->cap_blocks = cap;
    return SR_OK;
}

/* Appends one block (uninitialised) starting at position pos. */
static int add_block(sr_kv_cache *c, int64_t pos) {
    int rc = grow(c, c->n_blocks + 1);
    if (rc) return rc;
    void *p = NULL;
    size_t bytes = sr_kv_block_bytes(c);
    if (posix_memalign(&p, 64, bytes) != 0)
        return sr_error_set(SR_ENOMEM, "kv cache: out of memory for a block of %zu bytes", bytes);
    int64_t b = c->n_blocks++;
    c->blocks[b] = p;
    c->block_pos[b] = pos;
    c->block_len[b] = 0;
    size_t part = (size_t)c->block_size * sr_kv_row_bytes(c); /* one layer's K (or V) */
    for (int64_t l = 0; l < c->n_layer; l++) {
        c->k_ptr[l * c->cap_blocks + b] = (const char *)p + (size_t)(2 * l) * part;
        c->v_ptr[l * c->cap_blocks + b] = (const char *)p + (size_t)(2 * l + 1) * part;
    }
    return SR_OK;
}

/* Reserves n tokens at pos; fresh: always from a new block. */
static int reserve_at(sr_kv_cache *c, int64_t pos, int64_t n, int fresh, int64_t *b0, int64_t *off0) {
    if (n <= 0 || pos < 0)
        return sr_error_set(SR_EINVAL, "kv cache: reserve of %lld tokens at %lld", (long long)n, (long long)pos);
    int64_t last = c->n_blocks - 1;
    if (last >= 0 && pos < c->block_pos[last] + c->block_len[last])
        return sr_error_set(SR_EINVAL, "kv cache: position %lld is before the end of the cache (%lld)",
                            (long long)pos, (long long)(c->block_pos[last] + c->block_len[last]));
    int continues = !fresh && last >= 0 && c->block_len[last] < c->block_size &&
                    pos == c->block_pos[last] + c->block_len[last];
    int64_t old_blocks = c->n_blocks, old_len = last >= 0 ? c->block_len[last] : 0;
    int rc = SR_OK;
    if (continues) {
        *b0 = last;
        *off0 = c->block_len[last];
    } else {
        rc = add_block(c, pos);
        *b0 = c->n_blocks - 1;
        *off0 = 0;
    }
    for (int64_t b = *b0, left = n; rc == SR_OK && left > 0;) {
        int64_t take = c->block_size - c->block_len[b];
        if (take > left) take = left;
        c->block_len[b] += take;
        left -= take;
        if (left > 0 && (rc = add_block(c, c->block_pos[b] + c->block_size)) == SR_OK) b = c->n_blocks - 1;
    }
    if (rc) { /* out of memory: leave the cache as it was */
        while (c->n_blocks > old_blocks) free(c->blocks[--c->n_blocks]);
        if (last >= 0) c->block_len[last] = old_len;
        return rc;
    }
    c->n_tokens += n;
    return SR_OK;
}

int sr_kv_reserve(sr_kv_cache *c, int64_t pos, int64_t n, int64_t *b0, int64_t *off0) {
    return reserve_at(c, pos, n, 0, b0, off0);
}

int sr_kv_reserve_new_block(sr_kv_cache *c, int64_t pos, int64_t n, int64_t *b0) {
    int64_t off0;
    return reserve_at(c, pos, n, 1, b0, &off0);
}

static void convert(void *dst, const float *src, size_t n, int dtype) {
    uint16_t *d = dst;
    size_t i = 0;
    if (dtype == SR_DT_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (dtype == SR_DT_F16) {
#if defined(__F16C__)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(d + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) d[i] = sr_f32_to_f16(src[i]);
    } else {
        for (; i < n; i++) d[i] = sr_f32_to_bf16(src[i]);
    }
}

int sr_kv_store(sr_kv_cache *c, int layer, int64_t b0, int64_t off0, int64_t n, const float *k,
                const float *v) {
    if (layer < 0 || layer >= c->n_layer || b0 < 0 || b0 >= c->n_blocks || off0 < 0 ||
        off0 >= c->block_size)
        return sr_error_set(SR_EINVAL, "kv cache: store at layer %d block %lld offset %lld is out of range",
                            layer, (long long)b0, (long long)off0);
    /* checked before anything is written: a failed store changes nothing
     * (the reserved blocks are allocated, so their token count fits) */
    if (n < 0 || n > (c->n_blocks - b0) * c->block_size - off0)
        return sr_error_set(SR_EINVAL, "kv cache: store of %lld tokens at block %lld offset %lld runs past the "
                            "reserved blocks (they hold %lld)", (long long)n, (long long)b0, (long long)off0,
                            (long long)((c->n_blocks - b0) * c->block_size - off0));
    size_t row = (size_t)c->n_head_kv * (size_t)c->head_dim, rb = sr_kv_row_bytes(c); /* elements, bytes per token */
    int64_t b = b0, off = off0, done = 0;
    while (done < n) {
        int64_t take = c->block_size - off;
        if (take > n - done) take = n - done;
        char *kd = (char *)c->k_ptr[(int64_t)layer * c->cap_blocks + b] + (size_t)off * rb;
        char *vd = (char *)c->v_ptr[(int64_t)layer * c->cap_blocks + b] + (size_t)off * rb;
        convert(kd, k + (size_t)done * row, (size_t)take * row, c->dtype);
        convert(vd, v + (size_t)done * row, (size_t)take * row, c->dtype);
        done += take;
        b++;
        off = 0;
    }
    return SR_OK;
}

int sr_kv_push_block(sr_kv_cache *c, const void *data, int64_t pos, int64_t len) {
    if (len <= 0 || len > c->block_size || pos < 0)
        return sr_error_set(SR_EINVAL, "kv cache: pushed block of %lld tokens at %lld (block size %lld)",
                            (long long)len, (long long)pos, (long long)c->block_size);
    int64_t last = c->n_blocks - 1;
    if (last >= 0 && pos < c->block_pos[last] + c->block_len[last])
        return sr_error_set(SR_EINVAL, "kv cache: pushed block at %lld is before the end of the cache",
                            (long long)pos);
    int rc = add_block(c, pos);
    if (rc) return rc;
    memcpy(c->blocks[c->n_blocks - 1], data, sr_kv_block_bytes(c));
    c->block_len[c->n_blocks - 1] = len;
    c->n_tokens += len;
    return SR_OK;
}

int sr_kv_drop_before(sr_kv_cache *c, int64_t pos) {
    if (pos < 0) return sr_error_set(SR_EINVAL, "kv cache: drop before position %lld", (long long)pos);
    int64_t gone = 0; /* blocks wholly before pos */
    while (gone < c->n_blocks && c->block_pos[gone] + c->block_len[gone] <= pos) {
        c->n_tokens -= c->block_len[gone];
        free(c->blocks[gone++]);
    }
    if (gone < c->n_blocks && c->block_pos[gone] < pos) { /* straddles pos: keep its rows from pos on */
        int64_t cut = pos - c->block_pos[gone], keep = c->block_len[gone] - cut;
        size_t rb = sr_kv_row_bytes(c);
        for (int64_t l = 0; l < c->n_layer; l++) {
            char *k = (char *)c->k_ptr[l * c->cap_blocks + gone], *v = (char *)c->v_ptr[l * c->cap_blocks + gone];
            memmove(k, k + (size_t)cut * rb, (size_t)keep * rb);
            memmove(v, v + (size_t)cut * rb, (size_t)keep * rb);
        }
        c->block_pos[gone] = pos;
        c->block_len[gone] = keep;
        c->n_tokens -= cut;
    }
    if (gone == 0) return SR_OK;
    int64_t left = c->n_blocks - gone;
    memmove(c->blocks, c->blocks + gone, sizeof(*c->blocks) * (size_t)left);
    memmove(c->block_pos, c->block_pos + gone, sizeof(*c->block_pos) * (size_t)left);
    memmove(c->block_len, c->block_len + gone, sizeof(*c->block_len) * (size_t)left);
    for (int64_t l = 0; l < c->n_layer; l++) {
        memmove(c->k_ptr + l * c->cap_blocks, c->k_ptr + l * c->cap_blocks + gone, sizeof(*c->k_ptr) * (size_t)left);
        memmove(c->v_ptr + l * c->cap_blocks, c->v_ptr + l * c->cap_blocks + gone, sizeof(*c->v_ptr) * (size_t)left);
    }
    c->n_blocks = left;
    return SR_OK;
}

void sr_kv_clear(sr_kv_cache *c) {
    for (int64_t b = 0; b < c->n_blocks; b++) free(c->blocks[b]);
    c->n_blocks = 0;
    c->n_tokens = 0;
}

int sr_kv_runs(const sr_kv_cache *c, sr_kv_run **runs, int64_t *n_runs) {
    *runs = NULL;
    *n_runs = 0;
    if (c->n_blocks == 0) return SR_OK;
    sr_kv_run *r = malloc((size_t)c->n_blocks * sizeof(*r));
    if (!r) return sr_error_set(SR_ENOMEM, "kv cache: out of memory");
    int64_t n = 0;
    for (int64_t b = 0; b < c->n_blocks; b++) {
        int joins = n > 0 && c->block_len[b - 1] == c->block_size &&
                    c->block_pos[b] == c->block_pos[b - 1] + c->block_size;
        if (joins) {
            r[n - 1].n++;
            r[n - 1].len += c->block_len[b];
        } else {
            r[n++] = (sr_kv_run){b, 1, c->block_pos[b], c->block_len[b]};
        }
    }
    *runs = r;
    *n_runs = n;
    return SR_OK;
}
