/* Socket hooks: per-fd counters, a few events per connection.
 *
 * The table is indexed by fd (fds are unique within a process at any instant, and the kernel
 * orders close-then-reuse for us). A "hot" half (state + counters, one cache line) is all that the
 * read/write/send/recv paths touch: one load for an fd that is not a tracked socket, one atomic
 * add when it is. The "cold" half (address, host, start time) is written at connect/accept and
 * read when an event is written; a per-slot generation (seqlock) lets another thread's totals
 * event notice that the fd was reused while it copied. Fds beyond the table go to a small
 * open-addressing table with atomic keys.
 *
 * Ordering at close: the slot is released and its close event written BEFORE the real close, so
 * a socket that another thread gets on the same fd number right after cannot be clobbered. */
#include "aegis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>

#define FD_TABLE 65536
#define OVF_SIZE 1024 /* power of two */
#define OVF_EMPTY 0
#define OVF_TOMB (-1)

enum { S_FREE = 0, S_PENDING = 1, S_OPEN = 2, S_KIND = 0xff, S_INHERITED = 0x100 };
enum { P_TCP, P_UDP, P_UNIX };

/* One cache line per fd: a sender thread and a receiver thread on neighbouring fds must not
 * bounce one line between cores with every call (measured: +50% per small send). */
struct hot {
    _Atomic uint32_t state;
    _Atomic uint32_t gen;          /* odd while the cold half is being written */
    _Atomic uint64_t sent;
    _Atomic uint64_t recv;
    _Atomic uint32_t next_report;  /* coarse_ms() of the next totals event */
} __attribute__((aligned(64)));

struct cold {
    double start_real, start_mono;
    uint64_t rep_sent, rep_recv;   /* counts at the last totals event (no event if unchanged) */
    int result;                    /* connect's errno, 0 when connected */
    int dup_of;                    /* fd this one duplicates (no connect event of its own), or -1 */
    uint16_t port;
    uint8_t family, proto, accepted;
    char addr[112];                /* IP text or unix socket path */
    char host[128];                /* the name the program resolved, if we saw it */
};

static struct hot hot_tab[FD_TABLE];
static struct cold cold_tab[FD_TABLE];
static struct {
    _Atomic int key;
    struct hot h;
    struct cold c;
} ovf[OVF_SIZE];
static atomic_int ovf_used;
static atomic_int max_fd = -1;
static atomic_int ovf_full_noted;

_Static_assert(sizeof(struct hot) == 64, "one cache line per fd");

/* ---- slots ---- */

static struct hot *ovf_find(int fd, struct cold **c)
{
    if (!atomic_load_explicit(&ovf_used, memory_order_relaxed)) return NULL;
    unsigned h = (unsigned)fd * 2654435761u;
    for (unsigned i = 0; i < OVF_SIZE; i++) {
        unsigned k = (h + i) & (OVF_SIZE - 1);
        int key = atomic_load_explicit(&ovf[k].key, memory_order_acquire);
        if (key == fd) {
            if (c) *c = &ovf[k].c;
            return &ovf[k].h;
        }
        if (key == OVF_EMPTY) return NULL;
    }
    return NULL;
}

static struct hot *ovf_insert(int fd, struct cold **c)
{
    struct hot *found = ovf_find(fd, c);
    if (found) return found;
    unsigned h = (unsigned)fd * 2654435761u;
    atomic_store(&ovf_used, 1);
    for (unsigned i = 0; i < OVF_SIZE; i++) {
        unsigned k = (h + i) & (OVF_SIZE - 1);
        int key = atomic_load(&ovf[k].key);
        if ((key == OVF_EMPTY || key == OVF_TOMB) &&
            atomic_compare_exchange_strong(&ovf[k].key, &key, fd)) {
            *c = &ovf[k].c;
            return &ovf[k].h;
        }
    }
    return NULL;
}

