#include "sandbox.h"

#include "clock.h"
#include "jtext.h"
#include "log.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define HOOK_EVERY 1000  /* instructions between hook calls */
#define WATCHDOG_US 2000 /* how often a running call is looked at */
#define JSON_MAX_DEPTH 64
#define POOL_CLASSES 16            /* free lists of blocks of 16, 32, ... 256 bytes */
#define POOL_KEEP (256 * 1024)     /* bytes of free blocks one sandbox keeps */

enum { ABORT_NONE, ABORT_TIMEOUT, ABORT_OOM };

struct sg_sandbox {
    lua_State *L;
    char *name;
    sg_sandbox_limits lim;
    size_t mem;
    int in_call;
    volatile sig_atomic_t hooked; /* the count hook is on for this call */
    int watched;                  /* counted in live_sandboxes */
    int abort;
    long steps;
    uint64_t deadline_ns;
    sg_emit_fn emit;
    void *emit_arg;
    char error[512];
    void *pool[POOL_CLASSES]; /* free small blocks, linked through their first word */
    size_t pooled;            /* bytes in the pool */
};

static char null_sentinel; /* statusgw.json.null is a light userdata to this */

static void lazy_materialize(lua_State *L, int t);
static int is_lazy_key(lua_State *L, int idx);

/* The sandbox whose call is running, for the watchdog. */
static sg_sandbox *volatile running;


/* ---- limits ----
 *
 * A count hook makes Lua 5.4 trace every instruction, which would triple
 * the cost of a typical plugin call. So calls run without one, and a
 * watchdog signal every WATCHDOG_US turns the hook on for a call that is
 * still running (lua_sethook is safe in a signal handler; lua.c stops
 * scripts on Ctrl-C the same way). From then on the hook enforces the
 * instruction budget and the deadline. Plugins get no coroutines, so
 * every call runs on the state's main thread, which the hook covers. */

static void sb_hook(lua_State *L, lua_Debug *ar);

static struct sigaction prev_alarm; /* whoever had SIGALRM before (a fuzzer's timeout) */

static void watchdog(int sig, siginfo_t *info, void *ctx)
{
    if (prev_alarm.sa_flags & SA_SIGINFO) {
        if (prev_alarm.sa_sigaction) prev_alarm.sa_sigaction(sig, info, ctx);
    } else if (prev_alarm.sa_handler != SIG_DFL && prev_alarm.sa_handler != SIG_IGN && prev_alarm.sa_handler) {
        prev_alarm.sa_handler(sig);
    }
    sg_sandbox *sb = running;
    if (sb && !sb->hooked) {
        sb->hooked = 1;
        lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, HOOK_EVERY);
    }
}

static int live_sandboxes;

/* The watchdog runs while any sandbox exists, and stops with the last one
 * (the plugin host can live in a Lua module that is unloaded later). */
static void start_watchdog(void)
{
    if (live_sandboxes++ > 0) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = watchdog;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &prev_alarm);
    struct itimerval it = {{0, WATCHDOG_US}, {0, WATCHDOG_US}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void stop_watchdog(void)
{
    if (--live_sandboxes > 0) return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &prev_alarm, NULL);
}

/* ---- memory ----
 *
 * A plugin call makes a handful of small objects (the update table, its
 * strings, the result) that the collector frees soon after, so each
 * sandbox keeps freed blocks of up to 256 bytes on free lists by size and
 * hands them out again: no trip through malloc for the common case. The
 * cap counts the bytes Lua asked for, not what the pool keeps. */

static int pool_class(size_t n)
{
    return n > 0 && n <= POOL_CLASSES * 16 ? (int)((n + 15) >> 4) - 1 : -1;
}

static void *pool_get(sg_sandbox *sb, int c)
{
    void **b = sb->pool[c];
    if (!b) return malloc((size_t)(c + 1) << 4);
    sb->pool[c] = *b;
    sb->pooled -= (size_t)(c + 1) << 4;
    return b;
}

static void pool_put(sg_sandbox *sb, void *p, int c)
{
    size_t sz = (size_t)(c + 1) << 4;
    if (sb->pooled + sz > POOL_KEEP) {
        free(p);
        return;
    }
    *(void **)p = sb->pool[c];
    sb->pool[c] = p;
    sb->pooled += sz;
}

static void pool_drain(sg_sandbox *sb)
{
    for (int c = 0; c < POOL_CLASSES; c++) {
        while (sb->pool[c]) {
            void **b = sb->pool[c];
            sb->pool[c] = *b;
            free(b);
        }
    }
    sb->pooled = 0;
}

/* lua_Alloc: (ptr, osize) is the block Lua has (osize is its exact size
 * when ptr is not NULL); nsize what it wants. */
static void *block_resize(sg_sandbox *sb, void *ptr, size_t osize, size_t nsize)
{
    int co = ptr ? pool_class(osize) : -1, cn = pool_class(nsize);
    if (nsize == 0) {
        if (co >= 0) pool_put(sb, ptr, co);
        else free(ptr);
        return NULL;
    }
    if (co < 0 && cn < 0) return realloc(ptr, nsize);
    if (co == cn) return ptr;
    void *n = cn >= 0 ? pool_get(sb, cn) : malloc(nsize);
    if (!n || !ptr) return n;
    memcpy(n, ptr, osize < nsize ? osize : nsize);
    if (co >= 0) pool_put(sb, ptr, co);
    else free(ptr);
    return n;
}

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sg_sandbox *sb = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        sb->mem -= old;
        block_resize(sb, ptr, osize, 0);
        return NULL;
    }
    /* the cap holds inside calls; what the host pushes between calls is
     * small, and a refusal there would be an unprotected error */
    if (sb->in_call && nsize > old && sb->mem + (nsize - old) > sb->lim.memory) {
        sb->abort = ABORT_OOM;
        if (!sb->hooked) { /* so that a pcall in the plugin cannot carry on */
            sb->hooked = 1;
            lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, 1);
        }
        return NULL;
    }
    void *n = block_resize(sb, ptr, osize, nsize);
    if (!n) return NULL;
    sb->mem = sb->mem - old + nsize;
    return n;
}

