/* Lua values and JSON, both ways, with one set of rules (luajson.c):
 * objects become tables with string keys, arrays sequences, null the
 * statusgw.json.null sentinel. */
#ifndef SG_LUAJSON_H
#define SG_LUAJSON_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>

/* statusgw.json.null is a light userdata to this. */
extern char sg_json_null;
void sg_lua_push_null(lua_State *L);

/* Decoding. push_json_text takes text the scanner (jtext.h) accepted. */
void sg_lua_push_json(lua_State *L, json_t *v);
void sg_lua_push_json_text(lua_State *L, const char *s, size_t n);

/* Encoding, under the state's budget (sandbox.h). NULL or -1 with a
 * sentence in err (functions, cycles, NaN, mixed keys, over budget...).
 * to_json_text: a new NUL-terminated string, its length in *len.
 * push_json_string: the text as a Lua string on the stack (a memory error
 * raised as lua_pushlstring would). to_json: the same as a tree. */
char *sg_lua_to_json_text(lua_State *L, int idx, size_t *len, char *err, size_t errlen);
int sg_lua_push_json_string(lua_State *L, int idx, char *err, size_t errlen);
json_t *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen);

/* A table may keep a hidden block at t[&sg_json_hidden_key], which the
 * encoder skips, and a field as JSON text until it is read (an update's
 * metadata: lazy.c). Its metatable then holds, at [&sg_json_deferred_key],
 * a light userdata to one of these, which the encoder asks first. */
extern char sg_json_hidden_key;
extern char sg_json_deferred_key;
typedef struct sg_json_deferred {
    /* Fill in every deferred field of the table at t but one still held as
     * JSON text: 1 with its key and text, or 0 when none is. */
    int (*prepare)(lua_State *L, int t, const char **key, const char **text, size_t *n);
} sg_json_deferred;

#endif
