/* Benchmark harness: option parsing, timing, the table and its JSON. */
#include "bench/harness.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/status.h"

/* A warm-up run this long is already steady state: keep it as a sample. */
#define SRB_LONG_RUN_S 2.0
#define SRB_MAX_SAMPLES 64

static int parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "starring-bench %s: %s wants an integer in [%ld, %ld], got '%s'\n", cmd, opt,
                lo, hi, s ? s : "");
        return SR_EINVAL;
    }
    *out = v;
    return SR_OK;
}

int srb_opts_parse(int argc, char **argv, const char *cmd, const char *about, srb_opts *o) {
    o->threads = 2;
    o->repeats = 5;
    o->quick = 0;
    o->json = 0;
    o->max_n = 0;
    o->budget_s = 20.0;
    o->only = NULL;
    int repeats_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long v;
        if (!strcmp(a, "--quick")) {
            o->quick = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "--repeats") || !strcmp(a, "--max-n") ||
                   !strcmp(a, "--budget")) {
            const char *val = i + 1 < argc ? argv[++i] : NULL;
            long hi = !strcmp(a, "--threads") ? 1024 : !strcmp(a, "--repeats") ? SRB_MAX_SAMPLES
                                                                                : 1L << 40;
            if (parse_int(cmd, a, val, !strcmp(a, "--max-n") ? 0 : 1, hi, &v) < 0) return SR_EINVAL;
            if (!strcmp(a, "--threads")) o->threads = (int)v;
            else if (!strcmp(a, "--repeats")) o->repeats = (int)v, repeats_set = 1;
            else if (!strcmp(a, "--max-n")) o->max_n = v;
            else o->budget_s = (double)v;
        } else if (!strcmp(a, "--only")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "starring-bench %s: --only wants a section name\n", cmd);
                return SR_EINVAL;
            }
            o->only = argv[++i];
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: starring-bench %s [--quick] [--json] [--threads N] [--repeats N]\n"
                   "                      [--max-n N] [--budget SECONDS] [--only SECTION]\n"
                   "%s\n"
                   "  --quick      tiny shapes, one repeat (seconds; for tests)\n"
                   "  --json       print the figures as JSON on stdout (the table goes to stderr)\n"
                   "  --threads N  compute threads (default 2)\n"
                   "  --repeats N  timed runs per measurement, median reported (default 5)\n"
                   "  --max-n N    skip shapes with more than N tokens\n"
                   "  --budget S   stop repeating a measurement after S seconds (default 20)\n"
                   "  --only S     only the rows of section S (the ceilings are always measured)\n",
                   cmd, about);
            return 1;
        } else {
            fprintf(stderr, "starring-bench %s: unknown option '%s' (see --help)\n", cmd, a);
            return SR_EINVAL;
        }
    }
    if (o->quick && !repeats_set) o->repeats = 1;
    return SR_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int srb_time(int (*fn)(void *), void *arg, const srb_opts *o, srb_timing *t) {
    double s[SRB_MAX_SAMPLES];
    int n = 0;
    double t0 = sr_now();
    int rc = fn(arg);
    if (rc < 0) return rc;
    double w = sr_now() - t0;
    if (w >= SRB_LONG_RUN_S) s[n++] = w;
    double spent = 0.0, last = w;
    while (n < o->repeats && n < SRB_MAX_SAMPLES && (n == 0 || spent + last <= o->budget_s)) {
        t0 = sr_now();
        rc = fn(arg);
        if (rc < 0) return rc;
        last = sr_now() - t0;
        spent += last;
        s[n++] = last;
    }
    qsort(s, (size_t)n, sizeof s[0], cmp_double);
    t->median_s = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    t->samples = n;
    return SR_OK;
}

typedef struct {
    char key[48];
    char str[128];
    double num;
    int is_str; /* 1: str; 2: a string fact with no value (JSON null) */
} srb_fact;

struct srb_report {
    srb_opts opts;
    FILE *out; /* where the table goes */
    srb_fact *facts;
    int n_facts, cap_facts;
    srb_row *rows;
    int n_rows, cap_rows;
    int header_done;
};

srb_report *srb_report_new(const srb_opts *o) {
    srb_report *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->opts = *o;
    r->out = o->json ? stderr : stdout;
    return r;
}

