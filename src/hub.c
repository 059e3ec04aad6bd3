#include "hub.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct idem {
    struct idem *next;
    uint64_t seq;
    int64_t expires_mono;
    size_t len;
    char key[];
};

struct sg_hub {
    struct event_base *base;
    const sg_config *cfg;
    sg_store *store;
    sg_dict *convs;
    sg_conv *lru_head, *lru_tail;     /* oldest ... newest activity */
    sg_conv *flush_head, *flush_tail; /* earliest ... latest deadline */
    struct event *flush_ev;
    struct event *cleanup_ev;
    sg_conv wildcard;
    int pending; /* queued updates over all conversations */
    uint64_t committed_gen; /* the store's newest committed generation */
    sg_conv *await_head;    /* due, waiting for a commit */
    int durable;            /* the store commits later (sync): flushes wait for it */
    int n_empty; /* conversations a subscriber opened that hold no update yet */
    void (*on_forget)(void *arg, const char *id);
    void *on_forget_arg;
    sg_hub_stats stats;
};

int64_t sg_now_ms(void)
{
    return sg_clock_wall_ms();
}

int64_t sg_mono_ms(void)
{
    return (int64_t)(sg_clock_mono_ns() / 1000000);
}

/* ---- lists ---- */

static void lru_unlink(sg_hub *h, sg_conv *c)
{
    if (c->lprev) c->lprev->lnext = c->lnext; else h->lru_head = c->lnext;
    if (c->lnext) c->lnext->lprev = c->lprev; else h->lru_tail = c->lprev;
    c->lprev = c->lnext = NULL;
}

static void lru_push(sg_hub *h, sg_conv *c)
{
    c->lprev = h->lru_tail;
    c->lnext = NULL;
    if (h->lru_tail) h->lru_tail->lnext = c; else h->lru_head = c;
    h->lru_tail = c;
}

/* Mark activity: the conversation moves to the newest end. */
static void touch(sg_hub *h, sg_conv *c)
{
    if (c->is_wildcard) return;
    c->last_activity_ms = sg_now_ms();
    c->last_activity_mono = sg_mono_ms();
    if (h->lru_tail != c) {
        lru_unlink(h, c);
        lru_push(h, c);
    }
}

static void flush_unlink(sg_hub *h, sg_conv *c)
{
    if (!c->in_flush_list) return;
    if (c->fprev) c->fprev->fnext = c->fnext; else h->flush_head = c->fnext;
    if (c->fnext) c->fnext->fprev = c->fprev; else h->flush_tail = c->fprev;
    c->fprev = c->fnext = NULL;
    c->in_flush_list = 0;
}

static void arm_flush_timer(sg_hub *h)
{
    if (!h->flush_head) {
        event_del(h->flush_ev);
        return;
    }
    int64_t wait = h->flush_head->due_ms - sg_mono_ms();
    if (wait < 0) wait = 0;
    struct timeval tv = {wait / 1000, (wait % 1000) * 1000};
    event_add(h->flush_ev, &tv);
}

/* ---- resuming subscribers ----
 *
 * A subscriber that resumes is subscribed at once, and what the
 * conversation flushes while its replay is read is held: the replay covers
 * (since, upto], upto being the newest seq flushed when it subscribed, and
 * the held frames carry what came after. */

typedef struct sg_hold {
    sg_hub *hub;
    sg_replay_fn cb;
    sg_replay rp;
    uint64_t upto;
    sg_read *read;    /* the read in flight, or NULL */
    sg_blob **frames; /* held, in order */
    size_t n, cap, bytes;
    int overflow;     /* more than output_cap was held: dropped */
    int in_cb;        /* cb is running */
    int abandoned;    /* unsubscribed while cb ran */
    /* resumed while its conversation was loading: resumed again once it is */
    int awaiting_load;
    int has_epoch;
    char epoch[SG_EPOCH_LEN * 4 + 1];
    uint64_t last_seq;
} sg_hold;

/* Waiting for a loading conversation (sg_hub_when_loaded). */
struct sg_load_wait {
    sg_loaded_fn fn;
    void *arg;
    struct sg_load_wait *next;
};

/* A history read asked while its conversation was loading. */
struct sg_load_read {
    sg_read *r;
    uint64_t since, upto, mask;
    size_t limit;
    struct sg_load_read *next;
};

static int grow_frames(sg_hold *hd)
{
    size_t cap = hd->cap ? hd->cap * 2 : 8;
    sg_blob **f = realloc(hd->frames, cap * sizeof(*f));
    if (!f) return -1;
    hd->frames = f;
    hd->cap = cap;
    return 0;
}

static void hold_drop_frames(sg_hold *hd)
{
    for (size_t i = 0; i < hd->n; i++)
        sg_blob_unref(hd->frames[i]);
    hd->n = hd->bytes = 0;
}

static void hold_free(sg_hold *hd)
{
    hold_drop_frames(hd);
    free(hd->frames);
    free(hd);
}

