/* memberlist/Serf wire codec against the hex captures of
 * shared/specs/serf-wire.md (§1.4, §1.5, §1.7, §2.4, §4.2): each is decoded
 * field by field and re-encoded to the same bytes (Go's encoding is
 * deterministic for these: sorted struct keys, raw strings, smallest ints).
 * Then hostile inputs: truncation, wrong types, absurd counts, bad Vsn,
 * oversize names/meta/events, nesting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/core.h"
#include "gossip/gossip_codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIT(s) (const uint8_t *)(s), sizeof(s) - 1
#define BYTES(s) ((df_gossip_bytes_t){(const uint8_t *)(s), sizeof(s) - 1})

/* Captures (string literals are split wherever a hex escape meets a letter
 * that is also a hex digit). */
static const char cap_ping[] = /* §2.4, 59 bytes */
    "\x00\x85\xa4" "Node" "\xa1" "b" "\xa5" "SeqNo" "\x01\xaa" "SourceAddr" "\xa4\x7f\x00\x00\x01"
    "\xaa" "SourceNode" "\xa1" "a" "\xaa" "SourcePort" "\xcd\x1f\x0a";
static const char cap_suspect[] = /* §1.4, second compound part, 29 bytes */
    "\x03\x83\xa4" "From" "\xa1" "a" "\xab" "Incarnation" "\x01\xa4" "Node" "\xa1" "b";
static const char cap_alive[] = /* §2.4, 75 bytes */
    "\x04\x86\xa4" "Addr" "\xa4\x7f\x00\x00\x01\xab" "Incarnation" "\x01\xa4" "Meta"
    "\xb2\xff\x82\xa4" "role" "\xa3" "web" "\xa2" "dc" "\xa3" "lab" "\xa4" "Node" "\xa1" "a"
    "\xa4" "Port" "\xcd\x1f\x0a\xa3" "Vsn" "\xa6\x01\x05\x02\x02\x05\x05";
static const char cap_join_crc[] = /* §1.5 */
    "\x0c\x13\x9a\xa5\x5a\x08\x01\x82\xa5" "LTime" "\x01\xa4" "Node" "\xa1" "b";
static const char cap_leave[] = /* §4.2 */
    "\x08\x00\x83\xa5" "LTime" "\x03\xa4" "Node" "\xa1" "b" "\xa5" "Prune" "\xc2";
static const char cap_event[] = /* §4.2 */
    "\x08\x03\x84\xa2" "CC" "\xc3\xa5" "LTime" "\x01\xa4" "Name" "\xa6" "deploy" "\xa7" "Payload"
    "\xad" "hello-payload";
static const char cap_qresp[] = /* §4.2, a query ack */
    "\x08\x05\x85\xa5" "Flags" "\x01\xa4" "From" "\xa1" "b" "\xa2" "ID" "\xce\x1d\x4a\x51\x1a\xa5" "LTime"
    "\x01\xa7" "Payload" "\xc0";
static const char cap_pp_head[] = /* §2.4, decompressed push/pull up to the user state */
    "\x06\x83\xa4" "Join" "\xc3\xa5" "Nodes" "\x01\xac" "UserStateLen" "\xcd\x02\x49"
    "\x87\xa4" "Addr" "\xa4\x7f\x00\x00\x01\xab" "Incarnation" "\x01\xa4" "Meta" "\xaa\xff\x81\xa4" "role"
    "\xa2" "db" "\xa4" "Name" "\xa1" "b" "\xa4" "Port" "\xcd\x1f\x0b\xa5" "State" "\x00\xa3" "Vsn"
    "\xa6\x01\x05\x02\x02\x05\x05";

static void expect_bytes(const df_buf_t *b, const void *want, size_t len)
{
    assert_int_equal(b->len, len);
    assert_memory_equal(b->data, want, len);
}

