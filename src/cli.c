/* The statusgw command line for producers and operators (docs/cli.md):
 * publish (one update, or NDJSON in bulk from standard input), token
 * (a subscriber JWT signed with the config's secret), and the admin views
 * stats, plugins and webhooks as terminal tables. It talks to a gateway
 * over HTTP (libcurl): --url and --key, or STATUSGW_URL and
 * STATUSGW_API_KEY. Exit status: 0 done, 1 the gateway refused or could not
 * be reached, 2 a usage or config error. */
#include "cli.h"

#include "config.h"
#include "security.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BULK_LINES 1000 /* lines a bulk request carries */

typedef struct cli {
    const char *url, *key;
    int json; /* print the gateway's JSON as it is */
} cli;

/* ---- HTTP ---- */

typedef struct buf {
    char *p;
    size_t n;
} buf;

static size_t on_body(char *d, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    char *np = realloc(b->p, b->n + size * n + 1);
    if (!np) return 0;
    memcpy(np + b->n, d, size * n);
    b->n += size * n;
    np[b->n] = 0;
    b->p = np;
    return size * n;
}

typedef struct reply {
    long status;
    json_t *body; /* NULL when not JSON */
    long retry_after;
} reply;

static size_t on_header(char *d, size_t size, size_t n, void *arg)
{
    reply *r = arg;
    if (size * n > 12 && strncasecmp(d, "retry-after:", 12) == 0) r->retry_after = strtol(d + 12, NULL, 10);
    return size * n;
}

/* One request; 0 with the reply, or -1 when the gateway could not be
 * reached (said on stderr, naming cmd). */
static int request(const cli *c, const char *cmd, const char *method, const char *path, const char *ctype,
                   const char *body, size_t len, reply *r)
{
    memset(r, 0, sizeof(*r));
    CURL *e = curl_easy_init();
    if (!e) {
        fprintf(stderr, "statusgw %s: out of memory\n", cmd);
        return -1;
    }
    char url[2048], auth[600], ct[128];
    snprintf(url, sizeof(url), "%s%s", c->url, path);
    struct curl_slist *h = NULL;
    if (c->key && *c->key) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->key);
        h = curl_slist_append(h, auth);
    }
    if (ctype) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
    }
    buf b = {0};
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "statusgw-cli");
    CURLcode rc = curl_easy_perform(e);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
        r->body = b.p ? json_loads(b.p, 0, NULL) : NULL;
    } else {
        fprintf(stderr, "statusgw %s: cannot reach %s (%s); set --url or STATUSGW_URL\n", cmd, c->url,
                curl_easy_strerror(rc));
    }
    free(b.p);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    return rc == CURLE_OK ? 0 : -1;
}

/* Say why the gateway refused (its error object), naming cmd. */
static void refused(const char *cmd, const reply *r)
{
    json_t *err = json_object_get(r->body, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    fprintf(stderr, "statusgw %s: %ld %s%s%s\n", cmd, r->status, code ? code : "error", msg ? ": " : "",
            msg ? msg : "");
}

/* ---- common options ---- */

static int common(cli *c, int *i, int argc, char **argv)
{
    const char *a = argv[*i];
    if (strcmp(a, "--url") == 0 && *i + 1 < argc) c->url = argv[++*i];
    else if (strcmp(a, "--key") == 0 && *i + 1 < argc) c->key = argv[++*i];
    else if (strcmp(a, "--json") == 0) c->json = 1;
    else return 0;
    return 1;
}

static void common_defaults(cli *c)
{
    memset(c, 0, sizeof(*c));
    c->url = getenv("STATUSGW_URL");
    if (!c->url || !*c->url) c->url = "http://127.0.0.1:4000";
    c->key = getenv("STATUSGW_API_KEY");
}

#define COMMON_HELP                                                                 \
    "  --url URL        the gateway (STATUSGW_URL; default http://127.0.0.1:4000)\n" \
    "  --key KEY        an API key, or the admin key (STATUSGW_API_KEY)\n"           \
    "  --json           print the gateway's JSON as it is\n"

/* ---- publish ---- */

static void usage_publish(FILE *f)
{
    fprintf(f, "usage: statusgw publish CONVERSATION CATEGORY TEXT [--meta key=value]... [--source NAME]\n"
               "                        [--builder NAME [--arg key=value]...] [--idempotency-key KEY]\n"
               "       statusgw publish --bulk < updates.ndjson\n"
               "Publishes one update, or NDJSON from standard input in bulk requests of %d\n"
               "(a progress line on long input, a summary of accepted and refused at the end).\n"
               "A value that reads as JSON (a number, true, null, {...}) is sent as that, else as text.\n"
               COMMON_HELP,
            BULK_LINES);
}

/* key=value into obj: the value as JSON when it reads as JSON, else a string. */
static int put_pair(json_t *obj, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) return -1;
    char key[256];
    size_t kl = (size_t)(eq - kv) < sizeof(key) - 1 ? (size_t)(eq - kv) : sizeof(key) - 1;
    memcpy(key, kv, kl);
    key[kl] = 0;
    json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
    if (!v) v = json_string(eq + 1);
    return json_object_set_new(obj, key, v);
}

