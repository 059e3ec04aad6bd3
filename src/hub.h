/* The hub: conversations, the sequencer, per-conversation queues flushed at
 * batch size or flush interval, and fan-out to subscriber groups. Each
 * group (subscribers of one transport with the same categories and format)
 * gets one frame per flush, shared by reference by its members. */
#ifndef SG_HUB_H
#define SG_HUB_H

#include <event2/event.h>
#include <stdint.h>

#include "blob.h"
#include "config.h"
#include "dict.h"
#include "filter.h"
#include "status.h"
#include "store.h"

typedef struct sg_hub sg_hub;
typedef struct sg_conv sg_conv;
typedef struct sg_sub sg_sub;
typedef struct sg_group sg_group;

/* What a transport supplies to the hub. */
typedef struct sg_sub_class {
    const char *name;
    /* Build the frame for the n updates this group receives in one flush
     * (n >= 1, oldest first). Returns a new blob or NULL (out of memory). */
    sg_blob *(*encode)(const sg_group *g, const sg_conv *c, sg_update **ups, size_t n);
    /* Append the shared frame to the subscriber's connection. May mark the
     * subscriber SG_SUB_DEAD (slow consumer) but must not unsubscribe it.
     * b is NULL when the frame could not be built (out of memory): the
     * transport then cuts the subscriber off, as it does when the frame
     * cannot be appended, so that the client resumes from its last seq
     * instead of missing updates in silence. */
    void (*deliver)(sg_sub *s, sg_blob *b);
    /* Optional: the conversation lost updates this subscriber has not
     * seen (history no longer holds them, or the conversation began
     * again): tell the client to resume from its last seq, where it
     * learns of the gap. Marks s SG_SUB_DEAD. NULL: deliver(s, NULL). */
    void (*cut)(sg_sub *s, const char *reason);
} sg_sub_class;

struct sg_group {
    const sg_sub_class *cls;
    uint64_t mask;
    int variant; /* transport-defined, e.g. batch pushes */
    sg_filter *filter; /* NULL for none; the group holds a reference */
    sg_sub *subs;
    int n;
    sg_group *next;
};

enum {
    SG_SUB_LIVE = 0,  /* frames are delivered */
    SG_SUB_DEAD,      /* disconnecting: receives nothing more */
    SG_SUB_HOLDING,   /* resuming: frames wait until its replay is written */
};

struct sg_sub {
    sg_group *group;
    sg_conv *conv;
    sg_sub *prev, *next;
    void *owner; /* the transport's connection state */
    int state;   /* SG_SUB_* */
    struct sg_hold *hold; /* while resuming (hub.c) */
};

struct sg_conv {
    char id[SG_MAX_CONV_ID + 1];
    size_t id_len;
    char epoch[SG_EPOCH_LEN + 1];
    uint64_t last_seq;    /* newest seq assigned */
    uint64_t flushed_seq; /* newest seq handed to subscribers */
    uint64_t published;   /* updates accepted since the conversation opened */
    uint64_t flushes;     /* batches handed to subscribers */
    sg_store_conv *hist;
    sg_update **queue; /* queued updates, oldest first */
    uint64_t *qgen;    /* the store's commit that holds each (0: durable already) */
    int nq, qcap;
    int awaiting_commit;   /* due, held back until what was queued when it came due is committed */
    uint64_t await_gen;    /* that commit */
    sg_conv *aprev, *anext; /* the hub's list of those */
    int64_t due_ms;              /* flush deadline, when queued */
    sg_conv *fprev, *fnext;      /* flush list, by deadline */
    int in_flush_list;
    sg_conv *lprev, *lnext;      /* activity list, oldest first */
    int64_t last_activity_ms;    /* wall clock, Unix ms */
    int64_t last_activity_mono;
    sg_group *groups;
    int n_subs;
    int is_wildcard;             /* the pseudo-conversation of status:* */
    int empty;                   /* opened by a subscriber; no update yet */
    sg_dict *idem;               /* idempotency_key -> struct idem */
    struct idem *idem_head, *idem_tail;
    /* being read from the store (the Redis engine answers opens on a later
     * loop turn): epoch and last_seq are not known yet */
    int loading;
    int want_create;             /* a subscriber opened it meanwhile */
    struct sg_load_wait *waits;  /* sg_hub_when_loaded */
    struct sg_load_read *reads;  /* history reads asked meanwhile */
};