static void hold_frame(sg_sub *s, sg_blob *b)
{
    sg_hold *hd = s->hold;
    if (hd->overflow) return;
    if (hd->bytes + b->len > hd->hub->cfg->output_cap || (hd->n == hd->cap && grow_frames(hd) < 0)) {
        hold_drop_frames(hd);
        hd->overflow = 1;
        return;
    }
    b->refcnt++;
    hd->frames[hd->n++] = b;
    hd->bytes += b->len;
}

/* ---- fan-out ---- */

/* Encode what group g receives of this flush once, and append the frame to
 * every member. decoded caches each update's parsed JSON for filters. */
static void deliver_group(sg_group *g, sg_conv *c, sg_update **ups, int n, json_t **decoded)
{
    sg_update *sel[n > 0 ? n : 1];
    int k = 0;
    for (int i = 0; i < n; i++)
        if ((g->mask & (1ULL << ups[i]->category)) &&
            sg_filter_match(g->filter, ups[i], &decoded[i]))
            sel[k++] = ups[i];
    if (k == 0) return;
    sg_blob *b = g->cls->encode(g, c, sel, k);
    if (!b) { /* out of memory: its members are cut off, and resume */
        sg_log(SG_LOG_ERROR, "encode_failed", "conversation=%s transport=%s subscribers=%d reason=out_of_memory",
               c->id, g->cls->name, g->n);
        for (sg_sub *s = g->subs; s; s = s->next)
            if (s->state != SG_SUB_DEAD) g->cls->deliver(s, NULL);
        return;
    }
    for (sg_sub *s = g->subs; s; s = s->next) {
        if (s->state == SG_SUB_LIVE) g->cls->deliver(s, b);
        else if (s->state == SG_SUB_HOLDING) hold_frame(s, b);
    }
    sg_blob_unref(b);
}

const double sg_batch_bounds[SG_BATCH_BUCKETS - 1] = {1, 2, 5, 10, 20, 50, 100};
const double sg_latency_bounds[SG_LATENCY_BUCKETS - 1] = {.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1};

static void observe(uint64_t *hist, const double *bounds, int nb, double v)
{
    int i = 0;
    while (i < nb - 1 && v > bounds[i])
        i++;
    hist[i]++;
}


static void await_unlink(sg_hub *h, sg_conv *c)
{
    if (!c->awaiting_commit) return;
    if (c->aprev) c->aprev->anext = c->anext; else h->await_head = c->anext;
    if (c->anext) c->anext->aprev = c->aprev;
    c->aprev = c->anext = NULL;
    c->awaiting_commit = 0;
}

/* Hand ups[0..n) to c's subscribers (and status:*'s): one frame per group. */
static void flush_slice(sg_hub *h, sg_conv *c, sg_update **ups, int n)
{
    json_t *decoded[n];
    memset(decoded, 0, sizeof(decoded));
    for (sg_group *g = c->groups; g; g = g->next)
        deliver_group(g, c, ups, n, decoded);
    for (sg_group *g = h->wildcard.groups; g; g = g->next)
        deliver_group(g, c, ups, n, decoded);
    for (int i = 0; i < n; i++)
        json_decref(decoded[i]);
    c->flushed_seq = ups[n - 1]->seq;
    uint64_t now = sg_clock_mono_ns();
    observe(h->stats.batch_hist, sg_batch_bounds, SG_BATCH_BUCKETS, n);
    h->stats.batch_sum += n;
    for (int i = 0; i < n; i++) {
        double lat = (now - ups[i]->recv_ns) / 1e9;
        observe(h->stats.latency_hist, sg_latency_bounds, SG_LATENCY_BUCKETS, lat);
        h->stats.latency_sum += lat;
        h->stats.latency_count++;
        sg_update_unref(ups[i]);
        ups[i] = NULL;
    }
    c->flushes++;
    h->stats.flushes++;
}

static void flush_link(sg_hub *h, sg_conv *c, int64_t due_ms)
{
    c->due_ms = due_ms;
    c->fprev = h->flush_tail;
    c->fnext = NULL;
    if (h->flush_tail) h->flush_tail->fnext = c; else h->flush_head = c;
    h->flush_tail = c;
    c->in_flush_list = 1;
    if (!event_pending(h->flush_ev, EV_TIMEOUT, NULL)) arm_flush_timer(h);
}

static void await_link(sg_hub *h, sg_conv *c, uint64_t gen)
{
    c->await_gen = gen;
    if (c->awaiting_commit) return;
    c->awaiting_commit = 1;
    c->aprev = NULL;
    c->anext = h->await_head;
    if (h->await_head) h->await_head->aprev = c;
    h->await_head = c;
}

enum { FLUSH_DUE, FLUSH_COMMITTED, FLUSH_NOW };

/* Hand c's queued updates to its subscribers, oldest first, in frames of
 * at most batch_size. With a durable store only those committed go: what
 * a subscriber sees is never lost by a crash. A batch that comes due
 * (FLUSH_DUE) with some of it not yet committed waits on the hub's await
 * list until all of it is (on_commit, FLUSH_COMMITTED), then goes whole:
 * one frame, not a committed part now and the rest a commit later. What
 * was queued after it came due is the next batch, due a window later. */
