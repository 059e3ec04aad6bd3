/* statusgw_model: the status model's C code as a Lua module, so the unit
 * specs exercise the very validation and encoding the gateway runs. */
#include "status.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

static sg_limits limits = {SG_DEFAULT_MAX_TEXT, SG_DEFAULT_MAX_METADATA};

/* validate(json_text) -> true, conversation_id, category | false, code, message, field */
static int l_validate(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    sg_draft d;
    sg_error e;
    if (sg_draft_parse(s, n, &limits, &d, &e) < 0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, e.code);
        lua_pushstring(L, e.message);
        if (e.field) lua_pushstring(L, e.field); else lua_pushnil(L);
        return 4;
    }
    lua_pushboolean(L, 1);
    lua_pushstring(L, d.conv_id);
    lua_pushstring(L, sg_category_name(d.category));
    sg_draft_free(&d);
    return 3;
}

/* encode(json_text, seq, ts_ms) -> the update as delivered */
static int l_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_Integer seq = luaL_checkinteger(L, 2);
    lua_Integer ts = luaL_checkinteger(L, 3);
    sg_draft d;
    sg_error e;
    if (sg_draft_parse(s, n, &limits, &d, &e) < 0) return luaL_error(L, "invalid update: %s", e.message);
    sg_update *u = sg_update_new(&d, (uint64_t)seq, ts);
    sg_draft_free(&d);
    if (!u) return luaL_error(L, "out of memory");
    lua_pushlstring(L, u->json, u->json_len);
    sg_update_unref(u);
    return 1;
}

static int l_format_ts(lua_State *L)
{
    char out[25];
    sg_format_ts(luaL_checkinteger(L, 1), out);
    lua_pushstring(L, out);
    return 1;
}

static int l_conv_id_valid(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, sg_conv_id_valid(s, n));
    return 1;
}

/* parse_categories("a,b") -> {names...} | nil, bad */
static int l_parse_categories(lua_State *L)
{
    uint64_t mask;
    char bad[80];
    if (sg_category_parse_csv(luaL_checkstring(L, 1), &mask, bad, sizeof(bad)) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, bad);
        return 2;
    }
    lua_newtable(L);
    int k = 1;
    for (int i = 0; i < sg_category_count(); i++)
        if (mask & (1ULL << i)) {
            lua_pushstring(L, sg_category_name(i));
            lua_rawseti(L, -2, k++);
        }
    return 1;
}

static int l_categories(lua_State *L)
{
    lua_newtable(L);
    for (int i = 0; i < sg_category_count(); i++) {
        lua_pushstring(L, sg_category_desc(i));
        lua_setfield(L, -2, sg_category_name(i));
    }
    return 1;
}

/* The category table is the library's own: freed when Lua unloads it, so
 * the sanitizer's leak check does not find it orphaned. */
__attribute__((destructor)) static void unload(void)
{
    sg_categories_free();
}

int luaopen_statusgw_model(lua_State *L)
{
    char err[128];
    sg_categories_init(NULL, err, sizeof(err));
    static const luaL_Reg fns[] = {{"validate", l_validate},
                                   {"encode", l_encode},
                                   {"format_ts", l_format_ts},
                                   {"conv_id_valid", l_conv_id_valid},
                                   {"parse_categories", l_parse_categories},
                                   {"categories", l_categories},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
