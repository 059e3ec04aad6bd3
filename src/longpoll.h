/* Phoenix's long-poll transport at /socket/longpoll (longpoll.c): the
 * WebSocket's channels for clients that cannot open one; phoenix.js falls
 * back to it by itself with longPollFallbackMs. */
#ifndef SG_LONGPOLL_H
#define SG_LONGPOLL_H

#include "http.h"

typedef struct sg_longpoll sg_longpoll;

/* GET or POST /socket/longpoll. */
void sg_longpoll_handle(sg_conn *c, sg_req *r);
/* Sessions open now. */
int sg_longpoll_sessions(const sg_server *srv);
/* Close every session (the gateway stops). */
void sg_longpoll_free(sg_server *srv);

#endif
