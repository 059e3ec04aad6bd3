#include "ingest.h"

#include "clock.h"
#include "log.h"
#include "plugin.h"
#include "webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct emitted {
    struct emitted *next;
    json_t *update;
    int hop; /* 1: emitted while handling a producer's update (or a timer) */
    char plugin[64];
} emitted;

typedef struct deferred {
    sg_draft d;
    const sg_ingest_waiter *w;
    void *arg;
} deferred;

struct sg_ingest_queue {
    emitted *head, *tail;
    int n;
    int hop; /* the hop of the emitted update being published, 0 otherwise */
    struct event *ev; /* a timer: runs after the loop has polled */
    /* publishes waiting for this turn's plugin run */
    deferred **run;
    size_t n_run, cap_run;
    struct event *run_ev;
};

/* A publish the engine sequenced: to this gateway's webhooks (once per
 * cluster: here, where it was accepted). Aggregators hear it from the
 * engine on the gateway that holds their lease (store.h). */
static void engine_accepted(void *arg, sg_pub *p)
{
    sg_server *s = arg;
    if (p->update) sg_webhooks_offer(s->webhooks, p->conv_id, p->update); /* NULL: out of memory re-encoding it */
}

/* Sequence one update in the hub and hand it to webhooks and aggregators.
 * With a store that sequences (the Redis engine) the answer comes later:
 * res->pub. */
static void finish(sg_server *s, sg_draft *d, const char *emitted_by, int aggregators,
                   sg_ingest_done done, void *arg, size_t i)
{
    sg_publish_result res;
    sg_error err;
    if (s->store->ops->publish) {
        sg_pub *p = s->store->ops->publish(s->store, d, &err);
        memset(&res, 0, sizeof(res));
        if (p) {
            p->on_accept = engine_accepted;
            p->accept_arg = s;
            snprintf(p->emitted_by, sizeof(p->emitted_by), "%s", emitted_by ? emitted_by : "");
            res.pub = p;
        }
        done(arg, i, p ? 0 : -1, &res, &err);
        return;
    }
    int rc = sg_hub_publish(s->hub, d, &res, &err);
    if (rc == 0 && res.update) sg_webhooks_offer(s->webhooks, res.conv->id, res.update);
    if (rc == 0 && aggregators && res.update)
        sg_plugins_observe(s->plugins, res.conv->id, res.update, emitted_by);
    done(arg, i, rc, &res, &err);
}

/* Run the draft's builder. 0, or -1 with err; a builder that fails costs
 * only itself: the update goes on as sent. */
static int build(sg_server *s, sg_draft *d, uint64_t *clock, sg_error *err)
{
    sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
    sg_built b;
    int rc = s->plugins ? sg_plugins_build(s->plugins, d, &b, clock) : SG_BUILD_UNKNOWN;
    if (rc == SG_BUILD_UNKNOWN) {
        sg_error_set(err, 400, "unknown_builder", "builder", "no plugin provides builder '%s'",
                     d->builder);
        return -1;
    }
    if (rc == SG_BUILD_OK && sg_draft_set_built(d, &b, &lim, err) < 0) {
        char m[sizeof(err->message)];
        snprintf(m, sizeof(m), "after builder: %.170s", err->message);
        snprintf(err->message, sizeof(err->message), "%s", m);
        return -1;
    }
    d->builder = NULL;
    d->args = NULL;
    d->args_len = 0;
    return 0;
}

