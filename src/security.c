#include "security.h"

#include "clock.h"
#include "rate.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct sg_api_key {
    char *key;
    char *name;
    char *pattern; /* NULL: any conversation */
    double rate, burst; /* rate 0: unlimited */
    sg_rate limit;
};

static int loopback(const char *peer);

struct sg_security {
    sg_api_key *keys;
    int n_keys;
    unsigned char *jwt_secret;
    size_t jwt_secret_len;
    int leeway_s;
    char *admin_key;
    char **origins;
    int n_origins;
    char **proxies; /* trusted_proxies: addresses whose forwarded headers are believed */
    int n_proxies;
    int metrics_key_required;
    int keyless_remote_publish; /* allow_keyless_remote_publish */
    sg_security_stats stats;
};

static int ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < la && i < lb; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

/* ---- the config's security table: one parser per key ---- */

static int parse_api_key(sg_api_key *ak, json_t *e, size_t i, char *err, size_t errlen)
{
    static const char *const known[] = {"key", "name", "conversations", "rate", "burst", NULL};
    char where[64];
    snprintf(where, sizeof(where), "security.api_keys[%zu]", i + 1);
    if (json_is_object(e) && sg_config_check_keys(e, where, known, err, errlen) < 0) return -1;
    json_t *key = json_is_string(e) ? e : json_object_get(e, "key");
    if (!json_is_string(key) || json_string_length(key) < 16) {
        snprintf(err, errlen, "%s: a key must be a string of at least 16 characters", where);
        return -1;
    }
    ak->key = strdup(json_string_value(key));
    json_t *name = json_object_get(e, "name"), *pat = json_object_get(e, "conversations");
    json_t *rate = json_object_get(e, "rate"), *burst = json_object_get(e, "burst");
    char def[32];
    snprintf(def, sizeof(def), "key-%zu", i + 1);
    ak->name = strdup(json_is_string(name) ? json_string_value(name) : def);
    if (pat && !json_is_string(pat)) {
        snprintf(err, errlen, "%s: conversations must be a glob pattern", where);
        return -1;
    }
    ak->pattern = pat ? strdup(json_string_value(pat)) : NULL;
    if ((rate && (!json_is_number(rate) || json_number_value(rate) <= 0)) ||
        (burst && (!json_is_number(burst) || json_number_value(burst) < 1))) {
        snprintf(err, errlen, "%s: rate must be > 0 and burst >= 1", where);
        return -1;
    }
    ak->rate = rate ? json_number_value(rate) : 0;
    ak->burst = burst ? json_number_value(burst) : (ak->rate > 0 ? ak->rate * 2 : 0);
    if (ak->burst < 1 && ak->rate > 0) ak->burst = 1;
    sg_rate_init(&ak->limit, ak->rate, ak->burst);
    return 0;
}

static int parse_api_keys(sg_security *s, json_t *v, char *err, size_t errlen)
{
    if (json_is_object(v) && json_object_size(v) == 0) return 0; /* {} is an empty list */
    if (!json_is_array(v)) {
        snprintf(err, errlen, "security.api_keys must be a list of keys or { key = ..., conversations = ..., rate = ... }");
        return -1;
    }
    s->keys = calloc(json_array_size(v) + 1, sizeof(sg_api_key));
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (parse_api_key(&s->keys[s->n_keys++], e, i, err, errlen) < 0) return -1;
    }
    return 0;
}

/* A list of strings, each checked by ok (NULL: any), into *out. */
static int parse_strings(json_t *v, const char *name, const char *example, int (*ok)(const char *),
                         char ***out, int *n, char *err, size_t errlen)
{
    if (json_is_object(v) && json_object_size(v) == 0) return 0;
    if (!json_is_array(v)) {
        snprintf(err, errlen, "security.%s must be a list like { \"%s\" }", name, example);
        return -1;
    }
    *out = calloc(json_array_size(v) + 1, sizeof(char *));
    size_t i;
    json_t *o;
    json_array_foreach(v, i, o)
    {
        const char *x = json_string_value(o);
        if (!x || (ok && !ok(x))) {
            snprintf(err, errlen, "security.%s: '%s' is not %s", name, x ? x : "(not a string)",
                     ok ? "an IP address" : "a string");
            return -1;
        }
        (*out)[(*n)++] = strdup(x);
    }
    return 0;
}

