/* sampler: picks the next token from a logit vector.
 *
 * Order of the steps: repetition penalty over the last repeat_last_n
 * accepted tokens (a positive logit is divided by the penalty, a negative
 * one multiplied, as llama.cpp does); then temperature 0 is greedy (argmax);
 * otherwise logits / temperature, top-k, softmax, top-p (the smallest set of
 * most likely tokens whose mass reaches top_p), and a draw from what is left
 * with a seeded generator, so a seed replays a run. */
#ifndef SR_MODEL_SAMPLER_H
#define SR_MODEL_SAMPLER_H

#include <stdint.h>

typedef struct {
    float temperature;    /* 0: greedy */
    int top_k;            /* 0: off */
    float top_p;          /* 1: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n;    /* tokens of history the penalty looks at */
    uint64_t seed;
} sr_sampler_params;

typedef struct {
    int32_t id;
    float p;              /* logit, then probability */
} sr_sampler_cand;

typedef struct {
    sr_sampler_params p;
    int vocab_size;
    uint64_t rng;
    int32_t *recent;      /* (repeat_last_n) ring of accepted tokens */
    int64_t n_recent;     /* tokens accepted so far */
    sr_sampler_cand *cand;/* (vocab_size) scratch */
    float *work;          /* (vocab_size) penalised logits */
} sr_sampler;

/* Defaults: greedy, top_k 40, top_p 0.95, no penalty over 64 tokens, seed 0. */
sr_sampler_params sr_sampler_defaults(void);

int sr_sampler_build(sr_sampler *s, const sr_sampler_params *p, int vocab_size);
void sr_sampler_free(sr_sampler *s);

/* Adds a token to the penalty history (prompt tokens and generated ones). */
void sr_sampler_accept(sr_sampler *s, int32_t id);

/* Chooses a token from logits[vocab_size] (not modified). */
int32_t sr_sampler_sample(sr_sampler *s, const float *logits);

#endif
