/* Deterministic in-process simulation of a Serf/memberlist cluster built
 * from df_gossip nodes (lib/gossip/gossip_node.h): N nodes on a fake clock
 * and a simulated network (seeded PRNG, UDP loss, random latency; TCP
 * reliable unless the peer is dead).  Checks, each against a bound derived
 * from the protocol parameters (see derive_bounds):
 *   1. membership converges: every node sees every other alive;
 *   2. a killed node is marked failed by all survivors within the
 *      Lifeguard bound;
 *   3. a user event from one node reaches every node;
 *   4. a query from one node is answered by (nearly) every node;
 *   5. a node that leaves gracefully shows as left everywhere.
 * Every run with the same seed is identical; the measured times are
 * printed so that changes in behaviour show up in the CI log.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "gossip/gossip_node.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 200 nodes take about 3 s here and 8.5 s under ASan+UBSan (2 shared
 * cores), so the cluster is not scaled down for sanitizer builds. */
#define SIM_N 200

#define LOSS_PCT 5
#define LAT_MIN 1
#define LAT_MAX 20
#define JOIN_SPACING_MS 10

/* ------------------------------------------------------------- network */

typedef enum { D_UDP, D_STREAM_REQ, D_STREAM_REPLY, D_STREAM_FAIL } dkind_t;

typedef struct {
    uint64_t t, seq;
    dkind_t kind;
    int to, from;
    uint64_t sid; /* D_STREAM_REQ: sim stream id; REPLY/FAIL: the opener's id */
    uint8_t *data;
    size_t len;
} delivery_t;

typedef struct {
    int opener;
    uint64_t opener_sid;
} sim_stream_t;

typedef struct {
    int n; /* nodes in this run (<= SIM_N) */
    const df_gossip_keyring_t *keyring;
    df_gossip_node_t *node[SIM_N];
    bool dead[SIM_N];
    uint64_t wake[SIM_N];
    uint64_t now, seq;
    uint64_t rng;
    delivery_t *heap;
    size_t hn, hcap;
    sim_stream_t *streams;
    size_t nstreams, scap;
    /* observations */
    uint64_t event_seen[SIM_N]; /* time the test's user event arrived (0 = not yet) */
    size_t query_acks, query_resps;
    uint32_t query_id;
    int querier;
    uint64_t udp_sent, udp_lost, streams_opened;
} sim_t;

