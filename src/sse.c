#include "sse.h"

#include "loadwait.h"

#include "hub.h"
#include "log.h"
#include "security.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sse_sub {
    sg_sub sub; /* first: the hub hands back &sub */
    sg_conn *conn;
} sse_sub;

/* "id: <epoch>:<seq>\nevent: status_update\ndata: <json>\n\n"; named (the
 * streams of every conversation, group variant SSE_NAMED): the id is
 * "<conversation>=<epoch>:<seq>" */
enum { SSE_NAMED = 1 };

static size_t frame_len(const sg_conv *c, const sg_update *u)
{
    return 64 + c->id_len + SG_EPOCH_LEN + u->json_len;
}

static size_t frame_write(char *p, const sg_conv *c, const sg_update *u, int named)
{
    int n = sprintf(p, "id: %s%s%s:%llu\nevent: status_update\ndata: ", named ? c->id : "", named ? "=" : "",
                    c->epoch, (unsigned long long)u->seq);
    memcpy(p + n, u->json, u->json_len);
    n += (int)u->json_len;
    memcpy(p + n, "\n\n", 2);
    return n + 2;
}

static sg_blob *sse_encode(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n)
{
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += frame_len(c, ups[i]);
    sg_blob *b = sg_blob_new(cap);
    if (!b) return NULL;
    for (size_t i = 0; i < n; i++)
        b->len += frame_write(b->data + b->len, c, ups[i], g->variant == SSE_NAMED);
    b->n_updates = (int)n;
    return b;
}

static void sse_deliver(sg_sub *s, sg_blob *b)
{
    sse_sub *ss = (sse_sub *)s;
    sg_conn *c = ss->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (b && evbuffer_get_length(out) + b->len > c->srv->cfg->output_cap) {
        s->state = SG_SUB_DEAD;
        c->srv->net.slow_consumers++;
        sg_log(SG_LOG_WARN, "slow_consumer", "transport=sse peer=%s conversation=%s unsent=%zu",
               c->peer, s->conv->id, evbuffer_get_length(out));
        sg_conn_kill(c);
        return;
    }
    if (!b || sg_blob_append(out, b) < 0) {
        /* out of memory: the stream ends after what it has, and the client
         * resumes from its Last-Event-ID */
        s->state = SG_SUB_DEAD;
        sg_log(SG_LOG_WARN, "subscriber_cut", "transport=sse peer=%s conversation=%s reason=out_of_memory",
               c->peer, s->conv->id);
        sg_conn_close_after_write(c);
        return;
    }
    c->srv->net.delivered_sse += b->n_updates;
    sg_conn_deliver(c);
}

/* The stream ends after what it has: the client resumes from its
 * Last-Event-ID and is told of the gap then. */
static void sse_cut(sg_sub *s, const char *reason)
{
    sse_sub *ss = (sse_sub *)s;
    s->state = SG_SUB_DEAD;
    sg_conn_close_after_write(ss->conn);
}

static const sg_sub_class sse_class = {"sse", sse_encode, sse_deliver, sse_cut};

