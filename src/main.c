/* statusgw: parse arguments, load the config, run the server. */
#include "api.h"
#include "cli.h"
#include "config.h"
#include "http.h"
#include "server.h"
#include "hub.h"
#include "longpoll.h"
#include "dict.h"
#include "ingest.h"
#include "plugin.h"
#include "plugkit.h"
#include "security.h"
#include "webhook.h"
#include "log.h"
#include "status.h"
#include "store.h"

#include <errno.h>
#include <getopt.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f, "usage: statusgw [--config FILE] [--listen ADDR:PORT] [--plugins DIR]\n"
               "                [--log-level debug|info|warn|error] [--check-config]\n"
               "                [--version] [--help]\n"
               "       statusgw check-plugin [--config FILE] PLUGIN.lua...\n"
               "       statusgw plugin new|run|test ... (statusgw plugin help)\n"
               "       statusgw publish|token|stats|plugins|webhooks|help ... (statusgw help)\n"
               "\n"
               "  --config FILE    the Lua config file (relative paths in it are relative to it)\n"
               "  --listen A:P     listen address, over the config's\n"
               "  --plugins DIR    plugins directory, over the config's\n"
               "  --log-level L    debug, info, warn or error\n"
               "  --check-config   check the config and its plugins' settings, then exit (2: invalid)\n"
               "  check-plugin     load each plugin file in the sandbox and print what it provides\n"
               "                   (exit 1 when any fails to load)\n");
}

static void usage_check_plugin(FILE *f)
{
    fprintf(f, "usage: statusgw check-plugin [--config FILE] PLUGIN.lua...\n"
               "Loads each file in the plugin sandbox (with plugins.<name> from the config,\n"
               "if given) and prints what it provides as JSON, or where it fails.\n");
}

static void forget_conversation(void *arg, const char *id)
{
    sg_plugins_forget(arg, id);
}

/* statusgw check-plugin FILE...: load each in the sandbox and say what it
 * provides, or where it fails. */
static int check_one_plugin(const char *path, const sg_config *cfg)
{
    char err[600];
    json_t *d = sg_plugin_check(path, cfg, err, sizeof(err));
    if (!d) {
        char where[1200];
        if (sg_plugin_name_file(path, err, where, sizeof(where)) || strncmp(err, path, strlen(path)) == 0)
            fprintf(stderr, "%s\n", where); /* the file as it was given */
        else
            fprintf(stderr, "%s: %s\n", path, err);
        return 1;
    }
    char *s = json_dumps(d, JSON_INDENT(2));
    printf("%s\n", s);
    free(s);
    json_decref(d);
    return 0;
}

static int check_plugin(int argc, char **argv)
{
    const char *config_path = NULL;
    const char *files[256];
    int nf = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage_check_plugin(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "statusgw check-plugin: unknown option '%s'\n", argv[i]);
            usage_check_plugin(stderr);
            return 2;
        } else if (nf < (int)(sizeof(files) / sizeof(files[0]))) {
            files[nf++] = argv[i];
        }
    }
    if (nf == 0) {
        usage_check_plugin(stderr);
        return 2;
    }
    sg_config cfg;
    char err[600];
    if (sg_config_load(&cfg, config_path, err, sizeof(err)) < 0) {
        fprintf(stderr, "statusgw: bad config: %s\n", err);
        sg_config_free(&cfg);
        return 2;
    }
    sg_categories_init(&cfg, err, sizeof(err));
    int rc = 0;
    for (int i = 0; i < nf; i++)
        rc |= check_one_plugin(files[i], &cfg);
    sg_categories_free();
    sg_config_free(&cfg);
    return rc;
}

/* The plugins as the config sees them, after their first load: the
 * directory is there, every plugins.<name> names a plugin, and every
 * plugin takes the settings it is given. 0, or -1 with err. */
static int check_plugins(const sg_config *cfg, sg_plugins *pm, char *err, size_t errlen)
{
    struct stat st;
    if (stat(cfg->plugins_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "plugins_dir '%s' is not a directory (%s)", cfg->plugins_dir,
                 errno ? strerror(errno) : "not a directory");
        return -1;
    }
    const char *bad = sg_plugins_config_error(pm);
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        return -1;
    }
    return sg_plugins_check_names(pm, err, errlen);
}

/* What the command line asked for. */
typedef struct args {
    const char *config_path, *listen, *plugins, *level;
    int check_only;
} args;

