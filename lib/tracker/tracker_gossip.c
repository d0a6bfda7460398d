/*
 * The Tracker over gossip (decentralized mode): no supernode, every
 * dfdaemon runs a Serf-compatible gossip node (gossip_io.c) and schedules
 * its own downloads with df_sched_pick over what gossip says each alive
 * member holds.
 *
 * Design:
 *  - Availability travels in Serf user events named "dfly" (payload format
 *    in gossip_events.h): START (a want with the url, or the owner's shape:
 *    length and piece size), HAVE (pieces now held, as run-length deltas,
 *    coalesced every FLUSH_MS), DIGEST (the owner's sha256 per piece),
 *    REMOVE, RECOVER (a restarted node asks everyone to re-announce),
 *    FILE (the owner's whole-file sha256).  Events about a task whose shape
 *    has not arrived yet are kept and replayed when it does (gossip keeps
 *    no order).
 *    Member tags carry the upload port (TAG_PORT); members without it (a
 *    plain `serf agent`) are never sources nor owners.
 *  - Repair is point to point: a download that starves (nothing it may
 *    fetch for SYNC_AFTER_MS) sends SYNC queries -- to the owner alone for
 *    the digests it lacks, to everyone for their HAVE -- answered as Serf
 *    query responses straight to it.  A broadcast can be crowded out of
 *    every member's queue (least transmitted, newest first) and is never
 *    re-sent by itself; a want no longer makes everyone re-announce.
 *  - One owner per task reads the origin: the alive member with the highest
 *    rendezvous score hash(task, name), sticky once seated (seat_owner); a
 *    node whose membership view is younger than SETTLE_MS asks before it
 *    acts as owner of a task it has no shape for.  The owner runs a seed download of
 *    its own (through start_seed: an ordinary engine download with no
 *    output) whose pulls are answered "error" so that the engine reads the
 *    origin into the piece store (its ORIGIN state, hashing each piece).
 *    Every FLUSH_MS the tracker compares the store with what it announced
 *    and sends HAVE, and, as owner, DIGEST events for new pieces.
 *  - Digests: a piece is only ever assigned with a digest that came from
 *    the task's owner (DIGEST events are accepted only from the current
 *    owner or from a member ranked above it, i.e. a former owner); the
 *    engine refuses assignments without one.  Shapes likewise.
 *  - Takeover: when the owner dies, the next member in rendezvous order
 *    becomes owner; if it has a url for the task and somebody wanted it in
 *    the last minute it starts a seed, which first fetches every piece some
 *    alive peer holds and only then (nothing left but pieces nobody has)
 *    reads the origin from its first missing piece.
 *  - No stampede on the owner: a piece only the owner holds is fetched by
 *    one designated participant (rendezvous of (task, piece) over the
 *    members that announced the task), the others wait FRONTIER_GRACE_MS
 *    for it to appear on a peer before they may take it from the owner,
 *    and then only when nothing else is left for them to fetch; with
 *    other participants alive each takes SLOTS_OWNER_SHARED pieces at a
 *    time from the owner, whose uplink they all share.
 *  - No stampede on a peer either (spread rule, spread_admitted): a piece
 *    that h peers hold is open to the first SPREAD_PER_HOLDER * h of the
 *    participants lacking it (rendezvous order), one more every
 *    SPREAD_GROW_MS, and SLOTS_PEER at a time per peer, since nobody sees
 *    the others' fetches; rarest first among what is open to us.
 *  - Register: first an access check (start_check): a HEAD to the origin
 *    with the request's own headers, whose refusal is the answer (as the
 *    supernode revalidates per registrant: nobody gets bytes the origin
 *    would refuse them).  Then: shape known -> answered at once; we are the
 *    owner -> HEAD to the origin, then a START with the shape; otherwise a
 *    START want is broadcast (again every WANT_RESEND_MS) and the Register
 *    waits for the owner's shape up to REGISTER_WAIT_MS (then fails: the
 *    engine reads the origin itself).  The seed's Register skips the check.
 *  - Private origins: the seed sends the task's headers (task_t.headers:
 *    a local request's whose check passed, or a member's).  A non-owner
 *    with headers hands them to the owner before its want, point to point
 *    (POST /peer/seed, seed_forward.h), sealed with the cluster key; with
 *    no key only under the forward_headers opt-in, else its Register fails
 *    at once and the engine reads the origin with its own headers.
 *
 * Every callback runs from the loop, never inside the call (a zero timer per
 * pending call).  Caps: TASKS_MAX tasks, HOLDERS_MAX holders per task,
 * events are capped by the node's user-event limit and decoded by
 * df_gev_decode.  Not thread-safe (one loop).
 */
#include "tracker/tracker.h"

#include "core/core.h"
#include "gossip/gossip_io.h"
#include "net/dns_watch.h"
#include "net/http_client.h"
#include "piece/piece.h"
#include "piece/digest.h"
#include "piece/piece_store.h"
#include "sched/endgame.h"
#include "sched/sched.h"
#include "supernode/api_codec.h"
#include "tracker/gossip_events.h"
#include "tracker/seed_forward.h"

#include <event2/event.h>
#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TAG_PORT "dfly-port"
#define SEED_SUFFIX "!seed"
#define TASKS_MAX 1024u
#define HOLDERS_MAX 1024u
#define FLUSH_MS 500u
#define STARVED_MS 2000u
#define WANT_RESEND_MS 2000u
#define REGISTER_WAIT_MS 15000u
#define FRONTIER_GRACE_MS 12000u
#define ASSIGN_EXPIRE_MS 30000u
#define WANTED_RECENT_MS 60000u
#define SEED_RETRY_MS 3000u
#define SLOTS_PEER 2u
#define SPREAD_PER_HOLDER 2u
#define SPREAD_GROW_MS 2000u
#define REFUSED_MS 60000u
#define SLOTS_OWNER 4u
#define SLOTS_OWNER_SHARED 1u
#define EVENTS_PER_FLUSH 16u
#define RECOVER_QUIET_MS 5000u
#define JOIN_RETRY_MS 5000u
#define SYNC_AFTER_MS 1000u
#define SYNC_EVERY_MS 1000u
#define PENDING_MAX 256u
#define RESPONSE_CAP 900u
#define HASH_BYTES_PER_TICK (4u << 20)
#define HASH_CHUNK (1u << 20)
#define FILE_WAIT_MS 10000u
#define SETTLE_MS 2000u
#define ASK_WINDOW_MS 10000u
#define ASK_EVERY_MS 500u
#define SWARM_MOVING_MS 5000u   /* a HAVE this recent: the swarm is moving (df_pull_res_t) */
#define FWD_RETRY_MS 10000u

typedef struct {
    char name[DF_GEV_SENDER_MAX + 1];
    uint8_t *have;               /* piece_count bits (allocated once shaped) */
    uint32_t load;               /* our fetches in flight from it */
    uint64_t slow_until_ms;      /* a download here abandoned it as slow: not offered before */
    uint64_t refused_ms;         /* a download of ours reported it failing (the engine refuses it since) */
} holder_t;

typedef struct task {
    char id[65];
    uint8_t idb[32];
    char *url;                   /* NULL until known */
    bool shaped;
    uint64_t length, piece_size;
    uint32_t piece_count;
    uint8_t *digest_known, *digests;   /* from the owner */
    uint8_t *assigned;                 /* to one of our downloads, result pending */
    uint64_t *assigned_ms;
    int32_t *assigned_src;             /* holder index */
    uint64_t *owner_since;             /* when we learnt the owner holds it (frontier rule) */
    uint64_t *peer_since;              /* when we learnt a peer other than the owner holds it (spread rule) */
    uint8_t *announced;                /* pieces we announced holding */
    uint8_t *digest_sent;              /* digests we sent as owner */
    bool announce_full;                /* next HAVE is a full set (recover) */
    bool file_known, file_sent;        /* the owner's whole-file sha256; owner: FILE sent */
    uint8_t file_sha256[32];
    df_hasher_t *fhash;                /* owner: whole-file sha256 over the pieces so far */
    uint64_t fhash_pos;                /* bytes hashed */
    uint64_t done_ms;                  /* a pull found our copy complete (first time) */
    holder_t *holders;
    size_t nholders, cap_holders;
    df_stored_task_t *stored;          /* our store's copy, referenced; NULL until created */
    bool seeding;                      /* our seed download runs */
    bool head_pending;                 /* owner: HEAD to the origin running */
    df_http_req_t *head;
    uint64_t seed_failed_ms;
    uint64_t wanted_ms;                /* last want (ours or others') */
    uint64_t moved_ms;                 /* last HAVE from another member that added a piece */
    uint64_t want_sent_ms;
    uint64_t starved_ms;               /* our pulls found nothing to fetch since */
    uint64_t repair_ms;                /* owner: last shape re-sent for a want */
    char owner[DF_GEV_SENDER_MAX + 1]; /* seated owner (seat_owner), "" = none yet */
    uint64_t sync_have_ms, sync_digest_ms, ask_ms; /* our last SYNC queries */
    uint64_t ask_since_ms;             /* first asked who owns it before seeding */
    bool local;                        /* one of our downloads registered it */
    /* Origin request headers for our seed (private origins): those of the
     * latest local Register whose access check passed, or handed to us by
     * a member (POST /peer/seed).  Memory only: never in events, tags,
     * logs or metrics; wiped when replaced or released. */
    char **headers;
    bool seed_had_headers;             /* the running seed was started with headers */
    bool headers_new;                  /* headers arrived after the running seed started */
    char fwd_to[DF_GEV_SENDER_MAX + 1];/* owner our headers were last handed to */
    df_http_req_t *fwd_req;            /* that POST, while it is out */
    bool fwd_ok;                       /* fwd_to took them */
    uint64_t fwd_failed_ms;            /* fwd_to did not: retried after FWD_RETRY_MS */
    bool fwd_refusal_logged;           /* "not forwarding" said once */
    uint64_t pulled_ms;                /* last pull of one of our (non-seed) downloads */
    struct task *next;
} task_t;

/* An event about a task we have no shape for yet: gossip does not keep
 * order, so a HAVE or DIGEST can overtake the owner's shape.  Kept (raw)
 * and replayed once the shape arrives. */
typedef struct {
    uint8_t task[32];
    uint8_t *p;
    size_t len;
} pending_t;

typedef enum { CALL_REGISTER, CALL_PULL, CALL_DONE } call_kind_t;

typedef struct call {
    struct gossip_tracker *tr;
    call_kind_t kind;
    struct event *ev;
    task_t *task;                /* REGISTER, PULL */
    bool seed;                   /* the seed download's call */
    uint64_t since_ms;           /* REGISTER: parked since */
    df_register_res_t *reg;      /* REGISTER: the answer once ready */
    df_piece_result_t *results;  /* PULL: copied request */
    size_t nresults;
    uint32_t want;
    char **headers;              /* REGISTER: the request's origin headers (owned) */
    df_http_req_t *check;        /* REGISTER: our own HEAD to the origin (access check) */
    bool checked;                /* REGISTER: the origin accepted our headers */
    long check_code;
    union {
        df_register_cb reg;
        df_pull_cb pull;
        df_tracker_done_cb done;
    } cb;
    void *arg;
    int status;                  /* DONE */
    struct call *prev, *next;
} call_t;

/* A --join entry: an IP literal is joined directly; a name is resolved
 * with c-ares (a dns watch re-resolving every JOIN_RETRY_MS), never with
 * the blocking getaddrinfo on the loop. */
typedef struct {
    struct gossip_tracker *tr;
    char *spec;                  /* "host:port" as given */
    uint8_t addr[16];            /* the literal's address, addr_len 4 or 16 */
    size_t addr_len;             /* 0: a name (watch) */
    uint16_t port;
    df_dns_watch_t *watch;
} join_t;

