/* MCP config injection: read-only opens of a configured source path open an overlay instead.
 *
 * AEGIS_MCP_REDIRECT holds newline-separated "<absolute source>\t<absolute overlay>" entries
 * (the supervisor writes the overlay: the project's own file merged with the aegis-mcp server).
 * - open-family calls that open a source READ-ONLY get the overlay; writes go to the real file.
 * - stat-family calls of a source see the overlay only when the real file does not exist, so a
 *   project without the file still gets the overlay and stat of an existing one is unchanged.
 * Paths are compared as normalised absolute paths (relative ones resolved against the cwd or
 * the dirfd), then, if the name matched but the path did not, with the directory resolved
 * through symlinks. The fast path when nothing is configured, or when the last component of the
 * name is not one of the sources' names, is a few comparisons and no system call. */
#include "aegis.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REDIRECTS 16

struct redirect {
    char src[PATH_MAX];
    char src_real[PATH_MAX]; /* directory resolved through symlinks + name, or "" */
    char overlay[PATH_MAX];
    const char *base;        /* last component of src */
};

static struct redirect redirects[MAX_REDIRECTS];
static int n_redirects;

/* Lexical normalisation of an absolute path, in place: no "//", ".", "..". */
static void normalise(char *path)
{
    char *out = path, *in = path;
    while (*in) {
        while (*in == '/') in++;
        if (!*in) break;
        char *end = strchr(in, '/');
        size_t len = end ? (size_t)(end - in) : strlen(in);
        if (len == 1 && in[0] == '.') {
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *--out != '/') {
            }
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    if (out == path) *out++ = '/';
    *out = '\0';
}

/* dirname(path) resolved through symlinks + "/" + name, or 0. */
static int real_variant(const char *path, char *out)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return 0;
    char dir[PATH_MAX];
    size_t dlen = slash == path ? 1 : (size_t)(slash - path);
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    char resolved[PATH_MAX];
    if (!realpath(dir, resolved)) return 0;
    size_t rlen = strlen(resolved), nlen = strlen(slash + 1);
    if (rlen + nlen + 2 > PATH_MAX) return 0;
    memcpy(out, resolved, rlen);
    out[rlen] = '/';
    memcpy(out + rlen + 1, slash + 1, nlen + 1);
    if (rlen == 1) memmove(out + 1, out + 2, nlen + 1); /* "/" + "/" + name */
    return 1;
}

void aegis_redirect_init(void)
{
    const char *spec = getenv("AEGIS_MCP_REDIRECT");
    n_redirects = 0;
    while (spec && *spec && n_redirects < MAX_REDIRECTS) {
        const char *nl = strchr(spec, '\n');
        size_t len = nl ? (size_t)(nl - spec) : strlen(spec);
        const char *tab = memchr(spec, '\t', len);
        if (tab && spec[0] == '/' && tab[1] == '/') {
            size_t slen = (size_t)(tab - spec), olen = len - slen - 1;
            struct redirect *r = &redirects[n_redirects];
            if (slen < PATH_MAX && olen < PATH_MAX) {
                memcpy(r->src, spec, slen);
                r->src[slen] = '\0';
                memcpy(r->overlay, tab + 1, olen);
                r->overlay[olen] = '\0';
                normalise(r->src);
                r->base = strrchr(r->src, '/') + 1;
                if (!real_variant(r->src, r->src_real)) r->src_real[0] = '\0';
                if (*r->base) n_redirects++;
            }
        }
        spec = nl ? nl + 1 : NULL;
    }
}

