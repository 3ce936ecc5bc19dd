/* buf: a growing byte buffer (text being put together, a message being
 * framed, bytes read so far).
 *
 * The bytes are kept NUL-terminated (the NUL is not counted in len), so a
 * buffer of text can be handed on as a C string. The first failure is kept:
 * after it every append does nothing and returns the same code, so a caller
 * that appends many pieces may check once, at the end (sr_buf_status). */
#ifndef SR_BASE_BUF_H
#define SR_BASE_BUF_H

#include <stddef.h>

typedef struct {
    char *data; /* len bytes and a NUL, or NULL while nothing was reserved */
    size_t len, cap;
    int rc; /* SR_OK, or the first failure's code */
} sr_buf;

/* Room for `extra` more bytes (and the NUL) without another allocation;
 * capacity at least doubles, from `min_cap` (0: 256). SR_ENOMEM when the
 * size overflows or the allocation fails, with a message. */
int sr_buf_reserve(sr_buf *b, size_t extra, size_t min_cap);

/* Appends n bytes of p (p may be NULL when n is 0). */
int sr_buf_append(sr_buf *b, const void *p, size_t n);

/* Appends a C string, without its NUL. */
int sr_buf_puts(sr_buf *b, const char *s);

/* Appends printf-formatted text. */
int sr_buf_printf(sr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* SR_OK, or the code of the first failure since the buffer was empty. */
int sr_buf_status(const sr_buf *b);

/* Drops the first n bytes (all of them when n >= len), keeping the memory. */
void sr_buf_consume(sr_buf *b, size_t n);

/* Empties b, keeping its memory, and forgets a failure. */
void sr_buf_clear(sr_buf *b);

/* Hands the bytes to the caller (free() them; NULL when nothing was
 * appended), their length in *len when len is not NULL; b is left empty. */
char *sr_buf_steal(sr_buf *b, size_t *len);

/* Frees the bytes; b is left empty and may be used again. */
void sr_buf_free(sr_buf *b);

#endif
