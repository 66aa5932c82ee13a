/* Connection tracking: a few events per connection, and the bytes that go through it.
 *
 * connect/accept fill an fd's slot (fdtable.c) and write the connect/accept event; the I/O hooks
 * count bytes on tracked sockets (one load for any other fd) and write a totals event at most
 * every AEGIS_NETMON_INTERVAL seconds; a slot freed here or in fdlife.c writes the close event.
 * A little over 400 lines: the I/O hooks (a page of one-line macro uses) stay beside account(),
 * which they inline; moving them out would put the accounting and its helpers in aegis.h. */
#include "aegis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

enum { P_TCP, P_UDP, P_UNIX };

static atomic_int ovf_full_noted;


/* ---- events ---- */

static void put_family(struct jbuf *b, int family)
{
    if (family == AF_INET) jb_lit_str(b, "ipv4");
    else if (family == AF_INET6) jb_lit_str(b, "ipv6");
    else jb_lit_str(b, "unix");
}

static void put_proto(struct jbuf *b, int proto)
{
    if (proto == P_TCP) jb_lit_str(b, "tcp");
    else if (proto == P_UDP) jb_lit_str(b, "udp");
    else jb_lit_str(b, "unix");
}

/* One connection line into b: `ts` when it happened, `duration` null when negative. */
static void put_conn(struct jbuf *b, const char *event, double ts, int fd, const struct cold *c,
                     uint64_t sent, uint64_t recv, double duration, int result, const char *reason)
{
    char scratch[24];
    jb_begin_event_at(b, event, ts);
    jb_key(b, "fd");
    jb_int(b, fd);
    jb_key(b, "family");
    put_family(b, c->family);
    jb_key(b, "proto");
    put_proto(b, c->proto);
    jb_key(b, "addr");
    jb_str(b, c->addr, 400);
    jb_key(b, "port");
    if (c->family == AF_UNIX) jb_raw(b, "null");
    else jb_uint(b, c->port);
    jb_key(b, "host");
    jb_str(b, c->host[0] ? c->host : NULL, 400);
    jb_key(b, "sent");
    jb_uint(b, sent);
    jb_key(b, "recv");
    jb_uint(b, recv);
    jb_key(b, "duration");
    if (duration >= 0) jb_time(b, duration);
    else jb_raw(b, "null");
    jb_key(b, "result");
    jb_put(b, "\"", 1); /* an errno name: letters and digits */
    jb_raw(b, aegis_errno_name(result, scratch, sizeof scratch));
    jb_put(b, "\"", 1);
    if (c->accepted) jb_raw(b, ",\"direction\":\"in\"");
    if (c->dup_of >= 0) {
        jb_key(b, "dup_of");
        jb_int(b, c->dup_of);
    }
    if (reason) {
        jb_key(b, "reason");
        jb_str(b, reason, 40);
    }
    jb_end_line(b);
}

/* The connect (or accept) line, as it would have been written when the connection opened. */
static void put_open(struct jbuf *b, int fd, const struct cold *c)
{
    put_conn(b, c->accepted ? "accept" : "connect", c->start_real, fd, c, 0, 0, -1,
             c->open_result, NULL);
}

/* ---- deferred connect lines ----
 * Most connections of a busy program are short (an HTTP request, a health check): writing their
 * connect line together with their close line, in one write, halves the cost of recording them.
 * A connection's connect/accept line is therefore written at the first of: its close (with the
 * close line), its first send/receive DEFER_MS or more after it opened (with a totals line), a
 * dup, a fork's flush, exec or exit, or any connect, accept or close of the process DEFER_MS or
 * more after it opened (the sweep below, so a connection stuck connecting or idle shows up as
 * soon as the program does anything else with the network). */
#define DEFER_MS 250u

/* Coarse ms at which the oldest deferred line is due; 0 when none is waiting. */
static _Atomic uint32_t sweep_due;

static void arm_sweep(uint32_t due)
{
    uint32_t none = 0;
    atomic_compare_exchange_strong(&sweep_due, &none, due | 1); /* never 0: 0 means none */
}

void aegis_net_report_open(int fd, struct hot *h, struct cold *c)
{
    struct cold snap;
    if (!atomic_load(&h->unreported) || !aegis_fd_snapshot(h, c, &snap)) return;
    if (!atomic_exchange(&h->unreported, 0)) return; /* another thread wrote it */
    char line[2048];
    struct jbuf b = {.p = line, .cap = sizeof line};
    put_open(&b, fd, &snap);
    aegis_write(&b);
}

