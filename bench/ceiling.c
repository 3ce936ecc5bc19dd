/* Machine ceilings: OpenBLAS sgemm (in child processes), read bandwidth,
 * memcpy. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "base/status.h"
#include "bench/ceiling.h"
#include "bench/commands.h"

extern char **environ;

#define SGEMM_N 4096
#define SGEMM_N_QUICK 512
#define READ_BYTES (1ull << 30)
#define READ_BYTES_QUICK (64ull << 20)

typedef struct {
    int64_t n;
    float *a, *b, *c;
} sgemm_case;

static int sgemm_run(void *arg) {
    sgemm_case *s = arg;
    int n = (int)s->n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, s->a, n, s->b, n, 0.0f,
                s->c, n);
    return SR_OK;
}

/* A few entries of C against a double-precision dot product; fp32 rounding
 * over k = 4096 terms stays well under 1e-4 of their magnitudes. */
static int64_t sgemm_wrong(const sgemm_case *s) {
    int64_t wrong = 0, n = s->n;
    for (int k = 0; k < 16; k++) {
        int64_t i = (k * 7919) % n, j = (k * 104729 + 13) % n;
        double ref = 0.0, mag = 0.0;
        for (int64_t p = 0; p < n; p++) {
            ref += (double)s->a[i * n + p] * s->b[p * n + j];
            mag += fabs((double)s->a[i * n + p] * s->b[p * n + j]);
        }
        if (!(fabs(s->c[i * n + j] - ref) <= 1e-4 * mag + 1e-6)) wrong++;
    }
    return wrong;
}

int srb_cmd_sgemm_ceiling(int argc, char **argv) {
    srb_opts o;
    int rc = srb_opts_parse(argc, argv, "sgemm-ceiling",
                            "Hidden: OpenBLAS sgemm rate in this process's environment.", &o);
    if (rc != 0) return rc > 0 ? 0 : 2;
    sgemm_case s;
    s.n = o.quick ? SGEMM_N_QUICK : SGEMM_N;
    size_t nn = (size_t)(s.n * s.n);
    s.a = malloc(nn * sizeof(float));
    s.b = malloc(nn * sizeof(float));
    s.c = malloc(nn * sizeof(float));
    if (!s.a || !s.b || !s.c) {
        fprintf(stderr, "starring-bench sgemm-ceiling: out of memory\n");
        free(s.a), free(s.b), free(s.c);
        return 1;
    }
    for (size_t i = 0; i < nn; i++) {
        s.a[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        s.b[i] = (float)((i * 40503u + 7) % 1000) * 1e-3f - 0.5f;
    }
    openblas_set_num_threads(o.threads);
    srb_timing t;
    rc = srb_time(sgemm_run, &s, &o, &t);
    if (rc == SR_OK) {
        double gflop = 2.0 * (double)s.n * (double)s.n * (double)s.n * 1e-9;
        printf("sgemm %.6g %.6g %d %lld %s\n", gflop / t.median_s, t.median_s, t.samples,
               (long long)sgemm_wrong(&s), openblas_get_corename());
    }
    free(s.a), free(s.b), free(s.c);
    return rc == SR_OK ? 0 : 1;
}

static int is_blas_var(const char *e) {
    return !strncmp(e, "OPENBLAS_CORETYPE=", 18) || !strncmp(e, "OPENBLAS_L2_SIZE=", 17);
}

/* A copy of environ without the OpenBLAS variables if unset_blas, plus
 * `extra` if not NULL. The strings are environ's; free only the array. */
static char **child_env(int unset_blas, char *extra) {
    size_t n = 0, k = 0;
    while (environ[n]) n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env) return NULL;
    for (size_t i = 0; i < n; i++)
        if (!unset_blas || !is_blas_var(environ[i])) env[k++] = environ[i];
    if (extra) env[k++] = extra;
    return env;
}

static int parse_sgemm_line(const char *line, srb_sgemm_result *res) {
    if (sscanf(line, "sgemm %lf %lf %d %lld %31s", &res->gflops, &res->t.median_s, &res->t.samples,
               &res->wrong, res->core) != 5 || !(res->gflops > 0))
        return sr_error_set(SR_EFORMAT, "sgemm ceiling: unexpected child output '%s'", line);
    return SR_OK;
}

/* Runs /proc/self/exe sgemm-ceiling, with the OpenBLAS variables removed
 * from its environment if unset_blas, and reads its one line. */
