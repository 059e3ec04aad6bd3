/* The publish pipeline every update takes, from a producer or a plugin:
 * validation, metadata builder, ingest filters, sequencing and queueing in
 * the hub, then the aggregators. */
#ifndef SG_INGEST_H
#define SG_INGEST_H

#include "http.h"

/* Publish one validated update. The builder and the filters may change the
 * draft (the caller still frees it). emitted_by names the plugin that
 * emitted it (its own filter and aggregator skip it), or NULL. Returns 0
 * with res filled (res->dropped when a filter dropped it) or -1 with err. */
int sg_ingest(sg_server *s, sg_draft *d, const char *emitted_by, sg_publish_result *res,
              sg_error *err);

/* statusgw.emit: validate now, publish on the next loop turn. */
int sg_ingest_emit(void *server, json_t *update, const char *plugin, char *err, size_t errlen);

/* Set up and tear down the emit queue. */
int sg_ingest_init(sg_server *s);
void sg_ingest_free(sg_server *s);

#endif