typedef struct gossip_tracker {
    df_tracker_t base;
    df_tracker_gossip_opts_t o;
    char name[DF_GEV_SENDER_MAX + 1];
    char seed_id[DF_GEV_SENDER_MAX + sizeof(SEED_SUFFIX)];
    char advertise_ip[64];
    char *dns_name;
    df_dns_watch_t *dns;         /* watches dns_name, or NULL */
    join_t *joins;
    size_t njoins;
    df_gossip_io_t *io;
    struct event *tick;
    task_t *tasks;
    size_t ntasks;
    call_t *calls;
    task_t *seeding_now;         /* set while start_seed runs: its Register is the seed's */
    pending_t pending[PENDING_MAX];     /* ring; oldest overwritten */
    uint8_t *hash_buf;                  /* HASH_CHUNK bytes, for owner_hash_step */
    size_t pending_next;
    uint64_t last_flush_ms, last_join_ms, last_recover_ms;
    uint64_t member_change_ms;          /* last member join/leave/failure we saw */
    bool recover_sent, leaving;
    df_gossip_keyring_t kr;             /* the cluster key (seals POST /peer/seed) */
    bool has_key;
    df_tracker_gossip_stats_t stats;
} gossip_tracker_t;

static void task_release(gossip_tracker_t *tr, task_t *t);

/* ------------------------------------------------------------ helpers */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Rendezvous score of a member for a task (and a piece, for the frontier
 * rule; UINT32_MAX for the task itself).  FNV-1a then a finalizer. */
static uint64_t score(const uint8_t task[32], uint32_t piece, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 32; i++)
        h = (h ^ task[i]) * 0x100000001b3ull;
    for (int i = 0; i < 4; i++)
        h = (h ^ ((piece >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    return mix64(h);
}

typedef struct {
    const uint8_t *task;
    char best[DF_GEV_SENDER_MAX + 1];
    uint64_t best_score;
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
} owner_scan_t;

static int tag_port_cb(df_gossip_bytes_t k, df_gossip_bytes_t v, void *arg)
{
    uint16_t *port = arg;
    char buf[8];
    uint64_t n;

    if (k.len == strlen(TAG_PORT) && memcmp(k.p, TAG_PORT, k.len) == 0 && v.len < sizeof(buf)) {
        memcpy(buf, v.p, v.len);
        buf[v.len] = '\0';
        if (df_parse_u64(buf, &n) == 0 && n > 0 && n <= 65535)
            *port = (uint16_t)n;
    }
    return 0;
}

/* The upload port a member advertises, 0 when none (not a dfly peer). */
static uint16_t member_port(const df_gossip_member_t *m)
{
    uint16_t port = 0;
    if (m->meta && m->meta_len)
        df_serf_tags_decode(m->meta, m->meta_len, tag_port_cb, &port);
    return port;
}

static void owner_cb(const df_gossip_member_t *m, void *arg)
{
    owner_scan_t *s = arg;
    uint64_t sc;

    if (m->status != DF_GOSSIP_STATUS_ALIVE || strlen(m->name) > DF_GEV_SENDER_MAX || member_port(m) == 0)
        return;
    sc = score(s->task, UINT32_MAX, m->name);
    if (!s->best[0] || sc > s->best_score) {
        s->best_score = sc;
        df_strlcpy(s->best, m->name, sizeof(s->best));
    }
}

static bool member_alive(gossip_tracker_t *tr, const char *name, df_gossip_member_t *m)
{
    return df_gossip_member_get(df_gossip_io_node(tr->io), name, m) == 0 && m->status == DF_GOSSIP_STATUS_ALIVE;
}

/* The task's owner: the member seated as owner while it is alive (see
 * seat_owner), else the alive dfly member with the highest score. */
static void task_owner(gossip_tracker_t *tr, const task_t *t, char *out, size_t cap)
{
    owner_scan_t s = {.task = t->idb};
    df_gossip_member_t m;

    if (t->owner[0] && (strcmp(t->owner, tr->name) == 0 ? !tr->leaving : member_alive(tr, t->owner, &m))) {
        df_strlcpy(out, t->owner, cap);
        return;
    }
    df_gossip_member_foreach(df_gossip_io_node(tr->io), owner_cb, &s);
    df_strlcpy(out, s.best[0] ? s.best : tr->name, cap);
}

/* Ownership is sticky: the member that announced the shape (or we, once
 * we read the origin) stays the owner while it is alive, even when a
 * member ranked above it joins later.  Rendezvous only picks the first
 * owner and the next one after a failure. */
static void seat_owner(task_t *t, const char *name)
{
    if (strcmp(t->owner, name) != 0)
        DF_LOG_I("gossip: task %.16s is owned by %s", t->id, name);
    df_strlcpy(t->owner, name, sizeof(t->owner));
}

/* May we act as the owner of a task we have no shape for (HEAD, read the
 * origin)?  Not at once when our view of the membership changed in the
 * last ASK_WINDOW_MS: a member that owns the task may exist that
 * rendezvous over our new view does not pick (it was seated before we
 * joined, or before a member ranked above it joined).  We ask first (SYNC
 * SHAPE, answered point to point by a current owner) and act only when
 * SETTLE_MS passed since the task's asking period began without an answer. */
static bool owner_may_act(gossip_tracker_t *tr, task_t *t, uint64_t now)
{
    /* One asking period per task (shared by its Registers and the seed),
     * restarted when the last one is older than the window. */
    if (!t->ask_since_ms || now - t->ask_since_ms >= ASK_WINDOW_MS)
        t->ask_since_ms = now;
    return df_gossip_count(df_gossip_io_node(tr->io), DF_GOSSIP_STATUS_ALIVE) <= 1 ||
           now - tr->member_change_ms >= ASK_WINDOW_MS || now - t->ask_since_ms >= SETTLE_MS;
}

static bool is_owner(gossip_tracker_t *tr, const task_t *t)
{
    char owner[DF_GEV_SENDER_MAX + 1];
    task_owner(tr, t, owner, sizeof(owner));
    return strcmp(owner, tr->name) == 0;
}

/* Shapes and digests are believed from the current owner or from a member
 * ranked above it (a former owner: it died or left after sending). */
static bool may_vouch(gossip_tracker_t *tr, const task_t *t, const char *sender)
{
    char owner[DF_GEV_SENDER_MAX + 1];
    task_owner(tr, t, owner, sizeof(owner));
    return strcmp(owner, sender) == 0 || score(t->idb, UINT32_MAX, sender) > score(t->idb, UINT32_MAX, owner);
}

static int send_event(gossip_tracker_t *tr, const uint8_t *p, int len)
{
    int rc;
    if (len < 0) {
        tr->stats.events_dropped++;
        return len;
    }
    rc = df_gossip_user_event(df_gossip_io_node(tr->io), DF_GEV_NAME, p, (size_t)len, false, df_now_ms());
    if (rc < 0) {
        tr->stats.events_dropped++;
        return rc;
    }
    tr->stats.events_sent++;
    df_gossip_io_pump(tr->io);
    return 0;
}

/* Bytes one event payload may take: the node's user-event limit (Serf's
 * default 512) minus the event name. */
static size_t event_cap(void)
{
    return 512 - strlen(DF_GEV_NAME);
}

/* ------------------------------------------------------------ tasks */

static task_t *task_find(gossip_tracker_t *tr, const char *id)
{
    for (task_t *t = tr->tasks; t; t = t->next)
        if (strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

static task_t *task_get(gossip_tracker_t *tr, const char *id)
{
    task_t *t = task_find(tr, id);

    if (t)
        return t;
    if (tr->ntasks >= TASKS_MAX || strlen(id) != 64)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    df_strlcpy(t->id, id, sizeof(t->id));
    if (df_unhex(id, t->idb, 32) < 0) {
        free(t);
        return NULL;
    }
    t->next = tr->tasks;
    tr->tasks = t;
    tr->ntasks++;
    return t;
}

static void task_hex(const uint8_t idb[32], char id[65])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        id[2 * i] = hex[idb[i] >> 4];
        id[2 * i + 1] = hex[idb[i] & 15];
    }
    id[64] = '\0';
}

static task_t *task_get_bin(gossip_tracker_t *tr, const uint8_t idb[32])
{
    char id[65];
    task_hex(idb, id);
    return task_get(tr, id);
}

static int task_shape(task_t *t, uint64_t length, uint64_t piece_size)
{
    uint32_t n = df_piece_count(length, piece_size);
    size_t bm = df_bitmap_bytes(n);

    if (t->shaped)
        return t->length == length && t->piece_size == piece_size ? 0 : -EEXIST;
    if (length == 0 || piece_size == 0 || piece_size > DF_PIECE_SIZE_MAX || n == 0 || n > DF_PIECE_COUNT_MAX)
        return -EINVAL;
    t->digest_known = calloc(bm, 1);
    t->digests = calloc(n, 32);
    t->assigned = calloc(bm, 1);
    t->assigned_ms = calloc(n, sizeof(uint64_t));
    t->assigned_src = calloc(n, sizeof(int32_t));
    t->owner_since = calloc(n, sizeof(uint64_t));
    t->peer_since = calloc(n, sizeof(uint64_t));
    t->announced = calloc(bm, 1);
    t->digest_sent = calloc(bm, 1);
    if (!t->digest_known || !t->digests || !t->assigned || !t->assigned_ms || !t->assigned_src ||
        !t->owner_since || !t->peer_since || !t->announced || !t->digest_sent)
        return -ENOMEM; /* the task stays unshaped; task_release frees what was allocated */
    for (size_t i = 0; i < t->nholders; i++)
        if (!t->holders[i].have && !(t->holders[i].have = calloc(bm, 1)))
            return -ENOMEM;
    t->length = length;
    t->piece_size = piece_size;
    t->piece_count = n;
    t->shaped = true;
    return 0;
}

static holder_t *holder_get(task_t *t, const char *name, int32_t *idx)
{
    for (size_t i = 0; i < t->nholders; i++)
        if (strcmp(t->holders[i].name, name) == 0) {
            if (idx)
                *idx = (int32_t)i;
            return &t->holders[i];
        }
    if (t->nholders >= HOLDERS_MAX)
        return NULL;
    if (t->nholders == t->cap_holders) {
        size_t cap = t->cap_holders ? 2 * t->cap_holders : 8;
        holder_t *n = realloc(t->holders, cap * sizeof(*n));
        if (!n)
            return NULL;
        t->holders = n;
        t->cap_holders = cap;
    }
    memset(&t->holders[t->nholders], 0, sizeof(holder_t));
    df_strlcpy(t->holders[t->nholders].name, name, sizeof(t->holders[0].name));
    if (t->shaped && !(t->holders[t->nholders].have = calloc(df_bitmap_bytes(t->piece_count), 1)))
        return NULL;
    if (idx)
        *idx = (int32_t)t->nholders;
    return &t->holders[t->nholders++];
}

/* Our store's copy of the task, once an engine download created it. */
static df_stored_task_t *task_stored(gossip_tracker_t *tr, task_t *t)
{
    if (!t->stored && t->shaped && df_store_task_get(tr->o.store, t->id, &t->stored) == 0 &&
        (df_stored_task_length(t->stored) != t->length || df_stored_task_piece_size(t->stored) != t->piece_size)) {
        df_stored_task_unref(t->stored);
        t->stored = NULL;
    }
    return t->stored;
}

static void task_release(gossip_tracker_t *tr, task_t *t)
{
    (void)tr;
    df_http_cancel(t->head);
    df_http_cancel(t->fwd_req);
    df_hasher_free(t->fhash);
    if (t->stored)
        df_stored_task_unref(t->stored);
    for (size_t i = 0; i < t->nholders; i++)
        free(t->holders[i].have);
    free(t->holders);
    free(t->url);
    free(t->digest_known);
    free(t->digests);
    free(t->assigned);
    free(t->assigned_ms);
    free(t->assigned_src);
    free(t->owner_since);
    free(t->peer_since);
    free(t->announced);
    free(t->digest_sent);
    df_seedfwd_free_strv(t->headers);
    free(t);
}

/* ------------------------------------------------------------ calls */

static void call_fire(evutil_socket_t fd, short what, void *arg);

static call_t *call_new(gossip_tracker_t *tr, call_kind_t kind, void *cb, void *arg)
{
    call_t *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->tr = tr;
    c->kind = kind;
    c->arg = arg;
    if (kind == CALL_REGISTER)
        c->cb.reg = (df_register_cb)cb;
    else if (kind == CALL_PULL)
        c->cb.pull = (df_pull_cb)cb;
    else
        c->cb.done = (df_tracker_done_cb)cb;
    c->ev = evtimer_new(tr->o.base, call_fire, c);
    if (!c->ev) {
        free(c);
        return NULL;
    }
    c->next = tr->calls;
    if (tr->calls)
        tr->calls->prev = c;
    tr->calls = c;
    return c;
}

static void call_free(call_t *c)
{
    gossip_tracker_t *tr = c->tr;
    if (c->prev)
        c->prev->next = c->next;
    else
        tr->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->ev);
    df_http_cancel(c->check);
    df_seedfwd_free_strv(c->headers);
    free(c->reg);
    free(c->results);
    free(c);
}

static void call_arm(call_t *c, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->ev, &tv);
}

