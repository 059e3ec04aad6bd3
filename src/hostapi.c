/* The host API a plugin sees: print, and the statusgw table (log, now_ms,
 * emit, refuse, json.encode, json.decode, json.null). */
#include "hostapi.h"

#include "clock.h"
#include "log.h"
#include "luajson.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Who the state belongs to: registry[&host_key], a full userdata. */
typedef struct host {
    sg_emit_fn emit;
    void *emit_arg;
    char name[128];
} host;

static char host_key;

static host *host_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &host_key);
    host *h = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the registry keeps it */
    return h;
}


static int api_log(lua_State *L)
{
    host *sb = host_of(L);
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
    host *sb = host_of(L);
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

/* statusgw.truncate(s, max [, marker]): s when it is at most max bytes,
 * else its longest prefix that fits in max bytes with marker ("..." by
 * default) after it, never cut inside a UTF-8 character: what a forwarder
 * needs for a destination's field limits. */
static int api_truncate(lua_State *L)
{
    size_t n, ml;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_Integer max = luaL_checkinteger(L, 2);
    const char *marker = luaL_optlstring(L, 3, "...", &ml);
    luaL_argcheck(L, max >= 0, 2, "must not be negative");
    if ((lua_Integer)n <= max) {
        lua_settop(L, 1);
        return 1;
    }
    if ((lua_Integer)ml > max) ml = (size_t)max; /* room for part of the marker only */
    size_t keep = (size_t)max - ml;
    while (keep > 0 && ((unsigned char)s[keep] & 0xC0) == 0x80) keep--;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, s, keep);
    luaL_addlstring(&b, marker, ml);
    luaL_pushresult(&b);
    return 1;
}

static int api_json_encode(lua_State *L)
{
    char err[200];
    luaL_checkany(L, 1);
    if (sg_lua_push_json_string(L, 1, err, sizeof(err)) < 0) {
        sg_sandbox_check_budget(L); /* over the call's budget: that error */
        return luaL_error(L, "json.encode: %s", err);
    }
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

void sg_host_push_json(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, api_json_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, api_json_decode);
    lua_setfield(L, -2, "decode");
    sg_lua_push_null(L);
    lua_setfield(L, -2, "null");
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
    host *sb = host_of(L);
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

int sg_host_open(lua_State *L, const char *name, sg_emit_fn emit, void *emit_arg)
{
    host *h = lua_newuserdatauv(L, sizeof(*h), 0);
    if (!h) return -1;
    h->emit = emit;
    h->emit_arg = emit_arg;
    snprintf(h->name, sizeof(h->name), "%s", name);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &host_key);
    lua_pushcfunction(L, api_print);
    lua_setglobal(L, "print");
    lua_createtable(L, 0, 5);
    static const luaL_Reg api[] = {{"log", api_log}, {"now_ms", api_now_ms}, {"emit", api_emit},
                                   {"refuse", api_refuse}, {"truncate", api_truncate}, {NULL, NULL}};
    luaL_setfuncs(L, api, 0);
    sg_host_push_json(L);
    lua_setfield(L, -2, "json");
    lua_setglobal(L, "statusgw");
    return 0;
}
