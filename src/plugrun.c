/* statusgw plugin run: a dry run of plugins over sample updates, without a
 * gateway (plugins/README.md). Each plugin runs in a host of its own, so
 * what each one did to each update can be told apart; they are called in
 * priority order, as the gateway calls them. For every update: the
 * builder, each filter (kept, changed with a diff, dropped, refused), then
 * for what survives, each subscriber filter's verdict, each aggregator's
 * observation and each forwarder's match; at the end the aggregators'
 * summaries and each forwarder's body for its first batch; last the cost
 * of every kind of call against the configured limits. */
#include "plugkit.h"

#include "clock.h"
#include "config.h"
#include "log.h"
#include "plugin.h"
#include "sandbox.h"
#include "status.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { K_BUILD, K_FILTER, K_SUBSCRIBER, K_OBSERVE, K_SUMMARIZE, K_MATCH, K_FORMAT, K_KINDS };
static const char *const kind_names[K_KINDS] = {"builder", "filter", "subscriber_filter", "observe",
                                                "summarize", "webhook_match", "webhook_format"};

#define NEAR_LIMIT 0.5   /* a call past this share of a limit is warned about */
#define FORMAT_BATCH 10  /* updates a forwarder's shown body holds */
#define WARM_ROUNDS 5    /* times the warm pass runs the updates through each plugin */

typedef struct samples {
    uint64_t *ns;
    long *instr;
    size_t n, cap;
    size_t peak;
    uint64_t *warm; /* the warm pass's times of whole host calls that called the plugin */
    size_t nwarm, capwarm;
    uint64_t warm_total; /* all the warm pass's host calls, those filter_when let by included */
} samples;

typedef struct kplugin {
    char *path, *name;
    int priority, off;
    sg_plugins *host;
    json_t *provides;
    samples cost[K_KINDS];
    long kept, changed, dropped, refused, errors;
    long failures_seen; /* errors + timeouts + out_of_memory at the last look */
} kplugin;

typedef struct krun {
    sg_config cfg;
    kplugin *p;
    int n;
    int json, all;
    json_t *args;      /* subscriber filter name -> args */
    json_t *no_args;   /* {}: the args of a subscriber filter --args does not name */
    json_t *seqs;      /* conversation -> last seq */
    json_t *emitted;   /* what plugins emitted during the current call(s) */
    json_t *forwarded; /* forwarder name -> matched updates */
    json_t *errors;    /* every plugin error seen, {plugin, error} */
    json_t *lines;     /* the input, for the warm pass */
    long updates, invalid, quiet;
} krun;

/* ---- costs ---- */

static void sample_add(samples *s, const sg_sandbox_profile *pr)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->ns = realloc(s->ns, s->cap * sizeof(*s->ns));
        s->instr = realloc(s->instr, s->cap * sizeof(*s->instr));
    }
    s->ns[s->n] = pr->ns;
    s->instr[s->n++] = pr->instructions;
    if (pr->peak_memory > s->peak) s->peak = pr->peak_memory;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

/* The value at quantile q of the sorted samples. */
#define QUANTILE(arr, n, q) ((arr)[(size_t)((q) * (double)((n)-1) + 0.5)])

/* A plugin's failures since the last look, as {plugin, error} steps, the
 * error naming the plugin's file as the run was given it. */
static void plugin_failures(krun *r, kplugin *p, json_t *steps)
{
    const char *e;
    long f = sg_plugins_failures(p->host, &e);
    if (f <= p->failures_seen) return;
    char where[1200];
    sg_plugin_name_file(p->path, e ? e : "failed", where, sizeof(where));
    json_t *step = json_pack("{s:s, s:s, s:s}", "plugin", p->name, "action", "error", "error", where);
    json_array_append(r->errors, step);
    if (steps) json_array_append(steps, step);
    json_decref(step);
    p->errors += f - p->failures_seen;
    p->failures_seen = f;
}

/* The first pass profiles each host call to one plugin: the instructions
 * and memory of its Lua calls, and their time (first_pass_median_us; the
 * times reported come from the warm pass below). */
static void probe_start(sg_sandbox_profile *pr)
{
    memset(pr, 0, sizeof(*pr));
    sg_sandbox_set_profile(pr);
}

/* Record the call and what failed in it; 1 when the plugin was called. */
static int probe_end(krun *r, sg_sandbox_profile *pr, kplugin *p, int kind, json_t *steps)
{
    sg_sandbox_set_profile(NULL);
    if (pr->calls) sample_add(&p->cost[kind], pr);
    plugin_failures(r, p, steps);
    return pr->calls > 0;
}

/* ---- loading ---- */

static int on_emit(void *arg, json_t *u, const char *plugin, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    krun *r = arg;
    json_array_append_new(r->emitted, json_pack("{s:s, s:O}", "plugin", plugin, "update", u));
    return 0;
}