static void conv_flush(sg_hub *h, sg_conv *c, int why)
{
    flush_unlink(h, c);
    int ready = c->nq;
    if (h->durable) {
        ready = 0;
        while (ready < c->nq && c->qgen[ready] <= h->committed_gen)
            ready++;
    }
    if (ready < c->nq && why == FLUSH_DUE) {
        await_link(h, c, c->qgen[c->nq - 1]);
        return;
    }
    await_unlink(h, c);
    int bs = h->cfg->batch_size;
    for (int off = 0; off < ready; off += bs)
        flush_slice(h, c, c->queue + off, ready - off < bs ? ready - off : bs);
    if (ready < c->nq) {
        memmove(c->queue, c->queue + ready, sizeof(*c->queue) * (size_t)(c->nq - ready));
        memmove(c->qgen, c->qgen + ready, sizeof(*c->qgen) * (size_t)(c->nq - ready));
    }
    c->nq -= ready;
    h->pending -= ready;
    if (c->nq && why == FLUSH_COMMITTED) flush_link(h, c, sg_mono_ms() + h->cfg->flush_ms);
    else if (c->nq) await_link(h, c, c->qgen[c->nq - 1]);
}

static void on_flush_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_hub *h = arg;
    int64_t now = sg_mono_ms();
    while (h->flush_head && h->flush_head->due_ms <= now)
        conv_flush(h, h->flush_head, FLUSH_DUE);
    arm_flush_timer(h);
}

/* The store committed generation gen: flush what waited for it. */
static void on_commit(void *arg, uint64_t gen)
{
    sg_hub *h = arg;
    h->committed_gen = gen;
    sg_conv *c = h->await_head;
    while (c) {
        sg_conv *next = c->anext;
        if (c->await_gen <= gen) conv_flush(h, c, FLUSH_COMMITTED);
        c = next;
    }
}

void sg_hub_flush_all(sg_hub *h)
{
    if (h->store->ops->drain) h->store->ops->drain(h->store); /* commits, then on_commit */
    while (h->flush_head)
        conv_flush(h, h->flush_head, FLUSH_NOW);
    arm_flush_timer(h);
}

/* ---- conversations ---- */

static void idem_clear(sg_conv *c)
{
    struct idem *e = c->idem_head;
    while (e) {
        struct idem *n = e->next;
        free(e);
        e = n;
    }
    c->idem_head = c->idem_tail = NULL;
    sg_dict_free(c->idem);
    c->idem = NULL;
}

/* Forget a conversation; drop: its history too (a durable store keeps an
 * evicted one's, for when it is touched again). Only called with no
 * subscribers. */
static void load_done(sg_hub *h, sg_conv *c, int status);

static void conv_free(sg_hub *h, sg_conv *c, int drop)
{
    if (c->waits || c->reads) load_done(h, c, 503); /* evicted while loading */
    if (c->nq && c->qgen[c->nq - 1] > h->committed_gen && h->store->ops->drain)
        h->store->ops->drain(h->store); /* what it queued is delivered as committed */
    conv_flush(h, c, FLUSH_NOW);
    await_unlink(h, c);
    for (int i = 0; i < c->nq; i++) /* what a failing store never committed */
        sg_update_unref(c->queue[i]);
    h->pending -= c->nq;
    if (h->on_forget) h->on_forget(h->on_forget_arg, c->id);
    lru_unlink(h, c);
    if (c->empty) h->n_empty--;
    sg_dict_del(h->convs, c->id, c->id_len);
    h->store->ops->close(c->hist, drop);
    idem_clear(c);
    free(c->queue);
    free(c->qgen);
    free(c);
}

/* The least recently active conversation with no subscribers that holds
 * updates (want_empty 0) or holds none (want_empty 1). */
static sg_conv *evict_one(sg_hub *h, int want_empty)
{
    for (sg_conv *c = h->lru_head; c; c = c->lnext)
        if (c->n_subs == 0 && c->empty == want_empty) return c;
    return NULL;
}

/* Room for one more conversation of a kind: conversations that hold
 * updates count against max_conversations, and so, apart, do the empty
 * ones subscribers opened. A producer's new conversation may evict an
 * idle one with updates; a subscriber's only an idle empty one, so that
 * watching never takes a producer's slot or another's history. 0, or -1
 * with a 429 in err. */
static int make_room(sg_hub *h, int empty, sg_error *err)
{
    int n = empty ? h->n_empty : (int)sg_dict_size(h->convs) - h->n_empty;
    if (n < h->cfg->max_conversations) return 0;
    sg_conv *old = evict_one(h, empty);
    if (!old) {
        sg_error_set(err, 429, "too_many_conversations", NULL,
                     empty ? "%d conversations are watched before anything was published to them; retry later"
                           : "all %d conversations have subscribers; retry later",
                     h->cfg->max_conversations);
        return -1;
    }
    sg_log(SG_LOG_INFO, "conversation_evicted", "conversation=%s last_seq=%llu", old->id,
           (unsigned long long)old->last_seq);
    h->stats.evictions++;
    conv_free(h, old, !h->durable);
    return 0;
}

