/* Connection churn for bench_netmon.py: `_churn serve` answers on a loopback port it prints
 * (read 64 bytes, write 64, wait for the close); `_churn churn PORT N` makes N connections to it
 * one after another (connect, 64 bytes each way, close) and prints microseconds per connection,
 * wall clock and CPU time of the process. The server runs unhooked, so only the client's cost
 * is measured. `_churn refused PORT N`: N connects that fail (a closed port, or one the policy
 * denies), nanoseconds per attempt. A last argument ADDR (`serve ADDR`, `churn PORT N ADDR`)
 * uses that IPv4 address instead of 127.0.0.1 (bench_netns.py: across a namespace's veth). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double clock_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int read_full(int fd, char *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char buf[64];
    memset(buf, 'x', sizeof buf);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    const char *addr = "127.0.0.1";
    if ((argc == 3 && !strcmp(argv[1], "serve")) || argc == 5) addr = argv[argc - 1];
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return 2;
    if ((argc == 2 || argc == 3) && !strcmp(argv[1], "serve")) {
        int lst = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(lst, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        socklen_t len = sizeof sa;
        if (bind(lst, (struct sockaddr *)&sa, sizeof sa) || listen(lst, 128) ||
            getsockname(lst, (struct sockaddr *)&sa, &len)) return 3;
        printf("%d\n", ntohs(sa.sin_port));
        fflush(stdout);
        for (;;) {
            int c = accept(lst, NULL, NULL);
            if (c < 0) continue;
            if (read_full(c, buf, sizeof buf) == 0 && write(c, buf, sizeof buf) == sizeof buf)
                while (read(c, buf, sizeof buf) > 0) {
                }
            close(c);
        }
    }
    if (argc != 4 && argc != 5) return 2;
    sa.sin_port = htons((unsigned short)atoi(argv[2]));
    long n = atol(argv[3]);
    if (!strcmp(argv[1], "refused")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        double start = clock_of(CLOCK_MONOTONIC), cpu0 = clock_of(CLOCK_PROCESS_CPUTIME_ID);
        for (long i = 0; i < n; i++)
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return 6;
        double cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = clock_of(CLOCK_MONOTONIC) - start;
        printf("%.2f %.2f\n", wall * 1e9 / n, cpu * 1e9 / n);
        return 0;
    }
    if (strcmp(argv[1], "churn")) return 2;
    double start = clock_of(CLOCK_MONOTONIC), cpu0 = clock_of(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) return 4;
        if (write(fd, buf, sizeof buf) != sizeof buf || read_full(fd, buf, sizeof buf)) return 5;
        close(fd);
    }
    double cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = clock_of(CLOCK_MONOTONIC) - start;
    printf("%.2f %.2f\n", wall * 1e6 / n, cpu * 1e6 / n);
    return 0;
}
