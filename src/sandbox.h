/* A Lua 5.4 state for one plugin: a counting allocator with a memory cap, a
 * count hook enforcing an instruction budget and a wall-clock deadline per
 * call (which an inner pcall cannot swallow), only safe libraries, source
 * loaded in text mode, and the host API table `statusgw`. */
#ifndef SG_SANDBOX_H
#define SG_SANDBOX_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_sandbox sg_sandbox;

typedef struct sg_sandbox_limits {
    size_t memory;        /* bytes the state may hold */
    long instructions;    /* VM instructions per call */
    int timeout_ms;       /* wall clock per call */
} sg_sandbox_limits;

enum sg_sb_status { SG_SB_OK = 0, SG_SB_ERROR, SG_SB_TIMEOUT, SG_SB_OOM };

/* statusgw.emit(update): the host publishes it; returns 0 or -1 with err. */
typedef int (*sg_emit_fn)(void *arg, json_t *update, const char *plugin, char *err,
                          size_t errlen);

/* A new sandbox; name labels its log lines. NULL when out of memory. */
sg_sandbox *sg_sandbox_new(const char *name, const sg_sandbox_limits *lim, sg_emit_fn emit,
                           void *emit_arg);
void sg_sandbox_free(sg_sandbox *sb);
lua_State *sg_sandbox_state(sg_sandbox *sb);

/* Load a file (text only) and run it under the limits, leaving what it
 * returns on the stack. On failure returns the status with "file:line:
 * message" in err and nothing pushed. */
int sg_sandbox_load(sg_sandbox *sb, const char *path, char *err, size_t errlen);

/* lua_pcall under the limits. On failure the error message is popped into
 * sg_sandbox_error(). */
int sg_sandbox_call(sg_sandbox *sb, int nargs, int nresults);
/* The same for a call that started at start_ns (CLOCK_MONOTONIC). */
int sg_sandbox_call_at(sg_sandbox *sb, int nargs, int nresults, uint64_t start_ns);
const char *sg_sandbox_error(const sg_sandbox *sb);
size_t sg_sandbox_memory(const sg_sandbox *sb);
const char *sg_sandbox_status_name(int status);

/* For C code that runs long inside a call without Lua instructions:
 * raises the budget error once the call is past its deadline (or has
 * already overrun). Does nothing outside a sandbox call. */
void sg_sandbox_check_budget(lua_State *L);

/* string.find, match, gmatch and gsub whose matching checks the budget. */
void sg_lua_open_patterns(lua_State *L);

/* Push t[k] without metamethods and return its type: the host reads what
 * plugins made (their table, their results) outside their protected calls,
 * where no code of theirs may run: an __index that throws there would
 * abort the gateway. */
int sg_lua_raw_field(lua_State *L, int t, const char *k);

/* Whether the value at idx is what statusgw.refuse made: a table with
 * status, code, message and retry_after, checked when it was made. */
int sg_lua_is_refusal(lua_State *L, int idx);

/* JSON <-> Lua. Objects become tables with string keys, arrays sequences,
 * null the statusgw.json.null sentinel. */
void sg_lua_push_json(lua_State *L, json_t *v);
/* NULL with a sentence in err (functions, cycles, NaN, mixed keys...). */
json_t *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen);

/* The same with JSON text: push text the scanner (jtext.h) accepted, and
 * encode a Lua value as compact JSON (a new string, NUL-terminated, its
 * length in *len; NULL with a sentence in err). */
void sg_lua_push_json_text(lua_State *L, const char *s, size_t n);
char *sg_lua_to_json_text(lua_State *L, int idx, size_t *len, char *err, size_t errlen);

/* Give the table at t the fields text, source, idempotency_key (strings)
 * and metadata (decoded from the JSON text s[3]), each filled in on first
 * use: reading it, pairs, or encoding the table. A NULL s[f] is a field
 * the table does not have. */
void sg_lua_set_lazy(lua_State *L, int t, const char *const s[4], const size_t n[4]);

#endif