static void sse_on_read(sg_conn *c)
{
    /* clients have nothing to say on an event stream */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void sse_on_close(sg_conn *c)
{
    sse_sub *ss = c->proto_data;
    if (!ss) return;
    sg_hub_unsubscribe(c->srv->hub, &ss->sub);
    c->srv->net.n_sse--;
    free(ss);
    c->proto_data = NULL;
}

static void sse_on_shutdown(sg_conn *c)
{
    sg_conn_close_after_write(c);
}

static const sg_conn_proto sse_proto = {"sse", sse_on_read, sse_on_close, sse_on_shutdown, NULL};

/* What a resuming client missed came from the store (now or later): a gap
 * event first when history no longer holds all of it, then the updates;
 * live events follow. */
static void on_replay(sg_sub *s, const sg_replay *rp)
{
    sse_sub *ss = (sse_sub *)s;
    sg_conn *c = ss->conn;
    sg_conv *cv = s->conv;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (rp->status < 0) {
        /* the stream ends, and the client resumes from where it was */
        sg_log(SG_LOG_WARN, "sse_replay_failed", "peer=%s conversation=%s", c->peer, cv->id);
        sg_conn_close_after_write(c);
        return;
    }
    if (!rp->recovered && rp->epoch_changed && rp->gap_to < rp->gap_from) {
        /* the client's epoch is gone, but nothing of this one was missed:
         * no range to name (it would run from 1 to 0) */
        evbuffer_add_printf(out,
                            "id: %s:%llu\nevent: gap\ndata: {\"conversation_id\":\"%s\","
                            "\"epoch\":\"%s\",\"reason\":\"epoch_changed\"}\n\n",
                            cv->epoch, (unsigned long long)rp->gap_to, cv->id, cv->epoch);
    } else if (!rp->recovered) {
        evbuffer_add_printf(out,
                            "id: %s:%llu\nevent: gap\ndata: {\"conversation_id\":\"%s\","
                            "\"epoch\":\"%s\",\"reason\":\"%s\",\"from_seq\":%llu,"
                            "\"to_seq\":%llu}\n\n",
                            cv->epoch, (unsigned long long)rp->gap_to, cv->id, cv->epoch,
                            rp->epoch_changed ? "epoch_changed" : "history_trimmed",
                            (unsigned long long)rp->gap_from, (unsigned long long)rp->gap_to);
    }
    /* the replayed frames written straight into the output, in one
     * reservation: no copy and no allocation per update */
    size_t need = 0, n = rp->n;
    for (size_t i = 0; i < n; i++)
        need += frame_len(cv, rp->ups[i]);
    struct evbuffer_iovec v;
    if (n && evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) == 1) {
        size_t len = 0;
        for (size_t i = 0; i < n; i++)
            len += frame_write((char *)v.iov_base + len, cv, rp->ups[i], 0);
        v.iov_len = len;
        evbuffer_commit_space(out, &v, 1);
    } else if (n) {
        /* no room for the replay: the stream ends, and the client resumes */
        sg_log(SG_LOG_WARN, "sse_replay_failed", "peer=%s conversation=%s updates=%zu reason=out_of_memory",
               c->peer, cv->id, n);
        s->state = SG_SUB_DEAD;
        sg_conn_close_after_write(c);
        return;
    }
    sg_conn_deliver(c);
}

/* An event stream's response head and retry hint. */
static void stream_head(sg_conn *c, sg_req *r)
{
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 200 OK\r\nServer: statusgw\r\n"
                        "Content-Type: text/event-stream; charset=utf-8\r\n"
                        "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                        "%s%s%sConnection: close\r\n\r\nretry: %d\n\n",
                        r->cors_origin ? "Access-Control-Allow-Origin: " : "",
                        r->cors_origin ? r->cors_origin : "", r->cors_origin ? "\r\nVary: Origin\r\n" : "",
                        c->srv->cfg->sse_retry_ms);
}

/* Parse "<epoch>:<seq>"; -1 when malformed. */
static int parse_event_id(const char *s, char *epoch, size_t eplen, uint64_t *seq)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= eplen) return -1;
    char *end;
    unsigned long long v = strtoull(colon + 1, &end, 10);
    if (*end || end == colon + 1 || colon[1] == '-') return -1;
    memcpy(epoch, s, colon - s);
    epoch[colon - s] = 0;
    *seq = v;
    return 0;
}

