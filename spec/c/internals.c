/* Unit tests for C internals the daemon-level specs cannot aim at: the
 * dict, the memory store's contract, the hub's flush order and grouping,
 * and the subscriber filter operators. Output is TAP ("ok N - name" /
 * "not ok N - name"), counted by scripts/test; the binary exits non-zero
 * on any failure. Built by `make build/internals` (and its sanitizer twin). */
#include "clock.h"
#include "config.h"
#include "dict.h"
#include "filter.h"
#include "hub.h"
#include "log.h"
#include "rate.h"
#include "status.h"
#include "store.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

static sg_config cfg;

/* ---- dict ---- */

static void dict_basics(void)
{
    sg_dict *d = sg_dict_new();
    char key[32];
    static int vals[5000];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "conv-%d", i);
        CHECK(sg_dict_set(d, key, strlen(key), &vals[i]) == 0);
    }
    CHECK(sg_dict_size(d) == 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "conv-%d", i);
        CHECK(sg_dict_get(d, key, strlen(key)) == &vals[i]);
    }
    CHECK(sg_dict_get(d, "conv-5000", 9) == NULL);
    CHECK(sg_dict_get(d, "conv-1", 5) == NULL); /* a prefix is another key */
    /* replace, then delete every other key */
    CHECK(sg_dict_set(d, "conv-7", 6, &vals[8]) == 0);
    CHECK(sg_dict_get(d, "conv-7", 6) == &vals[8]);
    CHECK(sg_dict_size(d) == 5000);
    for (int i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof(key), "conv-%d", i);
        CHECK(sg_dict_del(d, key, strlen(key)) == &vals[i]);
    }
    CHECK(sg_dict_size(d) == 2500);
    CHECK(sg_dict_del(d, "conv-0", 6) == NULL);
    CHECK(sg_dict_get(d, "conv-9", 6) == &vals[9]);
    /* keys with NUL bytes and the empty key are keys like any other */
    CHECK(sg_dict_set(d, "a\0b", 3, &vals[1]) == 0);
    CHECK(sg_dict_get(d, "a\0c", 3) == NULL);
    CHECK(sg_dict_get(d, "a\0b", 3) == &vals[1]);
    CHECK(sg_dict_set(d, "", 0, &vals[2]) == 0);
    CHECK(sg_dict_get(d, "", 0) == &vals[2]);
    sg_dict_free(d);
}

/* ---- the rate limiter ---- */

static void rate_gcra(void)
{
    sg_rate r;
    sg_rate_init(&r, 2, 3); /* 2 a second, bursts of 3 */
    int64_t t = 1000000;
    CHECK(sg_rate_take(&r, t) == 0);
    CHECK(sg_rate_take(&r, t) == 0);
    CHECK(sg_rate_take(&r, t) == 0);
    int64_t wait = sg_rate_take(&r, t);
    CHECK(wait > 0 && wait <= 500); /* the next token in half a second */
    CHECK(sg_rate_take(&r, t + wait - 1) > 0);
    CHECK(sg_rate_take(&r, t + wait) == 0);
    CHECK(sg_rate_take(&r, t + wait) > 0);
    /* idle long enough, the whole burst is back, and no more */
    t += 10000;
    for (int i = 0; i < 3; i++)
        CHECK(sg_rate_take(&r, t) == 0);
    CHECK(sg_rate_take(&r, t) > 0);
    /* no limit */
    sg_rate_init(&r, 0, 0);
    for (int i = 0; i < 1000; i++)
        CHECK(sg_rate_take(&r, t) == 0);
    /* 30 a minute, bursts of 30 (a channel's subscription changes) */
    sg_rate_init(&r, 0.5, 30);
    for (int i = 0; i < 30; i++)
        CHECK(sg_rate_take(&r, t) == 0);
    wait = sg_rate_take(&r, t);
    CHECK(wait > 1900 && wait <= 2000);
}

/* ---- updates and drafts ---- */

