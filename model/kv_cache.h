/* kv_cache: the keys and values of one context, in fp16 or bf16 (fp32 too,
 * for reference checks), held in fixed-size blocks of block_size tokens
 * allocated as tokens arrive.
 *
 * A block is the unit that moves between processes: one allocation holding
 * every layer's K and V for block_size consecutive positions,
 *   [n_layer][2 (K, V)][block_size][n_head_kv][head_dim]
 * so that sending a block sends all of its layers at once. Each block records
 * the absolute position of its first token and how many tokens it holds;
 * consecutive blocks need not be contiguous in position (a worker may hold
 * the zigzag halves of a ring placement), and attention walks runs of
 * contiguous full blocks (sr_kv_runs).
 *
 * For attention the cache keeps, per layer, arrays of block pointers to the
 * K and V parts ([block_size][n_head_kv][head_dim] each), which is what
 * sr_attn_kv's paged form takes. All sizes and offsets are 64-bit. */
#ifndef SR_MODEL_KV_CACHE_H
#define SR_MODEL_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

enum { SR_KV_DEFAULT_BLOCK = 256 };

typedef struct {
    int n_layer, n_head_kv, head_dim;
    int dtype;           /* SR_DT_F16, SR_DT_BF16 or SR_DT_F32 (attention/attention.h) */
    int64_t block_size;  /* tokens per block */
    int64_t n_blocks;    /* blocks in use */
    int64_t cap_blocks;  /* capacity of the arrays below */
    void **blocks;       /* (cap_blocks) one allocation each, sr_kv_block_bytes() */
    int64_t *block_pos;  /* (cap_blocks) absolute position of each block's token 0 */
    int64_t *block_len;  /* (cap_blocks) tokens held, <= block_size */
    const void **k_ptr;  /* (n_layer, cap_blocks) K part of block b for layer l */
    const void **v_ptr;  /* (n_layer, cap_blocks) V part of block b for layer l */
    int64_t n_tokens;    /* tokens held over all blocks */
} sr_kv_cache;

/* A run of blocks [b0, b0 + n) holding positions [pos0, pos0 + len) with no
 * gap: every block of the run but the last is full. */
typedef struct {
    int64_t b0, n, pos0, len;
} sr_kv_run;

int sr_kv_build(sr_kv_cache *c, int n_layer, int n_head_kv, int head_dim, int dtype,
                int64_t block_size);
void sr_kv_free(sr_kv_cache *c);

/* Bytes of one block (all layers, K and V) and bytes held by all blocks. */
size_t sr_kv_block_bytes(const sr_kv_cache *c);
size_t sr_kv_bytes(const sr_kv_cache *c);
/* Position after the last block's last token (0 when empty). */
int64_t sr_kv_next_pos(const sr_kv_cache *c);
/* Bytes of one token of one layer's K (or V): n_head_kv * head_dim * 2 (4 for f32). */
size_t sr_kv_row_bytes(const sr_kv_cache *c);

/* Makes room for n tokens at positions [pos, pos + n): they continue the last
 * block when it is not full and pos follows its last token, and otherwise
 * fill new blocks. Returns where the first token goes (*b0, *off0); the rest
 * follow block by block. Positions must increase: pos >= the end of the last
 * block. */
int sr_kv_reserve(sr_kv_cache *c, int64_t pos, int64_t n, int64_t *b0, int64_t *off0);

/* Writes n rows of fp32 K and V ([n][n_head_kv][head_dim]) for layer l into
 * the slots reserved at (b0, off0), converting to the cache's dtype. */
int sr_kv_store(sr_kv_cache *c, int layer, int64_t b0, int64_t off0, int64_t n, const float *k,
                const float *v);

/* Adds a block received from elsewhere (bytes as sr_kv_block_bytes, layout
 * as above; copied) holding len tokens from position pos. */
int sr_kv_push_block(sr_kv_cache *c, const void *data, int64_t pos, int64_t len);

/* Like sr_kv_reserve, but the tokens start a new block even where they
 * would continue the last one: the blocks from *b0 on then hold exactly the
 * tokens from pos on (every one full but the last), so that they can be
 * addressed as a run of their own whatever came before. */
int sr_kv_reserve_new_block(sr_kv_cache *c, int64_t pos, int64_t n, int64_t *b0);

/* Drops every token at a position before pos, in place: the blocks wholly
 * before pos are freed, and a block that straddles pos keeps its later rows,
 * moved to the block's start. Nothing is copied elsewhere, so the cache never
 * holds more than before. */
int sr_kv_drop_before(sr_kv_cache *c, int64_t pos);

/* Drops every block (keeps the arrays for reuse). */
void sr_kv_clear(sr_kv_cache *c);

/* Splits the blocks into runs of contiguous positions; *runs is malloc'ed. */
int sr_kv_runs(const sr_kv_cache *c, sr_kv_run **runs, int64_t *n_runs);

#endif
