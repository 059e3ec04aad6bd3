/* A request that opens conversations the store reads on a later loop
 * turn (the Redis engine: a conversation's epoch and last seq come from
 * Redis) waits for them: the connection parses nothing more meanwhile,
 * and the request is handled again once they are loaded (or answered
 * 404 / 503 when they cannot be). */
#ifndef SG_LOADWAIT_H
#define SG_LOADWAIT_H

#include "http.h"
#include "hub.h"

/* 1 when some of cvs[0..n) is loading: the request is handled again
 * later (the caller returns at once); 0 when every one is loaded. */
int sg_await_loaded(sg_conn *c, sg_hub *h, sg_conv *const *cvs, int n);

#endif
