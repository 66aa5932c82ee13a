/* Writing events: one JSON object per line, whole lines in one write() with O_APPEND, so lines
 * from concurrent processes and threads never interleave.
 *
 * Everything here is async-signal-safe (a close() from a signal handler may emit an event): the
 * formatter works in a caller's stack buffer, no malloc, no stdio, and the log is opened, written
 * and closed per batch (below) with plain system calls, so the library holds no fd the program
 * could close or inherit. Rotation: when the log reaches AEGIS_NETMON_MAX_BYTES it is renamed to
 * <log>.1 (replacing the previous one) under flock, so two processes never rotate twice. */
#include "aegis.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sched.h>
#include <sys/file.h>
#include <time.h>

void jb_raw(struct jbuf *b, const char *s) { jb_put(b, s, strlen(s)); }

/* glibc formats an IPv4 address with sprintf: a third of what recording a connection cost. */
void aegis_ipv4_text(const struct in_addr *a, char out[16])
{
    const unsigned char *o = (const unsigned char *)&a->s_addr;
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = o[i];
        if (v >= 100) *p++ = (char)('0' + v / 100);
        if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : '\0';
    }
}

void jb_str(struct jbuf *b, const char *s, size_t max_out)
{
    if (!s) {
        jb_put(b, "null", 4);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    size_t used = 0;
    jb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c;) {
        /* A run of characters JSON takes as they are goes in one copy. */
        const unsigned char *run = c;
        while (*run >= 0x20 && *run != 0x7f && *run != '"' && *run != '\\') run++;
        size_t n = (size_t)(run - c);
        if (n) {
            if (n > max_out - used) n = max_out - used; /* a long name is cut */
            jb_put(b, (const char *)c, n);
            used += n;
            if (c + n != run) break;
            c = run;
            continue;
        }
        char out[6] = {'\\', (char)*c};
        n = 2;
        if (*c != '"' && *c != '\\') {
            memcpy(out, "\\u00", 4);
            out[4] = hex[*c >> 4];
            out[5] = hex[*c & 15];
            n = 6;
        }
        if (used + n > max_out) break; /* at a character boundary of JSON */
        jb_put(b, out, n);
        used += n;
        c++;
    }
    jb_put(b, "\"", 1);
}

void jb_uint(struct jbuf *b, unsigned long long v)
{
    /* Two digits per division: a timestamp's ten digits in five steps. */
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233"
                                "34353637383940414243444546474849505152535455565758596061626364656667"
                                "6869707172737475767778798081828384858687888990919293949596979899";
    char tmp[24];
    int i = sizeof tmp;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        tmp[--i] = pairs[d + 1];
        tmp[--i] = pairs[d];
    }
    if (v >= 10) {
        tmp[--i] = pairs[v * 2 + 1];
        tmp[--i] = pairs[v * 2];
    } else {
        tmp[--i] = (char)('0' + v);
    }
    jb_put(b, tmp + i, sizeof tmp - i);
}

void jb_int(struct jbuf *b, long long v)
{
    if (v < 0) {
        jb_put(b, "-", 1);
        jb_uint(b, 0ull - (unsigned long long)v);
    } else {
        jb_uint(b, (unsigned long long)v);
    }
}

void jb_time(struct jbuf *b, double t)
{
    if (t < 0) t = 0;
    unsigned long long us = (unsigned long long)(t * 1e6 + 0.5);
    jb_uint(b, us / 1000000);
    char frac[8] = ".000000";
    unsigned long long f = us % 1000000;
    for (int i = 6; i >= 1; i--, f /= 10) frac[i] = (char)('0' + f % 10);
    jb_put(b, frac, 7);
}


double aegis_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double aegis_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void jb_begin_event(struct jbuf *b, const char *event) { jb_begin_event_at(b, event, aegis_now()); }

/* `,"source":"preload","pid":..,"ppid":..,"exe":..` is the same in every line of a process:
 * formatted once (again in a fork child, whose pid differs), copied after that. */
static char tail_text[320];
static size_t tail_len;
static _Atomic pid_t tail_pid; /* whose tail tail_text is: published after the text */

static void put_tail(struct jbuf *b, pid_t pid, pid_t ppid)
{
    jb_raw(b, ",\"source\":\"preload\"");
    jb_key(b, "pid");
    jb_int(b, pid);
    jb_key(b, "ppid");
    jb_int(b, ppid);
    jb_key(b, "exe");
    jb_str(b, aegis_cfg.exe[0] ? aegis_cfg.exe : NULL, 200);
}

