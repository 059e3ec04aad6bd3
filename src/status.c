#include "status.h"

#include "clock.h"
#include "jtext.h"

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
    e->retry_after = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    /* messages quote what the client sent (a path, a name): bytes that are
     * not UTF-8 become '?', or the error itself could not be written as
     * JSON and the client would be told something else went wrong */
    size_t n = strlen(e->message);
    if (!sg_utf8_valid(e->message, n)) {
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)e->message[i] >= 0x80) e->message[i] = '?';
    }
}

json_t *sg_error_json(const sg_error *e)
{
    json_t *inner = json_pack("{s:s, s:s}", "code", e->code, "message", e->message);
    if (e->field) json_object_set_new(inner, "field", json_string(e->field));
    if (e->retry_after > 0) json_object_set_new(inner, "retry_after", json_integer(e->retry_after));
    return json_pack("{s:o}", "error", inner);
}

static char *interned[256];
static int n_interned;

/* freed when the module holding them is unloaded (the specs load the
 * plugin host as a Lua module), so the leak check sees nothing orphaned */
__attribute__((destructor)) static void free_interned(void)
{
    for (int i = 0; i < n_interned; i++)
        free(interned[i]);
    n_interned = 0;
}

const char *sg_error_code_intern(const char *code)
{
    char **codes = interned;
    int n = n_interned;
    size_t len = strlen(code);
    if (len == 0 || len > 47) return NULL;
    for (size_t i = 0; i < len; i++)
        if (!((code[i] >= 'a' && code[i] <= 'z') || (code[i] >= '0' && code[i] <= '9') || code[i] == '_'))
            return NULL;
    for (int i = 0; i < n; i++)
        if (strcmp(codes[i], code) == 0) return codes[i];
    if (n == (int)(sizeof(interned) / sizeof(interned[0]))) return "refused";
    char *c = strdup(code);
    if (!c) return "refused";
    interned[n_interned++] = c;
    return c;
}

/* ---- validation ---- */

enum {
    F_CONV, F_CATEGORY, F_TEXT, F_METADATA, F_SOURCE, F_IDEM, F_BUILDER, F_ARGS, F_COUNT
};
static const char *field_names[F_COUNT] = {"conversation_id", "category", "text", "metadata",
                                           "source", "idempotency_key", "builder", "args"};

/* What the scan found for one top-level field. */
enum { V_ABSENT, V_NULL, V_STRING, V_OBJECT, V_OTHER };
typedef struct field {
    int kind;
    const char *s; /* decoded string, or canonical object */
    size_t n;
} field;

static int field_index(const char *k, size_t n)
{
    for (int i = 0; i < F_COUNT; i++)
        if (strlen(field_names[i]) == n && memcmp(field_names[i], k, n) == 0) return i;
    return -1;
}

static int syntax_error(const sg_jtext *j, sg_error *err)
{
    if (j->utf8) sg_error_set(err, 400, "invalid_utf8", NULL, "the body is not valid UTF-8: %s", j->err);
    else sg_error_set(err, 400, "invalid_json", NULL, "malformed JSON: %s", j->err);
    return -1;
}

/* Scan the top-level object into fields: strings decoded, objects
 * canonical. An unknown key is remembered (the first) and the scan goes
 * on, so that a syntax error anywhere wins over it, as it did with a
 * parser that reads the whole body first. */
