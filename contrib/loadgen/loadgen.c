/* loadgen: a load generator for statusgw (and, for comparison, nginx with
 * nchan) on libevent. It opens a swarm of WebSocket subscribers (Phoenix
 * joins for statusgw, plain sockets for nchan; masked frames, pings
 * answered) and HTTP keep-alive publishers at a fixed or maximal rate,
 * single or bulk. Every update carries its send time, so each delivery is
 * a latency sample; updates inside batch frames count one by one.
 *
 *   loadgen --target statusgw|nchan --port 4000 --subscribers 5000 \
 *           --conversations 1 --publishers 1 --rate 0 --bulk 1 --duration 10
 *
 * statusgw's subscribers listen over --transport websocket (the default),
 * sse (one stream each), sse-multi (one stream each over every
 * conversation, up to 64) or longpoll (a Phoenix long-poll session each).
 */
#define _GNU_SOURCE
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>
#include <arpa/inet.h>

#include "../../src/evread.h"

enum { T_STATUSGW, T_NCHAN };
/* how statusgw subscribers listen */
enum { X_WS, X_SSE, X_MULTI, X_LONGPOLL };

static struct {
    int target;
    const char *host;
    int port;
    int publish_port; /* publishers to another gateway (a cluster); 0: port */
    int subscribers, conversations, publishers, bulk, pipeline;
    double rate, duration, warmup, connect_timeout;
    int batch_join;
    const char *json_path;
    const char *label;
    int builder; /* publish with "builder":"tool" and args */
    int metadata; /* publish the metadata that builder would make, directly */
    int procs;    /* processes sharing the subscribers and publishers */
    const char *ready_file; /* written once every subscriber has answered */
    int transport; /* X_* */
} opt = {T_STATUSGW, "127.0.0.1", 4000, 0, 0, 1, 1, 1, 1, 0, 10, 1, 30, 0, NULL, "", 0, 0, 1, NULL, X_WS};

#define BUILDER_FIELDS ",\"builder\":\"tool\",\"args\":{\"tool_name\":\"search_code\",\"params\":{\"query\":\"where is the retry loop in http.c\",\"limit\":10}}"
/* what the tool builder makes of BUILDER_FIELDS, for a no-plugin baseline */
#define METADATA_FIELDS ",\"metadata\":{\"tool\":\"search_code\",\"params\":{\"query\":\"where is the retry loop in http.c\",\"limit\":10}}"
#define EXTRA_FIELDS (opt.builder ? BUILDER_FIELDS : opt.metadata ? METADATA_FIELDS : "")

static struct event_base *base;
static struct sockaddr_in addr, pub_addr; /* subscribers', publishers' (--publish-port) */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* ---- results ---- */

static struct {
    int subs_connected, subs_failed, subs_closed;
    uint64_t published, acked, rejected;
    uint64_t received, received_measured;
    uint64_t *lat; /* microseconds, a reservoir */
    size_t nlat, caplat;
    uint64_t lat_max;
    int measuring;
    uint64_t t_start, t_end;
    uint64_t acked_in_window, received_in_window;
} R;

static void sample(uint64_t sent_ns, uint64_t now)
{
    R.received++;
    if (!R.measuring) return;
    R.received_in_window++;
    uint64_t us = now > sent_ns ? (now - sent_ns) / 1000 : 0;
    if (us > R.lat_max) R.lat_max = us;
    if (R.nlat < R.caplat) {
        R.lat[R.nlat++] = us;
    } else { /* reservoir sampling keeps the distribution honest */
        uint64_t j = (uint64_t)random() % (R.received_in_window);
        if (j < R.caplat) R.lat[j] = us;
    }
}

/* Scan delivered bytes for every "t=<ns>" marker: one per update. */
static void scan_markers(const char *p, size_t n)
{
    uint64_t now = mono_ns();
    const char *end = p + n;
    while (p < end) {
        /* '=' is rare in the JSON around a marker: memchr finds it fastest */
        const char *m = memchr(p, '=', (size_t)(end - p));
        if (!m) break;
        if (m == p || m[-1] != 't') {
            p = m + 1;
            continue;
        }
        m += 1;
        uint64_t v = 0;
        int digits = 0;
        while (m < end && *m >= '0' && *m <= '9') {
            v = v * 10 + (*m - '0');
            m++;
            digits++;
        }
        if (digits >= 6) sample(v, now);
        p = m;
    }
}

/* ---- connections ----
 *
 * Reads go through an event of our own and writes go out at once, as in
 * the gateway: a bufferevent asks the kernel how much is readable (an
 * ioctl) before each read, and adds and deletes its write event around
 * each write, which would make the generator the bottleneck sooner. */

