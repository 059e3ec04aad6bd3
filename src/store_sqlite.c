/* The durable store: history, sequence numbers, epochs and idempotency
 * keys in one SQLite database in WAL mode (docs/architecture.md, "The
 * durable store").
 *
 * The loop never waits on the disk for a write. What the hub appends goes
 * into the current batch; at the end of the loop turn the batch is handed
 * to a writer thread, which commits it in one transaction (while it does,
 * the next turns fill the next batch: commits group themselves under
 * load) and hands the result back through a pipe. Everything a batch
 * holds is acknowledged (sync) and delivered (on_commit) only once it is
 * committed, so what a client saw or was told is never lost by a crash.
 *
 * Reads of what the conversation's ring (the recent updates kept in
 * memory) holds are answered at once; older ones are read by the writer
 * thread after the writes queued before them, and answered on a later
 * loop turn. A conversation's epoch and last seq are read when it is first
 * opened, on the loop, through a second connection (a point lookup). */
#include "store.h"

#include "dict.h"
#include "log.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SQ_SCHEMA_VERSION 1
#define SQ_RETRY_MS 200 /* between attempts at a batch that failed */

typedef struct sq_store sq_store;
typedef struct sq_conv sq_conv;

enum { OP_APPEND, OP_IDEM, OP_FORGET, OP_TOUCH, OP_SWEEP };

typedef struct sq_op {
    struct sq_op *next;
    int kind;
    char conv[SG_MAX_CONV_ID + 1];
    char epoch[SG_EPOCH_LEN + 1];
    sg_update *u;    /* OP_APPEND: a reference */
    char *key;       /* OP_IDEM */
    uint64_t seq;    /* OP_IDEM; OP_TOUCH: the last seq */
    int fresh;       /* OP_APPEND: the conversation's first: its row goes in too */
    int64_t when_ms; /* OP_IDEM: expiry; OP_TOUCH, OP_APPEND: activity; OP_SWEEP: the cutoff */
} sq_op;

typedef struct sq_waiter {
    struct sq_waiter *next;
    sg_store_done_fn fn;
    void *arg;
} sq_waiter;

typedef struct sq_read {
    struct sq_read *next;
    sq_conv *c; /* a reference */
    char conv[SG_MAX_CONV_ID + 1];
    uint64_t since, upto, mask;
    size_t limit;
    sg_store_range_fn cb;
    void *arg;
    sg_update **ups; /* the answer, made by the writer thread */
    size_t n;
    uint64_t oldest;
    int status;
} sq_read;

/* A unit of work for the writer: a batch of writes and the reads queued
 * after it. */
typedef struct sq_job {
    struct sq_job *next;
    uint64_t gen;
    sq_op *ops, **tail;
    size_t n_ops;
    sq_waiter *waiters;
    sq_read *reads, **rtail;
    int status;
} sq_job;

struct sq_conv {
    sq_store *st;
    char id[SG_MAX_CONV_ID + 1];
    size_t id_len;
    char epoch[SG_EPOCH_LEN + 1];
    uint64_t last_seq; /* newest appended */
    uint64_t oldest;   /* oldest the database holds (or will, once committed); 0: none */
    int refs;          /* the hub's handle, and each pending read */
    int row_written;   /* its row is in the database, or in a batch */
    int64_t active_ms; /* the last append not yet recorded in its row; 0: none */
    int open;          /* the hub holds it */
    int head, count;   /* the ring of recent updates: the hot cache */
    sg_update **ring;
    sq_conv *prev, *next; /* every live one, for sweeps and lookups */
    sq_conv *lprev, *lnext; /* the cache's order: least recently appended to first */
    int in_lru;
};

struct sq_store {
    sg_store base;
    sqlite3 *rdb;  /* the loop's, for opens */
    sqlite3 *wdb;  /* the writer's */
    sqlite3_stmt *q_conv, *q_oldest, *q_idem;
    char *path;
    char sync[8];
    int history;
    struct event_base *evb;
    struct event *kick_ev;  /* end of the turn: hand the batch over */
    struct event *done_ev;  /* the writer's pipe */
    int pipe_r, pipe_w;
    pthread_t thread;
    int thread_on;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sq_job *todo, *todo_tail; /* for the writer */
    sq_job *done, *done_tail; /* back from it */
    int stop;
    int writing;     /* the writer holds a job */
    volatile int failing; /* the last commit failed; read by the loop */
    sq_job *cur;     /* being filled on the loop */
    uint64_t next_gen, committed_gen;
    sq_conv *convs; /* every live one, for sweeps */
    sg_dict *by_id; /* and by id */
    /* the hot cache: the rings' updates, within cache_budget bytes */
    size_t cache_budget, cached;
    sq_conv *lru_head, *lru_tail;
};

#define UPDATE_BYTES(u) (sizeof(sg_update) + (u)->json_len + 1)