static int by_priority(const void *a, const void *b)
{
    const kplugin *x = a, *y = b;
    if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* plugins.<name>.enabled = true, unless the config says otherwise: a file
 * named on the command line is run even when it waits to be enabled. */
static void enable_named(sg_config *cfg, const char *name)
{
    if (!cfg->plugins) cfg->plugins = json_object();
    json_t *sec = json_object_get(cfg->plugins, name);
    if (!sec) json_object_set_new(cfg->plugins, name, sec = json_object());
    if (json_is_object(sec) && !json_object_get(sec, "enabled"))
        json_object_set_new(sec, "enabled", json_true());
}

static int load_one(krun *r, const char *path, int named)
{
    char err[600];
    json_t *d = sg_plugin_check(path, &r->cfg, err, sizeof(err));
    if (!d) {
        fprintf(stderr, "statusgw plugin run: %s: %s\n", path, err);
        return -1;
    }
    const char *name = json_string_value(json_object_get(d, "name"));
    if (named) enable_named(&r->cfg, name);
    kplugin *p = &r->p[r->n];
    memset(p, 0, sizeof(*p));
    p->path = strdup(path);
    p->name = strdup(name);
    p->priority = (int)json_integer_value(json_object_get(d, "priority"));
    p->provides = json_incref(json_object_get(d, "provides"));
    json_decref(d);
    p->host = sg_plugins_new(path, &r->cfg, NULL, on_emit, r);
    r->n++; /* from here free_run frees it, whatever follows */
    json_t *rep = sg_plugins_reload(p->host);
    json_t *failed = json_array_get(json_object_get(rep, "failed"), 0);
    if (failed) {
        fprintf(stderr, "statusgw plugin run: %s\n", json_string_value(json_object_get(failed, "error")));
        json_decref(rep);
        return -1;
    }
    json_decref(rep);
    json_t *a = sg_plugins_admin(p->host);
    const char *state = json_string_value(json_object_get(json_array_get(json_object_get(a, "plugins"), 0), "state"));
    p->off = state && strcmp(state, "off") == 0;
    json_decref(a);
    return 0;
}

/* Every *.lua of a directory, or the one file. 0, or -1 (said why). */
static int load_plugins(krun *r, const char *target)
{
    struct stat st;
    if (stat(target, &st) < 0) {
        fprintf(stderr, "statusgw plugin run: %s: no such file or directory\n", target);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        r->p = calloc(1, sizeof(kplugin));
        return load_one(r, target, 1);
    }
    char **files = NULL;
    int nf = sg_plugin_files(target, &files);
    if (nf < 0) nf = 0;
    r->p = calloc(nf + 1, sizeof(kplugin));
    int rc = 0;
    for (int i = 0; i < nf; i++) {
        if (rc == 0 && load_one(r, files[i], 0) < 0) rc = -1;
        free(files[i]);
    }
    free(files);
    if (rc == 0 && r->n == 0) {
        fprintf(stderr, "statusgw plugin run: no *.lua plugin in %s\n", target);
        rc = -1;
    }
    qsort(r->p, r->n, sizeof(kplugin), by_priority);
    return rc;
}

static void free_run(krun *r)
{
    for (int i = 0; i < r->n; i++) {
        kplugin *p = &r->p[i];
        sg_plugins_free(p->host);
        json_decref(p->provides);
        for (int k = 0; k < K_KINDS; k++) {
            free(p->cost[k].ns);
            free(p->cost[k].instr);
            free(p->cost[k].warm);
        }
        free(p->path);
        free(p->name);
    }
    free(r->p);
    json_decref(r->args);
    json_decref(r->no_args);
    json_decref(r->seqs);
    json_decref(r->emitted);
    json_decref(r->forwarded);
    json_decref(r->errors);
    json_decref(r->lines);
    sg_config_free(&r->cfg);
}

/* ---- one update ---- */

/* The draft as delivered (seq 0), decoded: what a diff compares. */
static json_t *draft_json(const sg_draft *d)
{
    sg_update *u = sg_update_new(d, 0, 0);
    if (!u) return NULL;
    json_t *j = json_loadb(u->json, u->json_len, 0, NULL);
    sg_update_unref(u);
    return j;
}

static void diff_field(json_t *out, const char *field, json_t *a, json_t *b)
{
    if (json_equal(a, b) || (!a && !b)) return;
    json_array_append_new(out, json_pack("{s:s, s:O*, s:O*}", "field", field, "before", a, "after", b));
}

/* What changed between two drafts, field by field and metadata key by key. */
static json_t *diff(json_t *before, json_t *after)
{
    json_t *out = json_array();
    static const char *const fields[] = {"conversation_id", "category", "text", "source"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        diff_field(out, fields[i], json_object_get(before, fields[i]), json_object_get(after, fields[i]));
    json_t *mb = json_object_get(before, "metadata"), *ma = json_object_get(after, "metadata");
    if (json_is_object(mb) && json_is_object(ma)) {
        const char *k;
        json_t *v;
        char f[300];
        json_object_foreach(mb, k, v) {
            snprintf(f, sizeof(f), "metadata.%s", k);
            diff_field(out, f, v, json_object_get(ma, k));
        }
        json_object_foreach(ma, k, v) {
            snprintf(f, sizeof(f), "metadata.%s", k);
            if (!json_object_get(mb, k)) diff_field(out, f, NULL, v);
        }
    } else {
        diff_field(out, "metadata", mb, ma);
    }
    return out;
}

static kplugin *builder_owner(krun *r, const char *name)
{
    for (int i = 0; i < r->n; i++) {
        json_t *b = json_object_get(r->p[i].provides, "builders");
        size_t j;
        json_t *v;
        json_array_foreach(b, j, v) if (strcmp(json_string_value(v), name) == 0 && !r->p[i].off) return &r->p[i];
    }
    return NULL;
}

/* The draft's builder. 0, or -1 when the gateway would refuse the publish. */
static int run_builder(krun *r, sg_draft *d, json_t *steps)
{
    kplugin *p = builder_owner(r, d->builder);
    if (!p) {
        json_array_append_new(steps, json_pack("{s:s, s:i, s:s, s:s+}", "action", "refused", "status", 400,
                                               "code", "unknown_builder", "message", "no plugin provides builder ",
                                               d->builder));
        return -1;
    }
    json_t *before = draft_json(d);
    sg_sandbox_profile pr;
    probe_start(&pr);
    sg_built b;
    int rc = sg_plugins_build(p->host, d, &b, NULL);
    probe_end(r, &pr, p, K_BUILD, steps);
    sg_limits lim = {r->cfg.max_text, r->cfg.max_metadata};
    sg_error err;
    if (rc == SG_BUILD_OK && sg_draft_set_built(d, &b, &lim, &err) < 0) {
        json_array_append_new(steps, json_pack("{s:s, s:s, s:i, s:s, s:s}", "plugin", p->name, "action", "refused",
                                               "status", 400, "code", err.code, "message", err.message));
        json_decref(before);
        return -1;
    }
    d->builder = NULL;
    json_t *after = draft_json(d);
    json_array_append_new(steps, json_pack("{s:s, s:s, s:o}", "plugin", p->name, "action",
                                           rc == SG_BUILD_OK ? "built" : "builder_failed", "diff",
                                           diff(before, after)));
    json_decref(before);
    json_decref(after);
    return 0;
}

/* One plugin's filter over the draft: 1 kept, 0 dropped or refused. */
static int run_filter(krun *r, kplugin *p, sg_draft **dp, json_t *steps)
{
    json_t *before = draft_json(*dp);
    char keep = 1;
    const char *by = NULL;
    sg_error refusal = {0};
    sg_sandbox_profile pr;
    probe_start(&pr);
    sg_plugins_filter_many(p->host, dp, &keep, &by, &refusal, 1, NULL, NULL);
    int called = probe_end(r, &pr, p, K_FILTER, steps);
    json_t *step;
    if (!keep && refusal.status) {
        p->refused++;
        step = json_pack("{s:s, s:s, s:i, s:s, s:s, s:i}", "plugin", p->name, "action", "refused", "status",
                         refusal.status, "code", refusal.code, "message", refusal.message, "retry_after",
                         refusal.retry_after);
    } else if (!keep) {
        p->dropped++;
        step = json_pack("{s:s, s:s}", "plugin", p->name, "action", "dropped");
    } else {
        json_t *after = draft_json(*dp);
        json_t *d = diff(before, after);
        json_decref(after);
        int changed = json_array_size(d) > 0;
        p->changed += changed;
        p->kept += !changed;
        step = json_pack("{s:s, s:s, s:o}", "plugin", p->name, "action",
                         changed ? "changed" : called ? "kept" : "skipped", "diff", d);
    }
    json_decref(before);
    json_array_append_new(steps, step);
    return keep;
}

/* What happens to a published update: subscriber filters, aggregators,
 * forwarders. */
static json_t *deliver(krun *r, const sg_draft *d, json_t *steps)
{
    json_t *seqj = json_object_get(r->seqs, d->conv_id);
    uint64_t seq = (uint64_t)json_integer_value(seqj) + 1;
    json_object_set_new(r->seqs, d->conv_id, json_integer((json_int_t)seq));
    sg_update *u = sg_update_new(d, seq, sg_clock_running_wall_ms());
    json_t *uj = json_loadb(u->json, u->json_len, 0, NULL);
    json_t *subs = json_object(), *fwd = json_array();
    for (int i = 0; i < r->n; i++) {
        kplugin *p = &r->p[i];
        if (p->off) continue;
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(p->provides, "subscriber_filters"), j, v) {
            const char *name = json_string_value(v);
            json_t *args = json_object_get(r->args, name);
            sg_sandbox_profile pr;
            probe_start(&pr);
            int ok = sg_plugins_subscriber_filter(p->host, name, args ? args : r->no_args, uj);
            probe_end(r, &pr, p, K_SUBSCRIBER, steps);
            json_object_set_new(subs, name, json_string(ok ? "delivered" : "withheld"));
        }
        if (!json_is_null(json_object_get(p->provides, "aggregator"))) {
            sg_sandbox_profile pr;
            probe_start(&pr);
            sg_plugins_observe(p->host, d->conv_id, u, NULL);
            probe_end(r, &pr, p, K_OBSERVE, steps);
        }
        json_array_foreach(json_object_get(p->provides, "webhooks"), j, v) {
            const char *name = json_string_value(v);
            sg_sandbox_profile pr;
            probe_start(&pr);
            int m = sg_plugins_webhook_match(p->host, name, uj);
            probe_end(r, &pr, p, K_MATCH, steps);
            if (!m) continue;
            json_array_append_new(fwd, json_string(name));
            json_t *list = json_object_get(r->forwarded, name);
            if (!list) json_object_set_new(r->forwarded, name, list = json_array());
            json_array_append(list, uj);
        }
    }
    sg_update_unref(u);
    json_t *out = json_pack("{s:I, s:o, s:o, s:o}", "seq", (json_int_t)seq, "subscriber_filters", subs,
                            "forwarders", fwd, "update", uj);
    return out;
}

/* One input line through every plugin: its report. */
static json_t *run_update(krun *r, const char *line, size_t len, long index)
{
    json_t *rep = json_pack("{s:I, s:o}", "index", (json_int_t)index, "steps", json_array());
    json_t *steps = json_object_get(rep, "steps");
    sg_limits lim = {r->cfg.max_text, r->cfg.max_metadata};
    sg_draft d;
    sg_error err;
    if (sg_draft_parse(line, len, &lim, &d, &err) < 0) {
        r->invalid++;
        json_object_set_new(rep, "invalid", json_pack("{s:i, s:s, s:s}", "status", err.status, "code", err.code,
                                                      "message", err.message));
        return rep;
    }
    json_object_set_new(rep, "input", draft_json(&d));
    int live = !d.builder || run_builder(r, &d, steps) == 0;
    sg_draft *dp = &d;
    for (int i = 0; live && i < r->n; i++) {
        kplugin *p = &r->p[i];
        if (!p->off && json_is_true(json_object_get(p->provides, "filter"))) live = run_filter(r, p, &dp, steps);
    }
    if (live) json_object_set_new(rep, "delivered", deliver(r, &d, steps));
    sg_draft_free(&d);
    if (json_array_size(r->emitted)) {
        json_object_set(rep, "emitted", r->emitted);
        json_decref(r->emitted);
        r->emitted = json_array();
    }
    return rep;
}

/* ---- the warm pass ----
 *
 * The first pass makes a report: between two calls it encodes and diffs
 * updates, which leaves each call's caches cold. The gateway runs its
 * plugins hot, so the times reported come from a second pass: each plugin
 * again in a fresh host of its own, the updates through it WARM_ROUNDS
 * times with nothing else in between, each whole host call timed (the
 * update made into Lua values, the call, its result read back). Every
 * update reaches every plugin here, whatever an earlier one did to it. */

static int discard_emit(void *arg, json_t *u, const char *plugin, char *err, size_t errlen)
{
    return 0;
}

static void warm_add(samples *s, uint64_t ns)
{
    if (s->nwarm == s->capwarm) {
        s->capwarm = s->capwarm ? s->capwarm * 2 : 256;
        s->warm = realloc(s->warm, s->capwarm * sizeof(*s->warm));
    }
    s->warm[s->nwarm++] = ns;
}

#define TIMED(p, q, kind, call)                                          \
    do {                                                                 \
        long c0_ = sg_plugins_calls(q);                                  \
        uint64_t t0_ = sg_clock_running_ns();                            \
        call;                                                            \
        uint64_t ns_ = sg_clock_running_ns() - t0_;                      \
        (p)->cost[kind].warm_total += ns_;                               \
        if (sg_plugins_calls(q) != c0_) warm_add(&(p)->cost[kind], ns_); \
    } while (0)

/* One update through one plugin's fresh host, every call timed. */
static void warm_one(krun *r, kplugin *p, sg_plugins *q, sg_draft *d, json_t *uj, sg_update *u)
{
    const json_t *prov = p->provides;
    if (json_is_true(json_object_get(prov, "filter"))) {
        char keep = 1;
        const char *by = NULL;
        sg_draft *dp = d;
        TIMED(p, q, K_FILTER, sg_plugins_filter_many(q, &dp, &keep, &by, NULL, 1, NULL, NULL));
    }
    size_t j;
    json_t *v;
    json_array_foreach(json_object_get(prov, "subscriber_filters"), j, v) {
        json_t *args = json_object_get(r->args, json_string_value(v));
        TIMED(p, q, K_SUBSCRIBER, sg_plugins_subscriber_filter(q, json_string_value(v), args ? args : r->no_args, uj));
    }
    if (!json_is_null(json_object_get(prov, "aggregator"))) TIMED(p, q, K_OBSERVE, sg_plugins_observe(q, d->conv_id, u, NULL));
    json_array_foreach(json_object_get(prov, "webhooks"), j, v)
        TIMED(p, q, K_MATCH, sg_plugins_webhook_match(q, json_string_value(v), uj));
}

static void warm_plugin(krun *r, kplugin *p)
{
    sg_plugins *q = sg_plugins_new(p->path, &r->cfg, NULL, discard_emit, NULL);
    json_decref(sg_plugins_reload(q));
    sg_limits lim = {r->cfg.max_text, r->cfg.max_metadata};
    for (int round = 0; round < WARM_ROUNDS; round++) {
        size_t i;
        json_t *line;
        json_array_foreach(r->lines, i, line) {
            sg_draft d;
            sg_error err;
            if (sg_draft_parse(json_string_value(line), json_string_length(line), &lim, &d, &err) < 0) continue;
            d.builder = NULL; /* builders are timed in the first pass only */
            sg_update *u = sg_update_new(&d, i + 1, sg_clock_running_wall_ms());
            json_t *uj = u ? json_loadb(u->json, u->json_len, 0, NULL) : NULL;
            if (uj) warm_one(r, p, q, &d, uj, u);
            json_decref(uj);
            if (u) sg_update_unref(u);
            sg_draft_free(&d);
        }
    }
    sg_plugins_free(q);
}

static void warm_pass(krun *r)
{
    for (int i = 0; i < r->n; i++)
        if (!r->p[i].off) warm_plugin(r, &r->p[i]);
}

/* ---- the end of the run ---- */

static json_t *summaries(krun *r)
{
    for (int i = 0; i < r->n; i++) {
        kplugin *p = &r->p[i];
        if (p->off || json_is_null(json_object_get(p->provides, "aggregator"))) continue;
        sg_sandbox_profile pr;
        probe_start(&pr);
        sg_plugins_summarize(p->host);
        probe_end(r, &pr, p, K_SUMMARIZE, NULL);
    }
    json_t *out = r->emitted;
    r->emitted = json_array();
    return out;
}

/* Each forwarder's body for the first batch of what it matched. */
static json_t *bodies(krun *r)
{
    json_t *out = json_array();
    for (int i = 0; i < r->n; i++) {
        kplugin *p = &r->p[i];
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(p->provides, "webhooks"), j, v) {
            const char *name = json_string_value(v);
            json_t *all = json_object_get(r->forwarded, name);
            size_t matched = json_array_size(all);
            json_t *f = json_pack("{s:s, s:s, s:I}", "forwarder", name, "plugin", p->name, "matched",
                                  (json_int_t)matched);
            json_array_append_new(out, f);
            if (!matched || p->off) continue;
            json_t *batch = json_array();
            for (size_t k = 0; k < matched && k < FORMAT_BATCH; k++)
                json_array_append(batch, json_array_get(all, k));
            char *body = NULL;
            json_t *headers = NULL;
            sg_sandbox_profile pr;
            probe_start(&pr);
            int rc = sg_plugins_webhook_format(p->host, name, batch, &body, &headers);
            probe_end(r, &pr, p, K_FORMAT, NULL);
            json_object_set_new(f, "batch", json_integer((json_int_t)json_array_size(batch)));
            json_decref(batch);
            if (rc == 0) {
                json_t *parsed = json_loads(body, 0, NULL);
                json_object_set_new(f, "body", parsed ? parsed : json_string(body));
                json_object_set_new(f, "headers", headers ? headers : json_object());
            } else {
                json_object_set_new(f, "error", json_string("format failed (see errors)"));
                json_decref(headers);
            }
            free(body);
        }
    }
    return out;
}

