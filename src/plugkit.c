/* statusgw plugin new|run|test: the plugin author's kit (plugins/README.md).
 * new writes a commented plugin and a busted spec that runs it in the real
 * host; run is the dry run (plugrun.c); test runs the specs of a plugins
 * directory against the real host (the statusgw_plugin Lua module that
 * `make` builds beside the binary and `make install` puts in
 * PREFIX/lib/statusgw). */
#include "plugkit.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: statusgw plugin new NAME [--filter] [--builder] [--subscriber-filter] [--aggregator]\n"
               "                          [--forwarder] [--dir DIR]\n"
               "       statusgw plugin run FILE.lua|DIR [--config FILE] [--updates FILE.ndjson|-] [--json]\n"
               "       statusgw plugin test [DIR]\n"
               "  new   write DIR/NAME.lua (commented, ready to edit; a filter unless other kinds are\n"
               "        asked for) and DIR/NAME_spec.lua (a busted spec that runs it in the real\n"
               "        plugin host, passing as written); DIR defaults to plugins\n"
               "  run   a dry run over sample updates, without a gateway: what each plugin does to\n"
               "        each update, and what each call costs against the limits\n"
               "  test  run the *_spec.lua files of DIR (default plugins) against the real host\n");
}

/* ---- new ---- */

enum { KIND_FILTER, KIND_BUILDER, KIND_SUBSCRIBER, KIND_AGGREGATOR, KIND_FORWARDER, KINDS };
static const char *const kind_flags[KINDS] = {"--filter", "--builder", "--subscriber-filter", "--aggregator",
                                              "--forwarder"};

/* What each kind adds to the plugin, and to its spec. "@" stands for the name. */
static const char *const kind_code[KINDS] = {
    "-- An ingest filter: called for each publish, in priority order, before the\n"
    "-- update is stored. Return nothing to keep it, a table to replace it, false\n"
    "-- to drop it, or statusgw.refuse(status, code, message[, retry_after_s]) to\n"
    "-- refuse the publish (the producer is told, and may retry).\n"
    "function P.filter(update)\n"
    "  if update.category == \"info\" and update.text:sub(1, 6) == \"debug:\" then\n"
    "    return false -- dropped: the producer's answer says so\n"
    "  end\n"
    "  if update.text:find(\"password=\", 1, true) then\n"
    "    update.text = update.text:gsub(\"password=%S+\", \"password=[REDACTED]\")\n"
    "    return update -- changed\n"
    "  end\n"
    "end\n",
    "-- A metadata builder: a producer sends \"builder\":\"@\",\"args\":{...}; it returns\n"
    "-- the metadata (the gateway adds a timestamp; the producer's own metadata\n"
    "-- keys win) and, optionally, a new text.\n"
    "P.builders = {\n"
    "  @ = function(args, update)\n"
    "    return { items = args.items, per_item_ms = args.items and args.items > 0 and\n"
    "      math.floor((args.duration_ms or 0) / args.items) or 0 }, update.text .. \" (\" .. (args.items or 0) .. \" items)\"\n"
    "  end,\n"
    "}\n",
    "-- A subscriber filter: a client names it in its join (filter = { name = \"@\",\n"
    "-- args = { min_ms = 1000 } }); true delivers the update to that client.\n"
    "P.subscriber_filters = {\n"
    "  @ = function(update, args)\n"
    "    local metadata = update.metadata or {}\n"
    "    return (metadata.duration_ms or 0) >= (args.min_ms or 0)\n"
    "  end,\n"
    "}\n",
    "-- An aggregator: observe() sees every update of a conversation; every\n"
    "-- interval_ms, summarize() returns the summary to publish (category\n"
    "-- \"summary\", source \"@\"), or nil for none.\n"
    "P.aggregator = {\n"
    "  interval_ms = 10000,\n"
    "  observe = function(state, update)\n"
    "    state.count = (state.count or 0) + 1\n"
    "    if update.category == \"error\" then state.errors = (state.errors or 0) + 1 end\n"
    "  end,\n"
    "  summarize = function(state, conversation_id)\n"
    "    if not state.count then return nil end -- nothing new since the last summary\n"
    "    local count, errors = state.count, state.errors or 0\n"
    "    state.count, state.errors = nil, nil\n"
    "    return { text = string.format(\"%d updates, %d errors\", count, errors),\n"
    "             metadata = { updates = count, errors = errors } }\n"
    "  end,\n"
    "}\n",
    "-- A webhook forwarder: an endpoint in the config names it (forwarder = \"@\");\n"
    "-- match() picks the updates it takes, format() makes the body (and headers)\n"
    "-- of each batch, which statusgw signs, delivers and retries.\n"
    "P.webhooks = {\n"
    "  @ = {\n"
    "    match = function(update) return update.category == \"error\" end,\n"
    "    format = function(updates)\n"
    "      local lines = {}\n"
    "      for i, u in ipairs(updates) do lines[i] = u.conversation_id .. \": \" .. u.text end\n"
    "      return statusgw.json.encode({ text = table.concat(lines, \"\\n\"), count = #updates }),\n"
    "        { [\"X-Statusgw-Forwarder\"] = \"@\" }\n"
    "    end,\n"
    "  },\n"
    "}\n",
};

