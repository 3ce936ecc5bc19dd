/* openai: the OpenAI-compatible HTTP API (see openai.h). JSON by jansson;
 * the fields of the OpenAI API that apply are read, others are ignored as
 * OpenAI-compatible servers do, and a field of the wrong type or out of
 * range is a 400 naming it. Extensions: context_id (ask against a resident
 * context), return_progress (prompt_progress chunks while the prompt is
 * prefilled, as llama.cpp's server sends), and usage.prompt_tokens_details
 * .cached_tokens for the reused prompt tokens. */
#include "coordinator/openai.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/status.h"
#include "coordinator/auth.h"
#include "coordinator/grpc.h"
#include "net/http.h"

struct sr_openai {
    sr_http *http;
    sr_coord *co;
    sr_auth auth;
    uint64_t next_id;
    sr_metrics *metrics;
};

/* One request being answered: the coordinator's sink. */
typedef struct {
    sr_sink sink;
    sr_openai *api;
    sr_http_req *rq;        /* NULL once the client is gone */
    int in_op;              /* a sink op is running: the client going away mid-op frees nothing */
    int chat, stream, include_usage, progress, started;
    char id[48];
    long long created;
    sr_buf text;            /* the answer so far, when not streamed */
    size_t n_streamed;      /* bytes streamed so far, to know the first */
    sr_sink_done done;
    char context_id[24];
} oreq;

/* ------------------------------------------------------------ errors */

static const char *type_of(int http) {
    switch (http) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return http < 500 ? "invalid_request_error" : "server_error";
    }
}

static const char *code_of(int http) {
    switch (http) {
    case 401: return "invalid_api_key";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 413: return "request_too_large";
    case 429: return "rate_limit_exceeded";
    case 431: return "headers_too_large";
    case 503: return "unavailable";
    default: return http < 500 ? "invalid_request" : "internal_error";
    }
}

static int http_of(int grpc_status) {
    switch (grpc_status) {
    case SR_GRPC_OK: return 200;
    case SR_GRPC_INVALID_ARGUMENT:
    case SR_GRPC_FAILED_PRECONDITION: return 400;
    case SR_GRPC_UNAUTHENTICATED: return 401;
    case SR_GRPC_NOT_FOUND: return 404;
    case SR_GRPC_RESOURCE_EXHAUSTED: return 429;
    case SR_GRPC_UNAVAILABLE: return 503;
    case SR_GRPC_DEADLINE_EXCEEDED: return 504;
    default: return 500;
    }
}

static json_t *error_object(int http, const char *msg, const char *param) {
    return json_pack("{s:{s:s,s:s,s:s?,s:s}}", "error", "message", msg, "type", type_of(http), "param", param, "code",
                     code_of(http));
}

/* net/http's own errors (413, 400, ...) as OpenAI error objects */
static void error_body(int status, const char *msg, char *buf, size_t cap) {
    json_t *e = error_object(status, msg, NULL);
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    snprintf(buf, cap, "%s", s ? s : "{\"error\":{\"message\":\"out of memory\"}}");
    free(s);
    json_decref(e);
}

/* Answers json (taken) with a status. */
static void reply(sr_http_req *rq, int status, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":\"internal_error\"}}";
        sr_http_respond(rq, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    sr_http_respond(rq, status, "application/json", s, strlen(s));
    free(s);
}

static void reply_error(sr_http_req *rq, int http, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_error(sr_http_req *rq, int http, const char *param, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply(rq, http, error_object(http, msg, param));
}

static int authorized(sr_openai *a, sr_http_req *rq) {
    const char *h = sr_http_req_header(rq, "authorization");
    if (sr_auth_check(&a->auth, h, h ? strlen(h) : 0)) return 1;
    SR_WARN("http %s %s from %s refused: %s API key", sr_http_req_method(rq), sr_http_req_path(rq),
            sr_http_req_peer(rq), h ? "a wrong" : "no");
    reply_error(rq, 401, NULL, "%s", h ? "the API key is wrong" : "this server needs its API key: send the header 'Authorization: Bearer KEY'");
    return 0;
}

/* ------------------------------------------------------------ the sink */

static void oreq_free(oreq *o) {
    sr_buf_free(&o->text);
    free(o);
}

static json_t *chunk_base(const oreq *o) {
    return json_pack("{s:s,s:s,s:I,s:s}", "id", o->id, "object", o->chat ? "chat.completion.chunk" : "text_completion",
                     "created", (json_int_t)o->created, "model", sr_coord_model_name(o->api->co));
}

/* One Server-Sent Event "data: JSON" (json taken); the stream starts with the first. */
static int send_event(oreq *o, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return SR_ENOMEM;
    int rc = SR_OK;
    if (!o->started) {
        o->started = 1;
        rc = sr_http_stream_start(o->rq, 200, "text/event-stream");
    }
    size_t n = strlen(s);
    char *ev = malloc(n + 9);
    if (ev && rc == SR_OK && o->rq) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, s, n);
        memcpy(ev + 6 + n, "\n\n", 2);
        rc = sr_http_stream_write(o->rq, ev, n + 8);
    }
    free(ev);
    free(s);
    return rc;
}

