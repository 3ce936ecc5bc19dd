/* starring: the command-line client of starringd, on its gRPC API.
 *
 *   starring [--server HOST:PORT] [--json] COMMAND ...
 *     upload FILE [--mode M] [--chat] [--name N]   prints the context's id
 *     ask ID "question" [--chat] [-n N]            streams the answer
 *     generate -f FILE -p "question" [...]         upload, ask, drop
 *     ls | drop ID | stats | health
 *
 * While a context uploads and prefills, stderr shows a progress bar when it
 * is a terminal (tokens done / total, rate, time left) and plain lines
 * otherwise. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/progress.h"
#include "base/status.h"
#include "clients/c/grpc_client.h"
#include "grpc/health/v1/health.pb-c.h"
#include "starring/v1/starring.pb-c.h"

static const char usage[] =
    "usage: starring [--server HOST:PORT] [--json] COMMAND ...\n"
    "  upload FILE [--mode star|ring|full] [--chat] [--name NAME]   upload a context, print its id\n"
    "         [--block-size N] [--anchor-size N]                    star's blocks and anchor (tokens)\n"
    "  ask ID QUESTION [--chat] [-n TOKENS]                       stream an answer over a context\n"
    "  generate -f FILE -p QUESTION [--mode M] [--chat] [-n N]    upload, ask, drop\n"
    "  ls                                                         resident contexts\n"
    "  drop ID                                                    drop a context\n"
    "  stats                                                      the cluster's figures\n"
    "  health                                                     SERVING or NOT_SERVING (exit 0 when serving)\n"
    "  --server defaults to $STARRING_SERVER, then 127.0.0.1:7070\n";

typedef struct {
    sr_gc *gc;
    int json;
    /* options of upload / ask / generate */
    const char *mode, *name, *file, *prompt;
    int chat, n;
    int64_t block_size, anchor_size;
} cli;

