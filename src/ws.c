#include "ws.h"

#include "hub.h"
#include "log.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_CLOSE_GRACE_S 5 /* a peer gets this long to take the close frame */

struct sg_ws {
    sg_conn *conn;
    wslay_event_context_ptr ctx;
    const sg_ws_handler *h;
    void *state; /* the handler's */
    int close_sent; /* a close frame is out: nothing more may be written */
    size_t feed;        /* bytes of whole frames wslay may take now */
    int in_fragmented;  /* a message continues in frames still to come */
    uint64_t frag_len;  /* payload bytes of the fragmented message so far, as announced */
};

size_t sg_ws_text_header(uint8_t *h, size_t len)
{
    h[0] = 0x81; /* FIN, text */
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static int writable(const sg_ws *ws)
{
    return !ws->close_sent && !ws->conn->closing && !ws->conn->killed;
}

int sg_ws_send_text(sg_ws *ws, const char *data, size_t len)
{
    if (!writable(ws)) return -1;
    uint8_t h[10];
    size_t hl = sg_ws_text_header(h, len);
    struct evbuffer *out = bufferevent_get_output(ws->conn->bev);
    /* room first: a header without its payload would corrupt the stream */
    if (evbuffer_expand(out, hl + len) < 0) {
        sg_ws_close(ws, SG_WS_CLOSE_INTERNAL, "out of memory");
        return -1;
    }
    evbuffer_add(out, h, hl);
    evbuffer_add(out, data, len);
    sg_conn_kick(ws->conn);
    return 0;
}

int sg_ws_send_shared(sg_ws *ws, sg_blob *b)
{
    if (!writable(ws)) return -1;
    sg_conn *c = ws->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t unsent = evbuffer_get_length(out);
    if (unsent + b->len > c->srv->cfg->output_cap) {
        c->srv->net.slow_consumers++;
        sg_log(SG_LOG_WARN, "slow_consumer", "transport=websocket peer=%s unsent=%zu", c->peer,
               unsent);
        sg_ws_close(ws, SG_WS_CLOSE_SLOW_CONSUMER, "slow consumer");
        return -1;
    }
    if (sg_blob_append(out, b) < 0) {
        sg_ws_close(ws, SG_WS_CLOSE_INTERNAL, "out of memory");
        return -1;
    }
    sg_conn_deliver(c);
    return 0;
}

void sg_ws_close(sg_ws *ws, int code, const char *reason)
{
    if (!writable(ws)) return;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123) rl = 123;
    uint8_t f[4 + 123];
    f[0] = 0x88; /* FIN, close */
    f[1] = (uint8_t)(2 + rl);
    f[2] = (uint8_t)(code >> 8);
    f[3] = (uint8_t)code;
    memcpy(f + 4, reason, rl);
    evbuffer_add(bufferevent_get_output(ws->conn->bev), f, 4 + rl);
    ws->close_sent = 1;
    if (ws->ctx) {
        wslay_event_shutdown_read(ws->ctx);
        wslay_event_shutdown_write(ws->ctx);
    }
    struct timeval grace = {WS_CLOSE_GRACE_S, 0};
    bufferevent_set_timeouts(ws->conn->bev, NULL, &grace);
    sg_conn_linger_close(ws->conn, WS_CLOSE_GRACE_S);
}

/* ---- wslay callbacks ---- */

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *arg)
{
    sg_ws *ws = arg;
    if (len > ws->feed) len = ws->feed;
    int n = len ? evbuffer_remove(bufferevent_get_input(ws->conn->bev), buf, len) : 0;
    if (n > 0) ws->feed -= (size_t)n;
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

/* wslay writes pongs and close echoes here; every byte is taken at once,
 * so its frames are always whole and shared frames can sit between them. */
static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *arg)
{
    sg_ws *ws = arg;
    if (!ws->close_sent) evbuffer_add(bufferevent_get_output(ws->conn->bev), data, len);
    return (ssize_t)len;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                   void *arg)
{
    sg_ws *ws = arg;
    if (m->opcode == WSLAY_TEXT_FRAME) {
        if (ws->state) ws->h->on_text(ws->state, (const char *)m->msg, m->msg_length);
    } else if (m->opcode == WSLAY_BINARY_FRAME) {
        sg_ws_close(ws, SG_WS_CLOSE_UNSUPPORTED, "binary messages are not supported");
    }
    /* pings are answered by wslay; closes are echoed by wslay */
}

static const struct wslay_event_callbacks wslay_cbs = {on_recv, on_send, NULL, NULL, NULL, NULL,
                                                       on_msg};

