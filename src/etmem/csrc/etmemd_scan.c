/*
 * libetmemd_scan.so for etmem for Python: the scan library C engines link against.
 *
 * It exports the six functions of upstream's scan library with its signatures,
 * structures and rules (include/etmem_engine.h): etmemd_scan_init() before page scans,
 * once (a second call before etmemd_scan_exit() fails); VMAs of a process; page passes
 * added into one page_refs list sorted by address.
 *
 * It works in any C program. VMAs are always read here, from /proc/PID/maps (smaps
 * when VmFlags are asked for). A page pass is done by the backend etmemd registers
 * with etmem_scan_set_backend() when there is one (etmem's Scanner in Python, with the
 * project's scanner source; ctypes callbacks take the GIL themselves, so engines may
 * call from any thread), and here otherwise, from the first source the kernel offers,
 * in the order etmem's `auto` prefers them: openEuler's /proc/PID/idle_pages, idle page
 * tracking (/sys/kernel/mm/page_idle/bitmap over /proc/PID/pagemap), or, on any kernel,
 * /proc/PID/clear_refs and smaps `Referenced:` (one verdict per VMA, as etmem's smaps
 * source). Every pass counts what was used since the previous one and clears it. The
 * page passes of both ways are cut out of the process's VMAs in the same way (VMAs it
 * can use, clipped to the ones asked for), so both give the same list.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define ETMEM_SCAN_LIBRARY
#include "../include/etmem_engine.h"

#define PAGE_SHIFT 12
#define PAGE_BYTES (1UL << PAGE_SHIFT)
#define PMD_BYTES (1UL << 21)
#define PUD_BYTES (1UL << 30)

/* Values of a window's kinds[]: what page, if any, each 4 KiB slot was seen as. */
enum { KIND_NONE = 0, KIND_PTE, KIND_PMD, KIND_PUD };

/* One scan pass as a backend hands it over: arrays malloc'ed by it, freed here. */
struct etmem_page_pass {
    uint64_t n;
    uint64_t *addr;
    int32_t *count;
    int32_t *type;
};

struct etmem_scan_backend {
    int (*init)(void);
    void (*exit)(void);
    int (*page_pass)(const struct vmas *vmas, const char *pid, int flags, struct etmem_page_pass *out);
};

static struct etmem_scan_backend backend;
static int have_backend;
static pthread_rwlock_t backend_lock = PTHREAD_RWLOCK_INITIALIZER;

enum source { SOURCE_NONE = 0, SOURCE_IDLE_PAGES, SOURCE_PAGE_IDLE, SOURCE_SMAPS };
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int inited;
static enum source native_source;   /* chosen by etmemd_scan_init without a backend */

/* Set (or, with NULL, clear) the backend; waits for calls in progress to end. */
void etmem_scan_set_backend(const struct etmem_scan_backend *table)
{
    pthread_rwlock_wrlock(&backend_lock);
    if (table != NULL) {
        backend = *table;
        have_backend = 1;
    } else {
        have_backend = 0;
    }
    pthread_rwlock_unlock(&backend_lock);
}

/* ---- small helpers -------------------------------------------------------------- */

/* A pid as upstream accepts it: decimal digits only. */
static int valid_pid(const char *pid)
{
    size_t i, n;

    if (pid == NULL)
        return 0;
    n = strlen(pid);
    if (n == 0 || n > 10)
        return 0;
    for (i = 0; i < n; i++)
        if (pid[i] < '0' || pid[i] > '9')
            return 0;
    return 1;
}

/* The whole of a /proc file, NUL-terminated, malloc'ed; NULL with errno set on failure. */
static char *read_file(const char *path)
{
    size_t len = 0, cap = 1 << 16;
    char *buf, *bigger;
    ssize_t got;
    int fd, saved;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    buf = malloc(cap);
    while (buf != NULL) {
        if (cap - len < 4096) {
            bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        got = read(fd, buf + len, cap - len - 1);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            saved = errno;
            free(buf);
            buf = NULL;
            errno = saved;
            break;
        }
        if (got == 0) {
            buf[len] = '\0';
            break;
        }
        len += (size_t)got;
    }
    saved = errno;
    close(fd);
    errno = saved;
    return buf;
}

static int open_proc(const char *pid, const char *name, int flags)
{
    char path[64];

    snprintf(path, sizeof(path), "/proc/%s/%s", pid, name);
    return open(path, flags | O_CLOEXEC);
}

