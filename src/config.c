#include "config.h"

#include "log.h"
#include "sandbox.h"
#include "luajson.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Integer keys of the config table: name, where it goes, and its range. */
struct int_key {
    const char *name;
    size_t off;
    int is_size;
    long long min, max;
};

#define IK(n, f, lo, hi) {n, offsetof(sg_config, f), 0, lo, hi}
#define SK(n, f, lo, hi) {n, offsetof(sg_config, f), 1, lo, hi}

static const struct int_key int_keys[] = {
    IK("batch_size", batch_size, 1, 10000),
    IK("flush_interval_ms", flush_ms, 1, 60000),
    IK("max_conversations", max_conversations, 1, 10000000),
    IK("cleanup_interval_s", cleanup_interval_s, 1, 86400),
    IK("conversation_ttl_s", conversation_ttl_s, 1, 86400 * 30),
    IK("history_size", history_size, 1, 1000000),
    IK("max_pending_updates", max_pending, 1, 100000000),
    SK("output_cap_bytes", output_cap, 1024, 1LL << 32),
    SK("max_body_bytes", max_body, 1024, 1LL << 30),
    SK("max_header_bytes", max_header, 1024, 1 << 20),
    SK("max_text_bytes", max_text, 1, 1 << 20),
    SK("max_metadata_bytes", max_metadata, 2, 1 << 24),
    IK("max_bulk_items", max_bulk_items, 1, 1000000),
    IK("idempotency_window_s", idempotency_window_s, 1, 86400),
    IK("sse_heartbeat_s", sse_heartbeat_s, 1, 3600),
    IK("sse_retry_ms", sse_retry_ms, 0, 3600000),
    IK("sse_max_conversations", sse_max_conversations, 1, 1024),
    IK("longpoll_window_ms", longpoll_window_ms, 100, 60000),
    IK("longpoll_timeout_s", longpoll_timeout_s, 1, 3600),
    IK("http_idle_timeout_s", http_idle_s, 1, 86400),
    IK("http_header_timeout_s", http_header_timeout_s, 1, 3600),
    IK("http_body_timeout_s", http_body_timeout_s, 1, 86400),
    IK("shutdown_timeout_ms", shutdown_timeout_ms, 0, 600000),
    IK("ws_idle_timeout_s", ws_idle_s, 1, 86400),
    SK("ws_max_message_bytes", ws_max_message, 128, 1 << 24),
    SK("plugin_memory_bytes", plugin_memory, 65536, 1LL << 32),
    IK("plugin_max_instructions", plugin_instructions, 1000, 2000000000),
    IK("plugin_timeout_ms", plugin_timeout_ms, 1, 60000),
    IK("plugin_max_failures", plugin_max_failures, 1, 1000000),
    IK("max_connections", max_connections, 1, 10000000),
    IK("max_connections_per_ip", max_connections_per_ip, 0, 10000000),
    IK("max_channels_per_socket", max_channels_per_socket, 1, 100000),
    IK("store_delay_ms", store_delay_ms, 0, 60000),
    SK("cache_bytes", cache_bytes, 65536, 1LL << 40),
};

/* ---- names and paths ---- */

/* Edit distance of two short names, a swap of two letters counting one
 * (0 when equal); 99 for long ones. */
static int distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < d[i][j])
                d[i][j] = d[i - 2][j - 2] + 1; /* two letters swapped */
        }
    return d[la][lb];
}

const char *sg_config_closest(const char *name, const char *const *known)
{
    const char *best = NULL;
    int bd = 99;
    for (int i = 0; known[i]; i++) {
        int dd = distance(name, known[i]);
        if (dd < bd) {
            bd = dd;
            best = known[i];
        }
    }
    size_t n = strlen(name);
    return bd <= (n < 5 ? 1 : n < 9 ? 2 : 3) ? best : NULL;
}

int sg_config_check_keys(json_t *obj, const char *where, const char *const *known, char *err,
                         size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int found = 0;
        for (int i = 0; known[i] && !found; i++)
            found = strcmp(k, known[i]) == 0;
        if (found) continue;
        const char *near = sg_config_closest(k, known);
        if (near)
            snprintf(err, errlen, "%s: unknown key '%s' (did you mean '%s'?)", where, k, near);
        else {
            char list[300] = "";
            size_t o = 0;
            for (int i = 0; known[i] && o < sizeof(list) - 1; i++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", known[i]);
            snprintf(err, errlen, "%s: unknown key '%s' (known: %s)", where, k, list);
        }
        return -1;
    }
    return 0;
}

