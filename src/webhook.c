#include "webhook.h"

#include "clock.h"
#include "dict.h"
#include "log.h"
#include "plugin.h"
#include "store.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define WH_DEFAULT_BATCH 50
#define WH_DEFAULT_DELAY_MS 1000
#define WH_DEFAULT_TIMEOUT_MS 10000
#define WH_DEFAULT_CONCURRENCY 2
#define WH_DEFAULT_MAX_QUEUE 10000
#define WH_DEFAULT_DEAD_LETTERS "statusgw-dead-letters.jsonl"
#define WH_MAX_SECRETS 8

/* immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h */
static const double default_schedule[] = {0, 5, 300, 1800, 7200, 18000, 36000, 36000};

typedef struct endpoint endpoint;

typedef struct wh_msg {
    struct wh_msg *next;            /* ready queue */
    struct wh_msg *lprev, *lnext;   /* every live message of the endpoint */
    endpoint *ep;
    char id[48];
    char *body;
    size_t len;
    json_t *headers; /* from a forwarder's format, or NULL */
    int n_updates;
    int attempts;
    int64_t created_ms;
    long last_status;
    char last_error[200];
    double retry_after; /* seconds from the last response, or -1 */
    struct event *retry_ev;
    CURL *easy;
    struct curl_slist *hdrs;
} wh_msg;

struct endpoint {
    sg_webhooks *wh;
    char *name, *url, *conv_pattern, *forwarder;
    char *url_shown; /* scheme://host[:port] and "/…": URLs often carry secrets */
    unsigned char *secrets[WH_MAX_SECRETS];
    int secret_len[WH_MAX_SECRETS];
    int n_secrets;
    uint64_t mask;
    int batch_size, batch_delay_ms, timeout_ms, concurrency, max_queue;
    double *schedule;
    int n_schedule;
    json_t *headers;
    sg_update **pending;
    const char **texts; /* the pending updates' JSON, for build_msg */
    size_t *lens;
    int n_pending;
    char open_id[48]; /* the id the pending updates' message will have */
    int64_t open_ms;
    struct event *batch_ev;
    wh_msg *ready_head, *ready_tail;
    wh_msg *live;
    int queued;   /* updates accepted and not yet delivered or dead-lettered */
    int waiting;  /* messages waiting for a retry */
    int in_flight;
    int disabled;
    uint64_t delivered_msgs, delivered_updates, failed_attempts, retried, dead_lettered;
    uint64_t dead_letter_failed; /* updates the dead-letter file could not take */
    char last_error[400];
    int64_t last_error_ms, last_success_ms;
};

struct sg_webhooks {
    struct event_base *base;
    const sg_config *cfg;
    struct sg_plugins *plugins;
    endpoint *eps;
    int n;
    int any_forwarder;
    CURLM *multi;
    struct event *timer_ev;
    char *dead_letters;
    int in_flight;
    sg_store *outbox; /* a durable store keeps the messages; NULL: memory only */
};

/* ---- config ---- */

static int b64decode(const char *in, unsigned char **out, int *outlen)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4) return -1;
    unsigned char *buf = malloc(n);
    int len = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)n);
    if (len < 0) {
        free(buf);
        return -1;
    }
    if (n >= 1 && in[n - 1] == '=') len--;
    if (n >= 2 && in[n - 2] == '=') len--;
    *out = buf;
    *outlen = len;
    return 0;
}

static void endpoint_clear(endpoint *ep)
{
    free(ep->name);
    free(ep->url);
    free(ep->url_shown);
    free(ep->conv_pattern);
    free(ep->forwarder);
    for (int i = 0; i < ep->n_secrets; i++)
        free(ep->secrets[i]);
    free(ep->schedule);
    json_decref(ep->headers);
    free(ep->pending);
    free(ep->texts);
    free(ep->lens);
    if (ep->batch_ev) event_free(ep->batch_ev);
}

