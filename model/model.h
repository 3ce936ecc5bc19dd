/* model: the Llama-family transformer (llama: Llama 2/3, Mistral, SmolLM2;
 * qwen2: Q/K/V bias) over GGUF weights, fp32 activations.
 *
 * The forward pass is a sequence of per-layer steps that can also be called
 * one at a time, so that context-parallel prefill and decode can put their
 * own attention (over other processes' KV) between them:
 *
 *   sr_model_embed                tokens -> x
 *   sr_model_kv_reserve           cache slots for the rows
 *   for each layer l:
 *     sr_model_layer_qkv          x -> q, k, v (RMSNorm, projections, bias, RoPE)
 *     sr_model_layer_kv_append    k, v -> the KV cache
 *     sr_model_layer_attention    q over every run of the local cache -> att, lse
 *                                 (merged by LSE; other ranks' parts merge in
 *                                 the same way, sr_attn_merge_into)
 *     sr_model_layer_attn_out     x += att Wo^T
 *     sr_model_layer_mlp          x += SwiGLU(RMSNorm(x))
 *   sr_model_logits               last row of x -> logits
 *
 * Every step works on the n rows of the run state at absolute positions
 * pos0 .. pos0 + n - 1 (set by sr_model_embed), or at each row's own
 * position (sr_model_embed_rows: rows of several sequences batched, each
 * attending to a cache of its own; sr_model_forward_batch). */
#ifndef SR_MODEL_MODEL_H
#define SR_MODEL_MODEL_H

#include <stdint.h>

#include "gguf/gguf.h"
#include "model/kv_cache.h"
#include "matmul/matmul.h"

enum { SR_MODEL_ARCH_LLAMA = 0, SR_MODEL_ARCH_QWEN2 = 1 };
enum { SR_MODEL_ROPE_NORM = 0, SR_MODEL_ROPE_NEOX = 1 }; /* adjacent pairs; first/second halves */

typedef struct {
    int arch;           /* SR_MODEL_ARCH_* */
    int dim;            /* embedding width */
    int n_layer;
    int n_head;         /* query heads */
    int n_head_kv;      /* key/value heads (GQA) */
    int head_dim;
    int hidden_dim;     /* MLP width */
    int vocab_size;
    int64_t context_len;/* trained context length (informational) */
    float norm_eps;     /* RMSNorm epsilon */
    float rope_theta;
    int rope_dim;       /* rotated dims per head, <= head_dim */
    int rope_type;      /* SR_MODEL_ROPE_* */
    float rope_scale;   /* linear position scaling: positions are divided by it */
    /* llama3 frequency scaling, active when rope_llama3 is set */
    int rope_llama3;
    float rope_factor, rope_low_freq, rope_high_freq;
    int64_t rope_orig_ctx;
} sr_model_config;

typedef struct {
    sr_matmul_weight token_embd; /* (vocab, dim) */
    sr_matmul_weight output;     /* (vocab, dim); token_embd when tied */
    const float *output_norm;    /* (dim) */
    const float *rope_freqs;     /* (rope_dim/2) frequency divisors, or NULL */
    struct sr_model_layer_weights {
        const float *attn_norm;     /* (dim) */
        sr_matmul_weight wq;        /* (n_head*head_dim, dim) */
        sr_matmul_weight wk;        /* (n_head_kv*head_dim, dim) */
        sr_matmul_weight wv;        /* (n_head_kv*head_dim, dim) */
        sr_matmul_weight wo;        /* (dim, n_head*head_dim) */
        const float *bq, *bk, *bv;  /* (n_head*head_dim), (n_head_kv*head_dim) x2; NULL without bias */
        const float *ffn_norm;      /* (dim) */
        sr_matmul_weight w_gate;    /* (hidden_dim, dim) */
        sr_matmul_weight w_up;      /* (hidden_dim, dim) */
        sr_matmul_weight w_down;    /* (dim, hidden_dim) */
    } *layers;                      /* (n_layer) */
} sr_model_weights;

