/* The HTTP layer with a handler of the test's own: WebSocket upgrade and
 * echo through op_ws, refusal of non-upgrade requests, and SSE-style
 * streaming from another thread. A hand-written client speaks the protocol
 * on a raw socket, so framing (masking, lengths) is checked end to end. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/op_http.h"
#include "http/op_ws.h"
#include "platform/pl_log.h"

static void ws_echo(op_ws *ws, int opcode, const uint8_t *data, size_t len, void *user)
{
    (void)user;
    if (len == 5 && memcmp(data, "close", 5) == 0) {
        op_ws_close(ws, 1000, "bye");
        return;
    }
    op_ws_send(ws, opcode, data, len);
}

static void *stream_writer(void *arg)
{
    op_http_req *r = arg;
    op_http_stream_begin(r, 200, "text/event-stream");
    for (int i = 0; i < 3; i++) {
        char line[32];
        int n = snprintf(line, sizeof line, "data: %d\n\n", i);
        usleep(20000);
        op_http_stream_write(r, line, (size_t)n);
    }
    op_http_stream_end(r);
    op_http_req_unref(r);
    return NULL;
}

static void handler(op_http_req *r, void *user)
{
    (void)user;
    if (strcmp(op_http_req_path(r), "/ws") == 0) {
        op_ws_handlers h = {.on_message = ws_echo, .protocol = "outpost"};
        op_ws_accept(r, &h);
    } else if (strcmp(op_http_req_path(r), "/stream") == 0) {
        op_http_req_ref(r); /* deferred to another thread */
        pthread_t t;
        pthread_create(&t, NULL, stream_writer, r);
        pthread_detach(t);
    } else {
        op_http_respond(r, 404, "text/plain", "no\n", 3);
    }
}

static op_http_server *start(void)
{
    pl_log_configure(PL_LOG_ERROR, PL_LOG_FORMAT_KV);
    op_http_options o = {.host = "127.0.0.1", .port = 0, .workers = 2, .max_body_bytes = 1024,
                         .max_header_bytes = 16384, .max_connections = 64, .idle_timeout_s = 10,
                         .handler = handler};
    char err[256];
    op_http_server *s = op_http_server_start(&o, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    return s;
}

static int dial(op_http_server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(op_http_server_port(s)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    cr_assert_eq(send(fd, p, n, 0), (ssize_t)n);
}

/* Reads until the end of the HTTP headers; returns them (static buffer). */
static const char *read_headers(int fd)
{
    static char buf[4096];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t r = recv(fd, buf + n, 1, 0);
        cr_assert_eq(r, 1, "connection closed in headers: %.*s", (int)n, buf);
        n++;
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    buf[n] = '\0';
    return buf;
}

static void send_frame(int fd, int opcode, const char *payload, size_t len)
{
    uint8_t f[16 + 256];
    size_t h = 0;
    f[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        f[h++] = (uint8_t)(0x80 | len);
    } else {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(len >> 8);
        f[h++] = (uint8_t)len;
    }
    const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(f + h, mask, 4);
    h += 4;
    send_all(fd, f, h);
    uint8_t *m = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        m[i] = (uint8_t)payload[i] ^ mask[i % 4];
    send_all(fd, m, len);
    free(m);
}

static size_t recv_exact(int fd, uint8_t *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Reads one unmasked server frame; returns its opcode, payload in buf. */
static int recv_frame(int fd, char *buf, size_t cap, size_t *len)
{
    uint8_t h[2];
    cr_assert_eq(recv_exact(fd, h, 2), 2);
    cr_assert_eq(h[1] & 0x80, 0, "server frames must not be masked");
    size_t n = h[1] & 0x7f;
    if (n == 126) {
        uint8_t e[2];
        cr_assert_eq(recv_exact(fd, e, 2), 2);
        n = (size_t)e[0] << 8 | e[1];
    }
    cr_assert(n <= cap);
    cr_assert_eq(recv_exact(fd, (uint8_t *)buf, n), n);
    *len = n;
    return h[0] & 0x0f;
}

static const char UPGRADE[] = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              "Connection: keep-alive, Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Protocol: other, outpost\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n";

Test(http_ws, accept_key_matches_rfc6455_example)
{
    char out[29];
    op_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    cr_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

Test(http_ws, upgrade_echo_and_close)
{
    op_http_server *s = start();
    int fd = dial(s);
    send_all(fd, UPGRADE, sizeof UPGRADE - 1);
    const char *h = read_headers(fd);
    cr_assert(strstr(h, "HTTP/1.1 101"), "%s", h);
    cr_assert(strstr(h, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "%s", h);
    cr_assert(strstr(h, "Sec-WebSocket-Protocol: outpost"), "%s", h);

    char buf[300];
    size_t len;
    send_frame(fd, 1, "hello", 5);
    cr_assert_eq(recv_frame(fd, buf, sizeof buf, &len), 1);
    cr_assert_eq(len, 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);

    char big[200];
    memset(big, 'z', sizeof big); /* 16-bit length form */
    send_frame(fd, 2, big, sizeof big);
    cr_assert_eq(recv_frame(fd, buf, sizeof buf, &len), 2);
    cr_assert_eq(len, sizeof big);

    send_frame(fd, 9, "p", 1); /* ping -> pong */
    cr_assert_eq(recv_frame(fd, buf, sizeof buf, &len), 10);

    send_frame(fd, 1, "close", 5); /* server starts the close handshake */
    cr_assert_eq(recv_frame(fd, buf, sizeof buf, &len), 8);
    cr_assert(len >= 2 && ((uint8_t)buf[0] << 8 | (uint8_t)buf[1]) == 1000);
    close(fd);
    op_http_server_stop(s);
}

Test(http_ws, plain_get_is_refused_with_426)
{
    op_http_server *s = start();
    int fd = dial(s);
    static const char req[] = "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, sizeof req - 1);
    const char *h = read_headers(fd);
    cr_assert(strstr(h, "HTTP/1.1 426"), "%s", h);
    cr_assert(strstr(h, "Sec-WebSocket-Version: 13"), "%s", h);
    close(fd);
    op_http_server_stop(s);
}

Test(http_ws, stream_written_from_another_thread)
{
    op_http_server *s = start();
    int fd = dial(s);
    static const char req[] = "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, sizeof req - 1);
    char buf[2048];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    cr_assert(strstr(buf, "HTTP/1.1 200"), "%s", buf);
    cr_assert(strstr(buf, "chunked"), "%s", buf);
    const char *d0 = strstr(buf, "data: 0"), *d2 = strstr(buf, "data: 2");
    cr_assert(d0 && d2 && d0 < d2, "%s", buf);
    close(fd);
    op_http_server_stop(s);
}
