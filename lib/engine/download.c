/*
 * One download: the engine's state machine.
 *
 *   REGISTER --ok--> P2P --all pieces--> FINISH (verify whole file, export)
 *      |              |
 *      |              +--tracker lost / task error / stalled--> ORIGIN (missing pieces)
 *      +--tracker unreachable / pattern source--> SOURCE (plain streaming GET)
 *
 * P2P: the download keeps up to fetch_parallel piece fetches in flight.  It
 * asks the tracker for work with PullPiece, carrying the results of pieces
 * finished since the previous pull (ReportPiece rides along), so a verified
 * piece is offered to other peers at the next pull.  Each piece is fetched
 * with an HTTP Range request from its source (peer or seed), hashed while it
 * streams into the piece store at its offset, and marked verified only if
 * its sha256 matches the digest the seed computed.  A bad piece is reported
 * (ReportError) and its source is not used again by this download.
 *
 * The whole-file digest is computed incrementally over the verified prefix
 * of the file as pieces land (pread from the page cache), so finishing does
 * not re-read the file.  The output appears only by df_stored_task_export()
 * after every check passed (for an ephemeral peer the pieces are written into
 * a temporary file next to the output, unnamed where the filesystem allows
 * (core/outfile.h), and export links or renames it).
 *
 * ORIGIN: when P2P cannot go on (tracker gone, task error, no progress for
 * stall_timeout), the download fetches what it still lacks from the origin
 * with one Range request from the first missing piece (the origin's 200
 * answer restarts from 0), verifying every piece whose digest it knows.
 * SOURCE: without a task shape (no tracker), one plain GET into a temporary
 * file next to the output (the same kind), hashed as it streams, published
 * when verified.
 *
 * Lifetime: finish() never frees the download it is called for, so every
 * caller may look at dl->state afterwards: it marks the download a zombie
 * and frees it from a libevent callback of its own (reap) once no tracker
 * call it started is pending (tracker calls cannot be cancelled one by one;
 * their callbacks free a zombie when they come back).
 */
#include "core/outfile.h"
#include "engine/peer_internal.h"

#include "piece/digest.h"
#include "piece/piece.h"
#include "piece/range.h"
#include "sched/endgame.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RESULTS_CAP 4096u
/* One pull or report carries at most this many results and this many bytes
 * of them: the supernode refuses more than 1024 results (400) and bodies
 * over 64 KiB (413), and a refused call loses every result it carried. */
#define RESULTS_PER_CALL 1024u
#define RESULTS_BYTES_PER_CALL (48u * 1024u)
#define HASH_CHUNK (1u << 20)
#define TRACKER_RETRIES 3
#define SWARM_STALL_FACTOR 3u /* stall limit while the swarm is moving (df_pull_res_t.swarm_moving): 3x */

typedef enum { ST_REGISTER, ST_P2P, ST_ORIGIN, ST_SOURCE, ST_DONE } state_t;

typedef struct fetch fetch_t;

struct df_download {
    df_peer_t *peer;
    df_download_t *prev, *next;
    state_t state;
    bool zombie;                 /* finished; freed when no tracker call or hash job is pending */
    bool starting;               /* inside df_peer_download: done_cb must wait (reap) */
    bool done_deferred;          /* finished while starting: reap calls done_cb */
    int tracker_calls;           /* pending tracker calls with us as argument */
    int hash_jobs;               /* pieces being verified on a hash thread */

    /* the request, owned copies */
    char *url, *output, *identifier, *call_system;
    char **filter, **headers;
    df_digest_t user_digest;
    bool has_user_digest;
    char *digest_text;
    uint64_t local_limit, timeout_ms;
    df_pattern_t pattern;
    bool notbs;
    bool durable;
    bool insecure;               /* TLS options of our own origin requests, also sent */
    char *ca_file;               /* to the supernode for its seed (ca_pem: the file's */
    char *ca_pem;                /* contents, read once at the start) */
    size_t ca_pem_len;
    df_download_progress_cb progress_cb;
    df_download_done_cb done_cb;
    void *arg;

    df_download_result_t res;
    double t0;
    uint64_t start_ms, last_progress_ms, last_progress_cb_ms, last_contiguous;
    uint32_t store_pieces;       /* pieces of the task in the store at the last tick */
    uint64_t swarm_moving_ms;    /* last pull answer that said the swarm is moving */
    uint64_t held_bytes;         /* piece bytes the store held when the task was set up */
    bool stream;                 /* progress at every growth of the verified prefix */

    /* task */
    char peer_id[DF_PEER_ID_MAX];
    uint64_t length, piece_size;
    uint32_t piece_count;
    df_stored_task_t *task;
    uint8_t *inflight;           /* bitmap: pieces being fetched */
    uint32_t ninflight;
    fetch_t *fetches;
    df_piece_result_t *results;  /* finished since the last pull */
    size_t nresults;
    char **bad_sources;          /* sources that served bad bytes or failed */
    size_t nbad;
    bool pull_pending, wait_pending;
    uint64_t pull_sent_ms;       /* for the debug trace */
    int tracker_failures;
    char tracker_digest[160];
    bool tracker_done;
    uint32_t endgame_drops;      /* slow fetches abandoned in the endgame */
    struct {
        char id[DF_PEER_ID_MAX];
        uint64_t until_ms;
        uint64_t reported_ms; /* last "slow" report about it */
    } slow[DF_ENDGAME_MAX_DROPS]; /* sources abandoned as slow: avoided until until_ms */

    /* whole-file hashing over the verified prefix */
    df_hasher_t *whole_sha256, *whole_user;
    uint64_t hashed_upto;        /* verified prefix (hashed when hash_whole) */
    bool hash_whole;             /* hash the file locally: only against the user's digest,
                                  * which no supernode can vouch for */

    /* origin / source transfer */
    df_http_req_t *origin_req;
    uint64_t origin_pos;         /* absolute offset of the next origin byte */
    uint64_t origin_end;         /* ORIGIN: end of the run of missing pieces being fetched */
    df_hasher_t *origin_piece_hasher;
    int src_fd;                  /* src_out.fd with an output, else the spool in the home */
    df_outfile_t src_out;        /* SOURCE with an output: the output-to-be (fd -1 when none) */
    char *src_tmp;               /* the spool's name (no output) */

    df_rate_limit_t rl;
    df_http_req_t *paused_req;   /* the transfer paused for the rate limit (origin) */
    struct event *timer;         /* wait / retry / resume */
    struct event *tick;          /* stall and timeout watchdog, 1 s */
    struct event *reap;          /* frees a finished download outside any callback */
};

struct fetch {
    df_download_t *dl;
    fetch_t *prev, *next;
    df_assignment_t a;
    df_http_req_t *req;
    uint64_t got;
    df_hasher_t *hasher;         /* hashing on the loop as bytes arrive (no hash queue) */
    int err;
    /* verification on a hash thread (peer->hashq): the fetch leaves
     * dl->fetches and is owned by the job until hash_done */
    int hash_fd;                 /* dup of the store file's descriptor */
    int hash_err;                /* 0 or -errno of reading the piece back */
    uint8_t hash_out[32];        /* its SHA-256 */
    struct event *resume;
    bool bad_status;
    uint64_t started_ms;         /* for the per-piece debug trace */
};