static void print_reply(const cli *c, const reply *r)
{
    if (c->json) {
        json_dumpf(r->body, stdout, JSON_COMPACT);
        putchar('\n');
        return;
    }
    printf("published %s seq=%lld epoch=%s%s\n", json_string_value(json_object_get(r->body, "conversation_id")),
           (long long)json_integer_value(json_object_get(r->body, "seq")),
           json_string_value(json_object_get(r->body, "epoch")),
           json_is_true(json_object_get(r->body, "duplicate")) ? " (a duplicate: not published again)" : "");
}

/* POST body, again after Retry-After while the gateway is busy (429, 503). */
static int post_retrying(const cli *c, const char *path, const char *ctype, const char *body, size_t len, reply *r)
{
    for (int attempt = 0;; attempt++) {
        if (request(c, "publish", "POST", path, ctype, body, len, r) < 0) return -1;
        if ((r->status != 429 && r->status != 503) || attempt == 5) return 0;
        long wait = r->retry_after > 0 ? r->retry_after : 1;
        fprintf(stderr, "statusgw publish: %ld, retrying in %ld s\n", r->status, wait);
        json_decref(r->body);
        sleep((unsigned)wait);
    }
}

typedef struct bulk_tally {
    long lines, accepted, refused, shown;
} bulk_tally;

/* lines: each sent line's number in the input (empty lines are not sent) */
static int send_bulk(const cli *c, const char *body, size_t len, const long *lines, bulk_tally *t)
{
    reply r;
    if (post_retrying(c, "/api/v1/status/bulk", "application/x-ndjson", body, len, &r) < 0) return -1;
    if (r.status / 100 != 2) {
        refused("publish", &r);
        json_decref(r.body);
        return -1;
    }
    t->accepted += json_integer_value(json_object_get(r.body, "accepted"));
    t->refused += json_integer_value(json_object_get(r.body, "rejected"));
    size_t i;
    json_t *res;
    json_array_foreach(json_object_get(r.body, "results"), i, res)
    {
        json_t *err = json_object_get(res, "error");
        if (err && t->shown++ < 10)
            fprintf(stderr, "statusgw publish: line %ld: %s: %s\n", i < BULK_LINES ? lines[i] : 0L,
                    json_string_value(json_object_get(err, "code")), json_string_value(json_object_get(err, "message")));
    }
    json_decref(r.body);
    return 0;
}

static int publish_bulk(const cli *c)
{
    bulk_tally t = {0};
    char *line = NULL, *body = NULL;
    size_t cap = 0, blen = 0, bcap = 0;
    ssize_t n;
    long in_batch = 0, lineno = 0;
    static long lines[BULK_LINES];
    int progress = isatty(2);
    int rc = 0;
    while (rc == 0) {
        n = getline(&line, &cap, stdin);
        if (n > 0) {
            lineno++;
            if (strspn(line, " \t\r\n") == (size_t)n) continue;
            if (blen + (size_t)n + 1 > bcap) {
                bcap = (blen + (size_t)n + 1) * 2;
                char *nb = realloc(body, bcap);
                if (!nb) {
                    fprintf(stderr, "statusgw publish: out of memory\n");
                    rc = 1;
                    break;
                }
                body = nb;
            }
            memcpy(body + blen, line, (size_t)n);
            blen += (size_t)n;
            if (body[blen - 1] != '\n') body[blen++] = '\n';
            lines[in_batch++] = lineno;
            t.lines++;
        }
        if (in_batch && (in_batch == BULK_LINES || n <= 0)) {
            if (send_bulk(c, body, blen, lines, &t) < 0) rc = 1;
            blen = 0;
            in_batch = 0;
            if (progress || t.lines >= 10 * BULK_LINES)
                fprintf(stderr, "\rstatusgw publish: %ld lines sent, %ld accepted, %ld refused", t.lines, t.accepted,
                        t.refused);
        }
        if (n <= 0) break;
    }
    if (progress || t.lines >= 10 * BULK_LINES) fputc('\n', stderr);
    free(line);
    free(body);
    printf("%ld updates: %ld accepted, %ld refused\n", t.lines, t.accepted, t.refused);
    return rc ? 1 : t.refused ? 1 : 0;
}

