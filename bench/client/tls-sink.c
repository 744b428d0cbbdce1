/* The floor of HTTPS upload cost on a machine: the least a server must spend to receive a request body
 * over TLS, with OpenSSL reading straight from the socket (no managed stream, no HTTP framework). It accepts
 * one connection on 127.0.0.1:PORT, reads one HTTP/1.1 request with a Content-Length body, discards it,
 * answers 200, and prints "bytes N user U sys S" (its own CPU seconds) on stderr.
 * Used by bench/client/cpu-by-party.sh; see docs/benchmarks.md, seventh round.
 *
 *   gcc -O2 -o tls-sink tls-sink.c -lssl -lcrypto && ./tls-sink PORT CERT.pem KEY.pem
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT CERT KEY\n", argv[0]);
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* One read takes every record already queued: fewer recv calls than a record at a time. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, READ_SIZE);
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0) {
        perror("listen");
        return 1;
    }
    int connection = accept(listener, NULL, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, connection);
    if (SSL_accept(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    char *buffer = malloc(READ_SIZE), head[8192];
    size_t head_length = 0;
    long long body = -1, received = 0;
    int n;
    while ((n = SSL_read(ssl, buffer, READ_SIZE)) > 0) {
        if (body < 0) {
            size_t take = (size_t)n < sizeof head - 1 - head_length ? (size_t)n : sizeof head - 1 - head_length;
            memcpy(head + head_length, buffer, take);
            head_length += take;
            head[head_length] = 0;
            char *end = strstr(head, "\r\n\r\n"), *length = strcasestr(head, "\ncontent-length:");
            if (end == NULL)
                continue;
            if (length == NULL) {
                fprintf(stderr, "no Content-Length\n");
                return 1;
            }
            body = atoll(length + 16);
            /* Body bytes in this read: all of it but its part of the headers (earlier reads hold the rest). */
            received = n - ((long long)(end + 4 - head) - (long long)(head_length - take));
        } else {
            received += n;
        }
        if (received >= body)
            break;
    }
    const char *answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    SSL_write(ssl, answer, (int)strlen(answer));
    SSL_shutdown(ssl);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    fprintf(stderr, "bytes %lld user %.3f sys %.3f\n", received, seconds(usage.ru_utime), seconds(usage.ru_stime));
    close(connection);
    return received == body ? 0 : 1;
}
