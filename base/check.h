/* One CHECK macro per library: on failure each returns from the enclosing
 * function with a negative SR_E* code and a message naming the file, the
 * line, the call and the library's own error string.
 *
 * The macros need nothing from the libraries until they are used, so this
 * header includes none of them: the file that uses SR_MPI_CHECK includes
 * <mpi.h>, the one that uses SR_CUDA_CHECK <cuda_runtime.h>, and so on. */
#ifndef SR_BASE_CHECK_H
#define SR_BASE_CHECK_H

#include "base/status.h"

/* The shape of CUDA's and NCCL's: a call returns a code of type, ok on
 * success, that str names. what is the call as written. */
#define SR_CHECK__CODE(type, ok, str, what, call)                                              \
    do {                                                                                       \
        type sr_check_e_ = (call);                                                             \
        if (sr_check_e_ != (ok))                                                               \
            return sr_error_set(SR_EDEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, what,         \
                                str(sr_check_e_));                                             \
    } while (0)

#define SR_CUDA_CHECK(call) SR_CHECK__CODE(cudaError_t, cudaSuccess, cudaGetErrorString, #call, call)
#define SR_NCCL_CHECK(call) SR_CHECK__CODE(ncclResult_t, ncclSuccess, ncclGetErrorString, #call, call)

#define SR_MPI_CHECK(call)                                                                     \
    do {                                                                                       \
        int sr_mpi_rc_ = (call);                                                               \
        if (sr_mpi_rc_ != MPI_SUCCESS) {                                                       \
            char sr_mpi_s_[MPI_MAX_ERROR_STRING];                                              \
            int sr_mpi_n_ = 0;                                                                 \
            if (MPI_Error_string(sr_mpi_rc_, sr_mpi_s_, &sr_mpi_n_) != MPI_SUCCESS) sr_mpi_n_ = 0; \
            sr_mpi_s_[sr_mpi_n_] = '\0';                                                       \
            return sr_error_set(SR_ECOMM, "%s:%d: %s: %s", __FILE__, __LINE__, #call,          \
                                sr_mpi_n_ ? sr_mpi_s_ : "unknown MPI error");                  \
        }                                                                                      \
    } while (0)

#endif
