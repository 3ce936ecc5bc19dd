/* sr_matmul: the public boundary. Checks the arguments once, then hands the
 * product to the matrix-vector or the matrix-matrix backend by n. */
#include <stddef.h>

#include "base/status.h"
#include "worker/gguf.h"
#include "worker/matmul.h"
#include "worker/matmul_kernels.h"
#include "worker/quant_blocks.h"

/* From this many activation rows on, dequantizing panels and reusing them
 * beats streaming the quantized rows once per group of rows. */
#define GEMM_MIN_N 8

static int check_weight(const sr_weight *w, const char *fn) {
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

int sr_matmul(const sr_weight *w, const float *x, float *y, int64_t n, int n_threads) {
    int rc = check_weight(w, "sr_matmul");
    if (rc != SR_OK) return rc;
    if (!x || !y) return sr_error_set(SR_EINVAL, "sr_matmul: %s is NULL", !x ? "x" : "y");
    if (n < 0) return sr_error_set(SR_EINVAL, "sr_matmul: n=%lld is negative", (long long)n);
    if (n_threads < 1) return sr_error_set(SR_EINVAL, "sr_matmul: n_threads=%d must be at least 1", n_threads);
    if (n > PTRDIFF_MAX / 4 / (w->k > w->m ? w->k : w->m))
        return sr_error_set(SR_EINVAL, "sr_matmul: n=%lld rows of %lld values overflow memory sizes", (long long)n,
                            (long long)(w->k > w->m ? w->k : w->m));
    if (n == 0) return SR_OK;
    if (n < GEMM_MIN_N) return sr_mm_gemv(w, x, y, n, n_threads);
    return sr_mm_gemm(w, x, y, n, n_threads);
}

int sr_weight_row(const sr_weight *w, int64_t r, float *out) {
    int rc = check_weight(w, "sr_weight_row");
    if (rc != SR_OK) return rc;
    if (!out) return sr_error_set(SR_EINVAL, "sr_weight_row: out is NULL");
    if (r < 0 || r >= w->m)
        return sr_error_set(SR_ERANGE, "sr_weight_row: row %lld is outside [0, %lld)", (long long)r, (long long)w->m);
    sr_mm_dequant_row(w, r, out);
    return SR_OK;
}
