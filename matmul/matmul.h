/* matmul: products of a weight matrix stored in a ggml type (F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1, Q6_K) with fp32 activations, working on the
 * quantized blocks directly (no dequantized copy of the weights).
 *
 * A weight W has ne0 = k (inputs, contiguous within a row) and ne1 = m
 * (outputs): row r holds the k weights of output r, sr_ggml_row_bytes(type, k)
 * bytes per row. */
#ifndef SR_MATMUL_MATMUL_H
#define SR_MATMUL_MATMUL_H

#include <stdint.h>

typedef struct {
    uint32_t type;    /* SR_GGML_* (gguf/gguf.h) */
    int64_t k, m;     /* inputs per row, rows */
    const void *data; /* m rows of sr_ggml_row_bytes(type, k) bytes */
} sr_matmul_weight;

/* Y[n, m] = X[n, k] * W^T. n = 1 is a matrix-vector product; larger n
 * (prefill) is a blocked matrix-matrix product. Runs on n_threads threads. */
int sr_matmul(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads);

/* Y_i[n, m_i] = X[n, k] * W_i^T for n_w weights of the same k (the Q, K
 * and V projections; gate and up): the same results as n_w calls of
 * sr_matmul, but a matrix-vector product (small n) starts its threads once
 * for all of them. */
int sr_matmul_multi(int n_w, const sr_matmul_weight *const *w, const float *x, float *const *y, int64_t n,
                    int n_threads);

/* Dequantizes row r of W into out[k] (embedding look-up, tests). */
int sr_matmul_weight_row(const sr_matmul_weight *w, int64_t r, float *out);

#endif
