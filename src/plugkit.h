/* statusgw plugin new|run|test: the plugin author's kit (plugins/README.md). */
#ifndef SG_PLUGKIT_H
#define SG_PLUGKIT_H

/* statusgw plugin ...: the exit status, or -1 when argv is not a plugin
 * command. */
int sg_plugin_command(int argc, char **argv);

/* statusgw plugin run, with argv after "run". */
int sg_plugin_run(int argc, char **argv);

#endif
