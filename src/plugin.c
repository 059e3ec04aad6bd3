#include "plugin.h"

#include "clock.h"
#include "jtext.h"
#include "log.h"
#include "hostapi.h"
#include "lazy.h"
#include "luajson.h"

#include <dirent.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define SG_MIN_AGGREGATOR_MS 10

struct sg_plugin {
    sg_plugins *pm;
    char *name;
    char *path;
    int priority;
    int drop_on_failure; /* failure_policy = "drop" */
    sg_sandbox *sb;
    int ref;        /* the plugin table */
    int filter_ref; /* P.filter, LUA_NOREF when none */
    sg_wordset *when; /* P.filter_when: call filter only for updates holding one */
    json_t *builders, *subscriber_filters, *webhooks; /* names, for lookups */
    struct { int ref, nargs; } *builder_fns; /* by the index of builders' names */
    int agg_interval_ms; /* 0: no aggregator */
    int states_ref, dirty_ref;
    struct event *agg_ev;
    int disabled;
    int off; /* switched off by the config (or by default): loaded, never called */
    int consecutive_failures;
    uint64_t calls, errors, timeouts, ooms, time_ns;
    uint64_t skipped; /* updates filter_when let by without a call */
    /* subscriber filter calls that failed: the subscriber chose the args,
     * so these are counted apart and never disable the plugin */
    uint64_t subscriber_errors;
    uint64_t dropped, refused; /* updates its filter dropped or refused */
    char last_error[512];
    int64_t last_error_ms;
    int64_t loaded_ms;
};

struct sg_plugins {
    char *dir;
    const sg_config *cfg;
    struct event_base *base;
    sg_emit_fn emit;
    void *emit_arg;
    sg_plugin **list; /* by priority, then name */
    int n;
    json_t *failed; /* files that have no running version: [{"file","error"}] */
    json_t *config_errors; /* settings the config gives a plugin that it refuses: [msg] */
    json_t *last_reload;
};

/* ---- calls and their accounting ---- */

static void record_failure(sg_plugin *p, int status, const char *what, const char *why)
{
    if (status == SG_SB_TIMEOUT) p->timeouts++;
    else if (status == SG_SB_OOM) p->ooms++;
    else p->errors++;
    p->consecutive_failures++;
    snprintf(p->last_error, sizeof(p->last_error), "%s: %s", what, why);
    p->last_error_ms = sg_clock_running_wall_ms();
    uint64_t total = p->errors + p->timeouts + p->ooms;
    if (total <= 10 || total % 1000 == 0)
        sg_log(SG_LOG_WARN, "plugin_error", "plugin=%s call=%s kind=%s failures=%llu error=%s",
               p->name, what, sg_sandbox_status_name(status), (unsigned long long)total,
               sg_log_q(why));
    int max = p->pm ? p->pm->cfg->plugin_max_failures : SG_DEFAULT_PLUGIN_MAX_FAILURES;
    if (!p->disabled && p->consecutive_failures >= max) {
        p->disabled = 1;
        if (p->agg_ev) event_del(p->agg_ev);
        sg_log(SG_LOG_ERROR, "plugin_disabled",
               "plugin=%s consecutive_failures=%d reason=%s until=reload", p->name,
               p->consecutive_failures, sg_log_q(p->last_error));
    }
}

/* Call the function under the arguments on the stack, with accounting,
 * timed from *clock (when the host began working for this call) to its
 * end, which is left in *clock: a run of calls reads the clock once each.
 * A clock of 0 is read here. Returns the sandbox status; results are on
 * the stack only on SG_SB_OK. */
static int call_from(sg_plugin *p, int nargs, int nresults, const char *what, uint64_t *clock)
{
    uint64_t t0 = *clock ? *clock : sg_clock_running_ns();
    int st = sg_sandbox_call_at(p->sb, nargs, nresults, t0);
    *clock = sg_clock_running_ns();
    p->calls++;
    p->time_ns += *clock - t0;
    if (st == SG_SB_OK)
        p->consecutive_failures = 0;
    else
        record_failure(p, st, what, sg_sandbox_error(p->sb));
    return st;
}

static int call(sg_plugin *p, int nargs, int nresults, const char *what)
{
    uint64_t clock = sg_clock_running_ns();
    return call_from(p, nargs, nresults, what, &clock);
}

/* A call that returned something unusable counts as an error. */
static void garbage(sg_plugin *p, const char *what, const char *why)
{
    p->consecutive_failures--; /* call() reset it on success; count this one */
    if (p->consecutive_failures < 0) p->consecutive_failures = 0;
    record_failure(p, SG_SB_ERROR, what, why);
}