static void sweep_one(int fd, struct hot *h, struct cold *c)
{
    if (!atomic_load_explicit(&h->unreported, memory_order_relaxed)) return;
    uint32_t due = atomic_load(&h->next_report);
    if ((int32_t)(aegis_coarse_ms() - due) >= 0) aegis_net_report_open(fd, h, c);
    else arm_sweep(due);
}

/* At a connect, accept or close: the deferred lines that are due, in the whole process. */
static void maybe_sweep(void)
{
    uint32_t now = aegis_coarse_ms(), due = atomic_load_explicit(&sweep_due, memory_order_relaxed);
    aegis_flush_if_due(now);
    if (LIKELY(!due || (int32_t)(now - due) < 0)) return;
    if (!atomic_compare_exchange_strong(&sweep_due, &due, 0)) return; /* another thread sweeps */
    aegis_fd_each(0, ~0u, sweep_one);
}

void aegis_net_totals(int fd, struct hot *h, struct cold *c)
{
    struct cold snap;
    if (!aegis_fd_snapshot(h, c, &snap)) return;
    char line[4096];
    struct jbuf b = {.p = line, .cap = sizeof line};
    if (atomic_load(&h->unreported) && atomic_exchange(&h->unreported, 0)) put_open(&b, fd, &snap);
    uint64_t sent = atomic_load(&h->sent), recv = atomic_load(&h->recv);
    if (sent != snap.rep_sent || recv != snap.rep_recv) {
        c->rep_sent = sent;
        c->rep_recv = recv;
        put_conn(&b, "totals", aegis_now(), fd, &snap, sent, recv,
                 aegis_mono() - snap.start_mono, snap.result, NULL);
    }
    aegis_write(&b);
}