static sg_sandbox *from_state(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- what encoding a value may cost ----
 *
 * Encoding a plugin's value as JSON (json.encode, emit, what a builder,
 * filter or forwarder returns) is work the plugin asked for, and a small
 * table can stand for a huge text: `for i = 1, 24 do t = {t, t} end`
 * shares one subtree sixteen million times. So the encoders spend a
 * budget as they go: the output may reach what is left of the plugin's
 * memory cap, and the work runs under the call's deadline (or, when the
 * host encodes after the call, a deadline of timeout_ms of its own). Over
 * either, encoding stops there, and inside a call the call is over its
 * budget as if Lua had run out (a pcall in the plugin cannot carry on). */
typedef struct enc_budget {
    sg_sandbox *sb; /* NULL: not a plugin's state (config, specs): no limits */
    size_t max;     /* output bytes (an estimate, for trees) it may reach */
    size_t used;
    uint64_t deadline_ns;
    unsigned ticks;
    int failed; /* ABORT_OOM or ABORT_TIMEOUT once over */
} enc_budget;

#define ENC_NODE_COST 32 /* a jansson node's bytes, beyond its string */

static void budget_init(enc_budget *g, lua_State *L)
{
    void *ud;
    memset(g, 0, sizeof(*g));
    g->max = SIZE_MAX;
    if (lua_getallocf(L, &ud) != sb_alloc) return;
    sg_sandbox *sb = ud;
    g->sb = sb;
    g->max = sb->mem < sb->lim.memory ? sb->lim.memory - sb->mem : 0;
    g->deadline_ns = sb->in_call ? sb->deadline_ns
                                 : sg_clock_running_ns() + (uint64_t)sb->lim.timeout_ms * 1000000ULL;
}

/* Spend n bytes of output: 0, or -1 with err once over the size or time. */
static int budget_spend(enc_budget *g, size_t n, char *err, size_t errlen)
{
    g->used += n;
    if (!g->sb || g->failed) return g->failed ? -1 : 0;
    if (g->used > g->max)
        g->failed = ABORT_OOM;
    else if ((++g->ticks & 255) == 0 && sg_clock_running_ns() > g->deadline_ns)
        g->failed = ABORT_TIMEOUT;
    if (!g->failed) return 0;
    sg_sandbox *sb = g->sb;
    if (g->failed == ABORT_OOM)
        snprintf(err, errlen, "memory limit exceeded: the encoded value is over the %zu bytes "
                 "left under plugin_memory_bytes", g->max);
    else
        snprintf(err, errlen, "instruction or time budget exceeded while encoding (plugin_timeout_ms %d)",
                 sb->lim.timeout_ms);
    if (sb->in_call && !sb->abort) { /* the call is over its budget */
        sb->abort = g->failed;
        if (!sb->hooked) {
            sb->hooked = 1;
            lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, 1);
        }
    }
    return -1;
}

/* Runs every HOOK_EVERY instructions. Once a call is over budget it
 * raises on every instruction, so a pcall inside the plugin cannot catch
 * its way out. */
static void sb_hook(lua_State *L, lua_Debug *ar)
{
    sg_sandbox *sb = from_state(L);
    if (!sb->in_call) return;
    if (!sb->abort) {
        sb->steps += HOOK_EVERY;
        if (sb->steps > sb->lim.instructions || sg_clock_running_ns() > sb->deadline_ns)
            sb->abort = ABORT_TIMEOUT;
    }
    if (sb->abort) {
        lua_sethook(L, sb_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, sb->abort == ABORT_OOM ? "memory limit exceeded"
                                             : "instruction or time budget exceeded");
    }
}

