/* attention: the public boundary. Arguments are checked here, once, then
 * handed to the CPU backend. */
#include "attention/attention.h"

#include <math.h>
#include <omp.h>

#include "attention/cpu/attn_cpu.h"
#include "base/status.h"

/* Positions stay far from overflow when added to a row count. */
#define SR_ATTN_POS_MAX ((int64_t)1 << 60)

int sr_attn_desc_check(const sr_attn_desc *d) {
    if (!d) return sr_error_set(SR_EINVAL, "attention: descriptor is NULL");
    if (d->nq < 1 || d->nq > SR_ATTN_POS_MAX)
        return sr_error_set(SR_EINVAL, "attention: nq = %lld, need >= 1", (long long)d->nq);
    if (d->nk < 1 || d->nk > SR_ATTN_POS_MAX)
        return sr_error_set(SR_EINVAL, "attention: nk = %lld, need >= 1", (long long)d->nk);
    if (d->n_head_kv < 1)
        return sr_error_set(SR_EINVAL, "attention: n_head_kv = %d, need >= 1", d->n_head_kv);
    if (d->n_head_q < 1 || d->n_head_q % d->n_head_kv != 0)
        return sr_error_set(SR_EINVAL,
                            "attention: n_head_q = %d must be a positive multiple of n_head_kv = %d",
                            d->n_head_q, d->n_head_kv);
    if (d->head_dim < 16 || d->head_dim > 256 || d->head_dim % 16 != 0)
        return sr_error_set(SR_EINVAL,
                            "attention: head_dim = %d not supported (need a multiple of 16 in 16..256)",
                            d->head_dim);
    if (d->causal != 0 && d->causal != 1)
        return sr_error_set(SR_EINVAL, "attention: causal = %d, need 0 or 1", d->causal);
    if (d->q_pos0 < 0 || d->q_pos0 > SR_ATTN_POS_MAX || d->k_pos0 < 0 || d->k_pos0 > SR_ATTN_POS_MAX)
        return sr_error_set(SR_EINVAL, "attention: positions q_pos0 = %lld, k_pos0 = %lld must be in 0..2^60",
                            (long long)d->q_pos0, (long long)d->k_pos0);
    if (!isfinite(d->scale) || d->scale < 0.0f)
        return sr_error_set(SR_EINVAL, "attention: scale = %g, need a finite value >= 0 (0: 1/sqrt(head_dim))",
                            (double)d->scale);
    if (d->kv_dtype != SR_DT_F32 && d->kv_dtype != SR_DT_F16 && d->kv_dtype != SR_DT_BF16)
        return sr_error_set(SR_EINVAL, "attention: kv_dtype = %d, need SR_DT_F32, SR_DT_F16 or SR_DT_BF16",
                            d->kv_dtype);
    return SR_OK;
}

static int check_kv(const sr_attn_desc *d, const sr_attn_kv *kv) {
    if (!kv) return sr_error_set(SR_EINVAL, "attention: kv is NULL");
    int dense = kv->k || kv->v, paged = kv->k_blocks || kv->v_blocks;
    if (dense && paged)
        return sr_error_set(SR_EINVAL, "attention: kv has both dense k/v and k_blocks/v_blocks; set one");
    if (dense) {
        if (!kv->k || !kv->v) return sr_error_set(SR_EINVAL, "attention: dense kv needs both k and v");
        return SR_OK;
    }
    if (!paged) return sr_error_set(SR_EINVAL, "attention: kv has neither k/v nor k_blocks/v_blocks");
    if (!kv->k_blocks || !kv->v_blocks)
        return sr_error_set(SR_EINVAL, "attention: paged kv needs both k_blocks and v_blocks");
    if (kv->block_len < 1)
        return sr_error_set(SR_EINVAL, "attention: paged kv block_len = %lld, need >= 1",
                            (long long)kv->block_len);
    int64_t nb = (d->nk + kv->block_len - 1) / kv->block_len;
    for (int64_t b = 0; b < nb; b++)
        if (!kv->k_blocks[b] || !kv->v_blocks[b])
            return sr_error_set(SR_EINVAL, "attention: paged kv block %lld of %lld is NULL",
                                (long long)b, (long long)nb);
    return SR_OK;
}

int sr_attn_forward(const sr_attn_desc *d, const float *q, const sr_attn_kv *kv, float *o,
                    float *lse, int n_threads) {
    int rc = sr_attn_desc_check(d);
    if (rc) return rc;
    rc = check_kv(d, kv);
    if (rc) return rc;
    if (!q || !o || !lse) return sr_error_set(SR_EINVAL, "attention: q, o and lse must not be NULL");
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    return sr_attn_cpu_forward(d, q, kv, o, lse, n_threads);
}

static int check_merge_dims(int64_t rows, int head_dim) {
    if (rows < 0) return sr_error_set(SR_EINVAL, "attention merge: rows = %lld, need >= 0", (long long)rows);
    if (head_dim < 1) return sr_error_set(SR_EINVAL, "attention merge: head_dim = %d, need >= 1", head_dim);
    return SR_OK;
}

int sr_attn_merge(int n_parts, const float *const *o_parts, const float *const *lse_parts,
                  int64_t rows, int head_dim, float *o, float *lse) {
    int rc = check_merge_dims(rows, head_dim);
    if (rc) return rc;
    if (n_parts < 1) return sr_error_set(SR_EINVAL, "attention merge: n_parts = %d, need >= 1", n_parts);
    if (!o_parts || !lse_parts || !o || !lse)
        return sr_error_set(SR_EINVAL, "attention merge: o_parts, lse_parts, o and lse must not be NULL");
    for (int p = 0; p < n_parts; p++)
        if (!o_parts[p] || !lse_parts[p])
            return sr_error_set(SR_EINVAL, "attention merge: part %d has a NULL o or lse", p);
    sr_attn_cpu_merge(n_parts, o_parts, lse_parts, rows, head_dim, o, lse);
    return SR_OK;
}

int sr_attn_merge_into(float *o_acc, float *lse_acc, const float *o_part, const float *lse_part,
                       int64_t rows, int head_dim) {
    int rc = check_merge_dims(rows, head_dim);
    if (rc) return rc;
    if (!o_acc || !lse_acc || !o_part || !lse_part)
        return sr_error_set(SR_EINVAL, "attention merge_into: arguments must not be NULL");
    const float *op[2] = {o_acc, o_part}, *lp[2] = {lse_acc, lse_part};
    sr_attn_cpu_merge(2, op, lp, rows, head_dim, o_acc, lse_acc);
    return SR_OK;
}

double sr_attn_flops(const sr_attn_desc *d) {
    if (sr_attn_desc_check(d) != SR_OK) return 0.0;
    double pairs;
    if (!d->causal) {
        pairs = (double)d->nq * (double)d->nk;
    } else {
        /* row i sees clamp(a + i, 0, nk) keys */
        int64_t a = d->q_pos0 - d->k_pos0 + 1;
        int64_t i0 = 1 - a, i1 = d->nk - a; /* first row seeing a key; first seeing all */
        if (i0 < 0) i0 = 0;
        if (i0 > d->nq) i0 = d->nq;
        if (i1 < i0) i1 = i0;
        if (i1 > d->nq) i1 = d->nq;
        double n = (double)(i1 - i0);
        pairs = n * (double)(a + i0) + n * (n - 1.0) / 2.0 + (double)(d->nq - i1) * (double)d->nk;
    }
    return pairs * 4.0 * (double)d->head_dim * (double)d->n_head_q;
}
