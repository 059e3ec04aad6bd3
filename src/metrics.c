#include "metrics.h"

#include "config.h"
#include "hub.h"
#include "longpoll.h"
#include "plugin.h"
#include "security.h"
#include "server_t.h"
#include "store.h"
#include "webhook.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_REASONS 48

static struct {
    uint64_t received, dropped;
    struct {
        char code[40];
        uint64_t n;
    } rejected[MAX_REASONS];
    int n_reasons;
} m;

void sg_metrics_received(int n)
{
    m.received += (uint64_t)n;
}

void sg_metrics_dropped(void)
{
    m.dropped++;
}

void sg_metrics_rejected(const char *code)
{
    int i;
    for (i = 0; i < m.n_reasons; i++)
        if (strcmp(m.rejected[i].code, code) == 0) break;
    if (i == m.n_reasons) {
        if (m.n_reasons == MAX_REASONS) i = MAX_REASONS - 1; /* "other" */
        else snprintf(m.rejected[m.n_reasons++].code, sizeof(m.rejected[0].code), "%s", code);
    }
    m.rejected[i].n++;
}

/* HELP and TYPE lines, once per metric family. */
static void family(struct evbuffer *o, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(struct evbuffer *o, const char *name, const double *bounds, int nb,
                      const uint64_t *hist, double sum, uint64_t count)
{
    uint64_t cum = 0;
    for (int i = 0; i < nb - 1; i++) {
        cum += hist[i];
        evbuffer_add_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += hist[nb - 1];
    evbuffer_add_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                        (unsigned long long)cum, name, sum, name, (unsigned long long)count);
}

/* Label values are plugin and endpoint names and error codes: safe
 * characters, but escape anyway. */
static const char *label(const char *s)
{
    static char buf[4][160];
    static int k;
    char *b = buf[k++ & 3];
    size_t o = 0;
    for (; s && *s && o < sizeof(buf[0]) - 3; s++) {
        if (*s == '"' || *s == '\\') b[o++] = '\\';
        if (*s == '\n') {
            b[o++] = '\\';
            b[o++] = 'n';
            continue;
        }
        b[o++] = *s;
    }
    b[o] = 0;
    return b;
}

/* Updates: received, published, rejected, dropped, delivered, batching. */
static void render_updates(sg_server *s, struct evbuffer *o)
{
    const sg_hub_stats *st = sg_hub_get_stats(s->hub);
    family(o, "statusgw_updates_received_total", "counter", "Updates producers tried to publish.");
    evbuffer_add_printf(o, "statusgw_updates_received_total %llu\n", (unsigned long long)m.received);
    family(o, "statusgw_updates_published_total", "counter", "Updates accepted, by category.");
    for (int i = 0; i < sg_category_count(); i++)
        evbuffer_add_printf(o, "statusgw_updates_published_total{category=\"%s\"} %llu\n",
                            sg_category_name(i), (unsigned long long)st->per_category[i]);
    family(o, "statusgw_updates_rejected_total", "counter", "Publishes refused, by error code.");
    for (int i = 0; i < m.n_reasons; i++)
        evbuffer_add_printf(o, "statusgw_updates_rejected_total{reason=\"%s\"} %llu\n",
                            label(m.rejected[i].code), (unsigned long long)m.rejected[i].n);
    family(o, "statusgw_updates_dropped_total", "counter", "Updates dropped by plugin filters.");
    evbuffer_add_printf(o, "statusgw_updates_dropped_total %llu\n", (unsigned long long)m.dropped);
    family(o, "statusgw_updates_duplicate_total", "counter", "Retried publishes answered from the idempotency window.");
    evbuffer_add_printf(o, "statusgw_updates_duplicate_total %llu\n", (unsigned long long)st->duplicates);
    family(o, "statusgw_deliveries_total", "counter", "Updates handed to subscribers, by transport.");
    evbuffer_add_printf(o, "statusgw_deliveries_total{transport=\"websocket\"} %llu\n",
                        (unsigned long long)s->net.delivered_ws);
    evbuffer_add_printf(o, "statusgw_deliveries_total{transport=\"sse\"} %llu\n",
                        (unsigned long long)s->net.delivered_sse);
    evbuffer_add_printf(o, "statusgw_deliveries_total{transport=\"longpoll\"} %llu\n",
                        (unsigned long long)s->net.delivered_lp);
    family(o, "statusgw_batch_size", "histogram", "Updates per conversation flush.");
    histogram(o, "statusgw_batch_size", sg_batch_bounds, SG_BATCH_BUCKETS, st->batch_hist,
              (double)st->batch_sum, st->flushes);
    family(o, "statusgw_publish_to_deliver_seconds", "histogram",
           "Time from a publish being accepted to its flush to subscribers.");
    histogram(o, "statusgw_publish_to_deliver_seconds", sg_latency_bounds, SG_LATENCY_BUCKETS,
              st->latency_hist, st->latency_sum, st->latency_count);
}

/* Connections, conversations and credentials. */
static void render_connections(sg_server *s, struct evbuffer *o)
{
    const sg_hub_stats *st = sg_hub_get_stats(s->hub);
    family(o, "statusgw_connections", "gauge", "Open connections, by transport.");
    evbuffer_add_printf(o, "statusgw_connections{transport=\"http\"} %d\n",
                        s->n_conns - s->net.n_sse - s->net.n_ws);
    evbuffer_add_printf(o, "statusgw_connections{transport=\"sse\"} %d\n", s->net.n_sse);
    evbuffer_add_printf(o, "statusgw_connections{transport=\"websocket\"} %d\n", s->net.n_ws);
    evbuffer_add_printf(o, "statusgw_connections{transport=\"longpoll\"} %d\n", sg_longpoll_sessions(s));
    family(o, "statusgw_connections_refused_total", "counter", "Connections refused by a limit.");
    evbuffer_add_printf(o, "statusgw_connections_refused_total{limit=\"max_connections\"} %llu\n",
                        (unsigned long long)s->net.refused_connections);
    evbuffer_add_printf(o, "statusgw_connections_refused_total{limit=\"max_connections_per_ip\"} %llu\n",
                        (unsigned long long)s->net.refused_per_ip);
    family(o, "statusgw_conversations", "gauge", "Conversations in memory.");
    evbuffer_add_printf(o, "statusgw_conversations %zu\n", sg_hub_count(s->hub));
    family(o, "statusgw_queued_updates", "gauge", "Updates accepted and waiting for their flush.");
    evbuffer_add_printf(o, "statusgw_queued_updates %d\n", sg_hub_pending(s->hub));
    family(o, "statusgw_conversations_evicted_total", "counter", "Conversations evicted at the cap or expired idle.");
    evbuffer_add_printf(o, "statusgw_conversations_evicted_total{reason=\"cap\"} %llu\n",
                        (unsigned long long)st->evictions);
    evbuffer_add_printf(o, "statusgw_conversations_evicted_total{reason=\"idle\"} %llu\n",
                        (unsigned long long)st->expired);
    family(o, "statusgw_store_up", "gauge", "1 while the store can write; 0 while publishes are refused (store_unavailable).");
    evbuffer_add_printf(o, "statusgw_store_up{store=\"%s\"} %d\n", s->store->ops->name,
                        !s->store->ops->healthy || s->store->ops->healthy(s->store));
    if (s->store->ops->cache_bytes) {
        family(o, "statusgw_store_cache_bytes", "gauge", "Bytes of recent updates the store keeps in memory (cache_bytes is the budget).");
        evbuffer_add_printf(o, "statusgw_store_cache_bytes %zu\n", s->store->ops->cache_bytes(s->store));
    }
    family(o, "statusgw_slow_consumer_disconnects_total", "counter", "Subscribers cut off over the output cap.");
    evbuffer_add_printf(o, "statusgw_slow_consumer_disconnects_total %llu\n",
                        (unsigned long long)s->net.slow_consumers);
    family(o, "statusgw_http_requests_total", "counter", "HTTP requests parsed.");
    evbuffer_add_printf(o, "statusgw_http_requests_total %llu\n", (unsigned long long)s->net.requests);

    sg_security_stats *ss = sg_security_stats_of(s->security);
    family(o, "statusgw_auth_denied_total", "counter", "Requests refused for credentials or origin.");
    evbuffer_add_printf(o, "statusgw_auth_denied_total{kind=\"publisher\"} %llu\n", (unsigned long long)ss->publisher_denied);
    evbuffer_add_printf(o, "statusgw_auth_denied_total{kind=\"subscriber\"} %llu\n", (unsigned long long)ss->subscriber_denied);
    evbuffer_add_printf(o, "statusgw_auth_denied_total{kind=\"admin\"} %llu\n", (unsigned long long)ss->admin_denied);
    evbuffer_add_printf(o, "statusgw_auth_denied_total{kind=\"origin\"} %llu\n", (unsigned long long)ss->origin_denied);
}

/* Every plugin's counters, labelled by plugin. */
static void render_plugins(sg_server *s, struct evbuffer *o)
{
    json_t *pa = sg_plugins_admin(s->plugins);
    json_t *plugins = json_object_get(pa, "plugins");
    static const char *pc[][3] = {{"calls", "statusgw_plugin_calls_total", "Calls into each plugin."},
                                  {"errors", "statusgw_plugin_errors_total", "Plugin calls that failed or returned garbage."},
                                  {"timeouts", "statusgw_plugin_timeouts_total", "Plugin calls over their instruction or time budget."},
                                  {"out_of_memory", "statusgw_plugin_oom_total", "Plugin calls over the memory cap."},
                                  {"dropped", "statusgw_plugin_updates_dropped_total", "Updates a plugin's filter dropped (deliberately: the producer was answered dropped)."},
                                  {"refused", "statusgw_plugin_updates_refused_total", "Publishes a plugin's filter refused (statusgw.refuse: 429 or another 4xx)."},
                                  {"subscriber_errors", "statusgw_plugin_subscriber_filter_errors_total", "Subscriber filter calls that failed (counted against the subscriber)."}};
    for (int k = 0; k < 7; k++) {
        family(o, pc[k][1], "counter", pc[k][2]);
        size_t i;
        json_t *p;
        json_array_foreach(plugins, i, p)
            evbuffer_add_printf(o, "%s{plugin=\"%s\"} %lld\n", pc[k][1],
                                label(json_string_value(json_object_get(p, "name"))),
                                (long long)json_integer_value(json_object_get(json_object_get(p, "counters"), pc[k][0])));
    }
    family(o, "statusgw_plugin_enabled", "gauge", "1 while a plugin runs, 0 once disabled.");
    size_t i;
    json_t *p;
    json_array_foreach(plugins, i, p)
        evbuffer_add_printf(o, "statusgw_plugin_enabled{plugin=\"%s\"} %d\n",
                            label(json_string_value(json_object_get(p, "name"))),
                            strcmp(json_string_value(json_object_get(p, "state")), "active") == 0);
    json_decref(pa);
}

/* Every webhook endpoint's outcomes, labelled by endpoint. */
static void render_webhooks(sg_server *s, struct evbuffer *o)
{
    size_t i;
    json_t *p;
    json_t *wa = sg_webhooks_admin(s->webhooks);
    json_t *eps = json_object_get(wa, "endpoints");
    /* metric family, outcome label, field of the admin document */
    static const char *wc[][3] = {{"statusgw_webhook_updates_total", "delivered", "delivered"},
                                  {"statusgw_webhook_updates_total", "dead_lettered", "dead_lettered"},
                                  {"statusgw_webhook_attempts_total", "delivered", "delivered_batches"},
                                  {"statusgw_webhook_attempts_total", "failed", "failed"},
                                  {"statusgw_webhook_attempts_total", "retried", "retried"}};
    for (int k = 0; k < 5; k++) {
        if (k == 0) family(o, wc[k][0], "counter", "Webhook outcomes, in updates, by endpoint.");
        if (k == 2) family(o, wc[k][0], "counter", "Webhook attempts, by endpoint and outcome.");
        json_array_foreach(eps, i, p)
            evbuffer_add_printf(o, "%s{endpoint=\"%s\",outcome=\"%s\"} %lld\n", wc[k][0],
                                label(json_string_value(json_object_get(p, "name"))), wc[k][1],
                                (long long)json_integer_value(json_object_get(p, wc[k][2])));
    }
    family(o, "statusgw_webhook_queue_depth", "gauge", "Updates queued for an endpoint.");
    json_array_foreach(eps, i, p)
        evbuffer_add_printf(o, "statusgw_webhook_queue_depth{endpoint=\"%s\"} %lld\n",
                            label(json_string_value(json_object_get(p, "name"))),
                            (long long)json_integer_value(json_object_get(p, "queue_depth")));
    family(o, "statusgw_webhook_endpoint_enabled", "gauge", "1 while an endpoint delivers, 0 once disabled (410).");
    json_array_foreach(eps, i, p)
        evbuffer_add_printf(o, "statusgw_webhook_endpoint_enabled{endpoint=\"%s\"} %d\n",
                            label(json_string_value(json_object_get(p, "name"))),
                            strcmp(json_string_value(json_object_get(p, "state")), "active") == 0);
    json_decref(wa);
}

/* The Redis engine's view, per shard. */
static void render_engine(sg_server *s, struct evbuffer *o)
{
    if (!s->store->ops->publish) return;
    json_t *e = sg_store_redis_stats(s->store);
    json_t *shards = json_object_get(e, "shards");
    static const char *fam[][4] = {
        {"up", "statusgw_redis_up", "gauge", "1 while the shard's connections are up; 0 while its publishes are refused (engine_unavailable)."},
        {"round_trips", "statusgw_redis_commands_total", "counter", "Commands sent to the shard (pipelined: many per round trip)."},
        {"in_flight", "statusgw_redis_pipeline_depth", "gauge", "Commands sent to the shard and not answered yet."},
        {"max_in_flight", "statusgw_redis_pipeline_depth_max", "gauge", "The deepest the pipeline has been."},
        {"reconnects", "statusgw_redis_reconnects_total", "counter", "Reconnections to the shard."},
        {"errors", "statusgw_redis_errors_total", "counter", "Failed commands and lost connections."},
        {"messages", "statusgw_redis_messages_total", "counter", "Updates heard on the shard's Pub/Sub channels."}};
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        family(o, fam[f][1], fam[f][2], fam[f][3]);
        size_t i;
        json_t *sh;
        json_array_foreach(shards, i, sh)
        {
            json_t *v = json_object_get(sh, fam[f][0]);
            evbuffer_add_printf(o, "%s{shard=\"%s\"} %lld\n", fam[f][1],
                                label(json_string_value(json_object_get(sh, "address"))),
                                json_is_boolean(v) ? (long long)json_is_true(v) : (long long)json_integer_value(v));
        }
    }
    json_decref(e);
}

