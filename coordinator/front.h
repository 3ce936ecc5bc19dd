/* front: what the coordinator offers its front ends (the gRPC methods in
 * coordinator.c, the OpenAI-compatible HTTP API in openai.c), so that both
 * share one scheduling of questions.
 *
 * A request's events reach its client through a sink, whose ops the front
 * end implements: progress while a prompt is prefilled, one token at a
 * time, done with the figures of the answer, and finish (always the last
 * call, with a status of grpc.h's codes and, unless OK, a message for the
 * user). When the client goes away the front end calls sr_coord_sink_cancel:
 * from then on nothing is called on that sink and its work is stopped.
 * Everything here runs on the coordinator's event-loop thread. */
#ifndef SR_COORDINATOR_FRONT_H
#define SR_COORDINATOR_FRONT_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

typedef struct coord sr_coord;
typedef struct sr_sink sr_sink;

typedef struct {
    const char *context_id;     /* the context asked (an ephemeral one's id is gone already) */
    const char *stop_reason;    /* "length", "eos", "stop", "cancelled" */
    int64_t prompt_tokens;      /* tokens fed as the question (after any reused context) */
    int64_t generated_tokens;
    int64_t context_tokens;     /* tokens of the context the question ran on */
    int64_t cached_tokens;      /* of those, already resident before this request */
    int prefill_reused;         /* the context was resident */
    double prefill_s, time_to_first_token_s, tokens_per_s;
} sr_sink_done;

typedef struct {
    void (*progress)(sr_sink *s, int64_t done, int64_t total); /* may be NULL */
    void (*token)(sr_sink *s, int32_t id, const char *text); /* text is valid UTF-8 */
    void (*ready)(sr_sink *s, const char *context_id);     /* a context uploaded by CreateContext; may be NULL */
    void (*done)(sr_sink *s, const sr_sink_done *d);
    void (*finish)(sr_sink *s, int status, const char *msg); /* msg NULL when OK */
} sr_sink_ops;

struct sr_sink {
    const sr_sink_ops *ops;
    void *data;                 /* the front end's */
    void *req;                  /* the coordinator's; NULL once finished or cancelled */
};

/* A question: over a resident context, or over a prompt that is the context. */
typedef struct {
    const char *context_id;     /* NULL or "": the prompt is the context */
    const char *prompt;         /* NUL-terminated text (invalid UTF-8 is replaced) */
    int chat;                   /* wrap in the model's chat template (gRPC Generate's chat) */
    /* reuse: the prompt's tokens are matched against every resident
     * context's; the longest context they start with is reused (only the
     * rest is fed), and a prompt that matched none stays resident for the
     * next turn (HTTP requests, which resend the whole conversation) */
    int reuse;
    const char *mode;           /* NULL or "": the server's default */
    int64_t block_size, anchor_size;
    int32_t max_tokens;         /* 0: the server's default */
    float temperature, top_p;
    int32_t top_k;
    uint64_t seed;
    const char *stop;           /* NULL or "": none */
} sr_coord_question;

/* Starts a question; its events go to s (s->ops set by the caller). Bad
 * arguments finish s at once with INVALID_ARGUMENT and a message. */
void sr_coord_ask(sr_coord *co, const sr_coord_question *q, sr_sink *s);
/* The client of s is gone: its work stops; s is not called again. */
void sr_coord_sink_cancel(sr_sink *s);

/* 1 when every worker is up; else 0 and why in msg. */
int sr_coord_serving(const sr_coord *co, char *msg, size_t cap);
const sr_tokenizer *sr_coord_tokenizer(const sr_coord *co);
/* The model's name (the GGUF file's base name, without .gguf). */
const char *sr_coord_model_name(const sr_coord *co);

#endif
