/*
 * dns_watch: periodic A/AAAA or SRV resolution with c-ares on libevent.
 *
 * c-ares owns the DNS sockets and the wire parsing; we only watch its
 * sockets: its sock_state_cb tells which fd wants reading or writing, we
 * keep one persistent libevent event per fd and hand readiness back with
 * ares_process_fd().  A second timer, armed from ares_timeout() while a
 * round runs, lets c-ares retry and time out queries.
 *
 * A round counts its outstanding queries in `pending` (plus one while the
 * round is being started, since c-ares may answer synchronously, e.g. from
 * /etc/hosts or for a cached failure).  When pending reaches zero the found
 * set (deduplicated, capped) goes to the callback and the next round is
 * scheduled.  ares_destroy() in df_dns_watch_free completes every query
 * with ARES_EDESTRUCTION: those completions touch nothing.
 */
#include "net/dns_watch.h"

#include "core/core.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define SOCKS_MAX                                                              \
  16 /* c-ares uses one UDP socket per server, TCP on truncation */
#define QUERY_TIMEOUT_MS 2000 /* per try; 2 tries per server */
#define QUERY_TRIES 2
#define SRV_TARGETS_MAX DF_DNS_WATCH_ADDRS_MAX

typedef struct {
  ares_socket_t fd;
  struct event *ev;
} sock_t;

struct df_dns_watch {
  struct event_base *base;
  ares_channel ch;
  bool ch_ok, lib_ok;
  char *name;    /* A/AAAA name or SRV name */
  uint16_t port; /* A/AAAA: the port given; SRV: 0 */
  bool srv;
  uint64_t interval_ms;
  size_t max;
  df_dns_watch_cb cb;
  void *arg;
  struct event *round_timer, *ares_timer;
  sock_t socks[SOCKS_MAX];
  size_t nsocks;
  /* the running round */
  bool running;
  unsigned pending;
  df_dns_addr_t found[DF_DNS_WATCH_ADDRS_MAX];
  size_t nfound;
  char error[128];
  df_dns_watch_stats_t stats;
};

typedef struct {
  df_dns_watch_t *w;
  uint16_t port;
} lookup_t;

static void start_round(df_dns_watch_t *w);

/* ------------------------------------------------------------ sockets */

static void arm_timeout(df_dns_watch_t *w) {
  struct timeval max = {1, 0}, tv, *t;

  if (!w->running) {
    evtimer_del(w->ares_timer);
    return;
  }
  t = ares_timeout(w->ch, &max, &tv);
  evtimer_add(w->ares_timer, t);
}

static void sock_cb(evutil_socket_t fd, short what, void *arg) {
  df_dns_watch_t *w = arg;

  ares_process_fd(w->ch, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
                  (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
  arm_timeout(w);
}

static void ares_timer_cb(evutil_socket_t fd, short what, void *arg) {
  df_dns_watch_t *w = arg;

  (void)fd;
  (void)what;
  ares_process_fd(w->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  arm_timeout(w);
}

/* c-ares: fd now wants (readable, writable); (0, 0) = it is being closed. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable,
                          int writable) {
  df_dns_watch_t *w = data;
  size_t i;

  for (i = 0; i < w->nsocks && w->socks[i].fd != fd; i++)
    ;
  if (i < w->nsocks) {
    event_free(w->socks[i].ev);
    w->socks[i] = w->socks[--w->nsocks];
  }
  if (!readable && !writable)
    return;
  if (w->nsocks == SOCKS_MAX) {
    /* Not watched: its queries then end by c-ares' timeout. */
    DF_LOG_W("dns: more than %d resolver sockets, fd %d not watched", SOCKS_MAX,
             (int)fd);
    return;
  }
  w->socks[w->nsocks].fd = fd;
  w->socks[w->nsocks].ev =
      event_new(w->base, fd,
                (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0) |
                        EV_PERSIST),
                sock_cb, w);
  if (!w->socks[w->nsocks].ev)
    return;
  event_add(w->socks[w->nsocks].ev, NULL);
  w->nsocks++;
}

/* ------------------------------------------------------------ rounds */

static void note_error(df_dns_watch_t *w, const char *what, int status) {
  if (!w->error[0])
    snprintf(w->error, sizeof(w->error), "%s%s%s", what ? what : "",
             what ? ": " : "", ares_strerror(status));
}

