/* model: the Llama-family forward pass, top to bottom (see model.h).
 *
 * GGUF conventions this relies on (as llama.cpp writes them):
 *  - llama: Q and K weights were permuted at conversion so that RoPE rotates
 *    adjacent pairs (x[2i], x[2i+1]) ("NORM"); qwen2 keeps the Hugging Face
 *    order and rotates x[i] with x[i + rope_dim/2] ("NEOX").
 *  - llama3 scaling comes as a rope_freqs.weight tensor of per-pair frequency
 *    divisors, or as rope.scaling.* metadata; both give the same factors.
 *  - no output.weight means the head is tied to token_embd.weight. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/status.h"

/* ---------------------------------------------------------------- config */

typedef struct {
    const sr_gguf *g;
    const char *arch;
} cfg_ctx;

static const char *key_for(const cfg_ctx *c, const char *suffix, char *buf, size_t cap) {
    snprintf(buf, cap, "%s.%s", c->arch, suffix);
    return buf;
}

static int get_u32(const cfg_ctx *c, const char *suffix, int required, uint32_t def, uint32_t *out) {
    char key[128];
    key_for(c, suffix, key, sizeof(key));
    if (!sr_gguf_find(c->g, key)) {
        if (required) return sr_error_set(SR_EFORMAT, "model: metadata key '%s' is missing", key);
        *out = def;
        return SR_OK;
    }
    return sr_gguf_get_u32(c->g, key, out);
}

static int get_f32(const cfg_ctx *c, const char *suffix, float def, float *out) {
    char key[128];
    key_for(c, suffix, key, sizeof(key));
    if (!sr_gguf_find(c->g, key)) {
        *out = def;
        return SR_OK;
    }
    return sr_gguf_get_f32(c->g, key, out);
}

static int str_eq(sr_gguf_str s, const char *z) {
    return s.len == strlen(z) && memcmp(s.ptr, z, s.len) == 0;
}

