/* The durable store: history, sequence numbers, epochs and idempotency
 * keys in one SQLite database in WAL mode, with a log in front of it
 * (docs/architecture.md, "The durable store").
 *
 * The loop never waits on the disk for a write. What the hub appends is
 * encoded into the current batch; at the end of the loop turn the batch
 * is committed. A batch of appends alone (a turn of single publishes) is
 * copied into the log on the loop: a memcpy into a shared mapping of the
 * active log file, below the room the writer thread made ready ahead
 * (allocated on the disk, its pages faulted in: logfile.h). Anything else
 * (a bulk-sized batch, other writes, no room, store_sync "full") is handed
 * to the writer thread, which writes it (one pwrite per batch) and hands
 * the result back through a pipe; nothing is copied meanwhile, so batches
 * stay in order. Everything a batch holds is acknowledged (sync) and
 * delivered (on_commit) only once it is in the log (in the page cache: a
 * crash of the process keeps it), so what a client saw or was told is
 * never lost by a crash. The other writes (idempotency keys, activity,
 * forgetting) are committed to the database in the same step.
 *
 * The log is two files. Every two seconds, or past 256 MB, the writer
 * seals the active one (copies go to the other from then on) and applies
 * it to the database: one transaction writes, per conversation, one chunk
 * row holding its new updates (at most history_size of them), brings its
 * row up to date, drops the chunks history no longer reaches, and the
 * file is emptied. Replaying the files at start (after a crash), the
 * older cycle first, is the same step, and applying a record twice is
 * harmless: a conversation takes only seqs past its row's.
 *
 * Reads of what the conversation's ring (the recent updates kept in
 * memory) holds are answered at once; older ones are read by the writer
 * thread after the log is applied, and answered on a later loop turn. A
 * conversation's epoch and last seq are read when it is first opened, on
 * the loop, through a second connection (a point lookup); one with updates
 * still only in the log stays in memory until they are applied. */
#include "store.h"

#include "clock.h"
#include "dict.h"
#include "log.h"
#include "logfile.h"

#include <endian.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SQ_SCHEMA_VERSION 2
#define SQ_RETRY_MS 200              /* between attempts at a batch that failed */
#define SQ_APPLY_BYTES (256u << 20)  /* the log is applied past this size */
#define SQ_APPLY_MS 2000             /* or once its oldest batch is this old */
#define SQ_HAND_OVER 256             /* appends after which an idle writer takes a batch at once */
#define SQ_LOG_MAGIC 0x324c4753u     /* "SGL2", little-endian: log_sum */
#define SQ_LOG_MAGIC_V1 0x314c4753u  /* "SGL1": log_sum_v1 (read at start only) */
#define SQ_LOG_HDR 16                /* magic, payload length, checksum, cycle */
#define SQ_ROOM (8u << 20)           /* the room made ahead of the loop's copies */
#define SQ_READ_CHUNK (1u << 20)     /* an apply reads the log a megabyte at a time */
#define SQ_COPY_MAX (64u << 10)      /* a bigger batch goes to the writer, which has the time */
#define SQ_ROOM_WAIT_MS 50           /* room is not made while bulk batches outweigh copies */

typedef struct sq_store sq_store;
typedef struct sq_conv sq_conv;

enum { OP_IDEM, OP_FORGET, OP_TOUCH, OP_SWEEP, OP_OUTBOX_PUT, OP_OUTBOX_DEL };

