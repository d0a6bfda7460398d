/*
 * The on-disk piece store.
 *
 * Layout: <dir>/tasks/<id>/data holds the file's bytes at their offsets
 * (created sparse, at full length); <dir>/tasks/<id>/meta.json holds the
 * shape, the verified bitmap, known piece digests, the whole-file digest,
 * origin validators and the last use.  <id> is always exactly 64 lower-case
 * hex characters, checked at every entry point, so no id can name a path
 * outside the store.
 *
 * Crash safety: meta.json is the only source of truth.  It is replaced
 * atomically (df_write_file_atomic), and only after fdatasync() of `data`,
 * so it never claims a piece whose bytes may not have reached the disk.  A
 * meta.json that is missing or does not parse or validate makes the whole
 * task directory junk: it is removed at open with a warning.
 *
 * Ownership: the store owns every task it lists (an array, searched
 * linearly: a peer caches hundreds of tasks, not millions).  refs counts
 * the holders outside the store (downloads, uploads); GC never evicts a
 * task with refs > 0.  A task leaves the store ("detached") when it is
 * removed, evicted, recreated with another shape, or the store closes; a
 * detached task is freed at its last unref, never writes meta.json again,
 * and its open fd keeps reading the (possibly unlinked) old bytes.  That is
 * why a recreated task gets a new data file instead of a truncated one: an
 * upload still streaming the old task must not see the new task's bytes.
 *
 * Budget: df_store_bytes() counts each task's full length whether or not
 * its pieces have arrived, so an in-progress download has its room
 * reserved.  GC evicts only complete, unreferenced tasks, least recently
 * used first (wall-clock last use, persisted; an in-memory counter orders
 * uses within the same millisecond).
 *
 * Ephemeral stores (df_store_set_ephemeral: an in-process dfget, whose
 * store is deleted when it ends) never write meta.json, so nothing is ever
 * fdatasync()ed for them, and a task of theirs may keep its bytes in a
 * temporary file next to the download's output instead of `data`
 * (df_stored_task_place_at, lib/core/outfile.h: unnamed where the
 * filesystem allows, so a killed dfget leaves nothing there): export is
 * then a link or rename(2), not a copy.
 *
 * Lazy metadata: df_store_flush() writes a task's meta.json only once its
 * data has not been written for FLUSH_QUIET_MS, by when the kernel's own
 * writeback has usually put the bytes on disk and the fdatasync() is cheap;
 * a flush in the middle of a transfer would stall the loop for the disk.
 * df_store_close() and df_stored_task_sync() write at once.
 *
 * Single-threaded: everything runs on the event loop thread.
 */
#include "core/core.h"
#include "core/outfile.h"
#include "piece/piece.h"
#include "piece/piece_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define META_VERSION 1
/* meta.json of the largest possible task: one 64-hex string per piece plus
 * the bitmap, with slack for the scalar fields and validators. */
#define META_CAP ((size_t)DF_PIECE_COUNT_MAX * 72 + DF_PIECE_COUNT_MAX / 4 + 256 * 1024)
#define COPY_CHUNK (128 * 1024)
#define FLUSH_QUIET_MS 30000u /* the kernel's default dirty_expire_centisecs */

struct df_stored_task {
    df_store_t *store;         /* NULL once detached */
    int refs;                  /* holders outside the store */
    bool dirty;                /* meta.json is behind memory */
    char id[DF_TASK_ID_LEN + 1];
    char *url;                 /* may be NULL */
    uint64_t length;
    uint64_t piece_size;
    uint32_t piece_count;
    uint32_t nverified;
    uint8_t *bitmap;           /* verified pieces */
    uint8_t *known;            /* pieces with an expected digest; NULL until the first */
    uint8_t *digests;          /* piece_count * 32 bytes; allocated with known */
    bool has_digest;
    df_digest_t digest;        /* whole file */
    char *etag;                /* never NULL */
    char *last_modified;       /* never NULL */
    uint64_t last_use_ms;      /* CLOCK_REALTIME, persisted */
    uint64_t use_seq;          /* tie-break within one millisecond */
    int fd;                    /* `data`, O_RDWR; -1 if not open */
    bool placed;               /* bytes in a temporary file next to an output (out) */
    bool exported;             /* placed, and published as the output: not ours any more */
    df_outfile_t out;          /* placed: out.fd is fd (closed as fd) */
    uint64_t last_write_ms;    /* monotonic; when data was last written */
    char *dir_path;
    char *data_path;
    char *meta_path;
};

struct df_store {
    char *dir;
    char *tasks_dir;
    uint64_t limit;            /* 0 = unlimited */
    uint64_t max_age_ms;       /* 0 = no age limit */
    uint64_t evicted;          /* tasks evicted since open */
    bool ephemeral;            /* never persists meta.json (df_store_set_ephemeral) */
    uint64_t bytes;            /* sum of the listed tasks' lengths */
    uint64_t seq;
    df_stored_task_t **tasks;
    size_t ntasks;
    size_t cap;
};