int sr_model_config_read(sr_model_config *c, const sr_gguf *g) {
    memset(c, 0, sizeof(*c));
    sr_gguf_str arch;
    int rc = sr_gguf_get_str(g, "general.architecture", &arch);
    if (rc) return rc;
    cfg_ctx cx = {g, NULL};
    if (str_eq(arch, "llama")) {
        c->arch = SR_MODEL_ARCH_LLAMA;
        c->rope_type = SR_MODEL_ROPE_NORM;
        cx.arch = "llama";
    } else if (str_eq(arch, "qwen2")) {
        c->arch = SR_MODEL_ARCH_QWEN2;
        c->rope_type = SR_MODEL_ROPE_NEOX;
        cx.arch = "qwen2";
    } else {
        return sr_error_set(SR_EUNSUPPORTED,
                            "model: architecture '%.*s' is not supported (llama and qwen2 are)",
                            (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    }
    uint32_t dim, n_layer, n_head, n_head_kv, head_dim, hidden, rope_dim, ctx, vocab;
    if ((rc = get_u32(&cx, "embedding_length", 1, 0, &dim)) ||
        (rc = get_u32(&cx, "block_count", 1, 0, &n_layer)) ||
        (rc = get_u32(&cx, "attention.head_count", 1, 0, &n_head)) ||
        (rc = get_u32(&cx, "feed_forward_length", 1, 0, &hidden)) ||
        (rc = get_u32(&cx, "context_length", 0, 0, &ctx)) ||
        (rc = get_u32(&cx, "vocab_size", 0, 0, &vocab)))
        return rc;
    if (dim == 0 || n_layer == 0 || n_head == 0 || hidden == 0 || dim > (1u << 20) ||
        n_layer > 4096 || n_head > 4096 || hidden > (1u << 22) || vocab > (1u << 30))
        return sr_error_set(SR_EFORMAT,
                            "model: implausible shape (dim %u of 1..2^20, layers %u of 1..4096, heads %u of 1..4096, "
                            "ffn %u of 1..2^22, vocabulary %u of 0..2^30)",
                            dim, n_layer, n_head, hidden, vocab);
    if ((rc = get_u32(&cx, "attention.head_count_kv", 0, n_head, &n_head_kv)) ||
        (rc = get_u32(&cx, "attention.key_length", 0, dim / n_head, &head_dim)) ||
        (rc = get_u32(&cx, "rope.dimension_count", 0, head_dim, &rope_dim)))
        return rc;
    if (n_head_kv == 0 || n_head % n_head_kv != 0)
        return sr_error_set(SR_EFORMAT, "model: %u query heads are not a multiple of %u KV heads", n_head, n_head_kv);
    if (head_dim == 0 || head_dim > 256 || head_dim % 16 != 0)
        return sr_error_set(SR_EUNSUPPORTED, "model: head dim %u is not supported (a multiple of 16 up to 256)",
                            head_dim);
    if (rope_dim > head_dim || rope_dim % 2 != 0)
        return sr_error_set(SR_EFORMAT, "model: rope dimension %u does not fit head dim %u", rope_dim, head_dim);
    c->dim = (int)dim;
    c->n_layer = (int)n_layer;
    c->n_head = (int)n_head;
    c->n_head_kv = (int)n_head_kv;
    c->head_dim = (int)head_dim;
    c->hidden_dim = (int)hidden;
    c->vocab_size = (int)vocab; /* 0: taken from token_embd at load */
    c->context_len = ctx;
    c->rope_dim = (int)rope_dim;
    if ((rc = get_f32(&cx, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)) ||
        (rc = get_f32(&cx, "rope.freq_base", 10000.0f, &c->rope_theta)))
        return rc;
    c->rope_scale = 1.0f;

    char key[128];
    sr_gguf_str type = {"none", 4};
    if (sr_gguf_find(g, key_for(&cx, "rope.scaling.type", key, sizeof(key))) &&
        (rc = sr_gguf_get_str(g, key, &type)))
        return rc;
    float factor;
    if ((rc = get_f32(&cx, "rope.scaling.factor", 1.0f, &factor))) return rc;
    int has_llama3_keys = sr_gguf_find(g, key_for(&cx, "rope.scaling.low_freq_factor", key, sizeof(key))) != NULL;
    if (str_eq(type, "linear")) {
        c->rope_scale = factor;
    } else if (str_eq(type, "llama3") || has_llama3_keys) {
        uint32_t orig;
        c->rope_llama3 = 1;
        c->rope_factor = factor;
        if ((rc = get_f32(&cx, "rope.scaling.low_freq_factor", 1.0f, &c->rope_low_freq)) ||
            (rc = get_f32(&cx, "rope.scaling.high_freq_factor", 4.0f, &c->rope_high_freq)) ||
            (rc = get_u32(&cx, "rope.scaling.original_context_length", 1, 0, &orig)))
            return rc;
        c->rope_orig_ctx = orig;
        if (!(c->rope_high_freq > c->rope_low_freq) || c->rope_factor <= 0)
            return sr_error_set(SR_EFORMAT,
                                "model: llama3 rope scaling needs high_freq_factor > low_freq_factor and factor > 0");
    } else if (!str_eq(type, "none")) {
        return sr_error_set(SR_EUNSUPPORTED, "model: rope scaling '%.*s' is not supported (none, linear, llama3 are)",
                            (int)(type.len > 32 ? 32 : type.len), type.ptr);
    }
    if (!(c->rope_scale > 0) || !(c->rope_theta > 0) || !(c->norm_eps > 0))
        return sr_error_set(SR_EFORMAT, "model: rope theta, rope scale and norm epsilon must be positive");
    return SR_OK;
}

/* --------------------------------------------------------------- weights */

static int matmul_type(uint32_t type) {
    switch (type) {
    case SR_GGML_F32: case SR_GGML_F16: case SR_GGML_BF16: case SR_GGML_Q8_0:
    case SR_GGML_Q4_0: case SR_GGML_Q4_1: case SR_GGML_Q6_K: return 1;
    default: return 0;
    }
}

static const sr_gguf_tensor *find_tensor(const sr_gguf *g, const char *name, int optional, int *rc) {
    const sr_gguf_tensor *t = sr_gguf_tensor_find(g, name);
    *rc = SR_OK;
    if (!t && !optional) *rc = sr_error_set(SR_EFORMAT, "model: tensor '%s' is missing", name);
    return t;
}

/* A matrix with rows of k inputs and m rows, in a type sr_matmul takes. */
static int get_matrix(const sr_gguf *g, const char *name, int64_t k, int64_t m, int optional, sr_matmul_weight *w) {
    int rc;
    const sr_gguf_tensor *t = find_tensor(g, name, optional, &rc);
    memset(w, 0, sizeof(*w));
    if (!t) return rc;
    int extra = 0;
    for (uint32_t i = 2; i < t->n_dims && i < 4; i++) extra |= t->ne[i] != 1;
    if (t->n_dims < 1 || t->ne[0] != k || (t->n_dims >= 2 ? t->ne[1] : 1) != m || extra)
        return sr_error_set(SR_EFORMAT, "model: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                            (long long)t->ne[0], (long long)(t->n_dims >= 2 ? t->ne[1] : 1), (long long)k,
                            (long long)m);
    if (!matmul_type(t->type))
        return sr_error_set(SR_EUNSUPPORTED, "model: tensor '%s' has type %s, which matmul does not support", name,
                            sr_ggml_type_name(t->type));
    if (t->n_bytes < sr_ggml_row_bytes(t->type, k) * (uint64_t)m)
        return sr_error_set(SR_EFORMAT, "model: tensor '%s' is too small for its shape", name);
    *w = (sr_matmul_weight){t->type, k, m, t->data};
    return SR_OK;
}

static int get_vector(const sr_gguf *g, const char *name, int64_t n, int optional, const float **out) {
    int rc;
    const sr_gguf_tensor *t = find_tensor(g, name, optional, &rc);
    *out = NULL;
    if (!t) return rc;
    if (t->type != SR_GGML_F32 || t->n_dims != 1 || t->ne[0] != n)
        return sr_error_set(SR_EFORMAT, "model: tensor '%s' must be F32 [%lld] (is %s, %u dims, ne0 %lld)", name,
                            (long long)n, sr_ggml_type_name(t->type), t->n_dims, (long long)t->ne[0]);
    if (((uintptr_t)t->data & 3) != 0)
        return sr_error_set(SR_EFORMAT, "model: tensor '%s' is not 4-byte aligned", name);
    *out = t->data;
    return SR_OK;
}

static int build_weights(sr_model_weights *w, sr_model_config *c, const sr_gguf *g) {
    int rc;
    const sr_gguf_tensor *emb = find_tensor(g, "token_embd.weight", 0, &rc);
    if (!emb) return rc;
    if (c->vocab_size == 0) c->vocab_size = emb->n_dims >= 2 && emb->ne[1] < (1 << 30) ? (int)emb->ne[1] : 0;
    if (c->vocab_size <= 0) return sr_error_set(SR_EFORMAT, "model: cannot tell the vocabulary size");
    int64_t d = c->dim, hd = c->head_dim, qd = (int64_t)c->n_head * hd, kvd = (int64_t)c->n_head_kv * hd;
    if ((rc = get_matrix(g, "token_embd.weight", d, c->vocab_size, 0, &w->token_embd)) ||
        (rc = get_matrix(g, "output.weight", d, c->vocab_size, 1, &w->output)) ||
        (rc = get_vector(g, "output_norm.weight", d, 0, &w->output_norm)) ||
        (rc = get_vector(g, "rope_freqs.weight", c->rope_dim / 2, 1, &w->rope_freqs)))
        return rc;
    if (!w->output.data) w->output = w->token_embd;
    w->layers = calloc((size_t)c->n_layer, sizeof(*w->layers));
    if (!w->layers) return sr_error_set(SR_ENOMEM, "model: out of memory");
    for (int l = 0; l < c->n_layer; l++) {
        struct sr_model_layer_weights *L = &w->layers[l];
        char n[96];
        int bias = c->arch == SR_MODEL_ARCH_QWEN2;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, l), n)
        if ((rc = get_vector(g, NAME("attn_norm.weight"), d, 0, &L->attn_norm)) ||
            (rc = get_matrix(g, NAME("attn_q.weight"), d, qd, 0, &L->wq)) ||
            (rc = get_matrix(g, NAME("attn_k.weight"), d, kvd, 0, &L->wk)) ||
            (rc = get_matrix(g, NAME("attn_v.weight"), d, kvd, 0, &L->wv)) ||
            (rc = get_matrix(g, NAME("attn_output.weight"), qd, d, 0, &L->wo)) ||
            (rc = get_vector(g, NAME("attn_q.bias"), qd, !bias, &L->bq)) ||
            (rc = get_vector(g, NAME("attn_k.bias"), kvd, !bias, &L->bk)) ||
            (rc = get_vector(g, NAME("attn_v.bias"), kvd, !bias, &L->bv)) ||
            (rc = get_vector(g, NAME("ffn_norm.weight"), d, 0, &L->ffn_norm)) ||
            (rc = get_matrix(g, NAME("ffn_gate.weight"), d, c->hidden_dim, 0, &L->w_gate)) ||
            (rc = get_matrix(g, NAME("ffn_up.weight"), d, c->hidden_dim, 0, &L->w_up)) ||
            (rc = get_matrix(g, NAME("ffn_down.weight"), c->hidden_dim, d, 0, &L->w_down)))
            return rc;
#undef NAME
    }
    return SR_OK;
}