static void ovf_release(int fd)
{
    unsigned h = (unsigned)fd * 2654435761u;
    for (unsigned i = 0; i < OVF_SIZE; i++) {
        unsigned k = (h + i) & (OVF_SIZE - 1);
        int key = atomic_load(&ovf[k].key);
        if (key == fd) {
            atomic_store(&ovf[k].key, OVF_TOMB);
            return;
        }
        if (key == OVF_EMPTY) return;
    }
}

static inline struct hot *slot_find(int fd, struct cold **c)
{
    if (LIKELY((unsigned)fd < FD_TABLE)) {
        if (c) *c = &cold_tab[fd];
        return &hot_tab[fd];
    }
    return fd < 0 ? NULL : ovf_find(fd, c);
}

/* Coarse monotonic milliseconds (a few ns through the vDSO); wraps, so compare differences. */
static inline uint32_t coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

/* A vfork child (or a raw clone) shares our memory: it must not touch the parent's table.
 * aegis_cfg.pid is refreshed by the fork handler, so only such children see a different pid. */
static int shares_parent_memory(void) { return getpid() != aegis_cfg.pid; }

/* ---- events ---- */

static const char *family_name(int family)
{
    return family == AF_INET ? "ipv4" : family == AF_INET6 ? "ipv6" : "unix";
}

static const char *proto_name(int proto)
{
    return proto == P_TCP ? "tcp" : proto == P_UDP ? "udp" : "unix";
}

static void emit_conn(const char *event, int fd, const struct cold *c, uint64_t sent, uint64_t recv,
                      int with_duration, const char *reason)
{
    char line[2048], scratch[24];
    struct jbuf b = {line, 0, sizeof line};
    jb_begin_event(&b, event);
    jb_key(&b, "fd");
    jb_int(&b, fd);
    jb_key(&b, "family");
    jb_str(&b, family_name(c->family), 8);
    jb_key(&b, "proto");
    jb_str(&b, proto_name(c->proto), 8);
    jb_key(&b, "addr");
    jb_str(&b, c->addr, 400);
    jb_key(&b, "port");
    if (c->family == AF_UNIX) jb_raw(&b, "null");
    else jb_uint(&b, c->port);
    jb_key(&b, "host");
    jb_str(&b, c->host[0] ? c->host : NULL, 400);
    jb_key(&b, "sent");
    jb_uint(&b, sent);
    jb_key(&b, "recv");
    jb_uint(&b, recv);
    jb_key(&b, "duration");
    if (with_duration) jb_time(&b, aegis_mono() - c->start_mono);
    else jb_raw(&b, "null");
    jb_key(&b, "result");
    jb_str(&b, aegis_errno_name(c->result, scratch, sizeof scratch), 40);
    if (c->accepted) jb_raw(&b, ",\"direction\":\"in\"");
    if (c->dup_of >= 0) {
        jb_key(&b, "dup_of");
        jb_int(&b, c->dup_of);
    }
    if (reason) {
        jb_key(&b, "reason");
        jb_str(&b, reason, 40);
    }
    aegis_emit(&b);
}

/* A consistent copy of the cold half, or 0 if the slot was reused meanwhile. */
static int cold_snapshot(struct hot *h, const struct cold *c, struct cold *out)
{
    uint32_t g1 = atomic_load_explicit(&h->gen, memory_order_acquire);
    if (g1 & 1) return 0;
    memcpy(out, c, sizeof *out);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&h->gen, memory_order_relaxed) == g1;
}

static void emit_totals(int fd, struct hot *h, struct cold *c)
{
    struct cold snap;
    if (!cold_snapshot(h, c, &snap)) return;
    uint64_t sent = atomic_load(&h->sent), recv = atomic_load(&h->recv);
    if (sent == snap.rep_sent && recv == snap.rep_recv) return;
    c->rep_sent = sent;
    c->rep_recv = recv;
    emit_conn("totals", fd, &snap, sent, recv, 1, NULL);
}