void sg_sse_start(sg_conn *c, sg_req *r, const char *conv_id)
{
    sg_server *srv = c->srv;
    sg_error err;
    char buf[4096];
    char tok[SG_MAX_TOKEN];
    sg_req_token(r, tok, sizeof(tok));
    sg_claims cl;
    if (sg_security_subscriber_check(srv->security, sg_req_header(r, "origin"), tok, conv_id, &cl, &err) < 0) {
        sg_http_error(c, &err);
        return;
    }
    sg_claims_clear(&cl);
    uint64_t mask = sg_category_all();
    if (sg_req_query(r, "categories", buf, sizeof(buf)) == 0) {
        char bad[80];
        if (sg_category_parse_csv(buf, &mask, bad, sizeof(bad)) < 0) {
            sg_error_set(&err, 400, "invalid_categories", "categories",
                         "unknown category '%s'", bad);
            sg_http_error(c, &err);
            return;
        }
    }
    char last_id[160] = "";
    const char *h = sg_req_header(r, "last-event-id");
    if (h)
        snprintf(last_id, sizeof(last_id), "%s", h);
    else
        sg_req_query(r, "last_event_id", last_id, sizeof(last_id));
    char epoch[80];
    uint64_t since = 0;
    int resume = last_id[0] != 0;
    if (resume && parse_event_id(last_id, epoch, sizeof(epoch), &since) < 0) {
        sg_error_set(&err, 400, "invalid_last_event_id", "last_event_id",
                     "Last-Event-ID must be <epoch>:<seq> as sent in an event's id");
        sg_http_error(c, &err);
        return;
    }
    sg_conv *cv = sg_hub_conv(srv->hub, conv_id, strlen(conv_id), SG_CONV_WATCH, &err);
    if (!cv) {
        sg_http_error(c, &err);
        return;
    }
    if (sg_await_loaded(c, srv->hub, &cv, 1)) return; /* handled again once it is */
    sse_sub *ss = calloc(1, sizeof(*ss));
    if (!ss) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &err);
        return;
    }
    ss->conn = c;

    stream_head(c, r);
    sg_conn_take(c, SG_CONN_SSE, &sse_proto, ss);
    srv->net.n_sse++;
    if (sg_hub_subscribe(srv->hub, cv, &ss->sub, &sse_class, mask, 0, NULL, ss) < 0) {
        /* the headers are out: the stream ends, and the client retries */
        sg_log(SG_LOG_WARN, "subscriber_cut", "transport=sse peer=%s conversation=%s reason=out_of_memory",
               c->peer, cv->id);
        sg_conn_close_after_write(c);
        return;
    }
    sg_conn_set_idle(c, NULL);
    if (resume) sg_hub_resume(srv->hub, &ss->sub, epoch, since, on_replay);
    sg_log(SG_LOG_DEBUG, "sse_subscribed", "peer=%s conversation=%s resume=%d since=%llu",
           c->peer, cv->id, resume, (unsigned long long)since);
}

/* ---- one stream, several conversations ----
 *
 * GET /api/v1/events?conversations=a,b,c: each event's id carries every
 * conversation's position, "a=<epoch>:<seq>,b=<epoch>:<seq>,…", so that
 * Last-Event-ID resumes each one without a duplicate or a miss. An id is
 * only right in the order the events are written, so it is made as each
 * is written (deliver, replay), not when a flush encodes its frame: a
 * conversation that resumes holds its live frames until its replay is
 * out, while the others' go on. The stream opens with a `stream` event
 * giving each conversation's position, with its id, so even a client that
 * saw no update resumes where it began.
 *
 * conversations=* (an admin token) is every conversation, live: each id
 * names its event's conversation only, and the frames are shared. */

typedef struct sse_multi sse_multi;

typedef struct sse_msub {
    sg_sub sub; /* first: the hub hands back &sub */
    sse_multi *m;
    char epoch[SG_EPOCH_LEN + 1]; /* the position the client has seen */
    uint64_t seq;
} sse_msub;

struct sse_multi {
    sg_conn *conn;
    int n;
    sse_msub *convs;
    sse_sub *whole; /* conversations=*: live, one sub on the wildcard */
    char *idbuf; /* the id line, rebuilt per event */
    size_t idcap;
};

/* A frame as encode makes it for deliver: the events' bodies, each to get
 * its id line when written. */
typedef struct mev {
    uint64_t seq;
    uint32_t off, len;
} mev;

