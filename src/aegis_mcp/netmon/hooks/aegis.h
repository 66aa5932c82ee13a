/* libaegis_hooks: shared declarations.
 *
 * Layout (the proxychains-ng / libfaketime shape):
 *   init.c      the single initialisation point: real symbols as true_<name>, settings from the
 *               environment, fork and exit handling
 *   report.c    JSONL events, batched into one write() with O_APPEND; no malloc, no stdio
 *   fdtable.c   the per-fd table: slots (hot counters, cold description), their states, the
 *               seqlock that guards the cold half, the overflow table for large fds
 *   net.c       connection tracking: connect/accept, counting bytes in the I/O hooks (send/recv
 *               families, read/write on sockets, sendfile, splice), the connection events
 *   fdlife.c    what happens to a tracked fd besides I/O: close, dup*, fcntl F_DUPFD*,
 *               close_range, closefrom, syscall(SYS_close*), fork, and the flush at exec and exit
 *   dns.c       getaddrinfo: remembers address -> host name for the connect events
 *   policy.c    the network policy (AEGIS_NETMON_POLICY): denied connects fail at once
 *   exec.c      exec/spawn/exit: flush totals of still-open sockets, note children we lose
 *   wait.c      poll, epoll, select, sleep: what is batched goes out before the program waits
 *   redirect.c  MCP config injection: read-only opens of configured paths see an overlay
 *
 * Rules every hook follows: call the real function exactly once with the caller's arguments,
 * return what it returned and leave errno as it set it; do our own work only around it, never
 * allocate, never block, never recurse (aegis_busy), and never fail the caller because the log
 * cannot be written. */
#ifndef AEGIS_HOOKS_H
#define AEGIS_HOOKS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <stddef.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <spawn.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define AEGIS_EXPORT __attribute__((visibility("default")))
/* -fvisibility=hidden covers definitions, not extern declarations: data that a hook's fast path
 * reads from another file says so, or the compiler fetches its address from the GOT each call. */
#define AEGIS_HIDDEN __attribute__((visibility("hidden")))
/* initial-exec TLS: no __tls_get_addr (which may allocate) and safe in signal handlers. */
#define AEGIS_TLS __thread __attribute__((tls_model("initial-exec")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#ifdef AEGIS_DEBUG
#define PDEBUG(...) dprintf(2, "aegis_hooks: " __VA_ARGS__)
#else
#define PDEBUG(...) do { } while (0)
#endif

/* Prototypes glibc no longer (or only conditionally) declares. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int __xstat(int ver, const char *path, struct stat *buf);
int __xstat64(int ver, const char *path, struct stat64 *buf);
int __lxstat(int ver, const char *path, struct stat *buf);
int __lxstat64(int ver, const char *path, struct stat64 *buf);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);
int close_range(unsigned int first, unsigned int last, int flags);
void closefrom(int lowfd);
void quick_exit(int status) __attribute__((__noreturn__));
ssize_t __read_chk(int fd, void *buf, size_t nbytes, size_t buflen);
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                       struct sockaddr *addr, socklen_t *addrlen);

/* Every real symbol we wrap: true_<name>, resolved once with dlsym(RTLD_NEXT). */
#define AEGIS_SYMBOLS(X)                                                                          \
    X(connect) X(accept) X(accept4) X(close) X(read) X(write) X(readv) X(writev) X(send)          \
    X(sendto) X(sendmsg) X(sendmmsg) X(recv) X(recvfrom) X(recvmsg) X(recvmmsg) X(getsockopt)      \
    X(__read_chk) X(__recv_chk) X(__recvfrom_chk) X(sendfile) X(sendfile64) X(splice)           \
    X(dup) X(dup2) X(dup3) X(fcntl) X(fcntl64) X(close_range) X(closefrom) X(syscall) X(getaddrinfo)                         \
    X(execve) X(execv) X(execvp) X(execvpe) X(fexecve) X(posix_spawn) X(posix_spawnp)             \
    X(_exit) X(_Exit) X(quick_exit)                                                                           \
    X(poll) X(__poll_chk) X(ppoll) X(select) X(pselect) X(epoll_wait) X(epoll_pwait)             \
    X(nanosleep) X(clock_nanosleep)                                                               \
    X(open) X(open64) X(openat) X(openat64) X(fopen) X(fopen64) X(freopen) X(freopen64)          \
    X(__open_2) X(__open64_2) X(__openat_2) X(__openat64_2)                                       \
    X(stat) X(stat64) X(lstat) X(lstat64) X(fstatat) X(fstatat64) X(statx) X(access)             \
    X(faccessat) X(__xstat) X(__xstat64) X(__lxstat) X(__lxstat64) X(__fxstatat) X(__fxstatat64)

