/* starring-bench model: a GGUF model's speed on CPU, measured the way
 * llama-bench measures it. Prompt processing is a batched prefill of a fixed
 * token sequence into an empty cache (512 and 4096 tokens); generation is one
 * forward per token with the logits' argmax fed back (at depth 0, after a
 * 1-token prompt, and after the 4096-token prompt). Rates are tokens per
 * second of sr_model_forward, median of repeats.
 *
 * Every run is checked: the logits are finite, greedy decode gives the same
 * tokens on every repeat as on the warm-up, and a batched prefill of the
 * depth-0 generated sequence gives the same last logits as decoding it one
 * token at a time. llama.cpp's figures quoted in issue 3 stand beside ours
 * for scale; they are not measured here (scripts/bench-peer measures them).
 *
 * A generated token reads every weight matrix once and, at depth, the whole
 * KV cache: its ceiling is the read bandwidth (measured just before each
 * generation row) over those bytes.
 *
 * Batched decode (section batch) is a serving step of many requests: B
 * sequences, each after a one-token prompt of its own and with a cache of
 * its own, decoded together by sr_model_forward_batch, which reads the
 * weights once for all of them. Rate: the tokens of all B per second, beside
 * B = 1's (the ratio is the figure to watch). Checked: every sequence's
 * greedy tokens equal those of the same sequence in the largest batch (a row
 * does not depend on the rows batched with it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/status.h"
#include "bench/ceiling.h"
#include "bench/commands.h"
#include "bench/harness.h"
#include "gguf/gguf.h"
#include "model/model.h"

#define GEN_TOKENS 64
#define GEN_TOKENS_QUICK 8
#define QUICK_TOKENS 64    /* --quick: prompt length and generation depth */
#define LONG_RUN_S 2.0     /* as srb_time: a warm-up this long is steady state */
#define MAX_SAMPLES 64
#define BATCH_STEPS 16      /* decode steps a batch run times */
#define BATCH_STEPS_QUICK 2
#define BATCH_MAX 16        /* the largest batch, sequences */

/* Batched prefill against token-by-token decode: the same math through the
 * matrix-matrix and matrix-vector paths, so only rounding may differ. The
 * tolerance is on logits, whose range is tens: far above rounding, far below
 * a wrong row or position. */
#define LOGIT_ATOL 2e-2
#define LOGIT_RTOL 1e-2

/* llama.cpp (a March 2026 build, CPU, 2 threads) on a machine of this kind,
 * on a SmolLM2-135M-shaped Q4_1 model, in tok/s: issue 3's figures. They are
 * shown only for a model of that shape. */
#define REF_PROMPT_512 291.0
#define REF_PROMPT_4096 209.0
#define REF_GEN_0 116.0
#define REF_GEN_4096 38.0

/* One measurement: prefill `prompt` tokens into an empty cache, then generate
 * `gen` tokens one forward each. Gives a prompt row when the prefill is the
 * subject and a generation row when gen > 0. */
typedef struct {
    int64_t prompt;
    int prompt_row;
    int gen;
    double ref_prompt, ref_gen; /* llama.cpp's tok/s, NAN where there is none */
} bench_case;

typedef struct {
    sr_model *m;
    const srb_opts *o;
    srb_report *r;
    const int32_t *tokens; /* (longest prompt) the fixed prompt */
    int32_t *first;        /* (gen + 1) the warm-up's greedy tokens */
    int32_t *now;          /* (gen + 1) the current run's */
    float *decoded;        /* (vocab) logits of the last decode step */
    const char *kv;        /* K/V dtype name */
    double weight_bytes;   /* the matrices a token reads, bytes */
    double kv_token_bytes; /* K and V of one position in every layer, bytes */
} bench_ctx;

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static const char *dtype_name(int dt) {
    return dt == SR_DT_F16 ? "f16" : dt == SR_DT_BF16 ? "bf16" : "f32";
}

/* Greedy sampling: the first index of the largest logit; counts non-finite
 * logits into *bad (they never win). */
