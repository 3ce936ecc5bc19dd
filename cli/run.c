/* starring-run: loads a GGUF model and generates from a prompt, printing the
 * text on stdout as it comes and a timing line on stderr. */
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "worker/generate.h"
#include "worker/model.h"
#include "worker/tokenizer.h"

static const char *usage =
    "usage: starring-run -m MODEL (-p PROMPT | -f FILE | --ids \"1 2 3\") [options]\n"
    "  -m, --model FILE        GGUF model\n"
    "  -p, --prompt TEXT       prompt text\n"
    "  -f, --file FILE         read the prompt from FILE\n"
    "      --ids \"ID ...\"      feed these token ids as the prompt\n"
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
    "      --block-size N      KV block size in tokens (default 256)\n"
    "      --batch N           prompt tokens per forward pass (default 512)\n"
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

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *ids_arg = NULL, *sys_msg = NULL;
    const char *dump = NULL, *dump_pos = NULL;
    int chat = 0;
    sr_gen_params gp = {.n_predict = 128, .sampling = sr_sampler_defaults(), .stop = NULL};
    sr_model_opts mo = {.n_threads = omp_get_max_threads(), .kv_dtype = SR_DT_F16, .block_size = 0, .max_batch = 0};
    enum { O_CHAT = 256, O_SYSTEM, O_TEMP, O_TOPK, O_TOPP, O_PEN, O_SEED, O_KV, O_BLOCK, O_BATCH, O_STOP, O_DUMP,
           O_DUMPPOS, O_IDS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},    {"n-predict", required_argument, 0, 'n'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {"chat", no_argument, 0, O_CHAT},       {"system", required_argument, 0, O_SYSTEM},
        {"temp", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"repeat-penalty", required_argument, 0, O_PEN},
        {"seed", required_argument, 0, O_SEED}, {"kv-type", required_argument, 0, O_KV},
        {"block-size", required_argument, 0, O_BLOCK}, {"batch", required_argument, 0, O_BATCH},
        {"stop", required_argument, 0, O_STOP}, {"dump-logits", required_argument, 0, O_DUMP},
        {"dump-positions", required_argument, 0, O_DUMPPOS}, {"ids", required_argument, 0, O_IDS},
        {0, 0, 0, 0},
    };
    sr_log_init("run", -1, SR_LOG_WARN);
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
        case O_BLOCK: bad |= num_i64(optarg, "--block-size", &mo.block_size); break;
        case O_BATCH: bad |= num_i64(optarg, "--batch", &mo.max_batch); break;
        case O_STOP: gp.stop = optarg; break;
        case O_DUMP: dump = optarg; break;
        case O_DUMPPOS: dump_pos = optarg; break;
        case O_IDS: ids_arg = optarg; break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (bad) return 2;
    if (!model_path || (!prompt && !file && !ids_arg) || (dump && !dump_pos) || mo.n_threads <= 0 ||
        gp.n_predict < 0 || mo.block_size < 0 || mo.max_batch < 0 || gp.sampling.top_k < 0) {
        fputs(usage, stderr);
        return 2;
    }

    sr_model *m = NULL;
    sr_tokenizer *tok = NULL;
    char *text = NULL, *chat_text = NULL;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    int rc = sr_model_load(&m, model_path, &mo);
    /* token ids straight to a logit dump need no tokenizer (tiny test models have none) */
    if (rc == SR_OK && !(ids_arg && dump)) rc = sr_tok_from_gguf(&tok, m->gguf);
    if (rc == SR_OK && ids_arg) {
        int64_t *list;
        if ((rc = parse_list(ids_arg, &list, &n_ids)) == SR_OK) {
            ids = malloc((size_t)(n_ids ? n_ids : 1) * sizeof(*ids));
            for (int64_t i = 0; ids && i < n_ids; i++) ids[i] = (int32_t)list[i];
            if (!ids) rc = sr_error_set(SR_ENOMEM, "out of memory");
            free(list);
        }
    } else if (rc == SR_OK) {
        size_t len = 0;
        if (file) rc = read_file(file, &text, &len);
        const char *p = file ? text : prompt;
        if (rc == SR_OK && chat) {
            if (!(chat_text = sr_chat_prompt(tok, sys_msg, p)))
                rc = sr_error_set(SR_EINVAL, "the model's chat template could not be applied");
            p = chat_text;
        }
        if (rc == SR_OK) rc = sr_tok_encode(tok, p, strlen(p), chat, 1, &ids, &n_ids);
    }
    if (rc == SR_OK && n_ids == 0) rc = sr_error_set(SR_EINVAL, "the prompt has no tokens");
    if (rc == SR_OK && dump) {
        double t0 = sr_now();
        rc = dump_logits(m, ids, n_ids, dump, dump_pos);
        if (rc == SR_OK) fprintf(stderr, "starring-run: dumped logits in %.2f s\n", sr_now() - t0);
    } else if (rc == SR_OK) {
        sr_gen_stats st;
        rc = sr_generate(m, tok, ids, n_ids, &gp, emit_stdout, NULL, &st);
        if (rc == SR_OK) {
            fputc('\n', stdout);
            fflush(stdout);
            fprintf(stderr,
                    "starring-run: prompt %lld tokens in %.3f s (%.1f tok/s), generated %lld tokens in %.3f s "
                    "(%.1f tok/s), kv %.1f MiB, %d threads\n",
                    (long long)st.n_prompt, st.t_prompt, st.n_prompt / (st.t_prompt > 0 ? st.t_prompt : 1e-9),
                    (long long)st.n_gen, st.t_decode,
                    st.n_decode / (st.t_decode > 0 ? st.t_decode : 1e-9), sr_kv_bytes(&m->kv) / 1048576.0,
                    mo.n_threads);
        }
    }
    if (rc) fprintf(stderr, "starring-run: %s\n", sr_error_msg());
    free(ids);
    free(text);
    free(chat_text);
    if (tok) sr_tok_free(tok);
    sr_model_free(m);
    return rc ? 1 : 0;
}