static void add_found(df_dns_watch_t *w, const struct sockaddr *sa,
                      uint16_t port) {
  df_dns_addr_t a = {.port = port};

  if (sa->sa_family == AF_INET) {
    memcpy(a.addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    a.addr_len = 4;
  } else if (sa->sa_family == AF_INET6) {
    memcpy(a.addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    a.addr_len = 16;
  } else {
    return;
  }
  for (size_t i = 0; i < w->nfound; i++)
    if (w->found[i].port == port && w->found[i].addr_len == a.addr_len &&
        memcmp(w->found[i].addr, a.addr, a.addr_len) == 0)
      return;
  if (w->nfound < w->max)
    w->found[w->nfound++] = a;
}

static void round_step_done(df_dns_watch_t *w) {
  struct timeval tv;

  if (--w->pending > 0)
    return;
  w->running = false;
  w->stats.rounds++;
  if (w->nfound == 0) {
    w->stats.failures++;
    if (!w->error[0])
      snprintf(w->error, sizeof(w->error), "%s",
               w->srv ? "no SRV target resolved" : "no address");
    w->cb(NULL, 0, w->error, w->arg);
  } else {
    w->cb(w->found, w->nfound, NULL, w->arg);
  }
  tv.tv_sec = (time_t)(w->interval_ms / 1000);
  tv.tv_usec = (suseconds_t)(w->interval_ms % 1000) * 1000;
  evtimer_add(w->round_timer, &tv);
}

static void addrinfo_cb(void *arg, int status, int timeouts,
                        struct ares_addrinfo *res) {
  lookup_t *l = arg;
  df_dns_watch_t *w = l->w;

  (void)timeouts;
  if (status == ARES_EDESTRUCTION) {
    free(l);
    return;
  }
  if (status == ARES_SUCCESS && res) {
    for (struct ares_addrinfo_node *p = res->nodes; p; p = p->ai_next)
      add_found(w, p->ai_addr, l->port);
  } else {
    note_error(w, NULL, status);
  }
  if (res)
    ares_freeaddrinfo(res);
  free(l);
  round_step_done(w);
}

/* Queues an A+AAAA lookup of host for the running round (pending + 1). */
static void lookup_host(df_dns_watch_t *w, const char *host, uint16_t port) {
  struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC,
                                      .ai_socktype = SOCK_DGRAM};
  lookup_t *l = malloc(sizeof(*l));

  if (!l) {
    snprintf(w->error, sizeof(w->error), "out of memory");
    return;
  }
  l->w = w;
  l->port = port;
  w->pending++;
  ares_getaddrinfo(w->ch, host, NULL, &hints, addrinfo_cb, l);
}

static int srv_cmp(const void *a, const void *b) {
  const struct ares_srv_reply *x = *(struct ares_srv_reply *const *)a,
                              *y = *(struct ares_srv_reply *const *)b;

  if (x->priority != y->priority)
    return x->priority < y->priority ? -1 : 1;
  return (int)y->weight - (int)x->weight;
}

static void srv_cb(void *arg, int status, int timeouts, unsigned char *abuf,
                   int alen) {
  df_dns_watch_t *w = arg;
  struct ares_srv_reply *srv = NULL, *targets[SRV_TARGETS_MAX];
  size_t n = 0;

  (void)timeouts;
  if (status == ARES_EDESTRUCTION)
    return;
  if (status == ARES_SUCCESS)
    status = ares_parse_srv_reply(abuf, alen, &srv);
  if (status != ARES_SUCCESS) {
    note_error(w, "SRV", status);
  } else {
    for (struct ares_srv_reply *p = srv; p && n < SRV_TARGETS_MAX; p = p->next)
      if (p->port != 0 && p->host[0] && strcmp(p->host, ".") != 0)
        targets[n++] = p; /* "." is RFC 2782's "no such service here" */
    qsort(targets, n, sizeof(targets[0]), srv_cmp);
    for (size_t i = 0; i < n && i < w->max; i++)
      lookup_host(w, targets[i]->host, targets[i]->port);
  }
  if (srv)
    ares_free_data(srv);
  round_step_done(w);
}

static void start_round(df_dns_watch_t *w) {
  if (w->running)
    return;
  w->running = true;
  w->pending =
      1; /* held while queries are queued: c-ares may answer synchronously */
  w->nfound = 0;
  w->error[0] = '\0';
  if (w->srv) {
    w->pending++;
    ares_query(w->ch, w->name, 1 /* C_IN */, 33 /* T_SRV */, srv_cb, w);
  } else {
    lookup_host(w, w->name, w->port);
  }
  if (w->running)
    arm_timeout(w);
  round_step_done(w);
}

static void round_timer_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  start_round(arg);
}