static int get_int(json_t *o, const char *k, int def, int min, int max, const char *ep, int *out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(o, k);
    *out = def;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "webhooks endpoint '%s': %s must be an integer from %d to %d", ep, k,
                 min, max);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int parse_schedule(json_t *v, double **out, int *n, char *err, size_t errlen, const char *who)
{
    if (!v) {
        *n = sizeof(default_schedule) / sizeof(default_schedule[0]);
        *out = malloc(sizeof(default_schedule));
        memcpy(*out, default_schedule, sizeof(default_schedule));
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 64) {
        snprintf(err, errlen, "%s: retry_schedule_s must be a list of 1 to 64 delays in seconds", who);
        return -1;
    }
    *n = (int)json_array_size(v);
    *out = calloc(*n, sizeof(double));
    for (int i = 0; i < *n; i++) {
        json_t *d = json_array_get(v, i);
        if (!json_is_number(d) || json_number_value(d) < 0) {
            snprintf(err, errlen, "%s: retry_schedule_s entries must be non-negative numbers", who);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = json_number_value(d);
    }
    return 0;
}

/* The URL as logs and /admin/webhooks show it: the receiver's origin, the
 * rest (a path or query that may hold a token, as Slack-style URLs do)
 * hidden. */
static char *shown_url(const char *url)
{
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    size_t hl = strcspn(host, "/?#");
    const char *at = memchr(host, '@', hl); /* user:password@ */
    if (at) {
        hl -= (size_t)(at + 1 - host);
        host = at + 1;
    }
    size_t n = (size_t)(strstr(url, "://") ? strstr(url, "://") + 3 - url : 0);
    int more = host[hl] != 0;
    char *r = malloc(n + hl + 8);
    if (r) snprintf(r, n + hl + 8, "%.*s%.*s%s", (int)n, url, (int)hl, host, more ? "/\u2026" : "");
    return r;
}

/* Room for a batch's pending updates and their texts. */
static int batch_room(endpoint *ep, const char *who, char *err, size_t errlen)
{
    ep->pending = calloc(ep->batch_size, sizeof(sg_update *));
    ep->texts = calloc(ep->batch_size, sizeof(*ep->texts));
    ep->lens = calloc(ep->batch_size, sizeof(*ep->lens));
    if (!ep->pending || !ep->texts || !ep->lens) {
        snprintf(err, errlen, "%s: out of memory", who);
        return -1;
    }
    return 0;
}

static int parse_endpoint(endpoint *ep, json_t *o, json_t *global_schedule, struct sg_plugins *pm,
                          char *err, size_t errlen)
{
    json_t *name = json_object_get(o, "name"), *url = json_object_get(o, "url");
    if (!json_is_string(name) || !json_is_string(url)) {
        snprintf(err, errlen, "every webhooks endpoint needs a name and a url");
        return -1;
    }
    static const char *const known[] = {"name", "url", "secret", "secrets", "categories", "conversations",
                                        "forwarder", "headers", "batch_size", "batch_delay_ms",
                                        "timeout_ms", "concurrency", "max_queue", "retry_schedule_s", NULL};
    char where[200];
    snprintf(where, sizeof(where), "webhooks endpoint '%.120s'", json_string_value(name));
    if (sg_config_check_keys(o, where, known, err, errlen) < 0) return -1;
    ep->name = strdup(json_string_value(name));
    ep->url = strdup(json_string_value(url));
    ep->url_shown = shown_url(ep->url);
    const char *n = ep->name;
    if (strncmp(ep->url, "http://", 7) != 0 && strncmp(ep->url, "https://", 8) != 0) {
        snprintf(err, errlen, "webhooks endpoint '%s': url must start with http:// or https://", n);
        return -1;
    }
    json_t *secrets = json_object_get(o, "secrets");
    json_t *one = json_object_get(o, "secret");
    json_t *list = secrets ? json_incref(secrets) : one ? json_pack("[O]", one) : NULL;
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > WH_MAX_SECRETS) {
        json_decref(list);
        snprintf(err, errlen, "webhooks endpoint '%s': needs secret = \"whsec_...\" or secrets = {...} (1 to %d)", n, WH_MAX_SECRETS);
        return -1;
    }
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        const char *v = json_string_value(s);
        if (!v || strncmp(v, "whsec_", 6) != 0 ||
            b64decode(v + 6, &ep->secrets[ep->n_secrets], &ep->secret_len[ep->n_secrets]) < 0) {
            json_decref(list);
            snprintf(err, errlen, "webhooks endpoint '%s': a secret must be whsec_ followed by base64", n);
            return -1;
        }
        ep->n_secrets++;
    }
    json_decref(list);
    ep->mask = sg_category_all();
    json_t *cats = json_object_get(o, "categories");
    if (cats) {
        ep->mask = 0;
        if (!json_is_array(cats)) {
            snprintf(err, errlen, "webhooks endpoint '%s': categories must be a list", n);
            return -1;
        }
        json_array_foreach(cats, i, s)
        {
            int ci = json_is_string(s) ? sg_category_index(json_string_value(s), json_string_length(s)) : -1;
            if (ci < 0) {
                snprintf(err, errlen, "webhooks endpoint '%s': unknown category in categories", n);
                return -1;
            }
            ep->mask |= 1ULL << ci;
        }
    }
    json_t *pat = json_object_get(o, "conversations");
    if (pat) {
        if (!json_is_string(pat)) {
            snprintf(err, errlen, "webhooks endpoint '%s': conversations must be a glob pattern", n);
            return -1;
        }
        ep->conv_pattern = strdup(json_string_value(pat));
    }
    json_t *fw = json_object_get(o, "forwarder");
    if (fw) {
        if (!json_is_string(fw) || (pm && !sg_plugins_has_webhook(pm, json_string_value(fw)))) {
            snprintf(err, errlen, "webhooks endpoint '%s': no plugin provides the forwarder '%s'", n,
                     json_is_string(fw) ? json_string_value(fw) : "?");
            return -1;
        }
        ep->forwarder = strdup(json_string_value(fw));
    }
    json_t *h = json_object_get(o, "headers");
    if (h && !json_is_object(h)) {
        snprintf(err, errlen, "webhooks endpoint '%s': headers must be a table of name = value", n);
        return -1;
    }
    ep->headers = h ? json_incref(h) : json_object();
    if (get_int(o, "batch_size", WH_DEFAULT_BATCH, 1, 10000, n, &ep->batch_size, err, errlen) < 0 ||
        get_int(o, "batch_delay_ms", WH_DEFAULT_DELAY_MS, 0, 3600000, n, &ep->batch_delay_ms, err, errlen) < 0 ||
        get_int(o, "timeout_ms", WH_DEFAULT_TIMEOUT_MS, 1, 600000, n, &ep->timeout_ms, err, errlen) < 0 ||
        get_int(o, "concurrency", WH_DEFAULT_CONCURRENCY, 1, 1000, n, &ep->concurrency, err, errlen) < 0 ||
        get_int(o, "max_queue", WH_DEFAULT_MAX_QUEUE, 1, 100000000, n, &ep->max_queue, err, errlen) < 0)
        return -1;
    json_t *sched = json_object_get(o, "retry_schedule_s");
    char who[160];
    snprintf(who, sizeof(who), "webhooks endpoint '%s'", n);
    if (parse_schedule(sched ? sched : global_schedule, &ep->schedule, &ep->n_schedule, err, errlen, who) < 0)
        return -1;
    return batch_room(ep, who, err, errlen);
}

/* ---- the durable outbox ---- */

/* Keep a message's state in the store (a durable one): queued with its
 * next attempt at next_at_ms, or dead. */
static void keep(endpoint *ep, const char *id, const char *body, size_t len, json_t *headers, int n_updates,
                 int attempts, int dead, int64_t next_at_ms, long status, const char *error, int64_t created_ms)
{
    sg_store *st = ep->wh->outbox;
    if (!st) return;
    char *h = headers ? json_dumps(headers, JSON_COMPACT) : NULL;
    sg_outbox_msg m = {.id = id, .endpoint = ep->name, .body = body, .len = len, .headers = h,
                       .last_error = error && error[0] ? error : NULL, .updates = n_updates, .attempts = attempts,
                       .dead = dead, .last_status = status, .next_at_ms = next_at_ms,
                       .created_ms = created_ms ? created_ms : sg_clock_wall_ms()};
    st->ops->outbox_put(st, &m);
    free(h);
}