/* Releases the slot and writes its close event. */
static void release(int fd, struct hot *h, struct cold *c, const char *reason)
{
    uint32_t st = atomic_exchange(&h->state, S_FREE);
    if (st == S_FREE) return;
    uint64_t sent = atomic_exchange(&h->sent, 0), recv = atomic_exchange(&h->recv, 0);
    struct cold snap;
    int ok = cold_snapshot(h, c, &snap);
    if ((unsigned)fd >= FD_TABLE) ovf_release(fd);
    /* A socket inherited across fork that this process never used is the parent's to report. */
    if (ok && (!(st & S_INHERITED) || sent || recv)) emit_conn("close", fd, &snap, sent, recv, 1, reason);
}

/* ---- tracking ---- */

struct peer {
    int family, proto;
    uint16_t port;
    char addr[112];
};

static int describe(int fd, const struct sockaddr *sa, socklen_t len, struct peer *p)
{
    memset(p, 0, sizeof *p);
    if (!sa || len < (socklen_t)sizeof(sa_family_t)) return 0;
    p->family = sa->sa_family;
    if (p->family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, p->addr, sizeof p->addr);
        p->port = ntohs(in->sin_port);
    } else if (p->family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, p->addr, sizeof p->addr);
        p->port = ntohs(in6->sin6_port);
    } else if (p->family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (n > sizeof un->sun_path) n = sizeof un->sun_path;
        if (n && un->sun_path[0] == '\0') { /* abstract socket: shown as @name */
            p->addr[0] = '@';
            size_t m = n - 1 < sizeof p->addr - 2 ? n - 1 : sizeof p->addr - 2;
            for (size_t i = 0; i < m; i++) p->addr[1 + i] = un->sun_path[1 + i] ? un->sun_path[1 + i] : '@';
            p->addr[1 + m] = '\0';
        } else {
            size_t m = strnlen(un->sun_path, n);
            if (m > sizeof p->addr - 1) m = sizeof p->addr - 1;
            memcpy(p->addr, un->sun_path, m);
            p->addr[m] = '\0';
        }
    } else {
        return 0; /* netlink, packet, ...: not network connections */
    }
    int type = 0;
    socklen_t tl = sizeof type;
    if (p->family == AF_UNIX) p->proto = P_UNIX;
    else if (true_getsockopt && true_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 &&
             type == SOCK_DGRAM)
        p->proto = P_UDP;
    else p->proto = P_TCP;
    return 1;
}

static inline int tracked(int fd);

/* Puts `src` (with fresh counters) into fd's slot and marks it `kind`. */
static struct hot *install(int fd, const struct cold *src, uint32_t kind)
{
    struct cold *c;
    struct hot *h = (unsigned)fd < FD_TABLE ? slot_find(fd, &c) : ovf_insert(fd, &c);
    if (!h) {
        if (!atomic_exchange(&ovf_full_noted, 1)) {
            char line[512];
            struct jbuf b = {line, 0, sizeof line};
            jb_begin_event(&b, "gap");
            jb_raw(&b, ",\"reason\":\"too many sockets open at once: some are not counted\"");
            aegis_emit(&b);
        }
        return NULL;
    }
    if (atomic_load(&h->state) != S_FREE) release(fd, h, c, "replaced"); /* its close went past us */
    atomic_fetch_add_explicit(&h->gen, 1, memory_order_acq_rel);
    memcpy(c, src, sizeof *c);
    c->start_mono = aegis_mono();
    c->rep_sent = c->rep_recv = 0;
    atomic_store(&h->sent, 0);
    atomic_store(&h->recv, 0);
    atomic_store(&h->next_report, coarse_ms() + aegis_cfg.interval * 1000u);
    atomic_fetch_add_explicit(&h->gen, 1, memory_order_release);
    atomic_store_explicit(&h->state, kind, memory_order_release);
    int m = atomic_load(&max_fd);
    while (fd > m && fd < FD_TABLE && !atomic_compare_exchange_weak(&max_fd, &m, fd)) {
    }
    return h;
}

