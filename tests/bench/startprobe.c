/*
 * startprobe.c - time from exec to /readyz answering 200, for `make bench`.
 *
 *   startprobe --port TELEMETRY_PORT [--runs N] -- /path/to/agentmeter ARGS...
 *
 * Each run forks, execs the command (stdout and stderr to /dev/null), and
 * polls http://127.0.0.1:PORT/readyz from the parent: a blocking connect on
 * loopback is refused at once while nothing listens, so the loop costs
 * little; between attempts it waits 100 us (a poll interval, not a guess
 * at how long start takes).  When /readyz says 200 the time is taken, VmRSS
 * is read from /proc, the child gets SIGTERM and must exit 0 within 10 s.
 * A run that is not ready within 10 s fails the probe.
 *
 * Prints one line per run and a final JSON line with min/median/max.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 1000
#define READY_DEADLINE_NS (10ull * 1000000000ull)

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void pause_us(long us)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = us * 1000};
    nanosleep(&ts, NULL);
}

/* 1 = /readyz answered 200, 0 = not (yet). */
static int readyz(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return 0;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
        static const char req[] =
            "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if (write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1)) {
            char buf[64];
            ssize_t n = read(fd, buf, sizeof(buf) - 1);
            if (n >= 12) {
                buf[n] = '\0';
                ok = strncmp(buf + 9, "200", 3) == 0;
            }
        }
    }
    close(fd);
    return ok;
}

static long vm_rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kib;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int port = 0;
    int runs = 20;
    int cmd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
            runs = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--") == 0 && i + 1 < argc) {
            cmd = i + 1;
            break;
        } else {
            fprintf(stderr, "usage: startprobe --port P [--runs N] -- COMMAND ARGS...\n");
            return 2;
        }
    }
    if (port <= 0 || port > 65535 || runs < 1 || runs > MAX_RUNS || cmd < 0) {
        fprintf(stderr, "usage: startprobe --port P [--runs N] -- COMMAND ARGS...\n");
        return 2;
    }
    if (readyz(port)) {
        fprintf(stderr, "startprobe: something already answers on port %d\n", port);
        return 2;
    }
    double ms[MAX_RUNS];
    long rss[MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        unsigned long long t0 = now_ns();
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            if (null >= 0) {
                dup2(null, STDOUT_FILENO);
                dup2(null, STDERR_FILENO);
            }
            execv(argv[cmd], argv + cmd);
            _exit(127);
        }
        int ready = 0;
        int status;
        while (!(ready = readyz(port))) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                fprintf(stderr, "startprobe: %s exited before it was ready\n", argv[cmd]);
                return 1;
            }
            if (now_ns() - t0 > READY_DEADLINE_NS) {
                break;
            }
            pause_us(100);
        }
        unsigned long long t1 = now_ns();
        rss[r] = vm_rss_kib(pid);
        kill(pid, SIGTERM);
        unsigned long long stop0 = now_ns();
        int exited = 0;
        while (!exited && now_ns() - stop0 < READY_DEADLINE_NS) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
            } else {
                pause_us(500);
            }
        }
        if (!exited) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "startprobe: no exit within 10 s of SIGTERM\n");
            return 1;
        }
        if (!ready) {
            fprintf(stderr, "startprobe: not ready within 10 s\n");
            return 1;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "startprobe: exit status %d after SIGTERM\n", status);
            return 1;
        }
        ms[r] = (double)(t1 - t0) / 1e6;
        printf("startprobe: run %d: ready in %.2f ms, VmRSS %ld KiB\n", r + 1, ms[r], rss[r]);
    }
    double sorted[MAX_RUNS];
    memcpy(sorted, ms, sizeof(double) * (size_t)runs);
    qsort(sorted, (size_t)runs, sizeof(double), cmp_double);
    double median = runs % 2 ? sorted[runs / 2] : (sorted[runs / 2 - 1] + sorted[runs / 2]) / 2;
    printf("{\"startprobe\": \"result\", \"runs\": %d, \"min_ms\": %.2f, \"median_ms\": %.2f, "
           "\"max_ms\": %.2f, \"rss_kib_at_ready\": %ld}\n",
           runs, sorted[0], median, sorted[runs - 1], rss[runs - 1]);
    return 0;
}