static void finish(df_download_t *dl, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void maybe_pull(df_download_t *dl);
static void push_result(df_download_t *dl, uint32_t piece, const char *src, bool ok);
static void start_origin(df_download_t *dl, const char *why);
static void origin_next_run(df_download_t *dl);
static void check_complete(df_download_t *dl);

/* ------------------------------------------------------------ helpers */

static char **dup_strv(const char **v)
{
    size_t n = 0;
    char **out;
    while (v && v[n])
        n++;
    out = calloc(n + 1, sizeof(*out));
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (!out[i]) {
            for (size_t j = 0; j < i; j++)
                free(out[j]);
            free(out);
            return NULL;
        }
    }
    return out;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static bool is_bad_source(const df_download_t *dl, const char *id)
{
    for (size_t i = 0; i < dl->nbad; i++)
        if (strcmp(dl->bad_sources[i], id) == 0)
            return true;
    return false;
}

/* A source the endgame abandoned as slow less than DF_ENDGAME_AVOID_MS ago:
 * not used by this download meanwhile (the tracker was told "slow" and
 * should not offer it; this covers an assignment made before the report
 * arrived).  One entry per abandoned fetch: endgame_drops indexes them.
 * Returns the entry's index, or -1. */
static int slow_source_entry(const df_download_t *dl, const char *id, uint64_t now)
{
    for (uint32_t i = 0; i < dl->endgame_drops && i < DF_ENDGAME_MAX_DROPS; i++)
        if (now < dl->slow[i].until_ms && strcmp(dl->slow[i].id, id) == 0)
            return (int)i;
    return -1;
}

/* Every this often at most, an assignment from a source this download
 * avoids as slow repeats the "slow" report (see refuse_slow_source). */
#define SLOW_REREPORT_MS 1000u

/* The tracker offered piece a from a source this download avoids as slow
 * (entry i): refused.  An offer after the report means the tracker did not
 * take it (the report was lost: a refused connection, a supernode
 * restarted or failed over to another node) and will keep offering that
 * source, which holds the piece, while the download, refusing it, makes no
 * progress until the stall watchdog goes to the origin.  So the report is
 * sent again, at most every SLOW_REREPORT_MS per source: the offers before
 * it arrives cost a pull each, not the rest of the avoidance. */
static void refuse_slow_source(df_download_t *dl, const df_assignment_t *a, int i, uint64_t now)
{
    push_result(dl, a->piece, a->src_id, false);
    if (now - dl->slow[i].reported_ms < SLOW_REREPORT_MS || !dl->peer->tracker || !dl->peer_id[0])
        return;
    dl->slow[i].reported_ms = now;
    DF_LOG_D("task %.16s: %s, abandoned as slow, offered again for piece %u: reporting it again",
             dl->res.task_id, a->src_id, a->piece);
    dl->peer->tracker->ops->report_error(dl->peer->tracker, dl->res.task_id, dl->peer_id, a->src_id, a->piece,
                                         DF_REPORT_SLOW, NULL, NULL);
}

static void add_bad_source(df_download_t *dl, const char *id)
{
    char **n;
    if (is_bad_source(dl, id) || dl->nbad >= 256)
        return;
    n = realloc(dl->bad_sources, (dl->nbad + 1) * sizeof(*n));
    if (!n)
        return;
    dl->bad_sources = n;
    dl->bad_sources[dl->nbad] = strdup(id);
    if (dl->bad_sources[dl->nbad])
        dl->nbad++;
}

static void push_result(df_download_t *dl, uint32_t piece, const char *src, bool ok)
{
    df_piece_result_t *r;
    if (!dl->results) {
        dl->results = calloc(RESULTS_CAP, sizeof(*dl->results));
        if (!dl->results)
            return;
    }
    if (dl->nresults >= RESULTS_CAP)
        return; /* dropped results only delay scheduling; the next pull resyncs */
    r = &dl->results[dl->nresults++];
    r->piece = piece;
    r->ok = ok;
    df_strlcpy(r->src, src, sizeof(r->src));
}

/* How many of the oldest pending results fit in one tracker call. */
static size_t results_batch(const df_download_t *dl)
{
    size_t n = 0, bytes = 0;

    while (n < dl->nresults && n < RESULTS_PER_CALL) {
        /* {"piece":4294967295,"src":"...","ok":false}, plus a comma */
        bytes += 45 + strlen(dl->results[n].src);
        if (bytes > RESULTS_BYTES_PER_CALL)
            break;
        n++;
    }
    return n;
}

/* Forgets the n oldest results (they were sent). */
static void results_sent(df_download_t *dl, size_t n)
{
    if (n == 0)
        return;
    memmove(dl->results, dl->results + n, (dl->nresults - n) * sizeof(*dl->results));
    dl->nresults -= n;
}

/* Progress for the caller: at most every 100 ms, or whenever the verified
 * prefix grew when the caller streams (req->stream). */
static void note_progress(df_download_t *dl)
{
    uint64_t now = df_now_ms();
    uint64_t contiguous = dl->task ? dl->hashed_upto : dl->origin_pos;
    bool grew = contiguous > dl->last_contiguous;

    dl->last_progress_ms = now;
    if (!dl->progress_cb)
        return;
    if (!(dl->stream && grew) && now - dl->last_progress_cb_ms < 100)
        return;
    {
        df_progress_t p = {.length = dl->length, .contiguous = contiguous, .task_id = dl->res.task_id};
        if (dl->task) {
            const uint8_t *bm = df_stored_task_bitmap(dl->task);
            uint32_t have = df_bitmap_count(bm, dl->piece_count);
            p.done = DF_MIN((uint64_t)have * dl->piece_size, dl->length);
            p.fd = df_stored_task_fd(dl->task);
        } else {
            p.done = dl->origin_pos;
            p.fd = dl->src_fd;
        }
        dl->last_progress_cb_ms = now;
        dl->last_contiguous = contiguous;
        dl->progress_cb(&p, dl->arg);
    }
}

/* Rate limiting with debt: a chunk is always taken whole (curl cannot
 * consume part of one), the buckets may go negative, and the next chunk
 * waits until they are positive again.  Exact over time. */
static uint64_t rate_wait_ms(df_download_t *dl)
{
    df_rate_limit_t *rls[2] = {&dl->rl, &dl->peer->host_rl};
    return df_rate_limit_debt_wait(rls, 2, df_now_ms());
}

static void rate_consume(df_download_t *dl, size_t len)
{
    df_rate_limit_t *rls[2] = {&dl->rl, &dl->peer->host_rl};
    df_rate_limit_debt_take(rls, 2, len, df_now_ms());
}

/* Advances the verified prefix (hashed_upto) over newly contiguous verified
 * pieces, feeding the whole-file hashers when the download hashes the whole
 * file locally (see hash_whole). */
static int advance_whole_hash(df_download_t *dl)
{
    static uint8_t *buf;
    const uint8_t *bm = df_stored_task_bitmap(dl->task);

    if (!dl->hash_whole) {
        while (dl->hashed_upto < dl->length && df_bitmap_test(bm, (uint32_t)(dl->hashed_upto / dl->piece_size))) {
            uint64_t off, len;
            df_piece_span(dl->length, dl->piece_size, (uint32_t)(dl->hashed_upto / dl->piece_size), &off, &len);
            dl->hashed_upto = off + len;
        }
        return 0;
    }
    if (!buf) {
        buf = malloc(HASH_CHUNK);
        if (!buf)
            return -ENOMEM;
    }
    while (dl->hashed_upto < dl->length) {
        uint32_t idx = (uint32_t)(dl->hashed_upto / dl->piece_size);
        uint64_t off, len;
        if (!df_bitmap_test(bm, idx))
            break;
        df_piece_span(dl->length, dl->piece_size, idx, &off, &len);
        len -= dl->hashed_upto - off;
        while (len > 0) {
            size_t n = (size_t)DF_MIN(len, (uint64_t)HASH_CHUNK);
            int rc = df_stored_task_read(dl->task, dl->hashed_upto, buf, n);
            if (rc < 0)
                return rc;
            df_hasher_update(dl->whole_sha256, buf, n);
            if (dl->whole_user)
                df_hasher_update(dl->whole_user, buf, n);
            dl->hashed_upto += n;
            len -= n;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ finish */

/* Takes f out of dl->fetches (a no-op when it is not in it). */
static void fetch_unlink(fetch_t *f)
{
    df_download_t *dl = f->dl;
    if (f->prev)
        f->prev->next = f->next;
    else if (dl->fetches == f)
        dl->fetches = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

static void fetch_free(fetch_t *f)
{
    fetch_unlink(f);
    if (f->resume)
        event_free(f->resume);
    df_hasher_free(f->hasher);
    free(f);
}

static void download_free(df_download_t *dl)
{
    df_peer_t *peer = dl->peer;

    if (dl->prev)
        dl->prev->next = dl->next;
    else if (peer->downloads == dl)
        peer->downloads = dl->next;
    if (dl->next)
        dl->next->prev = dl->prev;
    free(dl->url);
    free(dl->output);
    free(dl->identifier);
    free(dl->call_system);
    free(dl->digest_text);
    free_strv(dl->filter);
    free_strv(dl->headers);
    free(dl->ca_file);
    free(dl->ca_pem);
    free(dl->inflight);
    free(dl->results);
    for (size_t i = 0; i < dl->nbad; i++)
        free(dl->bad_sources[i]);
    free(dl->bad_sources);
    free(dl->src_tmp);
    df_outfile_close(&dl->src_out); /* closed by stop_all already: frees nothing left */
    if (dl->reap)
        event_free(dl->reap);
    free(dl);
}

/* Stops every transfer and timer; keeps the struct. */
static void stop_all(df_download_t *dl)
{
    while (dl->fetches) {
        fetch_t *f = dl->fetches;
        df_http_cancel(f->req);
        fetch_free(f);
    }
    df_http_cancel(dl->origin_req);
    dl->origin_req = NULL;
    if (dl->timer) {
        event_free(dl->timer);
        dl->timer = NULL;
    }
    if (dl->tick) {
        event_free(dl->tick);
        dl->tick = NULL;
    }
    df_hasher_free(dl->whole_sha256);
    df_hasher_free(dl->whole_user);
    df_hasher_free(dl->origin_piece_hasher);
    dl->whole_sha256 = dl->whole_user = dl->origin_piece_hasher = NULL;
    if (dl->src_out.fd >= 0) {
        df_outfile_close(&dl->src_out); /* an unpublished one goes */
        dl->src_fd = -1;
    }
    if (dl->src_fd >= 0) {
        close(dl->src_fd);
        dl->src_fd = -1;
    }
    if (dl->src_tmp)
        unlink(dl->src_tmp);
    if (dl->task) {
        /* meta.json follows lazily (df_store_flush, at close): an fdatasync
         * of the whole file here would hold the loop, and the caller's
         * answer, for the disk's write-back. */
        df_stored_task_unref(dl->task);
        dl->task = NULL;
    }
}

static void finish(df_download_t *dl, int status, const char *fmt, ...)
{
    va_list ap;

    if (dl->state == ST_DONE)
        return;
    dl->state = ST_DONE;
    dl->res.status = status;
    if (fmt) {
        char reason[sizeof(dl->res.reason)];
        /* formatted aside: an argument may be res.reason itself */
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        memcpy(dl->res.reason, reason, sizeof(reason));
    }
    dl->res.seconds = df_now_s() - dl->t0;
    dl->res.length = dl->length;
    /* The peer's statistics (df_peer_stats); bytes were counted as they came. */
    if (status == 0)
        dl->peer->stats.downloads_completed++;
    else
        dl->peer->stats.downloads_failed++;
    if (status == DF_EDIGEST)
        dl->peer->stats.digest_failures++;
    if (dl->res.back_source)
        dl->peer->stats.back_source++;
    /* Hand the tracker what we learnt before going: results not yet sent. */
    while (dl->peer->tracker && dl->peer_id[0] && dl->nresults && dl->task) {
        df_pull_req_t pr = {.task_id = dl->res.task_id, .peer_id = dl->peer_id,
                            .results = dl->results, .nresults = results_batch(dl)};
        if (pr.nresults == 0 || dl->peer->tracker->ops->report_piece(dl->peer->tracker, &pr, NULL, NULL) < 0)
            break;
        results_sent(dl, pr.nresults);
    }
    stop_all(dl);
    /* The task is unreferenced now: it may push the store over its budget
     * (or a full disk may have ended it), so GC at the next tick. */
    dl->peer->gc_soon = true;
    if (status == 0)
        DF_LOG_I("task %.16s: done, %llu bytes in %.2fs (peers %llu, supernode %llu, origin %llu)",
                 dl->res.task_id, (unsigned long long)dl->res.length, dl->res.seconds,
                 (unsigned long long)dl->res.bytes_from_peers, (unsigned long long)dl->res.bytes_from_supernode,
                 (unsigned long long)dl->res.bytes_from_origin);
    else
        DF_LOG_W("download of %s failed: %s", dl->url, dl->res.reason[0] ? dl->res.reason : df_strerror(status));
    dl->zombie = true;
    if (dl->starting) {
        /* Failed inside df_peer_download: its caller learns it from the
         * loop, never from inside the call (the start contract). */
        dl->done_deferred = true;
        event_active(dl->reap, EV_TIMEOUT, 0);
        return;
    }
    if (dl->done_cb)
        dl->done_cb(&dl->res, dl->arg);
    if (dl->tracker_calls == 0)
        event_active(dl->reap, EV_TIMEOUT, 0);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    df_download_t *dl = arg;
    if (dl->done_deferred) {
        dl->done_deferred = false;
        if (dl->done_cb)
            dl->done_cb(&dl->res, dl->arg);
    }
    if (dl->zombie && dl->tracker_calls == 0 && dl->hash_jobs == 0)
        download_free(dl);
}

/* Returns true when the download was a zombie and has been freed. */
static bool tracker_call_returned(df_download_t *dl)
{
    dl->tracker_calls--;
    if (dl->zombie && dl->tracker_calls == 0 && dl->hash_jobs == 0) {
        download_free(dl);
        return true;
    }
    return dl->zombie;
}

/* ------------------------------------------------------------ completion */

static void verify_and_export(df_download_t *dl)
{
    df_digest_t got, want;
    char text[DF_DIGEST_STR_MAX];
    int rc;

    rc = advance_whole_hash(dl);
    if (rc < 0) {
        finish(dl, rc, "reading the downloaded data: %s", df_strerror(rc));
        return;
    }
    if (dl->hashed_upto != dl->length) {
        finish(dl, -EIO, "internal error: verified %llu of %llu bytes", (unsigned long long)dl->hashed_upto,
               (unsigned long long)dl->length);
        return;
    }
    if (!dl->hash_whole) {
        /* Every piece matched the digest the seed computed over the same
         * bytes it hashed into the file's digest: the file is the seed's.
         * A local pass would only check the supernode against itself. */
        df_strlcpy(dl->res.digest, dl->tracker_digest, sizeof(dl->res.digest));
        if (df_digest_parse(dl->tracker_digest, &want) == 0)
            df_stored_task_set_digest(dl->task, &want);
        goto export;
    }
    df_hasher_final(dl->whole_sha256, &got);
    df_digest_format(&got, text, sizeof(text));
    df_strlcpy(dl->res.digest, text, sizeof(dl->res.digest));
    if (dl->tracker_digest[0]) {
        if (df_digest_parse(dl->tracker_digest, &want) == 0 && want.alg == DF_DIGEST_SHA256 &&
            !df_digest_equal(&want, &got)) {
            finish(dl, DF_EDIGEST, "the supernode's seed has %s, the pieces give %s",
                   dl->tracker_digest, text);
            return;
        }
    }
    if (dl->has_user_digest) {
        df_digest_t user_got;
        if (dl->user_digest.alg == DF_DIGEST_SHA256) {
            user_got = got;
        } else {
            df_hasher_final(dl->whole_user, &user_got);
        }
        if (!df_digest_equal(&user_got, &dl->user_digest)) {
            char have[DF_DIGEST_STR_MAX];
            df_digest_format(&user_got, have, sizeof(have));
            finish(dl, DF_EDIGEST, "expected %s, got %s", dl->digest_text, have);
            return;
        }
        df_strlcpy(dl->res.digest, dl->digest_text, sizeof(dl->res.digest));
    }
    df_stored_task_set_digest(dl->task, &got);
export:
    if (dl->peer->gossip) {
        /* Gossip mode: the pieces this download neither held at the start
         * nor fetched itself were written by another download of the task
         * on this host -- on the owner, by its seed reading the origin
         * (the owner's own dfget waits for it).  They are the seed's bytes:
         * bytes_from_supernode ("from the owner") for this result.  Not
         * added to the peer's counters: the seed counted them already, as
         * origin bytes. */
        uint64_t own = dl->held_bytes + dl->res.bytes_from_peers + dl->res.bytes_from_supernode +
                       dl->res.bytes_from_origin;
        if (own < dl->length)
            dl->res.bytes_from_supernode += dl->length - own;
    }
    if (!dl->output) {
        /* A streaming caller reads the bytes through the progress fd: make
         * sure it got one, also when the whole task was already in the
         * store and no piece arrived to report. */
        note_progress(dl);
        finish(dl, 0, NULL); /* the bytes stay in the store */
        return;
    }
    rc = df_stored_task_export(dl->task, dl->output, dl->durable);
    if (rc < 0) {
        finish(dl, rc, "writing %s: %s", dl->output, df_strerror(rc));
        return;
    }
    finish(dl, 0, NULL);
}

/* Called whenever a piece was marked: finishes when every piece is in and
 * the whole-file digest is known (from the user or the tracker), or the
 * tracker is gone (then the per-piece digests from the seed vouch). */
static void check_complete(df_download_t *dl)
{
    if (dl->state == ST_DONE || !dl->task || !df_stored_task_complete(dl->task))
        return;
    if (dl->state == ST_ORIGIN || dl->tracker_done || dl->has_user_digest || !dl->peer->tracker ||
        !dl->peer_id[0]) {
        verify_and_export(dl);
        return;
    }
    /* Ask the tracker for the whole-file digest (state done). */
    maybe_pull(dl);
}

/* ------------------------------------------------------------ piece fetch */

static int fetch_headers(df_http_req_t *req, long code, void *arg)
{
    fetch_t *f = arg;
    if (code != 206) {
        f->bad_status = true;
        return code == 404 ? -ENOENT : -EIO;
    }
    return 0;
}

static void fetch_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    fetch_t *f = arg;
    df_http_resume(f->req);
}

static int fetch_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    fetch_t *f = arg;
    df_download_t *dl = f->dl;
    uint64_t wait = rate_wait_ms(dl);
    int rc;

    if (wait > 0) {
        struct timeval tv = {.tv_sec = (long)(wait / 1000), .tv_usec = (long)(wait % 1000) * 1000};
        if (!f->resume)
            f->resume = evtimer_new(dl->peer->base, fetch_resume_cb, f);
        if (f->resume) {
            evtimer_add(f->resume, &tv);
            return DF_EAGAIN;
        }
    }
    if (f->got + len > f->a.length)
        return DF_EPROTO;
    rc = df_stored_task_write(dl->task, f->a.offset + f->got, data, len);
    if (rc < 0) {
        f->err = rc;
        return rc;
    }
    if (f->hasher)
        df_hasher_update(f->hasher, data, len);
    f->got += len;
    rate_consume(dl, len);
    return 0;
}

/* What a finished fetch leads to: the tracker hears of it (a failure also
 * excludes the source), the verified prefix advances, and the download
 * pulls more work.  Frees f. */
static void fetch_outcome(fetch_t *f, bool ok, df_report_kind_t kind)
{
    df_download_t *dl = f->dl;
    df_peer_t *peer = dl->peer;
    uint32_t piece = f->a.piece;

    if (!ok) {
        add_bad_source(dl, f->a.src_id);
        if (peer->tracker && dl->peer_id[0])
            peer->tracker->ops->report_error(peer->tracker, dl->res.task_id, dl->peer_id, f->a.src_id, piece,
                                             kind, NULL, NULL);
    }
    push_result(dl, piece, f->a.src_id, ok);
    fetch_free(f);
    if (ok) {
        if (advance_whole_hash(dl) < 0) {
            finish(dl, -EIO, "reading back piece %u failed", piece);
            return;
        }
        note_progress(dl);
    }
    if (dl->state != ST_P2P)
        return;
    check_complete(dl);
    if (dl->state == ST_P2P)
        maybe_pull(dl);
}

/* A piece fully received hashes to sha256: verified if that is the digest
 * the seed computed, else reported as bad.  Frees f. */
static void fetch_check(fetch_t *f, const uint8_t sha256[32])
{
    df_download_t *dl = f->dl;
    df_peer_t *peer = dl->peer;
    uint32_t piece = f->a.piece;

    df_bitmap_clear(dl->inflight, piece);
    if (df_stored_task_mark_piece(dl->task, piece, sha256) == 0) {
        peer->stats.pieces_verified++;
        if (f->a.src_is_seed) {
            dl->res.bytes_from_supernode += f->got;
            peer->stats.bytes_from_supernode += f->got;
        } else {
            dl->res.bytes_from_peers += f->got;
            peer->stats.bytes_from_peers += f->got;
        }
        fetch_outcome(f, true, DF_REPORT_IO);
        return;
    }
    peer->stats.digest_failures++;
    DF_LOG_W("task %.16s: piece %u from %s failed verification; fetching it elsewhere", dl->res.task_id, piece,
             f->a.src_id);
    fetch_outcome(f, false, DF_REPORT_DIGEST);
}

/* SHA-256 of [off, off+len) of fd by pread (the fallback of map_hash).
 * 0 or -errno (-EIO: the file is shorter than it must be). */
static int pread_hash(int fd, uint64_t off, uint64_t len, df_hasher_t *h)
{
    size_t cap = (size_t)DF_MIN(len, (uint64_t)HASH_CHUNK);
    uint8_t *buf = malloc(cap ? cap : 1);
    uint64_t done = 0;
    int rc = 0;

    if (!buf)
        return -ENOMEM;
    while (done < len) {
        size_t n = (size_t)DF_MIN(len - done, (uint64_t)cap);
        ssize_t r = pread(fd, buf, n, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? -errno : -EIO;
            break;
        }
        df_hasher_update(h, buf, (size_t)r);
        done += (uint64_t)r;
    }
    free(buf);
    return rc;
}

/* Hash thread: SHA-256 of the piece read back from the store file (the
 * page cache; it was written moments ago).  The piece is mapped rather than
 * copied out: the file has its full length from its creation (ftruncate),
 * so every page of the range exists; a failed map falls back to pread.
 * Touches only f's own fields and a descriptor of its own, so nothing the
 * loop may free under it. */
static void hash_work(void *arg)
{
    fetch_t *f = arg;
    df_hasher_t *h = df_hasher_new(DF_DIGEST_SHA256);
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t start = f->a.offset & ~(pg - 1), delta = f->a.offset - start;
    size_t maplen = (size_t)(f->a.length + delta);
    df_digest_t d;
    void *m;

    f->hash_err = 0;
    if (!h) {
        f->hash_err = -ENOMEM;
        return;
    }
    m = f->a.length ? mmap(NULL, maplen, PROT_READ, MAP_SHARED | MAP_POPULATE, f->hash_fd, (off_t)start)
                    : MAP_FAILED;
    if (m != MAP_FAILED) {
        df_hasher_update(h, (const uint8_t *)m + delta, (size_t)f->a.length);
        munmap(m, maplen);
    } else {
        f->hash_err = pread_hash(f->hash_fd, f->a.offset, f->a.length, h);
    }
    if (f->hash_err == 0) {
        df_hasher_final(h, &d);
        memcpy(f->hash_out, d.value, sizeof(f->hash_out));
    }
    df_hasher_free(h);
}

/* hash_work ran (on a hash thread or here): check its result.  Frees f.
 * Reading back our own file failed: the download's fault, not the source's. */
static void hash_checked(fetch_t *f)
{
    df_download_t *dl = f->dl;
    uint32_t piece = f->a.piece;
    int err = f->hash_err;

    if (err < 0) {
        df_bitmap_clear(dl->inflight, piece);
        fetch_free(f);
        finish(dl, err, "reading back piece %u: %s", piece, df_strerror(err));
        return;
    }
    fetch_check(f, f->hash_out);
}

/* Loop thread: the hash of a piece came back (status 0), or the queue was
 * freed before it ran (-ECANCELED, peer teardown).  A download that ended
 * meanwhile drops the piece: nothing is marked, served or reported. */
static void hash_done(void *arg, int status)
{
    fetch_t *f = arg;
    df_download_t *dl = f->dl;

    close(f->hash_fd);
    f->hash_fd = -1;
    dl->hash_jobs--;
    if (status < 0 || dl->state != ST_P2P) {
        df_bitmap_clear(dl->inflight, f->a.piece);
        fetch_free(f);
        if (dl->zombie && dl->tracker_calls == 0 && dl->hash_jobs == 0)
            event_active(dl->reap, EV_TIMEOUT, 0);
        return;
    }
    hash_checked(f);
}

/* Hands a fully received piece to a hash thread; it stays in the inflight
 * bitmap (nobody fetches it again) but no longer counts as a fetch.  0 when
 * queued (hash_done follows), else the caller hashes on the loop. */
static int hash_async(fetch_t *f)
{
    df_download_t *dl = f->dl;
    int rc;

    f->hash_fd = dup(df_stored_task_fd(dl->task));
    if (f->hash_fd < 0)
        return -errno;
    rc = df_workq_submit(dl->peer->hashq, hash_work, hash_done, f);
    if (rc < 0) {
        close(f->hash_fd);
        f->hash_fd = -1;
        return rc;
    }
    /* out of dl->fetches: stop_all and start_origin leave it to its job */
    fetch_unlink(f);
    dl->hash_jobs++;
    return 0;
}

static void fetch_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    fetch_t *f = arg;
    df_download_t *dl = f->dl;
    uint32_t piece = f->a.piece;
    df_report_kind_t kind;

    f->req = NULL;
    dl->ninflight--;
    /* One line per piece: what the swarm benchmark reads to see where a
     * download waited (bench/swarm/timeline.py). */
    DF_LOG_D("task %.16s: piece %u from %s: %llu B in %llu ms, t=%llu ms, %u in flight, status %d/%ld",
             dl->res.task_id, piece, f->a.src_id, (unsigned long long)f->got,
             (unsigned long long)(df_now_ms() - f->started_ms), (unsigned long long)(df_now_ms() - dl->start_ms),
             dl->ninflight, res->status, res->http_code);
    if (res->status == 0 && !f->bad_status && f->got == f->a.length) {
        df_digest_t d;
        if (!f->hasher) {
            if (hash_async(f) == 0)
                return;
            /* queue full or no descriptor: the same work, here */
            f->hash_fd = df_stored_task_fd(dl->task);
            hash_work(f);
            f->hash_fd = -1;
            hash_checked(f);
            return;
        }
        df_hasher_final(f->hasher, &d);
        fetch_check(f, d.value);
        return;
    }
    df_bitmap_clear(dl->inflight, piece);
    if (f->err < 0) {
        /* our own disk failed: nothing the source did */
        int err = f->err; /* f is gone after fetch_free */
        fetch_free(f);
        if ((err == -ENOSPC || err == -EDQUOT) && df_stored_task_placed(dl->task))
            finish(dl, err, "writing piece %u: the disk of %s is full (%s)", piece, dl->output,
                   df_strerror(err));
        else if (err == -ENOSPC || err == -EDQUOT)
            finish(dl, err, "writing piece %u: the disk of the piece store is full (%s); free space or lower "
                   "--cache-limit", piece, df_strerror(err));
        else
            finish(dl, err, "writing piece %u: %s", piece, df_strerror(err));
        return;
    }
    kind = res->http_code == 404 ? DF_REPORT_MISSING : DF_REPORT_IO;
    DF_LOG_D("task %.16s: piece %u from %s failed: %s (HTTP %ld)", dl->res.task_id, piece, f->a.src_id,
             res->error ? res->error : "short", res->http_code);
    fetch_outcome(f, false, kind);
}

static void start_fetch(df_download_t *dl, const df_assignment_t *a)
{
    fetch_t *f;
    char url[512];
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_headers = fetch_headers, .on_data = fetch_data, .on_done = fetch_done};
    uint64_t off, len, now;
    int rc, slow;

    if (a->piece >= dl->piece_count)
        return;
    df_piece_span(dl->length, dl->piece_size, a->piece, &off, &len);
    if (a->offset != off || a->length != len) {
        push_result(dl, a->piece, a->src_id, false);
        return;
    }
    if (df_stored_task_has_piece(dl->task, a->piece)) {
        push_result(dl, a->piece, a->src_id, true);
        return;
    }
    if (df_bitmap_test(dl->inflight, a->piece) || is_bad_source(dl, a->src_id)) {
        push_result(dl, a->piece, a->src_id, false);
        return;
    }
    now = df_now_ms();
    slow = slow_source_entry(dl, a->src_id, now);
    if (slow >= 0) {
        refuse_slow_source(dl, a, slow, now);
        return;
    }
    if (a->has_sha256) {
        df_stored_task_set_piece_digest(dl->task, a->piece, a->sha256);
    } else {
        uint8_t known[32];
        /* A piece from a peer is only ever taken against the seed's digest. */
        if (!df_stored_task_piece_digest(dl->task, a->piece, known)) {
            push_result(dl, a->piece, a->src_id, false);
            return;
        }
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        return;
    f->dl = dl;
    f->a = *a;
    f->started_ms = df_now_ms();
    f->hash_fd = -1;
    if (!dl->peer->hashq) {
        f->hasher = df_hasher_new(DF_DIGEST_SHA256);
        if (!f->hasher) {
            free(f);
            return;
        }
    }
    if (strchr(a->src_ip, ':'))
        snprintf(url, sizeof(url), "http://[%s]:%u/peer/file/%s", a->src_ip, a->src_port, dl->res.task_id);
    else
        snprintf(url, sizeof(url), "http://%s:%u/peer/file/%s", a->src_ip, a->src_port, dl->res.task_id);
    opts.url = url;
    opts.has_range = true;
    opts.range_off = a->offset;
    opts.range_len = a->length;
    opts.connect_timeout_ms = 2000;
    opts.stall_timeout_ms = 10000;
    f->next = dl->fetches;
    if (dl->fetches)
        dl->fetches->prev = f;
    dl->fetches = f;
    rc = df_http_start(dl->peer->http, &opts, &cbs, f, &f->req);
    if (rc < 0) {
        fetch_free(f);
        push_result(dl, a->piece, a->src_id, false);
        return;
    }
    df_bitmap_set(dl->inflight, a->piece);
    dl->ninflight++;
}

/* ------------------------------------------------------------ pulling */

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    df_download_t *dl = arg;
    dl->wait_pending = false;
    if (dl->state == ST_P2P)
        maybe_pull(dl);
}

static void arm_timer(df_download_t *dl, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (long)(ms / 1000), .tv_usec = (long)(ms % 1000) * 1000};
    dl->wait_pending = true;
    evtimer_add(dl->timer, &tv);
}

