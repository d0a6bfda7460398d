/*
 * A Serf 0.9.4 / memberlist 0.2.2 compatible gossip node, sans-I/O (spec:
 * shared/specs/serf-wire.md).
 *
 * The node owns no socket and no clock.  The caller
 *   - feeds it every UDP datagram received on its gossip port
 *     (df_gossip_recv_packet) and every complete TCP stream message
 *     (df_gossip_recv_stream; frame with df_gossip_stream_msg_len),
 *   - calls df_gossip_tick(now) no later than df_gossip_next_wakeup_ms(),
 *   - after each call drains df_gossip_next_output() (datagrams to send,
 *     TCP streams to open or to answer) and df_gossip_next_event()
 *     (member join/update/leave/failed, user events, queries, query
 *     responses).
 * All times are milliseconds of one monotonic clock chosen by the caller.
 * Outputs and events are bounded queues (DF_GOSSIP_OUTPUTS_MAX,
 * DF_GOSSIP_EVENTS_MAX): when the caller does not drain them the oldest
 * entries are dropped, as a full socket buffer would.
 *
 * Not thread-safe: one node is driven by one thread.
 */
#ifndef DF_GOSSIP_NODE_H
#define DF_GOSSIP_NODE_H
#ifndef DF_INTERNAL
#error "lib/gossip/gossip_node.h is private to libdfly"
#endif

#include "core/core.h"
#include "gossip/gossip_codec.h"
#include "gossip/gossip_crypto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_GOSSIP_MEMBERS_MAX 4096      /* members one node tracks (any state) */
#define DF_GOSSIP_TAGS_MAX 32           /* own tags */
#define DF_GOSSIP_EVENTS_MAX 4096       /* undrained events kept */
#define DF_GOSSIP_OUTPUTS_MAX 4096      /* undrained outputs kept */
#define DF_GOSSIP_QUEUE_MAX 2048        /* broadcasts per gossip queue */
#define DF_GOSSIP_EVENT_SLOTS 512       /* Serf EventBuffer / QueryBuffer */
#define DF_GOSSIP_EVENT_RING_BYTES (1u << 20) /* names + payloads kept for dedup */
#define DF_GOSSIP_QUERIES_MAX 64        /* own queries awaiting responses */
#define DF_GOSSIP_INTENTS_MAX 1024      /* intents buffered for unknown nodes */
#define DF_GOSSIP_STREAMS_MAX 256       /* outbound TCP exchanges in flight */
#define DF_GOSSIP_RELAYS_MAX 256        /* indirect pings being relayed */
#define DF_GOSSIP_UDP_BUDGET 1400       /* memberlist UDPBufferSize */

typedef struct df_gossip_node df_gossip_node_t;

/* Timing and behaviour knobs.  df_gossip_config_default() gives memberlist's
 * DefaultLANConfig and Serf's agent defaults (§3.1, §4.10). */
typedef struct {
    const char *name;      /* node name (<= DF_GOSSIP_NAME_MAX bytes), copied */
    uint8_t addr[16];      /* advertised IP (4 or 16 bytes) */
    size_t addr_len;
    uint16_t port;         /* advertised port (UDP and TCP) */
    const char *const *tag_keys; /* ntags tags, copied; encoded Meta <= 512 bytes */
    const char *const *tag_values;
    size_t ntags;
    const df_gossip_keyring_t *keyring; /* NULL = no encryption; copied */
    uint64_t seed;         /* PRNG seed (node choice, nonces are OpenSSL's) */
    bool compress_streams; /* LZW-wrap TCP messages like Go does (default true) */

    uint32_t probe_interval_ms;   /* 1000 */
    uint32_t probe_timeout_ms;    /* 500 */
    uint32_t indirect_checks;     /* 3 */
    uint32_t suspicion_mult;      /* 4 */
    uint32_t suspicion_max_timeout_mult; /* 6 */
    uint32_t retransmit_mult;     /* 4 */
    uint32_t gossip_interval_ms;  /* 200 */
    uint32_t gossip_nodes;        /* 3 */
    uint32_t gossip_to_dead_ms;   /* 30000 */
    uint32_t pushpull_interval_ms; /* 30000 (0 disables) */
    uint32_t awareness_max;       /* 8 */
    uint32_t tcp_timeout_ms;      /* 10000 */
    uint32_t broadcast_timeout_ms; /* 5000: leave waits this long per phase */
    uint32_t leave_propagate_ms;  /* 1000 */
    uint32_t query_timeout_mult;  /* 16 */
    uint32_t user_event_size_limit; /* 512 (name + payload, and encoded) */
    uint32_t query_size_limit;    /* 1024 */
    uint32_t query_response_size_limit; /* 1024 */
} df_gossip_config_t;

