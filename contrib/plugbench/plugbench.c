/* plugbench: the plugin host's CPU cost per update, without the network.
 *
 *   plugbench [--config FILE] [--builder | --metadata | --updates FILE.ndjson] [--seconds S] DIR
 *
 * Loads DIR as the gateway does, then for S seconds takes the load
 * generator's publish body (or, with --updates, each line of the file in
 * turn) through what ingest does with it: parse, the builder, the ingest
 * filters, the stored update, the aggregators' observe. Prints nanoseconds
 * of CPU per update; DIR empty is the baseline. Run by scripts/bench
 * plugins. */
#include "config.h"
#include "plugin.h"
#include "clock.h"
#include "status.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the publish bodies of contrib/loadgen, over its 1000 conversations */
#define CONVERSATIONS 1000
#define HEAD "{\"conversation_id\":\"bench-%d\",\"category\":\"tool\",\"text\":\"t=1764256823123456789\""
#define BUILDER ",\"builder\":\"tool\",\"args\":{\"tool_name\":\"search_code\",\"params\":{\"query\":\"where is the retry loop in http.c\",\"limit\":10}}"
#define METADATA ",\"metadata\":{\"tool\":\"search_code\",\"params\":{\"query\":\"where is the retry loop in http.c\",\"limit\":10}}"

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* One publish through parse, build, filter and the stored update; 1 kept. */
static int one(sg_plugins *pm, const char *body, size_t n, const sg_limits *lim)
{
    sg_draft d, *ds[1] = {&d};
    sg_error err;
    uint64_t clock = 0; /* as ingest carries it through the plugin calls */
    if (sg_draft_parse(body, n, lim, &d, &err) < 0) {
        fprintf(stderr, "plugbench: the body is refused: %s\n", err.message);
        exit(1);
    }
    if (d.builder) {
        sg_built b;
        if (sg_plugins_build(pm, &d, &b, &clock) != SG_BUILD_OK) {
            fprintf(stderr, "plugbench: builder '%s' failed or is unknown\n", d.builder);
            exit(1);
        }
        if (sg_draft_set_built(&d, &b, lim, &err) < 0) {
            fprintf(stderr, "plugbench: the built update is refused: %s\n", err.message);
            exit(1);
        }
        d.builder = NULL;
        d.args = NULL;
        d.args_len = 0;
    }
    const char *by = NULL;
    char kept = 1;
    if (sg_plugins_have_filters(pm)) sg_plugins_filter_many(pm, ds, &kept, &by, NULL, 1, NULL, &clock);
    if (kept) {
        sg_update *u = sg_update_new(&d, 1, sg_clock_wall_ms());
        if (sg_plugins_have_aggregators(pm)) sg_plugins_observe(pm, d.conv_id, u, NULL);
        sg_update_unref(u);
    }
    sg_draft_free(&d);
    return kept;
}

/* What plugins emit (an aggregator's immediate summary) is taken and
 * dropped: the bench measures the plugins, not the publishing. */
static int discard_emit(void *arg, json_t *update, const char *plugin, char *err, size_t errlen)
{
    return 0;
}

/* The load generator's body over its conversations; how many. */
static int make_bodies(const char *extra, char body[][1024], size_t *n)
{
    char fmt[512];
    snprintf(fmt, sizeof(fmt), "%s%s}", HEAD, extra);
    for (int i = 0; i < CONVERSATIONS; i++)
        n[i] = (size_t)snprintf(body[i], sizeof(body[i]), fmt, i);
    return CONVERSATIONS;
}

/* Up to CONVERSATIONS lines of an NDJSON file; how many, or -1. */
static int read_updates(const char *path, char body[][1024], size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "plugbench: cannot read %s\n", path);
        return -1;
    }
    int nb = 0;
    while (nb < CONVERSATIONS && fgets(body[nb], sizeof(body[nb]), f)) {
        n[nb] = strcspn(body[nb], "\r\n");
        if (n[nb]) nb++;
    }
    fclose(f);
    return nb;
}

int main(int argc, char **argv)
{
    const char *config = NULL, *extra = "", *updates = NULL;
    double seconds = 2;
    static const struct option opts[] = {{"config", 1, 0, 'c'}, {"builder", 0, 0, 'b'},
                                         {"metadata", 0, 0, 'm'}, {"seconds", 1, 0, 's'},
                                         {"updates", 1, 0, 'u'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'b': extra = BUILDER; break;
        case 'm': extra = METADATA; break;
        case 's': seconds = atof(optarg); break;
        case 'u': updates = optarg; break;
        default: goto usage;
        }
    }
    if (optind != argc - 1) {
    usage:
        fprintf(stderr, "usage: plugbench [--config FILE] [--builder | --metadata | --updates FILE.ndjson] "
                        "[--seconds S] DIR\n");
        return 2;
    }
    sg_config cfg;
    char err[256];
    if (sg_config_load(&cfg, config, err, sizeof(err)) < 0 ||
        sg_categories_init(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "plugbench: %s\n", err);
        return 1;
    }
    sg_plugins *pm = sg_plugins_new(argv[optind], &cfg, NULL, discard_emit, NULL);
    json_t *report = sg_plugins_reload(pm);
    json_t *failed = json_object_get(report, "failed");
    if (json_array_size(failed) > 0) {
        char *s = json_dumps(failed, 0);
        fprintf(stderr, "plugbench: plugins failed to load: %s\n", s);
        free(s);
        return 1;
    }
    json_decref(report);

    static char body[CONVERSATIONS][1024];
    size_t n[CONVERSATIONS];
    int nb = updates ? read_updates(updates, body, n) : make_bodies(extra, body, n);
    if (nb <= 0) return 1;
    sg_limits lim = {cfg.max_text, cfg.max_metadata};
    for (int i = 0; i < 20000; i++) /* warm up */
        one(pm, body[i % nb], n[i % nb], &lim);
    uint64_t t0 = cpu_ns(), limit = (uint64_t)(seconds * 1e9), t;
    long count = 0, kept = 0;
    do {
        for (int i = 0; i < nb; i++) kept += one(pm, body[i], n[i], &lim);
        count += nb;
        t = cpu_ns() - t0;
    } while (t < limit);
    printf("{\"updates\":%ld,\"kept\":%ld,\"ns_per_update\":%.1f}\n", count, kept, (double)t / count);
    sg_plugins_free(pm);
    sg_categories_free();
    sg_config_free(&cfg);
    return 0;
}