static void pull_cb(const df_pull_res_t *res, void *arg);

static void maybe_pull(df_download_t *dl)
{
    df_peer_t *peer = dl->peer;
    uint32_t parallel = peer->cfg.fetch_parallel ? peer->cfg.fetch_parallel : 8;
    df_pull_req_t pr;
    bool complete;
    int rc;

    if (dl->state != ST_P2P)
        return;
    if (dl->pull_pending) {
        /* The supernode may hold a pull for a while (long-poll): report
         * finished pieces at once, so others can fetch them from us now. */
        if (dl->nresults > 0) {
            memset(&pr, 0, sizeof(pr));
            pr.task_id = dl->res.task_id;
            pr.peer_id = dl->peer_id;
            pr.results = dl->results;
            pr.nresults = results_batch(dl);
            if (peer->tracker->ops->report_piece(peer->tracker, &pr, NULL, NULL) == 0)
                results_sent(dl, pr.nresults);
        }
        return;
    }
    complete = df_stored_task_complete(dl->task);
    /* Nothing to ask and nothing to tell: wait for a fetch or the timer. */
    if (!complete && dl->ninflight >= parallel && dl->nresults == 0)
        return;
    if (dl->wait_pending && dl->nresults == 0)
        return;
    if (dl->wait_pending) {
        evtimer_del(dl->timer);
        dl->wait_pending = false;
    }
    memset(&pr, 0, sizeof(pr));
    pr.task_id = dl->res.task_id;
    pr.peer_id = dl->peer_id;
    pr.results = dl->results;
    pr.nresults = results_batch(dl);
    /* Pieces in a hash job are still assigned to us and not yet reported:
     * they count as running, else the supernode would release as many of
     * our oldest assignments (apply_results), freeing upload slots of
     * sources still sending to us. */
    pr.running = dl->ninflight + (uint32_t)dl->hash_jobs;
    pr.want = complete ? 0 : parallel - DF_MIN(parallel, dl->ninflight);
    rc = df_tracker_pull(peer->tracker, &pr, pull_cb, dl);
    if (rc < 0) {
        start_origin(dl, "cannot reach the supernode");
        return;
    }
    results_sent(dl, pr.nresults);
    dl->pull_pending = true;
    dl->pull_sent_ms = df_now_ms();
    dl->tracker_calls++;
}