#define AEGIS_DECLARE_TRUE(name) extern __typeof__(name) *true_##name;
AEGIS_SYMBOLS(AEGIS_DECLARE_TRUE)
#undef AEGIS_DECLARE_TRUE

/* ---- init.c ---- */
extern atomic_int aegis_ready;
extern AEGIS_TLS int aegis_busy;   /* set while the library does its own work */
void aegis_init(void);
#define ENSURE_INIT()                                                                      \
    do {                                                                                   \
        if (UNLIKELY(!atomic_load_explicit(&aegis_ready, memory_order_acquire))) aegis_init(); \
    } while (0)

/* In a hook: initialise once; when libc lacks the real symbol, fail like a missing syscall. */
#define REAL_OR_FAIL(name, failed)                                                                 \
    do {                                                                                           \
        ENSURE_INIT();                                                                             \
        if (UNLIKELY(!true_##name)) {                                                              \
            errno = ENOSYS;                                                                        \
            return failed;                                                                         \
        }                                                                                          \
    } while (0)
#define REAL_OR_ENOSYS(name) REAL_OR_FAIL(name, -1)

struct aegis_config {
    int netmon;              /* AEGIS_NETMON_LOG set: record network events */
    char log_path[4096];
    char rotated_path[4100];
    uint64_t max_bytes;      /* AEGIS_NETMON_MAX_BYTES, rotation threshold */
    unsigned interval;       /* AEGIS_NETMON_INTERVAL, seconds between totals events */
    unsigned batch_ms;       /* AEGIS_NETMON_BATCH_MS, how long a line may wait in the batch (0: none) */
    char exe[256];           /* basename of /proc/self/exe */
    char self_path[4096];    /* this library, to check that children still preload it */
    pid_t pid;               /* refreshed in the fork child; differs from getpid() in vfork children */
    pid_t ppid;              /* the parent at start (or at fork): events name it without a system call */
    /* aegis-mcp's own runtime directory (that of AEGIS_CONTROL, with its final '/'): the unix
     * sockets there (the supervisor's control socket, the warm MCP server's) are aegis-mcp's
     * plumbing, not the agent's traffic, and are never recorded. Empty when not supervised. */
    char plumbing_dir[4096];
    size_t plumbing_len;
};
extern struct aegis_config aegis_cfg;

/* ---- report.c ---- */
struct jbuf {
    char *p;
    size_t len, cap;
    pid_t pid, ppid; /* 0: this process's (aegis_cfg); set first where that may be wrong (vfork) */
};
void jb_raw(struct jbuf *b, const char *s);
void jb_str(struct jbuf *b, const char *s, size_t max_out); /* JSON string, or null for NULL */
void jb_int(struct jbuf *b, long long v);
void jb_uint(struct jbuf *b, unsigned long long v);
void jb_time(struct jbuf *b, double t);
/* n bytes as they are; inline, so that a literal's copy is a few moves, not a call */
static inline void jb_put(struct jbuf *b, const char *s, size_t n)
{
    if (b->len + n + 3 > b->cap) { /* keep room for "}\n" */
        b->len = b->cap;           /* mark overflow: the event is dropped, never cut */
        return;
    }
    __builtin_memcpy(b->p + b->len, s, n);
    b->len += n;
}
/* ,"key": for a literal key, its length known when compiled: a line has a dozen keys */
#define jb_key(b, key) jb_put((b), ",\"" key "\":", sizeof(",\"" key "\":") - 1)
/* a literal that needs no escaping (a name of ours), quoted */
#define jb_lit_str(b, text) jb_put((b), "\"" text "\"", sizeof("\"" text "\"") - 1)
/* Starts an event: {"ts":..,"event":..,"source":"preload","pid":..,"ppid":..,"exe":.. */
void jb_begin_event(struct jbuf *b, const char *event);
void jb_begin_event_at(struct jbuf *b, const char *event, double ts); /* ts: when it happened */
void jb_end_line(struct jbuf *b);   /* closes the object and appends the newline */
/* Adds the buffer's lines to the batch (report.c), which goes to the log in one write(). */
void aegis_write(struct jbuf *b);
void aegis_emit(struct jbuf *b);     /* jb_end_line, then aegis_write */
void aegis_emit_now(struct jbuf *b); /* jb_end_line, then the batch and this line, at once */
void aegis_flush(void);              /* the batch to the log now (exit, exec, fork, a wait) */
void aegis_out_atfork_child(void);
/* Coarse ms at which the batch must go, 0 when it is empty. */
extern AEGIS_HIDDEN _Atomic uint32_t aegis_out_due;

/* Coarse monotonic milliseconds (a few ns through the vDSO); wraps, so compare differences. */
static inline uint32_t aegis_coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

/* At a hooked call: the batch goes out once its time has come. */
static inline void aegis_flush_if_due(uint32_t now)
{
    uint32_t due = atomic_load_explicit(&aegis_out_due, memory_order_relaxed);
    if (UNLIKELY(due) && (int32_t)(now - due) >= 0) aegis_flush();
}
const char *aegis_errno_name(int err, char *scratch, size_t n);
struct in_addr;
void aegis_ipv4_text(const struct in_addr *a, char out[16]); /* inet_ntop without sprintf */
double aegis_now(void);      /* realtime, seconds */
double aegis_mono(void);     /* monotonic, seconds */

/* ---- fdtable.c ----
 * Indexed by fd (fds are unique within a process at any instant, and the kernel orders
 * close-then-reuse for us). The hot half is all that the I/O paths touch; the cold half is
 * written when a slot is filled and read when an event is written. The lookups are inline here
 * because every read/write/close pays for them. */
#define FD_TABLE 65536

enum { S_FREE = 0, S_PENDING = 1, S_OPEN = 2, S_KIND = 0xff, S_INHERITED = 0x100 };

/* One cache line per fd: a sender thread and a receiver thread on neighbouring fds must not
 * bounce one line between cores with every call (measured: +50% per small send). */
struct hot {
    _Atomic uint32_t state;
    _Atomic uint32_t gen;          /* odd while the cold half is being written */
    _Atomic uint64_t sent;
    _Atomic uint64_t recv;
    _Atomic uint32_t next_report;  /* coarse monotonic ms of the next totals event */
    _Atomic uint32_t unreported;   /* its connect/accept line is not written yet (net.c) */
} __attribute__((aligned(64)));

struct cold {
    double start_real, start_mono;
    uint64_t rep_sent, rep_recv;   /* counts at the last totals event (no event if unchanged) */
    int result;                    /* connect's errno, 0 when connected */
    int open_result;               /* what connect itself returned, for its deferred line */
    int dup_of;                    /* fd this one duplicates (no connect event of its own), or -1 */
    uint16_t port;
    uint8_t family, proto, accepted;
    char addr[112];                /* IP text or unix socket path */
    char host[128];                /* the name the program resolved, if we saw it */
};

/* What a freed slot held, for its close event. */
struct fd_final {
    uint32_t state;                /* the state it had */
    uint32_t unreported;           /* its connect/accept line was still to be written */
    int consistent;                /* snap is a consistent copy (the slot was not refilled meanwhile) */
    uint64_t sent, recv;
    struct cold snap;
};

extern AEGIS_HIDDEN struct hot aegis_fd_hot[FD_TABLE];
extern AEGIS_HIDDEN struct cold aegis_fd_cold[FD_TABLE];
struct hot *aegis_fd_ovf_find(int fd, struct cold **c);  /* fds beyond FD_TABLE; NULL if untracked */
/* fd's slot, taking an overflow entry for a large fd; NULL when the overflow table is full. */
struct hot *aegis_fd_claim(int fd, struct cold **c);
/* Writes src into a claimed slot (fresh counters, start time now) and publishes it as `kind`. */
void aegis_fd_fill(int fd, struct hot *h, struct cold *c, const struct cold *src, uint32_t kind,
                   uint32_t next_report, uint32_t unreported);
/* Frees fd's slot; 0 if it was already free, else 1 with what it held in *out. */
int aegis_fd_free(int fd, struct hot *h, const struct cold *c, struct fd_final *out);
/* A consistent copy of the cold half, or 0 if the slot was reused meanwhile. */
int aegis_fd_snapshot(struct hot *h, const struct cold *c, struct cold *out);
/* Calls fn for every slot not free with first <= fd <= last. */
void aegis_fd_each(unsigned first, unsigned last, void (*fn)(int fd, struct hot *h, struct cold *c));

static inline struct hot *aegis_fd_slot(int fd, struct cold **c)
{
    if (LIKELY((unsigned)fd < FD_TABLE)) {
        if (c) *c = &aegis_fd_cold[fd];
        return &aegis_fd_hot[fd];
    }
    return fd < 0 ? NULL : aegis_fd_ovf_find(fd, c);
}

static inline int aegis_fd_tracked(int fd)
{
    if (LIKELY((unsigned)fd < FD_TABLE))
        return atomic_load_explicit(&aegis_fd_hot[fd].state, memory_order_relaxed) != S_FREE;
    return fd >= 0 && aegis_fd_ovf_find(fd, NULL) != NULL;
}

/* ---- net.c ---- */
/* Puts src (with fresh counters) into fd's slot as `kind`; a socket still there is closed first.
 * unreported: its connect/accept line is deferred (written with its close, or later). */
struct hot *aegis_net_install(int fd, const struct cold *src, uint32_t kind, int unreported);
/* Writes fd's deferred connect/accept line now, if it has one. */
void aegis_net_report_open(int fd, struct hot *h, struct cold *c);
/* Frees the slot and writes its close event (reason NULL: an ordinary close). */
void aegis_net_release(int fd, struct hot *h, struct cold *c, const char *reason);
void aegis_net_totals(int fd, struct hot *h, struct cold *c);  /* totals event, if counts changed */

/* ---- fdlife.c ---- */
void aegis_fdlife_atfork_child(void);
void aegis_fdlife_flush_all(int at_exec);  /* at exit (0) or before exec (1) */

/* ---- dns.c ---- */
void aegis_dns_lookup(const struct sockaddr *sa, char *host, size_t n);
void aegis_dns_atfork_child(void);

/* ---- policy.c ---- */
extern AEGIS_HIDDEN int aegis_policy_on;  /* AEGIS_NETMON_POLICY was given */
void aegis_policy_init(void);
/* A connect/send to sa that the policy denies: writes the deny event and returns 1 (the caller
 * fails with ECONNREFUSED without calling the real function). */
int aegis_policy_denies(int fd, const struct sockaddr *sa, socklen_t len);

/* ---- redirect.c ---- */
void aegis_redirect_init(void);

/* ---- exec.c ---- */
void aegis_exec_check_env(const char *path, char *const envp[], int search_path);

#endif
