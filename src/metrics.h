/* What operators look at: GET /metrics in the Prometheus text format and
 * GET /api/v1/stats, the analytics the original system planned. */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <event2/buffer.h>
#include <jansson.h>

#include "metrics_t.h"

typedef struct sg_server sg_server;

/* Count a publish attempt, and a refused one by its error code. */
void sg_metrics_received(int n);
void sg_metrics_rejected(const char *code);
void sg_metrics_dropped(void);

/* Write every metric into out. */
void sg_metrics_render(sg_server *s, struct evbuffer *out);
/* The analytics document. */
json_t *sg_stats_json(sg_server *s);

#endif