static void on_progress(sr_sink *s, int64_t done, int64_t total) {
    oreq *o = s->data;
    if (!o->stream || !o->progress) return;
    json_t *j = chunk_base(o);
    json_object_set_new(j, "choices", json_array());
    json_object_set_new(j, "prompt_progress", json_pack("{s:I,s:I}", "total", (json_int_t)total, "processed", (json_int_t)done));
    o->in_op++;
    send_event(o, j);
    if (--o->in_op == 0 && !o->rq) oreq_free(o);
}

static json_t *choice(const oreq *o, const char *text, const char *finish) {
    json_t *fr = finish ? json_string(finish) : json_null();
    if (!o->chat) return json_pack("{s:i,s:s,s:n,s:o}", "index", 0, "text", text, "logprobs", "finish_reason", fr);
    if (!o->stream) return json_pack("{s:i,s:{s:s,s:s},s:o}", "index", 0, "message", "role", "assistant", "content", text,
                                     "finish_reason", fr);
    json_t *delta = json_object();
    if (text && *text) json_object_set_new(delta, "content", json_string(text));
    return json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason", fr);
}

static void on_token(sr_sink *s, int32_t id, const char *text) {
    oreq *o = s->data;
    if (!*text) return;
    if (o->stream) {
        json_t *j = chunk_base(o);
        json_t *c = choice(o, text, NULL);
        if (o->chat && !o->n_streamed) json_object_set_new(json_object_get(c, "delta"), "role", json_string("assistant"));
        o->n_streamed += strlen(text);
        json_object_set_new(j, "choices", json_pack("[o]", c));
        o->in_op++;
        send_event(o, j);
        if (--o->in_op == 0 && !o->rq) oreq_free(o);
        return;
    }
    sr_buf_puts(&o->text, text); /* a failure is kept in o->text and answered at the end */
}

static void on_done(sr_sink *s, const sr_sink_done *d) {
    oreq *o = s->data;
    o->done = *d;
    snprintf(o->context_id, sizeof o->context_id, "%s", d->context_id ? d->context_id : "");
    o->done.context_id = o->context_id;
}

static json_t *usage(const sr_sink_done *d) {
    /* a reused context counts what earlier turns fed it too (cached_tokens) */
    int64_t prompt = (d->cached_tokens > d->context_tokens ? d->cached_tokens : d->context_tokens) + d->prompt_tokens;
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)d->generated_tokens, "total_tokens", (json_int_t)(prompt + d->generated_tokens),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)d->cached_tokens);
}

static const char *finish_reason(const sr_sink_done *d) {
    return d->stop_reason && strcmp(d->stop_reason, "length") == 0 ? "length" : "stop";
}

static void on_finish(sr_sink *s, int status, const char *msg) {
    oreq *o = s->data;
    if (!o->rq) {
        oreq_free(o);
        return;
    }
    int http = http_of(status);
    o->in_op++;
    int oom = sr_buf_status(&o->text) != SR_OK;
    if (!o->stream && (status != SR_GRPC_OK || oom)) {
        reply_error(o->rq, oom ? 500 : http, NULL, "%s", oom ? "out of memory for the answer" : msg ? msg : "failed");
    } else if (!o->stream) {
        json_t *j = json_pack("{s:s,s:s,s:I,s:s}", "id", o->id, "object", o->chat ? "chat.completion" : "text_completion",
                              "created", (json_int_t)o->created, "model", sr_coord_model_name(o->api->co));
        json_object_set_new(j, "choices", json_pack("[o]", choice(o, o->text.data ? o->text.data : "", finish_reason(&o->done))));
        json_object_set_new(j, "usage", usage(&o->done));
        if (*o->context_id) json_object_set_new(j, "context_id", json_string(o->context_id));
        reply(o->rq, 200, j);
    } else if (status != SR_GRPC_OK && !o->started) {
        reply_error(o->rq, http, NULL, "%s", msg ? msg : "failed");
    } else {
        int rc = SR_OK;
        if (status != SR_GRPC_OK) {
            rc = send_event(o, error_object(http, msg ? msg : "failed", NULL));
        } else {
            json_t *j = chunk_base(o);
            json_object_set_new(j, "choices", json_pack("[o]", choice(o, "", finish_reason(&o->done))));
            if (*o->context_id) json_object_set_new(j, "context_id", json_string(o->context_id));
            rc = send_event(o, j);
            if (rc == SR_OK && o->rq && o->include_usage) {
                j = chunk_base(o);
                json_object_set_new(j, "choices", json_array());
                json_object_set_new(j, "usage", usage(&o->done));
                rc = send_event(o, j);
            }
        }
        if (rc == SR_OK && o->rq) rc = sr_http_stream_write(o->rq, "data: [DONE]\n\n", 14);
        if (rc == SR_OK && o->rq) sr_http_stream_end(o->rq);
    }
    o->in_op--;
    oreq_free(o);
}

