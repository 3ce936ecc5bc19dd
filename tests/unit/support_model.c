#include "tests/unit/support_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

const char *sr_test_model_path(char *buf, size_t cap) {
    const char *env = getenv("SR_MODEL");
    if (env && *env) return env;
    /* where scripts/fetch-model caches it */
    const char *cache = getenv("STARRING_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (cache && *cache)
        snprintf(buf, cap, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else if (xdg && *xdg)
        snprintf(buf, cap, "%s/starring/models/SmolLM2-135M-Instruct.Q4_1.gguf", xdg);
    else
        snprintf(buf, cap, "%s/.cache/starring/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    return access(buf, R_OK) == 0 ? buf : NULL;
}