/* A warning when the slowest call, the most instructions or the state's
 * size came past NEAR_LIMIT of a limit. */
static void near_limit(krun *r, kplugin *p, int k, uint64_t slowest_ns, long imax, json_t *warnings)
{
    samples *s = &p->cost[k];
    char w[300] = "";
    if (slowest_ns / 1e3 > NEAR_LIMIT * r->cfg.plugin_timeout_ms * 1000.0)
        snprintf(w, sizeof(w), "%s %s: a call took %.1f ms of plugin_timeout_ms %d", p->name, kind_names[k],
                 slowest_ns / 1e6, r->cfg.plugin_timeout_ms);
    else if (imax > NEAR_LIMIT * r->cfg.plugin_instructions)
        snprintf(w, sizeof(w), "%s %s: a call ran %ld of plugin_max_instructions %d", p->name, kind_names[k], imax,
                 r->cfg.plugin_instructions);
    else if (s->peak > NEAR_LIMIT * r->cfg.plugin_memory)
        snprintf(w, sizeof(w), "%s %s: the state reached %zu of plugin_memory_bytes %zu", p->name, kind_names[k],
                 s->peak, r->cfg.plugin_memory);
    if (w[0]) json_array_append_new(warnings, json_string(w));
}

/* One kind of call's cost: times from the warm pass when it made that
 * call (else from the first), instructions and memory from the first. */
