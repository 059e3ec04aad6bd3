/* The Redis engine: several gateways as one (docs/cluster.md).
 *
 * It is the hub's store (store.h) and more: Redis sequences. A publish
 * is queued for the loop turn's batch; at the end of the turn each
 * shard (a Redis instance, chosen by a hash of the conversation id) gets
 * one EVALSHA of the publish script with the turn's publishes: per
 * update the next seq (HINCRBY), the epoch (made on the first), the
 * idempotency key, the append to the conversation's stream trimmed to
 * history_size, and a PUBLISH on the conversation's channel. The
 * producers are answered from the script's reply.
 *
 * Every gateway (the one that accepted the update too) hears the update
 * on the channel of each conversation it holds open (its subscribers',
 * or a history read's; status:* subscribes to the pattern) and queues it
 * in its hub (sg_hub_inject), which batches and fans out as for a local
 * publish. A seq that comes out of order (a subscription just made, a
 * reconnection) is read from the stream instead: the conversation
 * catches up from its last seq, so its subscribers get every seq once,
 * in order. History and resume read the streams (XRANGE).
 *
 * Connections per shard: one for commands (pipelined, asynchronous on
 * the loop, hiredis's libevent adapter), one for Pub/Sub, and a blocking
 * one for a conversation's first open (its epoch and last seq: the hub's
 * open is synchronous), bounded by connect_timeout_ms and never tried
 * while the shard is down. A shard that goes down refuses publishes (503
 * engine_unavailable), reconnects with backoff, then resubscribes and
 * catches every open conversation up from its stream. */
#include "store.h"

#include "clock.h"
#include "config.h"
#include "dict.h"
#include "hub.h"
#include "log.h"

#include <errno.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SHARDS 64
#define BATCH_MAX 512     /* publishes in one EVALSHA */
#define PUB_ARGS 8        /* script arguments per publish */

/* One batch of publishes. A conversation's epoch is read once per batch
 * and its keys' expiry pushed back once, after its last update. */
static const char publish_script[] =
    "local p, hist, ttl, win = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local out, epochs, touched = {}, {}, {}\n"
    "for i = 5, #ARGV, 8 do\n"
    "  local conv, cand, key, cat, ts, by, pre, suf = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7]\n"
    "  local m = p .. 'm:' .. conv\n"
    "  local e = epochs[conv]\n"
    "  if e == nil then e = redis.call('HGET', m, 'e'); epochs[conv] = e end\n"
    "  local seen = false\n"
    "  if key ~= '' and e then seen = redis.call('GET', p .. 'i:' .. conv .. ':' .. key) end\n"
    "  if seen then\n"
    "    out[#out + 1] = {tonumber(seen), e, 1}\n"
    "  else\n"
    "    if not e then e = cand; redis.call('HSET', m, 'e', e); epochs[conv] = e end\n"
    "    local seq = redis.call('HINCRBY', m, 's', 1)\n"
    "    local json = pre .. seq .. suf\n"
    "    redis.call('XADD', p .. 'h:' .. conv, 'MAXLEN', hist, '0-' .. seq, 'k', cat, 't', ts, 'u', json)\n"
    "    redis.call('PUBLISH', p .. 'c:' .. conv, seq .. ' ' .. ts .. ' ' .. cat .. ' ' .. e .. ' ' .. by .. ' ' .. json)\n"
    "    if key ~= '' then redis.call('SET', p .. 'i:' .. conv .. ':' .. key, seq, 'PX', win) end\n"
    "    touched[conv] = true\n"
    "    out[#out + 1] = {seq, e, 0}\n"
    "  end\n"
    "end\n"
    "for conv in pairs(touched) do\n"
    "  redis.call('PEXPIRE', p .. 'm:' .. conv, ttl)\n"
    "  redis.call('PEXPIRE', p .. 'h:' .. conv, ttl)\n"
    "end\n"
    "return out\n";

/* A conversation's epoch and last seq; with create, made when missing. */
static const char open_script[] =
    "local e = redis.call('HGET', KEYS[1], 'e')\n"
    "if not e then\n"
    "  if ARGV[2] == '0' then return false end\n"
    "  e = ARGV[1]\n"
    "  redis.call('HSET', KEYS[1], 'e', e, 's', 0)\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "end\n"
    "return {e, redis.call('HGET', KEYS[1], 's') or '0'}\n";

/* Every second on the first shard: this gateway's entry in the node
 * list (a "<seen ms> <json>" value), the entries silent for 5 s dropped,
 * and, for a gateway with aggregators, the aggregator lease taken or
 * renewed. Returns {the lease holder or false, the list}. */
static const char heartbeat_script[] =
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[2])\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local live = {}\n"
    "for i = 1, #all, 2 do\n"
    "  local seen = tonumber(string.match(all[i + 1], '^%d+'))\n"
    "  if seen and seen + 5000 >= tonumber(ARGV[3]) then live[#live + 1] = all[i + 1]\n"
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "end\n"
    "local l = redis.call('GET', KEYS[2])\n"
    "if ARGV[4] == '1' then\n"
    "  if not l then redis.call('SET', KEYS[2], ARGV[1], 'PX', 3000); l = ARGV[1]\n"
    "  elseif l == ARGV[1] then redis.call('PEXPIRE', KEYS[2], 3000) end\n"
    "elseif l == ARGV[1] then redis.call('DEL', KEYS[2]); l = false end\n"
    "return {l, live}\n";

typedef struct sg_redis sg_redis;

typedef struct shard {
    sg_redis *r;
    int idx;
    char host[256];
    int port;
    redisAsyncContext *cmd, *sub;
    int cmd_up, sub_up;
    int psub_pending;         /* PSUBSCRIBEs sent and not yet answered */
    redisContext *sync;       /* blocking: first opens */
    struct event *retry_ev;   /* reconnection, with backoff */
    struct event *timeout_ev; /* a connection attempt that hangs */
    int backoff_ms;
    int down_logged;
    sg_pub **batch;           /* this turn's publishes */
    size_t nb, cap;
    uint64_t round_trips, replies, errors, reconnects, messages;
    uint64_t in_flight, max_in_flight;
} shard;

/* A conversation this gateway holds open (the hub's c->hist). */
struct sg_store_conv {
    sg_redis *r;
    shard *sh;
    uint64_t want;  /* the newest seq known to exist */
    uint64_t asked; /* want when the catch-up read went out */
    int fetching;   /* a catch-up read is out */
    int loading;    /* its epoch and last seq are asked for (open) */
    int create;     /* and made when missing */
    int refs;       /* the hub's handle, and each command out that names it */
    int closed;     /* the hub let go of it */
    sg_store_conv *prev, *next;
    size_t id_len;
    char id[];
};

struct sg_redis {
    sg_store base;
    struct event_base *ev;
    const sg_config *cfg;
    sg_hub *hub;
    shard shards[MAX_SHARDS];
    int n;
    char prefix[128];
    char *password;
    int db;
    int timeout_ms;
    char sha[41];
    sg_dict *convs;          /* id -> sg_store_conv */
    sg_store_conv *open_head; /* the same, as a list */
    int wildcard;            /* status:* has subscribers here */
    struct event *turn_ev;   /* sends the turn's batches */
    int closing;
    int pubs_out; /* publishes queued or waiting for Redis (max_pending_updates bounds them) */
    /* a conversation status:* heard of before this gateway held it open:
     * its open takes epoch and seq from the message, not from Redis */
    const char *hint_id;
    const char *hint_epoch;
    uint64_t hint_seq;
    /* the cluster: this gateway's id, the node list, the aggregator lease */
    char node_id[SG_EPOCH_LEN + 1];
    char node_name[128];       /* stable across restarts: the outbox's */
    int64_t started_ms;
    uint64_t accepted;         /* publishes this gateway sequenced */
    struct event *beat_ev;
    json_t *nodes;             /* the last list read */
    int leading;               /* holds the aggregator lease */
    int pattern;               /* the pattern is subscribed (status:* or leading) */
    int pattern_told;          /* the hub waits to hear the pattern is subscribed (watch_all) */
    sg_redis_observer observe; /* aggregators, fed by the lease holder */
    int (*wants)(void *arg);
    void *observe_arg;
};

