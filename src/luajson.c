/* Lua values and JSON, both ways, with one set of rules: objects are
 * tables with string keys, arrays sequences, null the statusgw.json.null
 * sentinel; functions, cycles, NaN and tables that mix list items with
 * named keys have no JSON form. Decoding reads jansson trees or JSON text
 * the scanner accepted; encoding writes text (and a tree is that text
 * parsed), spending the sandbox's budget as it goes. */
#include "luajson.h"

#include "jtext.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

char sg_json_null;
char sg_json_hidden_key;
char sg_json_deferred_key;

void sg_lua_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, &sg_json_null);
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
    default: lua_pushlightuserdata(L, &sg_json_null); break;
    }
}

void sg_lua_push_json(lua_State *L, json_t *v)
{
    push_json(L, v, 0);
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
    case 'n': lua_pushlightuserdata(L, &sg_json_null); *pp = p + 4; return;
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

/* Text being written: in the inline room until it outgrows it. */
typedef struct tbuf {
    char *s;
    size_t n, cap;
    int oom;
    sg_budget g;
    char err[160]; /* why tb_put stopped, when the budget did */
    char inl[512];
} tbuf;

static void tb_init(tbuf *b, lua_State *L)
{
    sg_budget_init(&b->g, L);
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
    if (k > 1 && sg_budget_spend(&b->g, k, b->err, sizeof(b->err)) < 0) return -1;
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
    if (sg_budget_spend(&b->g, k + 2, err, errlen) < 0) return -1;
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
        if (k && (++b->g.ticks & 63) == 0 && sg_budget_spend(&b->g, 0, err, errlen) < 0) return -1;
    }
    return tb_put(b, "\"", 1);
}

static int to_text(lua_State *L, int idx, int depth, tbuf *b, char *err, size_t errlen);

static int is_hidden_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &sg_json_hidden_key;
}

/* A table as a JSON array or object; raw_key: a field still as JSON text
 * (raw, raw_n), written as it is. */
static int table_text(lua_State *L, int idx, int depth, tbuf *b, const char *raw_key, const char *raw,
                      size_t raw_n, char *err, size_t errlen)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    size_t count = 0;
    /* no t[1]: not a list, so an object (or an error the loop reports) */
    int string_keys = raw_key != NULL || n == 0;
    /* a table whose first key is a string is an object (or an error, which
     * the loop below reports): no need to count its keys first */
    if (!string_keys) {
        lua_pushnil(L);
        if (lua_next(L, idx)) {
            string_keys = lua_type(L, -2) == LUA_TSTRING || is_hidden_key(L, -2);
            lua_pop(L, 2);
        }
    }
    if (!string_keys) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (!is_hidden_key(L, -2)) count++;
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
        if (is_hidden_key(L, -2)) {
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
    if (raw_key && ((!first && tb_put(b, ",", 1) < 0) || tb_string(b, raw_key, strlen(raw_key), err, errlen) < 0 ||
                    tb_put(b, ":", 1) < 0 || tb_put(b, raw, raw_n) < 0))
        return -1;
    return tb_put(b, "}", 1);
}

static int to_text(lua_State *L, int idx, int depth, tbuf *b, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    /* every value costs a byte at least; strings count their length below */
    if (sg_budget_spend(&b->g, 1, err, errlen) < 0) return -1;
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
        if (lua_touserdata(L, idx) == &sg_json_null) return tb_put(b, "null", 4);
        break;
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4)) {
            snprintf(err, errlen, "too deep");
            return -1;
        }
        /* a table that keeps a field as JSON text (an update's metadata,
         * lazy.c) says so through its metatable: the text goes out as it
         * is, with no decoding and encoding again */
        const char *raw_key = NULL, *raw = NULL;
        size_t raw_n = 0;
        if (lua_getmetatable(L, idx)) {
            const sg_json_deferred *d = NULL;
            if (lua_rawgetp(L, -1, &sg_json_deferred_key) == LUA_TLIGHTUSERDATA) d = lua_touserdata(L, -1);
            lua_pop(L, 2);
            if (d && !d->prepare(L, idx, &raw_key, &raw, &raw_n)) raw_key = NULL;
        }
        return table_text(L, idx, depth, b, raw_key, raw, raw_n, err, errlen);
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

static int push_tbuf(lua_State *L)
{
    const tbuf *b = lua_touserdata(L, 1);
    lua_pushlstring(L, b->s, b->n);
    return 1;
}

int sg_lua_push_json_string(lua_State *L, int idx, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    tbuf b;
    if (encode(L, idx, &b, err, errlen) < 0) {
        tb_free(&b);
        return -1;
    }
    /* the string may be refused (the memory cap): push it under a pcall
     * of our own, so the buffer is freed before the error goes on */
    lua_pushcfunction(L, push_tbuf);
    lua_pushlightuserdata(L, &b);
    int rc = lua_pcall(L, 1, 1, 0);
    tb_free(&b);
    if (rc != LUA_OK) lua_error(L);
    return 0;
}

json_t *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    /* one encoder, one set of rules: the text, then jansson's tree of it */
    size_t n;
    char *s = sg_lua_to_json_text(L, idx, &n, err, errlen);
    if (!s) return NULL;
    json_error_t je;
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    free(s);
    if (!j) snprintf(err, errlen, "out of memory");
    return j;
}