static void register_cb(const df_register_res_t *res, void *arg);
static void do_register(df_download_t *dl);

static void pull_cb(const df_pull_res_t *res, void *arg)
{
    df_download_t *dl = arg;

    dl->pull_pending = false;
    if (tracker_call_returned(dl))
        return;
    if (dl->state != ST_P2P)
        return;
    if (res->status < 0) {
        dl->tracker_failures++;
        DF_LOG_W("task %.16s: %s (%d/%d)", dl->res.task_id, res->message[0] ? res->message : "pull failed",
                 dl->tracker_failures, TRACKER_RETRIES);
        if (dl->tracker_failures >= TRACKER_RETRIES) {
            start_origin(dl, "lost the supernode");
            return;
        }
        arm_timer(dl, 300u * (uint32_t)dl->tracker_failures);
        return;
    }
    dl->tracker_failures = 0;
    if (res->swarm_moving)
        dl->swarm_moving_ms = df_now_ms();
    DF_LOG_D("task %.16s: pull answered in %llu ms: state %d, %zu assigned, t=%llu ms, %u in flight",
             dl->res.task_id, (unsigned long long)(df_now_ms() - dl->pull_sent_ms), (int)res->state,
             res->state == DF_PULL_ASSIGN ? res->nassign : 0, (unsigned long long)(df_now_ms() - dl->start_ms),
             dl->ninflight);
    switch (res->state) {
    case DF_PULL_ASSIGN: {
        uint32_t before = dl->ninflight;
        for (size_t i = 0; i < res->nassign && dl->state == ST_P2P; i++)
            start_fetch(dl, &res->assign[i]);
        if (res->nassign == 0 || dl->ninflight == 0 || dl->ninflight == before) {
            /* Nothing taken (every assignment named a source we refuse, or
             * a piece we hold): release them, but not in a tight loop. */
            arm_timer(dl, 100);
            if (dl->nresults && dl->peer_id[0]) {
                df_pull_req_t pr = {.task_id = dl->res.task_id, .peer_id = dl->peer_id,
                                    .results = dl->results, .nresults = dl->nresults};
                if (dl->peer->tracker->ops->report_piece(dl->peer->tracker, &pr, NULL, NULL) == 0)
                    dl->nresults = 0;
            }
        } else if (dl->nresults) {
            maybe_pull(dl); /* release assignments we could not take */
        }
        break;
    }
    case DF_PULL_WAIT:
        arm_timer(dl, res->wait_ms ? res->wait_ms : 100);
        break;
    case DF_PULL_DONE:
        dl->tracker_done = true;
        df_strlcpy(dl->tracker_digest, res->digest, sizeof(dl->tracker_digest));
        if (df_stored_task_complete(dl->task))
            verify_and_export(dl);
        else
            arm_timer(dl, 100); /* the tracker thinks we are done but we are not: ask again */
        break;
    case DF_PULL_ERROR:
        start_origin(dl, res->message[0] ? res->message : "the supernode reported a task error");
        break;
    case DF_PULL_LOST:
        DF_LOG_I("task %.16s: the supernode forgot this task; registering again", dl->res.task_id);
        dl->state = ST_REGISTER;
        do_register(dl);
        break;
    }
}

