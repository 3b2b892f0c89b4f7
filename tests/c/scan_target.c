/* A process with two anonymous regions whose use never changes: `hot` (read every 10 ms)
 * and `cold` (written once at start, then never touched). Prints "hot START END" and
 * "cold START END" once both are resident, then runs until killed. */
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>

#define REGION (4UL << 20)

int main(void)
{
    struct timespec tick = {0, 10 * 1000 * 1000};
    volatile char *hot = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* a gap between the two, so they stay two VMAs */
    volatile char *cold = mmap((char *)hot - 2 * REGION, REGION, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long i, sum = 0;

    if (hot == MAP_FAILED || cold == MAP_FAILED)
        return 1;
    madvise((void *)hot, REGION, MADV_NOHUGEPAGE);
    madvise((void *)cold, REGION, MADV_NOHUGEPAGE);
    for (i = 0; i < REGION; i += 4096) {
        hot[i] = 1;
        cold[i] = 1;
    }
    printf("hot %lx %lx\ncold %lx %lx\n", (unsigned long)hot, (unsigned long)hot + REGION,
           (unsigned long)cold, (unsigned long)cold + REGION);
    fflush(stdout);
    for (;;) {
        for (i = 0; i < REGION; i += 4096)
            sum += hot[i];
        nanosleep(&tick, NULL);
    }
    return (int)sum;
}