/* A write to the database other than an append. */
typedef struct sq_op {
    struct sq_op *next;
    int kind;
    char conv[SG_MAX_CONV_ID + 1];
    char *key;       /* OP_IDEM; OP_OUTBOX_*: the message's id */
    sg_outbox_msg ob; /* OP_OUTBOX_PUT: its strings in one allocation, at key */
    uint64_t seq;    /* OP_IDEM; OP_SWEEP: now, for keys */
    int64_t when_ms; /* OP_IDEM: expiry; OP_TOUCH: activity; OP_SWEEP: the cutoff */
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

/* What the log holds for one conversation (the writer's): noted as each
 * batch is logged, written to the database by the next apply. */
typedef struct sq_group {
    char conv[SG_MAX_CONV_ID + 1];
    size_t conv_len;
    char epoch[SG_EPOCH_LEN];
    uint64_t last;  /* the newest logged */
    int64_t active_ms;
    /* during an apply */
    uint64_t known; /* its row's last seq: what the database has */
    char *data;     /* the chunk: the updates history still reaches */
    size_t len, cap;
    uint64_t first, chunk_last;
} sq_group;

typedef struct sq_groups {
    sg_dict *ix; /* conversation id -> index + 1 */
    sq_group *g;
    size_t n, cap;
} sq_groups;

/* A unit of work for the writer: a batch of appends (log records), the
 * other writes, and the reads queued after them. */
typedef struct sq_job {
    struct sq_job *next;
    uint64_t gen;
    char *log; /* SQ_LOG_HDR bytes, then the records */
    size_t log_len, log_cap;
    unsigned n_appends;
    sq_op *ops, **tail;
    int forgets; /* ops that need the log applied first */
    sq_waiter *waiters, **wtail; /* in order: answers go out as asked */
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
    int refs;          /* the hub's handle, each pending read, and unapplied appends */
    int64_t active_ms; /* the last append not yet recorded in its row; 0: none */
    int open;          /* the hub holds it */
    uint64_t log_gen;  /* the batch of its newest append still only in the log; 0: none */
    sq_conv *pnext;    /* those, for when the log is applied */
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
    volatile int apply_failing; /* the last apply failed */
    uint64_t applied_gen; /* every batch up to it is in the database (under mu) */
    sq_job *cur;     /* being filled on the loop */
    uint64_t next_gen, committed_gen, seen_applied;
    size_t log_hint; /* the capacity a batch's records start with */
    sq_conv *convs; /* every live one, for sweeps */
    sq_conv *unapplied; /* those with appends only in the log */
    sg_dict *by_id; /* and by id */
    /* the hot cache: the rings' updates, within cache_budget bytes */
    size_t cache_budget, cached;
    sq_conv *lru_head, *lru_tail;
    /* the log: two files, one appended to (act), the other empty or being
     * applied (sealed). Under mu: which is which, and the active one's
     * len, room, first_ms, last_gen (the loop copies into it) */
    sg_logfile logs[2];
    int act, sealed;  /* sealed: -1, or the file whose batches wait to be applied */
    int mapped;       /* the loop may copy batches into the active file's room */
    int asked;        /* the loop woke the writer for room or an apply: not again meanwhile */
    int want_room;    /* the loop's copies need room made (bulk batches, written, do not) */
    size_t copied, uncopyable; /* bytes of batches the loop copied, and of those only the writer
                                * could take, since the writer last looked (room_wanted) */
    uint32_t cycle;   /* the newest file's */
    /* the writer's */
    sq_groups groups; /* what the file being applied holds, by conversation */
    char *rbuf;       /* an apply's reads of the log */
    size_t rbuf_cap;
    int64_t apply_retry_ms, grow_retry_ms;
    unsigned apply_attempts;
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
    c->head = c->head + 1 == st->history ? 0 : c->head + 1; /* (no division: an append's hot path) */
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

static int64_t mono_ms(void)
{
    return (int64_t)(sg_clock_running_ns() / 1000000u);
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

/* ---- the records: little-endian, the same in the log and in chunks ----
 *
 * An update: seq u64, ts_ms i64, category (length u8, name), json (length
 * u32, bytes). A log record: conversation id (length u8, bytes), epoch
 * (SG_EPOCH_LEN bytes), then the update. A chunk row's data: updates. */

/* Little-endian fields, through memcpy: one load or store each (a byte
 * loop was not merged into one, and the checksum spent its time there). */
static void put_u32(char *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}

static void put_u64(char *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}

static uint32_t get_u32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

static uint64_t get_u64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

/* The first log format's checksum (one lane), for a log an older
 * gateway left. */
static uint32_t log_sum_v1(const char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ get_u64(p + i)) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* The log's checksum: a torn or overwritten batch fails it. Four
 * independent lanes of a multiply-xorshift hash, so the multiplies
 * overlap (one lane ran at a byte a cycle: a sixth of the writer's time
 * on bulk publishes). */
static uint32_t log_sum(const char *p, size_t n)
{
    const uint64_t k = 0x9e3779b97f4a7c15ull;
    uint64_t h[4] = {k ^ n, k + 1, k + 2, k + 3};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++) {
            h[l] = (h[l] ^ get_u64(p + i + 8 * l)) * 0x100000001b3ull;
            h[l] ^= h[l] >> 29;
        }
    uint64_t x = h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
    for (; i < n; i++)
        x = (x ^ (unsigned char)p[i]) * 0x100000001b3ull;
    x ^= x >> 32;
    return (uint32_t)x;
}

static size_t put_update_fields(char *p, uint64_t seq, int64_t ts_ms, const char *cat, size_t cat_len,
                                const void *json, size_t json_len)
{
    put_u64(p, seq);
    put_u64(p + 8, (uint64_t)ts_ms);
    p[16] = (char)cat_len;
    memcpy(p + 17, cat, cat_len);
    put_u32(p + 17 + cat_len, (uint32_t)json_len);
    memcpy(p + 21 + cat_len, json, json_len);
    return 21 + cat_len + json_len;
}

typedef struct sq_rec {
    const char *conv; /* a log record's */
    size_t conv_len;
    const char *epoch;
    const char *upd; /* the update's bytes */
    size_t upd_len;
    uint64_t seq;
    int64_t ts_ms;
    const char *cat, *json;
    size_t cat_len, json_len;
} sq_rec;

/* The update at p (n bytes left): its length, or 0 when malformed. */
static size_t get_update(const char *p, size_t n, sq_rec *r)
{
    if (n < 17 || n < 21 + (size_t)(unsigned char)p[16]) return 0;
    r->upd = p;
    r->seq = get_u64(p);
    r->ts_ms = (int64_t)get_u64(p + 8);
    r->cat_len = (unsigned char)p[16];
    r->cat = p + 17;
    r->json_len = get_u32(p + 17 + r->cat_len);
    r->json = p + 21 + r->cat_len;
    if (r->json_len > n - 21 - r->cat_len) return 0;
    r->upd_len = 21 + r->cat_len + r->json_len;
    return r->upd_len;
}

static size_t get_record(const char *p, size_t n, sq_rec *r)
{
    if (n < 1 || n < 1 + (size_t)(unsigned char)p[0] + SG_EPOCH_LEN) return 0;
    r->conv_len = (unsigned char)p[0];
    r->conv = p + 1;
    r->epoch = p + 1 + r->conv_len;
    size_t head = 1 + r->conv_len + SG_EPOCH_LEN;
    size_t m = get_update(p + head, n - head, r);
    return m ? head + m : 0;
}

/* An update read back: NULL when out of memory, or (errno 0) when its
 * category is not in mask (one no longer configured, say). */
static sg_update *rec_update(const sq_rec *r, uint64_t mask)
{
    int ci = sg_category_index(r->cat, r->cat_len);
    errno = 0;
    if (ci < 0 || !(mask & (1ULL << ci))) return NULL;
    errno = ENOMEM;
    return sg_update_stored(ci, r->seq, r->ts_ms, r->json, r->json_len);
}

static void finish_job(sq_store *st, sq_job *j);

/* The batch being filled, made on first use; the turn's end hands it over. */
static sq_job *cur_job(sq_store *st)
{
    if (st->cur) return st->cur;
    sq_job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->tail = &j->ops;
    j->rtail = &j->reads;
    j->wtail = &j->waiters;
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
    if (op->kind == OP_FORGET || op->kind == OP_SWEEP) j->forgets++;
    return 0;
}

/* The batch's header: magic, length, checksum, the file's cycle. */
static void frame_batch(sq_job *j, uint32_t cycle)
{
    size_t n = j->log_len - SQ_LOG_HDR;
    put_u32(j->log, SQ_LOG_MAGIC);
    put_u32(j->log + 4, (uint32_t)n);
    put_u32(j->log + 8, log_sum(j->log + SQ_LOG_HDR, n));
    put_u32(j->log + 12, cycle);
}

/* Whether the batch may be copied into the log on the loop: appends alone
 * (and what waits for them), at most SQ_COPY_MAX of them: a big batch
 * (bulk publishes) goes to the writer, whose hand-over costs little beside
 * it, and the loop keeps its time for the network. */
static int copyable(const sq_store *st, const sq_job *j)
{
    return st->mapped && !j->ops && !j->reads && !j->forgets && j->log_len <= SQ_COPY_MAX;
}

/* A copyable batch goes into the log on the loop: a copy into the room the
 * writer made ready in the active file (logfile.h). Anything else (no
 * room either) goes to the writer. Under mu: 0 when copied; wake: the
 * writer is wanted (an apply to time, room to make). */
static int copy_batch(sq_store *st, sq_job *j, int *wake)
{
    if (!copyable(st, j)) return -1;
    if (j->log_len <= SQ_LOG_HDR) return 0; /* only waiters: what came before is in */
    sg_logfile *f = &st->logs[st->act];
    if (f->len + j->log_len > f->room) {
        st->want_room = 1;
        if (!st->asked) *wake = st->asked = 1;
        return -1;
    }
    frame_batch(j, f->cycle);
    sg_logfile_put(f, j->log, j->log_len);
    st->copied += j->log_len;
    f->last_gen = j->gen;
    int first = !f->first_ms;
    if (first) f->first_ms = mono_ms();
    if (f->room < f->len + SQ_ROOM / 2) st->want_room = 1;
    if (!st->asked && (first || st->want_room || f->len >= SQ_APPLY_BYTES)) *wake = st->asked = 1;
    return 0;
}

/* Commit the current batch: copied into the log at once (copy_batch),
 * or handed to the writer; while the writer is busy it keeps filling
 * (the next commit takes all of it). now: 0 from inside an append, where
 * a copied batch cannot be answered: only a hand-over then. */
static void hand_over(sq_store *st, int now)
{
    sq_job *j = st->cur, *copied = NULL;
    if (!j || (!now && copyable(st, j))) return;
    int wake = 0;
    pthread_mutex_lock(&st->mu);
    if (!st->writing && !st->todo) {
        size_t want = j->log_len < 4096 ? 4096 : j->log_len + j->log_len / 8;
        st->log_hint = want < ((size_t)1 << 24) ? want : (size_t)1 << 24;
        if (now && copy_batch(st, j, &wake) == 0) {
            copied = j;
        } else {
            if (!copyable(st, j)) st->uncopyable += j->log_len;
            st->todo = st->todo_tail = j;
            wake = 1;
        }
        st->cur = NULL;
    }
    pthread_mutex_unlock(&st->mu);
    /* signalled after the unlock: woken holding it, the writer (on the
     * same core) would run only to block on the mutex */
    if (wake) pthread_cond_signal(&st->cv);
    if (copied) finish_job(st, copied);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    hand_over(arg, 1);
}

/* ---- the writer thread ---- */

typedef struct wstmts {
    sqlite3_stmt *ins_chunk, *upsert_conv, *known, *trim, *ins_idem, *del_chunks, *del_conv, *del_idem, *touch,
        *sweep_chunks, *sweep_idem_conv, *sweep_convs, *sweep_idem, *range, *bounds, *ob_put, *ob_del, *ob_parts;
} wstmts;

static int prepare_all(sqlite3 *db, wstmts *w)
{
    struct { sqlite3_stmt **s; const char *sql; } all[] = {
        {&w->ins_chunk, "INSERT OR REPLACE INTO chunks(conv, first_seq, last_seq, data) VALUES (?1, ?2, ?3, ?4)"},
        {&w->upsert_conv, "INSERT INTO conversations(id, epoch, last_seq, last_activity_ms) VALUES (?1, ?2, ?3, ?4) "
                          "ON CONFLICT(id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq), "
                          "last_activity_ms = max(last_activity_ms, excluded.last_activity_ms)"},
        {&w->known, "SELECT last_seq FROM conversations WHERE id = ?1"},
        {&w->trim, "DELETE FROM chunks WHERE conv = ?1 AND last_seq <= ?2"},
        {&w->ins_idem, "INSERT OR REPLACE INTO idempotency(conv, key, seq, expires_ms) VALUES (?1, ?2, ?3, ?4)"},
        {&w->del_chunks, "DELETE FROM chunks WHERE conv = ?1"},
        {&w->del_conv, "DELETE FROM conversations WHERE id = ?1"},
        {&w->del_idem, "DELETE FROM idempotency WHERE conv = ?1"},
        /* (not last_seq: applying the log keeps it, and takes only seqs past it) */
        {&w->touch, "UPDATE conversations SET last_activity_ms = max(last_activity_ms, ?2) WHERE id = ?1"},
        {&w->sweep_chunks, "DELETE FROM chunks WHERE conv IN (SELECT id FROM conversations WHERE last_activity_ms < ?1)"},
        {&w->sweep_idem_conv, "DELETE FROM idempotency WHERE conv IN (SELECT id FROM conversations WHERE last_activity_ms < ?1)"},
        {&w->sweep_convs, "DELETE FROM conversations WHERE last_activity_ms < ?1"},
        {&w->sweep_idem, "DELETE FROM idempotency WHERE expires_ms < ?1"},
        {&w->range, "SELECT data FROM chunks WHERE conv = ?1 AND last_seq > ?2 AND first_seq <= ?3 ORDER BY first_seq"},
        {&w->bounds, "SELECT min(first_seq), max(last_seq) FROM chunks WHERE conv = ?1"},
        {&w->ob_put, "INSERT OR REPLACE INTO outbox(id, endpoint, body, headers, updates, attempts, next_at_ms, dead, "
                     "last_status, last_error, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"},
        {&w->ob_del, "DELETE FROM outbox WHERE id = ?1"},
        /* a message's parts: "<id>.<n>", between "<id>." and "<id>/" */
        {&w->ob_parts, "DELETE FROM outbox WHERE id >= ?1 || '.' AND id < ?1 || '/'"},
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

static int write_op(sq_store *st, wstmts *w, sq_op *o)
{
    switch (o->kind) {
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
        return run(w->del_chunks, o->conv, NULL, 0, 0) < 0 || run(w->del_conv, o->conv, NULL, 0, 0) < 0 ||
                       run(w->del_idem, o->conv, NULL, 0, 0) < 0
                   ? -1 : 0;
    case OP_TOUCH: return run(w->touch, o->conv, NULL, o->when_ms, (int64_t)o->seq);
    case OP_SWEEP: {
        sqlite3_stmt *ss[] = {w->sweep_chunks, w->sweep_idem_conv, w->sweep_convs};
        for (int i = 0; i < 3; i++) {
            sqlite3_reset(ss[i]);
            sqlite3_bind_int64(ss[i], 1, o->when_ms);
            if (sqlite3_step(ss[i]) != SQLITE_DONE) return -1;
        }
        sqlite3_reset(w->sweep_idem);
        sqlite3_bind_int64(w->sweep_idem, 1, (sqlite3_int64)o->seq); /* now, for keys */
        return sqlite3_step(w->sweep_idem) == SQLITE_DONE ? 0 : -1;
    }
    case OP_OUTBOX_PUT: {
        const sg_outbox_msg *m = &o->ob;
        sqlite3_stmt *s = w->ob_put;
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, m->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, m->endpoint, -1, SQLITE_STATIC);
        sqlite3_bind_blob(s, 3, m->body, (int)m->len, SQLITE_STATIC);
        if (m->headers) sqlite3_bind_text(s, 4, m->headers, -1, SQLITE_STATIC); else sqlite3_bind_null(s, 4);
        sqlite3_bind_int(s, 5, m->updates);
        sqlite3_bind_int(s, 6, m->attempts);
        sqlite3_bind_int64(s, 7, m->next_at_ms);
        sqlite3_bind_int(s, 8, m->dead);
        sqlite3_bind_int64(s, 9, m->last_status);
        if (m->last_error) sqlite3_bind_text(s, 10, m->last_error, -1, SQLITE_STATIC); else sqlite3_bind_null(s, 10);
        sqlite3_bind_int64(s, 11, m->created_ms);
        if (sqlite3_step(s) != SQLITE_DONE) return -1;
        return m->dead == SG_OUTBOX_PART ? 0 : run(w->ob_parts, m->id, NULL, 0, 0);
    }
    case OP_OUTBOX_DEL:
        return run(w->ob_del, o->key, NULL, 0, 0) < 0 ? -1 : run(w->ob_parts, o->key, NULL, 0, 0);
    }
    return -1;
}

/* ---- applying the log ---- */

/* Note a logged batch's records in the groups: 0, or -1 out of memory. */
static int note_batch(sq_store *st, const char *p, size_t n)
{
    sq_groups *gs = &st->groups;
    if (!gs->ix && !(gs->ix = sg_dict_new())) return -1;
    const char *end = p + n;
    sq_rec r;
    size_t m;
    for (; p < end && (m = get_record(p, (size_t)(end - p), &r)); p += m) {
        uintptr_t i = (uintptr_t)sg_dict_get(gs->ix, r.conv, r.conv_len);
        sq_group *g;
        if (i) {
            g = &gs->g[i - 1];
        } else {
            if (gs->n == gs->cap) {
                size_t cap = gs->cap ? gs->cap * 2 : 64;
                sq_group *ng = realloc(gs->g, cap * sizeof(*ng));
                if (!ng) return -1;
                gs->g = ng;
                gs->cap = cap;
            }
            g = &gs->g[gs->n];
            memset(g, 0, sizeof(*g));
            memcpy(g->conv, r.conv, r.conv_len);
            g->conv_len = r.conv_len;
            memcpy(g->epoch, r.epoch, SG_EPOCH_LEN);
            if (sg_dict_set(gs->ix, r.conv, r.conv_len, (void *)(gs->n + 1)) < 0) return -1;
            gs->n++;
        }
        if (r.seq > g->last) g->last = r.seq;
        if (r.ts_ms > g->active_ms) g->active_ms = r.ts_ms;
    }
    return 0;
}

static void groups_clear(sq_groups *gs)
{
    for (size_t i = 0; i < gs->n; i++)
        free(gs->g[i].data);
    free(gs->g);
    if (gs->ix) sg_dict_free(gs->ix);
    memset(gs, 0, sizeof(*gs));
}

/* Make st->rbuf hold f's bytes [off, off + need), reading on from off
 * (rbuf holds [*boff, *boff + *have) and off only moves forward): 0, or
 * -1 with errno. */
static int read_ahead(sq_store *st, sg_logfile *f, size_t *boff, size_t *have, size_t off, size_t need)
{
    if (off + need <= *boff + *have) return 0;
    size_t keep = *boff + *have > off ? *boff + *have - off : 0;
    size_t cap = need > SQ_READ_CHUNK ? need : SQ_READ_CHUNK;
    if (cap > st->rbuf_cap) {
        char *nb = realloc(st->rbuf, cap);
        if (!nb) return -1;
        st->rbuf = nb;
        st->rbuf_cap = cap;
    }
    if (keep) memmove(st->rbuf, st->rbuf + (off - *boff), keep);
    *boff = off;
    *have = keep;
    size_t to = st->rbuf_cap < f->len - off ? st->rbuf_cap : f->len - off;
    while (*have < to) {
        ssize_t m = pread(f->fd, st->rbuf + *have, to - *have, (off_t)(off + *have));
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) {
            if (m == 0) errno = EIO;
            return -1;
        }
        *have += (size_t)m;
    }
    return 0;
}

/* Read f's batches back (from the page cache, as a rule, a megabyte a
 * read), each batch's records to fn: 0, or -1 with why. */
static int each_batch(sq_store *st, sg_logfile *f, int (*fn)(sq_store *st, const char *p, size_t n), char *why,
                      size_t whylen)
{
    size_t boff = 0, have = 0;
    /* through the mapping when there is one: the pages are in memory */
    const char *map = f->map && f->len <= SG_LOGFILE_MAP ? f->map : NULL;
    for (size_t off = 0; off + SQ_LOG_HDR <= f->len;) {
        if (!map && read_ahead(st, f, &boff, &have, off, SQ_LOG_HDR) < 0) goto unreadable;
        const char *hdr = map ? map + off : st->rbuf + (off - boff);
        size_t n = get_u32(hdr + 4);
        if ((get_u32(hdr) != SQ_LOG_MAGIC && get_u32(hdr) != SQ_LOG_MAGIC_V1) || n > f->len - off - SQ_LOG_HDR) {
            snprintf(why, whylen, "%s is damaged at byte %zu", f->path, off);
            return -1;
        }
        if (!map && read_ahead(st, f, &boff, &have, off, SQ_LOG_HDR + n) < 0) goto unreadable;
        const char *p = (map ? map + off : st->rbuf + (off - boff)) + SQ_LOG_HDR;
        off += SQ_LOG_HDR + n;
        if (fn(st, p, n) < 0) goto oom;
    }
    return 0;
unreadable:
    if (errno == ENOMEM) goto oom;
    snprintf(why, whylen, "reading %s: %s", f->path, strerror(errno));
    return -1;
oom:
    snprintf(why, whylen, "out of memory");
    return -1;
}

/* Gather in its group each update history still reaches and the database
 * lacks: the newest `history` at most, what was logged before them is
 * superseded. */
static int collect(sq_store *st, const char *p, size_t n)
{
    sq_groups *gs = &st->groups;
    const char *end = p + n;
    sq_rec r;
    size_t m;
    for (; p < end && (m = get_record(p, (size_t)(end - p), &r)); p += m) {
        uintptr_t i = (uintptr_t)sg_dict_get(gs->ix, r.conv, r.conv_len);
        if (!i) continue; /* applied already (a truncation that failed kept it) */
        sq_group *g = &gs->g[i - 1];
        uint64_t floor = g->last > (uint64_t)st->history ? g->last - (uint64_t)st->history : 0;
        if (r.seq <= g->known || r.seq <= floor || r.seq <= g->chunk_last) continue;
        if (g->len + r.upd_len > g->cap) {
            size_t cap = g->cap ? g->cap * 2 : 1024;
            while (cap < g->len + r.upd_len) cap *= 2;
            char *d = realloc(g->data, cap);
            if (!d) return -1;
            g->data = d;
            g->cap = cap;
        }
        memcpy(g->data + g->len, r.upd, r.upd_len);
        g->len += r.upd_len;
        if (!g->first) g->first = r.seq;
        g->chunk_last = r.seq;
    }
    return 0;
}

static int gather(sq_store *st, wstmts *w, sg_logfile *f, char *why, size_t whylen)
{
    sq_groups *gs = &st->groups;
    groups_clear(gs);
    if (each_batch(st, f, note_batch, why, whylen) < 0) return -1;
    for (size_t i = 0; i < gs->n; i++) {
        sq_group *g = &gs->g[i];
        g->known = g->first = g->chunk_last = 0;
        g->len = 0;
        sqlite3_reset(w->known);
        sqlite3_bind_text(w->known, 1, g->conv, (int)g->conv_len, SQLITE_STATIC);
        int rc = sqlite3_step(w->known);
        if (rc == SQLITE_ROW) g->known = (uint64_t)sqlite3_column_int64(w->known, 0);
        sqlite3_reset(w->known);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            snprintf(why, whylen, "%s", sqlite3_errmsg(st->wdb));
            return -1;
        }
    }
    return each_batch(st, f, collect, why, whylen);
}

static int write_group(sq_store *st, wstmts *w, const sq_group *g)
{
    sqlite3_stmt *s = w->ins_chunk;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, g->conv, (int)g->conv_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)g->first);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)g->chunk_last);
    sqlite3_bind_blob(s, 4, g->data, (int)g->len, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) return -1;
    s = w->upsert_conv;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, g->conv, (int)g->conv_len, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, g->epoch, SG_EPOCH_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)g->chunk_last);
    sqlite3_bind_int64(s, 4, g->active_ms);
    if (sqlite3_step(s) != SQLITE_DONE) return -1;
    if (g->chunk_last <= (uint64_t)st->history) return 0;
    s = w->trim;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, g->conv, (int)g->conv_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)(g->chunk_last - (uint64_t)st->history));
    return sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
}