/* pread all of len bytes (sysfs and /proc hand out less per call); the bytes read. */
static ssize_t pread_full(int fd, void *buf, size_t len, off_t at)
{
    size_t done = 0;
    ssize_t got;

    while (done < len) {
        got = pread(fd, (char *)buf + done, len - done, at + (off_t)done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return done ? (ssize_t)done : -1;
        if (got == 0)
            break;
        done += (size_t)got;
    }
    return (ssize_t)done;
}

static int pwrite_full(int fd, const void *buf, size_t len, off_t at)
{
    size_t done = 0;
    ssize_t put;

    while (done < len) {
        put = pwrite(fd, (const char *)buf + done, len - done, at + (off_t)done);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return -1;
        done += (size_t)put;
    }
    return 0;
}

/* ---- /proc/PID/maps and smaps ----------------------------------------------------- */

/* One VMA as maps (and smaps) describe it. */
struct map_entry {
    uint64_t start, end, offset, inode;
    char perms[5];
    char dev[16];
    char path[VMA_PATH_STR_LEN];
    long referenced_kb;              /* smaps only; -1 otherwise */
    char vmflags[160];               /* smaps only: the VmFlags mnemonics, space-separated */
};

struct map_list {
    size_t n, cap;
    struct map_entry *e;
};

static void map_list_free(struct map_list *list)
{
    free(list->e);
    list->e = NULL;
    list->n = list->cap = 0;
}

/* A maps line "start-end perms offset dev inode   path" into e; 0, or -1 if it is none. */
static int parse_map_line(const char *line, struct map_entry *e)
{
    unsigned long long start, end, offset, inode;
    int at = 0;

    if (sscanf(line, "%llx-%llx %4s %llx %15s %llu %n", &start, &end, e->perms, &offset, e->dev,
               &inode, &at) < 6 || at == 0)
        return -1;
    e->start = start;
    e->end = end;
    e->offset = offset;
    e->inode = inode;
    snprintf(e->path, sizeof(e->path), "%s", line + at);   /* cut at 255 bytes, as etmemd */
    e->referenced_kb = -1;
    e->vmflags[0] = '\0';
    return 0;
}

static int is_header_line(const char *line)
{
    const char *space = strchr(line, ' ');
    const char *dash = strchr(line, '-');

    return ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')) &&
           dash != NULL && (space == NULL || dash < space);
}

/* The VMAs of /proc/PID/maps, or of smaps (with Referenced and VmFlags) when smaps is set. */
static int read_maps(const char *pid, int smaps, struct map_list *out)
{
    char path[64], *text, *line, *next;
    struct map_entry *bigger, *cur = NULL;

    memset(out, 0, sizeof(*out));
    snprintf(path, sizeof(path), "/proc/%s/%s", pid, smaps ? "smaps" : "maps");
    text = read_file(path);
    if (text == NULL)
        return -1;
    for (line = text; line != NULL && *line != '\0'; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        if (is_header_line(line)) {
            if (out->n == out->cap) {
                out->cap = out->cap ? out->cap * 2 : 64;
                bigger = realloc(out->e, out->cap * sizeof(*out->e));
                if (bigger == NULL) {
                    free(text);
                    map_list_free(out);
                    errno = ENOMEM;
                    return -1;
                }
                out->e = bigger;
            }
            cur = &out->e[out->n];
            if (parse_map_line(line, cur) == 0)
                out->n++;
            else
                cur = NULL;
        } else if (cur != NULL && strncmp(line, "Referenced:", 11) == 0) {
            cur->referenced_kb = strtol(line + 11, NULL, 10);
        } else if (cur != NULL && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(cur->vmflags, sizeof(cur->vmflags), "%s", line + 8);
        }
    }
    free(text);
    return 0;
}

/* Private anonymous memory (heap, stack, unnamed mappings), as etmem's anon_only means it. */
static int is_private_anonymous(const struct map_entry *e)
{
    return e->inode == 0 && e->perms[3] == 'p' &&
           (e->path[0] == '\0' || strcmp(e->path, "[heap]") == 0 || strcmp(e->path, "[stack]") == 0 ||
            strncmp(e->path, "[anon:", 6) == 0);
}

/* vdso, vvar and other kernel-provided mappings, which no scan covers. */
static int is_special(const struct map_entry *e)
{
    static const char *const names[] = {"[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]", "[uprobes]"};
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(e->path, names[i]) == 0)
            return 1;
    return 0;
}

