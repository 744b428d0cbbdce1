/* The floor of the proxy's CPU per GiB over plain HTTP: the least a user-space forwarder spends to take a
 * request body off a TCP socket and write it to qemu-nbd. One thread, blocking system calls, no HTTP
 * framework, no runtime: the body goes from the socket into a pipe and from the pipe into qemu-nbd's socket
 * by splice(2), as the proxy's spliced uploads do, each REQUEST_SIZE bytes behind an NBD WRITE header; one
 * NBD_CMD_FLUSH at the end, as a PUT without flush=n. It accepts one connection on 127.0.0.1:PORT, serves
 * one PUT with a Content-Length (answering Expect: 100-continue), answers 200, and prints
 * "bytes N user U sys S" (its own CPU seconds) on stderr.
 * Used by bench/client/cpu-by-party.sh; see docs/benchmarks.md, ninth round.
 *
 *   gcc -O2 -o splice-floor splice-floor.c && ./splice-floor PORT NBD_SOCKET REQUEST_SIZE
 *
 * NBD framing from NetworkBlockDevice/nbd doc/proto.md: fixed newstyle handshake, NBD_OPT_EXPORT_NAME with
 * the default export "" (so simple replies only), requests of 28 bytes, simple replies of 16.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_CMD_WRITE 1
#define NBD_CMD_FLUSH 3
#define NBD_OPT_EXPORT_NAME 1
#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void read_exactly(int fd, void *buffer, size_t length)
{
    for (size_t done = 0; done < length;) {
        ssize_t n = recv(fd, (char *)buffer + done, length - done, 0);
        if (n <= 0)
            die("recv");
        done += (size_t)n;
    }
}

static void write_exactly(int fd, const void *buffer, size_t length)
{
    for (size_t done = 0; done < length;) {
        ssize_t n = send(fd, (const char *)buffer + done, length - done, MSG_NOSIGNAL);
        if (n <= 0)
            die("send");
        done += (size_t)n;
    }
}

static int connect_nbd(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0), size = 4 << 20;
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
        die("connect");
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size); /* as the proxy's Backend:SocketBufferSize */
    unsigned char greeting[18];
    read_exactly(fd, greeting, sizeof greeting); /* "NBDMAGIC", "IHAVEOPT", handshake flags */
    uint16_t server_flags = be16toh(*(uint16_t *)(greeting + 16));
    if (memcmp(greeting, "NBDMAGIC", 8) != 0 || !(server_flags & NBD_FLAG_FIXED_NEWSTYLE)) {
        fprintf(stderr, "not a fixed-newstyle NBD server\n");
        exit(1);
    }
    uint32_t client_flags = htobe32(NBD_FLAG_FIXED_NEWSTYLE | (server_flags & NBD_FLAG_NO_ZEROES));
    write_exactly(fd, &client_flags, 4);
    unsigned char option[16];
    memcpy(option, "IHAVEOPT", 8);
    *(uint32_t *)(option + 8) = htobe32(NBD_OPT_EXPORT_NAME);
    *(uint32_t *)(option + 12) = 0; /* export name "" */
    write_exactly(fd, option, sizeof option);
    unsigned char export[10 + 124];
    read_exactly(fd, export, (server_flags & NBD_FLAG_NO_ZEROES) ? 10 : sizeof export); /* size, flags[, zeroes] */
    return fd;
}

static void send_request(int fd, uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length)
{
    unsigned char header[28];
    *(uint32_t *)header = htobe32(NBD_REQUEST_MAGIC);
    *(uint16_t *)(header + 4) = 0;
    *(uint16_t *)(header + 6) = htobe16(type);
    *(uint64_t *)(header + 8) = htobe64(cookie);
    *(uint64_t *)(header + 16) = htobe64(offset);
    *(uint32_t *)(header + 24) = htobe32(length);
    write_exactly(fd, header, sizeof header);
}

/* Reads the replies already queued (or, with wait, until all sent requests are answered); exits on an error. */
static long long replies_buffered;
static unsigned char reply_buffer[16 * 4096];