static void poke(sq_store *st)
{
    char one = 1;
    while (write(st->pipe_w, &one, 1) < 0 && errno == EINTR) {
    }
}

/* When the log is to be applied (INT64_MAX: never): the sealed file at
 * once, the active one once its first batch is SQ_APPLY_MS old or it
 * holds SQ_APPLY_BYTES; after a failure, at the retry. Under mu. */
static int64_t apply_due(sq_store *st)
{
    sg_logfile *a = &st->logs[st->act];
    if (st->sealed < 0 && !a->len) return INT64_MAX;
    int64_t due = st->sealed >= 0 || a->len >= SQ_APPLY_BYTES ? 0 : a->first_ms + SQ_APPLY_MS;
    return st->apply_failing && due < st->apply_retry_ms ? st->apply_retry_ms : due;
}

/* When the writer has work besides jobs (INT64_MAX: none): an apply, room
 * to make for the loop's copies. Under mu. */
static int64_t upkeep_due(sq_store *st)
{
    int64_t due = apply_due(st);
    if (st->mapped && st->want_room && st->grow_retry_ms < due) due = st->grow_retry_ms;
    return due;
}

/* Whether room is to be made now (under mu). Not while batches only the
 * writer takes (bulk) outweigh the loop's copies: their writes would pass
 * the room at once, and making it (allocating and faulting in pages the
 * writes then fill) cost bulk publishes more than the writes themselves;
 * looked at again SQ_ROOM_WAIT_MS later, when the bulk may be over. */