static void idem_remember(sg_hub *h, sg_conv *c, const char *key, uint64_t seq, int64_t expires_mono);

struct recalling {
    sg_hub *h;
    sg_conv *c;
};

/* A key the store kept (its expiry on the wall clock) back in memory. */
static void idem_recalled(void *arg, const char *key, uint64_t seq, int64_t expires_ms)
{
    struct recalling *r = arg;
    idem_remember(r->h, r->c, key, seq, sg_mono_ms() + (expires_ms - sg_now_ms()));
}

sg_conv *sg_hub_held(sg_hub *h, const char *id, size_t len)
{
    return sg_dict_get(h->convs, id, len);
}

sg_conv *sg_hub_conv(sg_hub *h, const char *id, size_t len, int create, sg_error *err)
{
    sg_conv *c = sg_dict_get(h->convs, id, len);
    if (c && c->loading && create == SG_CONV_WATCH) c->want_create = 1;
    if (c || (!create && !h->durable && !h->store->ops->publish)) {
        if (!c && err)
            sg_error_set(err, 404, "conversation_not_found", NULL,
                         "no conversation '%.*s' is active", (int)(len > SG_MAX_CONV_ID ? SG_MAX_CONV_ID : len), id);
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (!c || !(c->queue = calloc(h->cfg->batch_size, sizeof(sg_update *))) ||
        !(c->qgen = calloc(h->cfg->batch_size, sizeof(uint64_t))))
        goto oom;
    c->qcap = h->cfg->batch_size;
    memcpy(c->id, id, len);
    c->id[len] = 0;
    c->id_len = len;
    /* a durable store may hold it: found (a FIND too) or made */
    errno = 0;
    c->hist = h->store->ops->open(h->store, c->id, create != SG_CONV_FIND, c->epoch, &c->last_seq);
    if (!c->hist) {
        if (errno == ENOENT)
            sg_error_set(err, 404, "conversation_not_found", NULL, "no conversation '%s' is active", c->id);
        else if (h->store->ops->publish)
            sg_error_set(err, 503, "engine_unavailable", NULL, "the conversation could not be read from Redis; retry shortly");
        else
            sg_error_set(err, 503, "store_unavailable", NULL, "the conversation could not be read from the store; retry shortly");
        free(c->queue);
        free(c->qgen);
        free(c);
        return NULL;
    }
    c->loading = c->epoch[0] == 0; /* the store answers later (on_open) */
    c->want_create = create == SG_CONV_WATCH;
    int empty = create == SG_CONV_WATCH && c->last_seq == 0;
    if (make_room(h, empty, err) < 0) {
        h->store->ops->close(c->hist, 0);
        free(c->queue);
        free(c->qgen);
        free(c);
        return NULL;
    }
    c->flushed_seq = c->last_seq;
    if (sg_dict_set(h->convs, c->id, len, c) < 0) {
        h->store->ops->close(c->hist, 0);
        goto oom;
    }
    if (c->last_seq && h->store->ops->recall) {
        struct recalling r = {h, c};
        h->store->ops->recall(c->hist, sg_now_ms(), idem_recalled, &r);
    }
    /* a subscriber's conversation stays empty (and counted apart) until
     * an update arrives; one the store already holds updates of is not */
    c->empty = empty;
    h->n_empty += c->empty;
    lru_push(h, c);
    touch(h, c);
    return c;
oom:
    if (c) free(c->queue);
    if (c) free(c->qgen);
    free(c);
    sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
    return NULL;
}

static void on_cleanup_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_hub *h = arg;
    int64_t cutoff = sg_mono_ms() - (int64_t)h->cfg->conversation_ttl_s * 1000;
    size_t n = 0;
    sg_conv *c = h->lru_head;
    while (c && c->last_activity_mono < cutoff) {
        sg_conv *next = c->lnext;
        if (c->n_subs == 0) {
            conv_free(h, c, 1);
            n++;
        }
        c = next;
    }
    h->stats.expired += n;
    if (h->store->ops->sweep) /* and what the store keeps of those it no longer holds open */
        h->store->ops->sweep(h->store, sg_now_ms() - (int64_t)h->cfg->conversation_ttl_s * 1000, sg_now_ms());
    if (n)
        sg_log(SG_LOG_INFO, "conversations_expired", "count=%zu remaining=%zu", n,
               sg_dict_size(h->convs));
}

/* ---- idempotency ---- */

static struct idem *idem_find(sg_hub *h, sg_conv *c, const char *key)
{
    int64_t now = sg_mono_ms();
    while (c->idem_head && c->idem_head->expires_mono <= now) {
        struct idem *e = c->idem_head;
        sg_dict_del(c->idem, e->key, e->len);
        c->idem_head = e->next;
        if (!c->idem_head) c->idem_tail = NULL;
        free(e);
    }
    return c->idem ? sg_dict_get(c->idem, key, strlen(key)) : NULL;
}