static void lru_unlink(sq_store *st, sq_conv *c)
{
    if (!c->in_lru) return;
    if (c->lprev) c->lprev->lnext = c->lnext; else st->lru_head = c->lnext;
    if (c->lnext) c->lnext->lprev = c->lprev; else st->lru_tail = c->lprev;
    c->lprev = c->lnext = NULL;
    c->in_lru = 0;
}

static void lru_touch(sq_store *st, sq_conv *c)
{
    if (c->in_lru && st->lru_tail == c) return;
    lru_unlink(st, c);
    c->lprev = st->lru_tail;
    if (st->lru_tail) st->lru_tail->lnext = c; else st->lru_head = c;
    st->lru_tail = c;
    c->in_lru = 1;
}

/* Drop c's oldest cached update (reads of it go to the database). */
static void ring_pop(sq_store *st, sq_conv *c)
{
    sg_update *u = c->ring[c->head];
    st->cached -= UPDATE_BYTES(u);
    sg_update_unref(u);
    c->ring[c->head] = NULL;
    c->head = (c->head + 1) % st->history;
    c->count--;
}

/* Over the budget: the least recently appended-to conversations give up
 * their oldest cached updates first. */
static void cache_trim(sq_store *st)
{
    while (st->cached > st->cache_budget && st->lru_head) {
        sq_conv *c = st->lru_head;
        if (c->count == 0) {
            lru_unlink(st, c);
            continue;
        }
        ring_pop(st, c);
    }
}

/* ---- helpers ---- */

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *e = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &e) == SQLITE_OK) return 0;
    if (err) snprintf(err, errlen, "%s", e ? e : sqlite3_errmsg(db));
    sqlite3_free(e);
    return -1;
}

static sq_conv *find_conv(sq_store *st, const char *id)
{
    return sg_dict_get(st->by_id, id, strlen(id));
}

static void conv_unref(sq_conv *c)
{
    if (--c->refs > 0) return;
    sq_store *st = c->st;
    if (c->prev) c->prev->next = c->next; else st->convs = c->next;
    if (c->next) c->next->prev = c->prev;
    sg_dict_del(st->by_id, c->id, c->id_len);
    lru_unlink(st, c);
    while (c->count)
        ring_pop(st, c);
    free(c->ring);
    free(c);
}

/* The batch being filled, made on first use; the turn's end hands it over. */
static sq_job *cur_job(sq_store *st)
{
    if (st->cur) return st->cur;
    sq_job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->tail = &j->ops;
    j->rtail = &j->reads;
    j->gen = ++st->next_gen;
    st->cur = j;
    static const struct timeval now = {0, 0};
    event_add(st->kick_ev, &now);
    return j;
}

static int add_op(sq_store *st, sq_op *op)
{
    sq_job *j = cur_job(st);
    if (!j) return -1;
    *j->tail = op;
    j->tail = &op->next;
    j->n_ops++;
    return 0;
}

/* Hand the current batch to the writer (or keep filling it while the
 * writer is busy: the next commit takes all of it). */
static void hand_over(sq_store *st)
{
    pthread_mutex_lock(&st->mu);
    if (st->cur && !st->writing && !st->todo) {
        st->todo = st->todo_tail = st->cur;
        st->cur = NULL;
        pthread_cond_signal(&st->cv);
    }
    pthread_mutex_unlock(&st->mu);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    hand_over(arg);
}

/* ---- the writer thread ---- */

typedef struct wstmts {
    sqlite3_stmt *ins_update, *upsert_conv, *trim, *ins_idem, *del_updates, *del_conv, *del_idem,
        *touch, *sweep_updates, *sweep_idem_conv, *sweep_convs, *sweep_idem, *range, *oldest;
} wstmts;

