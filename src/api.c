#include "api.h"

#include "log.h"
#include "ingest.h"
#include "metrics.h"
#include "security.h"
#include "plugin.h"
#include "sse.h"
#include "webhook.h"
#include "ws.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PREFIX_CONV "/api/v1/conversations/"

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

/* Parse a JSON text; NULL with err set (invalid_json / invalid_utf8). */
static json_t *parse_json(const char *s, size_t n, sg_error *err)
{
    if (n == 0) {
        sg_error_set(err, 400, "invalid_json", NULL, "the request body is empty");
        return NULL;
    }
    json_error_t je;
    json_t *v = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (v) return v;
    if (json_error_code(&je) == json_error_invalid_utf8)
        sg_error_set(err, 400, "invalid_utf8", NULL, "the body is not valid UTF-8: %s", je.text);
    else
        sg_error_set(err, 400, "invalid_json", NULL, "malformed JSON at line %d column %d: %s",
                     je.line, je.column, je.text);
    return NULL;
}

/* Validate and publish one update object. Returns 0 and fills res, or -1
 * with err set. */
/* Publish one update for the producer holding key (NULL: open mode). */
static int publish(sg_server *s, sg_api_key *key, json_t *obj, sg_publish_result *res, sg_error *err)
{
    sg_metrics_received(1);
    int rc = 0;
    if (key) {
        json_t *cid = json_object_get(obj, "conversation_id");
        const char *conv = json_is_string(cid) ? json_string_value(cid) : "system";
        rc = sg_security_may_publish(key, conv, err);
    }
    if (rc == 0) rc = sg_ingest(s, obj, NULL, res, err);
    if (rc < 0) sg_metrics_rejected(err->code);
    else if (res->dropped) sg_metrics_dropped();
    return rc;
}

/* A publish refused as a whole request (auth, media type, JSON). */
static void refuse_publish(sg_conn *c, const sg_error *err)
{
    sg_metrics_received(1);
    sg_metrics_rejected(err->code);
    sg_http_error(c, err);
}

static json_t *publish_reply(const sg_publish_result *res)
{
    if (res->dropped)
        return json_pack("{s:b, s:s}", "dropped", 1, "dropped_by", res->dropped_by);
    json_t *o = json_pack("{s:s, s:I, s:s}", "conversation_id", res->conv->id, "seq",
                          (json_int_t)res->seq, "epoch", res->conv->epoch);
    if (res->duplicate) json_object_set_new(o, "duplicate", json_true());
    return o;
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
    json_t *obj = parse_json(r->body, r->body_len, &err);
    sg_publish_result res;
    if (!obj) {
        refuse_publish(c, &err);
    } else if (publish(c->srv, key, obj, &res, &err) < 0) {
        sg_http_error(c, &err);
    } else if (!res.dropped) { /* the hot path: no JSON library for the reply */
        char reply[SG_MAX_CONV_ID + 128];
        int n = snprintf(reply, sizeof(reply), "{\"conversation_id\":\"%s\",\"seq\":%llu,\"epoch\":\"%s\"%s}\n",
                         res.conv->id, (unsigned long long)res.seq, res.conv->epoch,
                         res.duplicate ? ",\"duplicate\":true" : "");
        sg_http_respond(c, 202, "application/json", reply, (size_t)n, NULL);
    } else {
        sg_http_json(c, 202, publish_reply(&res), NULL);
    }
    json_decref(obj);
}

static json_t *item_result(sg_server *s, sg_api_key *key, json_t *obj, int *accepted)
{
    sg_error err;
    sg_publish_result res;
    if (publish(s, key, obj, &res, &err) < 0) return sg_error_json(&err);
    (*accepted)++;
    return publish_reply(&res);
}

