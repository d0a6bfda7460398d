/* The on-disk piece store: lifecycle, verification, persistence, GC, export
 * and hostile input (task ids, meta.json).  Each test runs in its own
 * mkdtemp directory, removed afterwards. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "piece/piece.h"
#include "piece/piece_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#define PS 4096u
#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define ID_D "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
#define ID_E "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

typedef struct {
    char dir[64];
    char store_dir[128];
} fixture_t;

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/dfly-store-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->store_dir, sizeof(f->store_dir), "%s/store", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;

    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Deterministic content for byte i of a file. */
static uint8_t byte_at(uint64_t i, uint8_t salt)
{
    return (uint8_t)((i * 131 + (i >> 8) + salt) & 0xff);
}

/* Writes, hashes and marks piece idx of t. */
static void fill_piece(df_stored_task_t *t, uint32_t idx, uint8_t salt)
{
    uint64_t off, len;
    uint8_t *buf, sha[32];

    df_piece_span(df_stored_task_length(t), df_stored_task_piece_size(t), idx, &off, &len);
    buf = malloc(len);
    assert_non_null(buf);
    for (uint64_t i = 0; i < len; i++)
        buf[i] = byte_at(off + i, salt);
    assert_int_equal(df_stored_task_write(t, off, buf, len), 0);
    df_sha256(buf, len, sha);
    assert_int_equal(df_stored_task_mark_piece(t, idx, sha), 0);
    free(buf);
}

static void fill_all(df_stored_task_t *t, uint8_t salt)
{
    for (uint32_t i = 0; i < df_stored_task_piece_count(t); i++)
        fill_piece(t, i, salt);
    assert_true(df_stored_task_complete(t));
}

static df_stored_task_t *create(df_store_t *s, const char *id, uint64_t length)
{
    df_task_shape_t shape = {.url = "http://origin/f", .length = length, .piece_size = PS};
    df_stored_task_t *t = NULL;

    assert_int_equal(df_store_task_create(s, id, &shape, &t), 0);
    assert_non_null(t);
    return t;
}

/* Whether <dir>/tasks/<id>[/<name>] exists. */
static bool task_path_exists(const char *store_dir, const char *id, const char *name)
{
    char p[PATH_MAX];
    struct stat st;

    snprintf(p, sizeof(p), "%s/tasks/%s%s%s", store_dir, id, name ? "/" : "", name ? name : "");
    return stat(p, &st) == 0;
}

static bool path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void test_create_write_mark(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t, *t2;
    uint8_t buf[100], sha[32];

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 3 * PS + 100);
    assert_int_equal(df_stored_task_piece_count(t), 4);
    assert_string_equal(df_stored_task_id(t), ID_A);
    assert_int_equal(df_store_bytes(s), 3 * PS + 100);
    assert_false(df_stored_task_complete(t));
    assert_false(df_stored_task_range_ready(t, 0, 1));
    assert_true(task_path_exists(f->store_dir, ID_A, "data"));
    assert_true(task_path_exists(f->store_dir, ID_A, "meta.json"));

    fill_piece(t, 0, 1);
    fill_piece(t, 3, 1); /* the 100-byte last piece */
    assert_true(df_stored_task_has_piece(t, 0));
    assert_false(df_stored_task_has_piece(t, 1));
    assert_false(df_stored_task_has_piece(t, 99));
    assert_true(df_stored_task_range_ready(t, 0, PS));
    assert_false(df_stored_task_range_ready(t, 0, PS + 1));
    assert_true(df_stored_task_range_ready(t, 3 * PS, 100));
    assert_false(df_stored_task_range_ready(t, 3 * PS, 101));      /* past the end */
    assert_true(df_stored_task_range_ready(t, 3 * PS + 100, 0));
    assert_false(df_stored_task_range_ready(t, UINT64_MAX, 2));
    assert_int_equal(df_bitmap_count(df_stored_task_bitmap(t), 4), 2);

    /* Marking recorded the piece digest. */
    assert_true(df_stored_task_piece_digest(t, 0, sha));
    assert_false(df_stored_task_piece_digest(t, 1, sha));

    assert_int_equal(df_stored_task_read(t, 3 * PS, buf, 100), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf[i], byte_at(3 * PS + (uint64_t)i, 1));
    /* Bounds: no reads or writes past the task length. */
    assert_int_equal(df_stored_task_write(t, 3 * PS + 1, buf, 100), -EINVAL);
    assert_int_equal(df_stored_task_read(t, UINT64_MAX, buf, 2), -EINVAL);
    assert_int_equal(df_stored_task_mark_piece(t, 4, sha), -EINVAL);

    fill_piece(t, 1, 1);
    fill_piece(t, 2, 1);
    assert_true(df_stored_task_complete(t));
    df_stored_task_unmark_piece(t, 2);
    assert_false(df_stored_task_complete(t));
    df_stored_task_unmark_piece(t, 2); /* idempotent */
    fill_piece(t, 2, 1);

    /* Same shape: the same task, another reference. */
    t2 = create(s, ID_A, 3 * PS + 100);
    assert_ptr_equal(t, t2);
    assert_true(df_stored_task_complete(t2));
    df_stored_task_unref(t2);
    assert_int_equal(df_store_task_get(s, ID_A, &t2), 0);
    assert_ptr_equal(t, t2);
    df_stored_task_unref(t2);
    assert_int_equal(df_store_task_get(s, ID_B, &t2), -ENOENT);

    df_stored_task_unref(t);
    df_store_close(s);
}

