/* starring-run: loads a GGUF model and generates from a prompt, printing the
 * text on stdout as it comes and timing lines on stderr. Under mpirun the
 * context (-f FILE) is prefilled across the ranks (--mode ring|star|cad) and the
 * question (-p) answered over the sharded KV (worker/cp.h); rank 0 prints.
 *
 * main reads the options (one table: name, type, bounds, default, help),
 * builds the inputs (model, tokenizer, token ids, checked against the
 * context window and the KV budget before anything runs), then runs. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/progress.h"
#include "base/status.h"
#include "model/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "transport/transport.h"
#include "worker/cp.h"

/* ---------------------------------------------------------------- options */

/* What the command line sets. Integers are int64_t and floats float, as the
 * table's types say; unset strings are NULL. */
typedef struct {
    const char *model, *prompt, *file, *ids, *system, *stop, *dump, *dump_positions, *kv_type, *mode, *transport,
        *plan_docs;
    int chat, cad_serial;
    int64_t n_predict, threads, top_k, seed, block_size, batch, anchor_size, random_context, ctx_size, kv_budget,
        attn_servers;
    float temp, top_p, repeat_penalty;
} run_args;

enum { ARG_FLAG, ARG_STR, ARG_INT, ARG_NUM };

typedef struct {
    const char *name;   /* long option */
    char letter;        /* short option, 0 if none */
    int type;           /* ARG_* */
    size_t off;         /* of its field in run_args */
    int64_t min, max;   /* ARG_INT: allowed values */
    float lo, hi;       /* ARG_NUM: allowed values, lo excluded when lo_open */
    int lo_open;
    const char *meta;   /* the argument in --help */
    const char *dflt;   /* the default in --help, NULL for none */
    const char *help;
} opt_def;

#define OFF(field) offsetof(run_args, field)
#define INT_OPT(name, letter, field, min, max, meta, dflt, help) \
    {name, letter, ARG_INT, OFF(field), min, max, 0, 0, 0, meta, dflt, help}
#define NUM_OPT(name, field, lo, hi, lo_open, meta, dflt, help) \
    {name, 0, ARG_NUM, OFF(field), 0, 0, lo, hi, lo_open, meta, dflt, help}
#define STR_OPT(name, letter, field, meta, dflt, help) {name, letter, ARG_STR, OFF(field), 0, 0, 0, 0, 0, meta, dflt, help}
#define FLAG_OPT(name, field, help) {name, 0, ARG_FLAG, OFF(field), 0, 0, 0, 0, 0, NULL, NULL, help}

enum { MAX_THREADS = 4096, MAX_BATCH = 1 << 20, MAX_BLOCK = 1 << 24 };
static const int64_t MAX_CONTEXT = (int64_t)1 << 40;