static int room_wanted(sq_store *st)
{
    int64_t now = mono_ms();
    if (!st->mapped || !st->want_room || now < st->grow_retry_ms) return 0;
    int bulk = st->uncopyable > st->copied;
    st->uncopyable = st->copied = 0;
    if (bulk) st->grow_retry_ms = now + SQ_ROOM_WAIT_MS;
    return !bulk;
}

/* Room in the active file for the loop's copies, when they want it:
 * SQ_ROOM past its batches (made outside the lock: the loop copies below
 * the old room meanwhile). */
static void make_room(sq_store *st)
{
    pthread_mutex_lock(&st->mu);
    sg_logfile *f = &st->logs[st->act];
    size_t from = f->len, to = (f->len + SQ_ROOM + ((1u << 20) - 1)) & ~(size_t)((1u << 20) - 1);
    int want = room_wanted(st);
    pthread_mutex_unlock(&st->mu);
    if (!want) return;
    int rc = to > SG_LOGFILE_MAP ? -1 : sg_logfile_grow(f, from, to);
    pthread_mutex_lock(&st->mu);
    if (rc == 0) {
        f->room = to;
        st->grow_retry_ms = 0;
        st->want_room = 0;
    } else { /* a full disk, say: batches go to the writer meanwhile, which reports */
        if (errno == EOPNOTSUPP) st->mapped = 0;
        st->grow_retry_ms = mono_ms() + 1000;
    }
    pthread_mutex_unlock(&st->mu);
}

/* Apply f (sealed: nothing is appended to it) to the database in one
 * transaction, then empty it: 0, or -1 with why (it keeps its batches). */
