/* transport "tcp", start-up: settings, the job secret, and the mesh of
 * authenticated connections (see tcp_mesh.h; the handshake is in
 * tcp_wire.h). One poll loop serves the listening socket, every inbound
 * handshake and every dial to a lower rank at once, so a peer that connects
 * and sends nothing costs one slot until its deadline, not the job's start. */
#include "transport/tcp_mesh.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"

#define DEFAULT_PORT 29500
#define DEFAULT_OPEN_S 60.0
#define DEFAULT_HANDSHAKE_S 5.0
#define DEFAULT_IO_S 30.0
#define DEFAULT_MAX_MSG ((int64_t)4 << 30)
#define REDIAL_S 0.05
/* inbound handshakes in flight beyond the ranks that may still connect */
#define SPARE_SLOTS 32

/* sr_error_set must not be handed the message it is about to replace */
static const char *saved_msg(char *buf, size_t n) {
    snprintf(buf, n, "%s", sr_error_msg());
    return buf;
}

/* ---- settings ---- */

/* 1 and *v if env `name` holds an integer in lo..hi, 0 if it is unset, else
 * an error naming it. */
static int env_long(const char *name, long long lo, long long hi, long long *v) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return sr_error_set(SR_EINVAL, "%s='%s' is not a whole number in %lld..%lld", name, s, lo, hi);
    *v = x;
    return 1;
}

/* The first of the variables that is set (rank and size under several
 * launchers), or -1. */
static int env_rank(const char *const names[3], long long hi, int *out) {
    for (int i = 0; i < 3; i++) {
        long long v = 0;
        int rc = env_long(names[i], 0, hi, &v);
        if (rc < 0) return rc;
        if (rc) {
            *out = (int)v;
            return SR_OK;
        }
    }
    *out = -1;
    return SR_OK;
}

/* A byte count: digits with an optional K, M, G or T (powers of 1024). */
static int env_bytes(const char *name, int64_t lo, int64_t hi, int64_t *v) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    int shift = 0;
    if (*end) {
        const char *units = "KMGT", *u = strchr(units, *end);
        if (u && *u) shift = 10 * (int)(u - units + 1), end++;
    }
    if (errno || *end || end == s || x < 0 || (shift && x > (INT64_MAX >> shift)) ||
        (int64_t)x << shift < lo || (int64_t)x << shift > hi)
        return sr_error_set(SR_EINVAL, "%s='%s' is not a byte count in %lld..%lld (digits, then K, M, G or T)", name,
                            s, (long long)lo, (long long)hi);
    *v = (int64_t)x << shift;
    return 1;
}

static int env_seconds(const char *name, double lo, double hi, double *v) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    double x = strtod(s, &end);
    if (*end || end == s || !(x >= lo && x <= hi))
        return sr_error_set(SR_EINVAL, "%s='%s' is not a number of seconds in %g..%g", name, s, lo, hi);
    *v = x;
    return 1;
}

/* An option if set (> 0), else the variable, else the default. */
static int pick_seconds(double opt, const char *optname, const char *env, double dflt, double *out) {
    if (opt < 0 || isnan(opt)) return sr_error_set(SR_EINVAL, "sr_tp_opts.%s %g must be 0 (default) or more", optname, opt);
    *out = opt > 0 ? opt : dflt;
    if (opt > 0 || !env) return SR_OK;
    int rc = env_seconds(env, 0.01, 1e6, out);
    return rc < 0 ? rc : SR_OK;
}

/* Parses "host:port,host:port,..." (IPv6 as [addr]:port) into size entries. */
static int parse_hosts(const char *s, sr_tp__endpoint *ep, int size) {
    int i = 0;
    const char *p = s;
    while (*p && i < size) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char item[sizeof ep->host + sizeof ep->port];
        if (n >= sizeof item)
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d is %zu characters long (at most %zu)", i, n,
                                sizeof item - 1);
        memcpy(item, p, n);
        item[n] = '\0';
        char *colon = strrchr(item, ':');
        if (!colon || colon == item || !colon[1])
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d '%s' is not host:port", i, item);
        *colon = '\0';
        char *h = item;
        if (h[0] == '[' && h[strlen(h) - 1] == ']') {
            h[strlen(h) - 1] = '\0';
            h++;
        }
        char *pend;
        long port = strtol(colon + 1, &pend, 10);
        if (*pend || port <= 0 || port > 65535)
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d has port '%s', not 1..65535", i, colon + 1);
        size_t hn = strlen(h);
        if (hn >= sizeof ep->host)
            return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS entry %d: host name longer than %zu", i, sizeof ep->host - 1);
        memcpy(ep[i].host, h, hn + 1);
        snprintf(ep[i].port, sizeof ep[i].port, "%ld", port);
        i++;
        p = end ? end + 1 : p + n;
    }
    if (i != size || *p)
        return sr_error_set(SR_EINVAL, "SR_TCP_HOSTS names %s endpoints than the %d ranks of the job",
                            i < size ? "fewer" : "more", size);
    return SR_OK;
}