/* ------------------------------------------------------------ register */

static void fill_register_ok(gossip_tracker_t *tr, call_t *c)
{
    df_register_res_t *r = c->reg;
    task_t *t = c->task;

    memset(r, 0, sizeof(*r));
    df_strlcpy(r->task_id, t->id, sizeof(r->task_id));
    df_strlcpy(r->peer_id, c->seed ? tr->seed_id : tr->name, sizeof(r->peer_id));
    r->length = t->length;
    r->piece_size = t->piece_size;
    r->piece_count = t->piece_count;
    df_strlcpy(r->local_ip, tr->advertise_ip, sizeof(r->local_ip));
}

static void send_start(gossip_tracker_t *tr, task_t *t, bool shape)
{
    uint8_t buf[512];
    int n = df_gev_encode_start(buf, event_cap(), tr->name, t->idb, shape ? t->length : 0,
                                shape ? t->piece_size : 0, t->url);
    send_event(tr, buf, n);
}

static void maybe_start_seed(gossip_tracker_t *tr, task_t *t);
static void send_sync(gossip_tracker_t *tr, task_t *t, uint8_t what, uint32_t first, const char *owner);
static void owner_hash_step(gossip_tracker_t *tr, task_t *t);

typedef struct {
    gossip_tracker_t *tr;
    task_t *task;
    long code;
    uint64_t length;
    bool has_length;
} head_ctx_t;

static int head_headers(df_http_req_t *req, long code, void *arg)
{
    head_ctx_t *h = arg;
    const char *cl = df_http_header(req, "Content-Length");
    h->code = code;
    if (code >= 200 && code < 300 && cl && df_parse_u64(cl, &h->length) == 0)
        h->has_length = true;
    return 0;
}

static void answer_parked(gossip_tracker_t *tr, task_t *t, int status, int origin_status, const char *msg);

static void head_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    head_ctx_t *h = arg;
    gossip_tracker_t *tr = h->tr;
    task_t *t = h->task;
    char msg[256];

    (void)req;
    t->head = NULL;
    t->head_pending = false;
    if (res->status < 0) {
        snprintf(msg, sizeof(msg), "origin: %s", res->error ? res->error : df_strerror(res->status));
        answer_parked(tr, t, DF_ETRACKER, 0, msg);
    } else if (h->code < 200 || h->code >= 300) {
        snprintf(msg, sizeof(msg), "origin answered HTTP %ld", h->code);
        answer_parked(tr, t, DF_EORIGIN, (int)h->code, msg);
    } else if (!h->has_length || h->length == 0) {
        /* No length, no pieces: every peer reads the origin itself. */
        answer_parked(tr, t, DF_ETASK, 0, "the origin gives no length: no P2P for this file");
    } else if (task_shape(t, h->length, df_piece_size_for(h->length)) < 0) {
        answer_parked(tr, t, DF_ETASK, 0, "cannot shape the task");
    } else {
        seat_owner(t, tr->name);
        send_start(tr, t, true);
        answer_parked(tr, t, 0, 0, NULL);
        maybe_start_seed(tr, t);
    }
    free(h);
}

/* Owner: learn the length with a HEAD (origin errors reach the Register,
 * as with the supernode). */
static void start_head(gossip_tracker_t *tr, task_t *t, const char *const *headers)
{
    head_ctx_t *h;
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_headers = head_headers, .on_done = head_done};

    if (t->head_pending || !t->url)
        return;
    h = calloc(1, sizeof(*h));
    if (!h)
        return;
    h->tr = tr;
    h->task = t;
    opts.method = "HEAD";
    opts.url = t->url;
    opts.headers = headers;
    opts.follow_redirects = true;
    opts.timeout_ms = 30000;
    if (df_http_start(tr->o.http, &opts, &cbs, h, &t->head) < 0) {
        free(h);
        return;
    }
    t->head_pending = true;
}

/* Answers every Register parked on t (status 0: with the shape).  Only
 * those whose own access check passed (and the seed's): the others learn
 * the origin's answer for their headers from that check. */
static void answer_parked(gossip_tracker_t *tr, task_t *t, int status, int origin_status, const char *msg)
{
    for (call_t *c = tr->calls; c; c = c->next) {
        if (c->kind != CALL_REGISTER || c->task != t || !c->reg || c->reg->task_id[0] || c->reg->status ||
            !(c->checked || c->seed))
            continue;
        if (status == 0) {
            fill_register_ok(tr, c);
        } else {
            c->reg->status = status;
            c->reg->origin_status = origin_status;
            df_strlcpy(c->reg->message, msg, sizeof(c->reg->message));
        }
        call_arm(c, 0);
    }
}

/* ------------------------------------------------------------ origin headers */

static bool strv_empty(char *const *v)
{
    return !v || !v[0];
}

static bool strv_equal(char *const *a, char *const *b)
{
    size_t i = 0;
    for (; a && b && a[i] && b[i]; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return (!a || !a[i]) && (!b || !b[i]);
}

/* A copy of a NULL-terminated vector (an empty one for NULL); NULL on ENOMEM. */
static char **strv_dup(const char *const *v)
{
    size_t n = 0;
    char **out;

    while (v && v[n])
        n++;
    out = calloc(n + 1, sizeof(*out));
    for (size_t i = 0; out && i < n; i++)
        if (!(out[i] = strdup(v[i]))) {
            df_seedfwd_free_strv(out);
            return NULL;
        }
    return out;
}

/* The headers our seed of t uses from now on: a copy of h (non-empty).
 * Out of memory keeps the previous ones. */
static void task_set_headers(task_t *t, char *const *h)
{
    char **n;

    if (strv_equal(t->headers, h))
        return;
    n = strv_dup((const char *const *)h);
    if (!n)
        return;
    df_seedfwd_free_strv(t->headers);
    t->headers = n;
    t->fwd_to[0] = '\0'; /* hand the new ones to the owner too */
    if (t->seeding)
        t->headers_new = true;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void register_proceed(gossip_tracker_t *tr, call_t *c);

/* The owner refused or did not take our headers: the Registers of t that
 * carry headers read the origin themselves (with theirs). */
static void forward_failed(gossip_tracker_t *tr, task_t *t, const char *why)
{
    for (call_t *c = tr->calls; c; c = c->next) {
        if (c->kind != CALL_REGISTER || c->task != t || c->seed || !c->checked || strv_empty(c->headers) ||
            c->reg->task_id[0] || c->reg->status)
            continue;
        c->reg->status = DF_ETRACKER;
        snprintf(c->reg->message, sizeof(c->reg->message), "gossip: %s", why);
        call_arm(c, 0);
    }
}

static void fwd_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    gossip_tracker_t *tr = arg;
    char why[200];
    task_t *t;

    for (t = tr->tasks; t && t->fwd_req != req; t = t->next)
        ;
    if (!t)
        return;
    t->fwd_req = NULL;
    if (res->status == 0 && res->http_code >= 200 && res->http_code < 300) {
        DF_LOG_I("gossip: task %.16s: origin headers handed to the owner %s", t->id, t->fwd_to);
        t->fwd_ok = true;
        return;
    }
    t->fwd_failed_ms = df_now_ms();
    if (res->status < 0)
        snprintf(why, sizeof(why), "cannot hand the origin headers to the owner %s (%s); reading the origin directly",
                 t->fwd_to, res->error ? res->error : df_strerror(res->status));
    else
        snprintf(why, sizeof(why), "the owner %s refused the origin headers (HTTP %ld); reading the origin directly",
                 t->fwd_to, res->http_code);
    DF_LOG_W("gossip: task %.16s: %s", t->id, why);
    forward_failed(tr, t, why);
}

/* A non-owner whose Register carries headers hands them (t->headers: the
 * latest whose access check passed) to the owner point to point, sealed
 * with the cluster key (seed_forward.h).  Once per owner and set of
 * headers (again after FWD_RETRY_MS when that owner did not take them).  -EPERM when we may not: no key and no opt-in (logged once per
 * task); the Register then reads the origin itself.  0 otherwise (also
 * when the owner's address is not known yet: the want resend retries). */
static int forward_headers(gossip_tracker_t *tr, task_t *t)
{
    char owner[DF_GEV_SENDER_MAX + 1], ip[INET6_ADDRSTRLEN], url[INET6_ADDRSTRLEN + 32];
    const char *hdrs[2];
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_done = fwd_done};
    df_gossip_member_t m;
    uint8_t *body = NULL;
    size_t len = 0;
    uint16_t port;
    int rc;

    if (!tr->has_key && !tr->o.forward_headers) {
        if (!t->fwd_refusal_logged) {
            t->fwd_refusal_logged = true;
            DF_LOG_W("gossip: task %.16s: the request has origin headers, and this cluster has no encryption key "
                     "(--encrypt) to hand them to the owner sealed, nor --gossip-forward-headers to hand them in "
                     "clear: this node reads the origin itself",
                     t->id);
        }
        return -EPERM;
    }
    task_owner(tr, t, owner, sizeof(owner));
    if (strv_empty(t->headers) || strcmp(owner, tr->name) == 0 || t->fwd_req ||
        (strcmp(t->fwd_to, owner) == 0 && (t->fwd_ok || df_now_ms() - t->fwd_failed_ms < FWD_RETRY_MS)))
        return 0;
    if (!member_alive(tr, owner, &m) || (port = member_port(&m)) == 0 ||
        !inet_ntop(m.addr_len == 16 ? AF_INET6 : AF_INET, m.addr, ip, sizeof(ip)))
        return 0;
    snprintf(url, sizeof(url), m.addr_len == 16 ? "http://[%s]:%u%s" : "http://%s:%u%s", ip, port, DF_SEEDFWD_PATH);
    rc = df_seedfwd_encode(tr->has_key ? &tr->kr : NULL, owner, tr->name, t->url, t->id,
                           (const char *const *)t->headers, wall_ms(), &body, &len);
    if (rc < 0) {
        DF_LOG_W("gossip: task %.16s: cannot build the request for the owner: %s", t->id, df_strerror(rc));
        return 0;
    }
    hdrs[0] = tr->has_key ? "Content-Type: application/octet-stream" : "Content-Type: application/json";
    hdrs[1] = NULL;
    opts.method = "POST";
    opts.url = url;
    opts.headers = hdrs;
    opts.body = body;
    opts.body_len = len;
    opts.timeout_ms = 10000;
    opts.max_body = 4096;
    rc = df_http_start(tr->o.http, &opts, &cbs, tr, &t->fwd_req);
    OPENSSL_cleanse(body, len);
    free(body);
    if (rc < 0) {
        t->fwd_req = NULL;
        return 0;
    }
    df_strlcpy(t->fwd_to, owner, sizeof(t->fwd_to));
    t->fwd_ok = false;
    return 0;
}

/* Not the owner, no shape yet: our headers go to the owner, then the want.
 * false when the Register was answered instead (it reads the origin). */
static bool want_task(gossip_tracker_t *tr, call_t *c, uint64_t now)
{
    task_t *t = c->task;

    if (!c->seed && !strv_empty(c->headers) && forward_headers(tr, t) < 0) {
        c->reg->status = DF_ETRACKER;
        snprintf(c->reg->message, sizeof(c->reg->message),
                 "gossip: origin headers are not handed to the owner without --encrypt or "
                 "--gossip-forward-headers; reading the origin directly");
        return false;
    }
    send_start(tr, t, false);
    t->want_sent_ms = now;
    return true;
}

