#include "http.h"

#include "clock.h"
#include "dict.h"
#include "evread.h"
#include "jtext.h"
#include "log.h"
#include "security.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- request state ---- */

/* Ready for the next request on the connection; buffers are kept. */
static void req_reset(sg_req *r)
{
    free(r->cors_origin);
    r->cors_origin = NULL;
    r->url = r->path = r->query = NULL;
    r->url_len = r->alen = r->header_bytes = r->body_len = 0;
    r->n_headers = r->in_value = r->keep_alive = r->headers_done = 0;
    r->key_name = r->err_code = NULL;
    r->client[0] = 0;
}

static void req_free(sg_req *r)
{
    req_reset(r);
    free(r->arena);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Room for n more bytes at r->arena + r->alen. */
static int arena_reserve(sg_req *r, size_t n)
{
    if (r->alen + n + 1 > r->acap) {
        size_t cap = r->acap ? r->acap : 1024;
        while (cap < r->alen + n + 1)
            cap *= 2;
        char *a = realloc(r->arena, cap);
        if (!a) return -1;
        r->arena = a;
        r->acap = cap;
    }
    return 0;
}

static int arena_add(sg_req *r, const char *at, size_t n)
{
    if (arena_reserve(r, n) < 0) return -1;
    memcpy(r->arena + r->alen, at, n);
    r->alen += n;
    return 0;
}

static int hex(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

/* Percent-decode n bytes of s into out (room for n + 1). '+' is a space
 * only in queries. Returns the decoded length. */
static size_t pct_decode(const char *s, size_t n, char *out, int plus)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
            out[o++] = (char)(hex(s[i + 1]) * 16 + hex(s[i + 2]));
            i += 2;
        } else if (plus && s[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = 0;
    return o;
}

const char *sg_req_header(const sg_req *r, const char *name)
{
    for (int i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

void sg_req_token(const sg_req *r, char *out, size_t outlen)
{
    out[0] = 0;
    if (sg_bearer(sg_req_header(r, "authorization"), out, outlen) < 0) sg_req_query(r, "token", out, outlen);
}

int sg_req_query(const sg_req *r, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = r->query;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t seg = amp ? (size_t)(amp - p) : strlen(p);
        if (seg >= nl && strncmp(p, name, nl) == 0 && (seg == nl || p[nl] == '=')) {
            const char *v = seg == nl ? p + nl : p + nl + 1;
            size_t vl = seg - (v - p);
            if (vl >= outlen) vl = outlen - 1;
            pct_decode(v, vl, out, 1);
            return 0;
        }
        p += seg;
        if (*p == '&') p++;
    }
    return -1;
}

/* ---- parser callbacks ---- */

#define CONN(p) ((sg_conn *)(p)->data)

static int over_header_limit(sg_conn *c, size_t n)
{
    c->req->header_bytes += n;
    if (c->req->header_bytes > c->srv->cfg->max_header) {
        c->reject = 431;
        return 1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    sg_conn *c = CONN(p);
    req_reset(c->req);
    /* the time of the read that brought it: one clock read per read, not
     * two per request (pipelined requests arrive dozens a read) */
    uint64_t now = c->read_ns ? c->read_ns : sg_clock_running_ns();
    if (c->srv->cfg->access_log) c->req->t0_ns = now;
    c->deadline_ns = now + (uint64_t)c->srv->cfg->http_header_timeout_s * 1000000000ULL;
    return 0;
}

/* event=access: one line per answered request, when access_log is on */
static void access_line(sg_conn *c, const char *client, const char *method, const char *path, uint64_t t0_ns,
                        const char *key_name, const char *err_code, int status, size_t bytes)
{
    char p[160];
    snprintf(p, sizeof(p), "%s", path ? path : "-");
    double ms = t0_ns ? (double)(sg_clock_running_ns() - t0_ns) / 1e6 : 0;
    sg_log(SG_LOG_INFO, "access", "peer=%s method=%s path=%s status=%d bytes=%zu duration_ms=%.3f key=%s error=%s",
           client && client[0] ? client : c->peer, method, sg_log_q(p), status, bytes, ms,
           key_name ? sg_log_q(key_name) : "-", err_code ? err_code : "-");
}

static void access_log(sg_conn *c, int status, size_t bytes)
{
    sg_req *r = c->req;
    if (!r) return;
    access_line(c, r->client, r->path ? http_method_str(r->method) : "-", r->path, r->t0_ns, r->key_name,
                r->err_code, status, bytes);
}

/* The arena holds the URL, then name\0value\0 for each header. */
static int on_url(http_parser *p, const char *at, size_t n)
{
    sg_conn *c = CONN(p);
    if (over_header_limit(c, n) || arena_add(c->req, at, n) < 0) return -1;
    c->req->url_len += n;
    return 0;
}

/* Trailer fields of a chunked body arrive through the header callbacks
 * after on_headers_complete laid the headers out: they count against the
 * header limit and are otherwise ignored (RFC 9112 §7.1.2 lets a recipient
 * discard them), so the table the handlers read never changes. */
static int on_header_field(http_parser *p, const char *at, size_t n)
{
    sg_conn *c = CONN(p);
    sg_req *r = c->req;
    if (over_header_limit(c, n)) return -1;
    if (r->headers_done) return 0;
    if (r->n_headers == 0 || r->in_value) {
        if (r->n_headers == SG_MAX_HEADERS) {
            c->reject = 431;
            return -1;
        }
        if (arena_add(r, "", 1) < 0) return -1; /* ends the URL or the last value */
        r->hoff[r->n_headers].name_off = r->alen;
        r->hoff[r->n_headers].value_off = (size_t)-1;
        r->n_headers++;
        r->in_value = 0;
    }
    return arena_add(r, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    sg_conn *c = CONN(p);
    sg_req *r = c->req;
    if (over_header_limit(c, n)) return -1;
    if (r->headers_done) return 0;
    if (!r->in_value) {
        if (arena_add(r, "", 1) < 0) return -1; /* ends the name */
        r->hoff[r->n_headers - 1].value_off = r->alen;
        r->in_value = 1;
    }
    return arena_add(r, at, n);
}

static int on_headers_complete(http_parser *p)
{
    sg_conn *c = CONN(p);
    sg_req *r = c->req;
    if (r->n_headers > 0 && !r->in_value) { /* a name without a value */
        if (arena_add(r, "", 1) < 0) return -1;
        r->hoff[r->n_headers - 1].value_off = r->alen;
    }
    if (arena_add(r, "", 1) < 0) return -1;
    size_t url_len = r->url_len;
    const char *q0 = r->arena ? memchr(r->arena, '?', url_len) : NULL;
    size_t pl = q0 ? (size_t)(q0 - r->arena) : url_len; /* arena may move below */
    size_t path_off = r->alen;
    if (arena_reserve(r, pl + 1) < 0) return -1; /* room for the decoded path */
    r->alen += pl + 1;
    r->url = url_len ? r->arena : "/";
    r->path = r->arena + path_off;
    pct_decode(r->url, pl, r->path, 0);
    r->query = q0 ? r->arena + pl + 1 : "";
    for (int i = 0; i < r->n_headers; i++) {
        r->headers[i].name = r->arena + r->hoff[i].name_off;
        r->headers[i].value = r->arena + r->hoff[i].value_off;
        for (char *s = r->headers[i].name; *s; s++)
            *s = (char)tolower((unsigned char)*s);
    }
    if (p->content_length != ULLONG_MAX && p->content_length > c->srv->cfg->max_body) {
        c->reject = 413;
        return -1;
    }
    r->method = p->method;
    r->headers_done = 1;
    c->deadline_ns = (c->read_ns ? c->read_ns : sg_clock_running_ns()) +
                     (uint64_t)c->srv->cfg->http_body_timeout_s * 1000000000ULL;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    sg_conn *c = CONN(p);
    sg_req *r = c->req;
    if (r->body_len + n > c->srv->cfg->max_body) {
        c->reject = 413;
        return -1;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap * 2 : 1024;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) return -1;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    sg_conn *c = CONN(p);
    c->deadline_ns = 0;
    c->req->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    http_parser_pause(p, 1); /* dispatch outside the parser */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- responses ---- */

const char *sg_http_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* ---- held answers ----
 *
 * Each held answer keeps what its request said about the answer (the
 * request state moves on to the next request), its answer when written
 * before those ahead of it were, and the answers written after it until
 * the next held one. The oldest's answer goes straight to the output; an
 * answered oldest releases what follows it, up to the next unanswered. */

#define MAX_HELD 1024 /* per connection; past it, parsing waits */

struct sg_held {
    sg_held *next;
    sg_conn *c; /* NULL once the connection is gone */
    int answered;
    int keep_alive;
    struct evbuffer *answer; /* written before those ahead of it were */
    struct evbuffer *after;  /* the answers to the requests after it */
    char *cors_origin;
    const char *err_code;
    /* for the access log (only with access_log on): client\0path\0key\0 */
    char *alog;
    enum http_method method;
    int has_key;
    uint64_t t0_ns;
};

static void conn_read(sg_conn *c, int on);
static void process_http(sg_conn *c);
static void wq_push(sg_conn *c, int q);

static void held_free(sg_held *h)
{
    if (h->answer) evbuffer_free(h->answer);
    if (h->after) evbuffer_free(h->after);
    free(h->cors_origin);
    free(h->alog);
    free(h);
}

/* Where an answer written now goes. */
static struct evbuffer *conn_out(sg_conn *c)
{
    struct evbuffer **b;
    if (c->filling && c->filling == c->held) return bufferevent_get_output(c->bev);
    else if (c->filling) b = &c->filling->answer;
    else if (c->held_tail) b = &c->held_tail->after;
    else return bufferevent_get_output(c->bev);
    if (!*b) *b = evbuffer_new();
    return *b;
}

sg_held *sg_conn_hold(sg_conn *c)
{
    sg_req *r = c->req;
    sg_held *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->c = c;
    h->keep_alive = r->keep_alive;
    if (r->cors_origin) { /* the request's copy goes with its answer */
        h->cors_origin = r->cors_origin;
        r->cors_origin = NULL;
    }
    if (c->srv->cfg->access_log) {
        const char *path = r->path ? r->path : "-", *key = r->key_name ? r->key_name : "";
        size_t cl = strlen(r->client), pl = strlen(path), kl = strlen(key);
        h->alog = malloc(cl + pl + kl + 3);
        if (h->alog) {
            memcpy(h->alog, r->client, cl + 1);
            memcpy(h->alog + cl + 1, path, pl + 1);
            memcpy(h->alog + cl + pl + 2, key, kl + 1);
        }
        h->method = r->path ? r->method : (enum http_method)-1;
        h->has_key = r->key_name != NULL;
        h->t0_ns = r->t0_ns;
    }
    if (c->held_tail) c->held_tail->next = h; else c->held = h;
    c->held_tail = h;
    c->n_held++;
    return h;
}

/* Release the answered oldest and what follows it; parse on when that
 * unblocked the connection. */
static void held_flush(sg_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    int was_full = c->n_held >= MAX_HELD;
    while (c->held && c->held->answered) {
        sg_held *h = c->held;
        c->held = h->next;
        if (!c->held) c->held_tail = NULL;
        c->n_held--;
        if (h->answer) evbuffer_add_buffer(out, h->answer);
        if (h->after) evbuffer_add_buffer(out, h->after);
        held_free(h);
    }
    if (c->killed) return;
    if (was_full && c->read_paused && c->n_held < MAX_HELD &&
        evbuffer_get_length(out) <= c->srv->cfg->output_cap) {
        c->read_paused = 0;
        conn_read(c, 1);
    }
    if (!c->processing && !c->awaited_by) process_http(c); /* what waited behind them */
    wq_push(c, SG_WQ_ANSWERS);
}

void sg_held_respond(sg_held *h, int status, const char *ctype, const char *body, size_t len,
                     const char *extra)
{
    sg_conn *c = h->c;
    if (!c || c->killed) {
        if (c) h->answered = 1; /* the reaper frees it */
        else held_free(h);
        return;
    }
    c->filling = h;
    sg_http_respond(c, status, ctype, body, len, extra);
    c->filling = NULL;
    h->answered = 1;
    if (h == c->held) held_flush(c);
}

void sg_held_error(sg_held *h, const sg_error *err)
{
    sg_conn *c = h->c;
    if (!c || c->killed) {
        sg_held_respond(h, 0, NULL, NULL, 0, NULL);
        return;
    }
    c->filling = h;
    sg_http_error(c, err);
    c->filling = NULL;
    h->answered = 1;
    if (h == c->held) held_flush(c);
}

/* The connection goes: answered holds go with it, unanswered ones stay
 * with whoever answers them. */
static void held_release(sg_conn *c)
{
    sg_held *h = c->held;
    while (h) {
        sg_held *n = h->next;
        if (h->answered) {
            held_free(h);
        } else {
            h->c = NULL;
            h->next = NULL;
        }
        h = n;
    }
    c->held = c->held_tail = NULL;
    c->n_held = 0;
}

void sg_http_respond(sg_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra)
{
    struct evbuffer *out = conn_out(c);
    sg_held *f = c->filling;
    int keep = (f ? f->keep_alive : c->req->keep_alive) && !c->srv->shutting_down;
    const char *reason = sg_http_reason(status);
    const char *cors = f ? f->cors_origin : c->req->cors_origin;
    if (!out) {
        sg_conn_kill(c);
        return;
    }
    size_t rl = strlen(reason), cl = ctype ? strlen(ctype) : 0, xl = extra ? strlen(extra) : 0,
           ol = cors ? strlen(cors) : 0;
    /* the head and a small body in one buffer, one append: every answer
     * to a publish takes this path */
    char buf[1024];
    size_t need = 96 + rl + cl + xl + (cors ? ol + 48 : 0) + len;
    char *h = need <= sizeof(buf) ? buf : malloc(need);
    if (!h) {
        sg_conn_kill(c);
        return;
    }
    char *p = h;
#define PUT(s, n) (memcpy(p, s, n), p += (n))
#define LIT(s) PUT(s, sizeof(s) - 1)
    LIT("HTTP/1.1 ");
    p += sg_fmt_int(status, p);
    *p++ = ' ';
    PUT(reason, rl);
    LIT("\r\nServer: statusgw\r\nContent-Length: ");
    p += sg_fmt_int((long long)len, p);
    LIT("\r\n");
    if (ctype) {
        LIT("Content-Type: ");
        PUT(ctype, cl);
        LIT("\r\n");
    }
    if (!keep) LIT("Connection: close\r\n");
    if (extra) PUT(extra, xl);
    if (cors) {
        LIT("Access-Control-Allow-Origin: ");
        PUT(cors, ol);
        LIT("\r\nVary: Origin\r\n");
    }
    LIT("\r\n");
    if (len) PUT(body, len);
#undef LIT
#undef PUT
    evbuffer_add(out, h, (size_t)(p - h));
    if (h != buf) free(h);
    if (c->srv->cfg->access_log && f && f->alog) {
        const char *client = f->alog, *path = client + strlen(client) + 1, *key = path + strlen(path) + 1;
        access_line(c, client, (int)f->method >= 0 ? http_method_str(f->method) : "-", path, f->t0_ns,
                    f->has_key ? key : NULL, f->err_code, status, len);
    } else if (c->srv->cfg->access_log && !f) {
        access_log(c, status, len);
    }
    if (!keep) sg_conn_close_after_write(c);
}

void sg_http_json(sg_conn *c, int status, json_t *v, const char *extra)
{
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    if (!s) {
        static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}";
        sg_http_respond(c, 503, "application/json", oom, sizeof(oom) - 1, NULL);
        return;
    }
    size_t n = strlen(s);
    s[n] = '\n'; /* replace the NUL: curl users see a clean line */
    sg_http_respond(c, status, "application/json", s, n + 1, extra);
    free(s);
}

void sg_http_error(sg_conn *c, const sg_error *err)
{
    if (c->filling) c->filling->err_code = err->code;
    else if (c->req) c->req->err_code = err->code;
    char extra[40];
    int retry = err->status == 429 || err->status == 503;
    if (retry) snprintf(extra, sizeof(extra), "Retry-After: %d\r\n", err->retry_after > 0 ? err->retry_after : 1);
    sg_http_json(c, err->status, sg_error_json(err), retry ? extra : NULL);
}

/* ---- write queues ----
 *
 * Two queues of connections with something to write, each drained by an
 * event of its own:
 *
 * - answers: HTTP answers go out once every connection that was readable
 *   this loop turn has been read and answered, one burst of writes rather
 *   than writes between reads, so a client waiting on several connections
 *   is woken once (Redis writes its replies before sleeping for the same
 *   reason);
 * - deliveries: a flush appends its frames to every subscriber at once
 *   (references to one buffer) and queues the connections; the writes go
 *   out DELIVERY_SLICE connections at a time, the first slice in the
 *   flush's loop turn and each further one after the loop has polled
 *   again, so producers' requests are read between slices of a large
 *   fan-out, and flushes that arrive meanwhile share a subscriber's write. */

#define DELIVERY_SLICE 512

static void wq_unlink(sg_server *s, int q, sg_conn *c)
{
    struct sg_writeq *w = &s->wq[q];
    if (c->wq[q].prev) c->wq[q].prev->wq[q].next = c->wq[q].next; else w->head = c->wq[q].next;
    if (c->wq[q].next) c->wq[q].next->wq[q].prev = c->wq[q].prev; else w->tail = c->wq[q].prev;
    c->wq[q].prev = c->wq[q].next = NULL;
    c->wq[q].on = 0;
}

/* Write up to max queued connections; 1 when some are left. */
static int wq_drain(sg_server *s, int q, int max)
{
    s->wq[q].armed = 0;
    for (int i = 0; i < max && s->wq[q].head; i++) {
        sg_conn *c = s->wq[q].head;
        wq_unlink(s, q, c);
        sg_conn_kick(c); /* everything the connection holds in one write */
    }
    return s->wq[q].head != NULL;
}

static void on_answers(evutil_socket_t fd, short what, void *arg)
{
    wq_drain(arg, SG_WQ_ANSWERS, INT_MAX);
}

static void on_deliveries(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    if (wq_drain(s, SG_WQ_DELIVERIES, DELIVERY_SLICE)) {
        static const struct timeval now = {0, 0};
        evtimer_add(s->wq[SG_WQ_DELIVERIES].ev, &now); /* after the next poll */
        s->wq[SG_WQ_DELIVERIES].armed = 1;
    }
}

/* Queue c on q; its event runs later in this loop turn. */
static void wq_push(sg_conn *c, int q)
{
    sg_server *s = c->srv;
    struct sg_writeq *w = &s->wq[q];
    if (c->wq[q].on || c->killed) return;
    if (!w->ev) w->ev = evtimer_new(s->base, q == SG_WQ_ANSWERS ? on_answers : on_deliveries, s);
    if (!w->ev) {
        sg_conn_kick(c);
        return;
    }
    c->wq[q].on = 1;
    c->wq[q].next = NULL;
    c->wq[q].prev = w->tail;
    if (w->tail) w->tail->wq[q].next = c; else w->head = c;
    w->tail = c;
    if (!w->armed) {
        event_active(w->ev, EV_TIMEOUT, 0);
        w->armed = 1;
    }
}

void sg_conn_deliver(sg_conn *c)
{
    wq_push(c, SG_WQ_DELIVERIES);
}

/* ---- connection lifecycle ---- */

void sg_http_reap(sg_conn *c)
{
    sg_server *s = c->srv;
    for (int q = 0; q < 2; q++)
        if (c->wq[q].on) wq_unlink(s, q, c);
    if (c->awaited_by) *c->awaited_by = NULL;
    held_release(c);
    if (c->proto && c->proto->on_close) c->proto->on_close(c);
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_conns--;
    if (c->req) req_free(c->req);
    free(c->req);
    c->req = NULL;
    if (s->per_ip) {
        intptr_t n = (intptr_t)sg_dict_get(s->per_ip, c->peer, strlen(c->peer));
        if (n <= 1)
            sg_dict_del(s->per_ip, c->peer, strlen(c->peer));
        else
            sg_dict_set(s->per_ip, c->peer, strlen(c->peer), (void *)(n - 1));
    }
    if (c->rev) event_free(c->rev);
    bufferevent_free(c->bev);
    c->bev = NULL;
    free(c);
}

/* ---- reading ----
 *
 * Connections read through their own event rather than the bufferevent's:
 * libevent's evbuffer_read asks the kernel how much is readable (an ioctl)
 * before every read, a third syscall on every request. Writes stay with
 * the bufferevent (see sg_conn_kick). */

static void conn_read(sg_conn *c, int on)
{
    if (on && !c->reading && !c->killed) {
        event_add(c->rev, c->idle.tv_sec || c->idle.tv_usec ? &c->idle : NULL);
        c->reading = 1;
    } else if (!on && c->reading) {
        event_del(c->rev);
        c->reading = 0;
    }
}

void sg_conn_set_idle(sg_conn *c, const struct timeval *idle)
{
    if (idle) c->idle = *idle;
    else c->idle.tv_sec = c->idle.tv_usec = 0;
    if (c->reading) { /* event_add keeps a pending event's old timeout when given none */
        event_del(c->rev);
        event_add(c->rev, idle);
    }
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    while (s->reap) {
        sg_conn *c = s->reap;
        s->reap = c->reap_next;
        sg_http_reap(c);
    }
}

void sg_conn_kill(sg_conn *c)
{
    if (c->killed) return;
    c->killed = 1;
    conn_read(c, 0);
    bufferevent_disable(c->bev, EV_WRITE);
    c->reap_next = c->srv->reap;
    c->srv->reap = c;
    if (!c->srv->reap_ev)
        c->srv->reap_ev = event_new(c->srv->base, -1, 0, on_reap, c->srv);
    event_active(c->srv->reap_ev, EV_TIMEOUT, 0);
}

void sg_conn_kick(sg_conn *c)
{
    if (c->killed) return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) > 0 && !c->write_armed) {
        /* bufferevent_socket keeps its output's start frozen outside its
         * own write callback; thaw it for this write, as that callback does */
        evbuffer_unfreeze(out, 1);
        errno = 0;
        int n = evbuffer_write(out, bufferevent_getfd(c->bev));
        int e = errno;
        evbuffer_freeze(out, 1);
        if (n < 0 && e != EAGAIN && e != EWOULDBLOCK && e != EINTR) {
            sg_log(SG_LOG_DEBUG, "connection_write_failed", "peer=%s errno=%d", c->peer, e);
            sg_conn_kill(c); /* the peer is gone */
            return;
        }
        if (evbuffer_get_length(out) > 0) {
            c->write_armed = 1;
            bufferevent_enable(c->bev, EV_WRITE);
        }
    }
    if (c->closing && evbuffer_get_length(out) == 0 && !c->held) {
        if (!c->linger || !c->reading) {
            sg_conn_kill(c);
        } else if (c->linger == 1) {
            c->linger = 2; /* written: the peer may read the close, then close itself */
            shutdown(bufferevent_getfd(c->bev), SHUT_WR);
        }
    }
}

/* Lingering close (RFC 6455 7.1.1, nginx's lingering_close): once the
 * output is written, the write side is shut, and input is read and
 * dropped until the peer closes or grace_s pass. Closing with unread input
 * would make the kernel reset the connection and discard the close frame
 * before the peer reads it. */
void sg_conn_linger_close(sg_conn *c, int grace_s)
{
    if (c->closing) return;
    c->closing = 1;
    c->linger = 1;
    c->idle.tv_sec = grace_s;
    c->idle.tv_usec = 0;
    if (c->reading) { /* keep reading, on the grace timeout */
        event_del(c->rev);
        event_add(c->rev, &c->idle);
    }
    sg_conn_kick(c);
}

void sg_conn_close_after_write(sg_conn *c)
{
    if (c->closing) return;
    c->closing = 1;
    conn_read(c, 0);
    sg_conn_kick(c);
}

void sg_conn_take(sg_conn *c, int mode, const sg_conn_proto *p, void *data)
{
    c->mode = mode;
    c->proto = p;
    c->proto_data = data;
    sg_conn_kick(c);
}

#define REJECT_LINGER_S 2

static void reject(sg_conn *c, int status, const char *detail)
{
    sg_error e;
    const char *code = status == 413   ? "body_too_large"
                       : status == 431 ? "headers_too_large"
                       : status == 408 ? "request_timeout"
                                       : "bad_request";
    sg_error_set(&e, status, code, NULL, "%s", detail);
    c->req->keep_alive = 0;
    /* written first, with the close left to the lingering below (closing
     * set for the call keeps the answer from closing the connection) */
    c->closing = 1;
    sg_http_error(c, &e);
    c->closing = 0;
    /* what the client still sends (the rest of a body over the limit) is
     * read and dropped for a moment: closing with it unread would reset
     * the connection, and the reset would discard the answer */
    sg_conn_linger_close(c, REJECT_LINGER_S);
}

/* A whole request may be handled now: held answers let only a plain POST
 * (a publish) go ahead of them. */
static int may_handle(sg_conn *c)
{
    if (!c->held) return 1;
    return c->req->method == HTTP_POST && !c->parser.upgrade && c->held_tail->keep_alive;
}

static void handle(sg_conn *c)
{
    c->parsed = 0;
    c->srv->net.requests++;
    int upgraded = c->parser.upgrade;
    c->processing++;
    c->srv->handle(c, c->req);
    c->processing--;
    if (c->mode != SG_CONN_HTTP) {
        /* a subscriber: request state is dead weight from here on */
        req_free(c->req);
        free(c->req);
        c->req = NULL;
        return;
    }
    if (upgraded && !c->closing) sg_conn_close_after_write(c);
    if (!c->awaited_by) req_reset(c->req); /* awaited: the request stays until sg_conn_resume */
}

/* Parse and dispatch every complete request in the input, in order. */
static void process_http(sg_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->mode == SG_CONN_HTTP && !c->closing && !c->killed && !c->awaited_by) {
        if (c->parsed) {
            if (!may_handle(c)) return; /* held_flush comes back */
            handle(c);
            continue;
        }
        if (evbuffer_get_length(out) > c->srv->cfg->output_cap || c->n_held >= MAX_HELD) {
            /* the client pipelines faster than it reads (or than its
             * answers are committed): wait for it */
            conn_read(c, 0);
            c->read_paused = 1;
            return;
        }
        struct evbuffer_iovec v;
        if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1) return;
        size_t n = http_parser_execute(&c->parser, &parser_settings, v.iov_base, v.iov_len);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        evbuffer_drain(in, n);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            c->parsed = 1;
            continue;
        }
        if (e != HPE_OK) {
            if (c->reject == 413)
                reject(c, 413, "the request body is over the gateway's limit");
            else if (c->reject == 431)
                reject(c, 431, "the request line and headers are over the gateway's limit");
            else
                reject(c, 400, http_errno_description(e));
            return;
        }
        if (n < v.iov_len) return; /* parser stopped: upgrade without takeover */
    }
    if (c->mode != SG_CONN_HTTP && c->proto && c->proto->on_read && !c->killed &&
        evbuffer_get_length(in) > 0)
        c->proto->on_read(c);
}