static const sr_sink_ops http_sink = {on_progress, on_token, NULL, on_done, on_finish};

static void on_gone(sr_http_req *rq) {
    oreq *o = *sr_http_req_slot(rq);
    o->rq = NULL;
    sr_coord_sink_cancel(&o->sink);
    /* gone during a sink op (its write failed): the op frees it */
    if (!o->in_op) oreq_free(o);
}

/* ------------------------------------------------------------ requests */

/* A field's checks: 0 and an answer when it is wrong. */
static int want_number(sr_http_req *rq, json_t *root, const char *key, double lo, double hi, double *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi) {
        reply_error(rq, 400, key, "'%s' must be a number in %g..%g", key, lo, hi);
        return 0;
    }
    *out = json_number_value(v);
    return 1;
}

static int want_int(sr_http_req *rq, json_t *root, const char *key, json_int_t lo, json_int_t hi, json_int_t *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        reply_error(rq, 400, key, "'%s' must be an integer in %lld..%lld", key, (long long)lo, (long long)hi);
        return 0;
    }
    *out = json_integer_value(v);
    return 1;
}

static int want_bool(sr_http_req *rq, json_t *root, const char *key, int *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_boolean(v)) {
        reply_error(rq, 400, key, "'%s' must be true or false", key);
        return 0;
    }
    *out = json_is_true(v);
    return 1;
}

static int want_string(sr_http_req *rq, json_t *root, const char *key, const char **out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_string(v)) {
        reply_error(rq, 400, key, "'%s' must be a string", key);
        return 0;
    }
    *out = json_string_value(v);
    return 1;
}

/* A message's content: a string, or an array of text parts (joined). */
static char *content_of(sr_http_req *rq, json_t *c, int i, size_t *len) {
    if (json_is_string(c)) {
        *len = json_string_length(c);
        char *s = malloc(*len + 1);
        if (s) memcpy(s, json_string_value(c), *len + 1);
        return s;
    }
    if (!json_is_array(c)) {
        reply_error(rq, 400, "messages", "messages[%d].content must be a string or an array of text parts", i);
        return NULL;
    }
    size_t n = 0, k;
    json_t *p;
    json_array_foreach(c, k, p) {
        json_t *t = json_object_get(p, "text");
        if (!json_is_string(t) || !json_is_string(json_object_get(p, "type")) ||
            strcmp(json_string_value(json_object_get(p, "type")), "text") != 0) {
            reply_error(rq, 400, "messages", "messages[%d].content[%zu] must be {\"type\": \"text\", \"text\": ...}: "
                        "this server takes text only", i, k);
            return NULL;
        }
        n += json_string_length(t);
    }
    char *s = malloc(n + 1);
    if (!s) return NULL;
    *len = 0;
    json_array_foreach(c, k, p) {
        json_t *t = json_object_get(p, "text");
        memcpy(s + *len, json_string_value(t), json_string_length(t));
        *len += json_string_length(t);
    }
    s[*len] = 0;
    return s;
}

/* The conversation in the chat template; or with context_id, the last
 * user message alone (the question). NULL and an answer when it is wrong. */
