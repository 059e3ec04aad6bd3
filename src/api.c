#include "api.h"

#include "loadwait.h"

#include "clock.h"
#include "hub.h"
#include "server.h"
#include "log.h"
#include "ingest.h"
#include "jtext.h"
#include "metrics.h"
#include "security.h"
#include "plugin.h"
#include "dashboard.h"
#include "longpoll.h"
#include "sse.h"
#include "webhook.h"
#include "phoenix.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PREFIX_CONV "/api/v1/conversations/"
#define PREFIX_ADMIN "/admin/"
#define PREFIX_WEBHOOKS "/admin/webhooks/"

static int ctype_is(const sg_req *r, const char *want)
{
    const char *ct = sg_req_header(r, "content-type");
    size_t n = strlen(want);
    return ct && strncasecmp(ct, want, n) == 0 && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

static void method_not_allowed(sg_conn *c, const char *allow)
{
    sg_error e;
    char extra[64];
    sg_error_set(&e, 405, "method_not_allowed", NULL, "use %s", allow);
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    sg_http_json(c, 405, sg_error_json(&e), extra);
}

/* A parsed update (parsed < 0: it failed to parse, err says why) counted
 * as received and checked against the producer's key (NULL: open mode).
 * 0 when it may go on to ingest, -1 with err (counted as rejected). */
static int admit(sg_api_key *key, const sg_draft *d, int parsed, sg_error *err)
{
    sg_metrics_received(1);
    int rc = parsed;
    if (rc == 0 && key) rc = sg_security_may_publish(key, d->conv_id, err);
    if (rc < 0) sg_metrics_rejected(err->code);
    return rc;
}

/* Count what ingest made of an admitted update. */
static void count(int rc, const sg_publish_result *res, const sg_error *err)
{
    if (rc < 0) sg_metrics_rejected(err->code);
    else if (res->dropped) sg_metrics_dropped();
}

/* A publish refused as a whole request (auth, media type). */
static void refuse_publish(sg_conn *c, const sg_error *err)
{
    sg_metrics_received(1);
    sg_metrics_rejected(err->code);
    sg_http_error(c, err);
}

/* With no api_keys, a publish from another host needs the config's consent. */
static int keyless_ok(sg_conn *c, sg_req *r, sg_error *err)
{
    if (sg_security_keyless_publish_ok(c->srv->security, r->client)) return 0;
    sg_security_stats_of(c->srv->security)->publisher_denied++;
    sg_error_set(err, 401, "unauthorized", NULL,
                 "publishing from another host needs an API key (security.api_keys), or "
                 "security.allow_keyless_remote_publish = true");
    return -1;
}

/* {"conversation_id","seq","epoch"[,"duplicate"]} into out (room for
 * REPLY_MAX bytes). Returns its length. */
static size_t accepted_reply(const char *conv_id, uint64_t seq, const char *epoch, int duplicate, char *out)
{
    char *p = out;
#define PUT(lit) (memcpy(p, lit, sizeof(lit) - 1), p += sizeof(lit) - 1)
    PUT("{\"conversation_id\":\"");
    size_t n = strlen(conv_id);
    memcpy(p, conv_id, n);
    p += n;
    PUT("\",\"seq\":");
    p += sg_fmt_int((long long)seq, p);
    PUT(",\"epoch\":\"");
    n = strlen(epoch);
    memcpy(p, epoch, n);
    p += n;
    PUT("\"");
    if (duplicate) PUT(",\"duplicate\":true");
    PUT("}");
    return (size_t)(p - out);
}

/* The answer to one publish a filter dropped or the hub accepted, as JSON
 * text into out (room for REPLY_MAX bytes). Returns its length. */
static size_t publish_reply(const sg_publish_result *res, char *out)
{
    char *p = out;
    if (res->dropped) {
        PUT("{\"dropped\":true,\"dropped_by\":");
        p += sg_json_escape(res->dropped_by, strnlen(res->dropped_by, sizeof(res->dropped_by)), p);
        PUT("}");
        return (size_t)(p - out);
    }
#undef PUT
    return accepted_reply(res->conv->id, res->seq, res->conv->epoch, res->duplicate, out);
}

#define REPLY_MAX (SG_MAX_CONV_ID + 448) /* conv id, epoch, or a plugin name escaped */

/* ---- answers given once what they acknowledge is committed ----
 *
 * With a durable store, a 202 is written only once every update it
 * acknowledges is committed (store.h, sync). The answer is held in its
 * place (sg_conn_hold): the connection goes on reading the publishes
 * pipelined after it, which join the same commit, and the answers go out
 * in order. */

typedef struct committed_answer {
    sg_held *h;
    size_t len;
    char body[];
} committed_answer;

static void answer_committed(void *arg, int status)
{
    committed_answer *w = arg;
    if (status == 0) {
        sg_held_respond(w->h, 202, "application/json", w->body, w->len, NULL);
    } else {
        sg_error e;
        sg_error_set(&e, 503, "store_unavailable", NULL,
                     "the update could not be stored; retry (with the same idempotency_key, to be safe)");
        sg_held_error(w->h, &e);
    }
    free(w);
}

/* 202 with body, once it is committed. resume: the connection awaits this
 * answer (sg_conn_await) and goes on after it. */
static void respond_committed(sg_conn *c, const char *body, size_t len, int resume)
{
    sg_store *st = c->srv->store;
    committed_answer *w = st->ops->sync ? malloc(sizeof(*w) + len) : NULL;
    sg_held *h = w ? sg_conn_hold(c) : NULL;
    if (!st->ops->sync) {
        sg_http_respond(c, 202, "application/json", body, len, NULL);
    } else if (!h) {
        free(w);
        sg_error e;
        sg_error_set(&e, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &e);
    } else {
        w->h = h;
        w->len = len;
        memcpy(w->body, body, len);
        st->ops->sync(st, answer_committed, w);
    }
    if (resume) sg_conn_resume(c);
}

/* ---- answers the Redis engine gives later ----
 *
 * A publish the engine sequences (res->pub) is answered when Redis
 * answers: held in its place meanwhile, as a committed answer is. */

static void answer_pub(void *arg, sg_pub *p)
{
    if (p->status < 0) {
        sg_held_error(arg, &p->err);
        return;
    }
    char reply[REPLY_MAX + 1];
    size_t n = accepted_reply(p->conv_id, p->seq, p->epoch, p->duplicate, reply);
    reply[n++] = '\n';
    sg_held_respond(arg, 202, "application/json", reply, n, NULL);
}

static void respond_pub(sg_conn *c, sg_pub *p, int resume)
{
    sg_held *h = sg_conn_hold(c);
    if (h) {
        p->then = answer_pub;
        p->then_arg = h;
    } else { /* it is sequenced all the same; the producer retries it */
        sg_error e;
        sg_error_set(&e, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &e);
    }
    if (resume) sg_conn_resume(c);
}

/* Answer one publish: 202 with the reply (once committed), or the error.
 * resume: as respond_committed. */
static void answer(sg_conn *c, int rc, const sg_publish_result *res, const sg_error *err, int resume)
{
    if (rc == 0 && res->pub) {
        respond_pub(c, res->pub, resume);
        return;
    }
    if (rc < 0) {
        sg_http_error(c, err);
        if (resume) sg_conn_resume(c);
        return;
    }
    char reply[REPLY_MAX + 1];
    size_t n = publish_reply(res, reply);
    reply[n++] = '\n';
    respond_committed(c, reply, n, resume);
}

/* ---- publishes that wait for their plugins ----
 *
 * A publish that would run plugins waits (ingest.c, sg_ingest_defer) until
 * this loop turn has read every request that arrived; the connection
 * parses no further request until its answer is written, then goes on
 * with what it pipelined. */

typedef struct awaiting {
    sg_conn *c; /* NULL once the connection is gone */
    int rc;
    sg_pub *pub; /* the engine's answer to come */
    sg_error err;
    size_t n;
    char reply[REPLY_MAX + 1];
} awaiting;

static void deferred_done(void *arg, int rc, const sg_publish_result *res, const sg_error *err)
{
    awaiting *a = arg;
    count(rc, res, err);
    a->rc = rc;
    if (rc < 0) {
        a->err = *err;
    } else if (res->pub) {
        a->pub = res->pub;
    } else {
        a->n = publish_reply(res, a->reply);
        a->reply[a->n++] = '\n';
    }
}

static void deferred_release(void *arg, int resume)
{
    awaiting *a = arg;
    sg_conn *c = a->c;
    if (c && !resume) {
        c->awaited_by = NULL;
    } else if (c && a->rc < 0) {
        sg_http_error(c, &a->err);
        sg_conn_resume(c);
    } else if (c && a->pub) {
        respond_pub(c, a->pub, 1);
    } else if (c) {
        respond_committed(c, a->reply, a->n, 1);
    }
    free(a);
}

static const sg_ingest_waiter publish_waiter = {deferred_done, deferred_release};

/* Queue the draft (moved) for this turn's run. 0, or -1 when there is no
 * memory for it: publish it at once then. */
static int wait_for_batch(sg_conn *c, sg_draft *d)
{
    awaiting *a = malloc(sizeof(*a));
    if (!a) return -1;
    a->c = c;
    a->pub = NULL;
    a->rc = -1;
    sg_error_set(&a->err, 503, "out_of_memory", NULL, "the gateway is out of memory");
    if (sg_ingest_defer(c->srv, d, &publish_waiter, a) < 0) {
        free(a);
        return -1;
    }
    sg_conn_await(c, &a->c);
    return 0;
}

static void handle_publish(sg_conn *c, sg_req *r)
{
    sg_error err;
    if (!ctype_is(r, "application/json")) {
        sg_error_set(&err, 415, "unsupported_media_type", NULL,
                     "send the update as Content-Type: application/json");
        refuse_publish(c, &err);
        return;
    }
    sg_api_key *key;
    if (sg_security_publisher(c->srv->security, sg_req_header(r, "authorization"), &key, &err) < 0) {
        refuse_publish(c, &err);
        return;
    }
    if (!key && keyless_ok(c, r, &err) < 0) {
        refuse_publish(c, &err);
        return;
    }
    r->key_name = sg_security_key_name(key);
    sg_server *s = c->srv;
    sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
    sg_draft d;
    int parsed = sg_draft_parse(r->body ? r->body : "", r->body_len, &lim, &d, &err);
    if (admit(key, &d, parsed, &err) < 0) {
        if (parsed == 0) sg_draft_free(&d);
        sg_http_error(c, &err);
        return;
    }
    if ((d.builder || sg_plugins_have_filters(s->plugins)) && !c->parser.upgrade &&
        wait_for_batch(c, &d) == 0)
        return;
    sg_publish_result res;
    sg_clock_hold();
    int rc = sg_ingest(s, &d, NULL, &res, &err);
    count(rc, &res, &err);
    answer(c, rc, &res, &err, 0);
    sg_clock_release();
    sg_draft_free(&d);
}

typedef struct obuf {
    char *s;
    size_t n, cap;
} obuf;

static char *ob_room(obuf *b, size_t k)
{
    if (b->n + k > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + k)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) return NULL;
        b->s = s;
        b->cap = cap;
    }
    return b->s + b->n;
}