static void keep_msg(endpoint *ep, const wh_msg *m, int64_t next_at_ms)
{
    keep(ep, m->id, m->body, m->len, m->headers, m->n_updates, m->attempts, 0, next_at_ms, m->last_status,
         m->last_error, m->created_ms);
}

/* Keep the i-th pending update as a part of the message being gathered:
 * committed with the update, so a crash before the batch is made loses
 * nothing acknowledged (the parts are gathered again at start). */
static void keep_part(endpoint *ep, const sg_update *u, int i)
{
    if (!ep->wh->outbox) return;
    char id[64];
    snprintf(id, sizeof(id), "%s.%06d", ep->open_id, i);
    keep(ep, id, u->json, u->json_len, NULL, 1, 0, SG_OUTBOX_PART, 0, 0, NULL, ep->open_ms);
}

/* ---- dead letters ---- */

static void dead_letter(endpoint *ep, const char *id, const char *body, size_t len, json_t *headers,
                        int n_updates, int attempts, long status, const char *reason)
{
    sg_webhooks *wh = ep->wh;
    char ts[25];
    sg_format_ts(sg_clock_wall_ms(), ts);
    json_t *line = json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:s, s:s%, s:O}", "endpoint", ep->name,
                             "webhook_id", id, "reason", reason, "attempts", attempts, "updates",
                             n_updates, "last_status", (json_int_t)status, "failed_at", ts, "body",
                             body, len, "headers", headers ? headers : json_null());
    char *s = line ? json_dumps(line, JSON_COMPACT) : NULL;
    keep(ep, id, body, len, headers, n_updates, attempts, 1, 0, status, reason, 0); /* redeliver reads it there */
    /* the file (with a durable store, an export) holds whole webhook
     * bodies: readable by the gateway's user only */
    int fd = open(wh->dead_letters, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
    if (!f && fd >= 0) close(fd);
    int ok = s && f && fprintf(f, "%s\n", s) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    free(s);
    json_decref(line);
    ep->queued -= n_updates;
    if (!ok) { /* counted as lost, not as dead-lettered */
        ep->dead_letter_failed += n_updates;
        sg_log(SG_LOG_ERROR, "dead_letter_write_failed", "endpoint=%s file=%s webhook_id=%s updates=%d errno=%d",
               ep->name, sg_log_q(wh->dead_letters), id, n_updates, errno);
        return;
    }
    ep->dead_lettered += n_updates;
    sg_log(SG_LOG_WARN, "webhook_dead_letter", "endpoint=%s webhook_id=%s updates=%d attempts=%d reason=%s",
           ep->name, id, n_updates, attempts, sg_log_q(reason));
}

/* ---- signing and sending ---- */

static void new_msg_id(char *out)
{
    unsigned char r[12];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) memset(r, 0, sizeof(r));
    strcpy(out, "msg_");
    for (size_t i = 0; i < sizeof(r); i++)
        sprintf(out + 4 + 2 * i, "%02x", r[i]);
}

static struct curl_slist *signed_headers(endpoint *ep, wh_msg *m)
{
    char ts[32], line[1024];
    snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
    struct curl_slist *h = NULL;
    /* application/json unless the endpoint or the forwarder says otherwise
     * (a CloudEvents batch is application/cloudevents-batch+json) */
    int typed = 0;
    json_t *sets[2] = {ep->headers, m->headers};
    for (int k = 0; k < 2; k++) {
        const char *name;
        json_t *v;
        json_object_foreach(sets[k], name, v) typed |= strcasecmp(name, "content-type") == 0;
    }
    if (!typed) h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    snprintf(line, sizeof(line), "webhook-id: %s", m->id);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof(line), "webhook-timestamp: %s", ts);
    h = curl_slist_append(h, line);
    /* v1,<base64 HMAC-SHA256 of "id.timestamp.body"> per secret */
    size_t o = (size_t)snprintf(line, sizeof(line), "webhook-signature:");
    size_t il = strlen(m->id), tl = strlen(ts);
    unsigned char *content = malloc(il + tl + m->len + 2);
    memcpy(content, m->id, il);
    content[il] = '.';
    memcpy(content + il + 1, ts, tl);
    content[il + 1 + tl] = '.';
    memcpy(content + il + tl + 2, m->body, m->len);
    for (int i = 0; i < ep->n_secrets; i++) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int ml = 0;
        HMAC(EVP_sha256(), ep->secrets[i], ep->secret_len[i], content, il + tl + 2 + m->len, mac, &ml);
        char b64[64];
        EVP_EncodeBlock((unsigned char *)b64, mac, (int)ml);
        o += (size_t)snprintf(line + o, sizeof(line) - o, " v1,%s", b64);
    }
    free(content);
    h = curl_slist_append(h, line);
    for (int k = 0; k < 2; k++) {
        const char *name;
        json_t *v;
        json_object_foreach(sets[k], name, v)
        {
            /* a forwarder computes these: no CR, LF or NUL may split a header */
            if (!json_is_string(v) || strpbrk(json_string_value(v), "\r\n") ||
                strlen(json_string_value(v)) != json_string_length(v) || strpbrk(name, "\r\n: ")) {
                sg_log(SG_LOG_WARN, "webhook_header_refused", "endpoint=%s header=%s reason=\"not a plain header\"",
                       ep->name, sg_log_q(name));
                continue;
            }
            snprintf(line, sizeof(line), "%s: %s", name, json_string_value(v));
            h = curl_slist_append(h, line);
        }
    }
    return h;
}

static size_t on_header(char *b, size_t size, size_t n, void *arg)
{
    wh_msg *m = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(b, "retry-after:", 12) == 0) {
        char tmp[64];
        size_t k = len - 12 < sizeof(tmp) - 1 ? len - 12 : sizeof(tmp) - 1;
        memcpy(tmp, b + 12, k);
        tmp[k] = 0;
        char *end;
        double v = strtod(tmp, &end);
        if (end != tmp && v >= 0) m->retry_after = v;
    }
    return len;
}

