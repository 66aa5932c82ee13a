/* Sends an HTTP request from a file with sendfile() (the non-LFS symbol), reads the answer
 * through a pipe with splice(), and prints what it read: the hook must count both. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    int file = open(argv[2], O_RDONLY);
    off_t size = lseek(file, 0, SEEK_END);
    lseek(file, 0, SEEK_SET);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (file < 0 || s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    for (off_t left = size; left > 0;) {
        ssize_t n = sendfile(s, file, NULL, (size_t)left);
        if (n <= 0) return 1;
        left -= n;
    }
    int p[2];
    if (pipe(p) != 0) return 1;
    long total = 0;
    char buf[65536];
    for (;;) {
        ssize_t n = splice(s, NULL, p[1], NULL, sizeof buf, 0);
        if (n < 0) return 1;
        if (n == 0) break;
        total += n;
        for (ssize_t got = 0; got < n;) {
            ssize_t r = read(p[0], buf, sizeof buf);
            if (r <= 0) return 1;
            fwrite(buf, 1, (size_t)r, stdout);
            got += r;
        }
    }
    close(s);
    fprintf(stderr, "received %ld\n", total);
    return 0;
}
