#include "rate.h"

void sg_rate_init(sg_rate *r, double per_s, double burst)
{
    r->interval_ms = per_s > 0 ? 1000.0 / per_s : 0;
    r->tolerance_ms = burst > 1 ? (burst - 1) * r->interval_ms : 0;
    r->tat_ms = 0;
}

int64_t sg_rate_take(sg_rate *r, int64_t now_ms)
{
    if (r->interval_ms <= 0) return 0;
    double now = (double)now_ms;
    double tat = r->tat_ms > now ? r->tat_ms : now;
    double over = tat - now - r->tolerance_ms;
    if (over > 0) {
        int64_t wait = (int64_t)over;
        return wait < over ? wait + 1 : wait; /* rounded up: at now + wait it passes */
    }
    r->tat_ms = tat + r->interval_ms;
    return 0;
}
