/*
 * bench/tftp_gen.c: the compiled TFTP load generator (README "The storm's last percent").
 *
 * One worker of bench/tftp_client.py's storm, in C: the same clients as its Python loop
 * (run_worker), for a fraction of the CPU per block, so that a storm on a small machine
 * measures the server and not the generator. bench/tftp_client.py compiles it with the
 * system's C compiler (compile_generator()), starts one per worker process and reads what
 * it prints; nothing else runs it.
 *
 * Every client: one UDP socket (its TID), bound to 127.0.0.(1 + index % sources) when
 * sources > 1, else to the server's address when that is a loopback one; RRQ (octet,
 * blksize, tsize 0 unless -T); the first answer must be an OACK agreeing to the blksize
 * (RFC 2347) and, with tsize, naming the expected size (RFC 2349); then the socket is
 * connect()-ed to the server's TID and every DATA in order is acknowledged (lock-step, RFC
 * 1350); a repeat of the block before the expected one is acknowledged again (our ACK was
 * lost); a short block ends the transfer, whose size is checked. With -v N, every block of
 * clients 0, N, 2N... is compared byte for byte with the local copy (-l). No news for the
 * timeout: the RRQ or the last ACK again, -r times at most, then the client fails
 * ("timeout"). A worker gives up on what is left at the deadline (-d). With -P it polls
 * without sleeping (LoadSpec.spin: the generator never waits to be woken).
 *
 * Protocol with the parent: once every socket exists it prints "ready" and waits for one
 * line on stdin; at the end it prints, per client, "c INDEX OK START END BYTES RESENDS DUPS
 * CHECKED REASON" (times CLOCK_MONOTONIC seconds, as Python's time.monotonic(); CHECKED 1 when
 * its bytes were compared with -l; REASON empty on success, possibly with spaces), then "cpu
 * SECONDS SLEEPS PREEMPTED" (its CPU time and context switches, voluntary and not, from the
 * "go" to the end), then "end". Exit status 0, or 2 on a usage or setup error (message on
 * stderr).
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { WAITING, RUNNING, DONE, FAILED };
enum { OP_RRQ = 1, OP_DATA = 3, OP_ACK = 4, OP_ERROR = 5, OP_OACK = 6 };

#define TICK 0.05     /* seconds between timeout scans, as bench/tftp_client.py */
#define DALLY 0.02    /* seconds a worker keeps answering repeats of last blocks */
#define EVENTS 512
#define REASON 96     /* bytes of a failure's text */
#define DATAGRAM 65536  /* receive buffer: any UDP payload on loopback */

typedef struct {
    int sock;
    int state;
    int verify;
    int attempt;
    uint32_t expected;     /* next block wanted, unwrapped */
    uint64_t received;
    double start, end, deadline;
    long resends, dups;
    char reason[REASON];
} Client;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "tftp_gen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: tftp_gen -s IP -p PORT -f NAME -z SIZE -n COUNT [-i FIRST] [-b BLKSIZE]"
                    " [-T] [-t TIMEOUT] [-r RETRIES] [-d DEADLINE] [-S SOURCES] [-v EVERY -l LOCAL] [-P]\n");
    exit(2);
}

static void fail(Client *c, const char *reason, double t)
{
    c->state = FAILED;
    c->end = t;
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
}

static void ack(Client *c, uint32_t block)
{
    unsigned char a[4] = {0, OP_ACK, (unsigned char)(block >> 8), (unsigned char)block};
    (void)send(c->sock, a, 4, 0);
}

/* The OACK's options (name\0value\0 pairs): 0 when blksize and tsize agree, else the reason. */
static const char *check_oack(const unsigned char *p, ssize_t n, long blksize, int tsize, uint64_t size)
{
    int got_blksize = 0, got_tsize = 0;
    const char *end = (const char *)p + n, *s = (const char *)p + 2;
    while (s < end) {
        const char *name = s, *nz = memchr(s, 0, (size_t)(end - s));
        if (nz == NULL || nz + 1 >= end)
            return "bad OACK";
        const char *value = nz + 1, *vz = memchr(value, 0, (size_t)(end - value));
        if (vz == NULL)
            return "bad OACK";
        if (strcasecmp(name, "blksize") == 0) {
            if (strtol(value, NULL, 10) != blksize)
                return "blksize";
            got_blksize = 1;
        } else if (strcasecmp(name, "tsize") == 0) {
            if (strtoull(value, NULL, 10) != size)
                return "tsize";
            got_tsize = 1;
        }
        s = vz + 1;
    }
    if (!got_blksize)
        return "blksize";
    if (tsize && !got_tsize)
        return "tsize";
    return NULL;
}