static size_t on_body(char *b, size_t size, size_t n, void *arg)
{
    return size * n; /* receivers' answers are not kept */
}

static void pump(endpoint *ep);

static void start_attempt(endpoint *ep, wh_msg *m)
{
    sg_webhooks *wh = ep->wh;
    m->attempts++;
    m->retry_after = -1;
    m->hdrs = signed_headers(ep, m);
    CURL *e = curl_easy_init();
    m->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, ep->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, m->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)m->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, m->hdrs);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)ep->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ep->timeout_ms);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "statusgw-webhooks");
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, m);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_PRIVATE, m);
    ep->in_flight++;
    wh->in_flight++;
    curl_multi_add_handle(wh->multi, e);
}

static wh_msg *msg_new(endpoint *ep, int n_updates, const char *id)
{
    wh_msg *m = calloc(1, sizeof(*m));
    m->ep = ep;
    m->n_updates = n_updates;
    if (id) snprintf(m->id, sizeof(m->id), "%s", id); else new_msg_id(m->id);
    m->created_ms = sg_clock_wall_ms();
    m->lnext = ep->live;
    if (ep->live) ep->live->lprev = m;
    ep->live = m;
    return m;
}

static void msg_free(wh_msg *m)
{
    if (!m) return;
    endpoint *ep = m->ep;
    if (m->lprev) m->lprev->lnext = m->lnext; else ep->live = m->lnext;
    if (m->lnext) m->lnext->lprev = m->lprev;
    if (m->retry_ev) event_free(m->retry_ev);
    free(m->body);
    json_decref(m->headers);
    free(m);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    wh_msg *m = arg;
    endpoint *ep = m->ep;
    ep->waiting--;
    ep->retried++;
    m->next = NULL;
    if (ep->ready_tail) ep->ready_tail->next = m; else ep->ready_head = m;
    ep->ready_tail = m;
    pump(ep);
}

static double max_step(const endpoint *ep)
{
    double mx = 0;
    for (int i = 0; i < ep->n_schedule; i++)
        if (ep->schedule[i] > mx) mx = ep->schedule[i];
    return mx;
}

static void disable(endpoint *ep, const char *why);

/* One attempt ended: success, a retry later, or a dead letter. */
static void finished(endpoint *ep, wh_msg *m, CURLcode rc, long status)
{
    m->last_status = status;
    if (rc == CURLE_OK && status >= 200 && status < 300) {
        ep->delivered_msgs++;
        ep->delivered_updates += m->n_updates;
        ep->queued -= m->n_updates;
        ep->last_success_ms = sg_clock_wall_ms();
        if (ep->wh->outbox) ep->wh->outbox->ops->outbox_del(ep->wh->outbox, m->id);
        msg_free(m);
        return;
    }
    ep->failed_attempts++;
    if (rc != CURLE_OK)
        snprintf(m->last_error, sizeof(m->last_error), "%s", curl_easy_strerror(rc));
    else
        snprintf(m->last_error, sizeof(m->last_error), "HTTP %ld", status);
    snprintf(ep->last_error, sizeof(ep->last_error), "%s (webhook-id %s, attempt %d)", m->last_error,
             m->id, m->attempts);
    ep->last_error_ms = sg_clock_wall_ms();
    sg_log(SG_LOG_WARN, "webhook_attempt_failed", "endpoint=%s webhook_id=%s attempt=%d status=%ld error=%s",
           ep->name, m->id, m->attempts, status, sg_log_q(m->last_error));
    if (rc == CURLE_OK && status == 410) {
        dead_letter(ep, m->id, m->body, m->len, m->headers, m->n_updates, m->attempts, status,
                    "endpoint answered 410 Gone");
        msg_free(m);
        disable(ep, "the receiver answered 410 Gone");
        return;
    }
    if (m->attempts >= ep->n_schedule) {
        char why[300];
        snprintf(why, sizeof(why), "retries exhausted: %s", m->last_error);
        dead_letter(ep, m->id, m->body, m->len, m->headers, m->n_updates, m->attempts, status, why);
        msg_free(m);
        return;
    }
    double delay = ep->schedule[m->attempts];
    if (m->retry_after >= 0 && (status == 429 || status >= 500)) {
        delay = m->retry_after;
        if (delay > max_step(ep)) delay = max_step(ep);
    } else {
        /* jitter: up to +-10% so failed receivers are not hit in lockstep */
        unsigned int r = 0;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r)) r = 0;
        delay *= 0.9 + 0.2 * (r / (double)0xffffffffu);
    }
    if (!m->retry_ev) m->retry_ev = evtimer_new(ep->wh->base, on_retry, m);
    struct timeval tv = {(time_t)delay, (suseconds_t)((delay - (time_t)delay) * 1e6)};
    evtimer_add(m->retry_ev, &tv);
    ep->waiting++;
    keep_msg(ep, m, sg_clock_wall_ms() + (int64_t)(delay * 1000));
}

static void check_done(sg_webhooks *wh)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(wh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *e = msg->easy_handle;
        CURLcode rc = msg->data.result;
        wh_msg *m;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&m);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(wh->multi, e);
        curl_easy_cleanup(e);
        curl_slist_free_all(m->hdrs);
        m->hdrs = NULL;
        m->easy = NULL;
        endpoint *ep = m->ep;
        ep->in_flight--;
        wh->in_flight--;
        finished(ep, m, rc, status);
        pump(ep);
    }
}

/* ---- libcurl on the event loop ---- */