static int is_ip(const char *a)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, a, buf) == 1 || inet_pton(AF_INET6, a, buf) == 1;
}

static int parse_key(sg_security *s, const char *k, json_t *v, char *err, size_t errlen)
{
    if (strcmp(k, "api_keys") == 0) return parse_api_keys(s, v, err, errlen);
    if (strcmp(k, "allowed_origins") == 0)
        return parse_strings(v, k, "https://app.example.com", NULL, &s->origins, &s->n_origins, err, errlen);
    if (strcmp(k, "trusted_proxies") == 0)
        return parse_strings(v, k, "127.0.0.1", is_ip, &s->proxies, &s->n_proxies, err, errlen);
    if (strcmp(k, "jwt_secret") == 0) {
        if (!json_is_string(v) || json_string_length(v) < 32) {
            snprintf(err, errlen, "security.jwt_secret must be a string of at least 32 bytes");
            return -1;
        }
        s->jwt_secret_len = json_string_length(v);
        s->jwt_secret = (unsigned char *)strdup(json_string_value(v));
        return 0;
    }
    if (strcmp(k, "jwt_leeway_s") == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 3600) {
            snprintf(err, errlen, "security.jwt_leeway_s must be 0 to 3600");
            return -1;
        }
        s->leeway_s = (int)json_integer_value(v);
        return 0;
    }
    if (strcmp(k, "admin_key") == 0) {
        if (!json_is_string(v) || json_string_length(v) < 16) {
            snprintf(err, errlen, "security.admin_key must be a string of at least 16 characters");
            return -1;
        }
        s->admin_key = strdup(json_string_value(v));
        return 0;
    }
    int *flag = strcmp(k, "metrics_key_required") == 0           ? &s->metrics_key_required
                : strcmp(k, "allow_keyless_remote_publish") == 0 ? &s->keyless_remote_publish
                                                                 : NULL;
    if (!flag) {
        static const char *const known[] = {"api_keys", "jwt_secret", "jwt_leeway_s", "admin_key",
                                            "allowed_origins", "trusted_proxies", "metrics_key_required",
                                            "allow_keyless_remote_publish", NULL};
        json_t *one = json_pack("{s:n}", k);
        sg_config_check_keys(one, "security", known, err, errlen);
        json_decref(one);
        return -1;
    }
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "security.%s must be true or false", k);
        return -1;
    }
    *flag = json_is_true(v);
    return 0;
}

sg_security *sg_security_new(const sg_config *cfg, char *err, size_t errlen)
{
    sg_security *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->leeway_s = 30;
    const char *k;
    json_t *v;
    json_object_foreach(cfg->security, k, v)
    {
        if (parse_key(s, k, v, err, errlen) < 0) {
            sg_security_free(s);
            return NULL;
        }
    }
    return s;
}

void sg_security_free(sg_security *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_keys; i++) {
        free(s->keys[i].key);
        free(s->keys[i].name);
        free(s->keys[i].pattern);
    }
    free(s->keys);
    free(s->jwt_secret);
    free(s->admin_key);
    for (int i = 0; i < s->n_origins; i++)
        free(s->origins[i]);
    free(s->origins);
    for (int i = 0; i < s->n_proxies; i++)
        free(s->proxies[i]);
    free(s->proxies);
    free(s);
}

int sg_security_open(const sg_security *s)
{
    return s->n_keys == 0 && !s->jwt_secret;
}

int sg_security_has_api_keys(const sg_security *s)
{
    return s->n_keys > 0;
}

int sg_security_has_jwt(const sg_security *s)
{
    return s->jwt_secret != NULL;
}

sg_security_stats *sg_security_stats_of(sg_security *s)
{
    return &s->stats;
}

int sg_bearer(const char *auth, char *out, size_t outlen)
{
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) return -1;
    const char *t = auth + 7;
    while (*t == ' ')
        t++;
    size_t n = strcspn(t, " \t\r\n");
    if (n == 0 || n >= outlen) return -1;
    memcpy(out, t, n);
    out[n] = 0;
    return 0;
}