void sg_conn_await(sg_conn *c, sg_conn **slot)
{
    c->awaited_by = slot;
}

void sg_conn_resume(sg_conn *c)
{
    c->awaited_by = NULL;
    if (c->killed) return;
    req_reset(c->req);
    if (!c->processing) process_http(c);
    wq_push(c, SG_WQ_ANSWERS);
}

void sg_conn_retry(sg_conn *c)
{
    c->awaited_by = NULL;
    if (c->killed) return;
    c->parsed = 1;
    c->srv->net.requests--; /* counted once */
    if (!c->processing) process_http(c);
    wq_push(c, SG_WQ_ANSWERS);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    sg_conn *c = arg;
    if (c->killed) return;
    if (c->mode == SG_CONN_HTTP) {
        process_http(c);
        wq_push(c, SG_WQ_ANSWERS);
    }
    else if (c->proto && c->proto->on_read)
        c->proto->on_read(c);
    else
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

static void on_write(struct bufferevent *bev, void *arg)
{
    sg_conn *c = arg;
    if (c->killed) return;
    if (c->write_armed) { /* the leftover is out: back to writing at once */
        c->write_armed = 0;
        bufferevent_disable(bev, EV_WRITE);
    }
    if (c->closing && c->linger) {
        sg_conn_kick(c); /* shuts the write side, keeps reading */
        return;
    }
    if (c->closing) {
        if (!c->held) sg_conn_kill(c); /* else the last held answer's write closes it */
        return;
    }
    if (c->read_paused) {
        c->read_paused = 0;
        conn_read(c, 1);
        process_http(c);
        sg_conn_kick(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    sg_conn *c = arg;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && !c->closing && c->proto &&
        c->proto->on_idle) {
        c->proto->on_idle(c);
        return;
    }
    sg_log(SG_LOG_DEBUG, "connection_closed", "peer=%s mode=%d what=0x%x", c->peer, c->mode, what);
    sg_conn_kill(c);
}

#define READ_CHUNK 16384

/* A request that has not arrived whole by its deadline is answered 408
 * and the connection closed. Otherwise, the first time a request is seen
 * unfinished, the read timeout is shortened to the time left; it is not
 * touched again on later reads (an epoll_ctl per read would cost
 * pipelining clients more than the check): when it fires early for a
 * later request, or after the request was whole, on_readable sets it
 * again. */
static int past_deadline(sg_conn *c)
{
    if (!c->deadline_ns || c->mode != SG_CONN_HTTP || c->closing || c->killed) return 0;
    uint64_t now = sg_clock_running_ns();
    if (now >= c->deadline_ns) {
        sg_log(SG_LOG_INFO, "request_timeout", "peer=%s headers_complete=%d", c->peer,
               c->req && c->req->headers_done);
        reject(c, 408, "the request did not arrive whole in time");
        return 1;
    }
    if (c->short_timeout || !c->reading) return 0;
    uint64_t left = c->deadline_ns - now;
    struct timeval tv = {(time_t)(left / 1000000000ULL), (suseconds_t)(left % 1000000000ULL / 1000) + 1};
    if (c->idle.tv_sec == 0 || tv.tv_sec < c->idle.tv_sec) {
        event_add(c->rev, &tv);
        c->short_timeout = 1;
    }
    return 0;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    sg_conn *c = arg;
    if (c->linger) { /* closing: read and drop until the peer closes or the grace ends */
        struct evbuffer *in = bufferevent_get_input(c->bev);
        ssize_t n = (what & EV_TIMEOUT) ? 0 : sg_evbuffer_readv(in, fd, READ_CHUNK);
        evbuffer_drain(in, evbuffer_get_length(in));
        if (n == -2) return;
        if (n <= 0) sg_conn_kill(c);
        return;
    }
    if (what & EV_TIMEOUT) {
        if (c->short_timeout) { /* a request's deadline, not the idle timeout */
            c->short_timeout = 0;
            if (past_deadline(c)) return;
            if (!c->short_timeout && c->reading) /* no request pending: idle again */
                event_add(c->rev, c->idle.tv_sec || c->idle.tv_usec ? &c->idle : NULL);
            return;
        }
        if (past_deadline(c)) return;
        on_event(c->bev, BEV_EVENT_TIMEOUT | BEV_EVENT_READING, c);
        return;
    }
    ssize_t n = sg_evbuffer_readv(bufferevent_get_input(c->bev), fd, READ_CHUNK);
    if (n == -2) return;
    if (n <= 0) {
        on_event(c->bev, (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR) | BEV_EVENT_READING, c);
        return;
    }
    c->read_ns = c->mode == SG_CONN_HTTP ? sg_clock_running_ns() : 0;
    on_read(c->bev, c);
    c->read_ns = 0;
    if (!c->killed && c->deadline_ns) past_deadline(c);
}

/* A new connection from the listener. */
/* Answer a connection over a limit in one write and close it. */
static void refuse_connection(evutil_socket_t fd, int status, const char *code, const char *msg)
{
    char buf[512];
    char body[300];
    int bl = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code, msg);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "Retry-After: 1\r\nConnection: close\r\n\r\n%s",
                     status, sg_http_reason(status), bl, body);
    if (send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* best effort */
    }
    evutil_closesocket(fd);
}

