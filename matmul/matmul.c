/* sr_matmul: the public boundary. Checks the arguments once, then hands the
 * product to the matrix-vector or the matrix-matrix backend by n. */
#include <stddef.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "matmul/matmul.h"
#include "matmul/kernels.h"
#include "gguf/quant_blocks.h"

static int check_weight(const sr_matmul_weight *w, const char *fn) {
    if (!w) return sr_error_set(SR_EINVAL, "%s: weight is NULL", fn);
    if (!w->data) return sr_error_set(SR_EINVAL, "%s: weight data is NULL", fn);
    int64_t bs = sr_dequant_block_size(w->type);
    if (bs == 0)
        return sr_error_set(SR_EINVAL, "%s: weight type %s (%u) is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q6_K are)",
                            fn, sr_ggml_type_name(w->type), w->type);
    if (w->k <= 0 || w->m <= 0)
        return sr_error_set(SR_EINVAL, "%s: weight shape k=%lld m=%lld must be positive", fn, (long long)w->k,
                            (long long)w->m);
    if (w->k % bs != 0)
        return sr_error_set(SR_EINVAL, "%s: k=%lld is not a multiple of the %s block size %lld", fn,
                            (long long)w->k, sr_ggml_type_name(w->type), (long long)bs);
    return SR_OK;
}

int sr_matmul__check(const sr_matmul_weight *w, const float *x, const float *y, int64_t n, int n_threads,
                     const char *fn) {
    int rc = check_weight(w, fn);
    if (rc != SR_OK) return rc;
    if (!x || !y) return sr_error_set(SR_EINVAL, "%s: %s is NULL", fn, !x ? "x" : "y");
    if (n < 0) return sr_error_set(SR_EINVAL, "%s: n=%lld is negative", fn, (long long)n);
    if (n_threads < 1) return sr_error_set(SR_EINVAL, "%s: n_threads=%d must be at least 1", fn, n_threads);
    int64_t wide = w->k > w->m ? w->k : w->m;
    if (n > PTRDIFF_MAX / 4 / wide)
        return sr_error_set(SR_EINVAL, "%s: n=%lld rows of %lld values overflow memory sizes", fn, (long long)n,
                            (long long)wide);
    return SR_OK;
}

int sr_matmul(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads) {
    int rc = sr_matmul__check(w, x, y, n, n_threads, "sr_matmul");
    if (rc != SR_OK || n == 0) return rc;
    if (n < SR_MATMUL__GEMM_MIN_N) return sr_matmul__gemv(w, x, y, n, n_threads);
    return sr_matmul__gemm(w, x, y, n, n_threads);
}

int sr_matmul_multi(int n_w, const sr_matmul_weight *const *w, const float *x, float *const *y, int64_t n,
                    int n_threads) {
    if (n_w < 1 || !w || !y)
        return sr_error_set(SR_EINVAL, "sr_matmul_multi: n_w=%d must be at least 1, with weights and outputs", n_w);
    for (int i = 0; i < n_w; i++) {
        int rc = sr_matmul__check(w[i], x, y[i], n, n_threads, "sr_matmul_multi");
        if (rc != SR_OK) return rc;
        if (w[i]->k != w[0]->k)
            return sr_error_set(SR_EINVAL, "sr_matmul_multi: weight %d has k=%lld, weight 0 k=%lld: they must agree",
                                i, (long long)w[i]->k, (long long)w[0]->k);
    }
    if (n == 0) return SR_OK;
    if (n < SR_MATMUL__GEMM_MIN_N) return sr_matmul__gemv_multi(n_w, w, x, y, n, n_threads);
    for (int i = 0; i < n_w; i++) {
        int rc = sr_matmul__gemm(w[i], x, y[i], n, n_threads);
        if (rc != SR_OK) return rc;
    }
    return SR_OK;
}

int sr_matmul_weight_row(const sr_matmul_weight *w, int64_t r, float *out) {
    int rc = check_weight(w, "sr_matmul_weight_row");
    if (rc != SR_OK) return rc;
    if (!out) return sr_error_set(SR_EINVAL, "sr_matmul_weight_row: out is NULL");
    if (r < 0 || r >= w->m)
        return sr_error_set(SR_ERANGE, "sr_matmul_weight_row: row %lld is outside [0, %lld)", (long long)r,
                            (long long)w->m);
    sr_matmul__dequant_row(w, r, out);
    return SR_OK;
}