static int prepare_all(sqlite3 *db, wstmts *w)
{
    struct { sqlite3_stmt **s; const char *sql; } all[] = {
        {&w->ins_update, "INSERT OR REPLACE INTO updates(conv, seq, category, ts_ms, json) VALUES (?1, ?2, ?3, ?4, ?5)"},
        {&w->upsert_conv, "INSERT INTO conversations(id, epoch, last_seq, last_activity_ms) VALUES (?1, ?2, ?3, ?4) "
                          "ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq, "
                          "last_activity_ms = excluded.last_activity_ms"},
        {&w->trim, "DELETE FROM updates WHERE conv = ?1 AND seq <= ?2"},
        {&w->ins_idem, "INSERT OR REPLACE INTO idempotency(conv, key, seq, expires_ms) VALUES (?1, ?2, ?3, ?4)"},
        {&w->del_updates, "DELETE FROM updates WHERE conv = ?1"},
        {&w->del_conv, "DELETE FROM conversations WHERE id = ?1"},
        {&w->del_idem, "DELETE FROM idempotency WHERE conv = ?1"},
        {&w->touch, "UPDATE conversations SET last_activity_ms = max(last_activity_ms, ?2), "
                    "last_seq = max(last_seq, ?3) WHERE id = ?1"},
        {&w->sweep_updates, "DELETE FROM updates WHERE conv IN (SELECT id FROM conversations WHERE last_activity_ms < ?1)"},
        {&w->sweep_idem_conv, "DELETE FROM idempotency WHERE conv IN (SELECT id FROM conversations WHERE last_activity_ms < ?1)"},
        {&w->sweep_convs, "DELETE FROM conversations WHERE last_activity_ms < ?1"},
        {&w->sweep_idem, "DELETE FROM idempotency WHERE expires_ms < ?1"},
        {&w->range, "SELECT seq, category, ts_ms, json FROM updates WHERE conv = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"},
        {&w->oldest, "SELECT min(seq) FROM updates WHERE conv = ?1"},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (sqlite3_prepare_v3(db, all[i].sql, -1, SQLITE_PREPARE_PERSISTENT, all[i].s, NULL) != SQLITE_OK)
            return -1;
    return 0;
}

static void finalize_all(wstmts *w)
{
    sqlite3_stmt **s = (sqlite3_stmt **)w;
    for (size_t i = 0; i < sizeof(*w) / sizeof(*s); i++) {
        sqlite3_finalize(s[i]);
        s[i] = NULL;
    }
}

/* No statement holds a read transaction open (a pager that hit an I/O
 * error stays in its error state until every one has ended). */
static void reset_all(wstmts *w)
{
    sqlite3_stmt **s = (sqlite3_stmt **)w;
    for (size_t i = 0; i < sizeof(*w) / sizeof(*s); i++)
        if (s[i]) sqlite3_reset(s[i]);
}

static sqlite3 *open_db(const char *path, const char *sync, char *err, size_t errlen);

/* After failures: a new connection, in case the old one keeps an error. */
static int reopen_writer(sq_store *st, wstmts *w)
{
    finalize_all(w);
    sqlite3_close(st->wdb);
    char err[256];
    st->wdb = open_db(st->path, st->sync, err, sizeof(err));
    return st->wdb && prepare_all(st->wdb, w) == 0 ? 0 : -1;
}

/* Run a prepared statement with text and integer parameters to its end. */
static int run(sqlite3_stmt *s, const char *t1, const char *t2, int64_t i2, int64_t i3)
{
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, t1, -1, SQLITE_STATIC);
    int np = sqlite3_bind_parameter_count(s);
    if (t2) sqlite3_bind_text(s, 2, t2, -1, SQLITE_STATIC);
    else if (np >= 2) sqlite3_bind_int64(s, 2, i2);
    if (np >= 3) sqlite3_bind_int64(s, 3, t2 ? i2 : i3);
    if (np >= 4) sqlite3_bind_int64(s, 4, i3);
    int rc = sqlite3_step(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static int write_append(sq_store *st, wstmts *w, sq_op *o)
{
    sg_update *u = o->u;
    sqlite3_stmt *s = w->ins_update;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, o->conv, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)u->seq);
    sqlite3_bind_text(s, 3, sg_category_name(u->category), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, u->ts_ms);
    sqlite3_bind_blob(s, 5, u->json, (int)u->json_len, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) return -1;
    /* a new conversation's row (its last seq and activity are brought up
     * to date by touches, not by every append: one B-tree page less per
     * update), and the update that falls out of history */
    if (o->fresh) {
        s = w->upsert_conv;
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, o->conv, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, o->epoch, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)u->seq);
        sqlite3_bind_int64(s, 4, o->when_ms);
        if (sqlite3_step(s) != SQLITE_DONE) return -1;
    }
    if (u->seq > (uint64_t)st->history &&
        run(w->trim, o->conv, NULL, (int64_t)(u->seq - (uint64_t)st->history), 0) < 0)
        return -1;
    return 0;
}

static int write_op(sq_store *st, wstmts *w, sq_op *o)
{
    switch (o->kind) {
    case OP_APPEND: return write_append(st, w, o);
    case OP_IDEM: {
        sqlite3_stmt *s = w->ins_idem;
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, o->conv, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, o->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)o->seq);
        sqlite3_bind_int64(s, 4, o->when_ms);
        return sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
    }
    case OP_FORGET:
        return run(w->del_updates, o->conv, NULL, 0, 0) < 0 || run(w->del_conv, o->conv, NULL, 0, 0) < 0 ||
                       run(w->del_idem, o->conv, NULL, 0, 0) < 0
                   ? -1 : 0;
    case OP_TOUCH: return run(w->touch, o->conv, NULL, o->when_ms, (int64_t)o->seq);
    case OP_SWEEP: {
        char cut[32];
        snprintf(cut, sizeof(cut), "%lld", (long long)o->when_ms);
        sqlite3_stmt *ss[] = {w->sweep_updates, w->sweep_idem_conv, w->sweep_convs};
        for (int i = 0; i < 3; i++) {
            sqlite3_reset(ss[i]);
            sqlite3_bind_int64(ss[i], 1, o->when_ms);
            if (sqlite3_step(ss[i]) != SQLITE_DONE) return -1;
        }
        sqlite3_reset(w->sweep_idem);
        sqlite3_bind_int64(w->sweep_idem, 1, (sqlite3_int64)o->seq); /* now, for keys */
        return sqlite3_step(w->sweep_idem) == SQLITE_DONE ? 0 : -1;
    }
    }
    return -1;
}

