/* starring-run: loads a GGUF model and generates from a prompt, printing the
 * text on stdout as it comes and timing lines on stderr. Under mpirun the
 * context (-f FILE) is prefilled across the ranks (--mode ring|star) and the
 * question (-p) answered over the sharded KV (worker/cp.h); rank 0 prints. */
#include <errno.h>
#include <getopt.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "worker/cp.h"
#include "model/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "transport/transport.h"

static const char *usage =
    "usage: starring-run -m MODEL (-p PROMPT | -f FILE | --ids \"1 2 3\") [options]\n"
    "  -m, --model FILE        GGUF model\n"
    "  -p, --prompt TEXT       prompt text; with -f, the question after the file's context\n"
    "  -f, --file FILE         read the prompt (the context) from FILE\n"
    "      --ids \"ID ...\"      feed these token ids as the prompt\n"
    "      --random-context N  benchmark hook: a context of N random token ids (seed --seed)\n"
    "  -n, --n-predict N       most tokens to generate (default 128)\n"
    "      --chat              wrap the prompt in the model's chat template\n"
    "      --system TEXT       system message with --chat\n"
    "      --temp T            temperature, 0 = greedy (default 0)\n"
    "      --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
    "      --top-p P           keep the most likely tokens up to mass P (default 0.95)\n"
    "      --repeat-penalty R  penalty on tokens of the last 64 (default 1 = off)\n"
    "      --seed S            random seed (default 0)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --kv-type T         KV cache type: f16 (default), bf16, or f32 (reference checks)\n"
    "      --block-size N      context block: tokens per KV cache block (default 256) and, in\n"
    "                          star mode, per placed block (default 1024)\n"
    "      --batch N           prompt tokens per forward pass (default 512)\n"
    "      --mode M            full, ring or star (default: full alone, star under mpirun)\n"
    "      --anchor-size N     star: anchor tokens (default: one block)\n"
    "      --transport T       mpi (default) or tcp\n"
    "      --stop STR          stop when the output contains STR\n"
    "      --dump-logits FILE  test hook: write float32 logits at --dump-positions of the\n"
    "                          prompt to FILE ([positions][vocab]) and exit\n"
    "      --dump-positions L  comma-separated prompt positions for --dump-logits\n"
    "  -h, --help              this help\n";

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return sr_error_set(SR_EIO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        char *b = realloc(buf, cap + 1);
        if (!b) free(buf);
        buf = b;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return sr_error_set(SR_ENOMEM, "out of memory reading '%s'", path);
    if (err) {
        free(buf);
        return sr_error_set(SR_EIO, "cannot read '%s'", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return SR_OK;
}

/* Parses "1 2 3" or "1,2,3" into a malloc'ed array. */
static int parse_list(const char *s, int64_t **out, int64_t *n) {
    size_t cap = 16;
    int64_t *a = malloc(cap * sizeof(*a));
    *n = 0;
    while (a && *s) {
        while (*s == ' ' || *s == ',' || *s == '\n' || *s == '\t') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno) {
            free(a);
            return sr_error_set(SR_EINVAL, "'%s' is not a list of integers", s);
        }
        if ((size_t)*n == cap) {
            cap *= 2;
            int64_t *b = realloc(a, cap * sizeof(*a));
            if (!b) free(a);
            a = b;
            if (!a) break;
        }
        a[(*n)++] = v;
        s = end;
    }
    if (!a) return sr_error_set(SR_ENOMEM, "out of memory");
    *out = a;
    return SR_OK;
}

/* Strict numbers: the whole argument must parse. */
static int num_i64(const char *arg, const char *opt, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end) {
        fprintf(stderr, "starring-run: %s wants an integer, not '%s'\n", opt, arg);
        return -1;
    }
    *out = v;
    return 0;
}

static int num_f32(const char *arg, const char *opt, float *out) {
    char *end;
    errno = 0;
    float v = strtof(arg, &end);
    if (errno || end == arg || *end) {
        fprintf(stderr, "starring-run: %s wants a number, not '%s'\n", opt, arg);
        return -1;
    }
    *out = v;
    return 0;
}

static int emit_stdout(void *data, const char *text, size_t len) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* Runs the prompt in pieces that end at each dump position and writes the
 * logits there. */
