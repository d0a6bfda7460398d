/*
 * The seed: origin -> piece store, one streaming GET per task.
 *
 * State machine per task (seed_t.phase):
 *
 *   IDLE --start--> CONNECTING --headers--> STREAMING --done--> IDLE
 *                        |                      |
 *                        +------ error ---------+--> IDLE (task failed)
 *
 * and what a request asks for is its `mode`: FRESH (plain GET), RESUME
 * (Range from the verified prefix, If-Range so a changed file answers 200)
 * or REVALIDATE (conditional GET for a cached complete task; 304 = reuse,
 * 200 = the content changed, and this very response becomes the new seed).
 *
 * Credentials: every request carries the task's current headers, which are
 * the latest registrant's (server.c replaces them at each Register), so a
 * revalidation goes out with the credentials of the client that asked for
 * it, not with a first registrant's token that may have expired.  A 401 or
 * 403 speaks of those credentials, not of the file: it is answered to the
 * Registers whose headers were refused (by generation, df_sn_seed_refusal),
 * and when newer headers came while the request ran it is repeated with
 * them before anyone is answered.  A refused revalidation leaves the cached
 * task complete (but not fresh); a refused fetch fails the task without the
 * usual retry delay, so the next registrant, with its own credentials,
 * tries again at once.
 *
 * Streaming: body bytes are written at their offset into the stored task
 * and fed to a per-piece sha256; when a piece is complete it is marked
 * verified in the store and announced to the swarm at once, so peers can
 * fetch it while the rest still streams.  The whole-file sha256 (plus the
 * registered digest's algorithm when that is md5 or sha512) is computed on
 * the same pass.  An origin without Content-Length cannot be cut into
 * pieces before its length is known (the piece size depends on it), so its
 * body is spooled to partial_dir and cut at the end.
 *
 * Hash thread (opts.hash_threads = 1): the loop only writes the body to the
 * store; each piece written whole becomes a job for one worker thread
 * (core/workq.c) that maps it from the store file and feeds the piece's
 * sha256 and the whole-file hashers from that one map.  One worker runs the
 * jobs in submission order, so the whole-file hashers see the file in
 * order; the loop announces a piece only when its job comes back with the
 * digest of the bytes in the store, and finishes the seed (whole-file
 * digest, registered-digest check) only when the stream has ended and no job
 * of it is left.  The hashers of one attempt live in a hashes_t shared with
 * its jobs; an attempt given up (failure, a new response, stop) is detached
 * from it, and its outstanding jobs' results are dropped -- except when the
 * origin's stream broke: then the task fails only once the jobs of the
 * pieces already written whole are back and recorded (fail_stream), so the
 * resume's Range starts after them.
 *
 * Every failure ends in fail(): the task is marked failed with a message
 * meant for the operator and the client, the error kind is counted, and
 * waiting Registers are released through ready_cb.  Except at a
 * revalidation the origin could not answer (5xx, 429, connection error,
 * timeout): the complete cached copy stays complete and is served
 * (revalidation_failed, stale-if-error).
 */
#include "supernode/seed.h"

#include "core/core.h"
#include "core/workq.h"
#include "piece/digest.h"
#include "piece/piece.h"
#include "piece/range.h"

#include <event2/event.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#define READ_CHUNK (1u << 20)
#define HASH_STEP (32u << 20) /* prefix bytes hashed per loop iteration on resume */
#define EXTRA_HEADERS 4
#define HASH_SLICE (256u << 10) /* hash thread: bytes fed to each hasher in turn (stays in cache) */
#define HASHQ_CAP 16            /* hash jobs queued at once (each holds a descriptor) */

typedef enum { MODE_FRESH = 0, MODE_RESUME, MODE_REVALIDATE } seed_mode_t;
typedef enum { PHASE_IDLE = 0, PHASE_CONNECTING, PHASE_STREAMING } seed_phase_t;

typedef struct seed seed_t;
typedef struct hash_job hash_job_t;

/* The hashers of one attempt (a stream, with a resume's cached prefix).  While
 * jobs of it are outstanding only the hash thread touches the hashers, in
 * piece order; the loop finalizes them once `jobs` is back to 0. */
typedef struct {
    seed_t *sd;                   /* NULL once the seed gave the attempt up */
    df_hasher_t *piece_h, *file_h, *extra_h;
    unsigned refs;                /* the seed's (while attached) + one per job */
    unsigned jobs;                /* jobs in the backlog or the queue */
} hashes_t;

/* One piece written whole, to be hashed by the hash thread. */
struct hash_job {
    df_sn_seeder_t *s;
    hashes_t *hs;                 /* referenced */
    uint32_t idx;
    uint64_t off, len;
    int fd;                       /* the job's own dup of the store file, -1 */
    int err;                      /* set by the worker */
    uint8_t sha[32];              /* set by the worker */
    hash_job_t *next;             /* backlog */
};

struct df_sn_seeder {
    df_sn_seeder_opts_t opts;
    char *partial_dir;
    uint64_t origin_bytes;
    uint64_t errors[DF_SN_SEED_ERR_COUNT];
    uint64_t stale[DF_SN_SEED_ERR_COUNT]; /* revalidations failed, cache served (by kind) */
    df_workq_t *hashq;            /* NULL: pieces are hashed on the loop */
    hash_job_t *backlog, *backlog_tail; /* pieces not yet handed to hashq, in order */
    struct event *pump_ev;        /* hands the backlog over from the loop's top level */
    bool closing;                 /* df_sn_seeder_free: no more submissions */
};

struct seed {
    df_sn_seeder_t *s;
    df_sn_task_t *task;
    df_http_req_t *req;
    seed_mode_t mode;
    seed_phase_t phase;
    bool started;                 /* the first start (cache lookup) happened */
    bool spooling;                /* no Content-Length: body goes to the spool */
    df_stored_task_t *stored;     /* referenced */
    int spool_fd;
    char spool_path[PATH_MAX];
    uint64_t start_off;           /* first body byte's offset in the file */
    uint64_t off;                 /* next body byte's offset */
    uint64_t expect;              /* file length (not spooling) */
    hashes_t *hs;                 /* this attempt's hashers */
    bool finishing;               /* body complete, waiting for its hash jobs */
    bool fail_pending;            /* the stream broke: fail once its hash jobs are back */
    df_sn_seed_err_t fail_kind;
    char fail_msg[512];
    df_digest_alg_t extra_alg;    /* registered digest's algorithm when not sha256 */
    bool failed_here;             /* fail() ran during this request */
    uint64_t req_gen;             /* task->headers_gen the request was made with */
    bool repeat;                  /* 401/403 with outdated headers: ask again */
    long refused;                 /* 401/403 to a request of this round, else 0 */
    uint64_t refused_gen;         /* the newest headers generation refused */
    char refusal[160];            /* its message */
    struct event *watchdog;       /* fails a request silent for origin_timeout */
    struct event *hash_ev;        /* resume: hashes the cached prefix in steps */
    uint64_t hash_off;            /* resume: prefix bytes hashed so far */
    bool hashing;                 /* resume: prefix hashing before the request */
    uint64_t last_progress_ms;    /* request start, headers, or last body byte */
};

static void pump_cb(evutil_socket_t fd, short what, void *arg);
static void job_release(hash_job_t *j);