static void idem_remember(sg_hub *h, sg_conv *c, const char *key, uint64_t seq, int64_t expires_mono)
{
    size_t len = strlen(key);
    if (!c->idem && !(c->idem = sg_dict_new())) return;
    struct idem *e = malloc(sizeof(*e) + len + 1);
    if (!e) return;
    e->next = NULL;
    e->seq = seq;
    e->expires_mono = expires_mono;
    e->len = len;
    memcpy(e->key, key, len + 1);
    if (sg_dict_set(c->idem, e->key, len, e) < 0) {
        free(e);
        return;
    }
    if (c->idem_tail) c->idem_tail->next = e; else c->idem_head = e;
    c->idem_tail = e;
}

uint64_t sg_hub_seen(sg_hub *h, const char *id, size_t len, const char *key)
{
    sg_conv *c = sg_dict_get(h->convs, id, len);
    sg_error err;
    if (!c && h->durable) c = sg_hub_conv(h, id, len, SG_CONV_FIND, &err); /* after a restart */
    struct idem *e = c ? idem_find(h, c, key) : NULL;
    return e ? e->seq : 0;
}

void sg_hub_on_forget(sg_hub *h, void (*fn)(void *arg, const char *id), void *arg)
{
    h->on_forget = fn;
    h->on_forget_arg = arg;
}

/* ---- publish ---- */

/* The counts of a published update: totals, per category, and the
 * per-second ring of publishes and errors the stats' rates read. */
static void count_published(sg_hub *h, const sg_update *u)
{
    h->stats.published++;
    int64_t sec = sg_mono_ms() / 1000;
    int slot = (int)(sec % SG_RATE_WINDOW_S);
    if (h->stats.sec_stamp[slot] != sec) {
        h->stats.sec_stamp[slot] = sec;
        h->stats.sec_total[slot] = h->stats.sec_errors[slot] = 0;
    }
    h->stats.sec_total[slot]++;
    static int error_category = -1;
    if (error_category < 0) error_category = sg_category_index("error", 5);
    if (u->category == error_category) h->stats.sec_errors[slot]++;
    h->stats.per_category[u->category]++;
}

/* Room for one more update in c's queue (it grows while held back for a
 * commit). 0, or -1 with err. */
static int queue_room(sg_conv *c, sg_error *err)
{
    if (c->nq < c->qcap) return 0;
    sg_update **q = realloc(c->queue, sizeof(*q) * (size_t)c->qcap * 2);
    if (q) c->queue = q;
    uint64_t *qg = q ? realloc(c->qgen, sizeof(*qg) * (size_t)c->qcap * 2) : NULL;
    if (!qg) {
        sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        return -1;
    }
    c->qgen = qg;
    c->qcap *= 2;
    return 0;
}

/* Queue u (its reference moves in), held for commit generation gen, and
 * flush at batch_size. */
static void enqueue(sg_hub *h, sg_conv *c, sg_update *u, uint64_t gen)
{
    c->qgen[c->nq] = gen;
    c->queue[c->nq++] = u;
    h->pending++;
    if (!c->in_flush_list && !c->awaiting_commit) flush_link(h, c, sg_mono_ms() + h->cfg->flush_ms);
    if (c->nq >= h->cfg->batch_size) conv_flush(h, c, FLUSH_NOW);
}

/* Field by field, not a memset of the whole struct: that is a `rep stos`
 * (its 64-byte dropped_by), slow to start on every publish. */
static void publish_result(sg_publish_result *res, uint64_t seq, const sg_conv *c, const sg_update *u, int duplicate)
{
    res->seq = seq;
    res->duplicate = duplicate;
    res->conv = c;
    res->update = u;
    res->dropped = 0;
    res->dropped_by[0] = 0;
    res->pub = NULL;
}

int sg_hub_publish(sg_hub *h, const sg_draft *d, sg_publish_result *res, sg_error *err)
{
    if (h->store->ops->healthy && !h->store->ops->healthy(h->store)) {
        h->stats.rejected_store++;
        sg_error_set(err, 503, "store_unavailable", NULL,
                     "the store cannot write (see the gateway's log); retry shortly");
        err->retry_after = 1;
        return -1;
    }
    sg_conv *c = sg_dict_get(h->convs, d->conv_id, d->conv_len);
    if (!c && d->idempotency_key && h->durable) /* a retry after a restart: the store knows its key */
        c = sg_hub_conv(h, d->conv_id, d->conv_len, SG_CONV_FIND, err);
    if (c && d->idempotency_key) {
        struct idem *e = idem_find(h, c, d->idempotency_key);
        if (e) {
            publish_result(res, e->seq, c, NULL, 1);
            h->stats.duplicates++;
            return 0;
        }
    }
    if (h->pending >= h->cfg->max_pending) {
        h->stats.rejected_full++;
        sg_error_set(err, 429, "queue_full", NULL,
                     "%d updates are waiting to be delivered; retry shortly", h->pending);
        return -1;
    }
    if (!c && !(c = sg_hub_conv(h, d->conv_id, d->conv_len, SG_CONV_PUBLISH, err))) {
        if (err->status == 429) h->stats.rejected_full++;
        return -1;
    }
    if (queue_room(c, err) < 0) return -1;
    if (c->empty) { /* a watched conversation gets its first update: it counts now */
        c->empty = 0;
        h->n_empty--;
        if (make_room(h, 0, err) < 0) {
            c->empty = 1;
            h->n_empty++;
            h->stats.rejected_full++;
            return -1;
        }
    }
    sg_update *u = sg_update_new(d, c->last_seq + 1, sg_now_ms());
    if (!u) {
        sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        return -1;
    }
    /* the store takes it first: one it cannot take (out of memory) is
     * refused, never answered 202 and then held back forever */
    uint64_t gen = h->store->ops->append(c->hist, u, NULL, NULL);
    if (gen == UINT64_MAX) {
        sg_update_unref(u);
        sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        return -1;
    }
    c->last_seq = u->seq;
    c->published++;
    count_published(h, u);
    if (d->idempotency_key) {
        int64_t window_ms = (int64_t)h->cfg->idempotency_window_s * 1000;
        idem_remember(h, c, d->idempotency_key, u->seq, sg_mono_ms() + window_ms);
        if (h->store->ops->remember) h->store->ops->remember(c->hist, d->idempotency_key, u->seq, sg_now_ms() + window_ms);
    }
    touch(h, c);

    publish_result(res, u->seq, c, u, 0);
    enqueue(h, c, u, gen); /* the queue owns the reference from sg_update_new */
    return 0;
}