/* The overlay for `path` opened relative to `dirfd`, or NULL. Keeps errno. */
static const char *match(int dirfd, const char *path)
{
    if (LIKELY(n_redirects == 0) || !path || aegis_busy) return NULL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    int candidate = 0;
    for (int i = 0; i < n_redirects && !candidate; i++) candidate = !strcmp(base, redirects[i].base);
    if (LIKELY(!candidate)) return NULL;

    int saved = errno;
    const char *found = NULL;
    char abs[PATH_MAX];
    size_t plen = strlen(path);
    if (path[0] == '/') {
        if (plen >= sizeof abs) goto out;
        memcpy(abs, path, plen + 1);
    } else {
        size_t at;
        if (dirfd == AT_FDCWD) {
            if (!getcwd(abs, sizeof abs)) goto out;
            at = strlen(abs);
        } else {
            char link[64];
            struct jbuf b = {.p = link, .cap = sizeof link};
            jb_raw(&b, "/proc/self/fd/");
            jb_int(&b, dirfd);
            link[b.len] = '\0';
            ssize_t n = readlink(link, abs, sizeof abs - 1);
            if (n <= 0 || abs[0] != '/') goto out;
            at = (size_t)n;
        }
        if (at + plen + 2 > sizeof abs) goto out;
        abs[at] = '/';
        memcpy(abs + at + 1, path, plen + 1);
    }
    normalise(abs);
    for (int i = 0; i < n_redirects && !found; i++)
        if (!strcmp(abs, redirects[i].src)) found = redirects[i].overlay;
    if (!found) {
        char real[PATH_MAX];
        if (real_variant(abs, real))
            for (int i = 0; i < n_redirects && !found; i++)
                if (redirects[i].src_real[0] && !strcmp(real, redirects[i].src_real))
                    found = redirects[i].overlay;
    }
out:
    errno = saved;
    return found;
}

static int read_only_flags(int flags)
{
    return (flags & O_ACCMODE) == O_RDONLY && !(flags & (O_CREAT | O_TRUNC)) &&
           (flags & O_TMPFILE) != O_TMPFILE;
}

static int read_only_mode(const char *mode) { return mode && mode[0] == 'r' && !strchr(mode, '+'); }

/* For stat-like calls: the overlay only while the real source does not exist. */
static const char *match_missing(int dirfd, const char *path)
{
    const char *overlay = match(dirfd, path);
    if (!overlay) return NULL;
    int saved = errno;
    struct stat st;
    int missing = true_fstatat ? true_fstatat(dirfd, path, &st, 0) != 0 && errno == ENOENT : 0;
    errno = saved;
    return missing ? overlay : NULL;
}

#define NEEDS_MODE(flags) (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE)

/* The optional third argument of open/openat: read only when the flags say it was passed. */
#define MODE_ARG(flags, mode)                                                                      \
    mode_t mode = 0;                                                                               \
    if (NEEDS_MODE(flags)) {                                                                       \
        va_list ap;                                                                                \
        va_start(ap, flags);                                                                       \
        mode = va_arg(ap, mode_t);                                                                 \
        va_end(ap);                                                                                \
    }

#define OPEN_HOOK(name)                                                                            \
    AEGIS_EXPORT int name(const char *path, int flags, ...)                                        \
    {                                                                                              \
        MODE_ARG(flags, mode);                                                                     \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = read_only_flags(flags) ? match(AT_FDCWD, path) : NULL;                     \
        return true_##name(o ? o : path, flags, mode);                                             \
    }

#define OPENAT_HOOK(name)                                                                          \
    AEGIS_EXPORT int name(int dirfd, const char *path, int flags, ...)                             \
    {                                                                                              \
        MODE_ARG(flags, mode);                                                                     \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = read_only_flags(flags) ? match(dirfd, path) : NULL;                        \
        return true_##name(dirfd, o ? o : path, flags, mode);                                      \
    }

OPEN_HOOK(open)
OPEN_HOOK(open64)
OPENAT_HOOK(openat)
OPENAT_HOOK(openat64)

#define OPEN2_HOOK(name)                                                                           \
    AEGIS_EXPORT int name(const char *path, int flags)                                             \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = read_only_flags(flags) ? match(AT_FDCWD, path) : NULL;                     \
        return true_##name(o ? o : path, flags);                                                   \
    }