static void free_weights(sr_model_weights *w) {
    free(w->layers);
    memset(w, 0, sizeof(*w));
}

/* ------------------------------------------------------------- run state */

/* Bytes of rows x width + extra floats, or -1 when that overflows. */
static int64_t state_bytes(int64_t rows, int64_t width, int64_t extra) {
    int64_t n, bytes;
    if (__builtin_mul_overflow(rows, width, &n) || __builtin_add_overflow(n, extra, &n) ||
        __builtin_mul_overflow(n, (int64_t)sizeof(float), &bytes))
        return -1;
    return bytes;
}

static int build_state(sr_model_state *s, const sr_model_config *c, const sr_model_weights *w, int64_t max_batch) {
    memset(s, 0, sizeof(*s));
    s->max_batch = max_batch;
    int64_t B = max_batch, qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_head_kv * c->head_dim;
    int64_t half = c->rope_dim / 2;
    struct { float **p; int64_t rows, width, extra; } bufs[] = {
        {&s->x, B, c->dim, 0},         {&s->xb, B, c->dim, 0},          {&s->q, B, qd, 0},
        {&s->k, B, kvd, 0},            {&s->v, B, kvd, 0},              {&s->att, B, qd, 0},
        {&s->lse, B, c->n_head, 0},    {&s->att_part, B, qd, 0},        {&s->lse_part, B, c->n_head, 0},
        {&s->hb, B, c->hidden_dim, 0}, {&s->hb2, B, c->hidden_dim, 0},  {&s->rope_cos, B, half, 1},
        {&s->rope_sin, B, half, 1},    {&s->logits, 1, c->vocab_size, 0},
    };
    int64_t total = 0;
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        int64_t bytes = state_bytes(bufs[i].rows, bufs[i].width, bufs[i].extra);
        if (bytes < 0 || __builtin_add_overflow(total, bytes, &total)) {
            int64_t widest = c->dim > qd ? c->dim : qd;
            widest = widest > c->hidden_dim ? widest : c->hidden_dim;
            return sr_error_set(SR_ERANGE, "model: max_batch %lld is too large: the run state's size overflows "
                                "(allowed 1..%lld for this model)", (long long)B,
                                (long long)(INT64_MAX / (int64_t)sizeof(float) / 16 / widest));
        }
    }
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, (size_t)state_bytes(bufs[i].rows, bufs[i].width, bufs[i].extra)) != 0)
            return sr_error_set(SR_ENOMEM, "model: out of memory for the run state (max_batch %lld: %.1f MiB)",
                                (long long)B, (double)total / 1048576.0);
        *bufs[i].p = p;
    }
    s->inv_freq = malloc((size_t)(half + 1) * sizeof(double));
    if (!s->inv_freq) return sr_error_set(SR_ENOMEM, "model: out of memory for the run state");
    /* Per-pair frequencies, with llama3 or tensor-given scaling folded in;
     * double, since position x frequency must stay exact to ~1e-9 rad at
     * a million tokens. */
    for (int64_t i = 0; i < half; i++) {
        double f = pow((double)c->rope_theta, -2.0 * (double)i / (double)c->rope_dim);
        if (w->rope_freqs) {
            f /= (double)w->rope_freqs[i];
        } else if (c->rope_llama3) {
            double wavelen = 2.0 * M_PI / f;
            double lo = (double)c->rope_orig_ctx / c->rope_low_freq;  /* longer waves: scaled fully */
            double hi = (double)c->rope_orig_ctx / c->rope_high_freq; /* shorter waves: kept */
            if (wavelen > lo) {
                f /= c->rope_factor;
            } else if (wavelen >= hi) {
                double smooth = ((double)c->rope_orig_ctx / wavelen - c->rope_low_freq) /
                                (c->rope_high_freq - c->rope_low_freq);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        s->inv_freq[i] = f / c->rope_scale;
    }
    return SR_OK;
}

static void free_state(sr_model_state *s) {
    float *bufs[] = {s->x, s->xb, s->q, s->k, s->v, s->att, s->lse, s->att_part, s->lse_part,
                     s->hb, s->hb2, s->rope_cos, s->rope_sin, s->logits};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    free(s->inv_freq);
    memset(s, 0, sizeof(*s));
}

int sr_model_state_build(sr_model_state *s, const sr_model *m) {
    int rc = build_state(s, &m->config, &m->weights, m->state.max_batch);
    if (rc != SR_OK) free_state(s);
    return rc;
}

void sr_model_state_free(sr_model_state *s) { free_state(s); }

/* ------------------------------------------------------------ load, free */

int sr_model_load(sr_model **out, const char *path, const sr_model_opts *opts) {
    *out = NULL;
    sr_model *m = calloc(1, sizeof(*m));
    if (!m) return sr_error_set(SR_ENOMEM, "model: out of memory");
    int rc = sr_gguf_open(&m->gguf, path);
    if (rc) {
        free(m);
        return rc;
    }
    if (opts && (opts->max_batch < 0 || opts->block_size < 0)) {
        sr_gguf_close(m->gguf);
        free(m);
        return sr_error_set(SR_EINVAL, "model: max_batch %lld and block_size %lld must be 0 (default) or more",
                            (long long)opts->max_batch, (long long)opts->block_size);
    }
    m->n_threads = opts && opts->n_threads > 0 ? opts->n_threads : 1;
    int kv_dtype = opts ? opts->kv_dtype : SR_DT_F16;
    int64_t block = opts && opts->block_size > 0 ? opts->block_size : SR_KV_DEFAULT_BLOCK;
    int64_t batch = opts && opts->max_batch > 0 ? opts->max_batch : 512;
    sr_model_config *c = &m->config;
    if ((rc = sr_model_config_read(c, m->gguf)) || (rc = build_weights(&m->weights, c, m->gguf)) ||
        (rc = build_state(&m->state, c, &m->weights, batch)) ||
        (rc = sr_kv_build(&m->kv, c->n_layer, c->n_head_kv, c->head_dim, kv_dtype, block))) {
        sr_model_free(m);
        return rc;
    }
    *out = m;
    return SR_OK;
}

void sr_model_free(sr_model *m) {
    if (!m) return;
    sr_kv_free(&m->kv);
    free_state(&m->state);
    free_weights(&m->weights);
    sr_gguf_close(m->gguf);
    free(m);
}

void sr_model_reset(sr_model *m) {
    sr_kv_clear(&m->kv);
}

int64_t sr_model_next_pos(const sr_model *m) { return sr_kv_next_pos(&m->kv); }

/* ---------------------------------------------------------------- kernels */

/* Rows from which the row-wise steps (RMSNorm, RoPE) start a team of
 * threads: a decode step of a batch of requests has a few rows, microseconds
 * of work, and a team's wake-up costs more than it saves (30 layers x 4 of
 * these a step). A row's result does not depend on the thread it runs on. */
enum { PAR_MIN_ROWS = 32 };

/* out[r] = x[r] / rms(x[r]) * w, for n rows of dim */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, int dim, float eps, int nt) {
#pragma omp parallel for num_threads(nt) if (n >= PAR_MIN_ROWS)
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) o[i] = xr[i] * inv * w[i];
    }
}