static sg_redis *of(sg_store *s)
{
    return (sg_redis *)s;
}

/* FNV-1a: the shard of a conversation, the same on every gateway. */
static shard *shard_of(sg_redis *r, const char *id, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)id[i]) * 16777619u;
    return &r->shards[h % (uint32_t)r->n];
}

static int shard_up(const shard *sh)
{
    return sh->cmd_up && sh->sub_up;
}

static void sent(shard *sh)
{
    sh->round_trips++;
    if (++sh->in_flight > sh->max_in_flight) sh->max_in_flight = sh->in_flight;
}

static void answered(shard *sh)
{
    sh->replies++;
    if (sh->in_flight) sh->in_flight--;
}

/* ---- connections ---- */

static void shard_connect(shard *sh);

static void schedule_retry(shard *sh)
{
    if (sh->r->closing || evtimer_pending(sh->retry_ev, NULL)) return;
    struct timeval tv = {sh->backoff_ms / 1000, (sh->backoff_ms % 1000) * 1000};
    evtimer_add(sh->retry_ev, &tv);
    sh->backoff_ms = sh->backoff_ms * 2 > 5000 ? 5000 : sh->backoff_ms * 2;
}

/* PSUBSCRIBEs sent and not yet answered, over the shards. */
static int psub_out(const sg_redis *r)
{
    int n = 0;
    for (int i = 0; i < r->n; i++)
        n += r->shards[i].psub_pending;
    return n;
}

/* A PSUBSCRIBE of sh was answered (answered 1), or will not be (its
 * connection is gone): once none is out, the hub waiting for the pattern
 * hears it is subscribed. */
static void pattern_answered(shard *sh, int answered)
{
    sg_redis *r = sh->r;
    if (answered && sh->psub_pending) sh->psub_pending--;
    if (!answered) sh->psub_pending = 0;
    if (psub_out(r) || !r->pattern_told) return;
    r->pattern_told = 0;
    r->base.on_open(r->base.on_commit_arg, NULL, "*", 0, NULL, 0);
}

/* One of the shard's connections is gone: the other goes too, so that
 * they come back together and the conversations catch up once. */
