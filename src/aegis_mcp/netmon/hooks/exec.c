/* exec, spawn and exit: report what is still open before the image goes away, and note the
 * children that monitoring will not see (a cleared environment, a static binary) as "gap"
 * events instead of hiding them.
 *
 * A vfork child shares our memory: it must not touch the table (its flush would release the
 * parent's sockets). aegis_cfg.pid is refreshed by the fork handler only, so a process whose
 * getpid() differs from it is a vfork/clone child and only gets the gap check. */
#include "aegis.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>

extern char **environ;

static const char *env_value(char *const envp[], const char *name)
{
    size_t n = strlen(name);
    if (!envp) return NULL;
    for (char *const *e = envp; *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

static int preloads_us(const char *preload)
{
    if (!preload) return 0;
    if (aegis_cfg.self_path[0] && strstr(preload, aegis_cfg.self_path)) return 1;
    return strstr(preload, "libaegis_hooks") != NULL;
}

/* Why the loader will not preload us into `path`, or NULL: a set-user-ID/-group-ID program
 * (secure mode ignores LD_PRELOAD) or an ELF executable without a program interpreter. */
static const char *invisible_reason(const char *path)
{
    if (!path || !true_open) return NULL;
    int fd = true_open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    const char *reason = NULL;
    struct stat st;
    Elf64_Ehdr eh;
    if (fstat(fd, &st) == 0 && (((st.st_mode & S_ISUID) && st.st_uid != geteuid()) ||
                                ((st.st_mode & S_ISGID) && st.st_gid != getegid()))) {
        reason = "set-user-ID or set-group-ID program: the loader ignores LD_PRELOAD for it";
    } else if (pread(fd, &eh, sizeof eh, 0) == (ssize_t)sizeof eh &&
               !memcmp(eh.e_ident, ELFMAG, SELFMAG) && eh.e_ident[EI_CLASS] == ELFCLASS64) {
        int has_interp = 0;
        for (unsigned i = 0; i < eh.e_phnum && i < 256 && !has_interp; i++) {
            Elf64_Phdr ph;
            off_t off = (off_t)eh.e_phoff + (off_t)i * eh.e_phentsize;
            if (pread(fd, &ph, sizeof ph, off) != (ssize_t)sizeof ph) {
                has_interp = 1; /* unreadable: do not claim it is static */
                break;
            }
            has_interp = ph.p_type == PT_INTERP;
        }
        if (!has_interp) reason = "statically linked program: LD_PRELOAD cannot see it (use --netmon=netns)";
    }
    true_close(fd);
    return reason;
}

/* The file execvp would run: the name itself if it has a slash, else the first PATH hit. */
static const char *search_path(const char *file, char *buf, size_t n)
{
    if (!file || !*file) return NULL;
    if (strchr(file, '/')) return file;
    const char *path = getenv("PATH");
    if (!path) path = "/bin:/usr/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (len + strlen(file) + 2 <= n) {
            memcpy(buf, len ? path : ".", len ? len : 1);
            size_t at = len ? len : 1;
            buf[at] = '/';
            strcpy(buf + at + 1, file);
            if (true_access && true_access(buf, X_OK) == 0) return buf;
        }
        if (!end) break;
        path = end + 1;
    }
    return NULL;
}

static void emit_gap(const char *target, const char *reason)
{
    char line[2048];
    /* Here in a vfork child too (posix_spawn), whose pid is not the cached one. */
    struct jbuf b = {.p = line, .cap = sizeof line, .pid = getpid(), .ppid = getppid()};
    jb_begin_event(&b, "gap");
    jb_key(&b, "target");
    jb_str(&b, target, 400);
    jb_key(&b, "reason");
    jb_str(&b, reason, 300);
    aegis_emit_now(&b);
}

void aegis_exec_check_env(const char *file, char *const envp[], int search)
{
    char buf[PATH_MAX];
    const char *path = search ? search_path(file, buf, sizeof buf) : file;
    const char *reason = NULL;
    if (!preloads_us(env_value(envp, "LD_PRELOAD")))
        reason = "child started without LD_PRELOAD of libaegis_hooks: its connections are not recorded";
    else if (!env_value(envp, "AEGIS_NETMON_LOG"))
        reason = "child started without AEGIS_NETMON_LOG: its connections are not recorded";
    else if (aegis_policy_on && !env_value(envp, "AEGIS_NETMON_POLICY"))
        reason = "child started without AEGIS_NETMON_POLICY: the network policy does not bind it";
    else
        reason = invisible_reason(path);
    if (reason) emit_gap(path ? path : file, reason);
}

