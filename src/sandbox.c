#include "sandbox.h"

#include "clock.h"
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
    int every;            /* instructions between hook calls now */
    size_t peak;          /* the largest mem during a profiled call */
    uint64_t deadline_ns;
    char error[512];
    void *pool[POOL_CLASSES]; /* free small blocks, linked through their first word */
    size_t pooled;            /* bytes in the pool */
};


/* The sandbox whose call is running, for the watchdog. */
static sg_sandbox *volatile running;

static sg_sandbox_profile *profile; /* statusgw plugin run: what calls cost */

void sg_sandbox_set_profile(sg_sandbox_profile *p)
{
    profile = p;
}


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
        sb->every = HOOK_EVERY;
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
    if (sb->mem > sb->peak) sb->peak = sb->mem;
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
 * budget as they go (luajson.c): the output may reach what is left of the plugin's
 * memory cap, and the work runs under the call's deadline (or, when the
 * host encodes after the call, a deadline of timeout_ms of its own). Over
 * either, encoding stops there, and inside a call the call is over its
 * budget as if Lua had run out (a pcall in the plugin cannot carry on). */
void sg_budget_init(sg_budget *g, lua_State *L)
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
int sg_budget_spend(sg_budget *g, size_t n, char *err, size_t errlen)
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
        sb->steps += sb->every;
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
    if (profile) { /* counted from the first instruction */
        sb->hooked = 1;
        sb->every = SG_PROFILE_EVERY;
        sb->peak = sb->mem;
        lua_sethook(L, sb_hook, LUA_MASKCOUNT, SG_PROFILE_EVERY);
    }
    running = sb;
    int rc = lua_pcall(L, nargs, nresults, 0);
    running = NULL;
    sb->in_call = 0;
    if (profile) {
        profile->calls++;
        profile->ns += sg_clock_running_ns() - start_ns;
        profile->instructions += sb->steps;
        if (sb->peak > profile->peak_memory) profile->peak_memory = sb->peak;
    }
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

/* ---- the libraries a plugin gets ---- */

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
}

sg_sandbox *sg_sandbox_new(const char *name, const sg_sandbox_limits *lim)
{
    sg_sandbox *sb = calloc(1, sizeof(*sb));
    if (!sb) return NULL;
    sb->lim = *lim;
    sb->name = strdup(name);
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


int sg_lua_raw_field(lua_State *L, int t, const char *k)
{
    t = lua_absindex(L, t);
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}