static void ob_put(obuf *b, const char *s, size_t k)
{
    char *o = ob_room(b, k);
    if (!o) return;
    memcpy(o, s, k);
    b->n += k;
}

/* One item of a bulk request: NDJSON keeps its line to parse; a JSON
 * array is parsed whole before anything is published. */
typedef struct item {
    const char *s;
    size_t n;
    int line;
    int rc;      /* the parse result, then the publish's (0 or -1 with err) */
    sg_draft d;
    sg_error err;
    size_t reply_off, reply_len; /* an accepted one's reply, in the run's replies */
    sg_pub *pub;                 /* or the Redis engine's answer to come */
    int dropped;                 /* a filter dropped it: answered so, not accepted */
} item;

/* Parse a JSON array of updates into items; the drafts' strings land in
 * scratch. -1 with err when the body is not a well-formed array. */
/* Room for one more item in *items (zeroed, so every draft can be
 * freed): 0, or -1 out of memory. */
static int items_room(item **items, size_t *cap, size_t n, size_t max)
{
    if (n < *cap) return 0;
    size_t nc = *cap * 2 < max + 1 ? *cap * 2 : max + 1;
    item *ni = realloc(*items, nc * sizeof(*ni));
    if (!ni) return -1;
    memset(ni + *cap, 0, (nc - *cap) * sizeof(*ni));
    *items = ni;
    *cap = nc;
    return 0;
}

