/* One rate limiter for every limit the gateway keeps in C (API keys'
 * publishes, a channel's subscription changes): GCRA, a token bucket of
 * `burst` tokens refilled at `per_s` a second, kept as one time, the
 * theoretical arrival time of the next event (HAProxy's freq_ctr and the
 * shipped rate_limit.lua count the same way). */
#ifndef SG_RATE_H
#define SG_RATE_H

#include <stdint.h>

typedef struct sg_rate {
    double interval_ms;  /* 1000 / per_s; 0: no limit */
    double tolerance_ms; /* (burst - 1) intervals */
    double tat_ms;       /* when the bucket is full again */
} sg_rate;

void sg_rate_init(sg_rate *r, double per_s, double burst);

/* Take one event at now_ms: 0 when it passes (and is counted), else the
 * milliseconds until one would (nothing is counted). */
int64_t sg_rate_take(sg_rate *r, int64_t now_ms);

#endif