void sg_http_accept(sg_server *s, evutil_socket_t fd, struct sockaddr *sa, int salen)
{
    char peer[64];
    evutil_inet_ntop(sa->sa_family,
                     sa->sa_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)sa)->sin6_addr
                                               : (void *)&((struct sockaddr_in *)sa)->sin_addr,
                     peer, sizeof(peer));
    if (s->n_conns >= s->cfg->max_connections) {
        s->net.refused_connections++;
        sg_log(SG_LOG_WARN, "connection_refused", "peer=%s reason=max_connections limit=%d", peer,
               s->cfg->max_connections);
        refuse_connection(fd, 503, "too_many_connections", "the gateway is at its connection limit");
        return;
    }
    intptr_t mine = 0;
    /* a trusted proxy carries many clients: they are counted by what it
     * forwards, not held to one address's share */
    if (s->cfg->max_connections_per_ip > 0 && !(s->security && sg_security_trusted_proxy(s->security, peer))) {
        if (!s->per_ip) s->per_ip = sg_dict_new();
        mine = (intptr_t)sg_dict_get(s->per_ip, peer, strlen(peer));
        if (mine >= s->cfg->max_connections_per_ip) {
            s->net.refused_per_ip++;
            sg_log(SG_LOG_WARN, "connection_refused", "peer=%s reason=max_connections_per_ip limit=%d",
                   peer, s->cfg->max_connections_per_ip);
            refuse_connection(fd, 429, "too_many_connections_from_address",
                              "this address has too many connections open");
            return;
        }
    }
    sg_conn *c = calloc(1, sizeof(*c));
    if (c) c->req = calloc(1, sizeof(sg_req));
    struct bufferevent *bev = c && c->req ? bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        if (c) free(c->req);
        free(c);
        evutil_closesocket(fd);
        sg_log(SG_LOG_ERROR, "accept_failed", "reason=out_of_memory");
        return;
    }
    /* pushes are small and latency matters: no Nagle delay */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->srv = s;
    c->bev = bev;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    memcpy(c->peer, peer, sizeof(c->peer));
    if (s->per_ip) sg_dict_set(s->per_ip, peer, strlen(peer), (void *)(mine + 1));
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    c->idle.tv_sec = s->cfg->http_idle_s;
    /* writes go out at once through sg_conn_kick; EV_WRITE only for
     * leftovers. bufferevent_socket_new enables EV_WRITE, which would add
     * and delete the write event (two epoll_ctl calls) around every write */
    bufferevent_disable(bev, EV_READ | EV_WRITE);
    /* bufferevent_socket freezes its input's end outside its own reads;
     * it never reads here, so the end stays open for on_readable */
    evbuffer_unfreeze(bufferevent_get_input(bev), 0);
    c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    if (!c->rev) {
        sg_log(SG_LOG_ERROR, "accept_failed", "reason=out_of_memory");
        sg_conn_kill(c);
        return;
    }
    conn_read(c, 1);
}
