/*
 * The wire format of a Serf 0.9.4 / memberlist 0.2.2 gossip node (spec:
 * shared/specs/serf-wire.md): memberlist's framing (type byte, compound,
 * compress, CRC) and message structs, and the Serf messages carried in
 * memberlist `user` messages and in the push/pull user state.
 *
 * Sans-I/O and allocation-light.  Decoders take (buf, len) and fill caller
 * structs; every variable-length field is a df_gossip_bytes_t pointing INTO
 * buf, so the decoded struct is valid only while buf is.  Every length,
 * count and nesting depth is capped (constants below): malformed input is
 * DF_EPROTO, input over a cap DF_ETOOBIG, never a crash or an unbounded
 * allocation.  Encoders append to a capped df_buf_t and restore its length
 * on failure; they emit what Go emits (go-msgpack with a zero MsgpackHandle:
 * struct fields as a map with keys sorted by name, strings and []byte both
 * in the old raw family fixraw/raw16/raw32, nil slices as nil, smallest
 * integer forms), so re-encoding a decoded Go message gives Go's bytes.
 */
#ifndef DF_GOSSIP_CODEC_H
#define DF_GOSSIP_CODEC_H
#ifndef DF_INTERNAL
#error "lib/gossip/gossip_codec.h is private to libdfly"
#endif

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ caps */

#define DF_GOSSIP_NAME_MAX 256          /* node names, event/query names, From */
#define DF_GOSSIP_META_MAX 512          /* memberlist MetaMaxSize (Serf tags) */
#define DF_GOSSIP_ADDR_MAX 16           /* IPv4 or IPv6 */
#define DF_GOSSIP_PAYLOAD_MAX 65536     /* ack, query and response payloads */
#define DF_GOSSIP_COMPOUND_MAX 255      /* parts one compound can name (u8 count) */
#define DF_GOSSIP_COMPOUND_SEND_MAX 127 /* 0.2.2 mis-slices from 128 parts on */
#define DF_GOSSIP_PACKET_MAX 65536      /* udpPacketBufSize */
#define DF_GOSSIP_NEST_MAX 4            /* compound/compress nesting in one packet */
#define DF_GOSSIP_UNZIP_MAX 65536       /* decompressed bytes per UDP packet */
#define DF_GOSSIP_STREAM_UNZIP_MAX (20u * 1024 * 1024) /* maxPushStateBytes */
#define DF_GOSSIP_PUSHPULL_NODES_MAX 4096
#define DF_GOSSIP_MSGPACK_DEPTH 8       /* nesting inside one msgpack object */
#define DF_SERF_EVENT_SIZE_MAX 9216     /* Serf's UserEventSizeLimit ceiling: name + payload */
#define DF_SERF_FILTERS_MAX 64          /* filters in one query */
#define DF_SERF_KEYS_MAX 64             /* keys in one key-response */
#define DF_SERF_EVENT_SLOTS_MAX 4096    /* push/pull Events ring (512 by default) */
#define DF_SERF_SLOT_EVENTS_MAX 256     /* events in one ring slot */

/* ----------------------------------------------------------- types, enums */

/* A byte string inside the decoded buffer (or a static empty one).  Nil
 * (Go's nil slice) and empty are told apart by df_gossip_bytes_is_nil();
 * encoders keep the distinction. */
typedef struct {
    const uint8_t *p;
    size_t len;
} df_gossip_bytes_t;

/* Decoded fields are never NULL, even when empty (so memcpy/memcmp with
 * their length are always defined); a Go nil decodes to a distinguished
 * empty value that this tells apart, and that re-encodes as nil.  A
 * caller-built value with p == NULL also encodes as nil. */
bool df_gossip_bytes_is_nil(df_gossip_bytes_t b);

/* memberlist messageType. */
enum {
    DF_GOSSIP_PING = 0,
    DF_GOSSIP_INDIRECT_PING = 1,
    DF_GOSSIP_ACK = 2,
    DF_GOSSIP_SUSPECT = 3,
    DF_GOSSIP_ALIVE = 4,
    DF_GOSSIP_DEAD = 5,
    DF_GOSSIP_PUSH_PULL = 6,
    DF_GOSSIP_COMPOUND = 7,
    DF_GOSSIP_USER = 8,
    DF_GOSSIP_COMPRESS = 9,
    DF_GOSSIP_ENCRYPT = 10,
    DF_GOSSIP_NACK = 11,
    DF_GOSSIP_HAS_CRC = 12,
    DF_GOSSIP_ERR = 13,
};

