/* Test engine linked with -letmemd_scan: its own thread scans the task's first pid
 * twice through the scan library and keeps what it saw for the "stats" command,
 * overall and inside the task's `hot` and `cold` ranges (task keys, "start-end" hex). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etmem_engine.h"

struct result {
    pthread_t thread;
    volatile int done;
    int init, vmas_ok, refs_ret[2];
    unsigned long vma_cnt, vma_bytes, pages, pte, huge, accessed, sorted, in_vmas;
    long max_count;
    unsigned long hot[2], cold[2];          /* ranges from the task keys */
    unsigned long hot_pages, cold_pages;
    long hot_min, cold_max;
};

static void read_range(GKeyFile *config, const char *key, unsigned long range[2])
{
    gchar *text = g_key_file_get_string(config, "task", key, NULL);
    if (text != NULL)
        sscanf(text, "%lx-%lx", &range[0], &range[1]);
    g_free(text);
}

static int fill_task(GKeyFile *config, struct task *tk)
{
    struct result *r = calloc(1, sizeof(*r));
    read_range(config, "hot", r->hot);
    read_range(config, "cold", r->cold);
    r->hot_min = 1000;
    r->cold_max = -1;
    tk->params = r;
    return 0;
}

static void clear_task(struct task *tk)
{
    free(tk->params);
    tk->params = NULL;
}

static void *scan_thread(void *arg)
{
    struct task *tk = arg;
    struct result *r = tk->params;
    struct page_refs *refs = NULL;
    struct vmas *vmas;
    char pid[32];

    r->init = etmemd_scan_init();
    snprintf(pid, sizeof(pid), "%u", tk->pids ? tk->pids->pid : 0);
    vmas = etmemd_get_vmas(pid, NULL, 0, true);
    r->vmas_ok = vmas != NULL;
    if (vmas != NULL) {
        r->vma_cnt = vmas->vma_cnt;
        for (struct vma *v = vmas->vma_list; v != NULL; v = v->next)
            r->vma_bytes += v->end - v->start;
        r->refs_ret[0] = etmemd_get_page_refs(vmas, pid, &refs, 0);
        /* a second between the passes, as a round's interval: back to back, the second pass
         * sees only the moment since the first, which a busy machine's workload may miss */
        sleep(1);
        r->refs_ret[1] = etmemd_get_page_refs(vmas, pid, &refs, 0);
        r->sorted = 1;
        r->in_vmas = 1;
        for (struct page_refs *p = refs; p != NULL; p = p->next) {
            int inside = 0;
            r->pages++;
            if (p->type == PTE_TYPE)
                r->pte++;
            else
                r->huge++;
            if (p->count > 0)
                r->accessed++;
            if (p->count > r->max_count)
                r->max_count = p->count;
            if (p->addr >= r->hot[0] && p->addr < r->hot[1]) {
                r->hot_pages++;
                if (p->count < r->hot_min)
                    r->hot_min = p->count;
            }
            if (p->addr >= r->cold[0] && p->addr < r->cold[1]) {
                r->cold_pages++;
                if (p->count > r->cold_max)
                    r->cold_max = p->count;
            }
            if (p->next != NULL && p->next->addr <= p->addr)
                r->sorted = 0;
            for (struct vma *v = vmas->vma_list; v != NULL; v = v->next)
                if (p->addr >= v->start && p->addr < v->end)
                    inside = 1;
            if (!inside)
                r->in_vmas = 0;
        }
        etmemd_free_page_refs(refs);
        etmemd_free_vmas(vmas);
    }
    etmemd_scan_exit();
    r->done = 1;
    return NULL;
}

static int start(struct engine *eng, struct task *tk)
{
    struct result *r = tk->params;
    (void)eng;
    return pthread_create(&r->thread, NULL, scan_thread, tk);
}

static void stop(struct engine *eng, struct task *tk)
{
    struct result *r = tk->params;
    (void)eng;
    pthread_join(r->thread, NULL);
}

static int command(struct engine *eng, struct task *tk, char *cmd, int fd)
{
    struct result *r;
    (void)eng;
    (void)cmd;
    if (tk == NULL || tk->params == NULL)
        return -1;
    r = tk->params;
    dprintf(fd, "done=%d init=%d vmas_ok=%d vma_cnt=%lu vma_bytes=%lu refs=%d,%d pages=%lu pte=%lu huge=%lu "
            "accessed=%lu max_count=%ld sorted=%lu in_vmas=%lu hot_pages=%lu hot_min=%ld cold_pages=%lu cold_max=%ld\n",
            r->done, r->init, r->vmas_ok, r->vma_cnt, r->vma_bytes, r->refs_ret[0], r->refs_ret[1], r->pages,
            r->pte, r->huge, r->accessed, r->max_count, r->sorted, r->in_vmas, r->hot_pages, r->hot_min,
            r->cold_pages, r->cold_max);
    return 0;
}

struct engine_ops scan_ops = {
    .fill_task_params = fill_task,
    .clear_task_params = clear_task,
    .start_task = start,
    .stop_task = stop,
    .eng_mgt_func = command,
};
