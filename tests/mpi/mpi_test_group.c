/* transport/group.h over the mpi and ucx transports: collectives and
 * point-to-point inside a subset of the ranks given in any order, two
 * disjoint groups running at once, the bytes of a group's messages counted
 * once in the parent's sr_tp_bytes, and the argument checks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tests/mpi/mpi_support.h"
#include "transport/group.h"
#include "transport/transport.h"

static int64_t value(int group_rank, int salt, int64_t i) { return (int64_t)group_rank * 1000003 + salt * 7919 + i; }

/* Every rank of g: a bcast from the last rank, an allgather, and a ring
 * pass of n words, each checked against what it must hold. */
static int exercise(sr_tp *g, int salt, int64_t n) {
    int fails = 0, r = sr_tp_rank(g), s = sr_tp_size(g);
    int64_t *a = malloc(sizeof *a * (size_t)n), *all = malloc(sizeof *all * (size_t)(n * s)),
            *in = malloc(sizeof *in * (size_t)n);
    if (!a || !all || !in) return 1;
    for (int64_t i = 0; i < n; i++) a[i] = r == s - 1 ? value(r, salt, i) : -1;
    COUNT_OK(sr_tp_bcast(g, a, (int64_t)sizeof *a * n, s - 1));
    for (int64_t i = 0; i < n; i++) fails += a[i] != value(s - 1, salt, i);
    for (int64_t i = 0; i < n; i++) a[i] = value(r, salt, i);
    COUNT_OK(sr_tp_allgather(g, a, (int64_t)sizeof *a * n, all));
    for (int p = 0; p < s; p++)
        for (int64_t i = 0; i < n; i++) fails += all[p * n + i] != value(p, salt, i);
    sr_tp_req *q[2] = {0};
    int next = (r + 1) % s, prev = (r + s - 1) % s;
    COUNT_OK(sr_tp_irecv(g, in, (int64_t)sizeof *in * n, prev, 3, &q[0]));
    COUNT_OK(sr_tp_isend(g, a, (int64_t)sizeof *a * n, next, 3, &q[1]));
    COUNT_OK(sr_tp_waitall(2, q));
    for (int64_t i = 0; i < n; i++) fails += in[i] != value(prev, salt, i);
    COUNT_OK(sr_tp_barrier(g));
    free(a);
    free(all);
    free(in);
    if (fails) fprintf(stderr, "rank %d: group rank %d of %d: %d wrong\n", rank, r, s, fails);
    return fails;
}

/* The even ranks, last first: a group of another order than the parent's. */
static int t_subset(sr_tp *tp) {
    int n = 0, fails = 0, ranks[64];
    for (int p = size - 1; p >= 0; p--)
        if (p % 2 == 0) ranks[n++] = p;
    sr_tp *g = NULL;
    COUNT_OK(sr_tp_group_open(&g, tp, ranks, n));
    if (rank % 2 == 1) return fails + (g != NULL); /* outside: no group */
    if (!g) return 1;
    /* group rank i is parent rank ranks[i] */
    fails += sr_tp_size(g) != n || ranks[sr_tp_rank(g)] != rank;
    fails += exercise(g, 1, 1000);
    sr_tp_close(g);
    return fails;
}

/* Evens and odds at once, the same tags: neither sees the other's bytes. */
static int t_disjoint(sr_tp *tp) {
    int fails = 0, n = 0, ranks[64];
    for (int p = rank % 2; p < size; p += 2) ranks[n++] = p;
    sr_tp *g = NULL;
    COUNT_OK(sr_tp_group_open(&g, tp, ranks, n));
    if (!g) return 1;
    fails += exercise(g, 10 + rank % 2, 5000);
    sr_tp_close(g);
    return fails;
}

/* A message of n bytes from group rank 0 to 1: the parent's counters grow
 * by n once (sender: sent, receiver: received), the group's by n too. */
static int t_bytes(sr_tp *tp) {
    int fails = 0, ranks[2] = {size - 1, 0};
    sr_tp *g = NULL;
    COUNT_OK(sr_tp_group_open(&g, tp, ranks, 2));
    if (!g) return fails;
    int64_t ps0, pr0, ps1, pr1, gs, gr, n = 123457;
    char *buf = calloc(1, (size_t)n);
    if (!buf) return 1;
    sr_tp_bytes(tp, &ps0, &pr0);
    sr_tp_req *q = NULL;
    if (sr_tp_rank(g) == 0) COUNT_OK(sr_tp_isend(g, buf, n, 1, 4, &q));
    else COUNT_OK(sr_tp_irecv(g, buf, n, 0, 4, &q));
    COUNT_OK(sr_tp_wait(q));
    sr_tp_bytes(tp, &ps1, &pr1);
    sr_tp_bytes(g, &gs, &gr);
    int sender = sr_tp_rank(g) == 0;
    int64_t want_s = sender ? n : 0, want_r = sender ? 0 : n;
    if (ps1 - ps0 != want_s || pr1 - pr0 != want_r || gs != want_s || gr != want_r) {
        fprintf(stderr, "rank %d: parent +%lld sent +%lld received, group %lld/%lld; want %lld/%lld\n", rank,
                (long long)(ps1 - ps0), (long long)(pr1 - pr0), (long long)gs, (long long)gr, (long long)want_s,
                (long long)want_r);
        fails++;
    }
    free(buf);
    sr_tp_close(g);
    return fails;
}

/* Bad lists are refused with a message naming the entry. */
static int t_args(sr_tp *tp) {
    int fails = 0;
    sr_tp *g = (sr_tp *)1;
    int dup[2] = {0, 0}, out[2] = {0, size};
    fails += sr_tp_group_open(&g, tp, dup, 2) != SR_EINVAL || g != NULL ||
             !strstr(sr_error_msg(), "rank 0 is listed twice (entries 0 and 1)");
    fails += sr_tp_group_open(&g, tp, out, 2) != SR_EINVAL || !strstr(sr_error_msg(), "(entry 1) is out of range");
    fails += sr_tp_group_open(&g, tp, dup, 0) != SR_EINVAL || !strstr(sr_error_msg(), "0 ranks, out of range");
    fails += sr_tp_group_range(&g, tp, 1, size) != SR_EINVAL;
    return fails;
}

static void suite(sr_tp *tp, const char *name) {
    tap(t_args(tp), "%s: a group list with a repeated or outside rank is refused, naming the entry", name);
    tap(t_subset(tp), "%s: the even ranks, last first: bcast, allgather, ring, barrier; odd ranks get no group", name);
    if (size >= 2) tap(t_disjoint(tp), "%s: even and odd groups at once on the same tags", name);
    if (size >= 2) tap(t_bytes(tp), "%s: a group's message counts once in the parent's bytes (and in the group's)", name);
}

int main(int argc, char **argv) {
    if (mpi_test_init(&argc, &argv)) return 1;
    if (size > 64) {
        tap_skip("group", "more than 64 ranks");
        return mpi_test_finish();
    }
    /* parents: mpi, and ucx (the daemon's data plane) */
    for (int ucx = 0; ucx <= 1; ucx++) {
        int fails = 0;
        sr_tp *tp = NULL;
        const char *name = ucx ? "ucx" : "mpi";
        COUNT_OK(ucx ? open_ucx(&tp, NULL, NULL, 0) : sr_tp_open(&tp, "mpi", NULL));
        tap(fails, "%s: open", name);
        if (tp) suite(tp, name);
        sr_tp_close(tp);
    }
    return mpi_test_finish();
}