#define SG_BATCH_BUCKETS 8   /* 1 2 5 10 20 50 100 +Inf */
#define SG_LATENCY_BUCKETS 11 /* .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 +Inf seconds */
#define SG_RATE_WINDOW_S 300

typedef struct sg_hub_stats {
    uint64_t batch_hist[SG_BATCH_BUCKETS];
    uint64_t batch_sum;
    uint64_t latency_hist[SG_LATENCY_BUCKETS];
    double latency_sum;
    uint64_t latency_count;
    /* per-second publish counts over the last SG_RATE_WINDOW_S seconds */
    uint32_t sec_total[SG_RATE_WINDOW_S], sec_errors[SG_RATE_WINDOW_S];
    int64_t sec_stamp[SG_RATE_WINDOW_S];
    uint64_t published;
    uint64_t duplicates;
    uint64_t flushes;
    uint64_t evictions;
    uint64_t expired;
    uint64_t rejected_full;
    uint64_t rejected_store; /* refused while the store could not write */
    uint64_t per_category[SG_MAX_CATEGORIES];
} sg_hub_stats;

sg_hub *sg_hub_new(struct event_base *base, const sg_config *cfg, sg_store *store);
void sg_hub_free(sg_hub *h);

/* Find a conversation; with create, open it: SG_CONV_PUBLISH for a
 * producer (evicting the least recently active idle one when at the cap),
 * SG_CONV_WATCH for a subscriber (an empty conversation, counted apart
 * from those that hold updates, so that subscribers never take producers'
 * slots nor evict history). NULL with err set (404 or 429). */
enum { SG_CONV_FIND = 0, SG_CONV_PUBLISH = 1, SG_CONV_WATCH = 2 };
sg_conv *sg_hub_conv(sg_hub *h, const char *id, size_t len, int create, sg_error *err);
/* The conversation the hub holds, or NULL (the store is not asked). */
sg_conv *sg_hub_held(sg_hub *h, const char *id, size_t len);

typedef struct sg_publish_result {
    uint64_t seq;
    int duplicate;
    const sg_conv *conv;
    const sg_update *update; /* borrowed; NULL for a duplicate */
    int dropped;             /* an ingest filter dropped it */
    char dropped_by[64];
    sg_pub *pub;             /* the Redis engine's: seq, epoch and fate come later (store.h) */
} sg_publish_result;

/* Sequence, store and queue one validated update. Returns 0 and fills res,
 * or -1 with err set (429 when the queues are full or no conversation can
 * be opened). Nothing is changed on failure. */
int sg_hub_publish(sg_hub *h, const sg_draft *d, sg_publish_result *res, sg_error *err);

/* An update a store that sequences (the Redis engine) delivers: u (its
 * reference moves in) with the next seq of c in epoch is queued for c's
 * subscribers as a publish's would be. A new epoch starts c over. 0, or
 * -1 when out of memory (u is dropped). */
int sg_hub_inject(sg_hub *h, sg_conv *c, const char *epoch, sg_update *u);

/* c is loading (its epoch and last seq come from the store on a later
 * loop turn): fn(arg, c, status) once they are (status 0), or when c does
 * not exist (404: c is forgotten right after) or went away (503). 1 when
 * c is loaded already (fn is not called), 0 when fn will be. */
typedef void (*sg_loaded_fn)(void *arg, sg_conv *c, int status);
int sg_hub_when_loaded(sg_hub *h, sg_conv *c, sg_loaded_fn fn, void *arg);
/* The waiter arg goes away first: its fn will not be called. */
void sg_hub_cancel_loaded(sg_conv *c, void *arg);

