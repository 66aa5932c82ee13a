/* Prints what a series of hooked calls return and what errno they leave, so a run with the
 * hook and one without can be compared line by line. errno is set to a sentinel before each
 * call: a successful call must leave it alone. Usage: errno_check HOST PORT REFUSED_PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define SENTINEL 4242
#define SHOW(label, expr)                                                                   \
    do {                                                                                    \
        errno = SENTINEL;                                                                   \
        long r_ = (long)(expr);                                                             \
        int e_ = errno;                                                                     \
        printf("%s %ld %s\n", label, r_ > 0 ? 1L : r_,                                     \
               e_ == SENTINEL ? "errno-kept" : strerrorname_np(e_) ? strerrorname_np(e_) : "?"); \
    } while (0)

static struct sockaddr_in addr_of(const char *host, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    return sa;
}

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    struct sockaddr_in ok = addr_of(argv[1], atoi(argv[2])), bad = addr_of(argv[1], atoi(argv[3]));
    int s = socket(AF_INET, SOCK_STREAM, 0);
    SHOW("connect ok", connect(s, (struct sockaddr *)&ok, sizeof ok));
    const char req[] = "GET / HTTP/1.0\r\n";
    SHOW("write", write(s, req, strlen(req)));
    struct iovec iov[2] = {{(void *)"X-A: 1\r\n", 8}, {(void *)"\r\n", 2}};
    SHOW("writev", writev(s, iov, 2));
    char buf[4096];
    SHOW("recv peek", recv(s, buf, 1, MSG_PEEK));
    SHOW("read", read(s, buf, sizeof buf));
    SHOW("close", close(s));
    SHOW("close again", close(s));
    SHOW("send closed", send(s, req, 1, 0));
    SHOW("recvfrom closed", recvfrom(s, buf, 1, 0, NULL, NULL));
    int r = socket(AF_INET, SOCK_STREAM, 0);
    SHOW("connect refused", connect(r, (struct sockaddr *)&bad, sizeof bad));
    SHOW("syscall close", syscall(SYS_close, r));
    SHOW("syscall close again", syscall(SYS_close, r));
    int p[2];
    SHOW("pipe", pipe(p));
    SHOW("pipe write", write(p[1], "abc", 3));
    SHOW("pipe read", read(p[0], buf, 3));
    SHOW("dup2", dup2(p[0], p[1]));
    SHOW("closefd", close(p[0]));
    struct addrinfo *res = NULL;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    errno = SENTINEL;
    int g = getaddrinfo("localhost", NULL, &hints, &res);
    printf("getaddrinfo %d %s\n", g, errno == SENTINEL ? "errno-kept" : "changed");
    if (res) freeaddrinfo(res);
    SHOW("getaddrinfo bad", getaddrinfo(NULL, NULL, NULL, &res) != 0);
    return 0;
}