void sg_ingest_many(sg_server *s, sg_draft **ds, size_t n, const char *emitted_by,
                    sg_ingest_done done, void *arg)
{
    sg_plugins *pm = s->plugins;
    int filters = sg_plugins_have_filters(pm), aggregators = sg_plugins_have_aggregators(pm);
    uint64_t clock = 0; /* carried through the plugin calls */
    /* live[i]: on its way through the filters; by[i]: the filter that dropped it */
    char live_small[64];
    const char *by_small[64];
    char *live = n <= 64 ? live_small : malloc(n);
    const char **by = n <= 64 ? by_small : malloc(n * sizeof(*by));
    sg_error refusals_small[8], *refusals = NULL; /* made when there are filters */
    sg_error err;
    if (!live || !by) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        for (size_t i = 0; i < n; i++)
            done(arg, i, -1, NULL, &err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        sg_draft *d = ds[i];
        live[i] = 0;
        by[i] = NULL;
        if (!d->builder && !filters) {
            finish(s, d, emitted_by, aggregators, done, arg, i);
            continue;
        }
        /* a retry: the hub answers with the first seq, no plugin runs again */
        if (d->idempotency_key && sg_hub_seen(s->hub, d->conv_id, d->conv_len, d->idempotency_key)) {
            finish(s, d, emitted_by, aggregators, done, arg, i);
            continue;
        }
        if (d->builder && build(s, d, &clock, &err) < 0) {
            done(arg, i, -1, NULL, &err);
            continue;
        }
        if (filters) live[i] = 1;
        else finish(s, d, emitted_by, aggregators, done, arg, i);
    }
    if (!filters) goto out;
    refusals = n <= 8 ? refusals_small : calloc(n, sizeof(*refusals));
    if (!refusals) {
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        for (size_t i = 0; i < n; i++)
            if (live[i]) done(arg, i, -1, NULL, &err);
        goto out;
    }
    sg_plugins_filter_many(pm, ds, live, by, refusals, n, emitted_by, &clock);
    for (size_t i = 0; i < n; i++) {
        if (live[i]) {
            finish(s, ds[i], emitted_by, aggregators, done, arg, i);
        } else if (by[i] && refusals[i].status) { /* statusgw.refuse: the producer is told */
            done(arg, i, -1, NULL, &refusals[i]);
        } else if (by[i]) {
            sg_publish_result res;
            memset(&res, 0, sizeof(res));
            res.dropped = 1;
            snprintf(res.dropped_by, sizeof(res.dropped_by), "%s", by[i]);
            done(arg, i, 0, &res, NULL);
        }
    }
out:
    if (refusals != refusals_small) free(refusals);
    if (live != live_small) free(live);
    if (by != by_small) free(by);
}

typedef struct one_result {
    int rc;
    sg_publish_result *res;
    sg_error *err;
} one_result;

static void one_done(void *arg, size_t i, int rc, const sg_publish_result *res, const sg_error *err)
{
    one_result *o = arg;
    o->rc = rc;
    if (rc == 0) *o->res = *res;
    else *o->err = *err;
}

int sg_ingest(sg_server *s, sg_draft *d, const char *emitted_by, sg_publish_result *res,
              sg_error *err)
{
    one_result o = {-1, res, err};
    memset(res, 0, sizeof(*res));
    sg_ingest_many(s, &d, 1, emitted_by, one_done, &o);
    return o.rc;
}

/* ---- publishes that run plugins, together at the end of the turn ---- */

static void run_done(void *arg, size_t i, int rc, const sg_publish_result *res, const sg_error *err)
{
    deferred **run = arg;
    run[i]->w->done(run[i]->arg, rc, res, err);
}

static void on_run(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    struct sg_ingest_queue *q = s->ingest;
    /* take the run: what resumed connections send now waits for the next */
    deferred **run = q->run;
    size_t n = q->n_run;
    q->run = NULL;
    q->n_run = q->cap_run = 0;
    sg_draft **ds = malloc((n ? n : 1) * sizeof(*ds));
    if (ds) {
        for (size_t i = 0; i < n; i++)
            ds[i] = &run[i]->d;
        sg_clock_hold();
        sg_ingest_many(s, ds, n, NULL, run_done, run);
        sg_clock_release();
    } else {
        sg_error err;
        sg_error_set(&err, 503, "out_of_memory", NULL, "out of memory");
        for (size_t i = 0; i < n; i++)
            run_done(run, i, -1, NULL, &err);
    }
    for (size_t i = 0; i < n; i++) {
        run[i]->w->release(run[i]->arg, 1);
        sg_draft_free(&run[i]->d);
        free(run[i]);
    }
    free(ds);
    free(run);
}