int sg_hub_inject(sg_hub *h, sg_conv *c, const char *epoch, sg_update *u)
{
    sg_error err;
    if (queue_room(c, &err) < 0) {
        sg_update_unref(u);
        return -1;
    }
    if (strcmp(epoch, c->epoch) != 0) { /* the conversation began again in the cluster */
        snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
        c->flushed_seq = 0;
    }
    if (c->empty) {
        c->empty = 0;
        h->n_empty--;
    }
    c->last_seq = u->seq;
    c->published++;
    count_published(h, u);
    touch(h, c);
    enqueue(h, c, u, 0);
    return 0;
}

/* ---- resuming ---- */

/* The store answered the read of what s missed: hand it to the transport,
 * then what was held. */
static void on_resume_read(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    sg_sub *s = arg;
    sg_hold *hd = s->hold;
    sg_replay *rp = &hd->rp;
    hd->read = NULL;
    /* what the store still holds starts at oldest; what came after upto
     * is held, however far the store was trimmed meanwhile */
    uint64_t first_kept = oldest ? oldest : hd->upto + 1;
    uint64_t last_lost = first_kept - 1 < hd->upto ? first_kept - 1 : hd->upto;
    rp->status = status < 0 || hd->overflow ? -1 : 0;
    rp->ups = rp->status == 0 ? ups : NULL;
    rp->n = rp->status == 0 ? n : 0;
    rp->gap_from = rp->epoch_changed ? 1 : rp->since + 1;
    rp->gap_to = last_lost;
    rp->recovered = rp->status == 0 && !rp->epoch_changed && last_lost <= rp->since;
    hd->in_cb = 1;
    hd->cb(s, rp);
    hd->in_cb = 0;
    if (hd->abandoned) { /* unsubscribed from within cb */
        hold_free(hd);
        return;
    }
    s->hold = NULL;
    if (s->state == SG_SUB_HOLDING) s->state = rp->status == 0 ? SG_SUB_LIVE : SG_SUB_DEAD;
    for (size_t i = 0; i < hd->n && s->state == SG_SUB_LIVE; i++)
        s->group->cls->deliver(s, hd->frames[i]);
    hold_free(hd);
}

void sg_hub_resume(sg_hub *h, sg_sub *s, const char *epoch, uint64_t last_seq, sg_replay_fn cb)
{
    sg_conv *c = s->conv;
    if (c->loading) { /* held until it is loaded (load_done), then resumed */
        sg_hold *hd = calloc(1, sizeof(*hd));
        if (hd) {
            hd->hub = h;
            hd->cb = cb;
            hd->awaiting_load = 1;
            hd->has_epoch = epoch != NULL;
            snprintf(hd->epoch, sizeof(hd->epoch), "%s", epoch ? epoch : "");
            hd->last_seq = last_seq;
            s->hold = hd;
            s->state = SG_SUB_HOLDING;
            return;
        }
    }
    sg_replay rp = {0};
    rp.epoch_changed = epoch && strcmp(epoch, c->epoch) != 0;
    rp.since = rp.epoch_changed ? 0 : last_seq;
    if (rp.since > c->flushed_seq) rp.since = c->flushed_seq; /* a seq from the future */
    if (rp.since == c->flushed_seq) { /* nothing flushed it has not seen */
        rp.recovered = !rp.epoch_changed;
        rp.gap_from = 1; /* no range lost: gap_to 0 */
        cb(s, &rp);
        return;
    }
    sg_hold *hd = calloc(1, sizeof(*hd));
    if (!hd) {
        rp.status = -1;
        cb(s, &rp);
        return;
    }
    hd->hub = h;
    hd->cb = cb;
    hd->rp = rp;
    hd->upto = c->flushed_seq;
    s->hold = hd;
    s->state = SG_SUB_HOLDING;
    sg_read *r = sg_store_read(h->store, c->hist, rp.since, hd->upto, (size_t)-1, s->group->mask,
                               on_resume_read, s);
    if (r) hd->read = r; /* answered later; hd is s's until then */
}