static int has_vmflag(const struct map_entry *e, const char *flag)
{
    const char *at = e->vmflags;
    size_t n = strlen(flag);

    while ((at = strstr(at, flag)) != NULL) {
        if ((at == e->vmflags || at[-1] == ' ') && (at[n] == ' ' || at[n] == '\0'))
            return 1;
        at += n;
    }
    return 0;
}

static const struct map_entry *covering(const struct map_list *list, uint64_t start, uint64_t end)
{
    size_t i;

    for (i = 0; i < list->n; i++)
        if (list->e[i].start <= start && end <= list->e[i].end)
            return &list->e[i];
    return NULL;
}

/* ---- etmemd_get_vmas ------------------------------------------------------------- */

int etmemd_scan_init(void)
{
    int ret = 0;

    pthread_mutex_lock(&init_lock);
    if (inited) {
        pthread_mutex_unlock(&init_lock);
        return -1;
    }
    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend) {
        ret = backend.init != NULL ? backend.init() : 0;
    } else {
        int fd = open("/proc/self/idle_pages", O_RDONLY | O_CLOEXEC);

        if (fd >= 0) {
            native_source = SOURCE_IDLE_PAGES;
        } else if ((fd = open("/sys/kernel/mm/page_idle/bitmap", O_RDONLY | O_CLOEXEC)) >= 0) {
            native_source = SOURCE_PAGE_IDLE;
        } else if (access("/proc/self/clear_refs", F_OK) == 0) {
            native_source = SOURCE_SMAPS;
        } else {
            native_source = SOURCE_NONE;
            ret = -1;
        }
        if (fd >= 0)
            close(fd);
    }
    pthread_rwlock_unlock(&backend_lock);
    if (ret == 0)
        inited = 1;
    pthread_mutex_unlock(&init_lock);
    return ret;
}

void etmemd_scan_exit(void)
{
    pthread_mutex_lock(&init_lock);
    pthread_rwlock_rdlock(&backend_lock);
    if (inited && have_backend && backend.exit != NULL)
        backend.exit();
    pthread_rwlock_unlock(&backend_lock);
    inited = 0;
    pthread_mutex_unlock(&init_lock);
}

static void copy_dev(struct vma *v, const char *dev)
{
    const char *colon = strchr(dev, ':');
    size_t major = colon ? (size_t)(colon - dev) : strlen(dev);

    if (major > VMA_MAJOR_MINOR_LEN - 1)
        major = VMA_MAJOR_MINOR_LEN - 1;
    memcpy(v->major, dev, major);
    v->major[major] = '\0';
    snprintf(v->minor, sizeof(v->minor), "%s", colon ? colon + 1 : "");
}

struct vmas *etmemd_get_vmas(const char *pid, char **vmflags_array, int vmflags_num, bool is_anon_only)
{
    struct map_list list;
    struct vmas *out;
    struct vma **tail, *v;
    size_t i;
    int k, wanted;

    if (!valid_pid(pid) || vmflags_num < 0 || (vmflags_num > 0 && vmflags_array == NULL))
        return NULL;
    for (k = 0; k < vmflags_num; k++)
        if (vmflags_array[k] == NULL || strlen(vmflags_array[k]) != 2 || strchr(vmflags_array[k], ' ') != NULL)
            return NULL;
    if (read_maps(pid, vmflags_num > 0, &list) != 0)
        return NULL;
    out = calloc(1, sizeof(*out));
    if (out == NULL) {
        map_list_free(&list);
        return NULL;
    }
    tail = &out->vma_list;
    for (i = 0; i < list.n; i++) {
        const struct map_entry *e = &list.e[i];

        if (is_anon_only && !is_private_anonymous(e))
            continue;
        for (wanted = 1, k = 0; k < vmflags_num && wanted; k++)
            wanted = has_vmflag(e, vmflags_array[k]);
        if (!wanted)
            continue;
        v = calloc(1, sizeof(*v));
        if (v == NULL) {
            map_list_free(&list);
            etmemd_free_vmas(out);
            return NULL;
        }
        v->start = e->start;
        v->end = e->end;
        v->offset = e->offset;
        v->inode = e->inode;
        v->stat[VMA_STAT_READ] = e->perms[0] == 'r';
        v->stat[VMA_STAT_WRITE] = e->perms[1] == 'w';
        v->stat[VMA_STAT_EXEC] = e->perms[2] == 'x';
        v->stat[VMA_STAT_MAY_SHARE] = e->perms[3] == 's';
        memcpy(v->path, e->path, sizeof(v->path));
        copy_dev(v, e->dev);
        *tail = v;
        tail = &v->next;
        out->vma_cnt++;
    }
    map_list_free(&list);
    return out;
}