static void on_socket_event(evutil_socket_t fd, short kind, void *arg)
{
    sg_webhooks *wh = arg;
    int running;
    int flags = (kind & EV_READ ? CURL_CSELECT_IN : 0) | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(wh->multi, fd, flags, &running);
    check_done(wh);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    sg_webhooks *wh = userp;
    struct event *ev = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ev) event_free(ev);
        curl_multi_assign(wh->multi, s, NULL);
        return 0;
    }
    short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) | EV_PERSIST);
    if (ev) {
        event_del(ev);
        event_assign(ev, wh->base, s, kind, on_socket_event, wh);
    } else {
        ev = event_new(wh->base, s, kind, on_socket_event, wh);
        curl_multi_assign(wh->multi, s, ev);
    }
    event_add(ev, NULL);
    return 0;
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_webhooks *wh = arg;
    int running;
    curl_multi_socket_action(wh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(wh);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    sg_webhooks *wh = userp;
    if (timeout_ms < 0) {
        evtimer_del(wh->timer_ev);
    } else {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(wh->timer_ev, &tv);
    }
    return 0;
}

/* ---- batching ---- */

static void pump(endpoint *ep)
{
    while (!ep->disabled && ep->in_flight < ep->concurrency && ep->ready_head) {
        wh_msg *m = ep->ready_head;
        ep->ready_head = m->next;
        if (!ep->ready_head) ep->ready_tail = NULL;
        m->next = NULL;
        start_attempt(ep, m);
    }
}

static void enqueue_msg(endpoint *ep, wh_msg *m)
{
    if (ep->ready_tail) ep->ready_tail->next = m; else ep->ready_head = m;
    ep->ready_tail = m;
}

/* One message of n updates' JSON texts, with the endpoint's forwarder's
 * format or the standard body. */
static wh_msg *build_msg(endpoint *ep, int n, const char *const *json, const size_t *lens, const char *id)
{
    wh_msg *m = msg_new(ep, n, id);
    if (ep->forwarder && ep->wh->plugins) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(arr, json_loadb(json[i], lens[i], 0, NULL));
        json_t *hdrs = NULL;
        if (sg_plugins_webhook_format(ep->wh->plugins, ep->forwarder, arr, &m->body, &hdrs) == 0) {
            m->len = strlen(m->body);
            m->headers = hdrs;
        }
        json_decref(arr);
    }
    if (!m->body) { /* the standard body, also when a forwarder's format failed */
        size_t cap = 128;
        for (int i = 0; i < n; i++)
            cap += lens[i] + 1;
        m->body = malloc(cap);
        char ts[25];
        sg_format_ts(sg_clock_wall_ms(), ts);
        size_t o = (size_t)snprintf(m->body, cap, "{\"type\":\"status.updates\",\"timestamp\":\"%s\",\"data\":{\"updates\":[", ts);
        for (int i = 0; i < n; i++) {
            if (i) m->body[o++] = ',';
            memcpy(m->body + o, json[i], lens[i]);
            o += lens[i];
        }
        memcpy(m->body + o, "]}}", 4);
        m->len = o + 3;
    }
    return m;
}

/* Turn the pending updates into one message (with the id their parts
 * were kept under: keeping it drops the parts). */
static void make_batch(endpoint *ep)
{
    int n = ep->n_pending;
    if (n == 0) return;
    evtimer_del(ep->batch_ev);
    for (int i = 0; i < n; i++) {
        ep->texts[i] = ep->pending[i]->json;
        ep->lens[i] = ep->pending[i]->json_len;
    }
    wh_msg *m = build_msg(ep, n, ep->texts, ep->lens, ep->open_id);
    for (int i = 0; i < n; i++) {
        sg_update_unref(ep->pending[i]);
        ep->pending[i] = NULL;
    }
    ep->n_pending = 0;
    keep_msg(ep, m, sg_clock_wall_ms());
    enqueue_msg(ep, m);
    pump(ep);
}

static void on_batch_timer(evutil_socket_t fd, short what, void *arg)
{
    make_batch(arg);
}

/* Dead-letter one update that cannot be queued. */
static void refuse_update(endpoint *ep, const sg_update *u, const char *reason)
{
    char id[48];
    new_msg_id(id);
    ep->queued++;
    dead_letter(ep, id, u->json, u->json_len, NULL, 1, 0, 0, reason);
}

static void disable(endpoint *ep, const char *why)
{
    if (ep->disabled) return;
    ep->disabled = 1;
    sg_log(SG_LOG_ERROR, "webhook_endpoint_disabled", "endpoint=%s reason=%s", ep->name, sg_log_q(why));
    /* nothing queued for it will be sent: keep it all in the dead-letter file */
    while (ep->ready_head) {
        wh_msg *m = ep->ready_head;
        ep->ready_head = m->next;
        dead_letter(ep, m->id, m->body, m->len, m->headers, m->n_updates, m->attempts, m->last_status, why);
        msg_free(m);
    }
    ep->ready_tail = NULL;
    for (int i = 0; i < ep->n_pending; i++) {
        refuse_update(ep, ep->pending[i], why);
        ep->queued--; /* counted when it was offered */
        sg_update_unref(ep->pending[i]);
    }
    if (ep->n_pending && ep->wh->outbox) ep->wh->outbox->ops->outbox_del(ep->wh->outbox, ep->open_id); /* its parts */
    ep->n_pending = 0;
}

void sg_webhooks_offer(sg_webhooks *wh, const char *conv, const sg_update *u)
{
    if (!wh || wh->n == 0) return;
    json_t *decoded = NULL;
    for (int i = 0; i < wh->n; i++) {
        endpoint *ep = &wh->eps[i];
        if (!(ep->mask & (1ULL << u->category))) continue;
        if (ep->conv_pattern && fnmatch(ep->conv_pattern, conv, 0) != 0) continue;
        if (ep->forwarder) {
            if (!decoded) decoded = json_loadb(u->json, u->json_len, 0, NULL);
            if (!decoded || !sg_plugins_webhook_match(wh->plugins, ep->forwarder, decoded)) continue;
        }
        if (ep->disabled) {
            refuse_update(ep, u, "endpoint disabled");
            continue;
        }
        if (ep->queued >= ep->max_queue) {
            refuse_update(ep, u, "queue full");
            continue;
        }
        ep->queued++;
        if (ep->n_pending == 0) {
            new_msg_id(ep->open_id);
            ep->open_ms = sg_clock_wall_ms();
        }
        keep_part(ep, u, ep->n_pending);
        ep->pending[ep->n_pending++] = sg_update_ref((sg_update *)u);
        if (ep->n_pending >= ep->batch_size) {
            make_batch(ep);
        } else if (ep->n_pending == 1) {
            struct timeval tv = {ep->batch_delay_ms / 1000, (ep->batch_delay_ms % 1000) * 1000};
            evtimer_add(ep->batch_ev, &tv);
        }
    }
    json_decref(decoded);
}