static int check_headers(df_http_req_t *req, long code, void *arg)
{
    call_t *c = arg;
    (void)req;
    c->check_code = code;
    return 0;
}

static void check_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    call_t *c = arg;

    (void)req;
    c->check = NULL;
    if (res->status < 0) {
        c->reg->status = DF_ETRACKER;
        snprintf(c->reg->message, sizeof(c->reg->message), "origin: %s",
                 res->error ? res->error : df_strerror(res->status));
        call_arm(c, 0);
        return;
    }
    if (c->check_code == 405 || c->check_code == 501) {
        /* No HEAD there: access cannot be checked, so no P2P; the engine
         * asks the origin itself with our headers. */
        c->reg->status = DF_ETRACKER;
        snprintf(c->reg->message, sizeof(c->reg->message),
                 "origin does not answer HEAD (HTTP %ld): access cannot be checked; reading the origin directly",
                 c->check_code);
        call_arm(c, 0);
        return;
    }
    if (c->check_code < 200 || c->check_code >= 300) {
        c->reg->status = DF_EORIGIN;
        c->reg->origin_status = (int)c->check_code;
        snprintf(c->reg->message, sizeof(c->reg->message), "origin answered HTTP %ld", c->check_code);
        call_arm(c, 0);
        return;
    }
    c->checked = true;
    c->since_ms = df_now_ms();
    if (!strv_empty(c->headers))
        task_set_headers(c->task, c->headers);
    register_proceed(c->tr, c);
}

/* Access check, as the supernode does per registrant: the origin must
 * accept this request's own headers (or none) before it gets bytes that
 * came through P2P under somebody else's.  A HEAD with them; its refusal
 * (401, 403, 404...) is the Register's answer (DF_EORIGIN). */
static int start_check(gossip_tracker_t *tr, call_t *c)
{
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_headers = check_headers, .on_done = check_done};

    opts.method = "HEAD";
    opts.url = c->task->url;
    opts.headers = (const char *const *)c->headers;
    opts.follow_redirects = true;
    opts.timeout_ms = 30000;
    return df_http_start(tr->o.http, &opts, &cbs, c, &c->check);
}

/* A Register that may go on (the seed's, or one whose access check
 * passed): answered at once with the shape, or parked for it. */
static void register_proceed(gossip_tracker_t *tr, call_t *c)
{
    task_t *t = c->task;
    uint64_t now = df_now_ms();

    t->wanted_ms = now;
    if (t->shaped) {
        fill_register_ok(tr, c);
        call_arm(c, 0);
        if (!c->seed)
            maybe_start_seed(tr, t);
        return;
    }
    if (is_owner(tr, t) && owner_may_act(tr, t, now)) {
        start_head(tr, t, (const char *const *)c->headers);
    } else if (is_owner(tr, t)) {
        t->ask_ms = now;
        send_sync(tr, t, DF_GEV_SYNC_SHAPE, 0, NULL);
    } else if (!want_task(tr, c, now)) {
        call_arm(c, 0);
        return;
    }
    call_arm(c, 200); /* parked: re-checked every 200 ms (call_fire) */
}

static int gt_register(df_tracker_t *base, const df_register_req_t *req, df_register_cb cb, void *arg)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    char id[65];
    char *task_url = NULL;
    size_t nfilter = 0;
    task_t *t;
    call_t *c;
    int rc;

    if (tr->seeding_now && tr->seeding_now->url && strcmp(tr->seeding_now->url, req->url) == 0) {
        t = tr->seeding_now; /* the seed download we are starting */
    } else {
        while (req->filter && req->filter[nfilter])
            nfilter++;
        task_url = df_sn_task_url(req->url, (char *const *)req->filter, nfilter);
        if (!task_url)
            return -ENOMEM;
        rc = df_sn_task_id(task_url, req->digest, req->identifier, id);
        free(task_url);
        if (rc < 0)
            return rc;
        t = task_get(tr, id);
        if (!t)
            return -ENOSPC;
        t->local = true;
    }
    if (!t->url && !(t->url = strdup(req->url)))
        return -ENOMEM;
    c = call_new(tr, CALL_REGISTER, (void *)cb, arg);
    if (!c)
        return -ENOMEM;
    c->reg = calloc(1, sizeof(*c->reg));
    c->headers = strv_dup(req->headers);
    if (!c->reg || !c->headers) {
        call_free(c);
        return -ENOMEM;
    }
    c->task = t;
    c->seed = t == tr->seeding_now;
    c->since_ms = df_now_ms();
    t->wanted_ms = c->since_ms;
    if (c->seed) {
        register_proceed(tr, c);
        return 0;
    }
    /* Not parked until the origin accepted our headers (check_done). */
    rc = start_check(tr, c);
    if (rc < 0) {
        call_free(c);
        return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ pull */

static void release_assigned(task_t *t, uint32_t p)
{
    if (p >= t->piece_count || !df_bitmap_test(t->assigned, p))
        return;
    df_bitmap_clear(t->assigned, p);
    if (t->assigned_src[p] >= 0 && (size_t)t->assigned_src[p] < t->nholders &&
        t->holders[t->assigned_src[p]].load > 0)
        t->holders[t->assigned_src[p]].load--;
}

static void apply_results(task_t *t, const df_piece_result_t *r, size_t n)
{
    for (size_t i = 0; t->shaped && i < n; i++)
        if (r[i].src[0])
            release_assigned(t, r[i].piece);
}

/* The participant designated to take piece p from the owner first. */
static bool designated_here(gossip_tracker_t *tr, task_t *t, uint32_t p, const char *owner)
{
    uint64_t best = score(t->idb, p, tr->name);
    df_gossip_member_t m;

    for (size_t i = 0; i < t->nholders; i++) {
        const holder_t *h = &t->holders[i];
        if (strcmp(h->name, owner) == 0 || strcmp(h->name, tr->name) == 0 || !member_alive(tr, h->name, &m))
            continue;
        if (score(t->idb, p, h->name) > best)
            return false;
    }
    return true;
}

/* Spread rule: may we fetch piece p, which npeers peers hold, now?  Only
 * the first SPREAD_PER_HOLDER per holder of the participants lacking it
 * (rendezvous order of (task, piece)), one more every SPREAD_GROW_MS since
 * we learnt a peer holds it.  Nobody sees the others' fetches: without it
 * every participant fetches a new piece from its first holder at once, the
 * holder's uplink is split as many ways and no copy is done for seconds;
 * with it the piece spreads as a tree (each copy done soon serves more) and
 * the other requests go to other pieces.  part[] are the alive participants
 * other than the owner (holder indexes), we among them. */
static bool spread_admitted(gossip_tracker_t *tr, task_t *t, uint32_t p, size_t npeers, const int32_t *part,
                            size_t npart, uint64_t now)
{
    uint64_t mine = score(t->idb, p ^ 0x80000000u, tr->name);
    size_t admit = SPREAD_PER_HOLDER * npeers, above = 0;

    if (t->peer_since[p] && now > t->peer_since[p])
        admit += (size_t)((now - t->peer_since[p]) / SPREAD_GROW_MS);
    if (admit >= npart)
        return true;
    for (size_t i = 0; i < npart; i++) {
        const holder_t *h = &t->holders[part[i]];
        if (strcmp(h->name, tr->name) == 0 || df_bitmap_test(h->have, p))
            continue;
        if (score(t->idb, p ^ 0x80000000u, h->name) > mine && ++above >= admit)
            return false;
    }
    return true;
}

static void fill_pull(gossip_tracker_t *tr, call_t *c, df_pull_res_t *out)
{
    task_t *t = c->task;
    char owner[DF_GEV_SENDER_MAX + 1];
    df_stored_task_t *st = task_stored(tr, t);
    df_sched_source_t *src = NULL;
    uint32_t *load = NULL, *idx = NULL, *coming = NULL;
    int32_t *part = NULL;
    uint8_t *want = NULL, *late = NULL;
    df_sched_assign_t *as = NULL;
    df_gossip_member_t m;
    size_t ns = 0, na, nwant = 0, nlate = 0, others = 0, npart = 0;
    uint64_t now = df_now_ms();
    bool missing_held = false, missing = false, seed_owner, spreading = false, owner_only = false;
    uint32_t first_nodigest = UINT32_MAX;

    out->state = DF_PULL_WAIT;
    out->wait_ms = 200;
    out->swarm_moving = t->moved_ms && now - t->moved_ms < SWARM_MOVING_MS;
    if (!t->shaped || !st)
        return;
    task_owner(tr, t, owner, sizeof(owner));
    if (df_stored_task_complete(st)) {
        df_digest_t d = {.alg = DF_DIGEST_SHA256, .len = 32};
        char text[DF_DIGEST_STR_MAX];
        df_gossip_member_t om;
        if (!t->done_ms)
            t->done_ms = now;
        if (!t->file_known && now - t->done_ms < FILE_WAIT_MS) {
            /* The owner's whole-file digest is what the file is checked
             * against (bounded wait).  The owner hashes as its pieces land:
             * the last ones may still be in the hash; others ask it. */
            if (strcmp(owner, tr->name) == 0) {
                owner_hash_step(tr, t);
                if (!t->file_known) {
                    out->wait_ms = 50;
                    return;
                }
            } else if (!c->seed && member_alive(tr, owner, &om)) {
                if (now - t->sync_digest_ms >= SYNC_EVERY_MS) {
                    t->sync_digest_ms = now;
                    send_sync(tr, t, DF_GEV_SYNC_DIGEST, t->piece_count, owner);
                }
                return;
            }
        }
        out->state = DF_PULL_DONE;
        if (t->file_known)
            memcpy(d.value, t->file_sha256, 32);
        if (t->file_known || df_stored_task_digest(st, &d)) {
            df_digest_format(&d, text, sizeof(text));
            df_strlcpy(out->digest, text, sizeof(out->digest));
        }
        return;
    }
    /* Our seed download reads the origin only while we own the task; if
     * another member's shape seated it meanwhile, it is an ordinary
     * participant. */
    seed_owner = c->seed && strcmp(owner, tr->name) == 0;
    /* expire assignments whose results never came (a download died) */
    for (uint32_t p = 0; p < t->piece_count; p++)
        if (df_bitmap_test(t->assigned, p) && now - t->assigned_ms[p] > ASSIGN_EXPIRE_MS)
            release_assigned(t, p);
    src = calloc(t->nholders + 1, sizeof(*src));
    load = calloc(t->nholders + 1, sizeof(*load));
    idx = calloc(t->nholders + 1, sizeof(*idx));
    want = calloc(df_bitmap_bytes(t->piece_count), 1);
    late = calloc(df_bitmap_bytes(t->piece_count), 1);
    as = calloc(DF_PULL_MAX_ASSIGN, sizeof(*as));
    part = calloc(t->nholders + 1, sizeof(*part));
    coming = calloc(t->piece_count, sizeof(*coming));
    if (!src || !load || !idx || !want || !late || !as || !part || !coming)
        goto out;
    /* Other participants alive: the owner's uplink is then shared by all of
     * them, and each takes one piece from it at a time. */
    for (size_t i = 0; i < t->nholders; i++) {
        const holder_t *h = &t->holders[i];
        if (strcmp(h->name, owner) == 0 || !h->have)
            continue;
        if (strcmp(h->name, tr->name) == 0) {
            part[npart++] = (int32_t)i;
        } else if (member_alive(tr, h->name, &m)) {
            part[npart++] = (int32_t)i;
            others++;
        }
    }
    for (size_t i = 0; i < t->nholders; i++) {
        holder_t *h = &t->holders[i];
        if (!h->have || strcmp(h->name, tr->name) == 0 || !member_alive(tr, h->name, &m) || member_port(&m) == 0 ||
            (h->refused_ms && now - h->refused_ms < REFUSED_MS))
            continue;
        src[ns].have = h->have;
        src[ns].is_seed = strcmp(h->name, owner) == 0;
        src[ns].excluded = now < h->slow_until_ms;
        src[ns].slots = !src[ns].is_seed ? SLOTS_PEER : others && !seed_owner ? SLOTS_OWNER_SHARED : SLOTS_OWNER;
        load[ns] = h->load;
        idx[ns] = (uint32_t)i;
        ns++;
    }
    for (uint32_t p = 0; p < t->piece_count; p++) {
        size_t held = 0, held_peers = 0;
        if (df_stored_task_has_piece(st, p))
            continue;
        missing = true;
        for (size_t s = 0; s < ns; s++)
            if (df_bitmap_test(src[s].have, p)) {
                held++;
                if (!src[s].is_seed)
                    held_peers++;
            }
        if (held)
            missing_held = true;
        if (held && !held_peers)
            owner_only = true;
        if (first_nodigest == UINT32_MAX && !df_bitmap_test(t->digest_known, p))
            first_nodigest = p;
        if (df_bitmap_test(t->assigned, p) || !df_bitmap_test(t->digest_known, p) || held == 0)
            continue;
        /* Frontier: a piece only the owner has goes to its designated
         * participant first (the seed download takes what it needs); the
         * others may take it after FRONTIER_GRACE_MS, and only when there
         * is nothing else for us to fetch (no owner-only piece designated
         * to us, nothing from a peer), so that the owner's uplink carries
         * each piece once.  The grace is a fallback for a designated
         * participant that does not fetch (its download ended): a designated
         * fetch shares the owner's uplink with the others' and takes
         * seconds, and every copy taken beside it slows them all. */
        if (held_peers == 0 && !seed_owner && !designated_here(tr, t, p, owner)) {
            if (t->owner_since[p] == 0 || now - t->owner_since[p] < FRONTIER_GRACE_MS)
                continue;
            df_bitmap_set(late, p);
            nlate++;
            continue;
        }
        if (held_peers && !seed_owner && !spread_admitted(tr, t, p, held_peers, part, npart, now)) {
            spreading = true;
            continue;
        }
        df_bitmap_set(want, p);
        nwant++;
    }
    if (nlate && !nwant && !spreading) {
        for (size_t b = 0; b < df_bitmap_bytes(t->piece_count); b++)
            want[b] |= late[b];
        nwant += nlate;
    }
    if (seed_owner && !missing_held && missing) {
        /* Nothing left that a peer holds: read the origin from here. */
        out->state = DF_PULL_ERROR;
        snprintf(out->message, sizeof(out->message), "gossip: this node owns task %.16s and reads the origin",
                 t->id);
        goto out;
    }
    if (nwant == 0 || ns == 0) {
        /* Gossip is lossy: a broadcast waits in every member's queue behind
         * newer ones (least transmitted, newest first) and can be crowded
         * out or age out of Serf's 512-slot window.  When our download
         * starves, ask point to point (SYNC queries): the owner for the
         * digests we lack, everyone for what they hold.  The want is
         * re-sent too, so that a new owner knows the task is wanted. */
        if (missing && !seed_owner && !spreading) {
            /* (a piece held back by the spread rule is coming: no repair) */
            if (!t->starved_ms)
                t->starved_ms = now;
            if (now - t->starved_ms >= SYNC_AFTER_MS) {
                if (first_nodigest != UINT32_MAX && strcmp(owner, tr->name) != 0 &&
                    now - t->sync_digest_ms >= SYNC_EVERY_MS) {
                    t->sync_digest_ms = now;
                    send_sync(tr, t, DF_GEV_SYNC_DIGEST, first_nodigest, owner);
                }
                if (now - t->sync_have_ms >= SYNC_EVERY_MS) {
                    t->sync_have_ms = now;
                    send_sync(tr, t, DF_GEV_SYNC_HAVE, 0, NULL);
                }
            }
            if (now - t->starved_ms >= STARVED_MS && now - t->want_sent_ms >= WANT_RESEND_MS) {
                t->want_sent_ms = now;
                send_start(tr, t, false);
            }
        }
        goto out;
    }
    t->starved_ms = 0;
    {
        df_sched_input_t in = {
            .piece_count = t->piece_count,
            .want = want,
            .sources = src,
            .nsources = ns,
            .max_assign = DF_MIN(DF_MAX(c->want, 1u), (uint32_t)DF_PULL_MAX_ASSIGN),
            .rand_seed = now ^ (uint64_t)(uintptr_t)c,
            /* Rule 6 with nothing known to be coming: the owner does not
             * serve a piece a peer holds (our slots at its holders being
             * full is no reason to spend the owner's uplink on a copy)
             * while some piece we lack is still the owner's alone. */
            .coming = coming,
            .seed_piece_limit = owner_only ? 1 : 0,
        };
        na = df_sched_pick(&in, load, as);
    }
    for (size_t i = 0; i < na; i++) {
        df_assignment_t *a = &out->assign[out->nassign];
        holder_t *h = &t->holders[idx[as[i].source]];
        uint32_t p = as[i].piece;
        char ip[INET6_ADDRSTRLEN];
        if (!member_alive(tr, h->name, &m) ||
            !inet_ntop(m.addr_len == 4 ? AF_INET : AF_INET6, m.addr, ip, sizeof(ip)))
            continue;
        a->piece = p;
        df_piece_span(t->length, t->piece_size, p, &a->offset, &a->length);
        memcpy(a->sha256, t->digests + (size_t)p * 32, 32);
        a->has_sha256 = true;
        df_strlcpy(a->src_id, h->name, sizeof(a->src_id));
        df_strlcpy(a->src_ip, ip, sizeof(a->src_ip));
        a->src_port = member_port(&m);
        a->src_is_seed = src[as[i].source].is_seed;
        df_bitmap_set(t->assigned, p);
        t->assigned_ms[p] = now;
        t->assigned_src[p] = (int32_t)idx[as[i].source];
        h->load++;
        out->nassign++;
    }
    if (out->nassign)
        out->state = DF_PULL_ASSIGN;
out:
    free(src);
    free(load);
    free(idx);
    free(want);
    free(late);
    free(as);
    free(part);
    free(coming);
}

static int gt_pull(df_tracker_t *base, const df_pull_req_t *req, df_pull_cb cb, void *arg)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    task_t *t = task_find(tr, req->task_id);
    call_t *c = call_new(tr, CALL_PULL, (void *)cb, arg);

    if (!c)
        return -ENOMEM;
    c->task = t;
    c->seed = strcmp(req->peer_id, tr->seed_id) == 0;
    c->want = req->want;
    if (t)
        apply_results(t, req->results, req->nresults);
    if (t && !c->seed)
        t->pulled_ms = df_now_ms();
    call_arm(c, 0);
    return 0;
}

