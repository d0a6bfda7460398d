/*
 * The on-disk piece store: one directory per task under <dir>/tasks/<id>/
 * holding `data` (sparse, pieces written at their offsets) and `meta.json`
 * (length, piece size, per-piece sha256, which pieces are verified, the
 * whole-file digest, origin validators, last use).  Only verified pieces are
 * marked; readers (the upload server) ask df_stored_task_range_ready() before
 * serving.  meta.json is rewritten atomically; after a crash the store
 * trusts only what meta.json says was verified.
 *
 * Tasks are refcounted: a task referenced by a download or an upload is
 * never evicted by GC.  Single-threaded: called from the event loop.
 */
#ifndef DF_PIECE_PIECE_STORE_H
#define DF_PIECE_PIECE_STORE_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "piece/digest.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct df_store df_store_t;
typedef struct df_stored_task df_stored_task_t;

#define DF_TASK_ID_LEN 64 /* hex sha256 */

typedef struct {
    const char *url;            /* for listings; may be NULL */
    uint64_t length;
    uint64_t piece_size;
} df_task_shape_t;

/* Opens (creating) the store at dir; loads every task found there.
 * limit_bytes 0 = unlimited. */
int df_store_open(const char *dir, uint64_t limit_bytes, df_store_t **out);
void df_store_close(df_store_t *store);

/* Task ids are exactly DF_TASK_ID_LEN lower-case hex characters; any other
 * id is -EINVAL at every entry point (it never reaches a path).
 *
 * Finds a task; -ENOENT if absent.  The returned task is referenced: release
 * it with df_stored_task_unref().  Counts as a use for LRU. */
int df_store_task_get(df_store_t *store, const char *task_id, df_stored_task_t **out);
/* Finds or creates a task with this shape.  An existing task with a
 * different length or piece size is discarded and recreated: its data file
 * is unlinked and a new one made, so holders of the old task keep reading
 * the old bytes.  Referenced.  -EINVAL for a piece size of 0 or above
 * DF_PIECE_SIZE_MAX, -EFBIG above DF_PIECE_COUNT_MAX pieces. */
int df_store_task_create(df_store_t *store, const char *task_id, const df_task_shape_t *shape,
                         df_stored_task_t **out);
/* Removes a task's files now.  It should not be referenced; if it is, the
 * holders keep a detached task (reads still work on the unlinked file,
 * nothing is persisted) that is freed at their last unref. */
int df_store_task_remove(df_store_t *store, const char *task_id);

void df_stored_task_ref(df_stored_task_t *t);
void df_stored_task_unref(df_stored_task_t *t);

const char *df_stored_task_id(const df_stored_task_t *t);
uint64_t df_stored_task_length(const df_stored_task_t *t);
uint64_t df_stored_task_piece_size(const df_stored_task_t *t);
uint32_t df_stored_task_piece_count(const df_stored_task_t *t);
/* Bitmap of verified pieces (df_bitmap_bytes(count) bytes); owned by t. */
const uint8_t *df_stored_task_bitmap(const df_stored_task_t *t);
bool df_stored_task_has_piece(const df_stored_task_t *t, uint32_t idx);
/* The expected sha256 of a piece, if known (set by the seed or learnt from
 * the tracker).  false when unknown. */
bool df_stored_task_piece_digest(const df_stored_task_t *t, uint32_t idx, uint8_t out[32]);
int df_stored_task_set_piece_digest(df_stored_task_t *t, uint32_t idx, const uint8_t digest[32]);

/* pwrite of piece bytes at offset (no verification here).  -EINVAL when
 * [off, off+len) is not inside the task. */
int df_stored_task_write(df_stored_task_t *t, uint64_t off, const void *data, size_t len);
/* pread; used by verification and tests. */
int df_stored_task_read(df_stored_task_t *t, uint64_t off, void *data, size_t len);
/* Marks piece idx verified with its sha256 (which must equal the expected
 * digest when one is known: else DF_EDIGEST and nothing changes). */
int df_stored_task_mark_piece(df_stored_task_t *t, uint32_t idx, const uint8_t sha256[32]);
/* Forgets a piece (e.g. found corrupt on disk). */
void df_stored_task_unmark_piece(df_stored_task_t *t, uint32_t idx);
/* true when every piece overlapping [off, off+len) is verified. */
bool df_stored_task_range_ready(const df_stored_task_t *t, uint64_t off, uint64_t len);
bool df_stored_task_complete(const df_stored_task_t *t);

