/* Phoenix's long-poll transport at /socket/longpoll, as phoenix.js's
 * LongPoll speaks it (docs/protocol.md, section 3): the same channels as
 * the WebSocket (phoenix.c), with a session in place of the socket.
 *
 * - GET without a session token opens one: {"status":410,"token":T}
 *   (phoenix.js reads 410 with no token of its own as "open"). The
 *   subscriber's token is checked then, from X-Phoenix-AuthToken or a
 *   ?token= that is not a session's.
 * - GET with T waits up to longpoll_window_ms for frames:
 *   {"status":200,"token":T,"messages":["<frame>",…]} or {"status":204}.
 * - POST with T carries the client's frames, one a line (NDJSON) or one
 *   JSON frame: {"status":200}.
 * - A session nobody polls for longpoll_timeout_s goes, leaving its
 *   channels; one that ended (closed by the gateway: a slow consumer, a
 *   protocol error) answers its next request {"status":410}, and
 *   phoenix.js reconnects and rejoins, resuming each channel from its
 *   last seq.
 * Every answer is HTTP 200: the status is in the body, as Phoenix does. */
#include "longpoll.h"

#include "config.h"
#include "dict.h"
#include "log.h"
#include "phoenix.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define LP_TOKEN_PREFIX "lp_"

typedef struct lp_session lp_session;

struct sg_longpoll {
    sg_server *srv;
    sg_dict *by_token;
    lp_session *all;
    int n;
};

struct lp_session {
    sg_longpoll *lp;
    char token[40]; /* "lp_" and 32 hex digits */
    char peer[64];
    sg_phx *phx;
    struct evbuffer *msgs; /* frames to send: ",\"<frame>\"" each */
    sg_conn *poller;       /* a GET waiting for frames, or NULL */
    struct event *window;  /* the poll's window; with no poll, the session's expiry */
    struct event *soon;    /* answers the poll at the end of this turn */
    int ended;             /* the gateway closed it: the next request gets 410 */
    lp_session *prev, *next;
};

static void on_window(evutil_socket_t fd, short what, void *arg);

/* ---- answers ---- */

static void answer(sg_conn *c, const char *body, size_t len)
{
    sg_http_respond(c, 200, "application/json", body, len, NULL);
}

static void answer_status(sg_conn *c, int status, const char *token)
{
    char body[128];
    int n = token ? snprintf(body, sizeof(body), "{\"status\":%d,\"token\":\"%s\"}\n", status, token)
                  : snprintf(body, sizeof(body), "{\"status\":%d}\n", status);
    answer(c, body, (size_t)n);
}

static void answer_error(sg_conn *c, int status, const sg_error *err)
{
    json_t *e = sg_error_json(err);
    json_t *v = json_pack("{s:i, s:O}", "status", status, "error", json_object_get(e, "error"));
    json_decref(e);
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (s) answer(c, s, strlen(s));
    else answer_status(c, status, NULL);
    free(s);
}

/* The session's timer: the poll's window while a GET waits, else the time
 * it may go unpolled. */
static void arm(lp_session *s)
{
    const sg_config *cfg = s->lp->srv->cfg;
    int ms = s->poller ? cfg->longpoll_window_ms : cfg->longpoll_timeout_s * 1000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(s->window, &tv);
}

/* Answer the waiting GET with what is queued (or 204), and let its
 * connection go on. */
static void answer_poll(lp_session *s)
{
    sg_conn *c = s->poller;
    if (!c) return;
    s->poller = NULL;
    size_t n = evbuffer_get_length(s->msgs);
    if (n == 0) {
        answer_status(c, 204, s->token);
    } else {
        struct evbuffer *b = evbuffer_new();
        if (b) {
            evbuffer_add_printf(b, "{\"status\":200,\"token\":\"%s\",\"messages\":[", s->token);
            evbuffer_drain(s->msgs, 1); /* the first frame's comma */
            evbuffer_add_buffer(b, s->msgs);
            evbuffer_add(b, "]}\n", 3);
            size_t len = evbuffer_get_length(b);
            answer(c, (const char *)evbuffer_pullup(b, -1), len);
            evbuffer_free(b);
        } else {
            answer_status(c, 500, NULL); /* phoenix.js retries */
        }
    }
    sg_conn_resume(c);
    arm(s);
}

static void on_soon(evutil_socket_t fd, short what, void *arg)
{
    answer_poll(arg);
}

/* ---- the socket's side (sg_phx_io) ---- */

static void queued(lp_session *s)
{
    if (s->poller) event_active(s->soon, EV_TIMEOUT, 0);
}