void sg_sandbox_check_budget(lua_State *L)
{
    sg_sandbox *sb = from_state(L);
    if (!sb || !sb->in_call) return;
    if (!sb->abort && sg_clock_running_ns() > sb->deadline_ns) sb->abort = ABORT_TIMEOUT;
    if (!sb->abort) return;
    if (!sb->hooked) { /* so that a pcall in the plugin cannot carry on */
        sb->hooked = 1;
        lua_sethook(L, sb_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, sb->abort == ABORT_OOM ? "memory limit exceeded"
                                         : "instruction or time budget exceeded");
}

const char *sg_sandbox_status_name(int status)
{
    switch (status) {
    case SG_SB_OK: return "ok";
    case SG_SB_TIMEOUT: return "timeout";
    case SG_SB_OOM: return "out_of_memory";
    default: return "error";
    }
}

int sg_sandbox_call(sg_sandbox *sb, int nargs, int nresults)
{
    return sg_sandbox_call_at(sb, nargs, nresults, sg_clock_running_ns());
}

int sg_sandbox_call_at(sg_sandbox *sb, int nargs, int nresults, uint64_t start_ns)
{
    lua_State *L = sb->L;
    sb->in_call = 1;
    sb->abort = ABORT_NONE;
    sb->steps = 0;
    sb->hooked = 0;
    sb->deadline_ns = start_ns + (uint64_t)sb->lim.timeout_ms * 1000000ULL;
    running = sb;
    int rc = lua_pcall(L, nargs, nresults, 0);
    running = NULL;
    sb->in_call = 0;
    int status = SG_SB_OK;
    if (sb->abort == ABORT_OOM || rc == LUA_ERRMEM)
        status = SG_SB_OOM;
    else if (sb->abort == ABORT_TIMEOUT)
        status = SG_SB_TIMEOUT;
    else if (rc != LUA_OK)
        status = SG_SB_ERROR;
    if (status != SG_SB_OK) {
        if (rc != LUA_OK) {
            const char *m = lua_tostring(L, -1);
            snprintf(sb->error, sizeof(sb->error), "%s",
                     status == SG_SB_OOM ? "memory limit exceeded"
                     : status == SG_SB_TIMEOUT ? "instruction or time budget exceeded"
                     : m ? m : "error object is not a string");
            lua_pop(L, 1);
        } else {
            /* it caught the overrun itself and returned: the result is void */
            snprintf(sb->error, sizeof(sb->error), "%s",
                     status == SG_SB_OOM ? "memory limit exceeded"
                                         : "instruction or time budget exceeded");
            lua_pop(L, nresults == LUA_MULTRET ? 0 : nresults);
        }
        lua_gc(L, LUA_GCCOLLECT);
    }
    if (sb->hooked) {
        lua_sethook(L, NULL, 0, 0);
        sb->hooked = 0;
    }
    return status;
}

const char *sg_sandbox_error(const sg_sandbox *sb)
{
    return sb->error;
}

size_t sg_sandbox_memory(const sg_sandbox *sb)
{
    return sb->mem;
}

lua_State *sg_sandbox_state(sg_sandbox *sb)
{
    return sb->L;
}

/* ---- JSON ---- */

static void push_json(lua_State *L, json_t *v, int depth)
{
    if (depth > JSON_MAX_DEPTH || !lua_checkstack(L, 4)) {
        lua_pushnil(L);
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        lua_createtable(L, 0, (int)json_object_size(v));
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            push_json(L, x, depth + 1);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        lua_createtable(L, (int)json_array_size(v), 0);
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            push_json(L, x, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushlightuserdata(L, &null_sentinel); break;
    }
}

void sg_lua_push_json(lua_State *L, json_t *v)
{
    push_json(L, v, 0);
}

static json_t *to_json(lua_State *L, int idx, int depth, enc_budget *g, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    size_t slen = lua_type(L, idx) == LUA_TSTRING ? lua_rawlen(L, idx) : 0;
    if (budget_spend(g, ENC_NODE_COST + slen, err, errlen) < 0) return NULL;
    if (depth > JSON_MAX_DEPTH) {
        snprintf(err, errlen, "nested deeper than %d levels (a cycle?)", JSON_MAX_DEPTH);
        return NULL;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_integer(lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx))) {
            snprintf(err, errlen, "NaN and infinity have no JSON form");
            return NULL;
        }
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_t *j = json_stringn(s, n);
        if (!j) snprintf(err, errlen, "a string is not valid UTF-8");
        return j;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &null_sentinel) return json_null();
        break;
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4)) {
            snprintf(err, errlen, "too deep");
            return NULL;
        }
        lazy_materialize(L, idx);
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        size_t count = 0;
        int string_keys = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (!is_lazy_key(L, -2)) count++;
            if (lua_type(L, -2) == LUA_TSTRING) string_keys = 1;
            lua_pop(L, 1);
        }
        if (n > 0 && (size_t)n == count && !string_keys) {
            json_t *a = json_array();
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, i);
                json_t *x = to_json(L, -1, depth + 1, g, err, errlen);
                lua_pop(L, 1);
                if (!x) {
                    json_decref(a);
                    return NULL;
                }
                json_array_append_new(a, x);
            }
            return a;
        }
        json_t *o = json_object();
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (is_lazy_key(L, -2)) { /* an update's hidden block, filled in above */
                lua_pop(L, 1);
                continue;
            }
            if (lua_type(L, -2) != LUA_TSTRING) {
                snprintf(err, errlen, "a table mixes list items and named keys");
                lua_pop(L, 2);
                json_decref(o);
                return NULL;
            }
            json_t *x = to_json(L, -1, depth + 1, g, err, errlen);
            if (!x) {
                lua_pop(L, 2);
                json_decref(o);
                return NULL;
            }
            json_object_set_new(o, lua_tostring(L, -2), x);
            lua_pop(L, 1);
        }
        return o;
    }
    default: break;
    }
    snprintf(err, errlen, "a %s has no JSON form", luaL_typename(L, idx));
    return NULL;
}

json_t *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    enc_budget g;
    budget_init(&g, L);
    return to_json(L, idx, 0, &g, err, errlen);
}

/* ---- JSON text <-> Lua, without a tree in between ---- */

/* Push the value at *pp in JSON text that the scanner has already
 * accepted (sg_jtext), so nothing here needs to report an error. */