/* Push P[field][name] (or P[field] when name is NULL); returns its type. */
static int push_field(sg_plugin *p, const char *field, const char *name)
{
    lua_State *L = sg_sandbox_state(p->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    int t = sg_lua_raw_field(L, -1, field);
    lua_remove(L, -2);
    if (name) {
        if (t != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return LUA_TNIL;
        }
        t = sg_lua_raw_field(L, -1, name);
        lua_remove(L, -2);
    }
    return t;
}

/* ---- loading ---- */

static json_t *names_of(lua_State *L, int idx, const char *field, char *err, size_t errlen,
                        int want_table_values)
{
    json_t *names = json_array();
    if (sg_lua_raw_field(L, idx, field) == LUA_TNIL) {
        lua_pop(L, 1);
        return names;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s must be a table of name = %s", field,
                 want_table_values ? "{…}" : "function");
        lua_pop(L, 1);
        json_decref(names);
        return NULL;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        int ok = lua_type(L, -2) == LUA_TSTRING &&
                 (want_table_values ? lua_istable(L, -1) : lua_isfunction(L, -1));
        if (!ok) {
            snprintf(err, errlen, "%s: every entry must be name = %s", field,
                     want_table_values ? "{match = function, format = function}" : "function");
            lua_pop(L, 3);
            json_decref(names);
            return NULL;
        }
        json_array_append_new(names, json_string(lua_tostring(L, -2)));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return names;
}

static void plugin_free(sg_plugin *p)
{
    if (!p) return;
    if (p->agg_ev) event_free(p->agg_ev);
    sg_sandbox_free(p->sb);
    json_decref(p->builders);
    free(p->builder_fns);
    json_decref(p->subscriber_filters);
    json_decref(p->webhooks);
    sg_wordset_free(p->when);
    free(p->name);
    free(p->path);
    free(p);
}

static void on_aggregate(evutil_socket_t fd, short what, void *arg);

static int emit_trampoline(void *arg, json_t *u, const char *plugin, char *err, size_t errlen)
{
    sg_plugins *pm = arg;
    if (!pm || !pm->emit) {
        snprintf(err, errlen, "emit is not available here");
        return -1;
    }
    return pm->emit(pm->emit_arg, u, plugin, err, errlen);
}

/* Keep a reference to each builder function, and whether it takes the
 * update too: what a plugin provides is read once, after init, as its
 * filter is. */
static int load_builders(sg_plugin *p, lua_State *L, int P)
{
    size_t n = json_array_size(p->builders);
    if (n == 0) return 0;
    p->builder_fns = calloc(n, sizeof(*p->builder_fns));
    if (!p->builder_fns) return -1;
    sg_lua_raw_field(L, P, "builders");
    for (size_t i = 0; i < n; i++) {
        sg_lua_raw_field(L, -1, json_string_value(json_array_get(p->builders, i)));
        lua_Debug ar;
        lua_pushvalue(L, -1);
        lua_getinfo(L, ">u", &ar);
        /* most builders declare only (args): then the update is not built */
        p->builder_fns[i].nargs = ar.nparams >= 2 || ar.isvararg ? 2 : 1;
        p->builder_fns[i].ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pop(L, 1);
    return 0;
}

/* P.filter_when: a list of words; the filter is called only for updates
 * that hold one of them, ignoring ASCII case. Read after init, so init can
 * set it from the configuration. 0, or -1 with why. */
#define SG_WHEN_MAX SG_WORDSET_MAX /* words, and bytes in a word */

static int load_when(sg_plugin *p, lua_State *L, int P, char *why, size_t whylen)
{
    int t = sg_lua_raw_field(L, P, "filter_when");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    lua_Integer n = t == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, -1) : 0;
    int ok = n >= 1 && n <= SG_WHEN_MAX && p->filter_ref != LUA_NOREF;
    char *words[SG_WHEN_MAX];
    size_t lens[SG_WHEN_MAX];
    /* the strings stay referenced by the table on the stack meanwhile */
    for (lua_Integer i = 1; ok && i <= n; i++) {
        int is_string = lua_rawgeti(L, -1, i) == LUA_TSTRING;
        words[i - 1] = is_string ? (char *)lua_tolstring(L, -1, &lens[i - 1]) : NULL;
        ok = words[i - 1] && lens[i - 1] >= 1 && lens[i - 1] <= SG_WHEN_MAX &&
             !memchr(words[i - 1], 0, lens[i - 1]);
        lua_pop(L, 1);
    }
    if (ok && !(p->when = sg_wordset_new(words, lens, (int)n))) {
        lua_pop(L, 1);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    lua_pop(L, 1);
    if (ok) return 0;
    if (p->filter_ref == LUA_NOREF)
        snprintf(why, whylen, "filter_when needs a filter function");
    else
        snprintf(why, whylen, "filter_when must be a list of 1 to %d strings of 1 to %d bytes (no NUL)",
                 SG_WHEN_MAX, SG_WHEN_MAX);
    return -1;
}

/* Whether the update holds one of the filter's words: in a string field or
 * in the metadata's JSON text (keys and values). Small updates are laid
 * end to end, NUL between parts (no word holds a NUL), and searched in one
 * pass for all the words. */
static int when_matches(const sg_plugin *p, const sg_draft *d)
{
    const char *cat = sg_category_name(d->category);
    struct { const char *s; size_t n; } parts[] = {
        {d->text, d->text_len}, {d->metadata, d->metadata_len}, {d->conv_id, d->conv_len},
        {cat, strlen(cat)}, {d->source, d->source_len},
        {d->idempotency_key, d->idempotency_key ? strlen(d->idempotency_key) : 0}};
    enum { NPARTS = sizeof(parts) / sizeof(parts[0]) };
    char all[2048];
    size_t n = 0;
    for (size_t i = 0; i < NPARTS && n != sizeof(all); i++) {
        if (!parts[i].s) continue;
        if (n + parts[i].n + 1 > sizeof(all)) n = sizeof(all); /* too big: field by field */
        else {
            memcpy(all + n, parts[i].s, parts[i].n);
            n += parts[i].n;
            all[n++] = 0;
        }
    }
    if (n < sizeof(all)) return sg_wordset_find(p->when, all, n);
    for (size_t i = 0; i < NPARTS; i++)
        if (parts[i].s && sg_wordset_find(p->when, parts[i].s, parts[i].n))
            return 1;
    return 0;
}

/* Check plugins.<name> against what the plugin declares: `enabled`
 * (a boolean), and, when the plugin has a `settings` table of
 * name = "number" | "integer" | "string" | "boolean" | "table", every
 * other key. 0, or -1 with err. */
static int check_settings(lua_State *L, int P, const char *name, json_t *conf, char *err, size_t errlen)
{
    json_t *en = json_object_get(conf, "enabled");
    if (en && !json_is_boolean(en)) {
        snprintf(err, errlen, "plugins.%s.enabled must be true or false", name);
        return -1;
    }
    if (sg_lua_raw_field(L, P, "settings") != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    const char *known[65];
    int nk = 0;
    known[nk++] = "enabled";
    lua_pushnil(L);
    while (lua_next(L, -2) && nk < 64) {
        if (lua_type(L, -2) == LUA_TSTRING) known[nk++] = lua_tostring(L, -2); /* kept alive by the table */
        lua_pop(L, 1);
    }
    known[nk] = NULL;
    char where[96];
    snprintf(where, sizeof(where), "plugins.%s", name);
    int rc = sg_config_check_keys(conf, where, known, err, errlen);
    const char *k;
    json_t *v;
    json_object_foreach(conf, k, v)
    {
        if (rc < 0 || strcmp(k, "enabled") == 0) continue;
        int t = sg_lua_raw_field(L, -1, k);
        const char *want = t == LUA_TSTRING ? lua_tostring(L, -1) : "";
        int ok = strcmp(want, "number") == 0    ? json_is_number(v)
                 : strcmp(want, "integer") == 0 ? json_is_integer(v)
                 : strcmp(want, "string") == 0  ? json_is_string(v)
                 : strcmp(want, "boolean") == 0 ? json_is_boolean(v)
                 : strcmp(want, "table") == 0   ? json_is_object(v) || json_is_array(v)
                                                : 1;
        if (!ok) {
            static const char *const names[] = {"object", "array", "string", "integer", "number",
                                                "true", "false", "null"};
            snprintf(err, errlen, "plugins.%s.%s must be %s %s, got %s", name, k,
                     want[0] == 'i' ? "an" : "a", want, names[json_typeof(v)]);
            rc = -1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

/* ---- a plugin's table, field by field ----
 *
 * Each field a plugin may define has a loader that reads it raw from the
 * plugin's table P, checks it and keeps what it means; the loaders run in
 * the table's order (the name first, then the config's view of it, init,
 * and what the plugin provides, which init may shape). A loader leaves the
 * stack as it found it, and returns 0, or -1 with the message in ctx->err. */

typedef struct load_ctx {
    const sg_config *cfg;
    const char *base; /* the file's base name, for messages */
    json_t *conf;     /* plugins.<name>, or NULL */
    char *err;
    size_t errlen;
    int config_error; /* the failure is the config's (a bad setting) */
} load_ctx;

static int field_name(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    int t = sg_lua_raw_field(L, P, "name");
    if (t == LUA_TSTRING) {
        free(p->name);
        p->name = strdup(lua_tostring(L, -1));
    }
    lua_pop(L, 1);
    if (t != LUA_TSTRING && t != LUA_TNIL) {
        snprintf(x->err, x->errlen, "%s: name must be a string", x->base);
        return -1;
    }
    for (const char *c = p->name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-')) {
            snprintf(x->err, x->errlen, "%s: name '%s' must be [a-z0-9_-]", x->base, p->name);
            return -1;
        }
    x->conf = x->cfg->plugins ? json_object_get(x->cfg->plugins, p->name) : NULL;
    return 0;
}

/* settings and enabled: the config's plugins.<name>, checked against what
 * the plugin declares; on unless the plugin waits to be asked (enabled =
 * false) and the config does not ask; the config can switch any plugin off */
static int field_settings(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    if (x->conf && !json_is_object(x->conf)) {
        snprintf(x->err, x->errlen, "plugins.%s must be a table of settings", p->name);
        x->config_error = 1;
        return -1;
    }
    if (x->conf && check_settings(L, P, p->name, x->conf, x->err, x->errlen) < 0) {
        x->config_error = 1;
        return -1;
    }
    int on = 1;
    int t = sg_lua_raw_field(L, P, "enabled");
    if (t == LUA_TBOOLEAN) on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
        snprintf(x->err, x->errlen, "%s: enabled must be true or false", x->base);
        return -1;
    }
    json_t *en = json_object_get(x->conf, "enabled");
    if (en) on = json_is_true(en);
    p->off = p->disabled = !on;
    return 0;
}

/* init(config) with plugins.<name>; a plugin that is off is not initialized */
static int field_init(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    if (p->off) return 0;
    if (sg_lua_raw_field(L, P, "init") != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return 0;
    }
    if (x->conf)
        sg_lua_push_json(L, x->conf);
    else
        lua_newtable(L);
    if (sg_sandbox_call(p->sb, 1, 0) != SG_SB_OK) {
        snprintf(x->err, x->errlen, "%s (in init)", sg_sandbox_error(p->sb));
        return -1;
    }
    return 0;
}

static int field_priority(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    p->priority = 100;
    int t = sg_lua_raw_field(L, P, "priority");
    int ok = t == LUA_TNIL || lua_isinteger(L, -1);
    if (t != LUA_TNIL && ok) p->priority = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!ok) snprintf(x->err, x->errlen, "%s: priority must be an integer", x->base);
    return ok ? 0 : -1;
}

static int field_failure_policy(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    int t = sg_lua_raw_field(L, P, "failure_policy");
    const char *fp = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int ok = t == LUA_TNIL || (fp && (strcmp(fp, "pass") == 0 || strcmp(fp, "drop") == 0));
    if (ok && fp) p->drop_on_failure = fp[0] == 'd';
    lua_pop(L, 1);
    if (!ok) snprintf(x->err, x->errlen, "%s: failure_policy must be \"pass\" or \"drop\"", x->base);
    return ok ? 0 : -1;
}

/* builders, subscriber_filters and webhooks: tables of names */
static int field_names(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    char why[400];
    if (!(p->builders = names_of(L, P, "builders", why, sizeof(why), 0)) ||
        !(p->subscriber_filters = names_of(L, P, "subscriber_filters", why, sizeof(why), 0)) ||
        !(p->webhooks = names_of(L, P, "webhooks", why, sizeof(why), 1))) {
        snprintf(x->err, x->errlen, "%s: %s", x->base, why);
        return -1;
    }
    if (load_builders(p, L, P) < 0) {
        snprintf(x->err, x->errlen, "%s: out of memory", x->base);
        return -1;
    }
    return 0;
}

/* filter, captured by reference, and filter_when */
static int field_filter(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    int t = sg_lua_raw_field(L, P, "filter");
    if (t != LUA_TNIL && t != LUA_TFUNCTION) {
        lua_pop(L, 1);
        snprintf(x->err, x->errlen, "%s: filter must be a function", x->base);
        return -1;
    }
    p->filter_ref = t == LUA_TFUNCTION ? luaL_ref(L, LUA_REGISTRYINDEX) : (lua_pop(L, 1), LUA_NOREF);
    char why[400];
    if (load_when(p, L, P, why, sizeof(why)) < 0) {
        snprintf(x->err, x->errlen, "%s: %s", x->base, why);
        return -1;
    }
    return 0;
}

static int field_aggregator(sg_plugin *p, lua_State *L, int P, load_ctx *x)
{
    int t = sg_lua_raw_field(L, P, "aggregator");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TTABLE) {
        lua_pop(L, 1);
        snprintf(x->err, x->errlen, "%s: aggregator must be a table", x->base);
        return -1;
    }
    sg_lua_raw_field(L, -1, "interval_ms");
    sg_lua_raw_field(L, -2, "observe");
    sg_lua_raw_field(L, -3, "summarize");
    int ok = lua_isinteger(L, -3) && lua_tointeger(L, -3) >= SG_MIN_AGGREGATOR_MS && lua_isfunction(L, -2) &&
             lua_isfunction(L, -1);
    if (ok) p->agg_interval_ms = (int)lua_tointeger(L, -3);
    lua_pop(L, 4);
    if (!ok) {
        snprintf(x->err, x->errlen, "%s: aggregator needs interval_ms (>= %d), observe and summarize functions",
                 x->base, SG_MIN_AGGREGATOR_MS);
        return -1;
    }
    lua_newtable(L);
    p->states_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    p->dirty_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static const struct plugin_field {
    const char *name; /* the field (or fields) it reads */
    int (*load)(sg_plugin *p, lua_State *L, int P, load_ctx *x);
} plugin_fields[] = {
    {"name", field_name},
    {"settings, enabled", field_settings},
    {"init", field_init},
    {"priority", field_priority},
    {"failure_policy", field_failure_policy},
    {"builders, subscriber_filters, webhooks", field_names},
    {"filter, filter_when", field_filter},
    {"aggregator", field_aggregator},
};

/* Load one file into a fresh sandbox, read its table and run its init.
 * NULL with "file:line: message" in err on any failure; *config_error is
 * set when the failure is a setting the config gives it. */
static sg_plugin *plugin_load(sg_plugins *pm, const char *path, const sg_config *cfg, char *err,
                              size_t errlen, int *config_error)
{
    sg_plugin *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    p->pm = pm;
    p->path = strdup(path);
    p->ref = p->filter_ref = p->states_ref = p->dirty_ref = LUA_NOREF;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    p->name = strndup(base, strcspn(base, "."));
    sg_sandbox_limits lim = {cfg->plugin_memory, cfg->plugin_instructions, cfg->plugin_timeout_ms};
    p->sb = sg_sandbox_new(p->name, &lim);
    if (p->sb && sg_host_open(sg_sandbox_state(p->sb), p->name, emit_trampoline, pm) < 0) {
        sg_sandbox_free(p->sb);
        p->sb = NULL;
    }
    if (!p->sb) {
        snprintf(err, errlen, "%s: out of memory", path);
        plugin_free(p);
        return NULL;
    }
    lua_State *L = sg_sandbox_state(p->sb);
    if (sg_sandbox_load(p->sb, path, err, errlen) != SG_SB_OK) {
        plugin_free(p);
        return NULL;
    }
    load_ctx x = {cfg, base, NULL, err, errlen, 0};
    int P = lua_gettop(L), rc = 0;
    if (!lua_istable(L, P)) {
        snprintf(err, errlen, "%s: must return a table (local P = {...} ... return P)", base);
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < sizeof(plugin_fields) / sizeof(plugin_fields[0]); i++)
        rc = plugin_fields[i].load(p, L, P, &x);
    if (rc < 0) {
        if (config_error) *config_error = x.config_error;
        lua_settop(L, 0);
        plugin_free(p);
        return NULL;
    }
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops P */
    p->loaded_ms = sg_clock_running_wall_ms();
    return p;
}

static json_t *describe(const sg_plugin *p)
{
    json_t *prov = json_pack("{s:O, s:b, s:O, s:O}", "builders", p->builders, "filter",
                             p->filter_ref != LUA_NOREF, "subscriber_filters",
                             p->subscriber_filters, "webhooks", p->webhooks);
    if (p->agg_interval_ms)
        json_object_set_new(prov, "aggregator", json_pack("{s:i}", "interval_ms", p->agg_interval_ms));
    else
        json_object_set_new(prov, "aggregator", json_null());
    json_t *when = json_null();
    if (p->when) {
        when = json_array();
        for (int i = 0; i < sg_wordset_count(p->when); i++) {
            size_t n;
            const char *w = sg_wordset_word(p->when, i, &n);
            json_array_append_new(when, json_stringn(w, n));
        }
    }
    json_object_set_new(prov, "filter_when", when);
    return json_pack("{s:s, s:s, s:i, s:s, s:o}", "name", p->name, "file", p->path, "priority",
                     p->priority, "failure_policy", p->drop_on_failure ? "drop" : "pass",
                     "provides", prov);
}

json_t *sg_plugin_check(const char *path, const sg_config *cfg, char *err, size_t errlen)
{
    sg_plugin *p = plugin_load(NULL, path, cfg, err, errlen, NULL);
    if (!p) return NULL;
    json_t *d = describe(p);
    plugin_free(p);
    return d;
}

/* ---- the host ---- */

sg_plugins *sg_plugins_new(const char *dir, const sg_config *cfg, struct event_base *base,
                           sg_emit_fn emit, void *emit_arg)
{
    sg_plugins *pm = calloc(1, sizeof(*pm));
    if (!pm) return NULL;
    pm->dir = strdup(dir);
    pm->cfg = cfg;
    pm->base = base;
    pm->emit = emit;
    pm->emit_arg = emit_arg;
    pm->failed = json_array();
    pm->config_errors = json_array();
    return pm;
}

void sg_plugins_free(sg_plugins *pm)
{
    if (!pm) return;
    for (int i = 0; i < pm->n; i++)
        plugin_free(pm->list[i]);
    free(pm->list);
    free(pm->dir);
    json_decref(pm->failed);
    json_decref(pm->config_errors);
    json_decref(pm->last_reload);
    free(pm);
}

static int by_priority(const void *a, const void *b)
{
    const sg_plugin *x = *(sg_plugin *const *)a, *y = *(sg_plugin *const *)b;
    if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void start_timer(sg_plugins *pm, sg_plugin *p)
{
    if (!pm->base || !p->agg_interval_ms) return;
    p->agg_ev = event_new(pm->base, -1, EV_PERSIST, on_aggregate, p);
    struct timeval tv = {p->agg_interval_ms / 1000, (p->agg_interval_ms % 1000) * 1000};
    event_add(p->agg_ev, &tv);
}

/* Add dir's plugin files (*.lua but not *_spec.lua) to files. */
static int list_dir(const char *dir, char ***files, int nf)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
        if (n > 9 && strcmp(e->d_name + n - 9, "_spec.lua") == 0) continue; /* a plugin's busted spec */
        *files = realloc(*files, sizeof(char *) * (nf + 1));
        size_t pl = strlen(dir) + n + 2;
        (*files)[nf] = malloc(pl);
        snprintf((*files)[nf++], pl, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    return nf;
}

int sg_plugin_files(const char *dir, char ***files)
{
    struct stat st;
    *files = NULL;
    if (stat(dir, &st) == 0 && S_ISREG(st.st_mode)) { /* a host of one file (plugin run) */
        *files = malloc(sizeof(char *));
        (*files)[0] = strdup(dir);
        return 1;
    }
    int nf = list_dir(dir, files, 0);
    if (nf < 0) return -1;
    char contrib[4096];
    snprintf(contrib, sizeof(contrib), "%s/contrib", dir);
    int more = list_dir(contrib, files, nf); /* the gallery: each off until enabled */
    if (more > nf) nf = more;
    if (nf) qsort(*files, nf, sizeof(char *), by_name);
    return nf;
}

json_t *sg_plugins_reload(sg_plugins *pm)
{
    json_array_clear(pm->config_errors);
    json_t *loaded = json_array(), *failed = json_array(), *removed = json_array();
    char **files = NULL;
    int nf = sg_plugin_files(pm->dir, &files);
    if (nf < 0) {
        nf = 0;
        json_array_append_new(failed, json_pack("{s:s, s:s}", "file", pm->dir, "error",
                                                "cannot open the plugins directory"));
    }

    sg_plugin **next = calloc(nf + pm->n + 1, sizeof(sg_plugin *));
    int nn = 0;
    char *kept = calloc(pm->n + 1, 1); /* old plugins carried over */
    for (int i = 0; i < nf; i++) {
        char err[600];
        int config_error = 0;
        sg_plugin *p = plugin_load(pm, files[i], pm->cfg, err, sizeof(err), &config_error);
        if (!p && config_error) json_array_append_new(pm->config_errors, json_string(err));
        int old = -1;
        for (int j = 0; j < pm->n; j++)
            if (strcmp(pm->list[j]->path, files[i]) == 0) old = j;
        for (int j = 0; p && j < nn; j++)
            if (strcmp(next[j]->name, p->name) == 0) {
                snprintf(err, sizeof(err), "%s: name '%s' is already used by %s", files[i],
                         p->name, next[j]->path);
                plugin_free(p);
                p = NULL;
            }
        if (p) {
            next[nn++] = p;
            json_array_append_new(loaded, json_string(p->name));
            sg_log(SG_LOG_INFO, "plugin_loaded", "plugin=%s file=%s priority=%d enabled=%d replaced=%d",
                   p->name, sg_log_q(files[i]), p->priority, !p->off, old >= 0);
        } else {
            json_array_append_new(failed, json_pack("{s:s, s:s, s:b}", "file", files[i], "error",
                                                    err, "previous_version_kept", old >= 0));
            sg_log(SG_LOG_ERROR, "plugin_load_failed", "file=%s kept_previous=%d error=%s",
                   sg_log_q(files[i]), old >= 0, sg_log_q(err));
            if (old >= 0) {
                next[nn++] = pm->list[old];
                kept[old] = 1;
                snprintf(pm->list[old]->last_error, sizeof(pm->list[old]->last_error),
                         "reload: %.480s", err);
            }
        }
        free(files[i]);
    }
    free(files);
    for (int j = 0; j < pm->n; j++) {
        if (kept[j]) continue;
        int still = 0;
        for (int k = 0; k < nn; k++)
            still |= strcmp(next[k]->path, pm->list[j]->path) == 0;
        if (!still) {
            json_array_append_new(removed, json_string(pm->list[j]->name));
            sg_log(SG_LOG_INFO, "plugin_removed", "plugin=%s", pm->list[j]->name);
        }
        plugin_free(pm->list[j]);
    }
    free(kept);
    free(pm->list);
    pm->list = next;
    pm->n = nn;
    if (nn) qsort(pm->list, nn, sizeof(sg_plugin *), by_priority);
    for (int i = 0; i < nn; i++)
        if (!pm->list[i]->agg_ev && !pm->list[i]->disabled) start_timer(pm, pm->list[i]);
    json_decref(pm->failed);
    pm->failed = json_incref(failed);
    json_t *report = json_pack("{s:o, s:o, s:o}", "loaded", loaded, "failed", failed, "removed",
                               removed);
    json_decref(pm->last_reload);
    pm->last_reload = json_deep_copy(report);
    json_object_set_new(pm->last_reload, "at_ms", json_integer(sg_clock_running_wall_ms()));
    return report;
}

/* ---- builders ---- */

static sg_plugin *find_named_at(const sg_plugins *pm, size_t off, const char *name, size_t *at)
{
    for (int i = 0; pm && i < pm->n; i++) {
        if (pm->list[i]->off) continue; /* switched off: provides nothing */
        json_t *names = *(json_t **)((char *)pm->list[i] + off);
        size_t k;
        json_t *v;
        json_array_foreach(names, k, v) {
            if (strcmp(json_string_value(v), name) == 0) {
                if (at) *at = k;
                return pm->list[i];
            }
        }
    }
    return NULL;
}

static sg_plugin *find_named(const sg_plugins *pm, size_t off, const char *name)
{
    return find_named_at(pm, off, name, NULL);
}

void sg_plugins_push_draft(lua_State *L, const sg_draft *d)
{
    /* room for the two fields, the hidden block and one filled in */
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, d->conv_id, d->conv_len);
    lua_setfield(L, -2, "conversation_id");
    lua_pushstring(L, sg_category_name(d->category));
    lua_setfield(L, -2, "category");
    const char *s[4] = {d->text ? d->text : "", d->source, d->idempotency_key, d->metadata};
    size_t n[4] = {d->text_len, d->source_len,
                   d->idempotency_key ? strlen(d->idempotency_key) : 0, d->metadata_len};
    sg_lua_set_lazy(L, -1, s, n);
}

/* Keys a producer's own metadata cannot override: what builders compute. */
static const char *computed_keys[] = {"duration_ms", "duration_human", "percentage", "progress",
                                      NULL};

static int is_computed(const char *k)
{
    for (int i = 0; computed_keys[i]; i++)
        if (strcmp(k, computed_keys[i]) == 0) return 1;
    return 0;
}

/* The producer's own metadata keys go into the built table at the top of
 * the stack, except over computed ones (plugins/README.md). */
static void merge_own(lua_State *L, const sg_draft *d)
{
    int md = lua_gettop(L);
    sg_lua_push_json_text(L, d->metadata, d->metadata_len);
    int own = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, own)) {
        const char *k = lua_tostring(L, -2);
        int keep_built = 0;
        if (is_computed(k)) {
            keep_built = sg_lua_raw_field(L, md, k) != LUA_TNIL;
            lua_pop(L, 1);
        }
        if (keep_built) {
            lua_pop(L, 1);
        } else {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, md);
        }
    }
    lua_pop(L, 1);
}

/* The built metadata table at the top of the stack as JSON text, with the
 * producer's own keys merged and a timestamp added unless it has one. */
static char *built_text(lua_State *L, const sg_draft *d, size_t *len, char *why, size_t whylen)
{
    if (d->metadata) merge_own(L, d);
    int stamped = sg_lua_raw_field(L, -1, "timestamp") != LUA_TNIL;
    lua_pop(L, 1);
    char *md = sg_lua_to_json_text(L, -1, len, why, whylen);
    if (!md || md[0] != '{') {
        if (md) snprintf(why, whylen, "metadata must be a table of named keys");
        free(md);
        return NULL;
    }
    if (stamped) return md;
    /* {…} becomes {…,"timestamp":"…"} */
    char *n = realloc(md, *len + 40);
    if (!n) {
        free(md);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    size_t at = *len - 1; /* the closing brace */
    if (at > 1) n[at++] = ',';
    memcpy(n + at, "\"timestamp\":\"", 13);
    sg_format_ts(sg_clock_wall_ms(), n + at + 13);
    memcpy(n + at + 13 + 24, "\"}", 3);
    *len = at + 13 + 24 + 2;
    return n;
}

int sg_plugins_build(sg_plugins *pm, const sg_draft *d, sg_built *out, uint64_t *clock)
{
    memset(out, 0, sizeof(*out));
    size_t at;
    sg_plugin *p = find_named_at(pm, offsetof(sg_plugin, builders), d->builder, &at);
    if (!p) return SG_BUILD_UNKNOWN;
    if (p->disabled) return SG_BUILD_FAILED;
    lua_State *L = sg_sandbox_state(p->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->builder_fns[at].ref);
    int nargs = p->builder_fns[at].nargs;
    if (d->args) sg_lua_push_json_text(L, d->args, d->args_len); else lua_newtable(L);
    if (nargs == 2) sg_plugins_push_draft(L, d);
    uint64_t own_clock = 0;
    if (call_from(p, nargs, 2, d->builder, clock ? clock : &own_clock) != SG_SB_OK)
        return SG_BUILD_FAILED;
    char why[200];
    int rc = SG_BUILD_OK;
    if (!lua_istable(L, -2)) {
        garbage(p, d->builder, "a builder must return a metadata table");
        rc = SG_BUILD_FAILED;
    } else if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) {
        garbage(p, d->builder, "a builder's second result must be a text string or nil");
        rc = SG_BUILD_FAILED;
    } else if (lua_type(L, -1) == LUA_TSTRING &&
               !sg_utf8_valid(lua_tostring(L, -1), lua_rawlen(L, -1))) {
        garbage(p, d->builder, "the text is not valid UTF-8");
        rc = SG_BUILD_FAILED;
    } else {
        lua_pushvalue(L, -2);
        out->block = built_text(L, d, &out->mlen, why, sizeof(why));
        lua_pop(L, 1);
        if (!out->block) {
            garbage(p, d->builder, why);
            rc = SG_BUILD_FAILED;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            /* the text goes after the metadata, in the same block */
            const char *t = lua_tolstring(L, -1, &out->tlen);
            char *b = realloc(out->block, out->mlen + out->tlen + 1);
            if (b) {
                memcpy(b + out->mlen, t, out->tlen + 1);
                out->block = b;
                out->has_text = 1;
            } else {
                rc = SG_BUILD_FAILED;
            }
        }
    }
    lua_pop(L, 2);
    if (rc != SG_BUILD_OK) {
        free(out->block);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

/* ---- ingest filters ---- */

int sg_plugins_have_filters(const sg_plugins *pm)
{
    for (int i = 0; pm && i < pm->n; i++)
        if (pm->list[i]->filter_ref != LUA_NOREF && !pm->list[i]->disabled) return 1;
    return 0;
}

/* A filter's replacement table (at the top of the stack) as a new draft:
 * what only the gateway sets is removed, the idempotency key is the
 * original's. 0, or -1 with why. */
static int replacement(lua_State *L, const sg_draft *orig, const sg_limits *lim, sg_draft *out,
                       char *why, size_t whylen)
{
    static const char *gateway_keys[] = {"builder", "args", "seq", "timestamp"};
    /* raw: no metamethod of the plugin's may run outside its call */
    for (size_t i = 0; i < sizeof(gateway_keys) / sizeof(gateway_keys[0]); i++) {
        lua_pushstring(L, gateway_keys[i]);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    lua_pushliteral(L, "idempotency_key");
    if (orig->idempotency_key) lua_pushstring(L, orig->idempotency_key); else lua_pushnil(L);
    lua_rawset(L, -3);
    size_t n;
    char *text = sg_lua_to_json_text(L, -1, &n, why, whylen);
    if (!text) return -1;
    sg_error e;
    int rc = sg_draft_parse(text, n, lim, out, &e);
    free(text);
    if (rc < 0) snprintf(why, whylen, "the returned update is invalid: %s", e.message);
    return rc;
}

/* The refusal statusgw.refuse made, at idx, as the producer's error. */
static void refusal_error(lua_State *L, int idx, sg_error *err)
{
    idx = lua_absindex(L, idx);
    sg_lua_raw_field(L, idx, "status");
    sg_lua_raw_field(L, idx, "code");
    sg_lua_raw_field(L, idx, "message");
    sg_lua_raw_field(L, idx, "retry_after");
    const char *code = lua_tostring(L, -3);
    const char *msg = lua_tostring(L, -2);
    sg_error_set(err, (int)lua_tointeger(L, -4), code ? sg_error_code_intern(code) : NULL, NULL, "%s",
                 msg ? msg : "");
    if (!err->code) err->code = "refused";
    err->retry_after = (int)lua_tointeger(L, -1);
    if (err->status == 429 && err->retry_after < 1) err->retry_after = 1;
    lua_pop(L, 4);
}

/* One filter over one draft: 1 to keep it (perhaps replaced), 0 to drop
 * it, -1 to refuse the publish (err filled from statusgw.refuse). */
static int filter_one(sg_plugin *p, sg_draft *d, const sg_limits *lim, uint64_t *clock, sg_error *err)
{
    if (p->when && !when_matches(p, d)) {
        p->skipped++;
        return 1;
    }
    lua_State *L = sg_sandbox_state(p->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->filter_ref);
    sg_plugins_push_draft(L, d);
    if (call_from(p, 1, 1, "filter", clock) != SG_SB_OK) return !p->drop_on_failure;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 1;
    }
    if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        p->dropped++;
        return 0;
    }
    if (sg_lua_is_refusal(L, -1)) {
        refusal_error(L, -1, err);
        lua_pop(L, 1);
        p->refused++;
        return -1;
    }
    char why[240];
    sg_draft nd;
    int ok = lua_istable(L, -1);
    if (!ok)
        snprintf(why, sizeof(why), "a filter returns nil, false or an update table, not a %s",
                 luaL_typename(L, -1));
    else
        ok = replacement(L, d, lim, &nd, why, sizeof(why)) == 0;
    lua_pop(L, 1);
    if (!ok) {
        garbage(p, "filter", why);
        return !p->drop_on_failure;
    }
    sg_draft_free(d);
    *d = nd;
    return 1;
}

void sg_plugins_filter_many(sg_plugins *pm, sg_draft **ds, char *live, const char **by,
                            sg_error *refusals, size_t n, const char *skip, uint64_t *clock)
{
    sg_error scratch;
    sg_limits lim = {pm->cfg->max_text, pm->cfg->max_metadata};
    uint64_t own_clock = 0;
    if (!clock) clock = &own_clock;
    for (int i = 0; i < pm->n; i++) {
        sg_plugin *p = pm->list[i];
        if (p->filter_ref == LUA_NOREF || (skip && strcmp(skip, p->name) == 0)) continue;
        for (size_t k = 0; k < n && !p->disabled; k++) {
            if (!live[k]) continue;
            sg_error *err = refusals ? &refusals[k] : &scratch;
            int rc = filter_one(p, ds[k], &lim, clock, err);
            if (rc == 1) continue;
            if (rc == 0) err->status = 0; /* dropped, not refused */
            live[k] = 0;
            by[k] = p->name;
        }
    }
}

int sg_plugins_filter(sg_plugins *pm, sg_draft *d, const char *skip, const char **dropped_by)
{
    char live = 1;
    *dropped_by = NULL;
    sg_plugins_filter_many(pm, &d, &live, dropped_by, NULL, 1, skip, NULL);
    return live;
}

/* ---- subscriber filters ---- */

int sg_plugins_has_subscriber_filter(const sg_plugins *pm, const char *name)
{
    return find_named(pm, offsetof(sg_plugin, subscriber_filters), name) != NULL;
}

/* Call subscriber filter `name` with (update, args) on the stack: 1 pass,
 * 0 drop, -1 the call failed (why in the sandbox's error). Failures are
 * the subscriber's (its args, its filter), not the plugin's: they are
 * counted in subscriber_errors and leave the plugin's failure count, and
 * so its ingest filter, alone. */
static int subscriber_call(sg_plugin *p, const char *name)
{
    lua_State *L = sg_sandbox_state(p->sb);
    uint64_t t0 = sg_clock_running_ns();
    int st = sg_sandbox_call_at(p->sb, 2, 1, t0);
    p->calls++;
    p->time_ns += sg_clock_running_ns() - t0;
    if (st != SG_SB_OK) {
        p->subscriber_errors++;
        if (p->subscriber_errors <= 10 || p->subscriber_errors % 1000 == 0)
            sg_log(SG_LOG_WARN, "subscriber_filter_error", "plugin=%s filter=%s kind=%s failures=%llu error=%s",
                   p->name, name, sg_sandbox_status_name(st), (unsigned long long)p->subscriber_errors,
                   sg_log_q(sg_sandbox_error(p->sb)));
        return -1;
    }
    int pass = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return pass;
}

/* Call p's subscriber filter `name`: 1 pass, 0 drop, -1 failed. */
static int subscriber_filter(sg_plugin *p, const char *name, json_t *args, json_t *update)
{
    if (p->disabled) return -1;
    lua_State *L = sg_sandbox_state(p->sb);
    if (push_field(p, "subscriber_filters", name) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return -1;
    }
    sg_lua_push_json(L, update);
    if (args) sg_lua_push_json(L, args); else lua_newtable(L);
    return subscriber_call(p, name);
}

int sg_plugins_subscriber_filter(sg_plugins *pm, const char *name, json_t *args, json_t *update)
{
    sg_plugin *p = find_named(pm, offsetof(sg_plugin, subscriber_filters), name);
    if (!p) return 1;
    int rc = subscriber_filter(p, name, args, update);
    return rc >= 0 ? rc : !p->drop_on_failure; /* a failure: the plugin's failure_policy */
}

int sg_plugins_subscriber_filter_try(sg_plugins *pm, const char *name, json_t *args, char *err,
                                     size_t errlen)
{
    json_t *u = json_pack("{s:s, s:i, s:s, s:s, s:s, s:{}}", "conversation_id", "statusgw-trial", "seq", 0,
                          "category", "info", "text", "", "timestamp", "1970-01-01T00:00:00.000Z",
                          "metadata");
    sg_plugin *p = find_named(pm, offsetof(sg_plugin, subscriber_filters), name);
    int rc = u && p ? subscriber_filter(p, name, args, u) : 1;
    json_decref(u);
    if (rc >= 0) return 0;
    snprintf(err, errlen, "subscriber filter '%s' fails with these args: %s", name,
             p->disabled ? "its plugin is disabled" : sg_sandbox_error(p->sb));
    return -1;
}

/* ---- aggregators ---- */

int sg_plugins_have_aggregators(const sg_plugins *pm)
{
    for (int i = 0; pm && i < pm->n; i++)
        if (pm->list[i]->agg_interval_ms && !pm->list[i]->disabled) return 1;
    return 0;
}

static int pm_emit_ok(sg_plugin *p, json_t *u, char *err, size_t errlen)
{
    return emit_trampoline(p->pm, u, p->name, err, errlen) == 0;
}

/* Ask p's summarize for conv's summary and emit it. */
static void summarize_one(sg_plugin *p, const char *conv)
{
    lua_State *L = sg_sandbox_state(p->sb);
    if (push_field(p, "aggregator", NULL) != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    sg_lua_raw_field(L, -1, "summarize");
    lua_remove(L, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->states_ref);
    if (sg_lua_raw_field(L, -1, conv) != LUA_TTABLE) {
        lua_pop(L, 3);
        return;
    }
    lua_remove(L, -2);
    lua_pushstring(L, conv);
    if (call(p, 2, 1, "summarize") != SG_SB_OK) return;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    char why[240];
    json_t *s = lua_istable(L, -1) ? sg_lua_to_json(L, -1, why, sizeof(why)) : NULL;
    if (!lua_istable(L, -1)) snprintf(why, sizeof(why), "summarize returns nil or {text=…, metadata=…}");
    lua_pop(L, 1);
    json_t *text = json_object_get(s, "text");
    if (!s || !json_is_object(s) || !json_is_string(text)) {
        json_decref(s);
        garbage(p, "summarize", s ? "a summary needs a text string" : why);
        return;
    }
    json_t *md = json_object_get(s, "metadata");
    json_t *u = json_pack("{s:s, s:s, s:O, s:s}", "conversation_id", conv, "category", "summary",
                          "text", text, "source", p->name);
    if (md && json_is_object(md)) json_object_set(u, "metadata", md);
    char err[240];
    if (!pm_emit_ok(p, u, err, sizeof(err))) garbage(p, "summarize", err);
    json_decref(u);
    json_decref(s);
}

/* Summaries for every conversation p observed since its last round. */
static void summarize_dirty(sg_plugin *p)
{
    if (p->disabled || !p->agg_interval_ms) return;
    lua_State *L = sg_sandbox_state(p->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->dirty_ref);
    size_t n = 0, cap = 16;
    char **convs = malloc(sizeof(char *) * cap);
    lua_pushnil(L);
    while (convs && lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) continue;
        if (n == cap) {
            char **g = realloc(convs, sizeof(char *) * (cap *= 2));
            if (!g) break;
            convs = g;
        }
        convs[n++] = strdup(lua_tostring(L, -1));
    }
    lua_settop(L, 0);
    lua_newtable(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, p->dirty_ref);
    for (size_t i = 0; i < n; i++) {
        if (!p->disabled) summarize_one(p, convs[i]);
        free(convs[i]);
    }
    free(convs);
}

static void on_aggregate(evutil_socket_t fd, short what, void *arg)
{
    summarize_dirty(arg);
}

void sg_plugins_summarize(sg_plugins *pm)
{
    for (int i = 0; pm && i < pm->n; i++)
        summarize_dirty(pm->list[i]);
}

void sg_plugins_observe(sg_plugins *pm, const char *conv, const sg_update *u, const char *skip)
{
    if (strcmp(sg_category_name(u->category), "summary") == 0)
        return; /* aggregators never see summaries */
    for (int i = 0; i < pm->n; i++) {
        sg_plugin *p = pm->list[i];
        if (!p->agg_interval_ms || p->disabled || (skip && strcmp(skip, p->name) == 0)) continue;
        lua_State *L = sg_sandbox_state(p->sb);
        if (push_field(p, "aggregator", NULL) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        sg_lua_raw_field(L, -1, "observe");
        lua_remove(L, -2);
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->states_ref);
        if (sg_lua_raw_field(L, -1, conv) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, conv);
        }
        lua_remove(L, -2);
        sg_lua_push_json_text(L, u->json, u->json_len);
        if (call(p, 2, 1, "observe") != SG_SB_OK) continue;
        int now = lua_toboolean(L, -1) && lua_isboolean(L, -1);
        lua_pop(L, 1);
        if (now) {
            summarize_one(p, conv);
        } else {
            lua_rawgeti(L, LUA_REGISTRYINDEX, p->dirty_ref);
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, conv);
            lua_pop(L, 1);
        }
    }
}