static void shard_lost(shard *sh, const char *why)
{
    if (sh->r->closing) return;
    int was_up = shard_up(sh);
    sh->cmd_up = sh->sub_up = 0;
    pattern_answered(sh, 0);
    if (!sh->down_logged) {
        sg_log(SG_LOG_ERROR, "redis_down", "shard=%d addr=%s:%d reason=%s was_up=%d", sh->idx, sh->host,
               sh->port, sg_log_q(why), was_up);
        sh->down_logged = 1;
    }
    sh->errors++;
    redisAsyncContext *a = sh->cmd, *b = sh->sub;
    sh->cmd = sh->sub = NULL;
    if (a) redisAsyncDisconnect(a);
    if (b) redisAsyncDisconnect(b);
    if (sh->sync) {
        redisFree(sh->sync);
        sh->sync = NULL;
    }
    evtimer_del(sh->timeout_ev);
    schedule_retry(sh);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    shard *sh = ac->data;
    if (sh->cmd != ac && sh->sub != ac) return; /* one shard_lost let go of */
    if (sh->cmd == ac) sh->cmd = NULL;
    if (sh->sub == ac) sh->sub = NULL;
    if (!sh->r->closing) shard_lost(sh, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void catch_up(sg_store_conv *rc);
static void ask_open(sg_store_conv *rc);
static void on_beat_timer(evutil_socket_t fd, short what, void *arg);
static void pattern_update(sg_redis *r);
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv);

static void subscribe_conv(shard *sh, const char *id, size_t len)
{
    if (!sh->sub_up) return;
    sg_redis *r = sh->r;
    if (redisAsyncCommand(sh->sub, on_sub_reply, sh, "SUBSCRIBE %sc:%b", r->prefix, id, len) == REDIS_OK)
        sent(sh);
}

/* The first answer on a new connection: 1 when ac is still the shard's
 * (mine) and it answered well; else the shard is lost. */
static int came_up(shard *sh, redisAsyncContext *ac, redisAsyncContext *mine, redisReply *rp, const char *what)
{
    answered(sh);
    if (mine != ac) return 0;
    if (!rp || rp->type == REDIS_REPLY_ERROR) {
        shard_lost(sh, rp ? rp->str : what);
        return 0;
    }
    return 1;
}

static void on_cmd_ready(redisAsyncContext *ac, void *reply, void *priv)
{
    shard *sh = priv;
    if (!came_up(sh, ac, sh->cmd, reply, "no answer to SCRIPT LOAD")) return;
    sh->cmd_up = 1;
    for (sg_store_conv *rc = sh->r->open_head; rc; rc = rc->next) /* opens the connection lost */
        if (rc->sh == sh && rc->loading) ask_open(rc);
    if (sh->idx == 0) on_beat_timer(-1, 0, sh->r); /* in the node list at once, not a second later */
}

/* Both connections are up: subscribe to every conversation held open
 * here (and the pattern), each catching up once subscribed. */
static void on_sub_ready(redisAsyncContext *ac, void *reply, void *priv)
{
    shard *sh = priv;
    if (!came_up(sh, ac, sh->sub, reply, "no answer to PING")) return;
    sh->sub_up = 1;
    sg_redis *r = sh->r;
    for (sg_store_conv *rc = r->open_head; rc; rc = rc->next)
        if (rc->sh == sh) subscribe_conv(sh, rc->id, rc->id_len);
    if (r->pattern && redisAsyncCommand(sh->sub, on_sub_reply, sh, "PSUBSCRIBE %sc:*", r->prefix) == REDIS_OK) {
        sent(sh);
        sh->psub_pending++;
    }
    if (sh->down_logged)
        sg_log(SG_LOG_INFO, "redis_up", "shard=%d addr=%s:%d", sh->idx, sh->host, sh->port);
    sh->down_logged = 0;
    sh->backoff_ms = 100;
    evtimer_del(sh->timeout_ev);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    shard *sh = ac->data;
    if (status == REDIS_OK) return;
    /* hiredis frees the context after this */
    if (sh->cmd == ac) sh->cmd = NULL;
    if (sh->sub == ac) sh->sub = NULL;
    shard_lost(sh, ac->errstr);
}

/* AUTH and SELECT, queued first on a new connection. */
static void prelude(shard *sh, redisAsyncContext *ac, const char *role)
{
    sg_redis *r = sh->r;
    if (r->password && redisAsyncCommand(ac, NULL, NULL, "AUTH %s", r->password) == REDIS_OK) sent(sh), answered(sh);
    if (r->db && redisAsyncCommand(ac, NULL, NULL, "SELECT %d", r->db) == REDIS_OK) sent(sh), answered(sh);
    /* named, so that an operator (and the specs) can tell the connections apart */
    if (redisAsyncCommand(ac, NULL, NULL, "CLIENT SETNAME statusgw:%s:%s", r->node_name, role) == REDIS_OK)
        sent(sh), answered(sh);
}

static redisAsyncContext *open_async(shard *sh, const char *role)
{
    redisAsyncContext *ac = redisAsyncConnect(sh->host, sh->port);
    if (!ac) return NULL;
    if (ac->err) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = sh;
    redisLibeventAttach(ac, sh->r->ev);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    prelude(sh, ac, role);
    return ac;
}

static void shard_connect(shard *sh)
{
    sg_redis *r = sh->r;
    sh->cmd = open_async(sh, "cmd");
    sh->sub = sh->cmd ? open_async(sh, "sub") : NULL;
    if (!sh->cmd || !sh->sub) {
        shard_lost(sh, "cannot make a connection");
        return;
    }
    sh->reconnects++;
    /* answered in order after the prelude: then the connection is usable */
    if (redisAsyncCommand(sh->cmd, on_cmd_ready, sh, "SCRIPT LOAD %s", publish_script) == REDIS_OK) sent(sh);
    if (redisAsyncCommand(sh->sub, on_sub_ready, sh, "PING") == REDIS_OK) sent(sh);
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    evtimer_add(sh->timeout_ev, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    shard_connect(arg);
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    shard *sh = arg;
    if (!shard_up(sh)) shard_lost(sh, "connect timed out (connect_timeout_ms)");
}

/* The blocking connection of first opens: made when needed, never while
 * the shard is down. NULL when it cannot be had. */
static redisContext *sync_ctx(shard *sh, char *err, size_t errlen)
{
    if (sh->sync) return sh->sync;
    sg_redis *r = sh->r;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(sh->host, sh->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "cannot connect to redis at %s:%d: %s", sh->host, sh->port,
                 c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    const char *fail = NULL;
    redisReply *rp = NULL;
    if (r->password && (!(rp = redisCommand(c, "AUTH %s", r->password)) || rp->type == REDIS_REPLY_ERROR))
        fail = rp ? rp->str : c->errstr;
    if (!fail && rp) freeReplyObject(rp), rp = NULL;
    if (!fail && r->db && (!(rp = redisCommand(c, "SELECT %d", r->db)) || rp->type == REDIS_REPLY_ERROR))
        fail = rp ? rp->str : c->errstr;
    if (fail) {
        snprintf(err, errlen, "redis at %s:%d: %s", sh->host, sh->port, fail);
        if (rp) freeReplyObject(rp);
        redisFree(c);
        return NULL;
    }
    if (rp) freeReplyObject(rp);
    return sh->sync = c;
}

/* ---- publishing ---- */

/* Where the seq of an update encoded with seq 0 is: after
 * {"conversation_id":"<id>","seq": (sg_update_new). */
static size_t seq_at(const char *conv_id)
{
    return sizeof("{\"conversation_id\":\"") - 1 + strlen(conv_id) + sizeof("\",\"seq\":") - 1;
}

static void pub_finish(sg_redis *r, sg_pub *p)
{
    r->pubs_out--;
    if (p->status == 0 && !p->duplicate && p->on_accept && !r->closing) p->on_accept(p->accept_arg, p);
    if (p->then) p->then(p->then_arg, p);
    sg_update_unref(p->update);
    free(p);
}

static void pub_fail(sg_redis *r, sg_pub *p, const char *why)
{
    p->status = -1;
    sg_error_set(&p->err, 503, "engine_unavailable", NULL,
                 "the update could not be sequenced in Redis (%.80s); retry (with the same "
                 "idempotency_key, to be safe)", why);
    p->err.retry_after = 1;
    sg_update_unref(p->update);
    p->update = NULL;
    pub_finish(r, p);
}

typedef struct sent_batch {
    shard *sh;
    size_t n;
    sg_pub *pubs[];
} sent_batch;

/* The script's answer: {seq, epoch, duplicate} per publish, in order. */
static void on_published(redisAsyncContext *ac, void *reply, void *priv)
{
    sent_batch *b = priv;
    sg_redis *r = b->sh->r;
    redisReply *rp = reply;
    answered(b->sh);
    int ok = rp && rp->type == REDIS_REPLY_ARRAY && rp->elements == b->n;
    if (!ok) b->sh->errors++;
    if (rp && rp->type == REDIS_REPLY_ERROR)
        sg_log(SG_LOG_ERROR, "redis_error", "shard=%d op=publish reason=%s", b->sh->idx, sg_log_q(rp->str));
    for (size_t i = 0; i < b->n; i++) {
        sg_pub *p = b->pubs[i];
        redisReply *e = ok ? rp->element[i] : NULL;
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements != 3 ||
            e->element[1]->type != REDIS_REPLY_STRING || e->element[1]->len != SG_EPOCH_LEN) {
            pub_fail(r, p, rp && rp->type == REDIS_REPLY_ERROR ? rp->str : "no answer");
            continue;
        }
        p->seq = (uint64_t)e->element[0]->integer;
        memcpy(p->epoch, e->element[1]->str, SG_EPOCH_LEN + 1);
        p->duplicate = e->element[2]->integer == 1;
        if (!p->duplicate) r->accepted++;
        sg_update *u = p->update; /* encoded with seq 0: the one delivered has its seq */
        p->update = NULL;
        if (!p->duplicate) {
            char seq[24];
            int sl = snprintf(seq, sizeof(seq), "%llu", (unsigned long long)p->seq);
            size_t at = seq_at(p->conv_id);
            char *json = malloc(u->json_len + (size_t)sl);
            if (json) {
                memcpy(json, u->json, at);
                memcpy(json + at, seq, (size_t)sl);
                memcpy(json + at + sl, u->json + at + 1, u->json_len - at - 1);
                p->update = sg_update_stored(u->category, p->seq, u->ts_ms, json, u->json_len + (size_t)sl - 1);
                if (p->update) p->update->recv_ns = u->recv_ns;
            }
            free(json);
        }
        sg_update_unref(u);
        pub_finish(r, p);
    }
    free(b);
}

static void send_batch(sg_redis *r, shard *sh, sg_pub **pubs, size_t n)
{
    size_t argc = 7 + n * PUB_ARGS;
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *lens = malloc(argc * sizeof(*lens));
    char *nums = malloc(n * 48 + 96);
    sent_batch *b = malloc(sizeof(*b) + n * sizeof(sg_pub *));
    if (!argv || !lens || !nums || !b || !sh->cmd_up) {
        for (size_t i = 0; i < n; i++)
            pub_fail(r, pubs[i], !sh->cmd_up ? "redis is unreachable" : "out of memory");
        free(b);
        goto out;
    }
    char *np = nums;
    size_t a = 0;
#define ARG(s, l) (argv[a] = (s), lens[a++] = (l))
#define NUM(fmt, v) (ARG(np, (size_t)sprintf(np, fmt, v)), np += lens[a - 1] + 1)
    ARG("EVALSHA", 7);
    ARG(r->sha, 40);
    ARG("0", 1);
    ARG(r->prefix, strlen(r->prefix));
    NUM("%d", r->cfg->history_size);
    NUM("%lld", (long long)r->cfg->conversation_ttl_s * 1000);
    NUM("%lld", (long long)r->cfg->idempotency_window_s * 1000);
    for (size_t i = 0; i < n; i++) {
        sg_pub *p = pubs[i];
        sg_update *u = p->update;
        size_t cl = strlen(p->conv_id), at = seq_at(p->conv_id);
        const char *cat = sg_category_name(u->category);
        ARG(p->conv_id, cl);
        ARG(p->epoch, SG_EPOCH_LEN); /* a fresh one, taken if the conversation has none */
        ARG(p->idem_key, strlen(p->idem_key));
        ARG(cat, strlen(cat));
        NUM("%lld", (long long)u->ts_ms);
        ARG(p->emitted_by[0] ? p->emitted_by : "-", p->emitted_by[0] ? strlen(p->emitted_by) : 1);
        ARG(u->json, at);
        ARG(u->json + at + 1, u->json_len - at - 1);
        b->pubs[i] = p;
    }
#undef NUM
#undef ARG
    b->sh = sh;
    b->n = n;
    if (redisAsyncCommandArgv(sh->cmd, on_published, b, (int)a, argv, lens) != REDIS_OK) {
        for (size_t i = 0; i < n; i++)
            pub_fail(r, pubs[i], "redis is unreachable");
        free(b);
    } else {
        sent(sh);
    }
out:
    free(argv);
    free(lens);
    free(nums);
}

static void on_turn(evutil_socket_t fd, short what, void *arg)
{
    sg_redis *r = arg;
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        size_t off = 0;
        while (off < sh->nb) {
            size_t k = sh->nb - off < BATCH_MAX ? sh->nb - off : BATCH_MAX;
            send_batch(r, sh, sh->batch + off, k);
            off += k;
        }
        sh->nb = 0;
    }
}

static sg_pub *redis_publish(sg_store *s, const sg_draft *d, sg_error *err)
{
    sg_redis *r = of(s);
    shard *sh = shard_of(r, d->conv_id, d->conv_len);
    if (!sh->cmd_up) {
        sg_error_set(err, 503, "engine_unavailable", NULL,
                     "Redis (%s:%d) is unreachable; retry shortly", sh->host, sh->port);
        err->retry_after = 1;
        return NULL;
    }
    if (r->pubs_out >= r->cfg->max_pending) {
        sg_error_set(err, 429, "queue_full", NULL, "%d updates are waiting for Redis; retry shortly", r->pubs_out);
        err->retry_after = 1;
        return NULL;
    }
    size_t kl = d->idempotency_key ? strlen(d->idempotency_key) : 0;
    if (sh->nb == sh->cap) {
        size_t cap = sh->cap ? sh->cap * 2 : 64;
        sg_pub **nb = realloc(sh->batch, cap * sizeof(*nb));
        if (nb) sh->batch = nb, sh->cap = cap;
    }
    sg_pub *p = sh->nb < sh->cap ? calloc(1, sizeof(*p) + kl + 1) : NULL;
    if (!p || !(p->update = sg_update_new(d, 0, sg_now_ms()))) {
        free(p);
        sg_error_set(err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        return NULL;
    }
    p->idem_key = (char *)(p + 1);
    if (kl) memcpy(p->idem_key, d->idempotency_key, kl + 1);
    memcpy(p->conv_id, d->conv_id, d->conv_len);
    p->conv_id[d->conv_len] = 0;
    sg_store_new_epoch(p->epoch);
    sh->batch[sh->nb++] = p;
    r->pubs_out++;
    event_active(r->turn_ev, EV_TIMEOUT, 0);
    return p;
}

/* ---- hearing updates ---- */

/* One stream entry or channel message as an update: its fields k (the
 * category), t (receive time) and u (the delivered JSON). */
static sg_update *entry_update(uint64_t seq, const char *cat, size_t catlen, const char *ts, const char *json,
                               size_t len)
{
    int ci = sg_category_index(cat, catlen);
    if (ci < 0) ci = 0; /* a category this gateway's config lacks: delivered all the same */
    return sg_update_stored(ci, seq, strtoll(ts, NULL, 10), json, len);
}

/* A command that named rc is answered; the last reference frees it. 1
 * when rc is still the hub's. */
static int rc_unref(sg_store_conv *rc)
{
    if (--rc->refs == 0) {
        free(rc);
        return 0;
    }
    return !rc->closed;
}

static void on_fetched(redisAsyncContext *ac, void *reply, void *priv)
{
    sg_store_conv *rc = priv;
    redisReply *rp = reply;
    sg_redis *r = rc->r;
    answered(rc->sh);
    rc->fetching = 0;
    if (!rc_unref(rc)) return;
    sg_conv *c = r->hub ? sg_hub_held(r->hub, rc->id, rc->id_len) : NULL;
    if (!c || !rp || rp->type != REDIS_REPLY_ARRAY) return; /* the reconnection catches up */
    for (size_t i = 0; i < rp->elements; i++) {
        redisReply *e = rp->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->elements != 6) continue;
        const char *id = e->element[0]->str, *dash = strchr(id, '-');
        uint64_t seq = dash ? strtoull(dash + 1, NULL, 10) : 0;
        redisReply **f = e->element[1]->element; /* k, cat, t, ts, u, json */
        if (seq <= c->last_seq) continue;
        if (seq > c->last_seq + 1) { /* trimmed before it was read: its subscribers resume, and learn of it */
            sg_hub_cut(r->hub, c, "history_trimmed");
            c->last_seq = c->flushed_seq = seq - 1;
        }
        sg_update *u = entry_update(seq, f[1]->str, f[1]->len, f[3]->str, f[5]->str, f[5]->len);
        if (u) sg_hub_inject(r->hub, c, c->epoch, u);
    }
    if (rc->want > c->last_seq) {
        if (rc->want > rc->asked) {
            catch_up(rc); /* heard of more while the read was out */
        } else { /* asked for it and the stream has it no more (expired) */
            sg_hub_cut(r->hub, c, "history_trimmed");
            c->last_seq = c->flushed_seq = rc->want;
        }
    }
}

/* Read what the stream holds past the conversation's last seq. */
static void catch_up(sg_store_conv *rc)
{
    sg_redis *r = rc->r;
    shard *sh = rc->sh;
    sg_conv *c = r->hub ? sg_hub_held(r->hub, rc->id, rc->id_len) : NULL;
    if (!c || c->hist != rc || rc->loading || rc->fetching || !sh->cmd_up) return;
    if (redisAsyncCommand(sh->cmd, on_fetched, rc, "XRANGE %sh:%b 0-%llu +", r->prefix, rc->id, rc->id_len,
                          (unsigned long long)c->last_seq + 1) == REDIS_OK) {
        rc->fetching = 1;
        rc->refs++;
        rc->asked = rc->want;
        sent(sh);
    }
}

int sg_redis_parse_message(const char *msg, size_t len, sg_redis_msg *m)
{
    const char *f[5], *p = msg, *end = msg + len;
    size_t fl[5];
    for (int i = 0; i < 5; i++) {
        const char *sp = p < end ? memchr(p, ' ', (size_t)(end - p)) : NULL;
        if (!sp || sp == p) return -1;
        f[i] = p;
        fl[i] = (size_t)(sp - p);
        p = sp + 1;
    }
    if (fl[0] > 20 || fl[1] >= sizeof(m->ts) || fl[3] != SG_EPOCH_LEN || fl[4] >= sizeof(m->by)) return -1;
    char seq[21];
    memcpy(seq, f[0], fl[0]);
    seq[fl[0]] = 0;
    char *e;
    m->seq = strtoull(seq, &e, 10);
    if (*e || m->seq == 0) return -1;
    memcpy(m->ts, f[1], fl[1]);
    m->ts[fl[1]] = 0;
    memcpy(m->epoch, f[3], SG_EPOCH_LEN);
    m->epoch[SG_EPOCH_LEN] = 0;
    int producer = fl[4] == 1 && f[4][0] == '-';
    memcpy(m->by, f[4], producer ? 0 : fl[4]);
    m->by[producer ? 0 : fl[4]] = 0;
    m->cat = f[2];
    m->cat_len = fl[2];
    m->json = p;
    m->json_len = (size_t)(end - p);
    return 0;
}

/* An update heard on a channel (pattern 0) or on the pattern (status:*,
 * the aggregators' lease), where every update comes once. */
static void heard(sg_redis *r, const char *chan, size_t chlen, const char *msg, size_t len, int pattern)
{
    size_t pl = strlen(r->prefix) + 2;
    sg_redis_msg m;
    if (chlen <= pl || chlen - pl > SG_MAX_CONV_ID || sg_redis_parse_message(msg, len, &m) < 0) return;
    const char *id = chan + pl;
    size_t idlen = chlen - pl;
    char cid[SG_MAX_CONV_ID + 1];
    memcpy(cid, id, idlen);
    cid[idlen] = 0;
    uint64_t seq = m.seq;
    if (pattern && r->leading && r->observe && r->wants(r->observe_arg)) {
        sg_update *u = entry_update(seq, m.cat, m.cat_len, m.ts, m.json, m.json_len);
        if (u) r->observe(r->observe_arg, cid, u, m.by[0] ? m.by : NULL);
        sg_update_unref(u);
    }
    sg_store_conv *rc = sg_dict_get(r->convs, id, idlen);
    sg_conv *c = rc ? sg_hub_held(r->hub, id, idlen) : NULL;
    if (!c && !rc && pattern && r->wildcard) { /* status:* hears of it first: open it from the message */
        r->hint_id = cid;
        r->hint_epoch = m.epoch;
        r->hint_seq = seq - 1;
        sg_error err;
        c = sg_hub_conv(r->hub, id, idlen, SG_CONV_WATCH, &err);
        r->hint_id = NULL;
        rc = c ? c->hist : NULL;
    }
    if (!c || !rc) return;
    if (rc->loading) { /* what it holds is not known yet: read after */
        if (seq > rc->want) rc->want = seq;
        return;
    }
    if (strcmp(m.epoch, c->epoch) != 0) { /* begun again (Redis lost it): from its first seq */
        sg_hub_cut(r->hub, c, "epoch_changed");
        memcpy(c->epoch, m.epoch, sizeof(m.epoch));
        c->last_seq = c->flushed_seq = 0;
    }
    if (seq <= c->last_seq) return; /* heard twice (channel and pattern), or read already */
    if (seq > rc->want) rc->want = seq;
    if (seq == c->last_seq + 1 && !rc->fetching) {
        sg_update *u = entry_update(seq, m.cat, m.cat_len, m.ts, m.json, m.json_len);
        if (u) sg_hub_inject(r->hub, c, m.epoch, u);
        return;
    }
    catch_up(rc); /* some seq went by unheard */
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    shard *sh = priv;
    sg_redis *r = sh->r;
    redisReply *rp = reply;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 3 || !r->hub) return;
    redisReply **e = rp->element;
    const char *kind = e[0]->str;
    if (strcmp(kind, "message") == 0 && rp->elements == 3) {
        sh->messages++;
        heard(r, e[1]->str, e[1]->len, e[2]->str, e[2]->len, 0);
    } else if (strcmp(kind, "pmessage") == 0 && rp->elements == 4) {
        sh->messages++;
        heard(r, e[2]->str, e[2]->len, e[3]->str, e[3]->len, 1);
    } else if (strcmp(kind, "subscribe") == 0) {
        answered(sh);
        /* what was published before the subscription took: from the stream */
        size_t pl = strlen(r->prefix) + 2;
        sg_store_conv *rc = e[1]->len > pl ? sg_dict_get(r->convs, e[1]->str + pl, e[1]->len - pl) : NULL;
        if (rc) catch_up(rc);
    } else if (strcmp(kind, "psubscribe") == 0) {
        answered(sh);
        pattern_answered(sh, 1);
    } else if (strcmp(kind, "unsubscribe") == 0 || strcmp(kind, "punsubscribe") == 0) {
        answered(sh);
    }
}

