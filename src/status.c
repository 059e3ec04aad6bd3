#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- categories ---- */

static const char *builtin_names[] = {"engine", "tool",     "workflow", "progress",
                                      "error",  "info",     "planning", "summary"};
static const char *builtin_desc[] = {"Engine execution updates",
                                     "Tool execution status",
                                     "Workflow progress updates",
                                     "General progress indicators",
                                     "Error messages",
                                     "Informational messages",
                                     "Planning and decision-making updates",
                                     "Aggregated summaries from plugins"};

static char *cat_names[SG_MAX_CATEGORIES];
static char *cat_desc[SG_MAX_CATEGORIES];
static int n_cats;

void sg_categories_free(void)
{
    for (int i = 0; i < n_cats; i++) {
        free(cat_names[i]);
        free(cat_desc[i]);
    }
    n_cats = 0;
}

int sg_categories_init(const sg_config *c, char *err, size_t errlen)
{
    sg_categories_free();
    for (size_t i = 0; i < sizeof(builtin_names) / sizeof(builtin_names[0]); i++) {
        cat_names[n_cats] = strdup(builtin_names[i]);
        cat_desc[n_cats++] = strdup(builtin_desc[i]);
    }
    for (int i = 0; c && i < c->n_extra_categories; i++) {
        const char *n = c->extra_categories[i];
        if (sg_category_index(n, strlen(n)) >= 0) {
            snprintf(err, errlen, "category '%s' is defined twice", n);
            return -1;
        }
        if (n_cats == SG_MAX_CATEGORIES) {
            snprintf(err, errlen, "at most %d categories", SG_MAX_CATEGORIES);
            return -1;
        }
        cat_names[n_cats] = strdup(n);
        cat_desc[n_cats++] = strdup(c->extra_descriptions[i]);
    }
    return 0;
}

int sg_category_index(const char *name, size_t len)
{
    for (int i = 0; i < n_cats; i++)
        if (strlen(cat_names[i]) == len && memcmp(cat_names[i], name, len) == 0) return i;
    return -1;
}

const char *sg_category_name(int i)
{
    return cat_names[i];
}

const char *sg_category_desc(int i)
{
    return cat_desc[i];
}

int sg_category_count(void)
{
    return n_cats;
}

uint64_t sg_category_all(void)
{
    return n_cats == 64 ? ~0ULL : (1ULL << n_cats) - 1;
}

int sg_category_parse_csv(const char *csv, uint64_t *mask, char *bad, size_t badlen)
{
    *mask = 0;
    const char *p = csv;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 1 && *p == '*') {
            *mask |= sg_category_all();
        } else if (n > 0) {
            int i = sg_category_index(p, n);
            if (i < 0) {
                snprintf(bad, badlen, "%.*s", (int)(n > 64 ? 64 : n), p);
                return -1;
            }
            *mask |= 1ULL << i;
        }
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

void sg_category_mask_to_json(uint64_t mask, json_t *arr)
{
    for (int i = 0; i < n_cats; i++)
        if (mask & (1ULL << i)) json_array_append_new(arr, json_string(cat_names[i]));
}

int sg_conv_id_valid(const char *s, size_t n)
{
    if (n < 1 || n > SG_MAX_CONV_ID) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- errors ---- */

void sg_error_set(sg_error *e, int status, const char *code, const char *field,
                  const char *fmt, ...)
{
    e->status = status;
    e->code = code;
    e->field = field;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

json_t *sg_error_json(const sg_error *e)
{
    json_t *inner = json_pack("{s:s, s:s}", "code", e->code, "message", e->message);
    if (e->field) json_object_set_new(inner, "field", json_string(e->field));
    return json_pack("{s:o}", "error", inner);
}

/* ---- validation ---- */

static int opt_string(json_t *obj, const char *key, size_t max, json_t **out, sg_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) {
        sg_error_set(err, 400, "invalid_field", key, "%s must be a string", key);
        return -1;
    }
    size_t n = json_string_length(v);
    if (n == 0 || n > max || memchr(json_string_value(v), 0, n)) {
        sg_error_set(err, 400, "invalid_field", key,
                     "%s must be 1 to %zu bytes without NUL", key, max);
        return -1;
    }
    *out = v;
    return 0;
}

static const char *known_fields[] = {"conversation_id", "category", "text",
                                     "metadata",        "source",   "idempotency_key",
                                     "builder",         "args",     NULL};

int sg_draft_from_json(json_t *obj, const sg_limits *lim, sg_draft *d, sg_error *err)
{
    memset(d, 0, sizeof(*d));
    if (!json_is_object(obj)) {
        sg_error_set(err, 400, "invalid_body", NULL, "a status update must be a JSON object");
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        int known = 0;
        for (int i = 0; known_fields[i] && !known; i++)
            known = strcmp(key, known_fields[i]) == 0;
        if (!known) {
            sg_error_set(err, 400, "unknown_field", NULL, "unknown field '%.64s'", key);
            return -1;
        }
    }

    v = json_object_get(obj, "conversation_id");
    if (!v || json_is_null(v)) {
        memcpy(d->conv_id, "system", 7);
        d->conv_len = 6;
    } else if (!json_is_string(v) ||
               !sg_conv_id_valid(json_string_value(v), json_string_length(v))) {
        sg_error_set(err, 400, "invalid_conversation_id", "conversation_id",
                     "conversation_id must be 1-128 characters of [A-Za-z0-9._:@-]");
        return -1;
    } else {
        d->conv_len = json_string_length(v);
        memcpy(d->conv_id, json_string_value(v), d->conv_len + 1);
    }

    v = json_object_get(obj, "category");
    if (!v || json_is_null(v)) {
        sg_error_set(err, 400, "missing_category", "category", "category is required");
        return -1;
    }
    if (!json_is_string(v) ||
        (d->category = sg_category_index(json_string_value(v), json_string_length(v))) < 0) {
        char names[160];
        size_t o = 0;
        for (int i = 0; i < n_cats && o < sizeof(names) - 40; i++)
            o += snprintf(names + o, sizeof(names) - o, "%s%s", i ? ", " : "", cat_names[i]);
        sg_error_set(err, 400, "invalid_category", "category",
                     "category must be one of: %s", names);
        return -1;
    }

    json_t *b;
    if (opt_string(obj, "builder", 64, &b, err) < 0) return -1;
    d->builder = b ? json_string_value(b) : NULL;
    v = json_object_get(obj, "args");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            sg_error_set(err, 400, "invalid_field", "args", "args must be a JSON object");
            return -1;
        }
        if (!d->builder) {
            sg_error_set(err, 400, "invalid_field", "args", "args needs a builder");
            return -1;
        }
        d->args = v;
    }

    v = json_object_get(obj, "text");
    if (!v || json_is_null(v)) {
        if (!d->builder) {
            sg_error_set(err, 400, "missing_text", "text", "text is required");
            return -1;
        }
    } else if (!json_is_string(v)) {
        sg_error_set(err, 400, "invalid_text", "text", "text must be a string");
        return -1;
    } else if (json_string_length(v) > lim->max_text) {
        sg_error_set(err, 400, "text_too_long", "text", "text is %zu bytes; the limit is %zu",
                     json_string_length(v), lim->max_text);
        return -1;
    } else if (memchr(json_string_value(v), 0, json_string_length(v))) {
        sg_error_set(err, 400, "invalid_text", "text", "text must not contain NUL");
        return -1;
    } else {
        d->text = v;
    }

    v = json_object_get(obj, "metadata");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            sg_error_set(err, 400, "invalid_metadata", "metadata",
                         "metadata must be a JSON object");
            return -1;
        }
        size_t n = json_dumpb(v, NULL, 0, JSON_COMPACT);
        if (n > lim->max_metadata) {
            sg_error_set(err, 400, "metadata_too_large", "metadata",
                         "metadata is %zu bytes encoded; the limit is %zu", n,
                         lim->max_metadata);
            return -1;
        }
        d->metadata = v;
    }

    if (opt_string(obj, "source", 128, &d->source, err) < 0) return -1;
    json_t *k;
    if (opt_string(obj, "idempotency_key", 256, &k, err) < 0) return -1;
    d->idempotency_key = k ? json_string_value(k) : NULL;
    return 0;
}