static void push_text(lua_State *L, const char **pp, const char *end, int depth)
{
    const char *p = *pp;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    if (p >= end || depth > JSON_MAX_DEPTH || !lua_checkstack(L, 4)) {
        lua_pushnil(L);
        *pp = end;
        return;
    }
    switch (*p) {
    case '{':
    case '[': {
        int obj = *p == '{';
        /* sized for small objects and lists: growing a table rehashes it */
        lua_createtable(L, obj ? 0 : 4, obj ? 4 : 0);
        lua_Integer i = 0;
        p++;
        for (;;) {
            while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == ','))
                p++;
            if (p >= end || *p == '}' || *p == ']') break;
            if (obj) {
                push_text(L, &p, end, depth + 1); /* the key */
                while (p < end && *p != ':')
                    p++;
                p++;
                push_text(L, &p, end, depth + 1);
                lua_rawset(L, -3);
            } else {
                push_text(L, &p, end, depth + 1);
                lua_rawseti(L, -2, ++i);
            }
        }
        *pp = p < end ? p + 1 : end;
        return;
    }
    case '"': {
        const char *q = p + 1;
        while (q < end && *q != '"' && *q != '\\')
            q++;
        if (q < end && *q == '"') { /* nothing escaped: the bytes as they are */
            lua_pushlstring(L, p + 1, (size_t)(q - p - 1));
            *pp = q + 1;
            return;
        }
        sg_jtext j;
        luaL_Buffer b;
        char *out = luaL_buffinitsize(L, &b, (size_t)(end - p));
        sg_jtext_init(&j, p, (size_t)(end - p), out);
        if (sg_jtext_string(&j, 1) < 0) j.p = end, j.o = out;
        luaL_pushresultsize(&b, (size_t)(j.o - out));
        *pp = j.p;
        return;
    }
    case 't': lua_pushboolean(L, 1); *pp = p + 4; return;
    case 'f': lua_pushboolean(L, 0); *pp = p + 5; return;
    case 'n': lua_pushlightuserdata(L, &null_sentinel); *pp = p + 4; return;
    default: {
        char tmp[136];
        size_t n = 0;
        int real = 0;
        while (p + n < end && n < sizeof(tmp) - 1 && strchr("+-0123456789.eE", p[n]) && p[n]) {
            if (p[n] == '.' || p[n] == 'e' || p[n] == 'E') real = 1;
            tmp[n] = p[n];
            n++;
        }
        tmp[n] = 0;
        if (real) lua_pushnumber(L, strtod(tmp, NULL));
        else lua_pushinteger(L, (lua_Integer)strtoll(tmp, NULL, 10));
        *pp = p + (n ? n : 1);
        return;
    }
    }
}

void sg_lua_push_json_text(lua_State *L, const char *s, size_t n)
{
    push_text(L, &s, s + n, 0);
}

/* ---- updates with fields filled in on first use ----
 *
 * An update reaches a plugin with its conversation and category set and
 * its other fields (text, source, idempotency key, and the metadata as
 * JSON text) copied into one hidden block; the table's metatable fills a
 * field in the first time the plugin reads it, and all of them when it
 * iterates the update with pairs or encodes it. Most filters read two
 * fields, and making strings (and metadata tables) they never read was
 * most of the cost of calling them. */

enum { LAZY_FIELDS = 4, LAZY_METADATA = 3 };
static const char *const lazy_names[LAZY_FIELDS] = {"text", "source", "idempotency_key", "metadata"};
static const size_t lazy_name_len[LAZY_FIELDS] = {4, 6, 15, 8};
#define LAZY_ABSENT UINT32_MAX

typedef struct lazy_rec {
    uint32_t len[LAZY_FIELDS]; /* LAZY_ABSENT: the update has no such field */
    unsigned done;             /* bit f: field f is filled in, or the plugin set it */
    char data[];               /* the fields end to end */
} lazy_rec;

static char lazy_key;    /* t[&lazy_key]: the lazy_rec, a full userdata */
static char lazy_mt_key; /* registry[&lazy_mt_key]: the metatable */

/* The hidden block of the update at t, or NULL. The table keeps it alive.
 * Only the host makes full userdata in a sandbox; the size is checked all
 * the same, as a plugin can move the block from one update to another. */
static lazy_rec *lazy_rec_of(lua_State *L, int t)
{
    lazy_rec *r = NULL;
    if (lua_rawgetp(L, t, &lazy_key) == LUA_TUSERDATA) {
        size_t have = lua_rawlen(L, -1), need = sizeof(*r);
        r = lua_touserdata(L, -1);
        for (int f = 0; have >= need && f < LAZY_FIELDS; f++)
            if (r->len[f] != LAZY_ABSENT) need += r->len[f];
        if (have < need) r = NULL;
    }
    lua_pop(L, 1);
    return r;
}

static const char *lazy_data(const lazy_rec *r, int f)
{
    const char *p = r->data;
    for (int i = 0; i < f; i++)
        if (r->len[i] != LAZY_ABSENT) p += r->len[i];
    return p;
}

/* Fill field f of the update at t in, unless it is done or the plugin has
 * set it meanwhile. */