void srb_report_free(srb_report *r) {
    if (!r) return;
    free(r->facts);
    free(r->rows);
    free(r);
}

static srb_fact *add_fact(srb_report *r, const char *key) {
    if (r->n_facts == r->cap_facts) {
        int cap = r->cap_facts ? 2 * r->cap_facts : 16;
        srb_fact *f = realloc(r->facts, (size_t)cap * sizeof *f);
        if (!f) return NULL;
        r->facts = f;
        r->cap_facts = cap;
    }
    srb_fact *f = &r->facts[r->n_facts++];
    memset(f, 0, sizeof *f);
    snprintf(f->key, sizeof f->key, "%s", key);
    return f;
}

int srb_report_fact_num(srb_report *r, const char *key, double v) {
    srb_fact *f = add_fact(r, key);
    if (!f) return sr_error_set(SR_ENOMEM, "bench report: out of memory");
    f->num = v;
    fprintf(r->out, "# %-28s %.4g\n", key, v);
    fflush(r->out);
    return SR_OK;
}

int srb_report_fact_str(srb_report *r, const char *key, const char *v) {
    srb_fact *f = add_fact(r, key);
    if (!f) return sr_error_set(SR_ENOMEM, "bench report: out of memory");
    f->is_str = v ? 1 : 2;
    snprintf(f->str, sizeof f->str, "%s", v ? v : "");
    fprintf(r->out, "# %-28s %s\n", key, v ? v : "(unset)");
    fflush(r->out);
    return SR_OK;
}

#define ROW_FMT "%-8s %-30s %-4s %3s %10s %9s %-7s %9s %3s %9s %9s %6s\n"

static void fmt_num(char *buf, size_t n, double v, const char *f) {
    if (isnan(v)) snprintf(buf, n, "-");
    else snprintf(buf, n, f, v);
}

int srb_report_row(srb_report *r, const srb_row *row) {
    if (r->n_rows == r->cap_rows) {
        int cap = r->cap_rows ? 2 * r->cap_rows : 32;
        srb_row *p = realloc(r->rows, (size_t)cap * sizeof *p);
        if (!p) return sr_error_set(SR_ENOMEM, "bench report: out of memory");
        r->rows = p;
        r->cap_rows = cap;
    }
    r->rows[r->n_rows++] = *row;
    if (!r->header_done) {
        fprintf(r->out, ROW_FMT, "section", "case", "kv", "n", "time_ms", "rate", "unit",
                "base_rate", "n", "ours/base", "ours/ceil", "wrong");
        r->header_done = 1;
    }
    char n[16], ms[24], rate[24], base[24], bn[16], vb[24], vc[24], wrong[24];
    snprintf(n, sizeof n, "%d", row->t.samples);
    fmt_num(ms, sizeof ms, row->t.median_s * 1e3, "%.2f");
    fmt_num(rate, sizeof rate, row->rate, "%.2f");
    fmt_num(base, sizeof base, row->base_rate, "%.2f");
    if (row->base_samples > 0) snprintf(bn, sizeof bn, "%d", row->base_samples);
    else snprintf(bn, sizeof bn, "-");
    fmt_num(vb, sizeof vb, row->vs_base, "%.3f");
    fmt_num(vc, sizeof vc, row->vs_ceil, "%.3f");
    if (row->wrong >= 0) snprintf(wrong, sizeof wrong, "%lld", (long long)row->wrong);
    else snprintf(wrong, sizeof wrong, "-");
    fprintf(r->out, ROW_FMT, row->section, row->name, row->kv, n, ms, rate, row->unit, base, bn, vb,
            vc, wrong);
    fflush(r->out);
    return SR_OK;
}

int64_t srb_report_wrong(const srb_report *r) {
    int64_t w = 0;
    for (int i = 0; i < r->n_rows; i++)
        if (r->rows[i].wrong > 0) w += r->rows[i].wrong;
    return w;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void json_num(double v) {
    if (isfinite(v)) printf("%.6g", v);
    else printf("null");
}

/* "MODEL NAME, N cores" from /proc/cpuinfo, or "unknown": the charts made
 * from the JSON say which machine measured it. */
static void machine_name(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256], model[160] = "";
    int cores = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "processor", 9)) cores++;
        const char *colon = strchr(line, ':');
        if (!model[0] && !strncmp(line, "model name", 10) && colon) {
            snprintf(model, sizeof model, "%s", colon + 2);
            model[strcspn(model, "\n")] = '\0';
        }
    }
    fclose(f);
    if (model[0]) snprintf(buf, cap, "%s, %d cores", model, cores);
}