typedef struct conn_io {
    struct event *ev;
    struct bufferevent *bev;
    bufferevent_data_cb rd;
    bufferevent_event_cb evcb;
    void *arg;
} conn_io;

#define MAX_FD 65536
static conn_io *ios[MAX_FD];

static void io_readable(evutil_socket_t fd, short what, void *arg)
{
    conn_io *io = arg;
    ssize_t n = sg_evbuffer_readv(bufferevent_get_input(io->bev), fd, 16384);
    if (n == -2) return;
    if (n <= 0) {
        io->evcb(io->bev, (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR) | BEV_EVENT_READING, io->arg);
        return;
    }
    io->rd(io->bev, io->arg); /* may free the connection */
}

static void conn_free(struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0 && fd < MAX_FD && ios[fd]) {
        event_free(ios[fd]->ev);
        free(ios[fd]);
        ios[fd] = NULL;
    }
    bufferevent_free(bev);
}

/* Write what the output holds now; the bufferevent takes a leftover. */
static void flush_now(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (!evbuffer_get_length(out)) return;
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out)) bufferevent_enable(bev, EV_WRITE);
}

static void on_drained(struct bufferevent *bev, void *arg)
{
    bufferevent_disable(bev, EV_WRITE);
}

/* ---- WebSocket subscribers ---- */

typedef struct sub {
    struct bufferevent *bev;
    int conv;
    int upgraded;
    int joined;
    struct evbuffer *msg; /* a fragmented message being assembled */
    int lp_step;          /* long-poll: 0 opening, 1 joining, 2 polling */
    char lp_token[40];
} sub;

static sub *subs;
static int subs_pending;

static void ws_send(struct bufferevent *bev, int opcode, const char *data, size_t len)
{
    uint8_t h[14];
    size_t hl = 2;
    h[0] = 0x80 | opcode;
    if (len < 126) {
        h[1] = 0x80 | len;
    } else {
        h[1] = 0x80 | 126;
        h[2] = len >> 8;
        h[3] = len & 0xff;
        hl = 4;
    }
    uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    memcpy(h + hl, key, 4);
    hl += 4;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add(out, h, hl);
    char tmp[len ? len : 1];
    for (size_t i = 0; i < len; i++)
        tmp[i] = data[i] ^ key[i & 3];
    evbuffer_add(out, tmp, len);
    flush_now(bev);
}

static void sub_join(sub *s)
{
    char j[256];
    int n = snprintf(j, sizeof(j), "[\"1\",\"1\",\"status:bench-%d\",\"phx_join\",{\"categories\":[\"*\"]%s}]",
                     s->conv, opt.batch_join ? ",\"batch\":true" : "");
    ws_send(s->bev, 1, j, n);
}

static void sub_ready(sub *s)
{
    if (s->joined) return;
    s->joined = 1;
    R.subs_connected++;
    subs_pending--;
}

static void sub_failed(sub *s, struct bufferevent *bev)
{
    R.subs_failed++;
    subs_pending--;
    conn_free(bev);
    s->bev = NULL;
}

/* A response head in `in`: -1 not whole yet; else drained, and 0 when its
 * status line starts with want, 1 when not. */
static int read_head(struct evbuffer *in, const char *want)
{
    struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (e.pos < 0) return -1;
    char line[16] = "";
    evbuffer_copyout(in, line, sizeof(line));
    evbuffer_drain(in, e.pos + 4);
    return memcmp(line, want, strlen(want)) != 0;
}

/* ---- HTTP subscribers: event streams and long-poll sessions ---- */

/* An event stream: the head, then every complete event's markers. */
static void sse_read(sub *s, struct bufferevent *bev, struct evbuffer *in)
{
    if (!s->upgraded) {
        int st = read_head(in, "HTTP/1.1 200");
        if (st < 0) return;
        if (st > 0) {
            sub_failed(s, bev);
            return;
        }
        s->upgraded = 1;
        sub_ready(s);
    }
    size_t avail = evbuffer_get_length(in);
    if (!avail) return;
    const char *buf = (const char *)evbuffer_pullup(in, -1);
    const char *end = memrchr(buf, '\n', avail); /* whole lines only: a marker is never cut */
    if (!end) return;
    scan_markers(buf, (size_t)(end - buf));
    evbuffer_drain(in, (size_t)(end + 1 - buf));
}