static int cli_publish(int argc, char **argv)
{
    cli c;
    common_defaults(&c);
    json_t *u = json_object(), *meta = json_object(), *args = json_object();
    const char *pos[3];
    int npos = 0, bulk = 0, rc = 2;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (common(&c, &i, argc, argv)) continue;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage_publish(stdout);
            rc = 0;
            goto out;
        } else if (strcmp(a, "--bulk") == 0) {
            bulk = 1;
        } else if ((strcmp(a, "--meta") == 0 || strcmp(a, "--arg") == 0) && more) {
            if (put_pair(strcmp(a, "--meta") == 0 ? meta : args, argv[++i]) < 0) {
                fprintf(stderr, "statusgw publish: %s wants key=value, got '%s'\n", a, argv[i]);
                goto out;
            }
        } else if ((strcmp(a, "--source") == 0 || strcmp(a, "--builder") == 0 || strcmp(a, "--idempotency-key") == 0) && more) {
            json_object_set_new(u, strcmp(a, "--source") == 0 ? "source" : strcmp(a, "--builder") == 0 ? "builder" : "idempotency_key",
                                json_string(argv[++i]));
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "statusgw publish: unknown option '%s' (statusgw publish --help)\n", a);
            goto out;
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "statusgw publish: one conversation, category and text (quote the text)\n");
            goto out;
        }
    }
    if (bulk) {
        if (npos) {
            fprintf(stderr, "statusgw publish: --bulk reads every update from standard input, one JSON object a line\n");
            goto out;
        }
        rc = publish_bulk(&c);
        goto out;
    }
    if (npos != 3) {
        usage_publish(stderr);
        goto out;
    }
    json_object_set_new(u, "conversation_id", json_string(pos[0]));
    json_object_set_new(u, "category", json_string(pos[1]));
    json_object_set_new(u, "text", json_string(pos[2]));
    if (json_object_size(meta)) json_object_set(u, "metadata", meta);
    if (json_object_size(args)) json_object_set(u, "args", args);
    char *body = json_dumps(u, JSON_COMPACT);
    reply r;
    rc = 1;
    if (body && post_retrying(&c, "/api/v1/status", "application/json", body, strlen(body), &r) == 0) {
        if (r.status / 100 == 2) {
            print_reply(&c, &r);
            rc = 0;
        } else {
            refused("publish", &r);
        }
        json_decref(r.body);
    }
    free(body);
out:
    json_decref(u);
    json_decref(meta);
    json_decref(args);
    return rc;
}

/* ---- token ---- */

static void usage_token(FILE *f)
{
    fprintf(f, "usage: statusgw token --sub NAME (--conversations 'glob,...' | --admin) [--ttl 1h]\n"
               "                      [--config FILE]\n"
               "Mints a subscriber token (a JWT, HS256) with the config's security.jwt_secret\n"
               "(--config, or STATUSGW_CONFIG). --ttl takes s, m, h or d (default 1h).\n");
}

static long parse_ttl(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || v <= 0 || end == s) return -1;
    long unit = *end == 0 || strcmp(end, "s") == 0 ? 1 : strcmp(end, "m") == 0 ? 60 : strcmp(end, "h") == 0 ? 3600
                                                                                  : strcmp(end, "d") == 0 ? 86400
                                                                                                          : -1;
    return unit < 0 || v > 365L * 86400 / unit ? -1 : v * unit;
}