static void test_verify_mismatch(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    uint8_t good[32], bad[32], got[32];

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 2 * PS);
    df_sha256("piece zero", 10, good);
    memcpy(bad, good, 32);
    bad[31] ^= 1;

    assert_int_equal(df_stored_task_set_piece_digest(t, 0, good), 0);
    assert_true(df_stored_task_piece_digest(t, 0, got));
    assert_memory_equal(got, good, 32);
    assert_int_equal(df_stored_task_mark_piece(t, 0, bad), DF_EDIGEST);
    assert_false(df_stored_task_has_piece(t, 0));
    assert_true(df_stored_task_piece_digest(t, 0, got)); /* unchanged */
    assert_memory_equal(got, good, 32);
    assert_int_equal(df_stored_task_mark_piece(t, 0, good), 0);
    assert_true(df_stored_task_has_piece(t, 0));

    /* A different expectation for a verified piece unmarks it. */
    assert_int_equal(df_stored_task_set_piece_digest(t, 0, bad), 0);
    assert_false(df_stored_task_has_piece(t, 0));
    assert_int_equal(df_stored_task_set_piece_digest(t, 2, good), -EINVAL);

    df_stored_task_unref(t);
    df_store_close(s);
}

static void test_reopen_persists(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    df_digest_t d, d2;
    uint8_t sha[32], buf[PS];
    char path[PATH_MAX];

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 4 * PS);
    fill_piece(t, 1, 7);
    fill_piece(t, 3, 7);
    df_sha256("expected", 8, sha);
    assert_int_equal(df_stored_task_set_piece_digest(t, 2, sha), 0);
    assert_int_equal(df_digest_parse("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &d), 0);
    assert_int_equal(df_stored_task_set_digest(t, &d), 0);
    assert_int_equal(df_stored_task_set_validators(t, "\"abc\"", "Tue, 15 Nov 1994 08:12:31 GMT"), 0);
    assert_int_equal(df_stored_task_sync(t), 0);
    snprintf(path, sizeof(path), "%s", df_stored_task_data_path(t));
    df_stored_task_unref(t);
    /* A marked piece after the last sync is flushed at close. */
    assert_int_equal(df_store_task_get(s, ID_A, &t), 0);
    fill_piece(t, 0, 7);
    df_stored_task_unref(t);
    df_store_close(s);

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_get(s, ID_A, &t), 0);
    assert_int_equal(df_stored_task_length(t), 4 * PS);
    assert_int_equal(df_stored_task_piece_size(t), PS);
    assert_true(df_stored_task_has_piece(t, 0));
    assert_true(df_stored_task_has_piece(t, 1));
    assert_false(df_stored_task_has_piece(t, 2));
    assert_true(df_stored_task_has_piece(t, 3));
    assert_true(df_stored_task_piece_digest(t, 2, buf));
    assert_memory_equal(buf, sha, 32);
    assert_true(df_stored_task_digest(t, &d2));
    assert_true(df_digest_equal(&d, &d2));
    assert_string_equal(df_stored_task_etag(t), "\"abc\"");
    assert_string_equal(df_stored_task_last_modified(t), "Tue, 15 Nov 1994 08:12:31 GMT");
    assert_string_equal(df_stored_task_data_path(t), path);
    assert_int_equal(df_stored_task_read(t, PS, buf, PS), 0);
    for (unsigned i = 0; i < PS; i++)
        assert_int_equal(buf[i], byte_at(PS + i, 7));
    /* The expected digest is still enforced after reopening. */
    assert_int_equal(df_stored_task_mark_piece(t, 2, buf), DF_EDIGEST);
    df_stored_task_unref(t);
    df_store_close(s);
}