static int parse_array(const char *body, size_t len, char *scratch, item **items, size_t *cap, size_t max,
                       size_t *n, const sg_limits *lim, sg_error *err)
{
    sg_jtext j;
    sg_jtext_init(&j, body, len, scratch);
    sg_jtext_ws(&j);
    *n = 0;
    if (len == 0) {
        sg_error_set(err, 400, "invalid_json", NULL, "the request body is empty");
        return -1;
    }
    if (j.p >= j.end || *j.p != '[') {
        if (sg_jtext_value(&j) < 0) goto syntax;
        sg_error_set(err, 400, "invalid_body", NULL, "the bulk body must be a JSON array of updates");
        return -1;
    }
    j.p++;
    sg_jtext_ws(&j);
    if (j.p < j.end && *j.p == ']') {
        j.p++;
    } else {
        for (;;) {
            if (*n == max) {
                sg_error_set(err, 413, "too_many_items", NULL, "more than %zu updates in one request", max);
                return -1;
            }
            if (items_room(items, cap, *n, max) < 0) {
                sg_error_set(err, 503, "out_of_memory", NULL, "out of memory");
                return -1;
            }
            item *it = &(*items)[(*n)++];
            int syntax;
            it->rc = sg_draft_scan(&j, 0, lim, &it->d, &it->err, &syntax);
            if (syntax) {
                *err = it->err;
                return -1;
            }
            sg_jtext_ws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                sg_jtext_ws(&j);
                continue;
            }
            if (j.p < j.end && *j.p == ']') {
                j.p++;
                break;
            }
            snprintf(j.err, sizeof(j.err), "expected ',' or ']' at byte %zu", (size_t)(j.p - j.start));
            goto syntax;
        }
    }
    sg_jtext_ws(&j);
    if (j.p == j.end) return 0;
    snprintf(j.err, sizeof(j.err), "data after the end of the value at byte %zu", (size_t)(j.p - j.start));
syntax:
    if (j.utf8) sg_error_set(err, 400, "invalid_utf8", NULL, "the body is not valid UTF-8: %s", j.err);
    else sg_error_set(err, 400, "invalid_json", NULL, "malformed JSON: %s", j.err);
    return -1;
}

/* A bulk request's run through ingest: replies land in one buffer as
 * they come (dropped ones first), and are put in order afterwards. */
typedef struct bulk_run {
    item *items;
    size_t *admitted; /* run index -> item index */
    obuf replies;
} bulk_run;

static void bulk_done(void *arg, size_t i, int rc, const sg_publish_result *res,
                      const sg_error *err)
{
    bulk_run *run = arg;
    item *it = &run->items[run->admitted[i]];
    count(rc, res, err);
    it->rc = rc;
    if (rc < 0) {
        it->err = *err;
        return;
    }
    if (res->pub) {
        it->pub = res->pub;
        return;
    }
    char *o = ob_room(&run->replies, REPLY_MAX);
    it->dropped = res->dropped;
    it->reply_off = run->replies.n;
    it->reply_len = o ? publish_reply(res, o) : 0;
    run->replies.n += it->reply_len;
}

/* Split an NDJSON body into items, one a non-blank line, and parse each
 * into a draft of its own. The count in *n; -1 with a 413 in err past max. */
