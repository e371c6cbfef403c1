/* An emulated slow disk for the benchmarks: every fsync and fdatasync of a process
 * takes SLOW_SYNC_US microseconds (default 500) longer than the disk makes it.
 *
 *     gcc -shared -fPIC -O2 -o /tmp/slowsync.so bench/slowsync.c -ldl
 *     LD_PRELOAD=/tmp/slowsync.so SLOW_SYNC_US=500 .venv/bin/python bench/cluster.py ...
 *
 * With SLOW_SYNC_LOCK set to a file's path, a sync holds an exclusive lock on that
 * file (flock) for the sync and the delay: every process that shares the path syncs
 * one at a time, as on a disk that makes one flush at a time.  Without it the delays
 * of parallel callers overlap.
 *
 * The benches' own fsync probe runs under it too and prints the rate it got.  A
 * program that drops LD_PRELOAD is not slowed: Postfix's master passes its children
 * only what `import_environment` lists, so `bench/relay.py --slow-sync-us N` (which
 * builds this file and preloads it) adds the variables there for its Postfix.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static long delay_us(void) {
    const char *v = getenv("SLOW_SYNC_US");
    return v ? atol(v) : 500;
}

static void pause_us(long us) {
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&t, 0);
}

/* The lock file's descriptor (opened on first use), or -1 without SLOW_SYNC_LOCK. */
static int lock_fd(void) {
    static int fd = -2;
    if (fd == -2) {
        const char *path = getenv("SLOW_SYNC_LOCK");
        fd = path ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666) : -1;
    }
    return fd;
}

static int slowly(int (*real)(int), int fd) {
    int lock = lock_fd();
    if (lock >= 0) flock(lock, LOCK_EX);
    int r = real(fd);
    pause_us(delay_us());
    if (lock >= 0) flock(lock, LOCK_UN);
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return slowly(real, fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return slowly(real, fd);
}