static sg_update *update(const char *conv, const char *cat, const char *text, uint64_t seq)
{
    char json[512];
    snprintf(json, sizeof(json), "{\"conversation_id\":\"%s\",\"category\":\"%s\",\"text\":\"%s\"}", conv, cat,
             text);
    sg_limits lim = {4096, 65536};
    sg_draft d;
    sg_error e;
    if (sg_draft_parse(json, strlen(json), &lim, &d, &e) < 0) return NULL;
    sg_update *u = sg_update_new(&d, seq, 1700000000000LL);
    sg_draft_free(&d);
    return u;
}

/* The pool of freed updates: a block comes back for the next update of
 * its size, holding that update intact; big ones are not kept; the pool
 * stays within its 4 MB. */
static void update_pool(void)
{
    sg_update_pool_free();
    sg_update *a = update("p1", "info", "hello", 7);
    CHECK(a != NULL);
    void *first = a;
    sg_update_ref(a);
    sg_update_unref(a);
    CHECK(sg_update_pooled() == 0); /* still referenced */
    sg_update_unref(a);
    size_t held = sg_update_pooled();
    sg_update *b = update("p1", "tool", "world", 8);
    CHECK(b != NULL);
    if (sg_update_pooling()) {
        CHECK(held > 0 && held % 32 == 0);
        CHECK((void *)b == first);
        CHECK(sg_update_pooled() == 0);
    } else {
        CHECK(held == 0);
    }
    const char *want = "{\"conversation_id\":\"p1\",\"seq\":8,\"category\":\"tool\",\"text\":\"world\","
                       "\"metadata\":{},\"timestamp\":\"2023-11-14T22:13:20.000Z\"}";
    CHECK(b->json_len == strlen(want) && strcmp(b->json, want) == 0);
    CHECK(b->seq == 8 && b->refcnt == 1);
    sg_update_unref(b);
    /* over 2 KB: freed, not kept */
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    held = sg_update_pooled();
    sg_update *c = sg_update_stored(0, 9, 1700000000000LL, big, strlen(big));
    CHECK(c != NULL && c->json_len == 2999 && memcmp(c->json, big, 2999) == 0);
    sg_update_unref(c);
    CHECK(sg_update_pooled() == held);
    /* 8,000 of about 640 bytes freed: the pool keeps 4 MB at most */
    char mid[600];
    memset(mid, 'y', sizeof(mid) - 1);
    mid[sizeof(mid) - 1] = 0;
    static sg_update *many[8000];
    for (int i = 0; i < 8000; i++)
        many[i] = sg_update_stored(0, (uint64_t)i + 10, 1700000000000LL, mid, strlen(mid));
    for (int i = 0; i < 8000; i++)
        sg_update_unref(many[i]);
    CHECK(sg_update_pooled() <= ((size_t)4 << 20));
    CHECK(!sg_update_pooling() || sg_update_pooled() > ((size_t)4 << 20) - 1024);
    sg_update_pool_free();
    CHECK(sg_update_pooled() == 0);
    /* dropped later: 64 at a time (at once in the sanitizer build); one
     * still referenced elsewhere lives on */
    sg_update *keep = sg_update_stored(0, 1, 1700000000000LL, "k", 1);
    sg_update_ref(keep);
    sg_update_unref_later(keep);
    for (int i = 1; i < 63; i++)
        sg_update_unref_later(sg_update_stored(0, (uint64_t)i + 1, 1700000000000LL, "x", 1));
    CHECK(keep->refcnt == (sg_update_pooling() ? 2 : 1));
    CHECK(sg_update_pooled() == 0);
    sg_update_unref_later(sg_update_stored(0, 64, 1700000000000LL, "x", 1));
    CHECK(keep->refcnt == 1);
    CHECK(sg_update_pooled() == (sg_update_pooling() ? 63 * ((sizeof(sg_update) + 2 + 31) / 32 * 32) : 0));
    sg_update_unref(keep);
    sg_update_unref_later(sg_update_stored(0, 65, 1700000000000LL, "x", 1));
    sg_update_pool_free(); /* drops what waits, then frees the pool */
    CHECK(sg_update_pooled() == 0);
}