/* The key is SHA-256 of the file's bytes: HMAC pads a short key with zeros,
 * so a file and the same file with NULs appended would otherwise be one key.
 * Like ssh with its keys, refuse a file others can read: the secret is the
 * only thing that keeps strangers out. */
int sr_tp_secret_read(const char *path, const char *what, unsigned char key[SR_TP_SECRET_BYTES]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sr_error_set(SR_EIO, "%s %s: %s", what, path, strerror(errno));
    struct stat st;
    int rc = SR_OK;
    if (fstat(fd, &st) != 0)
        rc = sr_error_set(SR_EIO, "%s %s: %s", what, path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = sr_error_set(SR_EINVAL, "%s %s is not a regular file", what, path);
    else if (st.st_mode & 077)
        rc = sr_error_set(SR_EINVAL, "%s %s can be read by group or others (mode %04o): chmod 600 it", what, path,
                          (unsigned)(st.st_mode & 07777));
    else if (st.st_size < SR_TP__KEY_MIN || st.st_size > SR_TP__KEY_MAX)
        rc = sr_error_set(SR_EINVAL, "%s %s holds %lld bytes; a key has %d to %d (e.g. head -c 32 /dev/urandom)", what,
                          path, (long long)st.st_size, SR_TP__KEY_MIN, SR_TP__KEY_MAX);
    unsigned char file[SR_TP__KEY_MAX];
    size_t n = rc == SR_OK ? (size_t)st.st_size : 0, got = 0;
    while (rc == SR_OK && got < n) {
        ssize_t k = read(fd, file + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) rc = sr_error_set(SR_EIO, "%s %s: %s", what, path, k < 0 ? strerror(errno) : "shorter than its size");
        else got += (size_t)k;
    }
    close(fd);
    if (rc == SR_OK && sodium_init() < 0) rc = sr_error_set(SR_ESTATE, "libsodium failed to initialise");
    if (rc == SR_OK) crypto_hash_sha256(key, file, (unsigned long long)n);
    sodium_memzero(file, sizeof file);
    return rc;
}

static int read_secret(const char *path, const char *what, sr_tp__tcp_cfg *cfg) {
    if (!(cfg->key = malloc(SR_TP_SECRET_BYTES))) return sr_error_set(SR_ENOMEM, "out of memory for the job secret");
    cfg->key_len = SR_TP_SECRET_BYTES;
    return sr_tp_secret_read(path, what, cfg->key);
}

/* Without SR_TCP_JOB_ID, jobs are told apart by their size and endpoints. */
static void derive_job_id(sr_tp__tcp_cfg *cfg) {
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    char line[sizeof cfg->ep->host + sizeof cfg->ep->port + 4];
    int n = snprintf(line, sizeof line, "%d\n", cfg->size);
    crypto_hash_sha256_update(&st, (const unsigned char *)line, (unsigned long long)n);
    for (int p = 0; p < cfg->size; p++) {
        n = snprintf(line, sizeof line, "%s:%s\n", cfg->ep[p].host, cfg->ep[p].port);
        crypto_hash_sha256_update(&st, (const unsigned char *)line, (unsigned long long)n);
    }
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, h);
    int at = snprintf(cfg->job_id, sizeof cfg->job_id, "auto-");
    for (int i = 0; i < 8; i++) at += snprintf(cfg->job_id + at, sizeof cfg->job_id - (size_t)at, "%02x", h[i]);
}