static uint64_t srand64(sim_t *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool dl_less(const delivery_t *a, const delivery_t *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void heap_push(sim_t *s, delivery_t d)
{
    size_t i;

    if (s->hn == s->hcap) {
        s->hcap = s->hcap ? s->hcap * 2 : 1024;
        s->heap = realloc(s->heap, s->hcap * sizeof(*s->heap));
        assert_non_null(s->heap);
    }
    d.seq = ++s->seq;
    i = s->hn++;
    while (i > 0 && dl_less(&d, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = d;
}

static delivery_t heap_pop(sim_t *s)
{
    delivery_t top = s->heap[0], last = s->heap[--s->hn];
    size_t i = 0, c;

    while ((c = 2 * i + 1) < s->hn) {
        if (c + 1 < s->hn && dl_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!dl_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->hn)
        s->heap[i] = last;
    return top;
}

static void node_addr(int i, uint8_t a[4])
{
    a[0] = 10;
    a[1] = 0;
    a[2] = (uint8_t)(i >> 8);
    a[3] = (uint8_t)(i & 0xff);
}

static int addr_node(const uint8_t *a, size_t alen, uint16_t port)
{
    int i;

    if (alen != 4 || a[0] != 10 || port != 7946)
        return -1;
    i = (a[2] << 8) | a[3];
    return i < SIM_N ? i : -1; /* the caller checks the node exists */
}

static uint64_t latency(sim_t *s)
{
    return LAT_MIN + srand64(s) % (LAT_MAX - LAT_MIN + 1);
}

static uint8_t *dup(const uint8_t *p, size_t len)
{
    uint8_t *d = malloc(len ? len : 1);
    assert_non_null(d);
    memcpy(d, p, len);
    return d;
}

static const char *TEST_EVENT = "deploy";

static void drain(sim_t *s, int i)
{
    df_gossip_node_t *n = s->node[i];
    df_gossip_output_t o;
    df_gossip_event_t ev;

    while (df_gossip_next_output(n, &o)) {
        delivery_t d;
        int to = addr_node(o.addr, o.addr_len, o.port);

        if (to >= s->n)
            to = -1;

        memset(&d, 0, sizeof(d));
        d.from = i;
        switch (o.kind) {
        case DF_GOSSIP_OUT_UDP:
            s->udp_sent++;
            if (to < 0 || srand64(s) % 100 < LOSS_PCT) {
                s->udp_lost++;
                continue;
            }
            d.kind = D_UDP;
            d.to = to;
            d.t = s->now + latency(s);
            break;
        case DF_GOSSIP_OUT_STREAM_OPEN:
            s->streams_opened++;
            if (to < 0) {
                d.kind = D_STREAM_FAIL;
                d.to = i;
                d.sid = o.stream_id;
                d.t = s->now + 1;
                heap_push(s, d);
                continue;
            }
            if (s->nstreams == s->scap) {
                s->scap = s->scap ? s->scap * 2 : 1024;
                s->streams = realloc(s->streams, s->scap * sizeof(*s->streams));
                assert_non_null(s->streams);
            }
            s->streams[s->nstreams].opener = i;
            s->streams[s->nstreams].opener_sid = o.stream_id;
            d.kind = D_STREAM_REQ;
            d.to = to;
            d.sid = s->nstreams++;
            d.t = s->now + latency(s);
            break;
        case DF_GOSSIP_OUT_STREAM_REPLY:
            assert_true(o.stream_id < s->nstreams);
            d.kind = D_STREAM_REPLY;
            d.to = s->streams[o.stream_id].opener;
            d.sid = s->streams[o.stream_id].opener_sid;
            d.t = s->now + latency(s);
            break;
        }
        d.data = dup(o.data, o.len);
        d.len = o.len;
        heap_push(s, d);
    }
    while (df_gossip_next_event(n, &ev)) {
        if (ev.kind == DF_GOSSIP_EV_USER && strcmp(ev.name, TEST_EVENT) == 0 && !s->event_seen[i])
            s->event_seen[i] = s->now;
        if (ev.kind == DF_GOSSIP_EV_QUERY) {
            char answer[64];
            int len = snprintf(answer, sizeof(answer), "node-%d", i);
            assert_int_equal(df_gossip_respond(n, ev.ltime, ev.query_id, (const uint8_t *)answer, (size_t)len,
                                               s->now),
                             0);
        }
        if (ev.kind == DF_GOSSIP_EV_QUERY_ACK && i == s->querier && ev.query_id == s->query_id)
            s->query_acks++;
        if (ev.kind == DF_GOSSIP_EV_QUERY_RESPONSE && i == s->querier && ev.query_id == s->query_id)
            s->query_resps++;
    }
    s->wake[i] = df_gossip_next_wakeup_ms(n);
}

static void deliver(sim_t *s, delivery_t *d)
{
    uint8_t from[4];
    int rc;

    node_addr(d->from, from);
    if (s->dead[d->to]) {
        /* A dead host: datagrams vanish, connections fail. */
        if (d->kind == D_STREAM_REQ) {
            delivery_t f = {0};
            f.kind = D_STREAM_FAIL;
            f.to = d->from;
            f.sid = s->streams[d->sid].opener_sid;
            f.t = s->now + 2 * LAT_MAX;
            heap_push(s, f);
        }
        return;
    }
    switch (d->kind) {
    case D_UDP:
        rc = df_gossip_recv_packet(s->node[d->to], from, 4, 7946, d->data, d->len, s->now);
        assert_int_equal(rc, 0);
        break;
    case D_STREAM_REQ: {
        size_t ml;
        /* The caller frames streams with the codec's framer. */
        assert_int_equal(df_gossip_stream_msg_len(d->data, d->len, &ml), 0);
        assert_int_equal(ml, d->len);
        rc = df_gossip_recv_stream(s->node[d->to], d->sid, true, from, 4, 7946, d->data, d->len, s->now);
        assert_int_equal(rc, 0);
        break;
    }
    case D_STREAM_REPLY:
        rc = df_gossip_recv_stream(s->node[d->to], d->sid, false, from, 4, 7946, d->data, d->len, s->now);
        assert_int_equal(rc, 0);
        break;
    case D_STREAM_FAIL:
        df_gossip_stream_failed(s->node[d->to], d->sid, s->now);
        break;
    }
    drain(s, d->to);
}

/* Advances the world by one millisecond. */
static void step(sim_t *s)
{
    int i;

    s->now++;
    while (s->hn && s->heap[0].t <= s->now) {
        delivery_t d = heap_pop(s);
        deliver(s, &d);
        free(d.data);
    }
    for (i = 0; i < s->n; i++)
        if (!s->dead[i] && s->node[i] && s->wake[i] <= s->now) {
            df_gossip_tick(s->node[i], s->now);
            drain(s, i);
        }
}

static void make_node(sim_t *s, int i)
{
    df_gossip_config_t cfg;
    static const char *keys[] = {"role", "idx"};
    const char *vals[2];
    char name[32], idx[16];

    df_gossip_config_default(&cfg);
    snprintf(name, sizeof(name), "node-%03d", i);
    snprintf(idx, sizeof(idx), "%d", i);
    vals[0] = i % 2 ? "odd" : "even";
    vals[1] = idx;
    cfg.name = name;
    node_addr(i, cfg.addr);
    cfg.addr_len = 4;
    cfg.port = 7946;
    cfg.tag_keys = keys;
    cfg.tag_values = vals;
    cfg.ntags = 2;
    cfg.seed = 0x5eed0000u + (uint64_t)i;
    cfg.compress_streams = (i % 2) == 0; /* both forms on the wire */
    cfg.keyring = s->keyring;
    assert_int_equal(df_gossip_node_new(&cfg, s->now, &s->node[i]), 0);
    s->wake[i] = df_gossip_next_wakeup_ms(s->node[i]);
}

/* How many live nodes see `name` with `status` (the subject excluded). */
static int count_seeing(sim_t *s, int subject, df_gossip_status_t status)
{
    char name[32];
    df_gossip_member_t m;
    int i, c = 0;

    snprintf(name, sizeof(name), "node-%03d", subject);
    for (i = 0; i < s->n; i++) {
        if (i == subject || s->dead[i])
            continue;
        if (df_gossip_member_get(s->node[i], name, &m) == 0 && m.status == status)
            c++;
    }
    return c;
}

static int live_count(sim_t *s)
{
    int i, c = 0;

    for (i = 0; i < s->n; i++)
        c += !s->dead[i];
    return c;
}

static bool all_converged(sim_t *s)
{
    int i;

    for (i = 0; i < s->n; i++)
        if (!s->dead[i] && df_gossip_count(s->node[i], DF_GOSSIP_STATUS_ALIVE) != (size_t)s->n)
            return false;
    return true;
}

/* ------------------------------------------------------------- bounds */

typedef struct {
    uint32_t limit;        /* retransmit limit: mult * ceil(log10(N+1)) */
    uint64_t susp_min, susp_max;
    uint64_t round;        /* one gossip hop: interval + worst latency */
    uint32_t hops;         /* epidemic depth ceil(log_{f+1} N) + limit/f rounds to exhaust a holder */
    uint64_t dissem;       /* time for one broadcast to reach all */
    uint64_t join_bound, fail_bound, event_bound, leave_bound;
} bounds_t;

static void derive_bounds(bounds_t *b, int n)
{
    const double N = n, f = 3, interval = 200, probe = 1000;
    double drain_packets;

    b->limit = 4 * (uint32_t)ceil(log10(N + 1));
    b->susp_min = (uint64_t)(4 * fmax(1.0, log10(N)) * probe);
    b->susp_max = 6 * b->susp_min;
    b->round = (uint64_t)interval + LAT_MAX;
    /* Epidemic: the number of holders grows by up to (f+1)x per round, so
     * ceil(log_{f+1} N) rounds in the lossless case; each holder keeps
     * sending for limit/f rounds, which covers the stragglers; loss (5%)
     * and the random choice double it. */
    b->hops = (uint32_t)ceil(log(N) / log(f + 1)) + (uint32_t)ceil(b->limit / f);
    b->dissem = 2 * b->hops * b->round;
    /* Join storm: every node must send N alive + N join-intent messages
     * (~100 bytes each with compound overhead) limit times, f packets of
     * 1400 bytes per gossip interval (acks and pings carry more): the
     * queue drains within N*limit*100/(f*1400) intervals.  Push/pull
     * (a full state sync at join) covers what the queue dropped. */
    drain_packets = N * b->limit * 100.0 / (f * 1400.0);
    b->join_bound = (uint64_t)(n * JOIN_SPACING_MS) + (uint64_t)(drain_packets * interval) + b->dissem;
    /* A node can miss a member whose epidemic ended before it joined (its
     * join push/pull went to a peer that had not heard of it yet): then
     * only anti-entropy helps.  Every node makes its first push/pull
     * within one base interval (30 s, random stagger) of starting, with a
     * random alive peer that almost surely knows everybody by then. */
    b->join_bound += 30000;
    /* Failure: someone probes the dead node within a few probe intervals
     * (each of N-1 probers hits it once per cycle of N-1 probes: expected
     * ~1 s; 10 s misses with probability ~e^-10), the suspicion lasts at
     * most susp_max (no confirmation) and at least susp_min, the dead
     * message then spreads like any broadcast. */
    b->fail_bound = 10 * (uint64_t)probe + b->susp_max + b->dissem;
    b->event_bound = b->dissem;
    /* Leave: intent spreads, the leaver waits until it sent the intent
     * limit times (<= broadcast timeout 5 s), then the dead-self message
     * spreads. */
    b->leave_bound = 5000 + 2 * b->dissem;
}

/* --------------------------------------------------------------- test */

static void test_cluster(void **state)
{
    sim_t *s = calloc(1, sizeof(*s));
    bounds_t b;
    uint64_t t0, t_conv, t_fail = 0, t_event, t_leave;
    int i, killed = SIM_N / 3, leaver = SIM_N / 2, sender = SIM_N - 1;
    uint8_t a[4];

    (void)state;
    assert_non_null(s);
    s->n = SIM_N;
    s->rng = 42;
    s->querier = -1;
    derive_bounds(&b, s->n);
    print_message("sim: N=%d loss=%d%% latency=%d-%d ms, retransmit limit %u, suspicion %llu..%llu ms\n", s->n,
                  LOSS_PCT, LAT_MIN, LAT_MAX, b.limit, (unsigned long long)b.susp_min,
                  (unsigned long long)b.susp_max);

    /* 1. Join: node i starts at i*10 ms and joins a random earlier node. */
    make_node(s, 0);
    for (i = 1; i < s->n; i++) {
        while (s->now < (uint64_t)i * JOIN_SPACING_MS)
            step(s);
        make_node(s, i);
        node_addr((int)(srand64(s) % (uint64_t)i), a);
        assert_int_equal(df_gossip_join(s->node[i], a, 4, 7946, false, s->now), 0);
        drain(s, i);
    }
    while (!all_converged(s) && s->now < b.join_bound) {
        step(s);
        if (getenv("SIM_DEBUG") && s->now % 1000 == 0) {
            size_t mn = (size_t)s->n, mx = 0, sum = 0;
            for (i = 0; i < s->n; i++) {
                size_t c = df_gossip_count(s->node[i], DF_GOSSIP_STATUS_ALIVE);
                mn = c < mn ? c : mn;
                mx = c > mx ? c : mx;
                sum += c;
            }
            fprintf(stderr, "t=%llu alive min %zu max %zu avg %zu heap %zu\n", (unsigned long long)s->now, mn, mx,
                    sum / (size_t)s->n, s->hn);
        }
    }
    t_conv = s->now;
    print_message("sim: membership converged at %llu ms (last join %d ms, bound %llu ms)\n",
                  (unsigned long long)t_conv, (s->n - 1) * JOIN_SPACING_MS, (unsigned long long)b.join_bound);
    if (!all_converged(s)) {
        for (i = 0; i < s->n; i++) {
            int k;
            if (df_gossip_count(s->node[i], DF_GOSSIP_STATUS_ALIVE) == (size_t)s->n)
                continue;
            for (k = 0; k < s->n; k++) {
                char nm[32];
                df_gossip_member_t m;
                snprintf(nm, sizeof(nm), "node-%03d", k);
                if (df_gossip_member_get(s->node[i], nm, &m) < 0)
                    fprintf(stderr, "node %d: %s unknown\n", i, nm);
                else if (m.status != DF_GOSSIP_STATUS_ALIVE)
                    fprintf(stderr, "node %d: %s status %s ml %d inc %u\n", i, nm, df_gossip_status_name(m.status),
                            m.ml_state, m.incarnation);
            }
        }
    }
    assert_true(all_converged(s));
    /* Settle a little so joins' broadcasts are gone before the next phase. */
    for (t0 = s->now; s->now < t0 + 5000;)
        step(s);
    assert_true(all_converged(s));

    /* 2. User event from one node reaches all. */
    memset(s->event_seen, 0, sizeof(s->event_seen));
    t0 = s->now;
    assert_int_equal(df_gossip_user_event(s->node[sender], TEST_EVENT, (const uint8_t *)"v42", 3, false, s->now), 0);
    drain(s, sender);
    for (;;) {
        int missing = 0;
        for (i = 0; i < s->n; i++)
            missing += !s->event_seen[i];
        if (!missing || s->now >= t0 + b.event_bound)
            break;
        step(s);
    }
    t_event = 0;
    for (i = 0; i < s->n; i++) {
        assert_true(s->event_seen[i] != 0);
        if (s->event_seen[i] - t0 > t_event)
            t_event = s->event_seen[i] - t0;
    }
    print_message("sim: user event reached all %d nodes in %llu ms (bound %llu ms)\n", s->n,
                  (unsigned long long)t_event, (unsigned long long)b.event_bound);
    /* Duplicates are not delivered again: run on and check nobody saw it twice
     * (event_seen keeps the first time; the node's ring dedups). */
    for (t0 = s->now; s->now < t0 + 3000;)
        step(s);

    /* 3. Query with ack: everybody acks and answers before the deadline. */
    s->querier = 0;
    assert_int_equal(df_gossip_query(s->node[0], "whoami", (const uint8_t *)"hi", 2, NULL, 0, true, 0, s->now,
                                     &s->query_id),
                     0);
    drain(s, 0);
    for (t0 = s->now; s->now < t0 + 6000;)
        step(s);
    print_message("sim: query: %zu acks, %zu responses of %d\n", s->query_acks, s->query_resps, s->n);
    /* Responses travel by direct UDP with 5% loss and no retry (as in Serf). */
    assert_true(s->query_acks >= (size_t)(s->n * 85 / 100));
    assert_true(s->query_resps >= (size_t)(s->n * 85 / 100));

    /* 4. Kill a node: every survivor marks it failed within the bound. */
    s->dead[killed] = true;
    t0 = s->now;
    while (count_seeing(s, killed, DF_GOSSIP_STATUS_FAILED) < live_count(s) && s->now < t0 + b.fail_bound)
        step(s);
    t_fail = s->now - t0;
    print_message("sim: killed node marked failed by all %d survivors in %llu ms (bound %llu ms)\n",
                  live_count(s), (unsigned long long)t_fail, (unsigned long long)b.fail_bound);
    assert_int_equal(count_seeing(s, killed, DF_GOSSIP_STATUS_FAILED), live_count(s));

    /* 5. Graceful leave: everybody shows it as left. */
    t0 = s->now;
    assert_int_equal(df_gossip_leave(s->node[leaver], s->now), 0);
    drain(s, leaver);
    while (count_seeing(s, leaver, DF_GOSSIP_STATUS_LEFT) < live_count(s) - 1 && s->now < t0 + b.leave_bound)
        step(s);
    t_leave = s->now - t0;
    print_message("sim: leaving node shown as left by all in %llu ms (bound %llu ms)\n",
                  (unsigned long long)t_leave, (unsigned long long)b.leave_bound);
    assert_int_equal(count_seeing(s, leaver, DF_GOSSIP_STATUS_LEFT), live_count(s) - 1);
    while (!df_gossip_has_left(s->node[leaver]) && s->now < t0 + 20000)
        step(s);
    assert_true(df_gossip_has_left(s->node[leaver]));
    s->dead[leaver] = true;
    /* It stays left (not failed) while the cluster runs on. */
    for (t0 = s->now; s->now < t0 + 5000;)
        step(s);
    assert_int_equal(count_seeing(s, leaver, DF_GOSSIP_STATUS_LEFT), live_count(s));
    assert_int_equal(count_seeing(s, killed, DF_GOSSIP_STATUS_FAILED), live_count(s));
    /* Nobody believes a live node failed. */
    for (i = 0; i < s->n; i++)
        if (!s->dead[i])
            assert_int_equal(df_gossip_count(s->node[i], DF_GOSSIP_STATUS_ALIVE), (size_t)s->n - 2);
    print_message("sim: %llu datagrams (%llu lost), %llu streams, %llu ms simulated\n",
                  (unsigned long long)s->udp_sent, (unsigned long long)s->udp_lost,
                  (unsigned long long)s->streams_opened, (unsigned long long)s->now);

    for (i = 0; i < s->n; i++)
        df_gossip_node_free(s->node[i]);
    while (s->hn) {
        delivery_t d = heap_pop(s);
        free(d.data);
    }
    free(s->heap);
    free(s->streams);
    free(s);
}

/* An encrypted cluster (AES-256-GCM keyring on every node, streams and
 * datagrams): it converges, and a node that crashed and is restarted at
 * the same address refutes its own death (incarnation bump) and is alive
 * again everywhere (spec §3.5, §6 step 8). */
static void test_encrypted_restart(void **state)
{
    sim_t *s = calloc(1, sizeof(*s));
    df_gossip_keyring_t kr;
    uint8_t key[32], a[4];
    bounds_t b;
    df_gossip_member_t m;
    uint64_t t0;
    int i, r = 5;

    (void)state;
    assert_non_null(s);
    for (i = 0; i < 32; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    df_gossip_keyring_init(&kr);
    assert_int_equal(df_gossip_keyring_add(&kr, key, 32, true), 0);
    s->n = 16;
    s->keyring = &kr;
    s->rng = 7;
    s->querier = -1;
    derive_bounds(&b, s->n);
    make_node(s, 0);
    for (i = 1; i < s->n; i++) {
        while (s->now < (uint64_t)i * JOIN_SPACING_MS)
            step(s);
        make_node(s, i);
        node_addr(0, a);
        assert_int_equal(df_gossip_join(s->node[i], a, 4, 7946, false, s->now), 0);
        drain(s, i);
    }
    while (!all_converged(s) && s->now < b.join_bound)
        step(s);
    assert_true(all_converged(s));
    print_message("sim(encrypted, N=%d): converged at %llu ms\n", s->n, (unsigned long long)s->now);

    /* Crash r, wait until everyone marks it failed. */
    s->dead[r] = true;
    t0 = s->now;
    while (count_seeing(s, r, DF_GOSSIP_STATUS_FAILED) < live_count(s) && s->now < t0 + b.fail_bound)
        step(s);
    assert_int_equal(count_seeing(s, r, DF_GOSSIP_STATUS_FAILED), live_count(s));
    print_message("sim(encrypted): crashed node failed everywhere after %llu ms\n",
                  (unsigned long long)(s->now - t0));

    /* Restart it: a fresh node with incarnation 1 under the same name. */
    df_gossip_node_free(s->node[r]);
    s->dead[r] = false;
    make_node(s, r);
    node_addr(0, a);
    assert_int_equal(df_gossip_join(s->node[r], a, 4, 7946, false, s->now), 0);
    drain(s, r);
    t0 = s->now;
    while (!all_converged(s) && s->now < t0 + b.dissem + 30000)
        step(s);
    assert_true(all_converged(s));
    assert_true(df_gossip_incarnation(s->node[r]) > 1);
    assert_int_equal(df_gossip_member_get(s->node[0], "node-005", &m), 0);
    assert_int_equal(m.incarnation, df_gossip_incarnation(s->node[r]));
    print_message("sim(encrypted): restarted node refuted (incarnation %u), alive everywhere after %llu ms\n",
                  df_gossip_incarnation(s->node[r]), (unsigned long long)(s->now - t0));

    for (i = 0; i < s->n; i++)
        df_gossip_node_free(s->node[i]);
    while (s->hn) {
        delivery_t d = heap_pop(s);
        free(d.data);
    }
    free(s->heap);
    free(s->streams);
    free(s);
    df_gossip_keyring_clear(&kr);
}

/* Hostile input is dropped and counted, never fatal: a packet that is not
 * msgpack, a compound with an absurd count, an empty and an oversized
 * datagram, and an inbound stream of garbage each add one to "malformed";
 * the node is still usable afterwards. */
static void test_malformed_counted(void **state)
{
    sim_t *s = calloc(1, sizeof(*s));
    static const uint8_t junk[] = {0x02, 0xc1, 0xc1, 0xc1};          /* ping, then a never-used byte */
    static const uint8_t compound[] = {0x07, 0xff, 0x00, 0x10};     /* compound: 255 parts, 1 length */
    static const uint8_t stream[] = {0x06, 0x93, 0xc1};             /* push/pull header that is not a map */
    uint8_t *big = calloc(1, DF_GOSSIP_PACKET_MAX + 1);
    uint8_t a[4];
    df_gossip_rx_errors_t rx;

    (void)state;
    assert_non_null(s);
    assert_non_null(big);
    s->n = 1;
    s->querier = -1;
    make_node(s, 0);
    node_addr(1, a);
    assert_int_equal(df_gossip_recv_packet(s->node[0], a, 4, 7946, junk, sizeof(junk), s->now), 0);
    df_gossip_rx_errors(s->node[0], &rx);
    assert_int_equal(rx.malformed, 1);
    assert_int_equal(df_gossip_recv_packet(s->node[0], a, 4, 7946, compound, sizeof(compound), s->now), 0);
    df_gossip_rx_errors(s->node[0], &rx);
    assert_int_equal(rx.malformed, 2);
    assert_int_equal(df_gossip_recv_packet(s->node[0], a, 4, 7946, big, DF_GOSSIP_PACKET_MAX + 1, s->now), 0);
    df_gossip_rx_errors(s->node[0], &rx);
    assert_int_equal(rx.malformed, 3);
    assert_int_equal(df_gossip_recv_packet(s->node[0], a, 4, 7946, big, 0, s->now), 0);
    df_gossip_rx_errors(s->node[0], &rx);
    assert_int_equal(rx.malformed, 4);
    assert_true(df_gossip_recv_stream(s->node[0], 1, true, a, 4, 7946, stream, sizeof(stream), s->now) < 0);
    df_gossip_rx_errors(s->node[0], &rx);
    assert_int_equal(rx.malformed, 5);
    assert_int_equal(rx.wrong_key, 0);
    assert_int_equal(df_gossip_count(s->node[0], DF_GOSSIP_STATUS_ALIVE), 1);
    df_gossip_node_free(s->node[0]);
    while (s->hn) {
        delivery_t d = heap_pop(s);
        free(d.data);
    }
    free(big);
    free(s->heap);
    free(s->streams);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_counted),
        cmocka_unit_test(test_cluster),
        cmocka_unit_test(test_encrypted_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
