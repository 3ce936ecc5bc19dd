/* transport: the data plane. Byte buffers between the ranks of a job (KV
 * blocks, queries, partial attention results), with one interface and four
 * backends chosen by name:
 *
 *   "mpi"   Open MPI, CPU memory; the default under mpirun.
 *   "ucx"   UCX (UCP active messages: shared memory, TCP, RDMA verbs where
 *           present), CPU memory; worker addresses exchanged by a
 *           caller-supplied allgather (sr_tp_opts.exchange: the coordinator
 *           at join), or over MPI under mpirun. Peers prove the job key per
 *           endpoint at open; see transport/ucx.c for what that protects.
 *   "tcp"   plain sockets, no MPI: for processes not started by mpirun;
 *           peers prove a shared secret at open (see sr_tp_opts).
 *   "nccl"  NCCL, GPU memory (make CUDA=1); bootstrapped over MPI.
 *
 * Why tcp stays next to ucx. On one host ucx is far faster (starring-bench
 * transport, 2 ranks, 2-core EPYC under load, medians of 3 runs: 8 B
 * ping-pong 1.2 us against tcp's 49 us; streams 1.5x to 13x tcp's bandwidth
 * at every size from 8 B to 64 MiB) because UCX uses shared memory there;
 * between hosts both are TCP unless the network has RDMA. tcp earns its
 * place by what ucx lacks: it needs nothing but sockets (no UCX, and no
 * coordinator or MPI for the rendezvous: a host list does); every
 * connection is authenticated before a byte of it is accepted, and its wire
 * format is ours, capped and fuzzed. ucx's handshake keeps out UCX clients without the key, not
 * someone who forges UCX's packets (see transport/ucx.c).
 *
 * A transport (sr_tp) is a long-lived handle; each isend/irecv is a one-shot
 * request (sr_tp_req) that completes in the background and is released by
 * sr_tp_wait. A receive must name the exact length of the message it expects:
 * a message of another length fails the receive with SR_EFORMAT.
 *
 * Matching is by (peer, tag), first posted first matched, so messages with
 * different tags may be received in any order. The nccl backend has no tags:
 * between two ranks it delivers messages in the order they were posted.
 *
 * Collectives (barrier, bcast, gather) are blocking and must be called by
 * every rank in the same order; they may not be mixed with pending requests
 * on the same tags. */
#ifndef SR_TRANSPORT_TRANSPORT_H
#define SR_TRANSPORT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

/* User tags are 0..SR_TP_TAG_MAX; tags above are the transport's own. */
#define SR_TP_TAG_MAX 30000

typedef struct sr_tp sr_tp;
typedef struct sr_tp_req sr_tp_req;

typedef struct {
    /* tcp: this process's rank and the job size; -1 reads them from the
     * environment (SR_RANK/SR_SIZE, then OMPI_COMM_WORLD_RANK/SIZE, then
     * PMI_RANK/PMI_SIZE). mpi and nccl take them from the communicator. */
    int rank, size;
    /* tcp rendezvous: "host:port,host:port,..." with one entry per rank, in
     * rank order; NULL reads env SR_TCP_HOSTS. Rank r listens on its own
     * entry's address only (so it must be an address of r's machine).
     * Without either, rank r listens on 127.0.0.1:base_port + r. */
    const char *hosts;
    int base_port;    /* 0 reads env SR_TCP_PORT, else 29500 */
    double timeout_s; /* tcp, ucx: how long to wait for peers at open; 0 means 60 */
    /* tcp: how long one connection may take over its handshake; 0 means 5 */
    double handshake_timeout_s;
    /* tcp, ucx: a peer from which nothing arrives for this long has failed,
     * and so does every request on it. Progress threads send heartbeats, so a
     * peer that computes between messages is still heard: this bounds
     * silence, not work. 0 reads env SR_TCP_IO_TIMEOUT (seconds), else 30
     * (ucx: 0 means 30). */
    double io_timeout_s;
    /* tcp: the job secret, a file of 16 to 4096 bytes readable only by its
     * owner (mode 600), the same on every rank; each connection proves it by
     * HMAC-SHA256 challenge-response before any data flows. NULL reads env
     * SR_TCP_SECRET_FILE; a job of more than one rank fails to open without
     * it. Make one with: head -c 32 /dev/urandom > key; chmod 600 key */
    const char *secret_file;
    /* tcp: the job's name in the handshake (1 to 63 printable characters,
     * no spaces): a rank of another job is refused even if it holds the same
     * secret. NULL reads env SR_TCP_JOB_ID, else one is derived from the
     * size and the endpoints (so set it to tell successive runs apart). */
    const char *job_id;
    /* tcp: the largest message, sent or received; a peer's frame header that
     * says more fails it. 0 reads env SR_TCP_MAX_MSG (bytes, or with a K, M,
     * G or T suffix), else 4G. */
    int64_t max_msg_bytes;
    /* tcp: bytes a peer may have sent for receives not yet posted, each
     * message's record (64 bytes) included; more fail it. 0 reads env
     * SR_TCP_MAX_BUFFERED, else two largest messages + 1M. ucx: the same cap
     * on eager messages (a rendezvous one stays with the sender until
     * received, and adds only its record); 0 means 1 GiB. */
    int64_t max_buffered_bytes;
    /* mpi, nccl: pointer to the MPI_Comm to use (it is duplicated); NULL
     * means MPI_COMM_WORLD. */
    const void *mpi_comm;
    int device; /* nccl: CUDA device; -1 means local rank % device count */
    /* ucx: the address exchange, an allgather of equal-sized blocks: every
     * rank passes len bytes in send and gets every rank's len bytes, in rank
     * order, in recv (size * len bytes); returns SR_OK or a code with its
     * message. Collective: called the same number of times on every rank.
     * NULL under mpirun exchanges over MPI (mpi_comm, or MPI_COMM_WORLD) and
     * takes rank and size from that communicator; NULL otherwise fails to
     * open. With it, rank and size are as for tcp (-1 reads the environment). */
    int (*exchange)(void *exchange_data, const void *send, size_t len, void *recv);
    void *exchange_data;
    /* ucx, tcp: the job key (16 to 4096 bytes, the same on every rank), e.g.
     * one the coordinator hands out at join; NULL reads secret_file. ucx over
     * MPI without either: rank 0 draws a fresh key and broadcasts it. */
    const unsigned char *key;
    size_t key_len;
} sr_tp_opts;