int sg_ingest_defer(sg_server *s, sg_draft *d, const sg_ingest_waiter *w, void *arg)
{
    struct sg_ingest_queue *q = s->ingest;
    if (!q->run_ev && !(q->run_ev = event_new(s->base, -1, 0, on_run, s))) return -1;
    if (q->n_run == q->cap_run) {
        size_t cap = q->cap_run ? 2 * q->cap_run : 16;
        deferred **nr = realloc(q->run, cap * sizeof(*nr));
        if (!nr) return -1;
        q->run = nr;
        q->cap_run = cap;
    }
    deferred *x = malloc(sizeof(*x));
    if (!x) return -1;
    x->d = *d;
    memset(d, 0, sizeof(*d));
    x->w = w;
    x->arg = arg;
    q->run[q->n_run++] = x;
    if (q->n_run == 1) event_active(q->run_ev, EV_TIMEOUT, 0);
    return 0;
}

/* ---- what plugins emit ---- */

/* Run on_emitted once the loop has polled its sockets (a zero timeout;
 * event_active would run it in this very turn, again and again while
 * emitted updates make more). */
static void arm(sg_server *s)
{
    static const struct timeval now = {0, 0};
    if (!evtimer_pending(s->ingest->ev, NULL)) evtimer_add(s->ingest->ev, &now);
}

/* Publish up to SG_EMIT_PER_TURN emitted updates, then let the loop read
 * its sockets before the rest: emission never keeps the gateway from its
 * clients (or from SIGTERM). */
static void on_emitted(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    struct sg_ingest_queue *q = s->ingest;
    for (int done = 0; q->head && done < SG_EMIT_PER_TURN; done++) {
        emitted *e = q->head;
        q->head = e->next;
        if (!q->head) q->tail = NULL;
        q->n--;
        sg_publish_result res;
        sg_error err;
        sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
        sg_draft d;
        q->hop = e->hop; /* what its filters emit is one hop further */
        if (sg_draft_from_json(e->update, &lim, &d, &err) < 0 || sg_ingest(s, &d, e->plugin, &res, &err) < 0)
            sg_log(SG_LOG_WARN, "emit_rejected", "plugin=%s code=%s reason=%s", e->plugin,
                   err.code, sg_log_q(err.message));
        q->hop = 0;
        sg_draft_free(&d);
        json_decref(e->update);
        free(e);
    }
    if (q->head) arm(s);
}

int sg_ingest_emit(void *server, json_t *u, const char *plugin, char *errbuf, size_t errlen)
{
    sg_server *s = server;
    struct sg_ingest_queue *q = s->ingest;
    sg_limits lim = {s->cfg->max_text, s->cfg->max_metadata};
    sg_error err;
    if (sg_draft_check_json(u, &lim, &err) < 0) {
        snprintf(errbuf, errlen, "emit: %s (%s)", err.message, err.code);
        return -1;
    }
    if (s->shutting_down) {
        snprintf(errbuf, errlen, "emit: the gateway is shutting down");
        return -1;
    }
    if (q->hop >= SG_EMIT_MAX_HOPS) {
        snprintf(errbuf, errlen,
                 "emit: hop limit (%d) reached: this update was emitted while handling an update "
                 "emitted %d times over (plugins emitting to each other?)",
                 SG_EMIT_MAX_HOPS, q->hop);
        sg_log(SG_LOG_WARN, "emit_refused", "plugin=%s reason=hop_limit hops=%d", plugin, q->hop);
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
    e->hop = q->hop + 1;
    snprintf(e->plugin, sizeof(e->plugin), "%s", plugin);
    if (q->tail) q->tail->next = e; else q->head = e;
    q->tail = e;
    q->n++;
    arm(s);
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
    for (size_t i = 0; i < q->n_run; i++) { /* stopping before the turn ended */
        q->run[i]->w->release(q->run[i]->arg, 0);
        sg_draft_free(&q->run[i]->d);
        free(q->run[i]);
    }
    free(q->run);
    if (q->run_ev) event_free(q->run_ev);
    free(q);
    s->ingest = NULL;
}