static void lazy_fill(lua_State *L, int t, lazy_rec *r, int f)
{
    if (r->done & 1u << f) return;
    r->done |= 1u << f;
    if (r->len[f] == LAZY_ABSENT) return;
    lua_pushlstring(L, lazy_names[f], lazy_name_len[f]);
    if (lua_rawget(L, t) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_pushlstring(L, lazy_names[f], lazy_name_len[f]);
    const char *s = lazy_data(r, f);
    if (f == LAZY_METADATA) push_text(L, &s, s + r->len[f], 0);
    else lua_pushlstring(L, s, r->len[f]);
    lua_rawset(L, t);
}

static void lazy_materialize(lua_State *L, int t)
{
    t = lua_absindex(L, t);
    lazy_rec *r = lazy_rec_of(L, t);
    for (int f = 0; r && f < LAZY_FIELDS; f++)
        lazy_fill(L, t, r, f);
}

/* Which lazy field the key at idx names, or -1. */
static int lazy_field(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TSTRING) return -1;
    size_t n;
    const char *k = lua_tolstring(L, idx, &n);
    for (int f = 0; f < LAZY_FIELDS; f++)
        if (n == lazy_name_len[f] && memcmp(k, lazy_names[f], n) == 0) return f;
    return -1;
}

static int lazy_index(lua_State *L)
{
    int f = lazy_field(L, 2);
    lazy_rec *r = f < 0 ? NULL : lazy_rec_of(L, 1);
    if (!r) return 0;
    lazy_fill(L, 1, r, f);
    lua_pushvalue(L, 2);
    lua_rawget(L, 1);
    return 1;
}

static int lazy_newindex(lua_State *L)
{
    int f = lazy_field(L, 2);
    lazy_rec *r = f < 0 ? NULL : lazy_rec_of(L, 1);
    if (r) r->done |= 1u << f; /* the plugin's value replaces the hidden one */
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

static int lazy_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    for (;;) {
        if (!lua_next(L, 1)) {
            lua_pushnil(L);
            return 1;
        }
        if (!is_lazy_key(L, -2)) return 2;
        lua_pop(L, 1); /* the hidden block is not the plugin's to see */
    }
}

static int lazy_pairs(lua_State *L)
{
    lazy_materialize(L, 1);
    lua_pushcfunction(L, lazy_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

void sg_lua_set_lazy(lua_State *L, int t, const char *const s[4], const size_t n[4])
{
    t = lua_absindex(L, t);
    size_t total = 0;
    for (int f = 0; f < LAZY_FIELDS; f++)
        if (s[f]) total += n[f];
    lazy_rec *r = lua_newuserdatauv(L, sizeof(*r) + total, 0);
    r->done = 0;
    char *p = r->data;
    for (int f = 0; f < LAZY_FIELDS; f++) {
        r->len[f] = s[f] ? (uint32_t)n[f] : LAZY_ABSENT;
        if (!s[f]) continue;
        memcpy(p, s[f], n[f]);
        p += n[f];
    }
    lua_rawsetp(L, t, &lazy_key);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_mt_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        static const luaL_Reg mt[] = {
            {"__index", lazy_index}, {"__newindex", lazy_newindex}, {"__pairs", lazy_pairs}, {NULL, NULL}};
        luaL_newlib(L, mt);
        /* the plugin cannot swap it out from under the hidden block */
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &lazy_mt_key);
    }
    lua_setmetatable(L, t);
}

/* Text being written: in the inline room until it outgrows it. */
typedef struct tbuf {
    char *s;
    size_t n, cap;
    int oom;
    enc_budget g;
    char err[160]; /* why tb_put stopped, when the budget did */
    char inl[512];
} tbuf;

static void tb_init(tbuf *b, lua_State *L)
{
    budget_init(&b->g, L);
    b->s = b->inl;
    b->n = 0;
    b->cap = sizeof(b->inl);
    b->oom = 0;
}

static void tb_free(tbuf *b)
{
    if (b->s != b->inl) free(b->s);
}

/* Room for k more bytes. */
static char *tb_room(tbuf *b, size_t k)
{
    if (b->n + k > b->cap) {
        size_t cap = b->cap;
        while (cap < b->n + k)
            cap *= 2;
        char *s = b->s == b->inl ? malloc(cap) : realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return NULL;
        }
        if (b->s == b->inl) memcpy(s, b->inl, b->n);
        b->s = s;
        b->cap = cap;
    }
    return b->s + b->n;
}

static int tb_put(tbuf *b, const char *s, size_t k)
{
    if (k > 1 && budget_spend(&b->g, k, b->err, sizeof(b->err)) < 0) return -1;
    char *o = tb_room(b, k);
    if (!o) return -1;
    memcpy(o, s, k);
    b->n += k;
    return 0;
}

/* Strings longer than this are escaped a piece at a time, so the room
 * reserved for escaping (six bytes a byte) stays small. */
#define TB_PIECE 4096

static int tb_string(tbuf *b, const char *s, size_t k, char *err, size_t errlen)
{
    if (budget_spend(&b->g, k + 2, err, errlen) < 0) return -1;
    if (k <= TB_PIECE) {
        char *o = tb_room(b, 6 * k + 2);
        if (!o) return -1;
        size_t w = sg_json_escape_utf8(s, k, o);
        if (!w) {
            snprintf(err, errlen, "a string is not valid UTF-8");
            return -1;
        }
        b->n += w;
        return 0;
    }
    if (tb_put(b, "\"", 1) < 0) return -1;
    while (k > 0) {
        size_t m = k > TB_PIECE ? TB_PIECE : k;
        /* end the piece on a character boundary (invalid UTF-8 is caught below) */
        for (int back = 0; m < k && back < 3 && ((unsigned char)s[m] & 0xC0) == 0x80; back++)
            m--;
        char *o = tb_room(b, 6 * m + 2);
        if (!o) return -1;
        size_t w = sg_json_escape_utf8(s, m, o);
        if (!w) {
            snprintf(err, errlen, "a string is not valid UTF-8");
            return -1;
        }
        memmove(o, o + 1, w - 2); /* without its quotes */
        b->n += w - 2;
        s += m;
        k -= m;
        if (k && (++b->g.ticks & 63) == 0 && budget_spend(&b->g, 0, err, errlen) < 0) return -1;
    }
    return tb_put(b, "\"", 1);
}

