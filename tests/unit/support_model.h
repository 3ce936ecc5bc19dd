/* Where the unit tests find the real model. */
#ifndef SR_TESTS_SUPPORT_MODEL_H
#define SR_TESTS_SUPPORT_MODEL_H

#include <stddef.h>

/* $SR_MODEL, else the file scripts/fetch-model caches, else NULL. */
const char *sr_test_model_path(char *buf, size_t cap);

#endif
