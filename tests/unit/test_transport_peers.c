/* transport/peers.c, the bookkeeping tcp and ucx share, without a wire:
 * receives match by tag, first posted first matched; a message before its
 * receive waits in the unexpected list and counts against the peer's cap,
 * its record included, until it is received; a failed peer fails what is
 * posted on it, tells the backend once and refuses what comes after; a
 * silent one fails naming the option; sends to self reach a posted receive
 * or the unexpected list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/status.h"
#include "transport/peers.h"

static int fails_seen, failed_peer;

static void on_fail(void *owner, int p) {
    (void)owner;
    fails_seen++;
    failed_peer = p;
}

static const sr_tp__peers_backend backend = {"SR_TEST_MAX_BUFFERED", "SR_TEST_IO_TIMEOUT", on_fail};

static int setup(void **state) {
    sr_tp__peers *ps = test_calloc(1, sizeof *ps);
    if (!ps || sr_tp__peers_init(ps, &backend, NULL, 0, 3, 1000, 2) != SR_OK) return -1;
    fails_seen = 0;
    failed_peer = -1;
    *state = ps;
    return 0;
}

static int teardown(void **state) {
    sr_tp__peers_free(*state);
    test_free(*state);
    return 0;
}

static sr_tp__req recv_req(int peer, int tag, int64_t len, char *buf) {
    sr_tp__req r;
    memset(&r, 0, sizeof r);
    r.base.peer = peer;
    r.base.tag = tag;
    r.base.len = len;
    r.buf = buf;
    return r;
}

static void test_posted_match_in_order(void **state) {
    sr_tp__peers *ps = *state;
    sr_tp__req a = recv_req(1, 5, 4, NULL), b = recv_req(1, 6, 4, NULL), c = recv_req(1, 5, 4, NULL);
    assert_null(sr_tp__recv_match(ps, 1, 5, &a));
    assert_null(sr_tp__recv_match(ps, 1, 6, &b));
    assert_null(sr_tp__recv_match(ps, 1, 5, &c));
    assert_ptr_equal(sr_tp__posted_take(&ps->peer[1], 5), &a);
    assert_ptr_equal(sr_tp__posted_take(&ps->peer[1], 5), &c);
    assert_null(sr_tp__posted_take(&ps->peer[1], 5));
    assert_null(sr_tp__posted_take(&ps->peer[2], 6)); /* another peer's list */
    assert_ptr_equal(sr_tp__posted_take(&ps->peer[1], 6), &b);
    assert_null(ps->peer[1].posted_head);
    assert_null(ps->peer[1].posted_tail);
}

static void test_unexpected_and_cap(void **state) {
    sr_tp__peers *ps = *state;
    sr_tp__peer *pe = &ps->peer[2];
    int64_t rec = (int64_t)sizeof(sr_tp__umsg);
    /* exactly the cap fits: a copy and its record */
    assert_true(sr_tp__unexp_admit(ps, 2, 1000 - rec, 3));
    sr_tp__umsg *m1 = sr_tp__umsg_new(3, 300, 1), *m2 = sr_tp__umsg_new(4, 0, 1);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_null(m2->data);
    sr_tp__unexp_append(pe, m1);
    sr_tp__unexp_append(pe, m2);
    assert_int_equal(pe->buffered, 300 + 2 * rec);
    /* a receive of tag 4 finds m2, not m1 before it */
    sr_tp__req r = recv_req(2, 4, 0, NULL);
    assert_ptr_equal(sr_tp__recv_match(ps, 2, 4, &r), m2);
    sr_tp__unexp_remove(pe, m2);
    assert_int_equal(pe->buffered, 300 + rec);
    assert_true(sr_tp__unexp_admit(ps, 2, 1000 - 300 - 2 * rec, 9));
    assert_int_equal(fails_seen, 0);
    /* one byte more than what is left fails the peer */
    assert_false(sr_tp__unexp_admit(ps, 2, 1000 - 300 - 2 * rec + 1, 9));
    assert_int_equal(fails_seen, 1);
    assert_true(pe->dead);
    assert_int_equal(pe->err_code, SR_ERANGE);
    assert_non_null(strstr(pe->err, "rank 2 sent a "));
    assert_non_null(strstr(pe->err, "(tag 9) before its receive was posted"));
    assert_non_null(strstr(pe->err, "over the cap of 1000 (SR_TEST_MAX_BUFFERED)"));
    /* what came in before the failure stays receivable */
    sr_tp__req r3 = recv_req(2, 3, 300, NULL);
    assert_ptr_equal(sr_tp__recv_match(ps, 2, 3, &r3), m1);
    sr_tp__unexp_remove(pe, m1);
    assert_int_equal(pe->buffered, 0);
    assert_null(pe->unexp_head);
    assert_null(pe->unexp_tail);
}

