/* Webhook delivery (docs/protocol.md, section 5): endpoints from the config select updates
 * (categories, a conversation pattern, a plugin forwarder's match), batch
 * them by size and delay, and deliver them signed per Standard Webhooks
 * with libcurl's multi interface on the event loop. Failures are retried on
 * a schedule with jitter; what exhausts it goes to a dead-letter file. */
#ifndef SG_WEBHOOK_H
#define SG_WEBHOOK_H

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "status.h"

typedef struct sg_webhooks sg_webhooks;
struct sg_plugins;
struct sg_store;

/* Parse cfg->webhooks and start. NULL with a sentence in err when the
 * section is invalid (the daemon exits 2). With no endpoints, returns a
 * host that does nothing. A durable store (one with an outbox) keeps the
 * messages: those it kept are loaded and sent at their next attempt, with
 * their webhook-id, and dead letters live there too (the file is an
 * export). */
sg_webhooks *sg_webhooks_new(struct event_base *base, const sg_config *cfg,
                             struct sg_plugins *plugins, struct sg_store *store, char *err, size_t errlen);
/* Free: what is still queued stays in a durable store; without one it
 * is dead-lettered. */
void sg_webhooks_free(sg_webhooks *wh);

/* Offer one published update (its encoded JSON) to every endpoint. */
void sg_webhooks_offer(sg_webhooks *wh, const char *conv_id, const sg_update *u);

/* Stop batching: send what is pending now. */
void sg_webhooks_flush(sg_webhooks *wh);
/* Attempts in flight. */
int sg_webhooks_in_flight(const sg_webhooks *wh);

/* GET /admin/webhooks */
json_t *sg_webhooks_admin(const sg_webhooks *wh);
/* POST /admin/webhooks/{name}/redeliver: requeue that endpoint's dead
 * letters. Returns the count, or -1 when there is no such endpoint. */
int sg_webhooks_redeliver(sg_webhooks *wh, const char *name);
/* Validate a config's webhooks section without starting anything. */
int sg_webhooks_check(const sg_config *cfg, char *err, size_t errlen);

#endif
