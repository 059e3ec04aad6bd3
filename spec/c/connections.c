/* Unit tests of the connection layer and the emit queue, with a real
 * server struct, real bufferevents and a socket pair per client, but no
 * listener and no routes: each test gives the server a request handler of
 * its own. What they aim at is what a daemon-level spec cannot see: the
 * WebSocket layer's reassembly of fragmented messages (with control frames
 * in between), the HTTP reader's pause when a pipelining client does not
 * read, and the emit queue's cap and per-turn quota. TAP output, like
 * spec/c/internals.c. */
#include "config.h"
#include "http.h"
#include "hub.h"
#include "ingest.h"
#include "log.h"
#include "plugin.h"
#include "security.h"
#include "server.h"
#include "status.h"
#include "store.h"
#include "webhook.h"
#include "ws.h"

#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tap.h"

static sg_config cfg;
static sg_server srv;
static char plugins_dir[] = "/tmp/statusgw-c-XXXXXX";

static void server_up(void)
{
    char err[512];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    free(cfg.plugins_dir);
    cfg.plugins_dir = strdup(mkdtemp(plugins_dir));
    sg_categories_init(&cfg, err, sizeof(err));
    memset(&srv, 0, sizeof(srv));
    srv.cfg = &cfg;
    srv.security = sg_security_new(&cfg, err, sizeof(err));
    srv.base = event_base_new();
    srv.store = sg_store_memory_new(cfg.history_size);
    srv.hub = sg_hub_new(srv.base, &cfg, srv.store);
    srv.plugins = sg_plugins_new(cfg.plugins_dir, &cfg, srv.base, sg_ingest_emit, &srv);
    if (!srv.security || !srv.hub || !srv.plugins || sg_ingest_init(&srv) < 0) abort();
    json_decref(sg_plugins_reload(srv.plugins));
    srv.webhooks = sg_webhooks_new(srv.base, &cfg, srv.plugins, NULL, err, sizeof(err));
    if (!srv.webhooks) abort();
}

static void server_down(void)
{
    for (sg_conn *c = srv.conns; c; c = c->next)
        sg_conn_kill(c);
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    sg_server_stop(&srv);
    sg_webhooks_free(srv.webhooks);
    sg_ingest_free(&srv);
    sg_plugins_free(srv.plugins);
    sg_hub_free(srv.hub);
    srv.store->ops->free(srv.store);
    sg_security_free(srv.security);
    event_base_free(srv.base);
    sg_categories_free();
    rmdir(cfg.plugins_dir);
    sg_config_free(&cfg);
}

/* A client: the test's end of a socket pair whose other end the server
 * adopted. */
static int client(int sndbuf)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) abort();
    if (sndbuf) {
        setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    }
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    sg_http_accept(&srv, sv[1], (struct sockaddr *)&sa, sizeof(sa));
    return sv[0];
}

static void turn(int n)
{
    for (int i = 0; i < n; i++)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
}

static void send_all(int fd, const void *p, size_t n)
{
    size_t off = 0;
    for (int spins = 0; off < n && spins < 100000; spins++) {
        ssize_t w = write(fd, (const char *)p + off, n - off);
        if (w > 0) off += (size_t)w;
        turn(1);
    }
}

/* Read what is there after a few turns, into buf (NUL-terminated). */
static size_t drain(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    for (int i = 0; i < 20; i++) {
        turn(1);
        ssize_t r;
        while (got + 1 < cap && (r = read(fd, buf + got, cap - 1 - got)) > 0)
            got += (size_t)r;
    }
    buf[got] = 0;
    return got;
}

/* ---- WebSocket: fragments reassembled, control frames in between ---- */

typedef struct ws_seen {
    int messages;
    char last[70000];
    size_t last_len;
    int closed;
} ws_seen;

static ws_seen seen;

static void *t_accept(sg_ws *ws, sg_conn *c, sg_req *r, sg_error *err)
{
    return &seen;
}

static void t_on_text(void *state, const char *msg, size_t len)
{
    ws_seen *s = state;
    s->messages++;
    memcpy(s->last, msg, len < sizeof(s->last) ? len : sizeof(s->last));
    s->last_len = len;
}

static void t_on_close(void *state)
{
    ((ws_seen *)state)->closed++;
}

static const sg_ws_handler t_ws = {NULL, t_accept, t_on_text, t_on_close};

static void route_ws(sg_conn *c, sg_req *r)
{
    sg_ws_upgrade(c, r, &t_ws);
}