static void test_peer_fail(void **state) {
    sr_tp__peers *ps = *state;
    sr_tp__req a = recv_req(1, 5, 4, NULL), b = recv_req(1, 7, 4, NULL);
    sr_tp__recv_match(ps, 1, 5, &a);
    sr_tp__recv_match(ps, 1, 7, &b);
    sr_tp__peer_fail(ps, 1, SR_ECOMM, "rank %d is gone (%s)", 1, "test");
    sr_tp__peer_fail(ps, 1, SR_EFORMAT, "a second failure");
    assert_int_equal(fails_seen, 1);
    assert_int_equal(failed_peer, 1);
    assert_string_equal(ps->peer[1].err, "rank 1 is gone (test)");
    assert_true(a.done && b.done);
    assert_int_equal(a.status, SR_ECOMM);
    assert_string_equal(b.msg, "rank 1 is gone (test)");
    assert_int_equal(sr_tp__result(&a), SR_ECOMM);
    assert_string_equal(sr_error_msg(), "rank 1 is gone (test)");
    assert_null(ps->peer[1].posted_head);
    /* a receive posted afterwards fails at once */
    sr_tp__req c = recv_req(1, 5, 4, NULL);
    assert_null(sr_tp__recv_match(ps, 1, 5, &c));
    assert_true(c.done);
    assert_int_equal(c.status, SR_ECOMM);
    assert_null(ps->peer[1].posted_head);
    assert_false(ps->peer[2].dead);
}

static void test_silent(void **state) {
    sr_tp__peers *ps = *state;
    ps->peer[1].last_rx = 100.0;
    assert_false(sr_tp__silent(ps, 1, 101.9));
    assert_false(ps->peer[1].dead);
    assert_true(sr_tp__silent(ps, 1, 102.5));
    assert_int_equal(ps->peer[1].err_code, SR_ECOMM);
    assert_string_equal(ps->peer[1].err, "rank 1 has sent nothing for 2.5 s, not even a heartbeat: it is stopped, "
                                         "hung or cut off (SR_TEST_IO_TIMEOUT is 2 s)");
}

static void test_send_self(void **state) {
    sr_tp__peers *ps = *state;
    char got[4] = "", small[2] = "";
    sr_tp__req r = recv_req(0, 1, 4, got), s1 = recv_req(0, 1, 4, NULL);
    sr_tp__recv_match(ps, 0, 1, &r);
    assert_int_equal(sr_tp__send_self(ps, &s1, "abcd", 4, 1), SR_OK);
    assert_true(s1.done && r.done);
    assert_int_equal(r.status, SR_OK);
    assert_memory_equal(got, "abcd", 4);
    /* to a receive of another length: the receive fails, the send does not */
    sr_tp__req w = recv_req(0, 2, 2, small), s2 = recv_req(0, 2, 4, NULL);
    sr_tp__recv_match(ps, 0, 2, &w);
    assert_int_equal(sr_tp__send_self(ps, &s2, "efgh", 4, 2), SR_OK);
    assert_int_equal(s2.status, SR_OK);
    assert_int_equal(w.status, SR_EFORMAT);
    assert_string_equal(w.msg, "message from rank 0 tag 2 has 4 bytes, expected 2");
    /* before its receive: a copy waits in the unexpected list */
    char src[4] = "ijkl";
    sr_tp__req s3 = recv_req(0, 3, 4, NULL);
    assert_int_equal(sr_tp__send_self(ps, &s3, src, 4, 3), SR_OK);
    memset(src, 0, sizeof src);
    sr_tp__req later = recv_req(0, 3, 4, NULL);
    sr_tp__umsg *m = sr_tp__recv_match(ps, 0, 3, &later);
    assert_non_null(m);
    assert_int_equal(m->len, 4);
    assert_int_equal(m->got, 4);
    assert_memory_equal(m->data, "ijkl", 4);
    sr_tp__unexp_remove(&ps->peer[0], m);
    assert_int_equal(ps->peer[0].buffered, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_posted_match_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unexpected_and_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_self, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
