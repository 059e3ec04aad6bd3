#include "ingest.h"

#include "log.h"
#include "plugin.h"
#include "webhook.h"

#include <stdlib.h>
#include <string.h>

/* Keys a producer's own metadata cannot override: what builders compute. */
static const char *computed_keys[] = {"duration_ms", "duration_human", "percentage", "progress",
                                      NULL};

typedef struct emitted {
    struct emitted *next;
    json_t *update;
    char plugin[64];
} emitted;

struct sg_ingest_queue {
    emitted *head, *tail;
    int n;
    struct event *ev;
};

static int is_computed(const char *k)
{
    for (int i = 0; computed_keys[i]; i++)
        if (strcmp(k, computed_keys[i]) == 0) return 1;
    return 0;
}

/* Built metadata, plus timestamp, overridden by the producer's own keys
 * except the computed ones. Takes ownership of built. */
static json_t *merge_metadata(json_t *built, json_t *own)
{
    if (!json_object_get(built, "timestamp")) {
        char ts[25];
        sg_format_ts(sg_now_ms(), ts);
        json_object_set_new(built, "timestamp", json_string(ts));
    }
    const char *k;
    json_t *v;
    json_object_foreach(own, k, v)
    {
        if (is_computed(k) && json_object_get(built, k)) continue;
        json_object_set(built, k, v);
    }
    return built;
}

int sg_ingest(sg_server *s, json_t *obj, const char *emitted_by, sg_publish_result *res,
              sg_error *err)
{
    sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
    sg_draft d;
    memset(res, 0, sizeof(*res));
    if (sg_draft_from_json(obj, &lim, &d, err) < 0) return -1;
    sg_plugins *pm = s->plugins;
    int filters = sg_plugins_have_filters(pm), aggregators = sg_plugins_have_aggregators(pm);
    if (!d.builder && !filters && !aggregators) {
        int rc = sg_hub_publish(s->hub, &d, res, err);
        if (rc == 0 && res->update) sg_webhooks_offer(s->webhooks, res->conv->id, res->update);
        return rc;
    }

    if (d.idempotency_key) {
        uint64_t seq = sg_hub_seen(s->hub, d.conv_id, d.conv_len, d.idempotency_key);
        if (seq) /* a retry: the hub answers with the first seq */
            return sg_hub_publish(s->hub, &d, res, err);
    }
    /* the builder edits a copy; filters hand back new objects */
    json_t *w = d.builder ? json_deep_copy(obj) : json_incref(obj);
    if (d.builder) {
        json_t *md = NULL, *text = NULL;
        int rc = pm ? sg_plugins_build(pm, d.builder, d.args, w, &md, &text) : SG_BUILD_UNKNOWN;
        if (rc == SG_BUILD_UNKNOWN) {
            sg_error_set(err, 400, "unknown_builder", "builder", "no plugin provides builder '%s'",
                         d.builder);
            json_decref(w);
            return -1;
        }
        json_object_del(w, "builder");
        json_object_del(w, "args");
        if (rc == SG_BUILD_OK) {
            json_t *own = json_object_get(w, "metadata");
            json_object_set_new(w, "metadata", merge_metadata(md, json_is_object(own) ? own : NULL));
            if (text) json_object_set_new(w, "text", text);
        }
        /* a builder that failed costs only itself: the update goes on as sent */
        if (!json_is_string(json_object_get(w, "text"))) json_object_set_new(w, "text", json_string(""));
        if (sg_draft_from_json(w, &lim, &d, err) < 0) {
            char m[sizeof(err->message)];
            snprintf(m, sizeof(m), "after builder: %.170s", err->message);
            snprintf(err->message, sizeof(err->message), "%s", m);
            json_decref(w);
            return -1;
        }
    }
    if (filters) {
        const char *by = NULL;
        int changed;
        if (!sg_plugins_filter(pm, &w, emitted_by, &by, &changed)) {
            res->dropped = 1;
            snprintf(res->dropped_by, sizeof(res->dropped_by), "%s", by ? by : "?");
            json_decref(w);
            return 0;
        }
        if (changed && sg_draft_from_json(w, &lim, &d, err) < 0) { /* already validated */
            json_decref(w);
            return -1;
        }
    }
    int rc = sg_hub_publish(s->hub, &d, res, err);
    if (rc == 0 && res->update) sg_webhooks_offer(s->webhooks, res->conv->id, res->update);
    if (rc == 0 && aggregators && res->update) {
        json_t *full = json_loadb(res->update->json, res->update->json_len, 0, NULL);
        if (full) sg_plugins_observe(pm, res->conv->id, full, emitted_by);
        json_decref(full);
    }
    json_decref(w);
    return rc;
}

/* ---- what plugins emit ---- */

static void on_emitted(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    struct sg_ingest_queue *q = s->ingest;
    /* take the current list: what these publishes emit waits for the next turn */
    emitted *e = q->head;
    q->head = q->tail = NULL;
    q->n = 0;
    while (e) {
        emitted *next = e->next;
        sg_publish_result res;
        sg_error err;
        if (sg_ingest(s, e->update, e->plugin, &res, &err) < 0)
            sg_log(SG_LOG_WARN, "emit_rejected", "plugin=%s code=%s reason=%s", e->plugin,
                   err.code, sg_log_q(err.message));
        json_decref(e->update);
        free(e);
        e = next;
    }
}

int sg_ingest_emit(void *server, json_t *u, const char *plugin, char *errbuf, size_t errlen)
{
    sg_server *s = server;
    struct sg_ingest_queue *q = s->ingest;
    sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
    sg_draft d;
    sg_error err;
    if (sg_draft_from_json(u, &lim, &d, &err) < 0) {
        snprintf(errbuf, errlen, "emit: %s (%s)", err.message, err.code);
        return -1;
    }
    if (s->shutting_down) {
        snprintf(errbuf, errlen, "emit: the gateway is shutting down");
        return -1;
    }
    if (q->n >= SG_DEFAULT_EMIT_QUEUE) {
        snprintf(errbuf, errlen, "emit: %d emitted updates are waiting; slow down", q->n);
        return -1;
    }
    emitted *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(errbuf, errlen, "emit: out of memory");
        return -1;
    }
    e->update = json_incref(u);
    snprintf(e->plugin, sizeof(e->plugin), "%s", plugin);
    if (q->tail) q->tail->next = e; else q->head = e;
    q->tail = e;
    q->n++;
    event_active(q->ev, EV_TIMEOUT, 0);
    return 0;
}

int sg_ingest_init(sg_server *s)
{
    struct sg_ingest_queue *q = calloc(1, sizeof(*q));
    if (!q) return -1;
    q->ev = event_new(s->base, -1, 0, on_emitted, s);
    if (!q->ev) {
        free(q);
        return -1;
    }
    s->ingest = q;
    return 0;
}

void sg_ingest_free(sg_server *s)
{
    struct sg_ingest_queue *q = s->ingest;
    if (!q) return;
    while (q->head) {
        emitted *e = q->head;
        q->head = e->next;
        json_decref(e->update);
        free(e);
    }
    event_free(q->ev);
    free(q);
    s->ingest = NULL;
}
