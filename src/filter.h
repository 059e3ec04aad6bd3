/* Subscriber filters evaluated in C: an optional category list and simple
 * conditions on text, source and metadata fields. A filter is parsed once
 * when a client sets it and shared by every subscriber with the same one.
 *
 *   {"categories": ["tool"],
 *    "text": {"contains": "search"},
 *    "metadata": {"tool": "search_code", "duration_ms": {"gte": 1000}}}
 *
 * A plain value means equality; an object holds operators eq, ne, gt, gte,
 * lt, lte, contains, exists. Every condition must hold.
 *
 * A filter with a "name" runs that plugin subscriber filter instead, with
 * "args": {"name": "slow", "args": {"min_ms": 1000}}. */
#ifndef SG_FILTER_H
#define SG_FILTER_H

#include <jansson.h>
#include <stdint.h>

#include "status.h"

typedef struct sg_filter sg_filter;
struct sg_plugins;

/* The plugin host that named filters run in (NULL: none). */
void sg_filter_set_plugins(struct sg_plugins *pm);

/* Parse a filter object; NULL with a sentence in err when it is invalid.
 * An empty object or null parses to NULL with err[0] == 0 (no filter). */
sg_filter *sg_filter_parse(json_t *spec, char *err, size_t errlen);
sg_filter *sg_filter_ref(sg_filter *f);
void sg_filter_unref(sg_filter *f);

/* A canonical string: equal filters have equal keys. Borrowed. */
const char *sg_filter_key(const sg_filter *f);
/* The categories the filter allows (all when it names none). */
uint64_t sg_filter_mask(const sg_filter *f);
/* The normalized filter as JSON (new reference). */
json_t *sg_filter_json(const sg_filter *f);

/* Whether u passes. *decoded caches u decoded from JSON across calls in
 * one flush; the caller frees it with json_decref. */
int sg_filter_match(const sg_filter *f, const sg_update *u, json_t **decoded);

#endif
