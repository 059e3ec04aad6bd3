#include "sse.h"

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

/* "id: <epoch>:<seq>\nevent: status_update\ndata: <json>\n\n" */
static size_t frame_len(const sg_conv *c, const sg_update *u)
{
    return 60 + SG_EPOCH_LEN + u->json_len;
}

static size_t frame_write(char *p, const sg_conv *c, const sg_update *u)
{
    int n = sprintf(p, "id: %s:%llu\nevent: status_update\ndata: ", c->epoch,
                    (unsigned long long)u->seq);
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
        b->len += frame_write(b->data + b->len, c, ups[i]);
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

static const sg_sub_class sse_class = {"sse", sse_encode, sse_deliver};

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
            len += frame_write((char *)v.iov_base + len, cv, rp->ups[i]);
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
    sse_sub *ss = calloc(1, sizeof(*ss));
    if (!ss) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &err);
        return;
    }
    ss->conn = c;

    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 200 OK\r\nServer: statusgw\r\n"
                        "Content-Type: text/event-stream; charset=utf-8\r\n"
                        "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                        "%s%s%sConnection: close\r\n\r\nretry: %d\n\n",
                        r->cors_origin ? "Access-Control-Allow-Origin: " : "",
                        r->cors_origin ? r->cors_origin : "", r->cors_origin ? "\r\nVary: Origin\r\n" : "",
                        srv->cfg->sse_retry_ms);
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
