/* getaddrinfo: remembers address -> host name of recent lookups, so that a connect shows
 * `api.anthropic.com:443` and not only an address, and writes one "dns" event per lookup.
 *
 * The cache is a small ring guarded by a try-lock: a connect that finds it busy (another thread
 * is filling it, or a signal handler interrupted the holder) just goes without a host name
 * rather than waiting. */
#include "aegis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#define DNS_CACHE 256

struct dns_entry {
    int family; /* 0 = unused */
    unsigned char addr[16];
    char host[128];
};

static struct dns_entry cache[DNS_CACHE];
static unsigned cache_next;
static atomic_flag cache_lock = ATOMIC_FLAG_INIT;

static int try_lock(void)
{
    for (int i = 0; i < 100; i++)
        if (!atomic_flag_test_and_set_explicit(&cache_lock, memory_order_acquire)) return 1;
    return 0;
}

static void unlock(void) { atomic_flag_clear_explicit(&cache_lock, memory_order_release); }

void aegis_dns_atfork_child(void) { atomic_flag_clear(&cache_lock); }

/* The address bytes of `sa`; an IPv4-mapped IPv6 address counts as its IPv4 address. */
static int addr_key(const struct sockaddr *sa, unsigned char out[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(out, a->s6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(out, a, 16);
        return AF_INET6;
    }
    return 0;
}

void aegis_dns_lookup(const struct sockaddr *sa, char *host, size_t n)
{
    unsigned char key[16];
    int family = sa ? addr_key(sa, key) : 0;
    host[0] = '\0';
    if (!family || !try_lock()) return;
    size_t klen = family == AF_INET ? 4 : 16;
    /* Only the slots filled so far: a program that never resolved a name (or a few) pays for
     * those, not for the whole ring, at each connect. */
    unsigned filled = cache_next < DNS_CACHE ? cache_next : DNS_CACHE;
    for (unsigned i = 1; i <= filled; i++) { /* newest first */
        const struct dns_entry *e = &cache[(cache_next - i) % DNS_CACHE];
        if (e->family == family && !memcmp(e->addr, key, klen)) {
            strncpy(host, e->host, n - 1);
            host[n - 1] = '\0';
            break;
        }
    }
    unlock();
}

static int is_numeric(const char *node)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, node, buf) == 1 || inet_pton(AF_INET6, node, buf) == 1;
}

static void remember(const char *node, const struct addrinfo *res)
{
    char line[2048], text[64], answers[8][64];
    int nanswers = 0;
    if (try_lock()) {
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            unsigned char key[16];
            int family = ai->ai_addr ? addr_key(ai->ai_addr, key) : 0;
            if (!family) continue;
            size_t klen = family == AF_INET ? 4 : 16;
            struct dns_entry *slot = NULL;
            for (unsigned i = 1; i <= DNS_CACHE && !slot; i++) {
                struct dns_entry *e = &cache[(cache_next - i) % DNS_CACHE];
                if (e->family == family && !memcmp(e->addr, key, klen)) slot = e;
            }
            if (!slot) slot = &cache[cache_next++ % DNS_CACHE];
            slot->family = family;
            memcpy(slot->addr, key, klen);
            strncpy(slot->host, node, sizeof slot->host - 1);
            slot->host[sizeof slot->host - 1] = '\0';
        }
        unlock();
    }
    if (!aegis_cfg.netmon) return; /* the policy alone needs the names, not the events */
    for (const struct addrinfo *ai = res; ai && nanswers < 8; ai = ai->ai_next) {
        const void *a = NULL;
        if (ai->ai_family == AF_INET) a = &((const struct sockaddr_in *)ai->ai_addr)->sin_addr;
        else if (ai->ai_family == AF_INET6) a = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        if (!a || !inet_ntop(ai->ai_family, a, text, sizeof text)) continue;
        int dup = 0;
        for (int i = 0; i < nanswers && !dup; i++) dup = !strcmp(answers[i], text);
        if (!dup) strcpy(answers[nanswers++], text);
    }
    struct jbuf b = {.p = line, .cap = sizeof line};
    jb_begin_event(&b, "dns");
    jb_key(&b, "host");
    jb_str(&b, node, 400);
    jb_raw(&b, ",\"answers\":[");
    for (int i = 0; i < nanswers; i++) {
        if (i) jb_raw(&b, ",");
        jb_str(&b, answers[i], 64);
    }
    jb_raw(&b, "]");
    aegis_emit(&b);
}

AEGIS_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                             struct addrinfo **res)
{
    ENSURE_INIT();
    if (UNLIKELY(!true_getaddrinfo)) return EAI_SYSTEM;
    int outer = aegis_busy;
    /* NSS modules (resolve, mdns, ...) connect and read on our thread: not the program's traffic. */
    aegis_busy++;
    int r = true_getaddrinfo(node, service, hints, res);
    aegis_busy--;
    if (r == 0 && !outer && (aegis_cfg.netmon || aegis_policy_on) && node && res && *res &&
        !is_numeric(node)) {
        int saved = errno;
        aegis_busy++;
        remember(node, *res);
        aegis_busy--;
        errno = saved;
    }
    return r;
}
