/* fp16 and bf16 <-> fp32 conversion, scalar. Vector code converts with its
 * own intrinsics (F16C, AVX-512 BF16) and checks against these. */
#ifndef SR_BASE_HALF_H
#define SR_BASE_HALF_H

#include <stdint.h>
#include <string.h>

typedef uint16_t sr_f16;
typedef uint16_t sr_bf16;

static inline float sr_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t sr_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float sr_bf16_to_f32(sr_bf16 h) {
    return sr_f32_from_bits((uint32_t)h << 16);
}

/* round to nearest even; NaN stays NaN */
static inline sr_bf16 sr_f32_to_bf16(float f) {
    uint32_t u = sr_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (sr_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (sr_bf16)(u >> 16);
}

static inline float sr_f16_to_f32(sr_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400u) == 0);
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return sr_f32_from_bits(u);
}

/* round to nearest even, overflow to inf */
static inline sr_f16 sr_f32_to_f16(float f) {
    uint32_t u = sr_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (sr_f16)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (sr_f16)(sign | 0x7c00u); /* rounds to >= 65520 */
    if (a < 0x38800000u) { /* result is subnormal or zero */
        if (a < 0x33000000u) return (sr_f16)sign;
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 113 - (int)(a >> 23) + 13; /* 126-14 = 112 + 1 */
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (sr_f16)(sign | r);
    }
    uint32_t r = ((a >> 13) - (112u << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (sr_f16)(sign | r);
}

#endif
