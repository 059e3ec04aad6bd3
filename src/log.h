/* One line per event, key=value fields, on stderr. */
#ifndef SG_LOG_H
#define SG_LOG_H

enum sg_log_level { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR };

extern int sg_log_level;

/* Parse "debug" / "info" / "warn" / "error"; -1 when unknown. */
int sg_log_parse_level(const char *s);

/* Print "ts=… level=… event=<event> <fields>" where fields is a printf
 * format of further key=value pairs. Values that may hold spaces or quotes
 * go through sg_log_q(). */
void sg_log(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quote a value for a log line: "…" with \" and \\ and control bytes
 * escaped. Returns a pointer into one of a few rotating static buffers,
 * valid until the next few calls; long values are cut. */
const char *sg_log_q(const char *s);

#endif
