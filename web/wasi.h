/*
web/wasi.h: what run.c calls that WASI's libc (wasi-libc) does not have, for `make wasm`, which
force-includes this file (-include) so that run.c itself needs no #if for the WebAssembly build.

WASI has no process priorities, no memory advice, no symlink resolution and no signals; the fallbacks say
what run.c then does: no neighbour counts as niced (run.c runs one thread there anyway), the
advice is ignored (the emulated mmap is a plain read into memory), and -o through a symlink is
refused with ENOTSUP.
*/
#include <errno.h>
#include <stddef.h>
#include <signal.h>  /* WASI's emulation (-D_WASI_EMULATED_SIGNAL): signal() and raise(), no delivery */

/* run.c never maps the model file here (make wasm sets HUGE_MIN_STEPS=0: WASI's mmap is a copy anyway),
   so what it does for a mapped file only has to compile: the SIGBUS handler for a file that shrinks
   under the mapping, and the descriptor kept above 0..2 (WASI can neither deliver signals nor duplicate
   descriptors). */
typedef struct { void *si_addr; } siginfo_t;
struct sigaction { void (*sa_sigaction)(int, siginfo_t *, void *); int sa_flags; int sa_mask; };
#define SA_SIGINFO 4
#define sigemptyset(set) (*(set) = 0)
static inline int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    (void)sig, (void)act, (void)old;
    return 0;
}
#define F_DUPFD 0

#define PRIO_PROCESS 0
static inline int getpriority(int which, unsigned who) { (void)which, (void)who; return 0; }
static inline int madvise(void *addr, size_t len, int advice) { (void)addr, (void)len, (void)advice; return 0; }
static inline char *realpath(const char *path, char *resolved) {
    (void)path, (void)resolved;
    errno = ENOTSUP;
    return NULL;
}