/* Activations of up to max_batch rows. */
typedef struct {
    int64_t max_batch;
    int64_t n;          /* rows in use */
    int64_t pos0;       /* absolute position of row 0 */
    float *x;           /* (max_batch, dim) residual stream */
    float *xb;          /* (max_batch, dim) normed input of a sublayer */
    float *q;           /* (max_batch, n_head*head_dim) */
    float *k;           /* (max_batch, n_head_kv*head_dim) */
    float *v;           /* (max_batch, n_head_kv*head_dim) */
    float *att;         /* (max_batch, n_head*head_dim) attention output */
    float *lse;         /* (max_batch, n_head) its log-sum-exp */
    float *att_part;    /* (max_batch, n_head*head_dim) one KV run's output */
    float *lse_part;    /* (max_batch, n_head) */
    float *hb;          /* (max_batch, hidden_dim) gate, then SwiGLU */
    float *hb2;         /* (max_batch, hidden_dim) up */
    float *rope_cos;    /* (max_batch, rope_dim/2) */
    float *rope_sin;    /* (max_batch, rope_dim/2) */
    double *inv_freq;   /* (rope_dim/2) per-pair frequency, scaling applied */
    float *logits;      /* (vocab_size) of the last row */
    int64_t kv_b0, kv_off0; /* where sr_model_layer_kv_append writes (set by sr_model_kv_reserve) */
} sr_model_state;

typedef struct {
    int n_threads;      /* OpenMP threads for every step */
    int kv_dtype;       /* SR_DT_F16 or SR_DT_BF16; SR_DT_F32 for reference checks */
    int64_t block_size; /* KV block tokens; 0: SR_KV_DEFAULT_BLOCK */
    int64_t max_batch;  /* rows per forward call; 0: 512 */
} sr_model_opts;

typedef struct {
    sr_model_config config;
    sr_model_weights weights;
    sr_model_state state;
    sr_kv_cache kv;
    sr_gguf *gguf;      /* owns the map the weights point into */
    int n_threads;
} sr_model;

/* Reads the config from metadata; SR_EFORMAT / SR_EUNSUPPORTED with a message
 * on an unknown architecture or a missing key. */
int sr_model_config_read(sr_model_config *c, const sr_gguf *g);

/* Opens a GGUF file (opts NULL: 1 thread, f16 KV, default sizes), checks
 * every tensor's shape and type against the config, and builds the run
 * state and an empty KV cache. */
int sr_model_load(sr_model **out, const char *path, const sr_model_opts *opts);
void sr_model_free(sr_model *m);

/* A second run state of m's size, for work that must not clobber m->state
 * (the daemon runs other contexts' steps between a prefill's layers by
 * swapping one in); state_free takes it or an unbuilt one. */
int sr_model_state_build(sr_model_state *s, const sr_model *m);
void sr_model_state_free(sr_model_state *s);

/* The steps (see above). n <= max_batch. */
int sr_model_embed(sr_model *m, const int32_t *tokens, int64_t n, int64_t pos0);
/* As sr_model_embed, row i at position pos[i] (the rows of a batch of
 * sequences); pos0 is set to pos[0]. */
int sr_model_embed_rows(sr_model *m, const int32_t *tokens, const int64_t *pos, int64_t n);
int sr_model_kv_reserve(sr_model *m);
int sr_model_layer_qkv(sr_model *m, int l);
int sr_model_layer_kv_append(sr_model *m, int l);
int sr_model_layer_attention(sr_model *m, int l);
int sr_model_layer_attn_out(sr_model *m, int l);
int sr_model_layer_mlp(sr_model *m, int l);
int sr_model_logits(sr_model *m);
/* The logits of n rows of x (each of 0..state.n-1) into out (n, vocab):
 * one matmul for all of them. */
int sr_model_logits_rows(sr_model *m, const int64_t *rows, int64_t n, float *out);

/* All the steps: n tokens at positions pos0.., appended to the cache;
 * leaves the logits of the last token in m->state.logits. n may exceed
 * max_batch (done in chunks). */
int sr_model_forward(sr_model *m, const int32_t *tokens, int64_t n, int64_t pos0);

/* One sequence of a batched forward pass: n new tokens after everything in
 * its own cache kv (a cache of the model's shape, not m->kv). */
typedef struct {
    sr_kv_cache *kv;
    const int32_t *tokens;
    int64_t n;
} sr_model_seq;

/* One forward pass over n_seq sequences (a decode step of many requests):
 * their rows (the n of all sequences together <= max_batch) go through every
 * weight matmul at once, which reads the weights once for all of them; each
 * row attends to its own sequence's cache, where its K/V are appended.
 * Leaves the logits of each sequence's last token in logits (n_seq, vocab).
 * The results equal those of each sequence alone in sr_model_forward (to
 * the bit while the batch has fewer than 17 rows, as the matrix-vector
 * kernel takes them; to fp32 rounding past that, in the matrix-matrix one). */
int sr_model_forward_batch(sr_model *m, const sr_model_seq *seqs, int64_t n_seq, float *logits);

/* Empties the KV cache (a new context). */
void sr_model_reset(sr_model *m);

/* Position after the last token in the cache (0 when empty). */
int64_t sr_model_next_pos(const sr_model *m);

#endif