static int fail(int status, const char *msg) {
    static const char *const names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                        "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                        "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    if (status < 0) fprintf(stderr, "starring: %s\n", msg);
    else fprintf(stderr, "starring: %s: %s\n", status <= 16 ? names[status] : "?", msg);
    return 1;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void print_context(const cli *c, const Starring__V1__Context *m, int id_only) {
    if (c->json) {
        printf("{\"id\":\"%s\",\"n_tokens\":%lld,\"mode\":\"%s\",\"state\":\"%s\",\"name\":", m->id,
               (long long)m->n_tokens, m->mode, m->state);
        json_str(stdout, m->name);
        printf(",\"questions\":%lld,\"shards\":[", (long long)m->questions);
        for (size_t i = 0; i < m->n_shards; i++)
            printf("%s{\"worker\":%d,\"kv_tokens\":%lld,\"kv_bytes\":%lld}", i ? "," : "", m->shards[i]->worker,
                   (long long)m->shards[i]->kv_tokens, (long long)m->shards[i]->kv_bytes);
        printf("]}\n");
    } else if (id_only) {
        printf("%s\n", m->id);
    } else {
        int64_t kv = 0;
        for (size_t i = 0; i < m->n_shards; i++) kv += m->shards[i]->kv_bytes;
        printf("%s  %8lld tokens  %-4s  %-10s  %8.1f MiB KV  %s\n", m->id, (long long)m->n_tokens, m->mode, m->state,
               (double)kv / (1 << 20), m->name);
    }
}

/* ------------------------------------------------------------ progress */

typedef struct {
    sr_progress bar;
    Starring__V1__Context *ready;
} upload_state;

static int on_context_event(void *data, const uint8_t *msg, size_t len) {
    upload_state *u = data;
    Starring__V1__ContextEvent *e = starring__v1__context_event__unpack(NULL, len, msg);
    if (!e) return 1;
    if (e->event_case == STARRING__V1__CONTEXT_EVENT__EVENT_PROGRESS)
        sr_progress_show(&u->bar, e->progress->done, e->progress->total);
    if (e->event_case == STARRING__V1__CONTEXT_EVENT__EVENT_READY) {
        u->ready = e->ready;
        e->ready = NULL;
    }
    starring__v1__context_event__free_unpacked(e, NULL);
    return 0;
}

static int read_file(const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return sr_error_set(SR_EIO, "cannot open '%s'", path);
    size_t n = 0, cap = 1 << 16;
    char *b = malloc(cap);
    for (size_t k; b && (k = fread(b + n, 1, cap - n - 1, f)) > 0;) {
        n += k;
        if (n + 1 == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (!b) return sr_error_set(SR_ENOMEM, "out of memory reading '%s'", path);
    b[n] = 0;
    *out = b;
    return SR_OK;
}

/* Uploads a file; *ready is the context (free it). */
static int upload(cli *c, Starring__V1__Context **ready) {
    char *text = NULL;
    if (read_file(c->file, &text) != SR_OK) return fail(-1, sr_error_msg());
    size_t len = strlen(text), chunk = 1 << 20;
    Starring__V1__ContextOptions o = STARRING__V1__CONTEXT_OPTIONS__INIT;
    o.mode = (char *)(c->mode ? c->mode : "");
    o.name = (char *)(c->name ? c->name : c->file);
    o.chat = c->chat;
    o.block_size = c->block_size;
    o.anchor_size = c->anchor_size;
    for (size_t at = 0; at < len || at == 0; at += chunk) {
        Starring__V1__ContextChunk ch = STARRING__V1__CONTEXT_CHUNK__INIT;
        size_t n = len - at < chunk ? len - at : chunk;
        char save = text[at + n];
        text[at + n] = 0;
        ch.text = text + at;
        if (at == 0) ch.options = &o;
        sr_gc_add(c->gc, &ch.base);
        text[at + n] = save;
        if (len == 0) break;
    }
    free(text);
    upload_state u = {.ready = NULL};
    sr_progress_init(&u.bar, "starring", "prefill", 1);
    char msg[512];
    int st = sr_gc_call(c->gc, "/starring.v1.Starring/CreateContext", on_context_event, &u, msg, sizeof msg);
    if (st != 0) return fail(st, msg);
    if (!u.ready) return fail(2, "no context in the answer");
    *ready = u.ready;
    return 0;
}

/* ------------------------------------------------------------ ask */

typedef struct {
    const cli *c;
    Starring__V1__Done *done;
    int64_t n;
} ask_state;

static int on_generate_event(void *data, const uint8_t *msg, size_t len) {
    ask_state *a = data;
    Starring__V1__GenerateEvent *e = starring__v1__generate_event__unpack(NULL, len, msg);
    if (!e) return 1;
    if (e->event_case == STARRING__V1__GENERATE_EVENT__EVENT_TOKEN) {
        if (a->c->json) {
            printf("{\"token\":%d,\"text\":", e->token->id);
            json_str(stdout, e->token->text);
            printf("}\n");
        } else {
            fputs(e->token->text, stdout);
        }
        fflush(stdout);
        a->n++;
    } else if (e->event_case == STARRING__V1__GENERATE_EVENT__EVENT_DONE) {
        a->done = e->done;
        e->done = NULL;
    }
    starring__v1__generate_event__free_unpacked(e, NULL);
    return 0;
}

static int ask(cli *c, const char *id, const char *question) {
    Starring__V1__GenerateRequest g = STARRING__V1__GENERATE_REQUEST__INIT;
    g.context_id = (char *)id;
    g.prompt = (char *)question;
    g.chat = c->chat;
    g.max_tokens = c->n;
    sr_gc_add(c->gc, &g.base);
    ask_state a = {c, NULL, 0};
    char msg[512];
    int st = sr_gc_call(c->gc, "/starring.v1.Starring/Generate", on_generate_event, &a, msg, sizeof msg);
    if (!c->json) putchar('\n');
    fflush(stdout); /* the answer's end before the timing line on stderr */
    if (st != 0) return fail(st, msg);
    if (a.done) {
        Starring__V1__Done *d = a.done;
        if (c->json)
            printf("{\"done\":{\"stop_reason\":\"%s\",\"prompt_tokens\":%lld,\"generated_tokens\":%lld,"
                   "\"context_tokens\":%lld,\"prefill_reused\":%s,\"time_to_first_token_s\":%.6f,\"tokens_per_s\":%.3f}}\n",
                   d->stop_reason, (long long)d->prompt_tokens, (long long)d->generated_tokens,
                   (long long)d->context_tokens, d->prefill_reused ? "true" : "false", d->time_to_first_token_s,
                   d->tokens_per_s);
        else
            fprintf(stderr, "starring: %lld tokens (%s), first after %.3f s, %.2f tok/s; context %lld tokens, prefill %s\n",
                    (long long)d->generated_tokens, d->stop_reason, d->time_to_first_token_s, d->tokens_per_s,
                    (long long)d->context_tokens, d->prefill_reused ? "reused" : "run for this question");
        starring__v1__done__free_unpacked(d, NULL);
    }
    return 0;
}

/* ------------------------------------------------------------ unary */

typedef struct {
    const ProtobufCMessageDescriptor *desc;
    ProtobufCMessage *m;
} one_state;

static int on_one(void *data, const uint8_t *msg, size_t len) {
    one_state *o = data;
    o->m = protobuf_c_message_unpack(o->desc, NULL, len, msg);
    return o->m == NULL;
}

static ProtobufCMessage *unary(cli *c, const char *path, const ProtobufCMessage *req,
                               const ProtobufCMessageDescriptor *desc, int *status) {
    sr_gc_add(c->gc, req);
    one_state o = {desc, NULL};
    char msg[512];
    *status = sr_gc_call(c->gc, path, on_one, &o, msg, sizeof msg);
    if (*status != 0) {
        fail(*status, msg);
        if (o.m) protobuf_c_message_free_unpacked(o.m, NULL);
        return NULL;
    }
    return o.m;
}

static int cmd_drop(cli *c, const char *id, int quiet) {
    Starring__V1__ContextRef ref = STARRING__V1__CONTEXT_REF__INIT;
    ref.id = (char *)id;
    int st;
    Starring__V1__Context *m = (Starring__V1__Context *)unary(c, "/starring.v1.Starring/DropContext", &ref.base,
                                                            &starring__v1__context__descriptor, &st);
    if (!m) return 1;
    if (!quiet) print_context(c, m, 0);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return 0;
}

static int cmd_ls(cli *c) {
    Starring__V1__ListContextsRequest req = STARRING__V1__LIST_CONTEXTS_REQUEST__INIT;
    int st;
    Starring__V1__ListContextsResponse *r = (Starring__V1__ListContextsResponse *)unary(
        c, "/starring.v1.Starring/ListContexts", &req.base, &starring__v1__list_contexts_response__descriptor, &st);
    if (!r) return 1;
    for (size_t i = 0; i < r->n_contexts; i++) print_context(c, r->contexts[i], 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

static int cmd_stats(cli *c) {
    Starring__V1__StatsRequest req = STARRING__V1__STATS_REQUEST__INIT;
    int st;
    Starring__V1__Stats *s = (Starring__V1__Stats *)unary(c, "/starring.v1.Starring/GetStats", &req.base,
                                                          &starring__v1__stats__descriptor, &st);
    if (!s) return 1;
    if (c->json) {
        printf("{\"workers\":%d,\"workers_ready\":%d,\"contexts\":%lld,\"prefills\":%lld,\"prefill_tokens\":%lld,"
               "\"generations\":%lld,\"generated_tokens\":%lld,\"kv_tokens\":%lld,\"kv_bytes\":%lld,"
               "\"evictions\":%lld,\"cancelled\":%lld,\"queue_depth\":%d,\"queue_capacity\":%d}\n",
               s->workers, s->workers_ready, (long long)s->contexts, (long long)s->prefills,
               (long long)s->prefill_tokens, (long long)s->generations, (long long)s->generated_tokens,
               (long long)s->kv_tokens, (long long)s->kv_bytes, (long long)s->evictions, (long long)s->cancelled,
               s->queue_depth, s->queue_capacity);
    } else {
        printf("workers %d (%d ready), contexts %lld, prefills %lld (%lld tokens), answers %lld (%lld tokens)\n",
               s->workers, s->workers_ready, (long long)s->contexts, (long long)s->prefills,
               (long long)s->prefill_tokens, (long long)s->generations, (long long)s->generated_tokens);
        printf("KV %lld tokens, %.1f MiB; evictions %lld, cancelled %lld, queue %d/%d\n", (long long)s->kv_tokens,
               (double)s->kv_bytes / (1 << 20), (long long)s->evictions, (long long)s->cancelled, s->queue_depth,
               s->queue_capacity);
        for (size_t i = 0; i < s->n_worker; i++)
            printf("  worker %d: %-7s %lld contexts, %lld KV tokens, %.1f MiB\n", s->worker[i]->worker,
                   s->worker[i]->state, (long long)s->worker[i]->contexts, (long long)s->worker[i]->kv_tokens,
                   (double)s->worker[i]->kv_bytes / (1 << 20));
    }
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return 0;
}

static int cmd_health(cli *c) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    int st;
    Grpc__Health__V1__HealthCheckResponse *r = (Grpc__Health__V1__HealthCheckResponse *)unary(
        c, "/grpc.health.v1.Health/Check", &req.base, &grpc__health__v1__health_check_response__descriptor, &st);
    if (!r) return 1;
    int ok = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (c->json) printf("{\"status\":\"%s\"}\n", ok ? "SERVING" : "NOT_SERVING");
    else printf("%s\n", ok ? "SERVING" : "NOT_SERVING");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv) {
    cli c = {0};
    const char *server = getenv("STARRING_SERVER");
    if (!server || !*server) server = "127.0.0.1:7070";
    enum { O_SERVER = 256, O_JSON, O_MODE, O_CHAT, O_NAME, O_BLOCK, O_ANCHOR };
    static const struct option lo[] = {{"server", required_argument, 0, O_SERVER}, {"json", no_argument, 0, O_JSON},
                                       {"mode", required_argument, 0, O_MODE},     {"chat", no_argument, 0, O_CHAT},
                                       {"name", required_argument, 0, O_NAME},     {"help", no_argument, 0, 'h'},
                                       {"block-size", required_argument, 0, O_BLOCK},
                                       {"anchor-size", required_argument, 0, O_ANCHOR},
                                       {0, 0, 0, 0}};
    int k;
    /* GNU getopt permutes: options may come before, among or after the command's arguments */
    while ((k = getopt_long(argc, argv, "hf:p:n:", lo, NULL)) != -1) {
        switch (k) {
        case O_SERVER: server = optarg; break;
        case O_JSON: c.json = 1; break;
        case O_MODE: c.mode = optarg; break;
        case O_CHAT: c.chat = 1; break;
        case O_NAME: c.name = optarg; break;
        case O_BLOCK: c.block_size = atoll(optarg); break;
        case O_ANCHOR: c.anchor_size = atoll(optarg); break;
        case 'f': c.file = optarg; break;
        case 'p': c.prompt = optarg; break;
        case 'n': c.n = atoi(optarg); break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    const char *const *pos = (const char *const *)argv + optind;
    int np = argc - optind;
    if (np == 0) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = pos[0];
    char host[256];
    const char *colon = strrchr(server, ':');
    if (!colon || colon == server || (size_t)(colon - server) >= sizeof host) {
        fprintf(stderr, "starring: --server %s must be HOST:PORT\n", server);
        return 2;
    }
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = 0;
    if (sr_gc_open(&c.gc, host, atoi(colon + 1)) != SR_OK) return fail(-1, sr_error_msg());
    int rc = 2;
    Starring__V1__Context *ctx = NULL;
    if (strcmp(cmd, "upload") == 0 && np == 2) {
        c.file = pos[1];
        if ((rc = upload(&c, &ctx)) == 0) print_context(&c, ctx, 1);
    } else if (strcmp(cmd, "ask") == 0 && np == 3) {
        rc = ask(&c, pos[1], pos[2]);
    } else if (strcmp(cmd, "generate") == 0 && np == 1 && c.file && c.prompt) {
        if ((rc = upload(&c, &ctx)) == 0) {
            rc = ask(&c, ctx->id, c.prompt);
            rc |= cmd_drop(&c, ctx->id, 1);
        }
    } else if (strcmp(cmd, "ls") == 0 && np == 1) {
        rc = cmd_ls(&c);
    } else if (strcmp(cmd, "drop") == 0 && np == 2) {
        rc = cmd_drop(&c, pos[1], 0);
    } else if (strcmp(cmd, "stats") == 0 && np == 1) {
        rc = cmd_stats(&c);
    } else if (strcmp(cmd, "health") == 0 && np == 1) {
        rc = cmd_health(&c);
    } else {
        fprintf(stderr, "starring: '%s' with %d argument%s is not a command (see --help)\n", cmd, np - 1,
                np == 2 ? "" : "s");
    }
    if (ctx) protobuf_c_message_free_unpacked(&ctx->base, NULL);
    sr_gc_close(c.gc);
    return rc;
}