/* Commit the job's writes in one transaction: 0, or -1 with why. */
static int commit_job(sq_store *st, wstmts *w, sq_job *j, char *why, size_t whylen)
{
    if (!j->ops) return 0;
    if (exec(st->wdb, "BEGIN", why, whylen) < 0) return -1;
    for (sq_op *o = j->ops; o; o = o->next)
        if (write_op(st, w, o) < 0) {
            snprintf(why, whylen, "%s", sqlite3_errmsg(st->wdb));
            if (!sqlite3_get_autocommit(st->wdb)) exec(st->wdb, "ROLLBACK", NULL, 0);
            return -1;
        }
    if (exec(st->wdb, "COMMIT", why, whylen) < 0) {
        if (!sqlite3_get_autocommit(st->wdb)) exec(st->wdb, "ROLLBACK", NULL, 0);
        return -1;
    }
    return 0;
}

static void read_range(sq_store *st, wstmts *w, sq_read *r)
{
    sqlite3_stmt *s = w->range;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, r->conv, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)r->since);
    sqlite3_bind_int64(s, 3, r->upto ? (sqlite3_int64)r->upto : INT64_MAX);
    size_t cap = 0;
    int rc;
    while (r->n < r->limit && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *cat = (const char *)sqlite3_column_text(s, 1);
        int ci = cat ? sg_category_index(cat, strlen(cat)) : -1;
        if (ci < 0 || !(r->mask & (1ULL << ci))) continue; /* a category no longer configured */
        if (r->n == cap) {
            cap = cap ? cap * 2 : 16;
            sg_update **ups = realloc(r->ups, cap * sizeof(*ups));
            if (!ups) {
                r->status = -1;
                return;
            }
            r->ups = ups;
        }
        const void *json = sqlite3_column_blob(s, 3);
        sg_update *u = sg_update_stored(ci, (uint64_t)sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 2),
                                        json, (size_t)sqlite3_column_bytes(s, 3));
        if (!u) {
            r->status = -1;
            return;
        }
        r->ups[r->n++] = u;
    }
    sqlite3_reset(w->oldest);
    sqlite3_bind_text(w->oldest, 1, r->conv, -1, SQLITE_STATIC);
    if (sqlite3_step(w->oldest) == SQLITE_ROW) r->oldest = (uint64_t)sqlite3_column_int64(w->oldest, 0);
}

static void *writer_main(void *arg)
{
    sq_store *st = arg;
    wstmts w;
    memset(&w, 0, sizeof(w));
    int ready = prepare_all(st->wdb, &w) == 0;
    for (;;) {
        pthread_mutex_lock(&st->mu);
        while (!st->todo && !st->stop)
            pthread_cond_wait(&st->cv, &st->mu);
        if (!st->todo) {
            pthread_mutex_unlock(&st->mu);
            break;
        }
        sq_job *j = st->todo;
        st->todo = j->next;
        if (!st->todo) st->todo_tail = NULL;
        j->next = NULL;
        st->writing = 1;
        pthread_mutex_unlock(&st->mu);

        /* a batch that fails is tried again until it commits: nothing in
         * it was acknowledged or delivered, and nothing after it may go
         * first (seqs stay in order); meanwhile publishes are refused */
        int attempts = 0;
        char why[256] = "";
        while (!ready || commit_job(st, &w, j, why, sizeof(why)) < 0) {
            if (attempts++ % 50 == 0) /* the first, then every 10 s */
                sg_log(SG_LOG_ERROR, "store_write_failed", "store=sqlite path=%s reason=%s attempts=%d retry_ms=%d",
                       sg_log_q(st->path), sg_log_q(ready ? why : sqlite3_errmsg(st->wdb)), attempts, SQ_RETRY_MS);
            st->failing = 1;
            if (st->stop && attempts > 3) {
                j->status = -1;
                break;
            }
            struct timespec ts = {0, SQ_RETRY_MS * 1000000L};
            nanosleep(&ts, NULL);
            reset_all(&w);
            if (!ready || attempts % 5 == 0) ready = reopen_writer(st, &w) == 0;
        }
        if (j->status == 0) {
            if (attempts) sg_log(SG_LOG_INFO, "store_recovered", "store=sqlite attempts=%d", attempts);
            st->failing = 0;
        }
        for (sq_read *r = j->reads; r; r = r->next)
            if (j->status < 0) r->status = -1;
            else read_range(st, &w, r);
        reset_all(&w);

        pthread_mutex_lock(&st->mu);
        if (st->done_tail) st->done_tail->next = j; else st->done = j;
        st->done_tail = j;
        st->writing = 0;
        pthread_mutex_unlock(&st->mu);
        char one = 1;
        while (write(st->pipe_w, &one, 1) < 0 && errno == EINTR) {
        }
    }
    finalize_all(&w);
    return NULL;
}