/* ------------------------------------------------------------ API */

/* "IP:PORT", "[IPv6]:PORT" or a bare IP: c-ares' servers CSV accepts
 * exactly these; checked here so that a typo is a clear start-up error. */
static int server_ok(const char *s) {
  char host[64];
  uint16_t port;
  struct in6_addr a6;
  struct in_addr a4;

  if (inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1)
    return 0;
  if (df_parse_hostport(s, host, sizeof(host), &port) < 0 || port == 0)
    return -EINVAL;
  return inet_pton(AF_INET, host, &a4) == 1 ||
                 inet_pton(AF_INET6, host, &a6) == 1
             ? 0
             : -EINVAL;
}

int df_dns_watch_new(const df_dns_watch_opts_t *o, df_dns_watch_t **out) {
  df_dns_watch_t *w;
  struct ares_options ao = {0};
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  char host[256];
  uint16_t port;
  struct timeval now = {0, 0};
  int rc = -EINVAL;

  if (!o->base || !o->target || !o->target[0] || !o->cb ||
      (o->server && server_ok(o->server) < 0))
    return -EINVAL;
  w = calloc(1, sizeof(*w));
  if (!w)
    return -ENOMEM;
  w->base = o->base;
  w->cb = o->cb;
  w->arg = o->arg;
  w->interval_ms = o->interval_ms ? o->interval_ms : DF_DNS_WATCH_INTERVAL_MS;
  w->max = o->max_addrs && o->max_addrs <= DF_DNS_WATCH_ADDRS_MAX
               ? o->max_addrs
               : DF_DNS_WATCH_ADDRS_MAX;
  if (strchr(o->target, ':')) {
    if (df_parse_hostport(o->target, host, sizeof(host), &port) < 0 ||
        port == 0)
      goto fail;
    w->port = port;
    w->name = strdup(host);
  } else {
    if (strlen(o->target) > 253)
      goto fail;
    w->srv = true;
    w->name = strdup(o->target);
  }
  rc = -ENOMEM;
  if (!w->name)
    goto fail;
  w->round_timer = evtimer_new(o->base, round_timer_cb, w);
  w->ares_timer = evtimer_new(o->base, ares_timer_cb, w);
  if (!w->round_timer || !w->ares_timer)
    goto fail;
  rc = -EIO;
  if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
    goto fail;
  w->lib_ok = true;
  ao.sock_state_cb = sock_state_cb;
  ao.sock_state_cb_data = w;
  ao.timeout = QUERY_TIMEOUT_MS;
  ao.tries = QUERY_TRIES;
  if (o->server) {
    ao.lookups = (char *)"b"; /* DNS only: the named server is the authority */
    mask |= ARES_OPT_LOOKUPS;
  }
  if (ares_init_options(&w->ch, &ao, mask) != ARES_SUCCESS)
    goto fail;
  w->ch_ok = true;
  if (o->server &&
      ares_set_servers_ports_csv(w->ch, o->server) != ARES_SUCCESS) {
    rc = -EINVAL;
    goto fail;
  }
  evtimer_add(w->round_timer, &now);
  *out = w;
  return 0;
fail:
  df_dns_watch_free(w);
  return rc;
}

void df_dns_watch_free(df_dns_watch_t *w) {
  if (!w)
    return;
  if (w->ch_ok)
    ares_destroy(
        w->ch); /* completes queries with ARES_EDESTRUCTION, closes sockets */
  for (size_t i = 0; i < w->nsocks; i++)
    event_free(w->socks[i].ev);
  if (w->lib_ok)
    ares_library_cleanup();
  if (w->round_timer)
    event_free(w->round_timer);
  if (w->ares_timer)
    event_free(w->ares_timer);
  free(w->name);
  free(w);
}

void df_dns_watch_stats(const df_dns_watch_t *w, df_dns_watch_stats_t *out) {
  *out = w->stats;
}