/* ------------------------------------------------------------ origin / source */

static void origin_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    df_download_t *dl = arg;
    if (dl->origin_req)
        df_http_resume(dl->origin_req);
}

static int origin_headers(df_http_req_t *req, long code, void *arg)
{
    df_download_t *dl = arg;

    if (code == 200) {
        /* Range ignored: the body is the whole file */
        dl->origin_pos = 0;
        dl->origin_end = dl->length;
    } else if (code == 206 && dl->state == ST_ORIGIN) {
        uint64_t first, last, total;
        const char *cr = df_http_header(req, "Content-Range");
        if (!cr || df_content_range_parse(cr, &first, &last, &total) < 0 || first != dl->origin_pos)
            return DF_EPROTO;
    } else {
        snprintf(dl->res.reason, sizeof(dl->res.reason), "origin returned HTTP %ld", code);
        return DF_EORIGIN;
    }
    if (dl->state == ST_SOURCE) {
        const char *cl = df_http_header(req, "Content-Length");
        uint64_t n;
        if (cl && df_parse_u64(cl, &n) == 0)
            dl->length = n;
    }
    return 0;
}

static int origin_pause(df_download_t *dl)
{
    uint64_t wait = rate_wait_ms(dl);
    struct timeval tv;

    if (wait == 0)
        return 0;
    tv.tv_sec = (long)(wait / 1000);
    tv.tv_usec = (long)(wait % 1000) * 1000;
    evtimer_assign(dl->timer, dl->peer->base, origin_resume_cb, dl);
    evtimer_add(dl->timer, &tv);
    return DF_EAGAIN;
}

