/* libFuzzer targets for every parser that sees untrusted bytes. One source,
 * one binary per target (FUZZ_TARGET selects it at compile time):
 *
 *   http      the bytes a client sends on a connection, as they are: request
 *             lines, headers, chunked bodies, publishes, bulk requests,
 *             history and event-stream requests, upgrades
 *   ws        WebSocket frames after a good upgrade: the frame reader, the
 *             Phoenix message decoder, joins, filters, category changes
 *   sse       a Last-Event-ID (and categories) on an event-stream request, of
 *             one conversation and of several
 *   publish   the publish scanner (sg_draft_parse) and the JSON text scanner
 *   jwt       a subscriber token against a configured secret
 *   luajson   the Lua <-> JSON bridges in a plugin sandbox: JSON text into
 *             Lua values and back, to jansson and back
 *   redis     the Redis engine's Pub/Sub message (sg_redis_parse_message),
 *             and the update it becomes
 *
 * The connection targets run the real daemon in process: a server with the
 * hub, the memory store, the plugin host (with the shipped builders), the
 * security layer and webhooks, fed through a socket pair as a real client
 * would, the event loop turned until the gateway is done with the input. */
#include "api.h"
#include "config.h"
#include "http.h"
#include "hub.h"
#include "ingest.h"
#include "filter.h"
#include "hostapi.h"
#include "jtext.h"
#include "log.h"
#include "luajson.h"
#include "plugin.h"
#include "sandbox.h"
#include "security.h"
#include "status.h"
#include "store.h"
#include "webhook.h"

#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define T_HTTP 1
#define T_WS 2
#define T_SSE 3
#define T_PUBLISH 4
#define T_JWT 5
#define T_LUAJSON 6
#define T_REDIS 7

#ifndef FUZZ_TARGET
#error "compile with -DFUZZ_TARGET=T_HTTP (or another target)"
#endif

static sg_config cfg;
static sg_server srv;
static sg_security *jwt_sec;
static sg_sandbox *sb;

static const char JWT_SECRET[] = "fuzz-jwt-secret-0123456789abcdef0123456789";

static void setup_server(void)
{
    char err[512];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    cfg.flush_ms = 1;
    cfg.batch_size = 4;
    cfg.max_conversations = 64;
    cfg.history_size = 16;
    cfg.max_body = 65536;
    cfg.max_bulk_items = 64;
    cfg.ws_max_message = 16384;
    cfg.output_cap = 1 << 20;
    free(cfg.plugins_dir);
    const char *pd = getenv("FUZZ_PLUGINS_DIR");
    cfg.plugins_dir = strdup(pd ? pd : "plugins");
    sg_categories_init(&cfg, err, sizeof(err));
    srv.cfg = &cfg;
    srv.handle = sg_api_handle;
    srv.security = sg_security_new(&cfg, err, sizeof(err));
    srv.base = event_base_new();
    srv.store = sg_store_memory_new(cfg.history_size);
    srv.hub = sg_hub_new(srv.base, &cfg, srv.store);
    srv.plugins = sg_plugins_new(cfg.plugins_dir, &cfg, srv.base, sg_ingest_emit, &srv);
    if (!srv.security || !srv.hub || !srv.plugins || sg_ingest_init(&srv) < 0) abort();
    sg_filter_set_plugins(srv.plugins);
    json_decref(sg_plugins_reload(srv.plugins));
    srv.webhooks = sg_webhooks_new(srv.base, &cfg, srv.plugins, NULL, err, sizeof(err));
    if (!srv.webhooks) abort();
}

/* Feed one client's bytes to the gateway over a socket pair and turn the
 * loop until the connection is gone or nothing more happens. */
static void run_connection(const uint8_t *prefix, size_t pn, const uint8_t *data, size_t n,
                           const uint8_t *suffix, size_t sn)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) abort();
    int big = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    sg_http_accept(&srv, sv[1], (struct sockaddr *)&sa, sizeof(sa));
    const uint8_t *parts[3] = {prefix, data, suffix};
    size_t lens[3] = {pn, n, sn};
    char sink[65536];
    for (int k = 0; k < 3; k++) {
        size_t off = 0;
        for (int spins = 0; off < lens[k] && spins < 1000; spins++) {
            ssize_t w = write(sv[0], parts[k] + off, lens[k] - off);
            if (w > 0) off += (size_t)w;
            event_base_loop(srv.base, EVLOOP_NONBLOCK);
            while (read(sv[0], sink, sizeof(sink)) > 0) {
            }
            if (w < 0 && srv.n_conns == 0) break; /* the gateway closed it */
        }
    }
    shutdown(sv[0], SHUT_WR);
    for (int i = 0; i < 20 && srv.n_conns > 0; i++) {
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        while (read(sv[0], sink, sizeof(sink)) > 0) {
        }
    }
    close(sv[0]);
    for (int i = 0; i < 50 && srv.n_conns > 0; i++)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    /* anything still open (an SSE stream, a socket waiting on its linger)
     * goes now, so every input starts from the same state */
    for (sg_conn *c = srv.conns; c; c = c->next)
        sg_conn_kill(c);
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    sg_log_level = SG_LOG_ERROR + 1; /* quiet */
    signal(SIGPIPE, SIG_IGN);       /* the gateway may close before the input is written */
#if FUZZ_TARGET == T_HTTP || FUZZ_TARGET == T_WS || FUZZ_TARGET == T_SSE
    setup_server();
#elif FUZZ_TARGET == T_JWT
    char err[512];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    cfg.security = json_pack("{s:s}", "jwt_secret", JWT_SECRET);
    jwt_sec = sg_security_new(&cfg, err, sizeof(err));
    if (!jwt_sec) abort();