static void add_bias(float *y, const float *b, int64_t n, int64_t width) {
    if (!b) return;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < width; i++) y[r * width + i] += b[i];
}

/* Rotates the first rope_dim dims of every head of n rows by the row's angles. */
static void rope(float *x, int64_t n, int n_heads, const sr_model_config *c, const float *cosv, const float *sinv,
                 int nt) {
    int half = c->rope_dim / 2, hd = c->head_dim;
#pragma omp parallel for num_threads(nt) if (n >= PAR_MIN_ROWS)
    for (int64_t r = 0; r < n; r++) {
        const float *cr = cosv + r * half, *sr = sinv + r * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (r * n_heads + h) * hd;
            for (int i = 0; i < half; i++) {
                int a = c->rope_type == SR_MODEL_ROPE_NORM ? 2 * i : i;
                int b = c->rope_type == SR_MODEL_ROPE_NORM ? 2 * i + 1 : i + half;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * cr[i] - x1 * sr[i];
                v[b] = x0 * sr[i] + x1 * cr[i];
            }
        }
    }
}

/* e^x for x in [-87, 88] within ~2 ulp, written so that loops over it
 * vectorize (libm's expf does not without -ffast-math): x = k ln2 + r,
 * e^r by a degree-6 polynomial, 2^k through the exponent bits. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666493f + r * (0.00833345205f +
                                                                                         r * 0.00138888958f)))));
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

static void residual_add(float *x, const float *d, int64_t count, int nt) {
#pragma omp parallel for num_threads(nt) if (count > 65536)
    for (int64_t i = 0; i < count; i++) x[i] += d[i];
}

/* --------------------------------------------------------- forward steps */

