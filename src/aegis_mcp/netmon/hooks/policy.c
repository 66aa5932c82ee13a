/* The network policy in the connect path: AEGIS_NETMON_POLICY names a compiled policy file
 * (aegis-policy 1, written by the supervisor), read once at init. A connect (or a sendto/sendmsg
 * with a destination: unconnected UDP, QUIC, TCP fast open) to an IPv4/IPv6 address it denies
 * fails at once with ECONNREFUSED, the real call never made, and writes one `deny` event.
 *
 * Decision: the first deny rule (in file order) that matches names the denial; else any allow
 * rule that matches allows; else the default. Rules are sorted at init so that a connect costs a
 * few binary searches however many rules there are: cidr rules grouped by (family, prefix
 * length), the address masked and searched in each group; host rules by name, the host searched
 * as is (exact rules) and each of its parent domains (`*.` rules).
 *
 * A file that cannot be read or parsed fails closed: one line on stderr naming the file and the
 * line, and every connect to an IP address is denied. Memory comes from mmap at init; nothing is
 * written after it, so the hooks read it without locks (and fork children share it). */
#include "aegis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_FILE (16u << 20)

struct rule {
    const char *pattern; /* as written (host patterns in lower case) */
    const char *label;   /* the rest of the line */
    uint8_t host;        /* kind host, else cidr */
    uint16_t port;      /* 0: any */
    uint8_t deny;
};

struct cidr {
    unsigned char net[16];  /* masked */
    uint8_t family, plen;
    uint32_t rule;
};

struct name {
    const char *name;       /* exact name, or what follows "*." */
    uint8_t wild;
    uint32_t rule;
};

struct group {
    uint8_t family, plen;
    uint32_t start, end;    /* within cidrs[] */
};

AEGIS_HIDDEN int aegis_policy_on;
static struct {
    int failed;             /* fail closed: deny every IP connect */
    char why[512];          /* the label of a fail-closed denial */
    int default_deny;
    struct rule *rules;
    struct cidr *cidrs;
    struct name *names;
    struct group groups[200];
    uint32_t nrules, ncidrs, nnames, ngroups;
} pol;

/* ---- parsing ---- */

static void *map_anon(size_t n)
{
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int parse_port(const char *s, size_t n, uint16_t *out)
{
    unsigned v = 0;
    if (!n || n > 5 || (n > 1 && s[0] == '0')) return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) return 0;
    *out = (uint16_t)v;
    return 1;
}

static void mask(unsigned char *a, unsigned plen, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++) {
        unsigned bits = plen > i * 8 ? plen - i * 8 : 0;
        if (bits < 8) a[i] &= (unsigned char)(0xff00u >> bits);
    }
}

static int parse_cidr(char *s, struct cidr *c)
{
    char *slash = strchr(s, '/');
    if (!slash) return 0;
    *slash = '\0';
    const char *len = slash + 1;
    uint16_t plen;
    int ok;
    memset(c->net, 0, sizeof c->net);
    if (inet_pton(AF_INET, s, c->net) == 1) {
        c->family = AF_INET;
        ok = parse_port(len, strlen(len), &plen) && plen <= 32;
    } else if (inet_pton(AF_INET6, s, c->net) == 1) {
        c->family = AF_INET6;
        ok = parse_port(len, strlen(len), &plen) && plen <= 128;
    } else {
        ok = 0;
    }
    *slash = '/';
    if (!ok) return 0;
    c->plen = (uint8_t)plen;
    mask(c->net, plen, c->family == AF_INET ? 4 : 16);
    return 1;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 253 || s[0] == '.' || s[n - 1] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              (ch == '.' && s[i + 1] != '.')))
            return 0;
    }
    return 1;
}

