/* Defaults and the loaded configuration. Every limit the gateway enforces
 * has its default here, named after what it limits. */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define SG_DEFAULT_LISTEN "127.0.0.1:4000"
#define SG_DEFAULT_BATCH_SIZE 10
#define SG_DEFAULT_FLUSH_MS 100
#define SG_DEFAULT_MAX_CONVERSATIONS 10000
#define SG_DEFAULT_CLEANUP_INTERVAL_S 300
#define SG_DEFAULT_CONVERSATION_TTL_S 1800
#define SG_DEFAULT_HISTORY_SIZE 100
#define SG_DEFAULT_MAX_PENDING 100000
#define SG_DEFAULT_OUTPUT_CAP (1024 * 1024)
#define SG_DEFAULT_MAX_BODY (1024 * 1024)
#define SG_DEFAULT_MAX_HEADER 16384
#define SG_DEFAULT_MAX_TEXT 4096
#define SG_DEFAULT_MAX_METADATA 65536
#define SG_DEFAULT_MAX_BULK_ITEMS 1000
#define SG_DEFAULT_IDEMPOTENCY_WINDOW_S 300
#define SG_DEFAULT_SSE_HEARTBEAT_S 15
#define SG_DEFAULT_SSE_RETRY_MS 2000
#define SG_DEFAULT_SSE_MAX_CONVERSATIONS 64 /* on one multi-conversation stream */
#define SG_DEFAULT_HTTP_IDLE_S 60
/* A request must arrive whole in time, however its bytes trickle in
 * (nginx's client_header_timeout and client_body_timeout): the request
 * line and headers within the first, the body within the second. */
#define SG_DEFAULT_HTTP_HEADER_TIMEOUT_S 10
#define SG_DEFAULT_HTTP_BODY_TIMEOUT_S 30
#define SG_DEFAULT_SHUTDOWN_TIMEOUT_MS 5000
#define SG_DEFAULT_WS_IDLE_S 60
#define SG_DEFAULT_WS_MAX_MESSAGE 65536

#define SG_DEFAULT_PLUGIN_MEMORY (16 * 1024 * 1024)
#define SG_DEFAULT_PLUGIN_INSTRUCTIONS 1000000
#define SG_DEFAULT_PLUGIN_TIMEOUT_MS 50
#define SG_DEFAULT_PLUGIN_MAX_FAILURES 5
#define SG_DEFAULT_EMIT_QUEUE 10000
/* An update emitted while a plugin handled an emitted update is one hop
 * further; past this many the emit is refused (plugins that emit to each
 * other would otherwise never stop). */
#define SG_EMIT_MAX_HOPS 8
/* Emitted updates published per loop turn; the rest wait for the next,
 * after the loop has read its sockets again. */
#define SG_EMIT_PER_TURN 256
#define SG_DEFAULT_MAX_CONNECTIONS 16384
#define SG_DEFAULT_MAX_CONNECTIONS_PER_IP 1024 /* 0: no per-address limit */
#define SG_DEFAULT_MAX_CHANNELS 100

#define SG_MAX_CATEGORIES 64 /* category sets are 64-bit masks */
#define SG_MAX_CONV_ID 128

typedef struct sg_config {
    char *path;        /* config file, NULL for built-in defaults */
    char *listen_host; /* "127.0.0.1" */
    int listen_port;
    char *plugins_dir;
    int log_level;
    int batch_size;
    int flush_ms;
    int max_conversations;
    int cleanup_interval_s;
    int conversation_ttl_s;
    int history_size;
    int max_pending;
    size_t output_cap;
    size_t max_body;
    size_t max_header;
    size_t max_text;
    size_t max_metadata;
    int max_bulk_items;
    int idempotency_window_s;
    int sse_heartbeat_s;
    int sse_retry_ms;
    int sse_max_conversations;
    int longpoll_window_ms; /* a long poll waits this long for frames */
    int longpoll_timeout_s; /* a session nobody polls this long goes */
    int http_idle_s;
    int http_header_timeout_s;
    int http_body_timeout_s;
    int shutdown_timeout_ms;
    int ws_idle_s;
    size_t ws_max_message;
    size_t plugin_memory;
    int plugin_instructions;
    int plugin_timeout_ms;
    int plugin_max_failures;
    int max_connections;
    int max_connections_per_ip;
    int max_channels_per_socket;
    int access_log; /* one line per request */
    char store[16];     /* the history store: "memory" or "sqlite" */
    char engine[8];     /* "local" (this process) or "redis" (several gateways as one) */
    int reuse_port;     /* SO_REUSEPORT: several processes share the port */
    json_t *redis;      /* the engine's `redis` table, checked by engine_redis.c */
    char *store_path;   /* the SQLite file (relative to the config file) */
    char store_sync[8]; /* SQLite's synchronous: "normal", "full", "off" */
    size_t cache_bytes; /* the durable store's recent updates kept in memory */
    int store_delay_ms; /* > 0: every store answer comes this much later, on
                         * a later loop turn (testing clients against a slow
                         * store); 0: off */
    /* sections other modules read, as JSON (owned; NULL when absent) */
    json_t *plugins;  /* plugins.<name> = config passed to init() */
    json_t *webhooks;
    json_t *security;
    /* extra categories: names and descriptions, owned */
    char **extra_categories;
    char **extra_descriptions;
    int n_extra_categories;
} sg_config;

/* Fill `c` with defaults, then, when `path` is not NULL, apply the Lua file
 * there. On error returns -1 and writes a sentence naming the bad key into
 * err. The caller frees with sg_config_free(). */
int sg_config_load(sg_config *c, const char *path, char *err, size_t errlen);

/* A path from the config file, relative to the file's directory (absolute
 * paths as they are; with no file, relative to the working directory).
 * New string. */
char *sg_config_resolve(const sg_config *c, const char *path);

/* -1 with "where: unknown key 'x' (did you mean 'y'?)" in err when obj
 * has a key not in known (NULL-terminated). */
int sg_config_check_keys(json_t *obj, const char *where, const char *const *known, char *err,
                         size_t errlen);
/* The known name closest to name, when close enough to be a typo; NULL. */
const char *sg_config_closest(const char *name, const char *const *known);

/* Parse "host:port" into the config's listen fields; -1 when malformed. */
int sg_config_set_listen(sg_config *c, const char *addr);

void sg_config_free(sg_config *c);

#endif