int sg_security_publisher(sg_security *s, const char *auth, sg_api_key **key, sg_error *err)
{
    *key = NULL;
    if (s->n_keys == 0) return 0;
    char tok[512];
    if (sg_bearer(auth, tok, sizeof(tok)) < 0) {
        s->stats.publisher_denied++;
        sg_error_set(err, 401, "unauthorized", NULL, "send your API key as Authorization: Bearer <key>");
        return -1;
    }
    for (int i = 0; i < s->n_keys; i++)
        if (ct_equal(tok, s->keys[i].key)) {
            *key = &s->keys[i];
            return 0;
        }
    s->stats.publisher_denied++;
    sg_error_set(err, 401, "unauthorized", NULL, "the API key is not valid");
    return -1;
}

const char *sg_security_key_name(const sg_api_key *k)
{
    return k ? k->name : NULL;
}

int sg_security_key_covers(const sg_api_key *k, const char *conv, sg_error *err)
{
    if (!k || !k->pattern || fnmatch(k->pattern, conv, 0) == 0) return 0;
    sg_error_set(err, 403, "forbidden", "conversation_id", "the key '%s' may not use conversation '%s'",
                 k->name, conv);
    return -1;
}

int sg_security_may_publish(sg_api_key *k, const char *conv, sg_error *err)
{
    if (!k) return 0;
    if (sg_security_key_covers(k, conv, err) < 0) return -1;
    int64_t wait_ms = sg_rate_take(&k->limit, (int64_t)(sg_clock_mono_ns() / 1000000));
    if (wait_ms > 0) {
        sg_error_set(err, 429, "rate_limited", NULL, "the key '%s' is over its rate of %g updates/s", k->name,
                     k->rate);
        err->retry_after = (int)((wait_ms + 999) / 1000);
        return -1;
    }
    return 0;
}

static int loopback(const char *peer)
{
    return strncmp(peer, "127.", 4) == 0 || strcmp(peer, "::1") == 0;
}

int sg_security_admin(sg_security *s, const char *auth, const char *peer, sg_error *err)
{
    if (!s->admin_key) {
        if (loopback(peer)) return 0;
        s->stats.admin_denied++;
        sg_error_set(err, 403, "forbidden", NULL,
                     "admin endpoints answer loopback only until security.admin_key is set");
        return -1;
    }
    char tok[512];
    if (sg_bearer(auth, tok, sizeof(tok)) < 0 || !ct_equal(tok, s->admin_key)) {
        s->stats.admin_denied++;
        sg_error_set(err, 401, "unauthorized", NULL, "admin endpoints need Authorization: Bearer <admin key>");
        return -1;
    }
    return 0;
}

const unsigned char *sg_security_jwt_secret(const sg_security *s, size_t *len)
{
    *len = s->jwt_secret_len;
    return s->jwt_secret;
}

int sg_security_dashboard_ok(const sg_security *s, const char *client)
{
    return s->admin_key != NULL || loopback(client);
}

int sg_security_subscriber(sg_security *s, const char *token, sg_claims *c, sg_error *err)
{
    memset(c, 0, sizeof(*c));
    if (!s->jwt_secret) {
        c->admin = 1; /* open: every conversation */
        snprintf(c->sub, sizeof(c->sub), "anonymous");
        return 0;
    }
    if (!token || !*token) {
        s->stats.subscriber_denied++;
        sg_error_set(err, 401, "unauthorized", "token", "a token is required (?token=… or Authorization: Bearer …)");
        return -1;
    }
    if (s->admin_key && ct_equal(token, s->admin_key)) { /* the operator's key reads everything (the dashboard) */
        c->admin = 1;
        snprintf(c->sub, sizeof(c->sub), "admin");
        return 0;
    }
    jwt_t *jwt = NULL;
    const char *why = NULL;
    if (jwt_decode(&jwt, token, s->jwt_secret, (int)s->jwt_secret_len) != 0 || !jwt) {
        why = "the token is malformed or its signature is wrong";
    } else if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        why = "the token must be signed with HS256";
    } else {
        errno = 0;
        long exp = jwt_get_grant_int(jwt, "exp");
        time_t now = time(NULL);
        if (errno == ENOENT) {
            why = "the token has no exp claim";
        } else if (exp < (long)now - s->leeway_s) { /* now ± leeway cannot overflow; exp ± leeway can */
            why = "the token has expired";
        } else {
            errno = 0;
            long nbf = jwt_get_grant_int(jwt, "nbf");
            if (errno != ENOENT && nbf > (long)now + s->leeway_s) why = "the token is not valid yet";
        }
    }
    if (!why) {
        const char *sub = jwt_get_grant(jwt, "sub");
        snprintf(c->sub, sizeof(c->sub), "%s", sub ? sub : "-");
        errno = 0;
        c->admin = jwt_get_grant_bool(jwt, "admin") == 1;
        char *convs = jwt_get_grants_json(jwt, "conversations");
        json_t *arr = convs ? json_loads(convs, 0, NULL) : NULL;
        free(convs);
        if (arr && !json_is_array(arr)) {
            json_decref(arr);
            arr = NULL;
        }
        c->conversations = arr ? arr : json_array();
    }
    jwt_free(jwt);
    if (why) {
        s->stats.subscriber_denied++;
        sg_error_set(err, 401, "unauthorized", "token", "%s", why);
        return -1;
    }
    return 0;
}