/* Sorting without malloc (init may run before the program's allocator is ready). */
typedef int (*cmp_fn)(const void *, const void *);
static void heap_sort(void *base, size_t n, size_t size, cmp_fn cmp)
{
    char *a = base, tmp[sizeof(struct cidr) > sizeof(struct name) ? sizeof(struct cidr) : sizeof(struct name)];
#define AT(i) (a + (i) * size)
#define SWAP(i, j) (memcpy(tmp, AT(i), size), memcpy(AT(i), AT(j), size), memcpy(AT(j), tmp, size))
    for (size_t end = n, start = n / 2; end > 1;) {
        if (start > 0) {
            start--;
        } else {
            end--;
            SWAP(0, end);
        }
        for (size_t root = start, child; (child = 2 * root + 1) < end; root = child) {
            if (child + 1 < end && cmp(AT(child), AT(child + 1)) < 0) child++;
            if (cmp(AT(root), AT(child)) >= 0) break;
            SWAP(root, child);
        }
    }
#undef AT
#undef SWAP
}

static int cidr_cmp(const void *x, const void *y)
{
    const struct cidr *a = x, *b = y;
    if (a->family != b->family) return a->family - b->family;
    if (a->plen != b->plen) return a->plen - b->plen;
    int m = memcmp(a->net, b->net, 16);
    return m ? m : (a->rule > b->rule) - (a->rule < b->rule);
}

static int name_cmp(const void *x, const void *y)
{
    const struct name *a = x, *b = y;
    if (a->wild != b->wild) return a->wild - b->wild;
    int m = strcmp(a->name, b->name);
    return m ? m : (a->rule > b->rule) - (a->rule < b->rule);
}

/* One rule line, NUL-terminated; 0 with *why set when it is malformed. */
static int parse_rule(char *line, const char **why)
{
    char *f[4], *p = line;
    for (int i = 0; i < 4; i++) {
        f[i] = p;
        p = strchr(p, ' ');
        if (!p && i < 3) {
            *why = "a rule needs ACTION KIND PATTERN PORT [LABEL]";
            return 0;
        }
        if (p) *p++ = '\0';
    }
    struct rule *r = &pol.rules[pol.nrules];
    int deny = !strcmp(f[0], "deny");
    if (!deny && strcmp(f[0], "allow")) {
        *why = "the action must be allow or deny";
        return 0;
    }
    if (!parse_port(f[3], strlen(f[3]), &r->port)) {
        *why = "the port must be 0 (any) or 1-65535";
        return 0;
    }
    if (!strcmp(f[1], "cidr")) {
        struct cidr *c = &pol.cidrs[pol.ncidrs];
        if (!parse_cidr(f[2], c)) {
            *why = "not an IPv4 or IPv6 address with a prefix length (a.b.c.d/n, x::y/n)";
            return 0;
        }
        c->rule = pol.nrules;
        pol.ncidrs++;
    } else if (!strcmp(f[1], "host")) {
        struct name *nm = &pol.names[pol.nnames];
        for (char *q = f[2]; *q; q++)
            if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
        nm->wild = f[2][0] == '*' && f[2][1] == '.';
        nm->name = f[2] + (nm->wild ? 2 : 0);
        if (!valid_name(nm->name)) {
            *why = "not a host name (name.example or *.name.example)";
            return 0;
        }
        nm->rule = pol.nrules;
        pol.nnames++;
    } else {
        *why = "the kind must be host or cidr";
        return 0;
    }
    r->deny = (uint8_t)deny;
    r->host = f[1][0] == 'h';
    r->pattern = f[2];
    r->label = p ? p : "";
    pol.nrules++;
    return 1;
}

static void fail_closed(const char *path, unsigned line, const char *why)
{
    struct jbuf b = {.p = pol.why, .cap = sizeof pol.why};
    jb_raw(&b, "invalid policy ");
    jb_raw(&b, path);
    if (line) {
        jb_raw(&b, " line ");
        jb_uint(&b, line);
    }
    jb_raw(&b, ": ");
    jb_raw(&b, why);
    if (b.len >= b.cap) b.len = b.cap - 3; /* cut: the message is only for people */
    pol.why[b.len] = '\0';
    pol.failed = 1;
    char msg[700];
    struct jbuf m = {.p = msg, .cap = sizeof msg};
    jb_raw(&m, "aegis-mcp: network policy: ");
    jb_raw(&m, pol.why);
    jb_raw(&m, "; every network connection is denied (fail closed)\n");
    if (m.len < m.cap && true_write) {
        ssize_t w = true_write(2, msg, m.len);
        (void)w;
    }
}