static sg_blob *multi_encode(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n)
{
    size_t cap = n * sizeof(mev);
    for (size_t i = 0; i < n; i++)
        cap += 40 + ups[i]->json_len;
    sg_blob *b = sg_blob_new(cap);
    if (!b) return NULL;
    mev *ev = (mev *)b->data;
    char *p = b->data + n * sizeof(mev);
    for (size_t i = 0; i < n; i++) {
        char *start = p;
        memcpy(p, "event: status_update\ndata: ", 27);
        p += 27;
        memcpy(p, ups[i]->json, ups[i]->json_len);
        p += ups[i]->json_len;
        memcpy(p, "\n\n", 2);
        p += 2;
        ev[i] = (mev){ups[i]->seq, (uint32_t)(start - b->data), (uint32_t)(p - start)};
    }
    b->len = (size_t)(p - b->data);
    b->n_updates = (int)n;
    return b;
}

/* "id: a=<epoch>:<seq>,b=…\n" for the stream as it stands, into m->idbuf. */
static const char *multi_id(sse_multi *m, size_t *len)
{
    size_t need = 8;
    for (int i = 0; i < m->n; i++)
        need += m->convs[i].sub.conv->id_len + SG_EPOCH_LEN + 24;
    if (need > m->idcap) {
        char *nb = realloc(m->idbuf, need);
        if (!nb) return NULL;
        m->idbuf = nb;
        m->idcap = need;
    }
    char *p = m->idbuf;
    memcpy(p, "id: ", 4);
    p += 4;
    for (int i = 0; i < m->n; i++) {
        const sse_msub *ms = &m->convs[i];
        if (i) *p++ = ',';
        memcpy(p, ms->sub.conv->id, ms->sub.conv->id_len);
        p += ms->sub.conv->id_len;
        p += sprintf(p, "=%s:%llu", ms->epoch, (unsigned long long)ms->seq);
    }
    *p++ = '\n';
    *len = (size_t)(p - m->idbuf);
    return m->idbuf;
}

/* Write one event (its body) with the stream's id after moving ms on to seq. */
static int multi_write(sse_msub *ms, uint64_t seq, const char *body, size_t len)
{
    sse_multi *m = ms->m;
    struct evbuffer *out = bufferevent_get_output(m->conn->bev);
    ms->seq = seq;
    size_t il;
    const char *id = multi_id(m, &il);
    if (!id || evbuffer_add(out, id, il) < 0 || evbuffer_add(out, body, len) < 0) return -1;
    return 0;
}

/* A stored update as a status_update event with the stream's id. */
static int multi_write_update(sse_msub *ms, const sg_update *u)
{
    if (multi_write(ms, u->seq, "event: status_update\ndata: ", 27) < 0) return -1;
    struct evbuffer *out = bufferevent_get_output(ms->m->conn->bev);
    return evbuffer_add(out, u->json, u->json_len) < 0 || evbuffer_add(out, "\n\n", 2) < 0 ? -1 : 0;
}

static void multi_cut(sg_sub *s, const char *why)
{
    sse_msub *ms = (sse_msub *)s;
    sg_conn *c = ms->m->conn;
    for (int i = 0; i < ms->m->n; i++)
        ms->m->convs[i].sub.state = SG_SUB_DEAD;
    sg_log(SG_LOG_WARN, "subscriber_cut", "transport=sse peer=%s conversation=%s reason=%s", c->peer, s->conv->id,
           why);
    sg_conn_close_after_write(c);
}

static void multi_deliver(sg_sub *s, sg_blob *b)
{
    sse_msub *ms = (sse_msub *)s;
    sg_conn *c = ms->m->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (b && evbuffer_get_length(out) + b->len > c->srv->cfg->output_cap) {
        c->srv->net.slow_consumers++;
        sg_log(SG_LOG_WARN, "slow_consumer", "transport=sse peer=%s conversation=%s unsent=%zu", c->peer,
               s->conv->id, evbuffer_get_length(out));
        for (int i = 0; i < ms->m->n; i++)
            ms->m->convs[i].sub.state = SG_SUB_DEAD;
        sg_conn_kill(c);
        return;
    }
    if (!b) {
        multi_cut(s, "out_of_memory");
        return;
    }
    const mev *ev = (const mev *)b->data;
    for (int i = 0; i < b->n_updates; i++)
        if (multi_write(ms, ev[i].seq, b->data + ev[i].off, ev[i].len) < 0) {
            multi_cut(s, "out_of_memory");
            return;
        }
    c->srv->net.delivered_sse += b->n_updates;
    sg_conn_deliver(c);
}