/* ---- encoding ---- */

void sg_format_ts(int64_t ms, char *out)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, 25, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ", (unsigned)(tm.tm_year + 1900) % 10000u,
             (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u,
             (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u,
             (unsigned)(ms % 1000) % 1000u);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

#define ENC (JSON_COMPACT | JSON_ENCODE_ANY)

/* Write s as a JSON string (quotes included) the way jansson does; out
 * has room for 6 * n + 2 bytes. Returns the bytes written. */
static size_t escape_json(const char *s, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            *p++ = (char)ch;
            continue;
        }
        *p++ = '\\';
        switch (ch) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\f': *p++ = 'f'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p++ = '"';
    return (size_t)(p - out);
}

sg_update *sg_update_new(const sg_draft *d, uint64_t seq, int64_t ts_ms)
{
    static json_t *empty_text;
    if (!empty_text) empty_text = json_string("");
    json_t *text = d->text ? d->text : empty_text;
    size_t tlen = 6 * json_string_length(text) + 2;
    /* encode the metadata once, into a stack buffer when it fits */
    char mstack[4096];
    char *mbuf = mstack;
    size_t mlen = 2;
    if (d->metadata) {
        mlen = json_dumpb(d->metadata, mstack, sizeof(mstack), ENC);
        if (mlen > sizeof(mstack)) {
            mbuf = malloc(mlen);
            if (!mbuf) return NULL;
            json_dumpb(d->metadata, mbuf, mlen, ENC);
        }
    }
    size_t slen = d->source ? json_dumpb(d->source, NULL, 0, ENC) : 0;
    const char *cat = sg_category_name(d->category);
    size_t cap = 160 + d->conv_len + strlen(cat) + tlen + mlen + slen;

    sg_update *u = malloc(sizeof(*u) + cap);
    if (!u) {
        if (mbuf != mstack) free(mbuf);
        return NULL;
    }
    u->refcnt = 1;
    u->category = d->category;
    u->seq = seq;
    u->ts_ms = ts_ms;
    u->recv_ns = mono_ns();
    u->json = (char *)(u + 1);

    char *p = u->json;
    p += sprintf(p, "{\"conversation_id\":\"%s\",\"seq\":%llu,\"category\":\"%s\",\"text\":",
                 d->conv_id, (unsigned long long)seq, cat);
    p += escape_json(json_string_value(text), json_string_length(text), p);
    memcpy(p, ",\"metadata\":", 12);
    p += 12;
    if (d->metadata) {
        memcpy(p, mbuf, mlen);
        p += mlen;
        if (mbuf != mstack) free(mbuf);
    } else {
        memcpy(p, "{}", 2);
        p += 2;
    }
    char ts[25];
    sg_format_ts(ts_ms, ts);
    p += sprintf(p, ",\"timestamp\":\"%s\"", ts);
    if (d->source) {
        p += sprintf(p, ",\"source\":");
        p += json_dumpb(d->source, p, slen, ENC);
    }
    *p++ = '}';
    *p = 0;
    u->json_len = p - u->json;
    return u;
}

void sg_update_unref(sg_update *u)
{
    if (u && --u->refcnt == 0) free(u);
}
