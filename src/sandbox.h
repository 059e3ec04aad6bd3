/* A Lua 5.4 state for one plugin: a counting allocator with a memory cap, a
 * count hook enforcing an instruction budget and a wall-clock deadline per
 * call (which an inner pcall cannot swallow), only safe libraries (no
 * files, no load, no finalizers), source loaded in text mode. The host API
 * (hostapi.h), the Lua<->JSON bridge (luajson.h) and the lazy update tables
 * (lazy.h) are built on it. */
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

/* A new sandbox with the safe libraries; name labels its log lines. NULL
 * when out of memory. */
sg_sandbox *sg_sandbox_new(const char *name, const sg_sandbox_limits *lim);
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

/* What calls cost, measured for `statusgw plugin run`: while a profile is
 * set, every call runs with the count hook on (every SG_PROFILE_EVERY
 * instructions, so the count is that exact) and adds to it. Off (NULL) in
 * the gateway, where calls run without a hook until the watchdog looks. */
#define SG_PROFILE_EVERY 100
typedef struct sg_sandbox_profile {
    uint64_t calls;
    uint64_t ns;          /* wall time inside the calls */
    long instructions;    /* VM instructions, to SG_PROFILE_EVERY */
    size_t peak_memory;   /* the state's largest size during a call */
} sg_sandbox_profile;
void sg_sandbox_set_profile(sg_sandbox_profile *p);

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

/* What encoding a plugin's value may cost. Encoding (json.encode, emit,
 * what a builder, filter or forwarder returns) spends it as it goes: the
 * output may reach what is left of the state's memory cap, within the
 * call's deadline (or timeout_ms of its own after a call). Over either,
 * sg_budget_spend fails, and inside a call the call is over its budget. In
 * a state that is not a sandbox's (config, specs) nothing is limited. */
typedef struct sg_budget {
    sg_sandbox *sb; /* NULL: no limits */
    size_t max;     /* output bytes it may reach */
    size_t used;
    uint64_t deadline_ns;
    unsigned ticks;
    int failed; /* over the size or the time */
} sg_budget;

void sg_budget_init(sg_budget *g, lua_State *L);
/* Spend n bytes: 0, or -1 with a sentence in err once over. */
int sg_budget_spend(sg_budget *g, size_t n, char *err, size_t errlen);

#endif