static int32_t argmax(const float *x, int n, int64_t *bad) {
    int32_t best = 0;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i])) (*bad)++;
        else if (x[i] > bv) bv = x[i], best = i;
    }
    return best;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *s, int n) {
    qsort(s, (size_t)n, sizeof s[0], cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* One run of case c: the greedy tokens go to out[0 .. gen] (out[0] from the
 * prompt's logits); non-finite logits are counted into bad[0] (the prompt's)
 * and bad[1] (the generated tokens'). */
static int run_once(bench_ctx *x, const bench_case *c, int32_t *out, double *prompt_s,
                    double *gen_s, int64_t bad[2]) {
    sr_model *m = x->m;
    int vocab = m->config.vocab_size;
    sr_model_reset(m);
    double t0 = sr_now();
    int rc = sr_model_forward(m, x->tokens, c->prompt, 0);
    if (rc < 0) return rc;
    *prompt_s = sr_now() - t0;
    out[0] = argmax(m->state.logits, vocab, &bad[0]);
    t0 = sr_now();
    for (int i = 0; i < c->gen; i++) {
        rc = sr_model_forward(m, &out[i], 1, c->prompt + i);
        if (rc < 0) return rc;
        out[i + 1] = argmax(m->state.logits, vocab, &bad[1]);
    }
    *gen_s = sr_now() - t0;
    return SR_OK;
}

/* Prefills the prompt and the generated tokens but the last in one batch and
 * counts the logits that differ from the last decode step's (x->decoded). */
static int check_batched(bench_ctx *x, const bench_case *c, int64_t *wrong) {
    sr_model *m = x->m;
    int64_t n = c->prompt + c->gen;
    int32_t *seq = malloc((size_t)n * sizeof *seq);
    if (!seq) return sr_error_set(SR_ENOMEM, "bench model: out of memory");
    memcpy(seq, x->tokens, (size_t)c->prompt * sizeof *seq);
    memcpy(seq + c->prompt, x->first, (size_t)c->gen * sizeof *seq);
    sr_model_reset(m);
    int rc = sr_model_forward(m, seq, n, 0);
    free(seq);
    if (rc < 0) return rc;
    for (int i = 0; i < m->config.vocab_size; i++) {
        double a = m->state.logits[i], b = x->decoded[i];
        if (!(fabs(a - b) <= LOGIT_ATOL + LOGIT_RTOL * fabs(b))) (*wrong)++;
    }
    return SR_OK;
}

static double matrix_bytes(const sr_matmul_weight *w) {
    return (double)sr_ggml_row_bytes(w->type, w->k) * (double)w->m;
}

/* Bytes a decode step reads from the weights: every layer's matrices and
 * the output matrix (the norms are noise beside them). */
static double token_weight_bytes(const sr_model *m) {
    double b = matrix_bytes(&m->weights.output);
    for (int l = 0; l < m->config.n_layer; l++) {
        const struct sr_model_layer_weights *L = &m->weights.layers[l];
        b += matrix_bytes(&L->wq) + matrix_bytes(&L->wk) + matrix_bytes(&L->wv) + matrix_bytes(&L->wo) +
             matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) + matrix_bytes(&L->w_down);
    }
    return b;
}

/* base_samples 0: ref is a quoted figure, not measured here */
static int add_row(bench_ctx *x, const char *section, const char *name, double median_s,
                   int samples, double work, double ref, int base_samples, double ceil_rate, int64_t wrong) {
    srb_row row;
    memset(&row, 0, sizeof row);
    snprintf(row.section, sizeof row.section, "%s", section);
    snprintf(row.name, sizeof row.name, "%s", name);
    snprintf(row.kv, sizeof row.kv, "%s", x->kv);
    row.unit = "tok/s";
    row.t.median_s = median_s;
    row.t.samples = samples;
    row.rate = work / median_s;
    row.base_rate = ref;
    row.base_samples = base_samples;
    row.vs_base = row.rate / ref;
    row.vs_ceil = row.rate / ceil_rate;
    row.wrong = wrong;
    return srb_report_row(x->r, &row);
}

/* Warm-up, then repeats within the budget (srb_time's rule, with the prompt
 * and the generation of a run timed apart); then the rows. */
static int run_case(bench_ctx *x, const bench_case *c) {
    const srb_opts *o = x->o;
    int want_prompt = c->prompt_row && (!o->only || !strcmp(o->only, "prompt"));
    int want_gen = c->gen > 0 && (!o->only || !strcmp(o->only, "generate"));
    if (!want_prompt && !want_gen) return SR_OK;
    if (o->max_n && c->prompt + c->gen > o->max_n) return SR_OK;
    double ps[MAX_SAMPLES], gs[MAX_SAMPLES], p, g;
    int n = 0;
    /* [0]: the prompt row's, [1]: the generation row's */
    int64_t bad[2] = {0, 0}, diff[2] = {0, 0};
    int rc = run_once(x, c, x->first, &p, &g, bad);
    if (rc < 0) return rc;
    if (p + g >= LONG_RUN_S) ps[n] = p, gs[n] = g, n++;
    double spent = 0.0, last = p + g;
    while (n < o->repeats && n < MAX_SAMPLES && (n == 0 || spent + last <= o->budget_s)) {
        rc = run_once(x, c, x->now, &p, &g, bad);
        if (rc < 0) return rc;
        for (int i = 0; i <= c->gen; i++) diff[i > 0] += x->now[i] != x->first[i];
        last = p + g;
        spent += last;
        ps[n] = p, gs[n] = g, n++;
    }
    char name[48];
    if (want_prompt) {
        snprintf(name, sizeof name, "prefill %lld tokens", (long long)c->prompt);
        rc = add_row(x, "prompt", name, median(ps, n), n, (double)c->prompt, c->ref_prompt, 0, NAN,
                     bad[0] + diff[0]);
        if (rc < 0) return rc;
    }
    if (!want_gen) return SR_OK;
    /* the last run's last logits, before check_batched overwrites them */
    memcpy(x->decoded, x->m->state.logits, (size_t)x->m->config.vocab_size * sizeof(float));
    int64_t wrong = bad[1] + diff[1];
    /* a prefill of 4k tokens more costs as much as a repeat: depth 0 only */
    if (c->prompt == 1) rc = check_batched(x, c, &wrong);
    if (rc < 0) return rc;
    /* a 1-token prompt only gives the first logits: depth 0 */
    int64_t depth = c->prompt == 1 ? 0 : c->prompt;
    /* the read bandwidth now, next to the row: a shared machine's drifts */
    srb_ceilings ceil;
    memset(&ceil, 0, sizeof ceil);
    if ((rc = srb_ceiling_memory(o, &ceil)) < 0) return rc;
    /* the mean depth over the generated tokens */
    double bytes = x->weight_bytes + x->kv_token_bytes * ((double)depth + 0.5 * c->gen);
    double ceil_rate = ceil.read_gbs * 1e9 / bytes;
    snprintf(name, sizeof name, "decode %d tokens at depth %lld", c->gen, (long long)depth);
    rc = add_row(x, "generate", name, median(gs, n), n, (double)c->gen, c->ref_gen, 0, ceil_rate, wrong);
    if (rc < 0) return rc;
    snprintf(name, sizeof name, "read_gbs_depth_%lld", (long long)depth);
    if ((rc = srb_report_fact_num(x->r, name, ceil.read_gbs)) < 0) return rc;
    snprintf(name, sizeof name, "ceiling_tok_s_depth_%lld", (long long)depth);
    return srb_report_fact_num(x->r, name, ceil_rate);
}

/* Batched decode: the caches of BATCH_MAX sequences, and the greedy tokens
 * of a run, sequence i's at tok[i * (steps + 2) ..]: its prompt, then one a
 * step (the prompt's step is not timed). */
typedef struct {
    sr_kv_cache kv[BATCH_MAX];
    int steps;
    float *logits; /* (BATCH_MAX, vocab) */
} batch_ctx;

static int batch_once(bench_ctx *x, batch_ctx *b, int n_seq, int32_t *tok, double *s, int64_t *bad) {
    sr_model *m = x->m;
    const int vocab = m->config.vocab_size, stride = b->steps + 2;
    sr_model_seq seqs[BATCH_MAX];
    for (int i = 0; i < n_seq; i++) {
        sr_kv_clear(&b->kv[i]);
        tok[i * stride] = x->tokens[i];
    }
    double t0 = 0.0;
    for (int step = 0; step <= b->steps; step++) {
        if (step == 1) t0 = sr_now();
        for (int i = 0; i < n_seq; i++) seqs[i] = (sr_model_seq){&b->kv[i], &tok[i * stride + step], 1};
        int rc = sr_model_forward_batch(m, seqs, n_seq, b->logits);
        if (rc < 0) return rc;
        for (int i = 0; i < n_seq; i++) tok[i * stride + step + 1] = argmax(b->logits + (int64_t)i * vocab, vocab, bad);
    }
    *s = sr_now() - t0;
    return SR_OK;
}

/* Sequences 0 .. n_seq-1's tokens in `tok` that differ from `ref`'s. */
static int64_t batch_diff(const batch_ctx *b, int n_seq, const int32_t *tok, const int32_t *ref) {
    int64_t d = 0;
    for (int64_t i = 0; i < (int64_t)n_seq * (b->steps + 2); i++) d += tok[i] != ref[i];
    return d;
}

/* The largest batch first, so that its tokens are the reference of the
 * others; the rows go out from B = 1 up, each with B = 1 as its base. */
static int run_batch(bench_ctx *x) {
    const srb_opts *o = x->o;
    static const int sizes[] = {1, 2, 4, 8, BATCH_MAX};
    int n_sizes = o->quick ? 3 : (int)(sizeof sizes / sizeof sizes[0]);
    while (n_sizes > 1 && o->max_n && sizes[n_sizes - 1] > o->max_n) n_sizes--;
    const sr_kv_cache *k = &x->m->kv;
    batch_ctx b = {.steps = o->quick ? BATCH_STEPS_QUICK : BATCH_STEPS};
    const size_t per_run = (size_t)BATCH_MAX * (size_t)(b.steps + 2);
    int32_t *ref = malloc(per_run * sizeof *ref), *tok = malloc(per_run * sizeof *tok);
    b.logits = malloc((size_t)BATCH_MAX * (size_t)x->m->config.vocab_size * sizeof *b.logits);
    int rc = ref && tok && b.logits ? SR_OK : sr_error_set(SR_ENOMEM, "bench model: out of memory");
    int built = 0;
    while (built < BATCH_MAX && rc == SR_OK)
        if ((rc = sr_kv_build(&b.kv[built], k->n_layer, k->n_head_kv, k->head_dim, k->dtype, k->block_size)) == SR_OK)
            built++;
    double med[sizeof sizes / sizeof sizes[0]];
    int samples[sizeof sizes / sizeof sizes[0]];
    int64_t wrong[sizeof sizes / sizeof sizes[0]];
    for (int z = n_sizes - 1; z >= 0 && rc == SR_OK; z--) {
        double ts[MAX_SAMPLES], t;
        int n = 0;
        wrong[z] = 0;
        /* the warm-up: the reference's tokens for the largest batch */
        rc = batch_once(x, &b, sizes[z], z == n_sizes - 1 ? ref : tok, &t, &wrong[z]);
        if (rc == SR_OK && z < n_sizes - 1) wrong[z] += batch_diff(&b, sizes[z], tok, ref);
        if (t >= LONG_RUN_S) ts[n++] = t;
        double spent = 0.0, last = t;
        while (rc == SR_OK && n < o->repeats && n < MAX_SAMPLES && (n == 0 || spent + last <= o->budget_s)) {
            if ((rc = batch_once(x, &b, sizes[z], tok, &t, &wrong[z])) < 0) break;
            wrong[z] += batch_diff(&b, sizes[z], tok, ref);
            last = t;
            spent += t;
            ts[n++] = t;
        }
        med[z] = n > 0 ? median(ts, n) : NAN;
        samples[z] = n;
    }
    for (int z = 0; z < n_sizes && rc == SR_OK; z++) {
        char name[48];
        snprintf(name, sizeof name, "decode %d sequences x %d steps", sizes[z], b.steps);
        rc = add_row(x, "batch", name, med[z], samples[z], (double)sizes[z] * b.steps,
                     (double)b.steps / med[0], samples[0], NAN, wrong[z]);
    }
    for (int i = 0; i < built; i++) sr_kv_free(&b.kv[i]);
    free(ref), free(tok), free(b.logits);
    return rc;
}

/* "q4_1 x169, f32 x61, q6_k x1": tensor counts by type, most common first */
static void type_counts(const sr_gguf *g, char *buf, size_t cap) {
    enum { N_TYPES = 64 };
    uint64_t count[N_TYPES + 1] = {0}; /* the last: types beyond the table */
    for (uint64_t i = 0; i < g->n_tensors; i++)
        count[g->tensors[i].type < N_TYPES ? g->tensors[i].type : N_TYPES]++;
    size_t len = 0;
    buf[0] = '\0';
    for (;;) {
        int best = -1;
        for (int t = 0; t <= N_TYPES; t++)
            if (count[t] && (best < 0 || count[t] > count[best])) best = t;
        if (best < 0 || len >= cap) break;
        int w = snprintf(buf + len, cap - len, "%s%s x%llu", len ? ", " : "",
                         best < N_TYPES ? sr_ggml_type_name((uint32_t)best) : "other",
                         (unsigned long long)count[best]);
        if (w < 0) break;
        len += (size_t)w;
        count[best] = 0;
    }
}

static int is_smollm2_135m(const sr_model_config *c) {
    return c->arch == SR_MODEL_ARCH_LLAMA && c->n_layer == 30 && c->dim == 576 && c->n_head == 9 &&
           c->n_head_kv == 3 && c->hidden_dim == 1536 && c->vocab_size == 49152;
}

static int report_model(srb_report *r, const sr_model *m, const char *path) {
    const sr_model_config *c = &m->config;
    sr_gguf_str name;
    char buf[128];
    if (sr_gguf_find(m->gguf, "general.name") && sr_gguf_get_str(m->gguf, "general.name", &name) == SR_OK)
        snprintf(buf, sizeof buf, "%.*s (%s)", (int)(name.len > 80 ? 80 : name.len), name.ptr,
                 c->arch == SR_MODEL_ARCH_QWEN2 ? "qwen2" : "llama");
    else
        snprintf(buf, sizeof buf, "%s", path);
    int rc = srb_report_fact_str(r, "model", buf);
    snprintf(buf, sizeof buf, "%d layers, dim %d, heads %d/%d x %d, ffn %d, vocab %d", c->n_layer,
             c->dim, c->n_head, c->n_head_kv, c->head_dim, c->hidden_dim, c->vocab_size);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "shape", buf);
    type_counts(m->gguf, buf, sizeof buf);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "tensor_types", buf);
    return rc;
}