static int publish(sg_hub *h, const char *conv, const char *cat, const char *text, const char *md)
{
    char json[512];
    snprintf(json, sizeof(json), "{\"conversation_id\":\"%s\",\"category\":\"%s\",\"text\":\"%s\"%s%s}", conv,
             cat, text, md ? ",\"metadata\":" : "", md ? md : "");
    sg_limits lim = {4096, 65536};
    sg_draft d;
    sg_error e;
    if (sg_draft_parse(json, strlen(json), &lim, &d, &e) < 0) return -1;
    sg_publish_result r;
    int rc = sg_hub_publish(h, &d, &r, &e);
    sg_draft_free(&d);
    return rc;
}

/* ---- the memory store's contract ---- */

struct got {
    int calls, status;
    uint64_t seqs[64];
    size_t n;
    uint64_t oldest;
};

static void on_range(void *arg, int status, sg_update **ups, size_t n, uint64_t oldest)
{
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->n = n;
    g->oldest = oldest;
    for (size_t i = 0; i < n && i < 64; i++)
        g->seqs[i] = ups[i]->seq;
}

static void on_done(void *arg, int status)
{
    (*(int *)arg)++;
}

static void store_contract(void)
{
    sg_store *s = sg_store_memory_new(5);
    char epoch[SG_EPOCH_LEN + 1];
    uint64_t last = 99;
    sg_store_conv *c = s->ops->open(s, "c1", 1, epoch, &last);
    CHECK(c != NULL);
    CHECK(last == 0);
    CHECK(strlen(epoch) == SG_EPOCH_LEN);
    int done = 0;
    for (uint64_t seq = 1; seq <= 8; seq++) {
        sg_update *u = update("c1", seq % 2 ? "tool" : "info", "x", seq);
        s->ops->append(c, u, on_done, &done);
        sg_update_unref(u); /* the store took its own reference */
    }
    CHECK(done == 8); /* the memory store answers at once */
    struct got g = {0};
    s->ops->range(c, 0, 0, (size_t)-1, sg_category_all(), on_range, &g);
    CHECK(g.calls == 1 && g.status == 0);
    CHECK(g.n == 5); /* trimmed to the history size */
    CHECK(g.seqs[0] == 4 && g.seqs[4] == 8);
    CHECK(g.oldest == 4);
    memset(&g, 0, sizeof(g));
    s->ops->range(c, 5, 7, (size_t)-1, sg_category_all(), on_range, &g); /* (since, upto] */
    CHECK(g.n == 2 && g.seqs[0] == 6 && g.seqs[1] == 7);
    memset(&g, 0, sizeof(g));
    uint64_t tool = 1ULL << sg_category_index("tool", 4);
    s->ops->range(c, 0, 0, (size_t)-1, tool, on_range, &g);
    CHECK(g.n == 2 && g.seqs[0] == 5 && g.seqs[1] == 7);
    CHECK(g.oldest == 4); /* the oldest held, whatever its category */
    memset(&g, 0, sizeof(g));
    s->ops->range(c, 0, 0, 2, sg_category_all(), on_range, &g); /* limit */
    CHECK(g.n == 2 && g.seqs[0] == 4);
    /* a since far past the ring is nothing to send, not an index (found by
     * the http fuzzer: since - oldest + 1 cast to int went negative) */
    uint64_t far[] = {9, 1ULL << 31, (1ULL << 32) + 5, UINT64_MAX - 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
        memset(&g, 0, sizeof(g));
        s->ops->range(c, far[i], 0, (size_t)-1, sg_category_all(), on_range, &g);
        CHECK(g.calls == 1 && g.n == 0 && g.oldest == 4);
    }
    s->ops->close(c, 1);
    s->ops->free(s);
}

/* ---- the deferred store: the seam's contract when answers come later ---- */