static int ndjson_items(const char *p, const char *end, item *items, size_t max, size_t *n,
                        const sg_limits *lim, sg_error *err)
{
    int line = 0;
    *n = 0;
    while (p < end && *n <= max) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q < le) {
            items[*n].s = p;
            items[*n].n = (size_t)(le - p);
            items[(*n)++].line = line;
        }
        p = nl ? nl + 1 : end;
    }
    if (*n > max) {
        sg_error_set(err, 413, "too_many_items", NULL, "more than %zu updates in one request", max);
        return -1;
    }
    for (size_t i = 0; i < *n; i++) {
        item *it = &items[i];
        it->rc = sg_draft_parse(it->s, it->n, lim, &it->d, &it->err);
        if (it->rc < 0 && (strcmp(it->err.code, "invalid_json") == 0 || strcmp(it->err.code, "invalid_utf8") == 0)) {
            char msg[sizeof(it->err.message)];
            snprintf(msg, sizeof(msg), "line %d: %.180s", it->line, it->err.message);
            snprintf(it->err.message, sizeof(it->err.message), "%s", msg);
        }
    }
    return 0;
}

/* Admit the parsed items (the key's pattern and rate) and take the
 * admitted ones through ingest together, plugin by plugin. -1 when out of
 * memory. */
static int bulk_ingest(sg_conn *c, sg_api_key *key, item *items, size_t n, bulk_run *run)
{
    run->items = items;
    run->admitted = malloc(n * sizeof(*run->admitted));
    sg_draft **ds = malloc(n * sizeof(*ds));
    if (!run->admitted || !ds) {
        free(run->admitted);
        free(ds);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        items[i].rc = admit(key, &items[i].d, items[i].rc, &items[i].err);
        if (items[i].rc == 0) {
            run->admitted[k] = i;
            ds[k++] = &items[i].d;
        }
    }
    sg_clock_hold();
    sg_ingest_many(c->srv, ds, k, NULL, bulk_done, run);
    sg_clock_release();
    free(run->admitted);
    free(ds);
    return 0;
}

/* A bulk answer: each item's reply or error, as it becomes known (the
 * Redis engine answers its items later), then the whole in input order. */
typedef struct bulk_slot {
    struct bulk_answer *ba;
    const char *p; /* the text where it is (answered now), or NULL: in ba->texts at off */
    size_t off, len;
    int kind; /* 'a' accepted, 'd' dropped, 'r' rejected */
} bulk_slot;

typedef struct bulk_answer {
    sg_held *h; /* while items wait for the engine */
    size_t n, pending;
    obuf texts;
    bulk_slot slot[];
} bulk_answer;

static void slot_put(bulk_slot *sl, int kind, const char *s, size_t len)
{
    sl->kind = kind;
    sl->p = NULL;
    sl->off = sl->ba->texts.n;
    ob_put(&sl->ba->texts, s, len);
    sl->len = sl->ba->texts.n - sl->off;
}

static void slot_error(bulk_slot *sl, const sg_error *err)
{
    json_t *ej = sg_error_json(err);
    char *es = json_dumps(ej, JSON_COMPACT);
    slot_put(sl, 'r', es ? es : "{}", es ? strlen(es) : 2);
    free(es);
    json_decref(ej);
}

/* 202 {"accepted","dropped","rejected","results":[…]}, in input order;
 * NULL when out of memory. */
static char *bulk_text(bulk_answer *ba, size_t *len)
{
    int count[3] = {0, 0, 0};
    obuf b = {0};
    char head[64];
    for (size_t i = 0; i < ba->n; i++)
        count[ba->slot[i].kind == 'a' ? 0 : ba->slot[i].kind == 'd' ? 1 : 2]++;
    int hn = snprintf(head, sizeof(head), "{\"accepted\":%d,\"dropped\":%d,\"rejected\":%d,\"results\":[", count[0],
                      count[1], count[2]);
    ob_put(&b, head, (size_t)hn);
    int lost = 0; /* a put found no memory */
    for (size_t i = 0; i < ba->n; i++) {
        const bulk_slot *sl = &ba->slot[i];
        lost |= !sl->p && !ba->texts.s;
        if (i) ob_put(&b, ",", 1);
        ob_put(&b, sl->p ? sl->p : ba->texts.s + sl->off, sl->len);
    }
    ob_put(&b, "]}\n", 3);
    if (lost || b.n < (size_t)hn + 3 + ba->n) {
        free(b.s);
        return NULL;
    }
    *len = b.n;
    return b.s;
}

static void bulk_answer_free(bulk_answer *ba)
{
    free(ba->texts.s);
    free(ba);
}

/* The engine answered one item; the last one sends the answer. */
static void bulk_pub_done(void *arg, sg_pub *p)
{
    bulk_slot *sl = arg;
    bulk_answer *ba = sl->ba;
    if (p->status < 0) {
        slot_error(sl, &p->err);
    } else {
        char reply[REPLY_MAX];
        slot_put(sl, 'a', reply, accepted_reply(p->conv_id, p->seq, p->epoch, p->duplicate, reply));
    }
    if (--ba->pending) return;
    size_t len;
    char *text = bulk_text(ba, &len);
    if (text) {
        sg_held_respond(ba->h, 202, "application/json", text, len, NULL);
    } else {
        sg_error err;
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        sg_held_error(ba->h, &err);
    }
    free(text);
    bulk_answer_free(ba);
}

