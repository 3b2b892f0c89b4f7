/* Test engine with only start_task and stop_task; every optional op is NULL. The
 * table without start_task and a symbol whose address is NULL come from the same file. */
#include <stdio.h>

#include "etmem_engine.h"

int started_tasks;

static int start(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    started_tasks++;
    return 0;
}

static void stop(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    started_tasks--;
}

struct engine_ops minimal_ops = { .start_task = start, .stop_task = stop };
struct engine_ops empty_ops;