static void store_deferred_contract(void)
{
    struct event_base *base = event_base_new();
    sg_store *s = sg_store_deferred_new(sg_store_memory_new(3), base, 0);
    char epoch[SG_EPOCH_LEN + 1];
    uint64_t last = 99;
    sg_store_conv *c = s->ops->open(s, "d1", 1, epoch, &last);
    CHECK(c != NULL && last == 0);
    int done = 0;
    for (uint64_t seq = 1; seq <= 4; seq++) {
        sg_update *u = update("d1", "info", "x", seq);
        s->ops->append(c, u, on_done, &done);
        sg_update_unref(u);
    }
    CHECK(done == 0); /* answered on a later turn */
    struct got g = {0}, g2 = {0}, g3 = {0};
    sg_read *r = sg_store_read(s, c, 0, 0, (size_t)-1, sg_category_all(), on_range, &g);
    CHECK(r != NULL && g.calls == 0);
    /* a cancelled read is never answered */
    sg_read *r2 = sg_store_read(s, c, 0, 0, (size_t)-1, sg_category_all(), on_range, &g2);
    sg_read_cancel(r2);
    /* appended before the answer: a range is read when it is answered */
    sg_update *u5 = update("d1", "info", "x", 5);
    s->ops->append(c, u5, NULL, NULL);
    sg_update_unref(u5);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(done == 4);
    CHECK(g.calls == 1 && g.status == 0 && g.n == 3 && g.seqs[0] == 3 && g.seqs[2] == 5 && g.oldest == 3);
    CHECK(g2.calls == 0);
    /* a conversation closed with a read pending still answers it */
    memset(&g, 0, sizeof(g));
    CHECK(sg_store_read(s, c, 3, 0, (size_t)-1, sg_category_all(), on_range, &g) != NULL);
    s->ops->close(c, 1);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(g.calls == 1 && g.n == 2 && g.seqs[0] == 4);
    /* freeing the store answers what is pending with status -1 */
    c = s->ops->open(s, "d2", 1, epoch, &last);
    CHECK(sg_store_read(s, c, 0, 0, (size_t)-1, sg_category_all(), on_range, &g3) != NULL);
    s->ops->close(c, 1);
    s->ops->free(s);
    CHECK(g3.calls == 1 && g3.status == -1);
    event_base_free(base);
}

/* ---- the hub: flush order, grouping ---- */

struct frames {
    int blobs;              /* frames built */
    int deliveries;         /* appends to subscribers */
    char seen[4096];        /* "sub:seq,seq;" per delivery */
    size_t len;
};

static sg_blob *t_encode(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n)
{
    struct frames *f = g->subs ? g->subs->owner : NULL;
    sg_blob *b = sg_blob_new(n * 24 + 1);
    for (size_t i = 0; i < n; i++)
        b->len += (size_t)snprintf(b->data + b->len, 24, "%llu,", (unsigned long long)ups[i]->seq);
    b->n_updates = (int)n;
    if (f) f->blobs++;
    return b;
}

static void t_deliver(sg_sub *s, sg_blob *b)
{
    struct frames *f = s->owner;
    f->deliveries++;
    f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, "%.*s;", (int)b->len, b->data);
}

static const sg_sub_class t_class = {"test", t_encode, t_deliver, NULL};

static void hub_flush_order_and_grouping(void)
{
    struct event_base *base = event_base_new();
    sg_store *store = sg_store_memory_new(100);
    cfg.batch_size = 3;
    cfg.flush_ms = 60000; /* only the batch size flushes in this test */
    sg_hub *h = sg_hub_new(base, &cfg, store);
    sg_error err;
    sg_conv *c = sg_hub_conv(h, "g1", 2, SG_CONV_WATCH, &err);
    CHECK(c != NULL);
    struct frames fa = {0}, fb = {0};
    sg_sub a, b, t;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&t, 0, sizeof(t));
    /* a and b: the same categories, one group, one frame per flush; t: tool only */
    sg_hub_subscribe(h, c, &a, &t_class, sg_category_all(), 0, NULL, &fa);
    sg_hub_subscribe(h, c, &b, &t_class, sg_category_all(), 0, NULL, &fa);
    struct frames ft = {0};
    sg_hub_subscribe(h, c, &t, &t_class, 1ULL << sg_category_index("tool", 4), 0, NULL, &ft);
    CHECK(publish(h, "g1", "info", "1", NULL) == 0);
    CHECK(publish(h, "g1", "tool", "2", NULL) == 0);
    CHECK(fa.deliveries == 0); /* queued, not flushed */
    CHECK(publish(h, "g1", "info", "3", NULL) == 0); /* the batch is full: flushed */
    CHECK(fa.blobs == 1);      /* one frame for the group of two */
    CHECK(fa.deliveries == 2);
    CHECK(strcmp(fa.seen, "1,2,3,;1,2,3,;") == 0);
    CHECK(ft.deliveries == 1);
    CHECK(strcmp(ft.seen, "2,;") == 0); /* only its category, in order */
    CHECK(c->flushed_seq == 3);
    /* a flush with nothing for a group sends it nothing */
    CHECK(publish(h, "g1", "info", "4", NULL) == 0);
    sg_hub_flush_all(h);
    CHECK(ft.deliveries == 1);
    CHECK(strcmp(fa.seen, "1,2,3,;1,2,3,;4,;4,;") == 0);
    sg_hub_unsubscribe(h, &a);
    sg_hub_unsubscribe(h, &b);
    sg_hub_unsubscribe(h, &t);
    (void)fb;
    sg_hub_free(h);
    store->ops->free(store);
    event_base_free(base);
    cfg.batch_size = SG_DEFAULT_BATCH_SIZE;
    cfg.flush_ms = SG_DEFAULT_FLUSH_MS;
}