void df_gossip_config_default(df_gossip_config_t *cfg);

/* Serf member status, as `serf members` shows it. */
typedef enum {
    DF_GOSSIP_STATUS_NONE = 0,
    DF_GOSSIP_STATUS_ALIVE,
    DF_GOSSIP_STATUS_LEAVING,
    DF_GOSSIP_STATUS_LEFT,
    DF_GOSSIP_STATUS_FAILED,
} df_gossip_status_t;
const char *df_gossip_status_name(df_gossip_status_t s);

/* ---------------------------------------------------------------- outputs */

typedef enum {
    DF_GOSSIP_OUT_UDP = 1,      /* send data as one datagram to addr:port */
    DF_GOSSIP_OUT_STREAM_OPEN,  /* connect to addr:port, write data, read ONE framed
                                 * reply and give it to df_gossip_recv_stream(stream_id,
                                 * inbound=false); on failure call df_gossip_stream_failed */
    DF_GOSSIP_OUT_STREAM_REPLY, /* write data on the caller's inbound stream stream_id,
                                 * then close it */
} df_gossip_out_kind_t;

typedef struct {
    df_gossip_out_kind_t kind;
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
    uint64_t stream_id;
    const uint8_t *data; /* owned by the node, valid until the next call on it */
    size_t len;
} df_gossip_output_t;

/* ----------------------------------------------------------------- events */

typedef enum {
    DF_GOSSIP_EV_MEMBER_JOIN = 1,
    DF_GOSSIP_EV_MEMBER_UPDATE,
    DF_GOSSIP_EV_MEMBER_LEAVE,
    DF_GOSSIP_EV_MEMBER_FAILED,
    DF_GOSSIP_EV_USER,           /* name, payload, ltime, coalesce */
    DF_GOSSIP_EV_QUERY,          /* name, payload, ltime, query_id: answer with df_gossip_respond */
    DF_GOSSIP_EV_QUERY_ACK,      /* name = responder, query_id, ltime */
    DF_GOSSIP_EV_QUERY_RESPONSE, /* name = responder, payload, query_id, ltime */
    DF_GOSSIP_EV_QUERY_DONE,     /* query_id: own query reached its deadline */
} df_gossip_ev_kind_t;

typedef struct {
    df_gossip_ev_kind_t kind;
    char name[DF_GOSSIP_NAME_MAX + 1]; /* member, event or query name, or responder */
    /* member events */
    uint8_t addr[16];
    size_t addr_len;
    uint16_t port;
    const uint8_t *meta; /* the member's Meta (0xff + tags), owned by the node */
    size_t meta_len;
    /* user events, queries, responses */
    const uint8_t *payload; /* owned by the node, valid until the next call on it */
    size_t payload_len;
    uint64_t ltime;
    uint32_t query_id;
    bool coalesce;
} df_gossip_event_t;

/* Information about one member (df_gossip_member_get / _foreach). */
typedef struct {
    const char *name;
    const uint8_t *addr;
    size_t addr_len;
    uint16_t port;
    const uint8_t *meta;
    size_t meta_len;
    uint32_t incarnation;
    df_gossip_status_t status;
    uint8_t ml_state; /* memberlist DF_GOSSIP_STATE_* */
    uint8_t vsn[6];
} df_gossip_member_t;

/* -------------------------------------------------------------------- API */

/* Creates a node that considers itself alive (incarnation 1) and alone.
 * now_ms starts its timers.  0, -EINVAL (bad name/addr), DF_ETOOBIG (tags
 * over 512 bytes encoded), -ENOMEM.  Free with df_gossip_node_free. */
int df_gossip_node_new(const df_gossip_config_t *cfg, uint64_t now_ms, df_gossip_node_t **out);
void df_gossip_node_free(df_gossip_node_t *n);

/* Starts a join: a push/pull (Join=true) over TCP to addr:port, output as a
 * DF_GOSSIP_OUT_STREAM_OPEN.  Merging the reply brings in the cluster and
 * broadcasts a Serf join intent.  replay=false ignores user events older
 * than the join (like `serf join` without -replay). */
int df_gossip_join(df_gossip_node_t *n, const uint8_t *addr, size_t addr_len, uint16_t port,
                   bool replay, uint64_t now_ms);

/* A UDP datagram from from_addr:from_port.  The bytes are only read during
 * the call.  Malformed or undecryptable packets are dropped (counted);
 * returns 0, or -errno for local failures (-ENOMEM). */
int df_gossip_recv_packet(df_gossip_node_t *n, const uint8_t *from_addr, size_t from_addr_len,
                          uint16_t from_port, const uint8_t *buf, size_t len, uint64_t now_ms);

