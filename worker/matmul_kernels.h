/* matmul_kernels: the backends behind sr_matmul (worker/matmul.c checks the
 * arguments once, then picks one of these). Private to worker/matmul*.c and
 * the matmul tests. */
#ifndef SR_WORKER_MATMUL_KERNELS_H
#define SR_WORKER_MATMUL_KERNELS_H

#include <stdint.h>

#include "worker/matmul.h"

/* sr_matmul's argument checks, shared with the other entry points; `fn`
 * names the caller in the message. */
int sr_mm_check(const sr_weight *w, const float *x, const float *y, int64_t n, int n_threads, const char *fn);

/* From this many activation rows on, dequantizing panels and reusing them
 * beats streaming the quantized rows once per group of rows. */
enum { SR_MM_GEMM_MIN_N = 8 };

/* Dequantizes row r of W into out[k] with the fastest code this build has
 * (vector where available, else the scalar reference). */
void sr_mm_dequant_row(const sr_weight *w, int64_t r, float *out);

/* Matrix-vector style: streams each weight row once per group of up to
 * SR_MM_GEMV_ROWS activation rows, dequantizing in registers. */
enum { SR_MM_GEMV_ROWS = 4 };
int sr_mm_gemv(const sr_weight *w, const float *x, float *y, int64_t n, int n_threads);

/* Matrix-matrix: dequantizes panels of weight rows into fp32 and reuses each
 * panel across all activation rows. */
int sr_mm_gemm(const sr_weight *w, const float *x, float *y, int64_t n, int n_threads);

#endif
