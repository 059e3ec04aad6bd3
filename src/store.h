/* The history store seam (docs/architecture.md): append, range by seq, trim.
 * The interface is asynchronous so that a durable or Redis store can plug
 * in: a callback may come at once, inside the call, or on a later loop
 * turn. Callers read through sg_store_read, whose answer can be cancelled
 * when the reader goes away first. The in-memory store answers at once;
 * the deferred store (a test double, `store_delay_ms`) answers every call
 * on a later loop turn. */
#ifndef SG_STORE_H
#define SG_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define SG_EPOCH_LEN 16

typedef struct sg_store sg_store;
typedef struct sg_store_conv sg_store_conv;

/* status is 0 on success, -1 on failure. */
typedef void (*sg_store_done_fn)(void *arg, int status);

/* ups are borrowed for the duration of the call (take a ref to keep one).
 * oldest is the seq of the oldest update the store still holds for the
 * conversation, whatever its category (0 when it holds none). */
typedef void (*sg_store_range_fn)(void *arg, int status, sg_update **ups, size_t n,
                                  uint64_t oldest);

typedef void (*sg_store_key_fn)(void *arg, const char *key, uint64_t seq, int64_t expires_ms);

/* A webhook message as the outbox keeps it: queued (its next attempt at
 * next_at_ms, wall clock), dead (a dead letter, for redelivery), or a part
 * (SG_OUTBOX_PART): one update of a batch still being gathered, kept as
 * "<message id>.<n>" so that an acknowledged update is in the outbox
 * before its batch is made. Putting or forgetting a message drops its
 * parts. */
#define SG_OUTBOX_PART 2
typedef struct sg_outbox_msg {
    const char *id, *endpoint;
    const char *body;
    size_t len;
    const char *headers; /* a JSON object's text, or NULL */
    const char *last_error; /* or NULL */
    int updates, attempts, dead; /* dead: 0 queued, 1 dead, SG_OUTBOX_PART */
    long last_status;
    int64_t next_at_ms, created_ms;
} sg_outbox_msg;
typedef void (*sg_outbox_fn)(void *arg, const sg_outbox_msg *m);

/* A publish to a store that sequences it itself (the Redis engine: the
 * seq comes from Redis, whichever gateway accepted the update). It is
 * answered on a later loop turn: then on_accept (the pipeline's:
 * webhooks; only for an accepted update that is not a duplicate), then
 * `then` (the producer's answer), and p is freed. Both
 * may be set until the loop turn that made p ends. */
typedef struct sg_pub sg_pub;
struct sg_pub {
    int status;   /* 0 accepted, -1 refused: err says why */
    sg_error err;
    uint64_t seq;
    int duplicate;
    char epoch[SG_EPOCH_LEN + 1];
    char conv_id[SG_MAX_CONV_ID + 1];
    sg_update *update; /* as sequenced; borrowed in the callbacks, NULL for a duplicate */
    void (*on_accept)(void *arg, sg_pub *p);
    void *accept_arg;
    void (*then)(void *arg, sg_pub *p);
    void *then_arg;
    char emitted_by[64]; /* the plugin that emitted it ("": a producer) */
    char *idem_key; /* the engine's */
};

typedef struct sg_store_ops {
    const char *name;
    /* Open a conversation's history. Fills epoch (SG_EPOCH_LEN + 1 bytes)
     * and the newest seq it holds (0 for a new one). With create 0, a
     * conversation the store does not hold is NULL with errno ENOENT; NULL
     * otherwise is a failure. A store that reads them later (the Redis
     * engine) leaves epoch empty and calls on_open once it knows. */
    sg_store_conv *(*open)(sg_store *s, const char *conv_id, int create, char *epoch, uint64_t *last_seq);
    /* Append u (the store takes a reference) and trim to the history size.
     * Returns the generation of the commit that will hold it: 0 when it is
     * durable already (the memory store), UINT64_MAX when it never will be
     * (out of memory); on_commit says when a generation is committed. */
    uint64_t (*append)(sg_store_conv *c, sg_update *u, sg_store_done_fn done, void *arg);
    /* Updates with seq in (since, upto], in `mask`, oldest first, at most
     * limit of them. upto 0 means no upper bound. */
    void (*range)(sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit, uint64_t mask,
                  sg_store_range_fn cb, void *arg);
    /* Close the handle; drop != 0 also forgets the history. Reads still
     * pending on it are answered all the same. */
    void (*close)(sg_store_conv *c, int drop);
    /* Free the store. What waits is answered first: callbacks still
     * pending are called (a durable store commits what it holds first;
     * status -1 for what it cannot). */
    void (*free)(sg_store *s);

    /* A durable store's (NULL in the memory store): */
    /* done(arg, 0) once everything appended so far is committed (-1: it
     * cannot be). */
    void (*sync)(sg_store *s, sg_store_done_fn done, void *arg);
    /* Commit everything now and answer what waits (shutdown; may block). */
    void (*drain)(sg_store *s);
    /* Keep an idempotency key, and read a conversation's unexpired ones. */
    void (*remember)(sg_store_conv *c, const char *key, uint64_t seq, int64_t expires_ms);
    void (*recall)(sg_store_conv *c, int64_t now_ms, sg_store_key_fn fn, void *arg);
    /* Forget the conversations idle since cutoff_ms (wall clock) that no
     * handle holds open, and expired keys. */
    void (*sweep)(sg_store *s, int64_t cutoff_ms, int64_t now_ms);
    /* 0 while writes fail (the disk is full, say): publishes are refused. */
    int (*healthy)(sg_store *s);
    /* Bytes of updates held in memory (the hot cache). */
    size_t (*cache_bytes)(sg_store *s);
    /* The webhook outbox: keep a message (insert or replace, committed
     * with the next batch), forget one (delivered), and read every kept
     * one, oldest first, on the caller's thread (0, or -1 on a failed
     * read). */
    void (*outbox_put)(sg_store *s, const sg_outbox_msg *m);
    /* A store that sequences (the Redis engine's; NULL otherwise): queue d
     * for the next batch to Redis. NULL with err when it is refused at
     * once (the engine is unreachable: 503 with Retry-After). */
    sg_pub *(*publish)(sg_store *s, const sg_draft *d, sg_error *err);
    /* status:* has subscribers (on 1) or has none left (on 0): such a
     * store then hears every conversation's updates (the Redis engine's).
     * 1 when it will hear them only once it says so (on_open with conv_id
     * "*" and c NULL): what is published before then is not heard. */
    int (*watch_all)(sg_store *s, int on);
    void (*outbox_del)(sg_store *s, const char *id);
    int (*outbox_load)(sg_store *s, sg_outbox_fn fn, void *arg);
} sg_store_ops;