static void load(const char *path)
{
    int fd = true_open ? true_open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE) {
        if (fd >= 0) true_close(fd);
        fail_closed(path, 0, fd < 0 ? "cannot be read" : "not a regular file under 16 MiB");
        return;
    }
    size_t size = (size_t)st.st_size;
    char *text = map_anon(size + 1);
    size_t got = 0;
    while (text && got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    true_close(fd);
    if (!text || got != size) {
        fail_closed(path, 0, "cannot be read");
        return;
    }
    text[size] = '\0';
    size_t lines = 1;
    for (size_t i = 0; i < size; i++) lines += text[i] == '\n';
    pol.rules = map_anon(lines * sizeof *pol.rules);
    pol.cidrs = map_anon(lines * sizeof *pol.cidrs);
    pol.names = map_anon(lines * sizeof *pol.names);
    if (!pol.rules || !pol.cidrs || !pol.names) {
        fail_closed(path, 0, "out of memory");
        return;
    }
    unsigned n = 0;
    int seen_default = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        n++;
        const char *why = NULL;
        if (n == 1) {
            if (strcmp(line, "aegis-policy 1")) why = "the first line must be 'aegis-policy 1'";
        } else if (n == 2) {
            if (!strcmp(line, "default deny")) pol.default_deny = 1;
            else if (strcmp(line, "default allow")) why = "the second line must be 'default allow' or 'default deny'";
            seen_default = 1;
        } else if (*line) {
            parse_rule(line, &why);
        }
        if (why) {
            fail_closed(path, n, why);
            return;
        }
    }
    if (!seen_default) {
        fail_closed(path, n + 1, "no 'aegis-policy 1' and 'default' lines");
        return;
    }
    heap_sort(pol.cidrs, pol.ncidrs, sizeof *pol.cidrs, cidr_cmp);
    heap_sort(pol.names, pol.nnames, sizeof *pol.names, name_cmp);
    for (uint32_t i = 0; i < pol.ncidrs; i++) {
        struct group *g = pol.ngroups ? &pol.groups[pol.ngroups - 1] : NULL;
        if (g && g->family == pol.cidrs[i].family && g->plen == pol.cidrs[i].plen) {
            g->end = i + 1;
        } else if (pol.ngroups < sizeof pol.groups / sizeof pol.groups[0]) {
            pol.groups[pol.ngroups++] = (struct group){pol.cidrs[i].family, pol.cidrs[i].plen, i, i + 1};
        }
    }
}

void aegis_policy_init(void)
{
    const char *path = getenv("AEGIS_NETMON_POLICY");
    const char *mode = getenv("AEGIS_NETMON_MODE");
    /* netns mode: the kernel enforces the policy, from the namespace's own DNS answers. */
    if (!path || !*path || (mode && !strcmp(mode, "netns"))) return;
    load(path);
    aegis_policy_on = 1;
}

/* ---- deciding ---- */

struct verdict {
    uint32_t deny;   /* the first deny rule that matched, or UINT32_MAX */
    int allow;       /* an allow rule matched */
};

static void consider(struct verdict *v, uint32_t i, uint16_t port)
{
    const struct rule *r = &pol.rules[i];
    if (r->port && r->port != port) return;
    if (r->deny) {
        if (i < v->deny) v->deny = i;
    } else {
        v->allow = 1;
    }
}

static void match_cidrs(struct verdict *v, int family, const unsigned char *addr, uint16_t port)
{
    unsigned bytes = family == AF_INET ? 4 : 16;
    for (uint32_t g = 0; g < pol.ngroups; g++) {
        const struct group *gr = &pol.groups[g];
        if (gr->family != family) continue;
        unsigned char key[16] = {0};
        memcpy(key, addr, bytes);
        mask(key, gr->plen, bytes);
        uint32_t lo = gr->start, hi = gr->end;  /* first entry with net >= key */
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (memcmp(pol.cidrs[mid].net, key, 16) < 0) lo = mid + 1;
            else hi = mid;
        }
        for (; lo < gr->end && !memcmp(pol.cidrs[lo].net, key, 16); lo++)
            consider(v, pol.cidrs[lo].rule, port);
    }
}