/* Origin bytes into the store (ST_ORIGIN): written at origin_pos, hashed per
 * piece; a piece is marked when its last byte arrived and its digest (when
 * known from the seed) matches. */
static int origin_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    df_download_t *dl = arg;
    const uint8_t *p = data;
    int rc = origin_pause(dl);

    if (rc)
        return rc;
    if (dl->origin_pos + len > dl->length)
        return DF_EPROTO;
    rate_consume(dl, len);
    while (len > 0) {
        uint32_t idx = (uint32_t)(dl->origin_pos / dl->piece_size);
        uint64_t off, plen, n;
        df_piece_span(dl->length, dl->piece_size, idx, &off, &plen);
        n = DF_MIN((uint64_t)len, off + plen - dl->origin_pos);
        if (dl->origin_pos == off)
            df_hasher_final(dl->origin_piece_hasher, &(df_digest_t){0}); /* reset at a piece start */
        if (!df_stored_task_has_piece(dl->task, idx)) {
            rc = df_stored_task_write(dl->task, dl->origin_pos, p, (size_t)n);
            if (rc < 0)
                return rc;
            dl->res.bytes_from_origin += n;
            dl->peer->stats.bytes_from_origin += n;
        }
        df_hasher_update(dl->origin_piece_hasher, p, (size_t)n);
        dl->origin_pos += n;
        p += n;
        len -= (size_t)n;
        if (dl->origin_pos == off + plen && !df_stored_task_has_piece(dl->task, idx)) {
            df_digest_t d;
            df_hasher_final(dl->origin_piece_hasher, &d);
            if (df_stored_task_mark_piece(dl->task, idx, d.value) < 0) {
                snprintf(dl->res.reason, sizeof(dl->res.reason),
                         "piece %u from the origin does not match the seed's digest (origin changed?)", idx);
                return DF_EDIGEST;
            }
            dl->peer->stats.pieces_verified++;
            if (advance_whole_hash(dl) < 0)
                return -EIO;
            note_progress(dl);
        }
    }
    return 0;
}

static void origin_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    df_download_t *dl = arg;

    dl->origin_req = NULL;
    if (res->status < 0) {
        if (res->status == DF_EORIGIN || res->status == DF_EDIGEST)
            finish(dl, res->status, "%s", dl->res.reason);
        else
            finish(dl, res->status, "fetching from the origin: %s", res->error ? res->error : df_strerror(res->status));
        return;
    }
    if (advance_whole_hash(dl) < 0) {
        finish(dl, -EIO, "reading back the downloaded data failed");
        return;
    }
    if (!df_stored_task_complete(dl->task)) {
        if (dl->origin_pos != dl->origin_end) {
            finish(dl, DF_EORIGIN, "the origin sent %llu of %llu bytes", (unsigned long long)dl->origin_pos,
                   (unsigned long long)dl->origin_end);
            return;
        }
        origin_next_run(dl);
        return;
    }
    check_complete(dl);
}

static void start_origin(df_download_t *dl, const char *why)
{
    if (dl->notbs) {
        finish(dl, DF_ETRACKER, "P2P failed (%s) and --notbs forbids the origin", why);
        return;
    }
    DF_LOG_W("task %.16s: falling back to the origin: %s", dl->res.task_id, why);
    dl->res.back_source = true;
    df_strlcpy(dl->res.reason, why, sizeof(dl->res.reason));
    /* In-flight P2P fetches end now; what they verified stays. */
    while (dl->fetches) {
        fetch_t *f = dl->fetches;
        df_http_cancel(f->req);
        df_bitmap_clear(dl->inflight, f->a.piece);
        fetch_free(f);
    }
    dl->ninflight = 0;
    dl->state = ST_ORIGIN;
    if (dl->wait_pending) {
        evtimer_del(dl->timer);
        dl->wait_pending = false;
    }
    dl->origin_piece_hasher = df_hasher_new(DF_DIGEST_SHA256);
    if (!dl->origin_piece_hasher) {
        finish(dl, -ENOMEM, "out of memory");
        return;
    }
    origin_next_run(dl);
}

/* Fetches the next run of missing pieces with one Range request, so the
 * origin sends only what this host lacks. */
static void origin_next_run(df_download_t *dl)
{
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_headers = origin_headers, .on_data = origin_data, .on_done = origin_done};
    const uint8_t *bm = df_stored_task_bitmap(dl->task);
    uint32_t first = 0, end;
    uint64_t off, len;
    int rc;

    while (first < dl->piece_count && df_bitmap_test(bm, first))
        first++;
    if (first >= dl->piece_count) {
        check_complete(dl);
        return;
    }
    for (end = first; end < dl->piece_count && !df_bitmap_test(bm, end); end++)
        ;
    df_piece_span(dl->length, dl->piece_size, end - 1, &off, &len);
    dl->origin_end = off + len;
    dl->origin_pos = (uint64_t)first * dl->piece_size;
    opts.url = dl->url;
    opts.headers = (const char *const *)dl->headers;
    opts.insecure = dl->insecure;
    opts.ca_file = dl->ca_file;
    opts.follow_redirects = true;
    opts.stall_timeout_ms = 30000;
    if (dl->origin_pos > 0 || dl->origin_end < dl->length) {
        opts.has_range = true;
        opts.range_off = dl->origin_pos;
        opts.range_len = dl->origin_end - dl->origin_pos;
    }
    rc = df_http_start(dl->peer->http, &opts, &cbs, dl, &dl->origin_req);
    if (rc < 0)
        finish(dl, rc, "cannot start the origin download: %s", df_strerror(rc));
}

/* SOURCE: a plain streaming GET into a temporary file next to the output. */
static int source_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    df_download_t *dl = arg;
    const char *p = data;
    int rc = origin_pause(dl);

    if (rc)
        return rc;
    rate_consume(dl, len);
    df_hasher_update(dl->whole_sha256, data, len);
    if (dl->whole_user)
        df_hasher_update(dl->whole_user, data, len);
    dl->origin_pos += len;
    dl->res.bytes_from_origin += len;
    dl->peer->stats.bytes_from_origin += len;
    while (len > 0) {
        ssize_t n = write(dl->src_fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    note_progress(dl);
    return 0;
}

static void source_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    df_download_t *dl = arg;
    df_digest_t got, ugot;
    char text[DF_DIGEST_STR_MAX];

    dl->origin_req = NULL;
    if (res->status < 0) {
        if (res->status == DF_EORIGIN)
            finish(dl, res->status, "%s", dl->res.reason);
        else
            finish(dl, res->status, "fetching from the origin: %s", res->error ? res->error : df_strerror(res->status));
        return;
    }
    if (dl->length && dl->origin_pos != dl->length) {
        finish(dl, DF_EORIGIN, "the origin sent %llu of %llu bytes", (unsigned long long)dl->origin_pos,
               (unsigned long long)dl->length);
        return;
    }
    dl->length = dl->origin_pos;
    df_hasher_final(dl->whole_sha256, &got);
    df_digest_format(&got, text, sizeof(text));
    df_strlcpy(dl->res.digest, text, sizeof(dl->res.digest));
    if (dl->has_user_digest) {
        if (dl->user_digest.alg == DF_DIGEST_SHA256)
            ugot = got;
        else
            df_hasher_final(dl->whole_user, &ugot);
        if (!df_digest_equal(&ugot, &dl->user_digest)) {
            df_digest_format(&ugot, text, sizeof(text));
            finish(dl, DF_EDIGEST, "expected %s, got %s", dl->digest_text, text);
            return;
        }
        df_strlcpy(dl->res.digest, dl->digest_text, sizeof(dl->res.digest));
    }
    if (!dl->output) {
        finish(dl, 0, NULL); /* streamed; stop_all removes the spool file */
        return;
    }
    {
        int err = df_outfile_publish(&dl->src_out, dl->output, dl->durable);
        if (err < 0) {
            finish(dl, err, "writing %s: %s", dl->output, df_strerror(err));
            return;
        }
    }
    finish(dl, 0, NULL);
}