static const opt_def opt_table[] = {
    STR_OPT("model", 'm', model, "FILE", NULL, "GGUF model (required)"),
    STR_OPT("prompt", 'p', prompt, "TEXT", NULL, "prompt text; with -f or --ids, the question after the context"),
    STR_OPT("file", 'f', file, "FILE", NULL, "read the context from FILE, every byte of it (a NUL byte is\n"
                                             "encoded as the byte it is)"),
    STR_OPT("ids", 0, ids, "\"ID ...\"", NULL,
            "feed these token ids (space or comma separated, each in\n"
            "0..vocabulary size - 1) as the context"),
    INT_OPT("random-context", 0, random_context, 1, INT64_MAX, "N", NULL,
            "benchmark hook: a context of N random token ids (seed --seed)"),
    INT_OPT("n-predict", 'n', n_predict, 0, INT64_MAX, "N", "128",
            "most tokens to generate; fewer when the context window fills first"),
    INT_OPT("ctx-size", 'c', ctx_size, 1, MAX_CONTEXT, "N", "the model's trained length",
            "context window: most tokens of prompt and generation together;\n"
            "beyond the trained length the model extrapolates"),
    INT_OPT("kv-budget", 0, kv_budget, 1, MAX_CONTEXT, "MIB", "this machine's memory / its ranks",
            "most MiB of KV cache a rank may need for the context window"),
    FLAG_OPT("chat", chat, "wrap the prompt in the model's chat template"),
    STR_OPT("system", 0, system, "TEXT", "the template's own", "system message with --chat"),
    NUM_OPT("temp", temp, 0.0f, 1e30f, 0, "T", "0", "temperature, 0 = greedy"),
    INT_OPT("top-k", 0, top_k, 0, INT32_MAX, "K", "40", "keep the K most likely tokens, 0 = off"),
    NUM_OPT("top-p", top_p, 0.0f, 1.0f, 1, "P", "0.95", "keep the most likely tokens up to mass P"),
    NUM_OPT("repeat-penalty", repeat_penalty, 0.0f, 1e30f, 1, "R", "1 = off", "penalty on tokens of the last 64"),
    INT_OPT("seed", 0, seed, 0, INT64_MAX, "S", "0", "random seed"),
    INT_OPT("threads", 't', threads, 1, MAX_THREADS, "N", "all cores", "threads"),
    STR_OPT("kv-type", 0, kv_type, "T", "f16", "KV cache type: f16, bf16, or f32 (reference checks)"),
    INT_OPT("block-size", 0, block_size, 1, MAX_BLOCK, "N", "256 for the cache; star: context / workers",
            "context block: tokens per KV cache block and, in star mode,\n"
            "per placed block: smaller blocks are faster and more\n"
            "approximate (each sees only the anchor and itself)"),
    INT_OPT("batch", 0, batch, 1, MAX_BATCH, "N", "512", "prompt tokens per forward pass"),
    STR_OPT("mode", 0, mode, "M", "full alone, star under mpirun", "full, ring, star or cad"),
    INT_OPT("attn-servers", 0, attn_servers, 0, 65535, "K", "0",
            "cad: the last K ranks are attention servers; they load no\n"
            "model and run every layer's core attention, balanced"),
    FLAG_OPT("cad-serial", cad_serial, "cad: the servers await each layer's messages before\n"
                                       "computing (no ping-pong; a benchmark's baseline)"),
    INT_OPT("anchor-size", 0, anchor_size, 0, MAX_CONTEXT, "N", "one block", "star: anchor tokens, 0 = one block; longer is slower\nand more accurate"),
    STR_OPT("transport", 0, transport, "T", "mpi", "mpi, ucx (addresses and key over MPI) or tcp (tcp needs SR_TCP_SECRET_FILE: deploy/README.md)"),
    STR_OPT("stop", 0, stop, "STR", NULL, "stop when the output contains STR"),
    STR_OPT("dump-logits", 0, dump, "FILE", NULL,
            "test hook: write float32 logits at --dump-positions of the\n"
            "prompt to FILE ([positions][vocab]) and exit"),
    STR_OPT("dump-positions", 0, dump_positions, "L", NULL, "comma-separated prompt positions for --dump-logits"),
    STR_OPT("plan-docs", 0, plan_docs, "\"N ...\"", NULL,
            "benchmark hook: print the cad plan of a batch of documents\n"
            "of these lengths over --attn-servers K (chunks from\n"
            "--block-size, shapes of -m) and exit"),
};
enum { N_OPTS = sizeof(opt_table) / sizeof(opt_table[0]) };

static void print_usage(FILE *f) {
    fputs("usage: starring-run -m MODEL (-p PROMPT | -f FILE | --ids \"1 2 3\") [options]\n", f);
    for (int i = 0; i < N_OPTS; i++) {
        const opt_def *o = &opt_table[i];
        char head[64], range[96] = "";
        snprintf(head, sizeof head, "%c%c%c --%s%s%s", o->letter ? '-' : ' ', o->letter ? o->letter : ' ',
                 o->letter ? ',' : ' ', o->name, o->meta ? " " : "", o->meta ? o->meta : "");
        if (o->type == ARG_INT && o->max == INT64_MAX)
            snprintf(range, sizeof range, "%lld or more", (long long)o->min);
        else if (o->type == ARG_INT)
            snprintf(range, sizeof range, "%lld..%lld", (long long)o->min, (long long)o->max);
        else if (o->type == ARG_NUM && o->hi >= 1e30f)
            snprintf(range, sizeof range, "%s %g", o->lo_open ? "above" : "at least", o->lo);
        else if (o->type == ARG_NUM)
            snprintf(range, sizeof range, "%g%s..%g", o->lo, o->lo_open ? " (excluded)" : "", o->hi);
        char tail[256] = "";
        if (o->dflt || range[0])
            snprintf(tail, sizeof tail, "(%s%s%s%s)", o->dflt ? "default " : "", o->dflt ? o->dflt : "",
                     o->dflt && range[0] ? "; " : "", range);
        fprintf(f, "  %-24s ", head);
        int col = 27;
        for (const char *h = o->help; *h; h++, col++) {
            if (*h == '\n') fprintf(f, "\n%27s", ""), col = 26;
            else fputc(*h, f);
        }
        /* the default and the range after the text, or on a line of their own */
        if (tail[0] && col + 1 + (int)strlen(tail) <= 100) fprintf(f, " %s", tail);
        else if (tail[0]) fprintf(f, "\n%27s%s", "", tail);
        fputc('\n', f);
    }
    fprintf(f, "  %-24s this help\n", "-h, --help");
}

/* The one integer parser: the whole of s (or up to *end when end is not
 * NULL) must be a decimal integer in min..max. */
static int parse_int(const char *flag, const char *s, char **end, int64_t min, int64_t max, int64_t *out) {
    char *e;
    errno = 0;
    long long v = strtoll(s, &e, 10);
    int whole = e != s && (end || *e == 0);
    if (!whole) return sr_error_set(SR_EINVAL, "%s: '%s' is not an integer", flag, s);
    if (errno == ERANGE || v < min || v > max) {
        int n = (int)(e - s);
        if (max == INT64_MAX)
            return sr_error_set(SR_ERANGE, "%s: %.*s is out of range (%lld or more)", flag, n, s, (long long)min);
        return sr_error_set(SR_ERANGE, "%s: %.*s is out of range (%lld..%lld)", flag, n, s, (long long)min,
                            (long long)max);
    }
    if (end) *end = e;
    *out = v;
    return SR_OK;
}

