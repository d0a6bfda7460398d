/* lib/core/outfile.c: a download's output, visible only once published.
 * Both kinds: the unnamed file (O_TMPFILE; skipped where the test's
 * filesystem lacks it, said so) and the named fallback.  Each test runs in
 * its own mkdtemp directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "core/outfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char dir[64];
    char out[128];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/dfly-outfile-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->out, sizeof(f->out), "%s/file.bin", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;

    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlinkat(dirfd(d), e->d_name, 0);
    if (d)
        closedir(d);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Names in dir, "." and ".." left out; the first one in *first (if any). */
static int entries(const char *dir, char *first, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            if (n++ == 0 && first)
                snprintf(first, cap, "%s", e->d_name);
        }
    closedir(d);
    return n;
}

static void write_text(int fd, const char *text)
{
    assert_int_equal(pwrite(fd, text, strlen(text), 0), (ssize_t)strlen(text));
}

static void assert_content(const char *path, const char *text)
{
    char *got = NULL;
    size_t len = 0;

    assert_int_equal(df_read_file(path, 1 << 16, &got, &len), 0);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(got, text, len);
    free(got);
}

/* The unnamed kind: nothing listed until published; a close without
 * publishing leaves nothing; publishing links a new output and replaces an
 * existing one atomically, without a hidden name left. */
static void test_unnamed(void **state)
{
    fixture_t *f = *state;
    df_outfile_t of;
    struct stat st;

    assert_int_equal(df_outfile_open(&of, f->out), 0);
    if (of.path) {
        df_outfile_close(&of);
        skip(); /* no O_TMPFILE where the test runs: test_named covers it */
    }
    write_text(of.fd, "never published");
    assert_int_equal(entries(f->dir, NULL, 0), 0);
    df_outfile_close(&of);
    assert_int_equal(entries(f->dir, NULL, 0), 0);
    assert_int_equal(of.fd, -1);

    assert_int_equal(df_outfile_open(&of, f->out), 0);
    write_text(of.fd, "first");
    assert_int_equal(df_outfile_publish(&of, f->out, true), 0);
    df_outfile_close(&of); /* a published file stays */
    assert_content(f->out, "first");
    assert_int_equal(stat(f->out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    assert_int_equal(df_outfile_open(&of, f->out), 0);
    write_text(of.fd, "second");
    assert_content(f->out, "first"); /* nothing shows before publishing */
    assert_int_equal(df_outfile_publish(&of, f->out, false), 0);
    assert_content(f->out, "second");
    write_text(of.fd, "SECOND"); /* the descriptor is the output's now */
    df_outfile_close(&of);
    assert_content(f->out, "SECOND");
    assert_int_equal(entries(f->dir, NULL, 0), 1);
}

/* The named fallback: a hidden ".NAME.dfly-" file, renamed at publish,
 * removed by a close without publishing. */
static void test_named(void **state)
{
    fixture_t *f = *state;
    df_outfile_t of;
    char name[256];

    assert_int_equal(df_outfile_open_named(&of, f->out), 0);
    assert_non_null(of.path);
    assert_int_equal(entries(f->dir, name, sizeof(name)), 1);
    assert_int_equal(strncmp(name, ".file.bin.dfly-", 15), 0);
    df_outfile_close(&of);
    assert_int_equal(entries(f->dir, NULL, 0), 0);

    assert_int_equal(df_outfile_open_named(&of, f->out), 0);
    write_text(of.fd, "named");
    assert_int_equal(df_outfile_publish(&of, f->out, true), 0);
    assert_null(of.path);
    df_outfile_close(&of);
    assert_content(f->out, "named");
    assert_int_equal(entries(f->dir, name, sizeof(name)), 1);
    assert_string_equal(name, "file.bin");
}

/* Refusals: an output that names no file, another directory (the link or
 * rename must stay on one filesystem), a directory that does not exist. */
static void test_refusals(void **state)
{
    fixture_t *f = *state;
    df_outfile_t of;
    char other[160], bad[160];

    assert_int_equal(df_outfile_open(&of, ""), -EINVAL);
    snprintf(bad, sizeof(bad), "%s/", f->dir);
    assert_int_equal(df_outfile_open(&of, bad), -EINVAL);
    snprintf(bad, sizeof(bad), "%s/..", f->dir);
    assert_int_equal(df_outfile_open(&of, bad), -EINVAL);
    snprintf(bad, sizeof(bad), "%s/missing/file.bin", f->dir);
    assert_int_equal(df_outfile_open(&of, bad), -ENOENT);

    assert_int_equal(df_outfile_open(&of, f->out), 0);
    snprintf(other, sizeof(other), "%s-elsewhere.bin", f->dir);
    assert_int_equal(df_outfile_publish(&of, other, false), -EXDEV);
    assert_int_equal(access(other, F_OK), -1);
    df_outfile_close(&of);
    assert_int_equal(entries(f->dir, NULL, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unnamed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
