/* The C tests' harness: TAP lines ("ok N - name" / "not ok N - name" with
 * a "# file:line: condition" for the first failed CHECK), counted by
 * scripts/test. One test is a function run() calls. */
#ifndef SG_SPEC_TAP_H
#define SG_SPEC_TAP_H

#include <stdio.h>

static int n_tests, n_failed, cur_failed;
static const char *cur_name;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (!cur_failed) printf("# %s: %s:%d: %s\n", cur_name, __FILE__, __LINE__, #cond);    \
            cur_failed = 1;                                                                        \
        }                                                                                          \
    } while (0)

static void run(const char *name, void (*fn)(void))
{
    cur_name = name;
    cur_failed = 0;
    fn();
    n_tests++;
    if (cur_failed) n_failed++;
    printf("%s %d - %s\n", cur_failed ? "not ok" : "ok", n_tests, name);
}

#endif