static int parse_num(const opt_def *o, const char *s, float *out) {
    char *e;
    errno = 0;
    float v = strtof(s, &e);
    if (e == s || *e) return sr_error_set(SR_EINVAL, "--%s: '%s' is not a number", o->name, s);
    if (errno == ERANGE || !isfinite(v) || v < o->lo || (o->lo_open && v == o->lo) || v > o->hi) {
        if (o->hi >= 1e30f)
            return sr_error_set(SR_ERANGE, "--%s: %s is out of range (%s %g)", o->name, s,
                                o->lo_open ? "above" : "at least", o->lo);
        return sr_error_set(SR_ERANGE, "--%s: %s is out of range (%g%s..%g)", o->name, s, o->lo,
                            o->lo_open ? " excluded" : "", o->hi);
    }
    *out = v;
    return SR_OK;
}

/* Integers separated by spaces, tabs, newlines or commas, each in min..max,
 * into a malloc'ed array (at least one element's room). */
static int parse_list(const char *flag, const char *s, int64_t min, int64_t max, int64_t **out, int64_t *n) {
    size_t cap = strlen(s) / 2 + 1; /* an item and its separator take two characters at least */
    int64_t *a = malloc(cap * sizeof(*a));
    if (!a) return sr_error_set(SR_ENOMEM, "%s: out of memory", flag);
    int64_t k = 0;
    for (;;) {
        while (*s == ' ' || *s == ',' || *s == '\n' || *s == '\t') s++;
        if (!*s) break;
        char *end = NULL;
        int rc = parse_int(flag, s, &end, min, max, &a[k]);
        if (rc == SR_OK && *end && !strchr(" ,\n\t", *end))
            rc = sr_error_set(SR_EINVAL, "%s: '%s' is not a list of integers", flag, s);
        if (rc) {
            free(a);
            return rc;
        }
        k++;
        s = end;
    }
    *out = a;
    *n = k;
    return SR_OK;
}

/* A positive integer from the launcher's environment, or dflt. */
static int64_t env_int(const char *const *names, size_t n, int64_t dflt) {
    for (size_t i = 0; i < n; i++) {
        const char *v = getenv(names[i]);
        int64_t x = 0;
        if (v && parse_int(names[i], v, NULL, 1, INT32_MAX, &x) == SR_OK) return x;
    }
    sr_error_clear();
    return dflt;
}

/* Ranks of the job, and ranks on this machine (1 when alone). */
static int job_size(void) {
    static const char *const names[] = {"SR_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    return (int)env_int(names, sizeof names / sizeof names[0], 1);
}

static int local_size(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"};
    return (int)env_int(names, sizeof names / sizeof names[0], 1);
}

/* Reads argv into a; SR_OK, or SR_EINVAL/SR_ERANGE with a message naming the
 * option. *help is set for -h. */
static int read_args(int argc, char **argv, run_args *a, int *help) {
    *a = (run_args){.n_predict = 128, .threads = omp_get_max_threads(), .top_k = 40, .temp = 0.0f, .top_p = 0.95f,
                    .repeat_penalty = 1.0f, .kv_type = "f16", .transport = "mpi"};
    *help = 0;
    struct option lo[N_OPTS + 2];
    char shorts[2 * N_OPTS + 2], *sp = shorts;
    for (int i = 0; i < N_OPTS; i++) {
        lo[i] = (struct option){opt_table[i].name, opt_table[i].type == ARG_FLAG ? no_argument : required_argument,
                                NULL, 256 + i};
        if (opt_table[i].letter) *sp++ = opt_table[i].letter, *sp++ = ':';
    }
    lo[N_OPTS] = (struct option){"help", no_argument, NULL, 'h'};
    lo[N_OPTS + 1] = (struct option){0, 0, 0, 0};
    *sp++ = 'h', *sp = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        if (c == 'h') {
            *help = 1;
            return SR_OK;
        }
        int i = c - 256;
        for (int j = 0; c < 256 && j < N_OPTS; j++)
            if (opt_table[j].letter == c) i = j;
        if (i < 0 || i >= N_OPTS) {
            if (optopt >= 256 && optopt < 256 + N_OPTS)
                return sr_error_set(SR_EINVAL, "--%s needs an argument", opt_table[optopt - 256].name);
            if (optopt > 0) return sr_error_set(SR_EINVAL, "unknown option or missing argument: '-%c'", optopt);
            return sr_error_set(SR_EINVAL, "unknown option '%s'", argv[optind - 1]);
        }
        const opt_def *o = &opt_table[i];
        char flag[40];
        snprintf(flag, sizeof flag, "--%s", o->name);
        char *field = (char *)a + o->off;
        int rc = SR_OK;
        switch (o->type) {
        case ARG_FLAG: *(int *)field = 1; break;
        case ARG_STR: *(const char **)field = optarg; break;
        case ARG_INT: rc = parse_int(flag, optarg, NULL, o->min, o->max, (int64_t *)field); break;
        default: rc = parse_num(o, optarg, (float *)field); break;
        }
        if (rc) return rc;
    }
    if (optind < argc) return sr_error_set(SR_EINVAL, "unexpected argument '%s'", argv[optind]);
    return SR_OK;
}

