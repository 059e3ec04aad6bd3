/* The server's life: the listener, signals (SIGTERM/SIGINT stop, SIGHUP
 * reloads), plugin reloads and the shutdown sequence. */
#ifndef SG_SERVER_H
#define SG_SERVER_H

#include <jansson.h>
#include <stddef.h>

#include "server_t.h"

/* Bind the listener and register signals. -1 with err filled (port in use). */
int sg_server_start(sg_server *s, char *err, size_t errlen);
/* Stop accepting, flush, say goodbye to every client; the loop exits once
 * every connection is gone or the shutdown timeout passes. */
void sg_server_shutdown(sg_server *s, const char *why);
/* Reload plugins (SIGHUP, POST /admin/reload); returns the report. */
json_t *sg_server_reload(sg_server *s, const char *why);
/* Close every connection and free server resources. */
void sg_server_stop(sg_server *s);

#endif