static const sg_sub_class sse_multi_class = {"sse", multi_encode, multi_deliver, NULL};

/* conversations=*: each event's id is its own conversation's position */
static const sg_sub_class sse_all_class = {"sse", sse_encode, sse_deliver, NULL};

static void multi_free(sg_server *srv, sse_multi *m)
{
    for (int i = 0; i < m->n; i++)
        if (m->convs[i].sub.group) sg_hub_unsubscribe(srv->hub, &m->convs[i].sub);
    if (m->whole && m->whole->sub.group) sg_hub_unsubscribe(srv->hub, &m->whole->sub);
    free(m->whole);
    free(m->convs);
    free(m->idbuf);
    free(m);
}

static void multi_on_close(sg_conn *c)
{
    sse_multi *m = c->proto_data;
    if (!m) return;
    multi_free(c->srv, m);
    c->srv->net.n_sse--;
    c->proto_data = NULL;
}

static const sg_conn_proto sse_multi_proto = {"sse", sse_on_read, multi_on_close, sse_on_shutdown, NULL};

/* What one of the stream's conversations missed: as on_replay, each event
 * with the stream's id. */
static void multi_on_replay(sg_sub *s, const sg_replay *rp)
{
    sse_msub *ms = (sse_msub *)s;
    sg_conn *c = ms->m->conn;
    sg_conv *cv = s->conv;
    if (rp->status < 0) {
        sg_log(SG_LOG_WARN, "sse_replay_failed", "peer=%s conversation=%s", c->peer, cv->id);
        sg_conn_close_after_write(c);
        return;
    }
    char body[512];
    int k = -1;
    if (!rp->recovered && rp->epoch_changed && rp->gap_to < rp->gap_from)
        k = snprintf(body, sizeof(body),
                     "event: gap\ndata: {\"conversation_id\":\"%s\",\"epoch\":\"%s\",\"reason\":\"epoch_changed\"}\n\n",
                     cv->id, cv->epoch);
    else if (!rp->recovered)
        k = snprintf(body, sizeof(body),
                     "event: gap\ndata: {\"conversation_id\":\"%s\",\"epoch\":\"%s\",\"reason\":\"%s\","
                     "\"from_seq\":%llu,\"to_seq\":%llu}\n\n",
                     cv->id, cv->epoch, rp->epoch_changed ? "epoch_changed" : "history_trimmed",
                     (unsigned long long)rp->gap_from, (unsigned long long)rp->gap_to);
    int failed = 0;
    if (rp->epoch_changed || !rp->recovered) memcpy(ms->epoch, cv->epoch, SG_EPOCH_LEN + 1);
    if (k > 0) failed = multi_write(ms, rp->gap_to, body, (size_t)k) < 0;
    for (size_t i = 0; i < rp->n && !failed; i++)
        failed = multi_write_update(ms, rp->ups[i]) < 0;
    if (failed) {
        s->state = SG_SUB_DEAD;
        multi_cut(s, "out_of_memory");
        return;
    }
    sg_conn_deliver(c);
}

/* Parse Last-Event-ID "a=<epoch>:<seq>,…": the position it gives conv, 1;
 * 0 when it names none; -1 when malformed. */
static int multi_position(const char *last, const char *conv, char *epoch, size_t eplen, uint64_t *seq)
{
    size_t cl = strlen(conv);
    for (const char *p = last; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (!eq) return -1;
        char one[160];
        size_t vl = n - (size_t)(eq + 1 - p);
        if (vl >= sizeof(one)) return -1;
        memcpy(one, eq + 1, vl);
        one[vl] = 0;
        char ep[80];
        uint64_t sq;
        if (parse_event_id(one, ep, sizeof(ep), &sq) < 0) return -1;
        if ((size_t)(eq - p) == cl && memcmp(p, conv, cl) == 0) {
            snprintf(epoch, eplen, "%s", ep);
            *seq = sq;
            return 1;
        }
        p = end ? end + 1 : p + n;
    }
    return 0;
}