static bool bytes_eq(df_gossip_bytes_t b, const char *s)
{
    return b.p && b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

static void test_ping_capture(void **state)
{
    df_gossip_ping_t m;
    df_buf_t out;
    size_t i;

    assert_int_equal(sizeof(cap_ping) - 1, 59);
    assert_int_equal(df_gossip_ping_decode(LIT(cap_ping), &m), 0);
    assert_int_equal(m.seq_no, 1);
    assert_true(bytes_eq(m.node, "b"));
    assert_true(bytes_eq(m.source_node, "a"));
    assert_int_equal(m.source_port, 7946);
    assert_int_equal(m.source_addr.len, 4);
    assert_memory_equal(m.source_addr.p, "\x7f\x00\x00\x01", 4);
    df_buf_init(&out, 1400);
    assert_int_equal(df_gossip_ping_encode(&out, &m), 0);
    expect_bytes(&out, cap_ping, sizeof(cap_ping) - 1);
    /* Every truncation is malformed. */
    for (i = 0; i < sizeof(cap_ping) - 1; i++)
        assert_int_equal(df_gossip_ping_decode((const uint8_t *)cap_ping, i, &m), DF_EPROTO);
    /* Omitempty: without Source* only Node and SeqNo. */
    memset(&m, 0, sizeof(m));
    m.seq_no = 70000;
    m.node = BYTES("x");
    df_buf_reset(&out);
    assert_int_equal(df_gossip_ping_encode(&out, &m), 0);
    expect_bytes(&out, "\x00\x82\xa4" "Node" "\xa1" "x" "\xa5" "SeqNo" "\xce\x00\x01\x11\x70", 20);
    df_buf_free(&out);
}

static void test_alive_capture(void **state)
{
    df_gossip_alive_t m;
    df_buf_t out;

    assert_int_equal(sizeof(cap_alive) - 1, 75);
    assert_int_equal(df_gossip_alive_decode(LIT(cap_alive), &m), 0);
    assert_int_equal(m.incarnation, 1);
    assert_true(bytes_eq(m.node, "a"));
    assert_int_equal(m.port, 7946);
    assert_int_equal(m.addr.len, 4);
    assert_int_equal(m.meta.len, 18);
    assert_true(m.has_vsn);
    assert_memory_equal(m.vsn, df_gossip_serf_vsn, 6);
    df_buf_init(&out, 1400);
    assert_int_equal(df_gossip_alive_encode(&out, &m), 0);
    expect_bytes(&out, cap_alive, sizeof(cap_alive) - 1);
    df_buf_free(&out);
}

typedef struct {
    int n;
    char kv[4][32];
} tags_t;

static int tag_cb(df_gossip_bytes_t k, df_gossip_bytes_t v, void *arg)
{
    tags_t *t = arg;

    assert_true(t->n < 4);
    snprintf(t->kv[t->n++], 32, "%.*s=%.*s", (int)k.len, (const char *)k.p, (int)v.len, (const char *)v.p);
    return 0;
}

static void test_tags(void **state)
{
    df_gossip_alive_t m;
    tags_t t = {0};
    df_gossip_bytes_t keys[2] = {BYTES("role"), BYTES("dc")}, vals[2] = {BYTES("web"), BYTES("lab")};
    df_buf_t out;
    uint8_t big[600];

    assert_int_equal(df_gossip_alive_decode(LIT(cap_alive), &m), 0);
    assert_int_equal(df_serf_tags_decode(m.meta.p, m.meta.len, tag_cb, &t), 0);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.kv[0], "role=web");
    assert_string_equal(t.kv[1], "dc=lab");
    df_buf_init(&out, 1400);
    assert_int_equal(df_serf_tags_encode(&out, keys, vals, 2), 0);
    expect_bytes(&out, m.meta.p, m.meta.len);
    df_buf_reset(&out);
    assert_int_equal(df_serf_tags_encode(&out, NULL, NULL, 0), 0);
    expect_bytes(&out, "\xff\x80", 2); /* no tags [OBS] */
    /* Legacy: Meta is the role; empty Meta gives role="". */
    t.n = 0;
    assert_int_equal(df_serf_tags_decode(LIT("web"), tag_cb, &t), 0);
    assert_string_equal(t.kv[0], "role=web");
    memset(big, 'x', sizeof(big));
    assert_int_equal(df_serf_tags_decode(big, 513, tag_cb, &t), DF_ETOOBIG);
    df_buf_free(&out);
}

typedef struct {
    int n;
    uint8_t types[16];
    size_t lens[16];
    uint8_t copy[16][128];
} seen_t;

static int seen_cb(const uint8_t *msg, size_t len, void *arg)
{
    seen_t *s = arg;

    assert_true(s->n < 16);
    s->types[s->n] = msg[0];
    s->lens[s->n] = len;
    memcpy(s->copy[s->n], msg, DF_MIN(len, sizeof(s->copy[0])));
    s->n++;
    return 0;
}

/* §1.4: 07 02 003b 001d | ping | suspect, inside a CRC wrapper. */
static void test_compound_capture(void **state)
{
    df_gossip_bytes_t parts[2] = {{(const uint8_t *)cap_ping, 59}, {(const uint8_t *)cap_suspect, 29}};
    df_gossip_bytes_t got[DF_GOSSIP_COMPOUND_MAX];
    df_gossip_suspect_t sus;
    df_buf_t comp, pkt;
    size_t n, trunc;
    seen_t seen = {0};

    assert_int_equal(sizeof(cap_suspect) - 1, 29);
    df_buf_init(&comp, 1400);
    df_buf_init(&pkt, 1400);
    assert_int_equal(df_gossip_compound_encode(&comp, parts, 2), 0);
    assert_memory_equal(comp.data, "\x07\x02\x00\x3b\x00\x1d", 6);
    assert_int_equal(comp.len, 6 + 59 + 29);
    assert_int_equal(df_gossip_compound_split((uint8_t *)comp.data, comp.len, got, &n, &trunc), 0);
    assert_int_equal(n, 2);
    assert_int_equal(trunc, 0);
    assert_int_equal(df_gossip_crc_wrap(&pkt, (uint8_t *)comp.data, comp.len), 0);
    assert_int_equal(df_gossip_packet_walk((uint8_t *)pkt.data, pkt.len, seen_cb, &seen), 0);
    assert_int_equal(seen.n, 2);
    assert_int_equal(seen.types[0], DF_GOSSIP_PING);
    assert_int_equal(seen.types[1], DF_GOSSIP_SUSPECT);
    assert_int_equal(df_gossip_suspect_decode(seen.copy[1], seen.lens[1], DF_GOSSIP_SUSPECT, &sus), 0);
    assert_int_equal(sus.incarnation, 1);
    assert_true(bytes_eq(sus.from, "a"));
    assert_true(bytes_eq(sus.node, "b"));
    /* Re-encode the suspect: same 29 bytes. */
    df_buf_reset(&pkt);
    assert_int_equal(df_gossip_suspect_encode(&pkt, DF_GOSSIP_SUSPECT, &sus), 0);
    expect_bytes(&pkt, cap_suspect, 29);
    /* A truncated compound still yields its complete parts, then reports. */
    seen.n = 0;
    assert_int_equal(df_gossip_packet_walk((uint8_t *)comp.data, comp.len - 1, seen_cb, &seen), DF_EPROTO);
    assert_int_equal(seen.n, 1);
    df_buf_free(&comp);
    df_buf_free(&pkt);
}