static int config(const sr_tp_opts *o, sr_tp__tcp_cfg *cfg) {
    static const char *const rank_vars[3] = {"SR_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"};
    static const char *const size_vars[3] = {"SR_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    int rc;
    cfg->rank = o->rank;
    cfg->size = o->size;
    if (cfg->rank < 0 && (rc = env_rank(rank_vars, SR_TP__MAX_RANKS - 1, &cfg->rank)) != SR_OK) return rc;
    if (cfg->size < 0 && (rc = env_rank(size_vars, SR_TP__MAX_RANKS, &cfg->size)) != SR_OK) return rc;
    if (cfg->size <= 0 || cfg->size > SR_TP__MAX_RANKS || cfg->rank < 0 || cfg->rank >= cfg->size)
        return sr_error_set(SR_EINVAL, "transport tcp: rank %d of %d is invalid (set SR_RANK and SR_SIZE; size 1..%d)",
                            cfg->rank, cfg->size, SR_TP__MAX_RANKS);
    if (!(cfg->ep = calloc((size_t)cfg->size, sizeof *cfg->ep)))
        return sr_error_set(SR_ENOMEM, "out of memory for %d tcp endpoints", cfg->size);

    const char *hosts = o->hosts ? o->hosts : getenv("SR_TCP_HOSTS");
    if (hosts && *hosts) {
        if ((rc = parse_hosts(hosts, cfg->ep, cfg->size)) != SR_OK) return rc;
    } else {
        long long base = o->base_port;
        if (base < 0 || base > 65535)
            return sr_error_set(SR_EINVAL, "sr_tp_opts.base_port %lld is not 0 (default) or 1..65535", base);
        if (base == 0 && (rc = env_long("SR_TCP_PORT", 1, 65535, &base)) < 0) return rc;
        if (base == 0) base = DEFAULT_PORT;
        if (base + cfg->size - 1 > 65535)
            return sr_error_set(SR_EINVAL, "tcp base port %lld + %d ranks exceeds 65535 (SR_TCP_PORT)", base,
                                cfg->size);
        for (int p = 0; p < cfg->size; p++) {
            snprintf(cfg->ep[p].host, sizeof cfg->ep[p].host, "127.0.0.1");
            snprintf(cfg->ep[p].port, sizeof cfg->ep[p].port, "%lld", base + p);
        }
    }

    const char *job = o->job_id ? o->job_id : getenv("SR_TCP_JOB_ID");
    if (job && *job) {
        char m[512];
        if (sr_tp__job_id_check(job, o->job_id ? "sr_tp_opts.job_id" : "SR_TCP_JOB_ID") != SR_OK)
            return sr_error_set(SR_EINVAL, "transport tcp: %s", saved_msg(m, sizeof m));
        snprintf(cfg->job_id, sizeof cfg->job_id, "%s", job);
    } else {
        derive_job_id(cfg);
    }

    /* one rank has no peers: nothing to prove */
    if (cfg->size > 1 && o->key) {
        if (o->key_len < SR_TP__KEY_MIN || o->key_len > SR_TP__KEY_MAX)
            return sr_error_set(SR_EINVAL, "sr_tp_opts.key_len %zu is out of range %d..%d", o->key_len, SR_TP__KEY_MIN,
                                SR_TP__KEY_MAX);
        if (!(cfg->key = malloc(SR_TP_SECRET_BYTES))) return sr_error_set(SR_ENOMEM, "out of memory for the job secret");
        cfg->key_len = SR_TP_SECRET_BYTES;
        crypto_hash_sha256(cfg->key, o->key, (unsigned long long)o->key_len);
    } else if (cfg->size > 1) {
        const char *path = o->secret_file ? o->secret_file : getenv("SR_TCP_SECRET_FILE");
        if (!path || !*path)
            return sr_error_set(SR_EINVAL,
                                "transport tcp: no job secret: set SR_TCP_SECRET_FILE to a file (mode 600) holding "
                                "the same key on every rank, e.g. head -c 32 /dev/urandom > key; chmod 600 key");
        if ((rc = read_secret(path, o->secret_file ? "sr_tp_opts.secret_file" : "SR_TCP_SECRET_FILE", cfg)) != SR_OK)
            return rc;
    }

    if ((rc = pick_seconds(o->timeout_s, "timeout_s", NULL, DEFAULT_OPEN_S, &cfg->open_timeout_s)) != SR_OK ||
        (rc = pick_seconds(o->handshake_timeout_s, "handshake_timeout_s", NULL, DEFAULT_HANDSHAKE_S,
                           &cfg->handshake_timeout_s)) != SR_OK ||
        (rc = pick_seconds(o->io_timeout_s, "io_timeout_s", "SR_TCP_IO_TIMEOUT", DEFAULT_IO_S, &cfg->io_timeout_s)) !=
            SR_OK)
        return rc;

    /* caps up to 2^60 keep 2 * max_msg + 1 MiB in range */
    const int64_t cap_hi = (int64_t)1 << 60;
    if (o->max_msg_bytes < 0 || o->max_msg_bytes > cap_hi || o->max_buffered_bytes < 0 ||
        o->max_buffered_bytes > cap_hi)
        return sr_error_set(SR_EINVAL, "sr_tp_opts.max_msg_bytes %lld and max_buffered_bytes %lld must be 0 (default) to 2^60",
                            (long long)o->max_msg_bytes, (long long)o->max_buffered_bytes);
    cfg->max_msg = o->max_msg_bytes ? o->max_msg_bytes : DEFAULT_MAX_MSG;
    if (!o->max_msg_bytes && (rc = env_bytes("SR_TCP_MAX_MSG", 1, cap_hi, &cfg->max_msg)) < 0) return rc;
    cfg->max_buffered = o->max_buffered_bytes ? o->max_buffered_bytes : 2 * cfg->max_msg + ((int64_t)1 << 20);
    if (!o->max_buffered_bytes && (rc = env_bytes("SR_TCP_MAX_BUFFERED", 1, cap_hi, &cfg->max_buffered)) < 0)
        return rc;
    return SR_OK;
}

int sr_tp__tcp_config(const sr_tp_opts *o, sr_tp__tcp_cfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    if (sodium_init() < 0) return sr_error_set(SR_ESTATE, "transport tcp: libsodium failed to initialise");
    int rc = config(o, cfg);
    if (rc != SR_OK) sr_tp__tcp_config_free(cfg);
    return rc;
}

void sr_tp__tcp_config_free(sr_tp__tcp_cfg *cfg) {
    if (cfg->key) sodium_memzero(cfg->key, cfg->key_len);
    free(cfg->key);
    free(cfg->ep);
    memset(cfg, 0, sizeof *cfg);
}

/* ---- the mesh ---- */

enum {
    FREE,      /* inbound slot unused; outbound: established */
    DIAL_WAIT, /* outbound: dial again at the deadline */
    DIALING,   /* outbound: connect() in progress */
    C_HELLO,   /* outbound: sent our hello, reading the listener's hello and proof */
    C_ACCEPT,  /* outbound: sent our proof, reading the accept */
    L_HELLO,   /* inbound: reading the dialler's hello */
    L_AUTH,    /* inbound: sent hello and proof, reading the dialler's proof */
    L_ACCEPT,  /* inbound: sending the accept */
    L_REFUSE,  /* inbound: sending our hello (so the dialler can see why), then closing */
};

typedef struct {
    int fd, stage;
    int peer;        /* outbound: the rank dialled; inbound: the rank claimed */
    double deadline; /* of this stage */
    struct addrinfo *res, *ai; /* outbound: the addresses, the one being tried */
    char why[160];             /* outbound: why the last dial failed */
    unsigned char out[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES + SR_TP__ACCEPT_BYTES];
    size_t out_len, out_off;
    unsigned char in[SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES];
    size_t in_len, in_got; /* exactly what this stage reads: what follows is the data plane's */
    unsigned char hello_c[SR_TP__HELLO_BYTES], hello_l[SR_TP__HELLO_BYTES];
    char addr[300]; /* the other end, for messages */
} conn;

typedef struct {
    const sr_tp__tcp_cfg *cfg;
    int *fds;
    char *claimed; /* inbound: rank proved itself, its accept is on the way */
    int lfd;
    conn *c; /* cfg->rank outbound (one per lower rank), then the inbound slots */
    int n_conns;
    int need, refused;
} mesh;

static void conn_close(conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->stage = FREE;
}

static void my_hello(const mesh *m, unsigned char out[SR_TP__HELLO_BYTES]) {
    sr_tp__hello h;
    memset(&h, 0, sizeof h);
    h.rank = m->cfg->rank;
    h.size = m->cfg->size;
    snprintf(h.job_id, sizeof h.job_id, "%s", m->cfg->job_id);
    randombytes_buf(h.nonce, sizeof h.nonce);
    sr_tp__hello_encode(out, &h);
}

static void refuse(mesh *m, conn *c, const char *why) {
    SR_WARN("transport tcp: rank %d refused a connection from %s: %s", m->cfg->rank, c->addr, why);
    m->refused++;
    conn_close(c);
}

static void expect(conn *c, int stage, size_t n, double timeout_s) {
    c->stage = stage;
    c->in_len = n;
    c->in_got = 0;
    c->deadline = sr_now() + timeout_s;
}

/* A dialler may send its proof before it has read ours, so what is queued
 * can pile up: at most our hello, proof and accept, which is what out holds
 * (each stage queues once). */
static void queue(conn *c, const void *b, size_t n) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
    memcpy(c->out + c->out_len, b, n);
    c->out_len += n;
}

