/* An update as a plugin sees it: a table with its conversation and
 * category set and its other fields (text, source, idempotency_key, and
 * metadata as JSON text) filled in on first use (lazy.c). */
#ifndef SG_LAZY_H
#define SG_LAZY_H

#include <lua.h>
#include <stddef.h>

/* Give the table at t the fields text, source, idempotency_key (strings)
 * and metadata (decoded from the JSON text s[3]), each filled in on first
 * use: reading it, pairs, or encoding the table (which writes metadata
 * the plugin has not read as the text it came as). A NULL s[f] is a field
 * the table does not have. */
void sg_lua_set_lazy(lua_State *L, int t, const char *const s[4], const size_t n[4]);

#endif
