/*
 * TLS on the plain-HTTP port.  Docker, skopeo and podman, told to use an
 * "insecure" registry, first try TLS and fall back to plain HTTP only when
 * that attempt fails.  evhttp would read the ClientHello as a request line
 * and wait for a '\n' that may never come (the hello is binary), so the
 * client would hang until a timeout before its fallback.
 *
 * evhttp lets us make each connection's bufferevent (evhttp_set_bevcb); we
 * make the usual socket bufferevent and watch its input buffer.  When bytes
 * arrive in an empty buffer -- the start of a request -- and the first is
 * 0x16 (a TLS handshake record; no HTTP method starts with it), we shut the
 * socket down both ways: the client sees the connection end at once, and
 * evhttp, reading EOF, frees the connection as for any client that left.
 * Only a syscall happens inside the buffer callback; evhttp's state is left
 * to evhttp.
 */
#include "proxy/proxy_internal.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include <sys/socket.h>

#define TLS_HANDSHAKE_RECORD 0x16

static void input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct bufferevent *bev = arg;
    unsigned char first;
    evutil_socket_t fd;

    if (info->orig_size != 0 || info->n_added == 0)
        return;
    if (evbuffer_copyout(buf, &first, 1) != 1 || first != TLS_HANDSHAKE_RECORD)
        return;
    fd = bufferevent_getfd(bev);
    if (fd >= 0) {
        DF_LOG_D("mirror: TLS ClientHello on the plain HTTP port, closing");
        shutdown(fd, SHUT_RDWR);
    }
}

struct bufferevent *df__proxy_tls_sniff_bevcb(struct event_base *base, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);

    (void)arg;
    if (bev && !evbuffer_add_cb(bufferevent_get_input(bev), input_cb, bev)) {
        bufferevent_free(bev);
        return NULL;
    }
    return bev;
}

void df__proxy_tls_sniff_off(struct bufferevent *bev)
{
    evbuffer_remove_cb(bufferevent_get_input(bev), input_cb, bev);
}