/* The stream's conversations from ?conversations= (list, cut in place):
 * valid, each once, each covered by the token; *all for "*" (an admin's).
 * The count, or -1 with err. */
static int multi_names(sg_conn *c, sg_req *r, char *list, const char **names, int *all, sg_error *err)
{
    sg_server *srv = c->srv;
    char tok[SG_MAX_TOKEN];
    sg_req_token(r, tok, sizeof(tok));
    sg_claims cl;
    if (sg_security_subscriber_check(srv->security, sg_req_header(r, "origin"), tok, NULL, &cl, err) < 0) return -1;
    int n = 0;
    *all = strcmp(list, "*") == 0;
    for (char *save = NULL, *t = *all ? NULL : strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= strcmp(names[i], t) == 0;
        if (dup) continue;
        if (!sg_conv_id_valid(t, strlen(t))) {
            sg_error_set(err, 400, "invalid_conversation_id", "conversations",
                         "conversation ids are 1-%d characters of [A-Za-z0-9._:@-]", SG_MAX_CONV_ID);
        } else if (n == srv->cfg->sse_max_conversations) {
            sg_error_set(err, 400, "too_many_conversations", "conversations",
                         "at most %d conversations on one stream (sse_max_conversations)",
                         srv->cfg->sse_max_conversations);
        } else if (!sg_claims_allow(&cl, t)) {
            sg_error_set(err, 403, "forbidden", NULL, "the token does not cover conversation '%s'", t);
        } else {
            names[n++] = t;
            continue;
        }
        sg_claims_clear(&cl);
        return -1;
    }
    int admin_ok = !*all || sg_claims_allow(&cl, "*");
    sg_claims_clear(&cl);
    if (!admin_ok) {
        sg_error_set(err, 403, "forbidden", NULL, "every conversation (conversations=*) needs an admin token");
        return -1;
    }
    if (n == 0 && !*all) {
        sg_error_set(err, 400, "invalid_parameter", "conversations", "name at least one conversation");
        return -1;
    }
    return n;
}

/* The stream's head, and its opening stream event with the positions. */
static void multi_head(sse_multi *m, sg_req *r)
{
    sg_conn *c = m->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    stream_head(c, r);
    size_t il;
    const char *id = m->n ? multi_id(m, &il) : NULL;
    if (!id) return;
    /* a client resumes from here even before any update */
    evbuffer_add(out, id, il);
    evbuffer_add_printf(out, "event: stream\ndata: {\"conversations\":[");
    for (int i = 0; i < m->n; i++)
        evbuffer_add_printf(out, "%s{\"conversation_id\":\"%s\",\"epoch\":\"%s\",\"last_seq\":%llu}", i ? "," : "",
                            m->convs[i].sub.conv->id, m->convs[i].epoch, (unsigned long long)m->convs[i].seq);
    evbuffer_add(out, "]}\n\n", 4);
}