void etmemd_free_vmas(struct vmas *vmas)
{
    struct vma *v, *next;

    if (vmas == NULL)
        return;
    for (v = vmas->vma_list; v != NULL; v = next) {
        next = v->next;
        free(v);
    }
    free(vmas);
}

/* ---- the windows of a native pass ---------------------------------------------------- */

/* The part of one VMA a pass covers, with a count and a kind per 4 KiB page. */
struct window {
    uint64_t start, end;
    int32_t *counts;
    uint8_t *kinds;
};

struct windows {
    size_t n, cap;
    struct window *w;
};

static void windows_free(struct windows *ws)
{
    size_t i;

    for (i = 0; i < ws->n; i++) {
        free(ws->w[i].counts);
        free(ws->w[i].kinds);
    }
    free(ws->w);
    memset(ws, 0, sizeof(*ws));
}

static int by_start(const void *a, const void *b)
{
    const struct window *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * The windows of a pass over `asked`, as etmem's Scanner cuts them: every VMA the
 * process has now that a scan can use (not a kernel mapping, not PROT_NONE), clipped
 * to each asked range it overlaps, in address order.
 */
static int make_windows(const char *pid, const struct vmas *asked, struct windows *ws)
{
    struct map_list now;
    const struct vma *a;
    struct window *bigger;
    size_t i;

    memset(ws, 0, sizeof(*ws));
    if (read_maps(pid, 0, &now) != 0)
        return -1;
    for (i = 0; i < now.n; i++) {
        const struct map_entry *e = &now.e[i];

        if (is_special(e) || strncmp(e->perms, "---", 3) == 0)
            continue;
        for (a = asked->vma_list; a != NULL; a = a->next) {
            uint64_t lo = (a->start > e->start ? a->start : e->start) & ~(PAGE_BYTES - 1);
            uint64_t hi = a->end < e->end ? a->end : e->end;
            uint64_t pages;

            hi = (hi + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1);
            if (lo >= hi)
                continue;
            if (ws->n == ws->cap) {
                ws->cap = ws->cap ? ws->cap * 2 : 16;
                bigger = realloc(ws->w, ws->cap * sizeof(*ws->w));
                if (bigger == NULL)
                    goto fail;
                ws->w = bigger;
            }
            pages = (hi - lo) >> PAGE_SHIFT;
            ws->w[ws->n].start = lo;
            ws->w[ws->n].end = hi;
            ws->w[ws->n].counts = calloc(pages, sizeof(int32_t));
            ws->w[ws->n].kinds = calloc(pages, 1);
            ws->n++;
            if (ws->w[ws->n - 1].counts == NULL || ws->w[ws->n - 1].kinds == NULL)
                goto fail;
        }
    }
    map_list_free(&now);
    qsort(ws->w, ws->n, sizeof(*ws->w), by_start);
    return 0;
fail:
    map_list_free(&now);
    windows_free(ws);
    errno = ENOMEM;
    return -1;
}

/* Every window still inside a VMA of the process (else its pages may be another mapping's). */
static int windows_still_mapped(const char *pid, const struct windows *ws)
{
    struct map_list now;
    size_t i;
    int ok = 1;

    if (read_maps(pid, 0, &now) != 0)
        return 0;
    for (i = 0; i < ws->n && ok; i++)
        ok = covering(&now, ws->w[i].start, ws->w[i].end) != NULL;
    map_list_free(&now);
    return ok;
}

/* Call fn for every present page of the windows, with its window, slot and PFN. */
typedef int (*present_fn)(struct window *w, uint64_t slot, uint64_t pfn, void *ctx);

static int each_present_page(const char *pid, struct windows *ws, present_fn fn, void *ctx)
{
    enum { CHUNK = 1 << 16 };
    uint64_t *entries = malloc(CHUNK * sizeof(uint64_t));
    size_t i;
    int fd, ret = 0;

    if (entries == NULL)
        return -1;
    fd = open_proc(pid, "pagemap", O_RDONLY);
    if (fd < 0) {
        free(entries);
        return -1;
    }
    for (i = 0; i < ws->n && ret == 0; i++) {
        struct window *w = &ws->w[i];
        uint64_t pages = (w->end - w->start) >> PAGE_SHIFT, done = 0;

        while (done < pages && ret == 0) {
            uint64_t want = pages - done < CHUNK ? pages - done : CHUNK, k;
            ssize_t got = pread_full(fd, entries, want * 8, (off_t)(((w->start >> PAGE_SHIFT) + done) * 8));

            if (got < 0) {
                ret = -1;
                break;
            }
            if (got < 8)
                break;                      /* past what the kernel reports: not present */
            for (k = 0; k < (uint64_t)got / 8 && ret == 0; k++)
                if (entries[k] >> 63)
                    ret = fn(w, done + k, entries[k] & ((1ULL << 55) - 1), ctx);
            done += (uint64_t)got / 8;
        }
    }
    close(fd);
    free(entries);
    return ret;
}

/* ---- the smaps source: clear_refs and smaps Referenced, one verdict per VMA ------------ */

static int mark_present(struct window *w, uint64_t slot, uint64_t pfn, void *ctx)
{
    (void)pfn;
    (void)ctx;
    w->kinds[slot] = KIND_PTE;
    return 0;
}

static int smaps_pass(const char *pid, struct windows *ws)
{
    struct map_list now;
    char *referenced;
    size_t i;
    int fd, ret = 0;

    if (read_maps(pid, 1, &now) != 0)
        return -1;
    referenced = calloc(ws->n ? ws->n : 1, 1);
    for (i = 0; referenced != NULL && i < ws->n; i++) {
        const struct map_entry *e = covering(&now, ws->w[i].start, ws->w[i].end);

        if (e == NULL) {                    /* the VMA vanished during the scan */
            ret = -1;
            break;
        }
        referenced[i] = e->referenced_kb > 0;
    }
    map_list_free(&now);
    if (referenced == NULL || ret != 0 || each_present_page(pid, ws, mark_present, NULL) != 0) {
        free(referenced);
        return -1;
    }
    for (i = 0; i < ws->n; i++) {
        uint64_t slot, pages = (ws->w[i].end - ws->w[i].start) >> PAGE_SHIFT;

        if (referenced[i])
            for (slot = 0; slot < pages; slot++)
                ws->w[i].counts[slot] += 1;
    }
    free(referenced);
    fd = open_proc(pid, "clear_refs", O_WRONLY);
    if (fd < 0)
        return -1;
    if (write(fd, "1", 1) != 1)
        ret = -1;
    close(fd);
    return ret;
}

/* ---- the page_idle source: idle page tracking over pagemap's PFNs ----------------------- */

struct pfn_slot {
    uint64_t pfn;
    struct window *w;
    uint64_t slot;
};

struct pfn_list {
    size_t n, cap;
    struct pfn_slot *p;
};

static int collect_pfn(struct window *w, uint64_t slot, uint64_t pfn, void *ctx)
{
    struct pfn_list *list = ctx;
    struct pfn_slot *bigger;

    w->kinds[slot] = KIND_PTE;
    if (list->n == list->cap) {
        list->cap = list->cap ? list->cap * 2 : 4096;
        bigger = realloc(list->p, list->cap * sizeof(*list->p));
        if (bigger == NULL)
            return -1;
        list->p = bigger;
    }
    list->p[list->n].pfn = pfn;
    list->p[list->n].w = w;
    list->p[list->n].slot = slot;
    list->n++;
    return 0;
}

static int by_pfn(const void *a, const void *b)
{
    const struct pfn_slot *x = a, *y = b;

    return x->pfn < y->pfn ? -1 : x->pfn > y->pfn;
}

/*
 * Count the pages whose idle bit is clear (used since they were marked), then mark them
 * all idle again. The bitmap is read and written in runs of words, PFNs in order.
 */
static int page_idle_pass(const char *pid, struct windows *ws)
{
    enum { RUN = 8192 };               /* bitmap words per read or write */
    struct pfn_list list = {0, 0, NULL};
    uint64_t *words;
    size_t i, j;
    int fd, ret = 0, any_pfn = 0;

    if (each_present_page(pid, ws, collect_pfn, &list) != 0) {
        free(list.p);
        return -1;
    }
    for (i = 0; i < list.n && !any_pfn; i++)
        any_pfn = list.p[i].pfn != 0;
    if (list.n && !any_pfn) {          /* pagemap hides PFNs without CAP_SYS_ADMIN */
        free(list.p);
        errno = EPERM;
        return -1;
    }
    qsort(list.p, list.n, sizeof(*list.p), by_pfn);
    words = malloc(RUN * sizeof(uint64_t));
    fd = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR | O_CLOEXEC);
    if (words == NULL || fd < 0) {
        free(words);
        free(list.p);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (i = 0; i < list.n && ret == 0; i = j) {
        uint64_t first = list.p[i].pfn >> 6;
        ssize_t got;

        memset(words, 0, RUN * sizeof(uint64_t));
        got = pread_full(fd, words, RUN * sizeof(uint64_t), (off_t)(first * 8));
        if (got < 0) {
            ret = -1;
            break;
        }
        for (j = i; j < list.n && (list.p[j].pfn >> 6) < first + RUN; j++) {
            uint64_t bit = 1ULL << (list.p[j].pfn & 63);

            if (!(words[(list.p[j].pfn >> 6) - first] & bit))
                list.p[j].w->counts[list.p[j].slot] += 1;
        }
        /* mark idle: a 1 bit marks its page, a 0 bit leaves its page alone */
        memset(words, 0, RUN * sizeof(uint64_t));
        for (size_t k = i; k < j; k++)
            words[(list.p[k].pfn >> 6) - first] |= 1ULL << (list.p[k].pfn & 63);
        if (pwrite_full(fd, words, ((list.p[j - 1].pfn >> 6) - first + 1) * 8, (off_t)(first * 8)) != 0)
            ret = -1;
    }
    close(fd);
    free(words);
    free(list.p);
    return ret;
}

/* ---- the idle_pages source: openEuler's etmem_scan stream ------------------------------- */

enum { PTE_ACCESSED = 0, PMD_ACCESSED, PUD_PRESENT, PTE_DIRTY_M, PMD_DIRTY_M, PTE_IDLE, PMD_IDLE,
       PMD_IDLE_PTES, PTE_HOLE, PMD_HOLE, PIP_CMD };
#define PIP_CMD_SET_HVA 0xA0
#define IDLE_SCAN_ADD_FLAGS _IOW(0x66, 0, unsigned int)
#define VMA_SCAN_ADD_FLAGS _IOW(0x66, 2, unsigned int)
#define IDLE_READ_MAX (1 << 20)
#define IDLE_READ_MIN 19               /* the least a read of idle_pages may ask for */

static const int record_shift[PIP_CMD] = {12, 21, 30, 12, 21, 12, 21, 21, 12, 21};
static const int record_weight[PIP_CMD] = {1, 1, 1, 3, 3, 0, 0, 0, 0, 0};

/* Add weight to every 4 KiB slot of [start, end) inside the window of nslots from base. */
static void fill_slots(int32_t *counts, uint8_t *kinds, uint64_t base, uint64_t nslots, uint64_t start,
                       uint64_t end, int32_t weight)
{
    uint64_t top = base + (nslots << PAGE_SHIFT), lo, hi, s;

    lo = start > base ? start : base;
    hi = end < top ? end : top;
    if (lo >= hi)
        return;
    lo = (lo - base) >> PAGE_SHIFT;
    hi = (hi - base + PAGE_BYTES - 1) >> PAGE_SHIFT;
    for (s = lo; s < hi; s++) {
        counts[s] += weight;
        kinds[s] = KIND_PTE;
    }
}

/* nr huge pages from start, each counted once, on its first slot inside the window. */
static void fill_huge(int32_t *counts, uint8_t *kinds, uint64_t base, uint64_t nslots, uint64_t start,
                      int shift, int nr, int32_t weight, uint8_t kind)
{
    uint64_t top = base + (nslots << PAGE_SHIFT), head, end, first, s;
    int k;

    for (k = 0; k < nr; k++) {
        head = start + ((uint64_t)k << shift);
        end = head + (1ULL << shift);
        first = head > base ? head : base;
        if (end <= base || first >= top)
            continue;
        s = (first - base) >> PAGE_SHIFT;
        counts[s] += weight;
        kinds[s] = kind;
    }
}

/*
 * Decode one read of /proc/PID/idle_pages (started at address addr) into the window of
 * nslots 4 KiB slots from base: accessed +1, dirty +3, idle 0 (as etmem's decoder and
 * upstream count); with keep_huge a huge page is one entry on its first slot in the
 * window. Returns the bytes decoded (fewer than n when the buffer ends inside a SET_HVA
 * command) and the address after them in *next; -1 for an unknown record.
 * Not part of upstream's API: exported for etmem's tests.
 */
long etmem_scan_decode_idle_pages(const uint8_t *buf, size_t n, uint64_t addr, uint64_t base,
                                  int32_t *counts, uint8_t *kinds, uint64_t nslots, int keep_huge,
                                  uint64_t *next)
{
    size_t i = 0;
    int j;

    while (i < n) {
        uint8_t b = buf[i];
        int type = b >> 4, nr = b & 15, shift;

        if (type == PIP_CMD) {
            uint64_t hva = 0;

            if (b != PIP_CMD_SET_HVA || i + 9 > n)
                break;
            for (j = 1; j < 9; j++)
                hva = (hva << 8) | buf[i + j];
            addr = hva;
            i += 9;
            continue;
        }
        if (type > PMD_HOLE)
            break;
        i++;
        shift = record_shift[type];
        if (type < PTE_HOLE) {
            if (shift == PAGE_SHIFT || !keep_huge || type == PMD_IDLE_PTES)
                fill_slots(counts, kinds, base, nslots, addr, addr + ((uint64_t)nr << shift), record_weight[type]);
            else
                fill_huge(counts, kinds, base, nslots, addr, shift, nr, record_weight[type],
                          type == PUD_PRESENT ? KIND_PUD : KIND_PMD);
        }
        addr += (uint64_t)nr << shift;
    }
    if (next != NULL)
        *next = addr;
    if (i < n && !(buf[i] == PIP_CMD_SET_HVA && i + 9 > n))
        return -1;
    return (long)i;
}

/*
 * Read the windows in address order, decoding each read into every window it covers: a
 * read covers at least 19 bytes x 8 pages and so may reach into the next VMA, whose
 * accessed bits it clears, so its records are counted there too and reading goes on
 * from the kernel's offset.
 */
static int idle_pages_pass(const char *pid, struct windows *ws, int flags)
{
    unsigned int scan_flags = (unsigned int)flags & (SCAN_AS_HUGE | SCAN_IGN_HOST);
    unsigned int vma_flag = VMA_SCAN_FLAG;
    uint8_t *buf;
    size_t i = 0, carry = 0, k;
    int fd, ret = 0;

    fd = open_proc(pid, "idle_pages", O_RDONLY);
    if (fd < 0)
        return -1;
    /* older etmem_scan modules lack these ioctls: scan without the flags then */
    if (scan_flags)
        (void)ioctl(fd, IDLE_SCAN_ADD_FLAGS, &scan_flags);
    if (flags & VMA_SCAN_FLAG)
        (void)ioctl(fd, VMA_SCAN_ADD_FLAGS, &vma_flag);
    buf = malloc(IDLE_READ_MAX + 16);
    if (buf == NULL || (ws->n && lseek(fd, (off_t)ws->w[0].start, SEEK_SET) < 0))
        ret = -1;
    while (ret == 0 && i < ws->n) {
        off_t pos = lseek(fd, 0, SEEK_CUR), after;
        uint64_t want, len;
        ssize_t got;
        long used = 0;

        while (i < ws->n && ws->w[i].end <= (uint64_t)pos)
            i++;
        if (i == ws->n)
            break;
        if ((uint64_t)pos < ws->w[i].start) {   /* skip what is not scanned */
            pos = lseek(fd, (off_t)ws->w[i].start, SEEK_SET);
            carry = 0;
        }
        /* one byte covers up to 8 pages: ask for no more than this window needs */
        want = (((ws->w[i].end - (uint64_t)pos + PAGE_BYTES - 1) >> PAGE_SHIFT) + 7) / 8;
        want = want < IDLE_READ_MIN ? IDLE_READ_MIN : want > IDLE_READ_MAX ? IDLE_READ_MAX : want;
        got = read(fd, buf + carry, want);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            ret = -1;
            break;
        }
        after = lseek(fd, 0, SEEK_CUR);
        if (got == 0) {
            if (after > pos)
                continue;                   /* nothing mapped in the range; the offset moved on */
            break;                          /* nothing more up to TASK_SIZE */
        }
        len = carry + (uint64_t)got;
        for (k = i; k < ws->n; k++) {
            struct window *w = &ws->w[k];

            if (w->start >= (uint64_t)(after > pos + 1 ? after : pos + 1))
                break;
            used = etmem_scan_decode_idle_pages(buf, len, (uint64_t)pos, w->start, w->counts, w->kinds,
                                                (w->end - w->start) >> PAGE_SHIFT, 1, NULL);
            if (used < 0) {
                errno = EPROTO;
                ret = -1;
                break;
            }
        }
        carry = len - (uint64_t)used;
        memmove(buf, buf + used, carry);
        if (after <= pos)
            break;
    }
    free(buf);
    close(fd);
    return ret;
}