static const char *const kind_spec[KINDS] = {
    "  it(\"keeps updates, drops debug lines, masks passwords\", function()\n"
    "    local h = host()\n"
    "    local keep, u = h:filter({ conversation_id = \"c1\", category = \"tool\", text = \"Running search\" })\n"
    "    assert.is_true(keep)\n"
    "    assert.equal(\"Running search\", u.text)\n"
    "    local kept, by = h:filter({ conversation_id = \"c1\", category = \"info\", text = \"debug: cache warm\" })\n"
    "    assert.is_false(kept)\n"
    "    assert.equal(\"@\", by)\n"
    "    keep, u = h:filter({ conversation_id = \"c1\", category = \"info\", text = \"login password=hunter2 ok\" })\n"
    "    assert.is_true(keep)\n"
    "    assert.equal(\"login password=[REDACTED] ok\", u.text)\n"
    "  end)\n",
    "  it(\"builds metadata and text\", function()\n"
    "    local h = host()\n"
    "    local rc, md, text = h:build(\"@\", { items = 4, duration_ms = 1000 }, { text = \"Imported\" })\n"
    "    assert.equal(\"ok\", rc)\n"
    "    assert.equal(4, md.items)\n"
    "    assert.equal(250, md.per_item_ms)\n"
    "    assert.equal(\"Imported (4 items)\", text)\n"
    "  end)\n",
    "  it(\"delivers slow updates only\", function()\n"
    "    local h = host()\n"
    "    assert.is_true(h:subscriber_filter(\"@\", { category = \"tool\", text = \"x\", metadata = { duration_ms = 1500 } }, { min_ms = 1000 }))\n"
    "    assert.is_false(h:subscriber_filter(\"@\", { category = \"tool\", text = \"x\", metadata = { duration_ms = 5 } }, { min_ms = 1000 }))\n"
    "  end)\n",
    "  it(\"summarizes a conversation's updates\", function()\n"
    "    local h = host()\n"
    "    h:observe(\"c1\", { conversation_id = \"c1\", category = \"tool\", text = \"a\" })\n"
    "    h:observe(\"c1\", { conversation_id = \"c1\", category = \"error\", text = \"b\" })\n"
    "    local out = h:summarize()\n"
    "    assert.equal(1, #out)\n"
    "    assert.equal(\"2 updates, 1 errors\", out[1].text)\n"
    "    assert.equal(\"summary\", out[1].category)\n"
    "    assert.equal(0, #h:summarize()) -- nothing new since\n"
    "  end)\n",
    "  it(\"forwards errors in its format\", function()\n"
    "    local h = host()\n"
    "    local err = { conversation_id = \"c1\", seq = 1, category = \"error\", text = \"timeout\", metadata = {} }\n"
    "    assert.is_true(h:webhook_match(\"@\", err))\n"
    "    assert.is_false(h:webhook_match(\"@\", { conversation_id = \"c1\", seq = 2, category = \"info\", text = \"ok\", metadata = {} }))\n"
    "    local body, headers = h:webhook_format(\"@\", { err })\n"
    "    assert.equal(\"c1: timeout\", json.decode(body).text)\n"
    "    assert.equal(\"@\", headers[\"X-Statusgw-Forwarder\"])\n"
    "  end)\n",
};

/* text with every "@" replaced by name, appended to f */
static void put_named(FILE *f, const char *text, const char *name)
{
    for (const char *c = text; *c; c++)
        if (*c == '@') fputs(name, f);
        else fputc(*c, f);
}

static int valid_name(const char *s)
{
    if (!*s || strlen(s) > 64 || !islower((unsigned char)s[0])) return 0;
    for (; *s; s++)
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_') return 0;
    return 1;
}