static int apply_file(sq_store *st, wstmts *w, sg_logfile *f, char *why, size_t whylen)
{
    int rc = -1;
    if (exec(st->wdb, "BEGIN", why, whylen) < 0) goto out;
    if (gather(st, w, f, why, whylen) < 0) goto fail_rolled;
    for (size_t i = 0; i < st->groups.n; i++)
        if (st->groups.g[i].len && write_group(st, w, &st->groups.g[i]) < 0) goto fail;
    if (exec(st->wdb, "COMMIT", why, whylen) < 0) goto fail_rolled;
    /* a crash before it is emptied replays batches the database has: each
     * conversation takes only seqs past its row's */
    uint64_t gen = f->last_gen;
    if (sg_logfile_reset(f) < 0) {
        snprintf(why, whylen, "emptying %s: %s", f->path, strerror(errno));
        goto out;
    }
    pthread_mutex_lock(&st->mu);
    if (gen > st->applied_gen) st->applied_gen = gen;
    pthread_mutex_unlock(&st->mu);
    if (st->pipe_w >= 0) poke(st);
    rc = 0;
    goto out;
fail:
    snprintf(why, whylen, "%s", sqlite3_errmsg(st->wdb));
fail_rolled:
    if (!sqlite3_get_autocommit(st->wdb)) exec(st->wdb, "ROLLBACK", NULL, 0);
out:
    groups_clear(&st->groups);
    free(st->rbuf); /* as big as the biggest batch: not kept between applies */
    st->rbuf = NULL;
    st->rbuf_cap = 0;
    return rc;
}

/* Apply the log: the sealed file, after sealing the active one when it is
 * due; all: every batch logged so far (a read or a forget follows).
 * Sealing turns the loop's copies to the other file, which is empty:
 * each is emptied as it is applied. 0, or -1 with why. */
static int apply_log(sq_store *st, wstmts *w, int all, char *why, size_t whylen)
{
    for (int round = 0; round < 2; round++) {
        pthread_mutex_lock(&st->mu);
        sg_logfile *a = &st->logs[st->act];
        if (st->sealed < 0 && a->len && (all || apply_due(st) <= mono_ms())) {
            st->sealed = st->act;
            st->act ^= 1;
            st->logs[st->act].cycle = ++st->cycle;
        }
        int s = st->sealed;
        pthread_mutex_unlock(&st->mu);
        if (s < 0) return 0;
        sg_logfile *f = &st->logs[s];
        size_t used = f->len > SQ_ROOM ? f->len : SQ_ROOM;
        if (apply_file(st, w, f, why, whylen) < 0) return -1;
        /* its room is kept for the next time, as much as this time's
         * batches took: what a burst made goes back once it is over */
        if (f->room > 4 * used) sg_logfile_cut(f, (2 * used + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1));
        pthread_mutex_lock(&st->mu);
        st->sealed = -1;
        pthread_mutex_unlock(&st->mu);
        if (!all) break;
    }
    return 0;
}

/* Apply, keeping count of failures: while it fails, publishes are refused
 * (the log would grow without bound). */
static int try_apply(sq_store *st, wstmts *w, int all)
{
    char why[256] = "the database is not open";
    if (st->wdb && apply_log(st, w, all, why, sizeof(why)) == 0) {
        if (st->apply_attempts)
            sg_log(SG_LOG_INFO, "store_recovered", "store=sqlite step=apply attempts=%u", st->apply_attempts);
        st->apply_attempts = 0;
        st->apply_failing = 0;
        return 0;
    }
    if (st->apply_attempts++ % 50 == 0)
        sg_log(SG_LOG_ERROR, "store_apply_failed", "store=sqlite path=%s reason=%s attempts=%u retry_ms=%d",
               sg_log_q(st->path), sg_log_q(why), st->apply_attempts, SQ_RETRY_MS);
    pthread_mutex_lock(&st->mu);
    st->apply_failing = 1;
    st->apply_retry_ms = mono_ms() + SQ_RETRY_MS;
    pthread_mutex_unlock(&st->mu);
    reset_all(w);
    if (!st->wdb || st->apply_attempts % 5 == 0) reopen_writer(st, w);
    return -1;
}

/* Write the job's records to the active file, as one checksummed batch
 * (the loop copies nothing meanwhile: the writer holds a job). */
static int log_append(sq_store *st, sq_job *j, char *why, size_t whylen)
{
    if (j->log_len <= SQ_LOG_HDR) return 0;
    sg_logfile *f = &st->logs[st->act];
    frame_batch(j, f->cycle);
    if (sg_logfile_write(f, j->log, j->log_len, strcmp(st->sync, "full") == 0) < 0) {
        snprintf(why, whylen, "writing %s: %s", f->path, strerror(errno));
        return -1;
    }
    f->last_gen = j->gen;
    if (!f->first_ms) f->first_ms = mono_ms();
    return 0;
}

/* Commit the job: the other writes in one transaction (after applying the
 * log when one forgets), then its records to the log: 0, or -1 with why.
 * Trying again after a failure is harmless. */
static int commit_job(sq_store *st, wstmts *w, sq_job *j, char *why, size_t whylen)
{
    if (!st->wdb) {
        snprintf(why, whylen, "the database is not open");
        return -1;
    }
    if (j->forgets && apply_log(st, w, 1, why, whylen) < 0) return -1;
    if (j->ops) {
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
    }
    return log_append(st, j, why, whylen);
}

/* The oldest seq the database holds for conv (0: none), through bounds
 * (min first_seq, max last_seq of its chunks): a chunk history reaches
 * only in part counts from where history starts. */
static uint64_t oldest_held(sq_store *st, sqlite3_stmt *bounds, const char *conv)
{
    uint64_t oldest = 0;
    sqlite3_reset(bounds);
    sqlite3_bind_text(bounds, 1, conv, -1, SQLITE_STATIC);
    if (sqlite3_step(bounds) == SQLITE_ROW && sqlite3_column_type(bounds, 0) != SQLITE_NULL) {
        uint64_t lo = (uint64_t)sqlite3_column_int64(bounds, 0), hi = (uint64_t)sqlite3_column_int64(bounds, 1);
        uint64_t floor = hi > (uint64_t)st->history ? hi - (uint64_t)st->history + 1 : 1;
        oldest = lo > floor ? lo : floor;
    }
    sqlite3_reset(bounds);
    return oldest;
}

static int read_range(sq_store *st, wstmts *w, sq_read *r)
{
    r->oldest = oldest_held(st, w->bounds, r->conv);
    sqlite3_stmt *s = w->range;
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, r->conv, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)r->since);
    sqlite3_bind_int64(s, 3, r->upto ? (sqlite3_int64)r->upto : INT64_MAX);
    size_t cap = 0;
    while (r->n < r->limit && sqlite3_step(s) == SQLITE_ROW) {
        const char *p = sqlite3_column_blob(s, 0), *end = p + sqlite3_column_bytes(s, 0);
        sq_rec rec;
        size_t m;
        for (; p && p < end && r->n < r->limit && (m = get_update(p, (size_t)(end - p), &rec)); p += m) {
            if (rec.seq <= r->since || rec.seq < r->oldest || (r->upto && rec.seq > r->upto)) continue;
            sg_update *u = rec_update(&rec, r->mask);
            if (!u) {
                if (errno == 0) continue; /* not in mask */
                return -1;
            }
            if (r->n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                sg_update **ups = realloc(r->ups, nc * sizeof(*ups));
                if (!ups) {
                    sg_update_unref(u);
                    return -1;
                }
                r->ups = ups;
                cap = nc;
            }
            r->ups[r->n++] = u;
        }
    }
    return 0;
}

/* What is due besides jobs: room for the loop, an apply. 1 when an apply
 * went. */
static int upkeep(sq_store *st, wstmts *w)
{
    make_room(st);
    pthread_mutex_lock(&st->mu);
    int due = apply_due(st) <= mono_ms();
    pthread_mutex_unlock(&st->mu);
    return due && try_apply(st, w, 0) == 0;
}