static int done_later(gossip_tracker_t *tr, df_tracker_done_cb cb, void *arg)
{
    call_t *c;
    if (!cb)
        return 0;
    c = call_new(tr, CALL_DONE, (void *)cb, arg);
    if (!c)
        return -ENOMEM;
    call_arm(c, 0);
    return 0;
}

static int gt_report(df_tracker_t *base, const df_pull_req_t *req, df_tracker_done_cb cb, void *arg)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    task_t *t = task_find(tr, req->task_id);

    if (t)
        apply_results(t, req->results, req->nresults);
    return done_later(tr, cb, arg);
}

static void send_remove(gossip_tracker_t *tr, task_t *t)
{
    uint8_t buf[512];
    send_event(tr, buf, df_gev_encode_simple(buf, event_cap(), DF_GEV_REMOVE, tr->name, t->idb));
    if (t->announced)
        memset(t->announced, 0, df_bitmap_bytes(t->piece_count));
}

static int gt_service_down(df_tracker_t *base, const char *peer_id, const char *task_id, df_tracker_done_cb cb,
                           void *arg)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;

    (void)peer_id;
    if (task_id) {
        task_t *t = task_find(tr, task_id);
        if (t) {
            send_remove(tr, t);
            if (t->stored) {
                df_stored_task_unref(t->stored);
                t->stored = NULL;
            }
        }
    } else {
        /* The peer leaves: tell the cluster (Serf leave intent). */
        tr->leaving = true;
        df_gossip_leave(df_gossip_io_node(tr->io), df_now_ms());
        df_gossip_io_pump(tr->io);
    }
    return done_later(tr, cb, arg);
}

static int gt_report_error(df_tracker_t *base, const char *task_id, const char *peer_id, const char *src_id,
                           uint32_t piece, df_report_kind_t kind, df_tracker_done_cb cb, void *arg)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    task_t *t = task_find(tr, task_id);

    (void)peer_id;
    if (t && t->shaped && piece < t->piece_count) {
        holder_t *h = NULL;
        for (size_t i = 0; i < t->nholders; i++)
            if (strcmp(t->holders[i].name, src_id) == 0)
                h = &t->holders[i];
        /* Slow is no fault of the holder (it may be busy serving others):
         * this host's downloads leave it alone for a while, and nothing is
         * said to the cluster.  Otherwise what gossip said is stale or the
         * bytes were bad: do not offer that copy again. */
        if (h && kind == DF_REPORT_SLOW) {
            h->slow_until_ms = df_now_ms() + DF_ENDGAME_AVOID_MS;
        } else if (h) {
            if (h->have)
                df_bitmap_clear(h->have, piece);
            /* and the engine refuses that source from now on: offering it
             * other pieces would only bring them back */
            h->refused_ms = df_now_ms();
        }
        if (kind == DF_REPORT_DIGEST)
            DF_LOG_W("gossip: %s served a bad piece %u of task %.16s", src_id, piece, task_id);
    }
    return done_later(tr, cb, arg);
}

static int gt_heartbeat(df_tracker_t *base, const char *peer_id, df_tracker_done_cb cb, void *arg)
{
    (void)peer_id;
    /* Liveness is the gossip layer's job (probes). */
    return done_later((gossip_tracker_t *)base, cb, arg);
}

static void call_fire(evutil_socket_t fd, short what, void *arg)
{
    call_t *c = arg;
    gossip_tracker_t *tr = c->tr;
    task_t *t = c->task;
    uint64_t now = df_now_ms();

    (void)fd;
    (void)what;
    switch (c->kind) {
    case CALL_REGISTER:
        if (!c->reg->task_id[0] && !c->reg->status) {
            /* still parked */
            if (t->shaped) {
                fill_register_ok(tr, c);
            } else if (now - c->since_ms > REGISTER_WAIT_MS) {
                c->reg->status = DF_ETRACKER;
                snprintf(c->reg->message, sizeof(c->reg->message),
                         "gossip: no owner announced task %.16s within %us", t->id, REGISTER_WAIT_MS / 1000);
            } else {
                if (is_owner(tr, t) && owner_may_act(tr, t, now)) {
                    start_head(tr, t, (const char *const *)(c->seed ? c->headers : t->headers));
                } else if (is_owner(tr, t)) {
                    if (now - t->ask_ms >= ASK_EVERY_MS) {
                        t->ask_ms = now;
                        send_sync(tr, t, DF_GEV_SYNC_SHAPE, 0, NULL);
                    }
                } else if (now - t->want_sent_ms >= WANT_RESEND_MS && !want_task(tr, c, now)) {
                    goto answer;
                }
                call_arm(c, 200);
                return;
            }
        }
    answer: {
            df_register_res_t res = *c->reg;
            df_register_cb cb = c->cb.reg;
            void *a = c->arg;
            call_free(c);
            cb(&res, a);
        }
        return;
    case CALL_PULL: {
        df_pull_res_t *res = calloc(1, sizeof(*res));
        df_pull_cb cb = c->cb.pull;
        void *a = c->arg;
        if (!res) {
            df_pull_res_t oom = {.status = -ENOMEM};
            call_free(c);
            cb(&oom, a);
            return;
        }
        if (!t)
            res->state = DF_PULL_LOST;
        else
            fill_pull(tr, c, res);
        call_free(c);
        cb(res, a);
        free(res);
        return;
    }
    case CALL_DONE: {
        df_tracker_done_cb cb = c->cb.done;
        void *a = c->arg;
        int st = c->status;
        call_free(c);
        cb(st, a);
        return;
    }
    }
}