void sg_webhooks_flush(sg_webhooks *wh)
{
    for (int i = 0; wh && i < wh->n; i++)
        make_batch(&wh->eps[i]);
}

int sg_webhooks_in_flight(const sg_webhooks *wh)
{
    return wh ? wh->in_flight : 0;
}

/* ---- messages kept in the store ---- */

static endpoint *endpoint_named(sg_webhooks *wh, const char *name)
{
    for (int i = 0; wh && i < wh->n; i++)
        if (strcmp(wh->eps[i].name, name) == 0) return &wh->eps[i];
    return NULL;
}

/* A kept message back in memory, counted in its endpoint's queue. */
static wh_msg *msg_from_kept(endpoint *ep, const sg_outbox_msg *k)
{
    wh_msg *m = msg_new(ep, k->updates > 0 ? k->updates : 1, k->id);
    if (!m || !(m->body = malloc(k->len + 1))) {
        if (m) msg_free(m);
        return NULL;
    }
    memcpy(m->body, k->body, k->len);
    m->body[k->len] = 0;
    m->len = k->len;
    m->headers = k->headers ? json_loads(k->headers, 0, NULL) : NULL;
    m->created_ms = k->created_ms;
    m->attempts = k->attempts;
    m->last_status = k->last_status;
    snprintf(m->last_error, sizeof(m->last_error), "%s", k->last_error ? k->last_error : "");
    ep->queued += m->n_updates;
    return m;
}

typedef struct kept_ctx {
    sg_webhooks *wh;
    endpoint *only; /* redeliver: this endpoint's dead ones */
    sg_dict *ids;   /* and their ids */
    int queued, dead, orphans, gathered;
    /* the parts of the message being gathered again (they come in order) */
    char part_of[48];
    endpoint *part_ep;
    int64_t part_ms;
    char **texts;
    size_t *lens;
    int n_parts, cap_parts;
} kept_ctx;

/* The parts gathered: the message their batch would have been, sent now
 * with the id they were kept under (keeping it drops them). */
static void gather_parts(kept_ctx *kc)
{
    if (kc->n_parts && kc->part_ep) {
        endpoint *ep = kc->part_ep;
        wh_msg *m = build_msg(ep, kc->n_parts, (const char *const *)kc->texts, kc->lens, kc->part_of);
        m->created_ms = kc->part_ms;
        ep->queued += m->n_updates;
        keep_msg(ep, m, sg_clock_wall_ms());
        enqueue_msg(ep, m);
        kc->gathered++;
    }
    for (int i = 0; i < kc->n_parts; i++)
        free(kc->texts[i]);
    kc->n_parts = 0;
    kc->part_of[0] = 0;
}

static void on_part(kept_ctx *kc, endpoint *ep, const sg_outbox_msg *k)
{
    const char *dot = strrchr(k->id, '.');
    size_t bl = dot ? (size_t)(dot - k->id) : strlen(k->id);
    if (bl >= sizeof(kc->part_of)) return;
    if (strncmp(kc->part_of, k->id, bl) != 0 || kc->part_of[bl] != 0) {
        gather_parts(kc);
        memcpy(kc->part_of, k->id, bl);
        kc->part_of[bl] = 0;
        kc->part_ep = ep;
        kc->part_ms = k->created_ms;
    }
    if (kc->n_parts == kc->cap_parts) {
        int cap = kc->cap_parts ? kc->cap_parts * 2 : 64;
        char **t = realloc(kc->texts, sizeof(*t) * (size_t)cap);
        if (t) kc->texts = t;
        size_t *l = t ? realloc(kc->lens, sizeof(*l) * (size_t)cap) : NULL;
        if (l) kc->lens = l;
        if (!t || !l) return;
        kc->cap_parts = cap;
    }
    char *text = malloc(k->len + 1);
    if (!text) return;
    memcpy(text, k->body, k->len);
    text[k->len] = 0;
    kc->texts[kc->n_parts] = text;
    kc->lens[kc->n_parts++] = k->len;
}

/* At start: each queued message is sent at its next attempt, with its
 * webhook-id; dead ones wait for a redeliver. */
static void on_kept(void *arg, const sg_outbox_msg *k)
{
    kept_ctx *kc = arg;
    endpoint *ep = endpoint_named(kc->wh, k->endpoint);
    if (!ep) {
        kc->orphans++;
        return;
    }
    if (k->dead == SG_OUTBOX_PART) {
        on_part(kc, ep, k);
        return;
    }
    if (k->dead) {
        kc->dead++;
        return;
    }
    wh_msg *m = msg_from_kept(ep, k);
    if (!m) return;
    kc->queued++;
    int64_t wait_ms = k->next_at_ms - sg_clock_wall_ms();
    if (wait_ms <= 0 || !(m->retry_ev = evtimer_new(kc->wh->base, on_retry, m))) {
        enqueue_msg(ep, m);
        return;
    }
    struct timeval tv = {(time_t)(wait_ms / 1000), (suseconds_t)(wait_ms % 1000) * 1000};
    evtimer_add(m->retry_ev, &tv);
    ep->waiting++;
}