static void established(mesh *m, conn *c) {
    m->fds[c->peer] = c->fd;
    c->fd = -1;
    c->stage = FREE;
    m->need--;
}

/* best effort: only latency depends on it */
static void set_nodelay(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Drops the attempt; the next address is tried at once, the first again
 * after REDIAL_S. */
static void redial(conn *c, const char *why) {
    snprintf(c->why, sizeof c->why, "%s", why);
    conn_close(c);
    c->stage = DIAL_WAIT;
    c->deadline = sr_now() + (c->ai ? 0 : REDIAL_S);
}

/* Starts a dial of the next address; a refusal goes round again (the peer
 * may not be listening yet). */
static void dial(mesh *m, conn *c) {
    if (!c->ai) c->ai = c->res;
    struct addrinfo *a = c->ai;
    c->ai = a->ai_next;
    c->fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (c->fd >= 0 && (connect(c->fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS)) {
        c->stage = DIALING;
        c->deadline = sr_now() + m->cfg->handshake_timeout_s;
        return;
    }
    redial(c, strerror(errno));
}

static void dialled(mesh *m, conn *c) {
    set_nodelay(c->fd);
    my_hello(m, c->hello_c);
    c->out_len = c->out_off = 0;
    queue(c, c->hello_c, SR_TP__HELLO_BYTES);
    expect(c, C_HELLO, SR_TP__HELLO_BYTES + SR_TP__AUTH_BYTES, m->cfg->handshake_timeout_s);
}

/* A message of the handshake has arrived on an outbound connection; errors
 * there end the open (whatever answers at a rank's endpoint is not it). */
static int outbound_msg(mesh *m, conn *c) {
    const sr_tp__tcp_cfg *cfg = m->cfg;
    char why[512];
    if (c->stage == C_ACCEPT) {
        if (sr_tp__accept_check(c->in, c->in_len) != SR_OK)
            return sr_error_set(SR_ECOMM, "transport tcp: rank %d at %s: %s", c->peer, c->addr,
                                saved_msg(why, sizeof why));
        established(m, c);
        return SR_OK;
    }
    sr_tp__hello h;
    if (sr_tp__hello_decode(c->in, SR_TP__HELLO_BYTES, &h) != SR_OK)
        return sr_error_set(SR_EFORMAT, "transport tcp: rank %d at %s: %s", c->peer, c->addr,
                            saved_msg(why, sizeof why));
    if (strcmp(h.job_id, cfg->job_id) != 0)
        return sr_error_set(SR_ECOMM, "transport tcp: rank %d at %s belongs to job '%s', this rank to job '%s' (SR_TCP_JOB_ID)",
                            c->peer, c->addr, h.job_id, cfg->job_id);
    if (h.size != cfg->size || h.rank != c->peer)
        return sr_error_set(SR_ECOMM, "transport tcp: %s answered as rank %d of %d, expected rank %d of %d (another job on that port?)",
                            c->addr, h.rank, h.size, c->peer, cfg->size);
    memcpy(c->hello_l, c->in, SR_TP__HELLO_BYTES);
    if (sr_tp__auth_check(c->in + SR_TP__HELLO_BYTES, SR_TP__AUTH_BYTES, cfg->key, cfg->key_len,
                          SR_TP__ROLE_LISTENER, c->hello_c, c->hello_l) != SR_OK)
        return sr_error_set(SR_ECOMM, "transport tcp: rank %d at %s did not prove it holds the job secret: %s", c->peer,
                            c->addr, saved_msg(why, sizeof why));
    unsigned char a[SR_TP__AUTH_BYTES];
    sr_tp__auth_encode(a, cfg->key, cfg->key_len, SR_TP__ROLE_CONNECTOR, c->hello_c, c->hello_l);
    queue(c, a, sizeof a);
    expect(c, C_ACCEPT, SR_TP__ACCEPT_BYTES, cfg->handshake_timeout_s);
    return SR_OK;
}

/* A message of the handshake has arrived on an inbound connection; whatever
 * is wrong there is refused and logged, and the open goes on. */
static void inbound_msg(mesh *m, conn *c) {
    const sr_tp__tcp_cfg *cfg = m->cfg;
    char why[300];
    if (c->stage == L_AUTH) {
        if (sr_tp__auth_check(c->in, c->in_len, cfg->key, cfg->key_len, SR_TP__ROLE_CONNECTOR, c->hello_c,
                              c->hello_l) != SR_OK) {
            snprintf(why, sizeof why, "claims rank %d: %s", c->peer, sr_error_msg());
            refuse(m, c, why);
        } else if (m->fds[c->peer] >= 0 || m->claimed[c->peer]) {
            snprintf(why, sizeof why, "rank %d is already connected", c->peer);
            refuse(m, c, why);
        } else {
            m->claimed[c->peer] = 1;
            unsigned char a[SR_TP__ACCEPT_BYTES];
            sr_tp__accept_encode(a);
            queue(c, a, sizeof a);
            c->stage = L_ACCEPT;
        }
        return;
    }
    sr_tp__hello h;
    if (sr_tp__hello_decode(c->in, c->in_len, &h) != SR_OK) {
        refuse(m, c, sr_error_msg());
        return;
    }
    memcpy(c->hello_c, c->in, SR_TP__HELLO_BYTES);
    my_hello(m, c->hello_l);
    queue(c, c->hello_l, SR_TP__HELLO_BYTES);
    unsigned char a[SR_TP__AUTH_BYTES];
    sr_tp__auth_encode(a, cfg->key, cfg->key_len, SR_TP__ROLE_LISTENER, c->hello_c, c->hello_l);
    queue(c, a, sizeof a);
    why[0] = '\0';
    if (strcmp(h.job_id, cfg->job_id) != 0)
        snprintf(why, sizeof why, "it belongs to job '%s', this is job '%s'", h.job_id, cfg->job_id);
    else if (h.size != cfg->size)
        snprintf(why, sizeof why, "it is rank %d of %d ranks, this job has %d", h.rank, h.size, cfg->size);
    else if (h.rank <= cfg->rank)
        snprintf(why, sizeof why, "it claims rank %d, but only ranks above %d dial rank %d", h.rank, cfg->rank,
                 cfg->rank);
    else if (m->fds[h.rank] >= 0 || m->claimed[h.rank])
        snprintf(why, sizeof why, "it claims rank %d, which is already connected", h.rank);
    c->peer = h.rank;
    if (why[0]) {
        /* our hello goes out first, so that a rank of another job can say why */
        SR_WARN("transport tcp: rank %d refused a connection from %s: %s", cfg->rank, c->addr, why);
        m->refused++;
        c->stage = L_REFUSE;
        return;
    }
    expect(c, L_AUTH, SR_TP__AUTH_BYTES, cfg->handshake_timeout_s);
}

/* Moves bytes while the socket allows; -1 with *err (0 for an orderly
 * close) when the connection is gone. */
static int conn_io(conn *c, int *err) {
    while (c->out_off < c->out_len) {
        ssize_t k = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k < 0) {
            *err = errno;
            return -1;
        }
        c->out_off += (size_t)k;
    }
    if (c->out_off == c->out_len) c->out_len = c->out_off = 0;
    while (c->in_got < c->in_len) {
        ssize_t k = recv(c->fd, c->in + c->in_got, c->in_len - c->in_got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k <= 0) {
            *err = k < 0 ? errno : 0;
            return -1;
        }
        c->in_got += (size_t)k;
    }
    return 0;
}

static int outbound_step(mesh *m, conn *c, short revents, double now) {
    const sr_tp__tcp_cfg *cfg = m->cfg;
    if (c->stage == DIAL_WAIT) {
        if (now >= c->deadline) dial(m, c);
        return SR_OK;
    }
    if (c->stage == DIALING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (!revents && now < c->deadline) return SR_OK;
        if (revents && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
            dialled(m, c);
        } else {
            redial(c, strerror(revents ? err : ETIMEDOUT));
            return SR_OK;
        }
    }
    int err = 0;
    if (conn_io(c, &err) != 0) {
        if (c->stage == C_HELLO && c->in_got == 0) {
            /* refused before a word: it has too many handshakes pending, say */
            redial(c, "it closed the connection before answering the handshake");
            return SR_OK;
        }
        if (c->stage == C_ACCEPT)
            return sr_error_set(SR_ECOMM,
                                "transport tcp: rank %d at %s refused this rank's proof of the job secret (%s): is "
                                "SR_TCP_SECRET_FILE the same key on every rank? (its log says why)",
                                c->peer, c->addr, err ? strerror(err) : "connection closed");
        return sr_error_set(SR_ECOMM, "transport tcp: rank %d at %s closed the connection during the handshake (%s): it refused this rank (its log says why)",
                            c->peer, c->addr, err ? strerror(err) : "connection closed");
    }
    if (c->in_got == c->in_len) return outbound_msg(m, c);
    if (now >= c->deadline)
        return sr_error_set(SR_ECOMM, "transport tcp: rank %d at %s did not answer the handshake within %g s", c->peer,
                            c->addr, cfg->handshake_timeout_s);
    return SR_OK;
}

static void inbound_step(mesh *m, conn *c, double now) {
    int err = 0;
    char why[300];
    int io = conn_io(c, &err);
    if (c->stage == L_REFUSE) { /* logged already: close once our hello is out */
        if (io != 0 || c->out_len == 0 || now >= c->deadline) conn_close(c);
        return;
    }
    if (io != 0) {
        if (c->stage == L_ACCEPT) m->claimed[c->peer] = 0;
        snprintf(why, sizeof why, "it %s before finishing the handshake", err ? strerror(err) : "closed the connection");
        refuse(m, c, why);
        return;
    }
    if (c->stage == L_ACCEPT && c->out_len == 0) {
        m->claimed[c->peer] = 0;
        established(m, c);
        return;
    }
    if (c->stage != L_ACCEPT && c->in_got == c->in_len) {
        inbound_msg(m, c);
        return;
    }
    if (now >= c->deadline) {
        if (c->stage == L_ACCEPT) m->claimed[c->peer] = 0;
        snprintf(why, sizeof why, "no handshake within %g s", m->cfg->handshake_timeout_s);
        refuse(m, c, why);
    }
}

static void describe_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t n) {
    char h[NI_MAXHOST], s[NI_MAXSERV];
    if (getnameinfo(sa, len, h, sizeof h, s, sizeof s, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, n, "an unknown address");
    else
        snprintf(out, n, strchr(h, ':') ? "[%s]:%s" : "%s:%s", h, s);
}

static void accept_all(mesh *m) {
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int fd = accept4(m->lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or a resource limit: poll says when to try again */
        }
        /* a free slot, else the one that has waited longest for a hello:
         * a flood of idle connections cannot keep a real rank out */
        conn *c = NULL, *oldest = NULL;
        for (int i = m->cfg->rank; i < m->n_conns && !c; i++) {
            conn *x = &m->c[i];
            if (x->stage == FREE) c = x;
            else if (x->stage == L_HELLO && (!oldest || x->deadline < oldest->deadline)) oldest = x;
        }
        char addr[sizeof c->addr];
        describe_addr((struct sockaddr *)&sa, len, addr, sizeof addr);
        if (!c && oldest) {
            refuse(m, oldest, "dropped for a newer connection: too many handshakes pending");
            c = oldest;
        }
        if (!c) {
            SR_WARN("transport tcp: rank %d refused a connection from %s: %d handshakes already in progress",
                    m->cfg->rank, addr, m->n_conns - m->cfg->rank);
            m->refused++;
            close(fd);
            continue;
        }
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->peer = -1;
        snprintf(c->addr, sizeof c->addr, "%s", addr);
        set_nodelay(fd);
        expect(c, L_HELLO, SR_TP__HELLO_BYTES, m->cfg->handshake_timeout_s);
    }
}