/* ---- the store seam ---- */

static void on_opened(redisAsyncContext *ac, void *reply, void *priv);

/* Ask for rc's epoch and last seq (made when missing with create). */
static void ask_open(sg_store_conv *rc)
{
    sg_redis *r = rc->r;
    shard *sh = rc->sh;
    char cand[SG_EPOCH_LEN + 1];
    sg_store_new_epoch(cand);
    if (redisAsyncCommand(sh->cmd, on_opened, rc, "EVAL %s 1 %sm:%s %s %d %lld", open_script, r->prefix, rc->id, cand,
                          rc->create, (long long)r->cfg->conversation_ttl_s * 1000) == REDIS_OK) {
        rc->refs++;
        sent(sh);
    }
}

static void on_opened(redisAsyncContext *ac, void *reply, void *priv)
{
    sg_store_conv *rc = priv;
    sg_redis *r = rc->r;
    redisReply *rp = reply;
    answered(rc->sh);
    if (!rc_unref(rc) || !r->hub) return;
    if (!rp || rp->type == REDIS_REPLY_ERROR) { /* asked again once the shard is back (on_cmd_ready) */
        rc->sh->errors++;
        return;
    }
    int ok = rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 && rp->element[0]->type == REDIS_REPLY_STRING &&
             rp->element[0]->len == SG_EPOCH_LEN;
    rc->loading = 0;
    if (!ok) {
        r->base.on_open(r->base.on_commit_arg, rc, rc->id, ENOENT, NULL, 0); /* may close rc */
        return;
    }
    rc->refs++; /* on_open may let go of it */
    r->base.on_open(r->base.on_commit_arg, rc, rc->id, 0, rp->element[0]->str,
                    strtoull(rp->element[1]->str, NULL, 10));
    if (rc_unref(rc)) catch_up(rc); /* what came while it loaded */
}

