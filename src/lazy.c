/* Updates as Lua tables whose fields are filled in on first use. */
#include "lazy.h"

#include "luajson.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <string.h>

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

static char lazy_mt_key; /* registry[&lazy_mt_key]: the metatable */

/* The hidden block of the update at t, or NULL. The table keeps it alive.
 * Only the host makes full userdata in a sandbox; the size is checked all
 * the same, as a plugin can move the block from one update to another. */
static lazy_rec *lazy_rec_of(lua_State *L, int t)
{
    lazy_rec *r = NULL;
    if (lua_rawgetp(L, t, &sg_json_hidden_key) == LUA_TUSERDATA) {
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
    if (f == LAZY_METADATA) sg_lua_push_json_text(L, s, r->len[f]);
    else lua_pushlstring(L, s, r->len[f]);
    lua_rawset(L, t);
}

static int is_hidden_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &sg_json_hidden_key;
}

static int raw_is_nil(lua_State *L, int t, const char *k)
{
    int nil = sg_lua_raw_field(L, t, k) == LUA_TNIL;
    lua_pop(L, 1);
    return nil;
}

/* For the encoder (luajson.h): every field filled in but the metadata,
 * which goes out as the text it came as when the plugin has not read it. */
static int lazy_prepare(lua_State *L, int t, const char **key, const char **text, size_t *n)
{
    lazy_rec *r = lazy_rec_of(L, t);
    if (!r) return 0;
    for (int f = 0; f < LAZY_METADATA; f++)
        lazy_fill(L, t, r, f);
    if (!(r->done & 1u << LAZY_METADATA) && r->len[LAZY_METADATA] != LAZY_ABSENT &&
        raw_is_nil(L, t, "metadata")) {
        *key = "metadata";
        *text = lazy_data(r, LAZY_METADATA);
        *n = r->len[LAZY_METADATA];
        return 1;
    }
    lazy_fill(L, t, r, LAZY_METADATA);
    return 0;
}

static const sg_json_deferred lazy_deferred = {lazy_prepare};

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
        if (!is_hidden_key(L, -2)) return 2;
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
    lua_rawsetp(L, t, &sg_json_hidden_key);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_mt_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        static const luaL_Reg mt[] = {
            {"__index", lazy_index}, {"__newindex", lazy_newindex}, {"__pairs", lazy_pairs}, {NULL, NULL}};
        luaL_newlib(L, mt);
        /* the plugin cannot swap it out from under the hidden block */
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pushlightuserdata(L, (void *)&lazy_deferred); /* how the encoder writes it */
        lua_rawsetp(L, -2, &sg_json_deferred_key);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &lazy_mt_key);
    }
    lua_setmetatable(L, t);
}