char *sg_config_resolve(const sg_config *c, const char *p)
{
    if (!p) return NULL;
    const char *slash = c->path ? strrchr(c->path, '/') : NULL;
    if (p[0] == '/' || !c->path) return strdup(p);
    if (!slash) return strdup(p); /* the config is in the working directory */
    size_t dl = (size_t)(slash - c->path);
    size_t n = dl + 1 + strlen(p) + 1;
    char *r = malloc(n);
    if (r) snprintf(r, n, "%.*s/%s", (int)dl, c->path, p);
    return r;
}

/* Tables that later modules read from the same file. */
static const char *table_keys[] = {"plugins", "webhooks", "security", "redis", NULL};

static void defaults(sg_config *c)
{
    memset(c, 0, sizeof(*c));
    sg_config_set_listen(c, SG_DEFAULT_LISTEN);
    c->plugins_dir = strdup("plugins");
    snprintf(c->store, sizeof(c->store), "memory");
    snprintf(c->store_sync, sizeof(c->store_sync), "normal");
    snprintf(c->engine, sizeof(c->engine), "local");
    c->cache_bytes = 64 << 20;
    c->store_path = strdup("statusgw.db");
    c->log_level = SG_LOG_INFO;
    c->batch_size = SG_DEFAULT_BATCH_SIZE;
    c->flush_ms = SG_DEFAULT_FLUSH_MS;
    c->max_conversations = SG_DEFAULT_MAX_CONVERSATIONS;
    c->cleanup_interval_s = SG_DEFAULT_CLEANUP_INTERVAL_S;
    c->conversation_ttl_s = SG_DEFAULT_CONVERSATION_TTL_S;
    c->history_size = SG_DEFAULT_HISTORY_SIZE;
    c->max_pending = SG_DEFAULT_MAX_PENDING;
    c->output_cap = SG_DEFAULT_OUTPUT_CAP;
    c->max_body = SG_DEFAULT_MAX_BODY;
    c->max_header = SG_DEFAULT_MAX_HEADER;
    c->max_text = SG_DEFAULT_MAX_TEXT;
    c->max_metadata = SG_DEFAULT_MAX_METADATA;
    c->max_bulk_items = SG_DEFAULT_MAX_BULK_ITEMS;
    c->idempotency_window_s = SG_DEFAULT_IDEMPOTENCY_WINDOW_S;
    c->sse_heartbeat_s = SG_DEFAULT_SSE_HEARTBEAT_S;
    c->sse_retry_ms = SG_DEFAULT_SSE_RETRY_MS;
    c->sse_max_conversations = SG_DEFAULT_SSE_MAX_CONVERSATIONS;
    c->longpoll_window_ms = 10000;
    c->longpoll_timeout_s = 30;
    c->http_idle_s = SG_DEFAULT_HTTP_IDLE_S;
    c->http_header_timeout_s = SG_DEFAULT_HTTP_HEADER_TIMEOUT_S;
    c->http_body_timeout_s = SG_DEFAULT_HTTP_BODY_TIMEOUT_S;
    c->shutdown_timeout_ms = SG_DEFAULT_SHUTDOWN_TIMEOUT_MS;
    c->ws_idle_s = SG_DEFAULT_WS_IDLE_S;
    c->ws_max_message = SG_DEFAULT_WS_MAX_MESSAGE;
    c->plugin_memory = SG_DEFAULT_PLUGIN_MEMORY;
    c->plugin_instructions = SG_DEFAULT_PLUGIN_INSTRUCTIONS;
    c->plugin_timeout_ms = SG_DEFAULT_PLUGIN_TIMEOUT_MS;
    c->plugin_max_failures = SG_DEFAULT_PLUGIN_MAX_FAILURES;
    c->max_connections = SG_DEFAULT_MAX_CONNECTIONS;
    c->max_connections_per_ip = SG_DEFAULT_MAX_CONNECTIONS_PER_IP;
    c->max_channels_per_socket = SG_DEFAULT_MAX_CHANNELS;
}