/* Serf messageType (first byte of a memberlist user message). */
enum {
    DF_SERF_LEAVE = 0,
    DF_SERF_JOIN = 1,
    DF_SERF_PUSH_PULL = 2,
    DF_SERF_USER_EVENT = 3,
    DF_SERF_QUERY = 4,
    DF_SERF_QUERY_RESPONSE = 5,
    DF_SERF_CONFLICT_RESPONSE = 6,
    DF_SERF_KEY_REQUEST = 7,
    DF_SERF_KEY_RESPONSE = 8,
    DF_SERF_RELAY = 9,
};

/* pushNodeState.State (NodeStateType). */
enum { DF_GOSSIP_STATE_ALIVE = 0, DF_GOSSIP_STATE_SUSPECT = 1, DF_GOSSIP_STATE_DEAD = 2, DF_GOSSIP_STATE_LEFT = 3 };

/* What Serf 0.9.4 advertises: [PMin, PMax, PCur, DMin, DMax, DCur]. */
extern const uint8_t df_gossip_serf_vsn[6];

/* ------------------------------------------------------ memberlist structs */

typedef struct {
    uint32_t seq_no;
    df_gossip_bytes_t node;        /* target name; "" = anyone */
    df_gossip_bytes_t source_addr; /* omitempty: not sent when len == 0 */
    df_gossip_bytes_t source_node; /* omitempty */
    uint16_t source_port;          /* omitempty */
} df_gossip_ping_t;

typedef struct {
    uint32_t seq_no;
    df_gossip_bytes_t target; /* IP */
    uint16_t port;
    df_gossip_bytes_t node;
    bool nack;
    df_gossip_bytes_t source_addr, source_node; /* omitempty */
    uint16_t source_port;                       /* omitempty */
} df_gossip_indirect_ping_t;

typedef struct {
    uint32_t seq_no;
    df_gossip_bytes_t payload; /* nil or Serf's 1 + coordinate */
} df_gossip_ack_t;

typedef struct {
    uint32_t seq_no;
} df_gossip_nack_t;

/* suspect (3) and dead (5) share their fields. */
typedef struct {
    uint32_t incarnation;
    df_gossip_bytes_t node, from;
} df_gossip_suspect_t;

typedef struct {
    uint32_t incarnation;
    df_gossip_bytes_t node;
    df_gossip_bytes_t addr;
    uint16_t port;
    df_gossip_bytes_t meta;
    bool has_vsn; /* false: Vsn was nil/empty (pre-0.2 senders); encoders then send nil */
    uint8_t vsn[6];
} df_gossip_alive_t;

typedef struct {
    bool join;
    uint32_t nodes;          /* node states that follow */
    uint32_t user_state_len; /* raw bytes after them */
} df_gossip_pushpull_hdr_t;

typedef struct {
    df_gossip_bytes_t name, addr, meta;
    uint16_t port;
    uint32_t incarnation;
    uint8_t state; /* DF_GOSSIP_STATE_* (values above 3 are rejected) */
    bool has_vsn;
    uint8_t vsn[6];
} df_gossip_node_state_t;

/* ------------------------------------------------------------ Serf structs */

typedef struct {
    uint64_t ltime;
    df_gossip_bytes_t node;
    bool prune; /* leave only */
} df_serf_intent_t;

typedef struct {
    uint64_t ltime;
    df_gossip_bytes_t name, payload;
    bool cc;
} df_serf_user_event_t;

typedef struct {
    uint64_t ltime;
    uint32_t id;
    df_gossip_bytes_t addr;
    uint16_t port;
    df_gossip_bytes_t source_node;
    bool filters_nil;                    /* Filters was nil (encoders: send nil when nfilters == 0 and this is set) */
    size_t nfilters;
    df_gossip_bytes_t filters[DF_SERF_FILTERS_MAX]; /* each 00+[names] or 01+{Expr,Tag} */
    uint32_t flags;                      /* 1 ack requested, 2 no rebroadcast */
    uint8_t relay_factor;
    int64_t timeout_ns;
    df_gossip_bytes_t name, payload;
} df_serf_query_t;

