/* An emulated slow disk for the benchmarks: every fsync and fdatasync of a process
 * takes SLOW_SYNC_US microseconds (default 500) longer than the disk makes it.
 *
 *     gcc -shared -fPIC -O2 -o /tmp/slowsync.so bench/slowsync.c -ldl
 *     LD_PRELOAD=/tmp/slowsync.so SLOW_SYNC_US=500 .venv/bin/python bench/cluster.py ...
 *
 * The benches' own fsync probe runs under it too and prints the rate it got.  A
 * program that drops LD_PRELOAD (Postfix's master cleans its children's environment)
 * is not slowed: compare two spoolbox trees with it, not spoolbox with Postfix.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static long delay_us(void) {
    const char *v = getenv("SLOW_SYNC_US");
    return v ? atol(v) : 500;
}

static void pause_us(long us) {
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&t, 0);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    pause_us(delay_us());
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    pause_us(delay_us());
    return r;
}
