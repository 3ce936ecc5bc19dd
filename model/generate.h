/* generate: prompt -> batched prefill -> decode loop, streaming text.
 *
 * Generation stops at an end-of-generation token (not emitted), at the stop
 * string (not emitted, nor anything after it), after n_predict tokens, or
 * when the callback returns non-zero. Text is handed to the callback as soon
 * as it is final: bytes that might begin the stop string or an unfinished
 * UTF-8 character wait for the next token. */
#ifndef SR_MODEL_GENERATE_H
#define SR_MODEL_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "model/sampler.h"
#include "tokenizer/tokenizer.h"

/* Receives each piece of text; returns non-zero to stop. */
typedef int (*sr_gen_emit_fn)(void *data, const char *text, size_t len);

typedef struct {
    int64_t n_predict;          /* most tokens to generate */
    sr_sampler_params sampling;
    const char *stop;           /* stop string, or NULL */
    /* sr_gen_run_fed: where the feed leaves the logits (vocab), so that
     * generations over one model can sample at once; NULL: m->state.logits */
    const float *logits;
} sr_gen_params;

enum { SR_GEN_LENGTH = 0, SR_GEN_EOG = 1, SR_GEN_STOP_STRING = 2, SR_GEN_CALLBACK = 3 };

typedef struct {
    int64_t n_prompt;    /* tokens prefilled */
    double t_prompt;     /* seconds of prefill */
    int64_t n_gen;       /* tokens sampled */
    int64_t n_decode;    /* decode forward passes (one per fed-back token) */
    double t_decode;     /* seconds in those passes and their sampling */
    int stop_reason;     /* SR_GEN_* */
} sr_gen_stats;

/* Prefills the prompt at the end of the model's cache (position 0 for an
 * empty cache) and generates. */
int sr_gen_run(sr_model *m, const sr_tokenizer *tok, const int32_t *prompt, int64_t n_prompt,
               const sr_gen_params *p, sr_gen_emit_fn emit, void *data, sr_gen_stats *stats);

/* Feeds n tokens after everything so far and leaves the logits of the last
 * in the model's state (a single-process forward, or a context-parallel step). */
typedef int (*sr_gen_feed_fn)(void *data, const int32_t *tokens, int64_t n);

/* The loop of sr_gen_run over any feed: feeds the prompt (n_prompt may be 0:
 * then sampling starts from the logits already in m's state), then samples
 * and feeds back one token at a time. */
int sr_gen_run_fed(sr_model *m, sr_gen_feed_fn feed, void *feed_data, const sr_tokenizer *tok,
                   const int32_t *prompt, int64_t n_prompt, const sr_gen_params *p, sr_gen_emit_fn emit,
                   void *data, sr_gen_stats *stats);

#endif