/* A client frame, masked. */
static size_t frame(uint8_t *out, int fin, int opcode, const char *payload, size_t n)
{
    size_t k = 0;
    out[k++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (n < 126) {
        out[k++] = (uint8_t)(0x80 | n);
    } else {
        out[k++] = 0x80 | 126;
        out[k++] = (uint8_t)(n >> 8);
        out[k++] = (uint8_t)n;
    }
    static const uint8_t mask[4] = {1, 2, 3, 4};
    memcpy(out + k, mask, 4);
    k += 4;
    for (size_t i = 0; i < n; i++)
        out[k + i] = (uint8_t)payload[i] ^ mask[i % 4];
    return k + n;
}

static int ws_open(void)
{
    int fd = client(0);
    static const char req[] = "GET /socket/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    send_all(fd, req, sizeof(req) - 1);
    char buf[4096];
    drain(fd, buf, sizeof(buf));
    CHECK(strncmp(buf, "HTTP/1.1 101", 12) == 0);
    return fd;
}

static void ws_reassembly(void)
{
    srv.handle = route_ws;
    memset(&seen, 0, sizeof(seen));
    int fd = ws_open();
    uint8_t buf[70000];
    size_t n = 0;
    /* "hello, " + ping + "frag" + "mented" (fin), then a whole one */
    n += frame(buf + n, 0, 1, "hello, ", 7);
    n += frame(buf + n, 1, 9, "p", 1);
    n += frame(buf + n, 0, 0, "frag", 4);
    n += frame(buf + n, 1, 0, "mented", 6);
    n += frame(buf + n, 1, 1, "whole", 5);
    /* byte by byte: frames split at every boundary */
    for (size_t i = 0; i < n; i++)
        send_all(fd, buf + i, 1);
    char out[4096];
    size_t got = drain(fd, out, sizeof(out));
    CHECK(seen.messages == 2);
    CHECK(seen.last_len == 5 && memcmp(seen.last, "whole", 5) == 0);
    /* the ping was answered with a pong carrying its payload */
    CHECK(got >= 3 && (uint8_t)out[0] == 0x8A && out[1] == 1 && out[2] == 'p');
    /* a long message in three fragments of 30,000 bytes */
    static char big[30000];
    memset(big, 'x', sizeof(big));
    seen.messages = 0;
    n = frame(buf, 0, 1, big, 20000);
    send_all(fd, buf, n);
    n = frame(buf, 0, 0, big, 20000);
    send_all(fd, buf, n);
    n = frame(buf, 1, 0, big, 20000);
    send_all(fd, buf, n);
    drain(fd, out, sizeof(out));
    /* over ws_max_message_bytes (65536: 60,000 is under it) */
    CHECK(seen.messages == 1 && seen.last_len == 60000);
    /* a fragmented message that grows past the limit is refused with 1009 */
    seen.messages = 0;
    for (int i = 0; i < 4; i++) {
        n = frame(buf, 0, i ? 0 : 1, big, 20000);
        send_all(fd, buf, n);
    }
    got = drain(fd, out, sizeof(out));
    CHECK(seen.messages == 0);
    CHECK(got >= 4 && (uint8_t)out[0] == 0x88 && (((uint8_t)out[2] << 8) | (uint8_t)out[3]) == 1009);
    close(fd);
    turn(5);
    CHECK(seen.closed == 1);
}

/* ---- HTTP: a pipelining client that does not read is paused ---- */

static int answered;
static char big_body[256 * 1024];

static void route_big(sg_conn *c, sg_req *r)
{
    answered++;
    sg_http_respond(c, 200, "text/plain", big_body, sizeof(big_body), NULL);
}

static void http_pause(void)
{
    srv.handle = route_big;
    answered = 0;
    memset(big_body, 'b', sizeof(big_body));
    int fd = client(65536);
    static const char req[] = "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    enum { N = 40 }; /* 10 MB of answers, the output cap is 1 MiB */
    char reqs[N * sizeof(req)];
    size_t n = 0;
    for (int i = 0; i < N; i++) {
        memcpy(reqs + n, req, sizeof(req) - 1);
        n += sizeof(req) - 1;
    }
    send_all(fd, reqs, n);
    turn(50);
    /* the client reads nothing: the reader stopped near the cap */
    CHECK(answered > 0 && answered < N);
    CHECK(srv.conns && srv.conns->read_paused);
    int paused_at = answered;
    turn(50);
    CHECK(answered == paused_at); /* and stays stopped */
    /* the client reads: every answer comes, in full */
    static char sink[1 << 16];
    size_t total = 0;
    for (int spins = 0; spins < 200000 && total < (size_t)N * sizeof(big_body); spins++) {
        ssize_t r = read(fd, sink, sizeof(sink));
        if (r > 0) total += (size_t)r;
        else turn(1);
    }
    CHECK(answered == N);
    CHECK(total > (size_t)N * sizeof(big_body)); /* the bodies and their heads */
    close(fd);
    turn(5);
}

/* ---- the emit queue: a cap, and a quota per loop turn ---- */

static void emit_cap(void)
{
    char err[200];
    json_t *u = json_pack("{s:s, s:s, s:s}", "conversation_id", "emit-c", "category", "info", "text", "e");
    int ok = 0;
    for (int i = 0; i < SG_DEFAULT_EMIT_QUEUE; i++)
        ok += sg_ingest_emit(&srv, u, "test", err, sizeof(err)) == 0;
    CHECK(ok == SG_DEFAULT_EMIT_QUEUE);
    CHECK(sg_ingest_emit(&srv, u, "test", err, sizeof(err)) < 0);
    CHECK(strstr(err, "waiting; slow down") != NULL);
    /* one turn publishes SG_EMIT_PER_TURN of them, no more */
    uint64_t before = sg_hub_get_stats(srv.hub)->published;
    event_base_loop(srv.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    uint64_t one = sg_hub_get_stats(srv.hub)->published - before;
    CHECK(one == SG_EMIT_PER_TURN);
    /* and the rest in later turns: all of them, once */
    for (int i = 0; i < 200 && sg_hub_get_stats(srv.hub)->published - before < SG_DEFAULT_EMIT_QUEUE; i++)
        event_base_loop(srv.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    CHECK(sg_hub_get_stats(srv.hub)->published - before == SG_DEFAULT_EMIT_QUEUE);
    /* room again */
    CHECK(sg_ingest_emit(&srv, u, "test", err, sizeof(err)) == 0);
    turn(3);
    json_decref(u);
}

int main(void)
{
    sg_log_level = SG_LOG_ERROR + 1;
    signal(SIGPIPE, SIG_IGN);
    server_up();
    run("websocket: fragments reassembled byte by byte, pings answered between them, 1009 past the limit", ws_reassembly);
    run("http: a pipelining client that does not read pauses the reader at the output cap, then gets every answer", http_pause);
    run("emit: the queue refuses past its cap and publishes SG_EMIT_PER_TURN a turn, every one once", emit_cap);
    server_down();
    printf("1..%d\n", n_tests);
    return n_failed ? 1 : 0;
}
