#include "phoenix.h"

#include "hub.h"
#include "log.h"
#include "rate.h"
#include "security.h"

#include <openssl/evp.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PHX_MAX_LISTED_CATEGORIES 10 /* per join or change request */
#define TOPIC_PREFIX "status:" /* status:<conversation_id>, status:system, status:* */
#define PHX_RATE_LIMIT 30            /* category / filter changes ... */
#define PHX_RATE_WINDOW_MS 60000     /* ... per this window */

enum { V_BATCH = 1, V_WILDCARD = 2, V_LONGPOLL = 4 };

typedef struct phx_chan {
    sg_sub sub; /* first: the hub hands back &sub */
    sg_phx *phx;
    char *topic;
    json_t *join_ref;
    sg_conv *conv; /* the conversation, or the hub's wildcard */
    uint64_t cats;
    sg_filter *filter;
    int batch;
    sg_rate changes; /* subscription changes: PHX_RATE_LIMIT per PHX_RATE_WINDOW_MS */
    json_t *joining; /* the join's ref while what it missed is read, else NULL */
    struct phx_chan *next;
} phx_chan;

/* A history event waiting for the store. */
typedef struct phx_read {
    struct phx_read *prev, *next;
    sg_phx *p;
    sg_read *read;
    json_t *jr, *ref;
    char *topic;
} phx_read;

struct sg_phx {
    const sg_phx_io *io; /* how frames leave: a WebSocket, a long-poll session */
    void *io_state;
    sg_server *srv;
    const char *peer; /* the connection's, for logs */
    sg_claims claims; /* what the socket's token lets it join */
    phx_chan *chans;
    int n_chans;
    phx_read *reads; /* history events waiting for the store */
};

/* ---- frames ---- */

static void phx_close(sg_phx *p, int code, const char *reason)
{
    p->io->close(p->io_state, code, reason);
}

/* Send [join_ref, ref, topic, event, payload] with payload already JSON. */
static void send_raw(sg_phx *p, json_t *join_ref, json_t *ref, const char *topic,
                     const char *event, const char *payload, size_t plen)
{
    json_t *head = json_pack("[OOss]", join_ref ? join_ref : json_null(), ref ? ref : json_null(),
                             topic, event);
    char *h = head ? json_dumps(head, JSON_COMPACT) : NULL;
    json_decref(head);
    if (!h) {
        phx_close(p, SG_WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    size_t hl = strlen(h);
    char *frame = malloc(hl + plen + 2);
    if (!frame) /* out of memory: the socket closes, and the client rejoins */
        phx_close(p, SG_WS_CLOSE_INTERNAL, "out of memory");
    if (frame) {
        memcpy(frame, h, hl - 1); /* without the closing ']' */
        frame[hl - 1] = ',';
        memcpy(frame + hl, payload, plen);
        frame[hl + plen] = ']';
        p->io->send_text(p->io_state, frame, hl + plen + 1);
        free(frame);
    }
    free(h);
}

static void send_json(sg_phx *p, json_t *join_ref, json_t *ref, const char *topic,
                      const char *event, json_t *payload)
{
    char *s = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (s) send_raw(p, join_ref, ref, topic, event, s, strlen(s));
    else phx_close(p, SG_WS_CLOSE_INTERNAL, "out of memory");
    free(s);
}

/* phx_reply with {"status": ok|error, "response": response (stolen)} */
static void reply(sg_phx *p, json_t *join_ref, json_t *ref, const char *topic, int ok,
                  json_t *response)
{
    send_json(p, join_ref, ref, topic, "phx_reply",
              json_pack("{s:s, s:o}", "status", ok ? "ok" : "error", "response", response));
}

static void reply_error(sg_phx *p, json_t *jr, json_t *ref, const char *topic, const char *reason)
{
    reply(p, jr, ref, topic, 0, json_pack("{s:s}", "reason", reason));
}

/* ---- shared pushes: built once per flush per group ---- */

static void topic_of(const sg_group *g, const sg_conv *c, char *out, size_t n)
{
    snprintf(out, n, TOPIC_PREFIX "%s", (g->variant & V_WILDCARD) ? "*" : c->id);
}

/* ',' and the frame as a JSON string: a long-poll answer's messages are
 * strings of frames. out has room for 6 * len + 3. */
size_t sg_phx_lp_string(char *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    *p++ = ',';
    *p++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *p++ = '\\';
            *p++ = (char)ch;
        } else if (ch < 0x20) {
            memcpy(p, "\\u00", 4);
            p[4] = hex[ch >> 4];
            p[5] = hex[ch & 15];
            p += 6;
        } else {
            *p++ = (char)ch;
        }
    }
    *p++ = '"';
    return (size_t)(p - out);
}