static void track(int fd, const struct peer *p, const struct sockaddr *sa, int result, int accepted,
                  uint32_t kind)
{
    struct cold c;
    memset(&c, 0, sizeof c);
    c.start_real = aegis_now();
    c.result = result;
    c.port = p->port;
    c.family = (uint8_t)p->family;
    c.proto = (uint8_t)p->proto;
    c.accepted = (uint8_t)accepted;
    c.dup_of = -1;
    memcpy(c.addr, p->addr, sizeof c.addr);
    if (p->family != AF_UNIX) aegis_dns_lookup(sa, c.host, sizeof c.host);
    install(fd, &c, kind);
}

/* dup/dup2/dup3/F_DUPFD of a tracked socket: the new fd carries the same connection (git
 * reads on one and writes on a dup). It gets no connect event of its own; its totals and close
 * events carry what went through it, so the reader adds bytes without counting a connection. */
static void on_dup(int oldfd, int newfd)
{
    if (newfd < 0 || oldfd == newfd || !aegis_cfg.netmon || aegis_busy || !tracked(oldfd)) return;
    if (shares_parent_memory()) return;
    int saved = errno;
    struct cold *oc;
    struct hot *oh = slot_find(oldfd, &oc);
    struct cold snap;
    uint32_t st = oh ? atomic_load(&oh->state) : S_FREE;
    if (st != S_FREE && cold_snapshot(oh, oc, &snap)) {
        if (snap.dup_of < 0) snap.dup_of = oldfd;
        install(newfd, &snap, st);
    }
    errno = saved;
}

static void on_connect(int fd, const struct sockaddr *sa, socklen_t len, int err)
{
    struct cold *c;
    struct hot *h = slot_find(fd, &c);
    uint32_t st = h ? atomic_load(&h->state) : S_FREE;
    if (sa && sa->sa_family == AF_UNSPEC) { /* dissolves a UDP association */
        if (st != S_FREE && err == 0) release(fd, h, c, NULL);
        return;
    }
    struct peer p;
    if (!describe(fd, sa, len, &p)) return;
    if (st != S_FREE) {
        /* Polling a connect in progress (EALREADY / EISCONN / the final result), not a new one. */
        if (err == EALREADY || err == EINPROGRESS) return;
        if (err == EISCONN || ((st & S_KIND) == S_PENDING && p.port == c->port && !strcmp(p.addr, c->addr))) {
            c->result = err == EISCONN ? 0 : err;
            if (c->result == 0) atomic_store(&h->state, S_OPEN | (st & S_INHERITED));
            return;
        }
    }
    if (err == EALREADY || err == EISCONN) return;
    struct cold ev;
    memset(&ev, 0, sizeof ev);
    ev.dup_of = -1;
    ev.result = err;
    ev.port = p.port;
    ev.family = (uint8_t)p.family;
    ev.proto = (uint8_t)p.proto;
    memcpy(ev.addr, p.addr, sizeof ev.addr);
    if (p.family != AF_UNIX) aegis_dns_lookup(sa, ev.host, sizeof ev.host);
    emit_conn("connect", fd, &ev, 0, 0, 0, NULL);
    if (err == 0) track(fd, &p, sa, 0, 0, S_OPEN);
    else if (err == EINPROGRESS || err == EINTR || err == EAGAIN) track(fd, &p, sa, err, 0, S_PENDING);
    else if (st != S_FREE) release(fd, h, c, "replaced");
}

static void on_accept(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return;
    struct peer p;
    if (!describe(fd, (struct sockaddr *)&ss, len, &p)) return;
    track(fd, &p, (struct sockaddr *)&ss, 0, 1, S_OPEN);
    struct cold *c;
    struct hot *h = slot_find(fd, &c);
    struct cold snap;
    if (h && cold_snapshot(h, c, &snap)) emit_conn("accept", fd, &snap, 0, 0, 0, NULL);
}