/* After a crash the data file may be gone or cut: nothing is trusted. */
static void test_reopen_bad_data(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    char path[PATH_MAX];

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 2 * PS);
    fill_all(t, 1);
    df_stored_task_unref(t);
    t = create(s, ID_B, 2 * PS);
    fill_all(t, 1);
    df_stored_task_unref(t);
    df_store_close(s);

    snprintf(path, sizeof(path), "%s/tasks/%s/data", f->store_dir, ID_A);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof(path), "%s/tasks/%s/data", f->store_dir, ID_B);
    assert_int_equal(truncate(path, PS), 0);

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_get(s, ID_A, &t), 0);
    assert_int_equal(df_stored_task_piece_count(t), 2);
    assert_false(df_stored_task_has_piece(t, 0));
    df_stored_task_unref(t);
    assert_int_equal(df_store_task_get(s, ID_B, &t), 0);
    assert_false(df_stored_task_has_piece(t, 0));
    /* The expected piece digests survive (they describe the file, not the
     * lost bytes): other content is refused, the right content accepted. */
    {
        uint8_t junk[PS], sha[32];
        memset(junk, 0x5a, sizeof(junk));
        df_sha256(junk, sizeof(junk), sha);
        assert_int_equal(df_stored_task_mark_piece(t, 0, sha), DF_EDIGEST);
    }
    fill_all(t, 1); /* usable again at full length */
    df_stored_task_unref(t);
    df_store_close(s);
}

static void test_recreate_new_shape(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *old, *t;
    struct stat st_old, st_new;
    uint8_t b;

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    old = create(s, ID_A, 2 * PS);
    fill_all(old, 3);
    assert_int_equal(fstat(df_stored_task_fd(old), &st_old), 0);

    /* An upload still holds `old` while the task is recreated. */
    t = create(s, ID_A, 3 * PS);
    assert_ptr_not_equal(t, old);
    assert_int_equal(df_stored_task_piece_count(t), 3);
    assert_false(df_stored_task_has_piece(t, 0));
    assert_int_equal(df_store_bytes(s), 3 * PS);
    assert_int_equal(stat(df_stored_task_data_path(t), &st_new), 0);
    assert_true(st_new.st_ino != st_old.st_ino); /* a new file, not a truncated one */
    assert_int_equal(st_new.st_size, 3 * PS);

    /* The holder of the old task still reads the old bytes. */
    assert_int_equal(df_stored_task_read(old, 5, &b, 1), 0);
    assert_int_equal(b, byte_at(5, 3));
    assert_true(df_stored_task_complete(old));
    assert_int_equal(df_stored_task_sync(old), 0); /* detached: a no-op */
    df_stored_task_unref(old);

    /* Different piece size alone also recreates. */
    df_task_shape_t shape = {.length = 3 * PS, .piece_size = 2 * PS};
    df_stored_task_t *t3;
    assert_int_equal(df_store_task_create(s, ID_A, &shape, &t3), 0);
    assert_int_equal(df_stored_task_piece_count(t3), 2);
    df_stored_task_unref(t3);
    df_stored_task_unref(t);
    df_store_close(s);

    /* The new shape is what persists. */
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_get(s, ID_A, &t), 0);
    assert_int_equal(df_stored_task_piece_size(t), 2 * PS);
    df_stored_task_unref(t);
    df_store_close(s);
}

