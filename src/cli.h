/* The statusgw command line for producers and operators (cli.c). */
#ifndef SG_CLI_H
#define SG_CLI_H

/* Run `statusgw <command> ...` when argv[1] names one of the commands
 * (publish, tail, token, stats, plugins, webhooks, help): its exit status.
 * -1 when it names none (the gateway runs). */
int sg_cli(int argc, char **argv);

#endif
