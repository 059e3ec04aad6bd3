/* statusgw_plugin: the plugin host's C code as a Lua module, so plugin
 * specs run plugins exactly as the gateway does (same sandbox, limits,
 * JSON conversion, builder merge rules aside). */
#include "config.h"
#include "plugin.h"
#include "log.h"
#include "sandbox.h"
#include "jtext.h"
#include "status.h"
#include "hostapi.h"
#include "luajson.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#define HOST_MT "statusgw.plugin_host"

typedef struct host {
    sg_config cfg;
    sg_plugins *pm;
    json_t *emitted;
} host;

static int on_emit(void *arg, json_t *u, const char *plugin, char *err, size_t errlen)
{
    host *h = arg;
    sg_limits lim = {h->cfg.max_text, h->cfg.max_metadata};
    sg_error e;
    if (sg_draft_check_json(u, &lim, &e) < 0) {
        snprintf(err, errlen, "emit: %s (%s)", e.message, e.code);
        return -1;
    }
    json_t *copy = json_deep_copy(u);
    json_object_set_new(copy, "__plugin", json_string(plugin));
    json_array_append_new(h->emitted, copy);
    return 0;
}

static json_t *arg_json(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return NULL;
    char err[200];
    json_t *j = sg_lua_to_json(L, idx, err, sizeof(err));
    if (!j) luaL_error(L, "argument %d: %s", idx, err);
    return j;
}


/* host(dir, {plugins = {...}, plugin_max_instructions = N, ...}) */
static int l_host(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    host *h = lua_newuserdatauv(L, sizeof(*h), 0);
    memset(h, 0, sizeof(*h));
    luaL_setmetatable(L, HOST_MT);
    char err[200];
    sg_config_load(&h->cfg, NULL, err, sizeof(err));
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "plugins");
        if (lua_istable(L, -1)) h->cfg.plugins = sg_lua_to_json(L, -1, err, sizeof(err));
        lua_pop(L, 1);
        struct { const char *k; void *p; int sz; } ints[] = {
            {"plugin_max_instructions", &h->cfg.plugin_instructions, 0},
            {"plugin_timeout_ms", &h->cfg.plugin_timeout_ms, 0},
            {"plugin_max_failures", &h->cfg.plugin_max_failures, 0},
            {"plugin_memory_bytes", &h->cfg.plugin_memory, 1}};
        for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
            if (lua_getfield(L, 2, ints[i].k) == LUA_TNUMBER) {
                if (ints[i].sz) *(size_t *)ints[i].p = (size_t)lua_tointeger(L, -1);
                else *(int *)ints[i].p = (int)lua_tointeger(L, -1);
            }
            lua_pop(L, 1);
        }
    }
    h->emitted = json_array();
    h->pm = sg_plugins_new(dir, &h->cfg, NULL, on_emit, h);
    /* quiet = true: a load failure is the caller's to report (plugin()) */
    int level = sg_log_level;
    if (lua_istable(L, 2) && lua_getfield(L, 2, "quiet") == LUA_TBOOLEAN && lua_toboolean(L, -1))
        sg_log_level = SG_LOG_ERROR + 1;
    if (lua_istable(L, 2)) lua_pop(L, 1);
    json_t *report = sg_plugins_reload(h->pm);
    sg_log_level = level;
    sg_lua_push_json(L, report);
    json_decref(report);
    return 2; /* host, load report */
}

static host *check_host(lua_State *L)
{
    return luaL_checkudata(L, 1, HOST_MT);
}

static int l_gc(lua_State *L)
{
    host *h = check_host(L);
    sg_plugins_free(h->pm);
    h->pm = NULL;
    json_decref(h->emitted);
    h->emitted = NULL;
    sg_config_free(&h->cfg);
    return 0;
}

static int l_reload(lua_State *L)
{
    host *h = check_host(L);
    json_t *r = sg_plugins_reload(h->pm);
    sg_lua_push_json(L, r);
    json_decref(r);
    return 1;
}

/* A Lua value as JSON text (a new string), or a Lua error. */
static char *arg_text(lua_State *L, int idx, size_t *len)
{
    char err[200];
    char *s = sg_lua_to_json_text(L, idx, len, err, sizeof(err));
    if (!s) luaL_error(L, "argument %d: %s", idx, err);
    return s;
}

