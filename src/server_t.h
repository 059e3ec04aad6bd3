/* The server's type (a type header, as HAProxy's -t.h): the parts of one
 * gateway process (config, hub, store, plugins, webhooks, security), the
 * listener, every connection and the write queues. Every layer reaches its
 * neighbours through it; it includes nothing but the types it points at.
 * Its functions are in server.h. */
#ifndef SG_SERVER_T_H
#define SG_SERVER_T_H

#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <stdint.h>

#include "metrics_t.h"

typedef struct sg_server sg_server;
typedef struct sg_conn sg_conn;
typedef struct sg_req sg_req;
struct sg_config;
struct sg_hub;
struct sg_store;
struct sg_plugins;
struct sg_ingest_queue;
struct sg_webhooks;
struct sg_security;
struct sg_dict;
struct sg_longpoll;

enum { SG_WQ_ANSWERS, SG_WQ_DELIVERIES };

struct sg_server {
    struct event_base *base;
    /* the layer above: routes one complete request (api.c's sg_api_handle),
     * writing a response or handing the connection to a transport */
    void (*handle)(sg_conn *c, sg_req *r);
    const struct sg_config *cfg;
    struct sg_hub *hub;
    struct sg_store *store;
    struct sg_plugins *plugins;
    struct sg_ingest_queue *ingest;
    struct sg_webhooks *webhooks;
    struct sg_security *security;
    struct sg_longpoll *longpoll; /* long-poll sessions (longpoll.c), made on first use */
    struct sg_dict *per_ip; /* peer address -> open connections (int in the pointer) */
    struct evconnlistener *listener;
    sg_conn *conns;
    int n_conns;
    sg_conn *reap;
    struct event *reap_ev;
    /* connections with something to write soon: HTTP answers (all of them
     * once this loop turn's reads are done) and pushed updates (in slices) */
    struct sg_writeq { sg_conn *head, *tail; struct event *ev; int armed; } wq[2];
    struct event *heartbeat_ev; /* SSE comments */
    struct event *sigint_ev, *sigterm_ev, *sighup_ev;
    struct event *shutdown_timer;
    struct event *shutdown_check; /* exits the loop once nothing is left */
    int shutting_down;
    int64_t started_ms;
    sg_net_stats net; /* what the transports count (metrics_t.h) */
};

#endif
