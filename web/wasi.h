/*
web/wasi.h: what run.c calls that WASI's libc (wasi-libc) does not have, for `make wasm`, which
force-includes this file (-include) so that run.c itself needs no #if for the WebAssembly build.

WASI has no process priorities, no memory advice and no symlink resolution; the fallbacks say
what run.c then does: no neighbour counts as niced (run.c runs one thread there anyway), the
advice is ignored (the emulated mmap is a plain read into memory), and -o through a symlink is
refused with ENOTSUP.
*/
#include <errno.h>
#include <stddef.h>

#define PRIO_PROCESS 0
static inline int getpriority(int which, unsigned who) { (void)which, (void)who; return 0; }
static inline int madvise(void *addr, size_t len, int advice) { (void)addr, (void)len, (void)advice; return 0; }
static inline char *realpath(const char *path, char *resolved) {
    (void)path, (void)resolved;
    errno = ENOTSUP;
    return NULL;
}