static int scan_fields(sg_jtext *j, field *f, char *unknown, size_t unknown_len, int *not_object,
                       int whole, sg_error *err)
{
    sg_jtext_ws(j);
    if (j->p >= j->end || *j->p != '{') {
        *not_object = 1;
        if (sg_jtext_value(j) < 0) return syntax_error(j, err);
    } else {
        j->p++;
        sg_jtext_ws(j);
        int first = 1;
        while (!(first && j->p < j->end && *j->p == '}')) {
            first = 0;
            if (j->p >= j->end || *j->p != '"') {
                snprintf(j->err, sizeof(j->err), "expected a string key at byte %zu", (size_t)(j->p - j->start));
                return syntax_error(j, err);
            }
            char *k = j->o;
            if (sg_jtext_string(j, 1) < 0) return syntax_error(j, err);
            size_t kn = (size_t)(j->o - k);
            int fi = field_index(k, kn);
            if (fi >= 0 && f[fi].kind != V_ABSENT) {
                snprintf(j->err, sizeof(j->err), "duplicate key \"%s\"", field_names[fi]);
                return syntax_error(j, err);
            }
            if (fi < 0 && !unknown[0]) snprintf(unknown, unknown_len, "%.*s", (int)(kn > 64 ? 64 : kn), k);
            j->o = k; /* the key's bytes are not kept */
            sg_jtext_ws(j);
            if (j->p >= j->end || *j->p != ':') {
                snprintf(j->err, sizeof(j->err), "expected ':' at byte %zu", (size_t)(j->p - j->start));
                return syntax_error(j, err);
            }
            j->p++;
            sg_jtext_ws(j);
            char *v = j->o;
            int kind;
            if (j->p < j->end && *j->p == '"') {
                if (sg_jtext_string(j, 1) < 0) return syntax_error(j, err);
                *j->o++ = 0; /* decoded is at least 2 bytes shorter than its source */
                kind = V_STRING;
            } else {
                char c = j->p < j->end ? *j->p : 0;
                if (sg_jtext_value(j) < 0) return syntax_error(j, err);
                kind = c == '{' ? V_OBJECT : c == 'n' ? V_NULL : V_OTHER;
            }
            if (fi >= 0) {
                f[fi].kind = kind;
                f[fi].s = v;
                f[fi].n = (size_t)(j->o - v) - (kind == V_STRING);
            }
            sg_jtext_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                sg_jtext_ws(j);
                if (j->p < j->end && *j->p == '}') {
                    snprintf(j->err, sizeof(j->err), "expected a string key at byte %zu", (size_t)(j->p - j->start));
                    return syntax_error(j, err);
                }
                continue;
            }
            if (j->p < j->end && *j->p == '}') break;
            snprintf(j->err, sizeof(j->err), "expected ',' or '}' at byte %zu", (size_t)(j->p - j->start));
            return syntax_error(j, err);
        }
        j->p++;
    }
    if (!whole) return 0;
    sg_jtext_ws(j);
    if (j->p != j->end) {
        snprintf(j->err, sizeof(j->err), "data after the end of the value at byte %zu", (size_t)(j->p - j->start));
        return syntax_error(j, err);
    }
    return 0;
}

static int opt_string(const field *f, int i, size_t max, const char **out, size_t *len, sg_error *err)
{
    const char *key = field_names[i];
    *out = NULL;
    if (f[i].kind == V_ABSENT || f[i].kind == V_NULL) return 0;
    if (f[i].kind != V_STRING) {
        sg_error_set(err, 400, "invalid_field", key, "%s must be a string", key);
        return -1;
    }
    if (f[i].n == 0 || f[i].n > max) {
        sg_error_set(err, 400, "invalid_field", key, "%s must be 1 to %zu bytes without NUL", key, max);
        return -1;
    }
    *out = f[i].s;
    if (len) *len = f[i].n;
    return 0;
}

static int check_text(const char *s, size_t n, const sg_limits *lim, sg_error *err)
{
    if (n > lim->max_text) {
        sg_error_set(err, 400, "text_too_long", "text", "text is %zu bytes; the limit is %zu", n, lim->max_text);
        return -1;
    }
    if (memchr(s, 0, n)) {
        sg_error_set(err, 400, "invalid_text", "text", "text must not contain NUL");
        return -1;
    }
    return 0;
}

static int check_metadata_size(size_t n, const sg_limits *lim, sg_error *err)
{
    if (n <= lim->max_metadata) return 0;
    sg_error_set(err, 400, "metadata_too_large", "metadata",
                 "metadata is %zu bytes encoded; the limit is %zu", n, lim->max_metadata);
    return -1;
}