static char *chat_prompt(sr_openai *a, sr_http_req *rq, json_t *msgs, int question_only) {
    if (!json_is_array(msgs) || json_array_size(msgs) == 0 || json_array_size(msgs) > 100000) {
        reply_error(rq, 400, "messages", "'messages' must be an array of 1..100000 messages");
        return NULL;
    }
    int n = (int)json_array_size(msgs);
    sr_chat_msg *m = calloc((size_t)n, sizeof *m);
    char *out = NULL;
    int ok = m != NULL;
    for (int i = 0; ok && i < n; i++) {
        json_t *e = json_array_get(msgs, (size_t)i);
        const char *role = json_string_value(json_object_get(e, "role"));
        if (role && strcmp(role, "developer") == 0) role = "system";
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
            reply_error(rq, 400, "messages", "messages[%d].role must be system, developer, user or assistant", i);
            ok = 0;
        } else if (strcmp(role, "system") == 0 && i > 0) {
            reply_error(rq, 400, "messages", "messages[%d]: a system message must come first", i);
            ok = 0;
        } else {
            m[i].role = role;
            ok = (m[i].content = content_of(rq, json_object_get(e, "content"), i, &m[i].len)) != NULL;
        }
    }
    if (ok && question_only) {
        for (int i = n - 1; i >= 0 && !out; i--)
            if (strcmp(m[i].role, "user") == 0) out = strdup(m[i].content);
        if (!out) reply_error(rq, 400, "messages", "with context_id, the last user message is the question: there is none");
    } else if (ok) {
        size_t len;
        if (sr_tok_chat_render(sr_coord_tokenizer(a->co), m, n, &out, &len) != SR_OK)
            reply_error(rq, 500, NULL, "%s", sr_error_msg());
    }
    for (int i = 0; m && i < n; i++) free((char *)m[i].content);
    free(m);
    return out;
}

