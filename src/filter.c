#include "filter.h"

#include "plugin.h"

#include <stdlib.h>
#include <string.h>

enum op { OP_EQ, OP_NE, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_CONTAINS, OP_EXISTS };
static const char *op_names[] = {"eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists"};

typedef struct cond {
    char *path; /* "text", "source" or a metadata key path "a.b" */
    int in_metadata;
    enum op op;
    json_t *value;
} cond;

struct sg_filter {
    int refcnt;
    uint64_t mask;
    cond *conds;
    int n;
    json_t *spec; /* normalized */
    char *key;
    char *plugin;       /* a plugin subscriber filter, or NULL */
    json_t *plugin_args;
};

static struct sg_plugins *plugins;

void sg_filter_set_plugins(struct sg_plugins *pm)
{
    plugins = pm;
}

static void filter_free(sg_filter *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->conds[i].path);
        json_decref(f->conds[i].value);
    }
    free(f->conds);
    json_decref(f->spec);
    json_decref(f->plugin_args);
    free(f->plugin);
    free(f->key);
    free(f);
}

sg_filter *sg_filter_ref(sg_filter *f)
{
    if (f) f->refcnt++;
    return f;
}

void sg_filter_unref(sg_filter *f)
{
    if (f && --f->refcnt == 0) filter_free(f);
}

static int add_cond(sg_filter *f, const char *path, int in_md, json_t *v, char *err,
                    size_t errlen)
{
    /* v: a plain value (eq) or {"op": value, ...} */
    json_t *ops = v;
    json_t *tmp = NULL;
    if (!json_is_object(v) || json_object_size(v) == 0) {
        tmp = json_pack("{s:O}", "eq", v);
        ops = tmp;
    }
    const char *k;
    json_t *x;
    json_object_foreach(ops, k, x)
    {
        int op = -1;
        for (int i = 0; i < 8; i++)
            if (strcmp(k, op_names[i]) == 0) op = i;
        if (op < 0) {
            snprintf(err, errlen, "unknown operator '%.40s' for '%.80s' (use eq, ne, gt, gte, lt, lte, contains, exists)", k, path);
            json_decref(tmp);
            return -1;
        }
        if ((op >= OP_GT && op <= OP_LTE) && !json_is_number(x)) {
            snprintf(err, errlen, "'%s' on '%.80s' needs a number", k, path);
            json_decref(tmp);
            return -1;
        }
        if (op == OP_CONTAINS && !json_is_string(x)) {
            snprintf(err, errlen, "'contains' on '%.80s' needs a string", path);
            json_decref(tmp);
            return -1;
        }
        if (op == OP_EXISTS && !json_is_boolean(x)) {
            snprintf(err, errlen, "'exists' on '%.80s' needs true or false", path);
            json_decref(tmp);
            return -1;
        }
        if (f->n == 32) {
            snprintf(err, errlen, "at most 32 conditions");
            json_decref(tmp);
            return -1;
        }
        f->conds = realloc(f->conds, sizeof(cond) * (f->n + 1));
        cond *c = &f->conds[f->n++];
        c->path = strdup(path);
        c->in_metadata = in_md;
        c->op = op;
        c->value = json_incref(x);
    }
    json_decref(tmp);
    return 0;
}