typedef struct {
    uint64_t ltime;
    uint32_t id;
    df_gossip_bytes_t from;
    uint32_t flags; /* 1 = ack */
    df_gossip_bytes_t payload;
} df_serf_query_response_t;

/* relay (9): header, then `inner` = serfType + body to forward as 08|inner. */
typedef struct {
    df_gossip_bytes_t dest_ip;
    int64_t dest_port;
    df_gossip_bytes_t dest_zone;
    df_gossip_bytes_t dest_name;
    df_gossip_bytes_t inner;
} df_serf_relay_t;

typedef struct {
    df_gossip_bytes_t key;
} df_serf_key_request_t;

typedef struct {
    bool result;
    df_gossip_bytes_t message, primary_key;
    bool keys_nil;
    size_t nkeys;
    df_gossip_bytes_t keys[DF_SERF_KEYS_MAX];
} df_serf_key_response_t;

/* Push/pull user state (Serf type 2).  Decoding reports the variable parts
 * through callbacks (any may be NULL); a callback returning < 0 stops the
 * decode with that code. */
typedef struct {
    uint64_t ltime, event_ltime, query_ltime;
    size_t nstatus, nleft, nslots; /* counts seen */
} df_serf_pushpull_t;

typedef struct {
    int (*status_cb)(df_gossip_bytes_t name, uint64_t ltime, void *arg);
    int (*left_cb)(df_gossip_bytes_t name, void *arg);
    /* One per non-nil Events slot entry: slot index, its LTime, one event. */
    int (*event_cb)(size_t slot, uint64_t ltime, df_gossip_bytes_t name, df_gossip_bytes_t payload,
                    void *arg);
} df_serf_pushpull_cbs_t;

/* For encoding: one ring slot (userEvents). */
typedef struct {
    uint64_t ltime;
    size_t n;
    const df_gossip_bytes_t *names, *payloads; /* n each */
} df_serf_event_slot_t;

typedef struct {
    df_gossip_bytes_t name;
    uint64_t ltime;
} df_serf_status_t;

typedef struct {
    uint64_t ltime, event_ltime, query_ltime;
    const df_serf_status_t *status; /* StatusLTimes, emitted in this order */
    size_t nstatus;
    const df_gossip_bytes_t *left;
    size_t nleft;
    const df_serf_event_slot_t *const *slots; /* NULL entries are nil slots */
    size_t nslots;
} df_serf_pushpull_enc_t;

/* ------------------------------------------------------------- framing */

/* Walks one received UDP payload (already decrypted): strips an outer CRC
 * wrapper (verifying it), then recursively splits compounds and
 * decompresses compress messages, calling cb once per leaf message (type
 * byte first) in wire order.  msg points into buf or into a temporary
 * decompression buffer: valid during the call only.  Caps: DF_GOSSIP_
 * PACKET_MAX input, DF_GOSSIP_NEST_MAX nesting, DF_GOSSIP_UNZIP_MAX bytes
 * decompressed in total.  Like memberlist, a broken part does not stop the
 * other parts: the walk goes on and returns the first framing error at the
 * end (DF_EPROTO / DF_ETOOBIG; a truncated compound still yields its
 * complete parts).  A callback returning < 0 stops the walk with its code.
 * A leaf type 10 (encrypt) or 13 (err) is passed to cb like any other; the
 * caller decides (memberlist drops them on UDP). */
typedef int (*df_gossip_msg_cb)(const uint8_t *msg, size_t len, void *arg);
int df_gossip_packet_walk(const uint8_t *buf, size_t len, df_gossip_msg_cb cb, void *arg);

/* Splits a compound message (buf[0] == 7).  parts gets up to 255 slices into
 * buf; *truncated counts parts whose declared length ran past the end (they
 * and all later parts are dropped, as in memberlist).  0 (even with
 * truncated parts) or DF_EPROTO (no count byte, length table cut). */
int df_gossip_compound_split(const uint8_t *buf, size_t len, df_gossip_bytes_t parts[DF_GOSSIP_COMPOUND_MAX],
                             size_t *nparts, size_t *truncated);
/* Appends 07 n len[n] parts[...].  DF_ETOOBIG past 127 parts or a part over
 * 65535 bytes. */
int df_gossip_compound_encode(df_buf_t *out, const df_gossip_bytes_t *parts, size_t nparts);

