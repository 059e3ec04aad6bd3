/* Phoenix Channels V2 over a WebSocket, with the status channel
 * (docs/protocol.md, section 3): frames are [join_ref, ref, topic, event,
 * payload]. */
#ifndef SG_PHOENIX_H
#define SG_PHOENIX_H

#include "security.h"
#include "ws.h"

typedef struct sg_phx sg_phx;

/* How a socket's frames leave: over a WebSocket (here), or a long-poll
 * session (longpoll.c). Shared frames come encoded for the transport:
 * WebSocket frames, or, with longpoll, each frame a JSON string after a
 * comma (the messages of a long-poll answer). */
typedef struct sg_phx_io {
    void (*send_text)(void *io, const char *frame, size_t len); /* one frame's text */
    int (*send_shared)(void *io, sg_blob *b); /* -1: the subscriber is cut off */
    void (*close)(void *io, int code, const char *reason); /* the socket ends */
    int longpoll;
} sg_phx_io;

/* A socket's state, with the claims of its token (moved in). NULL when
 * out of memory. */
sg_phx *sg_phx_new(sg_server *srv, const char *peer, sg_claims *claims, const sg_phx_io *io, void *io_state);
/* One message from the client: [join_ref, ref, topic, event, payload]. */
void sg_phx_message(sg_phx *p, const char *msg, size_t len);
/* The socket is gone: leave every channel and free it. */
void sg_phx_free(sg_phx *p);
/* Write ',' and frame as a JSON string into out (room for 6 * len + 3):
 * one message of a long-poll answer. Returns the bytes written. */
size_t sg_phx_lp_string(char *out, const char *frame, size_t len);
/* Check a connecting socket's request: vsn, Origin and token (tok).
 * 0 with claims, or -1 with err. */
int sg_phx_check(sg_conn *c, sg_req *r, const char *tok, sg_claims *claims, sg_error *err);

/* The Phoenix Channels handler for sg_ws_upgrade: a socket's state, one
 * complete text message at a time, and on close every channel left. */
extern const sg_ws_handler sg_phx_handler;

#endif
