/* The per-fd table: storage, slot states and the seqlock; no events, no policy.
 *
 * A "hot" half (state + counters, one cache line) is all that the read/write/send/recv paths
 * touch: one load for an fd that is not a tracked socket, one atomic add when it is. The "cold"
 * half (address, host, start time) is written when a slot is filled and read when an event is
 * written; a per-slot generation (seqlock) lets another thread's totals event notice that the fd
 * was reused while it copied. Fds beyond the table go to a small open-addressing table with
 * atomic keys. */
#include "aegis.h"

#include <string.h>

#define OVF_SIZE 1024 /* power of two */
#define OVF_EMPTY 0
#define OVF_TOMB (-1)

struct hot aegis_fd_hot[FD_TABLE];
struct cold aegis_fd_cold[FD_TABLE];
static struct {
    _Atomic int key;
    struct hot h;
    struct cold c;
} ovf[OVF_SIZE];
static atomic_int ovf_used;
/* Highest fd below FD_TABLE ever filled: bounds the scans at close_range, fork, exec and exit. */
static atomic_int max_fd = -1;

_Static_assert(sizeof(struct hot) == 64, "one cache line per fd");

struct hot *aegis_fd_ovf_find(int fd, struct cold **c)
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
    struct hot *found = aegis_fd_ovf_find(fd, c);
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

struct hot *aegis_fd_claim(int fd, struct cold **c)
{
    return (unsigned)fd < FD_TABLE ? aegis_fd_slot(fd, c) : ovf_insert(fd, c);
}

void aegis_fd_fill(int fd, struct hot *h, struct cold *c, const struct cold *src, uint32_t kind,
                   uint32_t next_report, uint32_t unreported)
{
    atomic_fetch_add_explicit(&h->gen, 1, memory_order_acq_rel);
    memcpy(c, src, sizeof *c);
    c->start_mono = aegis_mono();
    c->rep_sent = c->rep_recv = 0;
    atomic_store(&h->sent, 0);
    atomic_store(&h->recv, 0);
    atomic_store(&h->next_report, next_report);
    atomic_store(&h->unreported, unreported);
    atomic_fetch_add_explicit(&h->gen, 1, memory_order_release);
    atomic_store_explicit(&h->state, kind, memory_order_release);
    int m = atomic_load(&max_fd);
    while (fd > m && fd < FD_TABLE && !atomic_compare_exchange_weak(&max_fd, &m, fd)) {
    }
}

int aegis_fd_snapshot(struct hot *h, const struct cold *c, struct cold *out)
{
    uint32_t g1 = atomic_load_explicit(&h->gen, memory_order_acquire);
    if (g1 & 1) return 0;
    memcpy(out, c, sizeof *out);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&h->gen, memory_order_relaxed) == g1;
}

int aegis_fd_free(int fd, struct hot *h, const struct cold *c, struct fd_final *out)
{
    out->state = atomic_exchange(&h->state, S_FREE);
    if (out->state == S_FREE) return 0;
    out->unreported = atomic_exchange(&h->unreported, 0);
    out->sent = atomic_exchange(&h->sent, 0);
    out->recv = atomic_exchange(&h->recv, 0);
    out->consistent = aegis_fd_snapshot(h, c, &out->snap);
    /* Only now: once the key is a tombstone another fd may take the entry and its cold half. */
    if ((unsigned)fd >= FD_TABLE) ovf_release(fd);
    return 1;
}

void aegis_fd_each(unsigned first, unsigned last, void (*fn)(int fd, struct hot *h, struct cold *c))
{
    int m = atomic_load(&max_fd);
    for (unsigned fd = first; fd <= last && (int)fd <= m; fd++)
        if (atomic_load_explicit(&aegis_fd_hot[fd].state, memory_order_relaxed) != S_FREE)
            fn((int)fd, &aegis_fd_hot[fd], &aegis_fd_cold[fd]);
    if (last >= FD_TABLE && atomic_load(&ovf_used))
        for (unsigned i = 0; i < OVF_SIZE; i++) {
            int key = atomic_load(&ovf[i].key);
            if (key > 0 && (unsigned)key >= first && (unsigned)key <= last &&
                atomic_load(&ovf[i].h.state) != S_FREE)
                fn(key, &ovf[i].h, &ovf[i].c);
        }
}