sg_filter *sg_filter_parse(json_t *spec, char *err, size_t errlen)
{
    err[0] = 0;
    if (!spec || json_is_null(spec) || (json_is_object(spec) && json_object_size(spec) == 0))
        return NULL;
    if (!json_is_object(spec)) {
        snprintf(err, errlen, "a filter must be a JSON object");
        return NULL;
    }
    sg_filter *f = calloc(1, sizeof(*f));
    f->refcnt = 1;
    f->mask = sg_category_all();
    const char *k;
    json_t *v;
    json_t *name = json_object_get(spec, "name");
    if (name) {
        json_t *args = json_object_get(spec, "args");
        if (!json_is_string(name) || !sg_plugins_has_subscriber_filter(plugins, json_string_value(name))) {
            snprintf(err, errlen, "no plugin provides a subscriber filter named %s%.60s%s",
                     json_is_string(name) ? "'" : "", json_is_string(name) ? json_string_value(name) : "(not a string)",
                     json_is_string(name) ? "'" : "");
            goto fail;
        }
        if (args && !json_is_object(args)) {
            snprintf(err, errlen, "filter args must be an object");
            goto fail;
        }
        if (sg_plugins_subscriber_filter_try(plugins, json_string_value(name), args, err, errlen) < 0)
            goto fail;
        f->plugin = strdup(json_string_value(name));
        f->plugin_args = args ? json_incref(args) : json_object();
    }
    json_object_foreach(spec, k, v)
    {
        if (f->plugin && (strcmp(k, "name") == 0 || strcmp(k, "args") == 0)) continue;
        if (strcmp(k, "categories") == 0) {
            if (!json_is_array(v)) {
                snprintf(err, errlen, "filter categories must be a list of names");
                goto fail;
            }
            f->mask = 0;
            size_t i;
            json_t *c;
            json_array_foreach(v, i, c)
            {
                int ci = json_is_string(c) ? sg_category_index(json_string_value(c),
                                                               json_string_length(c))
                                           : -1;
                if (json_is_string(c) && strcmp(json_string_value(c), "*") == 0) {
                    f->mask = sg_category_all();
                    continue;
                }
                if (ci < 0) {
                    snprintf(err, errlen, "filter names an unknown category");
                    goto fail;
                }
                f->mask |= 1ULL << ci;
            }
        } else if (strcmp(k, "text") == 0 || strcmp(k, "source") == 0) {
            if (add_cond(f, k, 0, v, err, errlen) < 0) goto fail;
        } else if (strcmp(k, "metadata") == 0) {
            if (!json_is_object(v)) {
                snprintf(err, errlen, "filter metadata must be an object of field conditions");
                goto fail;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv)
            {
                if (add_cond(f, mk, 1, mv, err, errlen) < 0) goto fail;
            }
        } else {
            snprintf(err, errlen, "unknown filter key '%.40s' (use categories, text, source, metadata)", k);
            goto fail;
        }
    }
    f->spec = json_deep_copy(spec);
    /* the key is canonical: keys sorted, and categories as the set they
     * name (in the registry's order), so that equal filters share a group
     * whatever order a client listed them in */
    if (json_object_get(f->spec, "categories")) {
        json_t *cats = json_array();
        sg_category_mask_to_json(f->mask, cats);
        json_object_set_new(f->spec, "categories", cats);
    }
    f->key = json_dumps(f->spec, JSON_COMPACT | JSON_SORT_KEYS);
    return f;
fail:
    filter_free(f);
    return NULL;
}

const char *sg_filter_key(const sg_filter *f)
{
    return f ? f->key : "";
}

uint64_t sg_filter_mask(const sg_filter *f)
{
    return f ? f->mask : sg_category_all();
}

json_t *sg_filter_json(const sg_filter *f)
{
    return f ? json_incref(f->spec) : json_object();
}

/* Follow "a.b.c" through nested objects. */
static json_t *lookup(json_t *obj, const char *path)
{
    json_t *v = json_object_get(obj, path); /* a key with dots wins */
    if (v) return v;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *save, *part = strtok_r(buf, ".", &save);
    v = obj;
    while (part && v) {
        v = json_object_get(v, part);
        part = strtok_r(NULL, ".", &save);
    }
    return v;
}

static int compare(const cond *c, json_t *v)
{
    if (c->op == OP_EXISTS) return (v != NULL) == json_is_true(c->value);
    if (!v) return c->op == OP_NE;
    switch (c->op) {
    case OP_EQ: return json_equal(v, c->value);
    case OP_NE: return !json_equal(v, c->value);
    case OP_CONTAINS:
        return json_is_string(v) && strstr(json_string_value(v), json_string_value(c->value));
    default:
        if (!json_is_number(v)) return 0;
        double a = json_number_value(v), b = json_number_value(c->value);
        return c->op == OP_GT ? a > b : c->op == OP_GTE ? a >= b : c->op == OP_LT ? a < b : a <= b;
    }
}

int sg_filter_match(const sg_filter *f, const sg_update *u, json_t **decoded)
{
    if (!f) return 1;
    if (!(f->mask & (1ULL << u->category))) return 0;
    if (f->n == 0 && !f->plugin) return 1;
    if (!*decoded) *decoded = json_loadb(u->json, u->json_len, 0, NULL);
    if (!*decoded) return 0;
    if (f->plugin && !sg_plugins_subscriber_filter(plugins, f->plugin, f->plugin_args, *decoded))
        return 0;
    json_t *md = json_object_get(*decoded, "metadata");
    for (int i = 0; i < f->n; i++) {
        const cond *c = &f->conds[i];
        json_t *v = c->in_metadata ? (md ? lookup(md, c->path) : NULL)
                                   : json_object_get(*decoded, c->path);
        if (!compare(c, v)) return 0;
    }
    return 1;
}
