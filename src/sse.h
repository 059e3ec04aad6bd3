/* Server-Sent Events subscribers (docs/protocol.md, section 4). */
#ifndef SG_SSE_H
#define SG_SSE_H

#include "http.h"

/* Serve GET /api/v1/conversations/{id}/events on c: answer the stream
 * headers, replay what Last-Event-ID missed, and subscribe. Answers an
 * error response instead when the request is bad. */
void sg_sse_start(sg_conn *c, sg_req *r, const char *conv_id);

/* Serve GET /api/v1/events?conversations=a,b,c (or * with an admin
 * token): one stream for several conversations, each event's id giving
 * every conversation's position (docs/protocol.md). */
void sg_sse_start_multi(sg_conn *c, sg_req *r);

#endif
