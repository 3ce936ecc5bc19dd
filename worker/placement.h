/* placement: which context tokens each of W ranks holds.
 *
 * Ring (zigzag): the n tokens are cut into 2W chunks whose lengths differ by
 * at most one; rank r holds chunks r and 2W-1-r. Under a causal mask a
 * query's work grows with its position, so pairing an early chunk with a late
 * one gives every rank the same work to within a chunk's rounding.
 *
 * Star (contiguous blocks): the n tokens are cut into ceil(n / block)
 * blocks (block = ceil(n / W) by default: one per rank), the last possibly
 * short; rank r holds a contiguous run of floor(nb / W) blocks, one more for
 * the first nb % W ranks. The anchor is the first anchor_size tokens of the
 * context (one block by default). In phase 1 block g, starting at s_g, sees
 * the context's first min(anchor_size, s_g) tokens and itself, causally, and
 * no other block: the first block is encoded alone, and a block inside the
 * anchor sees everything before it. A rank holds at most ceil(n / W) +
 * block tokens. */
#ifndef SR_WORKER_PLACEMENT_H
#define SR_WORKER_PLACEMENT_H

#include <stdint.h>

/* a range of absolute token positions [pos0, pos0 + len) */
typedef struct {
    int64_t pos0, len;
} sr_span;

/* Tokens of rank r under zigzag placement: spans[0] = chunk r, spans[1] =
 * chunk 2W-1-r (either may be empty when n < 2W). Returns SR_OK or SR_EINVAL. */
int sr_place_zigzag(int64_t n, int world, int rank, sr_span spans[2]);

/* Total tokens in a list of spans. */
int64_t sr_span_total(const sr_span *spans, int n_spans);

/* Star placement of rank r. */
typedef struct {
    int64_t n;                     /* context tokens */
    int64_t block_size;            /* as placed (the default resolved) */
    int64_t anchor_size;           /* the anchor: the context's first anchor_size tokens (clipped to n) */
    int64_t first_block, n_blocks; /* this rank's run of blocks */
    sr_span own;                   /* the tokens of those blocks */
    sr_span anchor;                /* the part of the anchor before own: what this rank computes
                                      besides its blocks, and drops after phase 1 */
} sr_star_place;

/* block_size 0 means ceil(n / world); anchor_size 0 means one block; the
 * anchor is clipped to n. */
int sr_place_star(int64_t n, int64_t block_size, int64_t anchor_size, int world, int rank, sr_star_place *out);

/* Block g of the context (0 <= g < ceil(n / block)): its tokens, and in
 * *anchor_end the end of the context's prefix it sees in phase 1,
 * min(anchor_size, start). */
sr_span sr_star_block(const sr_star_place *pl, int64_t g, int64_t *anchor_end);

#endif
