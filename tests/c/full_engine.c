/* Test engine with all nine ops: logs each call to the file named by its engine key
 * log_file, runs a thread per started task, and answers commands through the fd. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etmem_engine.h"

struct eng_params { char *log_file; char *private_value; };
struct task_params { char *private_value; volatile int stop; pthread_t thread; int ticks; };
struct pid_params { unsigned int pid; };

static void note(struct engine *eng, const char *fmt, const char *a, const char *b)
{
    struct eng_params *p = eng->params;
    FILE *f = fopen(p->log_file, "a");
    if (f == NULL)
        return;
    fprintf(f, fmt, a, b);
    fputc('\n', f);
    fclose(f);
}

static int fill_eng(GKeyFile *config, struct engine *eng)
{
    struct eng_params *p = calloc(1, sizeof(*p));
    p->log_file = g_key_file_get_string(config, "engine", "log_file", NULL);
    p->private_value = g_key_file_get_string(config, "engine", "engine_private_key", NULL);
    if (p->log_file == NULL) {
        free(p);
        return -1;
    }
    eng->params = p;
    note(eng, "fill_eng_params %s type=%s", eng->name, eng->engine_type == THIRDPARTY_ENGINE ? "7" : "?");
    note(eng, "project %s private=%s", eng->proj->name, p->private_value ? p->private_value : "(none)");
    return 0;
}

static void clear_eng(struct engine *eng)
{
    struct eng_params *p = eng->params;
    note(eng, "clear_eng_params %s%s", eng->name, "");
    g_free(p->log_file);
    g_free(p->private_value);
    free(p);
    eng->params = NULL;
}

static int fill_task(GKeyFile *config, struct task *tk)
{
    struct task_params *p = calloc(1, sizeof(*p));
    p->private_value = g_key_file_get_string(config, "task", "task_private_key", NULL);
    tk->params = p;
    note(tk->eng, "fill_task_params %s private=%s", tk->name, p->private_value ? p->private_value : "(none)");
    if (p->private_value != NULL && strcmp(p->private_value, "refuse") == 0) {
        g_free(p->private_value);
        free(p);
        tk->params = NULL;
        return -1;
    }
    return 0;
}

static void clear_task(struct task *tk)
{
    struct task_params *p = tk->params;
    note(tk->eng, "clear_task_params %s%s", tk->name, "");
    g_free(p->private_value);
    free(p);
    tk->params = NULL;
}

static void *worker(void *arg)
{
    struct task *tk = arg;
    struct task_params *p = tk->params;
    while (!p->stop) {
        p->ticks++;
        usleep(10000);
    }
    return NULL;
}

static int start(struct engine *eng, struct task *tk)
{
    struct task_params *p = tk->params;
    char pids[256] = "";
    struct page_scan *scan = eng->proj->scan_param;
    char loop[32];
    for (struct task_pid *tp = tk->pids; tp != NULL; tp = tp->next) {
        struct pid_params *pp = tp->params;
        char one[32];
        snprintf(one, sizeof(one), "%s%u", pids[0] ? "," : "", pp ? pp->pid : 0);
        strncat(pids, one, sizeof(pids) - strlen(pids) - 1);
    }
    snprintf(loop, sizeof(loop), "%d", scan ? scan->loop : -1);
    note(eng, "start_task pids=%s loop=%s", pids, loop);
    note(eng, "start_task started=%s task=%s", eng->proj->start ? "yes" : "no", tk->name);
    p->stop = 0;
    return pthread_create(&p->thread, NULL, worker, tk);
}

static void stop(struct engine *eng, struct task *tk)
{
    struct task_params *p = tk->params;
    p->stop = 1;
    pthread_join(p->thread, NULL);
    note(eng, "stop_task %s%s", tk->name, "");
}

static int alloc_pid(struct engine *eng, struct task_pid **tk_pid)
{
    struct pid_params *pp = malloc(sizeof(*pp));
    char pid[32];
    pp->pid = (*tk_pid)->pid;
    (*tk_pid)->params = pp;
    snprintf(pid, sizeof(pid), "%u", pp->pid);
    note(eng, "alloc_pid_params %s task=%s", pid, (*tk_pid)->tk->name);
    return 0;
}

static void free_pid(struct engine *eng, struct task_pid **tk_pid)
{
    char pid[32];
    snprintf(pid, sizeof(pid), "%u", (*tk_pid)->pid);
    note(eng, "free_pid_params %s%s", pid, "");
    free((*tk_pid)->params);
    (*tk_pid)->params = NULL;
}

static int command(struct engine *eng, struct task *tk, char *cmd, int fd)
{
    struct eng_params *ep = eng->params;
    if (strcmp(cmd, "fail") == 0) {
        dprintf(fd, "cannot do that\n");
        return -1;
    }
    if (strcmp(cmd, "engines") == 0) {
        for (struct engine *e = eng->proj->engs; e != NULL; e = e->next)
            dprintf(fd, "%s%s", e->name, e->next ? " " : "\n");
        return 0;
    }
    if (strcmp(cmd, "big") == 0) {
        for (int i = 0; i < 20000; i++)
            dprintf(fd, "line %05d of a long reply\n", i);
        return 0;
    }
    dprintf(fd, "engine %s cmd %s private %s", eng->name, cmd, ep->private_value ? ep->private_value : "(none)");
    if (tk != NULL) {
        struct task_params *p = tk->params;
        dprintf(fd, " task %s private %s ticking %s", tk->name,
                p->private_value ? p->private_value : "(none)", p->ticks > 0 ? "yes" : "no");
    }
    write(fd, "\xff\xfe", 2);
    dprintf(fd, " end\n");
    return 0;
}

struct engine_ops full_ops = {
    .fill_eng_params = fill_eng,
    .clear_eng_params = clear_eng,
    .fill_task_params = fill_task,
    .clear_task_params = clear_task,
    .start_task = start,
    .stop_task = stop,
    .alloc_pid_params = alloc_pid,
    .free_pid_params = free_pid,
    .eng_mgt_func = command,
};
