/* The listener, signals and the shutdown sequence. */
#include "server.h"

#include "http.h"
#include "hub.h"
#include "log.h"
#include "plugin.h"
#include "webhook.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    sg_http_accept(arg, fd, sa, salen);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    sg_log(SG_LOG_WARN, "accept_error", "errno=%d reason=%s", err,
           sg_log_q(evutil_socket_error_to_string(err)));
}

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    sg_log(SG_LOG_WARN, "shutdown_timeout", "connections_left=%d", s->n_conns);
    event_base_loopexit(s->base, NULL);
}

json_t *sg_server_reload(sg_server *s, const char *why)
{
    json_t *report = sg_plugins_reload(s->plugins);
    sg_log(SG_LOG_INFO, "plugins_reloaded", "trigger=%s loaded=%zu failed=%zu removed=%zu", why,
           json_array_size(json_object_get(report, "loaded")),
           json_array_size(json_object_get(report, "failed")),
           json_array_size(json_object_get(report, "removed")));
    return report;
}

/* While stopping: leave the loop once no client and no webhook attempt is
 * left. */
static void on_shutdown_check(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    if (s->n_conns == 0 && sg_webhooks_in_flight(s->webhooks) == 0) event_base_loopexit(s->base, NULL);
}

void sg_server_shutdown(sg_server *s, const char *why)
{
    if (s->shutting_down) return;
    s->shutting_down = 1;
    sg_log(SG_LOG_INFO, "shutdown", "reason=%s pending=%d connections=%d", why,
           sg_hub_pending(s->hub), s->n_conns);
    if (s->listener) {
        evconnlistener_free(s->listener);
        s->listener = NULL;
    }
    sg_hub_flush_all(s->hub);
    sg_webhooks_flush(s->webhooks); /* in-flight attempts get the timeout; the rest is kept */
    for (sg_conn *c = s->conns; c; c = c->next) {
        if (c->killed) continue;
        if (c->proto && c->proto->on_shutdown)
            c->proto->on_shutdown(c);
        else
            sg_conn_close_after_write(c);
    }
    s->shutdown_check = event_new(s->base, -1, EV_PERSIST, on_shutdown_check, s);
    struct timeval tick = {0, 20000};
    event_add(s->shutdown_check, &tick);
    s->shutdown_timer = evtimer_new(s->base, on_shutdown_timeout, s);
    struct timeval tv = {s->cfg->shutdown_timeout_ms / 1000,
                         (s->cfg->shutdown_timeout_ms % 1000) * 1000};
    evtimer_add(s->shutdown_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    sg_server *s = arg;
    if (sig == SIGHUP) {
        json_decref(sg_server_reload(s, "SIGHUP"));
        return;
    }
    if (s->shutting_down) {
        sg_log(SG_LOG_WARN, "shutdown_forced", "signal=%d", (int)sig);
        event_base_loopexit(s->base, NULL);
        return;
    }
    sg_server_shutdown(s, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    for (sg_conn *c = s->conns; c; c = c->next)
        if (c->mode == SG_CONN_SSE && !c->killed && !c->closing)
        {
            evbuffer_add(bufferevent_get_output(c->bev), ":\n\n", 3);
            sg_conn_kick(c);
        }
}

int sg_server_start(sg_server *s, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof(port), "%d", s->cfg->listen_port);
    int rc = getaddrinfo(s->cfg->listen_host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", s->cfg->listen_host,
                 gai_strerror(rc));
        return -1;
    }
    s->listener = evconnlistener_new_bind(
        s->base, on_accept, s,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC |
            (s->cfg->reuse_port ? LEV_OPT_REUSEABLE_PORT : 0),
        4096, ai->ai_addr, (int)ai->ai_addrlen);
    int e = errno;
    freeaddrinfo(ai);
    if (!s->listener) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", s->cfg->listen_host,
                 s->cfg->listen_port, strerror(e));
        return -1;
    }
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* past a file-size limit a write fails (the store retries it) instead of killing us */
    s->sigint_ev = evsignal_new(s->base, SIGINT, on_signal, s);
    s->sigterm_ev = evsignal_new(s->base, SIGTERM, on_signal, s);
    s->sighup_ev = evsignal_new(s->base, SIGHUP, on_signal, s);
    evsignal_add(s->sigint_ev, NULL);
    evsignal_add(s->sigterm_ev, NULL);
    evsignal_add(s->sighup_ev, NULL);
    s->heartbeat_ev = event_new(s->base, -1, EV_PERSIST, on_heartbeat, s);
    struct timeval hb = {s->cfg->sse_heartbeat_s, 0};
    event_add(s->heartbeat_ev, &hb);
    s->started_ms = sg_now_ms();
    return 0;
}

static void free_event(struct event **ev)
{
    if (*ev) event_free(*ev);
    *ev = NULL;
}

void sg_server_stop(sg_server *s)
{
    if (s->listener) evconnlistener_free(s->listener);
    s->listener = NULL;
    while (s->conns) {
        sg_conn *c = s->conns;
        if (!c->killed) sg_conn_kill(c);
        /* run the reaper by hand: the loop is no longer running */
        while (s->reap) {
            sg_conn *r = s->reap;
            s->reap = r->reap_next;
            r->killed = 1;
            sg_http_reap(r);
        }
    }
    free_event(&s->reap_ev);
    free_event(&s->wq[SG_WQ_ANSWERS].ev);
    free_event(&s->wq[SG_WQ_DELIVERIES].ev);
    free_event(&s->heartbeat_ev);
    free_event(&s->sigint_ev);
    free_event(&s->sigterm_ev);
    free_event(&s->sighup_ev);
    free_event(&s->shutdown_timer);
    free_event(&s->shutdown_check);
}
