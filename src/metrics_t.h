/* The counters the transports write, owned by metrics (metrics.c reads
 * them for /metrics and /api/v1/stats); a type header, included by the
 * server's type. */
#ifndef SG_METRICS_T_H
#define SG_METRICS_T_H

#include <stdint.h>

/* What the transports count, read by /metrics and /api/v1/stats. */
typedef struct sg_net_stats {
    uint64_t requests;            /* HTTP requests parsed */
    uint64_t refused_connections; /* past max_connections */
    uint64_t refused_per_ip;      /* past max_connections_per_ip */
    uint64_t slow_consumers;      /* subscribers cut off at output_cap_bytes */
    uint64_t delivered_sse;       /* updates written to event streams */
    uint64_t delivered_ws;        /* updates pushed to channels */
    uint64_t delivered_lp;        /* updates queued for long-poll sessions */
    int n_sse, n_ws;              /* open streams and sockets */
} sg_net_stats;

#endif
