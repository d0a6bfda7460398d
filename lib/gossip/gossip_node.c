/*
 * A sans-I/O Serf 0.9.4 / memberlist 0.2.2 node (spec:
 * shared/specs/serf-wire.md, §3 SWIM/Lifeguard, §4 Serf).
 *
 * Design.  The node is a plain data structure driven by three inputs
 * (received datagrams, received TCP stream messages, the time) and two
 * outputs (a queue of datagrams/streams to send, a queue of events).  It
 * never blocks and never reads a clock, so a test can run hundreds of
 * nodes in one process on a fake clock.  Everything the Go code does with
 * goroutines and timers becomes a deadline checked in df_gossip_tick():
 *   - the probe cycle (one probe at a time, like memberlist's probe
 *     goroutine): direct ping, after probe_timeout indirect pings via k
 *     random alive peers plus a TCP ping, after the (awareness-scaled)
 *     probe interval a suspicion;
 *   - suspicion timers per suspect member (Lifeguard: shortened by
 *     independent confirmations);
 *   - gossip rounds, push/pull anti-entropy, the leave phases, relayed
 *     indirect pings awaiting their ack, own queries awaiting responses.
 *
 * Two layers share one member table: memberlist's view (state alive /
 * suspect / dead / left, incarnation, whether it is still in memberlist's
 * node list) and Serf's view (status alive / leaving / left / failed with
 * its Lamport status time).  The functions keep the names of the Go ones
 * they mirror (alive_node = aliveNode, ...) so they can be compared side
 * by side; deviations are noted where they are.
 *
 * Memory.  Everything that grows from the network is capped: members
 * (DF_GOSSIP_MEMBERS_MAX; dead/left members that memberlist has purged are
 * evicted first when full), broadcast queues, the event dedup ring (slots
 * and total bytes), intents buffered for unknown nodes, pending relays,
 * streams and queries.  Over a cap, the new item is dropped, as UDP would.
 */
#include "gossip/gossip_node.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ================================================================ types */

/* Serf member status lives in df_gossip_status_t; memberlist state in
 * DF_GOSSIP_STATE_*. */

#define SUSP_FROM_MAX 8 /* confirmations remembered per suspicion (k is 2 by default) */
#define SLOT_EVENTS_MAX 16
#define SLOT_QUERIES_MAX 16
#define INBOUND_QUERIES_MAX 64

typedef struct {
    bool used;
    char name[DF_GOSSIP_NAME_MAX + 1];
    size_t name_len;
    uint64_t hash;
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
    uint8_t meta[DF_GOSSIP_META_MAX];
    size_t meta_len;
    uint8_t vsn[6];

    /* memberlist */
    bool in_ml;          /* in memberlist's node list (nodeMap) */
    uint8_t state;       /* DF_GOSSIP_STATE_* */
    uint32_t incarnation;
    uint64_t state_change;
    /* suspicion timer (memberlist nodeTimers + suspicion.go) */
    bool susp;
    uint64_t susp_start, susp_deadline, susp_min, susp_max, susp_change;
    uint32_t susp_k, susp_n;
    uint64_t susp_from[SUSP_FROM_MAX];
    size_t susp_nfrom;

    /* Serf */
    df_gossip_status_t status;
    uint64_t status_ltime;
    uint64_t leave_time;
} member_t;

/* One queued broadcast.  Memberlist's messages are "named" by the member
 * they are about: a newer one replaces an older one (name_hash != 0);
 * Serf's are never invalidated. */
typedef struct {
    uint8_t *msg;
    size_t len;
    uint32_t transmits;
    uint64_t id;
    uint64_t name_hash;
    int notify; /* NOTIFY_* fired when the broadcast is finished */
} bcast_t;

typedef struct {
    bcast_t *v;
    size_t n, cap;
    bool sorted;
} bqueue_t;

enum { NOTIFY_NONE = 0, NOTIFY_LEAVE_INTENT, NOTIFY_LEAVE_DEAD };
enum { Q_ML = 0, Q_SERF_INTENT, Q_SERF_QUERY, Q_SERF_EVENT, Q_COUNT };

typedef struct qitem {
    struct qitem *next;
    union {
        df_gossip_output_t out;
        df_gossip_event_t ev;
    } u;
    size_t len;
    uint8_t data[]; /* output bytes, or event payload/meta */
} qitem_t;

typedef struct {
    qitem_t *head, *tail;
    size_t n;
} queue_t;

typedef struct {
    bool used;
    uint64_t hash; /* node name */
    uint8_t type;  /* DF_SERF_JOIN / DF_SERF_LEAVE */
    uint64_t ltime;
    uint64_t when;
} intent_t;

typedef struct {
    uint64_t ltime;
    size_t n;
    df_gossip_bytes_t names[SLOT_EVENTS_MAX], payloads[SLOT_EVENTS_MAX]; /* malloc'ed copies */
} event_slot_t;

typedef struct {
    uint64_t ltime;
    size_t n;
    uint32_t ids[SLOT_QUERIES_MAX];
} query_slot_t;

typedef enum { STREAM_FREE = 0, STREAM_JOIN, STREAM_PUSHPULL, STREAM_PING } stream_kind_t;

typedef struct {
    stream_kind_t kind;
    uint64_t id, deadline;
    uint32_t seq;  /* STREAM_PING */
    bool replay;   /* STREAM_JOIN */
} stream_t;

typedef struct {
    bool used;
    uint32_t seq, orig_seq;
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
    bool nack;
    uint64_t deadline;
} relay_t;

typedef struct {
    bool used;
    uint64_t ltime;
    uint32_t id;
    uint64_t deadline;
    uint64_t *acks, *resps; /* From hashes seen */
    size_t nacks, nresps, acap, rcap;
} own_query_t;

typedef struct {
    bool used, responded;
    uint64_t ltime;
    uint32_t id;
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
    uint64_t deadline;
} inbound_query_t;

typedef enum { RUN = 0, LEAVE_INTENT, LEAVE_DEAD, LEAVE_PROPAGATE, LEFT } leave_phase_t;

struct df_gossip_node {
    df_gossip_config_t cfg;
    char name[DF_GOSSIP_NAME_MAX + 1];
    size_t name_len;
    bool encrypt;
    df_gossip_keyring_t keyring;
    df_gossip_rx_errors_t rx_errors;
    uint64_t rng;

    /* member table: index-stable slots plus an open-addressing name index */
    member_t *m;
    size_t m_n, m_cap;   /* slots in use (high-water), allocated */
    int32_t *hidx;       /* DF_GOSSIP_MEMBERS_MAX * 2 entries, -1 = empty */
    size_t ml_count;     /* members with in_ml */
    int self;

    /* probe cycle */
    int32_t *plist;
    size_t plen, pidx;
    uint64_t next_probe;
    struct {
        bool active, acked, indirect_sent;
        int target;
        uint32_t seq;
        uint64_t start, timeout_at, end;
        uint32_t expected_nacks, nacks;
    } probe;
    uint32_t seq;
    int awareness;

    uint64_t next_gossip, next_pushpull;

    bqueue_t q[Q_COUNT];
    uint64_t bcast_id;

    /* Serf */
    uint64_t clock, event_clock, query_clock;
    uint64_t event_min_time;
    event_slot_t events[DF_GOSSIP_EVENT_SLOTS];
    size_t event_bytes;
    query_slot_t queries[DF_GOSSIP_EVENT_SLOTS];
    intent_t intents[DF_GOSSIP_INTENTS_MAX];
    own_query_t own_queries[DF_GOSSIP_QUERIES_MAX];
    inbound_query_t inq[INBOUND_QUERIES_MAX];
    size_t inq_next;

    leave_phase_t leave;
    uint64_t leave_deadline;
    bool notify_fired[3];

    stream_t streams[DF_GOSSIP_STREAMS_MAX];
    uint64_t stream_id;
    relay_t relays[DF_GOSSIP_RELAYS_MAX];

    queue_t outq, evq;
    qitem_t *last_out, *last_ev; /* handed out, freed on the next call */

    df_buf_t scratch, scratch2; /* reused encode buffers */
};

/* =============================================================== helpers */

/* memcpy/memcmp that accept (NULL, 0): decoded fields absent from a
 * message have no buffer, and passing NULL to the libc functions is
 * undefined even for zero bytes (found by the node fuzzer). */
/* An IPv4 or IPv6 address as memberlist carries it (4 or 16 raw bytes):
 * anything else from the network is refused, never sent to. */
static inline bool addr_ok(size_t len)
{
    return len == 4 || len == 16;
}

static inline void cpy(void *dst, const void *src, size_t n)
{
    if (n)
        memcpy(dst, src, n);
}

static inline int cmp(const void *a, const void *b, size_t n)
{
    return n ? memcmp(a, b, n) : 0;
}

