/*
 * Supernode bookkeeping: tasks, peers, members, in-flight pieces, loads.
 * See swarm.h for the model and its invariants.
 *
 * Data structures: tasks and peers live in fixed-size chained hash tables
 * keyed by their id (FNV-1a) plus one doubly linked list each for ordered
 * iteration (listings, the sweep).  A task's members are an array of
 * pointers; lookups inside a task are linear, which is fine because every
 * pull already costs O(members * pieces) in the scheduler.
 *
 * Loads: each in-flight entry names its source by peer serial.  Releasing
 * an entry (result, loss, removal, expiry) always goes through
 * release_entry(), which decrements that source's load if the source still
 * exists in the task -- the one place that keeps the load invariant.
 */
#include "supernode/swarm.h"

#include "core/core.h"
#include "piece/piece.h"
#include "sched/sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TASK_BUCKETS 1024u
#define PEER_BUCKETS 8192u

struct df_sn_swarm {
    df_sn_swarm_opts_t opts;
    df_sn_task_free_cb free_cb;
    void *free_arg;
    df_sn_task_t *task_buckets[TASK_BUCKETS];
    df_sn_peer_t *peer_buckets[PEER_BUCKETS];
    df_sn_task_t *tasks, *tasks_tail;
    df_sn_peer_t *peers, *peers_tail;
    uint32_t ntasks, npeers;
    uint64_t next_serial;
    uint64_t sched_calls;
    uint64_t from_seed, from_peers;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

int df_sn_swarm_new(const df_sn_swarm_opts_t *opts, df_sn_task_free_cb free_cb, void *arg,
                    df_sn_swarm_t **out)
{
    df_sn_swarm_t *sw = calloc(1, sizeof(*sw));
    if (!sw)
        return -ENOMEM;
    sw->opts = *opts;
    if (sw->opts.batch_pieces == 0)
        sw->opts.batch_pieces = 8;
    if (sw->opts.batch_pieces > DF_SN_INFLIGHT_MAX)
        sw->opts.batch_pieces = DF_SN_INFLIGHT_MAX;
    sw->free_cb = free_cb;
    sw->free_arg = arg;
    sw->next_serial = 1;
    *out = sw;
    return 0;
}

void df_sn_swarm_free(df_sn_swarm_t *sw)
{
    if (!sw)
        return;
    while (sw->tasks)
        df_sn_task_remove(sw, sw->tasks);
    while (sw->peers)
        df_sn_peer_remove(sw, sw->peers);
    free(sw);
}

df_sn_task_t *df_sn_swarm_tasks(df_sn_swarm_t *sw)
{
    return sw->tasks;
}

df_sn_peer_t *df_sn_swarm_peers(df_sn_swarm_t *sw)
{
    return sw->peers;
}

uint32_t df_sn_swarm_ntasks(const df_sn_swarm_t *sw)
{
    return sw->ntasks;
}

uint32_t df_sn_swarm_npeers(const df_sn_swarm_t *sw)
{
    return sw->npeers;
}

void df_sn_swarm_counters(const df_sn_swarm_t *sw, uint64_t *from_seed, uint64_t *from_peers)
{
    *from_seed = sw->from_seed;
    *from_peers = sw->from_peers;
}

/* ------------------------------------------------------------ members */

static void member_free(df_sn_member_t *m)
{
    if (!m)
        return;
    free(m->have);
    free(m->busy);
    free(m);
}

df_sn_member_t *df_sn_task_member(df_sn_task_t *task, const df_sn_peer_t *peer)
{
    for (uint32_t i = 0; i < task->nmembers; i++)
        if (task->members[i]->peer == peer)
            return task->members[i];
    return NULL;
}

df_sn_member_t *df_sn_task_member_by_serial(df_sn_task_t *task, uint64_t serial)
{
    for (uint32_t i = 0; i < task->nmembers; i++)
        if (task->members[i]->peer->serial == serial)
            return task->members[i];
    return NULL;
}

/* Drops in-flight entry i of m and the load it put on its source. */
static void release_entry(df_sn_task_t *task, df_sn_member_t *m, uint32_t i)
{
    df_sn_inflight_t *e = &m->inflight[i];

    if (e->src == 0) {
        if (task->seed_load > 0)
            task->seed_load--;
    } else {
        df_sn_member_t *src = df_sn_task_member_by_serial(task, e->src);
        if (src && src->load > 0)
            src->load--;
    }
    if (m->busy && e->piece < task->piece_count)
        df_bitmap_clear(m->busy, e->piece);
    /* Keep the list in assignment order (oldest first): the `running`
     * reconciliation releases from the front. */
    memmove(&m->inflight[i], &m->inflight[i + 1], (m->ninflight - i - 1) * sizeof(*e));
    m->ninflight--;
}

static int find_entry(const df_sn_member_t *m, uint32_t piece)
{
    for (uint32_t i = 0; i < m->ninflight; i++)
        if (m->inflight[i].piece == piece)
            return (int)i;
    return -1;
}

/* Frees every entry of every member of task whose source is `serial`. */
static void release_from_source(df_sn_task_t *task, uint64_t serial)
{
    for (uint32_t k = 0; k < task->nmembers; k++) {
        df_sn_member_t *m = task->members[k];
        for (uint32_t i = 0; i < m->ninflight;) {
            if (m->inflight[i].src == serial)
                release_entry(task, m, i);
            else
                i++;
        }
    }
}

static void member_detach(df_sn_task_t *task, uint32_t idx)
{
    df_sn_member_t *m = task->members[idx];

    while (m->ninflight > 0)
        release_entry(task, m, m->ninflight - 1);
    task->members[idx] = task->members[--task->nmembers];
    /* Entries naming it as a source lose their load target: free them so
     * those requesters get the pieces elsewhere. */
    release_from_source(task, m->peer->serial);
    if (m->peer->ntasks > 0)
        m->peer->ntasks--;
    member_free(m);
}

static int member_alloc_maps(df_sn_member_t *m, uint32_t piece_count)
{
    size_t nb = df_bitmap_bytes(piece_count);

    free(m->have);
    free(m->busy);
    m->have = calloc(1, nb ? nb : 1);
    m->busy = calloc(1, nb ? nb : 1);
    if (!m->have || !m->busy)
        return -ENOMEM;
    m->ninflight = 0;
    m->load = 0;
    return 0;
}

/* ------------------------------------------------------------- tasks */

df_sn_task_t *df_sn_task_find(df_sn_swarm_t *sw, const char *id)
{
    df_sn_task_t *t = sw->task_buckets[hash_str(id) % TASK_BUCKETS];
    for (; t; t = t->hnext)
        if (strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void headers_free(char **headers, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(headers[i]);
    free(headers);
}

/* A copy of n header lines (NULL when n is 0).  0 or -ENOMEM. */
static int headers_copy(char *const *src, size_t n, char ***out)
{
    char **h = NULL;

    *out = NULL;
    if (n == 0)
        return 0;
    h = calloc(n, sizeof(*h));
    if (!h)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!(h[i] = strdup(src[i]))) {
            headers_free(h, i);
            return -ENOMEM;
        }
    *out = h;
    return 0;
}

static void task_free(df_sn_task_t *t)
{
    free(t->url);
    free(t->task_url);
    free(t->digest);
    free(t->identifier);
    headers_free(t->headers, t->nheaders);
    free(t->root_ca);
    free(t->seed_have);
    free(t->piece_sha);
    for (uint32_t i = 0; i < t->nmembers; i++)
        member_free(t->members[i]);
    free(t->members);
    free(t);
}

int df_sn_task_create(df_sn_swarm_t *sw, const char *id, const char *url, const char *task_url,
                      const char *digest, const char *identifier, char *const *headers,
                      size_t nheaders, df_pattern_t pattern, uint64_t now_ms, df_sn_task_t **out)
{
    df_sn_task_t *t;
    uint32_t b;

    if (df_sn_task_find(sw, id))
        return -EEXIST;
    if (sw->ntasks >= DF_SN_TASKS_MAX)
        return -ENOSPC;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    df_strlcpy(t->id, id, sizeof(t->id));
    t->url = strdup(url);
    t->task_url = strdup(task_url);
    t->digest = dup_or_null(digest);
    t->identifier = dup_or_null(identifier);
    if (!t->url || !t->task_url || (digest && !t->digest) || (identifier && !t->identifier) ||
        headers_copy(headers, nheaders, &t->headers) < 0)
        goto nomem;
    t->nheaders = nheaders;
    t->pattern = pattern;
    t->state = DF_SN_TASK_SEEDING;
    t->created_ms = t->last_access_ms = now_ms;

    b = hash_str(id) % TASK_BUCKETS;
    t->hnext = sw->task_buckets[b];
    sw->task_buckets[b] = t;
    t->prev = sw->tasks_tail;
    if (sw->tasks_tail)
        sw->tasks_tail->next = t;
    else
        sw->tasks = t;
    sw->tasks_tail = t;
    sw->ntasks++;
    *out = t;
    return 0;
nomem:
    task_free(t);
    return -ENOMEM;
}

int df_sn_task_set_headers(df_sn_task_t *task, char *const *headers, size_t nheaders)
{
    char **copy;
    bool same = nheaders == task->nheaders;

    for (size_t i = 0; same && i < nheaders; i++)
        same = strcmp(headers[i], task->headers[i]) == 0;
    if (same)
        return 0;
    if (headers_copy(headers, nheaders, &copy) < 0)
        return -ENOMEM;
    headers_free(task->headers, task->nheaders);
    task->headers = copy;
    task->nheaders = nheaders;
    task->headers_gen++;
    return 0;
}

void df_sn_task_remove(df_sn_swarm_t *sw, df_sn_task_t *task)
{
    df_sn_task_t **pp = &sw->task_buckets[hash_str(task->id) % TASK_BUCKETS];

    if (sw->free_cb)
        sw->free_cb(task, sw->free_arg);
    for (; *pp; pp = &(*pp)->hnext)
        if (*pp == task) {
            *pp = task->hnext;
            break;
        }
    if (task->prev)
        task->prev->next = task->next;
    else
        sw->tasks = task->next;
    if (task->next)
        task->next->prev = task->prev;
    else
        sw->tasks_tail = task->prev;
    sw->ntasks--;
    for (uint32_t i = 0; i < task->nmembers; i++)
        if (task->members[i]->peer->ntasks > 0)
            task->members[i]->peer->ntasks--;
    task_free(task);
}

int df_sn_task_shape(df_sn_task_t *task, uint64_t length, uint64_t piece_size)
{
    uint32_t count;
    size_t nb;
    uint8_t *have, *sha;

    if (piece_size == 0)
        return -EINVAL;
    /* The same bound as choose_piece_size() and the store: a count of
     * exactly DF_PIECE_COUNT_MAX is allowed. */
    if (df_piece_count(length, piece_size) > DF_PIECE_COUNT_MAX)
        return -EFBIG;
    count = df_piece_count(length, piece_size);
    nb = df_bitmap_bytes(count);
    have = calloc(1, nb ? nb : 1);
    sha = calloc(count ? count : 1, 32);
    if (!have || !sha) {
        free(have);
        free(sha);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < task->nmembers; i++) {
        if (member_alloc_maps(task->members[i], count) < 0) {
            free(have);
            free(sha);
            /* Members with failed maps would be inconsistent: drop them. */
            df_sn_task_unshape(task);
            return -ENOMEM;
        }
    }
    free(task->seed_have);
    free(task->piece_sha);
    task->seed_have = have;
    task->piece_sha = sha;
    task->length = length;
    task->piece_size = piece_size;
    task->piece_count = count;
    task->seed_pieces = 0;
    task->seed_load = 0;
    task->shaped = true;
    task->file_digest[0] = '\0';
    return 0;
}

void df_sn_task_unshape(df_sn_task_t *task)
{
    for (uint32_t i = 0; i < task->nmembers; i++) {
        df_sn_member_t *m = task->members[i];
        free(m->have);
        free(m->busy);
        m->have = m->busy = NULL;
        m->ninflight = 0;
        m->load = 0;
    }
    free(task->seed_have);
    free(task->piece_sha);
    task->seed_have = task->piece_sha = NULL;
    task->shaped = false;
    task->length = task->piece_size = 0;
    task->piece_count = task->seed_pieces = task->seed_load = 0;
    task->file_digest[0] = '\0';
}

void df_sn_task_seed_piece(df_sn_task_t *task, uint32_t idx, const uint8_t sha256[32])
{
    if (!task->shaped || idx >= task->piece_count)
        return;
    memcpy(task->piece_sha + (size_t)idx * 32, sha256, 32);
    if (!df_bitmap_test(task->seed_have, idx)) {
        df_bitmap_set(task->seed_have, idx);
        task->seed_pieces++;
    }
}

void df_sn_task_seed_unpiece(df_sn_task_t *task, uint32_t idx)
{
    if (!task->shaped || idx >= task->piece_count || !df_bitmap_test(task->seed_have, idx))
        return;
    df_bitmap_clear(task->seed_have, idx);
    task->seed_pieces--;
}

void df_sn_task_set_seeding(df_sn_task_t *task)
{
    task->state = DF_SN_TASK_SEEDING;
    task->error[0] = '\0';
    task->error_kind = NULL;
    task->origin_status = 0;
}

void df_sn_task_complete(df_sn_task_t *task, const char *file_digest, uint64_t now_ms)
{
    task->state = DF_SN_TASK_COMPLETE;
    task->error[0] = '\0';
    task->error_kind = NULL;
    task->origin_status = 0;
    df_strlcpy(task->file_digest, file_digest, sizeof(task->file_digest));
    task->validated_ms = now_ms;
}

void df_sn_task_fail(df_sn_task_t *task, const char *kind, long origin_status, const char *msg,
                     uint64_t now_ms)
{
    task->state = DF_SN_TASK_FAILED;
    task->error_kind = kind;
    task->origin_status = origin_status;
    df_strlcpy(task->error, msg, sizeof(task->error));
    task->failed_ms = now_ms;
}

const char *df_sn_task_state_name(df_sn_task_state_t s)
{
    switch (s) {
    case DF_SN_TASK_SEEDING: return "seeding";
    case DF_SN_TASK_COMPLETE: return "complete";
    case DF_SN_TASK_FAILED: return "failed";
    }
    return "unknown";
}

/* ------------------------------------------------------------- peers */

df_sn_peer_t *df_sn_peer_find(df_sn_swarm_t *sw, const char *id)
{
    df_sn_peer_t *p = sw->peer_buckets[hash_str(id) % PEER_BUCKETS];
    for (; p; p = p->hnext)
        if (strcmp(p->id, id) == 0)
            return p;
    return NULL;
}

void df_sn_peer_touch(df_sn_peer_t *peer, uint64_t now_ms)
{
    peer->last_seen_ms = now_ms;
}

static int peer_get(df_sn_swarm_t *sw, const char *ip, uint16_t port, const char *hostname,
                    uint64_t now_ms, df_sn_peer_t **out)
{
    char id[DF_SN_PEER_ID_MAX];
    df_sn_peer_t *p;
    uint32_t b;

    if (df_sn_peer_id(hostname, ip, port, id, sizeof(id)) < 0 || strlen(ip) >= sizeof(p->ip) ||
        strlen(hostname) >= sizeof(p->hostname))
        return -EINVAL;
    p = df_sn_peer_find(sw, id);
    if (p) {
        p->last_seen_ms = now_ms;
        *out = p;
        return 0;
    }
    if (sw->npeers >= DF_SN_PEERS_MAX)
        return -ENOSPC;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    df_strlcpy(p->id, id, sizeof(p->id));
    df_strlcpy(p->ip, ip, sizeof(p->ip));
    df_strlcpy(p->hostname, hostname, sizeof(p->hostname));
    p->port = port;
    p->serial = sw->next_serial++;
    p->last_seen_ms = now_ms;
    b = hash_str(id) % PEER_BUCKETS;
    p->hnext = sw->peer_buckets[b];
    sw->peer_buckets[b] = p;
    p->prev = sw->peers_tail;
    if (sw->peers_tail)
        sw->peers_tail->next = p;
    else
        sw->peers = p;
    sw->peers_tail = p;
    sw->npeers++;
    *out = p;
    return 0;
}

int df_sn_join(df_sn_swarm_t *sw, df_sn_task_t *task, const char *ip, uint16_t port,
               const char *hostname, bool uploads, uint64_t now_ms, df_sn_member_t **out)
{
    df_sn_peer_t *p;
    df_sn_member_t *m;
    int rc;

    rc = peer_get(sw, ip, port, hostname, now_ms, &p);
    if (rc < 0)
        return rc;
    m = df_sn_task_member(task, p);
    if (m) {
        m->down = false;
        m->uploads = uploads;
        *out = m;
        return 0;
    }
    if (task->nmembers >= DF_SN_MEMBERS_MAX) {
        rc = -ENOSPC;
        goto fail;
    }
    if (task->nmembers == task->cap_members) {
        uint32_t ncap = task->cap_members ? task->cap_members * 2 : 8;
        df_sn_member_t **nm = realloc(task->members, ncap * sizeof(*nm));
        if (!nm) {
            rc = -ENOMEM;
            goto fail;
        }
        task->members = nm;
        task->cap_members = ncap;
    }
    m = calloc(1, sizeof(*m));
    if (!m) {
        rc = -ENOMEM;
        goto fail;
    }
    m->peer = p;
    m->uploads = uploads;
    m->joined_ms = now_ms;
    if (task->shaped && member_alloc_maps(m, task->piece_count) < 0) {
        member_free(m);
        rc = -ENOMEM;
        goto fail;
    }
    task->members[task->nmembers++] = m;
    p->ntasks++;
    *out = m;
    return 0;
fail:
    /* A peer created just now and in no task would linger until the sweep;
     * drop it at once instead. */
    if (p->ntasks == 0)
        df_sn_peer_remove(sw, p);
    return rc;
}

void df_sn_peer_remove(df_sn_swarm_t *sw, df_sn_peer_t *peer)
{
    df_sn_peer_t **pp = &sw->peer_buckets[hash_str(peer->id) % PEER_BUCKETS];

    for (df_sn_task_t *t = sw->tasks; t && peer->ntasks > 0; t = t->next) {
        for (uint32_t i = 0; i < t->nmembers; i++) {
            if (t->members[i]->peer == peer) {
                member_detach(t, i);
                break;
            }
        }
    }
    for (; *pp; pp = &(*pp)->hnext)
        if (*pp == peer) {
            *pp = peer->hnext;
            break;
        }
    if (peer->prev)
        peer->prev->next = peer->next;
    else
        sw->peers = peer->next;
    if (peer->next)
        peer->next->prev = peer->prev;
    else
        sw->peers_tail = peer->prev;
    sw->npeers--;
    free(peer);
}

static void member_down(df_sn_task_t *task, df_sn_member_t *m, bool dropped)
{
    /* ServiceDown for one task means the peer dropped its copy (its store
     * evicted the task): if it joins again it starts from nothing, so the
     * pieces must be scheduled to it again, not counted as had.  A peer
     * going away altogether (ServiceDown for every task) keeps its store
     * on disk and comes back with it. */
    if (dropped && m->have)
        memset(m->have, 0, df_bitmap_bytes(task->piece_count));
    if (m->down)
        return;
    m->down = true;
    release_from_source(task, m->peer->serial);
}

void df_sn_service_down(df_sn_swarm_t *sw, df_sn_peer_t *peer, df_sn_task_t *task)
{
    if (task) {
        df_sn_member_t *m = df_sn_task_member(task, peer);
        if (m)
            member_down(task, m, true);
        return;
    }
    for (df_sn_task_t *t = sw->tasks; t; t = t->next) {
        df_sn_member_t *m = df_sn_task_member(t, peer);
        if (m)
            member_down(t, m, false);
    }
}

/* ---------------------------------------------------- piece protocol */

void df_sn_apply_results(df_sn_task_t *task, df_sn_member_t *m, const df_sn_result_t *results,
                         size_t n, bool has_running, uint32_t running)
{
    if (!task->shaped || !m->have)
        return;
    for (size_t k = 0; k < n; k++) {
        uint32_t piece = results[k].piece;
        int i;

        if (piece >= task->piece_count)
            continue;
        i = find_entry(m, piece);
        if (i >= 0)
            release_entry(task, m, (uint32_t)i);
        /* Only pieces the seed verified can have been fetched correctly:
         * a claim for anything else is ignored rather than spread. */
        if (results[k].ok && df_bitmap_test(task->seed_have, piece))
            df_bitmap_set(m->have, piece);
    }
    /* The requester knows best what it still fetches: entries it no longer
     * counts were lost (its report raced, or it crashed and came back). */
    while (has_running && m->ninflight > running)
        release_entry(task, m, 0);
}

static bool is_excluded(const df_sn_member_t *m, uint64_t serial)
{
    for (uint32_t i = 0; i < m->nexcluded; i++)
        if (m->excluded[i] == serial)
            return true;
    return false;
}

static void exclude(df_sn_member_t *m, uint64_t serial)
{
    if (is_excluded(m, serial))
        return;
    m->excluded[m->excluded_next] = serial;
    m->excluded_next = (m->excluded_next + 1) % DF_SN_EXCLUDED_MAX;
    if (m->nexcluded < DF_SN_EXCLUDED_MAX)
        m->nexcluded++;
}

static bool is_slow(const df_sn_member_t *m, uint64_t serial, uint64_t now_ms)
{
    for (uint32_t i = 0; i < DF_SN_SLOW_MAX; i++)
        if (m->slow[i].serial == serial && now_ms < m->slow[i].until_ms)
            return true;
    return false;
}

/* m avoids serial until now_ms + DF_SN_SLOW_AVOID_MS (a report for a source
 * already avoided extends its entry). */
static void avoid_slow(df_sn_member_t *m, uint64_t serial, uint64_t now_ms)
{
    uint32_t i;

    for (i = 0; i < DF_SN_SLOW_MAX; i++)
        if (m->slow[i].serial == serial && m->slow[i].until_ms)
            break;
    if (i == DF_SN_SLOW_MAX) {
        i = m->slow_next;
        m->slow_next = (m->slow_next + 1) % DF_SN_SLOW_MAX;
    }
    m->slow[i].serial = serial;
    m->slow[i].until_ms = now_ms + DF_SN_SLOW_AVOID_MS;
}

static bool holds_all(const df_sn_task_t *task, const df_sn_member_t *m)
{
    return df_bitmap_count(m->have, task->piece_count) == task->piece_count;
}

/* true when the seed holds a piece that no uploading peer holds or is
 * fetching (coming: the other members' fetches; m's own are in m->busy), a
 * piece only the seed can put into the swarm.  Rule 6 of df_sched (the seed
 * sends each piece once) is applied only while such a piece exists or the
 * origin still feeds the seed, so the seed's uplink goes to new pieces
 * first and to copies when there is nothing new to send. */
static bool frontier_open(const df_sn_task_t *task, const df_sn_member_t *m, const uint32_t *coming)
{
    for (uint32_t p = 0; p < task->piece_count; p++) {
        bool held = coming[p] > 0 || (m->uploads && df_bitmap_test(m->busy, p));
        if (!df_bitmap_test(task->seed_have, p))
            continue;
        for (uint32_t i = 0; i < task->nmembers && !held; i++) {
            const df_sn_member_t *o = task->members[i];
            held = o->uploads && !o->down && o->have && df_bitmap_test(o->have, p);
        }
        if (!held)
            return true;
    }
    return false;
}

/* The most pieces one requester may have in flight: the task's upload
 * slots (the seed's, and every uploading member's once it holds a piece)
 * divided evenly among the members still downloading, rounded up.  Without
 * it slots stick to whoever holds them: a requester that finishes a piece
 * reports it in its next pull and is scheduled at once, taking the slot it
 * just freed, so measured at N = 40 some requesters kept 7 pieces in flight
 * for the whole download while others ran on one for 30 s.  With it a
 * requester at its share is parked, and the freed slot goes to one below
 * it (server.c re-runs parked pulls furthest behind first). */
static uint32_t fair_share(const df_sn_swarm_t *sw, const df_sn_task_t *task)
{
    uint64_t slots = sw->opts.seed_upload_slots;
    uint32_t downloading = 0;

    for (uint32_t i = 0; i < task->nmembers; i++) {
        const df_sn_member_t *o = task->members[i];
        uint32_t held;
        if (!o->have)
            continue;
        held = df_bitmap_count(o->have, task->piece_count);
        if (held < task->piece_count)
            downloading++;
        if (o->uploads && !o->down && held > 0)
            slots += sw->opts.peer_upload_slots;
    }
    if (downloading == 0)
        return DF_SN_INFLIGHT_MAX;
    slots = (slots + downloading - 1) / downloading;
    return slots < 1 ? 1 : slots > DF_SN_INFLIGHT_MAX ? DF_SN_INFLIGHT_MAX : (uint32_t)slots;
}

bool df_sn_pull_may_assign(const df_sn_swarm_t *sw, const df_sn_task_t *task, const df_sn_member_t *m)
{
    if (task->state == DF_SN_TASK_FAILED || !task->shaped || !m->have)
        return true; /* the answer is not "assign" but must still be given */
    if (holds_all(task, m))
        return true;
    if (m->ninflight >= fair_share(sw, task))
        return false;
    if (task->seed_pieces > 0 && task->seed_load < sw->opts.seed_upload_slots)
        return true;
    for (uint32_t i = 0; i < task->nmembers; i++) {
        const df_sn_member_t *o = task->members[i];
        if (o != m && o->uploads && !o->down && o->have && o->load < sw->opts.peer_upload_slots &&
            o->digest_errors < DF_SN_DIGEST_ERROR_LIMIT && df_bitmap_count(o->have, task->piece_count) > 0)
            return true;
    }
    return false;
}

void df_sn_pull(df_sn_swarm_t *sw, df_sn_task_t *task, df_sn_member_t *m, uint32_t want,
                uint64_t now_ms, df_sn_assign_t *out, size_t *nout, df_sn_pull_state_t *state)
{
    df_sched_source_t *sources = NULL;
    df_sn_member_t **src_member = NULL;
    df_sched_assign_t picks[DF_SN_INFLIGHT_MAX];
    df_sched_input_t in;
    uint32_t *load = NULL, *coming = NULL, max;
    uint8_t *wantmap = NULL;
    size_t ns = 0, npicks, nb;

    *nout = 0;
    *state = DF_SN_PULL_WAIT;
    if (task->state == DF_SN_TASK_FAILED) {
        *state = DF_SN_PULL_ERROR;
        return;
    }
    if (!task->shaped || !m->have)
        return;
    if (task->state == DF_SN_TASK_COMPLETE && holds_all(task, m)) {
        *state = DF_SN_PULL_DONE;
        return;
    }
    max = want && want < sw->opts.batch_pieces ? want : sw->opts.batch_pieces;
    if (max > DF_SN_INFLIGHT_MAX - m->ninflight)
        max = DF_SN_INFLIGHT_MAX - m->ninflight;
    {
        uint32_t share = fair_share(sw, task);
        max = m->ninflight >= share ? 0 : DF_MIN(max, share - m->ninflight);
    }
    if (max == 0)
        return;

    nb = df_bitmap_bytes(task->piece_count);
    wantmap = malloc(nb ? nb : 1);
    sources = calloc(task->nmembers + 1, sizeof(*sources));
    src_member = calloc(task->nmembers + 1, sizeof(*src_member));
    load = calloc(task->nmembers + 1, sizeof(*load));
    if (!wantmap || !sources || !src_member || !load)
        goto out; /* answer "wait": the requester retries */
    for (size_t i = 0; i < nb; i++)
        wantmap[i] = (uint8_t)~(m->have[i] | m->busy[i]);
    if (task->piece_count % 8)
        wantmap[nb - 1] &= (uint8_t)((1u << (task->piece_count % 8)) - 1);

    /* Source 0 is the seed; then every member that may serve. */
    sources[0].have = task->seed_have;
    sources[0].slots = sw->opts.seed_upload_slots;
    sources[0].is_seed = true;
    sources[0].excluded = is_excluded(m, 0) || is_slow(m, 0, now_ms);
    load[0] = task->seed_load;
    ns = 1;
    for (uint32_t i = 0; i < task->nmembers; i++) {
        df_sn_member_t *s = task->members[i];
        if (s == m || !s->uploads || s->down || !s->have)
            continue;
        sources[ns].have = s->have;
        sources[ns].slots = sw->opts.peer_upload_slots;
        sources[ns].excluded =
            is_excluded(m, s->peer->serial) || is_slow(m, s->peer->serial, now_ms) ||
            s->digest_errors >= DF_SN_DIGEST_ERROR_LIMIT;
        load[ns] = s->load;
        src_member[ns] = s;
        ns++;
    }

    /* Copies on their way to peers that will serve them (rule 6 of
     * df_sched), over every other member's in-flight list. */
    if (sw->opts.seed_piece_limit) {
        coming = calloc(task->piece_count, sizeof(*coming));
        if (!coming)
            goto out;
        for (uint32_t i = 0; i < task->nmembers; i++) {
            const df_sn_member_t *o = task->members[i];
            if (o == m || !o->uploads || o->down)
                continue;
            for (uint32_t k = 0; k < o->ninflight; k++)
                if (o->inflight[k].piece < task->piece_count)
                    coming[o->inflight[k].piece]++;
        }
        if (task->seed_pieces == task->piece_count && !frontier_open(task, m, coming)) {
            /* The seed holds the whole file and every piece is out in the
             * swarm: holding it back would only leave its uplink idle
             * (measured at N = 40: the seed idle from 15 s on while the
             * peers' uplinks were the only supply), so it serves copies,
             * still after any peer with a free slot (rule 3).  While the
             * origin still feeds it, new pieces will come and the seed
             * stays reserved for them. */
            free(coming);
            coming = NULL;
        }
    }
    memset(&in, 0, sizeof(in));
    in.coming = coming;
    in.seed_piece_limit = sw->opts.seed_piece_limit;
    in.piece_count = task->piece_count;
    in.want = wantmap;
    in.sources = sources;
    in.nsources = ns;
    in.max_assign = max;
    in.rand_seed = now_ms * 2654435761u + (++sw->sched_calls) * 40503u + m->peer->serial;
    npicks = df_sched_pick(&in, load, picks);

    for (size_t k = 0; k < npicks; k++) {
        uint32_t piece = picks[k].piece, si = picks[k].source;
        df_sn_inflight_t *e;
        df_sn_assign_t *a = &out[*nout];

        if (piece >= task->piece_count || si >= ns || m->ninflight >= DF_SN_INFLIGHT_MAX ||
            df_bitmap_test(m->busy, piece))
            continue; /* defensive: never trust an index blindly */
        e = &m->inflight[m->ninflight++];
        e->piece = piece;
        e->since_ms = now_ms;
        df_bitmap_set(m->busy, piece);
        if (si == 0) {
            e->src = 0;
            task->seed_load++;
            a->src = NULL;
            sw->from_seed++;
        } else {
            e->src = src_member[si]->peer->serial;
            src_member[si]->load++;
            a->src = src_member[si]->peer;
            sw->from_peers++;
        }
        a->piece = piece;
        df_piece_span(task->length, task->piece_size, piece, &a->offset, &a->length);
        a->sha256 = task->piece_sha + (size_t)piece * 32;
        (*nout)++;
    }
    if (*nout > 0)
        *state = DF_SN_PULL_ASSIGN;
out:
    free(coming);
    free(wantmap);
    free(sources);
    free(src_member);
    free(load);
}

int df_sn_report_error(df_sn_task_t *task, df_sn_member_t *m, const char *src_id, uint32_t piece,
                       df_sn_err_kind_t kind, uint64_t now_ms)
{
    bool seed = strcmp(src_id, DF_SN_SEED_ID) == 0, from_seed = false;
    df_sn_member_t *src = NULL;
    uint64_t serial = 0;
    int i;

    if (task->shaped && piece < task->piece_count && (i = find_entry(m, piece)) >= 0) {
        from_seed = m->inflight[i].src == 0;
        release_entry(task, m, (uint32_t)i);
    }
    if (!seed) {
        for (uint32_t k = 0; k < task->nmembers; k++)
            if (strcmp(task->members[k]->peer->id, src_id) == 0) {
                src = task->members[k];
                break;
            }
        if (!src || src == m)
            return 0; /* unknown or gone: nothing to learn */
        serial = src->peer->serial;
    }
    if (kind == DF_SN_ERR_SLOW) {
        /* Slow for this requester is no fault of the source: avoided by m
         * for a while, still counted as holding the piece, still offered
         * to everyone else. */
        avoid_slow(m, serial, now_ms);
        return 0;
    }
    exclude(m, serial);
    if (seed)
        return from_seed ? 1 : 0; /* only a real seed assignment is worth a disk re-read */
    if (kind != DF_SN_ERR_IO && task->shaped && piece < task->piece_count && src->have)
        df_bitmap_clear(src->have, piece);
    if (kind == DF_SN_ERR_DIGEST && ++src->digest_errors == DF_SN_DIGEST_ERROR_LIMIT) {
        /* Dropped for everybody: free what others fetch from it now. */
        release_from_source(task, serial);
    }
    return 0;
}

uint32_t df_sn_sweep(df_sn_swarm_t *sw, uint64_t now_ms, uint64_t peer_timeout_ms,
                     uint64_t assign_timeout_ms)
{
    uint32_t removed = 0;
    df_sn_peer_t *p, *next;

    for (p = sw->peers; p; p = next) {
        next = p->next;
        if (now_ms - p->last_seen_ms >= peer_timeout_ms) {
            df_sn_peer_remove(sw, p);
            removed++;
        }
    }
    for (df_sn_task_t *t = sw->tasks; t; t = t->next) {
        for (uint32_t k = 0; k < t->nmembers; k++) {
            df_sn_member_t *m = t->members[k];
            /* Oldest first: stop at the first young entry. */
            while (m->ninflight > 0 && now_ms - m->inflight[0].since_ms >= assign_timeout_ms)
                release_entry(t, m, 0);
        }
    }
    return removed;
}