/* A conversation's first open here: its epoch and last seq come on a
 * later turn (on_open), unless status:* heard of it (the hint). */
static sg_store_conv *redis_open(sg_store *s, const char *conv_id, int create, char *epoch, uint64_t *last_seq)
{
    sg_redis *r = of(s);
    size_t len = strlen(conv_id);
    shard *sh = shard_of(r, conv_id, len);
    int hinted = r->hint_id && strcmp(r->hint_id, conv_id) == 0;
    if (!hinted && !sh->cmd_up) {
        errno = EIO;
        return NULL;
    }
    sg_store_conv *rc = calloc(1, sizeof(*rc) + len + 1);
    if (!rc || sg_dict_set(r->convs, conv_id, len, rc) < 0) {
        free(rc);
        errno = ENOMEM;
        return NULL;
    }
    rc->r = r;
    rc->sh = sh;
    rc->id_len = len;
    rc->refs = 1;
    rc->create = create != 0;
    memcpy(rc->id, conv_id, len + 1);
    if (hinted) {
        memcpy(epoch, r->hint_epoch, SG_EPOCH_LEN + 1);
        *last_seq = r->hint_seq;
    } else {
        epoch[0] = 0;
        *last_seq = 0;
        rc->loading = 1;
        ask_open(rc);
    }
    rc->next = r->open_head;
    if (r->open_head) r->open_head->prev = rc;
    r->open_head = rc;
    subscribe_conv(sh, rc->id, len);
    return rc;
}

/* Redis keeps the history, the cluster's: nothing to append here */
static uint64_t redis_append(sg_store_conv *c, sg_update *u, sg_store_done_fn done, void *arg)
{
    return 0;
}

typedef struct range_read {
    shard *sh;
    uint64_t since, upto, mask, oldest;
    size_t limit;
    sg_store_range_fn cb;
    void *arg;
    int orphan; /* the range could not be asked: on_oldest answers */
} range_read;

static void on_oldest(redisAsyncContext *ac, void *reply, void *priv)
{
    range_read *rr = priv;
    redisReply *rp = reply;
    answered(rr->sh);
    if (rr->orphan) {
        rr->cb(rr->arg, -1, NULL, 0, 0);
        free(rr);
        return;
    }
    if (rp && rp->type == REDIS_REPLY_ARRAY && rp->elements == 1 && rp->element[0]->type == REDIS_REPLY_ARRAY) {
        const char *id = rp->element[0]->element[0]->str, *dash = strchr(id, '-');
        rr->oldest = dash ? strtoull(dash + 1, NULL, 10) : 0;
    }
}