/* ---- results, back on the loop ---- */

static void job_free(sq_job *j)
{
    sq_op *o = j->ops;
    while (o) {
        sq_op *n = o->next;
        if (o->u) sg_update_unref(o->u);
        free(o->key);
        free(o);
        o = n;
    }
    sq_waiter *w = j->waiters;
    while (w) {
        sq_waiter *n = w->next;
        free(w);
        w = n;
    }
    free(j);
}

static void finish_job(sq_store *st, sq_job *j)
{
    if (j->status == 0) st->committed_gen = j->gen;
    for (sq_waiter *w = j->waiters; w; w = w->next)
        w->fn(w->arg, j->status);
    if (j->status == 0 && st->base.on_commit) st->base.on_commit(st->base.on_commit_arg, j->gen);
    sq_read *r = j->reads;
    while (r) {
        sq_read *n = r->next;
        r->cb(r->arg, r->status, r->ups, r->n, r->oldest);
        for (size_t i = 0; i < r->n; i++)
            sg_update_unref(r->ups[i]);
        free(r->ups);
        conv_unref(r->c);
        free(r);
        r = n;
    }
    job_free(j);
}

static void take_done(sq_store *st)
{
    pthread_mutex_lock(&st->mu);
    sq_job *j = st->done;
    st->done = st->done_tail = NULL;
    pthread_mutex_unlock(&st->mu);
    while (j) {
        sq_job *n = j->next;
        finish_job(st, j);
        j = n;
    }
    hand_over(st); /* what filled up meanwhile goes next */
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    sq_store *st = arg;
    char buf[64];
    while (read(st->pipe_r, buf, sizeof(buf)) > 0) {
    }
    take_done(st);
}

/* ---- the store's operations ---- */

static int load_conv(sq_store *st, sq_conv *c, int *found)
{
    *found = 0;
    sqlite3_stmt *s = st->q_conv;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *e = (const char *)sqlite3_column_text(s, 0);
        snprintf(c->epoch, sizeof(c->epoch), "%s", e ? e : "");
        c->last_seq = (uint64_t)sqlite3_column_int64(s, 1);
        *found = 1;
        sqlite3_reset(s);
        s = st->q_oldest;
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_ROW) c->oldest = (uint64_t)sqlite3_column_int64(s, 0);
        sqlite3_reset(s);
        return 0;
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static sg_store_conv *sq_open(sg_store *s, const char *id, int create, char *epoch, uint64_t *last_seq)
{
    sq_store *st = (sq_store *)s;
    sq_conv *c = find_conv(st, id); /* still alive: closed, with writes in flight */
    if (c) {
        c->refs++;
        c->open = 1;
    } else {
        c = calloc(1, sizeof(*c));
        if (!c || !(c->ring = calloc((size_t)st->history, sizeof(*c->ring)))) {
            free(c);
            return NULL;
        }
        c->st = st;
        c->id_len = strlen(id);
        memcpy(c->id, id, c->id_len + 1);
        int found;
        if (load_conv(st, c, &found) < 0 || (!found && !create)) {
            /* (errno stays ENOENT for one that is not there) */
            if (!found && !create) errno = ENOENT;
            free(c->ring);
            free(c);
            return NULL;
        }
        if (!found) sg_store_new_epoch(c->epoch);
        c->row_written = found;
        if (sg_dict_set(st->by_id, c->id, c->id_len, c) < 0) {
            free(c->ring);
            free(c);
            return NULL;
        }
        c->refs = 1;
        c->open = 1;
        c->next = st->convs;
        if (st->convs) st->convs->prev = c;
        st->convs = c;
    }
    memcpy(epoch, c->epoch, SG_EPOCH_LEN + 1);
    *last_seq = c->last_seq;
    return (sg_store_conv *)c;
}

static uint64_t sq_append(sg_store_conv *sc, sg_update *u, sg_store_done_fn done, void *arg)
{
    sq_conv *c = (sq_conv *)sc;
    sq_store *st = c->st;
    sq_op *o = calloc(1, sizeof(*o));
    if (!o) {
        if (done) done(arg, -1);
        return UINT64_MAX; /* never committed: the hub holds it back */
    }
    o->kind = OP_APPEND;
    o->fresh = !c->row_written;
    c->row_written = 1;
    c->active_ms = u->ts_ms;
    memcpy(o->conv, c->id, c->id_len + 1);
    memcpy(o->epoch, c->epoch, sizeof(o->epoch));
    o->u = sg_update_ref(u);
    o->when_ms = u->ts_ms;
    if (add_op(st, o) < 0) {
        sg_update_unref(u);
        free(o);
        if (done) done(arg, -1);
        return UINT64_MAX;
    }
    /* the ring: what reads of recent history are answered from */
    int cap = st->history;
    if (c->count == cap) ring_pop(st, c);
    c->ring[(c->head + c->count) % cap] = sg_update_ref(u);
    c->count++;
    st->cached += UPDATE_BYTES(u);
    lru_touch(st, c);
    cache_trim(st);
    c->last_seq = u->seq;
    if (!c->oldest) c->oldest = u->seq;
    if (u->seq >= (uint64_t)cap && c->oldest < u->seq - (uint64_t)cap + 1) c->oldest = u->seq - (uint64_t)cap + 1;
    if (done) {
        sq_waiter *w = malloc(sizeof(*w));
        if (!w) done(arg, -1);
        else {
            *w = (sq_waiter){st->cur->waiters, done, arg};
            st->cur->waiters = w;
        }
    }
    return st->cur->gen;
}