void aegis_net_release(int fd, struct hot *h, struct cold *c, const char *reason)
{
    struct fd_final f;
    if (!aegis_fd_free(fd, h, c, &f)) return;
    /* A socket inherited across fork that this process never used is the parent's to report. */
    if (!f.consistent || ((f.state & S_INHERITED) && !f.sent && !f.recv)) return;
    char line[4096];
    struct jbuf b = {.p = line, .cap = sizeof line};
    if (f.unreported) put_open(&b, fd, &f.snap);
    put_conn(&b, "close", aegis_now(), fd, &f.snap, f.sent, f.recv,
             aegis_mono() - f.snap.start_mono, f.snap.result, reason);
    aegis_write(&b);
    maybe_sweep();
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
        aegis_ipv4_text(&in->sin_addr, p->addr);
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

/* A unix socket in aegis-mcp's runtime directory (the control socket, the warm MCP server's):
 * aegis-mcp talking to itself, which namespace mode does not see either. */
static int is_plumbing(const struct peer *p)
{
    size_t n = aegis_cfg.plumbing_len;
    return p->family == AF_UNIX && n && !strncmp(p->addr, aegis_cfg.plumbing_dir, n) &&
           p->addr[n] && !strchr(p->addr + n, '/');
}

struct hot *aegis_net_install(int fd, const struct cold *src, uint32_t kind, int unreported)
{
    struct cold *c;
    struct hot *h = aegis_fd_claim(fd, &c);
    if (!h) {
        if (!atomic_exchange(&ovf_full_noted, 1)) {
            char line[512];
            struct jbuf b = {.p = line, .cap = sizeof line};
            jb_begin_event(&b, "gap");
            jb_raw(&b, ",\"reason\":\"too many sockets open at once: some are not counted\"");
            aegis_emit_now(&b);
        }
        if (unreported) { /* not tracked, but its connect is still on record */
            char line[2048];
            struct jbuf b = {.p = line, .cap = sizeof line};
            put_open(&b, fd, src);
            aegis_write(&b);
        }
        return NULL;
    }
    if (atomic_load(&h->state) != S_FREE) aegis_net_release(fd, h, c, "replaced"); /* its close went past us */
    uint32_t now = aegis_coarse_ms();
    /* While the open line waits, next_report is when it is due; then every interval. */
    uint32_t due = now + (unreported ? DEFER_MS : aegis_cfg.interval * 1000u);
    aegis_fd_fill(fd, h, c, src, kind, due, unreported ? 1 : 0);
    if (unreported) arm_sweep(due);
    return h;
}

static void track(int fd, const struct peer *p, const struct sockaddr *sa, int result, int accepted,
                  uint32_t kind)
{
    struct cold c;
    memset(&c, 0, sizeof c);
    c.start_real = aegis_now();
    c.result = c.open_result = result;
    c.port = p->port;
    c.family = (uint8_t)p->family;
    c.proto = (uint8_t)p->proto;
    c.accepted = (uint8_t)accepted;
    c.dup_of = -1;
    memcpy(c.addr, p->addr, sizeof c.addr);
    if (p->family != AF_UNIX) aegis_dns_lookup(sa, c.host, sizeof c.host);
    aegis_net_install(fd, &c, kind, 1);
}

static void on_connect(int fd, const struct sockaddr *sa, socklen_t len, int err)
{
    struct cold *c;
    struct hot *h = aegis_fd_slot(fd, &c);
    uint32_t st = h ? atomic_load(&h->state) : S_FREE;
    if (sa && sa->sa_family == AF_UNSPEC) { /* dissolves a UDP association */
        if (st != S_FREE && err == 0) aegis_net_release(fd, h, c, NULL);
        return;
    }
    struct peer p;
    if (!describe(fd, sa, len, &p)) return;
    if (is_plumbing(&p)) {
        if (st != S_FREE) aegis_net_release(fd, h, c, "replaced"); /* its close went past us */
        return;
    }
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
    maybe_sweep();
    if (err == 0) {
        track(fd, &p, sa, 0, 0, S_OPEN);
    } else if (err == EINPROGRESS || err == EINTR || err == EAGAIN) {
        track(fd, &p, sa, err, 0, S_PENDING);
    } else { /* failed at once: nothing to wait for */
        struct cold ev;
        memset(&ev, 0, sizeof ev);
        ev.dup_of = -1;
        ev.result = ev.open_result = err;
        ev.port = p.port;
        ev.family = (uint8_t)p.family;
        ev.proto = (uint8_t)p.proto;
        ev.start_real = aegis_now();
        memcpy(ev.addr, p.addr, sizeof ev.addr);
        if (p.family != AF_UNIX) aegis_dns_lookup(sa, ev.host, sizeof ev.host);
        char line[2048];
        struct jbuf b = {.p = line, .cap = sizeof line};
        put_open(&b, fd, &ev);
        aegis_write(&b);
        if (st != S_FREE) aegis_net_release(fd, h, c, "replaced");
    }
}

static void on_accept(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return;
    struct peer p;
    if (!describe(fd, (struct sockaddr *)&ss, len, &p)) return;
    if (p.family == AF_UNIX && aegis_cfg.plumbing_len) { /* the peer is unnamed: ask our end */
        struct peer mine;
        len = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
            describe(fd, (struct sockaddr *)&ss, len, &mine) && is_plumbing(&mine))
            return;
    }
    maybe_sweep();
    track(fd, &p, (struct sockaddr *)&ss, 0, 1, S_OPEN);
}

/* The hot path: count bytes on a tracked socket; everything else costs one load. */
static void account_slow(int fd, struct hot *h, size_t n, int incoming)
{
    uint32_t st = atomic_load_explicit(&h->state, memory_order_acquire);
    if (st == S_FREE) return;
    atomic_fetch_add_explicit(incoming ? &h->recv : &h->sent, n, memory_order_relaxed);
    struct cold *c = (unsigned)fd < FD_TABLE ? &aegis_fd_cold[fd] : NULL;
    if (!c) aegis_fd_slot(fd, &c);
    if (UNLIKELY((st & S_KIND) == S_PENDING)) { /* data moved: the connect completed */
        if (atomic_compare_exchange_strong(&h->state, &st, S_OPEN | (st & S_INHERITED))) c->result = 0;
    }
    uint32_t now = aegis_coarse_ms(), due = atomic_load_explicit(&h->next_report, memory_order_relaxed);
    aegis_flush_if_due(now);
    if (UNLIKELY((int32_t)(now - due) >= 0)) {
        /* The deferred open line first (its totals keep their own schedule from the open). */
        int opening = atomic_load_explicit(&h->unreported, memory_order_relaxed) != 0;
        uint32_t next = now + aegis_cfg.interval * 1000u - (opening ? DEFER_MS : 0);
        if (atomic_compare_exchange_strong(&h->next_report, &due, next)) {
            int saved = errno;
            if (opening) aegis_net_report_open(fd, h, c);
            else aegis_net_totals(fd, h, c);
            errno = saved;
        }
    }
}

