/* Status codes and the per-thread error message.
 *
 * Every fallible function returns SR_OK (0) or a negative SR_E* code. Where
 * there is more to say than the code's name, the function also records a
 * message a user can act on with sr_error_set(); callers read it with
 * sr_error_msg() on the same thread. */
#ifndef SR_BASE_STATUS_H
#define SR_BASE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SR_OK = 0,
    SR_EINVAL = -1,       /* bad argument */
    SR_ENOMEM = -2,       /* allocation failed */
    SR_EIO = -3,          /* file or socket I/O failed */
    SR_EFORMAT = -4,      /* malformed input (file, message) */
    SR_EUNSUPPORTED = -5, /* valid but not supported by this build */
    SR_ERANGE = -6,       /* a size or index is out of bounds */
    SR_EDEVICE = -7,      /* CUDA / NCCL error */
    SR_ECOMM = -8,        /* MPI / network transport error */
    SR_ESTATE = -9,       /* call not valid in the current state */
};

/* Name of a code, e.g. "SR_EFORMAT: malformed input". */
const char *sr_strerror(int code);

/* Records a message for this thread and returns `code`, so that callers can
 * write `return sr_error_set(SR_EINVAL, "head_dim %d not supported", d);` */
int sr_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Last message recorded on this thread, or the code's name if none. */
const char *sr_error_msg(void);

/* Clears this thread's message. */
void sr_error_clear(void);

#ifdef __cplusplus
}
#endif

#endif