static int to_text(lua_State *L, int idx, int depth, tbuf *b, char *err, size_t errlen);

int sg_lua_raw_field(lua_State *L, int t, const char *k)
{
    t = lua_absindex(L, t);
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

static int raw_is_nil(lua_State *L, int t, const char *k)
{
    int nil = sg_lua_raw_field(L, t, k) == LUA_TNIL;
    lua_pop(L, 1);
    return nil;
}

static int is_lazy_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &lazy_key;
}

/* A table as a JSON array or object; lazy: metadata still as text. */
static int table_text(lua_State *L, int idx, int depth, tbuf *b, const char *lazy, size_t lazy_n,
                      char *err, size_t errlen)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    size_t count = 0;
    /* no t[1]: not a list, so an object (or an error the loop reports) */
    int string_keys = lazy != NULL || n == 0;
    /* a table whose first key is a string is an object (or an error, which
     * the loop below reports): no need to count its keys first */
    if (!string_keys) {
        lua_pushnil(L);
        if (lua_next(L, idx)) {
            string_keys = lua_type(L, -2) == LUA_TSTRING || is_lazy_key(L, -2);
            lua_pop(L, 2);
        }
    }
    if (!string_keys) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (!is_lazy_key(L, -2)) count++;
            if (lua_type(L, -2) == LUA_TSTRING) string_keys = 1;
            lua_pop(L, 1);
        }
    }
    if (n > 0 && (size_t)n == count && !string_keys) {
        if (tb_put(b, "[", 1) < 0) return -1;
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1 && tb_put(b, ",", 1) < 0) return -1;
            lua_rawgeti(L, idx, i);
            int rc = to_text(L, -1, depth + 1, b, err, errlen);
            lua_pop(L, 1);
            if (rc < 0) return -1;
        }
        return tb_put(b, "]", 1);
    }
    if (tb_put(b, "{", 1) < 0) return -1;
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (is_lazy_key(L, -2)) {
            lua_pop(L, 1);
            continue;
        }
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "a table mixes list items and named keys");
            lua_pop(L, 2);
            return -1;
        }
        size_t k;
        const char *key = lua_tolstring(L, -2, &k);
        if ((!first && tb_put(b, ",", 1) < 0) || tb_string(b, key, k, err, errlen) < 0 ||
            tb_put(b, ":", 1) < 0 || to_text(L, -1, depth + 1, b, err, errlen) < 0) {
            lua_pop(L, 2);
            return -1;
        }
        first = 0;
        lua_pop(L, 1);
    }
    if (lazy && ((!first && tb_put(b, ",", 1) < 0) || tb_put(b, "\"metadata\":", 11) < 0 ||
                 tb_put(b, lazy, lazy_n) < 0))
        return -1;
    return tb_put(b, "}", 1);
}

static int to_text(lua_State *L, int idx, int depth, tbuf *b, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    /* every value costs a byte at least; strings count their length below */
    if (budget_spend(&b->g, 1, err, errlen) < 0) return -1;
    if (depth > JSON_MAX_DEPTH) {
        snprintf(err, errlen, "nested deeper than %d levels (a cycle?)", JSON_MAX_DEPTH);
        return -1;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return tb_put(b, "null", 4);
    case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? tb_put(b, "true", 4) : tb_put(b, "false", 5);
    case LUA_TNUMBER: {
        char num[40];
        size_t k;
        if (lua_isinteger(L, idx)) {
            k = sg_fmt_int((long long)lua_tointeger(L, idx), num);
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                snprintf(err, errlen, "NaN and infinity have no JSON form");
                return -1;
            }
            k = (size_t)snprintf(num, sizeof(num), "%.17g", d);
            if (!strpbrk(num, ".eE")) { /* a real stays a real, as jansson writes it */
                memcpy(num + k, ".0", 3);
                k += 2;
            }
        }
        return tb_put(b, num, k);
    }
    case LUA_TSTRING: {
        size_t k;
        const char *s = lua_tolstring(L, idx, &k);
        return tb_string(b, s, k, err, errlen);
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &null_sentinel) return tb_put(b, "null", 4);
        break;
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4)) {
            snprintf(err, errlen, "too deep");
            return -1;
        }
        /* an update whose metadata is still text: the text goes out as
         * it is, with no decoding and encoding again */
        const char *lazy = NULL;
        size_t lazy_n = 0;
        /* only updates hold the hidden block, and they keep their (protected) metatable */
        lazy_rec *r = NULL;
        if (lua_getmetatable(L, idx)) {
            lua_pop(L, 1);
            r = lazy_rec_of(L, idx);
        }
        if (r) {
            for (int f = 0; f < LAZY_METADATA; f++)
                lazy_fill(L, idx, r, f);
            if (!(r->done & 1u << LAZY_METADATA) && r->len[LAZY_METADATA] != LAZY_ABSENT &&
                raw_is_nil(L, idx, "metadata")) {
                lazy = lazy_data(r, LAZY_METADATA);
                lazy_n = r->len[LAZY_METADATA];
            } else {
                lazy_fill(L, idx, r, LAZY_METADATA);
            }
        }
        return table_text(L, idx, depth, b, lazy, lazy_n, err, errlen);
    }
    default: break;
    }
    snprintf(err, errlen, "a %s has no JSON form", luaL_typename(L, idx));
    return -1;
}