/* One complete TCP stream message (as df_gossip_stream_msg_len framed it).
 * inbound=true: the caller accepted the connection and gave it stream_id;
 * a reply, if any, comes out as DF_GOSSIP_OUT_STREAM_REPLY with that id
 * (no reply: the caller closes the connection).  inbound=false: the reply
 * on a stream the node opened with that id.  0, or DF_EPROTO (the caller
 * closes the stream). */
int df_gossip_recv_stream(df_gossip_node_t *n, uint64_t stream_id, bool inbound, const uint8_t *from_addr,
                          size_t from_addr_len, uint16_t from_port, const uint8_t *buf, size_t len,
                          uint64_t now_ms);
/* A stream the node opened could not connect, broke or timed out. */
void df_gossip_stream_failed(df_gossip_node_t *n, uint64_t stream_id, uint64_t now_ms);

/* Runs the timers due at now_ms (probe, gossip, push/pull, suspicion, leave
 * phases, query deadlines). */
void df_gossip_tick(df_gossip_node_t *n, uint64_t now_ms);
/* When to call df_gossip_tick next (absolute ms). */
uint64_t df_gossip_next_wakeup_ms(const df_gossip_node_t *n);

/* Pops the oldest output / event: 1 with *out filled, 0 when empty.  The
 * data it points to stays valid until the next call on the node. */
int df_gossip_next_output(df_gossip_node_t *n, df_gossip_output_t *out);
int df_gossip_next_event(df_gossip_node_t *n, df_gossip_event_t *ev);

/* Broadcasts a user event (Serf UserEvent).  0, DF_ETOOBIG (over
 * user_event_size_limit), -ENOMEM. */
int df_gossip_user_event(df_gossip_node_t *n, const char *name, const uint8_t *payload, size_t len,
                         bool coalesce, uint64_t now_ms);

/* Sends a query to the cluster (to `nodes` only when nnodes > 0).
 * timeout_ms 0 = Serf's default.  *id_out identifies the responses. */
int df_gossip_query(df_gossip_node_t *n, const char *name, const uint8_t *payload, size_t len,
                    const char *const *nodes, size_t nnodes, bool request_ack, uint32_t timeout_ms,
                    uint64_t now_ms, uint32_t *id_out);
/* Answers a query delivered as DF_GOSSIP_EV_QUERY (by its ltime and id).
 * -ENOENT when unknown or past its deadline, DF_ETOOBIG, -EALREADY when
 * already answered. */
int df_gossip_respond(df_gossip_node_t *n, uint64_t ltime, uint32_t query_id, const uint8_t *payload,
                      size_t len, uint64_t now_ms);

/* Graceful leave: Serf leave intent, then memberlist dead-about-self with
 * the same incarnation (peers show "left"), then leave_propagate_ms of
 * answering probes.  df_gossip_has_left() turns true at the end. */
int df_gossip_leave(df_gossip_node_t *n, uint64_t now_ms);
bool df_gossip_has_left(const df_gossip_node_t *n);

/* Member lookup by name: 0 or -ENOENT.  The pointers stay valid until the
 * next call on the node. */
int df_gossip_member_get(const df_gossip_node_t *n, const char *name, df_gossip_member_t *m);
void df_gossip_member_foreach(const df_gossip_node_t *n, void (*cb)(const df_gossip_member_t *m, void *arg),
                              void *arg);
/* Number of members (self included) with that Serf status. */
size_t df_gossip_count(const df_gossip_node_t *n, df_gossip_status_t status);
/* Local health score (Lifeguard awareness), 0..awareness_max-1. */
int df_gossip_health_score(const df_gossip_node_t *n);
uint32_t df_gossip_incarnation(const df_gossip_node_t *n);

/* What was refused for encryption, and what remotes refused of ours: the
 * owner's clue to a key mismatch (a node with the wrong key never joins);
 * also what was dropped as malformed, and broadcasts pruned unsent.
 * Counters only grow. */
typedef struct {
    uint64_t wrong_key;   /* encrypted, and none of our keys opens it (UDP or TCP) */
    uint64_t unencrypted; /* a plain stream while we encrypt */
    uint64_t encrypted;   /* an encrypted stream while we have no key */
    uint64_t err_replies; /* errResp replies to our streams (the remote refused them) */
    uint64_t malformed;   /* packets and inbound streams that did not decode (dropped) */
    uint64_t pruned;      /* our broadcasts pruned from a full queue before their last
                           * retransmit (DF_GOSSIP_QUEUE_MAX): gossip that may not arrive */
    char last_err[128];   /* the text of the last errResp, NUL-terminated */
} df_gossip_rx_errors_t;
void df_gossip_rx_errors(const df_gossip_node_t *n, df_gossip_rx_errors_t *out);

#endif