static void sq_range(sg_store_conv *sc, uint64_t since, uint64_t upto, size_t limit, uint64_t mask,
                     sg_store_range_fn cb, void *arg)
{
    sq_conv *c = (sq_conv *)sc;
    sq_store *st = c->st;
    int cap = st->history;
    uint64_t ring_from = c->count ? c->ring[c->head]->seq : c->last_seq + 1;
    if (since + 1 >= ring_from || ring_from <= c->oldest || !c->oldest) {
        /* all of it is in the ring: answered now */
        sg_update *stack[128];
        sg_update **out = stack;
        size_t want = limit < (size_t)c->count ? limit : (size_t)c->count;
        if (want > 128 && !(out = malloc(sizeof(*out) * want))) {
            cb(arg, -1, NULL, 0, c->oldest);
            return;
        }
        size_t n = 0;
        for (int i = 0; i < c->count && n < want; i++) {
            sg_update *u = c->ring[(c->head + i) % cap];
            if (upto && u->seq > upto) break;
            if (u->seq <= since || !(mask & (1ULL << u->category))) continue;
            out[n++] = u;
        }
        cb(arg, 0, out, n, c->oldest);
        if (out != stack) free(out);
        return;
    }
    /* older than the ring: the writer reads it, after the writes before it */
    sq_read *r = calloc(1, sizeof(*r));
    sq_job *j = r ? cur_job(st) : NULL;
    if (!j) {
        free(r);
        cb(arg, -1, NULL, 0, 0);
        return;
    }
    r->c = c;
    c->refs++;
    memcpy(r->conv, c->id, c->id_len + 1);
    r->since = since;
    r->upto = upto;
    r->limit = limit;
    r->mask = mask;
    r->cb = cb;
    r->arg = arg;
    *j->rtail = r;
    j->rtail = &r->next;
}

/* Bring c's row up to date: its last seq, and activity at when_ms. */
static void touch_conv(sq_store *st, sq_conv *c, int64_t when_ms)
{
    sq_op *o = calloc(1, sizeof(*o));
    if (!o) return;
    o->kind = OP_TOUCH;
    memcpy(o->conv, c->id, c->id_len + 1);
    o->when_ms = when_ms;
    o->seq = c->last_seq;
    if (add_op(st, o) < 0) free(o);
    else c->active_ms = 0;
}

static void sq_close(sg_store_conv *sc, int drop)
{
    sq_conv *c = (sq_conv *)sc;
    if (!c) return;
    sq_store *st = c->st;
    if (!drop && c->active_ms) touch_conv(st, c, c->active_ms);
    if (drop) {
        sq_op *o = calloc(1, sizeof(*o));
        if (o) {
            o->kind = OP_FORGET;
            memcpy(o->conv, c->id, c->id_len + 1);
            if (add_op(st, o) < 0) free(o);
        }
    }
    c->open = 0;
    conv_unref(c);
}

static void sq_sync(sg_store *s, sg_store_done_fn done, void *arg)
{
    sq_store *st = (sq_store *)s;
    /* nothing waits to be written: what was appended is committed */
    pthread_mutex_lock(&st->mu);
    int idle = !st->cur && !st->todo && !st->writing && !st->done;
    pthread_mutex_unlock(&st->mu);
    if (idle) {
        done(arg, 0);
        return;
    }
    sq_job *j = cur_job(st);
    sq_waiter *w = j ? malloc(sizeof(*w)) : NULL;
    if (!w) {
        done(arg, -1);
        return;
    }
    *w = (sq_waiter){j->waiters, done, arg};
    j->waiters = w;
}

static void sq_remember(sg_store_conv *sc, const char *key, uint64_t seq, int64_t expires_ms)
{
    sq_conv *c = (sq_conv *)sc;
    sq_op *o = calloc(1, sizeof(*o));
    if (!o || !(o->key = strdup(key))) {
        free(o);
        return; /* the key is still remembered in memory */
    }
    o->kind = OP_IDEM;
    memcpy(o->conv, c->id, c->id_len + 1);
    o->seq = seq;
    o->when_ms = expires_ms;
    if (add_op(c->st, o) < 0) {
        free(o->key);
        free(o);
    }
}

