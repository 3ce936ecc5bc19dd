/* Sizes and names of ggml tensor types: the facts every reader of GGUF
 * tensor data needs, whether or not this build can multiply by the type. */
#include <stddef.h>

#include "gguf/gguf.h"

typedef struct {
    const char *name;
    int64_t block;      /* elements per block */
    uint64_t bytes;     /* bytes per block */
} ggml_type_info;

static ggml_type_info type_info(uint32_t type) {
    switch (type) {
    case SR_GGML_F32: return (ggml_type_info){"F32", 1, 4};
    case SR_GGML_F16: return (ggml_type_info){"F16", 1, 2};
    case SR_GGML_BF16: return (ggml_type_info){"BF16", 1, 2};
    case SR_GGML_Q4_0: return (ggml_type_info){"Q4_0", 32, 18};
    case SR_GGML_Q4_1: return (ggml_type_info){"Q4_1", 32, 20};
    case 6: return (ggml_type_info){"Q5_0", 32, 22};
    case 7: return (ggml_type_info){"Q5_1", 32, 24};
    case SR_GGML_Q8_0: return (ggml_type_info){"Q8_0", 32, 34};
    case 10: return (ggml_type_info){"Q2_K", 256, 84};
    case 11: return (ggml_type_info){"Q3_K", 256, 110};
    case 12: return (ggml_type_info){"Q4_K", 256, 144};
    case 13: return (ggml_type_info){"Q5_K", 256, 176};
    case SR_GGML_Q6_K: return (ggml_type_info){"Q6_K", 256, 210};
    default: return (ggml_type_info){NULL, 0, 0};
    }
}

uint64_t sr_ggml_row_bytes(uint32_t type, int64_t n) {
    ggml_type_info t = type_info(type);
    if (t.block == 0 || n < 0 || n % t.block != 0) return 0;
    return (uint64_t)(n / t.block) * t.bytes;
}

const char *sr_ggml_type_name(uint32_t type) {
    const char *name = type_info(type).name;
    return name ? name : "unknown";
}
