/* matmul_kernels: the backends behind sr_matmul (matmul/matmul.c checks the
 * arguments once, then picks one of these). Private to matmul/ and
 * the matmul tests. */
#ifndef SR_MATMUL_KERNELS_H
#define SR_MATMUL_KERNELS_H

#include <stdint.h>

#include "matmul/matmul.h"

/* sr_matmul's argument checks, shared with the other entry points; `fn`
 * names the caller in the message. */
int sr_matmul__check(const sr_matmul_weight *w, const float *x, const float *y, int64_t n, int n_threads,
                     const char *fn);

/* From this many activation rows on, dequantizing panels and reusing them
 * beats streaming the quantized rows once for all the activation rows: the
 * two were level at 16 rows on SmolLM2's shapes (AVX2 Zen 3, one thread),
 * the matrix-vector kernel ahead below. */
enum { SR_MATMUL__GEMM_MIN_N = 17 };

/* Dequantizes row r of W into out[k] with the fastest code this build has
 * (vector where available, else the scalar reference). */
void sr_matmul__dequant_row(const sr_matmul_weight *w, int64_t r, float *out);
/* len weights (whole blocks) from src into out, the values sr_dequant_row
 * gives, with AVX2 where the build has it (the kernels of a build without
 * AVX-512, and the tails of those with it). */
void sr_matmul__dequant(uint32_t type, const void *src, int64_t len, float *out);

/* Matrix-vector style for n < SR_MATMUL__GEMM_MIN_N activation rows: streams
 * each weight row from memory once for all n, dequantizing in registers; the
 * vector kernels apply it to SR_MATMUL__GEMV_ROWS activation rows at a time
 * while it is in L1. A row's result does not depend on n or on the other
 * rows (a batch of decodes equals each alone, bit for bit). */
enum { SR_MATMUL__GEMV_ROWS = 4 };
int sr_matmul__gemv(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads);
/* The same for n_w weights of one k against the same X, in one team of
 * threads, each thread taking its share of every weight's rows. */
int sr_matmul__gemv_multi(int n_w, const sr_matmul_weight *const *w, const float *x, float *const *y, int64_t n,
                          int n_threads);

/* Matrix-matrix: dequantizes panels of weight rows into fp32 and reuses each
 * panel across all activation rows. */
int sr_matmul__gemm(const sr_matmul_weight *w, const float *x, float *y, int64_t n, int n_threads);

/* Matrix-vector work split: threads worth starting for m output rows (below
 * ~16 rows a thread, starting it costs more than it saves), and thread t's
 * rows [r0, r1) of tn, on even boundaries so that weight rows stay paired. */
static inline int sr_matmul__gemv_threads(int64_t m, int n_threads) {
    int64_t useful = m / 16 > 0 ? m / 16 : 1;
    return (int64_t)n_threads < useful ? n_threads : (int)useful;
}

static inline void sr_matmul__gemv_rows(int64_t m, int t, int tn, int64_t *r0, int64_t *r1) {
    int64_t per = (m + 2 * tn - 1) / (2 * tn) * 2;
    *r0 = per * t;
    *r1 = *r0 + per < m ? *r0 + per : m;
}

#endif