/* Past output_cap unpolled, the session ends: the client reconnects and
 * resumes each channel from its last seq. */
static int over_cap(lp_session *s, size_t more)
{
    if (evbuffer_get_length(s->msgs) + more <= s->lp->srv->cfg->output_cap) return 0;
    if (!s->ended) {
        s->lp->srv->net.slow_consumers++;
        sg_log(SG_LOG_WARN, "slow_consumer", "transport=longpoll peer=%s unsent=%zu", s->peer,
               evbuffer_get_length(s->msgs));
        s->ended = 1;
    }
    return 1;
}

static void lp_send_text(void *io, const char *frame, size_t len)
{
    lp_session *s = io;
    if (s->ended || over_cap(s, len)) return;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(s->msgs, (ev_ssize_t)(6 * len + 3), &v, 1) < 1) {
        s->ended = 1;
        return;
    }
    v.iov_len = sg_phx_lp_string(v.iov_base, frame, len);
    evbuffer_commit_space(s->msgs, &v, 1);
    queued(s);
}

static int lp_send_shared(void *io, sg_blob *b)
{
    lp_session *s = io;
    if (s->ended || over_cap(s, b->len) || sg_blob_append(s->msgs, b) < 0) {
        s->ended = 1;
        queued(s);
        return -1;
    }
    s->lp->srv->net.delivered_lp += b->n_updates;
    queued(s);
    return 0;
}

static void lp_close(void *io, int code, const char *reason)
{
    lp_session *s = io;
    if (!s->ended)
        sg_log(SG_LOG_INFO, "longpoll_closed", "peer=%s code=%d reason=%s", s->peer, code, sg_log_q(reason));
    s->ended = 1;
    queued(s); /* what it has goes; the next request gets 410 */
}

static const sg_phx_io lp_io = {lp_send_text, lp_send_shared, lp_close, 1};

/* ---- sessions ---- */

static void session_free(lp_session *s)
{
    sg_longpoll *lp = s->lp;
    /* unknown from here: a request its last answer lets through gets 410 */
    sg_dict_del(lp->by_token, s->token, strlen(s->token));
    if (s->prev) s->prev->next = s->next; else lp->all = s->next;
    if (s->next) s->next->prev = s->prev;
    lp->n--;
    if (s->poller) answer_poll(s); /* its GET ends with what there is */
    evtimer_del(s->window);
    sg_phx_free(s->phx);
    if (s->window) event_free(s->window);
    if (s->soon) event_free(s->soon);
    if (s->msgs) evbuffer_free(s->msgs);
    free(s);
}

static void on_window(evutil_socket_t fd, short what, void *arg)
{
    lp_session *s = arg;
    if (s->poller) {
        answer_poll(s); /* 204, or what came meanwhile */
        return;
    }
    sg_log(SG_LOG_DEBUG, "longpoll_expired", "peer=%s", s->peer);
    session_free(s);
}

static sg_longpoll *registry(sg_server *srv)
{
    if (srv->longpoll) return srv->longpoll;
    sg_longpoll *lp = calloc(1, sizeof(*lp));
    if (!lp || !(lp->by_token = sg_dict_new())) {
        free(lp);
        return NULL;
    }
    lp->srv = srv;
    srv->longpoll = lp;
    return lp;
}

/* The request's tokens: the session's (LP_TOKEN_PREFIX…) and the
 * subscriber's (any other ?token=, or X-Phoenix-AuthToken). */
static void tokens(sg_req *r, char *session, size_t slen, char *jwt, size_t jlen)
{
    session[0] = jwt[0] = 0;
    const char *h = sg_req_header(r, "x-phoenix-authtoken");
    if (h) snprintf(jwt, jlen, "%s", h);
    for (const char *p = r->query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n > 6 && strncmp(p, "token=", 6) == 0) {
            const char *v = p + 6;
            size_t vl = n - 6;
            int is_session = vl > 3 && strncmp(v, LP_TOKEN_PREFIX, 3) == 0;
            char *out = is_session ? session : jwt;
            size_t cap = is_session ? slen : jlen;
            if (vl < cap && (is_session || !h)) {
                memcpy(out, v, vl);
                out[vl] = 0;
            }
        }
        p = amp ? amp + 1 : p + n;
    }
}