/* The long-poll form of a flush: the frames a WebSocket would get, each a
 * JSON string after a comma. */
static sg_blob *lp_encode(const char *topic, int batch, sg_update **ups, size_t n)
{
    char pre[SG_MAX_CONV_ID + 96];
    int pl = snprintf(pre, sizeof(pre), batch ? "[null,null,\"%s\",\"status_batch\",{\"updates\":["
                                               : "[null,null,\"%s\",\"status_update\",", topic);
    size_t frames = batch ? 1 : n, raw = 0;
    for (size_t i = 0; i < n; i++)
        raw += ups[i]->json_len + 4;
    char *frame = malloc((size_t)pl + raw + 4);
    sg_blob *b = frame ? sg_blob_new(6 * ((size_t)pl * frames + raw + 4) + 3 * frames) : NULL;
    if (!b) {
        free(frame);
        return NULL;
    }
    for (size_t i = 0, f = 0; f < frames; f++) {
        size_t fl = (size_t)pl;
        memcpy(frame, pre, (size_t)pl);
        for (size_t k = 0; k < (batch ? n : 1); k++, i++) {
            if (k) frame[fl++] = ',';
            memcpy(frame + fl, ups[i]->json, ups[i]->json_len);
            fl += ups[i]->json_len;
        }
        memcpy(frame + fl, batch ? "]}]" : "]", batch ? 3 : 1);
        fl += batch ? 3 : 1;
        b->len += sg_phx_lp_string(b->data + b->len, frame, fl);
    }
    free(frame);
    b->n_updates = (int)n;
    return b;
}

static sg_blob *phx_encode(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n)
{
    char topic[SG_MAX_CONV_ID + 16];
    topic_of(g, c, topic, sizeof(topic));
    if (g->variant & V_LONGPOLL) return lp_encode(topic, g->variant & V_BATCH, ups, n);
    char pre[sizeof(topic) + 64];
    uint8_t h[10];
    if (g->variant & V_BATCH) {
        int pl = snprintf(pre, sizeof(pre), "[null,null,\"%s\",\"status_batch\",{\"updates\":[", topic);
        size_t len = pl + 3 + (n - 1);
        for (size_t i = 0; i < n; i++)
            len += ups[i]->json_len;
        sg_blob *b = sg_blob_new(len + 10);
        if (!b) return NULL;
        char *p = b->data;
        p += sg_ws_text_header((uint8_t *)p, len);
        memcpy(p, pre, pl);
        p += pl;
        for (size_t i = 0; i < n; i++) {
            if (i) *p++ = ',';
            memcpy(p, ups[i]->json, ups[i]->json_len);
            p += ups[i]->json_len;
        }
        memcpy(p, "]}]", 3);
        b->len = p + 3 - b->data;
        b->n_updates = (int)n;
        return b;
    }
    int pl = snprintf(pre, sizeof(pre), "[null,null,\"%s\",\"status_update\",", topic);
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += 10 + pl + ups[i]->json_len + 1;
    sg_blob *b = sg_blob_new(cap);
    if (!b) return NULL;
    char *p = b->data;
    for (size_t i = 0; i < n; i++) {
        size_t len = pl + ups[i]->json_len + 1;
        size_t hl = sg_ws_text_header(h, len);
        memcpy(p, h, hl);
        p += hl;
        memcpy(p, pre, pl);
        p += pl;
        memcpy(p, ups[i]->json, ups[i]->json_len);
        p += ups[i]->json_len;
        *p++ = ']';
    }
    b->len = p - b->data;
    b->n_updates = (int)n;
    return b;
}

static void phx_deliver(sg_sub *s, sg_blob *b)
{
    phx_chan *ch = (phx_chan *)s;
    if (!b) /* the frame could not be built: the socket closes, and the client rejoins */
        phx_close(ch->phx, SG_WS_CLOSE_INTERNAL, "out of memory");
    if (!b || ch->phx->io->send_shared(ch->phx->io_state, b) < 0)
        s->state = SG_SUB_DEAD;
    else
        ch->phx->srv->net.delivered_ws += b->n_updates;
}