void sg_plugins_forget(sg_plugins *pm, const char *conv)
{
    for (int i = 0; pm && i < pm->n; i++) {
        sg_plugin *p = pm->list[i];
        if (!p->agg_interval_ms) continue;
        lua_State *L = sg_sandbox_state(p->sb);
        int refs[2] = {p->states_ref, p->dirty_ref};
        for (int k = 0; k < 2; k++) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, refs[k]);
            lua_pushnil(L);
            lua_setfield(L, -2, conv);
            lua_pop(L, 1);
        }
    }
}

/* ---- webhook forwarders ---- */

int sg_plugins_has_webhook(const sg_plugins *pm, const char *name)
{
    return find_named(pm, offsetof(sg_plugin, webhooks), name) != NULL;
}

/* Push P.webhooks[name][fn]; NULL when the plugin or function is gone. */
static sg_plugin *push_webhook_fn(sg_plugins *pm, const char *name, const char *fn)
{
    sg_plugin *p = find_named(pm, offsetof(sg_plugin, webhooks), name);
    if (!p || p->disabled) return NULL;
    lua_State *L = sg_sandbox_state(p->sb);
    if (push_field(p, "webhooks", name) != LUA_TTABLE) {
        lua_pop(L, 1);
        return NULL;
    }
    int t = sg_lua_raw_field(L, -1, fn);
    lua_remove(L, -2);
    if (t != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return NULL;
    }
    return p;
}