static void sq_recall(sg_store_conv *sc, int64_t now_ms, sg_store_key_fn fn, void *arg)
{
    sq_conv *c = (sq_conv *)sc;
    sqlite3_stmt *s = c->st->q_idem;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    while (sqlite3_step(s) == SQLITE_ROW)
        fn(arg, (const char *)sqlite3_column_text(s, 0), (uint64_t)sqlite3_column_int64(s, 1),
           sqlite3_column_int64(s, 2));
    sqlite3_reset(s);
}

static void sq_sweep(sg_store *s, int64_t cutoff_ms, int64_t now_ms)
{
    sq_store *st = (sq_store *)s;
    /* what the hub holds open is alive, however idle its rows look; the
     * others' rows learn their last append */
    for (sq_conv *c = st->convs; c; c = c->next) {
        if (c->open && c->row_written) touch_conv(st, c, now_ms);
        else if (c->active_ms) touch_conv(st, c, c->active_ms);
    }
    sq_op *o = calloc(1, sizeof(*o));
    if (!o) return;
    o->kind = OP_SWEEP;
    o->when_ms = cutoff_ms;
    o->seq = (uint64_t)now_ms;
    if (add_op(st, o) < 0) free(o);
}

static int sq_healthy(sg_store *s)
{
    return !((sq_store *)s)->failing;
}

static size_t sq_cache_bytes(sg_store *s)
{
    return ((sq_store *)s)->cached;
}

/* Commit everything now, on the caller's thread, and answer what waits
 * (shutdown). */
static void sq_drain(sg_store *s)
{
    sq_store *st = (sq_store *)s;
    for (sq_conv *c = st->convs; c; c = c->next) /* rows up to date before a stop */
        if (c->active_ms) touch_conv(st, c, c->active_ms);
    /* while commits fail, a stop waits 5 s for the disk, then gives up on
     * what is left (its publishes are answered 503; nothing was acknowledged) */
    for (int i = 0, failing_ms = 0; i < 600000 && failing_ms < 5000; i++) {
        hand_over(st);
        pthread_mutex_lock(&st->mu);
        int busy = st->cur || st->todo || st->writing;
        pthread_mutex_unlock(&st->mu);
        take_done(st);
        if (!busy) break;
        if (st->failing) failing_ms++;
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    take_done(st);
}

static void sq_free(sg_store *s)
{
    sq_store *st = (sq_store *)s;
    if (st->thread_on) {
        sq_drain(s);
        pthread_mutex_lock(&st->mu);
        st->stop = 1;
        pthread_cond_signal(&st->cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->thread, NULL);
        take_done(st);
    }
    if (st->cur) { /* nothing can take it now */
        st->cur->status = -1;
        finish_job(st, st->cur);
        st->cur = NULL;
    }
    while (st->convs) { /* the hub closed its handles: only what reads kept */
        sq_conv *c = st->convs;
        c->refs = 1;
        conv_unref(c);
    }
    sqlite3_finalize(st->q_conv);
    sqlite3_finalize(st->q_oldest);
    sqlite3_finalize(st->q_idem);
    if (st->wdb) {
        exec(st->wdb, "PRAGMA incremental_vacuum(1000)", NULL, 0);
        sqlite3_close(st->wdb);
    }
    if (st->rdb) sqlite3_close(st->rdb);
    if (st->kick_ev) event_free(st->kick_ev);
    if (st->done_ev) event_free(st->done_ev);
    if (st->pipe_r >= 0) close(st->pipe_r);
    if (st->pipe_w >= 0) close(st->pipe_w);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    sg_dict_free(st->by_id);
    free(st->path);
    free(st);
}

static const sg_store_ops sqlite_ops = {
    .name = "sqlite", .open = sq_open, .append = sq_append, .range = sq_range, .close = sq_close,
    .free = sq_free, .sync = sq_sync, .drain = sq_drain, .remember = sq_remember, .recall = sq_recall,
    .sweep = sq_sweep, .healthy = sq_healthy, .cache_bytes = sq_cache_bytes,
};

/* ---- opening the database ---- */

static const char schema_v1[] =
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_seq INTEGER NOT NULL, "
    "  last_activity_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX conversations_activity ON conversations(last_activity_ms);"
    "CREATE TABLE updates (conv TEXT NOT NULL, seq INTEGER NOT NULL, category TEXT NOT NULL, "
    "  ts_ms INTEGER NOT NULL, json BLOB NOT NULL, PRIMARY KEY (conv, seq)) WITHOUT ROWID;"
    "CREATE TABLE idempotency (conv TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, "
    "  expires_ms INTEGER NOT NULL, PRIMARY KEY (conv, key)) WITHOUT ROWID;"
    "CREATE INDEX idempotency_expiry ON idempotency(expires_ms);";

/* Bring the schema to SQ_SCHEMA_VERSION: 0 is a new database. */
static int migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store_path '%s' is not a statusgw database (%s)", path, sqlite3_errmsg(db));
        return -1;
    }
    int v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    if (v < 0) {
        snprintf(err, errlen, "store_path '%s' cannot be read (%s)", path, sqlite3_errmsg(db));
        return -1;
    }
    if (v > SQ_SCHEMA_VERSION) {
        snprintf(err, errlen,
                 "store_path '%s' has schema version %d, newer than this statusgw reads (%d): "
                 "run the statusgw that wrote it, or point store_path at another file",
                 path, v, SQ_SCHEMA_VERSION);
        return -1;
    }
    if (v == SQ_SCHEMA_VERSION) return 0;
    char why[256];
    /* a new file: incremental vacuum must be chosen before the first table */
    if (exec(db, "PRAGMA auto_vacuum = INCREMENTAL", why, sizeof(why)) < 0 ||
        exec(db, "BEGIN", why, sizeof(why)) < 0 || exec(db, schema_v1, why, sizeof(why)) < 0 ||
        exec(db, "PRAGMA user_version = 1", why, sizeof(why)) < 0 || exec(db, "COMMIT", why, sizeof(why)) < 0) {
        snprintf(err, errlen, "store_path '%s': cannot create the schema (%s)", path, why);
        return -1;
    }
    return 0;
}