/* ---- a native pass, and the page_refs list ------------------------------------------------ */

/* The pages a pass saw, in address order: huge pages as one entry at their head. */
static int windows_to_pass(const struct windows *ws, struct etmem_page_pass *out)
{
    uint64_t n = 0, at = 0, slot;
    size_t i;

    for (i = 0; i < ws->n; i++)
        for (slot = 0; slot < (ws->w[i].end - ws->w[i].start) >> PAGE_SHIFT; slot++)
            n += ws->w[i].kinds[slot] != KIND_NONE;
    out->n = 0;
    if (n == 0)
        return 0;
    out->addr = malloc(n * sizeof(*out->addr));
    out->count = malloc(n * sizeof(*out->count));
    out->type = malloc(n * sizeof(*out->type));
    if (out->addr == NULL || out->count == NULL || out->type == NULL)
        return -1;
    for (i = 0; i < ws->n; i++) {
        const struct window *w = &ws->w[i];

        for (slot = 0; slot < (w->end - w->start) >> PAGE_SHIFT; slot++) {
            uint8_t kind = w->kinds[slot];
            uint64_t addr = w->start + (slot << PAGE_SHIFT);

            if (kind == KIND_NONE)
                continue;
            if (kind == KIND_PMD)
                addr &= ~(PMD_BYTES - 1);
            else if (kind == KIND_PUD)
                addr &= ~(PUD_BYTES - 1);
            out->addr[at] = addr;
            out->count[at] = w->counts[slot];
            out->type[at] = kind == KIND_PMD ? PMD_TYPE : kind == KIND_PUD ? PUD_TYPE : PTE_TYPE;
            at++;
        }
    }
    out->n = at;
    return 0;
}