static int sgemm_child(const srb_opts *o, int unset_blas, srb_sgemm_result *res) {
    char threads[16], repeats[16];
    snprintf(threads, sizeof threads, "%d", o->threads);
    snprintf(repeats, sizeof repeats, "%d", o->repeats);
    char *argv[] = {"starring-bench", "sgemm-ceiling", "--threads", threads, "--repeats", repeats,
                    o->quick ? "--quick" : NULL, NULL};
    char **env = child_env(unset_blas, NULL);
    if (!env) return sr_error_set(SR_ENOMEM, "sgemm ceiling: out of memory");
    int fd[2];
    if (pipe(fd) < 0) {
        free(env);
        return sr_error_set(SR_EIO, "sgemm ceiling: pipe failed");
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        if (dup2(fd[1], STDOUT_FILENO) < 0) _exit(127);
        close(fd[1]);
        execve("/proc/self/exe", argv, env);
        _exit(127);
    }
    free(env);
    close(fd[1]);
    if (pid < 0) {
        close(fd[0]);
        return sr_error_set(SR_EIO, "sgemm ceiling: fork failed");
    }
    FILE *f = fdopen(fd[0], "r");
    char line[256] = "";
    int got = 0;
    if (f) {
        got = fgets(line, sizeof line, f) != NULL;
        fclose(f);
    } else {
        close(fd[0]);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return sr_error_set(SR_EIO, "sgemm ceiling: the child process failed");
    if (!got) return sr_error_set(SR_EFORMAT, "sgemm ceiling: the child printed nothing");
    return parse_sgemm_line(line, res);
}

/* Set by srb_ceiling_best_blas for the re-executed program:
 * "CORETYPE|L2|sgemm GFLOPS MEDIAN_S SAMPLES WRONG CORE" of the as-is run. */
#define AS_IS_VAR "SR_BENCH_SGEMM_AS_IS"

int srb_ceiling_sgemm(const srb_opts *o, srb_ceilings *c) {
    const char *saved = getenv(AS_IS_VAR), *e;
    int rc;
    if (saved) {
        const char *bar1 = strchr(saved, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (!bar2) return sr_error_set(SR_EFORMAT, "malformed %s '%s'", AS_IS_VAR, saved);
        snprintf(c->coretype, sizeof c->coretype, "%.*s", (int)(bar1 - saved), saved);
        snprintf(c->l2, sizeof c->l2, "%.*s", (int)(bar2 - bar1 - 1), bar1 + 1);
        rc = parse_sgemm_line(bar2 + 1, &c->as_is);
    } else {
        snprintf(c->coretype, sizeof c->coretype, "%s", (e = getenv("OPENBLAS_CORETYPE")) ? e : "");
        snprintf(c->l2, sizeof c->l2, "%s", (e = getenv("OPENBLAS_L2_SIZE")) ? e : "");
        rc = sgemm_child(o, 0, &c->as_is);
    }
    if (rc == SR_OK) rc = sgemm_child(o, 1, &c->unset);
    if (rc < 0) return rc;
    c->sgemm_gflops = c->unset.gflops > c->as_is.gflops ? c->unset.gflops : c->as_is.gflops;
    return SR_OK;
}

int srb_ceiling_best_blas(const srb_ceilings *c, int argc, char **argv) {
    /* a 3% edge is within noise: not worth a second start */
    int set = getenv("OPENBLAS_CORETYPE") || getenv("OPENBLAS_L2_SIZE");
    if (!set || getenv(AS_IS_VAR) || !(c->unset.gflops > 1.03 * c->as_is.gflops)) return SR_OK;
    const srb_sgemm_result *a = &c->as_is;
    char var[512];
    snprintf(var, sizeof var, "%s=%s|%s|sgemm %.6g %.6g %d %lld %s", AS_IS_VAR, c->coretype, c->l2,
             a->gflops, a->t.median_s, a->t.samples, a->wrong, a->core);
    char **env = child_env(1, var);
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (!env || !args) {
        free(env), free(args);
        return sr_error_set(SR_ENOMEM, "re-exec: out of memory");
    }
    args[0] = "starring-bench";
    for (int i = 0; i < argc; i++) args[i + 1] = argv[i];
    fflush(stdout);
    fflush(stderr);
    execve("/proc/self/exe", args, env);
    free(env), free(args);
    return sr_error_set(SR_EIO, "re-exec without OPENBLAS_CORETYPE failed");
}

static float sum_chunk(const float *p, size_t n) {
    size_t i = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int l = 0; l < 8; l++) s += lanes[l];
#else
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    s = (s0 + s1) + (s2 + s3);
#endif
    for (; i < n; i++) s += p[i];
    return s;
}

typedef struct {
    float *buf;   /* READ_BYTES, 64-byte aligned */
    size_t n;     /* floats */
    int threads;
    volatile float sink;
} read_case;

static int read_run(void *arg) {
    read_case *r = arg;
    float total = 0.0f;
    /* chunks of whole 64-float lines, so every thread's loads stay aligned */
    size_t lines = r->n / 64;
#pragma omp parallel num_threads(r->threads) reduction(+ : total)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t l0 = lines * (size_t)t / (size_t)nt, l1 = lines * (size_t)(t + 1) / (size_t)nt;
        total += sum_chunk(r->buf + l0 * 64, (l1 - l0) * 64);
    }
    r->sink = total;
    return SR_OK;
}