static void lp_request(sub *s, const char *method, const char *body)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    evbuffer_add_printf(out, "%s /socket/longpoll?vsn=2.0.0%s%s HTTP/1.1\r\nHost: %s\r\n", method,
                        s->lp_token[0] ? "&token=" : "", s->lp_token, opt.host);
    if (body)
        evbuffer_add_printf(out, "Content-Type: application/x-ndjson\r\nContent-Length: %zu\r\n\r\n%s", strlen(body),
                            body);
    else
        evbuffer_add(out, "\r\n", 2);
    flush_now(s->bev);
}

/* A long-poll session: open it, join, then poll for ever, each answer's
 * markers counted. */
static void lp_read(sub *s, struct bufferevent *bev, struct evbuffer *in)
{
    for (;;) {
        struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (e.pos < 0) return;
        char head[512];
        size_t hl = (size_t)e.pos < sizeof(head) - 1 ? (size_t)e.pos : sizeof(head) - 1;
        evbuffer_copyout(in, head, hl);
        head[hl] = 0;
        const char *cl = strcasestr(head, "content-length:");
        size_t blen = cl ? strtoul(cl + 15, NULL, 10) : 0;
        if (evbuffer_get_length(in) < (size_t)e.pos + 4 + blen) return;
        evbuffer_drain(in, e.pos + 4);
        const char *body = (const char *)evbuffer_pullup(in, (ev_ssize_t)blen);
        if (memcmp(head, "HTTP/1.1 200", 12) != 0 || !body) {
            sub_failed(s, bev);
            return;
        }
        if (s->lp_step == 0) {
            const char *t = memmem(body, blen, "\"token\":\"", 9);
            if (!t || sscanf(t + 9, "%39[a-z0-9_]", s->lp_token) != 1) {
                sub_failed(s, bev);
                return;
            }
            char j[256];
            snprintf(j, sizeof(j), "[\"1\",\"1\",\"status:bench-%d\",\"phx_join\",{\"categories\":[\"*\"]%s}]", s->conv,
                     opt.batch_join ? ",\"batch\":true" : "");
            s->lp_step = 1;
            evbuffer_drain(in, blen);
            lp_request(s, "POST", j);
            continue;
        }
        if (s->lp_step == 1) {
            s->lp_step = 2;
            sub_ready(s);
        } else {
            scan_markers(body, blen);
        }
        evbuffer_drain(in, blen);
        lp_request(s, "GET", NULL);
    }
}

static void sub_read(struct bufferevent *bev, void *arg)
{
    sub *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (opt.target == T_STATUSGW && (opt.transport == X_SSE || opt.transport == X_MULTI)) {
        sse_read(s, bev, in);
        return;
    }
    if (opt.target == T_STATUSGW && opt.transport == X_LONGPOLL) {
        lp_read(s, bev, in);
        return;
    }
    if (!s->upgraded) {
        int st = read_head(in, "HTTP/1.1 101");
        if (st < 0) return;
        if (st > 0) {
            sub_failed(s, bev);
            return;
        }
        s->upgraded = 1;
        if (opt.target == T_STATUSGW) sub_join(s); else sub_ready(s);
    }
    /* parse frames in place over one contiguous view, drain once */
    size_t avail = evbuffer_get_length(in);
    if (avail < 2) return;
    const uint8_t *buf = evbuffer_pullup(in, -1);
    size_t off = 0;
    while (avail - off >= 2) {
        const uint8_t *h = buf + off;
        size_t left = avail - off, hl = 2;
        uint64_t len = h[1] & 0x7f;
        if (len == 126) {
            if (left < 4) break;
            len = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (len == 127) {
            if (left < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | h[2 + i];
            hl = 10;
        }
        if (left < hl + len) break;
        const char *payload = (const char *)h + hl;
        int op = h[0] & 0x0f, fin = h[0] & 0x80;
        off += hl + len;
        if (op == 9) { /* ping */
            ws_send(bev, 0xA, payload, len);
            continue;
        }
        if (op == 8) {
            R.subs_closed++;
            conn_free(bev);
            s->bev = NULL;
            return;
        }
        if (!fin || (s->msg && evbuffer_get_length(s->msg))) { /* fragments: assemble */
            if (!s->msg) s->msg = evbuffer_new();
            evbuffer_add(s->msg, payload, len);
            if (!fin) continue;
            len = evbuffer_get_length(s->msg);
            payload = (const char *)evbuffer_pullup(s->msg, -1);
        }
        if (!s->joined && opt.target == T_STATUSGW) {
            if (len && memmem(payload, len, "phx_reply", 9)) {
                if (memmem(payload, len, "\"ok\"", 4)) sub_ready(s);
                else { R.subs_failed++; subs_pending--; }
            }
        } else if (len) {
            scan_markers(payload, len);
        }
        if (s->msg) evbuffer_drain(s->msg, evbuffer_get_length(s->msg));
    }
    evbuffer_drain(in, off);
}

static void sub_event(struct bufferevent *bev, short what, void *arg)
{
    sub *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (opt.target == T_STATUSGW && opt.transport != X_WS) {
            if (opt.transport == X_LONGPOLL) {
                lp_request(s, "GET", NULL);
                return;
            }
            struct evbuffer *out = bufferevent_get_output(bev);
            if (opt.transport == X_SSE) {
                evbuffer_add_printf(out, "GET /api/v1/conversations/bench-%d/events", s->conv);
            } else { /* every conversation (up to 64) on one stream */
                evbuffer_add_printf(out, "GET /api/v1/events?conversations=bench-0");
                for (int i = 1; i < opt.conversations && i < 64; i++)
                    evbuffer_add_printf(out, ",bench-%d", i);
            }
            evbuffer_add_printf(out, " HTTP/1.1\r\nHost: %s\r\n\r\n", opt.host);
            flush_now(bev);
            return;
        }
        char path[128];
        if (opt.target == T_STATUSGW)
            snprintf(path, sizeof(path), "/socket/websocket?vsn=2.0.0");
        else
            snprintf(path, sizeof(path), "/sub/bench-%d", s->conv);
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                            path, opt.host);
        flush_now(bev);
        return;
    }
    if (!s->joined) {
        R.subs_failed++;
        subs_pending--;
    } else {
        R.subs_closed++;
    }
    conn_free(bev);
    s->bev = NULL;
}