struct sg_store {
    const sg_store_ops *ops;
    /* set by the hub: generation gen (and every one before it) is committed */
    void (*on_commit)(void *arg, uint64_t gen);
    void *on_commit_arg;
    /* set by the hub: an open that left epoch empty is answered: status 0
     * with the epoch and last seq, or ENOENT (create was 0 and the store
     * holds no such conversation); or (c NULL, conv_id "*") the store
     * hears every conversation now (watch_all) */
    void (*on_open)(void *arg, sg_store_conv *c, const char *conv_id, int status, const char *epoch,
                    uint64_t last_seq);
};

/* The built-in store: a ring of `history_size` updates per conversation. */
sg_store *sg_store_memory_new(int history_size);

struct event_base;
/* The durable store (store_sqlite.c): SQLite in WAL mode at path,
 * synchronous = sync ("normal", "full" or "off"), a writer thread, recent
 * updates kept in memory within cache_bytes. NULL
 * with a sentence in err naming what to fix. */
sg_store *sg_store_sqlite_new(const char *path, const char *sync, int history_size, size_t cache_bytes,
                              struct event_base *base, char *err, size_t errlen);

/* The Redis engine (engine_redis.c) as the hub's store: history in
 * streams, seq and epoch in Redis, updates from every gateway by Pub/Sub
 * (set_hub). redis is the config's `redis` table (NULL: defaults). NULL
 * with a sentence in err naming what to fix (a bad key, Redis unreachable). */
struct sg_config;
struct sg_hub;
sg_store *sg_store_redis_new(const struct sg_config *cfg, struct event_base *base, char *err, size_t errlen);
void sg_store_redis_set_hub(sg_store *s, struct sg_hub *hub);
/* Aggregators run once per cluster: on the gateway holding the
 * aggregators' lease (taken by a gateway whose wants(arg) says it has
 * aggregators), which hears every update and calls fn with each. */
typedef void (*sg_redis_observer)(void *arg, const char *conv_id, const sg_update *u, const char *emitted_by);
void sg_store_redis_set_observer(sg_store *s, sg_redis_observer fn, int (*wants)(void *arg), void *arg);
/* The gateways of the cluster, as the last heartbeat read them (a JSON
 * array, new reference). */
struct json_t *sg_store_redis_nodes(sg_store *s);
/* A Redis engine Pub/Sub message, "<seq> <ts> <category> <epoch>
 * <emitted_by or -> <json>" (the publish script writes it), split: the
 * pointers are into msg. 0, or -1 when msg is not one. */
typedef struct sg_redis_msg {
    uint64_t seq;
    char ts[24];
    char epoch[SG_EPOCH_LEN + 1];
    char by[64]; /* "" for a producer's */
    const char *cat, *json;
    size_t cat_len, json_len;
} sg_redis_msg;
int sg_redis_parse_message(const char *msg, size_t len, sg_redis_msg *m);
/* The engine's view for /metrics and /api/v1/stats (a JSON object). */
struct json_t;
struct json_t *sg_store_redis_stats(sg_store *s);

/* A store that answers every call of inner (owned) on a later loop turn,
 * delay_ms after it; ranges are read from inner when they are answered.
 * For testing transports and clients against a slow store. */
sg_store *sg_store_deferred_new(sg_store *inner, struct event_base *base, int delay_ms);

/* A read in flight. */
typedef struct sg_read sg_read;

/* Read a range (see sg_store_ops.range). cb is called exactly once: inside
 * this call, and then NULL is returned, or on a later loop turn, and then
 * the returned handle may be passed to sg_read_cancel until it is. On
 * out of memory cb is called at once with status -1. */
sg_read *sg_store_read(sg_store *s, sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit,
                       uint64_t mask, sg_store_range_fn cb, void *arg);
/* The reader is going away: its callback will not be called. */
void sg_read_cancel(sg_read *r);
/* A read asked before it can be sent (its conversation is loading): the
 * handle now, the range later with sg_read_send (or status -1 with
 * sg_read_fail). Each frees it. NULL when out of memory. */
sg_read *sg_read_later(sg_store_range_fn cb, void *arg);
void sg_read_send(sg_read *r, sg_store *s, sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit,
                  uint64_t mask);
void sg_read_fail(sg_read *r);

/* Fill out with SG_EPOCH_LEN random hex characters and a NUL. */
void sg_store_new_epoch(char *out);

#endif