/* The value at idx as JSON text in b; 0, or -1 with err. */
static int encode(lua_State *L, int idx, tbuf *b, char *err, size_t errlen)
{
    tb_init(b, L);
    b->err[0] = 0;
    int rc = to_text(L, idx, 0, b, err, errlen);
    if (rc < 0 && b->oom) snprintf(err, errlen, "out of memory");
    else if (rc < 0 && b->err[0]) snprintf(err, errlen, "%s", b->err);
    return rc;
}

char *sg_lua_to_json_text(lua_State *L, int idx, size_t *len, char *err, size_t errlen)
{
    tbuf b;
    if (encode(L, idx, &b, err, errlen) < 0) {
        tb_free(&b);
        return NULL;
    }
    char *s;
    if (b.s == b.inl) { /* 64 bytes to spare: callers append a little */
        s = malloc(b.n + 65);
        if (s) memcpy(s, b.inl, b.n);
    } else {
        /* room for the NUL: a text that fills its buffer exactly moves it
         * (found by the luajson fuzzer: s was taken before the move) */
        s = tb_room(&b, 1) ? b.s : NULL;
    }
    if (!s) {
        tb_free(&b);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s[b.n] = 0;
    *len = b.n;
    return s;
}

/* ---- host API ---- */

static int api_log(lua_State *L)
{
    sg_sandbox *sb = from_state(L);
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    int lv = sg_log_parse_level(level);
    if (lv < 0) return luaL_error(L, "log level must be debug, info, warn or error");
    sg_log(lv, "plugin_log", "plugin=%s msg=%s", sb->name, sg_log_q(msg));
    return 0;
}

/* print(...) logs its arguments, tab-separated, as one plugin_print line.
 * Each string goes into the buffer through luaL_addvalue, which knows where
 * the buffer's own stack slot is (luaL_addstring + lua_pop would remove the
 * buffer's box instead of the string once the text outgrows LUAL_BUFFERSIZE). */
static int api_print(lua_State *L)
{
    sg_sandbox *sb = from_state(L);
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    sg_log(SG_LOG_INFO, "plugin_print", "plugin=%s msg=%s", sb->name, sg_log_q(lua_tostring(L, -1)));
    return 0;
}

static int api_now_ms(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sg_clock_running_wall_ms());
    return 1;
}

static int push_tbuf(lua_State *L)
{
    const tbuf *b = lua_touserdata(L, 1);
    lua_pushlstring(L, b->s, b->n);
    return 1;
}

static int api_json_encode(lua_State *L)
{
    char err[200];
    luaL_checkany(L, 1);
    tbuf b;
    if (encode(L, 1, &b, err, sizeof(err)) < 0) {
        tb_free(&b);
        sg_sandbox_check_budget(L); /* over the call's budget: that error */
        return luaL_error(L, "json.encode: %s", err);
    }
    /* the string may be refused (the memory cap): push it under a pcall
     * of our own, so the buffer is freed before the error goes on */
    lua_pushcfunction(L, push_tbuf);
    lua_pushlightuserdata(L, &b);
    int rc = lua_pcall(L, 1, 1, 0);
    tb_free(&b);
    if (rc != LUA_OK) return lua_error(L);
    return 1;
}

static int api_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    json_error_t je;
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY, &je);
    if (!j) {
        lua_pushnil(L);
        lua_pushfstring(L, "json.decode: %s at line %d column %d", je.text, je.line, je.column);
        return 2;
    }
    sg_lua_push_json(L, j);
    json_decref(j);
    return 1;
}

/* statusgw.refuse(status, code, message [, retry_after_s]): what a filter
 * returns to refuse a publish. The producer is answered with the status
 * (a 4xx; 429 carries Retry-After) and {"error":{"code","message"}}; the
 * update is not published. */
static char refusal_mt_key;

static int api_refuse(lua_State *L)
{
    lua_Integer status = luaL_checkinteger(L, 1);
    const char *code = luaL_checkstring(L, 2);
    size_t ml;
    const char *msg = luaL_optlstring(L, 3, "refused by a plugin", &ml);
    lua_Integer retry = luaL_optinteger(L, 4, 0);
    luaL_argcheck(L, status >= 400 && status <= 499 && status != 401 && status != 407, 1,
                  "a refusal is a 4xx status (not 401 or 407)");
    size_t cl = strlen(code);
    int code_ok = cl >= 1 && cl <= 47;
    for (size_t i = 0; code_ok && i < cl; i++)
        code_ok = (code[i] >= 'a' && code[i] <= 'z') || (code[i] >= '0' && code[i] <= '9') || code[i] == '_';
    luaL_argcheck(L, code_ok, 2, "a code is 1-47 characters of [a-z0-9_]");
    luaL_argcheck(L, ml < 200, 3, "a message is at most 199 bytes");
    luaL_argcheck(L, retry >= 0 && retry <= 86400, 4, "retry_after is 0 to 86400 seconds");
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "code");
    lua_pushlstring(L, msg, ml);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, retry);
    lua_setfield(L, -2, "retry_after");
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &refusal_mt_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &refusal_mt_key);
    }
    lua_setmetatable(L, -2);
    return 1;
}

int sg_lua_is_refusal(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &refusal_mt_key);
    int is = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return is;
}

