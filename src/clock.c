#include "clock.h"

#include <time.h>

static int clock_held;
static uint64_t held_mono_ns;
static int64_t held_wall_ms;

uint64_t sg_clock_running_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int64_t sg_clock_running_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sg_clock_hold(void)
{
    held_mono_ns = sg_clock_running_ns();
    held_wall_ms = sg_clock_running_wall_ms();
    clock_held = 1;
}

void sg_clock_release(void)
{
    clock_held = 0;
}

uint64_t sg_clock_mono_ns(void)
{
    return clock_held ? held_mono_ns : sg_clock_running_ns();
}

int64_t sg_clock_wall_ms(void)
{
    return clock_held ? held_wall_ms : sg_clock_running_wall_ms();
}