void sg_metrics_render(sg_server *s, struct evbuffer *o)
{
    render_updates(s, o);
    render_connections(s, o);
    render_plugins(s, o);
    render_webhooks(s, o);
    render_engine(s, o);
    family(o, "statusgw_uptime_seconds", "gauge", "Seconds since the gateway started.");
    evbuffer_add_printf(o, "statusgw_uptime_seconds %.3f\n", (sg_now_ms() - s->started_ms) / 1000.0);
}

/* Rates and durations to the millisecond (or the thousandth), written
 * with 15 significant digits: 4.867, not 4.8666666666666663. */
static double r3(double x)
{
    return round(x * 1000.0) / 1000.0;
}

json_t *sg_stats_json(sg_server *s)
{
    const sg_hub_stats *st = sg_hub_get_stats(s->hub);
    json_t *cats = json_object();
    for (int i = 0; i < sg_category_count(); i++)
        json_object_set_new(cats, sg_category_name(i), json_integer((json_int_t)st->per_category[i]));
    uint64_t t1, e1, t5, e5;
    sg_hub_rate(s->hub, 60, &t1, &e1);
    sg_hub_rate(s->hub, 300, &t5, &e5);
    /* the ten busiest conversations */
    const sg_conv *top[10];
    int nt = 0;
    for (sg_conv *c = sg_hub_first(s->hub); c; c = sg_hub_next(c)) {
        int pos = nt;
        while (pos > 0 && top[pos - 1]->published < c->published)
            pos--;
        if (pos >= 10) continue;
        if (nt < 10) nt++;
        memmove(&top[pos + 1], &top[pos], sizeof(top[0]) * (nt - 1 - pos));
        top[pos] = c;
    }
    json_t *tops = json_array();
    for (int i = 0; i < nt; i++)
        json_array_append_new(tops, json_pack("{s:s, s:I, s:i}", "conversation_id", top[i]->id, "published",
                                              (json_int_t)top[i]->published, "subscribers", top[i]->n_subs));
    json_t *pa = sg_plugins_admin(s->plugins), *plugins = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(pa, "plugins"), i, p)
    {
        json_t *c = json_object_get(p, "counters");
        json_array_append_new(plugins, json_pack("{s:O, s:O, s:O, s:O, s:O, s:O}", "name", json_object_get(p, "name"),
                                                 "state", json_object_get(p, "state"), "calls", json_object_get(c, "calls"),
                                                 "errors", json_object_get(c, "errors"), "timeouts",
                                                 json_object_get(c, "timeouts"), "last_error", json_object_get(p, "last_error")));
    }
    json_decref(pa);
    json_t *wa = sg_webhooks_admin(s->webhooks), *hooks = json_array();
    json_array_foreach(json_object_get(wa, "endpoints"), i, p)
        json_array_append_new(hooks, json_pack("{s:O, s:O, s:O, s:O, s:O, s:O}", "name", json_object_get(p, "name"),
                                               "state", json_object_get(p, "state"), "queue_depth",
                                               json_object_get(p, "queue_depth"), "delivered", json_object_get(p, "delivered"),
                                               "dead_lettered", json_object_get(p, "dead_lettered"), "last_error",
                                               json_object_get(p, "last_error")));
    json_decref(wa);
    uint64_t rejected = 0;
    for (int k = 0; k < m.n_reasons; k++)
        rejected += m.rejected[k].n;
    json_t *v = json_pack("{s:I, s:I, s:I, s:I, s:o, s:{s:f, s:f}, s:{s:f, s:f}, s:o, s:o, s:o, s:{s:i, s:i, s:i, s:i}, s:i, s:f}",
                     "published", (json_int_t)st->published, "received", (json_int_t)m.received, "rejected",
                     (json_int_t)rejected, "dropped", (json_int_t)m.dropped, "per_category", cats,
                     "rate_per_s", "last_1m", r3(t1 / 60.0), "last_5m", r3(t5 / 300.0),
                     "error_rate", "last_1m", r3(t1 ? (double)e1 / t1 : 0.0), "last_5m", r3(t5 ? (double)e5 / t5 : 0.0),
                     "top_conversations", tops, "plugins", plugins, "webhooks", hooks,
                     "connections", "websocket", s->net.n_ws, "sse", s->net.n_sse, "longpoll", sg_longpoll_sessions(s), "http", s->n_conns - s->net.n_ws - s->net.n_sse,
                     "conversations", (int)sg_hub_count(s->hub), "uptime_s", r3((sg_now_ms() - s->started_ms) / 1000.0));
    if (v && s->store->ops->publish) json_object_set_new(v, "engine", sg_store_redis_stats(s->store));
    return v;
}
