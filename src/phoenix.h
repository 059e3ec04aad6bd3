/* Phoenix Channels V2 over a WebSocket, with the status channel
 * (docs/protocol.md, section 3): frames are [join_ref, ref, topic, event,
 * payload]. */
#ifndef SG_PHOENIX_H
#define SG_PHOENIX_H

#include "ws.h"

typedef struct sg_phx sg_phx;

/* The Phoenix Channels handler for sg_ws_upgrade: a socket's state, one
 * complete text message at a time, and on close every channel left. */
extern const sg_ws_handler sg_phx_handler;

#endif
