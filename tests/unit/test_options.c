/* Unit tests for the option values the programs share (lib/core/options.c)
 * and df_mkdir_p (lib/core/util.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_node_list_ok(void **state)
{
    char **list = NULL;

    (void)state;
    assert_int_equal(df_parse_node_list("10.0.0.5", &list), 1);
    assert_string_equal(list[0], "10.0.0.5:8002");
    assert_null(list[1]);
    df_node_list_free(list);

    assert_int_equal(df_parse_node_list("a:1,b,[::1]:9,[fe80::1]:8003", &list), 4);
    assert_string_equal(list[0], "a:1");
    assert_string_equal(list[1], "b:8002");
    assert_string_equal(list[2], "[::1]:9");
    assert_string_equal(list[3], "[fe80::1]:8003");
    assert_null(list[4]);
    df_node_list_free(list);
    df_node_list_free(NULL);
}

static void test_node_list_bad(void **state)
{
    static const char *const bad[] = {
        "", ",", "a,", ",a", "a,,b", "a:0", "a:65536", "a:x", ":80", "[::1]", "::1", "::1:80",
        "[::1", "a:-1",
    };
    char **list = (char **)(uintptr_t)1; /* must stay untouched */

    (void)state;
    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++) {
        int rc = df_parse_node_list(bad[i], &list);
        if (rc != -EINVAL)
            fail_msg("\"%s\" gave %d", bad[i], rc);
        assert_ptr_equal(list, (char **)(uintptr_t)1);
    }
    assert_int_equal(df_parse_node_list(NULL, &list), -EINVAL);
}

static void test_node_list_caps(void **state)
{
    char text[DF_NODE_LIST_MAX * 4 + 8], host[400];
    char **list = NULL;
    size_t len = 0;

    (void)state;
    for (int i = 0; i < DF_NODE_LIST_MAX; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%sh", i ? "," : "");
    assert_int_equal(df_parse_node_list(text, &list), DF_NODE_LIST_MAX);
    assert_string_equal(list[DF_NODE_LIST_MAX - 1], "h:8002");
    assert_null(list[DF_NODE_LIST_MAX]);
    df_node_list_free(list);
    snprintf(text + len, sizeof(text) - len, ",h");
    assert_int_equal(df_parse_node_list(text, &list), -EINVAL);

    memset(host, 'x', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    assert_int_equal(df_parse_node_list(host, &list), -EINVAL);
}

static void test_log_level(void **state)
{
    df_log_level_t l = DF_LOG_INFO;

    (void)state;
    assert_int_equal(df_parse_log_level("error", &l), 0);
    assert_int_equal(l, DF_LOG_ERROR);
    assert_int_equal(df_parse_log_level("WARN", &l), 0);
    assert_int_equal(l, DF_LOG_WARN);
    assert_int_equal(df_parse_log_level("info", &l), 0);
    assert_int_equal(l, DF_LOG_INFO);
    assert_int_equal(df_parse_log_level("Debug", &l), 0);
    assert_int_equal(l, DF_LOG_DEBUG);
    assert_int_equal(df_parse_log_level("trace", &l), -EINVAL);
    assert_int_equal(df_parse_log_level("", &l), -EINVAL);
    assert_int_equal(l, DF_LOG_DEBUG);
}

static void test_default_home(void **state)
{
    char *saved = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    char out[64], tiny[8];

    (void)state;
    setenv("HOME", "/home/u", 1);
    assert_int_equal(df_default_home(out, sizeof(out)), 0);
    assert_string_equal(out, "/home/u/.dfly");
    assert_int_equal(df_default_home(tiny, sizeof(tiny)), -ENAMETOOLONG);
    setenv("HOME", "", 1);
    assert_int_equal(df_default_home(out, sizeof(out)), 0);
    assert_string_equal(out, "/root/.dfly");
    unsetenv("HOME");
    assert_int_equal(df_default_home(out, sizeof(out)), 0);
    assert_string_equal(out, "/root/.dfly");
    if (saved)
        setenv("HOME", saved, 1);
    free(saved);
}

static void test_mkdir_p(void **state)
{
    char base[64], deep[128];
    struct stat st;

    (void)state;
    snprintf(base, sizeof(base), "/tmp/test_options.%d", (int)getpid());
    snprintf(deep, sizeof(deep), "%s/a/b/c//", base);
    assert_int_equal(df_mkdir_p(deep, 0700), 0);
    assert_int_equal(df_mkdir_p(deep, 0700), 0); /* existing: fine */
    snprintf(deep, sizeof(deep), "%s/a/b/c", base);
    assert_int_equal(stat(deep, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777 & ~0700, 0);
    rmdir(deep);
    snprintf(deep, sizeof(deep), "%s/a/b", base);
    rmdir(deep);
    snprintf(deep, sizeof(deep), "%s/a", base);
    rmdir(deep);
    rmdir(base);
}

static void test_header_line(void **state)
{
    (void)state;
    assert_true(df_header_line_ok("Authorization: Bearer abc"));
    assert_true(df_header_line_ok("X-A:"));
    assert_false(df_header_line_ok(": v"));
    assert_false(df_header_line_ok("No colon"));
    assert_false(df_header_line_ok("Bad Name: v"));
    assert_false(df_header_line_ok("A: v\r\nB: w"));
    assert_false(df_header_line_ok("A: v\n"));
    assert_false(df_header_line_ok("\x80: v"));
    assert_false(df_header_line_ok(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_list_ok),   cmocka_unit_test(test_node_list_bad),
        cmocka_unit_test(test_node_list_caps), cmocka_unit_test(test_log_level),
        cmocka_unit_test(test_default_home),   cmocka_unit_test(test_mkdir_p),
        cmocka_unit_test(test_header_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
