/* Benchmark harness, in the manner of nccl-tests: a plug-in describes a
 * family of cases with a struct of function pointers; the harness sets each
 * case up, warms up, times repeats of the subject and of its baseline (median),
 * counts wrong elements, and prints one row per case in one fixed-width table
 * (and, with --json, the same figures as JSON). */
#ifndef SR_BENCH_HARNESS_H
#define SR_BENCH_HARNESS_H

#include <stdint.h>

typedef struct {
    int threads;     /* compute threads */
    int repeats;     /* timed runs per subject, at most */
    int quick;       /* tiny shapes and one repeat: for tests */
    int json;        /* JSON on stdout; the table then goes to stderr */
    int64_t max_n;   /* skip shapes with more tokens than this (0: no limit) */
    double budget_s; /* stop repeating a subject once this much time is spent */
    const char *only; /* run only the plug-in of this section (NULL: all) */
} srb_opts;

/* Parses the options every subcommand shares. Returns 0, 1 when --help was
 * printed, or a negative SR_E* code with a message on stderr. */
int srb_opts_parse(int argc, char **argv, const char *cmd, const char *about, srb_opts *o);

typedef struct {
    double median_s; /* median seconds of one run */
    int samples;     /* timed runs behind the median */
} srb_timing;

/* Times fn(arg): one warm-up run (kept as a sample when it is long enough to
 * be steady state), then up to o->repeats runs within o->budget_s. */
int srb_time(int (*fn)(void *), void *arg, const srb_opts *o, srb_timing *t);

/* One row of the table. NAN marks a figure that does not apply. */
typedef struct {
    char section[16]; /* "ceiling", "prefill", "decode", ... */
    char name[48];    /* the case, e.g. "n=4096 Hq=8 Hkv=2" */
    char kv[8];       /* K/V dtype, or "-" */
    const char *unit; /* "GFLOP/s", "GB/s" */
    srb_timing t;     /* the subject */
    double rate;      /* the subject's rate, in unit */
    double base_rate; /* the baseline's rate on the same work */
    int base_samples;
    double vs_base;   /* rate / base_rate */
    double vs_ceil;   /* rate / the machine's ceiling for this unit */
    int64_t wrong;    /* elements out of tolerance; -1: not checked */
} srb_row;

/* Everything one run prints: facts about the machine ("# key: value" above
 * the table, an object in JSON) and rows. Printed as they come, so that a
 * long run shows progress. */
typedef struct srb_report srb_report;

srb_report *srb_report_new(const srb_opts *o);
void srb_report_free(srb_report *r);
/* v NULL: a fact with no value ("(unset)"; JSON null). */
int srb_report_fact_num(srb_report *r, const char *key, double v);
int srb_report_fact_str(srb_report *r, const char *key, const char *v);
int srb_report_row(srb_report *r, const srb_row *row);
/* Rows so far whose wrong count is positive. */
int64_t srb_report_wrong(const srb_report *r);
/* Closes the table; with --json prints the JSON document on stdout. */
int srb_report_finish(srb_report *r);

/* A family of cases. The harness calls, for each case i: setup, run (timed),
 * run_base (timed, if any), check, describe, teardown. */
typedef struct srb_plugin {
    const char *section;
    int (*n_cases)(void *ctx, const srb_opts *o);
    /* Allocates and fills case i's inputs; untimed. *state is the case. */
    int (*setup)(void *ctx, int i, const srb_opts *o, void **state);
    int (*run)(void *state);      /* ours */
    int (*run_base)(void *state); /* the baseline, or NULL */
    /* Counts elements of ours that are out of tolerance against the
     * baseline's output or a reference. */
    int (*check)(void *state, int64_t *wrong);
    /* Names the case and gives its work per run (in the unit's numerator:
     * GFLOP or GB) and the ceiling for vs_ceil (NAN if none). */
    void (*describe)(void *state, srb_row *row, double *work, double *ceiling);
    void (*teardown)(void *state);
} srb_plugin;

/* Runs every case of p and adds its rows to r. Returns SR_OK or the first
 * error (the remaining cases are skipped). */
int srb_run_plugin(const srb_plugin *p, void *ctx, const srb_opts *o, srb_report *r);

#endif