static sqlite3 *open_db(const char *path, const char *sync, char *err, size_t errlen)
{
    /* the folder it goes in (var/ of a checkout, say) is made when missing */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        for (char *p = dir + 1; p <= slash; p++) { /* each missing one on the way, as mkdir -p */
            if (*p && *p != '/') continue;
            char keep = *p;
            *p = 0;
            if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                snprintf(err, errlen, "store_path '%s': cannot make the folder '%s' (%s)", path, dir, strerror(errno));
                return NULL;
            }
            *p = keep;
        }
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "store_path '%s' cannot be opened (%s)", path,
                 db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    char sql[256], why[256];
    /* pages read through a 256 MB map (the kernel's page cache) and a
     * 32 MB cache of its own (the writer's; the loop's read connection
     * takes 2 MB): the writer's index lookups would otherwise read() a
     * page each */
    snprintf(sql, sizeof(sql), "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s; PRAGMA cache_size = -32768; "
                               "PRAGMA mmap_size = 268435456", sync);
    if (exec(db, sql, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "store_path '%s' is not a usable database (%s)", path, why);
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

sg_store *sg_store_sqlite_new(const char *path, const char *sync, int history_size, size_t cache_bytes,
                              struct event_base *base, char *err, size_t errlen)
{
    sq_store *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    st->base.ops = &sqlite_ops;
    st->pipe_r = st->pipe_w = -1;
    st->history = history_size;
    st->cache_budget = cache_bytes;
    st->evb = base;
    st->path = strdup(path);
    snprintf(st->sync, sizeof(st->sync), "%s", sync);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    int fds[2];
    st->by_id = sg_dict_new();
    if (!st->path || !st->by_id || !(st->wdb = open_db(path, sync, err, errlen)) || migrate(st->wdb, path, err, errlen) < 0 ||
        !(st->rdb = open_db(path, sync, err, errlen)) ||
        exec(st->rdb, "PRAGMA cache_size = -2048", err, errlen) < 0) { /* the loop's: point lookups */
        if (!err[0]) snprintf(err, errlen, "out of memory");
        sq_free(&st->base);
        return NULL;
    }
    if (sqlite3_prepare_v3(st->rdb, "SELECT epoch, max(last_seq, coalesce((SELECT max(seq) FROM updates "
                                    "WHERE conv = ?1), 0)) FROM conversations WHERE id = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &st->q_conv, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(st->rdb, "SELECT min(seq) FROM updates WHERE conv = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &st->q_oldest, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(st->rdb, "SELECT key, seq, expires_ms FROM idempotency WHERE conv = ?1 AND expires_ms > ?2",
                           -1, SQLITE_PREPARE_PERSISTENT, &st->q_idem, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store_path '%s': %s", path, sqlite3_errmsg(st->rdb));
        sq_free(&st->base);
        return NULL;
    }
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "cannot make a pipe (%s)", strerror(errno));
        sq_free(&st->base);
        return NULL;
    }
    st->pipe_r = fds[0];
    st->pipe_w = fds[1];
    st->kick_ev = evtimer_new(base, on_kick, st);
    st->done_ev = event_new(base, st->pipe_r, EV_READ | EV_PERSIST, on_done, st);
    if (!st->kick_ev || !st->done_ev || event_add(st->done_ev, NULL) < 0 ||
        pthread_create(&st->thread, NULL, writer_main, st) != 0) {
        snprintf(err, errlen, "cannot start the store's writer thread");
        sq_free(&st->base);
        return NULL;
    }
    st->thread_on = 1;
    return &st->base;
}