/* §1.5: a join intent gossiped with CRC 139aa55a. */
static void test_join_crc_capture(void **state)
{
    df_gossip_bytes_t inner, serf;
    df_serf_intent_t j;
    df_buf_t out, body;
    uint8_t bad[sizeof(cap_join_crc)];

    assert_int_equal(df_gossip_crc_unwrap(LIT(cap_join_crc), &inner), 0);
    assert_int_equal(df_gossip_user_unwrap(inner.p, inner.len, &serf), 0);
    assert_int_equal(df_serf_intent_decode(serf.p, serf.len, DF_SERF_JOIN, &j), 0);
    assert_int_equal(j.ltime, 1);
    assert_true(bytes_eq(j.node, "b"));
    df_buf_init(&body, 1400);
    df_buf_init(&out, 1400);
    assert_int_equal(df_serf_intent_encode(&body, DF_SERF_JOIN, &j), 0);
    assert_int_equal(df_gossip_crc_wrap(&out, (uint8_t *)body.data, body.len), 0);
    expect_bytes(&out, cap_join_crc, sizeof(cap_join_crc) - 1);
    memcpy(bad, cap_join_crc, sizeof(bad));
    bad[sizeof(bad) - 2] ^= 1;
    assert_int_equal(df_gossip_crc_unwrap(bad, sizeof(bad) - 1, &inner), DF_EPROTO);
    assert_int_equal(df_gossip_packet_walk(bad, sizeof(bad) - 1, seen_cb, &(seen_t){0}), DF_EPROTO);
    df_buf_free(&body);
    df_buf_free(&out);
}

static void test_serf_captures(void **state)
{
    df_gossip_bytes_t serf;
    df_serf_intent_t lv;
    df_serf_user_event_t ev;
    df_serf_query_response_t qr;
    df_buf_t out;

    df_buf_init(&out, 1400);
    assert_int_equal(df_gossip_user_unwrap(LIT(cap_leave), &serf), 0);
    assert_int_equal(df_serf_intent_decode(serf.p, serf.len, DF_SERF_LEAVE, &lv), 0);
    assert_int_equal(lv.ltime, 3);
    assert_false(lv.prune);
    assert_int_equal(df_serf_intent_encode(&out, DF_SERF_LEAVE, &lv), 0);
    expect_bytes(&out, cap_leave, sizeof(cap_leave) - 1);

    df_buf_reset(&out);
    assert_int_equal(df_gossip_user_unwrap(LIT(cap_event), &serf), 0);
    assert_int_equal(df_serf_user_event_decode(serf.p, serf.len, &ev), 0);
    assert_true(ev.cc);
    assert_int_equal(ev.ltime, 1);
    assert_true(bytes_eq(ev.name, "deploy"));
    assert_true(bytes_eq(ev.payload, "hello-payload"));
    assert_int_equal(df_serf_user_event_encode(&out, &ev), 0);
    expect_bytes(&out, cap_event, sizeof(cap_event) - 1);

    df_buf_reset(&out);
    assert_int_equal(df_gossip_user_unwrap(LIT(cap_qresp), &serf), 0);
    assert_int_equal(df_serf_query_response_decode(serf.p, serf.len, &qr), 0);
    assert_int_equal(qr.flags, 1);
    assert_int_equal(qr.id, 491409690);
    assert_int_equal(qr.ltime, 1);
    assert_true(df_gossip_bytes_is_nil(qr.payload)); /* nil, not empty */
    assert_non_null(qr.payload.p);
    assert_true(bytes_eq(qr.from, "b"));
    assert_int_equal(df_serf_query_response_encode(&out, &qr), 0);
    expect_bytes(&out, cap_qresp, sizeof(cap_qresp) - 1);
    df_buf_free(&out);
}

/* §4.2 gives the observed query as a struct, not hex: encode it by Go's
 * rules (ID ce, Port cd, Timeout ce 77359400 = 2 s, Filters nil). */