const char *df_sn_seed_err_name(df_sn_seed_err_t e)
{
    static const char *names[] = {
#define DF_X_(name, text) text,
        DF_SN_SEED_ERRORS(DF_X_)
#undef DF_X_
    };
    return (unsigned)e < DF_SN_SEED_ERR_COUNT ? names[e] : "unknown";
}

/* Spool files left by a process that died mid-seed are useless (a spooled
 * body is only cut into pieces at its end): remove them. */
static void clean_spool(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX];

    if (!d)
        return;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".spool") == 0 &&
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
            unlink(path);
    }
    closedir(d);
}

int df_sn_seeder_new(const df_sn_seeder_opts_t *opts, df_sn_seeder_t **out)
{
    df_sn_seeder_t *s = calloc(1, sizeof(*s));
    int rc;

    if (!s)
        return -ENOMEM;
    s->opts = *opts;
    s->partial_dir = strdup(opts->partial_dir);
    if (!s->partial_dir) {
        free(s);
        return -ENOMEM;
    }
    s->opts.partial_dir = s->partial_dir;
    rc = df_mkdirs(s->partial_dir);
    if (rc < 0) {
        DF_LOG_E("seed: cannot create %s: %s", s->partial_dir, df_strerror(rc));
        df_sn_seeder_free(s);
        return rc;
    }
    clean_spool(s->partial_dir);
    if (opts->hash_threads > 0 && opts->base) {
        /* One worker whatever the setting: it runs the jobs in order, which
         * the whole-file hashers need. */
        s->pump_ev = event_new(opts->base, -1, 0, pump_cb, s);
        rc = s->pump_ev ? df_workq_new(opts->base, 1, HASHQ_CAP, &s->hashq) : -ENOMEM;
        if (rc < 0) {
            DF_LOG_E("seed: cannot start the hash thread: %s", df_strerror(rc));
            df_sn_seeder_free(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void df_sn_seeder_free(df_sn_seeder_t *s)
{
    if (!s)
        return;
    /* Every seed is stopped (detached from its hashers): the jobs that come
     * back or are cancelled here are dropped, and nothing is submitted. */
    s->closing = true;
    df_workq_free(s->hashq);
    while (s->backlog) {
        hash_job_t *j = s->backlog;
        s->backlog = j->next;
        job_release(j);
    }
    if (s->pump_ev)
        event_free(s->pump_ev);
    free(s->partial_dir);
    free(s);
}

uint64_t df_sn_seeder_origin_bytes(const df_sn_seeder_t *s)
{
    return s->origin_bytes;
}

uint64_t df_sn_seeder_errors(const df_sn_seeder_t *s, df_sn_seed_err_t e)
{
    return (unsigned)e < DF_SN_SEED_ERR_COUNT ? s->errors[e] : 0;
}

uint64_t df_sn_seeder_revalidation_failures(const df_sn_seeder_t *s, df_sn_seed_err_t e)
{
    return (unsigned)e < DF_SN_SEED_ERR_COUNT ? s->stale[e] : 0;
}

df_stored_task_t *df_sn_seed_stored(const df_sn_task_t *task)
{
    const seed_t *sd = task->seed;
    return sd ? sd->stored : NULL;
}

bool df_sn_seed_active(const df_sn_task_t *task)
{
    const seed_t *sd = task->seed;
    return sd && (sd->req || sd->hashing || sd->finishing);
}

long df_sn_seed_refusal(const df_sn_task_t *task, uint64_t gen, const char **msg)
{
    const seed_t *sd = task->seed;

    if (!sd || !sd->refused || gen > sd->refused_gen)
        return 0;
    *msg = sd->refusal;
    return sd->refused;
}

bool df_sn_seed_ready(const df_sn_task_t *task)
{
    const seed_t *sd = task->seed;

    if (task->state == DF_SN_TASK_FAILED)
        return true;
    if (!sd)
        return false;
    if (sd->phase == PHASE_CONNECTING)
        return false;
    return task->shaped && !sd->spooling;
}

/* ------------------------------------------------------------ helpers */

static void hashes_unref(hashes_t *hs)
{
    if (--hs->refs > 0)
        return;
    df_hasher_free(hs->piece_h);
    df_hasher_free(hs->file_h);
    df_hasher_free(hs->extra_h);
    free(hs);
}

/* Gives up the current attempt's hashers: jobs still out for it run, and
 * their results are dropped. */
static void hashers_free(seed_t *sd)
{
    if (!sd->hs)
        return;
    sd->hs->sd = NULL;
    hashes_unref(sd->hs);
    sd->hs = NULL;
    sd->finishing = false;
}

static int hashers_new(seed_t *sd)
{
    df_digest_t reg;

    hashers_free(sd);
    sd->extra_alg = DF_DIGEST_NONE;
    if (sd->task->digest && df_digest_parse(sd->task->digest, &reg) == 0 &&
        reg.alg != DF_DIGEST_SHA256)
        sd->extra_alg = reg.alg;
    sd->hs = calloc(1, sizeof(*sd->hs));
    if (!sd->hs)
        return -ENOMEM;
    sd->hs->sd = sd;
    sd->hs->refs = 1;
    sd->hs->piece_h = df_hasher_new(DF_DIGEST_SHA256);
    sd->hs->file_h = df_hasher_new(DF_DIGEST_SHA256);
    if (sd->extra_alg != DF_DIGEST_NONE)
        sd->hs->extra_h = df_hasher_new(sd->extra_alg);
    if (!sd->hs->piece_h || !sd->hs->file_h || (sd->extra_alg != DF_DIGEST_NONE && !sd->hs->extra_h))
        return -ENOMEM;
    return 0;
}

static void spool_close(seed_t *sd)
{
    if (sd->spool_fd >= 0) {
        close(sd->spool_fd);
        sd->spool_fd = -1;
        unlink(sd->spool_path);
    }
    sd->spooling = false;
}

static void stored_drop(seed_t *sd, bool remove_files)
{
    if (!sd->stored)
        return;
    df_stored_task_unref(sd->stored);
    sd->stored = NULL;
    if (remove_files)
        df_store_task_remove(sd->s->opts.store, sd->task->id);
}

static void notify(seed_t *sd)
{
    if (sd->s->opts.ready_cb)
        sd->s->opts.ready_cb(sd->task, sd->s->opts.arg);
}

/* Ends the current attempt with a task error.  The request (if any) is
 * cancelled by the caller returning a negative code from a callback, or is
 * already done. */
static void fail(seed_t *sd, df_sn_seed_err_t kind, long origin_status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(seed_t *sd, df_sn_seed_err_t kind, long origin_status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    DF_LOG_W("seed %.12s: %s (%s)", sd->task->id, msg, sd->task->url);
    sd->s->errors[kind]++;
    df_sn_task_fail(sd->task,
                    kind == DF_SN_SEED_ERR_DIGEST_MISMATCH ? "digest"
                    : kind == DF_SN_SEED_ERR_STORE         ? "store"
                                                           : "origin",
                    origin_status, msg, df_now_ms());
    sd->failed_here = true;
    sd->fail_pending = false;
    sd->phase = PHASE_IDLE;
    spool_close(sd);
    hashers_free(sd);
    notify(sd);
}

/* The origin's stream broke after some pieces were written whole: those
 * still with the hash thread are recorded (verified, so a resume starts
 * after them) before the task fails.  Without jobs out, fail() at once. */
static void fail_stream(seed_t *sd, df_sn_seed_err_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_stream(seed_t *sd, df_sn_seed_err_t kind, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(sd->fail_msg, sizeof(sd->fail_msg), fmt, ap);
    va_end(ap);
    if (sd->hs && sd->hs->jobs > 0) {
        sd->fail_pending = true;
        sd->fail_kind = kind;
        return;
    }
    fail(sd, kind, 0, "%s", sd->fail_msg);
}

/* A revalidation the origin could not answer (5xx or 429, no connection,
 * timeout): the cached copy is complete and every piece of it verified, so
 * it stays complete and is served (stale-if-error, as nginx's
 * proxy_cache_use_stale): downloads in progress go on, waiting Registers
 * are answered with it.  The origin is asked again by the first Register
 * after DF_SN_RETRY_MS, not at every Register (each would wait for a dead
 * origin's timeout).  What the origin said about the file or the
 * credentials (404, 401, 403...) is never answered this way. */
static void revalidation_failed(seed_t *sd, df_sn_seed_err_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void revalidation_failed(seed_t *sd, df_sn_seed_err_t kind, const char *fmt, ...)
{
    df_sn_task_t *t = sd->task;
    uint64_t now = df_now_ms(), back = DF_SN_FRESH_MS - DF_SN_RETRY_MS;
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    DF_LOG_W("seed %.12s: revalidation failed: %s; serving the cached copy (%s) and asking again in %u s (%s)",
             t->id, msg, t->file_digest, DF_SN_RETRY_MS / 1000, t->url);
    sd->s->errors[kind]++;
    sd->s->stale[kind]++;
    if (t->state != DF_SN_TASK_COMPLETE)
        df_sn_task_complete(t, t->file_digest, 0); /* a retry of a failed task: see df_sn_seed_start */
    t->validated_ms = now > back ? now - back : 0;
    sd->phase = PHASE_IDLE;
    notify(sd);
}

static uint64_t choose_piece_size(const df_sn_seeder_t *s, uint64_t length)
{
    uint64_t ps = s->opts.piece_size ? s->opts.piece_size : df_piece_size_for(length);

    /* A configured size must still respect the piece-count cap. */
    while (df_piece_count(length, ps) > DF_PIECE_COUNT_MAX)
        ps *= 2;
    return ps;
}

/* Piece idx, whose stored bytes hash to sha, is verified: recorded in the
 * store and announced to the swarm. */
static int record_piece(seed_t *sd, uint32_t idx, const uint8_t sha[32])
{
    int rc = df_stored_task_set_piece_digest(sd->stored, idx, sha);

    if (rc == 0)
        rc = df_stored_task_mark_piece(sd->stored, idx, sha);
    if (rc < 0)
        return rc;
    df_sn_task_seed_piece(sd->task, idx, sha);
    if (sd->s->opts.piece_cb)
        sd->s->opts.piece_cb(sd->task, sd->s->opts.arg);
    return 0;
}

/* Feeds body bytes at sd->off to the piece hasher, marking every piece that
 * completes.  The caller wrote the bytes to the store already. */
static int hash_pieces(seed_t *sd, const uint8_t *data, size_t len)
{
    df_sn_task_t *t = sd->task;

    while (len > 0) {
        uint64_t ps = t->piece_size;
        uint32_t idx = (uint32_t)(sd->off / ps);
        uint64_t pend = DF_MIN((uint64_t)(idx + 1) * ps, t->length);
        size_t n = (size_t)DF_MIN((uint64_t)len, pend - sd->off);
        int rc;

        df_hasher_update(sd->hs->piece_h, data, n);
        sd->off += n;
        data += n;
        len -= n;
        if (sd->off == pend) {
            df_digest_t d;
            df_hasher_final(sd->hs->piece_h, &d);
            rc = record_piece(sd, idx, d.value);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* ------------------------------------------------------ the hash thread */

static void finish(seed_t *sd);

/* Hash thread: the piece's sha256 and the attempt's whole-file hashers, from
 * one map of the piece in the store file (written moments ago: the page
 * cache), a slice at a time so each hasher reads it from the CPU cache.
 * pread when the map fails.  Touches only the job and its hashers, which
 * the loop leaves alone while the job is out. */
static void hash_work(void *arg)
{
    hash_job_t *j = arg;
    hashes_t *hs = j->hs;
    df_hasher_t *ph;
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t start = j->off & ~(pg - 1), delta = j->off - start;
    size_t maplen = (size_t)(j->len + delta);
    uint8_t *m = MAP_FAILED, *buf = NULL;
    df_digest_t d;

    if (j->fd < 0)
        return; /* j->err says why */
    ph = df_hasher_new(DF_DIGEST_SHA256);
    if (!ph) {
        j->err = -ENOMEM;
        return;
    }
    if (j->len)
        m = mmap(NULL, maplen, PROT_READ, MAP_SHARED | MAP_POPULATE, j->fd, (off_t)start);
    if (m == MAP_FAILED && j->len && !(buf = malloc(HASH_SLICE)))
        j->err = -ENOMEM;
    for (uint64_t done = 0; j->err == 0 && done < j->len;) {
        size_t n = (size_t)DF_MIN((uint64_t)HASH_SLICE, j->len - done);
        const uint8_t *p;
        if (m != MAP_FAILED) {
            p = m + delta + done;
        } else {
            ssize_t r = pread(j->fd, buf, n, (off_t)(j->off + done));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                j->err = r < 0 ? -errno : -EIO;
                break;
            }
            n = (size_t)r;
            p = buf;
        }
        df_hasher_update(ph, p, n);
        df_hasher_update(hs->file_h, p, n);
        if (hs->extra_h)
            df_hasher_update(hs->extra_h, p, n);
        done += n;
    }
    if (m != MAP_FAILED)
        munmap(m, maplen);
    free(buf);
    if (j->err == 0) {
        df_hasher_final(ph, &d);
        memcpy(j->sha, d.value, sizeof(j->sha));
    }
    df_hasher_free(ph);
}

static void job_release(hash_job_t *j)
{
    if (j->fd >= 0)
        close(j->fd);
    j->hs->jobs--;
    hashes_unref(j->hs);
    free(j);
}

/* The attempt cannot be finished (a piece could not be hashed): stops its
 * request and fails the task; a later Register resumes from the verified
 * prefix.  Loop top level only (cancels the request). */
static void abort_attempt(seed_t *sd, uint32_t idx, int err)
{
    if (sd->req) {
        df_http_cancel(sd->req); /* no callback runs for it any more */
        sd->req = NULL;
        sd->repeat = false;
    }
    if (sd->watchdog)
        event_del(sd->watchdog);
    fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot hash piece %u from the cache: %s", idx, df_strerror(err));
}

static void pump(df_sn_seeder_t *s);

/* Loop: a job came back (status 0), or the queue was freed before it ran
 * (-ECANCELED, in df_sn_seeder_free, when every seed is already detached). */
static void hash_done(void *arg, int status)
{
    hash_job_t *j = arg;
    df_sn_seeder_t *s = j->s;
    hashes_t *hs = j->hs;
    seed_t *sd = hs->sd;
    uint32_t idx = j->idx;
    int rc = status < 0 ? status : j->err;

    if (rc == 0 && sd)
        rc = record_piece(sd, idx, j->sha);
    job_release(j); /* hs stays: the seed still holds it when attached */
    if (sd && rc < 0)
        abort_attempt(sd, idx, rc);
    else if (sd && sd->finishing && hs->jobs == 0) {
        sd->finishing = false;
        finish(sd);
    } else if (sd && sd->fail_pending && hs->jobs == 0) {
        fail(sd, sd->fail_kind, 0, "%s", sd->fail_msg);
    }
    pump(s);
}

/* Hands the backlog to the hash thread, in order, as far as the queue takes
 * it; the rest waits for the next job to come back.  Jobs of an attempt
 * given up are dropped here. */
static void pump(df_sn_seeder_t *s)
{
    hash_job_t *j;

    while (!s->closing && (j = s->backlog) != NULL) {
        seed_t *sd = j->hs->sd;
        int rc;

        if (sd) {
            j->fd = dup(df_stored_task_fd(sd->stored));
            j->err = j->fd < 0 ? -errno : 0;
            rc = df_workq_submit(s->hashq, hash_work, hash_done, j);
            if (rc < 0) {
                if (j->fd >= 0)
                    close(j->fd);
                j->fd = -1;
                if (rc == -EAGAIN || df_workq_pending(s->hashq) > 0)
                    return; /* the next hash_done pumps again */
            }
        } else {
            rc = -ECANCELED;
        }
        s->backlog = j->next;
        if (!s->backlog)
            s->backlog_tail = NULL;
        if (rc < 0) {
            uint32_t idx = j->idx;
            job_release(j);
            if (sd)
                abort_attempt(sd, idx, rc);
        }
    }
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

/* Body bytes [sd->off, sd->off + len) are in the store: every piece they
 * complete goes to the hash thread (by the backlog, handed over from the
 * loop's top level, so that an error can stop the request). */
static int queue_pieces(seed_t *sd, size_t len)
{
    df_sn_seeder_t *s = sd->s;
    df_sn_task_t *t = sd->task;
    uint64_t end = sd->off + len;

    while (sd->off < end) {
        uint32_t idx = (uint32_t)(sd->off / t->piece_size);
        uint64_t pstart = (uint64_t)idx * t->piece_size;
        uint64_t pend = DF_MIN(pstart + t->piece_size, t->length);
        hash_job_t *j;

        sd->off = DF_MIN(end, pend);
        if (sd->off < pend)
            break;
        j = calloc(1, sizeof(*j));
        if (!j)
            return -ENOMEM;
        j->s = s;
        j->hs = sd->hs;
        j->idx = idx;
        j->off = pstart;
        j->len = pend - pstart;
        j->fd = -1;
        sd->hs->refs++;
        sd->hs->jobs++;
        if (s->backlog_tail)
            s->backlog_tail->next = j;
        else
            s->backlog = j;
        s->backlog_tail = j;
        event_active(s->pump_ev, EV_TIMEOUT, 0);
    }
    return 0;
}

/* Hashes at most `step` more bytes of [0, end) of the stored file into the
 * whole-file hashers (resume), from sd->hash_off. */
static int hash_prefix(seed_t *sd, uint64_t end, uint64_t step)
{
    uint8_t *buf = malloc(READ_CHUNK);
    uint64_t stop = DF_MIN(end, sd->hash_off + step);
    int rc = 0;

    if (!buf)
        return -ENOMEM;
    while (sd->hash_off < stop) {
        size_t n = (size_t)DF_MIN((uint64_t)READ_CHUNK, stop - sd->hash_off);
        rc = df_stored_task_read(sd->stored, sd->hash_off, buf, n);
        if (rc < 0)
            break;
        df_hasher_update(sd->hs->file_h, buf, n);
        if (sd->hs->extra_h)
            df_hasher_update(sd->hs->extra_h, buf, n);
        sd->hash_off += n;
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------- the request */

static int on_headers(df_http_req_t *req, long code, void *arg);
static int on_data(df_http_req_t *req, const void *data, size_t len, void *arg);
static void on_done(df_http_req_t *req, const df_http_result_t *res, void *arg);

/* The stall watchdog.  curl's low-speed check averages over several
 * seconds, so a burst followed by silence would stall for up to ~5 s past
 * origin_timeout; this timer is exact (to its tick) and also covers the wait
 * for the response headers. */
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    seed_t *sd = arg;
    uint64_t now = df_now_ms(), limit = sd->s->opts.origin_timeout_ms;

    (void)fd;
    (void)what;
    if (!sd->req || sd->failed_here || sd->phase == PHASE_IDLE) {
        /* Done, or settled and only waiting for curl to wind down. */
        event_del(sd->watchdog);
        return;
    }
    if (now - sd->last_progress_ms < limit)
        return;
    df_http_cancel(sd->req); /* no callback runs for it any more */
    sd->req = NULL;
    sd->repeat = false;
    event_del(sd->watchdog);
    if (sd->phase == PHASE_CONNECTING && sd->mode == MODE_REVALIDATE)
        revalidation_failed(sd, DF_SN_SEED_ERR_ORIGIN_TIMEOUT, "origin timed out: no response within %llu ms",
                            (unsigned long long)limit);
    else if (sd->phase == PHASE_CONNECTING)
        fail(sd, DF_SN_SEED_ERR_ORIGIN_TIMEOUT, 0, "origin timed out: no response within %llu ms",
             (unsigned long long)limit);
    else
        fail(sd, DF_SN_SEED_ERR_ORIGIN_TIMEOUT, 0, "origin stalled after %llu bytes: no data for %llu ms",
             (unsigned long long)sd->off, (unsigned long long)limit);
}

static void watchdog_arm(seed_t *sd)
{
    uint64_t tick = sd->s->opts.origin_timeout_ms / 4;
    struct timeval tv;

    if (!sd->s->opts.base)
        return;
    if (!sd->watchdog) {
        sd->watchdog = event_new(sd->s->opts.base, -1, EV_PERSIST, watchdog_cb, sd);
        if (!sd->watchdog)
            return; /* curl's own low-speed limit still applies */
    }
    tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
    tv.tv_sec = (time_t)(tick / 1000);
    tv.tv_usec = (suseconds_t)(tick % 1000) * 1000;
    sd->last_progress_ms = df_now_ms();
    event_add(sd->watchdog, &tv);
}

/* Starts the origin request for sd->mode.  0 or -errno. */
static int request(seed_t *sd)
{
    df_sn_seeder_t *s = sd->s;
    df_sn_task_t *t = sd->task;
    const char **hdrs;
    char extra[EXTRA_HEADERS][600];
    size_t n = 0;
    df_http_opts_t o = {0};
    df_http_cbs_t cbs = {.on_headers = on_headers, .on_data = on_data, .on_done = on_done};
    int rc;

    hdrs = calloc(t->nheaders + EXTRA_HEADERS + 1, sizeof(*hdrs));
    if (!hdrs)
        return -ENOMEM;
    for (size_t i = 0; i < t->nheaders; i++) {
        /* The seed decides ranges and conditions itself: a client's would
         * make the cached content something other than the file. */
        static const char *own[] = {"range:", "if-range:", "if-none-match:", "if-modified-since:",
                                    "if-match:", "if-unmodified-since:"};
        bool skip = false;
        for (size_t k = 0; k < DF_ARRAY_LEN(own); k++)
            if (strncasecmp(t->headers[i], own[k], strlen(own[k])) == 0)
                skip = true;
        if (!skip)
            hdrs[n++] = t->headers[i];
    }
    o.url = t->url;
    o.insecure = t->insecure;
    o.ca_pem = t->root_ca;
    o.ca_pem_len = t->root_ca_len;
    o.follow_redirects = true;
    o.connect_timeout_ms = (long)s->opts.origin_timeout_ms;
    o.stall_timeout_ms = (long)s->opts.origin_timeout_ms;
    if (sd->mode == MODE_REVALIDATE && sd->stored) {
        const char *etag = df_stored_task_etag(sd->stored);
        const char *lm = df_stored_task_last_modified(sd->stored);
        int k = 0;
        if (*etag && strlen(etag) < 500) {
            snprintf(extra[k], sizeof(extra[k]), "If-None-Match: %s", etag);
            hdrs[n++] = extra[k++];
        }
        if (*lm && strlen(lm) < 500) {
            snprintf(extra[k], sizeof(extra[k]), "If-Modified-Since: %s", lm);
            hdrs[n++] = extra[k++];
        }
    } else if (sd->mode == MODE_RESUME) {
        const char *etag = df_stored_task_etag(sd->stored);
        const char *lm = df_stored_task_last_modified(sd->stored);
        /* If-Range needs a strong validator: a weak ETag would always make
         * the origin send the whole file, so fall back to Last-Modified. */
        if (*etag && strncmp(etag, "W/", 2) != 0 && strlen(etag) < 500) {
            snprintf(extra[0], sizeof(extra[0]), "If-Range: %s", etag);
            hdrs[n++] = extra[0];
        } else if (*lm && strlen(lm) < 500) {
            snprintf(extra[0], sizeof(extra[0]), "If-Range: %s", lm);
            hdrs[n++] = extra[0];
        }
        o.has_range_from = true;
        o.range_from = sd->start_off;
    }
    o.headers = hdrs;
    sd->phase = PHASE_CONNECTING;
    sd->failed_here = false;
    if (!sd->repeat)
        sd->refused = 0; /* a new round: the refusals of the last are answered */
    sd->repeat = false;
    sd->req_gen = t->headers_gen;
    rc = df_http_start(s->opts.http, &o, &cbs, sd, &sd->req);
    free(hdrs);
    if (rc < 0) {
        sd->req = NULL;
        sd->phase = PHASE_IDLE;
    } else {
        watchdog_arm(sd);
    }
    DF_LOG_D("seed %.12s: %s %s", t->id,
             sd->mode == MODE_FRESH ? "fetching" : sd->mode == MODE_RESUME ? "resuming" : "revalidating",
             t->url);
    return rc;
}

/* A full-file 200: (re)starts the seed from byte 0 with this response. */
static int begin_full(seed_t *sd, df_http_req_t *req)
{
    df_sn_seeder_t *s = sd->s;
    df_sn_task_t *t = sd->task;
    const char *cl, *v;
    char etag_c[512] = "", lm_c[512] = "";
    uint64_t length;
    int rc;

    /* df_http_header() values share one slot per request: copy each
     * before asking for the next. */
    if ((v = df_http_header(req, "ETag")))
        df_strlcpy(etag_c, v, sizeof(etag_c));
    if ((v = df_http_header(req, "Last-Modified")))
        df_strlcpy(lm_c, v, sizeof(lm_c));
    cl = df_http_header(req, "Content-Length");
    stored_drop(sd, true);
    df_sn_task_set_seeding(t);
    rc = hashers_new(sd);
    if (rc < 0)
        return rc;
    sd->start_off = sd->off = 0;

    if (!cl || df_parse_u64(cl, &length) < 0) {
        /* Unknown length: spool, cut into pieces at the end. */
        df_sn_task_unshape(t);
        if (snprintf(sd->spool_path, sizeof(sd->spool_path), "%s/%s.spool", s->partial_dir, t->id) >=
            (int)sizeof(sd->spool_path))
            return -ENAMETOOLONG;
        sd->spool_fd = open(sd->spool_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (sd->spool_fd < 0)
            return -errno;
        sd->spooling = true;
        sd->phase = PHASE_STREAMING;
        sd->expect = UINT64_MAX;
        /* ETag/Last-Modified are recorded on the stored task at the end. */
        return 0;
    }
    {
        df_task_shape_t shape = {.url = t->url, .length = length,
                                 .piece_size = choose_piece_size(s, length)};
        rc = df_sn_task_shape(t, length, shape.piece_size);
        if (rc < 0)
            return rc;
        rc = df_store_task_create(s->opts.store, t->id, &shape, &sd->stored);
        if (rc < 0)
            return rc;
        df_stored_task_set_validators(sd->stored, etag_c, lm_c);
        df_stored_task_sync(sd->stored);
    }
    sd->expect = length;
    sd->phase = PHASE_STREAMING;
    return 0;
}

static int on_headers(df_http_req_t *req, long code, void *arg)
{
    seed_t *sd = arg;
    df_sn_task_t *t = sd->task;
    int rc = 0;

    sd->last_progress_ms = df_now_ms();
    if (sd->mode == MODE_REVALIDATE && code == 304) {
        DF_LOG_D("seed %.12s: origin says not modified; reusing the cache", t->id);
        if (t->state != DF_SN_TASK_COMPLETE)
            df_sn_task_complete(t, t->file_digest, 0); /* a retry of a failed task */
        t->validated_ms = df_now_ms();
        sd->phase = PHASE_IDLE;
        notify(sd);
        return DF_ECANCELED; /* nothing more to read */
    }
    if (sd->mode == MODE_RESUME && code == 206) {
        const char *cr = df_http_header(req, "Content-Range");
        uint64_t first, last, total;
        if (!cr || df_content_range_parse(cr, &first, &last, &total) < 0 || first != sd->start_off ||
            (total != UINT64_MAX && total != t->length) || last + 1 != t->length) {
            fail(sd, DF_SN_SEED_ERR_LENGTH_MISMATCH, 0,
                 "origin answered the resume with Content-Range \"%s\", expected bytes %llu-%llu/%llu",
                 cr ? cr : "", (unsigned long long)sd->start_off,
                 (unsigned long long)(t->length - 1), (unsigned long long)t->length);
            /* Start from scratch next time. */
            stored_drop(sd, true);
            return DF_ECANCELED;
        }
        /* The whole-file hashers already hold the cached prefix
         * (df_sn_seed_start hashed it before asking). */
        sd->off = sd->start_off;
        sd->expect = t->length;
        sd->phase = PHASE_STREAMING;
        DF_LOG_I("seed %.12s: resuming at byte %llu of %llu", t->id,
                 (unsigned long long)sd->start_off, (unsigned long long)t->length);
        notify(sd);
        return 0;
    }
    if (code == 200) {
        if (sd->mode != MODE_FRESH)
            DF_LOG_I("seed %.12s: origin sent the whole file (%s); fetching it again", t->id,
                     sd->mode == MODE_RESUME ? "resume refused" : "content changed");
        rc = begin_full(sd, req);
        if (rc < 0) {
            fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot store the file: %s", df_strerror(rc));
            return DF_ECANCELED;
        }
        if (!sd->spooling)
            notify(sd);
        return 0;
    }
    if (code == 401 || code == 403) {
        /* Registers with these headers (or older ones) get this answer. */
        sd->refused = code;
        sd->refused_gen = sd->req_gen;
        snprintf(sd->refusal, sizeof(sd->refusal), "origin returned %ld %s", code,
                 code == 401 ? "Unauthorized" : "Forbidden");
        if (t->headers_gen != sd->req_gen) {
            /* A registrant with other headers came meanwhile: on_done asks
             * again with them before anyone is answered. */
            DF_LOG_I("seed %.12s: origin refused (%ld) a registrant's headers; asking with the next one's",
                     t->id, code);
            sd->repeat = true;
            return DF_ECANCELED;
        }
        if (sd->mode == MODE_REVALIDATE && t->state == DF_SN_TASK_COMPLETE) {
            /* These credentials were refused, the file was not: the cached
             * copy stays complete (peers keep fetching it) but not fresh,
             * so the next Register revalidates with its own headers. */
            DF_LOG_W("seed %.12s: origin refused the revalidation (%ld); the cache stays, for registrants "
                     "the origin accepts", t->id, code);
            sd->s->errors[DF_SN_SEED_ERR_ORIGIN_HTTP]++;
            sd->phase = PHASE_IDLE;
            notify(sd);
            return DF_ECANCELED;
        }
        fail(sd, DF_SN_SEED_ERR_ORIGIN_HTTP, code, "origin returned %ld %s", code,
             code == 401 ? "Unauthorized" : "Forbidden");
        t->failed_ms = 0; /* the next registrant retries with its credentials */
        return DF_ECANCELED;
    }
    if (sd->mode == MODE_REVALIDATE && (code >= 500 || code == 429)) {
        revalidation_failed(sd, DF_SN_SEED_ERR_ORIGIN_HTTP, "origin returned %ld", code);
        return DF_ECANCELED;
    }
    if (code >= 400 || code < 200 || code == 304 || code == 206 || code >= 300)
        fail(sd, DF_SN_SEED_ERR_ORIGIN_HTTP, code, "origin returned %ld%s%s", code,
             code == 404 ? " Not Found" : code == 401 ? " Unauthorized" : code == 403 ? " Forbidden" : "",
             code == 206 || code == 304 ? " (unexpected)" : "");
    return DF_ECANCELED;
}

static int on_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    seed_t *sd = arg;
    df_sn_seeder_t *s = sd->s;
    int rc;

    (void)req;
    if (sd->phase != PHASE_STREAMING)
        return DF_ECANCELED;
    s->origin_bytes += len;
    if (len)
        sd->last_progress_ms = df_now_ms();
    if (sd->spooling) {
        if (s->opts.spool_limit && sd->off + len > s->opts.spool_limit) {
            fail(sd, DF_SN_SEED_ERR_STORE, 0, "origin file without Content-Length exceeds %llu bytes",
                 (unsigned long long)s->opts.spool_limit);
            return DF_ETOOBIG;
        }
        for (size_t done = 0; done < len;) {
            ssize_t n = pwrite(sd->spool_fd, (const char *)data + done, len - done,
                               (off_t)(sd->off + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                rc = n < 0 ? -errno : -EIO;
                fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot spool the file: %s", df_strerror(rc));
                return rc;
            }
            done += (size_t)n;
        }
        df_hasher_update(sd->hs->file_h, data, len);
        if (sd->hs->extra_h)
            df_hasher_update(sd->hs->extra_h, data, len);
        sd->off += len;
        return 0;
    }
    if (len > sd->expect - sd->off) {
        fail(sd, DF_SN_SEED_ERR_LENGTH_MISMATCH, 0,
             "origin sent more than its Content-Length of %llu bytes", (unsigned long long)sd->expect);
        return DF_EPROTO;
    }
    rc = df_stored_task_write(sd->stored, sd->off, data, len);
    if (rc < 0) {
        fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot write the cache: %s", df_strerror(rc));
        return rc;
    }
    if (s->hashq) {
        rc = queue_pieces(sd, len);
    } else {
        df_hasher_update(sd->hs->file_h, data, len);
        if (sd->hs->extra_h)
            df_hasher_update(sd->hs->extra_h, data, len);
        rc = hash_pieces(sd, data, len);
    }
    if (rc < 0) {
        fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot record a piece: %s", df_strerror(rc));
        return rc;
    }
    return 0;
}

/* Spooled body complete: shape the task, copy pieces into the store. */
static int cut_spool(seed_t *sd, const char *etag, const char *lm)
{
    df_sn_seeder_t *s = sd->s;
    df_sn_task_t *t = sd->task;
    uint64_t length = sd->off;
    df_task_shape_t shape = {.url = t->url, .length = length,
                             .piece_size = choose_piece_size(s, length)};
    uint8_t *buf = NULL;
    int rc;

    rc = df_sn_task_shape(t, length, shape.piece_size);
    if (rc < 0)
        return rc;
    rc = df_store_task_create(s->opts.store, t->id, &shape, &sd->stored);
    if (rc < 0)
        return rc;
    df_stored_task_set_validators(sd->stored, etag ? etag : "", lm ? lm : "");
    buf = malloc(shape.piece_size);
    if (!buf)
        return -ENOMEM;
    sd->off = 0;
    for (uint32_t i = 0; i < t->piece_count; i++) {
        uint64_t off, len;
        df_piece_span(length, shape.piece_size, i, &off, &len);
        for (size_t done = 0; done < len;) {
            ssize_t n = pread(sd->spool_fd, buf + done, (size_t)len - done, (off_t)(off + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                rc = n < 0 ? -errno : -EIO;
                goto out;
            }
            done += (size_t)n;
        }
        rc = df_stored_task_write(sd->stored, off, buf, (size_t)len);
        if (rc == 0)
            rc = hash_pieces(sd, buf, (size_t)len);
        if (rc < 0)
            goto out;
    }
out:
    free(buf);
    return rc;
}

static void refetch(seed_t *sd);

static void on_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    seed_t *sd = arg;
    int rc;

    sd->req = NULL;
    if (sd->watchdog)
        event_del(sd->watchdog);
    if (sd->repeat) {
        rc = request(sd); /* same mode, the newer headers */
        if (rc < 0)
            fail(sd, DF_SN_SEED_ERR_ORIGIN_CONNECT, 0, "cannot start the origin request: %s", df_strerror(rc));
        return;
    }
    if (sd->failed_here || sd->phase == PHASE_IDLE)
        return; /* already settled: an error, a 304, or a refusal */
    if (res->status < 0) {
        bool timeout = res->status == DF_ETIMEOUT;
        if (sd->phase == PHASE_STREAMING && !timeout && !sd->spooling && sd->off < sd->expect)
            fail_stream(sd, DF_SN_SEED_ERR_LENGTH_MISMATCH,
                        "origin closed the connection after %llu of %llu bytes: %s",
                        (unsigned long long)sd->off, (unsigned long long)sd->expect,
                        res->error ? res->error : df_strerror(res->status));
        else if (sd->phase == PHASE_CONNECTING && sd->mode == MODE_REVALIDATE)
            revalidation_failed(sd, timeout ? DF_SN_SEED_ERR_ORIGIN_TIMEOUT : DF_SN_SEED_ERR_ORIGIN_CONNECT,
                                "origin %s: %s", timeout ? "timed out" : "unreachable",
                                res->error ? res->error : df_strerror(res->status));
        else if (sd->phase == PHASE_CONNECTING)
            fail(sd, timeout ? DF_SN_SEED_ERR_ORIGIN_TIMEOUT : DF_SN_SEED_ERR_ORIGIN_CONNECT, 0,
                 "origin %s: %s", timeout ? "timed out" : "unreachable",
                 res->error ? res->error : df_strerror(res->status));
        else
            fail_stream(sd, timeout ? DF_SN_SEED_ERR_ORIGIN_TIMEOUT : DF_SN_SEED_ERR_ORIGIN_CONNECT,
                        "origin %s after %llu bytes: %s", timeout ? "stalled" : "failed",
                        (unsigned long long)sd->off, res->error ? res->error : df_strerror(res->status));
        return;
    }
    if (sd->spooling) {
        const char *etag = df_http_header(req, "ETag");
        char etag_c[512] = "";
        if (etag)
            df_strlcpy(etag_c, etag, sizeof(etag_c));
        rc = cut_spool(sd, etag_c, df_http_header(req, "Last-Modified"));
        spool_close(sd);
        if (rc < 0) {
            fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot store the file: %s", df_strerror(rc));
            return;
        }
    } else if (sd->off != sd->expect) {
        fail_stream(sd, DF_SN_SEED_ERR_LENGTH_MISMATCH, "origin closed the connection after %llu of %llu bytes",
                    (unsigned long long)sd->off, (unsigned long long)sd->expect);
        return;
    }
    if (sd->hs->jobs > 0) {
        sd->finishing = true; /* the last hash_done finishes */
        return;
    }
    finish(sd);
}

/* The whole body is in the store and every piece of it hashed: the
 * whole-file digest, the registered digest's check, completion. */
static void finish(seed_t *sd)
{
    df_sn_task_t *t = sd->task;
    df_digest_t file_d, reg, extra_d;
    char fdigest[DF_DIGEST_STR_MAX], got[DF_DIGEST_STR_MAX];
    int rc;

    df_hasher_final(sd->hs->file_h, &file_d);
    df_digest_format(&file_d, fdigest, sizeof(fdigest));
    if (t->digest && df_digest_parse(t->digest, &reg) == 0) {
        const df_digest_t *mine = &file_d;
        if (sd->hs->extra_h) {
            df_hasher_final(sd->hs->extra_h, &extra_d);
            mine = &extra_d;
        }
        if (!df_digest_equal(mine, &reg)) {
            df_digest_format(mine, got, sizeof(got));
            fail(sd, DF_SN_SEED_ERR_DIGEST_MISMATCH, 0,
                 "digest mismatch: registered %s, origin content is %s", t->digest, got);
            /* Never serve content that is not what was asked for. */
            for (uint32_t i = 0; i < t->piece_count; i++)
                df_sn_task_seed_unpiece(t, i);
            stored_drop(sd, true);
            return;
        }
    }
    hashers_free(sd);
    if (t->seed_pieces != t->piece_count) {
        /* A piece this stream already passed was found corrupt on disk
         * meanwhile (df_sn_seed_check_piece): fetch again from there. */
        sd->phase = PHASE_IDLE;
        refetch(sd);
        return;
    }
    /* meta.json follows lazily (df_store_flush once the file is quiet, or
     * at close): an fdatasync here would stall every upload for the disk. */
    rc = df_stored_task_set_digest(sd->stored, &file_d);
    if (rc < 0)
        DF_LOG_W("seed %.12s: cannot persist the cache metadata: %s", t->id, df_strerror(rc));
    sd->phase = PHASE_IDLE;
    df_sn_task_complete(t, fdigest, df_now_ms());
    DF_LOG_I("seed %.12s: complete, %llu bytes, %u pieces, %s", t->id,
             (unsigned long long)t->length, t->piece_count, fdigest);
    notify(sd);
}

/* ---------------------------------------------------------- start/stop */

/* Loads what the store holds for the task into the swarm.  Returns true
 * when the stored copy is complete (with its whole-file digest). */
static bool load_cache(seed_t *sd)
{
    df_sn_task_t *t = sd->task;
    df_digest_t d;
    uint8_t sha[32];
    uint32_t count;

    if (df_store_task_get(sd->s->opts.store, t->id, &sd->stored) < 0)
        return false;
    if (sd->s->opts.piece_size && df_stored_task_piece_size(sd->stored) != sd->s->opts.piece_size) {
        stored_drop(sd, true); /* configured piece size changed: refetch */
        return false;
    }
    if (df_sn_task_shape(t, df_stored_task_length(sd->stored), df_stored_task_piece_size(sd->stored)) < 0) {
        stored_drop(sd, false);
        return false;
    }
    count = df_stored_task_piece_count(sd->stored);
    for (uint32_t i = 0; i < count; i++)
        if (df_stored_task_has_piece(sd->stored, i) && df_stored_task_piece_digest(sd->stored, i, sha))
            df_sn_task_seed_piece(t, i, sha);
    if (df_stored_task_complete(sd->stored) && df_stored_task_digest(sd->stored, &d) &&
        d.alg == DF_DIGEST_SHA256 && t->seed_pieces == t->piece_count) {
        char text[DF_DIGEST_STR_MAX];
        df_digest_t reg;
        df_digest_format(&d, text, sizeof(text));
        /* A registered sha256 must match the cache; other algorithms are
         * not kept, so such tasks are fetched again. */
        if (t->digest && (df_digest_parse(t->digest, &reg) < 0 || !df_digest_equal(&reg, &d))) {
            stored_drop(sd, true);
            df_sn_task_unshape(t);
            return false;
        }
        df_sn_task_complete(t, text, 0);
        t->validated_ms = 0; /* revalidate before use */
        return true;
    }
    return false;
}

static void hash_step_cb(evutil_socket_t fd, short what, void *arg);

/* Resume: the whole-file digest must cover the cached prefix too, so it is
 * hashed from disk before the origin is asked for the rest -- in steps of
 * HASH_STEP on a zero timer, so a multi-gigabyte prefix does not freeze the
 * API.  Without an event base (unit tests), in one go. */
static int start_resume(seed_t *sd)
{
    static const struct timeval zero = {0, 0};
    int rc = hashers_new(sd);

    if (rc < 0)
        return rc;
    sd->hash_off = 0;
    sd->phase = PHASE_CONNECTING;
    if (!sd->s->opts.base) {
        rc = hash_prefix(sd, sd->start_off, UINT64_MAX);
        return rc < 0 ? rc : request(sd);
    }
    if (!sd->hash_ev && !(sd->hash_ev = evtimer_new(sd->s->opts.base, hash_step_cb, sd)))
        return -ENOMEM;
    sd->hashing = true;
    evtimer_add(sd->hash_ev, &zero);
    return 0;
}

static void hash_step_cb(evutil_socket_t fd, short what, void *arg)
{
    static const struct timeval zero = {0, 0};
    seed_t *sd = arg;
    int rc;

    (void)fd;
    (void)what;
    rc = hash_prefix(sd, sd->start_off, HASH_STEP);
    if (rc == 0 && sd->hash_off < sd->start_off) {
        evtimer_add(sd->hash_ev, &zero);
        return;
    }
    sd->hashing = false;
    if (rc < 0) {
        fail(sd, DF_SN_SEED_ERR_STORE, 0, "cannot read the cache to resume: %s", df_strerror(rc));
        return;
    }
    rc = request(sd);
    if (rc < 0)
        fail(sd, DF_SN_SEED_ERR_ORIGIN_CONNECT, 0, "cannot start the origin request: %s",
             df_strerror(rc));
}

/* The verified prefix of the stored copy, in bytes. */
static uint64_t verified_prefix(const df_sn_task_t *t)
{
    uint32_t i = 0;
    while (i < t->piece_count && df_bitmap_test(t->seed_have, i))
        i++;
    return i == t->piece_count ? t->length : (uint64_t)i * t->piece_size;
}

int df_sn_seed_start(df_sn_seeder_t *s, df_sn_task_t *task, uint64_t now_ms)
{
    seed_t *sd = task->seed;
    int rc;

    if (!sd) {
        sd = calloc(1, sizeof(*sd));
        if (!sd)
            return -ENOMEM;
        sd->s = s;
        sd->task = task;
        sd->spool_fd = -1;
        task->seed = sd;
    }
    if (sd->req || sd->hashing || sd->finishing)
        return 0; /* already talking to the origin, about to, or finishing */

    if (!sd->started) {
        sd->started = true;
        if (load_cache(sd)) {
            sd->mode = MODE_REVALIDATE;
            DF_LOG_I("seed %.12s: found in the cache; revalidating", task->id);
            goto start;
        }
    } else if (task->state == DF_SN_TASK_COMPLETE) {
        if (now_ms - task->validated_ms < DF_SN_FRESH_MS)
            return 0;
        sd->mode = MODE_REVALIDATE;
        goto start;
    } else if (task->state == DF_SN_TASK_FAILED) {
        if (task->failed_ms && now_ms - task->failed_ms < DF_SN_RETRY_MS)
            return 0;
        df_sn_task_set_seeding(task);
        if (sd->stored && task->shaped && task->file_digest[0] && task->seed_pieces == task->piece_count &&
            df_stored_task_complete(sd->stored)) {
            /* Still a complete, verified copy (the origin answered a
             * revalidation with 404 or the like): ask whether it is the
             * file again rather than reading it all again. */
            sd->mode = MODE_REVALIDATE;
            goto start;
        }
        if (!sd->stored && task->shaped)
            df_sn_task_unshape(task);
        if (!sd->stored && df_store_task_get(s->opts.store, task->id, &sd->stored) == 0 &&
            (!task->shaped || df_stored_task_length(sd->stored) != task->length))
            stored_drop(sd, false);
    } else {
        return 0; /* seeding, between requests: cannot happen, be safe */
    }

    /* Resume when a verified prefix exists and the origin gave a validator
     * for If-Range (without one, a file changed at the origin would be
     * spliced from two versions), else fetch from scratch. */
    if (sd->stored && task->shaped && verified_prefix(task) > 0 && verified_prefix(task) < task->length &&
        (*df_stored_task_last_modified(sd->stored) ||
         (*df_stored_task_etag(sd->stored) && strncmp(df_stored_task_etag(sd->stored), "W/", 2) != 0))) {
        sd->mode = MODE_RESUME;
        sd->start_off = verified_prefix(task);
    } else if (sd->stored && task->shaped && verified_prefix(task) == task->length &&
               task->length > 0) {
        /* Everything verified but never finished (crash before the final
         * digest): re-read from scratch, it is the simplest safe path. */
        sd->mode = MODE_FRESH;
    } else {
        sd->mode = MODE_FRESH;
    }
    df_sn_task_set_seeding(task);
    if (sd->mode == MODE_RESUME) {
        rc = start_resume(sd);
        if (rc < 0)
            goto failed;
        return 0;
    }
start:
    rc = request(sd);
failed:
    if (rc < 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "cannot start the origin request: %s", df_strerror(rc));
        s->errors[DF_SN_SEED_ERR_ORIGIN_CONNECT]++;
        df_sn_task_fail(task, "origin", 0, msg, now_ms);
        return rc;
    }
    return 0;
}

int df_sn_seed_check_piece(df_sn_seeder_t *s, df_sn_task_t *task, uint32_t idx, uint64_t now_ms)
{
    seed_t *sd = task->seed;
    uint64_t off, len;
    uint8_t *buf, sha[32];
    int rc;

    (void)s;
    if (!sd || !sd->stored || !task->shaped || idx >= task->piece_count ||
        !df_bitmap_test(task->seed_have, idx))
        return 0;
    df_piece_span(task->length, task->piece_size, idx, &off, &len);
    buf = malloc(len ? len : 1);
    if (!buf)
        return -ENOMEM;
    rc = df_stored_task_read(sd->stored, off, buf, (size_t)len);
    if (rc == 0) {
        df_sha256(buf, (size_t)len, sha);
        if (memcmp(sha, task->piece_sha + (size_t)idx * 32, 32) != 0)
            rc = DF_EDIGEST;
    }
    free(buf);
    if (rc == 0)
        return 0;
    DF_LOG_E("seed %.12s: piece %u is corrupt in the cache (%s); will fetch it again", task->id, idx,
             df_strerror(rc));
    df_stored_task_unmark_piece(sd->stored, idx);
    df_stored_task_sync(sd->stored);
    df_sn_task_seed_unpiece(task, idx);
    /* Peers keep the other pieces; the seed resumes from the lost one.  A
     * running stream notices at its end (on_done) and does the same. */
    if (!sd->req && !sd->hashing && !sd->finishing)
        refetch(sd);
    return DF_EDIGEST;
}

/* Re-fetches what the seed lost, now: the task goes back to seeding (peers
 * keep getting the pieces that are still verified) and the seed resumes from
 * its verified prefix.  If that cannot start, the task is failed. */
static void refetch(seed_t *sd)
{
    df_sn_task_t *t = sd->task;
    uint64_t now = df_now_ms();

    /* df_sn_seed_start retries a failed task at once when failed_ms is 0. */
    df_sn_task_fail(t, "store", 0, "a cached piece was corrupt; fetching it again", now);
    t->failed_ms = 0;
    if (df_sn_seed_start(sd->s, t, now) == 0)
        DF_LOG_I("seed %.12s: fetching again from the first missing piece", t->id);
}

void df_sn_seed_stop(df_sn_seeder_t *s, df_sn_task_t *task)
{
    seed_t *sd = task->seed;

    (void)s;
    if (!sd)
        return;
    df_http_cancel(sd->req);
    sd->req = NULL;
    if (sd->watchdog)
        event_free(sd->watchdog);
    if (sd->hash_ev)
        event_free(sd->hash_ev);
    spool_close(sd);
    hashers_free(sd);
    stored_drop(sd, false);
    free(sd);
    task->seed = NULL;
}