/* CRC wrapper: verifies and returns the inner message.  DF_EPROTO when buf
 * is not 12+crc or the CRC does not match. */
int df_gossip_crc_unwrap(const uint8_t *buf, size_t len, df_gossip_bytes_t *inner);
/* Appends 0c crc32(msg) msg. */
int df_gossip_crc_wrap(df_buf_t *out, const uint8_t *msg, size_t len);

/* Compress wrapper (buf[0] == 9): decodes {Algo, Buf} and LZW-decompresses
 * Buf, appending to out (whose cap bounds the output).  DF_EPROTO (not a
 * compress message, Algo != 0, bad LZW), DF_ETOOBIG. */
int df_gossip_decompress(const uint8_t *buf, size_t len, df_buf_t *out);
/* Appends 09 {Algo:0, Buf:lzw(msg)}.  Memberlist sends the result only when
 * it is strictly shorter than msg: the caller compares lengths. */
int df_gossip_compress(df_buf_t *out, const uint8_t *msg, size_t len);

/* Incremental framing for TCP streams: given the first len bytes received,
 * says how long the whole message is.  0 with *msglen set once buf holds a
 * complete message of a known type (ping, ack, push/pull including its node
 * states and user state, user stream header + body, compress, encrypt, err),
 * DF_EAGAIN while more bytes are needed, DF_EPROTO for an unknown type or a
 * malformed prefix, DF_ETOOBIG past DF_GOSSIP_STREAM_UNZIP_MAX. */
int df_gossip_stream_msg_len(const uint8_t *buf, size_t len, size_t *msglen);

/* ----------------------------------------------- memberlist messages
 * Each decoder takes the whole message INCLUDING its type byte (checked)
 * and requires the msgpack body to use every byte (trailing bytes are
 * DF_EPROTO).  Each encoder appends type byte + body. */

int df_gossip_ping_decode(const uint8_t *buf, size_t len, df_gossip_ping_t *m);
int df_gossip_ping_encode(df_buf_t *out, const df_gossip_ping_t *m);
int df_gossip_indirect_ping_decode(const uint8_t *buf, size_t len, df_gossip_indirect_ping_t *m);
int df_gossip_indirect_ping_encode(df_buf_t *out, const df_gossip_indirect_ping_t *m);
int df_gossip_ack_decode(const uint8_t *buf, size_t len, df_gossip_ack_t *m);
int df_gossip_ack_encode(df_buf_t *out, const df_gossip_ack_t *m);
int df_gossip_nack_decode(const uint8_t *buf, size_t len, df_gossip_nack_t *m);
int df_gossip_nack_encode(df_buf_t *out, const df_gossip_nack_t *m);
/* type is DF_GOSSIP_SUSPECT or DF_GOSSIP_DEAD. */
int df_gossip_suspect_decode(const uint8_t *buf, size_t len, uint8_t type, df_gossip_suspect_t *m);
int df_gossip_suspect_encode(df_buf_t *out, uint8_t type, const df_gossip_suspect_t *m);
int df_gossip_alive_decode(const uint8_t *buf, size_t len, df_gossip_alive_t *m);
int df_gossip_alive_encode(df_buf_t *out, const df_gossip_alive_t *m);
/* errResp (13) {Error}. */
int df_gossip_err_decode(const uint8_t *buf, size_t len, df_gossip_bytes_t *error);
int df_gossip_err_encode(df_buf_t *out, df_gossip_bytes_t error);

/* Push/pull (TCP): 06 header, hdr->nodes node states, user state bytes.
 * nodes[] holds up to cap entries (more: DF_ETOOBIG; the cap is also bounded
 * by DF_GOSSIP_PUSHPULL_NODES_MAX).  *consumed = bytes of the whole
 * message.  DF_EAGAIN when buf is a valid but incomplete prefix (read more
 * from the socket and call again).  user_state points into buf. */
int df_gossip_pushpull_decode(const uint8_t *buf, size_t len, df_gossip_pushpull_hdr_t *hdr,
                              df_gossip_node_state_t *nodes, size_t cap, df_gossip_bytes_t *user_state,
                              size_t *consumed);
int df_gossip_pushpull_encode(df_buf_t *out, bool join, const df_gossip_node_state_t *nodes, size_t n,
                              const uint8_t *user_state, size_t user_state_len);

