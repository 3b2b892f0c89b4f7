/* A third-party engine written as upstream's documentation tells engine authors to:
 * only upstream's header, GLib key files for its own keys, the nine functions in a
 * struct engine_ops. It must build unchanged against etmem for Python's headers (it uses
 * free() and FALSE without including what declares them: upstream's headers bring them).
 *
 * [engine] key `limit` and [task] key `weight` are its own; the `report` command answers
 * with what it holds. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "etmemd_thirdparty_export.h"

static char *own_key(GKeyFile *config, const char *group, const char *key)
{
    if (g_key_file_has_key(config, group, key, NULL) == FALSE)
        return NULL;
    return g_key_file_get_string(config, group, key, NULL);
}

static int sample_fill_eng(GKeyFile *config, struct engine *eng)
{
    eng->params = own_key(config, "engine", "limit");
    return eng->params == NULL ? -1 : 0;      /* the key is required */
}

static void sample_clear_eng(struct engine *eng)
{
    free(eng->params);
    eng->params = NULL;
}

static int sample_fill_task(GKeyFile *config, struct task *tk)
{
    tk->params = own_key(config, "task", "weight");
    return 0;
}

static void sample_clear_task(struct task *tk)
{
    free(tk->params);
    tk->params = NULL;
}

static int sample_start(struct engine *eng, struct task *tk)
{
    return eng->engine_type == THIRDPARTY_ENGINE && tk->eng == eng ? 0 : -1;
}

static void sample_stop(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
}

static int sample_alloc_pid(struct engine *eng, struct task_pid **tk_pid)
{
    (void)eng;
    (*tk_pid)->params = NULL;
    return 0;
}

static void sample_free_pid(struct engine *eng, struct task_pid **tk_pid)
{
    (void)eng;
    (void)tk_pid;
}

static int sample_command(struct engine *eng, struct task *tk, char *cmd, int fd)
{
    char reply[256];
    int n;

    if (strcmp(cmd, "report") != 0)
        return -1;
    n = snprintf(reply, sizeof(reply), "%s limit=%s task=%s weight=%s project=%s\n", eng->name,
                 (char *)eng->params, tk != NULL ? tk->name : "-",
                 tk != NULL && tk->params != NULL ? (char *)tk->params : "-", eng->proj->name);
    return write(fd, reply, (size_t)n) == n ? 0 : -1;
}

struct engine_ops sample_ops = {
    .fill_eng_params = sample_fill_eng,
    .clear_eng_params = sample_clear_eng,
    .fill_task_params = sample_fill_task,
    .clear_task_params = sample_clear_task,
    .start_task = sample_start,
    .stop_task = sample_stop,
    .alloc_pid_params = sample_alloc_pid,
    .free_pid_params = sample_free_pid,
    .eng_mgt_func = sample_command,
};