/* The failure for an answer that is neither an OACK nor DATA, written into reason (REASON bytes):
 * the server's ERROR and its message, or the opcode. */
static const char *other_answer(unsigned char *buf, ssize_t len, int op, char *reason)
{
    if (op == OP_ERROR) {
        buf[len] = 0;   /* len <= DATAGRAM: buf holds DATAGRAM + 1 bytes */
        snprintf(reason, REASON, "error %.80s", (char *)buf + 4);
    } else {
        snprintf(reason, REASON, "opcode %d", op);
    }
    return reason;
}

int main(int argc, char **argv)
{
    const char *server_ip = NULL, *filename = NULL, *local = NULL;
    int port = 0, tsize = 1, sources = 1, spin = 0, opt;
    long blksize = 1428, count = 0, first = 0, retries = 5, every = 0;
    uint64_t size = 0;
    double timeout = 1.0, deadline = 120.0;
    while ((opt = getopt(argc, argv, "s:p:f:z:n:i:b:Tt:r:d:S:v:l:P")) != -1) {
        switch (opt) {
        case 's': server_ip = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'f': filename = optarg; break;
        case 'z': size = strtoull(optarg, NULL, 10); break;
        case 'n': count = atol(optarg); break;
        case 'i': first = atol(optarg); break;
        case 'b': blksize = atol(optarg); break;
        case 'T': tsize = 0; break;
        case 't': timeout = atof(optarg); break;
        case 'r': retries = atol(optarg); break;
        case 'd': deadline = atof(optarg); break;
        case 'S': sources = atoi(optarg); break;
        case 'v': every = atol(optarg); break;
        case 'l': local = optarg; break;
        case 'P': spin = 1; break;
        default: usage();
        }
    }
    if (!server_ip || !filename || port <= 0 || port > 65535 || count <= 0 || blksize < 8
            || blksize > 65464 || sources < 1 || timeout <= 0 || retries < 0 || (every > 0 && !local))
        usage();

    const unsigned char *expect = NULL;
    if (every > 0) {   /* the local copy, compared block by block with what the server sends */
        int fd = open(local, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
            die(local);
        if ((uint64_t)st.st_size != size) {
            fprintf(stderr, "tftp_gen: %s has %lld bytes, not %llu\n", local, (long long)st.st_size,
                    (unsigned long long)size);
            return 2;
        }
        if (size > 0) {
            expect = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (expect == MAP_FAILED)
                die("mmap");
        }
        close(fd);
    }

    struct sockaddr_in srv = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, server_ip, &srv.sin_addr) != 1)
        usage();
    int loopback = (ntohl(srv.sin_addr.s_addr) >> 24) == 127;

    unsigned char rrq[600];
    int rrq_len = snprintf((char *)rrq + 2, sizeof(rrq) - 2, "%s%coctet%cblksize%c%ld%c", filename, 0, 0, 0,
                           blksize, 0);
    if (rrq_len < 0 || rrq_len >= (int)sizeof(rrq) - 16)
        usage();
    rrq[0] = 0;
    rrq[1] = OP_RRQ;
    rrq_len += 2;
    if (tsize) {
        memcpy(rrq + rrq_len, "tsize\0" "0", 8);
        rrq_len += 8;
    }

    int ep = epoll_create1(0);
    Client *clients = calloc((size_t)count, sizeof(Client));
    if (ep < 0 || clients == NULL)
        die("setup");
    for (long i = 0; i < count; i++) {
        Client *c = &clients[i];
        long index = first + i;
        c->sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (c->sock < 0)
            die("socket");
        struct sockaddr_in me = {.sin_family = AF_INET};
        if (loopback && sources > 1)
            me.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(index % sources));
        else if (loopback)
            me.sin_addr = srv.sin_addr;
        if (bind(c->sock, (struct sockaddr *)&me, sizeof(me)) < 0)
            die("bind");
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->sock, &ev) < 0)
            die("epoll_ctl");
        c->verify = every > 0 && index % every == 0;
        c->expected = 1;
    }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof(line), stdin) == NULL)
        return 2;

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t = now(), end_by = t + deadline, next_scan = t + TICK;
    for (long i = 0; i < count; i++) {
        Client *c = &clients[i];
        c->start = now();
        c->deadline = c->start + timeout;
        (void)sendto(c->sock, rrq, (size_t)rrq_len, 0, (struct sockaddr *)&srv, sizeof(srv));
    }
    long active = count;
    unsigned char *buf = malloc(DATAGRAM + 1);   /* + 1: an ERROR's message ends in a NUL */
    struct epoll_event events[EVENTS];
    if (buf == NULL)
        die("malloc");
    char reason[REASON];
    int dallying = 0;
    double dally_until = 0;
    while (active > 0 || dallying) {
        int n = epoll_wait(ep, events, EVENTS, dallying ? 10 : spin ? 0 : (int)(TICK * 1000));
        t = now();
        for (int e = 0; e < n; e++) {
            Client *c = &clients[events[e].data.u64];
            struct sockaddr_in peer;
            socklen_t plen = sizeof(peer);
            int first = c->state == WAITING;   /* the server's first answer: learn its TID */
            /* lock-step: one datagram per event (epoll is level-triggered) */
            ssize_t len = recvfrom(c->sock, buf, DATAGRAM, 0, first ? (struct sockaddr *)&peer : NULL,
                                   first ? &plen : NULL);
            if (len < 0) {
                if (errno != EAGAIN && errno != EINTR && c->state < DONE) {
                    snprintf(reason, sizeof(reason), "socket error %d", errno);
                    fail(c, reason, t);
                    active--;
                }
                continue;
            }
            if (len < 4)
                continue;
            int op = buf[0] << 8 | buf[1];
            uint32_t block = (uint32_t)(buf[2] << 8 | buf[3]);
            if (first) {
                const char *why = op == OP_OACK ? check_oack(buf, len, blksize, tsize, size)
                                  : op == OP_DATA ? "no OACK" : other_answer(buf, len, op, reason);
                if (why != NULL) {
                    fail(c, why, t);
                    active--;
                    continue;
                }
                if (connect(c->sock, (struct sockaddr *)&peer, plen) < 0)
                    die("connect");
                c->state = RUNNING;
                c->attempt = 0;
                c->deadline = t + timeout;
                ack(c, 0);
                continue;
            }
            if (c->state != RUNNING) {   /* dallying: our last ACK was lost */
                if (c->state == DONE && op == OP_DATA && block == ((c->expected - 1) & 0xFFFF))
                    ack(c, block);
                continue;
            }
            if (op == OP_OACK) {   /* our ACK 0 was lost */
                if (c->expected == 1) {
                    c->dups++;
                    ack(c, 0);
                }
                continue;
            }
            if (op != OP_DATA) {
                fail(c, other_answer(buf, len, op, reason), t);
                active--;
                continue;
            }
            if (block == (c->expected & 0xFFFF)) {
                uint64_t payload = (uint64_t)len - 4;
                if (payload > (uint64_t)blksize || c->received + payload > size) {
                    fail(c, "size", t);
                    active--;
                    continue;
                }
                if (c->verify && payload && memcmp(buf + 4, expect + c->received, payload) != 0) {
                    snprintf(reason, sizeof(reason), "content at block %u", c->expected);
                    fail(c, reason, t);
                    active--;
                    continue;
                }
                c->received += payload;
                c->expected++;
                c->attempt = 0;
                c->deadline = t + timeout;
                ack(c, block);
                if (payload < (uint64_t)blksize) {
                    if (c->received == size) {
                        c->state = DONE;
                        c->end = t;
                    } else {
                        fail(c, "size", t);
                    }
                    active--;
                }
            } else {
                c->dups++;
                if (block == ((c->expected - 1) & 0xFFFF))
                    ack(c, block);   /* our ACK was lost: the server sent it again */
            }
        }
        if (active == 0 && !dallying) {
            dallying = 1;
            dally_until = now() + DALLY;
        }
        if (dallying) {
            if (t >= dally_until)
                break;
            continue;
        }
        if (t >= next_scan) {
            next_scan = t + TICK;
            if (t >= end_by) {
                for (long i = 0; i < count; i++)
                    if (clients[i].state < DONE)
                        fail(&clients[i], "deadline", t);
                break;
            }
            for (long i = 0; i < count; i++) {
                Client *c = &clients[i];
                if (c->state >= DONE || t < c->deadline)
                    continue;
                if (++c->attempt > retries) {
                    fail(c, "timeout", t);
                    active--;
                    continue;
                }
                c->resends++;
                c->deadline = t + timeout;
                if (c->state == WAITING)
                    (void)sendto(c->sock, rrq, (size_t)rrq_len, 0, (struct sockaddr *)&srv, sizeof(srv));
                else
                    ack(c, (c->expected - 1) & 0xFFFF);
            }
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    for (long i = 0; i < count; i++) {
        Client *c = &clients[i];
        printf("c %ld %d %.9f %.9f %llu %ld %ld %d %s\n", first + i, c->state == DONE, c->start, c->end,
               (unsigned long long)c->received, c->resends, c->dups, c->verify, c->reason);
        close(c->sock);
    }
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
        + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("cpu %.6f %ld %ld\n", cpu, ru1.ru_nvcsw - ru0.ru_nvcsw, ru1.ru_nivcsw - ru0.ru_nivcsw);
    printf("end\n");
    return 0;
}
