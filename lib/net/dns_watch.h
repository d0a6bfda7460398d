/*
 * A DNS name watched over time: resolved at once and then every interval,
 * with c-ares on the caller's libevent loop (never blocking it).  Each
 * finished round reports the set of addresses found.  It is how gossip mode
 * finds its seeds behind a Kubernetes headless service.
 *
 * Target forms:
 *   "NAME:PORT"   the A and AAAA records of NAME, each with PORT;
 *   "NAME"        the SRV records of NAME (e.g. "_serf._tcp.example"): every
 *                 target's A and AAAA records, each with the record's port,
 *                 targets taken by priority (lowest first).
 *
 * Contract: cb runs from the loop, never from inside df_dns_watch_new, once
 * per round; the next round starts interval_ms after a round ends (rounds
 * never overlap).  cb must not free the watch.  A round reports at most
 * max_addrs distinct addresses.
 */
#ifndef DF_NET_DNS_WATCH_H
#define DF_NET_DNS_WATCH_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stddef.h>
#include <stdint.h>

#define DF_DNS_WATCH_ADDRS_MAX 16 /* default and upper bound of max_addrs */
#define DF_DNS_WATCH_INTERVAL_MS 30000u /* default interval */

struct event_base;
typedef struct df_dns_watch df_dns_watch_t;

typedef struct {
  uint8_t addr[16]; /* 4 (IPv4) or 16 (IPv6) bytes */
  size_t addr_len;
  uint16_t port;
} df_dns_addr_t;

/* One round's result: n addresses (valid during the call only), and error
 * NULL, or n == 0 and error a short reason ("Domain name not found",
 * "Timeout while contacting DNS servers", "no SRV target resolved" ...). */
typedef void (*df_dns_watch_cb)(const df_dns_addr_t *addrs, size_t n,
                                const char *error, void *arg);

typedef struct {
  struct event_base *base; /* borrowed */
  const char *target;      /* "NAME:PORT" or "NAME" (SRV), copied */
  const char
      *server; /* "IP:PORT", "[IPv6]:PORT" or "IP" (port 53): ask only this
                * server and skip /etc/hosts; NULL = resolv.conf and hosts */
  uint64_t interval_ms; /* 0 = DF_DNS_WATCH_INTERVAL_MS */
  size_t max_addrs;     /* 0 or over the cap = DF_DNS_WATCH_ADDRS_MAX */
  df_dns_watch_cb cb;
  void *arg;
} df_dns_watch_opts_t;

typedef struct {
  uint64_t rounds;   /* rounds finished */
  uint64_t failures; /* of which found no address */
} df_dns_watch_stats_t;

/* 0, -EINVAL (bad target or server), -EIO (c-ares could not start),
 * -ENOMEM.  The first round is scheduled at once. */
int df_dns_watch_new(const df_dns_watch_opts_t *o, df_dns_watch_t **out);
/* Cancels a running round (no callback) and frees.  NULL is fine. */
void df_dns_watch_free(df_dns_watch_t *w);
void df_dns_watch_stats(const df_dns_watch_t *w, df_dns_watch_stats_t *out);

#endif