static void handle_bulk(sg_conn *c, sg_req *r)
{
    sg_error err;
    sg_api_key *key;
    if (sg_security_publisher(c->srv->security, sg_req_header(r, "authorization"), &key, &err) < 0) {
        sg_http_error(c, &err);
        return;
    }
    int ndjson = ctype_is(r, "application/x-ndjson");
    if (!ndjson && !ctype_is(r, "application/json")) {
        sg_error_set(&err, 415, "unsupported_media_type", NULL,
                     "send a JSON array as application/json or one object a line as "
                     "application/x-ndjson");
        sg_http_error(c, &err);
        return;
    }
    json_t *items = NULL;
    json_t *parse_errors = NULL; /* NDJSON: per line, an error object or null */
    if (ndjson) {
        items = json_array();
        parse_errors = json_array();
        const char *p = r->body ? r->body : "", *end = p + r->body_len;
        int line = 0;
        while (p < end) {
            const char *nl = memchr(p, '\n', end - p);
            const char *le = nl ? nl : end;
            line++;
            const char *q = p;
            while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
                q++;
            if (q < le) {
                json_t *v = parse_json(p, le - p, &err);
                if (!v) {
                    /* keep the slot: its result carries the parse error */
                    char msg[sizeof(err.message)];
                    snprintf(msg, sizeof(msg), "line %d: %.180s", line, err.message);
                    snprintf(err.message, sizeof(err.message), "%s", msg);
                }
                json_array_append_new(items, v ? v : json_null());
                json_array_append_new(parse_errors, v ? json_null() : sg_error_json(&err));
            }
            p = nl ? nl + 1 : end;
        }
    } else {
        items = parse_json(r->body, r->body_len, &err);
        if (!items) {
            sg_http_error(c, &err);
            return;
        }
        if (!json_is_array(items)) {
            json_decref(items);
            sg_error_set(&err, 400, "invalid_body", NULL,
                         "the bulk body must be a JSON array of updates");
            sg_http_error(c, &err);
            return;
        }
    }
    size_t n = json_array_size(items);
    if (n > (size_t)c->srv->cfg->max_bulk_items) {
        json_decref(items);
        json_decref(parse_errors);
        sg_error_set(&err, 413, "too_many_items", NULL, "%zu updates in one request; the limit is %d",
                     n, c->srv->cfg->max_bulk_items);
        sg_http_error(c, &err);
        return;
    }
    if (n == 0) {
        json_decref(items);
        json_decref(parse_errors);
        sg_error_set(&err, 400, "empty_bulk", NULL, "the bulk request holds no updates");
        sg_http_error(c, &err);
        return;
    }
    json_t *results = json_array();
    int accepted = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *perr = json_array_get(parse_errors, i);
        json_array_append_new(results, perr && !json_is_null(perr)
                                           ? json_incref(perr)
                                           : item_result(c->srv, key, json_array_get(items, i),
                                                         &accepted));
    }
    json_decref(items);
    json_decref(parse_errors);
    sg_http_json(c, 202, json_pack("{s:i, s:i, s:o}", "accepted", accepted, "rejected",
                                   (int)n - accepted, "results", results),
                 NULL);
}