static void heartbeat(evutil_socket_t fd, short w, void *arg)
{
    static const char hb[] = "[null,\"hb\",\"phoenix\",\"heartbeat\",{}]";
    for (int i = 0; i < opt.subscribers; i++)
        if (subs[i].bev && subs[i].joined && (opt.target != T_STATUSGW || opt.transport == X_WS)) {
            if (opt.target == T_STATUSGW) ws_send(subs[i].bev, 1, hb, sizeof(hb) - 1);
            else ws_send(subs[i].bev, 9, "", 0);
        }
}

/* ---- HTTP publishers ---- */

typedef struct pub {
    struct bufferevent *bev;
    int inflight;
    uint64_t seq;
    int id;
} pub;

static pub *pubs;
static int publishing;
static double budget; /* updates we may send now (rate mode) */

static void pub_send(pub *p)
{
    struct evbuffer *out = bufferevent_get_output(p->bev);
    char body[64 * 1024];
    size_t n = 0;
    uint64_t now = mono_ns();
    int conv = (int)((p->seq * (uint64_t)opt.publishers + p->id) % (uint64_t)opt.conversations);
    p->seq++;
    if (opt.target == T_NCHAN) {
        n = snprintf(body, sizeof(body), "{\"category\":\"tool\",\"text\":\"t=%llu\"}", (unsigned long long)now);
        evbuffer_add_printf(out, "POST /pub?id=bench-%d HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                 "Content-Length: %zu\r\n\r\n", conv, opt.host, n);
    } else if (opt.bulk <= 1) {
        n = snprintf(body, sizeof(body),
                     "{\"conversation_id\":\"bench-%d\",\"category\":\"tool\",\"text\":\"t=%llu\"%s}", conv,
                     (unsigned long long)now, EXTRA_FIELDS);
        evbuffer_add_printf(out, "POST /api/v1/status HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                 "Content-Length: %zu\r\n\r\n", opt.host, n);
    } else {
        body[n++] = '[';
        for (int i = 0; i < opt.bulk && n < sizeof(body) - 200; i++) {
            int c = (conv + i) % opt.conversations;
            n += snprintf(body + n, sizeof(body) - n,
                          "%s{\"conversation_id\":\"bench-%d\",\"category\":\"tool\",\"text\":\"t=%llu\"%s}",
                          i ? "," : "", c, (unsigned long long)now, EXTRA_FIELDS);
        }
        body[n++] = ']';
        evbuffer_add_printf(out, "POST /api/v1/status/bulk HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                 "Content-Length: %zu\r\n\r\n", opt.host, n);
    }
    evbuffer_add(out, body, n);
    p->inflight++;
    R.published += opt.target == T_STATUSGW && opt.bulk > 1 ? (uint64_t)opt.bulk : 1;
}

static void pub_fill(pub *p)
{
    while (publishing && p->bev && p->inflight < opt.pipeline) {
        if (opt.rate > 0) {
            double per = opt.bulk > 1 ? opt.bulk : 1;
            if (budget < per) return;
            budget -= per;
        }
        pub_send(p);
    }
    if (p->bev) flush_now(p->bev); /* every pipelined request in one write */
}

/* The value of header `name` (lower-case) in [h, end), or NULL. */
static const char *header(const char *h, const char *end, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = h; p && p + n < end; p = memchr(p, '\n', (size_t)(end - p))) {
        if (*p == '\n') p++;
        if (p + n <= end && strncasecmp(p, name, n) == 0) return p + n;
    }
    return NULL;
}

/* Responses parsed in place over one contiguous view, drained once. */
static void pub_read(struct bufferevent *bev, void *arg)
{
    pub *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t avail = evbuffer_get_length(in), off = 0;
    if (!avail) return;
    const char *buf = (const char *)evbuffer_pullup(in, -1);
    while (off < avail) {
        const char *h = buf + off, *end = buf + avail;
        const char *e = memmem(h, (size_t)(end - h), "\r\n\r\n", 4);
        if (!e) break;
        const char *cl = header(h, e, "content-length:");
        size_t blen = cl ? strtoul(cl, NULL, 10) : 0;
        const char *body = e + 4;
        if ((size_t)(end - body) < blen) break;
        int status = (int)strtol(h + 9, NULL, 10);
        off = (size_t)(body - buf) + blen;
        p->inflight--;
        uint64_t n = 1;
        if (opt.target == T_STATUSGW && opt.bulk > 1) {
            const char *a = memmem(body, blen, "\"accepted\":", 11);
            n = a ? strtoull(a + 11, NULL, 10) : 0;
            R.rejected += opt.bulk - n;
        }
        if (status >= 200 && status < 300) {
            R.acked += n;
            if (R.measuring) R.acked_in_window += n;
        } else {
            R.rejected += n;
        }
    }
    evbuffer_drain(in, off);
    pub_fill(p);
}

static struct bufferevent *dial(void *arg, bufferevent_data_cb rd, bufferevent_event_cb ev, const struct sockaddr_in *to);
static void pub_read(struct bufferevent *bev, void *arg);

static void pub_event(struct bufferevent *bev, short what, void *arg)
{
    pub *p = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pub_fill(p);
        return;
    }
    /* a server may end keep-alive connections (nginx's keepalive_requests):
     * requests in flight are lost, the publisher dials again */
    conn_free(bev);
    p->bev = NULL;
    p->inflight = 0;
    if (publishing) {
        p->bev = dial(p, pub_read, pub_event, &pub_addr);
    }
}

static void rate_tick(evutil_socket_t fd, short w, void *arg)
{
    static uint64_t last;
    uint64_t now = mono_ns();
    if (last) budget += opt.rate * (now - last) / 1e9;
    if (budget > opt.rate * 0.05 + 200) budget = opt.rate * 0.05 + 200; /* no bursts after stalls */
    last = now;
    for (int i = 0; i < opt.publishers; i++)
        pub_fill(&pubs[i]);
}

/* ---- phases ---- */

static struct event *tick_ev, *hb_ev, *phase_ev;
static int phase; /* 0 connecting, 1 warmup, 2 measuring, 3 draining */

static struct bufferevent *dial(void *arg, bufferevent_data_cb rd, bufferevent_event_cb ev, const struct sockaddr_in *to)
{
    struct bufferevent *b = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(b, NULL, on_drained, ev, arg);
    bufferevent_enable(b, EV_WRITE); /* for the connect */
    if (bufferevent_socket_connect(b, (const struct sockaddr *)to, sizeof(*to)) < 0) {
        bufferevent_free(b);
        return NULL;
    }
    evutil_socket_t fd = bufferevent_getfd(b);
    conn_io *io = fd >= 0 && fd < MAX_FD ? calloc(1, sizeof(*io)) : NULL;
    if (!io) {
        bufferevent_free(b);
        return NULL;
    }
    io->bev = b;
    io->rd = rd;
    io->evcb = ev;
    io->arg = arg;
    io->ev = event_new(base, fd, EV_READ | EV_PERSIST, io_readable, io);
    ios[fd] = io;
    /* bufferevent_socket freezes its input's end outside its own reads */
    evbuffer_unfreeze(bufferevent_get_input(b), 0);
    event_add(io->ev, NULL);
    return b;
}

/* ---- several processes ----
 *
 * With --procs N the generator forks N workers, each with every Nth
 * subscriber and publisher (so the conversations are spread the same way),
 * on whatever CPUs it was given. Workers connect, tell the parent, and
 * start publishing together when it says so; the parent adds up their
 * results and pools their latency samples. */

static int proc_index, proc_count = 1;
static int ready_fd = -1, go_fd = -1;
static struct event *go_ev;

static int mine(int i)
{
    return i % proc_count == proc_index;
}

typedef struct worker_result {
    int subs_connected, subs_failed, subs_closed;
    uint64_t published, acked, rejected, received, acked_in_window, received_in_window;
    uint64_t lat_max, nlat, cpu_us, t_start, t_end;
} worker_result;

static void start_publishers(void)
{
    publishing = 1;
    for (int i = 0; i < opt.publishers; i++) {
        pubs[i].id = i;
        if (mine(i)) pubs[i].bev = dial(&pubs[i], pub_read, pub_event, &pub_addr);
    }
    if (opt.rate > 0) {
        tick_ev = event_new(base, -1, EV_PERSIST, rate_tick, NULL);
        struct timeval tv = {0, 1000};
        event_add(tick_ev, &tv);
    }
}

static void set_phase_timer(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (time_t)s) * 1e6)};
    evtimer_add(phase_ev, &tv);
}