int srb_report_finish(srb_report *r) {
    fflush(r->out);
    if (!r->opts.json) return SR_OK;
    char machine[200], date[32];
    machine_name(machine, sizeof machine);
    time_t now = time(NULL);
    struct tm tm;
    if (!gmtime_r(&now, &tm) || !strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(date, sizeof date, "unknown");
    printf("{\n  \"machine\": ");
    json_str(machine);
    printf(",\n  \"date\": ");
    json_str(date);
    printf(",\n  \"threads\": %d,\n  \"quick\": %s,\n  \"repeats\": %d,\n  \"budget_s\": %g,\n"
           "  \"max_n\": %lld,\n  \"facts\": {",
           r->opts.threads, r->opts.quick ? "true" : "false", r->opts.repeats, r->opts.budget_s,
           (long long)r->opts.max_n);
    for (int i = 0; i < r->n_facts; i++) {
        const srb_fact *f = &r->facts[i];
        printf("%s\n    ", i ? "," : "");
        json_str(f->key);
        printf(": ");
        if (f->is_str == 2) printf("null");
        else if (f->is_str) json_str(f->str);
        else json_num(f->num);
    }
    printf("\n  },\n  \"rows\": [");
    for (int i = 0; i < r->n_rows; i++) {
        const srb_row *w = &r->rows[i];
        printf("%s\n    {\"section\": ", i ? "," : "");
        json_str(w->section);
        printf(", \"case\": ");
        json_str(w->name);
        printf(", \"kv\": ");
        json_str(w->kv);
        printf(", \"unit\": ");
        json_str(w->unit);
        printf(", \"time_s\": ");
        json_num(w->t.median_s);
        printf(", \"samples\": %d, \"rate\": ", w->t.samples);
        json_num(w->rate);
        printf(", \"base_rate\": ");
        json_num(w->base_rate);
        printf(", \"base_samples\": %d, \"ours_over_base\": ", w->base_samples);
        json_num(w->vs_base);
        printf(", \"ours_over_ceiling\": ");
        json_num(w->vs_ceil);
        printf(", \"wrong\": ");
        if (w->wrong >= 0) printf("%lld}", (long long)w->wrong);
        else printf("null}");
    }
    printf("\n  ],\n  \"wrong_total\": %lld\n}\n", (long long)srb_report_wrong(r));
    return fflush(stdout) == 0 ? SR_OK : sr_error_set(SR_EIO, "writing the JSON report failed");
}

int srb_run_plugin(const srb_plugin *p, void *ctx, const srb_opts *o, srb_report *r) {
    if (o->only && strcmp(o->only, p->section)) return SR_OK;
    int n = p->n_cases(ctx, o);
    for (int i = 0; i < n; i++) {
        void *st = NULL;
        int rc = p->setup(ctx, i, o, &st);
        if (rc < 0) return rc;
        if (!st) continue; /* case skipped (e.g. --max-n) */
        srb_row row;
        memset(&row, 0, sizeof row);
        snprintf(row.section, sizeof row.section, "%s", p->section);
        row.base_rate = row.vs_base = row.vs_ceil = NAN;
        double work = 0.0, ceiling = NAN;
        p->describe(st, &row, &work, &ceiling);
        rc = srb_time(p->run, st, o, &row.t);
        srb_timing tb = {NAN, 0};
        if (rc >= 0 && p->run_base) rc = srb_time(p->run_base, st, o, &tb);
        if (rc >= 0) rc = p->check(st, &row.wrong);
        p->teardown(st);
        if (rc < 0) return rc;
        row.rate = work / row.t.median_s;
        if (p->run_base) {
            row.base_rate = work / tb.median_s;
            row.base_samples = tb.samples;
            row.vs_base = row.rate / row.base_rate;
        }
        row.vs_ceil = row.rate / ceiling;
        rc = srb_report_row(r, &row);
        if (rc < 0) return rc;
    }
    return SR_OK;
}