static void test_bad_shape(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t = NULL;
    df_task_shape_t zero = {.length = 10, .piece_size = 0};
    df_task_shape_t huge_ps = {.length = 10, .piece_size = DF_PIECE_SIZE_MAX + 1ull};
    df_task_shape_t too_many = {.length = (uint64_t)DF_PIECE_COUNT_MAX * PS + 1, .piece_size = PS};

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_create(s, ID_A, &zero, &t), -EINVAL);
    assert_int_equal(df_store_task_create(s, ID_A, &huge_ps, &t), -EINVAL);
    assert_int_equal(df_store_task_create(s, ID_A, &too_many, &t), -EFBIG);
    assert_int_equal(df_store_task_create(s, ID_A, NULL, &t), -EINVAL);
    assert_null(t);
    assert_false(task_path_exists(f->store_dir, ID_A, NULL));
    df_store_close(s);
}

static void test_empty_task(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    char out[PATH_MAX];
    struct stat st;

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 0);
    assert_int_equal(df_stored_task_piece_count(t), 0);
    assert_true(df_stored_task_complete(t));
    assert_true(df_stored_task_range_ready(t, 0, 0));
    snprintf(out, sizeof(out), "%s/empty", f->dir);
    assert_int_equal(df_stored_task_export(t, out, true), 0);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_size, 0);
    df_stored_task_unref(t);
    df_store_close(s);
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_get(s, ID_A, &t), 0);
    df_stored_task_unref(t);
    df_store_close(s);
}

typedef struct {
    char ids[8][DF_TASK_ID_LEN + 1];
    int n;
} evicted_t;

static void on_evict(const char *id, void *arg)
{
    evicted_t *e = arg;

    assert_true(e->n < 8);
    memcpy(e->ids[e->n++], id, DF_TASK_ID_LEN + 1);
}

static void test_gc(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *a, *b, *c, *d, *e;
    evicted_t ev = {.n = 0};

    /* Budget: three 2-piece tasks. */
    assert_int_equal(df_store_open(f->store_dir, 6 * PS, &s), 0);
    a = create(s, ID_A, 2 * PS);
    b = create(s, ID_B, 2 * PS);
    c = create(s, ID_C, 2 * PS);
    fill_all(a, 1);
    fill_all(b, 1);
    fill_all(c, 1);
    assert_int_equal(df_store_gc(s, on_evict, &ev), 0); /* within budget */

    d = create(s, ID_D, 2 * PS); /* incomplete, then unreferenced */
    e = create(s, ID_E, 2 * PS); /* complete, stays referenced */
    fill_all(e, 1);
    df_stored_task_unref(d);
    /* Use order, oldest first: b, a, c (touching a after b). */
    df_stored_task_touch(b);
    df_stored_task_touch(a);
    df_stored_task_touch(c);
    df_stored_task_unref(a);
    df_stored_task_unref(b);
    df_stored_task_unref(c);
    assert_int_equal(df_store_bytes(s), 10 * PS);

    /* 10 pieces' worth, budget 6: evict b then a.  d (incomplete) and e
     * (referenced) are never candidates. */
    assert_int_equal(df_store_gc(s, on_evict, &ev), 2);
    assert_int_equal(ev.n, 2);
    assert_string_equal(ev.ids[0], ID_B);
    assert_string_equal(ev.ids[1], ID_A);
    assert_int_equal(df_store_bytes(s), 6 * PS);
    assert_false(task_path_exists(f->store_dir, ID_B, NULL));
    assert_false(task_path_exists(f->store_dir, ID_A, NULL));
    assert_int_equal(df_store_task_get(s, ID_B, &b), -ENOENT);

    /* Tighter budget: only c can go; d and e remain even over budget. */
    df_store_close(s);
    assert_int_equal(df_store_open(f->store_dir, 1, &s), 0);
    ev.n = 0;
    assert_int_equal(df_store_gc(s, on_evict, &ev), 2); /* reopened: e no longer referenced */
    assert_int_equal(df_store_task_get(s, ID_D, &d), 0);
    df_stored_task_unref(d);
    assert_int_equal(df_store_task_get(s, ID_C, &c), -ENOENT);
    df_stored_task_unref(e); /* outlived the store: freed now */
    df_store_close(s);
}