static json_t *cost_entry(krun *r, kplugin *p, int k, json_t *warnings)
{
    samples *s = &p->cost[k];
    qsort(s->ns, s->n, sizeof(*s->ns), cmp_u64);
    qsort(s->instr, s->n, sizeof(*s->instr), cmp_long);
    uint64_t *t = s->nwarm ? s->warm : s->ns;
    size_t nt = s->nwarm ? s->nwarm : s->n;
    qsort(t, nt, sizeof(*t), cmp_u64);
    uint64_t total = 0;
    for (size_t j = 0; j < nt; j++) total += t[j];
    double mean = total / 1e3 / nt;
    long imax = s->instr[s->n - 1];
    json_t *c = json_pack("{s:s, s:s, s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:b}", "plugin", p->name, "call",
                          kind_names[k], "calls", (json_int_t)s->n, "median_us", QUANTILE(t, nt, 0.5) / 1e3, "p99_us",
                          QUANTILE(t, nt, 0.99) / 1e3, "mean_us", mean, "first_pass_median_us",
                          QUANTILE(s->ns, s->n, 0.5) / 1e3, "median_instructions",
                          (json_int_t)QUANTILE(s->instr, s->n, 0.5), "p99_instructions",
                          (json_int_t)QUANTILE(s->instr, s->n, 0.99), "max_instructions", (json_int_t)imax,
                          "peak_memory_bytes", (json_int_t)s->peak, "warm", s->nwarm > 0);
    /* the time one pass over the updates spent in this kind of call */
    json_object_set_new(c, "total_us", json_real(s->nwarm ? s->warm_total / 1e3 / WARM_ROUNDS : total / 1e3));
    uint64_t slowest = s->ns[s->n - 1] > t[nt - 1] ? s->ns[s->n - 1] : t[nt - 1];
    near_limit(r, p, k, slowest, imax, warnings);
    return c;
}