static void test_query(void **state)
{
    static const char want[] =
        "\x08\x04\x8b\xa4" "Addr" "\xa4\x7f\x00\x00\x01\xa7" "Filters" "\xc0\xa5" "Flags" "\x01\xa2" "ID"
        "\xce\x1d\x4a\x51\x1a\xa5" "LTime" "\x01\xa4" "Name" "\xa2" "q1" "\xa7" "Payload" "\xa5" "qdata"
        "\xa4" "Port" "\xcd\x1f\x0b\xab" "RelayFactor" "\x00\xaa" "SourceNode" "\xa1" "b" "\xa7" "Timeout"
        "\xce\x77\x35\x94\x00";
    df_serf_query_t q, d;
    df_gossip_bytes_t serf;
    df_buf_t out;

    memset(&q, 0, sizeof(q));
    q.addr = BYTES("\x7f\x00\x00\x01");
    q.filters_nil = true;
    q.flags = 1;
    q.id = 491409690;
    q.ltime = 1;
    q.name = BYTES("q1");
    q.payload = BYTES("qdata");
    q.port = 7947;
    q.source_node = BYTES("b");
    q.timeout_ns = 2000000000;
    df_buf_init(&out, 1400);
    assert_int_equal(df_serf_query_encode(&out, &q), 0);
    expect_bytes(&out, want, sizeof(want) - 1);
    assert_int_equal(df_gossip_user_unwrap((uint8_t *)out.data, out.len, &serf), 0);
    assert_int_equal(df_serf_query_decode(serf.p, serf.len, &d), 0);
    assert_int_equal(d.id, q.id);
    assert_int_equal(d.timeout_ns, q.timeout_ns);
    assert_true(d.filters_nil);
    assert_true(bytes_eq(d.payload, "qdata"));
    /* A node filter: 00 + msgpack ["cnode"] (§4.2, observed). */
    q.filters_nil = false;
    q.nfilters = 1;
    q.filters[0] = BYTES("\x00\x91\xa5" "cnode");
    df_buf_reset(&out);
    assert_int_equal(df_serf_query_encode(&out, &q), 0);
    assert_int_equal(df_gossip_user_unwrap((uint8_t *)out.data, out.len, &serf), 0);
    assert_int_equal(df_serf_query_decode(serf.p, serf.len, &d), 0);
    assert_int_equal(d.nfilters, 1);
    assert_int_equal(d.filters[0].len, 8);
    df_buf_free(&out);
}

/* The Serf push/pull state the spec describes for an idle agent: 585 bytes
 * with a 512-slot Events ring of nils (dc 0200 c0...).  Rebuilt from the
 * description (the spec elides the bytes); its length matches the
 * UserStateLen 0x0249 of the observed header. */
static size_t idle_user_state(uint8_t *b)
{
    size_t n = 0;

#define PUT(s) (memcpy(b + n, s, sizeof(s) - 1), n += sizeof(s) - 1)
    PUT("\x02\x86\xaa" "EventLTime" "\x01\xa6" "Events" "\xdc\x02\x00");
    memset(b + n, 0xc0, 512);
    n += 512;
    PUT("\xa5" "LTime" "\x01\xab" "LeftMembers" "\x90\xaa" "QueryLTime" "\x01\xac" "StatusLTimes"
        "\x81\xa1" "b" "\x01");
#undef PUT
    return n;
}

typedef struct {
    int status, left, events;
} pp_seen_t;

static int pp_status(df_gossip_bytes_t name, uint64_t lt, void *arg)
{
    ((pp_seen_t *)arg)->status++;
    assert_true(bytes_eq(name, "b"));
    assert_int_equal(lt, 1);
    return 0;
}

static int pp_left(df_gossip_bytes_t name, void *arg)
{
    ((pp_seen_t *)arg)->left++;
    return 0;
}

static int pp_event(size_t slot, uint64_t lt, df_gossip_bytes_t name, df_gossip_bytes_t payload, void *arg)
{
    ((pp_seen_t *)arg)->events++;
    assert_int_equal(slot, 6);
    assert_int_equal(lt, 6);
    assert_true(bytes_eq(name, "ping"));
    return 0;
}