/* (cs, sn) of angle a becomes that of a + f, given dc, ds of f. */
static void rope_turn(double *cs, double *sn, double dc, double ds) {
    double t = *cs * dc - *sn * ds;
    *sn = *sn * dc + *cs * ds;
    *cs = t;
}

/* Rows 0..n-1 of x: the tokens' embeddings, and the RoPE angles of each
 * row's position (pos[i], or pos0 + i when pos is NULL). */
static int embed(sr_model *m, const int32_t *tokens, int64_t n, int64_t pos0, const int64_t *pos) {
    const sr_model_config *c = &m->config;
    sr_model_state *s = &m->state;
    if (n <= 0 || n > s->max_batch || pos0 < 0)
        return sr_error_set(SR_EINVAL, "model: %lld tokens at position %lld (batch holds 1..%lld)", (long long)n,
                            (long long)pos0, (long long)s->max_batch);
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return sr_error_set(SR_EINVAL, "model: token id %d is outside the vocabulary (0..%d)", tokens[i],
                                c->vocab_size - 1);
        if (pos && pos[i] < 0)
            return sr_error_set(SR_EINVAL, "model: row %lld has position %lld (allowed 0..)", (long long)i,
                                (long long)pos[i]);
        int rc = sr_matmul_weight_row(&m->weights.token_embd, tokens[i], s->x + i * c->dim);
        if (rc) return rc;
    }
    s->n = n;
    s->pos0 = pos0;
    /* the next row's angle by a rotation (double, exact to ~1e-15 over the
     * 64 rows between two sincos): libm's sincos for every row and
     * frequency was 5% of a 64-dim model's prefill */
    int half = c->rope_dim / 2;
    for (int j = 0; j < half; j++) {
        double f = s->inv_freq[j], dc = cos(f), ds = sin(f), cs = 1.0, sn = 0.0;
        int64_t next = -1; /* the position cs, sn are at */
        for (int64_t i = 0; i < n; i++) {
            int64_t p = pos ? pos[i] : pos0 + i;
            if (p != next || p % 64 == 0) {
                /* from the last multiple of 64, so that a position's angle
                 * does not depend on the rows batched with it */
                int64_t b = p - p % 64;
                cs = cos((double)b * f);
                sn = sin((double)b * f);
                for (; b < p; b++) rope_turn(&cs, &sn, dc, ds);
            }
            s->rope_cos[i * half + j] = (float)cs;
            s->rope_sin[i * half + j] = (float)sn;
            rope_turn(&cs, &sn, dc, ds);
            next = p + 1;
        }
    }
    return SR_OK;
}