static void start_source(df_download_t *dl, const char *why)
{
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_headers = origin_headers, .on_data = source_data, .on_done = source_done};
    char tmp[PATH_MAX];
    int rc;

    if (dl->notbs && dl->pattern != DF_PATTERN_SOURCE) {
        finish(dl, DF_ETRACKER, "P2P failed (%s) and --notbs forbids the origin", why);
        return;
    }
    if (dl->pattern != DF_PATTERN_SOURCE) {
        DF_LOG_W("falling back to the origin: %s", why);
        dl->res.back_source = true;
    }
    df_strlcpy(dl->res.reason, why, sizeof(dl->res.reason));
    dl->state = ST_SOURCE;
    if (dl->output) {
        /* Unnamed in the output's directory where possible: a kill leaves
         * nothing there (lib/core/outfile.h). */
        rc = df_outfile_open(&dl->src_out, dl->output);
        if (rc < 0) {
            finish(dl, rc, "creating a file next to %s: %s", dl->output, df_strerror(rc));
            return;
        }
        dl->src_fd = dl->src_out.fd;
        goto opened;
    }
    /* A streaming caller without an output: spool in the peer's home;
     * the caller reads it through the progress fd. */
    rc = snprintf(tmp, sizeof(tmp), "%s/stream-%d-%p.tmp", dl->peer->home_dir, (int)getpid(), (void *)dl);
    if (rc >= (int)sizeof(tmp)) {
        finish(dl, -ENAMETOOLONG, "output path too long");
        return;
    }
    dl->src_tmp = strdup(tmp);
    if (!dl->src_tmp) {
        finish(dl, -ENOMEM, "out of memory");
        return;
    }
    dl->src_fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (dl->src_fd < 0) {
        rc = -errno;
        free(dl->src_tmp);
        dl->src_tmp = NULL;
        finish(dl, rc, "creating %s: %s", tmp, df_strerror(rc));
        return;
    }
opened:
    dl->origin_pos = 0;
    opts.url = dl->url;
    opts.headers = (const char *const *)dl->headers;
    opts.insecure = dl->insecure;
    opts.ca_file = dl->ca_file;
    opts.follow_redirects = true;
    opts.stall_timeout_ms = 30000;
    rc = df_http_start(dl->peer->http, &opts, &cbs, dl, &dl->origin_req);
    if (rc < 0)
        finish(dl, rc, "cannot start the origin download: %s", df_strerror(rc));
}

/* ------------------------------------------------------------ register */

static void register_cb(const df_register_res_t *res, void *arg)
{
    df_download_t *dl = arg;
    df_peer_t *peer = dl->peer;
    df_task_shape_t shape;
    const uint8_t *bm;
    int rc;

    if (tracker_call_returned(dl))
        return;
    if (dl->state != ST_REGISTER)
        return;
    if (res->status == DF_EORIGIN) {
        /* The origin itself refused: going there ourselves would fail too,
         * and hammering it from every peer is what we exist to avoid. */
        finish(dl, DF_EORIGIN, "%s", res->message);
        return;
    }
    if (res->status < 0) {
        if (dl->task) {
            start_origin(dl, res->message[0] ? res->message : "register failed");
            return;
        }
        start_source(dl, res->message[0] ? res->message : "register failed");
        return;
    }
    if (dl->task && strcmp(dl->res.task_id, res->task_id) != 0) {
        finish(dl, DF_ETASK, "the supernode changed the task id");
        return;
    }
    df_strlcpy(dl->res.task_id, res->task_id, sizeof(dl->res.task_id));
    df_strlcpy(dl->peer_id, res->peer_id, sizeof(dl->peer_id));
    df_strlcpy(peer->peer_id, res->peer_id, sizeof(peer->peer_id));
    if (res->digest[0])
        df_strlcpy(dl->tracker_digest, res->digest, sizeof(dl->tracker_digest));
    if (res->length == 0) {
        /* An empty file: nothing to fetch. */
        dl->length = 0;
        start_source(dl, "empty file");
        return;
    }
    if (!dl->task) {
        dl->length = res->length;
        dl->piece_size = res->piece_size;
        dl->piece_count = df_piece_count(res->length, res->piece_size);
        if (dl->piece_count == 0 || dl->piece_count > DF_PIECE_COUNT_MAX) {
            finish(dl, DF_EPROTO, "the supernode sent an impossible piece layout");
            return;
        }
        shape.url = dl->url;
        shape.length = dl->length;
        shape.piece_size = dl->piece_size;
        rc = df_store_task_create(peer->store, res->task_id, &shape, &dl->task);
        if (rc < 0) {
            finish(dl, rc, "piece store: %s", df_strerror(rc));
            return;
        }
        dl->inflight = calloc(df_bitmap_bytes(dl->piece_count), 1);
        if (!dl->inflight) {
            finish(dl, -ENOMEM, "out of memory");
            return;
        }
        /* An in-process dfget's store goes when it ends: write the pieces
         * where the output will be, so export is a link, not a copy.
         * Refused for a store that keeps tasks, or a task holding pieces
         * already; a failure leaves the task in the store (export copies). */
        if (peer->cfg.ephemeral && dl->output &&
            df_bitmap_count(df_stored_task_bitmap(dl->task), dl->piece_count) == 0) {
            rc = df_stored_task_place_at(dl->task, dl->output);
            if (rc < 0)
                DF_LOG_D("task %.16s: pieces stay in the store: %s", res->task_id, df_strerror(rc));
        }
        /* Pieces this host already holds (an earlier run) are announced
         * in the first pull, so the tracker can offer them to others. */
        bm = df_stored_task_bitmap(dl->task);
        for (uint32_t i = 0; i < dl->piece_count; i++)
            if (df_bitmap_test(bm, i)) {
                push_result(dl, i, "", true);
                uint64_t off, len;
                df_piece_span(dl->length, dl->piece_size, i, &off, &len);
                dl->held_bytes += len;
            }
        if (advance_whole_hash(dl) < 0) {
            finish(dl, -EIO, "reading the piece store failed");
            return;
        }
    } else if (res->length != dl->length || res->piece_size != dl->piece_size) {
        finish(dl, DF_ETASK, "the file changed at the origin during the download");
        return;
    }
    dl->state = ST_P2P;
    dl->last_progress_ms = df_now_ms();
    maybe_pull(dl);
    if (dl->state == ST_P2P)
        check_complete(dl);
}

static void do_register(df_download_t *dl)
{
    df_peer_t *peer = dl->peer;
    df_register_req_t rr = {0};
    int rc;

    if (!peer->tracker) {
        start_source(dl, "no supernode configured");
        return;
    }
    rr.url = dl->url;
    rr.digest = dl->digest_text;
    rr.identifier = dl->identifier;
    rr.filter = (const char *const *)dl->filter;
    rr.headers = (const char *const *)dl->headers;
    rr.peer_ip = peer->advertise_ip;
    rr.peer_port = dl->pattern == DF_PATTERN_CDN ? 0 : peer->upload_port;
    rr.hostname = peer->hostname;
    rr.insecure = dl->insecure;
    rr.root_ca = dl->ca_pem;
    rr.root_ca_len = dl->ca_pem_len;
    rc = df_tracker_register(peer->tracker, &rr, register_cb, dl);
    if (rc < 0) {
        /* Keep what is verified when there is a task already (re-register). */
        if (dl->task)
            start_origin(dl, "cannot reach the supernode");
        else
            start_source(dl, "cannot reach the supernode");
        return;
    }
    dl->tracker_calls++;
}

/* ------------------------------------------------------------ watchdog */

/* Endgame: once every missing piece is in flight, a fetch running far slower
 * than its share of the download's rate is abandoned and the piece asked for
 * again, so the last piece of a download does not wait on one slow source
 * (measured in the netns swarm at N = 40: the last client's last piece took
 * 12.7 s from a peer whose upload had stalled, the rest of its download
 * 4.7 Mbit/s).  Abandoned, not raced: two fetches of one piece would write
 * the same range of the store at once, and a piece is hashed from what its
 * fetch wrote (its stream, or the store read back by a hash job), so the
 * one fetch that remains owns the range.  The bytes already received are
 * lost; that costs at most one piece per abandoned fetch.  The decision is
 * df_endgame_should_abandon (lib/sched/endgame.h).
 * Slowness seen by one requester is no fault of the source, which may be
 * busy serving others: a peer abandoned is avoided by this download for
 * DF_ENDGAME_AVOID_MS and reported as "slow", which makes the tracker skip
 * it for this requester as long, and for nobody else; it is not reported
 * as an error (an "io" report would exclude it from this requester for good
 * and count it against the peer).  The seed is only released. */