static void hub_watch_slots(void)
{
    struct event_base *base = event_base_new();
    sg_store *store = sg_store_memory_new(10);
    cfg.max_conversations = 2;
    sg_hub *h = sg_hub_new(base, &cfg, store);
    sg_error err;
    CHECK(publish(h, "p1", "info", "x", NULL) == 0);
    CHECK(publish(h, "p2", "info", "x", NULL) == 0);
    /* watching opens empty conversations apart, evicting nothing */
    CHECK(sg_hub_conv(h, "w1", 2, SG_CONV_WATCH, &err) != NULL);
    CHECK(sg_hub_conv(h, "w2", 2, SG_CONV_WATCH, &err) != NULL);
    CHECK(sg_hub_conv(h, "p1", 2, SG_CONV_FIND, &err) != NULL);
    CHECK(sg_hub_conv(h, "p2", 2, SG_CONV_FIND, &err) != NULL);
    /* a third empty one evicts an idle empty one, never one with history */
    CHECK(sg_hub_conv(h, "w3", 2, SG_CONV_WATCH, &err) != NULL);
    CHECK(sg_hub_conv(h, "p1", 2, SG_CONV_FIND, &err) != NULL);
    CHECK(sg_hub_conv(h, "p2", 2, SG_CONV_FIND, &err) != NULL);
    /* a producer's third conversation evicts the idle one with history */
    CHECK(publish(h, "p3", "info", "x", NULL) == 0);
    CHECK(sg_hub_conv(h, "p1", 2, SG_CONV_FIND, &err) == NULL);
    sg_hub_free(h);
    store->ops->free(store);
    event_base_free(base);
    cfg.max_conversations = SG_DEFAULT_MAX_CONVERSATIONS;
}

/* ---- out of memory in the fan-out: members are cut off, never skipped ---- */

static sg_blob *t_encode_oom(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n)
{
    return NULL;
}

static void t_deliver_cut(sg_sub *s, sg_blob *b)
{
    struct frames *f = s->owner;
    f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, "%s;", b ? "frame" : "cut");
    if (!b) s->state = SG_SUB_DEAD;
}

static const sg_sub_class t_oom_class = {"oom", t_encode_oom, t_deliver_cut, NULL};

