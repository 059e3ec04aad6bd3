/* The one clock: monotonic time for durations and deadlines, wall time for
 * timestamps. Between hold and release the held clock stands still: the
 * updates of one request are received at one instant, and reading the
 * clock once per request rather than several times per update is
 * measurably cheaper. Budgets and deadlines (plugin calls, request
 * deadlines) read the running clock, which a hold never stops. */
#ifndef SG_CLOCK_H
#define SG_CLOCK_H

#include <stdint.h>

void sg_clock_hold(void);
void sg_clock_release(void);

/* Held-aware: the instant of the request being handled, when held. */
uint64_t sg_clock_mono_ns(void);
int64_t sg_clock_wall_ms(void); /* Unix ms */

/* Never held: now, for budgets and deadlines. */
uint64_t sg_clock_running_ns(void);
int64_t sg_clock_running_wall_ms(void);

#endif