static void endgame_check(df_download_t *dl)
{
    uint64_t now = df_now_ms();
    uint32_t have;
    df_endgame_fetch_t in;
    fetch_t *f, *next;
    bool dropped = false;

    if (dl->state != ST_P2P || !dl->task || dl->endgame_drops >= DF_ENDGAME_MAX_DROPS)
        return;
    have = df_bitmap_count(df_stored_task_bitmap(dl->task), dl->piece_count);
    /* A piece being hashed is neither had nor fetched: it counts as taken
     * (it is in dl->inflight, so nobody asks for it again). */
    if (!df_endgame_active(dl->piece_count, have, dl->ninflight, (uint32_t)dl->hash_jobs))
        return;
    in.elapsed_ms = now - dl->start_ms;
    in.done = DF_MIN((uint64_t)have * dl->piece_size, dl->length);
    /* dl->fetches holds only transfers in progress: a piece fully received
     * left it for its hash job (hash_async), so a piece being hashed is
     * never abandoned here; its job owns the fetch until hash_done. */
    for (f = dl->fetches; f && dl->endgame_drops < DF_ENDGAME_MAX_DROPS; f = next) {
        uint32_t piece = f->a.piece;
        next = f->next;
        if (!f->req)
            continue;
        in.age_ms = now - f->started_ms;
        in.got = f->got;
        in.length = f->a.length;
        in.inflight = dl->ninflight;
        if (!df_endgame_should_abandon(&in))
            continue;
        DF_LOG_I("task %.16s: endgame: piece %u from %s has %llu of %llu B after %llu ms; asking again",
                 dl->res.task_id, piece, f->a.src_id, (unsigned long long)f->got,
                 (unsigned long long)f->a.length, (unsigned long long)in.age_ms);
        df_http_cancel(f->req);
        f->req = NULL;
        df_bitmap_clear(dl->inflight, piece);
        dl->ninflight--;
        df_strlcpy(dl->slow[dl->endgame_drops].id, f->a.src_id, sizeof(dl->slow[0].id));
        dl->slow[dl->endgame_drops].until_ms = f->a.src_is_seed ? 0 : now + DF_ENDGAME_AVOID_MS;
        dl->slow[dl->endgame_drops].reported_ms = now;
        dl->endgame_drops++;
        if (!f->a.src_is_seed && dl->peer->tracker && dl->peer_id[0])
            dl->peer->tracker->ops->report_error(dl->peer->tracker, dl->res.task_id, dl->peer_id, f->a.src_id,
                                                 piece, DF_REPORT_SLOW, NULL, NULL);
        push_result(dl, piece, f->a.src_id, false);
        fetch_free(f);
        dropped = true;
    }
    if (dropped)
        maybe_pull(dl);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    df_download_t *dl = arg;
    uint64_t now = df_now_ms();
    uint64_t stall = dl->peer->cfg.stall_timeout_ms ? dl->peer->cfg.stall_timeout_ms : 20000;

    if (dl->timeout_ms && now - dl->start_ms > dl->timeout_ms) {
        finish(dl, DF_ETIMEOUT, "timed out after %.1fs", (double)dl->timeout_ms / 1000.0);
        return;
    }
    if (dl->state == ST_P2P && dl->task) {
        /* Pieces another download of the same task wrote into the store
         * (e.g. the gossip owner's seed reading the origin while the
         * owner's own dfget waits for it) are progress for this one too:
         * without this it would read the origin a second time. */
        uint32_t n = df_bitmap_count(df_stored_task_bitmap(dl->task), dl->piece_count);
        if (n > dl->store_pieces)
            dl->last_progress_ms = now;
        dl->store_pieces = n;
    }
    /* A swarm that is moving (the tracker saw others announce new pieces
     * lately: a big gossip swarm spreading from one owner admits members a
     * few at a time) is waited for longer before its origin is read by
     * everybody at once; still bounded, for a host cut off from its peers. */
    if (dl->swarm_moving_ms && now - dl->swarm_moving_ms < stall)
        stall *= SWARM_STALL_FACTOR;
    if (dl->state == ST_P2P && now - dl->last_progress_ms > stall) {
        char why[96];
        snprintf(why, sizeof(why), "P2P made no progress for %llus", (unsigned long long)(stall / 1000));
        start_origin(dl, why);
        return;
    }
    endgame_check(dl);
}

/* ------------------------------------------------------------ public */

int df_peer_download(df_peer_t *peer, const df_download_req_t *req, df_download_progress_cb progress_cb,
                     df_download_done_cb done_cb, void *arg)
{
    df_download_t *dl;
    struct timeval one = {1, 0};
    int rc = -ENOMEM;

    if (!req->url || (!req->output && !req->stream) || !done_cb)
        return -EINVAL;
    if (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0)
        return -EINVAL;
    dl = calloc(1, sizeof(*dl));
    if (!dl)
        return -ENOMEM;
    dl->peer = peer;
    dl->src_fd = -1;
    dl->src_out.fd = -1;
    dl->state = ST_REGISTER;
    dl->url = strdup(req->url);
    dl->output = req->output ? strdup(req->output) : NULL;
    dl->identifier = req->identifier ? strdup(req->identifier) : NULL;
    dl->call_system = req->call_system ? strdup(req->call_system) : NULL;
    dl->filter = dup_strv(req->filter);
    dl->headers = dup_strv(req->headers);
    dl->insecure = req->insecure;
    dl->ca_file = req->ca_file ? strdup(req->ca_file) : NULL;
    if (!dl->url || (req->output && !dl->output) || !dl->filter || !dl->headers ||
        (req->ca_file && !dl->ca_file))
        goto fail;
    if (req->ca_file) {
        rc = df_read_file(req->ca_file, DF_TRACKER_ROOT_CA_MAX, &dl->ca_pem, &dl->ca_pem_len);
        if (rc < 0)
            goto fail;
    }
    if (req->digest) {
        rc = df_digest_parse(req->digest, &dl->user_digest);
        if (rc < 0)
            goto fail;
        dl->has_user_digest = true;
        dl->digest_text = malloc(DF_DIGEST_STR_MAX);
        if (!dl->digest_text) {
            rc = -ENOMEM;
            goto fail;
        }
        df_digest_format(&dl->user_digest, dl->digest_text, DF_DIGEST_STR_MAX);
    }
    dl->local_limit = req->local_limit_bps;
    dl->timeout_ms = req->timeout_ms;
    dl->pattern = req->pattern;
    dl->notbs = req->no_back_source;
    dl->durable = req->durable;
    dl->stream = req->stream;
    dl->hash_whole = dl->has_user_digest;
    dl->progress_cb = progress_cb;
    dl->done_cb = done_cb;
    dl->arg = arg;
    dl->t0 = df_now_s();
    dl->start_ms = dl->last_progress_ms = df_now_ms();
    df_rate_limit_init(&dl->rl, dl->local_limit, dl->start_ms);
    rc = -ENOMEM;
    dl->whole_sha256 = df_hasher_new(DF_DIGEST_SHA256);
    if (!dl->whole_sha256)
        goto fail;
    if (dl->has_user_digest && dl->user_digest.alg != DF_DIGEST_SHA256) {
        dl->whole_user = df_hasher_new(dl->user_digest.alg);
        if (!dl->whole_user)
            goto fail;
    }
    dl->timer = evtimer_new(peer->base, timer_cb, dl);
    dl->tick = event_new(peer->base, -1, EV_PERSIST, tick_cb, dl);
    dl->reap = event_new(peer->base, -1, 0, reap_cb, dl);
    if (!dl->timer || !dl->tick || !dl->reap)
        goto fail;
    evtimer_add(dl->tick, &one);
    dl->next = peer->downloads;
    if (peer->downloads)
        peer->downloads->prev = dl;
    peer->downloads = dl;
    dl->starting = true;
    if (dl->pattern == DF_PATTERN_SOURCE)
        start_source(dl, "--pattern source");
    else
        do_register(dl);
    dl->starting = false;
    return 0;
fail:
    stop_all(dl);
    download_free(dl);
    return rc;
}

void df__download_cancel_all(df_peer_t *peer)
{
    while (peer->downloads) {
        df_download_t *dl = peer->downloads;
        dl->done_cb = NULL;
        dl->state = ST_DONE;
        stop_all(dl);
        /* Pending tracker calls die with the tracker, which the peer frees
         * right after; nothing will call back into dl. */
        download_free(dl);
    }
}

uint32_t df__download_count_active(const df_peer_t *peer)
{
    uint32_t n = 0;
    for (const df_download_t *dl = peer->downloads; dl; dl = dl->next)
        if (dl->state != ST_DONE)
            n++;
    return n;
}
