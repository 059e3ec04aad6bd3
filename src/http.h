/* The HTTP/1.1 connection layer on bufferevents, parsing with http_parser.
 * Keep-alive and pipelining work; header and body limits are enforced while
 * parsing. A connection can be handed to SSE or WebSocket after a request. */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <http_parser.h>
#include <jansson.h>

#include "config.h"
#include "server_t.h"
#include "status.h"

#define SG_MAX_HEADERS 64

typedef struct sg_header {
    char *name; /* lower-cased */
    char *value;
} sg_header;

typedef struct sg_req {
    enum http_method method;
    char *url;   /* these point into arena once the headers are complete */
    size_t url_len;
    char *path;  /* percent-decoded path */
    char *query; /* raw query string after '?', or "" */
    sg_header headers[SG_MAX_HEADERS];
    int n_headers;
    int in_value; /* last header callback was a value */
    int headers_done; /* on_headers_complete ran: what follows is body or trailer */
    size_t header_bytes;
    /* request line and headers, NUL-separated, kept across requests on a
     * connection so a request allocates nothing */
    char *arena;
    size_t alen, acap;
    struct {
        size_t name_off, value_off;
    } hoff[SG_MAX_HEADERS];
    char *body; /* kept across requests too */
    size_t body_len, body_cap;
    int keep_alive;
    char *cors_origin; /* echoed in Access-Control-Allow-Origin, or NULL */
    /* for the access log */
    uint64_t t0_ns;       /* when the request began (only with access_log) */
    const char *key_name; /* the API key that made it, or NULL */
    const char *err_code; /* the error it was answered with, or NULL */
    char client[64];      /* the client's address: the peer, or what a trusted proxy says */
} sg_req;

enum sg_conn_mode { SG_CONN_HTTP, SG_CONN_SSE, SG_CONN_WS };

typedef struct sg_held sg_held; /* an answer written later, in its request's place */

/* A transport that took the connection over from HTTP. */
typedef struct sg_conn_proto {
    const char *name;
    void (*on_read)(sg_conn *c);  /* bytes in the input evbuffer */
    void (*on_close)(sg_conn *c); /* release transport state; the conn goes next */
    void (*on_shutdown)(sg_conn *c); /* gateway stopping: say goodbye and close */
    void (*on_idle)(sg_conn *c);     /* read timeout; NULL closes at once */
} sg_conn_proto;

struct sg_conn {
    sg_server *srv;
    struct bufferevent *bev;
    http_parser parser;
    int mode;
    int closing;  /* close once the output has drained */
    int killed;   /* on the reap list */
    int reject;   /* HTTP status to answer when parsing stopped, 0 if none */
    int read_paused;
    int write_armed; /* the bufferevent writes a leftover */
    int reading;     /* rev is added */
    struct event *rev; /* reads: our own, see on_readable */
    struct timeval idle; /* read idle timeout; 0 s: none */
    uint64_t deadline_ns; /* the request being read must be whole by then; 0: none */
    int short_timeout;    /* the read timeout is the time left to deadline_ns */
    int linger;           /* closing: 1 output pending, 2 write side shut; input is dropped */
    uint64_t read_ns;     /* when the read being parsed happened (0 outside one) */
    sg_req *req;     /* HTTP mode only: freed when a transport takes over */
    const sg_conn_proto *proto;
    void *proto_data;
    sg_conn *prev, *next;   /* all connections */
    sg_conn *reap_next;
    struct { sg_conn *prev, *next; int on; } wq[2]; /* links in the server's write queues */
    sg_conn **awaited_by; /* an answer comes later (sg_conn_await); NULL otherwise */
    sg_held *held, *held_tail; /* answers still to come, oldest first (sg_conn_hold) */
    sg_held *filling;          /* the held answer being written */
    int n_held;
    int parsed;                /* c->req is whole and waits to be handled */
    int processing;            /* inside its handler: answers do not parse on */
    char peer[64];
};

/* Write what a push transport appended (a flush's frames) soon: writes go
 * out in slices, with the event loop turning between slices, so that one
 * large fan-out does not keep producers' requests waiting. */
void sg_conn_deliver(sg_conn *c);

/* Close (or call proto->on_idle) after this long without input; NULL: never. */
void sg_conn_set_idle(sg_conn *c, const struct timeval *idle);

/* The request just handled is answered later in this loop turn: until
 * sg_conn_resume the connection parses no further request (answers keep
 * their order), and should it go away meanwhile, *slot becomes NULL. */
void sg_conn_await(sg_conn *c, sg_conn **slot);
/* The awaited answer is written: go on with any requests pipelined after
 * it, and send what the connection holds at the end of the loop turn. */
void sg_conn_resume(sg_conn *c);
/* The awaited request is handled again (what it waited for is there). */
void sg_conn_retry(sg_conn *c);

/* The request just handled is answered later, in its place, while the
 * connection goes on with the requests pipelined after it: their answers
 * wait behind this one, so a client reads its answers in the order it
 * asked. A request that would take the connection over (an upgrade, an
 * event stream) or that is not a POST, and a close, wait until every held
 * answer is written. NULL when out of memory (sg_conn_await then). */
sg_held *sg_conn_hold(sg_conn *c);
/* Answer a held request (once; frees h). A connection gone meanwhile
 * gets nothing. */
void sg_held_respond(sg_held *h, int status, const char *ctype, const char *body, size_t len,
                     const char *extra);
void sg_held_error(sg_held *h, const sg_error *err);

/* ---- responses ---- */

/* Write a complete response. body may be NULL; extra is further header
 * lines, each ending in \r\n, or NULL. */
void sg_http_respond(sg_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra);
/* Respond with the JSON value (stolen). */
void sg_http_json(sg_conn *c, int status, json_t *v, const char *extra);
/* Respond with the error object of err. */
void sg_http_error(sg_conn *c, const sg_error *err);
const char *sg_http_reason(int status);

/* The value of a request header (name lower-case), or NULL. */
const char *sg_req_header(const sg_req *r, const char *name);
/* A subscriber's token: Authorization: Bearer, or ?token= ("" when none). */
void sg_req_token(const sg_req *r, char *out, size_t outlen);
/* Copy the percent-decoded query parameter into out; -1 when absent. */
int sg_req_query(const sg_req *r, const char *name, char *out, size_t outlen);

/* ---- connection control ---- */

/* Adopt an accepted socket as a new HTTP connection. */
void sg_http_accept(sg_server *s, evutil_socket_t fd, struct sockaddr *sa, int salen);

/* Connections write at once: one writev per flush for a subscriber, one
 * per batch of pipelined responses for HTTP, with no EV_WRITE round trip
 * through epoll. What the socket does not take is left to the bufferevent.
 * Call after adding output outside the read path. */
void sg_conn_kick(sg_conn *c);
/* Close once pending output is written; reads stop now. */
void sg_conn_close_after_write(sg_conn *c);
/* Close the way a WebSocket close should: write what is pending, shut the
 * write side, and read and drop input until the peer closes or grace_s. */
void sg_conn_linger_close(sg_conn *c, int grace_s);
/* Close now (deferred to the next loop turn, so callers on the stack stay
 * valid). */
void sg_conn_kill(sg_conn *c);
/* Free a killed connection now (the reaper, or a stop outside the loop). */
void sg_http_reap(sg_conn *c);
/* Hand the connection to a transport. */
void sg_conn_take(sg_conn *c, int mode, const sg_conn_proto *p, void *data);

#endif