void jb_begin_event_at(struct jbuf *b, const char *event, double ts)
{
    jb_raw(b, "{\"ts\":");
    jb_time(b, ts);
    jb_key(b, "event");
    jb_put(b, "\"", 1);
    jb_raw(b, event); /* one of our literals: nothing to escape */
    jb_put(b, "\"", 1);
    /* Cached, not asked: getpid() and getppid() were two of the seven system calls the hooks
     * added to each short connection. A vfork child, the one process that shares our memory
     * under another pid, sets its own before it emits (exec.c). */
    if (b->pid && b->pid != aegis_cfg.pid) {
        put_tail(b, b->pid, b->ppid);
        return;
    }
    pid_t pid = aegis_cfg.pid ? aegis_cfg.pid : getpid();
    if (atomic_load_explicit(&tail_pid, memory_order_acquire) != pid) {
        struct jbuf t = {.p = tail_text, .cap = sizeof tail_text};
        put_tail(&t, pid, aegis_cfg.pid ? aegis_cfg.ppid : getppid());
        if (t.len >= t.cap) {
            put_tail(b, pid, aegis_cfg.ppid);
            return;
        }
        tail_len = t.len; /* racing threads write the same bytes */
        atomic_store_explicit(&tail_pid, pid, memory_order_release);
    }
    jb_put(b, tail_text, tail_len);
}

static const struct {
    int err;
    const char *name;
} errno_names[] = {
    {EINPROGRESS, "EINPROGRESS"},   {ECONNREFUSED, "ECONNREFUSED"}, {ETIMEDOUT, "ETIMEDOUT"},
    {ENETUNREACH, "ENETUNREACH"},   {EHOSTUNREACH, "EHOSTUNREACH"}, {ECONNRESET, "ECONNRESET"},
    {EADDRNOTAVAIL, "EADDRNOTAVAIL"}, {EADDRINUSE, "EADDRINUSE"},   {EAFNOSUPPORT, "EAFNOSUPPORT"},
    {EALREADY, "EALREADY"},         {EISCONN, "EISCONN"},           {EINTR, "EINTR"},
    {EAGAIN, "EAGAIN"},             {EACCES, "EACCES"},             {EPERM, "EPERM"},
    {ENOENT, "ENOENT"},             {EBADF, "EBADF"},               {ENOTSOCK, "ENOTSOCK"},
    {EINVAL, "EINVAL"},             {ENETDOWN, "ENETDOWN"},         {EPROTOTYPE, "EPROTOTYPE"},
    {EFAULT, "EFAULT"},             {ENOBUFS, "ENOBUFS"},           {ECONNABORTED, "ECONNABORTED"},
    {EHOSTDOWN, "EHOSTDOWN"},       {ENOTDIR, "ENOTDIR"},           {EROFS, "EROFS"},
};

const char *aegis_errno_name(int err, char *scratch, size_t n)
{
    if (err == 0) return "ok";
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (errno_names[i].err == err) return errno_names[i].name;
    struct jbuf b = {.p = scratch, .cap = n};
    jb_raw(&b, "E");
    jb_int(&b, err);
    scratch[b.len < n ? b.len : n - 1] = '\0';
    return scratch;
}

static int open_log(void)
{
    return true_open ? true_open(aegis_cfg.log_path,
                                 O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600)
                     : -1;
}

/* The log is full: rename it to <log>.1 unless another process did already. Non-blocking lock:
 * if someone else holds it, they are rotating; this event goes to the file being rotated. */
static int rotate(int fd, const struct stat *st)
{
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) return fd;
    struct stat cur;
    int rotated = 0;
    if (true_stat && true_stat(aegis_cfg.log_path, &cur) == 0 && cur.st_ino == st->st_ino &&
        cur.st_dev == st->st_dev && (uint64_t)cur.st_size >= aegis_cfg.max_bytes)
        rotated = rename(aegis_cfg.log_path, aegis_cfg.rotated_path) == 0;
    flock(fd, LOCK_UN);
    if (!rotated) return fd;
    true_close(fd);
    return open_log();
}

void jb_end_line(struct jbuf *b)
{
    if (b->len + 2 >= b->cap) { /* overflowed: the whole buffer is dropped, never a broken line */
        b->len = b->cap;
        return;
    }
    memcpy(b->p + b->len, "}\n", 2);
    b->len += 2;
}

/* Bytes this process wrote since it last looked at the log's size: the size is checked (one
 * fstat) at the first write and then once per ROTATE_CHECK bytes (a 32nd of the limit if that
 * is less), not per write, so a process lets the log outgrow AEGIS_NETMON_MAX_BYTES by at most
 * that much (and one write) before it rotates it. */
#define ROTATE_CHECK (64u << 10)
static _Atomic uint64_t unchecked = ROTATE_CHECK;