static void test_gc_max_age(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *a, *b, *c;
    evicted_t ev = {.n = 0};
    struct timespec ms20 = {0, 20 * 1000 * 1000};

    /* No budget, an age limit only: first one no test run can outlive
     * (a loaded machine may take more than 10 ms to get here), then 10 ms. */
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    df_store_set_max_age(s, 3600 * 1000);
    a = create(s, ID_A, 2 * PS); /* complete, unreferenced: goes */
    b = create(s, ID_B, 2 * PS); /* complete, in use (referenced): stays */
    c = create(s, ID_C, 2 * PS); /* incomplete (being downloaded): stays */
    fill_all(a, 1);
    fill_all(b, 1);
    df_stored_task_unref(a);
    df_stored_task_unref(c);
    assert_int_equal(df_store_gc(s, on_evict, &ev), 0); /* all young */
    df_store_set_max_age(s, 10);
    nanosleep(&ms20, NULL);
    assert_int_equal(df_store_gc(s, on_evict, &ev), 1);
    assert_string_equal(ev.ids[0], ID_A);
    assert_int_equal(df_store_evicted(s), 1);
    assert_int_equal(df_store_task_get(s, ID_C, &c), 0); /* a get is a use */
    df_stored_task_unref(c);
    df_stored_task_unref(b);
    /* b is old and free now; c was just used. */
    assert_int_equal(df_store_gc(s, on_evict, &ev), 1);
    assert_string_equal(ev.ids[1], ID_B);
    df_store_set_max_age(s, 0);
    nanosleep(&ms20, NULL);
    assert_int_equal(df_store_gc(s, on_evict, &ev), 0); /* no limit */
    assert_int_equal(df_store_task_count(s), 1);
    df_store_close(s);
}

static void test_gc_respects_refs(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *a, *b;

    assert_int_equal(df_store_open(f->store_dir, 1, &s), 0);
    a = create(s, ID_A, PS);
    b = create(s, ID_B, PS);
    fill_all(a, 1);
    fill_all(b, 1);
    assert_int_equal(df_store_gc(s, NULL, NULL), 0);
    df_stored_task_unref(a);
    assert_int_equal(df_store_gc(s, NULL, NULL), 1);
    assert_int_equal(df_store_bytes(s), PS);
    df_stored_task_unref(b);
    /* Unlimited store: never evicts. */
    df_store_close(s);
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_gc(s, NULL, NULL), 0);
    df_store_close(s);
}

static void test_remove(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    uint8_t b;

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, PS);
    fill_all(t, 9);
    df_stored_task_unref(t);
    assert_int_equal(df_store_task_remove(s, ID_A), 0);
    assert_false(task_path_exists(f->store_dir, ID_A, NULL));
    assert_int_equal(df_store_task_remove(s, ID_A), -ENOENT);
    assert_int_equal(df_store_bytes(s), 0);

    /* Removed while held: the holder keeps reading until it lets go. */
    t = create(s, ID_A, PS);
    fill_all(t, 9);
    assert_int_equal(df_store_task_remove(s, ID_A), 0);
    assert_int_equal(df_stored_task_read(t, 1, &b, 1), 0);
    assert_int_equal(b, byte_at(1, 9));
    df_stored_task_unref(t);
    df_store_close(s);
}