/* Reads a secret file as tcp's secret_file (16 to 4096 bytes, a regular
 * file of mode 600) into key, the SHA-256 of its bytes; `what` names the
 * option in the messages ("--cluster-secret-file"). */
#define SR_TP_SECRET_BYTES 32
int sr_tp_secret_read(const char *path, const char *what, unsigned char key[SR_TP_SECRET_BYTES]);

/* Options with every field at its default. */
sr_tp_opts sr_tp_opts_default(void);

/* Initialises MPI once per process with MPI_THREAD_FUNNELED (or checks the
 * level if the caller already did). Safe to call many times. */
int sr_tp_mpi_init(int *argc, char ***argv);

/* Whether a backend name is compiled in and usable in this process
 * ("nccl" also needs a visible GPU; "mpi" needs MPI initialised). */
int sr_tp_available(const char *backend);

/* Opens a transport over every rank of the job; collective (every rank calls
 * it). opts may be NULL. On failure *out is NULL and the message says why. */
int sr_tp_open(sr_tp **out, const char *backend, const sr_tp_opts *opts);

/* Closes the transport; every request must have been waited on. Collective
 * for mpi and nccl. NULL is a no-op. */
void sr_tp_close(sr_tp *tp);

int sr_tp_rank(const sr_tp *tp);
int sr_tp_size(const sr_tp *tp);
const char *sr_tp_name(const sr_tp *tp);
/* 1 if buffers are device (GPU) memory, as for nccl. */
int sr_tp_device_memory(const sr_tp *tp);

/* Starts sending len bytes of buf to peer. buf must stay valid and unchanged
 * until the request completes. peer may be this rank. */
int sr_tp_isend(sr_tp *tp, const void *buf, int64_t len, int peer, int tag, sr_tp_req **req);

/* Starts receiving exactly len bytes from peer into buf. */
int sr_tp_irecv(sr_tp *tp, void *buf, int64_t len, int peer, int tag, sr_tp_req **req);

/* Polls a request and drives the transport's progress: *done is 1 once it
 * has completed (successfully or not). The request stays owned by the caller
 * until sr_tp_wait. */
int sr_tp_test(sr_tp_req *req, int *done);

/* Waits for a request to complete, releases it and returns its status
 * (SR_OK, or a negative code with its message on this thread). NULL is SR_OK. */
int sr_tp_wait(sr_tp_req *req);

/* Waits for n requests (NULL entries are skipped), releasing all of them;
 * returns the first failure. */
int sr_tp_waitall(int n, sr_tp_req **reqs);

/* Bytes of the messages completed to and from other ranks (collectives
 * included; a rank's messages to itself are not), since the open. Any
 * thread may read them while another uses the transport. */
void sr_tp_bytes(const sr_tp *tp, int64_t *sent, int64_t *received);

/* Returns once every rank has entered the barrier. */
int sr_tp_barrier(sr_tp *tp);

/* Copies len bytes of root's buf into buf on every rank. */
int sr_tp_bcast(sr_tp *tp, void *buf, int64_t len, int root);

/* Root receives every rank's len bytes, in rank order, into recv (size *
 * len bytes); recv is ignored on other ranks. */
int sr_tp_gather(sr_tp *tp, const void *send, int64_t len, void *recv, int root);

/* Every rank receives every rank's len bytes into recv (size * len bytes). */
int sr_tp_allgather(sr_tp *tp, const void *send, int64_t len, void *recv);

/* ---- backend interface (for transport_*.c) ---- */

typedef struct {
    const char *name;
    size_t req_size; /* bytes of the backend's request struct, sr_tp_req first */
    int (*available)(void);
    int (*open)(sr_tp *tp, const sr_tp_opts *opts);
    void (*close)(sr_tp *tp);
    int (*isend)(sr_tp *tp, sr_tp_req *req, const void *buf, int64_t len, int peer, int tag);
    int (*irecv)(sr_tp *tp, sr_tp_req *req, void *buf, int64_t len, int peer, int tag);
    int (*test)(sr_tp_req *req, int *done);
    int (*wait)(sr_tp_req *req); /* completes, then the frontend frees */
    /* Optional native collectives; NULL uses point-to-point in transport.c. */
    int (*barrier)(sr_tp *tp);
    int (*bcast)(sr_tp *tp, void *buf, int64_t len, int root);
    int (*gather)(sr_tp *tp, const void *send, int64_t len, void *recv, int root);
} sr_tp_backend;

struct sr_tp {
    const sr_tp_backend *be;
    int rank, size;
    int device_memory;
    void *impl; /* the backend's state */
    void *data; /* free for the user */
    int64_t sent_bytes, received_bytes; /* sr_tp_bytes (atomic) */
};

struct sr_tp_req {
    sr_tp *tp;
    int64_t len;
    int peer, tag;
    int is_send;
    void *data; /* free for the user */
};

extern const sr_tp_backend sr_tp_mpi_backend;
extern const sr_tp_backend sr_tp_tcp_backend;
extern const sr_tp_backend sr_tp_ucx_backend;
extern const sr_tp_backend sr_tp_nccl_backend;

#endif