static void bulk_reply(sg_conn *c, item *items, size_t n, bulk_run *run)
{
    sg_error err;
    sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
    bulk_answer *ba = calloc(1, sizeof(*ba) + n * sizeof(bulk_slot));
    if (!ba) {
        sg_http_error(c, &err);
        return;
    }
    ba->n = n;
    for (size_t i = 0; i < n; i++)
        ba->pending += items[i].rc == 0 && items[i].pub;
    for (size_t i = 0; i < n; i++) {
        bulk_slot *sl = &ba->slot[i];
        sl->ba = ba;
        if (items[i].rc == 0 && items[i].pub) {
            continue;
        } else if (items[i].rc == 0 && items[i].reply_len > 0) {
            /* a deliberate drop is answered as such, and is not accepted;
             * answered now, the reply is read where it is */
            const char *text = run->replies.s + items[i].reply_off;
            if (ba->pending) {
                slot_put(sl, items[i].dropped ? 'd' : 'a', text, items[i].reply_len);
            } else {
                *sl = (bulk_slot){ba, text, 0, items[i].reply_len, items[i].dropped ? 'd' : 'a'};
            }
        } else {
            slot_error(sl, items[i].rc == 0 ? &err : &items[i].err); /* accepted, but its reply found no memory */
        }
    }
    if (ba->pending && (ba->h = sg_conn_hold(c))) {
        for (size_t i = 0; i < n; i++)
            if (items[i].rc == 0 && items[i].pub) {
                items[i].pub->then = bulk_pub_done;
                items[i].pub->then_arg = &ba->slot[i];
            }
        return;
    }
    size_t len;
    char *text = ba->pending ? NULL : bulk_text(ba, &len);
    if (text) respond_committed(c, text, len, 0);
    else sg_http_error(c, &err);
    free(text);
    bulk_answer_free(ba);
}

static void handle_bulk(sg_conn *c, sg_req *r)
{
    sg_error err;
    sg_api_key *key;
    if (sg_security_publisher(c->srv->security, sg_req_header(r, "authorization"), &key, &err) < 0 ||
        (!key && keyless_ok(c, r, &err) < 0)) {
        sg_http_error(c, &err);
        return;
    }
    r->key_name = sg_security_key_name(key);
    int ndjson = ctype_is(r, "application/x-ndjson");
    if (!ndjson && !ctype_is(r, "application/json")) {
        sg_error_set(&err, 415, "unsupported_media_type", NULL,
                     "send a JSON array as application/json or one object a line as "
                     "application/x-ndjson");
        sg_http_error(c, &err);
        return;
    }
    sg_limits lim = {c->srv->cfg->max_text, c->srv->cfg->max_metadata};
    size_t max = (size_t)c->srv->cfg->max_bulk_items;
    /* as many items as NDJSON has lines (it has to see one past max to
     * refuse it); an array's grow as it is parsed */
    size_t cap = 64;
    if (ndjson) {
        cap = 1;
        for (const char *q = r->body, *e = q ? q + r->body_len : NULL; q && q < e && cap <= max; cap++)
            if ((q = memchr(q, '\n', (size_t)(e - q)))) q++;
    }
    if (cap > max + 1) cap = max + 1;
    item *items = calloc(cap, sizeof(*items)); /* zeroed: every draft can be freed */
    char *scratch = ndjson ? NULL : malloc(r->body_len + 1);
    size_t n = 0;
    const char *p = r->body ? r->body : "";
    bulk_run run = {0};
    int rc;
    if (!items || (!ndjson && !scratch)) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        rc = -1;
    } else if (ndjson) {
        rc = ndjson_items(p, p + r->body_len, items, max, &n, &lim, &err);
    } else {
        rc = parse_array(p, r->body_len, scratch, &items, &cap, max, &n, &lim, &err);
    }
    if (rc == 0 && n == 0) {
        sg_error_set(&err, 400, "empty_bulk", NULL, "the bulk request holds no updates");
        rc = -1;
    }
    if (rc == 0 && bulk_ingest(c, key, items, n, &run) < 0) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        rc = -1;
    }
    if (rc == 0)
        bulk_reply(c, items, n, &run);
    else
        sg_http_error(c, &err);
    free(run.replies.s);
    /* array drafts point into scratch; a plugin may have given one a
     * buffer of its own */
    for (size_t i = 0; i < n; i++)
        sg_draft_free(&items[i].d);
    free(items);
    free(scratch);
}

/* GET /api/v1/stats: its reals are rounded; 15 digits writes them so */
static void stats_reply(sg_conn *c)
{
    json_t *v = sg_stats_json(c->srv);
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(v);
    if (!s) {
        sg_error err;
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        sg_http_error(c, &err);
        return;
    }
    size_t n = strlen(s);
    s[n] = '\n';
    sg_http_respond(c, 200, "application/json", s, n + 1, NULL);
    free(s);
}

static int query_uint(sg_req *r, const char *name, unsigned long long def,
                      unsigned long long *out, sg_error *err)
{
    char buf[64];
    *out = def;
    if (sg_req_query(r, name, buf, sizeof(buf)) < 0) return 0;
    char *end;
    errno = 0;
    *out = strtoull(buf, &end, 10);
    /* a value that fills the buffer was cut short: refused like one out of range */
    if (!buf[0] || *end || buf[0] == '-' || errno == ERANGE || strlen(buf) >= sizeof(buf) - 1) {
        sg_error_set(err, 400, "invalid_parameter", name, "%s must be a non-negative integer",
                     name);
        return -1;
    }
    return 0;
}

/* Operators' reads (conversation list, stats): an API key or the admin
 * key, unless nothing is configured. */