static int validate(const field *f, const char *unknown, int not_object, const sg_limits *lim,
                    sg_draft *d, sg_error *err)
{
    if (not_object) {
        sg_error_set(err, 400, "invalid_body", NULL, "a status update must be a JSON object");
        return -1;
    }
    if (unknown[0]) {
        sg_error_set(err, 400, "unknown_field", NULL, "unknown field '%s'", unknown);
        return -1;
    }
    const field *v = &f[F_CONV];
    if (v->kind == V_ABSENT || v->kind == V_NULL) {
        memcpy(d->conv_id, "system", 7);
        d->conv_len = 6;
    } else if (v->kind != V_STRING || !sg_conv_id_valid(v->s, v->n)) {
        sg_error_set(err, 400, "invalid_conversation_id", "conversation_id",
                     "conversation_id must be 1-128 characters of [A-Za-z0-9._:@-]");
        return -1;
    } else {
        d->conv_len = v->n;
        memcpy(d->conv_id, v->s, v->n);
        d->conv_id[v->n] = 0;
    }

    v = &f[F_CATEGORY];
    if (v->kind == V_ABSENT || v->kind == V_NULL) {
        sg_error_set(err, 400, "missing_category", "category", "category is required");
        return -1;
    }
    if (v->kind != V_STRING || (d->category = sg_category_index(v->s, v->n)) < 0) {
        char names[160];
        size_t o = 0;
        for (int i = 0; i < n_cats && o < sizeof(names) - 40; i++)
            o += snprintf(names + o, sizeof(names) - o, "%s%s", i ? ", " : "", cat_names[i]);
        sg_error_set(err, 400, "invalid_category", "category", "category must be one of: %s", names);
        return -1;
    }

    if (opt_string(f, F_BUILDER, 64, &d->builder, NULL, err) < 0) return -1;
    v = &f[F_ARGS];
    if (v->kind != V_ABSENT && v->kind != V_NULL) {
        if (v->kind != V_OBJECT) {
            sg_error_set(err, 400, "invalid_field", "args", "args must be a JSON object");
            return -1;
        }
        if (!d->builder) {
            sg_error_set(err, 400, "invalid_field", "args", "args needs a builder");
            return -1;
        }
        d->args = v->s;
        d->args_len = v->n;
    }

    v = &f[F_TEXT];
    if (v->kind == V_ABSENT || v->kind == V_NULL) {
        if (!d->builder) {
            sg_error_set(err, 400, "missing_text", "text", "text is required");
            return -1;
        }
    } else if (v->kind != V_STRING) {
        sg_error_set(err, 400, "invalid_text", "text", "text must be a string");
        return -1;
    } else {
        if (check_text(v->s, v->n, lim, err) < 0) return -1;
        d->text = v->s;
        d->text_len = v->n;
    }

    v = &f[F_METADATA];
    if (v->kind != V_ABSENT && v->kind != V_NULL) {
        if (v->kind != V_OBJECT) {
            sg_error_set(err, 400, "invalid_metadata", "metadata", "metadata must be a JSON object");
            return -1;
        }
        if (check_metadata_size(v->n, lim, err) < 0) return -1;
        d->metadata = v->s;
        d->metadata_len = v->n;
    }

    if (opt_string(f, F_SOURCE, 128, &d->source, &d->source_len, err) < 0) return -1;
    return opt_string(f, F_IDEM, 256, &d->idempotency_key, NULL, err);
}

int sg_draft_parse(const char *json, size_t n, const sg_limits *lim, sg_draft *d, sg_error *err)
{
    memset(d, 0, sizeof(*d));
    if (n == 0) {
        sg_error_set(err, 400, "invalid_json", NULL, "the request body is empty");
        return -1;
    }
    /* canonical and decoded forms are never longer than their source; +1
     * for the NUL after a string value */
    char *buf = malloc(n + 1);
    if (!buf) {
        sg_error_set(err, 503, "out_of_memory", NULL, "out of memory");
        return -1;
    }
    sg_jtext j;
    sg_jtext_init(&j, json, n, buf);
    int syntax;
    if (sg_draft_scan(&j, 1, lim, d, err, &syntax) < 0) {
        free(buf);
        return -1;
    }
    d->buf = buf; /* the scan's strings live here */
    return 0;
}

int sg_draft_check_json(json_t *obj, const sg_limits *lim, sg_error *err)
{
    sg_draft d;
    int rc = sg_draft_from_json(obj, lim, &d, err);
    sg_draft_free(&d);
    return rc;
}

int sg_draft_scan(sg_jtext *j, int whole, const sg_limits *lim, sg_draft *d, sg_error *err,
                  int *syntax)
{
    memset(d, 0, sizeof(*d));
    field f[F_COUNT];
    memset(f, 0, sizeof(f));
    char unknown[72] = "";
    int not_object = 0;
    *syntax = 0;
    if (scan_fields(j, f, unknown, sizeof(unknown), &not_object, whole, err) < 0) {
        *syntax = 1;
        return -1;
    }
    if (validate(f, unknown, not_object, lim, d, err) < 0) {
        memset(d, 0, sizeof(*d));
        return -1;
    }
    return 0;
}

int sg_draft_from_json(json_t *obj, const sg_limits *lim, sg_draft *d, sg_error *err)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
        memset(d, 0, sizeof(*d));
        sg_error_set(err, 400, "invalid_body", NULL, "a status update must be a JSON object");
        return -1;
    }
    int rc = sg_draft_parse(s, strlen(s), lim, d, err);
    free(s);
    return rc;
}