#define OPENAT2_HOOK(name)                                                                         \
    AEGIS_EXPORT int name(int dirfd, const char *path, int flags)                                  \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = read_only_flags(flags) ? match(dirfd, path) : NULL;                        \
        return true_##name(dirfd, o ? o : path, flags);                                            \
    }

OPEN2_HOOK(__open_2)
OPEN2_HOOK(__open64_2)
OPENAT2_HOOK(__openat_2)
OPENAT2_HOOK(__openat64_2)

#define FOPEN_HOOK(name)                                                                           \
    AEGIS_EXPORT FILE *name(const char *path, const char *mode)                                    \
    {                                                                                              \
        REAL_OR_FAIL(name, NULL);                                                                  \
        const char *o = read_only_mode(mode) ? match(AT_FDCWD, path) : NULL;                       \
        return true_##name(o ? o : path, mode);                                                    \
    }

FOPEN_HOOK(fopen)
FOPEN_HOOK(fopen64)

#define FREOPEN_HOOK(name)                                                                         \
    AEGIS_EXPORT FILE *name(const char *path, const char *mode, FILE *stream)                      \
    {                                                                                              \
        REAL_OR_FAIL(name, NULL);                                                                  \
        const char *o = path && read_only_mode(mode) ? match(AT_FDCWD, path) : NULL;               \
        return true_##name(o ? o : path, mode, stream);                                            \
    }

FREOPEN_HOOK(freopen)
FREOPEN_HOOK(freopen64)

/* stat family: (name, its stat struct); the overlay only while the real path is missing */
#define STAT_HOOK(name, st_t)                                                                      \
    AEGIS_EXPORT int name(const char *path, struct st_t *buf)                                      \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = match_missing(AT_FDCWD, path);                                             \
        return true_##name(o ? o : path, buf);                                                     \
    }

STAT_HOOK(stat, stat)
STAT_HOOK(stat64, stat64)
STAT_HOOK(lstat, stat)
STAT_HOOK(lstat64, stat64)

#define XSTAT_HOOK(name, st_t)                                                                     \
    AEGIS_EXPORT int name(int ver, const char *path, struct st_t *buf)                             \
    {                                                                                              \
        REAL_OR_ENOSYS(name);                                                                      \
        const char *o = match_missing(AT_FDCWD, path);                                             \
        return true_##name(ver, o ? o : path, buf);                                                \
    }

XSTAT_HOOK(__xstat, stat)
XSTAT_HOOK(__xstat64, stat64)
XSTAT_HOOK(__lxstat, stat)
XSTAT_HOOK(__lxstat64, stat64)

AEGIS_EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
    REAL_OR_ENOSYS(fstatat);
    const char *o = match_missing(dirfd, path);
    return true_fstatat(dirfd, o ? o : path, buf, flags);
}

AEGIS_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags)
{
    REAL_OR_ENOSYS(fstatat64);
    const char *o = match_missing(dirfd, path);
    return true_fstatat64(dirfd, o ? o : path, buf, flags);
}

AEGIS_EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags)
{
    REAL_OR_ENOSYS(__fxstatat);
    const char *o = match_missing(dirfd, path);
    return true___fxstatat(ver, dirfd, o ? o : path, buf, flags);
}

AEGIS_EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags)
{
    REAL_OR_ENOSYS(__fxstatat64);
    const char *o = match_missing(dirfd, path);
    return true___fxstatat64(ver, dirfd, o ? o : path, buf, flags);
}

AEGIS_EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    REAL_OR_ENOSYS(statx);
    const char *o = match_missing(dirfd, path);
    return true_statx(dirfd, o ? o : path, flags, mask, buf);
}

AEGIS_EXPORT int access(const char *path, int mode)
{
    REAL_OR_ENOSYS(access);
    const char *o = match_missing(AT_FDCWD, path);
    return true_access(o ? o : path, mode);
}

AEGIS_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
    REAL_OR_ENOSYS(faccessat);
    const char *o = match_missing(dirfd, path);
    return true_faccessat(dirfd, o ? o : path, mode, flags);
}