/* Lines to the log: open, one write(), close. */
static void write_out(const char *p, size_t n)
{
    int fd = open_log();
    if (fd < 0) return;
    struct stat st;
    uint64_t every = aegis_cfg.max_bytes / 32 < ROTATE_CHECK ? aegis_cfg.max_bytes / 32 : ROTATE_CHECK;
    if (atomic_fetch_add(&unchecked, n) >= every) {
        atomic_store(&unchecked, 0);
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= aegis_cfg.max_bytes) fd = rotate(fd, &st);
    }
    if (fd >= 0) {
        /* Silent on failure: a full disk or a removed directory must not harm the program. */
        ssize_t w = true_write(fd, p, n);
        (void)w;
        true_close(fd);
    }
}

/* ---- the batch ----
 * Opening, writing and closing the log for every line was the largest part of what recording
 * a short connection cost. Lines therefore wait in one buffer per process and go out together,
 * still whole and in order, in one write() with O_APPEND. A line waits until the first of: the
 * buffer filling; AEGIS_NETMON_BATCH_MS (100) passing, as seen at the next hooked call; the
 * program reading or writing anything but a tracked socket (a terminal, a pipe, a file: net.c),
 * waiting (poll, epoll, select, sleep: wait.c), forking, exec'ing or exiting; a denial or a gap
 * (which go out at once). So the log is never behind what the program has said, a program that
 * goes idle never sits on its events, and one killed by a signal loses only what it batched
 * since it last did any of that: short connections made one after another, nothing else. */
#define OUT_CAP 8192u
static char out_buf[OUT_CAP];
static size_t out_len;
AEGIS_HIDDEN _Atomic uint32_t aegis_out_due;
static atomic_flag out_lock = ATOMIC_FLAG_INIT;
static AEGIS_TLS int out_mine; /* this thread holds out_lock */

/* The lock is held for a copy or one write(): other threads wait a little; a signal handler
 * on the holder's own thread, or a thread that waited too long, writes past the batch. */
static int out_take(void)
{
    if (out_mine) return 0;
    for (unsigned i = 0; i < 4096; i++) {
        if (!atomic_flag_test_and_set_explicit(&out_lock, memory_order_acquire)) {
            out_mine = 1;
            return 1;
        }
        if (i >= 64) sched_yield();
    }
    return 0;
}

static void out_give(void)
{
    out_mine = 0;
    atomic_flag_clear_explicit(&out_lock, memory_order_release);
}

static void out_flush_held(void)
{
    if (out_len) write_out(out_buf, out_len);
    out_len = 0;
    atomic_store_explicit(&aegis_out_due, 0, memory_order_relaxed);
}

void aegis_write(struct jbuf *b)
{
    if (b->len == 0 || b->len >= b->cap) return;
    if (!true_write || !true_close) return;
    int saved = errno;
    aegis_busy++;
    /* A batch is at most a 32nd of the log's limit too, so that the log still outgrows the
     * limit by no more than it did line by line (rotation, above). */
    size_t cap = aegis_cfg.max_bytes / 32 < OUT_CAP ? aegis_cfg.max_bytes / 32 : OUT_CAP;
    if (!aegis_cfg.batch_ms || b->len > cap / 2 || !out_take()) {
        write_out(b->p, b->len);
    } else {
        if (out_len + b->len > cap) out_flush_held();
        memcpy(out_buf + out_len, b->p, b->len);
        out_len += b->len;
        uint32_t now = aegis_coarse_ms();
        uint32_t due = atomic_load_explicit(&aegis_out_due, memory_order_relaxed);
        if (!due) atomic_store_explicit(&aegis_out_due, (now + aegis_cfg.batch_ms) | 1u,
                                        memory_order_relaxed);
        else if ((int32_t)(now - due) >= 0) out_flush_held();
        out_give();
    }
    aegis_busy--;
    errno = saved;
}

void aegis_flush(void)
{
    if (!atomic_load_explicit(&aegis_out_due, memory_order_relaxed) || !true_write || !true_close)
        return;
    int saved = errno;
    aegis_busy++;
    if (out_take()) {
        out_flush_held();
        out_give();
    }
    aegis_busy--;
    errno = saved;
}

/* The child's copy of the batch is the parent's to write (the parent flushed it just before
 * the fork; a line another thread added meanwhile stays the parent's). */
void aegis_out_atfork_child(void)
{
    out_len = 0;
    out_mine = 0;
    atomic_store(&aegis_out_due, 0);
    atomic_flag_clear(&out_lock);
}

void aegis_emit(struct jbuf *b)
{
    jb_end_line(b);
    aegis_write(b);
}

void aegis_emit_now(struct jbuf *b)
{
    jb_end_line(b);
    if (b->len == 0 || b->len >= b->cap || !true_write || !true_close) return;
    int saved = errno;
    aegis_busy++;
    int held = out_take();
    if (held) out_flush_held(); /* what waited goes first: the log stays in order */
    write_out(b->p, b->len);
    if (held) out_give();
    aegis_busy--;
    errno = saved;
}