static int query_uint(sg_req *r, const char *name, unsigned long long def,
                      unsigned long long *out, sg_error *err)
{
    char buf[32];
    *out = def;
    if (sg_req_query(r, name, buf, sizeof(buf)) < 0) return 0;
    char *end;
    *out = strtoull(buf, &end, 10);
    if (!buf[0] || *end || buf[0] == '-') {
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
    if (sg_security_has_api_keys(sec) && sg_security_publisher(sec, auth, &key, &err) == 0) return 1;
    if (sg_security_admin(sec, auth, c->peer, &err) == 0) return 1;
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
    char tok[4096] = "";
    if (sg_bearer(auth, tok, sizeof(tok)) < 0) sg_req_query(r, "token", tok, sizeof(tok));
    sg_api_key *key;
    sg_error err, ignored;
    if (sg_security_has_api_keys(sec) && sg_security_publisher(sec, auth, &key, &ignored) == 0) {
        if (sg_security_may_publish(key, conv, &err) == 0 || err.status == 429) return 1;
        sg_http_error(c, &err);
        return 0;
    }
    if (sg_security_admin(sec, auth, c->peer, &ignored) == 0) return 1;
    sg_claims cl;
    if (sg_security_subscriber(sec, tok, &cl, &err) < 0) {
        sg_http_error(c, &err);
        return 0;
    }
    int ok = sg_claims_allow(&cl, conv);
    sg_claims_clear(&cl);
    if (!ok) {
        sg_error_set(&err, 403, "forbidden", NULL, "the token does not cover conversation '%s'", conv);
        sg_http_error(c, &err);
    }
    return ok;
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

static void on_history(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    struct evbuffer *b = arg;
    for (size_t i = 0; i < n; i++) {
        if (i) evbuffer_add(b, ",", 1);
        evbuffer_add(b, ups[i]->json, ups[i]->json_len);
    }
    evbuffer_add_printf(b, "],\"oldest_seq\":%llu}\n", (unsigned long long)oldest);
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
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"conversation_id\":\"%s\",\"epoch\":\"%s\",\"last_seq\":%llu,"
                           "\"updates\":[",
                        cv->id, cv->epoch, (unsigned long long)cv->last_seq);
    sg_hub_history(c->srv->hub, cv, since, 0, limit, mask, on_history, b);
    size_t len = evbuffer_get_length(b);
    sg_http_respond(c, 200, "application/json", (const char *)evbuffer_pullup(b, -1), len, NULL);
    evbuffer_free(b);
}

static void handle_conversation(sg_conn *c, sg_req *r)
{
    const char *id = r->path + strlen(PREFIX_CONV);
    const char *slash = strchr(id, '/');
    sg_error err;
    char cid[SG_MAX_CONV_ID + 1];
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    if (!slash || !sg_conv_id_valid(id, n)) {
        sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", r->path);
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
    char name[128];
    const char *rest = r->path + 16;
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

void sg_api_handle(sg_conn *c, sg_req *r)
{
    const char *p = r->path ? r->path : "/";
    int get = r->method == HTTP_GET, post = r->method == HTTP_POST;
    sg_error err;
    if (strcmp(p, "/healthz") == 0) {
        sg_http_json(c, 200, json_pack("{s:s}", "status", "ok"), NULL);
        return;
    }
    if (strcmp(p, "/readyz") == 0) {
        int ready = !c->srv->shutting_down;
        sg_http_json(c, ready ? 200 : 503,
                     json_pack("{s:s}", "status", ready ? "ready" : "shutting_down"), NULL);
        return;
    }
    const char *origin = sg_req_header(r, "origin");
    if (origin && sg_security_has_origins(c->srv->security) &&
        sg_security_origin_ok(c->srv->security, origin))
        r->cors_origin = strdup(origin);
    if (r->method == HTTP_OPTIONS) { /* CORS preflight */
        sg_http_respond(c, 204, NULL, NULL, 0,
                        r->cors_origin ? "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                                         "Access-Control-Allow-Headers: Authorization, Content-Type, "
                                         "Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n"
                                       : "Allow: GET, POST, OPTIONS\r\n");
        return;
    }
    if (c->srv->shutting_down) {
        sg_error_set(&err, 503, "shutting_down", NULL, "the gateway is shutting down");
        sg_http_error(c, &err);
        return;
    }
    if (strncmp(p, "/admin/", 7) == 0 &&
        sg_security_admin(c->srv->security, sg_req_header(r, "authorization"), c->peer, &err) < 0) {
        sg_http_error(c, &err);
        return;
    }
    if (strcmp(p, "/socket/websocket") == 0) {
        sg_ws_upgrade(c, r);
    } else if (strcmp(p, "/api/v1/status") == 0) {
        if (post) handle_publish(c, r); else method_not_allowed(c, "POST");
    } else if (strcmp(p, "/api/v1/status/bulk") == 0) {
        if (post) handle_bulk(c, r); else method_not_allowed(c, "POST");
    } else if (strcmp(p, "/api/v1/conversations") == 0) {
        if (get) handle_list(c, r); else method_not_allowed(c, "GET");
    } else if (strncmp(p, PREFIX_CONV, strlen(PREFIX_CONV)) == 0) {
        handle_conversation(c, r);
    } else if (strcmp(p, "/metrics") == 0) {
        if (!get) {
            method_not_allowed(c, "GET");
            return;
        }
        struct evbuffer *b = evbuffer_new();
        sg_metrics_render(c->srv, b);
        size_t len = evbuffer_get_length(b);
        sg_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                        (const char *)evbuffer_pullup(b, -1), len, NULL);
        evbuffer_free(b);
    } else if (strcmp(p, "/api/v1/stats") == 0) {
        if (!get) method_not_allowed(c, "GET");
        else if (may_read_all(c, r)) sg_http_json(c, 200, sg_stats_json(c->srv), NULL);
    } else if (strcmp(p, "/admin/plugins") == 0) {
        if (get) sg_http_json(c, 200, sg_plugins_admin(c->srv->plugins), NULL);
        else method_not_allowed(c, "GET");
    } else if (strcmp(p, "/admin/webhooks") == 0) {
        if (get) sg_http_json(c, 200, sg_webhooks_admin(c->srv->webhooks), NULL);
        else method_not_allowed(c, "GET");
    } else if (strncmp(p, "/admin/webhooks/", 16) == 0) {
        handle_redeliver(c, r);
    } else if (strcmp(p, "/admin/reload") == 0) {
        if (post) sg_http_json(c, 200, sg_server_reload(c->srv, "admin"), NULL);
        else method_not_allowed(c, "POST");
    } else {
        sg_error_set(&err, 404, "not_found", NULL, "no such endpoint: %.200s", p);
        sg_http_error(c, &err);
    }
}
