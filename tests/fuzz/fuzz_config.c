/* libFuzzer: daemon/config.c's config file parser on any bytes. It must
 * return SR_OK or an error with a message, never crash, leak or read past
 * the input; what it accepts must print (--print-config) to a file that
 * reads back to the same values. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sr_config c, back;
    if (sr_config_init(&c) != SR_OK) abort();
    /* a copy of exactly size bytes, so that ASan sees any read past them */
    char *text = malloc(size ? size : 1);
    if (!text) abort();
    memcpy(text, data, size);
    int rc = sr_config_parse_text(&c, text, size, "fuzz.conf");
    free(text);
    if (rc != SR_OK) {
        if (!*sr_error_msg()) abort();
        sr_config_free(&c);
        return 0;
    }
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) abort();
    sr_config_print(f, &c);
    fclose(f);
    if (sr_config_init(&back) != SR_OK || sr_config_parse_text(&back, buf, n, "printed") != SR_OK) abort();
    for (int i = 0; i < SR_CFG_N; i++)
        if ((c.s[i] == NULL) != (back.s[i] == NULL) || (c.s[i] && strcmp(c.s[i], back.s[i])) || c.v[i] != back.v[i])
            abort();
    free(buf);
    sr_config_free(&c);
    sr_config_free(&back);
    return 0;
}