int sr_model_embed(sr_model *m, const int32_t *tokens, int64_t n, int64_t pos0) {
    return embed(m, tokens, n, pos0, NULL);
}

int sr_model_embed_rows(sr_model *m, const int32_t *tokens, const int64_t *pos, int64_t n) {
    if (!pos || n <= 0) return sr_error_set(SR_EINVAL, "model: %lld rows without positions", (long long)n);
    return embed(m, tokens, n, pos[0], pos);
}

int sr_model_layer_qkv(sr_model *m, int l) {
    const sr_model_config *c = &m->config;
    const struct sr_model_layer_weights *L = &m->weights.layers[l];
    sr_model_state *s = &m->state;
    int nt = m->n_threads, rc;
    rmsnorm(s->xb, s->x, L->attn_norm, s->n, c->dim, c->norm_eps, nt);
    const sr_matmul_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
    float *qkv_out[3] = {s->q, s->k, s->v};
    if ((rc = sr_matmul_multi(3, qkv, s->xb, qkv_out, s->n, nt))) return rc;
    add_bias(s->q, L->bq, s->n, (int64_t)c->n_head * c->head_dim);
    add_bias(s->k, L->bk, s->n, (int64_t)c->n_head_kv * c->head_dim);
    add_bias(s->v, L->bv, s->n, (int64_t)c->n_head_kv * c->head_dim);
    rope(s->q, s->n, c->n_head, c, s->rope_cos, s->rope_sin, nt);
    rope(s->k, s->n, c->n_head_kv, c, s->rope_cos, s->rope_sin, nt);
    return SR_OK;
}

int sr_model_kv_reserve(sr_model *m) {
    return sr_kv_reserve(&m->kv, m->state.pos0, m->state.n, &m->state.kv_b0, &m->state.kv_off0);
}

int sr_model_layer_kv_append(sr_model *m, int l) {
    sr_model_state *s = &m->state;
    return sr_kv_store(&m->kv, l, s->kv_b0, s->kv_off0, s->n, s->k, s->v);
}

/* Rows row0.. (n of them, at positions pos0..) attend to every run of
 * layer l in cache kv on nt threads, merged by LSE into att and lse (their
 * rows only, also of the scratch att_part: batched sequences may attend at
 * once). */
static int attend(sr_model *m, int l, const sr_kv_cache *kv, int64_t row0, int64_t n, int64_t pos0, int nt) {
    const sr_model_config *c = &m->config;
    sr_model_state *s = &m->state;
    int64_t qd = (int64_t)c->n_head * c->head_dim;
    float *q = s->q + row0 * qd, *att = s->att + row0 * qd, *lse = s->lse + row0 * c->n_head;
    float *att_part = s->att_part + row0 * qd, *lse_part = s->lse_part + row0 * c->n_head;
    sr_kv_run *runs;
    int64_t n_runs;
    int rc = sr_kv_runs(kv, &runs, &n_runs);
    if (rc) return rc;
    int have = 0;
    int64_t last_q = pos0 + n - 1;
    for (int64_t r = 0; r < n_runs && rc == SR_OK; r++) {
        if (runs[r].pos0 > last_q) continue; /* all masked */
        sr_attn_desc d = {.nq = n, .nk = runs[r].len, .n_head_q = c->n_head, .n_head_kv = c->n_head_kv,
                          .head_dim = c->head_dim, .causal = 1, .q_pos0 = pos0, .k_pos0 = runs[r].pos0,
                          .scale = 0.0f, .kv_dtype = kv->dtype};
        int64_t at = (int64_t)l * kv->cap_blocks + runs[r].b0;
        sr_attn_kv akv = {NULL, NULL, &kv->k_ptr[at], &kv->v_ptr[at], kv->block_size};
        if (!have) {
            rc = sr_attn_forward(&d, q, &akv, att, lse, nt);
            have = 1;
        } else if ((rc = sr_attn_forward(&d, q, &akv, att_part, lse_part, nt)) == SR_OK) {
            rc = sr_attn_merge_into(att, lse, att_part, lse_part, n * c->n_head, c->head_dim);
        }
    }
    free(runs);
    if (rc) return rc;
    if (!have) return sr_error_set(SR_ESTATE, "model: attention with no visible keys in the cache");
    return SR_OK;
}