static int bench_model(const char *path, const srb_opts *o, srb_report *r) {
    sr_model_opts mo = {.n_threads = o->threads, .kv_dtype = SR_DT_F16, .block_size = 0,
                        .max_batch = 0};
    sr_model *m = NULL;
    int rc = sr_model_load(&m, path, &mo);
    if (rc < 0) return rc;
    int gen = o->quick ? GEN_TOKENS_QUICK : GEN_TOKENS;
    int ref = !o->quick && is_smollm2_135m(&m->config);
    bench_case cases[3];
    int n_cases;
    if (o->quick) {
        cases[0] = (bench_case){1, 0, gen, NAN, NAN};
        cases[1] = (bench_case){QUICK_TOKENS, 1, gen, NAN, NAN};
        n_cases = 2;
    } else {
        cases[0] = (bench_case){512, 1, 0, ref ? REF_PROMPT_512 : NAN, NAN};
        cases[1] = (bench_case){1, 0, gen, NAN, ref ? REF_GEN_0 : NAN};
        cases[2] = (bench_case){4096, 1, gen, ref ? REF_PROMPT_4096 : NAN, ref ? REF_GEN_4096 : NAN};
        n_cases = 3;
    }
    int64_t longest = o->quick ? QUICK_TOKENS : 4096;
    bench_ctx x = {.m = m, .o = o, .r = r, .kv = dtype_name(m->kv.dtype)};
    x.weight_bytes = token_weight_bytes(m);
    x.kv_token_bytes = 2.0 * m->config.n_layer * m->config.n_head_kv * m->config.head_dim *
                       (m->kv.dtype == SR_DT_F32 ? 4.0 : 2.0);
    int32_t *tokens = malloc((size_t)longest * sizeof *tokens);
    x.first = malloc((size_t)(gen + 1) * sizeof *x.first);
    x.now = malloc((size_t)(gen + 1) * sizeof *x.now);
    x.decoded = malloc((size_t)m->config.vocab_size * sizeof *x.decoded);
    if (!tokens || !x.first || !x.now || !x.decoded)
        rc = sr_error_set(SR_ENOMEM, "bench model: out of memory");
    if (rc == SR_OK) {
        /* a fixed pseudo-random prompt of valid ids: the speed does not
         * depend on the text, and the same prompt makes runs comparable */
        for (int64_t i = 0; i < longest; i++)
            tokens[i] = (int32_t)(mix64((uint64_t)i) % (uint64_t)m->config.vocab_size);
        x.tokens = tokens;
        rc = report_model(r, m, path);
    }
    if (rc == SR_OK) rc = srb_report_fact_num(r, "threads", o->threads);
    if (rc == SR_OK) rc = srb_report_fact_str(r, "kv_dtype", x.kv);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "token_weight_mb", x.weight_bytes * 1e-6);
    if (rc == SR_OK) rc = srb_report_fact_num(r, "token_kv_mb_per_1k_depth", x.kv_token_bytes * 1024 * 1e-6);
    if (rc == SR_OK)
        rc = srb_report_fact_str(r, "base_rate_source",
                                 ref ? "llama.cpp, CPU, 2 threads, SmolLM2-135M-shaped Q4_1: "
                                       "reference figures from the issue, not measured here"
                                     : "none (the issue's llama.cpp figures are for "
                                       "SmolLM2-135M's shape, without --quick)");
    for (int i = 0; i < n_cases && rc == SR_OK; i++) rc = run_case(&x, &cases[i]);
    if (rc == SR_OK && (!o->only || !strcmp(o->only, "batch"))) rc = run_batch(&x);
    free(tokens), free(x.first), free(x.now), free(x.decoded);
    sr_model_free(m);
    return rc;
}