static void ask(sr_http_req *rq, int chat) {
    sr_openai *a = sr_http_data(sr_http_req_server(rq));
    if (!authorized(a, rq)) return;
    char why[512];
    if (!sr_coord_serving(a->co, why, sizeof why)) {
        reply_error(rq, 503, NULL, "not serving yet: %s", why);
        return;
    }
    size_t len;
    const char *body = sr_http_req_body(rq, &len);
    json_error_t err;
    json_t *root = json_loadb(body, len, 0, &err);
    if (!root || !json_is_object(root)) {
        if (root) reply_error(rq, 400, NULL, "the body must be a JSON object");
        else reply_error(rq, 400, NULL, "the body is not JSON: %s (line %d, column %d)", err.text, err.line, err.column);
        json_decref(root);
        return;
    }
    sr_coord_question q = {.reuse = 1, .temperature = 1, .top_p = 1};
    double temperature = 1, top_p = 1;
    json_int_t max_tokens = 0, n = 1, seed = 0;
    int stream = 0, include_usage = 0, progress = 0;
    const char *model = NULL, *context_id = NULL, *stop = NULL;
    json_t *so = json_object_get(root, "stream_options"), *st = json_object_get(root, "stop");
    int ok = want_string(rq, root, "model", &model) && want_number(rq, root, "temperature", 0, 2, &temperature) &&
             want_number(rq, root, "top_p", 0, 1, &top_p) && want_int(rq, root, "max_tokens", 1, INT32_MAX, &max_tokens) &&
             want_int(rq, root, "max_completion_tokens", 1, INT32_MAX, &max_tokens) &&
             want_int(rq, root, "n", INT32_MIN, INT32_MAX, &n) && want_int(rq, root, "seed", INT64_MIN, INT64_MAX, &seed) &&
             want_bool(rq, root, "stream", &stream) && want_bool(rq, root, "return_progress", &progress) &&
             want_string(rq, root, "context_id", &context_id);
    if (ok && so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            reply_error(rq, 400, "stream_options", "'stream_options' must be an object");
            ok = 0;
        } else {
            ok = want_bool(rq, so, "include_usage", &include_usage);
        }
    }
    if (ok && n != 1) {
        reply_error(rq, 400, "n", "'n' must be 1: this server gives one choice per request (%lld asked)", (long long)n);
        ok = 0;
    }
    if (ok && model && strcmp(model, sr_coord_model_name(a->co)) != 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "the model '%.200s' does not exist: this server has '%s' (GET /v1/models)", model,
                 sr_coord_model_name(a->co));
        reply(rq, 404, json_pack("{s:{s:s,s:s,s:s,s:s}}", "error", "message", msg, "type", "not_found_error", "param",
                                 "model", "code", "model_not_found"));
        ok = 0;
    }
    if (ok && st && !json_is_null(st)) {
        if (json_is_string(st)) stop = json_string_value(st);
        else if (json_is_array(st) && json_array_size(st) <= 1 && (json_array_size(st) == 0 || json_is_string(json_array_get(st, 0))))
            stop = json_array_size(st) ? json_string_value(json_array_get(st, 0)) : NULL;
        else {
            reply_error(rq, 400, "stop", "'stop' must be a string or an array of at most one string (this server stops on one)");
            ok = 0;
        }
        if (ok && stop && !*stop) {
            reply_error(rq, 400, "stop", "'stop' must not be empty");
            ok = 0;
        }
    }
    char *prompt = NULL;
    if (ok && chat) {
        ok = (prompt = chat_prompt(a, rq, json_object_get(root, "messages"), context_id && *context_id)) != NULL;
    } else if (ok) {
        json_t *p = json_object_get(root, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (!json_is_string(p)) {
            reply_error(rq, 400, "prompt", "'prompt' must be a string (or an array of one string)");
            ok = 0;
        } else if (!(prompt = strdup(json_string_value(p)))) {
            reply_error(rq, 500, NULL, "out of memory");
            ok = 0;
        }
    }
    if (!ok) {
        json_decref(root);
        return;
    }
    oreq *o = calloc(1, sizeof *o);
    if (!o) {
        free(prompt);
        json_decref(root);
        reply_error(rq, 500, NULL, "out of memory");
        return;
    }
    o->sink = (sr_sink){.ops = &http_sink, .data = o};
    o->api = a;
    o->rq = rq;
    o->chat = chat;
    o->stream = stream;
    o->include_usage = include_usage;
    o->progress = progress;
    o->created = (long long)time(NULL);
    snprintf(o->id, sizeof o->id, "%s-%llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)++a->next_id);
    *sr_http_req_slot(rq) = o;
    sr_http_req_on_gone(rq, on_gone);
    q.prompt = prompt;
    q.context_id = context_id;
    q.reuse = !(context_id && *context_id);
    /* a chat question against a context is wrapped as gRPC's chat questions are */
    q.chat = chat && context_id && *context_id;
    q.max_tokens = (int32_t)max_tokens;
    q.temperature = (float)temperature;
    q.top_p = (float)top_p;
    q.seed = (uint64_t)seed;
    q.stop = stop;
    sr_coord_ask(a->co, &q, &o->sink);
    free(prompt);
    json_decref(root);
}

static void on_chat(sr_http_req *rq) { ask(rq, 1); }
static void on_completions(sr_http_req *rq) { ask(rq, 0); }

static void on_models(sr_http_req *rq) {
    sr_openai *a = sr_http_data(sr_http_req_server(rq));
    if (!authorized(a, rq)) return;
    reply(rq, 200, json_pack("{s:s,s:[{s:s,s:s,s:i,s:s}]}", "object", "list", "data", "id", sr_coord_model_name(a->co),
                             "object", "model", "created", 0, "owned_by", "starring"));
}

/* open without the API key, as load balancers' checks are */
static void on_health(sr_http_req *rq) {
    sr_openai *a = sr_http_data(sr_http_req_server(rq));
    char why[512];
    if (sr_coord_serving(a->co, why, sizeof why)) reply(rq, 200, json_pack("{s:s}", "status", "ok"));
    else reply(rq, 503, json_pack("{s:s,s:s}", "status", "unavailable", "reason", why));
}

static const sr_http_route routes[] = {
    {"POST", "/v1/chat/completions", on_chat},
    {"POST", "/v1/completions", on_completions},
    {"GET", "/v1/models", on_models},
    {"GET", "/health", on_health},
};

static void count_status(const char *route, int status, void *data) {
    sr_metrics_request(((sr_openai *)data)->metrics, "http", route, status);
}

int sr_openai_open(sr_openai **out, uv_loop_t *loop, sr_coord *co, const sr_openai_opts *o) {
    *out = NULL;
    sr_openai *a = calloc(1, sizeof *a);
    if (!a) return sr_error_set(SR_ENOMEM, "openai: out of memory");
    a->co = co;
    a->metrics = o->metrics;
    int rc = sr_auth_init(&a->auth, o->api_key);
    sr_http_opts ho = {.max_body = o->max_body, .error_body = error_body, .error_type = "application/json",
                       .on_status = count_status, .max_conns = o->max_conns, .timeout_s = o->timeout_s,
                       .idle_s = o->idle_s};
    if (rc == SR_OK)
        rc = sr_http_open(&a->http, loop, o->host, o->port, routes, (int)(sizeof routes / sizeof routes[0]), &ho, a);
    if (rc != SR_OK) {
        free(a);
        return rc;
    }
    *out = a;
    return SR_OK;
}

void sr_openai_close(sr_openai *a) {
    if (!a) return;
    sr_http_close(a->http);
    free(a);
}

int sr_openai_port(const sr_openai *a) { return sr_http_port(a->http); }