/* Binds the rank's own endpoint only, never every interface. */
static int listen_on(const sr_tp__tcp_cfg *cfg, int *out) {
    const sr_tp__endpoint *ep = &cfg->ep[cfg->rank];
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int g = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (g != 0)
        return sr_error_set(SR_ECOMM, "transport tcp: cannot resolve rank %d's address %s:%s: %s", cfg->rank, ep->host,
                            ep->port, gai_strerror(g));
    int fd = -1, last = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            last = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return sr_error_set(SR_ECOMM, "transport tcp: rank %d cannot listen on %s:%s: %s (an address of this machine? "
                            "a port in use: choose another SR_TCP_PORT?)",
                            cfg->rank, ep->host, ep->port, strerror(last));
    *out = fd;
    return SR_OK;
}

static int resolve(const sr_tp__tcp_cfg *cfg, int p, conn *c) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(cfg->ep[p].host, cfg->ep[p].port, &hints, &c->res);
    if (g != 0)
        return sr_error_set(SR_ECOMM, "transport tcp: cannot resolve rank %d's address %s:%s: %s", p, cfg->ep[p].host,
                            cfg->ep[p].port, gai_strerror(g));
    c->peer = p;
    c->stage = DIAL_WAIT;
    c->deadline = 0;
    snprintf(c->addr, sizeof c->addr, "%s:%s", cfg->ep[p].host, cfg->ep[p].port);
    return SR_OK;
}

