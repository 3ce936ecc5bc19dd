/* auth: the client APIs' bearer token (--api-key). A request proves it
 * with "Bearer KEY" in its authorization header (gRPC metadata, or the
 * HTTP Authorization header). Both sides are hashed (BLAKE2b, libsodium)
 * and the hashes compared in constant time, so neither the key's bytes nor
 * its length show in the time an answer takes. */
#ifndef SR_COORDINATOR_AUTH_H
#define SR_COORDINATOR_AUTH_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int on;                 /* a key is set */
    uint8_t want[32];       /* hash of "Bearer KEY" */
} sr_auth;

/* key NULL or "": no key asked for. */
int sr_auth_init(sr_auth *a, const char *key);
/* 1 if the authorization value (NULL: none sent) carries the key, or no
 * key is set. */
int sr_auth_check(const sr_auth *a, const char *value, size_t len);

#endif