/* An update table as a validated draft, or a Lua error. */
static void arg_draft(lua_State *L, host *h, int idx, sg_draft *d)
{
    size_t n;
    char *s = arg_text(L, idx, &n);
    sg_limits lim = {h->cfg.max_text, h->cfg.max_metadata};
    sg_error e;
    int rc = sg_draft_parse(s, n, &lim, d, &e);
    free(s);
    if (rc < 0) luaL_error(L, "argument %d is not a valid update: %s", idx, e.message);
}

/* build(name, args, update) -> "ok"|"failed"|"unknown", metadata, text.
 * The update needs no category: "info" stands in. */
static int l_build(lua_State *L)
{
    host *h = check_host(L);
    const char *name = luaL_checkstring(L, 2);
    sg_draft d;
    memset(&d, 0, sizeof(d));
    memcpy(d.conv_id, "system", 7);
    d.conv_len = 6;
    d.category = sg_category_index("info", 4);
    d.builder = name;
    char *args = NULL, *own = NULL;
    if (!lua_isnoneornil(L, 3)) d.args = args = arg_text(L, 3, &d.args_len);
    if (lua_istable(L, 4)) {
        if (lua_getfield(L, 4, "text") == LUA_TSTRING) d.text = lua_tolstring(L, -1, &d.text_len);
        if (lua_getfield(L, 4, "metadata") == LUA_TTABLE) d.metadata = own = arg_text(L, -1, &d.metadata_len);
    }
    sg_built b;
    int rc = sg_plugins_build(h->pm, &d, &b, NULL);
    free(args);
    free(own);
    lua_pushstring(L, rc == SG_BUILD_OK ? "ok" : rc == SG_BUILD_FAILED ? "failed" : "unknown");
    if (b.block) sg_lua_push_json_text(L, b.block, b.mlen); else lua_pushnil(L);
    if (b.has_text) lua_pushlstring(L, b.block + b.mlen, b.tlen); else lua_pushnil(L);
    free(b.block);
    return 3;
}

/* filter(update) -> true, update | false, dropped_by [, refusal]:
 * refusal is {status, code, message, retry_after} when the plugin refused */
static int l_filter(lua_State *L)
{
    host *h = check_host(L);
    sg_draft d, *dp = &d;
    arg_draft(L, h, 2, &d);
    const char *by = NULL;
    char keep = 1;
    sg_error refusal = {0};
    sg_plugins_filter_many(h->pm, &dp, &keep, &by, &refusal, 1, NULL, NULL);
    lua_pushboolean(L, keep);
    if (keep) sg_plugins_push_draft(L, &d); else lua_pushstring(L, by);
    sg_draft_free(&d);
    if (keep || !refusal.status) return 2;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, refusal.status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, refusal.code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, refusal.message);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, refusal.retry_after);
    lua_setfield(L, -2, "retry_after");
    return 3;
}

static int l_subscriber_filter(lua_State *L)
{
    host *h = check_host(L);
    const char *name = luaL_checkstring(L, 2);
    json_t *u = arg_json(L, 3), *args = arg_json(L, 4);
    lua_pushboolean(L, sg_plugins_subscriber_filter(h->pm, name, args, u));
    json_decref(u);
    json_decref(args);
    return 1;
}

static int l_observe(lua_State *L)
{
    host *h = check_host(L);
    const char *conv = luaL_checkstring(L, 2);
    sg_draft d;
    arg_draft(L, h, 3, &d);
    sg_update *u = sg_update_new(&d, 1, 0);
    sg_draft_free(&d);
    if (u) sg_plugins_observe(h->pm, conv, u, NULL);
    sg_update_unref(u);
    return 0;
}

static int l_forget(lua_State *L)
{
    host *h = check_host(L);
    sg_plugins_forget(h->pm, luaL_checkstring(L, 2));
    return 0;
}

/* summarize() -> the updates emitted so far (and clears them) */
static int l_summarize(lua_State *L)
{
    host *h = check_host(L);
    sg_plugins_summarize(h->pm);
    sg_lua_push_json(L, h->emitted);
    json_array_clear(h->emitted);
    return 1;
}

