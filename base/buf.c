/* buf: a growing byte buffer; see buf.h. */
#include "base/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"

int sr_buf_reserve(sr_buf *b, size_t extra, size_t min_cap) {
    if (b->rc != SR_OK) return b->rc;
    if (extra > SIZE_MAX - 1 - b->len) {
        b->rc = sr_error_set(SR_ENOMEM, "buffer: %zu more bytes after %zu overflow a size", extra, b->len);
        return b->rc;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return SR_OK;
    size_t cap = b->cap ? b->cap : min_cap ? min_cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->rc = sr_error_set(SR_ENOMEM, "buffer: out of memory growing to %zu bytes", cap);
        return b->rc;
    }
    d[b->len] = 0; /* a first allocation holds no NUL yet */
    b->data = d;
    b->cap = cap;
    return SR_OK;
}

int sr_buf_append(sr_buf *b, const void *p, size_t n) {
    int rc = sr_buf_reserve(b, n, 0);
    if (rc != SR_OK) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return SR_OK;
}

int sr_buf_puts(sr_buf *b, const char *s) { return sr_buf_append(b, s, strlen(s)); }

int sr_buf_printf(sr_buf *b, const char *fmt, ...) {
    if (b->rc != SR_OK) return b->rc;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->rc = sr_error_set(SR_EINVAL, "buffer: format '%s' cannot be printed", fmt);
        return b->rc;
    }
    int rc = sr_buf_reserve(b, (size_t)n, 0);
    if (rc != SR_OK) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return SR_OK;
}

int sr_buf_status(const sr_buf *b) { return b->rc; }

void sr_buf_consume(sr_buf *b, size_t n) {
    if (n >= b->len) n = b->len;
    if (n == 0) return;
    memmove(b->data, b->data + n, b->len - n + 1);
    b->len -= n;
}

void sr_buf_clear(sr_buf *b) {
    b->len = 0;
    b->rc = SR_OK;
    if (b->data) b->data[0] = 0;
}

char *sr_buf_steal(sr_buf *b, size_t *len) {
    char *d = b->data;
    if (len) *len = b->len;
    *b = (sr_buf){0};
    return d;
}

void sr_buf_free(sr_buf *b) {
    free(b->data);
    *b = (sr_buf){0};
}