void sg_draft_free(sg_draft *d)
{
    free(d->buf);
    free(d->extra);
    d->buf = d->extra = NULL;
}

int sg_draft_set_built(sg_draft *d, sg_built *b, const sg_limits *lim, sg_error *err)
{
    char *x = b->block;
    b->block = NULL;
    if (check_metadata_size(b->mlen, lim, err) < 0 ||
        (b->has_text && check_text(x + b->mlen, b->tlen, lim, err) < 0)) {
        free(x);
        return -1;
    }
    if (b->has_text) {
        d->text = x + b->mlen;
        d->text_len = b->tlen;
    }
    free(d->extra);
    d->extra = x;
    d->metadata = x;
    d->metadata_len = b->mlen;
    return 0;
}

/* ---- encoding ---- */

static void two(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10 % 10);
    o[1] = (char)('0' + v % 10);
}

void sg_format_ts(int64_t ms, char *out)
{
    /* the same second as last time needs no gmtime_r */
    static int64_t last_s = -1;
    static char last[20];
    int64_t sec = ms / 1000;
    if (sec != last_s) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        unsigned y = (unsigned)(tm.tm_year + 1900) % 10000u;
        two(last, y / 100);
        two(last + 2, y % 100);
        last[4] = '-';
        two(last + 5, (unsigned)tm.tm_mon + 1);
        last[7] = '-';
        two(last + 8, (unsigned)tm.tm_mday);
        last[10] = 'T';
        two(last + 11, (unsigned)tm.tm_hour);
        last[13] = ':';
        two(last + 14, (unsigned)tm.tm_min);
        last[16] = ':';
        two(last + 17, (unsigned)tm.tm_sec);
        last[19] = '.';
        last_s = sec;
    }
    memcpy(out, last, 20);
    unsigned m = (unsigned)(ms % 1000);
    out[20] = (char)('0' + m / 100);
    two(out + 21, m % 100);
    out[23] = 'Z';
    out[24] = 0;
}

/* ---- updates' memory ----
 *
 * A stored update lives until history no longer reaches it, then is freed
 * (by then it is cold) while the next one of about its size is made. Kept
 * by size class (32 bytes apart) and handed out again last-in first-out,
 * the freed block is reused at once, still in the cache: no allocator
 * coalescing with neighbours as cold as it (glibc's free spent a third of
 * a bulk publish there). The pool holds at most UPOOL_BYTES per thread;
 * a sanitizer build has none (it would hide a use after free). */
#define UPOOL_STEP 32
#define UPOOL_CLASSES 64 /* blocks up to 2 KB */
#define UPOOL_BYTES ((size_t)4 << 20)
#define ULATER_N 64    /* references dropped together */
#define ULATER_AHEAD 12 /* fetched that many ahead of the one dropped */

#if defined(__SANITIZE_ADDRESS__)
#define UPOOL_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UPOOL_ON 0
#endif
#endif
#ifndef UPOOL_ON
#define UPOOL_ON 1
#endif

typedef struct upool_block {
    struct upool_block *next;
} upool_block;

static _Thread_local struct {
    upool_block *head[UPOOL_CLASSES];
    size_t bytes;
    char *scratch; /* where sg_update_new encodes */
    size_t scratch_cap;
    sg_update *later[ULATER_N]; /* sg_update_unref_later's */
    int n_later;
} upool;

/* The class of a block of n bytes, or -1 when it is not pooled. */
static int upool_class(size_t n)
{
    size_t c = (n + UPOOL_STEP - 1) / UPOOL_STEP;
    return UPOOL_ON && c < UPOOL_CLASSES ? (int)c : -1;
}

static sg_update *update_alloc(size_t json_len)
{
    size_t n = sizeof(sg_update) + json_len + 1;
    int c = upool_class(n);
    if (c < 0) return malloc(n);
    upool_block *b = upool.head[c];
    if (!b) return malloc((size_t)c * UPOOL_STEP);
    upool.head[c] = b->next;
    upool.bytes -= (size_t)c * UPOOL_STEP;
    return (sg_update *)b;
}