/* s goes: its resume, if any, with it. */
static void resume_cancel(sg_sub *s)
{
    sg_hold *hd = s->hold;
    s->hold = NULL;
    if (hd->in_cb) {
        hd->abandoned = 1;
        return;
    }
    sg_read_cancel(hd->read);
    hold_free(hd);
}

void sg_hub_cut(sg_hub *h, sg_conv *c, const char *reason)
{
    int n = 0;
    for (sg_group *g = c->groups; g; g = g->next)
        for (sg_sub *s = g->subs; s; s = s->next) {
            if (s->state == SG_SUB_DEAD) continue;
            if (g->cls->cut) g->cls->cut(s, reason);
            else g->cls->deliver(s, NULL);
            s->state = SG_SUB_DEAD;
            n++;
        }
    if (n) sg_log(SG_LOG_WARN, "subscribers_cut", "conversation=%s subscribers=%d reason=%s", c->id, n, reason);
}

/* ---- subscribers ---- */

int sg_hub_subscribe(sg_hub *h, sg_conv *c, sg_sub *s, const sg_sub_class *cls,
                     uint64_t mask, int variant, sg_filter *filter, void *owner)
{
    sg_group *g = c->groups;
    while (g && !(g->cls == cls && g->mask == mask && g->variant == variant &&
                  strcmp(sg_filter_key(g->filter), sg_filter_key(filter)) == 0))
        g = g->next;
    if (!g) {
        g = calloc(1, sizeof(*g));
        if (!g) return -1;
        g->cls = cls;
        g->mask = mask;
        g->variant = variant;
        g->filter = sg_filter_ref(filter);
        g->next = c->groups;
        c->groups = g;
    }
    memset(s, 0, sizeof(*s));
    s->group = g;
    s->conv = c;
    s->owner = owner;
    s->next = g->subs;
    if (g->subs) g->subs->prev = s;
    g->subs = s;
    g->n++;
    /* status:*'s first subscriber: a store that hears every conversation
     * only once it says so holds the joins until then (loading) */
    if (c->n_subs++ == 0 && c->is_wildcard && h->store->ops->watch_all && h->store->ops->watch_all(h->store, 1))
        c->loading = 1;
    touch(h, c);
    return 0;
}

void sg_hub_unsubscribe(sg_hub *h, sg_sub *s)
{
    sg_group *g = s->group;
    if (!g) return;
    sg_conv *c = s->conv;
    if (s->hold) resume_cancel(s);
    if (s->prev) s->prev->next = s->next; else g->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->group = NULL;
    s->conv = NULL;
    if (--c->n_subs == 0 && c->is_wildcard && h->store->ops->watch_all) {
        h->store->ops->watch_all(h->store, 0);
        c->loading = 0;
    }
    if (--g->n == 0) {
        sg_group **pp = &c->groups;
        while (*pp != g)
            pp = &(*pp)->next;
        *pp = g->next;
        sg_filter_unref(g->filter);
        free(g);
    }
    touch(h, c);
}

/* ---- queries ---- */

sg_conv *sg_hub_wildcard(sg_hub *h)
{
    return &h->wildcard;
}

sg_conv *sg_hub_first(sg_hub *h)
{
    return h->lru_tail;
}

sg_conv *sg_hub_next(sg_conv *c)
{
    return c->lprev;
}

size_t sg_hub_count(const sg_hub *h)
{
    return sg_dict_size(h->convs);
}

int sg_hub_pending(const sg_hub *h)
{
    return h->pending;
}

const sg_hub_stats *sg_hub_get_stats(const sg_hub *h)
{
    return &h->stats;
}

void sg_hub_rate(const sg_hub *h, int seconds, uint64_t *total, uint64_t *errors)
{
    int64_t now = sg_mono_ms() / 1000;
    *total = *errors = 0;
    for (int i = 0; i < SG_RATE_WINDOW_S; i++)
        if (h->stats.sec_stamp[i] > now - seconds && h->stats.sec_stamp[i] <= now) {
            *total += h->stats.sec_total[i];
            *errors += h->stats.sec_errors[i];
        }
}

sg_read *sg_hub_history(sg_hub *h, sg_conv *c, uint64_t since, uint64_t upto, size_t limit,
                        uint64_t mask, sg_store_range_fn cb, void *arg)
{
    if (!c->loading) return sg_store_read(h->store, c->hist, since, upto, limit, mask, cb, arg);
    struct sg_load_read *lr = calloc(1, sizeof(*lr));
    sg_read *r = lr ? sg_read_later(cb, arg) : NULL;
    if (!r) {
        free(lr);
        cb(arg, -1, NULL, 0, 0);
        return NULL;
    }
    *lr = (struct sg_load_read){r, since, upto, mask, limit, c->reads};
    c->reads = lr;
    return r;
}

/* ---- conversations read later (the Redis engine) ---- */