/* The channel errs, as a Phoenix channel whose process died: phoenix.js
 * rejoins it with its params (epoch, last_seq), and the join's answer
 * says what was lost (recovered: false). */
static void phx_cut(sg_sub *s, const char *reason)
{
    phx_chan *ch = (phx_chan *)s;
    s->state = SG_SUB_DEAD;
    send_json(ch->phx, ch->join_ref, ch->join_ref, ch->topic, "phx_error", json_pack("{s:s}", "reason", reason));
}

static const sg_sub_class phx_class = {"websocket", phx_encode, phx_deliver, phx_cut};

/* ---- channels ---- */

static phx_chan *find_chan(sg_phx *p, const char *topic)
{
    for (phx_chan *ch = p->chans; ch; ch = ch->next)
        if (strcmp(ch->topic, topic) == 0) return ch;
    return NULL;
}

/* 0, or -1 when out of memory (not subscribed). */
static int chan_subscribe(phx_chan *ch)
{
    int variant = (ch->batch ? V_BATCH : 0) | (ch->conv->is_wildcard ? V_WILDCARD : 0) |
                  (ch->phx->io->longpoll ? V_LONGPOLL : 0);
    return sg_hub_subscribe(ch->phx->srv->hub, ch->conv, &ch->sub, &phx_class, ch->cats, variant,
                            ch->filter, ch);
}

/* A changed subscription; out of memory closes the socket (the client
 * rejoins with what it had). */
static void chan_resubscribe(phx_chan *ch)
{
    sg_hub_unsubscribe(ch->phx->srv->hub, &ch->sub);
    if (chan_subscribe(ch) < 0) phx_close(ch->phx, SG_WS_CLOSE_INTERNAL, "out of memory");
}

static void chan_free(sg_phx *p, phx_chan *ch)
{
    phx_chan **pp = &p->chans;
    while (*pp && *pp != ch)
        pp = &(*pp)->next;
    if (*pp) *pp = ch->next;
    p->n_chans--;
    if (ch->joining && ch->conv->is_wildcard) sg_hub_cancel_loaded(ch->conv, ch);
    sg_hub_unsubscribe(p->srv->hub, &ch->sub);
    sg_filter_unref(ch->filter);
    json_decref(ch->join_ref);
    json_decref(ch->joining);
    free(ch->topic);
    free(ch);
}

static json_t *category_list(uint64_t mask)
{
    json_t *a = json_array();
    sg_category_mask_to_json(mask, a);
    return a;
}

/* Parse a category list from a payload. Returns 0 with *mask set, or -1
 * after replying the error (invalid_categories / too_many_categories). */
static int parse_categories(sg_phx *p, json_t *jr, json_t *ref, const char *topic, json_t *list,
                            uint64_t *mask)
{
    *mask = 0;
    if (!json_is_array(list)) {
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:s}", "reason", "invalid_categories", "message",
                        "categories must be a list of names"));
        return -1;
    }
    if (json_array_size(list) > PHX_MAX_LISTED_CATEGORIES) {
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:i, s:i}", "reason", "too_many_categories", "max",
                        PHX_MAX_LISTED_CATEGORIES, "requested", (int)json_array_size(list)));
        return -1;
    }
    json_t *invalid = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c)
    {
        int ci = -1;
        if (json_is_string(c)) {
            if (strcmp(json_string_value(c), "*") == 0) {
                *mask |= sg_category_all();
                continue;
            }
            ci = sg_category_index(json_string_value(c), json_string_length(c));
        }
        if (ci < 0)
            json_array_append(invalid, c);
        else
            *mask |= 1ULL << ci;
    }
    if (json_array_size(invalid) > 0) {
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:o, s:o}", "reason", "invalid_categories", "invalid", invalid,
                        "valid", category_list(sg_category_all())));
        return -1;
    }
    json_decref(invalid);
    return 0;
}

/* Count a subscription change; -1 after replying rate_limit_exceeded. */
static int rate_limited(phx_chan *ch, json_t *jr, json_t *ref)
{
    int64_t wait_ms = sg_rate_take(&ch->changes, sg_mono_ms());
    if (wait_ms == 0) return 0;
    reply(ch->phx, jr, ref, ch->topic, 0,
          json_pack("{s:s, s:i, s:i, s:I}", "reason", "rate_limit_exceeded", "limit", PHX_RATE_LIMIT, "window_s",
                    PHX_RATE_WINDOW_MS / 1000, "retry_after_ms", (json_int_t)wait_ms));
    return -1;
}