static void match_name(struct verdict *v, const char *name, int wild, uint16_t port)
{
    uint32_t lo = 0, hi = pol.nnames;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct name *m = &pol.names[mid];
        int c = m->wild != wild ? m->wild - wild : strcmp(m->name, name);
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    for (; lo < pol.nnames && pol.names[lo].wild == wild && !strcmp(pol.names[lo].name, name); lo++)
        consider(v, pol.names[lo].rule, port);
}

/* addr: 4 or 16 bytes (an IPv4-mapped IPv6 address arrives as IPv4); host: lower case or "". */
static struct verdict decide(int family, const unsigned char *addr, uint16_t port, const char *host)
{
    struct verdict v = {UINT32_MAX, 0};
    match_cidrs(&v, family, addr, port);
    if (host[0] && pol.nnames) {
        match_name(&v, host, 0, port);
        for (const char *dot = strchr(host, '.'); dot; dot = strchr(dot + 1, '.'))
            match_name(&v, dot + 1, 1, port);
    }
    return v;
}

static void emit_deny(int fd, const char *addr, uint16_t port, const char *host,
                      const struct rule *r)
{
    int type = 0;
    socklen_t tl = sizeof type;
    int udp = true_getsockopt && true_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 &&
              type == SOCK_DGRAM;
    char line[2048];
    struct jbuf b = {.p = line, .cap = sizeof line};
    jb_begin_event(&b, "deny");
    jb_raw(&b, udp ? ",\"proto\":\"udp\"" : ",\"proto\":\"tcp\"");
    jb_key(&b, "addr");
    jb_str(&b, addr, 64);
    jb_key(&b, "port");
    jb_uint(&b, port);
    jb_key(&b, "host");
    jb_str(&b, host[0] ? host : NULL, 400);
    jb_key(&b, "rule");
    if (r) {
        char text[400];
        struct jbuf t = {.p = text, .cap = sizeof text};
        jb_raw(&t, r->deny ? "deny " : "allow ");
        jb_raw(&t, r->host ? "host " : "cidr ");
        jb_raw(&t, r->pattern);
        jb_raw(&t, " ");
        jb_uint(&t, r->port);
        text[t.len < t.cap ? t.len : 0] = '\0';
        jb_str(&b, text, 600);
        jb_key(&b, "label");
        jb_str(&b, r->label, 400);
        jb_raw(&b, ",\"default\":false");
    } else if (pol.failed) {
        jb_str(&b, "default deny", 40);
        jb_key(&b, "label");
        jb_str(&b, pol.why, 600);
        jb_raw(&b, ",\"default\":true");
    } else {
        jb_raw(&b, "\"default deny\",\"label\":null,\"default\":true");
    }
    jb_raw(&b, ",\"mode\":\"preload\"");
    aegis_emit_now(&b); /* read at once: the program is told "refused" now */
}

int aegis_policy_denies(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (!sa || len < (socklen_t)sizeof(sa_family_t)) return 0;
    unsigned char key[16];
    int family;
    uint16_t port;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(key, &in->sin_addr, 4);
        family = AF_INET;
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            memcpy(key, in6->sin6_addr.s6_addr + 12, 4);
            family = AF_INET;
        } else {
            memcpy(key, &in6->sin6_addr, 16);
            family = AF_INET6;
        }
        port = ntohs(in6->sin6_port);
    } else {
        return 0; /* unix sockets and the rest: never subject to the policy */
    }
    char host[128];
    aegis_dns_lookup(sa, host, sizeof host);
    for (char *q = host; *q; q++)
        if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
    size_t hl = strlen(host);
    if (hl && host[hl - 1] == '.') host[hl - 1] = '\0'; /* "example.com." is example.com */
    const struct rule *named = NULL;
    if (!pol.failed) {
        struct verdict v = decide(family, key, port, host);
        if (v.deny != UINT32_MAX) named = &pol.rules[v.deny];
        else if (v.allow || !pol.default_deny) return 0;
    }
    if (aegis_cfg.netmon) {
        char text[64];
        inet_ntop(family, key, text, sizeof text);
        emit_deny(fd, text, port, host, named);
    }
    return 1;
}
