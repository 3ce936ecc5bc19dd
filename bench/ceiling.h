/* Machine ceilings the kernels are judged against: OpenBLAS sgemm on a large
 * square product, a vectorized read of a large buffer, and memcpy. */
#ifndef SR_BENCH_CEILING_H
#define SR_BENCH_CEILING_H

#include <stddef.h>
#include <stdint.h>

#include "bench/harness.h"

/* One sgemm-ceiling child's figures. */
typedef struct {
    double gflops;
    srb_timing t;
    long long wrong; /* spot-checked entries of C out of tolerance */
    char core[32];   /* openblas_get_corename() */
} srb_sgemm_result;

typedef struct {
    char coretype[64], l2[64]; /* OPENBLAS_CORETYPE and _L2_SIZE as given; "" if unset */
    srb_sgemm_result as_is;    /* environment as it is */
    srb_sgemm_result unset;    /* those two variables removed */
    double sgemm_gflops;       /* the ceiling: the higher of the two */
    srb_timing read_t, copy_t;
    size_t read_bytes, copy_bytes;
    int64_t copy_wrong;
    double read_gbs;   /* bytes read per second, vectorized, o->threads threads */
    double memcpy_gbs; /* bytes copied per second (reference only) */
} srb_ceilings;

/* sgemm as-is and with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset, each in a
 * child process (re-executing this program), since OpenBLAS reads them when
 * it loads. */
int srb_ceiling_sgemm(const srb_opts *o, srb_ceilings *c);

/* When those variables are set and sgemm is faster without them, re-executes
 * this program (argv from the subcommand's name on) without them, so that
 * the OpenBLAS baseline also runs on the better core; the as-is figures
 * travel in the environment. Returns SR_OK when no re-exec is needed. */
int srb_ceiling_best_blas(const srb_ceilings *c, int argc, char **argv);

/* Read and memcpy bandwidth over a >= 1 GiB buffer (64 MiB with --quick). */
int srb_ceiling_memory(const srb_opts *o, srb_ceilings *c);

/* Adds the ceilings' facts and rows to r. */
int srb_ceiling_report(const srb_ceilings *c, const srb_opts *o, srb_report *r);

#endif