/* Commit a job until it is in (a batch that fails is tried again: nothing
 * in it was acknowledged or delivered, and nothing after it may go first,
 * so seqs stay in order; meanwhile publishes are refused), then answer
 * its reads from the database with the log applied. */
static void run_job(sq_store *st, wstmts *w, sq_job *j)
{
    int attempts = 0;
    char why[256] = "";
    while (commit_job(st, w, j, why, sizeof(why)) < 0) {
        if (attempts++ % 50 == 0) /* the first, then every 10 s */
            sg_log(SG_LOG_ERROR, "store_write_failed", "store=sqlite path=%s reason=%s attempts=%d retry_ms=%d",
                   sg_log_q(st->path), sg_log_q(why), attempts, SQ_RETRY_MS);
        st->failing = 1;
        if (st->stop && attempts > 3) {
            j->status = -1;
            break;
        }
        struct timespec ts = {0, SQ_RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
        reset_all(w);
        if (!st->wdb || attempts % 5 == 0) reopen_writer(st, w);
    }
    if (j->status == 0) {
        if (attempts) sg_log(SG_LOG_INFO, "store_recovered", "store=sqlite attempts=%d", attempts);
        st->failing = 0;
    }
    int readable = j->status == 0 && (!j->reads || try_apply(st, w, 1) == 0);
    for (sq_read *r = j->reads; r; r = r->next)
        if (!readable || read_range(st, w, r) < 0) r->status = -1;
    reset_all(w);
    upkeep(st, w);
}

static void *writer_main(void *arg)
{
    sq_store *st = arg;
    /* a batch thread never preempts the loop when woken: sharing a core,
     * it runs when the loop waits, taking all the loop gathered meanwhile
     * (woken at each hand-over, it took a batch of two) */
    struct sched_param sp = {0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
    pthread_setname_np(pthread_self(), "sg-store"); /* as top -H and perf show it */
    wstmts w;
    memset(&w, 0, sizeof(w));
    if (prepare_all(st->wdb, &w) < 0) reopen_writer(st, &w);
    for (;;) {
        pthread_mutex_lock(&st->mu);
        /* idle until a job, or an apply or room is due */
        while (!st->todo && !st->stop) {
            st->asked = 0;
            int64_t due = upkeep_due(st);
            if (mono_ms() >= due) break;
            if (due == INT64_MAX) {
                pthread_cond_wait(&st->cv, &st->mu);
                continue;
            }
            struct timespec ts = {(time_t)(due / 1000), (long)(due % 1000) * 1000000L};
            pthread_cond_timedwait(&st->cv, &st->mu, &ts);
        }
        sq_job *j = st->todo;
        if (j) {
            st->todo = j->next;
            if (!st->todo) st->todo_tail = NULL;
            j->next = NULL;
            st->writing = 1;
        }
        int stop = st->stop;
        pthread_mutex_unlock(&st->mu);
        if (!j) {
            if (stop) break;
            /* idle: what the batches and chunks took goes back to the
             * system (a busy writer reuses it) */
            if (upkeep(st, &w)) malloc_trim(0);
            continue;
        }
        run_job(st, &w, j);
        pthread_mutex_lock(&st->mu);
        if (st->done_tail) st->done_tail->next = j; else st->done = j;
        st->done_tail = j;
        st->writing = 0;
        pthread_mutex_unlock(&st->mu);
        poke(st);
    }
    /* a stop applies the log (what it cannot is replayed at the next start)
     * and leaves the files empty */
    for (int i = 0; i < 4 && try_apply(st, &w, 1) < 0; i++) {
        struct timespec ts = {0, SQ_RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (!st->logs[i].len) sg_logfile_cut(&st->logs[i], 0);
    finalize_all(&w);
    sg_update_pool_free(); /* this thread's (reads that failed freed updates into it) */
    return NULL;
}

/* ---- results, back on the loop ---- */

static void job_free(sq_job *j)
{
    sq_op *o = j->ops;
    while (o) {
        sq_op *n = o->next;
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
    free(j->log);
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

/* The log is applied up to gen: conversations whose appends are all in
 * the database may go (a later open reads them back). */
static void release_applied(sq_store *st, uint64_t gen)
{
    sq_conv **pp = &st->unapplied;
    while (*pp) {
        sq_conv *c = *pp;
        if (c->log_gen > gen) {
            pp = &c->pnext;
            continue;
        }
        *pp = c->pnext;
        c->pnext = NULL;
        c->log_gen = 0;
        conv_unref(c);
    }
}

static void take_done(sq_store *st)
{
    pthread_mutex_lock(&st->mu);
    sq_job *j = st->done;
    st->done = st->done_tail = NULL;
    uint64_t applied = st->applied_gen;
    pthread_mutex_unlock(&st->mu);
    while (j) {
        sq_job *n = j->next;
        finish_job(st, j);
        j = n;
    }
    if (applied != st->seen_applied) {
        st->seen_applied = applied;
        release_applied(st, applied);
    }
    hand_over(st, 1); /* what filled up meanwhile goes next */
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
        c->oldest = oldest_held(st, st->q_oldest, c->id);
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

/* Encode u into the batch's log records. */
static int log_record(sq_job *j, const sq_conv *c, const sg_update *u)
{
    const char *cat = sg_category_name(u->category);
    size_t cl = strlen(cat);
    size_t need = 1 + c->id_len + SG_EPOCH_LEN + 21 + cl + u->json_len;
    if (j->log_len + need > j->log_cap) {
        /* (the last batch's size: a busy loop fills batches alike) */
        size_t cap = j->log_cap ? j->log_cap : c->st->log_hint;
        while (cap < SQ_LOG_HDR + j->log_len + need)
            cap *= 2;
        char *p = realloc(j->log, cap);
        if (!p) return -1;
        j->log = p;
        j->log_cap = cap;
    }
    if (j->log_len == 0) j->log_len = SQ_LOG_HDR;
    char *p = j->log + j->log_len;
    p[0] = (char)c->id_len;
    memcpy(p + 1, c->id, c->id_len);
    memcpy(p + 1 + c->id_len, c->epoch, SG_EPOCH_LEN);
    j->log_len += 1 + c->id_len + SG_EPOCH_LEN +
                  put_update_fields(p + 1 + c->id_len + SG_EPOCH_LEN, u->seq, u->ts_ms, cat, cl, u->json, u->json_len);
    j->n_appends++;
    return 0;
}

static uint64_t sq_append(sg_store_conv *sc, sg_update *u, sg_store_done_fn done, void *arg)
{
    sq_conv *c = (sq_conv *)sc;
    sq_store *st = c->st;
    sq_job *j = cur_job(st);
    sq_waiter *w = j && done ? malloc(sizeof(*w)) : NULL;
    if (!j || (done && !w) || log_record(j, c, u) < 0) {
        free(w);
        if (done) done(arg, -1);
        return UINT64_MAX; /* never committed: the hub holds it back */
    }
    if (w) {
        *w = (sq_waiter){NULL, done, arg};
        *j->wtail = w;
        j->wtail = &w->next;
    }
    c->active_ms = u->ts_ms;
    if (!c->log_gen) { /* kept in memory until the log is applied */
        c->refs++;
        c->pnext = st->unapplied;
        st->unapplied = c;
    }
    c->log_gen = j->gen;
    /* the ring: what reads of recent history are answered from */
    int cap = st->history;
    if (c->count == cap) ring_pop(st, c);
    int at = c->head + c->count;
    c->ring[at < cap ? at : at - cap] = sg_update_ref(u);
    c->count++;
    st->cached += UPDATE_BYTES(u);
    lru_touch(st, c);
    cache_trim(st);
    c->last_seq = u->seq;
    if (!c->oldest) c->oldest = u->seq;
    if (u->seq >= (uint64_t)cap && c->oldest < u->seq - (uint64_t)cap + 1) c->oldest = u->seq - (uint64_t)cap + 1;
    uint64_t gen = j->gen;
    /* a big batch goes now if the writer is idle: it commits while the
     * loop reads on */
    if (j->n_appends % SQ_HAND_OVER == 0) hand_over(st, 0);
    return gen;
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

/* Bring c's row's activity up to when_ms (an apply brings it only to its
 * updates' time). */
static void touch_conv(sq_store *st, sq_conv *c, int64_t when_ms)
{
    sq_op *o = calloc(1, sizeof(*o));
    if (!o) return;
    o->kind = OP_TOUCH;
    memcpy(o->conv, c->id, c->id_len + 1);
    o->when_ms = when_ms;
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
    *w = (sq_waiter){NULL, done, arg};
    *j->wtail = w;
    j->wtail = &w->next;
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
        if (c->open) touch_conv(st, c, now_ms);
        else if (c->active_ms) touch_conv(st, c, c->active_ms);
    }
    sq_op *o = calloc(1, sizeof(*o));
    if (!o) return;
    o->kind = OP_SWEEP;
    o->when_ms = cutoff_ms;
    o->seq = (uint64_t)now_ms;
    if (add_op(st, o) < 0) free(o);
}

/* The outbox's writes go with the next batch, in order with the rest. */
static void sq_outbox_put(sg_store *s, const sg_outbox_msg *m)
{
    size_t ids = strlen(m->id) + 1, eps = strlen(m->endpoint) + 1;
    size_t hs = m->headers ? strlen(m->headers) + 1 : 0, es = m->last_error ? strlen(m->last_error) + 1 : 0;
    sq_op *o = calloc(1, sizeof(*o));
    char *p = o ? malloc(ids + eps + hs + es + m->len + 1) : NULL;
    if (!p) {
        free(o);
        sg_log(SG_LOG_ERROR, "outbox_write_failed", "webhook_id=%s reason=\"out of memory\"", m->id);
        return;
    }
    o->kind = OP_OUTBOX_PUT;
    o->key = p;
    o->ob = *m;
    o->ob.id = memcpy(p, m->id, ids);
    o->ob.endpoint = memcpy(p + ids, m->endpoint, eps);
    o->ob.headers = m->headers ? memcpy(p + ids + eps, m->headers, hs) : NULL;
    o->ob.last_error = m->last_error ? memcpy(p + ids + eps + hs, m->last_error, es) : NULL;
    o->ob.body = memcpy(p + ids + eps + hs + es, m->body, m->len);
    if (add_op((sq_store *)s, o) < 0) {
        free(p);
        free(o);
    }
}

static void sq_outbox_del(sg_store *s, const char *id)
{
    sq_op *o = calloc(1, sizeof(*o));
    if (!o || !(o->key = strdup(id))) {
        free(o);
        return; /* delivered again after a restart, with its webhook-id: receivers deduplicate */
    }
    o->kind = OP_OUTBOX_DEL;
    if (add_op((sq_store *)s, o) < 0) {
        free(o->key);
        free(o);
    }
}

static int sq_outbox_load(sg_store *s, sg_outbox_fn fn, void *arg)
{
    sq_store *st = (sq_store *)s;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->rdb, "SELECT id, endpoint, body, headers, updates, attempts, next_at_ms, dead, "
                                    "last_status, last_error, created_ms FROM outbox ORDER BY created_ms, id",
                           -1, &q, NULL) != SQLITE_OK)
        return -1;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        sg_outbox_msg m = {
            .id = (const char *)sqlite3_column_text(q, 0),
            .endpoint = (const char *)sqlite3_column_text(q, 1),
            .body = sqlite3_column_blob(q, 2),
            .len = (size_t)sqlite3_column_bytes(q, 2),
            .headers = (const char *)sqlite3_column_text(q, 3),
            .updates = sqlite3_column_int(q, 4),
            .attempts = sqlite3_column_int(q, 5),
            .next_at_ms = sqlite3_column_int64(q, 6),
            .dead = sqlite3_column_int(q, 7),
            .last_status = (long)sqlite3_column_int64(q, 8),
            .last_error = (const char *)sqlite3_column_text(q, 9),
            .created_ms = sqlite3_column_int64(q, 10),
        };
        if (m.id && m.endpoint && (m.body || !m.len)) fn(arg, &m);
    }
    sqlite3_finalize(q);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_healthy(sg_store *s)
{
    sq_store *st = (sq_store *)s;
    return !st->failing && !st->apply_failing;
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
        hand_over(st, 1);
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
    st->unapplied = NULL; /* applied at the stop, or replayed at the next start */
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
    sg_logfile_close(&st->logs[0]);
    sg_logfile_close(&st->logs[1]);
    groups_clear(&st->groups);
    free(st->rbuf);
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
    .outbox_put = sq_outbox_put, .outbox_del = sq_outbox_del, .outbox_load = sq_outbox_load,
};

/* ---- opening the database ---- */

/* Version 2: updates in chunks (one row per conversation per applied log,
 * its updates in the record format above), and the webhook outbox. */
static const char schema_v2_tables[] =
    "CREATE TABLE chunks (conv TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, "
    "  data BLOB NOT NULL, PRIMARY KEY (conv, first_seq)) WITHOUT ROWID;"
    "CREATE TABLE outbox (id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, body BLOB NOT NULL, headers TEXT, "
    "  updates INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at_ms INTEGER NOT NULL, "
    "  dead INTEGER NOT NULL DEFAULT 0, last_status INTEGER NOT NULL DEFAULT 0, last_error TEXT, "
    "  created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX outbox_endpoint ON outbox(endpoint, dead);";

static const char schema_v2[] =
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_seq INTEGER NOT NULL, "
    "  last_activity_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX conversations_activity ON conversations(last_activity_ms);"
    "CREATE TABLE idempotency (conv TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, "
    "  expires_ms INTEGER NOT NULL, PRIMARY KEY (conv, key)) WITHOUT ROWID;"
    "CREATE INDEX idempotency_expiry ON idempotency(expires_ms);";

/* Version 1 kept a row per update: each conversation's become one chunk. */
static int migrate_v1(sqlite3 *db, char *why, size_t whylen)
{
    sqlite3_stmt *q = NULL, *ins = NULL;
    char *buf = NULL, conv[SG_MAX_CONV_ID + 1] = "";
    size_t len = 0, cap = 0;
    uint64_t first = 0, last = 0;
    int rc = -1;
    if (exec(db, schema_v2_tables, why, whylen) < 0) return -1;
    if (sqlite3_prepare_v2(db, "SELECT conv, seq, category, ts_ms, json FROM updates ORDER BY conv, seq", -1, &q,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO chunks(conv, first_seq, last_seq, data) VALUES (?1, ?2, ?3, ?4)", -1,
                           &ins, NULL) != SQLITE_OK)
        goto out;
    for (int step;;) {
        step = sqlite3_step(q);
        if (step != SQLITE_ROW && step != SQLITE_DONE) goto out;
        const char *c = step == SQLITE_ROW ? (const char *)sqlite3_column_text(q, 0) : NULL;
        if (len && (!c || strcmp(c, conv) != 0)) { /* the previous conversation's chunk */
            sqlite3_reset(ins);
            sqlite3_bind_text(ins, 1, conv, -1, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 2, (sqlite3_int64)first);
            sqlite3_bind_int64(ins, 3, (sqlite3_int64)last);
            sqlite3_bind_blob(ins, 4, buf, (int)len, SQLITE_STATIC);
            if (sqlite3_step(ins) != SQLITE_DONE) goto out;
            len = 0;
        }
        if (!c) break;
        const char *cat = (const char *)sqlite3_column_text(q, 2);
        size_t cl = cat ? strlen(cat) : 0, jl = (size_t)sqlite3_column_bytes(q, 4);
        if (len + 21 + cl + jl > cap) {
            cap = (len + 21 + cl + jl) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) goto out;
            buf = nb;
        }
        if (!len) {
            snprintf(conv, sizeof(conv), "%s", c);
            first = (uint64_t)sqlite3_column_int64(q, 1);
        }
        last = (uint64_t)sqlite3_column_int64(q, 1);
        len += put_update_fields(buf + len, last, sqlite3_column_int64(q, 3), cat ? cat : "", cl,
                                 jl ? sqlite3_column_blob(q, 4) : "", jl);
    }
    rc = exec(db, "UPDATE conversations SET last_seq = max(last_seq, coalesce((SELECT max(last_seq) FROM chunks "
                  "WHERE conv = id), 0)); DROP TABLE updates",
              why, whylen);
out:
    if (rc < 0 && !why[0]) snprintf(why, whylen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(q);
    sqlite3_finalize(ins);
    free(buf);
    return rc;
}

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
    char why[256] = "";
    /* a new file: incremental vacuum must be chosen before the first table */
    if ((v == 0 && exec(db, "PRAGMA auto_vacuum = INCREMENTAL", why, sizeof(why)) < 0) ||
        exec(db, "BEGIN", why, sizeof(why)) < 0 ||
        (v == 0 ? exec(db, schema_v2, why, sizeof(why)) < 0 || exec(db, schema_v2_tables, why, sizeof(why)) < 0
                : migrate_v1(db, why, sizeof(why)) < 0) ||
        exec(db, "PRAGMA user_version = 2", why, sizeof(why)) < 0 || exec(db, "COMMIT", why, sizeof(why)) < 0) {
        if (!sqlite3_get_autocommit(db)) exec(db, "ROLLBACK", NULL, 0);
        snprintf(err, errlen, "store_path '%s': cannot %s the schema (%s)", path, v ? "migrate" : "create", why);
        return -1;
    }
    if (v) sg_log(SG_LOG_INFO, "store_migrated", "path=%s from=%d to=%d", sg_log_q(path), v, SQ_SCHEMA_VERSION);
    return 0;
}

/* The end of f's batches (each checked; the first that fails its
 * checksum, or is of another cycle, ends them) and their cycle; what
 * follows is cut off: 0, or -1 with err. */
static int scan_log(sg_logfile *f, char *err, size_t errlen)
{
    struct stat sb;
    if (fstat(f->fd, &sb) < 0) {
        snprintf(err, errlen, "store log '%s' cannot be read (%s)", f->path, strerror(errno));
        return -1;
    }
    size_t size = (size_t)sb.st_size, off = 0;
    char *data = NULL;
    while (off + SQ_LOG_HDR <= size) {
        char hdr[SQ_LOG_HDR];
        if (pread(f->fd, hdr, SQ_LOG_HDR, (off_t)off) != SQ_LOG_HDR) break;
        uint32_t magic = get_u32(hdr), n = get_u32(hdr + 4);
        if ((magic != SQ_LOG_MAGIC && magic != SQ_LOG_MAGIC_V1) || n > size - off - SQ_LOG_HDR ||
            (off && get_u32(hdr + 12) != f->cycle))
            break;
        char *nd = realloc(data, n ? n : 1);
        if (!nd) {
            free(data);
            snprintf(err, errlen, "store log '%s': out of memory", f->path);
            return -1;
        }
        data = nd;
        if (pread(f->fd, data, n, (off_t)(off + SQ_LOG_HDR)) != (ssize_t)n ||
            (magic == SQ_LOG_MAGIC ? log_sum : log_sum_v1)(data, n) != get_u32(hdr + 8))
            break;
        if (!off) f->cycle = get_u32(hdr + 12);
        off += SQ_LOG_HDR + n;
    }
    free(data);
    f->len = off;
    /* past the end: zeros (room made ahead), batches of an older cycle (the
     * file used before), or one of this cycle that failed its checksum: a
     * batch a crash tore */
    char hdr[SQ_LOG_HDR];
    uint32_t magic = 0;
    if (off + SQ_LOG_HDR <= size && pread(f->fd, hdr, SQ_LOG_HDR, (off_t)off) == SQ_LOG_HDR) magic = get_u32(hdr);
    if ((magic == SQ_LOG_MAGIC || magic == SQ_LOG_MAGIC_V1) && get_u32(hdr + 12) == f->cycle)
        sg_log(SG_LOG_WARN, "store_log_tail_dropped", "path=%s at=%zu reason=%s", sg_log_q(f->path), off,
               "a torn or damaged batch (never acknowledged)");
    if (off < size && sg_logfile_cut(f, off) < 0) {
        snprintf(err, errlen, "store log '%s' cannot be cut at its end (%s)", f->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Open the log's two files and apply what a crash left in them, the older
 * first; then make room in both for the loop's copies. */
static int recover_log(sq_store *st, char *err, size_t errlen)
{
    char path[4096];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s-log%s", st->path, i ? "2" : "");
        if (sg_logfile_open(&st->logs[i], path, err, errlen) < 0 || scan_log(&st->logs[i], err, errlen) < 0)
            return -1;
    }
    sg_logfile *l0 = &st->logs[0], *l1 = &st->logs[1];
    int older = l0->len && l1->len && (int32_t)(l1->cycle - l0->cycle) < 0;
    sg_logfile *order[2] = {older ? l1 : l0, older ? l0 : l1};
    st->cycle = (int32_t)(l1->cycle - l0->cycle) > 0 ? l1->cycle : l0->cycle;
    wstmts w;
    memset(&w, 0, sizeof(w));
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        size_t bytes = order[i]->len;
        if (!bytes) continue;
        char why[256] = "";
        rc = (!w.ins_chunk && prepare_all(st->wdb, &w) < 0) ? -1 : apply_file(st, &w, order[i], why, sizeof(why));
        if (rc < 0)
            snprintf(err, errlen, "store log '%s' cannot be applied (%s)", order[i]->path,
                     why[0] ? why : sqlite3_errmsg(st->wdb));
        else
            sg_log(SG_LOG_INFO, "store_log_replayed", "path=%s bytes=%zu", sg_log_q(order[i]->path), bytes);
    }
    finalize_all(&w);
    if (rc < 0) return -1;
    st->act = 0;
    st->sealed = -1;
    l0->cycle = ++st->cycle;
    st->mapped = strcmp(st->sync, "full") != 0 && l0->map && l1->map;
    for (int i = 0; i < 2 && st->mapped; i++) /* (without it, batches go to the writer) */
        if (sg_logfile_grow(&st->logs[i], 0, SQ_ROOM) == 0) st->logs[i].room = SQ_ROOM;
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
    st->pipe_r = st->pipe_w = st->logs[0].fd = st->logs[1].fd = -1;
    st->history = history_size;
    st->cache_budget = cache_bytes;
    st->log_hint = 4096;
    st->evb = base;
    st->path = strdup(path);
    snprintf(st->sync, sizeof(st->sync), "%s", sync);
    pthread_mutex_init(&st->mu, NULL);
    pthread_condattr_t ca; /* the writer's timed waits are on the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->cv, &ca);
    pthread_condattr_destroy(&ca);
    int fds[2];
    st->by_id = sg_dict_new();
    if (!st->path || !st->by_id || !(st->wdb = open_db(path, sync, err, errlen)) ||
        migrate(st->wdb, path, err, errlen) < 0 || recover_log(st, err, errlen) < 0 ||
        !(st->rdb = open_db(path, sync, err, errlen)) ||
        exec(st->rdb, "PRAGMA cache_size = -2048", err, errlen) < 0) { /* the loop's: point lookups */
        if (!err[0]) snprintf(err, errlen, "out of memory");
        sq_free(&st->base);
        return NULL;
    }
    if (sqlite3_prepare_v3(st->rdb, "SELECT epoch, last_seq FROM conversations WHERE id = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &st->q_conv, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(st->rdb, "SELECT min(first_seq), max(last_seq) FROM chunks WHERE conv = ?1", -1,
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
