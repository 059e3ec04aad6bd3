/* The publish pipeline every update takes, from a producer or a plugin:
 * validation, metadata builder, ingest filters, sequencing and queueing in
 * the hub, then the aggregators. */
#ifndef SG_INGEST_H
#define SG_INGEST_H

#include "hub.h"
#include "server_t.h"

/* Publish one validated update. The builder and the filters may change the
 * draft (the caller still frees it). emitted_by names the plugin that
 * emitted it (its own filter and aggregator skip it), or NULL. Returns 0
 * with res filled (res->dropped when a filter dropped it) or -1 with err. */
int sg_ingest(sg_server *s, sg_draft *d, const char *emitted_by, sg_publish_result *res,
              sg_error *err);

/* What became of update i of a batch: rc 0 with res (res->dropped when a
 * filter dropped it), or -1 with err. res points into the hub: use it
 * before returning. */
typedef void (*sg_ingest_done)(void *arg, size_t i, int rc, const sg_publish_result *res,
                               const sg_error *err);

/* Publish n updates as sg_ingest would one after the other, but with the
 * filters run plugin by plugin over all of them, so that each plugin's
 * state stays warm for the run. Each plugin still sees the updates in
 * their order, and they are sequenced in their order. done is called once
 * per update, as soon as its fate is known (dropped and refused updates
 * before the published ones). */
void sg_ingest_many(sg_server *s, sg_draft **ds, size_t n, const char *emitted_by,
                    sg_ingest_done done, void *arg);

/* A publish that runs plugins (a builder, ingest filters) waits until the
 * loop turn has read every request that arrived; then all of them go
 * through ingest together (sg_ingest_many), so that each plugin's state
 * stays warm for the run instead of being evicted by the network work
 * between requests. done answers each, in the run's order of fates; then
 * release(arg, 1) for each, once every answer is written (release(arg, 0)
 * when the gateway stops first). */
typedef struct sg_ingest_waiter {
    void (*done)(void *arg, int rc, const sg_publish_result *res, const sg_error *err);
    void (*release)(void *arg, int resume);
} sg_ingest_waiter;
/* Queue the draft (moved: the caller's is cleared) for this turn's run.
 * 0, or -1 when there is no memory for it (the draft is the caller's). */
int sg_ingest_defer(sg_server *s, sg_draft *d, const sg_ingest_waiter *w, void *arg);

/* statusgw.emit: validate now, publish on the next loop turn. */
int sg_ingest_emit(void *server, json_t *update, const char *plugin, char *err, size_t errlen);

/* Set up and tear down the emit queue. */
int sg_ingest_init(sg_server *s);
void sg_ingest_free(sg_server *s);

#endif