static uint64_t cpu_start_us;
static uint64_t cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static void on_phase(evutil_socket_t fd, short w, void *arg)
{
    if (phase == 0) { /* connecting: wait until every subscriber answered */
        static uint64_t started;
        if (!started) started = mono_ns();
        if (subs_pending > 0 && (mono_ns() - started) / 1e9 < opt.connect_timeout) {
            set_phase_timer(0.05);
            return;
        }
        if (ready_fd >= 0) { /* a worker: the parent says when all are connected */
            if (write(ready_fd, "r", 1) != 1) { /* the parent is gone */
            }
            close(ready_fd);
            ready_fd = -1;
            go_ev = event_new(base, go_fd, EV_READ, on_phase, NULL);
            event_add(go_ev, NULL);
            return;
        }
        if (go_fd >= 0) {
            char g;
            if (read(go_fd, &g, 1) != 1) { /* the parent is gone: go anyway */
            }
            close(go_fd);
            go_fd = -1;
        }
        phase = 1;
        if (opt.ready_file) {
            FILE *f = fopen(opt.ready_file, "w");
            if (f) {
                fprintf(f, "%d\n", R.subs_connected);
                fclose(f);
            }
        }
        start_publishers();
        set_phase_timer(opt.warmup);
    } else if (phase == 1) {
        phase = 2;
        R.measuring = 1;
        R.t_start = mono_ns();
        cpu_start_us = cpu_us();
        set_phase_timer(opt.duration);
    } else if (phase == 2) {
        phase = 3;
        R.t_end = mono_ns();
        R.measuring = 0;
        publishing = 0;
        set_phase_timer(1.0); /* let in-flight deliveries land */
    } else {
        event_base_loopexit(base, NULL);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!R.nlat) return 0;
    size_t i = (size_t)(p * (R.nlat - 1));
    return R.lat[i] / 1000.0;
}

