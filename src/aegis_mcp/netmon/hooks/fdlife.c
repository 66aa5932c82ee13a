/* The life of a tracked fd besides its I/O: close, dup*, fcntl F_DUPFD*, close_range,
 * closefrom, syscall(SYS_close / SYS_close_range), fork, and the flush at exec and exit.
 *
 * Ordering at close: the slot is released and its close event written BEFORE the real close, so
 * a socket that another thread gets on the same fd number right after cannot be clobbered. */
#include "aegis.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/syscall.h>

/* A vfork child (or a raw clone) shares our memory: it must not touch the parent's table.
 * aegis_cfg.pid is refreshed by the fork handler, so only such children see a different pid. */
static int shares_parent_memory(void) { return getpid() != aegis_cfg.pid; }

/* dup/dup2/dup3/F_DUPFD of a tracked socket: the new fd carries the same connection (git
 * reads on one and writes on a dup). It gets no connect event of its own; its totals and close
 * events carry what went through it, so the reader adds bytes without counting a connection. */
static void on_dup(int oldfd, int newfd)
{
    if (newfd < 0 || oldfd == newfd || !aegis_cfg.netmon || aegis_busy || !aegis_fd_tracked(oldfd)) return;
    if (shares_parent_memory()) return;
    int saved = errno;
    struct cold *oc;
    struct hot *oh = aegis_fd_slot(oldfd, &oc);
    struct cold snap;
    uint32_t st = oh ? atomic_load(&oh->state) : S_FREE;
    if (st != S_FREE) aegis_net_report_open(oldfd, oh, oc); /* before the dup's own lines */
    if (st != S_FREE && aegis_fd_snapshot(oh, oc, &snap)) {
        if (snap.dup_of < 0) snap.dup_of = oldfd;
        aegis_net_install(newfd, &snap, st, 0);
    }
    errno = saved;
}

/* fd is about to be closed (close, dup2, syscall). */
static void closing(int fd)
{
    if (!aegis_fd_tracked(fd) || shares_parent_memory()) return;
    int saved = errno;
    struct cold *c;
    struct hot *h = aegis_fd_slot(fd, &c);
    if (h) aegis_net_release(fd, h, c, NULL);
    errno = saved;
}

static void close_one(int fd, struct hot *h, struct cold *c) { aegis_net_release(fd, h, c, NULL); }

static void closing_range(unsigned first, unsigned last)
{
    if (shares_parent_memory()) return;
    aegis_fd_each(first, last, close_one);
}

static void flush_one(int fd, struct hot *h, struct cold *c, int at_exec)
{
    uint32_t st = atomic_load(&h->state);
    if (st == S_FREE) return;
    if (at_exec) {
        int flags = true_fcntl ? true_fcntl(fd, F_GETFD) : -1;
        if (flags >= 0 && !(flags & FD_CLOEXEC)) { /* survives the exec, unseen by the new image */
            if (!(st & S_INHERITED)) aegis_net_totals(fd, h, c);
            return;
        }
        aegis_net_release(fd, h, c, "exec");
    } else {
        aegis_net_release(fd, h, c, "exit");
    }
}

static void flush_at_exec(int fd, struct hot *h, struct cold *c) { flush_one(fd, h, c, 1); }
static void flush_at_exit(int fd, struct hot *h, struct cold *c) { flush_one(fd, h, c, 0); }

void aegis_fdlife_flush_all(int at_exec)
{
    if (!aegis_cfg.netmon) return;
    int saved = errno;
    aegis_busy++;
    aegis_fd_each(0, ~0u, at_exec ? flush_at_exec : flush_at_exit);
    aegis_busy--;
    errno = saved;
}

/* In the fork child every tracked socket is shared with the parent: the parent reports what it
 * did; the child reports only what it does itself. */
