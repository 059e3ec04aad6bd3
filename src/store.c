#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

typedef struct mem_store {
    sg_store base;
    int cap;
} mem_store;

struct sg_store_conv {
    mem_store *store;
    int head;  /* index of the oldest update */
    int count;
    sg_update *ring[]; /* cap slots */
};

void sg_store_new_epoch(char *out)
{
    unsigned char r[SG_EPOCH_LEN / 2];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        static unsigned long long n;
        unsigned long long x = (unsigned long long)(uintptr_t)&n ^ ++n ^ (unsigned long long)time(NULL);
        memcpy(r, &x, sizeof(r) < sizeof(x) ? sizeof(r) : sizeof(x));
    }
    for (size_t i = 0; i < sizeof(r); i++)
        sprintf(out + 2 * i, "%02x", r[i]);
    out[SG_EPOCH_LEN] = 0;
}

static sg_store_conv *mem_open(sg_store *s, const char *conv_id, int create, char *epoch, uint64_t *last_seq)
{
    mem_store *m = (mem_store *)s;
    if (!create) { /* nothing outlives the hub's handle in memory */
        errno = ENOENT;
        return NULL;
    }
    sg_store_conv *c = calloc(1, sizeof(*c) + sizeof(sg_update *) * m->cap);
    if (!c) return NULL;
    c->store = m;
    sg_store_new_epoch(epoch);
    *last_seq = 0;
    return c;
}

static uint64_t mem_append(sg_store_conv *c, sg_update *u, sg_store_done_fn done, void *arg)
{
    int cap = c->store->cap;
    if (c->count == cap) {
        sg_update_unref_later(c->ring[c->head]);
        c->ring[c->head] = NULL;
        c->head = c->head + 1 == cap ? 0 : c->head + 1; /* (no division: an append's hot path) */
        c->count--;
    }
    int at = c->head + c->count;
    c->ring[at < cap ? at : at - cap] = sg_update_ref(u);
    c->count++;
    if (done) done(arg, 0);
    return 0;
}

static void mem_range(sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit,
                      uint64_t mask, sg_store_range_fn cb, void *arg)
{
    int cap = c->store->cap;
    sg_update *stack[128];
    sg_update **out = stack;
    size_t want = limit < (size_t)c->count ? limit : (size_t)c->count;
    uint64_t oldest = c->count ? c->ring[c->head]->seq : 0;
    if (want > 128 && !(out = malloc(sizeof(*out) * want))) {
        cb(arg, -1, NULL, 0, oldest); /* a read that failed: the reader says so */
        return;
    }
    size_t n = 0;
    /* seqs in the ring are consecutive, so skip straight to since + 1 */
    int start = 0;
    if (c->count && since >= oldest) { /* in 64 bits: a since far past the ring is no index */
        uint64_t skip = since - oldest + 1;
        start = skip >= (uint64_t)c->count ? c->count : (int)skip;
    }
    for (int i = start; i < c->count && n < want; i++) {
        sg_update *u = c->ring[(c->head + i) % cap];
        if (upto && u->seq > upto) break;
        if (u->seq <= since || !(mask & (1ULL << u->category))) continue;
        out[n++] = u;
    }
    cb(arg, 0, out, n, oldest);
    if (out != stack) free(out);
}

static void mem_close(sg_store_conv *c, int drop)
{
    (void)drop; /* nothing outlives the process in memory */
    if (!c) return;
    int cap = c->store->cap;
    for (int i = 0; i < c->count; i++)
        sg_update_unref(c->ring[(c->head + i) % cap]);
    free(c);
}

static void mem_free(sg_store *s)
{
    free(s);
}

static const sg_store_ops mem_ops = {.name = "memory", .open = mem_open, .append = mem_append,
                                     .range = mem_range, .close = mem_close, .free = mem_free};

sg_store *sg_store_memory_new(int history_size)
{
    mem_store *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->base.ops = &mem_ops;
    m->cap = history_size;
    return &m->base;
}

/* ---- reads that may answer later ---- */

struct sg_read {
    sg_store_range_fn cb; /* NULL once cancelled */
    void *arg;
    int waiting;  /* the call returned: the answer comes on a later turn */
    int answered; /* the answer came inside the call */
};

static void read_done(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    sg_read *r = arg;
    if (r->cb) r->cb(r->arg, status, ups, n, oldest);
    if (r->waiting) free(r);
    else r->answered = 1;
}

sg_read *sg_store_read(sg_store *s, sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit,
                       uint64_t mask, sg_store_range_fn cb, void *arg)
{
    sg_read *r = malloc(sizeof(*r));
    if (!r) {
        cb(arg, -1, NULL, 0, 0);
        return NULL;
    }
    *r = (sg_read){cb, arg, 0, 0};
    s->ops->range(c, since, upto, limit, mask, read_done, r);
    if (r->answered) {
        free(r);
        return NULL;
    }
    r->waiting = 1;
    return r;
}

void sg_read_cancel(sg_read *r)
{
    if (r) r->cb = NULL;
}

sg_read *sg_read_later(sg_store_range_fn cb, void *arg)
{
    sg_read *r = malloc(sizeof(*r));
    if (r) *r = (sg_read){cb, arg, 1, 0};
    return r;
}

void sg_read_send(sg_read *r, sg_store *s, sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit,
                  uint64_t mask)
{
    if (!r->cb) { /* cancelled meanwhile */
        free(r);
        return;
    }
    s->ops->range(c, since, upto, limit, mask, read_done, r); /* waiting: read_done frees it */
}

void sg_read_fail(sg_read *r)
{
    read_done(r, -1, NULL, 0, 0);
}