static int merge_workers(int up[][2], int down[][2], pid_t *kids, char path[][64]);
static int report(uint64_t cpu, double secs);

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"target", 1, 0, 't'}, {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"subscribers", 1, 0, 's'},
        {"conversations", 1, 0, 'c'}, {"publishers", 1, 0, 'P'}, {"rate", 1, 0, 'r'}, {"bulk", 1, 0, 'b'},
        {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'}, {"pipeline", 1, 0, 'l'}, {"batch-join", 0, 0, 'B'},
        {"json", 1, 0, 'j'}, {"builder", 0, 0, 'U'}, {"metadata", 0, 0, 'M'}, {"procs", 1, 0, 'X'}, {"ready-file", 1, 0, 'R'}, {"label", 1, 0, 'L'}, {"connect-timeout", 1, 0, 'T'}, {"transport", 1, 0, 'x'}, {"publish-port", 1, 0, 'Q'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 't': opt.target = strcmp(optarg, "nchan") == 0 ? T_NCHAN : T_STATUSGW; break;
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'Q': opt.publish_port = atoi(optarg); break;
        case 's': opt.subscribers = atoi(optarg); break;
        case 'c': opt.conversations = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
        case 'P': opt.publishers = atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'b': opt.bulk = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'l': opt.pipeline = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
        case 'B': opt.batch_join = 1; break;
        case 'j': opt.json_path = optarg; break;
        case 'U': opt.builder = 1; break;
        case 'M': opt.metadata = 1; break;
        case 'X': opt.procs = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
        case 'R': opt.ready_file = optarg; break;
        case 'L': opt.label = optarg; break;
        case 'T': opt.connect_timeout = atof(optarg); break;
        case 'x':
            opt.transport = strcmp(optarg, "sse") == 0        ? X_SSE
                            : strcmp(optarg, "sse-multi") == 0 ? X_MULTI
                            : strcmp(optarg, "longpoll") == 0  ? X_LONGPOLL
                                                              : X_WS;
            break;
        default:
            fprintf(stderr, "usage: loadgen [--target statusgw|nchan] [--port N] [--publish-port N] [--subscribers N] "
                            "[--conversations N] [--publishers N] [--rate N] [--bulk N] [--pipeline N] "
                            "[--duration S] [--warmup S] [--batch-join] [--builder | --metadata] [--procs N] [--json FILE] [--label L] "
                            "[--transport websocket|sse|sse-multi|longpoll]\n");
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int up[64][2], down[64][2];
    pid_t kids[64];
    char result_path[64][64];
    if (opt.procs > 64) opt.procs = 64;
    if (opt.procs > 1) {
        proc_count = opt.procs;
        for (int k = 0; k < proc_count; k++) {
            snprintf(result_path[k], sizeof(result_path[k]), "/tmp/loadgen.%d.%d", (int)getpid(), k);
            if (pipe(up[k]) < 0 || pipe(down[k]) < 0) {
                perror("loadgen: pipe");
                return 2;
            }
            kids[k] = fork();
            if (kids[k] < 0) {
                perror("loadgen: fork");
                return 2;
            }
            if (kids[k] == 0) {
                proc_index = k;
                ready_fd = up[k][1];
                go_fd = down[k][0];
                close(up[k][0]);
                close(down[k][1]);
                break;
            }
            close(up[k][1]);
            close(down[k][0]);
        }
        if (ready_fd < 0) /* the parent */
            return merge_workers(up, down, kids, result_path);
        /* a worker takes its share of the offered rate */
        int own = 0;
        for (int i = 0; i < opt.publishers; i++)
            own += mine(i);
        opt.rate = opt.publishers ? opt.rate * own / opt.publishers : 0;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt.port);
    inet_pton(AF_INET, opt.host, &addr.sin_addr);
    pub_addr = addr;
    if (opt.publish_port) pub_addr.sin_port = htons(opt.publish_port);
    base = event_base_new();
    R.caplat = 1000000;
    R.lat = malloc(sizeof(uint64_t) * R.caplat);
    subs = calloc(opt.subscribers + 1, sizeof(sub));
    pubs = calloc(opt.publishers + 1, sizeof(pub));
    for (int i = 0; i < opt.subscribers; i++) {
        if (!mine(i)) continue;
        subs_pending++;
        subs[i].conv = i % opt.conversations;
        subs[i].bev = dial(&subs[i], sub_read, sub_event, &addr);
        if (!subs[i].bev) { R.subs_failed++; subs_pending--; }
    }
    hb_ev = event_new(base, -1, EV_PERSIST, heartbeat, NULL);
    struct timeval hb = {20, 0};
    event_add(hb_ev, &hb);
    phase_ev = evtimer_new(base, on_phase, NULL);
    set_phase_timer(0.01);
    uint64_t cpu0 = cpu_us();
    (void)cpu0;
    event_base_dispatch(base);

    uint64_t cpu = cpu_us() - cpu_start_us;
    if (proc_count > 1) { /* a worker: the parent reports */
        char path[64];
        snprintf(path, sizeof(path), "/tmp/loadgen.%d.%d", (int)getppid(), proc_index);
        FILE *f = fopen(path, "wb");
        worker_result w = {R.subs_connected, R.subs_failed, R.subs_closed, R.published, R.acked,
                           R.rejected, R.received, R.acked_in_window, R.received_in_window,
                           R.lat_max, R.nlat, cpu, R.t_start, R.t_end};
        if (f) {
            fwrite(&w, sizeof(w), 1, f);
            fwrite(R.lat, sizeof(uint64_t), R.nlat, f);
            fclose(f);
        }
        return 0;
    }
    return report(cpu, (R.t_end - R.t_start) / 1e9);
}

/* The parent of --procs workers: start them together, add up their results. */
static int merge_workers(int up[][2], int down[][2], pid_t *kids, char path[][64])
{
    for (int k = 0; k < proc_count; k++) {
        char r;
        if (read(up[k][0], &r, 1) != 1) { /* a worker died while connecting */
        }
    }
    for (int k = 0; k < proc_count; k++) {
        if (write(down[k][1], "g", 1) != 1) {
        }
        close(down[k][1]);
        close(up[k][0]);
    }
    uint64_t cpu_max = 0;
    double secs = 0;
    R.caplat = 0;
    for (int k = 0; k < proc_count; k++) {
        int st;
        waitpid(kids[k], &st, 0);
        FILE *f = fopen(path[k], "rb");
        worker_result w;
        if (!f || fread(&w, sizeof(w), 1, f) != 1) {
            fprintf(stderr, "loadgen: worker %d left no result\n", k);
            if (f) fclose(f);
            R.subs_failed++;
            continue;
        }
        uint64_t *lat = realloc(R.lat, sizeof(uint64_t) * (R.nlat + w.nlat + 1));
        if (lat) {
            R.lat = lat;
            R.nlat += fread(R.lat + R.nlat, sizeof(uint64_t), w.nlat, f);
        }
        fclose(f);
        unlink(path[k]);
        R.subs_connected += w.subs_connected;
        R.subs_failed += w.subs_failed;
        R.subs_closed += w.subs_closed;
        R.published += w.published;
        R.acked += w.acked;
        R.rejected += w.rejected;
        R.received += w.received;
        R.acked_in_window += w.acked_in_window;
        R.received_in_window += w.received_in_window;
        if (w.lat_max > R.lat_max) R.lat_max = w.lat_max;
        if (w.cpu_us > cpu_max) cpu_max = w.cpu_us;
        double ws = (w.t_end - w.t_start) / 1e9;
        if (ws > secs) secs = ws;
    }
    /* the busiest worker decides whether the generator was the bottleneck */
    return report(cpu_max, secs);
}

static int report(uint64_t cpu, double secs)
{
    qsort(R.lat, R.nlat, sizeof(uint64_t), cmp_u64);
    /* on sse-multi every subscriber follows every conversation (up to 64) */
    int per_conv_subs = opt.target == T_STATUSGW && opt.transport == X_MULTI
                            ? (opt.conversations <= 64 ? opt.subscribers : opt.subscribers * 64 / opt.conversations)
                            : opt.subscribers / opt.conversations;
    double expected = (double)R.acked * per_conv_subs;
    double loss = expected > 0 ? 1.0 - (double)R.received / expected : 0;
    if (loss < 0) loss = 0;
    double busy = secs > 0 ? cpu / 1e6 / secs : 0;
    printf("%-28s %s\n", "target", opt.target == T_NCHAN ? "nchan" : "statusgw");
    printf("%-28s %d connected, %d failed, %d closed\n", "subscribers", R.subs_connected, R.subs_failed, R.subs_closed);
    printf("%-28s %llu acked, %llu rejected (%.0f/s in window)\n", "publishes",
           (unsigned long long)R.acked, (unsigned long long)R.rejected, secs > 0 ? R.acked_in_window / secs : 0);
    printf("%-28s %llu of %.0f expected (loss %.4f%%)\n", "deliveries", (unsigned long long)R.received, expected, loss * 100);
    printf("%-28s %.0f/s\n", "deliveries in window", secs > 0 ? R.received_in_window / secs : 0);
    printf("%-28s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", "latency ms", pct(0.5), pct(0.9), pct(0.99), R.lat_max / 1000.0);
    printf("%-28s %.2f cores%s\n", "loadgen cpu", busy, busy > 0.9 ? "  (loadgen is the bottleneck: give it more CPUs and --procs)" : "");
    if (opt.json_path) {
        FILE *f = strcmp(opt.json_path, "-") == 0 ? stdout : fopen(opt.json_path, "w");
        if (f) {
            fprintf(f, "{\"label\":\"%s\",\"target\":\"%s\",\"subscribers_connected\":%d,\"subscribers_failed\":%d,"
                       "\"subscribers_closed\":%d,\"published\":%llu,\"acked\":%llu,\"rejected\":%llu,"
                       "\"publishes_per_s\":%.1f,\"expected\":%.0f,\"received\":%llu,\"loss\":%.6f,"
                       "\"deliveries_per_s\":%.1f,\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
                       "\"loadgen_cpu_cores\":%.3f,\"window_s\":%.3f}\n",
                    opt.label, opt.target == T_NCHAN ? "nchan" : "statusgw", R.subs_connected, R.subs_failed,
                    R.subs_closed, (unsigned long long)R.published, (unsigned long long)R.acked,
                    (unsigned long long)R.rejected, secs > 0 ? R.acked_in_window / secs : 0, expected,
                    (unsigned long long)R.received, loss, secs > 0 ? R.received_in_window / secs : 0, pct(0.5),
                    pct(0.9), pct(0.99), R.lat_max / 1000.0, busy, secs);
            if (f != stdout) fclose(f);
        }
    }
    return R.subs_failed > 0 ? 1 : 0;
}