static int cli_token(int argc, char **argv)
{
    const char *sub = NULL, *convs = NULL, *config = getenv("STATUSGW_CONFIG");
    long ttl = 3600;
    int admin = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage_token(stdout);
            return 0;
        } else if (strcmp(a, "--sub") == 0 && more) {
            sub = argv[++i];
        } else if (strcmp(a, "--conversations") == 0 && more) {
            convs = argv[++i];
        } else if (strcmp(a, "--admin") == 0) {
            admin = 1;
        } else if (strcmp(a, "--config") == 0 && more) {
            config = argv[++i];
        } else if (strcmp(a, "--ttl") == 0 && more) {
            if ((ttl = parse_ttl(argv[++i])) < 0) {
                fprintf(stderr, "statusgw token: --ttl wants a number and s, m, h or d (at most a year), got '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "statusgw token: unknown option '%s' (statusgw token --help)\n", a);
            return 2;
        }
    }
    if (!sub || (!convs && !admin)) {
        usage_token(stderr);
        return 2;
    }
    sg_config cfg;
    char err[512];
    if (sg_config_load(&cfg, config, err, sizeof(err)) < 0) {
        fprintf(stderr, "statusgw token: bad config: %s\n", err);
        return 2;
    }
    sg_security *sec = sg_security_new(&cfg, err, sizeof(err));
    size_t klen = 0;
    const unsigned char *secret = sec ? sg_security_jwt_secret(sec, &klen) : NULL;
    int rc = 2;
    if (!sec) {
        fprintf(stderr, "statusgw token: bad config: %s\n", err);
    } else if (!secret) {
        fprintf(stderr, "statusgw token: the config (%s) sets no security.jwt_secret: subscribers need no token\n",
                config ? config : "the defaults");
    } else {
        jwt_t *jwt = NULL;
        json_t *list = json_array();
        char *copy = convs ? strdup(convs) : NULL;
        for (char *save = NULL, *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(list, json_string(t));
        json_t *grants = json_pack("{s:o}", "conversations", list);
        char *gj = json_dumps(grants, JSON_COMPACT);
        time_t now = time(NULL);
        char *tok = NULL;
        if (jwt_new(&jwt) == 0 && jwt_add_grant(jwt, "sub", sub) == 0 && jwt_add_grant_int(jwt, "iat", now) == 0 &&
            jwt_add_grant_int(jwt, "exp", now + ttl) == 0 && (!admin || jwt_add_grant_bool(jwt, "admin", 1) == 0) &&
            (!convs || jwt_add_grants_json(jwt, gj) == 0) &&
            jwt_set_alg(jwt, JWT_ALG_HS256, secret, (int)klen) == 0)
            tok = jwt_encode_str(jwt);
        if (tok) {
            printf("%s\n", tok);
            rc = 0;
        } else {
            fprintf(stderr, "statusgw token: the token could not be made (out of memory)\n");
            rc = 1;
        }
        free(tok);
        free(gj);
        free(copy);
        json_decref(grants);
        jwt_free(jwt);
    }
    sg_security_free(sec);
    sg_config_free(&cfg);
    return rc;
}

/* ---- admin views ---- */

static void usage_view(FILE *f, const char *cmd)
{
    fprintf(f, "usage: statusgw %s [--url URL] [--key KEY] [--json]\n"
               "Shows the gateway's %s as a table (the admin key, when the gateway has one).\n" COMMON_HELP,
            cmd, strcmp(cmd, "stats") == 0 ? "counters and busiest conversations" : strcmp(cmd, "plugins") == 0 ? "plugins and their health" : "webhook endpoints and their queues");
}

static const char *str_or(json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static long long num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long long)json_integer_value(v) : json_is_real(v) ? (long long)json_real_value(v) : 0;
}

static void show_stats(json_t *b)
{
    json_t *conn = json_object_get(b, "connections"), *rate = json_object_get(b, "rate_per_s");
    printf("published %lld   received %lld   rejected %lld   dropped %lld\n", num(b, "published"), num(b, "received"),
           num(b, "rejected"), num(b, "dropped"));
    printf("publishes/s  last 1m %.2f   last 5m %.2f\n", json_number_value(json_object_get(rate, "last_1m")),
           json_number_value(json_object_get(rate, "last_5m")));
    printf("connections  websocket %lld   sse %lld   longpoll %lld   http %lld\n", num(conn, "websocket"),
           num(conn, "sse"), num(conn, "longpoll"), num(conn, "http"));
    printf("conversations %lld   uptime %.0f s\n\n", num(b, "conversations"),
           json_number_value(json_object_get(b, "uptime_s")));
    printf("%-40s %12s %12s\n", "CONVERSATION", "PUBLISHED", "SUBSCRIBERS");
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(b, "top_conversations"), i, t)
        printf("%-40s %12lld %12lld\n", str_or(json_object_get(t, "conversation_id"), "?"), num(t, "published"),
               num(t, "subscribers"));
}

