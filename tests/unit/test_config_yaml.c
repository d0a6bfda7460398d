/* Unit tests for YAML config flattening (lib/core/config_yaml.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/config_yaml.h"
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse(const char *text, df_config_list_t *l, char *err, size_t errcap)
{
    return df_config_yaml_parse(text, strlen(text), l, err, errcap);
}

static void expect(const df_config_list_t *l, size_t i, const char *key, const char *value,
                   int line)
{
    assert_true(i < l->n);
    assert_string_equal(l->entries[i].key, key);
    assert_string_equal(l->entries[i].value, value);
    if (line)
        assert_int_equal(l->entries[i].line, line);
}

static void test_flatten(void **state)
{
    const char *text = "# supernode\n"
                       "listen: 0.0.0.0:8002\n"
                       "base:\n"
                       "  data-dir: /var/lib/dfly\n"
                       "  limits:\n"
                       "    peer: 4\n"
                       "nodes: [a:8002, b:8002]\n"
                       "headers:\n"
                       "  - 'X-A: 1'\n"
                       "  - \"X-B: 2\"\n"
                       "empty:\n"
                       "nested: [[1, 2], [3]]\n"
                       "objs: [{host: h1, port: 1}, {host: h2}]\n"
                       "text: |\n"
                       "  two\n"
                       "  lines\n"
                       "listen: 0.0.0.0:9000\n";
    df_config_list_t l;
    char err[128];
    (void)state;

    assert_int_equal(parse(text, &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 16);
    expect(&l, 0, "listen", "0.0.0.0:8002", 2);
    expect(&l, 1, "base.data-dir", "/var/lib/dfly", 4);
    expect(&l, 2, "base.limits.peer", "4", 6);
    expect(&l, 3, "nodes", "a:8002", 7);
    expect(&l, 4, "nodes", "b:8002", 7);
    expect(&l, 5, "headers", "X-A: 1", 9);
    expect(&l, 6, "headers", "X-B: 2", 10);
    expect(&l, 7, "empty", "", 0);
    expect(&l, 8, "nested", "1", 12);
    expect(&l, 9, "nested", "2", 12);
    expect(&l, 10, "nested", "3", 12);
    expect(&l, 11, "objs.host", "h1", 13);
    expect(&l, 12, "objs.port", "1", 13);
    expect(&l, 13, "objs.host", "h2", 13);
    expect(&l, 14, "text", "two\nlines\n", 14);
    expect(&l, 15, "listen", "0.0.0.0:9000", 17);
    assert_string_equal(df_config_get(&l, "listen"), "0.0.0.0:9000");
    assert_string_equal(df_config_get(&l, "base.limits.peer"), "4");
    assert_null(df_config_get(&l, "base"));
    assert_null(df_config_get(&l, "missing"));
    df_config_list_free(&l);
    df_config_list_free(&l); /* idempotent */
}

static void test_empty_documents(void **state)
{
    const char *empties[] = {"", "# only a comment\n", "---\n", "~\n", "{}\n"};
    df_config_list_t l;
    char err[128];
    (void)state;

    for (size_t i = 0; i < sizeof(empties) / sizeof(empties[0]); i++) {
        assert_int_equal(parse(empties[i], &l, err, sizeof(err)), 0);
        assert_int_equal(l.n, 0);
        df_config_list_free(&l);
    }
}

static void expect_error(const char *text, int rc, const char *msg)
{
    df_config_list_t l;
    char err[256];

    assert_int_equal(parse(text, &l, err, sizeof(err)), rc);
    assert_int_equal(l.n, 0);
    assert_null(l.entries);
    if (strstr(err, msg) == NULL)
        fail_msg("error '%s' lacks '%s'", err, msg);
    df_config_list_free(&l);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("a: 1\nb: [1, 2\n", DF_ECONFIG, "line 3:");
    expect_error("a: 1\n  b: 2\n", DF_ECONFIG, "line 2:");
    expect_error("- a\n- b\n", DF_ECONFIG, "line 1: the document must be a mapping");
    expect_error("just text\n", DF_ECONFIG, "must be a mapping");
    expect_error("a: &x 1\nb: *x\n", DF_ECONFIG, "line 2: aliases are not supported");
    expect_error("? [a, b]\n: 1\n", DF_ECONFIG, "complex mapping keys");
    expect_error("a: 1\n---\nb: 2\n", DF_ECONFIG, "line 2: more than one document");
    expect_error("a: \"x\\0y\"\n", DF_ECONFIG, "NUL byte");
    expect_error("\"\": 1\n", DF_ECONFIG, "empty key");
}