/* Each plugin's cost per kind of call, with warnings near a limit. */
static json_t *costs(krun *r, json_t *warnings)
{
    json_t *out = json_array();
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < K_KINDS; k++)
            if (r->p[i].cost[k].n) json_array_append_new(out, cost_entry(r, &r->p[i], k, warnings));
    return out;
}

/* ---- what it says ---- */

/* v as compact JSON, cut to max characters. */
static void put_value(FILE *f, json_t *v, int max)
{
    if (!v) {
        fputs("(none)", f);
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if ((int)strlen(s) > max) fprintf(f, "%.*s…", max, s);
    else fputs(s, f);
    free(s);
}

static void put_step(FILE *f, json_t *st)
{
    const char *plugin = json_string_value(json_object_get(st, "plugin"));
    const char *action = json_string_value(json_object_get(st, "action"));
    fprintf(f, "  %-18s %-9s", plugin ? plugin : "(gateway)", action);
    if (strcmp(action, "refused") == 0) {
        fprintf(f, " %d %s: %s", (int)json_integer_value(json_object_get(st, "status")),
                json_string_value(json_object_get(st, "code")), json_string_value(json_object_get(st, "message")));
        json_int_t ra = json_integer_value(json_object_get(st, "retry_after"));
        if (ra) fprintf(f, " (retry after %lld s)", (long long)ra);
    } else if (strcmp(action, "error") == 0) {
        fprintf(f, " %s", json_string_value(json_object_get(st, "error")));
    }
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(st, "diff"), i, c) {
        fprintf(f, "%s%s: ", i ? "; " : " ", json_string_value(json_object_get(c, "field")));
        put_value(f, json_object_get(c, "before"), 60);
        fputs(" → ", f);
        put_value(f, json_object_get(c, "after"), 60);
    }
    fputc('\n', f);
}