static void test_export(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t;
    char out[PATH_MAX], outdir[256], missing[PATH_MAX];
    char *text = NULL;
    size_t len = 0;
    struct stat st;

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 5 * PS + 17);
    snprintf(outdir, sizeof(outdir), "%s/out", f->dir);
    assert_int_equal(mkdir(outdir, 0755), 0);
    snprintf(out, sizeof(out), "%s/file.bin", outdir);

    /* Incomplete: refused, nothing written. */
    fill_piece(t, 0, 5);
    assert_int_equal(df_stored_task_export(t, out, true), -EINVAL);
    assert_int_equal(count_entries(outdir), 0);

    fill_all(t, 5);
    assert_int_equal(df_stored_task_export(t, out, true), 0);
    assert_int_equal(df_read_file(out, 1 << 20, &text, &len), 0);
    assert_int_equal(len, 5 * PS + 17);
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)text[i] != byte_at(i, 5))
            fail_msg("byte %zu differs", i);
    free(text);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(count_entries(outdir), 1); /* no temporary left */

    /* A copy, not a link: editing the output in place leaves the store's
     * bytes intact. */
    {
        int fd = open(out, O_WRONLY);
        uint8_t b;
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, "\x00\xff", 2, 0), 2);
        close(fd);
        assert_int_equal(df_stored_task_read(t, 1, &b, 1), 0);
        assert_int_equal(b, byte_at(1, 5));
        assert_true(df_stored_task_complete(t));
    }

    /* Overwrites an existing file atomically. */
    assert_int_equal(df_stored_task_export(t, out, true), 0);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_size, 5 * PS + 17);

    /* Output directory missing: error, nothing created anywhere. */
    snprintf(missing, sizeof(missing), "%s/nope/file.bin", f->dir);
    assert_int_equal(df_stored_task_export(t, missing, true), -ENOENT);
    snprintf(missing, sizeof(missing), "%s/nope", f->dir);
    assert_false(path_exists(missing));

    /* Output is a directory: the rename fails and the temporary is gone. */
    snprintf(out, sizeof(out), "%s/sub", outdir);
    assert_int_equal(mkdir(out, 0755), 0);
    assert_true(df_stored_task_export(t, out, true) < 0);
    assert_int_equal(count_entries(outdir), 2); /* file.bin and sub only */
    assert_int_equal(count_entries(out), 0);

    /* Paths without a file name. */
    assert_int_equal(df_stored_task_export(t, "", true), -EINVAL);
    snprintf(out, sizeof(out), "%s/", outdir);
    assert_int_equal(df_stored_task_export(t, out, true), -EINVAL);

    df_stored_task_unref(t);
    df_store_close(s);
}

/* An ephemeral store: no meta.json, and a task placed next to its output
 * becomes the output by link or rename; an unexported placed file is
 * removed.  The placed file is unnamed where the filesystem has O_TMPFILE
 * (then nothing is listed next to the output), a hidden file otherwise
 * (test_outfile.c tests both). */
static void test_place_at(void **state)
{
    fixture_t *f = *state;
    df_store_t *s;
    df_stored_task_t *t, *u, *again;
    char out[PATH_MAX], outdir[256], other[PATH_MAX];
    char *text = NULL;
    size_t len = 0;
    struct stat st;

    snprintf(outdir, sizeof(outdir), "%s/out", f->dir);
    assert_int_equal(mkdir(outdir, 0755), 0);
    snprintf(out, sizeof(out), "%s/file.bin", outdir);

    /* A store that keeps its tasks refuses. */
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_A, 3 * PS);
    assert_int_equal(df_stored_task_place_at(t, out), -EINVAL);
    assert_int_equal(count_entries(outdir), 0);
    df_stored_task_unref(t);
    assert_int_equal(df_store_task_remove(s, ID_A), 0);
    df_store_close(s);

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    df_store_set_ephemeral(s);
    t = create(s, ID_A, 5 * PS + 17);
    assert_false(task_path_exists(f->store_dir, ID_A, "meta.json"));
    assert_false(df_stored_task_placed(t));
    assert_int_equal(df_stored_task_place_at(t, out), 0);
    assert_true(df_stored_task_placed(t));
    assert_false(path_exists(out));
    assert_false(task_path_exists(f->store_dir, ID_A, "data"));
    assert_true(count_entries(outdir) <= 1); /* the temporary file, if named */
    assert_int_equal(df_stored_task_place_at(t, out), -EINVAL); /* once */

    /* Incomplete: refused, and still nothing at the output. */
    fill_piece(t, 0, 7);
    assert_int_equal(df_stored_task_export(t, out, false), -EINVAL);
    assert_false(path_exists(out));
    fill_all(t, 7);
    df_store_flush(s);
    df_stored_task_sync(t);
    assert_false(task_path_exists(f->store_dir, ID_A, "meta.json"));

    /* Another directory: refused, nothing there. */
    snprintf(other, sizeof(other), "%s/elsewhere.bin", f->dir);
    assert_int_equal(df_stored_task_export(t, other, false), -EXDEV);
    assert_false(path_exists(other));

    assert_int_equal(df_stored_task_export(t, out, false), 0);
    assert_int_equal(df_read_file(out, 1 << 20, &text, &len), 0);
    assert_int_equal(len, 5 * PS + 17);
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)text[i] != byte_at(i, 7))
            fail_msg("byte %zu differs", i);
    free(text);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(count_entries(outdir), 1); /* linked or renamed, not copied */
    /* The file is the user's now: the task left the store. */
    assert_int_equal(df_store_task_get(s, ID_A, &again), -ENOENT);
    assert_false(task_path_exists(f->store_dir, ID_A, NULL));
    assert_int_equal(df_stored_task_export(t, out, false), -EINVAL);
    df_stored_task_unref(t); /* freed: must not remove the output */
    assert_true(path_exists(out));

    /* Never exported (a failed download): the temporary file goes with the
     * task, and the earlier output stays as it was. */
    u = create(s, ID_B, 2 * PS);
    assert_int_equal(df_stored_task_place_at(u, out), 0);
    fill_piece(u, 0, 9);
    assert_true(count_entries(outdir) <= 2);
    df_stored_task_unref(u);
    df_store_close(s);
    assert_int_equal(count_entries(outdir), 1);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_size, 5 * PS + 17);

    /* A task holding a verified piece is not moved. */
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    df_store_set_ephemeral(s);
    u = create(s, ID_C, 2 * PS);
    fill_piece(u, 1, 3);
    assert_int_equal(df_stored_task_place_at(u, out), -EINVAL);
    df_stored_task_unref(u);
    df_store_close(s);
    assert_int_equal(count_entries(outdir), 1);
}

