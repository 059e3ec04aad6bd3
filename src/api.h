/* The producer and operator HTTP API (docs/protocol.md, section 2). */
#ifndef SG_API_H
#define SG_API_H

#include "http.h"

/* Route one complete request. Writes a response or hands the connection
 * to a transport. */
void sg_api_handle(sg_conn *c, sg_req *r);

#endif