/* ------------------------------------------------------------ seeding */

static void maybe_start_seed(gossip_tracker_t *tr, task_t *t)
{
    df_stored_task_t *st;
    uint64_t now = df_now_ms();
    int rc;

    if (t->seeding || !t->url || !tr->o.start_seed || tr->leaving)
        return;
    if (t->seed_failed_ms && now - t->seed_failed_ms < SEED_RETRY_MS)
        return;
    if (!t->wanted_ms || now - t->wanted_ms > WANTED_RECENT_MS)
        return;
    st = task_stored(tr, t);
    if (st && df_stored_task_complete(st))
        return;
    if (!is_owner(tr, t))
        return;
    if (!t->shaped) {
        /* Not a seed before we know we own it: ask first (owner_may_act),
         * or a seed started now may find another owner seated and end up
         * fetching beside our own download of the task. */
        if (!owner_may_act(tr, t, now)) {
            if (now - t->ask_ms >= ASK_EVERY_MS) {
                t->ask_ms = now;
                send_sync(tr, t, DF_GEV_SYNC_SHAPE, 0, NULL);
            }
            return;
        }
    }
    if (t->shaped) {
        /* a takeover: tell the others who owns the task now */
        seat_owner(t, tr->name);
        send_start(tr, t, true);
    }
    DF_LOG_I("gossip: this node owns task %.16s: seeding %s", t->id, t->url);
    t->seeding = true;
    tr->stats.seeds_started++;
    tr->seeding_now = t;
    t->seed_had_headers = !strv_empty(t->headers);
    t->headers_new = false;
    rc = tr->o.start_seed(tr->o.seed_arg, t->url, t->id, (const char *const *)t->headers);
    tr->seeding_now = NULL;
    if (rc < 0) {
        DF_LOG_W("gossip: cannot start the seed of task %.16s: %s", t->id, df_strerror(rc));
        t->seeding = false;
        t->seed_failed_ms = now;
    }
}

void df_tracker_gossip_seed_done(df_tracker_t *base, const char *task_id, int status)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    task_t *t = task_find(tr, task_id);

    if (!t)
        return;
    t->seeding = false;
    /* Headers that came while it ran (a private origin refused the seed
     * without them) are tried at once, not after SEED_RETRY_MS. */
    if (status < 0 && !t->headers_new)
        t->seed_failed_ms = df_now_ms();
    t->headers_new = false;
}

int df_tracker_gossip_seed_request(df_tracker_t *base, const void *body, size_t len, char *msg, size_t cap)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    df_seedfwd_t r;
    uint64_t now = wall_ms();
    size_t n = 0;
    task_t *t;
    int rc, code;

    if (!tr->has_key && !tr->o.forward_headers) {
        df_errf(msg, cap, "this node takes no origin headers in clear (no --encrypt, no --gossip-forward-headers)");
        return 403;
    }
    rc = df_seedfwd_decode(tr->has_key ? &tr->kr : NULL, body, len, &r, msg, cap);
    if (rc < 0) {
        DF_LOG_W("gossip: refused a seed request: %s", msg);
        return rc == DF_ETOOBIG ? 413 : rc == -EBADMSG ? 403 : rc == -ENOMEM ? 503 : 400;
    }
    code = 204;
    if (strcmp(r.to, tr->name) != 0) {
        df_errf(msg, cap, "addressed to another member");
        code = 421;
    } else if (r.ts_ms + DF_SEEDFWD_SKEW_MS < now || r.ts_ms > now + DF_SEEDFWD_SKEW_MS) {
        df_errf(msg, cap, "stale (its time is more than %u s from ours)", DF_SEEDFWD_SKEW_MS / 1000);
        code = 403;
    } else if (!(t = task_get(tr, r.task_id))) {
        df_errf(msg, cap, "too many tasks");
        code = 503;
    } else if (t->url && strcmp(t->url, r.url) != 0) {
        df_errf(msg, cap, "another url for this task");
        code = 409;
    } else if (!t->url && !(t->url = strdup(r.url))) {
        df_errf(msg, cap, "out of memory");
        code = 503;
    } else {
        while (r.headers[n])
            n++;
        if (n)
            task_set_headers(t, r.headers);
        DF_LOG_I("gossip: task %.16s: %s handed us %zu origin header line(s) for the seed", t->id, r.from, n);
        t->wanted_ms = df_now_ms();
        t->seed_failed_ms = 0;
        maybe_start_seed(tr, t);
        msg[0] = '\0';
    }
    if (code != 204)
        DF_LOG_W("gossip: refused a seed request from %s: %s", r.from, msg);
    df_seedfwd_clear(&r);
    return code;
}

/* ------------------------------------------------------------ events in */

static void on_gev(gossip_tracker_t *tr, const df_gev_t *e, const uint8_t *raw, size_t len);

/* Keeps an event about a task not shaped yet (see pending_t). */
static void pending_add(gossip_tracker_t *tr, const uint8_t task[32], const uint8_t *raw, size_t len)
{
    pending_t *pe = &tr->pending[tr->pending_next];
    uint8_t *copy = malloc(len);

    if (!copy)
        return;
    free(pe->p);
    memcpy(pe->task, task, 32);
    memcpy(copy, raw, len);
    pe->p = copy;
    pe->len = len;
    tr->pending_next = (tr->pending_next + 1) % PENDING_MAX;
}

/* The task just got its shape: what overtook it counts now. */
static void pending_replay(gossip_tracker_t *tr, task_t *t)
{
    for (size_t i = 0; i < PENDING_MAX; i++) {
        pending_t *pe = &tr->pending[i];
        uint8_t *p = pe->p;
        size_t len = pe->len;
        df_gev_t e;
        if (!p || memcmp(pe->task, t->idb, 32) != 0)
            continue;
        pe->p = NULL;
        pe->len = 0;
        if (df_gev_decode(p, len, &e) == 0)
            on_gev(tr, &e, p, len);
        free(p);
    }
}

/* Our HAVE (full), as a query response: as many runs as fit; a set that
 * does not fit whole goes as a delta (never "full" when it is not). */
static int encode_own_have(gossip_tracker_t *tr, task_t *t, uint8_t *buf, size_t cap)
{
    df_stored_task_t *st = task_stored(tr, t);
    uint32_t cursor = 0;
    int n;

    if (!st)
        return -ENOENT;
    n = df_gev_encode_have(buf, cap, tr->name, t->idb, true, df_stored_task_bitmap(st), t->piece_count, &cursor);
    if (n >= 0 && cursor < t->piece_count) {
        cursor = 0;
        n = df_gev_encode_have(buf, cap, tr->name, t->idb, false, df_stored_task_bitmap(st), t->piece_count,
                               &cursor);
    }
    return n;
}

/* Owner: our digests from piece `first` on (skipping pieces we do not
 * hold yet), or the whole file's when first is past the last piece. */
static int encode_own_digests(gossip_tracker_t *tr, task_t *t, uint32_t first, uint8_t *buf, size_t cap)
{
    df_stored_task_t *st = task_stored(tr, t);
    uint8_t dg[DF_GEV_DIGESTS_MAX * 32];
    size_t fit = df_gev_digests_fit(cap, tr->name), n = 0;

    if (!st)
        return -ENOENT;
    if (first >= t->piece_count)
        return t->file_known ? df_gev_encode_file(buf, cap, tr->name, t->idb, t->file_sha256) : -ENOENT;
    while (first < t->piece_count && !df_stored_task_piece_digest(st, first, dg))
        first++;
    while (first + n < t->piece_count && n < fit && df_stored_task_piece_digest(st, first + (uint32_t)n, dg + n * 32))
        n++;
    return n ? df_gev_encode_digest(buf, cap, tr->name, t->idb, first, dg, n) : -ENOENT;
}

/* A SYNC query: answer point to point with what was asked (see
 * gossip_events.h).  Only the owner answers for digests. */
static void on_sync_query(gossip_tracker_t *tr, const df_gossip_event_t *ev, const df_gev_t *q)
{
    task_t *t;
    uint8_t buf[RESPONSE_CAP];
    char id[65];
    int n;

    task_hex(q->task, id);
    t = task_find(tr, id);
    if (!t || !t->shaped || strcmp(q->sender, tr->name) == 0)
        return;
    if (q->what == DF_GEV_SYNC_SHAPE) {
        if (!is_owner(tr, t))
            return;
        n = df_gev_encode_start(buf, sizeof(buf), tr->name, t->idb, t->length, t->piece_size, t->url);
    } else if (q->what == DF_GEV_SYNC_DIGEST) {
        if (!is_owner(tr, t))
            return;
        n = encode_own_digests(tr, t, q->first, buf, sizeof(buf));
    } else {
        n = encode_own_have(tr, t, buf, sizeof(buf));
    }
    if (n <= 0)
        return;
    if (df_gossip_respond(df_gossip_io_node(tr->io), ev->ltime, ev->query_id, buf, (size_t)n, df_now_ms()) == 0)
        tr->stats.sync_answered++;
    df_gossip_io_pump(tr->io);
}

/* Asks (a Serf query) for what a starving download lacks: digests from the
 * owner alone (node filter), holders' HAVE from everyone.  Answers come
 * back point to point as query responses and go through on_gev. */
static void send_sync(gossip_tracker_t *tr, task_t *t, uint8_t what, uint32_t first, const char *owner)
{
    uint8_t buf[128];
    const char *nodes[1] = {owner};
    uint32_t id;
    int n = df_gev_encode_sync(buf, sizeof(buf), tr->name, t->idb, what, first);

    if (n < 0 || df_gossip_query(df_gossip_io_node(tr->io), DF_GEV_NAME, buf, (size_t)n, nodes,
                                 what == DF_GEV_SYNC_DIGEST ? 1 : 0, false, 0, df_now_ms(), &id) < 0) {
        tr->stats.events_dropped++;
        return;
    }
    tr->stats.sync_sent++;
    df_gossip_io_pump(tr->io);
}