void sg_sse_start_multi(sg_conn *c, sg_req *r)
{
    sg_server *srv = c->srv;
    sg_error err;
    char list[8192], buf[4096], last[16384] = "";
    if (sg_req_query(r, "conversations", list, sizeof(list)) < 0 || !list[0]) {
        sg_error_set(&err, 400, "invalid_parameter", "conversations",
                     "name the conversations: ?conversations=a,b,c (or * with an admin token)");
        sg_http_error(c, &err);
        return;
    }
    uint64_t mask = sg_category_all();
    if (sg_req_query(r, "categories", buf, sizeof(buf)) == 0) {
        char bad[80];
        if (sg_category_parse_csv(buf, &mask, bad, sizeof(bad)) < 0) {
            sg_error_set(&err, 400, "invalid_categories", "categories", "unknown category '%s'", bad);
            sg_http_error(c, &err);
            return;
        }
    }
    const char *h = sg_req_header(r, "last-event-id");
    if (h) snprintf(last, sizeof(last), "%s", h);
    else sg_req_query(r, "last_event_id", last, sizeof(last));
    const char *names[1024];
    int all, n = multi_names(c, r, list, names, &all, &err);
    if (n < 0) {
        sg_http_error(c, &err);
        return;
    }
    /* conversations the store reads later: the request is handled again once they are */
    sg_conv *opened[1024];
    for (int i = 0; i < n; i++)
        opened[i] = sg_hub_conv(srv->hub, names[i], strlen(names[i]), SG_CONV_WATCH, &err);
    if (sg_await_loaded(c, srv->hub, opened, n)) return;
    sse_multi *m = calloc(1, sizeof(*m));
    if (m) m->convs = calloc((size_t)(all ? 1 : n), sizeof(*m->convs));
    if (!m || !m->convs) {
        free(m);
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &err);
        return;
    }
    m->conn = c;
    /* positions: the client's where Last-Event-ID names one, else now */
    int resume[1024] = {0};
    for (int i = 0; i < n; i++) {
        sse_msub *ms = &m->convs[i];
        sg_conv *cv = sg_hub_conv(srv->hub, names[i], strlen(names[i]), SG_CONV_WATCH, &err);
        int rc = cv && last[0] ? multi_position(last, names[i], buf, sizeof(buf), &ms->seq) : 0;
        if (!cv || rc < 0) {
            if (rc < 0)
                sg_error_set(&err, 400, "invalid_last_event_id", "last_event_id",
                             "Last-Event-ID must be as sent in an event's id: <conversation>=<epoch>:<seq>,…");
            multi_free(srv, m);
            sg_http_error(c, &err);
            return;
        }
        ms->sub.conv = cv; /* until subscribed: multi_id reads it */
        ms->m = m;
        resume[i] = rc == 1;
        /* a client's epoch of another length is no epoch of ours ("-") */
        const char *ep = rc == 1 ? (strlen(buf) == SG_EPOCH_LEN ? buf : "-") : cv->epoch;
        memcpy(ms->epoch, ep, strlen(ep) + 1);
        if (rc == 0) ms->seq = cv->flushed_seq; /* what is queued still comes */
    }
    m->n = all ? 0 : n;
    multi_head(m, r);
    sg_conn_take(c, SG_CONN_SSE, &sse_multi_proto, m);
    srv->net.n_sse++;
    sg_conn_set_idle(c, NULL);
    if (all) { /* frames shared with every other such stream */
        if (!(m->whole = calloc(1, sizeof(*m->whole))) ||
            (m->whole->conn = c,
             sg_hub_subscribe(srv->hub, sg_hub_wildcard(srv->hub), &m->whole->sub, &sse_all_class, mask, SSE_NAMED, NULL,
                              m->whole) < 0)) {
            sg_log(SG_LOG_WARN, "subscriber_cut", "transport=sse peer=%s conversation=* reason=out_of_memory", c->peer);
            sg_conn_close_after_write(c);
        }
        sg_log(SG_LOG_DEBUG, "sse_subscribed", "peer=%s conversations=* resume=0", c->peer);
        return;
    }
    static int stream_variant = 2; /* each stream's frames are its own: variants from 2 */
    int variant = stream_variant++;
    if (stream_variant < 2) stream_variant = 2;
    for (int i = 0; i < n; i++) {
        sse_msub *ms = &m->convs[i];
        sg_conv *cv = ms->sub.conv;
        ms->sub.conv = NULL;
        if (sg_hub_subscribe(srv->hub, cv, &ms->sub, &sse_multi_class, mask, variant, NULL, ms) < 0) {
            ms->sub.conv = cv;
            sg_log(SG_LOG_WARN, "subscriber_cut", "transport=sse peer=%s conversation=%s reason=out_of_memory",
                   c->peer, cv->id);
            sg_conn_close_after_write(c);
            return;
        }
        if (resume[i]) sg_hub_resume(srv->hub, &ms->sub, ms->epoch, ms->seq, multi_on_replay);
    }
    sg_log(SG_LOG_DEBUG, "sse_subscribed", "peer=%s conversations=%d resume=%d", c->peer, n, last[0] != 0);
}