/* Every copy method, including the fallbacks FICLONE usually takes here. */
static void test_copy_methods(void **state)
{
    fixture_t *f = *state;
    char src[PATH_MAX], dst[PATH_MAX];
    const uint64_t len = 300 * 1024 + 5; /* several read/write chunks */
    uint8_t *buf = malloc(len), *back = malloc(len);
    int in, outfd;

    assert_non_null(buf);
    assert_non_null(back);
    for (uint64_t i = 0; i < len; i++)
        buf[i] = byte_at(i, 4);
    snprintf(src, sizeof(src), "%s/src", f->dir);
    assert_int_equal(df_write_file_atomic(src, buf, len), 0);
    in = open(src, O_RDONLY);
    assert_true(in >= 0);
    for (int m = DF__COPY_CLONE; m <= DF__COPY_RW; m++) {
        snprintf(dst, sizeof(dst), "%s/dst%d", f->dir, m);
        outfd = open(dst, O_RDWR | O_CREAT | O_EXCL, 0644);
        assert_true(outfd >= 0);
        assert_int_equal(df__copy_file(in, outfd, len, (df__copy_method_t)m), 0);
        memset(back, 0, len);
        assert_int_equal(pread(outfd, back, len, 0), (ssize_t)len);
        assert_memory_equal(back, buf, len);
        close(outfd);
    }
    /* A source shorter than promised is an error, not a short copy. */
    for (int m = DF__COPY_RANGE; m <= DF__COPY_RW; m++) {
        snprintf(dst, sizeof(dst), "%s/short%d", f->dir, m);
        outfd = open(dst, O_RDWR | O_CREAT | O_EXCL, 0644);
        assert_true(outfd >= 0);
        assert_int_equal(df__copy_file(in, outfd, len + 1, (df__copy_method_t)m), -EIO);
        close(outfd);
    }
    close(in);
    free(buf);
    free(back);
}

static void test_hostile_ids(void **state)
{
    fixture_t *f = *state;
    static const char *bad[] = {
        "", "..", "../../../../etc/passwd", "/etc/passwd",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* upper case */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",  /* 63 */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/.",
        "../aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
    };
    df_task_shape_t shape = {.length = PS, .piece_size = PS};
    df_store_t *s;
    df_stored_task_t *t = NULL;

    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    for (size_t i = 0; i < DF_ARRAY_LEN(bad); i++) {
        assert_int_equal(df_store_task_create(s, bad[i], &shape, &t), -EINVAL);
        assert_int_equal(df_store_task_get(s, bad[i], &t), -EINVAL);
        assert_int_equal(df_store_task_remove(s, bad[i]), -EINVAL);
    }
    assert_int_equal(df_store_task_create(s, NULL, &shape, &t), -EINVAL);
    assert_null(t);
    assert_int_equal(count_entries(f->dir), 1);                 /* only store/ */
    assert_int_equal(count_entries(f->store_dir), 1);           /* only tasks/ */
    df_store_close(s);
}

