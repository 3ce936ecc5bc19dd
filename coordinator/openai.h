/* openai: the OpenAI-compatible HTTP API of the coordinator, on net/http:
 * POST /v1/chat/completions, POST /v1/completions, GET /v1/models and
 * GET /health. Its questions go through the coordinator's front-end API
 * (front.h) with reuse on: a prompt that starts with a resident context's
 * tokens feeds only the rest, and a prompt that matched none stays
 * resident for the next turn. */
#ifndef SR_COORDINATOR_OPENAI_H
#define SR_COORDINATOR_OPENAI_H

#include <stddef.h>

#include <uv.h>

#include "coordinator/front.h"
#include "coordinator/metrics.h"

typedef struct sr_openai sr_openai;

typedef struct {
    const char *host;
    int port;               /* 0: any */
    const char *api_key;    /* NULL or "": none; /health needs none */
    size_t max_body;        /* request body bytes */
    sr_metrics *metrics;    /* NULL: none; else every answer's status is counted */
    int max_conns;          /* connections at once (net/http.h's opts; 0: its defaults) */
    double timeout_s, idle_s;
} sr_openai_opts;

int sr_openai_open(sr_openai **out, uv_loop_t *loop, sr_coord *co, const sr_openai_opts *o);
/* NULL is fine. */
void sr_openai_close(sr_openai *a);
int sr_openai_port(const sr_openai *a);

#endif
