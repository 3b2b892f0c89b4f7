/* Prints sizes and field offsets of the ABI structures, for comparison with ctypes. */
#include <stddef.h>
#include <stdio.h>

#include "etmem_engine.h"

#define F(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
#define S(s) printf(#s " %zu\n", sizeof(struct s))

int main(void)
{
    S(engine); F(engine, name); F(engine, params); F(engine, proj); F(engine, ops); F(engine, tasks);
    F(engine, page_cnt); F(engine, next); F(engine, handler);
    S(task); F(task, max_threads); F(task, swap_flag); F(task, pids); F(task, eng); F(task, params);
    F(task, task_pt); F(task, timer_inst); F(task, threadpool_inst); F(task, next);
    S(task_pid); F(task_pid, rt_swapin_rate); F(task_pid, params); F(task_pid, tk); F(task_pid, next);
    S(project); F(project, type); F(project, scan_param); F(project, sysmem_threshold);
    F(project, swapcache_low_wmark); F(project, start); F(project, wmark_set); F(project, engs); F(project, next_entry);
    S(page_refs); F(page_refs, count); F(page_refs, type); F(page_refs, next);
    S(vma); F(vma, stat); F(vma, offset); F(vma, inode); F(vma, path); F(vma, major); F(vma, minor); F(vma, next);
    S(vmas); F(vmas, vma_list);
    S(engine_ops); F(engine_ops, start_task); F(engine_ops, eng_mgt_func);
    S(page_scan); F(page_scan, sleep);
    return 0;
}