static void test_pushpull_capture(void **state)
{
    uint8_t msg[2048], us[700];
    size_t uslen = idle_user_state(us), hl = sizeof(cap_pp_head) - 1, total, consumed, i;
    df_gossip_pushpull_hdr_t hdr;
    df_gossip_node_state_t nodes[4];
    df_gossip_bytes_t ustate;
    df_serf_pushpull_t spp;
    df_serf_pushpull_cbs_t cbs = {pp_status, pp_left, pp_event};
    pp_seen_t seen = {0};
    df_buf_t out, z, unz;
    const df_serf_event_slot_t *slots[512] = {0};
    df_serf_status_t st = {BYTES("b"), 1};
    df_serf_pushpull_enc_t enc = {.ltime = 1, .event_ltime = 1, .query_ltime = 1, .status = &st, .nstatus = 1,
                                  .slots = slots, .nslots = 512};

    assert_int_equal(uslen, 0x249);
    memcpy(msg, cap_pp_head, hl);
    memcpy(msg + hl, us, uslen);
    total = hl + uslen;
    assert_int_equal(df_gossip_pushpull_decode(msg, total, &hdr, nodes, 4, &ustate, &consumed), 0);
    assert_int_equal(consumed, total);
    assert_true(hdr.join);
    assert_int_equal(hdr.nodes, 1);
    assert_int_equal(hdr.user_state_len, 585);
    assert_true(bytes_eq(nodes[0].name, "b"));
    assert_int_equal(nodes[0].port, 7947);
    assert_int_equal(nodes[0].state, DF_GOSSIP_STATE_ALIVE);
    assert_int_equal(nodes[0].meta.len, 10);
    assert_memory_equal(nodes[0].vsn, df_gossip_serf_vsn, 6);
    /* Every prefix is "need more bytes", for the decoder and the framer. */
    for (i = 0; i < total; i++) {
        assert_int_equal(df_gossip_pushpull_decode(msg, i, &hdr, nodes, 4, &ustate, &consumed), DF_EAGAIN);
        assert_int_equal(df_gossip_stream_msg_len(msg, i, &consumed), DF_EAGAIN);
    }
    assert_int_equal(df_gossip_stream_msg_len(msg, total + 3, &consumed), 0);
    assert_int_equal(consumed, total);
    /* Too many nodes for the caller's array. */
    assert_int_equal(df_gossip_pushpull_decode(msg, total, &hdr, nodes, 0, &ustate, &consumed), DF_ETOOBIG);

    assert_int_equal(df_serf_pushpull_decode(ustate.p, ustate.len, &spp, &cbs, &seen), 0);
    assert_int_equal(spp.ltime, 1);
    assert_int_equal(spp.event_ltime, 1);
    assert_int_equal(spp.query_ltime, 1);
    assert_int_equal(spp.nslots, 512);
    assert_int_equal(seen.status, 1);
    assert_int_equal(seen.left, 0);
    assert_int_equal(seen.events, 0);

    /* Re-encode both layers: the same bytes. */
    df_buf_init(&out, 1 << 20);
    assert_int_equal(df_serf_pushpull_encode(&out, &enc), 0);
    expect_bytes(&out, us, uslen);
    df_buf_reset(&out);
    assert_int_equal(df_gossip_pushpull_encode(&out, true, nodes, 1, us, uslen), 0);
    expect_bytes(&out, msg, total);

    /* TCP from an agent is compressed: 09 82 a4"Algo" 00 a3"Buf" da .. and
     * the LZW stream starts 00 0d (§1.7). */
    df_buf_init(&z, 1 << 20);
    df_buf_init(&unz, 1 << 20);
    assert_int_equal(df_gossip_compress(&z, msg, total), 0);
    assert_memory_equal(z.data, "\x09\x82\xa4" "Algo" "\x00\xa3" "Buf" "\xda", 13);
    assert_memory_equal(z.data + 15, "\x00\x0d", 2);
    assert_int_equal(df_gossip_stream_msg_len((uint8_t *)z.data, z.len, &consumed), 0);
    assert_int_equal(consumed, z.len);
    assert_int_equal(df_gossip_decompress((uint8_t *)z.data, z.len, &unz), 0);
    expect_bytes(&unz, msg, total);

    /* An event in slot 6 reaches the callback. */
    {
        df_gossip_bytes_t nm = BYTES("ping"), pl = BYTES("\x00\x01" "binary");
        df_serf_event_slot_t s6 = {6, 1, &nm, &pl};

        slots[6] = &s6;
        df_buf_reset(&out);
        assert_int_equal(df_serf_pushpull_encode(&out, &enc), 0);
        seen.status = 0;
        assert_int_equal(df_serf_pushpull_decode((uint8_t *)out.data, out.len, &spp, &cbs, &seen), 0);
        assert_int_equal(seen.events, 1);
    }
    df_buf_free(&out);
    df_buf_free(&z);
    df_buf_free(&unz);
}

static void test_other_messages(void **state)
{
    df_gossip_indirect_ping_t ip = {0}, ip2;
    df_gossip_ack_t ack = {7, BYTES("\x01\x85")}, ack2;
    df_gossip_nack_t nack = {9}, nack2;
    df_gossip_suspect_t dead = {3, BYTES("n"), BYTES("n")}, dead2;
    df_serf_relay_t r = {0}, r2;
    df_serf_key_request_t kq = {BYTES("0123456789abcdef")}, kq2;
    df_serf_key_response_t kr = {0}, kr2;
    df_gossip_bytes_t err;
    df_buf_t out;

    df_buf_init(&out, 1400);
    ip.seq_no = 5;
    ip.target = BYTES("\x0a\x00\x00\x02");
    ip.port = 7946;
    ip.node = BYTES("t");
    ip.nack = true;
    ip.source_addr = BYTES("\x0a\x00\x00\x01");
    ip.source_node = BYTES("me");
    ip.source_port = 7950;
    assert_int_equal(df_gossip_indirect_ping_encode(&out, &ip), 0);
    assert_int_equal(df_gossip_indirect_ping_decode((uint8_t *)out.data, out.len, &ip2), 0);
    assert_true(ip2.nack);
    assert_int_equal(ip2.port, 7946);
    assert_true(bytes_eq(ip2.source_node, "me"));

    df_buf_reset(&out);
    assert_int_equal(df_gossip_ack_encode(&out, &ack), 0);
    assert_int_equal(df_gossip_ack_decode((uint8_t *)out.data, out.len, &ack2), 0);
    assert_int_equal(ack2.seq_no, 7);
    assert_int_equal(ack2.payload.len, 2);
    /* The spec's minimal ack: 02 {Payload: nil, SeqNo}. */
    ack.payload.p = NULL;
    df_buf_reset(&out);
    assert_int_equal(df_gossip_ack_encode(&out, &ack), 0);
    expect_bytes(&out, "\x02\x82\xa7" "Payload" "\xc0\xa5" "SeqNo" "\x07", 18);

    df_buf_reset(&out);
    assert_int_equal(df_gossip_nack_encode(&out, &nack), 0);
    assert_int_equal(df_gossip_nack_decode((uint8_t *)out.data, out.len, &nack2), 0);
    assert_int_equal(nack2.seq_no, 9);

    df_buf_reset(&out);
    assert_int_equal(df_gossip_suspect_encode(&out, DF_GOSSIP_DEAD, &dead), 0);
    assert_int_equal(out.data[0], DF_GOSSIP_DEAD);
    assert_int_equal(df_gossip_suspect_decode((uint8_t *)out.data, out.len, DF_GOSSIP_DEAD, &dead2), 0);
    assert_int_equal(dead2.incarnation, 3);
    assert_int_equal(df_gossip_suspect_decode((uint8_t *)out.data, out.len, DF_GOSSIP_SUSPECT, &dead2),
                     DF_EPROTO);

    df_buf_reset(&out);
    assert_int_equal(df_gossip_err_encode(&out, BYTES("boom")), 0);
    assert_int_equal(df_gossip_err_decode((uint8_t *)out.data, out.len, &err), 0);
    assert_true(bytes_eq(err, "boom"));

    df_buf_reset(&out);
    r.dest_ip = BYTES("\x7f\x00\x00\x01");
    r.dest_port = 7947;
    r.dest_name = BYTES("b");
    r.inner = (df_gossip_bytes_t){(const uint8_t *)cap_qresp + 1, sizeof(cap_qresp) - 2};
    assert_int_equal(df_serf_relay_encode(&out, &r), 0);
    assert_int_equal(df_serf_relay_decode((uint8_t *)out.data + 1, out.len - 1, &r2), 0);
    assert_int_equal(r2.dest_port, 7947);
    assert_int_equal(r2.inner.len, sizeof(cap_qresp) - 2);
    assert_memory_equal(r2.inner.p, cap_qresp + 1, r2.inner.len);

    df_buf_reset(&out);
    assert_int_equal(df_serf_key_request_encode(&out, &kq), 0);
    assert_int_equal(df_serf_key_request_decode((uint8_t *)out.data, out.len, &kq2), 0);
    assert_int_equal(kq2.key.len, 16);

    df_buf_reset(&out);
    kr.result = true;
    kr.nkeys = 1;
    kr.keys[0] = BYTES("AAECAwQFBgcICQoLDA0ODw==");
    kr.primary_key = kr.keys[0];
    assert_int_equal(df_serf_key_response_encode(&out, &kr), 0);
    assert_int_equal(df_serf_key_response_decode((uint8_t *)out.data, out.len, &kr2), 0);
    assert_true(kr2.result);
    assert_int_equal(kr2.nkeys, 1);
    df_buf_free(&out);
}