int sg_security_subscriber_check(sg_security *s, const char *origin, const char *token, const char *conv,
                                 sg_claims *claims, sg_error *err)
{
    if (!sg_security_origin_ok(s, origin)) {
        s->stats.origin_denied++;
        sg_error_set(err, 403, "origin_not_allowed", NULL,
                     "this Origin is not allowed (security.allowed_origins; an open gateway allows loopback pages only)");
        return -1;
    }
    if (sg_security_subscriber(s, token, claims, err) < 0) return -1;
    if (conv && !sg_claims_allow(claims, conv)) {
        sg_claims_clear(claims);
        s->stats.subscriber_denied++;
        sg_error_set(err, 403, "forbidden", NULL, "the token does not cover conversation '%s'", conv);
        return -1;
    }
    return 0;
}

int sg_claims_allow(const sg_claims *c, const char *conv)
{
    if (c->admin) return 1;
    if (strcmp(conv, "*") == 0 || strcmp(conv, "system") == 0) return 0;
    size_t i;
    json_t *p;
    json_array_foreach(c->conversations, i, p)
    {
        const char *pat = json_string_value(p);
        if (pat && fnmatch(pat, conv, 0) == 0) return 1;
    }
    return 0;
}

void sg_claims_clear(sg_claims *c)
{
    json_decref(c->conversations);
    c->conversations = NULL;
}

/* Whether a host name (no port) is this machine's loopback. */
static int loopback_host(const char *h, size_t n)
{
    if (n == 9 && strncasecmp(h, "localhost", 9) == 0) return 1;
    if (n > 10 && strncasecmp(h + n - 10, ".localhost", 10) == 0) return 1; /* RFC 6761 */
    if (n == 5 && strncmp(h, "[::1]", 5) == 0) return 1;
    if (n == 3 && strncmp(h, "::1", 3) == 0) return 1;
    char a[64];
    unsigned char buf[4];
    if (n >= sizeof(a)) return 0;
    memcpy(a, h, n);
    a[n] = 0;
    return inet_pton(AF_INET, a, buf) == 1 && buf[0] == 127;
}

/* The host part of "scheme://host[:port]" or of "host[:port]". */
static void host_part(const char *s, const char **h, size_t *n)
{
    const char *p = strstr(s, "://");
    p = p ? p + 3 : s;
    size_t len = strcspn(p, "/?#");
    if (p[0] == '[') { /* [v6]:port */
        const char *e = memchr(p, ']', len);
        *h = p;
        *n = e ? (size_t)(e - p + 1) : len;
        return;
    }
    const char *colon = memchr(p, ':', len);
    *h = p;
    *n = colon ? (size_t)(colon - p) : len;
}

int sg_security_origin_loopback(const char *origin)
{
    const char *h;
    size_t n;
    if (!origin) return 0;
    host_part(origin, &h, &n);
    return loopback_host(h, n);
}