/* Whether an update's report says more than "every plugin kept it". */
static int notable(json_t *rep)
{
    if (!json_object_get(rep, "delivered") || json_object_get(rep, "emitted")) return 1;
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(rep, "steps"), i, st) {
        const char *a = json_string_value(json_object_get(st, "action"));
        if (strcmp(a, "kept") != 0 && strcmp(a, "skipped") != 0) return 1;
    }
    json_t *subs = json_object_get(json_object_get(rep, "delivered"), "subscriber_filters");
    const char *k;
    json_t *v;
    json_object_foreach(subs, k, v) if (strcmp(json_string_value(v), "withheld") == 0) return 1;
    return 0; /* a forwarder's match alone is in the forwarders' counts */
}

static void put_update(krun *r, FILE *f, json_t *rep)
{
    if (!r->all && !notable(rep)) {
        r->quiet++;
        return;
    }
    json_t *in = json_object_get(rep, "input"), *bad = json_object_get(rep, "invalid");
    fprintf(f, "#%lld ", (long long)json_integer_value(json_object_get(rep, "index")));
    if (bad) {
        fprintf(f, "not a valid update: %d %s: %s\n", (int)json_integer_value(json_object_get(bad, "status")),
                json_string_value(json_object_get(bad, "code")), json_string_value(json_object_get(bad, "message")));
        return;
    }
    fprintf(f, "%s %s ", json_string_value(json_object_get(in, "conversation_id")),
            json_string_value(json_object_get(in, "category")));
    put_value(f, json_object_get(in, "text"), 70);
    fputc('\n', f);
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(rep, "steps"), i, st) put_step(f, st);
    json_t *del = json_object_get(rep, "delivered");
    if (del) {
        fprintf(f, "  → delivered, seq %lld", (long long)json_integer_value(json_object_get(del, "seq")));
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(del, "subscriber_filters"), k, v)
            fprintf(f, " · %s: %s", k, json_string_value(v));
        json_array_foreach(json_object_get(del, "forwarders"), i, v)
            fprintf(f, "%s%s", i ? ", " : " · forwarded by ", json_string_value(v));
        fputc('\n', f);
    }
    json_array_foreach(json_object_get(rep, "emitted"), i, st) {
        fprintf(f, "  + %s emitted ", json_string_value(json_object_get(st, "plugin")));
        put_value(f, json_object_get(st, "update"), 110);
        fputc('\n', f);
    }
}

/* Instructions as counted: in steps of SG_PROFILE_EVERY. */
static void instr_text(char *out, size_t n, json_int_t v)
{
    if (v < SG_PROFILE_EVERY) snprintf(out, n, "<%d", SG_PROFILE_EVERY);
    else snprintf(out, n, "%lld", (long long)v);
}

static void put_costs(krun *r, FILE *f, json_t *cs)
{
    fprintf(f, "\nCost per call (limits: %d instructions, %d ms, %zu bytes of memory per plugin):\n",
            r->cfg.plugin_instructions, r->cfg.plugin_timeout_ms, r->cfg.plugin_memory);
    fprintf(f, "  %-18s %-17s %7s %10s %10s %12s %12s %12s\n", "plugin", "call", "calls", "median µs", "p99 µs",
            "median instr", "p99 instr", "peak memory");
    size_t i;
    json_t *c;
    json_array_foreach(cs, i, c) {
        char i50[24], i99[24];
        instr_text(i50, sizeof(i50), json_integer_value(json_object_get(c, "median_instructions")));
        instr_text(i99, sizeof(i99), json_integer_value(json_object_get(c, "p99_instructions")));
        fprintf(f, "  %-18s %-17s %7lld %10.1f %10.1f %12s %12s %12lld\n",
                json_string_value(json_object_get(c, "plugin")), json_string_value(json_object_get(c, "call")),
                (long long)json_integer_value(json_object_get(c, "calls")),
                json_real_value(json_object_get(c, "median_us")), json_real_value(json_object_get(c, "p99_us")), i50,
                i99, (long long)json_integer_value(json_object_get(c, "peak_memory_bytes")));
    }
    fprintf(f, "  (times: whole host calls in a second, warm pass of each plugin over the updates, %d times;\n"
               "   instructions, counted in steps of %d, and memory, the plugin's whole Lua state: the first pass)\n",
            WARM_ROUNDS, SG_PROFILE_EVERY);
}