int sg_plugins_webhook_match(sg_plugins *pm, const char *name, json_t *update)
{
    sg_plugin *p = push_webhook_fn(pm, name, "match");
    if (!p) return 0;
    lua_State *L = sg_sandbox_state(p->sb);
    sg_lua_push_json(L, update);
    if (call(p, 1, 1, "webhook match") != SG_SB_OK) return 0;
    int m = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return m;
}

int sg_plugins_webhook_format(sg_plugins *pm, const char *name, json_t *updates, char **body,
                              json_t **headers)
{
    *body = NULL;
    *headers = NULL;
    sg_plugin *p = push_webhook_fn(pm, name, "format");
    if (!p) return -1;
    lua_State *L = sg_sandbox_state(p->sb);
    sg_lua_push_json(L, updates);
    if (call(p, 1, 2, "webhook format") != SG_SB_OK) return -1;
    char why[200] = "format returns a body string and an optional headers table";
    if (lua_type(L, -2) == LUA_TSTRING && (lua_isnil(L, -1) || lua_istable(L, -1))) {
        *body = strdup(lua_tostring(L, -2));
        *headers = lua_istable(L, -1) ? sg_lua_to_json(L, -1, why, sizeof(why)) : json_object();
        if (*headers && !json_is_object(*headers)) {
            json_decref(*headers);
            *headers = NULL;
        }
    }
    lua_pop(L, 2);
    if (!*body || !*headers) {
        free(*body);
        *body = NULL;
        json_decref(*headers);
        *headers = NULL;
        garbage(p, "webhook format", why);
        return -1;
    }
    return 0;
}