static void on_range(redisAsyncContext *ac, void *reply, void *priv)
{
    range_read *rr = priv;
    redisReply *rp = reply;
    answered(rr->sh);
    if (!rp || rp->type != REDIS_REPLY_ARRAY) {
        rr->sh->errors++;
        rr->cb(rr->arg, -1, NULL, 0, 0);
        free(rr);
        return;
    }
    sg_update **ups = calloc(rp->elements + 1, sizeof(*ups));
    size_t n = 0;
    for (size_t i = 0; ups && i < rp->elements && n < rr->limit; i++) {
        redisReply *e = rp->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->elements != 6) continue;
        const char *dash = strchr(e->element[0]->str, '-');
        redisReply **f = e->element[1]->element;
        sg_update *u = entry_update(dash ? strtoull(dash + 1, NULL, 10) : 0, f[1]->str, f[1]->len, f[3]->str,
                                    f[5]->str, f[5]->len);
        if (!u) break;
        if (rr->mask & (1ULL << u->category)) ups[n++] = u;
        else sg_update_unref(u);
    }
    rr->cb(rr->arg, ups ? 0 : -1, ups, n, rr->oldest);
    for (size_t i = 0; i < n; i++)
        sg_update_unref(ups[i]);
    free(ups);
    free(rr);
}

static void redis_range(sg_store_conv *c, uint64_t since, uint64_t upto, size_t limit, uint64_t mask,
                        sg_store_range_fn cb, void *arg)
{
    sg_redis *r = c->r;
    shard *sh = c->sh;
    range_read *rr = calloc(1, sizeof(*rr));
    if (!rr || !sh->cmd_up) {
        free(rr);
        cb(arg, -1, NULL, 0, 0);
        return;
    }
    *rr = (range_read){sh, since, upto, mask, 0, limit, cb, arg, 0};
    char hi[32];
    if (upto) snprintf(hi, sizeof(hi), "0-%llu", (unsigned long long)upto);
    else snprintf(hi, sizeof(hi), "+");
    /* two commands, one round trip: answered in order */
    if (redisAsyncCommand(sh->cmd, on_oldest, rr, "XRANGE %sh:%b - + COUNT 1", r->prefix, c->id, c->id_len) != REDIS_OK) {
        free(rr);
        cb(arg, -1, NULL, 0, 0);
        return;
    }
    sent(sh);
    if (redisAsyncCommand(sh->cmd, on_range, rr, "XRANGE %sh:%b 0-%llu %s", r->prefix, c->id, c->id_len,
                          (unsigned long long)since + 1, hi) != REDIS_OK)
        rr->orphan = 1;
    else
        sent(sh);
}

static void redis_close(sg_store_conv *c, int drop)
{
    sg_redis *r = c->r;
    shard *sh = c->sh;
    /* drop forgets this gateway's hold only: Redis expires the cluster's
     * history (conversation_ttl_s after its last publish) */
    if (c->prev) c->prev->next = c->next; else r->open_head = c->next;
    if (c->next) c->next->prev = c->prev;
    /* a newer handle of the same conversation keeps the name and the channel */
    if (sg_dict_get(r->convs, c->id, c->id_len) == c) {
        sg_dict_del(r->convs, c->id, c->id_len);
        if (sh->sub_up && redisAsyncCommand(sh->sub, on_sub_reply, sh, "UNSUBSCRIBE %sc:%b", r->prefix, c->id,
                                            c->id_len) == REDIS_OK)
            sent(sh);
    }
    c->closed = 1;
    rc_unref(c);
}

/* The pattern is wanted while status:* has subscribers here or this
 * gateway holds the aggregators' lease. */
static void pattern_update(sg_redis *r)
{
    int want = r->wildcard || r->leading;
    if (want == r->pattern) return;
    r->pattern = want;
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        if (sh->sub_up && redisAsyncCommand(sh->sub, on_sub_reply, sh, want ? "PSUBSCRIBE %sc:*" : "PUNSUBSCRIBE %sc:*",
                                            r->prefix) == REDIS_OK) {
            sent(sh);
            if (want) sh->psub_pending++;
        }
    }
}

/* status:*'s first subscriber: its join is answered once every shard up
 * answered the PSUBSCRIBE (pattern_answered), so that what its client
 * publishes next, on any gateway, is heard. */
static int redis_watch_all(sg_store *s, int on)
{
    sg_redis *r = of(s);
    r->wildcard = on;
    pattern_update(r);
    r->pattern_told = on && psub_out(r) > 0;
    return r->pattern_told;
}

/* ---- the webhook outbox ----
 *
 * This gateway's messages (and the parts of the batches it is gathering)
 * in two hashes on the first shard, <prefix>outbox:<node> and
 * <prefix>outbox:<node>:parts, each field a message id, each value the
 * message as JSON. The node name (redis.node, or STATUSGW_NODE, or host
 * and port) is what a restarted gateway finds its outbox by: a gateway
 * killed with SIGKILL sends what it had kept once it is back. Writes are
 * pipelined on the command connection, ahead of the producer's answer. */

static void outbox_key(sg_redis *r, int parts, char *out, size_t len)
{
    snprintf(out, len, "%soutbox:%s%s", r->prefix, r->node_name, parts ? ":parts" : "");
}

static void on_outbox_written(redisAsyncContext *ac, void *reply, void *priv)
{
    shard *sh = priv;
    redisReply *rp = reply;
    answered(sh);
    if (!rp || rp->type == REDIS_REPLY_ERROR) {
        sh->errors++;
        sg_log(SG_LOG_WARN, "outbox_write_failed", "reason=%s", sg_log_q(rp ? rp->str : "no answer"));
    }
}

/* Keep a message (ARGV[2] its value) or forget one (ARGV[2] empty) in
 * KEYS[1]; with ARGV[3] 1, the parts it was gathered from (KEYS[2],
 * "<id>.<n>") go: putting or forgetting a message drops its parts. */
static const char outbox_script[] =
    "if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end\n"
    "if ARGV[3] == '1' then\n"
    "  for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do\n"
    "    if k:sub(1, #ARGV[1] + 1) == ARGV[1] .. '.' then redis.call('HDEL', KEYS[2], k) end\n"
    "  end\n"
    "end\n";

/* One outbox write, pipelined: v NULL forgets id. A write that cannot be
 * sent is logged; the message is sent again after a restart with its
 * webhook-id (receivers deduplicate), or not kept across one. */
static void outbox_write(sg_redis *r, int part, const char *id, const char *v)
{
    shard *sh = &r->shards[0];
    char key[400], parts[400];
    outbox_key(r, part, key, sizeof(key));
    outbox_key(r, 1, parts, sizeof(parts));
    if (sh->cmd_up && redisAsyncCommand(sh->cmd, on_outbox_written, sh, "EVAL %s 2 %s %s %s %s %d", outbox_script,
                                        key, parts, id, v ? v : "", !part) == REDIS_OK) {
        sent(sh);
        return;
    }
    sh->errors++;
    sg_log(SG_LOG_WARN, "outbox_write_failed", "id=%s reason=redis_down", id);
}

static void redis_outbox_put(sg_store *s, const sg_outbox_msg *m)
{
    json_t *j = json_pack("{s:s,s:s%,s:s?,s:s?,s:i,s:i,s:i,s:I,s:I,s:I}", "endpoint", m->endpoint, "body", m->body,
                          m->len, "headers", m->headers, "last_error", m->last_error, "updates", m->updates,
                          "attempts", m->attempts, "dead", m->dead, "last_status", (json_int_t)m->last_status,
                          "next_at_ms", (json_int_t)m->next_at_ms, "created_ms", (json_int_t)m->created_ms);
    char *v = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (v) outbox_write(of(s), m->dead == SG_OUTBOX_PART, m->id, v);
    else sg_log(SG_LOG_WARN, "outbox_write_failed", "id=%s reason=out_of_memory", m->id);
    free(v);
}

static void redis_outbox_del(sg_store *s, const char *id)
{
    outbox_write(of(s), 0, id, NULL);
}

typedef struct kept {
    const char *id;
    json_t *v;
    int64_t created_ms;
} kept;