int sg_hub_when_loaded(sg_hub *h, sg_conv *c, sg_loaded_fn fn, void *arg)
{
    if (!c->loading) return 1;
    struct sg_load_wait *w = malloc(sizeof(*w));
    if (!w) { /* told at once, as if it went away */
        fn(arg, c, 503);
        return 0;
    }
    *w = (struct sg_load_wait){fn, arg, c->waits};
    c->waits = w;
    return 0;
}

void sg_hub_cancel_loaded(sg_conv *c, void *arg)
{
    for (struct sg_load_wait **pp = &c->waits; *pp;) {
        struct sg_load_wait *w = *pp;
        if (w->arg == arg) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

/* c is loaded (status 0) or will not be (404, 503): its waiters, reads
 * and resumes go on. */
static void load_done(sg_hub *h, sg_conv *c, int status)
{
    struct sg_load_wait *w = c->waits;
    struct sg_load_read *lr = c->reads;
    c->waits = NULL;
    c->reads = NULL;
    while (lr) {
        struct sg_load_read *next = lr->next;
        if (status == 0) sg_read_send(lr->r, h->store, c->hist, lr->since, lr->upto, lr->limit, lr->mask);
        else sg_read_fail(lr->r);
        free(lr);
        lr = next;
    }
    for (sg_group *g = c->groups; g; g = g->next)
        for (sg_sub *s = g->subs; s; s = s->next) {
            sg_hold *hd = s->hold;
            if (!hd || !hd->awaiting_load) continue;
            s->hold = NULL;
            s->state = SG_SUB_LIVE;
            if (status == 0) {
                sg_hub_resume(h, s, hd->has_epoch ? hd->epoch : NULL, hd->last_seq, hd->cb);
            } else {
                sg_replay rp = {0};
                rp.status = -1;
                hd->cb(s, &rp);
            }
            hold_free(hd);
        }
    /* the waiters last: one may free c (a 404 answered) */
    while (w) {
        struct sg_load_wait *next = w->next;
        w->fn(w->arg, c, status);
        free(w);
        w = next;
    }
}

/* The store answered an open that left the epoch empty. */
static void on_open(void *arg, sg_store_conv *sc, const char *id, int status, const char *epoch, uint64_t last_seq)
{
    sg_hub *h = arg;
    if (!sc && strcmp(id, "*") == 0) { /* status:* hears every conversation now */
        if (h->wildcard.loading) {
            h->wildcard.loading = 0;
            load_done(h, &h->wildcard, 0);
        }
        return;
    }
    sg_conv *c = sg_dict_get(h->convs, id, strlen(id));
    if (!c || c->hist != sc || !c->loading) return;
    if (status == ENOENT && c->want_create) { /* a subscriber came meanwhile: made after all */
        char e[SG_EPOCH_LEN + 1] = "";
        uint64_t last = 0;
        sg_store_conv *again = h->store->ops->open(h->store, c->id, SG_CONV_WATCH, e, &last);
        if (again) {
            h->store->ops->close(c->hist, 0);
            c->hist = again;
            return; /* answered later again */
        }
        status = EIO;
    }
    if (status != 0) {
        load_done(h, c, status == ENOENT ? 404 : 503);
        if (c->n_subs == 0) conv_free(h, c, 0);
        return;
    }
    memcpy(c->epoch, epoch, SG_EPOCH_LEN + 1);
    c->last_seq = c->flushed_seq = last_seq;
    c->loading = 0;
    if (c->empty && last_seq > 0) { /* it held updates after all */
        c->empty = 0;
        h->n_empty--;
    }
    load_done(h, c, 0);
}

/* ---- lifecycle ---- */

sg_hub *sg_hub_new(struct event_base *base, const sg_config *cfg, sg_store *store)
{
    sg_hub *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->base = base;
    h->cfg = cfg;
    h->store = store;
    h->durable = store->ops->sync != NULL;
    store->on_commit = on_commit;
    store->on_commit_arg = h;
    store->on_open = on_open;
    h->convs = sg_dict_new();
    h->wildcard.is_wildcard = 1;
    memcpy(h->wildcard.id, "*", 2);
    h->wildcard.id_len = 1;
    h->flush_ev = evtimer_new(base, on_flush_timer, h);
    h->cleanup_ev = event_new(base, -1, EV_PERSIST, on_cleanup_timer, h);
    if (!h->convs || !h->flush_ev || !h->cleanup_ev) {
        sg_hub_free(h);
        return NULL;
    }
    struct timeval tv = {cfg->cleanup_interval_s, 0};
    event_add(h->cleanup_ev, &tv);
    return h;
}

/* Free the hub and every conversation. Subscribers must be gone. */
void sg_hub_free(sg_hub *h)
{
    if (!h) return;
    if (h->store->ops->drain) h->store->ops->drain(h->store);
    while (h->lru_head)
        conv_free(h, h->lru_head, 0);
    sg_dict_free(h->convs);
    if (h->flush_ev) event_free(h->flush_ev);
    if (h->cleanup_ev) event_free(h->cleanup_ev);
    free(h);
}
