/* daemon/config.c: the option table's defaults; flags (long, short, =VALUE);
 * suffixes K/M/G; bounds at and past each end; every error class of a
 * config file (unknown key, no '=', a key twice, a bad value, a NUL byte)
 * and that its message names the file, the line, the key, the value and the
 * allowed range; comments and blank lines; precedence (flag over file over
 * default); --print-config read back as a config file; and the inputs kept
 * in tests/data/config/ (seed-*: must parse; bad-*: found by the fuzzer,
 * must fail; corpus-*: the fuzzer's merged corpus) each parse or fail with a
 * message, and what parses prints and reads back the same. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/status.h"
#include "daemon/config.h"
#include "tests/support/unit_main.h"

/* sr_config_parse_args on a NULL-terminated list of arguments after argv[0]. */
static int parse(sr_config *c, ...) {
    char *argv[32] = {"starringd"};
    int argc = 1;
    va_list ap;
    va_start(ap, c);
    for (char *a; (a = va_arg(ap, char *)) && argc < 31;) argv[argc++] = a;
    va_end(ap);
    return sr_config_parse_args(c, argc, argv);
}

static void assert_msg_has(const char *want) {
    if (!strstr(sr_error_msg(), want)) fail_msg("the message '%s' lacks '%s'", sr_error_msg(), want);
}

static char *write_file(const char *text) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/test_config_%d.conf", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_defaults_parse_and_are_in_range(void **state) {
    sr_config c;
    assert_int_equal(sr_config_init(&c), SR_OK);
    for (int i = 0; i < SR_CFG_N; i++) {
        const sr_cfg_def *d = &sr_cfg_table[i];
        assert_non_null(d->name);
        assert_non_null(d->help);
        assert_true(d->kind != SR_CFG_ENUM || d->choices);
        if (!d->def) assert_null(c.s[i]);
        else assert_string_equal(c.s[i], d->def);
    }
    assert_null(c.s[SR_CFG_MODEL]);
    assert_int_equal((int)c.v[SR_CFG_THREADS], 1);
    assert_true(c.v[SR_CFG_MAX_MESSAGE] == 4 << 20);
    assert_true(c.v[SR_CFG_MAX_FRAME] == 80 << 20);
    assert_int_equal((int)c.v[SR_CFG_MODE], 0);
    assert_int_equal((int)c.v[SR_CFG_LOG_LEVEL], 2); /* info */
    sr_config_free(&c);
}

static void test_flags(void **state) {
    sr_config c;
    assert_int_equal(parse(&c, "--model", "/m.gguf", "-t", "8", "--queue=3", "--mode", "ring", "--heartbeat", "0.25",
                           "--log-level", "debug", NULL),
                     SR_CFG_RUN);
    assert_string_equal(c.s[SR_CFG_MODEL], "/m.gguf");
    assert_int_equal((int)c.v[SR_CFG_THREADS], 8);
    assert_int_equal((int)c.v[SR_CFG_QUEUE], 3);
    assert_int_equal((int)c.v[SR_CFG_MODE], 1);
    assert_true(c.v[SR_CFG_HEARTBEAT] == 0.25);
    assert_int_equal((int)c.v[SR_CFG_LOG_LEVEL], 3);
    sr_config_free(&c);
    assert_int_equal(parse(&c, "-m", "/m", NULL), SR_CFG_RUN);
    assert_string_equal(c.s[SR_CFG_MODEL], "/m");
    sr_config_free(&c);
    assert_int_equal(parse(&c, "--help", NULL), SR_CFG_HELP);
    sr_config_free(&c);
    assert_int_equal(parse(&c, "--print-config", NULL), SR_CFG_PRINT); /* no --model needed */
    sr_config_free(&c);
}

static void test_flag_errors(void **state) {
    sr_config c;
    assert_int_equal(parse(&c, NULL), SR_EINVAL);
    assert_msg_has("--model is required");
    assert_int_equal(parse(&c, "--model", "m", "--bogus", "1", NULL), SR_EINVAL);
    assert_msg_has("unknown option '--bogus'");
    assert_int_equal(parse(&c, "--model", "m", "--threads", NULL), SR_EINVAL);
    assert_msg_has("--threads needs a value");
    assert_int_equal(parse(&c, "--model", "m", "extra", NULL), SR_EINVAL);
    assert_msg_has("unexpected argument 'extra'");
    assert_int_equal(parse(&c, "--model", "m", "--threads", "0", NULL), SR_EINVAL);
    assert_msg_has("--threads '0' is out of range");
    assert_msg_has("1..1024");
    assert_int_equal(parse(&c, "--model", "m", "--mode", "fast", NULL), SR_EINVAL);
    assert_msg_has("--mode 'fast'");
    assert_msg_has("star,ring,full");
    assert_int_equal(parse(&c, "--config", "/a", "--config", "/b", NULL), SR_EINVAL);
    assert_msg_has("--config is given twice");
    assert_int_equal(parse(&c, "--config", "/nonexistent/starringd.conf", NULL), SR_EIO);
    assert_msg_has("/nonexistent/starringd.conf");
}