int srb_cmd_model(int argc, char **argv) {
    /* -m MODEL is ours; the rest are the shared options */
    char **rest = malloc((size_t)argc * sizeof *rest);
    if (!rest) {
        fprintf(stderr, "starring-bench model: out of memory\n");
        return 1;
    }
    const char *path = NULL;
    int n_rest = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model"))) {
            if (i + 1 >= argc) {
                fprintf(stderr, "starring-bench model: %s wants a GGUF file\n", argv[i]);
                free(rest);
                return 2;
            }
            path = argv[++i];
        } else {
            rest[n_rest++] = argv[i];
        }
    }
    srb_opts o;
    int rc = srb_opts_parse(
        n_rest, rest, "model -m MODEL",
        "A GGUF model on CPU: prompt tokens/s (batched prefill of 512 and 4096 tokens into an\n"
        "empty cache) and generated tokens/s (greedy, one token per forward, at depth 0 and\n"
        "after the 4096-token prompt) against the read-bandwidth ceiling (the weights and the\n"
        "KV a token reads), and batched decode: 1, 2, 4, 8, 16 sequences of their own caches\n"
        "decoded together, tokens/s of all of them against one alone; --quick: 64 tokens, 8\n"
        "generated, batches up to 4. Sections: prompt, generate, batch. -m MODEL (required):\n"
        "the GGUF file (scripts/fetch-model prints SmolLM2's). Every run is checked (finite\n"
        "logits, the same greedy tokens on every repeat, batched prefill agreeing with decode,\n"
        "each sequence of a batch giving its tokens in the largest batch); exit status 1 if\n"
        "anything is wrong.",
        &o);
    free(rest);
    if (rc != 0) return rc > 0 ? 0 : 2;
    if (!path) {
        fprintf(stderr, "starring-bench model: -m MODEL is required (a GGUF file; "
                        "scripts/fetch-model prints SmolLM2's path)\n");
        return 2;
    }
    if (o.only && strcmp(o.only, "prompt") && strcmp(o.only, "generate") && strcmp(o.only, "batch")) {
        fprintf(stderr, "starring-bench model: --only wants prompt, generate or batch, got '%s'\n", o.only);
        return 2;
    }
    srb_report *r = srb_report_new(&o);
    if (!r) {
        fprintf(stderr, "starring-bench model: out of memory\n");
        return 1;
    }
    rc = bench_model(path, &o, r);
    if (rc == SR_OK) rc = srb_report_finish(r);
    int64_t wrong = srb_report_wrong(r);
    srb_report_free(r);
    if (rc < 0) {
        fprintf(stderr, "starring-bench model: %s\n", sr_error_msg());
        return 1;
    }
    if (wrong > 0) {
        fprintf(stderr, "starring-bench model: %lld wrong (non-finite logits, greedy tokens that "
                        "changed between repeats, or prefill disagreeing with decode)\n",
                (long long)wrong);
        return 1;
    }
    return 0;
}