static int write_plugin(const char *path, const char *name, const int *kinds)
{
    FILE *f = fopen(path, "wx");
    if (!f) return -1;
    fprintf(f, "-- %s.lua: what it does, in a sentence or two.\n"
               "--\n"
               "-- Try it on sample traffic:  statusgw plugin run %s\n"
               "-- Test it:                   statusgw plugin test (runs %s_spec.lua beside it)\n"
               "-- Load it into a gateway:    put it in plugins_dir, then POST /admin/reload (or SIGHUP)\n"
               "--\n"
               "-- Configuration (plugins.%s in the config file), checked when it loads:\n"
               "--   greeting = \"hello\"   -- an example setting: declare each one in settings\n\n"
               "local P = {\n"
               "  name = \"%s\",\n"
               "  priority = 100,                       -- filters run lowest first\n"
               "  settings = { greeting = \"string\" },  -- the keys plugins.%s may hold\n"
               "}\n\n"
               "local greeting = \"hello\"\n\n"
               "function P.init(config) -- once per load, with plugins.%s (or {})\n"
               "  greeting = config.greeting or greeting\n"
               "end\n",
            name, path, name, name, name, name, name);
    for (int k = 0; k < KINDS; k++)
        if (kinds[k]) {
            fputc('\n', f);
            put_named(f, kind_code[k], name);
        }
    fputs("\nreturn P\n", f);
    return fclose(f);
}

static int write_spec(const char *path, const char *name, const int *kinds)
{
    FILE *f = fopen(path, "wx");
    if (!f) return -1;
    fprintf(f, "-- %s_spec.lua: %s.lua in the real plugin host (statusgw_plugin, the gateway's\n"
               "-- own C host as a Lua module). Run with:  statusgw plugin test\n"
               "local sgp = require(\"statusgw_plugin\")\n"
               "local json = sgp.json\n"
               "local here = debug.getinfo(1, \"S\").source:match(\"^@(.*/)\") or \"./\"\n\n"
               "-- The plugin loaded on its own, on, with config as plugins.%s (a load\n"
               "-- error is raised with its file and line).\n"
               "local function host(config) return sgp.plugin(here .. \"%s.lua\", config) end\n\n"
               "describe(\"%s\", function()\n"
               "  it(\"loads and takes its settings\", function()\n"
               "    local h = host({ greeting = \"hi\" })\n"
               "    assert.equal(\"active\", h:admin().plugins[1].state)\n"
               "    assert.has_error(function() host({ greeting = 42 }) end) -- a setting of the wrong type\n"
               "  end)\n",
            name, name, name, name, name);
    for (int k = 0; k < KINDS; k++)
        if (kinds[k]) {
            fputc('\n', f);
            put_named(f, kind_spec[k], name);
        }
    fputs("end)\n", f);
    return fclose(f);
}

static int plugin_new(int argc, char **argv)
{
    const char *name = NULL, *dir = "plugins";
    int kinds[KINDS] = {0}, any = 0;
    for (int i = 0; i < argc; i++) {
        int known = 0;
        for (int k = 0; k < KINDS; k++)
            if (strcmp(argv[i], kind_flags[k]) == 0) kinds[k] = known = any = 1;
        if (known) continue;
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir = argv[++i];
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return usage(stdout), 0;
        else if (argv[i][0] == '-' || name) {
            fprintf(stderr, "statusgw plugin new: unexpected '%s' (statusgw plugin help)\n", argv[i]);
            return 2;
        } else name = argv[i];
    }
    if (!name || !valid_name(name)) {
        fprintf(stderr, "statusgw plugin new: %s%s%s: a plugin's name is a lower-case letter, then lower-case letters, "
                        "digits or _ (it names its config section plugins.NAME)\n", name ? "'" : "", name ? name : "a NAME is needed",
                name ? "'" : "");
        return 2;
    }
    if (!any) kinds[KIND_FILTER] = 1;
    struct stat dst;
    if (stat(dir, &dst) < 0 || !S_ISDIR(dst.st_mode)) {
        fprintf(stderr, "statusgw plugin new: no directory '%s' here: give --dir DIR (the gateway's plugins_dir)\n", dir);
        return 2;
    }
    char lua[4096], spec[4096];
    snprintf(lua, sizeof(lua), "%s/%s.lua", dir, name);
    snprintf(spec, sizeof(spec), "%s/%s_spec.lua", dir, name);
    struct stat st;
    if (stat(lua, &st) == 0 || stat(spec, &st) == 0) {
        fprintf(stderr, "statusgw plugin new: %s already exists: nothing written\n", stat(lua, &st) == 0 ? lua : spec);
        return 2;
    }
    if (write_plugin(lua, name, kinds) != 0 || write_spec(spec, name, kinds) != 0) {
        fprintf(stderr, "statusgw plugin new: cannot write %s: %s\n", lua, strerror(errno));
        return 2;
    }
    printf("wrote %s and %s\n"
           "next:  statusgw plugin run %s      (what it does to sample traffic)\n"
           "       statusgw plugin test %s     (its spec, in the real host)\n",
           lua, spec, lua, dir);
    return 0;
}