static void on_gev(gossip_tracker_t *tr, const df_gev_t *e, const uint8_t *raw, size_t len)
{
    task_t *t;
    holder_t *h;
    uint64_t now = df_now_ms();
    char owner[DF_GEV_SENDER_MAX + 1];

    if (strcmp(e->sender, tr->name) == 0)
        return; /* our own, relayed back */
    if (e->kind == DF_GEV_RECOVER) {
        /* A member joined or restarted: owners re-send their shapes (which
         * seat them there; at most once per WANT_RESEND_MS per task),
         * holders re-announce in full (at most once per RECOVER_QUIET_MS,
         * however many join).  Digests are not re-broadcast: whoever needs
         * them asks the owner (SYNC). */
        bool full = now - tr->last_recover_ms >= RECOVER_QUIET_MS;
        if (full)
            tr->last_recover_ms = now;
        for (t = tr->tasks; t; t = t->next) {
            if (!t->shaped)
                continue;
            if (full) {
                memset(t->announced, 0, df_bitmap_bytes(t->piece_count));
                t->announce_full = true;
            }
            if (now - t->repair_ms >= WANT_RESEND_MS && is_owner(tr, t)) {
                t->repair_ms = now;
                send_start(tr, t, true);
            }
        }
        return;
    }
    if (e->kind == DF_GEV_SYNC)
        return; /* only ever a query */
    t = task_get_bin(tr, e->task);
    if (!t)
        return;
    if (!t->shaped && (e->kind == DF_GEV_HAVE || e->kind == DF_GEV_DIGEST || e->kind == DF_GEV_FILE)) {
        holder_get(t, e->sender, NULL);
        pending_add(tr, e->task, raw, len);
        return;
    }
    switch (e->kind) {
    case DF_GEV_START:
        if (e->url_len && !t->url) {
            t->url = strndup(e->url, e->url_len);
        }
        holder_get(t, e->sender, NULL);
        if (e->length) {
            /* The first shape seats its sender as owner when we know of
             * none (we may have joined after the owner was chosen);
             * after that, shapes from the owner or a member above it. */
            df_gossip_member_t om;
            bool seated = t->owner[0] && (strcmp(t->owner, tr->name) == 0 || member_alive(tr, t->owner, &om));
            if (may_vouch(tr, t, e->sender) || (!seated && !t->shaped && !t->head_pending)) {
                bool was = t->shaped;
                int rc = task_shape(t, e->length, e->piece_size);
                if (rc == -EEXIST) {
                    DF_LOG_W("gossip: %s announced another shape for task %.16s; ignored", e->sender, t->id);
                } else if (rc == 0) {
                    if (!seated)
                        seat_owner(t, e->sender);
                    if (!was)
                        pending_replay(tr, t);
                }
            }
        } else {
            t->wanted_ms = now;
            /* A want: the owner answers with the shape (a late Register
             * waits for it); pieces and digests are repaired by SYNC
             * queries from whoever starves, not by re-broadcasting. */
            if (t->shaped && now - t->repair_ms >= WANT_RESEND_MS && is_owner(tr, t)) {
                t->repair_ms = now;
                send_start(tr, t, true);
            }
            maybe_start_seed(tr, t);
        }
        break;
    case DF_GEV_HAVE:
        h = holder_get(t, e->sender, NULL);
        if (!h)
            break;
        task_owner(tr, t, owner, sizeof(owner));
        if (e->full)
            memset(h->have, 0, df_bitmap_bytes(t->piece_count));
        for (size_t i = 0; i < e->nruns; i++)
            for (uint32_t p = e->runs[i].first; p - e->runs[i].first < e->runs[i].count && p < t->piece_count; p++) {
                if (!df_bitmap_test(h->have, p) && strcmp(e->sender, tr->name) != 0)
                    t->moved_ms = now;
                df_bitmap_set(h->have, p);
                if (strcmp(e->sender, owner) == 0 && !t->owner_since[p])
                    t->owner_since[p] = now;
                else if (strcmp(e->sender, owner) != 0 && !t->peer_since[p])
                    t->peer_since[p] = now;
            }
        break;
    case DF_GEV_DIGEST:
        if (!may_vouch(tr, t, e->sender))
            break;
        for (size_t i = 0; i < e->ndigests && e->first + i < t->piece_count; i++) {
            uint32_t p = e->first + (uint32_t)i;
            if (df_bitmap_test(t->digest_known, p)) {
                if (memcmp(t->digests + (size_t)p * 32, e->digests + i * 32, 32) != 0)
                    DF_LOG_W("gossip: %s sent another digest for piece %u of task %.16s; kept the first",
                             e->sender, p, t->id);
                continue;
            }
            memcpy(t->digests + (size_t)p * 32, e->digests + i * 32, 32);
            df_bitmap_set(t->digest_known, p);
            /* news: a starving download may ask for the next ones at once */
            t->sync_digest_ms = 0;
        }
        break;
    case DF_GEV_FILE:
        if (!may_vouch(tr, t, e->sender))
            break;
        if (t->file_known && memcmp(t->file_sha256, e->digests, 32) != 0)
            DF_LOG_W("gossip: %s sent another file digest for task %.16s; kept the first", e->sender, t->id);
        else if (!t->file_known) {
            memcpy(t->file_sha256, e->digests, 32);
            t->file_known = true;
        }
        break;
    case DF_GEV_REMOVE:
        for (size_t i = 0; i < t->nholders; i++)
            if (strcmp(t->holders[i].name, e->sender) == 0 && t->holders[i].have)
                memset(t->holders[i].have, 0, df_bitmap_bytes(t->piece_count));
        break;
    default:
        break;
    }
}

