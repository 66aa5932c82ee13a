/* A minimal agent for benchmarks: appends the wall-clock time of its start (ns) to the file
 * named by $BENCH_AGENT_LOG, then waits for a signal (SIGINT ends it at once). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const char *path = getenv("BENCH_AGENT_LOG");
    if (path) {
        char line[64];
        int n = snprintf(line, sizeof line, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) { (void)!write(fd, line, (size_t)n); close(fd); }
    }
    for (;;) pause();
}