#elif FUZZ_TARGET == T_REDIS
    char err[512];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    sg_categories_init(&cfg, err, sizeof(err));
#elif FUZZ_TARGET == T_PUBLISH || FUZZ_TARGET == T_LUAJSON
    char err[512];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    sg_categories_init(&cfg, err, sizeof(err));
    sg_sandbox_limits lim = {8 << 20, 1000000, 50};
    sb = sg_sandbox_new("fuzz", &lim);
    if (!sb || sg_host_open(sg_sandbox_state(sb), "fuzz", NULL, NULL) < 0) abort();
#endif
    return 0;
}

#if FUZZ_TARGET == T_WS
static const char WS_UPGRADE[] = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n";
#endif
#if FUZZ_TARGET == T_SSE
static const char SSE_HEAD[] = "GET /api/v1/conversations/fuzz/events?categories=tool,info HTTP/1.1\r\n"
                               "Host: 127.0.0.1\r\nLast-Event-ID: ";
static const char SSE_TAIL[] = "\r\n\r\n";
/* the same id on a stream of several conversations (each "<conv>=<epoch>:<seq>") */
static const char MULTI_HEAD[] = "GET /api/v1/events?conversations=fuzz,other&categories=tool,info HTTP/1.1\r\n"
                                 "Host: 127.0.0.1\r\nLast-Event-ID: ";
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
#if FUZZ_TARGET == T_HTTP
    run_connection(NULL, 0, data, n, NULL, 0);
#elif FUZZ_TARGET == T_WS
    run_connection((const uint8_t *)WS_UPGRADE, sizeof(WS_UPGRADE) - 1, data, n, NULL, 0);
#elif FUZZ_TARGET == T_SSE
    /* a header value is one line: the input up to its first CR or LF */
    size_t k = 0;
    while (k < n && data[k] != '\r' && data[k] != '\n')
        k++;
    /* a few updates first, so a resume has history to replay */
    static int seeded;
    if (!seeded) {
        for (int i = 0; i < 20; i++) {
            sg_draft d;
            sg_error e;
            sg_limits lim = {cfg.max_text, cfg.max_metadata};
            const char *u = "{\"conversation_id\":\"fuzz\",\"category\":\"tool\",\"text\":\"x\"}";
            if (sg_draft_parse(u, strlen(u), &lim, &d, &e) == 0) {
                sg_publish_result r;
                sg_hub_publish(srv.hub, &d, &r, &e);
                sg_draft_free(&d);
            }
        }
        seeded = 1;
    }
    run_connection((const uint8_t *)SSE_HEAD, sizeof(SSE_HEAD) - 1, data, k, (const uint8_t *)SSE_TAIL,
                   sizeof(SSE_TAIL) - 1);
    run_connection((const uint8_t *)MULTI_HEAD, sizeof(MULTI_HEAD) - 1, data, k, (const uint8_t *)SSE_TAIL,
                   sizeof(SSE_TAIL) - 1);
#elif FUZZ_TARGET == T_PUBLISH
    sg_limits lim = {4096, 65536};
    sg_draft d;
    sg_error e;
    if (sg_draft_parse((const char *)data, n, &lim, &d, &e) == 0) {
        /* an accepted update becomes the delivered form */
        sg_update *u = sg_update_new(&d, 1, 1700000000000LL);
        sg_update_unref(u);
        sg_draft_free(&d);
    }
    char *out = malloc(n + 1);
    sg_jtext j;
    sg_jtext_init(&j, (const char *)data, n, out);
    sg_jtext_ws(&j);
    if (sg_jtext_value(&j) == 0 && (size_t)(j.o - out) > n) abort(); /* never longer than the input */
    free(out);
#elif FUZZ_TARGET == T_JWT
    char *tok = malloc(n + 1);
    memcpy(tok, data, n);
    tok[n] = 0;
    sg_claims c;
    sg_error e;
    if (sg_security_subscriber(jwt_sec, tok, &c, &e) == 0) {
        sg_claims_allow(&c, "conv-1");
        sg_claims_allow(&c, "*");
        sg_claims_clear(&c);
    }
    free(tok);
#elif FUZZ_TARGET == T_LUAJSON
    lua_State *L = sg_sandbox_state(sb);
    char *canon = malloc(n + 1);
    sg_jtext j;
    sg_jtext_init(&j, (const char *)data, n, canon);
    sg_jtext_ws(&j);
    if (sg_jtext_value(&j) == 0) {
        size_t cn = (size_t)(j.o - canon);
        sg_lua_push_json_text(L, canon, cn);
        char err[200];
        size_t len;
        char *back = sg_lua_to_json_text(L, -1, &len, err, sizeof(err));
        json_t *tree = sg_lua_to_json(L, -1, err, sizeof(err));
        if (tree) {
            sg_lua_push_json(L, tree);
            lua_pop(L, 1);
        }
        json_decref(tree);
        free(back);
        lua_pop(L, 1);
    }
    free(canon);
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT);
#elif FUZZ_TARGET == T_REDIS
    sg_redis_msg m;
    if (sg_redis_parse_message((const char *)data, n, &m) == 0) {
        /* the fields lie inside the message, the update is what it carries */
        if (m.cat < (const char *)data || m.json + m.json_len != (const char *)data + n || m.seq == 0) abort();
        int ci = sg_category_index(m.cat, m.cat_len);
        sg_update *u = sg_update_stored(ci < 0 ? 0 : ci, m.seq, strtoll(m.ts, NULL, 10), m.json, m.json_len);
        if (u && (u->json_len != m.json_len || memcmp(u->json, m.json, m.json_len) != 0)) abort();
        sg_update_unref(u);
    }
#endif
    return 0;
}