/* Compress inside compound inside compress: the walk handles the recursion
 * the spec calls legal, and stops at DF_GOSSIP_NEST_MAX. */
static void test_nesting(void **state)
{
    df_buf_t a, b, c;
    df_gossip_bytes_t parts[2];
    seen_t seen = {0};
    int i;

    df_buf_init(&a, 1 << 16);
    df_buf_init(&b, 1 << 16);
    df_buf_init(&c, 1 << 16);
    assert_int_equal(df_gossip_compress(&a, LIT(cap_event)), 0);
    parts[0] = (df_gossip_bytes_t){(uint8_t *)a.data, a.len};
    parts[1] = (df_gossip_bytes_t){(const uint8_t *)cap_ping, 59};
    assert_int_equal(df_gossip_compound_encode(&b, parts, 2), 0);
    assert_int_equal(df_gossip_compress(&c, (uint8_t *)b.data, b.len), 0);
    assert_int_equal(df_gossip_packet_walk((uint8_t *)c.data, c.len, seen_cb, &seen), 0);
    assert_int_equal(seen.n, 2);
    assert_int_equal(seen.types[0], DF_GOSSIP_USER);
    assert_int_equal(seen.types[1], DF_GOSSIP_PING);
    /* Wrap in more compound layers until the cap bites. */
    for (i = 0; i < 4; i++) {
        parts[0] = (df_gossip_bytes_t){(uint8_t *)c.data, c.len};
        df_buf_reset(&b);
        assert_int_equal(df_gossip_compound_encode(&b, parts, 1), 0);
        df_buf_reset(&c);
        assert_int_equal(df_buf_append(&c, b.data, b.len), 0);
    }
    seen.n = 0;
    assert_int_equal(df_gossip_packet_walk((uint8_t *)c.data, c.len, seen_cb, &seen), DF_ETOOBIG);
    assert_int_equal(seen.n, 0);
    df_buf_free(&a);
    df_buf_free(&b);
    df_buf_free(&c);
}