/* ---- the config's view ---- */

const char *sg_plugins_config_error(const sg_plugins *pm)
{
    return pm && json_array_size(pm->config_errors) ? json_string_value(json_array_get(pm->config_errors, 0))
                                                   : NULL;
}

int sg_plugins_check_names(const sg_plugins *pm, char *err, size_t errlen)
{
    const sg_config *cfg = pm->cfg;
    if (!cfg->plugins) return 0;
    const char *known[257];
    char *bases[128];
    int nk = 0, nb = 0;
    for (int i = 0; i < pm->n && nk < 128; i++)
        known[nk++] = pm->list[i]->name;
    size_t i;
    json_t *f;
    json_array_foreach(pm->failed, i, f) /* a file that failed still names its plugin */
    {
        const char *file = json_string_value(json_object_get(f, "file"));
        const char *b = file ? strrchr(file, '/') : NULL;
        b = b ? b + 1 : file;
        if (b && nb < 128) known[nk++] = bases[nb++] = strndup(b, strcspn(b, "."));
    }
    known[nk] = NULL;
    int rc = 0;
    const char *k;
    json_t *v;
    json_object_foreach(cfg->plugins, k, v)
    {
        int found = 0;
        for (int j = 0; j < nk && !found; j++)
            found = known[j] && strcmp(known[j], k) == 0;
        if (found) continue;
        const char *near = sg_config_closest(k, known);
        snprintf(err, errlen, "plugins.%s names no plugin in %s%s%s%s", k, pm->dir, near ? " (did you mean '" : "",
                 near ? near : "", near ? "'?)" : "");
        rc = -1;
        break;
    }
    for (int j = 0; j < nb; j++)
        free(bases[j]);
    return rc;
}