/* Before an exec replaces this image (replaces=1) or a spawn starts a child (replaces=0). */
static void before_exec(const char *file, char *const envp[], int search, int replaces)
{
    if (!aegis_cfg.netmon || aegis_busy) return;
    int saved = errno;
    aegis_busy++;
    if (replaces && aegis_cfg.pid == getpid()) aegis_fdlife_flush_all(1);
    if (replaces) aegis_flush();
    aegis_exec_check_env(file, envp, search);
    aegis_busy--;
    errno = saved;
}


AEGIS_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    REAL_OR_ENOSYS(execve);
    before_exec(path, envp, 0, 1);
    return true_execve(path, argv, envp);
}

AEGIS_EXPORT int execv(const char *path, char *const argv[])
{
    REAL_OR_ENOSYS(execv);
    before_exec(path, environ, 0, 1);
    return true_execv(path, argv);
}

AEGIS_EXPORT int execvp(const char *file, char *const argv[])
{
    REAL_OR_ENOSYS(execvp);
    before_exec(file, environ, 1, 1);
    return true_execvp(file, argv);
}

AEGIS_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    REAL_OR_ENOSYS(execvpe);
    before_exec(file, envp, 1, 1);
    return true_execvpe(file, argv, envp);
}

AEGIS_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    REAL_OR_ENOSYS(fexecve);
    char path[64];
    struct jbuf b = {.p = path, .cap = sizeof path};
    jb_raw(&b, "/proc/self/fd/");
    jb_int(&b, fd);
    path[b.len] = '\0';
    before_exec(path, envp, 0, 1);
    return true_fexecve(fd, argv, envp);
}

/* execl* are not wrappers of the exported execv* inside glibc: collect the arguments here. */
#define COLLECT_ARGS(first, ap, argv)                                                              \
    size_t argc = 1;                                                                               \
    va_start(ap, first);                                                                           \
    while (va_arg(ap, const char *)) argc++;                                                       \
    va_end(ap);                                                                                    \
    const char *argv[argc + 1];                                                                    \
    argv[0] = first;                                                                               \
    va_start(ap, first);                                                                           \
    for (size_t i = 1; i <= argc; i++) argv[i] = va_arg(ap, const char *);

AEGIS_EXPORT int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv)
    va_end(ap);
    return execv(path, (char *const *)argv);
}

AEGIS_EXPORT int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv)
    va_end(ap);
    return execvp(file, (char *const *)argv);
}

AEGIS_EXPORT int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv)
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, (char *const *)argv, envp);
}

AEGIS_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                             const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    ENSURE_INIT();
    if (UNLIKELY(!true_posix_spawn)) return ENOSYS;
    before_exec(path, envp, 0, 0);
    return true_posix_spawn(pid, path, fa, attr, argv, envp);
}

AEGIS_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                              const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    ENSURE_INIT();
    if (UNLIKELY(!true_posix_spawnp)) return ENOSYS;
    before_exec(file, envp, 1, 0);
    return true_posix_spawnp(pid, file, fa, attr, argv, envp);
}

static void before_exit(void)
{
    if (aegis_cfg.netmon && !aegis_busy && aegis_cfg.pid == getpid()) aegis_fdlife_flush_all(0);
    if (!aegis_busy) aegis_flush();
}

AEGIS_EXPORT void _exit(int status)
{
    ENSURE_INIT();
    before_exit();
    if (true__exit) true__exit(status);
    for (;;) true_syscall ? true_syscall(SYS_exit_group, status) : 0;
}

/* Bun (Claude Code) leaves through quick_exit: destructors do not run there. */
AEGIS_EXPORT void quick_exit(int status)
{
    ENSURE_INIT();
    before_exit();
    if (true_quick_exit) true_quick_exit(status);
    for (;;) true_syscall ? true_syscall(SYS_exit_group, status) : 0;
}

AEGIS_EXPORT void _Exit(int status)
{
    ENSURE_INIT();
    before_exit();
    if (true__Exit) true__Exit(status);
    for (;;) true_syscall ? true_syscall(SYS_exit_group, status) : 0;
}
