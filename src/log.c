#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int sg_log_level = SG_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

int sg_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0) return i;
    return -1;
}

void sg_log(int level, const char *event, const char *fmt, ...)
{
    if (level < sg_log_level) return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level], event);
    if (fmt && *fmt && n < (int)sizeof(line) - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
        n = m < 0 ? n : n + m;
    }
    if (n > (int)sizeof(line) - 2) n = sizeof(line) - 2;
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}

const char *sg_log_q(const char *s)
{
    static _Thread_local char bufs[4][512]; /* the store's writer thread logs too */
    static _Thread_local int next;
    char *b = bufs[next++ & 3];
    size_t o = 0;
    b[o++] = '"';
    for (; s && *s && o < sizeof(bufs[0]) - 6; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            b[o++] = '\\';
            b[o++] = c;
        } else if (c < 0x20) {
            o += snprintf(b + o, 5, "\\x%02x", c);
        } else {
            b[o++] = c;
        }
    }
    b[o++] = '"';
    b[o] = 0;
    return b;
}