static void load_kept(sg_webhooks *wh)
{
    kept_ctx kc = {.wh = wh};
    if (wh->outbox->ops->outbox_load(wh->outbox, on_kept, &kc) < 0)
        sg_log(SG_LOG_ERROR, "outbox_load_failed", "reason=\"the store could not be read\"");
    gather_parts(&kc);
    free(kc.texts);
    free(kc.lens);
    if (kc.queued || kc.dead || kc.orphans || kc.gathered)
        sg_log(SG_LOG_INFO, "webhook_outbox_loaded", "queued=%d gathered=%d dead=%d unknown_endpoint=%d", kc.queued,
               kc.gathered, kc.dead, kc.orphans);
    for (int i = 0; i < wh->n; i++)
        pump(&wh->eps[i]);
}

/* Redeliver: requeue one endpoint's dead messages kept in the store. */
static void on_dead_kept(void *arg, const sg_outbox_msg *k)
{
    kept_ctx *kc = arg;
    if (k->dead != 1 || strcmp(k->endpoint, kc->only->name) != 0) return;
    wh_msg *m = msg_from_kept(kc->only, k);
    if (!m) return;
    m->attempts = 0;
    keep_msg(kc->only, m, sg_clock_wall_ms());
    enqueue_msg(kc->only, m);
    sg_dict_set(kc->ids, m->id, strlen(m->id), m);
    kc->queued++;
}

/* ---- lifecycle ---- */

/* Whether the file can be appended to, or made in its directory. */
static int dead_letters_writable(const char *path)
{
    if (access(path, F_OK) == 0) return access(path, W_OK) == 0;
    const char *slash = strrchr(path, '/');
    char dir[4096];
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path) snprintf(dir, sizeof(dir), "/");
    return access(dir, W_OK | X_OK) == 0;
}

static int parse_all(sg_webhooks *wh, const sg_config *cfg, struct sg_plugins *pm, char *err, size_t errlen)
{
    json_t *sec = cfg->webhooks;
    if (!sec) return 0;
    static const char *const known[] = {"endpoints", "retry_schedule_s", "dead_letter_file", NULL};
    if (sg_config_check_keys(sec, "webhooks", known, err, errlen) < 0) return -1;
    json_t *dl = json_object_get(sec, "dead_letter_file");
    if (dl && !json_is_string(dl)) {
        snprintf(err, errlen, "webhooks: dead_letter_file must be a path");
        return -1;
    }
    if (dl) {
        free(wh->dead_letters);
        wh->dead_letters = sg_config_resolve(cfg, json_string_value(dl));
    }
    json_t *eps = json_object_get(sec, "endpoints");
    if (!eps || (json_is_object(eps) && json_object_size(eps) == 0)) return 0; /* {} is an empty list */
    if (!json_is_array(eps)) {
        snprintf(err, errlen, "webhooks: endpoints must be a list of { name = ..., url = ..., secret = ... }");
        return -1;
    }
    wh->eps = calloc(json_array_size(eps) + 1, sizeof(endpoint));
    size_t i;
    json_t *o;
    json_array_foreach(eps, i, o)
    {
        endpoint *ep = &wh->eps[wh->n++];
        ep->wh = wh;
        if (!json_is_object(o) ||
            parse_endpoint(ep, o, json_object_get(sec, "retry_schedule_s"), pm, err, errlen) < 0) {
            if (!json_is_object(o)) snprintf(err, errlen, "webhooks: each endpoint is a table");
            return -1;
        }
        for (int j = 0; j < wh->n - 1; j++)
            if (strcmp(wh->eps[j].name, ep->name) == 0) {
                snprintf(err, errlen, "webhooks: two endpoints are named '%s'", ep->name);
                return -1;
            }
        if (ep->forwarder) wh->any_forwarder = 1;
    }
    /* with endpoints, the dead-letter file must be writable now, not when
     * the first batch fails */
    if (wh->n > 0 && !dead_letters_writable(wh->dead_letters)) {
        snprintf(err, errlen, "webhooks: dead_letter_file '%s' cannot be written (%s)", wh->dead_letters,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static void wh_free_parsed(sg_webhooks *wh)
{
    for (int i = 0; i < wh->n; i++)
        endpoint_clear(&wh->eps[i]);
    free(wh->eps);
    free(wh->dead_letters);
    free(wh);
}

int sg_webhooks_check(const sg_config *cfg, char *err, size_t errlen)
{
    sg_webhooks *wh = calloc(1, sizeof(*wh));
    wh->dead_letters = sg_config_resolve(cfg, WH_DEFAULT_DEAD_LETTERS);
    int rc = parse_all(wh, cfg, NULL, err, errlen);
    wh_free_parsed(wh);
    return rc;
}

sg_webhooks *sg_webhooks_new(struct event_base *base, const sg_config *cfg, struct sg_plugins *pm,
                             sg_store *store, char *err, size_t errlen)
{
    static int curl_ready;
    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = 1;
    }
    sg_webhooks *wh = calloc(1, sizeof(*wh));
    wh->base = base;
    wh->cfg = cfg;
    wh->plugins = pm;
    wh->dead_letters = sg_config_resolve(cfg, WH_DEFAULT_DEAD_LETTERS);
    if (parse_all(wh, cfg, pm, err, errlen) < 0) {
        wh_free_parsed(wh);
        return NULL;
    }
    wh->multi = curl_multi_init();
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETDATA, wh);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERDATA, wh);
    wh->timer_ev = evtimer_new(base, on_curl_timer, wh);
    for (int i = 0; i < wh->n; i++) {
        wh->eps[i].batch_ev = evtimer_new(base, on_batch_timer, &wh->eps[i]);
        sg_log(SG_LOG_INFO, "webhook_endpoint", "endpoint=%s url=%s batch_size=%d batch_delay_ms=%d forwarder=%s",
               wh->eps[i].name, sg_log_q(wh->eps[i].url_shown), wh->eps[i].batch_size, wh->eps[i].batch_delay_ms,
               wh->eps[i].forwarder ? wh->eps[i].forwarder : "-");
    }
    if (store && store->ops->outbox_load) {
        wh->outbox = store;
        load_kept(wh);
    }
    return wh;
}