/* User message (8): the Serf message inside (serfType + body). */
int df_gossip_user_unwrap(const uint8_t *buf, size_t len, df_gossip_bytes_t *serf_msg);

/* ------------------------------------------------------ Serf messages
 * Decoders take the Serf message INCLUDING the Serf type byte (that is, a
 * user message without its leading 8); encoders append 08 + serfType +
 * body, ready to gossip, unless noted. */

/* type is DF_SERF_JOIN or DF_SERF_LEAVE (Prune is only sent for leave). */
int df_serf_intent_decode(const uint8_t *buf, size_t len, uint8_t type, df_serf_intent_t *m);
int df_serf_intent_encode(df_buf_t *out, uint8_t type, const df_serf_intent_t *m);
/* DF_ETOOBIG when len(Name) + len(Payload) > DF_SERF_EVENT_SIZE_MAX. */
int df_serf_user_event_decode(const uint8_t *buf, size_t len, df_serf_user_event_t *m);
int df_serf_user_event_encode(df_buf_t *out, const df_serf_user_event_t *m);
int df_serf_query_decode(const uint8_t *buf, size_t len, df_serf_query_t *m);
int df_serf_query_encode(df_buf_t *out, const df_serf_query_t *m);
int df_serf_query_response_decode(const uint8_t *buf, size_t len, df_serf_query_response_t *m);
int df_serf_query_response_encode(df_buf_t *out, const df_serf_query_response_t *m);
int df_serf_relay_decode(const uint8_t *buf, size_t len, df_serf_relay_t *m);
/* Appends 08 09 header inner (inner = serfType + body). */
int df_serf_relay_encode(df_buf_t *out, const df_serf_relay_t *m);
/* Key request/response live inside query/response payloads: these take and
 * produce the payload itself (07/08 + body), with no 08 user prefix. */
int df_serf_key_request_decode(const uint8_t *buf, size_t len, df_serf_key_request_t *m);
int df_serf_key_request_encode(df_buf_t *out, const df_serf_key_request_t *m);
int df_serf_key_response_decode(const uint8_t *buf, size_t len, df_serf_key_response_t *m);
int df_serf_key_response_encode(df_buf_t *out, const df_serf_key_response_t *m);
/* Push/pull user state: 02 + messagePushPull, with no 08 prefix (it travels
 * as the memberlist push/pull user state). */
int df_serf_pushpull_decode(const uint8_t *buf, size_t len, df_serf_pushpull_t *m,
                            const df_serf_pushpull_cbs_t *cbs, void *arg);
int df_serf_pushpull_encode(df_buf_t *out, const df_serf_pushpull_enc_t *m);

/* Serf tags in memberlist Meta (protocol >= 3): 0xff + map[string]string.
 * Calls cb per tag (key, value slices into meta).  Meta that does not start
 * with 0xff is the legacy role string: cb("role", meta).  DF_EPROTO,
 * DF_ETOOBIG (meta over DF_GOSSIP_META_MAX). */
int df_serf_tags_decode(const uint8_t *meta, size_t len,
                        int (*cb)(df_gossip_bytes_t key, df_gossip_bytes_t value, void *arg), void *arg);
/* Appends 0xff + map of n (key, value) pairs; DF_ETOOBIG when the result
 * would exceed DF_GOSSIP_META_MAX (Serf refuses such tags). */
int df_serf_tags_encode(df_buf_t *out, const df_gossip_bytes_t *keys, const df_gossip_bytes_t *values,
                        size_t n);

/* Query filters (the entries of messageQuery.Filters).  A node filter is
 * 00 + msgpack [names]; a tag filter is 01 + {Expr, Tag} (Expr an
 * unanchored Go regexp matched against the local value of Tag). */
enum { DF_SERF_FILTER_NODE = 0, DF_SERF_FILTER_TAG = 1 };
/* *match = name is in the node filter f.  0 or DF_EPROTO / DF_ETOOBIG. */
int df_serf_filter_nodes_match(const uint8_t *f, size_t len, df_gossip_bytes_t name, bool *match);
/* Appends 00 + [names]. */
int df_serf_filter_nodes_encode(df_buf_t *out, const df_gossip_bytes_t *names, size_t n);
/* Decodes a tag filter; tag and expr point into f. */
int df_serf_filter_tag_decode(const uint8_t *f, size_t len, df_gossip_bytes_t *tag, df_gossip_bytes_t *expr);

#endif
