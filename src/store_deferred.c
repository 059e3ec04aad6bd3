/* The deferred store: another store's answers, each on a later loop turn.
 * A test double for the asynchronous store seam (store.h): every caller
 * of a range must cope with an answer that comes after the loop turned,
 * when the conversation may have moved on and the reader may be gone. */
#include "store.h"

#include <event2/event.h>
#include <errno.h>
#include <stdlib.h>

typedef struct dstore dstore;

typedef struct dconv {
    dstore *st;
    sg_store_conv *inner;
    int pending; /* calls not yet answered */
    int closed, drop;
} dconv;

typedef struct dcall {
    struct dcall *prev, *next;
    dstore *st;
    dconv *c;
    struct event *ev;
    int is_range;
    uint64_t since, upto, mask;
    size_t limit;
    sg_store_range_fn range_cb;
    sg_store_done_fn done_cb;
    void *arg;
} dcall;

struct dstore {
    sg_store base;
    sg_store *inner;
    struct event_base *evb;
    const struct timeval *delay; /* a common timeout: calls answer in order */
    dcall *head, *tail;
};

static void conv_release(dconv *c)
{
    if (--c->pending > 0 || !c->closed) return;
    c->st->inner->ops->close(c->inner, c->drop);
    free(c);
}

/* Answer call k: status 0 reads the range from the inner store now. */
static void answer(dcall *k, int status)
{
    dstore *st = k->st;
    if (k->prev) k->prev->next = k->next; else st->head = k->next;
    if (k->next) k->next->prev = k->prev; else st->tail = k->prev;
    if (!k->is_range) {
        if (k->done_cb) k->done_cb(k->arg, status);
    } else if (status == 0) {
        st->inner->ops->range(k->c->inner, k->since, k->upto, k->limit, k->mask, k->range_cb, k->arg);
    } else {
        k->range_cb(k->arg, status, NULL, 0, 0);
    }
    conv_release(k->c);
    event_free(k->ev);
    free(k);
}

static void on_due(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    answer(arg, 0);
}

/* Queue a call; -1 when out of memory (nothing queued). */
static int defer(dconv *c, dcall tmpl)
{
    dstore *st = c->st;
    dcall *k = malloc(sizeof(*k));
    if (!k) return -1;
    *k = tmpl;
    k->st = st;
    k->c = c;
    k->ev = evtimer_new(st->evb, on_due, k);
    if (!k->ev || evtimer_add(k->ev, st->delay) < 0) {
        if (k->ev) event_free(k->ev);
        free(k);
        return -1;
    }
    k->next = NULL;
    k->prev = st->tail;
    if (st->tail) st->tail->next = k; else st->head = k;
    st->tail = k;
    c->pending++;
    return 0;
}

static sg_store_conv *d_open(sg_store *s, const char *conv_id, int create, char *epoch, uint64_t *last_seq)
{
    dstore *st = (dstore *)s;
    dconv *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->st = st;
    c->inner = st->inner->ops->open(st->inner, conv_id, create, epoch, last_seq);
    if (!c->inner) {
        int e = errno;
        free(c);
        errno = e;
        return NULL;
    }
    return (sg_store_conv *)c;
}

static uint64_t d_append(sg_store_conv *sc, sg_update *u, sg_store_done_fn done, void *arg)
{
    dconv *c = (dconv *)sc;
    /* stored now, in order; only the answer waits */
    c->st->inner->ops->append(c->inner, u, NULL, NULL);
    if (done && defer(c, (dcall){.done_cb = done, .arg = arg}) < 0) done(arg, 0);
    return 0;
}

static void d_range(sg_store_conv *sc, uint64_t since, uint64_t upto, size_t limit, uint64_t mask,
                    sg_store_range_fn cb, void *arg)
{
    dconv *c = (dconv *)sc;
    dcall k = {.is_range = 1, .since = since, .upto = upto, .limit = limit, .mask = mask,
               .range_cb = cb, .arg = arg};
    if (defer(c, k) < 0) cb(arg, -1, NULL, 0, 0);
}

static void d_close(sg_store_conv *sc, int drop)
{
    dconv *c = (dconv *)sc;
    if (!c) return;
    c->closed = 1;
    c->drop = drop;
    c->pending++;
    conv_release(c);
}

static void d_free(sg_store *s)
{
    dstore *st = (dstore *)s;
    while (st->head)
        answer(st->head, -1);
    st->inner->ops->free(st->inner);
    free(st);
}

static const sg_store_ops deferred_ops = {.name = "deferred", .open = d_open, .append = d_append,
                                          .range = d_range, .close = d_close, .free = d_free};

sg_store *sg_store_deferred_new(sg_store *inner, struct event_base *base, int delay_ms)
{
    dstore *st = inner ? calloc(1, sizeof(*st)) : NULL;
    if (!st) {
        if (inner) inner->ops->free(inner);
        return NULL;
    }
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    st->base.ops = &deferred_ops;
    st->inner = inner;
    st->evb = base;
    st->delay = event_base_init_common_timeout(base, &tv);
    if (!st->delay) {
        inner->ops->free(inner);
        free(st);
        return NULL;
    }
    return &st->base;
}