static void hub_encode_oom_cuts(void)
{
    struct event_base *base = event_base_new();
    sg_store *store = sg_store_memory_new(10);
    cfg.batch_size = 1;
    sg_hub *h = sg_hub_new(base, &cfg, store);
    sg_error err;
    sg_conv *c = sg_hub_conv(h, "o1", 2, SG_CONV_WATCH, &err);
    struct frames fa = {0};
    sg_sub a, b;
    CHECK(sg_hub_subscribe(h, c, &a, &t_oom_class, sg_category_all(), 0, NULL, &fa) == 0);
    CHECK(sg_hub_subscribe(h, c, &b, &t_oom_class, sg_category_all(), 0, NULL, &fa) == 0);
    CHECK(publish(h, "o1", "info", "x", NULL) == 0);
    /* each member is told, once: the transport closes it and it resumes */
    CHECK(strcmp(fa.seen, "cut;cut;") == 0);
    CHECK(publish(h, "o1", "info", "y", NULL) == 0);
    CHECK(strcmp(fa.seen, "cut;cut;") == 0); /* dead: nothing more */
    CHECK(publish(h, "o1", "info", "z", NULL) == 0);
    sg_hub_unsubscribe(h, &a);
    sg_hub_unsubscribe(h, &b);
    sg_hub_free(h);
    store->ops->free(store);
    event_base_free(base);
    cfg.batch_size = SG_DEFAULT_BATCH_SIZE;
}

/* ---- a store that cannot take an update: refused, not acknowledged ---- */

static sg_store_conv *t_full_open(sg_store *s, const char *id, int create, char *epoch, uint64_t *last)
{
    sg_store_new_epoch(epoch);
    *last = 0;
    return (sg_store_conv *)malloc(1);
}
static uint64_t t_full_append(sg_store_conv *c, sg_update *u, sg_store_done_fn done, void *arg)
{
    return UINT64_MAX; /* as the sqlite store out of memory */
}
static void t_full_close(sg_store_conv *c, int drop) { free(c); }
static void t_full_free(sg_store *s) {}
static const sg_store_ops t_full_ops = {.name = "full", .open = t_full_open, .append = t_full_append,
                                        .close = t_full_close, .free = t_full_free};

static void hub_refuses_what_the_store_cannot_take(void)
{
    struct event_base *base = event_base_new();
    sg_store store = {&t_full_ops, NULL, NULL, NULL};
    sg_hub *h = sg_hub_new(base, &cfg, &store);
    sg_limits lim = {4096, 65536};
    sg_draft d;
    sg_error e;
    const char *json = "{\"conversation_id\":\"f1\",\"category\":\"info\",\"text\":\"x\"}";
    CHECK(sg_draft_parse(json, strlen(json), &lim, &d, &e) == 0);
    sg_publish_result r;
    CHECK(sg_hub_publish(h, &d, &r, &e) < 0);
    CHECK(e.status == 503);
    sg_draft_free(&d);
    sg_conv *c = sg_hub_conv(h, "f1", 2, SG_CONV_FIND, &e);
    CHECK(c && c->last_seq == 0 && c->nq == 0); /* no seq spent, nothing queued */
    CHECK(sg_hub_pending(h) == 0);
    sg_hub_free(h);
    event_base_free(base);
}

/* ---- resuming subscribers on a store that answers later ---- */

static void on_resumed(sg_sub *s, const sg_replay *rp)
{
    struct frames *f = s->owner;
    f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, "replay%s:", rp->recovered ? "+" : "-");
    for (size_t i = 0; i < rp->n; i++)
        f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, "%llu,",
                                   (unsigned long long)rp->ups[i]->seq);
    if (!rp->recovered && rp->gap_to >= rp->gap_from)
        f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, "gap%llu-%llu",
                                   (unsigned long long)rp->gap_from, (unsigned long long)rp->gap_to);
    f->len += (size_t)snprintf(f->seen + f->len, sizeof(f->seen) - f->len, ";");
}