static int may_read_all(sg_conn *c, sg_req *r)
{
    sg_security *sec = c->srv->security;
    if (sg_security_open(sec)) return 1;
    const char *auth = sg_req_header(r, "authorization");
    sg_api_key *key;
    sg_error err;
    if (sg_security_has_api_keys(sec) && sg_security_publisher(sec, auth, &key, &err) == 0) {
        r->key_name = sg_security_key_name(key);
        return 1;
    }
    if (sg_security_admin(sec, auth, r->client, &err) == 0) return 1;
    sg_error_set(&err, 401, "unauthorized", NULL, "send an API key or the admin key as Authorization: Bearer …");
    sg_http_error(c, &err);
    return 0;
}

/* A conversation's history: a subscriber token that may read it, an API
 * key whose pattern covers it, or the admin key. */
static int may_read(sg_conn *c, sg_req *r, const char *conv)
{
    sg_security *sec = c->srv->security;
    if (sg_security_open(sec)) return 1;
    const char *auth = sg_req_header(r, "authorization");
    char tok[SG_MAX_TOKEN];
    sg_req_token(r, tok, sizeof(tok));
    sg_api_key *key;
    sg_error err, ignored;
    if (sg_security_has_api_keys(sec) && sg_security_publisher(sec, auth, &key, &ignored) == 0) {
        r->key_name = sg_security_key_name(key);
        if (sg_security_key_covers(key, conv, &err) == 0) return 1; /* a read spends no publish tokens */
        sg_http_error(c, &err);
        return 0;
    }
    if (sg_security_admin(sec, auth, r->client, &ignored) == 0) return 1;
    sg_claims cl;
    /* the Origin was checked with the request (api.c, request_allowed) */
    if (sg_security_subscriber_check(sec, NULL, tok, conv, &cl, &err) < 0) {
        sg_http_error(c, &err);
        return 0;
    }
    sg_claims_clear(&cl);
    return 1;
}

static void handle_list(sg_conn *c, sg_req *r)
{
    if (!may_read_all(c, r)) return;
    sg_error err;
    unsigned long long limit;
    if (query_uint(r, "limit", 1000, &limit, &err) < 0) {
        sg_http_error(c, &err);
        return;
    }
    json_t *arr = json_array();
    unsigned long long i = 0;
    for (sg_conv *cv = sg_hub_first(c->srv->hub); cv && i < limit; cv = sg_hub_next(cv), i++) {
        char ts[25];
        sg_format_ts(cv->last_activity_ms, ts);
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:I, s:I, s:I, s:i, s:i, s:s}", "conversation_id",
                           cv->id, "epoch", cv->epoch, "last_seq", (json_int_t)cv->last_seq,
                           "published", (json_int_t)cv->published, "flushes",
                           (json_int_t)cv->flushes, "subscribers", cv->n_subs, "queued", cv->nq,
                           "last_activity", ts));
    }
    sg_http_json(c, 200, json_pack("{s:I, s:o}", "count", (json_int_t)sg_hub_count(c->srv->hub),
                                   "conversations", arr),
                 NULL);
}

/* A history read: the answer's head is written when it is asked, the
 * updates when the store answers (now, or on a later loop turn). */
typedef struct history_read {
    sg_conn *c; /* NULL once the connection is gone */
    struct evbuffer *b;
    int waiting; /* the handler returned: resume the connection when done */
} history_read;

static void on_history(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    history_read *h = arg;
    sg_conn *c = h->c;
    if (c && status < 0) {
        sg_error err;
        sg_error_set(&err, 503, "store_unavailable", NULL, "history could not be read; retry shortly");
        sg_http_error(c, &err);
    } else if (c) {
        for (size_t i = 0; i < n; i++) {
            if (i) evbuffer_add(h->b, ",", 1);
            evbuffer_add(h->b, ups[i]->json, ups[i]->json_len);
        }
        evbuffer_add_printf(h->b, "],\"oldest_seq\":%llu}\n", (unsigned long long)oldest);
        size_t len = evbuffer_get_length(h->b);
        sg_http_respond(c, 200, "application/json", (const char *)evbuffer_pullup(h->b, -1), len, NULL);
    }
    if (!h->waiting) {
        h->waiting = -1; /* answered inside the call */
        return;
    }
    if (c) sg_conn_resume(c);
    evbuffer_free(h->b);
    free(h);
}

static void handle_history(sg_conn *c, sg_req *r, const char *id)
{
    sg_error err;
    unsigned long long since, limit;
    uint64_t mask = sg_category_all();
    char buf[1024], bad[80];
    if (query_uint(r, "since", 0, &since, &err) < 0 ||
        query_uint(r, "limit", c->srv->cfg->history_size, &limit, &err) < 0) {
        sg_http_error(c, &err);
        return;
    }
    if (sg_req_query(r, "categories", buf, sizeof(buf)) == 0 &&
        sg_category_parse_csv(buf, &mask, bad, sizeof(bad)) < 0) {
        sg_error_set(&err, 400, "invalid_categories", "categories", "unknown category '%s'", bad);
        sg_http_error(c, &err);
        return;
    }
    if (!may_read(c, r, id)) return;
    sg_conv *cv = sg_hub_conv(c->srv->hub, id, strlen(id), 0, &err);
    if (!cv) {
        sg_http_error(c, &err);
        return;
    }
    if (sg_await_loaded(c, c->srv->hub, &cv, 1)) return; /* handled again once it is */
    history_read *h = calloc(1, sizeof(*h));
    if (!h || !(h->b = evbuffer_new())) {
        free(h);
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &err);
        return;
    }
    h->c = c;
    evbuffer_add_printf(h->b, "{\"conversation_id\":\"%s\",\"epoch\":\"%s\",\"last_seq\":%llu,"
                              "\"updates\":[",
                        cv->id, cv->epoch, (unsigned long long)cv->last_seq);
    if (sg_hub_history(c->srv->hub, cv, since, 0, limit, mask, on_history, h)) {
        h->waiting = 1; /* the connection parses nothing more until the answer */
        sg_conn_await(c, &h->c);
        return;
    }
    evbuffer_free(h->b);
    free(h);
}