/* How many bytes at the start of in form whole frames, following whether a
 * fragmented message is left open. A frame is judged by its header: one
 * announcing more than the message limit (alone, or with the fragments
 * before it) is refused there with 1009, before its bytes arrive, and a
 * close frame with a one-byte payload with 1002. Returns 0 then, with the
 * close under way (ws->close_sent). */
static size_t whole_frames(sg_ws *ws, struct evbuffer *in)
{
    size_t max = ws->conn->srv->cfg->ws_max_message;
    /* a whole frame is at most the message limit plus its header */
    size_t look = max + 14;
    size_t avail = evbuffer_get_length(in), off = 0;
    size_t seen = avail < look ? avail : look;
    const uint8_t *b = evbuffer_pullup(in, (ev_ssize_t)seen);
    int open = ws->in_fragmented;
    uint64_t frag = ws->frag_len;
    while (seen - off >= 2) {
        const uint8_t *h = b + off;
        size_t hl = 2;
        uint64_t len = h[1] & 0x7f;
        if (len == 126) {
            if (seen - off < 4) break;
            len = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (len == 127) {
            if (seen - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | h[2 + i];
            hl = 10;
        }
        if (h[1] & 0x80) hl += 4;
        int op = h[0] & 0x0f, fin = h[0] & 0x80;
        int data = op == 0 || op == 1 || op == 2;
        if (!data && len > 125) { /* control frames carry 125 bytes at most (RFC 6455 5.5) */
            sg_ws_close(ws, SG_WS_CLOSE_PROTOCOL, "a control frame's payload is over 125 bytes");
            return 0;
        }
        if (data && (len > max || (op == 0 && frag + len > max))) {
            sg_log(SG_LOG_INFO, "websocket_message_too_big", "peer=%s announced=%llu limit=%zu",
                   ws->conn->peer, (unsigned long long)(op == 0 ? frag + len : len), max);
            sg_ws_close(ws, SG_WS_CLOSE_TOO_BIG, "message too big");
            return 0;
        }
        if (op == 8 && len == 1) {
            sg_ws_close(ws, SG_WS_CLOSE_PROTOCOL, "a close frame's payload is empty or at least 2 bytes");
            return 0;
        }
        if (seen - off < hl + len) break;
        if (data) {
            frag = op == 0 ? frag + len : len;
            open = !fin;
            if (fin) frag = 0;
        }
        off += hl + len;
    }
    ws->in_fragmented = open;
    ws->frag_len = frag;
    return off;
}

static void ws_on_read(sg_conn *c)
{
    sg_ws *ws = c->proto_data;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!ws || ws->close_sent) { /* closing: what comes is read and dropped */
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    /* wslay's contexts hold 8 KiB of buffers; an idle socket needs none, so
     * one exists only while frames are being read */
    while ((ws->feed = whole_frames(ws, in)) > 0) {
        if (!ws->ctx) {
            if (wslay_event_context_server_init(&ws->ctx, &wslay_cbs, ws) != 0) {
                sg_conn_kill(c);
                return;
            }
            wslay_event_config_set_max_recv_msg_length(ws->ctx, c->srv->cfg->ws_max_message);
        }
        int r = wslay_event_recv(ws->ctx);
        if (ws->close_sent) return; /* we closed while handling a message */
        if (r < 0) {
            /* a frame-level error (bad control frame, bad length): wslay has
             * queued a close without a code, where the client is owed 1002 */
            sg_ws_close(ws, SG_WS_CLOSE_PROTOCOL, "protocol error");
            return;
        }
        if (wslay_event_want_write(ws->ctx)) wslay_event_send(ws->ctx);
        if (wslay_event_get_close_sent(ws->ctx)) {
            ws->close_sent = 1;
            sg_conn_linger_close(c, WS_CLOSE_GRACE_S);
            return;
        }
        if (!wslay_event_get_read_enabled(ws->ctx)) break;
    }
    sg_conn_kick(c);
    if (ws->ctx && !ws->in_fragmented && !wslay_event_want_write(ws->ctx)) {
        wslay_event_context_free(ws->ctx);
        ws->ctx = NULL;
    }
}

static void ws_on_close(sg_conn *c)
{
    sg_ws *ws = c->proto_data;
    if (!ws) return;
    if (ws->state) ws->h->on_close(ws->state);
    if (ws->ctx) wslay_event_context_free(ws->ctx);
    free(ws);
    c->proto_data = NULL;
    c->srv->net.n_ws--;
}

static void ws_on_shutdown(sg_conn *c)
{
    sg_ws *ws = c->proto_data;
    if (ws && writable(ws))
        sg_ws_close(ws, SG_WS_CLOSE_GOING_AWAY, "server shutting down");
    else
        sg_conn_close_after_write(c);
}

static void ws_on_idle(sg_conn *c)
{
    sg_ws *ws = c->proto_data;
    sg_log(SG_LOG_INFO, "websocket_idle", "peer=%s idle_s=%d", c->peer, c->srv->cfg->ws_idle_s);
    if (ws && writable(ws))
        sg_ws_close(ws, SG_WS_CLOSE_NORMAL, "idle timeout");
    else
        sg_conn_kill(c);
}

static const sg_conn_proto ws_proto = {"websocket", ws_on_read, ws_on_close, ws_on_shutdown,
                                       ws_on_idle};

/* ---- handshake ---- */

static int has_token(const char *list, const char *tok)
{
    size_t n = strlen(tok);
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == n && strncasecmp(p, tok, n) == 0) return 1;
        p = e;
    }
    return 0;
}