/* ---- admin ---- */

int sg_plugin_name_file(const char *path, const char *err, char *out, size_t n)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t bl = strlen(base);
    for (const char *at = strstr(err, base); at; at = strstr(at + 1, base))
        if (at[bl] == ':' && (at == err || at[-1] == ' ')) {
            snprintf(out, n, "%.*s%s%s", (int)(at - err), err, path, at + bl);
            return 1;
        }
    snprintf(out, n, "%s", err);
    return 0;
}

long sg_plugins_calls(const sg_plugins *pm)
{
    long n = 0;
    for (int i = 0; pm && i < pm->n; i++) n += (long)pm->list[i]->calls;
    return n;
}

long sg_plugins_failures(const sg_plugins *pm, const char **last_error)
{
    long n = 0;
    *last_error = NULL;
    for (int i = 0; pm && i < pm->n; i++) {
        const sg_plugin *p = pm->list[i];
        n += (long)(p->errors + p->timeouts + p->ooms);
        if (p->last_error[0]) *last_error = p->last_error;
    }
    return n;
}

json_t *sg_plugins_admin(const sg_plugins *pm)
{
    json_t *arr = json_array();
    for (int i = 0; pm && i < pm->n; i++) {
        const sg_plugin *p = pm->list[i];
        json_t *d = describe(p);
        char ts[25];
        sg_format_ts(p->loaded_ms, ts);
        json_object_set_new(d, "state", json_string(p->off ? "off" : p->disabled ? "disabled" : "active"));
        json_object_set_new(d, "enabled", json_boolean(!p->off));
        json_object_set_new(d, "loaded_at", json_string(ts));
        json_object_set_new(
            d, "counters",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:i}", "calls", (json_int_t)p->calls,
                      "dropped", (json_int_t)p->dropped, "refused", (json_int_t)p->refused,
                      "subscriber_errors", (json_int_t)p->subscriber_errors,
                      "skipped", (json_int_t)p->skipped,
                      "errors", (json_int_t)p->errors, "timeouts", (json_int_t)p->timeouts,
                      "out_of_memory", (json_int_t)p->ooms, "time_ms", p->time_ns / 1e6,
                      "memory_bytes", (json_int_t)sg_sandbox_memory(p->sb),
                      "consecutive_failures", p->consecutive_failures));
        json_object_set_new(d, "last_error", p->last_error[0] ? json_string(p->last_error) : json_null());
        json_array_append_new(arr, d);
    }
    return json_pack("{s:s, s:o, s:O, s:O}", "directory", pm ? pm->dir : "", "plugins", arr,
                     "failed", pm && pm->failed ? pm->failed : json_null(), "last_reload",
                     pm && pm->last_reload ? pm->last_reload : json_null());
}