static void test_caps(void **state)
{
    df_config_list_t l;
    df_buf_t b;
    char err[256];
    (void)state;

    /* Depth: 8 levels are fine, 9 are not. */
    assert_int_equal(parse("a: {b: {c: {d: {e: {f: {g: {h: 1}}}}}}}\n", &l, err, sizeof(err)), 0);
    expect(&l, 0, "a.b.c.d.e.f.g.h", "1", 1);
    df_config_list_free(&l);
    expect_error("a: {b: {c: {d: {e: {f: {g: {h: {i: 1}}}}}}}}\n", DF_ETOOBIG, "nested deeper");
    expect_error("a: [[[[[[[[1]]]]]]]]\n", DF_ETOOBIG, "nested deeper");

    /* Entries: 1024 fine, 1025 not. */
    df_buf_init(&b, 1 << 20);
    assert_int_equal(df_buf_append(&b, "k: [", 4), 0);
    for (int i = 0; i < 1024; i++)
        assert_int_equal(df_buf_printf(&b, "%s%d", i ? "," : "", i), 0);
    assert_int_equal(df_buf_append(&b, "]\n", 2), 0);
    assert_int_equal(parse(b.data, &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1024);
    df_config_list_free(&l);
    b.len -= 2;
    assert_int_equal(df_buf_append(&b, ",x]\n", 4), 0);
    expect_error(b.data, DF_ETOOBIG, "more than 1024 entries");
    df_buf_free(&b);

    /* Key length. */
    df_buf_init(&b, 1 << 20);
    for (int i = 0; i < 300; i++)
        assert_int_equal(df_buf_append(&b, "k", 1), 0);
    assert_int_equal(df_buf_append(&b, ": 1\n", 4), 0);
    expect_error(b.data, DF_ETOOBIG, "key longer");
    df_buf_free(&b);

    /* Input size, checked before parsing. */
    assert_int_equal(df_config_yaml_parse("a: 1", DF_CONFIG_FILE_MAX + 1, &l, err, sizeof(err)),
                     DF_ETOOBIG);
    /* Not NUL-terminated input: only len bytes are read. */
    assert_int_equal(df_config_yaml_parse("a: 1b: 2", 4, &l, NULL, 0), 0);
    expect(&l, 0, "a", "1", 1);
    assert_int_equal(l.n, 1);
    df_config_list_free(&l);
}

static void test_load_file(void **state)
{
    char path[] = "/tmp/df_test_config_XXXXXX";
    df_config_list_t l;
    char err[512];
    FILE *f;
    int fd;
    (void)state;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fputs("listen: 1.2.3.4:1\nbad: [\n", f);
    fclose(f);
    assert_int_equal(df_config_yaml_load(path, &l, err, sizeof(err)), DF_ECONFIG);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "line 3:"));

    f = fopen(path, "w");
    assert_non_null(f);
    fputs("listen: 1.2.3.4:1\n", f);
    fclose(f);
    assert_int_equal(df_config_yaml_load(path, &l, err, sizeof(err)), 0);
    assert_string_equal(df_config_get(&l, "listen"), "1.2.3.4:1");
    df_config_list_free(&l);

    /* Over 1 MiB. */
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 110000; i++)
        fputs("# padding\n", f);
    fclose(f);
    assert_int_equal(df_config_yaml_load(path, &l, err, sizeof(err)), DF_ETOOBIG);
    assert_non_null(strstr(err, "larger"));
    unlink(path);

    assert_int_equal(df_config_yaml_load(path, &l, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flatten),
        cmocka_unit_test(test_empty_documents),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