void sg_update_unref(sg_update *u)
{
    if (!u || --u->refcnt > 0) return;
    int c = upool_class(sizeof(sg_update) + u->json_len + 1);
    if (c < 0 || upool.bytes + (size_t)c * UPOOL_STEP > UPOOL_BYTES) {
        free(u);
        return;
    }
    upool_block *b = (upool_block *)u;
    b->next = upool.head[c];
    upool.head[c] = b;
    upool.bytes += (size_t)c * UPOOL_STEP;
}

/* Drop the references put off, fetching each a dozen ahead: the misses
 * overlap instead of stalling one after the other. */
static void drop_later(void)
{
    int n = upool.n_later;
    upool.n_later = 0;
    for (int i = 0; i < n && i < ULATER_AHEAD; i++)
        __builtin_prefetch(upool.later[i], 1);
    for (int i = 0; i < n; i++) {
        if (i + ULATER_AHEAD < n) __builtin_prefetch(upool.later[i + ULATER_AHEAD], 1);
        sg_update_unref(upool.later[i]);
    }
}

void sg_update_unref_later(sg_update *u)
{
    if (!u) return;
    if (!UPOOL_ON) { /* the sanitizer build: at once, as a use after free is caught where it happens */
        sg_update_unref(u);
        return;
    }
    upool.later[upool.n_later++] = u;
    if (upool.n_later == ULATER_N) drop_later();
}

size_t sg_update_pooled(void)
{
    return upool.bytes;
}

int sg_update_pooling(void)
{
    return UPOOL_ON;
}

void sg_update_pool_free(void)
{
    drop_later();
    for (int c = 0; c < UPOOL_CLASSES; c++)
        while (upool.head[c]) {
            upool_block *b = upool.head[c];
            upool.head[c] = b->next;
            free(b);
        }
    upool.bytes = 0;
    free(upool.scratch);
    upool.scratch = NULL;
    upool.scratch_cap = 0;
}

sg_update *sg_update_stored(int category, uint64_t seq, int64_t ts_ms, const void *json, size_t len)
{
    sg_update *u = update_alloc(len);
    if (!u) return NULL;
    u->refcnt = 1;
    u->category = category;
    u->seq = seq;
    u->ts_ms = ts_ms;
    u->recv_ns = 0;
    u->json = (char *)(u + 1);
    memcpy(u->json, json, len);
    u->json[len] = 0;
    u->json_len = len;
    return u;
}

/* The update's JSON, into out (room for the worst escaping): its length. */
static size_t encode_update(const sg_draft *d, const char *cat, size_t catlen, uint64_t seq, int64_t ts_ms,
                            char *out)
{
    char *p = out;
#define PUT(lit) (memcpy(p, lit, sizeof(lit) - 1), p += sizeof(lit) - 1)
    PUT("{\"conversation_id\":\"");
    memcpy(p, d->conv_id, d->conv_len);
    p += d->conv_len;
    PUT("\",\"seq\":");
    p += sg_fmt_int((long long)seq, p);
    PUT(",\"category\":\"");
    memcpy(p, cat, catlen);
    p += catlen;
    PUT("\",\"text\":");
    p += sg_json_escape(d->text ? d->text : "", d->text_len, p);
    PUT(",\"metadata\":");
    if (d->metadata) {
        memcpy(p, d->metadata, d->metadata_len);
        p += d->metadata_len;
    } else {
        PUT("{}");
    }
    PUT(",\"timestamp\":\"");
    sg_format_ts(ts_ms, p);
    p += 24;
    *p++ = '"';
    if (d->source) {
        PUT(",\"source\":");
        p += sg_json_escape(d->source, d->source_len, p);
    }
#undef PUT
    *p++ = '}';
    *p = 0;
    return (size_t)(p - out);
}

sg_update *sg_update_new(const sg_draft *d, uint64_t seq, int64_t ts_ms)
{
    /* encoded where the worst escaping (six bytes a byte) fits, then
     * copied into a block of its size */
    const char *cat = sg_category_name(d->category);
    size_t catlen = strlen(cat);
    size_t cap = 160 + d->conv_len + catlen + 6 * d->text_len + d->metadata_len + 6 * d->source_len;
    if (cap > upool.scratch_cap) {
        char *s = realloc(upool.scratch, cap);
        if (!s) return NULL;
        upool.scratch = s;
        upool.scratch_cap = cap;
    }
    size_t len = encode_update(d, cat, catlen, seq, ts_ms, upool.scratch);
    sg_update *u = sg_update_stored(d->category, seq, ts_ms, upool.scratch, len);
    if (u) u->recv_ns = sg_clock_mono_ns();
    return u;
}