int sg_config_set_listen(sg_config *c, const char *addr)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr) return -1;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) return -1;
    size_t hl = colon - addr;
    if (addr[0] == '[' && hl > 2 && addr[hl - 1] == ']') { /* [::1]:4000 */
        addr++;
        hl -= 2;
    }
    free(c->listen_host);
    c->listen_host = strndup(addr, hl);
    c->listen_port = (int)port;
    return 0;
}

static int load_categories(sg_config *c, lua_State *L, char *err, size_t errlen)
{
    /* categories = { deploy = "Deployment steps", ... } or { "deploy", ... } */
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "categories must be a table of name = description");
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *name, *desc;
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
            name = lua_tostring(L, -2);
            desc = lua_tostring(L, -1);
        } else if (lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TSTRING) {
            name = lua_tostring(L, -1);
            desc = "";
        } else {
            snprintf(err, errlen, "categories: each entry must be name = \"description\"");
            lua_pop(L, 2);
            return -1;
        }
        size_t n = strlen(name);
        int ok = n > 0 && n <= 32;
        for (size_t i = 0; ok && i < n; i++)
            ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
                 name[i] == '_' || name[i] == '-';
        if (!ok) {
            snprintf(err, errlen,
                     "categories: name '%s' must be 1-32 characters of [a-z0-9_-]", name);
            lua_pop(L, 2);
            return -1;
        }
        c->extra_categories =
            realloc(c->extra_categories, sizeof(char *) * (c->n_extra_categories + 1));
        c->extra_descriptions =
            realloc(c->extra_descriptions, sizeof(char *) * (c->n_extra_categories + 1));
        c->extra_categories[c->n_extra_categories] = strdup(name);
        c->extra_descriptions[c->n_extra_categories] = strdup(desc);
        c->n_extra_categories++;
        lua_pop(L, 1);
    }
    return 0;
}

/* Apply one key of the config table (key at -2, value at -1). */
/* The keys whose value is a string. 1 when key is not one of them, else
 * 0 or -1 with err. */
static int apply_string_key(sg_config *c, lua_State *L, const char *key, char *err, size_t errlen)
{
    static const char *const names[] = {"listen", "plugins_dir", "log_level", "store", "store_path", "store_sync", "engine", NULL};
    int known = 0;
    for (int i = 0; names[i]; i++)
        known |= strcmp(key, names[i]) == 0;
    if (!known) return 1;
    if (lua_type(L, -1) != LUA_TSTRING) {
        snprintf(err, errlen, "%s must be a string", key);
        return -1;
    }
    const char *v = lua_tostring(L, -1);
    if (strcmp(key, "listen") == 0) {
        if (sg_config_set_listen(c, v) < 0) {
            snprintf(err, errlen, "listen must be \"host:port\", got \"%s\"", v);
            return -1;
        }
    } else if (strcmp(key, "plugins_dir") == 0) {
        free(c->plugins_dir);
        c->plugins_dir = strdup(v);
    } else if (strcmp(key, "store") == 0) {
        if (strcmp(v, "memory") != 0 && strcmp(v, "sqlite") != 0) {
            snprintf(err, errlen, "store must be \"memory\" or \"sqlite\", got \"%.40s\"", v);
            return -1;
        }
        snprintf(c->store, sizeof(c->store), "%s", v);
    } else if (strcmp(key, "engine") == 0) {
        if (strcmp(v, "local") != 0 && strcmp(v, "redis") != 0) {
            snprintf(err, errlen, "engine must be \"local\" or \"redis\", got \"%.40s\"", v);
            return -1;
        }
        snprintf(c->engine, sizeof(c->engine), "%s", v);
    } else if (strcmp(key, "store_sync") == 0) {
        if (strcmp(v, "normal") != 0 && strcmp(v, "full") != 0 && strcmp(v, "off") != 0) {
            snprintf(err, errlen, "store_sync must be \"normal\", \"full\" or \"off\", got \"%.40s\"", v);
            return -1;
        }
        snprintf(c->store_sync, sizeof(c->store_sync), "%s", v);
    } else if (strcmp(key, "store_path") == 0) {
        free(c->store_path);
        c->store_path = strdup(v);
    } else {
        int lv = sg_log_parse_level(v);
        if (lv < 0) {
            snprintf(err, errlen, "log_level must be debug, info, warn or error");
            return -1;
        }
        c->log_level = lv;
    }
    return 0;
}

