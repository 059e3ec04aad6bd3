/* The host API a plugin sees (hostapi.c): print, and the statusgw table:
 * log, now_ms, emit, refuse, json.encode, json.decode, json.null. */
#ifndef SG_HOSTAPI_H
#define SG_HOSTAPI_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>

/* statusgw.emit(update): the host publishes it; returns 0 or -1 with err. */
typedef int (*sg_emit_fn)(void *arg, json_t *update, const char *plugin, char *err,
                          size_t errlen);

/* Give the state the host API; name labels its log lines, emit NULL makes
 * statusgw.emit answer nil and "emit is not available here". 0, or -1. */
int sg_host_open(lua_State *L, const char *name, sg_emit_fn emit, void *emit_arg);

/* Push the statusgw.json table (encode, decode, null): plugins get it in
 * sg_host_open, the statusgw_plugin module for specs. */
void sg_host_push_json(lua_State *L);

/* Whether the value at idx is what statusgw.refuse made: a table with
 * status, code, message and retry_after, checked when it was made. */
int sg_lua_is_refusal(lua_State *L, int idx);

#endif