static void on_node_event(const df_gossip_event_t *ev, void *arg)
{
    gossip_tracker_t *tr = arg;
    df_gev_t e;

    switch (ev->kind) {
    case DF_GOSSIP_EV_USER:
        if (strcmp(ev->name, DF_GEV_NAME) != 0)
            return;
        tr->stats.events_received++;
        if (df_gev_decode(ev->payload, ev->payload_len, &e) < 0) {
            tr->stats.events_dropped++;
            return;
        }
        on_gev(tr, &e, ev->payload, ev->payload_len);
        break;
    case DF_GOSSIP_EV_QUERY:
        if (strcmp(ev->name, DF_GEV_NAME) != 0)
            return;
        tr->stats.events_received++;
        if (df_gev_decode(ev->payload, ev->payload_len, &e) < 0 || e.kind != DF_GEV_SYNC) {
            tr->stats.events_dropped++;
            return;
        }
        on_sync_query(tr, ev, &e);
        break;
    case DF_GOSSIP_EV_QUERY_RESPONSE:
        /* ev->name is the responder; the payload must say the same */
        tr->stats.events_received++;
        if (df_gev_decode(ev->payload, ev->payload_len, &e) < 0 || strcmp(e.sender, ev->name) != 0 ||
            (e.kind != DF_GEV_HAVE && e.kind != DF_GEV_DIGEST && e.kind != DF_GEV_FILE &&
             !(e.kind == DF_GEV_START && e.length))) {
            tr->stats.events_dropped++;
            return;
        }
        on_gev(tr, &e, ev->payload, ev->payload_len);
        break;
    case DF_GOSSIP_EV_MEMBER_FAILED:
        tr->member_change_ms = df_now_ms();
        tr->stats.probe_failures++;
        DF_LOG_I("gossip: member %s failed", ev->name);
        break;
    case DF_GOSSIP_EV_MEMBER_JOIN:
    case DF_GOSSIP_EV_MEMBER_LEAVE:
        tr->member_change_ms = df_now_ms();
        DF_LOG_D("gossip: member %s joined or left", ev->name);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------ announce */

static void flush_task(gossip_tracker_t *tr, task_t *t, unsigned *budget)
{
    df_stored_task_t *st = task_stored(tr, t);
    uint8_t buf[512], *delta;
    const uint8_t *bm;
    size_t bytes;
    bool any = false, owner;
    uint32_t cursor = 0;

    if (!st || !t->shaped || *budget == 0)
        return;
    bm = df_stored_task_bitmap(st);
    bytes = df_bitmap_bytes(t->piece_count);
    owner = is_owner(tr, t);
    if (owner && t->file_known && !t->file_sent) {
        t->file_sent = true;
        send_event(tr, buf, df_gev_encode_file(buf, event_cap(), tr->name, t->idb, t->file_sha256));
        (*budget)--;
    }
    /* DIGEST first: a HAVE without digests is of no use to anyone. */
    if (owner) {
        size_t fit = df_gev_digests_fit(event_cap(), tr->name);
        uint8_t dg[DF_GEV_DIGESTS_MAX * 32];
        for (uint32_t p = 0; p < t->piece_count && *budget > 0;) {
            uint32_t first, n = 0;
            if (!df_bitmap_test(bm, p) || df_bitmap_test(t->digest_sent, p)) {
                p++;
                continue;
            }
            first = p;
            while (p < t->piece_count && n < fit && df_bitmap_test(bm, p) && !df_bitmap_test(t->digest_sent, p) &&
                   df_stored_task_piece_digest(st, p, dg + (size_t)n * 32)) {
                df_bitmap_set(t->digest_sent, p);
                /* our own digests are the task's from now on */
                if (!df_bitmap_test(t->digest_known, p)) {
                    memcpy(t->digests + (size_t)p * 32, dg + (size_t)n * 32, 32);
                    df_bitmap_set(t->digest_known, p);
                }
                n++;
                p++;
            }
            if (n == 0) {
                p++;
                continue;
            }
            send_event(tr, buf, df_gev_encode_digest(buf, event_cap(), tr->name, t->idb, first, dg, n));
            (*budget)--;
        }
    }
    delta = malloc(bytes);
    if (!delta)
        return;
    for (size_t i = 0; i < bytes; i++) {
        delta[i] = t->announce_full ? bm[i] : (uint8_t)(bm[i] & ~t->announced[i]);
        any |= delta[i] != 0;
    }
    if (!owner) {
        /* only pieces we can vouch for with the owner's digest... all of
         * ours were verified against it, so everything we hold */
    }
    while (any && cursor < t->piece_count && *budget > 0) {
        uint32_t from = cursor;
        int n = df_gev_encode_have(buf, event_cap(), tr->name, t->idb, t->announce_full && from == 0, delta,
                                   t->piece_count, &cursor);
        if (n < 0)
            break;
        send_event(tr, buf, n);
        (*budget)--;
        for (uint32_t p = from; p < cursor; p++)
            if (df_bitmap_test(delta, p))
                df_bitmap_set(t->announced, p);
        if (cursor == from)
            break;
    }
    if (cursor >= t->piece_count)
        t->announce_full = false;
    free(delta);
}

/* ------------------------------------------------------------ tick */

/* Owner: extends the whole-file sha256 over the pieces present from the
 * start of the file, at most HASH_BYTES_PER_TICK per call so the loop is
 * never held long; the digest is known about when the seed ends, then
 * sent (FILE) and recorded in the store. */
static void owner_hash_step(gossip_tracker_t *tr, task_t *t)
{
    df_stored_task_t *st;
    uint64_t budget = HASH_BYTES_PER_TICK;
    df_digest_t d;

    if (!t->shaped || t->file_known || !(st = task_stored(tr, t)) || !df_stored_task_has_piece(st, 0) ||
        !is_owner(tr, t))
        return;
    if (!tr->hash_buf && !(tr->hash_buf = malloc(HASH_CHUNK)))
        return;
    if (!t->fhash && !(t->fhash = df_hasher_new(DF_DIGEST_SHA256)))
        return;
    while (budget > 0 && t->fhash_pos < t->length) {
        uint64_t off, len, n;
        df_piece_span(t->length, t->piece_size, (uint32_t)(t->fhash_pos / t->piece_size), &off, &len);
        if (!df_stored_task_has_piece(st, (uint32_t)(t->fhash_pos / t->piece_size)))
            return;
        n = DF_MIN(DF_MIN(off + len - t->fhash_pos, (uint64_t)HASH_CHUNK), budget);
        if (df_stored_task_read(st, t->fhash_pos, tr->hash_buf, (size_t)n) < 0) {
            DF_LOG_W("gossip: cannot read task %.16s to hash it", t->id);
            df_hasher_free(t->fhash);
            t->fhash = NULL;
            t->fhash_pos = 0;
            return;
        }
        df_hasher_update(t->fhash, tr->hash_buf, (size_t)n);
        t->fhash_pos += n;
        budget -= n;
    }
    if (t->fhash_pos < t->length)
        return;
    df_hasher_final(t->fhash, &d);
    df_hasher_free(t->fhash);
    t->fhash = NULL;
    memcpy(t->file_sha256, d.value, 32);
    t->file_known = true;
    df_stored_task_set_digest(st, &d);
}

/* A --join name's round: join (up to 4 of its addresses) only while this
 * node is alone, as for a literal.  A failure is logged only then, too. */
static void join_dns_cb(const df_dns_addr_t *addrs, size_t n, const char *error, void *arg)
{
    join_t *j = arg;
    gossip_tracker_t *tr = j->tr;

    if (tr->leaving || df_gossip_count(df_gossip_io_node(tr->io), DF_GOSSIP_STATUS_ALIVE) > 1)
        return;
    if (error) {
        DF_LOG_W("gossip: cannot resolve --join %s: %s", j->spec, error);
        return;
    }
    for (size_t i = 0; i < n && i < 4; i++)
        df_gossip_io_join(tr->io, addrs[i].addr, addrs[i].addr_len, addrs[i].port);
}

/* Joins every literal now; a name gets its watch at the first call (its
 * first round runs at once, then every JOIN_RETRY_MS). */
static void do_joins(gossip_tracker_t *tr)
{
    for (size_t i = 0; i < tr->njoins; i++) {
        join_t *j = &tr->joins[i];
        if (j->addr_len) {
            df_gossip_io_join(tr->io, j->addr, j->addr_len, j->port);
        } else if (!j->watch) {
            df_dns_watch_opts_t d = {.base = tr->o.base, .target = j->spec, .interval_ms = JOIN_RETRY_MS,
                                     .max_addrs = 4, .cb = join_dns_cb, .arg = j};
            int rc = df_dns_watch_new(&d, &j->watch);
            if (rc < 0)
                DF_LOG_W("gossip: cannot resolve --join %s: %s", j->spec, df_strerror(rc));
        }
    }
}

/* Parses a --join entry into j (spec copied).  0, -EINVAL or -ENOMEM. */
static int join_init(gossip_tracker_t *tr, join_t *j, const char *spec)
{
    char host[256];

    memset(j, 0, sizeof(*j));
    j->tr = tr;
    if (df_parse_hostport(spec, host, sizeof(host), &j->port) < 0 || j->port == 0)
        return -EINVAL;
    if (inet_pton(AF_INET, host, j->addr) == 1)
        j->addr_len = 4;
    else if (inet_pton(AF_INET6, host, j->addr) == 1)
        j->addr_len = 16;
    j->spec = strdup(spec);
    return j->spec ? 0 : -ENOMEM;
}

/* A --gossip-dns round: join every address found that is not already an
 * alive member (joining one costs a push/pull, so known ones are skipped). */
typedef struct {
    const df_dns_addr_t *a;
    bool known;
} dns_known_t;

static void dns_known_cb(const df_gossip_member_t *m, void *arg)
{
    dns_known_t *k = arg;

    if (m->status == DF_GOSSIP_STATUS_ALIVE && m->port == k->a->port && m->addr_len == k->a->addr_len &&
        memcmp(m->addr, k->a->addr, m->addr_len) == 0)
        k->known = true;
}

static void dns_cb(const df_dns_addr_t *addrs, size_t n, const char *error, void *arg)
{
    gossip_tracker_t *tr = arg;
    size_t joined = 0;

    if (error) {
        DF_LOG_W("gossip: DNS discovery %s: %s", tr->dns_name, error);
        return;
    }
    for (size_t i = 0; i < n && !tr->leaving; i++) {
        dns_known_t k = {&addrs[i], false};
        df_gossip_member_foreach(df_gossip_io_node(tr->io), dns_known_cb, &k);
        if (!k.known && df_gossip_io_join(tr->io, addrs[i].addr, addrs[i].addr_len, addrs[i].port) == 0)
            joined++;
    }
    tr->stats.dns_joins += joined;
    if (joined)
        DF_LOG_I("gossip: DNS discovery %s: %zu address(es), joining %zu new", tr->dns_name, n, joined);
}

static int dns_start(gossip_tracker_t *tr, const df_tracker_gossip_opts_t *o)
{
    df_dns_watch_opts_t d = {.base = o->base, .target = o->dns_name, .server = o->dns_server,
                             .interval_ms = o->dns_interval_ms, .cb = dns_cb, .arg = tr};
    int rc = df_dns_watch_new(&d, &tr->dns);

    if (rc < 0)
        DF_LOG_E("gossip: DNS discovery %s (server %s): %s", o->dns_name,
                 o->dns_server ? o->dns_server : "from resolv.conf", df_strerror(rc));
    return rc;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    gossip_tracker_t *tr = arg;
    df_gossip_node_t *node = df_gossip_io_node(tr->io);
    uint64_t now = df_now_ms();
    unsigned budget = EVENTS_PER_FLUSH;
    size_t alive = df_gossip_count(node, DF_GOSSIP_STATUS_ALIVE);

    (void)fd;
    (void)what;
    if (tr->leaving)
        return;
    if (alive <= 1 && tr->njoins && now - tr->last_join_ms >= JOIN_RETRY_MS) {
        tr->last_join_ms = now;
        do_joins(tr);
    }
    if (!tr->recover_sent && alive > 1) {
        uint8_t buf[128];
        tr->recover_sent = true;
        send_event(tr, buf, df_gev_encode_simple(buf, sizeof(buf), DF_GEV_RECOVER, tr->name, NULL));
    }
    if (now - tr->last_flush_ms >= FLUSH_MS) {
        tr->last_flush_ms = now;
        for (task_t *t = tr->tasks; t; t = t->next) {
            flush_task(tr, t, &budget);
            maybe_start_seed(tr, t);
            /* The owner may lack our headers (a takeover by a member
             * with no request of its own, or we registered after the
             * shape came): a running download of ours hands them over,
             * once per owner (forward_headers). */
            if (t->shaped && !strv_empty(t->headers) && (tr->has_key || tr->o.forward_headers) &&
                t->pulled_ms && now - t->pulled_ms < STARVED_MS && !is_owner(tr, t))
                forward_headers(tr, t);
        }
    }
    for (task_t *t = tr->tasks; t; t = t->next)
        owner_hash_step(tr, t);
    df_gossip_io_pump(tr->io);
}

/* ------------------------------------------------------------ lifecycle */

static void gt_free(df_tracker_t *base)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;

    if (!tr)
        return;
    while (tr->calls)
        call_free(tr->calls);
    for (size_t i = 0; i < PENDING_MAX; i++)
        free(tr->pending[i].p);
    free(tr->hash_buf);
    while (tr->tasks) {
        task_t *t = tr->tasks;
        tr->tasks = t->next;
        task_release(tr, t);
    }
    if (tr->tick)
        event_free(tr->tick);
    df_dns_watch_free(tr->dns);
    df_gossip_io_free(tr->io);
    df_gossip_keyring_clear(&tr->kr);
    for (size_t i = 0; i < tr->njoins; i++) {
        df_dns_watch_free(tr->joins[i].watch);
        free(tr->joins[i].spec);
    }
    free(tr->joins);
    free(tr->dns_name);
    free(tr);
}

static const df_tracker_ops_t gossip_ops = {
    .register_task = gt_register,
    .pull_piece = gt_pull,
    .report_piece = gt_report,
    .service_down = gt_service_down,
    .report_error = gt_report_error,
    .heartbeat = gt_heartbeat,
    .free = gt_free,
};

int df_tracker_gossip_new(const df_tracker_gossip_opts_t *o, df_tracker_t **out)
{
    gossip_tracker_t *tr;
    df_gossip_io_opts_t io = {0};
    df_gossip_keyring_t kr;
    char port[8], host[256];
    const char *keys[1] = {TAG_PORT}, *vals[1] = {port};
    uint16_t bport;
    struct timeval tv = {0, 50000};
    int rc = -ENOMEM;

    if (!o->base || !o->http || !o->store || !o->name || !o->name[0] || strlen(o->name) > DF_GEV_SENDER_MAX ||
        !o->listen || !o->advertise_ip)
        return -EINVAL;
    tr = calloc(1, sizeof(*tr));
    if (!tr)
        return -ENOMEM;
    df_gossip_keyring_init(&kr);
    tr->base.ops = &gossip_ops;
    tr->o = *o;
    df_strlcpy(tr->name, o->name, sizeof(tr->name));
    snprintf(tr->seed_id, sizeof(tr->seed_id), "%s%s", tr->name, SEED_SUFFIX);
    df_strlcpy(tr->advertise_ip, o->advertise_ip, sizeof(tr->advertise_ip));
    for (size_t i = 0; o->join && o->join[i]; i++) {
        join_t *n = realloc(tr->joins, (tr->njoins + 1) * sizeof(*n));
        if (!n)
            goto fail;
        tr->joins = n;
        rc = join_init(tr, &tr->joins[tr->njoins], o->join[i]);
        if (rc == -EINVAL) {
            DF_LOG_E("gossip: --join %s: not host:port", o->join[i]);
            goto fail;
        }
        if (rc < 0)
            goto fail;
        tr->njoins++;
    }
    if (o->dns_name && !(tr->dns_name = strdup(o->dns_name)))
        goto fail;
    tr->o.join = NULL;
    tr->o.dns_name = NULL;
    tr->o.dns_server = NULL;
    tr->o.listen = NULL;
    tr->o.encrypt = NULL;
    tr->o.advertise_ip = NULL;
    tr->o.name = NULL;

    /* First, so that a bad DNS setting is reported before any bind error;
     * its first round runs from the loop, once tr->io exists. */
    if (o->dns_name && (rc = dns_start(tr, o)) < 0)
        goto fail;
    rc = -EINVAL;
    if (df_parse_hostport(o->listen, host, sizeof(host), &bport) < 0)
        goto fail;
    io.base = o->base;
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&io.bind)->sin_addr) == 1) {
        ((struct sockaddr_in *)&io.bind)->sin_family = AF_INET;
        ((struct sockaddr_in *)&io.bind)->sin_port = htons(bport);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&io.bind)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)&io.bind)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&io.bind)->sin6_port = htons(bport);
    } else {
        goto fail;
    }
    df_gossip_config_default(&io.cfg);
    io.cfg.name = tr->name;
    if (inet_pton(AF_INET, tr->advertise_ip, io.cfg.addr) == 1)
        io.cfg.addr_len = 4;
    else if (inet_pton(AF_INET6, tr->advertise_ip, io.cfg.addr) == 1)
        io.cfg.addr_len = 16;
    else
        goto fail;
    snprintf(port, sizeof(port), "%u", o->upload_port);
    io.cfg.tag_keys = keys;
    io.cfg.tag_values = vals;
    io.cfg.ntags = 1;
    io.cfg.seed = df_now_ms() ^ (uint64_t)(uintptr_t)tr;
    if (o->encrypt && o->encrypt[0]) {
        uint8_t key[32];
        size_t klen;
        int krc = df_gossip_key_parse_base64(o->encrypt, key, &klen);
        if (krc == 0)
            krc = df_gossip_keyring_add(&kr, key, klen, true);
        OPENSSL_cleanse(key, sizeof(key));
        if (krc < 0)
            goto fail;
        io.cfg.keyring = &kr;
        tr->kr = kr; /* kept to seal POST /peer/seed */
        tr->has_key = true;
    }
    io.event_cb = on_node_event;
    io.arg = tr;
    rc = df_gossip_io_new(&io, &tr->io);
    df_gossip_keyring_clear(&kr);
    if (rc < 0)
        goto fail;
    tr->tick = event_new(o->base, -1, EV_PERSIST, tick_cb, tr);
    if (!tr->tick) {
        rc = -ENOMEM;
        goto fail;
    }
    evtimer_add(tr->tick, &tv);
    tr->last_join_ms = df_now_ms();
    tr->member_change_ms = tr->last_join_ms;
    do_joins(tr);
    DF_LOG_I("gossip: node %s on %s (gossip port %u), uploads on %s:%u", tr->name, o->listen,
             df_gossip_io_port(tr->io), tr->advertise_ip, o->upload_port);
    *out = &tr->base;
    return 0;
fail:
    df_gossip_keyring_clear(&kr);
    gt_free(&tr->base);
    return rc;
}

void df_tracker_gossip_stats(df_tracker_t *base, df_tracker_gossip_stats_t *out)
{
    gossip_tracker_t *tr = (gossip_tracker_t *)base;
    df_gossip_node_t *node = df_gossip_io_node(tr->io);

    *out = tr->stats;
    if (tr->dns) {
        df_dns_watch_stats_t d;
        df_dns_watch_stats(tr->dns, &d);
        out->dns_rounds = d.rounds;
        out->dns_failures = d.failures;
    }
    out->members_alive = df_gossip_count(node, DF_GOSSIP_STATUS_ALIVE);
    out->members_leaving = df_gossip_count(node, DF_GOSSIP_STATUS_LEAVING);
    out->members_left = df_gossip_count(node, DF_GOSSIP_STATUS_LEFT);
    out->members_failed = df_gossip_count(node, DF_GOSSIP_STATUS_FAILED);
    out->health_score = (uint32_t)df_gossip_health_score(node);
    {
        df_gossip_rx_errors_t rx;
        df_gossip_rx_errors(node, &rx);
        out->rx_wrong_key = rx.wrong_key;
        out->rx_unencrypted = rx.unencrypted;
        out->rx_encrypted = rx.encrypted;
        out->rx_refused = rx.err_replies;
        out->rx_malformed = rx.malformed;
        out->bcast_pruned = rx.pruned;
    }
    out->tasks_owned = 0;
    for (task_t *t = tr->tasks; t; t = t->next)
        if (t->local || t->seeding)
            out->tasks_owned += is_owner(tr, t);
}