static int apply_key(sg_config *c, lua_State *L, const char *key, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++) {
        const struct int_key *k = &int_keys[i];
        if (strcmp(key, k->name) != 0) continue;
        if (!lua_isinteger(L, -1)) {
            snprintf(err, errlen, "%s must be an integer", key);
            return -1;
        }
        long long v = lua_tointeger(L, -1);
        if (v < k->min || v > k->max) {
            snprintf(err, errlen, "%s must be between %lld and %lld, got %lld", key, k->min,
                     k->max, v);
            return -1;
        }
        if (k->is_size)
            *(size_t *)((char *)c + k->off) = (size_t)v;
        else
            *(int *)((char *)c + k->off) = (int)v;
        return 0;
    }
    int sk = apply_string_key(c, L, key, err, errlen);
    if (sk <= 0) return sk;
    if (strcmp(key, "access_log") == 0 || strcmp(key, "reuse_port") == 0) {
        if (!lua_isboolean(L, -1)) {
            snprintf(err, errlen, "%s must be true or false", key);
            return -1;
        }
        *(key[0] == 'a' ? &c->access_log : &c->reuse_port) = lua_toboolean(L, -1);
        return 0;
    }
    if (strcmp(key, "categories") == 0) return load_categories(c, L, err, errlen);
    json_t **sections[] = {&c->plugins, &c->webhooks, &c->security, &c->redis};
    for (int i = 0; table_keys[i]; i++) {
        if (strcmp(key, table_keys[i]) != 0) continue;
        if (!lua_istable(L, -1)) {
            snprintf(err, errlen, "%s must be a table", key);
            return -1;
        }
        char why[200];
        json_t *j = sg_lua_to_json(L, -1, why, sizeof(why));
        if (!j) {
            snprintf(err, errlen, "%s: %s", key, why);
            return -1;
        }
        json_decref(*sections[i]);
        *sections[i] = j;
        return 0;
    }
    static const char *const more[] = {"listen", "plugins_dir", "log_level", "store", "store_path", "store_sync", "access_log", "categories",
                                       "plugins", "webhooks", "security", "engine", "reuse_port", "redis", NULL};
    /* every name a config may use, for the "did you mean" (sized from both lists) */
    const char *known[sizeof(int_keys) / sizeof(int_keys[0]) + sizeof(more) / sizeof(more[0])];
    size_t nk = 0;
    for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++)
        known[nk++] = int_keys[i].name;
    for (int i = 0; more[i]; i++)
        known[nk++] = more[i];
    known[nk] = NULL;
    const char *near = sg_config_closest(key, known);
    if (near)
        snprintf(err, errlen, "unknown key '%s' (did you mean '%s'?)", key, near);
    else
        snprintf(err, errlen, "unknown key '%s'", key);
    return -1;
}

int sg_config_load(sg_config *c, const char *path, char *err, size_t errlen)
{
    defaults(c);
    if (!path) return 0;
    c->path = strdup(path);
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    luaL_openlibs(L);
    int rc = -1;
    if (luaL_loadfilex(L, path, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto done;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: must return a table", path);
        goto done;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errlen, "%s: keys must be names", path);
            goto done;
        }
        char key[64];
        snprintf(key, sizeof(key), "%s", lua_tostring(L, -2));
        char why[400];
        if (apply_key(c, L, key, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "%s: %s", path, why);
            goto done;
        }
        lua_pop(L, 1);
    }
    /* paths in the file are relative to the file, not to where the
     * gateway happens to start */
    char *pd = sg_config_resolve(c, c->plugins_dir);
    if (pd) {
        free(c->plugins_dir);
        c->plugins_dir = pd;
    }
    char *sp = sg_config_resolve(c, c->store_path);
    if (sp) {
        free(c->store_path);
        c->store_path = sp;
    }
    rc = 0;
done:
    lua_close(L);
    return rc;
}

void sg_config_free(sg_config *c)
{
    free(c->path);
    free(c->listen_host);
    free(c->plugins_dir);
    free(c->store_path);
    for (int i = 0; i < c->n_extra_categories; i++) {
        free(c->extra_categories[i]);
        free(c->extra_descriptions[i]);
    }
    free(c->extra_categories);
    free(c->extra_descriptions);
    json_decref(c->plugins);
    json_decref(c->webhooks);
    json_decref(c->security);
    json_decref(c->redis);
    memset(c, 0, sizeof(*c));
}