static void handle_conversation(sg_conn *c, sg_req *r)
{
    const char *id = r->path + strlen(PREFIX_CONV);
    const char *slash = strchr(id, '/');
    sg_error err;
    char cid[SG_MAX_CONV_ID + 1];
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    if (!slash) {
        sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", r->path);
        sg_http_error(c, &err);
        return;
    }
    if (!sg_conv_id_valid(id, n)) {
        sg_error_set(&err, 400, "invalid_conversation_id", "conversation_id",
                     "conversation ids are 1-%d characters of [A-Za-z0-9._:@-]", SG_MAX_CONV_ID);
        sg_http_error(c, &err);
        return;
    }
    memcpy(cid, id, n);
    cid[n] = 0;
    int get = r->method == HTTP_GET;
    if (strcmp(slash, "/history") == 0) {
        if (get) handle_history(c, r, cid); else method_not_allowed(c, "GET");
    } else if (strcmp(slash, "/events") == 0) {
        if (get) sg_sse_start(c, r, cid); else method_not_allowed(c, "GET");
    } else {
        sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", r->path);
        sg_http_error(c, &err);
    }
}

/* POST /admin/webhooks/{name}/redeliver */
static void handle_redeliver(sg_conn *c, sg_req *r)
{
    char name[128]; /* an endpoint's name, as the config gave it */
    const char *rest = r->path + strlen(PREFIX_WEBHOOKS);
    const char *slash = strchr(rest, '/');
    sg_error err;
    if (!slash || strcmp(slash, "/redeliver") != 0 || (size_t)(slash - rest) >= sizeof(name)) {
        sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", r->path);
        sg_http_error(c, &err);
        return;
    }
    if (r->method != HTTP_POST) {
        method_not_allowed(c, "POST");
        return;
    }
    memcpy(name, rest, slash - rest);
    name[slash - rest] = 0;
    int n = sg_webhooks_redeliver(c->srv->webhooks, name);
    if (n < 0) {
        sg_error_set(&err, 404, "webhook_not_found", NULL, "no webhook endpoint named '%s'", name);
        sg_http_error(c, &err);
        return;
    }
    sg_http_json(c, 200, json_pack("{s:s, s:i}", "endpoint", name, "requeued", n), NULL);
}

/* Sec-Fetch-Site: cross-site, as browsers send for another site's page */
static int sec_fetch_cross_site(const sg_req *r)
{
    const char *s = sg_req_header(r, "sec-fetch-site");
    return s && strcasecmp(s, "cross-site") == 0;
}

/* The page that sent r is the gateway's own (the dashboard): its Origin
 * names the host the request was sent to. */
static int same_origin(const sg_req *r)
{
    const char *origin = sg_req_header(r, "origin"), *host = sg_req_header(r, "host");
    if (!origin || !host) return 0;
    const char *a = strstr(origin, "://");
    return a && strcasecmp(a + 3, host) == 0;
}

/* Who may send this request at all: the Host and Origin (open mode
 * answers this machine's pages only), CORS preflights, a stopping
 * gateway, and the admin checks. 1 to go on to the route, 0 when it was
 * answered here. */
static int request_allowed(sg_conn *c, sg_req *r, const char *path)
{
    sg_security *sec = c->srv->security;
    sg_error err;
    /* the forwarded headers are looked up only where a proxy is trusted,
     * the Host only in open mode: each lookup walks the headers */
    int proxied = sg_security_trusts_proxies(sec);
    sg_security_client(sec, c->peer, proxied ? sg_req_header(r, "x-forwarded-for") : NULL,
                       proxied ? sg_req_header(r, "x-real-ip") : NULL, r->client, sizeof(r->client));
    /* in open mode only this machine's names: another name pointed at
     * 127.0.0.1 (DNS rebinding) is another site */
    const char *origin = sg_req_header(r, "origin");
    if (sg_security_open(sec) && !sg_security_host_ok(sec, sg_req_header(r, "host"))) {
        sg_security_stats_of(sec)->origin_denied++;
        sg_error_set(&err, 403, "host_not_allowed", NULL,
                     "an open gateway answers loopback host names only (or a host security.allowed_origins names)");
    } else if (origin && !sg_security_origin_ok(sec, origin) && !same_origin(r)) {
        sg_security_stats_of(sec)->origin_denied++;
        sg_error_set(&err, 403, "origin_not_allowed", NULL,
                     "this Origin is not allowed (security.allowed_origins; an open gateway allows loopback pages only)");
    } else if (r->method == HTTP_OPTIONS) { /* CORS preflight */
        if (origin && sg_security_has_origins(sec)) r->cors_origin = strdup(origin);
        sg_http_respond(c, 204, NULL, NULL, 0,
                        r->cors_origin ? "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                                         "Access-Control-Allow-Headers: Authorization, Content-Type, "
                                         "Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n"
                                       : "Allow: GET, POST, OPTIONS\r\n");
        return 0;
    } else if (c->srv->shutting_down) {
        sg_error_set(&err, 503, "shutting_down", NULL, "the gateway is shutting down");
    } else if (strncmp(path, PREFIX_ADMIN, strlen(PREFIX_ADMIN)) == 0 &&
               ((!sg_security_admin_origin_ok(sec, origin) && !same_origin(r)) || sec_fetch_cross_site(r))) {
        sg_security_stats_of(sec)->admin_denied++;
        sg_error_set(&err, 403, "cross_site_request", NULL, "admin actions are never run for another site's page");
    } else if (strncmp(path, PREFIX_ADMIN, strlen(PREFIX_ADMIN)) == 0 &&
               sg_security_admin(sec, sg_req_header(r, "authorization"), r->client, &err) < 0) {
        /* err is set */
    } else {
        if (origin && sg_security_has_origins(sec)) r->cors_origin = strdup(origin);
        return 1;
    }
    sg_http_error(c, &err);
    return 0;
}