static void put(const char *store_dir, const char *id, const char *name, const char *text)
{
    char p[PATH_MAX];

    snprintf(p, sizeof(p), "%s/tasks/%s", store_dir, id);
    assert_int_equal(df_mkdirs(p), 0);
    snprintf(p, sizeof(p), "%s/tasks/%s/%s", store_dir, id, name);
    assert_int_equal(df_write_file_atomic(p, text, strlen(text)), 0);
}

/* Copies tmpl into out with every '@' replaced by id. */
static void subst_id(char *out, size_t cap, const char *tmpl, const char *id)
{
    size_t n = 0;

    for (; *tmpl; tmpl++) {
        const char *piece = *tmpl == '@' ? id : tmpl;
        size_t len = *tmpl == '@' ? strlen(id) : 1;
        assert_true(n + len < cap);
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n] = '\0';
}

static void test_garbage_meta(void **state)
{
    fixture_t *f = *state;
    static const char *garbage[] = {
        "",
        "not json",
        "{\"version\":1,",
        "[]",
        "{\"version\":2}",
        "{\"version\":1,\"id\":\"@\",\"length\":-1,\"piece_size\":4096,\"verified\":\"\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":\"8192\",\"piece_size\":4096,\"verified\":\"00\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":0,\"verified\":\"00\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"ff\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"0\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"03\","
        "\"piece_sha256\":[null]}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"03\","
        "\"piece_sha256\":[null,\"../etc\"]}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"03\","
        "\"digest\":\"sha256:00\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":8192,\"piece_size\":4096,\"verified\":\"03\","
        "\"etag\":5}",
        "{\"version\":1,\"id\":\"@\",\"version\":1,\"length\":8192,\"piece_size\":4096,"
        "\"verified\":\"03\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":1e300,\"piece_size\":4096,\"verified\":\"03\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":99999999999999999999999,\"piece_size\":4096,"
        "\"verified\":\"03\"}",
        "{\"version\":1,\"id\":\"@\",\"length\":9223372036854775807,\"piece_size\":1,"
        "\"verified\":\"\"}",
    };
    char text[1024], p[PATH_MAX];
    df_store_t *s;
    df_stored_task_t *t;

    /* One good task next to each garbage one. */
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    t = create(s, ID_E, 2 * PS);
    fill_all(t, 1);
    df_stored_task_unref(t);
    df_store_close(s);

    for (size_t i = 0; i < DF_ARRAY_LEN(garbage); i++) {
        subst_id(text, sizeof(text), garbage[i], ID_A);
        put(f->store_dir, ID_A, "meta.json", text);
        put(f->store_dir, ID_A, "data", "0123456789");
        assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
        if (df_store_task_get(s, ID_A, &t) == 0)
            fail_msg("garbage %zu accepted", i);
        assert_false(task_path_exists(f->store_dir, ID_A, NULL)); /* junk removed */
        assert_int_equal(df_store_task_get(s, ID_E, &t), 0);
        assert_true(df_stored_task_complete(t));
        df_stored_task_unref(t);
        df_store_close(s);
    }

    /* A meta.json naming another task is junk too. */
    subst_id(text, sizeof(text),
             "{\"version\":1,\"id\":\"@\",\"length\":4096,\"piece_size\":4096,\"verified\":\"01\"}",
             ID_B);
    put(f->store_dir, ID_A, "meta.json", text);
    /* A task directory with data but no meta.json (crash during create). */
    put(f->store_dir, ID_C, "data", "x");
    /* Stray entries that are not task ids are left alone. */
    snprintf(p, sizeof(p), "%s/tasks/not-a-task", f->store_dir);
    assert_int_equal(mkdir(p, 0755), 0);
    assert_int_equal(df_store_open(f->store_dir, 0, &s), 0);
    assert_int_equal(df_store_task_get(s, ID_A, &t), -ENOENT);
    assert_int_equal(df_store_task_get(s, ID_C, &t), -ENOENT);
    assert_false(task_path_exists(f->store_dir, ID_C, NULL));
    assert_true(task_path_exists(f->store_dir, "not-a-task", NULL));
    assert_int_equal(df_store_bytes(s), 2 * PS);
    df_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_write_mark, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_bad_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recreate_new_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_task, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_respects_refs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_max_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_place_at, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_meta, setup, teardown),
    };
    df_log_setup("test_piece_store", DF_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
