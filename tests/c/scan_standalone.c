/* A program that uses libetmemd_scan.so on its own, outside etmemd, as upstream's own
 * test of the scan library does, with only upstream's header.
 *
 *   scan_standalone check PID   the library's rules, one "ok ..." or "FAIL ..." line each;
 *                               exit status: the number of failures
 *   scan_standalone dump PID    init, the private anonymous VMAs of PID, one page pass:
 *                               "vma START END" lines, then "page ADDR COUNT TYPE" lines
 *   scan_standalone passes PID N MS
 *                               one pass to clear what was used before, then N passes MS
 *                               milliseconds apart merged into one list: "page" lines
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "etmemd_scan_export.h"

static int failures;

static void expect(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok" : "FAIL", what);
    if (!ok)
        failures++;
}

static int listed_vmas(const struct vmas *vmas)
{
    uint64_t n = 0;
    const struct vma *v;

    for (v = vmas->vma_list; v != NULL; v = v->next)
        n++;
    return n == vmas->vma_cnt && n > 0;
}

static int check(const char *pid)
{
    char *readable[] = {"rd"}, *writable[] = {"wr"}, *spaced[] = {"r "}, *three[] = {"rd "}, *none[] = {NULL};
    struct page_refs *refs = NULL;
    struct vmas *vmas, *backwards;
    struct vma *bad;

    etmemd_scan_exit();                                  /* exit before any init is harmless */
    expect(etmemd_scan_init() == 0, "init");
    expect(etmemd_scan_init() != 0, "a second init before exit fails");
    etmemd_scan_exit();

    vmas = etmemd_get_vmas(pid, readable, 1, false);     /* VMAs need no init */
    expect(vmas != NULL && listed_vmas(vmas), "get_vmas with vmflag rd, before init");
    etmemd_free_vmas(vmas);
    expect(etmemd_get_vmas("0", readable, 1, false) == NULL, "get_vmas of pid 0 is NULL");
    expect(etmemd_get_vmas(NULL, readable, 1, false) == NULL, "get_vmas of a NULL pid is NULL");
    expect(etmemd_get_vmas("1-", readable, 1, false) == NULL, "get_vmas of pid '1-' is NULL");
    expect(etmemd_get_vmas(pid, spaced, 1, false) == NULL, "a vmflag with a space is refused");
    expect(etmemd_get_vmas(pid, three, 1, false) == NULL, "a vmflag of 3 characters is refused");
    expect(etmemd_get_vmas(pid, none, 1, false) == NULL, "a NULL vmflag is refused");
    etmemd_free_vmas(NULL);

    vmas = etmemd_get_vmas(pid, writable, 1, false);
    expect(vmas != NULL && listed_vmas(vmas), "get_vmas with vmflag wr");
    expect(etmemd_get_page_refs(vmas, pid, &refs, SCAN_AS_HUGE | SCAN_IGN_HOST) == -1 && refs == NULL,
           "get_page_refs before init fails");
    expect(etmemd_scan_init() == 0, "init again");
    etmemd_free_page_refs(NULL);
    expect(etmemd_get_page_refs(NULL, pid, &refs, 0) == -1, "get_page_refs of NULL vmas fails");
    backwards = calloc(1, sizeof(*backwards));
    bad = calloc(1, sizeof(*bad));
    bad->start = 0xff;
    bad->end = 0;
    backwards->vma_cnt = 1;
    backwards->vma_list = bad;
    expect(etmemd_get_page_refs(backwards, pid, &refs, 0) == -1, "a VMA that ends before it starts fails");
    etmemd_free_vmas(backwards);
    expect(etmemd_get_page_refs(vmas, "0", &refs, 0) == -1 && refs == NULL, "pid 0 fails, list untouched");
    expect(etmemd_get_page_refs(vmas, NULL, &refs, 0) == -1 && refs == NULL, "a NULL pid fails");
    expect(etmemd_get_page_refs(vmas, "--", &refs, 0) == -1 && refs == NULL, "pid '--' fails");
    expect(etmemd_get_page_refs(vmas, pid, &refs, SCAN_AS_HUGE | SCAN_IGN_HOST) == 0 && refs != NULL,
           "get_page_refs of the writable VMAs");
    etmemd_scan_exit();
    expect(etmemd_get_page_refs(vmas, pid, &refs, 0) != 0, "get_page_refs after exit fails");
    etmemd_free_page_refs(refs);
    etmemd_free_vmas(vmas);
    return failures;
}

static int dump(const char *pid)
{
    struct page_refs *refs = NULL, *p;
    struct vmas *vmas;
    struct vma *v;

    if (etmemd_scan_init() != 0) {
        printf("FAIL init\n");
        return 1;
    }
    vmas = etmemd_get_vmas(pid, NULL, 0, true);
    if (vmas == NULL || etmemd_get_page_refs(vmas, pid, &refs, 0) != 0) {
        printf("FAIL scan\n");
        return 1;
    }
    for (v = vmas->vma_list; v != NULL; v = v->next)
        printf("vma %lx %lx\n", (unsigned long)v->start, (unsigned long)v->end);
    for (p = refs; p != NULL; p = p->next)
        printf("page %lx %d %d\n", (unsigned long)p->addr, p->count, (int)p->type);
    etmemd_free_page_refs(refs);
    etmemd_free_vmas(vmas);
    etmemd_scan_exit();
    return 0;
}

static int passes(const char *pid, int n, int ms)
{
    struct timespec pause = {ms / 1000, (long)(ms % 1000) * 1000000};
    struct page_refs *refs = NULL, *first = NULL, *p;
    struct vmas *vmas;
    int i, ret = 0;

    if (etmemd_scan_init() != 0)
        return 1;
    vmas = etmemd_get_vmas(pid, NULL, 0, true);
    if (vmas == NULL || etmemd_get_page_refs(vmas, pid, &first, 0) != 0)
        ret = 1;
    etmemd_free_page_refs(first);
    for (i = 0; i < n && ret == 0; i++) {
        nanosleep(&pause, NULL);
        ret = etmemd_get_page_refs(vmas, pid, &refs, 0) != 0;
    }
    for (p = refs; p != NULL && ret == 0; p = p->next)
        printf("page %lx %d %d\n", (unsigned long)p->addr, p->count, (int)p->type);
    if (ret)
        printf("FAIL scan\n");
    etmemd_free_page_refs(refs);
    etmemd_free_vmas(vmas);
    etmemd_scan_exit();
    return ret;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "check") == 0)
        return check(argv[2]);
    if (argc == 3 && strcmp(argv[1], "dump") == 0)
        return dump(argv[2]);
    if (argc == 5 && strcmp(argv[1], "passes") == 0)
        return passes(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: scan_standalone check|dump PID | passes PID N MS\n");
    return 2;
}
