/* sampler: penalty, greedy, temperature, top-k, top-p (see sampler.h). */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"

sr_sampler_params sr_sampler_defaults(void) {
    return (sr_sampler_params){.temperature = 0.0f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f,
                               .repeat_last_n = 64, .seed = 0};
}

int sr_sampler_build(sr_sampler *s, const sr_sampler_params *p, int vocab_size) {
    memset(s, 0, sizeof(*s));
    if (vocab_size <= 0) return sr_error_set(SR_EINVAL, "sampler: vocabulary size %d", vocab_size);
    if (!(p->temperature >= 0) || p->top_k < 0 || !(p->top_p > 0 && p->top_p <= 1) ||
        !(p->repeat_penalty > 0) || p->repeat_last_n < 0)
        return sr_error_set(SR_EINVAL, "sampler: need temperature >= 0, top-k >= 0, 0 < top-p <= 1, "
                                       "repeat penalty > 0 and repeat window >= 0");
    s->p = *p;
    s->vocab_size = vocab_size;
    s->rng = p->seed;
    s->cand = malloc((size_t)vocab_size * sizeof(*s->cand));
    s->work = malloc((size_t)vocab_size * sizeof(*s->work));
    s->recent = malloc((size_t)(p->repeat_last_n > 0 ? p->repeat_last_n : 1) * sizeof(*s->recent));
    if (!s->cand || !s->work || !s->recent) {
        sr_sampler_free(s);
        return sr_error_set(SR_ENOMEM, "sampler: out of memory");
    }
    return SR_OK;
}

void sr_sampler_free(sr_sampler *s) {
    free(s->cand);
    free(s->work);
    free(s->recent);
    memset(s, 0, sizeof(*s));
}

void sr_sampler_accept(sr_sampler *s, int32_t id) {
    if (s->p.repeat_last_n == 0) return;
    s->recent[s->n_recent % s->p.repeat_last_n] = id;
    s->n_recent++;
}

/* splitmix64: a uniform float in [0, 1) */
static float uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

static int cand_desc(const void *a, const void *b) {
    float x = ((const sr_sampler_cand *)a)->p, y = ((const sr_sampler_cand *)b)->p;
    if (x != y) return x < y ? 1 : -1;
    int32_t i = ((const sr_sampler_cand *)a)->id, j = ((const sr_sampler_cand *)b)->id;
    return (i > j) - (i < j); /* ties by id, so a seed replays exactly */
}

/* a ranks below b (smaller probability; ties: larger id) */
static int cand_less(const sr_sampler_cand *a, const sr_sampler_cand *b) {
    return cand_desc(a, b) > 0;
}

static void cand_swap(sr_sampler_cand *a, sr_sampler_cand *b) {
    sr_sampler_cand t = *a;
    *a = *b;
    *b = t;
}

/* Moves the k largest of n candidates to the front, sorted descending: a
 * min-heap of k holds the best seen so far, then a sort of those k. */
static void top_k_front(sr_sampler_cand *c, int64_t n, int64_t k) {
    for (int64_t i = 1; i < k; i++)
        for (int64_t j = i; j > 0 && cand_less(&c[j], &c[(j - 1) / 2]); j = (j - 1) / 2)
            cand_swap(&c[j], &c[(j - 1) / 2]);
    for (int64_t i = k; i < n; i++) {
        if (!cand_less(&c[0], &c[i])) continue;
        c[0] = c[i];
        for (int64_t j = 0;;) {
            int64_t l = 2 * j + 1, r = l + 1, m = j;
            if (l < k && cand_less(&c[l], &c[m])) m = l;
            if (r < k && cand_less(&c[r], &c[m])) m = r;
            if (m == j) break;
            cand_swap(&c[m], &c[j]);
            j = m;
        }
    }
    qsort(c, (size_t)k, sizeof(*c), cand_desc);
}

int32_t sr_sampler_sample(sr_sampler *s, const float *logits) {
    int64_t V = s->vocab_size;
    const float *lg = logits;
    if (s->p.repeat_penalty != 1.0f && s->n_recent > 0) {
        memcpy(s->work, logits, (size_t)V * sizeof(float));
        int64_t n = s->n_recent < s->p.repeat_last_n ? s->n_recent : s->p.repeat_last_n;
        for (int64_t i = 0; i < n; i++) {
            int32_t id = s->recent[i];
            if (id < 0 || id >= V) continue;
            /* a token repeated in the window is penalised once */
            int seen = 0;
            for (int64_t j = 0; j < i && !seen; j++) seen = s->recent[j] == id;
            if (seen) continue;
            s->work[id] = logits[id] > 0 ? logits[id] / s->p.repeat_penalty : logits[id] * s->p.repeat_penalty;
        }
        lg = s->work;
    }
    if (s->p.temperature == 0.0f) {
        int32_t best = 0;
        for (int64_t i = 1; i < V; i++)
            if (lg[i] > lg[best]) best = (int32_t)i;
        return best;
    }
    sr_sampler_cand *c = s->cand;
    for (int64_t i = 0; i < V; i++) c[i] = (sr_sampler_cand){(int32_t)i, lg[i] / s->p.temperature};
    int64_t n = V;
    if (s->p.top_k > 0 && s->p.top_k < V) {
        n = s->p.top_k;
        top_k_front(c, V, n);
    } else if (s->p.top_p < 1.0f) {
        qsort(c, (size_t)V, sizeof(*c), cand_desc);
    }
    float mx = c[0].p;
    for (int64_t i = 1; i < n; i++) mx = c[i].p > mx ? c[i].p : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        c[i].p = expf(c[i].p - mx);
        sum += c[i].p;
    }
    for (int64_t i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
    if (s->p.top_p < 1.0f) { /* candidates are sorted here: keep the head reaching top_p */
        double cum = 0;
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (int64_t i = 0; i < n; i++) sum += c[i].p;
    } else {
        sum = 1.0;
    }
    double r = (double)uniform(&s->rng) * sum, acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}
