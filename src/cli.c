/* The statusgw command line for producers and operators (docs/cli.md):
 * publish (one update, or NDJSON in bulk from standard input), tail
 * (follow conversations live over SSE, resuming across reconnects), token
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

/* ---- tail ---- */

static void usage_tail(FILE *f)
{
    fprintf(f, "usage: statusgw tail CONVERSATION... | --all [--categories a,b] [--since SEQ] [--json]\n"
               "Follows conversations live (Server-Sent Events): time, conversation, category, text\n"
               "and metadata, coloured on a terminal; --json prints each update as it came. It\n"
               "resumes across reconnects without duplicates and prints a line when a gap\n"
               "occurs. --since SEQ starts after that seq of each conversation (from history);\n"
               "--all follows every conversation (an admin token or key; live only).\n" COMMON_HELP);
}

typedef struct tail {
    const cli *c;
    int color, all, n;
    char last_id[16384]; /* the last event's id: where a reconnect resumes */
    int retry_ms;
    /* the event being read */
    char *line;
    size_t llen, lcap;
    char event[32], id[16384];
    char *data;
    size_t dlen, dcap;
} tail;

static const char *cat_color(const char *cat)
{
    if (strcmp(cat, "error") == 0) return "\033[31m";
    if (strcmp(cat, "tool") == 0) return "\033[34m";
    if (strcmp(cat, "workflow") == 0 || strcmp(cat, "progress") == 0) return "\033[32m";
    if (strcmp(cat, "engine") == 0 || strcmp(cat, "planning") == 0) return "\033[35m";
    return "\033[36m";
}

static void print_update(tail *t, json_t *u)
{
    const char *ts = str_or(json_object_get(u, "timestamp"), ""), *cat = str_or(json_object_get(u, "category"), "?");
    char when[16] = "";
    if (strlen(ts) >= 23) memcpy(when, ts + 11, 12);
    printf("%s  %s%-8s%s  %s  %s", when, t->color ? cat_color(cat) : "", cat, t->color ? "\033[0m" : "",
           str_or(json_object_get(u, "conversation_id"), "?"), str_or(json_object_get(u, "text"), ""));
    const char *k;
    json_t *v;
    int shown = 0;
    json_object_foreach(json_object_get(u, "metadata"), k, v)
    {
        if (shown++ == 4) {
            printf("  …");
            break;
        }
        char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%s%s%s=%s%s", shown == 1 ? "  " : " ", t->color ? "\033[2m" : "", k, s ? s : json_string_value(v),
               t->color ? "\033[0m" : "");
        free(s);
    }
    putchar('\n');
}

static void dispatch(tail *t)
{
    if (t->id[0]) snprintf(t->last_id, sizeof(t->last_id), "%s", t->id);
    json_t *d = t->dlen ? json_loadb(t->data, t->dlen, 0, NULL) : NULL;
    if (strcmp(t->event, "status_update") == 0 && d) {
        if (t->c->json) printf("%.*s\n", (int)t->dlen, t->data);
        else print_update(t, d);
    } else if (strcmp(t->event, "gap") == 0 && d) {
        const char *conv = str_or(json_object_get(d, "conversation_id"), "?");
        const char *why = str_or(json_object_get(d, "reason"), "?");
        json_t *from = json_object_get(d, "from_seq");
        if (t->color) fputs("\033[33m", stdout);
        if (from)
            printf("-- gap in %s: seqs %lld-%lld are lost (%s)", conv, (long long)json_integer_value(from),
                   (long long)json_integer_value(json_object_get(d, "to_seq")), why);
        else
            printf("-- gap in %s: a new epoch, nothing of it missed (%s)", conv, why);
        puts(t->color ? "\033[0m" : "");
    }
    fflush(stdout);
    json_decref(d);
    t->event[0] = t->id[0] = 0;
    t->dlen = 0;
}

static void field(tail *t, const char *l, size_t n)
{
    if (n == 0) {
        if (t->dlen || t->event[0]) dispatch(t);
        return;
    }
    if (l[0] == ':') return;
    const char *colon = memchr(l, ':', n);
    size_t kl = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ') v++;
    size_t vl = (size_t)(l + n - v);
    if (kl == 5 && memcmp(l, "event", 5) == 0) {
        snprintf(t->event, sizeof(t->event), "%.*s", (int)vl, v);
    } else if (kl == 2 && memcmp(l, "id", 2) == 0) {
        snprintf(t->id, sizeof(t->id), "%.*s", (int)vl, v);
    } else if (kl == 5 && memcmp(l, "retry", 5) == 0) {
        t->retry_ms = atoi(v);
    } else if (kl == 4 && memcmp(l, "data", 4) == 0) {
        if (t->dlen + vl + 1 > t->dcap) {
            t->dcap = (t->dlen + vl + 1) * 2;
            t->data = realloc(t->data, t->dcap);
        }
        if (t->dlen) t->data[t->dlen++] = '\n';
        memcpy(t->data + t->dlen, v, vl);
        t->dlen += vl;
    }
}

static size_t on_stream(char *d, size_t size, size_t n, void *arg)
{
    tail *t = arg;
    for (size_t i = 0; i < size * n; i++) {
        if (d[i] == '\n') {
            size_t l = t->llen && t->line[t->llen - 1] == '\r' ? t->llen - 1 : t->llen;
            field(t, t->line, l);
            t->llen = 0;
            continue;
        }
        if (t->llen + 1 > t->lcap) {
            t->lcap = t->lcap ? t->lcap * 2 : 1024;
            t->line = realloc(t->line, t->lcap);
        }
        t->line[t->llen++] = d[i];
    }
    return size * n;
}

/* Each conversation's epoch, for --since: "a=<epoch>:<seq>,…" (one
 * conversation: "<epoch>:<seq>"). */
