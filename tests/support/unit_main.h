/* The main() of a cmocka unit test program: the listed tests
 * (cmocka_unit_test(name), ...) as one group, so that a run prints one TAP
 * plan (tests/run sets CMOCKA_MESSAGE_OUTPUT=TAP). Include after <cmocka.h>;
 * a program with a group setup, or work before the tests, writes its own. */
#ifndef SR_TESTS_SUPPORT_UNIT_MAIN_H
#define SR_TESTS_SUPPORT_UNIT_MAIN_H

#define SR_TEST_MAIN(...)                                 \
    int main(void) {                                      \
        const struct CMUnitTest tests[] = {__VA_ARGS__};  \
        return cmocka_run_group_tests(tests, NULL, NULL); \
    }

#endif