/* Push stored updates to one channel (a replay), as its live pushes look. */
static void push_replay(phx_chan *ch, sg_update **ups, size_t n)
{
    sg_update *sel[n ? n : 1];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *dec = NULL;
        if (sg_filter_match(ch->filter, ups[i], &dec)) sel[k++] = ups[i];
        json_decref(dec);
    }
    if (!k) return;
    sg_group g = {.cls = &phx_class,
                  .variant = (ch->batch ? V_BATCH : 0) | (ch->phx->io->longpoll ? V_LONGPOLL : 0)};
    sg_blob *b = phx_encode(&g, ch->conv, sel, k);
    phx_deliver(&ch->sub, b); /* NULL (out of memory) closes: the client rejoins and resumes */
    sg_blob_unref(b);
}

/* A new channel on the socket, subscribed to the hub (filter: taken), or
 * NULL when out of memory (filter released). */
static phx_chan *chan_new(sg_phx *p, const char *topic, json_t *jr, sg_conv *cv, uint64_t cats,
                          sg_filter *filter, int batch)
{
    phx_chan *ch = calloc(1, sizeof(*ch));
    char *t = strdup(topic);
    if (!ch || !t) {
        free(ch);
        free(t);
        sg_filter_unref(filter);
        return NULL;
    }
    ch->phx = p;
    ch->topic = t;
    ch->conv = cv;
    ch->cats = cats;
    ch->filter = filter;
    ch->batch = batch;
    if (chan_subscribe(ch) < 0) {
        sg_filter_unref(filter);
        free(t);
        free(ch);
        return NULL;
    }
    ch->join_ref = json_incref(jr);
    ch->next = p->chans;
    p->chans = ch;
    p->n_chans++;
    return ch;
}

/* The join's answer: what the channel gets, and whether a resuming
 * client lost nothing. */
static void join_reply(phx_chan *ch, json_t *ref, int recovered)
{
    int wildcard = ch->conv->is_wildcard;
    json_t *resp = json_pack("{s:s, s:o, s:o, s:o, s:I, s:b}", "conversation_id",
                             wildcard ? "*" : ch->conv->id, "available_categories",
                             category_list(sg_category_all()), "subscribed_categories",
                             category_list(ch->cats), "epoch",
                             wildcard ? json_null() : json_string(ch->conv->epoch), "last_seq",
                             (json_int_t)(wildcard ? 0 : ch->conv->last_seq), "recovered", recovered);
    if (ch->filter) json_object_set_new(resp, "filter", sg_filter_json(ch->filter));
    if (ch->batch) json_object_set_new(resp, "batch", json_true());
    reply(ch->phx, ch->join_ref, ref, ch->topic, 1, resp);
}

/* status:* is heard (sg_hub_when_loaded): the join's answer. */
static void on_wildcard_ready(void *arg, sg_conv *c, int status)
{
    phx_chan *ch = arg;
    json_t *ref = ch->joining;
    ch->joining = NULL;
    join_reply(ch, ref, 0);
    json_decref(ref);
}

/* What a resuming channel missed came from the store (now or later):
 * answer the join, then replay it; live pushes follow. */
static void on_join_replay(sg_sub *s, const sg_replay *rp)
{
    phx_chan *ch = (phx_chan *)s;
    sg_phx *p = ch->phx;
    json_t *ref = ch->joining;
    ch->joining = NULL;
    if (rp->status < 0) {
        sg_log(SG_LOG_WARN, "join_replay_failed", "peer=%s topic=%s", p->peer,
               sg_log_q(ch->topic));
        reply(p, ch->join_ref, ref, ch->topic, 0,
              json_pack("{s:s, s:s}", "reason", "history_unavailable", "message",
                        "what this channel missed could not be read; join again"));
        json_decref(ref);
        chan_free(p, ch);
        return;
    }
    join_reply(ch, ref, rp->recovered);
    json_decref(ref);
    if (rp->n) push_replay(ch, rp->ups, rp->n);
    sg_log(SG_LOG_DEBUG, "channel_joined", "peer=%s topic=%s resume=1 recovered=%d",
           p->peer, sg_log_q(ch->topic), rp->recovered);
}

