/* Who may do what (README, Security): publisher API keys with
 * conversation patterns and rates, HS256 JWTs for subscribers whose claims
 * name the conversations they may join, an admin key, and the Origin
 * allow-list. With nothing configured everything is open and the gateway
 * stays on loopback. */
#ifndef SG_SECURITY_H
#define SG_SECURITY_H

#include <jansson.h>
#include <stdint.h>

#include "config.h"
#include "status.h"

/* The longest subscriber token read from a request (?token= or a header). */
#define SG_MAX_TOKEN 4096

typedef struct sg_security sg_security;
typedef struct sg_api_key sg_api_key;

typedef struct sg_claims {
    char sub[128];
    json_t *conversations; /* array of ids and glob patterns; NULL: all (open mode) */
    int admin;
} sg_claims;

/* Parse cfg->security. NULL with a sentence in err when it is invalid. */
sg_security *sg_security_new(const sg_config *cfg, char *err, size_t errlen);
void sg_security_free(sg_security *s);

/* Nothing configured: publishers and subscribers need no credentials. */
int sg_security_open(const sg_security *s);
int sg_security_has_api_keys(const sg_security *s);
int sg_security_has_jwt(const sg_security *s);

/* The bearer token of an "Authorization: Bearer …" value, copied into out;
 * -1 when there is none. */
int sg_bearer(const char *authorization, char *out, size_t outlen);

/* A publisher's key from its Authorization header. 0 with *key set (NULL
 * when no keys are configured), or -1 with err (401). */
int sg_security_publisher(sg_security *s, const char *authorization, sg_api_key **key, sg_error *err);
/* May this key publish to conv now? -1 with err 403 (pattern) or 429
 * (rate; one token taken otherwise). */
int sg_security_may_publish(sg_api_key *key, const char *conv, sg_error *err);
/* Whether the key's conversation pattern covers conv (reads: no tokens
 * are spent). 0, or -1 with a 403 in err. */
int sg_security_key_covers(const sg_api_key *key, const char *conv, sg_error *err);
/* Browsers' Origin: allowed_origins when set; with none, any origin when
 * credentials are required, and only loopback origins in open mode. */
int sg_security_origin_ok(const sg_security *s, const char *origin);
/* Whether an Origin names this machine (localhost, 127.0.0.0/8, [::1]). */
int sg_security_origin_loopback(const char *origin);
/* Admin actions: no Origin, a loopback one, or one allowed_origins names
 * (not "*"): never for another site's page. */
int sg_security_admin_origin_ok(const sg_security *s, const char *origin);
/* The Host header in open mode: a loopback name or a host allowed_origins
 * names (DNS rebinding points another name at 127.0.0.1). Always 1 with
 * credentials. */
int sg_security_host_ok(const sg_security *s, const char *host);
/* With no api_keys (and a jwt_secret), publishing is for loopback clients
 * unless security.allow_keyless_remote_publish. */
int sg_security_keyless_publish_ok(const sg_security *s, const char *client);
/* GET /metrics: free unless security.metrics_key_required (then an API
 * key or the admin key). */
int sg_security_metrics_ok(sg_security *s, const char *auth, const char *client);
/* The client's address: peer, or, when peer is in trusted_proxies, what
 * X-Forwarded-For (rightmost untrusted) or X-Real-IP says. */
int sg_security_trusted_proxy(const sg_security *s, const char *peer);
int sg_security_trusts_proxies(const sg_security *s); /* any trusted_proxies at all */
void sg_security_client(const sg_security *s, const char *peer, const char *xff, const char *xreal,
                        char *out, size_t outlen);

/* The key's name (for logs), or NULL for no key. */
const char *sg_security_key_name(const sg_api_key *key);

/* The configured JWT secret (len bytes), or NULL: `statusgw token`. */
const unsigned char *sg_security_jwt_secret(const sg_security *s, size_t *len);
/* The dashboard page: anyone once an admin key is set (the page asks for
 * it), else loopback clients only. */
int sg_security_dashboard_ok(const sg_security *s, const char *client);
/* Admin endpoints: the admin key, or, when none is configured, a loopback
 * peer. -1 with err 401/403. */
int sg_security_admin(sg_security *s, const char *authorization, const char *peer, sg_error *err);

/* Verify a subscriber token (NULL or "" when none was sent). 0 with claims
 * filled (open mode: all allowed), or -1 with err 401. The caller frees
 * claims with sg_claims_clear. */
int sg_security_subscriber(sg_security *s, const char *token, sg_claims *claims, sg_error *err);
/* Everything a subscriber's request is checked for, in one place (SSE,
 * WebSocket, history): its Origin (403), its token (401), and, when conv
 * is not NULL, whether the claims cover conv (403). 0 with claims filled
 * (the caller clears them), or -1 with err. */
int sg_security_subscriber_check(sg_security *s, const char *origin, const char *token, const char *conv,
                                 sg_claims *claims, sg_error *err);
/* May these claims read topic conv ("*" and "system" need admin)? */
int sg_claims_allow(const sg_claims *c, const char *conv);
void sg_claims_clear(sg_claims *c);

/* Whether an allow-list is configured (CORS headers are sent then). */
int sg_security_has_origins(const sg_security *s);

typedef struct sg_security_stats {
    uint64_t publisher_denied, subscriber_denied, admin_denied, origin_denied, rate_limited;
} sg_security_stats;
sg_security_stats *sg_security_stats_of(sg_security *s);

#endif
