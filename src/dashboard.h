/* The dashboard at /dashboard: one page (dashboard/index.html, in the
 * binary) that watches the gateway through its own public and admin APIs. */
#ifndef SG_DASHBOARD_H
#define SG_DASHBOARD_H

#include "http.h"

/* GET /dashboard: the page to anyone once security.admin_key is set (it
 * asks for the key and sends it), else to loopback clients only. */
void sg_dashboard_handle(sg_conn *c, sg_req *r);

#endif