/* A join without last_seq whose conversation had to load first: no
 * replay, and not a resume (recovered false, as any first join). */
static void on_join_fresh(sg_sub *s, const sg_replay *rp)
{
    sg_replay fresh = *rp;
    fresh.recovered = 0;
    fresh.n = 0;
    on_join_replay(s, &fresh);
}

static void handle_join(sg_phx *p, json_t *jr, json_t *ref, const char *topic, json_t *payload)
{
    sg_server *srv = p->srv;
    if (strncmp(topic, TOPIC_PREFIX, strlen(TOPIC_PREFIX)) != 0) {
        reply_error(p, jr, ref, topic, "unmatched topic");
        return;
    }
    const char *id = topic + strlen(TOPIC_PREFIX);
    int wildcard = strcmp(id, "*") == 0;
    if (!wildcard && !sg_conv_id_valid(id, strlen(id))) {
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:s}", "reason", "invalid_topic", "message",
                        "conversation ids are 1-128 characters of [A-Za-z0-9._:@-]"));
        return;
    }
    if (!sg_claims_allow(&p->claims, id)) {
        sg_log(SG_LOG_INFO, "join_unauthorized", "peer=%s topic=%s", p->peer, sg_log_q(topic));
        reply_error(p, jr, ref, topic, "unauthorized");
        return;
    }
    phx_chan *old = find_chan(p, topic);
    int max = srv->cfg->max_channels_per_socket;
    if (!old && p->n_chans >= max) {
        reply(p, jr, ref, topic, 0, json_pack("{s:s, s:i}", "reason", "too_many_channels", "max", max));
        return;
    }

    uint64_t cats = 0;
    json_t *v = json_object_get(payload, "categories");
    if (v && !json_is_null(v) && parse_categories(p, jr, ref, topic, v, &cats) < 0) return;
    char err[200];
    sg_filter *filter = sg_filter_parse(json_object_get(payload, "filter"), err, sizeof(err));
    if (!filter && err[0]) {
        reply(p, jr, ref, topic, 0, json_pack("{s:s, s:s}", "reason", "invalid_filter", "message", err));
        return;
    }
    json_t *jepoch = json_object_get(payload, "epoch");
    json_t *jlast = json_object_get(payload, "last_seq");
    if ((jepoch && !json_is_null(jepoch) && !json_is_string(jepoch)) ||
        (jlast && !json_is_null(jlast) && (!json_is_integer(jlast) || json_integer_value(jlast) < 0))) {
        sg_filter_unref(filter);
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:s}", "reason", "invalid_payload", "message",
                        "epoch must be a string and last_seq a non-negative integer"));
        return;
    }
    sg_conv *cv;
    sg_error e;
    if (wildcard) {
        cv = sg_hub_wildcard(srv->hub);
    } else if (!(cv = sg_hub_conv(srv->hub, id, strlen(id), SG_CONV_WATCH, &e))) {
        sg_filter_unref(filter);
        reply(p, jr, ref, topic, 0, json_pack("{s:s, s:s}", "reason", e.code, "message", e.message));
        return;
    }
    /* a second join of a topic changes its subscription: it counts against
     * the same limit as set_categories and set_filter, and the count
     * carries over to the new channel */
    sg_rate changes;
    sg_rate_init(&changes, PHX_RATE_LIMIT * 1000.0 / PHX_RATE_WINDOW_MS, PHX_RATE_LIMIT);
    if (old) {
        if (rate_limited(old, jr, ref) < 0) {
            sg_filter_unref(filter);
            return;
        }
        changes = old->changes;
        /* a second join of a topic replaces the first, as in Phoenix */
        send_json(p, old->join_ref, old->join_ref, topic, "phx_close", json_object());
        chan_free(p, old);
    }

    phx_chan *ch = chan_new(p, topic, jr, cv, cats, filter, json_is_true(json_object_get(payload, "batch")));
    if (!ch) {
        reply_error(p, jr, ref, topic, "out_of_memory");
        return;
    }
    ch->changes = changes;
    if (!wildcard && cv->loading && (!jlast || !json_is_integer(jlast))) {
        /* the store reads it later: answered once it is, as a resume from now */
        ch->joining = json_incref(ref ? ref : json_null());
        sg_hub_resume(srv->hub, &ch->sub, NULL, UINT64_MAX, on_join_fresh);
        return;
    }
    if (wildcard && cv->loading) {
        /* answered once the store hears every conversation: what the
         * client publishes after the answer reaches this channel */
        ch->joining = json_incref(ref ? ref : json_null());
        if (sg_hub_when_loaded(srv->hub, cv, on_wildcard_ready, ch)) on_wildcard_ready(ch, cv, 0);
        return;
    }
    if (wildcard || !jlast || !json_is_integer(jlast)) {
        join_reply(ch, ref, 0);
        sg_log(SG_LOG_DEBUG, "channel_joined", "peer=%s topic=%s resume=0", p->peer,
               sg_log_q(topic));
        return;
    }
    ch->joining = json_incref(ref ? ref : json_null());
    sg_hub_resume(srv->hub, &ch->sub, json_is_string(jepoch) ? json_string_value(jepoch) : NULL,
                  (uint64_t)json_integer_value(jlast), on_join_replay);
}

