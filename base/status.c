#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_msg[512];

const char *sr_strerror(int code) {
    switch (code) {
    case SR_OK: return "SR_OK: success";
    case SR_EINVAL: return "SR_EINVAL: invalid argument";
    case SR_ENOMEM: return "SR_ENOMEM: out of memory";
    case SR_EIO: return "SR_EIO: I/O error";
    case SR_EFORMAT: return "SR_EFORMAT: malformed input";
    case SR_EUNSUPPORTED: return "SR_EUNSUPPORTED: not supported";
    case SR_ERANGE: return "SR_ERANGE: out of range";
    case SR_EDEVICE: return "SR_EDEVICE: device error";
    case SR_ECOMM: return "SR_ECOMM: communication error";
    case SR_ESTATE: return "SR_ESTATE: invalid state";
    default: return "unknown error code";
    }
}

int sr_error_set(int code, const char *fmt, ...) {
    /* through a copy: a caller may pass sr_error_msg() itself as an argument,
     * to add context to the message below it */
    char buf[sizeof last_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(last_msg, buf, sizeof buf);
    return code;
}

const char *sr_error_msg(void) { return last_msg[0] ? last_msg : "no error message recorded"; }

void sr_error_clear(void) { last_msg[0] = '\0'; }