static int l_webhook_match(lua_State *L)
{
    host *h = check_host(L);
    json_t *u = arg_json(L, 3);
    lua_pushboolean(L, sg_plugins_webhook_match(h->pm, luaL_checkstring(L, 2), u));
    json_decref(u);
    return 1;
}

static int l_webhook_format(lua_State *L)
{
    host *h = check_host(L);
    json_t *ups = arg_json(L, 3);
    char *body;
    json_t *headers;
    if (sg_plugins_webhook_format(h->pm, luaL_checkstring(L, 2), ups, &body, &headers) < 0) {
        json_decref(ups);
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, body);
    sg_lua_push_json(L, headers);
    free(body);
    json_decref(headers);
    json_decref(ups);
    return 2;
}

static int l_admin(lua_State *L)
{
    host *h = check_host(L);
    json_t *a = sg_plugins_admin(h->pm);
    sg_lua_push_json(L, a);
    json_decref(a);
    return 1;
}

/* check(path) -> description | nil, "file:line: message" */
static int l_check(lua_State *L)
{
    sg_config cfg;
    char err[600];
    sg_config_load(&cfg, NULL, err, sizeof(err));
    json_t *d = sg_plugin_check(luaL_checkstring(L, 1), &cfg, err, sizeof(err));
    sg_config_free(&cfg);
    if (!d) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    sg_lua_push_json(L, d);
    json_decref(d);
    return 1;
}

/* simd(false): the word search's portable loop, so specs cover both. */
static int l_simd(lua_State *L)
{
    sg_wordset_simd(lua_toboolean(L, 1));
    return 0;
}

/* The category table is the library's own: freed when Lua unloads it, so
 * the sanitizer's leak check does not find it orphaned. */
__attribute__((destructor)) static void unload(void)
{
    sg_categories_free();
}

int luaopen_statusgw_plugin(lua_State *L)
{
    char err[128];
    sg_categories_init(NULL, err, sizeof(err));
    const char *level = getenv("STATUSGW_LOG_LEVEL"); /* statusgw plugin test: warn */
    if (level && sg_log_parse_level(level) >= 0) sg_log_level = sg_log_parse_level(level);
    static const luaL_Reg methods[] = {{"reload", l_reload},
                                       {"build", l_build},
                                       {"filter", l_filter},
                                       {"subscriber_filter", l_subscriber_filter},
                                       {"observe", l_observe},
                                       {"forget", l_forget},
                                       {"summarize", l_summarize},
                                       {"webhook_match", l_webhook_match},
                                       {"webhook_format", l_webhook_format},
                                       {"admin", l_admin},
                                       {NULL, NULL}};
    luaL_newmetatable(L, HOST_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"host", l_host}, {"check", l_check}, {"simd", l_simd}, {NULL, NULL}};
    luaL_newlib(L, fns);
    sg_host_push_json(L); /* json.encode/decode, as plugins have them: for specs that read a body */
    lua_setfield(L, -2, "json");
    /* plugin(path [, config]): a host of the one plugin file, on (unless
     * config.enabled is false) with config as its section; a load error is
     * raised with its file and line */
    static const char helper[] =
        "local host = ...\n"
        "return function(path, config)\n"
        "  local name = type(path) == 'string' and path:match('([^/]+)%.lua$')\n"
        "  if not name then error('plugin(path [, config]): path names a .lua file', 2) end\n"
        "  local section = {}\n"
        "  for k, v in pairs(config or {}) do section[k] = v end\n"
        "  if section.enabled == nil then section.enabled = true end\n"
        "  local h, report = host(path, { plugins = { [name] = section }, quiet = true })\n"
        "  if #report.failed > 0 then error(report.failed[1].error, 2) end\n"
        "  return h\n"
        "end\n";
    if (luaL_loadbuffer(L, helper, sizeof(helper) - 1, "=statusgw_plugin.plugin") != LUA_OK) return lua_error(L);
    lua_pushcfunction(L, l_host);
    lua_call(L, 1, 1);
    lua_setfield(L, -2, "plugin");
    return 1;
}
