/* Waiting: before a program blocks in poll, epoll, select or a sleep, the lines it has batched
 * go to the log (report.c). An event loop going idle after its last connection, or a script
 * sleeping between requests, never sits on its events. A wait that returns at once (a zero
 * timeout) is a check, not a wait: nothing happens there. */
#include "aegis.h"

#include <errno.h>

static inline void before_wait(int blocks)
{
    if (blocks && !aegis_busy) aegis_flush();
}

static int ts_zero(const struct timespec *t) { return t && t->tv_sec == 0 && t->tv_nsec == 0; }

AEGIS_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    REAL_OR_ENOSYS(poll);
    before_wait(timeout != 0);
    return true_poll(fds, nfds, timeout);
}

AEGIS_EXPORT int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
    REAL_OR_ENOSYS(__poll_chk);
    before_wait(timeout != 0);
    return true___poll_chk(fds, nfds, timeout, fdslen);
}

AEGIS_EXPORT int ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout,
                       const sigset_t *sigmask)
{
    REAL_OR_ENOSYS(ppoll);
    before_wait(!ts_zero(timeout));
    return true_ppoll(fds, nfds, timeout, sigmask);
}

AEGIS_EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *timeout)
{
    REAL_OR_ENOSYS(select);
    before_wait(!(timeout && timeout->tv_sec == 0 && timeout->tv_usec == 0));
    return true_select(nfds, r, w, e, timeout);
}

AEGIS_EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *timeout,
                         const sigset_t *sigmask)
{
    REAL_OR_ENOSYS(pselect);
    before_wait(!ts_zero(timeout));
    return true_pselect(nfds, r, w, e, timeout, sigmask);
}

AEGIS_EXPORT int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    REAL_OR_ENOSYS(epoll_wait);
    before_wait(timeout != 0);
    return true_epoll_wait(epfd, events, maxevents, timeout);
}

AEGIS_EXPORT int epoll_pwait(int epfd, struct epoll_event *events, int maxevents, int timeout,
                             const sigset_t *sigmask)
{
    REAL_OR_ENOSYS(epoll_pwait);
    before_wait(timeout != 0);
    return true_epoll_pwait(epfd, events, maxevents, timeout, sigmask);
}

AEGIS_EXPORT int nanosleep(const struct timespec *req, struct timespec *rem)
{
    REAL_OR_ENOSYS(nanosleep);
    before_wait(!ts_zero(req));
    return true_nanosleep(req, rem);
}

/* Returns an error number, not -1 with errno. */
AEGIS_EXPORT int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req,
                                 struct timespec *rem)
{
    ENSURE_INIT();
    if (UNLIKELY(!true_clock_nanosleep)) return ENOSYS;
    before_wait(!ts_zero(req));
    return true_clock_nanosleep(clock, flags, req, rem);
}