void sg_webhooks_free(sg_webhooks *wh)
{
    if (!wh) return;
    for (int i = 0; i < wh->n; i++) {
        endpoint *ep = &wh->eps[i];
        make_batch(ep);
        if (wh->outbox) { /* kept in the store: sent after the restart */
            int n = 0, updates = 0;
            for (wh_msg *m = ep->live; m; m = m->lnext, n++)
                updates += m->n_updates;
            if (n)
                sg_log(SG_LOG_INFO, "webhook_outbox_kept", "endpoint=%s messages=%d updates=%d", ep->name, n,
                       updates);
        }
        /* without a durable store, whatever is queued, waiting for a retry
         * or still in flight goes to the dead-letter file: nothing
         * accepted is lost unseen */
        while (ep->live) {
            wh_msg *m = ep->live;
            if (m->easy) {
                curl_multi_remove_handle(wh->multi, m->easy);
                curl_easy_cleanup(m->easy);
                curl_slist_free_all(m->hdrs);
            }
            if (!wh->outbox)
                dead_letter(ep, m->id, m->body, m->len, m->headers, m->n_updates, m->attempts, m->last_status,
                            "gateway stopped before delivery");
            msg_free(m);
        }
    }
    if (wh->multi) curl_multi_cleanup(wh->multi);
    if (wh->timer_ev) event_free(wh->timer_ev);
    wh_free_parsed(wh);
}

/* ---- operators ---- */

json_t *sg_webhooks_admin(const sg_webhooks *wh)
{
    json_t *arr = json_array();
    for (int i = 0; wh && i < wh->n; i++) {
        const endpoint *ep = &wh->eps[i];
        char e[25] = "", ok[25] = "";
        if (ep->last_error_ms) sg_format_ts(ep->last_error_ms, e);
        if (ep->last_success_ms) sg_format_ts(ep->last_success_ms, ok);
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:s?}",
                           "name", ep->name, "url", ep->url_shown, "state", ep->disabled ? "disabled" : "active",
                           "queue_depth", ep->queued, "pending_in_batch", ep->n_pending,
                           "waiting_for_retry", ep->waiting, "in_flight", ep->in_flight,
                           "delivered", (json_int_t)ep->delivered_updates, "delivered_batches",
                           (json_int_t)ep->delivered_msgs, "failed", (json_int_t)ep->failed_attempts,
                           "retried", (json_int_t)ep->retried, "dead_letter_failed",
                           (json_int_t)ep->dead_letter_failed, "dead_lettered",
                           (json_int_t)ep->dead_lettered, "last_error",
                           ep->last_error[0] ? json_string(ep->last_error) : json_null(), "last_error_at",
                           e[0] ? json_string(e) : json_null(), "last_success_at",
                           ok[0] ? json_string(ok) : json_null(), "forwarder", ep->forwarder));
    }
    return json_pack("{s:o, s:s, s:s}", "endpoints", arr, "dead_letter_file", wh ? wh->dead_letters : "", "outbox",
                     wh && wh->outbox ? "store" : "memory");
}

static int redeliver_file(sg_webhooks *wh, endpoint *ep, sg_dict *requeued);

int sg_webhooks_redeliver(sg_webhooks *wh, const char *name)
{
    endpoint *ep = endpoint_named(wh, name);
    if (!ep) return -1;
    /* the store's dead messages, then the file's lines it does not hold
     * (written before it, or by a gateway without one) */
    kept_ctx kc = {.wh = wh, .only = ep};
    if (wh->outbox && (kc.ids = sg_dict_new())) wh->outbox->ops->outbox_load(wh->outbox, on_dead_kept, &kc);
    int n = redeliver_file(wh, ep, kc.ids) + kc.queued;
    if (kc.ids) sg_dict_free(kc.ids);
    if (ep->disabled) {
        ep->disabled = 0; /* an operator asked for delivery: try the receiver again */
        sg_log(SG_LOG_INFO, "webhook_endpoint_enabled", "endpoint=%s reason=redeliver", ep->name);
    }
    sg_log(SG_LOG_INFO, "webhook_redeliver", "endpoint=%s messages=%d", ep->name, n);
    pump(ep);
    return n;
}

/* Requeue the endpoint's lines of the dead-letter file (but those whose
 * id is in requeued: already requeued from the store) and leave the
 * others. */
static int redeliver_file(sg_webhooks *wh, endpoint *ep, sg_dict *requeued)
{
    const char *name = ep->name;
    FILE *f = fopen(wh->dead_letters, "r");
    if (!f) return 0;
    /* what stays goes to a new file of our own beside it (mkstemp: never
     * through a link someone left there), renamed over the old one */
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", wh->dead_letters);
    int tfd = mkostemp(tmp, O_CLOEXEC);
    FILE *keep = tfd >= 0 ? fdopen(tfd, "w") : NULL;
    if (!keep) {
        if (tfd >= 0) {
            close(tfd);
            unlink(tmp);
        }
        fclose(f);
        return 0;
    }
    int n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        const char *epn = json_string_value(json_object_get(j, "endpoint"));
        json_t *body = json_object_get(j, "body");
        const char *jid = json_string_value(json_object_get(j, "webhook_id"));
        if (j && epn && strcmp(epn, name) == 0 && requeued && jid && sg_dict_get(requeued, jid, strlen(jid))) {
            /* requeued from the store: the line goes */
        } else if (j && epn && strcmp(epn, name) == 0 && json_is_string(body)) {
            int nu = (int)json_integer_value(json_object_get(j, "updates"));
            wh_msg *m = msg_new(ep, nu > 0 ? nu : 1,
                                json_string_value(json_object_get(j, "webhook_id")));
            m->len = json_string_length(body);
            m->body = malloc(m->len + 1);
            memcpy(m->body, json_string_value(body), m->len + 1);
            json_t *h = json_object_get(j, "headers");
            m->headers = json_is_object(h) ? json_incref(h) : NULL;
            ep->queued += m->n_updates;
            keep_msg(ep, m, sg_clock_wall_ms());
            enqueue_msg(ep, m);
            n++;
        } else {
            fwrite(line, 1, (size_t)len, keep);
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    fclose(keep);
    rename(tmp, wh->dead_letters);
    return n;
}