static void inherit(int fd, struct hot *h, struct cold *c)
{
    (void)fd; /* the slot alone says what to do */
    uint32_t st = atomic_load(&h->state);
    if (st == S_FREE) return;
    atomic_store(&h->state, st | S_INHERITED);
    atomic_store(&h->unreported, 0); /* the parent writes its connect line */
    atomic_store(&h->sent, 0);
    atomic_store(&h->recv, 0);
    c->rep_sent = c->rep_recv = 0;
    c->start_mono = aegis_mono();
}

void aegis_fdlife_atfork_child(void) { aegis_fd_each(0, ~0u, inherit); }

/* ---- the hooks ---- */

AEGIS_EXPORT int close(int fd)
{
    REAL_OR_ENOSYS(close);
    if (UNLIKELY(aegis_fd_tracked(fd)) && !aegis_busy) closing(fd);
    return true_close(fd);
}

AEGIS_EXPORT int dup(int oldfd)
{
    REAL_OR_ENOSYS(dup);
    int r = true_dup(oldfd);
    if (UNLIKELY(r >= 0 && aegis_fd_tracked(oldfd))) on_dup(oldfd, r);
    return r;
}

AEGIS_EXPORT int dup2(int oldfd, int newfd)
{
    REAL_OR_ENOSYS(dup2);
    if (oldfd != newfd && aegis_fd_tracked(newfd) && !aegis_busy) closing(newfd);
    int r = true_dup2(oldfd, newfd);
    if (UNLIKELY(r >= 0 && aegis_fd_tracked(oldfd))) on_dup(oldfd, r);
    return r;
}

AEGIS_EXPORT int dup3(int oldfd, int newfd, int flags)
{
    REAL_OR_ENOSYS(dup3);
    if (oldfd != newfd && aegis_fd_tracked(newfd) && !aegis_busy) closing(newfd);
    int r = true_dup3(oldfd, newfd, flags);
    if (UNLIKELY(r >= 0 && aegis_fd_tracked(oldfd))) on_dup(oldfd, r);
    return r;
}

/* fcntl's third argument is an int or a pointer: passed on as a word, as the ABI does. */
#define FCNTL_HOOK(name)                                                                           \
    AEGIS_EXPORT int name(int fd, int cmd, ...)                                                    \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, cmd);                                                                         \
        void *arg = va_arg(ap, void *);                                                            \
        va_end(ap);                                                                                \
        REAL_OR_ENOSYS(name);                                                                      \
        int r = true_##name(fd, cmd, arg);                                                         \
        if (UNLIKELY((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && r >= 0 && aegis_fd_tracked(fd))) \
            on_dup(fd, r);                                                                         \
        return r;                                                                                  \
    }

FCNTL_HOOK(fcntl)
FCNTL_HOOK(fcntl64)

AEGIS_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    REAL_OR_ENOSYS(close_range);
    if (!(flags & CLOSE_RANGE_CLOEXEC) && aegis_cfg.netmon && !aegis_busy) {
        int saved = errno;
        closing_range(first, last);
        errno = saved;
    }
    return true_close_range(first, last, flags);
}

AEGIS_EXPORT void closefrom(int lowfd)
{
    ENSURE_INIT();
    if (aegis_cfg.netmon && !aegis_busy && lowfd >= 0) {
        int saved = errno;
        closing_range((unsigned)lowfd, ~0u);
        errno = saved;
    }
    if (true_closefrom) true_closefrom(lowfd);
}

/* libuv closes with syscall(SYS_close, fd) to avoid the cancellation point. */
AEGIS_EXPORT long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    REAL_OR_ENOSYS(syscall);
    if (aegis_cfg.netmon && !aegis_busy) {
        if (number == SYS_close && aegis_fd_tracked((int)a1)) closing((int)a1);
#ifdef SYS_close_range
        else if (number == SYS_close_range && !((int)a3 & CLOSE_RANGE_CLOEXEC)) {
            int saved = errno;
            closing_range((unsigned)a1, (unsigned)a2);
            errno = saved;
        }
#endif
    }
    return true_syscall(number, a1, a2, a3, a4, a5, a6);
}
