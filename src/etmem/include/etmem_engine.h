/*
 * etmem_engine.h: the C ABI of third-party etmem engines, for authors of new C engines.
 *
 * Written for etmem for Python from the documented ABI of openEuler etmem's third-party
 * engines: a shared library exports a `struct engine_ops` whose nine functions etmemd
 * calls, and may use the scan library (libetmemd_scan.so) to read page access counts.
 * etmem for Python loads such libraries with `[engine] name=thirdparty`, `eng_name`,
 * `libname` (absolute, owned by root:root, mode 0500 or 0700) and `ops_name`; docs/plugins.md
 * explains when each function is called and from which thread.
 *
 * Upstream's engines include etmemd_thirdparty_export.h (and etmemd_scan_export.h to scan):
 * those headers, in the same directory, include this one, so such engines build unchanged.
 *
 * Build an engine:
 *   cc -shared -fPIC -o my_engine.so my_engine.c -I$(python3 -m etmem.engines.legacy_abi --include) \
 *      $(pkg-config --cflags --libs glib-2.0) $(python3 -m etmem.engines.legacy_abi --scan-lib)
 */
#ifndef ETMEM_ENGINE_H
#define ETMEM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>
/* GLib's key files are for engines; a program that only scans needs no GLib */
#if !defined(ETMEM_SCAN_LIBRARY) && defined(__has_include)
#if __has_include(<glib.h>)
#include <glib.h>
#define ETMEM_ENGINE_HAVE_GLIB 1
#endif
#endif
#ifndef ETMEM_ENGINE_HAVE_GLIB
typedef struct _GKeyFile GKeyFile;
#endif

#define THIRDPARTY_ENGINE 7          /* engine_type of every third-party engine */

enum scan_type { PAGE_SCAN = 0, REGION_SCAN, PSI_SCAN };
enum page_type { PTE_TYPE = 0, PMD_TYPE, PUD_TYPE, PAGE_TYPE_INVAL };

/* project->scan_param of a scan_type=page project */
struct page_scan {
    int interval;
    int loop;
    int sleep;
};

struct engine;
struct task;

/* One project; engs lists the project's third-party engines. */
struct project {
    char *name;
    enum scan_type type;
    void *scan_param;                /* struct page_scan * for PAGE_SCAN, else NULL */
    int sysmem_threshold;            /* -1 when not configured */
    int swapcache_high_wmark;        /* 0 unless wmark_set */
    int swapcache_low_wmark;
    bool start;                      /* the project is started */
    bool wmark_set;
    struct engine *engs;
    struct project *next_entry;      /* always NULL in etmem for Python */
};

/* One target process of a task; the list is resolved when the task starts. */
struct task_pid {
    unsigned int pid;
    float rt_swapin_rate;
    void *params;                    /* the engine's, set in alloc_pid_params */
    struct task *tk;
    struct task_pid *next;
};

struct task {
    char *type;                      /* "pid" or "name" */
    char *value;
    char *name;
    int max_threads;
    int swap_flag;                   /* 1: only VMAs madvised with MADV_SWAPFLAG */
    struct task_pid *pids;
    struct engine *eng;
    void *params;                    /* the engine's, set in fill_task_params */
    pthread_t task_pt;               /* free for the engine's use */
    void *timer_inst;                /* opaque, unused */
    void *threadpool_inst;           /* opaque, unused */
    struct task *next;
};

struct engine_ops;

struct engine {
    int engine_type;                 /* THIRDPARTY_ENGINE */
    char *name;                      /* eng_name */
    void *params;                    /* the engine's, set in fill_eng_params */
    struct project *proj;
    struct page_refs *page_ref;      /* unused by etmem */
    struct engine_ops *ops;
    struct task *tasks;
    uint64_t page_cnt;
    struct engine *next;
    void *handler;                   /* the library's dlopen handle */
};

/*
 * The table named by ops_name. Every entry may be NULL; a NULL start_task makes
 * `etmem project start` fail for the engine, a NULL eng_mgt_func makes every
 * `etmem engine` command fail. Functions returning int return 0 on success.
 */
struct engine_ops {
    int (*fill_eng_params)(GKeyFile *config, struct engine *eng);
    void (*clear_eng_params)(struct engine *eng);
    int (*fill_task_params)(GKeyFile *config, struct task *task);
    void (*clear_task_params)(struct task *tk);
    int (*start_task)(struct engine *eng, struct task *tk);
    void (*stop_task)(struct engine *eng, struct task *tk);
    int (*alloc_pid_params)(struct engine *eng, struct task_pid **tk_pid);
    void (*free_pid_params)(struct engine *eng, struct task_pid **tk_pid);
    /* Write the reply to fd; never the bytes 0xFF or 0xFE (etmem drops them). */
    int (*eng_mgt_func)(struct engine *eng, struct task *tk, char *cmd, int fd);
};

/* ---- the scan library: libetmemd_scan.so ---------------------------------------- */

#define VMA_PATH_STR_LEN        256
#define VMA_MAJOR_MINOR_LEN     8

#define SCAN_AS_HUGE            0100000000      /* count small pages of a huge page as one */
#define SCAN_IGN_HOST           0200000000      /* a VM's guest accesses only */
#define VMA_SCAN_FLAG           0x1000          /* only VMAs madvised with MADV_SWAPFLAG */

enum { VMA_STAT_READ = 0, VMA_STAT_WRITE, VMA_STAT_EXEC, VMA_STAT_MAY_SHARE, VMA_STAT_INIT };

struct vma {
    uint64_t start;
    uint64_t end;
    bool stat[VMA_STAT_INIT];                   /* r, w, x, shared */
    uint64_t offset;
    uint64_t inode;
    char path[VMA_PATH_STR_LEN];
    char major[VMA_MAJOR_MINOR_LEN];            /* device, hexadecimal as in maps */
    char minor[VMA_MAJOR_MINOR_LEN];
    struct vma *next;
};

struct vmas {
    uint64_t vma_cnt;
    struct vma *vma_list;
};

/* One page (or huge page) seen by a scan, in address order. */
struct page_refs {
    uint64_t addr;
    int count;                       /* accesses summed over the passes added to the list */
    enum page_type type;
    struct page_refs *next;
};

/* 0 when a page access source is available, -1 otherwise. */
int etmemd_scan_init(void);
void etmemd_scan_exit(void);

/*
 * The VMAs of process `pid` (decimal text) whose smaps VmFlags include every one of
 * vmflags_array[0..vmflags_num), only private anonymous ones when is_anon_only.
 * NULL on failure. Free with etmemd_free_vmas.
 */
struct vmas *etmemd_get_vmas(const char *pid, char **vmflags_array, int vmflags_num, bool is_anon_only);
void etmemd_free_vmas(struct vmas *vmas);

/*
 * One scan pass over vmas of pid, added into *page_refs: the count of a page already
 * listed grows, new pages are inserted in address order. The list is malloc'ed and
 * freed with etmemd_free_page_refs. 0 on success, -1 on failure.
 */
int etmemd_get_page_refs(const struct vmas *vmas, const char *pid, struct page_refs **page_refs, int flags);
void etmemd_free_page_refs(struct page_refs *page_refs);

#endif