/* The hot path: count bytes on a tracked socket; everything else costs one load. */
static void account_slow(int fd, struct hot *h, size_t n, int incoming)
{
    uint32_t st = atomic_load_explicit(&h->state, memory_order_acquire);
    if (st == S_FREE) return;
    atomic_fetch_add_explicit(incoming ? &h->recv : &h->sent, n, memory_order_relaxed);
    struct cold *c = (unsigned)fd < FD_TABLE ? &cold_tab[fd] : NULL;
    if (!c) slot_find(fd, &c);
    if (UNLIKELY((st & S_KIND) == S_PENDING)) { /* data moved: the connect completed */
        if (atomic_compare_exchange_strong(&h->state, &st, S_OPEN | (st & S_INHERITED))) c->result = 0;
    }
    uint32_t now = coarse_ms(), due = atomic_load_explicit(&h->next_report, memory_order_relaxed);
    if (UNLIKELY((int32_t)(now - due) >= 0) &&
        atomic_compare_exchange_strong(&h->next_report, &due, now + aegis_cfg.interval * 1000u)) {
        int saved = errno;
        emit_totals(fd, h, c);
        errno = saved;
    }
}

static inline void account(int fd, ssize_t n, int incoming)
{
    if (n <= 0) return;
    struct hot *h;
    if (LIKELY((unsigned)fd < FD_TABLE)) {
        h = &hot_tab[fd];
        if (LIKELY(atomic_load_explicit(&h->state, memory_order_relaxed) == S_FREE)) return;
    } else {
        h = ovf_find(fd, NULL);
        if (!h) return;
    }
    account_slow(fd, h, (size_t)n, incoming);
}

static inline int tracked(int fd)
{
    if (LIKELY((unsigned)fd < FD_TABLE))
        return atomic_load_explicit(&hot_tab[fd].state, memory_order_relaxed) != S_FREE;
    return fd >= 0 && ovf_find(fd, NULL) != NULL;
}

void aegis_net_closing(int fd)
{
    if (!tracked(fd) || shares_parent_memory()) return;
    int saved = errno;
    struct cold *c;
    struct hot *h = slot_find(fd, &c);
    if (h) release(fd, h, c, NULL);
    errno = saved;
}

static void closing_range(unsigned first, unsigned last)
{
    if (shares_parent_memory()) return;
    int m = atomic_load(&max_fd);
    for (unsigned fd = first; fd <= last && (int)fd <= m; fd++) aegis_net_closing((int)fd);
    if (last >= FD_TABLE && atomic_load(&ovf_used))
        for (unsigned i = 0; i < OVF_SIZE; i++) {
            int key = atomic_load(&ovf[i].key);
            if (key > 0 && (unsigned)key >= first && (unsigned)key <= last) aegis_net_closing(key);
        }
}

static void flush_one(int fd, int at_exec)
{
    struct cold *c;
    struct hot *h = slot_find(fd, &c);
    if (!h) return;
    uint32_t st = atomic_load(&h->state);
    if (st == S_FREE) return;
    if (at_exec) {
        int flags = true_fcntl ? true_fcntl(fd, F_GETFD) : -1;
        if (flags >= 0 && !(flags & FD_CLOEXEC)) { /* survives the exec, unseen by the new image */
            if (!(st & S_INHERITED)) emit_totals(fd, h, c);
            return;
        }
        release(fd, h, c, "exec");
    } else {
        release(fd, h, c, "exit");
    }
}

void aegis_net_flush_all(int at_exec)
{
    if (!aegis_cfg.netmon) return;
    int saved = errno;
    aegis_busy++;
    int m = atomic_load(&max_fd);
    for (int fd = 0; fd <= m; fd++)
        if (atomic_load_explicit(&hot_tab[fd].state, memory_order_relaxed) != S_FREE) flush_one(fd, at_exec);
    if (atomic_load(&ovf_used))
        for (unsigned i = 0; i < OVF_SIZE; i++) {
            int key = atomic_load(&ovf[i].key);
            if (key > 0) flush_one(key, at_exec);
        }
    aegis_busy--;
    errno = saved;
}

/* In the fork child every tracked socket is shared with the parent: the parent reports what it
 * did; the child reports only what it does itself. */
