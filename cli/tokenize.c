/* starring-tokenize: text -> token ids (or ids -> text with --decode) with a
 * model's GGUF tokenizer. Binary-safe: text from -f or stdin may hold any
 * bytes, and --decode writes exactly the bytes of the tokens. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

static const char usage[] =
    "usage: starring-tokenize -m MODEL [-p TEXT | -f FILE] [options]\n"
    "Prints the token ids of TEXT (or of FILE, or of stdin), space-separated.\n"
    "  -m, --model PATH     GGUF model whose tokenizer to use (required)\n"
    "  -p, --prompt TEXT    text to encode (ids to decode with --decode)\n"
    "  -f, --file PATH      read the text (or ids) from PATH\n"
    "      --decode         read token ids and print their text, byte for byte\n"
    "      --chat           wrap the text as a user message in the model's chat template\n"
    "      --system TEXT    system message for --chat (default: the template's own)\n"
    "      --no-special     treat special-token text such as <|im_start|> as plain text\n"
    "      --no-bos         never prepend BOS (by default the model decides)\n"
    "      --time           print encoding speed on stderr\n"
    "  -h, --help           this help\n";

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static int read_all(buf *b, FILE *f, const char *name) {
    for (;;) {
        if (b->cap - b->n < 65536) {
            size_t cap = b->cap ? 2 * b->cap : 1 << 20;
            char *p = realloc(b->p, cap + 1);
            if (!p) return sr_error_set(SR_ENOMEM, "out of memory reading %s", name);
            b->p = p;
            b->cap = cap;
        }
        size_t got = fread(b->p + b->n, 1, b->cap - b->n, f);
        b->n += got;
        if (got == 0) break;
    }
    if (ferror(f)) return sr_error_set(SR_EIO, "cannot read %s: %s", name, strerror(errno));
    b->p[b->n] = 0;
    return SR_OK;
}

static int read_input(buf *b, const char *prompt, const char *file) {
    if (prompt) {
        size_t n = strlen(prompt);
        b->p = malloc(n + 1);
        if (!b->p) return sr_error_set(SR_ENOMEM, "out of memory");
        memcpy(b->p, prompt, n + 1);
        b->n = b->cap = n;
        return SR_OK;
    }
    if (!file) return read_all(b, stdin, "stdin");
    FILE *f = fopen(file, "rb");
    if (!f) return sr_error_set(SR_EIO, "cannot open %s: %s", file, strerror(errno));
    int rc = read_all(b, f, file);
    fclose(f);
    return rc;
}

static int run_decode(const sr_tokenizer *t, const buf *in) {
    char piece[4096];
    const char *p = in->p, *end = in->p + in->n;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',')) p++;
        if (p == end) break;
        char *q;
        errno = 0;
        long v = strtol(p, &q, 10);
        if (q == p || errno || v < 0 || v > INT32_MAX)
            return sr_error_set(SR_EINVAL, "--decode: \"%.20s\" is not a token id", p);
        p = q;
        int n = sr_tok_piece(t, (int32_t)v, piece, sizeof(piece));
        if (n < 0) return n;
        if (fwrite(piece, 1, (size_t)n, stdout) != (size_t)n) return sr_error_set(SR_EIO, "cannot write to stdout");
    }
    return SR_OK;
}

static int run_encode(const sr_tokenizer *t, const buf *in, int chat, const char *system, int special, int bos, int timing) {
    char *text = in->p, *prompt = NULL;
    size_t len = in->n;
    int rc = chat ? sr_tok_chat_prompt(t, system, in->p, in->n, &prompt, &len) : SR_OK;
    if (rc) return rc;
    if (chat) text = prompt;
    int32_t *ids = NULL;
    int64_t n = 0;
    double t0 = sr_now();
    rc = sr_tok_encode(t, text, len, special, bos, &ids, &n);
    double dt = sr_now() - t0;
    if (!rc) {
        for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        if (timing)
            fprintf(stderr, "encoded %zu bytes into %lld tokens in %.3f ms: %.0f tokens/s, %.1f MB/s\n", len, (long long)n,
                    dt * 1e3, dt > 0 ? n / dt : 0, dt > 0 ? len / dt / 1e6 : 0);
    }
    free(ids);
    free(prompt);
    return rc;
}

int main(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *system = NULL;
    int decode = 0, chat = 0, special = 1, bos = 1, timing = 0;
    sr_log_init("tokenize", -1, SR_LOG_WARN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && more) {
            model = argv[++i];
        } else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && more) {
            prompt = argv[++i];
        } else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && more) {
            file = argv[++i];
        } else if (!strcmp(a, "--system") && more) {
            system = argv[++i];
        } else if (!strcmp(a, "--decode")) {
            decode = 1;
        } else if (!strcmp(a, "--chat")) {
            chat = 1;
        } else if (!strcmp(a, "--no-special")) {
            special = 0;
        } else if (!strcmp(a, "--no-bos")) {
            bos = 0;
        } else if (!strcmp(a, "--time")) {
            timing = 1;
        } else {
            fprintf(stderr, "starring-tokenize: unknown or incomplete option '%s'\n%s", a, usage);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "starring-tokenize: -m MODEL is required\n%s", usage);
        return 2;
    }
    if (prompt && file) {
        fprintf(stderr, "starring-tokenize: give the text with -p or -f, not both\n");
        return 2;
    }
    sr_gguf *g = NULL;
    sr_tokenizer *t = NULL;
    buf in = {0};
    int rc = sr_gguf_open(&g, model);
    if (!rc) rc = sr_tok_from_gguf(&t, g);
    sr_gguf_close(g);
    if (!rc) rc = read_input(&in, prompt, file);
    if (!rc) rc = decode ? run_decode(t, &in) : run_encode(t, &in, chat, system, special, bos, timing);
    if (!rc && fflush(stdout)) rc = sr_error_set(SR_EIO, "cannot write to stdout");
    if (rc) fprintf(stderr, "starring-tokenize: %s\n", sr_error_msg());
    free(in.p);
    sr_tok_free(t);
    return rc ? 1 : 0;
}