static inline void account(int fd, ssize_t n, int incoming)
{
    if (n <= 0) return;
    struct hot *h;
    if (LIKELY((unsigned)fd < FD_TABLE)) {
        h = &aegis_fd_hot[fd];
        if (LIKELY(atomic_load_explicit(&h->state, memory_order_relaxed) == S_FREE)) return;
    } else {
        h = aegis_fd_ovf_find(fd, NULL);
        if (!h) return;
    }
    account_slow(fd, h, (size_t)n, incoming);
}

/* ---- the hooks ---- */

/* The policy's check before a connect or a send with a destination: 1 when it is denied (the
 * deny event is written; errno is ECONNREFUSED, the error of a refusing port). */
static int denied(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (LIKELY(!aegis_policy_on) || !sa || aegis_busy) return 0;
    int saved = errno;
    aegis_busy++;
    int deny = aegis_policy_denies(fd, sa, len);
    aegis_busy--;
    errno = deny ? ECONNREFUSED : saved;
    return deny;
}

AEGIS_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    REAL_OR_ENOSYS(connect);
    if (UNLIKELY(denied(fd, addr, len))) return -1;
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
        aegis_fd_tracked(fd)) {
        struct cold *c;
        struct hot *h = aegis_fd_slot(fd, &c);
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

/* Before the program reads or writes anything but a tracked socket (a terminal, a pipe, a
 * file), the batch goes out: the log is never behind what the program has said, and a read
 * that waits for long (a terminal) does not sit on it. A tracked socket's I/O does not: the
 * churn of short connections is what the batch is for, and a reply arrives soon. */
static inline void before_io(int fd)
{
    if (UNLIKELY(atomic_load_explicit(&aegis_out_due, memory_order_relaxed)) && !aegis_busy &&
        !aegis_fd_tracked(fd))
        aegis_flush();
}

#define IO_HOOK(ret, name, incoming, params, args)                                                 \
    AEGIS_EXPORT ret name params                                                                   \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        before_io(fd);                                                                             \
        ret r = true_##name args;                                                                  \
        account(fd, (ssize_t)r, incoming);                                                         \
        return r;                                                                                  \
    }

IO_HOOK(ssize_t, read, 1, (int fd, void *buf, size_t n), (fd, buf, n))
IO_HOOK(ssize_t, write, 0, (int fd, const void *buf, size_t n), (fd, buf, n))
IO_HOOK(ssize_t, readv, 1, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
IO_HOOK(ssize_t, writev, 0, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))
IO_HOOK(ssize_t, send, 0, (int fd, const void *buf, size_t n, int flags), (fd, buf, n, flags))
/* A send with a destination (unconnected UDP, QUIC, TCP fast open) is a connect for the policy. */
AEGIS_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *a,
                            socklen_t al)
{
    REAL_OR_ENOSYS(sendto);
    if (UNLIKELY(denied(fd, a, al))) return -1;
    ssize_t r = true_sendto(fd, buf, n, flags, a, al);
    account(fd, r, 0);
    return r;
}

AEGIS_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    REAL_OR_ENOSYS(sendmsg);
    if (UNLIKELY(msg && denied(fd, (const struct sockaddr *)msg->msg_name, msg->msg_namelen)))
        return -1;
    ssize_t r = true_sendmsg(fd, msg, flags);
    account(fd, r, 0);
    return r;
}
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
    if (UNLIKELY(aegis_policy_on) && vec) { /* send those before the first denied message */
        for (unsigned i = 0; i < vlen; i++) {
            const struct msghdr *m = &vec[i].msg_hdr;
            if (denied(fd, (const struct sockaddr *)m->msg_name, m->msg_namelen)) {
                if (i == 0) return -1;
                vlen = i;
                break;
            }
        }
    }
    int r = true_sendmmsg(fd, vec, vlen, flags);
    if (r > 0 && aegis_fd_tracked(fd)) account(fd, (ssize_t)mmsg_bytes(vec, r), 0);
    return r;
}

AEGIS_EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *t)
{
    REAL_OR_ENOSYS(recvmmsg);
    int r = true_recvmmsg(fd, vec, vlen, flags, t);
    if (r > 0 && !(flags & MSG_PEEK) && aegis_fd_tracked(fd)) account(fd, (ssize_t)mmsg_bytes(vec, r), 1);
    return r;
}