static void inherit(struct hot *h, struct cold *c)
{
    uint32_t st = atomic_load(&h->state);
    if (st == S_FREE) return;
    atomic_store(&h->state, st | S_INHERITED);
    atomic_store(&h->sent, 0);
    atomic_store(&h->recv, 0);
    c->rep_sent = c->rep_recv = 0;
    c->start_mono = aegis_mono();
}

void aegis_net_atfork_child(void)
{
    int m = atomic_load(&max_fd);
    for (int fd = 0; fd <= m; fd++) inherit(&hot_tab[fd], &cold_tab[fd]);
    if (atomic_load(&ovf_used))
        for (unsigned i = 0; i < OVF_SIZE; i++)
            if (atomic_load(&ovf[i].key) > 0) inherit(&ovf[i].h, &ovf[i].c);
}

/* ---- the hooks ---- */


AEGIS_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    REAL_OR_ENOSYS(connect);
    int r = true_connect(fd, addr, len);
    if (aegis_cfg.netmon && !aegis_busy) {
        int saved = errno;
        aegis_busy++;
        on_connect(fd, addr, len, r == 0 ? 0 : saved);
        aegis_busy--;
        errno = saved;
    }
    return r;
}

static int after_accept(int r)
{
    if (r >= 0 && aegis_cfg.netmon && !aegis_busy) {
        int saved = errno;
        aegis_busy++;
        on_accept(r);
        aegis_busy--;
        errno = saved;
    }
    return r;
}

AEGIS_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    REAL_OR_ENOSYS(accept);
    return after_accept(true_accept(fd, addr, len));
}

AEGIS_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    REAL_OR_ENOSYS(accept4);
    return after_accept(true_accept4(fd, addr, len, flags));
}

AEGIS_EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    REAL_OR_ENOSYS(getsockopt);
    int r = true_getsockopt(fd, level, name, val, len);
    /* The result of a non-blocking connect arrives here (SO_ERROR after poll). */
    if (r == 0 && level == SOL_SOCKET && name == SO_ERROR && val && len && *len >= sizeof(int) &&
        tracked(fd)) {
        struct cold *c;
        struct hot *h = slot_find(fd, &c);
        uint32_t st = h ? atomic_load(&h->state) : S_FREE;
        if ((st & S_KIND) == S_PENDING) {
            int err = *(int *)val;
            if (err == 0) {
                c->result = 0;
                atomic_store(&h->state, S_OPEN | (st & S_INHERITED));
            } else {
                c->result = err;
            }
        }
    }
    return r;
}

AEGIS_EXPORT int close(int fd)
{
    REAL_OR_ENOSYS(close);
    if (UNLIKELY(tracked(fd)) && !aegis_busy) aegis_net_closing(fd);
    return true_close(fd);
}

AEGIS_EXPORT int dup(int oldfd)
{
    REAL_OR_ENOSYS(dup);
    int r = true_dup(oldfd);
    if (UNLIKELY(r >= 0 && tracked(oldfd))) on_dup(oldfd, r);
    return r;
}

AEGIS_EXPORT int dup2(int oldfd, int newfd)
{
    REAL_OR_ENOSYS(dup2);
    if (oldfd != newfd && tracked(newfd) && !aegis_busy) aegis_net_closing(newfd);
    int r = true_dup2(oldfd, newfd);
    if (UNLIKELY(r >= 0 && tracked(oldfd))) on_dup(oldfd, r);
    return r;
}