static long long take_replies(int fd, long long sent, long long answered, int wait)
{
    while (answered < sent) {
        ssize_t n = recv(fd, reply_buffer + replies_buffered, sizeof reply_buffer - replies_buffered, wait ? 0 : MSG_DONTWAIT);
        if (n <= 0) {
            if (!wait && n < 0)
                break;
            die("recv reply");
        }
        replies_buffered += n;
        long long whole = replies_buffered / 16;
        for (long long i = 0; i < whole; i++) {
            unsigned char *reply = reply_buffer + i * 16;
            if (be32toh(*(uint32_t *)reply) != NBD_SIMPLE_REPLY_MAGIC || *(uint32_t *)(reply + 4) != 0) {
                fprintf(stderr, "NBD error reply\n");
                exit(1);
            }
        }
        answered += whole;
        memmove(reply_buffer, reply_buffer + whole * 16, (size_t)(replies_buffered - whole * 16));
        replies_buffered -= whole * 16;
    }
    return answered;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT NBD_SOCKET REQUEST_SIZE\n", argv[0]);
        return 2;
    }
    long long request_size = atoll(argv[3]);
    int nbd = connect_nbd(argv[2]);
    int pipes[2];
    if (pipe(pipes) != 0)
        die("pipe");
    /* Room for a request's bytes however the socket cut them into pipe slots (4 MiB needs root or a higher
     * fs.pipe-max-size; otherwise 1 MiB). */
    if (fcntl(pipes[1], F_SETPIPE_SZ, 4 << 20) < 0 && fcntl(pipes[1], F_SETPIPE_SZ, 1 << 20) < 0)
        die("F_SETPIPE_SZ");
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0)
        die("listen");
    int connection = accept(listener, NULL, NULL);
    setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as Kestrel */

    /* The request head, a byte at a time past the first read: no body byte is taken by mistake. */
    char head[8192];
    size_t head_length = 0;
    while (head_length < 4 || memcmp(head + head_length - 4, "\r\n\r\n", 4) != 0) {
        if (head_length == sizeof head - 1 || recv(connection, head + head_length, 1, 0) != 1) {
            fprintf(stderr, "bad request head\n");
            return 1;
        }
        head_length++;
    }
    head[head_length] = 0;
    char *length = strcasestr(head, "\ncontent-length:");
    if (length == NULL) {
        fprintf(stderr, "no Content-Length\n");
        return 1;
    }
    long long body = atoll(length + 16);
    if (strcasestr(head, "\nexpect: 100-continue") != NULL)
        write_exactly(connection, "HTTP/1.1 100 Continue\r\n\r\n", 25);

    long long offset = 0, in_pipe = 0, sent = 0, answered = 0;
    while (offset < body) {
        long long want = body - offset < request_size ? body - offset : request_size;
        while (in_pipe < want) {
            ssize_t n = splice(connection, NULL, pipes[1], NULL, (size_t)(want - in_pipe), SPLICE_F_MOVE);
            if (n <= 0)
                die("splice from the client");
            in_pipe += n;
        }
        send_request(nbd, NBD_CMD_WRITE, (uint64_t)sent, (uint64_t)offset, (uint32_t)want);
        for (long long left = want; left > 0;) {
            ssize_t n = splice(pipes[0], NULL, nbd, NULL, (size_t)left, SPLICE_F_MOVE);
            if (n <= 0)
                die("splice to qemu-nbd");
            left -= n;
        }
        in_pipe -= want;
        offset += want;
        sent++;
        answered = take_replies(nbd, sent, answered, 0);
    }
    send_request(nbd, NBD_CMD_FLUSH, (uint64_t)sent, 0, 0);
    sent++;
    take_replies(nbd, sent, answered, 1);
    write_exactly(connection, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 57);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    fprintf(stderr, "bytes %lld user %.3f sys %.3f\n", offset, seconds(usage.ru_utime), seconds(usage.ru_stime));
    close(connection);
    return 0;
}
