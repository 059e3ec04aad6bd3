/* The status update model (docs/protocol.md, section 1): categories, validation of what a
 * producer sends, and the one-time JSON encoding every client receives. */
#ifndef SG_STATUS_H
#define SG_STATUS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* ---- categories ---- */

/* Register the seven original categories, `summary`, and the config's
 * extras. Returns -1 (with err filled) on a duplicate or too many. */
int sg_categories_init(const sg_config *c, char *err, size_t errlen);
void sg_categories_free(void);
int sg_category_index(const char *name, size_t len); /* -1 when unknown */
const char *sg_category_name(int i);
const char *sg_category_desc(int i);
int sg_category_count(void);
uint64_t sg_category_all(void);

/* Parse a comma-separated list ("tool,error", "*" for all) into a mask.
 * Returns -1 and copies the first unknown name into bad. */
int sg_category_parse_csv(const char *csv, uint64_t *mask, char *bad, size_t badlen);

/* Append the names in `mask` to a JSON array. */
void sg_category_mask_to_json(uint64_t mask, json_t *arr);

int sg_conv_id_valid(const char *s, size_t n);

/* ---- errors reported to producers ---- */

typedef struct sg_error {
    int status;        /* HTTP status */
    const char *code;  /* stable, e.g. "invalid_category" */
    const char *field; /* offending field or NULL */
    int retry_after;   /* seconds, for 429 and 503 (0: the default, 1) */
    char message[200];
} sg_error;

void sg_error_set(sg_error *e, int status, const char *code, const char *field,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* {"error":{"code":…,"message":…,"field":…}}; caller frees. */
json_t *sg_error_json(const sg_error *e);

/* An error code a plugin chose ([a-z0-9_], 1-47 bytes), kept for the
 * process's life so that errors may point at it; at most 256 different
 * ones, then "refused". NULL when the code is not of that form. */
const char *sg_error_code_intern(const char *code);

/* ---- a validated publish, before it has a seq ---- */

/* Strings are decoded UTF-8 without NUL; metadata and args are canonical
 * compact JSON objects (see jtext.h). Everything points into buf or
 * extra, which the draft owns: release it with sg_draft_free. */
typedef struct sg_draft {
    char conv_id[SG_MAX_CONV_ID + 1];
    size_t conv_len;
    int category;
    const char *text;            /* NULL when absent */
    size_t text_len;
    const char *metadata;        /* NULL when absent or null */
    size_t metadata_len;
    const char *source;          /* NULL when absent */
    size_t source_len;
    const char *idempotency_key; /* NUL-terminated, NULL when absent */
    const char *builder;         /* NUL-terminated, NULL when absent */
    const char *args;            /* NULL when absent */
    size_t args_len;
    char *buf, *extra;
} sg_draft;

typedef struct sg_limits {
    size_t max_text;
    size_t max_metadata;
} sg_limits;

/* Parse and validate one publish from its JSON text. Returns 0, or -1
 * with `err` set (status 400: invalid_json / invalid_utf8 for the text,
 * a field's code otherwise) and nothing to free. */
int sg_draft_parse(const char *json, size_t n, const sg_limits *lim, sg_draft *d, sg_error *err);

/* The same for the value at a scanner's cursor, with the strings written
 * to its output (the draft owns nothing; the scanner's output must outlive
 * it). whole: nothing may follow the value. *syntax tells a JSON error
 * (the whole text is unusable) from a field's. */
struct sg_jtext;
int sg_draft_scan(struct sg_jtext *j, int whole, const sg_limits *lim, sg_draft *d, sg_error *err,
                  int *syntax);

/* The same from a jansson object (what plugins emit). */
int sg_draft_from_json(json_t *obj, const sg_limits *lim, sg_draft *d, sg_error *err);

void sg_draft_free(sg_draft *d);

/* Whether a jansson object is a valid publish (0, or -1 with err). */
int sg_draft_check_json(json_t *obj, const sg_limits *lim, sg_error *err);

/* What a builder made: one block (NUL-terminated) holding the metadata,
 * canonical JSON text of mlen bytes, and after it, when has_text, a new
 * text of tlen bytes. */
typedef struct sg_built {
    char *block;
    size_t mlen, tlen;
    int has_text;
} sg_built;

/* Give the draft what a builder made, checked against the limits. The
 * draft takes the block, and frees it on failure. */
int sg_draft_set_built(sg_draft *d, sg_built *b, const sg_limits *lim, sg_error *err);

/* ---- an update as delivered ---- */

typedef struct sg_update {
    int refcnt;
    int category;
    uint64_t seq;
    int64_t ts_ms;     /* receive time, Unix ms */
    uint64_t recv_ns;  /* monotonic receive time, for latency */
    size_t json_len;
    char *json;        /* the encoded update, built once */
} sg_update;

/* Encode the draft with its seq and receive time into a new update
 * (refcount 1). Returns NULL when out of memory. */
sg_update *sg_update_new(const sg_draft *d, uint64_t seq, int64_t ts_ms);

/* An update read back from a store: its category, seq, receive time and
 * the encoded JSON it was delivered as (copied). NULL when out of memory. */
sg_update *sg_update_stored(int category, uint64_t seq, int64_t ts_ms, const void *json, size_t len);

static inline sg_update *sg_update_ref(sg_update *u)
{
    u->refcnt++;
    return u;
}
void sg_update_unref(sg_update *u);
/* Drop a reference a little later, with others (up to 64): for an update
 * that is cold (history letting it go), whose fetch then overlaps the
 * others'. At once in a sanitizer build. */
void sg_update_unref_later(sg_update *u);
/* A freed update's block is kept for the next update of its size (up to
 * 2 KB, at most 4 MB of them per thread; none in a sanitizer build):
 * whether this build pools, the bytes the calling thread's pool holds,
 * and freeing them with what waits to be dropped (at the thread's end). */
int sg_update_pooling(void);
size_t sg_update_pooled(void);
void sg_update_pool_free(void);


/* Format Unix ms as 2026-11-27T09:12:44.123Z into out (>= 25 bytes). */
void sg_format_ts(int64_t ms, char *out);

#endif
