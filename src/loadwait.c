#include "loadwait.h"

#include <stdlib.h>

typedef struct load_waiter {
    sg_conn *c; /* NULL once the connection is gone */
    int left;
    int status; /* the first failure's */
    char id[SG_MAX_CONV_ID + 1];
} load_waiter;

static void on_loaded(void *arg, sg_conv *cv, int status)
{
    load_waiter *w = arg;
    if (status && !w->status) {
        w->status = status;
        snprintf(w->id, sizeof(w->id), "%s", cv->id);
    }
    if (--w->left) return;
    sg_conn *c = w->c;
    if (c && w->status) {
        sg_error err;
        if (w->status == 404)
            sg_error_set(&err, 404, "conversation_not_found", NULL, "no conversation '%s' is active", w->id);
        else
            sg_error_set(&err, 503, "engine_unavailable", NULL, "conversation '%s' could not be read; retry shortly", w->id);
        err.retry_after = w->status == 404 ? 0 : 1;
        sg_http_error(c, &err);
        sg_conn_resume(c);
    } else if (c) {
        sg_conn_retry(c); /* handled again, its conversations loaded */
    }
    free(w);
}

int sg_await_loaded(sg_conn *c, sg_hub *h, sg_conv *const *cvs, int n)
{
    int loading = 0;
    for (int i = 0; i < n; i++)
        loading += cvs[i] && cvs[i]->loading;
    if (!loading) return 0;
    load_waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        sg_error err;
        sg_error_set(&err, 503, "out_of_memory", NULL, "the gateway is out of memory");
        sg_http_error(c, &err);
        return 1;
    }
    w->c = c;
    w->left = loading;
    sg_conn_await(c, &w->c);
    for (int i = 0; i < n; i++)
        if (cvs[i] && cvs[i]->loading) sg_hub_when_loaded(h, cvs[i], on_loaded, w);
    return 1;
}
