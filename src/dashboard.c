#include "dashboard.h"

#include "security.h"

#include <string.h>

/* The page, assembled in: no files to install, nothing fetched from
 * elsewhere (it works offline). */
__asm__(".section .rodata\n"
        ".global sg_dashboard_page\n"
        "sg_dashboard_page:\n"
        ".incbin \"dashboard/index.html\"\n"
        ".global sg_dashboard_page_end\n"
        "sg_dashboard_page_end:\n"
        ".byte 0\n"
        ".previous\n");
extern const char sg_dashboard_page[], sg_dashboard_page_end[];

/* what the page may load and talk to: itself */
#define PAGE_HEADERS                                                                                              \
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "      \
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n" \
    "X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n"

void sg_dashboard_handle(sg_conn *c, sg_req *r)
{
    sg_error err;
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        sg_error_set(&err, 405, "method_not_allowed", NULL, "use GET");
        sg_http_error(c, &err);
        return;
    }
    /* with an admin key the page is for anyone (it holds nothing: it asks
     * for the key); without, for this machine only, as the admin API */
    if (!sg_security_dashboard_ok(c->srv->security, r->client[0] ? r->client : c->peer)) {
        sg_error_set(&err, 403, "forbidden", NULL,
                     "the dashboard answers loopback only until security.admin_key is set");
        sg_http_error(c, &err);
        return;
    }
    sg_http_respond(c, 200, "text/html; charset=utf-8", sg_dashboard_page,
                    (size_t)(sg_dashboard_page_end - sg_dashboard_page), PAGE_HEADERS);
}