static int dump_logits(sr_model *m, const int32_t *ids, int64_t n, const char *path, const char *positions) {
    int64_t *pos, np;
    int rc = parse_list(positions, &pos, &np);
    if (rc) return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(pos);
        return sr_error_set(SR_EIO, "cannot create '%s': %s", path, strerror(errno));
    }
    int64_t done = 0;
    for (int64_t i = 0; i < np && rc == SR_OK; i++) {
        if (pos[i] < done || pos[i] >= n) {
            rc = sr_error_set(SR_EINVAL, "dump position %lld must increase and be below the prompt length %lld",
                              (long long)pos[i], (long long)n);
            break;
        }
        if ((rc = sr_model_forward(m, ids + done, pos[i] + 1 - done, done))) break;
        done = pos[i] + 1;
        size_t v = (size_t)m->config.vocab_size;
        if (fwrite(m->state.logits, sizeof(float), v, f) != v) rc = sr_error_set(SR_EIO, "cannot write '%s'", path);
    }
    if (fclose(f) != 0 && rc == SR_OK) rc = sr_error_set(SR_EIO, "cannot write '%s'", path);
    free(pos);
    return rc;
}

/* Ranks of the job from the launcher's environment (1 when alone). */
static int job_size(void) {
    static const char *names[] = {"SR_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

/* The timing lines of rank 0 (every rank's figures gathered first). */
static int report(sr_cp *cp, const sr_cp_opts *co, const sr_model_opts *mo, const char *transport, int64_t n_ctx,
                  const sr_gen_stats *g) {
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
                g->n_decode / t_dec, kv / 1048576.0, mo->n_threads);
        fprintf(stderr, "starring-run: mode %s, %d worker%s, transport %s", sr_cp_mode_name(co->mode), w,
                w == 1 ? "" : "s", co->mode == SR_CP_FULL ? "none" : transport);
        if (co->mode == SR_CP_STAR)
            fprintf(stderr, ", block %lld, anchor %lld", (long long)(co->block_size ? co->block_size : SR_CP_DEFAULT_BLOCK),
                    (long long)(co->anchor_size ? co->anchor_size : co->block_size ? co->block_size : SR_CP_DEFAULT_BLOCK));
        fputc('\n', stderr);
        fprintf(stderr, "starring-run: prefill %lld tokens in %.3f s (%.1f tok/s)\n", (long long)n_ctx, t_pre,
                n_ctx / (t_pre > 0 ? t_pre : 1e-9));
        fprintf(stderr, "starring-run: time to first token %.3f s (question %lld tokens in %.3f s)\n", t_first,
                (long long)g->n_prompt, g->t_prompt);
        fprintf(stderr, "starring-run: decode %lld tokens in %.3f s (%.2f tok/s, %.2f ms/token), %.1f messages/token\n",
                (long long)g->n_decode, g->t_decode, g->n_decode / t_dec,
                g->n_decode ? 1e3 * g->t_decode / g->n_decode : 0.0,
                all[0].n_steps ? (double)all[0].messages / all[0].n_steps : 0.0);
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

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *ids_arg = NULL, *sys_msg = NULL;
    const char *dump = NULL, *dump_pos = NULL, *transport = "mpi", *mode_arg = NULL;
    int chat = 0;
    int64_t random_ctx = 0;
    sr_gen_params gp = {.n_predict = 128, .sampling = sr_sampler_defaults(), .stop = NULL};
    sr_model_opts mo = {.n_threads = omp_get_max_threads(), .kv_dtype = SR_DT_F16, .block_size = 0, .max_batch = 0};
    sr_cp_opts co = {.mode = SR_CP_FULL, .block_size = 0, .anchor_size = 0, .tag = 0};
    enum { O_CHAT = 256, O_SYSTEM, O_TEMP, O_TOPK, O_TOPP, O_PEN, O_SEED, O_KV, O_BATCH, O_STOP, O_DUMP,
           O_DUMPPOS, O_IDS, O_MODE, O_BLOCK, O_ANCHOR, O_TRANSPORT, O_RANDOM };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},    {"n-predict", required_argument, 0, 'n'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {"chat", no_argument, 0, O_CHAT},       {"system", required_argument, 0, O_SYSTEM},
        {"temp", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"repeat-penalty", required_argument, 0, O_PEN},
        {"seed", required_argument, 0, O_SEED}, {"kv-type", required_argument, 0, O_KV},
        {"batch", required_argument, 0, O_BATCH},
        {"stop", required_argument, 0, O_STOP}, {"dump-logits", required_argument, 0, O_DUMP},
        {"dump-positions", required_argument, 0, O_DUMPPOS}, {"ids", required_argument, 0, O_IDS},
        {"mode", required_argument, 0, O_MODE}, {"block-size", required_argument, 0, O_BLOCK},
        {"anchor-size", required_argument, 0, O_ANCHOR}, {"transport", required_argument, 0, O_TRANSPORT},
        {"random-context", required_argument, 0, O_RANDOM},
        {0, 0, 0, 0},
    };
    int c, bad = 0;
    int64_t v;
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'n': bad |= num_i64(optarg, "-n", &gp.n_predict); break;
        case 't':
            bad |= num_i64(optarg, "--threads", &v);
            mo.n_threads = v > 0 && v <= 4096 ? (int)v : 0;
            break;
        case 'h': fputs(usage, stdout); return 0;
        case O_CHAT: chat = 1; break;
        case O_SYSTEM: sys_msg = optarg; break;
        case O_TEMP: bad |= num_f32(optarg, "--temp", &gp.sampling.temperature); break;
        case O_TOPK:
            bad |= num_i64(optarg, "--top-k", &v);
            gp.sampling.top_k = v >= 0 && v < (1 << 30) ? (int)v : -1;
            break;
        case O_TOPP: bad |= num_f32(optarg, "--top-p", &gp.sampling.top_p); break;
        case O_PEN: bad |= num_f32(optarg, "--repeat-penalty", &gp.sampling.repeat_penalty); break;
        case O_SEED:
            bad |= num_i64(optarg, "--seed", &v);
            gp.sampling.seed = (uint64_t)v;
            break;
        case O_KV:
            if (strcmp(optarg, "f16") == 0) mo.kv_dtype = SR_DT_F16;
            else if (strcmp(optarg, "bf16") == 0) mo.kv_dtype = SR_DT_BF16;
            else if (strcmp(optarg, "f32") == 0) mo.kv_dtype = SR_DT_F32;
            else { fprintf(stderr, "starring-run: --kv-type must be f16, bf16 or f32\n"); return 2; }
            break;
        case O_BATCH: bad |= num_i64(optarg, "--batch", &mo.max_batch); break;
        case O_STOP: gp.stop = optarg; break;
        case O_DUMP: dump = optarg; break;
        case O_DUMPPOS: dump_pos = optarg; break;
        case O_IDS: ids_arg = optarg; break;
        case O_MODE: mode_arg = optarg; break;
        case O_BLOCK:
            bad |= num_i64(optarg, "--block-size", &mo.block_size);
            co.block_size = mo.block_size;
            break;
        case O_ANCHOR: bad |= num_i64(optarg, "--anchor-size", &co.anchor_size); break;
        case O_TRANSPORT: transport = optarg; break;
        case O_RANDOM: bad |= num_i64(optarg, "--random-context", &random_ctx); break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (bad) return 2;
    int world = job_size();
    co.mode = mode_arg ? sr_cp_mode_parse(mode_arg) : world > 1 ? SR_CP_STAR : SR_CP_FULL;
    const char *why = !model_path                                           ? "-m MODEL is required"
                      : !prompt && !file && !ids_arg && random_ctx <= 0   ? "give a prompt: -p, -f or --ids"
                      : dump && !dump_pos                                 ? "--dump-logits needs --dump-positions"
                      : dump && world > 1                                 ? "--dump-logits runs in one process only"
                      : mo.n_threads <= 0                                 ? "--threads must be at least 1"
                      : gp.n_predict < 0                                  ? "-n must be 0 or more"
                      : mo.block_size < 0 || co.block_size < 0            ? "--block-size must be positive"
                      : co.anchor_size < 0                                ? "--anchor-size must be positive"
                      : mo.max_batch < 0                                  ? "--batch must be positive"
                      : gp.sampling.top_k < 0                             ? "--top-k must be 0 or more"
                      : co.mode < 0                                       ? "--mode must be full, ring or star"
                      : strcmp(transport, "mpi") != 0 && strcmp(transport, "tcp") != 0 ? "--transport must be mpi or tcp"
                                                                                         : NULL;
    if (why) {
        fprintf(stderr, "starring-run: %s (see --help)\n", why);
        return 2;
    }

    /* a transport when sharding, or when ranks of a job must agree even in full mode */
    sr_tp *tp = NULL;
    int use_mpi = (co.mode != SR_CP_FULL || world > 1) && strcmp(transport, "mpi") == 0;
    int rc = use_mpi ? sr_tp_mpi_init(&argc, &argv) : SR_OK;
    if (rc == SR_OK && (co.mode != SR_CP_FULL || world > 1)) rc = sr_tp_open(&tp, transport, NULL);
    int rank = tp ? sr_tp_rank(tp) : 0;
    sr_log_init("run", tp ? rank : -1, SR_LOG_WARN);

    sr_model *m = NULL;
    sr_tokenizer *tok = NULL;
    char *text = NULL;
    int32_t *ids = NULL, *question = NULL;
    int64_t n_ids = 0, n_question = 0;
    if (rc == SR_OK) rc = sr_model_load(&m, model_path, &mo);
    /* token ids straight to a logit dump need no tokenizer (tiny test models have none) */
    if (rc == SR_OK && !(ids_arg && dump)) rc = sr_tok_from_gguf(&tok, m->gguf);
    if (rc == SR_OK && (ids_arg || random_ctx > 0)) {
        int64_t *list = NULL;
        if (ids_arg) {
            rc = parse_list(ids_arg, &list, &n_ids);
        } else {
            n_ids = random_ctx;
        }
        if (rc == SR_OK) {
            ids = malloc((size_t)(n_ids ? n_ids : 1) * sizeof(*ids));
            uint64_t z = gp.sampling.seed + 1;
            for (int64_t i = 0; ids && i < n_ids; i++) {
                z = z * 6364136223846793005ull + 1442695040888963407ull; /* the same ids on every rank */
                ids[i] = list ? (int32_t)list[i] : (int32_t)((z >> 33) % (uint64_t)m->config.vocab_size);
            }
            if (!ids) rc = sr_error_set(SR_ENOMEM, "out of memory");
            free(list);
        }
        if (rc == SR_OK && prompt && !dump) rc = sr_tok_encode(tok, prompt, strlen(prompt), 0, 0, &question, &n_question);
    } else if (rc == SR_OK) {
        size_t len = 0;
        if (file) rc = read_file(file, &text, &len);
        if (rc == SR_OK)
            rc = sr_cp_encode(tok, file ? text : prompt, file ? len : strlen(prompt), file ? prompt : NULL, chat, sys_msg, &ids, &n_ids, &question,
                              &n_question);
    }
    if (rc == SR_OK && n_ids == 0) rc = sr_error_set(SR_EINVAL, "the prompt has no tokens");
    if (rc == SR_OK && dump) {
        double t0 = sr_now();
        rc = dump_logits(m, ids, n_ids, dump, dump_pos);
        if (rc == SR_OK) fprintf(stderr, "starring-run: dumped logits in %.2f s\n", sr_now() - t0);
    } else if (rc == SR_OK) {
        /* ring holds every local row in one batch */
        int64_t rows = sr_cp_batch_rows(&co, n_ids, tp ? sr_tp_size(tp) : 1);
        if (rows > m->state.max_batch) {
            sr_model_free(m);
            m = NULL;
            mo.max_batch = rows;
            rc = sr_model_load(&m, model_path, &mo);
        }
        sr_cp *cp = NULL;
        sr_gen_stats st = {0};
        if (rc == SR_OK) rc = sr_cp_open(&cp, m, tp, &co);
        if (rc == SR_OK) rc = sr_cp_prefill(cp, ids, n_ids);
        if (rc == SR_OK) rc = sr_cp_generate(cp, tok, question, n_question, &gp, emit_stdout, NULL, &st);
        if (rc == SR_OK && rank == 0) {
            fputc('\n', stdout);
            fflush(stdout);
        }
        if (rc == SR_OK) rc = report(cp, &co, &mo, transport, n_ids, &st);
        sr_cp_close(cp);
    }
    if (rc) fprintf(stderr, "starring-run: rank %d: %s\n", rank, sr_error_msg());
    free(ids);
    free(question);
    free(text);
    if (tok) sr_tok_free(tok);
    sr_model_free(m);
    sr_tp_close(tp);
    if (use_mpi) {
        /* a failed rank ends the job rather than leaving the others waiting */
        if (rc) MPI_Abort(MPI_COMM_WORLD, 1);
        MPI_Finalize();
    }
    return rc ? 1 : 0;
}