static void hub_resume_deferred(void)
{
    struct event_base *base = event_base_new();
    sg_store *store = sg_store_deferred_new(sg_store_memory_new(4), base, 0);
    cfg.batch_size = 1; /* every publish flushes at once */
    sg_hub *h = sg_hub_new(base, &cfg, store);
    sg_error err;
    for (int i = 0; i < 3; i++)
        CHECK(publish(h, "r1", "info", "x", NULL) == 0);
    sg_conv *c = sg_hub_conv(h, "r1", 2, SG_CONV_FIND, &err);
    struct frames fa = {0}, fb = {0}, fc = {0};
    sg_sub a, b, cc;
    /* a resumes from 1: its replay (2, 3] is read while 4 and 5 are
     * flushed; they are held and follow the replay */
    sg_hub_subscribe(h, c, &a, &t_class, sg_category_all(), 0, NULL, &fa);
    sg_hub_resume(h, &a, c->epoch, 1, on_resumed);
    CHECK(a.state == SG_SUB_HOLDING && fa.len == 0);
    /* b resumes from an epoch that is gone; c resumes and leaves at once */
    sg_hub_subscribe(h, c, &b, &t_class, sg_category_all(), 0, NULL, &fb);
    sg_hub_resume(h, &b, "0123456789abcdef", 2, on_resumed);
    sg_hub_subscribe(h, c, &cc, &t_class, sg_category_all(), 0, NULL, &fc);
    sg_hub_resume(h, &cc, c->epoch, 0, on_resumed);
    CHECK(publish(h, "r1", "info", "x", NULL) == 0);
    CHECK(publish(h, "r1", "info", "x", NULL) == 0);
    sg_hub_unsubscribe(h, &cc);
    CHECK(fa.len == 0); /* held */
    event_base_loop(base, EVLOOP_ONCE);
    /* the store was trimmed to 4 meanwhile (2..5): a's replay is whole */
    CHECK(strcmp(fa.seen, "replay+:2,3,;4,;5,;") == 0);
    /* b's epoch is gone: all that is held of this one, and 1 is lost */
    CHECK(strcmp(fb.seen, "replay-:2,3,gap1-1;4,;5,;") == 0);
    CHECK(fc.len == 0); /* unsubscribed before the answer: nothing */
    CHECK(a.state == SG_SUB_LIVE && a.hold == NULL);
    CHECK(publish(h, "r1", "info", "x", NULL) == 0);
    CHECK(strcmp(fa.seen, "replay+:2,3,;4,;5,;6,;") == 0);
    /* nothing missed: answered at once, with no read */
    struct frames fd = {0};
    sg_sub d;
    sg_hub_subscribe(h, c, &d, &t_class, sg_category_all(), 0, NULL, &fd);
    sg_hub_resume(h, &d, c->epoch, 6, on_resumed);
    CHECK(strcmp(fd.seen, "replay+:;") == 0 && d.state == SG_SUB_LIVE);
    sg_hub_unsubscribe(h, &a);
    sg_hub_unsubscribe(h, &b);
    sg_hub_unsubscribe(h, &d);
    sg_hub_free(h);
    store->ops->free(store);
    event_base_free(base);
    cfg.batch_size = SG_DEFAULT_BATCH_SIZE;
}

/* ---- subscriber filter operators ---- */

static int matches(const char *filter_json, const char *cat, const char *text, const char *md)
{
    json_t *spec = json_loads(filter_json, 0, NULL);
    char err[200];
    sg_filter *f = sg_filter_parse(spec, err, sizeof(err));
    json_decref(spec);
    if (!f && err[0]) return -1;
    char json[512];
    snprintf(json, sizeof(json), "{\"conversation_id\":\"f\",\"category\":\"%s\",\"text\":\"%s\"%s%s}", cat, text,
             md ? ",\"metadata\":" : "", md ? md : "");
    sg_limits lim = {4096, 65536};
    sg_draft d;
    sg_error e;
    if (sg_draft_parse(json, strlen(json), &lim, &d, &e) < 0) return -2;
    sg_update *u = sg_update_new(&d, 1, 1700000000000LL);
    sg_draft_free(&d);
    json_t *decoded = NULL;
    int m = sg_filter_match(f, u, &decoded);
    json_decref(decoded);
    sg_update_unref(u);
    sg_filter_unref(f);
    return m;
}

