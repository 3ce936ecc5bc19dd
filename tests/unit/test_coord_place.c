/* coordinator/placement: the workers of a new context are the least loaded
 * of those up, ties to the lower index, in index order; want 0 or over the
 * candidates takes them all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/status.h"
#include "coordinator/placement.h"

static void test_least_loaded(void **state) {
    (void)state;
    /* worker 1 is not a candidate (down); 0 and 2 hold a context each */
    const int cand[] = {3, 0, 2, 4};
    const int64_t load[] = {1, 0, 1, 0, 0};
    int out[5] = {-1, -1, -1, -1, -1};
    assert_int_equal(sr_coord_place(cand, 4, load, 2, out), 2);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[1], 4);
    assert_int_equal(sr_coord_place(cand, 4, load, 3, out), 3);
    assert_int_equal(out[0], 0); /* the lower of the loaded ones, 0 before 2 */
    assert_int_equal(out[1], 3);
    assert_int_equal(out[2], 4);
}

static void test_all(void **state) {
    (void)state;
    const int cand[] = {2, 0, 1};
    const int64_t load[] = {5, 0, 9};
    int out[3];
    for (int want = 0; want <= 7; want += 7) {
        assert_int_equal(sr_coord_place(cand, 3, load, want, out), 3);
        assert_int_equal(out[0], 0);
        assert_int_equal(out[1], 1);
        assert_int_equal(out[2], 2);
    }
    assert_int_equal(sr_coord_place(cand, 0, load, 2, out), 0);
    assert_int_equal(sr_coord_place(NULL, 2, load, 2, out), SR_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_least_loaded),
        cmocka_unit_test(test_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