static void handle_ws(sg_conn *c, sg_req *r)
{
    sg_ws_upgrade(c, r, &sg_phx_handler);
}

static void handle_metrics(sg_conn *c, sg_req *r)
{
    sg_error err;
    if (!sg_security_metrics_ok(c->srv->security, sg_req_header(r, "authorization"), r->client)) {
        sg_error_set(&err, 401, "unauthorized", NULL,
                     "security.metrics_key_required: send an API key or the admin key as Authorization: Bearer …");
        sg_http_error(c, &err);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        sg_http_error(c, &err);
        return;
    }
    sg_metrics_render(c->srv, b);
    size_t len = evbuffer_get_length(b);
    sg_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", (const char *)evbuffer_pullup(b, -1),
                    len, NULL);
    evbuffer_free(b);
}

static void handle_stats(sg_conn *c, sg_req *r)
{
    if (may_read_all(c, r)) stats_reply(c);
}

static void handle_admin_plugins(sg_conn *c, sg_req *r)
{
    sg_http_json(c, 200, sg_plugins_admin(c->srv->plugins), NULL);
}

static void handle_admin_webhooks(sg_conn *c, sg_req *r)
{
    sg_http_json(c, 200, sg_webhooks_admin(c->srv->webhooks), NULL);
}

/* The gateways of the cluster (the Redis engine's heartbeat), or this one alone. */
static void handle_admin_nodes(sg_conn *c, sg_req *r)
{
    sg_store *st = c->srv->store;
    json_t *nodes = st->ops->publish ? sg_store_redis_nodes(st) : json_array();
    sg_http_json(c, 200, json_pack("{s:s,s:o}", "engine", st->ops->publish ? "redis" : "local", "nodes", nodes), NULL);
}

static void handle_reload(sg_conn *c, sg_req *r)
{
    sg_http_json(c, 200, sg_server_reload(c->srv, "admin"), NULL);
}

/* The routes: a path (or a prefix), the one method it takes (ANY: the
 * handler checks), and its handler. */
#define ANY (-1)
static const struct route {
    const char *path;
    int prefix;
    int method;
    void (*handle)(sg_conn *c, sg_req *r);
} routes[] = {
    {"/socket/websocket", 0, ANY, handle_ws},
    {"/socket/longpoll", 0, ANY, sg_longpoll_handle},
    {"/dashboard", 0, ANY, sg_dashboard_handle},
    {"/api/v1/status", 0, HTTP_POST, handle_publish},
    {"/api/v1/status/bulk", 0, HTTP_POST, handle_bulk},
    {"/api/v1/conversations", 0, HTTP_GET, handle_list},
    {PREFIX_CONV, 1, ANY, handle_conversation},
    {"/api/v1/events", 0, HTTP_GET, sg_sse_start_multi},
    {"/metrics", 0, HTTP_GET, handle_metrics},
    {"/api/v1/stats", 0, HTTP_GET, handle_stats},
    {"/admin/plugins", 0, HTTP_GET, handle_admin_plugins},
    {"/admin/webhooks", 0, HTTP_GET, handle_admin_webhooks},
    {"/admin/nodes", 0, HTTP_GET, handle_admin_nodes},
    {PREFIX_WEBHOOKS, 1, ANY, handle_redeliver},
    {"/admin/reload", 0, HTTP_POST, handle_reload},
};

void sg_api_handle(sg_conn *c, sg_req *r)
{
    const char *p = r->path ? r->path : "/";
    sg_error err;
    if (strcmp(p, "/healthz") == 0) {
        sg_http_json(c, 200, json_pack("{s:s}", "status", "ok"), NULL);
        return;
    }
    if (strcmp(p, "/readyz") == 0) {
        sg_store *st = c->srv->store;
        int store_ok = !st->ops->healthy || st->ops->healthy(st);
        const char *state = c->srv->shutting_down ? "shutting_down"
                            : !store_ok ? (st->ops->publish ? "engine_unavailable" : "store_unavailable")
                                        : "ready";
        int ready = state[0] == 'r';
        sg_http_json(c, ready ? 200 : 503, json_pack("{s:s}", "status", state), ready ? NULL : "Retry-After: 1\r\n");
        return;
    }
    if (!request_allowed(c, r, p)) return;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const struct route *rt = &routes[i];
        if (rt->prefix ? strncmp(p, rt->path, strlen(rt->path)) != 0 : strcmp(p, rt->path) != 0) continue;
        if (rt->method != ANY && (int)r->method != rt->method)
            method_not_allowed(c, rt->method == HTTP_GET ? "GET" : "POST");
        else
            rt->handle(c, r);
        return;
    }
    sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", p);
    sg_http_error(c, &err);
}