static int kept_order(const void *a, const void *b)
{
    const kept *x = a, *y = b;
    if (x->created_ms != y->created_ms) return x->created_ms < y->created_ms ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Every kept message, oldest first (parts in order), read at start. */
static int redis_outbox_load(sg_store *s, sg_outbox_fn fn, void *arg)
{
    sg_redis *r = of(s);
    char err[300], key[2][400];
    redisContext *c = sync_ctx(&r->shards[0], err, sizeof(err));
    if (!c) return -1;
    redisReply *rp[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        outbox_key(r, k, key[k], sizeof(key[k]));
        rp[k] = redisCommand(c, "HGETALL %s", key[k]);
    }
    int rc = -1;
    size_t n = 0, cap = 0;
    kept *all = NULL;
    if (!rp[0] || !rp[1] || rp[0]->type != REDIS_REPLY_ARRAY || rp[1]->type != REDIS_REPLY_ARRAY) goto out;
    cap = (rp[0]->elements + rp[1]->elements) / 2 + 1;
    if (!(all = calloc(cap, sizeof(*all)))) goto out;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i + 1 < rp[k]->elements; i += 2) {
            json_t *v = json_loads(rp[k]->element[i + 1]->str, 0, NULL);
            if (!v) continue;
            all[n++] = (kept){rp[k]->element[i]->str, v, json_integer_value(json_object_get(v, "created_ms"))};
        }
    qsort(all, n, sizeof(*all), kept_order);
    for (size_t i = 0; i < n; i++) {
        json_t *v = all[i].v, *body = json_object_get(v, "body");
        sg_outbox_msg m = {
            .id = all[i].id,
            .endpoint = json_string_value(json_object_get(v, "endpoint")),
            .body = json_string_value(body),
            .len = json_string_length(body),
            .headers = json_string_value(json_object_get(v, "headers")),
            .last_error = json_string_value(json_object_get(v, "last_error")),
            .updates = (int)json_integer_value(json_object_get(v, "updates")),
            .attempts = (int)json_integer_value(json_object_get(v, "attempts")),
            .dead = (int)json_integer_value(json_object_get(v, "dead")),
            .last_status = (long)json_integer_value(json_object_get(v, "last_status")),
            .next_at_ms = json_integer_value(json_object_get(v, "next_at_ms")),
            .created_ms = all[i].created_ms,
        };
        if (m.endpoint && m.body) fn(arg, &m);
    }
    rc = 0;
out:
    for (size_t i = 0; i < n; i++)
        json_decref(all[i].v);
    free(all);
    for (int k = 0; k < 2; k++)
        if (rp[k]) freeReplyObject(rp[k]);
    return rc;
}

static int redis_healthy(sg_store *s)
{
    sg_redis *r = of(s);
    for (int i = 0; i < r->n; i++)
        if (!shard_up(&r->shards[i])) return 0;
    return 1;
}

static void redis_free(sg_store *s)
{
    sg_redis *r = of(s);
    r->closing = 1;
    r->hub = NULL; /* gone first */
    if (r->shards[0].sync && r->shards[0].cmd_up) { /* leave the cluster now rather than in 5 s */
        redisReply *rp = redisCommand(r->shards[0].sync,
                                      "EVAL %s 2 %snodes %saggregators %s", "redis.call('HDEL', KEYS[1], ARGV[1]) "
                                      "if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end",
                                      r->prefix, r->prefix, r->node_id);
        if (rp) freeReplyObject(rp);
    }
    on_turn(-1, 0, r); /* what was queued: sent, and answered below as the connections go */
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        if (sh->cmd) redisAsyncFree(sh->cmd); /* pending callbacks run with no answer */
        if (sh->sub) redisAsyncFree(sh->sub);
        if (sh->sync) redisFree(sh->sync);
        if (sh->retry_ev) event_free(sh->retry_ev);
        if (sh->timeout_ev) event_free(sh->timeout_ev);
        free(sh->batch);
    }
    while (r->open_head) { /* the hub is gone first: none should be left */
        sg_store_conv *c = r->open_head;
        r->open_head = c->next;
        c->closed = 1;
        rc_unref(c);
    }
    if (r->turn_ev) event_free(r->turn_ev);
    if (r->beat_ev) event_free(r->beat_ev);
    json_decref(r->nodes);
    sg_dict_free(r->convs);
    free(r->password);
    free(r);
}

static const sg_store_ops redis_ops = {.name = "redis",
                                       .open = redis_open,
                                       .append = redis_append,
                                       .range = redis_range,
                                       .close = redis_close,
                                       .free = redis_free,
                                       .healthy = redis_healthy,
                                       .watch_all = redis_watch_all,
                                       .outbox_put = redis_outbox_put,
                                       .outbox_del = redis_outbox_del,
                                       .outbox_load = redis_outbox_load,
                                       .publish = redis_publish};

/* ---- the cluster: nodes and the aggregators' lease ---- */

static void on_beat(redisAsyncContext *ac, void *reply, void *priv)
{
    shard *sh = priv;
    sg_redis *r = sh->r;
    redisReply *rp = reply;
    answered(sh);
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 || r->closing) return;
    redisReply *l = rp->element[0], *live = rp->element[1];
    int leading = l->type == REDIS_REPLY_STRING && strcmp(l->str, r->node_id) == 0;
    if (leading != r->leading)
        sg_log(SG_LOG_INFO, leading ? "aggregators_lease_taken" : "aggregators_lease_lost", "node=%s", r->node_id);
    r->leading = leading;
    pattern_update(r);
    json_t *nodes = json_array();
    for (size_t i = 0; nodes && live->type == REDIS_REPLY_ARRAY && i < live->elements; i++) {
        const char *sp = strchr(live->element[i]->str, ' ');
        json_t *n = sp ? json_loads(sp + 1, 0, NULL) : NULL;
        if (!n) continue;
        json_object_set_new(n, "aggregators", json_boolean(l->type == REDIS_REPLY_STRING &&
                                                           strcmp(l->str, json_string_value(json_object_get(n, "id"))) == 0));
        json_object_set_new(n, "self", json_boolean(strcmp(json_string_value(json_object_get(n, "id")), r->node_id) == 0));
        json_array_append_new(nodes, n);
    }
    if (nodes) {
        json_decref(r->nodes);
        r->nodes = nodes;
    }
}

static void on_beat_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_redis *r = arg;
    shard *sh = &r->shards[0];
    if (!sh->cmd_up) {
        if (r->leading) sg_log(SG_LOG_WARN, "aggregators_lease_lost", "node=%s reason=redis_down", r->node_id);
        r->leading = 0; /* another gateway takes it once the lease runs out */
        pattern_update(r);
        return;
    }
    int64_t now = sg_now_ms();
    json_t *me = json_pack("{s:s,s:s,s:s,s:i,s:i,s:I,s:I,s:I,s:I}", "id", r->node_id, "node", r->node_name, "host", r->cfg->listen_host, "port",
                           r->cfg->listen_port, "pid", (int)getpid(), "started_ms", (json_int_t)r->started_ms, "seen_ms",
                           (json_int_t)now, "conversations_held", (json_int_t)sg_dict_size(r->convs), "accepted",
                           (json_int_t)r->accepted);
    char *info = me ? json_dumps(me, JSON_COMPACT) : NULL;
    json_decref(me);
    if (!info) return;
    int wants = r->observe && r->wants(r->observe_arg);
    if (redisAsyncCommand(sh->cmd, on_beat, sh, "EVAL %s 2 %snodes %saggregators %s %s %lld %d", heartbeat_script,
                          r->prefix, r->prefix, r->node_id, info, (long long)now, wants) == REDIS_OK)
        sent(sh);
    free(info);
}

void sg_store_redis_set_observer(sg_store *s, sg_redis_observer fn, int (*wants)(void *arg), void *arg)
{
    sg_redis *r = of(s);
    r->observe = fn;
    r->wants = wants;
    r->observe_arg = arg;
}

json_t *sg_store_redis_nodes(sg_store *s)
{
    sg_redis *r = of(s);
    return r->nodes ? json_incref(r->nodes) : json_array();
}