static int native_pass(const struct vmas *vmas, const char *pid, int flags, struct etmem_page_pass *out)
{
    struct windows ws;
    int ret;

    if (make_windows(pid, vmas, &ws) != 0)
        return -1;
    switch (native_source) {
    case SOURCE_IDLE_PAGES:
        ret = idle_pages_pass(pid, &ws, flags);
        break;
    case SOURCE_PAGE_IDLE:
        ret = page_idle_pass(pid, &ws);
        break;
    case SOURCE_SMAPS:
        ret = smaps_pass(pid, &ws);
        break;
    default:
        ret = -1;
    }
    if (ret == 0 && !windows_still_mapped(pid, &ws))
        ret = -1;
    if (ret == 0)
        ret = windows_to_pass(&ws, out);
    windows_free(&ws);
    return ret;
}

/* Add one pass into the sorted list at *head: counts of listed pages grow, new pages go in order. */
static int merge_pass(struct page_refs **head, const struct etmem_page_pass *pass)
{
    struct page_refs **at = head;
    uint64_t i;

    for (i = 0; i < pass->n; i++) {
        struct page_refs *node;

        if (i > 0 && pass->addr[i] < pass->addr[i - 1])
            at = head;                      /* out of order: look from the start again */
        while (*at != NULL && (*at)->addr < pass->addr[i])
            at = &(*at)->next;
        if (*at != NULL && (*at)->addr == pass->addr[i]) {
            (*at)->count += pass->count[i];
            continue;
        }
        node = malloc(sizeof(*node));
        if (node == NULL)
            return -1;
        node->addr = pass->addr[i];
        node->count = pass->count[i];
        node->type = (enum page_type)pass->type[i];
        node->next = *at;
        *at = node;
        at = &node->next;
    }
    return 0;
}