/* Decode base64url (no padding) into a new string; NULL when malformed. */
static void refuse(sg_conn *c, int status, const char *code, const char *msg, const char *extra)
{
    sg_error e;
    sg_error_set(&e, status, code, NULL, "%s", msg);
    c->req->keep_alive = 0;
    sg_http_json(c, status, sg_error_json(&e), extra);
}

void sg_ws_upgrade(sg_conn *c, sg_req *r, const sg_ws_handler *h)
{
    const char *upgrade = sg_req_header(r, "upgrade");
    const char *connection = sg_req_header(r, "connection");
    const char *version = sg_req_header(r, "sec-websocket-version");
    const char *key = sg_req_header(r, "sec-websocket-key");
    const char *protocols = sg_req_header(r, "sec-websocket-protocol");
    if (r->method != HTTP_GET) {
        refuse(c, 405, "method_not_allowed", "a WebSocket upgrade is a GET", "Allow: GET\r\n");
        return;
    }
    if (!upgrade || !has_token(upgrade, "websocket") || !connection ||
        !has_token(connection, "upgrade")) {
        refuse(c, 426, "upgrade_required", "this endpoint speaks WebSocket only",
               "Upgrade: websocket\r\n");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        refuse(c, 426, "unsupported_websocket_version", "Sec-WebSocket-Version must be 13",
               "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (c->parser.http_major < 1 || (c->parser.http_major == 1 && c->parser.http_minor < 1)) {
        refuse(c, 400, "http_version_not_supported", "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 4.1)", NULL);
        return;
    }
    /* 16 bytes in base64 are 24 characters, the last two "=" (RFC 6455 4.2.1) */
    unsigned char raw[32];
    if (!key || strlen(key) != 24 || key[22] != '=' || key[23] != '=' || strchr("AQgw", key[21]) == NULL ||
        EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18) {
        refuse(c, 400, "invalid_websocket_key", "Sec-WebSocket-Key must be 16 bytes in base64",
               NULL);
        return;
    }
    sg_ws *ws = calloc(1, sizeof(*ws));
    if (!ws) {
        refuse(c, 503, "out_of_memory", "the gateway is out of memory", NULL);
        return;
    }
    ws->conn = c;
    ws->h = h;
    sg_error aerr;
    ws->state = h->accept(ws, c, r, &aerr);
    if (!ws->state) {
        free(ws);
        refuse(c, aerr.status, aerr.code, aerr.message, NULL);
        return;
    }

    int offered = h->subprotocol && protocols && has_token(protocols, h->subprotocol);
    char buf[64];
    unsigned char sha[SHA_DIGEST_LENGTH];
    char accept[64];
    snprintf(buf, sizeof(buf), "%s%s", key, WS_GUID);
    SHA1((unsigned char *)buf, strlen(buf), sha);
    EVP_EncodeBlock((unsigned char *)accept, sha, SHA_DIGEST_LENGTH);
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 101 Switching Protocols\r\nServer: statusgw\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                        accept, offered ? "Sec-WebSocket-Protocol: " : "", offered ? h->subprotocol : "",
                        offered ? "\r\n" : "");
    sg_conn_take(c, SG_CONN_WS, &ws_proto, ws);
    c->srv->net.n_ws++;
    struct timeval idle = {c->srv->cfg->ws_idle_s, 0};
    sg_conn_set_idle(c, &idle);
    sg_log(SG_LOG_DEBUG, "websocket_open", "peer=%s", c->peer);
}