static int timed_out(const mesh *m) {
    char missing[200] = "";
    size_t at = 0;
    for (int p = 0; p < m->cfg->size && at < sizeof missing - 8; p++)
        if (p != m->cfg->rank && m->fds[p] < 0)
            at += (size_t)snprintf(missing + at, sizeof missing - at, "%s%d", at ? ", " : "", p);
    for (int i = 0; i < m->cfg->rank; i++) {
        const conn *c = &m->c[i];
        if (c->stage == DIAL_WAIT || c->stage == DIALING)
            return sr_error_set(SR_ECOMM, "transport tcp: rank %d cannot connect to rank %d at %s within %g s: %s (is it running?)",
                                m->cfg->rank, c->peer, c->addr, m->cfg->open_timeout_s, c->why[0] ? c->why : "no answer");
    }
    return sr_error_set(SR_ECOMM,
                        "transport tcp: rank %d timed out after %g s waiting for rank(s) %s to connect (%d other "
                        "connection(s) refused: see the log)",
                        m->cfg->rank, m->cfg->open_timeout_s, missing, m->refused);
}

static int mesh_loop(mesh *m) {
    const sr_tp__tcp_cfg *cfg = m->cfg;
    struct pollfd *pf = calloc((size_t)m->n_conns + 1, sizeof *pf);
    int *who = calloc((size_t)m->n_conns + 1, sizeof *who);
    short *rev = calloc((size_t)m->n_conns, sizeof *rev);
    int rc = pf && who && rev ? SR_OK : sr_error_set(SR_ENOMEM, "out of memory for the tcp handshakes");
    double end = sr_now() + cfg->open_timeout_s;
    while (rc == SR_OK && m->need > 0) {
        double now = sr_now(), wake = end;
        if (now >= end) {
            rc = timed_out(m);
            break;
        }
        int n = 0;
        if (m->lfd >= 0) {
            pf[n] = (struct pollfd){m->lfd, POLLIN, 0};
            who[n++] = -1;
        }
        for (int i = 0; i < m->n_conns; i++) {
            conn *c = &m->c[i];
            if (c->stage == FREE) continue;
            if (c->deadline < wake) wake = c->deadline;
            if (c->fd < 0) continue;
            short ev = c->stage == DIALING ? POLLOUT : (short)(c->in_got < c->in_len ? POLLIN : 0);
            if (c->out_off < c->out_len) ev |= POLLOUT;
            pf[n] = (struct pollfd){c->fd, ev, 0};
            who[n++] = i;
        }
        int ms = (int)ceil((wake - now) * 1000);
        if (poll(pf, (nfds_t)n, ms < 0 ? 0 : ms) < 0 && errno != EINTR) {
            rc = sr_error_set(SR_ECOMM, "transport tcp: poll: %s", strerror(errno));
            break;
        }
        memset(rev, 0, (size_t)m->n_conns * sizeof *rev);
        for (int k = 0; k < n; k++) {
            if (who[k] < 0 && pf[k].revents) accept_all(m);
            else if (who[k] >= 0) rev[who[k]] = pf[k].revents;
        }
        now = sr_now();
        for (int i = 0; i < m->n_conns && rc == SR_OK; i++) {
            conn *c = &m->c[i];
            if (c->stage == FREE) continue;
            if (i < cfg->rank) rc = outbound_step(m, c, rev[i], now);
            else inbound_step(m, c, now);
        }
    }
    free(rev);
    free(pf);
    free(who);
    return rc;
}

