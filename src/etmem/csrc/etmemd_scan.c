/*
 * libetmemd_scan.so for etmem for Python: the scan library C engines link against.
 *
 * It exports the six functions of upstream's scan library with their signatures and
 * structures (include/etmem_engine.h). The work is done in Python: etmem registers a
 * table of callbacks with etmem_scan_set_backend() (ctypes callbacks, which take the
 * GIL themselves, so engines may call from any thread). This file only turns the flat
 * arrays a scan pass returns into upstream's malloc'ed page_refs list, merging passes.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define ETMEM_SCAN_LIBRARY
#include "../include/etmem_engine.h"

/* One scan pass as Python hands it over: arrays malloc'ed by Python, freed here. */
struct etmem_page_pass {
    uint64_t n;
    uint64_t *addr;
    int32_t *count;
    int32_t *type;
};

struct etmem_scan_backend {
    int (*init)(void);
    void (*exit)(void);
    struct vmas *(*get_vmas)(const char *pid, char **vmflags, int vmflags_num, int anon_only);
    int (*page_pass)(const struct vmas *vmas, const char *pid, int flags, struct etmem_page_pass *out);
};

static struct etmem_scan_backend backend;
static int have_backend;
static pthread_rwlock_t backend_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Set (or, with NULL, clear) the callbacks; waits for calls in progress to end. */
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

int etmemd_scan_init(void)
{
    int ret = -1;

    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend && backend.init != NULL)
        ret = backend.init();
    pthread_rwlock_unlock(&backend_lock);
    return ret;
}

void etmemd_scan_exit(void)
{
    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend && backend.exit != NULL)
        backend.exit();
    pthread_rwlock_unlock(&backend_lock);
}

struct vmas *etmemd_get_vmas(const char *pid, char **vmflags_array, int vmflags_num, bool is_anon_only)
{
    struct vmas *ret = NULL;

    if (pid == NULL || vmflags_num < 0 || (vmflags_num > 0 && vmflags_array == NULL))
        return NULL;
    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend && backend.get_vmas != NULL)
        ret = backend.get_vmas(pid, vmflags_array, vmflags_num, is_anon_only ? 1 : 0);
    pthread_rwlock_unlock(&backend_lock);
    return ret;
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

/* Add one pass (sorted by address) into the sorted list at *head. */
static int merge_pass(struct page_refs **head, const struct etmem_page_pass *pass)
{
    struct page_refs **at = head;
    uint64_t i;

    for (i = 0; i < pass->n; i++) {
        struct page_refs *node;

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
    int ret = -1;

    if (vmas == NULL || pid == NULL || page_refs == NULL)
        return -1;
    pthread_rwlock_rdlock(&backend_lock);
    if (have_backend && backend.page_pass != NULL)
        ret = backend.page_pass(vmas, pid, flags, &pass);
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