/* c lost updates its subscribers have not seen (a store that sequences
 * found them gone from history, or c began again): each is cut off
 * (sg_sub_class.cut) and resumes, learning of the gap then. */
void sg_hub_cut(sg_hub *h, sg_conv *c, const char *reason);

/* Subscribe s to c with a category mask and an optional filter (borrowed;
 * the group takes its own reference). s is owned by the caller and must be
 * unsubscribed before it is freed. 0, or -1 when out of memory (s is not
 * subscribed). */
int sg_hub_subscribe(sg_hub *h, sg_conv *c, sg_sub *s, const sg_sub_class *cls,
                      uint64_t mask, int variant, sg_filter *filter, void *owner);

/* The pseudo-conversation whose subscribers receive every conversation's
 * flushes (status:*). It has no history and is never listed. */
sg_conv *sg_hub_wildcard(sg_hub *h);
void sg_hub_unsubscribe(sg_hub *h, sg_sub *s);

/* The first seq published with idempotency_key to conversation id within
 * the window, or 0. */
uint64_t sg_hub_seen(sg_hub *h, const char *id, size_t len, const char *key);

/* Call fn(arg, conversation id) whenever a conversation is forgotten. */
void sg_hub_on_forget(sg_hub *h, void (*fn)(void *arg, const char *id), void *arg);

/* Flush every queued update now (shutdown). */
void sg_hub_flush_all(sg_hub *h);

/* Conversations, most recently active first. */
sg_conv *sg_hub_first(sg_hub *h);
sg_conv *sg_hub_next(sg_conv *c);
size_t sg_hub_count(const sg_hub *h);
int sg_hub_pending(const sg_hub *h);
const sg_hub_stats *sg_hub_get_stats(const sg_hub *h);
extern const double sg_batch_bounds[SG_BATCH_BUCKETS - 1];
extern const double sg_latency_bounds[SG_LATENCY_BUCKETS - 1];
/* Publishes and error-category publishes over the last `seconds`. */
void sg_hub_rate(const sg_hub *h, int seconds, uint64_t *total, uint64_t *errors);

/* Read history through the store (sg_store_read: the answer may come on a
 * later loop turn; cancel the handle when the reader goes first). */
sg_read *sg_hub_history(sg_hub *h, sg_conv *c, uint64_t since, uint64_t upto, size_t limit,
                        uint64_t mask, sg_store_range_fn cb, void *arg);

/* What a resuming subscriber missed, and whether any of it is lost. */
typedef struct sg_replay {
    int status;        /* 0; -1 when it could not be read (the store failed,
                        * or more was published meanwhile than output_cap
                        * holds): close, and let the client resume again */
    int recovered;     /* everything it missed is in ups */
    int epoch_changed; /* its epoch is not the conversation's */
    uint64_t since;    /* its last seq in this epoch (0 after an epoch change) */
    uint64_t gap_from, gap_to; /* the seqs lost, when gap_to >= gap_from */
    sg_update **ups;   /* what it missed that history holds, in its
                        * categories, oldest first; borrowed */
    size_t n;
} sg_replay;
typedef void (*sg_replay_fn)(sg_sub *s, const sg_replay *rp);

/* Resume s, subscribed a moment ago, from the client's epoch (NULL: the
 * conversation's) and last seq. cb writes what it missed (rp), now or on
 * a later loop turn; until then what the conversation flushes is held for
 * s, and goes out right after cb, so that the client sees every seq once,
 * in order. cb may mark s SG_SUB_DEAD but must not unsubscribe it. An
 * unsubscribe before the answer cancels it. */
void sg_hub_resume(sg_hub *h, sg_sub *s, const char *epoch, uint64_t last_seq, sg_replay_fn cb);

int64_t sg_now_ms(void);   /* wall clock, Unix ms */
int64_t sg_mono_ms(void);  /* monotonic ms */

#endif
