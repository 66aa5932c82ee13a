/* Threads that connect, write, read and close as fast as they can (so fd numbers are reused
 * across threads all the time), some through a dup(), while the main thread forks children
 * that exit at once. Prints the bytes it sent and received; the hook's events must add up to
 * exactly that. Usage: stress PORT THREADS CONNECTIONS_PER_THREAD */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int port, per_thread;
static atomic_long total_sent, total_recv;
static atomic_int done;

static void *worker(void *arg)
{
    long id = (long)arg;
    char req[128], buf[4096];
    for (int i = 0; i < per_thread; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
            perror("connect");
            exit(3);
        }
        int w = i % 3 == 0 ? dup(s) : s; /* every third request goes out through a dup */
        int n = snprintf(req, sizeof req, "GET /%ld/%d HTTP/1.0\r\n\r\n", id, i);
        if (write(w, req, n) != n) exit(4);
        total_sent += n;
        ssize_t r;
        while ((r = read(s, buf, sizeof buf)) > 0) total_recv += r;
        if (w != s) close(w);
        close(s);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    port = atoi(argv[1]);
    int threads = atoi(argv[2]);
    per_thread = atoi(argv[3]);
    pthread_t t[64];
    for (long i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int k = 0; k < 20; k++) { /* forks while the workers run */
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        waitpid(pid, NULL, 0);
        usleep(2000);
    }
    for (int i = 0; i < threads && i < 64; i++) pthread_join(t[i], NULL);
    printf("%ld %ld\n", (long)total_sent, (long)total_recv);
    return 0;
}