static void test_hostile(void **state)
{
    df_gossip_ping_t p;
    df_gossip_alive_t al;
    df_serf_query_t q;
    df_serf_user_event_t ev;
    df_gossip_pushpull_hdr_t hdr;
    df_gossip_node_state_t nodes[2];
    df_gossip_bytes_t us, parts[DF_GOSSIP_COMPOUND_MAX];
    df_buf_t out;
    size_t consumed, n, trunc, i;
    uint8_t big[20000];

    /* Wrong types: SeqNo as a string, Node as bin, negative SeqNo, SeqNo > u32. */
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa5" "SeqNo" "\xa1" "1"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa4" "Node" "\xc4\x01" "b"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa5" "SeqNo" "\xff"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa5" "SeqNo" "\xcf\x00\x00\x00\x01\x00\x00\x00\x00"), &p),
                     DF_EPROTO);
    /* Not a map, trailing bytes, wrong type byte, empty. */
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x91\x01"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x80\x00"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x02\x80"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(NULL, 0, &p), DF_EPROTO);
    /* Nil body and unknown keys are fine (zero struct / skipped). */
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\xc0"), &p), 0);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa3" "Foo" "\x93\x01\x02\x03"), &p), 0);
    /* 0xc1 never appears in msgpack. */
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\x81\xa3" "Foo" "\xc1"), &p), DF_EPROTO);

    /* Vsn of the wrong length, as raw and as array; a 7-byte Vsn. */
    assert_int_equal(df_gossip_alive_decode(LIT("\x04\x81\xa3" "Vsn" "\xa5\x01\x05\x02\x02\x05"), &al), DF_EPROTO);
    assert_int_equal(df_gossip_alive_decode(LIT("\x04\x81\xa3" "Vsn" "\x93\x01\x05\x02"), &al), DF_EPROTO);
    assert_int_equal(df_gossip_alive_decode(LIT("\x04\x81\xa3" "Vsn" "\xa7\x01\x05\x02\x02\x05\x05\x05"), &al),
                     DF_EPROTO);
    assert_int_equal(df_gossip_alive_decode(LIT("\x04\x81\xa3" "Vsn" "\x96\x01\x05\x02\x02\x05\xcd\x01\x00"), &al),
                     DF_EPROTO); /* an entry over 255 */
    assert_int_equal(df_gossip_alive_decode(LIT("\x04\x81\xa3" "Vsn" "\x96\x01\x05\x02\x02\x05\x05"), &al), 0);
    assert_true(al.has_vsn);

    /* Oversize name (257) and meta (513). */
    df_buf_init(&out, 1 << 16);
    memset(big, 'x', sizeof(big));
    assert_int_equal(df_buf_append(&out, "\x04\x81\xa4" "Node" "\xda\x01\x01", 10), 0);
    assert_int_equal(df_buf_append(&out, big, 257), 0);
    assert_int_equal(df_gossip_alive_decode((uint8_t *)out.data, out.len, &al), DF_ETOOBIG);
    df_buf_reset(&out);
    assert_int_equal(df_buf_append(&out, "\x04\x81\xa4" "Meta" "\xda\x02\x01", 10), 0);
    assert_int_equal(df_buf_append(&out, big, 513), 0);
    assert_int_equal(df_gossip_alive_decode((uint8_t *)out.data, out.len, &al), DF_ETOOBIG);

    /* A user event over Serf's size limit. */
    df_buf_reset(&out);
    assert_int_equal(df_buf_append(&out, "\x03\x82\xa4" "Name" "\xa1" "e" "\xa7" "Payload" "\xda\x24\x00", 20), 0);
    assert_int_equal(df_buf_append(&out, big, 0x2400), 0);
    assert_int_equal(df_serf_user_event_decode((uint8_t *)out.data, out.len, &ev), DF_ETOOBIG);
    df_buf_free(&out);

    /* Absurd counts: an array32 of 4 billion filters, a map32 body, 1e9
     * push/pull nodes, negative counts.  None may allocate by the count. */
    assert_int_equal(df_serf_query_decode(LIT("\x04\x81\xa7" "Filters" "\xdd\xff\xff\xff\xff\xc0"), &q), DF_EPROTO);
    assert_int_equal(df_gossip_ping_decode(LIT("\x00\xdf\xff\xff\xff\xff"), &p), DF_EPROTO);
    assert_int_equal(df_gossip_pushpull_decode(LIT("\x06\x81\xa5" "Nodes" "\xce\x3b\x9a\xca\x00"), &hdr, nodes, 2,
                                               &us, &consumed),
                     DF_ETOOBIG);
    assert_int_equal(df_gossip_pushpull_decode(LIT("\x06\x81\xa5" "Nodes" "\xff"), &hdr, nodes, 2, &us, &consumed),
                     DF_EPROTO);
    assert_int_equal(df_gossip_pushpull_decode(LIT("\x06\x81\xac" "UserStateLen" "\xce\x7f\xff\xff\xff"), &hdr,
                                               nodes, 2, &us, &consumed),
                     DF_ETOOBIG);
    /* A node state that is not a map; a State above 3. */
    assert_int_equal(df_gossip_pushpull_decode(LIT("\x06\x81\xa5" "Nodes" "\x01\x01"), &hdr, nodes, 2, &us,
                                               &consumed),
                     DF_EPROTO);
    assert_int_equal(df_gossip_pushpull_decode(LIT("\x06\x81\xa5" "Nodes" "\x01\x81\xa5" "State" "\x04"), &hdr,
                                               nodes, 2, &us, &consumed),
                     DF_EPROTO);
    /* 80 filters, over DF_SERF_FILTERS_MAX. */
    {
        uint8_t qb[128] = "\x04\x81\xa7" "Filters" "\xdc\x00\x50";

        memset(qb + 13, 0xc0, 0x50);
        assert_int_equal(df_serf_query_decode(qb, 13 + 0x50, &q), DF_ETOOBIG);
    }

    /* Deep nesting: 100 nested arrays. */
    {
        uint8_t deep[128] = "\x00\x81\xa3" "Foo";

        memset(deep + 5, 0x91, 100);
        deep[105] = 0xc0;
        assert_int_equal(df_gossip_ping_decode(deep, 106, &p), DF_EPROTO);
    }

    /* Compound: count 255 with no length table; 0 parts is fine;
     * 128 parts are refused on send. */
    assert_int_equal(df_gossip_compound_split(LIT("\x07\xff\x00\x01"), parts, &n, &trunc), DF_EPROTO);
    assert_int_equal(df_gossip_compound_split(LIT("\x07"), parts, &n, &trunc), DF_EPROTO);
    assert_int_equal(df_gossip_compound_split(LIT("\x07\x00"), parts, &n, &trunc), 0);
    assert_int_equal(n, 0);
    for (i = 0; i < 128; i++)
        parts[i] = BYTES("\x0b\x80");
    df_buf_init(&out, 1 << 16);
    assert_int_equal(df_gossip_compound_encode(&out, parts, 128), DF_ETOOBIG);
    assert_int_equal(out.len, 0);
    /* 255 parts in a received compound are all split. */
    big[0] = 7;
    big[1] = 255;
    for (i = 0; i < 255; i++) {
        big[2 + 2 * i] = 0;
        big[3 + 2 * i] = 2;
        big[512 + 2 * i] = 0x0b;
        big[513 + 2 * i] = 0x80;
    }
    assert_int_equal(df_gossip_compound_split(big, 512 + 510, parts, &n, &trunc), 0);
    assert_int_equal(n, 255);
    /* Compress: unknown algorithm, bad LZW, bomb over the UDP budget. */
    assert_int_equal(df_gossip_decompress(LIT("\x09\x82\xa4" "Algo" "\x01\xa3" "Buf" "\xa2\x01\x01"), &out),
                     DF_EPROTO);
    assert_int_equal(df_gossip_decompress(LIT("\x09\x82\xa4" "Algo" "\x00\xa3" "Buf" "\xa2\x41\x00"), &out),
                     DF_EPROTO);
    {
        static uint8_t zeros[200000];
        df_buf_t z;
        seen_t seen = {0};

        df_buf_init(&z, 1 << 20);
        assert_int_equal(df_gossip_compress(&z, zeros, sizeof(zeros)), 0);
        assert_true(z.len < 1400);
        assert_int_equal(df_gossip_packet_walk((uint8_t *)z.data, z.len, seen_cb, &seen), DF_ETOOBIG);
        assert_int_equal(seen.n, 0);
        df_buf_free(&z);
    }
    /* Stream framing: unknown type, user stream, encrypt envelope. */
    assert_int_equal(df_gossip_stream_msg_len(LIT("\x0e"), &consumed), DF_EPROTO);
    assert_int_equal(df_gossip_stream_msg_len(LIT("\x08\x81\xaa" "UserMsgLen" "\x03" "abc"), &consumed), 0);
    assert_int_equal(consumed, 17);
    assert_int_equal(df_gossip_stream_msg_len(LIT("\x0a\x00\x00\x00\x1d"), &consumed), DF_EAGAIN);
    assert_int_equal(df_gossip_stream_msg_len(LIT("\x0a\x7f\x00\x00\x1d"), &consumed), DF_ETOOBIG);
    df_buf_free(&out);
}

