/* placement: zigzag for ring, contiguous blocks for star. */
#include "worker/placement.h"

#include "base/status.h"

/* chunk c of k over n tokens: [c*n/k, (c+1)*n/k), lengths differ by <= 1 */
static int64_t chunk_start(int64_t n, int64_t k, int64_t c) {
    /* n * c may overflow for huge n; split it (the remainder's product is
     * below k^2 <= 2^64, so it is taken unsigned) */
    return (n / k) * c + (int64_t)((uint64_t)(n % k) * (uint64_t)c / (uint64_t)k);
}

int sr_place_zigzag(int64_t n, int world, int rank, sr_span spans[2]) {
    if (n < 0 || world < 1 || rank < 0 || rank >= world || !spans)
        return sr_error_set(SR_EINVAL, "zigzag placement of %lld tokens: rank %d of %d is invalid", (long long)n,
                            rank, world);
    int64_t k = 2 * (int64_t)world;
    int64_t c[2] = {rank, k - 1 - rank};
    for (int i = 0; i < 2; i++) {
        spans[i].pos0 = chunk_start(n, k, c[i]);
        spans[i].len = chunk_start(n, k, c[i] + 1) - spans[i].pos0;
    }
    return SR_OK;
}

int64_t sr_span_total(const sr_span *spans, int n_spans) {
    int64_t t = 0;
    for (int i = 0; i < n_spans; i++) t += spans[i].len;
    return t;
}

int sr_place_star(int64_t n, int64_t block_size, int64_t anchor_size, int world, int rank, sr_star_place *out) {
    if (n < 0 || block_size < 0 || anchor_size < 0 || world < 1 || rank < 0 || rank >= world || !out)
        return sr_error_set(SR_EINVAL, "star placement of %lld tokens in blocks of %lld, anchor %lld: rank %d "
                            "of %d is invalid", (long long)n, (long long)block_size, (long long)anchor_size, rank,
                            world);
    /* the sums and products below stay within n, whatever the sizes */
    if (block_size == 0) block_size = n / world + (n % world != 0);
    if (block_size == 0) block_size = 1;
    int64_t nb = n / block_size + (n % block_size != 0);
    out->n = n;
    out->block_size = block_size;
    /* the first nb % W ranks take one block more: rank 0 then holds the
     * anchor's block, and it has no anchor to compute, so less work */
    int64_t base = nb / world, extra = nb % world;
    out->first_block = rank * base + (rank < extra ? rank : extra);
    out->n_blocks = base + (rank < extra);
    int64_t last = out->first_block + out->n_blocks;
    out->own.pos0 = out->first_block < nb ? out->first_block * block_size : n;
    out->own.len = (last < nb ? last * block_size : n) - out->own.pos0;
    int64_t a = anchor_size ? anchor_size : block_size;
    out->anchor_size = a < n ? a : n;
    /* the part of the anchor before this rank's own tokens; none on the
     * rank that starts the context, nor on a rank with nothing to compute */
    out->anchor.pos0 = 0;
    out->anchor.len = out->own.len > 0 ? (out->anchor_size < out->own.pos0 ? out->anchor_size : out->own.pos0) : 0;
    return SR_OK;
}

sr_span sr_star_block(const sr_star_place *pl, int64_t g, int64_t *anchor_end) {
    int64_t s = g * pl->block_size, len = pl->block_size < pl->n - s ? pl->block_size : pl->n - s;
    if (anchor_end) *anchor_end = pl->anchor_size < s ? pl->anchor_size : s;
    return (sr_span){s, len > 0 ? len : 0};
}