static void read_free(phx_read *r)
{
    if (r->p) {
        if (r->prev) r->prev->next = r->next; else r->p->reads = r->next;
        if (r->next) r->next->prev = r->prev;
    }
    json_decref(r->jr);
    json_decref(r->ref);
    free(r->topic);
    free(r);
}

static void on_history_reply(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    phx_read *r = arg;
    sg_phx *p = r->p;
    if (status < 0) {
        reply(p, r->jr, r->ref, r->topic, 0,
              json_pack("{s:s, s:s}", "reason", "history_unavailable", "message",
                        "history could not be read; try again"));
        read_free(r);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (b) {
        evbuffer_add_printf(b, "{\"status\":\"ok\",\"response\":{\"updates\":[");
        for (size_t i = 0; i < n; i++) {
            if (i) evbuffer_add(b, ",", 1);
            evbuffer_add(b, ups[i]->json, ups[i]->json_len);
        }
        evbuffer_add_printf(b, "],\"oldest_seq\":%llu}}", (unsigned long long)oldest);
        size_t len = evbuffer_get_length(b);
        send_raw(p, r->jr, r->ref, r->topic, "phx_reply", (const char *)evbuffer_pullup(b, -1), len);
        evbuffer_free(b);
    }
    read_free(r);
}

static void handle_history(phx_chan *ch, json_t *jr, json_t *ref, json_t *payload)
{
    sg_phx *p = ch->phx;
    if (ch->conv->is_wildcard) {
        reply_error(p, jr, ref, ch->topic, "status:* has no history; ask a conversation's topic");
        return;
    }
    json_t *js = json_object_get(payload, "since"), *jl = json_object_get(payload, "limit");
    if ((js && !json_is_integer(js)) || (jl && !json_is_integer(jl)) ||
        (js && json_integer_value(js) < 0) || (jl && json_integer_value(jl) < 1)) {
        reply(p, jr, ref, ch->topic, 0,
              json_pack("{s:s, s:s}", "reason", "invalid_payload", "message",
                        "since must be a non-negative integer and limit a positive one"));
        return;
    }
    uint64_t mask = sg_category_all();
    json_t *jc = json_object_get(payload, "categories");
    if (jc && parse_categories(p, jr, ref, ch->topic, jc, &mask) < 0) return;
    phx_read *r = calloc(1, sizeof(*r));
    if (!r || !(r->topic = strdup(ch->topic))) {
        free(r);
        reply_error(p, jr, ref, ch->topic, "out_of_memory");
        return;
    }
    r->p = p;
    r->jr = json_incref(jr);
    r->ref = json_incref(ref);
    r->next = p->reads;
    if (p->reads) p->reads->prev = r;
    p->reads = r;
    sg_read *rd = sg_hub_history(p->srv->hub, ch->conv, js ? (uint64_t)json_integer_value(js) : 0, 0,
                                 jl ? (size_t)json_integer_value(jl) : (size_t)p->srv->cfg->history_size,
                                 mask, on_history_reply, r);
    if (rd) r->read = rd; /* answered later; r is freed by the answer or by phx_free */
}

static json_t *descriptions(void)
{
    json_t *d = json_object();
    for (int i = 0; i < sg_category_count(); i++)
        json_object_set_new(d, sg_category_name(i), json_string(sg_category_desc(i)));
    return d;
}

static void handle_event(phx_chan *ch, json_t *jr, json_t *ref, const char *event,
                         json_t *payload)
{
    sg_phx *p = ch->phx;
    const char *topic = ch->topic;
    if (strcmp(event, "subscribe_categories") == 0 ||
        strcmp(event, "unsubscribe_categories") == 0) {
        uint64_t mask;
        if (parse_categories(p, jr, ref, topic, json_object_get(payload, "categories"), &mask) < 0)
            return;
        if (rate_limited(ch, jr, ref) < 0) return;
        ch->cats = event[0] == 's' ? ch->cats | mask : ch->cats & ~mask;
        chan_resubscribe(ch);
        reply(p, jr, ref, topic, 1, json_pack("{s:o}", "subscribed", category_list(ch->cats)));
    } else if (strcmp(event, "get_subscriptions") == 0) {
        reply(p, jr, ref, topic, 1,
              json_pack("{s:o, s:o}", "subscribed_categories", category_list(ch->cats),
                        "available_categories", category_list(sg_category_all())));
    } else if (strcmp(event, "get_available_categories") == 0) {
        reply(p, jr, ref, topic, 1,
              json_pack("{s:o, s:o}", "available_categories", category_list(sg_category_all()),
                        "descriptions", descriptions()));
    } else if (strcmp(event, "set_filter") == 0) {
        char err[200];
        json_t *spec = json_object_get(payload, "filter");
        sg_filter *f = sg_filter_parse(spec, err, sizeof(err));
        if (!f && err[0]) {
            reply(p, jr, ref, topic, 0,
                  json_pack("{s:s, s:s}", "reason", "invalid_filter", "message", err));
            return;
        }
        if (rate_limited(ch, jr, ref) < 0) {
            sg_filter_unref(f);
            return;
        }
        sg_filter_unref(ch->filter);
        ch->filter = f;
        chan_resubscribe(ch);
        reply(p, jr, ref, topic, 1, json_pack("{s:o}", "filter", sg_filter_json(f)));
    } else if (strcmp(event, "history") == 0) {
        handle_history(ch, jr, ref, payload);
    } else {
        reply(p, jr, ref, topic, 0,
              json_pack("{s:s, s:s}", "reason", "unknown_event", "event", event));
    }
}

static void phx_on_text(sg_phx *p, const char *msg, size_t len)
{
    json_t *m = json_loadb(msg, len, 0, NULL);
    json_t *jr = json_array_get(m, 0), *ref = json_array_get(m, 1);
    json_t *jt = json_array_get(m, 2), *je = json_array_get(m, 3), *payload = json_array_get(m, 4);
    if (!json_is_array(m) || json_array_size(m) != 5 || !(json_is_string(jr) || json_is_null(jr)) ||
        !(json_is_string(ref) || json_is_null(ref)) || !json_is_string(jt) || !json_is_string(je)) {
        sg_log(SG_LOG_INFO, "websocket_bad_message", "peer=%s bytes=%zu", p->peer, len);
        phx_close(p, SG_WS_CLOSE_UNSUPPORTED,
                    "expected a Phoenix V2 message [join_ref, ref, topic, event, payload]");
        json_decref(m);
        return;
    }
    const char *topic = json_string_value(jt), *event = json_string_value(je);
    if (strcmp(topic, "phoenix") == 0) {
        if (strcmp(event, "heartbeat") == 0)
            reply(p, jr, ref, topic, 1, json_object());
        else
            reply_error(p, jr, ref, topic, "unmatched topic");
    } else if (strcmp(event, "phx_join") == 0) {
        handle_join(p, jr, ref, topic, payload);
    } else {
        phx_chan *ch = find_chan(p, topic);
        if (!ch) {
            reply_error(p, jr, ref, topic, "unmatched topic");
        } else if (ch->joining && strcmp(event, "phx_leave") != 0) {
            /* as a Phoenix channel does nothing before its join returns */
            reply_error(p, jr, ref, topic, "join_in_progress");
        } else if (strcmp(event, "phx_leave") == 0) {
            reply(p, jr, ref, topic, 1, json_object());
            send_json(p, ch->join_ref, ch->join_ref, topic, "phx_close", json_object());
            chan_free(p, ch);
        } else {
            handle_event(ch, jr, ref, event, payload);
        }
    }
    json_decref(m);
}

static char *b64url_decode(const char *s)
{
    size_t n = strlen(s);
    char *std = malloc(n + 4);
    if (!std) return NULL;
    size_t i;
    for (i = 0; i < n; i++)
        std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (i % 4)
        std[i++] = '=';
    std[i] = 0;
    unsigned char *out = malloc(i + 1);
    int len = out ? EVP_DecodeBlock(out, (unsigned char *)std, (int)i) : -1;
    free(std);
    if (len < 0) {
        free(out);
        return NULL;
    }
    if ((size_t)len > n * 3 / 4) len = (int)(n * 3 / 4); /* drop the padding's bytes */
    out[len] = 0;
    return (char *)out;
}

/* phoenix.js 1.8 offers "phoenix, base64url.bearer.phx.<token>" */
static char *subprotocol_token(const char *list)
{
    static const char pre[] = "base64url.bearer.phx.";
    const char *p = list ? strstr(list, pre) : NULL;
    if (!p) return NULL;
    p += sizeof(pre) - 1;
    size_t n = strcspn(p, ", \t");
    char *enc = strndup(p, n);
    char *tok = enc ? b64url_decode(enc) : NULL;
    free(enc);
    return tok;
}

sg_phx *sg_phx_new(sg_server *srv, const char *peer, sg_claims *claims, const sg_phx_io *io, void *io_state)
{
    sg_phx *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->claims = *claims;
    memset(claims, 0, sizeof(*claims));
    p->io = io;
    p->io_state = io_state;
    p->srv = srv;
    p->peer = peer;
    return p;
}

void sg_phx_message(sg_phx *p, const char *msg, size_t len)
{
    phx_on_text(p, msg, len);
}

void sg_phx_free(sg_phx *p)
{
    if (!p) return;
    while (p->chans)
        chan_free(p, p->chans);
    while (p->reads) {
        sg_read_cancel(p->reads->read);
        read_free(p->reads);
    }
    sg_claims_clear(&p->claims);
    free(p);
}

/* ---- over a WebSocket ---- */

static void ws_send_text(void *io, const char *frame, size_t len)
{
    sg_ws_send_text(io, frame, len);
}

static int ws_send_shared(void *io, sg_blob *b)
{
    return sg_ws_send_shared(io, b);
}

static void ws_close(void *io, int code, const char *reason)
{
    sg_ws_close(io, code, reason);
}

static const sg_phx_io ws_io = {ws_send_text, ws_send_shared, ws_close, 0};

/* The Phoenix parameters of a connection's request: the serializer's
 * version, then the token with the Origin. 0, or -1 with err. */
int sg_phx_check(sg_conn *c, sg_req *r, const char *tok, sg_claims *claims, sg_error *err)
{
    char vsn[32];
    if (sg_req_query(r, "vsn", vsn, sizeof(vsn)) == 0 && strncmp(vsn, "2.", 2) != 0) {
        sg_error_set(err, 400, "unsupported_vsn", NULL, "only the Phoenix V2 serializer (vsn=2.0.0) is spoken");
        return -1;
    }
    return sg_security_subscriber_check(c->srv->security, sg_req_header(r, "origin"), tok, NULL, claims, err);
}

/* A socket asks to speak Phoenix V2: the token is ?token=, or phoenix.js's
 * subprotocol. */
static void *phx_accept(sg_ws *ws, sg_conn *c, sg_req *r, sg_error *err)
{
    char tok[SG_MAX_TOKEN] = "";
    if (sg_req_query(r, "token", tok, sizeof(tok)) < 0) {
        char *t = subprotocol_token(sg_req_header(r, "sec-websocket-protocol"));
        if (t) snprintf(tok, sizeof(tok), "%s", t);
        free(t);
    }
    sg_claims claims;
    memset(&claims, 0, sizeof(claims));
    if (sg_phx_check(c, r, tok, &claims, err) < 0) return NULL;
    sg_phx *p = sg_phx_new(c->srv, c->peer, &claims, &ws_io, ws);
    if (!p) {
        sg_claims_clear(&claims);
        sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
    }
    return p;
}

static void phx_on_message(void *state, const char *msg, size_t len)
{
    phx_on_text(state, msg, len);
}

static void phx_free(void *state)
{
    sg_phx_free(state);
}

const sg_ws_handler sg_phx_handler = {"phoenix", phx_accept, phx_on_message, phx_free};