int sr_model_layer_attention(sr_model *m, int l) {
    return attend(m, l, &m->kv, 0, m->state.n, m->state.pos0, m->n_threads);
}

int sr_model_layer_attn_out(sr_model *m, int l) {
    const sr_model_config *c = &m->config;
    sr_model_state *s = &m->state;
    int rc = sr_matmul(&m->weights.layers[l].wo, s->att, s->xb, s->n, m->n_threads);
    if (rc) return rc;
    residual_add(s->x, s->xb, s->n * c->dim, m->n_threads);
    return SR_OK;
}

int sr_model_layer_mlp(sr_model *m, int l) {
    const sr_model_config *c = &m->config;
    const struct sr_model_layer_weights *L = &m->weights.layers[l];
    sr_model_state *s = &m->state;
    int nt = m->n_threads, rc;
    rmsnorm(s->xb, s->x, L->ffn_norm, s->n, c->dim, c->norm_eps, nt);
    const sr_matmul_weight *gate_up[2] = {&L->w_gate, &L->w_up};
    float *gate_up_out[2] = {s->hb, s->hb2};
    if ((rc = sr_matmul_multi(2, gate_up, s->xb, gate_up_out, s->n, nt))) return rc;
    int64_t count = s->n * c->hidden_dim;
    float *restrict gate = s->hb;
    const float *restrict up = s->hb2;
/* the if binds to parallel only: on simd too, it made batches of up to 65536 values scalar */
#pragma omp parallel for simd num_threads(nt) if (parallel: count > 65536)
    for (int64_t i = 0; i < count; i++) gate[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i]; /* SiLU(gate) * up */
    if ((rc = sr_matmul(&L->w_down, s->hb, s->xb, s->n, nt))) return rc;
    residual_add(s->x, s->xb, s->n * c->dim, nt);
    return SR_OK;
}

int sr_model_logits(sr_model *m) {
    const sr_model_config *c = &m->config;
    sr_model_state *s = &m->state;
    const float *last = s->x + (s->n - 1) * c->dim;
    rmsnorm(s->xb, last, m->weights.output_norm, 1, c->dim, c->norm_eps, 1);
    return sr_matmul(&m->weights.output, s->xb, s->logits, 1, m->n_threads);
}

int sr_model_logits_rows(sr_model *m, const int64_t *rows, int64_t n, float *out) {
    const sr_model_config *c = &m->config;
    sr_model_state *s = &m->state;
    if (!rows || !out || n < 1 || n > s->n)
        return sr_error_set(SR_EINVAL, "model: logits of %lld rows (allowed 1..%lld, the rows in use)", (long long)n,
                            (long long)s->n);
    for (int64_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= s->n)
            return sr_error_set(SR_EINVAL, "model: logits of row %lld (allowed 0..%lld)", (long long)rows[i],
                                (long long)s->n - 1);
        /* xb is free after the last layer: row i of it holds the normed row */
        rmsnorm(s->xb + i * c->dim, s->x + rows[i] * c->dim, m->weights.output_norm, 1, c->dim, c->norm_eps, 1);
    }
    return sr_matmul(&m->weights.output, s->xb, out, n, m->n_threads);
}

/* Below this many keys the attention kernel splits no KV range, and its
 * result does not depend on its threads (attention/cpu/forward.c: twice
 * MIN_SPLIT_KEYS): test_model_batch holds it to that, bit for bit. */
enum { SHORT_MAX_KEYS = 2048 };

/* Layer l's attention of every sequence of a batch: the short ones one
 * thread each, all in one team (one wake-up a layer instead of one a
 * sequence, the same bits as alone on every thread), then the others one at
 * a time on every thread. */
static int attend_batch(sr_model *m, int l, const sr_model_seq *seqs, int64_t n_seq, const int64_t *row0,
                        const int64_t *pos) {
    int64_t n_short = 0;
    for (int64_t i = 0; i < n_seq; i++) n_short += pos[row0[i]] + seqs[i].n < SHORT_MAX_KEYS;
    int rc = SR_OK;
    char msg[256] = "";
#pragma omp parallel for num_threads(m->n_threads) schedule(dynamic, 1) if (n_short > 1)
    for (int64_t i = 0; i < n_seq; i++) {
        if (pos[row0[i]] + seqs[i].n >= SHORT_MAX_KEYS) continue;
        int r = attend(m, l, seqs[i].kv, row0[i], seqs[i].n, pos[row0[i]], 1);
        /* the message is the failing thread's: carried out to the caller's */
        if (r != SR_OK)
#pragma omp critical(sr_model_attend_batch)
            if (rc == SR_OK) {
                rc = r;
                snprintf(msg, sizeof msg, "%s", sr_error_msg());
            }
    }
    if (rc != SR_OK) return sr_error_set(rc, "%s", msg);
    for (int64_t i = 0; i < n_seq && rc == SR_OK; i++)
        if (pos[row0[i]] + seqs[i].n >= SHORT_MAX_KEYS) rc = attend(m, l, seqs[i].kv, row0[i], seqs[i].n, pos[row0[i]], m->n_threads);
    return rc;
}

