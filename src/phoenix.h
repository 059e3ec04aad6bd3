/* Phoenix Channels V2 over a WebSocket, with the status channel
 * (docs/protocol.md, section 3): frames are [join_ref, ref, topic, event,
 * payload]. */
#ifndef SG_PHOENIX_H
#define SG_PHOENIX_H

#include "ws.h"

typedef struct sg_phx sg_phx;

sg_phx *sg_phx_new(sg_ws *ws);
/* Leave every channel and free. */
void sg_phx_free(sg_phx *p);
/* One complete text message from the client. */
void sg_phx_on_text(sg_phx *p, const char *msg, size_t len);

#endif