AEGIS_EXPORT int dup3(int oldfd, int newfd, int flags)
{
    REAL_OR_ENOSYS(dup3);
    if (oldfd != newfd && tracked(newfd) && !aegis_busy) aegis_net_closing(newfd);
    int r = true_dup3(oldfd, newfd, flags);
    if (UNLIKELY(r >= 0 && tracked(oldfd))) on_dup(oldfd, r);
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
        if (UNLIKELY((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && r >= 0 && tracked(fd)))         \
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
        if (number == SYS_close && tracked((int)a1)) aegis_net_closing((int)a1);
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

#define IO_HOOK(ret, name, incoming, params, args)                                                 \
    AEGIS_EXPORT ret name params                                                                   \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        ret r = true_##name args;                                                                  \
        account(fd, (ssize_t)r, incoming);                                                         \
        return r;                                                                                  \
    }

IO_HOOK(ssize_t, read, 1, (int fd, void *buf, size_t n), (fd, buf, n))
IO_HOOK(ssize_t, write, 0, (int fd, const void *buf, size_t n), (fd, buf, n))
IO_HOOK(ssize_t, readv, 1, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
IO_HOOK(ssize_t, writev, 0, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
IO_HOOK(ssize_t, send, 0, (int fd, const void *buf, size_t n, int flags), (fd, buf, n, flags))
IO_HOOK(ssize_t, sendto, 0,
        (int fd, const void *buf, size_t n, int flags, const struct sockaddr *a, socklen_t al),
        (fd, buf, n, flags, a, al))
IO_HOOK(ssize_t, sendmsg, 0, (int fd, const struct msghdr *msg, int flags), (fd, msg, flags))
IO_HOOK(ssize_t, __read_chk, 1, (int fd, void *buf, size_t n, size_t buflen), (fd, buf, n, buflen))

/* MSG_PEEK leaves the data in the socket: it is counted when it is really read. */
#define RECV_HOOK(name, params, args)                                                              \
    AEGIS_EXPORT ssize_t name params                                                               \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        ssize_t r = true_##name args;                                                              \
        if (!(flags & MSG_PEEK)) account(fd, r, 1);                                                \
        return r;                                                                                  \
    }

RECV_HOOK(recv, (int fd, void *buf, size_t n, int flags), (fd, buf, n, flags))
RECV_HOOK(recvfrom, (int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *al),
          (fd, buf, n, flags, a, al))
RECV_HOOK(recvmsg, (int fd, struct msghdr *msg, int flags), (fd, msg, flags))
RECV_HOOK(__recv_chk, (int fd, void *buf, size_t n, size_t buflen, int flags), (fd, buf, n, buflen, flags))
RECV_HOOK(__recvfrom_chk,
          (int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *a, socklen_t *al),
          (fd, buf, n, buflen, flags, a, al))

/* Zero-copy transfers (Python's socket.sendfile, static file servers, proxies): bytes that
 * leave through a socket without a send call. */
IO_HOOK(ssize_t, sendfile, 0, (int fd, int in_fd, off_t *off, size_t n), (fd, in_fd, off, n))
IO_HOOK(ssize_t, sendfile64, 0, (int fd, int in_fd, off64_t *off, size_t n), (fd, in_fd, off, n))

AEGIS_EXPORT ssize_t splice(int in_fd, loff_t *in_off, int fd, loff_t *out_off, size_t n,
                            unsigned int flags)
{
    REAL_OR_ENOSYS(splice);
    ssize_t r = true_splice(in_fd, in_off, fd, out_off, n, flags);
    account(fd, r, 0);     /* into a socket: sent */
    account(in_fd, r, 1);  /* out of a socket: received */
    return r;
}

static size_t mmsg_bytes(const struct mmsghdr *v, int r)
{
    size_t total = 0;
    for (int i = 0; i < r; i++) total += v[i].msg_len;
    return total;
}

AEGIS_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    REAL_OR_ENOSYS(sendmmsg);
    int r = true_sendmmsg(fd, vec, vlen, flags);
    if (r > 0 && tracked(fd)) account(fd, (ssize_t)mmsg_bytes(vec, r), 0);
    return r;
}

AEGIS_EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *t)
{
    REAL_OR_ENOSYS(recvmmsg);
    int r = true_recvmmsg(fd, vec, vlen, flags, t);
    if (r > 0 && !(flags & MSG_PEEK) && tracked(fd)) account(fd, (ssize_t)mmsg_bytes(vec, r), 1);
    return r;
}
