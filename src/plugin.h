/* The plugin host (plugins/README.md): every *.lua file in the plugins directory,
 * each in its own sandbox, loaded in priority order, reloaded file by file
 * without dropping anything that works. */
#ifndef SG_PLUGIN_H
#define SG_PLUGIN_H

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "hostapi.h"
#include "sandbox.h"
#include "status.h"

typedef struct sg_plugin sg_plugin;
typedef struct sg_plugins sg_plugins;

/* A host for the plugins in dir (or for the one plugin file dir names:
 * statusgw plugin run). base runs aggregator timers (NULL: none;
 * summaries then come only from sg_plugins_summarize). emit publishes
 * what plugins emit. cfg must outlive the host. */
sg_plugins *sg_plugins_new(const char *dir, const sg_config *cfg, struct event_base *base,
                           sg_emit_fn emit, void *emit_arg);
void sg_plugins_free(sg_plugins *pm);

/* Load every plugin (first call) or reload each file whose new version
 * loads and inits; a file that fails keeps its previous version. Returns a
 * report {"loaded":[…], "failed":[{"file","error"}], "removed":[…]}. */
json_t *sg_plugins_reload(sg_plugins *pm);

enum { SG_BUILD_OK, SG_BUILD_FAILED, SG_BUILD_UNKNOWN };

/* The update table plugins see, from a draft. */
void sg_plugins_push_draft(lua_State *L, const sg_draft *d);

/* Plugin calls are timed on a clock the caller may carry from one call to
 * the next (0 to begin with; each call leaves its end time in it), so that
 * a run of calls reads the time once per call. NULL: a clock of its own. */

/* Run the draft's builder with (args, update). On SG_BUILD_OK, out holds
 * the built metadata merged with the producer's own (plugins/README.md) as new
 * JSON text, and perhaps a new text: the caller owns out->block. */
int sg_plugins_build(sg_plugins *pm, const sg_draft *d, sg_built *out, uint64_t *clock);

/* Run the ingest filters in priority order, skipping plugin `skip` (the
 * emitter of this update). Returns 1 to keep (a filter may have replaced
 * the draft with a validated one) or 0 to drop, with the dropping
 * plugin's name in *dropped_by. */
int sg_plugins_filter(sg_plugins *pm, sg_draft *d, const char *skip, const char **dropped_by);
/* The same for the drafts ds[i] with live[i] set, plugin by plugin (each
 * sees them in order): a dropped or refused one gets live[i] = 0 and
 * by[i] = the plugin's name; refusals[i] (when not NULL) holds the
 * refusal, or status 0 for a drop. */
void sg_plugins_filter_many(sg_plugins *pm, sg_draft **ds, char *live, const char **by,
                            sg_error *refusals, size_t n, const char *skip, uint64_t *clock);
int sg_plugins_have_filters(const sg_plugins *pm);

/* Subscriber filters, by name. */
int sg_plugins_has_subscriber_filter(const sg_plugins *pm, const char *name);
/* 1 when the update should be delivered. A call that fails is counted
 * against the subscriber (subscriber_errors), never the plugin, and the
 * plugin's failure_policy decides. */
int sg_plugins_subscriber_filter(sg_plugins *pm, const char *name, json_t *args, json_t *update);
/* Try the filter with args on a plain update (empty text and metadata),
 * as a join or set_filter names it: -1 with err when it fails, so a
 * subscriber whose args do not fit is told at once. */
int sg_plugins_subscriber_filter_try(sg_plugins *pm, const char *name, json_t *args, char *err,
                                     size_t errlen);

/* Aggregators. */
int sg_plugins_have_aggregators(const sg_plugins *pm);
void sg_plugins_observe(sg_plugins *pm, const char *conv, const sg_update *u, const char *skip);
void sg_plugins_forget(sg_plugins *pm, const char *conv);
/* Ask every aggregator for the summaries due now (the timers do this). */
void sg_plugins_summarize(sg_plugins *pm);

/* Webhook forwarders, by name: match(update) and format(updates). */
int sg_plugins_has_webhook(const sg_plugins *pm, const char *name);
/* 1 when the forwarder selects the update; 0 otherwise or on failure. */
int sg_plugins_webhook_match(sg_plugins *pm, const char *name, json_t *update);
/* Format a batch: a new body string and headers object (either may be
 * NULL on failure). Returns 0 or -1. */
int sg_plugins_webhook_format(sg_plugins *pm, const char *name, json_t *updates, char **body,
                              json_t **headers);

/* After a reload: the first setting the config gives a plugin that the
 * plugin refuses (a type its `settings` do not allow, an unknown key, a
 * non-boolean `enabled`), or NULL. At start this is a config error. */
const char *sg_plugins_config_error(const sg_plugins *pm);
/* -1 with err when the config has plugins.<name> for a name no plugin in
 * the directory has (with a "did you mean"). */
int sg_plugins_check_names(const sg_plugins *pm, char *err, size_t errlen);

/* err with the "name.lua:line:" a plugin's error carries naming the file as
 * path (as the user gave it): 1, or 0 and err as it is when it names no
 * such place. */
int sg_plugin_name_file(const char *path, const char *err, char *out, size_t n);

/* Calls made so far over the host's plugins. */
long sg_plugins_calls(const sg_plugins *pm);

/* Failed calls so far (errors, timeouts, out of memory) over the host's
 * plugins, and the last one's message in *last_error (NULL when none):
 * cheap enough to ask after every call (statusgw plugin run). */
long sg_plugins_failures(const sg_plugins *pm, const char **last_error);

/* State and counters of every plugin, for GET /admin/plugins. */
json_t *sg_plugins_admin(const sg_plugins *pm);

/* The plugin files of dir, sorted: its .lua files and those of its contrib
 * folder (the gallery), not the _spec.lua ones; dir may name one file.
 * Their number (the caller frees each and the array), or -1 when dir
 * cannot be read. */
int sg_plugin_files(const char *dir, char ***files);

/* Load one file on its own (statusgw check-plugin): a description of what
 * it provides, or NULL with "file:line: message" in err. */
json_t *sg_plugin_check(const char *path, const sg_config *cfg, char *err, size_t errlen);

#endif