int etmemd_get_page_refs(const struct vmas *vmas, const char *pid, struct page_refs **page_refs, int flags)
{
    struct etmem_page_pass pass = {0, NULL, NULL, NULL};
    const struct vma *v;
    int ret;

    if (vmas == NULL || !valid_pid(pid) || page_refs == NULL)
        return -1;
    for (v = vmas->vma_list; v != NULL; v = v->next)
        if (v->start >= v->end)
            return -1;
    pthread_mutex_lock(&init_lock);
    ret = inited ? 0 : -1;
    pthread_mutex_unlock(&init_lock);
    if (ret != 0)
        return -1;
    if (vmas->vma_list == NULL)
        return 0;
    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend)
        ret = backend.page_pass != NULL ? backend.page_pass(vmas, pid, flags, &pass) : -1;
    else
        ret = native_pass(vmas, pid, flags, &pass);
    pthread_rwlock_unlock(&backend_lock);
    if (ret == 0)
        ret = merge_pass(page_refs, &pass);
    free(pass.addr);
    free(pass.count);
    free(pass.type);
    return ret;
}

void etmemd_free_page_refs(struct page_refs *page_refs)
{
    struct page_refs *next;

    while (page_refs != NULL) {
        next = page_refs->next;
        free(page_refs);
        page_refs = next;
    }
}