static void open_session(sg_longpoll *lp, sg_conn *c, sg_req *r, const char *jwt)
{
    sg_server *srv = lp->srv;
    sg_error err;
    sg_claims claims;
    memset(&claims, 0, sizeof(claims));
    if (sg_phx_check(c, r, jwt, &claims, &err) < 0) {
        answer_error(c, err.status == 400 ? 400 : 403, &err); /* phoenix.js: 403 stops it retrying */
        return;
    }
    if (lp->n >= srv->cfg->max_connections) {
        sg_claims_clear(&claims);
        sg_error_set(&err, 503, "too_many_connections", NULL, "the gateway is at its connection limit");
        answer_error(c, 500, &err); /* phoenix.js retries a 500 */
        return;
    }
    lp_session *s = calloc(1, sizeof(*s));
    unsigned char rnd[16];
    if (s && getrandom(rnd, sizeof(rnd), 0) == (ssize_t)sizeof(rnd)) {
        strcpy(s->token, LP_TOKEN_PREFIX);
        for (size_t i = 0; i < sizeof(rnd); i++)
            sprintf(s->token + 3 + 2 * i, "%02x", rnd[i]);
        snprintf(s->peer, sizeof(s->peer), "%s", r->client[0] ? r->client : c->peer);
        s->lp = lp;
        s->msgs = evbuffer_new();
        s->window = evtimer_new(srv->base, on_window, s);
        s->soon = event_new(srv->base, -1, 0, on_soon, s);
        if (s->msgs && s->window && s->soon) s->phx = sg_phx_new(srv, s->peer, &claims, &lp_io, s);
    }
    if (!s || !s->phx || sg_dict_set(lp->by_token, s->token, strlen(s->token), s) < 0) {
        sg_claims_clear(&claims);
        if (s) {
            sg_phx_free(s->phx);
            if (s->msgs) evbuffer_free(s->msgs);
            if (s->window) event_free(s->window);
            if (s->soon) event_free(s->soon);
            free(s);
        }
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        answer_error(c, 500, &err);
        return;
    }
    s->next = lp->all;
    if (lp->all) lp->all->prev = s;
    lp->all = s;
    lp->n++;
    arm(s);
    sg_log(SG_LOG_DEBUG, "longpoll_opened", "peer=%s sessions=%d", s->peer, lp->n);
    answer_status(c, 410, s->token);
}

/* POST: the client's frames, one a line, then {"status":200}. */
static void publish(lp_session *s, sg_conn *c, sg_req *r)
{
    const char *p = r->body ? r->body : "", *end = p + r->body_len;
    while (p < end && !s->ended) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le > p) sg_phx_message(s->phx, p, (size_t)(le - p));
        p = nl ? nl + 1 : end;
    }
    answer_status(c, 200, NULL);
}

void sg_longpoll_handle(sg_conn *c, sg_req *r)
{
    sg_longpoll *lp = registry(c->srv);
    sg_error err;
    if (!lp) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        answer_error(c, 500, &err);
        return;
    }
    if (r->method != HTTP_GET && r->method != HTTP_POST) {
        sg_error_set(&err, 405, "method_not_allowed", NULL, "use GET or POST");
        sg_http_error(c, &err);
        return;
    }
    char session[40], jwt[SG_MAX_TOKEN];
    tokens(r, session, sizeof(session), jwt, sizeof(jwt));
    lp_session *s = session[0] ? sg_dict_get(lp->by_token, session, strlen(session)) : NULL;
    if (!s && (session[0] || r->method == HTTP_POST)) {
        answer_status(c, 410, NULL); /* gone (or never was): phoenix.js reconnects and rejoins */
        return;
    }
    if (!s) {
        open_session(lp, c, r, jwt);
        return;
    }
    if (s->ended && !s->poller && evbuffer_get_length(s->msgs) == 0) {
        answer_status(c, 410, NULL);
        session_free(s);
        return;
    }
    if (r->method == HTTP_POST) {
        publish(s, c, r);
        return;
    }
    if (s->poller) answer_poll(s); /* a poll replaced by a newer one */
    evtimer_del(s->window);
    s->poller = c;
    sg_conn_await(c, &s->poller);
    if (evbuffer_get_length(s->msgs) || s->ended) event_active(s->soon, EV_TIMEOUT, 0);
    arm(s);
}

int sg_longpoll_sessions(const sg_server *srv)
{
    return srv->longpoll ? srv->longpoll->n : 0;
}

void sg_longpoll_free(sg_server *srv)
{
    sg_longpoll *lp = srv->longpoll;
    if (!lp) return;
    while (lp->all) {
        lp_session *s = lp->all;
        s->poller = NULL; /* its connection is going with the gateway */
        session_free(s);
    }
    sg_dict_free(lp->by_token);
    free(lp);
    srv->longpoll = NULL;
}