/* The options that depend on each other, and the named choices. */
static int check_args(const run_args *a, int world) {
    if (!a->model) return sr_error_set(SR_EINVAL, "-m MODEL is required");
    if (a->plan_docs) /* one process, no prompt: the planner alone */
        return a->attn_servers > 0 && world == 1 ? SR_OK
                                                 : sr_error_set(SR_EINVAL, "--plan-docs needs --attn-servers K and one process");
    if (!a->prompt && !a->file && !a->ids && !a->random_context)
        return sr_error_set(SR_EINVAL, "give a prompt: -p, -f, --ids or --random-context");
    if (a->file && (a->ids || a->random_context)) return sr_error_set(SR_EINVAL, "give the context with one of -f, --ids or --random-context");
    if (a->ids && a->random_context) return sr_error_set(SR_EINVAL, "give the context with one of --ids or --random-context");
    if (a->dump && !a->dump_positions) return sr_error_set(SR_EINVAL, "--dump-logits needs --dump-positions");
    if (a->dump && world > 1) return sr_error_set(SR_EINVAL, "--dump-logits runs in one process only");
    if (strcmp(a->kv_type, "f16") && strcmp(a->kv_type, "bf16") && strcmp(a->kv_type, "f32"))
        return sr_error_set(SR_EINVAL, "--kv-type: '%s' is not f16, bf16 or f32", a->kv_type);
    if (a->mode && sr_cp_mode_parse(a->mode) < 0)
        return sr_error_set(SR_EINVAL, "--mode: '%s' is not full, ring, star or cad", a->mode);
    int cad = a->mode && sr_cp_mode_parse(a->mode) == SR_CP_CAD;
    if (cad != (a->attn_servers > 0))
        return sr_error_set(SR_EINVAL, "--mode cad and --attn-servers K (1 or more) go together");
    if (cad && world == 1)
        return sr_error_set(SR_EINVAL, "--mode cad runs under mpirun: one model worker and --attn-servers K ranks at "
                            "least; this job has one rank");
    if (cad && a->attn_servers >= world)
        return sr_error_set(SR_EINVAL, "--attn-servers: %lld, allowed 1..%d (the job's %d ranks less one model worker)",
                            (long long)a->attn_servers, world - 1, world);
    if (strcmp(a->transport, "mpi") && strcmp(a->transport, "ucx") && strcmp(a->transport, "tcp"))
        return sr_error_set(SR_EINVAL, "--transport: '%s' is not mpi, ucx or tcp", a->transport);
    return SR_OK;
}

/* ----------------------------------------------------------------- inputs */

/* What a run works on, built from the options. */
typedef struct {
    sr_model_opts mo;
    sr_cp_opts co;
    sr_gen_params gp;
    sr_model *m;
    sr_tokenizer *tok;   /* NULL for a logit dump of --ids (tiny test models have no tokenizer) */
    char *text;          /* the context file */
    size_t text_len;
    int32_t *ids;        /* the context */
    int64_t n_ids;
    int32_t *question;   /* fed after the context */
    int64_t n_question;
} run_inputs;

static void free_inputs(run_inputs *in) {
    free(in->ids);
    free(in->question);
    free(in->text);
    sr_tok_free(in->tok);
    sr_model_free(in->m);
    memset(in, 0, sizeof(*in));
}

/* full alone, star under mpirun, unless --mode says */
static int run_mode(const run_args *a, int world) {
    return a->mode ? sr_cp_mode_parse(a->mode) : world > 1 ? SR_CP_STAR : SR_CP_FULL;
}