static void show_plugins(json_t *b)
{
    printf("%-24s %-9s %10s %8s %9s %10s  %s\n", "PLUGIN", "STATE", "CALLS", "ERRORS", "TIMEOUTS", "TIME MS", "LAST ERROR");
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(b, "plugins"), i, p)
    {
        json_t *n = json_object_get(p, "counters");
        printf("%-24s %-9s %10lld %8lld %9lld %10.1f  %s\n", str_or(json_object_get(p, "name"), "?"),
               str_or(json_object_get(p, "state"), "?"), num(n, "calls"), num(n, "errors"), num(n, "timeouts"),
               json_number_value(json_object_get(n, "time_ms")), str_or(json_object_get(p, "last_error"), "-"));
    }
    if (i == 0) printf("(no plugin loaded from %s)\n", str_or(json_object_get(b, "directory"), "?"));
}

static void show_webhooks(json_t *b)
{
    printf("%-20s %-9s %7s %9s %10s %6s  %s\n", "ENDPOINT", "STATE", "QUEUE", "IN FLIGHT", "DELIVERED", "DEAD",
           "LAST ERROR");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(b, "endpoints"), i, e)
        printf("%-20s %-9s %7lld %9lld %10lld %6lld  %s\n", str_or(json_object_get(e, "name"), "?"),
               str_or(json_object_get(e, "state"), "?"), num(e, "queue_depth"), num(e, "in_flight"),
               num(e, "delivered"), num(e, "dead_lettered"), str_or(json_object_get(e, "last_error"), "-"));
    if (i == 0) printf("(no webhook endpoint configured)\n");
    printf("outbox: %s   dead letters: %s\n", str_or(json_object_get(b, "outbox"), "?"),
           str_or(json_object_get(b, "dead_letter_file"), "?"));
}

static int cli_view(int argc, char **argv)
{
    const char *cmd = argv[1];
    cli c;
    common_defaults(&c);
    const char *admin = getenv("STATUSGW_ADMIN_KEY");
    if (admin && *admin) c.key = admin;
    for (int i = 2; i < argc; i++) {
        if (common(&c, &i, argc, argv)) continue;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_view(stdout, cmd);
            return 0;
        }
        fprintf(stderr, "statusgw %s: unknown option '%s' (statusgw %s --help)\n", cmd, argv[i], cmd);
        return 2;
    }
    const char *path = strcmp(cmd, "stats") == 0 ? "/api/v1/stats" : strcmp(cmd, "plugins") == 0 ? "/admin/plugins" : "/admin/webhooks";
    reply r;
    if (request(&c, cmd, "GET", path, NULL, NULL, 0, &r) < 0) return 1;
    int rc = 0;
    if (r.status != 200 || !r.body) {
        refused(cmd, &r);
        if (r.status == 401 || r.status == 403)
            fprintf(stderr, "statusgw %s: pass the admin key with --key or STATUSGW_ADMIN_KEY\n", cmd);
        rc = 1;
    } else if (c.json) {
        json_dumpf(r.body, stdout, JSON_COMPACT);
        putchar('\n');
    } else if (strcmp(cmd, "stats") == 0) {
        show_stats(r.body);
    } else if (strcmp(cmd, "plugins") == 0) {
        show_plugins(r.body);
    } else {
        show_webhooks(r.body);
    }
    json_decref(r.body);
    return rc;
}

/* ---- dispatch ---- */

static void usage_all(FILE *f)
{
    fprintf(f, "statusgw commands (each has --help):\n"
               "  statusgw [--config FILE] ...        run the gateway (statusgw --help)\n"
               "  statusgw publish CONV CATEGORY TEXT publish an update (--bulk: NDJSON from standard input)\n"
               "  statusgw token --sub NAME ...       mint a subscriber token with the config's secret\n"
               "  statusgw stats                      counters and the busiest conversations\n"
               "  statusgw plugins                    plugins and their health\n"
               "  statusgw webhooks                   webhook endpoints and their queues\n"
               "  statusgw check-plugin FILE...       load plugin files in the sandbox\n"
               "  statusgw help                       this list\n");
}

int sg_cli(int argc, char **argv)
{
    if (argc < 2) return -1;
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0) {
        usage_all(stdout);
        return 0;
    }
    int view = strcmp(cmd, "stats") == 0 || strcmp(cmd, "plugins") == 0 || strcmp(cmd, "webhooks") == 0;
    if (!view && strcmp(cmd, "publish") != 0 && strcmp(cmd, "token") != 0) return -1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = strcmp(cmd, "publish") == 0 ? cli_publish(argc, argv) : strcmp(cmd, "token") == 0 ? cli_token(argc, argv)
                                                                                               : cli_view(argc, argv);
    curl_global_cleanup();
    return rc;
}
