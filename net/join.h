/* join: the proofs of the cluster secret when a worker joins the
 * coordinator, over the control plane (control.proto: Challenge, Hello,
 * Welcome). Neither side sends the secret:
 *
 *   coordinator -> worker  Challenge  nonce_c (fresh, random)
 *   worker -> coordinator  Hello      nonce_w, HMAC-SHA256(secret, "worker" | nonce_c | nonce_w)
 *   coordinator -> worker  Welcome    HMAC-SHA256(secret, "coordinator" | nonce_w | nonce_c), key salt
 *
 * Each proof covers the other side's fresh nonce and names its own role, so
 * a recorded or reflected proof does not verify. The data plane's key is
 * derived from the secret and a salt the coordinator draws at random for
 * its run, so it never crosses the network either. Every frame after the
 * Welcome, both ways, carries a MAC under a key of this connection alone,
 * derived from the secret and both nonces (net/frame.h), so that someone
 * who can write into the connection cannot hijack it or inject, replay or
 * reorder commands. Frames are not encrypted: prompts and tokens cross the
 * control plane in the clear. */
#ifndef SR_NET_JOIN_H
#define SR_NET_JOIN_H

#include <stddef.h>

#define SR_JOIN_NONCE_BYTES 32
#define SR_JOIN_PROOF_BYTES 32
#define SR_JOIN_KEY_BYTES 32

enum { SR_JOIN_WORKER = 1, SR_JOIN_COORDINATOR = 2 };

/* The frames of the join are small: the frame cap until the Welcome, so
 * that a peer that has proved nothing cannot make either side allocate
 * more (the configured cap, --max-frame, applies after it). */
#define SR_JOIN_FRAME_MAX 4096

/* A fresh random nonce. */
int sr_join_nonce(unsigned char nonce[SR_JOIN_NONCE_BYTES]);

/* The proof of `role`: theirs is the other side's nonce, mine this side's. */
void sr_join_proof(unsigned char out[SR_JOIN_PROOF_BYTES], const unsigned char *secret, size_t secret_len, int role,
                   const unsigned char theirs[SR_JOIN_NONCE_BYTES], const unsigned char mine[SR_JOIN_NONCE_BYTES]);

/* SR_OK if proof (n bytes) is role's over these nonces (compared in
 * constant time); SR_ECOMM with a message otherwise. theirs and mine as the
 * prover passed them. */
int sr_join_check(const unsigned char *proof, size_t n, const unsigned char *secret, size_t secret_len, int role,
                  const unsigned char theirs[SR_JOIN_NONCE_BYTES], const unsigned char mine[SR_JOIN_NONCE_BYTES]);

/* The control connection's key for the frames after the join (frame.h),
 * from the secret and the nonces of its Challenge (nonce_c) and Hello
 * (nonce_w). */
void sr_join_session_key(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                         const unsigned char nonce_c[SR_JOIN_NONCE_BYTES],
                         const unsigned char nonce_w[SR_JOIN_NONCE_BYTES]);

/* The data plane's key from the secret and the coordinator's salt. */
void sr_join_data_key(unsigned char out[SR_JOIN_KEY_BYTES], const unsigned char *secret, size_t secret_len,
                      const unsigned char salt[SR_JOIN_NONCE_BYTES]);

#endif