static void filter_operators(void)
{
    const char *md = "{\"tool\":\"search_code\",\"duration_ms\":1500,\"nested\":{\"n\":3}}";
    CHECK(matches("{\"metadata\":{\"tool\":{\"eq\":\"search_code\"}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"tool\":{\"ne\":\"search_code\"}}}", "tool", "x", md) == 0);
    CHECK(matches("{\"metadata\":{\"tool\":{\"ne\":\"other\"}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"missing\":{\"ne\":\"x\"}}}", "tool", "x", md) == 1); /* absent: not equal */
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"gt\":1000}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"gt\":1500}}}", "tool", "x", md) == 0);
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"gte\":1500}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"lt\":1500}}}", "tool", "x", md) == 0);
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"lte\":1500}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"tool\":{\"gt\":1}}}", "tool", "x", md) == 0); /* not a number */
    CHECK(matches("{\"metadata\":{\"duration_ms\":{\"exists\":true}}}", "tool", "x", md) == 1);
    CHECK(matches("{\"metadata\":{\"missing\":{\"exists\":true}}}", "tool", "x", md) == 0);
    CHECK(matches("{\"text\":{\"contains\":\"search\"}}", "tool", "running search now", NULL) == 1);
    CHECK(matches("{\"text\":{\"contains\":\"search\"}}", "tool", "idle", NULL) == 0);
    CHECK(matches("{\"categories\":[\"error\"]}", "tool", "x", NULL) == 0);
    CHECK(matches("{\"categories\":[\"error\"],\"text\":\"x\"}", "error", "x", NULL) == 1); /* plain value: eq */
    CHECK(matches("{\"metadata\":{\"tool\":{\"bogus\":1}}}", "tool", "x", md) == -1);      /* unknown operator */
}

static void filter_sharing(void)
{
    /* equal filters have equal keys, so their subscribers share a group */
    char err[200];
    json_t *s1 = json_loads("{\"metadata\":{\"a\":1,\"b\":{\"gte\":2}},\"categories\":[\"tool\",\"info\"]}", 0, NULL);
    json_t *s2 = json_loads("{\"categories\":[\"info\",\"tool\"],\"metadata\":{\"b\":{\"gte\":2},\"a\":1}}", 0, NULL);
    json_t *s3 = json_loads("{\"categories\":[\"info\",\"tool\"],\"metadata\":{\"b\":{\"gte\":3},\"a\":1}}", 0, NULL);
    sg_filter *f1 = sg_filter_parse(s1, err, sizeof(err)), *f2 = sg_filter_parse(s2, err, sizeof(err)),
              *f3 = sg_filter_parse(s3, err, sizeof(err));
    CHECK(f1 && f2 && f3);
    CHECK(strcmp(sg_filter_key(f1), sg_filter_key(f2)) == 0);
    CHECK(strcmp(sg_filter_key(f1), sg_filter_key(f3)) != 0);
    sg_filter_unref(f1);
    sg_filter_unref(f2);
    sg_filter_unref(f3);
    json_decref(s1);
    json_decref(s2);
    json_decref(s3);
}

int main(void)
{
    char err[256];
    sg_log_level = SG_LOG_ERROR + 1;
    sg_config_load(&cfg, NULL, err, sizeof(err));
    sg_categories_init(&cfg, err, sizeof(err));
    run("dict: set, get, replace, delete over 5,000 keys; NUL and empty keys", dict_basics);
    run("rate: GCRA passes the burst, then one event per interval, and says how long to wait", rate_gcra);
    run("updates: a freed block serves the next update of its size, intact; big ones are freed; 4 MB at most; dropped later 64 at a time", update_pool);
    run("memory store: answers at once, trims, ranges by (since, upto], category and limit", store_contract);
    run("deferred store: answers later, reads when it answers, cancels, answers at close and free", store_deferred_contract);
    run("hub: resumes hold live frames until a late replay, then deliver them in order; gaps; cancel", hub_resume_deferred);
    run("hub: a frame that cannot be built cuts its group's members off (they resume), never skips them", hub_encode_oom_cuts);
    run("hub: an update the store cannot take is refused 503, with no seq spent", hub_refuses_what_the_store_cannot_take);
    run("hub: flushes at batch_size in seq order, one frame per group, categories per group", hub_flush_order_and_grouping);
    run("hub: watched empty conversations are counted apart and never evict history", hub_watch_slots);
    run("filters: eq ne gt gte lt lte contains exists, categories, unknown operators", filter_operators);
    run("filters: equal filters share a key whatever their order", filter_sharing);
    printf("1..%d\n", n_tests);
    sg_update_pool_free();
    sg_categories_free();
    sg_config_free(&cfg);
    return n_failed ? 1 : 0;
}