static int origin_listed(const sg_security *s, const char *origin)
{
    for (int i = 0; i < s->n_origins; i++)
        if (strcmp(s->origins[i], "*") == 0 || strcasecmp(s->origins[i], origin) == 0) return 1;
    return 0;
}

int sg_security_origin_ok(const sg_security *s, const char *origin)
{
    if (!origin) return 1; /* not a browser's cross-origin request */
    if (s->n_origins > 0) return origin_listed(s, origin);
    /* nothing listed: with credentials required any page may try; in open
     * mode only pages served from this machine may */
    return !sg_security_open(s) || sg_security_origin_loopback(origin);
}

int sg_security_admin_origin_ok(const sg_security *s, const char *origin)
{
    /* an admin action is never run for another site's page, credentials
     * or not: a browser would send them (or be on loopback) for it */
    return !origin || sg_security_origin_loopback(origin) || (s->n_origins > 0 && origin_listed(s, origin) &&
                                                             strcmp(s->origins[0], "*") != 0);
}

int sg_security_host_ok(const sg_security *s, const char *host)
{
    if (!sg_security_open(s) || !host) return 1;
    /* what local clients send nearly always: no parsing needed */
    if (strncmp(host, "127.0.0.1", 9) == 0 && (host[9] == 0 || host[9] == ':')) return 1;
    if (strncmp(host, "localhost", 9) == 0 && (host[9] == 0 || host[9] == ':')) return 1;
    const char *h;
    size_t n;
    host_part(host, &h, &n);
    if (loopback_host(h, n)) return 1;
    for (int i = 0; i < s->n_origins; i++) { /* a host an allowed origin names */
        const char *oh;
        size_t on;
        host_part(s->origins[i], &oh, &on);
        if (on == n && strncasecmp(oh, h, n) == 0) return 1;
    }
    return 0;
}

int sg_security_keyless_publish_ok(const sg_security *s, const char *client)
{
    return s->n_keys > 0 || sg_security_open(s) || s->keyless_remote_publish || loopback(client);
}

int sg_security_metrics_ok(sg_security *s, const char *auth, const char *client)
{
    if (!s->metrics_key_required || sg_security_open(s)) return 1;
    sg_api_key *k;
    sg_error e;
    if (s->n_keys > 0 && sg_security_publisher(s, auth, &k, &e) == 0) return 1;
    return sg_security_admin(s, auth, client, &e) == 0 && s->admin_key;
}

int sg_security_trusts_proxies(const sg_security *s)
{
    return s->n_proxies > 0;
}

int sg_security_trusted_proxy(const sg_security *s, const char *peer)
{
    for (int i = 0; i < s->n_proxies; i++)
        if (strcmp(s->proxies[i], peer) == 0) return 1;
    return 0;
}

void sg_security_client(const sg_security *s, const char *peer, const char *xff, const char *xreal,
                        char *out, size_t outlen)
{
    size_t pl = strnlen(peer, outlen - 1);
    memcpy(out, peer, pl);
    out[pl] = 0;
    if (s->n_proxies == 0 || !sg_security_trusted_proxy(s, peer)) return;
    /* X-Forwarded-For: the rightmost address no trusted proxy added */
    if (xff) {
        char list[1024];
        snprintf(list, sizeof(list), "%s", xff);
        for (;;) {
            char *comma = strrchr(list, ',');
            char *a = comma ? comma + 1 : list;
            while (*a == ' ' || *a == '\t')
                a++;
            size_t n = strcspn(a, " \t");
            a[n] = 0;
            unsigned char buf[16];
            if (inet_pton(AF_INET, a, buf) != 1 && inet_pton(AF_INET6, a, buf) != 1) return; /* not an address */
            snprintf(out, outlen, "%s", a);
            if (!comma || !sg_security_trusted_proxy(s, a)) return;
            *comma = 0;
        }
    }
    if (xreal) {
        unsigned char buf[16];
        char a[64];
        snprintf(a, sizeof(a), "%.*s", (int)strcspn(xreal, " \t"), xreal);
        if (inet_pton(AF_INET, a, buf) == 1 || inet_pton(AF_INET6, a, buf) == 1) snprintf(out, outlen, "%s", a);
    }
}

int sg_security_has_origins(const sg_security *s)
{
    return s->n_origins > 0;
}