/* -1 to go on, or the exit status (0 for --version and --help). */
static int parse_args(int argc, char **argv, args *a)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},   {"listen", required_argument, NULL, 'l'},
        {"plugins", required_argument, NULL, 'p'},  {"log-level", required_argument, NULL, 'L'},
        {"check-config", no_argument, NULL, 'C'},   {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    int o;
    while ((o = getopt_long(argc, argv, "c:l:p:L:CVh", opts, NULL)) != -1) {
        switch (o) {
        case 'c': a->config_path = optarg; break;
        case 'l': a->listen = optarg; break;
        case 'p': a->plugins = optarg; break;
        case 'L': a->level = optarg; break;
        case 'C': a->check_only = 1; break;
        case 'V': printf("statusgw %s\n", SG_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "statusgw: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* The config file with the flags over it, the categories and the security
 * layer. 0, or 2 with the message written (and everything freed). */
static int configure(const args *a, sg_config *cfg, sg_security **sec)
{
    char err[512];
    const char *bad = NULL;
    *sec = NULL;
    if (sg_config_load(cfg, a->config_path, err, sizeof(err)) < 0) {
        bad = err;
    } else if (a->listen && sg_config_set_listen(cfg, a->listen) < 0) {
        snprintf(err, sizeof(err), "--listen must be ADDR:PORT, got '%s'", a->listen);
        bad = err;
    } else if (a->level && (cfg->log_level = sg_log_parse_level(a->level)) < 0) {
        snprintf(err, sizeof(err), "--log-level must be debug, info, warn or error");
        bad = err;
    }
    if (!bad && a->plugins) {
        free(cfg->plugins_dir);
        cfg->plugins_dir = strdup(a->plugins);
    }
    if (!bad) sg_log_level = cfg->log_level;
    if (!bad && sg_categories_init(cfg, err, sizeof(err)) < 0) bad = err;
    if (!bad && !(*sec = sg_security_new(cfg, err, sizeof(err)))) bad = err;
    if (!bad) return 0;
    fprintf(stderr, "statusgw: %s%s\n", strncmp(bad, "--", 2) == 0 ? "" : "bad config: ", bad);
    sg_categories_free();
    sg_config_free(cfg);
    return 2;
}

/* --check-config: the config, its plugins' settings and its webhooks. */
static int check_config(const args *a, sg_config *cfg, sg_security *sec)
{
    char err[512];
    sg_security_free(sec);
    if (sg_log_level < SG_LOG_WARN) sg_log_level = SG_LOG_WARN; /* a check says only what is wrong */
    sg_plugins *pm = sg_plugins_new(cfg->plugins_dir, cfg, NULL, NULL, NULL);
    if (pm) json_decref(sg_plugins_reload(pm));
    int bad = !pm || check_plugins(cfg, pm, err, sizeof(err)) < 0 || sg_webhooks_check(cfg, err, sizeof(err)) < 0;
    sg_plugins_free(pm);
    if (bad)
        fprintf(stderr, "statusgw: bad config: %s\n", err);
    else
        printf("statusgw: config %s is valid\n", a->config_path ? a->config_path : "(defaults)");
    sg_categories_free();
    sg_config_free(cfg);
    return bad ? 2 : 0;
}

/* Say who may do what; an open gateway stays on loopback. */
static void announce_security(sg_config *cfg, sg_security *sec)
{
    if (sg_security_open(sec)) {
        /* nothing to check credentials against: stay where only this host reaches */
        if (strcmp(cfg->listen_host, "127.0.0.1") != 0 && strcmp(cfg->listen_host, "::1") != 0 &&
            strcmp(cfg->listen_host, "localhost") != 0) {
            sg_log(SG_LOG_WARN, "insecure_listen_refused",
                   "requested=%s:%d listen=127.0.0.1:%d reason=\"no api_keys or jwt_secret configured\"",
                   cfg->listen_host, cfg->listen_port, cfg->listen_port);
            free(cfg->listen_host);
            cfg->listen_host = strdup("127.0.0.1");
        }
        sg_log(SG_LOG_WARN, "open_mode",
               "auth=none listen=loopback msg=\"set security.api_keys and security.jwt_secret to expose the gateway\"");
        return;
    }
    if (!sg_security_has_api_keys(sec))
        sg_log(SG_LOG_WARN, "open_publishing", "msg=\"no security.api_keys: anyone who reaches the port may publish\"");
    if (!sg_security_has_jwt(sec))
        sg_log(SG_LOG_WARN, "open_subscribing", "msg=\"no security.jwt_secret: anyone who reaches the port may subscribe\"");
}

/* The Redis engine's aggregators' lease holder feeds the aggregators. */
static int have_aggregators(void *arg)
{
    return sg_plugins_have_aggregators(arg);
}

static void observe_cluster(void *arg, const char *conv, const sg_update *u, const char *emitted_by)
{
    sg_plugins_observe(arg, conv, u, emitted_by);
}

/* Make the server's parts, load the plugins, start the webhooks and the
 * listener. 0, or the exit status with the message written. */
static int server_open(sg_server *srv, sg_config *cfg, sg_security *sec)
{
    char err[512];
    srv->cfg = cfg;
    srv->handle = sg_api_handle;
    srv->security = sec;
    srv->base = event_base_new();
    if (strcmp(cfg->engine, "redis") == 0) {
        err[0] = 0;
        srv->store = srv->base ? sg_store_redis_new(cfg, srv->base, err, sizeof(err)) : NULL;
        if (!srv->store) {
            sg_log(SG_LOG_ERROR, "engine_failed", "engine=redis reason=%s", sg_log_q(err));
            fprintf(stderr, "statusgw: engine: %s\n", err);
            return 2;
        }
    } else if (strcmp(cfg->store, "sqlite") == 0) {
        err[0] = 0;
        srv->store = srv->base ? sg_store_sqlite_new(cfg->store_path, cfg->store_sync, cfg->history_size,
                                                     cfg->cache_bytes, srv->base, err, sizeof(err))
                               : NULL;
        if (!srv->store) {
            sg_log(SG_LOG_ERROR, "store_failed", "store=sqlite path=%s reason=%s", sg_log_q(cfg->store_path),
                   sg_log_q(err));
            fprintf(stderr, "statusgw: store: %s\n", err);
            return 2;
        }
    } else {
        srv->store = sg_store_memory_new(cfg->history_size);
    }
    if (srv->store && cfg->store_delay_ms > 0)
        srv->store = sg_store_deferred_new(srv->store, srv->base, cfg->store_delay_ms);
    srv->hub = srv->base && srv->store ? sg_hub_new(srv->base, cfg, srv->store) : NULL;
    if (srv->hub && srv->store->ops->publish) sg_store_redis_set_hub(srv->store, srv->hub);
    srv->plugins = sg_plugins_new(cfg->plugins_dir, cfg, srv->base, sg_ingest_emit, srv);
    if (!srv->hub || !srv->plugins || sg_ingest_init(srv) < 0) {
        fprintf(stderr, "statusgw: out of memory at start\n");
        return 1;
    }
    sg_hub_on_forget(srv->hub, forget_conversation, srv->plugins);
    if (srv->store->ops->publish) sg_store_redis_set_observer(srv->store, observe_cluster, have_aggregators, srv->plugins);
    sg_filter_set_plugins(srv->plugins);
    json_decref(sg_server_reload(srv, "start"));
    if (check_plugins(cfg, srv->plugins, err, sizeof(err)) < 0) {
        sg_log(SG_LOG_ERROR, "bad_config", "reason=%s", sg_log_q(err));
        fprintf(stderr, "statusgw: bad config: %s\n", err);
        return 2;
    }
    srv->webhooks = sg_webhooks_new(srv->base, cfg, srv->plugins, srv->store, err, sizeof(err));
    if (!srv->webhooks) {
        fprintf(stderr, "statusgw: bad config: %s\n", err);
        return 2;
    }
    if (sg_server_start(srv, err, sizeof(err)) < 0) {
        sg_log(SG_LOG_ERROR, "listen_failed", "reason=%s", sg_log_q(err));
        fprintf(stderr, "statusgw: %s\n", err);
        return 2;
    }
    return 0;
}

static void server_close(sg_server *srv)
{
    sg_server_stop(srv);
    sg_longpoll_free(srv);
    sg_webhooks_free(srv->webhooks);
    sg_ingest_free(srv);
    sg_hub_free(srv->hub);
    sg_plugins_free(srv->plugins);
    sg_security_free(srv->security);
    sg_dict_free(srv->per_ip);
    if (srv->store) srv->store->ops->free(srv->store);
    if (srv->base) event_base_free(srv->base);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "check-plugin") == 0) return check_plugin(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "plugin") == 0) return sg_plugin_command(argc, argv);
    int cli_rc = sg_cli(argc, argv);
    if (cli_rc >= 0) return cli_rc;
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    sg_config cfg;
    sg_security *sec;
    if ((rc = configure(&a, &cfg, &sec)) != 0) return rc;
    if (a.check_only) return check_config(&a, &cfg, sec);
    announce_security(&cfg, sec);
    sg_server srv = {0};
    rc = server_open(&srv, &cfg, sec);
    if (rc == 0) {
        sg_log(SG_LOG_INFO, "started",
               "version=%s listen=%s:%d config=%s store=%s batch_size=%d flush_ms=%d history=%d",
               SG_VERSION, cfg.listen_host, cfg.listen_port,
               a.config_path ? sg_log_q(a.config_path) : "defaults", srv.store->ops->name,
               cfg.batch_size, cfg.flush_ms, cfg.history_size);
        event_base_dispatch(srv.base);
        sg_log(SG_LOG_INFO, "stopped", "requests=%llu", (unsigned long long)srv.net.requests);
    }
    server_close(&srv);
    sg_update_pool_free();
    sg_categories_free();
    sg_config_free(&cfg);
    libevent_global_shutdown();
    return rc;
}