/* What each kind takes and refuses: bounds at and past both ends, suffixes,
 * fractions, signs, hex, inf/nan, trailing junk, empty. */
static void test_values_and_bounds(void **state) {
    sr_config c;
    assert_int_equal(sr_config_init(&c), SR_OK);
    static const struct {
        int key;
        const char *text;
        double want; /* -1: refused */
    } cases[] = {
        {SR_CFG_THREADS, "1", 1},        {SR_CFG_THREADS, "1024", 1024},  {SR_CFG_THREADS, "1025", -1},
        {SR_CFG_THREADS, "0", -1},       {SR_CFG_THREADS, "-1", -1},      {SR_CFG_THREADS, "2.5", -1},
        {SR_CFG_THREADS, "4x", -1},      {SR_CFG_THREADS, "", -1},        {SR_CFG_THREADS, " 4", -1},
        {SR_CFG_THREADS, "0x10", -1},    {SR_CFG_THREADS, "1e1", 10},     {SR_CFG_THREADS, "4K", -1},
        {SR_CFG_KV_BUDGET, "0", 0},      {SR_CFG_KV_BUDGET, "1k", 1024},  {SR_CFG_KV_BUDGET, "3M", 3 << 20},
        {SR_CFG_KV_BUDGET, "2G", 2.0 * (1 << 30)},                        {SR_CFG_KV_BUDGET, "1.5K", 1536},
        {SR_CFG_KV_BUDGET, "0.3K", -1},  {SR_CFG_KV_BUDGET, "1T", -1},    {SR_CFG_KV_BUDGET, "G", -1},
        {SR_CFG_KV_BUDGET, "1e15", 1e15}, {SR_CFG_KV_BUDGET, "1000000000000001", -1},
        {SR_CFG_MAX_MESSAGE, "1K", 1024}, {SR_CFG_MAX_MESSAGE, "1023", -1}, {SR_CFG_MAX_MESSAGE, "1G", 1 << 30},
        {SR_CFG_MAX_MESSAGE, "1025M", -1}, {SR_CFG_MAX_FRAME, "2G", 2.0 * (1 << 30)},
        {SR_CFG_HEARTBEAT, "0.05", 0.05}, {SR_CFG_HEARTBEAT, "0.049", -1}, {SR_CFG_HEARTBEAT, "60", 60},
        {SR_CFG_HEARTBEAT, "inf", -1},   {SR_CFG_HEARTBEAT, "nan", -1},   {SR_CFG_HEARTBEAT, "1e999", -1},
        {SR_CFG_HEARTBEAT, ".5", 0.5},   {SR_CFG_SHUTDOWN_GRACE, "0", 0}, {SR_CFG_SHUTDOWN_GRACE, "3601", -1},
        {SR_CFG_MODE, "full", 2},        {SR_CFG_MODE, "Star", -1},       {SR_CFG_MODE, "", -1},
        {SR_CFG_MODE, "sta", -1},        {SR_CFG_MODE, "star,ring", -1},  {SR_CFG_LOG_LEVEL, "warn", 1},
        {SR_CFG_CONTROL, "", 0},         {SR_CFG_LISTEN, "0.0.0.0:1", 0}, {SR_CFG_MODEL, "/a#b c", 0},
        /* text a config file could not hold as it is */
        {SR_CFG_MODEL, " /m", -1},       {SR_CFG_MODEL, "/m\t", -1},      {SR_CFG_MODEL, "/m\nthreads = 2", -1},
        {SR_CFG_MODEL, "#m", -1},        {SR_CFG_MODEL, "/a #b", -1},     {SR_CFG_LOG_FILE, "/x\x7f", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = sr_config_set(&c, cases[i].key, cases[i].text, NULL);
        if (cases[i].want < 0) {
            if (rc != SR_EINVAL) fail_msg("--%s '%s' was taken", sr_cfg_table[cases[i].key].name, cases[i].text);
        } else {
            if (rc != SR_OK) fail_msg("--%s '%s' refused: %s", sr_cfg_table[cases[i].key].name, cases[i].text, sr_error_msg());
            if (c.v[cases[i].key] != cases[i].want)
                fail_msg("--%s '%s' is %.17g, not %.17g", sr_cfg_table[cases[i].key].name, cases[i].text, c.v[cases[i].key],
                         cases[i].want);
            assert_string_equal(c.s[cases[i].key], cases[i].text);
        }
    }
    /* a refused value leaves the old one */
    assert_int_equal(sr_config_set(&c, SR_CFG_THREADS, "7", NULL), SR_OK);
    assert_int_equal(sr_config_set(&c, SR_CFG_THREADS, "7000", NULL), SR_EINVAL);
    assert_int_equal((int)c.v[SR_CFG_THREADS], 7);
    assert_string_equal(c.s[SR_CFG_THREADS], "7");
    assert_int_equal(sr_config_set(&c, SR_CFG_N, "1", NULL), SR_EINVAL);
    sr_config_free(&c);
}

static void test_file_format(void **state) {
    sr_config c;
    assert_int_equal(sr_config_init(&c), SR_OK);
    const char *text = "# a comment\n"
                       "\n"
                       "   \t\n"
                       "model = /srv/models/a#b.gguf   # a '#' inside a value stays\n"
                       "threads=3\n"
                       "\tqueue   =   9\t\r\n"
                       "control =\n"
                       "kv-budget = 64M # sixty-four\n"
                       "mode = ring"; /* no newline at the end */
    assert_int_equal(sr_config_parse_text(&c, text, strlen(text), "t.conf"), SR_OK);
    assert_string_equal(c.s[SR_CFG_MODEL], "/srv/models/a#b.gguf");
    assert_int_equal((int)c.v[SR_CFG_THREADS], 3);
    assert_int_equal((int)c.v[SR_CFG_QUEUE], 9);
    assert_string_equal(c.s[SR_CFG_CONTROL], "");
    assert_true(c.v[SR_CFG_KV_BUDGET] == 64 << 20);
    assert_int_equal((int)c.v[SR_CFG_MODE], 1);
    sr_config_free(&c);
}

/* Each error class, and its message names file, line, key, value and range. */
static void test_file_errors(void **state) {
    static const struct {
        const char *text;
        int rc;
        const char *parts[4];
    } cases[] = {
        {"threads = 2\nthraeds = 4\n", SR_EINVAL, {"f.conf:2:", "unknown key 'thraeds'", NULL}},
        {"# ok\nthreads 4\n", SR_EFORMAT, {"f.conf:2:", "'threads 4' is not a 'key = value' line", NULL}},
        {"= 4\n", SR_EINVAL, {"f.conf:1:", "unknown key ''", NULL}},
        {"\n\nthreads = 2000\n", SR_EINVAL, {"f.conf:3:", "threads = '2000'", "out of range", "1..1024"}},
        {"max-message = 12Q\n", SR_EINVAL, {"f.conf:1:", "max-message = '12Q'", "byte count 1024..1073741824", NULL}},
        {"mode = fast\n", SR_EINVAL, {"f.conf:1:", "mode = 'fast'", "one of star,ring,full", NULL}},
        {"threads = 2\nqueue = 3\nthreads = 4\n", SR_EINVAL, {"f.conf:3:", "threads is set twice (first on line 1)", NULL}},
        {"threads =\n", SR_EINVAL, {"f.conf:1:", "threads = ''", "an integer", NULL}},
        {"config = other.conf\n", SR_EINVAL, {"f.conf:1:", "unknown key 'config'", NULL}},
        {"--threads = 2\n", SR_EINVAL, {"unknown key '--threads'", NULL}},
        {"thr\x01" "eads = 2\n", SR_EINVAL, {"unknown key 'thr\\x01eads'", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sr_config c;
        assert_int_equal(sr_config_init(&c), SR_OK);
        int rc = sr_config_parse_text(&c, cases[i].text, strlen(cases[i].text), "f.conf");
        if (rc != cases[i].rc) fail_msg("case %zu: %d, not %d (%s)", i, rc, cases[i].rc, sr_error_msg());
        for (int k = 0; k < 4 && cases[i].parts[k]; k++) assert_msg_has(cases[i].parts[k]);
        sr_config_free(&c);
    }
    /* a NUL byte: the text is not a config file */
    sr_config c;
    assert_int_equal(sr_config_init(&c), SR_OK);
    assert_int_equal(sr_config_parse_text(&c, "threads = 2\nqueue\0 = 3\n", 23, "f.conf"), SR_EFORMAT);
    assert_msg_has("f.conf:2: the line holds a NUL byte");
    sr_config_free(&c);
}

/* Flags override the file, the file overrides the defaults, in any order on
 * the command line; and an error in the file is reported as the file's. */
static void test_precedence(void **state) {
    char *path = write_file("model = /from/file\nthreads = 5\nqueue = 7\n");
    sr_config c;
    assert_int_equal(parse(&c, "--threads", "2", "--config", path, NULL), SR_CFG_RUN);
    assert_string_equal(c.s[SR_CFG_MODEL], "/from/file");
    assert_int_equal((int)c.v[SR_CFG_THREADS], 2);
    assert_int_equal((int)c.v[SR_CFG_QUEUE], 7);
    assert_int_equal((int)c.v[SR_CFG_BATCH], 4096);
    sr_config_free(&c);
    assert_int_equal(parse(&c, "--config", path, "-m", "/from/flag", NULL), SR_CFG_RUN);
    assert_string_equal(c.s[SR_CFG_MODEL], "/from/flag");
    assert_int_equal((int)c.v[SR_CFG_THREADS], 5);
    sr_config_free(&c);
    /* a bad value in the file fails even when a flag would override it */
    path = write_file("threads = 0\n");
    assert_int_equal(parse(&c, "--config", path, "--threads", "2", "-m", "x", NULL), SR_EINVAL);
    assert_msg_has(":1: threads = '0' is out of range");
    assert_msg_has(path);
    unlink(path);
}

/* --print-config writes a file that reads back to the same values. */
static void test_print_reads_back(void **state) {
    sr_config a, b;
    assert_int_equal(parse(&a, "-m", "/m.gguf", "--kv-budget", "3G", "--mode", "full", "--control", "", "--log-file",
                           "/var/log/s.log", NULL),
                     SR_CFG_RUN);
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    sr_config_print(f, &a);
    fclose(f);
    assert_int_equal(sr_config_init(&b), SR_OK);
    if (sr_config_parse_text(&b, buf, n, "printed") != SR_OK) fail_msg("%s\n%s", sr_error_msg(), buf);
    for (int i = 0; i < SR_CFG_N; i++) {
        assert_string_equal(a.s[i], b.s[i]);
        assert_true(a.v[i] == b.v[i]);
    }
    free(buf);
    sr_config_free(&a);
    sr_config_free(&b);
    /* without --model the printed file has it as a comment, and still reads */
    assert_int_equal(parse(&a, "--print-config", NULL), SR_CFG_PRINT);
    f = open_memstream(&buf, &n);
    sr_config_print(f, &a);
    fclose(f);
    assert_non_null(strstr(buf, "\n#model =\n"));
    assert_int_equal(sr_config_init(&b), SR_OK);
    assert_int_equal(sr_config_parse_text(&b, buf, n, "printed"), SR_OK);
    assert_null(b.s[SR_CFG_MODEL]);
    free(buf);
    sr_config_free(&a);
    sr_config_free(&b);
}

/* The same check as tests/fuzz/fuzz_config.c, on every kept input. */
static void test_kept_inputs(void **state) {
    DIR *d = opendir("tests/data/config");
    assert_non_null(d);
    int files = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof path, "tests/data/config/%s", e->d_name);
        sr_config c, back;
        assert_int_equal(sr_config_init(&c), SR_OK);
        files++;
        int rc = sr_config_load(&c, path);
        if (strncmp(e->d_name, "seed-", 5) == 0 && rc != SR_OK) fail_msg("%s does not parse: %s", path, sr_error_msg());
        if (strncmp(e->d_name, "bad-", 4) == 0 && rc == SR_OK) fail_msg("%s parses", path);
        if (rc != SR_OK) {
            assert_true(*sr_error_msg());
            sr_config_free(&c);
            continue;
        }
        char *buf = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&buf, &n);
        sr_config_print(f, &c);
        fclose(f);
        assert_int_equal(sr_config_init(&back), SR_OK);
        if (sr_config_parse_text(&back, buf, n, path) != SR_OK) fail_msg("%s: printed, it does not read back: %s", path, sr_error_msg());
        for (int i = 0; i < SR_CFG_N; i++) {
            if ((c.s[i] == NULL) != (back.s[i] == NULL) || (c.s[i] && strcmp(c.s[i], back.s[i])) || c.v[i] != back.v[i])
                fail_msg("%s: %s does not read back the same", path, sr_cfg_table[i].name);
        }
        free(buf);
        sr_config_free(&c);
        sr_config_free(&back);
    }
    closedir(d);
    assert_true(files >= 3);
}

SR_TEST_MAIN(cmocka_unit_test(test_defaults_parse_and_are_in_range), cmocka_unit_test(test_flags),
             cmocka_unit_test(test_flag_errors), cmocka_unit_test(test_values_and_bounds),
             cmocka_unit_test(test_file_format), cmocka_unit_test(test_file_errors), cmocka_unit_test(test_precedence),
             cmocka_unit_test(test_print_reads_back), cmocka_unit_test(test_kept_inputs))