/* ---- configuration ---- */

static int parse_address(shard *sh, const char *a, char *err, size_t errlen)
{
    const char *colon = strrchr(a, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 6379;
    if (colon && (colon == a || *end || port < 1 || port > 65535 || (size_t)(colon - a) >= sizeof(sh->host))) {
        snprintf(err, errlen, "redis.addresses: \"%.60s\" is not \"host:port\"", a);
        return -1;
    }
    size_t hl = colon ? (size_t)(colon - a) : strlen(a);
    if (hl == 0 || hl >= sizeof(sh->host)) {
        snprintf(err, errlen, "redis.addresses: \"%.60s\" is not \"host:port\"", a);
        return -1;
    }
    memcpy(sh->host, a, hl);
    sh->host[hl] = 0;
    sh->port = (int)port;
    return 0;
}

/* The `redis` table: addresses, password, db, prefix, connect_timeout_ms. */
static int configure(sg_redis *r, json_t *t, char *err, size_t errlen)
{
    static const char *const keys[] = {"addresses", "password", "db", "prefix", "connect_timeout_ms", "node", NULL};
    r->timeout_ms = 1000;
    snprintf(r->prefix, sizeof(r->prefix), "statusgw:");
    if (t && sg_config_check_keys(t, "redis", keys, err, errlen) < 0) return -1;
    json_t *addrs = t ? json_object_get(t, "addresses") : NULL, *v;
    if (addrs && (!json_is_array(addrs) || json_array_size(addrs) == 0 || json_array_size(addrs) > MAX_SHARDS)) {
        snprintf(err, errlen, "redis.addresses must be a list of 1 to %d \"host:port\" strings", MAX_SHARDS);
        return -1;
    }
    r->n = addrs ? (int)json_array_size(addrs) : 1;
    for (int i = 0; i < r->n; i++) {
        json_t *a = addrs ? json_array_get(addrs, (size_t)i) : NULL;
        if (addrs && !json_is_string(a)) {
            snprintf(err, errlen, "redis.addresses[%d] must be a \"host:port\" string", i + 1);
            return -1;
        }
        r->shards[i].r = r;
        r->shards[i].idx = i;
        if (parse_address(&r->shards[i], a ? json_string_value(a) : "127.0.0.1:6379", err, errlen) < 0) return -1;
    }
    if (t && (v = json_object_get(t, "password"))) {
        if (!json_is_string(v)) return snprintf(err, errlen, "redis.password must be a string"), -1;
        r->password = strdup(json_string_value(v));
    }
    if (t && (v = json_object_get(t, "db"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000)
            return snprintf(err, errlen, "redis.db must be an integer from 0"), -1;
        r->db = (int)json_integer_value(v);
    }
    if (t && (v = json_object_get(t, "prefix"))) {
        if (!json_is_string(v) || json_string_length(v) >= sizeof(r->prefix) || strpbrk(json_string_value(v), " *?[]"))
            return snprintf(err, errlen, "redis.prefix must be a string of at most 127 bytes without spaces or glob characters"), -1;
        snprintf(r->prefix, sizeof(r->prefix), "%s", json_string_value(v));
    }
    const char *env = getenv("STATUSGW_NODE");
    if (t && (v = json_object_get(t, "node"))) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= sizeof(r->node_name) ||
            strpbrk(json_string_value(v), " *?[]"))
            return snprintf(err, errlen, "redis.node must be a name of 1 to 127 bytes without spaces or glob characters"), -1;
        snprintf(r->node_name, sizeof(r->node_name), "%s", json_string_value(v));
    } else if (env && env[0] && strlen(env) < sizeof(r->node_name)) {
        snprintf(r->node_name, sizeof(r->node_name), "%s", env);
    } else {
        char host[64] = "localhost";
        gethostname(host, sizeof(host) - 1);
        snprintf(r->node_name, sizeof(r->node_name), "%s:%d", host, r->cfg->listen_port);
    }
    if (t && (v = json_object_get(t, "connect_timeout_ms"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 60000)
            return snprintf(err, errlen, "redis.connect_timeout_ms must be an integer from 1 to 60000"), -1;
        r->timeout_ms = (int)json_integer_value(v);
    }
    return 0;
}

/* At start every shard must answer (a clear error otherwise), and takes
 * the publish script. */
static int first_contact(sg_redis *r, char *err, size_t errlen)
{
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        redisContext *c = sync_ctx(sh, err, errlen);
        if (!c) return -1;
        redisReply *rp = redisCommand(c, "SCRIPT LOAD %s", publish_script);
        if (!rp || rp->type != REDIS_REPLY_STRING || rp->len != 40) {
            snprintf(err, errlen, "redis at %s:%d: SCRIPT LOAD failed: %s", sh->host, sh->port,
                     rp && rp->type == REDIS_REPLY_ERROR ? rp->str : c->errstr);
            if (rp) freeReplyObject(rp);
            return -1;
        }
        memcpy(r->sha, rp->str, 41);
        freeReplyObject(rp);
    }
    return 0;
}

sg_store *sg_store_redis_new(const sg_config *cfg, struct event_base *base, char *err, size_t errlen)
{
    sg_redis *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->base.ops = &redis_ops;
    r->ev = base;
    r->cfg = cfg;
    r->convs = sg_dict_new();
    r->turn_ev = event_new(base, -1, 0, on_turn, r);
    r->beat_ev = event_new(base, -1, EV_PERSIST, on_beat_timer, r);
    sg_store_new_epoch(r->node_id);
    r->started_ms = sg_now_ms();
    if (!r->convs || !r->turn_ev || !r->beat_ev) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (configure(r, cfg->redis, err, errlen) < 0 || first_contact(r, err, errlen) < 0) goto fail;
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        sh->r = r;
        sh->idx = i;
        sh->backoff_ms = 100;
        sh->retry_ev = evtimer_new(base, on_retry, sh);
        sh->timeout_ev = evtimer_new(base, on_connect_timeout, sh);
        if (!sh->retry_ev || !sh->timeout_ev) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        shard_connect(sh);
        sh->reconnects = 0;
    }
    struct timeval second = {1, 0};
    event_add(r->beat_ev, &second);
    return &r->base;
fail:
    r->n = r->n > 0 ? r->n : 0;
    redis_free(&r->base);
    return NULL;
}

void sg_store_redis_set_hub(sg_store *s, sg_hub *hub)
{
    of(s)->hub = hub;
}

json_t *sg_store_redis_stats(sg_store *s)
{
    sg_redis *r = of(s);
    json_t *shards = json_array();
    uint64_t rt = 0, depth = 0, rc = 0, err = 0;
    for (int i = 0; i < r->n; i++) {
        shard *sh = &r->shards[i];
        char addr[300];
        snprintf(addr, sizeof(addr), "%s:%d", sh->host, sh->port);
        json_array_append_new(shards, json_pack("{s:s,s:b,s:I,s:I,s:I,s:I,s:I,s:I}", "address", addr, "up",
                                                shard_up(sh), "round_trips", (json_int_t)sh->round_trips,
                                                "in_flight", (json_int_t)sh->in_flight, "max_in_flight",
                                                (json_int_t)sh->max_in_flight, "reconnects",
                                                (json_int_t)sh->reconnects, "errors", (json_int_t)sh->errors,
                                                "messages", (json_int_t)sh->messages));
        rt += sh->round_trips;
        depth += sh->in_flight;
        rc += sh->reconnects;
        err += sh->errors;
    }
    return json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:o}", "engine", "redis", "prefix", r->prefix, "round_trips",
                     (json_int_t)rt, "in_flight", (json_int_t)depth, "reconnects", (json_int_t)rc, "errors",
                     (json_int_t)err, "conversations_held", (json_int_t)sg_dict_size(r->convs), "shards", shards);
}