static void put_end(krun *r, FILE *f, json_t *sums, json_t *fwd, json_t *cs, json_t *warnings)
{
    if (r->quiet) fprintf(f, "(%ld updates every plugin kept as they were: --all shows them)\n", r->quiet);
    size_t i;
    json_t *v;
    if (json_array_size(sums)) fprintf(f, "\nSummaries at the end of the run:\n");
    json_array_foreach(sums, i, v) {
        fprintf(f, "  %s: ", json_string_value(json_object_get(v, "plugin")));
        put_value(f, json_object_get(v, "update"), 140);
        fputc('\n', f);
    }
    json_array_foreach(fwd, i, v) {
        fprintf(f, "\nForwarder %s (%s): %lld of %ld updates matched", json_string_value(json_object_get(v, "forwarder")),
                json_string_value(json_object_get(v, "plugin")), (long long)json_integer_value(json_object_get(v, "matched")),
                r->updates);
        json_t *body = json_object_get(v, "body");
        if (!body) {
            fputc('\n', f);
            continue;
        }
        fprintf(f, "; the body of a batch of the first %lld:\n",
                (long long)json_integer_value(json_object_get(v, "batch")));
        char *s = json_dumps(body, JSON_INDENT(2) | JSON_ENCODE_ANY);
        fprintf(f, "%s\n", s);
        free(s);
        if (json_object_size(json_object_get(v, "headers"))) {
            fputs("headers: ", f);
            put_value(f, json_object_get(v, "headers"), 200);
            fputc('\n', f);
        }
    }
    put_costs(r, f, cs);
    json_array_foreach(warnings, i, v) fprintf(f, "warning: %s\n", json_string_value(v));
    json_array_foreach(r->errors, i, v)
        fprintf(f, "error: %s: %s\n", json_string_value(json_object_get(v, "plugin")),
                json_string_value(json_object_get(v, "error")));
}

/* ---- the command ---- */

static void usage_run(FILE *f)
{
    fprintf(f, "usage: statusgw plugin run FILE.lua|DIR [--config FILE] [--updates FILE.ndjson|-]\n"
               "                          [--args NAME=JSON]... [--all] [--json]\n"
               "A dry run, without a gateway: each update of the sample (one JSON publish a line;\n"
               "default: samples/updates.ndjson beside the plugins) goes through the plugins in\n"
               "priority order. For each, what each plugin did (kept, changed with a diff,\n"
               "dropped, refused), what each subscriber filter decides (with --args NAME=JSON as\n"
               "its args), what each aggregator summarizes and each forwarder's body; then the\n"
               "cost per call against the configured limits. A file named on its own runs even\n"
               "when it waits to be enabled. --all shows every update, --json all of it as JSON.\n"
               "Exit status: 0, 1 when a plugin call failed, 2 a usage, config or load error.\n");
}

/* The sample beside the plugins: DIR/samples, FILE's folder's samples or
 * its parent's (plugins/contrib/x.lua), then the config's plugins_dir. */
static char *default_updates(const char *target, const sg_config *cfg)
{
    struct stat st;
    char dir[4096], cand[4200];
    snprintf(dir, sizeof(dir), "%s", target);
    if (stat(target, &st) == 0 && !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof(dir), ".");
    }
    const char *tries[] = {"%s/samples/updates.ndjson", "%s/../samples/updates.ndjson"};
    for (int i = 0; i < 2; i++) {
        snprintf(cand, sizeof(cand), tries[i], dir);
        if (stat(cand, &st) == 0) return strdup(cand);
    }
    snprintf(cand, sizeof(cand), "%s/samples/updates.ndjson", cfg->plugins_dir ? cfg->plugins_dir : "plugins");
    return stat(cand, &st) == 0 ? strdup(cand) : NULL;
}

typedef struct run_args {
    const char *target, *config, *updates;
    int json, all;
    json_t *args;
} run_args;

static int parse_run(int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof(*a));
    a->args = json_object();
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            usage_run(stdout);
            return 0;
        } else if ((strcmp(s, "--config") == 0 || strcmp(s, "--updates") == 0 || strcmp(s, "--args") == 0) &&
                   i + 1 < argc) {
            const char *v = argv[++i];
            if (s[2] == 'c') a->config = v;
            else if (s[2] == 'u') a->updates = v;
            else {
                const char *eq = strchr(v, '=');
                json_t *j = eq ? json_loads(eq + 1, JSON_DECODE_ANY, NULL) : NULL;
                if (!j) {
                    fprintf(stderr, "statusgw plugin run: --args wants NAME=JSON, as in --args slow='{\"min_ms\":1000}'\n");
                    return 2;
                }
                json_object_setn_new(a->args, v, (size_t)(eq - v), j);
            }
        } else if (strcmp(s, "--json") == 0) {
            a->json = 1;
        } else if (strcmp(s, "--all") == 0) {
            a->all = 1;
        } else if (s[0] == '-' && s[1]) {
            fprintf(stderr, "statusgw plugin run: unknown option '%s' (statusgw plugin run --help)\n", s);
            return 2;
        } else if (!a->target) {
            a->target = s;
        } else {
            fprintf(stderr, "statusgw plugin run: one FILE.lua or DIR, not also '%s'\n", s);
            return 2;
        }
    }
    if (!a->target) {
        usage_run(stderr);
        return 2;
    }
    return -1;
}