/* ------------------------------------------------------------ helpers */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *path_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_fmt(const char *fmt, ...)
{
    va_list ap;
    char *p;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= PATH_MAX)
        return NULL;
    p = malloc((size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* Exactly 64 lower-case hex digits: the only names that reach a path. */
static bool valid_id(const char *id)
{
    size_t i;

    if (!id)
        return false;
    for (i = 0; i < DF_TASK_ID_LEN; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return id[i] == '\0';
}

static bool valid_hex64(const char *s)
{
    return valid_id(s); /* same alphabet and length as a sha256 */
}

static int pwrite_all(int fd, const void *data, size_t len, uint64_t off)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Short reads (the file is shorter than expected) are -EIO. */
static int pread_all(int fd, void *data, size_t len, uint64_t off)
{
    char *p = data;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Removes every entry of a task directory, then the directory.  Task
 * directories only ever hold plain files (data, meta.json, temporaries). */
static void remove_task_dir(const char *dir_path)
{
    DIR *d = opendir(dir_path);
    struct dirent *e;

    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (unlinkat(dirfd(d), e->d_name, 0) < 0 && errno != ENOENT)
                DF_LOG_W("store: cannot remove %s/%s: %s", dir_path, e->d_name, strerror(errno));
        }
        closedir(d);
    }
    if (rmdir(dir_path) < 0 && errno != ENOENT)
        DF_LOG_W("store: cannot remove %s: %s", dir_path, strerror(errno));
}

/* -------------------------------------------------------- task objects */

static void task_free(df_stored_task_t *t)
{
    if (!t)
        return;
    if (t->fd >= 0)
        close(t->fd);
    /* A placed temporary file that never became the output is ours to
     * remove (an unnamed one went with its descriptor). */
    if (t->placed) {
        t->out.fd = -1;
        df_outfile_close(&t->out);
    }
    free(t->url);
    free(t->bitmap);
    free(t->known);
    free(t->digests);
    free(t->etag);
    free(t->last_modified);
    free(t->dir_path);
    free(t->data_path);
    free(t->meta_path);
    free(t);
}

/* A task with its paths and an empty bitmap; no files touched. */
static int task_new(df_store_t *store, const char *id, uint64_t length, uint64_t piece_size,
                    const char *url, df_stored_task_t **out)
{
    df_stored_task_t *t = calloc(1, sizeof(*t));
    int rc = -ENOMEM;

    if (!t)
        return -ENOMEM;
    t->fd = -1;
    t->store = store;
    memcpy(t->id, id, DF_TASK_ID_LEN + 1);
    t->length = length;
    t->piece_size = piece_size;
    t->piece_count = df_piece_count(length, piece_size);
    /* calloc(1) for an empty file keeps "NULL means out of memory" simple. */
    t->bitmap = calloc(DF_MAX(df_bitmap_bytes(t->piece_count), (size_t)1), 1);
    t->etag = strdup("");
    t->last_modified = strdup("");
    if (!t->bitmap || !t->etag || !t->last_modified)
        goto out;
    if (url && !(t->url = strdup(url)))
        goto out;
    t->dir_path = path_fmt("%s/%s", store->tasks_dir, id);
    t->data_path = path_fmt("%s/%s/data", store->tasks_dir, id);
    t->meta_path = path_fmt("%s/%s/meta.json", store->tasks_dir, id);
    if (!t->dir_path || !t->data_path || !t->meta_path) {
        rc = -ENAMETOOLONG;
        goto out;
    }
    rc = 0;
out:
    if (rc < 0)
        task_free(t);
    else
        *out = t;
    return rc;
}

static int ensure_digests(df_stored_task_t *t)
{
    if (t->known)
        return 0;
    t->known = calloc(DF_MAX(df_bitmap_bytes(t->piece_count), (size_t)1), 1);
    t->digests = calloc(DF_MAX((size_t)t->piece_count, (size_t)1), 32);
    if (!t->known || !t->digests) {
        free(t->known);
        free(t->digests);
        t->known = NULL;
        t->digests = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* Makes a fresh, sparse `data` of the task's length.  Any old file is
 * unlinked first, never truncated: a detached task may still be reading
 * it through its own fd. */
static int data_create(df_stored_task_t *t)
{
    int fd;

    if (unlink(t->data_path) < 0 && errno != ENOENT)
        return -errno;
    fd = open(t->data_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)t->length) < 0) {
        int rc = -errno;
        close(fd);
        unlink(t->data_path);
        return rc;
    }
    if (t->fd >= 0)
        close(t->fd);
    t->fd = fd;
    return 0;
}

/* ----------------------------------------------------------- meta.json */

static int meta_write(df_stored_task_t *t)
{
    json_t *root = NULL, *arr = NULL;
    char hex[65], *text = NULL, *bmhex = NULL;
    char dstr[DF_DIGEST_STR_MAX];
    int rc = -ENOMEM;

    if (!t->store)
        return 0; /* detached: its meta.json is gone or belongs to another task */
    if (t->store->ephemeral) {
        t->dirty = false;
        return 0;
    }
    /* The bytes first: meta.json must never claim pieces the disk lacks. */
    if (t->fd >= 0 && fdatasync(t->fd) < 0) {
        rc = -errno;
        goto out;
    }
    bmhex = malloc(2 * df_bitmap_bytes(t->piece_count) + 1);
    root = json_object();
    if (!bmhex || !root)
        goto out;
    df_bitmap_to_hex(t->bitmap, t->piece_count, bmhex);
    if (json_object_set_new(root, "version", json_integer(META_VERSION)) < 0 ||
        json_object_set_new(root, "id", json_string(t->id)) < 0 ||
        json_object_set_new(root, "url", t->url ? json_string(t->url) : json_null()) < 0 ||
        json_object_set_new(root, "length", json_integer((json_int_t)t->length)) < 0 ||
        json_object_set_new(root, "piece_size", json_integer((json_int_t)t->piece_size)) < 0 ||
        json_object_set_new(root, "verified", json_string(bmhex)) < 0 ||
        json_object_set_new(root, "etag", json_string(t->etag)) < 0 ||
        json_object_set_new(root, "last_modified", json_string(t->last_modified)) < 0 ||
        json_object_set_new(root, "last_use_ms", json_integer((json_int_t)t->last_use_ms)) < 0)
        goto out;
    if (t->has_digest) {
        df_digest_format(&t->digest, dstr, sizeof(dstr));
        if (json_object_set_new(root, "digest", json_string(dstr)) < 0)
            goto out;
    }
    if (t->known) {
        arr = json_array();
        if (!arr)
            goto out;
        for (uint32_t i = 0; i < t->piece_count; i++) {
            json_t *v;
            if (df_bitmap_test(t->known, i)) {
                df_hex(t->digests + (size_t)i * 32, 32, hex);
                v = json_string(hex);
            } else {
                v = json_null();
            }
            if (json_array_append_new(arr, v) < 0)
                goto out;
        }
        rc = json_object_set_new(root, "piece_sha256", arr);
        arr = NULL; /* set_new consumed it, even on failure */
        if (rc < 0) {
            rc = -ENOMEM;
            goto out;
        }
    }
    text = json_dumps(root, JSON_COMPACT);
    if (!text) {
        rc = -ENOMEM;
        goto out;
    }
    rc = df_write_file_atomic(t->meta_path, text, strlen(text));
    if (rc == 0)
        t->dirty = false;
out:
    if (rc < 0)
        DF_LOG_W("store: task %s: cannot write meta.json: %s", t->id, df_strerror(rc));
    free(text);
    free(bmhex);
    json_decref(arr);
    json_decref(root);
    return rc;
}

/* A non-negative integer field; false when absent or of another type. */
static bool get_u64(json_t *root, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(root, key);

    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* An optional string field: true with *out NULL when absent or null. */
static bool get_opt_str(json_t *root, const char *key, const char **out)
{
    json_t *v = json_object_get(root, key);

    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v))
        return false;
    *out = json_string_value(v);
    return true;
}

static int dup_field(char **dst, const char *src)
{
    char *p = strdup(src ? src : "");

    if (!p)
        return -ENOMEM;
    free(*dst);
    *dst = p;
    return 0;
}

/* Loads tasks/<id>.  DF_EPROTO means the directory is junk (meta.json
 * missing, unparsable or inconsistent); other errors are environmental. */
static int task_load(df_store_t *store, const char *id, df_stored_task_t **out)
{
    df_stored_task_t *t = NULL;
    json_t *root = NULL, *arr;
    json_error_t jerr;
    char *meta_path = NULL, *text = NULL;
    const char *s, *url, *etag, *lm, *dstr;
    uint64_t version, length, piece_size, last_use = 0;
    struct stat st;
    size_t len;
    int rc;

    meta_path = path_fmt("%s/%s/meta.json", store->tasks_dir, id);
    if (!meta_path)
        return -ENAMETOOLONG;
    rc = df_read_file(meta_path, META_CAP, &text, &len);
    if (rc == -ENOENT || rc == DF_ETOOBIG) {
        DF_LOG_W("store: task %s: meta.json %s", id, rc == -ENOENT ? "missing" : "too large");
        rc = DF_EPROTO;
    }
    if (rc < 0)
        goto out;
    rc = DF_EPROTO;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        DF_LOG_W("store: task %s: meta.json: %s", id, root ? "not an object" : jerr.text);
        goto out;
    }
    if (!get_u64(root, "version", &version) || version != META_VERSION ||
        !json_is_string(json_object_get(root, "id")) ||
        strcmp(json_string_value(json_object_get(root, "id")), id) != 0 ||
        !get_u64(root, "length", &length) || !get_u64(root, "piece_size", &piece_size) ||
        piece_size == 0 || piece_size > DF_PIECE_SIZE_MAX ||
        df_piece_count(length, piece_size) > DF_PIECE_COUNT_MAX ||
        !get_opt_str(root, "url", &url) || !get_opt_str(root, "etag", &etag) ||
        !get_opt_str(root, "last_modified", &lm) || !get_opt_str(root, "digest", &dstr) ||
        (json_object_get(root, "last_use_ms") && !get_u64(root, "last_use_ms", &last_use))) {
        DF_LOG_W("store: task %s: meta.json: missing or invalid fields", id);
        goto out;
    }
    rc = task_new(store, id, length, piece_size, url, &t);
    if (rc < 0)
        goto out;
    rc = DF_EPROTO;
    s = json_string_value(json_object_get(root, "verified"));
    if (!s || df_bitmap_from_hex(s, t->piece_count, t->bitmap) < 0) {
        DF_LOG_W("store: task %s: meta.json: bad verified bitmap", id);
        goto out;
    }
    t->nverified = df_bitmap_count(t->bitmap, t->piece_count);
    if (dstr) {
        if (df_digest_parse(dstr, &t->digest) < 0) {
            DF_LOG_W("store: task %s: meta.json: bad digest", id);
            goto out;
        }
        t->has_digest = true;
    }
    arr = json_object_get(root, "piece_sha256");
    if (arr && !json_is_null(arr)) {
        if (!json_is_array(arr) || json_array_size(arr) != t->piece_count) {
            DF_LOG_W("store: task %s: meta.json: bad piece digests", id);
            goto out;
        }
        if (ensure_digests(t) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < t->piece_count; i++) {
            json_t *v = json_array_get(arr, i);
            if (json_is_null(v))
                continue;
            if (!json_is_string(v) || !valid_hex64(json_string_value(v)) ||
                df_unhex(json_string_value(v), t->digests + (size_t)i * 32, 32) < 0) {
                DF_LOG_W("store: task %s: meta.json: bad digest of piece %u", id, i);
                goto out;
            }
            df_bitmap_set(t->known, i);
        }
    }
    if (dup_field(&t->etag, etag) < 0 || dup_field(&t->last_modified, lm) < 0) {
        rc = -ENOMEM;
        goto out;
    }
    t->last_use_ms = last_use ? last_use : wall_ms(); /* older metas: count from now */

    /* The data file must exist at full length; otherwise nothing in it can
     * be trusted and the task starts over (same shape, nothing verified). */
    t->fd = open(t->data_path, O_RDWR | O_CLOEXEC);
    if (t->fd < 0 || fstat(t->fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size != t->length) {
        DF_LOG_W("store: task %s: data file missing or of the wrong size; starting over", id);
        memset(t->bitmap, 0, df_bitmap_bytes(t->piece_count));
        t->nverified = 0;
        rc = data_create(t);
        if (rc < 0)
            goto out;
        t->dirty = true;
    }
    rc = 0;
out:
    if (rc < 0)
        task_free(t);
    else
        *out = t;
    json_decref(root);
    free(text);
    free(meta_path);
    return rc;
}

/* ------------------------------------------------------- store listing */

static void flush(df_store_t *store, bool all);

static df_stored_task_t *find(const df_store_t *store, const char *id)
{
    for (size_t i = 0; i < store->ntasks; i++)
        if (strcmp(store->tasks[i]->id, id) == 0)
            return store->tasks[i];
    return NULL;
}

static int store_add(df_store_t *store, df_stored_task_t *t)
{
    if (store->ntasks == store->cap) {
        size_t ncap = store->cap ? store->cap * 2 : 16;
        df_stored_task_t **p = realloc(store->tasks, ncap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        store->tasks = p;
        store->cap = ncap;
    }
    store->tasks[store->ntasks++] = t;
    t->store = store;
    store->bytes += t->length;
    return 0;
}

/* Takes t out of the listing; frees it unless someone still holds it. */
static void store_detach(df_store_t *store, df_stored_task_t *t)
{
    for (size_t i = 0; i < store->ntasks; i++) {
        if (store->tasks[i] != t)
            continue;
        store->tasks[i] = store->tasks[--store->ntasks];
        store->bytes -= t->length;
        break;
    }
    t->store = NULL;
    if (t->refs == 0)
        task_free(t);
}

static void task_touch(df_stored_task_t *t)
{
    t->last_use_ms = wall_ms();
    if (t->store)
        t->use_seq = ++t->store->seq;
    t->dirty = true;
}

/* ------------------------------------------------------------ the store */

int df_store_open(const char *dir, uint64_t limit_bytes, df_store_t **out)
{
    df_store_t *store;
    DIR *d = NULL;
    struct dirent *e;
    int rc = -ENOMEM;

    if (!dir || !*dir)
        return -EINVAL;
    store = calloc(1, sizeof(*store));
    if (!store)
        return -ENOMEM;
    store->limit = limit_bytes;
    store->dir = strdup(dir);
    store->tasks_dir = path_fmt("%s/tasks", dir);
    if (!store->dir || !store->tasks_dir)
        goto out;
    rc = df_mkdirs(store->tasks_dir);
    if (rc < 0) {
        DF_LOG_E("store: cannot create %s: %s", store->tasks_dir, df_strerror(rc));
        goto out;
    }
    d = opendir(store->tasks_dir);
    if (!d) {
        rc = -errno;
        DF_LOG_E("store: cannot open %s: %s", store->tasks_dir, df_strerror(rc));
        goto out;
    }
    while ((e = readdir(d)) != NULL) {
        df_stored_task_t *t = NULL;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (!valid_id(e->d_name)) {
            DF_LOG_W("store: ignoring %s/%s: not a task id", store->tasks_dir, e->d_name);
            continue;
        }
        rc = task_load(store, e->d_name, &t);
        if (rc == DF_EPROTO) {
            char *p = path_fmt("%s/%s", store->tasks_dir, e->d_name);
            DF_LOG_W("store: discarding task %s", e->d_name);
            if (p)
                remove_task_dir(p);
            free(p);
            continue;
        }
        if (rc < 0) {
            DF_LOG_W("store: skipping task %s: %s", e->d_name, df_strerror(rc));
            continue;
        }
        rc = store_add(store, t);
        if (rc < 0) {
            task_free(t);
            goto out;
        }
    }
    DF_LOG_I("store: %s: %zu tasks, %llu bytes", dir, store->ntasks,
             (unsigned long long)store->bytes);
    rc = 0;
out:
    if (d)
        closedir(d);
    if (rc < 0)
        df_store_close(store);
    else
        *out = store;
    return rc;
}

void df_store_close(df_store_t *store)
{
    if (!store)
        return;
    flush(store, true);
    while (store->ntasks > 0) {
        df_stored_task_t *t = store->tasks[store->ntasks - 1];
        if (t->refs > 0)
            DF_LOG_W("store: task %s still referenced at close; freed at its last unref", t->id);
        store_detach(store, t);
    }
    free(store->tasks);
    free(store->tasks_dir);
    free(store->dir);
    free(store);
}

int df_store_task_get(df_store_t *store, const char *task_id, df_stored_task_t **out)
{
    df_stored_task_t *t;

    if (!valid_id(task_id))
        return -EINVAL;
    t = find(store, task_id);
    if (!t)
        return -ENOENT;
    t->refs++;
    task_touch(t);
    *out = t;
    return 0;
}

int df_store_task_create(df_store_t *store, const char *task_id, const df_task_shape_t *shape,
                         df_stored_task_t **out)
{
    df_stored_task_t *t, *old;
    int rc;

    if (!valid_id(task_id) || !shape || shape->piece_size == 0 ||
        shape->piece_size > DF_PIECE_SIZE_MAX)
        return -EINVAL;
    if (df_piece_count(shape->length, shape->piece_size) > DF_PIECE_COUNT_MAX)
        return -EFBIG;
    old = find(store, task_id);
    if (old && old->length == shape->length && old->piece_size == shape->piece_size) {
        if (!old->url && shape->url && !(old->url = strdup(shape->url)))
            return -ENOMEM;
        old->refs++;
        task_touch(old);
        *out = old;
        return 0;
    }
    rc = task_new(store, task_id, shape->length, shape->piece_size, shape->url, &t);
    if (rc < 0)
        return rc;
    if (old) {
        DF_LOG_I("store: task %s changed shape (%llu/%llu -> %llu/%llu); recreating", task_id,
                 (unsigned long long)old->length, (unsigned long long)old->piece_size,
                 (unsigned long long)shape->length, (unsigned long long)shape->piece_size);
        store_detach(store, old);
    }
    rc = df_mkdirs(t->dir_path);
    if (rc < 0)
        goto out;
    rc = data_create(t);
    if (rc < 0)
        goto out;
    task_touch(t);
    rc = meta_write(t);
    if (rc < 0)
        goto out;
    rc = store_add(store, t);
    if (rc < 0)
        goto out;
    t->refs = 1;
    *out = t;
out:
    if (rc < 0) {
        DF_LOG_W("store: cannot create task %s: %s", task_id, df_strerror(rc));
        remove_task_dir(t->dir_path);
        task_free(t);
    }
    return rc;
}

/* Holders of a reference keep a detached task (and the fd of its unlinked
 * data) until their last unref. */
int df_store_task_remove(df_store_t *store, const char *task_id)
{
    df_stored_task_t *t;
    char *dir_path;

    if (!valid_id(task_id))
        return -EINVAL;
    t = find(store, task_id);
    if (!t)
        return -ENOENT;
    if (t->refs > 0)
        DF_LOG_W("store: removing task %s while referenced", task_id);
    dir_path = t->dir_path;
    t->dir_path = NULL;
    store_detach(store, t);
    remove_task_dir(dir_path);
    /* The detached task keeps its other paths for its remaining holders;
     * dir_path is only used by the store. */
    free(dir_path);
    return 0;
}

static void flush(df_store_t *store, bool all)
{
    uint64_t now = df_now_ms();

    for (size_t i = 0; i < store->ntasks; i++) {
        df_stored_task_t *t = store->tasks[i];
        if (t->dirty && (all || now - t->last_write_ms >= FLUSH_QUIET_MS))
            meta_write(t);
    }
}

void df_store_flush(df_store_t *store)
{
    flush(store, false);
}

void df_store_set_ephemeral(df_store_t *store)
{
    store->ephemeral = true;
}

static bool task_complete(const df_stored_task_t *t)
{
    return t->nverified == t->piece_count;
}

/* A task GC may remove: complete (a download in progress has its whole
 * size reserved and its pieces in use), unreferenced (being downloaded or
 * served) and not empty (removing it frees nothing). */
static bool evictable(const df_stored_task_t *t)
{
    return t->refs == 0 && task_complete(t) && t->length > 0;
}

static void evict(df_store_t *store, df_stored_task_t *victim, const char *why,
                  void (*evicted_cb)(const char *task_id, void *arg), void *arg)
{
    char id[DF_TASK_ID_LEN + 1];

    memcpy(id, victim->id, sizeof(id));
    DF_LOG_I("store: evicting task %s (%llu bytes, %s)", id, (unsigned long long)victim->length, why);
    df_store_task_remove(store, id);
    store->evicted++;
    if (evicted_cb)
        evicted_cb(id, arg);
}

int df_store_gc(df_store_t *store, void (*evicted_cb)(const char *task_id, void *arg), void *arg)
{
    uint64_t now = wall_ms();
    int n = 0;

    /* Age first: unused for longer than the limit, whatever the budget. */
    for (size_t i = 0; store->max_age_ms && i < store->ntasks;) {
        df_stored_task_t *t = store->tasks[i];
        if (evictable(t) && now > t->last_use_ms && now - t->last_use_ms > store->max_age_ms) {
            evict(store, t, "unused too long", evicted_cb, arg);
            n++;
            i = 0; /* removal reorders the array */
            continue;
        }
        i++;
    }
    /* Then the budget: least recently used first. */
    while (store->limit && store->bytes > store->limit) {
        df_stored_task_t *victim = NULL;

        for (size_t i = 0; i < store->ntasks; i++) {
            df_stored_task_t *t = store->tasks[i];
            if (!evictable(t))
                continue;
            if (!victim || t->last_use_ms < victim->last_use_ms ||
                (t->last_use_ms == victim->last_use_ms && t->use_seq < victim->use_seq))
                victim = t;
        }
        if (!victim)
            break;
        evict(store, victim, "over the budget", evicted_cb, arg);
        n++;
    }
    return n;
}

void df_store_set_max_age(df_store_t *store, uint64_t max_age_ms)
{
    store->max_age_ms = max_age_ms;
}

uint64_t df_store_evicted(const df_store_t *store)
{
    return store->evicted;
}

uint64_t df_store_bytes(const df_store_t *store)
{
    return store->bytes;
}

size_t df_store_task_count(const df_store_t *store)
{
    return store->ntasks;
}

/* ---------------------------------------------------------------- tasks */

void df_stored_task_ref(df_stored_task_t *t)
{
    t->refs++;
}

void df_stored_task_unref(df_stored_task_t *t)
{
    if (!t)
        return;
    if (t->refs <= 0) {
        DF_LOG_E("store: task %s unref'd more than ref'd", t->id);
        return;
    }
    if (--t->refs == 0 && !t->store)
        task_free(t);
}

const char *df_stored_task_id(const df_stored_task_t *t)
{
    return t->id;
}

uint64_t df_stored_task_length(const df_stored_task_t *t)
{
    return t->length;
}

uint64_t df_stored_task_piece_size(const df_stored_task_t *t)
{
    return t->piece_size;
}

uint32_t df_stored_task_piece_count(const df_stored_task_t *t)
{
    return t->piece_count;
}

const uint8_t *df_stored_task_bitmap(const df_stored_task_t *t)
{
    return t->bitmap;
}

bool df_stored_task_has_piece(const df_stored_task_t *t, uint32_t idx)
{
    return idx < t->piece_count && df_bitmap_test(t->bitmap, idx);
}

bool df_stored_task_piece_digest(const df_stored_task_t *t, uint32_t idx, uint8_t out[32])
{
    if (idx >= t->piece_count || !t->known || !df_bitmap_test(t->known, idx))
        return false;
    memcpy(out, t->digests + (size_t)idx * 32, 32);
    return true;
}

/* Setting a digest that contradicts an already verified piece unmarks the
 * piece: the newer expectation (from the seed or tracker) wins. */
int df_stored_task_set_piece_digest(df_stored_task_t *t, uint32_t idx, const uint8_t digest[32])
{
    uint8_t *slot;

    if (idx >= t->piece_count)
        return -EINVAL;
    if (ensure_digests(t) < 0)
        return -ENOMEM;
    slot = t->digests + (size_t)idx * 32;
    if (df_bitmap_test(t->known, idx) && memcmp(slot, digest, 32) == 0)
        return 0;
    if (df_bitmap_test(t->known, idx) && df_bitmap_test(t->bitmap, idx)) {
        DF_LOG_W("store: task %s piece %u: expected digest changed; unmarking", t->id, idx);
        df_stored_task_unmark_piece(t, idx);
    }
    memcpy(slot, digest, 32);
    df_bitmap_set(t->known, idx);
    t->dirty = true;
    return 0;
}

int df_stored_task_write(df_stored_task_t *t, uint64_t off, const void *data, size_t len)
{
    if (off > t->length || len > t->length - off)
        return -EINVAL;
    t->last_write_ms = df_now_ms();
    return pwrite_all(t->fd, data, len, off);
}

int df_stored_task_read(df_stored_task_t *t, uint64_t off, void *data, size_t len)
{
    if (off > t->length || len > t->length - off)
        return -EINVAL;
    return pread_all(t->fd, data, len, off);
}

/* Records sha256 as the piece's digest when none was known, so later
 * re-verification and other peers can rely on it. */
int df_stored_task_mark_piece(df_stored_task_t *t, uint32_t idx, const uint8_t sha256[32])
{
    if (idx >= t->piece_count)
        return -EINVAL;
    if (t->known && df_bitmap_test(t->known, idx)) {
        if (memcmp(t->digests + (size_t)idx * 32, sha256, 32) != 0)
            return DF_EDIGEST;
    } else {
        if (ensure_digests(t) < 0)
            return -ENOMEM;
        memcpy(t->digests + (size_t)idx * 32, sha256, 32);
        df_bitmap_set(t->known, idx);
    }
    if (!df_bitmap_test(t->bitmap, idx)) {
        df_bitmap_set(t->bitmap, idx);
        t->nverified++;
    }
    t->dirty = true;
    return 0;
}

void df_stored_task_unmark_piece(df_stored_task_t *t, uint32_t idx)
{
    if (idx >= t->piece_count || !df_bitmap_test(t->bitmap, idx))
        return;
    df_bitmap_clear(t->bitmap, idx);
    t->nverified--;
    t->dirty = true;
}

/* An empty range inside the file is trivially ready; one reaching past
 * the end never is. */
bool df_stored_task_range_ready(const df_stored_task_t *t, uint64_t off, uint64_t len)
{
    uint64_t first, last;

    if (off > t->length || len > t->length - off)
        return false;
    if (len == 0)
        return true;
    first = off / t->piece_size;
    last = (off + len - 1) / t->piece_size;
    for (uint64_t i = first; i <= last; i++)
        if (!df_bitmap_test(t->bitmap, (uint32_t)i))
            return false;
    return true;
}

bool df_stored_task_complete(const df_stored_task_t *t)
{
    return task_complete(t);
}

/* alg DF_DIGEST_NONE clears the digest. */
int df_stored_task_set_digest(df_stored_task_t *t, const df_digest_t *d)
{
    if (!d || d->alg == DF_DIGEST_NONE) {
        t->has_digest = false;
    } else {
        if (d->len == 0 || d->len > DF_DIGEST_MAX)
            return -EINVAL;
        t->digest = *d;
        t->has_digest = true;
    }
    t->dirty = true;
    return 0;
}

bool df_stored_task_digest(const df_stored_task_t *t, df_digest_t *out)
{
    if (!t->has_digest)
        return false;
    *out = t->digest;
    return true;
}

/* NULL stores "" (no validator). */
int df_stored_task_set_validators(df_stored_task_t *t, const char *etag, const char *last_modified)
{
    char *e = strdup(etag ? etag : ""), *lm = strdup(last_modified ? last_modified : "");

    if (!e || !lm) {
        free(e);
        free(lm);
        return -ENOMEM;
    }
    free(t->etag);
    free(t->last_modified);
    t->etag = e;
    t->last_modified = lm;
    t->dirty = true;
    return 0;
}

const char *df_stored_task_etag(const df_stored_task_t *t)
{
    return t->etag;
}

const char *df_stored_task_last_modified(const df_stored_task_t *t)
{
    return t->last_modified;
}

int df_stored_task_fd(const df_stored_task_t *t)
{
    return t->fd;
}

const char *df_stored_task_data_path(const df_stored_task_t *t)
{
    return t->data_path;
}

void df_stored_task_touch(df_stored_task_t *t)
{
    task_touch(t);
}

int df_stored_task_sync(df_stored_task_t *t)
{
    return meta_write(t);
}

/* --------------------------------------------------------------- export */

/* Errors after which the next copy method may still work: the filesystem
 * or kernel lacks the feature, or the two files are on different mounts. */
static bool copy_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTSUP || err == EXDEV || err == EINVAL || err == ENOSYS ||
           err == ENOTTY || err == EPERM || err == EBADF;
}

int df__copy_file(int in_fd, int out_fd, uint64_t len, df__copy_method_t first)
{
    uint64_t done = 0;
    char *buf = NULL;
    int rc = 0;

    if (first <= DF__COPY_CLONE && len > 0) {
        /* A reflink shares the extents: instant, no extra space, and the
         * copy-on-write keeps the output independent of the store.  It
         * makes the destination identical to the whole source, whose size
         * is the task length.  A failed FICLONE leaves out_fd untouched. */
        if (ioctl(out_fd, FICLONE, in_fd) == 0)
            return 0;
        if (!copy_unsupported(errno))
            return -errno;
    }
    if (first <= DF__COPY_RANGE) {
        while (done < len) {
            loff_t ioff = (loff_t)done, ooff = (loff_t)done;
            ssize_t n = copy_file_range(in_fd, &ioff, out_fd, &ooff,
                                        (size_t)DF_MIN(len - done, (uint64_t)1 << 30), 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (copy_unsupported(errno))
                    break; /* finish with read/write from where we are */
                return -errno;
            }
            if (n == 0)
                return -EIO; /* the source is shorter than len */
            done += (uint64_t)n;
        }
    }
    if (done < len) {
        buf = malloc(COPY_CHUNK);
        if (!buf)
            return -ENOMEM;
    }
    while (done < len) {
        size_t chunk = (size_t)DF_MIN(len - done, (uint64_t)COPY_CHUNK);
        rc = pread_all(in_fd, buf, chunk, done);
        if (rc < 0)
            goto out;
        rc = pwrite_all(out_fd, buf, chunk, done);
        if (rc < 0)
            goto out;
        done += chunk;
    }
out:
    free(buf);
    return rc;
}

int df_stored_task_place_at(df_stored_task_t *t, const char *output)
{
    df_outfile_t of;
    int rc;

    if (!t->store || !t->store->ephemeral || t->placed || t->nverified > 0)
        return -EINVAL;
    rc = df_outfile_open(&of, output);
    if (rc < 0)
        return rc;
    if (ftruncate(of.fd, (off_t)t->length) < 0) {
        rc = -errno;
        df_outfile_close(&of);
        return rc;
    }
    /* `data` held nothing verified: it goes, the temporary file replaces
     * it (data_path is not used again for a placed task). */
    if (unlink(t->data_path) < 0 && errno != ENOENT)
        DF_LOG_W("store: cannot remove %s: %s", t->data_path, strerror(errno));
    if (t->fd >= 0)
        close(t->fd);
    t->fd = of.fd;
    t->out = of;
    t->placed = true;
    return 0;
}

bool df_stored_task_placed(const df_stored_task_t *t)
{
    return t->placed;
}

/* A placed task: its temporary file becomes the output (df_outfile_publish:
 * a link or rename(2) in output's directory, another directory is refused),
 * and the task leaves the store -- the file is the user's now, and what a
 * user does to it must never be served. */
static int export_placed(df_stored_task_t *t, const char *output, bool durable)
{
    int rc = df_outfile_publish(&t->out, output, durable);

    if (rc < 0)
        return rc;
    t->exported = true;
    if (t->store) {
        char *dir_path = t->dir_path;
        t->dir_path = NULL;
        store_detach(t->store, t); /* t is referenced by the caller: not freed */
        if (dir_path)
            remove_task_dir(dir_path);
        free(dir_path);
    }
    return 0;
}

/* Only a complete task can be exported: -EINVAL otherwise. */
int df_stored_task_export(df_stored_task_t *t, const char *output, bool durable)
{
    df_outfile_t of = {.fd = -1};
    int rc;

    if (!output || !*output || !task_complete(t) || t->exported)
        return -EINVAL;
    if (t->placed) {
        rc = export_placed(t, output, durable);
        goto out;
    }
    rc = df_outfile_open(&of, output);
    if (rc < 0)
        goto out;
    rc = df__copy_file(t->fd, of.fd, t->length, DF__COPY_CLONE);
    if (rc == 0)
        rc = df_outfile_publish(&of, output, durable);
out:
    df_outfile_close(&of);
    if (rc < 0)
        DF_LOG_W("store: task %s: export to %s failed: %s", t->id, output, df_strerror(rc));
    return rc;
}
