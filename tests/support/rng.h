/* The deterministic random numbers of every test (unit, mpi, gpu): a
 * splitmix64 stream, which any seed (0 too) starts, and the same mixer as a
 * hash of (seed, position, index), so that each MPI rank can build any
 * token's rows without sharing a stream. Header only; C and C++ (nvcc). */
#ifndef SR_TESTS_SUPPORT_RNG_H
#define SR_TESTS_SUPPORT_RNG_H

#include <stdint.h>

/* splitmix64's finaliser: a bijection of 64-bit words that mixes every bit */
static inline uint64_t sr_test_rng_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The next 64 random bits of the stream in *state. */
static inline uint64_t sr_test_rng_next(uint64_t *state) {
    return sr_test_rng_mix(*state += 0x9e3779b97f4a7c15ull);
}

/* Uniform in [0, 1), 53 random bits. */
static inline double sr_test_rng_unit(uint64_t *state) {
    return (double)(sr_test_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform between lo and hi (rounding to float may give hi itself). */
static inline float sr_test_rng_float(uint64_t *state, float lo, float hi) {
    return (float)((double)lo + ((double)hi - (double)lo) * sr_test_rng_unit(state));
}

/* Uniform in [0, n) for n >= 1 (the modulo bias is below n / 2^64). */
static inline uint64_t sr_test_rng_below(uint64_t *state, uint64_t n) {
    return sr_test_rng_next(state) % n;
}

/* Uniform in [-1, 1) from (seed, pos, idx) alone. */
static inline float sr_test_rng_at(uint64_t seed, int64_t pos, int64_t idx) {
    uint64_t z = sr_test_rng_mix(seed * 0x9e3779b97f4a7c15ull + (uint64_t)pos * 0xbf58476d1ce4e5b9ull +
                                 (uint64_t)idx + 1);
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#endif