/* Whole-file digest and origin validators (ETag, Last-Modified); strings copied. */
int df_stored_task_set_digest(df_stored_task_t *t, const df_digest_t *d);
bool df_stored_task_digest(const df_stored_task_t *t, df_digest_t *out);
int df_stored_task_set_validators(df_stored_task_t *t, const char *etag, const char *last_modified);
const char *df_stored_task_etag(const df_stored_task_t *t);          /* "" if none */
const char *df_stored_task_last_modified(const df_stored_task_t *t); /* "" if none */

/* File descriptor of `data`, for sendfile/evbuffer_add_file_segment. */
int df_stored_task_fd(const df_stored_task_t *t);
/* Path of `data`. */
const char *df_stored_task_data_path(const df_stored_task_t *t);
/* Records a use now (for LRU). */
void df_stored_task_touch(df_stored_task_t *t);
/* fdatasync()s data, then writes meta.json now (also done lazily on a timer
 * by df_store_flush).  A no-op for a detached task. */
int df_stored_task_sync(df_stored_task_t *t);

/* Writes meta.json of every dirty task whose data has not been written for
 * 30 s (by then the kernel has usually written the bytes back, so the
 * fdatasync() that must precede meta.json does not stall the caller). */
void df_store_flush(df_store_t *store);
/* The store will be deleted by its owner when it closes (an in-process
 * dfget): meta.json is never written (nothing is fdatasync()ed) and tasks
 * may be placed next to their output (df_stored_task_place_at). */
void df_store_set_ephemeral(df_store_t *store);
/* Evicts complete, unreferenced tasks: first those not used for longer than
 * the store's max age (df_store_set_max_age), then least recently used ones
 * until the store is within its budget.  Calls evicted_cb(task_id, arg) for
 * each, after the task is gone.  Returns the number evicted.  Incomplete or
 * referenced tasks (being downloaded or served) are never evicted, so the
 * store may stay over budget. */
int df_store_gc(df_store_t *store, void (*evicted_cb)(const char *task_id, void *arg), void *arg);
/* Tasks unused (df_store_task_get, touch) for longer than max_age_ms are
 * evicted by the next df_store_gc; 0 (the default) = no age limit. */
void df_store_set_max_age(df_store_t *store, uint64_t max_age_ms);
/* Tasks evicted by df_store_gc since the store was opened. */
uint64_t df_store_evicted(const df_store_t *store);
/* Sum of the lengths of all tasks, complete or not (an in-progress download
 * has its full size reserved). */
uint64_t df_store_bytes(const df_store_t *store);
/* Number of tasks in the store, complete or not. */
size_t df_store_task_count(const df_store_t *store);

/* Ephemeral stores only, for a task with no verified piece: its bytes move
 * to a new temporary file in output's directory (sparse, full length;
 * unnamed where the filesystem allows, else ".<name>.dfly-XXXXXX": see
 * core/outfile.h), so df_stored_task_export() to that same output is a link
 * or rename(2) instead of a copy.  Until then the task is served and
 * written as any other; the temporary file is removed when the task is
 * freed without having been exported (an unnamed one also when the
 * process is killed).  -EINVAL when the
 * store is not ephemeral, the task was placed already or holds a verified
 * piece; -errno when the file cannot be made (the task is left as it was). */
int df_stored_task_place_at(df_stored_task_t *t, const char *output);
/* Whether the task's bytes live next to an output (df_stored_task_place_at). */
bool df_stored_task_placed(const df_stored_task_t *t);

/* Places the verified, complete task's bytes at `output` atomically: a copy
 * (FICLONE reflink where the filesystem can, else copy_file_range) into a
 * temporary file in output's directory, then a link or rename(2)
 * (df_outfile_publish).  A copy of the store's bytes, not a
 * hard link, so a user editing the output can never change what this host
 * serves.  Nothing is ever left at `output` on failure; the temporary file
 * is removed.  Publishing is atomic for every reader whatever `durable`
 * says; `durable` adds fsync of the file before the link or rename and of the
 * directory after it, so the file also survives a power loss (it costs the
 * disk's write-back time: about a second per 200 MiB on slow disks).
 * A placed task (df_stored_task_place_at, same output) is published instead,
 * and leaves the store: the file is the user's now, never served again
 * (-EXDEV for another output's directory).  Exporting twice is -EINVAL. */
int df_stored_task_export(df_stored_task_t *t, const char *output, bool durable);

/* Library-internal, exposed for tests: copies len bytes from offset 0 of
 * in_fd to offset 0 of out_fd, trying `first` and then each later method
 * (reflink, then copy_file_range, then read/write) when the kernel or the
 * filesystem does not support it.  0 or -errno; -EIO if in_fd is short. */
typedef enum { DF__COPY_CLONE = 0, DF__COPY_RANGE, DF__COPY_RW } df__copy_method_t;
int df__copy_file(int in_fd, int out_fd, uint64_t len, df__copy_method_t first);

#endif