int sr_tp__tcp_mesh(const sr_tp__tcp_cfg *cfg, int *fds) {
    mesh m;
    memset(&m, 0, sizeof m);
    m.cfg = cfg;
    m.fds = fds;
    m.lfd = -1;
    m.need = cfg->size - 1;
    for (int p = 0; p < cfg->size; p++) fds[p] = -1;
    if (m.need == 0) return SR_OK;
    int higher = cfg->size - 1 - cfg->rank;
    m.n_conns = cfg->rank + (higher ? higher + SPARE_SLOTS : 0);
    m.c = calloc((size_t)m.n_conns, sizeof *m.c);
    m.claimed = calloc((size_t)cfg->size, 1);
    int rc = m.c && m.claimed ? SR_OK : sr_error_set(SR_ENOMEM, "out of memory for %d tcp connections", m.n_conns);
    for (int i = 0; m.c && i < m.n_conns; i++) m.c[i].fd = -1;
    if (rc == SR_OK && higher) rc = listen_on(cfg, &m.lfd);
    for (int p = 0; rc == SR_OK && p < cfg->rank; p++) rc = resolve(cfg, p, &m.c[p]);
    if (rc == SR_OK) rc = mesh_loop(&m);
    if (m.lfd >= 0) close(m.lfd);
    int unfinished = 0;
    for (int i = 0; m.c && i < m.n_conns; i++) {
        unfinished += i >= cfg->rank && m.c[i].stage != FREE;
        conn_close(&m.c[i]);
        if (m.c[i].res) freeaddrinfo(m.c[i].res);
    }
    if (unfinished && rc == SR_OK)
        SR_INFO("transport tcp: rank %d closed %d unfinished handshake(s) once every rank was in", cfg->rank,
                unfinished);
    free(m.c);
    free(m.claimed);
    if (rc != SR_OK)
        for (int p = 0; p < cfg->size; p++)
            if (fds[p] >= 0) {
                close(fds[p]);
                fds[p] = -1;
            }
    return rc;
}