int sr_model_forward_batch(sr_model *m, const sr_model_seq *seqs, int64_t n_seq, float *logits) {
    sr_model_state *s = &m->state;
    if (!seqs || !logits || n_seq < 1 || n_seq > s->max_batch)
        return sr_error_set(SR_EINVAL, "model: a batch of %lld sequences (allowed 1..%lld, the model's max_batch)",
                            (long long)n_seq, (long long)s->max_batch);
    int64_t rows = 0;
    for (int64_t i = 0; i < n_seq; i++) {
        const sr_model_seq *q = &seqs[i];
        if (!q->kv || !q->tokens || q->n < 1 || q->n > s->max_batch - rows)
            return sr_error_set(SR_EINVAL, "model: batch sequence %lld has %lld tokens; the batch's rows must be "
                                "1..%lld in all (the model's max_batch), each sequence with a cache", (long long)i,
                                (long long)q->n, (long long)s->max_batch);
        if (q->kv->n_layer != m->kv.n_layer || q->kv->n_head_kv != m->kv.n_head_kv || q->kv->head_dim != m->kv.head_dim)
            return sr_error_set(SR_EINVAL, "model: batch sequence %lld's cache is not of this model's shape", (long long)i);
        rows += q->n;
    }
    /* per row: its token and position; per sequence: its first row and where its K/V go */
    int32_t *tok = malloc(sizeof *tok * (size_t)rows);
    int64_t *pos = malloc(sizeof *pos * (size_t)rows), *seat = malloc(sizeof *seat * (size_t)(4 * n_seq));
    int rc = tok && pos && seat ? SR_OK : sr_error_set(SR_ENOMEM, "model: out of memory for a batch of %lld rows",
                                                      (long long)rows);
    int64_t *row0 = seat, *b0 = seat + n_seq, *off0 = seat + 2 * n_seq, *last = seat + 3 * n_seq;
    for (int64_t i = 0, r = 0; rc == SR_OK && i < n_seq; r += seqs[i].n, i++) {
        int64_t p0 = sr_kv_next_pos(seqs[i].kv);
        row0[i] = r;
        last[i] = r + seqs[i].n - 1;
        memcpy(tok + r, seqs[i].tokens, sizeof *tok * (size_t)seqs[i].n);
        for (int64_t j = 0; j < seqs[i].n; j++) pos[r + j] = p0 + j;
    }
    /* the tokens are checked before any cache grows */
    if (rc == SR_OK) rc = sr_model_embed_rows(m, tok, pos, rows);
    for (int64_t i = 0; i < n_seq && rc == SR_OK; i++)
        rc = sr_kv_reserve(seqs[i].kv, pos[row0[i]], seqs[i].n, &b0[i], &off0[i]);
    int64_t kvd = (int64_t)m->config.n_head_kv * m->config.head_dim;
    for (int l = 0; l < m->config.n_layer && rc == SR_OK; l++) {
        rc = sr_model_layer_qkv(m, l);
        for (int64_t i = 0; i < n_seq && rc == SR_OK; i++)
            rc = sr_kv_store(seqs[i].kv, l, b0[i], off0[i], seqs[i].n, s->k + row0[i] * kvd, s->v + row0[i] * kvd);
        if (rc == SR_OK) rc = attend_batch(m, l, seqs, n_seq, row0, pos);
        if (rc == SR_OK && (rc = sr_model_layer_attn_out(m, l)) == SR_OK) rc = sr_model_layer_mlp(m, l);
    }
    if (rc == SR_OK) rc = sr_model_logits_rows(m, last, n_seq, logits);
    free(tok);
    free(pos);
    free(seat);
    return rc;
}

int sr_model_forward(sr_model *m, const int32_t *tokens, int64_t n, int64_t pos0) {
    if (n <= 0) return sr_error_set(SR_EINVAL, "model: forward of %lld tokens", (long long)n);
    for (int64_t done = 0; done < n;) {
        int64_t take = n - done < m->state.max_batch ? n - done : m->state.max_batch;
        int rc = sr_model_embed(m, tokens + done, take, pos0 + done);
        if (rc || (rc = sr_model_kv_reserve(m))) return rc;
        for (int l = 0; l < m->config.n_layer; l++) {
            if ((rc = sr_model_layer_qkv(m, l)) || (rc = sr_model_layer_kv_append(m, l)) ||
                (rc = sr_model_layer_attention(m, l)) || (rc = sr_model_layer_attn_out(m, l)) ||
                (rc = sr_model_layer_mlp(m, l)))
                return rc;
        }
        done += take;
    }
    return sr_model_logits(m);
}