static int since_id(const cli *c, char **convs, int n, long long since, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        char path[300];
        snprintf(path, sizeof(path), "/api/v1/conversations/%s/history?limit=1", convs[i]);
        reply r;
        if (request(c, "tail", "GET", path, NULL, NULL, 0, &r) < 0) return -1;
        const char *ep = str_or(json_object_get(r.body, "epoch"), NULL);
        if (r.status == 200 && ep)
            o += (size_t)snprintf(out + o, outlen - o, "%s%s%s%s:%lld", i ? "," : "", n > 1 ? convs[i] : "",
                                  n > 1 ? "=" : "", ep, since);
        json_decref(r.body);
    }
    return 0;
}

static int cli_tail(int argc, char **argv)
{
    cli c;
    common_defaults(&c);
    tail t;
    memset(&t, 0, sizeof(t));
    t.c = &c;
    char *convs[64];
    const char *cats = NULL;
    long long since = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (common(&c, &i, argc, argv)) continue;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage_tail(stdout);
            return 0;
        } else if (strcmp(a, "--all") == 0) {
            t.all = 1;
        } else if (strcmp(a, "--categories") == 0 && i + 1 < argc) {
            cats = argv[++i];
        } else if (strcmp(a, "--since") == 0 && i + 1 < argc) {
            since = atoll(argv[++i]);
        } else if (a[0] == '-') {
            fprintf(stderr, "statusgw tail: unknown option '%s' (statusgw tail --help)\n", a);
            return 2;
        } else if (strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-") != strlen(a) ||
                   strlen(a) > 128) {
            fprintf(stderr, "statusgw tail: '%s' is not a conversation id (1-128 characters of [A-Za-z0-9._:@-])\n", a);
            return 2;
        } else if (t.n < 64) {
            convs[t.n++] = argv[i];
        } else {
            fprintf(stderr, "statusgw tail: at most 64 conversations\n");
            return 2;
        }
    }
    if ((t.n == 0) == !t.all || (t.all && since >= 0)) {
        usage_tail(stderr);
        return 2;
    }
    t.color = isatty(1) && !c.json && !getenv("NO_COLOR");
    char path[8192];
    int o = t.n == 1 ? snprintf(path, sizeof(path), "/api/v1/conversations/%s/events", convs[0])
                     : snprintf(path, sizeof(path), "/api/v1/events?conversations=%s", t.all ? "*" : "");
    for (int i = 0; t.n > 1 && i < t.n; i++)
        o += snprintf(path + o, sizeof(path) - (size_t)o, "%s%s", i ? "," : "", convs[i]);
    if (cats) snprintf(path + o, sizeof(path) - (size_t)o, "%scategories=%s", t.n == 1 ? "?" : "&", cats);
    if (since >= 0 && since_id(&c, convs, t.n, since, t.last_id, sizeof(t.last_id)) < 0) return 1;
    for (int attempt = 0;; attempt++) {
        CURL *e = curl_easy_init();
        char url[9000], auth[600], last[16400];
        snprintf(url, sizeof(url), "%s%s", c.url, path);
        struct curl_slist *h = curl_slist_append(NULL, "Accept: text/event-stream");
        if (c.key && *c.key) {
            snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c.key);
            h = curl_slist_append(h, auth);
        }
        if (t.last_id[0]) {
            snprintf(last, sizeof(last), "Last-Event-ID: %s", t.last_id);
            h = curl_slist_append(h, last);
        }
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_stream);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L); /* heartbeats come every 15 s */
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 45L);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "statusgw-cli");
        CURLcode rc = curl_easy_perform(e);
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        t.llen = 0;
        if (status >= 400) { /* refused: reconnecting will not help */
            fprintf(stderr, "statusgw tail: the gateway answered %ld (statusgw tail --help)\n", status);
            return 1;
        }
        if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_OUT_OF_MEMORY) {
            fprintf(stderr, "statusgw tail: %s (%s)\n", curl_easy_strerror(rc), c.url);
            return 1;
        }
        int wait = t.retry_ms > 0 ? t.retry_ms : 1000;
        fprintf(stderr, "statusgw tail: %s; reconnecting in %d ms%s\n",
                rc == CURLE_OK ? "the stream ended" : curl_easy_strerror(rc), wait,
                t.last_id[0] ? " from where it was" : "");
        usleep((useconds_t)wait * 1000);
    }
}

/* ---- dispatch ---- */

static void usage_all(FILE *f)
{
    fprintf(f, "statusgw commands (each has --help):\n"
               "  statusgw [--config FILE] ...        run the gateway (statusgw --help)\n"
               "  statusgw publish CONV CATEGORY TEXT publish an update (--bulk: NDJSON from standard input)\n"
               "  statusgw tail CONV... | --all       follow conversations live, resuming across reconnects\n"
               "  statusgw token --sub NAME ...       mint a subscriber token with the config's secret\n"
               "  statusgw stats                      counters and the busiest conversations\n"
               "  statusgw plugins                    plugins and their health\n"
               "  statusgw webhooks                   webhook endpoints and their queues\n"
               "  statusgw check-plugin FILE...       load plugin files in the sandbox\n"
               "  statusgw plugin new|run|test ...    write, dry-run and test a plugin (plugin help)\n"
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
    if (!view && strcmp(cmd, "publish") != 0 && strcmp(cmd, "token") != 0 && strcmp(cmd, "tail") != 0) return -1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = strcmp(cmd, "publish") == 0 ? cli_publish(argc, argv)
             : strcmp(cmd, "token") == 0 ? cli_token(argc, argv)
             : strcmp(cmd, "tail") == 0  ? cli_tail(argc, argv)
                                         : cli_view(argc, argv);
    curl_global_cleanup();
    return rc;
}
