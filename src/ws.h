/* RFC 6455 WebSocket connections on the HTTP layer's bufferevents. wslay
 * parses and validates client frames and answers control frames; data
 * frames from the server are written straight to the output evbuffer, so a
 * shared frame is appended by reference with no copy. */
#ifndef SG_WS_H
#define SG_WS_H

#include <stddef.h>
#include <stdint.h>

#include "blob.h"
#include "http.h"

#define SG_WS_CLOSE_NORMAL 1000
#define SG_WS_CLOSE_GOING_AWAY 1001
#define SG_WS_CLOSE_PROTOCOL 1002
#define SG_WS_CLOSE_UNSUPPORTED 1003
#define SG_WS_CLOSE_INVALID_DATA 1007
#define SG_WS_CLOSE_TOO_BIG 1009
#define SG_WS_CLOSE_INTERNAL 1011
#define SG_WS_CLOSE_SLOW_CONSUMER 4008

typedef struct sg_ws sg_ws;

/* The protocol spoken over the socket (Phoenix Channels: phoenix.c). The
 * WebSocket layer knows nothing of it: it validates the handshake, asks
 * accept, answers 101, and hands over each complete text message. */
typedef struct sg_ws_handler {
    const char *subprotocol; /* named in the 101 when the client offers it; NULL: none */
    /* After a valid handshake, before the 101: the protocol's state for the
     * new socket, or NULL with err set (answered as an HTTP error: a bad
     * request, unauthorized, out of memory). */
    void *(*accept)(sg_ws *ws, sg_conn *c, sg_req *r, sg_error *err);
    void (*on_text)(void *state, const char *msg, size_t len);
    void (*on_close)(void *state); /* the socket is going: free the state */
} sg_ws_handler;

/* Serve a WebSocket upgrade request with h, or answer an HTTP error. */
void sg_ws_upgrade(sg_conn *c, sg_req *r, const sg_ws_handler *h);

/* Write one text frame (payload copied). -1 once the socket is closing;
 * out of memory closes it with 1011. */
int sg_ws_send_text(sg_ws *ws, const char *data, size_t len);

/* Append ready-made frames by reference. Past the output cap the socket
 * is closed with 4008 "slow consumer" and -1 returned; when the frames
 * cannot be appended (out of memory), with 1011. */
int sg_ws_send_shared(sg_ws *ws, sg_blob *b);

/* Send a close frame with code and reason, then close the connection once
 * it is written. Nothing is written after it. */
void sg_ws_close(sg_ws *ws, int code, const char *reason);

/* Write a FIN text frame header for len payload bytes into h (10 bytes
 * room); returns its length. */
size_t sg_ws_text_header(uint8_t *h, size_t len);

#endif