static void make_opts(const run_args *a, int world, run_inputs *in) {
    in->mo = (sr_model_opts){.n_threads = (int)a->threads, .block_size = a->block_size, .max_batch = a->batch,
                             .kv_dtype = !strcmp(a->kv_type, "bf16") ? SR_DT_BF16 : !strcmp(a->kv_type, "f32") ? SR_DT_F32
                                                                                                              : SR_DT_F16};
    in->co = (sr_cp_opts){.mode = run_mode(a, world),
                          .block_size = a->block_size, .anchor_size = a->anchor_size, .tag = 0,
                          .attn_servers = (int)a->attn_servers, .cad_serial = a->cad_serial};
    /* a logit dump generates nothing */
    in->gp = (sr_gen_params){.n_predict = a->dump ? 0 : a->n_predict, .sampling = sr_sampler_defaults(), .stop = a->stop};
    in->gp.sampling.temperature = a->temp;
    in->gp.sampling.top_k = (int)a->top_k;
    in->gp.sampling.top_p = a->top_p;
    in->gp.sampling.repeat_penalty = a->repeat_penalty;
    in->gp.sampling.seed = (uint64_t)a->seed;
}

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return sr_error_set(SR_EIO, "-f: cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *b = cap <= SIZE_MAX / 4 ? realloc(buf, 2 * cap + 1) : NULL;
        if (!b) free(buf);
        buf = b;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return sr_error_set(SR_ENOMEM, "-f: out of memory reading '%s'", path);
    if (err) {
        free(buf);
        return sr_error_set(SR_EIO, "-f: cannot read '%s'", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return SR_OK;
}

static int64_t machine_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (int64_t)pages * page : INT64_MAX;
}

/* Checks the context (n_ctx tokens, then the question) and the generation
 * against the context window and the KV budget, before anything is
 * allocated for it; clamps -n to what the window leaves (a note on stderr). */
static int check_context(const run_args *a, run_inputs *in, int world, int rank, int64_t n_ctx) {
    const char *source = a->random_context ? "--random-context" : a->ids ? "--ids" : a->file ? "-f" : "-p";
    const sr_model *m = in->m;
    int64_t window = a->ctx_size ? a->ctx_size : m->config.context_len > 0 ? m->config.context_len : MAX_CONTEXT;
    char why[128];
    snprintf(why, sizeof why, "%s--ctx-size%s 1..%lld",
             a->ctx_size ? "" : m->config.context_len > 0 ? "the model's trained context length; " : "the largest; ",
             a->ctx_size ? "," : " sets it,", (long long)MAX_CONTEXT);
    int64_t n_prompt = n_ctx + in->n_question;
    if (n_ctx > window || n_prompt > window) {
        char parts[64] = "";
        if (in->n_question)
            snprintf(parts, sizeof parts, " (%lld of context, %lld of question)", (long long)n_ctx,
                     (long long)in->n_question);
        return sr_error_set(SR_ERANGE, "%s: the prompt has %lld tokens%s but the context window holds %lld (%s)", source,
                            (long long)(n_ctx > window ? n_ctx : n_prompt), parts, (long long)window, why);
    }
    if (in->gp.n_predict > window - n_prompt) {
        if (rank == 0)
            fprintf(stderr, "starring-run: -n %lld clamped to %lld: the context window holds %lld tokens (%s)\n",
                    (long long)in->gp.n_predict, (long long)(window - n_prompt), (long long)window, why);
        in->gp.n_predict = window - n_prompt;
    }
    /* the KV a rank holds at least: its share of the context (with the
     * anchor in star mode), and on the query rank the question and the
     * generated tokens; every rank checks the largest share */
    int64_t share = in->co.mode == SR_CP_FULL ? n_ctx : (n_ctx + world - 1) / world;
    if (in->co.mode == SR_CP_STAR) {
        sr_star_place pl; /* resolves the default sizes */
        int rc = sr_place_star(n_ctx, a->block_size, a->anchor_size, world, 0, &pl);
        if (rc != SR_OK) return rc;
        share += pl.anchor_size;
    }
    int64_t tokens = share + in->n_question + in->gp.n_predict, block = m->kv.block_size, blocks = (tokens + block - 1) / block;
    int64_t budget = a->kv_budget ? a->kv_budget : machine_bytes() / local_size() >> 20, need;
    if (__builtin_mul_overflow(blocks, (int64_t)sr_kv_block_bytes(&m->kv), &need) || need > budget << 20)
        return sr_error_set(SR_ERANGE,
                            "%lld tokens of context on a rank (of %lld prompt and %lld generated) need %.1f MiB of KV "
                            "cache; the KV budget is %lld MiB (--kv-budget%s)",
                            (long long)tokens, (long long)n_prompt, (long long)in->gp.n_predict,
                            (double)blocks * (double)sr_kv_block_bytes(&m->kv) / 1048576.0, (long long)budget,
                            a->kv_budget ? "" : "; default: this machine's memory over its ranks");
    return SR_OK;
}

/* Loads the model and the tokenizer and makes the token ids, checked. */
static int build_inputs(const run_args *a, int world, int rank, run_inputs *in) {
    make_opts(a, world, in);
    int rc = sr_model_load(&in->m, a->model, &in->mo);
    /* token ids straight to a logit dump need no tokenizer */
    if (rc == SR_OK && !(a->ids && a->dump)) rc = sr_tok_from_gguf(&in->tok, in->m->gguf);
    if (rc) return rc;
    int64_t vocab = in->m->config.vocab_size;
    if (a->ids || a->random_context) {
        if (a->prompt && !a->dump &&
            (rc = sr_tok_encode(in->tok, a->prompt, strlen(a->prompt), 0, 0, &in->question, &in->n_question)))
            return rc;
        int64_t *list = NULL, n = a->random_context;
        if (a->ids && (rc = parse_list("--ids", a->ids, 0, vocab - 1, &list, &n))) return rc;
        if (n == 0) rc = sr_error_set(SR_EINVAL, "--ids: the list is empty");
        if (rc == SR_OK) rc = check_context(a, in, world, rank, n);
        if (rc == SR_OK && !(in->ids = malloc((size_t)n * sizeof(*in->ids))))
            rc = sr_error_set(SR_ENOMEM, "out of memory for %lld token ids", (long long)n);
        uint64_t z = (uint64_t)a->seed + 1;
        for (int64_t i = 0; rc == SR_OK && i < n; i++) {
            z = z * 6364136223846793005ull + 1442695040888963407ull; /* the same ids on every rank */
            in->ids[i] = list ? (int32_t)list[i] : (int32_t)((z >> 33) % (uint64_t)vocab);
        }
        in->n_ids = rc == SR_OK ? n : 0;
        free(list);
        return rc;
    }
    if (a->file && (rc = read_file(a->file, &in->text, &in->text_len))) return rc;
    const char *ctx = a->file ? in->text : a->prompt;
    rc = sr_cp_encode(in->tok, ctx, a->file ? in->text_len : strlen(ctx), a->file ? a->prompt : NULL, a->chat,
                      a->system, &in->ids, &in->n_ids, &in->question, &in->n_question);
    return rc ? rc : check_context(a, in, world, rank, in->n_ids);
}

/* -------------------------------------------------------------------- run */

static int emit_stdout(void *data, const char *text, size_t len) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* Runs the prompt in pieces that end at each dump position and writes the
 * logits there. */
static int dump_logits(const run_args *a, run_inputs *in) {
    int64_t *pos, np, done = 0;
    double t0 = sr_now();
    int rc = parse_list("--dump-positions", a->dump_positions, 0, in->n_ids - 1, &pos, &np);
    if (rc) return rc;
    FILE *f = fopen(a->dump, "wb");
    if (!f) {
        free(pos);
        return sr_error_set(SR_EIO, "--dump-logits: cannot create '%s': %s", a->dump, strerror(errno));
    }
    for (int64_t i = 0; i < np && rc == SR_OK; i++) {
        if (pos[i] < done) {
            rc = sr_error_set(SR_EINVAL, "--dump-positions: %lld must be above the position before it (%lld)",
                              (long long)pos[i], (long long)done - 1);
            break;
        }
        if ((rc = sr_model_forward(in->m, in->ids + done, pos[i] + 1 - done, done))) break;
        done = pos[i] + 1;
        size_t v = (size_t)in->m->config.vocab_size;
        if (fwrite(in->m->state.logits, sizeof(float), v, f) != v)
            rc = sr_error_set(SR_EIO, "--dump-logits: cannot write '%s'", a->dump);
    }
    if (fclose(f) != 0 && rc == SR_OK) rc = sr_error_set(SR_EIO, "--dump-logits: cannot write '%s'", a->dump);
    free(pos);
    if (rc == SR_OK) fprintf(stderr, "starring-run: dumped logits in %.2f s\n", sr_now() - t0);
    return rc;
}

/* --plan-docs: the planner's view of a batch, one line per server. */
static int print_plan(const run_args *a) {
    int64_t *docs = NULL, n = 0;
    sr_model *m = NULL;
    sr_model_opts mo = {.n_threads = 1, .max_batch = 1};
    int rc = parse_list("--plan-docs", a->plan_docs, 1, MAX_CONTEXT, &docs, &n);
    if (rc == SR_OK) rc = sr_model_load(&m, a->model, &mo);
    sr_cad_plan p = {0};
    if (rc == SR_OK) {
        sr_cad_cost cost = sr_cad_cost_of(m->config.n_head, m->config.n_head_kv, m->config.head_dim);
        rc = sr_cad_plan_build(&p, docs, n, a->block_size ? a->block_size : SR_CAD_DEFAULT_CHUNK,
                               (int)a->attn_servers, &cost);
    }
    if (rc == SR_OK) {
        int64_t tokens = 0, bytes = 0;
        for (int64_t d = 0; d < n; d++) tokens += docs[d];
        for (int s = 0; s < p.n_servers; s++) bytes += p.bytes[s];
        printf("cad plan: %lld documents, %lld tokens, %d servers, chunk %lld (%lld chunks, %s), imbalance %.4f, "
               "%.3f MiB per layer, %.6f bytes/FLOP\n", (long long)n, (long long)tokens, p.n_servers, (long long)p.chunk,
               (long long)p.n_chunks, p.head_tail ? "head-tail" : "contiguous", p.imbalance, bytes / 1048576.0,
               p.bytes_per_flop);
        for (int s = 0; s < p.n_servers; s++)
            printf("cad plan server %d: %.4f GFLOP, %.3f MiB per layer\n", s, p.flops[s] * 1e-9, p.bytes[s] / 1048576.0);
    }
    sr_cad_plan_free(&p);
    sr_model_free(m);
    free(docs);
    return rc;
}

/* Rank 0: the attention servers' figures, and the plan's imbalance against
 * the measured one (max / mean busy time). */
static int report_cad(sr_cp *cp) {
    sr_cad *cad = sr_cp_cad(cp);
    int k = sr_cad_servers(cad);
    sr_cad_server_stats *ss = calloc((size_t)k, sizeof *ss);
    if (!ss) return sr_error_set(SR_ENOMEM, "out of memory");
    int rc = sr_cad_server_stats_get(cad, ss);
    if (rc == SR_OK) {
        sr_cad_stats ws;
        sr_cad_get_stats(cad, &ws);
        double busy = 0, most = 0;
        int64_t bytes = 0;
        for (int s = 0; s < k; s++) {
            busy += ss[s].busy_s;
            if (ss[s].busy_s > most) most = ss[s].busy_s;
            bytes += ss[s].bytes_recv + ss[s].bytes_sent;
        }
        fprintf(stderr, "starring-run: cad: %d attention servers, plan chunk %lld, plan imbalance %.3f, measured "
                "imbalance %.3f (max/mean busy), %.2f MiB moved, query worker waited %.3f s in prefill\n", k,
                (long long)ws.plan_chunk, ws.plan_imbalance, busy > 0 ? most / (busy / k) : 0.0, bytes / 1048576.0,
                ws.wait_s);
        for (int s = 0; s < k; s++)
            fprintf(stderr, "starring-run: attention server %d: kv %lld tokens, %.2f MiB, busy %.3f s, waited %.3f s, "
                    "%lld answers, received %.2f MiB, sent %.2f MiB\n", s, (long long)ss[s].kv_tokens,
                    ss[s].kv_bytes / 1048576.0, ss[s].busy_s, ss[s].wait_s, (long long)ss[s].tasks,
                    ss[s].bytes_recv / 1048576.0, ss[s].bytes_sent / 1048576.0);
    }
    free(ss);
    return rc;
}

/* The timing lines of rank 0 (every rank's figures gathered first). */
static int report(sr_cp *cp, const run_inputs *in, const char *transport, const sr_gen_stats *g) {
    const sr_cp_opts *co = &in->co;
    int64_t n_ctx = in->n_ids;
    int w = sr_cp_world(cp);
    sr_cp_rank_info *all = calloc((size_t)w, sizeof *all);
    if (!all) return sr_error_set(SR_ENOMEM, "out of memory");
    int rc = sr_cp_gather(cp, all);
    if (rc == SR_OK && sr_cp_is_query_rank(cp)) {
        double t_pre = all[0].t_prefill, t_first = t_pre + g->t_prompt;
        int64_t n_prompt = n_ctx + g->n_prompt;
        double t_prompt = t_first > 0 ? t_first : 1e-9, t_dec = g->t_decode > 0 ? g->t_decode : 1e-9;
        size_t kv = 0;
        for (int p = 0; p < w; p++) kv += (size_t)all[p].kv_bytes;
        /* the summary line first, as the single-process runtime prints it */
        fprintf(stderr,
                "starring-run: prompt %lld tokens in %.3f s (%.1f tok/s), generated %lld tokens in %.3f s "
                "(%.1f tok/s), kv %.1f MiB, %d threads\n",
                (long long)n_prompt, t_first, n_prompt / t_prompt, (long long)g->n_gen, g->t_decode,
                g->n_decode / t_dec, kv / 1048576.0, in->mo.n_threads);
        fprintf(stderr, "starring-run: mode %s, %d worker%s, transport %s", sr_cp_mode_name(co->mode), w,
                w == 1 ? "" : "s", co->mode == SR_CP_FULL ? "none" : transport);
        if (co->mode == SR_CP_STAR) {
            sr_cp_stats cs; /* the sizes used, defaults resolved */
            sr_cp_get_stats(cp, &cs);
            fprintf(stderr, ", block %lld, anchor %lld", (long long)cs.block_size, (long long)cs.anchor_size);
        }
        fputc('\n', stderr);
        fprintf(stderr, "starring-run: prefill %lld tokens in %.3f s (%.1f tok/s)\n", (long long)n_ctx, t_pre,
                n_ctx / (t_pre > 0 ? t_pre : 1e-9));
        fprintf(stderr, "starring-run: time to first token %.3f s (question %lld tokens in %.3f s)\n", t_first,
                (long long)g->n_prompt, g->t_prompt);
        fprintf(stderr, "starring-run: decode %lld tokens in %.3f s (%.2f tok/s, %.2f ms/token), %.1f messages/token\n",
                (long long)g->n_decode, g->t_decode, g->n_decode / t_dec,
                g->n_decode ? 1e3 * g->t_decode / g->n_decode : 0.0,
                all[0].n_steps ? (double)all[0].messages / all[0].n_steps : 0.0);
        if (co->mode == SR_CP_CAD) rc = report_cad(cp);
        for (int p = 0; p < w; p++)
            fprintf(stderr,
                    "starring-run: worker %d: kv %lld tokens, %.2f MiB, peak rss %.1f MiB, prefill %.3f s, "
                    "ring attention %.3f s, ring wait %.3f s, ring sent %.1f MiB, query attention %.3f s, "
                    "query comm %.3f s\n",
                    p, (long long)all[p].kv_tokens, all[p].kv_bytes / 1048576.0, all[p].peak_rss / 1048576.0,
                    all[p].t_prefill, all[p].ring_compute_s, all[p].ring_wait_s, all[p].ring_bytes_sent / 1048576.0,
                    all[p].query_compute_s, all[p].query_comm_s);
    }
    free(all);
    return rc;
}

/* Prefills the context over the ranks and generates after the question. */
/* Between the prefill's chunks (every rank): rank 0 draws the bar. */
static int show_progress(void *data, int64_t done, int64_t total) {
    if (data) sr_progress_show(data, done, total);
    return 0;
}

static int generate(const run_args *a, run_inputs *in, sr_tp *tp, int rank) {
    /* ring holds every local row in one batch */
    int64_t rows = sr_cp_batch_rows(&in->co, in->n_ids, tp ? sr_tp_size(tp) : 1);
    int rc = SR_OK;
    if (rows > in->m->state.max_batch) {
        sr_model_free(in->m);
        in->m = NULL;
        in->mo.max_batch = rows;
        if ((rc = sr_model_load(&in->m, a->model, &in->mo))) return rc;
    }
    /* a progress bar when rank 0's stderr is a terminal (the hook is
     * collective: every rank learns whether it is set) */
    sr_progress bar;
    sr_progress_init(&bar, "starring-run", "prefill", 0);
    /* (not in cad mode: the attention servers, serving already, take no part) */
    int32_t tty = rank == 0 && bar.tty && in->co.mode != SR_CP_CAD;
    if (tp && in->co.mode != SR_CP_CAD && (rc = sr_tp_bcast(tp, &tty, sizeof tty, 0))) return rc;
    if (tty) {
        in->co.between = show_progress;
        in->co.between_data = rank == 0 ? &bar : NULL;
    }
    sr_cp *cp = NULL;
    sr_gen_stats st = {0};
    if ((rc = sr_cp_open(&cp, in->m, tp, &in->co))) return rc;
    rc = sr_cp_prefill(cp, in->ids, in->n_ids);
    if (rc == SR_OK && bar.shown) sr_progress_show(&bar, in->n_ids, in->n_ids);
    if (rc == SR_OK) rc = sr_cp_generate(cp, in->tok, in->question, in->n_question, &in->gp, emit_stdout, NULL, &st);
    if (rc == SR_OK && rank == 0) {
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (rc == SR_OK) rc = report(cp, in, a->transport, &st);
    sr_cp_close(cp);
    return rc;
}

int main(int argc, char **argv) {
    run_args a;
    int help, world = job_size();
    int rc = read_args(argc, argv, &a, &help);
    if (rc == SR_OK && help) {
        print_usage(stdout);
        return 0;
    }
    if (rc == SR_OK) rc = check_args(&a, world);
    if (rc) {
        fprintf(stderr, "starring-run: %s (see --help)\n", sr_error_msg());
        return 2;
    }
    if (a.plan_docs) {
        if ((rc = print_plan(&a)) != SR_OK) fprintf(stderr, "starring-run: %s\n", sr_error_msg());
        return rc ? 1 : 0;
    }
    /* a transport when sharding, or when ranks of a job must agree even in full mode */
    /* ucx exchanges its worker addresses over MPI under starring-run */
    int sharded = run_mode(&a, world) != SR_CP_FULL || world > 1,
        use_mpi = sharded && (strcmp(a.transport, "mpi") == 0 || strcmp(a.transport, "ucx") == 0);
    sr_tp *tp = NULL;
    rc = use_mpi ? sr_tp_mpi_init(&argc, &argv) : SR_OK;
    if (rc == SR_OK && sharded) rc = sr_tp_open(&tp, a.transport, NULL);
    int rank = tp ? sr_tp_rank(tp) : 0;
    sr_log_init("run", tp ? rank : -1, SR_LOG_WARN);

    run_inputs in = {0};
    /* an attention server loads nothing: the model workers send the shapes */
    int server = tp && a.attn_servers > 0 && sr_cad_is_server(rank, sr_tp_size(tp), (int)a.attn_servers);
    if (rc == SR_OK && server) rc = sr_cad_serve(tp, (int)a.attn_servers, 0, (int)a.threads);
    else if (rc == SR_OK) rc = build_inputs(&a, tp ? sr_tp_size(tp) - (int)a.attn_servers : 1, rank, &in);
    if (rc == SR_OK && !server) rc = a.dump ? dump_logits(&a, &in) : generate(&a, &in, tp, rank);
    if (rc) fprintf(stderr, "starring-run: rank %d: %s\n", rank, sr_error_msg());
    free_inputs(&in);
    sr_tp_close(tp);
    if (use_mpi) {
        /* a failed rank ends the job rather than leaving the others waiting */
        if (rc) MPI_Abort(MPI_COMM_WORLD, 1);
        MPI_Finalize();
    }
    return rc ? 1 : 0;
}
