/* Test engines that would take upstream's etmemd down with them; each ops table is one
 * way to fail:
 *   null_start_ops   start_task dereferences NULL
 *   exit_fill_ops    fill_eng_params calls exit(3)
 *   thread_crash_ops start_task starts a thread that dereferences NULL 300 ms later
 *   hang_stop_ops    stop_task never returns
 *   crash_cmd_ops    eng_mgt_func writes a line, then dereferences NULL
 *   spawn_null_ops   start_task forks a child that sleeps 60 s holding every descriptor
 *                    (its pid into the engine key pid_file), then dereferences NULL
 * and two symbols that are no ops table at all:
 *   not_a_table      a function
 *   small_table      a data object of 16 bytes */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etmem_engine.h"

static int *volatile nowhere;   /* NULL, and the compiler cannot know it */

static int start_null(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    return *nowhere;
}

static void stop_nothing(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
}

static int start_fine(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    return 0;
}

static int fill_exit(GKeyFile *config, struct engine *eng)
{
    (void)config;
    (void)eng;
    exit(3);
}

static void *crash_later(void *arg)
{
    (void)arg;
    usleep(300000);
    *nowhere = 1;
    return NULL;
}

static int start_thread(struct engine *eng, struct task *tk)
{
    pthread_t thread;
    (void)eng;
    (void)tk;
    if (pthread_create(&thread, NULL, crash_later, NULL) != 0)
        return -1;
    return pthread_detach(thread);
}

static void stop_hang(struct engine *eng, struct task *tk)
{
    (void)eng;
    (void)tk;
    for (;;)
        pause();
}

static int command_crash(struct engine *eng, struct task *tk, char *cmd, int fd)
{
    static const char line[] = "about to crash\n";
    (void)eng;
    (void)tk;
    if (strcmp(cmd, "crash") != 0) {
        write(fd, "fine\n", 5);
        return 0;
    }
    if (write(fd, line, sizeof(line) - 1) < 0)
        return -1;
    return *nowhere;
}

static int fill_pid_file(GKeyFile *config, struct engine *eng)
{
    eng->params = g_key_file_get_string(config, "engine", "pid_file", NULL);
    return eng->params == NULL ? -1 : 0;
}

static int start_spawn_null(struct engine *eng, struct task *tk)
{
    FILE *f;
    pid_t child = fork();
    (void)tk;
    if (child == 0) {
        sleep(60);
        _exit(0);
    }
    f = fopen(eng->params, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", (int)child);
        fclose(f);
    }
    return *nowhere;
}

struct engine_ops null_start_ops = { .start_task = start_null, .stop_task = stop_nothing };
struct engine_ops exit_fill_ops = { .fill_eng_params = fill_exit, .start_task = start_fine };
struct engine_ops thread_crash_ops = { .start_task = start_thread, .stop_task = stop_nothing };
struct engine_ops hang_stop_ops = { .start_task = start_fine, .stop_task = stop_hang };
struct engine_ops spawn_null_ops = { .fill_eng_params = fill_pid_file, .start_task = start_spawn_null };
struct engine_ops crash_cmd_ops = { .start_task = start_fine, .stop_task = stop_nothing,
                                    .eng_mgt_func = command_crash };

int not_a_table(void)
{
    return 0;
}

char small_table[16];