/* Query filters: the node filter observed in §4.2 (00 91 a5"cnode"), a
 * round trip, a tag filter, and malformed ones. */
static void test_filters(void **state)
{
    static const char cap_nodes[] = "\x00\x91\xa5" "cnode";
    static const char tagf[] = "\x01\x82\xa4" "Expr" "\xa3" "w.b" "\xa3" "Tag" "\xa4" "role";
    df_gossip_bytes_t names[2] = {BYTES("a"), BYTES("cnode")}, tag, expr;
    df_buf_t out;
    bool match;

    (void)state;
    assert_int_equal(df_serf_filter_nodes_match(LIT(cap_nodes), BYTES("cnode"), &match), 0);
    assert_true(match);
    assert_int_equal(df_serf_filter_nodes_match(LIT(cap_nodes), BYTES("cnod"), &match), 0);
    assert_false(match);
    df_buf_init(&out, 256);
    assert_int_equal(df_serf_filter_nodes_encode(&out, names + 1, 1), 0);
    expect_bytes(&out, cap_nodes, sizeof(cap_nodes) - 1);
    df_buf_reset(&out);
    assert_int_equal(df_serf_filter_nodes_encode(&out, names, 2), 0);
    assert_int_equal(df_serf_filter_nodes_match((const uint8_t *)out.data, out.len, BYTES("a"), &match), 0);
    assert_true(match);
    df_buf_free(&out);
    assert_int_equal(df_serf_filter_tag_decode(LIT(tagf), &tag, &expr), 0);
    assert_true(bytes_eq(tag, "role"));
    assert_true(bytes_eq(expr, "w.b"));
    /* wrong type byte, truncated, not an array, trailing bytes */
    assert_int_equal(df_serf_filter_nodes_match(LIT(tagf), BYTES("a"), &match), DF_EPROTO);
    assert_int_equal(df_serf_filter_nodes_match((const uint8_t *)cap_nodes, 4, BYTES("a"), &match), DF_EPROTO);
    assert_int_equal(df_serf_filter_nodes_match(LIT("\x00\x81\xa1" "a" "\x01"), BYTES("a"), &match), DF_EPROTO);
    assert_int_equal(df_serf_filter_nodes_match(LIT("\x00\x90\x90"), BYTES("a"), &match), DF_EPROTO);
    assert_int_equal(df_serf_filter_tag_decode(LIT(cap_nodes), &tag, &expr), DF_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_capture),     cmocka_unit_test(test_alive_capture),
        cmocka_unit_test(test_tags),             cmocka_unit_test(test_compound_capture),
        cmocka_unit_test(test_join_crc_capture), cmocka_unit_test(test_serf_captures),
        cmocka_unit_test(test_query),            cmocka_unit_test(test_pushpull_capture),
        cmocka_unit_test(test_other_messages),   cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_hostile),          cmocka_unit_test(test_filters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