static uint64_t rnd(df_gossip_node_t *n)
{
    /* splitmix64: tiny, seedable, good enough to pick nodes. */
    uint64_t z = (n->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rnd_below(df_gossip_node_t *n, size_t k)
{
    return k ? (size_t)(rnd(n) % k) : 0;
}

static uint64_t name_hash(const void *p, size_t len)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

static df_gossip_bytes_t B(const void *p, size_t len)
{
    df_gossip_bytes_t b = {(const uint8_t *)p, len};
    return b;
}

static bool bytes_is(df_gossip_bytes_t b, const char *s, size_t len)
{
    return b.len == len && (len == 0 || cmp(b.p, s, len) == 0);
}

/* ceil(log10(n+1)): the node-count scale of retransmits and query timeouts. */
static uint32_t log10_scale(size_t n)
{
    return (uint32_t)ceil(log10((double)n + 1.0));
}

/* memberlist retransmitLimit(): how often one broadcast is sent. */
static uint32_t retransmit_limit(const df_gossip_node_t *n)
{
    return n->cfg.retransmit_mult * log10_scale(n->ml_count);
}

/* memberlist suspicionTimeout(): mult * max(1, log10(max(1, n))) * interval,
 * computed in ms like Go's (nodeScale*1000) integer step. */
static uint64_t suspicion_timeout_ms(const df_gossip_node_t *n)
{
    double scale = fmax(1.0, log10(fmax(1.0, (double)n->ml_count)));
    uint64_t s1000 = (uint64_t)(scale * 1000.0);

    return (uint64_t)n->cfg.suspicion_mult * s1000 * n->cfg.probe_interval_ms / 1000;
}

/* Lifeguard awareness: timeouts grow with the local health score. */
static uint64_t scale_timeout(const df_gossip_node_t *n, uint64_t t)
{
    return t * (uint64_t)(n->awareness + 1);
}

static void awareness_delta(df_gossip_node_t *n, int d)
{
    n->awareness += d;
    if (n->awareness < 0)
        n->awareness = 0;
    if (n->awareness > (int)n->cfg.awareness_max - 1)
        n->awareness = (int)n->cfg.awareness_max - 1;
}

/* ========================================================== out/ev queues */

static qitem_t *qitem_new(size_t len)
{
    qitem_t *it = calloc(1, sizeof(*it) + len);

    if (it)
        it->len = len;
    return it;
}

static void queue_push(queue_t *q, qitem_t *it, size_t max)
{
    if (q->n >= max) { /* full: drop the oldest, as a full socket buffer would */
        qitem_t *old = q->head;
        q->head = old->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        free(old);
    }
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->n++;
}

static qitem_t *queue_pop(queue_t *q)
{
    qitem_t *it = q->head;

    if (!it)
        return NULL;
    q->head = it->next;
    if (!q->head)
        q->tail = NULL;
    q->n--;
    return it;
}

static void queue_clear(queue_t *q)
{
    qitem_t *it;

    while ((it = queue_pop(q)))
        free(it);
}

static void out_push(df_gossip_node_t *n, df_gossip_out_kind_t kind, const uint8_t *addr, size_t alen,
                     uint16_t port, uint64_t stream_id, const void *data, size_t len)
{
    qitem_t *it = qitem_new(len);

    if (!it || alen > 16)
        return free(it); /* out of memory: the datagram is lost, like on a full socket */
    it->u.out.kind = kind;
    cpy(it->u.out.addr, addr, alen);
    it->u.out.addr_len = alen;
    it->u.out.port = port;
    it->u.out.stream_id = stream_id;
    cpy(it->data, data, len);
    queue_push(&n->outq, it, DF_GOSSIP_OUTPUTS_MAX);
}

static void ev_push(df_gossip_node_t *n, df_gossip_ev_kind_t kind, const char *name, size_t name_len,
                    const void *payload, size_t plen, uint64_t ltime, uint32_t id, bool cc, const member_t *mb)
{
    qitem_t *it;
    size_t nl = DF_MIN(name_len, (size_t)DF_GOSSIP_NAME_MAX);

    if (mb) {
        payload = mb->meta;
        plen = mb->meta_len;
    }
    it = qitem_new(plen);
    if (!it)
        return;
    it->u.ev.kind = kind;
    cpy(it->u.ev.name, name, nl);
    it->u.ev.name[nl] = '\0';
    if (plen)
        cpy(it->data, payload, plen);
    it->u.ev.payload_len = plen;
    it->u.ev.ltime = ltime;
    it->u.ev.query_id = id;
    it->u.ev.coalesce = cc;
    if (mb) {
        cpy(it->u.ev.addr, mb->addr, mb->addr_len);
        it->u.ev.addr_len = mb->addr_len;
        it->u.ev.port = mb->port;
        it->u.ev.meta_len = plen;
    }
    queue_push(&n->evq, it, DF_GOSSIP_EVENTS_MAX);
}

/* =========================================================== member table */

#define HIDX_SIZE (DF_GOSSIP_MEMBERS_MAX * 2)

static int find_member(const df_gossip_node_t *n, const void *name, size_t len)
{
    uint64_t h;
    size_t i, k;

    if (len == 0 || len > DF_GOSSIP_NAME_MAX)
        return -1;
    h = name_hash(name, len);
    for (i = h % HIDX_SIZE, k = 0; k < HIDX_SIZE; i = (i + 1) % HIDX_SIZE, k++) {
        int32_t j = n->hidx[i];
        if (j < 0)
            return -1;
        if (n->m[j].hash == h && n->m[j].name_len == len && cmp(n->m[j].name, name, len) == 0)
            return j;
    }
    return -1;
}

static void hidx_insert(df_gossip_node_t *n, int j)
{
    size_t i = n->m[j].hash % HIDX_SIZE;

    while (n->hidx[i] >= 0)
        i = (i + 1) % HIDX_SIZE;
    n->hidx[i] = j;
}

static void hidx_rebuild(df_gossip_node_t *n)
{
    size_t j;

    for (j = 0; j < HIDX_SIZE; j++)
        n->hidx[j] = -1;
    for (j = 0; j < n->m_n; j++)
        if (n->m[j].used)
            hidx_insert(n, (int)j);
}

/* Makes room by forgetting the member memberlist purged longest ago (only
 * members that are gone from memberlist's list and failed/left in Serf:
 * Serf would reap them after 24 h). */
static int evict_one(df_gossip_node_t *n)
{
    size_t j;
    int best = -1;

    for (j = 0; j < n->m_n; j++) {
        member_t *mb = &n->m[j];
        if (!mb->used || mb->in_ml || (int)j == n->self)
            continue;
        if (best < 0 || mb->leave_time < n->m[best].leave_time)
            best = (int)j;
    }
    if (best < 0)
        return -1;
    n->m[best].used = false;
    hidx_rebuild(n);
    return best;
}

/* Adds a member slot for name (memberlist state dead, incarnation 0, not in
 * the list yet: the caller fills it).  -1 when the table is full. */
static int add_member(df_gossip_node_t *n, const void *name, size_t len)
{
    size_t live = 0, j;
    int slot = -1;

    if (len == 0 || len > DF_GOSSIP_NAME_MAX)
        return -1;
    for (j = 0; j < n->m_n; j++) {
        if (n->m[j].used)
            live++;
        else if (slot < 0)
            slot = (int)j;
    }
    if (live >= DF_GOSSIP_MEMBERS_MAX) {
        slot = evict_one(n);
        if (slot < 0)
            return -1;
    } else if (slot < 0) {
        if (n->m_n == n->m_cap) {
            size_t nc = n->m_cap ? n->m_cap * 2 : 16;
            member_t *nm;
            if (nc > DF_GOSSIP_MEMBERS_MAX)
                nc = DF_GOSSIP_MEMBERS_MAX;
            nm = realloc(n->m, nc * sizeof(*nm));
            if (!nm)
                return -1;
            n->m = nm;
            n->m_cap = nc;
        }
        slot = (int)n->m_n++;
    }
    memset(&n->m[slot], 0, sizeof(member_t));
    n->m[slot].used = true;
    cpy(n->m[slot].name, name, len);
    n->m[slot].name_len = len;
    n->m[slot].hash = name_hash(name, len);
    n->m[slot].state = DF_GOSSIP_STATE_DEAD;
    hidx_insert(n, slot);
    return slot;
}

static bool is_self(const df_gossip_node_t *n, int j)
{
    return j == n->self;
}

/* memberlist inserts a new node at a random position of its probe list, so
 * that a node that joins is probed soon by someone (failure detection bound). */
static void plist_insert(df_gossip_node_t *n, int j)
{
    size_t pos;

    if (n->plen >= DF_GOSSIP_MEMBERS_MAX)
        return;
    pos = rnd_below(n, n->plen + 1);
    n->plist[n->plen++] = n->plist[pos];
    n->plist[pos] = j;
}

/* ======================================================== broadcast queues */

static int bcast_cmp(const void *a, const void *b)
{
    const bcast_t *x = a, *y = b;

    if (x->transmits != y->transmits)
        return x->transmits < y->transmits ? -1 : 1;
    return x->id > y->id ? -1 : x->id < y->id ? 1 : 0; /* newest first */
}

static void bcast_finished(df_gossip_node_t *n, bcast_t *b)
{
    if (b->notify)
        n->notify_fired[b->notify] = true;
    free(b->msg);
    b->msg = NULL;
}

static void bqueue_remove(df_gossip_node_t *n, bqueue_t *q, size_t i)
{
    bcast_finished(n, &q->v[i]);
    q->v[i] = q->v[--q->n];
    q->sorted = false;
}

/* QueueBroadcast: copies msg.  name_hash != 0 invalidates an older message
 * about the same member.  Over DF_GOSSIP_QUEUE_MAX the most transmitted
 * broadcast is dropped (memberlist/Serf prune the queue the same way). */
static void enqueue(df_gossip_node_t *n, int qi, uint64_t name_hash_v, const void *msg, size_t len, int notify)
{
    bqueue_t *q = &n->q[qi];
    size_t i;
    uint8_t *copy;

    if (name_hash_v)
        for (i = 0; i < q->n; i++)
            if (q->v[i].name_hash == name_hash_v) {
                bqueue_remove(n, q, i);
                break;
            }
    if (q->n >= DF_GOSSIP_QUEUE_MAX) {
        size_t worst = 0;
        for (i = 1; i < q->n; i++)
            if (q->v[i].transmits > q->v[worst].transmits)
                worst = i;
        bqueue_remove(n, q, worst);
        n->rx_errors.pruned++;
    }
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 32;
        bcast_t *nv = realloc(q->v, nc * sizeof(*nv));
        if (!nv)
            return;
        q->v = nv;
        q->cap = nc;
    }
    copy = malloc(len);
    if (!copy)
        return;
    cpy(copy, msg, len);
    q->v[q->n].msg = copy;
    q->v[q->n].len = len;
    q->v[q->n].transmits = 0;
    q->v[q->n].id = ++n->bcast_id;
    q->v[q->n].name_hash = name_hash_v;
    q->v[q->n].notify = notify;
    q->n++;
    q->sorted = false;
}

/* getBroadcasts (TransmitLimitedQueue.GetBroadcasts): the gossip payload
 * for one packet.
 *
 * Why this order: least-transmitted first so fresh news travels before old
 * news, newest first among equals; a broadcast goes out retransmit_limit =
 * RetransmitMult * ceil(log10(n+1)) times in total, enough for an epidemic
 * to reach all n members with high probability, and is then dropped
 * (firing its notify, which the leave phases wait on).
 *
 * Appends to store the least-transmitted broadcasts that fit
 * in avail bytes counting overhead per part (memberlist's queue first, then
 * Serf's intents, queries, events), records their offsets, and counts a
 * transmission for each; a broadcast sent retransmit_limit times is
 * dropped.  At most maxparts parts. */
static void get_broadcasts(df_gossip_node_t *n, size_t overhead, size_t avail, df_buf_t *store,
                           size_t *offs, size_t *lens, size_t *nparts, size_t maxparts)
{
    uint32_t limit = retransmit_limit(n);
    size_t used = 0;
    int qi;

    for (qi = 0; qi < Q_COUNT; qi++) {
        bqueue_t *q = &n->q[qi];
        size_t i;

        if (!q->n)
            continue;
        if (!q->sorted) {
            qsort(q->v, q->n, sizeof(*q->v), bcast_cmp);
            q->sorted = true;
        }
        for (i = 0; i < q->n && *nparts < maxparts;) {
            bcast_t *b = &q->v[i];
            if (used + overhead + b->len > avail) {
                i++;
                continue;
            }
            offs[*nparts] = store->len;
            if (df_buf_append(store, b->msg, b->len) < 0)
                return;
            lens[(*nparts)++] = b->len;
            used += overhead + b->len;
            b->transmits++;
            q->sorted = false;
            if (b->transmits >= limit)
                bqueue_remove(n, q, i); /* the swapped-in item is looked at next */
            else
                i++;
        }
    }
}

/* ============================================================ sending */

/* rawSendMsgPacket: optional CRC wrapper, then encryption. */
static void send_raw(df_gossip_node_t *n, const uint8_t *addr, size_t alen, uint16_t port,
                     const uint8_t *msg, size_t len, bool crc)
{
    df_buf_t *w = &n->scratch2;
    size_t outlen;

    df_buf_reset(w);
    if (crc) {
        if (df_gossip_crc_wrap(w, msg, len) < 0)
            return;
        msg = (const uint8_t *)w->data;
        len = w->len;
    }
    if (n->encrypt) {
        uint8_t *c = malloc(len + DF_GOSSIP_ENCRYPT_OVERHEAD);
        if (c && df_gossip_encrypt_packet(&n->keyring, msg, len, c, len + DF_GOSSIP_ENCRYPT_OVERHEAD, &outlen) == 0)
            out_push(n, DF_GOSSIP_OUT_UDP, addr, alen, port, 0, c, outlen);
        free(c);
        return;
    }
    out_push(n, DF_GOSSIP_OUT_UDP, addr, alen, port, 0, msg, len);
}

/* sendMsg: msg plus whatever broadcasts fit, as a compound (no CRC: memberlist
 * 0.2.2 finds no node for these paths, see §1.5). */
static void send_msg(df_gossip_node_t *n, const uint8_t *addr, size_t alen, uint16_t port, const uint8_t *msg,
                     size_t len)
{
    size_t offs[DF_GOSSIP_COMPOUND_SEND_MAX], lens[DF_GOSSIP_COMPOUND_SEND_MAX], np = 0, i;
    df_gossip_bytes_t parts[DF_GOSSIP_COMPOUND_SEND_MAX];
    df_buf_t store, comp;
    size_t avail = DF_GOSSIP_UDP_BUDGET - 2;

    if (len + 2 > avail) {
        send_raw(n, addr, alen, port, msg, len, false);
        return;
    }
    avail -= len;
    if (n->encrypt)
        avail -= DF_GOSSIP_ENCRYPT_OVERHEAD;
    df_buf_init(&store, DF_GOSSIP_PACKET_MAX);
    df_buf_init(&comp, DF_GOSSIP_PACKET_MAX);
    offs[0] = 0;
    lens[0] = len;
    if (df_buf_append(&store, msg, len) < 0)
        goto out;
    np = 1;
    get_broadcasts(n, 2, avail, &store, offs, lens, &np, DF_GOSSIP_COMPOUND_SEND_MAX);
    if (np == 1) {
        send_raw(n, addr, alen, port, msg, len, false);
        goto out;
    }
    for (i = 0; i < np; i++)
        parts[i] = B(store.data + offs[i], lens[i]);
    if (df_gossip_compound_encode(&comp, parts, np) == 0)
        send_raw(n, addr, alen, port, (const uint8_t *)comp.data, comp.len, false);
out:
    df_buf_free(&store);
    df_buf_free(&comp);
}

/* Encodes a TCP stream message: optional LZW wrapper, then the encrypted
 * envelope, into out. */
static int stream_wrap(df_gossip_node_t *n, const uint8_t *msg, size_t len, df_buf_t *out)
{
    df_buf_t z;
    int rc = 0;

    df_buf_init(&z, DF_GOSSIP_STREAM_MAX);
    if (n->cfg.compress_streams) {
        rc = df_gossip_compress(&z, msg, len);
        if (rc < 0)
            goto out;
        msg = (const uint8_t *)z.data;
        len = z.len;
    }
    if (n->encrypt)
        rc = df_gossip_encrypt_stream(&n->keyring, msg, len, out);
    else
        rc = df_buf_append(out, msg, len);
out:
    df_buf_free(&z);
    return rc;
}

/* An errResp with text why, wrapped for the wire into wire (reply is scratch). */
static int stream_wrap_err(df_gossip_node_t *n, const char *why, df_buf_t *reply, df_buf_t *wire)
{
    int rc = df_gossip_err_encode(reply, B(why, strlen(why)));

    return rc < 0 ? rc : stream_wrap(n, (const uint8_t *)reply->data, reply->len, wire);
}

static stream_t *stream_new(df_gossip_node_t *n, stream_kind_t kind, uint64_t now)
{
    size_t i;

    for (i = 0; i < DF_GOSSIP_STREAMS_MAX; i++)
        if (n->streams[i].kind == STREAM_FREE) {
            memset(&n->streams[i], 0, sizeof(stream_t));
            n->streams[i].kind = kind;
            n->streams[i].id = ++n->stream_id;
            n->streams[i].deadline = now + n->cfg.tcp_timeout_ms;
            return &n->streams[i];
        }
    return NULL;
}

static stream_t *stream_find(df_gossip_node_t *n, uint64_t id)
{
    size_t i;

    for (i = 0; i < DF_GOSSIP_STREAMS_MAX; i++)
        if (n->streams[i].kind != STREAM_FREE && n->streams[i].id == id)
            return &n->streams[i];
    return NULL;
}

/* ====================================================== message builders */

static void alive_of(const df_gossip_node_t *n, const member_t *mb, df_gossip_alive_t *a)
{
    (void)n;
    memset(a, 0, sizeof(*a));
    a->incarnation = mb->incarnation;
    a->node = B(mb->name, mb->name_len);
    a->addr = B(mb->addr, mb->addr_len);
    a->port = mb->port;
    a->meta = B(mb->meta, mb->meta_len);
    a->has_vsn = true;
    cpy(a->vsn, mb->vsn, 6);
}

static void broadcast_ml(df_gossip_node_t *n, const member_t *mb, const df_buf_t *msg, int notify)
{
    enqueue(n, Q_ML, mb->hash, msg->data, msg->len, notify);
}

static void broadcast_alive(df_gossip_node_t *n, const df_gossip_alive_t *a)
{
    df_buf_t *b = &n->scratch;

    df_buf_reset(b);
    if (df_gossip_alive_encode(b, a) == 0)
        enqueue(n, Q_ML, name_hash(a->node.p, a->node.len), b->data, b->len, NOTIFY_NONE);
}

static void broadcast_susdead(df_gossip_node_t *n, uint8_t type, const member_t *mb, uint32_t inc,
                              df_gossip_bytes_t from, int notify)
{
    df_gossip_suspect_t s = {inc, B(mb->name, mb->name_len), from};
    df_buf_t *b = &n->scratch;

    df_buf_reset(b);
    if (df_gossip_suspect_encode(b, type, &s) == 0)
        broadcast_ml(n, mb, b, notify);
}

/* ============================================================ Serf layer */

static void serf_member_join(df_gossip_node_t *n, int j);
static void serf_member_leave(df_gossip_node_t *n, int j);

static intent_t *intent_find(df_gossip_node_t *n, uint64_t h)
{
    size_t i;

    for (i = 0; i < DF_GOSSIP_INTENTS_MAX; i++)
        if (n->intents[i].used && n->intents[i].hash == h)
            return &n->intents[i];
    return NULL;
}

/* upsertIntent: remembers the newest intent about a node we do not know yet
 * (for 5 minutes).  True when it was news (then it is re-broadcast). */
static bool upsert_intent(df_gossip_node_t *n, uint64_t h, uint8_t type, uint64_t ltime, uint64_t now)
{
    intent_t *it = intent_find(n, h);
    size_t i, oldest = 0;

    if (it) {
        if (ltime <= it->ltime)
            return false;
    } else {
        for (i = 0; i < DF_GOSSIP_INTENTS_MAX; i++) {
            if (!n->intents[i].used || n->intents[i].when + 300000 < now) {
                oldest = i;
                break;
            }
            if (n->intents[i].when < n->intents[oldest].when)
                oldest = i;
        }
        it = &n->intents[oldest]; /* full: the oldest intent is forgotten */
    }
    it->used = true;
    it->hash = h;
    it->type = type;
    it->ltime = ltime;
    it->when = now;
    return true;
}

static void witness(uint64_t *clock, uint64_t v)
{
    if (v >= *clock)
        *clock = v + 1;
}

/* handleNodeJoinIntent.  True = re-broadcast.  Intents order a member's
 * Serf status by the member clock (statusLTime), independently of
 * memberlist's incarnations: a join newer than a leave brings a leaving
 * member back.  Intents about members memberlist has not told us about yet
 * are kept (upsert_intent) and applied when the member appears, since
 * gossip may deliver the intent before the alive. */
static bool serf_join_intent(df_gossip_node_t *n, df_gossip_bytes_t node, uint64_t ltime, uint64_t now)
{
    int j;
    member_t *mb;

    witness(&n->clock, ltime);
    j = find_member(n, node.p, node.len);
    if (j < 0 || n->m[j].status == DF_GOSSIP_STATUS_NONE)
        return upsert_intent(n, name_hash(node.p, node.len), DF_SERF_JOIN, ltime, now);
    mb = &n->m[j];
    if (ltime <= mb->status_ltime)
        return false;
    mb->status_ltime = ltime;
    if (mb->status == DF_GOSSIP_STATUS_LEAVING)
        mb->status = DF_GOSSIP_STATUS_ALIVE;
    return true;
}

static void broadcast_join_intent(df_gossip_node_t *n, uint64_t ltime, uint64_t now);

/* handleNodeLeaveIntent.  True = re-broadcast. */
static bool serf_leave_intent(df_gossip_node_t *n, df_gossip_bytes_t node, uint64_t ltime, uint64_t now)
{
    int j;
    member_t *mb;

    witness(&n->clock, ltime);
    j = find_member(n, node.p, node.len);
    if (j < 0 || n->m[j].status == DF_GOSSIP_STATUS_NONE)
        return upsert_intent(n, name_hash(node.p, node.len), DF_SERF_LEAVE, ltime, now);
    mb = &n->m[j];
    if (ltime <= mb->status_ltime)
        return false;
    /* An old leave intent about ourselves while we run: refute it with a
     * fresh join intent. */
    if (is_self(n, j) && n->leave == RUN) {
        broadcast_join_intent(n, n->clock, now);
        return false;
    }
    switch (mb->status) {
    case DF_GOSSIP_STATUS_ALIVE:
        mb->status = DF_GOSSIP_STATUS_LEAVING;
        mb->status_ltime = ltime;
        return true;
    case DF_GOSSIP_STATUS_FAILED:
        /* A failed member that is known to have left: left, with an event. */
        mb->status = DF_GOSSIP_STATUS_LEFT;
        mb->status_ltime = ltime;
        ev_push(n, DF_GOSSIP_EV_MEMBER_LEAVE, mb->name, mb->name_len, NULL, 0, 0, 0, false, mb);
        return true;
    case DF_GOSSIP_STATUS_LEAVING:
    case DF_GOSSIP_STATUS_LEFT:
        mb->status_ltime = ltime;
        return true;
    default:
        return false;
    }
}

static void broadcast_join_intent(df_gossip_node_t *n, uint64_t ltime, uint64_t now)
{
    df_serf_intent_t m = {ltime, B(n->name, n->name_len), false};
    df_buf_t *b = &n->scratch;

    witness(&n->clock, ltime);
    serf_join_intent(n, m.node, ltime, now);
    df_buf_reset(b);
    if (df_serf_intent_encode(b, DF_SERF_JOIN, &m) == 0)
        enqueue(n, Q_SERF_INTENT, 0, b->data, b->len, NOTIFY_NONE);
}

/* memberlist NotifyJoin -> Serf handleNodeJoin. */
static void serf_member_join(df_gossip_node_t *n, int j)
{
    member_t *mb = &n->m[j];
    intent_t *it;

    if (mb->status == DF_GOSSIP_STATUS_NONE) {
        mb->status = DF_GOSSIP_STATUS_ALIVE;
        mb->status_ltime = 0;
        it = intent_find(n, mb->hash);
        if (it) {
            mb->status_ltime = it->ltime;
            if (it->type == DF_SERF_LEAVE)
                mb->status = DF_GOSSIP_STATUS_LEAVING;
            it->used = false;
        }
    } else {
        mb->status = DF_GOSSIP_STATUS_ALIVE;
        mb->leave_time = 0;
    }
    ev_push(n, DF_GOSSIP_EV_MEMBER_JOIN, mb->name, mb->name_len, NULL, 0, 0, 0, false, mb);
}

/* memberlist NotifyLeave -> Serf handleNodeLeave: leaving -> left, alive ->
 * failed. */
static void serf_member_leave(df_gossip_node_t *n, int j)
{
    member_t *mb = &n->m[j];

    if (mb->status == DF_GOSSIP_STATUS_LEAVING) {
        mb->status = DF_GOSSIP_STATUS_LEFT;
        mb->leave_time = mb->state_change;
        ev_push(n, DF_GOSSIP_EV_MEMBER_LEAVE, mb->name, mb->name_len, NULL, 0, 0, 0, false, mb);
    } else if (mb->status == DF_GOSSIP_STATUS_ALIVE) {
        mb->status = DF_GOSSIP_STATUS_FAILED;
        mb->leave_time = mb->state_change;
        ev_push(n, DF_GOSSIP_EV_MEMBER_FAILED, mb->name, mb->name_len, NULL, 0, 0, 0, false, mb);
    }
}

static void event_slot_clear(df_gossip_node_t *n, event_slot_t *s)
{
    size_t i;

    for (i = 0; i < s->n; i++) {
        n->event_bytes -= s->names[i].len + s->payloads[i].len;
        free((void *)s->names[i].p);
        free((void *)s->payloads[i].p);
    }
    s->n = 0;
}

static uint8_t *dup_bytes(df_gossip_bytes_t b)
{
    uint8_t *p = malloc(b.len ? b.len : 1);

    if (p && b.len)
        cpy(p, b.p, b.len);
    return p;
}

/* handleUserEvent: dedup by (LTime, Name, Payload) over the 512-slot ring.
 * True = new (delivered; re-broadcast by the caller).
 * Events arrive many times (every holder gossips them retransmit_limit
 * times); the ring remembers what was delivered per Lamport time, so an
 * event is delivered once as long as it is within the last 512 ticks of
 * the event clock, and dropped as too old after that (it could no longer
 * be told apart from a duplicate). */
static bool serf_user_event(df_gossip_node_t *n, uint64_t ltime, df_gossip_bytes_t name,
                            df_gossip_bytes_t payload, bool cc)
{
    event_slot_t *s;
    size_t i;
    uint8_t *pn, *pp;

    witness(&n->event_clock, ltime);
    if (ltime < n->event_min_time)
        return false;
    if (n->event_clock > DF_GOSSIP_EVENT_SLOTS && ltime < n->event_clock - DF_GOSSIP_EVENT_SLOTS)
        return false; /* too old to dedup: Serf drops it */
    s = &n->events[ltime % DF_GOSSIP_EVENT_SLOTS];
    if (s->n && s->ltime == ltime) {
        for (i = 0; i < s->n; i++)
            if (s->names[i].len == name.len && s->payloads[i].len == payload.len &&
                (!name.len || cmp(s->names[i].p, name.p, name.len) == 0) &&
                (!payload.len || cmp(s->payloads[i].p, payload.p, payload.len) == 0))
                return false;
    } else {
        event_slot_clear(n, s);
        s->ltime = ltime;
    }
    /* Caps: events per slot and bytes over the ring.  Past them the event
     * cannot be remembered, so it is not delivered either (it would be
     * delivered again on every copy). */
    if (s->n >= SLOT_EVENTS_MAX || n->event_bytes + name.len + payload.len > DF_GOSSIP_EVENT_RING_BYTES)
        return false;
    pn = dup_bytes(name);
    pp = dup_bytes(payload);
    if (!pn || !pp) {
        free(pn);
        free(pp);
        return false;
    }
    s->names[s->n] = B(pn, name.len);
    s->payloads[s->n] = B(pp, payload.len);
    s->n++;
    n->event_bytes += name.len + payload.len;
    ev_push(n, DF_GOSSIP_EV_USER, (const char *)name.p, name.len, payload.p, payload.len, ltime, 0, cc, NULL);
    return true;
}

static own_query_t *own_query_find(df_gossip_node_t *n, uint64_t ltime, uint32_t id)
{
    size_t i;

    for (i = 0; i < DF_GOSSIP_QUERIES_MAX; i++)
        if (n->own_queries[i].used && n->own_queries[i].ltime == ltime && n->own_queries[i].id == id)
            return &n->own_queries[i];
    return NULL;
}

static bool seen_add(uint64_t **v, size_t *nv, size_t *cap, uint64_t h)
{
    size_t i;

    for (i = 0; i < *nv; i++)
        if ((*v)[i] == h)
            return false;
    if (*nv == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        uint64_t *p;
        if (nc > DF_GOSSIP_MEMBERS_MAX)
            return false; /* more responders than members: ignore */
        p = realloc(*v, nc * sizeof(*p));
        if (!p)
            return false;
        *v = p;
        *cap = nc;
    }
    (*v)[(*nv)++] = h;
    return true;
}

/* Sends a query ack (flags 1) or response (flags 0) straight to the
 * originator's Addr:Port, like Serf's SendTo: by UDP, without CRC, with
 * broadcasts piggy-backed.  DF_ETOOBIG when the encoded message (without
 * the memberlist type byte, as Serf measures it) is over the response size
 * limit; nothing is sent then. */
static int send_query_response(df_gossip_node_t *n, const uint8_t *addr, size_t alen, uint16_t port,
                               uint64_t ltime, uint32_t id, uint32_t flags, df_gossip_bytes_t payload)
{
    df_serf_query_response_t r = {ltime, id, B(n->name, n->name_len), flags, payload};
    df_buf_t b;
    int rc;

    df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
    rc = df_serf_query_response_encode(&b, &r);
    if (rc == 0 && b.len - 1 > n->cfg.query_response_size_limit)
        rc = DF_ETOOBIG;
    if (rc == 0)
        send_msg(n, addr, alen, port, (const uint8_t *)b.data, b.len);
    df_buf_free(&b);
    return rc;
}

/* Does this query's filter list select us?  Node filters must name us; tag
 * filters are honoured for exact-match expressions (`^v$` or a plain
 * literal without regexp metacharacters) and otherwise treated as not
 * matching, so we never answer a query that was not meant for us. */
static bool query_selects_us(df_gossip_node_t *n, const df_serf_query_t *q)
{
    size_t i;

    for (i = 0; i < q->nfilters; i++) {
        const df_gossip_bytes_t *f = &q->filters[i];
        bool match = false;

        if (f->len < 1)
            return false;
        if (f->p[0] == DF_SERF_FILTER_NODE) {
            if (df_serf_filter_nodes_match(f->p, f->len, B(n->name, n->name_len), &match) < 0 || !match)
                return false;
        } else {
            /* Tag filters: unsupported regexps never match (conservative). */
            return false;
        }
    }
    return true;
}

/* handleQuery.  True = re-broadcast.  Dedup by (LTime, ID) like events.
 * A query that does not select us is still re-gossiped (others may be
 * selected) but neither acked nor delivered.  The ack goes out at once,
 * the response when the application calls df_gossip_respond before the
 * query's own deadline (its Timeout), both straight to the originator. */
static bool serf_query(df_gossip_node_t *n, const df_serf_query_t *q, uint64_t now)
{
    query_slot_t *s;
    size_t i;
    bool rebroadcast;
    inbound_query_t *iq;
    uint64_t timeout;

    witness(&n->query_clock, q->ltime);
    if (n->query_clock > DF_GOSSIP_EVENT_SLOTS && q->ltime < n->query_clock - DF_GOSSIP_EVENT_SLOTS)
        return false;
    s = &n->queries[q->ltime % DF_GOSSIP_EVENT_SLOTS];
    if (s->n && s->ltime == q->ltime) {
        for (i = 0; i < s->n; i++)
            if (s->ids[i] == q->id)
                return false;
    } else {
        s->n = 0;
        s->ltime = q->ltime;
    }
    if (s->n < SLOT_QUERIES_MAX)
        s->ids[s->n++] = q->id;
    else
        return false; /* cannot remember it: drop rather than loop */
    rebroadcast = !(q->flags & 2);
    if (!query_selects_us(n, q))
        return rebroadcast;
    if (!addr_ok(q->addr.len))
        return rebroadcast;
    if (q->flags & 1)
        send_query_response(n, q->addr.p, q->addr.len, q->port, q->ltime, q->id, 1, B(NULL, 0));
    /* Internal queries (_serf_*) never reach the application. */
    if (q->name.len >= 6 && cmp(q->name.p, "_serf_", 6) == 0)
        return rebroadcast;
    iq = &n->inq[n->inq_next++ % INBOUND_QUERIES_MAX];
    memset(iq, 0, sizeof(*iq));
    iq->used = true;
    iq->ltime = q->ltime;
    iq->id = q->id;
    cpy(iq->addr, q->addr.p, q->addr.len);
    iq->addr_len = q->addr.len;
    iq->port = q->port;
    timeout = q->timeout_ns > 0 ? (uint64_t)q->timeout_ns / 1000000u : 0;
    iq->deadline = now + timeout;
    ev_push(n, DF_GOSSIP_EV_QUERY, (const char *)q->name.p, q->name.len, q->payload.p, q->payload.len,
            q->ltime, q->id, false, NULL);
    return rebroadcast;
}

/* handleQueryResponse: matched by (LTime, ID), one ack and one response per
 * responder. */
static void serf_query_response(df_gossip_node_t *n, const df_serf_query_response_t *r)
{
    own_query_t *q = own_query_find(n, r->ltime, r->id);
    uint64_t h;

    if (!q || r->from.len == 0 || r->from.len > DF_GOSSIP_NAME_MAX)
        return;
    h = name_hash(r->from.p, r->from.len);
    if (r->flags & 1) {
        if (seen_add(&q->acks, &q->nacks, &q->acap, h))
            ev_push(n, DF_GOSSIP_EV_QUERY_ACK, (const char *)r->from.p, r->from.len, NULL, 0, r->ltime, r->id,
                    false, NULL);
    } else {
        if (seen_add(&q->resps, &q->nresps, &q->rcap, h))
            ev_push(n, DF_GOSSIP_EV_QUERY_RESPONSE, (const char *)r->from.p, r->from.len, r->payload.p,
                    r->payload.len, r->ltime, r->id, false, NULL);
    }
}

/* A Serf message (Serf type byte first) received by gossip (NotifyMsg). */
static void serf_notify_msg(df_gossip_node_t *n, const uint8_t *msg, size_t len, uint64_t now)
{
    bool rebroadcast = false;
    int qi = Q_SERF_INTENT;

    switch (msg[0]) {
    case DF_SERF_LEAVE:
    case DF_SERF_JOIN: {
        df_serf_intent_t m;
        if (df_serf_intent_decode(msg, len, msg[0], &m) < 0 || m.node.len == 0)
            return;
        rebroadcast = msg[0] == DF_SERF_JOIN ? serf_join_intent(n, m.node, m.ltime, now)
                                             : serf_leave_intent(n, m.node, m.ltime, now);
        break;
    }
    case DF_SERF_USER_EVENT: {
        df_serf_user_event_t m;
        if (df_serf_user_event_decode(msg, len, &m) < 0)
            return;
        rebroadcast = serf_user_event(n, m.ltime, m.name, m.payload, m.cc);
        qi = Q_SERF_EVENT;
        break;
    }
    case DF_SERF_QUERY: {
        df_serf_query_t *m = malloc(sizeof(*m)); /* ~1.6 KB of filter slots: not on the stack */
        if (!m)
            return;
        if (df_serf_query_decode(msg, len, m) == 0)
            rebroadcast = serf_query(n, m, now);
        free(m);
        qi = Q_SERF_QUERY;
        break;
    }
    case DF_SERF_QUERY_RESPONSE: {
        df_serf_query_response_t m;
        if (df_serf_query_response_decode(msg, len, &m) == 0)
            serf_query_response(n, &m);
        return;
    }
    case DF_SERF_RELAY: {
        /* Forward the inner message to its destination, without CRC. */
        df_serf_relay_t m;
        uint8_t *fw;
        if (df_serf_relay_decode(msg, len, &m) < 0 || m.inner.len == 0 || !addr_ok(m.dest_ip.len) ||
            m.dest_port <= 0 || m.dest_port > 65535)
            return;
        fw = malloc(m.inner.len + 1);
        if (!fw)
            return;
        fw[0] = DF_GOSSIP_USER;
        cpy(fw + 1, m.inner.p, m.inner.len);
        send_msg(n, m.dest_ip.p, m.dest_ip.len, (uint16_t)m.dest_port, fw, m.inner.len + 1);
        free(fw);
        return;
    }
    default:
        return;
    }
    if (rebroadcast && n->leave < LEFT) {
        /* Re-gossip the message as received: 08 + Serf message. */
        uint8_t *b = malloc(len + 1);
        if (!b)
            return;
        b[0] = DF_GOSSIP_USER;
        cpy(b + 1, msg, len);
        enqueue(n, qi, 0, b, len + 1, NOTIFY_NONE);
        free(b);
    }
}

/* ====================================================== memberlist state */

/* refute: someone thinks we are suspect, dead, or alive with other data.
 * Beat the accusation with an incarnation above both ours and the
 * accused one, and gossip a fresh alive; count it against our health
 * (being accused is a hint that we answer too slowly). */
static void refute(df_gossip_node_t *n, uint32_t accused)
{
    member_t *me = &n->m[n->self];
    df_gossip_alive_t a;
    uint32_t inc = me->incarnation + 1;

    if (accused >= inc)
        inc = accused + 1;
    me->incarnation = inc;
    awareness_delta(n, 1); /* being accused says something about our own health */
    alive_of(n, me, &a);
    broadcast_alive(n, &a);
}

/* aliveNode: the one place a member becomes or stays alive.
 *
 * Accepted only when it is news: a higher incarnation than we know, or a
 * member we do not know (a new nodeState starts dead with incarnation 0,
 * so any real alive beats it).  An accepted alive is re-gossiped (that is
 * how a join spreads), clears a running suspicion, and tells Serf: a dead
 * or left member coming back is a join, changed Meta is an update.
 * About ourselves it is never accepted: when it disagrees with us (higher
 * incarnation, other Meta or Vsn: e.g. our previous life before a restart)
 * we refute it with a higher incarnation instead.
 * A known name at another address is refused unless the member left
 * (memberlist's DeadNodeReclaimTime is 0 = never for dead members): two
 * live processes must not fight over one name.
 * bootstrap = our own initial state (setAlive): no refutation, no gossip. */
static void alive_node(df_gossip_node_t *n, const df_gossip_alive_t *a, bool bootstrap, uint64_t now)
{
    int j;
    member_t *mb;
    uint8_t old_state;
    bool meta_changed, updates_addr = false, local;

    if (a->node.len == 0 || a->node.len > DF_GOSSIP_NAME_MAX || !addr_ok(a->addr.len) ||
        a->meta.len > DF_GOSSIP_META_MAX)
        return;
    if (n->leave >= LEAVE_DEAD && bytes_is(a->node, n->name, n->name_len))
        return;
    if (a->has_vsn && (a->vsn[0] == 0 || a->vsn[1] == 0 || a->vsn[0] > a->vsn[1]))
        return;
    j = find_member(n, a->node.p, a->node.len);
    if (j < 0) {
        j = add_member(n, a->node.p, a->node.len);
        if (j < 0)
            return; /* table full of live members */
    }
    mb = &n->m[j];
    if (!mb->in_ml) {
        /* New to memberlist (or purged earlier): a fresh nodeState. */
        mb->in_ml = true;
        mb->state = DF_GOSSIP_STATE_DEAD;
        mb->incarnation = 0;
        cpy(mb->addr, a->addr.p, a->addr.len);
        mb->addr_len = a->addr.len;
        mb->port = a->port;
        n->ml_count++;
        if (!bootstrap)
            plist_insert(n, j);
    } else if (mb->addr_len != a->addr.len || cmp(mb->addr, a->addr.p, a->addr.len) != 0 ||
               mb->port != a->port) {
        /* Another address for a known name: only a left node may come back
         * elsewhere (DeadNodeReclaimTime 0 = never for dead ones). */
        if (mb->state == DF_GOSSIP_STATE_LEFT)
            updates_addr = true;
        else
            return;
    }
    local = is_self(n, j);
    if (a->incarnation <= mb->incarnation && !local && !updates_addr)
        return;
    if (a->incarnation < mb->incarnation && local)
        return;
    mb->susp = false;
    old_state = mb->state;
    meta_changed = mb->meta_len != a->meta.len || cmp(mb->meta, a->meta.p, a->meta.len) != 0;
    if (!bootstrap && local) {
        if (a->incarnation == mb->incarnation && !meta_changed && a->has_vsn &&
            cmp(a->vsn, df_gossip_serf_vsn, 6) == 0)
            return;
        refute(n, a->incarnation);
        return;
    }
    broadcast_alive(n, a);
    if (a->has_vsn)
        cpy(mb->vsn, a->vsn, 6);
    mb->incarnation = a->incarnation;
    cpy(mb->meta, a->meta.p, a->meta.len);
    mb->meta_len = a->meta.len;
    cpy(mb->addr, a->addr.p, a->addr.len);
    mb->addr_len = a->addr.len;
    mb->port = a->port;
    if (mb->state != DF_GOSSIP_STATE_ALIVE) {
        mb->state = DF_GOSSIP_STATE_ALIVE;
        mb->state_change = now;
    }
    if (old_state == DF_GOSSIP_STATE_DEAD || old_state == DF_GOSSIP_STATE_LEFT)
        serf_member_join(n, j);
    else if (meta_changed)
        ev_push(n, DF_GOSSIP_EV_MEMBER_UPDATE, mb->name, mb->name_len, NULL, 0, 0, 0, false, mb);
}

static void dead_node(df_gossip_node_t *n, const df_gossip_suspect_t *d, uint64_t now);

/* suspectNode: start, or confirm, a Lifeguard suspicion.
 *
 * SWIM declares a member dead after one failed probe plus a fixed timeout;
 * Lifeguard instead starts the timer at max = SuspicionMaxTimeoutMult *
 * min and lowers it towards min = suspicionTimeout() as k = SuspicionMult-2
 * *independent* accusers (distinct From) confirm it, because a slow local
 * node (the accuser itself) is a more common cause of a missed ack than a
 * dead peer.  With fewer than k+2 members no confirmation can come, so the
 * timer starts at min.  Each new confirmation is re-gossiped so the others
 * learn it too; a repeated accuser changes nothing.
 * A suspicion about ourselves is refuted at once (alive, incarnation+1).
 * Stale messages (lower incarnation) are ignored. */
static void suspect_node(df_gossip_node_t *n, const df_gossip_suspect_t *s, uint64_t now)
{
    int j = find_member(n, s->node.p, s->node.len);
    member_t *mb;
    uint64_t fh;
    size_t i;

    if (j < 0 || !n->m[j].in_ml)
        return;
    mb = &n->m[j];
    if (s->incarnation < mb->incarnation)
        return;
    fh = name_hash(s->from.p, s->from.len);
    if (mb->susp) {
        /* Confirm: a new accuser shortens the timeout (suspicion.Confirm). */
        uint64_t elapsed, timeout;
        double frac, raw;

        if (mb->susp_n >= mb->susp_k)
            return;
        for (i = 0; i < mb->susp_nfrom; i++)
            if (mb->susp_from[i] == fh)
                return;
        if (mb->susp_nfrom < SUSP_FROM_MAX)
            mb->susp_from[mb->susp_nfrom++] = fh;
        mb->susp_n++;
        frac = log((double)mb->susp_n + 1.0) / log((double)mb->susp_k + 1.0);
        raw = (double)mb->susp_max / 1000.0 - frac * ((double)mb->susp_max - (double)mb->susp_min) / 1000.0;
        timeout = (uint64_t)floor(1000.0 * raw);
        if (timeout < mb->susp_min)
            timeout = mb->susp_min;
        elapsed = now - mb->susp_start;
        mb->susp_deadline = timeout > elapsed ? mb->susp_start + timeout : now;
        broadcast_susdead(n, DF_GOSSIP_SUSPECT, mb, s->incarnation, s->from, NOTIFY_NONE);
        return;
    }
    if (mb->state != DF_GOSSIP_STATE_ALIVE)
        return;
    if (is_self(n, j)) {
        if (n->leave < LEAVE_DEAD)
            refute(n, s->incarnation);
        return;
    }
    broadcast_susdead(n, DF_GOSSIP_SUSPECT, mb, s->incarnation, s->from, NOTIFY_NONE);
    mb->incarnation = s->incarnation;
    mb->state = DF_GOSSIP_STATE_SUSPECT;
    mb->state_change = now;
    /* Lifeguard: k independent confirmations are wanted (none when the
     * cluster is too small to give them); the timer starts at max and
     * drops towards min as they arrive. */
    mb->susp = true;
    mb->susp_k = n->cfg.suspicion_mult > 2 ? n->cfg.suspicion_mult - 2 : 0;
    if (n->ml_count < (size_t)mb->susp_k + 2)
        mb->susp_k = 0;
    mb->susp_n = 0;
    mb->susp_min = suspicion_timeout_ms(n);
    mb->susp_max = (uint64_t)n->cfg.suspicion_max_timeout_mult * mb->susp_min;
    mb->susp_start = now;
    mb->susp_change = now;
    mb->susp_deadline = now + (mb->susp_k < 1 ? mb->susp_min : mb->susp_max);
    mb->susp_from[0] = fh;
    mb->susp_nfrom = 1;
}

/* deadNode: the end of a suspicion, a remote declaration, or a graceful
 * leave.  From == Node is the leaver announcing itself: state left, which
 * Serf shows as "left" when the leave intent came first (status leaving)
 * and as "failed" otherwise; any other From is a death ("failed").
 * Accepted when the incarnation is not older than ours and the member is
 * not already dead or left; re-gossiped once accepted.  About ourselves:
 * refuted unless we are the ones leaving, in which case it is our own
 * dead message and its full transmission ends the leave's second phase
 * (NOTIFY_LEAVE_DEAD). */
static void dead_node(df_gossip_node_t *n, const df_gossip_suspect_t *d, uint64_t now)
{
    int j = find_member(n, d->node.p, d->node.len);
    member_t *mb;

    if (j < 0 || !n->m[j].in_ml)
        return;
    mb = &n->m[j];
    if (d->incarnation < mb->incarnation)
        return;
    mb->susp = false;
    if (mb->state == DF_GOSSIP_STATE_DEAD || mb->state == DF_GOSSIP_STATE_LEFT)
        return;
    if (is_self(n, j)) {
        if (n->leave < LEAVE_DEAD) {
            refute(n, d->incarnation);
            return;
        }
        broadcast_susdead(n, DF_GOSSIP_DEAD, mb, d->incarnation, d->from, NOTIFY_LEAVE_DEAD);
    } else {
        broadcast_susdead(n, DF_GOSSIP_DEAD, mb, d->incarnation, d->from, NOTIFY_NONE);
    }
    mb->incarnation = d->incarnation;
    mb->state = bytes_is(d->from, mb->name, mb->name_len) ? DF_GOSSIP_STATE_LEFT : DF_GOSSIP_STATE_DEAD;
    mb->state_change = now;
    serf_member_leave(n, j);
}

/* ============================================================ push/pull */

/* LocalState: our node list plus the Serf state, as a push/pull message. */
static int encode_local_state(df_gossip_node_t *n, bool join, df_buf_t *out)
{
    df_gossip_node_state_t *ns = NULL;
    df_serf_status_t *st = NULL;
    df_gossip_bytes_t *left = NULL;
    df_serf_event_slot_t *slots = NULL;
    const df_serf_event_slot_t **sp = NULL;
    df_serf_pushpull_enc_t pp;
    df_buf_t us;
    size_t j, nn = 0, nst = 0, nl = 0;
    int rc = -ENOMEM;

    df_buf_init(&us, DF_GOSSIP_STREAM_MAX);
    ns = calloc(n->m_n ? n->m_n : 1, sizeof(*ns));
    st = calloc(n->m_n ? n->m_n : 1, sizeof(*st));
    left = calloc(n->m_n ? n->m_n : 1, sizeof(*left));
    slots = calloc(DF_GOSSIP_EVENT_SLOTS, sizeof(*slots));
    sp = calloc(DF_GOSSIP_EVENT_SLOTS, sizeof(*sp));
    if (!ns || !st || !left || !slots || !sp)
        goto out;
    for (j = 0; j < n->m_n; j++) {
        member_t *mb = &n->m[j];
        if (!mb->used)
            continue;
        if (mb->in_ml) {
            ns[nn].name = B(mb->name, mb->name_len);
            ns[nn].addr = B(mb->addr, mb->addr_len);
            ns[nn].meta = B(mb->meta, mb->meta_len);
            ns[nn].port = mb->port;
            ns[nn].incarnation = mb->incarnation;
            ns[nn].state = mb->state;
            ns[nn].has_vsn = true;
            cpy(ns[nn].vsn, mb->vsn, 6);
            nn++;
        }
        if (mb->status != DF_GOSSIP_STATUS_NONE) {
            st[nst].name = B(mb->name, mb->name_len);
            st[nst++].ltime = mb->status_ltime;
            if (mb->status == DF_GOSSIP_STATUS_LEFT)
                left[nl++] = B(mb->name, mb->name_len);
        }
    }
    for (j = 0; j < DF_GOSSIP_EVENT_SLOTS; j++) {
        event_slot_t *s = &n->events[j];
        if (!s->n)
            continue;
        slots[j].ltime = s->ltime;
        slots[j].n = s->n;
        slots[j].names = s->names;
        slots[j].payloads = s->payloads;
        sp[j] = &slots[j];
    }
    memset(&pp, 0, sizeof(pp));
    pp.ltime = n->clock;
    pp.event_ltime = n->event_clock;
    pp.query_ltime = n->query_clock;
    pp.status = st;
    pp.nstatus = nst;
    pp.left = left;
    pp.nleft = nl;
    pp.slots = sp;
    pp.nslots = DF_GOSSIP_EVENT_SLOTS;
    rc = df_serf_pushpull_encode(&us, &pp);
    if (rc < 0)
        goto out;
    rc = df_gossip_pushpull_encode(out, join, ns, nn, (const uint8_t *)us.data, us.len);
out:
    df_buf_free(&us);
    free(ns);
    free(st);
    free(left);
    free(slots);
    free(sp);
    return rc;
}

/* Collected Serf push/pull state (the decoder reports it in wire order; it
 * has to be applied in Serf's order: left, joins, then events). */
typedef struct {
    df_serf_status_t *st;
    size_t nst;
    df_gossip_bytes_t *left;
    size_t nleft;
    struct {
        uint64_t ltime;
        df_gossip_bytes_t name, payload;
    } * ev;
    size_t nev, evcap;
} pp_collect_t;

#define PP_EVENTS_MAX 4096

static int pp_status_cb(df_gossip_bytes_t name, uint64_t ltime, void *arg)
{
    pp_collect_t *c = arg;

    if (c->nst >= DF_GOSSIP_MEMBERS_MAX)
        return DF_ETOOBIG;
    c->st[c->nst].name = name;
    c->st[c->nst++].ltime = ltime;
    return 0;
}

static int pp_left_cb(df_gossip_bytes_t name, void *arg)
{
    pp_collect_t *c = arg;

    if (c->nleft >= DF_GOSSIP_MEMBERS_MAX)
        return DF_ETOOBIG;
    c->left[c->nleft++] = name;
    return 0;
}

static int pp_event_cb(size_t slot, uint64_t ltime, df_gossip_bytes_t name, df_gossip_bytes_t payload, void *arg)
{
    pp_collect_t *c = arg;

    (void)slot;
    if (c->nev >= PP_EVENTS_MAX)
        return 0; /* beyond the cap: skip (anti-entropy will retry) */
    c->ev[c->nev].ltime = ltime;
    c->ev[c->nev].name = name;
    c->ev[c->nev++].payload = payload;
    return 0;
}

/* MergeRemoteState (Serf delegate): the Serf half of a push/pull.
 * Clocks are witnessed with value-1 (the sender's clock is one past the
 * last time it used).  Left members are applied first as leave intents at
 * their status time + 1 (the leave must be newer than the join that put
 * them in the list), then every other status time as a join intent; on our
 * own join without replay, events older than the remote event clock are
 * ignored (eventMinTime), then the remote event ring goes through the
 * normal dedup.  No intent or event learnt here is re-gossiped. */
static void merge_serf_state(df_gossip_node_t *n, df_gossip_bytes_t us, bool join, bool replay, uint64_t now)
{
    df_serf_pushpull_cbs_t cbs = {pp_status_cb, pp_left_cb, pp_event_cb};
    df_serf_pushpull_t pp;
    pp_collect_t c;
    size_t i, k;

    if (us.len < 1 || us.p[0] != DF_SERF_PUSH_PULL)
        return;
    memset(&c, 0, sizeof(c));
    c.st = calloc(DF_GOSSIP_MEMBERS_MAX, sizeof(*c.st));
    c.left = calloc(DF_GOSSIP_MEMBERS_MAX, sizeof(*c.left));
    c.ev = calloc(PP_EVENTS_MAX, sizeof(*c.ev));
    if (!c.st || !c.left || !c.ev)
        goto out;
    if (df_serf_pushpull_decode(us.p, us.len, &pp, &cbs, &c) < 0)
        goto out;
    if (pp.ltime > 0)
        witness(&n->clock, pp.ltime - 1);
    if (pp.event_ltime > 0)
        witness(&n->event_clock, pp.event_ltime - 1);
    if (pp.query_ltime > 0)
        witness(&n->query_clock, pp.query_ltime - 1);
    /* Left members first: their leave came after their last status time. */
    for (i = 0; i < c.nleft; i++) {
        uint64_t lt = 0;
        for (k = 0; k < c.nst; k++)
            if (c.st[k].name.len == c.left[i].len && cmp(c.st[k].name.p, c.left[i].p, c.left[i].len) == 0)
                lt = c.st[k].ltime;
        serf_leave_intent(n, c.left[i], lt + 1, now);
    }
    for (k = 0; k < c.nst; k++) {
        bool is_left = false;
        for (i = 0; i < c.nleft && !is_left; i++)
            is_left = c.st[k].name.len == c.left[i].len &&
                      cmp(c.st[k].name.p, c.left[i].p, c.left[i].len) == 0;
        if (!is_left && c.st[k].name.len)
            serf_join_intent(n, c.st[k].name, c.st[k].ltime, now);
    }
    if (join && !replay && pp.event_ltime > n->event_min_time)
        n->event_min_time = pp.event_ltime;
    for (i = 0; i < c.nev; i++)
        serf_user_event(n, c.ev[i].ltime, c.ev[i].name, c.ev[i].payload, false);
out:
    free(c.st);
    free(c.left);
    free(c.ev);
}

/* mergeState (memberlist) + the Serf state.  buf is a decoded (decrypted,
 * decompressed) push/pull message.  Remote alive entries go through
 * alive_node, left ones through dead_node (From = the node: left), and
 * remote dead or suspect ones only start a *suspicion* here: a single peer's
 * opinion must be confirmed by our own probes before we declare a death.
 * join_reply: the reply to our join (turns on eventMinTime).  *remote_join
 * reports the sender's Join flag (echoed in our reply). */
static int merge_remote(df_gossip_node_t *n, const uint8_t *buf, size_t len, bool join_reply, bool replay,
                        bool *remote_join, uint64_t now)
{
    df_gossip_pushpull_hdr_t hdr;
    df_gossip_node_state_t *ns;
    df_gossip_bytes_t us;
    size_t consumed, i;
    int rc;

    ns = calloc(DF_GOSSIP_PUSHPULL_NODES_MAX, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    rc = df_gossip_pushpull_decode(buf, len, &hdr, ns, DF_GOSSIP_PUSHPULL_NODES_MAX, &us, &consumed);
    if (rc == DF_EAGAIN)
        rc = DF_EPROTO;
    if (rc < 0)
        goto out;
    if (remote_join)
        *remote_join = hdr.join;
    for (i = 0; i < hdr.nodes; i++) {
        df_gossip_node_state_t *r = &ns[i];
        df_gossip_suspect_t s = {r->incarnation, r->name, B(n->name, n->name_len)};

        switch (r->state) {
        case DF_GOSSIP_STATE_ALIVE: {
            df_gossip_alive_t a;
            memset(&a, 0, sizeof(a));
            a.incarnation = r->incarnation;
            a.node = r->name;
            a.addr = r->addr;
            a.port = r->port;
            a.meta = r->meta;
            a.has_vsn = r->has_vsn;
            cpy(a.vsn, r->vsn, 6);
            alive_node(n, &a, false, now);
            break;
        }
        case DF_GOSSIP_STATE_LEFT:
            s.from = r->name;
            dead_node(n, &s, now);
            break;
        default:
            /* Remote deaths are only suspected here (memberlist's choice:
             * our own probes must confirm them). */
            suspect_node(n, &s, now);
            break;
        }
    }
    merge_serf_state(n, us, join_reply || hdr.join, replay, now);
out:
    free(ns);
    return rc;
}

static void start_pushpull(df_gossip_node_t *n, const uint8_t *addr, size_t alen, uint16_t port,
                           stream_kind_t kind, bool replay, uint64_t now)
{
    df_buf_t raw, wire;
    stream_t *s = stream_new(n, kind, now);

    if (!s)
        return;
    s->replay = replay;
    df_buf_init(&raw, DF_GOSSIP_STREAM_MAX);
    df_buf_init(&wire, DF_GOSSIP_STREAM_MAX + 64);
    if (encode_local_state(n, kind == STREAM_JOIN, &raw) == 0 &&
        stream_wrap(n, (const uint8_t *)raw.data, raw.len, &wire) == 0)
        out_push(n, DF_GOSSIP_OUT_STREAM_OPEN, addr, alen, port, s->id, wire.data, wire.len);
    else
        s->kind = STREAM_FREE;
    df_buf_free(&raw);
    df_buf_free(&wire);
}

/* ================================================================ probes */

static void send_ping(df_gossip_node_t *n, const member_t *target, uint32_t seq)
{
    const member_t *me = &n->m[n->self];
    df_gossip_ping_t p = {seq, B(target->name, target->name_len), B(me->addr, me->addr_len),
                          B(me->name, me->name_len), me->port};
    df_buf_t b;

    df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
    if (df_gossip_ping_encode(&b, &p) < 0)
        goto out;
    if (target->state == DF_GOSSIP_STATE_ALIVE) {
        send_msg(n, target->addr, target->addr_len, target->port, (const uint8_t *)b.data, b.len);
    } else {
        /* A suspect is pinged with the suspicion attached so it can refute
         * at once (this path carries a CRC in 0.2.2). */
        df_gossip_suspect_t s = {target->incarnation, B(target->name, target->name_len),
                                 B(n->name, n->name_len)};
        df_gossip_bytes_t parts[2];
        df_buf_t c, comp;
        df_buf_init(&c, DF_GOSSIP_PACKET_MAX);
        df_buf_init(&comp, DF_GOSSIP_PACKET_MAX);
        if (df_gossip_suspect_encode(&c, DF_GOSSIP_SUSPECT, &s) == 0) {
            parts[0] = B(b.data, b.len);
            parts[1] = B(c.data, c.len);
            if (df_gossip_compound_encode(&comp, parts, 2) == 0)
                send_raw(n, target->addr, target->addr_len, target->port, (const uint8_t *)comp.data, comp.len,
                         target->vsn[1] >= 5);
        }
        df_buf_free(&c);
        df_buf_free(&comp);
    }
out:
    df_buf_free(&b);
}

/* kRandomNodes for the probe helpers: up to k alive members other than self
 * and `exclude`. */
static size_t pick_random(df_gossip_node_t *n, size_t k, int exclude, bool gossip_filter, uint64_t now,
                          int32_t *outv)
{
    size_t cnt = 0, j, i;

    for (j = 0; j < n->m_n; j++) {
        const member_t *mb = &n->m[j];
        bool ok;
        if (!mb->used || !mb->in_ml || (int)j == n->self || (int)j == exclude)
            continue;
        if (gossip_filter)
            ok = mb->state == DF_GOSSIP_STATE_ALIVE || mb->state == DF_GOSSIP_STATE_SUSPECT ||
                 (mb->state == DF_GOSSIP_STATE_DEAD && now - mb->state_change <= n->cfg.gossip_to_dead_ms);
        else
            ok = mb->state == DF_GOSSIP_STATE_ALIVE;
        if (!ok)
            continue;
        /* reservoir sampling keeps this O(members) without a scratch list */
        if (cnt < k) {
            outv[cnt] = (int32_t)j;
        } else {
            i = rnd_below(n, cnt + 1);
            if (i < k)
                outv[i] = (int32_t)j;
        }
        cnt++;
    }
    return cnt < k ? cnt : k;
}

/* resetNodes + shuffle at the wrap of the probe list: members dead or left
 * for longer than gossip_to_dead leave memberlist's list (Serf keeps them as
 * failed/left). */
static void reset_probe_list(df_gossip_node_t *n, uint64_t now)
{
    size_t j, i;

    n->plen = 0;
    for (j = 0; j < n->m_n; j++) {
        member_t *mb = &n->m[j];
        if (!mb->used || !mb->in_ml)
            continue;
        if ((mb->state == DF_GOSSIP_STATE_DEAD || mb->state == DF_GOSSIP_STATE_LEFT) && (int)j != n->self &&
            now - mb->state_change > n->cfg.gossip_to_dead_ms) {
            mb->in_ml = false;
            n->ml_count--;
            continue;
        }
        n->plist[n->plen++] = (int32_t)j;
    }
    for (i = n->plen; i > 1; i--) {
        size_t r = rnd_below(n, i);
        int32_t t = n->plist[i - 1];
        n->plist[i - 1] = n->plist[r];
        n->plist[r] = t;
    }
    n->pidx = 0;
}

/* probe (memberlist probe + probeNode, first half): take the next member
 * of the shuffled round-robin list, skipping ourselves and dead/left ones,
 * and ping it.  Round robin over a shuffled list (rather than random picks)
 * bounds the time until every member is probed by someone; shuffling on
 * every wrap keeps the order unpredictable.  The probe then lives in
 * n->probe: an ack with its seq (direct, relayed or over TCP) ends it as a
 * success; probe_timeout later probe_indirect() asks for help; at the end
 * of the (awareness-scaled) interval probe_finish() suspects the target. */
static void probe_start(df_gossip_node_t *n, uint64_t now)
{
    size_t checked = 0;
    int target = -1;

    while (checked <= n->plen) {
        int32_t j;
        if (n->pidx >= n->plen) {
            reset_probe_list(n, now);
            checked++;
            if (n->plen == 0)
                break;
            continue;
        }
        j = n->plist[n->pidx++];
        checked++;
        if (j < 0 || (size_t)j >= n->m_n || !n->m[j].used || !n->m[j].in_ml || j == n->self ||
            n->m[j].state == DF_GOSSIP_STATE_DEAD || n->m[j].state == DF_GOSSIP_STATE_LEFT)
            continue;
        target = j;
        break;
    }
    if (target < 0)
        return;
    memset(&n->probe, 0, sizeof(n->probe));
    n->probe.active = true;
    n->probe.target = target;
    n->probe.seq = ++n->seq;
    n->probe.start = now;
    n->probe.timeout_at = now + n->cfg.probe_timeout_ms;
    n->probe.end = now + scale_timeout(n, n->cfg.probe_interval_ms);
    send_ping(n, &n->m[target], n->probe.seq);
}

/* Ends the current probe.  Awareness (Lifeguard LHA): a success lowers our
 * health score; a failure raises it by the nacks we expected and did not
 * get (relays that could not even answer us point at our own network), or
 * by one when no relay could nack.  A higher score stretches our probe
 * interval, so a struggling node accuses others less eagerly. */
static void probe_finish(df_gossip_node_t *n, bool ok, uint64_t now)
{
    member_t *mb = &n->m[n->probe.target];
    uint64_t next = n->probe.start + n->cfg.probe_interval_ms;

    n->probe.active = false;
    n->next_probe = next > now ? next : now;
    if (ok) {
        awareness_delta(n, -1);
        return;
    }
    /* Lifeguard local health: missing nacks mean the problem may be ours. */
    if (n->probe.expected_nacks > 0) {
        if (n->probe.nacks < n->probe.expected_nacks)
            awareness_delta(n, (int)(n->probe.expected_nacks - n->probe.nacks));
    } else {
        awareness_delta(n, 1);
    }
    if (mb->used && mb->in_ml && (mb->state == DF_GOSSIP_STATE_ALIVE || mb->state == DF_GOSSIP_STATE_SUSPECT)) {
        df_gossip_suspect_t s = {mb->incarnation, B(mb->name, mb->name_len), B(n->name, n->name_len)};
        suspect_node(n, &s, now);
    }
}

/* Direct ping timed out: ask k random alive peers to ping the target for
 * us (indirect pings, with the original seq so their forwarded acks end
 * our probe; nacks requested from peers with PMax >= 4 tell us the relay
 * itself is fine), and try TCP (PMax >= 3), which gets through where UDP
 * is filtered.  Both race until the end of the probe interval. */
static void probe_indirect(df_gossip_node_t *n, uint64_t now)
{
    member_t *t = &n->m[n->probe.target];
    const member_t *me = &n->m[n->self];
    int32_t peers[16];
    size_t k = pick_random(n, DF_MIN(n->cfg.indirect_checks, 16u), n->probe.target, false, now, peers), i;
    df_buf_t b;

    n->probe.indirect_sent = true;
    df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
    for (i = 0; i < k; i++) {
        const member_t *p = &n->m[peers[i]];
        df_gossip_indirect_ping_t ip = {n->probe.seq, B(t->addr, t->addr_len), t->port,
                                        B(t->name, t->name_len), p->vsn[1] >= 4,
                                        B(me->addr, me->addr_len), B(me->name, me->name_len), me->port};
        if (ip.nack)
            n->probe.expected_nacks++;
        df_buf_reset(&b);
        if (df_gossip_indirect_ping_encode(&b, &ip) == 0)
            send_msg(n, p->addr, p->addr_len, p->port, (const uint8_t *)b.data, b.len);
    }
    if (t->vsn[1] >= 3) {
        df_gossip_ping_t p = {n->probe.seq, B(t->name, t->name_len), B(me->addr, me->addr_len),
                              B(me->name, me->name_len), me->port};
        stream_t *s = stream_new(n, STREAM_PING, now);
        df_buf_t w;
        df_buf_init(&w, DF_GOSSIP_PACKET_MAX);
        df_buf_reset(&b);
        if (s) {
            s->seq = n->probe.seq;
            s->deadline = n->probe.end;
            if (df_gossip_ping_encode(&b, &p) == 0 && stream_wrap(n, (const uint8_t *)b.data, b.len, &w) == 0)
                out_push(n, DF_GOSSIP_OUT_STREAM_OPEN, t->addr, t->addr_len, t->port, s->id, w.data, w.len);
            else
                s->kind = STREAM_FREE;
        }
        df_buf_free(&w);
    }
    df_buf_free(&b);
}

static void handle_ack_seq(df_gossip_node_t *n, uint32_t seq, uint64_t now)
{
    size_t i;

    if (n->probe.active && seq == n->probe.seq) {
        probe_finish(n, true, now);
        return;
    }
    for (i = 0; i < DF_GOSSIP_RELAYS_MAX; i++) {
        relay_t *r = &n->relays[i];
        if (r->used && r->seq == seq) {
            df_gossip_ack_t a = {r->orig_seq, B(NULL, 0)};
            df_buf_t b;
            df_buf_init(&b, 256);
            if (df_gossip_ack_encode(&b, &a) == 0)
                send_msg(n, r->addr, r->addr_len, r->port, (const uint8_t *)b.data, b.len);
            df_buf_free(&b);
            r->used = false;
            return;
        }
    }
}

static void send_ack(df_gossip_node_t *n, const uint8_t *addr, size_t alen, uint16_t port, uint32_t seq)
{
    df_gossip_ack_t a = {seq, B(NULL, 0)};
    df_buf_t b;

    df_buf_init(&b, 256);
    if (df_gossip_ack_encode(&b, &a) == 0)
        send_msg(n, addr, alen, port, (const uint8_t *)b.data, b.len);
    df_buf_free(&b);
}

/* ======================================================= packet dispatch */

typedef struct {
    df_gossip_node_t *n;
    const uint8_t *from;
    size_t from_len;
    uint16_t from_port;
    uint64_t now;
} rx_t;

/* One message of a packet (the walk goes on after an error): DF_EPROTO when
 * it does not decode, which the caller counts as malformed. */
static int handle_msg(const uint8_t *msg, size_t len, void *arg)
{
    rx_t *rx = arg;
    df_gossip_node_t *n = rx->n;

    if (len < 1)
        return 0;
    if (n->leave == LEFT)
        return 0;
    switch (msg[0]) {
    case DF_GOSSIP_PING: {
        df_gossip_ping_t p;
        if (df_gossip_ping_decode(msg, len, &p) < 0)
            return DF_EPROTO;
        if (p.node.len && !bytes_is(p.node, n->name, n->name_len))
            return 0; /* "Got ping for unexpected node" */
        if (addr_ok(p.source_addr.len) && p.source_port)
            send_ack(n, p.source_addr.p, p.source_addr.len, p.source_port, p.seq_no);
        else
            send_ack(n, rx->from, rx->from_len, rx->from_port, p.seq_no);
        return 0;
    }
    case DF_GOSSIP_INDIRECT_PING: {
        df_gossip_indirect_ping_t ip;
        relay_t *r = NULL;
        size_t i;
        const member_t *me = &n->m[n->self];
        if (df_gossip_indirect_ping_decode(msg, len, &ip) < 0 || !addr_ok(ip.target.len) || !ip.port)
            return DF_EPROTO;
        for (i = 0; i < DF_GOSSIP_RELAYS_MAX && !r; i++)
            if (!n->relays[i].used)
                r = &n->relays[i];
        if (!r)
            return 0; /* too many relays in flight: the requester's probe falls back */
        r->used = true;
        r->seq = ++n->seq;
        r->orig_seq = ip.seq_no;
        r->nack = ip.nack;
        r->deadline = rx->now + n->cfg.probe_timeout_ms;
        if (addr_ok(ip.source_addr.len) && ip.source_port) {
            cpy(r->addr, ip.source_addr.p, ip.source_addr.len);
            r->addr_len = ip.source_addr.len;
            r->port = ip.source_port;
        } else {
            cpy(r->addr, rx->from, rx->from_len);
            r->addr_len = rx->from_len;
            r->port = rx->from_port;
        }
        {
            df_gossip_ping_t p = {r->seq, ip.node, B(me->addr, me->addr_len), B(me->name, me->name_len), me->port};
            df_buf_t b;
            df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
            if (df_gossip_ping_encode(&b, &p) == 0)
                send_msg(n, ip.target.p, ip.target.len, ip.port, (const uint8_t *)b.data, b.len);
            df_buf_free(&b);
        }
        return 0;
    }
    case DF_GOSSIP_ACK: {
        df_gossip_ack_t a;
        if (df_gossip_ack_decode(msg, len, &a) < 0)
            return DF_EPROTO;
        handle_ack_seq(n, a.seq_no, rx->now);
        return 0;
    }
    case DF_GOSSIP_NACK: {
        df_gossip_nack_t a;
        if (df_gossip_nack_decode(msg, len, &a) < 0)
            return DF_EPROTO;
        if (n->probe.active && a.seq_no == n->probe.seq)
            n->probe.nacks++;
        return 0;
    }
    case DF_GOSSIP_SUSPECT:
    case DF_GOSSIP_DEAD: {
        df_gossip_suspect_t s;
        if (df_gossip_suspect_decode(msg, len, msg[0], &s) < 0 || s.node.len == 0)
            return DF_EPROTO;
        if (msg[0] == DF_GOSSIP_SUSPECT)
            suspect_node(n, &s, rx->now);
        else
            dead_node(n, &s, rx->now);
        return 0;
    }
    case DF_GOSSIP_ALIVE: {
        df_gossip_alive_t a;
        if (df_gossip_alive_decode(msg, len, &a) < 0)
            return DF_EPROTO;
        alive_node(n, &a, false, rx->now);
        return 0;
    }
    case DF_GOSSIP_USER: {
        df_gossip_bytes_t s;
        if (df_gossip_user_unwrap(msg, len, &s) < 0)
            return DF_EPROTO;
        serf_notify_msg(n, s.p, s.len, rx->now);
        return 0;
    }
    default:
        return 0; /* push/pull, encrypt, err ... are not UDP messages */
    }
}

int df_gossip_recv_packet(df_gossip_node_t *n, const uint8_t *from_addr, size_t from_addr_len, uint16_t from_port,
                          const uint8_t *buf, size_t len, uint64_t now_ms)
{
    rx_t rx = {n, from_addr, from_addr_len, from_port, now_ms};
    uint8_t *plain = NULL;
    size_t plen;
    int rc = 0;

    if (!n || !addr_ok(from_addr_len))
        return 0;
    if (!buf || len == 0 || len > DF_GOSSIP_PACKET_MAX) {
        n->rx_errors.malformed++;
        return 0;
    }
    if (n->encrypt) {
        /* GossipVerifyIncoming: a packet no key opens is dropped. */
        plain = malloc(len);
        if (!plain)
            return -ENOMEM;
        if (df_gossip_decrypt_packet(&n->keyring, buf, len, plain, len, &plen) < 0) {
            n->rx_errors.wrong_key++;
            goto out;
        }
        buf = plain;
        len = plen;
    }
    rc = df_gossip_packet_walk(buf, len, handle_msg, &rx);
    if (rc < 0 && rc != -ENOMEM) {
        n->rx_errors.malformed++;
        rc = 0; /* malformed input is the sender's problem: dropped */
    }
out:
    free(plain);
    return rc;
}

/* Unwraps a stream message: encrypted envelope, compress wrapper.  An
 * encryption mismatch sets *why to memberlist's text for it (the errResp
 * an inbound stream then gets) and is counted. */
static int stream_unwrap(df_gossip_node_t *n, const uint8_t *buf, size_t len, df_buf_t *dec, df_buf_t *unz,
                         const uint8_t **msg, size_t *mlen, const char **why)
{
    size_t need;
    int rc;

    if (len < 1)
        return DF_EPROTO;
    if (n->encrypt) {
        if (buf[0] != DF_GOSSIP_ENCRYPT) {
            n->rx_errors.unencrypted++;
            *why = "Encryption is configured but remote state is not encrypted";
            return DF_EPROTO;
        }
        rc = df_gossip_decrypt_stream(&n->keyring, buf, len, &need, dec);
        if (rc == -EBADMSG) {
            n->rx_errors.wrong_key++;
            *why = "No installed keys could decrypt the message";
        }
        if (rc < 0)
            return rc == DF_EAGAIN ? DF_EPROTO : rc;
        buf = (const uint8_t *)dec->data;
        len = dec->len;
    } else if (buf[0] == DF_GOSSIP_ENCRYPT) {
        n->rx_errors.encrypted++;
        *why = "Remote state is encrypted and encryption is not configured";
        return DF_EPROTO;
    }
    if (len >= 1 && buf[0] == DF_GOSSIP_COMPRESS) {
        rc = df_gossip_decompress(buf, len, unz);
        if (rc < 0)
            return rc;
        buf = (const uint8_t *)unz->data;
        len = unz->len;
    }
    if (len < 1)
        return DF_EPROTO;
    *msg = buf;
    *mlen = len;
    return 0;
}

int df_gossip_recv_stream(df_gossip_node_t *n, uint64_t stream_id, bool inbound, const uint8_t *from_addr,
                          size_t from_addr_len, uint16_t from_port, const uint8_t *buf, size_t len,
                          uint64_t now_ms)
{
    df_buf_t dec, unz, reply, wire;
    const uint8_t *msg;
    const char *why = NULL;
    size_t mlen;
    int rc;

    (void)from_port;
    (void)from_addr;
    if (!n || !addr_ok(from_addr_len))
        return -EINVAL; /* a reply goes back to this address */
    df_buf_init(&dec, DF_GOSSIP_STREAM_MAX);
    df_buf_init(&unz, DF_GOSSIP_STREAM_UNZIP_MAX);
    df_buf_init(&reply, DF_GOSSIP_STREAM_MAX);
    df_buf_init(&wire, DF_GOSSIP_STREAM_MAX + 64);
    if (n->leave == LEFT) {
        rc = 0;
        goto out;
    }
    rc = stream_unwrap(n, buf, len, &dec, &unz, &msg, &mlen, &why);
    if (rc < 0) {
        /* Like memberlist's handleConn: tell the sender why, in our own
         * encryption, so that a node with another key learns it too. */
        if (inbound && why && stream_wrap_err(n, why, &reply, &wire) == 0)
            out_push(n, DF_GOSSIP_OUT_STREAM_REPLY, from_addr, from_addr_len, from_port, stream_id, wire.data,
                     wire.len);
        goto out;
    }
    if (inbound) {
        switch (msg[0]) {
        case DF_GOSSIP_PING: {
            df_gossip_ping_t p;
            df_gossip_ack_t a;
            rc = df_gossip_ping_decode(msg, mlen, &p);
            if (rc < 0 || (p.node.len && !bytes_is(p.node, n->name, n->name_len)))
                goto out;
            a.seq_no = p.seq_no;
            a.payload = B(NULL, 0);
            rc = df_gossip_ack_encode(&reply, &a);
            break;
        }
        case DF_GOSSIP_PUSH_PULL: {
            bool rjoin = false;
            /* Reply with our state as it was before the merge, like Go. */
            rc = encode_local_state(n, false, &reply);
            if (rc < 0)
                goto out;
            rc = merge_remote(n, msg, mlen, false, true, &rjoin, now_ms);
            if (rc < 0)
                goto out;
            /* Go echoes Join in the reply (sendLocalState(join)).  Our
             * encoder writes 06 83 a4"Join" <bool> first (sorted keys), so
             * the flag is byte 7. */
            if (rjoin && reply.len > 7 && (uint8_t)reply.data[7] == 0xc2)
                reply.data[7] = (char)0xc3;
            break;
        }
        default:
            rc = DF_EPROTO; /* user streams are unused by Serf */
            goto out;
        }
        if (rc == 0)
            rc = stream_wrap(n, (const uint8_t *)reply.data, reply.len, &wire);
        if (rc == 0)
            out_push(n, DF_GOSSIP_OUT_STREAM_REPLY, from_addr, from_addr_len, from_port, stream_id, wire.data,
                     wire.len);
        goto out;
    }
    {
        stream_t *s = stream_find(n, stream_id);
        if (!s) {
            rc = 0;
            goto out;
        }
        if (msg[0] == DF_GOSSIP_ERR) {
            df_gossip_bytes_t e;
            if (df_gossip_err_decode(msg, mlen, &e) == 0) {
                size_t l = e.len < sizeof(n->rx_errors.last_err) - 1 ? e.len : sizeof(n->rx_errors.last_err) - 1;
                memcpy(n->rx_errors.last_err, e.p, l);
                n->rx_errors.last_err[l] = '\0';
                n->rx_errors.err_replies++;
            }
        } else if (s->kind == STREAM_PING) {
            df_gossip_ack_t a;
            if (msg[0] == DF_GOSSIP_ACK && df_gossip_ack_decode(msg, mlen, &a) == 0 && a.seq_no == s->seq)
                handle_ack_seq(n, a.seq_no, now_ms);
        } else if (msg[0] == DF_GOSSIP_PUSH_PULL) {
            bool join = s->kind == STREAM_JOIN, replay = s->replay;
            s->kind = STREAM_FREE;
            rc = merge_remote(n, msg, mlen, join, replay, NULL, now_ms);
            if (rc == 0 && join)
                broadcast_join_intent(n, n->clock, now_ms);
        }
        if (s->kind != STREAM_FREE)
            s->kind = STREAM_FREE;
    }
out:
    /* encryption mismatches (why set) are counted by stream_unwrap */
    if (rc < 0 && rc != -ENOMEM && !why)
        n->rx_errors.malformed++;
    df_buf_free(&dec);
    df_buf_free(&unz);
    df_buf_free(&reply);
    df_buf_free(&wire);
    return rc;
}

void df_gossip_stream_failed(df_gossip_node_t *n, uint64_t stream_id, uint64_t now_ms)
{
    stream_t *s = stream_find(n, stream_id);

    (void)now_ms;
    if (s)
        s->kind = STREAM_FREE;
}

/* ================================================================= ticks */

/* gossip(): every gossip_interval, up to gossip_nodes random members that
 * are alive, suspect, or dead for less than gossip_to_dead (so a node
 * wrongly declared dead still hears it and can refute) each get one packet
 * of pending broadcasts: a single message as is, several as a compound.
 * The CRC wrapper goes on when the peer speaks protocol >= 5 (PMax), as
 * memberlist does on this path. */
static void gossip_round(df_gossip_node_t *n, uint64_t now)
{
    int32_t peers[64];
    size_t k = pick_random(n, DF_MIN(n->cfg.gossip_nodes, 64u), -1, true, now, peers), i, j;
    size_t offs[DF_GOSSIP_COMPOUND_SEND_MAX], lens[DF_GOSSIP_COMPOUND_SEND_MAX], np;
    df_gossip_bytes_t parts[DF_GOSSIP_COMPOUND_SEND_MAX];
    size_t avail = DF_GOSSIP_UDP_BUDGET - 2 - (n->encrypt ? DF_GOSSIP_ENCRYPT_OVERHEAD : 0);
    df_buf_t store, comp;

    df_buf_init(&store, DF_GOSSIP_PACKET_MAX);
    df_buf_init(&comp, DF_GOSSIP_PACKET_MAX);
    for (i = 0; i < k; i++) {
        const member_t *t = &n->m[peers[i]];
        np = 0;
        df_buf_reset(&store);
        get_broadcasts(n, 2, avail, &store, offs, lens, &np, DF_GOSSIP_COMPOUND_SEND_MAX);
        if (np == 0)
            break;
        if (np == 1) {
            send_raw(n, t->addr, t->addr_len, t->port, (const uint8_t *)store.data, lens[0], t->vsn[1] >= 5);
            continue;
        }
        for (j = 0; j < np; j++)
            parts[j] = B(store.data + offs[j], lens[j]);
        df_buf_reset(&comp);
        if (df_gossip_compound_encode(&comp, parts, np) == 0)
            send_raw(n, t->addr, t->addr_len, t->port, (const uint8_t *)comp.data, comp.len, t->vsn[1] >= 5);
    }
    df_buf_free(&store);
    df_buf_free(&comp);
}

/* pushPullScale: the interval grows with log2(n) past 32 nodes. */
static uint64_t pushpull_interval(const df_gossip_node_t *n)
{
    uint64_t iv = n->cfg.pushpull_interval_ms;

    if (n->ml_count > 32) {
        double mult = ceil(log2((double)n->ml_count) - log2(32.0)) + 1.0;
        iv = (uint64_t)((double)iv * mult);
    }
    return iv;
}

static void leave_advance(df_gossip_node_t *n, uint64_t now);

void df_gossip_tick(df_gossip_node_t *n, uint64_t now)
{
    size_t j;

    if (!n || n->leave == LEFT)
        return;
    /* Suspicion timers. */
    for (j = 0; j < n->m_n; j++) {
        member_t *mb = &n->m[j];
        if (mb->used && mb->susp && now >= mb->susp_deadline) {
            mb->susp = false;
            if (mb->in_ml && mb->state == DF_GOSSIP_STATE_SUSPECT && mb->state_change == mb->susp_change) {
                df_gossip_suspect_t d = {mb->incarnation, B(mb->name, mb->name_len), B(n->name, n->name_len)};
                dead_node(n, &d, now);
            }
        }
    }
    /* Probe cycle (stopped once we announced our death). */
    if (n->probe.active) {
        if (!n->probe.indirect_sent && now >= n->probe.timeout_at)
            probe_indirect(n, now);
        if (now >= n->probe.end)
            probe_finish(n, false, now);
    }
    if (!n->probe.active && now >= n->next_probe && n->leave < LEAVE_DEAD) {
        n->next_probe = now + n->cfg.probe_interval_ms;
        probe_start(n, now);
    }
    /* Relayed indirect pings whose target stayed silent: nack. */
    for (j = 0; j < DF_GOSSIP_RELAYS_MAX; j++) {
        relay_t *r = &n->relays[j];
        if (r->used && now >= r->deadline) {
            if (r->nack) {
                df_gossip_nack_t k = {r->orig_seq};
                df_buf_t b;
                df_buf_init(&b, 64);
                if (df_gossip_nack_encode(&b, &k) == 0)
                    send_msg(n, r->addr, r->addr_len, r->port, (const uint8_t *)b.data, b.len);
                df_buf_free(&b);
            }
            r->used = false;
        }
    }
    for (j = 0; j < DF_GOSSIP_STREAMS_MAX; j++)
        if (n->streams[j].kind != STREAM_FREE && now >= n->streams[j].deadline)
            n->streams[j].kind = STREAM_FREE;
    if (now >= n->next_gossip) {
        n->next_gossip = now + n->cfg.gossip_interval_ms;
        gossip_round(n, now);
    }
    if (n->cfg.pushpull_interval_ms && now >= n->next_pushpull) {
        int32_t peer;
        n->next_pushpull = now + pushpull_interval(n);
        if (n->leave == RUN && pick_random(n, 1, -1, false, now, &peer) == 1)
            start_pushpull(n, n->m[peer].addr, n->m[peer].addr_len, n->m[peer].port, STREAM_PUSHPULL, true, now);
    }
    for (j = 0; j < DF_GOSSIP_QUERIES_MAX; j++) {
        own_query_t *q = &n->own_queries[j];
        if (q->used && now >= q->deadline) {
            ev_push(n, DF_GOSSIP_EV_QUERY_DONE, "", 0, NULL, 0, q->ltime, q->id, false, NULL);
            free(q->acks);
            free(q->resps);
            memset(q, 0, sizeof(*q));
        }
    }
    if (n->leave != RUN)
        leave_advance(n, now);
}

uint64_t df_gossip_next_wakeup_ms(const df_gossip_node_t *n)
{
    uint64_t w = UINT64_MAX;
    size_t j;

    if (n->leave == LEFT)
        return UINT64_MAX;
    w = DF_MIN(w, n->next_gossip);
    if (n->cfg.pushpull_interval_ms)
        w = DF_MIN(w, n->next_pushpull);
    if (n->probe.active) {
        if (!n->probe.indirect_sent)
            w = DF_MIN(w, n->probe.timeout_at);
        w = DF_MIN(w, n->probe.end);
    } else if (n->leave < LEAVE_DEAD) {
        w = DF_MIN(w, n->next_probe);
    }
    for (j = 0; j < n->m_n; j++)
        if (n->m[j].used && n->m[j].susp)
            w = DF_MIN(w, n->m[j].susp_deadline);
    for (j = 0; j < DF_GOSSIP_RELAYS_MAX; j++)
        if (n->relays[j].used)
            w = DF_MIN(w, n->relays[j].deadline);
    for (j = 0; j < DF_GOSSIP_STREAMS_MAX; j++)
        if (n->streams[j].kind != STREAM_FREE)
            w = DF_MIN(w, n->streams[j].deadline);
    for (j = 0; j < DF_GOSSIP_QUERIES_MAX; j++)
        if (n->own_queries[j].used)
            w = DF_MIN(w, n->own_queries[j].deadline);
    if (n->leave != RUN)
        w = DF_MIN(w, n->leave_deadline);
    return w;
}

/* ================================================================ leave */

static bool any_alive_other(const df_gossip_node_t *n)
{
    size_t j;

    for (j = 0; j < n->m_n; j++)
        if (n->m[j].used && n->m[j].in_ml && (int)j != n->self && n->m[j].state == DF_GOSSIP_STATE_ALIVE)
            return true;
    return false;
}

/* The leave phases: each waits for its broadcast to be fully transmitted
 * (Serf/memberlist notify channels) or broadcast_timeout, then the node
 * stays up leave_propagate_ms to answer probes. */
static void leave_advance(df_gossip_node_t *n, uint64_t now)
{
    member_t *me = &n->m[n->self];

    if (n->leave == LEAVE_INTENT && (n->notify_fired[NOTIFY_LEAVE_INTENT] || now >= n->leave_deadline)) {
        df_gossip_suspect_t d = {me->incarnation, B(me->name, me->name_len), B(me->name, me->name_len)};
        n->leave = LEAVE_DEAD;
        n->probe.active = false;
        n->leave_deadline = now + n->cfg.broadcast_timeout_ms;
        if (!any_alive_other(n))
            n->leave_deadline = now;
        dead_node(n, &d, now);
    }
    if (n->leave == LEAVE_DEAD && (n->notify_fired[NOTIFY_LEAVE_DEAD] || now >= n->leave_deadline)) {
        n->leave = LEAVE_PROPAGATE;
        n->leave_deadline = now + n->cfg.leave_propagate_ms;
    }
    if (n->leave == LEAVE_PROPAGATE && now >= n->leave_deadline)
        n->leave = LEFT;
}

int df_gossip_leave(df_gossip_node_t *n, uint64_t now_ms)
{
    member_t *me = &n->m[n->self];
    df_serf_intent_t m;
    df_buf_t *b = &n->scratch;
    int rc;

    if (n->leave != RUN)
        return -EALREADY;
    n->leave = LEAVE_INTENT;
    m.ltime = n->clock;
    m.node = B(me->name, me->name_len);
    m.prune = false;
    n->clock++;
    serf_leave_intent(n, m.node, m.ltime, now_ms);
    df_buf_reset(b);
    rc = df_serf_intent_encode(b, DF_SERF_LEAVE, &m);
    if (rc < 0)
        return rc;
    enqueue(n, Q_SERF_INTENT, 0, b->data, b->len, NOTIFY_LEAVE_INTENT);
    n->leave_deadline = now_ms + n->cfg.broadcast_timeout_ms;
    if (!any_alive_other(n))
        n->leave_deadline = now_ms;
    return 0;
}

bool df_gossip_has_left(const df_gossip_node_t *n)
{
    return n->leave == LEFT;
}

/* =========================================================== public API */

void df_gossip_config_default(df_gossip_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->compress_streams = true;
    c->probe_interval_ms = 1000;
    c->probe_timeout_ms = 500;
    c->indirect_checks = 3;
    c->suspicion_mult = 4;
    c->suspicion_max_timeout_mult = 6;
    c->retransmit_mult = 4;
    c->gossip_interval_ms = 200;
    c->gossip_nodes = 3;
    c->gossip_to_dead_ms = 30000;
    c->pushpull_interval_ms = 30000;
    c->awareness_max = 8;
    c->tcp_timeout_ms = 10000;
    c->broadcast_timeout_ms = 5000;
    c->leave_propagate_ms = 1000;
    c->query_timeout_mult = 16;
    c->user_event_size_limit = 512;
    c->query_size_limit = 1024;
    c->query_response_size_limit = 1024;
}

const char *df_gossip_status_name(df_gossip_status_t s)
{
    switch (s) {
    case DF_GOSSIP_STATUS_ALIVE: return "alive";
    case DF_GOSSIP_STATUS_LEAVING: return "leaving";
    case DF_GOSSIP_STATUS_LEFT: return "left";
    case DF_GOSSIP_STATUS_FAILED: return "failed";
    default: return "none";
    }
}

int df_gossip_node_new(const df_gossip_config_t *cfg, uint64_t now_ms, df_gossip_node_t **out)
{
    df_gossip_node_t *n = NULL;
    df_gossip_bytes_t keys[DF_GOSSIP_TAGS_MAX], vals[DF_GOSSIP_TAGS_MAX];
    df_buf_t meta;
    df_gossip_alive_t a;
    size_t i, nl;
    int rc = -EINVAL;

    *out = NULL;
    df_buf_init(&meta, DF_GOSSIP_META_MAX);
    if (!cfg || !cfg->name || (cfg->addr_len != 4 && cfg->addr_len != 16) || cfg->ntags > DF_GOSSIP_TAGS_MAX ||
        cfg->probe_interval_ms == 0 || cfg->gossip_interval_ms == 0 || cfg->awareness_max == 0)
        goto out;
    nl = strlen(cfg->name);
    if (nl == 0 || nl > DF_GOSSIP_NAME_MAX)
        goto out;
    for (i = 0; i < cfg->ntags; i++) {
        keys[i] = B(cfg->tag_keys[i], strlen(cfg->tag_keys[i]));
        vals[i] = B(cfg->tag_values[i], strlen(cfg->tag_values[i]));
    }
    rc = df_serf_tags_encode(&meta, keys, vals, cfg->ntags);
    if (rc < 0)
        goto out;
    rc = -ENOMEM;
    n = calloc(1, sizeof(*n));
    if (!n)
        goto out;
    n->cfg = *cfg;
    n->cfg.name = NULL;
    n->cfg.tag_keys = n->cfg.tag_values = NULL;
    n->cfg.keyring = NULL;
    cpy(n->name, cfg->name, nl);
    n->name_len = nl;
    if (cfg->keyring && cfg->keyring->n > 0) {
        n->keyring = *cfg->keyring;
        n->encrypt = true;
    }
    n->rng = cfg->seed ^ name_hash(cfg->name, nl);
    n->hidx = malloc(HIDX_SIZE * sizeof(*n->hidx));
    n->plist = malloc(DF_GOSSIP_MEMBERS_MAX * sizeof(*n->plist));
    if (!n->hidx || !n->plist)
        goto out;
    for (i = 0; i < HIDX_SIZE; i++)
        n->hidx[i] = -1;
    df_buf_init(&n->scratch, DF_GOSSIP_PACKET_MAX);
    df_buf_init(&n->scratch2, DF_GOSSIP_PACKET_MAX);
    n->clock = n->event_clock = n->query_clock = 1;
    n->self = add_member(n, n->name, nl);
    if (n->self < 0)
        goto out;
    /* setAlive: our own state through aliveNode (bootstrap), which also
     * makes us a Serf member. */
    memset(&a, 0, sizeof(a));
    a.incarnation = 1;
    a.node = B(n->name, nl);
    a.addr = B(cfg->addr, cfg->addr_len);
    a.port = cfg->port;
    a.meta = B(meta.data ? meta.data : "", meta.len);
    a.has_vsn = true;
    cpy(a.vsn, df_gossip_serf_vsn, 6);
    alive_node(n, &a, true, now_ms);
    /* The bootstrap alive is not gossiped: only a join announces us. */
    for (i = 0; i < n->q[Q_ML].n; i++)
        free(n->q[Q_ML].v[i].msg);
    n->q[Q_ML].n = 0;
    n->plist[0] = n->self;
    n->plen = 1;
    n->next_probe = now_ms + rnd_below(n, cfg->probe_interval_ms);
    n->next_gossip = now_ms + rnd_below(n, cfg->gossip_interval_ms);
    /* memberlist staggers the first push/pull by a random part of the
     * interval (randomStagger), so that nodes started together spread out. */
    n->next_pushpull = now_ms + rnd_below(n, cfg->pushpull_interval_ms);
    *out = n;
    n = NULL;
    rc = 0;
out:
    df_buf_free(&meta);
    df_gossip_node_free(n);
    return rc;
}

void df_gossip_node_free(df_gossip_node_t *n)
{
    size_t i, j;

    if (!n)
        return;
    for (i = 0; i < Q_COUNT; i++) {
        for (j = 0; j < n->q[i].n; j++)
            free(n->q[i].v[j].msg);
        free(n->q[i].v);
    }
    for (i = 0; i < DF_GOSSIP_EVENT_SLOTS; i++)
        event_slot_clear(n, &n->events[i]);
    for (i = 0; i < DF_GOSSIP_QUERIES_MAX; i++) {
        free(n->own_queries[i].acks);
        free(n->own_queries[i].resps);
    }
    queue_clear(&n->outq);
    queue_clear(&n->evq);
    free(n->last_out);
    free(n->last_ev);
    df_buf_free(&n->scratch);
    df_buf_free(&n->scratch2);
    df_gossip_keyring_clear(&n->keyring);
    free(n->m);
    free(n->hidx);
    free(n->plist);
    free(n);
}

int df_gossip_join(df_gossip_node_t *n, const uint8_t *addr, size_t addr_len, uint16_t port, bool replay,
                   uint64_t now_ms)
{
    size_t before = n->outq.n;

    if (addr_len != 4 && addr_len != 16)
        return -EINVAL;
    if (n->leave != RUN)
        return -EINVAL;
    start_pushpull(n, addr, addr_len, port, STREAM_JOIN, replay, now_ms);
    return n->outq.n > before || n->outq.n == DF_GOSSIP_OUTPUTS_MAX ? 0 : -ENOMEM;
}

int df_gossip_next_output(df_gossip_node_t *n, df_gossip_output_t *out)
{
    qitem_t *it;

    free(n->last_out);
    n->last_out = NULL;
    it = queue_pop(&n->outq);
    if (!it)
        return 0;
    *out = it->u.out;
    out->data = it->data;
    out->len = it->len;
    n->last_out = it;
    return 1;
}

int df_gossip_next_event(df_gossip_node_t *n, df_gossip_event_t *ev)
{
    qitem_t *it;

    free(n->last_ev);
    n->last_ev = NULL;
    it = queue_pop(&n->evq);
    if (!it)
        return 0;
    *ev = it->u.ev;
    ev->payload = it->data;
    ev->meta = it->u.ev.meta_len ? it->data : NULL;
    n->last_ev = it;
    return 1;
}

int df_gossip_user_event(df_gossip_node_t *n, const char *name, const uint8_t *payload, size_t len, bool coalesce,
                         uint64_t now_ms)
{
    df_serf_user_event_t m;
    df_buf_t b;
    size_t nl = strlen(name);
    int rc;

    (void)now_ms;
    if (nl + len > n->cfg.user_event_size_limit || nl + len > DF_SERF_EVENT_SIZE_MAX)
        return DF_ETOOBIG;
    m.ltime = n->event_clock;
    m.name = B(name, nl);
    m.payload = B(payload ? payload : (const uint8_t *)"", len);
    m.cc = coalesce;
    df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
    rc = df_serf_user_event_encode(&b, &m);
    if (rc == 0 && b.len - 1 > n->cfg.user_event_size_limit)
        rc = DF_ETOOBIG; /* Serf checks the encoded message too */
    if (rc < 0)
        goto out;
    n->event_clock++;
    serf_user_event(n, m.ltime, m.name, m.payload, m.cc);
    enqueue(n, Q_SERF_EVENT, 0, b.data, b.len, NOTIFY_NONE);
out:
    df_buf_free(&b);
    return rc;
}

int df_gossip_query(df_gossip_node_t *n, const char *name, const uint8_t *payload, size_t len,
                    const char *const *nodes, size_t nnodes, bool request_ack, uint32_t timeout_ms, uint64_t now_ms,
                    uint32_t *id_out)
{
    df_serf_query_t *q = NULL;
    own_query_t *oq = NULL;
    df_gossip_bytes_t names[DF_SERF_FILTERS_MAX];
    df_buf_t b, f;
    const member_t *me = &n->m[n->self];
    size_t i;
    int rc = -ENOMEM;

    df_buf_init(&b, DF_GOSSIP_PACKET_MAX);
    df_buf_init(&f, DF_GOSSIP_PACKET_MAX);
    if (nnodes > DF_SERF_FILTERS_MAX) {
        rc = DF_ETOOBIG;
        goto out;
    }
    for (i = 0; i < DF_GOSSIP_QUERIES_MAX && !oq; i++)
        if (!n->own_queries[i].used)
            oq = &n->own_queries[i];
    if (!oq) {
        rc = -EBUSY;
        goto out;
    }
    q = calloc(1, sizeof(*q));
    if (!q)
        goto out;
    if (timeout_ms == 0)
        timeout_ms = n->cfg.gossip_interval_ms * n->cfg.query_timeout_mult * log10_scale(n->ml_count);
    q->ltime = n->query_clock;
    q->id = (uint32_t)(rnd(n) & 0x7fffffff);
    q->addr = B(me->addr, me->addr_len);
    q->port = me->port;
    q->source_node = B(me->name, me->name_len);
    q->filters_nil = true;
    if (nnodes) {
        for (i = 0; i < nnodes; i++)
            names[i] = B(nodes[i], strlen(nodes[i]));
        rc = df_serf_filter_nodes_encode(&f, names, nnodes);
        if (rc < 0)
            goto out;
        q->nfilters = 1;
        q->filters[0] = B(f.data, f.len);
        q->filters_nil = false;
    }
    q->flags = request_ack ? 1 : 0;
    q->timeout_ns = (int64_t)timeout_ms * 1000000;
    q->name = B(name, strlen(name));
    q->payload = B(payload ? payload : (const uint8_t *)"", len);
    rc = df_serf_query_encode(&b, q);
    if (rc < 0)
        goto out;
    if (b.len - 1 > n->cfg.query_size_limit) {
        rc = DF_ETOOBIG;
        goto out;
    }
    memset(oq, 0, sizeof(*oq));
    oq->used = true;
    oq->ltime = q->ltime;
    oq->id = q->id;
    oq->deadline = now_ms + timeout_ms;
    serf_query(n, q, now_ms);
    enqueue(n, Q_SERF_QUERY, 0, b.data, b.len, NOTIFY_NONE);
    if (id_out)
        *id_out = q->id;
    rc = 0;
out:
    free(q);
    df_buf_free(&b);
    df_buf_free(&f);
    return rc;
}

int df_gossip_respond(df_gossip_node_t *n, uint64_t ltime, uint32_t query_id, const uint8_t *payload, size_t len,
                      uint64_t now_ms)
{
    size_t i;
    int rc;

    for (i = 0; i < INBOUND_QUERIES_MAX; i++) {
        inbound_query_t *q = &n->inq[i];
        if (!q->used || q->ltime != ltime || q->id != query_id)
            continue;
        if (q->responded)
            return -EALREADY;
        if (now_ms > q->deadline)
            return -ENOENT;
        rc = send_query_response(n, q->addr, q->addr_len, q->port, ltime, query_id, 0,
                                 B(payload ? payload : (const uint8_t *)"", len));
        if (rc == 0)
            q->responded = true; /* Serf answers once per query */
        return rc;
    }
    return -ENOENT;
}

static void member_info(const member_t *mb, df_gossip_member_t *m)
{
    m->name = mb->name;
    m->addr = mb->addr;
    m->addr_len = mb->addr_len;
    m->port = mb->port;
    m->meta = mb->meta;
    m->meta_len = mb->meta_len;
    m->incarnation = mb->incarnation;
    m->status = mb->status;
    m->ml_state = mb->state;
    cpy(m->vsn, mb->vsn, 6);
}

int df_gossip_member_get(const df_gossip_node_t *n, const char *name, df_gossip_member_t *m)
{
    int j = find_member(n, name, strlen(name));

    if (j < 0 || n->m[j].status == DF_GOSSIP_STATUS_NONE)
        return -ENOENT;
    member_info(&n->m[j], m);
    return 0;
}

void df_gossip_member_foreach(const df_gossip_node_t *n, void (*cb)(const df_gossip_member_t *m, void *arg),
                              void *arg)
{
    df_gossip_member_t m;
    size_t j;

    for (j = 0; j < n->m_n; j++)
        if (n->m[j].used && n->m[j].status != DF_GOSSIP_STATUS_NONE) {
            member_info(&n->m[j], &m);
            cb(&m, arg);
        }
}

size_t df_gossip_count(const df_gossip_node_t *n, df_gossip_status_t status)
{
    size_t j, c = 0;

    for (j = 0; j < n->m_n; j++)
        if (n->m[j].used && n->m[j].status == status)
            c++;
    return c;
}

int df_gossip_health_score(const df_gossip_node_t *n)
{
    return n->awareness;
}

void df_gossip_rx_errors(const df_gossip_node_t *n, df_gossip_rx_errors_t *out)
{
    *out = n->rx_errors;
}

uint32_t df_gossip_incarnation(const df_gossip_node_t *n)
{
    return n->m[n->self].incarnation;
}
