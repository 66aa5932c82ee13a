/* The single initialisation point of libaegis_hooks: real symbols, settings, fork and exit.
 *
 * Initialisation runs once, from the constructor or from the first hook called before it
 * (another library's constructor may call connect or open first), under pthread_once. */
#include "aegis.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define AEGIS_DEFINE_TRUE(name) __typeof__(name) *true_##name;
AEGIS_SYMBOLS(AEGIS_DEFINE_TRUE)
#undef AEGIS_DEFINE_TRUE

atomic_int aegis_ready;
AEGIS_TLS int aegis_busy;
struct aegis_config aegis_cfg;

static pthread_once_t aegis_once = PTHREAD_ONCE_INIT;
/* Set while this thread runs init_once: a hook reached from inside init (e.g. from dlsym) must
 * not wait on the pthread_once it is already in. */
static AEGIS_TLS int aegis_in_init;

/* dlsym(RTLD_NEXT) and refuse our own wrapper: a circular reference would recurse forever. */
static void *load_sym(const char *name, void *self)
{
    void *sym = dlsym(RTLD_NEXT, name);
    if (sym == self) {
        PDEBUG("circular reference for %s\n", name);
        return NULL;
    }
    return sym;
}

static unsigned long long env_number(const char *name, unsigned long long fallback,
                                     unsigned long long min)
{
    const char *s = getenv(name);
    if (!s || !*s) return fallback;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min) return fallback;
    return v;
}

static void read_settings(void)
{
    const char *log = getenv("AEGIS_NETMON_LOG");
    /* In netns mode the namespace capture records every connection; the library is loaded only
     * for the config redirect, and recording here too would count each connection twice. */
    const char *mode = getenv("AEGIS_NETMON_MODE");
    if (mode && strcmp(mode, "netns") == 0) log = NULL;
    if (log && *log && strlen(log) < sizeof aegis_cfg.log_path - 8) {
        strcpy(aegis_cfg.log_path, log);
        memcpy(aegis_cfg.rotated_path, log, strlen(log));
        strcpy(aegis_cfg.rotated_path + strlen(log), ".1");
        aegis_cfg.netmon = 1;
    }
    const char *control = getenv("AEGIS_CONTROL");
    const char *slash = control && control[0] == '/' ? strrchr(control, '/') : NULL;
    if (slash && (size_t)(slash - control) + 1 < sizeof aegis_cfg.plumbing_dir) {
        aegis_cfg.plumbing_len = (size_t)(slash - control) + 1;
        memcpy(aegis_cfg.plumbing_dir, control, aegis_cfg.plumbing_len);
        aegis_cfg.plumbing_dir[aegis_cfg.plumbing_len] = '\0';
    }
    aegis_cfg.max_bytes = env_number("AEGIS_NETMON_MAX_BYTES", 64ull << 20, 4096);
    aegis_cfg.interval = (unsigned)env_number("AEGIS_NETMON_INTERVAL", 5, 1);
    unsigned long long batch = env_number("AEGIS_NETMON_BATCH_MS", 100, 0);
    aegis_cfg.batch_ms = batch > 60000 ? 60000 : (unsigned)batch;

    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *base = strrchr(exe, '/');
        base = base ? base + 1 : exe;
        size_t len = strnlen(base, sizeof aegis_cfg.exe - 1);
        memcpy(aegis_cfg.exe, base, len);
        aegis_cfg.exe[len] = '\0';
    }

    Dl_info info;
    if (dladdr((void *)aegis_init, &info) && info.dli_fname)
        strncpy(aegis_cfg.self_path, info.dli_fname, sizeof aegis_cfg.self_path - 1);
}

static void atfork_child(void)
{
    aegis_out_atfork_child();
    aegis_cfg.pid = getpid();
    aegis_cfg.ppid = getppid();
    aegis_fdlife_atfork_child();
    aegis_dns_atfork_child();
}

static void init_once(void)
{
    aegis_in_init = 1;
#define AEGIS_LOAD_TRUE(name) true_##name = (__typeof__(name) *)load_sym(#name, (void *)name);
    AEGIS_SYMBOLS(AEGIS_LOAD_TRUE)
#undef AEGIS_LOAD_TRUE
    read_settings();
    aegis_policy_init();
    aegis_redirect_init();
    aegis_cfg.pid = getpid();
    aegis_cfg.ppid = getppid();
    pthread_atfork(aegis_flush, NULL, atfork_child); /* the parent's lines before the child's */
    atomic_store_explicit(&aegis_ready, 1, memory_order_release);
    aegis_in_init = 0;
}

void aegis_init(void)
{
    if (aegis_in_init) return;
    int saved = errno;
    pthread_once(&aegis_once, init_once);
    errno = saved;
}

__attribute__((constructor)) static void aegis_constructor(void) { aegis_init(); }

/* Many programs never close their keep-alive sockets: report what is still open. */
__attribute__((destructor)) static void aegis_destructor(void)
{
    if (aegis_cfg.netmon && aegis_cfg.pid == getpid()) aegis_fdlife_flush_all(0);
    aegis_flush();
}