static int api_emit(lua_State *L)
{
    sg_sandbox *sb = from_state(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[240];
    json_t *u = sg_lua_to_json(L, 1, err, sizeof(err));
    if (!u) {
        lua_pushnil(L);
        lua_pushfstring(L, "emit: %s", err);
        return 2;
    }
    int rc = sb->emit ? sb->emit(sb->emit_arg, u, sb->name, err, sizeof(err)) : -1;
    if (!sb->emit) snprintf(err, sizeof(err), "emit is not available here");
    json_decref(u);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* string.lower and string.upper without a tolower() call per byte: the
 * gateway runs in the C locale, where only A-Z and a-z change, so this is
 * what lstrlib computes. Filters lower whole updates to probe them. */
static int case_map(lua_State *L, unsigned char from, unsigned char bit_on)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((unsigned char)(c - from) < 26u) c = bit_on ? (c | 0x20) : (c & (unsigned char)~0x20);
        o[i] = (char)c;
    }
    luaL_pushresultsize(&b, n);
    return 1;
}

static int str_lower(lua_State *L)
{
    return case_map(L, 'A', 1);
}

static int str_upper(lua_State *L)
{
    return case_map(L, 'a', 0);
}

/* setmetatable without finalizers: a __gc runs when the collector decides,
 * which can be after a failed call or in lua_close, outside any call's
 * budget, so a plugin could hang the gateway from there. Lua marks an
 * object for finalization only when its metatable has __gc as it is set,
 * so refusing such metatables here is enough. */
static int api_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        int t = sg_lua_raw_field(L, 2, "__gc");
        lua_pop(L, 1);
        if (t != LUA_TNIL) return luaL_error(L, "setmetatable: __gc finalizers are not available to plugins");
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1)); /* the base library's */
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

static void open_libs(lua_State *L)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_TABLIBNAME, luaopen_table}, {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math}, {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_OSLIBNAME, luaopen_os},     {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, api_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    /* no files, programs, bytecode or reflection */
    static const char *gone[] = {"dofile", "loadfile", "load", "require", "collectgarbage", NULL};
    for (int i = 0; gone[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, gone[i]);
    }
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pushcfunction(L, str_lower);
    lua_setfield(L, -2, "lower");
    lua_pushcfunction(L, str_upper);
    lua_setfield(L, -2, "upper");
    lua_pop(L, 1);
    /* pattern matching that the call's time budget can stop (lpattern.c) */
    sg_lua_open_patterns(L);
    /* os keeps time, clock and date only */
    lua_createtable(L, 0, 3);
    lua_getglobal(L, "os");
    static const char *keep[] = {"time", "clock", "date", NULL};
    for (int i = 0; keep[i]; i++) {
        lua_getfield(L, -1, keep[i]);
        lua_setfield(L, -3, keep[i]);
    }
    lua_pop(L, 1);
    lua_setglobal(L, "os");
    lua_pushcfunction(L, api_print);
    lua_setglobal(L, "print");

    lua_createtable(L, 0, 4);
    static const luaL_Reg api[] = {{"log", api_log}, {"now_ms", api_now_ms}, {"emit", api_emit},
                                   {"refuse", api_refuse}, {NULL, NULL}};
    luaL_setfuncs(L, api, 0);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, api_json_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, api_json_decode);
    lua_setfield(L, -2, "decode");
    lua_pushlightuserdata(L, &null_sentinel);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
    lua_setglobal(L, "statusgw");
}

sg_sandbox *sg_sandbox_new(const char *name, const sg_sandbox_limits *lim, sg_emit_fn emit,
                           void *emit_arg)
{
    sg_sandbox *sb = calloc(1, sizeof(*sb));
    if (!sb) return NULL;
    sb->lim = *lim;
    sb->name = strdup(name);
    sb->emit = emit;
    sb->emit_arg = emit_arg;
    sb->L = lua_newstate(sb_alloc, sb);
    if (!sb->L || !sb->name) {
        sg_sandbox_free(sb);
        return NULL;
    }
    open_libs(sb->L);
    /* plugin calls make short-lived tables (the update, its metadata, the
     * result); the generational collector frees them young and cheaply */
    lua_gc(sb->L, LUA_GCGEN, 0, 0);
    start_watchdog();
    sb->watched = 1;
    return sb;
}

void sg_sandbox_free(sg_sandbox *sb)
{
    if (!sb) return;
    if (sb->L) lua_close(sb->L);
    pool_drain(sb);
    if (sb->watched) stop_watchdog();
    free(sb->name);
    free(sb);
}

int sg_sandbox_load(sg_sandbox *sb, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return SG_SB_ERROR;
    }
    char *src = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *n = realloc(src, cap);
            if (!n) break;
            src = n;
        }
        size_t r = fread(src + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    fclose(f);
    char chunk[300];
    const char *base = strrchr(path, '/');
    snprintf(chunk, sizeof(chunk), "@%s", base ? base + 1 : path);
    sb->in_call = 1; /* loading a huge file counts against the cap */
    int rc = luaL_loadbufferx(sb->L, src ? src : "", len, chunk, "t");
    sb->in_call = 0;
    free(src);
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(sb->L, -1));
        lua_pop(sb->L, 1);
        return rc == LUA_ERRMEM ? SG_SB_OOM : SG_SB_ERROR;
    }
    int st = sg_sandbox_call(sb, 0, 1);
    if (st != SG_SB_OK) snprintf(err, errlen, "%s", sb->error);
    return st;
}
