/* Test engine whose start_task fails, and whose fill_eng_params fails on request. */
#include <string.h>

#include "etmem_engine.h"

static int fill_eng(GKeyFile *config, struct engine *eng)
{
    gchar *refuse = g_key_file_get_string(config, "engine", "refuse", NULL);
    int ret = (refuse != NULL && strcmp(refuse, "yes") == 0) ? -1 : 0;
    g_free(refuse);
    (void)eng;
    return ret;
}

static int start(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    return -22;
}

static void stop(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
}

struct engine_ops failing_ops = {
    .fill_eng_params = fill_eng,
    .start_task = start,
    .stop_task = stop,
};