static FILE *open_updates(krun *r, const run_args *a, char **path)
{
    *path = a->updates ? strdup(a->updates) : default_updates(a->target, &r->cfg);
    if (!*path) {
        fprintf(stderr, "statusgw plugin run: no samples/updates.ndjson beside %s: pass --updates FILE.ndjson, "
                        "or --updates - to read standard input\n", a->target);
        return NULL;
    }
    FILE *in = strcmp(*path, "-") == 0 ? stdin : fopen(*path, "r");
    if (!in) fprintf(stderr, "statusgw plugin run: cannot read %s\n", *path);
    return in;
}

/* Every line of in through the plugins; the reports (kept for --json). */
static json_t *run_all(krun *r, FILE *in, FILE *out)
{
    json_t *reports = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (!n) continue;
        json_array_append_new(r->lines, json_stringn(line, (size_t)n));
        json_t *rep = run_update(r, line, (size_t)n, ++r->updates);
        if (r->json) json_array_append(reports, rep);
        else put_update(r, out, rep);
        json_decref(rep);
    }
    free(line);
    return reports;
}

static json_t *plugin_list(krun *r)
{
    json_t *out = json_array();
    for (int i = 0; i < r->n; i++) {
        kplugin *p = &r->p[i];
        json_array_append_new(out, json_pack("{s:s, s:s, s:i, s:b, s:O, s:{s:i, s:i, s:i, s:i, s:i}}", "name",
                                             p->name, "file", p->path, "priority", p->priority, "enabled", !p->off,
                                             "provides", p->provides, "tally", "kept", (int)p->kept, "changed",
                                             (int)p->changed, "dropped", (int)p->dropped, "refused",
                                             (int)p->refused, "errors", (int)p->errors));
    }
    return out;
}

int sg_plugin_run(int argc, char **argv)
{
    run_args a;
    int rc = parse_run(argc, argv, &a);
    if (rc >= 0) {
        json_decref(a.args);
        return rc;
    }
    krun r = {0};
    char err[600];
    r.json = a.json;
    r.all = a.all;
    r.args = a.args;
    r.no_args = json_object();
    r.seqs = json_object();
    r.emitted = json_array();
    r.forwarded = json_object();
    r.errors = json_array();
    r.lines = json_array();
    sg_log_level = SG_LOG_WARN;
    if (sg_config_load(&r.cfg, a.config, err, sizeof(err)) < 0 || sg_categories_init(&r.cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "statusgw plugin run: bad config: %s\n", err);
        free_run(&r);
        return 2;
    }
    char *path = NULL;
    FILE *in = NULL;
    if (load_plugins(&r, a.target) < 0 || !(in = open_updates(&r, &a, &path))) {
        free(path);
        free_run(&r);
        sg_categories_free();
        return 2;
    }
    FILE *out = stdout;
    if (!r.json) {
        fprintf(out, "statusgw plugin run: %d plugin%s over %s\n", r.n, r.n == 1 ? "" : "s", path);
        for (int i = 0; i < r.n; i++) {
            fprintf(out, "  %-18s priority %-5d %s", r.p[i].name, r.p[i].priority, r.p[i].path);
            if (r.p[i].off) fprintf(out, " (off: plugins.%s.enabled = true runs it)", r.p[i].name);
            fputc('\n', out);
        }
        fputc('\n', out);
    }
    json_t *reports = run_all(&r, in, out);
    if (in != stdin) fclose(in);
    json_t *warnings = json_array(), *sums = summaries(&r), *fwd = bodies(&r);
    warm_pass(&r);
    json_t *cs = costs(&r, warnings);
    if (r.json) {
        json_t *all = json_pack("{s:s, s:I, s:I, s:o, s:O, s:O, s:O, s:O, s:O, s:O, s:{s:i, s:i, s:I}}", "updates_file",
                                path, "updates", (json_int_t)r.updates, "invalid", (json_int_t)r.invalid, "plugins",
                                plugin_list(&r), "reports", reports, "summaries", sums, "forwarders", fwd, "costs", cs,
                                "warnings", warnings, "errors", r.errors, "limits", "instructions",
                                r.cfg.plugin_instructions, "timeout_ms", r.cfg.plugin_timeout_ms, "memory_bytes",
                                (json_int_t)r.cfg.plugin_memory);
        json_dumpf(all, out, JSON_INDENT(2));
        fputc('\n', out);
        json_decref(all);
    } else {
        put_end(&r, out, sums, fwd, cs, warnings);
    }
    rc = json_array_size(r.errors) ? 1 : 0;
    json_decref(reports);
    json_decref(sums);
    json_decref(fwd);
    json_decref(cs);
    json_decref(warnings);
    free(path);
    free_run(&r);
    sg_categories_free();
    return rc;
}