static int memcpy_run(void *arg) {
    read_case *r = arg;
    size_t half = r->n / 2;
#pragma omp parallel num_threads(r->threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t a = half * (size_t)t / (size_t)nt, b = half * (size_t)(t + 1) / (size_t)nt;
        memcpy(r->buf + half + a, r->buf + a, (b - a) * sizeof(float));
    }
    return SR_OK;
}

static int ceiling_row(srb_report *r, const char *name, const srb_timing *t, double rate,
                       const char *unit, double vs_ceil, int64_t wrong) {
    srb_row row;
    memset(&row, 0, sizeof row);
    snprintf(row.section, sizeof row.section, "ceiling");
    snprintf(row.name, sizeof row.name, "%s", name);
    snprintf(row.kv, sizeof row.kv, "-");
    row.unit = unit;
    row.t = *t;
    row.rate = rate;
    row.base_rate = row.vs_base = NAN;
    row.vs_ceil = vs_ceil;
    row.wrong = wrong;
    return srb_report_row(r, &row);
}

int srb_ceiling_memory(const srb_opts *o, srb_ceilings *c) {
    read_case m;
    size_t bytes = o->quick ? READ_BYTES_QUICK : READ_BYTES;
    m.n = bytes / sizeof(float);
    m.threads = o->threads;
    m.buf = aligned_alloc(64, bytes);
    if (!m.buf) return sr_error_set(SR_ENOMEM, "read ceiling: cannot allocate %zu bytes", bytes);
    /* touched by the threads that will read it */
#pragma omp parallel for num_threads(o->threads) schedule(static)
    for (size_t i = 0; i < m.n; i++) m.buf[i] = (float)(i & 1023) * 1e-3f;
    size_t half = m.n / 2;
    c->read_bytes = bytes;
    c->copy_bytes = half * sizeof(float);
    int rc = srb_time(read_run, &m, o, &c->read_t);
    if (rc == SR_OK) rc = srb_time(memcpy_run, &m, o, &c->copy_t);
    if (rc == SR_OK) {
        c->read_gbs = (double)c->read_bytes * 1e-9 / c->read_t.median_s;
        c->memcpy_gbs = (double)c->copy_bytes * 1e-9 / c->copy_t.median_s;
        c->copy_wrong = memcmp(m.buf, m.buf + half, c->copy_bytes) != 0;
    }
    free(m.buf);
    return rc;
}

int srb_ceiling_report(const srb_ceilings *c, const srb_opts *o, srb_report *r) {
    int use_unset = c->unset.gflops > c->as_is.gflops;
    int rc = srb_report_fact_str(r, "OPENBLAS_CORETYPE", c->coretype[0] ? c->coretype : NULL);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "OPENBLAS_L2_SIZE", c->l2[0] ? c->l2 : NULL);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "sgemm_core_as_is", c->as_is.core);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "sgemm_core_unset", c->unset.core);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "sgemm_as_is_gflops", c->as_is.gflops);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "sgemm_unset_gflops", c->unset.gflops);
    if (rc == SR_OK)
        rc = srb_report_fact_str(r, "sgemm_ceiling_used", use_unset ? "unset" : "as-is");
    if (rc == SR_OK) rc = srb_report_fact_num(r, "sgemm_ceiling_gflops", c->sgemm_gflops);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "read_gbs", c->read_gbs);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "memcpy_gbs", c->memcpy_gbs);
    if (rc < 0) return rc;

    int n = o->quick ? SGEMM_N_QUICK : SGEMM_N;
    char name[48];
    snprintf(name, sizeof name, "sgemm %d as-is (%.20s)", n, c->as_is.core);
    rc = ceiling_row(r, name, &c->as_is.t, c->as_is.gflops, "GFLOP/s",
                         c->as_is.gflops / c->sgemm_gflops, c->as_is.wrong);
    snprintf(name, sizeof name, "sgemm %d unset (%.20s)", n, c->unset.core);
    if (rc == SR_OK)
        rc = ceiling_row(r, name, &c->unset.t, c->unset.gflops, "GFLOP/s",
                         c->unset.gflops / c->sgemm_gflops, c->unset.wrong);
    snprintf(name, sizeof name, "read %zu MiB", c->read_bytes >> 20);
    if (rc == SR_OK) rc = ceiling_row(r, name, &c->read_t, c->read_gbs, "GB/s", 1.0, -1);
    snprintf(name, sizeof name, "memcpy %zu MiB (bytes copied)", c->copy_bytes >> 20);
    if (rc == SR_OK)
        rc = ceiling_row(r, name, &c->copy_t, c->memcpy_gbs, "GB/s", c->memcpy_gbs / c->read_gbs,
                         c->copy_wrong);
    return rc;
}