/* ---- test ---- */

/* Where the statusgw_plugin module is: beside this binary (a build), or
 * in ../lib/statusgw from it (make install). The directory's length in
 * out (which holds the module's path), or -1. */
static int module_dir(char *out, size_t n)
{
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) return -1;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    static const char *const places[] = {"%s/statusgw_plugin.so", "%s/../lib/statusgw/statusgw_plugin.so"};
    struct stat st;
    for (int i = 0; i < 2; i++) {
        snprintf(out, n, places[i], exe);
        if (stat(out, &st) == 0) return (int)(strrchr(out, '/') - out);
    }
    return -1;
}

static int add_specs(const char *dir, char ***files, int *nf, int depth)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        size_t n = strlen(e->d_name), pl = strlen(dir) + n + 2;
        char *path = malloc(pl);
        snprintf(path, pl, "%s/%s", dir, e->d_name);
        struct stat st;
        if (depth == 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) add_specs(path, files, nf, 1);
        if (n > 9 && strcmp(e->d_name + n - 9, "_spec.lua") == 0) {
            *files = realloc(*files, sizeof(char *) * (*nf + 2));
            (*files)[(*nf)++] = path;
        } else {
            free(path);
        }
    }
    closedir(d);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* busted over DIR's specs (and its subfolders'), with the module found. */
static int plugin_test(int argc, char **argv)
{
    if (argc > 0 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) return usage(stdout), 0;
    const char *dir = argc > 0 ? argv[0] : "plugins";
    char mod[4200];
    int at = module_dir(mod, sizeof(mod));
    if (at < 0) {
        fprintf(stderr, "statusgw plugin test: no statusgw_plugin.so beside this binary or in ../lib/statusgw "
                        "from it: build it with make (make install puts it there)\n");
        return 2;
    }
    mod[at] = 0;
    const char *busted = "/usr/bin/busted";
    if (access(busted, R_OK) != 0 || access("/usr/bin/lua5.4", X_OK) != 0) {
        fprintf(stderr, "statusgw plugin test: busted on Lua 5.4 is needed: apt-get install lua5.4 lua-busted\n");
        return 2;
    }
    char **files = NULL;
    int nf = 0;
    if (add_specs(dir, &files, &nf, 0) < 0 || nf == 0) {
        fprintf(stderr, "statusgw plugin test: no *_spec.lua in %s (statusgw plugin new NAME writes one)\n", dir);
        free(files);
        return 2;
    }
    qsort(files, nf, sizeof(char *), cmp_str);
    char cpath[4300];
    snprintf(cpath, sizeof(cpath), "--cpath=%s/?.so", mod);
    char **args = calloc(nf + 5, sizeof(char *));
    int n = 0;
    args[n++] = "lua5.4";
    args[n++] = (char *)busted;
    args[n++] = cpath;
    for (int i = 0; i < nf; i++) args[n++] = files[i];
    args[n] = NULL;
    setenv("STATUSGW_LOG_LEVEL", "warn", 0); /* the host's own lines: what went wrong only */
    execv("/usr/bin/lua5.4", args);
    fprintf(stderr, "statusgw plugin test: cannot run busted: %s\n", strerror(errno));
    return 2;
}

int sg_plugin_command(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "plugin") != 0) return -1;
    const char *sub = argc > 2 ? argv[2] : "";
    if (strcmp(sub, "run") == 0) return sg_plugin_run(argc - 3, argv + 3);
    if (strcmp(sub, "new") == 0) return plugin_new(argc - 3, argv + 3);
    if (strcmp(sub, "test") == 0) return plugin_test(argc - 3, argv + 3);
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "statusgw plugin: %s%s%s\n", *sub ? "unknown command '" : "which command?", sub,
            *sub ? "'" : "");
    usage(stderr);
    return 2;
}
